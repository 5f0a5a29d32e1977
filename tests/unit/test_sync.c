/*
 * test_sync.c: DiLoCo's outer loop and the cohort exchange (SPEC S7, S8).
 *
 * The pure parts first (inner steps, freshness, weights, the outer Nesterov step against numbers
 * worked by hand). Then whole cohorts in one process on one hand-driven clock: every core's send
 * puts a copy of the message on a queue that the test delivers in order, dropping what a test
 * wants lost, so timeouts, dead owners, held messages, refusals and a poisoned member are all
 * played out message by message.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "neuroshard/sync.h"
#include "support/testutil.h"

#define T0_MS      1800000000000ull
#define TIMEOUT_MS 1000u
#define NODES_MAX  40
#define N_MAX      256
#define HOUR_MS    (3600ull * 1000)
#define DAY_MS     (24 * HOUR_MS)
#define WEEK_MS    (7 * DAY_MS)

/* The wire layout of cohort.c's messages, for the tests that forge them. */
#define OFF_TYPE    0
#define OFF_VERSION 1
#define OFF_PHASE   2
#define OFF_LANE    4
#define OFF_CHUNK   8
#define OFF_ROUND   12
#define OFF_FIRST   20
#define OFF_WEIGHT  36
#define OFF_HASH    44
#define HEADER      76
#define TYPE_PART   1
#define TYPE_RESULT 2

/* ---- the pure parts ----------------------------------------------------------------------- */

static void test_inner_steps_follow_the_swarm_size(void **state)
{
    (void)state;
    assert_int_equal(ns_sync_inner_steps(0), 100);
    assert_int_equal(ns_sync_inner_steps(9), 100);
    assert_int_equal(ns_sync_inner_steps(10), 500);
    assert_int_equal(ns_sync_inner_steps(99), 500);
    assert_int_equal(ns_sync_inner_steps(100), 1000);
    assert_int_equal(ns_sync_inner_steps(1000000), 1000);
}

static void test_freshness_steps_down_at_hour_day_and_week(void **state)
{
    (void)state;
    const struct {
        uint64_t age_ms;
        double want;
    } table[] = {{0, 1.0},      {HOUR_MS - 1, 1.0}, {HOUR_MS, 0.9}, {DAY_MS - 1, 0.9},
                 {DAY_MS, 0.7}, {WEEK_MS - 1, 0.7}, {WEEK_MS, 0.3}, {UINT64_MAX, 0.3}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        assert_true(ns_sync_freshness(table[i].age_ms) == table[i].want);
}

static void test_weight_is_sqrt_batches_times_freshness(void **state)
{
    (void)state;
    assert_true(ns_sync_weight(4, 0) == 2.0);
    assert_true(fabs(ns_sync_weight(9, DAY_MS) - 2.1) < 1e-12);
    assert_true(fabs(ns_sync_weight(100, WEEK_MS) - 3.0) < 1e-12);
    assert_true(ns_sync_weight(0, 0) == 0.0);
}

static void assert_close(const float *got, const double *want, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++) {
        if (fabs((double)got[i] - want[i]) > tol)
            fail_msg("at %zu: got %.7f want %.7f", i, (double)got[i], want[i]);
    }
}

/* m <- 0.9 m + agg; w <- w0 - 0.7 (0.9 m + agg); worked by hand for three rounds. */
static void test_outer_step_matches_hand_computed_nesterov_over_three_rounds(void **state)
{
    (void)state;
    const float w_start[2] = {1.0f, -2.0f};
    ns_outer o;
    assert_int_equal(ns_outer_init(&o, w_start, 2, 0.9, 0.7), NS_OK);
    float w[2];
    const float agg1[2] = {0.1f, -0.2f}, agg2[2] = {0.1f, 0.4f}, agg3[2] = {0.0f, 0.0f};
    assert_int_equal(ns_outer_apply(&o, agg1, w), NS_OK);
    const double m1[2] = {0.1, -0.2}, w1[2] = {0.867, -1.734};
    assert_close(o.momentum, m1, 2, 1e-6);
    assert_close(w, w1, 2, 1e-6);
    assert_close(o.w0, w1, 2, 1e-6);
    assert_int_equal(ns_outer_apply(&o, agg2, w), NS_OK);
    const double m2[2] = {0.19, 0.22}, w2[2] = {0.6773, -2.1526};
    assert_close(o.momentum, m2, 2, 1e-6);
    assert_close(w, w2, 2, 1e-6);
    assert_int_equal(ns_outer_apply(&o, agg3, w), NS_OK);
    const double m3[2] = {0.171, 0.198}, w3[2] = {0.56957, -2.27734};
    assert_close(o.momentum, m3, 2, 1e-6);
    assert_close(w, w3, 2, 1e-6);
    assert_int_equal(o.round, 3);

    const float trained[2] = {0.5f, -2.5f};
    float delta[2];
    ns_outer_delta(&o, trained, delta);
    const double want_delta[2] = {0.06957, 0.22266};
    assert_close(delta, want_delta, 2, 1e-6);
    ns_outer_free(&o);
    ns_outer_free(NULL);
}

static void test_outer_refuses_bad_input_and_changes_nothing(void **state)
{
    (void)state;
    const float w_ok[2] = {1.0f, 2.0f}, w_nan[2] = {1.0f, NAN};
    ns_outer o;
    assert_int_equal(ns_outer_init(&o, w_ok, 0, 0.9, 0.7), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_nan, 2, 0.9, 0.7), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_ok, 2, 1.0, 0.7), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_ok, 2, -0.1, 0.7), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_ok, 2, NAN, 0.7), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_ok, 2, 0.9, 0.0), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_ok, 2, 0.9, INFINITY), NS_EINVAL);
    assert_int_equal(ns_outer_init(&o, w_ok, 2, 0.0, 0.7), NS_OK); /* beta 0: plain SGD */

    const float bad[2] = {0.5f, INFINITY};
    float w[2] = {7.0f, 7.0f};
    assert_int_equal(ns_outer_apply(&o, bad, w), NS_EINVAL);
    assert_true(w[0] == 7.0f && w[1] == 7.0f);
    assert_true(o.w0[0] == 1.0f && o.w0[1] == 2.0f);
    assert_true(o.momentum[0] == 0.0f && o.momentum[1] == 0.0f);
    assert_int_equal(o.round, 0);
    ns_outer_free(&o);
}

static void test_outer_rebase_keeps_or_resets_momentum_and_changes_the_hash(void **state)
{
    (void)state;
    const float w_start[3] = {1.0f, 2.0f, 3.0f}, agg[3] = {1.0f, 1.0f, 1.0f};
    ns_outer o;
    assert_int_equal(ns_outer_init(&o, w_start, 3, NS_SYNC_BETA, NS_SYNC_LR), NS_OK);
    uint8_t h0[NS_SHA256_BYTES], want[NS_SHA256_BYTES], h1[NS_SHA256_BYTES];
    ns_outer_w0_hash(&o, h0);
    const uint8_t bytes[12] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40}; /* 1, 2, 3 */
    ns_sha256(want, bytes, sizeof bytes);
    assert_memory_equal(h0, want, NS_SHA256_BYTES);

    float w[3];
    assert_int_equal(ns_outer_apply(&o, agg, w), NS_OK);
    const float downloaded[3] = {5.0f, 6.0f, 7.0f};
    ns_outer_rebase(&o, downloaded, false);
    assert_true(o.w0[0] == 5.0f && o.w0[2] == 7.0f);
    assert_true(o.momentum[0] == 1.0f);
    ns_outer_w0_hash(&o, h1);
    assert_memory_not_equal(h0, h1, NS_SHA256_BYTES);
    ns_outer_rebase(&o, downloaded, true);
    assert_true(o.momentum[0] == 0.0f && o.momentum[1] == 0.0f && o.momentum[2] == 0.0f);
    ns_outer_free(&o);
}

