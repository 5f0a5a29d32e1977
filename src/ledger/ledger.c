/*
 * ledger.c: the NEURO ledger's SQLite file: opening it safely, its schema, genesis, and queries.
 *
 * Opening an existing file verifies before it writes: the file is opened read-write but never
 * created, its application_id, user_version and PRAGMA integrity_check are read with checkpoint on
 * close turned off, and only a file that passes gets WAL mode, synchronous=FULL, foreign keys and
 * any pending migrations. A refused file is left byte-for-byte as it was, and the -wal and -shm
 * files SQLite made while reading it are removed again. A new file gets the schema and the genesis
 * row in one transaction. Migrations are SQL strings indexed by schema version, each applied in
 * its own transaction that also bumps PRAGMA user_version. Amounts are INTEGER nano-NEURO with
 * CHECK constraints that keep them non-negative; no query here ever uses floating point for them.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "ledger_internal.h"
#include "neuroshard/ponw.h"

#define LEDGER_GENESIS_DOMAIN   "neuroshard/genesis/v1"
#define LEDGER_PATH_BYTES_MAX   4096
#define LEDGER_PRAGMA_BYTES_MAX 64

/* ---- schema ------------------------------------------------------------------------------- */

/*
 * Version 1.
 *   meta             key/value facts about the file (which software created it).
 *   accounts         one row an account: balance, stake, and the head of its hash-linked chain.
 *   entries          every applied entry of every account's chain; (account, sequence) is unique,
 *                    so a second entry with one sequence (a fork, proof of fraud) cannot be
 *                    applied. kind 'claim' mints a reward for an accepted proof; 'burn' destroys a
 *                    fee or the burned half of a slash; the others move what already exists.
 *   proofs           Proofs of Neural Work seen (S9), until their challenge window closes.
 *   training_rounds  the Intelligence Ledger (S10): one row a training round.
 *   genesis          the single GENESIS_BLOCK row: nothing minted, no reward.
 */
