/*
 * fuzz_bundle.c: libFuzzer target for the cohort fraud bundle a judge reruns (sync.h,
 * ns_cohort_judge), which comes from a challenger over the network.
 *
 * An odd first byte makes the rest a bundle as it came: it is refused as NS_EPARSE (a seal the
 * fuzzer cannot forge stops most of them) or judged. An even first byte makes the rest up to
 * eight messages, split at the lengths the next bytes give, each sealed with a fixed key of its
 * own, so the judge's checks behind the seals (PART headers, one screen, blobs, the screen
 * itself) see arbitrary messages: every outcome is NS_OK with a verdict of the screen, or
 * NS_EPARSE; never a read outside the input.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/sync.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ns_key keys[8];
static bool keys_ready;

static void make_keys(void)
{
    for (int i = 0; i < 8; i++) {
        uint8_t sec[NS_SECKEY_BYTES];
        memset(sec, 0x22, sizeof sec);
        sec[0] = (uint8_t)(i + 1);
        NS_ASSERT(ns_key_from_seckey(&keys[i], sec) == NS_OK);
    }
    keys_ready = true;
}

static void check(int rc, const ns_cohort_judgement *j)
{
    NS_ASSERT(rc == NS_OK || rc == NS_EPARSE || rc == NS_ENOMEM);
    if (rc == NS_OK) {
        NS_ASSERT(j->verdict <= NS_AGG_INVALID);
        NS_ASSERT(j->parts >= NS_COHORT_BUNDLE_PARTS_MIN && j->parts <= NS_SYNC_GROUP_MAX);
        NS_ASSERT(j->round > 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!keys_ready)
        make_keys();
    if (size < 2)
        return 0;
    ns_cohort_judgement j;
    if (data[0] & 1) {
        check(ns_cohort_judge(data + 1, size - 1, keys[data[1] % 8].node_id, &j), &j);
        return 0;
    }
    size_t k = 3 + data[1] % 6, at = 2 + k * 2;
    if (size < at)
        return 0;
    ns_cohort_sealed parts[8];
    for (size_t i = 0; i < k; i++) {
        size_t want = (size_t)data[2 + 2 * i] << 8 | data[3 + 2 * i];
        size_t len = want < size - at ? want : size - at;
        if (len == 0)
            return 0;
        parts[i] = (ns_cohort_sealed){.msg = data + at, .len = len};
        NS_ASSERT(ns_cohort_seal(&keys[i], parts[i].msg, len, parts[i].seal) == NS_OK);
        at += len;
    }
    uint8_t *bundle;
    size_t len;
    if (ns_cohort_bundle_write(parts, k, &bundle, &len) != NS_OK)
        return 0;
    check(ns_cohort_judge(bundle, len, keys[data[1] % k].node_id, &j), &j);
    free(bundle);
    return 0;
}
