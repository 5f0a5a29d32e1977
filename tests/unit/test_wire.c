/*
 * test_wire.c: the frame codec (src/wire/frame.c) and node records (src/wire/node_record.c).
 *
 * Frames are checked both ways: what ns_frame_encode writes decodes to the same frame with views
 * into the buffer, and ns_frame_decode refuses every truncation, every length that lies, every
 * shape that does not match its payload and every header that is not the one canonical encoding
 * (hand-written protobuf bytes make those). Node records are checked for a round trip and for the
 * refusals that make them safe to use as a link's identity.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "neuroshard/crypto.h"
#include "neuroshard/link.h"
#include "neuroshard/wire.h"
#include "support/testutil.h"

#define TEST_NOW_MS 1790000000000ULL
#define TEST_TTL_MS (24ull * 3600 * 1000)

/* ---- helpers ------------------------------------------------------------------------------ */

/* Encodes f into a malloc'd buffer; *len gets its size. */
static uint8_t *encode_frame(const ns_frame *f, size_t *len)
{
    assert_int_equal(ns_frame_encoded_len(f, len), NS_OK);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    size_t written;
    assert_int_equal(ns_frame_encode(f, buf, *len, &written), NS_OK);
    assert_int_equal(written, *len);
    return buf;
}

/* u32 header_len | header | payload, from hand-written header bytes, into out. */
static size_t frame_from_parts(uint8_t *out, const uint8_t *hdr, size_t hdr_len,
                               const uint8_t *payload, size_t payload_len)
{
    out[0] = (uint8_t)(hdr_len >> 24);
    out[1] = (uint8_t)(hdr_len >> 16);
    out[2] = (uint8_t)(hdr_len >> 8);
    out[3] = (uint8_t)hdr_len;
    memcpy(out + 4, hdr, hdr_len);
    if (payload_len > 0)
        memcpy(out + 4 + hdr_len, payload, payload_len);
    return 4 + hdr_len + payload_len;
}

static int decode_parts(const uint8_t *hdr, size_t hdr_len, const uint8_t *payload,
                        size_t payload_len)
{
    uint8_t buf[512];
    assert_true(4 + hdr_len + payload_len <= sizeof buf);
    size_t len = frame_from_parts(buf, hdr, hdr_len, payload, payload_len);
    ns_frame f;
    return ns_frame_decode(buf, len, &f);
}

static ns_frame tensor_frame(const uint8_t *body, size_t body_len, uint32_t dtype,
                             const uint32_t *shape, uint32_t ndim, const uint8_t *data)
{
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = body_len};
    f.tensor.dtype = dtype;
    f.tensor.ndim = ndim;
    size_t bytes = ns_dtype_size(dtype);
    for (uint32_t i = 0; i < ndim; i++) {
        f.tensor.shape[i] = shape[i];
        bytes *= shape[i];
    }
    f.tensor.data = data;
    f.tensor.bytes = bytes;
    return f;
}

static void fill_pattern(uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(i * 37 + 11);
}

/* ---- frames ------------------------------------------------------------------------------- */

static void test_dtype_sizes_match_their_types(void **state)
{
    (void)state;
    assert_int_equal(ns_dtype_size(NS_DTYPE_F32), 4);
    assert_int_equal(ns_dtype_size(NS_DTYPE_F16), 2);
    assert_int_equal(ns_dtype_size(NS_DTYPE_BF16), 2);
    assert_int_equal(ns_dtype_size(NS_DTYPE_I8), 1);
    assert_int_equal(ns_dtype_size(NS_DTYPE_U8), 1);
    assert_int_equal(ns_dtype_size(NS_DTYPE_I32), 4);
    assert_int_equal(ns_dtype_size(NS_DTYPE_NONE), 0);
    assert_int_equal(ns_dtype_size(NS_DTYPE_COUNT_), 0);
    assert_int_equal(ns_dtype_size(1000), 0);
}

