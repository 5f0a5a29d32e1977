/*
 * proofs.c: the Proofs of Neural Work a node keeps (its own and its peers' that passed the
 * validator) until their challenge window closes and they are claimed, and the views gossip needs
 * of the account chains (every account's newest sequence, an account's entries from a sequence).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_internal.h"
#include "neuroshard/ponw.h"

static const char *proof_kind(uint32_t type)
{
    switch (type) {
    case NS_PROOF_TRAINING:
        return "training";
    case NS_PROOF_INFERENCE:
        return "inference";
    case NS_PROOF_DATA:
        return "data";
    default:
        return "uptime";
    }
}

static int bind_all(sqlite3 *db, sqlite3_stmt *stmt, const uint8_t *b1, size_t n1, int64_t i2)
{
    int rc = sqlite3_bind_blob(stmt, 1, b1, (int)n1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, i2);
    return rc == SQLITE_OK ? NS_OK : ns__ledger_error(db, rc);
}

int ns_ledger_proof_put(ns_ledger *ledger, const ns_proof *p, const uint8_t *buf, size_t len,
                        uint64_t now_ms)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err =
        ns__ledger_prepare(db,
                           "INSERT OR IGNORE INTO proofs (proof_id, author, kind, received_ms,"
                           " window_closes_ms, status, record)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                           &stmt);
    if (err != NS_OK)
        return err;
    uint64_t closes = p->timestamp_ms + ledger->window_ms;
    int rc = sqlite3_bind_blob(stmt, 1, p->id, NS_SHA256_BYTES, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(stmt, 2, p->author, NS_NODE_ID_BYTES, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(stmt, 3, proof_kind(p->type), -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 4, (int64_t)now_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 5, (int64_t)(closes > now_ms ? closes : now_ms));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(stmt, 6, buf, (int)len, SQLITE_STATIC);
    err = rc == SQLITE_OK ? ns__ledger_step_done(db, stmt) : ns__ledger_error(db, rc);
    if (err == NS_OK && sqlite3_changes(db) == 0)
        err = NS_EEXIST;
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_proofs_due(ns_ledger *ledger, const uint8_t author[NS_NODE_ID_BYTES], uint64_t now_ms,
                         uint32_t limit, ns_ledger_entry_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT 0, record FROM proofs WHERE author = ?1 AND"
                                 " status = 'pending' AND window_closes_ms <= ?2"
                                 " ORDER BY window_closes_ms LIMIT ?3",
                                 &stmt);
    if (err != NS_OK)
        return err;
    err = bind_all(db, stmt, author, NS_NODE_ID_BYTES, (int64_t)now_ms);
    if (err == NS_OK && sqlite3_bind_int64(stmt, 3, limit) != SQLITE_OK)
        err = NS_EIO;
    if (err == NS_OK)
        err = ns__ledger_each_row(db, stmt, fn, arg, NULL);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_proof_set_status(ns_ledger *ledger, const uint8_t id[NS_SHA256_BYTES],
                               const char *status)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db, "UPDATE proofs SET status = ?2 WHERE proof_id = ?1", &stmt);
    if (err != NS_OK)
        return err;
    int rc = sqlite3_bind_blob(stmt, 1, id, NS_SHA256_BYTES, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(stmt, 2, status, -1, SQLITE_STATIC);
    err = rc == SQLITE_OK ? ns__ledger_step_done(db, stmt) : ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_proofs_recent(ns_ledger *ledger, uint32_t limit, ns_ledger_proof_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT proof_id, author, kind, received_ms, window_closes_ms,"
                                 " status FROM proofs ORDER BY received_ms DESC, proof_id"
                                 " LIMIT ?1",
                                 &stmt);
    if (err != NS_OK)
        return err;
    if (sqlite3_bind_int64(stmt, 1, limit) != SQLITE_OK)
        err = NS_EIO;
    int rc = SQLITE_DONE;
    while (err == NS_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        ns_ledger_proof_row row = {0};
        err = ns__ledger_column_blob(stmt, 0, row.id, sizeof row.id);
        if (err == NS_OK)
            err = ns__ledger_column_blob(stmt, 1, row.author, sizeof row.author);
        if (err != NS_OK)
            break;
        snprintf(row.kind, sizeof row.kind, "%s", (const char *)sqlite3_column_text(stmt, 2));
        row.received_ms = (uint64_t)sqlite3_column_int64(stmt, 3);
        row.window_closes_ms = (uint64_t)sqlite3_column_int64(stmt, 4);
        snprintf(row.status, sizeof row.status, "%s", (const char *)sqlite3_column_text(stmt, 5));
        if (!fn(arg, &row))
            break;
    }
    if (err == NS_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_heads(ns_ledger *ledger, ns_ledger_head_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err =
        ns__ledger_prepare(db, "SELECT node_id, sequence FROM accounts ORDER BY node_id", &stmt);
    if (err != NS_OK)
        return err;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        uint8_t id[NS_NODE_ID_BYTES];
        err = ns__ledger_column_blob(stmt, 0, id, sizeof id);
        if (err != NS_OK || !fn(arg, id, (uint64_t)sqlite3_column_int64(stmt, 1)))
            break;
    }
    if (err == NS_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_account_from(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES],
                           uint64_t from_sequence, uint32_t limit, ns_ledger_entry_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT id, record FROM entries WHERE account = ?1 AND"
                                 " sequence >= ?2 ORDER BY sequence LIMIT ?3",
                                 &stmt);
    if (err != NS_OK)
        return err;
    err = bind_all(db, stmt, node_id, NS_NODE_ID_BYTES, (int64_t)from_sequence);
    if (err == NS_OK && sqlite3_bind_int64(stmt, 3, limit) != SQLITE_OK)
        err = NS_EIO;
    if (err == NS_OK)
        err = ns__ledger_each_row(db, stmt, fn, arg, NULL);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_sends_pending(ns_ledger *ledger, const uint8_t recipient[NS_NODE_ID_BYTES],
                            ns_ledger_entry_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT 0, hash, amount_nano FROM sends WHERE recipient = ?1"
                                 " AND received = 0 ORDER BY hash",
                                 &stmt);
    if (err != NS_OK)
        return err;
    if (sqlite3_bind_blob(stmt, 1, recipient, NS_NODE_ID_BYTES, SQLITE_STATIC) != SQLITE_OK)
        err = NS_EIO;
    int rc = SQLITE_DONE;
    while (err == NS_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        uint8_t hash[NS_SHA256_BYTES];
        err = ns__ledger_column_blob(stmt, 1, hash, sizeof hash);
        if (err != NS_OK ||
            !fn(arg, sqlite3_column_int64(stmt, 0), hash, (size_t)sqlite3_column_int64(stmt, 2)))
            break;
    }
    if (err == NS_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_last_proof_end(ns_ledger *ledger, const uint8_t author[NS_NODE_ID_BYTES],
                             uint64_t *end_ms)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT coalesce(max(window_closes_ms), 0) FROM proofs"
                                 " WHERE author = ?1",
                                 &stmt);
    if (err != NS_OK)
        return err;
    if (sqlite3_bind_blob(stmt, 1, author, NS_NODE_ID_BYTES, SQLITE_STATIC) != SQLITE_OK)
        err = NS_EIO;
    if (err == NS_OK)
        err = ns__ledger_step_row(db, stmt);
    if (err == NS_OK) {
        int64_t closes = sqlite3_column_int64(stmt, 0);
        *end_ms = closes >= (int64_t)ledger->window_ms ? (uint64_t)closes - ledger->window_ms : 0;
    }
    return ns__ledger_finish(db, stmt, err);
}

/* The record of the one row sql (with ?1 a 32-byte blob and ?2 an integer) finds. */
static int one_record(ns_ledger *ledger, const char *sql, const uint8_t *key, int64_t arg,
                      uint8_t **out, size_t *out_len)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db, sql, &stmt);
    if (err != NS_OK)
        return err;
    if (sqlite3_bind_blob(stmt, 1, key, NS_SHA256_BYTES, SQLITE_STATIC) != SQLITE_OK ||
        (sqlite3_bind_parameter_count(stmt) >= 2 && sqlite3_bind_int64(stmt, 2, arg) != SQLITE_OK))
        err = NS_EIO;
    int rc = err == NS_OK ? sqlite3_step(stmt) : SQLITE_DONE;
    if (err == NS_OK && rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_bytes(stmt, 0);
        uint8_t *copy = malloc(n > 0 ? n : 1);
        if (copy == NULL) {
            err = NS_ENOMEM;
        } else {
            memcpy(copy, sqlite3_column_blob(stmt, 0), n);
            *out = copy;
            *out_len = n;
        }
    } else if (err == NS_OK) {
        err = rc == SQLITE_DONE ? NS_ENOENT : ns__ledger_error(db, rc);
    }
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_proof_record(ns_ledger *ledger, const uint8_t id[NS_SHA256_BYTES], uint8_t **out,
                           size_t *out_len)
{
    return one_record(ledger, "SELECT record FROM proofs WHERE proof_id = ?1", id, 0, out, out_len);
}

