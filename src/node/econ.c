/*
 * econ.c: the node's part in Proof of Neural Work and the NEURO ledger, on the loop thread.
 *
 * Every NS_PONW_INTERVAL_MS the node signs a proof of what it did since its last one (uptime,
 * and the trainer's closed work period when it trained), passes it through its own validator,
 * keeps it and sends it to its peers. When a proof's challenge window has closed, the node
 * appends a claim of its reward to its account chain. Entries and proofs spread by gossip over
 * the peer links (net.c): a new one is applied or validated and passed on to the other peers; one
 * that depends on entries not here yet waits in a bounded pool while the node asks the sender
 * for the account's missing entries; when a link comes up both sides exchange their accounts'
 * newest sequences and ask for what they lack, so a node that was offline catches up. Sends to
 * this node are taken in (a receive entry) as soon as they are applied.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "neuroshard/dht.h"
#include "neuroshard/ponw.h"
#include "neuroshard/swarm.h"
#include "node_internal.h"

#define ECON_CLAIM_MS         15000 /* how often to look for proofs to claim */
#define ECON_PENDING_MAX      4096  /* entries waiting for what they depend on */
#define ECON_WANT_LIMIT       256   /* entries sent for one WANT */
#define ECON_HEADS_PER_FRAME  1024
#define ECON_VALIDATOR_NODES  100000
#define ECON_STAGE_PROOFS_MAX 64 /* pipeline stages' proofs kept for the cross-check */
#define ECON_ACCUSE_MAX       16 /* cohort frauds waiting for the accused's proof */
#define ECON_ACCUSE_MS        (10 * 60 * 1000) /* how long one waits for it */
#define ECON_ACCUSED_MAX      64
#define ECON_ACCUSE_AGAIN_MS  (10 * 60 * 1000) /* one challenge of an accused in this long */
#define ECON_ACCUSE_RETRY_MS  30000            /* after a challenge that could not be made */

typedef struct pending_entry {
    uint8_t *buf;
    size_t len;
} pending_entry;

/* A cohort fraud this node screened, waiting for the proof it challenges. */
typedef struct accusation {
    bool on;
    uint8_t accused[NS_NODE_ID_BYTES];
    uint64_t round, until_ms;
    uint8_t bundle[NS_SHA256_BYTES];
} accusation;

struct ns_econ {
    ns_econ_config cfg;
    ns_evidence *evidence;
    accusation accusations[ECON_ACCUSE_MAX];
    struct {
        uint8_t id[NS_NODE_ID_BYTES];
        uint64_t quiet_until_ms; /* no new accusation of it before */
    } accused[ECON_ACCUSED_MAX];
    size_t accused_next;
    uint64_t cohort_challenges;
    ns_ponw_validator *validator;
    ns_verifier *verifier;
    uint64_t proof_timer, claim_timer, verify_timer;
    uint64_t challenges_made, frauds_seen;
    uint64_t last_end_ms; /* the end of this node's newest proof */
    /* pipeline stages' recent training proofs, for the activation cross-check (a ring) */
    ns_proof *stage_proofs;
    size_t stage_next, stage_count;
    uint64_t cross_checked, cross_mismatched;
    uint32_t last_tier;
    pending_entry pending[ECON_PENDING_MAX];
    size_t pending_count;
    /* counters for /metrics and /api/ponw */
    uint64_t proofs_made, claims_made, claims_refused, entries_in, entries_applied, entries_refused,
        entries_waiting_dropped, forks_seen, receives_made;
};

/* Ledger and link calls whose failure only costs this round (the next one tries again). */
static void note(const char *what, int rc)
{
    if (rc == NS_ELIMIT) /* a peer's link is full: it catches up through heads and wants */
        NS_LOG_D("ledger", "%s failed: %s", what, ns_strerror(rc));
    else if (rc != NS_OK && rc != NS_ENOENT)
        NS_LOG_W("ledger", "%s failed: %s", what, ns_strerror(rc));
}

static uint64_t now_ms(const ns_econ *e)
{
    return ns_env_now(&e->cfg.uvenv->env);
}

static void send_frame(ns_econ *e, const uint8_t *peer, uint32_t type, const uint8_t *body,
                       size_t len)
{
    ns_frame f = {.type = type, .body = body, .body_len = len};
    if (peer != NULL)
        note("sending to a peer", ns_net_send_frame(e->cfg.net, peer, &f));
    else
        (void)ns_net_broadcast(e->cfg.net, &f, NULL);
}

static void broadcast_except(ns_econ *e, uint32_t type, const uint8_t *body, size_t len,
                             const uint8_t *except)
{
    ns_frame f = {.type = type, .body = body, .body_len = len};
    (void)ns_net_broadcast(e->cfg.net, &f, except);
}

