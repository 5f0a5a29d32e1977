/*
 * decode.c: inference through a stage with a key/value cache (batch 1, no gradients).
 *
 * A cache holds, for each of the stage's layers, the rotated keys and the values of every
 * position seen so far ([capacity, HKV, D] each), and its own working buffers for a chunk of
 * NS_EXEC_DECODE_CHUNK positions, so decoding never touches the stage's micro-batch slots: a
 * trainer can generate between two steps without disturbing a forward in flight. A pass is the
 * training forward (stage_pass.c) restricted to the new positions: the same kernels, with the
 * rotary table read from the first new position and attention over the cached prefix
 * (ns_attention_decode). A long prompt is run chunk by chunk, so memory does not grow with it.
 */
#include <stdlib.h>
#include <string.h>

#include "stage_internal.h"

struct ns_kv_cache {
    const ns_stage *st;
    ns_exec *ex; /* the executor decoding runs on: the stage's unless set */
    uint32_t capacity;
    uint32_t len;
    size_t C, H, HKV, D, HD, KD, F;
    float *k; /* [layers][capacity][KD] */
    float *v;
    /* one chunk's buffers, and the attention scores of every worker */
    float *x, *ln, *rstd, *q, *y, *tmp, *mid, *gate, *up, *h, *scores;
    float *mem;
};

/* The cache's floats, in the order kv_carve hands them out. */
typedef struct kv_layout {
    size_t kv, x, ln, rstd, q, y, tmp, mid, gate, up, h, scores;
} kv_layout;

static bool kv_layout_of(const ns_stage *st, uint32_t capacity, kv_layout *l, size_t *total)
{
    const ns_arch *a = &st->cfg.arch;
    size_t KD = (size_t)a->kv_heads * NS_ARCH_HEAD_DIM, C = a->hidden, F = a->intermediate;
    size_t N = NS_EXEC_DECODE_CHUNK;
    size_t kv;
    if (__builtin_mul_overflow((size_t)st->n_layers, (size_t)capacity, &kv) ||
        __builtin_mul_overflow(kv, KD, &kv))
        return false;
    *l = (kv_layout){.kv = kv,
                     .x = N * C,
                     .ln = N * C,
                     .rstd = N,
                     .q = N * C,
                     .y = N * C,
                     .tmp = N * C,
                     .mid = N * C,
                     .gate = N * F,
                     .up = N * F,
                     .h = N * F,
                     .scores = (size_t)NS_EXEC_THREADS_MAX * capacity};
    size_t sum = 0;
    const size_t parts[] = {l->kv,  l->kv,  l->x,    l->ln, l->rstd, l->q,     l->y,
                            l->tmp, l->mid, l->gate, l->up, l->h,    l->scores};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (__builtin_add_overflow(sum, parts[i], &sum))
            return false;
    *total = sum;
    return true;
}

int ns_kv_cache_memory_bytes(const ns_stage *st, uint32_t capacity, uint64_t *out)
{
    if (capacity == 0 || capacity > st->cfg.seq_len_max)
        return NS_EINVAL;
    kv_layout l;
    size_t floats;
    if (!kv_layout_of(st, capacity, &l, &floats) || floats > SIZE_MAX / sizeof(float))
        return NS_EOVERFLOW;
    *out = (uint64_t)floats * sizeof(float) + sizeof(ns_kv_cache);
    return NS_OK;
}

int ns_kv_cache_new(ns_kv_cache **out, const ns_stage *st, uint32_t capacity)
{
    uint64_t bytes;
    int rc = ns_kv_cache_memory_bytes(st, capacity, &bytes);
    if (rc != NS_OK)
        return rc;
    kv_layout l;
    size_t floats;
    (void)kv_layout_of(st, capacity, &l, &floats);
    ns_kv_cache *kv = calloc(1, sizeof *kv);
    float *mem = malloc(floats * sizeof(float));
    if (kv == NULL || mem == NULL) {
        free(kv);
        free(mem);
        return NS_ENOMEM;
    }
    const ns_arch *a = &st->cfg.arch;
    *kv = (ns_kv_cache){.st = st,
                        .capacity = capacity,
                        .C = a->hidden,
                        .H = a->heads,
                        .HKV = a->kv_heads,
                        .D = NS_ARCH_HEAD_DIM,
                        .HD = a->hidden,
                        .KD = (size_t)a->kv_heads * NS_ARCH_HEAD_DIM,
                        .F = a->intermediate,
                        .mem = mem};
    kv->ex = st->ex;
    float *p = mem;
    kv->k = p, p += l.kv;
    kv->v = p, p += l.kv;
    kv->x = p, p += l.x;
    kv->ln = p, p += l.ln;
    kv->rstd = p, p += l.rstd;
    kv->q = p, p += l.q;
    kv->y = p, p += l.y;
    kv->tmp = p, p += l.tmp;
    kv->mid = p, p += l.mid;
    kv->gate = p, p += l.gate;
    kv->up = p, p += l.up;
    kv->h = p, p += l.h;
    kv->scores = p;
    *out = kv;
    return NS_OK;
}

