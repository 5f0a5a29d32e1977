/*
 * aggregate.c: the screen and the robust aggregators of SPEC S8, and the gradient checks.
 *
 * ns_agg_run screens every contribution (validity, then a robust z-score of its distance to the
 * plain coordinate-wise median), then hands the accepted ones to one aggregator. Pure arithmetic
 * over caller-owned vectors: no clock, no randomness, no logging. Every node of a cohort must get
 * the same bits from the same inputs, so every sum runs in a fixed order into a double (inputs in
 * index order, or a coordinate's values in sorted order), ties break on the input index, and the
 * build never contracts a*b+c into FMA. Scratch (a few arrays of m, an m x m distance table for
 * KRUM and BULYAN) is allocated once per call and freed before it returns; nothing of size n is.
 *
 * Cost for m inputs of n floats: validity O(mn); the screen's median O(n m log m); MEAN O(mn);
 * TRIMMED_MEAN and MEDIAN O(n m log m); KRUM O(m^2 n) for the distances; BULYAN O(m^2 n) plus
 * O(m^3 log m) for its repeated Krum choices, plus O(n m log m).
 */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/aggregate.h"

#define AGG_KIND_COUNT     (NS_AGG_BULYAN + 1)
#define AGG_VERDICT_COUNT  (NS_AGG_INVALID + 1)
#define SCREEN_VALID_MIN   3      /* below this many valid contributions nothing is rejected */
#define MAD_TO_SIGMA       1.4826 /* MAD x this estimates sigma for a normal distribution */
#define MAD_FLOOR_SHARE    0.25   /* of med(d) */
#define MAD_FLOOR_ABS      1e-12
#define TRIM_SLACK         1e-9 /* 0.29 x 100 is 28.999999999999996 in double; it drops 29 */
#define MEAN_BLOCK         1024 /* coordinates the weighted mean accumulates at once */
#define INSERTION_SORT_MAX 24

static_assert(NS_AGG_INPUTS_MAX <= UINT32_MAX, "an input index fits the low half of a sort key");
static_assert(SCREEN_VALID_MIN >= 3, "a robust z-score needs a median and a spread");

static const char *const kind_names[AGG_KIND_COUNT] = {
    [NS_AGG_MEAN] = "mean",     [NS_AGG_TRIMMED_MEAN] = "trimmed-mean",
    [NS_AGG_MEDIAN] = "median", [NS_AGG_KRUM] = "krum",
    [NS_AGG_BULYAN] = "bulyan",
};

static const char *const verdict_names[AGG_VERDICT_COUNT] = {
    [NS_AGG_ACCEPTED] = "accepted",
    [NS_AGG_REJECTED] = "rejected",
    [NS_AGG_FRAUD] = "fraud",
    [NS_AGG_INVALID] = "invalid",
};

const char *ns_agg_name(ns_agg_kind kind)
{
    NS_ASSERT((unsigned)kind < AGG_KIND_COUNT);
    return kind_names[kind];
}

int ns_agg_parse(const char *name, ns_agg_kind *out)
{
    NS_ASSERT(out != NULL);
    if (name == NULL)
        return NS_EINVAL;
    for (unsigned k = 0; k < AGG_KIND_COUNT; k++) {
        if (strcmp(name, kind_names[k]) == 0) {
            *out = (ns_agg_kind)k;
            return NS_OK;
        }
    }
    return NS_EINVAL;
}

const char *ns_agg_verdict_name(ns_agg_verdict v)
{
    NS_ASSERT((unsigned)v < AGG_VERDICT_COUNT);
    return verdict_names[v];
}

void ns_agg_config_default(ns_agg_config *cfg)
{
    NS_ASSERT(cfg != NULL);
    *cfg = (ns_agg_config){
        .kind = NS_AGG_TRIMMED_MEAN,
        .trim = 0.2,
        .byzantine = 0,
        .reject_sigma = 3.0,
        .fraud_sigma = 5.0,
    };
}

/* ---- sorting one coordinate --------------------------------------------------------------- */

/* A coordinate's value and its input's index in one integer: the float's bits turned so that
 * unsigned order is numeric order (negatives flipped, positives above them) in the high half, the
 * index in the low half. Keys are unique, so every sort gives the same order; equal values go by
 * index. */
