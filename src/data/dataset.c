/*
 * dataset.c: shards and their signed manifest (SPEC S11).
 *
 * A dataset is plain text cut into shards, and one manifest, a signed record, that lists each
 * shard's size, SHA-256 and split (training or validation). The manifest is what a node trusts;
 * a shard is only ever used after its bytes hash to the manifest's value, so shards can come from
 * any peer or disk. Building is deterministic (same text, size and key: same bytes, timestamp 0),
 * which lets anyone rebuild and compare. The manifest body (big-endian):
 *     "NSDM" | version u8 (1) | name length u8 | name | SHA-256 of all the text (32)
 *     | shard count u32 | per shard: split u8, size u32, SHA-256 (32)
 * and its record has type NS_RECORD_DATASET_MANIFEST, topic "neuroshard/dataset/<name>",
 * sequence 1.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

#define BODY_MAGIC        "NSDM"
#define BODY_VERSION      1
#define BODY_HEADER_BYTES (4 + 1 + 1)
#define BODY_SHARD_BYTES  (1 + 4 + NS_SHA256_BYTES)
#define TOPIC_PREFIX      "neuroshard/dataset/"
#define SHARD_FILE_FORMAT "%s/shard-%05u.txt"
#define BODY_BYTES_MAX                                                                             \
    (BODY_HEADER_BYTES + NS_DATASET_NAME_BYTES_MAX + NS_SHA256_BYTES + 4 +                         \
     NS_DATASET_SHARDS_MAX * BODY_SHARD_BYTES)

static_assert(BODY_BYTES_MAX <= NS_RECORD_BODY_BYTES_MAX, "the largest manifest fits a record");
static_assert(sizeof TOPIC_PREFIX - 1 + NS_DATASET_NAME_BYTES_MAX <= NS_RECORD_TOPIC_BYTES_MAX,
              "the topic fits a record");
static_assert(NS_DATASET_SHARD_BYTES_MAX <= UINT32_MAX, "a shard size fits its u32");

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool name_valid(const char *name, size_t n)
{
    if (n == 0 || n > NS_DATASET_NAME_BYTES_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int ns_dataset_shard_path(const char *dir, uint32_t index, char *out, size_t out_size)
{
    NS_ASSERT(dir != NULL);
    NS_ASSERT(out != NULL);
    int n = snprintf(out, out_size, SHARD_FILE_FORMAT, dir, index);
    return n > 0 && (size_t)n < out_size ? NS_OK : NS_ETOOBIG;
}

/* ---- cutting ------------------------------------------------------------------------------ */

/* Where the shard that starts at pos ends: at most target bytes on, after the last line end in
 * the second half of that window, else after the last space there, else at a UTF-8 character
 * boundary. */
static size_t shard_end(const uint8_t *text, size_t len, size_t pos, size_t target)
{
    if (len - pos <= target)
        return len;
    size_t limit = pos + target;
    size_t floor = pos + target / 2;
    for (size_t i = limit; i > floor; i--) {
        if (text[i - 1] == '\n')
            return i;
    }
    for (size_t i = limit; i > floor; i--) {
        if (text[i - 1] == ' ')
            return i;
    }
    size_t end = limit;
    while (end > floor && (text[end] & 0xC0) == 0x80)
        end--;
    return end;
}

/* Fills ds->shards (sizes, hashes, splits) and the split lists for text cut at target bytes. */
static int cut_shards(const uint8_t *text, size_t len, size_t target, ns_dataset *ds, char *err)
{
    uint32_t count = 0;
    for (size_t pos = 0; pos < len; count++) {
        if (count == NS_DATASET_SHARDS_MAX)
            return ns__data_err(err, NS_ETOOBIG,
                                "%zu bytes of text need more than %d shards of %zu bytes", len,
                                NS_DATASET_SHARDS_MAX, target);
        size_t end = shard_end(text, len, pos, target);
        NS_ASSERT(end > pos);
        NS_ASSERT(end - pos <= target);
        ns_dataset_shard *s = &ds->shards[count];
        s->size_bytes = (uint32_t)(end - pos);
        ns_sha256(s->sha256, text + pos, end - pos);
        s->split = count % NS_DATASET_VAL_EVERY == NS_DATASET_VAL_EVERY - 1 ? NS_SHARD_VAL
                                                                            : NS_SHARD_TRAIN;
        pos = end;
    }
    if (count >= 2 && count < NS_DATASET_VAL_EVERY)
        ds->shards[count - 1].split = NS_SHARD_VAL;
    ds->shard_count = count;
    return NS_OK;
}

