/*
 * swarm.c: this node in a training swarm, on the loop thread (SPEC S5, S6).
 *
 * Every SWARM_HEARTBEAT_MS a node tells its peers what it offers in a CAPACITY frame of 43 bytes
 * (S6's capacity heartbeat: memory, inbox depth, layer range, GPU %, flags, tier; then the quorum
 * size it wants, the model it trains, and for failover its newest and oldest checkpoints and the
 * replica it keeps). When `quorum_size` nodes that want the same quorum and model
 * are known and free, the one with the smallest id proposes: the quorum_size smallest ids, in id
 * order, the layers split so that the slowest stage is fastest (ns_pipe_split; the first holds
 * the embedding and reads the data, the last holds the head). A member that is free and finds the
 * plan valid for itself accepts (one that is not says so); when every member accepted, the
 * proposer says start and each starts its stage. The trainer thread
 * runs the stage's 1F1B schedule (train.c, pipeline.h); its frames leave through an outbox drained
 * here (the links live on this thread), and frames from the neighbours are checked (the right
 * neighbour, a well-formed message) before they are copied to the trainer.
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
 * SWARM_DEAD_MS, or its heartbeats stop for SWARM_FRESH_MS, the smallest live member picks the
 * replica of its stage with the newest copy, at step c, and sends every member and the replica
 * QUORUM_RESTORE: the next generation, step c, the members by stage. Each stops its stage,
 * forgets its checkpoints after c (the replica installs the one it pulled) and starts again from
 * c: the steps after c are recomputed, identically, and never applied twice. Pipeline frames
 * carry the generation: older ones are dropped, newer ones held until this node gets there.
 *
 * Not yet here (issue 7): the layer pool's assignment and the quorum core, multipath.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "neuroshard/ckpt.h"

#include "neuroshard/pipeline.h"
#include "node_internal.h"

#define SWARM_HEARTBEAT_MS   5000
#define SWARM_FRESH_MS       (3 * SWARM_HEARTBEAT_MS)
#define SWARM_PEERS_MAX      64
#define SWARM_MEMBERS_MAX    16
#define SWARM_RETRY_MS       50
#define SWARM_CAPACITY_BYTES 43
#define SWARM_DEAD_MS        500   /* a member's link down this long: it is gone */
#define SWARM_FETCH_STALL_MS 10000 /* a checkpoint pull that makes no progress is dropped */
#define SWARM_PENDING_MAX    128   /* frames of a newer generation held until this node is there */
#define SWARM_NO_STAGE       0xff
#define SWARM_REASONS_MAX    16    /* kinds of refused proposals and restarts counted */
#define SWARM_PROPOSE_MS     10000 /* a proposal's answers (and a member's wait to start) */
#define SWARM_BENCH_MS       (10 * 60 * 1000)

