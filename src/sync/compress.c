/*
 * compress.c: top-k, int8 and zstd compression of pseudo-gradients, with error feedback (SPEC S7).
 *
 * The encoder never sorts: the k-th largest magnitude is found by a two-pass radix select on the
 * magnitudes' bit patterns (non-negative floats order as their bits), O(n) whatever the data,
 * with a 256 KiB histogram as its only scratch; a last pass keeps every entry above that
 * threshold and the lowest-indexed ones equal to it, so the kept indices come out in order.
 * With error feedback the encoder runs its own blob through the decoder, which folds
 * (delta + residual) - decoded into the residual, so the residual is exactly what receivers miss.
 * The decoder treats a blob as hostile: it checks every header field, bounds the zstd frame's
 * declared size by what n and k allow before it allocates, and checks the whole payload before it
 * writes one value. It must never write outside out[0..n) nor yield NaN or Inf.
 */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "neuroshard/compress.h"

#define COMPRESS_VERSION    1
#define COMPRESS_Q_MAX      127 /* int8 values lie in [-127, 127]; -128 is never written */
#define COMPRESS_LEVEL_MIN  1
#define COMPRESS_LEVEL_MAX  19
#define LEB_BYTES_MAX       5 /* a gap is below NS_COMPRESS_N_MAX < 2^35 */
#define RADIX_BITS          16
#define RADIX_BINS          (1u << RADIX_BITS)
#define SCALE_BYTES         4
#define PAYLOAD_BYTES_MAX   UINT32_MAX
#define MAGNITUDE_BITS_MASK 0x7fffffffu

static const uint8_t compress_magic[4] = {'N', 'S', 'D', 'W'};

static_assert(NS_COMPRESS_HEADER_BYTES == 4 + 1 + 1 + 2 + 8 + 4 + 4 + 4, "the header's layout");
static_assert(NS_COMPRESS_N_MAX <= UINT32_MAX, "k and every index fit a u32");
static_assert(NS_COMPRESS_N_MAX <= (1ull << (7 * LEB_BYTES_MAX)), "a gap fits LEB_BYTES_MAX");
static_assert(NS_COMPRESS_CHUNK_MAX <= UINT32_MAX, "chunk fits its u32");
static_assert(2 * RADIX_BITS == 32, "two radix passes cover a float's bits");

typedef struct header {
    uint64_t n;
    uint32_t k;
    uint32_t chunk;
    uint32_t payload_bytes;
} header;

/* ---- little-endian fields ----------------------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_f32(uint8_t *p, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    put_le(p, bits, 4);
}

static float get_f32(const uint8_t *p)
{
    uint32_t bits = (uint32_t)get_le(p, 4);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---- sizes -------------------------------------------------------------------------------- */

static uint64_t leb_bytes(uint64_t v)
{
    uint64_t bytes = 1;
    while (v >= 0x80) {
        v >>= 7;
        bytes++;
    }
    return bytes;
}

static uint64_t scale_count(uint64_t k, uint64_t chunk)
{
    return k / chunk + (k % chunk != 0);
}

/* Every gap takes at least one byte. */
static uint64_t content_bytes_min(uint64_t k, uint32_t chunk)
{
    return k + k + SCALE_BYTES * scale_count(k, chunk);
}

/* No gap exceeds n - 1. For n <= NS_COMPRESS_N_MAX this stays below 2^35: no overflow. */
static uint64_t content_bytes_max(uint64_t n, uint64_t k, uint32_t chunk)
{
    return k * leb_bytes(n - 1) + k + SCALE_BYTES * scale_count(k, chunk);
}

static void *array_alloc(uint64_t count, size_t size)
{
    if (count > SIZE_MAX / size)
        return NULL;
    return malloc((size_t)count * size);
}

/* ---- values ------------------------------------------------------------------------------- */

