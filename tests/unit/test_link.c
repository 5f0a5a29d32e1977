/*
 * test_link.c: the encrypted link (src/link/link.c), two ends wired back to back.
 *
 * Each test builds a pair of links on one fake env and joins them with an in-memory pipe: what one
 * end's write() hands over is queued, then delivered to the other end's ns_link_on_bytes in
 * random-sized chunks (a seeded generator, so a failure replays), and acknowledged with
 * ns_link_on_written once all of it is delivered. Tests that play an attacker take whole handshake
 * messages off the pipe, change them and put them back. link.c is included here with small rekey
 * and outbound limits so that thresholds are reached in a few frames, and so that its internals
 * (keys, counters, buffers) can be checked directly.
 */
#define NS_LINK_REKEY_FRAMES       8
#define NS_LINK_REKEY_BYTES        (64 * 1024)
#define NS_LINK_OUTBOUND_BYTES_MAX (256 * 1024)

#include "../../src/link/link.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "support/testutil.h"

#define TEST_NOW_MS        1790000000000ULL
#define TEST_TTL_MS        (24ull * 3600 * 1000)
#define TEST_SEED          0x5eed1234abcdULL
#define TEST_PENDING_MAX   1024 /* buffers one end may have in the pipe */
#define TEST_RX_FRAMES_MAX 128  /* frames one end keeps copies of */
#define TEST_STEPS_MAX     1000000

/* ---- identities --------------------------------------------------------------------------- */

typedef struct test_node {
    ns_key key;
    uint8_t *record;
    size_t record_len;
    ns_link_identity id;
} test_node;

enum {
    NODE_A,       /* genesis network */
    NODE_B,       /* genesis network */
    NODE_M,       /* mallory: genesis network, a valid identity of its own */
    NODE_OTHER,   /* another network altogether */
    NODE_LIAR,    /* says genesis in LinkHello, but its record names another network */
    NODE_EXPIRED, /* genesis, but its record expired a day ago */
    NODE_COUNT
};

static test_node nodes[NODE_COUNT];

static void node_make(test_node *n, uint8_t seed, const char *hello_network,
                      const char *record_network, uint64_t made_ms)
{
    uint8_t seckey[NS_SECKEY_BYTES];
    memset(seckey, seed, sizeof seckey);
    assert_int_equal(ns_key_from_seckey(&n->key, seckey), NS_OK);
    memset(n->id.link_static_secret, seed ^ 0x5a, 32);
    assert_int_equal(crypto_scalarmult_base(n->id.link_static_public, n->id.link_static_secret), 0);
    ns_node_info info;
    memset(&info, 0, sizeof info);
    ns_network_id(info.network_id, record_network);
    memcpy(info.link_static, n->id.link_static_public, 32);
    strcpy(info.version, NS_VERSION);
    assert_int_equal(
        ns_node_record_make(&n->key, &info, made_ms, TEST_TTL_MS, 1, &n->record, &n->record_len),
        NS_OK);
    n->id.key = &n->key;
    n->id.node_record = n->record;
    n->id.node_record_len = n->record_len;
    ns_network_id(n->id.network_id, hello_network);
}

static int nodes_setup(void **state)
{
    (void)state;
    node_make(&nodes[NODE_A], 0x11, NS_NETWORK_DEFAULT, NS_NETWORK_DEFAULT, TEST_NOW_MS);
    node_make(&nodes[NODE_B], 0x22, NS_NETWORK_DEFAULT, NS_NETWORK_DEFAULT, TEST_NOW_MS);
    node_make(&nodes[NODE_M], 0x33, NS_NETWORK_DEFAULT, NS_NETWORK_DEFAULT, TEST_NOW_MS);
    node_make(&nodes[NODE_OTHER], 0x44, "other-net", "other-net", TEST_NOW_MS);
    node_make(&nodes[NODE_LIAR], 0x55, NS_NETWORK_DEFAULT, "other-net", TEST_NOW_MS);
    node_make(&nodes[NODE_EXPIRED], 0x66, NS_NETWORK_DEFAULT, NS_NETWORK_DEFAULT,
              TEST_NOW_MS - 2 * TEST_TTL_MS);
    return 0;
}

static int nodes_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NODE_COUNT; i++)
        free(nodes[i].record);
    return 0;
}

/* ---- the pipe ----------------------------------------------------------------------------- */

typedef struct pending {
    uint8_t *buf;
    size_t len;
    size_t sent;
} pending;

typedef struct rx_frame {
    uint32_t type;
    uint8_t *body;
    size_t body_len;
    ns_wire_tensor tensor; /* data is a malloc'd copy */
} rx_frame;

typedef struct test_pair test_pair;

typedef struct test_end {
    test_pair *pair;
    struct test_end *other;
    const test_node *node;
    ns_link *link;
    pending out[TEST_PENDING_MAX]; /* FIFO of what write() handed over */
    size_t out_head, out_count;
    bool hold; /* keep what this end writes in the pipe: nothing delivered, nothing written */
    bool mute; /* drop what this end writes (it still counts as written) */
    bool free_on_close;
    bool free_on_frame;
    bool established;
    uint8_t peer_id[NS_ID_BYTES];
    int established_calls;
    bool closed;
    int close_reason;
    int closed_calls;
    int writable_calls;
    size_t outbound_at_writable;
    rx_frame rx[TEST_RX_FRAMES_MAX];
    size_t rx_count;
} test_end;

struct test_pair {
    ns_fake_env fake;
    uint64_t rng;
    test_end a, b; /* a is the initiator unless a test says otherwise */
};

static uint64_t pair_random(test_pair *p)
{
    p->rng ^= p->rng << 13;
    p->rng ^= p->rng >> 7;
    p->rng ^= p->rng << 17;
    return p->rng;
}

static void end_write(void *arg, uint8_t *buf, size_t len)
{
    test_end *e = arg;
    assert_true(e->out_count < TEST_PENDING_MAX);
    e->out[(e->out_head + e->out_count) % TEST_PENDING_MAX] = (pending){.buf = buf, .len = len};
    e->out_count++;
}

static void end_established(void *arg, const uint8_t peer_id[NS_ID_BYTES], const uint8_t *record,
                            size_t record_len)
{
    test_end *e = arg;
    e->established = true;
    e->established_calls++;
    memcpy(e->peer_id, peer_id, NS_ID_BYTES);
    ns_record r;
    assert_int_equal(ns_record_verify(record, record_len, e->pair->fake.now_ms, &r), NS_OK);
    assert_memory_equal(r.author, peer_id, NS_ID_BYTES);
}