static const char *const migrations[] = {
    [0] = NULL, /* version 0 is the empty file */
    [1] = "CREATE TABLE meta ("
          "  key TEXT PRIMARY KEY NOT NULL,"
          "  value ANY NOT NULL"
          ") STRICT;"
          "CREATE TABLE accounts ("
          "  node_id BLOB PRIMARY KEY NOT NULL CHECK (length(node_id) = 32),"
          "  balance_nano INTEGER NOT NULL DEFAULT 0 CHECK (balance_nano >= 0),"
          "  stake_nano INTEGER NOT NULL DEFAULT 0 CHECK (stake_nano >= 0),"
          "  sequence INTEGER NOT NULL DEFAULT 0 CHECK (sequence >= 0),"
          "  head_hash BLOB NOT NULL CHECK (length(head_hash) = 32)"
          ") STRICT, WITHOUT ROWID;"
          "CREATE TABLE entries ("
          "  id INTEGER PRIMARY KEY,"
          "  account BLOB NOT NULL REFERENCES accounts (node_id),"
          "  sequence INTEGER NOT NULL CHECK (sequence >= 1),"
          "  kind TEXT NOT NULL CHECK (kind IN ('claim', 'send', 'receive', 'stake', 'unstake',"
          "                                     'vote', 'burn', 'slash')),"
          "  amount_nano INTEGER NOT NULL CHECK (amount_nano >= 0),"
          "  prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),"
          "  hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),"
          "  record BLOB NOT NULL,"
          "  applied_ms INTEGER NOT NULL CHECK (applied_ms >= 0),"
          "  UNIQUE (account, sequence)"
          ") STRICT;"
          "CREATE INDEX entries_by_kind ON entries (kind);"
          "CREATE TABLE proofs ("
          "  proof_id BLOB PRIMARY KEY NOT NULL CHECK (length(proof_id) = 32),"
          "  author BLOB NOT NULL CHECK (length(author) = 32),"
          "  kind TEXT NOT NULL,"
          "  received_ms INTEGER NOT NULL CHECK (received_ms >= 0),"
          "  window_closes_ms INTEGER NOT NULL CHECK (window_closes_ms >= received_ms),"
          "  status TEXT NOT NULL CHECK (status IN ('pending', 'challenged', 'accepted',"
          "                                         'rejected', 'claimed')),"
          "  record BLOB NOT NULL"
          ") STRICT, WITHOUT ROWID;"
          "CREATE INDEX proofs_by_window ON proofs (status, window_closes_ms);"
          "CREATE INDEX proofs_by_author ON proofs (author, received_ms);"
          "CREATE TABLE training_rounds ("
          "  round_id INTEGER PRIMARY KEY CHECK (round_id >= 0),"
          "  time_ms INTEGER NOT NULL CHECK (time_ms >= 0),"
          "  contributors INTEGER NOT NULL CHECK (contributors >= 0),"
          "  batch_size INTEGER NOT NULL CHECK (batch_size >= 0),"
          "  loss_before REAL NOT NULL,"
          "  loss_after REAL NOT NULL,"
          "  minted_nano INTEGER NOT NULL CHECK (minted_nano >= 0),"
          "  checkpoint_hash BLOB NOT NULL CHECK (length(checkpoint_hash) = 32)"
          ") STRICT;"
          "CREATE TABLE genesis ("
          "  id INTEGER PRIMARY KEY CHECK (id = 1),"
          "  created_ms INTEGER NOT NULL CHECK (created_ms >= 0),"
          "  total_minted_nano INTEGER NOT NULL CHECK (total_minted_nano = 0),"
          "  reward_nano INTEGER NOT NULL CHECK (reward_nano = 0),"
          "  hash BLOB NOT NULL CHECK (length(hash) = 32)"
          ") STRICT;",
    /*
     * Version 2: applying signed entries (entries.c).
     *   sends   every applied send: what its recipient may take in with one receive.
     *   claims  every claimed proof, so none is paid twice and no two claimed periods of one
     *           author overlap.
     *   forks   pairs of entries with one (account, sequence): the fraud proof; the account is
     *           frozen from then on.
     *   burns   every burn and its cause (the fee of a send; slashes later).
     */
    [2] = "CREATE TABLE sends ("
          "  hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),"
          "  sender BLOB NOT NULL CHECK (length(sender) = 32),"
          "  recipient BLOB NOT NULL CHECK (length(recipient) = 32),"
          "  amount_nano INTEGER NOT NULL CHECK (amount_nano >= 0),"
          "  received INTEGER NOT NULL DEFAULT 0 CHECK (received IN (0, 1))"
          ") STRICT, WITHOUT ROWID;"
          "CREATE INDEX sends_by_recipient ON sends (recipient, received);"
          "CREATE TABLE claims ("
          "  proof_id BLOB PRIMARY KEY NOT NULL CHECK (length(proof_id) = 32),"
          "  author BLOB NOT NULL CHECK (length(author) = 32),"
          "  period_start_ms INTEGER NOT NULL CHECK (period_start_ms >= 0),"
          "  period_end_ms INTEGER NOT NULL CHECK (period_end_ms > period_start_ms),"
          "  reward_nano INTEGER NOT NULL CHECK (reward_nano >= 0)"
          ") STRICT, WITHOUT ROWID;"
          "CREATE INDEX claims_by_author ON claims (author, period_end_ms);"
          "CREATE TABLE forks ("
          "  account BLOB NOT NULL CHECK (length(account) = 32),"
          "  sequence INTEGER NOT NULL CHECK (sequence >= 1),"
          "  applied BLOB NOT NULL,"
          "  other BLOB NOT NULL,"
          "  PRIMARY KEY (account, sequence)"
          ") STRICT;"
          "CREATE TABLE burns ("
          "  id INTEGER PRIMARY KEY,"
          "  cause TEXT NOT NULL CHECK (cause IN ('fee', 'slash')),"
          "  entry_hash BLOB NOT NULL CHECK (length(entry_hash) = 32),"
          "  amount_nano INTEGER NOT NULL CHECK (amount_nano > 0)"
          ") STRICT;"
          "ALTER TABLE accounts ADD COLUMN frozen INTEGER NOT NULL DEFAULT 0"
          "  CHECK (frozen IN (0, 1));",
    /*
     * Version 3: challenges of proofs by recompute.
     *   entries     rebuilt (SQLite cannot change a CHECK in place) to allow kind 'challenge'.
     *   judgements  one row a challenged proof: this node's recompute found it fraudulent (the
     *               prover was slashed) or honest (the challenger lost its bond).
     */
    [3] = "CREATE TABLE entries_v3 ("
          "  id INTEGER PRIMARY KEY,"
          "  account BLOB NOT NULL REFERENCES accounts (node_id),"
          "  sequence INTEGER NOT NULL CHECK (sequence >= 1),"
          "  kind TEXT NOT NULL CHECK (kind IN ('claim', 'send', 'receive', 'stake', 'unstake',"
          "                                     'challenge', 'vote', 'burn', 'slash')),"
          "  amount_nano INTEGER NOT NULL CHECK (amount_nano >= 0),"
          "  prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),"
          "  hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),"
          "  record BLOB NOT NULL,"
          "  applied_ms INTEGER NOT NULL CHECK (applied_ms >= 0),"
          "  UNIQUE (account, sequence)"
          ") STRICT;"
          "INSERT INTO entries_v3 SELECT * FROM entries;"
          "DROP TABLE entries;"
          "ALTER TABLE entries_v3 RENAME TO entries;"
          "CREATE INDEX entries_by_kind ON entries (kind);"
          "CREATE TABLE judgements ("
          "  proof_id BLOB PRIMARY KEY NOT NULL CHECK (length(proof_id) = 32),"
          "  prover BLOB NOT NULL CHECK (length(prover) = 32),"
          "  challenger BLOB NOT NULL CHECK (length(challenger) = 32),"
          "  verdict TEXT NOT NULL CHECK (verdict IN ('fraud', 'honest')),"
          "  slashed_nano INTEGER NOT NULL CHECK (slashed_nano >= 0),"
          "  entry_hash BLOB NOT NULL CHECK (length(entry_hash) = 32)"
          ") STRICT, WITHOUT ROWID;",
    /*
     * Version 4: challenges whose effects do not depend on the order entries arrive in.
     *   accounts.debt_nano  what slashes took beyond the account's own chain: kept apart so that
     *                       the account's own spending rules read its own chain only.
     *   judgements          one row a challenge (keyed by its entry), not one a proof: several
     *                       challengers may each prove one fraud; one challenge a challenger.
     */
    [4] = "ALTER TABLE accounts ADD COLUMN debt_nano INTEGER NOT NULL DEFAULT 0"
          "  CHECK (debt_nano >= 0);"
          "CREATE TABLE judgements_v4 ("
          "  entry_hash BLOB PRIMARY KEY NOT NULL CHECK (length(entry_hash) = 32),"
          "  proof_id BLOB NOT NULL CHECK (length(proof_id) = 32),"
          "  prover BLOB NOT NULL CHECK (length(prover) = 32),"
          "  challenger BLOB NOT NULL CHECK (length(challenger) = 32),"
          "  verdict TEXT NOT NULL CHECK (verdict IN ('fraud', 'honest')),"
          "  slashed_nano INTEGER NOT NULL CHECK (slashed_nano >= 0),"
          "  UNIQUE (proof_id, challenger)"
          ") STRICT, WITHOUT ROWID;"
          "INSERT INTO judgements_v4 SELECT entry_hash, proof_id, prover, challenger, verdict,"
          "  slashed_nano FROM judgements;"
          "DROP TABLE judgements;"
          "ALTER TABLE judgements_v4 RENAME TO judgements;",
};