/* ---- a cohort in one process -------------------------------------------------------------- */

typedef struct net net;

typedef struct node {
    net *net;
    uint32_t index;
    uint8_t id[NS_ID_BYTES];
    ns_cohort *c;
    int dones;
    float agg[N_MAX];
    ns_cohort_report report;
    bool silent;     /* every message it sends is lost */
    bool no_results; /* its RESULTs are lost */
    float inflate;   /* a lying owner: its RESULTs carry its aggregate times this (0: honest) */
    uint64_t bytes_sent_seen, bytes_delivered;
    int verdicts;
    int verdicts_from[NODES_MAX];
    ns_agg_verdict last_verdict;
    size_t evidence_len;
    /* the first fraud's evidence (config.evidence): copies of the parts and their senders */
    int evidences;
    uint8_t accused[NS_ID_BYTES];
    size_t parts;
    uint8_t *part_msg[NS_SYNC_GROUP_MAX];
    size_t part_len[NS_SYNC_GROUP_MAX];
    uint8_t part_from[NS_SYNC_GROUP_MAX][NS_ID_BYTES];
} node;

typedef struct queued {
    uint32_t from, to;
    uint8_t *msg;
    size_t len;
} queued;

struct net {
    ns_fake_env fake;
    size_t n;
    uint32_t count;
    node nodes[NODES_MAX];
    queued *queue;
    size_t head, tail, cap;
    bool hold; /* keep what is sent on the queue; pump delivers */
    uint8_t w0_hash[NS_SHA256_BYTES];
    float delta[NODES_MAX][N_MAX];
    double weight[NODES_MAX];
};

static void id_of(uint8_t id[NS_ID_BYTES], uint32_t index)
{
    memset(id, 0, NS_ID_BYTES);
    id[0] = (uint8_t)(index + 1);
    id[1] = 0xab;
}

static int node_of(const net *t, const uint8_t id[NS_ID_BYTES])
{
    for (uint32_t i = 0; i < t->count; i++) {
        if (memcmp(t->nodes[i].id, id, NS_ID_BYTES) == 0)
            return (int)i;
    }
    return -1;
}

static void net_send(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len)
{
    node *self = arg;
    net *t = self->net;
    self->bytes_sent_seen += len;
    if (self->silent || (self->no_results && msg[OFF_TYPE] == TYPE_RESULT))
        return;
    int dest = node_of(t, to);
    assert_true(dest >= 0);
    assert_true((uint32_t)dest != self->index);
    if (t->tail == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->queue = realloc(t->queue, t->cap * sizeof *t->queue);
        assert_non_null(t->queue);
    }
    uint8_t *copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, msg, len);
    if (self->inflate != 0.0f && msg[OFF_TYPE] == TYPE_RESULT) { /* the same header, a new blob */
        uint64_t length;
        memcpy(&length, msg + OFF_FIRST + 8, 8);
        float v[N_MAX];
        assert_true(length <= N_MAX);
        assert_int_equal(ns_compress_decode(msg + HEADER, len - HEADER, v, length), NS_OK);
        for (size_t i = 0; i < length; i++)
            v[i] *= self->inflate;
        ns_compress_config cc;
        ns_compress_config_default(&cc);
        cc.density = 1.0;
        uint8_t *blob;
        size_t blob_len;
        assert_int_equal(ns_compress_encode(&cc, v, length, NULL, &blob, &blob_len), NS_OK);
        copy = realloc(copy, HEADER + blob_len);
        assert_non_null(copy);
        memcpy(copy + HEADER, blob, blob_len);
        len = HEADER + blob_len;
        free(blob);
    }
    t->queue[t->tail++] =
        (queued){.from = self->index, .to = (uint32_t)dest, .msg = copy, .len = len};
}

static void net_done(void *arg, const float *agg, size_t n, const ns_cohort_report *report)
{
    node *self = arg;
    assert_true(n <= N_MAX);
    memcpy(self->agg, agg, n * sizeof *agg);
    self->report = *report;
    self->dones++;
}

static void net_verdict(void *arg, const uint8_t from[NS_ID_BYTES], ns_agg_verdict verdict,
                        double sigma, const uint8_t *msg, size_t len)
{
    node *self = arg;
    int i = node_of(self->net, from);
    assert_true(i >= 0);
    assert_true(sigma > 0.0);
    assert_non_null(msg);
    assert_int_equal(msg[OFF_TYPE], TYPE_PART);
    self->verdicts++;
    self->verdicts_from[i]++;
    self->last_verdict = verdict;
    self->evidence_len = len;
}

static void net_evidence(void *arg, const uint8_t accused[NS_ID_BYTES], double sigma,
                         const ns_cohort_evidence *parts, size_t k)
{
    node *self = arg;
    assert_true(sigma > 5.0);
    assert_true(k >= 1 && k <= NS_SYNC_GROUP_MAX);
    if (self->evidences++ > 0)
        return;
    memcpy(self->accused, accused, NS_ID_BYTES);
    self->parts = k;
    for (size_t i = 0; i < k; i++) {
        assert_int_equal(parts[i].msg[OFF_TYPE], TYPE_PART);
        self->part_msg[i] = malloc(parts[i].len);
        assert_non_null(self->part_msg[i]);
        memcpy(self->part_msg[i], parts[i].msg, parts[i].len);
        self->part_len[i] = parts[i].len;
        memcpy(self->part_from[i], parts[i].from, NS_ID_BYTES);
    }
}

typedef struct net_options {
    uint32_t group_max;
    double density;
    bool screen; /* the default sigmas; otherwise nothing is rejected */
    ns_agg_kind kind;
    bool error_feedback;
} net_options;

static ns_cohort_config config_for(node *nd, const net_options *opt)
{
    ns_cohort_config cfg = {.group_max = opt->group_max,
                            .timeout_ms = TIMEOUT_MS,
                            .error_feedback = opt->error_feedback,
                            .arg = nd,
                            .send = net_send,
                            .done = net_done,
                            .verdict = net_verdict,
                            .evidence = net_evidence};
    memcpy(cfg.self_id, nd->id, NS_ID_BYTES);
    ns_compress_config_default(&cfg.compress);
    cfg.compress.density = opt->density;
    ns_agg_config_default(&cfg.agg);
    cfg.agg.kind = opt->kind;
    if (!opt->screen)
        cfg.agg.reject_sigma = cfg.agg.fraud_sigma = 1e300;
    return cfg;
}

/* count cores for vectors of n; node i's Δ is a shared slope plus its own wiggle, weight i+1. */
static net *net_new(uint32_t count, size_t n, const net_options *opt)
{
    net *t = calloc(1, sizeof *t);
    assert_non_null(t);
    ns_fake_env_init(&t->fake, T0_MS, 7);
    t->n = n;
    t->count = count;
    memset(t->w0_hash, 0x5a, sizeof t->w0_hash);
    for (uint32_t i = 0; i < count; i++) {
        node *nd = &t->nodes[i];
        nd->net = t;
        nd->index = i;
        id_of(nd->id, i);
        ns_cohort_config cfg = config_for(nd, opt);
        assert_int_equal(ns_cohort_new(&nd->c, &cfg, n, &t->fake.env), NS_OK);
        for (size_t k = 0; k < n; k++)
            t->delta[i][k] = (float)(0.5 * sin(0.1 * (double)k) + 0.3 * cos((double)(i * 7 + k)));
        t->weight[i] = 1.0 + i;
    }
    return t;
}