static void test_frame_without_tensor_round_trips(void **state)
{
    (void)state;
    static const uint8_t body[] = "a DHT packet, say";
    ns_frame f = {.type = NS_FRAME_DHT, .body = body, .body_len = sizeof body};
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    ns_frame got;
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_OK);
    assert_int_equal(got.type, NS_FRAME_DHT);
    assert_int_equal(got.body_len, sizeof body);
    assert_memory_equal(got.body, body, sizeof body);
    assert_int_equal(got.tensor.dtype, NS_DTYPE_NONE);
    assert_null(got.tensor.data);
    assert_int_equal(got.tensor.bytes, 0);
    free(buf);
}

static void test_frame_with_empty_body_round_trips(void **state)
{
    (void)state;
    ns_frame f = {.type = NS_FRAME_CLOSE};
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    assert_int_equal(len, 4 + 2); /* header_len, then only the type field */
    ns_frame got;
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_OK);
    assert_int_equal(got.type, NS_FRAME_CLOSE);
    assert_int_equal(got.body_len, 0);
    free(buf);
}

static void test_frame_with_tensor_round_trips_for_every_dtype(void **state)
{
    (void)state;
    static const uint8_t body[] = {1, 2, 3};
    uint8_t data[2 * 3 * 5 * 4];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    const uint32_t shape[] = {2, 3, 5};
    for (uint32_t dtype = NS_DTYPE_F32; dtype < NS_DTYPE_COUNT_; dtype++) {
        ns_frame f = tensor_frame(body, sizeof body, dtype, shape, 3, data);
        size_t len;
        uint8_t *buf = encode_frame(&f, &len);
        ns_frame got;
        assert_int_equal(ns_frame_decode(buf, len, &got), NS_OK);
        assert_int_equal(got.type, NS_FRAME_APP);
        assert_int_equal(got.body_len, sizeof body);
        assert_memory_equal(got.body, body, sizeof body);
        assert_int_equal(got.tensor.dtype, dtype);
        assert_int_equal(got.tensor.ndim, 3);
        assert_memory_equal(got.tensor.shape, shape, sizeof shape);
        assert_int_equal(got.tensor.bytes, 30 * ns_dtype_size(dtype));
        assert_memory_equal(got.tensor.data, data, got.tensor.bytes);
        free(buf);
    }
}

static void test_frame_with_six_dims_round_trips(void **state)
{
    (void)state;
    const uint32_t shape[NS_TENSOR_DIMS_MAX] = {1, 2, 1, 3, 1, 2};
    uint8_t data[12];
    memset(data, 0xab, sizeof data);
    ns_frame f = tensor_frame(NULL, 0, NS_DTYPE_U8, shape, NS_TENSOR_DIMS_MAX, data);
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    ns_frame got;
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_OK);
    assert_int_equal(got.tensor.ndim, NS_TENSOR_DIMS_MAX);
    assert_memory_equal(got.tensor.shape, shape, sizeof shape);
    free(buf);
}

static void test_frame_decode_views_point_into_the_buffer(void **state)
{
    (void)state;
    static const uint8_t body[] = "body bytes";
    uint8_t data[64];
    memset(data, 0x5a, sizeof data);
    const uint32_t shape[] = {16};
    ns_frame f = tensor_frame(body, sizeof body, NS_DTYPE_F32, shape, 1, data);
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    ns_frame got;
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_OK);
    /* The payload is the tail of the buffer and the body the tail of the header. */
    assert_ptr_equal(got.tensor.data, buf + len - sizeof data);
    assert_ptr_equal(got.body + got.body_len, got.tensor.data);
    assert_true(got.body > buf + 4);
    /* Views, not copies: a change in the buffer shows through. */
    buf[len - 1] ^= 0xff;
    assert_int_equal(got.tensor.data[sizeof data - 1], 0x5a ^ 0xff);
    free(buf);
}