static void put_u64be(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_u64be(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* ---- applying entries ----------------------------------------------------------------------- */

static void after_applied(ns_econ *e, const uint8_t *buf, size_t len);

static void want(ns_econ *e, const uint8_t *peer, const uint8_t account[NS_NODE_ID_BYTES])
{
    ns_account a;
    if (peer == NULL || ns_ledger_account(e->cfg.ledger, account, &a) != NS_OK)
        return;
    uint8_t body[NS_NODE_ID_BYTES + 8];
    memcpy(body, account, NS_NODE_ID_BYTES);
    put_u64be(body + NS_NODE_ID_BYTES, a.sequence + 1);
    send_frame(e, peer, NS_FRAME_LEDGER_WANT, body, sizeof body);
}

static void pending_add(ns_econ *e, const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < e->pending_count; i++)
        if (e->pending[i].len == len && memcmp(e->pending[i].buf, buf, len) == 0)
            return;                             /* waiting already */
    if (e->pending_count == ECON_PENDING_MAX) { /* drop the oldest: a peer will offer it again */
        free(e->pending[0].buf);
        memmove(e->pending, e->pending + 1, sizeof e->pending[0] * (ECON_PENDING_MAX - 1));
        e->pending_count--;
        e->entries_waiting_dropped++;
    }
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return;
    memcpy(copy, buf, len);
    e->pending[e->pending_count++] = (pending_entry){copy, len};
}

/* Applies one entry from a peer (from NULL: this node's own); passes on what is new. */
static int apply_entry(ns_econ *e, const uint8_t *buf, size_t len, const uint8_t *from)
{
    char why[NS_LEDGER_WHY_SIZE];
    int rc = ns_ledger_apply(e->cfg.ledger, buf, len, now_ms(e), why);
    switch (rc) {
    case NS_OK:
        e->entries_applied++;
        broadcast_except(e, NS_FRAME_LEDGER_ENTRY, buf, len, from);
        after_applied(e, buf, len);
        break;
    case NS_EFORK:
        e->forks_seen++;
        NS_LOG_W("ledger", "fork: %s", why);
        broadcast_except(e, NS_FRAME_LEDGER_ENTRY, buf, len, from);
        break;
    case NS_EEXIST:
        break;
    case NS_EWAIT: /* a challenge this node is still judging */
        pending_add(e, buf, len);
        break;
    case NS_ENOENT: {
        /* a gap in its account's chain: ask the sender for what is missing (a receive whose
         * send is missing waits: the send comes by its own account's gossip) */
        ns_entry en;
        ns_account a;
        pending_add(e, buf, len);
        if (ns_entry_open(buf, len, now_ms(e), &en) == NS_OK &&
            ns_ledger_account(e->cfg.ledger, en.account, &a) == NS_OK &&
            en.sequence > a.sequence + 1)
            want(e, from, en.account);
        break;
    }
    default:
        e->entries_refused++;
        NS_LOG_D("ledger", "entry refused: %s", why[0] != '\0' ? why : ns_strerror(rc));
        break;
    }
    return rc;
}

/* Retries the waiting entries until a pass applies none. */
static void retry_pending(ns_econ *e)
{
    bool progress = true;
    while (progress && e->pending_count > 0) {
        progress = false;
        for (size_t i = 0; i < e->pending_count;) {
            pending_entry p = e->pending[i];
            char why[NS_LEDGER_WHY_SIZE];
            int rc = ns_ledger_apply(e->cfg.ledger, p.buf, p.len, now_ms(e), why);
            if (rc == NS_ENOENT || rc == NS_EWAIT) {
                i++;
                continue;
            }
            memmove(e->pending + i, e->pending + i + 1,
                    sizeof e->pending[0] * (e->pending_count - i - 1));
            e->pending_count--;
            if (rc == NS_OK) {
                e->entries_applied++;
                progress = true;
                broadcast_except(e, NS_FRAME_LEDGER_ENTRY, p.buf, p.len, NULL);
                after_applied(e, p.buf, p.len);
            }
            free(p.buf);
        }
    }
}

/* Appends an entry of this node's account and sends it to every peer. */
static int append_own(ns_econ *e, ns_entry *en, char *why)
{
    uint8_t *buf;
    size_t len;
    int rc = ns_ledger_append(e->cfg.ledger, e->cfg.key, en, now_ms(e), &buf, &len, why);
    if (rc != NS_OK)
        return rc;
    e->entries_applied++;
    broadcast_except(e, NS_FRAME_LEDGER_ENTRY, buf, len, NULL);
    after_applied(e, buf, len);
    free(buf);
    return NS_OK;
}

typedef struct receive_ctx {
    ns_econ *e;
} receive_ctx;

static bool receive_one(void *arg, int64_t id, const uint8_t *hash, size_t amount)
{
    (void)id;
    ns_econ *e = ((receive_ctx *)arg)->e;
    ns_entry en = {.kind = NS_ENTRY_RECEIVE, .amount = {(int64_t)amount}};
    memcpy(en.reference, hash, NS_SHA256_BYTES);
    char why[NS_LEDGER_WHY_SIZE];
    if (append_own(e, &en, why) == NS_OK) {
        e->receives_made++;
        char text[NS_NEURO_FORMAT_SIZE];
        ns_neuro_format(text, sizeof text, en.amount);
        NS_LOG_I("wallet", "received %s NEURO", text);
    }
    return true;
}

/* Takes in every send to this node not taken in yet. */
static void receive_all(ns_econ *e)
{
    receive_ctx ctx = {e};
    note("finding sends to take in",
         ns_ledger_sends_pending(e->cfg.ledger, e->cfg.key->node_id, receive_one, &ctx));
}

static void after_applied(ns_econ *e, const uint8_t *buf, size_t len)
{
    ns_entry en;
    if (ns_entry_open(buf, len, now_ms(e), &en) != NS_OK)
        return;
    if (en.kind == NS_ENTRY_SEND &&
        memcmp(en.counterparty, e->cfg.key->node_id, NS_NODE_ID_BYTES) == 0)
        receive_all(e);
}

/* ---- gossip frames -------------------------------------------------------------------------- */

typedef struct send_ctx {
    ns_econ *e;
    const uint8_t *peer;
} send_ctx;

static bool send_entry_to(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    (void)id;
    send_ctx *c = arg;
    send_frame(c->e, c->peer, NS_FRAME_LEDGER_ENTRY, buf, len);
    return true;
}

typedef struct heads_ctx {
    ns_econ *e;
    const uint8_t *peer;
    uint8_t *body;
    size_t n;
} heads_ctx;

static void heads_flush(heads_ctx *c)
{
    if (c->n > 0)
        send_frame(c->e, c->peer, NS_FRAME_LEDGER_HEADS, c->body, c->n * 40);
    c->n = 0;
}

static bool heads_add(void *arg, const uint8_t node_id[NS_NODE_ID_BYTES], uint64_t sequence)
{
    heads_ctx *c = arg;
    memcpy(c->body + c->n * 40, node_id, NS_NODE_ID_BYTES);
    put_u64be(c->body + c->n * 40 + 32, sequence);
    if (++c->n == ECON_HEADS_PER_FRAME)
        heads_flush(c);
    return true;
}

static void on_link(void *arg, const uint8_t peer_id[NS_NODE_ID_BYTES])
{
    ns_econ *e = arg;
    heads_ctx c = {.e = e, .peer = peer_id, .body = malloc(ECON_HEADS_PER_FRAME * 40)};
    if (c.body == NULL)
        return;
    note("listing accounts", ns_ledger_heads(e->cfg.ledger, heads_add, &c));
    heads_flush(&c);
    free(c.body);
}

static void on_heads(ns_econ *e, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len % 40 != 0)
        return;
    for (size_t i = 0; i < f->body_len / 40; i++) {
        const uint8_t *id = f->body + i * 40;
        ns_account a;
        if (ns_ledger_account(e->cfg.ledger, id, &a) == NS_OK && get_u64be(id + 32) > a.sequence)
            want(e, peer, id);
    }
}

