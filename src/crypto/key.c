/*
 * key.c: the node's secp256k1 identity (SPEC S1) and deterministic ECDSA over 32-byte digests.
 *
 * Derivation: token = BIP39 seed[:32], secret key = SHA256(token), public key compressed,
 * node_id = SHA256(public key). Signing uses RFC 6979 nonces (libsecp256k1's default) and always
 * yields low-S signatures; verification refuses high-S, so each message has one signature per key.
 *
 * One secp256k1 context serves the whole process: created and randomized once under pthread_once
 * (the blinding seed comes from libsodium, which is initialized there too), then only ever used
 * through const pointers, which libsecp256k1 allows from any number of threads at once.
 */
#include <assert.h>
#include <pthread.h>
#include <string.h>

#include <secp256k1.h>
#include <sodium.h>

#include "neuroshard/crypto.h"

#define WALLET_TOKEN_BYTES 32 /* S1: token = BIP39 seed[:32] */

static pthread_once_t context_once = PTHREAD_ONCE_INIT;
static secp256k1_context *context;

static void context_create(void)
{
    NS_ASSERT(sodium_init() >= 0);
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    NS_ASSERT(ctx != NULL);
    uint8_t blind[32];
    randombytes_buf(blind, sizeof blind);
    NS_ASSERT(secp256k1_context_randomize(ctx, blind) == 1);
    sodium_memzero(blind, sizeof blind);
    context = ctx;
}

static const secp256k1_context *context_get(void)
{
    NS_ASSERT(pthread_once(&context_once, context_create) == 0);
    NS_ASSERT(context != NULL);
    return context;
}

void ns_node_id_from_pubkey(uint8_t node_id[NS_NODE_ID_BYTES],
                            const uint8_t pubkey[NS_PUBKEY_BYTES])
{
    ns_sha256(node_id, pubkey, NS_PUBKEY_BYTES);
}

int ns_key_from_seckey(ns_key *key, const uint8_t seckey[NS_SECKEY_BYTES])
{
    NS_ASSERT(key != NULL);
    NS_ASSERT(seckey != NULL);
    const secp256k1_context *ctx = context_get();
    secp256k1_pubkey pub;
    if (secp256k1_ec_pubkey_create(ctx, &pub, seckey) != 1)
        return NS_ECRYPTO; /* zero or not below the group order */
    size_t pub_len = NS_PUBKEY_BYTES;
    int ok =
        secp256k1_ec_pubkey_serialize(ctx, key->pubkey, &pub_len, &pub, SECP256K1_EC_COMPRESSED);
    NS_ASSERT(ok == 1);
    NS_ASSERT(pub_len == NS_PUBKEY_BYTES);
    memmove(key->seckey, seckey, NS_SECKEY_BYTES);
    ns_node_id_from_pubkey(key->node_id, key->pubkey);
    return NS_OK;
}

int ns_key_from_seed(ns_key *key, const uint8_t seed[NS_BIP39_SEED_BYTES])
{
    NS_ASSERT(key != NULL);
    NS_ASSERT(seed != NULL);
    static_assert(NS_SHA256_BYTES == NS_SECKEY_BYTES, "the secret key is a SHA-256 digest");
    uint8_t seckey[NS_SECKEY_BYTES];
    ns_sha256(seckey, seed, WALLET_TOKEN_BYTES);
    int rc = ns_key_from_seckey(key, seckey);
    sodium_memzero(seckey, sizeof seckey);
    return rc;
}

void ns_key_wipe(ns_key *key)
{
    NS_ASSERT(key != NULL);
    sodium_memzero(key->seckey, sizeof key->seckey);
}

int ns_sign_digest(const ns_key *key, const uint8_t digest[NS_SHA256_BYTES],
                   uint8_t sig[NS_SIG_BYTES])
{
    NS_ASSERT(key != NULL);
    NS_ASSERT(digest != NULL);
    NS_ASSERT(sig != NULL);
    const secp256k1_context *ctx = context_get();
    secp256k1_ecdsa_signature s;
    /* A NULL nonce function selects RFC 6979; the result is normalized to low-S. */
    if (secp256k1_ecdsa_sign(ctx, &s, digest, key->seckey, NULL, NULL) != 1)
        return NS_ECRYPTO;
    int ok = secp256k1_ecdsa_signature_serialize_compact(ctx, sig, &s);
    NS_ASSERT(ok == 1);
    return NS_OK;
}

int ns_verify_digest(const uint8_t pubkey[NS_PUBKEY_BYTES], const uint8_t digest[NS_SHA256_BYTES],
                     const uint8_t sig[NS_SIG_BYTES])
{
    NS_ASSERT(pubkey != NULL);
    NS_ASSERT(digest != NULL);
    NS_ASSERT(sig != NULL);
    const secp256k1_context *ctx = context_get();
    secp256k1_pubkey pub;
    if (secp256k1_ec_pubkey_parse(ctx, &pub, pubkey, NS_PUBKEY_BYTES) != 1)
        return NS_ECRYPTO;
    secp256k1_ecdsa_signature s;
    if (secp256k1_ecdsa_signature_parse_compact(ctx, &s, sig) != 1)
        return NS_EBADSIG; /* r or s not below the group order */
    /* secp256k1_ecdsa_verify refuses high-S signatures by itself. */
    return secp256k1_ecdsa_verify(ctx, &s, digest, &pub) == 1 ? NS_OK : NS_EBADSIG;
}
