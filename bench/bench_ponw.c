/*
 * bench_ponw.c: what checking proofs and applying ledger entries cost.
 *
 *   bench proofs_validated_per_s=P raw_verify_per_s=R ratio=P/R goal=0.7
 *     ns_ponw_validate on fresh training proofs of 64 nodes (signature, decoding, every rule and
 *     the validator's memory), one core, against what any check of a signed message costs:
 *     libsecp256k1 parsing the key and signature and verifying over a SHA-256 digest.
 *   bench entries_applied_per_s=E sqlite_inserts_per_s=S ratio=E/S goal=-
 *     ns_ledger_apply of stake and unstake entries (signature, chain, rules, one transaction
 *     each, WAL with synchronous=FULL) on a file in $TMPDIR, against bare INSERTs of rows of the
 *     same size into one table of a file with the same settings, one transaction each (batch 1).
 *   bench proof_check_s_per_work_s=C ratio=- : validating a training proof against the training
 *     it claims, for a minute of the default model's work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <secp256k1.h>
#include <sqlite3.h>

#include "neuroshard/ponw.h"

#define NODES   64
#define PROOFS  4096
#define ENTRIES 600
#define T0_MS   1800000000000ull
#define MIN_MS  60000ull

static double seconds_now(void)
{
    struct timespec ts;
    NS_ASSERT(clock_gettime(CLOCK_MONOTONIC, &ts) == 0);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct signed_buf {
    uint8_t *buf;
    size_t len;
    uint64_t end_ms;
} signed_buf;

/* Training proofs of NODES keys, one a minute each, as a busy swarm sends them. */
static signed_buf *make_proofs(ns_key *keys)
{
    signed_buf *out = calloc(PROOFS, sizeof *out);
    NS_ASSERT(out != NULL);
    for (int i = 0; i < PROOFS; i++) {
        uint64_t end = T0_MS + (uint64_t)(i / NODES + 1) * MIN_MS;
        ns_proof p = {.type = NS_PROOF_TRAINING,
                      .nonce = (uint64_t)i,
                      .sequence = end,
                      .timestamp_ms = end,
                      .period_start_ms = end - MIN_MS,
                      .uptime_s = 60,
                      .tokens = 51200,
                      .batches = 50,
                      .layers = 8,
                      .has_embed = true,
                      .has_head = true,
                      .tier = 2,
                      .has_training = true};
        p.training.batch_count = 50;
        p.training.layer_last = 8;
        p.training.micro_batches = 1;
        memset(p.training.model_hash_before, i, NS_SHA256_BYTES);
        NS_ASSERT(ns_proof_sign(&keys[i % NODES], &p, &out[i].buf, &out[i].len) == NS_OK);
        out[i].end_ms = end;
    }
    return out;
}

static double validate_rate(const signed_buf *proofs)
{
    ns_ponw_validator *v;
    NS_ASSERT(ns_ponw_validator_new(&v, 1000) == NS_OK);
    ns_proof p;
    double t0 = seconds_now();
    for (int i = 0; i < PROOFS; i++)
        NS_ASSERT(ns_ponw_validate(v, proofs[i].buf, proofs[i].len, proofs[i].end_ms + 1000, &p) ==
                  NS_PONW_ACCEPTED);
    double dt = seconds_now() - t0;
    ns_ponw_validator_free(v);
    return PROOFS / dt;
}

static double raw_verify_rate(const ns_key *key)
{
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    uint8_t digest[32], sig64[64];
    ns_sha256(digest, "bench", 5);
    secp256k1_ecdsa_signature sig;
    NS_ASSERT(secp256k1_ecdsa_sign(ctx, &sig, digest, key->seckey, NULL, NULL) == 1);
    secp256k1_ecdsa_signature_serialize_compact(ctx, sig64, &sig);
    double t0 = seconds_now();
    for (int i = 0; i < PROOFS; i++) {
        secp256k1_pubkey pk;
        secp256k1_ecdsa_signature s;
        NS_ASSERT(secp256k1_ec_pubkey_parse(ctx, &pk, key->pubkey, NS_PUBKEY_BYTES) == 1);
        NS_ASSERT(secp256k1_ecdsa_signature_parse_compact(ctx, &s, sig64) == 1);
        NS_ASSERT(secp256k1_ecdsa_verify(ctx, &s, digest, &pk) == 1);
    }
    double dt = seconds_now() - t0;
    secp256k1_context_destroy(ctx);
    return PROOFS / dt;
}

