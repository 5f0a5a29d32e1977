/*
 * frame.c: encoding and decoding frames, the unit every message between nodes travels in.
 *
 *   encoded frame = u32 header_len (big-endian) | FrameHeader (header_len bytes) | payload
 *
 * The header is a protobuf-c FrameHeader (proto/wire.proto); the payload is the raw tensor bytes,
 * copied once into the caller's buffer on the way out (the link encrypts that buffer in place)
 * and returned as a view into the received buffer on the way in, never copied. Decoding reads
 * untrusted bytes: every length is checked before use, the header must be the one canonical
 * encoding of its message (re-packing it gives the same bytes), and the payload must be exactly
 * the size its shape and dtype say. This file never allocates beyond protobuf-c's unpack.
 */
#include <assert.h>
#include <string.h>

#include "neuroshard/crypto.h"
#include "neuroshard/wire.h"
#include "wire.pb-c.h"

#define FRAME_PREFIX_BYTES 4 /* the u32 header_len */

static_assert(NS_FRAME_PAYLOAD_BYTES_MAX <= SIZE_MAX / 2, "payload sizes fit a size_t");
static_assert(NS_FRAME_HEADER_BYTES_MAX < UINT32_MAX, "header_len fits its u32 prefix");

size_t ns_dtype_size(uint32_t dtype)
{
    switch ((ns_dtype)dtype) {
    case NS_DTYPE_F32:
    case NS_DTYPE_I32:
        return 4;
    case NS_DTYPE_F16:
    case NS_DTYPE_BF16:
        return 2;
    case NS_DTYPE_I8:
    case NS_DTYPE_U8:
        return 1;
    case NS_DTYPE_NONE:
    case NS_DTYPE_COUNT_:
        return 0;
    }
    return 0; /* a value from the wire that names no dtype */
}

/* Bytes of a tensor of this dtype and shape. NS_EPARSE for an unknown dtype, no dimensions, too
 * many, or a zero dimension; NS_ETOOBIG when the size is over NS_FRAME_PAYLOAD_BYTES_MAX (checked
 * after every multiplication, so nothing overflows). */
static int tensor_bytes(uint32_t dtype, const uint32_t *shape, size_t ndim, size_t *bytes)
{
    size_t elem_bytes = ns_dtype_size(dtype);
    if (elem_bytes == 0 || ndim == 0 || ndim > NS_TENSOR_DIMS_MAX)
        return NS_EPARSE;
    uint64_t total = elem_bytes;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            return NS_EPARSE;
        /* total <= PAYLOAD_MAX < 2^32 and shape[i] < 2^32, so the product fits 64 bits. */
        total *= shape[i];
        if (total > NS_FRAME_PAYLOAD_BYTES_MAX)
            return NS_ETOOBIG;
    }
    *bytes = (size_t)total;
    return NS_OK;
}

/* Fills the protobuf-c header for f (views into f, nothing allocated) and checks f against the
 * limits. *payload_bytes gets the tensor's size (0 without one). */
static int header_build(const ns_frame *f, Neuroshard__FrameHeader *hdr,
                        Neuroshard__TensorMeta *meta, size_t *header_len, size_t *payload_bytes)
{
    if (f->type == 0 || (f->body == NULL && f->body_len != 0))
        return NS_EINVAL;
    if (f->body_len > NS_FRAME_HEADER_BYTES_MAX)
        return NS_ETOOBIG;
    neuroshard__frame_header__init(hdr);
    hdr->type = f->type;
    hdr->body.data = (uint8_t *)f->body;
    hdr->body.len = f->body_len;
    *payload_bytes = 0;
    const ns_wire_tensor *t = &f->tensor;
    if (t->dtype != NS_DTYPE_NONE) {
        size_t bytes;
        int rc = tensor_bytes(t->dtype, t->shape, t->ndim, &bytes);
        if (rc != NS_OK)
            return rc == NS_ETOOBIG ? NS_ETOOBIG : NS_EINVAL;
        if (bytes != t->bytes || t->data == NULL)
            return NS_EINVAL;
        neuroshard__tensor_meta__init(meta);
        meta->dtype = t->dtype;
        meta->n_shape = t->ndim;
        meta->shape = (uint32_t *)t->shape;
        hdr->tensor = meta;
        *payload_bytes = bytes;
    }
    *header_len = neuroshard__frame_header__get_packed_size(hdr);
    if (*header_len > NS_FRAME_HEADER_BYTES_MAX)
        return NS_ETOOBIG;
    return NS_OK;
}

int ns_frame_encoded_len(const ns_frame *f, size_t *len)
{
    NS_ASSERT(f != NULL);
    NS_ASSERT(len != NULL);
    Neuroshard__FrameHeader hdr;
    Neuroshard__TensorMeta meta;
    size_t header_len, payload_bytes;
    int rc = header_build(f, &hdr, &meta, &header_len, &payload_bytes);
    if (rc != NS_OK)
        return rc;
    *len = FRAME_PREFIX_BYTES + header_len + payload_bytes;
    NS_ASSERT(*len <= NS_FRAME_BYTES_MAX);
    return NS_OK;
}

