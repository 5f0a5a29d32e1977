/*
 * stage_pass.c: a stage's forward and backward over its micro-batch slots.
 *
 * Forward fills a free slot with everything backward needs (the residual stream at every layer
 * boundary, norms, rotated q and k, v, attention probabilities, MLP activations, and at the head
 * the probabilities and losses) and returns the stage's output; backward walks the same layers in
 * reverse through the shared scratch, adds the parameter gradients into the flat gradient buffer
 * and frees the slot. A block is pre-norm Llama:
 *     mid = x + o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))));  out = mid +
 * down(silu(gate(n2(mid))) * up(n2(mid))) Bad input (shapes, token ids, unknown micro-batch ids) is
 * refused with an error before any state changes; broken invariants are assertions.
 */
#include <string.h>

#include "stage_internal.h"

/* The shape of the micro-batch in a slot. */
typedef struct pass_dims {
    size_t B, T, BT, C, H, HKV, D, HD, KD, F, V;
} pass_dims;

static pass_dims pass_dims_of(const ns_stage *st, uint32_t B, uint32_t T)
{
    const ns_arch *a = &st->cfg.arch;
    return (pass_dims){.B = B,
                       .T = T,
                       .BT = (size_t)B * T,
                       .C = a->hidden,
                       .H = a->heads,
                       .HKV = a->kv_heads,
                       .D = NS_ARCH_HEAD_DIM,
                       .HD = a->hidden,
                       .KD = (size_t)a->kv_heads * NS_ARCH_HEAD_DIM,
                       .F = a->intermediate,
                       .V = a->vocab};
}

static float *res_at(const stage_slot *s, const pass_dims *d, uint32_t l)
{
    return s->res + (size_t)l * d->BT * d->C;
}

static void zero_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    (void)worker;
    memset((float *)arg + begin, 0, (end - begin) * sizeof(float));
}

/* Zeroes a gradient buffer on every worker (a single thread would leave the others idle). */
static void zero(ns_exec *ex, float *p, size_t n)
{
    ns__parallel_for(ex, n, zero_task, p);
}

/* ---- forward ------------------------------------------------------------------------------ */

static void block_forward(ns_stage *st, stage_slot *s, const pass_dims *d, uint32_t l)
{
    ns_exec *ex = st->ex;
    float *const *w = st->layer_w[l].w;
    layer_acts *a = &s->layers[l];
    float *x = res_at(s, d, l);
    float *tmp = st->scratch.tmp;
    size_t B = d->B, T = d->T;

    ns_rmsnorm_forward(ex, a->ln1, a->rstd1, x, w[LAYER_INPUT_NORM], B, T, d->C);
    ns_matmul_forward(ex, a->q, a->ln1, w[LAYER_Q], B, T, d->C, d->HD);
    ns_rope_forward(ex, a->q, a->q, st->rope_cos, st->rope_sin, B, T, d->H, d->D);
    ns_matmul_forward(ex, a->k, a->ln1, w[LAYER_K], B, T, d->C, d->KD);
    ns_rope_forward(ex, a->k, a->k, st->rope_cos, st->rope_sin, B, T, d->HKV, d->D);
    ns_matmul_forward(ex, a->v, a->ln1, w[LAYER_V], B, T, d->C, d->KD);
    ns_attention_forward(ex, a->y, a->att, a->q, a->k, a->v, B, T, d->H, d->HKV, d->D);
    ns_matmul_forward(ex, tmp, a->y, w[LAYER_O], B, T, d->HD, d->C);
    ns_residual_forward(ex, a->mid, x, tmp, d->BT * d->C);

    ns_rmsnorm_forward(ex, a->ln2, a->rstd2, a->mid, w[LAYER_POST_NORM], B, T, d->C);
    ns_matmul_forward(ex, a->gate, a->ln2, w[LAYER_GATE], B, T, d->C, d->F);
    ns_matmul_forward(ex, a->up, a->ln2, w[LAYER_UP], B, T, d->C, d->F);
    ns_swiglu_forward(ex, a->h, a->gate, a->up, B, T, d->F);
    ns_matmul_forward(ex, tmp, a->h, w[LAYER_DOWN], B, T, d->F, d->C);
    ns_residual_forward(ex, res_at(s, d, l + 1), a->mid, tmp, d->BT * d->C);
}

