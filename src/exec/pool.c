/*
 * pool.c: the executor: its worker threads, its job queue and the parallel-for of the kernels.
 *
 * An executor of n threads owns one job thread and n - 1 helpers. Jobs (ns_exec_submit) run on
 * the job thread in order, so compute never runs on the daemon's libuv loop thread. Inside a job,
 * a kernel's ns__parallel_for splits its items into n contiguous ranges: the calling thread takes
 * the first and the helpers the rest; the split depends only on the item count and n. Helpers
 * sleep on a condition variable between regions (no spinning: OpenBLAS's own threads run in
 * between). Everything is allocated in ns_exec_new; nothing here allocates afterwards.
 */
#include <stdlib.h>
#include <string.h>

#include "exec_internal.h"

/* Set while a thread runs a task, so that a nested region is caught as the bug it is. */
static _Thread_local bool in_region;

void ns__split(size_t items, uint32_t workers, uint32_t w, size_t *begin, size_t *end)
{
    NS_ASSERT(workers > 0);
    NS_ASSERT(w < workers);
    *begin = items * w / workers;
    *end = items * (w + 1) / workers;
    NS_ASSERT(*begin <= *end);
    NS_ASSERT(*end <= items);
}

static void run_range(ns_exec *ex, uint32_t w)
{
    size_t begin;
    size_t end;
    ns__split(ex->task_items, ex->threads, w, &begin, &end);
    if (begin < end) {
        in_region = true;
        ex->task(ex->task_arg, begin, end, w);
        in_region = false;
    }
}

static void *helper_main(void *arg)
{
    const ns__helper_arg *start = arg;
    ns_exec *ex = start->ex;
    uint32_t worker = start->worker;

    pthread_mutex_lock(&ex->mu);
    uint64_t seen = 0; /* regions count from 1; one may begin before this thread first looks */
    for (;;) {
        while (ex->generation == seen && !ex->stopping)
            pthread_cond_wait(&ex->work_cv, &ex->mu);
        if (ex->stopping)
            break;
        seen = ex->generation;
        pthread_mutex_unlock(&ex->mu);
        run_range(ex, worker);
        pthread_mutex_lock(&ex->mu);
        ex->helpers_done++;
        if (ex->helpers_done == ex->threads - 1)
            pthread_cond_signal(&ex->done_cv);
    }
    pthread_mutex_unlock(&ex->mu);
    return NULL;
}

void ns__parallel_for(ns_exec *ex, size_t items, ns__task_fn task, void *arg)
{
    NS_ASSERT(ex != NULL);
    NS_ASSERT(task != NULL);
    NS_ASSERT(!in_region);
    if (items == 0)
        return;
    pthread_mutex_lock(&ex->region_mu);
    ex->task = task;
    ex->task_arg = arg;
    ex->task_items = items;
    if (ex->threads > 1) {
        pthread_mutex_lock(&ex->mu);
        ex->helpers_done = 0;
        ex->generation++;
        pthread_cond_broadcast(&ex->work_cv);
        pthread_mutex_unlock(&ex->mu);
    }
    run_range(ex, 0);
    if (ex->threads > 1) {
        pthread_mutex_lock(&ex->mu);
        while (ex->helpers_done != ex->threads - 1)
            pthread_cond_wait(&ex->done_cv, &ex->mu);
        pthread_mutex_unlock(&ex->mu);
    }
    ex->task = NULL;
    ex->task_arg = NULL;
    pthread_mutex_unlock(&ex->region_mu);
}

/* ---- the job thread ----------------------------------------------------------------------- */

static void *job_main(void *arg)
{
    ns_exec *ex = arg;
    pthread_mutex_lock(&ex->job_mu);
    for (;;) {
        while (ex->job_count == 0 && !ex->job_stopping)
            pthread_cond_wait(&ex->job_cv, &ex->job_mu);
        if (ex->job_count == 0)
            break; /* stopping, and every queued job has run */
        ns__job job = ex->jobs[ex->job_head];
        ex->job_head = (ex->job_head + 1) % NS_EXEC_JOBS_MAX;
        ex->job_count--;
        ex->job_running = true;
        pthread_mutex_unlock(&ex->job_mu);
        job.fn(job.arg);
        pthread_mutex_lock(&ex->job_mu);
        ex->job_running = false;
        if (ex->job_count == 0)
            pthread_cond_broadcast(&ex->idle_cv);
    }
    pthread_mutex_unlock(&ex->job_mu);
    return NULL;
}

