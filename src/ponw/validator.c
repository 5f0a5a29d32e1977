/*
 * validator.c: checking Proofs of Neural Work from other nodes (SPEC S9).
 *
 * The checks run cheapest first and stop at the first failure, whose verdict is counted:
 * structure and signature (ns_proof_open), freshness against the caller's clock, then what the
 * validator remembers of the author: its accepted proofs of the last hour (at most
 * NS_PONW_PER_HOUR_MAX, so "seen before", "over the hourly rate" and "overlaps an accepted
 * period" are all answered from one small array), the token rate, and what the author's tier
 * can plausibly do. A proof older than NS_PONW_MAX_AGE_MS is stale whatever the memory says, so
 * the memory, which covers an hour, always covers the window in which a replay could be accepted.
 *
 * Nodes live in an open-addressing table of at most nodes_max entries; when it is full, nodes
 * with no proof in the last hour are dropped (their memory no longer decides anything) and the
 * table is rebuilt. Memory: about 2 KiB a node.
 */
#include <stdlib.h>
#include <string.h>

#include "neuroshard/ponw.h"

#define HOUR_MS 3600000ull

typedef struct seen_proof {
    uint64_t start_ms; /* the period */
    uint64_t end_ms;
    uint8_t id[8]; /* the id's first bytes: a collision needs a signed proof of the same author */
} seen_proof;

typedef struct node_slot {
    bool used;
    uint8_t node_id[NS_NODE_ID_BYTES];
    uint64_t last_ms; /* newest end of an accepted period */
    uint32_t count;   /* proofs remembered */
    seen_proof ring[NS_PONW_PER_HOUR_MAX];
} node_slot;

struct ns_ponw_validator {
    uint32_t nodes_max;
    uint32_t capacity; /* power of two, >= 2 * nodes_max */
    uint32_t used;
    node_slot *slots;
    uint64_t counts[NS_PONW_VERDICTS_];
};

static const char *const verdict_names[NS_PONW_VERDICTS_] = {
    [NS_PONW_ACCEPTED] = "accepted",
    [NS_PONW_MALFORMED] = "malformed",
    [NS_PONW_BAD_SIGNATURE] = "bad_signature",
    [NS_PONW_STALE] = "stale",
    [NS_PONW_FUTURE] = "future",
    [NS_PONW_DUPLICATE] = "duplicate",
    [NS_PONW_OVER_RATE] = "over_rate",
    [NS_PONW_OVER_TOKENS] = "over_tokens",
    [NS_PONW_OVERLAP] = "overlap",
    [NS_PONW_IMPLAUSIBLE] = "implausible",
    [NS_PONW_FULL] = "full",
};

const char *ns_ponw_verdict_name(ns_ponw_verdict v)
{
    return (unsigned)v < NS_PONW_VERDICTS_ ? verdict_names[v] : "unknown";
}

uint64_t ns_ponw_tier_tokens_per_s_max(uint32_t tier)
{
    /* Ten times what a node of the tier reaches on the default model, so that only claims no
     * machine of the tier could make are refused. */
    static const uint64_t per_tier[6] = {0, 200000, 50000, 20000, 5000, 2000};
    return tier >= 1 && tier <= 5 ? per_tier[tier] : 0;
}

int ns_ponw_validator_new(ns_ponw_validator **out, uint32_t nodes_max)
{
    if (nodes_max == 0 || nodes_max > (1u << 24))
        return NS_EINVAL;
    ns_ponw_validator *v = calloc(1, sizeof *v);
    if (v == NULL)
        return NS_ENOMEM;
    v->nodes_max = nodes_max;
    v->capacity = 1;
    while (v->capacity < 2 * nodes_max)
        v->capacity *= 2;
    v->slots = calloc(v->capacity, sizeof *v->slots);
    if (v->slots == NULL) {
        free(v);
        return NS_ENOMEM;
    }
    *out = v;
    return NS_OK;
}

void ns_ponw_validator_free(ns_ponw_validator *v)
{
    if (v == NULL)
        return;
    free(v->slots);
    free(v);
}

uint64_t ns_ponw_verdict_count(const ns_ponw_validator *v, ns_ponw_verdict verdict)
{
    return (unsigned)verdict < NS_PONW_VERDICTS_ ? v->counts[verdict] : 0;
}