static void test_frame_encoding_matches_the_documented_bytes(void **state)
{
    (void)state;
    /* docs/protocol.md, part 1, section 2. */
    static const uint8_t nonce[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const uint8_t ping[] = {0, 0, 0, 0x0c, 0x08, 0x02, 0x1a, 0x08, 1, 2, 3, 4, 5, 6, 7, 8};
    ns_frame f = {.type = NS_FRAME_PING, .body = nonce, .body_len = sizeof nonce};
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    assert_int_equal(len, sizeof ping);
    assert_memory_equal(buf, ping, sizeof ping);
    free(buf);
    static const uint8_t head[] = {0,    0,    0,    0x0f, 0x08, 0x40, 0x12, 0x06, 0x08, 0x01,
                                   0x12, 0x02, 0x02, 0x03, 0x1a, 0x03, 'a',  'b',  'c'};
    uint8_t data[24];
    fill_pattern(data, sizeof data);
    const uint32_t shape[] = {2, 3};
    f = tensor_frame((const uint8_t *)"abc", 3, NS_DTYPE_F32, shape, 2, data);
    buf = encode_frame(&f, &len);
    assert_int_equal(len, sizeof head + sizeof data);
    assert_memory_equal(buf, head, sizeof head);
    assert_memory_equal(buf + sizeof head, data, sizeof data);
    free(buf);
}

static void test_frame_refuses_every_truncation(void **state)
{
    (void)state;
    static const uint8_t body[] = "truncate me";
    uint8_t data[24] = {0};
    const uint32_t shape[] = {2, 3};
    ns_frame frames[2] = {tensor_frame(body, sizeof body, NS_DTYPE_I32, shape, 2, data),
                          {.type = NS_FRAME_DHT, .body = body, .body_len = sizeof body}};
    for (size_t k = 0; k < 2; k++) {
        size_t len;
        uint8_t *buf = encode_frame(&frames[k], &len);
        for (size_t cut = 0; cut < len; cut++) {
            /* A copy of exactly cut bytes, so ASan sees any read past the end. */
            uint8_t *part = malloc(cut > 0 ? cut : 1);
            assert_non_null(part);
            memcpy(part, buf, cut);
            ns_frame got;
            assert_int_equal(ns_frame_decode(part, cut, &got), NS_EPARSE);
            free(part);
        }
        free(buf);
    }
}

static void test_frame_refuses_header_lengths_that_lie(void **state)
{
    (void)state;
    static const uint8_t body[] = "xyz";
    ns_frame f = {.type = NS_FRAME_DHT, .body = body, .body_len = sizeof body};
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    ns_frame got;
    for (uint32_t delta = 1; delta < 4; delta++) {
        buf[3] = (uint8_t)(len - 4 + delta); /* longer than what follows */
        assert_int_equal(ns_frame_decode(buf, len, &got), NS_EPARSE);
        buf[3] = (uint8_t)(len - 4 - delta); /* shorter: the rest looks like a payload */
        assert_int_equal(ns_frame_decode(buf, len, &got), NS_EPARSE);
    }
    buf[0] = 0x80; /* 2 GiB of header */
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_ETOOBIG);
    buf[0] = 0;
    buf[1] = 0x01; /* just over NS_FRAME_HEADER_BYTES_MAX */
    buf[2] = 0;
    buf[3] = 1;
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_ETOOBIG);
    free(buf);
}

static void test_frame_refuses_input_over_the_frame_limit(void **state)
{
    (void)state;
    /* The size check comes before any read, so a small buffer stands in for a huge one. */
    uint8_t buf[8] = {0};
    ns_frame got;
    assert_int_equal(ns_frame_decode(buf, (size_t)NS_FRAME_BYTES_MAX + 1, &got), NS_ETOOBIG);
}

