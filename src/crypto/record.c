/*
 * record.c: signing and verifying records, the self-certifying unit of everything published.
 *
 * A record is packed once by the signer; the envelope carries those exact bytes, the author's
 * compressed public key and a signature over SHA256(NS_RECORD_DOMAIN || record bytes). A verifier
 * never signs or hashes a re-encoding: it re-packs the envelope and the record only to check that
 * they are canonical (the bytes it got are the only encoding of that message), streaming the
 * re-pack into a comparator instead of a buffer, so verification allocates nothing beyond what
 * protobuf-c's unpack needs. Checks run cheapest and most specific first: size, parse, lengths,
 * canonical form, author, signature, then time.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "neuroshard/crypto.h"
#include "record.pb-c.h"

#define RECORD_STACK_BYTES 1024 /* records up to this size are packed on the stack when signed */

static_assert(NS_RECORD_BODY_BYTES_MAX + 256 <= NS_RECORD_BYTES_MAX,
              "a record with the largest body and every header field fits an envelope");

/* SHA256(NS_RECORD_DOMAIN || record), the digest a record's signature covers. */
static void record_digest(uint8_t digest[NS_SHA256_BYTES], const uint8_t *record, size_t len)
{
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)NS_RECORD_DOMAIN, sizeof NS_RECORD_DOMAIN - 1);
    crypto_hash_sha256_update(&st, record, (unsigned long long)len);
    crypto_hash_sha256_final(&st, digest);
}

void ns_record_key(const ns_record *record, uint8_t key[NS_SHA256_BYTES])
{
    if (record->topic_len == 0) {
        memcpy(key, record->author, NS_NODE_ID_BYTES);
        return;
    }
    static const char domain[] = "neuroshard/topic/v1";
    uint8_t type_be[4] = {(uint8_t)(record->type >> 24), (uint8_t)(record->type >> 16),
                          (uint8_t)(record->type >> 8), (uint8_t)record->type};
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)domain, sizeof domain - 1);
    crypto_hash_sha256_update(&st, type_be, sizeof type_be);
    crypto_hash_sha256_update(&st, record->topic, record->topic_len);
    crypto_hash_sha256_final(&st, key);
}

int ns_record_sign(const ns_key *key, const ns_record *record, uint8_t **out, size_t *out_len)
{
    NS_ASSERT(key != NULL);
    NS_ASSERT(record != NULL);
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    NS_ASSERT(record->body != NULL || record->body_len == 0);
    if (record->body_len > NS_RECORD_BODY_BYTES_MAX ||
        record->topic_len > NS_RECORD_TOPIC_BYTES_MAX)
        return NS_ETOOBIG;
    Neuroshard__Record rec = NEUROSHARD__RECORD__INIT;
    rec.type = record->type;
    rec.author.data = (uint8_t *)key->node_id;
    rec.author.len = NS_NODE_ID_BYTES;
    rec.sequence = record->sequence;
    rec.timestamp_ms = record->timestamp_ms;
    rec.expiry_ms = record->expiry_ms;
    rec.topic.data = (uint8_t *)record->topic;
    rec.topic.len = record->topic_len;
    rec.body.data = (uint8_t *)record->body;
    rec.body.len = record->body_len;
    size_t rec_len = neuroshard__record__get_packed_size(&rec);
    uint8_t stack[RECORD_STACK_BYTES];
    uint8_t *rec_buf = rec_len <= sizeof stack ? stack : malloc(rec_len);
    if (rec_buf == NULL)
        return NS_ENOMEM;
    NS_ASSERT(neuroshard__record__pack(&rec, rec_buf) == rec_len);

    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    record_digest(digest, rec_buf, rec_len);
    int rc = ns_sign_digest(key, digest, sig);
    Neuroshard__SignedEnvelope env = NEUROSHARD__SIGNED_ENVELOPE__INIT;
    env.record.data = rec_buf;
    env.record.len = rec_len;
    env.pubkey.data = (uint8_t *)key->pubkey;
    env.pubkey.len = NS_PUBKEY_BYTES;
    env.signature.data = sig;
    env.signature.len = NS_SIG_BYTES;
    size_t env_len = neuroshard__signed_envelope__get_packed_size(&env);
    NS_ASSERT(env_len <= NS_RECORD_BYTES_MAX);
    uint8_t *env_buf = rc == NS_OK ? malloc(env_len) : NULL;
    if (rc == NS_OK && env_buf == NULL)
        rc = NS_ENOMEM;
    if (rc == NS_OK) {
        NS_ASSERT(neuroshard__signed_envelope__pack(&env, env_buf) == env_len);
        *out = env_buf;
        *out_len = env_len;
    }
    if (rec_buf != stack)
        free(rec_buf);
    return rc;
}

/* A ProtobufCBuffer that compares what protobuf-c packs with the bytes received, so checking for
 * the canonical encoding needs no second buffer. */
typedef struct compare_buffer {
    ProtobufCBuffer base;
    const uint8_t *want;
    size_t want_len;
    size_t offset;
    bool equal;
} compare_buffer;

static void compare_append(ProtobufCBuffer *buffer, size_t len, const uint8_t *data)
{
    compare_buffer *cmp = (compare_buffer *)buffer;
    if (!cmp->equal || len == 0) /* an empty bytes field packs nothing (and data may be NULL) */
        return;
    if (len > cmp->want_len - cmp->offset || memcmp(cmp->want + cmp->offset, data, len) != 0) {
        cmp->equal = false;
        return;
    }
    cmp->offset += len;
}