static uint64_t sort_key(float x, uint32_t index)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | index;
}

static uint32_t key_index(uint64_t key)
{
    return (uint32_t)key;
}

static int key_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int double_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void keys_sort(uint64_t *keys, size_t count)
{
    if (count > INSERTION_SORT_MAX) {
        qsort(keys, count, sizeof *keys, key_cmp);
        return;
    }
    for (size_t i = 1; i < count; i++) {
        uint64_t k = keys[i];
        size_t j = i;
        for (; j > 0 && keys[j - 1] > k; j--)
            keys[j] = keys[j - 1];
        keys[j] = k;
    }
}

/* keys[0..count) := coordinate j of the inputs listed in idx, sorted ascending. */
static void gather_sorted(uint64_t *keys, const ns_agg_input *in, const uint32_t *idx, size_t count,
                          size_t j)
{
    for (size_t p = 0; p < count; p++)
        keys[p] = sort_key(in[idx[p]].v[j], idx[p]);
    keys_sort(keys, count);
}

static double key_value(const ns_agg_input *in, uint64_t key, size_t j)
{
    return (double)in[key_index(key)].v[j];
}

static double key_weight(const ns_agg_input *in, uint64_t key)
{
    return in[key_index(key)].weight;
}

/* The weighted mean of the sorted values keys[lo..hi), summed in sorted order. */
static float weighted_mean_range(const ns_agg_input *in, const uint64_t *keys, size_t lo, size_t hi,
                                 size_t j)
{
    NS_ASSERT(lo < hi);
    double wv = 0.0, w = 0.0;
    for (size_t k = lo; k < hi; k++) {
        double wk = key_weight(in, keys[k]);
        wv += wk * key_value(in, keys[k], j);
        w += wk;
    }
    NS_ASSERT(w > 0.0);
    return (float)(wv / w);
}

/* The position of the weighted median in keys[0..count): the first whose cumulative weight
 * reaches half the total, so at an exact half the lower one. The total is summed in the same
 * order as the running sum, so equal weights meet the half exactly. */
static size_t weighted_median_pos(const ns_agg_input *in, const uint64_t *keys, size_t count)
{
    NS_ASSERT(count > 0);
    double total = 0.0;
    for (size_t k = 0; k < count; k++)
        total += key_weight(in, keys[k]);
    double cum = 0.0;
    for (size_t k = 0; k < count; k++) {
        cum += key_weight(in, keys[k]);
        if (2.0 * cum >= total)
            return k;
    }
    NS_ASSERT(!"the running sum reaches the total");
    return count - 1;
}

/* The plain median of sorted doubles: the middle one, or the mean of the two middle ones. */
static double median_sorted(const double *x, size_t count)
{
    NS_ASSERT(count > 0);
    if (count % 2 == 1)
        return x[count / 2];
    return 0.5 * (x[count / 2 - 1] + x[count / 2]);
}

/* ---- scratch ------------------------------------------------------------------------------ */

typedef struct agg_scratch {
    ns_agg_verdict *verdict; /* by input */
    double *sigma;           /* by input */
    double *dist;            /* by input: squared distance to the median, then its root */
    uint32_t *idx;           /* the valid, then the accepted inputs, ascending */
    uint64_t *keys;          /* one coordinate's values */
    double *stat;            /* the distances, then their deviations, sorted */
    double *pair;            /* KRUM, BULYAN: squared distances among the accepted, a x a */
    double *row;             /* KRUM, BULYAN: one candidate's distances to the others */
    bool *alive;             /* KRUM, BULYAN: not yet chosen */
    uint32_t *chosen;        /* BULYAN: the inputs chosen by repeated Krum */
} agg_scratch;

static void scratch_free(agg_scratch *s)
{
    free(s->verdict);
    free(s->sigma);
    free(s->dist);
    free(s->idx);
    free(s->keys);
    free(s->stat);
    free(s->pair);
    free(s->row);
    free(s->alive);
    free(s->chosen);
}

