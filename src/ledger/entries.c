/*
 * entries.c: applying signed entries to the NEURO ledger (docs/ledger.md).
 *
 * An entry is checked in full before anything is written (its record's signature, its place in
 * its account's chain, its kind's rules against the state as it is), and applied in one SQLite
 * transaction that writes the entry, the account and what the kind touches (a claim, a send to
 * take in, a burn). A refused entry changes nothing; a crash mid-way leaves the transaction
 * undone, so an entry is applied once or not at all. Every amount is an integer of nano-NEURO
 * with overflow checked; every rule reads only the ledger and the entry, never the clock, so the
 * same entries in the same order give the same state on every node (ns_ledger_check replays
 * them to show it).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.pb-c.h"
#include "ledger_internal.h"
#include "neuroshard/ponw.h"

#define REPLAY_NOW_MS ((uint64_t)INT64_MAX / 2) /* replays accept any past timestamp */
#define HOUR_MS       3600000ull

static const char *const kind_names[] = {
    [NS_ENTRY_CLAIM] = "claim", [NS_ENTRY_SEND] = "send",       [NS_ENTRY_RECEIVE] = "receive",
    [NS_ENTRY_STAKE] = "stake", [NS_ENTRY_UNSTAKE] = "unstake", [NS_ENTRY_CHALLENGE] = "challenge",
};

static bool kind_known(uint32_t kind)
{
    return kind >= NS_ENTRY_CLAIM && kind <= NS_ENTRY_CHALLENGE;
}

static int refuse(char *why, int rc, const char *fmt, ...) NS_PRINTF(3, 4);

static int refuse(char *why, int rc, const char *fmt, ...)
{
    if (why != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, NS_LEDGER_WHY_SIZE, fmt, ap);
        va_end(ap);
    }
    return rc;
}

ns_neuro ns_ledger_send_fee(ns_neuro amount)
{
    if (amount.nano <= 0)
        return (ns_neuro){0};
    unsigned __int128 fee =
        ((unsigned __int128)amount.nano * NS_LEDGER_FEE_PPM + 999999u) / 1000000u;
    return (ns_neuro){.nano = (int64_t)fee};
}

/* ---- encoding ----------------------------------------------------------------------------- */

static ProtobufCBinaryData bin(const uint8_t *p, size_t n)
{
    return (ProtobufCBinaryData){.len = n, .data = (uint8_t *)p};
}

int ns_entry_sign(const ns_key *key, ns_entry *e, uint8_t **out, size_t *out_len)
{
    if (!kind_known(e->kind) || e->amount.nano < 0)
        return NS_EINVAL;
    Neuroshard__Entry m = NEUROSHARD__ENTRY__INIT;
    m.kind = e->kind;
    m.prev_hash = bin(e->prev_hash, NS_SHA256_BYTES);
    m.amount_nano = (uint64_t)e->amount.nano;
    if (e->kind == NS_ENTRY_SEND)
        m.counterparty = bin(e->counterparty, NS_NODE_ID_BYTES);
    if (e->kind == NS_ENTRY_RECEIVE || e->kind == NS_ENTRY_CHALLENGE)
        m.reference = bin(e->reference, NS_SHA256_BYTES);
    if (e->kind == NS_ENTRY_CLAIM || e->kind == NS_ENTRY_CHALLENGE)
        m.proof = bin(e->proof, e->proof_len);
    if (e->kind == NS_ENTRY_CHALLENGE && e->evidence_len > 0)
        m.evidence = bin(e->evidence, e->evidence_len);
    size_t n = neuroshard__entry__get_packed_size(&m);
    if (n > NS_RECORD_BODY_BYTES_MAX)
        return NS_ETOOBIG;
    uint8_t *body = malloc(n > 0 ? n : 1);
    if (body == NULL)
        return NS_ENOMEM;
    NS_ASSERT(neuroshard__entry__pack(&m, body) == n);
    ns_record r = {.type = NS_RECORD_LEDGER_ENTRY,
                   .sequence = e->sequence,
                   .timestamp_ms = e->timestamp_ms,
                   .body = body,
                   .body_len = n};
    int rc = ns_record_sign(key, &r, out, out_len);
    free(body);
    if (rc != NS_OK)
        return rc;
    memcpy(e->account, key->node_id, NS_NODE_ID_BYTES);
    ns_sha256(e->hash, *out, *out_len);
    return NS_OK;
}

/* The fields a kind must have, and only those. */
static bool fields_fit_kind(const Neuroshard__Entry *m)
{
    bool has_party = m->counterparty.len != 0, has_ref = m->reference.len != 0,
         has_proof = m->proof.len != 0;
    if (m->evidence.len != 0 && m->kind != NS_ENTRY_CHALLENGE)
        return false;
    switch (m->kind) {
    case NS_ENTRY_CLAIM:
        return has_proof && !has_party && !has_ref;
    case NS_ENTRY_SEND:
        return m->counterparty.len == NS_NODE_ID_BYTES && !has_ref && !has_proof;
    case NS_ENTRY_RECEIVE:
        return m->reference.len == NS_SHA256_BYTES && !has_party && !has_proof;
    case NS_ENTRY_STAKE:
    case NS_ENTRY_UNSTAKE:
        return !has_party && !has_ref && !has_proof;
    case NS_ENTRY_CHALLENGE:
        return has_proof && m->reference.len == NS_SHA256_BYTES && !has_party;
    default:
        return false;
    }
}

