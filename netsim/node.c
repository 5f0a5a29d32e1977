/*
 * node.c: the simulated world and its nodes, each a real DHT core bound to a virtual-time env.
 *
 * Each node has a real secp256k1 key derived from the run's seed and its serial number, a real
 * signed node record naming its address 10.x.y.z (the serial plus one, so an address never
 * repeats in a run and a packet to a departed node finds nobody), its own PRNG stream, and a
 * ns_dht core whose env reads the virtual clock, sets timers as heap events and sends through the
 * simulated links. Timers live in a slab; an id is the slot and its generation, so cancelling is
 * O(1) and lazy: a cancelled timer stays in the heap and is skipped when it comes due. A node
 * that departs frees its core (which cancels its timers) and everything it had in flight.
 */
#include <stdlib.h>
#include <string.h>

#include "neuroshard/link.h"
#include "netsim.h"

#define SERIALS_START   1024
#define SLOT_NONE       UINT32_MAX
#define KEY_TRIES_MAX   8
#define SEED_PICK_TRIES 16

/* ---- slabs ------------------------------------------------------------------------------ */

int ns__sim_slab_init(ns_sim_slab *slab, size_t slot_bytes, uint32_t slots_max)
{
    size_t chunks_max = (slots_max + NS_SIM_CHUNK_SLOTS - 1) / NS_SIM_CHUNK_SLOTS;
    *slab = (ns_sim_slab){.slot_bytes = slot_bytes, .slots_max = slots_max};
    slab->chunks = calloc(chunks_max, sizeof *slab->chunks);
    return slab->chunks == NULL ? NS_ENOMEM : NS_OK;
}

void ns__sim_slab_free(ns_sim_slab *slab)
{
    for (size_t i = 0; i < slab->chunk_count; i++)
        free(slab->chunks[i]);
    free(slab->chunks);
    *slab = (ns_sim_slab){0};
}

void *ns__sim_slab_at(const ns_sim_slab *slab, uint32_t index)
{
    NS_ASSERT(index < slab->used);
    uint8_t *chunk = slab->chunks[index >> NS_SIM_CHUNK_SHIFT];
    return chunk + (size_t)(index & (NS_SIM_CHUNK_SLOTS - 1)) * slab->slot_bytes;
}

uint32_t ns__sim_slab_grow(ns_sim_slab *slab)
{
    if (slab->used >= slab->slots_max)
        return SLOT_NONE;
    size_t chunk = slab->used >> NS_SIM_CHUNK_SHIFT;
    if (chunk == slab->chunk_count) {
        slab->chunks[chunk] = calloc(NS_SIM_CHUNK_SLOTS, slab->slot_bytes);
        if (slab->chunks[chunk] == NULL)
            return SLOT_NONE;
        slab->chunk_count++;
    }
    return slab->used++;
}

/* ---- packets ---------------------------------------------------------------------------- */

uint32_t ns__sim_packet_alloc(ns_sim *sim)
{
    uint32_t index = sim->packet_free;
    if (index != SLOT_NONE) {
        ns_sim_packet *p = ns__sim_slab_at(&sim->packets, index);
        sim->packet_free = p->next_free;
        return index;
    }
    return ns__sim_slab_grow(&sim->packets);
}

void ns__sim_packet_release(ns_sim *sim, uint32_t index)
{
    ns_sim_packet *p = ns__sim_slab_at(&sim->packets, index);
    p->next_free = sim->packet_free;
    sim->packet_free = index;
}

/* ---- the env ---------------------------------------------------------------------------- */

uint64_t ns__sim_now_ms(const ns_sim *sim)
{
    return NS_SIM_EPOCH_MS + sim->now_us / 1000;
}

int ns__sim_schedule(ns_sim *sim, uint64_t at_us, ns_sim_event_kind kind, uint32_t index)
{
    NS_ASSERT(at_us >= sim->now_us);
    return ns__sim_heap_push(&sim->heap, at_us, kind, index);
}

static uint64_t env_now(void *ctx)
{
    const ns_sim_node *node = ctx;
    return ns__sim_now_ms(node->sim);
}

static uint64_t timer_at_us(const ns_sim *sim, uint64_t at_ms)
{
    const uint64_t far_us = UINT64_MAX / 4; /* never comes, and never overflows */
    if (at_ms <= NS_SIM_EPOCH_MS)
        return sim->now_us;
    uint64_t rel_ms = at_ms - NS_SIM_EPOCH_MS;
    uint64_t at_us = rel_ms > far_us / 1000 ? far_us : rel_ms * 1000;
    return at_us < sim->now_us ? sim->now_us : at_us;
}

