/*
 * quorum.c: the quorum core (SPEC S5): propose and accept, the session, the members' health.
 *
 * One ns_quorum per node, in one of four states: idle; proposing (our plan is out, answers come
 * in through ns_quorum_on_answer until all accept, one refuses or NS_QUORUM_PROPOSE_TIMEOUT_MS
 * passes); joining (we accepted someone's plan and wait for ns_quorum_on_formed); active. An
 * active quorum has two env timers, both counted from when it formed here: the heartbeat tick
 * (send ours, count the others' missed beats: degraded, then stale and replaced from the pool,
 * or dissolved) and the session check at 80 % of each one-hour period (renew with enough
 * batches, up to 4 h, else end at the period's end). Every proposal is checked against the
 * announcements in the pool, and each refusal is counted by reason; an accepted plan takes the
 * members' tiers and latencies from this node's own pool, not from the proposer's claims. Before a
 * callback runs the core's state is already final, so a callback may call back in (say, propose
 * again after a failure); only the propose callback may not, since answers arrive later through
 * ns_quorum_on_answer.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/quorum.h"

#define QUORUM_RENEW_CHECK_MS (NS_QUORUM_SESSION_MS * NS_QUORUM_RENEW_CHECK_PERCENT / 100u)

static_assert(NS_QUORUM_DEGRADED_MISSED < NS_QUORUM_STALE_MISSED, "degraded comes before stale");
static_assert(NS_QUORUM_JOIN_TIMEOUT_MS > NS_QUORUM_PROPOSE_TIMEOUT_MS,
              "a member waits longer than the proposer");
static_assert(NS_QUORUM_SESSION_MAX_MS % NS_QUORUM_SESSION_MS == 0, "whole periods");

struct ns_quorum {
    ns_quorum_config config;
    const ns_env *env;
    ns_quorum_state state;
    ns_quorum_proposal current; /* valid unless idle */
    bool answered[NS_QUORUM_MEMBERS_MAX];
    uint64_t heard_ms[NS_QUORUM_MEMBERS_MAX];
    ns_quorum_health health[NS_QUORUM_MEMBERS_MAX];
    uint64_t period_end_ms; /* the current one-hour period */
    uint64_t session_limit_ms;
    const char *end_reason; /* not renewed: dissolves at period_end_ms; NULL otherwise */
    uint64_t batches;
    uint64_t timeout_timer; /* 0 when none */
    uint64_t heartbeat_timer;
    uint64_t session_timer;
    uint64_t refused[NS_QUORUM_REFUSE_COUNT_];
    uint64_t ignored;
    size_t pool_count;
    ns_quorum_candidate pool[NS_QUORUM_CANDIDATES_MAX]; /* sorted by id */
};

static const char *const refusal_texts[NS_QUORUM_REFUSE_COUNT_] = {
    [NS_QUORUM_REFUSE_NOT_IN_POOL] = "sender not in the pool",
    [NS_QUORUM_REFUSE_NOT_PROPOSER] = "sender is not the proposer",
    [NS_QUORUM_REFUSE_MALFORMED] = "malformed proposal",
    [NS_QUORUM_REFUSE_NO_COVER] = "members do not cover the layers",
    [NS_QUORUM_REFUSE_NOT_HOLDER] = "a member does not hold its layers",
    [NS_QUORUM_REFUSE_TIERS] = "tiers not compatible",
    [NS_QUORUM_REFUSE_BAD_ID] = "quorum id does not match",
    [NS_QUORUM_REFUSE_NOT_MEMBER] = "this node is not a member",
    [NS_QUORUM_REFUSE_IN_QUORUM] = "already in a quorum",
};

const char *ns_quorum_refusal_text(ns_quorum_refusal why)
{
    NS_ASSERT((unsigned)why < NS_QUORUM_REFUSE_COUNT_);
    return refusal_texts[why];
}

static int candidate_cmp(const void *a, const void *b)
{
    return memcmp(((const ns_quorum_candidate *)a)->node.id,
                  ((const ns_quorum_candidate *)b)->node.id, NS_ID_BYTES);
}

