/*
 * cohort.c: the cohort exchange (SPEC S7, S8), a sans-IO core that turns the members' Δs into one
 * aggregate, the same bits on every member, through groups of at most group_max (the grid and
 * the phases are explained above their sections). It must never touch a socket, clock or thread,
 * nor trust a length or index before checking it. Wire format, little-endian, 76 header bytes:
 *   u8 type (1 PART, 2 RESULT) | u8 version (1) | u8 phase | u8 zero | u32 lane (phase 0: 0) |
 *   u32 chunk index | u64 round | u64 chunk first | u64 chunk length |
 *   f64 weight (PART: the sender's weight this phase; RESULT: the accepted weights' sum) |
 *   32 bytes: SHA-256 of the sender's w0 | the compress.h blob (the rest of the message).
 */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/sync.h"

#define WIRE_VERSION    1
#define MSG_PART        1
#define MSG_RESULT      2
#define HEADER_BYTES    76
#define SLOTS_MAX       2  /* slots one member plays in a phase */
#define PHASES_MAX      12 /* group_max 2 and NS_SYNC_MEMBERS_MAX members */
#define PART_WEIGHT_MAX (NS_SYNC_WEIGHT_MAX * NS_SYNC_MEMBERS_MAX) /* a group's sum, any phase */
/* A member shares a group with this node in one phase of a round at most (rows that differ in
 * one digit, or the same row), with at most two lanes each: 2 PARTs and 2 RESULTs. Held, that is
 * 4 of the running round and 4 of the next; more from one sender only crowds out the others. */
#define HELD_PER_SENDER_MAX (4 * SLOTS_MAX)

static_assert((1u << PHASES_MAX) >= NS_SYNC_MEMBERS_MAX, "a grid of sides 2 reaches every member");
static_assert(NS_SYNC_GROUP_MAX >= 2 && NS_SYNC_GROUP_MAX < 256, "positions fit the header");
static_assert(NS_SYNC_HELD_BYTES_MAX >= NS_SYNC_MSG_MAX, "one message of any size can be held");
static_assert(HELD_PER_SENDER_MAX <= NS_SYNC_HELD_MAX, "one sender can be held at all");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "f64 fields are copied as they lie");

typedef struct header {
    uint8_t type, phase;
    uint32_t lane, chunk;
    uint64_t round, first, length;
    double weight;
    uint8_t w0_hash[NS_SHA256_BYTES];
    const uint8_t *blob;
    size_t blob_len;
} header;

typedef struct held_msg {
    uint8_t from[NS_ID_BYTES];
    uint64_t round;
    uint8_t phase;
    uint8_t *msg;
    size_t len;
} held_msg;

/* One grid position this node plays, and its state in the current phase. */
typedef struct slot {
    uint32_t lane;
    float *vec;   /* n: this phase's input, then its result as the RESULTs come */
    float *parts; /* size x own chunk length: the parts at this node's chunk, by position */
    double weight;
    uint32_t pos, size; /* in this phase's group */
    bool aggregated;
    uint32_t parts_count, results_count;
    bool has_part[NS_SYNC_GROUP_MAX];
    double part_weight[NS_SYNC_GROUP_MAX];
    uint8_t *evidence[NS_SYNC_GROUP_MAX]; /* PART bytes, kept only for a verdict callback */
    size_t evidence_len[NS_SYNC_GROUP_MAX];
    bool has_result[NS_SYNC_GROUP_MAX];
    double result_weight[NS_SYNC_GROUP_MAX];
    double input_rms; /* of vec at the phase's start: RESULTs are bounded by it */
} slot;

struct ns_cohort {
    ns_cohort_config config;
    const ns_env *env;
    size_t n;
    /* the round */
    bool running;
    uint64_t round; /* the last started; 0 before any */
    uint8_t w0_hash[NS_SHA256_BYTES];
    uint32_t m, self;                /* members, this node's index among them */
    uint8_t (*members)[NS_ID_BYTES]; /* sorted */
    uint8_t (*scratch)[NS_ID_BYTES]; /* start sorts here, swaps on success */
    uint32_t phases, rows;
    uint32_t sides[PHASES_MAX], strides[PHASES_MAX]; /* of the row digits, phases 1.. */
    uint32_t row, row_pos;
    uint32_t phase;
    uint64_t phase_start_ms;
    bool results_due; /* the timer waits for the RESULT deadline, not the owner's */
    uint64_t timer;   /* 0 when none */
    uint32_t slot_count;
    slot slots[SLOTS_MAX];
    float *agg;
    ns_ef ef; /* residual; n 0 without error feedback */
    ns_cohort_report report;
    uint64_t refused[NS_COHORT_REFUSE_COUNT_];
    held_msg held[NS_SYNC_HELD_MAX];
    size_t held_count, held_bytes;
};

static const char *const refusal_texts[NS_COHORT_REFUSE_COUNT_] = {
    [NS_COHORT_REFUSE_MALFORMED] = "malformed message",
    [NS_COHORT_REFUSE_STALE] = "round or phase already done",
    [NS_COHORT_REFUSE_EARLY] = "round not started",
    [NS_COHORT_REFUSE_NOT_MEMBER] = "sender not in this node's group",
    [NS_COHORT_REFUSE_NOT_OWNER] = "chunk not owned",
    [NS_COHORT_REFUSE_DUPLICATE] = "duplicate",
    [NS_COHORT_REFUSE_BAD_BLOB] = "blob does not decode",
    [NS_COHORT_REFUSE_BASE] = "base weights differ",
    [NS_COHORT_REFUSE_RESULT_BOUND] = "result beyond its bound",
};

const char *ns_cohort_refusal_text(ns_cohort_refusal why)
{
    NS_ASSERT((unsigned)why < NS_COHORT_REFUSE_COUNT_);
    return refusal_texts[why];
}

