/*
 * evidence.c: signed cohort contributions and the fraud bundle a judge reruns (SPEC S8, S9).
 *
 * A cohort message on the wire is followed by its seal: the sender's compressed public key and
 * its signature over SHA256(NS_COHORT_SEAL_DOMAIN || msg). A chunk owner that screens a part as
 * fraud (beyond 5 sigma) keeps every sealed part it screened at that chunk, its own included, in
 * the screen's order: the bundle. Anyone can then run the same screen over the same bits and
 * reach the same verdict, which is what lets a ledger challenge rest on it (docs/ledger.md).
 *
 * What a bundle cannot show: that it holds every part the owner had. An owner with signing
 * accomplices could leave honest parts out; the judge asks for at least three signed parts of
 * one round, phase, lane, chunk and w0, and the challenger's bond pays for a false accusation.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "neuroshard/sync.h"

#define BUNDLE_MAGIC   "NSCB"
#define BUNDLE_VERSION 1
#define BUNDLE_HEAD    6
/* floats a judge decodes at most, all parts together (2 GiB): a chunk beyond is no evidence */
#define JUDGE_FLOATS_MAX (512ull << 20)

static void seal_digest(const uint8_t *msg, size_t len, uint8_t digest[NS_SHA256_BYTES])
{
    crypto_hash_sha256_state h;
    NS_ASSERT(crypto_hash_sha256_init(&h) == 0);
    NS_ASSERT(crypto_hash_sha256_update(&h, (const uint8_t *)NS_COHORT_SEAL_DOMAIN,
                                        sizeof NS_COHORT_SEAL_DOMAIN - 1) == 0);
    NS_ASSERT(crypto_hash_sha256_update(&h, msg, len) == 0);
    NS_ASSERT(crypto_hash_sha256_final(&h, digest) == 0);
}

int ns_cohort_seal(const ns_key *key, const uint8_t *msg, size_t len,
                   uint8_t seal[NS_COHORT_SEAL_BYTES])
{
    NS_ASSERT(key != NULL && seal != NULL);
    NS_ASSERT(msg != NULL || len == 0);
    uint8_t digest[NS_SHA256_BYTES];
    seal_digest(msg, len, digest);
    memcpy(seal, key->pubkey, NS_PUBKEY_BYTES);
    return ns_sign_digest(key, digest, seal + NS_PUBKEY_BYTES);
}