static void test_frame_refuses_payload_that_does_not_match_shape(void **state)
{
    (void)state;
    /* type 64, tensor {dtype f32, shape [2]}: 8 payload bytes expected. */
    static const uint8_t hdr[] = {0x08, 0x40, 0x12, 0x05, 0x08, 0x01, 0x12, 0x01, 0x02};
    uint8_t payload[9] = {0};
    assert_int_equal(decode_parts(hdr, sizeof hdr, payload, 8), NS_OK);
    assert_int_equal(decode_parts(hdr, sizeof hdr, payload, 7), NS_EPARSE);
    assert_int_equal(decode_parts(hdr, sizeof hdr, payload, 9), NS_EPARSE);
    assert_int_equal(decode_parts(hdr, sizeof hdr, payload, 0), NS_EPARSE);
    /* No tensor: no payload allowed. */
    static const uint8_t bare[] = {0x08, 0x40};
    assert_int_equal(decode_parts(bare, sizeof bare, payload, 0), NS_OK);
    assert_int_equal(decode_parts(bare, sizeof bare, payload, 1), NS_EPARSE);
}

static void test_frame_refuses_bad_dims(void **state)
{
    (void)state;
    uint8_t payload[8] = {0};
    /* seven dims of 1, u8: one byte, but over NS_TENSOR_DIMS_MAX */
    static const uint8_t seven[] = {0x08, 0x40, 0x12, 0x0b, 0x08, 0x05, 0x12, 0x07,
                                    1,    1,    1,    1,    1,    1,    1};
    assert_int_equal(decode_parts(seven, sizeof seven, payload, 1), NS_EPARSE);
    /* a zero dimension */
    static const uint8_t zero[] = {0x08, 0x40, 0x12, 0x06, 0x08, 0x05, 0x12, 0x02, 0x01, 0x00};
    assert_int_equal(decode_parts(zero, sizeof zero, payload, 0), NS_EPARSE);
    /* a dtype with no dims */
    static const uint8_t none[] = {0x08, 0x40, 0x12, 0x02, 0x08, 0x05};
    assert_int_equal(decode_parts(none, sizeof none, payload, 1), NS_EPARSE);
    /* an unknown dtype */
    static const uint8_t dtype[] = {0x08, 0x40, 0x12, 0x05, 0x08, 0x07, 0x12, 0x01, 0x01};
    assert_int_equal(decode_parts(dtype, sizeof dtype, payload, 1), NS_EPARSE);
    /* a tensor of dtype NONE (an empty TensorMeta written out) */
    static const uint8_t empty[] = {0x08, 0x40, 0x12, 0x00};
    assert_int_equal(decode_parts(empty, sizeof empty, payload, 0), NS_EPARSE);
}

