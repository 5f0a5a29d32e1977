/*
 * fuzz_record.c: libFuzzer target for the signed-record parser, ns_record_verify.
 *
 * Any bytes from the network reach ns_record_verify first, so it must refuse them with an error
 * code, never crash, read out of bounds or leak. On the rare input that verifies (the fuzzer
 * cannot forge a signature, but a seed corpus may hold real envelopes), the result must describe
 * bytes inside the input.
 */
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/crypto.h"

#define FUZZ_NOW_MS 1790000000000ULL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_record record;
    int rc = ns_record_verify(data, size, FUZZ_NOW_MS, &record);
    if (rc == NS_OK) {
        NS_ASSERT(size <= NS_RECORD_BYTES_MAX);
        NS_ASSERT(record.body_len <= NS_RECORD_BODY_BYTES_MAX);
        NS_ASSERT(record.body_len == 0 ||
                  (record.body >= data && record.body + record.body_len <= data + size));
    } else {
        NS_ASSERT(rc < 0 && rc > -NS_ERR_COUNT_);
    }
    return 0;
}
