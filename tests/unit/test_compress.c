/*
 * test_compress.c: the pseudo-gradient codec (compress.h): top-k choice and its ties against a full
 * sort, int8 error bounds, error feedback that loses nothing over rounds, the ratio on a
 * realistic vector, and every way a hostile blob is refused. Malformed blobs are built by hand
 * from the layout in compress.h (header, then one zstd frame of gaps, values, scales), so the
 * tests check the documented format, not the encoder's idea of it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>
#include <zstd.h>

#include "neuroshard/compress.h"
#include "support/testutil.h"

#define CRAFT_BYTES_MAX (1u << 16)

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *state) /* (0, 1) */
{
    return ((double)(rng_next(state) >> 11) + 0.5) / (double)(1ull << 53);
}

static float gaussian(uint64_t *state)
{
    double u = rng_unit(state), v = rng_unit(state);
    return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

static ns_compress_config config(double density, uint32_t chunk)
{
    ns_compress_config cfg;
    ns_compress_config_default(&cfg);
    cfg.density = density;
    cfg.chunk = chunk;
    return cfg;
}

static uint8_t *encode_ok(const ns_compress_config *cfg, const float *delta, size_t n, ns_ef *ef,
                          size_t *len)
{
    uint8_t *blob = NULL;
    assert_int_equal(ns_compress_encode(cfg, delta, n, ef, &blob, len), NS_OK);
    assert_non_null(blob);
    assert_true(*len > NS_COMPRESS_HEADER_BYTES);
    return blob;
}

static float *decode_ok(const uint8_t *blob, size_t len, size_t n)
{
    float *out = malloc(n * sizeof *out);
    assert_non_null(out);
    assert_int_equal(ns_compress_decode(blob, len, out, n), NS_OK);
    for (size_t i = 0; i < n; i++)
        assert_true(isfinite(out[i]));
    return out;
}

/* Decoding is refused with want, and out (filled with garbage first) comes back all zero. */
static void assert_refused(const uint8_t *blob, size_t len, size_t n, int want)
{
    size_t cells = n > 0 ? n : 1;
    float *out = malloc(cells * sizeof *out);
    assert_non_null(out);
    for (size_t i = 0; i < cells; i++)
        out[i] = 7.0f;
    assert_int_equal(ns_compress_decode(blob, len, out, n), want);
    for (size_t i = 0; i < n; i++)
        assert_true(out[i] == 0.0f);
    free(out);
}

static uint32_t kept_of(const uint8_t *blob, size_t len)
{
    uint64_t n;
    uint32_t k;
    assert_int_equal(ns_compress_peek(blob, len, &n, &k), NS_OK);
    return k;
}

/* A payload written by hand: gaps, values and scales, in that order. */
typedef struct content {
    uint8_t bytes[CRAFT_BYTES_MAX];
    size_t len;
} content;

static void put_byte(content *c, uint8_t b)
{
    assert_true(c->len < CRAFT_BYTES_MAX);
    c->bytes[c->len++] = b;
}

static void put_leb(content *c, uint64_t v)
{
    while (v >= 0x80) {
        put_byte(c, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put_byte(c, (uint8_t)v);
}

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_scale(content *c, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    for (int i = 0; i < 4; i++)
        put_byte(c, (uint8_t)(bits >> (8 * i)));
}

static void header_put(uint8_t *blob, uint64_t n, uint32_t k, uint32_t chunk, uint32_t payload)
{
    memcpy(blob, "NSDW", 4);
    blob[4] = 1;
    blob[5] = 0;
    put_le(blob + 6, 0, 2);
    put_le(blob + 8, n, 8);
    put_le(blob + 16, k, 4);
    put_le(blob + 20, chunk, 4);
    put_le(blob + 24, payload, 4);
}

/* header + ZSTD_compress(bytes); returns the blob's length. */
static size_t craft(uint8_t *blob, uint64_t n, uint32_t k, uint32_t chunk, const uint8_t *bytes,
                    size_t len)
{
    size_t z = ZSTD_compress(blob + NS_COMPRESS_HEADER_BYTES,
                             CRAFT_BYTES_MAX - NS_COMPRESS_HEADER_BYTES, bytes, len, 3);
    assert_false(ZSTD_isError(z));
    header_put(blob, n, k, chunk, (uint32_t)z);
    return NS_COMPRESS_HEADER_BYTES + z;
}

/* The reference payload: n 10, k 3, chunk 2; indices 1, 4, 9; values 127, -64 (scale 0.5) and
 * 10 (scale 0.25): out[1] = 63.5, out[4] = -32, out[9] = 2.5. */
#define REF_N 10
#define REF_K 3

static void reference_content(content *c, float scale0, int8_t value0)
{
    c->len = 0;
    put_leb(c, 1);
    put_leb(c, 2);
    put_leb(c, 4);
    put_byte(c, (uint8_t)value0);
    put_byte(c, (uint8_t)(int8_t)-64);
    put_byte(c, 10);
    put_scale(c, scale0);
    put_scale(c, 0.25f);
}

static uint8_t *blob_buffer(void)
{
    uint8_t *blob = malloc(CRAFT_BYTES_MAX);
    assert_non_null(blob);
    return blob;
}

static size_t craft_reference(uint8_t *blob)
{
    content c;
    reference_content(&c, 0.5f, 127);
    return craft(blob, REF_N, REF_K, 2, c.bytes, c.len);
}

/* A payload with room in its size bound: n 300 (gaps may take 2 bytes each), k 12, chunk 16.
 * Zero gaps first, then the given gap bytes (holding gaps_count gaps), then 12 values of 1 and
 * one scale of 1. */
#define WIDE_N 300
#define WIDE_K 12

static void wide_content(content *c, const uint8_t *gaps, size_t gaps_len, size_t gaps_count)
{
    c->len = 0;
    for (size_t i = gaps_count; i < WIDE_K; i++)
        put_byte(c, 0);
    for (size_t i = 0; i < gaps_len; i++)
        put_byte(c, gaps[i]);
    for (int i = 0; i < WIDE_K; i++)
        put_byte(c, 1);
    put_scale(c, 1.0f);
}

static size_t craft_wide(uint8_t *blob, const uint8_t *gaps, size_t gaps_len, size_t gaps_count)
{
    content c;
    wide_content(&c, gaps, gaps_len, gaps_count);
    return craft(blob, WIDE_N, WIDE_K, 16, c.bytes, c.len);
}

/* ---- the format --------------------------------------------------------------------------- */

static void test_decodes_a_blob_built_by_hand_from_the_documented_layout(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t len = craft_reference(blob);
    float *out = decode_ok(blob, len, REF_N);
    float want[REF_N] = {0, 63.5f, 0, 0, -32.0f, 0, 0, 0, 0, 2.5f};
    assert_memory_equal(out, want, sizeof want);
    uint64_t n;
    uint32_t k;
    assert_int_equal(ns_compress_peek(blob, len, &n, &k), NS_OK);
    assert_int_equal(n, REF_N);
    assert_int_equal(k, REF_K);
    free(out);
    free(blob);
}

static void test_round_trip_at_density_one_is_within_half_a_scale(void **state)
{
    (void)state;
    enum { N = 5000, CHUNK = 64 };
    uint64_t rng = 1;
    float *delta = malloc(N * sizeof *delta);
    assert_non_null(delta);
    for (size_t i = 0; i < N; i++)
        delta[i] = gaussian(&rng) * (float)(1 + i % 7) * 1e-3f; /* chunks of unlike ranges */
    ns_compress_config cfg = config(1.0, CHUNK);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, N, NULL, &len);
    assert_int_equal(kept_of(blob, len), N);
    float *out = decode_ok(blob, len, N);
    for (size_t first = 0; first < N; first += CHUNK) {
        size_t end = first + CHUNK < N ? first + CHUNK : N;
        float max = 0.0f;
        for (size_t i = first; i < end; i++)
            max = fmaxf(max, fabsf(delta[i]));
        float half_scale = max / 127.0f / 2.0f;
        for (size_t i = first; i < end; i++)
            assert_true(fabsf(out[i] - delta[i]) <= half_scale * (1.0f + 1e-4f));
    }
    free(out);
    free(blob);
    free(delta);
}

static void test_values_near_flt_max_decode_finite_and_close(void **state)
{
    (void)state;
    float delta[4] = {FLT_MAX, -FLT_MAX, 1.0f, -FLT_MAX / 3.0f};
    ns_compress_config cfg = config(1.0, 4);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, 4, NULL, &len);
    float *out = decode_ok(blob, len, 4);
    assert_true(fabsf(out[0] - FLT_MAX) <= FLT_MAX / 254.0f);
    assert_true(fabsf(out[1] + FLT_MAX) <= FLT_MAX / 254.0f);
    assert_true(out[2] == 0.0f); /* far below half a scale */
    assert_true(fabsf(out[3] + FLT_MAX / 3.0f) <= FLT_MAX / 254.0f);
    free(out);
    free(blob);
}

/* ---- top-k -------------------------------------------------------------------------------- */

static void test_top_k_keeps_exactly_the_largest_magnitudes(void **state)
{
    (void)state;
    float delta[10] = {0.1f, -5.0f, 3.0f, 0.2f, -4.0f, 1.0f, 0.0f, 2.5f, -0.3f, 4.5f};
    ns_compress_config cfg = config(0.35, 1); /* ceil(3.5) = 4; chunk 1: values come back */
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, 10, NULL, &len);
    assert_int_equal(kept_of(blob, len), 4);
    float *out = decode_ok(blob, len, 10);
    for (size_t i = 0; i < 10; i++) {
        bool kept = i == 1 || i == 2 || i == 4 || i == 9;
        if (kept)
            assert_true(fabsf(out[i] - delta[i]) <= fabsf(delta[i]) * 1e-6f);
        else
            assert_true(out[i] == 0.0f);
    }
    free(out);
    free(blob);
}