static uint64_t env_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    ns_sim_node *node = ctx;
    ns_sim *sim = node->sim;
    NS_ASSERT(fn != NULL);
    uint32_t index = sim->timer_free;
    ns_sim_timer *t;
    if (index != SLOT_NONE) {
        t = ns__sim_slab_at(&sim->timers, index);
        sim->timer_free = t->next_free;
    } else {
        index = ns__sim_slab_grow(&sim->timers);
        NS_ASSERT(index != SLOT_NONE); /* NS_SIM_TIMERS_MAX pending: a core leaks timers */
        t = ns__sim_slab_at(&sim->timers, index);
        t->generation = 1;
    }
    NS_ASSERT(!t->pending);
    t->fn = fn;
    t->arg = arg;
    t->serial = node->serial;
    t->pending = true;
    t->cancelled = false;
    node->timers_pending++;
    sim->counts.timers_set++;
    NS_ASSERT(ns__sim_schedule(sim, timer_at_us(sim, at_ms), NS_SIM_EV_TIMER, index) == NS_OK);
    return ((uint64_t)t->generation << 32) | ((uint64_t)index + 1);
}

static void timer_release(ns_sim *sim, uint32_t index, ns_sim_timer *t)
{
    t->pending = false;
    t->cancelled = false;
    t->generation++;
    t->next_free = sim->timer_free;
    sim->timer_free = index;
}

static void env_timer_cancel(void *ctx, uint64_t timer_id)
{
    ns_sim_node *node = ctx;
    ns_sim *sim = node->sim;
    uint64_t slot = timer_id & 0xffffffffu;
    if (slot == 0 || slot > sim->timers.used)
        return;
    ns_sim_timer *t = ns__sim_slab_at(&sim->timers, (uint32_t)(slot - 1));
    if (!t->pending || t->cancelled || t->generation != (uint32_t)(timer_id >> 32))
        return; /* it fired already, or was cancelled: nothing to do */
    NS_ASSERT(t->serial == node->serial);
    t->cancelled = true;
    NS_ASSERT(node->timers_pending > 0);
    node->timers_pending--;
}

void ns__sim_fire_timer(ns_sim *sim, uint32_t index)
{
    ns_sim_timer *t = ns__sim_slab_at(&sim->timers, index);
    NS_ASSERT(t->pending);
    ns_sim_node *node = ns__sim_node_live(sim, t->serial);
    if (t->cancelled || node == NULL) {
        timer_release(sim, index, t); /* a node that is gone was counted as leaking it */
        return;
    }
    ns_timer_fn fn = t->fn;
    void *arg = t->arg;
    NS_ASSERT(node->timers_pending > 0);
    node->timers_pending--;
    timer_release(sim, index, t); /* first, so the timer's own id is stale inside fn */
    fn(arg, ns__sim_now_ms(sim));
}

static void env_random(void *ctx, void *buf, size_t n)
{
    ns_sim_node *node = ctx;
    ns__sim_rng_fill(&node->rng, buf, n);
}

/* ---- the world -------------------------------------------------------------------------- */

