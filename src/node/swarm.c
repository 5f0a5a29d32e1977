/*
 * swarm.c: this node in a training swarm, on the loop thread (SPEC S5, S6).
 *
 * Every SWARM_HEARTBEAT_MS a node tells its peers what it offers in a CAPACITY frame of 47 bytes
 * (S6's capacity heartbeat: memory, inbox depth, layer range, GPU %, flags, tier; then the quorum
 * size it wants, the model it trains, for failover its newest and oldest checkpoints and the
 * replica it keeps, and the self-benchmark's time of a layer, which the planner splits by). When
 * `quorum_size` nodes that want the same quorum and model are known and free, the one with the
 * smallest id proposes: itself and the quorum_size - 1 free nodes nearest to it by the round
 * trips it measured (S5: minimise latency), in id order, the layers split so that the
 * slowest stage is fastest (ns_pipe_split; the first holds the embedding and reads the data, the
 * last holds the head). A member that is free and finds the plan valid for itself accepts (one that
 * is not says so); when every member accepted, the proposer says start and each starts its stage.
 * The trainer thread runs the stage's 1F1B schedule (train.c, pipeline.h); its frames leave through
 * an outbox drained here (the links live on this thread), and frames from the neighbours are
 * checked (the right neighbour, a well-formed message) before they are copied to the trainer.
 *
 * At start and every SWARM_BENCH_MS the node times the forward of one layer of its model on a
 * libuv worker thread (S2's self-benchmark); the tier that follows, the layers it holds and its
 * quorum go into its capacity heartbeats and its signed node record in the DHT.
 *
 * Failover. Nodes that want the same quorum but are left out become replicas: each follows one
 * stage (first its rank among the free nodes modulo the stages; it keeps it unless another
 * follows it too while a stage has nobody), learns the quorum from the members'
 * QUORUM_INFO and pulls that stage's newest aligned checkpoint (every stage writes one at the same
 * steps) over CKPT_GET/CKPT_PART. When a member's link goes down and does not come back within
 * SWARM_DEAD_MS, or its heartbeats stop for SWARM_FRESH_MS (4 beats), the smallest live member
 * picks the replica of its stage with the newest copy (then the best S6 score: round trips are
 * measured with SWARM_PING/PONG every heartbeat), at step c, and sends every member and the
 * replica QUORUM_RESTORE: the next generation, step c, the members by stage. Each stops its stage,
 * forgets its checkpoints after c (the replica installs the one it pulled) and starts again from
 * c: the steps after c are recomputed, identically, and never applied twice. Pipeline frames
 * carry the generation: older ones are dropped, newer ones held until this node gets there.
 *
 * Pool mode (`--quorum-size auto`). The layer pool (S3) and the planner (S5) decide instead of a
 * fixed size: every heartbeat the node runs ns_pool_assign over itself and the fresh pool-mode
 * peers of its model, each with the range it announced (sticky), and holds its own answer: the
 * layers its memory fits where holders are scarcest (ns_pool_surplus parts two nodes that took
 * the same layers at once). A free node plans over the free holders (ns_quorum_plan_near: a full
 * cover of compatible tiers, the fewest members, as every node computes it; its smallest member
 * then picks, among the larger ids, the holders nearest to it); that member proposes it, with
 * each member's layers, and a member accepts only what its own view of the pool confirms: every
 * member a fresh pool-mode peer that holds the layers it is named for, a contiguous cover, tiers
 * that can pipeline together, a stage its memory fits. A plan of one member is this node alone:
 * it trains the whole model solo. The stages keep the plan's layers through restarts (INFO and
 * RESTORE carry them), and a free node follows only a stage whose layers it holds.
 *
 * Contribution modes (S2). A node whose self-benchmark says T5 is too slow for any pipeline: it
 * neither proposes, accepts nor follows a quorum, and peers leave it out of theirs. Where its
 * memory holds the whole model and cohort sync is on, it trains the whole model as an
 * asynchronous contributor (diloco.c) instead.
 *
 * Not yet here (issue 7): the quorum core's own 30 s heartbeats (the 5 s capacity beats count
 * S5's missed beats), hot standbys.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "neuroshard/ckpt.h"
#include "neuroshard/dht.h"

#include "neuroshard/pipeline.h"
#include "neuroshard/quorum.h"
#include "neuroshard/swarm.h"
#include "node_internal.h"

#define SWARM_HEARTBEAT_MS       5000
#define SWARM_FRESH_MS           (4 * SWARM_HEARTBEAT_MS) /* S5: stale after 4 missed */
#define SWARM_DEGRADED_MS        (2 * SWARM_HEARTBEAT_MS) /* S5: degraded after 2 missed */
#define SWARM_PEERS_MAX          64
#define SWARM_MEMBERS_MAX        16
#define SWARM_RETRY_MS           50
#define SWARM_CAPACITY_BYTES     47 /* version 3; version 2 was 43, without the layer time */
#define SWARM_CAPACITY_V2_BYTES  43
#define SWARM_DEAD_MS            500   /* a member's link down this long: it is gone */
#define SWARM_FETCH_STALL_MS     10000 /* a checkpoint pull that makes no progress is dropped */
#define SWARM_PENDING_MAX        128 /* frames of a newer generation held until this node is there */
#define SWARM_NO_STAGE           0xff
#define SWARM_REASONS_MAX        16    /* kinds of refused proposals and restarts counted */
#define SWARM_PROPOSE_MS         10000 /* a proposal's answers (and a member's wait to start) */
#define SWARM_MEASURE_MS         (2 * SWARM_HEARTBEAT_MS) /* a proposer's wait for round trips */
#define SWARM_UNMEASURED_MS      500 /* the one-way latency of a peer not measured yet (S6) */
#define SWARM_LATE_PONGS         (2 * SWARM_PEERS_MAX) /* NEUROSHARD_TEST_PONG_DELAY_MS's */
#define SWARM_BENCH_MS           (10 * 60 * 1000)
#define SWARM_PUBLISH_MS         (10 * 60 * 1000) /* layer-holder and quorum records, again */
#define SWARM_HOLDER_RECORDS_MAX 256              /* layers a node announces itself under */
#define SWARM_CAP_IN_QUORUM      1u               /* CAPACITY's flags (b[11]) */
#define SWARM_CAP_POOL           2u /* pool mode: b[6..9] is the held range, b[13] (the size) 0 */
#define SWARM_POOL_LAYOUT        0  /* leads a pool-mode member list: never a member count (>= 2) */
#define SWARM_MEMBER_BYTES       (NS_NODE_ID_BYTES + 4) /* a member there: id, first and last layer */
#define SWARM_POOL_NODES_MAX     (SWARM_PEERS_MAX + 1) /* the pool this node sees: itself and peers */

static_assert(SWARM_POOL_NODES_MAX <= NS_POOL_NODES_MAX, "the pool core takes every node seen");
static_assert(SWARM_POOL_NODES_MAX <= NS_QUORUM_CANDIDATES_MAX, "the planner too");
static_assert(SWARM_MEMBERS_MAX <= NS_QUORUM_MEMBERS_MAX, "a plan of any size this node runs");
static_assert(NS_NODE_ID_BYTES == NS_ID_BYTES, "node ids are the pool's ids");

typedef struct peer_cap {
    uint8_t id[NS_NODE_ID_BYTES];
    uint32_t memory_mb, layers, hidden, quorum_size, tier;
    bool in_quorum;
    bool pool;          /* in pool mode: held is the range it holds */
    ns_pool_range held; /* b[6..9]: in pool mode the held range, else its stage's */
    uint64_t seen_ms;
    uint64_t ckpt_step;    /* its newest aligned checkpoint, as a member */
    uint64_t ckpt_oldest;  /* its oldest checkpoint kept, as a member (a restart needs one) */
    uint32_t replica_of;   /* the stage it follows as a replica, or SWARM_NO_STAGE */
    uint64_t replica_step; /* the step of the copy it holds */
    uint32_t queue;        /* its inbox depth (b[5]) */
    uint64_t rtt_us;       /* round trips measured by PING/PONG, smoothed (1/8); 0: none yet */
    uint32_t layer_us;     /* its self-benchmark's forward of a layer (b[43..46]); 0: unknown */
} peer_cap;

typedef struct pending_frame {
    struct pending_frame *next;
    uint8_t peer[NS_NODE_ID_BYTES];
    ns_frame f;
    uint8_t bytes[];
} pending_frame;

typedef struct outbox_item {
    struct outbox_item *next;
    int dir;
    ns_frame f;
    uint8_t bytes[]; /* the body, then the tensor */
} outbox_item;

/* tests only (NEUROSHARD_TEST_PONG_DELAY_MS): a PONG held back, as a long link would */
typedef struct late_pong {
    struct ns_swarm *s;
    uint64_t timer; /* 0: a free slot */
    uint8_t peer[NS_NODE_ID_BYTES];
    uint8_t body[8];
} late_pong;

