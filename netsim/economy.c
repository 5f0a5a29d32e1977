/*
 * economy.c: `netsim --economy FILE`: the NEURO ledger and Proofs of Neural Work in a simulated
 * swarm, with real ledgers, real signatures and the real rules (src/ponw, src/ledger).
 *
 * Every node has a key, an in-memory ledger and a validator. Each makes a training proof every
 * proof interval (its work simulated as a chain of steps and weight hashes), claims it when its
 * window has passed, and floods what is new (proofs and entries) to a few fixed neighbours over
 * links with latency; every sync interval it compares account heads with a random neighbour and
 * takes what it lacks (anti-entropy), which is how a partition heals. Cheaters claim ten times the
 * batches they trained; verifiers compare each proof with its author's previous one and file a
 * challenge when they contradict (once they have the bond staked). For a while the swarm is cut in
 * two halves. At the end, after a drain without new proofs, the run passes when every ledger has
 * one state hash, every cheater was judged fraudulent and no honest node was. Deterministic: the
 * seed decides keys, neighbours, latencies and offsets, and the clock is virtual.
 */
#include <ini.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "netsim.h"
#include "neuroshard/ledger.h"
#include "neuroshard/ponw.h"

#define ECON_FANOUT_MAX  16
#define ECON_PENDING_MAX 512
#define ECON_EXIT_ASSERT 3

enum { EV_PROOF = 100, EV_DELIVER = 101, EV_SYNC = 102 };
enum { ROLE_HONEST = 0, ROLE_CHEATER = 1, ROLE_VERIFIER = 2 };
enum { MSG_PROOF = 0, MSG_ENTRY = 1 };

typedef struct econ_cfg {
    uint32_t nodes;
    uint64_t seed;
    double duration_s, drain_s, proof_interval_s, window_s, sync_interval_s;
    double cheaters, verifiers, latency_ms, partition_start_s, partition_end_s;
    double bond;
    uint32_t fanout;
} econ_cfg;

typedef struct econ_msg {
    uint32_t kind, from, to;
    uint8_t *buf;
    size_t len;
} econ_msg;

typedef struct pending {
    uint8_t *buf;
    size_t len;
} pending;

typedef struct econ_node {
    ns_key key;
    ns_ledger *ledger;
    ns_ponw_validator *validator;
    int role;
    uint64_t step;
    uint8_t model[NS_SHA256_BYTES];
    uint64_t last_end_ms;
    uint32_t nb[ECON_FANOUT_MAX];
    pending pending[ECON_PENDING_MAX];
    size_t pending_count;
    bool staked;
} econ_node;

typedef struct econ {
    econ_cfg cfg;
    econ_node *nodes;
    ns_sim_heap heap;
    ns_sim_rng rng;
    econ_msg *msgs;
    uint32_t msg_count, msg_cap;
    uint32_t *free_slots; /* delivered messages' slots, reused */
    uint32_t free_count;
    uint64_t now_us;
    uint64_t proofs, claims, challenges, stakes, delivered, dropped, applied;
} econ;

static uint64_t now_ms(const econ *e)
{
    return NS_SIM_EPOCH_MS + e->now_us / 1000;
}

/* ---- the scenario --------------------------------------------------------------------------- */

