/*
 * bench_ckpt.c: checkpoint write and read speed against plain file I/O of the same bytes.
 *
 * 256 MiB of float32 tensors, shaped like a training state (a third weights, two thirds AdamW
 * moments), saved with ns_ckpt_save (two files, SHA-256 of each, fsync of every file and
 * directory, rename, pruning of old checkpoints) and loaded with ns_ckpt_load_latest (hash check
 * of every file, name and shape check, copy into the caller's buffers). The baselines do the
 * least any checkpoint must: write() the same bytes to one file in the same directory and fsync
 * it; read() them back into the same buffers. Reads start cold: each file's pages are dropped
 * from the page cache first (posix_fadvise DONTNEED, which works on clean pages without root).
 * Each pair alternates BENCH_ROUNDS times and keeps each side's best. One line each on stdout:
 *   bench ckpt_write_mb_per_s=<n> file_write_fsync_mb_per_s=<n> ratio=<x.xx>
 *   bench ckpt_read_mb_per_s=<n> file_read_mb_per_s=<n> ratio=<x.xx>
 * MB is 10^6 bytes of tensor data.
 */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "neuroshard/ckpt.h"

#define BENCH_ROUNDS     3
#define BENCH_BYTES      (256u << 20)
#define BENCH_WEIGHTS    16 /* tensors; the optimizer holds two per weight */
#define BENCH_CHUNK_SIZE (8u << 20)

typedef struct bench {
    char dir[512];
    char plain[600];
    float *flat;
    size_t floats;
    ns_ckpt_tensor weights[BENCH_WEIGHTS];
    ns_ckpt_tensor opt[2 * BENCH_WEIGHTS];
    char names[3 * BENCH_WEIGHTS][64];
    ns_ckpt_llama_config config;
    uint64_t step;
} bench;

