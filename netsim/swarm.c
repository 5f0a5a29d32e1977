/*
 * swarm.c: `netsim --swarm FILE`: quorums and 1F1B pipelines of a mixed-tier swarm, run by the
 * real quorum and pipeline cores in virtual time.
 *
 * Nodes of tiers T1-T5 (drawn from the scenario's shares) announce their memory, and the real
 * layer pool (ns_pool_assign) gives each a range of one fixed architecture (ns_arch_for_memory of
 * arch_memory_mb). Every node has a real ns_quorum core on a virtual-clock ns_env: a free node
 * plans over the free holders (ns_quorum_plan) and proposes; proposals, answers, "formed" notes
 * and heartbeats are messages over links with a per-pair latency and a FIFO uplink. A quorum that
 * formed at every member runs one real ns_pipe core a stage: a forward of a micro-batch takes the
 * node's layer latency times its layers, a backward twice that, and activations and gradients
 * cross the links. Churn takes nodes away silently and brings new ones; the cores' heartbeats
 * find the stale member and replace it (netsim restarts the pipeline once the newcomer has
 * downloaded the layer state) or dissolve the quorum. Figures are kept for a calm window and a
 * churn window, and the run passes when the scenario's goals are met. One seed, one result: no
 * draw comes from anywhere but the seed, and only the "wall" line reads the wall clock.
 */
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "netsim.h"
#include "neuroshard/pipeline.h"
#include "neuroshard/quorum.h"
#include "neuroshard/swarm.h"

#define SW_NODES_MAX      NS_QUORUM_CANDIDATES_MAX /* live at once: all holders fit one pool */
#define SW_SERIALS_MAX    (1u << 20)               /* nodes over a run, churn included */
#define SW_SLOTS_MAX      (1u << 24)               /* timers or messages pending at once */
#define SW_TIERS          5
#define SW_WINDOWS        2  /* calm, churn */
#define SW_CONTROL_BYTES  64 /* answers, notes, heartbeats, norms, scales */
#define SW_MEMBER_BYTES   48 /* a proposal's bytes a member */
#define SW_LATENCY_MS_MIN 1.0
#define SW_LATENCY_MS_MAX 2000.0
#define SW_STATE_PERCENT  75 /* of a range's pool bytes a replacement downloads: no gradients */
#define SW_REASONS_MAX    8
#define SW_HEAD_MILLI     1000 /* the finisher's head and loss take one layer's time */
#define SW_NONE           UINT32_MAX
#define SW_EXIT_USAGE     2
#define SW_EXIT_FAIL      3

static_assert(SW_NODES_MAX <= NS_POOL_NODES_MAX, "every live node fits one pool assignment");
static_assert(NS_QUORUM_MEMBERS_MAX <= NS_PIPE_STAGES_MAX, "every quorum fits one pipeline");

/* A forward through one layer, per tier (SPEC S2): log-uniform in [from, to) microseconds. */
static const double tier_layer_us[SW_TIERS + 1] = {1000, 10000, 50000, 200000, 1000001, 3000000};

/* ---- the scenario --------------------------------------------------------------------------- */

typedef struct sw_cfg {
    double seed, nodes, duration_s, join_spread_s, warmup_s, churn_start_s, churn_per_hour;
    double tiers[SW_TIERS], tier_memory_mb[SW_TIERS], tier_bandwidth_mbps[SW_TIERS];
    double arch_memory_mb, micro_batches, run_ahead, seq_len, update_cost;
    double latency_median_ms, latency_sigma, retry_s;
    double goal_first_quorum_s, goal_share, goal_utilisation, goal_churn_share,
        goal_churn_utilisation;
} sw_cfg;

typedef struct sw_key {
    const char *name;
    size_t offset, count;
    double min, max;
    bool whole;
} sw_key;

#define AT(f) #f, offsetof(sw_cfg, f) /* a key's name and where its values go */
static const sw_key keys[] = {
    {AT(seed), 1, 0, 9007199254740992.0, true},
    {AT(nodes), 1, 2, SW_NODES_MAX, true},
    {AT(duration_s), 1, 1, NS_SIM_DURATION_S_MAX, false},
    {AT(join_spread_s), 1, 0, 86400, false},
    {AT(warmup_s), 1, 0, NS_SIM_DURATION_S_MAX, false},
    {AT(churn_start_s), 1, 0, NS_SIM_DURATION_S_MAX, false},
    {AT(churn_per_hour), 1, 0, 10, false},
    {AT(tiers), SW_TIERS, 0, 1, false},
    {AT(tier_memory_mb), SW_TIERS, 256, 1048576, false},
    {AT(tier_bandwidth_mbps), SW_TIERS, 1, 100000, false},
    {AT(arch_memory_mb), 1, NS_ARCH_MEMORY_MB_MIN, NS_ARCH_MEMORY_MB_MAX, true},
    {AT(micro_batches), 1, 1, NS_PIPE_MICRO_MAX, true},
    {AT(run_ahead), 1, 0, NS_PIPE_MICRO_MAX, true},
    {AT(seq_len), 1, 1, NS_PIPE_SEQ_MAX, true},
    {AT(update_cost), 1, 0, 100, false},
    {AT(latency_median_ms), 1, SW_LATENCY_MS_MIN, SW_LATENCY_MS_MAX, false},
    {AT(latency_sigma), 1, 0, 3, false},
    {AT(retry_s), 1, 0.1, 3600, false},
    {AT(goal_first_quorum_s), 1, 0, NS_SIM_DURATION_S_MAX, false},
    {AT(goal_share), 1, 0, 1, false},
    {AT(goal_utilisation), 1, 0, 1, false},
    {AT(goal_churn_share), 1, 0, 1, false},
    {AT(goal_churn_utilisation), 1, 0, 1, false},
};

typedef struct ini_ctx {
    sw_cfg *cfg;
    char why[160];
} ini_ctx;

static int ini_line(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx *c = user;
    const sw_key *k = NULL;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0] && k == NULL; i++)
        k = strcmp(keys[i].name, name) == 0 ? &keys[i] : NULL;
    if (strcmp(section, "swarm") != 0 || k == NULL) {
        snprintf(c->why, sizeof c->why, "unknown section or key '%s'", name);
        return 0;
    }
    double *out = (double *)((char *)c->cfg + k->offset);
    const char *at = value;
    for (size_t i = 0; i < k->count; i++) {
        char *end = NULL;
        double v = strtod(at, &end);
        while (end != at && (*end == ' ' || (*end == ',' && i + 1 < k->count)))
            end++;
        if (end == at || (i + 1 == k->count && *end != '\0') || !(v >= k->min && v <= k->max) ||
            (k->whole && v != floor(v))) {
            snprintf(c->why, sizeof c->why, "%s needs %zu number(s) from %g to %g", name, k->count,
                     k->min, k->max);
            return 0;
        }
        out[i] = v;
        at = end;
    }
    return 1;
}

static const char *cfg_check(const sw_cfg *c)
{
    double sum = 0;
    for (int t = 0; t < SW_TIERS; t++)
        sum += c->tiers[t];
    if (fabs(sum - 1) > 1e-6)
        return "the tier shares must sum to 1";
    if (c->warmup_s > c->churn_start_s || c->churn_start_s > c->duration_s)
        return "needs warmup_s <= churn_start_s <= duration_s";
    return NULL;
}

/* ---- the world ------------------------------------------------------------------------------ */

typedef struct sw sw;
typedef struct sw_quorum sw_quorum;

typedef struct sw_timer {
    ns_timer_fn fn;
    void *arg;
    uint32_t generation; /* bumped when the slot is freed, so stale ids do nothing */
    uint32_t next_free;
    bool pending, cancelled;
} sw_timer;

typedef enum {
    MSG_PROPOSE = 0,
    MSG_ANSWER = 1,
    MSG_FORMED = 2,
    MSG_WITHDRAW = 3, /* the proposer failed: members that accepted stop waiting */
    MSG_HEARTBEAT = 4,
    MSG_ACT = 5,
    MSG_GRAD = 6,
    MSG_NORM = 7,
    MSG_SCALE = 8,
} sw_msg_kind;