static_assert(sizeof migrations / sizeof migrations[0] == NS_LEDGER_SCHEMA_VERSION + 1,
              "one migration for every schema version");
static_assert(NS_LEDGER_APPLICATION_ID <= INT32_MAX, "application_id is read back as positive");

/* ---- SQLite results ----------------------------------------------------------------------- */

/* Maps a SQLite result code to an NS_E* code and logs SQLite's own words for it. */
int ns__ledger_error(sqlite3 *db, int rc)
{
    NS_ASSERT(rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE);
    const char *message = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    NS_LOG_D("ledger", "sqlite error rc=%d msg=\"%s\"", rc, message);
    switch (rc & 0xff) {
    case SQLITE_NOMEM:
        return NS_ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return NS_ELOCKED;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
    case SQLITE_SCHEMA:
        return NS_ECORRUPT;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return NS_EPERM;
    case SQLITE_TOOBIG:
        return NS_ETOOBIG;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return NS_EINVAL;
    case SQLITE_ERROR:
        /* sum() over integers stops with this message rather than wrapping. Any other plain
         * error on our own statements means the file's schema is not the one we wrote. */
        return strcmp(message, "integer overflow") == 0 ? NS_EOVERFLOW : NS_ECORRUPT;
    default:
        return NS_EIO;
    }
}

int ns__ledger_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **stmt)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, stmt, NULL);
    if (rc != SQLITE_OK)
        return ns__ledger_error(db, rc);
    NS_ASSERT(*stmt != NULL);
    return NS_OK;
}

/* Finalizes stmt and returns err, or finalize's own error when err was NS_OK. */
int ns__ledger_finish(sqlite3 *db, sqlite3_stmt *stmt, int err)
{
    int rc = sqlite3_finalize(stmt);
    if (err == NS_OK && rc != SQLITE_OK)
        return ns__ledger_error(db, rc);
    return err;
}

/* Steps a statement that must yield exactly one row; the caller reads the row, then calls
 * ledger_step_done. */
int ns__ledger_step_row(sqlite3 *db, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        return NS_OK;
    if (rc == SQLITE_DONE)
        return NS_ECORRUPT; /* a row our schema guarantees is missing */
    return ns__ledger_error(db, rc);
}

int ns__ledger_step_done(sqlite3 *db, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE)
        return NS_OK;
    if (rc == SQLITE_ROW)
        return NS_ECORRUPT; /* a second row where our schema allows one */
    return ns__ledger_error(db, rc);
}

int ns__ledger_exec(sqlite3 *db, const char *sql)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? NS_OK : ns__ledger_error(db, rc);
}

/* Runs a statement of one row and one integer column, such as a PRAGMA or a count. */
int ns__ledger_query_int64(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db, sql, &stmt);
    if (err != NS_OK)
        return err;
    err = ns__ledger_step_row(db, stmt);
    if (err == NS_OK && sqlite3_column_type(stmt, 0) != SQLITE_INTEGER)
        err = NS_ECORRUPT;
    if (err == NS_OK) {
        *out = sqlite3_column_int64(stmt, 0);
        err = ns__ledger_step_done(db, stmt);
    }
    return ns__ledger_finish(db, stmt, err);
}

