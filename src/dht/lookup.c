/*
 * lookup.c: iterative lookups (find node, get, put, bootstrap, bucket refresh) and republish.
 *
 * A lookup keeps a shortlist of at most NS_DHT_SHORTLIST_MAX candidates sorted by distance to its
 * target, seeded from the routing table. It keeps NS_DHT_ALPHA requests in flight to the nearest
 * candidates not yet asked, merges the contacts each answer names, and is done when the NS_DHT_K
 * nearest candidates still standing have all answered (or failed), or at NS_DHT_LOOKUP_TIMEOUT_MS.
 * A get asks FIND_VALUE instead and collects every verified record under the key from every node
 * it asks, paging with skip where one packet does not hold them all; a put runs a find node and
 * then STOREs the record, with each node's token, on the k nearest that answered. The callback
 * runs only from an event (an answer, a timeout, the timer), never from the call that started
 * the lookup. A lookup owns its memory and frees it after its callback returns.
 */
#include <stdlib.h>
#include <string.h>

#include "dht_internal.h"

typedef enum {
    LNODE_NEW = 0,
    LNODE_ASKED,
    LNODE_ANSWERED,
    LNODE_FAILED,
} lnode_state;

typedef enum {
    PHASE_WAIT = 0, /* a bootstrap waits for its seeds to answer */
    PHASE_SEARCH,
    PHASE_STORE, /* a put sends its STOREs */
    PHASE_DONE,  /* finishes at the next tick */
} lookup_phase;

typedef struct lnode {
    uint8_t id[NS_ID_BYTES];
    ns_addr addr;
    uint8_t state; /* lnode_state */
    bool has_token;
    bool stored;
    uint16_t hops; /* answers on the way from the routing table to this candidate */
    uint16_t pages;
    uint8_t tries; /* requests sent to it; one lost packet should not lose the target */
    uint8_t token[NS_DHT_TOKEN_BYTES];
    uint64_t answered_ms;
} lnode;

/* What a get has found: one record per author, the highest sequence. */
typedef struct lvalues {
    uint8_t *data[NS_DHT_VALUES_PER_KEY_MAX];
    size_t lens[NS_DHT_VALUES_PER_KEY_MAX];
    uint8_t authors[NS_DHT_VALUES_PER_KEY_MAX][NS_ID_BYTES];
    uint64_t sequences[NS_DHT_VALUES_PER_KEY_MAX];
    size_t count;
} lvalues;

struct ns__dht_lookup {
    uint32_t id;
    ns__lookup_type type;
    lookup_phase phase;
    uint8_t target[NS_ID_BYTES];
    lnode nodes[NS_DHT_SHORTLIST_MAX];
    size_t node_count;
    uint32_t queries_in_flight, pages_in_flight, stores_in_flight;
    uint32_t queried;
    uint64_t started_ms, deadline_ms, wait_until_ms;
    ns_dht_lookup_fn done;
    void *arg;
    lvalues *values; /* get */
    uint8_t *record; /* put */
    size_t record_len;
};

/* ---- the shortlist ------------------------------------------------------------------------ */

static lnode *lnode_find(ns__dht_lookup *l, const uint8_t id[NS_ID_BYTES])
{
    for (size_t i = 0; i < l->node_count; i++) {
        if (memcmp(l->nodes[i].id, id, NS_ID_BYTES) == 0)
            return &l->nodes[i];
    }
    return NULL;
}

static void lnode_add(ns_dht *dht, ns__dht_lookup *l, const ns__dht_node *n, uint16_t hops)
{
    if (memcmp(n->node_id, dht->self_id, NS_ID_BYTES) == 0 || !ns__dht_addr_usable(&n->addr) ||
        lnode_find(l, n->node_id) != NULL)
        return;
    size_t at = l->node_count;
    while (at > 0 && ns_dht_distance_cmp(l->target, n->node_id, l->nodes[at - 1].id) < 0)
        at--;
    if (at >= NS_DHT_SHORTLIST_MAX)
        return;
    size_t moved =
        l->node_count < NS_DHT_SHORTLIST_MAX ? l->node_count - at : NS_DHT_SHORTLIST_MAX - 1 - at;
    memmove(&l->nodes[at + 1], &l->nodes[at], moved * sizeof l->nodes[0]);
    memset(&l->nodes[at], 0, sizeof l->nodes[at]);
    memcpy(l->nodes[at].id, n->node_id, NS_ID_BYTES);
    l->nodes[at].addr = n->addr;
    l->nodes[at].hops = hops;
    if (l->node_count < NS_DHT_SHORTLIST_MAX)
        l->node_count++;
}