/* ---- the wire ----------------------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A new message of the header and blob (free with free()); NULL when out of memory. */
static uint8_t *msg_build(const header *h, size_t *out_len)
{
    NS_ASSERT(h->type == MSG_PART || h->type == MSG_RESULT);
    uint8_t *msg = malloc(HEADER_BYTES + h->blob_len);
    if (msg == NULL)
        return NULL;
    msg[0] = h->type;
    msg[1] = WIRE_VERSION;
    msg[2] = h->phase;
    msg[3] = 0;
    put_u32(msg + 4, h->lane);
    put_u32(msg + 8, h->chunk);
    put_u64(msg + 12, h->round);
    put_u64(msg + 20, h->first);
    put_u64(msg + 28, h->length);
    memcpy(msg + 36, &h->weight, 8);
    memcpy(msg + 44, h->w0_hash, NS_SHA256_BYTES);
    memcpy(msg + HEADER_BYTES, h->blob, h->blob_len);
    *out_len = HEADER_BYTES + h->blob_len;
    return msg;
}

/* The header's own checks: those that need no state. */
static int msg_parse(const uint8_t *buf, size_t len, header *h)
{
    if (len < HEADER_BYTES + NS_COMPRESS_HEADER_BYTES || len > NS_SYNC_MSG_MAX)
        return NS_EPARSE;
    if ((buf[0] != MSG_PART && buf[0] != MSG_RESULT) || buf[1] != WIRE_VERSION || buf[3] != 0)
        return NS_EPARSE;
    h->type = buf[0];
    h->phase = buf[2];
    h->lane = get_u32(buf + 4);
    h->chunk = get_u32(buf + 8);
    h->round = get_u64(buf + 12);
    h->first = get_u64(buf + 20);
    h->length = get_u64(buf + 28);
    memcpy(&h->weight, buf + 36, 8);
    memcpy(h->w0_hash, buf + 44, NS_SHA256_BYTES);
    h->blob = buf + HEADER_BYTES;
    h->blob_len = len - HEADER_BYTES;
    if (h->phase >= PHASES_MAX || h->chunk >= NS_SYNC_GROUP_MAX || h->lane >= NS_SYNC_GROUP_MAX)
        return NS_EPARSE;
    if (!isfinite(h->weight) || h->weight < 0.0 || h->weight > PART_WEIGHT_MAX || h->round == 0)
        return NS_EPARSE;
    return NS_OK;
}

int ns_cohort_part_parse(const uint8_t *msg, size_t len, ns_cohort_part *out)
{
    header h;
    if (msg == NULL || msg_parse(msg, len, &h) != NS_OK || h.type != MSG_PART)
        return NS_EPARSE;
    *out = (ns_cohort_part){.round = h.round,
                            .phase = h.phase,
                            .lane = h.lane,
                            .chunk = h.chunk,
                            .first = h.first,
                            .length = h.length,
                            .weight = h.weight,
                            .blob = h.blob,
                            .blob_len = h.blob_len};
    memcpy(out->w0_hash, h.w0_hash, NS_SHA256_BYTES);
    return NS_OK;
}

/* An upper bound of one message's bytes for a chunk of len floats (compress.h's layout: at most
 * a 5-byte index gap, one int8 and a share of a scale per kept value, then zstd's own bound). */
static uint64_t msg_bytes_bound(const ns_compress_config *cfg, uint64_t len)
{
    uint64_t k = (uint64_t)ceil((double)len * cfg->density);
    if (k > len)
        k = len;
    uint64_t raw = 6 * k + 4 * (k / cfg->chunk + 1);
    return HEADER_BYTES + NS_COMPRESS_HEADER_BYTES + raw + raw / 128 + 4096;
}

/* ---- the grid ----------------------------------------------------------------------------- */

/* Members sorted by id are dealt in order into R rows of q or q + 1 (q = m / R, the first m % R
 * rows get one more); R is the smallest number >= ceil(m / g) that is a product of D - 1 sides in
 * 2..g, D the smallest with g^D >= m. Phase 0 is an exchange within each row. Phases 1..D-1 run
 * over slots (lane k < s0 = ceil(m / R), row r): slot (k, r) is played by the member at position
 * k mod |row r| of row r, so a member of a short row plays two slots (never more, never two in
 * one group), each with its own copy of the row's result. In phase p the group of slot (k, r) is
 * the slots (k, r') whose rows differ from r only in digit p of r's mixed-radix digits (sides
 * s1..s_{D-1}). All groups of a phase within a block so receive the same inputs in the same
 * order, and as aggregation and compression are deterministic, the whole block ends each phase
 * with the same bits, and after phase D-1 the whole cohort. */

/* Splits rows into dims sides in 2..g (largest first); false when it cannot. */
static bool grid_factor(uint32_t rows, uint32_t dims, uint32_t g, uint32_t *sides)
{
    if (dims == 0)
        return rows == 1;
    for (uint32_t f = g; f >= 2; f--) {
        if (rows % f == 0 && grid_factor(rows / f, dims - 1, g, sides + 1)) {
            sides[0] = f;
            return true;
        }
    }
    return false;
}

static void grid_plan(ns_cohort *c, uint32_t m)
{
    uint32_t g = c->config.group_max, dims = 0;
    for (uint64_t reach = 1; reach < m; reach *= g)
        dims++;
    NS_ASSERT(dims <= PHASES_MAX);
    c->phases = dims;
    c->rows = 1;
    if (dims >= 2) {
        uint32_t rows = (m + g - 1) / g;
        while (!grid_factor(rows, dims - 1, g, &c->sides[1]))
            rows++; /* ends at g^(dims - 1) at the latest */
        c->rows = rows;
    }
    uint32_t stride = 1;
    for (uint32_t p = 1; p < dims; p++) {
        c->strides[p] = stride;
        stride *= c->sides[p];
    }
    NS_ASSERT(stride == c->rows);
}