struct ns_swarm {
    ns_swarm_config cfg;
    late_pong late_pongs[SWARM_LATE_PONGS];
    peer_cap peers[SWARM_PEERS_MAX];
    size_t peer_count;
    uint64_t heartbeat_timer, retry_timer, bench_timer;
    /* the self-benchmark (S2), run on a libuv worker */
    uv_work_t bench;
    bool bench_running, async_closed;
    int bench_rc;
    uint64_t bench_us, layer_latency_us;
    ns_tier tier;
    /* S2's contribution modes: a node too slow to pipeline (T5) trains the whole model as an
     * asynchronous contributor (async_mode) where its memory holds it (whole_fits) */
    bool async_mode, whole_fits, async_said;
    /* pool mode: the model's shape, the layers this node holds, the pool as it last saw it */
    bool pool_mode;
    ns_arch arch;
    ns_pool_range held;
    uint32_t pool_nodes, pool_replicas_target;
    uint32_t pool_holders[NS_POOL_LAYERS_MAX];
    /* the quorum: members and their layers by stage */
    bool in_quorum;
    uint8_t members[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range ranges[SWARM_MEMBERS_MAX];
    uint32_t member_count, stage;
    uint8_t quorum_id[NS_SHA256_BYTES];
    uint32_t generation;
    uint64_t proved_through; /* the steps this node's work periods already hold */
    /* the session (S5): when it began, when its current period began and the step then */
    uint64_t session_start_ms, period_start_ms, period_start_step;
    uint64_t renewals, dissolutions;
    bool in_quorum_before; /* a session is running (a failover keeps it) */
    /* what the DHT was last told (publish_dht) */
    uint64_t published_ms;
    ns_pool_range published;
    bool published_in_quorum;
    uint32_t published_generation;
    uint64_t check_timer;
    uint64_t beat_ms, woke_ms; /* this node's last heartbeat; when it found it had been stalled */
    /* members a neighbour found unresponsive (SWARM_SUSPECT) in this generation: when, by stage */
    uint64_t suspect_ms[SWARM_MEMBERS_MAX];
    uint32_t suspect_generation;
    uint64_t suspects_raised, suspects_heard;
    /* formation in two phases: the proposer waits for every accept, then says start */
    bool proposing, reserved;
    uint64_t proposed_ms, reserved_ms;
    uint64_t measure_since_ms; /* when this node first could propose (to wait for round trips) */
    bool proposing_said;       /* its choice was logged, for proposing_said_n free nodes */
    size_t proposing_said_n;
    uint8_t plan[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range plan_ranges[SWARM_MEMBERS_MAX]; /* in pool mode; else stage_layers' split */
    uint8_t plan_proposer[NS_NODE_ID_BYTES];
    uint32_t plan_count, plan_stage;
    bool plan_accepted[SWARM_MEMBERS_MAX];
    uint8_t plan_id[NS_SHA256_BYTES];
    pending_frame *pending;
    uint32_t pending_count;
    /* as a replica: the quorum it follows (members by stage) and the copy it pulls */
    bool knows_quorum;
    uint8_t followed[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range followed_ranges[SWARM_MEMBERS_MAX];
    uint32_t followed_count, followed_generation, replica_of;
    uint64_t replica_step;
    struct {
        bool on;
        uint8_t from[NS_NODE_ID_BYTES];
        uint64_t step, offset, last_ms;
        uint32_t file;
        int fd;
        char dir[PATH_MAX];
    } fetch;
    /* what the trainer thread sends, under mu */
    pthread_mutex_t mu;
    outbox_item *out, **out_tail;
    uv_async_t async;
    bool closing;
    /* counters */
    uint64_t frames_in, frames_out, bytes_in, bytes_out, refused_neighbour, refused_malformed,
        refused_full, proposals_refused, stale_generation, failovers;
    uint64_t test_dropped;                     /* frames counted for cfg.test_drop_every */
    uint64_t failover_started_ms, failover_ms; /* the last one: from a death seen to restarted */
    struct {
        const char *why; /* a string literal of on_propose / on_restore */
        uint64_t count;
    } reasons[SWARM_REASONS_MAX];
};

static uint64_t now_ms(const ns_swarm *s)
{
    return ns_env_now(&s->cfg.uvenv->env);
}

static void put_u16(uint8_t *p, uint32_t x)
{
    p[0] = (uint8_t)(x >> 8);
    p[1] = (uint8_t)x;
}

static uint32_t get_u16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static void put_u32(uint8_t *p, uint32_t x)
{
    put_u16(p, x >> 16);
    put_u16(p + 2, x & 0xffff);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_u64(uint8_t *p, uint64_t x)
{
    for (int i = 7; i >= 0; i--, x >>= 8)
        p[i] = (uint8_t)x;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | p[i];
    return x;
}

/* ---- capacity heartbeats -------------------------------------------------------------------- */

/* The smallest step of this node's checkpoints (0: none). */
static uint64_t oldest_checkpoint(const ns_swarm *s)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.3000s/checkpoints", s->cfg.train.data_dir);
    uint64_t steps[64];
    size_t count = 0;
    if (ns_ckpt_list(dir, steps, 64, &count) != NS_OK || count == 0)
        return 0;
    return steps[count - 1]; /* newest first */
}

/* The time of a layer this node announces: its self-benchmark's, 0 until there is one. */
static uint32_t own_layer_us(const ns_swarm *s)
{
    return s->layer_latency_us > UINT32_MAX ? UINT32_MAX : (uint32_t)s->layer_latency_us;
}

/* Whether this node may be a pipeline stage: its tier is T1-T4 (S2), or not measured yet. */
static bool can_pipeline(const ns_swarm *s)
{
    return !s->async_mode && (s->layer_latency_us == 0 || ns_tier_can_pipeline(s->tier));
}

static void capacity_body(const ns_swarm *s, uint8_t b[SWARM_CAPACITY_BYTES])
{
    ns_train_pipe_status ps = {0};
    if (*s->cfg.trainer != NULL)
        ns_trainer_pipe_status(*s->cfg.trainer, &ps);
    uint32_t mem = s->cfg.memory_mb > UINT32_MAX ? UINT32_MAX : (uint32_t)s->cfg.memory_mb;
    b[0] = 3; /* version */
    b[1] = (uint8_t)(mem >> 24);
    b[2] = (uint8_t)(mem >> 16);
    b[3] = (uint8_t)(mem >> 8);
    b[4] = (uint8_t)mem;
    b[5] = (uint8_t)(ps.inbox > 255 ? 255 : ps.inbox);
    put_u16(b + 6, s->pool_mode ? s->held.layer_first : ps.layer_first);
    put_u16(b + 8, s->pool_mode ? s->held.layer_last : ps.layer_last);
    b[10] = 0; /* GPU % */
    b[11] =
        (uint8_t)((s->in_quorum ? SWARM_CAP_IN_QUORUM : 0) | (s->pool_mode ? SWARM_CAP_POOL : 0));
    b[12] = (uint8_t)s->tier;
    b[13] = (uint8_t)s->cfg.quorum_size;
    put_u16(b + 14, s->cfg.model_layers);
    put_u16(b + 16, s->cfg.model_hidden);
    ns_train_status ts = {0};
    if (*s->cfg.trainer != NULL)
        ns_trainer_status(*s->cfg.trainer, &ts);
    put_u64(b + 18, s->in_quorum ? ts.aligned_checkpoint_step : 0);
    b[26] = (uint8_t)(s->in_quorum || !s->knows_quorum ? SWARM_NO_STAGE : s->replica_of);
    put_u64(b + 27, s->in_quorum ? 0 : s->replica_step);
    put_u64(b + 35, s->in_quorum ? oldest_checkpoint(s) : 0);
    put_u32(b + 43, own_layer_us(s));
}

static void send_capacity(ns_swarm *s, const uint8_t *to)
{
    uint8_t b[SWARM_CAPACITY_BYTES];
    capacity_body(s, b);
    ns_frame f = {.type = NS_FRAME_CAPACITY, .body = b, .body_len = sizeof b};
    if (to != NULL && ns_net_send_frame(s->cfg.net, to, &f) != NS_OK)
        NS_LOG_D("swarm", "capacity not sent: the link went away (the next heartbeat goes)");
    else if (to == NULL)
        (void)ns_net_broadcast(s->cfg.net, &f, NULL);
}

static peer_cap *peer_of(ns_swarm *s, const uint8_t *id, bool add)
{
    for (size_t i = 0; i < s->peer_count; i++)
        if (memcmp(s->peers[i].id, id, NS_NODE_ID_BYTES) == 0)
            return &s->peers[i];
    if (!add)
        return NULL;
    size_t slot = s->peer_count;
    if (slot == SWARM_PEERS_MAX) { /* full: the one heard from longest ago goes */
        slot = 0;
        for (size_t i = 1; i < s->peer_count; i++)
            if (s->peers[i].seen_ms < s->peers[slot].seen_ms)
                slot = i;
    } else {
        s->peer_count++;
    }
    memset(&s->peers[slot], 0, sizeof s->peers[slot]);
    memcpy(s->peers[slot].id, id, NS_NODE_ID_BYTES);
    return &s->peers[slot];
}

static void on_capacity(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    bool v3 = f->body_len == SWARM_CAPACITY_BYTES && f->body[0] == 3;
    bool v2 = f->body_len == SWARM_CAPACITY_V2_BYTES && f->body[0] == 2;
    if (!v3 && !v2) {
        s->refused_malformed++;
        return;
    }
    const uint8_t *b = f->body;
    peer_cap *p = peer_of(s, peer, true);
    p->memory_mb = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
    p->in_quorum = (b[11] & SWARM_CAP_IN_QUORUM) != 0;
    p->pool = (b[11] & SWARM_CAP_POOL) != 0;
    p->held = (ns_pool_range){get_u16(b + 6), get_u16(b + 8)};
    p->tier = b[12];
    p->quorum_size = b[13];
    p->layers = get_u16(b + 14);
    p->hidden = get_u16(b + 16);
    p->ckpt_step = get_u64(b + 18);
    p->replica_of = b[26];
    p->replica_step = get_u64(b + 27);
    p->ckpt_oldest = get_u64(b + 35);
    p->queue = b[5];
    p->layer_us = v3 ? get_u32(b + 43) : 0;
    p->seen_ms = now_ms(s);
}

/* ---- round trips (S6's candidate score) ----------------------------------------------------- */

/* Every heartbeat, a PING to each peer heard lately; its PONG gives the round trip. A peer can
 * only make itself look slower (it cannot answer before it is asked). */
static void send_pings(ns_swarm *s)
{
    uint8_t b[8];
    put_u64(b, uv_hrtime());
    ns_frame f = {.type = NS_FRAME_SWARM_PING, .body = b, .body_len = sizeof b};
    uint64_t now = now_ms(s);
    for (size_t i = 0; i < s->peer_count; i++)
        if (now - s->peers[i].seen_ms <= SWARM_FRESH_MS &&
            ns_net_send_frame(s->cfg.net, s->peers[i].id, &f) != NS_OK)
            NS_LOG_D("swarm", "a ping not sent: the link went away");
}

static void send_pong(ns_swarm *s, const uint8_t *peer, const uint8_t body[8])
{
    ns_frame pong = {.type = NS_FRAME_SWARM_PONG, .body = body, .body_len = 8};
    if (ns_net_send_frame(s->cfg.net, peer, &pong) != NS_OK)
        NS_LOG_D("swarm", "a pong not sent: the link went away");
}

static void late_pong_fired(void *arg, uint64_t now)
{
    (void)now;
    late_pong *lp = arg;
    lp->timer = 0;
    send_pong(lp->s, lp->peer, lp->body);
}

static void on_ping(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len != 8 || f->tensor.dtype != NS_DTYPE_NONE) {
        s->refused_malformed++;
        return;
    }
    late_pong *lp = NULL;
    for (size_t i = 0; s->cfg.test_pong_delay_ms != 0 && i < SWARM_LATE_PONGS; i++)
        if (s->late_pongs[i].timer == 0)
            lp = &s->late_pongs[i];
    if (lp == NULL) {
        send_pong(s, peer, f->body);
        return;
    }
    lp->s = s;
    memcpy(lp->peer, peer, NS_NODE_ID_BYTES);
    memcpy(lp->body, f->body, 8);
    lp->timer = ns_env_timer(&s->cfg.uvenv->env, now_ms(s) + s->cfg.test_pong_delay_ms,
                             late_pong_fired, lp);
    if (lp->timer == 0)
        send_pong(s, peer, f->body);
}

static void on_pong(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    peer_cap *p = f->body_len == 8 ? peer_of(s, peer, false) : NULL;
    uint64_t sent = f->body_len == 8 ? get_u64(f->body) : 0, now = uv_hrtime();
    if (p == NULL || sent > now || now - sent > 60ull * 1000000000) {
        s->refused_malformed++;
        return;
    }
    uint64_t rtt = (now - sent) / 1000 + 1; /* at least 1 us: 0 means none measured */
    p->rtt_us = p->rtt_us == 0 ? rtt : (7 * p->rtt_us + rtt) / 8;
}

/* S6's score of a candidate for a layer range, lower is better: 0.4 latency / 500 ms + 0.6
 * queue / 100 (the latency one way, half the round trip; unmeasured counts as 500 ms). */
static double candidate_score(const peer_cap *p)
{
    double latency_ms = p->rtt_us != 0 ? (double)p->rtt_us / 2000.0 : 500.0;
    return 0.4 * latency_ms / 500.0 + 0.6 * (double)p->queue / 100.0;
}

/* A peer's announced tier; a value no tier has counts as T5, which never pipelines. */
static ns_tier peer_tier(const peer_cap *p)
{
    return p->tier >= NS_TIER_T1 && p->tier <= NS_TIER_T5 ? (ns_tier)p->tier : NS_TIER_T5;
}

/* ---- the quorum ------------------------------------------------------------------------------ */

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, NS_NODE_ID_BYTES);
}

static int member_index(const uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n, const uint8_t *id)
{
    for (uint32_t i = 0; i < n; i++)
        if (memcmp(ids[i], id, NS_NODE_ID_BYTES) == 0)
            return (int)i;
    return -1;
}

/* The head (and the loss) of the last stage in thousandths of a layer: vocab / (12 hidden)
 * layers (its matrix against a layer's twelve hidden x hidden ones). */
static uint32_t head_milli(const ns_swarm *s)
{
    return (uint32_t)(1000ull * NS_TRAIN_VOCAB /
                      (12ull * (s->cfg.model_hidden ? s->cfg.model_hidden : 1)));
}

/* [first, last) of stage i of n: the split that makes the slowest stage fastest. */
static void stage_layers(const ns_swarm *s, uint32_t i, uint32_t n, uint32_t *first, uint32_t *last)
{
    uint32_t bounds[SWARM_MEMBERS_MAX + 1];
    if (ns_pipe_split(s->cfg.model_layers, n, head_milli(s), 0, bounds) != NS_OK) {
        *first =
            s->cfg.model_layers * i / n; /* (a quorum of more members than layers is refused) */
        *last = s->cfg.model_layers * (i + 1) / n;
        return;
    }
    *first = bounds[i];
    *last = bounds[i + 1];
}

/* The quorum's id: its members by stage (in pool mode with their layers) and the model. */
static void quorum_id_of(const ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES],
                         const ns_pool_range *ranges, uint32_t n, uint8_t out[NS_SHA256_BYTES])
{
    NS_ASSERT(n <= SWARM_MEMBERS_MAX);
    uint8_t buf[SWARM_MEMBERS_MAX * SWARM_MEMBER_BYTES + 4];
    size_t len = 0;
    for (uint32_t i = 0; i < n; i++) {
        memcpy(buf + len, ids[i], NS_NODE_ID_BYTES);
        len += NS_NODE_ID_BYTES;
        if (ranges != NULL) {
            put_u16(buf + len, ranges[i].layer_first);
            put_u16(buf + len + 2, ranges[i].layer_last);
            len += 4;
        }
    }
    put_u16(buf + len, s->cfg.model_layers);
    put_u16(buf + len + 2, s->cfg.model_hidden);
    ns_sha256(out, buf, len + 4);
}

/* A pool-mode member list: n x (id, first layer, last layer), by stage. */
static void put_members(uint8_t *b, uint8_t ids[][NS_NODE_ID_BYTES], const ns_pool_range *ranges,
                        uint32_t n)
{
    for (uint32_t i = 0; i < n; i++, b += SWARM_MEMBER_BYTES) {
        memcpy(b, ids[i], NS_NODE_ID_BYTES);
        put_u16(b + NS_NODE_ID_BYTES, ranges[i].layer_first);
        put_u16(b + NS_NODE_ID_BYTES + 2, ranges[i].layer_last);
    }
}

static void get_members(const uint8_t *b, uint32_t n, uint8_t ids[][NS_NODE_ID_BYTES],
                        ns_pool_range *ranges)
{
    for (uint32_t i = 0; i < n; i++, b += SWARM_MEMBER_BYTES) {
        memcpy(ids[i], b, NS_NODE_ID_BYTES);
        ranges[i].layer_first = get_u16(b + NS_NODE_ID_BYTES);
        ranges[i].layer_last = get_u16(b + NS_NODE_ID_BYTES + 2);
    }
}

/* Whether ranges[0..n) run through layers 0..layers-1 in order, each non-empty, once. */
static bool covers(const ns_pool_range *ranges, uint32_t n, uint32_t layers)
{
    uint32_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (ranges[i].layer_first != at || ranges[i].layer_last <= at)
            return false;
        at = ranges[i].layer_last;
    }
    return at == layers;
}

static void out_send(void *arg, int dir, const ns_frame *f);

/* Stops this node's stage, remembering which steps its proofs already hold: a restart from an
 * older checkpoint recomputes them, and they must not be proved twice. */
static void stop_trainer(ns_swarm *s)
{
    if (*s->cfg.trainer != NULL) {
        uint64_t through = ns_trainer_closed_through(*s->cfg.trainer);
        if (through > s->proved_through)
            s->proved_through = through;
    }
    ns_trainer_stop(*s->cfg.trainer);
    *s->cfg.trainer = NULL;
}

/* What the node record says of this node's capacity (S2): in pool mode the layers it holds, else
 * its stage's. */
/* The layers this node holds (pool mode) or runs (a fixed quorum's stage); empty when none. */
static ns_pool_range holding(const ns_swarm *s)
{
    if (s->pool_mode)
        return s->held;
    if (s->in_quorum)
        return s->ranges[s->stage];
    if (s->cfg.quorum_size == 1 && *s->cfg.trainer != NULL && s->cfg.model_layers > 0)
        return (ns_pool_range){0, s->cfg.model_layers}; /* training the whole model alone */
    return (ns_pool_range){0, 0};
}

static void put_record(ns_swarm *s, uint32_t type, const char *topic, const uint8_t *body,
                       size_t len, uint64_t ttl_ms)
{
    uint64_t now = now_ms(s);
    ns_record r = {.type = type,
                   .sequence = now,
                   .timestamp_ms = now,
                   .expiry_ms = now + ttl_ms,
                   .topic_len = strlen(topic),
                   .body = body,
                   .body_len = len};
    memcpy(r.topic, topic, r.topic_len);
    uint8_t *env = NULL;
    size_t env_len = 0;
    if (ns_record_sign(s->cfg.key, &r, &env, &env_len) != NS_OK ||
        ns_dht_put(ns_net_dht(s->cfg.net), env, env_len, NULL, NULL) != NS_OK)
        NS_LOG_D("swarm", "a %s record was not published (the next try comes)", topic);
    free(env);
}

/* S3 and S5 in the DHT: a LAYER_HOLDER record under each layer this node holds (topic
 * "<layers>x<hidden>/<layer>"; body: the held range, memory in MB, tier, in a quorum: 10 bytes)
 * and, in a quorum, a QUORUM record under its id (topic: the id's first 16 bytes in hex; body:
 * generation, member count, then each member's id and range). Published when they change and
 * every SWARM_PUBLISH_MS; they expire after twice that. */