static void end_frame(void *arg, const ns_frame *f)
{
    test_end *e = arg;
    assert_true(e->rx_count < TEST_RX_FRAMES_MAX);
    rx_frame *r = &e->rx[e->rx_count++];
    r->type = f->type;
    r->body_len = f->body_len;
    r->body = malloc(f->body_len + 1);
    assert_non_null(r->body);
    if (f->body_len > 0)
        memcpy(r->body, f->body, f->body_len);
    r->tensor = f->tensor;
    if (f->tensor.bytes > 0) {
        uint8_t *copy = malloc(f->tensor.bytes);
        assert_non_null(copy);
        memcpy(copy, f->tensor.data, f->tensor.bytes);
        r->tensor.data = copy;
    }
    if (e->free_on_frame) {
        ns_link_free(e->link);
        e->link = NULL;
    }
}

static void end_writable(void *arg)
{
    test_end *e = arg;
    e->writable_calls++;
    e->outbound_at_writable = ns_link_outbound_bytes(e->link);
}

static void end_closed(void *arg, int reason)
{
    test_end *e = arg;
    assert_false(e->closed); /* exactly once */
    e->closed = true;
    e->close_reason = reason;
    e->closed_calls++;
    if (e->free_on_close) {
        ns_link_free(e->link);
        e->link = NULL;
    }
}

static void end_init(test_pair *p, test_end *e, test_end *other, int node)
{
    memset(e, 0, sizeof *e);
    e->pair = p;
    e->other = other;
    e->node = &nodes[node];
}

static void end_start(test_end *e, ns_link_role role, const uint8_t *expected_peer)
{
    ns_link_callbacks cb = {.write = end_write,
                            .established = end_established,
                            .frame = end_frame,
                            .writable = end_writable,
                            .closed = end_closed,
                            .arg = e};
    assert_int_equal(
        ns_link_new(&e->link, role, &e->node->id, expected_peer, &e->pair->fake.env, &cb), NS_OK);
}

static test_pair *pair_new(int node_a, int node_b)
{
    test_pair *p = calloc(1, sizeof *p);
    assert_non_null(p);
    ns_fake_env_init(&p->fake, TEST_NOW_MS, TEST_SEED);
    p->rng = TEST_SEED;
    end_init(p, &p->a, &p->b, node_a);
    end_init(p, &p->b, &p->a, node_b);
    return p;
}

static void end_free(test_end *e)
{
    ns_link_free(e->link);
    e->link = NULL;
    for (size_t i = 0; i < e->out_count; i++)
        free(e->out[(e->out_head + i) % TEST_PENDING_MAX].buf);
    e->out_count = 0;
    for (size_t i = 0; i < e->rx_count; i++) {
        free(e->rx[i].body);
        free((void *)e->rx[i].tensor.data);
    }
    e->rx_count = 0;
}

static void pair_free(test_pair *p)
{
    end_free(&p->a);
    end_free(&p->b);
    assert_int_equal(p->fake.timer_count, 0); /* every link cancelled its timer */
    free(p);
}

/* Hands bytes to an end in random-sized chunks while it is open. */
static void deliver(test_end *to, const uint8_t *buf, size_t len)
{
    size_t at = 0;
    while (at < len && to->link != NULL && !to->closed) {
        size_t n = 1 + (size_t)(pair_random(to->pair) % (len - at));
        if (pair_random(to->pair) % 4 == 0)
            n = len - at; /* often the whole rest, so the zero-copy path runs too */
        (void)ns_link_on_bytes(to->link, buf + at, n);
        at += n;
    }
}

/* Removes the oldest buffer an end wrote, reports it written, and returns it (caller frees). */
static uint8_t *take(test_end *e, size_t *len)
{
    assert_true(e->out_count > 0);
    pending p = e->out[e->out_head];
    e->out_head = (e->out_head + 1) % TEST_PENDING_MAX;
    e->out_count--;
    if (e->link != NULL)
        ns_link_on_written(e->link, p.len);
    *len = p.len;
    return p.buf;
}

/* Moves one buffer from e to its other end; false when e has nothing to move. */
static bool pump_one(test_end *e)
{
    if (e->out_count == 0 || e->hold)
        return false;
    size_t len;
    uint8_t *buf = take(e, &len);
    if (!e->mute)
        deliver(e->other, buf, len);
    free(buf);
    return true;
}

/* Moves everything both ends write until the pipe is quiet. */
static void pump(test_pair *p)
{
    for (int steps = 0; steps < TEST_STEPS_MAX; steps++) {
        test_end *first = pair_random(p) % 2 == 0 ? &p->a : &p->b;
        if (!pump_one(first) && !pump_one(first->other))
            return;
    }
    fail_msg("the pipe never went quiet");
}

/* Advances the fake clock in one-second steps, pumping after each. */
static void run_for(test_pair *p, uint64_t ms)
{
    for (uint64_t t = 0; t < ms; t += 1000) {
        ns_fake_env_advance(&p->fake, 1000);
        pump(p);
    }
}

static test_pair *pair_connected(int node_a, int node_b)
{
    test_pair *p = pair_new(node_a, node_b);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, nodes[node_b].key.node_id);
    pump(p);
    assert_true(p->a.established);
    assert_true(p->b.established);
    return p;
}

static void fill(uint8_t *buf, size_t len, uint64_t seed)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        buf[i] = (uint8_t)(seed >> 56);
    }
}

/* An APP frame with a body and an f32 tensor of the given shape, data filled from seed; the
 * caller frees f->tensor.data. */
static ns_frame app_frame(const uint8_t *body, size_t body_len, const uint32_t *shape,
                          uint32_t ndim, uint64_t seed)
{
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = body_len};
    if (ndim == 0)
        return f;
    f.tensor.dtype = NS_DTYPE_F32;
    f.tensor.ndim = ndim;
    size_t bytes = 4;
    for (uint32_t i = 0; i < ndim; i++) {
        f.tensor.shape[i] = shape[i];
        bytes *= shape[i];
    }
    uint8_t *data = malloc(bytes);
    assert_non_null(data);
    fill(data, bytes, seed);
    f.tensor.data = data;
    f.tensor.bytes = bytes;
    return f;
}

