/*
 * rng.c: the simulator's deterministic randomness.
 *
 * Every random choice in a run comes from a xoshiro256** stream seeded through splitmix64 from the
 * run's seed and a stream number (one a node; one each for churn, lookups, the network and the
 * rest of the workload), so a run replays exactly from its seed and a change in one stream (a
 * node drawing more bytes) does not shift the others. Values that must be the same whenever they
 * are asked for (a pair's latency, a node's partition group) are hashes, not draws. Never seeded
 * from the clock or the OS.
 */
#include <math.h>

#include "netsim.h"

uint64_t ns__sim_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t ns__sim_hash3(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t h = ns__sim_mix64(a + 0x9e3779b97f4a7c15ULL);
    h = ns__sim_mix64(h ^ (b + 0x632be59bd9b4e019ULL));
    return ns__sim_mix64(h ^ (c + 0x85157af5ULL));
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void ns__sim_rng_seed(ns_sim_rng *rng, uint64_t seed, uint64_t stream)
{
    uint64_t x = ns__sim_hash3(seed, stream, 0x6e65747369ULL); /* "netsi" */
    for (size_t i = 0; i < 4; i++) {
        x += 0x9e3779b97f4a7c15ULL; /* splitmix64's increment */
        rng->s[i] = ns__sim_mix64(x);
    }
    if ((rng->s[0] | rng->s[1] | rng->s[2] | rng->s[3]) == 0)
        rng->s[0] = 1;
}

uint64_t ns__sim_rng_next(ns_sim_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ns__sim_unit_from_hash(uint64_t h)
{
    return (double)(h >> 11) * 0x1.0p-53;
}

double ns__sim_rng_unit(ns_sim_rng *rng)
{
    return ns__sim_unit_from_hash(ns__sim_rng_next(rng));
}

uint64_t ns__sim_rng_below(ns_sim_rng *rng, uint64_t n)
{
    NS_ASSERT(n > 0);
    /* Rejection keeps it unbiased: draws in the last partial span are thrown back. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    for (int tries = 0; tries < 64; tries++) {
        uint64_t x = ns__sim_rng_next(rng);
        if (x < limit)
            return x % n;
    }
    return ns__sim_rng_next(rng) % n; /* 64 rejections in a row: probability below 2^-64 */
}

double ns__sim_rng_exp(ns_sim_rng *rng, double mean)
{
    NS_ASSERT(mean > 0);
    double u = ns__sim_rng_unit(rng);
    return -mean * log1p(-u); /* u < 1, so the log is finite */
}

void ns__sim_rng_fill(ns_sim_rng *rng, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        uint64_t x = ns__sim_rng_next(rng);
        for (size_t i = 0; i < 8 && n > 0; i++, n--)
            *p++ = (uint8_t)(x >> (8 * i)); /* little-endian on every host */
    }
}
