/*
 * rpc.c: the ns_dht object, its requests in flight, its one timer, and every incoming packet.
 *
 * A request is a slot with a random 64-bit txid, the address it went to, who we expect there and
 * why we asked; an answer counts only if its txid and source address match a slot, so an
 * off-path host cannot inject one. An answer also has to prove the sender's id: either we asked
 * a contact already verified at that address (then its id must simply match), or the answer
 * carries a node record that verifies, belongs to our network and names the sender's id. Only
 * then does the sender reach the routing table, its report of our address count, and its clock
 * give a skew. Incoming requests pass the per-source rate limit first and are answered without
 * trusting the sender; an unknown requester with room in its bucket gets a ping of its own.
 * All timing is one env timer, re-armed at the earliest of request deadlines, lookup deadlines
 * and chores (jech/dht's dht_periodic, turned inside out). This file never blocks, never reads a
 * clock but env->now_ms, and never calls a lookup callback from inside a public call that
 * started it.
 */
#include <stdlib.h>
#include <string.h>

#include "dht_internal.h"
#include "neuroshard/link.h"
#include "neuroshard/wire.h"
#include "node.pb-c.h"

uint64_t ns__dht_now(const ns_dht *dht)
{
    return ns_env_now(&dht->env);
}

/* ---- identity ----------------------------------------------------------------------------- */

/* The network id in a NodeInfo body; the record around it is verified already. */
static int node_info_network(const uint8_t *body, size_t len, uint8_t network_id[32])
{
    Neuroshard__NodeInfo *ni = neuroshard__node_info__unpack(NULL, len, body);
    if (ni == NULL)
        return NS_EPARSE;
    int rc = ni->network_id.len == 32 && ni->base.n_unknown_fields == 0 &&
                     neuroshard__node_info__get_packed_size(ni) == len
                 ? NS_OK
                 : NS_EPARSE;
    if (rc == NS_OK)
        memcpy(network_id, ni->network_id.data, 32);
    neuroshard__node_info__free_unpacked(ni, NULL);
    return rc;
}

/* Whether record is a valid node record of our network whose author is id. */
static int identity_check(const ns_dht *dht, const uint8_t *record, size_t len,
                          const uint8_t id[NS_ID_BYTES], uint64_t now_ms)
{
    if (len == 0 || len > NS_DHT_NODE_RECORD_BYTES_MAX)
        return NS_EPARSE;
    ns_record rec;
    uint8_t network_id[32];
    int rc;
    if (dht->verify != NULL) {
        rc = dht->verify(dht->verify_arg, record, len, now_ms, &rec);
        if (rc == NS_OK && (rec.type != NS_RECORD_NODE || rec.topic_len != 0))
            rc = NS_EPARSE;
        if (rc == NS_OK)
            rc = node_info_network(rec.body, rec.body_len, network_id);
    } else {
        ns_node_info info;
        rc = ns_node_record_open(record, len, now_ms, &rec, &info);
        if (rc == NS_OK)
            memcpy(network_id, info.network_id, 32);
    }
    if (rc != NS_OK)
        return rc;
    if (memcmp(network_id, dht->network_id, 32) != 0)
        return NS_EFOREIGN;
    if (memcmp(rec.author, id, NS_ID_BYTES) != 0)
        return NS_EAUTHOR;
    return NS_OK;
}

int ns__dht_value_check(ns_dht *dht, const uint8_t *buf, size_t len, uint64_t now_ms,
                        const uint8_t *key, ns_record *rec)
{
    if (len > NS_DHT_VALUE_BYTES_MAX) {
        dht->stats.records_oversize++;
        return NS_ETOOBIG;
    }
    int rc = dht->verify != NULL ? dht->verify(dht->verify_arg, buf, len, now_ms, rec)
                                 : ns_record_verify(buf, len, now_ms, rec);
    if (rc == NS_ETOOBIG)
        dht->stats.records_oversize++;
    else if (rc == NS_EBADSIG || rc == NS_EAUTHOR)
        dht->stats.records_bad_signature++;
    else if (rc == NS_EEXPIRED)
        dht->stats.records_expired++;
    else if (rc == NS_EFUTURE)
        dht->stats.records_future++;
    else if (rc != NS_OK)
        dht->stats.records_malformed++;
    if (rc != NS_OK)
        return rc;
    if (key != NULL) {
        uint8_t want[NS_ID_BYTES];
        ns_record_key(rec, want);
        if (memcmp(want, key, NS_ID_BYTES) != 0) {
            dht->stats.records_wrong_key++;
            return NS_EINVAL;
        }
    }
    return NS_OK;
}

