/*
 * bpe.c: the byte-level BPE tokenizer at work: cutting text into pieces, encoding, decoding.
 *
 * A tokenizer is its merge list; everything else here (each token's bytes, the merge lookup) is
 * derived from it once, when it is made, so that encoding only reads. Encoding cuts the text into
 * pieces (ns_bpe_piece_len) and, inside each piece, repeatedly merges the adjacent pair with the
 * earliest merge, leftmost first: the same rule training applied. Pieces are at most 64 bytes, so
 * the quadratic scan inside one stays cheap and bounded; and a piece that is one whole token (most
 * pieces of ordinary text) is found by one hash lookup, with no scan at all. Training lives in
 * bpe_train.c, the file format in bpe_file.c.
 */
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

enum { CLASS_SPACE, CLASS_LETTER, CLASS_DIGIT, CLASS_OTHER };

static inline int byte_class(uint8_t c)
{
    if (c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return CLASS_LETTER;
    if (c >= '0' && c <= '9')
        return CLASS_DIGIT;
    if (c == ' ' || (c >= '\t' && c <= '\r'))
        return CLASS_SPACE;
    return CLASS_OTHER;
}

/* ---- pieces ------------------------------------------------------------------------------- */

/* A run of whitespace: one piece, less a last space that belongs to the word after it. */
static size_t space_run_len(const uint8_t *text, size_t len, size_t max)
{
    size_t j = 1;
    while (j < max && byte_class(text[j]) == CLASS_SPACE)
        j++;
    if (j > 1 && j < len && text[j - 1] == ' ')
        j--; /* text[j] is not a space here: the run ended before max, or at max with more text */
    return j;
}

size_t ns_bpe_piece_len(const uint8_t *text, size_t len)
{
    NS_ASSERT(text != NULL);
    NS_ASSERT(len > 0);
    size_t max = len < NS_BPE_PIECE_BYTES_MAX ? len : NS_BPE_PIECE_BYTES_MAX;
    size_t i = 0;
    int cls = byte_class(text[0]);
    if (cls == CLASS_SPACE) {
        if (text[0] != ' ' || max == 1 || byte_class(text[1]) == CLASS_SPACE)
            return space_run_len(text, len, max);
        i = 1; /* a space before a word goes with the word */
        cls = byte_class(text[1]);
    }
    if (text[i] == '\'' && i + 1 < max && byte_class(text[i + 1]) == CLASS_LETTER) {
        i++;
        cls = CLASS_LETTER;
    }
    size_t j = i + 1;
    while (j < max && byte_class(text[j]) == cls)
        j++;
    NS_ASSERT(j <= max);
    return j;
}

/* ---- encoding ----------------------------------------------------------------------------- */

/* Encodes one piece of 2 <= n <= NS_BPE_PIECE_BYTES_MAX bytes into out by merging; returns the
 * id count. */
static size_t merge_piece(const ns_bpe *bpe, const uint8_t *s, size_t n, uint32_t *out)
{
    NS_ASSERT(n >= 2 && n <= NS_BPE_PIECE_BYTES_MAX);
    uint32_t sym[NS_BPE_PIECE_BYTES_MAX];
    uint32_t made[NS_BPE_PIECE_BYTES_MAX]; /* made[i]: id merging sym[i], sym[i+1] would make */
    for (size_t i = 0; i < n; i++)
        sym[i] = s[i];
    for (size_t i = 0; i + 1 < n; i++)
        made[i] = ns__bpe_lookup(bpe, sym[i], sym[i + 1]);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++) {
            if (made[i] < made[best])
                best = i;
        }
        if (made[best] == NS__BPE_NO_MERGE)
            break;
        sym[best] = made[best];
        for (size_t i = best + 1; i + 1 < n; i++)
            sym[i] = sym[i + 1];
        for (size_t i = best + 1; i + 2 < n; i++)
            made[i] = made[i + 1];
        n--;
        if (best > 0)
            made[best - 1] = ns__bpe_lookup(bpe, sym[best - 1], sym[best]);
        if (best + 1 < n)
            made[best] = ns__bpe_lookup(bpe, sym[best], sym[best + 1]);
    }
    memcpy(out, sym, n * sizeof sym[0]);
    return n;
}