typedef struct sw_msg {
    sw_msg_kind kind;
    uint32_t from, to;                  /* serials */
    uint32_t quorum, uid, epoch, stage; /* pipeline messages: the stage it goes to */
    uint64_t step;
    uint32_t micro;
    double value; /* NORM: the running sum; SCALE: the scale */
    bool accepted;
    uint8_t qid[NS_SHA256_BYTES];
    ns_quorum_proposal *proposal; /* PROPOSE, owned by the message */
    uint32_t next_free;
} sw_msg;

typedef struct sw_node {
    ns_env env; /* ctx is this node */
    sw *sim;
    uint32_t serial, live_index;
    bool live;
    bool standin;            /* runs a stage as a replacement, outside its own (idle) core */
    uint32_t quorum;         /* the quorum it runs a stage of, SW_NONE if none */
    uint8_t id[NS_ID_BYTES]; /* random, with the serial in its last 4 bytes */
    ns_tier tier;
    uint64_t memory_mb, layer_us;
    double bandwidth_mbps;
    ns_pool_range range;
    ns_quorum *core; /* NULL once gone */
    uint64_t uplink_free_us, planned_generation, gone_us;
    ns_sim_rng rng;
} sw_node;

typedef struct sw_stage {
    sw_quorum *q;
    uint32_t index, serial, layer_first, layer_last;
    ns_pipe *pipe; /* NULL unless the quorum runs */
    ns_pipe_op op;
    bool busy;
    uint64_t op_end_us, op_timer, forward_us;
} sw_stage;

struct sw_quorum {
    sw *sim;
    bool used, running, ever_ran, dissolving;
    uint32_t index, uid, epoch, stages;
    uint8_t id[NS_SHA256_BYTES];
    sw_stage st[NS_QUORUM_MEMBERS_MAX];
    uint64_t created_us, step_start_us, steps_done, restart_at_us, restart_timer, beat_timer;
};

typedef struct sw_window {
    uint64_t from_us, to_us;
    double live_us, capable_us, in_quorum_us; /* node-microseconds */
    double tier_live_us[SW_TIERS], tier_in_quorum_us[SW_TIERS];
    double member_us, busy_us;                  /* stage-microseconds of formed quorums */
    double span_us, fb_us, theory_us, bound_us; /* completed steps: S x span, weighted */
    double micro_batches;
    uint64_t steps;
} sw_window;

typedef struct sw_stats {
    uint64_t plans, plans_empty, plans_without_self, proposals, refusals, failed, withdrawn;
    uint64_t formed, members, size_min, size_max, solo, renewals, degraded;
    uint64_t first_full_us, share_reached_us;
    uint64_t departures, departures_in_quorum, replacements, detected, detect_us, download_us;
    uint64_t disagreements, pool_errors, steps, pipe_refused, stale_msgs, dead_msgs, msgs;
    const char *reasons[SW_REASONS_MAX];
    uint64_t reason_count[SW_REASONS_MAX];
} sw_stats;

struct sw {
    sw_cfg cfg;
    ns_arch arch;
    uint64_t now_us, end_us, act_bytes;
    ns_sim_heap heap;
    ns_sim_rng rng_nodes, rng_churn, rng_retry;
    sw_timer *timers;
    uint32_t timer_count, timer_cap, timer_free;
    sw_msg *msgs;
    uint32_t msg_count, msg_cap, msg_free;
    sw_node **nodes; /* by serial; kept after a node leaves */
    uint32_t serial_count, serial_cap;
    uint32_t live[SW_NODES_MAX];
    uint32_t live_count, capable_count, in_quorum_count;
    uint32_t tier_live[SW_TIERS], tier_in_quorum[SW_TIERS];
    sw_quorum quorums[SW_NODES_MAX];
    uint32_t uid_next;
    uint64_t generation; /* bumped whenever the set of free holders may have changed */
    ns_quorum_candidate cands[SW_NODES_MAX];
    ns_pool_node pool[SW_NODES_MAX];
    ns_pool_range ranges[SW_NODES_MAX];
    uint64_t flushed_us;
    sw_window win[SW_WINDOWS];
    sw_stats st;
};

enum { EV_TIMER = 100, EV_MSG = 101 };

static uint64_t now_ms(const sw *s)
{
    return NS_SIM_EPOCH_MS + s->now_us / 1000;
}

static void *grow(void *p, uint32_t *cap, size_t size)
{
    uint32_t next = *cap ? *cap * 2 : 1024;
    NS_ASSERT(next <= SW_SLOTS_MAX);
    void *q = realloc(p, size * next);
    NS_ASSERT(q != NULL);
    *cap = next;
    return q;
}

static uint32_t serial_of(const sw *s, const uint8_t id[NS_ID_BYTES])
{
    uint32_t serial = (uint32_t)id[28] << 24 | (uint32_t)id[29] << 16 | id[30] << 8 | id[31];
    NS_ASSERT(serial < s->serial_count);
    return serial;
}

/* ---- timers and the env --------------------------------------------------------------------- */

static uint64_t timer_at(sw *s, uint64_t at_us, ns_timer_fn fn, void *arg)
{
    uint32_t i = s->timer_free;
    if (i != SW_NONE) {
        s->timer_free = s->timers[i].next_free;
    } else {
        if (s->timer_count == s->timer_cap)
            s->timers = grow(s->timers, &s->timer_cap, sizeof *s->timers);
        i = s->timer_count++;
        s->timers[i].generation = 0;
    }
    sw_timer *t = &s->timers[i];
    t->fn = fn;
    t->arg = arg;
    t->pending = true;
    t->cancelled = false;
    NS_ASSERT(ns__sim_heap_push(&s->heap, at_us > s->now_us ? at_us : s->now_us,
                                (ns_sim_event_kind)EV_TIMER, i) == NS_OK);
    return (uint64_t)t->generation << 32 | (i + 1);
}

static void timer_cancel(sw *s, uint64_t *id)
{
    uint32_t i = (uint32_t)*id - 1;
    if (*id != 0 && i < s->timer_count && s->timers[i].generation == *id >> 32 &&
        s->timers[i].pending)
        s->timers[i].cancelled = true;
    *id = 0;
}

static void timer_fire(sw *s, uint32_t i)
{
    sw_timer t = s->timers[i];
    NS_ASSERT(t.pending);
    s->timers[i].pending = false;
    s->timers[i].generation++;
    s->timers[i].next_free = s->timer_free;
    s->timer_free = i;
    if (!t.cancelled)
        t.fn(t.arg, now_ms(s));
}

static uint64_t env_now(void *ctx)
{
    return now_ms(((sw_node *)ctx)->sim);
}

static uint64_t env_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    sw_node *n = ctx;
    uint64_t at_us = at_ms > NS_SIM_EPOCH_MS ? (at_ms - NS_SIM_EPOCH_MS) * 1000 : 0;
    return timer_at(n->sim, at_us, fn, arg);
}

static void env_timer_cancel(void *ctx, uint64_t id)
{
    timer_cancel(((sw_node *)ctx)->sim, &id);
}

/* The quorum core sends through its config's callbacks, never through the env. */
static int env_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    (void)ctx;
    (void)to;
    (void)ch;
    (void)f;
    return NS_EINVAL;
}

static void env_random(void *ctx, void *buf, size_t n)
{
    ns__sim_rng_fill(&((sw_node *)ctx)->rng, buf, n);
}

/* ---- links ---------------------------------------------------------------------------------- */

/* One fixed latency a pair, log-normal over pairs, the same both ways (as links.c). */
static double latency_ms(const sw *s, uint32_t a, uint32_t b)
{
    if (a == b)
        return 0;
    uint64_t h1 = ns__sim_hash3((uint64_t)s->cfg.seed, a < b ? a : b, a < b ? b : a);
    double u1 = ns__sim_unit_from_hash(h1), u2 = ns__sim_unit_from_hash(ns__sim_mix64(h1));
    double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
    double ms = s->cfg.latency_median_ms * exp(s->cfg.latency_sigma * z);
    return fmin(fmax(ms, SW_LATENCY_MS_MIN), SW_LATENCY_MS_MAX);
}