/* Runs a statement whose first row's first column is text, and tells whether it equals want. */
int ns__ledger_query_text_is(sqlite3 *db, const char *sql, const char *want, bool *equal)
{
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db, sql, &stmt);
    if (err != NS_OK)
        return err;
    err = ns__ledger_step_row(db, stmt);
    if (err == NS_OK) {
        const unsigned char *text = sqlite3_column_text(stmt, 0);
        if (text == NULL && sqlite3_errcode(db) == SQLITE_NOMEM)
            err = NS_ENOMEM;
        else
            *equal = text != NULL && strcmp((const char *)text, want) == 0;
    }
    return ns__ledger_finish(db, stmt, err);
}

/* Reads a BLOB column that must hold exactly len bytes. */
int ns__ledger_column_blob(sqlite3_stmt *stmt, int column, uint8_t *out, size_t len)
{
    if (sqlite3_column_type(stmt, column) != SQLITE_BLOB)
        return NS_ECORRUPT;
    const void *blob = sqlite3_column_blob(stmt, column);
    if (blob == NULL || (size_t)sqlite3_column_bytes(stmt, column) != len)
        return NS_ECORRUPT;
    memcpy(out, blob, len);
    return NS_OK;
}

int ns__ledger_column_amount(sqlite3_stmt *stmt, int column, ns_neuro *out)
{
    if (sqlite3_column_type(stmt, column) != SQLITE_INTEGER)
        return NS_ECORRUPT;
    int64_t nano = sqlite3_column_int64(stmt, column);
    if (nano < 0)
        return NS_ECORRUPT; /* the CHECK constraints keep every stored amount non-negative */
    out->nano = nano;
    return NS_OK;
}

int ns__ledger_each_row(sqlite3 *db, sqlite3_stmt *stmt, ns_ledger_entry_fn fn, void *arg,
                        int64_t *last_id)
{
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(stmt, 0);
        const uint8_t *rec = sqlite3_column_blob(stmt, 1);
        int n = sqlite3_column_bytes(stmt, 1);
        if (last_id != NULL)
            *last_id = id;
        if (!fn(arg, id, rec, (size_t)n))
            return NS_OK;
    }
    return rc == SQLITE_DONE ? NS_OK : ns__ledger_error(db, rc);
}

/* ---- opening: verify before writing ------------------------------------------------------- */

/* Reads what an existing (or just created, empty) file says about itself, writing nothing.
 * *is_new is set for a file with no schema at all: zero bytes, or a bare SQLite header. */
static int ledger_verify(sqlite3 *db, bool *is_new)
{
    int64_t application_id;
    int64_t version;
    int64_t objects;
    int err = ns__ledger_query_int64(db, "PRAGMA application_id", &application_id);
    if (err == NS_OK)
        err = ns__ledger_query_int64(db, "PRAGMA user_version", &version);
    if (err == NS_OK)
        err = ns__ledger_query_int64(db, "SELECT count(*) FROM sqlite_schema", &objects);
    if (err != NS_OK)
        return err;

    *is_new = application_id == 0 && version == 0 && objects == 0;
    if (*is_new)
        return NS_OK;
    if (application_id != (int64_t)NS_LEDGER_APPLICATION_ID)
        return NS_EFOREIGN;
    if (version > NS_LEDGER_SCHEMA_VERSION)
        return NS_EFOREIGN;
    if (version < 1)
        return NS_ECORRUPT; /* ours, but the schema that is written with the mark is missing */

    bool ok = false;
    err = ns__ledger_query_text_is(db, "PRAGMA integrity_check", "ok", &ok);
    if (err != NS_OK)
        return err;
    return ok ? NS_OK : NS_ECORRUPT;
}

/* Settings of the connection. journal_mode=WAL is stored in the file; the others are not. */
static int ledger_configure(sqlite3 *db)
{
    bool wal = false;
    int err = ns__ledger_query_text_is(db, "PRAGMA journal_mode=WAL", "wal", &wal);
    if (err != NS_OK)
        return err;
    if (!wal)
        return NS_EIO; /* e.g. a file system without shared memory for the WAL index */
    err = ns__ledger_exec(db, "PRAGMA synchronous=FULL");
    if (err == NS_OK)
        err = ns__ledger_exec(db, "PRAGMA foreign_keys=ON");
    return err;
}

static int ledger_set_pragma(sqlite3 *db, const char *name, int64_t value)
{
    char sql[LEDGER_PRAGMA_BYTES_MAX];
    int n = snprintf(sql, sizeof sql, "PRAGMA %s = %" PRId64, name, value);
    NS_ASSERT(n > 0 && (size_t)n < sizeof sql);
    return ns__ledger_exec(db, sql);
}

