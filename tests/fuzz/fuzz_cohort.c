/*
 * fuzz_cohort.c: libFuzzer target for the cohort exchange's message handling
 * (ns_cohort_on_message), which takes untrusted bytes from every member of a layer cohort.
 *
 * A core of member 0 of five (two rows: phase 0 and phase 1) starts round 1 on a hand-wound
 * clock. The input is a list of operations: a raw message from a chosen sender, a genuine message
 * that other members' cores sent this node with some bytes flipped (so the fuzzer reaches the
 * blob and the owner's aggregation), a timer firing, or the start of a later round. Any message
 * is taken or refused with NS_EINVAL and one refusal counted; the core keeps at most one timer;
 * every aggregate it reports is finite.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/sync.h"

#define FZ_N         48
#define FZ_MEMBERS   5
#define FZ_TEMPLATES 16
#define FZ_OPS_MAX   64
#define FZ_PATCHES   8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fz_env {
    uint64_t now_ms;
    uint64_t timer_id, at_ms;
    ns_timer_fn fn;
    void *arg;
} fz_env;

typedef struct fz_template {
    uint8_t from;
    uint8_t *msg;
    size_t len;
} fz_template;

static fz_env clock_state;
static fz_template templates[FZ_TEMPLATES];
static size_t template_count;
static const uint8_t w0_hash[NS_SHA256_BYTES] = {7};

static uint64_t fz_now(void *ctx)
{
    return ((fz_env *)ctx)->now_ms;
}

static uint64_t fz_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    fz_env *e = ctx;
    NS_ASSERT(e->timer_id == 0); /* one timer at a time */
    e->timer_id = 1;
    e->at_ms = at_ms;
    e->fn = fn;
    e->arg = arg;
    return 1;
}

static void fz_cancel(void *ctx, uint64_t id)
{
    fz_env *e = ctx;
    NS_ASSERT(id == e->timer_id);
    e->timer_id = 0;
}

static const ns_env env = {
    .now_ms = fz_now, .timer = fz_timer, .timer_cancel = fz_cancel, .ctx = &clock_state};

/* The template round's cores share a clock that never fires. */
static uint64_t loose_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    (void)at_ms;
    (void)fn;
    (void)arg;
    return ++((fz_env *)ctx)->timer_id;
}

static void loose_cancel(void *ctx, uint64_t id)
{
    (void)ctx;
    (void)id;
}

static fz_env loose_state = {.now_ms = 1800000000000ull};
static const ns_env loose_env = {
    .now_ms = fz_now, .timer = loose_timer, .timer_cancel = loose_cancel, .ctx = &loose_state};

static void id_of(uint8_t id[NS_ID_BYTES], uint8_t tag)
{
    memset(id, 0, NS_ID_BYTES);
    id[0] = tag;
}

static void send_ignore(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len)
{
    (void)arg;
    NS_ASSERT(to[0] != 1); /* never to itself */
    NS_ASSERT(len > 0 && len <= NS_SYNC_MSG_MAX);
    (void)msg;
}

/* The template round: every message goes on a queue; those for member 1 are also kept. */
typedef struct fz_queued {
    uint8_t from, to;
    uint8_t *msg;
    size_t len;
} fz_queued;

static fz_queued queue[256];
static size_t queue_head, queue_tail;

static void send_capture(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len)
{
    uint8_t from = *(const uint8_t *)arg;
    NS_ASSERT(queue_tail < sizeof queue / sizeof queue[0]);
    uint8_t *copy = malloc(len);
    NS_ASSERT(copy != NULL);
    memcpy(copy, msg, len);
    queue[queue_tail++] = (fz_queued){.from = from, .to = to[0], .msg = copy, .len = len};
    if (to[0] != 1 || template_count == FZ_TEMPLATES)
        return;
    fz_template *t = &templates[template_count++];
    t->from = from;
    t->msg = malloc(len);
    NS_ASSERT(t->msg != NULL);
    memcpy(t->msg, msg, len);
    t->len = len;
}

static void done_check(void *arg, const float *agg, size_t n, const ns_cohort_report *report)
{
    (void)arg;
    NS_ASSERT(n == FZ_N);
    NS_ASSERT(report->members == FZ_MEMBERS);
    for (size_t i = 0; i < n; i++)
        NS_ASSERT(isfinite(agg[i]));
}

static ns_cohort_config config_for(uint8_t tag,
                                   void (*send)(void *, const uint8_t *, const uint8_t *, size_t))
{
    ns_cohort_config cfg = {.group_max = 4, .timeout_ms = 1000, .send = send, .done = done_check};
    id_of(cfg.self_id, tag);
    ns_compress_config_default(&cfg.compress);
    cfg.compress.density = 1.0; /* no top-k: its radix pass (64 Ki bins) would slow each run */
    cfg.compress.chunk = 4;
    ns_agg_config_default(&cfg.agg);
    cfg.error_feedback = tag == 1;
    return cfg;
}

static void delta_of(float *delta, uint8_t tag)
{
    for (size_t i = 0; i < FZ_N; i++)
        delta[i] = (float)sin((double)(i + 3 * tag)) * (float)tag;
}