static void on_want(ns_econ *e, const uint8_t *peer, const ns_frame *f)
{
    if (f->body_len != NS_NODE_ID_BYTES + 8)
        return;
    send_ctx c = {e, peer};
    note("reading entries for a peer",
         ns_ledger_account_from(e->cfg.ledger, f->body, get_u64be(f->body + NS_NODE_ID_BYTES),
                                ECON_WANT_LIMIT, send_entry_to, &c));
}

static int append_own(ns_econ *e, ns_entry *en, char *why);

/* A verifier compares a peer's training proof with the author's previous one: a contradiction
 * (steps or weights that do not follow on) is fraud that needs no recompute, and becomes a
 * challenge carrying both signed proofs. */
static void check_continuity(ns_econ *e, const ns_proof *p, const uint8_t *buf, size_t len)
{
    uint8_t *prev = NULL;
    size_t prev_len = 0;
    if (ns_ledger_previous_training_proof(e->cfg.ledger, p->author, p->timestamp_ms, &prev,
                                          &prev_len) != NS_OK)
        return;
    ns_proof a;
    const char *why_fraud = NULL;
    if (ns_proof_open(prev, prev_len, now_ms(e), &a) == NS_OK)
        why_fraud = ns_ponw_contradiction(&a, p);
    if (why_fraud != NULL) {
        char author[17];
        ns_hex_encode(author, sizeof author, p->author, 8);
        NS_LOG_I("verify", "fraud by %s…: %s", author, why_fraud);
        e->frauds_seen++;
        ns_entry en = {.kind = NS_ENTRY_CHALLENGE,
                       .amount = e->cfg.bond,
                       .proof = prev,
                       .proof_len = prev_len,
                       .evidence = buf,
                       .evidence_len = len};
        char why[NS_LEDGER_WHY_SIZE];
        if (append_own(e, &en, why) == NS_OK) {
            e->challenges_made++;
            NS_LOG_I("verify", "challenged the proof: the prover is slashed");
        } else {
            NS_LOG_W("verify", "fraud found but not challenged: %s", why);
        }
    }
    free(prev);
}

/* Compares a pipeline stage's training proof with the recent ones of its quorum's other stages:
 * where one's output hashes and its neighbour's input hashes cover the same steps they must be
 * equal; a difference means one of the two lied about its activations. Then keeps the proof. */
static void cross_check(ns_econ *e, const ns_proof *p)
{
    if (p->type != NS_PROOF_TRAINING || !p->training.in_pipeline)
        return;
    if (e->stage_proofs == NULL &&
        (e->stage_proofs = calloc(ECON_STAGE_PROOFS_MAX, sizeof *e->stage_proofs)) == NULL)
        return;
    for (size_t i = 0; i < e->stage_count; i++) {
        const ns_proof *q = &e->stage_proofs[i];
        if (memcmp(q->id, p->id, NS_SHA256_BYTES) == 0)
            return; /* seen already */
        uint32_t m1, m2;
        uint32_t n = ns_ponw_cross_check(q, p, &m1) + ns_ponw_cross_check(p, q, &m2);
        e->cross_checked += n;
        e->cross_mismatched += m1 + m2;
        if (m1 + m2 > 0) {
            char a[17], b[17];
            ns_hex_encode(a, sizeof a, q->author, 8);
            ns_hex_encode(b, sizeof b, p->author, 8);
            NS_LOG_W("verify",
                     "cross-check: the stage proofs of %s… (layers %u..%u) and %s… (layers "
                     "%u..%u) disagree on %u of %u segments: one of them lied",
                     a, q->training.layer_first, q->training.layer_last, b, p->training.layer_first,
                     p->training.layer_last, m1 + m2, n);
        }
    }
    e->stage_proofs[e->stage_next] = *p;
    e->stage_next = (e->stage_next + 1) % ECON_STAGE_PROOFS_MAX;
    if (e->stage_count < ECON_STAGE_PROOFS_MAX)
        e->stage_count++;
}