/* The schema of one version and the user_version that says it is there; inside a transaction. */
static int ledger_apply_migration(sqlite3 *db, int version)
{
    NS_ASSERT(version >= 1 && version <= NS_LEDGER_SCHEMA_VERSION);
    NS_ASSERT(migrations[version] != NULL);
    int err = ns__ledger_exec(db, migrations[version]);
    if (err == NS_OK)
        err = ledger_set_pragma(db, "user_version", version);
    return err;
}

/* Ends the open transaction: COMMIT when err is NS_OK, else ROLLBACK (whose own failure cannot
 * make things worse: SQLite rolls back a transaction it cannot finish when the file is next
 * opened). */
int ns__ledger_end_transaction(sqlite3 *db, int err)
{
    if (err == NS_OK)
        err = ns__ledger_exec(db, "COMMIT");
    if (err != NS_OK && !sqlite3_get_autocommit(db)) {
        int rc = sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            NS_LOG_W("ledger", "rollback failed rc=%d", rc);
    }
    return err;
}

static int ledger_migrate(sqlite3 *db)
{
    int64_t version;
    int err = ns__ledger_query_int64(db, "PRAGMA user_version", &version);
    if (err != NS_OK)
        return err;
    NS_ASSERT(version >= 1 && version <= NS_LEDGER_SCHEMA_VERSION); /* ledger_verify checked */
    for (int v = (int)version + 1; v <= NS_LEDGER_SCHEMA_VERSION; v++) {
        err = ns__ledger_exec(db, "BEGIN IMMEDIATE");
        if (err != NS_OK)
            return err;
        err = ns__ledger_end_transaction(db, ledger_apply_migration(db, v));
        if (err != NS_OK)
            return err;
        NS_LOG_I("ledger", "migrated version=%d", v);
    }
    return NS_OK;
}

/* SHA-256(LEDGER_GENESIS_DOMAIN): one genesis for the whole swarm, whenever a node made its file,
 * so that two honest nodes that saw the same entries have the same state hash. When this node
 * created its file (created_ms) is local bookkeeping and stays out of every hash. */
void ns__ledger_genesis_hash(uint8_t hash[NS_SHA256_BYTES])
{
    ns_sha256(hash, LEDGER_GENESIS_DOMAIN, sizeof LEDGER_GENESIS_DOMAIN - 1);
}