static void net_free(net *t)
{
    for (uint32_t i = 0; i < t->count; i++) {
        ns_cohort_free(t->nodes[i].c);
        for (size_t k = 0; k < t->nodes[i].parts; k++)
            free(t->nodes[i].part_msg[k]);
    }
    assert_int_equal(t->fake.timer_count, 0); /* free cancelled every timer */
    for (size_t i = t->head; i < t->tail; i++)
        free(t->queue[i].msg);
    free(t->queue);
    free(t);
}

static void start_node(net *t, uint32_t i, uint64_t round)
{
    uint8_t members[NODES_MAX][NS_ID_BYTES];
    for (uint32_t k = 0; k < t->count; k++)
        id_of(members[k], t->count - 1 - k); /* any order: the core sorts them */
    assert_int_equal(ns_cohort_start(t->nodes[i].c, round, (const uint8_t(*)[NS_ID_BYTES])members,
                                     t->count, t->delta[i], t->weight[i], t->w0_hash),
                     NS_OK);
}

static void start_all(net *t, uint64_t round)
{
    for (uint32_t i = 0; i < t->count; i++)
        start_node(t, i, round);
}

static int deliver(net *t, uint32_t from, uint32_t to, const uint8_t *msg, size_t len)
{
    return ns_cohort_on_message(t->nodes[to].c, t->nodes[from].id, msg, len);
}

/* Delivers everything queued, and whatever that sends, in order; all must be taken. Entries
 * without a message were taken out by the test. */
static void pump(net *t)
{
    while (t->head < t->tail) {
        queued q = t->queue[t->head++];
        if (q.msg == NULL)
            continue;
        assert_int_equal(deliver(t, q.from, q.to, q.msg, q.len), NS_OK);
        t->nodes[q.to].bytes_delivered += q.len;
        free(q.msg);
    }
}

/* Delivers only what the nodes in `senders` send (a bit each), in order, until none is left. */
static void pump_from(net *t, uint64_t senders)
{
    for (bool again = true; again;) {
        again = false;
        for (size_t i = t->head; i < t->tail; i++) {
            queued *q = &t->queue[i];
            if (q->msg == NULL || !(senders >> q->from & 1))
                continue;
            uint8_t *msg = q->msg;
            q->msg = NULL;
            assert_int_equal(deliver(t, q->from, q->to, msg, q->len), NS_OK);
            free(msg);
            again = true;
            break; /* the queue may have grown and moved */
        }
    }
}

/* Delivers what is queued now, not what that sends. */
static void pump_queued(net *t)
{
    size_t end = t->tail;
    while (t->head < end) {
        queued q = t->queue[t->head++];
        if (q.msg == NULL)
            continue;
        assert_int_equal(deliver(t, q.from, q.to, q.msg, q.len), NS_OK);
        free(q.msg);
    }
}

/* The index in the queue of the first message from -> to of a type, or fails. */
static size_t find(const net *t, uint32_t from, uint32_t to, uint8_t type)
{
    for (size_t i = t->head; i < t->tail; i++) {
        const queued *q = &t->queue[i];
        if (q->msg != NULL && q->from == from && q->to == to && q->msg[OFF_TYPE] == type)
            return i;
    }
    fail_msg("no message %u -> %u of type %u", from, to, type);
    return 0;
}

static double weighted_mean_at(const net *t, size_t k, const bool *skip)
{
    double sum = 0.0, w = 0.0;
    for (uint32_t i = 0; i < t->count; i++) {
        if (skip != NULL && skip[i])
            continue;
        sum += t->weight[i] * t->delta[i][k];
        w += t->weight[i];
    }
    return sum / w;
}

static void assert_all_agree(const net *t, const bool *skip)
{
    int first = -1;
    for (uint32_t i = 0; i < t->count; i++) {
        if (skip != NULL && skip[i])
            continue;
        assert_int_equal(t->nodes[i].dones, 1);
        if (first < 0)
            first = (int)i;
        else
            assert_memory_equal(t->nodes[i].agg, t->nodes[first].agg, t->n * sizeof(float));
    }
}

static void assert_near_mean(const net *t, uint32_t i, const bool *skip, double tol)
{
    for (size_t k = 0; k < t->n; k++) {
        double want = weighted_mean_at(t, k, skip);
        if (fabs((double)t->nodes[i].agg[k] - want) > tol)
            fail_msg("node %u at %zu: got %.6f want %.6f", i, k, (double)t->nodes[i].agg[k], want);
    }
}

static const net_options plain = {.group_max = 0, .density = 1.0, .kind = NS_AGG_MEAN};

/* ---- the cohort: rounds that go well ------------------------------------------------------ */

static void test_cohort_of_one_is_done_at_once(void **state)
{
    (void)state;
    net *t = net_new(1, 64, &plain);
    start_node(t, 0, 1);
    node *nd = &t->nodes[0];
    assert_int_equal(nd->dones, 1);
    assert_false(ns_cohort_busy(nd->c));
    assert_int_equal(nd->report.round, 1);
    assert_int_equal(nd->report.members, 1);
    assert_int_equal(nd->report.phases, 0);
    assert_int_equal(nd->report.contributions, 1);
    assert_int_equal(nd->report.bytes_sent, 0);
    assert_int_equal(t->tail, 0);
    for (size_t k = 0; k < 64; k++)
        assert_true(fabs(nd->agg[k] - t->delta[0][k]) < 0.01);
    net_free(t);
}

static void test_cohort_of_three_agrees_on_the_mean_of_the_compressed_parts(void **state)
{
    (void)state;
    const size_t n = 64;
    net *t = net_new(3, n, &plain);
    start_all(t, 1);
    for (uint32_t i = 0; i < 3; i++)
        assert_true(ns_cohort_busy(t->nodes[i].c));
    pump(t);
    assert_all_agree(t, NULL);

    /* What ns_agg_run makes of the parts as the owners see them, chunk by chunk. */
    ns_compress_config cc;
    ns_compress_config_default(&cc);
    cc.density = 1.0;
    ns_agg_config ac = {.kind = NS_AGG_MEAN, .reject_sigma = 1e300, .fraud_sigma = 1e300};
    float want[64], decoded[3][64];
    for (uint32_t j = 0; j < 3; j++) {
        size_t first = j * n / 3, len = (j + 1) * n / 3 - first;
        ns_agg_input in[3];
        for (uint32_t i = 0; i < 3; i++) {
            uint8_t *blob;
            size_t blob_len;
            assert_int_equal(
                ns_compress_encode(&cc, t->delta[i] + first, len, NULL, &blob, &blob_len), NS_OK);
            assert_int_equal(ns_compress_decode(blob, blob_len, decoded[i] + first, len), NS_OK);
            free(blob);
            in[i] = (ns_agg_input){.v = decoded[i] + first, .weight = t->weight[i]};
        }
        assert_int_equal(ns_agg_run(&ac, in, 3, len, want + first, NULL, NULL), NS_OK);
    }
    for (size_t k = 0; k < n; k++)
        assert_true(fabs(t->nodes[0].agg[k] - want[k]) < 0.005); /* the RESULT's int8 step */
    assert_near_mean(t, 0, NULL, 0.02);

    for (uint32_t i = 0; i < 3; i++) {
        const ns_cohort_report *r = &t->nodes[i].report;
        assert_false(ns_cohort_busy(t->nodes[i].c));
        assert_int_equal(r->round, 1);
        assert_int_equal(r->members, 3);
        assert_int_equal(r->phases, 1);
        assert_int_equal(r->contributions, 3);
        assert_int_equal(r->rejected, 0);
        assert_int_equal(r->missing_chunks, 0);
        assert_true(r->bytes_sent > 4 * HEADER); /* two PARTs and two RESULTs */
        assert_int_equal(r->bytes_sent, t->nodes[i].bytes_sent_seen);
        assert_int_equal(r->bytes_received, t->nodes[i].bytes_delivered);
    }
    net_free(t);
}

