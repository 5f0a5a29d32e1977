/*
 * msg.c: the pipeline's messages on the wire (pipeline.h, frames NS_FRAME_PIPE_* of wire.h).
 *
 * ACT and GRAD carry a micro-batch's activations or their gradient as the frame's float32
 * tensor; the body names the step, the micro-batch and the shape, and an ACT also carries the
 * micro-batch's targets so the finisher can compute the loss without reading data (S11: only the
 * initiator reads). NORM carries the running sum of squared gradients, SCALE the clip scale.
 * RESEND names a step and the input a stage has waited for (pipeline.h).
 * The parser checks every length against the type and the limits, and refuses values that would
 * poison a stage: a non-finite activation, a negative sum, a scale outside (0, 1].
 */
#include <math.h>
#include <string.h>

#include "neuroshard/pipeline.h"
#include "neuroshard/wire.h"

#define HEAD_BYTES  (8 + 4)              /* step, generation */
#define SHAPE_BYTES (HEAD_BYTES + 4 * 4) /* micro, rows, seq_len, hidden */

static void put_u32(uint8_t *p, uint32_t x)
{
    p[0] = (uint8_t)(x >> 24);
    p[1] = (uint8_t)(x >> 16);
    p[2] = (uint8_t)(x >> 8);
    p[3] = (uint8_t)x;
}