static void test_frame_refuses_shape_whose_size_overflows(void **state)
{
    (void)state;
    uint8_t payload[4] = {0};
    /* f32 [2^32-1, 2^32-1, 2^32-1]: the product overflows 64 bits unless checked per step. */
    static const uint8_t hdr[] = {0x08, 0x40, 0x12, 0x13, 0x08, 0x01, 0x12, 0x0f,
                                  0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff,
                                  0xff, 0x0f, 0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(decode_parts(hdr, sizeof hdr, payload, 4), NS_ETOOBIG);
    /* u8 [2^26 + 1]: one byte over the payload limit. */
    static const uint8_t over[] = {0x08, 0x40, 0x12, 0x08, 0x08, 0x05,
                                   0x12, 0x04, 0x81, 0x80, 0x80, 0x20};
    assert_int_equal(decode_parts(over, sizeof over, payload, 4), NS_ETOOBIG);
}

static void test_frame_refuses_noncanonical_headers(void **state)
{
    (void)state;
    uint8_t payload[1] = {0};
    static const uint8_t ok[] = {0x08, 0x40, 0x1a, 0x01, 'x'};
    assert_int_equal(decode_parts(ok, sizeof ok, payload, 0), NS_OK);
    static const uint8_t reordered[] = {0x1a, 0x01, 'x', 0x08, 0x40};
    assert_int_equal(decode_parts(reordered, sizeof reordered, payload, 0), NS_EPARSE);
    static const uint8_t long_varint[] = {0x08, 0xc0, 0x00, 0x1a, 0x01, 'x'};
    assert_int_equal(decode_parts(long_varint, sizeof long_varint, payload, 0), NS_EPARSE);
    static const uint8_t unknown[] = {0x08, 0x40, 0x20, 0x01, 0x1a, 0x01, 'x'};
    assert_int_equal(decode_parts(unknown, sizeof unknown, payload, 0), NS_EPARSE);
    static const uint8_t empty_body[] = {0x08, 0x40, 0x1a, 0x00};
    assert_int_equal(decode_parts(empty_body, sizeof empty_body, payload, 0), NS_EPARSE);
    static const uint8_t twice[] = {0x08, 0x41, 0x08, 0x40, 0x1a, 0x01, 'x'};
    assert_int_equal(decode_parts(twice, sizeof twice, payload, 0), NS_EPARSE);
    /* shape [1] written unpacked (field 2 as a varint, not a length-delimited list) */
    static const uint8_t unpacked[] = {0x08, 0x40, 0x12, 0x04, 0x08, 0x05, 0x10, 0x01};
    assert_int_equal(decode_parts(unpacked, sizeof unpacked, payload, 1), NS_EPARSE);
    static const uint8_t packed[] = {0x08, 0x40, 0x12, 0x05, 0x08, 0x05, 0x12, 0x01, 0x01};
    assert_int_equal(decode_parts(packed, sizeof packed, payload, 1), NS_OK);
    /* an unknown field inside TensorMeta */
    static const uint8_t inner[] = {0x08, 0x40, 0x12, 0x07, 0x08, 0x05,
                                    0x12, 0x01, 0x01, 0x18, 0x01};
    assert_int_equal(decode_parts(inner, sizeof inner, payload, 1), NS_EPARSE);
    /* frame type 0 is no frame */
    static const uint8_t notype[] = {0x1a, 0x01, 'x'};
    assert_int_equal(decode_parts(notype, sizeof notype, payload, 0), NS_EPARSE);
}

static void test_frame_encode_refuses_what_decode_would(void **state)
{
    (void)state;
    uint8_t data[16] = {0};
    const uint32_t shape[] = {4};
    ns_frame f = tensor_frame(NULL, 0, NS_DTYPE_F32, shape, 1, data);
    size_t len;
    assert_int_equal(ns_frame_encoded_len(&f, &len), NS_OK);
    ns_frame wrong = f;
    wrong.tensor.bytes = 15;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_EINVAL);
    wrong = f;
    wrong.tensor.ndim = NS_TENSOR_DIMS_MAX + 1;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_EINVAL);
    wrong = f;
    wrong.tensor.ndim = 0;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_EINVAL);
    wrong = f;
    wrong.tensor.dtype = 99;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_EINVAL);
    wrong = f;
    wrong.tensor.shape[0] = 0;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_EINVAL);
    wrong = f;
    wrong.tensor.shape[0] = NS_FRAME_PAYLOAD_BYTES_MAX / 4 + 1;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_ETOOBIG);
    wrong = f;
    wrong.type = 0;
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_EINVAL);
    wrong = f;
    wrong.body_len = NS_FRAME_HEADER_BYTES_MAX + 1;
    wrong.body = data; /* never read: the length is refused first */
    assert_int_equal(ns_frame_encoded_len(&wrong, &len), NS_ETOOBIG);
    uint8_t out[64];
    size_t written;
    assert_int_equal(ns_frame_encoded_len(&f, &len), NS_OK);
    assert_int_equal(ns_frame_encode(&f, out, len - 1, &written), NS_EINVAL);
    assert_int_equal(ns_frame_encode(&f, out, len, &written), NS_OK);
    assert_int_equal(written, len);
}