static uint32_t slot_index(const ns_ponw_validator *v, const uint8_t node_id[NS_NODE_ID_BYTES])
{
    uint32_t h; /* node ids are hashes: their first bytes are uniform */
    memcpy(&h, node_id, sizeof h);
    return h & (v->capacity - 1);
}

/* The node's slot, or NULL (with *free_slot the slot it would take). */
static node_slot *find(ns_ponw_validator *v, const uint8_t node_id[NS_NODE_ID_BYTES],
                       node_slot **free_slot)
{
    for (uint32_t i = slot_index(v, node_id);; i = (i + 1) & (v->capacity - 1)) {
        node_slot *s = &v->slots[i];
        if (!s->used) {
            *free_slot = s;
            return NULL;
        }
        if (memcmp(s->node_id, node_id, NS_NODE_ID_BYTES) == 0)
            return s;
    }
}

/* Drops the nodes silent for an hour and rebuilds the table. */
static void purge(ns_ponw_validator *v, uint64_t now_ms)
{
    node_slot *old = v->slots;
    node_slot *fresh = calloc(v->capacity, sizeof *fresh);
    if (fresh == NULL)
        return; /* keep the full table: new nodes are refused until memory returns */
    v->slots = fresh;
    v->used = 0;
    for (uint32_t i = 0; i < v->capacity; i++) {
        if (!old[i].used || old[i].last_ms + HOUR_MS <= now_ms)
            continue;
        node_slot *free_slot = NULL;
        (void)find(v, old[i].node_id, &free_slot);
        *free_slot = old[i];
        v->used++;
    }
    free(old);
}

/* Proofs of the ring within the last hour before now_ms. */
static uint32_t in_last_hour(const node_slot *s, uint64_t now_ms)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->count; i++)
        n += s->ring[i].end_ms + HOUR_MS > now_ms;
    return n;
}

static ns_ponw_verdict check_history(const node_slot *s, const ns_proof *p, uint64_t now_ms)
{
    if (s == NULL)
        return NS_PONW_ACCEPTED;
    for (uint32_t i = 0; i < s->count; i++)
        if (memcmp(s->ring[i].id, p->id, sizeof s->ring[i].id) == 0)
            return NS_PONW_DUPLICATE;
    if (in_last_hour(s, now_ms) >= NS_PONW_PER_HOUR_MAX)
        return NS_PONW_OVER_RATE;
    for (uint32_t i = 0; i < s->count; i++)
        if (p->period_start_ms < s->ring[i].end_ms && s->ring[i].start_ms < p->timestamp_ms)
            return NS_PONW_OVERLAP;
    return NS_PONW_ACCEPTED;
}

ns_ponw_verdict ns_ponw_check_work(const ns_proof *p)
{
    uint64_t period_ms = p->timestamp_ms - p->period_start_ms; /* > 0: ns_proof_check */
    /* tokens / minutes > 1 M, without division: tokens * 60000 > 1 M * period_ms */
    unsigned __int128 lhs = (unsigned __int128)p->tokens * 60000u;
    unsigned __int128 rhs = (unsigned __int128)NS_PONW_TOKENS_PER_MIN_MAX * period_ms;
    if (lhs > rhs)
        return NS_PONW_OVER_TOKENS;
    lhs = (unsigned __int128)p->tokens * 1000u;
    rhs = (unsigned __int128)ns_ponw_tier_tokens_per_s_max(p->tier) * period_ms;
    if (lhs > rhs)
        return NS_PONW_IMPLAUSIBLE;
    return NS_PONW_ACCEPTED;
}