/* An accused this node challenged lately (or could not) is not accused again for a while: one
 * slash a window deters, and every challenge costs each node a bundle to fetch and judge. */
static bool accused_lately(const ns_econ *e, const uint8_t id[NS_NODE_ID_BYTES])
{
    for (size_t i = 0; i < ECON_ACCUSED_MAX; i++)
        if (memcmp(e->accused[i].id, id, NS_NODE_ID_BYTES) == 0 &&
            now_ms(e) < e->accused[i].quiet_until_ms)
            return true;
    return false;
}

static void quiet(ns_econ *e, const uint8_t id[NS_NODE_ID_BYTES], uint64_t for_ms)
{
    size_t at = e->accused_next % ECON_ACCUSED_MAX;
    for (size_t i = 0; i < ECON_ACCUSED_MAX; i++)
        if (memcmp(e->accused[i].id, id, NS_NODE_ID_BYTES) == 0)
            at = i;
    if (at == e->accused_next % ECON_ACCUSED_MAX)
        e->accused_next++;
    memcpy(e->accused[at].id, id, NS_NODE_ID_BYTES);
    e->accused[at].quiet_until_ms = now_ms(e) + for_ms;
    for (size_t i = 0; i < ECON_ACCUSE_MAX; i++) /* its other rounds wait no more */
        if (memcmp(e->accusations[i].accused, id, NS_NODE_ID_BYTES) == 0)
            e->accusations[i].on = false;
}

/* Challenges a proof of an accused whose cohort part of the round after was fraud. */
static void challenge_cohort(ns_econ *e, accusation *a, const uint8_t *env, size_t len)
{
    uint8_t evidence[NS_LEDGER_COHORT_EVIDENCE_BYTES];
    ns_ledger_cohort_evidence(evidence, a->round, a->bundle);
    ns_entry en = {.kind = NS_ENTRY_CHALLENGE,
                   .amount = e->cfg.bond,
                   .proof = env,
                   .proof_len = len,
                   .evidence = evidence,
                   .evidence_len = sizeof evidence};
    char why[NS_LEDGER_WHY_SIZE], who[17];
    ns_hex_encode(who, sizeof who, a->accused, 8);
    a->on = false;
    if (append_own(e, &en, why) == NS_OK) {
        e->challenges_made++;
        e->cohort_challenges++;
        NS_LOG_I("sync", "challenged %s…'s proof of round %llu with the cohort's evidence", who,
                 (unsigned long long)a->round - 1);
        quiet(e, a->accused, ECON_ACCUSE_AGAIN_MS);
    } else {
        NS_LOG_W("sync", "cohort fraud by %s… not challenged: %s", who, why);
        quiet(e, a->accused, ECON_ACCUSE_RETRY_MS);
    }
}

/* A training proof that may be the one an accusation waits for. */
static void match_accusations(ns_econ *e, const ns_proof *p, const uint8_t *env, size_t len)
{
    for (size_t i = 0; i < ECON_ACCUSE_MAX; i++) {
        accusation *a = &e->accusations[i];
        if (a->on && now_ms(e) > a->until_ms)
            a->on = false;
        if (a->on && p->type == NS_PROOF_TRAINING && p->has_training &&
            p->training.outer_round + 1 == a->round &&
            memcmp(p->author, a->accused, NS_NODE_ID_BYTES) == 0)
            challenge_cohort(e, a, env, len);
    }
}

void ns_econ_accuse(ns_econ *e, const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round,
                    const uint8_t *bundle, size_t len)
{
    if (accused_lately(e, accused))
        return;
    accusation *a = &e->accusations[0]; /* a free one, else the one that waits least long */
    for (size_t i = 0; i < ECON_ACCUSE_MAX; i++) {
        accusation *x = &e->accusations[i];
        if (!x->on || now_ms(e) > x->until_ms) {
            a = x;
            break;
        }
        if (x->until_ms < a->until_ms)
            a = x;
    }
    *a = (accusation){.on = true, .round = round, .until_ms = now_ms(e) + ECON_ACCUSE_MS};
    memcpy(a->accused, accused, NS_NODE_ID_BYTES);
    int rc = ns_evidence_keep(e->evidence, bundle, len, a->bundle);
    if (rc != NS_OK) {
        a->on = false;
        NS_LOG_W("sync", "the fraud bundle was not kept: %s", ns_strerror(rc));
        return;
    }
    ns_evidence_prejudge(e->evidence, bundle, len, a->bundle, accused, round);
    /* the accused's proof of that period may be here already */
    uint8_t *env = NULL;
    size_t env_len = 0;
    ns_proof p;
    if (ns_ledger_previous_training_proof(e->cfg.ledger, accused, now_ms(e) + 3600000, &env,
                                          &env_len) == NS_OK &&
        ns_proof_open(env, env_len, now_ms(e), &p) == NS_OK)
        match_accusations(e, &p, env, env_len);
    free(env);
}

static void on_proof(ns_econ *e, const uint8_t *peer, const ns_frame *f)
{
    ns_proof p;
    ns_ponw_verdict v = ns_ponw_validate(e->validator, f->body, f->body_len, now_ms(e), &p);
    if (v != NS_PONW_ACCEPTED) {
        if (v != NS_PONW_DUPLICATE)
            NS_LOG_D("ponw", "proof refused: %s", ns_ponw_verdict_name(v));
        return;
    }
    if (ns_ledger_proof_put(e->cfg.ledger, &p, f->body, f->body_len, now_ms(e)) == NS_OK)
        broadcast_except(e, NS_FRAME_PROOF, f->body, f->body_len, peer);
    cross_check(e, &p);
    match_accusations(e, &p, f->body, f->body_len);
    if (e->cfg.verifier && p.type == NS_PROOF_TRAINING)
        check_continuity(e, &p, f->body, f->body_len);
    if (e->cfg.verifier && p.type == NS_PROOF_TRAINING) {
        int64_t ppm = e->cfg.verify_ppm >= 0
                          ? e->cfg.verify_ppm
                          : ns_ponw_challenge_ppm(ns_dht_contact_count(ns_net_dht(e->cfg.net)) + 1);
        if ((int64_t)randombytes_uniform(NS_PONW_PPM) < ppm)
            ns_verifier_check(e->verifier, &p, true);
    }
}