static uint32_t row_count(const ns_cohort *c, uint32_t r)
{
    return c->m / c->rows + (r < c->m % c->rows ? 1 : 0);
}

static uint32_t row_start(const ns_cohort *c, uint32_t r)
{
    uint32_t q = c->m / c->rows, extra = c->m % c->rows;
    return r * q + (r < extra ? r : extra);
}

static void row_of(const ns_cohort *c, uint32_t i, uint32_t *r, uint32_t *pos)
{
    uint32_t q = c->m / c->rows, extra = c->m % c->rows, big = extra * (q + 1);
    if (i < big) {
        *r = i / (q + 1);
        *pos = i % (q + 1);
    } else {
        *r = extra + (i - big) / q;
        *pos = (i - big) % q;
    }
}

static uint32_t lanes(const ns_cohort *c)
{
    return (c->m + c->rows - 1) / c->rows;
}

static uint32_t digit(const ns_cohort *c, uint32_t r, uint32_t p)
{
    return r / c->strides[p] % c->sides[p];
}

static uint32_t with_digit(const ns_cohort *c, uint32_t r, uint32_t p, uint32_t j)
{
    return r - digit(c, r, p) * c->strides[p] + j * c->strides[p];
}

static uint32_t slot_member(const ns_cohort *c, uint32_t lane, uint32_t r)
{
    return row_start(c, r) + lane % row_count(c, r);
}

/* The member at position j of slot s's group in the current phase. */
static uint32_t group_member(const ns_cohort *c, const slot *s, uint32_t j)
{
    NS_ASSERT(j < s->size);
    if (c->phase == 0)
        return row_start(c, c->row) + j;
    return slot_member(c, s->lane, with_digit(c, c->row, c->phase, j));
}

static size_t chunk_first(const ns_cohort *c, const slot *s, uint32_t j)
{
    return (size_t)((uint64_t)j * c->n / s->size);
}

static size_t chunk_len(const ns_cohort *c, const slot *s, uint32_t j)
{
    return chunk_first(c, s, j + 1) - chunk_first(c, s, j);
}

static int id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, NS_ID_BYTES);
}

static int member_index(const ns_cohort *c, const uint8_t id[NS_ID_BYTES])
{
    const uint8_t(*hit)[NS_ID_BYTES] = bsearch(id, c->members, c->m, NS_ID_BYTES, id_cmp);
    return hit == NULL ? -1 : (int)(hit - c->members);
}

static uint32_t active_slots(const ns_cohort *c)
{
    return c->phase == 0 ? 1 : c->slot_count;
}

/* ---- life and death ----------------------------------------------------------------------- */

static bool compress_config_ok(const ns_compress_config *cfg)
{
    return isfinite(cfg->density) && cfg->density > 0.0 && cfg->density <= 1.0 && cfg->chunk >= 1 &&
           cfg->chunk <= NS_COMPRESS_CHUNK_MAX && cfg->zstd_level >= 1 && cfg->zstd_level <= 19;
}

/* ns_agg_run is the judge of its config: one input of one float is run through it. */
static bool agg_config_ok(const ns_agg_config *cfg)
{
    float v = 1.0f, out;
    ns_agg_input in = {.v = &v, .weight = 1.0};
    return ns_agg_run(cfg, &in, 1, 1, &out, NULL, NULL) == NS_OK;
}

static int check_config(const ns_cohort_config *cfg, size_t n)
{
    if (cfg->send == NULL || cfg->done == NULL)
        return NS_EINVAL;
    if (cfg->group_max < 2 || cfg->group_max > NS_SYNC_GROUP_MAX || n < cfg->group_max)
        return NS_EINVAL;
    if (!compress_config_ok(&cfg->compress) || !agg_config_ok(&cfg->agg))
        return NS_EINVAL;
    if (n > NS_COMPRESS_N_MAX || msg_bytes_bound(&cfg->compress, (n + 1) / 2) > NS_SYNC_MSG_MAX)
        return NS_ETOOBIG;
    return NS_OK;
}

static int alloc_buffers(ns_cohort *c)
{
    size_t n = c->n;
    c->members = malloc(NS_SYNC_MEMBERS_MAX * sizeof *c->members);
    c->scratch = malloc(NS_SYNC_MEMBERS_MAX * sizeof *c->scratch);
    c->agg = malloc(n * sizeof *c->agg);
    if (c->members == NULL || c->scratch == NULL || c->agg == NULL)
        return NS_ENOMEM;
    for (int i = 0; i < SLOTS_MAX; i++) {
        c->slots[i].vec = malloc(n * sizeof(float));
        c->slots[i].parts = malloc((n + NS_SYNC_GROUP_MAX) * sizeof(float));
        if (c->slots[i].vec == NULL || c->slots[i].parts == NULL)
            return NS_ENOMEM;
    }
    if (c->config.error_feedback)
        return ns_ef_init(&c->ef, n);
    return NS_OK;
}

int ns_cohort_new(ns_cohort **out, const ns_cohort_config *config, size_t n, const ns_env *env)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(config != NULL);
    NS_ASSERT(env != NULL);
    ns_cohort_config cfg = *config;
    if (cfg.group_max == 0)
        cfg.group_max = NS_SYNC_GROUP_MAX;
    if (cfg.timeout_ms == 0)
        cfg.timeout_ms = NS_SYNC_TIMEOUT_MS;
    int err = check_config(&cfg, n);
    if (err != NS_OK)
        return err;
    ns_cohort *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NS_ENOMEM;
    c->config = cfg;
    c->env = env;
    c->n = n;
    err = alloc_buffers(c);
    if (err != NS_OK) {
        ns_cohort_free(c);
        return err;
    }
    *out = c;
    return NS_OK;
}