void ns_kv_cache_free(ns_kv_cache *kv)
{
    if (kv == NULL)
        return;
    free(kv->mem);
    free(kv);
}

void ns_kv_cache_set_exec(ns_kv_cache *kv, ns_exec *ex)
{
    NS_ASSERT(ex != NULL && ns_exec_threads(ex) <= NS_EXEC_THREADS_MAX);
    kv->ex = ex;
}

void ns_kv_cache_reset(ns_kv_cache *kv)
{
    kv->len = 0;
}

uint32_t ns_kv_cache_len(const ns_kv_cache *kv)
{
    return kv->len;
}

uint32_t ns_kv_cache_capacity(const ns_kv_cache *kv)
{
    return kv->capacity;
}

/* One layer over m new positions at pos: x [m,C] in, x [m,C] out. */
static void layer_decode(ns_stage *st, ns_kv_cache *kv, uint32_t l, size_t pos, size_t m)
{
    ns_exec *ex = kv->ex;
    float *const *w = st->layer_w[l].w;
    size_t C = kv->C, KD = kv->KD, F = kv->F, half = kv->D / 2;
    float *kl = kv->k + (size_t)l * kv->capacity * KD; /* this layer's keys, position 0 */
    float *vl = kv->v + (size_t)l * kv->capacity * KD;
    const float *cos_t = st->rope_cos + pos * half, *sin_t = st->rope_sin + pos * half;

    ns_rmsnorm_forward(ex, kv->ln, kv->rstd, kv->x, w[LAYER_INPUT_NORM], 1, m, C);
    ns_matmul_forward(ex, kv->q, kv->ln, w[LAYER_Q], 1, m, C, kv->HD);
    ns_rope_forward(ex, kv->q, kv->q, cos_t, sin_t, 1, m, kv->H, kv->D);
    ns_matmul_forward(ex, kl + pos * KD, kv->ln, w[LAYER_K], 1, m, C, KD);
    ns_rope_forward(ex, kl + pos * KD, kl + pos * KD, cos_t, sin_t, 1, m, kv->HKV, kv->D);
    ns_matmul_forward(ex, vl + pos * KD, kv->ln, w[LAYER_V], 1, m, C, KD);
    ns_attention_decode(ex, kv->y, kv->q, kl, vl, m, pos, kv->H, kv->HKV, kv->D, kv->scores);
    ns_matmul_forward(ex, kv->tmp, kv->y, w[LAYER_O], 1, m, kv->HD, C);
    ns_residual_forward(ex, kv->mid, kv->x, kv->tmp, m * C);

    ns_rmsnorm_forward(ex, kv->ln, kv->rstd, kv->mid, w[LAYER_POST_NORM], 1, m, C);
    ns_matmul_forward(ex, kv->gate, kv->ln, w[LAYER_GATE], 1, m, C, F);
    ns_matmul_forward(ex, kv->up, kv->ln, w[LAYER_UP], 1, m, C, F);
    ns_swiglu_forward(ex, kv->h, kv->gate, kv->up, 1, m, F);
    ns_matmul_forward(ex, kv->tmp, kv->h, w[LAYER_DOWN], 1, m, F, C);
    ns_residual_forward(ex, kv->x, kv->mid, kv->tmp, m * C);
}

int ns_stage_decode(ns_stage *st, ns_kv_cache *kv, uint32_t n, const int32_t *tokens,
                    const float *acts, float *out)
{
    if (kv == NULL || kv->st != st || n == 0 || out == NULL)
        return NS_EINVAL;
    if (st->has_embedding ? tokens == NULL : acts == NULL)
        return NS_EINVAL;
    if (st->has_embedding)
        for (uint32_t i = 0; i < n; i++)
            if (tokens[i] < 0 || (uint32_t)tokens[i] >= st->cfg.arch.vocab)
                return NS_EINVAL;
    if (n > kv->capacity - kv->len)
        return NS_ELIMIT;

    size_t C = kv->C;
    for (uint32_t done = 0; done < n;) {
        size_t m = n - done < NS_EXEC_DECODE_CHUNK ? n - done : NS_EXEC_DECODE_CHUNK;
        size_t pos = kv->len;
        if (st->has_embedding)
            ns_embedding_forward(kv->ex, kv->x, tokens + done, st->wte, 1, m, C);
        else
            memcpy(kv->x, acts + (size_t)done * C, m * C * sizeof(float));
        for (uint32_t l = 0; l < st->n_layers; l++)
            layer_decode(st, kv, l, pos, m);
        kv->len += (uint32_t)m;
        done += (uint32_t)m;
        if (!st->has_head)
            memcpy(out + (size_t)(done - m) * C, kv->x, m * C * sizeof(float));
        else if (done == n) {
            const float *last = kv->x + (m - 1) * C;
            ns_rmsnorm_forward(kv->ex, kv->ln, kv->rstd, last, st->normf, 1, 1, C);
            ns_matmul_forward(kv->ex, out, kv->ln, st->head, 1, 1, C, st->cfg.arch.vocab);
        }
    }
    return NS_OK;
}