static void lookup_seed(ns_dht *dht, ns__dht_lookup *l)
{
    ns__dht_node seeds[NS_DHT_K];
    size_t n = ns__dht_table_closest(dht, l->target, NULL, seeds, NS_DHT_K);
    for (size_t i = 0; i < n; i++)
        lnode_add(dht, l, &seeds[i], 0);
}

static ns__dht_lookup *lookup_by_id(ns_dht *dht, uint32_t id)
{
    for (size_t i = 0; i < NS_DHT_LOOKUPS_MAX; i++) {
        if (dht->lookups[i] != NULL && dht->lookups[i]->id == id)
            return dht->lookups[i];
    }
    return NULL;
}

/* ---- values found by a get ---------------------------------------------------------------- */

static void values_add(lvalues *v, const uint8_t *buf, size_t len, const ns_record *rec)
{
    size_t i = 0;
    while (i < v->count && memcmp(v->authors[i], rec->author, NS_ID_BYTES) != 0)
        i++;
    if (i < v->count && rec->sequence <= v->sequences[i])
        return;
    if (i == v->count && v->count == NS_DHT_VALUES_PER_KEY_MAX)
        return;
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return;
    memcpy(copy, buf, len);
    if (i == v->count)
        v->count++;
    else
        free(v->data[i]);
    v->data[i] = copy;
    v->lens[i] = len;
    memcpy(v->authors[i], rec->author, NS_ID_BYTES);
    v->sequences[i] = rec->sequence;
}

static void values_collect(ns_dht *dht, ns__dht_lookup *l, const ns__dht_packet *p, uint64_t now_ms)
{
    for (size_t i = 0; i < p->record_count; i++) {
        ns_record rec;
        if (ns__dht_value_check(dht, p->records[i], p->record_lens[i], now_ms, l->target, &rec) ==
            NS_OK)
            values_add(l->values, p->records[i], p->record_lens[i], &rec);
    }
}

static void values_collect_local(ns_dht *dht, ns__dht_lookup *l, uint64_t now_ms)
{
    const uint8_t *records[NS_DHT_PACKET_RECORDS_MAX];
    size_t lens[NS_DHT_PACKET_RECORDS_MAX];
    size_t total;
    size_t skip = 0;
    for (size_t page = 0; page <= NS_DHT_VALUES_PER_KEY_MAX; page++) {
        size_t n = ns__dht_store_get(dht, l->target, now_ms, skip, records, lens,
                                     NS_DHT_PACKET_RECORDS_MAX, &total);
        for (size_t i = 0; i < n; i++) {
            ns_record rec;
            /* Held values were verified when stored; this reads their author and sequence. */
            if (ns__dht_value_check(dht, records[i], lens[i], now_ms, l->target, &rec) == NS_OK)
                values_add(l->values, records[i], lens[i], &rec);
        }
        skip += n;
        if (n == 0 || skip >= total)
            return;
    }
}

/* ---- finishing ---------------------------------------------------------------------------- */

static void lookup_destroy(ns__dht_lookup *l)
{
    if (l->values != NULL) {
        for (size_t i = 0; i < l->values->count; i++)
            free(l->values->data[i]);
        free(l->values);
    }
    free(l->record);
    free(l);
}

static void lookup_detach(ns_dht *dht, ns__dht_lookup *l)
{
    for (size_t i = 0; i < NS_DHT_LOOKUPS_MAX; i++) {
        if (dht->lookups[i] == l) {
            dht->lookups[i] = NULL;
            NS_ASSERT(dht->lookup_count > 0);
            dht->lookup_count--;
            return;
        }
    }
    NS_ASSERT(!"a lookup is in the table until it finishes");
}

static int lookup_status(const ns__dht_lookup *l, size_t contact_count)
{
    switch (l->type) {
    case NS__LOOKUP_GET:
        return l->values->count > 0 ? NS_OK : NS_ENOENT;
    case NS__LOOKUP_FIND_NODE:
    case NS__LOOKUP_PUT:
    case NS__LOOKUP_BOOTSTRAP:
    case NS__LOOKUP_REFRESH:
        return contact_count > 0 ? NS_OK : NS_ENOENT;
    }
    return NS_ENOENT;
}

