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
#define NS_LEDGER_SCHEMA_VERSION 4

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
/* "12", "12.5", "0.000000001": digits, and at most nine decimals; NS_EINVAL for anything else
 * (signs, exponents, spaces), NS_EOVERFLOW beyond the largest amount. */
NS_MUST_USE int ns_neuro_parse(const char *text, ns_neuro *out);

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
/* A ledger in memory (the same schema and genesis, nothing on disk): for simulations. */
NS_MUST_USE int ns_ledger_open_memory(ns_ledger **out);
/* The challenge window a claim waits for (NS_PONW_WINDOW_MS unless set): a rule of the swarm,
 * the same on every node of it; test swarms shorten it. The file remembers it, so a check run
 * on the file alone replays with the same rule. */
NS_MUST_USE int ns_ledger_set_window(ns_ledger *ledger, uint64_t window_ms);
/* What a challenge bonds (NS_LEDGER_CHALLENGE_BOND unless set): a rule of the swarm like the
 * window, remembered by the file; test swarms lower it. */
NS_MUST_USE int ns_ledger_set_bond(ns_ledger *ledger, ns_neuro bond);

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
/* SHA-256 over node_id || head_hash || balance || stake || debt (8-byte big-endian) of every
 * account in node-id order: equal on two nodes that applied the same entries, in whatever order
 * they arrived. With no account yet it is SHA-256(genesis hash), equal on every node. */
NS_MUST_USE int ns_ledger_state_hash(ns_ledger *ledger, uint8_t hash[NS_SHA256_BYTES]);
/* ---- entries (entries.c, docs/ledger.md) -------------------------------------------------- */

typedef struct ns_proof ns_proof; /* ponw.h */

/* Each account keeps its own hash-linked chain of signed entries (records of type
 * NS_RECORD_LEDGER_ENTRY, body proto/ledger.proto): sequence 1, 2, ... each naming the hash of
 * the one before (the genesis hash before the first). The state is a pure function of the
 * entries applied, so nodes that applied the same entries have the same state hash. */
typedef enum ns_entry_kind {
    NS_ENTRY_CLAIM = 1,     /* mints the reward of the account's own proof, after its window */
    NS_ENTRY_SEND = 2,      /* moves amount out; the recipient may take in amount - fee */
    NS_ENTRY_RECEIVE = 3,   /* takes in a send addressed to the account */
    NS_ENTRY_STAKE = 4,     /* moves amount from the balance into the stake */
    NS_ENTRY_UNSTAKE = 5,   /* and back */
    NS_ENTRY_CHALLENGE = 6, /* accuses a training proof of fraud within its window: by a
                             * later proof of its author that contradicts it (evidence), or
                             * by recompute (reference: the recomputed hash, judged by each
                             * node's own recompute); bonds the swarm's bond of the stake */
} ns_entry_kind;

#define NS_LEDGER_CHALLENGE_BOND ((int64_t)10 * NS_NEURO_NANO_PER_UNIT) /* S9: 10 NEURO */

#define NS_LEDGER_FEE_PPM         50000u /* 5 % of every send is burned (S10) */
#define NS_LEDGER_ENTRY_BYTES_MAX (NS_RECORD_BYTES_MAX)
#define NS_LEDGER_WHY_SIZE        160

typedef struct ns_entry {
    uint8_t hash[NS_SHA256_BYTES]; /* SHA-256 of the envelope's bytes */
    uint8_t account[NS_NODE_ID_BYTES];
    uint64_t sequence;
    uint64_t timestamp_ms;
    uint32_t kind; /* ns_entry_kind */
    uint8_t prev_hash[NS_SHA256_BYTES];
    ns_neuro amount;
    uint8_t counterparty[NS_NODE_ID_BYTES]; /* send */
    uint8_t reference[NS_SHA256_BYTES];     /* receive: the send; challenge: the recomputed hash */
    const uint8_t *proof; /* claim, challenge: the proof's envelope (into the caller's buffer) */
    size_t proof_len;
    const uint8_t *evidence; /* challenge by continuity: a later proof of the same author;
                                by the cohort's screen: ns_ledger_cohort_evidence */
    size_t evidence_len;
} ns_entry;