static size_t varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

int ns_entry_open(const uint8_t *buf, size_t len, uint64_t now_ms, ns_entry *e)
{
    ns_record r;
    int rc = ns_record_verify(buf, len, now_ms, &r);
    if (rc != NS_OK)
        return rc;
    if (r.type != NS_RECORD_LEDGER_ENTRY || r.topic_len != 0 || r.expiry_ms != 0 || r.sequence == 0)
        return NS_EINVAL;
    Neuroshard__Entry *m = neuroshard__entry__unpack(NULL, r.body_len, r.body);
    if (m == NULL)
        return NS_EPARSE;
    bool ok = m->base.n_unknown_fields == 0 && ns_pb_packs_to(&m->base, r.body, r.body_len) &&
              m->prev_hash.len == NS_SHA256_BYTES && m->amount_nano <= INT64_MAX &&
              fields_fit_kind(m);
    if (ok) {
        ns_entry out = {0};
        ns_sha256(out.hash, buf, len);
        memcpy(out.account, r.author, NS_NODE_ID_BYTES);
        out.sequence = r.sequence;
        out.timestamp_ms = r.timestamp_ms;
        out.kind = m->kind;
        memcpy(out.prev_hash, m->prev_hash.data, NS_SHA256_BYTES);
        out.amount.nano = (int64_t)m->amount_nano;
        if (m->counterparty.len != 0)
            memcpy(out.counterparty, m->counterparty.data, NS_NODE_ID_BYTES);
        if (m->reference.len != 0)
            memcpy(out.reference, m->reference.data, NS_SHA256_BYTES);
        /* protobuf-c copied them; the canonical encoding writes fields in number order, so
         * evidence (7) ends the body and proof (6) ends just before evidence's tag and length */
        size_t end = r.body_len;
        if (m->evidence.len != 0) {
            out.evidence = r.body + end - m->evidence.len;
            out.evidence_len = m->evidence.len;
            NS_ASSERT(memcmp(out.evidence, m->evidence.data, m->evidence.len) == 0);
            end -= m->evidence.len + 1 + varint_len(m->evidence.len);
        }
        if (m->proof.len != 0) {
            out.proof = r.body + end - m->proof.len;
            out.proof_len = m->proof.len;
            NS_ASSERT(memcmp(out.proof, m->proof.data, m->proof.len) == 0);
        }
        *e = out;
    }
    neuroshard__entry__free_unpacked(m, NULL);
    return ok ? NS_OK : NS_EPARSE;
}

/* ---- reading state ------------------------------------------------------------------------ */

/* Binds a blob of n bytes (SQLITE_STATIC: the caller keeps it alive until the statement ends). */
static int bind_blob(sqlite3 *db, sqlite3_stmt *stmt, int index, const void *p, size_t n)
{
    int rc = sqlite3_bind_blob(stmt, index, p, (int)n, SQLITE_STATIC);
    return rc == SQLITE_OK ? NS_OK : ns__ledger_error(db, rc);
}

static int bind_int(sqlite3 *db, sqlite3_stmt *stmt, int index, int64_t v)
{
    int rc = sqlite3_bind_int64(stmt, index, v);
    return rc == SQLITE_OK ? NS_OK : ns__ledger_error(db, rc);
}

int ns_ledger_account(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES], ns_account *out)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT balance_nano, stake_nano, sequence, head_hash, frozen,"
                                 " debt_nano FROM accounts WHERE node_id = ?1",
                                 &stmt);
    if (err != NS_OK)
        return err;
    ns_account a = {0};
    ns__ledger_genesis_hash(a.head_hash);
    err = bind_blob(db, stmt, 1, node_id, NS_NODE_ID_BYTES);
    int rc = err == NS_OK ? sqlite3_step(stmt) : SQLITE_OK;
    if (err == NS_OK && rc == SQLITE_ROW) {
        err = ns__ledger_column_amount(stmt, 0, &a.balance);
        if (err == NS_OK)
            err = ns__ledger_column_amount(stmt, 1, &a.stake);
        if (err == NS_OK)
            a.sequence = (uint64_t)sqlite3_column_int64(stmt, 2);
        if (err == NS_OK)
            err = ns__ledger_column_blob(stmt, 3, a.head_hash, NS_SHA256_BYTES);
        a.frozen = sqlite3_column_int64(stmt, 4) != 0;
        if (err == NS_OK)
            err = ns__ledger_column_amount(stmt, 5, &a.debt);
        if (err == NS_OK)
            err = ns__ledger_step_done(db, stmt);
    } else if (err == NS_OK && rc != SQLITE_DONE) {
        err = ns__ledger_error(db, rc);
    }
    err = ns__ledger_finish(db, stmt, err);
    if (err == NS_OK)
        *out = a;
    return err;
}

/* Runs sql with values bound as given ("b" blob of 32, "B" blob ptr+len, "t" text, "i" int64) and
 * returns the single integer of its single row in *out (0 rows: *out = 0). */
