/*
 * test_ledger.c: the ledger file (open, refuse, genesis, queries) and NEURO amounts.
 *
 * Includes ledger.c to reach the connection (ledger->db), so that the per-connection settings
 * (synchronous, foreign_keys) can be read back and rows inserted by hand. Every refusal is checked
 * to leave the file byte-for-byte as it was and to leave no -wal or -shm file beside it.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../src/ledger/ledger_internal.h"
#include "support/testutil.h"

#define T0_MS 1767225600000ull /* 2026-01-01T00:00:00Z */

typedef struct fixture {
    char dir[256];
    char path[320];
} fixture;

static int fixture_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    ns_test_tempdir(f->dir, sizeof f->dir);
    snprintf(f->path, sizeof f->path, "%s/" NS_LEDGER_FILE, f->dir);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture *f = *state;
    ns_test_rmtree(f->dir);
    free(f);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

typedef struct snapshot {
    uint8_t *bytes;
    size_t len;
} snapshot;

static snapshot snapshot_take(const char *path)
{
    snapshot s;
    assert_int_equal(ns_file_read(path, 64u * 1024 * 1024, &s.bytes, &s.len), NS_OK);
    return s;
}

static bool side_file_exists(const char *path, const char *suffix)
{
    char side[400];
    snprintf(side, sizeof side, "%s%s", path, suffix);
    return access(side, F_OK) == 0;
}

/* Opens path, expects want, and checks that the file and its neighbours are as they were. */
static void assert_refused_untouched(const char *path, int want)
{
    snapshot before = snapshot_take(path);
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(path, T0_MS, &ledger), want);
    assert_null(ledger);
    snapshot after = snapshot_take(path);
    assert_int_equal(after.len, before.len);
    assert_memory_equal(after.bytes, before.bytes, before.len);
    assert_false(side_file_exists(path, "-wal"));
    assert_false(side_file_exists(path, "-shm"));
    assert_false(side_file_exists(path, "-journal"));
    free(before.bytes);
    free(after.bytes);
}

static void create_ledger(const char *path, uint64_t now_ms)
{
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(path, now_ms, &ledger), NS_OK);
    ns_ledger_close(ledger);
}

/* Runs SQL on a connection of its own, as another program would. */
static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static int64_t raw_query_int64(sqlite3 *db, const char *sql)
{
    int64_t value = -1;
    assert_int_equal(ns__ledger_query_int64(db, sql, &value), NS_OK);
    return value;
}

/* The genesis is the swarm's, not the file's: it does not depend on when the file was made. */
static void expected_genesis_hash(uint8_t hash[NS_SHA256_BYTES], uint64_t created_ms)
{
    (void)created_ms;
    ns_sha256(hash, "neuroshard/genesis/v1", strlen("neuroshard/genesis/v1"));
}

/* SQL for the node id 00..00 id_byte: a 32-byte BLOB literal (|| would make TEXT). */
static void node_id_literal(char out[68], uint8_t id_byte)
{
    snprintf(out, 68, "x'%062u%02x'", 0u, id_byte);
}

/* An account row and one entry on its chain, inserted by hand. */
static void insert_account(sqlite3 *db, uint8_t id_byte, int64_t balance_nano, int64_t stake_nano)
{
    char id[68];
    node_id_literal(id, id_byte);
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO accounts (node_id, balance_nano, stake_nano, sequence, head_hash)"
             " VALUES (%s, %" PRId64 ", %" PRId64 ", 1, randomblob(32))",
             id, balance_nano, stake_nano);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
}