static void cancel_timer(ns_cohort *c)
{
    if (c->timer != 0)
        ns_env_timer_cancel(c->env, c->timer);
    c->timer = 0;
}

static void free_evidence(slot *s)
{
    for (int j = 0; j < NS_SYNC_GROUP_MAX; j++) {
        free(s->evidence[j]);
        s->evidence[j] = NULL;
        s->evidence_len[j] = 0;
    }
}

static void held_remove(ns_cohort *c, size_t i)
{
    NS_ASSERT(i < c->held_count);
    NS_ASSERT(c->held_bytes >= c->held[i].len);
    c->held_bytes -= c->held[i].len;
    free(c->held[i].msg);
    memmove(&c->held[i], &c->held[i + 1], (c->held_count - i - 1) * sizeof c->held[0]);
    c->held_count--;
}

void ns_cohort_free(ns_cohort *c)
{
    if (c == NULL)
        return;
    cancel_timer(c);
    while (c->held_count > 0)
        held_remove(c, c->held_count - 1);
    for (int i = 0; i < SLOTS_MAX; i++) {
        free_evidence(&c->slots[i]);
        free(c->slots[i].vec);
        free(c->slots[i].parts);
    }
    if (c->ef.residual != NULL)
        ns_ef_free(&c->ef);
    free(c->members);
    free(c->scratch);
    free(c->agg);
    free(c);
}

uint64_t ns_cohort_refusals(const ns_cohort *c, ns_cohort_refusal why)
{
    NS_ASSERT(c != NULL);
    NS_ASSERT((unsigned)why < NS_COHORT_REFUSE_COUNT_);
    return c->refused[why];
}

bool ns_cohort_busy(const ns_cohort *c)
{
    NS_ASSERT(c != NULL);
    return c->running;
}

/* ---- sending ------------------------------------------------------------------------------ */

static void send_msg(ns_cohort *c, const slot *s, uint32_t to_pos, header *h)
{
    uint32_t to = group_member(c, s, to_pos);
    NS_ASSERT(to != c->self);
    size_t len = HEADER_BYTES + h->blob_len;
    uint8_t *msg = msg_build(h, &len);
    if (msg == NULL || len > NS_SYNC_MSG_MAX) {
        NS_LOG_E("sync", "message not sent round=%llu phase=%u len=%zu",
                 (unsigned long long)c->round, c->phase, len);
        free(msg);
        return;
    }
    c->config.send(c->config.arg, c->members[to], msg, len);
    c->report.bytes_sent += len;
    free(msg);
}

static header header_for(const ns_cohort *c, const slot *s, uint8_t type, uint32_t chunk)
{
    header h = {.type = type,
                .phase = (uint8_t)c->phase,
                .lane = c->phase == 0 ? 0 : s->lane,
                .chunk = chunk,
                .round = c->round,
                .first = chunk_first(c, s, chunk),
                .length = chunk_len(c, s, chunk)};
    memcpy(h.w0_hash, c->w0_hash, NS_SHA256_BYTES);
    return h;
}

static bool keeps_evidence(const ns_cohort *c)
{
    return c->config.verdict != NULL || c->config.evidence != NULL;
}

/* Encodes chunk j of s's vector (against the residual's range on phase 0) and sends it to its
 * owner, or, for this node's own chunk, decodes it as the owner's own part. */
static void send_part(ns_cohort *c, slot *s, uint32_t j)
{
    size_t first = chunk_first(c, s, j), len = chunk_len(c, s, j);
    ns_ef view = {.n = len}, *ef = NULL;
    if (c->phase == 0 && c->config.error_feedback) {
        view.residual = c->ef.residual + first; /* the residual's range of this chunk */
        ef = &view;
    }
    uint8_t *blob;
    size_t blob_len;
    int err = ns_compress_encode(&c->config.compress, s->vec + first, len, ef, &blob, &blob_len);
    NS_ASSERT(err != NS_EINVAL); /* the config was checked, the vector is finite */
    if (err != NS_OK) {
        NS_LOG_E("sync", "part not encoded round=%llu err=%s", (unsigned long long)c->round,
                 ns_strerror(err));
        return;
    }
    if (j == s->pos) {
        err = ns_compress_decode(blob, blob_len, s->parts + (size_t)j * len, len);
        NS_ASSERT(err == NS_OK);
        if (keeps_evidence(c)) { /* the owner's own part, as the PART it would have sent */
            header h = header_for(c, s, MSG_PART, j);
            h.weight = s->weight;
            h.blob = blob;
            h.blob_len = blob_len;
            free(s->evidence[j]);
            s->evidence[j] = msg_build(&h, &s->evidence_len[j]);
            if (s->evidence[j] == NULL)
                s->evidence_len[j] = 0;
        }
        s->has_part[j] = true;
        s->part_weight[j] = s->weight;
        s->parts_count++;
    } else {
        header h = header_for(c, s, MSG_PART, j);
        h.weight = s->weight;
        h.blob = blob;
        h.blob_len = blob_len;
        send_msg(c, s, j, &h);
    }
    free(blob);
}

/* ---- the owner ---------------------------------------------------------------------------- */