static void assert_frame_equal(const rx_frame *got, const ns_frame *want)
{
    assert_int_equal(got->type, want->type);
    assert_int_equal(got->body_len, want->body_len);
    if (want->body_len > 0)
        assert_memory_equal(got->body, want->body, want->body_len);
    assert_int_equal(got->tensor.dtype, want->tensor.dtype);
    assert_int_equal(got->tensor.ndim, want->tensor.ndim);
    assert_int_equal(got->tensor.bytes, want->tensor.bytes);
    if (want->tensor.bytes > 0) {
        assert_memory_equal(got->tensor.shape, want->tensor.shape,
                            want->tensor.ndim * sizeof want->tensor.shape[0]);
        assert_memory_equal(got->tensor.data, want->tensor.data, want->tensor.bytes);
    }
}

static void assert_never_established(const test_pair *p)
{
    assert_false(p->a.established);
    assert_false(p->b.established);
    assert_null(p->a.link == NULL ? NULL : ns_link_peer_id(p->a.link));
    assert_null(p->b.link == NULL ? NULL : ns_link_peer_id(p->b.link));
}

/* Unwraps a handshake message taken off the pipe: the protobuf bytes after the u16 length. */
static const uint8_t *hs_body(const uint8_t *buf, size_t len, size_t *body_len)
{
    assert_true(len >= 2);
    *body_len = (size_t)buf[0] << 8 | buf[1];
    assert_int_equal(*body_len + 2, len);
    return buf + 2;
}

/* Packs msg behind its u16 length into a malloc'd buffer. */
static uint8_t *hs_wrap(const ProtobufCMessage *msg, size_t *len)
{
    size_t body_len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(body_len + 2);
    assert_non_null(buf);
    buf[0] = (uint8_t)(body_len >> 8);
    buf[1] = (uint8_t)body_len;
    assert_int_equal(protobuf_c_message_pack(msg, buf + 2), body_len);
    *len = body_len + 2;
    return buf;
}

/* ---- the handshake ------------------------------------------------------------------------ */

static void test_link_handshake_establishes_both_with_the_right_peer_ids(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    assert_memory_equal(p->a.peer_id, nodes[NODE_B].key.node_id, NS_ID_BYTES);
    assert_memory_equal(p->b.peer_id, nodes[NODE_A].key.node_id, NS_ID_BYTES);
    assert_int_equal(p->a.established_calls, 1);
    assert_int_equal(p->b.established_calls, 1);
    assert_memory_equal(ns_link_peer_id(p->a.link), nodes[NODE_B].key.node_id, NS_ID_BYTES);
    assert_memory_equal(ns_link_peer_id(p->b.link), nodes[NODE_A].key.node_id, NS_ID_BYTES);
    assert_true(ns_link_established(p->a.link));
    assert_true(ns_link_established(p->b.link));
    /* Both ends hold the same keys, crossed, and no secret of the handshake is left. */
    assert_memory_equal(p->a.link->tx.key, p->b.link->rx.key, LINK_KEY_BYTES);
    assert_memory_equal(p->a.link->rx.key, p->b.link->tx.key, LINK_KEY_BYTES);
    assert_memory_not_equal(p->a.link->tx.key, p->a.link->rx.key, LINK_KEY_BYTES);
    static const uint8_t zero[LINK_X25519_BYTES] = {0};
    assert_memory_equal(p->a.link->eph_secret, zero, sizeof zero);
    assert_memory_equal(p->b.link->eph_secret, zero, sizeof zero);
    ns_link_stats sa, sb;
    ns_link_get_stats(p->a.link, &sa);
    ns_link_get_stats(p->b.link, &sb);
    assert_int_equal(sa.bytes_sent, sb.bytes_received);
    assert_int_equal(sb.bytes_sent, sa.bytes_received);
    assert_int_equal(ns_link_outbound_bytes(p->a.link), 0);
    assert_false(p->a.closed);
    assert_false(p->b.closed);
    pair_free(p);
}

static void test_link_hello_matches_the_documented_bytes(void **state)
{
    (void)state;
    /* docs/protocol.md, part 1, section 4.1: 00 46 | 08 01 | 12 20 network_id | 1a 20 E_i. */
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    size_t len;
    uint8_t *m1 = take(&p->a, &len);
    assert_int_equal(len, 72);
    static const uint8_t head[] = {0x00, 0x46, 0x08, 0x01, 0x12, 0x20};
    assert_memory_equal(m1, head, sizeof head);
    assert_memory_equal(m1 + 6, nodes[NODE_A].id.network_id, 32);
    assert_int_equal(m1[38], 0x1a);
    assert_int_equal(m1[39], 0x20);
    assert_memory_equal(m1 + 40, p->a.link->eph_public, 32);
    free(m1);
    pair_free(p);
}

static void sha256_parts(uint8_t out[32], const void *a, size_t a_len, const void *b, size_t b_len,
                         const void *c, size_t c_len, const void *d, size_t d_len)
{
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, a, a_len);
    crypto_hash_sha256_update(&st, b, b_len);
    crypto_hash_sha256_update(&st, c, c_len);
    crypto_hash_sha256_update(&st, d, d_len);
    crypto_hash_sha256_final(&st, out);
}