static int query_int(sqlite3 *db, const char *sql, int64_t *out, const char *types, ...)
{
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db, sql, &stmt);
    if (err != NS_OK)
        return err;
    va_list ap;
    va_start(ap, types);
    for (int i = 0; err == NS_OK && types[i] != '\0'; i++) {
        if (types[i] == 'b') {
            const uint8_t *p = va_arg(ap, const uint8_t *);
            err = bind_blob(db, stmt, i + 1, p, 32);
        } else if (types[i] == 'B') {
            const uint8_t *p = va_arg(ap, const uint8_t *);
            size_t n = va_arg(ap, size_t);
            err = bind_blob(db, stmt, i + 1, p, n);
        } else if (types[i] == 't') {
            int rc = sqlite3_bind_text(stmt, i + 1, va_arg(ap, const char *), -1, SQLITE_STATIC);
            err = rc == SQLITE_OK ? NS_OK : ns__ledger_error(db, rc);
        } else {
            err = bind_int(db, stmt, i + 1, va_arg(ap, int64_t));
        }
    }
    va_end(ap);
    if (err == NS_OK) {
        int rc = sqlite3_step(stmt);
        if (rc == SQLITE_ROW)
            *out = sqlite3_column_int64(stmt, 0);
        else if (rc == SQLITE_DONE)
            *out = 0;
        else
            err = ns__ledger_error(db, rc);
    }
    return ns__ledger_finish(db, stmt, err);
}

/* The same with nothing to return (an INSERT or UPDATE). */
#define exec_bound(db, sql, ...) query_int(db, sql, &(int64_t){0}, __VA_ARGS__)

/* ---- the rules of each kind --------------------------------------------------------------- */

/* A claim: the account's own proof, its window passed, never claimed, no overlap with another
 * claimed period, at most NS_PONW_PER_HOUR_MAX an hour, plausible work, the exact reward. Every
 * rule reads the account's own chain only; a challenge of the proof does not refuse the claim
 * (whether it arrived first differs between nodes): its slash takes back twice what was paid. */
static int rule_claim(ns_ledger *ledger, const ns_entry *e, const ns_account *a, char *why)
{
    sqlite3 *db = ledger->db;
    ns_proof p;
    int rc = ns_proof_open(e->proof, e->proof_len, REPLAY_NOW_MS, &p);
    if (rc != NS_OK)
        return refuse(why, NS_EINVAL, "the claimed proof does not verify: %s", ns_strerror(rc));
    const char *bad = ns_proof_check(&p);
    if (bad != NULL)
        return refuse(why, NS_EINVAL, "the claimed proof is malformed: %s", bad);
    if (memcmp(p.author, e->account, NS_NODE_ID_BYTES) != 0)
        return refuse(why, NS_EINVAL, "a proof can only be claimed by its author");
    if (e->timestamp_ms < p.timestamp_ms + ledger->window_ms)
        return refuse(why, NS_EINVAL, "the proof's challenge window is still open");
    ns_ponw_verdict v = ns_ponw_check_work(&p);
    if (v != NS_PONW_ACCEPTED)
        return refuse(why, NS_EINVAL, "the claimed proof is %s", ns_ponw_verdict_name(v));
    int64_t n = 0;
    rc = query_int(db, "SELECT count(*) FROM claims WHERE proof_id = ?1", &n, "b", p.id);
    if (rc != NS_OK)
        return rc;
    if (n != 0)
        return refuse(why, NS_EINVAL, "the proof was claimed already");
    rc = query_int(db,
                   "SELECT count(*) FROM claims WHERE author = ?1 AND period_start_ms < ?2"
                   " AND period_end_ms > ?3",
                   &n, "bii", p.author, (int64_t)p.timestamp_ms, (int64_t)p.period_start_ms);
    if (rc != NS_OK)
        return rc;
    if (n != 0)
        return refuse(why, NS_EINVAL, "the proof's period overlaps one claimed already");
    rc = query_int(db,
                   "SELECT count(*) FROM claims WHERE author = ?1 AND period_end_ms > ?2"
                   " AND period_end_ms <= ?3",
                   &n, "bii", p.author, (int64_t)(p.timestamp_ms - HOUR_MS),
                   (int64_t)(p.timestamp_ms + HOUR_MS));
    if (rc != NS_OK)
        return rc;
    if (n >= NS_PONW_PER_HOUR_MAX)
        return refuse(why, NS_EINVAL, "more than %u proofs an hour", NS_PONW_PER_HOUR_MAX);
    ns_neuro reward;
    if (ns_ponw_reward(&p, a->stake, &reward) != NS_OK || reward.nano != e->amount.nano)
        return refuse(why, NS_EINVAL, "the amount is not the reward the proof earns");
    rc = exec_bound(db,
                    "INSERT INTO claims (proof_id, author, period_start_ms, period_end_ms,"
                    " reward_nano) VALUES (?1, ?2, ?3, ?4, ?5)",
                    "bbiii", p.id, p.author, (int64_t)p.period_start_ms, (int64_t)p.timestamp_ms,
                    reward.nano);
    if (rc != NS_OK || p.type != NS_PROOF_TRAINING)
        return rc;
    /* The Intelligence Ledger (S10): a row for the training round the claim pays for. */
    sqlite3_stmt *stmt;
    rc = ns__ledger_prepare(db,
                            "INSERT INTO training_rounds (time_ms, contributors, batch_size,"
                            " loss_before, loss_after, minted_nano, checkpoint_hash)"
                            " VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
                            &stmt);
    if (rc != NS_OK)
        return rc;
    int src = sqlite3_bind_int64(stmt, 1, (int64_t)p.timestamp_ms);
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(stmt, 2, (int64_t)p.batches);
    if (src == SQLITE_OK)
        src = sqlite3_bind_double(
            stmt, 3, isfinite(p.training.loss_before) ? (double)p.training.loss_before : -1.0);
    if (src == SQLITE_OK)
        src = sqlite3_bind_double(
            stmt, 4, isfinite(p.training.loss_after) ? (double)p.training.loss_after : -1.0);
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(stmt, 5, reward.nano);
    if (src == SQLITE_OK)
        src =
            sqlite3_bind_blob(stmt, 6, p.training.model_hash_after, NS_SHA256_BYTES, SQLITE_STATIC);
    rc = src == SQLITE_OK ? ns__ledger_step_done(db, stmt) : ns__ledger_error(db, src);
    return ns__ledger_finish(db, stmt, rc);
}