static int ledger_insert_genesis(sqlite3 *db, uint64_t created_ms)
{
    uint8_t hash[NS_SHA256_BYTES];
    ns__ledger_genesis_hash(hash);
    sqlite3_stmt *stmt;
    int err =
        ns__ledger_prepare(db,
                           "INSERT INTO genesis (id, created_ms, total_minted_nano, reward_nano,"
                           " hash) VALUES (1, ?1, 0, 0, ?2)",
                           &stmt);
    if (err != NS_OK)
        return err;
    int rc = sqlite3_bind_int64(stmt, 1, (sqlite3_int64)created_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob(stmt, 2, hash, sizeof hash, SQLITE_STATIC);
    err = rc == SQLITE_OK ? ns__ledger_step_done(db, stmt) : ns__ledger_error(db, rc);
    return ns__ledger_finish(db, stmt, err);
}

/* A new file: the mark, every migration, the genesis row and the meta facts, all or nothing. */
static int ledger_create(sqlite3 *db, uint64_t created_ms)
{
    int err = ns__ledger_exec(db, "BEGIN IMMEDIATE");
    if (err != NS_OK)
        return err;
    err = ledger_set_pragma(db, "application_id", (int64_t)NS_LEDGER_APPLICATION_ID);
    for (int v = 1; err == NS_OK && v <= NS_LEDGER_SCHEMA_VERSION; v++)
        err = ledger_apply_migration(db, v);
    if (err == NS_OK)
        err = ledger_insert_genesis(db, created_ms);
    if (err == NS_OK)
        err = ns__ledger_exec(db, "INSERT INTO meta (key, value) VALUES"
                                  " ('created_by', 'neuroshard " NS_VERSION "')");
    return ns__ledger_end_transaction(db, err);
}

/* ---- opening: the file and its neighbours ------------------------------------------------- */

/* Which of the files SQLite keeps beside the database existed before we opened it. */
typedef struct ledger_side_files {
    char wal_path[LEDGER_PATH_BYTES_MAX];
    char shm_path[LEDGER_PATH_BYTES_MAX];
    bool wal_existed;
    bool shm_existed;
} ledger_side_files;

static bool path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int ledger_side_files_note(ledger_side_files *side, const char *path)
{
    int n = snprintf(side->wal_path, sizeof side->wal_path, "%s-wal", path);
    if (n < 0 || (size_t)n >= sizeof side->wal_path)
        return NS_ETOOBIG;
    n = snprintf(side->shm_path, sizeof side->shm_path, "%s-shm", path);
    if (n < 0 || (size_t)n >= sizeof side->shm_path)
        return NS_ETOOBIG;
    side->wal_existed = path_exists(side->wal_path);
    side->shm_existed = path_exists(side->shm_path);
    return NS_OK;
}

/* Removes the side files that opening made: the shared-memory index (derived data), and the WAL
 * while it is still empty (nothing but our own reading made it) or when wal_any_size (the database
 * it belonged to was ours and is gone). Files that were there before are never touched. */
static void ledger_side_files_remove_new(const ledger_side_files *side, bool wal_any_size)
{
    struct stat st;
    if (!side->wal_existed && lstat(side->wal_path, &st) == 0 && S_ISREG(st.st_mode) &&
        (st.st_size == 0 || wal_any_size) && unlink(side->wal_path) != 0)
        NS_LOG_W("ledger", "cannot remove path=%s errno=%d", side->wal_path, errno);
    if (!side->shm_existed && lstat(side->shm_path, &st) == 0 && S_ISREG(st.st_mode) &&
        unlink(side->shm_path) != 0)
        NS_LOG_W("ledger", "cannot remove path=%s errno=%d", side->shm_path, errno);
}

/* Opens the connection: read-write, and CREATE only when there is no file at all. */
static int ledger_connect(const char *path, bool exists, sqlite3 **out)
{
    int flags = SQLITE_OPEN_READWRITE | (exists ? 0 : SQLITE_OPEN_CREATE);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_extended_result_codes(db, 1);
    /* While we only read, closing must not checkpoint a WAL that another program left into the
     * file; ledger_accept turns checkpoints back on. */
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
    if (rc != SQLITE_OK) {
        int err = rc == SQLITE_CANTOPEN && sqlite3_system_errno(db) == EACCES
                      ? NS_EPERM
                      : ns__ledger_error(db, rc);
        sqlite3_close(db);
        return err;
    }
    if (sqlite3_db_readonly(db, "main") != 0) {
        sqlite3_close(db); /* SQLite fell back to read-only: the file is not writable to us */
        return NS_EPERM;
    }
    *out = db;
    return NS_OK;
}

/* The file passed: checkpoints on close again, the connection's settings, then the schema. */
static int ledger_accept(sqlite3 *db, bool is_new, uint64_t created_ms)
{
    int rc = sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
    if (rc != SQLITE_OK)
        return ns__ledger_error(db, rc);
    int err = ledger_configure(db);
    if (err != NS_OK)
        return err;
    return is_new ? ledger_create(db, created_ms) : ledger_migrate(db);
}

static void ledger_close_db(sqlite3 *db)
{
    int rc = sqlite3_close(db);
    NS_ASSERT(rc == SQLITE_OK); /* every statement here is finalized before its function returns */
}

/* The rules this file's swarm uses, where they were set. */
static void ledger_read_window(ns_ledger *ledger)
{
    int64_t v = 0;
    if (ns__ledger_query_int64(ledger->db,
                               "SELECT coalesce((SELECT value FROM meta WHERE key ="
                               " 'ponw_window_ms'), 0)",
                               &v) == NS_OK &&
        v > 0)
        ledger->window_ms = (uint64_t)v;
    v = 0;
    if (ns__ledger_query_int64(ledger->db,
                               "SELECT coalesce((SELECT value FROM meta WHERE key ="
                               " 'challenge_bond_nano'), 0)",
                               &v) == NS_OK &&
        v > 0)
        ledger->bond_nano = v;
}

int ns_ledger_open_at(const char *path, uint64_t now_ms, ns_ledger **out)
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(out != NULL);
    if (now_ms > INT64_MAX)
        return NS_EINVAL;
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (!exists && errno != ENOENT)
        return errno == EACCES ? NS_EPERM : NS_EIO;
    ledger_side_files side;
    int err = ledger_side_files_note(&side, path);
    if (err != NS_OK)
        return err;

    sqlite3 *db = NULL;
    err = ledger_connect(path, exists, &db);
    if (err != NS_OK)
        return err;
    bool is_new = false;
    err = ledger_verify(db, &is_new);
    if (err != NS_OK) {
        ledger_close_db(db);
        ledger_side_files_remove_new(&side, false);
        return err; /* the caller says why, once */
    }
    err = ledger_accept(db, is_new, now_ms);
    ns_ledger *ledger = err == NS_OK ? calloc(1, sizeof *ledger) : NULL;
    if (err == NS_OK && ledger == NULL)
        err = NS_ENOMEM;
    if (err != NS_OK) {
        ledger_close_db(db);
        if (!exists && unlink(path) == 0)
            ledger_side_files_remove_new(&side, true); /* leave no half-made ledger behind */
        return err;
    }
    if (is_new)
        NS_LOG_I("ledger", "created path=%s genesis_ms=%" PRIu64, path, now_ms);
    ledger->db = db;
    ledger->window_ms = NS_PONW_WINDOW_MS;
    ledger->bond_nano = NS_LEDGER_CHALLENGE_BOND;
    ledger_read_window(ledger);
    *out = ledger;
    return NS_OK;
}