static void on_frame(void *arg, const uint8_t peer_id[NS_NODE_ID_BYTES], const ns_frame *f)
{
    ns_econ *e = arg;
    switch (f->type) {
    case NS_FRAME_LEDGER_ENTRY:
        e->entries_in++;
        if (apply_entry(e, f->body, f->body_len, peer_id) == NS_OK)
            retry_pending(e);
        return;
    case NS_FRAME_PROOF:
        on_proof(e, peer_id, f);
        return;
    case NS_FRAME_LEDGER_HEADS:
        on_heads(e, peer_id, f);
        return;
    case NS_FRAME_LEDGER_WANT:
        on_want(e, peer_id, f);
        return;
    case NS_FRAME_VERIFY_GET:
    case NS_FRAME_VERIFY_PART:
        ns_verifier_on_frame(e->verifier, peer_id, f);
        return;
    case NS_FRAME_EVIDENCE_GET:
    case NS_FRAME_EVIDENCE_PART:
        ns_evidence_on_frame(e->evidence, peer_id, f);
        return;
    default:
        return;
    }
}

/* ---- this node's proofs and claims ---------------------------------------------------------- */

/* NEUROSHARD_TEST_CHEAT, a comma-separated list: what a lying node does, so that tests can show
 * it is caught. "batches": claims ten times the batches it trained; "delta": claims weights it
 * never computed; "silent": never serves its checkpoints to verifiers; "activations": a
 * pipeline stage claims activations it never computed or received. */
static bool cheats(const char *list, const char *how)
{
    size_t n = strlen(how);
    for (const char *c = list; c != NULL && *c != '\0'; c += strcspn(c, ","), c += *c == ',') {
        if (strncmp(c, how, n) == 0 && (c[n] == ',' || c[n] == '\0'))
            return true;
    }
    return false;
}

static void cheat(const ns_econ *e, ns_proof *p)
{
    bool lies = false;
    if (cheats(e->cfg.cheat, "batches")) {
        p->batches *= 10;
        p->training.batch_count *= 10;
        if (p->tokens < p->batches)
            p->tokens = p->batches;
        lies = true;
    }
    if (cheats(e->cfg.cheat, "delta")) {
        randombytes_buf(p->training.model_hash_after, NS_SHA256_BYTES);
        lies = true;
    }
    if (cheats(e->cfg.cheat, "activations")) {
        randombytes_buf(p->training.activation_in, sizeof p->training.activation_in);
        randombytes_buf(p->training.activation_out, sizeof p->training.activation_out);
        lies = true;
    }
    if (lies)
        NS_LOG_W("ponw", "NEUROSHARD_TEST_CHEAT=%s: this proof lies", e->cfg.cheat);
}