/* ---- sending ------------------------------------------------------------------------------ */

static int packet_send(ns_dht *dht, const ns_addr *to, const uint8_t *to_id, ns__dht_packet *p)
{
    uint8_t buf[NS_DHT_PACKET_BYTES_MAX];
    size_t len;
    int rc = ns__dht_packet_encode(p, dht->network_id, buf, sizeof buf, &len);
    if (rc != NS_OK)
        return rc;
    NS_ASSERT(len <= NS_DHT_PACKET_BYTES_MAX);
    ns_frame frame = {.type = NS_FRAME_DHT, .body = buf, .body_len = len};
    ns_peer peer = {.addr = *to, .has_node_id = to_id != NULL};
    if (to_id != NULL)
        memcpy(peer.node_id, to_id, NS_ID_BYTES);
    rc = dht->env.send(dht->env.ctx, &peer, NS_CHANNEL_DATAGRAM, &frame);
    if (rc == NS_OK)
        dht->stats.packets_out++;
    return rc;
}

/* ---- the wake-up timer -------------------------------------------------------------------- */

static void wake_timer_fn(void *arg, uint64_t now_ms);

void ns__dht_wake_at(ns_dht *dht, uint64_t at_ms)
{
    if (at_ms == UINT64_MAX || (dht->wake_timer != 0 && dht->wake_at_ms <= at_ms))
        return;
    if (dht->wake_timer != 0)
        ns_env_timer_cancel(&dht->env, dht->wake_timer);
    dht->wake_timer = ns_env_timer(&dht->env, at_ms, wake_timer_fn, dht);
    dht->wake_at_ms = at_ms;
    NS_ASSERT(dht->wake_timer != 0);
}

/* ---- requests in flight ------------------------------------------------------------------- */

/* srtt + 4 rttvar (Jacobson/Karels), within [NS_DHT_SOFT_TIMEOUT_MIN_MS, NS_DHT_RPC_TIMEOUT_MS]. */
static uint64_t rpc_soft_timeout_ms(const ns_dht *dht)
{
    if (dht->srtt_ms == 0)
        return NS_DHT_RPC_TIMEOUT_MS;
    int64_t t = dht->srtt_ms + 4 * dht->rttvar_ms;
    if (t < NS_DHT_SOFT_TIMEOUT_MIN_MS)
        t = NS_DHT_SOFT_TIMEOUT_MIN_MS;
    return t < NS_DHT_RPC_TIMEOUT_MS ? (uint64_t)t : NS_DHT_RPC_TIMEOUT_MS;
}

static void rtt_sample(ns_dht *dht, uint64_t rtt_ms)
{
    if (rtt_ms > NS_DHT_RPC_TIMEOUT_MS)
        return; /* its deadline passed while this process was busy (the timer had not run yet):
                   no sample of the network */
    int64_t sample = rtt_ms > 0 ? (int64_t)rtt_ms : 1;
    if (dht->srtt_ms == 0) {
        dht->srtt_ms = sample;
        dht->rttvar_ms = sample / 2;
        return;
    }
    int64_t err = sample - dht->srtt_ms;
    dht->srtt_ms += err / 8;
    if (dht->srtt_ms < 1)
        dht->srtt_ms = 1;
    dht->rttvar_ms += ((err < 0 ? -err : err) - dht->rttvar_ms) / 4;
}

static bool rpc_grow(ns_dht *dht)
{
    if (dht->rpc_capacity >= NS_DHT_RPCS_MAX)
        return false;
    size_t capacity = dht->rpc_capacity == 0 ? 8 : 2 * dht->rpc_capacity;
    if (capacity > NS_DHT_RPCS_MAX)
        capacity = NS_DHT_RPCS_MAX;
    ns__dht_rpc *grown = realloc(dht->rpcs, capacity * sizeof *grown);
    if (grown == NULL)
        return false;
    memset(grown + dht->rpc_capacity, 0, (capacity - dht->rpc_capacity) * sizeof *grown);
    dht->rpcs = grown;
    dht->rpc_capacity = capacity;
    return true;
}

