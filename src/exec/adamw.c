/*
 * adamw.c: the optimizer of a stage: AdamW, global-norm clipping, warm-up + cosine schedule.
 *
 * The update is PyTorch's AdamW (decoupled weight decay, bias-corrected moments), operation for
 * operation in float32, so a PyTorch run from the same weights and gradients follows the same
 * path (tests/reference). Weight decay applies to matrices only, never to norm weights. Every sum
 * runs in a fixed order: the squared-gradient sum is cut into fixed chunks of each tensor whose
 * partial sums are added in order, tensor by tensor, so it depends neither on the thread count nor
 * on the split into pipeline stages; the schedule and the bias corrections use the deterministic
 * math of detmath.c.
 */
#include <math.h>
#include <string.h>

#include "stage_internal.h"

#define CLIP_EPS 1e-6 /* as torch.nn.utils.clip_grad_norm_ */
#define PI       3.14159265358979323846

void ns_optim_config_default(ns_optim_config *cfg)
{
    NS_ASSERT(cfg != NULL);
    *cfg = (ns_optim_config){.lr_max = 3e-4,
                             .lr_min = 3e-5,
                             .warmup_steps = 100,
                             .decay_steps = 10000,
                             .beta1 = 0.9,
                             .beta2 = 0.95,
                             .eps = 1e-8,
                             .weight_decay = 0.1,
                             .grad_clip = 1.0};
}

double ns_optim_lr(const ns_optim_config *cfg, uint64_t step)
{
    NS_ASSERT(cfg != NULL);
    if (step < cfg->warmup_steps)
        return cfg->lr_max * (double)(step + 1) / (double)cfg->warmup_steps;
    if (step >= cfg->decay_steps || cfg->decay_steps <= cfg->warmup_steps)
        return cfg->lr_min;
    double progress =
        (double)(step - cfg->warmup_steps) / (double)(cfg->decay_steps - cfg->warmup_steps);
    double s;
    double c;
    ns__det_sincos(PI * progress, &s, &c);
    return cfg->lr_min + 0.5 * (cfg->lr_max - cfg->lr_min) * (1.0 + c);
}

/* ---- the gradient norm -------------------------------------------------------------------- */

/* Chunk c of the gradients covers [c_lo, c_hi) within one tensor: tensor t's chunks follow its
 * own start, so a stage holding a tensor cuts it exactly as the whole model would. */
typedef struct sq_args {
    const ns_named_tensor *grads;
    size_t tensors;
    double *partials;
} sq_args;

static size_t tensor_chunks(const ns_named_tensor *t)
{
    return (size_t)((ns_tensor_numel(&t->tensor) + NS__SQ_CHUNK - 1) / NS__SQ_CHUNK);
}

static void sq_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const sq_args *a = arg;
    (void)worker;
    /* tasks are tensors; each writes its chunks' partials from its own first chunk on */
    for (size_t t = begin; t < end; t++) {
        const ns_named_tensor *g = &a->grads[t];
        size_t first = 0;
        for (size_t u = 0; u < t; u++)
            first += tensor_chunks(&a->grads[u]);
        size_t n = (size_t)ns_tensor_numel(&g->tensor);
        for (size_t c = 0; c < tensor_chunks(g); c++) {
            size_t lo = c * NS__SQ_CHUNK;
            size_t hi = lo + NS__SQ_CHUNK < n ? lo + NS__SQ_CHUNK : n;
            double sum = 0.0;
            for (size_t i = lo; i < hi; i++)
                sum += (double)g->tensor.data[i] * g->tensor.data[i];
            a->partials[first + c] = sum;
        }
    }
}

double ns_stage_grad_sq_sum_from(ns_stage *st, double acc)
{
    NS_ASSERT(st != NULL);
    NS_ASSERT(acc >= 0.0);
    sq_args a = {.grads = st->named_grads, .tensors = st->n_named, .partials = st->sq_partials};
    ns__parallel_for(st->ex, st->n_named, sq_task, &a);
    /* tensor by tensor, each tensor's chunks first: the whole model's order, split anywhere */
    size_t c = 0;
    for (size_t t = 0; t < st->n_named; t++) {
        double tensor_sum = 0.0;
        for (size_t k = tensor_chunks(&st->named_grads[t]); k > 0; k--)
            tensor_sum += st->sq_partials[c++];
        acc += tensor_sum;
    }
    return acc;
}