static uint64_t bytes_hash(const uint8_t *s, size_t n)
{
    uint64_t h = n * 0xC2B2AE3D27D4EB4FULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
    }
    uint64_t v = 0;
    memcpy(&v, s + i, n - i);
    h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

/* The token whose bytes are the whole piece and which merging the piece gives, or
 * NS__BPE_NO_MERGE. */
static uint32_t whole_lookup(const ns_bpe *bpe, const uint8_t *s, size_t n)
{
    uint64_t h = bytes_hash(s, n);
    uint64_t slot = h >> bpe->whole_shift;
    for (;;) {
        ns__bpe_slot e = bpe->whole[slot];
        if (e.id == NS__BPE_NO_MERGE)
            return NS__BPE_NO_MERGE;
        if (e.key == (uint32_t)h && bpe->tok_off[e.id + 1] - bpe->tok_off[e.id] == n &&
            memcmp(bpe->tok_bytes + bpe->tok_off[e.id], s, n) == 0)
            return e.id;
        slot = (slot + 1) & bpe->whole_mask;
    }
}

/* Encodes one piece of n <= NS_BPE_PIECE_BYTES_MAX bytes into out; returns the id count. Most
 * pieces of ordinary text are one whole token, found with one lookup. */
static size_t encode_piece(const ns_bpe *bpe, const uint8_t *s, size_t n, uint32_t *out)
{
    if (n == 1) {
        out[0] = s[0];
        return 1;
    }
    uint32_t id = whole_lookup(bpe, s, n);
    if (id != NS__BPE_NO_MERGE) {
        out[0] = id;
        return 1;
    }
    return merge_piece(bpe, s, n, out);
}

size_t ns_bpe_encode(const ns_bpe *bpe, const uint8_t *text, size_t len, uint32_t *out)
{
    NS_ASSERT(bpe != NULL);
    NS_ASSERT(text != NULL || len == 0);
    NS_ASSERT(out != NULL || len == 0);
    size_t pos = 0;
    size_t count = 0;
    while (pos < len) {
        size_t n = ns_bpe_piece_len(text + pos, len - pos);
        count += encode_piece(bpe, text + pos, n, out + count);
        pos += n;
    }
    NS_ASSERT(count <= len);
    return count;
}

/* ---- decoding and accessors --------------------------------------------------------------- */

const uint8_t *ns_bpe_token_bytes(const ns_bpe *bpe, uint32_t id, size_t *len)
{
    NS_ASSERT(bpe != NULL);
    NS_ASSERT(len != NULL);
    if (id >= bpe->vocab_size)
        return NULL;
    *len = bpe->tok_off[id + 1] - bpe->tok_off[id];
    return bpe->tok_bytes + bpe->tok_off[id];
}

int ns_bpe_decode(const ns_bpe *bpe, const uint32_t *ids, size_t count, uint8_t *out,
                  size_t out_size, size_t *out_len)
{
    NS_ASSERT(bpe != NULL);
    NS_ASSERT(ids != NULL || count == 0);
    NS_ASSERT(out != NULL || out_size == 0);
    NS_ASSERT(out_len != NULL);
    size_t pos = 0;
    for (size_t i = 0; i < count; i++) {
        if (ids[i] >= bpe->vocab_size)
            return NS_EINVAL;
        uint32_t start = bpe->tok_off[ids[i]];
        uint32_t n = bpe->tok_off[ids[i] + 1] - start;
        if (n > out_size - pos)
            return NS_ETOOBIG;
        memcpy(out + pos, bpe->tok_bytes + start, n);
        pos += n;
    }
    *out_len = pos;
    return NS_OK;
}

uint32_t ns_bpe_vocab_size(const ns_bpe *bpe)
{
    NS_ASSERT(bpe != NULL);
    return bpe->vocab_size;
}

uint32_t ns_bpe_merge_count(const ns_bpe *bpe)
{
    NS_ASSERT(bpe != NULL);
    return bpe->merge_count;
}

