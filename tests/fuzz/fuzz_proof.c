/*
 * fuzz_proof.c: libFuzzer target for the Proof of Neural Work body decoder, ns_proof_decode, and
 * the structural check that follows it in every validator.
 *
 * A proof's body reaches the decoder only inside a verified record, but the decoder must hold on
 * its own: any bytes are refused with an error code, or decode to a proof whose counts are
 * within their fields and which, re-encoded, gives back the same bytes (canonical encoding).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/ponw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_proof p = {.timestamp_ms = 1790000000000ULL};
    int rc = ns_proof_decode(data, size, &p);
    if (rc != NS_OK) {
        NS_ASSERT(rc < 0 && rc > -NS_ERR_COUNT_);
        return 0;
    }
    NS_ASSERT(p.training.micro_batches <= NS_PONW_MICRO_BATCHES_MAX);
    if (ns_proof_check(&p) == NULL) {
        uint8_t *again;
        size_t again_len;
        NS_ASSERT(ns_proof_encode(&p, &again, &again_len) == NS_OK);
        NS_ASSERT(again_len == size && memcmp(again, data, size) == 0);
        free(again);
    }
    return 0;
}