double ns_stage_grad_sq_sum(ns_stage *st)
{
    return ns_stage_grad_sq_sum_from(st, 0.0);
}

float ns_optim_clip_scale(const ns_optim_config *cfg, double grad_sq_sum)
{
    NS_ASSERT(cfg != NULL);
    NS_ASSERT(grad_sq_sum >= 0.0);
    if (cfg->grad_clip <= 0.0)
        return 1.0f;
    double coef = cfg->grad_clip / (sqrt(grad_sq_sum) + CLIP_EPS);
    return coef < 1.0 ? (float)coef : 1.0f;
}

/* ---- the update --------------------------------------------------------------------------- */

typedef struct adamw_args {
    float *p;
    float *g;
    float *m;
    float *v;
    float grad_scale;
    float decay; /* 1 - lr * weight_decay, or 1 */
    float beta1;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float step_size; /* lr / (1 - beta1^t) */
    float bc2_sqrt;  /* sqrt(1 - beta2^t) */
    float eps;
} adamw_args;

static void adamw_task(void *arg, size_t begin, size_t end, uint32_t worker)
{
    const adamw_args *a = arg;
    (void)worker;
    for (size_t i = begin; i < end; i++) {
        float g = a->g[i] * a->grad_scale;
        float p = a->p[i] * a->decay;
        float m = a->m[i] * a->beta1 + a->one_minus_beta1 * g;
        float v = a->v[i] * a->beta2 + a->one_minus_beta2 * (g * g);
        float denom = sqrtf(v) / a->bc2_sqrt + a->eps;
        a->p[i] = p - a->step_size * (m / denom);
        a->m[i] = m;
        a->v[i] = v;
    }
}

void ns_stage_adamw_step(ns_stage *st, const ns_optim_config *cfg, float grad_scale)
{
    NS_ASSERT(st != NULL);
    NS_ASSERT(cfg != NULL);
    NS_ASSERT(grad_scale >= 0.0f);
    double lr = ns_optim_lr(cfg, st->optim_step);
    uint64_t t = st->optim_step + 1;
    double bc1 = 1.0 - ns__det_powi(cfg->beta1, t);
    double bc2 = 1.0 - ns__det_powi(cfg->beta2, t);
    adamw_args a = {.grad_scale = grad_scale,
                    .beta1 = (float)cfg->beta1,
                    .one_minus_beta1 = (float)(1.0 - cfg->beta1),
                    .beta2 = (float)cfg->beta2,
                    .one_minus_beta2 = (float)(1.0 - cfg->beta2),
                    .step_size = (float)(lr / bc1),
                    .bc2_sqrt = (float)sqrt(bc2),
                    .eps = (float)cfg->eps};
    for (size_t i = 0; i < st->n_named; i++) {
        const ns_named_tensor *nt = &st->named_params[i];
        size_t offset = (size_t)(nt->tensor.data - st->params);
        a.p = st->params + offset;
        a.g = st->grads + offset;
        a.m = st->m + offset;
        a.v = st->v + offset;
        a.decay = nt->decay ? (float)(1.0 - lr * cfg->weight_decay) : 1.0f;
        ns__parallel_for(st->ex, (size_t)ns_tensor_numel(&nt->tensor), adamw_task, &a);
    }
    st->optim_step = t;
    memset(st->grads, 0, st->n_params * sizeof(float));
}

void ns_stage_optimize(ns_stage *st, const ns_optim_config *cfg, ns_optim_report *report)
{
    NS_ASSERT(st != NULL);
    NS_ASSERT(cfg != NULL);
    double sq = ns_stage_grad_sq_sum(st);
    float scale = ns_optim_clip_scale(cfg, sq);
    double lr = ns_optim_lr(cfg, st->optim_step);
    ns_stage_adamw_step(st, cfg, scale);
    if (report != NULL)
        *report = (ns_optim_report){.grad_norm = sqrt(sq), .lr = lr, .clip_scale = scale};
}