/* Cohorts of many shapes: rows of different sizes, members that play two places. */
static void run_grid(uint32_t count, uint32_t group_max, uint32_t phases_want, double tol)
{
    net_options opt = plain;
    opt.group_max = group_max;
    net *t = net_new(count, N_MAX, &opt);
    start_all(t, 1);
    pump(t);
    assert_all_agree(t, NULL);
    assert_near_mean(t, 0, NULL, tol);
    for (uint32_t i = 0; i < count; i++) {
        assert_int_equal(t->nodes[i].report.phases, phases_want);
        assert_int_equal(t->nodes[i].report.missing_chunks, 0);
    }
    net_free(t);
}

static void test_cohort_of_forty_in_groups_of_four_agrees_on_the_global_mean(void **state)
{
    (void)state;
    run_grid(40, 4, 3, 0.02);
}

static void test_cohorts_of_every_shape_agree_on_the_global_mean(void **state)
{
    (void)state;
    run_grid(2, 2, 1, 0.02);
    run_grid(3, 2, 2, 0.02); /* rows of 2 and 1: the lone member plays both places */
    run_grid(5, 2, 3, 0.02); /* rows 2, 1, 1, 1 */
    run_grid(5, 4, 2, 0.02); /* rows 3 and 2 */
    run_grid(7, 3, 2, 0.02); /* rows 3, 2, 2 */
    run_grid(16, 16, 1, 0.02);
    run_grid(17, 4, 3, 0.02); /* 6 rows as 3 x 2 */
    run_grid(33, 2, 6, 0.03);
}

static void test_cohort_error_feedback_delivers_what_top_k_left_behind(void **state)
{
    (void)state;
    net_options opt = plain;
    opt.density = 0.25;
    opt.error_feedback = true;
    net *t = net_new(1, 64, &opt);
    float sum[64] = {0}, original[64];
    memcpy(original, t->delta[0], sizeof original);
    start_node(t, 0, 1);
    for (size_t k = 0; k < 64; k++)
        sum[k] = t->nodes[0].agg[k];
    double err_one = 0.0, err_all = 0.0;
    for (size_t k = 0; k < 64; k++)
        err_one += fabs(sum[k] - t->delta[0][k]);
    memset(t->delta[0], 0, sizeof t->delta[0]);
    for (uint64_t round = 2; round <= 4; round++) {
        start_node(t, 0, round);
        for (size_t k = 0; k < 64; k++)
            sum[k] += t->nodes[0].agg[k];
    }
    for (size_t k = 0; k < 64; k++)
        err_all += fabs(sum[k] - original[k]);
    assert_true(err_all < 0.05 * err_one); /* four quarters: everything has come through */
    net_free(t);
}

/* ---- faults ------------------------------------------------------------------------------- */

static void test_cohort_finishes_without_a_silent_member_after_the_timeouts(void **state)
{
    (void)state;
    net *t = net_new(3, 64, &plain);
    start_node(t, 0, 1);
    start_node(t, 1, 1);
    pump(t); /* node 2 never starts: it only holds what comes */
    assert_int_equal(t->nodes[0].dones, 0);
    ns_fake_env_advance(&t->fake, TIMEOUT_MS); /* owners 0 and 1 aggregate what they have */
    pump(t);
    assert_int_equal(t->nodes[0].dones, 0); /* chunk 2's result may still come */
    ns_fake_env_advance(&t->fake, TIMEOUT_MS);
    bool skip[3] = {false, false, true};
    assert_all_agree(t, skip);
    for (uint32_t i = 0; i < 2; i++) {
        const ns_cohort_report *r = &t->nodes[i].report;
        assert_int_equal(r->contributions, 2);
        assert_int_equal(r->missing_chunks, 1);
        for (size_t k = 2 * 64 / 3; k < 64; k++)
            assert_true(t->nodes[i].agg[k] == 0.0f);
    }
    for (size_t k = 0; k < 2 * 64 / 3; k++)
        assert_true(fabs(t->nodes[0].agg[k] - weighted_mean_at(t, k, skip)) < 0.02);
    net_free(t);
}

/* Four members of 64 floats whose owner of chunk 1 (16..32) sent no good RESULT: after the
 * RESULT deadline the three others agree, that chunk zero, the rest the mean of all four parts. */
static void assert_done_without_chunk_1(net *t)
{
    ns_fake_env_advance(&t->fake, 2 * TIMEOUT_MS);
    bool skip[4] = {false, true, false, false};
    assert_all_agree(t, skip);
    for (uint32_t i = 0; i < 4; i++) {
        if (i == 1)
            continue;
        assert_int_equal(t->nodes[i].report.missing_chunks, 1);
        assert_int_equal(t->nodes[i].report.contributions, 4); /* node 1's parts came */
        for (size_t k = 0; k < 64; k++) {
            double want = k >= 16 && k < 32 ? 0.0 : weighted_mean_at(t, k, NULL);
            assert_true(fabs((double)t->nodes[i].agg[k] - want) <= 0.02);
        }
    }
}

static void test_cohort_takes_zero_for_an_owner_that_dies_before_its_result(void **state)
{
    (void)state;
    net *t = net_new(4, 64, &plain);
    t->nodes[1].no_results = true;
    start_all(t, 1);
    pump(t);
    assert_int_equal(t->nodes[0].dones, 0);
    assert_done_without_chunk_1(t);
    assert_near_mean(t, 1, NULL, 0.02); /* the owner itself heard every result */
    net_free(t);
}

/* An owner that sends its aggregate times 1000 (every member's part was honest, so the screen
 * cannot see it): each member refuses the RESULT as beyond its bound and takes the chunk as zero,
 * as for a lost one; the other chunks are the mean, and all agree. One times 2 passes: the bound
 * is against gross lies, which would wreck the weights, not a proof of honesty. */
static void test_cohort_refuses_an_owners_result_beyond_its_bound(void **state)
{
    (void)state;
    net *t = net_new(4, 64, &plain);
    t->nodes[1].inflate = 1000.0f;
    t->hold = true;
    start_all(t, 1);
    uint64_t refused = 0;
    while (t->head < t->tail) {
        queued q = t->queue[t->head++];
        int rc = deliver(t, q.from, q.to, q.msg, q.len);
        if (q.from == 1 && q.msg[OFF_TYPE] == TYPE_RESULT) {
            assert_int_equal(rc, NS_EINVAL);
            refused++;
        } else {
            assert_int_equal(rc, NS_OK);
        }
        free(q.msg);
    }
    assert_int_equal(refused, 3);
    for (uint32_t i = 0; i < 4; i++)
        if (i != 1)
            assert_int_equal(ns_cohort_refusals(t->nodes[i].c, NS_COHORT_REFUSE_RESULT_BOUND), 1);
    assert_done_without_chunk_1(t);
    net_free(t);

    t = net_new(4, 64, &plain); /* twice as long: within the bound, taken */
    t->nodes[1].inflate = 2.0f;
    start_all(t, 1);
    pump(t);
    bool liar[4] = {false, true, false, false}; /* it applied its own aggregate, not x2 */
    assert_all_agree(t, liar);
    assert_int_equal(ns_cohort_refusals(t->nodes[0].c, NS_COHORT_REFUSE_RESULT_BOUND), 0);
    net_free(t);
}