/* A challenge by the cohort's screen (S8): the evidence names the cohort round whose sealed
 * parts show the prover's pseudo-gradient beyond 5 sigma, and the SHA-256 of the bundle that
 * holds them (sync.h, ns_cohort_judge), which judges fetch from the challenger. The challenged
 * proof must be the prover's work of the round before (its outer_round + 1 == round). Layout:
 * "NSCF" | version 1 | round u64 BE | bundle SHA-256; no proof envelope starts with 'N' (a
 * protobuf tag of wire type 6 does not exist), so the two kinds of evidence never mix. */
#define NS_LEDGER_COHORT_EVIDENCE_BYTES 45
void ns_ledger_cohort_evidence(uint8_t out[NS_LEDGER_COHORT_EVIDENCE_BYTES], uint64_t round,
                               const uint8_t bundle_hash[NS_SHA256_BYTES]);
/* Whether evidence is a cohort accusation (then *round and bundle_hash are filled). */
bool ns_ledger_cohort_evidence_parse(const uint8_t *evidence, size_t len, uint64_t *round,
                                     uint8_t bundle_hash[NS_SHA256_BYTES]);

/* The burn of a send of amount: 5 %, rounded up, so that every spend burns something. */
ns_neuro ns_ledger_send_fee(ns_neuro amount);

/* Signs e as key (account and hash set from the result). *out is the malloc'd envelope. */
NS_MUST_USE int ns_entry_sign(const ns_key *key, ns_entry *e, uint8_t **out, size_t *out_len);
/* Verifies an envelope as a record at now_ms and decodes it (canonical, bounded; NS_EPARSE for a
 * malformed body, NS_EINVAL for a record of another type). Pointers point into buf. */
NS_MUST_USE int ns_entry_open(const uint8_t *buf, size_t len, uint64_t now_ms, ns_entry *e);

typedef struct ns_account {
    ns_neuro balance;
    ns_neuro stake;
    ns_neuro debt;     /* what slashes took that its own chain did not hold (see docs/ledger.md) */
    uint64_t sequence; /* of its newest entry, 0 before the first */
    uint8_t head_hash[NS_SHA256_BYTES];
    bool frozen; /* it forked: nothing more of it is applied */
} ns_account;

/* An account's state; an unknown account has zeros and the genesis hash as its head. */
NS_MUST_USE int ns_ledger_account(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES],
                                  ns_account *out);

/* What recomputing a challenged training proof gave this node (its own recompute, or a judgement
 * it stored when it applied the challenge). */
typedef enum ns_judgement {
    NS_JUDGE_UNKNOWN = 0, /* not recomputed yet: the challenge waits (NS_EWAIT) */
    NS_JUDGE_FRAUD = 1,   /* the recompute does not give the proof's weights after */
    NS_JUDGE_HONEST = 2,  /* it does: the challenge is false */
} ns_judgement;
/* challenge: the entry being applied (its reference: the recomputed hash; its evidence: empty,
 * or a cohort accusation, ns_ledger_cohort_evidence_parse). */
typedef ns_judgement (*ns_ledger_judge_fn)(void *arg, const ns_proof *proof,
                                           const ns_entry *challenge);
/* Who judges challenges for this ledger: without one, every challenge waits. */
void ns_ledger_set_judge(ns_ledger *ledger, ns_ledger_judge_fn fn, void *arg);