static int rule_send(sqlite3 *db, const ns_entry *e, const ns_account *a, char *why)
{
    if (e->amount.nano <= 0)
        return refuse(why, NS_EINVAL, "a send of nothing");
    if (memcmp(e->counterparty, e->account, NS_NODE_ID_BYTES) == 0)
        return refuse(why, NS_EINVAL, "a send to oneself");
    if (e->amount.nano > a->balance.nano)
        return refuse(why, NS_EINVAL, "a send beyond the balance");
    ns_neuro fee = ns_ledger_send_fee(e->amount);
    int rc = exec_bound(db,
                        "INSERT INTO sends (hash, sender, recipient, amount_nano)"
                        " VALUES (?1, ?2, ?3, ?4)",
                        "bbbi", e->hash, e->account, e->counterparty, e->amount.nano - fee.nano);
    if (rc == NS_OK)
        rc = exec_bound(db,
                        "INSERT INTO burns (cause, entry_hash, amount_nano) VALUES ('fee', ?1, ?2)",
                        "bi", e->hash, fee.nano);
    return rc;
}

static int rule_receive(sqlite3 *db, const ns_entry *e, char *why)
{
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT recipient, amount_nano, received FROM sends"
                                 " WHERE hash = ?1",
                                 &stmt);
    if (err != NS_OK)
        return err;
    uint8_t recipient[NS_NODE_ID_BYTES];
    ns_neuro amount = {0};
    int64_t received = 0;
    err = bind_blob(db, stmt, 1, e->reference, NS_SHA256_BYTES);
    int rc = err == NS_OK ? sqlite3_step(stmt) : SQLITE_OK;
    bool found = err == NS_OK && rc == SQLITE_ROW;
    if (found) {
        err = ns__ledger_column_blob(stmt, 0, recipient, sizeof recipient);
        if (err == NS_OK)
            err = ns__ledger_column_amount(stmt, 1, &amount);
        received = sqlite3_column_int64(stmt, 2);
    } else if (err == NS_OK && rc != SQLITE_DONE) {
        err = ns__ledger_error(db, rc);
    }
    err = ns__ledger_finish(db, stmt, err);
    if (err != NS_OK)
        return err;
    if (!found)
        return refuse(why, NS_ENOENT, "the send it takes in has not been applied here yet");
    if (memcmp(recipient, e->account, NS_NODE_ID_BYTES) != 0)
        return refuse(why, NS_EINVAL, "the send is addressed to another account");
    if (received != 0)
        return refuse(why, NS_EINVAL, "the send was received already");
    if (amount.nano != e->amount.nano)
        return refuse(why, NS_EINVAL, "the amount is not what the send delivers (after its fee)");
    return exec_bound(db, "UPDATE sends SET received = 1 WHERE hash = ?1", "b", e->reference);
}

/* Adds to another account's debt, creating its row when it has none; its chain (sequence, head,
 * balance, stake) is untouched, so its own entries' rules never see the order this came in. */
static int add_debt(sqlite3 *db, const uint8_t id[NS_NODE_ID_BYTES], int64_t amount)
{
    uint8_t genesis[NS_SHA256_BYTES];
    ns__ledger_genesis_hash(genesis);
    return exec_bound(db,
                      "INSERT INTO accounts (node_id, debt_nano, sequence, head_hash)"
                      " VALUES (?1, ?2, 0, ?3) ON CONFLICT (node_id) DO UPDATE SET"
                      " debt_nano = debt_nano + ?2",
                      "bib", id, amount, genesis);
}

static int burn(sqlite3 *db, const uint8_t entry_hash[NS_SHA256_BYTES], int64_t amount)
{
    if (amount <= 0)
        return NS_OK;
    return exec_bound(db,
                      "INSERT INTO burns (cause, entry_hash, amount_nano) VALUES ('slash', ?1, ?2)",
                      "bi", entry_hash, amount);
}

/* A challenge: a training proof of another account, challenged within its window, at most once by
 * each challenger, the bond in the challenger's stake. This node's judge decides (S9, S10).
 *
 * Every effect is fixed by the challenge and the proof alone, so that nodes which applied the
 * prover's entries, the claim and other challenges in any order end with the same balances:
 *   fraud   the prover owes twice the proof's reward at zero stake, as debt (its own chain's
 *           balance and stake are never touched: spends it made elsewhere first stay valid);
 *           half of it goes to the challenger's balance, half is burned. Each challenger that
 *           proves the fraud is paid, and the prover owes for each.
 *   honest  the challenger loses its bond from its stake: half is burned, half is sent to the
 *           prover, who takes it in with a receive like any send.
 * The one input that is not the entries themselves is the judge, which must decide alike on every
 * node: continuity evidence decides by itself; a recompute is bit for bit (reproducible mode). */
