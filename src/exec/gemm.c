/*
 * gemm.c: the one matrix multiply under every kernel, in the executor's two modes.
 *
 * Fast mode: cblas_sgemm, with OpenBLAS told the executor's thread count (or one thread inside a
 * parallel region, where our own workers each multiply their part).
 *
 * Reproducible mode: our own blocked multiply (pack a panel of op(B), pack a block of op(A),
 * multiply register tiles), built so that its result does not depend on the CPU, the vector width
 * or the thread count: each element of C is one fused multiply-add chain
 *     c = (accumulate ? C : 0);  for k = 0 .. K-1:  c = fma(a[m][k], b[k][n], c)
 * in float32. The SIMD kernels put different n in different lanes, never different k, so a lane
 * computes exactly what the scalar fmaf() loop computes; K is cut into blocks, but a partial sum
 * goes to C in float32 and comes back unchanged; threads split rows or columns, never k. FMA is
 * correctly rounded by IEEE 754, so AVX-512, AVX2 and the scalar path agree bit for bit
 * (tests/unit/test_exec.c forces each path and compares).
 */
#include <assert.h>
#include <cblas.h>
#include <immintrin.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "exec_internal.h"

/* Blocking: a KC x NC panel of op(B) (1 MiB) and an MC x KC block of op(A) per worker. MC is a
 * multiple of every path's MR, NC of every NR. */
#define GEMM_KC       256
#define GEMM_MC       96
#define GEMM_NC       1024
#define GEMM_MR_MAX   8
#define GEMM_NR_MAX   32
#define GEMM_A_FLOATS (GEMM_MC * GEMM_KC)
#define GEMM_B_FLOATS (GEMM_KC * GEMM_NC)

static_assert(GEMM_MC % 8 == 0 && GEMM_MC % 6 == 0 && GEMM_MC % 4 == 0, "MC fits every MR");
static_assert(GEMM_NC % 32 == 0 && GEMM_NC % 16 == 0, "NC fits every NR");
static_assert(GEMM_A_FLOATS % 16 == 0, "the B panel starts 64-byte aligned");

/* A register tile MR x NR: c[MR x NR] (ldc) (= or +=) a[kc x MR packed] . b[kc x NR packed]. */
typedef void (*tile_fn)(size_t kc, const float *a, const float *b, float *c, size_t ldc, bool load);

typedef struct gemm_path {
    size_t mr;
    size_t nr;
    tile_fn tile;
} gemm_path;

size_t ns__gemm_pack_floats(void)
{
    return GEMM_A_FLOATS + GEMM_B_FLOATS + GEMM_MR_MAX * GEMM_NR_MAX;
}

/* OpenBLAS cores that predate AVX2: where one of these runs on a CPU with AVX2 or AVX-512, its
 * runtime detection did not know the CPU (0.3.21 takes newer Xeons for a Prescott) and sgemm
 * runs several times below what the CPU can do. */
static const char *const blas_generic_cores[] = {"Prescott", "Core2",       "Penryn", "Dunnington",
                                                 "Nehalem",  "Sandybridge", "Atom"};

const char *ns_exec_blas_coretype_hint(void)
{
    const char *core = openblas_get_corename();
    bool generic = false;
    for (size_t i = 0; i < sizeof blas_generic_cores / sizeof blas_generic_cores[0]; i++)
        generic = generic || (core != NULL && strcmp(core, blas_generic_cores[i]) == 0);
    if (!generic)
        return NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
    return NULL;
}

static pthread_once_t blas_check_once = PTHREAD_ONCE_INIT;

static void blas_check(void)
{
    const char *hint = ns_exec_blas_coretype_hint();
    if (hint != NULL)
        NS_LOG_W("exec",
                 "openblas_core=%s is generic for this CPU; sgemm runs several times slower "
                 "than it could: start with OPENBLAS_CORETYPE=%s",
                 openblas_get_corename(), hint);
}

void ns__blas_check_core(void)
{
    pthread_once(&blas_check_once, blas_check);
}

void ns__blas_set_threads(uint32_t threads)
{
    NS_ASSERT(threads >= 1);
    if (openblas_get_num_threads() != (int)threads)
        openblas_set_num_threads((int)threads);
}

/* ---- tiles -------------------------------------------------------------------------------- */