/* ---- refusals ----------------------------------------------------------------------------- */

/* Three members of round 1, everything they sent still queued. */
static net *trio(void)
{
    net *t = net_new(3, 64, &plain);
    start_all(t, 1);
    return t;
}

static void assert_refused(net *t, uint32_t from, uint32_t to, const uint8_t *msg, size_t len,
                           ns_cohort_refusal why)
{
    uint64_t before = ns_cohort_refusals(t->nodes[to].c, why);
    assert_int_equal(deliver(t, from, to, msg, len), NS_EINVAL);
    assert_int_equal(ns_cohort_refusals(t->nodes[to].c, why), before + 1);
}

/* A copy of the queued message i with one header byte changed. */
static uint8_t *forged(const net *t, size_t i, size_t at, uint8_t value)
{
    uint8_t *m = malloc(t->queue[i].len);
    assert_non_null(m);
    memcpy(m, t->queue[i].msg, t->queue[i].len);
    m[at] = value;
    return m;
}

/* After a refusal the round still ends as if it never came. */
static void finish_trio(net *t)
{
    pump(t);
    assert_all_agree(t, NULL);
    assert_near_mean(t, 0, NULL, 0.02);
    net_free(t);
}

static void test_cohort_refuses_malformed_and_truncated_messages(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    const uint8_t *msg = t->queue[i].msg;
    size_t len = t->queue[i].len;
    assert_refused(t, 0, 1, msg, HEADER - 1, NS_COHORT_REFUSE_MALFORMED);
    assert_refused(t, 0, 1, msg, 0, NS_COHORT_REFUSE_MALFORMED);
    const size_t at[] = {OFF_TYPE,  OFF_VERSION,    3,        OFF_LANE, OFF_CHUNK,
                         OFF_FIRST, OFF_WEIGHT + 7, OFF_PHASE};
    const uint8_t value[] = {9, 2, 1, 1, 7, 1, 0xff /* -Inf */, 1 /* of 1 phase */};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        uint8_t *m = forged(t, i, at[k], value[k]);
        assert_refused(t, 0, 1, m, len, NS_COHORT_REFUSE_MALFORMED);
        free(m);
    }
    finish_trio(t);
}

static void test_cohort_refuses_rounds_already_done(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    uint8_t *copy = forged(t, i, OFF_TYPE, TYPE_PART);
    size_t len = t->queue[i].len;
    pump(t);
    assert_all_agree(t, NULL);
    assert_refused(t, 0, 1, copy, len, NS_COHORT_REFUSE_STALE); /* round 1 is done */
    start_all(t, 2);
    copy[OFF_ROUND] = 1;
    assert_refused(t, 0, 1, copy, len, NS_COHORT_REFUSE_STALE); /* round 1 < 2 */
    free(copy);
    pump(t);
    net_free(t);
}

static void test_cohort_refuses_rounds_beyond_the_next(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    uint8_t *m = forged(t, i, OFF_ROUND, 3); /* round 1 runs: 2 would be held */
    assert_refused(t, 0, 1, m, t->queue[i].len, NS_COHORT_REFUSE_EARLY);
    free(m);
    finish_trio(t);
}

static void test_cohort_refuses_a_sender_outside_the_group(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    uint8_t stranger[NS_ID_BYTES];
    id_of(stranger, 77);
    uint64_t before = ns_cohort_refusals(t->nodes[1].c, NS_COHORT_REFUSE_NOT_MEMBER);
    assert_int_equal(
        ns_cohort_on_message(t->nodes[1].c, stranger, t->queue[i].msg, t->queue[i].len), NS_EINVAL);
    assert_int_equal(ns_cohort_refusals(t->nodes[1].c, NS_COHORT_REFUSE_NOT_MEMBER), before + 1);
    assert_refused(t, 1, 1, t->queue[i].msg, t->queue[i].len, NS_COHORT_REFUSE_NOT_MEMBER);
    finish_trio(t);
}

static void test_cohort_refuses_chunks_that_are_not_the_owners(void **state)
{
    (void)state;
    net *t = trio();
    size_t to2 = find(t, 0, 2, TYPE_PART);                        /* chunk 2 */
    assert_refused(t, 0, 1, t->queue[to2].msg, t->queue[to2].len, /* node 1 owns chunk 1 */
                   NS_COHORT_REFUSE_NOT_OWNER);
    pump_queued(t);                        /* the PARTs: the owners send their RESULTs */
    size_t r = find(t, 0, 2, TYPE_RESULT); /* chunk 0, which node 2 does not own */
    assert_refused(t, 2, 1, t->queue[r].msg, t->queue[r].len, NS_COHORT_REFUSE_NOT_OWNER);
    finish_trio(t);
}

static void test_cohort_refuses_duplicates(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    assert_int_equal(deliver(t, 0, 1, t->queue[i].msg, t->queue[i].len), NS_OK);
    assert_refused(t, 0, 1, t->queue[i].msg, t->queue[i].len, NS_COHORT_REFUSE_DUPLICATE);
    free(t->queue[i].msg);
    t->queue[i].msg = NULL; /* taken */
    pump_queued(t);
    size_t r = find(t, 1, 0, TYPE_RESULT);
    assert_int_equal(deliver(t, 1, 0, t->queue[r].msg, t->queue[r].len), NS_OK);
    assert_refused(t, 1, 0, t->queue[r].msg, t->queue[r].len, NS_COHORT_REFUSE_DUPLICATE);
    free(t->queue[r].msg);
    t->queue[r].msg = NULL;
    finish_trio(t);
}

static void test_cohort_refuses_a_blob_that_does_not_decode(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    size_t len = t->queue[i].len;
    assert_refused(t, 0, 1, t->queue[i].msg, len - 3, NS_COHORT_REFUSE_BAD_BLOB); /* cut short */
    uint8_t *m = forged(t, i, HEADER, 'X'); /* the blob's magic */
    assert_refused(t, 0, 1, m, len, NS_COHORT_REFUSE_BAD_BLOB);
    free(m);
    m = forged(t, i, HEADER + 8, 0x33); /* the blob's n: another chunk length */
    assert_refused(t, 0, 1, m, len, NS_COHORT_REFUSE_BAD_BLOB);
    free(m);
    finish_trio(t);
}

static void test_cohort_refuses_a_member_with_other_base_weights(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART);
    uint8_t *m = forged(t, i, OFF_HASH + 31, 0x00);
    assert_refused(t, 0, 1, m, t->queue[i].len, NS_COHORT_REFUSE_BASE);
    free(m);
    finish_trio(t);
}

static void test_refusal_texts_name_every_reason(void **state)
{
    (void)state;
    for (int why = 0; why < NS_COHORT_REFUSE_COUNT_; why++) {
        const char *text = ns_cohort_refusal_text((ns_cohort_refusal)why);
        assert_non_null(text);
        assert_true(strlen(text) > 3);
    }
}