static void test_link_keys_and_records_follow_the_documented_schedule(void **state)
{
    (void)state;
    /* docs/protocol.md, part 1, sections 4.2 to 5, computed here without link.c. */
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    uint8_t e_i[32];
    memcpy(e_i, p->a.link->eph_secret, 32);
    size_t m1_len, m2_len, m3_len, len;
    uint8_t *m1 = take(&p->a, &m1_len);
    deliver(&p->b, m1, m1_len);
    uint8_t *m2 = take(&p->b, &m2_len);
    deliver(&p->a, m2, m2_len);
    uint8_t *m3 = take(&p->a, &m3_len);
    deliver(&p->b, m3, m3_len);
    assert_true(p->b.established);
    Neuroshard__LinkHelloReply *reply =
        neuroshard__link_hello_reply__unpack(NULL, m2_len - 2, m2 + 2);
    assert_non_null(reply);
    const test_node *a = &nodes[NODE_A], *b = &nodes[NODE_B];
    uint8_t n[32], t2[32], t3[32], digest[32];
    sha256_parts(n, "neuroshard/link/v1", 18, a->id.network_id, 32, "", 0, "", 0);
    sha256_parts(t2, n, 32, m1 + 2, m1_len - 2, reply->ephemeral.data, 32, b->record,
                 b->record_len);
    sha256_parts(digest, "neuroshard/link/r/v1", 20, t2, 32, "", 0, "", 0);
    assert_int_equal(ns_verify_digest(b->key.pubkey, digest, reply->signature.data), NS_OK);
    sha256_parts(t3, t2, 32, reply->signature.data, 64, a->record, a->record_len, "", 0);
    uint8_t dh[96], k[64];
    assert_int_equal(crypto_scalarmult(dh, e_i, reply->ephemeral.data), 0);
    assert_int_equal(crypto_scalarmult(dh + 32, e_i, b->id.link_static_public), 0);
    assert_int_equal(crypto_scalarmult(dh + 64, a->id.link_static_secret, reply->ephemeral.data),
                     0);
    crypto_generichash(k, 64, dh, sizeof dh, t3, 32);
    assert_memory_equal(p->a.link->tx.key, k, 32);
    assert_memory_equal(p->a.link->rx.key, k + 32, 32);
    neuroshard__link_hello_reply__free_unpacked(reply, NULL);

    /* One record, opened by hand: u32be(L) | ciphertext | tag, nonce 0, ad = the length. */
    static const uint8_t body[] = "by hand";
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = sizeof body};
    uint8_t want[64], nonce[12] = {0}, got[64];
    size_t want_len;
    assert_int_equal(ns_frame_encode(&f, want, sizeof want, &want_len), NS_OK);
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    uint8_t *rec = take(&p->a, &len);
    assert_int_equal(len, 4 + want_len + 16);
    assert_int_equal((size_t)rec[0] << 24 | rec[1] << 16 | rec[2] << 8 | rec[3], want_len + 16);
    assert_int_equal(crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                         got, NULL, rec + 4, want_len, rec + 4 + want_len, rec, 4, nonce, k),
                     0);
    assert_memory_equal(got, want, want_len);
    free(rec);

    /* After NS_LINK_REKEY_FRAMES records: key' = BLAKE2b-256(key = key, msg = domain). */
    for (int i = 1; i < NS_LINK_REKEY_FRAMES; i++) {
        assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
        free(take(&p->a, &len));
    }
    uint8_t next[32];
    crypto_generichash(next, 32, (const uint8_t *)"neuroshard/link/rekey/v1", 24, k, 32);
    assert_memory_equal(p->a.link->tx.key, next, 32);
    free(m1);
    free(m2);
    free(m3);
    pair_free(p);
}

static void test_link_peer_id_is_null_before_the_handshake(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    assert_null(ns_link_peer_id(p->a.link));
    assert_null(ns_link_peer_id(p->b.link));
    assert_false(ns_link_established(p->a.link));
    ns_frame f = {.type = NS_FRAME_APP};
    assert_int_equal(ns_link_send(p->a.link, &f), NS_EINVAL);
    pump(p);
    assert_true(p->a.established);
    pair_free(p);
}

static void test_link_mitm_substituting_initiator_ephemeral_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    size_t len, body_len;
    uint8_t *m1 = take(&p->a, &len);
    const uint8_t *body = hs_body(m1, len, &body_len);
    Neuroshard__LinkHello *hello = neuroshard__link_hello__unpack(NULL, body_len, body);
    assert_non_null(hello);
    uint8_t mallory_secret[32], mallory_public[32];
    memset(mallory_secret, 0x99, sizeof mallory_secret);
    assert_int_equal(crypto_scalarmult_base(mallory_public, mallory_secret), 0);
    memcpy(hello->ephemeral.data, mallory_public, 32);
    size_t forged_len;
    uint8_t *forged = hs_wrap(&hello->base, &forged_len);
    neuroshard__link_hello__free_unpacked(hello, NULL);
    deliver(&p->b, forged, forged_len);
    pump(p);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_EBADSIG);
    assert_never_established(p);
    free(m1);
    free(forged);
    pair_free(p);
}

static void test_link_mitm_substituting_responder_ephemeral_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump_one(&p->a);
    size_t len, body_len;
    uint8_t *m2 = take(&p->b, &len);
    const uint8_t *body = hs_body(m2, len, &body_len);
    Neuroshard__LinkHelloReply *reply = neuroshard__link_hello_reply__unpack(NULL, body_len, body);
    assert_non_null(reply);
    reply->ephemeral.data[5] ^= 0x40;
    size_t forged_len;
    uint8_t *forged = hs_wrap(&reply->base, &forged_len);
    neuroshard__link_hello_reply__free_unpacked(reply, NULL);
    deliver(&p->a, forged, forged_len);
    pump(p);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_EBADSIG);
    assert_never_established(p);
    free(forged);
    free(m2);
    pair_free(p);
}

static void test_link_mitm_substituting_responder_record_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump_one(&p->a);
    size_t len, body_len;
    uint8_t *m2 = take(&p->b, &len);
    const uint8_t *body = hs_body(m2, len, &body_len);
    Neuroshard__LinkHelloReply *reply = neuroshard__link_hello_reply__unpack(NULL, body_len, body);
    assert_non_null(reply);
    /* Mallory's own valid record in place of B's, B's ephemeral and signature kept. */
    uint8_t *original = reply->node_record.data;
    reply->node_record.data = nodes[NODE_M].record;
    reply->node_record.len = nodes[NODE_M].record_len;
    size_t forged_len;
    uint8_t *forged = hs_wrap(&reply->base, &forged_len);
    reply->node_record.data = original;
    neuroshard__link_hello_reply__free_unpacked(reply, NULL);
    deliver(&p->a, forged, forged_len);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_EBADSIG);
    assert_never_established(p);
    free(forged);
    free(m2);
    pair_free(p);
}

static void test_link_mitm_substituting_initiator_record_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump_one(&p->a); /* LinkHello */
    pump_one(&p->b); /* LinkHelloReply: the initiator is now established */
    assert_true(p->a.established);
    size_t len, body_len;
    uint8_t *m3 = take(&p->a, &len);
    const uint8_t *body = hs_body(m3, len, &body_len);
    Neuroshard__LinkFinish *finish = neuroshard__link_finish__unpack(NULL, body_len, body);
    assert_non_null(finish);
    uint8_t *original = finish->node_record.data;
    finish->node_record.data = nodes[NODE_M].record;
    finish->node_record.len = nodes[NODE_M].record_len;
    size_t forged_len;
    uint8_t *forged = hs_wrap(&finish->base, &forged_len);
    finish->node_record.data = original;
    neuroshard__link_finish__free_unpacked(finish, NULL);
    deliver(&p->b, forged, forged_len);
    assert_true(p->b.closed);
    assert_int_equal(p->b.close_reason, NS_EBADSIG);
    assert_false(p->b.established);
    free(forged);
    free(m3);
    pair_free(p);
}