static int ini_line(void *user, const char *section, const char *name, const char *value)
{
    econ_cfg *c = user;
    if (strcmp(section, "economy") != 0)
        return 0;
    char *end = NULL;
    double v = strtod(value, &end);
    if (end == value || *end != '\0' || v < 0)
        return 0;
    if (strcmp(name, "nodes") == 0 && v >= 4 && v <= 2000)
        c->nodes = (uint32_t)v;
    else if (strcmp(name, "seed") == 0)
        c->seed = (uint64_t)v;
    else if (strcmp(name, "duration_s") == 0)
        c->duration_s = v;
    else if (strcmp(name, "drain_s") == 0)
        c->drain_s = v;
    else if (strcmp(name, "proof_interval_s") == 0 && v >= 1 && v <= 600)
        c->proof_interval_s = v;
    else if (strcmp(name, "window_s") == 0 && v >= 1)
        c->window_s = v;
    else if (strcmp(name, "sync_interval_s") == 0 && v >= 1)
        c->sync_interval_s = v;
    else if (strcmp(name, "cheaters") == 0 && v <= 0.5)
        c->cheaters = v;
    else if (strcmp(name, "verifiers") == 0 && v <= 0.5)
        c->verifiers = v;
    else if (strcmp(name, "latency_ms") == 0)
        c->latency_ms = v;
    else if (strcmp(name, "partition_start_s") == 0)
        c->partition_start_s = v;
    else if (strcmp(name, "partition_end_s") == 0)
        c->partition_end_s = v;
    else if (strcmp(name, "bond") == 0 && v > 0)
        c->bond = v;
    else if (strcmp(name, "fanout") == 0 && v >= 1 && v <= ECON_FANOUT_MAX)
        c->fanout = (uint32_t)v;
    else
        return 0;
    return 1;
}

/* ---- messages ------------------------------------------------------------------------------- */

static bool partitioned(const econ *e, uint32_t a, uint32_t b)
{
    double t = (double)e->now_us / 1e6;
    if (t < e->cfg.partition_start_s || t >= e->cfg.partition_end_s)
        return false;
    uint32_t half = e->cfg.nodes / 2;
    return (a < half) != (b < half);
}

static void send_msg(econ *e, uint32_t kind, uint32_t from, uint32_t to, const uint8_t *buf,
                     size_t len)
{
    if (partitioned(e, from, to)) {
        e->dropped++;
        return;
    }
    uint32_t at;
    if (e->free_count > 0) {
        at = e->free_slots[--e->free_count];
    } else {
        if (e->msg_count == e->msg_cap) {
            uint32_t cap = e->msg_cap ? e->msg_cap * 2 : 4096;
            econ_msg *grown = realloc(e->msgs, sizeof *grown * cap);
            uint32_t *slots = realloc(e->free_slots, sizeof *slots * cap);
            NS_ASSERT(grown != NULL && slots != NULL);
            e->msgs = grown;
            e->free_slots = slots;
            e->msg_cap = cap;
        }
        at = e->msg_count++;
    }
    econ_msg *m = &e->msgs[at];
    m->kind = kind;
    m->from = from;
    m->to = to;
    m->buf = malloc(len);
    NS_ASSERT(m->buf != NULL);
    memcpy(m->buf, buf, len);
    m->len = len;
    double lat = e->cfg.latency_ms * (0.5 + ns__sim_rng_unit(&e->rng));
    NS_ASSERT(ns__sim_heap_push(&e->heap, e->now_us + (uint64_t)(lat * 1000),
                                (ns_sim_event_kind)EV_DELIVER, at) == NS_OK);
}

static void flood(econ *e, uint32_t kind, uint32_t from, uint32_t except, const uint8_t *buf,
                  size_t len)
{
    econ_node *n = &e->nodes[from];
    for (uint32_t i = 0; i < e->cfg.fanout; i++)
        if (n->nb[i] != except)
            send_msg(e, kind, from, n->nb[i], buf, len);
}

/* ---- entries -------------------------------------------------------------------------------- */

static void after_apply(econ *e, uint32_t who, const uint8_t *buf, size_t len);

static void retry_pending(econ *e, uint32_t who)
{
    econ_node *n = &e->nodes[who];
    bool progress = true;
    while (progress) {
        progress = false;
        for (size_t i = 0; i < n->pending_count;) {
            pending p = n->pending[i];
            int rc = ns_ledger_apply(n->ledger, p.buf, p.len, now_ms(e), NULL);
            if (rc == NS_ENOENT || rc == NS_EWAIT) {
                i++;
                continue;
            }
            n->pending[i] = n->pending[--n->pending_count];
            if (rc == NS_OK) {
                progress = true;
                e->applied++;
                flood(e, MSG_ENTRY, who, UINT32_MAX, p.buf, p.len);
                after_apply(e, who, p.buf, p.len);
            }
            free(p.buf);
        }
    }
}