/* Queues m on the sender's FIFO uplink at the slower end's rate, then the pair's latency. */
static void send_msg(sw *s, const sw_msg *m, uint64_t bytes)
{
    sw_node *from = s->nodes[m->from], *to = s->nodes[m->to];
    double mbps = fmin(from->bandwidth_mbps, to->bandwidth_mbps);
    uint64_t start = from->uplink_free_us > s->now_us ? from->uplink_free_us : s->now_us;
    from->uplink_free_us = start + (uint64_t)((double)bytes * 8 / mbps);
    uint64_t at = from->uplink_free_us + (uint64_t)(latency_ms(s, m->from, m->to) * 1000);
    uint32_t i = s->msg_free;
    if (i != SW_NONE) {
        s->msg_free = s->msgs[i].next_free;
    } else {
        if (s->msg_count == s->msg_cap)
            s->msgs = grow(s->msgs, &s->msg_cap, sizeof *s->msgs);
        i = s->msg_count++;
    }
    s->msgs[i] = *m;
    s->st.msgs++;
    NS_ASSERT(ns__sim_heap_push(&s->heap, at, (ns_sim_event_kind)EV_MSG, i) == NS_OK);
}

static void send_control(sw *s, sw_msg_kind kind, uint32_t from, uint32_t to,
                         const uint8_t qid[NS_SHA256_BYTES])
{
    sw_msg m = {.kind = kind, .from = from, .to = to};
    if (qid != NULL)
        memcpy(m.qid, qid, NS_SHA256_BYTES);
    send_msg(s, &m, SW_CONTROL_BYTES);
}

/* ---- accounting ----------------------------------------------------------------------------- */

static double overlap_us(const sw_window *w, uint64_t from_us, uint64_t to_us)
{
    uint64_t a = from_us > w->from_us ? from_us : w->from_us;
    uint64_t b = to_us < w->to_us ? to_us : w->to_us;
    return b > a ? (double)(b - a) : 0;
}

/* Integrates the node counts up to now; call before any of them changes. */
static void flush(sw *s)
{
    for (int w = 0; w < SW_WINDOWS; w++) {
        double dt = overlap_us(&s->win[w], s->flushed_us, s->now_us);
        s->win[w].live_us += s->live_count * dt;
        s->win[w].capable_us += s->capable_count * dt;
        s->win[w].in_quorum_us += s->in_quorum_count * dt;
        for (int t = 0; t < SW_TIERS; t++) {
            s->win[w].tier_live_us[t] += s->tier_live[t] * dt;
            s->win[w].tier_in_quorum_us[t] += s->tier_in_quorum[t] * dt;
        }
    }
    s->flushed_us = s->now_us;
}

/* Once every first node has joined: when the goal share of capable nodes is first in quorums. */
static void note_share(sw *s)
{
    if (s->st.share_reached_us == UINT64_MAX && s->serial_count >= s->cfg.nodes &&
        s->in_quorum_count >= s->cfg.goal_share * s->capable_count)
        s->st.share_reached_us = s->now_us;
}

static void in_quorum_add(sw *s, const sw_node *n, int delta)
{
    flush(s);
    s->in_quorum_count = (uint32_t)((int)s->in_quorum_count + delta);
    s->tier_in_quorum[n->tier - 1] = (uint32_t)((int)s->tier_in_quorum[n->tier - 1] + delta);
    note_share(s);
}

static void add_busy(sw *s, uint64_t from_us, uint64_t to_us, double sign)
{
    for (int w = 0; w < SW_WINDOWS; w++)
        s->win[w].busy_us += sign * overlap_us(&s->win[w], from_us, to_us);
}

static void note_reason(sw *s, const char *reason)
{
    int i = 0;
    while (i < SW_REASONS_MAX - 1 && s->st.reasons[i] != NULL &&
           strcmp(s->st.reasons[i], reason) != 0)
        i++;
    if (s->st.reasons[i] == NULL)
        s->st.reasons[i] = i < SW_REASONS_MAX - 1 ? reason : "other";
    s->st.reason_count[i]++;
}

/* ---- pools: what a node reads from the layer-holder records --------------------------------- */

static bool node_capable(const sw_node *n)
{
    return ns_tier_can_pipeline(n->tier) && n->range.layer_first < n->range.layer_last;
}

/* In no quorum, proposing or joining: what a planner may pick. */
static bool node_free(const sw_node *n)
{
    return n->live && n->core != NULL && !n->standin && n->quorum == SW_NONE && node_capable(n) &&
           ns_quorum_get_state(n->core) == NS_QUORUM_IDLE;
}

static void cand_add(sw *s, size_t *count, const sw_node *self, const sw_node *n)
{
    NS_ASSERT(*count < SW_NODES_MAX);
    ns_quorum_candidate *c = &s->cands[(*count)++];
    memcpy(c->node.id, n->id, NS_ID_BYTES);
    c->node.memory_mb = n->memory_mb;
    c->node.tier = n->tier;
    c->node.layer_first = n->range.layer_first;
    c->node.layer_last = n->range.layer_last;
    c->latency_ms = (uint32_t)lround(latency_ms(s, self->serial, n->serial));
    c->layer_us = (uint32_t)n->layer_us; /* S2: announced with its capacity */
}

/* A free node plans over itself and the free holders of the tiers it can share a band with. */
static size_t pool_to_plan(sw *s, const sw_node *self)
{
    size_t count = 0;
    for (uint32_t k = 0; k < s->live_count; k++) {
        const sw_node *n = s->nodes[s->live[k]];
        if (node_free(n) && abs((int)n->tier - (int)self->tier) <= 1)
            cand_add(s, &count, self, n);
    }
    return count;
}

/* A node that got a proposal looks up the records of the nodes it names. */
static size_t pool_named(sw *s, const sw_node *self, const ns_quorum_proposal *p)
{
    size_t count = 0;
    for (uint32_t i = 0; i < p->member_count; i++) {
        const sw_node *n = s->nodes[serial_of(s, p->members[i].id)];
        if (n->live)
            cand_add(s, &count, self, n);
    }
    return count;
}

/* A stage some member core has not yet seen replaced. */
static bool stage_pending(const sw *s, const sw_quorum *q, uint32_t i)
{
    for (uint32_t j = 0; j < q->stages; j++) {
        const sw_node *n = s->nodes[q->st[j].serial];
        if (j == i || !n->live || ns_quorum_get_state(n->core) != NS_QUORUM_ACTIVE)
            continue;
        const ns_quorum_proposal *view = ns_quorum_current(n->core);
        if (memcmp(view->members[i].id, s->nodes[q->st[i].serial]->id, NS_ID_BYTES) != 0)
            return true;
    }
    return false;
}

/* A member watching a degraded peer: the quorum as netsim runs it and the free holders; the
 * holders of a stage whose replacement another member already chose are left out, so that every
 * member's core picks that one (the core has no message to agree on a replacement). */
static size_t pool_for_member(sw *s, const sw_node *self, const sw_quorum *q)
{
    bool pending[NS_QUORUM_MEMBERS_MAX];
    size_t count = 0;
    for (uint32_t i = 0; i < q->stages; i++) {
        pending[i] = stage_pending(s, q, i);
        if (s->nodes[q->st[i].serial]->live)
            cand_add(s, &count, self, s->nodes[q->st[i].serial]);
    }
    for (uint32_t k = 0; k < s->live_count; k++) {
        const sw_node *n = s->nodes[s->live[k]];
        bool skip = !node_free(n);
        for (uint32_t i = 0; i < q->stages && !skip; i++)
            skip = pending[i] && n->range.layer_first <= q->st[i].layer_first &&
                   n->range.layer_last >= q->st[i].layer_last;
        if (!skip)
            cand_add(s, &count, self, n);
    }
    return count;
}

/* ---- the pipeline: one ns_pipe core a stage ------------------------------------------------- */

static void stage_kick(sw_quorum *q, uint32_t i);

static void pipe_send(sw_quorum *q, uint32_t from, uint32_t to, sw_msg_kind kind,
                      const ns_pipe_op *op, double value)
{
    sw *s = q->sim;
    sw_msg m = {.kind = kind,
                .from = q->st[from].serial,
                .to = q->st[to].serial,
                .quorum = q->index,
                .uid = q->uid,
                .epoch = q->epoch,
                .stage = to,
                .step = op->step,
                .micro = op->micro,
                .value = value};
    uint64_t bytes = kind == MSG_ACT    ? s->act_bytes + 4 * (uint64_t)s->cfg.seq_len
                     : kind == MSG_GRAD ? s->act_bytes
                                        : 0;
    send_msg(s, &m, SW_CONTROL_BYTES + bytes);
}