ns__dht_rpc *ns__dht_rpc_new(ns_dht *dht, ns__rpc_purpose purpose, ns__dht_kind kind,
                             const ns_addr *addr, const uint8_t *expected_id, uint64_t now_ms)
{
    NS_ASSERT(purpose != NS__RPC_FREE);
    if (dht->rpc_count == dht->rpc_capacity && !rpc_grow(dht))
        return NULL;
    size_t i = 0;
    while (dht->rpcs[i].purpose != NS__RPC_FREE)
        i++;
    NS_ASSERT(i < dht->rpc_capacity);
    ns__dht_rpc *rpc = &dht->rpcs[i];
    memset(rpc, 0, sizeof *rpc);
    while (rpc->txid == 0)
        ns_env_random(&dht->env, &rpc->txid, sizeof rpc->txid);
    rpc->sent_ms = now_ms;
    rpc->deadline_ms = now_ms + NS_DHT_RPC_TIMEOUT_MS;
    rpc->soft_deadline_ms = purpose == NS__RPC_LOOKUP || purpose == NS__RPC_PAGE
                                ? now_ms + rpc_soft_timeout_ms(dht)
                                : rpc->deadline_ms;
    rpc->addr = *addr;
    rpc->purpose = (uint8_t)purpose;
    rpc->kind = (uint8_t)kind;
    if (expected_id != NULL) {
        memcpy(rpc->expected_id, expected_id, NS_ID_BYTES);
        rpc->expect_id = true;
        rpc->id_verified = ns__dht_table_knows(dht, expected_id, addr);
    }
    dht->rpc_count++;
    return rpc;
}

static void rpc_release(ns_dht *dht, ns__dht_rpc *rpc)
{
    NS_ASSERT(rpc->purpose != NS__RPC_FREE);
    NS_ASSERT(dht->rpc_count > 0);
    rpc->purpose = NS__RPC_FREE;
    rpc->txid = 0;
    dht->rpc_count--;
}

int ns__dht_rpc_send(ns_dht *dht, ns__dht_rpc *rpc, ns__dht_packet *p)
{
    memcpy(p->sender_id, dht->self_id, NS_ID_BYTES);
    p->txid = rpc->txid;
    p->response = false;
    p->kind = (ns__dht_kind)rpc->kind;
    p->time_ms = rpc->sent_ms;
    p->want_record = !rpc->id_verified;
    if (rpc->kind == NS__DHT_PING) {
        p->sender_record = dht->self_record;
        p->sender_record_len = dht->self_record_len;
    }
    int rc = packet_send(dht, &rpc->addr, rpc->id_verified ? rpc->expected_id : NULL, p);
    if (rc != NS_OK) {
        rpc_release(dht, rpc);
        return rc;
    }
    ns__dht_wake_at(dht, rpc->soft_deadline_ms);
    return NS_OK;
}

int ns__dht_ping_send(ns_dht *dht, ns__rpc_purpose purpose, const ns_addr *addr,
                      const uint8_t *expected_id, uint64_t now_ms)
{
    if ((purpose == NS__RPC_PING_USER && dht->user_pings >= NS_DHT_PINGS_MAX) ||
        (purpose == NS__RPC_PING_VERIFY && dht->verify_pings >= NS_DHT_VERIFY_PINGS_MAX))
        return NS_ELIMIT;
    ns__dht_rpc *rpc = ns__dht_rpc_new(dht, purpose, NS__DHT_PING, addr, expected_id, now_ms);
    if (rpc == NULL)
        return NS_ELIMIT;
    ns__dht_packet p = {0};
    int rc = ns__dht_rpc_send(dht, rpc, &p);
    if (rc != NS_OK)
        return rc;
    if (purpose == NS__RPC_PING_USER)
        dht->user_pings++;
    if (purpose == NS__RPC_PING_VERIFY)
        dht->verify_pings++;
    return NS_OK;
}

bool ns__dht_rpc_pending_to(const ns_dht *dht, const ns_addr *addr)
{
    for (size_t i = 0; i < dht->rpc_capacity; i++) {
        if (dht->rpcs[i].purpose != NS__RPC_FREE && ns_addr_equal(&dht->rpcs[i].addr, addr))
            return true;
    }
    return false;
}

