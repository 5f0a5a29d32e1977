/*
 * ledger.h: the NEURO ledger on SQLite (SPEC S10).
 *
 * One database file in the data directory, WAL mode, synchronous=FULL, its schema versioned by
 * migrations through PRAGMA user_version and marked as ours by PRAGMA application_id. Opening
 * checks integrity first and never writes to a file that is corrupt, foreign or from a newer
 * version. Amounts are fixed-point integers (ns_neuro), never floating point.
 */
#ifndef NEUROSHARD_LEDGER_H
#define NEUROSHARD_LEDGER_H

#include <stdbool.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"

#define NS_LEDGER_FILE           "ledger.db"
#define NS_LEDGER_APPLICATION_ID 0x4E53484Cu /* "NSHL" */
#define NS_LEDGER_SCHEMA_VERSION 1

/* An amount of NEURO in nano-NEURO (1e-9). Checked arithmetic only. */
typedef struct ns_neuro {
    int64_t nano;
} ns_neuro;

#define NS_NEURO_NANO_PER_UNIT 1000000000LL

NS_MUST_USE int ns_neuro_add(ns_neuro *out, ns_neuro a, ns_neuro b); /* NS_EOVERFLOW */
NS_MUST_USE int ns_neuro_sub(ns_neuro *out, ns_neuro a, ns_neuro b); /* NS_EOVERFLOW */
/* "12.345000000": always nine decimals, a leading '-' when negative. The longest,
 * "-9223372036.854775808", takes 22 bytes with its NUL. */
#define NS_NEURO_FORMAT_SIZE 32
void ns_neuro_format(char *out, size_t out_size, ns_neuro amount); /* out_size >= the size */

typedef struct ns_ledger ns_ledger;

/* Opens (creating when absent) the ledger at path. On an existing file: NS_ECORRUPT when it is not
 * a SQLite database or fails PRAGMA integrity_check, NS_EFOREIGN when it belongs to another
 * application or a newer schema; in both cases the file is left byte-for-byte as it was. A new
 * file gets the schema and the GENESIS row (zero minted) in one transaction. */
NS_MUST_USE int ns_ledger_open(const char *path, ns_ledger **out);
/* The same with the creation time given: ns_ledger_open reads the wall clock and calls this. The
 * genesis hash is SHA-256("neuroshard/genesis/v1"), the same on every node; now_ms is only
 * recorded as when this file was made. NS_EINVAL when now_ms does not fit SQLite's signed 64-bit
 * integers. */
NS_MUST_USE int ns_ledger_open_at(const char *path, uint64_t now_ms, ns_ledger **out);
void ns_ledger_close(ns_ledger *ledger); /* NULL is a no-op */

/* Number of ledger entries applied (0 at genesis). */
NS_MUST_USE int ns_ledger_height(ns_ledger *ledger, uint64_t *height);
/* Balance and stake of an account; an unknown account has zero of both. */
NS_MUST_USE int ns_ledger_balance(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES],
                                  ns_neuro *balance, ns_neuro *stake);
/* Totals over the whole ledger. */
NS_MUST_USE int ns_ledger_totals(ns_ledger *ledger, ns_neuro *minted, ns_neuro *burned);
/* The genesis row's creation time (ms since the epoch) and hash. */
NS_MUST_USE int ns_ledger_genesis(ns_ledger *ledger, uint64_t *created_ms,
                                  uint8_t hash[NS_SHA256_BYTES]);
/* SHA-256 over node_id || head_hash of every account in node-id order: equal on two nodes that
 * saw equal entries. With no account yet it is SHA-256(genesis hash), equal on every node. */
NS_MUST_USE int ns_ledger_state_hash(ns_ledger *ledger, uint8_t hash[NS_SHA256_BYTES]);
/* Folds the WAL back into the database file (called on a timer and at shutdown). */
NS_MUST_USE int ns_ledger_checkpoint(ns_ledger *ledger);

#endif