/* ---- held messages ------------------------------------------------------------------------ */

static void test_cohort_holds_next_round_messages_until_it_starts(void **state)
{
    (void)state;
    net *t = net_new(3, 64, &plain);
    start_node(t, 0, 1);
    start_node(t, 1, 1);
    pump(t); /* node 2 holds the PARTs for round 1 */
    assert_int_equal(t->nodes[0].dones, 0);
    start_node(t, 2, 1); /* takes them at once */
    pump(t);
    assert_all_agree(t, NULL);
    assert_near_mean(t, 0, NULL, 0.02);
    for (int why = 0; why < NS_COHORT_REFUSE_COUNT_; why++)
        assert_int_equal(ns_cohort_refusals(t->nodes[2].c, (ns_cohort_refusal)why), 0);
    assert_int_equal(t->nodes[2].report.contributions, 3);
    net_free(t);
}

static void test_cohort_holds_later_phases_of_the_running_round(void **state)
{
    (void)state;
    net_options opt = plain;
    opt.group_max = 2;
    net *t = net_new(4, 64, &opt); /* rows {0, 1} and {2, 3}; then {0, 2} and {1, 3} */
    start_all(t, 1);
    pump_from(t, 1u << 2 | 1u << 3); /* row {2, 3} ends phase 0; 0 and 1 hold its phase 1 */
    assert_int_equal(t->nodes[0].dones, 0);
    pump(t);
    assert_all_agree(t, NULL);
    assert_near_mean(t, 0, NULL, 0.02);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(t->nodes[i].report.phases, 2);
        for (int why = 0; why < NS_COHORT_REFUSE_COUNT_; why++)
            assert_int_equal(ns_cohort_refusals(t->nodes[i].c, (ns_cohort_refusal)why), 0);
    }
    net_free(t);
}

static void test_cohort_refuses_a_phase_already_done(void **state)
{
    (void)state;
    net_options opt = plain;
    opt.group_max = 2;
    net *t = net_new(4, 64, &opt);
    start_all(t, 1);
    size_t i = find(t, 0, 1, TYPE_PART);
    uint8_t *copy = forged(t, i, OFF_TYPE, TYPE_PART);
    size_t len = t->queue[i].len;
    pump_from(t, 1u << 0 | 1u << 1); /* row {0, 1} is in phase 1 */
    assert_refused(t, 0, 1, copy, len, NS_COHORT_REFUSE_STALE);
    free(copy);
    pump(t);
    assert_all_agree(t, NULL);
    net_free(t);
}

static void test_cohort_holds_no_more_than_its_limits(void **state)
{
    (void)state;
    net *t = trio();
    size_t i = find(t, 0, 1, TYPE_PART), len = t->queue[i].len;
    uint8_t *m = forged(t, i, OFF_ROUND, 2);
    uint8_t sender[NS_ID_BYTES];
    const int per_sender = 8, senders = NS_SYNC_HELD_MAX / per_sender;
    for (int s = 0; s < senders; s++) {
        id_of(sender, (uint32_t)(100 + s)); /* round 2's members are not known yet */
        for (int k = 0; k < per_sender; k++)
            assert_int_equal(ns_cohort_on_message(t->nodes[1].c, sender, m, len), NS_OK);
        if (s == 0) /* one sender cannot take more than its share */
            assert_int_equal(ns_cohort_on_message(t->nodes[1].c, sender, m, len), NS_EINVAL);
    }
    assert_refused(t, 0, 1, m, len, NS_COHORT_REFUSE_EARLY); /* full */
    assert_int_equal(ns_cohort_refusals(t->nodes[1].c, NS_COHORT_REFUSE_EARLY), 2);
    free(m);
    pump(t);
    assert_all_agree(t, NULL);
    start_all(t, 2); /* node 1 takes what it held: none of them a member */
    assert_int_equal(ns_cohort_refusals(t->nodes[1].c, NS_COHORT_REFUSE_NOT_MEMBER),
                     NS_SYNC_HELD_MAX);
    pump(t);
    assert_int_equal(t->nodes[1].dones, 2);
    net_free(t);
}

/* ---- a poisoned member -------------------------------------------------------------------- */

static void run_poisoned(float factor)
{
    const uint32_t bad = 3;
    net_options opt = plain;
    opt.screen = true;
    opt.kind = NS_AGG_TRIMMED_MEAN;
    net *t = net_new(7, 128, &opt);
    for (uint32_t i = 0; i < 7; i++) {
        for (size_t k = 0; k < 128; k++)
            t->delta[i][k] = (float)(0.5 * sin(0.1 * (double)k) + 0.01 * cos((double)(i * 7 + k)));
        t->weight[i] = 1.0;
    }
    for (size_t k = 0; k < 128; k++)
        t->delta[bad][k] *= factor;
    start_all(t, 1);
    pump(t);
    assert_all_agree(t, NULL);
    bool skip[7] = {false};
    skip[bad] = true;
    assert_near_mean(t, 0, skip, 0.03);
    int flagged = 0;
    for (uint32_t i = 0; i < 7; i++) {
        if (i == bad)
            continue;
        node *nd = &t->nodes[i];
        flagged += nd->verdicts_from[bad];
        if (nd->verdicts == 1) {
            assert_true(nd->last_verdict == NS_AGG_FRAUD || nd->last_verdict == NS_AGG_REJECTED);
            assert_true(nd->evidence_len > HEADER);
        }
        assert_true(nd->report.rejected >= 1);
    }
    assert_int_equal(flagged, 6); /* every honest owner caught it at its own chunk */
    assert_true(t->nodes[bad].report.rejected >= 1); /* its own part, at its own chunk */
    assert_int_equal(t->nodes[bad].verdicts, 0);
    net_free(t);
}

static void test_cohort_screens_a_member_that_scales_its_delta(void **state)
{
    (void)state;
    run_poisoned(1000.0f);
}

static void test_cohort_screens_a_member_that_flips_its_delta(void **state)
{
    (void)state;
    run_poisoned(-1.0f);
}

/* ---- signed parts and fraud bundles (evidence.c) ------------------------------------------ */

static void key_of(ns_key *key, uint32_t index)
{
    uint8_t sec[NS_SECKEY_BYTES];
    memset(sec, 0x11, sizeof sec);
    sec[0] = (uint8_t)(index + 1);
    assert_int_equal(ns_key_from_seckey(key, sec), NS_OK);
}

static void test_a_seal_names_its_signer_and_breaks_with_any_byte(void **state)
{
    (void)state;
    ns_key key;
    key_of(&key, 0);
    uint8_t msg[100], seal[NS_COHORT_SEAL_BYTES], who[NS_ID_BYTES];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(i * 13);
    assert_int_equal(ns_cohort_seal(&key, msg, sizeof msg, seal), NS_OK);
    assert_int_equal(ns_cohort_seal_check(msg, sizeof msg, seal, who), NS_OK);
    assert_memory_equal(who, key.node_id, NS_ID_BYTES);
    msg[50] ^= 1;
    assert_int_not_equal(ns_cohort_seal_check(msg, sizeof msg, seal, who), NS_OK);
    msg[50] ^= 1;
    seal[NS_PUBKEY_BYTES + 5] ^= 1;
    assert_int_not_equal(ns_cohort_seal_check(msg, sizeof msg, seal, who), NS_OK);
    seal[NS_PUBKEY_BYTES + 5] ^= 1;
    ns_key other;
    key_of(&other, 1);
    memcpy(seal, other.pubkey, NS_PUBKEY_BYTES); /* another key over the same signature */
    assert_int_not_equal(ns_cohort_seal_check(msg, sizeof msg, seal, who), NS_OK);
}

