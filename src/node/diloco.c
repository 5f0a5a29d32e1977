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
 * logged and its message kept under <data_dir>/evidence/ with the sender's id. Every cohort
 * message is sealed by its sender (sync.h: key and signature after the bytes; a seal that is not
 * the link peer's is refused), so a fraud's screen, every sealed part of it, becomes a bundle
 * any node can judge, and a ledger challenge of the sender's proof (econ.c, evidence.c).
 *
 * An asynchronous contributor (--sync-role async: a slow machine, or one that cannot keep a
 * cohort's pace) is no member of the rounds. It downloads the weights of a member's last meeting
 * (SYNC_WEIGHTS_GET / SYNC_WEIGHTS_PART, F32 parts checked against the announced SHA-256; a
 * part awaited 2.5 s is asked for again, a download that gets nothing for 15 s is given up, and
 * one whose member meets again between two parts starts over, at most 3 times), trains
 * H steps from them, submits its compressed Δ to that member (SYNC_SUBMIT, with the round and the
 * time of the weights it started from) and downloads again. The member keeps the latest
 * submission of each contributor and, at its next round, checks each against its own Δ (S8's
 * magnitude and variance ratios, and the same half-space: the reference is its own update on
 * other data, not a gradient on the same micro-batch, so S8's cosine 0.5 would refuse honest
 * work) and folds those that pass into its own contribution, weighted sqrt(batches) x S7's
 * freshness of their base weights.
 *
 * NEUROSHARD_TEST_CHEAT=poison makes this node send its Δ times -100 (a sign flip, scaled), so
 * that tests can show the others screen it out (as a member) or refuse it (as a contributor).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "neuroshard/dht.h"
#include "neuroshard/sync.h"
#include "node_internal.h"

#define DILOCO_HELLO_MS       5000
#define DILOCO_FRESH_MS       (3 * DILOCO_HELLO_MS)
#define DILOCO_PEERS_MAX      64
#define DILOCO_HELLO_BYTES    38
#define DILOCO_HELLO_AFTER_MS 300 /* after a round, once the trainer took the outer step */
#define DILOCO_RETRY_MS       50
#define DILOCO_OUTBOX_MAX     256 /* cohort messages waiting for a link */
#define DILOCO_HELD_MAX       64  /* messages that came before this node's first round */
#define DILOCO_HELD_BYTES_MAX (64u << 20)
#define DILOCO_SUBS_MAX       8 /* asynchronous contributions a member keeps for its next round */
#define DILOCO_PART_FLOATS    (4u << 20) /* floats of w0 in one SYNC_WEIGHTS_PART */
#define DILOCO_FETCH_MS       15000      /* a download that stops for this long is given up */
#define DILOCO_REASK_MS       2500       /* a part awaited this long is asked for again */
#define DILOCO_RESTARTS_MAX   3 /* a download restarted after the member's weights moved on */
#define DILOCO_GET_BYTES      17
#define DILOCO_PART_BYTES     65
#define DILOCO_SUBMIT_BYTES   29
#define DILOCO_SEALS_MAX      256 /* seals of cohort messages received, kept for a bundle */

typedef struct cohort_peer {
    uint8_t id[NS_NODE_ID_BYTES];
    uint32_t layers, hidden, first, last, every;
    uint64_t step, seen_ms, round;
    uint8_t w0_prefix[8]; /* of the weights of its last meeting */
    bool resyncing;
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
    bool req_pending, req_has_delta;
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
    /* an asynchronous contributor: the download under way and its compression residual */
    struct {
        bool on;
        uint8_t from[NS_NODE_ID_BYTES];
        float *w;
        size_t n, got;
        uint64_t round, round_ms, trainer_round;
        uint64_t progress_ms; /* the last part taken (or the start) */
        uint32_t restarts;
        uint8_t hash[NS_SHA256_BYTES];
    } fetch;
    uint64_t fetch_timer, base_round, base_ms, hello_soon_timer, join_timer;
    /* a member that starts afresh asks for the cohort's weights before its first step: it waits
     * one HELLO period to hear the cohort (join_waited), then downloads or trains alone */
    bool fresh_join, join_waited;
    /* a member whose weights left the cohort's (a round it missed, a late start): it downloads
     * them from `resync_from` at its next round */
    bool resync;
    uint8_t resync_from[NS_NODE_ID_BYTES];
    /* a member that just downloaded the cohort's weights sits out one round (announced, so
     * nobody counts it in) and downloads again after it: it then meets from a round whose start
     * the others reach long after they heard it, so every member agrees who meets */
    bool joining;
    ns_ef ef;
    /* a member: the contributions of asynchronous contributors for its next round */
    struct {
        uint8_t from[NS_NODE_ID_BYTES];
        float *v;
        double weight;
    } subs[DILOCO_SUBS_MAX];
    size_t sub_count;
    /* figures */
    uint64_t rounds, rounds_alone, rejected, fraud, dropped_out, frames_refused;
    uint64_t async_accepted, async_refused, submitted, downloads, served, seals_refused, reasks;
    uint64_t gets_seen; /* tests only: NEUROSHARD_TEST_CHEAT=drop-weights-get */
    ns_cohort_report last;
    /* the seals of the cohort messages received lately, by the message's SHA-256 (a ring) */
    struct {
        uint8_t hash[NS_SHA256_BYTES];
        uint8_t seal[NS_COHORT_SEAL_BYTES];
    } seals[DILOCO_SEALS_MAX];
    size_t seal_next;
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
    if (ts.layers == 0 || !ss.on)
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

/* The outer round of this node's weights and the first bytes of their hash. */
static bool own_round(ns_diloco *d, uint64_t *round, uint8_t prefix[8])
{
    ns_trainer *t = *d->cfg.trainer;
    if (t == NULL)
        return false;
    ns_train_sync_status ss;
    ns_trainer_sync_status(t, &ss);
    *round = ss.last_round;
    memcpy(prefix, ss.w0_hash, 8);
    return ss.on;
}

/* The cohort is every holder of this node's layers: besides the peers it is linked to, it links
 * to the holders of the same range that the DHT names (swarm.c publishes a LAYER_HOLDER record
 * under each held layer, its body starting with the range). */
static void want_cohort(ns_diloco *d, uint32_t layers, uint32_t hidden, uint32_t first,
                        uint32_t last)
{
    char topic[48];
    snprintf(topic, sizeof topic, "%ux%u/%u", layers, hidden, first);
    uint8_t range[4];
    put_be(range, first, 2);
    put_be(range + 2, last, 2);
    ns_net_want_holders(d->cfg.net, NS_RECORD_LAYER_HOLDER, topic, range, sizeof range);
}

static void send_hello(ns_diloco *d)
{
    uint32_t layers, hidden, first, last;
    uint64_t step, round;
    uint8_t prefix[8];
    if (d->cfg.async || !own_place(d, &layers, &hidden, &first, &last, &step) ||
        !own_round(d, &round, prefix))
        return; /* a contributor is no member of the rounds */
    want_cohort(d, layers, hidden, first, last);
    uint8_t b[DILOCO_HELLO_BYTES];
    b[0] = 2; /* version */
    put_be(b + 1, layers, 2);
    put_be(b + 3, hidden, 2);
    put_be(b + 5, first, 2);
    put_be(b + 7, last, 2);
    put_be(b + 9, d->cfg.sync_every, 4);
    put_be(b + 13, step, 8);
    put_be(b + 21, round, 8);
    memcpy(b + 29, prefix, 8);
    b[37] = (uint8_t)((d->resync ? 1 : 0) | (d->joining ? 2 : 0));
    ns_frame f = {.type = NS_FRAME_SYNC_HELLO, .body = b, .body_len = sizeof b};
    (void)ns_net_broadcast(d->cfg.net, &f, NULL);
}

static void hello_soon_fired(void *arg, uint64_t now)
{
    (void)now;
    ns_diloco *d = arg;
    d->hello_soon_timer = 0;
    send_hello(d);
}

static void hello_soon(ns_diloco *d)
{
    if (d->hello_soon_timer == 0)
        d->hello_soon_timer = ns_env_timer(&d->cfg.uvenv->env, now_ms(d) + DILOCO_HELLO_AFTER_MS,
                                           hello_soon_fired, d);
}

static bool same_model(ns_diloco *d, const cohort_peer *p)
{
    uint32_t layers, hidden, first, last;
    uint64_t step;
    return own_place(d, &layers, &hidden, &first, &last, &step) && p->layers == layers &&
           p->hidden == hidden && p->first == first && p->last == last &&
           p->every == d->cfg.sync_every;
}

/* A member whose weights are not the cohort's any more downloads them at its next round: when a
 * peer of the same round holds other weights and has the smaller id (so that of any two, one
 * gives way), or a peer is two rounds or more ahead (this node fell behind or started late). */
static void check_resync(ns_diloco *d)
{
    uint64_t round;
    uint8_t prefix[8];
    if (d->cfg.async || d->resync || d->joining || !own_round(d, &round, prefix))
        return;
    uint64_t now = now_ms(d);
    const cohort_peer *from = NULL;
    for (size_t i = 0; i < d->peer_count; i++) {
        const cohort_peer *p = &d->peers[i];
        if (now - p->seen_ms > DILOCO_FRESH_MS || p->resyncing || !same_model(d, p))
            continue;
        bool diverged = p->round == round && memcmp(p->w0_prefix, prefix, 8) != 0 &&
                        memcmp(p->id, d->cfg.key->node_id, NS_NODE_ID_BYTES) < 0;
        bool behind = p->round > round + 1;
        if ((diverged || behind) &&
            (from == NULL || p->round > from->round ||
             (p->round == from->round && memcmp(p->id, from->id, NS_NODE_ID_BYTES) < 0)))
            from = p;
    }
    if (from == NULL)
        return;
    d->resync = true;
    memcpy(d->resync_from, from->id, NS_NODE_ID_BYTES);
    char who[17];
    ns_hex_encode(who, sizeof who, from->id, 8);
    NS_LOG_W("sync",
             "this node's weights (round %llu) are not the cohort's: it downloads those of %s… "
             "(round %llu) at its next round",
             (unsigned long long)round, who, (unsigned long long)from->round);
    send_hello(d);
}

static void on_hello(ns_diloco *d, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len != DILOCO_HELLO_BYTES || f->body[0] != 2) {
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
    p->round = get_be(b + 21, 8);
    memcpy(p->w0_prefix, b + 29, 8);
    p->resyncing = (b[37] & 3) != 0; /* downloading, or sitting a round out after it */
    p->seen_ms = now_ms(d);
    check_resync(d);
}

/* This node and the peers heard lately that train the same layers of the same model with the
 * same H. For round `round` (0: all of them, for figures) only those that will meet in it: not
 * downloading, and either still on this node's weights of round - 1 or already past round (a
 * faster member that counted this node in). */
static size_t cohort_members(ns_diloco *d, uint8_t (*ids)[NS_NODE_ID_BYTES], uint64_t round)
{
    size_t n = 0;
    memcpy(ids[n++], d->cfg.key->node_id, NS_NODE_ID_BYTES);
    uint64_t mine;
    uint8_t prefix[8];
    if (!own_round(d, &mine, prefix))
        return n;
    uint64_t now = now_ms(d);
    for (size_t i = 0; i < d->peer_count; i++) {
        const cohort_peer *p = &d->peers[i];
        if (now - p->seen_ms > DILOCO_FRESH_MS || !same_model(d, p))
            continue;
        bool meets =
            round == 0 ||
            (!p->resyncing && ((p->round + 1 == round && memcmp(p->w0_prefix, prefix, 8) == 0) ||
                               p->round == round));
        if (meets)
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

/* Every cohort message leaves sealed (sync.h): the bytes, then this node's key and signature. */
static void cohort_send(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len)
{
    ns_diloco *d = arg;
    out_msg *m =
        d->out_count < DILOCO_OUTBOX_MAX ? malloc(sizeof *m + len + NS_COHORT_SEAL_BYTES) : NULL;
    if (m == NULL || ns_cohort_seal(d->cfg.key, msg, len, m->bytes + len) != NS_OK) {
        free(m);
        d->dropped_out++;
        return;
    }
    memcpy(m->to, to, NS_NODE_ID_BYTES);
    m->len = len + NS_COHORT_SEAL_BYTES;
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
    hello_soon(d); /* the others learn the new round and weights (a divergence shows there) */
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

/* A contribution screened as fraud: the sealed parts of its screen become a bundle any node can
 * judge (evidence.c), and the accused's proof of the round before is challenged (econ.c). */
static void cohort_evidence(void *arg, const uint8_t accused[NS_ID_BYTES], double sigma,
                            const ns_cohort_evidence *parts, size_t k)
{
    ns_diloco *d = arg;
    (void)sigma;
    ns_cohort_sealed sealed[NS_SYNC_GROUP_MAX];
    size_t n = 0;
    for (size_t i = 0; i < k && i < NS_SYNC_GROUP_MAX; i++) {
        sealed[n].msg = parts[i].msg;
        sealed[n].len = parts[i].len;
        bool found = false;
        if (memcmp(parts[i].from, d->cfg.key->node_id, NS_NODE_ID_BYTES) == 0) {
            found = ns_cohort_seal(d->cfg.key, parts[i].msg, parts[i].len, sealed[n].seal) == NS_OK;
        } else {
            uint8_t h[NS_SHA256_BYTES];
            ns_sha256(h, parts[i].msg, parts[i].len);
            for (size_t j = 0; j < DILOCO_SEALS_MAX && !found; j++) {
                if (memcmp(d->seals[j].hash, h, NS_SHA256_BYTES) == 0) {
                    memcpy(sealed[n].seal, d->seals[j].seal, NS_COHORT_SEAL_BYTES);
                    found = true;
                }
            }
        }
        n += found;
    }
    ns_cohort_part part;
    uint8_t *bundle = NULL;
    size_t len = 0;
    int rc = n > 0 ? ns_cohort_part_parse(sealed[0].msg, sealed[0].len, &part) : NS_EINVAL;
    if (rc == NS_OK)
        rc = ns_cohort_bundle_write(sealed, n, &bundle, &len);
    if (rc != NS_OK) {
        NS_LOG_W("sync", "no fraud bundle: %s (%zu sealed parts)", ns_strerror(rc), n);
        return;
    }
    if (d->cfg.econ != NULL && *d->cfg.econ != NULL)
        ns_econ_accuse(*d->cfg.econ, accused, part.round, bundle, len);
    free(bundle);
}

static bool cheats_poison(const ns_diloco *d)
{
    const char *c = d->cfg.cheat;
    return c != NULL && strstr(c, "poison") != NULL;
}

/* NEUROSHARD_TEST_CHEAT=drop-weights-get: a member that loses every other SYNC_WEIGHTS_GET, so
 * that tests see downloads ask again. */
static bool drops_this_get(ns_diloco *d)
{
    const char *c = d->cfg.cheat;
    return c != NULL && strstr(c, "drop-weights-get") != NULL && d->gets_seen++ % 2 == 0;
}

/* ---- asynchronous contributors and downloads ------------------------------------------------ */

/* The model and layers this node trains, as 8 bytes of GET and SUBMIT bodies. */
static bool put_place(ns_diloco *d, uint8_t *b)
{
    uint32_t layers, hidden, first, last;
    uint64_t step;
    if (!own_place(d, &layers, &hidden, &first, &last, &step))
        return false;
    put_be(b, layers, 2);
    put_be(b + 2, hidden, 2);
    put_be(b + 4, first, 2);
    put_be(b + 6, last, 2);
    return true;
}

static bool same_place(ns_diloco *d, const uint8_t *b)
{
    uint8_t mine[8];
    return put_place(d, mine) && memcmp(mine, b, sizeof mine) == 0;
}

/* The member a contributor works with: the one it downloaded from while it is heard, else the
 * smallest id of the cohort. false when none is known. */
static bool pick_member(ns_diloco *d, uint8_t out[NS_NODE_ID_BYTES])
{
    uint8_t(*ids)[NS_NODE_ID_BYTES] = malloc((DILOCO_PEERS_MAX + 1) * NS_NODE_ID_BYTES);
    size_t m = ids != NULL ? cohort_members(d, ids, 0) : 0;
    bool found = false;
    for (size_t i = 1; i < m; i++) { /* ids[0] is this node */
        if (memcmp(ids[i], d->fetch.from, NS_NODE_ID_BYTES) == 0) {
            memcpy(out, ids[i], NS_NODE_ID_BYTES);
            found = true;
            break;
        }
        if (!found || memcmp(ids[i], out, NS_NODE_ID_BYTES) < 0) {
            memcpy(out, ids[i], NS_NODE_ID_BYTES);
            found = true;
        }
    }
    free(ids);
    return found;
}

/* For a fresh member: the peer of its model and layers furthest ahead (round 1 or later; a
 * cohort still at round 0 holds the seed's weights, which this node has too). */
static bool pick_ahead(ns_diloco *d, uint8_t out[NS_NODE_ID_BYTES])
{
    const cohort_peer *from = NULL;
    uint64_t now = now_ms(d);
    for (size_t i = 0; i < d->peer_count; i++) {
        const cohort_peer *p = &d->peers[i];
        if (now - p->seen_ms > DILOCO_FRESH_MS || p->resyncing || !same_model(d, p) ||
            p->round == 0)
            continue;
        if (from == NULL || p->round > from->round ||
            (p->round == from->round && memcmp(p->id, from->id, NS_NODE_ID_BYTES) < 0))
            from = p;
    }
    if (from != NULL)
        memcpy(out, from->id, NS_NODE_ID_BYTES);
    return from != NULL;
}

static void fetch_end(ns_diloco *d, bool ok)
{
    if (d->fetch_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->fetch_timer);
    d->fetch_timer = 0;
    d->fetch.on = false;
    bool was_resync = d->resync || d->fresh_join, was_joining = d->joining;
    d->resync = false;
    d->fresh_join = false;
    /* a member's first download makes it sit the next round out, its second ends that */
    d->joining = !d->cfg.async && ok && was_resync && !was_joining;
    hello_soon(d);
    ns_trainer *t = *d->cfg.trainer;
    if (t == NULL)
        return;
    if (ok) {
        d->downloads++;
        d->base_round = d->fetch.round;
        d->base_ms = d->fetch.round_ms;
        ns_trainer_sync_weights(t, d->fetch.round, d->fetch.round_ms, d->fetch.w, d->fetch.n);
    } else {
        NS_LOG_W("sync", "the cohort's weights could not be downloaded: training on from these");
        ns_trainer_sync_result(t, d->fetch.trainer_round, NULL, 0);
    }
}

static void fetch_ask(ns_diloco *d);

/* No part for DILOCO_REASK_MS: the GET or the part was lost (a link that closed, a queue that
 * was full, a member between two trainers), so ask again; after DILOCO_FETCH_MS without a part
 * the member is given up. */
static void fetch_fired(void *arg, uint64_t now)
{
    ns_diloco *d = arg;
    d->fetch_timer = 0;
    if (!d->fetch.on)
        return;
    if (now - d->fetch.progress_ms >= DILOCO_FETCH_MS) {
        fetch_end(d, false);
        return;
    }
    d->reasks++;
    fetch_ask(d);
}

/* Asks for the part at `got`; a GET that cannot be sent now is sent again by the timer. */
static void fetch_ask(ns_diloco *d)
{
    uint8_t b[DILOCO_GET_BYTES];
    b[0] = 1;
    if (!put_place(d, b + 1)) {
        fetch_end(d, false);
        return;
    }
    put_be(b + 9, d->fetch.got, 8);
    ns_frame f = {.type = NS_FRAME_SYNC_WEIGHTS_GET, .body = b, .body_len = sizeof b};
    if (ns_net_send_frame(d->cfg.net, d->fetch.from, &f) != NS_OK)
        NS_LOG_D("sync", "no link for a weights request now: asked again in %u ms",
                 DILOCO_REASK_MS);
    if (d->fetch_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->fetch_timer);
    d->fetch_timer = ns_env_timer(&d->cfg.uvenv->env, now_ms(d) + DILOCO_REASK_MS, fetch_fired, d);
}

/* Asks `member` for the weights of its last meeting, to answer the trainer's round with. */
static void download(ns_diloco *d, const uint8_t member[NS_NODE_ID_BYTES])
{
    size_t total = 2 * d->req_n; /* w0, then the momentum */
    float *w = d->fetch.n == total ? d->fetch.w : realloc(d->fetch.w, total * sizeof *w);
    if (w == NULL) {
        d->resync = false;
        if (*d->cfg.trainer != NULL)
            ns_trainer_sync_result(*d->cfg.trainer, d->req_round, NULL, 0);
        return;
    }
    d->fetch.w = w;
    d->fetch.n = total;
    d->fetch.got = 0;
    d->fetch.on = true;
    d->fetch.trainer_round = d->req_round;
    d->fetch.progress_ms = now_ms(d);
    d->fetch.restarts = 0;
    memcpy(d->fetch.from, member, NS_NODE_ID_BYTES);
    fetch_ask(d);
}

/* A contributor's round: submit Δ (unless this is the first download) to a member, then
 * download that member's weights to start again from. */
static void contribute(ns_diloco *d, bool has_delta)
{
    ns_trainer *t = *d->cfg.trainer;
    uint8_t member[NS_NODE_ID_BYTES];
    if (t == NULL)
        return;
    if (!pick_member(d, member)) { /* no member heard of: train on alone */
        d->rounds_alone++;
        ns_trainer_sync_result(t, d->req_round, NULL, 0);
        return;
    }
    if (has_delta) {
        if (d->ef.n != d->req_n) {
            ns_ef_free(&d->ef);
            if (ns_ef_init(&d->ef, d->req_n) != NS_OK)
                d->ef.n = 0;
        }
        if (cheats_poison(d)) {
            NS_LOG_W("sync", "NEUROSHARD_TEST_CHEAT=poison: this contributor sends its "
                             "pseudo-gradient x -100");
            for (size_t i = 0; i < d->req_n; i++)
                d->req_delta[i] *= -100.0f;
        }
        ns_compress_config cc;
        ns_compress_config_default(&cc);
        if (d->cfg.density > 0)
            cc.density = d->cfg.density;
        uint8_t *blob = NULL;
        size_t len = 0;
        uint8_t b[DILOCO_SUBMIT_BYTES];
        b[0] = 1;
        if (put_place(d, b + 1) &&
            ns_compress_encode(&cc, d->req_delta, d->req_n, d->ef.n == d->req_n ? &d->ef : NULL,
                               &blob, &len) == NS_OK &&
            len <= UINT32_MAX) {
            put_be(b + 9, d->base_round, 8);
            put_be(b + 17, d->base_ms, 8);
            put_be(b + 25, d->cfg.sync_every, 4);
            ns_frame f = {.type = NS_FRAME_SYNC_SUBMIT,
                          .body = b,
                          .body_len = sizeof b,
                          .tensor = {.dtype = NS_DTYPE_U8,
                                     .ndim = 1,
                                     .shape = {(uint32_t)len},
                                     .data = blob,
                                     .bytes = len}};
            if (ns_net_send_frame(d->cfg.net, member, &f) == NS_OK) {
                d->submitted++;
                NS_LOG_I("sync", "submitted a pseudo-gradient of %zu bytes (base round %llu)", len,
                         (unsigned long long)d->base_round);
            }
        }
        free(blob);
    }
    download(d, member);
}

static void on_weights_part(ns_diloco *d, const uint8_t *peer, const ns_frame *f)
{
    if (!d->fetch.on || memcmp(peer, d->fetch.from, NS_NODE_ID_BYTES) != 0 ||
        f->body_len != DILOCO_PART_BYTES || f->body[0] != 1 || f->tensor.dtype != NS_DTYPE_F32 ||
        f->tensor.ndim != 1) {
        d->frames_refused++;
        return;
    }
    const uint8_t *b = f->body;
    uint64_t round = get_be(b + 1, 8), round_ms = get_be(b + 9, 8), n = get_be(b + 17, 8);
    uint64_t offset = get_be(b + 25, 8), count = f->tensor.shape[0];
    if (n != d->fetch.n || count == 0 || offset > n || count > n - offset) {
        d->frames_refused++;
        fetch_end(d, false); /* not the weights of this node's model: the member lies */
        return;
    }
    if (offset < d->fetch.got)
        return; /* an answer to a GET asked again, whose part came already: no news */
    if (offset > d->fetch.got) {
        d->frames_refused++; /* never asked for */
        return;
    }
    if (offset > 0 &&
        (round != d->fetch.round || memcmp(b + 33, d->fetch.hash, NS_SHA256_BYTES) != 0)) {
        /* the member met again between two parts: its weights moved on, start over */
        if (++d->fetch.restarts > DILOCO_RESTARTS_MAX) {
            fetch_end(d, false);
            return;
        }
        d->fetch.got = 0;
        d->fetch.progress_ms = now_ms(d);
        fetch_ask(d);
        return;
    }
    d->fetch.round = round;
    d->fetch.round_ms = round_ms;
    memcpy(d->fetch.hash, b + 33, NS_SHA256_BYTES);
    memcpy(d->fetch.w + offset, f->tensor.data, count * sizeof(float));
    d->fetch.got += count;
    d->fetch.progress_ms = now_ms(d);
    if (d->fetch.got < d->fetch.n) {
        fetch_ask(d);
        return;
    }
    uint8_t h[NS_SHA256_BYTES];
    size_t half = d->fetch.n / 2;
    ns_train_outer_state_hash(d->fetch.w, d->fetch.w + half, half, h);
    bool whole = memcmp(h, d->fetch.hash, NS_SHA256_BYTES) == 0;
    for (size_t i = 0; whole && i < d->fetch.n; i++)
        whole = isfinite(d->fetch.w[i]);
    if (!whole)
        NS_LOG_W("sync", "downloaded weights do not match their hash: refused");
    fetch_end(d, whole);
}

/* A member serves the weights of its last meeting. */
static void on_weights_get(ns_diloco *d, const uint8_t *peer, const ns_frame *f)
{
    ns_trainer *t = *d->cfg.trainer;
    if (f->body_len != DILOCO_GET_BYTES || f->body[0] != 1 || t == NULL || d->cfg.async ||
        !same_place(d, f->body + 1)) {
        d->frames_refused++;
        return;
    }
    if (drops_this_get(d))
        return;
    uint64_t offset = get_be(f->body + 9, 8), round, round_ms;
    size_t n = 0;
    uint8_t hash[NS_SHA256_BYTES];
    if (ns_trainer_outer_copy(t, 0, 0, NULL, &n, &round, &round_ms, hash) != NS_OK ||
        offset >= 2 * (uint64_t)n) {
        d->frames_refused++;
        return;
    }
    size_t total = 2 * n; /* w0, then the momentum */
    size_t count = total - offset < DILOCO_PART_FLOATS ? total - offset : DILOCO_PART_FLOATS;
    float *buf = malloc(count * sizeof *buf);
    if (buf == NULL ||
        ns_trainer_outer_copy(t, offset, count, buf, &n, &round, &round_ms, hash) != NS_OK) {
        free(buf);
        return;
    }
    uint8_t b[DILOCO_PART_BYTES];
    b[0] = 1;
    put_be(b + 1, round, 8);
    put_be(b + 9, round_ms, 8);
    put_be(b + 17, 2 * (uint64_t)n, 8);
    put_be(b + 25, offset, 8);
    memcpy(b + 33, hash, NS_SHA256_BYTES);
    ns_frame out = {.type = NS_FRAME_SYNC_WEIGHTS_PART,
                    .body = b,
                    .body_len = sizeof b,
                    .tensor = {.dtype = NS_DTYPE_F32,
                               .ndim = 1,
                               .shape = {(uint32_t)count},
                               .data = (const uint8_t *)buf,
                               .bytes = count * sizeof *buf}};
    if (ns_net_send_frame(d->cfg.net, peer, &out) == NS_OK && offset == 0)
        d->served++;
    free(buf);
}

/* A member keeps a contributor's submission for its next round (the latest of each). */
static void on_submit(ns_diloco *d, const uint8_t *peer, const ns_frame *f)
{
    ns_trainer *t = *d->cfg.trainer;
    size_t n = 0;
    uint64_t round, round_ms;
    uint8_t hash[NS_SHA256_BYTES];
    if (f->body_len != DILOCO_SUBMIT_BYTES || f->body[0] != 1 || f->tensor.dtype != NS_DTYPE_U8 ||
        f->tensor.ndim != 1 || t == NULL || d->cfg.async || !same_place(d, f->body + 1) ||
        ns_trainer_outer_copy(t, 0, 0, NULL, &n, &round, &round_ms, hash) != NS_OK) {
        d->frames_refused++;
        return;
    }
    uint64_t base_round = get_be(f->body + 9, 8), base_ms = get_be(f->body + 17, 8);
    uint64_t batches = get_be(f->body + 25, 4), now = now_ms(d);
    if (base_round > round || base_ms > now + 60000 || batches == 0) {
        d->async_refused++; /* from weights this member never had, or from the future */
        return;
    }
    float *v = malloc(n * sizeof *v);
    if (v == NULL || ns_compress_decode(f->tensor.data, f->tensor.bytes, v, n) != NS_OK) {
        free(v);
        d->async_refused++;
        NS_LOG_W("sync", "an asynchronous contribution that does not decode to %zu floats: refused",
                 n);
        return;
    }
    size_t slot = d->sub_count;
    for (size_t i = 0; i < d->sub_count; i++)
        if (memcmp(d->subs[i].from, peer, NS_NODE_ID_BYTES) == 0)
            slot = i;
    if (slot == DILOCO_SUBS_MAX) { /* full: the oldest goes */
        free(d->subs[0].v);
        memmove(&d->subs[0], &d->subs[1], (DILOCO_SUBS_MAX - 1) * sizeof d->subs[0]);
        slot = DILOCO_SUBS_MAX - 1;
        d->sub_count--;
    }
    if (slot < d->sub_count)
        free(d->subs[slot].v);
    else
        d->sub_count++;
    memcpy(d->subs[slot].from, peer, NS_NODE_ID_BYTES);
    d->subs[slot].v = v;
    d->subs[slot].weight = ns_sync_weight(batches, now > base_ms ? now - base_ms : 0);
}

/* A member at its round: each kept contribution that passes the checks against this member's
 * own Δ joins it, weighted; the others are refused. */
static void fold_contributions(ns_diloco *d)
{
    double total = d->req_weight;
    for (size_t k = 0; k < d->sub_count; k++) {
        ns_grad_check gc = {0};
        char who[17];
        ns_hex_encode(who, sizeof who, d->subs[k].from, 8);
        bool ok = ns_grad_check_run(d->subs[k].v, d->req_delta, d->req_n, &gc) == NS_OK &&
                  gc.magnitude <= NS_GRAD_MAGNITUDE_MAX && gc.variance <= NS_GRAD_VARIANCE_MAX &&
                  gc.cosine > 0.0;
        if (!ok) {
            d->async_refused++;
            NS_LOG_W("sync",
                     "the asynchronous contribution of %s… is refused (cosine %.2f, magnitude "
                     "x%.1f, variance x%.1f)",
                     who, gc.cosine, gc.magnitude, gc.variance);
            continue;
        }
        double w = d->subs[k].weight;
        for (size_t i = 0; i < d->req_n; i++)
            d->req_delta[i] =
                (float)(((double)d->req_delta[i] * total + d->subs[k].v[i] * w) / (total + w));
        total += w;
        d->async_accepted++;
        NS_LOG_I("sync", "folded the asynchronous contribution of %s… (weight %.2f)", who, w);
    }
    for (size_t k = 0; k < d->sub_count; k++)
        free(d->subs[k].v);
    d->sub_count = 0;
    d->req_weight = total;
}

static void take_held(ns_diloco *d);

/* Starts the round the trainer asked for (loop thread). */
static void start_round(ns_diloco *d);

static void join_fired(void *arg, uint64_t now)
{
    (void)now;
    ns_diloco *d = arg;
    d->join_timer = 0;
    start_round(d);
}

static void start_round(ns_diloco *d)
{
    pthread_mutex_lock(&d->mu);
    bool pending = d->req_pending, has_delta = d->req_has_delta;
    d->req_pending = false;
    pthread_mutex_unlock(&d->mu);
    if (!pending)
        return;
    if (d->cfg.async) {
        contribute(d, has_delta);
        return;
    }
    if (d->resync || d->joining || !has_delta) { /* this round: the cohort's weights */
        uint8_t from[NS_NODE_ID_BYTES];
        if (d->resync)
            memcpy(from, d->resync_from, NS_NODE_ID_BYTES);
        bool fresh = !has_delta && !d->resync && !d->joining && !d->cfg.async;
        if (d->resync || (fresh ? pick_ahead(d, from) : pick_member(d, from))) {
            if (fresh) {
                char who[17];
                ns_hex_encode(who, sizeof who, from, 8);
                NS_LOG_I("sync",
                         "a fresh start: this node downloads the cohort's weights from "
                         "%s… before its first step",
                         who);
                d->fresh_join = true;
                d->join_waited = false;
            }
            download(d, from);
            return;
        }
        d->joining = false; /* nobody to download from: meet whoever is there */
        if (!has_delta && !d->join_waited && d->peer_count == 0 &&
            (d->cfg.expect_peers || ns_dht_contact_count(ns_net_dht(d->cfg.net)) > 0)) {
            /* a fresh member with peers but no cohort heard yet: listen one HELLO period */
            d->join_waited = true;
            pthread_mutex_lock(&d->mu);
            d->req_pending = true;
            pthread_mutex_unlock(&d->mu);
            d->join_timer = ns_env_timer(&d->cfg.uvenv->env, now_ms(d) + DILOCO_FRESH_MS / 2 + 500,
                                         join_fired, d);
            return;
        }
        if (!has_delta) { /* nobody heard: it trains from its own weights */
            d->join_waited = false;
            NS_LOG_I("sync", "a fresh start and no cohort heard: this node trains from its own "
                             "weights");
            if (*d->cfg.trainer != NULL)
                ns_trainer_sync_result(*d->cfg.trainer, d->req_round, NULL, 0);
            return;
        }
    }
    uint8_t(*ids)[NS_NODE_ID_BYTES] = malloc((DILOCO_PEERS_MAX + 1) * NS_NODE_ID_BYTES);
    size_t m = ids != NULL ? cohort_members(d, ids, d->req_round) : 0;
    ns_trainer *t = *d->cfg.trainer;
    if (m <= 1 || t == NULL) { /* no other member: the inner weights stand... */
        free(ids);
        d->rounds_alone++;
        if (t == NULL)
            return;
        uint64_t accepted = d->async_accepted;
        if (d->sub_count > 0)
            fold_contributions(d);
        /* ...unless asynchronous contributors sent work: with them this member is the round's
         * cohort, and it takes the outer step with their weighted mean */
        if (d->async_accepted > accepted)
            ns_trainer_sync_result(t, d->req_round, d->req_delta, d->req_n);
        else
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
                               .verdict = cohort_verdict,
                               .evidence = cohort_evidence};
        memcpy(cc.self_id, d->cfg.key->node_id, NS_NODE_ID_BYTES);
        ns_compress_config_default(&cc.compress);
        /* int8 + zstd, no top-k: a chunk owner's aggregate is compressed again without error
         * feedback, so a 1 % top-k there keeps 1 % of each round's update for good and DiLoCo
         * stops converging (docs/experiments.md); int8 alone still sends 1/500 of synchronous
         * data parallel's bytes at H = 500 */
        cc.compress.density = d->cfg.density > 0 ? d->cfg.density : 1.0;
        ns_agg_config_default(&cc.agg);
        cc.agg.kind = d->cfg.aggregator;
        rc = ns_cohort_new(&d->cohort, &cc, d->req_n, &d->cfg.uvenv->env);
        d->cohort_n = rc == NS_OK ? d->req_n : 0;
    }
    if (rc == NS_OK && d->sub_count > 0)
        fold_contributions(d);
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
        d->req_has_delta = delta != NULL;
        if (delta != NULL)
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

/* A cohort message's seal must be its sender's (the link's peer); it is kept for a bundle. */
static bool seal_ok(ns_diloco *d, const uint8_t peer[NS_NODE_ID_BYTES], const uint8_t *msg,
                    size_t len)
{
    uint8_t signer[NS_NODE_ID_BYTES];
    if (ns_cohort_seal_check(msg, len, msg + len, signer) != NS_OK ||
        memcmp(signer, peer, NS_NODE_ID_BYTES) != 0)
        return false;
    size_t i = d->seal_next++ % DILOCO_SEALS_MAX;
    ns_sha256(d->seals[i].hash, msg, len);
    memcpy(d->seals[i].seal, msg + len, NS_COHORT_SEAL_BYTES);
    return true;
}

static void on_frame(void *arg, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f)
{
    ns_diloco *d = arg;
    if (f->type == NS_FRAME_SYNC_HELLO) {
        on_hello(d, peer, f);
    } else if (f->type == NS_FRAME_SYNC_MSG) {
        size_t len = f->tensor.bytes - NS_COHORT_SEAL_BYTES;
        if (f->tensor.dtype != NS_DTYPE_U8 || f->tensor.ndim != 1 ||
            f->tensor.bytes <= NS_COHORT_SEAL_BYTES)
            d->frames_refused++;
        else if (!seal_ok(d, peer, f->tensor.data, len))
            d->seals_refused++;
        else if (d->cohort == NULL)
            hold(d, peer, f->tensor.data, len);
        else if (ns_cohort_on_message(d->cohort, peer, f->tensor.data, len) != NS_OK)
            d->frames_refused++;
    } else if (f->type == NS_FRAME_SYNC_SUBMIT) {
        on_submit(d, peer, f);
    } else if (f->type == NS_FRAME_SYNC_WEIGHTS_GET) {
        on_weights_get(d, peer, f);
    } else if (f->type == NS_FRAME_SYNC_WEIGHTS_PART) {
        on_weights_part(d, peer, f);
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
    free(d->fetch.w);
    ns_ef_free(&d->ef);
    for (size_t k = 0; k < d->sub_count; k++)
        free(d->subs[k].v);
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
    if (d->fetch_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->fetch_timer);
    if (d->hello_soon_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->hello_soon_timer);
    if (d->join_timer != 0)
        ns_env_timer_cancel(&d->cfg.uvenv->env, d->join_timer);
    ns_cohort_free(d->cohort); /* cancels its timers */
    d->cohort = NULL;
    pthread_mutex_lock(&d->mu);
    d->closing = true;
    pthread_mutex_unlock(&d->mu);
    uv_close((uv_handle_t *)&d->async, free_on_close);
}

void ns_diloco_set_async(ns_diloco *d, bool async)
{
    if (d == NULL || d->cfg.async == async)
        return;
    d->cfg.async = async;
    d->resync = d->joining = d->fresh_join = false;
    hello_soon(d);
}

json_t *ns_diloco_json(ns_diloco *d)
{
    uint8_t(*ids)[NS_NODE_ID_BYTES] = malloc((DILOCO_PEERS_MAX + 1) * NS_NODE_ID_BYTES);
    size_t members = ids != NULL ? cohort_members(d, ids, 0) : 0;
    free(ids);
    json_t *refused = json_object();
    for (int r = 0; d->cohort != NULL && r < NS_COHORT_REFUSE_COUNT_; r++)
        json_object_set_new(
            refused, ns_cohort_refusal_text((ns_cohort_refusal)r),
            json_integer((json_int_t)ns_cohort_refusals(d->cohort, (ns_cohort_refusal)r)));
    json_object_set_new(refused, "bad seal", json_integer((json_int_t)d->seals_refused));
    return json_pack(
        "{s:I, s:s, s:I, s:I, s:I, s:b, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, "
        "s:I, s:I}, s:o, s:I, s:s, s:b, s:{s:I, s:I, s:I, s:I, s:I, s:I}}",
        "every", (json_int_t)d->cfg.sync_every, "aggregator", ns_agg_name(d->cfg.aggregator),
        "cohort", (json_int_t)members, "rounds", (json_int_t)d->rounds, "rounds_alone",
        (json_int_t)d->rounds_alone, "running", d->running, "rejected", (json_int_t)d->rejected,
        "fraud", (json_int_t)d->fraud, "frames_refused", (json_int_t)d->frames_refused,
        "last_round", "round", (json_int_t)d->last.round, "members", (json_int_t)d->last.members,
        "phases", (json_int_t)d->last.phases, "contributions", (json_int_t)d->last.contributions,
        "missing_chunks", (json_int_t)d->last.missing_chunks, "bytes_sent",
        (json_int_t)d->last.bytes_sent, "bytes_received", (json_int_t)d->last.bytes_received,
        "refused", refused, "messages_dropped", (json_int_t)d->dropped_out, "role",
        d->cfg.async ? "async" : "member", "resyncing", d->resync, "async", "accepted",
        (json_int_t)d->async_accepted, "refused", (json_int_t)d->async_refused, "submitted",
        (json_int_t)d->submitted, "downloads", (json_int_t)d->downloads, "reasks",
        (json_int_t)d->reasks, "served", (json_int_t)d->served);
}
