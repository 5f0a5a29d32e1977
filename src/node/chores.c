/*
 * chores.c: the daemon's periodic work as a sans-IO core.
 *
 * Each chore has an interval and a one-shot env timer that re-arms itself after the chore ran,
 * aligned to the schedule (start + k * interval) rather than to when the callback happened to
 * run, so a slow chore does not make the schedule drift. It never reads a clock itself: time comes
 * from the env, which is libuv in the daemon and a hand-driven clock in the tests.
 */
#include <string.h>

#include "neuroshard/node.h"

void ns_chores_init(ns_chores *chores, const ns_env *env, ns_chore_fn fn, void *arg)
{
    NS_ASSERT(chores != NULL);
    NS_ASSERT(env != NULL);
    NS_ASSERT(fn != NULL);
    memset(chores, 0, sizeof *chores);
    chores->env = env;
    chores->fn = fn;
    chores->arg = arg;
    for (int i = 0; i < NS_CHORE_COUNT_; i++) {
        chores->slot[i].owner = chores;
        chores->slot[i].chore = (ns_chore)i;
    }
}

void ns_chores_set_interval(ns_chores *chores, ns_chore chore, uint64_t interval_ms)
{
    NS_ASSERT(chore >= 0 && chore < NS_CHORE_COUNT_);
    NS_ASSERT(!chores->started);
    chores->interval_ms[chore] = interval_ms;
}

static void chore_timer_fired(void *arg, uint64_t now_ms);

static void chore_arm(ns_chores *chores, ns_chore chore, uint64_t at_ms)
{
    chores->due_ms[chore] = at_ms;
    chores->timer_id[chore] =
        ns_env_timer(chores->env, at_ms, chore_timer_fired, &chores->slot[chore]);
    NS_ASSERT(chores->timer_id[chore] != 0);
}

static void chore_timer_fired(void *arg, uint64_t now_ms)
{
    ns_chore_slot *slot = arg;
    ns_chores *chores = slot->owner;
    ns_chore chore = slot->chore;
    NS_ASSERT(chores->started);
    chores->timer_id[chore] = 0;
    chores->runs[chore]++;
    chores->fn(chores->arg, chore, now_ms);
    if (!chores->started)
        return; /* the chore stopped us */
    /* The next slot on the schedule after now; slots missed while we were late are skipped. */
    uint64_t interval = chores->interval_ms[chore];
    uint64_t next = chores->due_ms[chore] + interval;
    if (next <= now_ms)
        next += (now_ms - next) / interval * interval + interval;
    chore_arm(chores, chore, next);
}

void ns_chores_start(ns_chores *chores)
{
    NS_ASSERT(!chores->started);
    chores->started = true;
    uint64_t now = ns_env_now(chores->env);
    for (int i = 0; i < NS_CHORE_COUNT_; i++) {
        if (chores->interval_ms[i] > 0)
            chore_arm(chores, (ns_chore)i, now + chores->interval_ms[i]);
    }
}

void ns_chores_stop(ns_chores *chores)
{
    if (!chores->started)
        return;
    chores->started = false;
    for (int i = 0; i < NS_CHORE_COUNT_; i++) {
        if (chores->timer_id[i] != 0) {
            ns_env_timer_cancel(chores->env, chores->timer_id[i]);
            chores->timer_id[i] = 0;
        }
    }
}