static void take_entry(econ *e, uint32_t who, uint32_t from, const uint8_t *buf, size_t len)
{
    econ_node *n = &e->nodes[who];
    int rc = ns_ledger_apply(n->ledger, buf, len, now_ms(e), NULL);
    if (rc == NS_OK || rc == NS_EFORK) {
        e->applied += rc == NS_OK;
        flood(e, MSG_ENTRY, who, from, buf, len);
        if (rc == NS_OK) {
            after_apply(e, who, buf, len);
            retry_pending(e, who);
        }
    } else if ((rc == NS_ENOENT || rc == NS_EWAIT) && n->pending_count < ECON_PENDING_MAX) {
        for (size_t i = 0; i < n->pending_count; i++)
            if (n->pending[i].len == len && memcmp(n->pending[i].buf, buf, len) == 0)
                return;
        uint8_t *copy = malloc(len);
        NS_ASSERT(copy != NULL);
        memcpy(copy, buf, len);
        n->pending[n->pending_count++] = (pending){copy, len};
    }
}

/* Appends an entry of the node's own account and floods it. */
static int append(econ *e, uint32_t who, ns_entry *en)
{
    econ_node *n = &e->nodes[who];
    uint8_t *buf;
    size_t len;
    char why[NS_LEDGER_WHY_SIZE];
    int rc = ns_ledger_append(n->ledger, &n->key, en, now_ms(e), &buf, &len, why);
    if (rc != NS_OK)
        return rc;
    e->applied++;
    flood(e, MSG_ENTRY, who, UINT32_MAX, buf, len);
    after_apply(e, who, buf, len);
    free(buf);
    return NS_OK;
}

typedef struct recv_ctx {
    econ *e;
    uint32_t who;
} recv_ctx;

static bool receive_one(void *arg, int64_t id, const uint8_t *hash, size_t amount)
{
    (void)id;
    recv_ctx *c = arg;
    ns_entry en = {.kind = NS_ENTRY_RECEIVE, .amount = {(int64_t)amount}};
    memcpy(en.reference, hash, NS_SHA256_BYTES);
    (void)append(c->e, c->who, &en);
    return true;
}

static void after_apply(econ *e, uint32_t who, const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    econ_node *n = &e->nodes[who];
    /* a verifier stakes its bond as soon as it has it */
    if (n->role == ROLE_VERIFIER && !n->staked) {
        ns_account a;
        int64_t bond = (int64_t)(e->cfg.bond * 1e9);
        if (ns_ledger_account(n->ledger, n->key.node_id, &a) == NS_OK && a.balance.nano >= bond) {
            n->staked = true;
            ns_entry st = {.kind = NS_ENTRY_STAKE, .amount = {bond}};
            if (append(e, who, &st) == NS_OK)
                e->stakes++;
        }
    }
    recv_ctx c = {e, who};
    NS_ASSERT(ns_ledger_sends_pending(n->ledger, n->key.node_id, receive_one, &c) == NS_OK);
}

/* ---- proofs --------------------------------------------------------------------------------- */

static void check_continuity(econ *e, uint32_t who, const ns_proof *p, const uint8_t *buf,
                             size_t len)
{
    econ_node *n = &e->nodes[who];
    uint8_t *prev = NULL;
    size_t prev_len = 0;
    if (ns_ledger_previous_training_proof(n->ledger, p->author, p->timestamp_ms, &prev,
                                          &prev_len) != NS_OK)
        return;
    ns_proof a;
    if (ns_proof_open(prev, prev_len, now_ms(e), &a) == NS_OK &&
        ns_ponw_contradiction(&a, p) != NULL) {
        ns_entry ch = {.kind = NS_ENTRY_CHALLENGE,
                       .amount = {(int64_t)(e->cfg.bond * 1e9)},
                       .proof = prev,
                       .proof_len = prev_len,
                       .evidence = buf,
                       .evidence_len = len};
        if (append(e, who, &ch) == NS_OK)
            e->challenges++;
    }
    free(prev);
}

/* Each author is watched by one verifier (its id's hash modulo the verifiers), so that two
 * verifiers never challenge one proof at once: which of two concurrent challenges is applied
 * first would otherwise decide who is paid (docs/ledger.md). */