static void judge(ns_cohort *c, slot *s, const uint32_t *from_pos, const ns_agg_verdict *verdicts,
                  const double *sigmas, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        if (verdicts[i] != NS_AGG_REJECTED && verdicts[i] != NS_AGG_FRAUD)
            continue;
        c->report.rejected++;
        uint32_t q = from_pos[i];
        if (q == s->pos)
            continue; /* this node's own part: counted, not reported */
        const uint8_t *from = c->members[group_member(c, s, q)];
        NS_LOG_I("sync", "contribution screened round=%llu phase=%u verdict=%s sigma=%.2f",
                 (unsigned long long)c->round, c->phase, ns_agg_verdict_name(verdicts[i]),
                 sigmas[i]);
        if (c->config.verdict != NULL)
            c->config.verdict(c->config.arg, from, verdicts[i], sigmas[i], s->evidence[q],
                              s->evidence_len[q]);
        if (c->config.evidence == NULL || verdicts[i] != NS_AGG_FRAUD)
            continue;
        ns_cohort_evidence parts[NS_SYNC_GROUP_MAX];
        size_t n = 0;
        for (size_t t = 0; t < k; t++) { /* the screen's inputs, in its order */
            uint32_t p = from_pos[t];
            if (s->evidence[p] == NULL)
                continue; /* not kept (out of memory): the bundle lacks it */
            memcpy(parts[n].from, c->members[group_member(c, s, p)], NS_ID_BYTES);
            parts[n].msg = s->evidence[p];
            parts[n++].len = s->evidence_len[p];
        }
        c->config.evidence(c->config.arg, from, sigmas[i], parts, n);
    }
}

/* Screens and aggregates the parts at s's chunk into s->vec; the accepted weights' sum. */
static double aggregate_parts(ns_cohort *c, slot *s, float *out, size_t len, int *err)
{
    ns_agg_input in[NS_SYNC_GROUP_MAX];
    uint32_t from_pos[NS_SYNC_GROUP_MAX];
    size_t k = 0;
    for (uint32_t q = 0; q < s->size; q++) {
        if (!s->has_part[q])
            continue;
        in[k] = (ns_agg_input){.v = s->parts + (size_t)q * len, .weight = s->part_weight[q]};
        from_pos[k++] = q;
    }
    c->report.contributions += (uint32_t)k;
    memset(out, 0, len * sizeof *out);
    if (k == 0) {
        *err = NS_ENOENT;
        return 0.0;
    }
    ns_agg_verdict verdicts[NS_SYNC_GROUP_MAX];
    double sigmas[NS_SYNC_GROUP_MAX];
    *err = ns_agg_run(&c->config.agg, in, k, len, out, verdicts, sigmas);
    NS_ASSERT(*err != NS_EINVAL); /* the config was checked, every input has n floats */
    if (*err == NS_ENOMEM)
        return 0.0;
    judge(c, s, from_pos, verdicts, sigmas, k);
    double sum = 0.0;
    for (size_t i = 0; i < k; i++) {
        if (verdicts[i] == NS_AGG_ACCEPTED)
            sum += in[i].weight;
    }
    return sum;
}

/* The owner's work: aggregate, encode, use the decoded bits, send them to the group. */
static void aggregate(ns_cohort *c, slot *s)
{
    NS_ASSERT(!s->aggregated);
    s->aggregated = true;
    size_t first = chunk_first(c, s, s->pos), len = chunk_len(c, s, s->pos);
    float *out = s->vec + first;
    int err;
    double weight = aggregate_parts(c, s, out, len, &err);
    free_evidence(s);
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    if (err != NS_ENOMEM)
        err = ns_compress_encode(&c->config.compress, out, len, NULL, &blob, &blob_len);
    if (err == NS_OK)
        err = ns_compress_decode(blob, blob_len, out, len);
    if (err != NS_OK) {
        NS_LOG_E("sync", "result lost round=%llu err=%s", (unsigned long long)c->round,
                 ns_strerror(err));
        memset(out, 0, len * sizeof *out);
        weight = 0.0;
        c->report.missing_chunks++;
    }
    s->has_result[s->pos] = true;
    s->result_weight[s->pos] = weight;
    s->results_count++;
    for (uint32_t q = 0; q < s->size && err == NS_OK; q++) {
        if (q == s->pos)
            continue;
        header h = header_for(c, s, MSG_RESULT, s->pos);
        h.weight = weight;
        h.blob = blob;
        h.blob_len = blob_len;
        send_msg(c, s, q, &h);
    }
    free(blob);
}

/* ---- receiving ---------------------------------------------------------------------------- */

static int refuse(ns_cohort_refusal *why, ns_cohort_refusal reason)
{
    *why = reason;
    return NS_EINVAL;
}

/* Finds the slot a message of the current phase is for and the sender's position in its
 * group. */
static int locate(const ns_cohort *c, const uint8_t from[NS_ID_BYTES], const header *h,
                  uint32_t *slot_index, uint32_t *from_pos, ns_cohort_refusal *why)
{
    int sender = member_index(c, from);
    if (sender < 0 || (uint32_t)sender == c->self)
        return refuse(why, NS_COHORT_REFUSE_NOT_MEMBER);
    uint32_t rs, ps;
    row_of(c, (uint32_t)sender, &rs, &ps);
    if (c->phase == 0) {
        if (h->lane != 0)
            return refuse(why, NS_COHORT_REFUSE_MALFORMED);
        if (rs != c->row)
            return refuse(why, NS_COHORT_REFUSE_NOT_MEMBER);
        *slot_index = 0;
        *from_pos = ps;
        return NS_OK;
    }
    if (h->lane >= lanes(c))
        return refuse(why, NS_COHORT_REFUSE_MALFORMED);
    uint32_t p = c->phase;
    for (uint32_t i = 0; i < c->slot_count; i++) {
        if (c->slots[i].lane != h->lane)
            continue;
        if (with_digit(c, rs, p, 0) != with_digit(c, c->row, p, 0) ||
            slot_member(c, h->lane, rs) != (uint32_t)sender)
            return refuse(why, NS_COHORT_REFUSE_NOT_MEMBER);
        *slot_index = i;
        *from_pos = digit(c, rs, p);
        return NS_OK;
    }
    return refuse(why, NS_COHORT_REFUSE_NOT_MEMBER); /* a lane this node does not play */
}