static void start(ns_cohort *c, uint64_t round, uint8_t tag)
{
    uint8_t members[FZ_MEMBERS][NS_ID_BYTES];
    for (uint8_t k = 0; k < FZ_MEMBERS; k++)
        id_of(members[k], (uint8_t)(k + 1));
    float delta[FZ_N];
    delta_of(delta, tag);
    int rc = ns_cohort_start(c, round, (const uint8_t(*)[NS_ID_BYTES])members, FZ_MEMBERS, delta,
                             1.0 + tag, w0_hash);
    NS_ASSERT(rc == NS_OK);
}

/* The five members run round 1 once; what they send member 1 becomes the templates (its own
 * core starts each input with the same Δ, so they are genuine: phase 0's and phase 1's). */
static void make_templates(void)
{
    static bool made;
    if (made)
        return;
    made = true;
    ns_log_set_level(NS_LOG_ERROR);
    static uint8_t tags[FZ_MEMBERS];
    ns_cohort *cores[FZ_MEMBERS];
    for (uint8_t k = 0; k < FZ_MEMBERS; k++) {
        tags[k] = (uint8_t)(k + 1);
        ns_cohort_config cfg = config_for(tags[k], send_capture);
        cfg.arg = &tags[k];
        NS_ASSERT(ns_cohort_new(&cores[k], &cfg, FZ_N, &loose_env) == NS_OK);
    }
    for (uint8_t k = 0; k < FZ_MEMBERS; k++)
        start(cores[k], 1, tags[k]);
    while (queue_head < queue_tail) {
        fz_queued q = queue[queue_head++];
        uint8_t from[NS_ID_BYTES];
        id_of(from, q.from);
        NS_ASSERT(ns_cohort_on_message(cores[q.to - 1], from, q.msg, q.len) == NS_OK);
        free(q.msg);
    }
    for (uint8_t k = 0; k < FZ_MEMBERS; k++) {
        NS_ASSERT(!ns_cohort_busy(cores[k]));
        ns_cohort_free(cores[k]);
    }
    NS_ASSERT(template_count >= 6);
}

static uint64_t refusals(const ns_cohort *c)
{
    uint64_t sum = 0;
    for (int why = 0; why < NS_COHORT_REFUSE_COUNT_; why++)
        sum += ns_cohort_refusals(c, (ns_cohort_refusal)why);
    return sum;
}

static void deliver(ns_cohort *c, uint8_t from_tag, const uint8_t *msg, size_t len)
{
    uint8_t from[NS_ID_BYTES];
    id_of(from, from_tag);
    uint64_t before = refusals(c);
    int rc = ns_cohort_on_message(c, from, msg, len);
    NS_ASSERT(rc == NS_OK || rc == NS_EINVAL);
    if (rc == NS_EINVAL)
        NS_ASSERT(refusals(c) == before + 1);
}

/* A template with up to FZ_PATCHES bytes flipped; returns the input bytes used. */
static size_t op_patched(ns_cohort *c, const uint8_t *p, size_t left)
{
    if (left < 3 || template_count == 0)
        return left;
    const fz_template *t = &templates[p[0] % template_count];
    uint8_t *msg = malloc(t->len);
    NS_ASSERT(msg != NULL);
    memcpy(msg, t->msg, t->len);
    size_t patches = p[1] % (FZ_PATCHES + 1), used = 3;
    for (size_t k = 0; k < patches && used + 3 <= left; k++, used += 3) {
        size_t at = ((size_t)p[used] | (size_t)p[used + 1] << 8) % t->len;
        msg[at] ^= p[used + 2];
    }
    uint8_t from = p[2] & 0x80 ? (uint8_t)(p[2] % 7) : t->from;
    size_t len = p[2] & 0x40 ? t->len - p[2] % 8 % t->len : t->len;
    deliver(c, from, msg, len);
    free(msg);
    return used;
}

/* Raw bytes from a chosen sender; returns the input bytes used. */
static size_t op_raw(ns_cohort *c, const uint8_t *p, size_t left)
{
    if (left < 3)
        return left;
    size_t len = ((size_t)p[1] | (size_t)p[2] << 8) % (left - 2);
    deliver(c, (uint8_t)(p[0] % 7), p + 3, len);
    return 3 + len;
}

static void op_timer(void)
{
    if (clock_state.timer_id == 0)
        return;
    clock_state.timer_id = 0;
    if (clock_state.at_ms > clock_state.now_ms)
        clock_state.now_ms = clock_state.at_ms;
    clock_state.fn(clock_state.arg, clock_state.now_ms);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    make_templates();
    clock_state = (fz_env){.now_ms = 1800000000000ull};
    ns_cohort_config cfg = config_for(1, send_ignore);
    ns_cohort *c;
    NS_ASSERT(ns_cohort_new(&c, &cfg, FZ_N, &env) == NS_OK);
    uint64_t round = 1;
    start(c, round, 1);
    size_t at = 0;
    for (int ops = 0; ops < FZ_OPS_MAX && at < size; ops++) {
        uint8_t op = data[at++];
        switch (op % 4) {
        case 0:
            at += op_raw(c, data + at, size - at);
            break;
        case 1:
            at += op_patched(c, data + at, size - at);
            break;
        case 2:
            op_timer();
            break;
        case 3:
            round += 1 + op / 4 % 2;
            start(c, round, 1);
            break;
        }
    }
    ns_cohort_free(c);
    NS_ASSERT(clock_state.timer_id == 0);
    return 0;
}