static int scratch_alloc(agg_scratch *s, ns_agg_kind kind, size_t m)
{
    NS_ASSERT(m > 0);
    NS_ASSERT(m <= NS_AGG_INPUTS_MAX);
    *s = (agg_scratch){0};
    s->verdict = calloc(m, sizeof *s->verdict);
    s->sigma = calloc(m, sizeof *s->sigma);
    s->dist = calloc(m, sizeof *s->dist);
    s->idx = calloc(m, sizeof *s->idx);
    s->keys = calloc(m, sizeof *s->keys);
    s->stat = calloc(m, sizeof *s->stat);
    bool ok = s->verdict && s->sigma && s->dist && s->idx && s->keys && s->stat;
    if (kind == NS_AGG_KRUM || kind == NS_AGG_BULYAN) {
        s->pair = calloc(m * m, sizeof *s->pair);
        s->row = calloc(m, sizeof *s->row);
        s->alive = calloc(m, sizeof *s->alive);
        s->chosen = calloc(m, sizeof *s->chosen);
        ok = ok && s->pair && s->row && s->alive && s->chosen;
    }
    if (!ok) {
        scratch_free(s);
        return NS_ENOMEM;
    }
    return NS_OK;
}

/* ---- the screen --------------------------------------------------------------------------- */

static bool input_valid(const ns_agg_input *x, size_t n)
{
    if (!(isfinite(x->weight) && x->weight > 0.0))
        return false;
    for (size_t j = 0; j < n; j++) {
        if (!isfinite(x->v[j]))
            return false;
    }
    return true;
}

/* s->dist[i] := ||v_i - median||_2 for the nv valid inputs in s->idx, the median taken per
 * coordinate over them, unweighted: weights are the senders' claims, and the screen must not be
 * steerable by a claim. */
static void screen_distances(agg_scratch *s, const ns_agg_input *in, size_t nv, size_t n)
{
    for (size_t p = 0; p < nv; p++)
        s->dist[s->idx[p]] = 0.0;
    for (size_t j = 0; j < n; j++) {
        gather_sorted(s->keys, in, s->idx, nv, j);
        double med = key_value(in, s->keys[nv / 2], j);
        if (nv % 2 == 0)
            med = 0.5 * (key_value(in, s->keys[nv / 2 - 1], j) + med);
        for (size_t p = 0; p < nv; p++) {
            double d = (double)in[s->idx[p]].v[j] - med;
            s->dist[s->idx[p]] += d * d;
        }
    }
    for (size_t p = 0; p < nv; p++)
        s->dist[s->idx[p]] = sqrt(s->dist[s->idx[p]]);
}

/* Judges the nv valid inputs in s->idx by the robust z-score of their distances. */
static void screen_judge(agg_scratch *s, const ns_agg_config *cfg, size_t nv)
{
    for (size_t p = 0; p < nv; p++)
        s->stat[p] = s->dist[s->idx[p]];
    qsort(s->stat, nv, sizeof *s->stat, double_cmp);
    double med = median_sorted(s->stat, nv);
    for (size_t p = 0; p < nv; p++)
        s->stat[p] = fabs(s->dist[s->idx[p]] - med);
    qsort(s->stat, nv, sizeof *s->stat, double_cmp);
    double mad = fmax(median_sorted(s->stat, nv), MAD_FLOOR_SHARE * med + MAD_FLOOR_ABS);
    double scale = MAD_TO_SIGMA * mad;
    NS_ASSERT(scale > 0.0);
    for (size_t p = 0; p < nv; p++) {
        uint32_t i = s->idx[p];
        double z = (s->dist[i] - med) / scale;
        s->sigma[i] = z;
        if (z > cfg->fraud_sigma)
            s->verdict[i] = NS_AGG_FRAUD;
        else if (z > cfg->reject_sigma)
            s->verdict[i] = NS_AGG_REJECTED;
        else
            s->verdict[i] = NS_AGG_ACCEPTED;
    }
}

/* Fills s->verdict and s->sigma for every input; returns how many are accepted, listed in
 * s->idx in index order. */
