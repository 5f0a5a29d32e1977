/*
 * testutil.c: temporary directories and the fake env for unit tests.
 */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

void ns_test_tempdir(char *out, size_t out_size)
{
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(out, out_size, "%s/nstest.XXXXXX", tmp != NULL ? tmp : "/tmp");
    NS_ASSERT(n > 0 && (size_t)n < out_size);
    NS_ASSERT(mkdtemp(out) != NULL);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void ns_test_rmtree(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static uint64_t fake_now(void *ctx)
{
    return ((ns_fake_env *)ctx)->now_ms;
}

static uint64_t fake_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    ns_fake_env *fake = ctx;
    NS_ASSERT(fake->timer_count < NS_FAKE_TIMERS_MAX);
    ns_fake_timer *t = &fake->timers[fake->timer_count++];
    t->id = ++fake->next_timer_id;
    t->at_ms = at_ms;
    t->fn = fn;
    t->arg = arg;
    return t->id;
}

static void fake_timer_cancel(void *ctx, uint64_t id)
{
    ns_fake_env *fake = ctx;
    for (size_t i = 0; i < fake->timer_count; i++) {
        if (fake->timers[i].id == id) {
            fake->timers[i] = fake->timers[--fake->timer_count];
            return;
        }
    }
}

static int fake_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    (void)ctx;
    (void)to;
    (void)ch;
    (void)f;
    return NS_EINVAL;
}

static void fake_random(void *ctx, void *buf, size_t n)
{
    ns_fake_env *fake = ctx;
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++) {
        fake->rng_state = fake->rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (uint8_t)(fake->rng_state >> 56);
    }
}

void ns_fake_env_init(ns_fake_env *fake, uint64_t start_ms, uint64_t seed)
{
    memset(fake, 0, sizeof *fake);
    fake->now_ms = start_ms;
    fake->rng_state = seed;
    fake->env = (ns_env){.now_ms = fake_now,
                         .timer = fake_timer,
                         .timer_cancel = fake_timer_cancel,
                         .send = fake_send,
                         .random = fake_random,
                         .ctx = fake};
}

void ns_fake_env_advance(ns_fake_env *fake, uint64_t ms)
{
    uint64_t end = fake->now_ms + ms;
    for (;;) {
        size_t due = fake->timer_count;
        for (size_t i = 0; i < fake->timer_count; i++) {
            if (fake->timers[i].at_ms <= end &&
                (due == fake->timer_count || fake->timers[i].at_ms < fake->timers[due].at_ms))
                due = i;
        }
        if (due == fake->timer_count)
            break;
        ns_fake_timer t = fake->timers[due];
        fake->timers[due] = fake->timers[--fake->timer_count];
        if (t.at_ms > fake->now_ms)
            fake->now_ms = t.at_ms;
        t.fn(t.arg, fake->now_ms);
    }
    fake->now_ms = end;
}
