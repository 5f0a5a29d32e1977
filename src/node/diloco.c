/*
 * diloco.c: DiLoCo's cohort sync in the daemon, on the loop thread (SPEC S7, S8).
 *
 * Every node that trains with --sync-every announces, every DILOCO_HELLO_MS to every peer, a
 * SYNC_HELLO (21 bytes: the model, the layers it trains, H and its step). The peers that announce
 * the same model, layers and H are its layer cohort. Every H steps the trainer thread hands this
 * part its pseudo-gradient Δ = w0 - w (copied here) and waits; on the loop thread the cohort
 * exchange of sync.h runs over SYNC_MSG frames (the message as a U8 tensor) among this node and
 * the cohort as known now, and its aggregate goes back to the trainer, which takes the outer
 * Nesterov step. Alone, the trainer is told so at once and keeps its inner weights.
 *
 * Contributions the owner's screen rejects are counted; one judged fraud (beyond 5 sigma) is
 * logged and its message kept under <data_dir>/evidence/ with the sender's id. Messages are
 * authenticated by the link they came on; they are not yet signed for third parties, so the
 * evidence convinces this node only (docs/design.md, "Cohort sync").
 *
 * NEUROSHARD_TEST_CHEAT=poison makes this node send its Δ times -100 (a sign flip, scaled), so
 * that tests can show the others screen it out.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "neuroshard/sync.h"
#include "node_internal.h"

#define DILOCO_HELLO_MS       5000
#define DILOCO_FRESH_MS       (3 * DILOCO_HELLO_MS)
#define DILOCO_PEERS_MAX      64
#define DILOCO_HELLO_BYTES    21
#define DILOCO_RETRY_MS       50
#define DILOCO_OUTBOX_MAX     256 /* cohort messages waiting for a link */
#define DILOCO_HELD_MAX       64  /* messages that came before this node's first round */
#define DILOCO_HELD_BYTES_MAX (64u << 20)

typedef struct cohort_peer {
    uint8_t id[NS_NODE_ID_BYTES];
    uint32_t layers, hidden, first, last, every;
    uint64_t step, seen_ms;
} cohort_peer;

typedef struct out_msg {
    struct out_msg *next;
    uint8_t to[NS_NODE_ID_BYTES];
    size_t len;
    uint8_t bytes[];
} out_msg;

struct ns_diloco {
    ns_diloco_config cfg;
    cohort_peer peers[DILOCO_PEERS_MAX];
    size_t peer_count;
    uint64_t hello_timer, retry_timer;
    /* the trainer's request, handed over under mu */
    pthread_mutex_t mu;
    uv_async_t async;
    bool closing;
    bool req_pending;
    uint64_t req_round;
    float *req_delta;
    size_t req_n, delta_cap;
    double req_weight;
    uint8_t req_hash[NS_SHA256_BYTES];
    uint32_t req_first, req_last;
    /* the round on the loop thread */
    ns_cohort *cohort;
    size_t cohort_n;
    bool running;
    uint64_t round;
    out_msg *out, **out_tail;
    uint32_t out_count;
    out_msg *held, **held_tail; /* before the core exists: `to` is the sender */
    uint32_t held_count;
    size_t held_bytes;
    /* figures */
    uint64_t rounds, rounds_alone, rejected, fraud, dropped_out, frames_refused;
    ns_cohort_report last;
};

static uint64_t now_ms(const ns_diloco *d)
{
    return ns_env_now(&d->cfg.uvenv->env);
}

static void put_be(uint8_t *p, uint64_t x, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, x >>= 8)
        p[i] = (uint8_t)x;
}

static uint64_t get_be(const uint8_t *p, int bytes)
{
    uint64_t x = 0;
    for (int i = 0; i < bytes; i++)
        x = x << 8 | p[i];
    return x;
}

/* ---- the cohort as announced ----------------------------------------------------------------- */

/* What this node trains now, from its trainer (false when it does not train). */
static bool own_place(ns_diloco *d, uint32_t *layers, uint32_t *hidden, uint32_t *first,
                      uint32_t *last, uint64_t *step)
{
    ns_trainer *t = *d->cfg.trainer;
    if (t == NULL)
        return false;
    ns_train_status ts;
    ns_trainer_status(t, &ts);
    ns_train_sync_status ss;
    ns_trainer_sync_status(t, &ss);
    if (!ts.ready || !ss.on)
        return false;
    ns_train_pipe_status ps;
    ns_trainer_pipe_status(t, &ps);
    *layers = ts.layers;
    *hidden = ts.hidden;
    *first = ps.on && ps.stages > 1 ? ps.layer_first : 0;
    *last = ps.on && ps.stages > 1 ? ps.layer_last : ts.layers;
    *step = ts.step;
    return true;
}