static void test_link_expected_peer_mismatch_closes_with_eauthor(void **state)
{
    (void)state;
    /* Mallory answers as herself where the dialer meant to reach B. */
    test_pair *p = pair_new(NODE_A, NODE_M);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, nodes[NODE_B].key.node_id);
    pump(p);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_EAUTHOR);
    assert_never_established(p);
    pair_free(p);
}

static void test_link_replayed_handshake_fails_at_a_new_responder(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    size_t m1_len, m2_len, m3_len;
    uint8_t *m1 = take(&p->a, &m1_len);
    deliver(&p->b, m1, m1_len);
    uint8_t *m2 = take(&p->b, &m2_len);
    deliver(&p->a, m2, m2_len);
    uint8_t *m3 = take(&p->a, &m3_len);
    deliver(&p->b, m3, m3_len);
    assert_true(p->a.established);
    assert_true(p->b.established);

    /* The same bytes, played to a fresh responder of the same node. */
    test_pair *q = pair_new(NODE_A, NODE_B);
    q->fake.rng_state = 0xfeed; /* its ephemeral differs, as a real one would */
    end_start(&q->b, NS_LINK_RESPONDER, NULL);
    deliver(&q->b, m1, m1_len);
    assert_int_equal(q->b.out_count, 1); /* a LinkHelloReply with a fresh e_r */
    deliver(&q->b, m3, m3_len);
    assert_true(q->b.closed);
    assert_int_equal(q->b.close_reason, NS_EBADSIG);
    assert_false(q->b.established);

    /* And the reply, played to a fresh initiator. */
    test_pair *r = pair_new(NODE_A, NODE_B);
    r->fake.rng_state = 0xbeef;
    end_start(&r->a, NS_LINK_INITIATOR, NULL);
    deliver(&r->a, m2, m2_len);
    assert_true(r->a.closed);
    assert_int_equal(r->a.close_reason, NS_EBADSIG);
    assert_false(r->a.established);
    free(m1);
    free(m2);
    free(m3);
    pair_free(p);
    pair_free(q);
    pair_free(r);
}

static void test_link_other_network_in_hello_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_OTHER, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump(p);
    assert_true(p->b.closed);
    assert_int_equal(p->b.close_reason, NS_EPERM);
    assert_never_established(p);
    pair_free(p);
}

static void test_link_other_network_in_record_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_LIAR, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump(p);
    assert_true(p->b.closed);
    assert_int_equal(p->b.close_reason, NS_EPERM);
    assert_false(p->b.established);
    test_pair *q = pair_new(NODE_A, NODE_LIAR);
    end_start(&q->b, NS_LINK_RESPONDER, NULL);
    end_start(&q->a, NS_LINK_INITIATOR, NULL);
    pump(q);
    assert_true(q->a.closed);
    assert_int_equal(q->a.close_reason, NS_EPERM);
    assert_never_established(q);
    pair_free(p);
    pair_free(q);
}

static void test_link_expired_peer_record_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_EXPIRED);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump(p);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_EEXPIRED);
    assert_never_established(p);
    pair_free(p);
}

static void test_link_other_version_fails(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    uint8_t e[32] = {9};
    Neuroshard__LinkHello hello = NEUROSHARD__LINK_HELLO__INIT;
    hello.version = NS_LINK_VERSION + 1;
    hello.network_id.data = nodes[NODE_B].id.network_id;
    hello.network_id.len = 32;
    hello.ephemeral.data = e;
    hello.ephemeral.len = sizeof e;
    size_t len;
    uint8_t *m1 = hs_wrap(&hello.base, &len);
    deliver(&p->b, m1, len);
    assert_true(p->b.closed);
    assert_int_equal(p->b.close_reason, NS_EFOREIGN);
    assert_int_equal(p->b.out_count, 0);
    free(m1);
    pair_free(p);
}

static void test_link_malformed_or_oversize_handshake_message_closes(void **state)
{
    (void)state;
    static const uint8_t garbage[] = {0x00, 0x03, 0xff, 0xff, 0xff};
    static const uint8_t empty[] = {0x00, 0x00};
    static const uint8_t oversize[] = {(NS_LINK_HANDSHAKE_BYTES_MAX + 1) >> 8,
                                       (NS_LINK_HANDSHAKE_BYTES_MAX + 1) & 0xff};
    static const uint8_t versionless[] = {0x00, 0x02, 0x78, 0x01}; /* only an unknown field */
    struct {
        const uint8_t *bytes;
        size_t len;
        int reason;
    } cases[] = {{garbage, sizeof garbage, NS_EPARSE},
                 {empty, sizeof empty, NS_EPARSE},
                 {oversize, sizeof oversize, NS_ETOOBIG},
                 {versionless, sizeof versionless, NS_EFOREIGN}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_pair *p = pair_new(NODE_A, NODE_B);
        end_start(&p->b, NS_LINK_RESPONDER, NULL);
        assert_int_equal(ns_link_on_bytes(p->b.link, cases[i].bytes, cases[i].len),
                         cases[i].reason);
        assert_true(p->b.closed);
        assert_int_equal(p->b.close_reason, cases[i].reason);
        assert_int_equal(ns_link_on_bytes(p->b.link, cases[i].bytes, cases[i].len), NS_EINVAL);
        pair_free(p);
    }
}

static void test_link_handshake_that_never_finishes_times_out(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    pump_one(&p->a); /* the responder gets LinkHello and answers; the answer is never delivered */
    p->b.hold = true;
    ns_fake_env_advance(&p->fake, NS_LINK_HANDSHAKE_TIMEOUT_MS - 1);
    assert_false(p->a.closed);
    assert_false(p->b.closed);
    ns_fake_env_advance(&p->fake, 1);
    assert_true(p->a.closed);
    assert_true(p->b.closed);
    assert_int_equal(p->a.close_reason, NS_ELIMIT);
    assert_int_equal(p->b.close_reason, NS_ELIMIT);
    assert_never_established(p);
    p->b.hold = false;
    pair_free(p);
}

/* ---- frames ------------------------------------------------------------------------------- */