int ns_cohort_seal_check(const uint8_t *msg, size_t len, const uint8_t seal[NS_COHORT_SEAL_BYTES],
                         uint8_t signer[NS_ID_BYTES])
{
    NS_ASSERT(seal != NULL && signer != NULL);
    NS_ASSERT(msg != NULL || len == 0);
    uint8_t digest[NS_SHA256_BYTES];
    seal_digest(msg, len, digest);
    int err = ns_verify_digest(seal, digest, seal + NS_PUBKEY_BYTES);
    if (err != NS_OK)
        return err;
    ns_node_id_from_pubkey(signer, seal);
    return NS_OK;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int ns_cohort_bundle_write(const ns_cohort_sealed *parts, size_t k, uint8_t **out, size_t *out_len)
{
    NS_ASSERT(out != NULL && out_len != NULL);
    *out = NULL;
    *out_len = 0;
    if (parts == NULL || k < NS_COHORT_BUNDLE_PARTS_MIN || k > NS_SYNC_GROUP_MAX)
        return NS_EINVAL;
    size_t total = BUNDLE_HEAD;
    for (size_t i = 0; i < k; i++) {
        if (parts[i].msg == NULL || parts[i].len == 0 || parts[i].len > NS_SYNC_MSG_MAX)
            return NS_EINVAL;
        total += 4 + parts[i].len + NS_COHORT_SEAL_BYTES;
    }
    if (total > NS_COHORT_BUNDLE_MAX)
        return NS_ETOOBIG;
    uint8_t *b = malloc(total), *p = b;
    if (b == NULL)
        return NS_ENOMEM;
    memcpy(p, BUNDLE_MAGIC, 4);
    p[4] = BUNDLE_VERSION;
    p[5] = (uint8_t)k;
    p += BUNDLE_HEAD;
    for (size_t i = 0; i < k; i++) {
        put_u32(p, (uint32_t)parts[i].len);
        memcpy(p + 4, parts[i].msg, parts[i].len);
        memcpy(p + 4 + parts[i].len, parts[i].seal, NS_COHORT_SEAL_BYTES);
        p += 4 + parts[i].len + NS_COHORT_SEAL_BYTES;
    }
    *out = b;
    *out_len = total;
    return NS_OK;
}

/* Two parts belong to one screen: the same round, phase, lane, chunk, range and w0. */
static bool same_screen(const ns_cohort_part *a, const ns_cohort_part *b)
{
    return a->round == b->round && a->phase == b->phase && a->lane == b->lane &&
           a->chunk == b->chunk && a->first == b->first && a->length == b->length &&
           memcmp(a->w0_hash, b->w0_hash, NS_SHA256_BYTES) == 0;
}

int ns_cohort_judge(const uint8_t *bundle, size_t len, const uint8_t accused[NS_ID_BYTES],
                    ns_cohort_judgement *out)
{
    NS_ASSERT(accused != NULL && out != NULL);
    memset(out, 0, sizeof *out);
    if (bundle == NULL || len < BUNDLE_HEAD || len > NS_COHORT_BUNDLE_MAX ||
        memcmp(bundle, BUNDLE_MAGIC, 4) != 0 || bundle[4] != BUNDLE_VERSION)
        return NS_EPARSE;
    size_t k = bundle[5];
    if (k < NS_COHORT_BUNDLE_PARTS_MIN || k > NS_SYNC_GROUP_MAX)
        return NS_EPARSE;
    ns_cohort_part parts[NS_SYNC_GROUP_MAX];
    uint8_t signers[NS_SYNC_GROUP_MAX][NS_ID_BYTES];
    size_t at = BUNDLE_HEAD, who = k;
    for (size_t i = 0; i < k; i++) {
        if (len - at < 4)
            return NS_EPARSE;
        size_t msg_len = get_u32(bundle + at);
        at += 4;
        if (msg_len > len - at || len - at - msg_len < NS_COHORT_SEAL_BYTES)
            return NS_EPARSE;
        const uint8_t *msg = bundle + at;
        if (ns_cohort_part_parse(msg, msg_len, &parts[i]) != NS_OK ||
            (i > 0 && !same_screen(&parts[0], &parts[i])))
            return NS_EPARSE;
        if (ns_cohort_seal_check(msg, msg_len, msg + msg_len, signers[i]) != NS_OK)
            return NS_EPARSE;
        for (size_t j = 0; j < i; j++)
            if (memcmp(signers[j], signers[i], NS_ID_BYTES) == 0)
                return NS_EPARSE;
        if (memcmp(signers[i], accused, NS_ID_BYTES) == 0)
            who = i;
        uint64_t n;
        uint32_t kept;
        if (ns_compress_peek(parts[i].blob, parts[i].blob_len, &n, &kept) != NS_OK ||
            n != parts[i].length)
            return NS_EPARSE;
        at += msg_len + NS_COHORT_SEAL_BYTES;
    }
    uint64_t length = parts[0].length;
    if (at != len || who == k || length == 0 || length > JUDGE_FLOATS_MAX / k)
        return NS_EPARSE;
    float *v = malloc((size_t)(k * length) * sizeof *v);
    if (v == NULL)
        return NS_ENOMEM;
    ns_agg_input in[NS_SYNC_GROUP_MAX];
    for (size_t i = 0; i < k; i++) {
        in[i] = (ns_agg_input){.v = v + i * length, .weight = parts[i].weight};
        if (ns_compress_decode(parts[i].blob, parts[i].blob_len, v + i * length, length) != NS_OK) {
            free(v);
            return NS_EPARSE;
        }
    }
    ns_agg_config cfg;
    ns_agg_config_default(&cfg); /* S8's 3 and 5 sigma: what every node screens with */
    ns_agg_verdict verdicts[NS_SYNC_GROUP_MAX];
    double sigmas[NS_SYNC_GROUP_MAX];
    float *agg = malloc((size_t)length * sizeof *agg);
    int err = agg == NULL ? NS_ENOMEM : ns_agg_run(&cfg, in, k, length, agg, verdicts, sigmas);
    free(agg);
    free(v);
    if (err == NS_ENOMEM)
        return err;
    if (err != NS_OK && err != NS_ENOENT)
        return NS_EPARSE;
    *out = (ns_cohort_judgement){.verdict = verdicts[who],
                                 .sigma = sigmas[who],
                                 .round = parts[0].round,
                                 .parts = (uint32_t)k};
    return NS_OK;
}