/* Stage 0 finished a step's update: the step's span and its stages' work, shared among the
 * windows by how much of the span lies in each. */
static void step_done(sw_quorum *q)
{
    sw *s = q->sim;
    double m = s->cfg.micro_batches, stages = q->stages, sum = 0, max = 0;
    for (uint32_t i = 0; i < q->stages; i++) {
        double fb = 3.0 * (double)q->st[i].forward_us;
        sum += fb;
        max = fb > max ? fb : max;
    }
    double span = (double)(s->now_us - q->step_start_us);
    double bound = 1.0 - m * sum / (stages * (sum + (m - 1) * max));
    for (int w = 0; w < SW_WINDOWS && span > 0; w++) {
        sw_window *win = &s->win[w];
        double part = overlap_us(win, q->step_start_us, s->now_us) / span;
        win->span_us += part * stages * span;
        win->fb_us += part * m * sum;
        win->theory_us += part * stages * span * ns_pipe_bubble_fraction(q->stages, (uint32_t)m);
        win->bound_us += part * stages * span * bound;
        win->steps += s->now_us >= win->from_us && s->now_us < win->to_us;
        win->micro_batches += part * m;
    }
    q->steps_done++;
    s->st.steps++;
}

static void stage_done_fired(void *arg, uint64_t now)
{
    (void)now;
    sw_stage *st = arg;
    sw_quorum *q = st->q;
    sw *s = q->sim;
    ns_pipe_op op = st->op;
    st->busy = false;
    st->op_timer = 0;
    ns_pipe_done(st->pipe, &op);
    if (op.kind == NS_PIPE_FORWARD && st->index + 1 < q->stages)
        pipe_send(q, st->index, st->index + 1, MSG_ACT, &op, 0);
    if (op.kind == NS_PIPE_BACKWARD && st->index > 0)
        pipe_send(q, st->index, st->index - 1, MSG_GRAD, &op, 0);
    if (op.kind == NS_PIPE_UPDATE) {
        sw_node *n = s->nodes[st->serial];
        if (!n->standin)
            ns_quorum_add_batches(n->core, (uint64_t)s->cfg.micro_batches);
        if (st->index == 0)
            step_done(q);
    }
    stage_kick(q, st->index);
}

static void stage_start(sw_quorum *q, uint32_t i, const ns_pipe_op *op)
{
    sw *s = q->sim;
    sw_stage *st = &q->st[i];
    double f = (double)st->forward_us;
    double us = op->kind == NS_PIPE_FORWARD    ? f
                : op->kind == NS_PIPE_BACKWARD ? 2 * f
                                               : s->cfg.update_cost * f;
    if (op->kind == NS_PIPE_FORWARD && i == 0 && op->micro == 0)
        q->step_start_us = s->now_us;
    if (op->kind == NS_PIPE_UPDATE && i > 0)
        pipe_send(q, i, i - 1, MSG_SCALE, op, op->scale); /* before the update, as S6 says */
    st->op = *op;
    st->busy = true;
    st->op_end_us = s->now_us + (uint64_t)us;
    add_busy(s, s->now_us, st->op_end_us, 1);
    st->op_timer = timer_at(s, st->op_end_us, stage_done_fired, st);
}

/* Runs what the stage's core says until it waits or computes. NORM takes no time: each stage
 * adds its share to the running sum, and the finisher turns it into the clip scale. */
static void stage_kick(sw_quorum *q, uint32_t i)
{
    sw_stage *st = &q->st[i];
    if (!q->running || st->busy || !q->sim->nodes[st->serial]->live)
        return;
    for (;;) {
        ns_pipe_op op;
        ns_pipe_next(st->pipe, &op);
        switch (op.kind) {
        case NS_PIPE_WAIT:
            return;
        case NS_PIPE_NORM:
            if (i + 1 < q->stages)
                pipe_send(q, i, i + 1, MSG_NORM, &op, op.norm_in + 1.0);
            else
                ns_pipe_scale(st->pipe, 1.0f);
            ns_pipe_done(st->pipe, &op);
            continue;
        case NS_PIPE_FORWARD:
        case NS_PIPE_BACKWARD:
        case NS_PIPE_UPDATE:
            stage_start(q, i, &op);
            return;
        }
    }
}

/* The stage stops computing; what it had started is not counted as work done. */
static void stage_halt(sw_stage *st)
{
    sw *s = st->q->sim;
    if (!st->busy)
        return;
    timer_cancel(s, &st->op_timer);
    add_busy(s, s->now_us, st->op_end_us, -1);
    st->busy = false;
}

static void quorum_stop(sw_quorum *q)
{
    for (uint32_t i = 0; i < q->stages; i++) {
        stage_halt(&q->st[i]);
        ns_pipe_free(q->st[i].pipe);
        q->st[i].pipe = NULL;
    }
    q->running = false;
    q->epoch++; /* what is in flight is dropped on arrival */
}

static void pipe_deliver(sw *s, const sw_msg *m)
{
    sw_quorum *q = &s->quorums[m->quorum];
    if (!q->used || q->uid != m->uid || q->epoch != m->epoch || !q->running ||
        q->st[m->stage].serial != m->to) {
        s->st.stale_msgs++;
        return;
    }
    sw_stage *st = &q->st[m->stage];
    ns_pipe_refusal why = NS_PIPE_UNASKED;
    int rc = m->kind == MSG_ACT    ? ns_pipe_on_activation(st->pipe, m->step, m->micro, &why)
             : m->kind == MSG_GRAD ? ns_pipe_on_gradient(st->pipe, m->step, m->micro, &why)
             : m->kind == MSG_NORM ? ns_pipe_on_norm(st->pipe, m->step, m->value, &why)
                                   : ns_pipe_on_scale(st->pipe, m->step, (float)m->value, &why);
    if (rc != NS_OK)
        s->st.pipe_refused++;
    stage_kick(q, m->stage);
}

static uint64_t stage_forward_us(const sw *s, const sw_quorum *q, uint32_t i)
{
    const sw_stage *st = &q->st[i];
    uint64_t layers = st->layer_last - st->layer_first + (i + 1 == q->stages ? 1 : 0); /* head */
    return s->nodes[st->serial]->layer_us * layers;
}

/* Starts the pipeline once every stage's node is there: formed in its core, or a stand-in. */
static void quorum_try_start(sw_quorum *q)
{
    sw *s = q->sim;
    if (q->running || q->restart_timer != 0 || q->dissolving)
        return;
    for (uint32_t i = 0; i < q->stages; i++) {
        const sw_node *n = s->nodes[q->st[i].serial];
        if (!n->live || n->quorum != q->index ||
            (!n->standin && ns_quorum_get_state(n->core) != NS_QUORUM_ACTIVE))
            return;
    }
    for (uint32_t i = 0; i < q->stages; i++) {
        ns_pipe_config c = {.stage = i,
                            .stages = q->stages,
                            .micro_batches = (uint32_t)s->cfg.micro_batches,
                            .run_ahead = (uint32_t)s->cfg.run_ahead};
        NS_ASSERT(ns_pipe_new(&q->st[i].pipe, &c, q->steps_done) == NS_OK);
        q->st[i].forward_us = stage_forward_us(s, q, i);
    }
    q->running = true;
    if (!q->ever_ran && s->st.first_full_us == UINT64_MAX)
        s->st.first_full_us = s->now_us;
    q->ever_ran = true;
    for (uint32_t i = 0; i < q->stages; i++)
        stage_kick(q, i);
}

static void restart_fired(void *arg, uint64_t now)
{
    (void)now;
    sw_quorum *q = arg;
    q->restart_timer = 0;
    quorum_try_start(q);
}

/* ---- quorums as netsim runs them ------------------------------------------------------------ */

static uint32_t quorum_find(const sw *s, const uint8_t id[NS_SHA256_BYTES])
{
    for (uint32_t k = 0; k < SW_NODES_MAX; k++) {
        const sw_quorum *q = &s->quorums[k];
        if (q->used && !q->dissolving && memcmp(q->id, id, NS_SHA256_BYTES) == 0)
            return k;
    }
    return SW_NONE;
}