static ns_ponw_verdict validate(ns_ponw_validator *v, const uint8_t *buf, size_t len,
                                uint64_t now_ms, ns_proof *out)
{
    ns_proof p;
    int rc = ns_proof_open(buf, len, now_ms, &p);
    if (rc == NS_EBADSIG || rc == NS_EAUTHOR)
        return NS_PONW_BAD_SIGNATURE;
    if (rc == NS_EFUTURE)
        return NS_PONW_FUTURE;
    if (rc != NS_OK || ns_proof_check(&p) != NULL)
        return NS_PONW_MALFORMED;
    if (p.timestamp_ms + NS_PONW_MAX_AGE_MS < now_ms)
        return NS_PONW_STALE;
    node_slot *free_slot = NULL;
    node_slot *s = find(v, p.author, &free_slot);
    ns_ponw_verdict verdict = check_history(s, &p, now_ms);
    if (verdict == NS_PONW_ACCEPTED)
        verdict = ns_ponw_check_work(&p);
    if (verdict != NS_PONW_ACCEPTED)
        return verdict;
    if (s == NULL) {
        if (v->used >= v->nodes_max) {
            purge(v, now_ms);
            if (v->used >= v->nodes_max)
                return NS_PONW_FULL;
            (void)find(v, p.author, &free_slot);
        }
        s = free_slot;
        memset(s, 0, sizeof *s);
        s->used = true;
        memcpy(s->node_id, p.author, NS_NODE_ID_BYTES);
        v->used++;
    }
    /* A full memory replaces its oldest proof, which is more than an hour old (fewer than the
     * maximum are within the hour, or the proof was refused above), hence stale for a replay. */
    uint32_t at = s->count;
    if (at == NS_PONW_PER_HOUR_MAX) {
        at = 0;
        for (uint32_t i = 1; i < s->count; i++)
            at = s->ring[i].end_ms < s->ring[at].end_ms ? i : at;
    } else {
        s->count++;
    }
    seen_proof *r = &s->ring[at];
    r->start_ms = p.period_start_ms;
    r->end_ms = p.timestamp_ms;
    memcpy(r->id, p.id, sizeof r->id);
    s->last_ms = p.timestamp_ms > s->last_ms ? p.timestamp_ms : s->last_ms;
    *out = p;
    return NS_PONW_ACCEPTED;
}

ns_ponw_verdict ns_ponw_validate(ns_ponw_validator *v, const uint8_t *buf, size_t len,
                                 uint64_t now_ms, ns_proof *p)
{
    ns_ponw_verdict verdict = validate(v, buf, len, now_ms, p);
    v->counts[verdict]++;
    return verdict;
}

const char *ns_ponw_contradiction(const ns_proof *a, const ns_proof *b)
{
    if (a->type != NS_PROOF_TRAINING || b->type != NS_PROOF_TRAINING || !a->has_training ||
        !b->has_training || memcmp(a->author, b->author, NS_NODE_ID_BYTES) != 0 ||
        b->period_start_ms < a->timestamp_ms ||
        a->training.layer_first != b->training.layer_first ||
        a->training.layer_last != b->training.layer_last)
        return NULL;
    uint64_t a_end = a->training.batch_first + a->batches;
    if (a_end < a->training.batch_first)
        return "the earlier proof's steps overflow";
    if (b->training.batch_first < a_end)
        return "the later proof starts before the steps the earlier one claims were done";
    if (b->training.batch_first == a_end && b->training.outer_round == a->training.outer_round &&
        memcmp(b->training.model_hash_before, a->training.model_hash_after, NS_SHA256_BYTES) != 0)
        return "the later proof starts from other weights than the earlier one claims to end with";
    return NULL;
}

uint32_t ns_ponw_cross_check(const ns_proof *up, const ns_proof *down, uint32_t *mismatched)
{
    *mismatched = 0;
    const ns_training_commit *u = &up->training, *d = &down->training;
    if (!up->has_training || !down->has_training || !u->in_pipeline || !d->in_pipeline ||
        memcmp(u->pipeline_id, d->pipeline_id, NS_SHA256_BYTES) != 0 ||
        u->segment_steps != d->segment_steps || u->segment_steps == 0 ||
        u->layer_last != d->layer_first)
        return 0;
    uint64_t seg = u->segment_steps, compared = 0;
    for (uint32_t i = 0; i < u->micro_batches; i++) {
        uint64_t first = u->batch_first + i * seg;
        if (first < d->batch_first || (first - d->batch_first) % seg != 0)
            continue;
        uint64_t j = (first - d->batch_first) / seg;
        if (j >= d->micro_batches)
            continue;
        compared++;
        if (memcmp(u->activation_out[i], d->activation_in[j], NS_SHA256_BYTES) != 0)
            (*mismatched)++;
    }
    return (uint32_t)compared;
}
