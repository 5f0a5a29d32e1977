/*
 * sync.h: DiLoCo's outer loop and the cohort exchange that feeds it (SPEC S7, S8), sans-IO.
 *
 * Holders of the same layers in different quorums (a layer cohort) train apart for H inner steps
 * and then meet: each computes its pseudo-gradient Δ = w0 - wH (w0: the weights all of them
 * shared at the last meeting), the cohort aggregates the Δs robustly, and every member applies
 * the same outer Nesterov step from the same w0, so all end the round with the same weights:
 *
 *     m <- beta * m + Δ          w <- w0 - lr * (beta * m + Δ)          w0 <- w
 *
 * (SPEC S7 writes the step as w + lr(...) with Δ = w0 - wN; the sign here is the one that
 * descends, as in the DiLoCo paper: Δ points uphill, like a gradient.)
 *
 * The exchange (ns_cohort) scales with the cohort: members, sorted by id, are placed on a grid of
 * groups of at most group_max (Moshpit SGD's scheme); a round has one phase per grid dimension,
 * and in each phase a member meets only the others of its group. Within a group of s members the
 * vector is cut into s contiguous chunks; member j owns chunk j: everyone sends it that chunk
 * (PART, compressed), the owner screens and aggregates what came (aggregate.h) and sends the
 * result back to everyone (RESULT, compressed; the owner uses the decoded result itself, so every
 * member holds the same bits). A group's result is the next phase's input; after the last phase
 * every member holds the cohort's aggregate. With 16 per group, 4,096 members need 3 phases and
 * no member ever talks to more than 15 others in one. When m is not a product of sides the
 * grid's rows (the phase-0 groups) differ by one member, and a member of a short row plays a
 * second place in the later phases (twice the traffic, 30 others at most): every group of a phase
 * then sees the same inputs in the same order, so the cohort ends with the same bits (cohort.c).
 *
 * Faults. The owner waits until timeout_ms after the phase began, then aggregates what it has
 * (its own part always counts). A member whose owner sends no result by twice that takes zero
 * for that chunk (every member that misses it agrees); the round report counts missing chunks.
 * Every PART carries the hash of the sender's w0: a member whose w0 differs (it missed an update)
 * is refused and counted, and must download the weights again (ns_outer_rebase).
 *
 * Messages are untrusted input: ns_cohort_on_message checks the type, the round (older: stale,
 * newer: early), the phase, that the sender is a member of this node's group and the chunk is
 * this node's (PART) or the sender's (RESULT), duplicates, lengths, and that the blob decodes to
 * the chunk's length with finite values; every refusal is counted by reason and changes nothing.
 * Messages carry no signature: the daemon signs the bytes it sends and keeps the signed envelope
 * of a contribution that is judged fraud (the verdict callback gives the message's bytes).
 */
#ifndef NEUROSHARD_SYNC_H
#define NEUROSHARD_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/aggregate.h"
#include "neuroshard/base.h"
#include "neuroshard/compress.h"
#include "neuroshard/crypto.h"

#define NS_SYNC_BETA           0.9
#define NS_SYNC_LR             0.7
#define NS_SYNC_GROUP_MAX      16
#define NS_SYNC_MEMBERS_MAX    4096
#define NS_SYNC_TIMEOUT_MS     30000
#define NS_SYNC_MSG_MAX        (64u << 20)  /* one message, bytes */
#define NS_SYNC_HELD_MAX       64           /* messages of a round or phase kept before it starts */
#define NS_SYNC_HELD_BYTES_MAX (256u << 20) /* their bytes, all together */
#define NS_SYNC_WEIGHT_MAX     1e15         /* one member's weight */

/* H for a swarm of `nodes` nodes: 100 (< 10), 500 (< 100), else 1000. */
uint32_t ns_sync_inner_steps(size_t nodes);
/* S7's freshness of a contribution whose base weights are age_ms old: 1.0 (< 1 h), 0.9 (< 1 day),
 * 0.7 (< 1 week), 0.3 (older). */
double ns_sync_freshness(uint64_t age_ms);
/* sqrt(batches) * freshness(age_ms). */
double ns_sync_weight(uint64_t batches, uint64_t age_ms);

