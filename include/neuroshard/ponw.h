/*
 * ponw.h: Proofs of Neural Work (SPEC S9) and their rewards (S10), a sans-IO core.
 *
 * A node signs a proof of what it did every NS_PONW_INTERVAL_MS: a record of type
 * NS_RECORD_PROOF whose body (proto/ponw.proto) tells the period it covers and its counts
 * (uptime, tokens, batches, samples, layers held), and for training what a verifier needs to
 * recompute the work. Any node checks a proof with a validator: signature, freshness, never seen
 * before, rate limits and plausibility, each rejection with its own reason and counter. The
 * reward a proof earns is a pure function of the proof and the prover's stake, computed in
 * integers so that every node gets the same nano-NEURO. No clock, socket or thread here: the
 * caller passes the time.
 */
#ifndef NEUROSHARD_PONW_H
#define NEUROSHARD_PONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"
#include "neuroshard/ledger.h"

#define NS_PONW_INTERVAL_MS        60000u           /* a proof a minute */
#define NS_PONW_MAX_AGE_MS         (5u * 60 * 1000) /* older proofs are stale */
#define NS_PONW_SKEW_MS            NS_RECORD_SKEW_MS_MAX
#define NS_PONW_PERIOD_MS_MAX      (10u * 60 * 1000) /* one proof covers at most 10 minutes */
#define NS_PONW_PER_HOUR_MAX       120u
#define NS_PONW_TOKENS_PER_MIN_MAX 1000000u
#define NS_PONW_WINDOW_MS          (10u * 60 * 1000) /* the challenge window */
#define NS_PONW_LAYERS_MAX         4096u
#define NS_PONW_MICRO_BATCHES_MAX  64u /* activation hashes a training proof carries */
#define NS_PONW_BODY_BYTES_MAX     8192u

typedef enum ns_proof_type {
    NS_PROOF_UPTIME = 1,
    NS_PROOF_TRAINING = 2,
    NS_PROOF_INFERENCE = 3,
    NS_PROOF_DATA = 4,
} ns_proof_type;

/* What a verifier needs to recompute a training proof. Hashes are SHA-256. */
typedef struct ns_training_commit {
    uint8_t model_hash_before[NS_SHA256_BYTES];
    uint8_t model_hash_after[NS_SHA256_BYTES];
    uint32_t shard;
    uint64_t batch_first;
    uint32_t batch_count;
    uint64_t data_epoch;
    float loss_before;
    float loss_after;
    uint32_t micro_batches; /* entries in activation_in and activation_out */
    uint8_t activation_in[NS_PONW_MICRO_BATCHES_MAX][NS_SHA256_BYTES];
    uint8_t activation_out[NS_PONW_MICRO_BATCHES_MAX][NS_SHA256_BYTES];
    uint8_t delta_hash[NS_SHA256_BYTES];
    uint32_t layer_first;
    uint32_t layer_last;
    uint32_t exec_mode;
    /* A pipeline stage's work (in_pipeline): the quorum and generation it ran in, and the steps
     * one activation hash covers. Entry i then chains the stage's inputs (activation_in) and
     * outputs (activation_out) of steps [batch_first + i * segment_steps, + segment_steps), in
     * step then micro-batch order: h = SHA-256(h || SHA-256(tensor bytes)) from h = 0. */
    bool in_pipeline;
    uint8_t pipeline_id[NS_SHA256_BYTES];
    uint32_t segment_steps;
    /* DiLoCo: the outer round whose step the period starts from (0: none); between periods of
     * different rounds the weights change by the cohort's outer step */
    uint64_t outer_round;
} ns_training_commit;

typedef struct ns_proof {
    /* from the signed envelope */
    uint8_t id[NS_SHA256_BYTES]; /* SHA-256 of the envelope's bytes: names the proof */
    uint8_t author[NS_NODE_ID_BYTES];
    uint64_t sequence;
    uint64_t timestamp_ms; /* the end of the period */
    /* the body */
    uint32_t type; /* ns_proof_type */
    uint64_t nonce;
    uint64_t period_start_ms;
    uint64_t uptime_s;
    uint64_t tokens;
    uint64_t batches;
    uint64_t samples;
    uint32_t layers;
    bool has_embed;
    bool has_head;
    uint32_t tier; /* 1..5 */
    bool in_quorum;
    bool has_training; /* training proofs must carry it */
    ns_training_commit training;
} ns_proof;

/* The body alone. encode: NS_EINVAL when p breaks a rule of ns_proof_check; *out malloc'd.
 * decode: bounded (NS_ETOOBIG over NS_PONW_BODY_BYTES_MAX), canonical encoding only (NS_EPARSE
 * otherwise, also for unknown fields and hashes that are not 32 bytes); fills the body fields of
 * p and leaves the envelope fields alone. */
NS_MUST_USE int ns_proof_encode(const ns_proof *p, uint8_t **out, size_t *out_len);
NS_MUST_USE int ns_proof_decode(const uint8_t *buf, size_t len, ns_proof *p);
/* Structural rules any proof must keep, whatever the time: a known type, a period that ends after
 * it starts and lasts at most NS_PONW_PERIOD_MS_MAX, uptime within the period, tier 1..5,
 * 1..NS_PONW_LAYERS_MAX layers when training, a training commit exactly on training proofs whose
 * batch count and layer range agree with the counts. NULL or a reason ("why" is static text). */
const char *ns_proof_check(const ns_proof *p);

/* Signs p as key (sets author and id from the result; sequence and timestamp_ms as given).
 * *out is the malloc'd envelope. */
