/*
 * fuzz_entry.c: libFuzzer target for ledger entries from the network: ns_entry_open (record
 * verification and the body's canonical decoding).
 *
 * Gossip hands any bytes a peer sends to ns_ledger_apply, which opens them first; they must be
 * refused with an error code, never crash or read out of bounds. On the rare input that opens (a
 * seed corpus may hold real entries), every field must describe bytes inside the input.
 */
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/ledger.h"

#define FUZZ_NOW_MS 1800000000000ULL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_entry e;
    int rc = ns_entry_open(data, size, FUZZ_NOW_MS, &e);
    if (rc != NS_OK) {
        NS_ASSERT(rc < 0 && rc > -NS_ERR_COUNT_);
        return 0;
    }
    NS_ASSERT(e.kind >= NS_ENTRY_CLAIM && e.kind <= NS_ENTRY_UNSTAKE);
    NS_ASSERT(e.amount.nano >= 0 && e.sequence >= 1);
    NS_ASSERT(e.proof_len == 0 || (e.proof >= data && e.proof + e.proof_len <= data + size));
    return 0;
}