int ns_ledger_previous_training_proof(ns_ledger *ledger, const uint8_t author[NS_NODE_ID_BYTES],
                                      uint64_t before_ms, uint8_t **out, size_t *out_len)
{
    /* a proof's window closes at its end + the window: the newest ending before before_ms */
    return one_record(ledger,
                      "SELECT record FROM proofs WHERE author = ?1 AND kind = 'training' AND"
                      " window_closes_ms < ?2 ORDER BY window_closes_ms DESC LIMIT 1",
                      author, (int64_t)(before_ms + ledger->window_ms), out, out_len);
}

int ns_ledger_judgements(ns_ledger *ledger, ns_ledger_judgement_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT proof_id, prover, challenger, verdict = 'fraud',"
                                 " slashed_nano FROM judgements ORDER BY proof_id, challenger",
                                 &stmt);
    if (err != NS_OK)
        return err;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        ns_ledger_judgement j = {.fraud = sqlite3_column_int64(stmt, 3) != 0};
        err = ns__ledger_column_blob(stmt, 0, j.proof_id, sizeof j.proof_id);
        if (err == NS_OK)
            err = ns__ledger_column_blob(stmt, 1, j.prover, sizeof j.prover);
        if (err == NS_OK)
            err = ns__ledger_column_blob(stmt, 2, j.challenger, sizeof j.challenger);
        if (err == NS_OK)
            err = ns__ledger_column_amount(stmt, 4, &j.slashed);
        if (err != NS_OK || !fn(arg, &j))
            break;
    }
    if (err == NS_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}

