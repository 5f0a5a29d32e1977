/*
 * sync.c: DiLoCo's outer loop (SPEC S7): the inner-step count, the freshness and weight of a
 * contribution, and the outer Nesterov step that every member of a layer cohort applies to the
 * same w0 with the same aggregate, so that all of them end the round with the same bits.
 *
 * Pure arithmetic over caller-owned vectors; the exchange that produces the aggregate is in
 * cohort.c. The step is computed in double and rounded to float once per value, in one fixed
 * order, so the same inputs give the same weights on every node built from the same source.
 */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/sync.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "w0's hash reads floats as they lie");
static_assert(sizeof(float) == 4, "IEEE single precision");

#define HOUR_MS (3600ull * 1000)
#define DAY_MS  (24 * HOUR_MS)
#define WEEK_MS (7 * DAY_MS)

uint32_t ns_sync_inner_steps(size_t nodes)
{
    if (nodes < 10)
        return 100;
    if (nodes < 100)
        return 500;
    return 1000;
}

double ns_sync_freshness(uint64_t age_ms)
{
    if (age_ms < HOUR_MS)
        return 1.0;
    if (age_ms < DAY_MS)
        return 0.9;
    if (age_ms < WEEK_MS)
        return 0.7;
    return 0.3;
}

double ns_sync_weight(uint64_t batches, uint64_t age_ms)
{
    return sqrt((double)batches) * ns_sync_freshness(age_ms);
}

static bool all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]))
            return false;
    }
    return true;
}

int ns_outer_init(ns_outer *o, const float *w, size_t n, double beta, double lr)
{
    NS_ASSERT(o != NULL);
    memset(o, 0, sizeof *o);
    if (n == 0 || n > SIZE_MAX / sizeof(float) || w == NULL || !all_finite(w, n))
        return NS_EINVAL;
    if (!(beta >= 0.0 && beta < 1.0) || !isfinite(lr) || lr <= 0.0)
        return NS_EINVAL;
    float *w0 = malloc(n * sizeof *w0);
    float *momentum = calloc(n, sizeof *momentum);
    if (w0 == NULL || momentum == NULL) {
        free(w0);
        free(momentum);
        return NS_ENOMEM;
    }
    memcpy(w0, w, n * sizeof *w0);
    *o = (ns_outer){.n = n, .w0 = w0, .momentum = momentum, .beta = beta, .lr = lr};
    return NS_OK;
}

void ns_outer_free(ns_outer *o)
{
    if (o == NULL)
        return;
    free(o->w0);
    free(o->momentum);
    memset(o, 0, sizeof *o);
}

void ns_outer_delta(const ns_outer *o, const float *w, float *delta)
{
    NS_ASSERT(o != NULL && o->w0 != NULL);
    NS_ASSERT(w != NULL);
    NS_ASSERT(delta != NULL);
    for (size_t i = 0; i < o->n; i++)
        delta[i] = o->w0[i] - w[i];
}

int ns_outer_apply(ns_outer *o, const float *agg, float *w)
{
    NS_ASSERT(o != NULL && o->w0 != NULL);
    NS_ASSERT(agg != NULL);
    NS_ASSERT(w != NULL);
    if (!all_finite(agg, o->n))
        return NS_EINVAL;
    for (size_t i = 0; i < o->n; i++) {
        double m = o->beta * (double)o->momentum[i] + (double)agg[i];
        o->momentum[i] = (float)m;
        double step = o->beta * (double)o->momentum[i] + (double)agg[i];
        w[i] = (float)((double)o->w0[i] - o->lr * step);
        o->w0[i] = w[i];
    }
    o->round++;
    return NS_OK;
}

void ns_outer_rebase(ns_outer *o, const float *w, bool reset_momentum)
{
    NS_ASSERT(o != NULL && o->w0 != NULL);
    NS_ASSERT(w != NULL);
    memcpy(o->w0, w, o->n * sizeof *o->w0);
    if (reset_momentum)
        memset(o->momentum, 0, o->n * sizeof *o->momentum);
}

void ns_outer_w0_hash(const ns_outer *o, uint8_t out[NS_SHA256_BYTES])
{
    NS_ASSERT(o != NULL && o->w0 != NULL);
    ns_sha256(out, o->w0, o->n * sizeof *o->w0);
}