static void test_frame_largest_header_round_trips_and_one_more_byte_is_refused(void **state)
{
    (void)state;
    /* body field: tag (1) + length varint (3) + body; type field: 2 bytes. */
    size_t body_len = NS_FRAME_HEADER_BYTES_MAX - 2 - 1 - 3;
    uint8_t *body = calloc(1, body_len + 1);
    assert_non_null(body);
    ns_frame f = {.type = NS_FRAME_APP, .body = body, .body_len = body_len};
    size_t len;
    uint8_t *buf = encode_frame(&f, &len);
    assert_int_equal(len, 4 + NS_FRAME_HEADER_BYTES_MAX);
    ns_frame got;
    assert_int_equal(ns_frame_decode(buf, len, &got), NS_OK);
    assert_int_equal(got.body_len, body_len);
    free(buf);
    f.body_len++;
    assert_int_equal(ns_frame_encoded_len(&f, &len), NS_ETOOBIG);
    free(body);
}

/* ---- node records ------------------------------------------------------------------------- */

static void test_key(ns_key *key, uint8_t b)
{
    uint8_t seckey[NS_SECKEY_BYTES];
    memset(seckey, b, sizeof seckey);
    assert_int_equal(ns_key_from_seckey(key, seckey), NS_OK);
}

static void test_info(ns_node_info *info)
{
    memset(info, 0, sizeof *info);
    ns_network_id(info->network_id, NS_NETWORK_DEFAULT);
    memset(info->link_static, 0x77, sizeof info->link_static);
    info->address_count = 2;
    assert_int_equal(ns_addr_from_text("192.0.2.7:4001", &info->addresses[0]), NS_OK);
    assert_int_equal(ns_addr_from_text("[2001:db8::1]:4002", &info->addresses[1]), NS_OK);
    strcpy(info->version, NS_VERSION);
    info->memory_mb = 16384;
}

static void test_network_id_is_domain_separated_sha256(void **state)
{
    (void)state;
    static const char text[] = "neuroshard/network/v1" NS_NETWORK_DEFAULT;
    uint8_t want[32], got[32];
    ns_sha256(want, text, sizeof text - 1);
    ns_network_id(got, NS_NETWORK_DEFAULT);
    assert_memory_equal(got, want, 32);
    ns_network_id(want, "another");
    assert_memory_not_equal(got, want, 32);
}

static void test_node_record_round_trips(void **state)
{
    (void)state;
    ns_key key;
    test_key(&key, 0x21);
    ns_node_info info;
    test_info(&info);
    uint8_t *rec;
    size_t rec_len;
    assert_int_equal(ns_node_record_make(&key, &info, TEST_NOW_MS, TEST_TTL_MS, 7, &rec, &rec_len),
                     NS_OK);
    ns_record r;
    ns_node_info got;
    assert_int_equal(ns_node_record_open(rec, rec_len, TEST_NOW_MS + 1, &r, &got), NS_OK);
    assert_memory_equal(r.author, key.node_id, NS_NODE_ID_BYTES);
    assert_int_equal(r.type, NS_RECORD_NODE);
    assert_int_equal(r.sequence, 7);
    assert_int_equal(r.expiry_ms, TEST_NOW_MS + TEST_TTL_MS);
    assert_memory_equal(got.network_id, info.network_id, 32);
    assert_memory_equal(got.link_static, info.link_static, 32);
    assert_int_equal(got.address_count, 2);
    assert_true(ns_addr_equal(&got.addresses[0], &info.addresses[0]));
    assert_true(ns_addr_equal(&got.addresses[1], &info.addresses[1]));
    assert_string_equal(got.version, NS_VERSION);
    assert_int_equal(got.memory_mb, 16384);
    assert_int_equal(ns_node_record_open(rec, rec_len, TEST_NOW_MS, NULL, &got), NS_OK);
    assert_int_equal(ns_node_record_open(rec, rec_len, TEST_NOW_MS + TEST_TTL_MS, NULL, &got),
                     NS_EEXPIRED);
    free(rec);
}