/* The mean loss over counted targets, summed in token order. */
static float head_forward(ns_stage *st, stage_slot *s, const pass_dims *d)
{
    ns_exec *ex = st->ex;
    float *x = res_at(s, d, st->n_layers);
    ns_rmsnorm_forward(ex, s->lnf, s->rstdf, x, st->normf, d->B, d->T, d->C);
    ns_matmul_forward(ex, s->probs, s->lnf, st->head, d->B, d->T, d->C, d->V);
    ns_softmax_crossentropy_forward(ex, s->losses, s->probs, s->probs, s->targets, d->B, d->T,
                                    d->V);
    double sum = 0.0;
    for (size_t i = 0; i < d->BT; i++)
        sum += s->losses[i];
    return s->counted == 0 ? 0.0f : (float)(sum / s->counted);
}

static bool ids_in_range(const int32_t *ids, size_t n, uint32_t vocab, bool allow_ignore)
{
    for (size_t i = 0; i < n; i++) {
        if (allow_ignore && ids[i] == NS_EXEC_IGNORE_INDEX)
            continue;
        if (ids[i] < 0 || (uint32_t)ids[i] >= vocab)
            return false;
    }
    return true;
}

static int check_input(const ns_stage *st, const ns_stage_input *in, const float *out)
{
    if (in->batch == 0 || in->batch > st->cfg.batch_max)
        return NS_EINVAL;
    if (in->seq_len == 0 || in->seq_len > st->cfg.seq_len_max)
        return NS_EINVAL;
    size_t n = (size_t)in->batch * in->seq_len;
    uint32_t vocab = st->cfg.arch.vocab;
    if (out == NULL)
        return NS_EINVAL;
    if (st->has_embedding && (in->tokens == NULL || !ids_in_range(in->tokens, n, vocab, false)))
        return NS_EINVAL;
    if (!st->has_embedding && in->acts == NULL)
        return NS_EINVAL;
    if (st->has_head && (in->targets == NULL || !ids_in_range(in->targets, n, vocab, true)))
        return NS_EINVAL;
    return NS_OK;
}

static stage_slot *find_slot(ns_stage *st, uint64_t id)
{
    for (uint32_t i = 0; i < st->cfg.micro_batches_max; i++) {
        if (st->slots[i].used && st->slots[i].id == id)
            return &st->slots[i];
    }
    return NULL;
}

static stage_slot *free_slot(ns_stage *st)
{
    for (uint32_t i = 0; i < st->cfg.micro_batches_max; i++) {
        if (!st->slots[i].used)
            return &st->slots[i];
    }
    return NULL;
}

/* Copies the input into the slot and counts the targets. */
static void take_input(ns_stage *st, stage_slot *s, const ns_stage_input *in, const pass_dims *d)
{
    if (st->has_embedding) {
        memcpy(s->tokens, in->tokens, d->BT * sizeof(int32_t));
        ns_embedding_forward(st->ex, s->res, s->tokens, st->wte, d->B, d->T, d->C);
    } else {
        memcpy(s->res, in->acts, d->BT * d->C * sizeof(float));
    }
    s->counted = 0;
    if (st->has_head) {
        memcpy(s->targets, in->targets, d->BT * sizeof(int32_t));
        for (size_t i = 0; i < d->BT; i++)
            s->counted += s->targets[i] != NS_EXEC_IGNORE_INDEX;
    }
}