static void publish_dht(ns_swarm *s)
{
    uint64_t now = now_ms(s);
    ns_pool_range r = holding(s);
    bool fresh = now - s->published_ms < SWARM_PUBLISH_MS && s->published_ms != 0;
    if (fresh && r.layer_first == s->published.layer_first &&
        r.layer_last == s->published.layer_last && s->published_in_quorum == s->in_quorum &&
        s->published_generation == s->generation)
        return;
    s->published_ms = now;
    s->published = r;
    s->published_in_quorum = s->in_quorum;
    s->published_generation = s->generation;
    uint8_t body[10];
    put_u16(body, r.layer_first);
    put_u16(body + 2, r.layer_last);
    uint32_t mem = s->cfg.memory_mb > UINT32_MAX ? UINT32_MAX : (uint32_t)s->cfg.memory_mb;
    put_u32(body + 4, mem);
    body[8] = (uint8_t)s->tier;
    body[9] = s->in_quorum ? 1 : 0;
    for (uint32_t l = r.layer_first; l < r.layer_last && l < SWARM_HOLDER_RECORDS_MAX; l++) {
        char topic[48];
        snprintf(topic, sizeof topic, "%ux%u/%u", s->cfg.model_layers, s->cfg.model_hidden, l);
        put_record(s, NS_RECORD_LAYER_HOLDER, topic, body, sizeof body, 2 * SWARM_PUBLISH_MS);
    }
    if (s->in_quorum) {
        uint8_t q[4 + 1 + SWARM_MEMBERS_MAX * (NS_NODE_ID_BYTES + 4)];
        put_u32(q, s->generation);
        q[4] = (uint8_t)s->member_count;
        size_t at = 5;
        for (uint32_t i = 0; i < s->member_count; i++) {
            memcpy(q + at, s->members[i], NS_NODE_ID_BYTES);
            put_u16(q + at + NS_NODE_ID_BYTES, s->ranges[i].layer_first);
            put_u16(q + at + NS_NODE_ID_BYTES + 2, s->ranges[i].layer_last);
            at += NS_NODE_ID_BYTES + 4;
        }
        char topic[2 * 16 + 1];
        ns_hex_encode(topic, sizeof topic, s->quorum_id, 16);
        put_record(s, NS_RECORD_QUORUM, topic, q, at, 2 * SWARM_PUBLISH_MS);
    }
}

static void publish_capacity(ns_swarm *s)
{
    publish_dht(s);
    ns_node_info cap = {.layer_latency_us = s->layer_latency_us,
                        .tier = s->layer_latency_us != 0 ? (uint32_t)s->tier : 0,
                        .in_quorum = s->in_quorum,
                        .reputation_ppm = 1000000};
    if (s->pool_mode) {
        cap.layer_first = s->held.layer_first;
        cap.layer_last = s->held.layer_last;
    } else if (s->in_quorum) {
        cap.layer_first = s->ranges[s->stage].layer_first;
        cap.layer_last = s->ranges[s->stage].layer_last;
    }
    if (s->in_quorum)
        memcpy(cap.quorum_id, s->quorum_id, sizeof cap.quorum_id);
    ns_net_set_capacity(s->cfg.net, &cap);
}

static void deliver_pending(ns_swarm *s);
static void send_info(ns_swarm *s);

/* Becomes stage `stage` of the quorum `ids` (by stage) at `generation`, the members running
 * `ranges` (NULL: stage_layers' split), and starts the trainer on that stage (from its newest
 * checkpoint). A quorum of one is this node alone (pool mode): it trains the whole model. */
static void join_quorum(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], const ns_pool_range *ranges,
                        uint32_t n, uint32_t stage, uint32_t generation)
{
    NS_ASSERT(n >= 1 && n <= SWARM_MEMBERS_MAX);
    NS_ASSERT(stage < n);
    memmove(s->members, ids, (size_t)n * NS_NODE_ID_BYTES);
    if (ranges != NULL)
        memmove(s->ranges, ranges, (size_t)n * sizeof ranges[0]);
    for (uint32_t i = 0; ranges == NULL && i < n; i++)
        stage_layers(s, i, n, &s->ranges[i].layer_first, &s->ranges[i].layer_last);
    NS_ASSERT(covers(s->ranges, n, s->cfg.model_layers));
    s->member_count = n;
    s->stage = stage;
    s->in_quorum = true;
    if (generation == 1 || !s->in_quorum_before) { /* a new quorum, not a failover: a session */
        s->session_start_ms = s->period_start_ms = now_ms(s);
        s->period_start_step = UINT64_MAX; /* the trainer's step, once it runs */
    }
    s->in_quorum_before = true;
    s->generation = generation;
    s->knows_quorum = false;
    quorum_id_of(s, s->members, s->pool_mode ? s->ranges : NULL, n, s->quorum_id);
    ns_train_config tc = s->cfg.train;
    tc.stage = stage;
    tc.stages = n;
    tc.generation = generation;
    tc.proved_through = s->proved_through;
    uint8_t named[NS_SHA256_BYTES + 4];
    memcpy(named, s->quorum_id, NS_SHA256_BYTES);
    put_u32(named + NS_SHA256_BYTES, generation);
    ns_sha256(tc.pipeline_id, named, sizeof named);
    tc.layer_first = s->ranges[stage].layer_first;
    tc.layer_last = s->ranges[stage].layer_last;
    tc.send = out_send;
    tc.send_arg = s;
    char hex[17];
    ns_hex_encode(hex, sizeof hex, s->quorum_id, 8);
    if (n == 1)
        NS_LOG_I("swarm", "the pool's plan is this node alone: it trains the whole model solo");
    else
        NS_LOG_I("swarm", "joined quorum %s as stage %u of %u (layers %u..%u)", hex, stage, n,
                 tc.layer_first, tc.layer_last);
    char err[NS_ERR_TEXT_SIZE];
    if (ns_trainer_start(s->cfg.trainer, &tc, err, sizeof err) != NS_OK)
        NS_LOG_E("swarm", "the stage could not start: %s", err);
    send_capacity(s, NULL);
    send_info(s);
    publish_capacity(s);
    deliver_pending(s);
}

/* A peer in pool mode with this node's model, heard from lately. */
static bool pool_peer(const ns_swarm *s, const peer_cap *p, uint64_t now)
{
    return now - p->seen_ms <= SWARM_FRESH_MS && p->pool && p->layers == s->cfg.model_layers &&
           p->hidden == s->cfg.model_hidden;
}

/* A free peer that wants what this node wants: the same quorum size and model, or in pool mode
 * the pool of its model. */
static bool wants_same(const ns_swarm *s, const peer_cap *p, uint64_t now)
{
    if (!ns_tier_can_pipeline(peer_tier(p)))
        return false; /* a T5 node trains asynchronously, never in a pipeline (S2) */
    if (s->pool_mode)
        return pool_peer(s, p, now) && !p->in_quorum;
    return now - p->seen_ms <= SWARM_FRESH_MS && !p->in_quorum && !p->pool &&
           p->quorum_size == s->cfg.quorum_size && p->layers == s->cfg.model_layers &&
           p->hidden == s->cfg.model_hidden;
}

/* Sends a proposal to every member but this node and waits for their accepts: nobody starts
 * until every member accepted, since the proposer's view may be stale. */
static void send_proposal(ns_swarm *s, const uint8_t *body, size_t len,
                          uint8_t ids[][NS_NODE_ID_BYTES], const ns_pool_range *ranges, uint32_t n,
                          uint32_t stage)
{
    ns_frame f = {.type = NS_FRAME_QUORUM_PROPOSE, .body = body, .body_len = len};
    for (uint32_t i = 0; i < n; i++)
        if (i != stage && ns_net_send_frame(s->cfg.net, ids[i], &f) != NS_OK)
            return; /* a member without a link yet: try again at the next heartbeat */
    s->proposing = true;
    s->proposed_ms = now_ms(s);
    memcpy(s->plan, ids, (size_t)n * NS_NODE_ID_BYTES);
    if (ranges != NULL)
        memcpy(s->plan_ranges, ranges, (size_t)n * sizeof ranges[0]);
    memcpy(s->plan_proposer, s->cfg.key->node_id, NS_NODE_ID_BYTES);
    s->plan_count = n;
    s->plan_stage = stage;
    memset(s->plan_accepted, 0, sizeof s->plan_accepted);
    s->plan_accepted[stage] = true;
    quorum_id_of(s, s->plan, ranges, n, s->plan_id);
}

/* A free peer as the fixed-size proposer ranks it: by the round trip it measured (none yet
 * last), then by id. */
typedef struct near_peer {
    uint64_t rtt_us;
    uint8_t id[NS_NODE_ID_BYTES];
} near_peer;

static int cmp_near(const void *a, const void *b)
{
    const near_peer *x = a, *y = b;
    if (x->rtt_us != y->rtt_us)
        return x->rtt_us < y->rtt_us ? -1 : 1;
    return memcmp(x->id, y->id, NS_NODE_ID_BYTES);
}

/* The smallest free node proposes a quorum of itself and the quorum_size - 1 free peers nearest
 * to it (S5: minimise latency), by the round trips it measured; with more free peers than it
 * needs it waits up to SWARM_MEASURE_MS for those it has not measured yet. Every free node sees
 * the smallest free node, so only one proposes; the members, in id order, have it first. */
static void maybe_propose_fixed(ns_swarm *s)
{
    uint32_t want = s->cfg.quorum_size;
    if (s->in_quorum || want < 2 || want > SWARM_MEMBERS_MAX)
        return;
    uint8_t ids[SWARM_PEERS_MAX + 1][NS_NODE_ID_BYTES];
    size_t n = 0;
    memcpy(ids[n++], s->cfg.key->node_id, NS_NODE_ID_BYTES);
    uint64_t now = now_ms(s);
    for (size_t i = 0; i < s->peer_count; i++)
        if (wants_same(s, &s->peers[i], now))
            memcpy(ids[n++], s->peers[i].id, NS_NODE_ID_BYTES);
    if (n < want) {
        s->measure_since_ms = 0;
        return;
    }
    /* nodes that know a quorum stay its replicas (S3: two holders of every layer) until there
     * are enough free nodes for another quorum and replicas besides */
    if (s->knows_quorum && n < 2 * (size_t)want)
        return;
    qsort(ids, n, NS_NODE_ID_BYTES, cmp_id);
    if (memcmp(ids[0], s->cfg.key->node_id, NS_NODE_ID_BYTES) != 0 || s->proposing || s->reserved)
        return; /* a smaller node proposes, or a proposal is out */
    near_peer near[SWARM_PEERS_MAX];
    size_t unmeasured = 0;
    for (size_t i = 1; i < n; i++) {
        const peer_cap *p = peer_of(s, ids[i], false);
        near[i - 1].rtt_us = p != NULL && p->rtt_us != 0 ? p->rtt_us : UINT64_MAX;
        unmeasured += near[i - 1].rtt_us == UINT64_MAX;
        memcpy(near[i - 1].id, ids[i], NS_NODE_ID_BYTES);
    }
    if (s->measure_since_ms == 0)
        s->measure_since_ms = now;
    /* with a choice to make, the round trips first (a PING every heartbeat); without one, at once:
     * waiting would let nodes that started later, with partial views, propose beside it */
    if (unmeasured > 0 && n > want && now - s->measure_since_ms < SWARM_MEASURE_MS)
        return;
    qsort(near, n - 1, sizeof near[0], cmp_near);
    for (uint32_t i = 1; i < want; i++)
        memcpy(ids[i], near[i - 1].id, NS_NODE_ID_BYTES);
    qsort(ids, want, NS_NODE_ID_BYTES, cmp_id);
    if (!s->proposing_said || n != s->proposing_said_n) { /* once per pool size */
        uint64_t chosen = near[want - 2].rtt_us, farthest = near[n - 2].rtt_us;
        NS_LOG_I("swarm",
                 "proposing a quorum of %u: this node and the %u nearest of %zu free peers "
                 "(round trips up to %.1f ms; the farthest %.1f ms; -1: not measured)",
                 want, want - 1, n - 1, chosen == UINT64_MAX ? -1.0 : (double)chosen / 1000.0,
                 farthest == UINT64_MAX ? -1.0 : (double)farthest / 1000.0);
        s->proposing_said = true;
        s->proposing_said_n = n;
    }
    uint8_t body[1 + 4 + SWARM_MEMBERS_MAX * NS_NODE_ID_BYTES];
    body[0] = (uint8_t)want;
    put_u16(body + 1, s->cfg.model_layers);
    put_u16(body + 3, s->cfg.model_hidden);
    memcpy(body + 5, ids, (size_t)want * NS_NODE_ID_BYTES);
    send_proposal(s, body, 5 + (size_t)want * NS_NODE_ID_BYTES, ids, NULL, want, 0);
}

/* The planner's candidates: this node and the free pool-mode peers of its model that hold
 * layers, each with the tier and range it announced and the latency this node measured to it
 * (half the round trip; SWARM_UNMEASURED_MS while none is measured, counted in *unmeasured for
 * the ids above this node's, the only ones its plan may take). */
static size_t pool_candidates(const ns_swarm *s, ns_quorum_candidate *c, size_t *unmeasured)
{
    *unmeasured = 0;
    size_t n = 0;
    c[n++] = (ns_quorum_candidate){.node = {.memory_mb = s->cfg.memory_mb,
                                            .tier = s->tier,
                                            .layer_first = s->held.layer_first,
                                            .layer_last = s->held.layer_last},
                                   .layer_us = own_layer_us(s)};
    memcpy(c[0].node.id, s->cfg.key->node_id, NS_NODE_ID_BYTES);
    uint64_t now = now_ms(s);
    for (size_t i = 0; i < s->peer_count; i++) {
        const peer_cap *p = &s->peers[i];
        if (!wants_same(s, p, now) || p->held.layer_first >= p->held.layer_last)
            continue;
        uint64_t one_way_ms = (p->rtt_us + 1000) / 2000;
        c[n] = (ns_quorum_candidate){.node = {.memory_mb = p->memory_mb,
                                              .tier = peer_tier(p),
                                              .layer_first = p->held.layer_first,
                                              .layer_last = p->held.layer_last},
                                     .latency_ms = p->rtt_us == 0       ? SWARM_UNMEASURED_MS
                                                   : one_way_ms > 60000 ? 60000
                                                                        : (uint32_t)one_way_ms,
                                     .layer_us = p->layer_us};
        *unmeasured += p->rtt_us == 0 && cmp_id(p->id, s->cfg.key->node_id) > 0;
        memcpy(c[n++].node.id, p->id, NS_NODE_ID_BYTES);
    }
    NS_ASSERT(n <= SWARM_POOL_NODES_MAX);
    return n;
}

/* Pool mode: plans over the free holders; the smallest member of the plan every node computes
 * alike proposes, with each member's layers, after choosing among the holders with ids above its
 * own those nearest to it (ns_quorum_plan_near; S5: minimise latency). A cover of this node alone
 * is solo training. */