/* What the encoder compresses: delta, plus the residual under error feedback. */
static inline float input_at(const float *delta, const float *residual, size_t i)
{
    return residual == NULL ? delta[i] : delta[i] + residual[i];
}

/* The bits of |v|: for non-negative floats, ordered as the values are. */
static inline uint32_t magnitude_key(float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits & MAGNITUDE_BITS_MASK;
}

/* A scale the decoder accepts: finite, non-negative, and 127 of it still finite, so that no
 * int8 value times it overflows. */
static bool scale_ok(float scale)
{
    float top = scale * (float)COMPRESS_Q_MAX;
    return isfinite(scale) && scale >= 0.0f && isfinite(top);
}

static float dequantise(int8_t q, float scale)
{
    return (float)q * scale;
}

static int8_t quantise(float v, float scale)
{
    if (scale == 0.0f)
        return 0;
    float q = roundf(v / scale);
    if (q > COMPRESS_Q_MAX)
        q = COMPRESS_Q_MAX;
    if (q < -COMPRESS_Q_MAX)
        q = -COMPRESS_Q_MAX;
    return (int8_t)q;
}

/* max |v| / 127 over one chunk of kept values, one step toward zero when 127 times it would
 * overflow (max |v| near FLT_MAX). */
static float chunk_scale(const float *delta, const float *residual, const uint32_t *kept,
                         size_t count)
{
    float max = 0.0f;
    for (size_t j = 0; j < count; j++)
        max = fmaxf(max, fabsf(input_at(delta, residual, kept[j])));
    float scale = max / (float)COMPRESS_Q_MAX;
    if (!scale_ok(scale))
        scale = nextafterf(scale, 0.0f);
    NS_ASSERT(scale_ok(scale));
    return scale;
}

/* ---- the header --------------------------------------------------------------------------- */

static void header_write(uint8_t *p, const header *h)
{
    memcpy(p, compress_magic, sizeof compress_magic);
    p[4] = COMPRESS_VERSION;
    p[5] = 0; /* flags */
    put_le(p + 6, 0, 2);
    put_le(p + 8, h->n, 8);
    put_le(p + 16, h->k, 4);
    put_le(p + 20, h->chunk, 4);
    put_le(p + 24, h->payload_bytes, 4);
}

/* The fields, and that this is a blob of ours: magic, version, flags and reserved. */
static int header_read(const uint8_t *blob, size_t len, header *h)
{
    if (blob == NULL || len < NS_COMPRESS_HEADER_BYTES)
        return NS_EPARSE;
    if (memcmp(blob, compress_magic, sizeof compress_magic) != 0 || blob[4] != COMPRESS_VERSION ||
        blob[5] != 0 || get_le(blob + 6, 2) != 0)
        return NS_EPARSE;
    h->n = get_le(blob + 8, 8);
    h->k = (uint32_t)get_le(blob + 16, 4);
    h->chunk = (uint32_t)get_le(blob + 20, 4);
    h->payload_bytes = (uint32_t)get_le(blob + 24, 4);
    return NS_OK;
}

/* The rest of the header, once n is known to be one we accept. */
static int header_check(const header *h, size_t len)
{
    if (h->k == 0 || h->k > h->n)
        return NS_EPARSE;
    if (h->chunk == 0 || h->chunk > NS_COMPRESS_CHUNK_MAX)
        return NS_EPARSE;
    if (h->payload_bytes != len - NS_COMPRESS_HEADER_BYTES)
        return NS_EPARSE;
    return NS_OK;
}

/* ---- the payload -------------------------------------------------------------------------- */

