/*
 * testutil.h: helpers shared by the unit tests: temporary directories and a fake env whose clock
 * the test drives by hand (the one intended test double for sans-IO cores).
 */
#ifndef NS_TESTUTIL_H
#define NS_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"

/* Creates a fresh directory under $TMPDIR (or /tmp); aborts on failure. */
void ns_test_tempdir(char *out, size_t out_size);
/* Removes a directory tree made by ns_test_tempdir. */
void ns_test_rmtree(const char *dir);

#define NS_FAKE_TIMERS_MAX 64

typedef struct ns_fake_timer {
    uint64_t id;
    uint64_t at_ms;
    ns_timer_fn fn;
    void *arg;
} ns_fake_timer;

/* A fake env: time moves only when the test calls ns_fake_env_advance, which fires due timers in
 * time order; random bytes come from a fixed-seed generator; send is refused. */
typedef struct ns_fake_env {
    ns_env env;
    uint64_t now_ms;
    uint64_t next_timer_id;
    uint64_t rng_state;
    ns_fake_timer timers[NS_FAKE_TIMERS_MAX];
    size_t timer_count;
} ns_fake_env;

void ns_fake_env_init(ns_fake_env *fake, uint64_t start_ms, uint64_t seed);
/* Moves the clock forward by ms, firing every timer that comes due, in order. */
void ns_fake_env_advance(ns_fake_env *fake, uint64_t ms);

#endif