static void lookup_finish(ns_dht *dht, ns__dht_lookup *l, uint64_t now_ms)
{
    lookup_detach(dht, l);
    ns_dht_contact contacts[NS_DHT_K];
    size_t count = 0;
    uint32_t hops = 0;
    for (size_t i = 0; i < l->node_count && count < NS_DHT_K; i++) {
        const lnode *n = &l->nodes[i];
        bool take = l->type == NS__LOOKUP_PUT ? n->stored : n->state == LNODE_ANSWERED;
        if (!take)
            continue;
        contacts[count] = (ns_dht_contact){.addr = n->addr, .last_seen_ms = n->answered_ms};
        memcpy(contacts[count].node_id, n->id, NS_ID_BYTES);
        count++;
        if ((uint32_t)n->hops + 1 > hops)
            hops = (uint32_t)n->hops + 1;
    }
    const uint8_t *records[NS_DHT_VALUES_PER_KEY_MAX];
    size_t record_count = l->values != NULL ? l->values->count : 0;
    for (size_t i = 0; i < record_count; i++)
        records[i] = l->values->data[i];
    ns_dht_result result = {.status = lookup_status(l, count),
                            .contacts = contacts,
                            .contact_count = count,
                            .records = records,
                            .record_lens = l->values != NULL ? l->values->lens : NULL,
                            .record_count = record_count,
                            .hops = hops,
                            .queried = l->queried,
                            .elapsed_ms = now_ms - l->started_ms};
    if (result.status == NS_OK)
        dht->stats.lookups_succeeded++;
    else
        dht->stats.lookups_failed++;
    NS_LOG_D("dht",
             "lookup done type=%d status=%d contacts=%zu records=%zu queried=%u hops=%u ms=%llu",
             (int)l->type, result.status, count, record_count, l->queried, hops,
             (unsigned long long)result.elapsed_ms);
    if (l->done != NULL)
        l->done(l->arg, &result);
    lookup_destroy(l);
}

/* ---- sending ------------------------------------------------------------------------------ */

static int query_send(ns_dht *dht, ns__dht_lookup *l, const lnode *n, ns__rpc_purpose purpose,
                      uint32_t skip, uint64_t now_ms)
{
    ns__dht_kind kind = l->type == NS__LOOKUP_GET ? NS__DHT_FIND_VALUE : NS__DHT_FIND_NODE;
    ns__dht_rpc *rpc = ns__dht_rpc_new(dht, purpose, kind, &n->addr, n->id, now_ms);
    if (rpc == NULL)
        return NS_ELIMIT;
    rpc->lookup_id = l->id;
    rpc->skip = skip;
    ns__dht_packet p = {0};
    p.has_target = true;
    memcpy(p.target, l->target, NS_ID_BYTES);
    p.skip = skip;
    int rc = ns__dht_rpc_send(dht, rpc, &p);
    if (rc == NS_OK)
        l->queried++;
    return rc;
}

static int store_send(ns_dht *dht, ns__dht_lookup *l, const lnode *n, uint64_t now_ms)
{
    NS_ASSERT(n->has_token);
    ns__dht_rpc *rpc = ns__dht_rpc_new(dht, NS__RPC_STORE, NS__DHT_STORE, &n->addr, n->id, now_ms);
    if (rpc == NULL)
        return NS_ELIMIT;
    rpc->lookup_id = l->id;
    ns__dht_packet p = {0};
    p.has_token = true;
    memcpy(p.token, n->token, NS_DHT_TOKEN_BYTES);
    p.record_count = 1;
    p.records[0] = l->record;
    p.record_lens[0] = l->record_len;
    int rc = ns__dht_rpc_send(dht, rpc, &p);
    if (rc == NS_OK)
        l->queried++;
    return rc;
}

/* Sends to the nearest unasked candidates while fewer than alpha are in flight; true once the
 * k nearest candidates still standing have all answered. */
static bool lookup_advance(ns_dht *dht, ns__dht_lookup *l, uint64_t now_ms)
{
    NS_ASSERT(l->phase == PHASE_SEARCH);
    size_t rank = 0;
    bool pending = false;
    for (size_t i = 0; i < l->node_count && rank < NS_DHT_K; i++) {
        lnode *n = &l->nodes[i];
        if (n->state == LNODE_NEW && l->queries_in_flight < NS_DHT_ALPHA) {
            if (query_send(dht, l, n, NS__RPC_LOOKUP, 0, now_ms) == NS_OK) {
                n->state = LNODE_ASKED;
                n->tries++;
                l->queries_in_flight++;
            } else {
                n->state = LNODE_FAILED;
            }
        }
        if (n->state == LNODE_FAILED)
            continue;
        rank++;
        pending = pending || n->state == LNODE_NEW || n->state == LNODE_ASKED;
    }
    return !pending && l->pages_in_flight == 0;
}

