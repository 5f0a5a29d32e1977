/*
 * stage.c: a stage's memory: its layout, creation, named tensors and deterministic init.
 *
 * One walk over the layout (carve_*) serves both to count (ns_stage_memory_bytes, so a caller
 * can refuse a configuration before anything is allocated) and to hand out pointers, so the
 * count and the allocation cannot disagree. Parameters sit back to back in one flat buffer, in
 * the order of the named tensors (embedding, then per layer: input norm, q, k, v, o, post norm,
 * gate, up, down; then final norm and head), with the Hugging Face Llama shapes ([out, in]).
 * Gradients and the AdamW moments are flat buffers of the same layout. The forward and backward
 * passes are in stage_pass.c, AdamW in adamw.c.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stage_internal.h"

static_assert(sizeof(int32_t) == sizeof(float), "token ids are carved from the float arena");

#define ARENA_ALIGN_FLOATS 16 /* 64 bytes */

/* The shape of a stage, in elements. */
typedef struct dims {
    uint64_t C, H, HKV, D, HD, KD, F, V, L, B, T, BT;
} dims;

/* Hands out consecutive pieces of a buffer, or only counts them when base is NULL. */
typedef struct carver {
    float *base;
    uint64_t used;
    uint64_t align;
    bool overflow;
} carver;

static uint64_t mul(carver *cv, uint64_t a, uint64_t b)
{
    uint64_t out;
    if (__builtin_mul_overflow(a, b, &out)) {
        cv->overflow = true;
        return 0;
    }
    return out;
}

static float *carve(carver *cv, uint64_t count)
{
    uint64_t rounded = (count + cv->align - 1) / cv->align * cv->align;
    float *p = cv->base != NULL ? cv->base + cv->used : NULL;
    if (rounded < count || __builtin_add_overflow(cv->used, rounded, &cv->used))
        cv->overflow = true;
    return p;
}

static int dims_of(const ns_stage_config *cfg, dims *d)
{
    const ns_arch *a = &cfg->arch;
    if (a->layers == 0 || a->heads == 0 || a->kv_heads == 0 || a->intermediate == 0 ||
        a->vocab == 0 || a->vocab > INT32_MAX)
        return NS_EINVAL;
    if (a->hidden != (uint64_t)a->heads * NS_ARCH_HEAD_DIM || a->heads % a->kv_heads != 0)
        return NS_EINVAL;
    if (cfg->layer_first > cfg->layer_last || cfg->layer_last > a->layers)
        return NS_EINVAL;
    if (cfg->batch_max == 0 || cfg->seq_len_max == 0 || cfg->seq_len_max > a->seq_len_max)
        return NS_EINVAL;
    if (cfg->micro_batches_max == 0 || cfg->micro_batches_max > NS_EXEC_MICRO_BATCHES_MAX)
        return NS_EINVAL;
    *d = (dims){.C = a->hidden,
                .H = a->heads,
                .HKV = a->kv_heads,
                .D = NS_ARCH_HEAD_DIM,
                .HD = a->hidden,
                .KD = (uint64_t)a->kv_heads * NS_ARCH_HEAD_DIM,
                .F = a->intermediate,
                .V = a->vocab,
                .L = cfg->layer_last - cfg->layer_first,
                .B = cfg->batch_max,
                .T = cfg->seq_len_max,
                .BT = (uint64_t)cfg->batch_max * cfg->seq_len_max};
    return NS_OK;
}

/* ---- layout ------------------------------------------------------------------------------- */

static void carve_layer_params(carver *cv, const dims *d, layer_params *lp)
{
    lp->w[LAYER_INPUT_NORM] = carve(cv, d->C);
    lp->w[LAYER_Q] = carve(cv, mul(cv, d->HD, d->C));
    lp->w[LAYER_K] = carve(cv, mul(cv, d->KD, d->C));
    lp->w[LAYER_V] = carve(cv, mul(cv, d->KD, d->C));
    lp->w[LAYER_O] = carve(cv, mul(cv, d->C, d->HD));
    lp->w[LAYER_POST_NORM] = carve(cv, d->C);
    lp->w[LAYER_GATE] = carve(cv, mul(cv, d->F, d->C));
    lp->w[LAYER_UP] = carve(cv, mul(cv, d->F, d->C));
    lp->w[LAYER_DOWN] = carve(cv, mul(cv, d->C, d->F));
}

