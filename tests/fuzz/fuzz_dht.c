/*
 * fuzz_dht.c: libFuzzer target for the DHT core's two parsers of outside bytes: datagrams
 * (ns_dht_on_datagram) and saved tables (ns_dht_load).
 *
 * Each input gets a fresh core on a static fake env whose clock stands still, whose timers never
 * fire and whose sends are only counted. The first byte chooses: odd, the rest is a saved table;
 * even, the core first pings one peer (so that an answer with the right txid, which the fuzzer
 * can learn from comparisons, reaches the answer path) and the rest is up to FUZZ_DATAGRAMS_MAX
 * datagrams from that peer, each behind a 2-byte big-endian length. Nothing may crash, leak,
 * read out of bounds or break the core's invariants; every refusal must be an error code.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/dht.h"
#include "neuroshard/link.h"
#include "neuroshard/wire.h"

#define FUZZ_NOW_MS        1790000000000ULL
#define FUZZ_DATAGRAMS_MAX 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_env {
    uint64_t rng;
    uint64_t timer_id;
    size_t sent;
} fuzz_env;

static uint64_t fuzz_now(void *ctx)
{
    (void)ctx;
    return FUZZ_NOW_MS;
}

static uint64_t fuzz_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    (void)at_ms;
    (void)fn;
    (void)arg;
    return ++((fuzz_env *)ctx)->timer_id;
}

static void fuzz_timer_cancel(void *ctx, uint64_t id)
{
    NS_ASSERT(id != 0 && id <= ((fuzz_env *)ctx)->timer_id);
}

static int fuzz_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    NS_ASSERT(ch == NS_CHANNEL_DATAGRAM);
    NS_ASSERT(f->type == NS_FRAME_DHT);
    NS_ASSERT(f->body_len > 0 && f->body_len <= NS_DHT_PACKET_BYTES_MAX);
    NS_ASSERT(to->addr.family == 4 || to->addr.family == 6);
    ((fuzz_env *)ctx)->sent++;
    return NS_OK;
}

static void fuzz_random(void *ctx, void *buf, size_t n)
{
    fuzz_env *fe = ctx;
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++) {
        fe->rng = fe->rng * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (uint8_t)(fe->rng >> 56);
    }
}

static ns_key fuzz_key;
static uint8_t *fuzz_record;
static size_t fuzz_record_len;
static uint8_t fuzz_network[32];
static const ns_addr fuzz_self = {.family = 4, .ip = {10, 0, 0, 1}, .port = 4000};
static const ns_addr fuzz_peer = {.family = 4, .ip = {10, 0, 0, 2}, .port = 4001};

static void fuzz_setup(void)
{
    if (fuzz_record != NULL)
        return;
    uint8_t seckey[NS_SECKEY_BYTES] = {0x42, 1, 2, 3};
    NS_ASSERT(ns_key_from_seckey(&fuzz_key, seckey) == NS_OK);
    ns_network_id(fuzz_network, "fuzz");
    ns_node_info info = {.address_count = 1};
    memcpy(info.network_id, fuzz_network, 32);
    info.addresses[0] = fuzz_self;
    strcpy(info.version, "fuzz");
    NS_ASSERT(ns_node_record_make(&fuzz_key, &info, FUZZ_NOW_MS, 3600000, 1, &fuzz_record,
                                  &fuzz_record_len) == NS_OK);
}

static void fuzz_datagrams(ns_dht *dht, const uint8_t *data, size_t size)
{
    NS_ASSERT(ns_dht_ping(dht, &fuzz_peer) == NS_OK);
    for (size_t i = 0; i < FUZZ_DATAGRAMS_MAX && size >= 2; i++) {
        size_t len = (size_t)data[0] << 8 | data[1];
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        ns_dht_on_datagram(dht, &fuzz_peer, data, len);
        data += len;
        size -= len;
    }
}

static void fuzz_check(const ns_dht *dht)
{
    ns_dht_stats st;
    ns_dht_get_stats(dht, &st);
    NS_ASSERT(st.requests_in + st.responses_in + st.dropped_malformed + st.dropped_rate_limited +
                  st.dropped_unexpected <=
              st.packets_in);
    NS_ASSERT(st.records_stored <= NS_DHT_STORED_VALUES_MAX);
    ns_dht_contact contacts[NS_DHT_K * 4];
    size_t n = ns_dht_contacts(dht, contacts, NS_DHT_K * 4);
    NS_ASSERT(n <= ns_dht_contact_count(dht));
    for (size_t i = 0; i < n; i++)
        NS_ASSERT(memcmp(contacts[i].node_id, fuzz_key.node_id, NS_ID_BYTES) != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup();
    fuzz_env fe = {.rng = 7};
    ns_env env = {.now_ms = fuzz_now,
                  .timer = fuzz_timer,
                  .timer_cancel = fuzz_timer_cancel,
                  .send = fuzz_send,
                  .random = fuzz_random,
                  .ctx = &fe};
    ns_dht_config config = {
        .key = &fuzz_key, .self_record = fuzz_record, .self_record_len = fuzz_record_len};
    memcpy(config.network_id, fuzz_network, 32);
    ns_dht *dht;
    NS_ASSERT(ns_dht_new(&dht, &config, &env) == NS_OK);
    if (size > 0 && (data[0] & 1) != 0) {
        int rc = ns_dht_load(dht, data + 1, size - 1);
        NS_ASSERT(rc == NS_OK || rc == NS_EPARSE || rc == NS_EFOREIGN);
    } else if (size > 0) {
        fuzz_datagrams(dht, data + 1, size - 1);
    }
    fuzz_check(dht);
    uint8_t *saved;
    size_t saved_len;
    NS_ASSERT(ns_dht_save(dht, &saved, &saved_len) == NS_OK);
    NS_ASSERT(ns_dht_load(dht, saved, saved_len) == NS_OK);
    free(saved);
    ns_dht_free(dht);
    return 0;
}