/* Applies one signed entry at now_ms, in one transaction. Returns:
 *   NS_OK      applied;
 *   NS_EEXIST  this very entry was applied before (nothing changes);
 *   NS_ENOENT  it depends on what is not here yet: an earlier entry of its account, or the send a
 *              receive takes in (keep it and try again when that arrives);
 *   NS_EWAIT   a challenge this node has not judged yet (keep it; try again after its recompute);
 *   NS_EFORK   another entry with its account and sequence was applied: both are kept as the
 *              fraud proof and the account is frozen;
 *   NS_EINVAL  it breaks a rule (why says which) and changes nothing;
 *   ns_entry_open's errors for bytes that do not verify; NS_EIO and such for the file.
 * why (NS_LEDGER_WHY_SIZE bytes, may be NULL) gets one line for every refusal. */
NS_MUST_USE int ns_ledger_apply(ns_ledger *ledger, const uint8_t *buf, size_t len, uint64_t now_ms,
                                char *why);
/* Makes the next entry of key's account (sequence and prev_hash from the ledger, timestamp
 * now_ms), signs it, and applies it; *out gets the envelope to pass on to peers. e gives kind,
 * amount, counterparty, reference and proof. */
NS_MUST_USE int ns_ledger_append(ns_ledger *ledger, const ns_key *key, ns_entry *e, uint64_t now_ms,
                                 uint8_t **out, size_t *out_len, char *why);

/* Calls fn with the envelope of every applied entry in the order they were applied (from_id up:
 * 0 for all), stopping early when fn returns false. *last_id (may be NULL) is the last id seen. */
typedef bool (*ns_ledger_entry_fn)(void *arg, int64_t id, const uint8_t *buf, size_t len);
NS_MUST_USE int ns_ledger_each_entry(ns_ledger *ledger, int64_t from_id, ns_ledger_entry_fn fn,
                                     void *arg, int64_t *last_id);
/* An account's entries, newest first, at most limit. */
NS_MUST_USE int ns_ledger_account_entries(ns_ledger *ledger,
                                          const uint8_t node_id[NS_NODE_ID_BYTES], uint32_t limit,
                                          ns_ledger_entry_fn fn, void *arg);

/* What ns_ledger_check found. */
typedef struct ns_ledger_report {
    uint64_t entries;
    uint64_t accounts;
    ns_neuro minted, burned, held; /* held: balances + stakes + sends not yet received */
    bool ok;
    char problem[256]; /* the first problem, when not ok */
} ns_ledger_report;

/* Replays every entry from genesis into a fresh ledger in memory, checking each entry's
 * signature and chain link and every rule again, then compares the replayed state (state hash,
 * every account, totals) with this one and checks that supply = minted - burned = held. */
NS_MUST_USE int ns_ledger_check(ns_ledger *ledger, ns_ledger_report *report);

/* ---- proofs and gossip views (proofs.c) --------------------------------------------------- */

/* Keeps a proof that passed the validator (or this node's own), 'pending' until its window
 * closes at timestamp + NS_PONW_WINDOW_MS. NS_EEXIST when it is kept already. */
NS_MUST_USE int ns_ledger_proof_put(ns_ledger *ledger, const ns_proof *p, const uint8_t *buf,
                                    size_t len, uint64_t now_ms);
/* The author's pending proofs whose window closed by now_ms, oldest first, at most limit. */
NS_MUST_USE int ns_ledger_proofs_due(ns_ledger *ledger, const uint8_t author[NS_NODE_ID_BYTES],
                                     uint64_t now_ms, uint32_t limit, ns_ledger_entry_fn fn,
                                     void *arg);
/* The signed envelope of a proof kept (*out malloc'd); NS_ENOENT when it is not kept. */
NS_MUST_USE int ns_ledger_proof_record(ns_ledger *ledger, const uint8_t id[NS_SHA256_BYTES],
                                       uint8_t **out, size_t *out_len);
