/*
 * workload.c: what the simulated users do, and what it measures.
 *
 * The first `nodes` nodes join evenly over join_spread_s; from then on churn replaces nodes (one
 * leaves or crashes, a new one joins and bootstraps from a few random live nodes) as a Poisson
 * process; topic records are published by random nodes and published again by another when their
 * author goes. After warmup, random bootstrapped nodes start lookups (a Poisson process over all
 * nodes): find_node of a bootstrapped node's id, get of a node's own record, get of a topic record.
 * Each lookup is an op with a context; a node that departs frees its ops, since its core promises
 * no callback after it is freed. Only lookups started in the measurement window count.
 */
#include <stdlib.h>
#include <string.h>

#include "netsim.h"

#define PICK_TRIES       32
#define TOPIC_RETRY_MS   10000
#define TOPIC_STAGGER_US 1000
#define SAMPLES_START    4096
#define TOPIC_BODY_BYTES 48
#define NO_SERIAL        UINT32_MAX

/* ---- ops -------------------------------------------------------------------------------- */

ns_sim_op *ns__sim_op_new(ns_sim *sim, ns_sim_node *node, ns_sim_op_kind kind)
{
    ns_sim_op *op = sim->op_free;
    if (op != NULL) {
        sim->op_free = op->next;
    } else {
        uint32_t index = ns__sim_slab_grow(&sim->ops);
        if (index == UINT32_MAX)
            return NULL;
        op = ns__sim_slab_at(&sim->ops, index);
    }
    *op = (ns_sim_op){.node = node, .kind = kind, .start_us = sim->now_us};
    op->next = node->ops;
    if (node->ops != NULL)
        node->ops->prev = op;
    node->ops = op;
    return op;
}

void ns__sim_op_free(ns_sim *sim, ns_sim_op *op)
{
    ns_sim_node *node = op->node;
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        node->ops = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
    if (op->measured) {
        NS_ASSERT(sim->ops_in_flight_measured > 0);
        sim->ops_in_flight_measured--;
    }
    *op = (ns_sim_op){.next = sim->op_free};
    sim->op_free = op;
}

void ns__sim_ops_abandon(ns_sim *sim, ns_sim_node *node)
{
    while (node->ops != NULL) {
        ns_sim_op *op = node->ops;
        if (op->measured)
            sim->counts.abandoned[op->kind]++;
        ns__sim_op_free(sim, op);
    }
}

/* ---- picking ---------------------------------------------------------------------------- */

/* A random live node that has bootstrapped (and, with published, whose record is stored),
 * other than `except`; NULL after PICK_TRIES misses. */
static ns_sim_node *pick_node(ns_sim *sim, ns_sim_rng *rng, uint32_t except, bool published)
{
    if (sim->live_count == 0)
        return NULL;
    for (int i = 0; i < PICK_TRIES; i++) {
        uint32_t s = sim->live[ns__sim_rng_below(rng, sim->live_count)];
        ns_sim_node *node = sim->nodes[s];
        if (s != except && node->ready && (!published || node->published))
            return node;
    }
    return NULL;
}

static uint32_t pick_topic(ns_sim *sim)
{
    uint32_t n = sim->sc.topic_records;
    for (int i = 0; n > 0 && i < PICK_TRIES; i++) {
        uint32_t t = (uint32_t)ns__sim_rng_below(&sim->rng_lookup, n);
        if (sim->topics[t].stored)
            return t;
    }
    return NO_SERIAL;
}

/* ---- lookups ---------------------------------------------------------------------------- */

static void schedule_next_lookup(ns_sim *sim)
{
    double rate_per_s = sim->sc.lookups_per_node_per_min * sim->sc.nodes / 60.0;
    if (rate_per_s <= 0)
        return;
    uint64_t gap_us = (uint64_t)(ns__sim_rng_exp(&sim->rng_lookup, 1e6 / rate_per_s)) + 1;
    NS_ASSERT(ns__sim_schedule(sim, sim->now_us + gap_us, NS_SIM_EV_LOOKUP, 0) == NS_OK);
}

