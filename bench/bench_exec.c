/*
 * bench_exec.c: one NeuroLLM block, forward + backward, against OpenBLAS sgemm peak.
 *
 * For hidden 512 and 1024 (the S3 shapes of 2 GB and 40 GB swarms: heads, kv_heads and
 * intermediate from ns_arch_for_memory), sequence 256, batch 8, one middle layer as a stage
 * ([1, 2): no embedding, no head), on an executor with one thread per online CPU (or
 * $NS_BENCH_THREADS). The work is
 * counted as the useful floating-point operations of the block's matrix multiplies (block_flops);
 * the baseline is the best cblas_sgemm rate over a few large shapes (sgemm_peak_gflops) with the
 * same threads, in the same run.
 * Lines on stdout (scripts/bench.sh):
 *   bench block_hN_gflops=G sgemm_peak_gflops=P ratio=G/P goal=0.6
 *   bench block_hN_reproducible_gflops=R block_hN_gflops=G ratio=R/G   (the reproducible mode's
 * cost) bench block_hN_gflops=G torch_block_hN_gflops=T ratio=G/T goal=1.0 (only where
 * /usr/bin/python3 imports torch: bench/bench_exec_torch.py times the same block in PyTorch on the
 * same threads) Each timing is the best of BENCH_ROUNDS after one warm-up. Where OpenBLAS took this
 * CPU for a generic one (ns_exec_blas_coretype_hint), the bench re-executes itself with
 * OPENBLAS_CORETYPE set, so that both the block and the sgemm baseline run on the right kernels.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "neuroshard/exec.h"
#include "neuroshard/swarm.h"

#define BENCH_ROUNDS      3
#define BENCH_T           256
#define BENCH_B           8
#define BENCH_SGEMM_N     2048
#define BENCH_THREADS_MAX 16
#define BENCH_TORCH_CMD   "/usr/bin/python3 bench/bench_exec_torch.py"

static double seconds_now(void)
{
    struct timespec ts;
    NS_ASSERT(clock_gettime(CLOCK_MONOTONIC, &ts) == 0);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static float *random_floats(size_t n, uint32_t seed, float scale)
{
    float *p = malloc(n * sizeof(float));
    NS_ASSERT(p != NULL);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = scale * ((float)(x >> 8) * 0x1p-24f - 0.5f);
    }
    return p;
}

/* Best GFLOP/s of cblas_sgemm on M x N x K, op(B) transposed or not. */
static double sgemm_gflops(size_t M, size_t N, size_t K, bool trans_b)
{
    float *a = random_floats(M * K, 1, 1.0f);
    float *b = random_floats(K * N, 2, 1.0f);
    float *c = random_floats(M * N, 3, 1.0f);
    double best = 1e30;
    for (int r = 0; r <= BENCH_ROUNDS; r++) {
        double t0 = seconds_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M,
                    (int)N, (int)K, 1.0f, a, (int)K, b, trans_b ? (int)K : (int)N, 0.0f, c, (int)N);
        double dt = seconds_now() - t0;
        best = r > 0 && dt < best ? dt : best;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * (double)M * N * K / best * 1e-9;
}

/* The baseline: the best of sgemm on 2048^3 and on the block's largest product (B*T x 2752 x
 * 1024), each with op(B) plain and transposed, on `threads` OpenBLAS threads. */
static double sgemm_peak_gflops(uint32_t threads)
{
    openblas_set_num_threads((int)threads);
    size_t bt = (size_t)BENCH_B * BENCH_T;
    const size_t shapes[2][3] = {{BENCH_SGEMM_N, BENCH_SGEMM_N, BENCH_SGEMM_N}, {bt, 2752, 1024}};
    double peak = 0.0;
    for (int s = 0; s < 2; s++) {
        for (int t = 0; t < 2; t++) {
            double g = sgemm_gflops(shapes[s][0], shapes[s][1], shapes[s][2], t == 1);
            peak = g > peak ? g : peak;
        }
    }
    return peak;
}

/* Useful matrix-multiply flops of one block's forward + backward (backward twice the forward):
 * the projections, and attention over the T (T + 1) / 2 query-key pairs the causal mask keeps
 * (q.k and att.v, 2 D each a pair). The executor multiplies a little more (whole 64-row blocks
 * of the mask) and does the norms, RoPE, softmax and SwiGLU besides; none of that is counted. */
