/*
 * verify.c: a memoising record verifier, so each record is verified once per process.
 *
 * Every simulated node verifies the node records it meets; ten thousand cores would check one
 * signature ten thousand times, which would cost more wall time than everything else the
 * simulator does. This wrapper, passed to every core as ns_dht_config.verify, keys an
 * open-addressing table by SHA-256 of the envelope bytes and remembers what ns_record_verify said.
 * Only results that do not depend on the time are kept: a record that verified (its decoded
 * fields, body as an offset, since equal bytes put the body at the same offset of any caller's
 * buffer) and a record that is malformed or badly signed. Expiry and skew are checked again on
 * every call, against that call's now_ms, exactly as ns_record_verify checks them. A record that
 * failed only on time is not remembered.
 */
#include <stdlib.h>
#include <string.h>

#include "netsim.h"

#define VERIFY_CAPACITY_START (1u << 12)
#define VERIFY_ENTRIES_MAX    (1u << 19) /* distinct envelopes remembered; more are not kept */

struct ns_sim_verify_entry {
    uint8_t digest[NS_SHA256_BYTES];
    uint32_t len;
    int32_t rc; /* what ns_record_verify returned: NS_OK, NS_EPARSE, NS_EAUTHOR, NS_EBADSIG */
    bool used;
    size_t body_offset;
    ns_record record; /* body is NULL here: it is re-pointed into each caller's buffer */
};

int ns__verifier_init(ns_sim_verifier *v)
{
    *v = (ns_sim_verifier){0};
    v->entries = calloc(VERIFY_CAPACITY_START, sizeof *v->entries);
    if (v->entries == NULL)
        return NS_ENOMEM;
    v->capacity = VERIFY_CAPACITY_START;
    return NS_OK;
}

void ns__verifier_free(ns_sim_verifier *v)
{
    free(v->entries);
    *v = (ns_sim_verifier){0};
}

static size_t slot_of(const ns_sim_verifier *v, const uint8_t digest[NS_SHA256_BYTES])
{
    uint64_t h;
    memcpy(&h, digest, sizeof h);
    return (size_t)h & (v->capacity - 1);
}

static ns_sim_verify_entry *entry_find(const ns_sim_verifier *v,
                                       const uint8_t digest[NS_SHA256_BYTES], size_t len)
{
    for (size_t i = slot_of(v, digest), probes = 0; probes < v->capacity;
         i = (i + 1) & (v->capacity - 1), probes++) {
        ns_sim_verify_entry *e = &v->entries[i];
        if (!e->used)
            return NULL;
        if (e->len == len && memcmp(e->digest, digest, NS_SHA256_BYTES) == 0)
            return e;
    }
    return NULL;
}

static ns_sim_verify_entry *entry_slot(const ns_sim_verifier *v,
                                       const uint8_t digest[NS_SHA256_BYTES])
{
    size_t i = slot_of(v, digest);
    while (v->entries[i].used)
        i = (i + 1) & (v->capacity - 1);
    return &v->entries[i];
}

/* Doubles the table while it is at most half full; false when it may not take one more. */
static bool table_make_room(ns_sim_verifier *v)
{
    if ((v->count + 1) * 2 <= v->capacity)
        return true;
    if (v->capacity >= 2 * VERIFY_ENTRIES_MAX)
        return false;
    ns_sim_verify_entry *old = v->entries;
    size_t old_capacity = v->capacity;
    ns_sim_verify_entry *entries = calloc(old_capacity * 2, sizeof *entries);
    if (entries == NULL)
        return false;
    v->entries = entries;
    v->capacity = old_capacity * 2;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].used)
            *entry_slot(v, old[i].digest) = old[i];
    }
    free(old);
    return true;
}

/* The time checks of ns_record_verify, in its order, for a record whose signature is known good. */
static int check_time(const ns_record *rec, uint64_t now_ms)
{
    if (rec->expiry_ms != 0 && now_ms >= rec->expiry_ms)
        return NS_EEXPIRED;
    if (rec->timestamp_ms > now_ms && rec->timestamp_ms - now_ms > NS_RECORD_SKEW_MS_MAX)
        return NS_EFUTURE;
    return NS_OK;
}

static int answer_from(const ns_sim_verify_entry *e, const uint8_t *buf, uint64_t now_ms,
                       ns_record *out)
{
    if (e->rc != NS_OK)
        return e->rc;
    int rc = check_time(&e->record, now_ms);
    if (rc != NS_OK)
        return rc;
    *out = e->record;
    out->body = buf + e->body_offset;
    NS_ASSERT(out->body_len <= e->len);
    NS_ASSERT(e->body_offset + out->body_len <= e->len);
    return NS_OK;
}

static void remember(ns_sim_verifier *v, const uint8_t digest[NS_SHA256_BYTES], const uint8_t *buf,
                     size_t len, int rc, const ns_record *rec)
{
    if (!table_make_room(v)) {
        v->uncached++;
        return;
    }
    ns_sim_verify_entry *e = entry_slot(v, digest);
    *e = (ns_sim_verify_entry){.len = (uint32_t)len, .rc = rc, .used = true};
    memcpy(e->digest, digest, NS_SHA256_BYTES);
    if (rc == NS_OK) {
        NS_ASSERT(rec->body >= buf);
        NS_ASSERT(rec->body + rec->body_len <= buf + len);
        e->record = *rec;
        e->body_offset = (size_t)(rec->body - buf);
        e->record.body = NULL;
    }
    v->count++;
}

int ns__verifier_verify(void *arg, const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *out)
{
    ns_sim_verifier *v = arg;
    NS_ASSERT(v != NULL);
    NS_ASSERT(out != NULL);
    if (len > NS_RECORD_BYTES_MAX)
        return NS_ETOOBIG; /* checked first, as ns_record_verify does, before hashing anything */
    if (len == 0)
        return NS_EPARSE;
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, buf, len);
    const ns_sim_verify_entry *e = entry_find(v, digest, len);
    if (e != NULL) {
        v->memo_hits++;
        return answer_from(e, buf, now_ms, out);
    }
    ns_record rec;
    int rc = ns_record_verify(buf, len, now_ms, &rec);
    v->verified++;
    if (rc == NS_OK || rc == NS_EPARSE || rc == NS_EAUTHOR || rc == NS_EBADSIG)
        remember(v, digest, buf, len, rc, &rec);
    else
        v->uncached++;
    if (rc == NS_OK)
        *out = rec;
    return rc;
}