typedef struct peer_cap {
    uint8_t id[NS_NODE_ID_BYTES];
    uint32_t memory_mb, layers, hidden, quorum_size, tier;
    bool in_quorum;
    uint64_t seen_ms;
    uint64_t ckpt_step;    /* its newest aligned checkpoint, as a member */
    uint64_t ckpt_oldest;  /* its oldest checkpoint kept, as a member (a restart needs one) */
    uint32_t replica_of;   /* the stage it follows as a replica, or SWARM_NO_STAGE */
    uint64_t replica_step; /* the step of the copy it holds */
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

struct ns_swarm {
    ns_swarm_config cfg;
    peer_cap peers[SWARM_PEERS_MAX];
    size_t peer_count;
    uint64_t heartbeat_timer, retry_timer, bench_timer;
    /* the self-benchmark (S2), run on a libuv worker */
    uv_work_t bench;
    bool bench_running, async_closed;
    int bench_rc;
    uint64_t bench_us, layer_latency_us;
    ns_tier tier;
    /* the quorum */
    bool in_quorum;
    uint8_t members[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    uint32_t member_count, stage;
    uint8_t quorum_id[NS_SHA256_BYTES];
    uint32_t generation;
    uint64_t proved_through; /* the steps this node's work periods already hold */
    uint64_t check_timer;
    uint64_t beat_ms, woke_ms; /* this node's last heartbeat; when it found it had been stalled */
    /* formation in two phases: the proposer waits for every accept, then says start */
    bool proposing, reserved;
    uint64_t proposed_ms, reserved_ms;
    uint8_t plan[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
    uint32_t plan_count, plan_stage;
    bool plan_accepted[SWARM_MEMBERS_MAX];
    uint8_t plan_id[NS_SHA256_BYTES];
    pending_frame *pending;
    uint32_t pending_count;
    /* as a replica: the quorum it follows (members by stage) and the copy it pulls */
    bool knows_quorum;
    uint8_t followed[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
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

static void capacity_body(const ns_swarm *s, uint8_t b[SWARM_CAPACITY_BYTES])
{
    ns_train_pipe_status ps = {0};
    if (*s->cfg.trainer != NULL)
        ns_trainer_pipe_status(*s->cfg.trainer, &ps);
    uint32_t mem = s->cfg.memory_mb > UINT32_MAX ? UINT32_MAX : (uint32_t)s->cfg.memory_mb;
    b[0] = 2; /* version */
    b[1] = (uint8_t)(mem >> 24);
    b[2] = (uint8_t)(mem >> 16);
    b[3] = (uint8_t)(mem >> 8);
    b[4] = (uint8_t)mem;
    b[5] = (uint8_t)(ps.inbox > 255 ? 255 : ps.inbox);
    put_u16(b + 6, ps.layer_first);
    put_u16(b + 8, ps.layer_last);
    b[10] = 0; /* GPU % */
    b[11] = s->in_quorum ? 1 : 0;
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
    if (f->body_len != SWARM_CAPACITY_BYTES || f->body[0] != 2) {
        s->refused_malformed++;
        return;
    }
    const uint8_t *b = f->body;
    peer_cap *p = peer_of(s, peer, true);
    p->memory_mb = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
    p->in_quorum = (b[11] & 1) != 0;
    p->tier = b[12];
    p->quorum_size = b[13];
    p->layers = get_u16(b + 14);
    p->hidden = get_u16(b + 16);
    p->ckpt_step = get_u64(b + 18);
    p->replica_of = b[26];
    p->replica_step = get_u64(b + 27);
    p->ckpt_oldest = get_u64(b + 35);
    p->seen_ms = now_ms(s);
}

/* ---- the quorum ------------------------------------------------------------------------------ */

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, NS_NODE_ID_BYTES);
}

/* [first, last) of stage i of n: the split that makes the slowest stage fastest, counting the
 * head (and the loss) of the last stage as vocab / (12 hidden) layers (its matrix against a
 * layer's twelve hidden x hidden ones). */
static void stage_layers(const ns_swarm *s, uint32_t i, uint32_t n, uint32_t *first, uint32_t *last)
{
    uint32_t bounds[SWARM_MEMBERS_MAX + 1];
    uint64_t head =
        1000ull * NS_TRAIN_VOCAB / (12ull * (s->cfg.model_hidden ? s->cfg.model_hidden : 1));
    if (ns_pipe_split(s->cfg.model_layers, n, head, 0, bounds) != NS_OK) {
        *first =
            s->cfg.model_layers * i / n; /* (a quorum of more members than layers is refused) */
        *last = s->cfg.model_layers * (i + 1) / n;
        return;
    }
    *first = bounds[i];
    *last = bounds[i + 1];
}

static void quorum_id_of(const ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n,
                         uint8_t out[NS_SHA256_BYTES])
{
    uint8_t buf[SWARM_MEMBERS_MAX * NS_NODE_ID_BYTES + 4];
    memcpy(buf, ids, (size_t)n * NS_NODE_ID_BYTES);
    put_u16(buf + (size_t)n * NS_NODE_ID_BYTES, s->cfg.model_layers);
    put_u16(buf + (size_t)n * NS_NODE_ID_BYTES + 2, s->cfg.model_hidden);
    ns_sha256(out, buf, (size_t)n * NS_NODE_ID_BYTES + 4);
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

/* What the node record says of this node's capacity (S2). */
static void publish_capacity(ns_swarm *s)
{
    ns_node_info cap = {.layer_latency_us = s->layer_latency_us,
                        .tier = s->layer_latency_us != 0 ? (uint32_t)s->tier : 0,
                        .in_quorum = s->in_quorum,
                        .reputation_ppm = 1000000};
    if (s->in_quorum) {
        stage_layers(s, s->stage, s->member_count, &cap.layer_first, &cap.layer_last);
        memcpy(cap.quorum_id, s->quorum_id, sizeof cap.quorum_id);
    }
    ns_net_set_capacity(s->cfg.net, &cap);
}

/* Becomes stage `stage` of the quorum `ids` and starts the trainer on that stage. */
static void deliver_pending(ns_swarm *s);
static void send_info(ns_swarm *s);

/* Becomes stage `stage` of the quorum `ids` (by stage) at `generation` and starts the trainer on
 * that stage (from its newest checkpoint). */
static void join_quorum(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n, uint32_t stage,
                        uint32_t generation)
{
    memmove(s->members, ids, (size_t)n * NS_NODE_ID_BYTES);
    s->member_count = n;
    s->stage = stage;
    s->in_quorum = true;
    s->generation = generation;
    s->knows_quorum = false;
    quorum_id_of(s, s->members, n, s->quorum_id);
    ns_train_config tc = s->cfg.train;
    tc.stage = stage;
    tc.stages = n;
    tc.generation = generation;
    tc.proved_through = s->proved_through;
    uint8_t named[NS_SHA256_BYTES + 4];
    memcpy(named, s->quorum_id, NS_SHA256_BYTES);
    put_u32(named + NS_SHA256_BYTES, generation);
    ns_sha256(tc.pipeline_id, named, sizeof named);
    stage_layers(s, stage, n, &tc.layer_first, &tc.layer_last);
    tc.send = out_send;
    tc.send_arg = s;
    char hex[17];
    ns_hex_encode(hex, sizeof hex, s->quorum_id, 8);
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

static bool wants_same(const ns_swarm *s, const peer_cap *p, uint64_t now)
{
    return now - p->seen_ms <= SWARM_FRESH_MS && !p->in_quorum &&
           p->quorum_size == s->cfg.quorum_size && p->layers == s->cfg.model_layers &&
           p->hidden == s->cfg.model_hidden;
}

/* The smallest free node proposes the quorum of the quorum_size smallest. */
static void maybe_propose(ns_swarm *s)
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
    if (n < want)
        return;
    /* nodes that know a quorum stay its replicas (S3: two holders of every layer) until there
     * are enough free nodes for another quorum and replicas besides */
    if (s->knows_quorum && n < 2 * (size_t)want)
        return;
    qsort(ids, n, NS_NODE_ID_BYTES, cmp_id);
    if (memcmp(ids[0], s->cfg.key->node_id, NS_NODE_ID_BYTES) != 0 || s->proposing || s->reserved)
        return; /* a smaller node proposes, or a proposal is out */
    uint8_t body[1 + 4 + SWARM_MEMBERS_MAX * NS_NODE_ID_BYTES];
    body[0] = (uint8_t)want;
    put_u16(body + 1, s->cfg.model_layers);
    put_u16(body + 3, s->cfg.model_hidden);
    memcpy(body + 5, ids, (size_t)want * NS_NODE_ID_BYTES);
    ns_frame f = {.type = NS_FRAME_QUORUM_PROPOSE,
                  .body = body,
                  .body_len = 5 + (size_t)want * NS_NODE_ID_BYTES};
    for (uint32_t i = 1; i < want; i++)
        if (ns_net_send_frame(s->cfg.net, ids[i], &f) != NS_OK)
            return; /* a member without a link yet: try again at the next heartbeat */
    /* nobody starts until every member accepted: the proposer's view may be stale */
    s->proposing = true;
    s->proposed_ms = now_ms(s);
    memcpy(s->plan, ids, (size_t)want * NS_NODE_ID_BYTES);
    s->plan_count = want;
    s->plan_stage = 0;
    memset(s->plan_accepted, 0, sizeof s->plan_accepted);
    s->plan_accepted[0] = true;
    quorum_id_of(s, s->plan, want, s->plan_id);
}

/* A member's answer to this node's proposal; when all accepted, everyone starts. */
static void on_accept(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!s->proposing || f->body_len != NS_SHA256_BYTES + 1 ||
        memcmp(f->body, s->plan_id, NS_SHA256_BYTES) != 0)
        return;
    int i = -1;
    for (uint32_t k = 0; k < s->plan_count; k++)
        if (memcmp(s->plan[k], peer, NS_NODE_ID_BYTES) == 0)
            i = (int)k;
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
    for (uint32_t k = 1; k < s->plan_count; k++)
        if (ns_net_send_frame(s->cfg.net, s->plan[k], &go) != NS_OK)
            NS_LOG_W("swarm", "the start did not reach stage %u", k);
    join_quorum(s, s->plan, s->plan_count, 0, 1);
}

/* The proposer says every member accepted: this node starts its stage. */
static void on_start(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    if (!s->reserved || f->body_len != NS_SHA256_BYTES ||
        memcmp(f->body, s->plan_id, NS_SHA256_BYTES) != 0 ||
        memcmp(peer, s->plan[0], NS_NODE_ID_BYTES) != 0)
        return;
    s->reserved = false;
    join_quorum(s, s->plan, s->plan_count, s->plan_stage, 1);
}

/* A proposal is valid for this node when it is free, it is among the members (each once, in id
 * order, as many as it wants), the model is its own, and the proposer is the smallest member. */
/* Every member other than this node announced, lately, that it wants this quorum size and
 * model: a proposal cannot enlist nodes that never offered themselves. */
static bool in_pool(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n)
{
    uint64_t now = now_ms(s);
    for (uint32_t i = 0; i < n; i++) {
        if (memcmp(ids[i], s->cfg.key->node_id, NS_NODE_ID_BYTES) == 0)
            continue;
        const peer_cap *p = peer_of(s, ids[i], false);
        if (p == NULL || now - p->seen_ms > SWARM_FRESH_MS ||
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

static void on_propose(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
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
    uint8_t answer[NS_SHA256_BYTES + 1] = {0};
    if (why == NULL)
        quorum_id_of(s, ids, n, answer);
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
    /* promised: it starts when the proposer says every member accepted */
    s->reserved = true;
    s->reserved_ms = now_ms(s);
    memcpy(s->plan, ids, (size_t)n * NS_NODE_ID_BYTES);
    s->plan_count = n;
    s->plan_stage = stage;
    memcpy(s->plan_id, answer, NS_SHA256_BYTES);
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
    /* activations and the norm come from the stage before, gradients and the scale from after */
    int from = f->type == NS_FRAME_PIPE_ACT || f->type == NS_FRAME_PIPE_NORM ? -1 : +1;
    const uint8_t *want = neighbour(s, from);
    if (want == NULL || memcmp(want, peer, NS_NODE_ID_BYTES) != 0 || *s->cfg.trainer == NULL) {
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

static int member_index(const uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n, const uint8_t *id)
{
    for (uint32_t i = 0; i < n; i++)
        if (memcmp(ids[i], id, NS_NODE_ID_BYTES) == 0)
            return (int)i;
    return -1;
}

/* Members send QUORUM_INFO to every peer: the generation and the members by stage. */
static void send_info(ns_swarm *s)
{
    uint8_t body[4 + 1 + SWARM_MEMBERS_MAX * NS_NODE_ID_BYTES];
    put_u32(body, s->generation);
    body[4] = (uint8_t)s->member_count;
    memcpy(body + 5, s->members, (size_t)s->member_count * NS_NODE_ID_BYTES);
    ns_frame f = {.type = NS_FRAME_QUORUM_INFO,
                  .body = body,
                  .body_len = 5 + (size_t)s->member_count * NS_NODE_ID_BYTES};
    (void)ns_net_broadcast(s->cfg.net, &f, NULL);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void fetch_stop(ns_swarm *s, bool done);

/* A free node that wants this quorum's size and model follows one of its stages: its rank among
 * the free nodes it knows, modulo the stages. */
static void on_info(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    uint32_t n = f->body_len >= 5 ? f->body[4] : 0;
    if (n < 2 || n > SWARM_MEMBERS_MAX || f->body_len != 5 + (size_t)n * NS_NODE_ID_BYTES) {
        s->refused_malformed++;
        return;
    }
    uint32_t gen = get_u32(f->body);
    const uint8_t(*ids)[NS_NODE_ID_BYTES] = (const void *)(f->body + 5);
    if (n != s->cfg.quorum_size || member_index(ids, n, peer) < 0)
        return;
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
    /* First its rank among the free nodes, modulo n; then sticky: a replica keeps its stage
     * unless a free node with a smaller id follows it too, and then takes the first stage nobody
     * follows. */
    uint64_t now = now_ms(s);
    bool covered[SWARM_MEMBERS_MAX] = {0};
    bool shared = false;
    uint32_t rank = 0;
    for (size_t i = 0; i < s->peer_count; i++) {
        const peer_cap *p = &s->peers[i];
        if (!wants_same(s, p, now) || member_index(ids, n, p->id) >= 0)
            continue;
        bool smaller = cmp_id(p->id, s->cfg.key->node_id) < 0;
        rank += smaller;
        if (p->replica_of < n) {
            covered[p->replica_of] = true;
            shared = shared || (p->replica_of == s->replica_of && smaller);
        }
    }
    uint32_t pick = s->replica_of;
    if (pick >= n) {
        pick = rank % n; /* a first choice: distinct wherever the free nodes see each other */
    } else if (shared) {
        pick = rank % n;
        for (uint32_t st = 0; st < n; st++) {
            if (!covered[st]) {
                pick = st;
                break;
            }
        }
    }
    if (s->replica_of == pick)
        return;
    /* another stage: the copy held is of the wrong layers */
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

/* Restarts this node's stage at generation gen from step c, with the members by stage. */
static void restart(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n, uint32_t gen,
                    uint64_t c)
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
    memcpy(copy, ids, (size_t)n * NS_NODE_ID_BYTES);
    NS_LOG_I("swarm", "failover: generation %u, restarting stage %d of %u from step %llu", gen,
             stage, n, (unsigned long long)c);
    join_quorum(s, copy, n, (uint32_t)stage, gen);
    if (s->failover_started_ms != 0)
        s->failover_ms = now_ms(s) - s->failover_started_ms;
    s->failover_started_ms = 0;
}

static void on_restore(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    uint32_t n = f->body_len >= 13 ? f->body[12] : 0;
    const char *why = NULL;
    if (n < 2 || n > SWARM_MEMBERS_MAX || f->body_len != 13 + (size_t)n * NS_NODE_ID_BYTES) {
        why = "malformed";
    } else {
        uint32_t gen = get_u32(f->body);
        uint64_t c = get_u64(f->body + 4);
        uint8_t ids[SWARM_MEMBERS_MAX][NS_NODE_ID_BYTES];
        memcpy(ids, f->body + 13, (size_t)n * NS_NODE_ID_BYTES);
        const uint8_t(*old)[NS_NODE_ID_BYTES] = s->in_quorum ? s->members : s->followed;
        uint32_t old_n = s->in_quorum ? s->member_count : s->followed_count;
        uint32_t old_gen = s->in_quorum ? s->generation : s->followed_generation;
        for (uint32_t i = 0; i < n && why == NULL; i++)
            for (uint32_t j = i + 1; j < n; j++)
                if (memcmp(ids[i], ids[j], NS_NODE_ID_BYTES) == 0)
                    why = "a member named twice";
        if (why == NULL && (!s->in_quorum && !s->knows_quorum))
            why = "this node knows no quorum";
        else if (why == NULL && gen <= old_gen)
            why = "not a newer generation";
        else if (why == NULL && member_index(old, old_n, peer) < 0)
            why = "not from a member";
        else if (why == NULL && member_index(ids, n, s->cfg.key->node_id) < 0)
            why = "this node is not a member";
        else if (why == NULL && (n != s->cfg.quorum_size || c == 0))
            why = "another quorum size, or no step to restart from";
        else if (why == NULL && !s->in_quorum && c != s->replica_step)
            why = "this replica holds no copy of that step";
        if (why == NULL) {
            restart(s, ids, n, gen, c);
            return;
        }
    }
    s->proposals_refused++;
    count_refusal(s, why);
    NS_LOG_W("swarm", "a restart refused: %s", why);
}

static void check_fired(void *arg, uint64_t now);

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
                  (p != NULL && (now - p->seen_ms > SWARM_FRESH_MS || !p->in_quorum));
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
        const peer_cap *best = NULL;
        for (size_t k = 0; k < s->peer_count; k++) {
            const peer_cap *r = &s->peers[k];
            if (r->replica_of != i || r->replica_step == 0 || r->replica_step < floor ||
                now - r->seen_ms > SWARM_FRESH_MS || !ns_net_has_link(s->cfg.net, r->id))
                continue;
            if (best == NULL || r->replica_step > best->replica_step ||
                (r->replica_step == best->replica_step && cmp_id(r->id, best->id) < 0))
                best = r;
        }
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
    uint8_t body[13 + SWARM_MEMBERS_MAX * NS_NODE_ID_BYTES];
    uint32_t gen = s->generation + 1;
    put_u32(body, gen);
    put_u64(body + 4, c);
    body[12] = (uint8_t)s->member_count;
    memcpy(body + 13, ids, (size_t)s->member_count * NS_NODE_ID_BYTES);
    ns_frame f = {.type = NS_FRAME_QUORUM_RESTORE,
                  .body = body,
                  .body_len = 13 + (size_t)s->member_count * NS_NODE_ID_BYTES};
    for (uint32_t i = 0; i < s->member_count; i++)
        if (i != s->stage && ns_net_send_frame(s->cfg.net, ids[i], &f) != NS_OK)
            NS_LOG_W("swarm", "the restart did not reach stage %u", i);
    NS_LOG_W("swarm", "a member is gone: its replica takes stage over, all restart at step %llu",
             (unsigned long long)c);
    restart(s, ids, s->member_count, gen, c);
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
    case NS_FRAME_PIPE_ACT:
    case NS_FRAME_PIPE_GRAD:
    case NS_FRAME_PIPE_NORM:
    case NS_FRAME_PIPE_SCALE:
        on_pipe(s, peer, f);
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
        int rc = to != NULL ? ns_net_send_frame(s->cfg.net, to, &it->f) : NS_EINVAL;
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
    s->layer_latency_us = s->bench_us;
    s->tier = ns_tier_for_latency_us(s->bench_us);
    NS_LOG_I("swarm", "self-benchmark: one layer's forward takes %.2f ms: tier %s%s",
             (double)s->bench_us / 1000.0, ns_tier_name(s->tier),
             ns_tier_can_pipeline(s->tier) ? "" : " (asynchronous training only)");
    publish_capacity(s);
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
    if (s->beat_ms != 0 && now - s->beat_ms > 2 * SWARM_HEARTBEAT_MS)
        s->woke_ms = now; /* its own heartbeat came late: this process was stopped or starved */
    s->beat_ms = now;
    if (s->proposing && now - s->proposed_ms > SWARM_PROPOSE_MS) {
        NS_LOG_W("swarm", "a proposal was not accepted in time: withdrawn");
        s->proposing = false;
    }
    if (s->reserved && now - s->reserved_ms > SWARM_PROPOSE_MS)
        s->reserved = false; /* the proposer never said start */
    send_capacity(s, NULL);
    maybe_propose(s);
    if (s->in_quorum)
        send_info(s);
    maybe_fetch(s);
    check_members(s);
    s->heartbeat_timer =
        ns_env_timer(&s->cfg.uvenv->env, now + SWARM_HEARTBEAT_MS, heartbeat_fired, s);
}

/* ---- life and figures --------------------------------------------------------------------------
 */

int ns_swarm_start(ns_swarm **out, const ns_swarm_config *cfg)
{
    ns_swarm *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NS_ENOMEM;
    s->cfg = *cfg;
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
    s->bench_timer = ns_env_timer(&cfg->uvenv->env, now_ms(s), bench_fired, s);
    if (cfg->quorum_size > 1)
        NS_LOG_I("swarm", "waiting for %u nodes with model %ux%u to form a pipeline",
                 cfg->quorum_size, cfg->model_layers, cfg->model_hidden);
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
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_mutex_unlock(&s->mu);
    uv_close((uv_handle_t *)&s->async, free_on_close);
}

json_t *ns_swarm_json(ns_swarm *s)
{
    json_t *members = json_array();
    for (uint32_t i = 0; i < s->member_count; i++) {
        char hex[2 * NS_NODE_ID_BYTES + 1];
        ns_hex_encode(hex, sizeof hex, s->members[i], NS_NODE_ID_BYTES);
        uint32_t first, last;
        stage_layers(s, i, s->member_count, &first, &last);
        const char *role = i == 0                     ? "initiator"
                           : i + 1 == s->member_count ? "finisher"
                                                      : "processor";
        json_array_append_new(members, json_pack("{s:s, s:I, s:s, s:I, s:I, s:b}", "node_id", hex,
                                                 "stage", (json_int_t)i, "role", role,
                                                 "layer_first", (json_int_t)first, "layer_last",
                                                 (json_int_t)last, "self", i == s->stage));
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
    json_t *why = json_object();
    for (uint32_t i = 0; i < SWARM_REASONS_MAX && s->reasons[i].why != NULL; i++)
        json_object_set_new(why, s->reasons[i].why, json_integer((json_int_t)s->reasons[i].count));
    json_object_set_new(o, "refused_by_reason", why);
    json_object_set_new(o, "failovers", json_integer((json_int_t)s->failovers));
    json_object_set_new(o, "failover_ms", json_integer((json_int_t)s->failover_ms));
    json_object_set_new(o, "stale_generation_frames",
                        json_integer((json_int_t)s->stale_generation));
    if (!s->in_quorum && s->knows_quorum)
        json_object_set_new(o, "replica",
                            json_pack("{s:I, s:I}", "stage", (json_int_t)s->replica_of, "step",
                                      (json_int_t)s->replica_step));
    json_object_set_new(o, "layer_latency_us", json_integer((json_int_t)s->layer_latency_us));
    return o;
}