static void send_hello(ns_diloco *d)
{
    uint32_t layers, hidden, first, last;
    uint64_t step;
    if (!own_place(d, &layers, &hidden, &first, &last, &step))
        return;
    uint8_t b[DILOCO_HELLO_BYTES];
    b[0] = 1; /* version */
    put_be(b + 1, layers, 2);
    put_be(b + 3, hidden, 2);
    put_be(b + 5, first, 2);
    put_be(b + 7, last, 2);
    put_be(b + 9, d->cfg.sync_every, 4);
    put_be(b + 13, step, 8);
    ns_frame f = {.type = NS_FRAME_SYNC_HELLO, .body = b, .body_len = sizeof b};
    (void)ns_net_broadcast(d->cfg.net, &f, NULL);
}

static void on_hello(ns_diloco *d, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len != DILOCO_HELLO_BYTES || f->body[0] != 1) {
        d->frames_refused++;
        return;
    }
    cohort_peer *p = NULL;
    for (size_t i = 0; i < d->peer_count && p == NULL; i++)
        if (memcmp(d->peers[i].id, peer, NS_NODE_ID_BYTES) == 0)
            p = &d->peers[i];
    if (p == NULL) {
        size_t slot = d->peer_count;
        if (slot == DILOCO_PEERS_MAX) { /* full: the one heard from longest ago goes */
            slot = 0;
            for (size_t i = 1; i < d->peer_count; i++)
                if (d->peers[i].seen_ms < d->peers[slot].seen_ms)
                    slot = i;
        } else {
            d->peer_count++;
        }
        p = &d->peers[slot];
        memcpy(p->id, peer, NS_NODE_ID_BYTES);
    }
    const uint8_t *b = f->body;
    p->layers = (uint32_t)get_be(b + 1, 2);
    p->hidden = (uint32_t)get_be(b + 3, 2);
    p->first = (uint32_t)get_be(b + 5, 2);
    p->last = (uint32_t)get_be(b + 7, 2);
    p->every = (uint32_t)get_be(b + 9, 4);
    p->step = get_be(b + 13, 8);
    p->seen_ms = now_ms(d);
}

/* This node and the peers heard lately that train the same layers of the same model with the
 * same H: the members of a round. */
static size_t cohort_members(ns_diloco *d, uint8_t (*ids)[NS_NODE_ID_BYTES])
{
    uint32_t layers, hidden, first, last;
    uint64_t step;
    size_t n = 0;
    memcpy(ids[n++], d->cfg.key->node_id, NS_NODE_ID_BYTES);
    if (!own_place(d, &layers, &hidden, &first, &last, &step))
        return n;
    uint64_t now = now_ms(d);
    for (size_t i = 0; i < d->peer_count; i++) {
        const cohort_peer *p = &d->peers[i];
        if (now - p->seen_ms <= DILOCO_FRESH_MS && p->layers == layers && p->hidden == hidden &&
            p->first == first && p->last == last && p->every == d->cfg.sync_every)
            memcpy(ids[n++], p->id, NS_NODE_ID_BYTES);
    }
    return n;
}

/* ---- messages out ------------------------------------------------------------------------------
 */

static void retry_fired(void *arg, uint64_t now);

static void drain(ns_diloco *d)
{
    while (d->out != NULL) {
        out_msg *m = d->out;
        ns_frame f = {.type = NS_FRAME_SYNC_MSG,
                      .tensor = {.dtype = NS_DTYPE_U8,
                                 .ndim = 1,
                                 .shape = {(uint32_t)m->len},
                                 .data = m->bytes,
                                 .bytes = m->len}};
        int rc = ns_net_send_frame(d->cfg.net, m->to, &f);
        if (rc == NS_ELIMIT) {
            if (d->retry_timer == 0)
                d->retry_timer =
                    ns_env_timer(&d->cfg.uvenv->env, now_ms(d) + DILOCO_RETRY_MS, retry_fired, d);
            return;
        }
        if (rc != NS_OK)
            d->dropped_out++; /* no link: the member's timeout covers it */
        d->out = m->next;
        if (d->out == NULL)
            d->out_tail = &d->out;
        d->out_count--;
        free(m);
    }
}