static void test_link_frames_with_tensors_arrive_intact_both_ways(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    uint8_t body[300];
    for (int i = 0; i < 40; i++) {
        test_end *from = i % 2 == 0 ? &p->a : &p->b;
        test_end *to = from->other;
        uint32_t shape[4];
        uint32_t ndim = (uint32_t)(pair_random(p) % 5);
        for (uint32_t d = 0; d < ndim; d++)
            shape[d] = 1 + (uint32_t)(pair_random(p) % 9);
        size_t body_len = (size_t)(pair_random(p) % sizeof body);
        fill(body, body_len, (uint64_t)i);
        ns_frame f = app_frame(body, body_len, shape, ndim, (uint64_t)i + 100);
        f.type = NS_FRAME_APP + (uint32_t)i;
        assert_int_equal(ns_link_send(from->link, &f), NS_OK);
        pump(p);
        assert_true(to->rx_count > 0);
        assert_frame_equal(&to->rx[to->rx_count - 1], &f);
        free((void *)f.tensor.data);
    }
    assert_int_equal(p->a.rx_count, 20);
    assert_int_equal(p->b.rx_count, 20);
    assert_false(p->a.closed);
    assert_false(p->b.closed);
    pair_free(p);
}

static void test_link_large_tensor_arrives_intact_in_random_chunks(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    const uint32_t shape[] = {256, 1024}; /* 1 MiB of f32: over the outbound limit, sent alone */
    static const uint8_t body[] = "layer 7 activations";
    ns_frame f = app_frame(body, sizeof body, shape, 2, 7);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
        assert_int_equal(ns_link_send(p->a.link, &f), NS_ELIMIT);
        pump(p);
        assert_int_equal(p->b.rx_count, (size_t)i + 1);
        assert_frame_equal(&p->b.rx[i], &f);
        assert_null(p->b.link->rx_heap); /* the big buffer went once the frame was handled */
    }
    free((void *)f.tensor.data);
    pair_free(p);
}

static void test_link_several_records_in_one_read_all_arrive(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    static const uint8_t body[] = "x";
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = 1};
    for (int i = 0; i < 5; i++)
        assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    uint8_t all[1024];
    size_t all_len = 0;
    while (p->a.out_count > 0) {
        size_t len;
        uint8_t *buf = take(&p->a, &len);
        memcpy(all + all_len, buf, len);
        all_len += len;
        free(buf);
    }
    assert_int_equal(ns_link_on_bytes(p->b.link, all, all_len), NS_OK);
    assert_int_equal(p->b.rx_count, 5);
    pair_free(p);
}

static void test_link_tampered_byte_anywhere_in_a_record_closes_the_link(void **state)
{
    (void)state;
    static const uint8_t body[] = "tamper";
    const uint32_t shape[] = {3};
    size_t record_len = 0;
    for (size_t pos = 0; pos == 0 || pos < record_len; pos++) {
        test_pair *p = pair_connected(NODE_A, NODE_B);
        ns_frame f = app_frame(body, sizeof body, shape, 1, pos);
        assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
        free((void *)f.tensor.data);
        uint8_t *rec = take(&p->a, &record_len);
        rec[pos] ^= 0x80;
        deliver(&p->b, rec, record_len);
        /* A length made larger waits for more bytes: give it zeros until it decides. */
        static const uint8_t zeros[64 * 1024];
        for (size_t fed = 0; !p->b.closed && fed <= LINK_RECORD_MAX; fed += sizeof zeros)
            (void)ns_link_on_bytes(p->b.link, zeros, sizeof zeros);
        assert_true(p->b.closed);
        assert_true(p->b.close_reason == NS_ECRYPTO || p->b.close_reason == NS_ETOOBIG);
        assert_int_equal(p->b.rx_count, 0);
        free(rec);
        pair_free(p);
    }
    assert_true(record_len > 40);
}

static void test_link_oversize_record_length_closes_without_allocating(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    uint8_t prefix[4];
    store_be32(prefix, (uint32_t)(LINK_RECORD_MAX + 1));
    assert_int_equal(ns_link_on_bytes(p->b.link, prefix, 3), NS_OK);
    assert_int_equal(ns_link_on_bytes(p->b.link, prefix + 3, 1), NS_ETOOBIG);
    assert_true(p->b.closed);
    assert_int_equal(p->b.close_reason, NS_ETOOBIG);
    assert_null(p->b.link->rx_heap);
    assert_null(p->b.link->rx_body);
    /* The largest allowed length is only buffered for, not refused. */
    test_pair *q = pair_connected(NODE_A, NODE_B);
    store_be32(prefix, (uint32_t)LINK_RECORD_MAX);
    assert_int_equal(ns_link_on_bytes(q->b.link, prefix, 4), NS_OK);
    assert_false(q->b.closed);
    assert_null(q->b.link->rx_heap); /* nothing allocated until a partial body arrives */
    /* And one below the smallest record is malformed. */
    test_pair *r = pair_connected(NODE_A, NODE_B);
    store_be32(prefix, LINK_RECORD_MIN - 1);
    assert_int_equal(ns_link_on_bytes(r->b.link, prefix, 4), NS_EPARSE);
    pair_free(p);
    pair_free(q);
    pair_free(r);
}

static void test_link_refuses_frames_that_are_the_links_own(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    uint8_t nonce[8] = {0};
    ns_frame f = {.type = NS_FRAME_PING, .body = nonce, .body_len = sizeof nonce};
    assert_int_equal(ns_link_send(p->a.link, &f), NS_EINVAL);
    f.type = NS_FRAME_PONG;
    assert_int_equal(ns_link_send(p->a.link, &f), NS_EINVAL);
    f.type = NS_FRAME_CLOSE;
    assert_int_equal(ns_link_send(p->a.link, &f), NS_EINVAL);
    f.type = 0;
    assert_int_equal(ns_link_send(p->a.link, &f), NS_EINVAL);
    assert_int_equal(p->a.out_count, 0);
    pair_free(p);
}

/* ---- rekeying ----------------------------------------------------------------------------- */

static void send_small(test_pair *p, test_end *from, int n)
{
    static const uint8_t body[] = "tick";
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = sizeof body};
    for (int i = 0; i < n; i++) {
        assert_int_equal(ns_link_send(from->link, &f), NS_OK);
        pump(p);
    }
}