static ns_sim_op_kind lookup_kind(ns_sim *sim)
{
    double u = ns__sim_rng_unit(&sim->rng_lookup);
    if (u < sim->sc.get_node_share)
        return NS_SIM_OP_GET_NODE;
    if (u < sim->sc.get_node_share + sim->sc.get_topic_share)
        return NS_SIM_OP_GET_TOPIC;
    return NS_SIM_OP_FIND;
}

/* Fills the op's target; false when there is none to pick right now. */
static bool lookup_target(ns_sim *sim, ns_sim_op *op, uint32_t self)
{
    if (op->kind == NS_SIM_OP_GET_TOPIC) {
        uint32_t t = pick_topic(sim);
        if (t == NO_SERIAL)
            return false;
        op->topic = t;
        op->topic_generation = sim->topics[t].generation;
        memcpy(op->target, sim->topics[t].key, NS_ID_BYTES);
        return true;
    }
    ns_sim_node *target = pick_node(sim, &sim->rng_lookup, self, op->kind == NS_SIM_OP_GET_NODE);
    if (target == NULL)
        return false;
    op->target_serial = target->serial;
    memcpy(op->target, target->key.node_id, NS_ID_BYTES);
    return true;
}

void ns__sim_on_lookup(ns_sim *sim)
{
    if (sim->phase != NS_SIM_PHASE_MEASURE)
        return;
    schedule_next_lookup(sim);
    ns_sim_node *node = pick_node(sim, &sim->rng_lookup, NO_SERIAL, false);
    if (node == NULL)
        return;
    ns_sim_op *op = ns__sim_op_new(sim, node, lookup_kind(sim));
    NS_ASSERT(op != NULL); /* NS_SIM_OPS_MAX in flight: lookups never finish */
    if (!lookup_target(sim, op, node->serial)) {
        ns__sim_op_free(sim, op);
        return;
    }
    ns_sim_op_kind kind = op->kind;
    op->measured = true;
    sim->ops_in_flight_measured++;
    sim->counts.started[kind]++;
    int rc = kind == NS_SIM_OP_FIND ? ns_dht_find_node(node->dht, op->target, ns__sim_op_done, op)
                                    : ns_dht_get(node->dht, op->target, ns__sim_op_done, op);
    if (rc != NS_OK) {
        sim->counts.refused[kind]++;
        ns__sim_op_free(sim, op);
    }
}

static bool has_contact(const ns_dht_result *r, const uint8_t id[NS_ID_BYTES])
{
    for (size_t i = 0; i < r->contact_count; i++) {
        if (memcmp(r->contacts[i].node_id, id, NS_ID_BYTES) == 0)
            return true;
    }
    return false;
}

static bool has_record(const ns_dht_result *r, const uint8_t *record, size_t len)
{
    for (size_t i = 0; i < r->record_count; i++) {
        if (r->record_lens[i] == len && memcmp(r->records[i], record, len) == 0)
            return true;
    }
    return false;
}

static void sample_add(ns_sim *sim, ns_sim_op_kind kind, uint32_t hops, uint32_t latency_ms)
{
    if (sim->sample_count == sim->sample_capacity) {
        size_t cap = sim->sample_capacity == 0 ? SAMPLES_START : sim->sample_capacity * 2;
        ns_sim_sample *grown =
            cap <= NS_SIM_SAMPLES_MAX ? realloc(sim->samples, cap * sizeof *grown) : NULL;
        if (grown == NULL) {
            sim->counts.samples_dropped++;
            return;
        }
        sim->samples = grown;
        sim->sample_capacity = cap;
    }
    sim->samples[sim->sample_count++] =
        (ns_sim_sample){.latency_ms = latency_ms,
                        .hops = hops > UINT16_MAX ? UINT16_MAX : (uint16_t)hops,
                        .kind = (uint8_t)kind};
}

