/*
 * bpe_file.c: the tokenizer file (format in data.h): writing, and reading it back with every
 * length checked before it is read.
 *
 * A tokenizer file may come from a peer or a damaged disk, so the parser trusts nothing: it
 * checks the size against the header, the hash, and then every merge as ns_bpe_from_merges does
 * (ids made before use, no repeats, bounded token length). It never asserts on the bytes it is
 * given; each refusal says what is wrong in one line.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

#define MAGIC_BYTES 8

static_assert(sizeof NS_BPE_FILE_MAGIC - 1 == MAGIC_BYTES, "the magic is 8 bytes");
static_assert(NS_BPE_FILE_HEADER_BYTES == MAGIC_BYTES + 12, "magic, version, merges, specials");

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t ns__bpe_file_bytes(uint32_t merge_count)
{
    return NS_BPE_FILE_HEADER_BYTES + 8 * (size_t)merge_count + NS_SHA256_BYTES;
}

void ns__bpe_write(const ns_bpe *bpe, uint8_t *buf)
{
    memcpy(buf, NS_BPE_FILE_MAGIC, MAGIC_BYTES);
    put_u32(buf + 8, NS_BPE_FILE_VERSION);
    put_u32(buf + 12, bpe->merge_count);
    put_u32(buf + 16, 1);
    uint8_t *p = buf + NS_BPE_FILE_HEADER_BYTES;
    for (uint32_t i = 0; i < 2 * bpe->merge_count; i++, p += 4)
        put_u32(p, bpe->merges[i]);
    ns_sha256(p, buf, (size_t)(p - buf));
}

int ns_bpe_serialize(const ns_bpe *bpe, uint8_t **out, size_t *out_len)
{
    NS_ASSERT(bpe != NULL);
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    size_t len = ns__bpe_file_bytes(bpe->merge_count);
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        return NS_ENOMEM;
    ns__bpe_write(bpe, buf);
    NS_ASSERT(memcmp(buf + len - NS_SHA256_BYTES, bpe->hash, NS_SHA256_BYTES) == 0);
    *out = buf;
    *out_len = len;
    return NS_OK;
}

/* The header and the size; on success *merge_count is what the header says. */
static int parse_header(const uint8_t *buf, size_t len, uint32_t *merge_count, char *err)
{
    const size_t empty_len = ns__bpe_file_bytes(0);
    *merge_count = 0;
    if (len < MAGIC_BYTES || memcmp(buf, NS_BPE_FILE_MAGIC, MAGIC_BYTES) != 0)
        return ns__data_err(err, NS_ECORRUPT, "not a tokenizer file (no NSBPE magic)");
    if (len < empty_len)
        return ns__data_err(err, NS_ECORRUPT, "truncated: %zu bytes, the smallest file has %zu",
                            len, empty_len);
    uint32_t version = get_u32(buf + 8);
    if (version != NS_BPE_FILE_VERSION)
        return ns__data_err(err, NS_EFOREIGN, "version %u; this build reads version %d", version,
                            NS_BPE_FILE_VERSION);
    uint32_t specials = get_u32(buf + 16);
    if (specials != 1)
        return ns__data_err(err, NS_ECORRUPT, "%u special tokens; version 1 has 1", specials);
    uint32_t count = get_u32(buf + 12);
    if (count > NS_BPE_MERGES_MAX)
        return ns__data_err(err, NS_ECORRUPT, "%u merges, over the limit of %d", count,
                            NS_BPE_MERGES_MAX);
    size_t want = ns__bpe_file_bytes(count);
    if (len < want)
        return ns__data_err(err, NS_ECORRUPT, "truncated: %zu bytes, %u merges need %zu", len,
                            count, want);
    if (len > want)
        return ns__data_err(err, NS_ECORRUPT, "%zu bytes after the end of %u merges", len - want,
                            count);
    *merge_count = count;
    return NS_OK;
}

int ns_bpe_parse(const uint8_t *buf, size_t len, ns_bpe **out, char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(buf != NULL || len == 0);
    NS_ASSERT(out != NULL);
    uint32_t count;
    int rc = parse_header(buf, len, &count, err);
    if (rc != NS_OK)
        return rc;
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, buf, len - NS_SHA256_BYTES);
    if (memcmp(digest, buf + len - NS_SHA256_BYTES, NS_SHA256_BYTES) != 0)
        return ns__data_err(err, NS_ECORRUPT, "SHA-256 does not match the contents");
    uint32_t *pairs = malloc(2 * (size_t)count * sizeof(uint32_t) + 1);
    if (pairs == NULL)
        return ns__data_err(err, NS_ENOMEM, "out of memory for %u merges", count);
    for (size_t i = 0; i < 2 * (size_t)count; i++)
        pairs[i] = get_u32(buf + NS_BPE_FILE_HEADER_BYTES + 4 * i);
    rc = ns_bpe_from_merges(pairs, count, out, err);
    free(pairs);
    NS_ASSERT(rc != NS_OK || memcmp((*out)->hash, digest, NS_SHA256_BYTES) == 0);
    return rc;
}

int ns_bpe_save(const ns_bpe *bpe, const char *path)
{
    NS_ASSERT(bpe != NULL);
    NS_ASSERT(path != NULL);
    uint8_t *buf;
    size_t len;
    int rc = ns_bpe_serialize(bpe, &buf, &len);
    if (rc != NS_OK)
        return rc;
    rc = ns_file_write_atomic(path, buf, len, 0644);
    free(buf);
    return rc;
}

int ns_bpe_load(const char *path, ns_bpe **out, char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(out != NULL);
    uint8_t *buf;
    size_t len;
    int rc = ns_file_read(path, NS_BPE_FILE_BYTES_MAX, &buf, &len);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: cannot read the tokenizer: %s", path, ns_strerror(rc));
    char why[NS_DATA_ERR_BYTES] = "";
    rc = ns_bpe_parse(buf, len, out, why);
    free(buf);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: %s", path, why);
    return NS_OK;
}
