/*
 * fuzz_link.c: libFuzzer target for the link's receive path, fed arbitrary bytes first.
 *
 * A listening node hands whatever a stranger sends straight to a responder link, and a dialing
 * node hands the answer to an initiator, so both must survive any bytes: close with an error or
 * wait for more, never crash, read out of bounds or leak. Each input goes to a fresh responder
 * and a fresh initiator on a small static env (a fixed clock, timers that never fire, counter
 * randomness), then in two pieces to a second responder, so that both the whole-message and the
 * buffered paths run. Random bytes almost never hold a node record that verifies, so a last
 * initiator gets a LinkHelloReply carrying a real record with the input as ephemeral and
 * signature, which takes it through the record checks to the signature. The identity is made
 * once.
 */
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "link.pb-c.h"
#include "neuroshard/link.h"

#define FUZZ_NOW_MS 1790000000000ULL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_state {
    ns_env env;
    uint64_t timer_next_id;
    uint64_t random_counter;
    ns_key key;
    ns_link_identity identity;
    uint8_t *record;
    bool ready;
} fuzz_state;

static fuzz_state fuzz;

typedef struct fuzz_end {
    ns_link *link;
    size_t written_bytes;
    bool closed;
} fuzz_end;

static uint64_t fuzz_now(void *ctx)
{
    (void)ctx;
    return FUZZ_NOW_MS;
}

static uint64_t fuzz_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    (void)ctx;
    (void)at_ms;
    (void)fn;
    (void)arg;
    return ++fuzz.timer_next_id;
}

static void fuzz_timer_cancel(void *ctx, uint64_t id)
{
    (void)ctx;
    (void)id;
}

static int fuzz_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    (void)ctx;
    (void)to;
    (void)ch;
    (void)f;
    return NS_EINVAL;
}

static void fuzz_random(void *ctx, void *buf, size_t n)
{
    (void)ctx;
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(++fuzz.random_counter * 0x9e3779b97f4a7c15ULL >> 56);
}

static void fuzz_write(void *arg, uint8_t *buf, size_t len)
{
    fuzz_end *e = arg;
    e->written_bytes += len;
    free(buf);
}

static void fuzz_established(void *arg, const uint8_t peer_id[NS_ID_BYTES], const uint8_t *record,
                             size_t record_len)
{
    (void)arg;
    (void)peer_id;
    (void)record;
    (void)record_len;
    NS_ASSERT(!"a stranger's bytes cannot finish a handshake");
}

static void fuzz_frame(void *arg, const ns_frame *f)
{
    (void)arg;
    (void)f;
    NS_ASSERT(!"no frame before a handshake");
}

static void fuzz_writable(void *arg)
{
    (void)arg;
}

static void fuzz_closed(void *arg, int reason)
{
    fuzz_end *e = arg;
    NS_ASSERT(!e->closed);
    NS_ASSERT(reason < 0 && reason > -NS_ERR_COUNT_);
    e->closed = true;
}

static void fuzz_setup(void)
{
    fuzz.env = (ns_env){.now_ms = fuzz_now,
                        .timer = fuzz_timer,
                        .timer_cancel = fuzz_timer_cancel,
                        .send = fuzz_send,
                        .random = fuzz_random};
    uint8_t seckey[NS_SECKEY_BYTES];
    memset(seckey, 0x42, sizeof seckey);
    NS_ASSERT(ns_key_from_seckey(&fuzz.key, seckey) == NS_OK);
    memset(fuzz.identity.link_static_secret, 0x24, 32);
    NS_ASSERT(crypto_scalarmult_base(fuzz.identity.link_static_public,
                                     fuzz.identity.link_static_secret) == 0);
    ns_node_info info;
    memset(&info, 0, sizeof info);
    ns_network_id(info.network_id, NS_NETWORK_DEFAULT);
    memcpy(info.link_static, fuzz.identity.link_static_public, 32);
    size_t record_len;
    NS_ASSERT(ns_node_record_make(&fuzz.key, &info, FUZZ_NOW_MS, 3600 * 1000, 1, &fuzz.record,
                                  &record_len) == NS_OK);
    fuzz.identity.key = &fuzz.key;
    fuzz.identity.node_record = fuzz.record;
    fuzz.identity.node_record_len = record_len;
    memcpy(fuzz.identity.network_id, info.network_id, 32);
    fuzz.ready = true;
}

/* A fresh link of role fed data in pieces split at split (size: whole). */
static void fuzz_feed(ns_link_role role, const uint8_t *data, size_t size, size_t split)
{
    fuzz_end e = {0};
    ns_link_callbacks cb = {.write = fuzz_write,
                            .established = fuzz_established,
                            .frame = fuzz_frame,
                            .writable = fuzz_writable,
                            .closed = fuzz_closed,
                            .arg = &e};
    NS_ASSERT(ns_link_new(&e.link, role, &fuzz.identity, NULL, &fuzz.env, &cb) == NS_OK);
    ns_link_on_written(e.link, e.written_bytes);
    int rc = ns_link_on_bytes(e.link, data, split);
    if (rc == NS_OK && !e.closed && split < size)
        rc = ns_link_on_bytes(e.link, data + split, size - split);
    NS_ASSERT(rc == NS_OK || e.closed);
    NS_ASSERT(!ns_link_established(e.link));
    ns_link_free(e.link);
}

/* LinkHelloReply{ephemeral = data[0..32), a real record, signature = data[32..96)}, framed. */
static void fuzz_reply(const uint8_t *data, size_t size)
{
    if (size < 96)
        return;
    Neuroshard__LinkHelloReply m = NEUROSHARD__LINK_HELLO_REPLY__INIT;
    m.ephemeral.data = (uint8_t *)data;
    m.ephemeral.len = 32;
    m.node_record.data = fuzz.record;
    m.node_record.len = fuzz.identity.node_record_len;
    m.signature.data = (uint8_t *)data + 32;
    m.signature.len = 64;
    uint8_t buf[NS_LINK_HANDSHAKE_BYTES_MAX + 2];
    size_t len = neuroshard__link_hello_reply__get_packed_size(&m);
    NS_ASSERT(len <= NS_LINK_HANDSHAKE_BYTES_MAX);
    buf[0] = (uint8_t)(len >> 8);
    buf[1] = (uint8_t)len;
    NS_ASSERT(neuroshard__link_hello_reply__pack(&m, buf + 2) == len);
    fuzz_feed(NS_LINK_INITIATOR, buf, len + 2, len + 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fuzz.ready)
        fuzz_setup();
    fuzz_feed(NS_LINK_RESPONDER, data, size, size);
    fuzz_feed(NS_LINK_INITIATOR, data, size, size);
    if (size > 1)
        fuzz_feed(NS_LINK_RESPONDER, data, size, 1 + data[0] % (size - 1));
    fuzz_reply(data, size);
    return 0;
}
