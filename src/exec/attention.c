/*
 * attention.c: causal grouped-query attention, forward and backward.
 *
 * One task per (batch row, key/value head): it runs the H / HKV query heads that share that
 * key/value head one after the other, so the gradients of a shared k and v are summed in head
 * order by one worker, whatever the thread count. Inside a task the products are matrix
 * multiplies on strided views of the [B,T,H,D] activations (ns__gemm on one worker: OpenBLAS is
 * switched to one thread for the region in the fast mode, our own kernel in the reproducible
 * one), and the softmax runs row by row with its sums in double. Queries go in blocks of ATT_ROWS
 * rows that multiply only the keys up to their block's last row, so most of the masked part
 * above the diagonal is never computed; the stored probabilities are zero there.
 */
#include <math.h>
#include <string.h>

#include "exec_internal.h"

#define ATT_ROWS 32 /* query rows a block: keys beyond the block's last row are skipped */

typedef struct attention_args {
    ns_exec *ex;
    float *out;
    float *att;
    float *dq;
    float *dk;
    float *dv;
    float *scratch;
    const float *dout;
    const float *q;
    const float *k;
    const float *v;
    const float *att_in;
    size_t T;
    size_t H;
    size_t HKV;
    size_t D;
    float scale;
} attention_args;

/* Scales, masks and normalises row t of the scores in place (columns 0..T-1). */
static void causal_softmax_row(float *row, size_t t, size_t T, float scale)
{
    float max = row[0] * scale;
    for (size_t j = 1; j <= t; j++)
        max = row[j] * scale > max ? row[j] * scale : max;
    for (size_t j = 0; j <= t; j++)
        row[j] = row[j] * scale - max;
    ns__det_expf_array(row, row, t + 1);
    double sum = 0.0;
    for (size_t j = 0; j <= t; j++)
        sum += row[j];
    float inv = (float)(1.0 / sum);
    for (size_t j = 0; j <= t; j++)
        row[j] *= inv;
    for (size_t j = t + 1; j < T; j++)
        row[j] = 0.0f;
}

/* One query head against its key/value head, in blocks of ATT_ROWS query rows: rows [i0, i1)
 * see keys [0, i1) only, so the part above the diagonal is never multiplied. */
static void head_forward(const attention_args *a, uint32_t worker, const float *q, const float *k,
                         const float *v, float *att, float *out)
{
    size_t T = a->T, D = a->D, HD = a->H * D, KD = a->HKV * D;
    for (size_t i0 = 0; i0 < T; i0 += ATT_ROWS) {
        size_t i1 = i0 + ATT_ROWS < T ? i0 + ATT_ROWS : T;
        /* att[i0:i1, 0:i1] = q[i0:i1] . k[0:i1]^T */
        ns__gemm(a->ex, worker, false, true, i1 - i0, i1, D, q + i0 * HD, HD, k, KD, false,
                 att + i0 * T, T);
        for (size_t t = i0; t < i1; t++)
            causal_softmax_row(att + t * T, t, T, a->scale);
        /* out[i0:i1] = att[i0:i1, 0:i1] . v[0:i1] */
        ns__gemm(a->ex, worker, false, false, i1 - i0, D, i1, att + i0 * T, T, v, KD, false,
                 out + i0 * HD, HD);
    }
}

static void attention_forward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const attention_args *a = arg;
    size_t T = a->T, D = a->D, HD = a->H * D, KD = a->HKV * D;
    size_t group = a->H / a->HKV;
    for (size_t item = begin; item < end; item++) {
        size_t b = item / a->HKV;
        size_t g = item % a->HKV;
        for (size_t h = g * group; h < (g + 1) * group; h++)
            head_forward(a, worker, a->q + b * T * HD + h * D, a->k + b * T * KD + g * D,
                         a->v + b * T * KD + g * D, a->att + (b * a->H + h) * T * T,
                         a->out + b * T * HD + h * D);
    }
}

/* Rows [i0, i1) of datt -> dscores in place, columns [0, i1):
 * ds = p (dp - sum_j p dp) * scale, zero above the diagonal. */
static void softmax_backward_rows(float *dp, const float *p, size_t i0, size_t i1, size_t T,
                                  float scale)
{
    for (size_t t = i0; t < i1; t++) {
        float *drow = dp + t * T;
        const float *prow = p + t * T;
        double dot = 0.0;
        for (size_t j = 0; j <= t; j++)
            dot += (double)prow[j] * drow[j];
        float dot_f = (float)dot;
        for (size_t j = 0; j <= t; j++)
            drow[j] = prow[j] * (drow[j] - dot_f) * scale;
        for (size_t j = t + 1; j < i1; j++)
            drow[j] = 0.0f;
    }
}

/* The pointers of one query head and its key/value head in a backward task. */
typedef struct head_views {
    const float *q, *k, *v, *dout, *att;
    float *ds, *dq, *dk, *dv;
} head_views;

static void head_backward(const attention_args *a, uint32_t worker, const head_views *hv)
{
    size_t T = a->T, D = a->D, HD = a->H * D, KD = a->HKV * D;
    for (size_t i0 = 0; i0 < T; i0 += ATT_ROWS) {
        size_t i1 = i0 + ATT_ROWS < T ? i0 + ATT_ROWS : T;
        size_t rows = i1 - i0;
        const float *att = hv->att + i0 * T;
        float *ds = hv->ds + i0 * T;
        /* datt[i0:i1, 0:i1] = dout[i0:i1] . v[0:i1]^T; then the softmax's backward in place */
        ns__gemm(a->ex, worker, false, true, rows, i1, D, hv->dout + i0 * HD, HD, hv->v, KD, false,
                 ds, T);
        softmax_backward_rows(hv->ds, hv->att, i0, i1, T, a->scale);
        /* dq[i0:i1] += ds . k[0:i1];  dk[0:i1] += ds^T . q[i0:i1];  dv[0:i1] += att^T . dout */
        ns__gemm(a->ex, worker, false, false, rows, D, i1, ds, T, hv->k, KD, true, hv->dq + i0 * HD,
                 HD);
        ns__gemm(a->ex, worker, true, false, i1, D, rows, ds, T, hv->q + i0 * HD, HD, true, hv->dk,
                 KD);
        ns__gemm(a->ex, worker, true, false, i1, D, rows, att, T, hv->dout + i0 * HD, HD, true,
                 hv->dv, KD);
    }
}