/* The capacity of S2 rides in the record: latency, tier, bandwidth, layers, quorum, stake,
 * reputation; values out of their range are refused. */
static void test_node_record_carries_capacity(void **state)
{
    (void)state;
    ns_key key;
    test_key(&key, 0x22);
    ns_node_info info;
    test_info(&info);
    info.layer_latency_us = 4321;
    info.tier = 2;
    info.bandwidth_mbps = 100;
    info.layer_first = 3;
    info.layer_last = 6;
    info.in_quorum = true;
    memset(info.quorum_id, 0xab, sizeof info.quorum_id);
    info.stake_nano = 10000000000ull;
    info.reputation_ppm = 999000;
    uint8_t *rec;
    size_t rec_len;
    assert_int_equal(ns_node_record_make(&key, &info, TEST_NOW_MS, TEST_TTL_MS, 1, &rec, &rec_len),
                     NS_OK);
    ns_node_info got;
    assert_int_equal(ns_node_record_open(rec, rec_len, TEST_NOW_MS, NULL, &got), NS_OK);
    assert_int_equal(got.layer_latency_us, 4321);
    assert_int_equal(got.tier, 2);
    assert_int_equal(got.bandwidth_mbps, 100);
    assert_int_equal(got.layer_first, 3);
    assert_int_equal(got.layer_last, 6);
    assert_true(got.in_quorum);
    assert_memory_equal(got.quorum_id, info.quorum_id, sizeof info.quorum_id);
    assert_int_equal(got.stake_nano, 10000000000ull);
    assert_int_equal(got.reputation_ppm, 999000);
    free(rec);
    /* a tier beyond T5, a reversed range, a reputation above one million */
    ns_node_info bad[3] = {info, info, info};
    bad[0].tier = 6;
    bad[1].layer_first = 7;
    bad[2].reputation_ppm = 1000001;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            ns_node_record_make(&key, &bad[i], TEST_NOW_MS, TEST_TTL_MS, 1, &rec, &rec_len), NS_OK);
        assert_int_equal(ns_node_record_open(rec, rec_len, TEST_NOW_MS, NULL, &got), NS_EPARSE);
        free(rec);
    }
}

/* Signs body as a record of the given type and topic. */
static uint8_t *sign_body(const ns_key *key, uint32_t type, const char *topic, const uint8_t *body,
                          size_t body_len, size_t *len)
{
    ns_record r = {.type = type,
                   .sequence = 1,
                   .timestamp_ms = TEST_NOW_MS,
                   .expiry_ms = TEST_NOW_MS + TEST_TTL_MS,
                   .body = body,
                   .body_len = body_len};
    r.topic_len = strlen(topic);
    memcpy(r.topic, topic, r.topic_len);
    uint8_t *out;
    assert_int_equal(ns_record_sign(key, &r, &out, len), NS_OK);
    return out;
}

static void test_node_record_refuses_wrong_type_or_topic(void **state)
{
    (void)state;
    ns_key key;
    test_key(&key, 0x22);
    ns_node_info info;
    test_info(&info);
    uint8_t *rec;
    size_t rec_len;
    assert_int_equal(ns_node_record_make(&key, &info, TEST_NOW_MS, TEST_TTL_MS, 1, &rec, &rec_len),
                     NS_OK);
    ns_record r;
    assert_int_equal(ns_record_verify(rec, rec_len, TEST_NOW_MS, &r), NS_OK);
    ns_node_info got;
    size_t len;
    uint8_t *other = sign_body(&key, NS_RECORD_QUORUM, "", r.body, r.body_len, &len);
    assert_int_equal(ns_node_record_open(other, len, TEST_NOW_MS, NULL, &got), NS_EPARSE);
    free(other);
    other = sign_body(&key, NS_RECORD_NODE, "topic", r.body, r.body_len, &len);
    assert_int_equal(ns_node_record_open(other, len, TEST_NOW_MS, NULL, &got), NS_EPARSE);
    free(other);
    other = sign_body(&key, NS_RECORD_NODE, "", r.body, r.body_len, &len);
    assert_int_equal(ns_node_record_open(other, len, TEST_NOW_MS, NULL, &got), NS_OK);
    free(other);
    free(rec);
}