static ns__dht_rpc *rpc_find(ns_dht *dht, uint64_t txid, const ns_addr *from)
{
    for (size_t i = 0; i < dht->rpc_capacity; i++) {
        ns__dht_rpc *rpc = &dht->rpcs[i];
        if (rpc->purpose != NS__RPC_FREE && rpc->txid == txid && ns_addr_equal(&rpc->addr, from))
            return rpc;
    }
    return NULL;
}

/* Loaded contacts wait in a queue and go out as ping slots free up. */
static void pings_drain(ns_dht *dht, uint64_t now_ms)
{
    while (dht->ping_queue_count > 0 && dht->user_pings < NS_DHT_PINGS_MAX) {
        ns__dht_node node = dht->ping_queue[dht->ping_queue_head];
        dht->ping_queue_head = (dht->ping_queue_head + 1) % NS_DHT_PING_QUEUE_MAX;
        dht->ping_queue_count--;
        if (ns__dht_ping_send(dht, NS__RPC_PING_USER, &node.addr, node.node_id, now_ms) ==
            NS_ELIMIT)
            return;
    }
}

/* The request is over: answered by a verified sender_id (p != NULL) or not. rpc is a copy whose
 * slot is free again. */
static void rpc_done(ns_dht *dht, const ns__dht_rpc *rpc, const ns__dht_packet *p,
                     const uint8_t *sender_id, uint64_t now_ms)
{
    bool answered = p != NULL && memcmp(sender_id, rpc->expected_id, NS_ID_BYTES) == 0;
    if (rpc->expect_id && !answered)
        ns__dht_table_failed(dht, rpc->expected_id, &rpc->addr, rpc->purpose == NS__RPC_PING_EVICT);
    switch ((ns__rpc_purpose)rpc->purpose) {
    case NS__RPC_FREE:
        NS_ASSERT(!"a free slot is never done");
        break;
    case NS__RPC_LOOKUP:
    case NS__RPC_PAGE:
    case NS__RPC_STORE:
        ns__dht_lookup_on_rpc(dht, rpc, p, sender_id, now_ms);
        break;
    case NS__RPC_PING_USER:
        NS_ASSERT(dht->user_pings > 0);
        dht->user_pings--;
        pings_drain(dht, now_ms);
        ns__dht_wake_at(dht, now_ms); /* a bootstrap may be waiting for its seeds */
        break;
    case NS__RPC_PING_VERIFY:
        NS_ASSERT(dht->verify_pings > 0);
        dht->verify_pings--;
        break;
    case NS__RPC_PING_EVICT:
        if (answered) {
            ns__dht_bucket *b = ns__dht_bucket_for(dht, rpc->expected_id, false);
            if (b != NULL)
                b->evicting = false;
        }
        break;
    case NS__RPC_PING_STALE:
        break;
    }
}

static void rpcs_expire(ns_dht *dht, uint64_t now_ms)
{
    for (size_t i = 0; i < dht->rpc_capacity; i++) {
        ns__dht_rpc *slot = &dht->rpcs[i];
        if (slot->purpose != NS__RPC_FREE && !slot->soft_expired &&
            slot->soft_deadline_ms < slot->deadline_ms && slot->soft_deadline_ms <= now_ms) {
            slot->soft_expired = true;
            ns__dht_rpc rpc = *slot;
            ns__dht_lookup_on_soft_timeout(dht, &rpc, now_ms);
        }
        if (dht->rpcs[i].purpose == NS__RPC_FREE || dht->rpcs[i].deadline_ms > now_ms)
            continue;
        ns__dht_rpc rpc = dht->rpcs[i];
        rpc_release(dht, &dht->rpcs[i]);
        dht->stats.timeouts++;
        rpc_done(dht, &rpc, NULL, NULL, now_ms);
    }
}

static uint64_t rpcs_next_deadline(const ns_dht *dht)
{
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < dht->rpc_capacity; i++) {
        const ns__dht_rpc *rpc = &dht->rpcs[i];
        if (rpc->purpose == NS__RPC_FREE)
            continue;
        uint64_t due = rpc->soft_expired ? rpc->deadline_ms : rpc->soft_deadline_ms;
        if (due < next)
            next = due;
    }
    return next;
}

