/*
 * reward.c: what an accepted proof earns (SPEC S10), in integers only.
 *
 * Every node computes every reward it applies, so the result must be the same bits everywhere:
 * no floating point. Base rewards are exact rationals of the counts, floored to the nano-NEURO;
 * multipliers are parts per million, applied one after the other, each product floored;
 * log2 for the stake multiplier is computed by repeated squaring in Q62 fixed point, to 30
 * fractional bits. Decisions where the whitepaper is ambiguous (docs/ledger.md says why):
 * training pays per batch per layer held (§5.6), so the "+5 % a layer" table row is not applied on
 * top; the head's +0.3 needs 100 NEURO staked (the validator bonus of S10); scarcity waits for
 * the layer pool that measures it.
 */
#include "neuroshard/ponw.h"

#define NANO 1000000000ull

/* log2(num/den) in Q30, num >= den > 0, both < 2^63. */
static uint64_t log2_ratio_q30(uint64_t num, uint64_t den)
{
    /* integer part n: den * 2^n <= num < den * 2^(n+1) */
    uint64_t n = 0;
    while (n < 63 && ((unsigned __int128)den << (n + 1)) <= num)
        n++;
    /* m = num / (den * 2^n) in [1, 2), Q62 */
    const unsigned __int128 one = (unsigned __int128)1 << 62;
    unsigned __int128 m = ((unsigned __int128)num << 62) / ((unsigned __int128)den << n);
    uint64_t frac = 0;
    for (int bit = 29; bit >= 0; bit--) {
        m = (m * m) >> 62; /* m < 2 in Q62: m * m < 2^126 */
        if (m >= 2 * one) {
            m >>= 1;
            frac |= 1ull << bit;
        }
    }
    return (n << 30) | frac;
}

uint32_t ns_ponw_stake_multiplier_ppm(ns_neuro stake)
{
    if (stake.nano <= 0)
        return NS_PONW_PPM;
    /* 1 + stake / 1000 NEURO = (stake + 1000 NEURO) / 1000 NEURO */
    uint64_t den = 1000ull * NANO;
    uint64_t num = (uint64_t)stake.nano + den; /* < 2^63 + 2^40: no wrap in 64 bits */
    uint64_t l = log2_ratio_q30(num, den);
    /* 1e6 + 1e5 * l / 2^30 */
    return NS_PONW_PPM + (uint32_t)(((unsigned __int128)100000u * l) >> 30);
}

uint32_t ns_ponw_role_multiplier_ppm(const ns_proof *p, ns_neuro stake)
{
    uint32_t ppm = NS_PONW_PPM;
    if (p->has_embed)
        ppm += 200000u;
    if (p->has_head && stake.nano >= 100 * (int64_t)NANO)
        ppm += 300000u;
    return ppm;
}

/* *x = floor(*x * ppm / 1e6), false on overflow. */
static bool scale(uint64_t *x, uint32_t ppm)
{
    unsigned __int128 v = (unsigned __int128)*x * ppm / NS_PONW_PPM;
    if (v > INT64_MAX)
        return false;
    *x = (uint64_t)v;
    return true;
}

/* *acc += term, false on overflow past INT64_MAX. */
static bool add(uint64_t *acc, unsigned __int128 term)
{
    unsigned __int128 v = (unsigned __int128)*acc + term;
    if (v > INT64_MAX)
        return false;
    *acc = (uint64_t)v;
    return true;
}

/* The inference share of S10 in ppm: the whole model does all of the work. */
static uint32_t inference_share_ppm(const ns_proof *p)
{
    if (p->has_embed && p->has_head)
        return NS_PONW_PPM;
    if (p->has_embed || p->has_head)
        return 150000u;
    return 700000u;
}

int ns_ponw_reward(const ns_proof *p, ns_neuro stake, ns_neuro *out)
{
    uint64_t r = 0;
    /* uptime: 0.0001 NEURO a minute = 100000 nano / 60 s */
    bool ok = add(&r, (unsigned __int128)p->uptime_s * 100000u / 60u);
    switch (p->type) {
    case NS_PROOF_TRAINING: /* 0.0005 NEURO a batch a layer */
        ok = ok && add(&r, (unsigned __int128)p->batches * p->layers * 500000u);
        break;
    case NS_PROOF_INFERENCE: /* 0.1 NEURO a million tokens, times the share */
        ok = ok &&
             add(&r, (unsigned __int128)p->tokens * 100u * inference_share_ppm(p) / NS_PONW_PPM);
        break;
    case NS_PROOF_DATA: /* 0.00001 NEURO a sample */
        ok = ok && add(&r, (unsigned __int128)p->samples * 10000u);
        break;
    default:
        break;
    }
    ok = ok && scale(&r, ns_ponw_role_multiplier_ppm(p, stake)) &&
         scale(&r, ns_ponw_stake_multiplier_ppm(stake)) &&
         scale(&r, p->in_quorum ? 1100000u : NS_PONW_PPM);
    if (!ok)
        return NS_EOVERFLOW;
    out->nano = (int64_t)r;
    return NS_OK;
}

uint32_t ns_ponw_challenge_ppm(uint64_t nodes)
{
    if (nodes < 20)
        return 0;
    if (nodes < 100)
        return 10000u;
    if (nodes < 500)
        return 30000u;
    return 50000u;
}