int ns__sim_init(ns_sim *sim, const ns_sim_scenario *sc)
{
    *sim = (ns_sim){.sc = *sc, .timer_free = SLOT_NONE, .packet_free = SLOT_NONE};
    sim->warmup_us = (uint64_t)(sc->warmup_s * 1e6);
    sim->end_us = (uint64_t)(sc->duration_s * 1e6);
    ns_network_id(sim->network_id, NS_SIM_NETWORK);
    ns__sim_rng_seed(&sim->rng_work, sc->seed, 1);
    ns__sim_rng_seed(&sim->rng_net, sc->seed, 2);
    ns__sim_rng_seed(&sim->rng_churn, sc->seed, 3);
    ns__sim_rng_seed(&sim->rng_lookup, sc->seed, 4);
    size_t events_max = (size_t)NS_SIM_TIMERS_MAX + NS_SIM_PACKETS_MAX + 2 * NS_SIM_NODES_MAX +
                        NS_SIM_TOPICS_MAX + 64;
    int rc = ns__sim_heap_init(&sim->heap, events_max);
    if (rc == NS_OK)
        rc = ns__verifier_init(&sim->verifier);
    if (rc == NS_OK)
        rc = ns__sim_slab_init(&sim->timers, sizeof(ns_sim_timer), NS_SIM_TIMERS_MAX);
    if (rc == NS_OK)
        rc = ns__sim_slab_init(&sim->packets, sizeof(ns_sim_packet), NS_SIM_PACKETS_MAX);
    if (rc == NS_OK)
        rc = ns__sim_slab_init(&sim->ops, sizeof(ns_sim_op), NS_SIM_OPS_MAX);
    if (rc != NS_OK)
        return rc;
    sim->serial_capacity = SERIALS_START;
    sim->nodes = calloc(sim->serial_capacity, sizeof *sim->nodes);
    sim->serial_state = calloc(sim->serial_capacity, sizeof *sim->serial_state);
    sim->gone_us = calloc(sim->serial_capacity, sizeof *sim->gone_us);
    sim->live = calloc(sc->nodes, sizeof *sim->live);
    sim->topics = calloc(sc->topic_records + 1, sizeof *sim->topics);
    if (sim->nodes == NULL || sim->serial_state == NULL || sim->gone_us == NULL ||
        sim->live == NULL || sim->topics == NULL)
        return NS_ENOMEM;
    for (uint32_t i = 0; i < sc->topic_records; i++)
        sim->topics[i].author = SLOT_NONE;
    return NS_OK;
}

void ns__sim_free(ns_sim *sim)
{
    for (uint32_t s = 0; s < sim->serial_count; s++) {
        ns_sim_node *node = sim->nodes[s];
        if (node == NULL)
            continue;
        ns_dht_free(node->dht);
        ns__sim_ops_abandon(sim, node);
        free(node->record);
        free(node);
        sim->nodes[s] = NULL;
    }
    for (uint32_t i = 0; sim->topics != NULL && i < sim->sc.topic_records; i++)
        free(sim->topics[i].record);
    free(sim->topics);
    free(sim->live);
    free(sim->gone_us);
    free(sim->serial_state);
    free(sim->nodes);
    free(sim->samples);
    ns__sim_slab_free(&sim->ops);
    ns__sim_slab_free(&sim->packets);
    ns__sim_slab_free(&sim->timers);
    ns__verifier_free(&sim->verifier);
    ns__sim_heap_free(&sim->heap);
}

ns_sim_node *ns__sim_node_live(const ns_sim *sim, uint32_t serial)
{
    return serial < sim->serial_count ? sim->nodes[serial] : NULL;
}

void ns__sim_note_live_change(ns_sim *sim)
{
    if (sim->phase == NS_SIM_PHASE_MEASURE)
        sim->counts.window_node_us +=
            (double)sim->live_count * (double)(sim->now_us - sim->live_changed_us);
    sim->live_changed_us = sim->now_us;
}

/* ns_dht_stats is all uint64_t counters, so it is summed field by field as an array; a field of
 * another type would break the static assertion rather than be summed wrongly. */
static_assert(sizeof(ns_dht_stats) % sizeof(uint64_t) == 0, "ns_dht_stats is uint64_t fields");

void ns__sim_dht_stats_add(ns_sim *sim, const ns_dht *dht)
{
    ns_dht_stats st;
    ns_dht_get_stats(dht, &st);
    uint64_t add[sizeof st / sizeof(uint64_t)];
    uint64_t acc[sizeof st / sizeof(uint64_t)];
    memcpy(add, &st, sizeof st);
    memcpy(acc, &sim->dht_totals, sizeof acc);
    for (size_t i = 0; i < sizeof add / sizeof add[0]; i++)
        acc[i] += add[i];
    memcpy(&sim->dht_totals, acc, sizeof acc);
}