/* ---- the outer step ----------------------------------------------------------------------- */

typedef struct ns_outer {
    size_t n;
    float *w0;       /* the weights of the last meeting */
    float *momentum; /* m, zero at start */
    uint64_t round;  /* outer steps taken */
    double beta, lr;
} ns_outer;

/* Copies w[0..n) as w0; momentum zero. NS_EINVAL for n 0, NaN/Inf in w, beta outside [0, 1) or
 * lr not finite and positive; NS_ENOMEM. */
NS_MUST_USE int ns_outer_init(ns_outer *o, const float *w, size_t n, double beta, double lr);
void ns_outer_free(ns_outer *o);
/* delta = w0 - w. */
void ns_outer_delta(const ns_outer *o, const float *w, float *delta);
/* The outer Nesterov step with the cohort's aggregate: writes w[0..n), then w0 = w, round + 1.
 * NS_EINVAL (and nothing changes) for NaN/Inf in agg. */
NS_MUST_USE int ns_outer_apply(ns_outer *o, const float *agg, float *w);
/* Starts again from downloaded weights: w0 = w (momentum kept unless reset_momentum). */
void ns_outer_rebase(ns_outer *o, const float *w, bool reset_momentum);
/* SHA-256 of w0's bytes (little-endian floats), the round's identity of the base weights. */
void ns_outer_w0_hash(const ns_outer *o, uint8_t out[NS_SHA256_BYTES]);

/* ---- the cohort exchange ------------------------------------------------------------------ */

typedef enum ns_cohort_refusal {
    NS_COHORT_REFUSE_MALFORMED = 0,  /* type, lengths, header fields */
    NS_COHORT_REFUSE_STALE = 1,      /* a round or phase already done */
    NS_COHORT_REFUSE_EARLY = 2,      /* a round this node has not started */
    NS_COHORT_REFUSE_NOT_MEMBER = 3, /* the sender is not in this node's group */
    NS_COHORT_REFUSE_NOT_OWNER = 4,  /* a PART for a chunk this node does not own, or a RESULT
                                        from a member that does not own that chunk */
    NS_COHORT_REFUSE_DUPLICATE = 5,
    NS_COHORT_REFUSE_BAD_BLOB = 6, /* does not decode to the chunk's length, or NaN/Inf */
    NS_COHORT_REFUSE_BASE = 7,     /* the sender's w0 hash differs from this node's */
    /* an owner's RESULT more than NS_COHORT_RESULT_MAGNITUDE_MAX times this member's own input
     * to that chunk: no honest aggregate of the group is (a mean is no longer than the longest
     * of its inputs), so the owner lied, and the chunk is taken as zero, as for a lost RESULT */
    NS_COHORT_REFUSE_RESULT_BOUND = 8,
    NS_COHORT_REFUSE_COUNT_ = 9
} ns_cohort_refusal;

/* The bound of NS_COHORT_REFUSE_RESULT_BOUND: a member's own input to a chunk is measured by its
 * norm there, or, where that is smaller, by its whole input's root mean square over the chunk's
 * length (a chunk of its own that happens to be near zero does not make an honest result look
 * long). */
#define NS_COHORT_RESULT_MAGNITUDE_MAX 100.0

const char *ns_cohort_refusal_text(ns_cohort_refusal why);

typedef struct ns_cohort_report {
    uint64_t round;
    uint32_t members; /* in the cohort this round */
    uint32_t phases;
    uint32_t contributions;  /* parts aggregated at chunks this node owns (its own included) */
    uint32_t rejected;       /* of those: rejected or fraud by the screen */
    uint32_t missing_chunks; /* chunks whose result never came (taken as zero) */
    uint64_t bytes_sent;     /* this node, messages of this round */
    uint64_t bytes_received;
} ns_cohort_report;

typedef struct ns_cohort ns_cohort;

/* One contribution an owner screened: its sender and the PART's bytes. */
typedef struct ns_cohort_evidence {
    uint8_t from[NS_ID_BYTES];
    const uint8_t *msg;
    size_t len;
} ns_cohort_evidence;