static uint32_t quorum_new(sw *s, const ns_quorum_proposal *p)
{
    uint32_t k = 0;
    while (k < SW_NODES_MAX && s->quorums[k].used)
        k++;
    NS_ASSERT(k < SW_NODES_MAX); /* every quorum has a live member */
    sw_quorum *q = &s->quorums[k];
    memset(q, 0, sizeof *q);
    *q = (sw_quorum){.sim = s, .used = true, .index = k, .uid = ++s->uid_next};
    q->stages = p->member_count;
    q->created_us = s->now_us;
    memcpy(q->id, p->id, NS_SHA256_BYTES);
    for (uint32_t i = 0; i < q->stages; i++) {
        q->st[i] = (sw_stage){.q = q,
                              .index = i,
                              .serial = serial_of(s, p->members[i].id),
                              .layer_first = p->members[i].layer_first,
                              .layer_last = p->members[i].layer_last};
    }
    s->st.formed++;
    s->st.members += q->stages;
    s->st.size_min = q->stages < s->st.size_min ? q->stages : s->st.size_min;
    s->st.size_max = q->stages > s->st.size_max ? q->stages : s->st.size_max;
    s->st.solo += q->stages == 1;
    return k;
}

static void quorum_dissolve(sw_quorum *q, const char *reason)
{
    sw *s = q->sim;
    if (q->dissolving)
        return;
    q->dissolving = true;
    note_reason(s, reason);
    for (int w = 0; w < SW_WINDOWS; w++)
        s->win[w].member_us += q->stages * overlap_us(&s->win[w], q->created_us, s->now_us);
    quorum_stop(q);
    timer_cancel(s, &q->restart_timer);
    timer_cancel(s, &q->beat_timer);
    for (uint32_t i = 0; i < q->stages; i++) {
        sw_node *n = s->nodes[q->st[i].serial];
        if (n->live && n->quorum == q->index) {
            n->quorum = SW_NONE;
            n->standin = false;
            in_quorum_add(s, n, -1);
        }
    }
    for (uint32_t i = 0; i < q->stages; i++) {
        sw_node *n = s->nodes[q->st[i].serial];
        if (n->live && ns_quorum_get_state(n->core) != NS_QUORUM_IDLE &&
            memcmp(ns_quorum_current(n->core)->id, q->id, NS_SHA256_BYTES) == 0)
            ns_quorum_dissolve(n->core, "the quorum dissolved");
    }
    s->generation++;
    q->used = false;
}

/* Stand-ins have idle cores, so netsim sends their heartbeats for them. */
static void beat_fired(void *arg, uint64_t now)
{
    (void)now;
    sw_quorum *q = arg;
    sw *s = q->sim;
    q->beat_timer = timer_at(s, s->now_us + NS_QUORUM_HEARTBEAT_MS * 1000, beat_fired, q);
    for (uint32_t j = 0; j < q->stages; j++) {
        const sw_node *y = s->nodes[q->st[j].serial];
        for (uint32_t k = 0; k < q->stages && y->live && y->standin; k++) {
            const sw_node *z = s->nodes[q->st[k].serial];
            if (k != j && z->live && !z->standin)
                send_control(s, MSG_HEARTBEAT, y->serial, z->serial, NULL);
        }
    }
}

/* ---- the quorum core's callbacks ------------------------------------------------------------ */

static void on_propose(void *arg, const uint8_t to[NS_ID_BYTES], const ns_quorum_proposal *p)
{
    sw_node *n = arg;
    sw_msg m = {.kind = MSG_PROPOSE, .from = n->serial, .to = serial_of(n->sim, to)};
    m.proposal = malloc(sizeof *m.proposal);
    NS_ASSERT(m.proposal != NULL);
    *m.proposal = *p;
    send_msg(n->sim, &m, SW_CONTROL_BYTES + (uint64_t)SW_MEMBER_BYTES * p->member_count);
}

static void on_formed(void *arg, const ns_quorum_proposal *p)
{
    sw_node *n = arg;
    sw *s = n->sim;
    uint32_t k;
    if (memcmp(p->proposer, n->id, NS_ID_BYTES) == 0) {
        k = quorum_new(s, p);
        for (uint32_t i = 0; i < p->member_count; i++)
            if (memcmp(p->members[i].id, n->id, NS_ID_BYTES) != 0)
                send_control(s, MSG_FORMED, n->serial, serial_of(s, p->members[i].id), p->id);
    } else {
        k = quorum_find(s, p->id);
        bool named = false;
        for (uint32_t i = 0; k != SW_NONE && i < s->quorums[k].stages; i++)
            named = named || s->quorums[k].st[i].serial == n->serial;
        if (!named) {
            ns_quorum_dissolve(n->core, "the quorum is gone");
            return;
        }
    }
    n->quorum = k;
    in_quorum_add(s, n, 1);
    quorum_try_start(&s->quorums[k]);
}

static void on_failed(void *arg, const ns_quorum_proposal *p, const char *reason)
{
    sw_node *n = arg;
    sw *s = n->sim;
    (void)reason;
    if (memcmp(p->proposer, n->id, NS_ID_BYTES) == 0) {
        s->st.failed++;
        for (uint32_t i = 0; i < p->member_count; i++)
            if (memcmp(p->members[i].id, n->id, NS_ID_BYTES) != 0)
                send_control(s, MSG_WITHDRAW, n->serial, serial_of(s, p->members[i].id), p->id);
    } else {
        uint32_t k = quorum_find(s, p->id);
        if (k != SW_NONE)
            quorum_dissolve(&s->quorums[k], "a member was not formed in time");
    }
    s->generation++;
}

/* Sends the heartbeat; while a member is degraded, reads the pool afresh, since the core picks a
 * stale member's replacement from it. */
static void on_heartbeat(void *arg, const ns_quorum_proposal *p)
{
    sw_node *n = arg;
    sw *s = n->sim;
    bool degraded = false;
    for (uint32_t i = 0; i < p->member_count; i++) {
        if (memcmp(p->members[i].id, n->id, NS_ID_BYTES) == 0)
            continue;
        send_control(s, MSG_HEARTBEAT, n->serial, serial_of(s, p->members[i].id), NULL);
        ns_quorum_health h;
        if (ns_quorum_member_health(n->core, p->members[i].id, &h) == NS_OK)
            degraded = degraded || h == NS_QUORUM_DEGRADED;
    }
    if (degraded && n->quorum != SW_NONE) {
        size_t count = pool_for_member(s, n, &s->quorums[n->quorum]);
        if (ns_quorum_set_pool(n->core, s->cands, count) != NS_OK)
            s->st.pool_errors++;
    }
}

static void on_health(void *arg, const ns_quorum_member *m, ns_quorum_health health)
{
    (void)m;
    ((sw_node *)arg)->sim->st.degraded += health == NS_QUORUM_DEGRADED;
}

/* The first member core to replace a stale member decides for netsim: the newcomer becomes a
 * stand-in, downloads the layer state, and the pipeline restarts its step. */
static void on_replaced(void *arg, const ns_quorum_member *stale, const ns_quorum_member *by,
                        const ns_quorum_proposal *p)
{
    sw_node *n = arg;
    sw *s = n->sim;
    if (n->quorum == SW_NONE)
        return;
    sw_quorum *q = &s->quorums[n->quorum];
    uint32_t i = 0;
    while (i < p->member_count && memcmp(p->members[i].id, by->id, NS_ID_BYTES) != 0)
        i++;
    NS_ASSERT(i < q->stages);
    uint32_t old = serial_of(s, stale->id), now_serial = serial_of(s, by->id);
    sw_stage *st = &q->st[i];
    if (st->serial == now_serial)
        return; /* another member's core chose it first */
    sw_node *x = s->nodes[old], *y = s->nodes[now_serial];
    if (st->serial != old || !node_free(y)) {
        s->st.disagreements++;
        quorum_dissolve(q, "members chose different replacements");
        return;
    }
    if (x->live && x->quorum == q->index) {
        x->quorum = SW_NONE;
        x->standin = false;
        in_quorum_add(s, x, -1);
    }
    if (!x->live) {
        s->st.detected++;
        s->st.detect_us += s->now_us - x->gone_us;
    }
    y->quorum = q->index;
    y->standin = true;
    in_quorum_add(s, y, 1);
    st->serial = now_serial;
    s->st.replacements++;
    uint64_t bytes = ns_pool_range_bytes(&s->arch, st->layer_first, st->layer_last);
    uint64_t download_us =
        (uint64_t)((double)bytes * SW_STATE_PERCENT / 100 * 8 / y->bandwidth_mbps);
    s->st.download_us += download_us;
    s->generation++;
    quorum_stop(q);
    if (s->now_us + download_us > q->restart_at_us) {
        timer_cancel(s, &q->restart_timer);
        q->restart_at_us = s->now_us + download_us;
        q->restart_timer = timer_at(s, q->restart_at_us, restart_fired, q);
    }
    if (q->beat_timer == 0)
        q->beat_timer = timer_at(s, s->now_us, beat_fired, q);
}

