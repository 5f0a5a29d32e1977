/*
 * sha256_stream.c: streaming SHA-256 for checkpoint files.
 *
 * Every checkpoint byte is hashed once on save and once on load, and libsodium's portable SHA-256
 * (about 175 MB/s) would be slower than the disk. x86-64 CPUs since Goldmont / Zen / Ice Lake
 * carry the SHA extensions, which run the compression function in hardware: on those, blocks go
 * through sha256_blocks_shani below (written from Intel's description of the SHA-NI instructions);
 * elsewhere everything goes to libsodium's streaming API. Buffering and padding for the SHA-NI
 * path are FIPS 180-4 as written. The unit tests compare both against ns_sha256 on many lengths
 * and splits. This file never allocates and holds no shared state except the CPU check.
 */
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "ckpt_internal.h"

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static const uint32_t sha256_h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#if defined(__x86_64__)

static bool cpu_has_shani(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    bool ssse3 = (c >> 9) & 1;
    bool sse41 = (c >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return false;
    bool sha = (b >> 29) & 1;
    return ssse3 && sse41 && sha;
}

/* cpuid traps to the hypervisor in a VM (microseconds): asked once, kept. 0 = not asked yet. */
static _Atomic int shani_known;

bool ns__sha256_has_shani(void)
{
    int known = atomic_load(&shani_known);
    if (known == 0) {
        known = cpu_has_shani() ? 1 : 2;
        atomic_store(&shani_known, known);
    }
    return known == 1;
}

/* The message schedule for rounds 4g..4g+3 from the four groups before it:
 * W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]. msg1 adds s0, alignr brings W[t-7..t-4],
 * msg2 adds s1 (including the dependency inside the group). */
__attribute__((target("sha,sse4.1,ssse3"))) static __m128i shani_schedule(__m128i w4, __m128i w3,
                                                                          __m128i w2, __m128i w1)
{
    __m128i t = _mm_sha256msg1_epu32(w4, w3);
    t = _mm_add_epi32(t, _mm_alignr_epi8(w1, w2, 4));
    return _mm_sha256msg2_epu32(t, w1);
}

/* Compresses n 64-byte blocks into h. State lives as ABEF / CDGH, the instructions' layout. */
__attribute__((target("sha,sse4.1,ssse3"))) static void
sha256_blocks_shani(uint32_t h[8], const uint8_t *p, size_t n)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    for (size_t blk = 0; blk < n; blk++, p += 64) {
        __m128i abef_in = abef;
        __m128i cdgh_in = cdgh;
        /* w0..w3: the message words of the next four groups of four rounds. */
        __m128i w0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), bswap);
        __m128i w1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), bswap);
        __m128i w2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), bswap);
        __m128i w3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), bswap);
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            __m128i m = _mm_add_epi32(w0, _mm_loadu_si128((const __m128i *)&sha256_k[4 * g]));
            /* Two rounds each: the first leaves ABEF(+2) in cdgh while abef, the old ABEF, is
             * CDGH(+2); the second takes them in that order, so the names are right again. */
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, m);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(m, 0x0E));
            /* The schedule does not depend on the state: it overlaps the rounds. */
            __m128i next = g < 12 ? shani_schedule(w0, w1, w2, w3) : w3;
            w0 = w1;
            w1 = w2;
            w2 = w3;
            w3 = next;
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));
}

#else

bool ns__sha256_has_shani(void)
{
    return false;
}

static void sha256_blocks_shani(uint32_t h[8], const uint8_t *p, size_t n)
{
    (void)h;
    (void)p;
    (void)n;
    NS_ASSERT(!"no SHA-NI on this architecture");
}

#endif

void ns__sha256_init(ns__sha256 *s)
{
    NS_ASSERT(s != NULL);
    memset(s, 0, sizeof *s);
    s->shani = ns__sha256_has_shani();
    if (s->shani)
        memcpy(s->h, sha256_h0, sizeof s->h);
    else
        NS_ASSERT(crypto_hash_sha256_init(&s->sodium) == 0);
}

void ns__sha256_update(ns__sha256 *s, const void *buf, size_t len)
{
    NS_ASSERT(s != NULL);
    NS_ASSERT(buf != NULL || len == 0);
    if (!s->shani) {
        NS_ASSERT(crypto_hash_sha256_update(&s->sodium, buf, (unsigned long long)len) == 0);
        return;
    }
    const uint8_t *p = buf;
    s->total_bytes += len;
    if (s->block_len > 0) {
        size_t take = 64 - s->block_len < len ? 64 - s->block_len : len;
        memcpy(s->block + s->block_len, p, take);
        s->block_len += take;
        p += take;
        len -= take;
        if (s->block_len < 64)
            return;
        sha256_blocks_shani(s->h, s->block, 1);
        s->block_len = 0;
    }
    sha256_blocks_shani(s->h, p, len / 64);
    p += len / 64 * 64;
    len %= 64;
    memcpy(s->block, p, len);
    s->block_len = len;
}

void ns__sha256_final(ns__sha256 *s, uint8_t out[NS_SHA256_BYTES])
{
    NS_ASSERT(s != NULL);
    NS_ASSERT(out != NULL);
    if (!s->shani) {
        NS_ASSERT(crypto_hash_sha256_final(&s->sodium, out) == 0);
        return;
    }
    uint64_t bits = s->total_bytes * 8;
    NS_ASSERT(s->block_len < 64);
    s->block[s->block_len++] = 0x80;
    if (s->block_len > 56) {
        memset(s->block + s->block_len, 0, 64 - s->block_len);
        sha256_blocks_shani(s->h, s->block, 1);
        s->block_len = 0;
    }
    memset(s->block + s->block_len, 0, 56 - s->block_len);
    for (int i = 0; i < 8; i++)
        s->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_blocks_shani(s->h, s->block, 1);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
    sodium_memzero(s, sizeof *s);
}

void ns__sha256_buf(uint8_t out[NS_SHA256_BYTES], const void *buf, size_t len)
{
    ns__sha256 s;
    ns__sha256_init(&s);
    ns__sha256_update(&s, buf, len);
    ns__sha256_final(&s, out);
}

void ns_ckpt_sha256(uint8_t out[NS_SHA256_BYTES], const void *buf, size_t len)
{
    ns__sha256_buf(out, buf, len);
}