int ns_frame_encode(const ns_frame *f, uint8_t *out, size_t out_len, size_t *written)
{
    NS_ASSERT(f != NULL);
    NS_ASSERT(out != NULL);
    NS_ASSERT(written != NULL);
    Neuroshard__FrameHeader hdr;
    Neuroshard__TensorMeta meta;
    size_t header_len, payload_bytes;
    int rc = header_build(f, &hdr, &meta, &header_len, &payload_bytes);
    if (rc != NS_OK)
        return rc;
    size_t total = FRAME_PREFIX_BYTES + header_len + payload_bytes;
    if (out_len < total)
        return NS_EINVAL;
    out[0] = (uint8_t)(header_len >> 24);
    out[1] = (uint8_t)(header_len >> 16);
    out[2] = (uint8_t)(header_len >> 8);
    out[3] = (uint8_t)header_len;
    NS_ASSERT(neuroshard__frame_header__pack(&hdr, out + FRAME_PREFIX_BYTES) == header_len);
    if (payload_bytes > 0)
        memcpy(out + FRAME_PREFIX_BYTES + header_len, f->tensor.data, payload_bytes);
    *written = total;
    return NS_OK;
}

static bool header_is_canonical(const Neuroshard__FrameHeader *hdr, const uint8_t *buf, size_t len)
{
    if (hdr->base.n_unknown_fields != 0)
        return false;
    if (hdr->tensor != NULL && hdr->tensor->base.n_unknown_fields != 0)
        return false;
    return ns_pb_packs_to(&hdr->base, buf, len);
}

/* Fills f from a parsed, canonical header whose bytes are hdr_buf[0..header_len) and a payload
 * of payload_len bytes right after them. */
static int frame_from_header(const Neuroshard__FrameHeader *hdr, const uint8_t *hdr_buf,
                             size_t header_len, size_t payload_len, ns_frame *f)
{
    if (hdr->type == 0)
        return NS_EPARSE;
    ns_wire_tensor tensor = {.dtype = NS_DTYPE_NONE};
    if (hdr->tensor != NULL) {
        const Neuroshard__TensorMeta *meta = hdr->tensor;
        size_t bytes;
        int rc = tensor_bytes(meta->dtype, meta->shape, meta->n_shape, &bytes);
        if (rc != NS_OK)
            return rc;
        if (bytes != payload_len)
            return NS_EPARSE;
        tensor.dtype = meta->dtype;
        tensor.ndim = (uint32_t)meta->n_shape;
        memcpy(tensor.shape, meta->shape, meta->n_shape * sizeof meta->shape[0]);
        tensor.data = hdr_buf + header_len;
        tensor.bytes = payload_len;
    } else if (payload_len != 0) {
        return NS_EPARSE;
    }
    /* body is the highest-numbered field, so in the canonical encoding its bytes end the header. */
    NS_ASSERT(hdr->body.len <= header_len);
    const uint8_t *body = hdr_buf + header_len - hdr->body.len;
    NS_ASSERT(hdr->body.len == 0 || memcmp(body, hdr->body.data, hdr->body.len) == 0);
    f->type = hdr->type;
    f->body = body;
    f->body_len = hdr->body.len;
    f->tensor = tensor;
    return NS_OK;
}

int ns_frame_decode(const uint8_t *buf, size_t len, ns_frame *f)
{
    NS_ASSERT(buf != NULL || len == 0);
    NS_ASSERT(f != NULL);
    if (len > NS_FRAME_BYTES_MAX)
        return NS_ETOOBIG;
    if (len < FRAME_PREFIX_BYTES)
        return NS_EPARSE;
    uint32_t header_len =
        (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | (uint32_t)buf[3];
    if (header_len > NS_FRAME_HEADER_BYTES_MAX)
        return NS_ETOOBIG;
    if (header_len > len - FRAME_PREFIX_BYTES)
        return NS_EPARSE;
    const uint8_t *hdr_buf = buf + FRAME_PREFIX_BYTES;
    size_t payload_len = len - FRAME_PREFIX_BYTES - header_len;
    Neuroshard__FrameHeader *hdr = neuroshard__frame_header__unpack(NULL, header_len, hdr_buf);
    if (hdr == NULL)
        return NS_EPARSE;
    ns_frame out;
    int rc = header_is_canonical(hdr, hdr_buf, header_len)
                 ? frame_from_header(hdr, hdr_buf, header_len, payload_len, &out)
                 : NS_EPARSE;
    neuroshard__frame_header__free_unpacked(hdr, NULL);
    if (rc != NS_OK)
        return rc;
    NS_ASSERT(out.body >= buf && out.body + out.body_len <= buf + len);
    NS_ASSERT(out.tensor.data == NULL ||
              (out.tensor.data >= buf && out.tensor.data + out.tensor.bytes == buf + len));
    *f = out;
    return NS_OK;
}