static void maybe_propose_pool(ns_swarm *s)
{
    if (s->in_quorum || s->proposing || s->reserved || s->held.layer_first >= s->held.layer_last)
        return;
    ns_quorum_candidate cands[SWARM_POOL_NODES_MAX];
    size_t unmeasured;
    size_t n = pool_candidates(s, cands, &unmeasured);
    ns_quorum_proposal plan;
    bool proposes = false;
    /* every node plans from the same announcements, so the smallest member of the plan knows it
     * is the one to propose (the layer times announced move only the boundaries, never who is
     * in the plan) */
    if (ns_quorum_plan_near(cands, n, s->cfg.key->node_id, s->cfg.model_layers, head_milli(s), 0,
                            &plan, &proposes) != NS_OK ||
        plan.member_count > SWARM_MEMBERS_MAX) {
        s->measure_since_ms = 0;
        return; /* no full cover among the free holders yet */
    }
    if (!proposes)
        return; /* a smaller member proposes */
    uint64_t now = now_ms(s);
    if (s->measure_since_ms == 0)
        s->measure_since_ms = now;
    if (plan.member_count > 1 && unmeasured > 0 && n > plan.member_count &&
        now - s->measure_since_ms < SWARM_MEASURE_MS)
        return; /* a choice to make: the round trips first (a PING every heartbeat) */
    uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range ranges[SWARM_MEMBERS_MAX];
    for (uint32_t i = 0; i < plan.member_count; i++) {
        memcpy(ids[i], plan.members[i].id, NS_NODE_ID_BYTES);
        ranges[i] = (ns_pool_range){plan.members[i].layer_first, plan.members[i].layer_last};
        if (cmp_id(ids[i], s->cfg.key->node_id) < 0)
            return; /* a smaller member proposes */
    }
    int stage = member_index(ids, plan.member_count, s->cfg.key->node_id);
    /* as in the fixed mode, replicas stay replicas until the free nodes could spare them */
    if (stage < 0 || (s->knows_quorum && n < 2 * (size_t)plan.member_count))
        return;
    if (plan.member_count == 1) {
        join_quorum(s, ids, ranges, 1, 0, 1);
        return;
    }
    uint8_t body[6 + SWARM_MEMBERS_MAX * SWARM_MEMBER_BYTES];
    body[0] = SWARM_POOL_LAYOUT;
    body[1] = (uint8_t)plan.member_count;
    put_u16(body + 2, s->cfg.model_layers);
    put_u16(body + 4, s->cfg.model_hidden);
    put_members(body + 6, ids, ranges, plan.member_count);
    send_proposal(s, body, 6 + (size_t)plan.member_count * SWARM_MEMBER_BYTES, ids, ranges,
                  plan.member_count, (uint32_t)stage);
}

static void maybe_propose(ns_swarm *s)
{
    if (!can_pipeline(s))
        return;
    if (s->pool_mode)
        maybe_propose_pool(s);
    else
        maybe_propose_fixed(s);
}

/* A member's answer to this node's proposal; when all accepted, everyone starts. */
static void on_accept(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!s->proposing || f->body_len != NS_SHA256_BYTES + 1 ||
        memcmp(f->body, s->plan_id, NS_SHA256_BYTES) != 0)
        return;
    int i = member_index(s->plan, s->plan_count, peer);
    if (i < 0)
        return;
    if (f->body[NS_SHA256_BYTES] != 1) {
        NS_LOG_W("swarm", "a member refused this node's proposal: it is withdrawn");
        s->proposing = false;
        return;
    }
    s->plan_accepted[i] = true;
    for (uint32_t k = 0; k < s->plan_count; k++)
        if (!s->plan_accepted[k])
            return;
    s->proposing = false;
    ns_frame go = {.type = NS_FRAME_QUORUM_START, .body = s->plan_id, .body_len = NS_SHA256_BYTES};
    for (uint32_t k = 0; k < s->plan_count; k++)
        if (k != s->plan_stage && ns_net_send_frame(s->cfg.net, s->plan[k], &go) != NS_OK)
            NS_LOG_W("swarm", "the start did not reach stage %u", k);
    join_quorum(s, s->plan, s->pool_mode ? s->plan_ranges : NULL, s->plan_count, s->plan_stage, 1);
}

/* The proposer says every member accepted: this node starts its stage. */
static void on_start(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!s->reserved || f->body_len != NS_SHA256_BYTES ||
        memcmp(f->body, s->plan_id, NS_SHA256_BYTES) != 0 ||
        memcmp(peer, s->plan_proposer, NS_NODE_ID_BYTES) != 0)
        return;
    s->reserved = false;
    join_quorum(s, s->plan, s->pool_mode ? s->plan_ranges : NULL, s->plan_count, s->plan_stage, 1);
}

/* Every member other than this node announced, lately, that it wants this quorum size and
 * model: a proposal cannot enlist nodes that never offered themselves. */
static bool in_pool(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n)
{
    uint64_t now = now_ms(s);
    for (uint32_t i = 0; i < n; i++) {
        if (memcmp(ids[i], s->cfg.key->node_id, NS_NODE_ID_BYTES) == 0)
            continue;
        const peer_cap *p = peer_of(s, ids[i], false);
        if (p == NULL || now - p->seen_ms > SWARM_FRESH_MS || p->pool ||
            p->quorum_size != s->cfg.quorum_size || p->layers != s->cfg.model_layers ||
            p->hidden != s->cfg.model_hidden)
            return false;
    }
    return true;
}

/* Counts a refused proposal or restart by its reason (a few fixed strings). */
static void count_refusal(ns_swarm *s, const char *why)
{
    for (uint32_t i = 0; i < SWARM_REASONS_MAX; i++) {
        if (s->reasons[i].why == NULL || strcmp(s->reasons[i].why, why) == 0) {
            s->reasons[i].why = why;
            s->reasons[i].count++;
            return;
        }
    }
}

/* Answers a proposal: refused with `why` (counted), or accepted, which promises this node to
 * it until the proposer says start (or SWARM_PROPOSE_MS pass). */
static void answer_proposal(ns_swarm *s, const uint8_t *peer, const char *why,
                            uint8_t ids[][NS_NODE_ID_BYTES], const ns_pool_range *ranges,
                            uint32_t n, uint32_t stage)
{
    uint8_t answer[NS_SHA256_BYTES + 1] = {0};
    if (why == NULL)
        quorum_id_of(s, ids, ranges, n, answer);
    answer[NS_SHA256_BYTES] = why == NULL ? 1 : 0;
    ns_frame a = {.type = NS_FRAME_QUORUM_ACCEPT, .body = answer, .body_len = sizeof answer};
    if (ns_net_send_frame(s->cfg.net, peer, &a) != NS_OK)
        NS_LOG_D("swarm", "no link back to the proposer for the answer");
    if (why != NULL) {
        s->proposals_refused++;
        count_refusal(s, why);
        NS_LOG_W("swarm", "quorum proposal refused: %s", why);
        return;
    }
    NS_ASSERT(stage < n);
    s->reserved = true;
    s->reserved_ms = now_ms(s);
    memcpy(s->plan, ids, (size_t)n * NS_NODE_ID_BYTES);
    if (ranges != NULL)
        memcpy(s->plan_ranges, ranges, (size_t)n * sizeof ranges[0]);
    memcpy(s->plan_proposer, peer, NS_NODE_ID_BYTES);
    s->plan_count = n;
    s->plan_stage = stage;
    memcpy(s->plan_id, answer, NS_SHA256_BYTES);
}

/* A fixed-size proposal is valid for this node when it is free, it is among the members (each
 * once, in id order, as many as it wants), the model is its own, and the proposer is the
 * smallest member. */
static void on_propose_fixed(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    const char *why = NULL;
    uint32_t n = f->body_len >= 5 ? f->body[0] : 0;
    uint32_t stage = UINT32_MAX;
    uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    if (n < 2 || n > SWARM_MEMBERS_MAX || f->body_len != 5 + (size_t)n * NS_NODE_ID_BYTES) {
        why = "malformed";
    } else {
        memcpy(ids, f->body + 5, (size_t)n * NS_NODE_ID_BYTES);
        for (uint32_t i = 0; i < n; i++) {
            if (i > 0 && cmp_id(ids[i - 1], ids[i]) >= 0)
                why = "members not in id order";
            if (memcmp(ids[i], s->cfg.key->node_id, NS_NODE_ID_BYTES) == 0)
                stage = i;
        }
        if (why == NULL && (s->in_quorum || s->reserved || s->proposing))
            why = "already in a quorum or promised to one";
        else if (why == NULL && stage == UINT32_MAX)
            why = "this node is not a member";
        else if (why == NULL && memcmp(ids[0], peer, NS_NODE_ID_BYTES) != 0)
            why = "not proposed by its first member";
        else if (why == NULL &&
                 (n != s->cfg.quorum_size || get_u16(f->body + 1) != s->cfg.model_layers ||
                  get_u16(f->body + 3) != s->cfg.model_hidden))
            why = "another quorum size or model";
        else if (why == NULL && n > s->cfg.model_layers)
            why = "more members than layers";
        else if (why == NULL && !in_pool(s, ids, n))
            why = "a member outside the pool (never announced this quorum size and model)";
    }
    answer_proposal(s, peer, why, ids, NULL, n, stage);
}

/* The members of a pool-mode plan as this node's own view of the pool sees them: each a fresh
 * pool-mode peer (or this node) that holds the layers it is named for, tiers that can pipeline
 * together, and this node's stage within its memory. */
static const char *pool_members_refusal(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES],
                                        const ns_pool_range *ranges, uint32_t n, uint32_t stage)
{
    ns_tier tiers[SWARM_MEMBERS_MAX];
    uint64_t now = now_ms(s);
    for (uint32_t i = 0; i < n; i++) {
        ns_pool_range held = s->held;
        tiers[i] = s->tier;
        if (i != stage) {
            const peer_cap *p = peer_of(s, ids[i], false);
            if (p == NULL || !pool_peer(s, p, now))
                return "a member outside the pool (never announced pool mode and this model)";
            held = p->held;
            tiers[i] = peer_tier(p);
        }
        if (ranges[i].layer_first < held.layer_first || ranges[i].layer_last > held.layer_last)
            return "a member named for layers it does not hold";
    }
    if (!ns_quorum_tiers_compatible(tiers, n))
        return "the members' tiers cannot pipeline together";
    ns_train_config tc = s->cfg.train;
    tc.stage = stage;
    tc.stages = n;
    tc.layer_first = ranges[stage].layer_first;
    tc.layer_last = ranges[stage].layer_last;
    char err[NS_ERR_TEXT_SIZE];
    if (ns_trainer_check(&tc, err, sizeof err) != NS_OK) {
        NS_LOG_D("swarm", "a stage of layers %u..%u: %s", tc.layer_first, tc.layer_last, err);
        return "this node's stage would not fit its memory";
    }
    return NULL;
}

/* Why this node refuses a pool-mode plan of `layers` x `hidden`, or NULL; *stage is its place. */
static const char *pool_plan_refusal(ns_swarm *s, const uint8_t *peer, uint32_t layers,
                                     uint32_t hidden, uint8_t ids[][NS_NODE_ID_BYTES],
                                     const ns_pool_range *ranges, uint32_t n, uint32_t *stage)
{
    const uint8_t *smallest = ids[0];
    for (uint32_t i = 0; i < n; i++) {
        if (member_index(ids, n, ids[i]) != (int)i)
            return "a member named twice";
        smallest = cmp_id(ids[i], smallest) < 0 ? ids[i] : smallest;
    }
    int at = member_index(ids, n, s->cfg.key->node_id);
    if (!s->pool_mode || layers != s->cfg.model_layers || hidden != s->cfg.model_hidden)
        return "another quorum size or model";
    if (!covers(ranges, n, layers))
        return "the members' layers do not cover the model in order";
    if (s->in_quorum || s->reserved || s->proposing)
        return "already in a quorum or promised to one";
    if (at < 0)
        return "this node is not a member";
    if (memcmp(smallest, peer, NS_NODE_ID_BYTES) != 0)
        return "not proposed by its smallest member";
    *stage = (uint32_t)at;
    return pool_members_refusal(s, ids, ranges, n, *stage);
}

static void on_propose_pool(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    uint32_t n = f->body_len >= 6 ? f->body[1] : 0;
    uint32_t stage = UINT32_MAX;
    uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range ranges[SWARM_MEMBERS_MAX];
    const char *why = "malformed";
    if (n >= 2 && n <= SWARM_MEMBERS_MAX && f->body_len == 6 + (size_t)n * SWARM_MEMBER_BYTES) {
        get_members(f->body + 6, n, ids, ranges);
        why = pool_plan_refusal(s, peer, get_u16(f->body + 2), get_u16(f->body + 4), ids, ranges, n,
                                &stage);
    }
    answer_proposal(s, peer, why, ids, ranges, n, stage);
}

static void on_propose(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!can_pipeline(s)) {
        answer_proposal(s, peer, "this node's tier cannot pipeline (T5: asynchronous only)", NULL,
                        NULL, 0, 0);
        return;
    }
    if (f->body_len >= 1 && f->body[0] == SWARM_POOL_LAYOUT)
        on_propose_pool(s, peer, f);
    else
        on_propose_fixed(s, peer, f);
}

/* ---- the layer pool (pool mode) ----------------------------------------------------------- */

/* The pool this node sees: itself first, then the fresh pool-mode peers of its model, each with
 * its memory, tier and the range it announced. */
static size_t pool_view(const ns_swarm *s, ns_pool_node *nodes)
{
    size_t n = 0;
    nodes[n++] = (ns_pool_node){.memory_mb = s->cfg.memory_mb,
                                .tier = s->tier,
                                .layer_first = s->held.layer_first,
                                .layer_last = s->held.layer_last};
    memcpy(nodes[0].id, s->cfg.key->node_id, NS_NODE_ID_BYTES);
    uint64_t now = now_ms(s);
    for (size_t i = 0; i < s->peer_count; i++) {
        const peer_cap *p = &s->peers[i];
        if (!pool_peer(s, p, now) || memcmp(p->id, s->cfg.key->node_id, NS_NODE_ID_BYTES) == 0 ||
            !ns_tier_can_pipeline(peer_tier(p)))
            continue; /* a T5 node holds no layers for pipelines (S2) */
        nodes[n] = (ns_pool_node){.memory_mb = p->memory_mb,
                                  .tier = peer_tier(p),
                                  .layer_first = p->held.layer_first,
                                  .layer_last = p->held.layer_last};
        memcpy(nodes[n++].id, p->id, NS_NODE_ID_BYTES);
    }
    NS_ASSERT(n <= SWARM_POOL_NODES_MAX);
    return n;
}

/* Every heartbeat: the layer pool over the pool this node sees (S3). A free node holds what the
 * pool assigns it (kept while still valid; given up when surplus); a node in a quorum, or
 * promised to one, keeps the layers it trains. */
