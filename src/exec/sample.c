/*
 * sample.c: drawing the next token from logits (greedy, temperature, top-k, top-p).
 *
 * Deterministic across machines: the candidates are ordered by (logit descending, id ascending),
 * the probabilities use the executor's exp built from IEEE operations (detmath.c) with sums in
 * double, and the random numbers come from splitmix64 seeded by the caller. So a seed and a
 * model in the reproducible mode give the same text everywhere.
 */
#include <math.h>
#include <stdlib.h>

#include "exec_internal.h"

struct ns_sampler {
    ns_sample_config cfg;
    uint32_t vocab;
    uint64_t rng;
    uint32_t *order; /* [vocab] */
    double *weight;  /* [vocab] */
};

int ns_sample_config_check(const ns_sample_config *cfg, uint32_t vocab, const char **err)
{
    const char *why = NULL;
    if (vocab == 0)
        why = "the vocabulary is empty";
    else if (!(cfg->temperature >= 0.0 && cfg->temperature <= NS_SAMPLE_TEMPERATURE_MAX))
        why = "temperature must be between 0 and 100";
    else if (cfg->top_k > vocab)
        why = "top_k must be between 0 (off) and the vocabulary size";
    else if (!(cfg->top_p > 0.0 && cfg->top_p <= 1.0))
        why = "top_p must be in (0, 1]";
    if (why != NULL) {
        if (err != NULL)
            *err = why;
        return NS_EINVAL;
    }
    return NS_OK;
}

int ns_sampler_new(ns_sampler **out, uint32_t vocab, const ns_sample_config *cfg, const char **err)
{
    int rc = ns_sample_config_check(cfg, vocab, err);
    if (rc != NS_OK)
        return rc;
    ns_sampler *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NS_ENOMEM;
    s->order = malloc(sizeof *s->order * vocab);
    s->weight = malloc(sizeof *s->weight * vocab);
    if (s->order == NULL || s->weight == NULL) {
        ns_sampler_free(s);
        return NS_ENOMEM;
    }
    s->cfg = *cfg;
    s->vocab = vocab;
    s->rng = cfg->seed;
    *out = s;
    return NS_OK;
}

void ns_sampler_free(ns_sampler *s)
{
    if (s == NULL)
        return;
    free(s->order);
    free(s->weight);
    free(s);
}

/* NaN sorts below everything. */
static float key_of(float x)
{
    return isnan(x) ? -INFINITY : x;
}

/* a before b: the higher logit, then the lower id. */
static bool before(const float *logits, uint32_t a, uint32_t b)
{
    float la = key_of(logits[a]), lb = key_of(logits[b]);
    return la > lb || (la == lb && a < b);
}

static uint32_t argmax(const float *logits, uint32_t vocab)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < vocab; i++)
        if (before(logits, i, best))
            best = i;
    return best;
}

/* Sifts element i of a heap ordered so that the root is the *last* candidate (a min-heap on
 * `before`), for selecting the top k in O(V log k). */
static void sift_down(const float *logits, uint32_t *heap, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(logits, heap[m], heap[l]))
            m = l;
        if (r < n && before(logits, heap[m], heap[r]))
            m = r;
        if (m == i)
            return;
        uint32_t t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
}

/* order[0..k) = the k best ids, best first. */
static void top_k(const float *logits, uint32_t vocab, uint32_t k, uint32_t *order)
{
    for (uint32_t i = 0; i < k; i++)
        order[i] = i;
    for (int64_t i = (int64_t)k / 2 - 1; i >= 0; i--)
        sift_down(logits, order, k, (uint32_t)i);
    for (uint32_t i = k; i < vocab; i++)
        if (before(logits, i, order[0])) {
            order[0] = i;
            sift_down(logits, order, k, 0);
        }
    /* heap sort: repeatedly move the worst to the end */
    for (uint32_t n = k; n > 1; n--) {
        uint32_t t = order[0];
        order[0] = order[n - 1];
        order[n - 1] = t;
        sift_down(logits, order, n - 1, 0);
    }
}

static double uniform(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return (double)(ns__mix64(*state) >> 11) * 0x1.0p-53;
}

uint32_t ns_sampler_next(ns_sampler *s, const float *logits)
{
    uint32_t V = s->vocab;
    if (s->cfg.temperature == 0.0 || s->cfg.top_k == 1)
        return argmax(logits, V);
    uint32_t k = s->cfg.top_k == 0 ? V : s->cfg.top_k;
    top_k(logits, V, k, s->order);
    double max = key_of(logits[s->order[0]]);
    if (max == -INFINITY)
        return s->order[0]; /* nothing is finite: fall back to the first */
    double total = 0.0;
    for (uint32_t i = 0; i < k; i++) {
        double l = key_of(logits[s->order[i]]);
        s->weight[i] = l == -INFINITY ? 0.0 : ns__det_exp((l - max) / s->cfg.temperature);
        total += s->weight[i];
    }
    /* the smallest prefix whose probability reaches top_p */
    uint32_t keep = k;
    if (s->cfg.top_p < 1.0) {
        double cum = 0.0;
        for (uint32_t i = 0; i < k; i++) {
            cum += s->weight[i];
            if (cum >= s->cfg.top_p * total) {
                keep = i + 1;
                break;
            }
        }
        total = cum;
    }
    double u = uniform(&s->rng) * total, cum = 0.0;
    for (uint32_t i = 0; i < keep; i++) {
        cum += s->weight[i];
        if (u < cum)
            return s->order[i];
    }
    return s->order[keep - 1];
}
