/*
 * plan.c: quorum planning (SPEC S5), a pure function over layer-holder announcements.
 *
 * A quorum is a path through the layers: positions 0..L, and a candidate holding [first, last)
 * is an edge from any position p in [first, last) to last, weighted by its latency. Running a
 * member to the end of what it holds never hurts (whoever would follow it earlier can start
 * later), so these edges are the only ones needed, and the cheapest full cover is a shortest
 * path over a DAG: one pass over positions in order, O(L x candidates), for each band of two
 * adjacent tiers. Candidates are scanned in id order and only a strictly better path replaces a
 * found one, so the answer depends on the set of announcements, never on their order.
 *
 * The path fixes the members and their order; where neighbours' held ranges overlap, where one
 * stops and the next starts is free. A pipeline runs at the pace of its slowest stage, so the
 * boundaries are then moved to make the slowest stage fastest (`balance`: a member takes
 * layer_us per layer, the finisher also the head), an O(members x L^2) pass.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/quorum.h"

#define PLAN_BAND_FIRST   NS_TIER_T1
#define PLAN_BAND_LAST    NS_TIER_T4 /* bands {T1,T2} {T2,T3} {T3,T4} {T4}; T5 never pipelines */
#define PLAN_UNREACHED    UINT64_MAX
#define PLAN_ID_BYTES_MAX (NS_QUORUM_MEMBERS_MAX * NS_ID_BYTES + 8)

static_assert(NS_QUORUM_MEMBERS_MAX >= 1, "a quorum has at least one member");

/* A forward through layers [from, to) of a model of `layers` on candidate c, with the head
 * (head_milli thousandths of a layer) when to is the last layer. */
static uint64_t stage_us(const ns_quorum_candidate *c, uint32_t from, uint32_t to, uint32_t layers,
                         uint32_t head_milli)
{
    uint64_t us = c->layer_us != 0 ? c->layer_us : ns_tier_nominal_us(c->node.tier);
    return us * (to - from) + (to == layers ? us * head_milli / 1000 : 0);
}

/* The cheapest known path from position 0 to each position. */
typedef struct cover {
    uint64_t cost[NS_POOL_LAYERS_MAX + 1]; /* sum of latencies, PLAN_UNREACHED if none */
    uint32_t hops[NS_POOL_LAYERS_MAX + 1]; /* members on the path */
    uint32_t from[NS_POOL_LAYERS_MAX + 1]; /* where the last member starts */
    const ns_quorum_candidate *by[NS_POOL_LAYERS_MAX + 1];
} cover;

static int candidate_by_id(const void *a, const void *b)
{
    const ns_quorum_candidate *x = *(const ns_quorum_candidate *const *)a;
    const ns_quorum_candidate *y = *(const ns_quorum_candidate *const *)b;
    return memcmp(x->node.id, y->node.id, NS_ID_BYTES);
}

static int id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, NS_ID_BYTES);
}

static bool in_band(ns_tier tier, ns_tier band)
{
    return ns_tier_can_pipeline(tier) && (tier == band || (int)tier == (int)band + 1);
}

static bool better(uint64_t cost, uint32_t hops, uint64_t than_cost, uint32_t than_hops)
{
    return cost < than_cost || (cost == than_cost && hops < than_hops);
}

static void cover_band(cover *c, const ns_quorum_candidate *const *sorted, size_t n,
                       uint32_t layers, ns_tier band)
{
    for (uint32_t p = 0; p <= layers; p++) {
        c->cost[p] = PLAN_UNREACHED;
        c->hops[p] = UINT32_MAX;
    }
    c->cost[0] = 0;
    c->hops[0] = 0;
    for (uint32_t p = 0; p < layers; p++) {
        if (c->cost[p] == PLAN_UNREACHED || c->hops[p] == NS_QUORUM_MEMBERS_MAX)
            continue;
        for (size_t k = 0; k < n; k++) {
            const ns_pool_node *node = &sorted[k]->node;
            if (!in_band(node->tier, band) || p < node->layer_first || p >= node->layer_last)
                continue;
            uint32_t to = node->layer_last;
            uint64_t cost = c->cost[p] + sorted[k]->latency_ms;
            if (better(cost, c->hops[p] + 1, c->cost[to], c->hops[to])) {
                c->cost[to] = cost;
                c->hops[to] = c->hops[p] + 1;
                c->from[to] = p;
                c->by[to] = sorted[k];
            }
        }
    }
}

/* The table of balance: best[i][q], the slowest stage of members 0..i when member i ends at q,
 * and start[i][q], where member i then starts. */