static void pool_update(ns_swarm *s)
{
    if (!can_pipeline(s)) { /* T5: no pipeline needs its layers, so the pool counts none */
        if (s->held.layer_first < s->held.layer_last) {
            NS_LOG_I("swarm",
                     "tier %s cannot pipeline: this node gives its layers %u..%u back "
                     "to the pool",
                     ns_tier_name(s->tier), s->held.layer_first, s->held.layer_last);
            s->held = (ns_pool_range){0, 0};
            publish_capacity(s);
        }
        return;
    }
    ns_pool_node nodes[SWARM_POOL_NODES_MAX];
    ns_pool_range out[SWARM_POOL_NODES_MAX];
    size_t n = pool_view(s, nodes);
    bool settled = s->in_quorum || s->proposing || s->reserved;
    int rc = ns_pool_assign(&s->arch, nodes, n, out);
    if (rc == NS_OK && !settled && ns_pool_surplus(&s->arch, nodes, out, n, 0)) {
        nodes[0].layer_first = nodes[0].layer_last = 0;
        rc = ns_pool_assign(&s->arch, nodes, n, out);
    }
    if (rc != NS_OK) {
        NS_LOG_W("swarm", "the layer pool failed: %s", ns_strerror(rc));
        return;
    }
    if (settled)
        out[0] = s->held;
    s->pool_nodes = (uint32_t)n;
    s->pool_replicas_target = ns_pool_replicas_target(n);
    if (ns_pool_holders(&s->arch, out, n, s->pool_holders) != NS_OK)
        memset(s->pool_holders, 0, sizeof s->pool_holders);
    if (out[0].layer_first == s->held.layer_first && out[0].layer_last == s->held.layer_last)
        return;
    if (out[0].layer_first == out[0].layer_last)
        NS_LOG_W("swarm",
                 "the pool of %zu nodes gives this node no layer: its memory holds none "
                 "of model %ux%u",
                 n, s->cfg.model_layers, s->cfg.model_hidden);
    else
        NS_LOG_I("swarm", "the pool of %zu nodes gives this node layers %u..%u (it held %u..%u)", n,
                 out[0].layer_first, out[0].layer_last, s->held.layer_first, s->held.layer_last);
    s->held = out[0];
    publish_capacity(s);
}

/* ---- the pipeline's frames --------------------------------------------------------------------
 */

static const uint8_t *neighbour(const ns_swarm *s, int dir)
{
    if (!s->in_quorum)
        return NULL;
    if (dir < 0)
        return s->stage > 0 ? s->members[s->stage - 1] : NULL;
    return s->stage + 1 < s->member_count ? s->members[s->stage + 1] : NULL;
}

/* Keeps a frame of a generation this node has not reached yet (a member that restarted first). */
static void hold(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    size_t tensor = f->tensor.dtype != NS_DTYPE_NONE ? f->tensor.bytes : 0;
    pending_frame *p =
        s->pending_count < SWARM_PENDING_MAX ? malloc(sizeof *p + f->body_len + tensor) : NULL;
    if (p == NULL) {
        s->refused_full++;
        return;
    }
    memcpy(p->peer, peer, NS_NODE_ID_BYTES);
    p->f = *f;
    memcpy(p->bytes, f->body, f->body_len);
    p->f.body = p->bytes;
    if (tensor > 0) {
        memcpy(p->bytes + f->body_len, f->tensor.data, tensor);
        p->f.tensor.data = p->bytes + f->body_len;
    }
    pending_frame **tail = &s->pending;
    while (*tail != NULL)
        tail = &(*tail)->next;
    p->next = NULL;
    *tail = p;
    s->pending_count++;
}

static void on_pipe(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    ns_pipe_msg m;
    if (ns_pipe_msg_parse(f, &m) != NS_OK) {
        s->refused_malformed++;
        NS_LOG_W("swarm", "a malformed pipeline frame (type %u) from a neighbour: refused",
                 f->type);
        return;
    }
    if (m.generation < s->generation || (m.generation == s->generation && !s->in_quorum)) {
        s->stale_generation++; /* sent before a restart: its step will be recomputed */
        return;
    }
    if (m.generation > s->generation) {
        hold(s, peer, f);
        return;
    }
    /* activations and the norm come from the stage before, gradients and the scale from after;
     * a RESEND from the stage that awaits them */
    int from = f->type == NS_FRAME_PIPE_ACT || f->type == NS_FRAME_PIPE_NORM ? -1 : +1;
    if (f->type == NS_FRAME_PIPE_RESEND)
        from = -ns_pipe_input_from(m.awaits);
    if (f->type == NS_FRAME_PIPE_ALIVE) /* the answer of the stage that owes the input */
        from = ns_pipe_input_from(m.awaits);
    const uint8_t *want = neighbour(s, from);
    if (want == NULL || memcmp(want, peer, NS_NODE_ID_BYTES) != 0) {
        s->refused_neighbour++;
        return;
    }
    if (f->type == NS_FRAME_PIPE_RESEND) {
        /* answered here, on the network thread, whatever the trainer is busy with: this node is
         * there; the frames asked for come from the trainer when it takes the RESEND */
        ns_frame alive = *f;
        alive.type = NS_FRAME_PIPE_ALIVE;
        if (ns_net_send_frame(s->cfg.net, peer, &alive) != NS_OK)
            NS_LOG_D("swarm", "an ALIVE not sent: the link went away");
    }
    if (*s->cfg.trainer == NULL) {
        s->refused_neighbour++;
        return;
    }
    if (ns_trainer_pipe_input(*s->cfg.trainer, &m) != NS_OK) {
        s->refused_full++;
    } else {
        s->frames_in++;
        s->bytes_in += f->body_len + (f->tensor.dtype != NS_DTYPE_NONE ? f->tensor.bytes : 0);
    }
}

static void deliver_pending(ns_swarm *s)
{
    pending_frame *list = s->pending;
    s->pending = NULL;
    s->pending_count = 0;
    while (list != NULL) {
        pending_frame *p = list;
        list = p->next;
        on_pipe(s, p->peer, &p->f); /* this generation's now; a later one is held again */
        free(p);
    }
}

/* ---- failover: replicas, deaths, restarts -------------------------------------------------- */

/* Members send QUORUM_INFO to every peer: the generation and the members by stage (in pool mode
 * with their layers). A quorum of one (this node alone) has nobody to follow it. */
static void send_info(ns_swarm *s)
{
    uint32_t n = s->member_count;
    if (n < 2)
        return;
    uint8_t body[6 + SWARM_MEMBERS_MAX * SWARM_MEMBER_BYTES];
    size_t len;
    put_u32(body, s->generation);
    if (s->pool_mode) {
        body[4] = SWARM_POOL_LAYOUT;
        body[5] = (uint8_t)n;
        put_members(body + 6, s->members, s->ranges, n);
        len = 6 + (size_t)n * SWARM_MEMBER_BYTES;
    } else {
        body[4] = (uint8_t)n;
        memcpy(body + 5, s->members, (size_t)n * NS_NODE_ID_BYTES);
        len = 5 + (size_t)n * NS_NODE_ID_BYTES;
    }
    ns_frame f = {.type = NS_FRAME_QUORUM_INFO, .body = body, .body_len = len};
    (void)ns_net_broadcast(s->cfg.net, &f, NULL);
}

static void fetch_stop(ns_swarm *s, bool done);

/* Follows stage `pick` (SWARM_NO_STAGE: none) of the known quorum; the copy held of another
 * stage's layers goes. */
static void set_replica_of(ns_swarm *s, uint32_t pick)
{
    if (s->replica_of == pick)
        return;
    if (pick == SWARM_NO_STAGE)
        NS_LOG_I("swarm", "this node holds no stage's layers of the quorum: it follows none");
    else
        NS_LOG_I("swarm", "a replica of stage %u (layers follow its checkpoints)", pick);
    if (s->fetch.on)
        fetch_stop(s, false);
    if (s->replica_step != 0) {
        char dir[PATH_MAX + 64];
        snprintf(dir, sizeof dir, "%.3000s/replica/" NS_CKPT_DIR_PREFIX "%llu",
                 s->cfg.train.data_dir, (unsigned long long)s->replica_step);
        ns_dir_remove(dir);
        s->replica_step = 0;
    }
    s->replica_of = pick;
    send_capacity(s, NULL);
}

/* Whether this node may follow stage st of the known quorum: in pool mode only a stage whose
 * layers it holds. */
static bool can_follow(const ns_swarm *s, uint32_t st)
{
    const ns_pool_range *r = &s->followed_ranges[st];
    if (!can_pipeline(s))
        return false; /* a replica is a stage in waiting */
    return !s->pool_mode ||
           (r->layer_first >= s->held.layer_first && r->layer_last <= s->held.layer_last);
}

/* The stage of the known quorum this free node follows. First its rank among the free nodes,
 * modulo the stages; then sticky: a replica keeps its stage unless a free node with a smaller id
 * follows it too, and then takes the first stage nobody follows. In pool mode only stages whose
 * layers it holds count, the first of them nobody follows, and none when it holds none. */
static void follow_stage(ns_swarm *s)
{
    uint32_t n = s->followed_count;
    uint64_t now = now_ms(s);
    bool covered[SWARM_MEMBERS_MAX] = {0};
    bool shared = false;
    uint32_t rank = 0;
    for (size_t i = 0; i < s->peer_count; i++) {
        const peer_cap *p = &s->peers[i];
        if (!wants_same(s, p, now) || member_index(s->followed, n, p->id) >= 0)
            continue;
        bool smaller = cmp_id(p->id, s->cfg.key->node_id) < 0;
        rank += smaller;
        if (p->replica_of < n) {
            covered[p->replica_of] = true;
            shared = shared || (p->replica_of == s->replica_of && smaller);
        }
    }
    uint32_t pick = s->replica_of;
    if (pick < n && can_follow(s, pick) && !shared) {
        set_replica_of(s, pick);
        return;
    }
    pick = s->pool_mode || pick < n ? SWARM_NO_STAGE : rank % n;
    for (uint32_t st = 0; pick == SWARM_NO_STAGE && st < n; st++)
        if (can_follow(s, st) && !covered[st])
            pick = st;
    for (uint32_t st = 0; pick == SWARM_NO_STAGE && st < n; st++)
        if (can_follow(s, st))
            pick = s->pool_mode ? st : rank % n;
    set_replica_of(s, pick);
}

/* A QUORUM_INFO's generation and members (with their layers in pool mode); false when it is
 * malformed or of the other mode (a pool-mode quorum for a fixed-size node, or the reverse). */
static bool parse_info(ns_swarm *s, const ns_frame *f, uint32_t *gen,
                       uint8_t ids[][NS_NODE_ID_BYTES], ns_pool_range *ranges, uint32_t *n)
{
    bool pool = f->body_len >= 5 && f->body[4] == SWARM_POOL_LAYOUT;
    size_t head = pool ? 6 : 5;
    size_t each = pool ? SWARM_MEMBER_BYTES : NS_NODE_ID_BYTES;
    *n = f->body_len >= head ? f->body[head - 1] : 0;
    if (*n < 2 || *n > SWARM_MEMBERS_MAX || f->body_len != head + (size_t)*n * each) {
        s->refused_malformed++;
        return false;
    }
    *gen = get_u32(f->body);
    if (pool != s->pool_mode)
        return false;
    if (!pool) {
        memcpy(ids, f->body + 5, (size_t)*n * NS_NODE_ID_BYTES);
        return *n == s->cfg.quorum_size;
    }
    get_members(f->body + 6, *n, ids, ranges);
    if (!covers(ranges, *n, s->cfg.model_layers)) {
        s->refused_malformed++;
        return false;
    }
    return true;
}

/* A free node that wants this quorum's size and model (or its pool) follows one of its stages;
 * a member that stalled past a failover learns that it was replaced. */
static void on_info(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    uint32_t gen, n;
    uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range ranges[SWARM_MEMBERS_MAX];
    if (!parse_info(s, f, &gen, ids, ranges, &n) || member_index(ids, n, peer) < 0)
        return;
    const peer_cap *from = peer_of(s, peer, false);
    if (s->pool_mode && (from == NULL || !pool_peer(s, from, now_ms(s))))
        return; /* not a pool-mode node of this model, as far as this node has heard */
    if (s->in_quorum) {
        /* a member that stalled past the failover learns that it was replaced: it leaves and
         * becomes a replica like any free node */
        if (gen <= s->generation || member_index(ids, n, s->cfg.key->node_id) >= 0 ||
            member_index(s->members, s->member_count, peer) < 0)
            return;
        NS_LOG_W("swarm", "this node was replaced in its quorum (generation %u): it follows now",
                 gen);
        stop_trainer(s);
        s->in_quorum = false;
        s->member_count = 0;
        s->generation = gen;
        publish_capacity(s);
    } else if (s->knows_quorum && gen < s->followed_generation) {
        return;
    }
    s->knows_quorum = true;
    s->followed_generation = gen;
    s->followed_count = n;
    memcpy(s->followed, ids, (size_t)n * NS_NODE_ID_BYTES);
    for (uint32_t i = 0; i < n; i++) {
        if (s->pool_mode)
            s->followed_ranges[i] = ranges[i];
        else
            stage_layers(s, i, n, &s->followed_ranges[i].layer_first,
                         &s->followed_ranges[i].layer_last);
    }
    follow_stage(s);
}

static void fetch_request(ns_swarm *s)
{
    uint8_t body[17];
    put_u64(body, s->fetch.step);
    body[8] = (uint8_t)s->fetch.file;
    put_u64(body + 9, s->fetch.offset);
    ns_frame f = {.type = NS_FRAME_CKPT_GET, .body = body, .body_len = sizeof body};
    if (ns_net_send_frame(s->cfg.net, s->fetch.from, &f) != NS_OK)
        NS_LOG_D("swarm", "no link to the stage a replica follows");
}

static void fetch_stop(ns_swarm *s, bool done)
{
    if (s->fetch.fd >= 0)
        close(s->fetch.fd);
    s->fetch.fd = -1;
    s->fetch.on = false;
    char base[PATH_MAX];
    snprintf(base, sizeof base, "%.3000s/replica", s->cfg.train.data_dir);
    if (!done) {
        ns_dir_remove(s->fetch.dir);
        return;
    }
    /* the copy is whole: DATA/replica/ckpt-<step>, and the older copy goes */
    char to[PATH_MAX + 64];
    snprintf(to, sizeof to, "%s/" NS_CKPT_DIR_PREFIX "%llu", base,
             (unsigned long long)s->fetch.step);
    ns_dir_remove(to);
    if (rename(s->fetch.dir, to) != 0) {
        ns_dir_remove(s->fetch.dir);
        return;
    }
    if (s->replica_step != 0 && s->replica_step != s->fetch.step) {
        snprintf(to, sizeof to, "%s/" NS_CKPT_DIR_PREFIX "%llu", base,
                 (unsigned long long)s->replica_step);
        ns_dir_remove(to);
    }
    s->replica_step = s->fetch.step;
    NS_LOG_I("swarm", "replica of stage %u holds its checkpoint of step %llu", s->replica_of,
             (unsigned long long)s->replica_step);
    send_capacity(s, NULL); /* the members learn at once which copy it can restart from */
}