static size_t leb_write(uint8_t *p, uint64_t v)
{
    size_t i = 0;
    while (v >= 0x80) {
        p[i++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[i++] = (uint8_t)v;
    return i;
}

/* One LEB128 number in its shortest form, at most LEB_BYTES_MAX bytes. */
static int leb_read(const uint8_t *buf, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < LEB_BYTES_MAX; i++) {
        if (*pos >= len)
            return NS_EPARSE;
        uint8_t b = buf[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            if (b == 0 && i > 0)
                return NS_EPARSE; /* a longer form than needed */
            *out = v;
            return NS_OK;
        }
    }
    return NS_EPARSE;
}

/* Writes the gaps, values and scales of the kept entries; returns the bytes written. */
static size_t content_write(uint8_t *content, const float *delta, const float *residual,
                            const uint32_t *kept, uint32_t k, uint32_t chunk)
{
    size_t pos = 0;
    uint64_t next = 0; /* the lowest index the next one can have */
    for (uint32_t j = 0; j < k; j++) {
        NS_ASSERT(kept[j] >= next);
        pos += leb_write(content + pos, kept[j] - next);
        next = (uint64_t)kept[j] + 1;
    }
    uint8_t *values = content + pos;
    uint8_t *scales = values + k;
    uint64_t scales_count = scale_count(k, chunk);
    for (uint64_t c = 0; c < scales_count; c++) {
        uint64_t first = c * chunk;
        size_t count = (size_t)(k - first < chunk ? k - first : chunk);
        float scale = chunk_scale(delta, residual, kept + first, count);
        put_f32(scales + SCALE_BYTES * c, scale);
        for (size_t j = 0; j < count; j++) {
            float v = input_at(delta, residual, kept[first + j]);
            values[first + j] = (uint8_t)quantise(v, scale);
        }
    }
    return pos + k + SCALE_BYTES * scales_count;
}

/* Checks a decompressed payload against its header: k gaps to strictly increasing indices
 * below n, values in [-127, 127], acceptable scales, and every byte used. */
static int payload_check(const uint8_t *content, size_t len, const header *h, size_t *gaps_bytes)
{
    size_t pos = 0;
    uint64_t next = 0;
    for (uint32_t j = 0; j < h->k; j++) {
        uint64_t gap;
        if (leb_read(content, len, &pos, &gap) != NS_OK)
            return NS_EPARSE;
        uint64_t index = next + gap; /* next <= n <= 2^31, gap < 2^35 */
        if (index >= h->n)
            return NS_EPARSE;
        next = index + 1;
    }
    uint64_t scales_count = scale_count(h->k, h->chunk);
    if (len - pos != (uint64_t)h->k + SCALE_BYTES * scales_count)
        return NS_EPARSE;
    const uint8_t *values = content + pos;
    for (uint32_t j = 0; j < h->k; j++) {
        if ((int8_t)values[j] < -COMPRESS_Q_MAX)
            return NS_EPARSE;
    }
    const uint8_t *scales = values + h->k;
    for (uint64_t c = 0; c < scales_count; c++) {
        if (!scale_ok(get_f32(scales + SCALE_BYTES * c)))
            return NS_EPARSE;
    }
    *gaps_bytes = pos;
    return NS_OK;
}

/* Writes a checked payload's entries into target: target[i] = value, or, with add (error
 * feedback), target += add everywhere and then target[i] -= value at the kept entries. */
static void payload_apply(const uint8_t *content, size_t gaps_bytes, const header *h, float *target,
                          const float *add)
{
    if (add != NULL) {
        for (size_t i = 0; i < h->n; i++)
            target[i] += add[i];
    }
    const uint8_t *values = content + gaps_bytes;
    const uint8_t *scales = values + h->k;
    size_t pos = 0;
    uint64_t next = 0;
    for (uint32_t j = 0; j < h->k; j++) {
        uint64_t gap;
        int read = leb_read(content, gaps_bytes, &pos, &gap);
        NS_ASSERT(read == NS_OK); /* payload_check read it before */
        uint64_t index = next + gap;
        NS_ASSERT(index < h->n);
        next = index + 1;
        float scale = get_f32(scales + SCALE_BYTES * (uint64_t)(j / h->chunk));
        float v = dequantise((int8_t)values[j], scale);
        NS_ASSERT(isfinite(v));
        if (add != NULL)
            target[index] -= v;
        else
            target[index] = v;
    }
    NS_ASSERT(pos == gaps_bytes);
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* Bounds the frame's declared size by the header before anything is allocated: exactly one
 * frame, its content size stated, between what k entries need at least and at most. */
static int frame_check(const uint8_t *frame, size_t frame_len, const header *h, size_t *size)
{
    unsigned long long declared = ZSTD_getFrameContentSize(frame, frame_len);
    if (declared == ZSTD_CONTENTSIZE_ERROR || declared == ZSTD_CONTENTSIZE_UNKNOWN)
        return NS_EPARSE;
    if (declared > content_bytes_max(h->n, h->k, h->chunk) || declared > SIZE_MAX)
        return NS_ETOOBIG;
    if (declared < content_bytes_min(h->k, h->chunk))
        return NS_EPARSE;
    size_t frame_bytes = ZSTD_findFrameCompressedSize(frame, frame_len);
    if (ZSTD_isError(frame_bytes) || frame_bytes != frame_len)
        return NS_EPARSE;
    *size = (size_t)declared;
    return NS_OK;
}

/* The whole decoder. Writes target only once everything checked; on error target is as it was.
 * add is NULL (target must be zero already) or, for error feedback, the delta to fold in. */
static int decode_into(const uint8_t *blob, size_t len, size_t n, float *target, const float *add)
{
    header h;
    int err = header_read(blob, len, &h);
    if (err != NS_OK)
        return err;
    if (h.n != n || n > NS_COMPRESS_N_MAX)
        return NS_EINVAL;
    err = header_check(&h, len);
    if (err != NS_OK)
        return err;
    const uint8_t *frame = blob + NS_COMPRESS_HEADER_BYTES;
    size_t size;
    err = frame_check(frame, h.payload_bytes, &h, &size);
    if (err != NS_OK)
        return err;
    uint8_t *content = malloc(size);
    if (content == NULL)
        return NS_ENOMEM;
    size_t got = ZSTD_decompress(content, size, frame, h.payload_bytes);
    size_t gaps_bytes;
    if (ZSTD_isError(got) || got != size)
        err = NS_EPARSE;
    else
        err = payload_check(content, size, &h, &gaps_bytes);
    if (err == NS_OK)
        payload_apply(content, gaps_bytes, &h, target, add);
    free(content);
    return err;
}

int ns_compress_decode(const uint8_t *blob, size_t len, float *out, size_t n)
{
    NS_ASSERT(out != NULL || n == 0);
    NS_ASSERT(n <= SIZE_MAX / sizeof *out);
    if (n == 0)
        return NS_EINVAL;
    memset(out, 0, n * sizeof *out); /* decode_into writes only once the whole blob checked */
    return decode_into(blob, len, n, out, NULL);
}

int ns_compress_peek(const uint8_t *blob, size_t len, uint64_t *n, uint32_t *k)
{
    NS_ASSERT(n != NULL);
    NS_ASSERT(k != NULL);
    header h;
    int err = header_read(blob, len, &h);
    if (err != NS_OK)
        return err;
    if (h.n == 0 || h.n > NS_COMPRESS_N_MAX)
        return NS_EPARSE;
    err = header_check(&h, len);
    if (err != NS_OK)
        return err;
    *n = h.n;
    *k = h.k;
    return NS_OK;
}

/* ---- top-k -------------------------------------------------------------------------------- */

/* The bin holding the rank-th largest key (rank from 1), scanning from the top; *above gets how
 * many keys lie in higher bins. */
static uint32_t bin_of_rank(const uint32_t *hist, uint64_t rank, uint64_t *above)
{
    uint64_t count = 0;
    uint32_t b = RADIX_BINS - 1;
    while (count + hist[b] < rank) {
        count += hist[b];
        NS_ASSERT(b > 0); /* the histogram holds at least rank keys */
        b--;
    }
    *above = count;
    return b;
}

/* The magnitude key of the k-th largest entry and how many entries equal to it are kept. */
static int top_k_threshold(const float *delta, const float *residual, size_t n, uint32_t k,
                           uint32_t *key_out, uint64_t *equal_kept)
{
    uint32_t *hist = calloc(RADIX_BINS, sizeof *hist);
    if (hist == NULL)
        return NS_ENOMEM;
    for (size_t i = 0; i < n; i++)
        hist[magnitude_key(input_at(delta, residual, i)) >> RADIX_BITS]++;
    uint64_t above_high, above_low;
    uint32_t high = bin_of_rank(hist, k, &above_high);
    memset(hist, 0, RADIX_BINS * sizeof *hist);
    for (size_t i = 0; i < n; i++) {
        uint32_t key = magnitude_key(input_at(delta, residual, i));
        if (key >> RADIX_BITS == high)
            hist[key & (RADIX_BINS - 1)]++;
    }
    uint32_t low = bin_of_rank(hist, k - above_high, &above_low);
    free(hist);
    *key_out = high << RADIX_BITS | low;
    *equal_kept = k - above_high - above_low;
    NS_ASSERT(*equal_kept >= 1);
    return NS_OK;
}

/* The indices of the k largest magnitudes, ties to the lower index, in increasing order. */
static int top_k_select(const float *delta, const float *residual, size_t n, uint32_t k,
                        uint32_t *kept)
{
    if (k == n) {
        for (uint32_t i = 0; i < k; i++)
            kept[i] = i;
        return NS_OK;
    }
    uint32_t threshold;
    uint64_t equal_left;
    int err = top_k_threshold(delta, residual, n, k, &threshold, &equal_left);
    if (err != NS_OK)
        return err;
    uint32_t count = 0;
    for (size_t i = 0; i < n && count < k; i++) {
        uint32_t key = magnitude_key(input_at(delta, residual, i));
        if (key > threshold || (key == threshold && equal_left > 0)) {
            equal_left -= key == threshold;
            kept[count++] = (uint32_t)i;
        }
    }
    NS_ASSERT(count == k);
    NS_ASSERT(equal_left == 0);
    return NS_OK;
}

/* ---- encoding ----------------------------------------------------------------------------- */

void ns_compress_config_default(ns_compress_config *cfg)
{
    NS_ASSERT(cfg != NULL);
    cfg->density = NS_COMPRESS_DENSITY;
    cfg->chunk = NS_COMPRESS_CHUNK_DEFAULT;
    cfg->zstd_level = 3;
}

static bool config_ok(const ns_compress_config *cfg)
{
    return cfg->density > 0.0 && cfg->density <= 1.0 && cfg->chunk >= 1 &&
           cfg->chunk <= NS_COMPRESS_CHUNK_MAX && cfg->zstd_level >= COMPRESS_LEVEL_MIN &&
           cfg->zstd_level <= COMPRESS_LEVEL_MAX;
}

/* k = ceil(n * density), computed in double, at least 1 and at most n. */
static uint32_t kept_count(size_t n, double density)
{
    double k = ceil((double)n * density);
    if (k < 1.0)
        k = 1.0;
    if (k > (double)n)
        k = (double)n;
    return (uint32_t)k;
}

/* A sum of finite floats that is itself finite: NaN or Inf in either part shows in the sum. */
static bool inputs_finite(const float *delta, const float *residual, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(input_at(delta, residual, i)))
            return false;
    }
    return true;
}