static void test_link_rekeys_at_the_frame_threshold_on_both_sides(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    uint8_t first_key[LINK_KEY_BYTES];
    memcpy(first_key, p->a.link->tx.key, sizeof first_key);
    send_small(p, &p->a, NS_LINK_REKEY_FRAMES - 1);
    ns_link_stats sa, sb;
    ns_link_get_stats(p->a.link, &sa);
    assert_int_equal(sa.rekeys, 0);
    assert_memory_equal(p->a.link->tx.key, first_key, sizeof first_key);
    send_small(p, &p->a, 1);
    ns_link_get_stats(p->a.link, &sa);
    ns_link_get_stats(p->b.link, &sb);
    assert_int_equal(sa.rekeys, 1);
    assert_int_equal(sb.rekeys, 1);
    assert_int_equal(p->a.link->tx.counter, 0);
    assert_memory_not_equal(p->a.link->tx.key, first_key, sizeof first_key);
    assert_memory_equal(p->a.link->tx.key, p->b.link->rx.key, LINK_KEY_BYTES);
    /* Traffic goes on, both ways, through several more rekeys. */
    for (int round = 0; round < 3; round++) {
        send_small(p, &p->a, NS_LINK_REKEY_FRAMES);
        send_small(p, &p->b, NS_LINK_REKEY_FRAMES);
    }
    ns_link_get_stats(p->a.link, &sa);
    ns_link_get_stats(p->b.link, &sb);
    assert_int_equal(sa.rekeys, 4 + 3);
    assert_int_equal(sb.rekeys, 4 + 3);
    assert_int_equal(p->b.rx_count, (size_t)4 * NS_LINK_REKEY_FRAMES);
    assert_int_equal(p->a.rx_count, (size_t)3 * NS_LINK_REKEY_FRAMES);
    assert_memory_equal(p->b.link->tx.key, p->a.link->rx.key, LINK_KEY_BYTES);
    assert_false(p->a.closed);
    assert_false(p->b.closed);
    pair_free(p);
}

static void test_link_rekeys_at_the_byte_threshold(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    const uint32_t shape[] = {NS_LINK_REKEY_BYTES / 4 / 2}; /* half the threshold */
    ns_frame f = app_frame(NULL, 0, shape, 1, 3);
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    pump(p);
    ns_link_stats sa;
    ns_link_get_stats(p->a.link, &sa);
    assert_int_equal(sa.rekeys, 0);
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    pump(p);
    ns_link_get_stats(p->a.link, &sa);
    assert_int_equal(sa.rekeys, 1);
    assert_int_equal(p->a.link->tx.bytes, 0);
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    pump(p);
    assert_int_equal(p->b.rx_count, 3);
    assert_frame_equal(&p->b.rx[2], &f);
    free((void *)f.tensor.data);
    pair_free(p);
}

/* ---- keep-alive and idle ------------------------------------------------------------------ */

static void test_link_keepalive_keeps_an_idle_link_open(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    run_for(p, 5 * NS_LINK_IDLE_TIMEOUT_MS);
    assert_false(p->a.closed);
    assert_false(p->b.closed);
    ns_link_stats sa, sb;
    ns_link_get_stats(p->a.link, &sa);
    ns_link_get_stats(p->b.link, &sb);
    /* PINGs and PONGs went both ways and none reached the owner. */
    uint64_t pings_max = 5 * NS_LINK_IDLE_TIMEOUT_MS / NS_LINK_KEEPALIVE_MS;
    assert_true(sa.frames_sent >= pings_max / 2);
    assert_true(sb.frames_sent >= pings_max / 2);
    assert_true(sa.frames_sent <= 2 * pings_max);
    assert_int_equal(p->a.rx_count, 0);
    assert_int_equal(p->b.rx_count, 0);
    pair_free(p);
}

static void test_link_silent_peer_is_closed_after_the_idle_timeout(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    p->b.mute = true; /* B hears everything and says nothing */
    uint64_t start_ms = p->fake.now_ms;
    run_for(p, NS_LINK_IDLE_TIMEOUT_MS - 1000);
    assert_false(p->a.closed);
    run_for(p, 1000);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_ELIMIT);
    assert_int_equal(p->fake.now_ms - start_ms, NS_LINK_IDLE_TIMEOUT_MS);
    assert_false(p->b.closed); /* B still hears A's PINGs */
    pair_free(p);
}

static void test_link_keepalive_waits_while_traffic_flows(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    static const uint8_t body[] = "busy";
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = sizeof body};
    for (int i = 0; i < 60; i++) {
        assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
        assert_int_equal(ns_link_send(p->b.link, &f), NS_OK);
        run_for(p, 1000);
    }
    ns_link_stats sa;
    ns_link_get_stats(p->a.link, &sa);
    assert_int_equal(sa.frames_sent, 60); /* no PING was needed */
    assert_int_equal(p->a.rx_count, 60);
    pair_free(p);
}

/* ---- back-pressure ------------------------------------------------------------------------ */

static void test_link_back_pressure_refuses_then_signals_writable(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    p->a.hold = true;
    const uint32_t shape[] = {4096}; /* 16 KiB */
    ns_frame f = app_frame(NULL, 0, shape, 1, 11);
    int sent = 0;
    while (ns_link_send(p->a.link, &f) == NS_OK)
        sent++;
    assert_int_equal(ns_link_send(p->a.link, &f), NS_ELIMIT);
    assert_true(sent >= 14);
    assert_true(ns_link_outbound_bytes(p->a.link) <= NS_LINK_OUTBOUND_BYTES_MAX);
    assert_int_equal(p->a.writable_calls, 0);
    /* The transport drains one buffer at a time; writable() comes once, just below half. */
    p->a.hold = false;
    int drained = 0;
    while (p->a.writable_calls == 0) {
        assert_true(ns_link_outbound_bytes(p->a.link) >= NS_LINK_OUTBOUND_BYTES_MAX / 2);
        assert_true(pump_one(&p->a));
        drained++;
    }
    assert_true(p->a.outbound_at_writable < NS_LINK_OUTBOUND_BYTES_MAX / 2);
    assert_true(drained < sent);
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    pump(p);
    assert_int_equal(p->a.writable_calls, 1);
    assert_int_equal(p->b.rx_count, (size_t)sent + 1);
    assert_frame_equal(&p->b.rx[sent], &f);
    free((void *)f.tensor.data);
    pair_free(p);
}

/* ---- closing ------------------------------------------------------------------------------ */

static void close_cleanly(test_end *closer)
{
    test_pair *p = closer->pair;
    ns_link_close(closer->link);
    assert_false(closer->closed); /* not before the CLOSE is written */
    ns_frame f = {.type = NS_FRAME_APP};
    assert_int_equal(ns_link_send(closer->link, &f), NS_EINVAL);
    ns_link_close(closer->link); /* a second close changes nothing */
    pump(p);
    assert_true(p->a.closed);
    assert_true(p->b.closed);
    assert_int_equal(p->a.close_reason, NS_OK);
    assert_int_equal(p->b.close_reason, NS_OK);
    assert_int_equal(p->a.closed_calls, 1);
    assert_int_equal(p->b.closed_calls, 1);
    assert_int_equal(p->fake.timer_count, 0);
}

