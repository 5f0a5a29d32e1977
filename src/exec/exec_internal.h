/*
 * exec_internal.h: what the executor's files share and the public header does not promise.
 *
 * The executor struct (pool.c owns it), the parallel-for every kernel uses, the one matrix
 * multiply that every kernel calls (gemm.c: OpenBLAS in the fast mode, our fixed-order kernel in
 * the reproducible mode), and the deterministic math functions (detmath.c).
 */
#ifndef NEUROSHARD_EXEC_INTERNAL_H
#define NEUROSHARD_EXEC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/exec.h"

/* ---- the pool ----------------------------------------------------------------------------- */

/* One task of a parallel-for: items [begin, end) on worker `worker` (0 = the calling thread). */
typedef void (*ns__task_fn)(void *arg, size_t begin, size_t end, uint32_t worker);

typedef struct ns__job {
    ns_exec_job_fn fn;
    void *arg;
} ns__job;

typedef struct ns__helper_arg {
    ns_exec *ex;
    uint32_t worker;
} ns__helper_arg;

struct ns_exec {
    uint32_t threads;
    ns_exec_mode mode;

    /* parallel-for: one region at a time (region_mu), handed to the helpers by generation */
    pthread_mutex_t region_mu;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;
    pthread_cond_t done_cv;
    uint64_t generation;
    uint32_t helpers_done;
    bool stopping;
    ns__task_fn task;
    void *task_arg;
    size_t task_items;
    pthread_t helpers[NS_EXEC_THREADS_MAX];
    ns__helper_arg helper_args[NS_EXEC_THREADS_MAX];
    uint32_t helpers_started;

    /* the job thread */
    pthread_mutex_t job_mu;
    pthread_cond_t job_cv;
    pthread_cond_t idle_cv;
    ns__job jobs[NS_EXEC_JOBS_MAX];
    uint32_t job_head;
    uint32_t job_count;
    bool job_running;
    bool job_stopping;
    bool job_started;
    pthread_t job_thread;

    /* per-worker packing buffers of the reproducible matrix multiply (gemm.c) */
    float *pack[NS_EXEC_THREADS_MAX];
};

/* Splits items into exec->threads contiguous ranges, the n-th range to worker n, and returns
 * when all are done. The split depends only on items and the thread count; kernels make each
 * output element the work of one range, so results do not depend on the split at all. Regions
 * do not nest. */
void ns__parallel_for(ns_exec *ex, size_t items, ns__task_fn task, void *arg);
/* The range [*begin, *end) of worker w among `workers` for `items` items. */
void ns__split(size_t items, uint32_t workers, uint32_t w, size_t *begin, size_t *end);

/* ---- matrix multiply ---------------------------------------------------------------------- */

/* C[M,N] (= or +=) op(A)[M,K] . op(B)[K,N], row-major, with leading dimensions lda, ldb, ldc.
 * op(A) = A, or A^T when trans_a (A is then [K,M]); the same for B.
 * worker NS__WORKERS_ALL: the whole executor computes (call outside a parallel region);
 * worker w: the calling task of a parallel region computes alone, with worker w's buffers. */
#define NS__WORKERS_ALL UINT32_MAX
void ns__gemm(ns_exec *ex, uint32_t worker, bool trans_a, bool trans_b, size_t M, size_t N,
              size_t K, const float *A, size_t lda, const float *B, size_t ldb, bool accumulate,
              float *C, size_t ldc);
/* The floats of one worker's packing buffer. */
size_t ns__gemm_pack_floats(void);
/* Logs once per process when OpenBLAS runs generic kernels on a CPU it did not recognise. */
void ns__blas_check_core(void);
/* Tells OpenBLAS how many threads to use from now on (process-wide). */
void ns__blas_set_threads(uint32_t threads);

/* The SIMD code paths of the reproducible kernels (the matrix multiply, the exp of an array).
 * Every path gives the same bits; tests force each to show it. */
typedef enum ns__simd_path {
    NS__SIMD_AUTO = 0,
    NS__SIMD_SCALAR = 1,
    NS__SIMD_AVX2 = 2,
    NS__SIMD_AVX512 = 3,
} ns__simd_path;
/* Forces a path for the whole process (tests only); false when this CPU cannot run it. */
bool ns__simd_force(ns__simd_path path);
/* The path in use: the forced one, else the widest this CPU runs. Never NS__SIMD_AUTO. */
ns__simd_path ns__simd_current(void);

/* ---- deterministic math (detmath.c) -------------------------------------------------------- */

/* Built only from +, -, *, / and sqrt, which IEEE 754 rounds the same everywhere, so every
 * machine gets the same bits (libm's results differ by CPU and version). */
double ns__det_exp(double x);
double ns__det_log(double x); /* x > 0 */
void ns__det_sincos(double x, double *sin_out, double *cos_out);
float ns__det_expf(float x);
/* out[i] = ns__det_expf(in[i]), bit for bit, with SIMD where the CPU has it; out may be in. */
void ns__det_expf_array(float *out, const float *in, size_t n);
/* base^n by squaring. */
double ns__det_powi(double base, uint64_t n);
/* A standard normal from two 64-bit uniform words (Box-Muller, the cosine branch). */
double ns__det_normal(uint64_t u1, uint64_t u2);
/* splitmix64's mixing function. */
uint64_t ns__mix64(uint64_t x);

#endif