static void test_top_k_keeps_at_least_one(void **state)
{
    (void)state;
    float delta[10] = {0, 0, 0, 0, 0, 0, 0, -9.0f, 0, 0};
    ns_compress_config cfg = config(0.05, 256); /* ceil(0.5) = 1 */
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, 10, NULL, &len);
    assert_int_equal(kept_of(blob, len), 1);
    float *out = decode_ok(blob, len, 10);
    assert_true(out[7] == -9.0f);
    free(out);
    free(blob);
}

static void test_ties_go_to_the_lower_index(void **state)
{
    (void)state;
    /* two 3s, then four left from five of magnitude 1 (signs do not matter): 0, 2, 3, 5 */
    float delta[9] = {1.0f, 3.0f, -1.0f, 1.0f, -3.0f, -1.0f, 1.0f, 0.5f, 0.0f};
    ns_compress_config cfg = config(6.0 / 9.0, 1);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, 9, NULL, &len);
    assert_int_equal(kept_of(blob, len), 6);
    float *out = decode_ok(blob, len, 9);
    float want[9] = {1.0f, 3.0f, -1.0f, 1.0f, -3.0f, -1.0f, 0.0f, 0.0f, 0.0f};
    for (size_t i = 0; i < 9; i++)
        assert_true(fabsf(out[i] - want[i]) <= 1e-6f);
    free(out);
    free(blob);
}

