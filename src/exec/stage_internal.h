/*
 * stage_internal.h: the stage struct, shared by stage.c (layout, forward, backward) and adamw.c.
 *
 * A stage owns five allocations made in ns_stage_new: parameters, gradients and the two AdamW
 * moments (each one flat buffer of n_params floats in the same order), and one arena for the
 * activations of every micro-batch slot and the backward scratch. Named tensors and layer views
 * point into them.
 */
#ifndef NEUROSHARD_STAGE_INTERNAL_H
#define NEUROSHARD_STAGE_INTERNAL_H

#include "exec_internal.h"

/* The kinds of tensor in a block, in buffer order; the index is part of the init stream id. */
enum {
    LAYER_INPUT_NORM = 0,
    LAYER_Q = 1,
    LAYER_K = 2,
    LAYER_V = 3,
    LAYER_O = 4,
    LAYER_POST_NORM = 5,
    LAYER_GATE = 6,
    LAYER_UP = 7,
    LAYER_DOWN = 8,
    LAYER_KINDS = 9,
};

/* One layer's weights (or their gradients): pointers into a flat buffer. */
typedef struct layer_params {
    float *w[LAYER_KINDS];
} layer_params;

/* What one layer keeps from forward for backward, in one slot. */
typedef struct layer_acts {
    float *ln1;   /* [B,T,C] */
    float *rstd1; /* [B,T] */
    float *q;     /* [B,T,H,D] after RoPE */
    float *k;     /* [B,T,HKV,D] after RoPE */
    float *v;     /* [B,T,HKV,D] */
    float *att;   /* [B,H,T,T] */
    float *y;     /* [B,T,H,D] attention output, before o_proj */
    float *mid;   /* [B,T,C] residual stream after attention */
    float *ln2;   /* [B,T,C] */
    float *rstd2; /* [B,T] */
    float *gate;  /* [B,T,F] */
    float *up;    /* [B,T,F] */
    float *h;     /* [B,T,F] silu(gate) * up */
} layer_acts;

/* One micro-batch in flight. */
typedef struct stage_slot {
    bool used;
    uint64_t id;
    uint32_t B;
    uint32_t T;
    uint32_t counted; /* targets that are not -1 */
    int32_t *tokens;  /* [B,T] when the stage holds the embedding */
    int32_t *targets; /* [B,T] when it holds the head */
    float *res;       /* [layers + 1][B,T,C]: res[0] the input, res[l + 1] layer l's output */
    layer_acts *layers;
    float *lnf;    /* [B,T,C] */
    float *rstdf;  /* [B,T] */
    float *probs;  /* [B,T,V] */
    float *losses; /* [B,T] */
} stage_slot;

/* Backward's working buffers, shared by all slots (one backward runs at a time). */
typedef struct stage_scratch {
    float *tmp;     /* [B,T,C] a projection before its residual add */
    float *dres;    /* [B,T,C] gradient of the residual stream above the current layer */
    float *dx;      /* [B,T,C] ... and below it */
    float *dmid;    /* [B,T,C] */
    float *dproj;   /* [B,T,C] gradient of an o_proj or down_proj output */
    float *dln;     /* [B,T,C] gradient of a norm's output */
    float *dy;      /* [B,T,H,D] */
    float *dq;      /* [B,T,H,D] after RoPE */
    float *dqp;     /* [B,T,H,D] before RoPE */
    float *dk;      /* [B,T,HKV,D] */
    float *dkp;     /* [B,T,HKV,D] */
    float *dv;      /* [B,T,HKV,D] */
    float *datt;    /* [B,H,T,T] */
    float *dh;      /* [B,T,F] */
    float *dgate;   /* [B,T,F] */
    float *dup;     /* [B,T,F] */
    float *dlogits; /* [B,T,V] */
    float *dlosses; /* [B,T] */
} stage_scratch;

struct ns_stage {
    ns_exec *ex;
    ns_stage_config cfg;
    uint32_t n_layers; /* layer_last - layer_first */
    bool has_embedding;
    bool has_head;

    size_t n_params; /* floats in each of params, grads, m, v */
    float *params;
    float *grads;
    float *m;
    float *v;
    uint64_t optim_step;
    double *sq_partials; /* one per chunk of NS__SQ_CHUNK floats of a gradient tensor */

    float *wte;  /* [V,C] */
    float *dwte; /* [V,C] */
    layer_params *layer_w;
    layer_params *layer_dw;
    float *normf;  /* [C] */
    float *dnormf; /* [C] */
    float *head;   /* [V,C] */
    float *dhead;  /* [V,C] */

    size_t n_named;
    ns_named_tensor *named_params;
    ns_named_tensor *named_grads;
    ns_named_tensor *named_optim; /* 2 * n_named */

    float *rope_cos; /* [T,D/2] */
    float *rope_sin;

    float *arena; /* slots and scratch */
    stage_slot slots[NS_EXEC_MICRO_BATCHES_MAX];
    layer_acts *slot_layers; /* micro_batches_max * n_layers */
    stage_scratch scratch;
};

/* Gradient floats a partial sum of ns_stage_grad_sq_sum covers at most: fixed, and never across
 * two tensors, so that the sum's order depends neither on the thread count nor on how the model
 * is split into stages. */
#define NS__SQ_CHUNK 65536

#endif
