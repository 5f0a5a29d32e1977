/*
 * compress.h: compression of pseudo-gradients for cohort sync (SPEC S7).
 *
 * A Δw of n floats becomes a blob: the k = ceil(n * density) entries of largest magnitude (ties
 * to the lower index) are kept, their values quantised to int8 with one float scale per `chunk`
 * kept values (scale = max |v| / 127 of the chunk), their indices delta-coded, and the whole
 * compressed with zstd. With error feedback the part of (Δw + residual) that the blob does not
 * carry is kept as the residual and added to the next round's Δw, so nothing is lost for good:
 * only delayed.
 *
 * A blob is untrusted input: decoding checks the magic, version, declared length against the
 * caller's n, 1 <= k <= n, chunk sizes, strictly increasing indices below n, every scale finite and
 * non-negative, and the decompressed size against the size k and n imply before it allocates;
 * it never writes outside out[0..n) and never yields NaN or Inf. It accepts only what the encoder
 * writes: exactly one zstd frame that states its content size, each gap in LEB128's shortest form
 * (at most 5 bytes), values in [-127, 127] (never -128), scales s with 127 * s finite in f32.
 *
 * Blob layout (little-endian): "NSDW" | u8 version (1) | u8 flags (0) | u16 reserved (0) |
 * u64 n | u32 k | u32 chunk | u32 payload bytes | zstd frame of: k LEB128 index gaps (the first
 * is the index itself, later ones index - previous - 1), then k int8 values, then
 * ceil(k / chunk) f32 scales.
 */
#ifndef NEUROSHARD_COMPRESS_H
#define NEUROSHARD_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"

#define NS_COMPRESS_N_MAX         (1ull << 31) /* floats of one vector */
#define NS_COMPRESS_HEADER_BYTES  28
#define NS_COMPRESS_CHUNK_DEFAULT 256
#define NS_COMPRESS_CHUNK_MAX     65536
#define NS_COMPRESS_DENSITY       0.01 /* default share kept by top-k */

typedef struct ns_compress_config {
    double density; /* share of entries kept, (0, 1]; 1 keeps all (int8 + zstd only) */
    uint32_t chunk; /* kept values per int8 scale, 1..NS_COMPRESS_CHUNK_MAX */
    int zstd_level; /* 1..19 */
} ns_compress_config;

void ns_compress_config_default(ns_compress_config *cfg); /* 0.01, 256, 3 */

/* The error-feedback residual of one vector. */
typedef struct ns_ef {
    float *residual; /* n floats, zero at start */
    size_t n;
} ns_ef;

NS_MUST_USE int ns_ef_init(ns_ef *ef, size_t n); /* NS_ENOMEM, NS_EINVAL (n 0 or too big) */
void ns_ef_free(ns_ef *ef);
void ns_ef_reset(ns_ef *ef);

/* Encodes delta[0..n) (plus ef->residual when ef is not NULL) into a new blob *out (free with
 * free()) of *out_len bytes. With ef, afterwards ef->residual = (delta + residual) - decoded
 * blob, exactly (the encoder decodes what it wrote). k = ceil(n * density) computed in double,
 * at least 1. NS_EINVAL for a bad config, n 0 or above NS_COMPRESS_N_MAX, ef of another length,
 * or NaN/Inf in delta, residual or their sum; NS_ENOMEM; NS_ETOOBIG if the zstd frame would
 * exceed the u32 payload field. On any error *out is NULL, *out_len 0 and the residual is as it
 * was. */
NS_MUST_USE int ns_compress_encode(const ns_compress_config *cfg, const float *delta, size_t n,
                                   ns_ef *ef, uint8_t **out, size_t *out_len);

/* Decodes blob into out[0..n): the kept entries, zero elsewhere. NS_EINVAL when n is 0 or the
 * blob's declared length is not n (checked after magic, version, flags and reserved);
 * NS_EPARSE for anything malformed; NS_ETOOBIG when the zstd frame declares more content than
 * n and k allow; NS_ENOMEM. On error out is all zero. */
NS_MUST_USE int ns_compress_decode(const uint8_t *blob, size_t len, float *out, size_t n);

/* Reads the header only: the declared length and kept count. NS_EPARSE when the header is
 * malformed (every check above that needs no payload, n within 1..NS_COMPRESS_N_MAX, and the
 * payload length equal to len minus the header). */
NS_MUST_USE int ns_compress_peek(const uint8_t *blob, size_t len, uint64_t *n, uint32_t *k);

#endif