/* Whether the target is still there to be found; when not, the lookup is not counted. */
static bool target_present(const ns_sim *sim, const ns_sim_op *op)
{
    if (op->kind == NS_SIM_OP_GET_TOPIC) {
        const ns_sim_topic *t = &sim->topics[op->topic];
        return t->stored && t->generation == op->topic_generation;
    }
    return ns__sim_node_live(sim, op->target_serial) != NULL;
}

static bool lookup_succeeded(const ns_sim *sim, const ns_sim_op *op, const ns_dht_result *r)
{
    switch ((ns_sim_op_kind)op->kind) {
    case NS_SIM_OP_FIND:
        return has_contact(r, op->target);
    case NS_SIM_OP_GET_NODE: {
        const ns_sim_node *t = ns__sim_node_live(sim, op->target_serial);
        return has_record(r, t->record, t->record_len);
    }
    case NS_SIM_OP_GET_TOPIC: {
        const ns_sim_topic *t = &sim->topics[op->topic];
        return has_record(r, t->record, t->record_len);
    }
    case NS_SIM_OP_BOOTSTRAP:
    case NS_SIM_OP_PUT_SELF:
    case NS_SIM_OP_PUT_TOPIC:
        break;
    }
    NS_ASSERT(!"not a measured lookup");
    return false;
}

static void lookup_finished(ns_sim *sim, ns_sim_op *op, const ns_dht_result *r)
{
    if (!op->measured)
        return;
    ns_sim_op_kind kind = op->kind;
    if (!target_present(sim, op)) {
        sim->counts.target_left[kind]++;
        return;
    }
    if (!lookup_succeeded(sim, op, r)) {
        sim->counts.failed[kind]++;
        return;
    }
    sim->counts.succeeded[kind]++;
    sample_add(sim, kind, r->hops, (uint32_t)((sim->now_us - op->start_us) / 1000));
}

/* ---- bootstrap and publishing ----------------------------------------------------------- */

static void put_self(ns_sim *sim, ns_sim_node *node)
{
    ns_sim_op *op = ns__sim_op_new(sim, node, NS_SIM_OP_PUT_SELF);
    NS_ASSERT(op != NULL);
    if (ns_dht_put(node->dht, node->record, node->record_len, ns__sim_op_done, op) != NS_OK) {
        sim->counts.puts_self_failed++;
        ns__sim_op_free(sim, op);
    }
}

static void bootstrap_finished(ns_sim *sim, ns_sim_node *node, const ns_dht_result *r)
{
    if (r->status == NS_OK || ns_dht_contact_count(node->dht) > 0) {
        node->ready = true;
        put_self(sim, node);
        return;
    }
    if (node->bootstrap_tries >= NS_SIM_BOOTSTRAP_TRIES) {
        sim->counts.bootstrap_failed++;
        return;
    }
    sim->counts.bootstrap_retries++;
    uint64_t at_us = sim->now_us + (uint64_t)NS_SIM_BOOTSTRAP_RETRY_MS * 1000;
    NS_ASSERT(ns__sim_schedule(sim, at_us, NS_SIM_EV_BOOTSTRAP, node->serial) == NS_OK);
}

static void topic_put_finished(ns_sim *sim, const ns_sim_op *op, const ns_dht_result *r)
{
    ns_sim_topic *t = &sim->topics[op->topic];
    if (t->generation != op->topic_generation)
        return; /* replaced meanwhile */
    if (r->contact_count > 0) {
        t->stored = true;
        sim->counts.puts_topic_ok++;
        return;
    }
    sim->counts.puts_topic_failed++;
    uint64_t at_us = sim->now_us + (uint64_t)TOPIC_RETRY_MS * 1000;
    NS_ASSERT(ns__sim_schedule(sim, at_us, NS_SIM_EV_TOPIC, op->topic) == NS_OK);
}