static void on_renewed(void *arg, const ns_quorum_proposal *p, uint64_t end_ms)
{
    sw_node *n = arg;
    (void)end_ms;
    n->sim->st.renewals += memcmp(p->members[0].id, n->id, NS_ID_BYTES) == 0;
}

static void on_dissolved(void *arg, const ns_quorum_proposal *p, const char *reason)
{
    sw_node *n = arg;
    (void)p;
    if (n->quorum != SW_NONE)
        quorum_dissolve(&n->sim->quorums[n->quorum], reason);
}

/* ---- messages ------------------------------------------------------------------------------- */

static void take_proposal(sw *s, sw_node *to, const sw_msg *m)
{
    const uint8_t *from = s->nodes[m->from]->id;
    ns_quorum_refusal why;
    bool ok = false;
    if (!to->standin && to->quorum == SW_NONE && ns_quorum_get_state(to->core) == NS_QUORUM_IDLE) {
        size_t count = pool_named(s, to, m->proposal);
        ok = ns_quorum_set_pool(to->core, s->cands, count) == NS_OK &&
             ns_quorum_on_proposal(to->core, from, m->proposal, &why) == NS_OK;
    } else if (!to->standin) {
        ok = ns_quorum_on_proposal(to->core, from, m->proposal, &why) == NS_OK; /* refuses */
    }
    s->st.refusals += !ok;
    sw_msg answer = {.kind = MSG_ANSWER, .from = to->serial, .to = m->from, .accepted = ok};
    send_msg(s, &answer, SW_CONTROL_BYTES);
}

static void deliver(sw *s, uint32_t i)
{
    sw_msg m = s->msgs[i];
    s->msgs[i].next_free = s->msg_free;
    s->msg_free = i;
    sw_node *to = s->nodes[m.to];
    const uint8_t *from = s->nodes[m.from]->id;
    if (!to->live) {
        s->st.dead_msgs++;
        free(m.proposal);
        return;
    }
    switch (m.kind) {
    case MSG_PROPOSE:
        take_proposal(s, to, &m);
        break;
    case MSG_ANSWER:
        ns_quorum_on_answer(to->core, from, m.accepted);
        break;
    case MSG_FORMED:
        ns_quorum_on_formed(to->core, from, m.qid);
        break;
    case MSG_WITHDRAW:
        if (ns_quorum_get_state(to->core) == NS_QUORUM_JOINING &&
            memcmp(ns_quorum_current(to->core)->id, m.qid, NS_SHA256_BYTES) == 0) {
            s->st.withdrawn++;
            ns_quorum_dissolve(to->core, "proposal withdrawn");
        }
        break;
    case MSG_HEARTBEAT:
        ns_quorum_on_heartbeat(to->core, from);
        break;
    case MSG_ACT:
    case MSG_GRAD:
    case MSG_NORM:
    case MSG_SCALE:
        pipe_deliver(s, &m);
        break;
    }
    free(m.proposal);
}

/* ---- nodes: joining, planning, leaving ------------------------------------------------------ */

static bool plan_names(const ns_quorum_proposal *p, const uint8_t id[NS_ID_BYTES])
{
    for (uint32_t i = 0; i < p->member_count; i++)
        if (memcmp(p->members[i].id, id, NS_ID_BYTES) == 0)
            return true;
    return false;
}

/* A free node plans when the free set changed since it last did, and proposes a plan that names
 * it (the core would also propose plans without its proposer, whose core then calls itself
 * active in a quorum it has no stage in). */
static void attempt_fired(void *arg, uint64_t now)
{
    sw_node *n = arg;
    sw *s = n->sim;
    if (!n->live)
        return;
    double next_s = s->cfg.retry_s * (0.5 + ns__sim_rng_unit(&s->rng_retry));
    timer_at(s, s->now_us + (uint64_t)(next_s * 1e6), attempt_fired, n);
    if (!node_free(n) || n->planned_generation == s->generation)
        return;
    n->planned_generation = s->generation;
    size_t count = pool_to_plan(s, n);
    ns_quorum_proposal plan;
    s->st.plans++;
    if (ns_quorum_plan(s->cands, count, s->arch.layers, SW_HEAD_MILLI, now, &plan) != NS_OK) {
        s->st.plans_empty++;
    } else if (!plan_names(&plan, n->id)) {
        s->st.plans_without_self++;
    } else if (ns_quorum_set_pool(n->core, s->cands, count) != NS_OK ||
               ns_quorum_propose(n->core) != NS_OK) {
        s->st.pool_errors++;
    } else {
        s->st.proposals++;
    }
}

static sw_node *node_make(sw *s)
{
    NS_ASSERT(s->serial_count < SW_SERIALS_MAX);
    if (s->serial_count == s->serial_cap)
        s->nodes = grow(s->nodes, &s->serial_cap, sizeof *s->nodes);
    sw_node *n = calloc(1, sizeof *n);
    NS_ASSERT(n != NULL);
    n->sim = s;
    n->serial = s->serial_count;
    s->nodes[s->serial_count++] = n;
    ns__sim_rng_fill(&s->rng_nodes, n->id, NS_ID_BYTES - 4);
    for (int b = 0; b < 4; b++)
        n->id[NS_ID_BYTES - 1 - b] = (uint8_t)(n->serial >> (8 * b));
    double u = ns__sim_rng_unit(&s->rng_nodes), acc = 0;
    int t = 0;
    while (t < SW_TIERS - 1 && u >= (acc += s->cfg.tiers[t]))
        t++;
    n->tier = (ns_tier)(t + 1);
    n->memory_mb = (uint64_t)s->cfg.tier_memory_mb[t];
    n->bandwidth_mbps = s->cfg.tier_bandwidth_mbps[t];
    double lo = tier_layer_us[t], hi = tier_layer_us[t + 1];
    n->layer_us = (uint64_t)(lo * pow(hi / lo, ns__sim_rng_unit(&s->rng_nodes)));
    NS_ASSERT(ns_tier_for_latency_us(n->layer_us) == n->tier);
    n->quorum = SW_NONE;
    n->planned_generation = UINT64_MAX;
    ns__sim_rng_seed(&n->rng, (uint64_t)s->cfg.seed, 1000 + n->serial);
    n->env = (ns_env){env_now, env_timer, env_timer_cancel, env_send, env_random, n};
    ns_quorum_config c = {.layers = s->arch.layers,
                          .head_milli = SW_HEAD_MILLI,
                          .arg = n,
                          .propose = on_propose,
                          .formed = on_formed,
                          .failed = on_failed,
                          .heartbeat = on_heartbeat,
                          .health = on_health,
                          .replaced = on_replaced,
                          .renewed = on_renewed,
                          .dissolved = on_dissolved};
    memcpy(c.self_id, n->id, NS_ID_BYTES);
    NS_ASSERT(ns_quorum_new(&n->core, &c, &n->env) == NS_OK);
    return n;
}

/* A new node announces itself; the layer pool (every live node's announcement, held ranges
 * kept) gives it a range. */