static void retry_fired(void *arg, uint64_t now)
{
    (void)now;
    ns_diloco *d = arg;
    d->retry_timer = 0;
    drain(d);
}

static void cohort_send(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len)
{
    ns_diloco *d = arg;
    out_msg *m = d->out_count < DILOCO_OUTBOX_MAX ? malloc(sizeof *m + len) : NULL;
    if (m == NULL) {
        d->dropped_out++;
        return;
    }
    memcpy(m->to, to, NS_NODE_ID_BYTES);
    m->len = len;
    memcpy(m->bytes, msg, len);
    m->next = NULL;
    *d->out_tail = m;
    d->out_tail = &m->next;
    d->out_count++;
    if (d->retry_timer == 0)
        d->retry_timer = ns_env_timer(&d->cfg.uvenv->env, now_ms(d), retry_fired, d);
}

/* ---- the round ---------------------------------------------------------------------------------
 */

static void cohort_done(void *arg, const float *agg, size_t n, const ns_cohort_report *report)
{
    ns_diloco *d = arg;
    d->running = false;
    d->last = *report;
    d->rounds++;
    NS_LOG_I("sync",
             "round %llu: %u members, %u contributions here (%u rejected), %u chunks missing, "
             "%llu bytes sent",
             (unsigned long long)report->round, report->members, report->contributions,
             report->rejected, report->missing_chunks, (unsigned long long)report->bytes_sent);
    if (*d->cfg.trainer != NULL)
        ns_trainer_sync_result(*d->cfg.trainer, report->round, agg, n);
}

static void cohort_verdict(void *arg, const uint8_t from[NS_ID_BYTES], ns_agg_verdict verdict,
                           double sigma, const uint8_t *msg, size_t len)
{
    ns_diloco *d = arg;
    char who[17];
    ns_hex_encode(who, sizeof who, from, 8);
    if (verdict != NS_AGG_FRAUD) {
        d->rejected++;
        NS_LOG_W("sync", "round %llu: the pseudo-gradient of %s… was rejected (%.1f sigma)",
                 (unsigned long long)d->round, who, sigma);
        return;
    }
    d->fraud++;
    NS_LOG_W("sync", "round %llu: the pseudo-gradient of %s… is fraud (%.1f sigma): refused",
             (unsigned long long)d->round, who, sigma);
    if (msg == NULL)
        return;
    char dir[PATH_MAX], path[PATH_MAX + 96], hex[2 * NS_NODE_ID_BYTES + 1];
    snprintf(dir, sizeof dir, "%.3000s/evidence", d->cfg.data_dir);
    (void)mkdir(dir, 0700);
    ns_hex_encode(hex, sizeof hex, from, NS_NODE_ID_BYTES);
    snprintf(path, sizeof path, "%s/sync-%llu-%s.bin", dir, (unsigned long long)d->round, hex);
    if (ns_file_write_atomic(path, msg, len, 0600) != NS_OK)
        NS_LOG_W("sync", "the evidence was not kept: %s", path);
}

static bool cheats_poison(const ns_diloco *d)
{
    const char *c = d->cfg.cheat;
    return c != NULL && strstr(c, "poison") != NULL;
}

static void take_held(ns_diloco *d);