typedef struct split_table {
    uint64_t best[NS_QUORUM_MEMBERS_MAX][NS_POOL_LAYERS_MAX + 1];
    uint32_t start[NS_QUORUM_MEMBERS_MAX][NS_POOL_LAYERS_MAX + 1];
} split_table;

/* Moves the boundaries between out's members, each within what it holds (by[i]), so that the
 * slowest stage is as fast as it can be; among equal ones the first found (each boundary as early
 * as it can be). */
static void balance(ns_quorum_proposal *out, const ns_quorum_candidate *const *by, uint32_t layers,
                    uint32_t head_milli, split_table *tab)
{
    uint64_t(*best)[NS_POOL_LAYERS_MAX + 1] = tab->best;
    uint32_t(*start)[NS_POOL_LAYERS_MAX + 1] = tab->start;
    uint32_t k = out->member_count;
    NS_ASSERT(k >= 1 && k <= NS_QUORUM_MEMBERS_MAX);
    for (uint32_t i = 0; i < k; i++) {
        for (uint32_t q = 0; q <= layers; q++)
            best[i][q] = PLAN_UNREACHED;
        const ns_pool_node *h = &by[i]->node;
        for (uint32_t q = h->layer_first + 1; q <= h->layer_last; q++) {
            uint32_t p_lo = i == 0 ? 0 : h->layer_first, p_hi = i == 0 ? 0 : q - 1;
            for (uint32_t p = p_lo; p <= p_hi; p++) {
                uint64_t before = i == 0 ? 0 : best[i - 1][p];
                if (before == PLAN_UNREACHED)
                    continue;
                uint64_t t = stage_us(by[i], p, q, layers, head_milli);
                t = t > before ? t : before;
                if (t < best[i][q]) {
                    best[i][q] = t;
                    start[i][q] = p;
                }
            }
        }
    }
    NS_ASSERT(best[k - 1][layers] != PLAN_UNREACHED); /* the cover itself is one such split */
    out->slowest_stage_us = best[k - 1][layers];
    uint32_t at = layers;
    for (uint32_t i = k; i-- > 0;) {
        out->members[i].layer_last = at;
        out->members[i].layer_first = start[i][at];
        at = start[i][at];
    }
    NS_ASSERT(at == 0);
}

static void cover_to_proposal(const cover *c, uint32_t layers, uint32_t head_milli,
                              split_table *tab, ns_quorum_proposal *out)
{
    const ns_quorum_candidate *members_by[NS_QUORUM_MEMBERS_MAX];
    NS_ASSERT(c->cost[layers] != PLAN_UNREACHED);
    NS_ASSERT(c->hops[layers] >= 1 && c->hops[layers] <= NS_QUORUM_MEMBERS_MAX);
    out->member_count = c->hops[layers];
    out->latency_ms_sum = c->cost[layers];
    uint32_t at = layers;
    for (uint32_t i = out->member_count; i-- > 0;) {
        const ns_quorum_candidate *by = c->by[at];
        ns_quorum_member *m = &out->members[i];
        memcpy(m->id, by->node.id, NS_ID_BYTES);
        m->layer_first = c->from[at];
        m->layer_last = at;
        m->tier = by->node.tier;
        m->latency_ms = by->latency_ms;
        members_by[i] = by;
        at = c->from[at];
    }
    NS_ASSERT(at == 0);
    balance(out, members_by, layers, head_milli, tab);
}

int ns_quorum_plan(const ns_quorum_candidate *candidates, size_t n, uint32_t layers,
                   uint32_t head_milli, uint64_t session_start_ms, ns_quorum_proposal *out)
{
    NS_ASSERT(out != NULL);
    if (layers == 0 || layers > NS_POOL_LAYERS_MAX || (n > 0 && candidates == NULL) ||
        head_milli > 1000000)
        return NS_EINVAL;
    if (n > NS_QUORUM_CANDIDATES_MAX)
        return NS_ETOOBIG;
    const ns_quorum_candidate *sorted[NS_QUORUM_CANDIDATES_MAX];
    size_t usable = 0;
    for (size_t i = 0; i < n; i++)
        sorted[i] = &candidates[i];
    qsort(sorted, n, sizeof sorted[0], candidate_by_id);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && memcmp(sorted[i - 1]->node.id, sorted[i]->node.id, NS_ID_BYTES) == 0)
            return NS_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        const ns_pool_node *node = &sorted[i]->node;
        if (node->layer_first < node->layer_last && node->layer_last <= layers)
            sorted[usable++] = sorted[i];
    }

    cover best, trial;
    best.cost[layers] = PLAN_UNREACHED;
    best.hops[layers] = UINT32_MAX;
    for (int band = PLAN_BAND_FIRST; band <= PLAN_BAND_LAST; band++) {
        cover_band(&trial, sorted, usable, layers, (ns_tier)band);
        if (better(trial.cost[layers], trial.hops[layers], best.cost[layers], best.hops[layers]))
            best = trial;
    }
    if (best.cost[layers] == PLAN_UNREACHED)
        return NS_ENOENT;

    split_table *tab = malloc(sizeof *tab);
    if (tab == NULL)
        return NS_ENOMEM;
    memset(out, 0, sizeof *out);
    out->session_start_ms = session_start_ms;
    out->layers = layers;
    cover_to_proposal(&best, layers, head_milli, tab, out);
    free(tab);
    ns_quorum_id(out, out->id);
    return NS_OK;
}