/* The parameter views of one flat buffer (parameters or gradients). layers may be NULL to count. */
static void carve_params(carver *cv, const dims *d, bool emb, bool head, float **wte,
                         layer_params *layers, float **normf, float **lm_head)
{
    layer_params dummy;
    *wte = emb ? carve(cv, mul(cv, d->V, d->C)) : NULL;
    for (uint64_t l = 0; l < d->L; l++)
        carve_layer_params(cv, d, layers != NULL ? &layers[l] : &dummy);
    *normf = head ? carve(cv, d->C) : NULL;
    *lm_head = head ? carve(cv, mul(cv, d->V, d->C)) : NULL;
}

static void carve_layer_acts(carver *cv, const dims *d, layer_acts *la)
{
    uint64_t btc = mul(cv, d->BT, d->C);
    la->ln1 = carve(cv, btc);
    la->rstd1 = carve(cv, d->BT);
    la->q = carve(cv, mul(cv, d->BT, d->HD));
    la->k = carve(cv, mul(cv, d->BT, d->KD));
    la->v = carve(cv, mul(cv, d->BT, d->KD));
    la->att = carve(cv, mul(cv, mul(cv, d->B, d->H), mul(cv, d->T, d->T)));
    la->y = carve(cv, mul(cv, d->BT, d->HD));
    la->mid = carve(cv, btc);
    la->ln2 = carve(cv, btc);
    la->rstd2 = carve(cv, d->BT);
    la->gate = carve(cv, mul(cv, d->BT, d->F));
    la->up = carve(cv, mul(cv, d->BT, d->F));
    la->h = carve(cv, mul(cv, d->BT, d->F));
}

/* One slot's activations; layers (d->L entries) may be NULL to count. */
static void carve_slot(carver *cv, const dims *d, bool emb, bool head, stage_slot *s,
                       layer_acts *layers)
{
    layer_acts dummy;
    s->tokens = emb ? (int32_t *)carve(cv, d->BT) : NULL;
    s->targets = head ? (int32_t *)carve(cv, d->BT) : NULL;
    s->res = carve(cv, mul(cv, d->L + 1, mul(cv, d->BT, d->C)));
    s->layers = layers;
    for (uint64_t l = 0; l < d->L; l++)
        carve_layer_acts(cv, d, layers != NULL ? &layers[l] : &dummy);
    s->lnf = head ? carve(cv, mul(cv, d->BT, d->C)) : NULL;
    s->rstdf = head ? carve(cv, d->BT) : NULL;
    s->probs = head ? carve(cv, mul(cv, d->BT, d->V)) : NULL;
    s->losses = head ? carve(cv, d->BT) : NULL;
}

static void carve_scratch(carver *cv, const dims *d, bool head, stage_scratch *s)
{
    uint64_t btc = mul(cv, d->BT, d->C);
    s->tmp = carve(cv, btc);
    s->dres = carve(cv, btc);
    s->dx = carve(cv, btc);
    s->dmid = carve(cv, btc);
    s->dproj = carve(cv, btc);
    s->dln = carve(cv, btc);
    s->dy = carve(cv, mul(cv, d->BT, d->HD));
    s->dq = carve(cv, mul(cv, d->BT, d->HD));
    s->dqp = carve(cv, mul(cv, d->BT, d->HD));
    s->dk = carve(cv, mul(cv, d->BT, d->KD));
    s->dkp = carve(cv, mul(cv, d->BT, d->KD));
    s->dv = carve(cv, mul(cv, d->BT, d->KD));
    s->datt = carve(cv, mul(cv, mul(cv, d->B, d->H), mul(cv, d->T, d->T)));
    s->dh = carve(cv, mul(cv, d->BT, d->F));
    s->dgate = carve(cv, mul(cv, d->BT, d->F));
    s->dup = carve(cv, mul(cv, d->BT, d->F));
    s->dlogits = head ? carve(cv, mul(cv, d->BT, d->V)) : NULL;
    s->dlosses = head ? carve(cv, d->BT) : NULL;
}