static void test_link_clean_close_by_initiator(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    close_cleanly(&p->a);
    pair_free(p);
}

static void test_link_clean_close_by_responder(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    close_cleanly(&p->b);
    pair_free(p);
}

static void test_link_close_that_is_never_written_times_out(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    p->a.hold = true;
    ns_link_close(p->a.link);
    ns_fake_env_advance(&p->fake, NS_LINK_CLOSE_TIMEOUT_MS);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_ELIMIT);
    p->a.hold = false;
    pump(p); /* the transport may still report the CLOSE written after closed() */
    pair_free(p);
}

static void test_link_close_before_the_handshake_is_immediate(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->a, NS_LINK_INITIATOR, NULL);
    ns_link_close(p->a.link);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_OK);
    assert_int_equal(p->fake.timer_count, 0);
    pair_free(p);
}

static void test_link_transport_closed_reports_its_reason(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    ns_link_on_transport_closed(p->a.link, NS_EIO);
    assert_true(p->a.closed);
    assert_int_equal(p->a.close_reason, NS_EIO);
    ns_link_on_transport_closed(p->a.link, NS_EIO); /* no second closed() */
    assert_int_equal(p->a.closed_calls, 1);
    ns_frame f = {.type = NS_FRAME_APP};
    assert_int_equal(ns_link_send(p->a.link, &f), NS_EINVAL);
    pair_free(p);
}

static void test_link_closed_callback_may_free_the_link(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    p->a.free_on_close = true;
    p->b.free_on_close = true;
    ns_link_close(p->a.link);
    pump(p);
    assert_true(p->a.closed);
    assert_true(p->b.closed);
    assert_null(p->a.link);
    assert_null(p->b.link);
    assert_int_equal(p->fake.timer_count, 0);
    pair_free(p);
}

static void test_link_frame_callback_may_free_the_link(void **state)
{
    (void)state;
    test_pair *p = pair_connected(NODE_A, NODE_B);
    p->b.free_on_frame = true;
    static const uint8_t body[] = "last words";
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = sizeof body};
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    assert_int_equal(ns_link_send(p->a.link, &f), NS_OK);
    uint8_t both[256];
    size_t len1, len2;
    uint8_t *r1 = take(&p->a, &len1);
    uint8_t *r2 = take(&p->a, &len2);
    assert_true(len1 + len2 <= sizeof both);
    memcpy(both, r1, len1);
    memcpy(both + len1, r2, len2);
    /* One read holds both records; the owner frees the link inside the first frame(). */
    assert_int_equal(ns_link_on_bytes(p->b.link, both, len1 + len2), NS_OK);
    assert_null(p->b.link);
    assert_int_equal(p->b.rx_count, 1);
    assert_false(p->b.closed);
    free(r1);
    free(r2);
    pair_free(p);
}

static void test_link_idle_responder_without_a_hello_times_out(void **state)
{
    (void)state;
    test_pair *p = pair_new(NODE_A, NODE_B);
    end_start(&p->b, NS_LINK_RESPONDER, NULL);
    uint8_t half[1] = {0x00};
    assert_int_equal(ns_link_on_bytes(p->b.link, half, 1), NS_OK); /* a length, half of it */
    ns_fake_env_advance(&p->fake, NS_LINK_HANDSHAKE_TIMEOUT_MS);
    assert_true(p->b.closed);
    assert_int_equal(p->b.close_reason, NS_ELIMIT);
    pair_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_link_handshake_establishes_both_with_the_right_peer_ids),
        cmocka_unit_test(test_link_hello_matches_the_documented_bytes),
        cmocka_unit_test(test_link_keys_and_records_follow_the_documented_schedule),
        cmocka_unit_test(test_link_peer_id_is_null_before_the_handshake),
        cmocka_unit_test(test_link_mitm_substituting_initiator_ephemeral_fails),
        cmocka_unit_test(test_link_mitm_substituting_responder_ephemeral_fails),
        cmocka_unit_test(test_link_mitm_substituting_responder_record_fails),
        cmocka_unit_test(test_link_mitm_substituting_initiator_record_fails),
        cmocka_unit_test(test_link_expected_peer_mismatch_closes_with_eauthor),
        cmocka_unit_test(test_link_replayed_handshake_fails_at_a_new_responder),
        cmocka_unit_test(test_link_other_network_in_hello_fails),
        cmocka_unit_test(test_link_other_network_in_record_fails),
        cmocka_unit_test(test_link_expired_peer_record_fails),
        cmocka_unit_test(test_link_other_version_fails),
        cmocka_unit_test(test_link_malformed_or_oversize_handshake_message_closes),
        cmocka_unit_test(test_link_handshake_that_never_finishes_times_out),
        cmocka_unit_test(test_link_idle_responder_without_a_hello_times_out),
        cmocka_unit_test(test_link_frames_with_tensors_arrive_intact_both_ways),
        cmocka_unit_test(test_link_large_tensor_arrives_intact_in_random_chunks),
        cmocka_unit_test(test_link_several_records_in_one_read_all_arrive),
        cmocka_unit_test(test_link_tampered_byte_anywhere_in_a_record_closes_the_link),
        cmocka_unit_test(test_link_oversize_record_length_closes_without_allocating),
        cmocka_unit_test(test_link_refuses_frames_that_are_the_links_own),
        cmocka_unit_test(test_link_rekeys_at_the_frame_threshold_on_both_sides),
        cmocka_unit_test(test_link_rekeys_at_the_byte_threshold),
        cmocka_unit_test(test_link_keepalive_keeps_an_idle_link_open),
        cmocka_unit_test(test_link_silent_peer_is_closed_after_the_idle_timeout),
        cmocka_unit_test(test_link_keepalive_waits_while_traffic_flows),
        cmocka_unit_test(test_link_back_pressure_refuses_then_signals_writable),
        cmocka_unit_test(test_link_clean_close_by_initiator),
        cmocka_unit_test(test_link_clean_close_by_responder),
        cmocka_unit_test(test_link_close_that_is_never_written_times_out),
        cmocka_unit_test(test_link_close_before_the_handshake_is_immediate),
        cmocka_unit_test(test_link_transport_closed_reports_its_reason),
        cmocka_unit_test(test_link_closed_callback_may_free_the_link),
        cmocka_unit_test(test_link_frame_callback_may_free_the_link),
    };
    return cmocka_run_group_tests(tests, nodes_setup, nodes_teardown);
}
