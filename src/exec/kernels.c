/*
 * kernels.c: the forward/backward pairs of a NeuroLLM block, except attention (attention.c).
 *
 * Each kernel is a pair with the same arguments in the same order (llm.c's layout), a shape
 * comment in exec.h, and one parallel-for whose items are rows (or channels, for the gradients
 * of weights that every row touches). Every output element is computed by one worker in a fixed
 * order, and sums run in double from the first element to the last, so the results depend
 * neither on the thread count nor on the machine: these kernels serve both modes unchanged.
 * Backward kernels add into their gradients; the caller zeroes. Never call libm's exp or log here
 * (they differ by CPU): ns__det_expf and ns__det_log are the reproducible ones.
 */
#include <math.h>
#include <string.h>

#include "exec_internal.h"

#define CHANNEL_CHUNK 256 /* channels whose weight gradients one pass accumulates in registers */

/* ---- embedding ---------------------------------------------------------------------------- */

typedef struct embedding_args {
    float *out;
    float *dwte;
    const float *dout;
    const int32_t *tokens;
    const float *wte;
    size_t BT;
    size_t C;
} embedding_args;

static void embedding_forward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const embedding_args *a = arg;
    (void)worker;
    for (size_t bt = begin; bt < end; bt++) {
        NS_ASSERT(a->tokens[bt] >= 0);
        memcpy(a->out + bt * a->C, a->wte + (size_t)a->tokens[bt] * a->C, a->C * sizeof(float));
    }
}

void ns_embedding_forward(ns_exec *ex, float *out, const int32_t *tokens, const float *wte,
                          size_t B, size_t T, size_t C)
{
    embedding_args a = {.out = out, .tokens = tokens, .wte = wte, .BT = B * T, .C = C};
    ns__parallel_for(ex, B * T, embedding_forward_task, &a);
}

/* Items are channels: each worker adds every token's row into its own columns, in token order. */
static void embedding_backward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const embedding_args *a = arg;
    (void)worker;
    for (size_t bt = 0; bt < a->BT; bt++) {
        float *row = a->dwte + (size_t)a->tokens[bt] * a->C;
        const float *d = a->dout + bt * a->C;
        for (size_t c = begin; c < end; c++)
            row[c] += d[c];
    }
}

void ns_embedding_backward(ns_exec *ex, float *dwte, const float *dout, const int32_t *tokens,
                           size_t B, size_t T, size_t C)
{
    embedding_args a = {.dwte = dwte, .dout = dout, .tokens = tokens, .BT = B * T, .C = C};
    ns__parallel_for(ex, C, embedding_backward_task, &a);
}

/* ---- RMSNorm ------------------------------------------------------------------------------ */

typedef struct rmsnorm_args {
    float *out;
    float *rstd;
    float *dinp;
    float *dweight;
    const float *dout;
    const float *inp;
    const float *weight;
    const float *rstd_in;
    size_t BT;
    size_t C;
} rmsnorm_args;

static void rmsnorm_forward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const rmsnorm_args *a = arg;
    (void)worker;
    for (size_t bt = begin; bt < end; bt++) {
        const float *x = a->inp + bt * a->C;
        float *y = a->out + bt * a->C;
        double ss = 0.0;
        for (size_t c = 0; c < a->C; c++)
            ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / (double)a->C + NS_EXEC_RMSNORM_EPS));
        for (size_t c = 0; c < a->C; c++)
            y[c] = (x[c] * r) * a->weight[c];
        a->rstd[bt] = r;
    }
}

void ns_rmsnorm_forward(ns_exec *ex, float *out, float *rstd, const float *inp, const float *weight,
                        size_t B, size_t T, size_t C)
{
    rmsnorm_args a = {.out = out, .rstd = rstd, .inp = inp, .weight = weight, .BT = B * T, .C = C};
    ns__parallel_for(ex, B * T, rmsnorm_forward_task, &a);
}

/* y = w x r with r = (mean(x^2) + eps)^-1/2:  dx = r w dy - r^3 / C * x * sum(dy w x). */
static void rmsnorm_backward_rows_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const rmsnorm_args *a = arg;
    (void)worker;
    for (size_t bt = begin; bt < end; bt++) {
        const float *x = a->inp + bt * a->C;
        const float *dy = a->dout + bt * a->C;
        float *dx = a->dinp + bt * a->C;
        float r = a->rstd_in[bt];
        double dot = 0.0;
        for (size_t c = 0; c < a->C; c++)
            dot += (double)dy[c] * a->weight[c] * x[c];
        float coef = (float)((double)r * r * r * dot / (double)a->C);
        for (size_t c = 0; c < a->C; c++)
            dx[c] += r * (a->weight[c] * dy[c]) - coef * x[c];
    }
}