static int rule_challenge(ns_ledger *ledger, const ns_entry *e, ns_account *a, char *why)
{
    sqlite3 *db = ledger->db;
    if (e->amount.nano != ledger->bond_nano)
        return refuse(why, NS_EINVAL, "a challenge bonds exactly the swarm's bond (10 NEURO)");
    if (a->stake.nano < ledger->bond_nano)
        return refuse(why, NS_EINVAL, "a challenge needs the bond (10 NEURO) staked");
    ns_proof p;
    int rc = ns_proof_open(e->proof, e->proof_len, REPLAY_NOW_MS, &p);
    if (rc != NS_OK || ns_proof_check(&p) != NULL || p.type != NS_PROOF_TRAINING)
        return refuse(why, NS_EINVAL, "the challenged proof is not a valid training proof");
    if (memcmp(p.author, e->account, NS_NODE_ID_BYTES) == 0)
        return refuse(why, NS_EINVAL, "a challenge of one's own proof");
    if (e->timestamp_ms > p.timestamp_ms + ledger->window_ms)
        return refuse(why, NS_EINVAL, "the proof's challenge window has closed");
    int64_t n = 0;
    rc = query_int(db, "SELECT count(*) FROM judgements WHERE proof_id = ?1 AND challenger = ?2",
                   &n, "bb", p.id, e->account);
    if (rc != NS_OK)
        return rc;
    if (n != 0)
        return refuse(why, NS_EINVAL, "the account challenged this proof already");
    ns_judgement verdict;
    uint64_t round;
    uint8_t bundle[NS_SHA256_BYTES];
    bool cohort = ns_ledger_cohort_evidence_parse(e->evidence, e->evidence_len, &round, bundle);
    if (cohort && (!p.has_training || p.training.outer_round + 1 != round))
        return refuse(why, NS_EINVAL, "the cohort round is not the one after the proof's");
    if (e->evidence_len > 0 && !cohort) {
        /* by continuity: the two signed proofs are the whole case, every node decides alike */
        ns_proof q;
        rc = ns_proof_open(e->evidence, e->evidence_len, REPLAY_NOW_MS, &q);
        if (rc != NS_OK || ns_proof_check(&q) != NULL)
            return refuse(why, NS_EINVAL, "the evidence is not a valid proof");
        if (ns_ponw_contradiction(&p, &q) == NULL)
            return refuse(why, NS_EINVAL, "the evidence does not contradict the proof");
        verdict = NS_JUDGE_FRAUD;
    } else {
        ledger->judging = e->hash;
        verdict =
            ledger->judge != NULL ? ledger->judge(ledger->judge_arg, &p, e) : NS_JUDGE_UNKNOWN;
        ledger->judging = NULL;
    }
    if (verdict == NS_JUDGE_UNKNOWN)
        return refuse(why, NS_EWAIT,
                      cohort ? "waiting for the cohort's evidence to judge the challenge by"
                             : "waiting for this node's own recompute of the proof");
    int64_t slashed, burned;
    if (verdict == NS_JUDGE_FRAUD) {
        ns_neuro reward;
        if (ns_ponw_reward(&p, (ns_neuro){0}, &reward) != NS_OK || reward.nano > INT64_MAX / 4)
            return refuse(why, NS_EINVAL, "the challenged proof's reward is out of range");
        slashed = 2 * reward.nano;
        burned = slashed / 2;
        rc = add_debt(db, p.author, slashed);
        if (rc == NS_OK &&
            ns_neuro_add(&a->balance, a->balance, (ns_neuro){slashed - burned}) != NS_OK)
            rc = refuse(why, NS_EINVAL, "the balance would overflow");
    } else {
        slashed = ledger->bond_nano;
        burned = slashed / 2;
        a->stake.nano -= slashed;
        rc = exec_bound(db,
                        "INSERT INTO sends (hash, sender, recipient, amount_nano)"
                        " VALUES (?1, ?2, ?3, ?4)",
                        "bbbi", e->hash, e->account, p.author, slashed - burned);
    }
    if (rc == NS_OK)
        rc = burn(db, e->hash, burned);
    if (rc != NS_OK)
        return rc;
    return exec_bound(db,
                      "INSERT INTO judgements (entry_hash, proof_id, prover, challenger, verdict,"
                      " slashed_nano) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                      "bbbbti", e->hash, p.id, p.author, e->account,
                      verdict == NS_JUDGE_FRAUD ? "fraud" : "honest", slashed);
}