void ns__sim_op_done(void *arg, const ns_dht_result *result)
{
    ns_sim_op *op = arg;
    ns_sim_node *node = op->node;
    ns_sim *sim = node->sim;
    NS_ASSERT(result != NULL);
    switch ((ns_sim_op_kind)op->kind) {
    case NS_SIM_OP_FIND:
    case NS_SIM_OP_GET_NODE:
    case NS_SIM_OP_GET_TOPIC:
        lookup_finished(sim, op, result);
        break;
    case NS_SIM_OP_BOOTSTRAP:
        bootstrap_finished(sim, node, result);
        break;
    case NS_SIM_OP_PUT_SELF:
        node->published = result->contact_count > 0;
        if (node->published)
            sim->counts.puts_self_ok++;
        else
            sim->counts.puts_self_failed++;
        break;
    case NS_SIM_OP_PUT_TOPIC:
        topic_put_finished(sim, op, result);
        break;
    }
    ns__sim_op_free(sim, op);
}

static int topic_sign(ns_sim *sim, uint32_t index, const ns_sim_node *author)
{
    ns_sim_topic *t = &sim->topics[index];
    uint8_t body[TOPIC_BODY_BYTES] = {0};
    snprintf((char *)body, sizeof body, "netsim topic %u generation %u", index, t->generation);
    ns_record rec = {.type = NS_RECORD_LAYER_HOLDER,
                     .sequence = t->generation,
                     .timestamp_ms = ns__sim_now_ms(sim),
                     .expiry_ms = ns__sim_now_ms(sim) + NS_SIM_RECORD_TTL_MS,
                     .body = body,
                     .body_len = sizeof body};
    rec.topic_len = (size_t)snprintf((char *)rec.topic, sizeof rec.topic, "netsim/topic/%u", index);
    free(t->record);
    t->record = NULL;
    ns_record_key(&rec, t->key);
    return ns_record_sign(&author->key, &rec, &t->record, &t->record_len);
}

void ns__sim_on_topic(ns_sim *sim, uint32_t index)
{
    if (sim->phase >= NS_SIM_PHASE_DRAIN)
        return;
    ns_sim_topic *t = &sim->topics[index];
    ns_sim_node *author = pick_node(sim, &sim->rng_work, NO_SERIAL, false);
    uint64_t retry_us = sim->now_us + (uint64_t)TOPIC_RETRY_MS * 1000;
    if (author == NULL) {
        NS_ASSERT(ns__sim_schedule(sim, retry_us, NS_SIM_EV_TOPIC, index) == NS_OK);
        return;
    }
    t->generation++;
    t->stored = false;
    t->author = author->serial;
    NS_ASSERT(topic_sign(sim, index, author) == NS_OK);
    ns_sim_op *op = ns__sim_op_new(sim, author, NS_SIM_OP_PUT_TOPIC);
    NS_ASSERT(op != NULL);
    op->topic = index;
    op->topic_generation = t->generation;
    if (ns_dht_put(author->dht, t->record, t->record_len, ns__sim_op_done, op) != NS_OK) {
        ns__sim_op_free(sim, op);
        sim->counts.puts_topic_failed++;
        NS_ASSERT(ns__sim_schedule(sim, retry_us, NS_SIM_EV_TOPIC, index) == NS_OK);
    }
}

void ns__sim_topic_author_gone(ns_sim *sim, uint32_t serial)
{
    for (uint32_t i = 0; i < sim->sc.topic_records; i++) {
        ns_sim_topic *t = &sim->topics[i];
        if (t->author != serial)
            continue;
        t->author = NO_SERIAL;
        t->stored = false;
        t->generation++; /* a put still in flight for it is void */
        NS_ASSERT(ns__sim_schedule(sim, sim->now_us, NS_SIM_EV_TOPIC, i) == NS_OK);
    }
}

/* ---- churn and phases ------------------------------------------------------------------- */

static void schedule_next_churn(ns_sim *sim, uint64_t from_us)
{
    double rate_per_s = sim->sc.churn_per_hour * sim->sc.nodes / 3600.0;
    if (rate_per_s <= 0)
        return;
    uint64_t gap_us = (uint64_t)(ns__sim_rng_exp(&sim->rng_churn, 1e6 / rate_per_s)) + 1;
    NS_ASSERT(ns__sim_schedule(sim, from_us + gap_us, NS_SIM_EV_CHURN, 0) == NS_OK);
}