/* Entries a second: claims to earn, then stake/unstake alternating, each applied alone. */
static double entries_rate(const char *dir, ns_key *key)
{
    char path[600];
    snprintf(path, sizeof path, "%s/bench-ledger.db", dir);
    unlink(path);
    ns_ledger *l;
    NS_ASSERT(ns_ledger_open_at(path, T0_MS, &l) == NS_OK);
    char why[NS_LEDGER_WHY_SIZE];
    uint64_t now = T0_MS + 20 * MIN_MS;
    for (int m = 0; m < 2; m++) { /* two claims: something to stake */
        ns_proof p = {.type = NS_PROOF_UPTIME,
                      .sequence = (uint64_t)m + 1,
                      .timestamp_ms = T0_MS + (uint64_t)(m + 1) * MIN_MS,
                      .period_start_ms = T0_MS + (uint64_t)m * MIN_MS,
                      .uptime_s = 60,
                      .tier = 3};
        uint8_t *env, *out;
        size_t len, out_len;
        NS_ASSERT(ns_proof_sign(key, &p, &env, &len) == NS_OK);
        ns_entry e = {.kind = NS_ENTRY_CLAIM, .proof = env, .proof_len = len};
        NS_ASSERT(ns_ponw_reward(&p, (ns_neuro){0}, &e.amount) == NS_OK);
        NS_ASSERT(ns_ledger_append(l, key, &e, now, &out, &out_len, why) == NS_OK);
        free(out);
        free(env);
    }
    double t0 = seconds_now();
    for (int i = 0; i < ENTRIES; i++) {
        ns_entry e = {.kind = i % 2 == 0 ? NS_ENTRY_STAKE : NS_ENTRY_UNSTAKE, .amount = {1000}};
        uint8_t *out;
        size_t out_len;
        NS_ASSERT(ns_ledger_append(l, key, &e, now, &out, &out_len, why) == NS_OK);
        free(out);
    }
    double dt = seconds_now() - t0;
    ns_ledger_close(l);
    unlink(path);
    return ENTRIES / dt;
}

static double sqlite_rate(const char *dir)
{
    char path[600];
    snprintf(path, sizeof path, "%s/bench-bare.db", dir);
    unlink(path);
    sqlite3 *db;
    NS_ASSERT(sqlite3_open(path, &db) == SQLITE_OK);
    NS_ASSERT(sqlite3_exec(db,
                           "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                           "CREATE TABLE t (id INTEGER PRIMARY KEY, k BLOB UNIQUE, v BLOB)",
                           NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_stmt *st;
    NS_ASSERT(sqlite3_prepare_v2(db, "INSERT INTO t (k, v) VALUES (?1, ?2)", -1, &st, NULL) ==
              SQLITE_OK);
    uint8_t k[32], v[300];
    memset(v, 7, sizeof v);
    double t0 = seconds_now();
    for (int i = 0; i < ENTRIES; i++) {
        memcpy(k, &i, sizeof i);
        memset(k + sizeof i, 0, sizeof k - sizeof i);
        NS_ASSERT(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
        sqlite3_bind_blob(st, 1, k, sizeof k, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, v, sizeof v, SQLITE_STATIC);
        NS_ASSERT(sqlite3_step(st) == SQLITE_DONE);
        sqlite3_reset(st);
        NS_ASSERT(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
    }
    double dt = seconds_now() - t0;
    sqlite3_finalize(st);
    sqlite3_close(db);
    unlink(path);
    return ENTRIES / dt;
}

int main(void)
{
    ns_log_set_level(NS_LOG_WARN);
    ns_key keys[NODES];
    for (int i = 0; i < NODES; i++) {
        uint8_t sk[NS_SECKEY_BYTES];
        memset(sk, i + 1, sizeof sk);
        NS_ASSERT(ns_key_from_seckey(&keys[i], sk) == NS_OK);
    }
    signed_buf *proofs = make_proofs(keys);
    double best_v = 0, best_r = 0;
    for (int round = 0; round < 3; round++) { /* alternate, keep the best of each */
        double v = validate_rate(proofs), r = raw_verify_rate(&keys[0]);
        best_v = v > best_v ? v : best_v;
        best_r = r > best_r ? r : best_r;
    }
    printf("bench proofs_validated_per_s=%.0f raw_verify_per_s=%.0f ratio=%.2f goal=0.7\n", best_v,
           best_r, best_v / best_r);
    const char *dir = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    double e = entries_rate(dir, &keys[0]), s = sqlite_rate(dir);
    printf("bench entries_applied_per_s=%.0f sqlite_inserts_per_s=%.0f ratio=%.2f goal=-\n", e, s,
           e / s);
    /* a minute of training proved by one proof, checked in 1 / best_v seconds */
    printf("bench proof_check_s_per_work_s=%.2e validate_s=%.2e ratio=- goal=-\n",
           (1.0 / best_v) / 60.0, 1.0 / best_v);
    for (int i = 0; i < PROOFS; i++)
        free(proofs[i].buf);
    free(proofs);
    return 0;
}