/* Compresses a content into a new blob behind its header. */
static int blob_seal(const uint8_t *content, size_t content_len, const header *fields, int level,
                     uint8_t **out, size_t *out_len)
{
    size_t bound = ZSTD_compressBound(content_len);
    if (ZSTD_isError(bound) || bound > SIZE_MAX - NS_COMPRESS_HEADER_BYTES)
        return NS_ENOMEM;
    uint8_t *blob = malloc(NS_COMPRESS_HEADER_BYTES + bound);
    if (blob == NULL)
        return NS_ENOMEM;
    size_t z = ZSTD_compress(blob + NS_COMPRESS_HEADER_BYTES, bound, content, content_len, level);
    if (ZSTD_isError(z) || z > PAYLOAD_BYTES_MAX) {
        free(blob);
        return ZSTD_isError(z) ? NS_ENOMEM : NS_ETOOBIG; /* with bound room, only memory fails */
    }
    header h = *fields;
    h.payload_bytes = (uint32_t)z;
    header_write(blob, &h);
    size_t len = NS_COMPRESS_HEADER_BYTES + z;
    uint8_t *fit = realloc(blob, len);
    *out = fit != NULL ? fit : blob;
    *out_len = len;
    return NS_OK;
}

static int blob_build(const ns_compress_config *cfg, const float *delta, const float *residual,
                      size_t n, const uint32_t *kept, uint32_t k, uint8_t **out, size_t *out_len)
{
    uint64_t cap = content_bytes_max(n, k, cfg->chunk);
    uint8_t *content = array_alloc(cap, 1);
    if (content == NULL)
        return NS_ENOMEM;
    size_t len = content_write(content, delta, residual, kept, k, cfg->chunk);
    NS_ASSERT(len <= cap);
    NS_ASSERT(len >= content_bytes_min(k, cfg->chunk));
    header h = {.n = n, .k = k, .chunk = cfg->chunk};
    int err = blob_seal(content, len, &h, cfg->zstd_level, out, out_len);
    free(content);
    return err;
}