static int insert_entry(sqlite3 *db, uint8_t id_byte, int64_t sequence, const char *kind,
                        int64_t amount_nano)
{
    char id[68];
    node_id_literal(id, id_byte);
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO entries (account, sequence, kind, amount_nano, prev_hash, hash, record,"
             " applied_ms) VALUES (%s, %" PRId64 ", '%s', %" PRId64
             ", zeroblob(32), randomblob(32), x'00', 1)",
             id, sequence, kind, amount_nano);
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* ---- a new ledger ------------------------------------------------------------------------- */

static void test_ledger_new_file_has_genesis_with_nothing_minted(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    uint64_t created_ms = 0;
    uint8_t hash[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_genesis(ledger, &created_ms, hash), NS_OK);
    assert_int_equal(created_ms, T0_MS);
    uint8_t want[NS_SHA256_BYTES];
    expected_genesis_hash(want, T0_MS);
    assert_memory_equal(hash, want, sizeof want);
    uint64_t height = 99;
    assert_int_equal(ns_ledger_height(ledger, &height), NS_OK);
    assert_int_equal(height, 0);
    ns_neuro minted = {-1};
    ns_neuro burned = {-1};
    assert_int_equal(ns_ledger_totals(ledger, &minted, &burned), NS_OK);
    assert_int_equal(minted.nano, 0);
    assert_int_equal(burned.nano, 0);
    assert_int_equal(raw_query_int64(ledger->db, "SELECT total_minted_nano FROM genesis"), 0);
    assert_int_equal(raw_query_int64(ledger->db, "SELECT reward_nano FROM genesis"), 0);
    ns_ledger_close(ledger);
}

static void test_ledger_reopen_keeps_the_same_genesis(void **state)
{
    fixture *f = *state;
    create_ledger(f->path, T0_MS);
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open(f->path, &ledger), NS_OK); /* a later wall clock */
    uint64_t created_ms = 0;
    uint8_t hash[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_genesis(ledger, &created_ms, hash), NS_OK);
    assert_int_equal(created_ms, T0_MS);
    uint8_t want[NS_SHA256_BYTES];
    expected_genesis_hash(want, T0_MS);
    assert_memory_equal(hash, want, sizeof want);
    assert_int_equal(raw_query_int64(ledger->db, "SELECT count(*) FROM genesis"), 1);
    ns_ledger_close(ledger);
}

static void test_ledger_uses_wal_synchronous_full_and_foreign_keys(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    bool wal = false;
    assert_int_equal(ns__ledger_query_text_is(ledger->db, "PRAGMA journal_mode", "wal", &wal),
                     NS_OK);
    assert_true(wal);
    assert_int_equal(raw_query_int64(ledger->db, "PRAGMA synchronous"), 2); /* FULL */
    assert_int_equal(raw_query_int64(ledger->db, "PRAGMA foreign_keys"), 1);
    ns_ledger_close(ledger);
    /* The settings come back on reopen: WAL from the file, the rest from open. */
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    assert_int_equal(ns__ledger_query_text_is(ledger->db, "PRAGMA journal_mode", "wal", &wal),
                     NS_OK);
    assert_true(wal);
    assert_int_equal(raw_query_int64(ledger->db, "PRAGMA synchronous"), 2);
    assert_int_equal(raw_query_int64(ledger->db, "PRAGMA foreign_keys"), 1);
    ns_ledger_close(ledger);
}

