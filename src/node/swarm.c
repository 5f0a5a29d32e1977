/*
 * swarm.c: this node in a training swarm, on the loop thread (SPEC S5, S6).
 *
 * Every SWARM_HEARTBEAT_MS a node tells its peers what it offers in a CAPACITY frame of 18 bytes
 * (S6's capacity heartbeat: memory, inbox depth, layer range, flags, tier, the quorum size it
 * wants and the model it trains). When `quorum_size` nodes that want the same quorum and model
 * are known and free, the one with the smallest id proposes: the quorum_size smallest ids, in id
 * order, each taking an equal share of the layers (the first holds the embedding and reads the
 * data, the last holds the head). A member that is free and finds the plan valid for itself
 * accepts and starts its stage; one that is not says so. The trainer thread runs the stage's
 * 1F1B schedule (train.c, pipeline.h); its frames leave through an outbox drained here (the
 * links live on this thread), and frames from the neighbours are checked (the right neighbour, a
 * well-formed message) before they are copied to the trainer.
 *
 * At start and every SWARM_BENCH_MS the node times the forward of one layer of its model on a
 * libuv worker thread (S2's self-benchmark); the tier that follows, the layers it holds and its
 * quorum go into its capacity heartbeats and its signed node record in the DHT.
 *
 * Not yet here (issue 7): the layer pool and replicas, quorum health and failover, multipath.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/pipeline.h"
#include "node_internal.h"

#define SWARM_HEARTBEAT_MS   5000
#define SWARM_FRESH_MS       (3 * SWARM_HEARTBEAT_MS)
#define SWARM_PEERS_MAX      64
#define SWARM_MEMBERS_MAX    16
#define SWARM_RETRY_MS       50
#define SWARM_CAPACITY_BYTES 18
#define SWARM_BENCH_MS       (10 * 60 * 1000)

typedef struct peer_cap {
    uint8_t id[NS_NODE_ID_BYTES];
    uint32_t memory_mb, layers, hidden, quorum_size, tier;
    bool in_quorum;
    uint64_t seen_ms;
} peer_cap;

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
    /* what the trainer thread sends, under mu */
    pthread_mutex_t mu;
    outbox_item *out, **out_tail;
    uv_async_t async;
    bool closing;
    /* counters */
    uint64_t frames_in, frames_out, bytes_in, bytes_out, refused_neighbour, refused_malformed,
        refused_full, proposals_refused;
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

/* ---- capacity heartbeats -------------------------------------------------------------------- */

static void capacity_body(const ns_swarm *s, uint8_t b[SWARM_CAPACITY_BYTES])
{
    ns_train_pipe_status ps = {0};
    if (*s->cfg.trainer != NULL)
        ns_trainer_pipe_status(*s->cfg.trainer, &ps);
    uint32_t mem = s->cfg.memory_mb > UINT32_MAX ? UINT32_MAX : (uint32_t)s->cfg.memory_mb;
    b[0] = 1; /* version */
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
    if (f->body_len != SWARM_CAPACITY_BYTES || f->body[0] != 1) {
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
    p->seen_ms = now_ms(s);
}

/* ---- the quorum ------------------------------------------------------------------------------ */

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, NS_NODE_ID_BYTES);
}

/* [first, last) of stage i of n over the model's layers: equal shares in member order. */
static void stage_layers(const ns_swarm *s, uint32_t i, uint32_t n, uint32_t *first, uint32_t *last)
{
    *first = s->cfg.model_layers * i / n;
    *last = s->cfg.model_layers * (i + 1) / n;
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
static void join_quorum(ns_swarm *s, uint8_t ids[][NS_NODE_ID_BYTES], uint32_t n, uint32_t stage)
{
    memcpy(s->members, ids, (size_t)n * NS_NODE_ID_BYTES);
    s->member_count = n;
    s->stage = stage;
    s->in_quorum = true;
    quorum_id_of(s, ids, n, s->quorum_id);
    ns_train_config tc = s->cfg.train;
    tc.stage = stage;
    tc.stages = n;
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
    publish_capacity(s);
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
    qsort(ids, n, NS_NODE_ID_BYTES, cmp_id);
    if (memcmp(ids[0], s->cfg.key->node_id, NS_NODE_ID_BYTES) != 0)
        return; /* a smaller node proposes */
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
    join_quorum(s, ids, want, 0);
}

/* A proposal is valid for this node when it is free, it is among the members (each once, in id
 * order, as many as it wants), the model is its own, and the proposer is the smallest member. */
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
        if (why == NULL && s->in_quorum)
            why = "already in a quorum";
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
        NS_LOG_W("swarm", "quorum proposal refused: %s", why);
        return;
    }
    join_quorum(s, ids, n, stage);
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

static void on_pipe(ns_swarm *s, const uint8_t *peer, const ns_frame *f)
{
    /* activations and the norm come from the stage before, gradients and the scale from after */
    int from = f->type == NS_FRAME_PIPE_ACT || f->type == NS_FRAME_PIPE_NORM ? -1 : +1;
    const uint8_t *want = neighbour(s, from);
    if (want == NULL || memcmp(want, peer, NS_NODE_ID_BYTES) != 0 || *s->cfg.trainer == NULL) {
        s->refused_neighbour++;
        return;
    }
    ns_pipe_msg m;
    if (ns_pipe_msg_parse(f, &m) != NS_OK) {
        s->refused_malformed++;
        NS_LOG_W("swarm", "a malformed pipeline frame (type %u) from a neighbour: refused",
                 f->type);
        return;
    }
    if (ns_trainer_pipe_input(*s->cfg.trainer, &m) != NS_OK) {
        s->refused_full++;
    } else {
        s->frames_in++;
        s->bytes_in += f->body_len + (f->tensor.dtype != NS_DTYPE_NONE ? f->tensor.bytes : 0);
    }
}

static void on_frame(void *arg, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f)
{
    ns_swarm *s = arg;
    switch (f->type) {
    case NS_FRAME_CAPACITY:
        on_capacity(s, peer, f);
        maybe_propose(s);
        return;
    case NS_FRAME_QUORUM_PROPOSE:
        on_propose(s, peer, f);
        return;
    case NS_FRAME_QUORUM_ACCEPT:
        if (f->body_len == NS_SHA256_BYTES + 1 && f->body[NS_SHA256_BYTES] == 0)
            NS_LOG_W("swarm", "a member refused this node's proposal");
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
    send_capacity(s, NULL);
    maybe_propose(s);
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
    ns_net_set_app(cfg->net, NS_NET_APP_SWARM, on_frame, on_link, s);
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
    ns_net_set_app(s->cfg.net, NS_NET_APP_SWARM, NULL, NULL, NULL);
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
    json_object_set_new(o, "layer_latency_us", json_integer((json_int_t)s->layer_latency_us));
    return o;
}