static void test_top_k_tells_apart_magnitudes_one_ulp_apart(void **state)
{
    (void)state;
    /* every magnitude shares its high 16 bits: only the second radix pass can tell them apart */
    enum { N = 64 };
    float delta[N];
    float v = 1.0f;
    for (size_t i = 0; i < N; i++) {
        delta[(i * 37) % N] = (i % 2 ? -v : v);
        v = nextafterf(v, 2.0f);
    }
    ns_compress_config cfg = config(0.25, 1);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, N, NULL, &len);
    float *out = decode_ok(blob, len, N);
    float threshold = fabsf(delta[(48 * 37) % N]); /* the 16th largest: i = 48 */
    for (size_t i = 0; i < N; i++) {
        if (fabsf(delta[i]) >= threshold)
            assert_true(out[i] != 0.0f);
        else
            assert_true(out[i] == 0.0f);
    }
    free(out);
    free(blob);
}

static const float *sort_key_values;

static int by_magnitude_then_index(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    float x = fabsf(sort_key_values[i]), y = fabsf(sort_key_values[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : (i > j);
}

static void test_top_k_matches_a_full_sort_on_random_vectors(void **state)
{
    (void)state;
    enum { N = 20000 };
    uint64_t rng = 7;
    float *delta = malloc(N * sizeof *delta);
    size_t *order = malloc(N * sizeof *order);
    bool *want = calloc(N, sizeof *want);
    assert_true(delta != NULL && order != NULL && want != NULL);
    const double densities[] = {0.001, 0.01, 0.1, 0.5, 0.9};
    for (size_t round = 0; round < sizeof densities / sizeof densities[0]; round++) {
        for (size_t i = 0; i < N; i++) { /* few levels: ties everywhere; never zero */
            float level = (float)(1 + rng_next(&rng) % 50) * (round % 2 ? 1e-30f : 1e3f);
            delta[i] = rng_next(&rng) % 2 ? level : -level;
            order[i] = i;
            want[i] = false;
        }
        sort_key_values = delta;
        qsort(order, N, sizeof *order, by_magnitude_then_index);
        ns_compress_config cfg = config(densities[round], 1);
        size_t k = (size_t)ceil(N * densities[round]);
        for (size_t j = 0; j < k; j++)
            want[order[j]] = true;
        size_t len;
        uint8_t *blob = encode_ok(&cfg, delta, N, NULL, &len);
        assert_int_equal(kept_of(blob, len), k);
        float *out = decode_ok(blob, len, N);
        for (size_t i = 0; i < N; i++)
            assert_int_equal(out[i] != 0.0f, want[i]);
        free(out);
        free(blob);
    }
    free(want);
    free(order);
    free(delta);
}

/* ---- error feedback ----------------------------------------------------------------------- */

static void test_error_feedback_residual_is_input_minus_decoded_exactly(void **state)
{
    (void)state;
    enum { N = 3000 };
    uint64_t rng = 3;
    ns_ef ef;
    assert_int_equal(ns_ef_init(&ef, N), NS_OK);
    float delta[N], input[N];
    ns_compress_config cfg = config(0.03, 16);
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < N; i++) {
            delta[i] = gaussian(&rng);
            input[i] = delta[i] + ef.residual[i];
        }
        size_t len;
        uint8_t *blob = encode_ok(&cfg, delta, N, &ef, &len);
        float *out = decode_ok(blob, len, N);
        for (size_t i = 0; i < N; i++) {
            float want = input[i] - out[i];
            assert_memory_equal(&ef.residual[i], &want, sizeof want);
        }
        free(out);
        free(blob);
    }
    ns_ef_free(&ef);
}