static void chores(ns_dht *dht, uint64_t now_ms)
{
    ns__dht_table_chores(dht, now_ms);
    ns__dht_lookups_chores(dht, now_ms);
    if (now_ms >= dht->sweep_ms) {
        ns__dht_store_sweep(dht, now_ms);
        dht->sweep_ms = now_ms + NS_DHT_SWEEP_MS;
    }
    dht->chore_ms = now_ms + NS_DHT_CHORE_MS;
}

static void wake_timer_fn(void *arg, uint64_t now_ms)
{
    ns_dht *dht = arg;
    dht->wake_timer = 0;
    rpcs_expire(dht, now_ms);
    pings_drain(dht, now_ms);
    if (dht->started && now_ms >= dht->chore_ms)
        chores(dht, now_ms);
    uint64_t next = ns__dht_lookups_tick(dht, now_ms);
    uint64_t rpc_next = rpcs_next_deadline(dht);
    if (rpc_next < next)
        next = rpc_next;
    if (dht->started && dht->chore_ms < next)
        next = dht->chore_ms;
    ns__dht_wake_at(dht, next);
}

/* ---- observed address --------------------------------------------------------------------- */

static void observed_note(ns_dht *dht, const uint8_t reporter[NS_ID_BYTES], const ns_addr *addr)
{
    if (dht->observed == NULL) {
        dht->observed = calloc(NS_DHT_OBSERVED_MAX, sizeof *dht->observed);
        if (dht->observed == NULL)
            return;
    }
    for (size_t i = 0; i < dht->observed_count; i++) {
        if (memcmp(dht->observed[i].reporter, reporter, NS_ID_BYTES) == 0) {
            dht->observed[i].addr = *addr;
            return;
        }
    }
    ns__dht_observation *o = &dht->observed[dht->observed_next];
    memcpy(o->reporter, reporter, NS_ID_BYTES);
    o->addr = *addr;
    dht->observed_next = (dht->observed_next + 1) % NS_DHT_OBSERVED_MAX;
    if (dht->observed_count < NS_DHT_OBSERVED_MAX)
        dht->observed_count++;
}

int ns_dht_observed_addr(const ns_dht *dht, ns_addr *out)
{
    size_t best = 0, best_votes = 0;
    for (size_t i = 0; i < dht->observed_count; i++) {
        size_t votes = 0;
        for (size_t j = 0; j < dht->observed_count; j++)
            votes += ns_addr_equal(&dht->observed[i].addr, &dht->observed[j].addr);
        if (votes > best_votes) {
            best = i;
            best_votes = votes;
        }
    }
    if (best_votes == 0)
        return NS_ENOENT;
    *out = dht->observed[best].addr;
    return NS_OK;
}

/* ---- incoming answers --------------------------------------------------------------------- */

/* Their clock minus ours, taking the answer to be written halfway through the round trip. */
static int64_t clock_skew(uint64_t their_ms, uint64_t sent_ms, uint64_t now_ms)
{
    uint64_t mid = sent_ms + (now_ms - sent_ms) / 2;
    return their_ms >= mid ? (int64_t)(their_ms - mid) : -(int64_t)(mid - their_ms);
}

static void on_response(ns_dht *dht, const ns_addr *from, const ns__dht_packet *p, uint64_t now_ms)
{
    ns__dht_rpc *slot = rpc_find(dht, p->txid, from);
    if (slot == NULL || slot->kind != p->kind) {
        dht->stats.dropped_unexpected++;
        return;
    }
    ns__dht_rpc rpc = *slot;
    rpc_release(dht, slot);
    dht->stats.responses_in++;
    bool proven = rpc.id_verified && memcmp(p->sender_id, rpc.expected_id, NS_ID_BYTES) == 0;
    if (!proven && p->sender_record != NULL) {
        proven = identity_check(dht, p->sender_record, p->sender_record_len, p->sender_id,
                                now_ms) == NS_OK;
        if (!proven)
            dht->stats.identity_rejected++;
    }
    if (!proven) {
        rpc_done(dht, &rpc, NULL, NULL, now_ms);
        return;
    }
    NS_ASSERT(p->has_observed);
    NS_ASSERT(now_ms >= rpc.sent_ms);
    rtt_sample(dht, now_ms - rpc.sent_ms);
    observed_note(dht, p->sender_id, &p->observed);
    ns__dht_table_seen(dht, p->sender_id, from, now_ms,
                       clock_skew(p->time_ms, rpc.sent_ms, now_ms));
    rpc_done(dht, &rpc, p, p->sender_id, now_ms);
}