typedef struct ns_cohort_config {
    uint8_t self_id[NS_ID_BYTES];
    uint32_t group_max;  /* 2..NS_SYNC_GROUP_MAX (0: NS_SYNC_GROUP_MAX) */
    uint64_t timeout_ms; /* 0: NS_SYNC_TIMEOUT_MS */
    ns_compress_config compress;
    ns_agg_config agg;
    bool error_feedback; /* keep a residual of this node's Δ between rounds */
    void *arg;
    /* Send msg to member `to` (never this node). Must not call back into the core. */
    void (*send)(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len);
    /* The round is over: agg[0..n) is the cohort's aggregate, the same on every member that
     * heard every result. May call back into the core (start the next round); agg is valid
     * until done returns or calls back in. */
    void (*done)(void *arg, const float *agg, size_t n, const ns_cohort_report *report);
    /* A contribution this node screened as REJECTED or FRAUD (msg: the PART's bytes, to keep as
     * evidence; NULL and 0 if they could not be kept). May be NULL. Must not call back into the
     * core. Never called for this node's own part (the report counts it). */
    void (*verdict)(void *arg, const uint8_t from[NS_ID_BYTES], ns_agg_verdict verdict,
                    double sigma, const uint8_t *msg, size_t len);
    /* A contribution this node screened as FRAUD, with every part screened at that chunk in
     * the order of the screen (this node's own as a PART message too): what a judge needs to
     * run the screen again (ns_cohort_judge). May be NULL. Must not call back into the core. */
    void (*evidence)(void *arg, const uint8_t accused[NS_ID_BYTES], double sigma,
                     const ns_cohort_evidence *parts, size_t k);
} ns_cohort_config;

/* A core for vectors of n floats. Keeps a copy of config and a pointer to env (timers).
 * NS_EINVAL for a missing send or done, group_max outside 2..NS_SYNC_GROUP_MAX, n below
 * group_max, or a compress or agg config that their parts refuse; NS_ETOOBIG for n above
 * NS_COMPRESS_N_MAX or so large that a chunk's message could exceed NS_SYNC_MSG_MAX (at density
 * 1, about 20 M floats); NS_ENOMEM. Everything it needs (about 5 n floats, 6 with error
 * feedback) is allocated here. */
NS_MUST_USE int ns_cohort_new(ns_cohort **out, const ns_cohort_config *config, size_t n,
                              const ns_env *env);
void ns_cohort_free(ns_cohort *c);

/* Starts round `round` (greater than the last one started; rounds count from 1) among
 * members[0..m) (this node included; any order: the core sorts them; the same set on every
 * member) with this node's Δ, its weight, and the hash of its w0. A round still running is
 * abandoned. NS_EINVAL for a round not above the last, this node not among members, a member
 * twice, m above NS_SYNC_MEMBERS_MAX, NaN/Inf in delta, a weight not finite and positive or above
 * NS_SYNC_WEIGHT_MAX (nothing changes); NS_ENOMEM. With m = 1 the round is done at once, inside
 * this call (the aggregate is this node's Δ as the compression carries it). done may also run
 * inside ns_cohort_on_message and in a timer. */
NS_MUST_USE int ns_cohort_start(ns_cohort *c, uint64_t round, const uint8_t (*members)[NS_ID_BYTES],
                                size_t m, const float *delta, double weight,
                                const uint8_t w0_hash[NS_SHA256_BYTES]);

/* A message from `from` (the authenticated sender). 0 when taken; NS_EINVAL (refused: counted,
 * nothing changes) otherwise. Members start a round when their own H steps are done, so a faster
 * member's messages may come before this node starts it: messages of the round after the last
 * one started, and of a later phase of the running round, are kept (at most NS_SYNC_HELD_MAX,
 * 8 from one sender, and NS_SYNC_HELD_BYTES_MAX, copied; beyond that refused as early) and taken
 * when that round or phase starts, when any refusal is counted as for a message that comes then;
 * the sender's timeout covers the difference in start times. Rounds further ahead are refused as
 * early. */