/* The search is over: a put goes on to STORE, everything else finishes. */
static void lookup_search_done(ns_dht *dht, ns__dht_lookup *l, uint64_t now_ms)
{
    if (l->type == NS__LOOKUP_PUT && l->phase == PHASE_SEARCH) {
        l->phase = PHASE_STORE;
        size_t rank = 0;
        for (size_t i = 0; i < l->node_count && rank < NS_DHT_K; i++) {
            lnode *n = &l->nodes[i];
            if (n->state != LNODE_ANSWERED || !n->has_token)
                continue;
            rank++;
            if (store_send(dht, l, n, now_ms) == NS_OK)
                l->stores_in_flight++;
        }
        if (l->stores_in_flight > 0)
            return;
    }
    lookup_finish(dht, l, now_ms);
}

/* A get's FIND_VALUE answer said there is more than it held: ask for the next page. */
static void lookup_page(ns_dht *dht, ns__dht_lookup *l, const ns__dht_rpc *rpc,
                        const ns__dht_packet *p, uint64_t now_ms)
{
    lnode *n = lnode_find(l, rpc->expected_id);
    uint64_t next_skip = (uint64_t)rpc->skip + p->record_count;
    bool progress = p->record_count > 0 || !rpc->id_verified;
    if (n == NULL || !progress || p->values_total <= next_skip || n->pages >= NS_DHT_PAGES_MAX ||
        l->values->count >= NS_DHT_VALUES_PER_KEY_MAX)
        return;
    if (query_send(dht, l, n, NS__RPC_PAGE, (uint32_t)next_skip, now_ms) == NS_OK) {
        n->pages++;
        l->pages_in_flight++;
    }
}

static void lookup_answered(ns_dht *dht, ns__dht_lookup *l, const ns__dht_rpc *rpc,
                            const ns__dht_packet *p, uint64_t now_ms)
{
    lnode *n = lnode_find(l, rpc->expected_id);
    if (n != NULL && n->state == LNODE_ANSWERED)
        return; /* a late answer after a retry was answered too */
    uint16_t hops = 0;
    if (n != NULL) {
        n->state = LNODE_ANSWERED;
        n->answered_ms = now_ms;
        n->has_token = p->has_token;
        memcpy(n->token, p->token, NS_DHT_TOKEN_BYTES);
        hops = n->hops;
    }
    for (size_t i = 0; i < p->contact_count; i++)
        lnode_add(dht, l, &p->contacts[i], (uint16_t)(hops + 1));
    if (l->type == NS__LOOKUP_GET) {
        values_collect(dht, l, p, now_ms);
        lookup_page(dht, l, rpc, p, now_ms);
    }
}

/* No answer in time: ask again if it has tries left, else give up on it. */
static void lnode_unanswered(lnode *n)
{
    if (n != NULL && n->state == LNODE_ASKED)
        n->state = n->tries < NS_DHT_LOOKUP_TRIES_MAX ? LNODE_NEW : LNODE_FAILED;
}

void ns__dht_lookup_on_soft_timeout(ns_dht *dht, const ns__dht_rpc *rpc, uint64_t now_ms)
{
    NS_ASSERT(rpc->soft_expired);
    ns__dht_lookup *l = lookup_by_id(dht, rpc->lookup_id);
    if (l == NULL)
        return;
    if (rpc->purpose == NS__RPC_LOOKUP) {
        NS_ASSERT(l->queries_in_flight > 0);
        l->queries_in_flight--;
        lnode_unanswered(lnode_find(l, rpc->expected_id));
    } else {
        NS_ASSERT(rpc->purpose == NS__RPC_PAGE);
        NS_ASSERT(l->pages_in_flight > 0);
        l->pages_in_flight--;
    }
    if (l->phase == PHASE_SEARCH && lookup_advance(dht, l, now_ms))
        lookup_search_done(dht, l, now_ms);
}