static int candidate_ptr_cmp(const void *a, const void *b)
{
    return candidate_cmp(*(const ns_quorum_candidate *const *)a,
                         *(const ns_quorum_candidate *const *)b);
}

static const ns_quorum_candidate *pool_find(const ns_quorum *q, const uint8_t id[NS_ID_BYTES])
{
    ns_quorum_candidate key;
    memcpy(key.node.id, id, NS_ID_BYTES);
    return bsearch(&key, q->pool, q->pool_count, sizeof q->pool[0], candidate_cmp);
}

static int member_index(const ns_quorum_proposal *p, const uint8_t id[NS_ID_BYTES])
{
    for (uint32_t i = 0; i < p->member_count; i++) {
        if (memcmp(p->members[i].id, id, NS_ID_BYTES) == 0)
            return (int)i;
    }
    return -1;
}

static bool is_self(const ns_quorum *q, const uint8_t id[NS_ID_BYTES])
{
    return memcmp(q->config.self_id, id, NS_ID_BYTES) == 0;
}

static void cancel(ns_quorum *q, uint64_t *timer)
{
    if (*timer != 0)
        ns_env_timer_cancel(q->env, *timer);
    *timer = 0;
}

/* ---- life and death ----------------------------------------------------------------------- */

int ns_quorum_new(ns_quorum **out, const ns_quorum_config *config, const ns_env *env)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(config != NULL);
    NS_ASSERT(env != NULL);
    const ns_quorum_config *c = config;
    if (c->layers == 0 || c->layers > NS_POOL_LAYERS_MAX || !c->propose || !c->formed ||
        !c->failed || !c->heartbeat || !c->health || !c->replaced || !c->renewed || !c->dissolved)
        return NS_EINVAL;
    ns_quorum *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NS_ENOMEM;
    q->config = *config;
    q->env = env;
    q->state = NS_QUORUM_IDLE;
    *out = q;
    return NS_OK;
}

static void cancel_all(ns_quorum *q)
{
    cancel(q, &q->timeout_timer);
    cancel(q, &q->heartbeat_timer);
    cancel(q, &q->session_timer);
}

void ns_quorum_free(ns_quorum *q)
{
    if (q == NULL)
        return;
    cancel_all(q);
    free(q);
}

