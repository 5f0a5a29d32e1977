/*
 * env_uv.c: ns_env bound to a libuv loop, the daemon's side of the seam.
 *
 * Time is the loop's cached time (read once per loop pass) shifted to the Unix epoch once at
 * start, so it never goes backwards. Each timer is a uv_timer_t inside a heap entry that lives
 * until its close callback; cancelling or firing closes it. Randomness is libsodium's.
 */
#include <sodium.h>
#include <stdlib.h>
#include <sys/time.h>

#include "node_internal.h"

struct ns_uv_timer {
    uv_timer_t handle;
    ns_uv_env *owner;
    uint64_t id;
    ns_timer_fn fn;
    void *arg;
    ns_uv_timer *prev, *next;
};

static uint64_t uv_env_now(void *ctx)
{
    ns_uv_env *uvenv = ctx;
    return (uint64_t)((int64_t)uv_now(uvenv->loop) + uvenv->epoch_offset_ms);
}

static void timer_unlink(ns_uv_env *uvenv, ns_uv_timer *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        uvenv->timers = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    NS_ASSERT(uvenv->timer_count > 0);
    uvenv->timer_count--;
}

static void timer_close_callback(uv_handle_t *handle)
{
    free(handle->data);
}

static void timer_fire_callback(uv_timer_t *handle)
{
    ns_uv_timer *t = handle->data;
    ns_uv_env *uvenv = t->owner;
    timer_unlink(uvenv, t);
    uv_close((uv_handle_t *)&t->handle, timer_close_callback);
    t->fn(t->arg, uv_env_now(uvenv));
}

static uint64_t uv_env_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    ns_uv_env *uvenv = ctx;
    NS_ASSERT(uvenv->timer_count < NS_UV_TIMERS_MAX); /* a core that leaks timers is a bug */
    ns_uv_timer *t = calloc(1, sizeof *t);
    NS_ASSERT(t != NULL);
    t->owner = uvenv;
    t->id = ++uvenv->next_timer_id;
    t->fn = fn;
    t->arg = arg;
    t->handle.data = t;
    NS_ASSERT(uv_timer_init(uvenv->loop, &t->handle) == 0);
    uint64_t now = uv_env_now(uvenv);
    NS_ASSERT(uv_timer_start(&t->handle, timer_fire_callback, at_ms > now ? at_ms - now : 0, 0) ==
              0);
    t->next = uvenv->timers;
    if (t->next != NULL)
        t->next->prev = t;
    uvenv->timers = t;
    uvenv->timer_count++;
    return t->id;
}

static void uv_env_timer_cancel(void *ctx, uint64_t id)
{
    ns_uv_env *uvenv = ctx;
    for (ns_uv_timer *t = uvenv->timers; t != NULL; t = t->next) {
        if (t->id == id) {
            timer_unlink(uvenv, t);
            uv_timer_stop(&t->handle);
            uv_close((uv_handle_t *)&t->handle, timer_close_callback);
            return;
        }
    }
}

static int uv_env_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    ns_uv_env *uvenv = ctx;
    if (uvenv->send == NULL)
        return NS_EINVAL; /* the peer network is not up (yet, or any more) */
    return uvenv->send(uvenv->send_arg, to, ch, f);
}

static void uv_env_random(void *ctx, void *buf, size_t n)
{
    (void)ctx;
    randombytes_buf(buf, n);
}

void ns_uv_env_init(ns_uv_env *uvenv, uv_loop_t *loop)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    int64_t wall_ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    uv_update_time(loop);
    *uvenv = (ns_uv_env){
        .env = {.now_ms = uv_env_now,
                .timer = uv_env_timer,
                .timer_cancel = uv_env_timer_cancel,
                .send = uv_env_send,
                .random = uv_env_random,
                .ctx = uvenv},
        .loop = loop,
        .epoch_offset_ms = wall_ms - (int64_t)uv_now(loop),
    };
}

void ns_uv_env_close(ns_uv_env *uvenv)
{
    while (uvenv->timers != NULL)
        uv_env_timer_cancel(uvenv, uvenv->timers->id);
}