int ns_stage_forward(ns_stage *st, uint64_t micro_batch_id, const ns_stage_input *in, float *out)
{
    NS_ASSERT(st != NULL);
    NS_ASSERT(in != NULL);
    int err = check_input(st, in, out);
    if (err != NS_OK)
        return err;
    if (find_slot(st, micro_batch_id) != NULL)
        return NS_EEXIST;
    stage_slot *s = free_slot(st);
    if (s == NULL)
        return NS_ELIMIT;
    pass_dims d = pass_dims_of(st, in->batch, in->seq_len);
    s->used = true;
    s->id = micro_batch_id;
    s->B = in->batch;
    s->T = in->seq_len;
    take_input(st, s, in, &d);
    for (uint32_t l = 0; l < st->n_layers; l++)
        block_forward(st, s, &d, l);
    if (st->has_head)
        out[0] = head_forward(st, s, &d);
    else
        memcpy(out, res_at(s, &d, st->n_layers), d.BT * d.C * sizeof(float));
    return NS_OK;
}

/* ---- backward ----------------------------------------------------------------------------- */

/* The MLP half: from the gradient of the block's output (dres) to the gradient of mid. */
static void mlp_backward(ns_stage *st, stage_slot *s, const pass_dims *d, uint32_t l)
{
    ns_exec *ex = st->ex;
    float *const *w = st->layer_w[l].w;
    float *const *dw = st->layer_dw[l].w;
    layer_acts *a = &s->layers[l];
    stage_scratch *sc = &st->scratch;
    size_t B = d->B, T = d->T, btc = d->BT * d->C, btf = d->BT * d->F;

    zero(ex, sc->dmid, btc);
    zero(ex, sc->dproj, btc);
    ns_residual_backward(ex, sc->dmid, sc->dproj, sc->dres, btc);
    zero(ex, sc->dh, btf);
    ns_matmul_backward(ex, sc->dh, dw[LAYER_DOWN], sc->dproj, a->h, w[LAYER_DOWN], B, T, d->F,
                       d->C);
    zero(ex, sc->dgate, btf);
    zero(ex, sc->dup, btf);
    ns_swiglu_backward(ex, sc->dgate, sc->dup, sc->dh, a->gate, a->up, B, T, d->F);
    zero(ex, sc->dln, btc);
    ns_matmul_backward(ex, sc->dln, dw[LAYER_GATE], sc->dgate, a->ln2, w[LAYER_GATE], B, T, d->C,
                       d->F);
    ns_matmul_backward(ex, sc->dln, dw[LAYER_UP], sc->dup, a->ln2, w[LAYER_UP], B, T, d->C, d->F);
    ns_rmsnorm_backward(ex, sc->dmid, dw[LAYER_POST_NORM], sc->dln, a->mid, w[LAYER_POST_NORM],
                        a->rstd2, B, T, d->C);
}

/* The attention half: from the gradient of mid to the gradient of the block's input (dx). */
static void attention_half_backward(ns_stage *st, stage_slot *s, const pass_dims *d, uint32_t l)
{
    ns_exec *ex = st->ex;
    float *const *w = st->layer_w[l].w;
    float *const *dw = st->layer_dw[l].w;
    layer_acts *a = &s->layers[l];
    stage_scratch *sc = &st->scratch;
    size_t B = d->B, T = d->T, btc = d->BT * d->C, btk = d->BT * d->KD;

    zero(ex, sc->dx, btc);
    zero(ex, sc->dproj, btc);
    ns_residual_backward(ex, sc->dx, sc->dproj, sc->dmid, btc);
    zero(ex, sc->dy, d->BT * d->HD);
    ns_matmul_backward(ex, sc->dy, dw[LAYER_O], sc->dproj, a->y, w[LAYER_O], B, T, d->HD, d->C);
    zero(ex, sc->dq, d->BT * d->HD);
    zero(ex, sc->dk, btk);
    zero(ex, sc->dv, btk);
    ns_attention_backward(ex, sc->dq, sc->dk, sc->dv, sc->datt, sc->dy, a->q, a->k, a->v, a->att, B,
                          T, d->H, d->HKV, d->D);
    zero(ex, sc->dqp, d->BT * d->HD);
    zero(ex, sc->dkp, btk);
    ns_rope_backward(ex, sc->dqp, sc->dq, st->rope_cos, st->rope_sin, B, T, d->H, d->D);
    ns_rope_backward(ex, sc->dkp, sc->dk, st->rope_cos, st->rope_sin, B, T, d->HKV, d->D);
    zero(ex, sc->dln, btc);
    ns_matmul_backward(ex, sc->dln, dw[LAYER_Q], sc->dqp, a->ln1, w[LAYER_Q], B, T, d->C, d->HD);
    ns_matmul_backward(ex, sc->dln, dw[LAYER_K], sc->dkp, a->ln1, w[LAYER_K], B, T, d->C, d->KD);
    ns_matmul_backward(ex, sc->dln, dw[LAYER_V], sc->dv, a->ln1, w[LAYER_V], B, T, d->C, d->KD);
    ns_rmsnorm_backward(ex, sc->dx, dw[LAYER_INPUT_NORM], sc->dln, res_at(s, d, l),
                        w[LAYER_INPUT_NORM], a->rstd1, B, T, d->C);
}