int ns_exec_submit(ns_exec *ex, void *arg, ns_exec_job_fn job)
{
    NS_ASSERT(ex != NULL);
    NS_ASSERT(job != NULL);
    pthread_mutex_lock(&ex->job_mu);
    NS_ASSERT(!ex->job_stopping);
    if (ex->job_count == NS_EXEC_JOBS_MAX) {
        pthread_mutex_unlock(&ex->job_mu);
        return NS_ELIMIT;
    }
    uint32_t tail = (ex->job_head + ex->job_count) % NS_EXEC_JOBS_MAX;
    ex->jobs[tail] = (ns__job){.fn = job, .arg = arg};
    ex->job_count++;
    pthread_cond_signal(&ex->job_cv);
    pthread_mutex_unlock(&ex->job_mu);
    return NS_OK;
}

void ns_exec_wait_idle(ns_exec *ex)
{
    NS_ASSERT(ex != NULL);
    pthread_mutex_lock(&ex->job_mu);
    while (ex->job_count != 0 || ex->job_running)
        pthread_cond_wait(&ex->idle_cv, &ex->job_mu);
    pthread_mutex_unlock(&ex->job_mu);
}

/* ---- life ----------------------------------------------------------------------------------- */

static int start_helpers(ns_exec *ex)
{
    for (uint32_t w = 1; w < ex->threads; w++) {
        ex->helper_args[w] = (ns__helper_arg){.ex = ex, .worker = w};
        if (pthread_create(&ex->helpers[w], NULL, helper_main, &ex->helper_args[w]) != 0)
            return NS_ENOMEM;
        ex->helpers_started++;
    }
    return NS_OK;
}

static void init_sync(ns_exec *ex)
{
    pthread_mutex_init(&ex->region_mu, NULL);
    pthread_mutex_init(&ex->mu, NULL);
    pthread_cond_init(&ex->work_cv, NULL);
    pthread_cond_init(&ex->done_cv, NULL);
    pthread_mutex_init(&ex->job_mu, NULL);
    pthread_cond_init(&ex->job_cv, NULL);
    pthread_cond_init(&ex->idle_cv, NULL);
}

int ns_exec_new(ns_exec **out, uint32_t threads, ns_exec_mode mode)
{
    NS_ASSERT(out != NULL);
    *out = NULL;
    if (threads < 1 || threads > NS_EXEC_THREADS_MAX)
        return NS_EINVAL;
    if (mode != NS_EXEC_FAST && mode != NS_EXEC_REPRODUCIBLE)
        return NS_EINVAL;
    ns_exec *ex = calloc(1, sizeof *ex);
    if (ex == NULL)
        return NS_ENOMEM;
    ex->threads = threads;
    ex->mode = mode;
    init_sync(ex);
    for (uint32_t w = 0; w < threads; w++) {
        if (posix_memalign((void **)&ex->pack[w], 64, ns__gemm_pack_floats() * sizeof(float))) {
            ns_exec_free(ex);
            return NS_ENOMEM;
        }
    }
    int err = start_helpers(ex);
    if (err == NS_OK && pthread_create(&ex->job_thread, NULL, job_main, ex) != 0)
        err = NS_ENOMEM;
    if (err != NS_OK) {
        ns_exec_free(ex);
        return err;
    }
    ex->job_started = true;
    if (mode == NS_EXEC_FAST)
        ns__blas_check_core();
    *out = ex;
    return NS_OK;
}

void ns_exec_free(ns_exec *ex)
{
    if (ex == NULL)
        return;
    if (ex->job_started) {
        pthread_mutex_lock(&ex->job_mu);
        ex->job_stopping = true;
        pthread_cond_signal(&ex->job_cv);
        pthread_mutex_unlock(&ex->job_mu);
        pthread_join(ex->job_thread, NULL);
    }
    pthread_mutex_lock(&ex->mu);
    ex->stopping = true;
    pthread_cond_broadcast(&ex->work_cv);
    pthread_mutex_unlock(&ex->mu);
    for (uint32_t w = 1; w <= ex->helpers_started; w++)
        pthread_join(ex->helpers[w], NULL);
    for (uint32_t w = 0; w < NS_EXEC_THREADS_MAX; w++)
        free(ex->pack[w]);
    pthread_mutex_destroy(&ex->region_mu);
    pthread_mutex_destroy(&ex->mu);
    pthread_cond_destroy(&ex->work_cv);
    pthread_cond_destroy(&ex->done_cv);
    pthread_mutex_destroy(&ex->job_mu);
    pthread_cond_destroy(&ex->job_cv);
    pthread_cond_destroy(&ex->idle_cv);
    free(ex);
}

uint32_t ns_exec_threads(const ns_exec *ex)
{
    NS_ASSERT(ex != NULL);
    return ex->threads;
}

ns_exec_mode ns_exec_mode_of(const ns_exec *ex)
{
    NS_ASSERT(ex != NULL);
    return ex->mode;
}