int ns_ledger_training_rounds(ns_ledger *ledger, uint32_t limit, ns_ledger_round_fn fn, void *arg)
{
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT round_id, time_ms, contributors, batch_size, loss_before,"
                                 " loss_after, minted_nano, checkpoint_hash FROM training_rounds"
                                 " ORDER BY round_id DESC LIMIT ?1",
                                 &stmt);
    if (err != NS_OK)
        return err;
    if (sqlite3_bind_int64(stmt, 1, limit) != SQLITE_OK)
        err = NS_EIO;
    int rc = SQLITE_DONE;
    while (err == NS_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        ns_training_round r = {.round_id = sqlite3_column_int64(stmt, 0),
                               .time_ms = (uint64_t)sqlite3_column_int64(stmt, 1),
                               .contributors = (uint32_t)sqlite3_column_int64(stmt, 2),
                               .batch_size = (uint64_t)sqlite3_column_int64(stmt, 3),
                               .loss_before = sqlite3_column_double(stmt, 4),
                               .loss_after = sqlite3_column_double(stmt, 5)};
        err = ns__ledger_column_amount(stmt, 6, &r.minted);
        if (err == NS_OK)
            err = ns__ledger_column_blob(stmt, 7, r.checkpoint_hash, sizeof r.checkpoint_hash);
        if (err != NS_OK || !fn(arg, &r))
            break;
    }
    if (err == NS_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}