/* ---- incoming requests -------------------------------------------------------------------- */

static ns__dht_error store_request(ns_dht *dht, const ns_addr *from, const ns__dht_packet *p,
                                   uint64_t now_ms)
{
    NS_ASSERT(p->has_token);
    NS_ASSERT(p->record_count == 1);
    if (!ns__dht_token_check(dht, from, now_ms, p->token)) {
        dht->stats.store_bad_token++;
        return NS__DHT_ERROR_TOKEN;
    }
    ns_record rec;
    if (ns__dht_value_check(dht, p->records[0], p->record_lens[0], now_ms, NULL, &rec) != NS_OK)
        return NS__DHT_ERROR_RECORD;
    uint8_t key[NS_ID_BYTES];
    ns_record_key(&rec, key);
    int rc = ns__dht_store_put(dht, key, p->records[0], p->record_lens[0], &rec, now_ms);
    if (rc == NS_OK)
        return NS__DHT_ERROR_NONE;
    return rc == NS_EEXIST ? NS__DHT_ERROR_STALE : NS__DHT_ERROR_FULL;
}

static void answer_fill(ns_dht *dht, const ns_addr *from, const ns__dht_packet *p, uint64_t now_ms,
                        ns__dht_packet *r)
{
    switch (p->kind) {
    case NS__DHT_PING:
        break;
    case NS__DHT_FIND_NODE:
        r->contact_count =
            ns__dht_table_closest(dht, p->target, p->sender_id, r->contacts, NS_DHT_K);
        r->has_token = true;
        ns__dht_token_make(dht, from, now_ms, r->token);
        break;
    case NS__DHT_FIND_VALUE: {
        size_t total;
        r->record_count = ns__dht_store_get(dht, p->target, now_ms, p->skip, r->records,
                                            r->record_lens, NS_DHT_PACKET_RECORDS_MAX, &total);
        r->values_total = (uint32_t)total;
        if (p->skip == 0)
            r->contact_count =
                ns__dht_table_closest(dht, p->target, p->sender_id, r->contacts, NS_DHT_K);
        r->has_token = true;
        ns__dht_token_make(dht, from, now_ms, r->token);
        break;
    }
    case NS__DHT_STORE:
        r->error = store_request(dht, from, p, now_ms);
        break;
    }
}

/* An unknown node asked us something: ping it, so that it proves its id and address, if it
 * would have room in our table. */
static void requester_consider(ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *from,
                               uint64_t now_ms)
{
    if (ns__dht_table_knows(dht, id, from) || !ns__dht_table_has_room(dht, id) ||
        dht->verify_pings >= NS_DHT_VERIFY_PINGS_MAX || ns__dht_rpc_pending_to(dht, from))
        return;
    int rc = ns__dht_ping_send(dht, NS__RPC_PING_VERIFY, from, id, now_ms);
    (void)rc; /* no slot or no send: the requester is simply not added now */
}

static void on_request(ns_dht *dht, const ns_addr *from, const ns__dht_packet *p, uint64_t now_ms)
{
    if (!ns__dht_rate_allow(dht, from, now_ms)) {
        dht->stats.dropped_rate_limited++;
        return;
    }
    dht->stats.requests_in++;
    ns__dht_packet r;
    memset(&r, 0, sizeof r);
    memcpy(r.sender_id, dht->self_id, NS_ID_BYTES);
    r.txid = p->txid;
    r.response = true;
    r.kind = p->kind;
    r.time_ms = now_ms;
    r.has_observed = true;
    r.observed = *from;
    if (p->want_record || p->kind == NS__DHT_PING) {
        r.sender_record = dht->self_record;
        r.sender_record_len = dht->self_record_len;
    }
    answer_fill(dht, from, p, now_ms, &r);
    (void)packet_send(dht, from, NULL, &r);
    requester_consider(dht, p->sender_id, from, now_ms);
}

