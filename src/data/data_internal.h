/*
 * data_internal.h: what the files of src/data share and nobody else sees: the tokenizer's
 * struct, its merge lookup, and the one helper that writes an error line.
 */
#ifndef NS_DATA_INTERNAL_H
#define NS_DATA_INTERNAL_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/data.h"

#define NS__BPE_NO_MERGE   UINT32_MAX
#define NS__BPE_SLOT_EMPTY UINT32_MAX

static_assert(NS_BPE_VOCAB_MAX <= 65536, "a pair of ids packs into 32 bits");

/* One slot of an open-addressing table: key and value side by side, one cache line per probe. */
typedef struct ns__bpe_slot {
    uint32_t key; /* NS__BPE_SLOT_EMPTY: empty */
    uint32_t id;
} ns__bpe_slot;

struct ns_bpe {
    uint32_t merge_count;
    uint32_t vocab_size; /* NS_BPE_FIRST_MERGE + merge_count */
    uint32_t *merges;    /* 2 * merge_count: left, right of merge i */
    uint32_t *tok_off;   /* vocab_size + 1 offsets into tok_bytes */
    uint8_t *tok_bytes;
    /* Merge lookup, linear probing: key (left << 16 | right; the pair (65535, 65535) can never be
     * a merge, as the last id is made by the last merge), id the id the merge makes. */
    ns__bpe_slot *map;
    uint64_t map_mask;
    unsigned map_shift;
    /* Whole tokens: the merged tokens that merging their own bytes gives back, keyed by the low
     * 32 bits of a hash of their bytes (the bytes are compared on a hit). */
    ns__bpe_slot *whole;
    uint64_t whole_mask;
    unsigned whole_shift;
    uint8_t hash[NS_SHA256_BYTES]; /* of the serialized form */
};

static inline uint32_t ns__bpe_pair_key(uint32_t left, uint32_t right)
{
    return left << 16 | right;
}

static inline uint64_t ns__bpe_map_slot(const ns_bpe *bpe, uint32_t key)
{
    return ((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> bpe->map_shift;
}

/* The id merge (left, right) makes, or NS__BPE_NO_MERGE; both ids below the vocabulary size. */
static inline uint32_t ns__bpe_lookup(const ns_bpe *bpe, uint32_t left, uint32_t right)
{
    uint32_t key = ns__bpe_pair_key(left, right);
    uint64_t slot = ns__bpe_map_slot(bpe, key);
    for (;;) {
        ns__bpe_slot e = bpe->map[slot];
        if (e.key == key)
            return e.id;
        if (e.key == NS__BPE_SLOT_EMPTY)
            return NS__BPE_NO_MERGE;
        slot = (slot + 1) & bpe->map_mask;
    }
}

/* Writes "fmt ..." into err when err is not NULL; always returns rc, so that a caller can write
 * `return ns__data_err(err, NS_ECORRUPT, "...")`. */
int ns__data_err(char *err, int rc, const char *fmt, ...) NS_PRINTF(3, 4);

/* A growing byte buffer; data is NUL-terminated (not counted in len) once anything is in it. */
typedef struct ns__buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} ns__buf;

NS_MUST_USE int ns__buf_append(ns__buf *b, const void *p, size_t n);

/* Serializes into a buffer of exactly ns__bpe_file_bytes(merge_count) bytes. */
size_t ns__bpe_file_bytes(uint32_t merge_count);
void ns__bpe_write(const ns_bpe *bpe, uint8_t *buf);

/* Reads a whole directory listing: the names (not paths) of regular files in dir whose names
 * pass keep(), sorted by byte order. names[] and each name are malloc'd; free with
 * ns__data_names_free. At most max names (NS_ELIMIT beyond). */
NS_MUST_USE int ns__data_list_dir(const char *dir, int (*keep)(const char *name), size_t max,
                                  char ***names, size_t *count, char err[NS_DATA_ERR_BYTES]);
void ns__data_names_free(char **names, size_t count);

#endif