static bool covers(const econ *e, uint32_t verifier, const uint8_t author[NS_NODE_ID_BYTES])
{
    uint32_t count = 0, mine = 0;
    for (uint32_t i = 0; i < e->cfg.nodes; i++) {
        if (e->nodes[i].role != ROLE_VERIFIER)
            continue;
        if (i == verifier)
            mine = count;
        count++;
    }
    uint32_t h;
    memcpy(&h, author, sizeof h);
    return count > 0 && h % count == mine;
}

static void take_proof(econ *e, uint32_t who, uint32_t from, const uint8_t *buf, size_t len)
{
    econ_node *n = &e->nodes[who];
    ns_proof p;
    if (ns_ponw_validate(n->validator, buf, len, now_ms(e), &p) != NS_PONW_ACCEPTED)
        return;
    NS_ASSERT(ns_ledger_proof_put(n->ledger, &p, buf, len, now_ms(e)) == NS_OK);
    flood(e, MSG_PROOF, who, from, buf, len);
    if (n->role == ROLE_VERIFIER && n->staked && covers(e, who, p.author))
        check_continuity(e, who, &p, buf, len);
}

typedef struct claim_ctx {
    econ *e;
    uint32_t who;
} claim_ctx;

static bool claim_one(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    (void)id;
    claim_ctx *c = arg;
    econ_node *n = &c->e->nodes[c->who];
    ns_proof p;
    ns_account a;
    ns_entry en = {.kind = NS_ENTRY_CLAIM, .proof = buf, .proof_len = len};
    if (ns_proof_open(buf, len, now_ms(c->e), &p) == NS_OK &&
        ns_ledger_account(n->ledger, n->key.node_id, &a) == NS_OK &&
        ns_ponw_reward(&p, a.stake, &en.amount) == NS_OK && append(c->e, c->who, &en) == NS_OK)
        c->e->claims++;
    NS_ASSERT(ns_ledger_proof_set_status(n->ledger, p.id, "claimed") == NS_OK);
    return true;
}

/* The node's training proof for its last period: honest nodes claim the steps they made;
 * cheaters ten times as many. */
static void make_proof(econ *e, uint32_t who)
{
    econ_node *n = &e->nodes[who];
    uint64_t now = now_ms(e);
    const uint64_t batches = 50;
    ns_proof p = {.type = NS_PROOF_TRAINING,
                  .sequence = now,
                  .timestamp_ms = now,
                  .period_start_ms = n->last_end_ms,
                  .uptime_s = (now - n->last_end_ms) / 1000,
                  .tokens = batches * 1024,
                  .batches = n->role == ROLE_CHEATER ? 10 * batches : batches,
                  .layers = 8,
                  .has_embed = true,
                  .has_head = true,
                  .tier = 3,
                  .has_training = true};
    ns__sim_rng_fill(&e->rng, &p.nonce, sizeof p.nonce);
    ns_training_commit *c = &p.training;
    c->batch_first = n->step;
    c->batch_count = (uint32_t)p.batches;
    c->layer_last = 8;
    c->micro_batches = 1;
    c->exec_mode = 1;
    memcpy(c->model_hash_before, n->model, NS_SHA256_BYTES);
    uint8_t next[NS_SHA256_BYTES + 8];
    memcpy(next, n->model, NS_SHA256_BYTES);
    n->step += batches; /* what it really did */
    memcpy(next + NS_SHA256_BYTES, &n->step, 8);
    ns_sha256(n->model, next, sizeof next);
    memcpy(c->model_hash_after, n->model, NS_SHA256_BYTES);
    n->last_end_ms = now;
    uint8_t *buf;
    size_t len;
    NS_ASSERT(ns_proof_sign(&n->key, &p, &buf, &len) == NS_OK);
    ns_proof checked;
    if (ns_ponw_validate(n->validator, buf, len, now, &checked) == NS_PONW_ACCEPTED) {
        NS_ASSERT(ns_ledger_proof_put(n->ledger, &checked, buf, len, now) == NS_OK);
        flood(e, MSG_PROOF, who, UINT32_MAX, buf, len);
        e->proofs++;
    }
    free(buf);
    claim_ctx cc = {e, who};
    NS_ASSERT(ns_ledger_proofs_due(n->ledger, n->key.node_id, now, 64, claim_one, &cc) == NS_OK);
}