bool ns_pb_packs_to(const void *message, const uint8_t *want, size_t want_len)
{
    const ProtobufCMessage *msg = message;
    if (msg->n_unknown_fields != 0)
        return false; /* protobuf-c would re-pack them, but they are not ours */
    compare_buffer cmp = {.base = {.append = compare_append},
                          .want = want,
                          .want_len = want_len,
                          .offset = 0,
                          .equal = true};
    size_t packed = protobuf_c_message_pack_to_buffer(msg, &cmp.base);
    return cmp.equal && packed == want_len && cmp.offset == want_len;
}

/* Offset of a bytes field's payload that ends a canonical message of msg_len bytes. Canonical
 * protobuf writes fields in number order and the field is the highest-numbered one present. */
static size_t tail_field_offset(size_t msg_len, size_t field_len)
{
    NS_ASSERT(field_len <= msg_len);
    return msg_len - field_len;
}

/* Unpacks and checks the envelope's shape; on success *env is the caller's to free. */
static int envelope_parse(const uint8_t *buf, size_t len, Neuroshard__SignedEnvelope **env)
{
    Neuroshard__SignedEnvelope *e = neuroshard__signed_envelope__unpack(NULL, len, buf);
    if (e == NULL)
        return NS_EPARSE;
    bool ok = e->record.len > 0 && e->pubkey.len == NS_PUBKEY_BYTES &&
              e->signature.len == NS_SIG_BYTES && ns_pb_packs_to(&e->base, buf, len);
    if (!ok) {
        neuroshard__signed_envelope__free_unpacked(e, NULL);
        return NS_EPARSE;
    }
    *env = e;
    return NS_OK;
}

/* Unpacks and checks the record's shape, filling *out with body pointing into rec_bytes. */
static int record_parse(const uint8_t *rec_bytes, size_t rec_len, ns_record *out)
{
    Neuroshard__Record *r = neuroshard__record__unpack(NULL, rec_len, rec_bytes);
    if (r == NULL)
        return NS_EPARSE;
    bool ok = r->author.len == NS_NODE_ID_BYTES && r->body.len <= NS_RECORD_BODY_BYTES_MAX &&
              r->topic.len <= NS_RECORD_TOPIC_BYTES_MAX &&
              ns_pb_packs_to(&r->base, rec_bytes, rec_len);
    if (ok) {
        out->type = r->type;
        memcpy(out->author, r->author.data, NS_NODE_ID_BYTES);
        out->sequence = r->sequence;
        out->timestamp_ms = r->timestamp_ms;
        out->expiry_ms = r->expiry_ms;
        out->topic_len = r->topic.len;
        if (r->topic.len > 0)
            memcpy(out->topic, r->topic.data, r->topic.len);
        out->body_len = r->body.len;
        out->body = rec_bytes + tail_field_offset(rec_len, r->body.len);
        NS_ASSERT(r->body.len == 0 || memcmp(out->body, r->body.data, r->body.len) == 0);
    }
    neuroshard__record__free_unpacked(r, NULL);
    return ok ? NS_OK : NS_EPARSE;
}

static int record_check_time(const ns_record *rec, uint64_t now_ms)
{
    if (rec->expiry_ms != 0 && now_ms >= rec->expiry_ms)
        return NS_EEXPIRED;
    if (rec->timestamp_ms > now_ms && rec->timestamp_ms - now_ms > NS_RECORD_SKEW_MS_MAX)
        return NS_EFUTURE;
    return NS_OK;
}

int ns_record_verify(const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *record)
{
    NS_ASSERT(buf != NULL || len == 0);
    NS_ASSERT(record != NULL);
    if (len > NS_RECORD_BYTES_MAX)
        return NS_ETOOBIG;
    if (len == 0)
        return NS_EPARSE;
    Neuroshard__SignedEnvelope *env;
    int rc = envelope_parse(buf, len, &env);
    if (rc != NS_OK)
        return rc;
    /* The record field comes first, so its bytes end where the pubkey field begins. */
    const size_t pubkey_field_bytes = 2 + NS_PUBKEY_BYTES;
    const size_t sig_field_bytes = 2 + NS_SIG_BYTES;
    NS_ASSERT(len > env->record.len + pubkey_field_bytes + sig_field_bytes);
    const uint8_t *rec_bytes =
        buf + tail_field_offset(len - pubkey_field_bytes - sig_field_bytes, env->record.len);
    NS_ASSERT(memcmp(rec_bytes, env->record.data, env->record.len) == 0);
    uint8_t pubkey[NS_PUBKEY_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    memcpy(pubkey, env->pubkey.data, NS_PUBKEY_BYTES);
    memcpy(sig, env->signature.data, NS_SIG_BYTES);
    size_t rec_len = env->record.len;
    neuroshard__signed_envelope__free_unpacked(env, NULL);

    ns_record rec;
    rc = record_parse(rec_bytes, rec_len, &rec);
    if (rc != NS_OK)
        return rc;
    uint8_t author[NS_NODE_ID_BYTES];
    ns_node_id_from_pubkey(author, pubkey);
    if (memcmp(author, rec.author, NS_NODE_ID_BYTES) != 0)
        return NS_EAUTHOR;
    uint8_t digest[NS_SHA256_BYTES];
    record_digest(digest, rec_bytes, rec_len);
    rc = ns_verify_digest(pubkey, digest, sig);
    if (rc == NS_ECRYPTO)
        return NS_EPARSE; /* the pubkey field is not a point on the curve */
    if (rc != NS_OK)
        return rc;
    rc = record_check_time(&rec, now_ms);
    if (rc != NS_OK)
        return rc;
    *record = rec;
    return NS_OK;
}