static void make_proof(ns_econ *e, uint64_t now)
{
    uint64_t start = e->last_end_ms;
    if (now <= start + 1000)
        return;
    if (now - start > NS_PONW_PERIOD_MS_MAX)
        start = now - NS_PONW_PERIOD_MS_MAX;
    ns_proof p = {.type = NS_PROOF_UPTIME,
                  .sequence = now,
                  .timestamp_ms = now,
                  .period_start_ms = start,
                  .uptime_s = (now - start) / 1000,
                  .tier = e->last_tier};
    randombytes_buf(&p.nonce, sizeof p.nonce);
    ns_train_work w;
    ns_trainer *t = e->cfg.trainer != NULL ? *e->cfg.trainer : NULL;
    ns_work_state ws = t != NULL ? ns_trainer_take_work(t, &w) : NS_WORK_NONE;
    if (ws == NS_WORK_OPEN)
        return; /* a training period is open: its proof comes when it closes */
    if (ws == NS_WORK_CLOSED && w.batches > 0 && w.exec_mode == NS_EXEC_REPRODUCIBLE) {
        p.type = NS_PROOF_TRAINING;
        p.tokens = w.tokens;
        p.batches = w.batches;
        p.layers = w.layers;
        p.has_embed = w.has_embed;
        p.has_head = w.has_head;
        p.in_quorum = w.in_quorum;
        p.tier = e->last_tier = (uint32_t)ns_tier_for_latency_us(w.layer_latency_us);
        p.has_training = true;
        ns_training_commit *c = &p.training;
        memcpy(c->model_hash_before, w.model_before, NS_SHA256_BYTES);
        memcpy(c->model_hash_after, w.model_after, NS_SHA256_BYTES);
        c->batch_first = w.ckpt_step; /* the checkpoint the steps start from */
        c->batch_count = (uint32_t)w.batches;
        c->data_epoch = w.data_epoch;
        c->loss_before = w.loss_first;
        c->loss_after = w.loss_last;
        if (w.in_pipeline) { /* a stage: one hash pair per aligned segment (ns_training_commit) */
            _Static_assert(NS_TRAIN_SEGMENTS_MAX == NS_PONW_MICRO_BATCHES_MAX, "segments");
            c->in_pipeline = true;
            memcpy(c->pipeline_id, w.pipeline_id, NS_SHA256_BYTES);
            c->segment_steps = w.segment_steps;
            c->micro_batches = w.segments;
            memcpy(c->activation_in, w.segment_in, (size_t)w.segments * NS_SHA256_BYTES);
            memcpy(c->activation_out, w.segment_out, (size_t)w.segments * NS_SHA256_BYTES);
        } else {
            c->micro_batches = 1;
            memcpy(c->activation_in[0], w.input_hash, NS_SHA256_BYTES);
            memcpy(c->activation_out[0], w.output_hash, NS_SHA256_BYTES);
        }
        /* solo training: the weight change is fixed by the weights before and after */
        uint8_t both[2 * NS_SHA256_BYTES];
        memcpy(both, w.model_before, NS_SHA256_BYTES);
        memcpy(both + NS_SHA256_BYTES, w.model_after, NS_SHA256_BYTES);
        ns_sha256(c->delta_hash, both, sizeof both);
        c->layer_first = w.layer_first;
        c->layer_last = w.layer_last;
        c->exec_mode = w.exec_mode;
        c->outer_round = w.outer_round;
        cheat(e, &p);
    }
    uint8_t *buf;
    size_t len;
    if (ns_proof_check(&p) != NULL || ns_proof_sign(e->cfg.key, &p, &buf, &len) != NS_OK) {
        NS_LOG_W("ponw", "cannot make a proof: %s", ns_proof_check(&p));
        return;
    }
    ns_proof checked;
    ns_ponw_verdict v = ns_ponw_validate(e->validator, buf, len, now, &checked);
    if (v == NS_PONW_ACCEPTED &&
        ns_ledger_proof_put(e->cfg.ledger, &checked, buf, len, now) == NS_OK) {
        e->proofs_made++;
        e->last_end_ms = now;
        cross_check(e, &checked);
        send_frame(e, NULL, NS_FRAME_PROOF, buf, len);
        if (p.type == NS_PROOF_TRAINING)
            NS_LOG_I("ponw", "training proof: steps %llu..%llu, layers %u..%u, %u segments",
                     (unsigned long long)p.training.batch_first,
                     (unsigned long long)(p.training.batch_first + p.batches),
                     p.training.layer_first, p.training.layer_last, p.training.micro_batches);
        else
            NS_LOG_D("ponw", "proof type=%u uptime_s=%llu", p.type, (unsigned long long)p.uptime_s);
    } else {
        NS_LOG_W("ponw", "own proof refused: %s", ns_ponw_verdict_name(v));
    }
    free(buf);
}

static void proof_timer_fired(void *arg, uint64_t now)
{
    ns_econ *e = arg;
    e->proof_timer = 0;
    make_proof(e, now);
    e->proof_timer =
        ns_env_timer(&e->cfg.uvenv->env, now + e->cfg.proof_interval_ms, proof_timer_fired, e);
}

static bool claim_one(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    (void)id;
    ns_econ *e = arg;
    ns_proof p;
    ns_account a;
    ns_neuro reward;
    if (ns_proof_open(buf, len, now_ms(e), &p) != NS_OK ||
        ns_ledger_account(e->cfg.ledger, e->cfg.key->node_id, &a) != NS_OK ||
        ns_ponw_reward(&p, a.stake, &reward) != NS_OK)
        return true;
    ns_entry en = {.kind = NS_ENTRY_CLAIM, .amount = reward, .proof = buf, .proof_len = len};
    char why[NS_LEDGER_WHY_SIZE];
    int rc = append_own(e, &en, why);
    if (rc == NS_OK) {
        e->claims_made++;
        note("marking a proof", ns_ledger_proof_set_status(e->cfg.ledger, p.id, "claimed"));
    } else if (rc == NS_EINVAL) {
        e->claims_refused++;
        NS_LOG_W("ponw", "claim refused: %s", why);
        note("marking a proof", ns_ledger_proof_set_status(e->cfg.ledger, p.id, "rejected"));
    }
    return rc == NS_OK || rc == NS_EINVAL; /* stop on a file error; try again later */
}

/* Claims are looked for every ECON_CLAIM_MS, or every proof interval when that is shorter. */
static uint64_t claim_every(const ns_econ *e)
{
    return e->cfg.proof_interval_ms < ECON_CLAIM_MS ? e->cfg.proof_interval_ms : ECON_CLAIM_MS;
}

static void claim_timer_fired(void *arg, uint64_t now)
{
    ns_econ *e = arg;
    e->claim_timer = 0;
    note("finding proofs to claim",
         ns_ledger_proofs_due(e->cfg.ledger, e->cfg.key->node_id, now, 64, claim_one, e));
    e->claim_timer = ns_env_timer(&e->cfg.uvenv->env, now + claim_every(e), claim_timer_fired, e);
}

/* ---- verification and challenges ----------------------------------------------------------- */

/* The ledger's judge: this node's own recompute; until it has one, the challenge waits while a
 * recompute is queued. */
static ns_judgement judge(void *arg, const ns_proof *proof, const ns_entry *challenge)
{
    ns_econ *e = arg;
    uint64_t round;
    uint8_t bundle[NS_SHA256_BYTES];
    if (ns_ledger_cohort_evidence_parse(challenge->evidence, challenge->evidence_len, &round,
                                        bundle)) /* by the cohort's screen: rerun it */
        return ns_evidence_verdict(e->evidence, bundle, proof->author, round, challenge->account);
    ns_judgement j = ns_verifier_verdict(e->verifier, proof->id, NULL);
    if (j == NS_JUDGE_UNKNOWN)
        ns_verifier_check(e->verifier, proof, false);
    return j;
}