/* Every challenge judged: the proof, its prover and challenger, fraud or not, what was slashed. */
typedef struct ns_ledger_judgement {
    uint8_t proof_id[NS_SHA256_BYTES];
    uint8_t prover[NS_NODE_ID_BYTES];
    uint8_t challenger[NS_NODE_ID_BYTES];
    bool fraud;
    ns_neuro slashed;
} ns_ledger_judgement;
typedef bool (*ns_ledger_judgement_fn)(void *arg, const ns_ledger_judgement *j);
NS_MUST_USE int ns_ledger_judgements(ns_ledger *ledger, ns_ledger_judgement_fn fn, void *arg);
/* The author's newest training proof kept that ended before before_ms (*out malloc'd);
 * NS_ENOENT when there is none. */
NS_MUST_USE int ns_ledger_previous_training_proof(ns_ledger *ledger,
                                                  const uint8_t author[NS_NODE_ID_BYTES],
                                                  uint64_t before_ms, uint8_t **out,
                                                  size_t *out_len);
/* The Intelligence Ledger (S10): a row for every claimed training proof, newest first. */
typedef struct ns_training_round {
    int64_t round_id;
    uint64_t time_ms;
    uint32_t contributors;
    uint64_t batch_size;
    double loss_before, loss_after;
    ns_neuro minted;
    uint8_t checkpoint_hash[NS_SHA256_BYTES];
} ns_training_round;
typedef bool (*ns_ledger_round_fn)(void *arg, const ns_training_round *r);
NS_MUST_USE int ns_ledger_training_rounds(ns_ledger *ledger, uint32_t limit, ns_ledger_round_fn fn,
                                          void *arg);
/* The end (timestamp) of the author's newest proof kept; 0 when none. */
NS_MUST_USE int ns_ledger_last_proof_end(ns_ledger *ledger, const uint8_t author[NS_NODE_ID_BYTES],
                                         uint64_t *end_ms);
/* status: "pending", "challenged", "accepted", "rejected" or "claimed". */
NS_MUST_USE int ns_ledger_proof_set_status(ns_ledger *ledger, const uint8_t id[NS_SHA256_BYTES],
                                           const char *status);

typedef struct ns_ledger_proof_row {
    uint8_t id[NS_SHA256_BYTES];
    uint8_t author[NS_NODE_ID_BYTES];
    char kind[16];
    uint64_t received_ms;
    uint64_t window_closes_ms;
    char status[16];
} ns_ledger_proof_row;
typedef bool (*ns_ledger_proof_fn)(void *arg, const ns_ledger_proof_row *row);
/* The newest proofs kept, at most limit. */
NS_MUST_USE int ns_ledger_proofs_recent(ns_ledger *ledger, uint32_t limit, ns_ledger_proof_fn fn,
                                        void *arg);

/* Sends addressed to recipient that it has not taken in yet: fn(arg, id, send hash (32 bytes),
 * amount as nano in len) -- the entry fn's arguments reused: buf is the hash, len the amount. */
NS_MUST_USE int ns_ledger_sends_pending(ns_ledger *ledger,
                                        const uint8_t recipient[NS_NODE_ID_BYTES],
                                        ns_ledger_entry_fn fn, void *arg);

/* Every account's newest sequence, in node-id order (what a peer compares with its own). */
typedef bool (*ns_ledger_head_fn)(void *arg, const uint8_t node_id[NS_NODE_ID_BYTES],
                                  uint64_t sequence);
NS_MUST_USE int ns_ledger_heads(ns_ledger *ledger, ns_ledger_head_fn fn, void *arg);
/* An account's entries from from_sequence up, at most limit. */
NS_MUST_USE int ns_ledger_account_from(ns_ledger *ledger, const uint8_t node_id[NS_NODE_ID_BYTES],
                                       uint64_t from_sequence, uint32_t limit,
                                       ns_ledger_entry_fn fn, void *arg);

/* Folds the WAL back into the database file (called on a timer and at shutdown). */
NS_MUST_USE int ns_ledger_checkpoint(ns_ledger *ledger);

#endif