void ns__dht_lookup_on_rpc(ns_dht *dht, const ns__dht_rpc *rpc, const ns__dht_packet *p,
                           const uint8_t *sender_id, uint64_t now_ms)
{
    ns__dht_lookup *l = lookup_by_id(dht, rpc->lookup_id);
    if (l == NULL)
        return; /* it finished while this request was out */
    bool answered = p != NULL && memcmp(sender_id, rpc->expected_id, NS_ID_BYTES) == 0;
    lnode *n = lnode_find(l, rpc->expected_id);
    if (rpc->purpose == NS__RPC_LOOKUP) {
        if (!rpc->soft_expired) {
            NS_ASSERT(l->queries_in_flight > 0);
            l->queries_in_flight--;
        }
        if (answered)
            lookup_answered(dht, l, rpc, p, now_ms);
        else if (!rpc->soft_expired)
            lnode_unanswered(n);
    } else if (rpc->purpose == NS__RPC_PAGE) {
        if (!rpc->soft_expired) {
            NS_ASSERT(l->pages_in_flight > 0);
            l->pages_in_flight--;
        }
        if (answered) {
            values_collect(dht, l, p, now_ms);
            lookup_page(dht, l, rpc, p, now_ms);
        }
    } else {
        NS_ASSERT(rpc->purpose == NS__RPC_STORE);
        NS_ASSERT(l->stores_in_flight > 0);
        l->stores_in_flight--;
        if (answered && n != NULL && p->error == NS__DHT_ERROR_NONE)
            n->stored = true;
    }
    if (l->phase == PHASE_SEARCH && lookup_advance(dht, l, now_ms))
        lookup_search_done(dht, l, now_ms);
    else if (l->phase == PHASE_STORE && l->stores_in_flight == 0)
        lookup_finish(dht, l, now_ms);
}

/* ---- starting ----------------------------------------------------------------------------- */

static void lookup_begin_search(ns_dht *dht, ns__dht_lookup *l, uint64_t now_ms)
{
    l->phase = PHASE_SEARCH;
    if (lookup_advance(dht, l, now_ms)) {
        l->phase = PHASE_DONE;
        ns__dht_wake_at(dht, now_ms);
    }
}

static ns__dht_lookup *lookup_alloc(ns_dht *dht, ns__lookup_type type,
                                    const uint8_t target[NS_ID_BYTES], const uint8_t *record,
                                    size_t record_len)
{
    ns__dht_lookup *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    bool ok = true;
    if (type == NS__LOOKUP_GET) {
        l->values = calloc(1, sizeof *l->values);
        ok = l->values != NULL;
    }
    if (record_len > 0 && ok) {
        l->record = malloc(record_len);
        ok = l->record != NULL;
        if (ok)
            memcpy(l->record, record, record_len);
        l->record_len = record_len;
    }
    if (!ok) {
        lookup_destroy(l);
        return NULL;
    }
    l->type = type;
    memcpy(l->target, target, NS_ID_BYTES);
    do {
        l->id = ++dht->next_lookup_id;
    } while (l->id == 0);
    return l;
}

int ns__dht_lookup_start(ns_dht *dht, ns__lookup_type type, const uint8_t target[NS_ID_BYTES],
                         const uint8_t *record, size_t record_len, ns_dht_lookup_fn done, void *arg)
{
    if (dht->lookup_count >= NS_DHT_LOOKUPS_MAX)
        return NS_ELIMIT;
    ns__dht_lookup *l = lookup_alloc(dht, type, target, record, record_len);
    if (l == NULL)
        return NS_ENOMEM;
    size_t slot = 0;
    while (dht->lookups[slot] != NULL)
        slot++;
    NS_ASSERT(slot < NS_DHT_LOOKUPS_MAX);
    dht->lookups[slot] = l;
    dht->lookup_count++;
    dht->stats.lookups_started++;
    uint64_t now_ms = ns__dht_now(dht);
    l->done = done;
    l->arg = arg;
    l->started_ms = now_ms;
    l->deadline_ms = now_ms + NS_DHT_LOOKUP_TIMEOUT_MS;
    ns__dht_bucket *b = ns__dht_bucket_for(dht, target, false);
    if (b != NULL)
        b->refreshed_ms = now_ms;
    if (type == NS__LOOKUP_GET)
        values_collect_local(dht, l, now_ms);
    if (type == NS__LOOKUP_BOOTSTRAP && (dht->user_pings > 0 || dht->ping_queue_count > 0)) {
        l->phase = PHASE_WAIT;
        l->wait_until_ms = now_ms + NS_DHT_BOOTSTRAP_WAIT_MS;
        l->deadline_ms = l->wait_until_ms + NS_DHT_LOOKUP_TIMEOUT_MS;
        ns__dht_wake_at(dht, l->wait_until_ms);
        return NS_OK;
    }
    lookup_seed(dht, l);
    lookup_begin_search(dht, l, now_ms);
    ns__dht_wake_at(dht, l->deadline_ms);
    return NS_OK;
}