static void rmsnorm_backward_weight_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const rmsnorm_args *a = arg;
    (void)worker;
    double acc[CHANNEL_CHUNK];
    for (size_t c0 = begin; c0 < end; c0 += CHANNEL_CHUNK) {
        size_t n = end - c0 < CHANNEL_CHUNK ? end - c0 : CHANNEL_CHUNK;
        memset(acc, 0, sizeof acc);
        for (size_t bt = 0; bt < a->BT; bt++) {
            const float *x = a->inp + bt * a->C + c0;
            const float *dy = a->dout + bt * a->C + c0;
            float r = a->rstd_in[bt];
            for (size_t c = 0; c < n; c++)
                acc[c] += (double)(dy[c] * (x[c] * r));
        }
        for (size_t c = 0; c < n; c++)
            a->dweight[c0 + c] += (float)acc[c];
    }
}

void ns_rmsnorm_backward(ns_exec *ex, float *dinp, float *dweight, const float *dout,
                         const float *inp, const float *weight, const float *rstd, size_t B,
                         size_t T, size_t C)
{
    rmsnorm_args a = {.dinp = dinp,
                      .dweight = dweight,
                      .dout = dout,
                      .inp = inp,
                      .weight = weight,
                      .rstd_in = rstd,
                      .BT = B * T,
                      .C = C};
    ns__parallel_for(ex, B * T, rmsnorm_backward_rows_task, &a);
    ns__parallel_for(ex, C, rmsnorm_backward_weight_task, &a);
}

/* ---- matmul ------------------------------------------------------------------------------- */

void ns_matmul_forward(ns_exec *ex, float *out, const float *inp, const float *weight, size_t B,
                       size_t T, size_t C, size_t OC)
{
    /* out[BT,OC] = inp[BT,C] . weight[OC,C]^T */
    ns__gemm(ex, NS__WORKERS_ALL, false, true, B * T, OC, C, inp, C, weight, C, false, out, OC);
}

void ns_matmul_backward(ns_exec *ex, float *dinp, float *dweight, const float *dout,
                        const float *inp, const float *weight, size_t B, size_t T, size_t C,
                        size_t OC)
{
    /* dinp[BT,C] += dout[BT,OC] . weight[OC,C] */
    if (dinp != NULL)
        ns__gemm(ex, NS__WORKERS_ALL, false, false, B * T, C, OC, dout, OC, weight, C, true, dinp,
                 C);
    /* dweight[OC,C] += dout[BT,OC]^T . inp[BT,C] */
    ns__gemm(ex, NS__WORKERS_ALL, true, false, OC, C, B * T, dout, OC, inp, C, true, dweight, C);
}

/* ---- rotary embeddings -------------------------------------------------------------------- */

void ns_rope_table(float *cos_out, float *sin_out, size_t T, size_t D, double theta)
{
    NS_ASSERT(D % 2 == 0);
    NS_ASSERT(theta > 1.0);
    size_t half = D / 2;
    double log_theta = ns__det_log(theta);
    for (size_t i = 0; i < half; i++) {
        /* theta^(-2i/D), as Hugging Face's inv_freq, but in double */
        double inv_freq = ns__det_exp(-(double)(2 * i) / (double)D * log_theta);
        for (size_t t = 0; t < T; t++) {
            double s;
            double c;
            ns__det_sincos((double)t * inv_freq, &s, &c);
            cos_out[t * half + i] = (float)c;
            sin_out[t * half + i] = (float)s;
        }
    }
}

typedef struct rope_args {
    float *out;
    const float *inp;
    const float *cos_t;
    const float *sin_t;
    size_t T;
    size_t NH;
    size_t D;
    float direction; /* +1 forward, -1 the inverse rotation (backward) */
    bool add;        /* backward adds into out */
} rope_args;