/* A check ended. Fraud found by a spot check becomes a challenge (with 10 NEURO staked); any
 * verdict may let challenges waiting on it apply. */
static void verdict_done(void *arg, const ns_proof *p, ns_judgement verdict,
                         const uint8_t recomputed[NS_SHA256_BYTES], bool spot_check)
{
    ns_econ *e = arg;
    if (verdict == NS_JUDGE_FRAUD && spot_check) {
        uint8_t *env = NULL;
        size_t len = 0;
        if (ns_ledger_proof_record(e->cfg.ledger, p->id, &env, &len) != NS_OK) {
            NS_LOG_W("verify", "fraud found but the proof is no longer kept");
        } else {
            ns_entry en = {
                .kind = NS_ENTRY_CHALLENGE, .amount = e->cfg.bond, .proof = env, .proof_len = len};
            memcpy(en.reference, recomputed, NS_SHA256_BYTES);
            char why[NS_LEDGER_WHY_SIZE];
            int rc = append_own(e, &en, why);
            if (rc == NS_OK) {
                e->challenges_made++;
                NS_LOG_I("verify", "challenged a fraudulent proof; the prover is slashed");
            } else {
                NS_LOG_W("verify", "fraud found but not challenged: %s", why);
            }
            free(env);
        }
    }
    retry_pending(e);
}

static void verify_timer_fired(void *arg, uint64_t now)
{
    ns_econ *e = arg;
    e->verify_timer = 0;
    ns_verifier_tick(e->verifier);
    ns_evidence_tick(e->evidence);
    retry_pending(e);
    e->verify_timer = ns_env_timer(&e->cfg.uvenv->env, now + 2000, verify_timer_fired, e);
}

/* ---- the wallet ----------------------------------------------------------------------------- */

int ns_econ_send(ns_econ *e, const uint8_t to[NS_NODE_ID_BYTES], ns_neuro amount, char *why,
                 uint8_t hash[NS_SHA256_BYTES])
{
    ns_entry en = {.kind = NS_ENTRY_SEND, .amount = amount};
    memcpy(en.counterparty, to, NS_NODE_ID_BYTES);
    int rc = append_own(e, &en, why);
    if (rc == NS_OK)
        memcpy(hash, en.hash, NS_SHA256_BYTES);
    return rc;
}

int ns_econ_stake(ns_econ *e, ns_neuro amount, bool unstake, char *why)
{
    ns_entry en = {.kind = unstake ? NS_ENTRY_UNSTAKE : NS_ENTRY_STAKE, .amount = amount};
    return append_own(e, &en, why);
}

/* ---- the service ---------------------------------------------------------------------------- */

typedef struct last_ctx {
    uint64_t end;
} last_ctx;

static void evidence_fetched(void *arg)
{
    retry_pending(arg);
}

int ns_econ_start(ns_econ **out, const ns_econ_config *cfg)
{
    ns_econ *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NS_ENOMEM;
    e->cfg = *cfg;
    if (e->cfg.proof_interval_ms == 0)
        e->cfg.proof_interval_ms = NS_PONW_INTERVAL_MS;
    int rc = ns_ponw_validator_new(&e->validator, ECON_VALIDATOR_NODES);
    if (rc != NS_OK) {
        free(e);
        return rc;
    }
    ns_verifier_config vc = cfg->verify;
    vc.uvenv = cfg->uvenv;
    vc.net = cfg->net;
    vc.done = verdict_done;
    vc.arg = e;
    vc.window_ms = cfg->window_ms;
    vc.silent = cheats(cfg->cheat, "silent");
    memcpy(vc.self, cfg->key->node_id, NS_NODE_ID_BYTES);
    rc = ns_verifier_new(&e->verifier, cfg->uvenv->loop, &vc);
    if (rc != NS_OK) {
        ns_ponw_validator_free(e->validator);
        free(e);
        return rc;
    }
    ns_evidence_config evc = {
        .uvenv = cfg->uvenv, .net = cfg->net, .fetched = evidence_fetched, .arg = e};
    snprintf(evc.data_dir, sizeof evc.data_dir, "%s", cfg->verify.data_dir);
    rc = ns_evidence_new(&e->evidence, &evc);
    if (rc != NS_OK) {
        ns_verifier_free(e->verifier);
        ns_ponw_validator_free(e->validator);
        free(e);
        return rc;
    }
    ns_ledger_set_judge(cfg->ledger, judge, e);
    uint64_t now = now_ms(e);
    uint64_t last = 0;
    note("finding the last proof",
         ns_ledger_last_proof_end(e->cfg.ledger, e->cfg.key->node_id, &last));
    e->last_end_ms = last > now ? now : (last > cfg->started_ms ? last : cfg->started_ms);
    e->last_tier = NS_TIER_T5;
    ns_net_set_app(cfg->net, NS_NET_APP_ECON, on_frame, on_link, NULL, e);
    receive_all(e);
    e->proof_timer =
        ns_env_timer(&cfg->uvenv->env, now + e->cfg.proof_interval_ms, proof_timer_fired, e);
    e->claim_timer = ns_env_timer(&cfg->uvenv->env, now + claim_every(e), claim_timer_fired, e);
    e->verify_timer = ns_env_timer(&cfg->uvenv->env, now + 2000, verify_timer_fired, e);
    *out = e;
    return NS_OK;
}