/* Rebuilds ds->train and ds->val from the shards' splits. */
static void index_splits(ns_dataset *ds)
{
    ds->train_count = 0;
    ds->val_count = 0;
    for (uint32_t i = 0; i < ds->shard_count; i++) {
        if (ds->shards[i].split == NS_SHARD_VAL)
            ds->val[ds->val_count++] = i;
        else
            ds->train[ds->train_count++] = i;
    }
    NS_ASSERT(ds->train_count + ds->val_count == ds->shard_count);
}

/* ---- the manifest ------------------------------------------------------------------------- */

static size_t body_write(const ns_dataset *ds, uint8_t *buf)
{
    size_t name_len = strlen(ds->name);
    uint8_t *p = buf;
    memcpy(p, BODY_MAGIC, 4);
    p[4] = BODY_VERSION;
    p[5] = (uint8_t)name_len;
    p += BODY_HEADER_BYTES;
    memcpy(p, ds->name, name_len);
    p += name_len;
    memcpy(p, ds->text_sha256, NS_SHA256_BYTES);
    p += NS_SHA256_BYTES;
    put_be32(p, ds->shard_count);
    p += 4;
    for (uint32_t i = 0; i < ds->shard_count; i++) {
        p[0] = ds->shards[i].split;
        put_be32(p + 1, ds->shards[i].size_bytes);
        memcpy(p + 5, ds->shards[i].sha256, NS_SHA256_BYTES);
        p += BODY_SHARD_BYTES;
    }
    NS_ASSERT((size_t)(p - buf) <= BODY_BYTES_MAX);
    return (size_t)(p - buf);
}

static void manifest_record(const char *name, const uint8_t *body, size_t body_len, ns_record *r)
{
    *r = (ns_record){
        .type = NS_RECORD_DATASET_MANIFEST, .sequence = 1, .body = body, .body_len = body_len};
    size_t prefix = sizeof TOPIC_PREFIX - 1;
    memcpy(r->topic, TOPIC_PREFIX, prefix);
    memcpy(r->topic + prefix, name, strlen(name));
    r->topic_len = prefix + strlen(name);
}

/* Signs and writes dir/manifest; fills ds->signer and ds->manifest_sha256. */
static int manifest_write(ns_dataset *ds, const ns_key *key, char *err)
{
    uint8_t body[BODY_BYTES_MAX];
    size_t body_len = body_write(ds, body);
    ns_record rec;
    manifest_record(ds->name, body, body_len, &rec);
    uint8_t *env;
    size_t env_len;
    int rc = ns_record_sign(key, &rec, &env, &env_len);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "signing the manifest: %s", ns_strerror(rc));
    char path[NS_DATASET_DIR_BYTES_MAX + 16];
    snprintf(path, sizeof path, "%s/%s", ds->dir, NS_DATASET_MANIFEST_FILE);
    rc = ns_file_write_atomic(path, env, env_len, 0644);
    if (rc == NS_OK) {
        memcpy(ds->signer, key->node_id, NS_NODE_ID_BYTES);
        ns_sha256(ds->manifest_sha256, env, env_len);
    }
    free(env);
    return rc == NS_OK ? NS_OK
                       : ns__data_err(err, rc, "%s: cannot write: %s", path, ns_strerror(rc));
}

/* Parses a manifest body into ds (name, text hash, shards, splits); NS_EPARSE with a reason. */
static int body_parse(const uint8_t *b, size_t len, ns_dataset *ds, char *err)
{
    if (len < BODY_HEADER_BYTES || memcmp(b, BODY_MAGIC, 4) != 0)
        return ns__data_err(err, NS_EPARSE, "not a dataset manifest (no NSDM magic)");
    if (b[4] != BODY_VERSION)
        return ns__data_err(err, NS_EFOREIGN, "manifest version %u; this build reads %d", b[4],
                            BODY_VERSION);
    size_t name_len = b[5];
    size_t fixed = BODY_HEADER_BYTES + name_len + NS_SHA256_BYTES + 4;
    if (len < fixed || !name_valid((const char *)b + BODY_HEADER_BYTES, name_len))
        return ns__data_err(err, NS_EPARSE, "manifest header is short or its name is not valid");
    memcpy(ds->name, b + BODY_HEADER_BYTES, name_len);
    ds->name[name_len] = '\0';
    memcpy(ds->text_sha256, b + BODY_HEADER_BYTES + name_len, NS_SHA256_BYTES);
    uint32_t count = get_be32(b + fixed - 4);
    if (count == 0 || count > NS_DATASET_SHARDS_MAX || len != fixed + count * BODY_SHARD_BYTES)
        return ns__data_err(err, NS_EPARSE, "manifest lists %u shards in %zu bytes", count, len);
    const uint8_t *p = b + fixed;
    for (uint32_t i = 0; i < count; i++, p += BODY_SHARD_BYTES) {
        ns_dataset_shard *s = &ds->shards[i];
        s->split = p[0];
        s->size_bytes = get_be32(p + 1);
        memcpy(s->sha256, p + 5, NS_SHA256_BYTES);
        if (s->split > NS_SHARD_VAL || s->size_bytes == 0 ||
            s->size_bytes > NS_DATASET_SHARD_BYTES_MAX)
            return ns__data_err(err, NS_EPARSE, "manifest entry for shard %u is not valid", i);
    }
    ds->shard_count = count;
    index_splits(ds);
    if (ds->train_count == 0)
        return ns__data_err(err, NS_EPARSE, "manifest has no training shard");
    return NS_OK;
}