static void test_ledger_file_carries_application_id_and_schema_version(void **state)
{
    fixture *f = *state;
    create_ledger(f->path, T0_MS);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(raw_query_int64(db, "PRAGMA application_id"), NS_LEDGER_APPLICATION_ID);
    assert_int_equal(raw_query_int64(db, "PRAGMA user_version"), NS_LEDGER_SCHEMA_VERSION);
    assert_int_equal(NS_LEDGER_SCHEMA_VERSION, 4);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* A file of schema 1 (as the walking skeleton wrote it) is migrated to the newest when opened. */
static void test_ledger_migrates_a_version_1_file(void **state)
{
    fixture *f = *state;
    create_ledger(f->path, T0_MS);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    insert_account(db, 0x01, 5, 0);
    assert_int_equal(insert_entry(db, 0x01, 1, "claim", 5), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TABLE sends; DROP TABLE claims; DROP TABLE forks;"
                                  "DROP TABLE burns; DROP TABLE judgements;"
                                  "ALTER TABLE accounts DROP COLUMN frozen;"
                                  "ALTER TABLE accounts DROP COLUMN debt_nano;"
                                  "PRAGMA user_version = 1;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    ns_ledger_close(ledger);
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(raw_query_int64(db, "PRAGMA user_version"), NS_LEDGER_SCHEMA_VERSION);
    assert_int_equal(raw_query_int64(db, "SELECT count(*) FROM sqlite_schema WHERE name IN "
                                         "('sends', 'claims', 'forks', 'burns', 'judgements')"),
                     5);
    assert_int_equal(raw_query_int64(db, "SELECT count(*) FROM entries WHERE kind = 'claim'"), 1);
    assert_int_equal(raw_query_int64(db, "SELECT count(*) FROM pragma_table_info('accounts') "
                                         "WHERE name IN ('frozen', 'debt_nano')"),
                     2);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* A file of schema 3 keeps its judgements (one a proof then) as one a challenge. */
static void test_ledger_migrates_version_3_judgements(void **state)
{
    fixture *f = *state;
    create_ledger(f->path, T0_MS);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TABLE judgements;"
                                  "ALTER TABLE accounts DROP COLUMN debt_nano;"
                                  "CREATE TABLE judgements ("
                                  "  proof_id BLOB PRIMARY KEY NOT NULL,"
                                  "  prover BLOB NOT NULL, challenger BLOB NOT NULL,"
                                  "  verdict TEXT NOT NULL, slashed_nano INTEGER NOT NULL,"
                                  "  entry_hash BLOB NOT NULL) STRICT, WITHOUT ROWID;"
                                  "INSERT INTO judgements VALUES (zeroblob(32), zeroblob(32),"
                                  "  zeroblob(32), 'fraud', 7, randomblob(32));"
                                  "PRAGMA user_version = 3;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    ns_ledger_close(ledger);
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(raw_query_int64(db, "PRAGMA user_version"), NS_LEDGER_SCHEMA_VERSION);
    assert_int_equal(raw_query_int64(db, "SELECT slashed_nano FROM judgements WHERE verdict ="
                                         " 'fraud' AND length(entry_hash) = 32"),
                     7);
    assert_int_equal(raw_query_int64(db, "SELECT count(*) FROM pragma_table_info('accounts') "
                                         "WHERE name = 'debt_nano'"),
                     1);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_ledger_treats_an_empty_file_as_new(void **state)
{
    fixture *f = *state;
    write_file(f->path, "", 0);
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    uint64_t created_ms = 0;
    uint8_t hash[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_genesis(ledger, &created_ms, hash), NS_OK);
    assert_int_equal(created_ms, T0_MS);
    ns_ledger_close(ledger);
}

static void test_ledger_refuses_genesis_time_beyond_sqlite_integers(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, (uint64_t)INT64_MAX + 1, &ledger), NS_EINVAL);
    assert_null(ledger);
    assert_int_equal(access(f->path, F_OK), -1);
}

/* ---- the state hash ----------------------------------------------------------------------- */

static void test_ledger_state_hash_of_empty_ledger_is_hash_of_genesis(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    uint8_t genesis[NS_SHA256_BYTES];
    expected_genesis_hash(genesis, T0_MS);
    uint8_t want[NS_SHA256_BYTES];
    ns_sha256(want, genesis, sizeof genesis);
    uint8_t got[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(ledger, got), NS_OK);
    assert_memory_equal(got, want, sizeof want);
    ns_ledger_close(ledger);
}

static void test_ledger_state_hash_is_equal_for_ledgers_made_at_different_times(void **state)
{
    fixture *f = *state;
    char other[sizeof f->path + 8];
    snprintf(other, sizeof other, "%s.b", f->path);
    ns_ledger *a = NULL, *b = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &a), NS_OK);
    assert_int_equal(ns_ledger_open_at(other, T0_MS + 86400000, &b), NS_OK);
    uint8_t ha[NS_SHA256_BYTES], hb[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(a, ha), NS_OK);
    assert_int_equal(ns_ledger_state_hash(b, hb), NS_OK);
    assert_memory_equal(ha, hb, sizeof ha);
    ns_ledger_close(a);
    ns_ledger_close(b);
    unlink(other);
}