/* Starts the round the trainer asked for (loop thread). */
static void start_round(ns_diloco *d)
{
    pthread_mutex_lock(&d->mu);
    bool pending = d->req_pending;
    d->req_pending = false;
    pthread_mutex_unlock(&d->mu);
    if (!pending)
        return;
    uint8_t(*ids)[NS_NODE_ID_BYTES] = malloc((DILOCO_PEERS_MAX + 1) * NS_NODE_ID_BYTES);
    size_t m = ids != NULL ? cohort_members(d, ids) : 0;
    ns_trainer *t = *d->cfg.trainer;
    if (m <= 1 || t == NULL) { /* alone: the inner weights stand */
        free(ids);
        d->rounds_alone++;
        if (t != NULL)
            ns_trainer_sync_result(t, d->req_round, NULL, 0);
        return;
    }
    int rc = NS_OK;
    if (d->cohort == NULL || d->cohort_n != d->req_n) {
        ns_cohort_free(d->cohort);
        d->cohort = NULL;
        ns_cohort_config cc = {.group_max = 0,
                               .timeout_ms = d->cfg.timeout_ms,
                               .error_feedback = true,
                               .arg = d,
                               .send = cohort_send,
                               .done = cohort_done,
                               .verdict = cohort_verdict};
        memcpy(cc.self_id, d->cfg.key->node_id, NS_NODE_ID_BYTES);
        ns_compress_config_default(&cc.compress);
        if (d->cfg.density > 0)
            cc.compress.density = d->cfg.density;
        ns_agg_config_default(&cc.agg);
        cc.agg.kind = d->cfg.aggregator;
        rc = ns_cohort_new(&d->cohort, &cc, d->req_n, &d->cfg.uvenv->env);
        d->cohort_n = rc == NS_OK ? d->req_n : 0;
    }
    if (rc == NS_OK && cheats_poison(d)) {
        NS_LOG_W("sync",
                 "NEUROSHARD_TEST_CHEAT=poison: this node sends its pseudo-gradient x -100");
        for (size_t i = 0; i < d->req_n; i++)
            d->req_delta[i] *= -100.0f;
    }
    d->round = d->req_round;
    d->running = true;
    if (rc == NS_OK)
        rc = ns_cohort_start(d->cohort, d->req_round, (const uint8_t(*)[NS_ID_BYTES])ids, m,
                             d->req_delta, d->req_weight, d->req_hash);
    free(ids);
    if (rc == NS_OK)
        take_held(d);
    if (rc != NS_OK) {
        d->running = false;
        NS_LOG_W("sync", "round %llu could not start: %s", (unsigned long long)d->req_round,
                 ns_strerror(rc));
        ns_trainer_sync_result(t, d->req_round, NULL, 1); /* failed: no outer step */
    }
}

/* Messages that came before the core existed (a faster member's first round), to the core now
 * that it has started its round: it checks each as if it had just come. */
static void take_held(ns_diloco *d)
{
    while (d->held != NULL) {
        out_msg *m = d->held;
        d->held = m->next;
        if (ns_cohort_on_message(d->cohort, m->to, m->bytes, m->len) != NS_OK)
            d->frames_refused++;
        free(m);
    }
    d->held_tail = &d->held;
    d->held_count = 0;
    d->held_bytes = 0;
}

static void hold(ns_diloco *d, const uint8_t *from, const uint8_t *msg, size_t len)
{
    out_msg *m = d->held_count < DILOCO_HELD_MAX && d->held_bytes + len <= DILOCO_HELD_BYTES_MAX
                     ? malloc(sizeof *m + len)
                     : NULL;
    if (m == NULL) {
        d->frames_refused++;
        return;
    }
    memcpy(m->to, from, NS_NODE_ID_BYTES);
    m->len = len;
    memcpy(m->bytes, msg, len);
    m->next = NULL;
    *d->held_tail = m;
    d->held_tail = &m->next;
    d->held_count++;
    d->held_bytes += len;
}

static void on_async(uv_async_t *h)
{
    start_round(h->data);
}

void ns_diloco_request(void *arg, uint64_t round, const float *delta, size_t n, double weight,
                       const uint8_t w0_hash[NS_SHA256_BYTES], uint32_t layer_first,
                       uint32_t layer_last)
{
    ns_diloco *d = arg;
    pthread_mutex_lock(&d->mu);
    if (d->delta_cap < n) {
        float *grown = realloc(d->req_delta, n * sizeof *grown);
        if (grown != NULL) {
            d->req_delta = grown;
            d->delta_cap = n;
        }
    }
    bool ok = !d->closing && d->delta_cap >= n;
    if (ok) {
        memcpy(d->req_delta, delta, n * sizeof *delta);
        d->req_n = n;
        d->req_round = round;
        d->req_weight = weight;
        memcpy(d->req_hash, w0_hash, NS_SHA256_BYTES);
        d->req_first = layer_first;
        d->req_last = layer_last;
        d->req_pending = true;
    }
    pthread_mutex_unlock(&d->mu);
    if (ok)
        uv_async_send(&d->async);
}

/* ---- frames and timers ----------------------------------------------------------------------- */