/* Floats of the flat parameter buffer and of the activation arena. */
typedef struct stage_sizes {
    uint64_t params;
    uint64_t arena;
    uint64_t sq_partials;
} stage_sizes;

static int sizes_of(const ns_stage_config *cfg, stage_sizes *out)
{
    dims d;
    int err = dims_of(cfg, &d);
    if (err != NS_OK)
        return err;
    bool emb = cfg->layer_first == 0;
    bool head = cfg->layer_last == cfg->arch.layers;
    carver params = {.align = 1};
    float *wte, *normf, *lm_head;
    carve_params(&params, &d, emb, head, &wte, NULL, &normf, &lm_head);
    carver arena = {.align = ARENA_ALIGN_FLOATS};
    stage_slot slot;
    stage_scratch scratch;
    for (uint32_t s = 0; s < cfg->micro_batches_max; s++)
        carve_slot(&arena, &d, emb, head, &slot, NULL);
    carve_scratch(&arena, &d, head, &scratch);
    carve(&arena, mul(&arena, d.T, d.D)); /* the RoPE tables: cos and sin, [T, D/2] each */
    if (params.overflow || arena.overflow)
        return NS_EOVERFLOW;
    out->params = params.used;
    out->arena = arena.used;
    /* one partial a chunk of a tensor: at most one chunk more than the even split per tensor */
    uint64_t named = (emb ? 1u : 0u) +
                     (uint64_t)(cfg->layer_last - cfg->layer_first) * LAYER_KINDS +
                     (head ? 2u : 0u);
    out->sq_partials = (params.used + NS__SQ_CHUNK - 1) / NS__SQ_CHUNK + named;
    return NS_OK;
}

int ns_stage_memory_bytes(const ns_stage_config *cfg, uint64_t *out)
{
    NS_ASSERT(cfg != NULL);
    NS_ASSERT(out != NULL);
    stage_sizes sz;
    int err = sizes_of(cfg, &sz);
    if (err != NS_OK)
        return err;
    uint64_t floats = 0;
    if (__builtin_mul_overflow(sz.params, 4, &floats) ||
        __builtin_add_overflow(floats, sz.arena, &floats) ||
        __builtin_mul_overflow(floats, sizeof(float), out) ||
        __builtin_add_overflow(*out, sz.sq_partials * sizeof(double), out))
        return NS_EOVERFLOW;
    return NS_OK;
}

/* ---- named tensors ------------------------------------------------------------------------ */

static const char *const layer_names[LAYER_KINDS] = {
    [LAYER_INPUT_NORM] = "input_layernorm.weight",
    [LAYER_Q] = "self_attn.q_proj.weight",
    [LAYER_K] = "self_attn.k_proj.weight",
    [LAYER_V] = "self_attn.v_proj.weight",
    [LAYER_O] = "self_attn.o_proj.weight",
    [LAYER_POST_NORM] = "post_attention_layernorm.weight",
    [LAYER_GATE] = "mlp.gate_proj.weight",
    [LAYER_UP] = "mlp.up_proj.weight",
    [LAYER_DOWN] = "mlp.down_proj.weight",
};

/* [out, in] for matrices as Hugging Face stores them, [C] for norm weights. */
static void layer_shape(const dims *d, int kind, uint32_t *ndim, uint64_t shape[2])
{
    const uint64_t rows_cols[LAYER_KINDS][2] = {
        [LAYER_INPUT_NORM] = {d->C, 0}, [LAYER_Q] = {d->HD, d->C}, [LAYER_K] = {d->KD, d->C},
        [LAYER_V] = {d->KD, d->C},      [LAYER_O] = {d->C, d->HD}, [LAYER_POST_NORM] = {d->C, 0},
        [LAYER_GATE] = {d->F, d->C},    [LAYER_UP] = {d->F, d->C}, [LAYER_DOWN] = {d->C, d->F},
    };
    shape[0] = rows_cols[kind][0];
    shape[1] = rows_cols[kind][1];
    *ndim = shape[1] == 0 ? 1 : 2;
}