static int take_part(ns_cohort *c, slot *s, uint32_t from_pos, const header *h, const uint8_t *msg,
                     size_t len, ns_cohort_refusal *why)
{
    if (s->has_part[from_pos])
        return refuse(why, NS_COHORT_REFUSE_DUPLICATE);
    if (s->aggregated)
        return refuse(why, NS_COHORT_REFUSE_STALE);
    uint8_t *evidence = keeps_evidence(c) ? malloc(len) : NULL;
    if (evidence != NULL)
        memcpy(evidence, msg, len); /* out of memory: judged all the same, without evidence */
    float *into = s->parts + (size_t)from_pos * h->length;
    if (ns_compress_decode(h->blob, h->blob_len, into, (size_t)h->length) != NS_OK) {
        free(evidence);
        return refuse(why, NS_COHORT_REFUSE_BAD_BLOB);
    }
    s->has_part[from_pos] = true;
    s->part_weight[from_pos] = h->weight;
    s->evidence[from_pos] = evidence;
    s->evidence_len[from_pos] = evidence != NULL ? len : 0;
    s->parts_count++;
    return NS_OK;
}

static double norm2(const float *v, size_t n)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += (double)v[i] * v[i];
    return sqrt(sum);
}

/* The chunk's old bytes are this phase's input, already sent: a blob that fails to decode
 * zeroes them, which is what the chunk holds if no good RESULT comes either; so does a result
 * beyond its bound (NS_COHORT_REFUSE_RESULT_BOUND). */
static int take_result(slot *s, const header *h, ns_cohort_refusal *why)
{
    if (s->has_result[h->chunk])
        return refuse(why, NS_COHORT_REFUSE_DUPLICATE);
    float *v = s->vec + h->first;
    size_t len = (size_t)h->length;
    double own = norm2(v, len), rms_len = s->input_rms * sqrt((double)len);
    double bound = NS_COHORT_RESULT_MAGNITUDE_MAX * (own > rms_len ? own : rms_len);
    if (ns_compress_decode(h->blob, h->blob_len, v, len) != NS_OK)
        return refuse(why, NS_COHORT_REFUSE_BAD_BLOB);
    double got = norm2(v, len);
    if (!(got <= bound) && bound > 0.0) {
        memset(v, 0, len * sizeof *v);
        return refuse(why, NS_COHORT_REFUSE_RESULT_BOUND);
    }
    s->has_result[h->chunk] = true;
    s->result_weight[h->chunk] = h->weight;
    s->results_count++;
    return NS_OK;
}

/* A message of the current round and phase. */
static int take(ns_cohort *c, const uint8_t from[NS_ID_BYTES], const header *h, const uint8_t *msg,
                size_t len, ns_cohort_refusal *why)
{
    uint32_t si, from_pos;
    int err = locate(c, from, h, &si, &from_pos, why);
    if (err != NS_OK)
        return err;
    slot *s = &c->slots[si];
    if (h->chunk >= s->size || h->first != chunk_first(c, s, h->chunk) ||
        h->length != chunk_len(c, s, h->chunk))
        return refuse(why, NS_COHORT_REFUSE_MALFORMED);
    if (h->chunk != (h->type == MSG_PART ? s->pos : from_pos))
        return refuse(why, NS_COHORT_REFUSE_NOT_OWNER);
    if (memcmp(h->w0_hash, c->w0_hash, NS_SHA256_BYTES) != 0)
        return refuse(why, NS_COHORT_REFUSE_BASE);
    err =
        h->type == MSG_PART ? take_part(c, s, from_pos, h, msg, len, why) : take_result(s, h, why);
    if (err == NS_OK)
        c->report.bytes_received += len;
    return err;
}

static int hold(ns_cohort *c, const uint8_t from[NS_ID_BYTES], const header *h, const uint8_t *msg,
                size_t len, ns_cohort_refusal *why)
{
    if (c->held_count == NS_SYNC_HELD_MAX || c->held_bytes + len > NS_SYNC_HELD_BYTES_MAX)
        return refuse(why, NS_COHORT_REFUSE_EARLY);
    size_t from_sender = 0;
    for (size_t i = 0; i < c->held_count; i++)
        from_sender += memcmp(c->held[i].from, from, NS_ID_BYTES) == 0;
    if (from_sender == HELD_PER_SENDER_MAX)
        return refuse(why, NS_COHORT_REFUSE_EARLY);
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return refuse(why, NS_COHORT_REFUSE_EARLY);
    memcpy(copy, msg, len);
    held_msg *e = &c->held[c->held_count++];
    memcpy(e->from, from, NS_ID_BYTES);
    e->round = h->round;
    e->phase = h->phase;
    e->msg = copy;
    e->len = len;
    c->held_bytes += len;
    return NS_OK;
}

static int receive(ns_cohort *c, const uint8_t from[NS_ID_BYTES], const uint8_t *msg, size_t len,
                   ns_cohort_refusal *why)
{
    header h;
    if (msg_parse(msg, len, &h) != NS_OK)
        return refuse(why, NS_COHORT_REFUSE_MALFORMED);
    if (h.round > c->round && h.round - c->round == 1)
        return hold(c, from, &h, msg, len, why);
    if (h.round > c->round)
        return refuse(why, NS_COHORT_REFUSE_EARLY);
    if (h.round < c->round || !c->running || h.phase < c->phase)
        return refuse(why, NS_COHORT_REFUSE_STALE);
    if (h.phase >= c->phases)
        return refuse(why, NS_COHORT_REFUSE_MALFORMED);
    if (h.phase > c->phase)
        return hold(c, from, &h, msg, len, why);
    return take(c, from, &h, msg, len, why);
}