static void rope_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const rope_args *a = arg;
    (void)worker;
    size_t half = a->D / 2;
    for (size_t bt = begin; bt < end; bt++) {
        const float *cs = a->cos_t + (bt % a->T) * half;
        const float *sn = a->sin_t + (bt % a->T) * half;
        for (size_t h = 0; h < a->NH; h++) {
            const float *x = a->inp + (bt * a->NH + h) * a->D;
            float *y = a->out + (bt * a->NH + h) * a->D;
            for (size_t i = 0; i < half; i++) {
                float x1 = x[i];
                float x2 = x[i + half];
                float s = a->direction * sn[i];
                float y1 = x1 * cs[i] - x2 * s;
                float y2 = x2 * cs[i] + x1 * s;
                y[i] = a->add ? y[i] + y1 : y1;
                y[i + half] = a->add ? y[i + half] + y2 : y2;
            }
        }
    }
}

void ns_rope_forward(ns_exec *ex, float *out, const float *inp, const float *cos_t,
                     const float *sin_t, size_t B, size_t T, size_t NH, size_t D)
{
    rope_args a = {.out = out,
                   .inp = inp,
                   .cos_t = cos_t,
                   .sin_t = sin_t,
                   .T = T,
                   .NH = NH,
                   .D = D,
                   .direction = 1.0f,
                   .add = false};
    ns__parallel_for(ex, B * T, rope_task, &a);
}

/* The rotation is orthogonal: its gradient is the rotation by the opposite angle. */
void ns_rope_backward(ns_exec *ex, float *dinp, const float *dout, const float *cos_t,
                      const float *sin_t, size_t B, size_t T, size_t NH, size_t D)
{
    NS_ASSERT(dinp != dout);
    rope_args a = {.out = dinp,
                   .inp = dout,
                   .cos_t = cos_t,
                   .sin_t = sin_t,
                   .T = T,
                   .NH = NH,
                   .D = D,
                   .direction = -1.0f,
                   .add = true};
    ns__parallel_for(ex, B * T, rope_task, &a);
}

/* ---- SwiGLU ------------------------------------------------------------------------------- */

typedef struct swiglu_args {
    float *out;
    float *dgate;
    float *dup;
    const float *dout;
    const float *gate;
    const float *up;
} swiglu_args;

#define SWIGLU_CHUNK 256 /* elements whose exp(-gate) one call computes */

/* s[j] = sigmoid(gate[j]) = 1 / (1 + exp(-gate[j])) for j < n <= SWIGLU_CHUNK. */
static void sigmoid_chunk(float *s, const float *gate, size_t n)
{
    for (size_t j = 0; j < n; j++)
        s[j] = -gate[j];
    ns__det_expf_array(s, s, n);
    for (size_t j = 0; j < n; j++)
        s[j] = 1.0f / (1.0f + s[j]);
}

static void swiglu_forward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const swiglu_args *a = arg;
    (void)worker;
    float s[SWIGLU_CHUNK];
    for (size_t i0 = begin; i0 < end; i0 += SWIGLU_CHUNK) {
        size_t n = end - i0 < SWIGLU_CHUNK ? end - i0 : SWIGLU_CHUNK;
        sigmoid_chunk(s, a->gate + i0, n);
        for (size_t j = 0; j < n; j++)
            a->out[i0 + j] = (a->gate[i0 + j] * s[j]) * a->up[i0 + j];
    }
}

/* silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g). */
static void swiglu_backward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const swiglu_args *a = arg;
    (void)worker;
    float s[SWIGLU_CHUNK];
    for (size_t i0 = begin; i0 < end; i0 += SWIGLU_CHUNK) {
        size_t n = end - i0 < SWIGLU_CHUNK ? end - i0 : SWIGLU_CHUNK;
        sigmoid_chunk(s, a->gate + i0, n);
        for (size_t j = 0; j < n; j++) {
            size_t i = i0 + j;
            float g = a->gate[i];
            float silu = g * s[j];
            float dsilu = s[j] * (1.0f + g * (1.0f - s[j]));
            a->dgate[i] += a->dout[i] * a->up[i] * dsilu;
            a->dup[i] += a->dout[i] * silu;
        }
    }
}

void ns_swiglu_forward(ns_exec *ex, float *out, const float *gate, const float *up, size_t B,
                       size_t T, size_t F)
{
    swiglu_args a = {.out = out, .gate = gate, .up = up};
    ns__parallel_for(ex, B * T * F, swiglu_forward_task, &a);
}