int ns_compress_encode(const ns_compress_config *cfg, const float *delta, size_t n, ns_ef *ef,
                       uint8_t **out, size_t *out_len)
{
    NS_ASSERT(cfg != NULL);
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    *out = NULL;
    *out_len = 0;
    if (!config_ok(cfg) || n == 0 || n > NS_COMPRESS_N_MAX || delta == NULL)
        return NS_EINVAL;
    if (ef != NULL && (ef->n != n || ef->residual == NULL))
        return NS_EINVAL;
    const float *residual = ef != NULL ? ef->residual : NULL;
    if (!inputs_finite(delta, residual, n))
        return NS_EINVAL;
    uint32_t k = kept_count(n, cfg->density);
    uint32_t *kept = array_alloc(k, sizeof *kept);
    if (kept == NULL)
        return NS_ENOMEM;
    int err = top_k_select(delta, residual, n, k, kept);
    if (err == NS_OK)
        err = blob_build(cfg, delta, residual, n, kept, k, out, out_len);
    free(kept);
    if (err == NS_OK && ef != NULL) {
        /* residual = (delta + residual) - decode(blob), through the receivers' own decoder */
        err = decode_into(*out, *out_len, n, ef->residual, delta);
        NS_ASSERT(err == NS_OK || err == NS_ENOMEM);
    }
    if (err != NS_OK) {
        free(*out);
        *out = NULL;
        *out_len = 0;
    }
    return err;
}

/* ---- error feedback ----------------------------------------------------------------------- */

int ns_ef_init(ns_ef *ef, size_t n)
{
    NS_ASSERT(ef != NULL);
    ef->residual = NULL;
    ef->n = 0;
    if (n == 0 || n > NS_COMPRESS_N_MAX)
        return NS_EINVAL;
    ef->residual = calloc(n, sizeof *ef->residual);
    if (ef->residual == NULL)
        return NS_ENOMEM;
    ef->n = n;
    return NS_OK;
}

void ns_ef_free(ns_ef *ef)
{
    if (ef == NULL)
        return;
    free(ef->residual);
    ef->residual = NULL;
    ef->n = 0;
}

void ns_ef_reset(ns_ef *ef)
{
    NS_ASSERT(ef != NULL);
    if (ef->residual != NULL)
        memset(ef->residual, 0, ef->n * sizeof *ef->residual);
}