static size_t screen(agg_scratch *s, const ns_agg_config *cfg, const ns_agg_input *in, size_t m,
                     size_t n)
{
    size_t nv = 0;
    for (size_t i = 0; i < m; i++) {
        s->sigma[i] = 0.0;
        s->verdict[i] = input_valid(&in[i], n) ? NS_AGG_ACCEPTED : NS_AGG_INVALID;
        if (s->verdict[i] == NS_AGG_ACCEPTED)
            s->idx[nv++] = (uint32_t)i;
    }
    if (nv >= SCREEN_VALID_MIN) {
        screen_distances(s, in, nv, n);
        screen_judge(s, cfg, nv);
    }
    size_t accepted = 0;
    for (size_t i = 0; i < m; i++) {
        if (s->verdict[i] == NS_AGG_ACCEPTED)
            s->idx[accepted++] = (uint32_t)i;
    }
    NS_ASSERT(accepted <= nv);
    NS_ASSERT(nv < SCREEN_VALID_MIN || 2 * accepted >= nv); /* half lie at or below med(d) */
    return accepted;
}

/* ---- MEAN, TRIMMED_MEAN, MEDIAN ----------------------------------------------------------- */

/* The weighted mean, block by block so that each block's accumulators stay in cache; every
 * coordinate still sums its inputs in index order. */
static void agg_mean(const ns_agg_input *in, const uint32_t *idx, size_t a, size_t n, float *out)
{
    double w_sum = 0.0;
    for (size_t p = 0; p < a; p++)
        w_sum += in[idx[p]].weight;
    NS_ASSERT(w_sum > 0.0);
    double acc[MEAN_BLOCK];
    for (size_t j0 = 0; j0 < n; j0 += MEAN_BLOCK) {
        size_t len = n - j0 < MEAN_BLOCK ? n - j0 : MEAN_BLOCK;
        memset(acc, 0, len * sizeof acc[0]);
        for (size_t p = 0; p < a; p++) {
            const float *v = in[idx[p]].v + j0;
            double w = in[idx[p]].weight;
            for (size_t j = 0; j < len; j++)
                acc[j] += w * (double)v[j];
        }
        for (size_t j = 0; j < len; j++)
            out[j0 + j] = (float)(acc[j] / w_sum);
    }
}

/* How many values TRIMMED_MEAN drops at each end of a coordinate's a values; at least one stays. */
static size_t trim_count(double trim, size_t a)
{
    NS_ASSERT(trim >= 0.0 && trim < 0.5);
    size_t k = (size_t)floor(trim * (double)a + TRIM_SLACK);
    if (2 * k >= a)
        k = (a - 1) / 2;
    NS_ASSERT(2 * k < a);
    return k;
}

static void agg_trimmed_mean(agg_scratch *s, double trim, const ns_agg_input *in, size_t a,
                             size_t n, float *out)
{
    size_t k = trim_count(trim, a);
    for (size_t j = 0; j < n; j++) {
        gather_sorted(s->keys, in, s->idx, a, j);
        out[j] = weighted_mean_range(in, s->keys, k, a - k, j);
    }
}

static void agg_median(agg_scratch *s, const ns_agg_input *in, const uint32_t *idx, size_t a,
                       size_t n, float *out)
{
    for (size_t j = 0; j < n; j++) {
        gather_sorted(s->keys, in, idx, a, j);
        out[j] = (float)key_value(in, s->keys[weighted_median_pos(in, s->keys, a)], j);
    }
}

/* ---- KRUM, BULYAN ------------------------------------------------------------------------- */

static double squared_distance(const float *x, const float *y, size_t n)
{
    double sum = 0.0;
    for (size_t j = 0; j < n; j++) {
        double d = (double)x[j] - (double)y[j];
        sum += d * d;
    }
    return sum;
}

/* pair[p * a + q] := ||v_p - v_q||^2 for the accepted inputs p, q. */
static void pair_distances(double *pair, const ns_agg_input *in, const uint32_t *idx, size_t a,
                           size_t n)
{
    for (size_t p = 0; p < a; p++) {
        pair[p * a + p] = 0.0;
        for (size_t q = p + 1; q < a; q++) {
            double d = squared_distance(in[idx[p]].v, in[idx[q]].v, n);
            pair[p * a + q] = d;
            pair[q * a + p] = d;
        }
    }
}

/* How many nearest others Krum sums among alive candidates, f of them assumed byzantine:
 * alive - f - 2, but at least 1 (an f too large for the cohort still lets Krum choose). */