/* Seven members, member 3 scales its Δ: owner 0's evidence, each part sealed by its sender's key
 * (member i signs with key i), makes a bundle that any judge convicts 3 with, and no one else. */
typedef struct bundle_case {
    net *t;
    ns_key keys[7];
    ns_cohort_sealed parts[NS_SYNC_GROUP_MAX];
    size_t k;
} bundle_case;

static void bundle_case_new(bundle_case *b)
{
    const uint32_t bad = 3;
    net_options opt = plain;
    opt.screen = true;
    opt.kind = NS_AGG_TRIMMED_MEAN;
    b->t = net_new(7, 128, &opt);
    for (uint32_t i = 0; i < 7; i++) {
        key_of(&b->keys[i], i);
        for (size_t k = 0; k < 128; k++)
            b->t->delta[i][k] =
                (float)(0.5 * sin(0.1 * (double)k) + 0.01 * cos((double)(i * 7 + k)));
        b->t->weight[i] = 1.0;
    }
    for (size_t k = 0; k < 128; k++)
        b->t->delta[bad][k] *= 1000.0f;
    start_all(b->t, 1);
    pump(b->t);
    node *owner = &b->t->nodes[0];
    assert_int_equal(owner->evidences, 1);
    assert_int_equal(node_of(b->t, owner->accused), (int)bad);
    assert_int_equal(owner->parts, 7); /* every member's part at its chunk, its own included */
    b->k = owner->parts;
    for (size_t i = 0; i < b->k; i++) {
        int who = node_of(b->t, owner->part_from[i]);
        assert_true(who >= 0);
        b->parts[i] = (ns_cohort_sealed){.msg = owner->part_msg[i], .len = owner->part_len[i]};
        assert_int_equal(
            ns_cohort_seal(&b->keys[who], b->parts[i].msg, b->parts[i].len, b->parts[i].seal),
            NS_OK);
    }
}

static int judge_of(const bundle_case *b, const ns_cohort_sealed *parts, size_t k, uint32_t accused,
                    ns_cohort_judgement *j)
{
    uint8_t *bundle;
    size_t len;
    int rc = ns_cohort_bundle_write(parts, k, &bundle, &len);
    if (rc != NS_OK)
        return rc;
    rc = ns_cohort_judge(bundle, len, b->keys[accused].node_id, j);
    free(bundle);
    return rc;
}

static void test_a_bundle_of_the_screen_convicts_the_poisoner_and_nobody_else(void **state)
{
    (void)state;
    bundle_case b;
    bundle_case_new(&b);
    ns_cohort_judgement j;
    assert_int_equal(judge_of(&b, b.parts, b.k, 3, &j), NS_OK);
    assert_int_equal(j.verdict, NS_AGG_FRAUD);
    assert_true(j.sigma > 5.0);
    assert_true(j.round == 1);
    assert_int_equal(j.parts, 7);
    for (uint32_t i = 0; i < 7; i++) {
        if (i == 3)
            continue;
        assert_int_equal(judge_of(&b, b.parts, b.k, i, &j), NS_OK);
        assert_int_equal(j.verdict, NS_AGG_ACCEPTED);
    }
    /* the accused's part and two honest ones are still a case */
    ns_cohort_sealed three[3];
    size_t n = 0;
    for (size_t i = 0; i < b.k && n < 3; i++) {
        uint8_t who[NS_ID_BYTES];
        assert_int_equal(ns_cohort_seal_check(b.parts[i].msg, b.parts[i].len, b.parts[i].seal, who),
                         NS_OK);
        bool accused = memcmp(who, b.keys[3].node_id, NS_ID_BYTES) == 0;
        if (accused || n < 2)
            three[n++] = b.parts[i];
    }
    assert_int_equal(n, 3);
    assert_int_equal(judge_of(&b, three, 3, 3, &j), NS_OK);
    assert_int_equal(j.verdict, NS_AGG_FRAUD);
    net_free(b.t);
}

static void test_a_bundle_that_proves_nothing_is_refused(void **state)
{
    (void)state;
    bundle_case b;
    bundle_case_new(&b);
    ns_cohort_judgement j;
    uint8_t *bundle;
    size_t len;
    assert_int_equal(ns_cohort_bundle_write(b.parts, b.k, &bundle, &len), NS_OK);
    /* every byte cut off, and a flipped byte in each part's seal or header */
    for (size_t cut = 0; cut < len; cut += 97)
        assert_int_equal(ns_cohort_judge(bundle, cut, b.keys[3].node_id, &j), NS_EPARSE);
    size_t at = 6;
    for (size_t i = 0; i < b.k; i++) {
        size_t mlen = b.parts[i].len;
        size_t spots[] = {at + 4 + 12, at + 4 + mlen + NS_PUBKEY_BYTES + 1};
        for (size_t s = 0; s < 2; s++) {
            bundle[spots[s]] ^= 0x40;
            assert_int_equal(ns_cohort_judge(bundle, len, b.keys[3].node_id, &j), NS_EPARSE);
            bundle[spots[s]] ^= 0x40;
        }
        at += 4 + mlen + NS_COHORT_SEAL_BYTES;
    }
    assert_int_equal(ns_cohort_judge(bundle, len, b.keys[3].node_id, &j), NS_OK);
    free(bundle);
    /* an accused that signed no part, a signer twice, too few parts */
    ns_key stranger;
    key_of(&stranger, 20);
    assert_int_equal(ns_cohort_bundle_write(b.parts, b.k, &bundle, &len), NS_OK);
    assert_int_equal(ns_cohort_judge(bundle, len, stranger.node_id, &j), NS_EPARSE);
    free(bundle);
    ns_cohort_sealed twice[8];
    memcpy(twice, b.parts, b.k * sizeof twice[0]);
    twice[b.k] = b.parts[0];
    assert_int_equal(judge_of(&b, twice, b.k + 1, 3, &j), NS_EPARSE);
    assert_int_equal(judge_of(&b, b.parts, 2, 3, &j), NS_EINVAL);
    uint8_t two[6] = {'N', 'S', 'C', 'B', 1, 2};
    assert_int_equal(ns_cohort_judge(two, sizeof two, b.keys[3].node_id, &j), NS_EPARSE);
    /* a part of another round, sealed by its sender all the same */
    uint8_t *other = malloc(b.parts[1].len);
    assert_non_null(other);
    memcpy(other, b.parts[1].msg, b.parts[1].len);
    other[OFF_ROUND] = 2;
    ns_cohort_sealed mixed[7];
    memcpy(mixed, b.parts, b.k * sizeof mixed[0]);
    mixed[1].msg = other;
    uint8_t who[NS_ID_BYTES];
    assert_int_equal(ns_cohort_seal_check(b.parts[1].msg, b.parts[1].len, b.parts[1].seal, who),
                     NS_OK);
    for (uint32_t i = 0; i < 7; i++)
        if (memcmp(who, b.keys[i].node_id, NS_ID_BYTES) == 0)
            assert_int_equal(ns_cohort_seal(&b.keys[i], other, b.parts[1].len, mixed[1].seal),
                             NS_OK);
    assert_int_equal(judge_of(&b, mixed, b.k, 3, &j), NS_EPARSE);
    free(other);
    net_free(b.t);
}