void ns_swiglu_backward(ns_exec *ex, float *dgate, float *dup, const float *dout, const float *gate,
                        const float *up, size_t B, size_t T, size_t F)
{
    swiglu_args a = {.dgate = dgate, .dup = dup, .dout = dout, .gate = gate, .up = up};
    ns__parallel_for(ex, B * T * F, swiglu_backward_task, &a);
}

/* ---- residual ----------------------------------------------------------------------------- */

typedef struct residual_args {
    float *out;
    float *out2;
    const float *inp1;
    const float *inp2;
} residual_args;

static void residual_forward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const residual_args *a = arg;
    (void)worker;
    for (size_t i = begin; i < end; i++)
        a->out[i] = a->inp1[i] + a->inp2[i];
}

static void residual_backward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const residual_args *a = arg;
    (void)worker;
    for (size_t i = begin; i < end; i++) {
        a->out[i] += a->inp1[i];
        a->out2[i] += a->inp1[i];
    }
}

void ns_residual_forward(ns_exec *ex, float *out, const float *inp1, const float *inp2, size_t N)
{
    residual_args a = {.out = out, .inp1 = inp1, .inp2 = inp2};
    ns__parallel_for(ex, N, residual_forward_task, &a);
}

void ns_residual_backward(ns_exec *ex, float *dinp1, float *dinp2, const float *dout, size_t N)
{
    residual_args a = {.out = dinp1, .out2 = dinp2, .inp1 = dout};
    ns__parallel_for(ex, N, residual_backward_task, &a);
}

/* ---- softmax cross-entropy ---------------------------------------------------------------- */

typedef struct xent_args {
    float *losses;
    float *probs;
    float *dlogits;
    const float *dlosses;
    const float *logits;
    const float *probs_in;
    const int32_t *targets;
    size_t V;
} xent_args;

static void xent_forward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const xent_args *a = arg;
    (void)worker;
    for (size_t bt = begin; bt < end; bt++) {
        const float *x = a->logits + bt * a->V;
        float *p = a->probs + bt * a->V;
        int32_t target = a->targets[bt];
        float max = x[0];
        for (size_t i = 1; i < a->V; i++)
            max = x[i] > max ? x[i] : max;
        float x_target = target == NS_EXEC_IGNORE_INDEX ? 0.0f : x[target]; /* p may be x */
        for (size_t i = 0; i < a->V; i++)
            p[i] = x[i] - max;
        ns__det_expf_array(p, p, a->V);
        double sum = 0.0;
        for (size_t i = 0; i < a->V; i++)
            sum += p[i];
        float inv = (float)(1.0 / sum);
        for (size_t i = 0; i < a->V; i++)
            p[i] *= inv;
        a->losses[bt] = target == NS_EXEC_IGNORE_INDEX
                            ? 0.0f
                            : (float)((double)max + ns__det_log(sum) - (double)x_target);
    }
}

static void xent_backward_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const xent_args *a = arg;
    (void)worker;
    for (size_t bt = begin; bt < end; bt++) {
        int32_t target = a->targets[bt];
        if (target == NS_EXEC_IGNORE_INDEX)
            continue;
        const float *p = a->probs_in + bt * a->V;
        float *d = a->dlogits + bt * a->V;
        float dloss = a->dlosses[bt];
        for (size_t i = 0; i < a->V; i++)
            d[i] += (p[i] - (i == (size_t)target ? 1.0f : 0.0f)) * dloss;
    }
}

void ns_softmax_crossentropy_forward(ns_exec *ex, float *losses, float *probs, const float *logits,
                                     const int32_t *targets, size_t B, size_t T, size_t V)
{
    NS_ASSERT(V > 0);
    xent_args a = {.losses = losses, .probs = probs, .logits = logits, .targets = targets, .V = V};
    ns__parallel_for(ex, B * T, xent_forward_task, &a);
}

void ns_softmax_crossentropy_backward(ns_exec *ex, float *dlogits, const float *dlosses,
                                      const float *probs, const int32_t *targets, size_t B,
                                      size_t T, size_t V)
{
    xent_args a = {
        .dlogits = dlogits, .dlosses = dlosses, .probs_in = probs, .targets = targets, .V = V};
    ns__parallel_for(ex, B * T, xent_backward_task, &a);
}