static double seconds_now(void)
{
    struct timespec ts;
    NS_ASSERT(clock_gettime(CLOCK_MONOTONIC, &ts) == 0);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void bench_setup(bench *b)
{
    memset(b, 0, sizeof *b);
    int n = snprintf(b->dir, sizeof b->dir, "%s/bench-ckpt.XXXXXX", NS_BUILD_DIR);
    NS_ASSERT(n > 0 && (size_t)n < sizeof b->dir);
    NS_ASSERT(ns_mkdir_p(NS_BUILD_DIR) == NS_OK);
    NS_ASSERT(mkdtemp(b->dir) != NULL);
    snprintf(b->plain, sizeof b->plain, "%s/plain.bin", b->dir);
    size_t per = BENCH_BYTES / sizeof(float) / (3 * BENCH_WEIGHTS) / 64 * 64;
    b->floats = per * 3 * BENCH_WEIGHTS;
    b->flat = malloc(b->floats * sizeof *b->flat);
    NS_ASSERT(b->flat != NULL);
    for (size_t i = 0; i < b->floats; i++)
        b->flat[i] = (float)(i % 65521) * 1e-3f;
    for (size_t t = 0; t < 3 * BENCH_WEIGHTS; t++) {
        ns_ckpt_tensor *x = t < BENCH_WEIGHTS ? &b->weights[t] : &b->opt[t - BENCH_WEIGHTS];
        if (t < BENCH_WEIGHTS)
            snprintf(b->names[t], 64, "model.layers.%zu.mlp.up_proj.weight", t);
        else
            snprintf(b->names[t], 64, "model.layers.%zu.mlp.up_proj.weight.%s",
                     (t - BENCH_WEIGHTS) / 2, t % 2 == 0 ? "exp_avg" : "exp_avg_sq");
        *x = (ns_ckpt_tensor){
            .name = b->names[t], .ndim = 2, .shape = {per / 64, 64}, .data = b->flat + t * per};
    }
    NS_ASSERT(per % 64 == 0);
    b->config = (ns_ckpt_llama_config){.hidden_size = 64,
                                       .intermediate_size = 128,
                                       .num_attention_heads = 1,
                                       .num_key_value_heads = 1,
                                       .num_hidden_layers = BENCH_WEIGHTS,
                                       .vocab_size = 64,
                                       .max_position_embeddings = 64,
                                       .rms_norm_eps = 1e-5,
                                       .rope_theta = 10000.0,
                                       .bos_token_id = -1,
                                       .eos_token_id = -1};
}

static double ckpt_write(bench *b)
{
    ns_ckpt_state st = {.step = ++b->step};
    char err[NS_CKPT_ERR_SIZE];
    double t0 = seconds_now();
    int rc = ns_ckpt_save(b->dir, b->weights, BENCH_WEIGHTS, b->opt, 2 * BENCH_WEIGHTS, &st,
                          &b->config, 2, NULL, err, sizeof err);
    double t = seconds_now() - t0;
    if (rc != NS_OK) {
        fprintf(stderr, "bench_ckpt: save: %s\n", err);
        exit(1);
    }
    return t;
}

static double plain_write(bench *b)
{
    double t0 = seconds_now();
    int fd = open(b->plain, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    NS_ASSERT(fd >= 0);
    const uint8_t *p = (const uint8_t *)b->flat;
    size_t left = b->floats * sizeof(float);
    while (left > 0) {
        ssize_t w = write(fd, p, left < BENCH_CHUNK_SIZE ? left : BENCH_CHUNK_SIZE);
        NS_ASSERT(w > 0);
        p += w;
        left -= (size_t)w;
    }
    NS_ASSERT(fsync(fd) == 0);
    NS_ASSERT(close(fd) == 0);
    return seconds_now() - t0;
}

static void drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

static void drop_ckpt_cache(const bench *b)
{
    static const char *const files[] = {NS_CKPT_MODEL_FILE, NS_CKPT_OPTIMIZER_FILE,
                                        NS_CKPT_CONFIG_FILE, NS_CKPT_STATE_FILE};
    for (size_t i = 0; i < 4; i++) {
        char path[800];
        snprintf(path, sizeof path, "%s/ckpt-%llu/%s", b->dir, (unsigned long long)b->step,
                 files[i]);
        drop_cache(path);
    }
}

static double ckpt_read(bench *b, bool cold)
{
    if (cold)
        drop_ckpt_cache(b);
    char err[NS_CKPT_ERR_SIZE];
    double t0 = seconds_now();
    int rc = ns_ckpt_load_latest(b->dir, b->weights, BENCH_WEIGHTS, b->opt, 2 * BENCH_WEIGHTS, NULL,
                                 NULL, NULL, err, sizeof err);
    double t = seconds_now() - t0;
    if (rc != NS_OK) {
        fprintf(stderr, "bench_ckpt: load: %s\n", err);
        exit(1);
    }
    return t;
}

static double plain_read(bench *b, bool cold)
{
    if (cold)
        drop_cache(b->plain);
    double t0 = seconds_now();
    int fd = open(b->plain, O_RDONLY | O_CLOEXEC);
    NS_ASSERT(fd >= 0);
    uint8_t *p = (uint8_t *)b->flat;
    size_t left = b->floats * sizeof(float);
    while (left > 0) {
        ssize_t r = read(fd, p, left < BENCH_CHUNK_SIZE ? left : BENCH_CHUNK_SIZE);
        NS_ASSERT(r > 0);
        p += r;
        left -= (size_t)r;
    }
    NS_ASSERT(close(fd) == 0);
    return seconds_now() - t0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static double best_min(double a, double b)
{
    return a < b ? a : b;
}

int main(void)
{
    ns_log_set_level(NS_LOG_WARN);
    static bench b;
    bench_setup(&b);
    double mb = (double)(b.floats * sizeof(float)) / 1e6;
    double ours_w = 1e9, base_w = 1e9, ours_r = 1e9, base_r = 1e9, warm_r = 1e9, warm_base = 1e9;
    for (int r = 0; r < BENCH_ROUNDS; r++) {
        ours_w = best_min(ours_w, ckpt_write(&b));
        base_w = best_min(base_w, plain_write(&b));
    }
    for (int r = 0; r < BENCH_ROUNDS; r++) {
        ours_r = best_min(ours_r, ckpt_read(&b, true));
        base_r = best_min(base_r, plain_read(&b, true));
        warm_r = best_min(warm_r, ckpt_read(&b, false));
        warm_base = best_min(warm_base, plain_read(&b, false));
    }
    printf("bench ckpt_write_mb_per_s=%.0f file_write_fsync_mb_per_s=%.0f ratio=%.2f\n",
           mb / ours_w, mb / base_w, base_w / ours_w);
    printf("bench ckpt_read_mb_per_s=%.0f file_read_mb_per_s=%.0f ratio=%.2f\n", mb / ours_r,
           mb / base_r, base_r / ours_r);
    fprintf(stderr,
            "bench_ckpt: %.0f MB; warm page cache: ckpt_read_mb_per_s=%.0f "
            "file_read_mb_per_s=%.0f\n",
            mb, mb / warm_r, mb / warm_base);
    if (nftw(b.dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "bench_ckpt: could not remove %s\n", b.dir);
    free(b.flat);
    return 0;
}