void ns_dht_on_datagram(ns_dht *dht, const ns_addr *from, const uint8_t *buf, size_t len)
{
    NS_ASSERT(dht != NULL);
    NS_ASSERT(from != NULL);
    NS_ASSERT(buf != NULL || len == 0);
    uint64_t now_ms = ns__dht_now(dht);
    dht->stats.packets_in++;
    ns__dht_packet p;
    if (!ns__dht_addr_usable(from) ||
        ns__dht_packet_decode(buf, len, dht->network_id, &p) != NS_OK) {
        dht->stats.dropped_malformed++;
        return;
    }
    if (memcmp(p.sender_id, dht->self_id, NS_ID_BYTES) == 0)
        dht->stats.dropped_malformed++;
    else if (p.response)
        on_response(dht, from, &p, now_ms);
    else
        on_request(dht, from, &p, now_ms);
    ns__dht_packet_release(&p);
}

/* ---- the object --------------------------------------------------------------------------- */

static int self_record_set(ns_dht *dht, const uint8_t *record, size_t len)
{
    if (len == 0)
        return NS_EINVAL;
    if (len > NS_DHT_NODE_RECORD_BYTES_MAX)
        return NS_ETOOBIG;
    int rc = identity_check(dht, record, len, dht->self_id, ns__dht_now(dht));
    if (rc != NS_OK)
        return NS_EINVAL;
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return NS_ENOMEM;
    memcpy(copy, record, len);
    free(dht->self_record);
    dht->self_record = copy;
    dht->self_record_len = len;
    return NS_OK;
}

int ns_dht_new(ns_dht **out, const ns_dht_config *config, const ns_env *env)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(config != NULL && config->key != NULL);
    NS_ASSERT(env != NULL && env->now_ms != NULL && env->timer != NULL && env->send != NULL);
    NS_ASSERT(config->self_record != NULL || config->self_record_len == 0);
    ns_dht *dht = calloc(1, sizeof *dht);
    if (dht == NULL)
        return NS_ENOMEM;
    dht->env = *env;
    dht->key = config->key;
    memcpy(dht->self_id, config->key->node_id, NS_ID_BYTES);
    memcpy(dht->network_id, config->network_id, 32);
    dht->verify = config->verify;
    dht->verify_arg = config->verify_arg;
    int rc = self_record_set(dht, config->self_record, config->self_record_len);
    if (rc != NS_OK) {
        free(dht);
        return rc;
    }
    ns_env_random(&dht->env, dht->hash_key, sizeof dht->hash_key);
    ns_env_random(&dht->env, dht->token_secret, sizeof dht->token_secret);
    ns_env_random(&dht->env, dht->token_secret_prev, sizeof dht->token_secret_prev);
    dht->token_rotated_ms = ns__dht_now(dht);
    *out = dht;
    return NS_OK;
}

void ns_dht_free(ns_dht *dht)
{
    if (dht == NULL)
        return;
    if (dht->wake_timer != 0)
        ns_env_timer_cancel(&dht->env, dht->wake_timer);
    ns__dht_lookups_free(dht);
    ns__dht_own_free(dht);
    ns__dht_table_free(dht);
    ns__dht_store_free(dht);
    ns__dht_rate_free(dht);
    free(dht->rpcs);
    free(dht->ping_queue);
    free(dht->observed);
    free(dht->self_record);
    free(dht);
}

void ns_dht_start(ns_dht *dht)
{
    uint64_t now_ms = ns__dht_now(dht);
    dht->started = true;
    dht->chore_ms = now_ms + NS_DHT_CHORE_MS;
    dht->sweep_ms = now_ms + NS_DHT_SWEEP_MS;
    ns__dht_wake_at(dht, dht->chore_ms);
}

int ns_dht_set_self_record(ns_dht *dht, const uint8_t *record, size_t len)
{
    NS_ASSERT(record != NULL || len == 0);
    return self_record_set(dht, record, len);
}

int ns_dht_ping(ns_dht *dht, const ns_addr *addr)
{
    if (!ns__dht_addr_usable(addr))
        return NS_EINVAL;
    return ns__dht_ping_send(dht, NS__RPC_PING_USER, addr, NULL, ns__dht_now(dht));
}

void ns_dht_get_stats(const ns_dht *dht, ns_dht_stats *out)
{
    *out = dht->stats;
    out->records_stored = dht->value_count;
}