static int serials_reserve(ns_sim *sim)
{
    if (sim->serial_count < sim->serial_capacity)
        return NS_OK;
    if (sim->serial_capacity >= NS_SIM_SERIALS_MAX)
        return NS_ELIMIT;
    uint32_t cap = sim->serial_capacity * 2;
    if (cap > NS_SIM_SERIALS_MAX)
        cap = NS_SIM_SERIALS_MAX;
    ns_sim_node **nodes = realloc(sim->nodes, cap * sizeof *nodes);
    if (nodes != NULL)
        sim->nodes = nodes;
    uint8_t *state = realloc(sim->serial_state, cap * sizeof *state);
    if (state != NULL)
        sim->serial_state = state;
    uint64_t *gone = realloc(sim->gone_us, cap * sizeof *gone);
    if (gone != NULL)
        sim->gone_us = gone;
    if (nodes == NULL || state == NULL || gone == NULL)
        return NS_ENOMEM;
    for (uint32_t s = sim->serial_capacity; s < cap; s++) {
        sim->nodes[s] = NULL;
        sim->serial_state[s] = NS_SIM_SERIAL_UNUSED;
        sim->gone_us[s] = 0;
    }
    sim->serial_capacity = cap;
    return NS_OK;
}

/* ---- one node --------------------------------------------------------------------------- */