NS_MUST_USE int ns_cohort_on_message(ns_cohort *c, const uint8_t from[NS_ID_BYTES],
                                     const uint8_t *msg, size_t len);

uint64_t ns_cohort_refusals(const ns_cohort *c, ns_cohort_refusal why);
bool ns_cohort_busy(const ns_cohort *c); /* a round is running */

/* ---- signed contributions and fraud evidence (evidence.c) --------------------------------- */

/* What a PART message says (cohort.c's wire format), for a judge. */
typedef struct ns_cohort_part {
    uint64_t round;
    uint32_t phase, lane, chunk;
    uint64_t first, length;
    double weight;
    uint8_t w0_hash[NS_SHA256_BYTES];
    const uint8_t *blob;
    size_t blob_len;
} ns_cohort_part;

/* NS_EPARSE unless msg is a well-formed PART (the header's own checks). */
NS_MUST_USE int ns_cohort_part_parse(const uint8_t *msg, size_t len, ns_cohort_part *out);

/* The daemon seals every cohort message it sends: the sender's public key and its signature over
 * SHA256(NS_COHORT_SEAL_DOMAIN || msg), so that a third party can check who said what. */
#define NS_COHORT_SEAL_DOMAIN "neuroshard/cohort/v1"
#define NS_COHORT_SEAL_BYTES  (NS_PUBKEY_BYTES + NS_SIG_BYTES)
NS_MUST_USE int ns_cohort_seal(const ns_key *key, const uint8_t *msg, size_t len,
                               uint8_t seal[NS_COHORT_SEAL_BYTES]);
/* NS_OK with the signer's node id, NS_EBADSIG or NS_ECRYPTO (a key that is not a point). */
NS_MUST_USE int ns_cohort_seal_check(const uint8_t *msg, size_t len,
                                     const uint8_t seal[NS_COHORT_SEAL_BYTES],
                                     uint8_t signer[NS_ID_BYTES]);

/* A fraud bundle: every sealed PART an owner screened at one chunk of one round, in the order of
 * its screen. Layout: "NSCB" | version 1 | k (u8) | k x (msg length u32 LE | msg | seal). */
#define NS_COHORT_BUNDLE_MAX       (256u << 20)
#define NS_COHORT_BUNDLE_PARTS_MIN 3 /* fewer: no screen can judge anyone */

typedef struct ns_cohort_sealed {
    const uint8_t *msg;
    size_t len;
    uint8_t seal[NS_COHORT_SEAL_BYTES];
} ns_cohort_sealed;

/* *out (malloc'd) gets the bundle of parts[0..k). NS_EINVAL for k outside
 * NS_COHORT_BUNDLE_PARTS_MIN..NS_SYNC_GROUP_MAX or a message over NS_SYNC_MSG_MAX; NS_ETOOBIG
 * beyond NS_COHORT_BUNDLE_MAX; NS_ENOMEM. */
NS_MUST_USE int ns_cohort_bundle_write(const ns_cohort_sealed *parts, size_t k, uint8_t **out,
                                       size_t *out_len);

typedef struct ns_cohort_judgement {
    ns_agg_verdict verdict; /* of the accused's part under S8's screen (3 and 5 sigma) */
    double sigma;
    uint64_t round;
    uint32_t parts;
} ns_cohort_judgement;

/* Runs the screen again over a bundle, as every node would: deterministic, from the bundle alone.
 * NS_OK with the accused's verdict; NS_EPARSE for a bundle that proves nothing: malformed, a
 * seal that does not verify, parts that are not PARTs of one round, phase, lane and chunk with
 * one w0, a signer twice, fewer than NS_COHORT_BUNDLE_PARTS_MIN parts, a blob that does not
 * decode to the chunk's length, or no part of the accused; NS_ENOMEM. Bounded by the bundle's
 * length and NS_COHORT_BUNDLE_MAX: never reads outside it, allocates at most the chunk's floats
 * for each part. */
NS_MUST_USE int ns_cohort_judge(const uint8_t *bundle, size_t len,
                                const uint8_t accused[NS_ID_BYTES], ns_cohort_judgement *out);

#endif