void ns__sim_on_churn(ns_sim *sim)
{
    if (sim->phase >= NS_SIM_PHASE_DRAIN)
        return;
    schedule_next_churn(sim, sim->now_us);
    if (sim->live_count == 0)
        return;
    uint32_t s = sim->live[ns__sim_rng_below(&sim->rng_churn, sim->live_count)];
    bool crash = ns__sim_rng_unit(&sim->rng_churn) < sim->sc.churn_crash_share;
    ns__sim_node_depart(sim, s, crash);
    NS_ASSERT(ns__sim_node_join(sim) == NS_OK);
}

void ns__sim_on_phase(ns_sim *sim, ns_sim_phase phase)
{
    ns__sim_note_live_change(sim); /* closes the window's node-time before the phase changes */
    sim->phase = phase;
    switch (phase) {
    case NS_SIM_PHASE_WARMUP:
        break;
    case NS_SIM_PHASE_MEASURE:
        schedule_next_lookup(sim);
        break;
    case NS_SIM_PHASE_DRAIN:
        ns__sim_measure_health(sim);
        break;
    case NS_SIM_PHASE_STOP:
        break;
    }
}

int ns__sim_workload_start(ns_sim *sim)
{
    const ns_sim_scenario *sc = &sim->sc;
    uint64_t spread_us = (uint64_t)(sc->join_spread_s * 1e6);
    int rc = NS_OK;
    for (uint32_t i = 0; rc == NS_OK && i < sc->nodes; i++)
        rc = ns__sim_schedule(sim, spread_us * i / sc->nodes, NS_SIM_EV_JOIN, i);
    uint64_t topics_us = spread_us + (sim->warmup_us - spread_us) / 4;
    for (uint32_t i = 0; rc == NS_OK && i < sc->topic_records; i++)
        rc = ns__sim_schedule(sim, topics_us + (uint64_t)i * TOPIC_STAGGER_US, NS_SIM_EV_TOPIC, i);
    if (rc == NS_OK)
        rc = ns__sim_schedule(sim, sim->warmup_us, NS_SIM_EV_PHASE, NS_SIM_PHASE_MEASURE);
    if (rc == NS_OK)
        rc = ns__sim_schedule(sim, sim->end_us, NS_SIM_EV_PHASE, NS_SIM_PHASE_DRAIN);
    if (rc == NS_OK)
        rc = ns__sim_schedule(sim, sim->end_us + (uint64_t)NS_SIM_DRAIN_MS * 1000, NS_SIM_EV_PHASE,
                              NS_SIM_PHASE_STOP);
    if (rc == NS_OK)
        schedule_next_churn(sim, spread_us); /* churn starts once the first nodes are in */
    return rc;
}

/* ---- routing-table health --------------------------------------------------------------- */

void ns__sim_measure_health(ns_sim *sim)
{
    size_t cap = (size_t)NS_DHT_K * NS_DHT_ID_BITS;
    ns_dht_contact *buf = malloc(cap * sizeof *buf);
    NS_ASSERT(buf != NULL);
    sim->health = (ns_sim_health){0};
    for (uint32_t i = 0; i < sim->live_count; i++) {
        const ns_sim_node *node = sim->nodes[sim->live[i]];
        size_t n = ns_dht_contacts(node->dht, buf, cap);
        NS_ASSERT(n <= cap);
        sim->health.nodes++;
        sim->health.contacts += n;
        ns__sim_dht_stats_add(sim, node->dht);
        for (size_t c = 0; c < n; c++) {
            uint32_t s;
            const ns_sim_node *peer =
                ns__sim_serial_of(sim, &buf[c].addr, &s) ? ns__sim_node_live(sim, s) : NULL;
            if (peer == NULL || memcmp(peer->key.node_id, buf[c].node_id, NS_ID_BYTES) != 0)
                sim->health.contacts_dead++;
        }
    }
    free(buf);
}