static void count_refusal(ns_cohort *c, ns_cohort_refusal why)
{
    NS_ASSERT((unsigned)why < NS_COHORT_REFUSE_COUNT_);
    c->refused[why]++;
    NS_LOG_D("sync", "message refused round=%llu reason=\"%s\"", (unsigned long long)c->round,
             refusal_texts[why]);
}

/* Takes the held messages of the current round and phase, in the order they came. */
static void take_held(ns_cohort *c)
{
    for (size_t i = 0; i < c->held_count;) {
        held_msg *e = &c->held[i];
        if (e->round != c->round || e->phase != c->phase) {
            i++;
            continue;
        }
        header h;
        ns_cohort_refusal why;
        int err = msg_parse(e->msg, e->len, &h);
        NS_ASSERT(err == NS_OK); /* parsed when held */
        if (take(c, e->from, &h, e->msg, e->len, &why) != NS_OK)
            count_refusal(c, why);
        held_remove(c, i);
    }
}

/* ---- phases ------------------------------------------------------------------------------- */

/* Within a group of s, chunk j = [j n / s, (j + 1) n / s) belongs to position j. At the start of
 * a phase a member encodes every chunk of its vector (error feedback on phase 0 only) and sends
 * PART j to owner j; its own chunk goes through the same encode and decode. The owner aggregates
 * (ns_agg_run, inputs in position order) when all parts are in or timeout_ms after the phase
 * began here, encodes the result, decodes it into its own vector and sends it as RESULT to the
 * others. 2 x timeout_ms after the start a missing RESULT is taken as zero. A slot's weight for
 * the next phase is the chunk-length-weighted mean of its RESULTs' weights (each the sum of the
 * weights its owner accepted). One env timer at a time. */

static void timer_fired(void *arg, uint64_t now_ms);

static void arm(ns_cohort *c, uint64_t after_ms)
{
    cancel_timer(c);
    c->timer = ns_env_timer(c->env, c->phase_start_ms + after_ms, timer_fired, c);
}

static void begin_phase(ns_cohort *c, uint32_t phase)
{
    c->phase = phase;
    c->phase_start_ms = ns_env_now(c->env);
    for (uint32_t i = 0; i < active_slots(c); i++) {
        slot *s = &c->slots[i];
        s->pos = phase == 0 ? c->row_pos : digit(c, c->row, phase);
        s->size = phase == 0 ? row_count(c, c->row) : c->sides[phase];
        NS_ASSERT(s->pos < s->size && s->size <= c->config.group_max);
        s->aggregated = false;
        s->parts_count = s->results_count = 0;
        memset(s->has_part, 0, sizeof s->has_part);
        memset(s->has_result, 0, sizeof s->has_result);
        free_evidence(s);
        s->input_rms = c->n > 0 ? norm2(s->vec, c->n) / sqrt((double)c->n) : 0.0;
        for (uint32_t j = 0; j < s->size; j++)
            send_part(c, s, j);
    }
    c->results_due = false;
    arm(c, c->config.timeout_ms);
    take_held(c);
}

static bool phase_complete(const ns_cohort *c)
{
    for (uint32_t i = 0; i < active_slots(c); i++) {
        if (c->slots[i].results_count < c->slots[i].size)
            return false;
    }
    return true;
}

static void end_phase(ns_cohort *c)
{
    cancel_timer(c);
    for (uint32_t i = 0; i < active_slots(c); i++) {
        slot *s = &c->slots[i];
        double sum = 0.0;
        for (uint32_t j = 0; j < s->size; j++)
            sum += (double)chunk_len(c, s, j) * s->result_weight[j];
        s->weight = sum / (double)c->n;
    }
    if (c->phase == 0) {
        for (uint32_t i = 1; i < c->slot_count; i++) {
            memcpy(c->slots[i].vec, c->slots[0].vec, c->n * sizeof(float));
            c->slots[i].weight = c->slots[0].weight;
        }
    }
}

/* The round is over. The core is idle before done runs, so done may start the next round. */
static void finish(ns_cohort *c)
{
    cancel_timer(c);
    c->running = false;
    memcpy(c->agg, c->slots[0].vec, c->n * sizeof *c->agg);
    ns_cohort_report report = c->report;
    NS_LOG_D("sync",
             "round done round=%llu members=%u phases=%u contributions=%u rejected=%u "
             "missing=%u sent=%llu",
             (unsigned long long)report.round, report.members, report.phases, report.contributions,
             report.rejected, report.missing_chunks, (unsigned long long)report.bytes_sent);
    c->config.done(c->config.arg, c->agg, c->n, &report);
}

/* Does whatever the state allows: aggregate where every part is in, end the phase where every
 * result is in, begin the next (whose held messages may complete it at once), finish. */
static void progress(ns_cohort *c)
{
    while (c->running) {
        for (uint32_t i = 0; i < active_slots(c); i++) {
            slot *s = &c->slots[i];
            if (!s->aggregated && s->parts_count == s->size)
                aggregate(c, s);
        }
        if (!phase_complete(c))
            return;
        end_phase(c);
        if (c->phase + 1 == c->phases) {
            finish(c);
            return;
        }
        begin_phase(c, c->phase + 1);
    }
}

static void results_missing(ns_cohort *c)
{
    for (uint32_t i = 0; i < active_slots(c); i++) {
        slot *s = &c->slots[i];
        for (uint32_t j = 0; j < s->size; j++) {
            if (s->has_result[j])
                continue;
            memset(s->vec + chunk_first(c, s, j), 0, chunk_len(c, s, j) * sizeof(float));
            s->has_result[j] = true;
            s->result_weight[j] = 0.0;
            s->results_count++;
            c->report.missing_chunks++;
        }
    }
}