static void node_join(sw *s)
{
    sw_node *n = node_make(s);
    flush(s);
    NS_ASSERT(s->live_count < SW_NODES_MAX);
    n->live = true;
    n->live_index = s->live_count;
    s->live[s->live_count++] = n->serial;
    for (uint32_t k = 0; k < s->live_count; k++) {
        const sw_node *m = s->nodes[s->live[k]];
        ns_pool_node *p = &s->pool[k];
        memcpy(p->id, m->id, NS_ID_BYTES);
        p->memory_mb = m->memory_mb;
        p->tier = m->tier;
        p->layer_first = m->range.layer_first;
        p->layer_last = m->range.layer_last;
    }
    NS_ASSERT(ns_pool_assign(&s->arch, s->pool, s->live_count, s->ranges) == NS_OK);
    n->range = s->ranges[n->live_index];
    s->capable_count += node_capable(n);
    s->tier_live[n->tier - 1]++;
    s->generation++;
    note_share(s);
    double first_s = s->cfg.retry_s * ns__sim_rng_unit(&s->rng_retry);
    timer_at(s, s->now_us + (uint64_t)(first_s * 1e6), attempt_fired, n);
}

/* Leaves without a word, as a crash does: the other members' cores find out by its silence. */
static void node_depart(sw *s, uint32_t serial)
{
    sw_node *n = s->nodes[serial];
    flush(s);
    n->live = false;
    n->gone_us = s->now_us;
    uint32_t last = s->live[--s->live_count];
    s->live[n->live_index] = last;
    s->nodes[last]->live_index = n->live_index;
    s->capable_count -= node_capable(n);
    s->tier_live[n->tier - 1]--;
    s->st.departures++;
    ns_quorum_free(n->core);
    n->core = NULL;
    s->generation++;
    if (n->quorum == SW_NONE)
        return;
    sw_quorum *q = &s->quorums[n->quorum];
    in_quorum_add(s, n, -1);
    s->st.departures_in_quorum++;
    bool cores = false;
    for (uint32_t i = 0; i < q->stages; i++) {
        const sw_node *m = s->nodes[q->st[i].serial];
        if (q->st[i].serial == serial)
            stage_halt(&q->st[i]);
        cores = cores || (m->live && ns_quorum_get_state(m->core) == NS_QUORUM_ACTIVE);
    }
    if (!cores)
        quorum_dissolve(q, "no member core left");
}

static void join_fired(void *arg, uint64_t now)
{
    (void)now;
    node_join(arg);
}

static void churn_fired(void *arg, uint64_t now)
{
    (void)now;
    sw *s = arg;
    double mean_s = 3600.0 / (s->cfg.churn_per_hour * s->cfg.nodes);
    timer_at(s, s->now_us + (uint64_t)(ns__sim_rng_exp(&s->rng_churn, mean_s) * 1e6), churn_fired,
             s);
    if (s->live_count == 0)
        return;
    node_depart(s, s->live[ns__sim_rng_below(&s->rng_churn, s->live_count)]);
    node_join(s);
}

/* ---- the run -------------------------------------------------------------------------------- */

static int setup(sw *s)
{
    const sw_cfg *c = &s->cfg;
    if (ns_arch_for_memory((uint64_t)c->arch_memory_mb, &s->arch) != NS_OK)
        return NS_EINVAL;
    s->act_bytes = (uint64_t)c->seq_len * s->arch.hidden * 4; /* one row a micro-batch (S6) */
    s->end_us = (uint64_t)(c->duration_s * 1e6);
    s->win[0] = (sw_window){.from_us = (uint64_t)(c->warmup_s * 1e6),
                            .to_us = (uint64_t)(c->churn_start_s * 1e6)};
    s->win[1] = (sw_window){.from_us = s->win[0].to_us, .to_us = s->end_us};
    s->timer_free = s->msg_free = SW_NONE;
    s->st.first_full_us = s->st.share_reached_us = UINT64_MAX;
    s->st.size_min = UINT64_MAX;
    ns__sim_rng_seed(&s->rng_nodes, (uint64_t)c->seed, 1);
    ns__sim_rng_seed(&s->rng_churn, (uint64_t)c->seed, 2);
    ns__sim_rng_seed(&s->rng_retry, (uint64_t)c->seed, 3);
    if (ns__sim_heap_init(&s->heap, SW_SLOTS_MAX) != NS_OK)
        return NS_ENOMEM;
    for (uint32_t i = 0; i < (uint32_t)c->nodes; i++)
        timer_at(s, (uint64_t)(c->join_spread_s * 1e6 * i / c->nodes), join_fired, s);
    if (c->churn_per_hour > 0)
        timer_at(s, s->win[1].from_us, churn_fired, s);
    return NS_OK;
}

static void run(sw *s)
{
    ns_sim_event ev;
    while (ns__sim_heap_pop(&s->heap, &ev)) {
        if (ev.at_us > s->end_us) {
            if (ev.kind == EV_MSG)
                free(s->msgs[ev.index].proposal);
            break;
        }
        NS_ASSERT(ev.at_us >= s->now_us);
        s->now_us = ev.at_us;
        if (ev.kind == EV_TIMER)
            timer_fire(s, ev.index);
        else
            deliver(s, ev.index);
    }
    s->now_us = s->end_us;
    flush(s);
    for (uint32_t k = 0; k < SW_NODES_MAX; k++)
        for (int w = 0; w < SW_WINDOWS && s->quorums[k].used; w++)
            s->win[w].member_us +=
                s->quorums[k].stages * overlap_us(&s->win[w], s->quorums[k].created_us, s->now_us);
}

/* ---- the report ----------------------------------------------------------------------------- */

static double ratio(double a, double b)
{
    return b > 0 ? a / b : 0;
}

static bool goal(const char *what, double got, double want, bool at_most)
{
    bool ok = at_most ? got <= want : got >= want;
    printf("  goal %-44s %s %-8g got %-10.4g %s\n", what, at_most ? "<=" : ">=", want, got,
           ok ? "ok" : "MISSED");
    return ok;
}

static void report_setup(const sw *s)
{
    uint32_t tiers[SW_TIERS] = {0}, holders[NS_POOL_LAYERS_MAX] = {0}, none = 0;
    uint64_t memory_mb = 0;
    for (uint32_t k = 0; k < s->live_count; k++) {
        const sw_node *n = s->nodes[s->live[k]];
        tiers[n->tier - 1]++;
        memory_mb += n->memory_mb;
        none += n->range.layer_first == n->range.layer_last;
        for (uint32_t l = n->range.layer_first; l < n->range.layer_last; l++)
            holders[l]++;
    }
    uint32_t lo = UINT32_MAX, hi = 0;
    for (uint32_t l = 0; l < s->arch.layers; l++) {
        lo = holders[l] < lo ? holders[l] : lo;
        hi = holders[l] > hi ? holders[l] : hi;
    }
    const sw_cfg *c = &s->cfg;
    printf("swarm: %u nodes at the end (T1 %u, T2 %u, T3 %u, T4 %u, T5 %u), seed %.0f, %.0f s "
           "simulated; windows calm %.0f-%.0f s, churn %.0f-%.0f s at %.0f %% an hour\n",
           s->live_count, tiers[0], tiers[1], tiers[2], tiers[3], tiers[4], c->seed, c->duration_s,
           c->warmup_s, c->churn_start_s, c->churn_start_s, c->duration_s, c->churn_per_hour * 100);
    printf("  model %u layers x %u hidden (ns_arch_for_memory of %.0f MB), %.2f GB a layer in "
           "the pool; %u micro-batches a step of 1 x %.0f tokens, %.1f MB of activations\n",
           s->arch.layers, s->arch.hidden, c->arch_memory_mb,
           (double)ns_pool_range_bytes(&s->arch, 1, 2) / 1e9, (uint32_t)c->micro_batches,
           c->seq_len, (double)s->act_bytes / 1e6);
    ns_arch whole;
    if (ns_arch_for_memory(memory_mb, &whole) == NS_OK)
        printf("  (S3's architecture for all %.1f TB announced would be %u x %u, %.1f GB a "
               "layer)\n",
               (double)memory_mb / 1048576, whole.layers, whole.hidden,
               (double)ns_pool_range_bytes(&whole, 1, 2) / 1e9);
    printf("  layer pool: holders a layer min %u max %u (target %u); %u nodes hold no layer\n", lo,
           hi, ns_pool_replicas_target(s->live_count), none);
}

