/*
 * ledger_internal.h: what ledger.c (the file, schema and queries) shares with entries.c (applying
 * signed entries): the handle and the small SQLite helpers that map results to NS_E* codes.
 */
#ifndef NEUROSHARD_LEDGER_INTERNAL_H
#define NEUROSHARD_LEDGER_INTERNAL_H

#include <sqlite3.h>

#include "neuroshard/ledger.h"

struct ns_ledger {
    sqlite3 *db;
    uint64_t window_ms; /* the challenge window claims wait for (NS_PONW_WINDOW_MS) */
    int64_t bond_nano;  /* what a challenge bonds (NS_LEDGER_CHALLENGE_BOND) */
    ns_ledger_judge_fn judge;
    void *judge_arg;
    const uint8_t *judging; /* the hash of the challenge being judged, while the judge runs */
};

int ns__ledger_error(sqlite3 *db, int rc);
int ns__ledger_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **stmt);
/* Finalizes stmt and returns err, or finalize's own error when err was NS_OK. */
int ns__ledger_finish(sqlite3 *db, sqlite3_stmt *stmt, int err);
/* Steps a statement that must yield exactly one row (NS_ECORRUPT when there is none). */
int ns__ledger_step_row(sqlite3 *db, sqlite3_stmt *stmt);
/* Steps a statement that must be done (NS_ECORRUPT on a second row). */
int ns__ledger_step_done(sqlite3 *db, sqlite3_stmt *stmt);
int ns__ledger_exec(sqlite3 *db, const char *sql);
int ns__ledger_query_int64(sqlite3 *db, const char *sql, int64_t *out);
/* Whether the first row's first column (text) equals want. */
int ns__ledger_query_text_is(sqlite3 *db, const char *sql, const char *want, bool *equal);
/* Reads a BLOB column that must hold exactly len bytes. */
int ns__ledger_column_blob(sqlite3_stmt *stmt, int column, uint8_t *out, size_t len);
int ns__ledger_column_amount(sqlite3_stmt *stmt, int column, ns_neuro *out);
/* Steps stmt (columns: an integer id, a record blob), calling fn for each row until it returns
 * false; *last_id (may be NULL) gets the last id seen. */
int ns__ledger_each_row(sqlite3 *db, sqlite3_stmt *stmt, ns_ledger_entry_fn fn, void *arg,
                        int64_t *last_id);
/* COMMIT when err is NS_OK, else ROLLBACK; returns err or COMMIT's failure. */
int ns__ledger_end_transaction(sqlite3 *db, int err);
void ns__ledger_genesis_hash(uint8_t hash[NS_SHA256_BYTES]);
/* A fresh ledger in memory (the same schema and genesis), for replaying entries. */
int ns__ledger_open_memory(ns_ledger **out);

#endif