static void test_node_record_refuses_malformed_body(void **state)
{
    (void)state;
    ns_key key;
    test_key(&key, 0x23);
    static const uint8_t short_network[] = {0x0a, 0x02, 0x01, 0x02};
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    ns_node_info got;
    size_t len;
    uint8_t *rec = sign_body(&key, NS_RECORD_NODE, "", short_network, sizeof short_network, &len);
    assert_int_equal(ns_node_record_open(rec, len, TEST_NOW_MS, NULL, &got), NS_EPARSE);
    free(rec);
    rec = sign_body(&key, NS_RECORD_NODE, "", garbage, sizeof garbage, &len);
    assert_int_equal(ns_node_record_open(rec, len, TEST_NOW_MS, NULL, &got), NS_EPARSE);
    free(rec);
}

static void test_node_record_refuses_tampered_body(void **state)
{
    (void)state;
    ns_key key;
    test_key(&key, 0x24);
    ns_node_info info;
    test_info(&info);
    uint8_t *rec;
    size_t rec_len;
    assert_int_equal(ns_node_record_make(&key, &info, TEST_NOW_MS, TEST_TTL_MS, 1, &rec, &rec_len),
                     NS_OK);
    ns_record r;
    assert_int_equal(ns_record_verify(rec, rec_len, TEST_NOW_MS, &r), NS_OK);
    size_t body_at = (size_t)(r.body - rec);
    for (size_t i = 0; i < r.body_len; i++) {
        rec[body_at + i] ^= 0x01;
        ns_node_info got;
        assert_int_not_equal(ns_node_record_open(rec, rec_len, TEST_NOW_MS, NULL, &got), NS_OK);
        rec[body_at + i] ^= 0x01;
    }
    free(rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_sizes_match_their_types),
        cmocka_unit_test(test_frame_without_tensor_round_trips),
        cmocka_unit_test(test_frame_with_empty_body_round_trips),
        cmocka_unit_test(test_frame_with_tensor_round_trips_for_every_dtype),
        cmocka_unit_test(test_frame_with_six_dims_round_trips),
        cmocka_unit_test(test_frame_decode_views_point_into_the_buffer),
        cmocka_unit_test(test_frame_encoding_matches_the_documented_bytes),
        cmocka_unit_test(test_frame_refuses_every_truncation),
        cmocka_unit_test(test_frame_refuses_header_lengths_that_lie),
        cmocka_unit_test(test_frame_refuses_input_over_the_frame_limit),
        cmocka_unit_test(test_frame_refuses_payload_that_does_not_match_shape),
        cmocka_unit_test(test_frame_refuses_bad_dims),
        cmocka_unit_test(test_frame_refuses_shape_whose_size_overflows),
        cmocka_unit_test(test_frame_refuses_noncanonical_headers),
        cmocka_unit_test(test_frame_encode_refuses_what_decode_would),
        cmocka_unit_test(test_frame_largest_header_round_trips_and_one_more_byte_is_refused),
        cmocka_unit_test(test_network_id_is_domain_separated_sha256),
        cmocka_unit_test(test_node_record_round_trips),
        cmocka_unit_test(test_node_record_carries_capacity),
        cmocka_unit_test(test_node_record_refuses_wrong_type_or_topic),
        cmocka_unit_test(test_node_record_refuses_malformed_body),
        cmocka_unit_test(test_node_record_refuses_tampered_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