uint64_t ns__dht_lookups_tick(ns_dht *dht, uint64_t now_ms)
{
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < NS_DHT_LOOKUPS_MAX; i++) {
        ns__dht_lookup *l = dht->lookups[i];
        if (l == NULL)
            continue;
        bool seeds_done = dht->user_pings == 0 && dht->ping_queue_count == 0;
        if (l->phase == PHASE_WAIT && (seeds_done || now_ms >= l->wait_until_ms)) {
            lookup_seed(dht, l);
            l->phase = PHASE_SEARCH;
            l->deadline_ms = now_ms + NS_DHT_LOOKUP_TIMEOUT_MS;
            if (lookup_advance(dht, l, now_ms))
                l->phase = PHASE_DONE;
        }
        if (l->phase == PHASE_DONE || now_ms >= l->deadline_ms) {
            lookup_finish(dht, l, now_ms);
            continue;
        }
        if (l->deadline_ms < next)
            next = l->deadline_ms;
        if (l->phase == PHASE_WAIT && l->wait_until_ms < next)
            next = l->wait_until_ms;
    }
    return next;
}

void ns__dht_lookups_free(ns_dht *dht)
{
    for (size_t i = 0; i < NS_DHT_LOOKUPS_MAX; i++) {
        if (dht->lookups[i] != NULL)
            lookup_destroy(dht->lookups[i]);
        dht->lookups[i] = NULL;
    }
    dht->lookup_count = 0;
}

/* ---- own records and chores --------------------------------------------------------------- */

int ns__dht_own_remember(ns_dht *dht, const uint8_t key[NS_ID_BYTES], const uint8_t *buf,
                         size_t len, const ns_record *rec, uint64_t now_ms)
{
    size_t i = 0;
    while (i < dht->own_count && memcmp(dht->own[i].key, key, NS_ID_BYTES) != 0)
        i++;
    if (i < dht->own_count && rec->sequence < dht->own[i].sequence)
        return NS_EEXIST;
    if (i == dht->own_count && dht->own_count == NS_DHT_OWN_RECORDS_MAX)
        return NS_ELIMIT;
    if (dht->own == NULL) {
        dht->own = calloc(NS_DHT_OWN_RECORDS_MAX, sizeof *dht->own);
        if (dht->own == NULL)
            return NS_ENOMEM;
    }
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return NS_ENOMEM;
    memcpy(copy, buf, len);
    if (i == dht->own_count)
        dht->own_count++;
    else
        free(dht->own[i].data);
    ns__dht_own *o = &dht->own[i];
    memcpy(o->key, key, NS_ID_BYTES);
    o->data = copy;
    o->len = len;
    o->sequence = rec->sequence;
    o->expiry_ms = rec->expiry_ms;
    o->republish_ms = now_ms + NS_DHT_REPUBLISH_MS;
    return NS_OK;
}

void ns__dht_own_free(ns_dht *dht)
{
    for (size_t i = 0; i < dht->own_count; i++)
        free(dht->own[i].data);
    free(dht->own);
    dht->own = NULL;
    dht->own_count = 0;
}

/* Stores a verified record here, then looks up its key and STOREs it on the k nearest. */
static int put_start(ns_dht *dht, const uint8_t *buf, size_t len, const ns_record *rec,
                     ns_dht_lookup_fn done, void *arg, uint64_t now_ms)
{
    uint8_t key[NS_ID_BYTES];
    ns_record_key(rec, key);
    int rc = ns__dht_store_put(dht, key, buf, len, rec, now_ms);
    if (rc == NS_EEXIST || rc == NS_ENOMEM)
        return rc;
    return ns__dht_lookup_start(dht, NS__LOOKUP_PUT, key, buf, len, done, arg);
}