/* The account after e, or a refusal. */
static int apply_kind(ns_ledger *ledger, const ns_entry *e, ns_account *a, char *why)
{
    sqlite3 *db = ledger->db;
    int rc;
    switch (e->kind) {
    case NS_ENTRY_CLAIM:
        rc = rule_claim(ledger, e, a, why);
        if (rc == NS_OK && ns_neuro_add(&a->balance, a->balance, e->amount) != NS_OK)
            rc = refuse(why, NS_EINVAL, "the balance would overflow");
        return rc;
    case NS_ENTRY_SEND:
        rc = rule_send(db, e, a, why);
        if (rc == NS_OK)
            a->balance.nano -= e->amount.nano; /* <= balance: rule_send */
        return rc;
    case NS_ENTRY_RECEIVE:
        rc = rule_receive(db, e, why);
        if (rc == NS_OK && ns_neuro_add(&a->balance, a->balance, e->amount) != NS_OK)
            rc = refuse(why, NS_EINVAL, "the balance would overflow");
        return rc;
    case NS_ENTRY_STAKE:
        if (e->amount.nano <= 0 || e->amount.nano > a->balance.nano)
            return refuse(why, NS_EINVAL, "a stake of nothing or beyond the balance");
        a->balance.nano -= e->amount.nano;
        a->stake.nano += e->amount.nano; /* balance + stake never overflows: supply is bounded */
        return NS_OK;
    case NS_ENTRY_UNSTAKE:
        if (e->amount.nano <= 0 || e->amount.nano > a->stake.nano)
            return refuse(why, NS_EINVAL, "an unstake of nothing or beyond the stake");
        a->stake.nano -= e->amount.nano;
        a->balance.nano += e->amount.nano;
        return NS_OK;
    case NS_ENTRY_CHALLENGE:
        return rule_challenge(ledger, e, a, why);
    default:
        return refuse(why, NS_EINVAL, "unknown kind");
    }
}

/* ---- applying ----------------------------------------------------------------------------- */

/* A second entry at an applied (account, sequence): keep both, freeze the account. */
static int record_fork(sqlite3 *db, const ns_entry *e, const uint8_t *buf, size_t len, char *why)
{
    int64_t n = 0;
    int rc = query_int(db, "SELECT count(*) FROM entries WHERE hash = ?1", &n, "b", e->hash);
    if (rc != NS_OK)
        return rc;
    if (n != 0)
        return NS_EEXIST;
    rc = exec_bound(db,
                    "INSERT OR IGNORE INTO forks (account, sequence, applied, other)"
                    " SELECT account, sequence, hash, ?3 FROM entries"
                    " WHERE account = ?1 AND sequence = ?2",
                    "biB", e->account, (int64_t)e->sequence, buf, len);
    if (rc == NS_OK)
        rc = exec_bound(db, "UPDATE accounts SET frozen = 1 WHERE node_id = ?1", "b", e->account);
    return rc == NS_OK ? refuse(why, NS_EFORK,
                                "a second entry at sequence %llu: the account is "
                                "frozen",
                                (unsigned long long)e->sequence)
                       : rc;
}

static int apply_in_transaction(ns_ledger *ledger, const ns_entry *e, const uint8_t *buf,
                                size_t len, uint64_t now_ms, char *why)
{
    sqlite3 *db = ledger->db;
    ns_account a;
    int rc = ns_ledger_account(ledger, e->account, &a);
    if (rc != NS_OK)
        return rc;
    if (e->sequence <= a.sequence)
        return record_fork(db, e, buf, len, why);
    if (a.frozen)
        return refuse(why, NS_EINVAL, "the account forked and is frozen");
    if (e->sequence > a.sequence + 1)
        return refuse(why, NS_ENOENT, "entries %llu..%llu of the account are missing",
                      (unsigned long long)a.sequence + 1, (unsigned long long)e->sequence - 1);
    if (memcmp(e->prev_hash, a.head_hash, NS_SHA256_BYTES) != 0)
        return refuse(why, NS_EINVAL, "it does not follow the account's newest entry");
    rc = apply_kind(ledger, e, &a, why);
    if (rc != NS_OK)
        return rc;
    rc = exec_bound(db,
                    "INSERT INTO accounts (node_id, balance_nano, stake_nano, sequence, head_hash)"
                    " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (node_id) DO UPDATE SET"
                    " balance_nano = ?2, stake_nano = ?3, sequence = ?4, head_hash = ?5",
                    "biiib", e->account, a.balance.nano, a.stake.nano, (int64_t)e->sequence,
                    e->hash);
    if (rc == NS_OK)
        rc = exec_bound(
            db,
            "INSERT INTO entries (account, sequence, kind, amount_nano, prev_hash, hash,"
            " record, applied_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            "bitibbBi", e->account, (int64_t)e->sequence, kind_names[e->kind], e->amount.nano,
            e->prev_hash, e->hash, buf, len, (int64_t)(now_ms > INT64_MAX ? 0 : now_ms));
    return rc;
}

void ns_ledger_cohort_evidence(uint8_t out[NS_LEDGER_COHORT_EVIDENCE_BYTES], uint64_t round,
                               const uint8_t bundle_hash[NS_SHA256_BYTES])
{
    memcpy(out, "NSCF", 4);
    out[4] = 1;
    for (int i = 0; i < 8; i++)
        out[5 + i] = (uint8_t)(round >> (56 - 8 * i));
    memcpy(out + 13, bundle_hash, NS_SHA256_BYTES);
}

bool ns_ledger_cohort_evidence_parse(const uint8_t *evidence, size_t len, uint64_t *round,
                                     uint8_t bundle_hash[NS_SHA256_BYTES])
{
    if (evidence == NULL || len != NS_LEDGER_COHORT_EVIDENCE_BYTES ||
        memcmp(evidence, "NSCF", 4) != 0 || evidence[4] != 1)
        return false;
    uint64_t r = 0;
    for (int i = 0; i < 8; i++)
        r = r << 8 | evidence[5 + i];
    *round = r;
    memcpy(bundle_hash, evidence + 13, NS_SHA256_BYTES);
    return true;
}

