/*
 * fuzz_frame.c: libFuzzer target for the frame decoder, ns_frame_decode.
 *
 * Every record a link decrypts and every datagram reaches ns_frame_decode, so on any bytes it
 * must return an error code or a frame whose views lie inside the input, never read out of
 * bounds or leak. A frame that decodes must also encode back to exactly the same bytes: the
 * header is canonical, so there is only one encoding of each frame.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_frame(const uint8_t *data, size_t size, const ns_frame *f)
{
    NS_ASSERT(f->type != 0);
    NS_ASSERT(f->body >= data && f->body + f->body_len <= data + size);
    if (f->tensor.dtype == NS_DTYPE_NONE) {
        NS_ASSERT(f->tensor.data == NULL && f->tensor.bytes == 0);
        return;
    }
    NS_ASSERT(f->tensor.ndim >= 1 && f->tensor.ndim <= NS_TENSOR_DIMS_MAX);
    NS_ASSERT(f->tensor.data >= data && f->tensor.data + f->tensor.bytes == data + size);
    size_t bytes = ns_dtype_size(f->tensor.dtype);
    for (uint32_t i = 0; i < f->tensor.ndim; i++)
        bytes *= f->tensor.shape[i];
    NS_ASSERT(bytes == f->tensor.bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_frame f;
    int rc = ns_frame_decode(data, size, &f);
    if (rc != NS_OK) {
        NS_ASSERT(rc == NS_EPARSE || rc == NS_ETOOBIG);
        return 0;
    }
    check_frame(data, size, &f);
    size_t len;
    NS_ASSERT(ns_frame_encoded_len(&f, &len) == NS_OK);
    NS_ASSERT(len == size);
    uint8_t *out = malloc(len);
    NS_ASSERT(out != NULL);
    size_t written;
    NS_ASSERT(ns_frame_encode(&f, out, len, &written) == NS_OK);
    NS_ASSERT(written == size && memcmp(out, data, size) == 0);
    free(out);
    return 0;
}