static void timer_fired(void *arg, uint64_t now_ms)
{
    ns_cohort *c = arg;
    (void)now_ms;
    c->timer = 0;
    NS_ASSERT(c->running);
    if (!c->results_due) {
        for (uint32_t i = 0; i < active_slots(c); i++) {
            if (!c->slots[i].aggregated)
                aggregate(c, &c->slots[i]);
        }
        c->results_due = true;
        arm(c, 2 * c->config.timeout_ms);
    } else {
        results_missing(c);
    }
    progress(c);
}

/* ---- rounds ------------------------------------------------------------------------------- */

static bool finite_all(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]))
            return false;
    }
    return true;
}

/* Sorts the members into c->scratch; NS_EINVAL for one twice or this node missing. */
static int sort_members(ns_cohort *c, const uint8_t (*members)[NS_ID_BYTES], size_t m)
{
    memcpy(c->scratch, members, m * NS_ID_BYTES);
    qsort(c->scratch, m, NS_ID_BYTES, id_cmp);
    bool self_in = false;
    for (size_t i = 0; i < m; i++) {
        if (i > 0 && memcmp(c->scratch[i - 1], c->scratch[i], NS_ID_BYTES) == 0)
            return NS_EINVAL;
        if (memcmp(c->scratch[i], c->config.self_id, NS_ID_BYTES) == 0)
            self_in = true;
    }
    return self_in ? NS_OK : NS_EINVAL;
}

static void abandon(ns_cohort *c)
{
    cancel_timer(c);
    c->running = false;
    for (int i = 0; i < SLOTS_MAX; i++)
        free_evidence(&c->slots[i]);
}

/* Where this node sits on the grid and which lanes it plays. */
static void place_self(ns_cohort *c)
{
    int self = member_index(c, c->config.self_id);
    NS_ASSERT(self >= 0);
    c->self = (uint32_t)self;
    row_of(c, c->self, &c->row, &c->row_pos);
    c->slot_count = 0;
    uint32_t count = row_count(c, c->row);
    for (uint32_t lane = c->row_pos; lane < lanes(c); lane += count) {
        NS_ASSERT(c->slot_count < SLOTS_MAX);
        c->slots[c->slot_count++].lane = lane;
    }
    NS_ASSERT(c->slot_count >= 1);
}

/* Held messages of rounds before this one (and of phases it does not have) go. */
static void drop_held(ns_cohort *c)
{
    for (size_t i = 0; i < c->held_count;) {
        const held_msg *e = &c->held[i];
        if (e->round == c->round && e->phase < c->phases) {
            i++;
            continue;
        }
        count_refusal(c,
                      e->round == c->round ? NS_COHORT_REFUSE_MALFORMED : NS_COHORT_REFUSE_STALE);
        held_remove(c, i);
    }
}

/* One member: the aggregate is this node's Δ as the compression carries it. */
static int solo(ns_cohort *c, const float *delta)
{
    uint8_t *blob;
    size_t blob_len;
    ns_ef *ef = c->config.error_feedback ? &c->ef : NULL;
    int err = ns_compress_encode(&c->config.compress, delta, c->n, ef, &blob, &blob_len);
    NS_ASSERT(err != NS_EINVAL);
    if (err != NS_OK)
        return err;
    err = ns_compress_decode(blob, blob_len, c->slots[0].vec, c->n);
    NS_ASSERT(err == NS_OK);
    free(blob);
    return NS_OK;
}

int ns_cohort_start(ns_cohort *c, uint64_t round, const uint8_t (*members)[NS_ID_BYTES], size_t m,
                    const float *delta, double weight, const uint8_t w0_hash[NS_SHA256_BYTES])
{
    NS_ASSERT(c != NULL);
    NS_ASSERT(w0_hash != NULL);
    if (round <= c->round || members == NULL || m == 0 || m > NS_SYNC_MEMBERS_MAX)
        return NS_EINVAL;
    if (delta == NULL || !finite_all(delta, c->n) || !isfinite(weight) || weight <= 0.0 ||
        weight > NS_SYNC_WEIGHT_MAX)
        return NS_EINVAL;
    int err = sort_members(c, members, m);
    if (err == NS_OK && m == 1)
        err = solo(c, delta); /* before anything changes: it may fail for memory */
    if (err != NS_OK)
        return err;
    abandon(c);
    if (m > 1)
        memcpy(c->slots[0].vec, delta, c->n * sizeof(float));
    uint8_t(*swap)[NS_ID_BYTES] = c->members;
    c->members = c->scratch;
    c->scratch = swap;
    c->m = (uint32_t)m;
    c->round = round;
    memcpy(c->w0_hash, w0_hash, NS_SHA256_BYTES);
    grid_plan(c, c->m);
    place_self(c);
    c->slots[0].weight = weight;
    c->report = (ns_cohort_report){.round = round, .members = c->m, .phases = c->phases};
    c->running = true;
    c->phase = 0;
    drop_held(c);
    if (m == 1) {
        c->report.contributions = 1;
        finish(c);
        return NS_OK;
    }
    begin_phase(c, 0);
    progress(c);
    return NS_OK;
}

int ns_cohort_on_message(ns_cohort *c, const uint8_t from[NS_ID_BYTES], const uint8_t *msg,
                         size_t len)
{
    NS_ASSERT(c != NULL);
    NS_ASSERT(from != NULL);
    NS_ASSERT(msg != NULL || len == 0);
    ns_cohort_refusal why;
    if (receive(c, from, msg, len, &why) != NS_OK) {
        count_refusal(c, why);
        return NS_EINVAL;
    }
    progress(c);
    return NS_OK;
}