static int fetch_open_file(ns_swarm *s)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", s->fetch.dir, ns_ckpt_file_name(s->fetch.file));
    s->fetch.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    return s->fetch.fd >= 0 ? NS_OK : NS_EIO;
}

/* As a replica: pulls the followed stage's newest aligned checkpoint when it is newer than ours. */
static void maybe_fetch(ns_swarm *s)
{
    if (s->in_quorum || !s->knows_quorum || s->replica_of >= s->followed_count)
        return;
    uint64_t now = now_ms(s);
    if (s->fetch.on) {
        if (now - s->fetch.last_ms > SWARM_FETCH_STALL_MS)
            fetch_stop(s, false);
        return;
    }
    const peer_cap *m = peer_of(s, s->followed[s->replica_of], false);
    if (m == NULL || m->ckpt_step == 0 || m->ckpt_step <= s->replica_step)
        return;
    char base[PATH_MAX];
    snprintf(base, sizeof base, "%.3000s/replica", s->cfg.train.data_dir);
    (void)mkdir(base, 0700);
    snprintf(s->fetch.dir, sizeof s->fetch.dir, "%.3000s/.tmp-%llu", base,
             (unsigned long long)m->ckpt_step);
    ns_dir_remove(s->fetch.dir);
    if (mkdir(s->fetch.dir, 0700) != 0)
        return;
    memcpy(s->fetch.from, m->id, NS_NODE_ID_BYTES);
    s->fetch.step = m->ckpt_step;
    s->fetch.file = 0;
    s->fetch.offset = 0;
    s->fetch.last_ms = now;
    s->fetch.on = true;
    if (fetch_open_file(s) != NS_OK) {
        fetch_stop(s, false);
        return;
    }
    fetch_request(s);
}

static void on_ckpt_part(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!s->fetch.on || f->body_len != 25 || memcmp(peer, s->fetch.from, NS_NODE_ID_BYTES) != 0 ||
        get_u64(f->body) != s->fetch.step || f->body[8] != s->fetch.file ||
        get_u64(f->body + 9) != s->fetch.offset)
        return; /* late or not asked for */
    uint64_t total = get_u64(f->body + 17);
    size_t n = f->tensor.dtype == NS_DTYPE_U8 ? f->tensor.bytes : 0;
    if (total == 0 || (n == 0 && s->fetch.offset < total) || s->fetch.offset + n > total ||
        total > (uint64_t)8 << 30 ||
        (n > 0 && pwrite(s->fetch.fd, f->tensor.data, n, (off_t)s->fetch.offset) != (ssize_t)n)) {
        fetch_stop(s, false); /* gone from the member (pruned): the next one */
        return;
    }
    s->fetch.offset += n;
    s->fetch.last_ms = now_ms(s);
    if (s->fetch.offset < total) {
        fetch_request(s);
        return;
    }
    close(s->fetch.fd);
    s->fetch.fd = -1;
    s->fetch.file++;
    s->fetch.offset = 0;
    if (s->fetch.file == NS_CKPT_FILES) {
        fetch_stop(s, true);
        return;
    }
    if (fetch_open_file(s) != NS_OK) {
        fetch_stop(s, false);
        return;
    }
    fetch_request(s);
}

/* Forgets this node's checkpoints after step c; a replica first puts its copy of c in place of
 * all of them. */
static int rewind_checkpoints(ns_swarm *s, uint64_t c, bool replica)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%.3000s/checkpoints", s->cfg.train.data_dir);
    (void)mkdir(dir, 0700);
    uint64_t steps[64];
    size_t count = 0;
    if (ns_ckpt_list(dir, steps, 64, &count) != NS_OK)
        count = 0;
    for (size_t i = 0; i < count; i++) {
        if (steps[i] > c || replica) {
            snprintf(path, sizeof path, "%s/" NS_CKPT_DIR_PREFIX "%llu", dir,
                     (unsigned long long)steps[i]);
            ns_dir_remove(path);
        }
    }
    if (!replica)
        return NS_OK;
    char from[PATH_MAX + 64];
    snprintf(from, sizeof from, "%.3000s/replica/" NS_CKPT_DIR_PREFIX "%llu", s->cfg.train.data_dir,
             (unsigned long long)c);
    snprintf(path, sizeof path, "%s/" NS_CKPT_DIR_PREFIX "%llu", dir, (unsigned long long)c);
    if (rename(from, path) != 0) {
        NS_LOG_E("swarm", "the replica's copy of step %llu cannot be put in place: %s",
                 (unsigned long long)c, strerror(errno));
        return NS_EIO;
    }
    s->replica_step = 0;
    return NS_OK;
}

/* Restarts this node's stage at generation gen from step c, with the members by stage running
 * `ranges` (NULL: stage_layers' split). */
static void restart(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], const ns_pool_range *ranges,
                    uint32_t n, uint32_t gen, uint64_t c)
{
    int stage = member_index(ids, n, s->cfg.key->node_id);
    NS_ASSERT(stage >= 0);
    bool replica = !s->in_quorum;
    stop_trainer(s); /* its step in progress is dropped (the others wait) */
    if (s->fetch.on)
        fetch_stop(s, false);
    if (rewind_checkpoints(s, c, replica) != NS_OK)
        return;
    char have[PATH_MAX + 64];
    snprintf(have, sizeof have, "%.3000s/checkpoints/" NS_CKPT_DIR_PREFIX "%llu",
             s->cfg.train.data_dir, (unsigned long long)c);
    struct stat st;
    if (stat(have, &st) != 0) {
        /* restarting from another step would silently split the model: leave instead, and the
         * others replace this node like a dead one */
        NS_LOG_E("swarm", "no checkpoint of step %llu here: this node leaves the quorum",
                 (unsigned long long)c);
        s->in_quorum = false;
        s->member_count = 0;
        s->generation = gen;
        send_capacity(s, NULL);
        return;
    }
    s->failovers++;
    uint8_t copy[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range layers[SWARM_MEMBERS_MAX];
    memcpy(copy, ids, (size_t)n * NS_NODE_ID_BYTES);
    if (ranges != NULL)
        memcpy(layers, ranges, (size_t)n * sizeof ranges[0]);
    NS_LOG_I("swarm", "failover: generation %u, restarting stage %d of %u from step %llu", gen,
             stage, n, (unsigned long long)c);
    join_quorum(s, copy, ranges != NULL ? layers : NULL, n, (uint32_t)stage, gen);
    if (s->failover_started_ms != 0)
        s->failover_ms = now_ms(s) - s->failover_started_ms;
    s->failover_started_ms = 0;
}

/* A QUORUM_RESTORE: [generation u32][step u64] then, fixed size, [n][n ids by stage]; in pool
 * mode [0][n][n x (id, first, last)]. */
typedef struct restore_msg {
    uint32_t gen, n;
    uint64_t c;
    bool pool;
    uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    ns_pool_range ranges[SWARM_MEMBERS_MAX];
} restore_msg;

static size_t restore_body(const ns_swarm *s, uint8_t *body, uint8_t ids[][NS_NODE_ID_BYTES],
                           uint32_t gen, uint64_t c)
{
    uint32_t n = s->member_count;
    put_u32(body, gen);
    put_u64(body + 4, c);
    if (!s->pool_mode) {
        body[12] = (uint8_t)n;
        memcpy(body + 13, ids, (size_t)n * NS_NODE_ID_BYTES);
        return 13 + (size_t)n * NS_NODE_ID_BYTES;
    }
    body[12] = SWARM_POOL_LAYOUT;
    body[13] = (uint8_t)n;
    put_members(body + 14, ids, s->ranges, n);
    return 14 + (size_t)n * SWARM_MEMBER_BYTES;
}

static bool restore_parse(const ns_frame *f, restore_msg *m)
{
    m->pool = f->body_len >= 13 && f->body[12] == SWARM_POOL_LAYOUT;
    size_t head = m->pool ? 14 : 13;
    size_t each = m->pool ? SWARM_MEMBER_BYTES : NS_NODE_ID_BYTES;
    m->n = f->body_len >= head ? f->body[head - 1] : 0;
    if (m->n < 2 || m->n > SWARM_MEMBERS_MAX || f->body_len != head + (size_t)m->n * each)
        return false;
    m->gen = get_u32(f->body);
    m->c = get_u64(f->body + 4);
    if (m->pool)
        get_members(f->body + 14, m->n, m->ids, m->ranges);
    else
        memcpy(m->ids, f->body + 13, (size_t)m->n * NS_NODE_ID_BYTES);
    return true;
}

/* Pool mode: a restart keeps every stage's layers, and a replica named for a stage holds them. */
static const char *restore_layers_refusal(const ns_swarm *s, const restore_msg *m)
{
    const ns_pool_range *old = s->in_quorum ? s->ranges : s->followed_ranges;
    uint32_t old_n = s->in_quorum ? s->member_count : s->followed_count;
    if (m->n != old_n || memcmp(m->ranges, old, (size_t)m->n * sizeof old[0]) != 0)
        return "the stages' layers changed";
    int me = member_index(m->ids, m->n, s->cfg.key->node_id);
    const ns_pool_range *mine = &m->ranges[me];
    if (!s->in_quorum &&
        (mine->layer_first < s->held.layer_first || mine->layer_last > s->held.layer_last))
        return "this replica does not hold its stage's layers";
    return NULL;
}

static const char *restore_refusal(const ns_swarm *s, const uint8_t *peer, const restore_msg *m)
{
    const uint8_t(*old)[NS_NODE_ID_BYTES] = s->in_quorum ? s->members : s->followed;
    uint32_t old_n = s->in_quorum ? s->member_count : s->followed_count;
    uint32_t old_gen = s->in_quorum ? s->generation : s->followed_generation;
    for (uint32_t i = 0; i < m->n; i++)
        if (member_index(m->ids, m->n, m->ids[i]) != (int)i)
            return "a member named twice";
    if (!s->in_quorum && !s->knows_quorum)
        return "this node knows no quorum";
    if (m->gen <= old_gen)
        return "not a newer generation";
    if (member_index(old, old_n, peer) < 0)
        return "not from a member";
    if (member_index(m->ids, m->n, s->cfg.key->node_id) < 0)
        return "this node is not a member";
    if (m->pool != s->pool_mode || (!m->pool && m->n != s->cfg.quorum_size) || m->c == 0)
        return "another quorum size, or no step to restart from";
    if (!s->in_quorum && m->c != s->replica_step)
        return "this replica holds no copy of that step";
    return m->pool ? restore_layers_refusal(s, m) : NULL;
}

static void on_restore(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    restore_msg m;
    const char *why = restore_parse(f, &m) ? restore_refusal(s, peer, &m) : "malformed";
    if (why == NULL) {
        restart(s, m.ids, m.pool ? m.ranges : NULL, m.n, m.gen, m.c);
        return;
    }
    s->proposals_refused++;
    count_refusal(s, why);
    NS_LOG_W("swarm", "a restart refused: %s", why);
}

static void check_fired(void *arg, uint64_t now);
static void check_members(ns_swarm *s);

/* Whether a neighbour of member i found it unresponsive in this generation, lately. */
static bool suspected(const ns_swarm *s, uint32_t i, uint64_t now)
{
    return s->suspect_generation == s->generation && s->suspect_ms[i] != 0 &&
           now - s->suspect_ms[i] <= SWARM_FRESH_MS;
}

static void mark_suspect(ns_swarm *s, uint32_t i)
{
    if (s->suspect_generation != s->generation) {
        memset(s->suspect_ms, 0, sizeof s->suspect_ms);
        s->suspect_generation = s->generation;
    }
    s->suspect_ms[i] = now_ms(s);
}

/* This stage's trainer asked member i (a neighbour) for an input for seconds and heard nothing,
 * not even the ALIVE its network thread would send (S6: no ACK). Every member is told, so that
 * all take it for dead alike and the smallest live one replaces it with the next candidate for
 * its layers, a replica (check_members). */
static void raise_suspect(ns_swarm *s, uint32_t i)
{
    if (!s->in_quorum || i >= s->member_count || i == s->stage)
        return;
    mark_suspect(s, i);
    s->suspects_raised++;
    uint8_t body[4 + NS_NODE_ID_BYTES];
    put_u32(body, s->generation);
    memcpy(body + 4, s->members[i], NS_NODE_ID_BYTES);
    ns_frame f = {.type = NS_FRAME_SWARM_SUSPECT, .body = body, .body_len = sizeof body};
    for (uint32_t k = 0; k < s->member_count; k++)
        if (k != s->stage && k != i && ns_net_send_frame(s->cfg.net, s->members[k], &f) != NS_OK)
            NS_LOG_D("swarm", "the suspicion did not reach stage %u", k);
    NS_LOG_W("swarm", "stage %u answers nothing: the quorum replaces it", i);
    check_members(s);
}

/* A member says another member answers nothing (raise_suspect): taken from members of this
 * quorum and generation only, about another member. */
static void on_suspect(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len != 4 + NS_NODE_ID_BYTES || f->tensor.dtype != NS_DTYPE_NONE) {
        s->refused_malformed++;
        return;
    }
    int from = s->in_quorum ? member_index(s->members, s->member_count, peer) : -1;
    int who = s->in_quorum ? member_index(s->members, s->member_count, f->body + 4) : -1;
    if (from < 0 || who < 0 || get_u32(f->body) != s->generation || (uint32_t)who == s->stage) {
        s->refused_neighbour++;
        return;
    }
    NS_LOG_W("swarm", "stage %d says stage %d answers nothing", from, who);
    mark_suspect(s, (uint32_t)who);
    s->suspects_heard++;
    check_members(s);
}

/* The replica to take dead stage i over: the freshest copy at a step every live member keeps
 * (from floor), then the best S6 score as this node measured it (nearest, least queued), then
 * the smallest id; in pool mode one that holds the stage's layers. */
