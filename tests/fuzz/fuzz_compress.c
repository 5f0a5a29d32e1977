/*
 * fuzz_compress.c: libFuzzer target for the pseudo-gradient codec (compress.h), whose blobs come
 * from other members of a cohort.
 *
 * An odd first byte makes the rest a blob: it is refused with out all zero, or decodes to finite
 * values of which at most k are not zero, which encoded again at density 1 come back within half
 * a scale. An even first byte makes the rest a config (density, chunk, zstd level) and a vector
 * of floats that is encoded twice with error feedback: NaN or Inf is refused with the residual
 * unchanged; otherwise the blob keeps exactly the top k (ties to the lower index, as a full sort
 * says), each value within half its chunk's scale, and the residual is exactly input - decoded.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/compress.h"

#define FUZZ_N_MAX 65536
#define ROUNDS     2

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* |got - want| within half a scale of a chunk whose largest magnitude is max, with room for
 * float rounding and for scales that are subnormal. */
static int within_half_scale(float got, float want, float max)
{
    return fabsf(got - want) <= max / 254.0f * 1.0001f + 256.0f * FLT_TRUE_MIN;
}

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static const float *order_values;

static int by_magnitude_then_index(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    float x = fabsf(order_values[i]), y = fabsf(order_values[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : (i > j);
}

/* Encodes input (delta + residual already summed by the caller) and checks everything the
 * blob and the new residual must say about it. */
static void check_round(const ns_compress_config *cfg, const float *delta, const float *input,
                        size_t n, ns_ef *ef)
{
    uint8_t *blob;
    size_t len;
    NS_ASSERT(ns_compress_encode(cfg, delta, n, ef, &blob, &len) == NS_OK);
    uint64_t n_peek;
    uint32_t k;
    NS_ASSERT(ns_compress_peek(blob, len, &n_peek, &k) == NS_OK);
    double k_want = ceil((double)n * cfg->density);
    NS_ASSERT(n_peek == n);
    NS_ASSERT(k == (k_want < 1.0 ? 1 : k_want > (double)n ? n : (size_t)k_want));
    float *out = malloc(n * sizeof *out);
    size_t *order = malloc(n * sizeof *order);
    uint8_t *kept = calloc(n, 1);
    NS_ASSERT(out != NULL && order != NULL && kept != NULL);
    NS_ASSERT(ns_compress_decode(blob, len, out, n) == NS_OK);
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    order_values = input;
    qsort(order, n, sizeof *order, by_magnitude_then_index);
    for (size_t j = 0; j < k; j++)
        kept[order[j]] = 1;
    size_t rank = 0; /* kept entries in index order, for their chunks */
    float max = 0.0f;
    for (size_t i = 0; i < n; i++) {
        NS_ASSERT(isfinite(out[i]));
        NS_ASSERT(same_bits(ef->residual[i], kept[i] ? input[i] - out[i] : input[i]));
        if (!kept[i]) {
            NS_ASSERT(out[i] == 0.0f);
            continue;
        }
        if (rank % cfg->chunk == 0) {
            max = 0.0f;
            for (size_t m = i, seen = 0; m < n && seen < cfg->chunk; m++) {
                if (kept[m]) {
                    max = fmaxf(max, fabsf(input[m]));
                    seen++;
                }
            }
        }
        NS_ASSERT(within_half_scale(out[i], input[i], max));
        rank++;
    }
    NS_ASSERT(rank == k);
    free(kept);
    free(order);
    free(out);
    free(blob);
}

static void fuzz_encode(const uint8_t *data, size_t size)
{
    if (size < 4)
        return;
    ns_compress_config cfg = {
        .density = (data[0] + 1) / 256.0,
        .chunk = 1 + (uint32_t)(data[1] | data[2] << 8) % NS_COMPRESS_CHUNK_MAX,
        .zstd_level = 1 + data[3] % 3,
    };
    size_t n = (size - 4) / 4;
    if (n == 0)
        return;
    float *delta = malloc(n * sizeof *delta);
    float *input = malloc(n * sizeof *input);
    float *before = malloc(n * sizeof *before);
    NS_ASSERT(delta != NULL && input != NULL && before != NULL);
    memcpy(delta, data + 4, n * sizeof *delta);
    ns_ef ef;
    NS_ASSERT(ns_ef_init(&ef, n) == NS_OK);
    for (int round = 0; round < ROUNDS; round++) {
        int finite = 1;
        for (size_t i = 0; i < n; i++) {
            input[i] = delta[i] + ef.residual[i];
            finite &= isfinite(input[i]) != 0;
        }
        if (finite) {
            check_round(&cfg, delta, input, n, &ef);
            continue;
        }
        memcpy(before, ef.residual, n * sizeof *before);
        uint8_t *blob;
        size_t len;
        NS_ASSERT(ns_compress_encode(&cfg, delta, n, &ef, &blob, &len) == NS_EINVAL);
        NS_ASSERT(blob == NULL && len == 0);
        NS_ASSERT(memcmp(before, ef.residual, n * sizeof *before) == 0);
        break;
    }
    ns_ef_free(&ef);
    free(before);
    free(input);
    free(delta);
}

/* Decoded values encoded again at density 1 come back within half a scale of their chunk. */
static void check_reencode(const float *x, size_t n, uint32_t chunk)
{
    ns_compress_config cfg = {.density = 1.0, .chunk = chunk, .zstd_level = 1};
    ns_ef ef;
    NS_ASSERT(ns_ef_init(&ef, n) == NS_OK);
    uint8_t *blob;
    size_t len;
    NS_ASSERT(ns_compress_encode(&cfg, x, n, &ef, &blob, &len) == NS_OK);
    float *y = malloc(n * sizeof *y);
    NS_ASSERT(y != NULL);
    NS_ASSERT(ns_compress_decode(blob, len, y, n) == NS_OK);
    for (size_t first = 0; first < n; first += chunk) {
        size_t end = n - first < chunk ? n : first + chunk;
        float max = 0.0f;
        for (size_t i = first; i < end; i++)
            max = fmaxf(max, fabsf(x[i]));
        for (size_t i = first; i < end; i++) {
            NS_ASSERT(isfinite(y[i]));
            NS_ASSERT(within_half_scale(y[i], x[i], max));
            float input = x[i] + 0.0f; /* delta + a zero residual: -0 becomes +0 */
            NS_ASSERT(same_bits(ef.residual[i], input - y[i]));
        }
    }
    free(y);
    free(blob);
    ns_ef_free(&ef);
}

static void fuzz_decode(const uint8_t *blob, size_t len)
{
    uint64_t n_peek = 0;
    uint32_t k = 0;
    int peeked = ns_compress_peek(blob, len, &n_peek, &k);
    size_t n = 1 + len % 64;
    if (peeked == NS_OK && n_peek <= FUZZ_N_MAX)
        n = (size_t)n_peek;
    float *out = malloc(n * sizeof *out);
    NS_ASSERT(out != NULL);
    for (size_t i = 0; i < n; i++)
        out[i] = 7.0f;
    int rc = ns_compress_decode(blob, len, out, n);
    if (rc != NS_OK) {
        NS_ASSERT(rc == NS_EPARSE || rc == NS_EINVAL || rc == NS_ETOOBIG);
        for (size_t i = 0; i < n; i++)
            NS_ASSERT(out[i] == 0.0f);
        free(out);
        return;
    }
    NS_ASSERT(peeked == NS_OK && n_peek == n && k >= 1 && k <= n);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        NS_ASSERT(isfinite(out[i]));
        nonzero += out[i] != 0.0f;
    }
    NS_ASSERT(nonzero <= k);
    check_reencode(out, n, 1 + (uint32_t)(len % NS_COMPRESS_CHUNK_MAX));
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_decode(data + 1, size - 1);
    else
        fuzz_encode(data + 1, size - 1);
    return 0;
}