/* Checks the record around a manifest body: type, topic, sequence, no time. */
static int record_check(const ns_record *r, const char *name, char *err)
{
    ns_record want;
    manifest_record(name, NULL, 0, &want);
    if (r->type != want.type || r->topic_len != want.topic_len ||
        memcmp(r->topic, want.topic, want.topic_len) != 0 || r->sequence != 1 ||
        r->timestamp_ms != 0 || r->expiry_ms != 0)
        return ns__data_err(err, NS_EPARSE, "the record is not a dataset manifest for '%s'", name);
    return NS_OK;
}

/* ---- the public face ---------------------------------------------------------------------- */

static int set_dir(ns_dataset *ds, const char *dir, char *err)
{
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof ds->dir)
        return ns__data_err(err, NS_ETOOBIG, "dataset directory path too long (%zu bytes)", n);
    memcpy(ds->dir, dir, n + 1);
    return NS_OK;
}

static int write_shards(const uint8_t *text, const ns_dataset *ds, char *err)
{
    int rc = ns_mkdir_p(ds->dir);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: cannot create: %s", ds->dir, ns_strerror(rc));
    size_t pos = 0;
    for (uint32_t i = 0; i < ds->shard_count; i++) {
        char path[NS_DATASET_DIR_BYTES_MAX + 32];
        NS_ASSERT(ns_dataset_shard_path(ds->dir, i, path, sizeof path) == NS_OK);
        rc = ns_file_write_atomic(path, text + pos, ds->shards[i].size_bytes, 0644);
        if (rc != NS_OK)
            return ns__data_err(err, rc, "%s: cannot write: %s", path, ns_strerror(rc));
        pos += ds->shards[i].size_bytes;
    }
    return NS_OK;
}

/* The shard size for shard_bytes (0: automatic); 0 when out of range. */
static size_t shard_target(size_t len, size_t shard_bytes)
{
    if (shard_bytes != 0)
        return shard_bytes >= NS_DATASET_SHARD_BYTES_MIN &&
                       shard_bytes <= NS_DATASET_SHARD_BYTES_MAX
                   ? shard_bytes
                   : 0;
    size_t target = len / NS_DATASET_SHARDS_AUTO;
    if (target < NS_DATASET_SHARD_BYTES_AUTO_MIN)
        target = NS_DATASET_SHARD_BYTES_AUTO_MIN;
    return target < NS_DATASET_SHARD_BYTES_MAX ? target : NS_DATASET_SHARD_BYTES_MAX;
}

int ns_dataset_build(const uint8_t *text, size_t len, const char *out_dir, const char *name,
                     const ns_key *key, size_t shard_bytes, ns_dataset *ds,
                     char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(text != NULL || len == 0);
    NS_ASSERT(out_dir != NULL);
    NS_ASSERT(name != NULL);
    NS_ASSERT(key != NULL);
    NS_ASSERT(ds != NULL);
    size_t target = shard_target(len, shard_bytes);
    if (len == 0 || !name_valid(name, strlen(name)) || target == 0)
        return ns__data_err(err, NS_EINVAL,
                            "dataset '%s': empty text, a bad name or a shard size of %zu", name,
                            shard_bytes);
    memset(ds, 0, sizeof *ds);
    int rc = set_dir(ds, out_dir, err);
    if (rc != NS_OK)
        return rc;
    memcpy(ds->name, name, strlen(name) + 1);
    ns_sha256(ds->text_sha256, text, len);
    rc = cut_shards(text, len, target, ds, err);
    if (rc != NS_OK)
        return rc;
    index_splits(ds);
    rc = write_shards(text, ds, err);
    if (rc != NS_OK)
        return rc;
    return manifest_write(ds, key, err);
}