int ns_quorum_set_pool(ns_quorum *q, const ns_quorum_candidate *candidates, size_t n)
{
    NS_ASSERT(q != NULL);
    if (n > NS_QUORUM_CANDIDATES_MAX)
        return NS_ETOOBIG;
    if (n > 0 && candidates == NULL)
        return NS_EINVAL;
    const ns_quorum_candidate *sorted[NS_QUORUM_CANDIDATES_MAX];
    for (size_t i = 0; i < n; i++)
        sorted[i] = &candidates[i];
    qsort(sorted, n, sizeof sorted[0], candidate_ptr_cmp);
    for (size_t i = 1; i < n; i++) {
        if (candidate_cmp(sorted[i - 1], sorted[i]) == 0)
            return NS_EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        q->pool[i] = *sorted[i];
    q->pool_count = n;
    return NS_OK;
}

/* Leaves whatever state we were in; the callbacks see a copy, so they may start anew. */
static void fail(ns_quorum *q, const char *reason)
{
    NS_ASSERT(q->state == NS_QUORUM_PROPOSING || q->state == NS_QUORUM_JOINING);
    cancel_all(q);
    q->state = NS_QUORUM_IDLE;
    ns_quorum_proposal p = q->current;
    NS_LOG_I("quorum", "formation failed reason=\"%s\"", reason);
    q->config.failed(q->config.arg, &p, reason);
}

static void dissolve(ns_quorum *q, const char *reason)
{
    NS_ASSERT(q->state == NS_QUORUM_ACTIVE);
    cancel_all(q);
    q->state = NS_QUORUM_IDLE;
    ns_quorum_proposal p = q->current;
    NS_LOG_I("quorum", "dissolved members=%u reason=\"%s\"", p.member_count, reason);
    q->config.dissolved(q->config.arg, &p, reason);
}

void ns_quorum_dissolve(ns_quorum *q, const char *reason)
{
    NS_ASSERT(q != NULL);
    NS_ASSERT(reason != NULL);
    switch (q->state) {
    case NS_QUORUM_IDLE:
        return;
    case NS_QUORUM_PROPOSING:
    case NS_QUORUM_JOINING:
        fail(q, reason);
        return;
    case NS_QUORUM_ACTIVE:
        dissolve(q, reason);
        return;
    }
}

/* ---- formation ---------------------------------------------------------------------------- */

static void heartbeat_fired(void *arg, uint64_t now_ms);
static void session_fired(void *arg, uint64_t now_ms);

static void timeout_fired(void *arg, uint64_t now_ms)
{
    ns_quorum *q = arg;
    (void)now_ms;
    q->timeout_timer = 0;
    fail(q, q->state == NS_QUORUM_PROPOSING ? "answers timed out" : "not formed in time");
}

static void form(ns_quorum *q)
{
    uint64_t now = ns_env_now(q->env);
    cancel(q, &q->timeout_timer);
    q->state = NS_QUORUM_ACTIVE;
    q->period_end_ms = now + NS_QUORUM_SESSION_MS;
    q->session_limit_ms = now + NS_QUORUM_SESSION_MAX_MS;
    q->end_reason = NULL;
    q->batches = 0;
    for (uint32_t i = 0; i < q->current.member_count; i++) {
        q->heard_ms[i] = now;
        q->health[i] = NS_QUORUM_HEALTHY;
    }
    q->heartbeat_timer = ns_env_timer(q->env, now + NS_QUORUM_HEARTBEAT_MS, heartbeat_fired, q);
    q->session_timer = ns_env_timer(q->env, now + QUORUM_RENEW_CHECK_MS, session_fired, q);
    NS_LOG_I("quorum", "formed members=%u latency_ms_sum=%llu", q->current.member_count,
             (unsigned long long)q->current.latency_ms_sum);
    q->config.formed(q->config.arg, &q->current);
}

static bool all_answered(const ns_quorum *q)
{
    for (uint32_t i = 0; i < q->current.member_count; i++) {
        if (!q->answered[i])
            return false;
    }
    return true;
}

int ns_quorum_propose(ns_quorum *q)
{
    NS_ASSERT(q != NULL);
    if (q->state != NS_QUORUM_IDLE)
        return NS_EEXIST;
    uint64_t now = ns_env_now(q->env);
    ns_quorum_proposal plan;
    int err =
        ns_quorum_plan(q->pool, q->pool_count, q->config.layers, q->config.head_milli, now, &plan);
    if (err != NS_OK)
        return err;
    memcpy(plan.proposer, q->config.self_id, NS_ID_BYTES);
    q->current = plan;
    q->state = NS_QUORUM_PROPOSING;
    for (uint32_t i = 0; i < plan.member_count; i++)
        q->answered[i] = is_self(q, plan.members[i].id);
    q->timeout_timer = ns_env_timer(q->env, now + NS_QUORUM_PROPOSE_TIMEOUT_MS, timeout_fired, q);
    for (uint32_t i = 0; i < plan.member_count; i++) {
        if (!is_self(q, plan.members[i].id))
            q->config.propose(q->config.arg, plan.members[i].id, &plan);
    }
    NS_ASSERT(q->state == NS_QUORUM_PROPOSING); /* propose must not call back in */
    if (all_answered(q))
        form(q); /* solo: nobody else to ask */
    return NS_OK;
}

void ns_quorum_on_answer(ns_quorum *q, const uint8_t from[NS_ID_BYTES], bool accepted)
{
    NS_ASSERT(q != NULL);
    int i = q->state == NS_QUORUM_PROPOSING ? member_index(&q->current, from) : -1;
    if (i < 0 || q->answered[i]) {
        q->ignored++;
        return;
    }
    if (!accepted) {
        fail(q, "refused by a member");
        return;
    }
    q->answered[i] = true;
    if (all_answered(q))
        form(q);
}

static int refuse(ns_quorum_refusal *why, ns_quorum_refusal reason, int err)
{
    *why = reason;
    return err;
}

/* The checks of a proposal that need no state but the pool, in the order they are reported. */
static int check_plan(const ns_quorum *q, const ns_quorum_proposal *p, ns_quorum_refusal *why)
{
    if (p->layers != q->config.layers || p->member_count == 0 ||
        p->member_count > NS_QUORUM_MEMBERS_MAX)
        return refuse(why, NS_QUORUM_REFUSE_MALFORMED, NS_EINVAL);
    for (uint32_t i = 0; i < p->member_count; i++) {
        if (member_index(p, p->members[i].id) != (int)i)
            return refuse(why, NS_QUORUM_REFUSE_MALFORMED, NS_EINVAL); /* named twice */
    }
    uint32_t at = 0;
    for (uint32_t i = 0; i < p->member_count; i++) {
        const ns_quorum_member *m = &p->members[i];
        if (m->layer_first != at || m->layer_last <= m->layer_first)
            return refuse(why, NS_QUORUM_REFUSE_NO_COVER, NS_EINVAL);
        at = m->layer_last;
    }
    if (at != p->layers)
        return refuse(why, NS_QUORUM_REFUSE_NO_COVER, NS_EINVAL);
    ns_tier tiers[NS_QUORUM_MEMBERS_MAX];
    for (uint32_t i = 0; i < p->member_count; i++) {
        const ns_quorum_member *m = &p->members[i];
        const ns_quorum_candidate *c = pool_find(q, m->id);
        if (c == NULL || m->layer_first < c->node.layer_first || m->layer_last > c->node.layer_last)
            return refuse(why, NS_QUORUM_REFUSE_NOT_HOLDER, NS_EINVAL);
        tiers[i] = c->node.tier; /* as announced, not as proposed */
    }
    if (!ns_quorum_tiers_compatible(tiers, p->member_count))
        return refuse(why, NS_QUORUM_REFUSE_TIERS, NS_EINVAL);
    uint8_t id[NS_SHA256_BYTES];
    ns_quorum_id(p, id);
    if (memcmp(id, p->id, NS_SHA256_BYTES) != 0)
        return refuse(why, NS_QUORUM_REFUSE_BAD_ID, NS_EINVAL);
    return NS_OK;
}

static int check_proposal(const ns_quorum *q, const uint8_t from[NS_ID_BYTES],
                          const ns_quorum_proposal *p, ns_quorum_refusal *why)
{
    if (pool_find(q, from) == NULL)
        return refuse(why, NS_QUORUM_REFUSE_NOT_IN_POOL, NS_EPERM);
    if (memcmp(p->proposer, from, NS_ID_BYTES) != 0)
        return refuse(why, NS_QUORUM_REFUSE_NOT_PROPOSER, NS_EPERM);
    int err = check_plan(q, p, why);
    if (err != NS_OK)
        return err;
    if (member_index(p, q->config.self_id) < 0)
        return refuse(why, NS_QUORUM_REFUSE_NOT_MEMBER, NS_EINVAL);
    if (q->state != NS_QUORUM_IDLE)
        return refuse(why, NS_QUORUM_REFUSE_IN_QUORUM, NS_EEXIST);
    return NS_OK;
}

int ns_quorum_on_proposal(ns_quorum *q, const uint8_t from[NS_ID_BYTES],
                          const ns_quorum_proposal *p, ns_quorum_refusal *why)
{
    NS_ASSERT(q != NULL);
    NS_ASSERT(p != NULL);
    NS_ASSERT(why != NULL);
    int err = check_proposal(q, from, p, why);
    if (err != NS_OK) {
        NS_ASSERT((unsigned)*why < NS_QUORUM_REFUSE_COUNT_);
        q->refused[*why]++;
        NS_LOG_D("quorum", "proposal refused reason=\"%s\"", refusal_texts[*why]);
        return err;
    }
    q->current = *p;
    q->current.latency_ms_sum = 0;
    for (uint32_t i = 0; i < p->member_count; i++) {
        ns_quorum_member *m = &q->current.members[i];
        const ns_quorum_candidate *c = pool_find(q, m->id);
        NS_ASSERT(c != NULL); /* check_plan found every member */
        m->tier = c->node.tier;
        m->latency_ms = c->latency_ms;
        q->current.latency_ms_sum += c->latency_ms;
    }
    q->state = NS_QUORUM_JOINING;
    uint64_t at = ns_env_now(q->env) + NS_QUORUM_JOIN_TIMEOUT_MS;
    q->timeout_timer = ns_env_timer(q->env, at, timeout_fired, q);
    return NS_OK;
}

void ns_quorum_on_formed(ns_quorum *q, const uint8_t from[NS_ID_BYTES],
                         const uint8_t id[NS_SHA256_BYTES])
{
    NS_ASSERT(q != NULL);
    if (q->state != NS_QUORUM_JOINING || memcmp(from, q->current.proposer, NS_ID_BYTES) != 0 ||
        memcmp(id, q->current.id, NS_SHA256_BYTES) != 0) {
        q->ignored++;
        return;
    }
    form(q);
}

/* ---- health ------------------------------------------------------------------------------- */

/* The holder that best replaces members[index]: holds its layers, is not a member, keeps the
 * tiers compatible; the lowest latency, ties to the lowest id (the pool is sorted by id). */
static const ns_quorum_candidate *replacement_for(const ns_quorum *q, uint32_t index)
{
    const ns_quorum_proposal *p = &q->current;
    const ns_quorum_member *stale = &p->members[index];
    ns_tier tiers[NS_QUORUM_MEMBERS_MAX];
    for (uint32_t i = 0; i < p->member_count; i++)
        tiers[i] = p->members[i].tier;
    const ns_quorum_candidate *best = NULL;
    for (size_t k = 0; k < q->pool_count; k++) {
        const ns_quorum_candidate *c = &q->pool[k];
        if (member_index(p, c->node.id) >= 0 || c->node.layer_first > stale->layer_first ||
            c->node.layer_last < stale->layer_last)
            continue;
        tiers[index] = c->node.tier;
        if (!ns_quorum_tiers_compatible(tiers, p->member_count))
            continue;
        if (best == NULL || c->latency_ms < best->latency_ms)
            best = c;
    }
    return best;
}

static void replace(ns_quorum *q, uint32_t index, uint64_t now_ms)
{
    const ns_quorum_candidate *c = replacement_for(q, index);
    if (c == NULL) {
        dissolve(q, "stale member without replacement");
        return;
    }
    ns_quorum_member stale = q->current.members[index];
    ns_quorum_member *m = &q->current.members[index];
    memcpy(m->id, c->node.id, NS_ID_BYTES);
    m->tier = c->node.tier;
    m->latency_ms = c->latency_ms;
    q->current.latency_ms_sum = q->current.latency_ms_sum - stale.latency_ms + c->latency_ms;
    q->heard_ms[index] = now_ms;
    q->health[index] = NS_QUORUM_HEALTHY;
    NS_LOG_I("quorum", "member replaced layer_first=%u layer_last=%u", m->layer_first,
             m->layer_last);
    q->config.replaced(q->config.arg, &stale, m, &q->current);
}

/* Counts each other member's missed heartbeats; stops as soon as a callback ended the quorum. */
static void check_members(ns_quorum *q, uint64_t now_ms)
{
    for (uint32_t i = 0; i < q->current.member_count && q->state == NS_QUORUM_ACTIVE; i++) {
        if (is_self(q, q->current.members[i].id))
            continue;
        uint64_t missed = (now_ms - q->heard_ms[i]) / NS_QUORUM_HEARTBEAT_MS;
        if (missed >= NS_QUORUM_STALE_MISSED) {
            replace(q, i, now_ms);
        } else if (missed >= NS_QUORUM_DEGRADED_MISSED && q->health[i] == NS_QUORUM_HEALTHY) {
            q->health[i] = NS_QUORUM_DEGRADED;
            q->config.health(q->config.arg, &q->current.members[i], NS_QUORUM_DEGRADED);
        }
    }
}

static void heartbeat_fired(void *arg, uint64_t now_ms)
{
    ns_quorum *q = arg;
    NS_ASSERT(q->state == NS_QUORUM_ACTIVE);
    q->heartbeat_timer = ns_env_timer(q->env, now_ms + NS_QUORUM_HEARTBEAT_MS, heartbeat_fired, q);
    q->config.heartbeat(q->config.arg, &q->current);
    if (q->state == NS_QUORUM_ACTIVE)
        check_members(q, now_ms);
}

void ns_quorum_on_heartbeat(ns_quorum *q, const uint8_t from[NS_ID_BYTES])
{
    NS_ASSERT(q != NULL);
    int i = q->state == NS_QUORUM_ACTIVE ? member_index(&q->current, from) : -1;
    if (i < 0 || is_self(q, from)) {
        q->ignored++;
        return;
    }
    q->heard_ms[i] = ns_env_now(q->env);
    if (q->health[i] == NS_QUORUM_DEGRADED) {
        q->health[i] = NS_QUORUM_HEALTHY;
        q->config.health(q->config.arg, &q->current.members[i], NS_QUORUM_HEALTHY);
    }
}

/* ---- the session -------------------------------------------------------------------------- */

void ns_quorum_add_batches(ns_quorum *q, uint64_t batches)
{
    NS_ASSERT(q != NULL);
    if (q->state == NS_QUORUM_ACTIVE)
        q->batches = batches > UINT64_MAX - q->batches ? UINT64_MAX : q->batches + batches;
}

/* At 80 % of a period: renew for another period if it trained enough and the session has room,
 * else let it run to the period's end and dissolve there. */
static void session_fired(void *arg, uint64_t now_ms)
{
    ns_quorum *q = arg;
    NS_ASSERT(q->state == NS_QUORUM_ACTIVE);
    q->session_timer = 0;
    if (q->end_reason != NULL) {
        dissolve(q, q->end_reason);
        return;
    }
    bool room = q->period_end_ms + NS_QUORUM_SESSION_MS <= q->session_limit_ms;
    if (q->batches < NS_QUORUM_RENEW_BATCHES_MIN || !room) {
        q->end_reason = room ? "too few batches to renew" : "session at its longest";
        q->session_timer = ns_env_timer(q->env, q->period_end_ms, session_fired, q);
        return;
    }
    q->period_end_ms += NS_QUORUM_SESSION_MS;
    q->batches = 0;
    q->session_timer = ns_env_timer(q->env, now_ms + NS_QUORUM_SESSION_MS, session_fired, q);
    q->config.renewed(q->config.arg, &q->current, q->period_end_ms);
}

/* ---- queries ------------------------------------------------------------------------------ */

ns_quorum_state ns_quorum_get_state(const ns_quorum *q)
{
    return q->state;
}

const ns_quorum_proposal *ns_quorum_current(const ns_quorum *q)
{
    return q->state == NS_QUORUM_IDLE ? NULL : &q->current;
}

int ns_quorum_member_health(const ns_quorum *q, const uint8_t id[NS_ID_BYTES],
                            ns_quorum_health *out)
{
    int i = q->state == NS_QUORUM_ACTIVE ? member_index(&q->current, id) : -1;
    if (i < 0 || is_self(q, id))
        return NS_ENOENT;
    *out = q->health[i];
    return NS_OK;
}

uint64_t ns_quorum_session_end_ms(const ns_quorum *q)
{
    return q->state == NS_QUORUM_ACTIVE ? q->period_end_ms : 0;
}

uint64_t ns_quorum_refused(const ns_quorum *q, ns_quorum_refusal why)
{
    NS_ASSERT((unsigned)why < NS_QUORUM_REFUSE_COUNT_);
    return q->refused[why];
}

uint64_t ns_quorum_ignored(const ns_quorum *q)
{
    return q->ignored;
}
