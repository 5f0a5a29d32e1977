/*
 * sha256.c: the one hash neuroshard names everything with (node ids, record digests, shard ids).
 *
 * A thin wrapper over libsodium's SHA-256, so that every part hashes through one function and no
 * part includes sodium.h just for a digest. libsodium's SHA-256 is portable code that needs no
 * sodium_init(), so this leaf stays free of any shared state.
 */
#include <sodium.h>

#include "neuroshard/crypto.h"

void ns_sha256(uint8_t out[NS_SHA256_BYTES], const void *buf, size_t len)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(buf != NULL || len == 0);
    int rc = crypto_hash_sha256(out, buf, (unsigned long long)len);
    NS_ASSERT(rc == 0);
}