static const peer_cap *best_replica(ns_swarm *s, uint32_t i, uint64_t floor, uint64_t now)
{
    const peer_cap *best = NULL;
    for (size_t k = 0; k < s->peer_count; k++) {
        const peer_cap *r = &s->peers[k];
        if (r->replica_of != i || r->replica_step == 0 || r->replica_step < floor ||
            now - r->seen_ms > SWARM_FRESH_MS || !ns_net_has_link(s->cfg.net, r->id))
            continue;
        if (s->pool_mode && (!r->pool || r->held.layer_first > s->ranges[i].layer_first ||
                             r->held.layer_last < s->ranges[i].layer_last))
            continue;
        double score = candidate_score(r), best_score = best != NULL ? candidate_score(best) : 0;
        if (best == NULL || r->replica_step > best->replica_step ||
            (r->replica_step == best->replica_step &&
             (score < best_score || (score == best_score && cmp_id(r->id, best->id) < 0))))
            best = r;
    }
    return best;
}

/* The smallest live member replaces dead ones with their stages' replicas and restarts everyone
 * from the replica's step. */
static void check_members(ns_swarm *s)
{
    if (!s->in_quorum)
        return;
    uint64_t now = now_ms(s);
    if (s->woke_ms != 0 && now - s->woke_ms <= SWARM_FRESH_MS)
        return; /* this node was the one stalled: it hears the others anew before judging them */
    bool dead[SWARM_MEMBERS_MAX] = {0};
    bool any = false;
    const uint8_t *coordinator = NULL;
    for (uint32_t i = 0; i < s->member_count; i++) {
        if (i == s->stage)
            continue;
        const peer_cap *p = peer_of(s, s->members[i], false);
        dead[i] = !ns_net_has_link(s->cfg.net, s->members[i]) ||
                  (p != NULL && (now - p->seen_ms > SWARM_FRESH_MS || !p->in_quorum)) ||
                  suspected(s, i, now);
        any = any || dead[i];
    }
    if (!any) {
        s->failover_started_ms = 0; /* a link that came back: no death */
        return;
    }
    if (s->failover_started_ms == 0)
        s->failover_started_ms = now;
    for (uint32_t i = 0; i < s->member_count; i++)
        if (!dead[i] && (coordinator == NULL || cmp_id(s->members[i], coordinator) < 0))
            coordinator = s->members[i];
    if (memcmp(coordinator, s->cfg.key->node_id, NS_NODE_ID_BYTES) != 0)
        return; /* another live member decides */
    uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    memcpy(ids, s->members, (size_t)s->member_count * NS_NODE_ID_BYTES);
    /* the restart step must be one every live member still keeps */
    uint64_t floor = oldest_checkpoint(s);
    for (uint32_t i = 0; i < s->member_count; i++) {
        const peer_cap *p = i != s->stage ? peer_of(s, s->members[i], false) : NULL;
        if (p != NULL && !dead[i] && p->ckpt_oldest > floor)
            floor = p->ckpt_oldest;
    }
    uint64_t c = UINT64_MAX;
    for (uint32_t i = 0; i < s->member_count; i++) {
        if (!dead[i])
            continue;
        const peer_cap *best = best_replica(s, i, floor, now);
        if (best == NULL) {
            NS_LOG_W("swarm",
                     "stage %u is gone and no replica holds its layers at a step every member "
                     "keeps (from %llu): waiting",
                     i, (unsigned long long)floor);
            if (s->check_timer == 0)
                s->check_timer =
                    ns_env_timer(&s->cfg.uvenv->env, now + SWARM_DEAD_MS, check_fired, s);
            return;
        }
        memcpy(ids[i], best->id, NS_NODE_ID_BYTES);
        c = best->replica_step < c ? best->replica_step : c;
    }
    uint8_t body[14 + SWARM_MEMBERS_MAX * SWARM_MEMBER_BYTES];
    uint32_t gen = s->generation + 1;
    ns_frame f = {.type = NS_FRAME_QUORUM_RESTORE,
                  .body = body,
                  .body_len = restore_body(s, body, ids, gen, c)};
    for (uint32_t i = 0; i < s->member_count; i++)
        if (i != s->stage && ns_net_send_frame(s->cfg.net, ids[i], &f) != NS_OK)
            NS_LOG_W("swarm", "the restart did not reach stage %u", i);
    NS_LOG_W("swarm", "a member is gone: its replica takes stage over, all restart at step %llu",
             (unsigned long long)c);
    restart(s, ids, s->pool_mode ? s->ranges : NULL, s->member_count, gen, c);
}

static void check_fired(void *arg, uint64_t now)
{
    (void)now;
    ns_swarm *s = arg;
    s->check_timer = 0;
    check_members(s);
}

static void on_link_down(void *arg, const uint8_t peer[NS_NODE_ID_BYTES])
{
    ns_swarm *s = arg;
    if (!s->in_quorum || member_index(s->members, s->member_count, peer) < 0 || s->check_timer != 0)
        return;
    if (s->failover_started_ms == 0)
        s->failover_started_ms = now_ms(s);
    s->check_timer = ns_env_timer(&s->cfg.uvenv->env, now_ms(s) + SWARM_DEAD_MS, check_fired, s);
}

/* ---- the session (S5): renewal at 80 %, dissolution ----------------------------------------- */

/* Leaves the quorum: the trainer stops (and checkpoints: dissolution saves the weights); the node
 * is free and forms a quorum again at its next heartbeat. */
static void dissolve(ns_swarm *s, const char *why)
{
    NS_LOG_I("swarm", "the quorum dissolves: %s", why);
    stop_trainer(s);
    s->in_quorum = false;
    s->in_quorum_before = false;
    s->member_count = 0;
    s->dissolutions++;
    publish_capacity(s);
}

static uint64_t session_ms(const ns_swarm *s)
{
    return s->cfg.session_ms != 0 ? s->cfg.session_ms : NS_QUORUM_SESSION_MS;
}

/* Every heartbeat, at the member with the smallest id: at 80 % of the period, a quorum that
 * trained NS_QUORUM_RENEW_BATCHES_MIN steps in it is renewed for another period (up to four
 * periods, S5's 4 h); otherwise every member is told to dissolve. */
static void check_session(ns_swarm *s)
{
    if (!s->in_quorum || s->member_count < 2)
        return;
    ns_train_status ts = {0};
    if (*s->cfg.trainer != NULL)
        ns_trainer_status(*s->cfg.trainer, &ts);
    if (s->period_start_step == UINT64_MAX && ts.ready)
        s->period_start_step = ts.step;
    uint64_t now = now_ms(s), period = session_ms(s);
    if (now - s->period_start_ms < period * NS_QUORUM_RENEW_CHECK_PERCENT / 100)
        return;
    for (uint32_t i = 0; i < s->member_count; i++)
        if (cmp_id(s->members[i], s->cfg.key->node_id) < 0)
            return; /* a smaller member decides */
    uint64_t batches = s->period_start_step != UINT64_MAX && ts.step >= s->period_start_step
                           ? ts.step - s->period_start_step
                           : 0;
    bool last = now + period - s->session_start_ms >
                period * (NS_QUORUM_SESSION_MAX_MS / NS_QUORUM_SESSION_MS);
    if (batches >= NS_QUORUM_RENEW_BATCHES_MIN && !last) {
        s->period_start_ms = now;
        s->period_start_step = ts.step;
        s->renewals++;
        NS_LOG_I("swarm", "the quorum's session is renewed (%llu steps in the period)",
                 (unsigned long long)batches);
        return;
    }
    uint8_t body[NS_SHA256_BYTES + 4];
    memcpy(body, s->quorum_id, NS_SHA256_BYTES);
    put_u32(body + NS_SHA256_BYTES, s->generation);
    ns_frame f = {.type = NS_FRAME_QUORUM_DISSOLVE, .body = body, .body_len = sizeof body};
    for (uint32_t i = 0; i < s->member_count; i++)
        if (i != s->stage && ns_net_send_frame(s->cfg.net, s->members[i], &f) != NS_OK)
            NS_LOG_D("swarm", "the dissolution did not reach stage %u (it follows by staleness)",
                     i);
    dissolve(s,
             last ? "the session reached its longest" : "too few steps in the session to renew it");
}

static void on_dissolve(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!s->in_quorum || f->body_len != NS_SHA256_BYTES + 4 ||
        memcmp(f->body, s->quorum_id, NS_SHA256_BYTES) != 0 ||
        get_u32(f->body + NS_SHA256_BYTES) != s->generation ||
        member_index(s->members, s->member_count, peer) < 0) {
        s->refused_malformed++;
        return;
    }
    dissolve(s, "the session is over (told by a member)");
}

static void on_frame(void *arg, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f)
{
    ns_swarm *s = arg;
    switch (f->type) {
    case NS_FRAME_QUORUM_INFO:
        on_info(s, peer, f);
        return;
    case NS_FRAME_CKPT_GET:
        ns_ckpt_serve(s->cfg.net, s->cfg.train.data_dir, peer, f, NS_FRAME_CKPT_PART);
        return;
    case NS_FRAME_CKPT_PART:
        on_ckpt_part(s, peer, f);
        return;
    case NS_FRAME_QUORUM_RESTORE:
        on_restore(s, peer, f);
        return;
    case NS_FRAME_CAPACITY:
        on_capacity(s, peer, f);
        maybe_propose(s);
        return;
    case NS_FRAME_QUORUM_PROPOSE:
        on_propose(s, peer, f);
        return;
    case NS_FRAME_QUORUM_ACCEPT:
        on_accept(s, peer, f);
        return;
    case NS_FRAME_QUORUM_START:
        on_start(s, peer, f);
        return;
    case NS_FRAME_QUORUM_DISSOLVE:
        on_dissolve(s, peer, f);
        return;
    case NS_FRAME_PIPE_ACT:
    case NS_FRAME_PIPE_GRAD:
    case NS_FRAME_PIPE_NORM:
    case NS_FRAME_PIPE_SCALE:
    case NS_FRAME_PIPE_RESEND:
    case NS_FRAME_PIPE_ALIVE:
        on_pipe(s, peer, f);
        return;
    case NS_FRAME_SWARM_SUSPECT:
        on_suspect(s, peer, f);
        return;
    case NS_FRAME_SWARM_PING:
        on_ping(s, peer, f);
        return;
    case NS_FRAME_SWARM_PONG:
        on_pong(s, peer, f);
        return;
    default:
        return;
    }
}

static void on_link(void *arg, const uint8_t peer[NS_NODE_ID_BYTES])
{
    send_capacity(arg, peer);
}

/* ---- the outbox: the trainer thread's frames, sent on the loop thread -------------------------
 */

static void out_send(void *arg, int dir, const ns_frame *f)
{
    ns_swarm *s = arg;
    size_t tensor = f->tensor.dtype != NS_DTYPE_NONE ? f->tensor.bytes : 0;
    outbox_item *it = malloc(sizeof *it + f->body_len + tensor);
    if (it == NULL)
        return; /* the neighbour waits for it: the pipeline stalls rather than corrupts */
    it->next = NULL;
    it->dir = dir;
    it->f = *f;
    if (f->body_len > 0) /* SWARM_SUSPECT has no body */
        memcpy(it->bytes, f->body, f->body_len);
    it->f.body = it->bytes;
    if (tensor > 0) {
        memcpy(it->bytes + f->body_len, f->tensor.data, tensor);
        it->f.tensor.data = it->bytes + f->body_len;
    }
    pthread_mutex_lock(&s->mu);
    bool closing = s->closing;
    if (!closing) {
        *s->out_tail = it;
        s->out_tail = &it->next;
    }
    pthread_mutex_unlock(&s->mu);
    if (closing)
        free(it);
    else
        uv_async_send(&s->async);
}

static void retry_fired(void *arg, uint64_t now);

/* Sends what the trainer queued, in order; a frame the link cannot take yet stays first. */
static void drain(ns_swarm *s)
{
    for (;;) {
        pthread_mutex_lock(&s->mu);
        outbox_item *it = s->out;
        pthread_mutex_unlock(&s->mu);
        if (it == NULL)
            return;
        const uint8_t *to = neighbour(s, it->dir);
        if (it->f.type == NS_FRAME_SWARM_SUSPECT) { /* for the quorum, not the neighbour */
            pthread_mutex_lock(&s->mu);
            s->out = it->next;
            if (s->out == NULL)
                s->out_tail = &s->out;
            pthread_mutex_unlock(&s->mu);
            int dir = it->dir;
            free(it);
            if (to != NULL)
                raise_suspect(s, (uint32_t)((int)s->stage + dir));
            continue;
        }
        bool lost = to != NULL && s->cfg.test_drop_every > 0 &&
                    it->f.type != NS_FRAME_PIPE_RESEND &&
                    ++s->test_dropped % s->cfg.test_drop_every == 0;
        int rc = lost ? NS_OK : to != NULL ? ns_net_send_frame(s->cfg.net, to, &it->f) : NS_EINVAL;
        if (rc == NS_ELIMIT || rc == NS_ENOENT) {
            if (s->retry_timer == 0)
                s->retry_timer =
                    ns_env_timer(&s->cfg.uvenv->env, now_ms(s) + SWARM_RETRY_MS, retry_fired, s);
            return;
        }
        if (rc == NS_OK) {
            s->frames_out++;
            s->bytes_out +=
                it->f.body_len + (it->f.tensor.dtype != NS_DTYPE_NONE ? it->f.tensor.bytes : 0);
        }
        pthread_mutex_lock(&s->mu);
        s->out = it->next;
        if (s->out == NULL)
            s->out_tail = &s->out;
        pthread_mutex_unlock(&s->mu);
        free(it);
    }
}

static void retry_fired(void *arg, uint64_t now)
{
    (void)now;
    ns_swarm *s = arg;
    s->retry_timer = 0;
    drain(s);
}

static void on_async(uv_async_t *h)
{
    drain(h->data);
}

/* S2's contribution modes: a node whose self-benchmark puts it in T5 is too slow for any
 * pipeline (it neither proposes, accepts nor follows a quorum, and its peers leave it out). Where
 * its memory holds the whole model and cohort sync is on, it trains the whole model as an
 * asynchronous contributor (S7: download a member's weights, train H steps, submit Δ, download
 * again); else it says once why it does not train. */
static void maybe_train_async(ns_swarm *s)
{
    if (s->async_mode || s->layer_latency_us == 0 || ns_tier_can_pipeline(s->tier) ||
        *s->cfg.trainer != NULL || s->in_quorum || s->cfg.model_layers == 0)
        return;
    if (!s->whole_fits || s->cfg.diloco == NULL) {
        if (!s->async_said)
            NS_LOG_W("swarm",
                     "tier %s cannot pipeline and this node does not train asynchronously: %s",
                     ns_tier_name(s->tier),
                     s->cfg.diloco == NULL ? "cohort sync is off (--sync-every off)"
                                           : "its memory does not hold the whole model");
        s->async_said = true;
        return;
    }
    if (s->reserved || s->proposing)
        return; /* promised before the benchmark said T5: the proposal times out first */
    ns_train_config tc = s->cfg.train;
    tc.stage = 0;
    tc.stages = 1;
    tc.layer_first = 0;
    tc.layer_last = s->cfg.model_layers;
    tc.sync_async = true;
    ns_diloco_set_async(s->cfg.diloco, true);
    if (s->knows_quorum)
        set_replica_of(s, SWARM_NO_STAGE);
    char err[NS_ERR_TEXT_SIZE];
    if (ns_trainer_start(s->cfg.trainer, &tc, err, sizeof err) != NS_OK) {
        NS_LOG_E("swarm", "asynchronous training could not start: %s", err);
        ns_diloco_set_async(s->cfg.diloco, false);
        s->async_said = true;
        return;
    }
    s->async_mode = true;
    NS_LOG_I("swarm",
             "tier %s is too slow for a pipeline: this node trains the whole model as an "
             "asynchronous contributor of its cohort (S2, S7)",
             ns_tier_name(s->tier));
    send_capacity(s, NULL);
    publish_capacity(s);
}