static void test_error_feedback_loses_nothing_over_rounds(void **state)
{
    (void)state;
    enum { N = 4096, ROUNDS = 25 };
    uint64_t rng = 11;
    ns_ef ef;
    assert_int_equal(ns_ef_init(&ef, N), NS_OK);
    float delta[N];
    double *sent = calloc(N, sizeof *sent), *given = calloc(N, sizeof *given);
    assert_true(sent != NULL && given != NULL);
    ns_compress_config cfg = config(0.02, 128);
    for (int round = 0; round < ROUNDS; round++) {
        for (size_t i = 0; i < N; i++) {
            delta[i] = gaussian(&rng) * 0.01f;
            given[i] += delta[i];
        }
        size_t len;
        uint8_t *blob = encode_ok(&cfg, delta, N, &ef, &len);
        float *out = decode_ok(blob, len, N);
        for (size_t i = 0; i < N; i++)
            sent[i] += out[i];
        free(out);
        free(blob);
    }
    double worst = 0.0;
    for (size_t i = 0; i < N; i++)
        worst = fmax(worst, fabs(sent[i] + ef.residual[i] - given[i]));
    assert_true(worst <= 1e-5);
    free(given);
    free(sent);
    ns_ef_free(&ef);
}

static void test_error_feedback_sends_small_entries_in_the_end(void **state)
{
    (void)state;
    float delta[4] = {1.0f, 0.9f, 0.8f, 0.7f};
    bool sent[4] = {false};
    ns_ef ef;
    assert_int_equal(ns_ef_init(&ef, 4), NS_OK);
    ns_compress_config cfg = config(0.25, 1); /* one entry a round */
    for (int round = 0; round < 8; round++) {
        size_t len;
        uint8_t *blob = encode_ok(&cfg, delta, 4, &ef, &len);
        float *out = decode_ok(blob, len, 4);
        for (size_t i = 0; i < 4; i++)
            sent[i] |= out[i] != 0.0f;
        free(out);
        free(blob);
    }
    for (size_t i = 0; i < 4; i++)
        assert_true(sent[i]);
    ns_ef_reset(&ef);
    for (size_t i = 0; i < 4; i++)
        assert_true(ef.residual[i] == 0.0f);
    ns_ef_free(&ef);
    ns_ef_free(&ef); /* twice, and NULL: no-ops */
    ns_ef_free(NULL);
}