static void set_named(ns_named_tensor *nt, const char *name, float *data, uint32_t ndim,
                      const uint64_t *shape)
{
    int n = snprintf(nt->name, sizeof nt->name, "%s", name);
    NS_ASSERT(n > 0 && (size_t)n < sizeof nt->name);
    nt->tensor = ns_tensor_view(data, ndim, shape);
    nt->decay = ndim == 2;
}

/* Names, shapes and pointers of one flat buffer, in buffer order. */
static void name_buffer(const ns_stage *st, const dims *d, ns_named_tensor *out, float *wte,
                        const layer_params *layers, float *normf, float *lm_head)
{
    size_t i = 0;
    uint64_t vc[2] = {d->V, d->C};
    if (st->has_embedding)
        set_named(&out[i++], "model.embed_tokens.weight", wte, 2, vc);
    for (uint32_t l = 0; l < st->n_layers; l++) {
        for (int kind = 0; kind < LAYER_KINDS; kind++) {
            char name[NS_EXEC_NAME_BYTES_MAX];
            int n = snprintf(name, sizeof name, "model.layers.%u.%s",
                             (unsigned)(st->cfg.layer_first + l), layer_names[kind]);
            NS_ASSERT(n > 0 && (size_t)n < sizeof name);
            uint32_t ndim;
            uint64_t shape[2];
            layer_shape(d, kind, &ndim, shape);
            set_named(&out[i++], name, layers[l].w[kind], ndim, shape);
        }
    }
    if (st->has_head) {
        set_named(&out[i++], "model.norm.weight", normf, 1, &d->C);
        set_named(&out[i++], "lm_head.weight", lm_head, 2, vc);
    }
    NS_ASSERT(i == st->n_named);
}

/* "<param>.exp_avg" over m and "<param>.exp_avg_sq" over v, in the parameters' order. */
static void name_optim(ns_stage *st)
{
    for (size_t i = 0; i < st->n_named; i++) {
        const ns_named_tensor *p = &st->named_params[i];
        size_t offset = (size_t)(p->tensor.data - st->params);
        const char *suffix[2] = {"exp_avg", "exp_avg_sq"};
        float *base[2] = {st->m, st->v};
        for (int k = 0; k < 2; k++) {
            ns_named_tensor *nt = &st->named_optim[2 * i + (size_t)k];
            int n = snprintf(nt->name, sizeof nt->name, "%s.%s", p->name, suffix[k]);
            NS_ASSERT(n > 0 && (size_t)n < sizeof nt->name);
            nt->tensor = ns_tensor_view(base[k] + offset, p->tensor.ndim, p->tensor.shape);
            nt->decay = p->decay;
        }
    }
}

/* ---- creation ----------------------------------------------------------------------------- */

static float *alloc_floats(uint64_t count)
{
    void *p = NULL;
    if (count == 0)
        count = 1;
    if (posix_memalign(&p, 64, count * sizeof(float)) != 0)
        return NULL;
    memset(p, 0, count * sizeof(float));
    return p;
}

static int alloc_buffers(ns_stage *st, const stage_sizes *sz)
{
    st->n_params = sz->params;
    st->params = alloc_floats(sz->params);
    st->grads = alloc_floats(sz->params);
    st->m = alloc_floats(sz->params);
    st->v = alloc_floats(sz->params);
    st->arena = alloc_floats(sz->arena);
    st->sq_partials = calloc(sz->sq_partials + 1, sizeof(double));
    st->n_named =
        (st->has_embedding ? 1 : 0) + (size_t)st->n_layers * LAYER_KINDS + (st->has_head ? 2 : 0);
    st->named_params = calloc(st->n_named + 1, sizeof(ns_named_tensor));
    st->named_grads = calloc(st->n_named + 1, sizeof(ns_named_tensor));
    st->named_optim = calloc(2 * st->n_named + 1, sizeof(ns_named_tensor));
    st->layer_w = calloc(st->n_layers + 1, sizeof(layer_params));
    st->layer_dw = calloc(st->n_layers + 1, sizeof(layer_params));
    st->slot_layers =
        calloc((size_t)st->cfg.micro_batches_max * st->n_layers + 1, sizeof(layer_acts));
    if (st->params == NULL || st->grads == NULL || st->m == NULL || st->v == NULL ||
        st->arena == NULL || st->sq_partials == NULL || st->named_params == NULL ||
        st->named_grads == NULL || st->named_optim == NULL || st->layer_w == NULL ||
        st->layer_dw == NULL || st->slot_layers == NULL)
        return NS_ENOMEM;
    return NS_OK;
}