static void bench_work(uv_work_t *w)
{
    ns_swarm *s = w->data;
    s->bench_rc = ns_train_layer_benchmark(&s->cfg.train, &s->bench_us);
}

static void free_swarm(ns_swarm *s);

static void bench_done(uv_work_t *w, int status)
{
    ns_swarm *s = w->data;
    s->bench_running = false;
    if (s->async_closed) { /* stopped while it ran: the last one out frees */
        free_swarm(s);
        return;
    }
    if (status != 0 || s->bench_rc != NS_OK) {
        NS_LOG_W("swarm", "the self-benchmark failed: %s", ns_strerror(s->bench_rc));
        return;
    }
    if (s->cfg.test_layer_ms != 0) {
        NS_LOG_W("swarm", "NEUROSHARD_TEST_LAYER_MS=%u: the self-benchmark measured %.2f ms",
                 s->cfg.test_layer_ms, (double)s->bench_us / 1000.0);
        s->bench_us = (uint64_t)s->cfg.test_layer_ms * 1000;
    }
    s->layer_latency_us = s->bench_us;
    s->tier = ns_tier_for_latency_us(s->bench_us);
    NS_LOG_I("swarm", "self-benchmark: one layer's forward takes %.2f ms: tier %s%s",
             (double)s->bench_us / 1000.0, ns_tier_name(s->tier),
             ns_tier_can_pipeline(s->tier) ? "" : " (asynchronous training only)");
    publish_capacity(s);
    maybe_train_async(s);
}

static void bench_fired(void *arg, uint64_t now)
{
    ns_swarm *s = arg;
    s->bench_timer = ns_env_timer(&s->cfg.uvenv->env, now + SWARM_BENCH_MS, bench_fired, s);
    if (s->bench_running)
        return;
    s->bench.data = s;
    if (uv_queue_work(s->cfg.uvenv->loop, &s->bench, bench_work, bench_done) == 0)
        s->bench_running = true;
}

static void heartbeat_fired(void *arg, uint64_t now)
{
    ns_swarm *s = arg;
    publish_dht(s);
    check_session(s);
    if (s->beat_ms != 0 && now - s->beat_ms > 2 * SWARM_HEARTBEAT_MS)
        s->woke_ms = now; /* its own heartbeat came late: this process was stopped or starved */
    s->beat_ms = now;
    if (s->proposing && now - s->proposed_ms > SWARM_PROPOSE_MS) {
        NS_LOG_W("swarm", "a proposal was not accepted in time: withdrawn");
        s->proposing = false;
    }
    if (s->reserved && now - s->reserved_ms > SWARM_PROPOSE_MS)
        s->reserved = false; /* the proposer never said start */
    if (s->pool_mode)
        pool_update(s);
    send_capacity(s, NULL);
    send_pings(s);
    maybe_propose(s);
    if (s->in_quorum)
        send_info(s);
    maybe_fetch(s);
    check_members(s);
    maybe_train_async(s);
    s->heartbeat_timer =
        ns_env_timer(&s->cfg.uvenv->env, now + SWARM_HEARTBEAT_MS, heartbeat_fired, s);
}

/* What this node's memory holds of the model, said once at start: an operator learns at once
 * that a node holds nothing. */
static void pool_start_log(const ns_swarm *s)
{
    uint32_t middle = s->arch.layers >= 3 ? 1 : 0;
    uint64_t budget = ns_pool_budget_bytes(s->cfg.memory_mb);
    if (ns_pool_range_bytes(&s->arch, middle, middle + 1) > budget)
        NS_LOG_W("swarm",
                 "pool mode: %llu MB hold no layer of model %ux%u: this node waits "
                 "as no member",
                 (unsigned long long)s->cfg.memory_mb, s->arch.layers, s->arch.hidden);
    else
        NS_LOG_I("swarm",
                 "pool mode: model %ux%u, %llu MB of layers to hold; the layer pool "
                 "and the planner form the pipeline",
                 s->arch.layers, s->arch.hidden, (unsigned long long)(budget >> 20));
}

/* ---- life and figures --------------------------------------------------------------------------
 */

int ns_swarm_start(ns_swarm **out, const ns_swarm_config *cfg)
{
    ns_swarm *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NS_ENOMEM;
    s->cfg = *cfg;
    s->pool_mode = cfg->quorum_size == NS_QUORUM_SIZE_AUTO;
    if (s->pool_mode && ns_arch_for_shape(cfg->model_layers, cfg->model_hidden, NS_TRAIN_VOCAB,
                                          &s->arch) != NS_OK) {
        NS_LOG_E("swarm", "pool mode needs a model (--model LxH)");
        free(s);
        return NS_EINVAL;
    }
    s->out_tail = &s->out;
    pthread_mutex_init(&s->mu, NULL);
    if (uv_async_init(cfg->uvenv->loop, &s->async, on_async) != 0) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        return NS_EIO;
    }
    s->async.data = s;
    s->fetch.fd = -1;
    s->replica_of = SWARM_NO_STAGE;
    ns_net_set_app(cfg->net, NS_NET_APP_SWARM, on_frame, on_link, on_link_down, s);
    s->heartbeat_timer = ns_env_timer(&cfg->uvenv->env, now_ms(s) + 1000, heartbeat_fired, s);
    s->tier = NS_TIER_T3; /* until the self-benchmark says */
    if (cfg->quorum_size != 1 && cfg->model_layers > 0) {
        ns_train_config whole = cfg->train;
        whole.stage = 0;
        whole.stages = 1;
        whole.layer_first = 0;
        whole.layer_last = cfg->model_layers;
        char err[NS_ERR_TEXT_SIZE];
        s->whole_fits = ns_trainer_check(&whole, err, sizeof err) == NS_OK;
    }
    s->bench_timer = ns_env_timer(&cfg->uvenv->env, now_ms(s), bench_fired, s);
    if (cfg->quorum_size > 1)
        NS_LOG_I("swarm", "waiting for %u nodes with model %ux%u to form a pipeline",
                 cfg->quorum_size, cfg->model_layers, cfg->model_hidden);
    if (s->pool_mode)
        pool_start_log(s);
    *out = s;
    return NS_OK;
}

static void free_swarm(ns_swarm *s)
{
    while (s->pending != NULL) {
        pending_frame *p = s->pending;
        s->pending = p->next;
        free(p);
    }
    while (s->out != NULL) {
        outbox_item *it = s->out;
        s->out = it->next;
        free(it);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void free_on_close(uv_handle_t *h)
{
    ns_swarm *s = h->data;
    s->async_closed = true;
    if (!s->bench_running)
        free_swarm(s);
}

void ns_swarm_stop(ns_swarm *s)
{
    if (s == NULL)
        return;
    ns_net_set_app(s->cfg.net, NS_NET_APP_SWARM, NULL, NULL, NULL, NULL);
    if (s->check_timer != 0)
        ns_env_timer_cancel(&s->cfg.uvenv->env, s->check_timer);
    if (s->fetch.on)
        fetch_stop(s, false);
    if (s->heartbeat_timer != 0)
        ns_env_timer_cancel(&s->cfg.uvenv->env, s->heartbeat_timer);
    if (s->retry_timer != 0)
        ns_env_timer_cancel(&s->cfg.uvenv->env, s->retry_timer);
    if (s->bench_timer != 0)
        ns_env_timer_cancel(&s->cfg.uvenv->env, s->bench_timer);
    for (size_t i = 0; i < SWARM_LATE_PONGS; i++)
        if (s->late_pongs[i].timer != 0)
            ns_env_timer_cancel(&s->cfg.uvenv->env, s->late_pongs[i].timer);
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_mutex_unlock(&s->mu);
    uv_close((uv_handle_t *)&s->async, free_on_close);
}

/* Pool mode's figures: the layers this node holds, and the pool as it last saw it. */
static void pool_json(const ns_swarm *s, json_t *o)
{
    json_object_set_new(o, "held",
                        json_pack("{s:I, s:I}", "layer_first", (json_int_t)s->held.layer_first,
                                  "layer_last", (json_int_t)s->held.layer_last));
    json_t *holders = json_array();
    for (uint32_t l = 0; s->pool_nodes > 0 && l < s->arch.layers; l++)
        json_array_append_new(holders, json_integer((json_int_t)s->pool_holders[l]));
    json_object_set_new(o, "pool",
                        json_pack("{s:I, s:I, s:o}", "nodes", (json_int_t)s->pool_nodes,
                                  "replicas_target", (json_int_t)s->pool_replicas_target, "holders",
                                  holders));
}

json_t *ns_swarm_json(ns_swarm *s)
{
    json_t *members = json_array();
    for (uint32_t i = 0; i < s->member_count; i++) {
        char hex[2 * NS_NODE_ID_BYTES + 1];
        ns_hex_encode(hex, sizeof hex, s->members[i], NS_NODE_ID_BYTES);
        uint32_t first = s->ranges[i].layer_first, last = s->ranges[i].layer_last;
        const char *role = s->member_count == 1       ? "solo"
                           : i == 0                   ? "initiator"
                           : i + 1 == s->member_count ? "finisher"
                                                      : "processor";
        /* S5's health by heartbeats (the 5 s capacity beats): degraded after 2 missed, stale
         * after 4 (then replaced) */
        const peer_cap *p = i == s->stage ? NULL : peer_of(s, s->members[i], false);
        uint64_t age = p != NULL ? now_ms(s) - p->seen_ms : 0;
        const char *health = i == s->stage || age <= SWARM_DEGRADED_MS ? "healthy"
                             : age <= SWARM_FRESH_MS                   ? "degraded"
                                                                       : "stale";
        json_t *m = json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:s, s:I}", "node_id", hex, "stage",
                              (json_int_t)i, "role", role, "layer_first", (json_int_t)first,
                              "layer_last", (json_int_t)last, "self", i == s->stage, "health",
                              health, "heard_ms_ago", (json_int_t)age);
        if (p != NULL && p->rtt_us != 0) /* the round trip this node measured to it */
            json_object_set_new(m, "rtt_ms", json_real((double)p->rtt_us / 1000.0));
        uint32_t layer_us = i == s->stage ? own_layer_us(s) : p != NULL ? p->layer_us : 0;
        if (layer_us != 0) /* the time of a layer it announced (the planner splits by it) */
            json_object_set_new(m, "layer_us", json_integer((json_int_t)layer_us));
        json_array_append_new(members, m);
    }
    uint64_t now = now_ms(s);
    json_int_t known = 0;
    for (size_t i = 0; i < s->peer_count; i++)
        known += now - s->peers[i].seen_ms <= SWARM_FRESH_MS;
    char qid[2 * NS_SHA256_BYTES + 1] = "";
    if (s->in_quorum)
        ns_hex_encode(qid, sizeof qid, s->quorum_id, NS_SHA256_BYTES);
    json_t *o = json_pack(
        "{s:I, s:b, s:s, s:I, s:o, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}", "quorum_size",
        (json_int_t)s->cfg.quorum_size, "in_quorum", s->in_quorum, "quorum_id", qid, "stage",
        (json_int_t)s->stage, "members", members, "peers_known", known, "frames", "in",
        (json_int_t)s->frames_in, "out", (json_int_t)s->frames_out, "bytes_in",
        (json_int_t)s->bytes_in, "bytes_out", (json_int_t)s->bytes_out, "refused_not_neighbour",
        (json_int_t)s->refused_neighbour, "refused_malformed", (json_int_t)s->refused_malformed,
        "refused_inbox_full", (json_int_t)s->refused_full, "proposals_refused",
        (json_int_t)s->proposals_refused);
    json_object_set_new(o, "tier", json_string(ns_tier_name(s->tier)));
    json_object_set_new(o, "generation", json_integer((json_int_t)s->generation));
    uint64_t now_s = now_ms(s);
    json_object_set_new(
        o, "session",
        json_pack("{s:I, s:I, s:I, s:I}", "period_ms", (json_int_t)session_ms(s), "age_ms",
                  (json_int_t)(s->in_quorum ? now_s - s->session_start_ms : 0), "renewals",
                  (json_int_t)s->renewals, "dissolutions", (json_int_t)s->dissolutions));
    json_t *why = json_object();
    for (uint32_t i = 0; i < SWARM_REASONS_MAX && s->reasons[i].why != NULL; i++)
        json_object_set_new(why, s->reasons[i].why, json_integer((json_int_t)s->reasons[i].count));
    json_object_set_new(o, "refused_by_reason", why);
    json_object_set_new(o, "failovers", json_integer((json_int_t)s->failovers));
    json_object_set_new(o, "failover_ms", json_integer((json_int_t)s->failover_ms));
    json_object_set_new(o, "stale_generation_frames",
                        json_integer((json_int_t)s->stale_generation));
    json_object_set_new(o, "unresponsive_raised", json_integer((json_int_t)s->suspects_raised));
    json_object_set_new(o, "unresponsive_heard", json_integer((json_int_t)s->suspects_heard));
    if (!s->in_quorum && s->knows_quorum)
        json_object_set_new(o, "replica",
                            json_pack("{s:I, s:I}", "stage", (json_int_t)s->replica_of, "step",
                                      (json_int_t)s->replica_step));
    json_object_set_new(o, "layer_latency_us", json_integer((json_int_t)s->layer_latency_us));
    json_object_set_new(o, "mode", json_string(s->pool_mode ? "pool" : "fixed"));
    /* S2's contribution mode */
    json_object_set_new(o, "contribution",
                        json_string(s->async_mode      ? "async"
                                    : s->in_quorum     ? "pipeline"
                                    : !can_pipeline(s) ? "none (T5, and no asynchronous training)"
                                    : s->knows_quorum  ? "replica"
                                                       : "waiting for a quorum"));
    if (s->pool_mode)
        pool_json(s, o);
    return o;
}

bool ns_swarm_async(const ns_swarm *s)
{
    return s != NULL && s->async_mode;
}