static void on_frame(void *arg, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f)
{
    ns_diloco *d = arg;
    if (f->type == NS_FRAME_SYNC_HELLO) {
        on_hello(d, peer, f);
    } else if (f->type == NS_FRAME_SYNC_MSG) {
        if (f->tensor.dtype != NS_DTYPE_U8 || f->tensor.ndim != 1)
            d->frames_refused++;
        else if (d->cohort == NULL)
            hold(d, peer, f->tensor.data, f->tensor.bytes);
        else if (ns_cohort_on_message(d->cohort, peer, f->tensor.data, f->tensor.bytes) != NS_OK)
            d->frames_refused++;
    } else {
        d->frames_refused++;
    }
}

static void on_link(void *arg, const uint8_t peer[NS_NODE_ID_BYTES])
{
    (void)peer;
    send_hello(arg);
}

static void hello_fired(void *arg, uint64_t now)
{
    ns_diloco *d = arg;
    send_hello(d);
    d->hello_timer = ns_env_timer(&d->cfg.uvenv->env, now + DILOCO_HELLO_MS, hello_fired, d);
}

/* ---- life and figures ----------------------------------------------------------------------- */

int ns_diloco_start(ns_diloco **out, const ns_diloco_config *cfg)
{
    ns_diloco *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NS_ENOMEM;
    d->cfg = *cfg;
    d->out_tail = &d->out;
    d->held_tail = &d->held;
    pthread_mutex_init(&d->mu, NULL);
    if (uv_async_init(cfg->uvenv->loop, &d->async, on_async) != 0) {
        pthread_mutex_destroy(&d->mu);
        free(d);
        return NS_EIO;
    }
    d->async.data = d;
    ns_net_set_app(cfg->net, NS_NET_APP_SYNC, on_frame, on_link, NULL, d);
    d->hello_timer = ns_env_timer(&cfg->uvenv->env, now_ms(d) + 1000, hello_fired, d);
    *out = d;
    return NS_OK;
}

static void free_on_close(uv_handle_t *h)
{
    ns_diloco *d = h->data;
    ns_cohort_free(d->cohort);
    while (d->out != NULL) {
        out_msg *m = d->out;
        d->out = m->next;
        free(m);
    }
    while (d->held != NULL) {
        out_msg *m = d->held;
        d->held = m->next;
        free(m);
    }
    free(d->req_delta);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

void ns_diloco_stop(ns_diloco *d)
{
    if (d == NULL)
        return;
    ns_net_set_app(d->cfg.net, NS_NET_APP_SYNC, NULL, NULL, NULL, NULL);
    if (d->hello_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->hello_timer);
    if (d->retry_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->retry_timer);
    ns_cohort_free(d->cohort); /* cancels its timers */
    d->cohort = NULL;
    pthread_mutex_lock(&d->mu);
    d->closing = true;
    pthread_mutex_unlock(&d->mu);
    uv_close((uv_handle_t *)&d->async, free_on_close);
}

json_t *ns_diloco_json(ns_diloco *d)
{
    uint8_t(*ids)[NS_NODE_ID_BYTES] = malloc((DILOCO_PEERS_MAX + 1) * NS_NODE_ID_BYTES);
    size_t members = ids != NULL ? cohort_members(d, ids) : 0;
    free(ids);
    json_t *refused = json_object();
    for (int r = 0; d->cohort != NULL && r < NS_COHORT_REFUSE_COUNT_; r++)
        json_object_set_new(
            refused, ns_cohort_refusal_text((ns_cohort_refusal)r),
            json_integer((json_int_t)ns_cohort_refusals(d->cohort, (ns_cohort_refusal)r)));
    return json_pack(
        "{s:I, s:s, s:I, s:I, s:I, s:b, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, "
        "s:I, s:I}, s:o, s:I}",
        "every", (json_int_t)d->cfg.sync_every, "aggregator", ns_agg_name(d->cfg.aggregator),
        "cohort", (json_int_t)members, "rounds", (json_int_t)d->rounds, "rounds_alone",
        (json_int_t)d->rounds_alone, "running", d->running, "rejected", (json_int_t)d->rejected,
        "fraud", (json_int_t)d->fraud, "frames_refused", (json_int_t)d->frames_refused,
        "last_round", "round", (json_int_t)d->last.round, "members", (json_int_t)d->last.members,
        "phases", (json_int_t)d->last.phases, "contributions", (json_int_t)d->last.contributions,
        "missing_chunks", (json_int_t)d->last.missing_chunks, "bytes_sent",
        (json_int_t)d->last.bytes_sent, "bytes_received", (json_int_t)d->last.bytes_received,
        "refused", refused, "messages_dropped", (json_int_t)d->dropped_out);
}