static void test_ledger_state_hash_is_deterministic_across_reopen(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    insert_account(ledger->db, 0x02, 5, 0);
    insert_account(ledger->db, 0x01, 7, 0);
    uint8_t first[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(ledger, first), NS_OK);
    ns_ledger_close(ledger);
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS + 5000, &ledger), NS_OK);
    uint8_t second[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(ledger, second), NS_OK);
    assert_memory_equal(first, second, sizeof first);
    ns_ledger_close(ledger);
}

static void test_ledger_state_hash_covers_account_heads_in_node_id_order(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    insert_account(ledger->db, 0x02, 5, 7);
    insert_account(ledger->db, 0x01, 0, 0);
    /* SHA-256 over (id, head, balance, stake, debt as 8-byte big-endian) of each row in id order */
    uint8_t concat[2 * 88] = {0};
    sqlite3_stmt *stmt;
    assert_int_equal(ns__ledger_prepare(ledger->db,
                                        "SELECT node_id, head_hash FROM accounts ORDER BY node_id",
                                        &stmt),
                     NS_OK);
    for (size_t row = 0; row < 2; row++) {
        assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
        assert_int_equal(sqlite3_column_bytes(stmt, 0), 32);
        assert_int_equal(sqlite3_column_bytes(stmt, 1), 32);
        memcpy(concat + 88 * row, sqlite3_column_blob(stmt, 0), 32);
        memcpy(concat + 88 * row + 32, sqlite3_column_blob(stmt, 1), 32);
    }
    assert_int_equal(sqlite3_finalize(stmt), SQLITE_OK);
    assert_int_equal(concat[31], 0x01);
    concat[88 + 64 + 7] = 5; /* the second account's balance */
    concat[88 + 72 + 7] = 7; /* and stake */
    uint8_t want[NS_SHA256_BYTES];
    ns_sha256(want, concat, sizeof concat);
    uint8_t got[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(ledger, got), NS_OK);
    assert_memory_equal(got, want, sizeof want);
    ns_ledger_close(ledger);
}

static void test_ledger_state_hash_equal_for_ledgers_created_at_one_time(void **state)
{
    fixture *f = *state;
    char other[400];
    snprintf(other, sizeof other, "%s/other.db", f->dir);
    ns_ledger *a = NULL;
    ns_ledger *b = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &a), NS_OK);
    assert_int_equal(ns_ledger_open_at(other, T0_MS, &b), NS_OK);
    uint8_t hash_a[NS_SHA256_BYTES];
    uint8_t hash_b[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(a, hash_a), NS_OK);
    assert_int_equal(ns_ledger_state_hash(b, hash_b), NS_OK);
    assert_memory_equal(hash_a, hash_b, sizeof hash_a);
    ns_ledger_close(a);
    ns_ledger_close(b);
}

/* ---- queries ------------------------------------------------------------------------------ */

static void test_ledger_unknown_account_has_zero_balance_and_stake(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    uint8_t node_id[NS_NODE_ID_BYTES] = {0xaa};
    ns_neuro balance = {-1};
    ns_neuro stake = {-1};
    assert_int_equal(ns_ledger_balance(ledger, node_id, &balance, &stake), NS_OK);
    assert_int_equal(balance.nano, 0);
    assert_int_equal(stake.nano, 0);
    ns_ledger_close(ledger);
}

