/*
 * fuzz_pipe_msg.c: libFuzzer target for the pipeline's frames (ns_pipe_msg_parse), which a stage
 * takes from its neighbours' links.
 *
 * The input is cut into a frame: the first byte picks the type, the next four the tensor's shape
 * split, the rest is the body and the tensor's bytes. Any frame is refused with NS_EPARSE or
 * parses to a message within every limit, whose values are finite, and which, written again with
 * ns_pipe_msg_frame, gives back the same body and tensor.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/pipeline.h"
#include "neuroshard/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    ns_frame f = {.type = data[0] % 7 == 6   ? NS_FRAME_PIPE_ALIVE
                          : data[0] % 7 == 5 ? NS_FRAME_PIPE_RESEND
                                             : NS_FRAME_PIPE_ACT + data[0] % 7};
    size_t body_len = ((size_t)data[1] << 8 | data[2]) % (size - 4);
    f.body = data + 5;
    f.body_len = body_len < size - 5 ? body_len : size - 5;
    size_t rest = size - 5 - f.body_len;
    if (data[3] & 1) {
        uint32_t a = data[4] % 8 + 1, b = data[4] / 8 % 4 + 1;
        size_t cells = rest / 4;
        f.tensor = (ns_wire_tensor){.dtype = NS_DTYPE_F32,
                                    .ndim = 3,
                                    .shape = {a, b, (uint32_t)(cells / (a * b))},
                                    .data = f.body + f.body_len,
                                    .bytes = (size_t)a * b * (cells / (a * b)) * 4};
    }
    ns_pipe_msg m;
    int rc = ns_pipe_msg_parse(&f, &m);
    if (rc != NS_OK) {
        NS_ASSERT(rc == NS_EPARSE);
        return 0;
    }
    NS_ASSERT(m.micro < NS_PIPE_MICRO_MAX);
    if (m.type == NS_FRAME_PIPE_NORM) {
        NS_ASSERT(isfinite(m.norm) && m.norm >= 0.0);
    } else if (m.type == NS_FRAME_PIPE_SCALE) {
        NS_ASSERT(m.scale > 0.0f && m.scale <= 1.0f);
    } else if (m.type == NS_FRAME_PIPE_RESEND || m.type == NS_FRAME_PIPE_ALIVE) {
        NS_ASSERT(m.awaits >= NS_PIPE_IN_ACT && m.awaits <= NS_PIPE_IN_SCALE);
    } else {
        NS_ASSERT(m.rows >= 1 && m.rows <= NS_PIPE_ROWS_MAX);
        size_t cells = (size_t)m.rows * m.seq_len;
        for (size_t i = 0; i < cells * m.hidden; i++) {
            float v;
            memcpy(&v, (const uint8_t *)m.data + 4 * i, sizeof v);
            NS_ASSERT(isfinite(v));
        }
    }
    /* written again: the same bytes */
    int32_t *targets = NULL;
    if (m.type == NS_FRAME_PIPE_ACT) {
        targets = malloc(sizeof *targets * (size_t)m.rows * m.seq_len);
        NS_ASSERT(targets != NULL);
        for (size_t i = 0; i < (size_t)m.rows * m.seq_len; i++) {
            targets[i] = ns_pipe_msg_target(&m, i);
            NS_ASSERT(targets[i] >= -1);
        }
    }
    uint8_t *body = malloc(ns_pipe_msg_body_bytes(&m) + 1);
    NS_ASSERT(body != NULL);
    ns_frame g;
    ns_pipe_msg_frame(&m, targets, body, &g);
    NS_ASSERT(g.body_len == f.body_len && memcmp(g.body, f.body, f.body_len) == 0);
    NS_ASSERT(g.tensor.bytes == (f.tensor.dtype == NS_DTYPE_NONE ? 0 : f.tensor.bytes));
    free(body);
    free(targets);
    return 0;
}
