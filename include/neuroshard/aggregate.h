/*
 * aggregate.h: robust aggregation of a cohort's pseudo-gradients and the gradient checks of
 * SPEC S8. Pure functions over float vectors: no clock, no randomness; the same inputs in the
 * same order give the same bits on every node.
 *
 * Each contribution is a vector of n floats with a weight (S7: sqrt(batches) x freshness). The
 * screen runs first, whatever the aggregator: a contribution with NaN/Inf or a weight that is not
 * finite and positive is INVALID; of the rest, the distance d_i = ||v_i - median||_2 to the
 * coordinate-wise median is turned into a robust z-score z_i = (d_i - med(d)) / (1.4826 MAD(d))
 * (MAD floored at 0.25 med(d) + 1e-12: in a small cohort the MAD of three honest distances can
 * be tiny by chance, and identical honest vectors must not divide by zero);
 * z_i > reject_sigma is REJECTED, z_i > fraud_sigma is FRAUD (rejected, and provable: the caller
 * turns it into a fraud proof). The screen needs at least 3 valid contributions; with fewer,
 * nothing is rejected. The screen's medians (of each coordinate, of d, of |d - med(d)|) are plain,
 * unweighted ones (the mean of the two middle values for an even count): a weight is its sender's
 * claim, and must not steer the screen. Since at least half of the valid ones lie at or below
 * med(d), the screen never rejects them all. The aggregator then runs over the accepted
 * contributions only; below, m is their count.
 *
 * Aggregators (equal values are ordered by input index, so no result depends on how they sort):
 *   MEAN          weighted mean.
 *   TRIMMED_MEAN  per coordinate, drop the floor(trim * m + 1e-9) smallest and largest values
 *                 (the 1e-9 so that 0.29 x 100 drops 29; at least one value stays), weighted mean
 *                 of the rest.
 *   MEDIAN        per coordinate, weighted median (the lower one at an exact half).
 *   KRUM          the one contribution whose summed squared distance to its m - f - 2 nearest
 *                 others (at least 1) is smallest, copied; the lowest index on a tie (f =
 *                 byzantine, default floor((m - 3) / 2)). Weights play no part.
 *   BULYAN        select m - 2f contributions by repeated Krum, then per coordinate the weighted
 *                 mean of the beta = m - 4f values nearest their weighted median (falls back to
 *                 MEDIAN when m < 4f + 3).
 */
#ifndef NEUROSHARD_AGGREGATE_H
#define NEUROSHARD_AGGREGATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"

#define NS_AGG_INPUTS_MAX 1024

typedef enum ns_agg_kind {
    NS_AGG_MEAN = 0,
    NS_AGG_TRIMMED_MEAN = 1, /* the default */
    NS_AGG_MEDIAN = 2,
    NS_AGG_KRUM = 3,
    NS_AGG_BULYAN = 4,
} ns_agg_kind;

const char *ns_agg_name(ns_agg_kind kind); /* "mean", "trimmed-mean", "median", "krum", "bulyan" */
NS_MUST_USE int ns_agg_parse(const char *name, ns_agg_kind *out); /* NS_EINVAL if unknown */

typedef struct ns_agg_config {
    ns_agg_kind kind;
    double trim;         /* TRIMMED_MEAN: share dropped at each end, [0, 0.5) (default 0.2) */
    uint32_t byzantine;  /* KRUM/BULYAN: f; 0 means floor((m - 3) / 2) for KRUM, floor((m-3)/4)
                            for BULYAN (m: the accepted count) */
    double reject_sigma; /* 3 (S8); > 0; HUGE_VAL turns rejection off (INVALID still holds) */
    double fraud_sigma;  /* 5 (S8); >= reject_sigma */
} ns_agg_config;

void ns_agg_config_default(ns_agg_config *cfg);

typedef struct ns_agg_input {
    const float *v; /* n floats */
    double weight;
} ns_agg_input;

typedef enum ns_agg_verdict {
    NS_AGG_ACCEPTED = 0,
    NS_AGG_REJECTED = 1, /* beyond reject_sigma */
    NS_AGG_FRAUD = 2,    /* beyond fraud_sigma */
    NS_AGG_INVALID = 3,  /* NaN/Inf, or a bad weight */
} ns_agg_verdict;

const char *ns_agg_verdict_name(ns_agg_verdict v);

/* Screens and aggregates in[0..m) into out[0..n). verdicts[i] and sigmas[i] (the z-score, 0 when
 * not screened) are filled for every input when not NULL. NS_EINVAL for a bad config (unknown
 * kind, trim outside [0, 0.5), sigmas as above), m 0 or above NS_AGG_INPUTS_MAX, n 0, NULL in,
 * vectors or out (nothing is written then); NS_ENOENT when no contribution is accepted, which
 * happens only when none is valid (out is left zero, verdicts and sigmas filled); NS_ENOMEM.
 * Scratch memory (O(m), and m x m doubles for KRUM and BULYAN) is allocated and freed inside. */
NS_MUST_USE int ns_agg_run(const ns_agg_config *cfg, const ns_agg_input *in, size_t m, size_t n,
                           float *out, ns_agg_verdict *verdicts, double *sigmas);

/* ---- gradient checks (S8) ----------------------------------------------------------------- */

#define NS_GRAD_COSINE_MIN    0.5
#define NS_GRAD_MAGNITUDE_MAX 10.0
#define NS_GRAD_VARIANCE_MAX  100.0

typedef struct ns_grad_check {
    double cosine;    /* cos(update, trusted) */
    double magnitude; /* ||update|| / ||trusted|| */
    double variance;  /* var(update) / var(trusted) */
    bool ok;          /* every check passed */
    const char *why;  /* the first check that failed: "cosine", "magnitude", "variance"; or NULL */
} ns_grad_check;

/* Compares an update with one computed here on a trusted micro-batch: cosine > 0.5, magnitude
 * ratio <= 10, variance ratio <= 100 (population variances over the n values; a zero update has
 * cosine 0; a constant trusted vector gives a variance ratio of 0 for a constant update and
 * HUGE_VAL otherwise). NS_EINVAL for NULL vectors, n 0, NaN/Inf in either vector, or a zero
 * trusted vector (out is not written then). */
NS_MUST_USE int ns_grad_check_run(const float *update, const float *trusted, size_t n,
                                  ns_grad_check *out);

#endif