/* From dloss to the gradient of the last layer's output, in scratch.dres. */
static void head_backward(ns_stage *st, stage_slot *s, const pass_dims *d, float dloss)
{
    ns_exec *ex = st->ex;
    stage_scratch *sc = &st->scratch;
    float per_token = s->counted == 0 ? 0.0f : dloss / (float)s->counted;
    for (size_t i = 0; i < d->BT; i++)
        sc->dlosses[i] = s->targets[i] == NS_EXEC_IGNORE_INDEX ? 0.0f : per_token;
    zero(ex, sc->dlogits, d->BT * d->V);
    ns_softmax_crossentropy_backward(ex, sc->dlogits, sc->dlosses, s->probs, s->targets, d->B, d->T,
                                     d->V);
    zero(ex, sc->dln, d->BT * d->C);
    ns_matmul_backward(ex, sc->dln, st->dhead, sc->dlogits, s->lnf, st->head, d->B, d->T, d->C,
                       d->V);
    zero(ex, sc->dres, d->BT * d->C);
    ns_rmsnorm_backward(ex, sc->dres, st->dnormf, sc->dln, res_at(s, d, st->n_layers), st->normf,
                        s->rstdf, d->B, d->T, d->C);
}

int ns_stage_backward(ns_stage *st, uint64_t micro_batch_id, const float *dout, float *dinp)
{
    NS_ASSERT(st != NULL);
    NS_ASSERT(dout != NULL);
    NS_ASSERT(st->has_embedding || dinp != NULL);
    stage_slot *s = find_slot(st, micro_batch_id);
    if (s == NULL)
        return NS_ENOENT;
    pass_dims d = pass_dims_of(st, s->B, s->T);
    stage_scratch *sc = &st->scratch;
    if (st->has_head)
        head_backward(st, s, &d, dout[0]);
    else
        memcpy(sc->dres, dout, d.BT * d.C * sizeof(float));
    for (uint32_t l = st->n_layers; l-- > 0;) {
        mlp_backward(st, s, &d, l);
        attention_half_backward(st, s, &d, l);
        float *swap = sc->dres;
        sc->dres = sc->dx;
        sc->dx = swap;
    }
    if (st->has_embedding)
        ns_embedding_backward(st->ex, st->dwte, sc->dres, s->tokens, d.B, d.T, d.C);
    if (dinp != NULL)
        memcpy(dinp, sc->dres, d.BT * d.C * sizeof(float));
    s->used = false;
    return NS_OK;
}

int ns_stage_drop(ns_stage *st, uint64_t micro_batch_id)
{
    NS_ASSERT(st != NULL);
    stage_slot *s = find_slot(st, micro_batch_id);
    if (s == NULL)
        return NS_ENOENT;
    s->used = false;
    return NS_OK;
}

uint32_t ns_stage_in_flight(const ns_stage *st)
{
    NS_ASSERT(st != NULL);
    uint32_t n = 0;
    for (uint32_t i = 0; i < st->cfg.micro_batches_max; i++)
        n += st->slots[i].used;
    return n;
}