static void put_u64(uint8_t *p, uint64_t x)
{
    put_u32(p, (uint32_t)(x >> 32));
    put_u32(p + 4, (uint32_t)x);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

size_t ns_pipe_msg_body_bytes(const ns_pipe_msg *m)
{
    switch (m->type) {
    case NS_FRAME_PIPE_ACT:
        return SHAPE_BYTES + (size_t)m->rows * m->seq_len * 4;
    case NS_FRAME_PIPE_GRAD:
        return SHAPE_BYTES;
    case NS_FRAME_PIPE_NORM:
    case NS_FRAME_PIPE_RESEND:
    case NS_FRAME_PIPE_ALIVE:
        return HEAD_BYTES + 8;
    default:
        return HEAD_BYTES + 4;
    }
}

void ns_pipe_msg_frame(const ns_pipe_msg *m, const int32_t *targets_host, uint8_t *body_buf,
                       ns_frame *f)
{
    NS_ASSERT((m->type >= NS_FRAME_PIPE_ACT && m->type <= NS_FRAME_PIPE_SCALE) ||
              m->type == NS_FRAME_PIPE_RESEND || m->type == NS_FRAME_PIPE_ALIVE);
    *f = (ns_frame){.type = m->type, .body = body_buf, .body_len = ns_pipe_msg_body_bytes(m)};
    put_u64(body_buf, m->step);
    put_u32(body_buf + 8, m->generation);
    if (m->type == NS_FRAME_PIPE_RESEND || m->type == NS_FRAME_PIPE_ALIVE) {
        put_u32(body_buf + HEAD_BYTES, (uint32_t)m->awaits);
        put_u32(body_buf + HEAD_BYTES + 4, m->micro);
        return;
    }
    if (m->type == NS_FRAME_PIPE_NORM) {
        uint64_t bits;
        memcpy(&bits, &m->norm, sizeof bits);
        put_u64(body_buf + HEAD_BYTES, bits);
        return;
    }
    if (m->type == NS_FRAME_PIPE_SCALE) {
        uint32_t bits;
        memcpy(&bits, &m->scale, sizeof bits);
        put_u32(body_buf + HEAD_BYTES, bits);
        return;
    }
    put_u32(body_buf + HEAD_BYTES, m->micro);
    put_u32(body_buf + HEAD_BYTES + 4, m->rows);
    put_u32(body_buf + HEAD_BYTES + 8, m->seq_len);
    put_u32(body_buf + HEAD_BYTES + 12, m->hidden);
    if (m->type == NS_FRAME_PIPE_ACT) {
        NS_ASSERT(targets_host != NULL);
        for (size_t i = 0; i < (size_t)m->rows * m->seq_len; i++)
            put_u32(body_buf + SHAPE_BYTES + 4 * i, (uint32_t)targets_host[i]);
    }
    f->tensor = (ns_wire_tensor){.dtype = NS_DTYPE_F32,
                                 .ndim = 3,
                                 .shape = {m->rows, m->seq_len, m->hidden},
                                 .data = (const uint8_t *)m->data,
                                 .bytes = (size_t)m->rows * m->seq_len * m->hidden * 4};
}

int32_t ns_pipe_msg_target(const ns_pipe_msg *m, size_t i)
{
    NS_ASSERT(m->type == NS_FRAME_PIPE_ACT);
    NS_ASSERT(i < (size_t)m->rows * m->seq_len);
    return (int32_t)get_u32(m->targets + 4 * i);
}

int ns_pipe_msg_parse(const ns_frame *f, ns_pipe_msg *out)
{
    NS_ASSERT(f != NULL);
    NS_ASSERT(out != NULL);
    memset(out, 0, sizeof *out);
    out->type = f->type;
    if (f->type == NS_FRAME_PIPE_RESEND || f->type == NS_FRAME_PIPE_ALIVE) {
        if (f->body_len != HEAD_BYTES + 8 || f->tensor.dtype != NS_DTYPE_NONE)
            return NS_EPARSE;
        out->step = get_u64(f->body);
        out->generation = get_u32(f->body + 8);
        uint32_t in = get_u32(f->body + HEAD_BYTES);
        out->micro = get_u32(f->body + HEAD_BYTES + 4);
        if (in < NS_PIPE_IN_ACT || in > NS_PIPE_IN_SCALE || out->micro >= NS_PIPE_MICRO_MAX)
            return NS_EPARSE;
        out->awaits = (ns_pipe_input)in;
        return NS_OK;
    }
    if (f->type == NS_FRAME_PIPE_NORM || f->type == NS_FRAME_PIPE_SCALE) {
        size_t want = HEAD_BYTES + (f->type == NS_FRAME_PIPE_NORM ? 8 : 4);
        if (f->body_len != want || f->tensor.dtype != NS_DTYPE_NONE)
            return NS_EPARSE;
        out->step = get_u64(f->body);
        out->generation = get_u32(f->body + 8);
        if (f->type == NS_FRAME_PIPE_NORM) {
            uint64_t bits = get_u64(f->body + HEAD_BYTES);
            memcpy(&out->norm, &bits, sizeof bits);
            return isfinite(out->norm) && out->norm >= 0.0 ? NS_OK : NS_EPARSE;
        }
        uint32_t bits = get_u32(f->body + HEAD_BYTES);
        memcpy(&out->scale, &bits, sizeof bits);
        return out->scale > 0.0f && out->scale <= 1.0f ? NS_OK : NS_EPARSE;
    }
    if (f->type != NS_FRAME_PIPE_ACT && f->type != NS_FRAME_PIPE_GRAD)
        return NS_EPARSE;
    if (f->body_len < SHAPE_BYTES)
        return NS_EPARSE;
    out->step = get_u64(f->body);
    out->generation = get_u32(f->body + 8);
    out->micro = get_u32(f->body + HEAD_BYTES);
    out->rows = get_u32(f->body + HEAD_BYTES + 4);
    out->seq_len = get_u32(f->body + HEAD_BYTES + 8);
    out->hidden = get_u32(f->body + HEAD_BYTES + 12);
    if (out->micro >= NS_PIPE_MICRO_MAX || out->rows == 0 || out->rows > NS_PIPE_ROWS_MAX ||
        out->seq_len == 0 || out->seq_len > NS_PIPE_SEQ_MAX || out->hidden == 0 ||
        out->hidden > NS_PIPE_HIDDEN_MAX)
        return NS_EPARSE;
    size_t cells = (size_t)out->rows * out->seq_len;
    size_t want = SHAPE_BYTES + (f->type == NS_FRAME_PIPE_ACT ? cells * 4 : 0);
    if (f->type == NS_FRAME_PIPE_ACT && cells > NS_PIPE_TARGETS_MAX)
        return NS_EPARSE;
    if (f->body_len != want)
        return NS_EPARSE;
    const ns_wire_tensor *t = &f->tensor;
    if (t->dtype != NS_DTYPE_F32 || t->ndim != 3 || t->shape[0] != out->rows ||
        t->shape[1] != out->seq_len || t->shape[2] != out->hidden ||
        t->bytes != cells * out->hidden * 4)
        return NS_EPARSE;
    for (size_t i = 0; i < cells * out->hidden; i++) {
        float v;
        memcpy(&v, t->data + 4 * i, sizeof v);
        if (!isfinite(v))
            return NS_EPARSE;
    }
    if (f->type == NS_FRAME_PIPE_ACT) {
        out->targets = f->body + SHAPE_BYTES;
        for (size_t i = 0; i < cells; i++)
            if ((int32_t)get_u32(out->targets + 4 * i) < -1)
                return NS_EPARSE;
    }
    out->data = (const float *)(const void *)t->data;
    return NS_OK;
}