int ns__ledger_open_memory(ns_ledger **out)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_close(db);
        return NS_ENOMEM;
    }
    int err = ns__ledger_exec(db, "PRAGMA foreign_keys=ON");
    if (err == NS_OK)
        err = ledger_create(db, 0);
    ns_ledger *ledger = err == NS_OK ? calloc(1, sizeof *ledger) : NULL;
    if (ledger == NULL) {
        ledger_close_db(db);
        return err != NS_OK ? err : NS_ENOMEM;
    }
    ledger->db = db;
    ledger->window_ms = NS_PONW_WINDOW_MS;
    ledger->bond_nano = NS_LEDGER_CHALLENGE_BOND;
    *out = ledger;
    return NS_OK;
}

/* Writes a rule of the swarm into meta, so that a check of the file alone replays with it. */
static int ledger_set_rule(ns_ledger *ledger, const char *key, int64_t value)
{
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(ledger->db,
                                 "INSERT INTO meta (key, value) VALUES (?1, ?2)"
                                 " ON CONFLICT (key) DO UPDATE SET value = ?2",
                                 &stmt);
    if (err != NS_OK)
        return err;
    int rc = sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, value);
    err =
        rc == SQLITE_OK ? ns__ledger_step_done(ledger->db, stmt) : ns__ledger_error(ledger->db, rc);
    return ns__ledger_finish(ledger->db, stmt, err);
}

int ns_ledger_open_memory(ns_ledger **out)
{
    return ns__ledger_open_memory(out);
}

int ns_ledger_set_window(ns_ledger *ledger, uint64_t window_ms)
{
    if (window_ms == 0 || window_ms > INT64_MAX)
        return NS_EINVAL;
    int err = ledger_set_rule(ledger, "ponw_window_ms", (int64_t)window_ms);
    if (err == NS_OK)
        ledger->window_ms = window_ms;
    return err;
}

int ns_ledger_set_bond(ns_ledger *ledger, ns_neuro bond)
{
    if (bond.nano <= 0)
        return NS_EINVAL;
    int err = ledger_set_rule(ledger, "challenge_bond_nano", bond.nano);
    if (err == NS_OK)
        ledger->bond_nano = bond.nano;
    return err;
}

int ns_ledger_open(const char *path, ns_ledger **out)
{
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    NS_ASSERT(rc == 0);
    if (ts.tv_sec < 0)
        return NS_EINVAL; /* a clock before 1970 would make a genesis no one else can check */
    uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return ns_ledger_open_at(path, now_ms, out);
}

void ns_ledger_close(ns_ledger *ledger)
{
    if (ledger == NULL)
        return;
    ledger_close_db(ledger->db);
    free(ledger);
}

/* ---- queries ------------------------------------------------------------------------------ */

int ns_ledger_height(ns_ledger *ledger, uint64_t *height)
{
    NS_ASSERT(ledger != NULL);
    NS_ASSERT(height != NULL);
    int64_t count;
    int err = ns__ledger_query_int64(ledger->db, "SELECT count(*) FROM entries", &count);
    if (err != NS_OK)
        return err;
    NS_ASSERT(count >= 0);
    *height = (uint64_t)count;
    return NS_OK;
}

int ns_ledger_balance(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES], ns_neuro *balance,
                      ns_neuro *stake)
{
    NS_ASSERT(ledger != NULL);
    NS_ASSERT(node_id != NULL);
    NS_ASSERT(balance != NULL);
    NS_ASSERT(stake != NULL);
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(
        db, "SELECT balance_nano, stake_nano FROM accounts WHERE node_id = ?1", &stmt);
    if (err != NS_OK)
        return err;
    int rc = sqlite3_bind_blob(stmt, 1, node_id, NS_NODE_ID_BYTES, SQLITE_STATIC);
    if (rc != SQLITE_OK)
        return ns__ledger_finish(db, stmt, ns__ledger_error(db, rc));
    ns_neuro found_balance = {0};
    ns_neuro found_stake = {0};
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        err = ns__ledger_column_amount(stmt, 0, &found_balance);
        if (err == NS_OK)
            err = ns__ledger_column_amount(stmt, 1, &found_stake);
        if (err == NS_OK)
            err = ns__ledger_step_done(db, stmt);
    } else if (rc != SQLITE_DONE) {
        err = ns__ledger_error(db, rc); /* SQLITE_DONE: an unknown account holds nothing */
    }
    err = ns__ledger_finish(db, stmt, err);
    if (err == NS_OK) {
        *balance = found_balance;
        *stake = found_stake;
    }
    return err;
}