void ns_ledger_set_judge(ns_ledger *ledger, ns_ledger_judge_fn fn, void *arg)
{
    ledger->judge = fn;
    ledger->judge_arg = arg;
}

int ns_ledger_apply(ns_ledger *ledger, const uint8_t *buf, size_t len, uint64_t now_ms, char *why)
{
    if (why != NULL)
        why[0] = '\0';
    ns_entry e;
    int rc = ns_entry_open(buf, len, now_ms, &e);
    if (rc != NS_OK)
        return refuse(why, rc, "the entry does not verify: %s", ns_strerror(rc));
    sqlite3 *db = ledger->db;
    int64_t seen = 0;
    rc = query_int(db, "SELECT count(*) FROM entries WHERE hash = ?1", &seen, "b", e.hash);
    if (rc != NS_OK)
        return rc;
    if (seen != 0)
        return NS_EEXIST;
    rc = ns__ledger_exec(db, "BEGIN IMMEDIATE");
    if (rc != NS_OK)
        return rc;
    rc = apply_in_transaction(ledger, &e, buf, len, now_ms, why);
    /* a fork is a finding to keep: its rows commit although the entry is refused */
    int keep = rc == NS_EFORK ? NS_OK : rc;
    int end = ns__ledger_end_transaction(db, keep);
    return end != NS_OK ? end : rc;
}

int ns_ledger_append(ns_ledger *ledger, const ns_key *key, ns_entry *e, uint64_t now_ms,
                     uint8_t **out, size_t *out_len, char *why)
{
    ns_account a;
    int rc = ns_ledger_account(ledger, key->node_id, &a);
    if (rc != NS_OK)
        return rc;
    e->sequence = a.sequence + 1;
    e->timestamp_ms = now_ms;
    memcpy(e->prev_hash, a.head_hash, NS_SHA256_BYTES);
    uint8_t *buf;
    size_t len;
    rc = ns_entry_sign(key, e, &buf, &len);
    if (rc != NS_OK)
        return refuse(why, rc, "cannot sign the entry: %s", ns_strerror(rc));
    rc = ns_ledger_apply(ledger, buf, len, now_ms, why);
    if (rc != NS_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = len;
    return NS_OK;
}

/* ---- reading entries ---------------------------------------------------------------------- */

int ns_ledger_each_entry(ns_ledger *ledger, int64_t from_id, ns_ledger_entry_fn fn, void *arg,
                         int64_t *last_id)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err =
        ns__ledger_prepare(db, "SELECT id, record FROM entries WHERE id > ?1 ORDER BY id", &stmt);
    if (err == NS_OK)
        err = bind_int(db, stmt, 1, from_id);
    if (err == NS_OK)
        err = ns__ledger_each_row(db, stmt, fn, arg, last_id);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_account_entries(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES],
                              uint32_t limit, ns_ledger_entry_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT id, record FROM entries WHERE account = ?1"
                                 " ORDER BY sequence DESC LIMIT ?2",
                                 &stmt);
    if (err == NS_OK)
        err = bind_blob(db, stmt, 1, node_id, NS_NODE_ID_BYTES);
    if (err == NS_OK)
        err = bind_int(db, stmt, 2, limit);
    if (err == NS_OK)
        err = ns__ledger_each_row(db, stmt, fn, arg, NULL);
    return ns__ledger_finish(db, stmt, err);
}

/* ---- checking ----------------------------------------------------------------------------- */

typedef struct replay {
    ns_ledger *into;
    ns_ledger_report *report;
    int err;
} replay;

/* A replay judges each challenge as the ledger did when it applied it. */
typedef struct recorded {
    ns_ledger *source, *into;
} recorded;

static ns_judgement judge_as_recorded(void *arg, const ns_proof *proof, const ns_entry *challenge)
{
    (void)challenge;
    recorded *r = arg;
    int64_t fraud = -1;
    int rc = r->into->judging == NULL
                 ? NS_EINVAL
                 : query_int(r->source->db,
                             "SELECT CASE verdict WHEN 'fraud' THEN 1 ELSE 0 END FROM judgements"
                             " WHERE entry_hash = ?1 AND proof_id = ?2 UNION ALL SELECT -1 LIMIT 1",
                             &fraud, "bb", r->into->judging, proof->id);
    if (rc != NS_OK || fraud < 0)
        return NS_JUDGE_UNKNOWN;
    return fraud == 1 ? NS_JUDGE_FRAUD : NS_JUDGE_HONEST;
}

static bool replay_one(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    replay *r = arg;
    char why[NS_LEDGER_WHY_SIZE];
    int rc = ns_ledger_apply(r->into, buf, len, REPLAY_NOW_MS, why);
    if (rc != NS_OK) {
        r->report->ok = false;
        snprintf(r->report->problem, sizeof r->report->problem,
                 "entry %lld does not apply again: %s", (long long)id,
                 why[0] != '\0' ? why : ns_strerror(rc));
        return false;
    }
    r->report->entries++;
    return true;
}

static bool replay_fork(replay *r, const uint8_t *buf, size_t len)
{
    int rc = ns_ledger_apply(r->into, buf, len, REPLAY_NOW_MS, NULL);
    if (rc != NS_EFORK) {
        r->report->ok = false;
        snprintf(r->report->problem, sizeof r->report->problem,
                 "a recorded fork is not a fork on replay (%s)", ns_strerror(rc));
        return false;
    }
    return true;
}