static size_t krum_neighbours(size_t alive, size_t f)
{
    if (alive <= 1)
        return 0;
    return alive > f + 2 ? alive - f - 2 : 1;
}

/* The alive candidate (a position among the a accepted) whose summed squared distance to its
 * nearest alive others is smallest; ties go to the lowest position. */
static size_t krum_pick(agg_scratch *s, size_t a, size_t alive, size_t f)
{
    size_t k = krum_neighbours(alive, f);
    size_t best = a;
    double best_score = 0.0;
    for (size_t p = 0; p < a; p++) {
        if (!s->alive[p])
            continue;
        size_t r = 0;
        for (size_t q = 0; q < a; q++) {
            if (q != p && s->alive[q])
                s->row[r++] = s->pair[p * a + q];
        }
        NS_ASSERT(r + 1 == alive);
        qsort(s->row, r, sizeof *s->row, double_cmp);
        double score = 0.0;
        for (size_t t = 0; t < k; t++)
            score += s->row[t];
        if (best == a || score < best_score) {
            best = p;
            best_score = score;
        }
    }
    NS_ASSERT(best < a);
    return best;
}

static void agg_krum(agg_scratch *s, uint32_t byzantine, const ns_agg_input *in, size_t a, size_t n,
                     float *out)
{
    size_t f = byzantine != 0 ? byzantine : (a >= 3 ? (a - 3) / 2 : 0);
    pair_distances(s->pair, in, s->idx, a, n);
    for (size_t p = 0; p < a; p++)
        s->alive[p] = true;
    size_t p = krum_pick(s, a, a, f);
    memcpy(out, in[s->idx[p]].v, n * sizeof *out);
}

/* In the sorted keys[0..count), the beta values nearest keys[mid]: a window grown from mid one
 * step at a time towards the nearer neighbour (the lower one on a tie). Returns its start. */
static size_t nearest_window(const ns_agg_input *in, const uint64_t *keys, size_t count, size_t mid,
                             size_t beta, size_t j)
{
    NS_ASSERT(mid < count);
    NS_ASSERT(beta >= 1 && beta <= count);
    double med = key_value(in, keys[mid], j);
    size_t lo = mid, hi = mid + 1;
    while (hi - lo < beta) {
        if (lo == 0)
            hi++;
        else if (hi == count)
            lo--;
        else if (med - key_value(in, keys[lo - 1], j) <= key_value(in, keys[hi], j) - med)
            lo--;
        else
            hi++;
    }
    return lo;
}

static void agg_bulyan(agg_scratch *s, uint32_t byzantine, const ns_agg_input *in, size_t a,
                       size_t n, float *out)
{
    size_t f = byzantine != 0 ? byzantine : (a >= 3 ? (a - 3) / 4 : 0);
    if (a < 4 * f + 3) {
        agg_median(s, in, s->idx, a, n, out);
        return;
    }
    size_t theta = a - 2 * f, beta = a - 4 * f;
    pair_distances(s->pair, in, s->idx, a, n);
    for (size_t p = 0; p < a; p++)
        s->alive[p] = true;
    for (size_t t = 0; t < theta; t++) {
        size_t p = krum_pick(s, a, a - t, f);
        s->alive[p] = false;
        s->chosen[t] = s->idx[p];
    }
    for (size_t j = 0; j < n; j++) {
        gather_sorted(s->keys, in, s->chosen, theta, j);
        size_t mid = weighted_median_pos(in, s->keys, theta);
        size_t lo = nearest_window(in, s->keys, theta, mid, beta, j);
        out[j] = weighted_mean_range(in, s->keys, lo, lo + beta, j);
    }
}

/* ---- the run ------------------------------------------------------------------------------ */

static int check_config(const ns_agg_config *cfg)
{
    if ((unsigned)cfg->kind >= AGG_KIND_COUNT)
        return NS_EINVAL;
    if (!(cfg->trim >= 0.0 && cfg->trim < 0.5))
        return NS_EINVAL;
    if (!(cfg->reject_sigma > 0.0 && cfg->fraud_sigma >= cfg->reject_sigma))
        return NS_EINVAL;
    return NS_OK;
}