void ns_econ_stop(ns_econ *e)
{
    if (e == NULL)
        return;
    const ns_env *env = &e->cfg.uvenv->env;
    if (e->proof_timer != 0)
        ns_env_timer_cancel(env, e->proof_timer);
    if (e->claim_timer != 0)
        ns_env_timer_cancel(env, e->claim_timer);
    if (e->verify_timer != 0)
        ns_env_timer_cancel(env, e->verify_timer);
    ns_ledger_set_judge(e->cfg.ledger, NULL, NULL);
    ns_verifier_free(e->verifier);
    ns_evidence_free(e->evidence);
    for (size_t i = 0; i < e->pending_count; i++)
        free(e->pending[i].buf);
    ns_ponw_validator_free(e->validator);
    free(e->stage_proofs);
    free(e);
}

typedef struct proofs_json_ctx {
    json_t *list;
} proofs_json_ctx;

static bool proof_row_json(void *arg, const ns_ledger_proof_row *row)
{
    proofs_json_ctx *c = arg;
    char id[2 * NS_SHA256_BYTES + 1], author[2 * NS_NODE_ID_BYTES + 1];
    ns_hex_encode(id, sizeof id, row->id, sizeof row->id);
    ns_hex_encode(author, sizeof author, row->author, sizeof row->author);
    json_array_append_new(c->list,
                          json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "id", id, "author", author,
                                    "kind", row->kind, "received_ms", (json_int_t)row->received_ms,
                                    "window_closes_ms", (json_int_t)row->window_closes_ms, "status",
                                    row->status));
    return true;
}

json_t *ns_econ_ponw_json(ns_econ *e, uint32_t limit)
{
    proofs_json_ctx c = {json_array()};
    note("listing proofs", ns_ledger_proofs_recent(e->cfg.ledger, limit, proof_row_json, &c));
    json_t *verdicts = json_object();
    for (int v = 0; v < NS_PONW_VERDICTS_; v++)
        json_object_set_new(
            verdicts, ns_ponw_verdict_name((ns_ponw_verdict)v),
            json_integer((json_int_t)ns_ponw_verdict_count(e->validator, (ns_ponw_verdict)v)));
    uint64_t checked, fraud, failed, unanswered;
    ns_verifier_counts(e->verifier, &checked, &fraud, &failed, &unanswered);
    json_t *o = json_pack(
        "{s:o, s:o, s:I, s:I, s:I, s:I, s:{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}", "proofs",
        c.list, "verdicts", verdicts, "proofs_made", (json_int_t)e->proofs_made, "claims_made",
        (json_int_t)e->claims_made, "claims_refused", (json_int_t)e->claims_refused, "interval_ms",
        (json_int_t)e->cfg.proof_interval_ms, "verifier", "on", e->cfg.verifier, "recomputed",
        (json_int_t)checked, "fraud_found", (json_int_t)(fraud + e->frauds_seen), "unjudged",
        (json_int_t)failed, "unanswered", (json_int_t)unanswered, "challenges_made",
        (json_int_t)e->challenges_made, "cross_checked", (json_int_t)e->cross_checked,
        "cross_mismatched", (json_int_t)e->cross_mismatched);
    json_t *cohort = ns_evidence_json(e->evidence);
    json_object_set_new(cohort, "challenges_made", json_integer((json_int_t)e->cohort_challenges));
    json_object_set_new(o, "cohort_fraud", cohort);
    return o;
}

int ns_econ_metrics(ns_econ *e, char **text)
{
    char *verdicts = NULL;
    size_t vlen = 0;
    FILE *f = open_memstream(&verdicts, &vlen);
    if (f == NULL)
        return -1;
    for (int v = 0; v < NS_PONW_VERDICTS_; v++)
        fprintf(f, "neuroshard_ponw_proofs_total{verdict=\"%s\"} %llu\n",
                ns_ponw_verdict_name((ns_ponw_verdict)v),
                (unsigned long long)ns_ponw_verdict_count(e->validator, (ns_ponw_verdict)v));
    fclose(f);
    int n = asprintf(text,
                     "# HELP neuroshard_ponw_proofs_total Proofs checked, by verdict.\n"
                     "# TYPE neuroshard_ponw_proofs_total counter\n%s"
                     "# HELP neuroshard_ponw_claims_total This node's claims, by outcome.\n"
                     "# TYPE neuroshard_ponw_claims_total counter\n"
                     "neuroshard_ponw_claims_total{result=\"applied\"} %llu\n"
                     "neuroshard_ponw_claims_total{result=\"refused\"} %llu\n"
                     "# HELP neuroshard_ledger_gossip_entries_total Entries from peers.\n"
                     "# TYPE neuroshard_ledger_gossip_entries_total counter\n"
                     "neuroshard_ledger_gossip_entries_total{result=\"received\"} %llu\n"
                     "neuroshard_ledger_gossip_entries_total{result=\"refused\"} %llu\n"
                     "neuroshard_ledger_gossip_entries_total{result=\"dropped_waiting\"} %llu\n"
                     "# HELP neuroshard_ledger_entries_waiting Entries waiting for a parent.\n"
                     "# TYPE neuroshard_ledger_entries_waiting gauge\n"
                     "neuroshard_ledger_entries_waiting %zu\n"
                     "# HELP neuroshard_ledger_forks_total Forked accounts seen.\n"
                     "# TYPE neuroshard_ledger_forks_total counter\n"
                     "neuroshard_ledger_forks_total %llu\n",
                     verdicts, (unsigned long long)e->claims_made,
                     (unsigned long long)e->claims_refused, (unsigned long long)e->entries_in,
                     (unsigned long long)e->entries_refused,
                     (unsigned long long)e->entries_waiting_dropped, e->pending_count,
                     (unsigned long long)e->forks_seen);
    free(verdicts);
    return n;
}