int ns_ledger_totals(ns_ledger *ledger, ns_neuro *minted, ns_neuro *burned)
{
    NS_ASSERT(ledger != NULL);
    NS_ASSERT(minted != NULL);
    NS_ASSERT(burned != NULL);
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(
        db,
        "SELECT (SELECT total_minted_nano FROM genesis WHERE id = 1),"
        " (SELECT coalesce(sum(amount_nano), 0) FROM entries WHERE kind = 'claim'),"
        " (SELECT coalesce(sum(amount_nano), 0) FROM burns)",
        &stmt);
    if (err != NS_OK)
        return err;
    ns_neuro genesis_minted;
    ns_neuro claimed;
    ns_neuro burned_sum;
    err = ns__ledger_step_row(db, stmt);
    if (err == NS_OK)
        err = ns__ledger_column_amount(stmt, 0, &genesis_minted);
    if (err == NS_OK)
        err = ns__ledger_column_amount(stmt, 1, &claimed);
    if (err == NS_OK)
        err = ns__ledger_column_amount(stmt, 2, &burned_sum);
    if (err == NS_OK)
        err = ns__ledger_step_done(db, stmt);
    err = ns__ledger_finish(db, stmt, err);
    ns_neuro minted_sum;
    if (err == NS_OK)
        err = ns_neuro_add(&minted_sum, genesis_minted, claimed);
    if (err == NS_OK) {
        *minted = minted_sum;
        *burned = burned_sum;
    }
    return err;
}

int ns_ledger_genesis(ns_ledger *ledger, uint64_t *created_ms, uint8_t hash[NS_SHA256_BYTES])
{
    NS_ASSERT(ledger != NULL);
    NS_ASSERT(created_ms != NULL);
    NS_ASSERT(hash != NULL);
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db, "SELECT created_ms, hash FROM genesis WHERE id = 1", &stmt);
    if (err != NS_OK)
        return err;
    uint8_t found_hash[NS_SHA256_BYTES];
    int64_t found_ms = -1;
    err = ns__ledger_step_row(db, stmt);
    if (err == NS_OK) {
        if (sqlite3_column_type(stmt, 0) == SQLITE_INTEGER)
            found_ms = sqlite3_column_int64(stmt, 0);
        err = found_ms >= 0 ? ns__ledger_column_blob(stmt, 1, found_hash, sizeof found_hash)
                            : NS_ECORRUPT;
    }
    if (err == NS_OK)
        err = ns__ledger_step_done(db, stmt);
    err = ns__ledger_finish(db, stmt, err);
    if (err == NS_OK) {
        *created_ms = (uint64_t)found_ms;
        memcpy(hash, found_hash, sizeof found_hash);
    }
    return err;
}

int ns_ledger_state_hash(ns_ledger *ledger, uint8_t hash[NS_SHA256_BYTES])
{
    NS_ASSERT(ledger != NULL);
    NS_ASSERT(hash != NULL);
    sqlite3 *db = ledger->db;
    sqlite3_stmt *stmt;
    int err = ns__ledger_prepare(db,
                                 "SELECT node_id, head_hash, balance_nano, stake_nano, debt_nano"
                                 " FROM accounts ORDER BY node_id",
                                 &stmt);
    if (err != NS_OK)
        return err;
    crypto_hash_sha256_state state;
    int rc = crypto_hash_sha256_init(&state);
    NS_ASSERT(rc == 0);
    uint64_t accounts = 0;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        /* id, head, then balance, stake and debt as 8-byte big-endian integers */
        uint8_t row[NS_NODE_ID_BYTES + NS_SHA256_BYTES + 3 * 8];
        err = ns__ledger_column_blob(stmt, 0, row, NS_NODE_ID_BYTES);
        if (err == NS_OK)
            err = ns__ledger_column_blob(stmt, 1, row + NS_NODE_ID_BYTES, NS_SHA256_BYTES);
        if (err != NS_OK)
            break;
        for (int c = 0; c < 3; c++) {
            uint64_t v = (uint64_t)sqlite3_column_int64(stmt, 2 + c);
            for (int b = 0; b < 8; b++)
                row[NS_NODE_ID_BYTES + NS_SHA256_BYTES + 8 * c + b] = (uint8_t)(v >> (56 - 8 * b));
        }
        rc = crypto_hash_sha256_update(&state, row, sizeof row);
        NS_ASSERT(rc == 0);
        accounts++;
    }
    if (err == NS_OK && rc != SQLITE_DONE)
        err = ns__ledger_error(db, rc);
    err = ns__ledger_finish(db, stmt, err);
    if (err != NS_OK)
        return err;
    if (accounts > 0) {
        rc = crypto_hash_sha256_final(&state, hash);
        NS_ASSERT(rc == 0);
        return NS_OK;
    }
    /* No account yet: the state is the genesis itself. */
    uint64_t created_ms;
    uint8_t genesis[NS_SHA256_BYTES];
    err = ns_ledger_genesis(ledger, &created_ms, genesis);
    if (err == NS_OK)
        ns_sha256(hash, genesis, sizeof genesis);
    return err;
}

int ns_ledger_checkpoint(ns_ledger *ledger)
{
    NS_ASSERT(ledger != NULL);
    int rc = sqlite3_wal_checkpoint_v2(ledger->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    return rc == SQLITE_OK ? NS_OK : ns__ledger_error(ledger->db, rc);
}