NS_MUST_USE int ns_proof_sign(const ns_key *key, ns_proof *p, uint8_t **out, size_t *out_len);
/* Verifies an envelope as a record at now_ms (ns_record_verify's errors), requires type
 * NS_RECORD_PROOF (NS_EINVAL otherwise), decodes the body and fills every field of p. */
NS_MUST_USE int ns_proof_open(const uint8_t *buf, size_t len, uint64_t now_ms, ns_proof *p);

/* ---- validation --------------------------------------------------------------------------- */

typedef enum ns_ponw_verdict {
    NS_PONW_ACCEPTED = 0,
    NS_PONW_MALFORMED,     /* not a canonical proof record, or a structural rule broken */
    NS_PONW_BAD_SIGNATURE, /* the signature or the author's key does not verify */
    NS_PONW_STALE,         /* older than NS_PONW_MAX_AGE_MS */
    NS_PONW_FUTURE,        /* from further in the future than NS_PONW_SKEW_MS */
    NS_PONW_DUPLICATE,     /* seen before */
    NS_PONW_OVER_RATE,     /* more than NS_PONW_PER_HOUR_MAX from one node in an hour */
    NS_PONW_OVER_TOKENS,   /* more than NS_PONW_TOKENS_PER_MIN_MAX tokens a minute */
    NS_PONW_OVERLAP,       /* its period overlaps a proof already accepted from the node */
    NS_PONW_IMPLAUSIBLE,   /* more work than the node's tier can do in the period */
    NS_PONW_FULL,          /* the validator tracks its maximum of nodes active this hour */
    NS_PONW_VERDICTS_,
} ns_ponw_verdict;

const char *ns_ponw_verdict_name(ns_ponw_verdict v); /* "accepted", "stale", ... */

/* Tokens a second a node of a tier can plausibly process (T1 fastest): generous upper bounds. */
uint64_t ns_ponw_tier_tokens_per_s_max(uint32_t tier);
/* The work rules alone (NS_PONW_OVER_TOKENS, NS_PONW_IMPLAUSIBLE or NS_PONW_ACCEPTED), for a
 * proof that passed ns_proof_check: the ledger applies them again to every claim. */
ns_ponw_verdict ns_ponw_check_work(const ns_proof *p);

typedef struct ns_ponw_validator ns_ponw_validator;

/* A validator that remembers up to nodes_max nodes active in the last hour. */
NS_MUST_USE int ns_ponw_validator_new(ns_ponw_validator **out, uint32_t nodes_max);
void ns_ponw_validator_free(ns_ponw_validator *v);
/* Checks an envelope at now_ms; on NS_PONW_ACCEPTED fills *p and remembers the proof (so the
 * same bytes are a duplicate next time). Anything else changes nothing but the verdict's
 * counter. */
ns_ponw_verdict ns_ponw_validate(ns_ponw_validator *v, const uint8_t *buf, size_t len,
                                 uint64_t now_ms, ns_proof *p);
uint64_t ns_ponw_verdict_count(const ns_ponw_validator *v, ns_ponw_verdict verdict);

/* Whether two training proofs of one author contradict each other, so that the earlier one (a)
 * is fraud without any recompute: b comes after a, holds the same layers, and starts from a step
 * before the end a claims (a claimed batches it did not train), or from exactly that step but
 * from other weights than a says it ended with (a claimed weights it did not compute) when no
 * outer step of DiLoCo came between (the same outer round). A gap
 * (b starting later: steps never proved, e.g. after a crash) is no contradiction. NULL when they
 * are consistent or not comparable, else the reason. */
const char *ns_ponw_contradiction(const ns_proof *a, const ns_proof *b);

/* Cross-checks two pipeline stages' proofs: when both are training proofs of one pipeline
 * (pipeline id and segment length) and `up`'s layers end where `down`'s begin, every aligned
 * segment both cover must have up's output hash equal to down's input hash. Returns how many
 * segments were compared (0: not neighbours of one pipeline, or no common steps); *mismatched
 * gets how many differed: one of the two lied about its activations. */
uint32_t ns_ponw_cross_check(const ns_proof *up, const ns_proof *down, uint32_t *mismatched);

/* ---- rewards (S10) ------------------------------------------------------------------------ */

#define NS_PONW_PPM 1000000u /* multipliers in parts per million */

/* M_stake = 1 + 0.1 log2(1 + stake / 1000 NEURO), in ppm, by integer arithmetic (log2 to 2^-30). */
uint32_t ns_ponw_stake_multiplier_ppm(ns_neuro stake);
/* M_role = 1 + 0.2 with the embedding + 0.3 with the head when stake >= 100 NEURO (S10). */
uint32_t ns_ponw_role_multiplier_ppm(const ns_proof *p, ns_neuro stake);

/* The reward of an accepted proof (R_total of S10, floored to the nano-NEURO at each step):
 *   uptime   every proof: 0.0001 NEURO a minute of uptime;
 *   training 0.0005 NEURO a batch a layer held;
 *   inference 0.1 NEURO a million tokens times the role's share (0.15 embedding, 0.15 head,
 *            0.70 middle, 1.0 for the whole model);
 *   data     0.00001 NEURO a sample served;
 * times M_role, M_stake and M_training (1.1 in a quorum). NS_EOVERFLOW when it does not fit. */
NS_MUST_USE int ns_ponw_reward(const ns_proof *p, ns_neuro stake, ns_neuro *out);

/* The chance (ppm) that a verifier spot-checks a proof in a swarm of `nodes` (S9): 0 below 20
 * nodes, 1 % below 100, 3 % below 500, 5 % from there. */
uint32_t ns_ponw_challenge_ppm(uint64_t nodes);

#endif