static double block_flops(const ns_arch *a)
{
    double bt = (double)BENCH_B * BENCH_T;
    double C = a->hidden, KD = (double)a->kv_heads * NS_ARCH_HEAD_DIM, F = a->intermediate;
    double projections = 2.0 * bt * (C * C + 2 * C * KD + C * C + 3 * C * F);
    double pairs = (double)BENCH_T * (BENCH_T + 1) / 2;
    double attention = 2.0 * 2.0 * NS_ARCH_HEAD_DIM * pairs * BENCH_B * a->heads;
    return 3.0 * (projections + attention);
}

/* Best seconds of one forward + backward of layer 1 as a stage. */
static double block_seconds(const ns_arch *arch, uint32_t threads, ns_exec_mode mode)
{
    ns_exec *ex;
    NS_ASSERT(ns_exec_new(&ex, threads, mode) == NS_OK);
    ns_stage_config cfg = {.arch = *arch,
                           .layer_first = 1,
                           .layer_last = 2,
                           .batch_max = BENCH_B,
                           .seq_len_max = BENCH_T,
                           .micro_batches_max = 1};
    ns_stage *st;
    NS_ASSERT(ns_stage_new(&st, ex, &cfg) == NS_OK);
    ns_stage_init(st, 1);
    size_t n = (size_t)BENCH_B * BENCH_T * arch->hidden;
    float *acts = random_floats(n, 4, 2.0f);
    float *dout = random_floats(n, 5, 1e-3f);
    float *out = malloc(n * sizeof(float));
    float *dinp = malloc(n * sizeof(float));
    NS_ASSERT(out != NULL && dinp != NULL);
    ns_stage_input in = {.batch = BENCH_B, .seq_len = BENCH_T, .acts = acts};
    double best = 1e30;
    for (int r = 0; r <= BENCH_ROUNDS; r++) {
        double t0 = seconds_now();
        NS_ASSERT(ns_stage_forward(st, (uint64_t)r, &in, out) == NS_OK);
        NS_ASSERT(ns_stage_backward(st, (uint64_t)r, dout, dinp) == NS_OK);
        double dt = seconds_now() - t0;
        best = r > 0 && dt < best ? dt : best;
    }
    free(acts);
    free(dout);
    free(out);
    free(dinp);
    ns_stage_free(st);
    ns_exec_free(ex);
    return best;
}

/* Milliseconds of the same block in PyTorch, or a negative number without torch. */
static double torch_ms(const ns_arch *a, uint32_t threads)
{
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
        return -1.0;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s %u %u %u %u %d %d %u", BENCH_TORCH_CMD, a->hidden, a->heads,
             a->kv_heads, a->intermediate, BENCH_T, BENCH_B, threads);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1.0;
    double ms = -1.0;
    if (fscanf(p, "ms=%lf", &ms) != 1)
        ms = -1.0;
    if (pclose(p) != 0)
        return -1.0;
    return ms;
}

/* `bench_exec fast|reproducible MEMORY_MB THREADS`: one block only, for a profiler. */
static int profile_one(char **argv)
{
    ns_arch arch;
    NS_ASSERT(ns_arch_for_memory(strtoull(argv[2], NULL, 10), &arch) == NS_OK);
    ns_exec_mode mode = strcmp(argv[1], "fast") == 0 ? NS_EXEC_FAST : NS_EXEC_REPRODUCIBLE;
    double s = block_seconds(&arch, (uint32_t)atoi(argv[3]), mode);
    printf("%s hidden %u: %.1f ms, %.1f GFLOP/s\n", argv[1], arch.hidden, s * 1e3,
           block_flops(&arch) / s * 1e-9);
    return 0;
}

/* `bench_exec fingerprint fast|reproducible THREADS`: three training steps of a small model
 * from a fixed seed and data; prints a hash of the losses and the weights. In the reproducible
 * mode it is the same on every machine and thread count; compare the lines of two machines. */