static void tile_scalar(size_t kc, const float *a, const float *b, float *c, size_t ldc, bool load)
{
    float acc[4][4];
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++)
            acc[i][j] = load ? c[i * ldc + j] : 0.0f;
    for (size_t k = 0; k < kc; k++) {
        for (size_t i = 0; i < 4; i++)
            for (size_t j = 0; j < 4; j++)
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        a += 4;
        b += 4;
    }
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++)
            c[i * ldc + j] = acc[i][j];
}

__attribute__((target("avx2,fma"))) static void tile_avx2(size_t kc, const float *a, const float *b,
                                                          float *c, size_t ldc, bool load)
{
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (size_t i = 0; i < 6; i++) {
        acc[i][0] = load ? _mm256_loadu_ps(c + i * ldc) : _mm256_setzero_ps();
        acc[i][1] = load ? _mm256_loadu_ps(c + i * ldc + 8) : _mm256_setzero_ps();
    }
    for (size_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b);
        __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
        for (size_t i = 0; i < 6; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += 6;
        b += 16;
    }
#pragma GCC unroll 6
    for (size_t i = 0; i < 6; i++) {
        _mm256_storeu_ps(c + i * ldc, acc[i][0]);
        _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
    }
}

__attribute__((target("avx512f"))) static void
tile_avx512(size_t kc, const float *a, const float *b, float *c, size_t ldc, bool load)
{
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (size_t i = 0; i < 8; i++) {
        acc[i][0] = load ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
        acc[i][1] = load ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
    }
    for (size_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b);
        __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
        for (size_t i = 0; i < 8; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += 8;
        b += 32;
    }
#pragma GCC unroll 8
    for (size_t i = 0; i < 8; i++) {
        _mm512_storeu_ps(c + i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
    }
}

static const gemm_path path_scalar = {.mr = 4, .nr = 4, .tile = tile_scalar};
static const gemm_path path_avx2 = {.mr = 6, .nr = 16, .tile = tile_avx2};
static const gemm_path path_avx512 = {.mr = 8, .nr = 32, .tile = tile_avx512};

static ns__simd_path forced_path = NS__SIMD_AUTO;

static bool cpu_has(ns__simd_path path)
{
    switch (path) {
    case NS__SIMD_AUTO:
    case NS__SIMD_SCALAR:
        return true;
    case NS__SIMD_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case NS__SIMD_AVX512:
        return __builtin_cpu_supports("avx512f");
    }
    return false;
}

bool ns__simd_force(ns__simd_path path)
{
    if (!cpu_has(path))
        return false;
    forced_path = path;
    return true;
}

ns__simd_path ns__simd_current(void)
{
    if (forced_path != NS__SIMD_AUTO)
        return forced_path;
    if (cpu_has(NS__SIMD_AVX512))
        return NS__SIMD_AVX512;
    if (cpu_has(NS__SIMD_AVX2))
        return NS__SIMD_AVX2;
    return NS__SIMD_SCALAR;
}

static const gemm_path *choose_path(void)
{
    switch (ns__simd_current()) {
    case NS__SIMD_AVX512:
        return &path_avx512;
    case NS__SIMD_AVX2:
        return &path_avx2;
    case NS__SIMD_SCALAR:
    case NS__SIMD_AUTO:
        break;
    }
    return &path_scalar;
}

/* ---- packing ------------------------------------------------------------------------------ */

/* The operands as the blocked loops see them: op(A) is M x K, op(B) is K x N. */
typedef struct gemm_args {
    bool trans_a;
    bool trans_b;
    size_t M;
    size_t N;
    size_t K;
    const float *A;
    size_t lda;
    const float *B;
    size_t ldb;
    bool accumulate;
    float *C;
    size_t ldc;
} gemm_args;

/* Rows [i0, i0+mc) and columns [k0, k0+kc) of op(A) into panels of MR rows, k-major, zero
 * padded to whole panels. Each case reads memory in the order it is laid out. */
static void pack_a(const gemm_path *p, float *dst, const gemm_args *g, size_t i0, size_t k0,
                   size_t mc, size_t kc)
{
    size_t mr = p->mr;
    for (size_t ip = 0; ip < mc; ip += mr) {
        size_t rows = mc - ip < mr ? mc - ip : mr;
        if (g->trans_a) { /* A is [K, M]: a row of A holds MR consecutive values of a panel */
            for (size_t k = 0; k < kc; k++)
                memcpy(dst + k * mr, g->A + (k0 + k) * g->lda + i0 + ip, rows * sizeof(float));
        } else {
            for (size_t i = 0; i < rows; i++) {
                const float *src = g->A + (i0 + ip + i) * g->lda + k0;
                for (size_t k = 0; k < kc; k++)
                    dst[k * mr + i] = src[k];
            }
        }
        for (size_t k = 0; k < kc && rows < mr; k++)
            memset(dst + k * mr + rows, 0, (mr - rows) * sizeof(float));
        dst += mr * kc;
    }
}

/* Rows [k0, k0+kc) and columns [j0, j0+nc) of op(B) into panels of NR columns, k-major. */
static void pack_b(const gemm_path *p, float *dst, const gemm_args *g, size_t k0, size_t j0,
                   size_t kc, size_t nc)
{
    size_t nr = p->nr;
    for (size_t jp = 0; jp < nc; jp += nr) {
        size_t cols = nc - jp < nr ? nc - jp : nr;
        if (g->trans_b) { /* B is [N, K]: a row of B is one column of the panel */
            for (size_t j = 0; j < cols; j++) {
                const float *src = g->B + (j0 + jp + j) * g->ldb + k0;
                for (size_t k = 0; k < kc; k++)
                    dst[k * nr + j] = src[k];
            }
        } else {
            for (size_t k = 0; k < kc; k++)
                memcpy(dst + k * nr, g->B + (k0 + k) * g->ldb + j0 + jp, cols * sizeof(float));
        }
        for (size_t k = 0; k < kc && cols < nr; k++)
            memset(dst + k * nr + cols, 0, (nr - cols) * sizeof(float));
        dst += nr * kc;
    }
}

/* ---- the reproducible multiply ------------------------------------------------------------- */

/* One tile of C, through a local buffer when it is cut by the edge of C. */
static void edge_tile(const gemm_path *p, float *buf, size_t kc, const float *a, const float *b,
                      float *c, size_t ldc, bool load, size_t mr, size_t nr)
{
    if (mr == p->mr && nr == p->nr) {
        p->tile(kc, a, b, c, ldc, load);
        return;
    }
    memset(buf, 0, p->mr * p->nr * sizeof(float));
    for (size_t i = 0; i < mr && load; i++)
        memcpy(buf + i * p->nr, c + i * ldc, nr * sizeof(float));
    p->tile(kc, a, b, buf, p->nr, load);
    for (size_t i = 0; i < mr; i++)
        memcpy(c + i * ldc, buf + i * p->nr, nr * sizeof(float));
}

/* The block ic.. of op(A) against the packed panel of op(B). */
static void macro_block(const gemm_path *p, float *pack, const gemm_args *g, size_t ic, size_t mc,
                        size_t pc, size_t kc, size_t jc, size_t nc)
{
    float *apack = pack;
    float *bpack = pack + GEMM_A_FLOATS;
    float *edge = pack + GEMM_A_FLOATS + GEMM_B_FLOATS;
    bool load = g->accumulate || pc > 0;
    pack_a(p, apack, g, ic, pc, mc, kc);
    for (size_t jr = 0; jr < nc; jr += p->nr) {
        size_t nr = nc - jr < p->nr ? nc - jr : p->nr;
        for (size_t ir = 0; ir < mc; ir += p->mr) {
            size_t mr = mc - ir < p->mr ? mc - ir : p->mr;
            float *c = g->C + (ic + ir) * g->ldc + jc + jr;
            edge_tile(p, edge, kc, apack + ir * kc, bpack + jr * kc, c, g->ldc, load, mr, nr);
        }
    }
}

/* The whole of g (already cut to one worker's rows or columns) with one worker's buffers. */
static void repro_gemm(float *pack, const gemm_args *g)
{
    const gemm_path *p = choose_path();
    if (g->K == 0) {
        for (size_t i = 0; i < g->M && !g->accumulate; i++)
            memset(g->C + i * g->ldc, 0, g->N * sizeof(float));
        return;
    }
    for (size_t jc = 0; jc < g->N; jc += GEMM_NC) {
        size_t nc = g->N - jc < GEMM_NC ? g->N - jc : GEMM_NC;
        for (size_t pc = 0; pc < g->K; pc += GEMM_KC) {
            size_t kc = g->K - pc < GEMM_KC ? g->K - pc : GEMM_KC;
            pack_b(p, pack + GEMM_A_FLOATS, g, pc, jc, kc, nc);
            for (size_t ic = 0; ic < g->M; ic += GEMM_MC) {
                size_t mc = g->M - ic < GEMM_MC ? g->M - ic : GEMM_MC;
                macro_block(p, pack, g, ic, mc, pc, kc, jc, nc);
            }
        }
    }
}

/* g restricted to rows [m0, m1) of C. */
static gemm_args rows_of(const gemm_args *g, size_t m0, size_t m1)
{
    gemm_args part = *g;
    part.M = m1 - m0;
    part.A = g->trans_a ? g->A + m0 : g->A + m0 * g->lda;
    part.C = g->C + m0 * g->ldc;
    return part;
}

/* g restricted to columns [n0, n1) of C. */
static gemm_args cols_of(const gemm_args *g, size_t n0, size_t n1)
{
    gemm_args part = *g;
    part.N = n1 - n0;
    part.B = g->trans_b ? g->B + n0 * g->ldb : g->B + n0;
    part.C = g->C + n0;
    return part;
}

typedef struct split_task {
    ns_exec *ex;
    const gemm_args *g;
    bool by_rows;
    size_t unit; /* rows or columns an item */
} split_task;

static void split_task_run(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const split_task *t = arg;
    size_t total = t->by_rows ? t->g->M : t->g->N;
    size_t lo = begin * t->unit;
    size_t hi = end * t->unit < total ? end * t->unit : total;
    gemm_args part = t->by_rows ? rows_of(t->g, lo, hi) : cols_of(t->g, lo, hi);
    repro_gemm(t->ex->pack[worker], &part);
}

/* ---- the entry ---------------------------------------------------------------------------- */

static void fast_gemm(const gemm_args *g)
{
    NS_ASSERT(g->M <= INT_MAX && g->N <= INT_MAX && g->K <= INT_MAX);
    NS_ASSERT(g->lda <= INT_MAX && g->ldb <= INT_MAX && g->ldc <= INT_MAX);
    cblas_sgemm(CblasRowMajor, g->trans_a ? CblasTrans : CblasNoTrans,
                g->trans_b ? CblasTrans : CblasNoTrans, (int)g->M, (int)g->N, (int)g->K, 1.0f, g->A,
                (int)g->lda, g->B, (int)g->ldb, g->accumulate ? 1.0f : 0.0f, g->C, (int)g->ldc);
}

void ns__gemm(ns_exec *ex, uint32_t worker, bool trans_a, bool trans_b, size_t M, size_t N,
              size_t K, const float *A, size_t lda, const float *B, size_t ldb, bool accumulate,
              float *C, size_t ldc)
{
    NS_ASSERT(ex != NULL);
    NS_ASSERT(worker == NS__WORKERS_ALL || worker < ex->threads);
    NS_ASSERT(A != NULL && B != NULL && C != NULL);
    NS_ASSERT(lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N) && ldc >= N);
    gemm_args g = {.trans_a = trans_a,
                   .trans_b = trans_b,
                   .M = M,
                   .N = N,
                   .K = K,
                   .A = A,
                   .lda = lda,
                   .B = B,
                   .ldb = ldb,
                   .accumulate = accumulate,
                   .C = C,
                   .ldc = ldc};
    if (M == 0 || N == 0)
        return;
    if (ex->mode == NS_EXEC_FAST) {
        if (worker == NS__WORKERS_ALL)
            ns__blas_set_threads(ex->threads);
        fast_gemm(&g);
        return;
    }
    if (worker != NS__WORKERS_ALL) {
        repro_gemm(ex->pack[worker], &g);
        return;
    }
    const gemm_path *p = choose_path();
    split_task t = {.ex = ex, .g = &g, .by_rows = M / p->mr >= N / p->nr};
    t.unit = t.by_rows ? p->mr : p->nr;
    size_t total = t.by_rows ? M : N;
    ns__parallel_for(ex, (total + t.unit - 1) / t.unit, split_task_run, &t);
}