/* Reads dir/manifest into a buffer; err names the file. */
static int manifest_read(const char *path, uint8_t **buf, size_t *len, char *err)
{
    int rc = ns_file_read(path, NS_RECORD_BYTES_MAX, buf, len);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: cannot read the dataset manifest: %s", path,
                            ns_strerror(rc));
    return NS_OK;
}

int ns_dataset_open(const char *dir, const uint8_t signer[NS_NODE_ID_BYTES], ns_dataset *ds,
                    char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(dir != NULL);
    NS_ASSERT(ds != NULL);
    memset(ds, 0, sizeof *ds);
    int rc = set_dir(ds, dir, err);
    if (rc != NS_OK)
        return rc;
    char path[NS_DATASET_DIR_BYTES_MAX + 16];
    snprintf(path, sizeof path, "%s/%s", dir, NS_DATASET_MANIFEST_FILE);
    uint8_t *buf;
    size_t len;
    rc = manifest_read(path, &buf, &len, err);
    if (rc != NS_OK)
        return rc;
    ns_record rec;
    char why[NS_DATA_ERR_BYTES] = "";
    /* now_ms 0: a manifest has timestamp 0 and no expiry, so time never matters. */
    rc = ns_record_verify(buf, len, 0, &rec);
    if (rc != NS_OK)
        snprintf(why, sizeof why, "the signed record does not verify: %s", ns_strerror(rc));
    if (rc == NS_OK)
        rc = body_parse(rec.body, rec.body_len, ds, why);
    if (rc == NS_OK)
        rc = record_check(&rec, ds->name, why);
    if (rc == NS_OK && signer != NULL && memcmp(signer, rec.author, NS_NODE_ID_BYTES) != 0) {
        rc = NS_EAUTHOR;
        snprintf(why, sizeof why, "signed by another key than the one expected");
    }
    if (rc == NS_OK) {
        memcpy(ds->signer, rec.author, NS_NODE_ID_BYTES);
        ns_sha256(ds->manifest_sha256, buf, len);
    }
    free(buf);
    return rc == NS_OK ? NS_OK : ns__data_err(err, rc, "%s: %s", path, why);
}

int ns_dataset_read_shard(const ns_dataset *ds, uint32_t index, uint8_t **out, size_t *out_len,
                          char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(ds != NULL);
    NS_ASSERT(index < ds->shard_count);
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    const ns_dataset_shard *s = &ds->shards[index];
    char path[NS_DATASET_DIR_BYTES_MAX + 32];
    NS_ASSERT(ns_dataset_shard_path(ds->dir, index, path, sizeof path) == NS_OK);
    uint8_t *buf;
    size_t len;
    int rc = ns_file_read(path, s->size_bytes, &buf, &len);
    if (rc == NS_ETOOBIG)
        return ns__data_err(err, NS_ECORRUPT, "%s: larger than the %u bytes the manifest says",
                            path, s->size_bytes);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: cannot read the shard: %s", path, ns_strerror(rc));
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, buf, len);
    if (len != s->size_bytes || memcmp(digest, s->sha256, NS_SHA256_BYTES) != 0) {
        free(buf);
        char want[2 * NS_SHA256_BYTES + 1];
        ns_hex_encode(want, sizeof want, s->sha256, NS_SHA256_BYTES);
        return ns__data_err(err, NS_ECORRUPT,
                            "%s: refused: %zu bytes whose SHA-256 is not the manifest's (%u "
                            "bytes, %s)",
                            path, len, s->size_bytes, want);
    }
    *out = buf;
    *out_len = len;
    return NS_OK;
}

uint32_t ns_dataset_shard_for_node(const ns_dataset *ds, const uint8_t node_id[NS_NODE_ID_BYTES])
{
    NS_ASSERT(ds != NULL);
    NS_ASSERT(node_id != NULL);
    NS_ASSERT(ds->train_count > 0);
    uint8_t h[NS_SHA256_BYTES];
    ns_sha256(h, node_id, NS_NODE_ID_BYTES);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | h[i];
    uint32_t index = ds->train[v % ds->train_count];
    NS_ASSERT(index < ds->shard_count && ds->shards[index].split == NS_SHARD_TRAIN);
    return index;
}