static void test_encoder_refuses_nan_or_inf_and_leaves_the_residual(void **state)
{
    (void)state;
    enum { N = 64 };
    ns_ef ef;
    assert_int_equal(ns_ef_init(&ef, N), NS_OK);
    float delta[N], before[N];
    for (size_t i = 0; i < N; i++)
        delta[i] = (float)i - 20.0f;
    ns_compress_config cfg = config(0.1, 8);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, N, &ef, &len); /* a residual that is not zero */
    free(blob);
    memcpy(before, ef.residual, sizeof before);
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t b = 0; b < 3; b++) {
        float poisoned[N];
        memcpy(poisoned, delta, sizeof poisoned);
        poisoned[N - 1] = bad[b];
        blob = (uint8_t *)1;
        len = 99;
        assert_int_equal(ns_compress_encode(&cfg, poisoned, N, &ef, &blob, &len), NS_EINVAL);
        assert_null(blob);
        assert_int_equal(len, 0);
        assert_memory_equal(ef.residual, before, sizeof before);
        assert_int_equal(ns_compress_encode(&cfg, poisoned, N, NULL, &blob, &len), NS_EINVAL);
    }
    /* a residual that is Inf, and a sum that overflows */
    ef.residual[5] = INFINITY;
    assert_int_equal(ns_compress_encode(&cfg, delta, N, &ef, &blob, &len), NS_EINVAL);
    ef.residual[5] = FLT_MAX;
    memcpy(before, ef.residual, sizeof before);
    float big[N];
    memcpy(big, delta, sizeof big);
    big[5] = FLT_MAX;
    assert_int_equal(ns_compress_encode(&cfg, big, N, &ef, &blob, &len), NS_EINVAL);
    assert_memory_equal(ef.residual, before, sizeof before);
    ns_ef_free(&ef);
}

static void test_encoder_refuses_bad_arguments(void **state)
{
    (void)state;
    float delta[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t *blob;
    size_t len;
    const ns_compress_config bad[] = {
        config(0.0, 8), config(-0.5, 8), config(1.5, 8),
        config(NAN, 8), config(0.5, 0),  config(0.5, NS_COMPRESS_CHUNK_MAX + 1),
        {0.5, 8, 0},    {0.5, 8, 20},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ns_compress_encode(&bad[i], delta, 8, NULL, &blob, &len), NS_EINVAL);
    ns_compress_config cfg = config(0.5, 8);
    assert_int_equal(ns_compress_encode(&cfg, delta, 0, NULL, &blob, &len), NS_EINVAL);
    assert_int_equal(
        ns_compress_encode(&cfg, delta, (size_t)NS_COMPRESS_N_MAX + 1, NULL, &blob, &len),
        NS_EINVAL);
    ns_ef ef;
    assert_int_equal(ns_ef_init(&ef, 7), NS_OK);
    assert_int_equal(ns_compress_encode(&cfg, delta, 8, &ef, &blob, &len), NS_EINVAL);
    ns_ef_free(&ef);
    assert_int_equal(ns_ef_init(&ef, 0), NS_EINVAL);
    assert_null(ef.residual);
    assert_int_equal(ns_ef_init(&ef, (size_t)NS_COMPRESS_N_MAX + 1), NS_EINVAL);
    assert_null(ef.residual);
}

/* ---- the ratio ---------------------------------------------------------------------------- */

static void test_compresses_a_gaussian_vector_over_100_times(void **state)
{
    (void)state;
    enum { N = 1000000 };
    uint64_t rng = 5;
    float *delta = malloc(N * sizeof *delta);
    assert_non_null(delta);
    for (size_t i = 0; i < N; i++)
        delta[i] = gaussian(&rng) * 1e-3f;
    ns_compress_config cfg;
    ns_compress_config_default(&cfg);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, N, NULL, &len);
    double ratio = (double)(4.0 * N) / (double)len;
    printf("compress: n=%d density=%.2f chunk=%u bytes=%zu ratio=%.1fx\n", N, cfg.density,
           cfg.chunk, len, ratio);
    assert_true(ratio >= 100.0);
    assert_int_equal(kept_of(blob, len), N / 100);
    float *out = decode_ok(blob, len, N);
    size_t nonzero = 0;
    for (size_t i = 0; i < N; i++)
        nonzero += out[i] != 0.0f;
    assert_int_equal(nonzero, N / 100);
    free(out);
    free(blob);
    free(delta);
}

/* ---- hostile blobs ------------------------------------------------------------------------ */

static void test_decode_refuses_a_bad_magic_version_flags_or_reserved(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t len = craft_reference(blob);
    const size_t offsets[] = {0, 3, 4, 5, 6, 7};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        blob[offsets[i]] ^= 0x02;
        assert_refused(blob, len, REF_N, NS_EPARSE);
        uint64_t n;
        uint32_t k;
        assert_int_equal(ns_compress_peek(blob, len, &n, &k), NS_EPARSE);
        blob[offsets[i]] ^= 0x02;
    }
    float *out = decode_ok(blob, len, REF_N); /* and back: fine */
    free(out);
    free(blob);
}