/* Every account row of a and b, compared one by one in node-id order. */
static int compare_accounts(sqlite3 *a, sqlite3 *b, ns_ledger_report *report)
{
    static const char sql[] = "SELECT node_id, balance_nano, stake_nano, sequence, head_hash,"
                              " frozen, debt_nano FROM accounts ORDER BY node_id";
    sqlite3_stmt *sa, *sb;
    int err = ns__ledger_prepare(a, sql, &sa);
    if (err != NS_OK)
        return err;
    err = ns__ledger_prepare(b, sql, &sb);
    if (err != NS_OK)
        return ns__ledger_finish(a, sa, err);
    for (;;) {
        int ra = sqlite3_step(sa), rb = sqlite3_step(sb);
        if (ra == SQLITE_DONE && rb == SQLITE_DONE)
            break;
        if (ra != rb || ra != SQLITE_ROW) {
            if ((ra != SQLITE_ROW && ra != SQLITE_DONE) || (rb != SQLITE_ROW && rb != SQLITE_DONE))
                err = ns__ledger_error(ra != SQLITE_ROW ? a : b, ra != SQLITE_ROW ? ra : rb);
            report->ok = false;
            snprintf(report->problem, sizeof report->problem,
                     "the replay has a different number of accounts");
            break;
        }
        report->accounts++;
        for (int c = 0; c < 7; c++) {
            int na = sqlite3_column_bytes(sa, c), nb = sqlite3_column_bytes(sb, c);
            const void *va = sqlite3_column_blob(sa, c), *vb = sqlite3_column_blob(sb, c);
            if (sqlite3_column_type(sa, c) != sqlite3_column_type(sb, c) || na != nb ||
                (na > 0 && memcmp(va, vb, (size_t)na) != 0)) {
                report->ok = false;
                snprintf(report->problem, sizeof report->problem,
                         "an account differs from its replay (column %d)", c);
                break;
            }
        }
        if (!report->ok)
            break;
    }
    err = ns__ledger_finish(b, sb, err);
    return ns__ledger_finish(a, sa, err);
}

static bool each_fork(sqlite3 *db, replay *r, int *err)
{
    sqlite3_stmt *stmt;
    *err = ns__ledger_prepare(db, "SELECT other FROM forks ORDER BY rowid", &stmt);
    if (*err != NS_OK)
        return false;
    bool ok = true;
    int rc;
    while (ok && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
        ok = replay_fork(r, sqlite3_column_blob(stmt, 0), (size_t)sqlite3_column_bytes(stmt, 0));
    if (ok && rc != SQLITE_DONE)
        *err = ns__ledger_error(db, rc);
    *err = ns__ledger_finish(db, stmt, *err);
    return ok;
}

int ns_ledger_check(ns_ledger *ledger, ns_ledger_report *report)
{
    memset(report, 0, sizeof *report);
    report->ok = true;
    ns_ledger *mem;
    int err = ns__ledger_open_memory(&mem);
    if (err != NS_OK)
        return err;
    mem->window_ms = ledger->window_ms;
    mem->bond_nano = ledger->bond_nano;
    recorded judged = {.source = ledger, .into = mem};
    ns_ledger_set_judge(mem, judge_as_recorded, &judged);
    replay r = {.into = mem, .report = report};
    err = ns_ledger_each_entry(ledger, 0, replay_one, &r, NULL);
    if (err == NS_OK && report->ok)
        (void)each_fork(ledger->db, &r, &err);
    uint8_t ha[NS_SHA256_BYTES], hb[NS_SHA256_BYTES];
    if (err == NS_OK && report->ok) {
        err = ns_ledger_state_hash(ledger, ha);
        if (err == NS_OK)
            err = ns_ledger_state_hash(mem, hb);
        if (err == NS_OK && memcmp(ha, hb, sizeof ha) != 0) {
            report->ok = false;
            snprintf(report->problem, sizeof report->problem,
                     "the state hash differs from the replay's");
        }
    }
    if (err == NS_OK && report->ok)
        err = compare_accounts(ledger->db, mem->db, report);
    ns_neuro minted_b, burned_b;
    if (err == NS_OK && report->ok)
        err = ns_ledger_totals(ledger, &report->minted, &report->burned);
    if (err == NS_OK && report->ok)
        err = ns_ledger_totals(mem, &minted_b, &burned_b);
    if (err == NS_OK && report->ok &&
        (minted_b.nano != report->minted.nano || burned_b.nano != report->burned.nano)) {
        report->ok = false;
        snprintf(report->problem, sizeof report->problem, "minted or burned differ on replay");
    }
    int64_t held = 0;
    if (err == NS_OK && report->ok)
        err = query_int(ledger->db,
                        "SELECT (SELECT coalesce(sum(balance_nano + stake_nano - debt_nano), 0)"
                        " FROM accounts)"
                        " + (SELECT coalesce(sum(amount_nano), 0) FROM sends WHERE received = 0)",
                        &held, "");
    if (err == NS_OK && report->ok) {
        report->held.nano = held;
        if (held != report->minted.nano - report->burned.nano) {
            report->ok = false;
            snprintf(report->problem, sizeof report->problem,
                     "supply does not add up: held %lld != minted %lld - burned %lld",
                     (long long)held, (long long)report->minted.nano,
                     (long long)report->burned.nano);
        }
    }
    ns_ledger_close(mem);
    return err;
}