void ns_bpe_hash(const ns_bpe *bpe, uint8_t out[NS_SHA256_BYTES])
{
    NS_ASSERT(bpe != NULL);
    memcpy(out, bpe->hash, NS_SHA256_BYTES);
}

/* ---- construction ------------------------------------------------------------------------- */

void ns_bpe_free(ns_bpe *bpe)
{
    if (bpe == NULL)
        return;
    free(bpe->merges);
    free(bpe->tok_off);
    free(bpe->tok_bytes);
    free(bpe->map);
    free(bpe->whole);
    free(bpe);
}

/* Checks merge i against the ids made before it and the token length limit. */
static int check_merge(const ns_bpe *bpe, uint32_t i, uint32_t left, uint32_t right, char *err)
{
    uint32_t made = NS_BPE_FIRST_MERGE + i;
    if (left >= made || right >= made || left == NS_BPE_EOT || right == NS_BPE_EOT)
        return ns__data_err(err, NS_ECORRUPT,
                            "merge %u (%u, %u) names a token that is not made before it", i, left,
                            right);
    size_t n = (size_t)(bpe->tok_off[left + 1] - bpe->tok_off[left]) +
               (bpe->tok_off[right + 1] - bpe->tok_off[right]);
    if (n > NS_BPE_TOKEN_BYTES_MAX)
        return ns__data_err(err, NS_ECORRUPT, "merge %u makes a token of %zu bytes, over %d", i, n,
                            NS_BPE_TOKEN_BYTES_MAX);
    if (ns__bpe_lookup(bpe, left, right) != NS__BPE_NO_MERGE)
        return ns__data_err(err, NS_ECORRUPT, "merge %u (%u, %u) repeats merge %u", i, left, right,
                            ns__bpe_lookup(bpe, left, right) - NS_BPE_FIRST_MERGE);
    return NS_OK;
}

static void map_insert(ns_bpe *bpe, uint32_t left, uint32_t right, uint32_t id)
{
    uint32_t key = ns__bpe_pair_key(left, right);
    NS_ASSERT(key != NS__BPE_SLOT_EMPTY);
    uint64_t slot = ns__bpe_map_slot(bpe, key);
    while (bpe->map[slot].key != NS__BPE_SLOT_EMPTY) {
        NS_ASSERT(bpe->map[slot].key != key);
        slot = (slot + 1) & bpe->map_mask;
    }
    bpe->map[slot] = (ns__bpe_slot){.key = key, .id = id};
}

/* Allocates the tables for count merges; the byte tokens and end-of-text are filled in. */
static int bpe_alloc(uint32_t count, ns_bpe **out)
{
    ns_bpe *bpe = calloc(1, sizeof *bpe);
    if (bpe == NULL)
        return NS_ENOMEM;
    bpe->merge_count = count;
    bpe->vocab_size = NS_BPE_FIRST_MERGE + count;
    unsigned bits = 4;
    while (((uint64_t)1 << bits) < 2 * (uint64_t)count)
        bits++;
    bpe->map_mask = ((uint64_t)1 << bits) - 1;
    bpe->map_shift = 64 - bits;
    bpe->merges = malloc(2 * (size_t)count * sizeof(uint32_t) + 1);
    bpe->tok_off = malloc((bpe->vocab_size + 1) * sizeof(uint32_t));
    bpe->tok_bytes = malloc(NS_BPE_BYTE_TOKENS + (size_t)count * NS_BPE_TOKEN_BYTES_MAX);
    bpe->map = malloc((bpe->map_mask + 1) * sizeof(ns__bpe_slot));
    if (bpe->merges == NULL || bpe->tok_off == NULL || bpe->tok_bytes == NULL || bpe->map == NULL) {
        ns_bpe_free(bpe);
        return NS_ENOMEM;
    }
    memset(bpe->map, 0xff, (bpe->map_mask + 1) * sizeof(ns__bpe_slot));
    for (uint32_t b = 0; b < NS_BPE_BYTE_TOKENS; b++) {
        bpe->tok_off[b] = b;
        bpe->tok_bytes[b] = (uint8_t)b;
    }
    bpe->tok_off[NS_BPE_EOT] = NS_BPE_BYTE_TOKENS;
    bpe->tok_off[NS_BPE_EOT + 1] = NS_BPE_BYTE_TOKENS; /* end-of-text has no bytes */
    *out = bpe;
    return NS_OK;
}

