/*
 * tier.c: the speed tier of a node from its measured layer latency (SPEC S2).
 *
 * T1 < 10 ms, T2 10–50 ms, T3 50–200 ms, T4 200–1000 ms, T5 > 1000 ms. Each boundary belongs to
 * the slower tier, except 1000 ms itself, which is still T4: T5 is strictly above one second, as
 * the spec writes it. Pipeline training needs T1–T4; T5 nodes train only asynchronously.
 */
#include "neuroshard/swarm.h"

#define TIER_T2_FROM_US  10000u   /* 10 ms */
#define TIER_T3_FROM_US  50000u   /* 50 ms */
#define TIER_T4_FROM_US  200000u  /* 200 ms */
#define TIER_T4_UNTIL_US 1000000u /* 1000 ms, inclusive */

ns_tier ns_tier_for_latency_us(uint64_t layer_latency_us)
{
    if (layer_latency_us < TIER_T2_FROM_US)
        return NS_TIER_T1;
    if (layer_latency_us < TIER_T3_FROM_US)
        return NS_TIER_T2;
    if (layer_latency_us < TIER_T4_FROM_US)
        return NS_TIER_T3;
    if (layer_latency_us <= TIER_T4_UNTIL_US)
        return NS_TIER_T4;
    return NS_TIER_T5;
}

uint64_t ns_tier_nominal_us(ns_tier tier)
{
    switch (tier) {
    case NS_TIER_T1:
        return 3162; /* sqrt(1 ms x 10 ms) */
    case NS_TIER_T2:
        return 22361;
    case NS_TIER_T3:
        return 100000;
    case NS_TIER_T4:
        return 447214;
    case NS_TIER_T5:
        break;
    }
    return 3000000;
}

const char *ns_tier_name(ns_tier tier)
{
    switch (tier) {
    case NS_TIER_T1:
        return "T1";
    case NS_TIER_T2:
        return "T2";
    case NS_TIER_T3:
        return "T3";
    case NS_TIER_T4:
        return "T4";
    case NS_TIER_T5:
        return "T5";
    }
    return "unknown";
}

bool ns_tier_can_pipeline(ns_tier tier)
{
    switch (tier) {
    case NS_TIER_T1:
    case NS_TIER_T2:
    case NS_TIER_T3:
    case NS_TIER_T4:
        return true;
    case NS_TIER_T5:
        return false;
    }
    return false;
}