static void test_decode_refuses_another_length_with_einval(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t len = craft_reference(blob);
    assert_refused(blob, len, REF_N + 1, NS_EINVAL);
    assert_refused(blob, len, REF_N - 1, NS_EINVAL);
    assert_refused(blob, len, 0, NS_EINVAL);
    free(blob);
}

static void test_decode_refuses_k_above_n_or_zero(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    content c;
    c.len = 0;
    for (int i = 0; i < 3; i++)
        put_leb(&c, 0); /* indices 0, 1, 2 */
    for (int i = 0; i < 3; i++)
        put_byte(&c, 1);
    put_scale(&c, 1.0f);
    size_t len = craft(blob, 3, 3, 4, c.bytes, c.len);
    float *out = decode_ok(blob, len, 3); /* k = n is fine */
    free(out);
    len = craft(blob, 2, 3, 4, c.bytes, c.len);
    assert_refused(blob, len, 2, NS_EPARSE);
    c.len = 0;
    put_scale(&c, 1.0f);
    len = craft(blob, 3, 0, 4, c.bytes, c.len);
    assert_refused(blob, len, 3, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_chunk_zero_or_above_the_maximum(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    content c;
    reference_content(&c, 0.5f, 127);
    size_t len = craft(blob, REF_N, REF_K, 0, c.bytes, c.len);
    assert_refused(blob, len, REF_N, NS_EPARSE);
    len = craft(blob, REF_N, REF_K, NS_COMPRESS_CHUNK_MAX + 1, c.bytes, c.len);
    assert_refused(blob, len, REF_N, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_indices_not_increasing_or_not_below_n(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    const uint8_t last_is_n_minus_1[] = {0xa0, 0x02}; /* 0..10, then 11 + 288 = 299 */
    size_t len = craft_wide(blob, last_is_n_minus_1, sizeof last_is_n_minus_1, 1);
    float *out = decode_ok(blob, len, WIDE_N);
    assert_true(out[0] == 1.0f && out[10] == 1.0f && out[11] == 0.0f && out[299] == 1.0f);
    free(out);
    const uint8_t last_is_n[] = {0xa1, 0x02}; /* 11 + 289 = 300 */
    len = craft_wide(blob, last_is_n, sizeof last_is_n, 1);
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    /* after 0..9 a gap of 2^32 - 1: mod 2^32 it would repeat index 9 */
    const uint8_t wraps[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0};
    len = craft_wide(blob, wraps, sizeof wraps, 2);
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    const uint8_t overlong[] = {0x81, 0x00}; /* 1 in two bytes */
    len = craft_wide(blob, overlong, sizeof overlong, 1);
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    const uint8_t six_bytes[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    len = craft_wide(blob, six_bytes, sizeof six_bytes, 1);
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_a_scale_that_is_nan_inf_negative_or_too_big(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    const float bad[] = {NAN, -NAN, INFINITY, -INFINITY, -1.0f, FLT_MAX, FLT_MAX / 100.0f};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        content c;
        reference_content(&c, bad[i], 127);
        size_t len = craft(blob, REF_N, REF_K, 2, c.bytes, c.len);
        assert_refused(blob, len, REF_N, NS_EPARSE);
    }
    content c;
    reference_content(&c, FLT_MAX / 128.0f, 127); /* 127 of it still finite */
    size_t len = craft(blob, REF_N, REF_K, 2, c.bytes, c.len);
    float *out = decode_ok(blob, len, REF_N);
    free(out);
    free(blob);
}

static void test_decode_refuses_the_value_minus_128(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    content c;
    reference_content(&c, 0.5f, -127);
    size_t len = craft(blob, REF_N, REF_K, 2, c.bytes, c.len);
    float *out = decode_ok(blob, len, REF_N);
    assert_true(out[1] == -63.5f);
    free(out);
    reference_content(&c, 0.5f, INT8_MIN);
    len = craft(blob, REF_N, REF_K, 2, c.bytes, c.len);
    assert_refused(blob, len, REF_N, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_truncated_blobs(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t len = craft_reference(blob);
    for (size_t cut = 0; cut < len; cut++)
        assert_refused(blob, cut, REF_N, NS_EPARSE);
    assert_refused(NULL, 0, REF_N, NS_EPARSE);
    /* the payload field shortened to match: the frame itself is cut */
    put_le(blob + 24, len - 1 - NS_COMPRESS_HEADER_BYTES, 4);
    assert_refused(blob, len - 1, REF_N, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_trailing_bytes(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t len = craft_reference(blob);
    blob[len] = 0;
    assert_refused(blob, len + 1, REF_N, NS_EPARSE);
    /* the payload field lengthened to match: one frame and a stray byte */
    put_le(blob + 24, len + 1 - NS_COMPRESS_HEADER_BYTES, 4);
    assert_refused(blob, len + 1, REF_N, NS_EPARSE);
    /* a skippable frame after the first (zstd itself would pass over it) */
    size_t first = len - NS_COMPRESS_HEADER_BYTES;
    const uint8_t skippable[] = {0x50, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, 0xee};
    memcpy(blob + len, skippable, sizeof skippable);
    put_le(blob + 24, first + sizeof skippable, 4);
    assert_refused(blob, len + sizeof skippable, REF_N, NS_EPARSE);
    /* a second, whole frame after the first */
    memcpy(blob + len, blob + NS_COMPRESS_HEADER_BYTES, first);
    put_le(blob + 24, 2 * first, 4);
    assert_refused(blob, len + first, REF_N, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_a_payload_not_used_exactly(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    content c;
    wide_content(&c, NULL, 0, 0);
    put_byte(&c, 0); /* one byte more, within the size bound */
    size_t len = craft(blob, WIDE_N, WIDE_K, 16, c.bytes, c.len);
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    const uint8_t two_byte_gap[] = {0x80, 0x01};
    wide_content(&c, two_byte_gap, sizeof two_byte_gap, 1);
    c.len--; /* one byte less, still above the bound's minimum */
    len = craft(blob, WIDE_N, WIDE_K, 16, c.bytes, c.len);
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    wide_content(&c, NULL, 0, 0);
    len = craft(blob, WIDE_N, WIDE_K, 4, c.bytes, c.len); /* chunk 4 wants 3 scales */
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    /* the reference payload has no room: a byte more is more than its header implies */
    reference_content(&c, 0.5f, 127);
    put_byte(&c, 0);
    len = craft(blob, REF_N, REF_K, 2, c.bytes, c.len);
    assert_refused(blob, len, REF_N, NS_ETOOBIG);
    free(blob);
}

static void test_decode_refuses_a_frame_that_claims_huge_content(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t bomb_len = 16u << 20; /* 16 MiB of zeros compress to a few hundred bytes */
    uint8_t *bomb = calloc(bomb_len, 1);
    assert_non_null(bomb);
    size_t z = ZSTD_compress(blob + NS_COMPRESS_HEADER_BYTES,
                             CRAFT_BYTES_MAX - NS_COMPRESS_HEADER_BYTES, bomb, bomb_len, 1);
    assert_false(ZSTD_isError(z));
    header_put(blob, REF_N, REF_K, 2, (uint32_t)z);
    assert_refused(blob, NS_COMPRESS_HEADER_BYTES + z, REF_N, NS_ETOOBIG);
    free(bomb);
    /* a frame header alone that claims 2^40 bytes */
    const uint8_t claim[] = {0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0, 0, 0, 0, 0, 0, 1, 0, 0};
    memcpy(blob + NS_COMPRESS_HEADER_BYTES, claim, sizeof claim);
    header_put(blob, REF_N, REF_K, 2, sizeof claim);
    assert_refused(blob, NS_COMPRESS_HEADER_BYTES + sizeof claim, REF_N, NS_ETOOBIG);
    free(blob);
}

static void test_decode_refuses_a_frame_without_its_content_size(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    content c;
    reference_content(&c, 0.5f, 127);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    assert_non_null(cctx);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0)));
    size_t z = ZSTD_compress2(cctx, blob + NS_COMPRESS_HEADER_BYTES,
                              CRAFT_BYTES_MAX - NS_COMPRESS_HEADER_BYTES, c.bytes, c.len);
    assert_false(ZSTD_isError(z));
    ZSTD_freeCCtx(cctx);
    assert_int_equal(ZSTD_getFrameContentSize(blob + NS_COMPRESS_HEADER_BYTES, z),
                     ZSTD_CONTENTSIZE_UNKNOWN);
    header_put(blob, REF_N, REF_K, 2, (uint32_t)z);
    assert_refused(blob, NS_COMPRESS_HEADER_BYTES + z, REF_N, NS_EPARSE);
    /* and a frame that is not zstd at all */
    memset(blob + NS_COMPRESS_HEADER_BYTES, 0xab, 32);
    header_put(blob, REF_N, REF_K, 2, 32);
    assert_refused(blob, NS_COMPRESS_HEADER_BYTES + 32, REF_N, NS_EPARSE);
    free(blob);
}

static void test_decode_refuses_a_frame_that_lies_about_its_size(void **state)
{
    (void)state;
    uint8_t *blob = blob_buffer();
    size_t len = craft_wide(blob, NULL, 0, 0);
    /* the frame's single-segment content size byte follows its 4-byte magic and descriptor */
    uint8_t *frame = blob + NS_COMPRESS_HEADER_BYTES;
    assert_true((frame[4] & 0x20) != 0 && (frame[4] >> 6) == 0);
    frame[5] += 1; /* says one byte more than it holds, within the size bound */
    assert_refused(blob, len, WIDE_N, NS_EPARSE);
    free(blob);
}

static void test_peek_reads_the_header_only(void **state)
{
    (void)state;
    float delta[100];
    for (size_t i = 0; i < 100; i++)
        delta[i] = (float)i;
    ns_compress_config cfg = config(0.13, 5);
    size_t len;
    uint8_t *blob = encode_ok(&cfg, delta, 100, NULL, &len);
    uint64_t n;
    uint32_t k;
    assert_int_equal(ns_compress_peek(blob, len, &n, &k), NS_OK);
    assert_int_equal(n, 100);
    assert_int_equal(k, 13);
    assert_int_equal(ns_compress_peek(blob, len - 1, &n, &k), NS_EPARSE);
    assert_int_equal(ns_compress_peek(blob, 27, &n, &k), NS_EPARSE);
    put_le(blob + 8, 0, 8);
    assert_int_equal(ns_compress_peek(blob, len, &n, &k), NS_EPARSE);
    put_le(blob + 8, NS_COMPRESS_N_MAX + 1, 8);
    assert_int_equal(ns_compress_peek(blob, len, &n, &k), NS_EPARSE);
    free(blob);
}

int main(void)
{
    ns_log_set_level(NS_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decodes_a_blob_built_by_hand_from_the_documented_layout),
        cmocka_unit_test(test_round_trip_at_density_one_is_within_half_a_scale),
        cmocka_unit_test(test_values_near_flt_max_decode_finite_and_close),
        cmocka_unit_test(test_top_k_keeps_exactly_the_largest_magnitudes),
        cmocka_unit_test(test_top_k_keeps_at_least_one),
        cmocka_unit_test(test_ties_go_to_the_lower_index),
        cmocka_unit_test(test_top_k_tells_apart_magnitudes_one_ulp_apart),
        cmocka_unit_test(test_top_k_matches_a_full_sort_on_random_vectors),
        cmocka_unit_test(test_error_feedback_residual_is_input_minus_decoded_exactly),
        cmocka_unit_test(test_error_feedback_loses_nothing_over_rounds),
        cmocka_unit_test(test_error_feedback_sends_small_entries_in_the_end),
        cmocka_unit_test(test_encoder_refuses_nan_or_inf_and_leaves_the_residual),
        cmocka_unit_test(test_encoder_refuses_bad_arguments),
        cmocka_unit_test(test_compresses_a_gaussian_vector_over_100_times),
        cmocka_unit_test(test_decode_refuses_a_bad_magic_version_flags_or_reserved),
        cmocka_unit_test(test_decode_refuses_another_length_with_einval),
        cmocka_unit_test(test_decode_refuses_k_above_n_or_zero),
        cmocka_unit_test(test_decode_refuses_chunk_zero_or_above_the_maximum),
        cmocka_unit_test(test_decode_refuses_indices_not_increasing_or_not_below_n),
        cmocka_unit_test(test_decode_refuses_a_scale_that_is_nan_inf_negative_or_too_big),
        cmocka_unit_test(test_decode_refuses_the_value_minus_128),
        cmocka_unit_test(test_decode_refuses_truncated_blobs),
        cmocka_unit_test(test_decode_refuses_trailing_bytes),
        cmocka_unit_test(test_decode_refuses_a_payload_not_used_exactly),
        cmocka_unit_test(test_decode_refuses_a_frame_that_claims_huge_content),
        cmocka_unit_test(test_decode_refuses_a_frame_without_its_content_size),
        cmocka_unit_test(test_decode_refuses_a_frame_that_lies_about_its_size),
        cmocka_unit_test(test_peek_reads_the_header_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