static int check_inputs(const ns_agg_input *in, size_t m, size_t n, const float *out)
{
    if (in == NULL || out == NULL || m == 0 || m > NS_AGG_INPUTS_MAX || n == 0)
        return NS_EINVAL;
    for (size_t i = 0; i < m; i++) {
        if (in[i].v == NULL)
            return NS_EINVAL;
    }
    return NS_OK;
}

static void aggregate(agg_scratch *s, const ns_agg_config *cfg, const ns_agg_input *in, size_t a,
                      size_t n, float *out)
{
    switch (cfg->kind) {
    case NS_AGG_MEAN:
        agg_mean(in, s->idx, a, n, out);
        return;
    case NS_AGG_TRIMMED_MEAN:
        agg_trimmed_mean(s, cfg->trim, in, a, n, out);
        return;
    case NS_AGG_MEDIAN:
        agg_median(s, in, s->idx, a, n, out);
        return;
    case NS_AGG_KRUM:
        agg_krum(s, cfg->byzantine, in, a, n, out);
        return;
    case NS_AGG_BULYAN:
        agg_bulyan(s, cfg->byzantine, in, a, n, out);
        return;
    }
    NS_ASSERT(!"aggregator kind checked by check_config");
}

int ns_agg_run(const ns_agg_config *cfg, const ns_agg_input *in, size_t m, size_t n, float *out,
               ns_agg_verdict *verdicts, double *sigmas)
{
    NS_ASSERT(cfg != NULL);
    int err = check_config(cfg);
    if (err == NS_OK)
        err = check_inputs(in, m, n, out);
    if (err != NS_OK)
        return err;
    agg_scratch s;
    err = scratch_alloc(&s, cfg->kind, m);
    if (err != NS_OK)
        return err;
    size_t accepted = screen(&s, cfg, in, m, n);
    if (verdicts != NULL)
        memcpy(verdicts, s.verdict, m * sizeof *verdicts);
    if (sigmas != NULL)
        memcpy(sigmas, s.sigma, m * sizeof *sigmas);
    if (accepted == 0) {
        memset(out, 0, n * sizeof *out);
        err = NS_ENOENT;
    } else {
        aggregate(&s, cfg, in, accepted, n, out);
    }
    scratch_free(&s);
    return err;
}

/* ---- gradient checks ---------------------------------------------------------------------- */

static bool all_finite(const float *x, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        if (!isfinite(x[j]))
            return false;
    }
    return true;
}

/* The population variance of x, two passes (mean, then squared deviations). */
static double variance(const float *x, size_t n)
{
    double sum = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += (double)x[j];
    double mean = sum / (double)n, dev = 0.0;
    for (size_t j = 0; j < n; j++) {
        double d = (double)x[j] - mean;
        dev += d * d;
    }
    return dev / (double)n;
}

static const char *grad_check_failure(const ns_grad_check *c)
{
    if (!(c->cosine > NS_GRAD_COSINE_MIN))
        return "cosine";
    if (c->magnitude > NS_GRAD_MAGNITUDE_MAX)
        return "magnitude";
    if (c->variance > NS_GRAD_VARIANCE_MAX)
        return "variance";
    return NULL;
}

int ns_grad_check_run(const float *update, const float *trusted, size_t n, ns_grad_check *out)
{
    NS_ASSERT(out != NULL);
    if (update == NULL || trusted == NULL || n == 0)
        return NS_EINVAL;
    if (!all_finite(update, n) || !all_finite(trusted, n))
        return NS_EINVAL;
    double dot = 0.0, uu = 0.0, tt = 0.0;
    for (size_t j = 0; j < n; j++) {
        double u = update[j], t = trusted[j];
        dot += u * t;
        uu += u * u;
        tt += t * t;
    }
    if (tt == 0.0)
        return NS_EINVAL;
    double var_u = variance(update, n), var_t = variance(trusted, n);
    ns_grad_check c = {0};
    c.cosine = uu > 0.0 ? dot / (sqrt(uu) * sqrt(tt)) : 0.0;
    c.magnitude = sqrt(uu) / sqrt(tt);
    if (var_t > 0.0)
        c.variance = var_u / var_t;
    else
        c.variance = var_u > 0.0 ? HUGE_VAL : 0.0;
    c.why = grad_check_failure(&c);
    c.ok = c.why == NULL;
    *out = c;
    return NS_OK;
}
