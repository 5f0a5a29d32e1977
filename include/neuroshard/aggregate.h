/*
 * aggregate.h: robust aggregation of a cohort's pseudo-gradients and the gradient checks of
 * SPEC S8. Pure functions over float vectors: no clock, no randomness; the same inputs in the
 * same order give the same bits on every node.
 *
 * Each contribution is a vector of n floats with a weight (S7: sqrt(batches) x freshness). The
 * screen runs first, whatever the aggregator: a contribution with NaN/Inf or a weight that is not
 * finite and positive is INVALID; of the rest, the distance d_i = ||v_i - median||_2 to the
 * coordinate-wise median is turned into a robust z-score z_i = (d_i - med(d)) / (1.4826 MAD(d))
 * (MAD floored at 1e-3 med(d) + 1e-12, so identical honest vectors do not divide by zero);
 * z_i > reject_sigma is REJECTED, z_i > fraud_sigma is FRAUD (rejected, and provable: the caller
 * turns it into a fraud proof). The screen needs at least 3 valid contributions; with fewer,
 * nothing is rejected. The aggregator then runs over the accepted contributions only.
 *
 * Aggregators:
 *   MEAN          weighted mean.
 *   TRIMMED_MEAN  per coordinate, drop the floor(trim * m) smallest and largest values, weighted
 *                 mean of the rest.
 *   MEDIAN        per coordinate, weighted median (the lower one at an exact half).
 *   KRUM          the one contribution whose summed squared distance to its m - f - 2 nearest
 *                 others is smallest (f = byzantine, default floor((m - 3) / 2)).
 *   BULYAN        select m - 2f contributions by repeated Krum, then per coordinate the trimmed
 *                 mean of the beta = m - 4f values nearest the median (falls back to MEDIAN when
 *                 m < 4f + 3).
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
                            for BULYAN */
    double reject_sigma; /* 3 (S8) */
    double fraud_sigma;  /* 5 (S8) */
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
 * not screened) are filled for every input when not NULL. NS_EINVAL for a bad config, m 0 or
 * above NS_AGG_INPUTS_MAX, n 0, NULL vectors; NS_ENOENT when no contribution is accepted (out is
 * left zero); NS_ENOMEM. Scratch memory is allocated and freed inside. */
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
    const char *why;  /* the first check that failed, or NULL */
} ns_grad_check;

/* Compares an update with one computed here on a trusted micro-batch: cosine > 0.5, magnitude
 * ratio <= 10, variance ratio <= 100. NS_EINVAL for n 0, NaN/Inf in
 * either vector, or a zero trusted vector. */
NS_MUST_USE int ns_grad_check_run(const float *update, const float *trusted, size_t n,
                                  ns_grad_check *out);

#endif