static void test_ledger_reads_balance_height_and_totals_from_rows(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    insert_account(ledger->db, 0x01, 3 * NS_NEURO_NANO_PER_UNIT, 10 * NS_NEURO_NANO_PER_UNIT);
    assert_int_equal(insert_entry(ledger->db, 0x01, 1, "claim", 13), SQLITE_OK);
    assert_int_equal(insert_entry(ledger->db, 0x01, 2, "claim", 2), SQLITE_OK);
    assert_int_equal(insert_entry(ledger->db, 0x01, 3, "stake", 4), SQLITE_OK);
    assert_int_equal(sqlite3_exec(ledger->db,
                                  "INSERT INTO burns (cause, entry_hash, amount_nano)"
                                  " VALUES ('fee', zeroblob(32), 4)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(insert_entry(ledger->db, 0x01, 4, "send", 100), SQLITE_OK);
    uint8_t node_id[NS_NODE_ID_BYTES] = {0};
    node_id[31] = 0x01;
    ns_neuro balance;
    ns_neuro stake;
    assert_int_equal(ns_ledger_balance(ledger, node_id, &balance, &stake), NS_OK);
    assert_int_equal(balance.nano, 3 * NS_NEURO_NANO_PER_UNIT);
    assert_int_equal(stake.nano, 10 * NS_NEURO_NANO_PER_UNIT);
    uint64_t height;
    assert_int_equal(ns_ledger_height(ledger, &height), NS_OK);
    assert_int_equal(height, 4);
    ns_neuro minted;
    ns_neuro burned;
    assert_int_equal(ns_ledger_totals(ledger, &minted, &burned), NS_OK);
    assert_int_equal(minted.nano, 15);
    assert_int_equal(burned.nano, 4);
    ns_ledger_close(ledger);
}

static void test_ledger_totals_report_overflow(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    insert_account(ledger->db, 0x01, 0, 0);
    assert_int_equal(insert_entry(ledger->db, 0x01, 1, "claim", INT64_MAX), SQLITE_OK);
    assert_int_equal(insert_entry(ledger->db, 0x01, 2, "claim", 1), SQLITE_OK);
    ns_neuro minted = {-1};
    ns_neuro burned = {-1};
    assert_int_equal(ns_ledger_totals(ledger, &minted, &burned), NS_EOVERFLOW);
    assert_int_equal(minted.nano, -1);
    ns_ledger_close(ledger);
}

static void test_ledger_schema_refuses_negative_amounts_forks_and_orphans(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    sqlite3 *db = ledger->db;
    insert_account(db, 0x01, 0, 0);
    assert_int_equal(insert_entry(db, 0x01, 1, "claim", -1), SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(insert_entry(db, 0x01, 1, "mint", 1), SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(insert_entry(db, 0x01, 1, "send", 1), SQLITE_OK);
    assert_int_equal(insert_entry(db, 0x01, 1, "send", 2), SQLITE_CONSTRAINT_UNIQUE); /* a fork */
    assert_int_equal(insert_entry(db, 0x09, 1, "send", 1), SQLITE_CONSTRAINT_FOREIGNKEY);
    assert_int_equal(sqlite3_exec(db, "UPDATE accounts SET balance_nano = -1", NULL, NULL, NULL),
                     SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(sqlite3_exec(db, "UPDATE genesis SET total_minted_nano = 1", NULL, NULL, NULL),
                     SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO genesis VALUES (2, 0, 0, 0, zeroblob(32))", NULL, NULL, NULL),
        SQLITE_CONSTRAINT_CHECK);
    ns_ledger_close(ledger);
}

static void test_ledger_checkpoint_empties_the_wal(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    insert_account(ledger->db, 0x01, 1, 0);
    char wal[400];
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    struct stat st;
    assert_int_equal(stat(wal, &st), 0);
    assert_true(st.st_size > 0);
    assert_int_equal(ns_ledger_checkpoint(ledger), NS_OK);
    assert_int_equal(stat(wal, &st), 0);
    assert_int_equal(st.st_size, 0);
    ns_ledger_close(ledger);
}

/* ---- refusals ----------------------------------------------------------------------------- */

static void test_ledger_refuses_garbage_file_without_touching_it(void **state)
{
    fixture *f = *state;
    uint8_t garbage[8192];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (uint8_t)(i * 131u + 7u);
    write_file(f->path, garbage, sizeof garbage);
    assert_refused_untouched(f->path, NS_ECORRUPT);
}

static void test_ledger_refuses_short_text_file_without_touching_it(void **state)
{
    fixture *f = *state;
    write_file(f->path, "not a ledger\n", 13);
    assert_refused_untouched(f->path, NS_ECORRUPT);
}

static void test_ledger_refuses_truncated_ledger_without_touching_it(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    for (uint8_t i = 1; i <= 200; i++)
        insert_account(ledger->db, i, i, 0); /* a few pages of rows */
    ns_ledger_close(ledger);
    snapshot whole = snapshot_take(f->path);
    assert_true(whole.len >= 4 * 4096);
    write_file(f->path, whole.bytes, whole.len / 2);
    free(whole.bytes);
    assert_refused_untouched(f->path, NS_ECORRUPT);
}

static void test_ledger_refuses_damaged_page_without_touching_it(void **state)
{
    fixture *f = *state;
    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_OK);
    for (uint8_t i = 1; i <= 200; i++)
        insert_account(ledger->db, i, i, 0);
    ns_ledger_close(ledger);
    snapshot whole = snapshot_take(f->path);
    assert_true(whole.len >= 4 * 4096);
    /* Scribble over every page but the first, so the header reads but the b-trees do not. */
    for (size_t i = 4096; i < whole.len; i++)
        whole.bytes[i] = (uint8_t)(i * 7u);
    write_file(f->path, whole.bytes, whole.len);
    free(whole.bytes);
    assert_refused_untouched(f->path, NS_ECORRUPT);
}

static void test_ledger_refuses_foreign_database_without_touching_it(void **state)
{
    fixture *f = *state;
    raw_exec(f->path, "CREATE TABLE songs (title TEXT); INSERT INTO songs VALUES ('la');");
    assert_refused_untouched(f->path, NS_EFOREIGN);
}

static void test_ledger_refuses_other_application_id_without_touching_it(void **state)
{
    fixture *f = *state;
    raw_exec(f->path, "PRAGMA application_id = 1234;");
    assert_refused_untouched(f->path, NS_EFOREIGN);
}

static void test_ledger_refuses_foreign_wal_database_without_touching_it(void **state)
{
    fixture *f = *state;
    raw_exec(f->path, "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    assert_refused_untouched(f->path, NS_EFOREIGN);
}

static void test_ledger_refuses_foreign_database_without_checkpointing_its_wal(void **state)
{
    fixture *f = *state;
    /* Another program's database whose last commit is still only in its WAL. */
    sqlite3 *db = NULL;
    assert_int_equal(
        sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
                                  " CREATE TABLE t (x); INSERT INTO t VALUES (1);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    char wal[400];
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    snapshot db_before = snapshot_take(f->path);
    snapshot wal_before = snapshot_take(wal);
    assert_true(wal_before.len > 0);

    ns_ledger *ledger = NULL;
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &ledger), NS_EFOREIGN);
    snapshot db_after = snapshot_take(f->path);
    snapshot wal_after = snapshot_take(wal);
    assert_int_equal(db_after.len, db_before.len);
    assert_memory_equal(db_after.bytes, db_before.bytes, db_before.len);
    assert_int_equal(wal_after.len, wal_before.len);
    assert_memory_equal(wal_after.bytes, wal_before.bytes, wal_before.len);
    free(db_before.bytes);
    free(db_after.bytes);
    free(wal_before.bytes);
    free(wal_after.bytes);
}

static void test_ledger_refuses_newer_schema_without_touching_it(void **state)
{
    fixture *f = *state;
    create_ledger(f->path, T0_MS);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d;", NS_LEDGER_SCHEMA_VERSION + 1);
    raw_exec(f->path, sql);
    assert_false(side_file_exists(f->path, "-wal"));
    assert_refused_untouched(f->path, NS_EFOREIGN);
}

static void test_ledger_refuses_marked_file_without_schema(void **state)
{
    fixture *f = *state;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %u;", NS_LEDGER_APPLICATION_ID);
    raw_exec(f->path, sql);
    assert_refused_untouched(f->path, NS_ECORRUPT);
}

/* ---- amounts ------------------------------------------------------------------------------ */

static void test_neuro_add_and_sub_report_overflow_and_keep_output(void **state)
{
    (void)state;
    ns_neuro out = {42};
    assert_int_equal(ns_neuro_add(&out, (ns_neuro){INT64_MAX}, (ns_neuro){1}), NS_EOVERFLOW);
    assert_int_equal(out.nano, 42);
    assert_int_equal(ns_neuro_sub(&out, (ns_neuro){INT64_MIN}, (ns_neuro){1}), NS_EOVERFLOW);
    assert_int_equal(ns_neuro_sub(&out, (ns_neuro){0}, (ns_neuro){INT64_MIN}), NS_EOVERFLOW);
    assert_int_equal(ns_neuro_add(&out, (ns_neuro){INT64_MIN}, (ns_neuro){-1}), NS_EOVERFLOW);
    assert_int_equal(out.nano, 42);
    assert_int_equal(ns_neuro_add(&out, (ns_neuro){INT64_MAX - 1}, (ns_neuro){1}), NS_OK);
    assert_int_equal(out.nano, INT64_MAX);
    assert_int_equal(ns_neuro_sub(&out, (ns_neuro){5}, (ns_neuro){7}), NS_OK);
    assert_int_equal(out.nano, -2);
}

static void test_neuro_format_has_nine_decimals(void **state)
{
    (void)state;
    char text[NS_NEURO_FORMAT_SIZE];
    ns_neuro_format(text, sizeof text, (ns_neuro){12345000000});
    assert_string_equal(text, "12.345000000");
    ns_neuro_format(text, sizeof text, (ns_neuro){0});
    assert_string_equal(text, "0.000000000");
    ns_neuro_format(text, sizeof text, (ns_neuro){-1});
    assert_string_equal(text, "-0.000000001");
    ns_neuro_format(text, sizeof text, (ns_neuro){INT64_MAX});
    assert_string_equal(text, "9223372036.854775807");
    ns_neuro_format(text, sizeof text, (ns_neuro){INT64_MIN});
    assert_string_equal(text, "-9223372036.854775808");
}

#define LEDGER_TEST(name) cmocka_unit_test_setup_teardown(name, fixture_setup, fixture_teardown)

int main(void)
{
    ns_log_set_level(NS_LOG_WARN); /* every fixture creates a ledger; keep the output to results */
    const struct CMUnitTest tests[] = {
        LEDGER_TEST(test_ledger_new_file_has_genesis_with_nothing_minted),
        LEDGER_TEST(test_ledger_reopen_keeps_the_same_genesis),
        LEDGER_TEST(test_ledger_uses_wal_synchronous_full_and_foreign_keys),
        LEDGER_TEST(test_ledger_file_carries_application_id_and_schema_version),
        LEDGER_TEST(test_ledger_migrates_a_version_1_file),
        LEDGER_TEST(test_ledger_migrates_version_3_judgements),
        LEDGER_TEST(test_ledger_treats_an_empty_file_as_new),
        LEDGER_TEST(test_ledger_refuses_genesis_time_beyond_sqlite_integers),
        LEDGER_TEST(test_ledger_state_hash_of_empty_ledger_is_hash_of_genesis),
        LEDGER_TEST(test_ledger_state_hash_is_equal_for_ledgers_made_at_different_times),
        LEDGER_TEST(test_ledger_state_hash_is_deterministic_across_reopen),
        LEDGER_TEST(test_ledger_state_hash_covers_account_heads_in_node_id_order),
        LEDGER_TEST(test_ledger_state_hash_equal_for_ledgers_created_at_one_time),
        LEDGER_TEST(test_ledger_unknown_account_has_zero_balance_and_stake),
        LEDGER_TEST(test_ledger_reads_balance_height_and_totals_from_rows),
        LEDGER_TEST(test_ledger_totals_report_overflow),
        LEDGER_TEST(test_ledger_schema_refuses_negative_amounts_forks_and_orphans),
        LEDGER_TEST(test_ledger_checkpoint_empties_the_wal),
        LEDGER_TEST(test_ledger_refuses_garbage_file_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_short_text_file_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_truncated_ledger_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_damaged_page_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_foreign_database_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_other_application_id_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_foreign_wal_database_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_foreign_database_without_checkpointing_its_wal),
        LEDGER_TEST(test_ledger_refuses_newer_schema_without_touching_it),
        LEDGER_TEST(test_ledger_refuses_marked_file_without_schema),
        cmocka_unit_test(test_neuro_add_and_sub_report_overflow_and_keep_output),
        cmocka_unit_test(test_neuro_format_has_nine_decimals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