static void put_le64(uint8_t *p, uint64_t v)
{
    for (size_t i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The node's key: SHA256("netsim/key/v1" || seed || serial || attempt), a valid key in practice
 * at the first attempt (a SHA-256 output is not a valid secret with probability about 2^-128). */
static int node_key(ns_key *key, uint64_t seed, uint32_t serial)
{
    static const char domain[] = "netsim/key/v1";
    uint8_t in[sizeof domain - 1 + 8 + 8 + 1];
    memcpy(in, domain, sizeof domain - 1);
    put_le64(in + sizeof domain - 1, seed);
    put_le64(in + sizeof domain - 1 + 8, serial);
    for (uint8_t attempt = 0; attempt < KEY_TRIES_MAX; attempt++) {
        in[sizeof in - 1] = attempt;
        uint8_t seckey[NS_SECKEY_BYTES];
        ns_sha256(seckey, in, sizeof in);
        if (ns_key_from_seckey(key, seckey) == NS_OK)
            return NS_OK;
    }
    return NS_ECRYPTO;
}

static int node_record(ns_sim *sim, ns_sim_node *node)
{
    ns_node_info info = {.address_count = 1, .memory_mb = 0};
    memcpy(info.network_id, sim->network_id, sizeof info.network_id);
    uint8_t in[16];
    put_le64(in, sim->sc.seed);
    put_le64(in + 8, node->serial);
    ns_sha256(info.link_static, in, sizeof in); /* links are not simulated: any 32 bytes do */
    info.addresses[0] = node->addr;
    snprintf(info.version, sizeof info.version, "netsim-%s", NS_VERSION);
    return ns_node_record_make(&node->key, &info, ns__sim_now_ms(sim), NS_SIM_RECORD_TTL_MS, 1,
                               &node->record, &node->record_len);
}

static int node_new(ns_sim *sim, uint32_t serial, ns_sim_node **out)
{
    ns_sim_node *node = calloc(1, sizeof *node);
    if (node == NULL)
        return NS_ENOMEM;
    node->sim = sim;
    node->serial = serial;
    node->env = (ns_env){.now_ms = env_now,
                         .timer = env_timer,
                         .timer_cancel = env_timer_cancel,
                         .send = ns__sim_send,
                         .random = env_random,
                         .ctx = node};
    ns__sim_rng_seed(&node->rng, sim->sc.seed, 1000 + (uint64_t)serial);
    ns__sim_addr_of(serial, &node->addr);
    int rc = node_key(&node->key, sim->sc.seed, serial);
    if (rc == NS_OK)
        rc = node_record(sim, node);
    if (rc == NS_OK) {
        ns_dht_config config = {.key = &node->key,
                                .self_record = node->record,
                                .self_record_len = node->record_len,
                                .verify = ns__verifier_verify,
                                .verify_arg = &sim->verifier};
        memcpy(config.network_id, sim->network_id, sizeof config.network_id);
        sim->nodes[serial] = node; /* the core may set timers from ns_dht_new on */
        rc = ns_dht_new(&node->dht, &config, &node->env);
        sim->nodes[serial] = NULL;
    }
    if (rc != NS_OK) {
        free(node->record);
        free(node);
        return rc;
    }
    *out = node;
    return NS_OK;
}

int ns__sim_node_join(ns_sim *sim)
{
    if (sim->live_count >= sim->sc.nodes)
        return NS_ELIMIT;
    int rc = serials_reserve(sim);
    if (rc != NS_OK)
        return rc;
    uint32_t serial = sim->serial_count;
    ns_sim_node *node;
    rc = node_new(sim, serial, &node);
    if (rc != NS_OK)
        return rc;
    sim->serial_count++;
    ns__sim_note_live_change(sim);
    sim->nodes[serial] = node;
    sim->serial_state[serial] = NS_SIM_SERIAL_LIVE;
    node->live_index = sim->live_count;
    sim->live[sim->live_count++] = serial;
    sim->counts.joined++;
    ns_dht_start(node->dht);
    ns__sim_node_bootstrap(sim, serial);
    return NS_OK;
}

static bool seed_taken(const uint32_t *seeds, size_t n, uint32_t serial)
{
    for (size_t i = 0; i < n; i++) {
        if (seeds[i] == serial)
            return true;
    }
    return false;
}

/* Up to bootstrap_seeds distinct live nodes other than self, bootstrapped ones preferred. */
static size_t seeds_pick(ns_sim *sim, uint32_t self, uint32_t seeds[NS_SIM_SEEDS_MAX])
{
    size_t n = 0;
    size_t want = sim->sc.bootstrap_seeds;
    if (want > (size_t)sim->live_count - 1)
        want = (size_t)sim->live_count - 1;
    for (int pass = 0; pass < 2 && n < want; pass++) {
        for (size_t tries = 0; tries < SEED_PICK_TRIES * want && n < want; tries++) {
            uint32_t s = sim->live[ns__sim_rng_below(&sim->rng_work, sim->live_count)];
            const ns_sim_node *cand = sim->nodes[s];
            if (s == self || seed_taken(seeds, n, s) || (pass == 0 && !cand->ready))
                continue;
            seeds[n++] = s;
        }
    }
    return n;
}

void ns__sim_node_bootstrap(ns_sim *sim, uint32_t serial)
{
    ns_sim_node *node = ns__sim_node_live(sim, serial);
    if (node == NULL || node->ready)
        return; /* it left before its retry came */
    node->bootstrap_tries++;
    uint32_t seeds[NS_SIM_SEEDS_MAX];
    size_t n = seeds_pick(sim, serial, seeds);
    if (n == 0) {
        node->ready = true; /* the first node: nobody to ask, it is the network */
        return;
    }
    for (size_t i = 0; i < n; i++) {
        ns_addr addr;
        ns__sim_addr_of(seeds[i], &addr);
        if (ns_dht_ping(node->dht, &addr) != NS_OK)
            sim->counts.seed_pings_refused++; /* the bootstrap goes on with fewer seeds */
    }
    ns_sim_op *op = ns__sim_op_new(sim, node, NS_SIM_OP_BOOTSTRAP);
    if (op != NULL && ns_dht_bootstrap(node->dht, ns__sim_op_done, op) == NS_OK)
        return;
    if (op != NULL)
        ns__sim_op_free(sim, op);
    if (node->bootstrap_tries >= NS_SIM_BOOTSTRAP_TRIES) {
        sim->counts.bootstrap_failed++;
        return;
    }
    sim->counts.bootstrap_retries++;
    uint64_t at_us = sim->now_us + (uint64_t)NS_SIM_BOOTSTRAP_RETRY_MS * 1000;
    NS_ASSERT(ns__sim_schedule(sim, at_us, NS_SIM_EV_BOOTSTRAP, serial) == NS_OK);
}

void ns__sim_node_depart(ns_sim *sim, uint32_t serial, bool crash)
{
    ns_sim_node *node = ns__sim_node_live(sim, serial);
    NS_ASSERT(node != NULL);
    NS_ASSERT(sim->live[node->live_index] == serial);
    if (sim->phase <= NS_SIM_PHASE_MEASURE)
        ns__sim_dht_stats_add(sim, node->dht);
    ns_dht_free(node->dht); /* cancels its timers through the env, so it is still registered */
    node->dht = NULL;
    sim->counts.timers_leaked += node->timers_pending;
    ns__sim_ops_abandon(sim, node);
    ns__sim_note_live_change(sim);
    uint32_t last = sim->live[--sim->live_count];
    sim->live[node->live_index] = last;
    sim->nodes[last]->live_index = node->live_index;
    sim->nodes[serial] = NULL;
    sim->serial_state[serial] = crash ? NS_SIM_SERIAL_CRASHED : NS_SIM_SERIAL_LEFT;
    sim->gone_us[serial] = sim->now_us;
    if (crash)
        sim->counts.crashed++;
    else
        sim->counts.left++;
    free(node->record);
    free(node);
    ns__sim_topic_author_gone(sim, serial);
}