static void assign_views(ns_stage *st, const dims *d, const stage_sizes *sz)
{
    carver pc = {.base = st->params, .align = 1};
    carve_params(&pc, d, st->has_embedding, st->has_head, &st->wte, st->layer_w, &st->normf,
                 &st->head);
    carver gc = {.base = st->grads, .align = 1};
    carve_params(&gc, d, st->has_embedding, st->has_head, &st->dwte, st->layer_dw, &st->dnormf,
                 &st->dhead);
    NS_ASSERT(pc.used == sz->params && gc.used == sz->params);
    carver ac = {.base = st->arena, .align = ARENA_ALIGN_FLOATS};
    for (uint32_t s = 0; s < st->cfg.micro_batches_max; s++)
        carve_slot(&ac, d, st->has_embedding, st->has_head, &st->slots[s],
                   st->slot_layers + (size_t)s * st->n_layers);
    carve_scratch(&ac, d, st->has_head, &st->scratch);
    st->rope_cos = carve(&ac, d->T * d->D); /* cos, then sin */
    st->rope_sin = st->rope_cos + d->T * d->D / 2;
    NS_ASSERT(!pc.overflow && !gc.overflow && !ac.overflow);
    NS_ASSERT(ac.used == sz->arena);
    name_buffer(st, d, st->named_params, st->wte, st->layer_w, st->normf, st->head);
    name_buffer(st, d, st->named_grads, st->dwte, st->layer_dw, st->dnormf, st->dhead);
    name_optim(st);
}

int ns_stage_new(ns_stage **out, ns_exec *ex, const ns_stage_config *cfg)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(ex != NULL);
    NS_ASSERT(cfg != NULL);
    *out = NULL;
    stage_sizes sz;
    int err = sizes_of(cfg, &sz);
    if (err != NS_OK)
        return err;
    dims d;
    NS_ASSERT(dims_of(cfg, &d) == NS_OK);
    ns_stage *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NS_ENOMEM;
    st->ex = ex;
    st->cfg = *cfg;
    st->n_layers = cfg->layer_last - cfg->layer_first;
    st->has_embedding = cfg->layer_first == 0;
    st->has_head = cfg->layer_last == cfg->arch.layers;
    err = alloc_buffers(st, &sz);
    if (err != NS_OK) {
        ns_stage_free(st);
        return err;
    }
    assign_views(st, &d, &sz);
    ns_rope_table(st->rope_cos, st->rope_sin, d.T, d.D, NS_EXEC_ROPE_THETA);
    *out = st;
    return NS_OK;
}

void ns_stage_free(ns_stage *st)
{
    if (st == NULL)
        return;
    free(st->params);
    free(st->grads);
    free(st->m);
    free(st->v);
    free(st->arena);
    free(st->sq_partials);
    free(st->named_params);
    free(st->named_grads);
    free(st->named_optim);
    free(st->layer_w);
    free(st->layer_dw);
    free(st->slot_layers);
    free(st);
}

/* ---- init --------------------------------------------------------------------------------- */

/* Stream ids: fixed for the embedding, final norm and head, and per (global layer, kind), so
 * that a tensor's values do not depend on how the model is cut into stages. */
#define INIT_ID_EMBEDDING      1u
#define INIT_ID_NORM           2u
#define INIT_ID_HEAD           3u
#define INIT_ID_LAYER(l, kind) (16u * ((uint64_t)(l) + 1u) + (uint64_t)(kind))

typedef struct init_args {
    float *data;
    uint64_t key;
    double std;
} init_args;