static void report_events(const sw *s)
{
    const sw_stats *t = &s->st;
    printf(
        "  first full quorum at %.1f s; goal share of capable nodes in quorums first at %.1f s\n",
        t->first_full_us == UINT64_MAX ? -1 : (double)t->first_full_us / 1e6,
        t->share_reached_us == UINT64_MAX ? -1 : (double)t->share_reached_us / 1e6);
    printf("  plans %" PRIu64 " (no cover %" PRIu64 ", without the planner %" PRIu64
           "), proposals %" PRIu64 ", refused answers %" PRIu64 ", failed %" PRIu64
           ", withdrawn joins %" PRIu64 "\n",
           t->plans, t->plans_empty, t->plans_without_self, t->proposals, t->refusals, t->failed,
           t->withdrawn);
    printf("  quorums formed %" PRIu64 " (members min %" PRIu64 " mean %.1f max %" PRIu64
           ", solo %" PRIu64 "), renewals %" PRIu64 ", steps %" PRIu64 "\n",
           t->formed, t->formed ? t->size_min : 0, ratio((double)t->members, (double)t->formed),
           t->size_max, t->solo, t->renewals, t->steps);
    printf("  departures %" PRIu64 " (%" PRIu64 " from quorums); degraded %" PRIu64
           ", replaced %" PRIu64 " (found %.0f s after leaving, layer state %.0f s to download)"
           "; disagreements %" PRIu64 "\n",
           t->departures, t->departures_in_quorum, t->degraded, t->replacements,
           ratio((double)t->detect_us / 1e6, (double)t->detected),
           ratio((double)t->download_us / 1e6, (double)t->replacements), t->disagreements);
    printf("  dissolved:%s", t->reasons[0] == NULL ? " none" : "");
    for (int i = 0; i < SW_REASONS_MAX && t->reasons[i] != NULL; i++)
        printf("%s %" PRIu64 " \"%s\"", i ? "," : "", t->reason_count[i], t->reasons[i]);
    printf("\n  messages %" PRIu64 " (%" PRIu64 " to departed nodes, %" PRIu64
           " stale pipeline ones), pipe refusals %" PRIu64 ", pool errors %" PRIu64 "\n",
           t->msgs, t->dead_msgs, t->stale_msgs, t->pipe_refused, t->pool_errors);
}

static void report_tiers(const char *name, const sw_window *v)
{
    printf("  in quorums by tier, %s:", name);
    for (int t = 0; t < SW_TIERS; t++)
        printf(" T%d %.3f", t + 1, ratio(v->tier_in_quorum_us[t], v->tier_live_us[t]));
    printf("\n");
}

static void report_window(const char *name, const sw_window *v, double seq_len)
{
    double len_us = (double)(v->to_us - v->from_us);
    printf("%s,%.0f,%.0f,%.1f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%" PRIu64 ",%.0f\n",
           name, (double)v->from_us / 1e6, (double)v->to_us / 1e6, ratio(v->live_us, len_us),
           ratio(v->capable_us, v->live_us), ratio(v->in_quorum_us, v->live_us),
           ratio(v->in_quorum_us, v->capable_us), ratio(v->busy_us, v->member_us),
           ratio(v->busy_us, v->capable_us), v->member_us > 0 ? 1 - v->span_us / v->member_us : 0,
           v->span_us > 0 ? 1 - v->fb_us / v->span_us : 0, ratio(v->theory_us, v->span_us),
           ratio(v->bound_us, v->span_us), v->steps,
           ratio(v->micro_batches * seq_len * 1e6, len_us));
}

/* base: the churn window of the same seed without churn. */
static int report(const sw *s, const sw_window *base, double wall_s)
{
    const sw_cfg *c = &s->cfg;
    report_setup(s);
    report_events(s);
    report_tiers("calm", &s->win[0]);
    report_tiers("churn", &s->win[1]);
    printf("window,from_s,to_s,nodes,capable_share,in_quorum_share,capable_in_quorum_share,"
           "utilisation,capable_busy_share,outside_steps_share,bubble_measured,bubble_1f1b,"
           "bubble_stages,steps,tokens_per_s\n");
    report_window("calm", &s->win[0], c->seq_len);
    report_window("churn", &s->win[1], c->seq_len);
    report_window("churn_window_without_churn", base, c->seq_len);
    double first_s = s->st.first_full_us == UINT64_MAX ? INFINITY : s->st.first_full_us / 1e6;
    const sw_window *calm = &s->win[0], *churn = &s->win[1];
    bool ok = goal("first full quorum (s)", first_s, c->goal_first_quorum_s, true);
    ok &= goal("capable nodes in quorums, calm", ratio(calm->in_quorum_us, calm->capable_us),
               c->goal_share, false);
    ok &= goal("utilisation of quorum stages, calm", ratio(calm->busy_us, calm->member_us),
               c->goal_utilisation, false);
    ok &= goal("capable nodes in quorums, churn", ratio(churn->in_quorum_us, churn->capable_us),
               c->goal_churn_share, false);
    ok &= goal("utilisation of quorum stages, churn", ratio(churn->busy_us, churn->member_us),
               c->goal_churn_utilisation, false);
    ok &= goal("pipe refusals (a bug if any)", (double)s->st.pipe_refused, 0, true);
    printf("wall %.1f s\n", wall_s);
    printf("swarm: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : SW_EXIT_FAIL;
}

static void teardown(sw *s)
{
    for (uint32_t k = 0; k < s->serial_count; k++) {
        ns_quorum_free(s->nodes[k]->core); /* cancels its timers: before they go */
        free(s->nodes[k]);
    }
    for (uint32_t k = 0; k < SW_NODES_MAX; k++)
        for (uint32_t i = 0; i < s->quorums[k].stages; i++)
            ns_pipe_free(s->quorums[k].st[i].pipe);
    ns_sim_event ev;
    while (ns__sim_heap_pop(&s->heap, &ev))
        if (ev.kind == EV_MSG)
            free(s->msgs[ev.index].proposal);
    free(s->nodes);
    free(s->timers);
    free(s->msgs);
    ns__sim_heap_free(&s->heap);
    free(s);
}

/* A whole run of cfg; NULL when it cannot be set up. */
static sw *simulate(const sw_cfg *cfg)
{
    sw *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->cfg = *cfg;
    if (setup(s) != NS_OK) {
        free(s);
        return NULL;
    }
    run(s);
    return s;
}

int ns__sim_swarm_main(const char *path)
{
    sw_cfg cfg = {.seed = 1,
                  .nodes = 100,
                  .duration_s = 3600,
                  .join_spread_s = 30,
                  .warmup_s = 600,
                  .churn_start_s = 1800,
                  .churn_per_hour = 0.2,
                  .tiers = {0.05, 0.15, 0.40, 0.30, 0.10},
                  .tier_memory_mb = {81920, 24576, 16384, 12288, 8192},
                  .tier_bandwidth_mbps = {1000, 500, 200, 100, 50},
                  .arch_memory_mb = 1228800,
                  .micro_batches = 16,
                  .seq_len = 512,
                  .update_cost = 1,
                  .latency_median_ms = 40,
                  .latency_sigma = 0.5,
                  .retry_s = 10,
                  .goal_first_quorum_s = 60,
                  .goal_share = 0.8,
                  .goal_utilisation = 0.5};
    ini_ctx ctx = {.cfg = &cfg};
    int rc = ini_parse(path, ini_line, &ctx);
    const char *bad = rc == 0 ? cfg_check(&cfg) : NULL;
    if (rc != 0 || bad != NULL) {
        if (rc > 0)
            fprintf(stderr, "netsim: %s:%d: %s\n", path, rc, ctx.why);
        else
            fprintf(stderr, "netsim: %s: %s\n", path, rc < 0 ? "cannot read scenario" : bad);
        return SW_EXIT_USAGE;
    }
    ns_log_set_level(NS_LOG_ERROR); /* the quorum core logs every formation at INFO */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sw_cfg calm = cfg;
    calm.churn_per_hour = 0;
    sw *base = simulate(&calm);
    sw *s = base != NULL ? simulate(&cfg) : NULL;
    if (s == NULL) {
        fprintf(stderr, "netsim: %s: cannot set up the run (seed %.0f)\n", path, cfg.seed);
        if (base != NULL)
            teardown(base);
        return SW_EXIT_USAGE;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rc = report(s, &base->win[1],
                (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    teardown(base);
    teardown(s);
    return rc;
}