/* ---- anti-entropy --------------------------------------------------------------------------- */

typedef struct sync_ctx {
    econ *e;
    uint32_t a, b;
} sync_ctx;

static bool send_entry(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    (void)id;
    sync_ctx *s = arg;
    send_msg(s->e, MSG_ENTRY, s->b, s->a, buf, len);
    return true;
}

static bool offer_head(void *arg, const uint8_t node_id[NS_NODE_ID_BYTES], uint64_t sequence)
{
    sync_ctx *s = arg;
    ns_account mine;
    NS_ASSERT(ns_ledger_account(s->e->nodes[s->a].ledger, node_id, &mine) == NS_OK);
    if (sequence > mine.sequence)
        NS_ASSERT(ns_ledger_account_from(s->e->nodes[s->b].ledger, node_id, mine.sequence + 1, 256,
                                         send_entry, s) == NS_OK);
    return true;
}

/* a asks a random neighbour b for whatever b has that a lacks */
static void sync_with_neighbour(econ *e, uint32_t a)
{
    uint32_t b = e->nodes[a].nb[ns__sim_rng_below(&e->rng, e->cfg.fanout)];
    if (partitioned(e, a, b))
        return;
    sync_ctx s = {e, a, b};
    NS_ASSERT(ns_ledger_heads(e->nodes[b].ledger, offer_head, &s) == NS_OK);
}

/* ---- the run -------------------------------------------------------------------------------- */

static int setup(econ *e)
{
    econ_cfg *c = &e->cfg;
    ns__sim_rng_seed(&e->rng, c->seed, 77);
    NS_ASSERT(ns__sim_heap_init(&e->heap, 1u << 26) == NS_OK);
    e->nodes = calloc(c->nodes, sizeof *e->nodes);
    if (e->nodes == NULL)
        return NS_ENOMEM;
    uint32_t cheaters = (uint32_t)(c->cheaters * c->nodes + 0.5);
    uint32_t verifiers = (uint32_t)(c->verifiers * c->nodes + 0.5);
    for (uint32_t i = 0; i < c->nodes; i++) {
        econ_node *n = &e->nodes[i];
        uint8_t sk[NS_SECKEY_BYTES];
        do {
            ns__sim_rng_fill(&e->rng, sk, sizeof sk);
        } while (ns_key_from_seckey(&n->key, sk) != NS_OK);
        NS_ASSERT(ns_ledger_open_memory(&n->ledger) == NS_OK);
        NS_ASSERT(ns_ledger_set_window(n->ledger, (uint64_t)(c->window_s * 1000)) == NS_OK);
        NS_ASSERT(ns_ledger_set_bond(n->ledger, (ns_neuro){(int64_t)(c->bond * 1e9)}) == NS_OK);
        NS_ASSERT(ns_ponw_validator_new(&n->validator, c->nodes + 16) == NS_OK);
        /* spread the roles over both halves: every third cheater and verifier in each */
        n->role = i % 10 == 3 && i / 10 < cheaters    ? ROLE_CHEATER
                  : i % 10 == 7 && i / 10 < verifiers ? ROLE_VERIFIER
                                                      : ROLE_HONEST;
        ns_sha256(n->model, &i, sizeof i);
        for (uint32_t k = 0; k < c->fanout; k++) {
            uint32_t nb;
            do {
                nb = (uint32_t)ns__sim_rng_below(&e->rng, c->nodes);
            } while (nb == i);
            n->nb[k] = nb;
        }
        uint64_t offset = (uint64_t)(ns__sim_rng_unit(&e->rng) * c->proof_interval_s * 1e6);
        n->last_end_ms = NS_SIM_EPOCH_MS;
        NS_ASSERT(ns__sim_heap_push(&e->heap, offset + (uint64_t)(c->proof_interval_s * 1e6),
                                    (ns_sim_event_kind)EV_PROOF, i) == NS_OK);
        NS_ASSERT(ns__sim_heap_push(&e->heap, offset + (uint64_t)(c->sync_interval_s * 1e6),
                                    (ns_sim_event_kind)EV_SYNC, i) == NS_OK);
    }
    return NS_OK;
}