static void init_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const init_args *a = arg;
    (void)worker;
    for (size_t i = begin; i < end; i++) {
        uint64_t u1 = ns__mix64(a->key + 2 * (uint64_t)i);
        uint64_t u2 = ns__mix64(a->key + 2 * (uint64_t)i + 1);
        a->data[i] = (float)(a->std * ns__det_normal(u1, u2));
    }
}

static void init_tensor(ns_stage *st, const ns_named_tensor *nt, uint64_t seed, uint64_t id,
                        double std)
{
    size_t n = (size_t)ns_tensor_numel(&nt->tensor);
    if (!nt->decay) {
        for (size_t i = 0; i < n; i++)
            nt->tensor.data[i] = 1.0f; /* norm weights */
        return;
    }
    init_args a = {.data = nt->tensor.data, .key = ns__mix64(seed ^ ns__mix64(id)), .std = std};
    ns__parallel_for(st->ex, n, init_task, &a);
}

void ns_stage_init(ns_stage *st, uint64_t seed)
{
    NS_ASSERT(st != NULL);
    double out_std = NS_EXEC_INIT_STD / sqrt(2.0 * st->cfg.arch.layers);
    size_t i = 0;
    if (st->has_embedding)
        init_tensor(st, &st->named_params[i++], seed, INIT_ID_EMBEDDING, NS_EXEC_INIT_STD);
    for (uint32_t l = 0; l < st->n_layers; l++) {
        uint32_t layer = st->cfg.layer_first + l;
        for (int kind = 0; kind < LAYER_KINDS; kind++) {
            bool output = kind == LAYER_O || kind == LAYER_DOWN;
            init_tensor(st, &st->named_params[i++], seed, INIT_ID_LAYER(layer, kind),
                        output ? out_std : NS_EXEC_INIT_STD);
        }
    }
    if (st->has_head) {
        init_tensor(st, &st->named_params[i++], seed, INIT_ID_NORM, 1.0);
        init_tensor(st, &st->named_params[i++], seed, INIT_ID_HEAD, NS_EXEC_INIT_STD);
    }
    NS_ASSERT(i == st->n_named);
    memset(st->grads, 0, st->n_params * sizeof(float));
    memset(st->m, 0, st->n_params * sizeof(float));
    memset(st->v, 0, st->n_params * sizeof(float));
    st->optim_step = 0;
}

/* ---- accessors ---------------------------------------------------------------------------- */

const ns_stage_config *ns_stage_config_of(const ns_stage *st)
{
    NS_ASSERT(st != NULL);
    return &st->cfg;
}

bool ns_stage_has_embedding(const ns_stage *st)
{
    NS_ASSERT(st != NULL);
    return st->has_embedding;
}

bool ns_stage_has_head(const ns_stage *st)
{
    NS_ASSERT(st != NULL);
    return st->has_head;
}

const ns_named_tensor *ns_stage_params(const ns_stage *st, size_t *count)
{
    NS_ASSERT(st != NULL && count != NULL);
    *count = st->n_named;
    return st->named_params;
}

const ns_named_tensor *ns_stage_grads(const ns_stage *st, size_t *count)
{
    NS_ASSERT(st != NULL && count != NULL);
    *count = st->n_named;
    return st->named_grads;
}

const ns_named_tensor *ns_stage_optim_state(const ns_stage *st, size_t *count)
{
    NS_ASSERT(st != NULL && count != NULL);
    *count = 2 * st->n_named;
    return st->named_optim;
}

float *ns_stage_param_buffer(ns_stage *st, size_t *count)
{
    NS_ASSERT(st != NULL && count != NULL);
    *count = st->n_params;
    return st->params;
}

float *ns_stage_grad_buffer(ns_stage *st, size_t *count)
{
    NS_ASSERT(st != NULL && count != NULL);
    *count = st->n_params;
    return st->grads;
}

void ns_stage_zero_grad(ns_stage *st)
{
    NS_ASSERT(st != NULL);
    memset(st->grads, 0, st->n_params * sizeof(float));
}

uint64_t ns_stage_optim_step(const ns_stage *st)
{
    NS_ASSERT(st != NULL);
    return st->optim_step;
}

void ns_stage_set_optim_step(ns_stage *st, uint64_t step)
{
    NS_ASSERT(st != NULL);
    st->optim_step = step;
}
