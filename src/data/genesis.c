/*
 * genesis.c: the Genesis dataset: the Brown corpus, cut into shards and signed by the dataset key.
 *
 * What the signature does and does not prove: the dataset key's secret is SHA-256 of a public
 * string (NS_GENESIS_KEY_SEED), so anyone can sign as it. That is deliberate: the manifest must
 * be rebuildable byte for byte by anyone from the pinned corpus tarball, with no secret held by
 * anybody. So a valid signature shows only that a manifest is whole and claims to be Genesis; it
 * does not show who made it, and a forger could sign another shard list. The binding is the
 * pinned manifest hash (NS_GENESIS_MANIFEST_SHA256_HEX), which ns_genesis_open and
 * ns_genesis_build check; the manifest's per-shard hashes then bind every shard a peer serves.
 */
#include <string.h>
#include <stdlib.h>

#include "data_internal.h"

void ns_genesis_key(ns_key *key)
{
    NS_ASSERT(key != NULL);
    uint8_t seckey[NS_SECKEY_BYTES];
    ns_sha256(seckey, NS_GENESIS_KEY_SEED, sizeof NS_GENESIS_KEY_SEED - 1);
    NS_ASSERT(ns_key_from_seckey(key, seckey) == NS_OK);
}

static int check_pinned(const ns_dataset *ds, char *err)
{
    uint8_t want[NS_SHA256_BYTES];
    NS_ASSERT(ns_hex_decode(want, sizeof want, NS_GENESIS_MANIFEST_SHA256_HEX) == NS_OK);
    if (memcmp(want, ds->manifest_sha256, NS_SHA256_BYTES) == 0)
        return NS_OK;
    char got[2 * NS_SHA256_BYTES + 1];
    ns_hex_encode(got, sizeof got, ds->manifest_sha256, NS_SHA256_BYTES);
    return ns__data_err(err, NS_ECORRUPT, "%s/%s: not the Genesis manifest (SHA-256 %s, pinned %s)",
                        ds->dir, NS_DATASET_MANIFEST_FILE, got, NS_GENESIS_MANIFEST_SHA256_HEX);
}

int ns_genesis_build(const char *brown_dir, const char *out_dir, ns_dataset *ds,
                     char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(brown_dir != NULL);
    NS_ASSERT(out_dir != NULL);
    NS_ASSERT(ds != NULL);
    uint8_t *text;
    size_t len;
    int rc = ns_brown_read_all(brown_dir, &text, &len, err);
    if (rc != NS_OK)
        return rc;
    ns_key key;
    ns_genesis_key(&key);
    rc = ns_dataset_build(text, len, out_dir, NS_GENESIS_NAME, &key, 0, ds, err);
    ns_key_wipe(&key);
    free(text);
    if (rc != NS_OK)
        return rc;
    return check_pinned(ds, err);
}

int ns_genesis_open(const char *dir, ns_dataset *ds, char err[NS_DATA_ERR_BYTES])
{
    uint8_t signer[NS_NODE_ID_BYTES];
    NS_ASSERT(ns_hex_decode(signer, sizeof signer, NS_GENESIS_NODE_ID_HEX) == NS_OK);
    int rc = ns_dataset_open(dir, signer, ds, err);
    if (rc != NS_OK)
        return rc;
    return check_pinned(ds, err);
}
