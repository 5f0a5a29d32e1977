/*
 * fuzz_tokenizer.c: libFuzzer target for the tokenizer file parser, encode and decode.
 *
 * A tokenizer file can come from a damaged disk or another node, so ns_bpe_parse must refuse any
 * bytes with an error code, never crash, read out of bounds or leak. Random bytes almost never
 * carry a correct SHA-256, so the first input byte picks a mode: even, the input is parsed as a
 * file as it is; odd, the rest is read as a list of merges (pairs of 16-bit ids) and goes through
 * ns_bpe_from_merges, which checks merges as the parser does, so the fuzzer reaches the checks
 * behind the hash. Any tokenizer that is accepted must serialize and parse back to the same hash,
 * encode its own input and decode it back to the same bytes, and refuse an unknown id.
 */
#include <stdlib.h>
#include <string.h>

#include "neuroshard/data.h"

#define FUZZ_MERGES_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const ns_bpe *bpe, const uint8_t *text, size_t len)
{
    uint8_t *file;
    size_t file_len;
    NS_ASSERT(ns_bpe_serialize(bpe, &file, &file_len) == NS_OK);
    ns_bpe *again;
    NS_ASSERT(ns_bpe_parse(file, file_len, &again, NULL) == NS_OK);
    uint8_t h1[NS_SHA256_BYTES];
    uint8_t h2[NS_SHA256_BYTES];
    ns_bpe_hash(bpe, h1);
    ns_bpe_hash(again, h2);
    NS_ASSERT(memcmp(h1, h2, sizeof h1) == 0);
    ns_bpe_free(again);
    free(file);

    uint32_t *ids = malloc((len + 1) * sizeof *ids);
    uint8_t *back = malloc(len + 1);
    NS_ASSERT(ids != NULL && back != NULL);
    size_t n = ns_bpe_encode(bpe, text, len, ids);
    NS_ASSERT(n <= len);
    size_t back_len;
    NS_ASSERT(ns_bpe_decode(bpe, ids, n, back, len + 1, &back_len) == NS_OK);
    NS_ASSERT(back_len == len && memcmp(back, text, len) == 0);
    ids[0] = ns_bpe_vocab_size(bpe);
    NS_ASSERT(ns_bpe_decode(bpe, ids, 1, back, len + 1, &back_len) == NS_EINVAL);
    free(ids);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    ns_bpe *bpe = NULL;
    char err[NS_DATA_ERR_BYTES];
    int rc;
    if ((data[0] & 1) == 0) {
        rc = ns_bpe_parse(data + 1, size - 1, &bpe, err);
    } else {
        size_t count = (size - 1) / 4;
        if (count > FUZZ_MERGES_MAX)
            count = FUZZ_MERGES_MAX;
        uint32_t *pairs = malloc(2 * count * sizeof *pairs + 1);
        NS_ASSERT(pairs != NULL);
        for (size_t i = 0; i < 2 * count; i++)
            pairs[i] = (uint32_t)data[1 + 2 * i] | (uint32_t)data[2 + 2 * i] << 8;
        rc = ns_bpe_from_merges(pairs, (uint32_t)count, &bpe, err);
        free(pairs);
    }
    if (rc != NS_OK) {
        NS_ASSERT(rc < 0 && rc > -NS_ERR_COUNT_);
        NS_ASSERT(bpe == NULL);
        return 0;
    }
    exercise(bpe, data, size);
    ns_bpe_free(bpe);
    return 0;
}