static void attention_backward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const attention_args *a = arg;
    size_t T = a->T, D = a->D, HD = a->H * D, KD = a->HKV * D;
    size_t group = a->H / a->HKV;
    for (size_t item = begin; item < end; item++) {
        size_t b = item / a->HKV;
        size_t g = item % a->HKV;
        for (size_t h = g * group; h < (g + 1) * group; h++) {
            head_views hv = {.q = a->q + b * T * HD + h * D,
                             .k = a->k + b * T * KD + g * D,
                             .v = a->v + b * T * KD + g * D,
                             .dout = a->dout + b * T * HD + h * D,
                             .att = a->att_in + (b * a->H + h) * T * T,
                             .ds = a->scratch + (b * a->H + h) * T * T,
                             .dq = a->dq + b * T * HD + h * D,
                             .dk = a->dk + b * T * KD + g * D,
                             .dv = a->dv + b * T * KD + g * D};
            head_backward(a, worker, &hv);
        }
    }
}

static void run_heads(ns_exec *ex, size_t B, const attention_args *a, ns__task_fn task)
{
    NS_ASSERT(a->H % a->HKV == 0);
    if (ex->mode == NS_EXEC_FAST)
        ns__blas_set_threads(1); /* each worker multiplies its own heads */
    ns__parallel_for(ex, B * a->HKV, task, (void *)a);
    if (ex->mode == NS_EXEC_FAST)
        ns__blas_set_threads(ex->threads);
}

void ns_attention_forward(ns_exec *ex, float *out, float *att, const float *q, const float *k,
                          const float *v, size_t B, size_t T, size_t H, size_t HKV, size_t D)
{
    attention_args a = {.ex = ex,
                        .out = out,
                        .att = att,
                        .q = q,
                        .k = k,
                        .v = v,
                        .T = T,
                        .H = H,
                        .HKV = HKV,
                        .D = D,
                        .scale = (float)(1.0 / sqrt((double)D))};
    run_heads(ex, B, &a, attention_forward_task);
}

void ns_attention_backward(ns_exec *ex, float *dq, float *dk, float *dv, float *scratch,
                           const float *dout, const float *q, const float *k, const float *v,
                           const float *att, size_t B, size_t T, size_t H, size_t HKV, size_t D)
{
    attention_args a = {.ex = ex,
                        .dq = dq,
                        .dk = dk,
                        .dv = dv,
                        .scratch = scratch,
                        .dout = dout,
                        .q = q,
                        .k = k,
                        .v = v,
                        .att_in = att,
                        .T = T,
                        .H = H,
                        .HKV = HKV,
                        .D = D,
                        .scale = (float)(1.0 / sqrt((double)D))};
    run_heads(ex, B, &a, attention_backward_task);
}

/* ---- decoding over a key/value cache ------------------------------------------------------ */

typedef struct decode_args {
    float *out;
    float *scratch; /* stride floats a worker */
    const float *q;
    const float *k;
    const float *v;
    size_t pos;
    size_t stride;
    size_t H;
    size_t HKV;
    size_t D;
    float scale;
} decode_args;

/* One (new row, query head) an item: scores over keys 0..p, the causal softmax of the training
 * forward (same exp, sums in double), then the weighted sum of the values in key order. */
static void decode_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const decode_args *a = arg;
    size_t D = a->D, HD = a->H * D, KD = a->HKV * D, group = a->H / a->HKV;
    float *scores = a->scratch + (size_t)worker * a->stride;
    for (size_t item = begin; item < end; item++) {
        size_t i = item / a->H, h = item % a->H, g = h / group;
        size_t p = a->pos + i; /* the row's absolute position: it sees keys 0..p */
        const float *qr = a->q + i * HD + h * D;
        for (size_t j = 0; j <= p; j++) {
            const float *kr = a->k + j * KD + g * D;
            float dot = 0.0f;
            for (size_t d = 0; d < D; d++)
                dot += qr[d] * kr[d];
            scores[j] = dot;
        }
        causal_softmax_row(scores, p, p + 1, a->scale);
        float *out = a->out + i * HD + h * D;
        memset(out, 0, D * sizeof *out);
        for (size_t j = 0; j <= p; j++) {
            const float *vr = a->v + j * KD + g * D;
            float w = scores[j];
            for (size_t d = 0; d < D; d++)
                out[d] += w * vr[d];
        }
    }
}

void ns_attention_decode(ns_exec *ex, float *out, const float *q, const float *k, const float *v,
                         size_t n, size_t pos, size_t H, size_t HKV, size_t D, float *scratch)
{
    NS_ASSERT(H % HKV == 0);
    decode_args a = {.out = out,
                     .scratch = scratch,
                     .q = q,
                     .k = k,
                     .v = v,
                     .pos = pos,
                     .stride = pos + n,
                     .H = H,
                     .HKV = HKV,
                     .D = D,
                     .scale = (float)(1.0 / sqrt((double)D))};
    ns__parallel_for(ex, n * H, decode_task, &a);
}