/* ---- arguments ---------------------------------------------------------------------------- */

static void test_cohort_new_refuses_a_bad_config(void **state)
{
    (void)state;
    ns_fake_env fake;
    ns_fake_env_init(&fake, T0_MS, 1);
    node nd = {0};
    id_of(nd.id, 0);
    ns_cohort_config good = config_for(&nd, &plain), cfg;
    ns_cohort *c;
    cfg = good;
    cfg.group_max = 1;
    assert_int_equal(ns_cohort_new(&c, &cfg, 64, &fake.env), NS_EINVAL);
    cfg.group_max = NS_SYNC_GROUP_MAX + 1;
    assert_int_equal(ns_cohort_new(&c, &cfg, 64, &fake.env), NS_EINVAL);
    assert_int_equal(ns_cohort_new(&c, &good, NS_SYNC_GROUP_MAX - 1, &fake.env), NS_EINVAL);
    cfg = good;
    cfg.send = NULL;
    assert_int_equal(ns_cohort_new(&c, &cfg, 64, &fake.env), NS_EINVAL);
    cfg = good;
    cfg.compress.density = 0.0;
    assert_int_equal(ns_cohort_new(&c, &cfg, 64, &fake.env), NS_EINVAL);
    cfg = good;
    cfg.agg.trim = 0.5;
    assert_int_equal(ns_cohort_new(&c, &cfg, 64, &fake.env), NS_EINVAL);
    assert_int_equal(ns_cohort_new(&c, &good, (size_t)1 << 30, &fake.env), NS_ETOOBIG);
    assert_int_equal(ns_cohort_new(&c, &good, 64, &fake.env), NS_OK);
    ns_cohort_free(c);
    ns_cohort_free(NULL);
}

static void test_cohort_start_refuses_bad_arguments(void **state)
{
    (void)state;
    net *t = net_new(3, 64, &plain);
    ns_cohort *c = t->nodes[0].c;
    uint8_t members[4][NS_ID_BYTES], others[2][NS_ID_BYTES];
    for (uint32_t k = 0; k < 3; k++)
        id_of(members[k], k);
    id_of(members[3], 1); /* twice */
    id_of(others[0], 1);
    id_of(others[1], 2);
    float nan_delta[64] = {0};
    nan_delta[5] = NAN;
    const uint8_t(*mem)[NS_ID_BYTES] = (const uint8_t(*)[NS_ID_BYTES])members;
    assert_int_equal(ns_cohort_start(c, 0, mem, 3, t->delta[0], 1.0, t->w0_hash), NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, mem, 0, t->delta[0], 1.0, t->w0_hash), NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, mem, 4, t->delta[0], 1.0, t->w0_hash), NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, (const uint8_t(*)[NS_ID_BYTES])others, 2, t->delta[0],
                                     1.0, t->w0_hash),
                     NS_EINVAL);
    assert_int_equal(
        ns_cohort_start(c, 1, mem, NS_SYNC_MEMBERS_MAX + 1, t->delta[0], 1.0, t->w0_hash),
        NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, mem, 3, nan_delta, 1.0, t->w0_hash), NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, mem, 3, t->delta[0], 0.0, t->w0_hash), NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, mem, 3, t->delta[0], NAN, t->w0_hash), NS_EINVAL);
    assert_int_equal(ns_cohort_start(c, 1, mem, 3, t->delta[0], 1e20, t->w0_hash), NS_EINVAL);
    assert_false(ns_cohort_busy(c));
    assert_int_equal(t->tail, 0); /* nothing was sent */
    assert_int_equal(ns_cohort_start(c, 5, mem, 3, t->delta[0], 1.0, t->w0_hash), NS_OK);
    assert_true(ns_cohort_busy(c));
    assert_int_equal(ns_cohort_start(c, 5, mem, 3, t->delta[0], 1.0, t->w0_hash), NS_EINVAL);
    assert_true(ns_cohort_busy(c)); /* a refused start leaves the round running */
    net_free(t);
}

static void test_cohort_start_abandons_a_running_round(void **state)
{
    (void)state;
    net *t = trio();
    for (size_t i = t->head; i < t->tail; i++)
        free(t->queue[i].msg);
    t->head = t->tail = 0; /* round 1's messages are lost */
    start_all(t, 2);
    pump(t);
    assert_all_agree(t, NULL);
    assert_int_equal(t->nodes[0].report.round, 2);
    assert_int_equal(t->fake.timer_count, 0);
    net_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inner_steps_follow_the_swarm_size),
        cmocka_unit_test(test_freshness_steps_down_at_hour_day_and_week),
        cmocka_unit_test(test_weight_is_sqrt_batches_times_freshness),
        cmocka_unit_test(test_outer_step_matches_hand_computed_nesterov_over_three_rounds),
        cmocka_unit_test(test_outer_refuses_bad_input_and_changes_nothing),
        cmocka_unit_test(test_outer_rebase_keeps_or_resets_momentum_and_changes_the_hash),
        cmocka_unit_test(test_cohort_of_one_is_done_at_once),
        cmocka_unit_test(test_cohort_of_three_agrees_on_the_mean_of_the_compressed_parts),
        cmocka_unit_test(test_cohort_of_forty_in_groups_of_four_agrees_on_the_global_mean),
        cmocka_unit_test(test_cohorts_of_every_shape_agree_on_the_global_mean),
        cmocka_unit_test(test_cohort_error_feedback_delivers_what_top_k_left_behind),
        cmocka_unit_test(test_cohort_finishes_without_a_silent_member_after_the_timeouts),
        cmocka_unit_test(test_cohort_takes_zero_for_an_owner_that_dies_before_its_result),
        cmocka_unit_test(test_cohort_refuses_an_owners_result_beyond_its_bound),
        cmocka_unit_test(test_cohort_refuses_malformed_and_truncated_messages),
        cmocka_unit_test(test_cohort_refuses_rounds_already_done),
        cmocka_unit_test(test_cohort_refuses_rounds_beyond_the_next),
        cmocka_unit_test(test_cohort_refuses_a_sender_outside_the_group),
        cmocka_unit_test(test_cohort_refuses_chunks_that_are_not_the_owners),
        cmocka_unit_test(test_cohort_refuses_duplicates),
        cmocka_unit_test(test_cohort_refuses_a_blob_that_does_not_decode),
        cmocka_unit_test(test_cohort_refuses_a_member_with_other_base_weights),
        cmocka_unit_test(test_refusal_texts_name_every_reason),
        cmocka_unit_test(test_cohort_holds_next_round_messages_until_it_starts),
        cmocka_unit_test(test_cohort_holds_later_phases_of_the_running_round),
        cmocka_unit_test(test_cohort_refuses_a_phase_already_done),
        cmocka_unit_test(test_cohort_holds_no_more_than_its_limits),
        cmocka_unit_test(test_cohort_screens_a_member_that_scales_its_delta),
        cmocka_unit_test(test_cohort_screens_a_member_that_flips_its_delta),
        cmocka_unit_test(test_a_seal_names_its_signer_and_breaks_with_any_byte),
        cmocka_unit_test(test_a_bundle_of_the_screen_convicts_the_poisoner_and_nobody_else),
        cmocka_unit_test(test_a_bundle_that_proves_nothing_is_refused),
        cmocka_unit_test(test_cohort_new_refuses_a_bad_config),
        cmocka_unit_test(test_cohort_start_refuses_bad_arguments),
        cmocka_unit_test(test_cohort_start_abandons_a_running_round),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