static int fingerprint(char **argv)
{
    ns_exec_mode mode = strcmp(argv[2], "fast") == 0 ? NS_EXEC_FAST : NS_EXEC_REPRODUCIBLE;
    ns_exec *ex;
    NS_ASSERT(ns_exec_new(&ex, (uint32_t)atoi(argv[3]), mode) == NS_OK);
    ns_stage_config cfg = {.arch = {.layers = 2,
                                    .hidden = 256,
                                    .heads = 4,
                                    .kv_heads = 2,
                                    .intermediate = 704,
                                    .vocab = 1000,
                                    .seq_len_max = 64},
                           .layer_last = 2,
                           .batch_max = 4,
                           .seq_len_max = 64,
                           .micro_batches_max = 1};
    ns_stage *st;
    NS_ASSERT(ns_stage_new(&st, ex, &cfg) == NS_OK);
    ns_stage_init(st, 2026);
    ns_optim_config optim;
    ns_optim_config_default(&optim);
    optim.warmup_steps = 1;
    int32_t tokens[256], targets[256];
    uint64_t hash = 0xcbf29ce484222325ull; /* FNV-1a */
    float one = 1.0f;
    for (uint32_t step = 0; step < 3; step++) {
        for (uint32_t i = 0; i < 256; i++) {
            tokens[i] = (int32_t)((i * 7919u + step * 104729u) % 1000u);
            targets[i] = (int32_t)((i * 6007u + step * 7u + 1u) % 1000u);
        }
        ns_stage_input in = {.batch = 4, .seq_len = 64, .tokens = tokens, .targets = targets};
        float loss;
        NS_ASSERT(ns_stage_forward(st, step, &in, &loss) == NS_OK);
        NS_ASSERT(ns_stage_backward(st, step, &one, NULL) == NS_OK);
        ns_stage_optimize(st, &optim, NULL);
        printf("step %u loss %.9g\n", step, loss);
        const uint8_t *b = (const uint8_t *)&loss;
        for (size_t i = 0; i < sizeof loss; i++)
            hash = (hash ^ b[i]) * 0x100000001b3ull;
    }
    size_t n;
    const uint8_t *w = (const uint8_t *)ns_stage_param_buffer(st, &n);
    for (size_t i = 0; i < n * sizeof(float); i++)
        hash = (hash ^ w[i]) * 0x100000001b3ull;
    printf("fingerprint %s threads %s: %016llx\n", argv[2], argv[3], (unsigned long long)hash);
    ns_stage_free(st);
    ns_exec_free(ex);
    return 0;
}

int main(int argc, char **argv)
{
    /* Measure OpenBLAS with the kernels this CPU deserves, not a fallback it chose by mistake. */
    const char *core = ns_exec_blas_coretype_hint();
    if (core != NULL && getenv("OPENBLAS_CORETYPE") == NULL) {
        fprintf(stderr, "bench_exec: re-running with OPENBLAS_CORETYPE=%s\n", core);
        NS_ASSERT(setenv("OPENBLAS_CORETYPE", core, 1) == 0);
        execv("/proc/self/exe", argv);
        return 1;
    }
    if (argc == 4 && strcmp(argv[1], "fingerprint") == 0)
        return fingerprint(argv);
    if (argc == 4)
        return profile_one(argv);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (getenv("NS_BENCH_THREADS") != NULL)
        online = atol(getenv("NS_BENCH_THREADS"));
    uint32_t threads = online < 1                   ? 1
                       : online > BENCH_THREADS_MAX ? BENCH_THREADS_MAX
                                                    : (uint32_t)online;
    double peak = sgemm_peak_gflops(threads);
    fprintf(stderr, "bench_exec: %u threads, sgemm peak %.1f GFLOP/s\n", threads, peak);
    const uint64_t memory_mb[2] = {2048, 40960}; /* S3: 8L x 512H and 16L x 1024H */
    for (int i = 0; i < 2; i++) {
        ns_arch arch;
        NS_ASSERT(ns_arch_for_memory(memory_mb[i], &arch) == NS_OK);
        double flops = block_flops(&arch);
        double fast = flops / block_seconds(&arch, threads, NS_EXEC_FAST) * 1e-9;
        double repro = flops / block_seconds(&arch, threads, NS_EXEC_REPRODUCIBLE) * 1e-9;
        unsigned h = arch.hidden;
        fprintf(stderr, "bench_exec: hidden %u heads %u kv %u intermediate %u: %.2f GFLOP\n", h,
                arch.heads, arch.kv_heads, arch.intermediate, flops * 1e-9);
        printf("bench block_h%u_gflops=%.1f sgemm_peak_gflops=%.1f ratio=%.2f goal=0.6\n", h, fast,
               peak, fast / peak);
        printf("bench block_h%u_reproducible_gflops=%.1f block_h%u_gflops=%.1f ratio=%.2f\n", h,
               repro, h, fast, repro / fast);
        double ms = torch_ms(&arch, threads);
        if (ms > 0) {
            double torch = flops / (ms * 1e-3) * 1e-9;
            printf("bench block_h%u_gflops=%.1f torch_block_h%u_gflops=%.1f ratio=%.2f goal=1.0\n",
                   h, fast, h, torch, fast / torch);
        }
        fflush(stdout);
    }
    return 0;
}