static void run(econ *e)
{
    uint64_t end_us = (uint64_t)(e->cfg.duration_s * 1e6);
    uint64_t stop_us = end_us + (uint64_t)(e->cfg.drain_s * 1e6);
    ns_sim_event ev;
    while (ns__sim_heap_pop(&e->heap, &ev) && ev.at_us <= stop_us) {
        e->now_us = ev.at_us;
        if (ev.kind == EV_PROOF) {
            if (e->now_us <= end_us) {
                make_proof(e, ev.index);
                NS_ASSERT(ns__sim_heap_push(&e->heap,
                                            e->now_us + (uint64_t)(e->cfg.proof_interval_s * 1e6),
                                            (ns_sim_event_kind)EV_PROOF, ev.index) == NS_OK);
            } else {
                /* after the end: nothing new is proved, what is due is still claimed */
                econ_node *n = &e->nodes[ev.index];
                claim_ctx cc = {e, ev.index};
                NS_ASSERT(ns_ledger_proofs_due(n->ledger, n->key.node_id, now_ms(e), 64, claim_one,
                                               &cc) == NS_OK);
                NS_ASSERT(ns__sim_heap_push(&e->heap,
                                            e->now_us + (uint64_t)(e->cfg.proof_interval_s * 1e6),
                                            (ns_sim_event_kind)EV_PROOF, ev.index) == NS_OK);
            }
        } else if (ev.kind == EV_SYNC) {
            sync_with_neighbour(e, ev.index);
            NS_ASSERT(ns__sim_heap_push(&e->heap,
                                        e->now_us + (uint64_t)(e->cfg.sync_interval_s * 1e6),
                                        (ns_sim_event_kind)EV_SYNC, ev.index) == NS_OK);
        } else if (ev.kind == EV_DELIVER) {
            econ_msg m = e->msgs[ev.index];
            e->msgs[ev.index].buf = NULL;
            e->free_slots[e->free_count++] = ev.index;
            e->delivered++;
            if (m.kind == MSG_ENTRY)
                take_entry(e, m.to, m.from, m.buf, m.len);
            else
                take_proof(e, m.to, m.from, m.buf, m.len);
            free(m.buf);
        }
    }
}

typedef struct judged_ctx {
    econ *e;
    uint32_t cheaters_caught;
    bool *caught;
    uint32_t honest_slashed, false_challenges;
} judged_ctx;

static bool note_judgement(void *arg, const ns_ledger_judgement *j)
{
    judged_ctx *c = arg;
    for (uint32_t i = 0; i < c->e->cfg.nodes; i++) {
        if (memcmp(c->e->nodes[i].key.node_id, j->prover, NS_NODE_ID_BYTES) != 0)
            continue;
        if (c->e->nodes[i].role == ROLE_CHEATER && j->fraud && !c->caught[i]) {
            c->caught[i] = true;
            c->cheaters_caught++;
        }
        if (c->e->nodes[i].role != ROLE_CHEATER && j->fraud)
            c->honest_slashed++;
    }
    c->false_challenges += !j->fraud;
    return true;
}