static bool has_member(const ns_quorum_proposal *p, const uint8_t id[NS_ID_BYTES])
{
    for (uint32_t i = 0; i < p->member_count; i++)
        if (memcmp(p->members[i].id, id, NS_ID_BYTES) == 0)
            return true;
    return false;
}

int ns_quorum_plan_near(const ns_quorum_candidate *candidates, size_t n,
                        const uint8_t self[NS_ID_BYTES], uint32_t layers, uint32_t head_milli,
                        uint64_t session_start_ms, ns_quorum_proposal *out, bool *proposes)
{
    NS_ASSERT(self != NULL && out != NULL && proposes != NULL);
    *proposes = false;
    if (n > NS_QUORUM_CANDIDATES_MAX)
        return NS_ETOOBIG;
    if (n > 0 && candidates == NULL)
        return NS_EINVAL;
    ns_quorum_candidate *c = malloc((n > 0 ? n : 1) * sizeof *c);
    if (c == NULL)
        return NS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        c[i] = candidates[i];
        c[i].latency_ms = 0; /* what every node knows alike */
    }
    int rc = ns_quorum_plan(c, n, layers, head_milli, session_start_ms, out);
    const uint8_t *smallest = NULL;
    for (uint32_t i = 0; rc == NS_OK && i < out->member_count; i++)
        if (smallest == NULL || memcmp(out->members[i].id, smallest, NS_ID_BYTES) < 0)
            smallest = out->members[i].id;
    if (rc != NS_OK || memcmp(smallest, self, NS_ID_BYTES) != 0) {
        free(c);
        return rc;
    }
    *proposes = true;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int order = memcmp(candidates[i].node.id, self, NS_ID_BYTES);
        if (order < 0)
            continue;
        c[m] = candidates[i];
        if (order == 0)
            c[m].latency_ms = 0;
        m++;
    }
    ns_quorum_proposal *near = malloc(sizeof *near);
    if (near == NULL) {
        free(c);
        return NS_ENOMEM;
    }
    if (ns_quorum_plan(c, m, layers, head_milli, session_start_ms, near) == NS_OK &&
        has_member(near, self))
        *out = *near;
    free(near);
    free(c);
    return NS_OK;
}

void ns_quorum_id(const ns_quorum_proposal *p, uint8_t out[NS_SHA256_BYTES])
{
    NS_ASSERT(p->member_count <= NS_QUORUM_MEMBERS_MAX);
    uint8_t ids[NS_QUORUM_MEMBERS_MAX][NS_ID_BYTES];
    for (uint32_t i = 0; i < p->member_count; i++)
        memcpy(ids[i], p->members[i].id, NS_ID_BYTES);
    qsort(ids, p->member_count, NS_ID_BYTES, id_cmp);
    uint8_t buf[PLAN_ID_BYTES_MAX];
    size_t len = (size_t)p->member_count * NS_ID_BYTES;
    memcpy(buf, ids, len);
    for (int i = 0; i < 8; i++)
        buf[len++] = (uint8_t)(p->session_start_ms >> (56 - 8 * i));
    ns_sha256(out, buf, len);
}

bool ns_quorum_tiers_compatible(const ns_tier *tiers, size_t n)
{
    int low = NS_TIER_T5;
    int high = NS_TIER_T1;
    for (size_t i = 0; i < n; i++) {
        if (!ns_tier_can_pipeline(tiers[i]))
            return false;
        low = (int)tiers[i] < low ? (int)tiers[i] : low;
        high = (int)tiers[i] > high ? (int)tiers[i] : high;
    }
    return n == 0 || high - low <= 1;
}