/* Fills the whole-token table: every merged token that merging its own bytes gives back. (Not
 * every token does: BPE can make "ab" in one context and reach "a"+"bc" on the string "abc"; such
 * tokens are left out, so the table never changes an encoding, it only finds it sooner.) */
static int whole_build(ns_bpe *bpe)
{
    unsigned bits = 4;
    while (((uint64_t)1 << bits) < 2 * (uint64_t)bpe->merge_count)
        bits++;
    bpe->whole_mask = ((uint64_t)1 << bits) - 1;
    bpe->whole_shift = 64 - bits;
    bpe->whole = malloc((bpe->whole_mask + 1) * sizeof(ns__bpe_slot));
    if (bpe->whole == NULL)
        return NS_ENOMEM;
    memset(bpe->whole, 0xff, (bpe->whole_mask + 1) * sizeof(ns__bpe_slot));
    for (uint32_t id = NS_BPE_FIRST_MERGE; id < bpe->vocab_size; id++) {
        const uint8_t *s = bpe->tok_bytes + bpe->tok_off[id];
        size_t n = bpe->tok_off[id + 1] - bpe->tok_off[id];
        uint32_t ids[NS_BPE_PIECE_BYTES_MAX];
        if (merge_piece(bpe, s, n, ids) != 1 || ids[0] != id)
            continue;
        uint64_t h = bytes_hash(s, n);
        uint64_t slot = h >> bpe->whole_shift;
        while (bpe->whole[slot].id != NS__BPE_NO_MERGE)
            slot = (slot + 1) & bpe->whole_mask;
        bpe->whole[slot] = (ns__bpe_slot){.key = (uint32_t)h, .id = id};
    }
    return NS_OK;
}

int ns_bpe_from_merges(const uint32_t *pairs, uint32_t count, ns_bpe **out,
                       char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(pairs != NULL || count == 0);
    NS_ASSERT(out != NULL);
    if (count > NS_BPE_MERGES_MAX)
        return ns__data_err(err, NS_ETOOBIG, "%u merges, over the limit of %d", count,
                            NS_BPE_MERGES_MAX);
    ns_bpe *bpe;
    int rc = bpe_alloc(count, &bpe);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "out of memory for %u merges", count);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t left = pairs[2 * i];
        uint32_t right = pairs[2 * i + 1];
        rc = check_merge(bpe, i, left, right, err);
        if (rc != NS_OK) {
            ns_bpe_free(bpe);
            return rc;
        }
        uint32_t id = NS_BPE_FIRST_MERGE + i;
        uint32_t at = bpe->tok_off[id];
        uint32_t nl = bpe->tok_off[left + 1] - bpe->tok_off[left];
        uint32_t nr = bpe->tok_off[right + 1] - bpe->tok_off[right];
        memcpy(bpe->tok_bytes + at, bpe->tok_bytes + bpe->tok_off[left], nl);
        memcpy(bpe->tok_bytes + at + nl, bpe->tok_bytes + bpe->tok_off[right], nr);
        bpe->tok_off[id + 1] = at + nl + nr;
        bpe->merges[2 * i] = left;
        bpe->merges[2 * i + 1] = right;
        map_insert(bpe, left, right, id);
    }
    rc = whole_build(bpe);
    if (rc != NS_OK) {
        ns_bpe_free(bpe);
        return ns__data_err(err, rc, "out of memory for %u merges", count);
    }
    size_t file_len = ns__bpe_file_bytes(count);
    uint8_t *file = malloc(file_len);
    if (file == NULL) {
        ns_bpe_free(bpe);
        return ns__data_err(err, NS_ENOMEM, "out of memory for %u merges", count);
    }
    ns__bpe_write(bpe, file);
    memcpy(bpe->hash, file + file_len - NS_SHA256_BYTES, NS_SHA256_BYTES);
    free(file);
    *out = bpe;
    return NS_OK;
}