static int report(econ *e, double wall_s)
{
    uint32_t n = e->cfg.nodes, cheaters = 0, distinct = 0;
    uint8_t(*hashes)[NS_SHA256_BYTES] = calloc(n, NS_SHA256_BYTES);
    NS_ASSERT(hashes != NULL);
    for (uint32_t i = 0; i < n; i++) {
        NS_ASSERT(ns_ledger_state_hash(e->nodes[i].ledger, hashes[i]) == NS_OK);
        cheaters += e->nodes[i].role == ROLE_CHEATER;
        bool seen = false;
        for (uint32_t k = 0; k < i && !seen; k++)
            seen = memcmp(hashes[k], hashes[i], NS_SHA256_BYTES) == 0;
        distinct += !seen;
    }
    judged_ctx jc = {.e = e, .caught = calloc(n, sizeof(bool))};
    NS_ASSERT(jc.caught != NULL);
    NS_ASSERT(ns_ledger_judgements(e->nodes[0].ledger, note_judgement, &jc) == NS_OK);
    ns_ledger_report rep;
    NS_ASSERT(ns_ledger_check(e->nodes[0].ledger, &rep) == NS_OK);
    uint64_t height;
    ns_neuro minted, burned;
    NS_ASSERT(ns_ledger_height(e->nodes[0].ledger, &height) == NS_OK);
    NS_ASSERT(ns_ledger_totals(e->nodes[0].ledger, &minted, &burned) == NS_OK);
    char m[NS_NEURO_FORMAT_SIZE], b[NS_NEURO_FORMAT_SIZE];
    ns_neuro_format(m, sizeof m, minted);
    ns_neuro_format(b, sizeof b, burned);
    bool ok = distinct == 1 && jc.cheaters_caught == cheaters && jc.honest_slashed == 0 &&
              jc.false_challenges == 0 && rep.ok;
    printf("economy: %u nodes (%u cheaters, %.0f %% verifiers), %.0f s simulated + %.0f s drain, "
           "partition %.0f..%.0f s\n",
           n, cheaters, e->cfg.verifiers * 100, e->cfg.duration_s, e->cfg.drain_s,
           e->cfg.partition_start_s, e->cfg.partition_end_s);
    printf("  proofs %llu, claims %llu, stakes %llu, challenges %llu, messages %llu delivered "
           "%llu dropped by the partition\n",
           (unsigned long long)e->proofs, (unsigned long long)e->claims,
           (unsigned long long)e->stakes, (unsigned long long)e->challenges,
           (unsigned long long)e->delivered, (unsigned long long)e->dropped);
    printf("  ledger height %llu, minted %s, burned %s NEURO; ledger check %s\n",
           (unsigned long long)height, m, b, rep.ok ? "ok" : rep.problem);
    printf("  distinct state hashes %u (1: every ledger agrees)\n", distinct);
    printf("  cheaters caught %u of %u; honest nodes slashed %u; false challenges %u\n",
           jc.cheaters_caught, cheaters, jc.honest_slashed, jc.false_challenges);
    printf("wall %.1f s\n", wall_s);
    printf("economy: %s\n", ok ? "PASS" : "FAIL");
    free(hashes);
    free(jc.caught);
    return ok ? 0 : ECON_EXIT_ASSERT;
}

int ns__sim_economy_main(const char *path)
{
    econ *e = calloc(1, sizeof *e);
    if (e == NULL)
        return 1;
    e->cfg = (econ_cfg){.nodes = 200,
                        .seed = 1,
                        .duration_s = 3600,
                        .drain_s = 1800,
                        .proof_interval_s = 300,
                        .window_s = 600,
                        .sync_interval_s = 60,
                        .cheaters = 0.1,
                        .verifiers = 0.1,
                        .latency_ms = 50,
                        .partition_start_s = 1200,
                        .partition_end_s = 2400,
                        .bond = 1,
                        .fanout = 6};
    int rc = ini_parse(path, ini_line, &e->cfg);
    if (rc != 0) {
        fprintf(stderr,
                "netsim: %s:%d: not an economy scenario line (or the file cannot be read)\n", path,
                rc);
        free(e);
        return 2;
    }
    ns_log_set_level(NS_LOG_ERROR);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    NS_ASSERT(setup(e) == NS_OK);
    run(e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rc = report(e, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    for (uint32_t i = 0; i < e->cfg.nodes; i++) {
        for (size_t k = 0; k < e->nodes[i].pending_count; k++)
            free(e->nodes[i].pending[k].buf);
        ns_ledger_close(e->nodes[i].ledger);
        ns_ponw_validator_free(e->nodes[i].validator);
    }
    for (uint32_t i = 0; i < e->msg_count; i++)
        free(e->msgs[i].buf);
    free(e->msgs);
    free(e->free_slots);
    free(e->nodes);
    ns__sim_heap_free(&e->heap);
    free(e);
    return rc;
}