static void own_republish(ns_dht *dht, uint64_t now_ms)
{
    for (size_t i = dht->own_count; i-- > 0;) {
        ns__dht_own *o = &dht->own[i];
        if (o->expiry_ms != 0 && now_ms >= o->expiry_ms) {
            free(o->data);
            dht->own[i] = dht->own[--dht->own_count];
            continue;
        }
        if (now_ms < o->republish_ms || dht->lookup_count >= NS_DHT_LOOKUPS_MAX / 2)
            continue;
        ns_record rec;
        if (ns__dht_value_check(dht, o->data, o->len, now_ms, o->key, &rec) == NS_OK &&
            put_start(dht, o->data, o->len, &rec, NULL, NULL, now_ms) == NS_OK)
            o->republish_ms = now_ms + NS_DHT_REPUBLISH_MS;
    }
}

/* A random id in the bucket that shares cpl bits with ours. */
static void random_id_in_bucket(ns_dht *dht, size_t cpl, uint8_t id[NS_ID_BYTES])
{
    NS_ASSERT(cpl < NS_DHT_ID_BITS);
    ns_env_random(&dht->env, id, NS_ID_BYTES);
    for (size_t bit = 0; bit <= cpl; bit++) {
        uint8_t mask = (uint8_t)(0x80u >> (bit % 8));
        uint8_t want = (uint8_t)(dht->self_id[bit / 8] & mask);
        if (bit == cpl)
            want ^= mask;
        id[bit / 8] = (uint8_t)((id[bit / 8] & ~mask) | want);
    }
}

static void buckets_refresh(ns_dht *dht, uint64_t now_ms)
{
    size_t started = 0;
    for (size_t cpl = 0; cpl < dht->bucket_slots && started < NS_DHT_REFRESHES_PER_CHORE; cpl++) {
        ns__dht_bucket *b = dht->buckets[cpl];
        /* A full bucket needs no lookup: stale pings keep it alive and spares fill its gaps. */
        if (b == NULL || b->count >= NS_DHT_K || b->refreshed_ms + NS_DHT_REFRESH_MS > now_ms ||
            dht->lookup_count >= NS_DHT_LOOKUPS_MAX / 2)
            continue;
        uint8_t target[NS_ID_BYTES];
        random_id_in_bucket(dht, cpl, target);
        NS_ASSERT(ns_dht_bucket_index(dht->self_id, target) == NS_DHT_ID_BITS - 1 - (int)cpl);
        if (ns__dht_lookup_start(dht, NS__LOOKUP_REFRESH, target, NULL, 0, NULL, NULL) == NS_OK)
            started++;
        b->refreshed_ms = now_ms;
    }
}

void ns__dht_lookups_chores(ns_dht *dht, uint64_t now_ms)
{
    buckets_refresh(dht, now_ms);
    own_republish(dht, now_ms);
}

/* ---- public calls ------------------------------------------------------------------------- */

int ns_dht_bootstrap(ns_dht *dht, ns_dht_lookup_fn done, void *arg)
{
    return ns__dht_lookup_start(dht, NS__LOOKUP_BOOTSTRAP, dht->self_id, NULL, 0, done, arg);
}

int ns_dht_find_node(ns_dht *dht, const uint8_t target[NS_ID_BYTES], ns_dht_lookup_fn done,
                     void *arg)
{
    return ns__dht_lookup_start(dht, NS__LOOKUP_FIND_NODE, target, NULL, 0, done, arg);
}

int ns_dht_get(ns_dht *dht, const uint8_t key[NS_ID_BYTES], ns_dht_lookup_fn done, void *arg)
{
    return ns__dht_lookup_start(dht, NS__LOOKUP_GET, key, NULL, 0, done, arg);
}

int ns_dht_put(ns_dht *dht, const uint8_t *record, size_t len, ns_dht_lookup_fn done, void *arg)
{
    NS_ASSERT(record != NULL || len == 0);
    uint64_t now_ms = ns__dht_now(dht);
    ns_record rec;
    int rc = ns__dht_value_check(dht, record, len, now_ms, NULL, &rec);
    if (rc != NS_OK)
        return rc;
    if (dht->lookup_count >= NS_DHT_LOOKUPS_MAX)
        return NS_ELIMIT;
    if (memcmp(rec.author, dht->self_id, NS_ID_BYTES) == 0) {
        uint8_t key[NS_ID_BYTES];
        ns_record_key(&rec, key);
        rc = ns__dht_own_remember(dht, key, record, len, &rec, now_ms);
        if (rc != NS_OK)
            return rc;
    }
    return put_start(dht, record, len, &rec, done, arg, now_ms);
}
