/*
 * exec.h: the CPU layer executor: NeuroLLM forward and backward, stage by stage (SPEC S3).
 *
 * Four layers, each usable alone:
 *   - the executor (ns_exec): a worker thread pool, the compute mode and OpenBLAS threading;
 *   - kernels in forward/backward pairs on raw float32 arrays (llm.c style), shapes named in the
 *     comment above each (B batch, T tokens, C channels, H heads, HKV key/value heads, D head
 *     size = 64, F intermediate, V vocab); backward kernels ADD into their gradients;
 *   - stages (ns_stage): a contiguous layer range [first, last), plus the embedding when first == 0
 *     and the final norm and LM head when last == layers; one flat parameter buffer, one flat
 *     gradient buffer and the AdamW state, all exposed as named tensors under the Hugging Face
 *     Llama names, so a checkpoint writer can dump them as they are;
 *   - the optimizer: AdamW, global-norm clipping, warm-up + cosine schedule.
 *
 * Ownership: the caller allocates nothing the executor keeps; ns_exec_new / ns_stage_new allocate
 * everything up front and the matching *_free releases it. A stage keeps a pointer to its executor,
 * which must outlive it. Pointers into a stage (named tensors) live as long as the stage.
 */
#ifndef NEUROSHARD_EXEC_H
#define NEUROSHARD_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/swarm.h"

/* ---- constants ---------------------------------------------------------------------------- */

#ifndef NS_EXEC_THREADS_MAX
#define NS_EXEC_THREADS_MAX 64 /* worker threads of one executor */
#endif
#ifndef NS_EXEC_JOBS_MAX
#define NS_EXEC_JOBS_MAX 64 /* jobs queued on an executor's job thread */
#endif
#ifndef NS_EXEC_MICRO_BATCHES_MAX
#define NS_EXEC_MICRO_BATCHES_MAX 16 /* micro-batches a stage may hold between forward/backward */
#endif
#define NS_EXEC_TENSOR_DIMS_MAX 4
#define NS_EXEC_NAME_BYTES_MAX  80 /* a named tensor's name, NUL included */
#define NS_EXEC_RMSNORM_EPS     1e-5f
#define NS_EXEC_ROPE_THETA      10000.0
#define NS_EXEC_IGNORE_INDEX    (-1) /* a target that counts for nothing */
#define NS_EXEC_INIT_STD        0.02

/* ---- the executor ------------------------------------------------------------------------- */

/* Which kernels compute.
 *
 * NS_EXEC_FAST multiplies matrices with OpenBLAS, which picks its kernels by CPU (AVX2, AVX-512,
 * ...) and splits them by thread count: the same machine, seed, data and thread count give
 * bit-identical results, but another thread count or machine agrees only within float32 rounding
 * (tests/unit/test_exec.c: losses within 1e-4 relative over three AdamW steps, about 3e-6 seen).
 *
 * NS_EXEC_REPRODUCIBLE fixes the order of every floating-point reduction independently of the
 * thread count, the vector width and the CPU (in the spirit of Gensyn's RepOps): matrices are
 * multiplied by our own blocked kernel in which every output element is one fused multiply-add
 * chain over k = 0, 1, ..., K-1 (FMA is correctly rounded, so its SIMD forms and the scalar fmaf()
 * agree bit for bit), no reduction is ever split between threads, and exp, log, sin and cos are
 * our own (src/exec/detmath.c), not libm's, whose results differ by CPU. Everything else in the
 * executor (norms, softmax, RoPE, SwiGLU, AdamW) is written with the same fixed order in both
 * modes, and the build must not contract a*b+c into FMA (-std=c11 without -ffast-math).
 *
 * Proofs of Neural Work (SPEC S9) must use NS_EXEC_REPRODUCIBLE: a verifier recomputes a prover's
 * micro-batch on another machine, with another CPU and thread count. Only this mode makes that
 * recomputation bit-identical, so a proof can commit to hashes of activations and of the weight
 * update and a verifier compares them exactly; with the fast mode every comparison needs a
 * tolerance, and a tolerance is room for a cheater to hide a cheaper computation in. The mode
 * costs some speed (bench/bench_exec.c measures how much), which a node pays only for the
 * micro-batches it may have to prove.
 */
typedef enum ns_exec_mode {
    NS_EXEC_FAST = 0,
    NS_EXEC_REPRODUCIBLE = 1,
} ns_exec_mode;

typedef struct ns_exec ns_exec;

/* An executor with `threads` workers in all (1..NS_EXEC_THREADS_MAX): a job thread that runs
 * submitted jobs, and threads - 1 helpers that share its kernels. OpenBLAS is told to use
 * `threads` threads whenever this executor multiplies; that setting is process-wide, so a process
 * computes with one executor at a time for full speed (results do not depend on it). Kernels and
 * stages may be called from any thread, one region at a time per executor; the caller's thread
 * takes part in the work, so the daemon calls them from a job (ns_exec_submit). */
NS_MUST_USE int ns_exec_new(ns_exec **out, uint32_t threads, ns_exec_mode mode);
/* Waits for queued jobs to finish, stops the threads, frees. NULL is a no-op. */
void ns_exec_free(ns_exec *exec);
uint32_t ns_exec_threads(const ns_exec *exec);
ns_exec_mode ns_exec_mode_of(const ns_exec *exec);

/* OpenBLAS picks its kernels by CPU when the library loads; a version older than the CPU takes it
 * for a generic x86-64 (0.3.21 runs Prescott SSE3 kernels on Sapphire/Emerald Rapids, about 10x
 * slower). Returns the OPENBLAS_CORETYPE to set in the environment before the library loads
 * (e.g. by re-executing the program) when that happened, else NULL. ns_exec_new logs it once. */
const char *ns_exec_blas_coretype_hint(void);

/* Runs job(arg) on the executor's job thread, after every job queued before it: the way the
 * daemon keeps compute off the libuv loop thread (the job tells the loop it is done, e.g. with
 * uv_async_send). NS_ELIMIT when NS_EXEC_JOBS_MAX jobs wait; then job is not called. */
typedef void (*ns_exec_job_fn)(void *arg);
NS_MUST_USE int ns_exec_submit(ns_exec *exec, void *arg, ns_exec_job_fn job);
/* Blocks until every submitted job has finished. */
void ns_exec_wait_idle(ns_exec *exec);

/* ---- tensors ------------------------------------------------------------------------------ */

/* A float32 view: shape and strides in elements, row-major when contiguous. The data belongs to
 * whoever made the view (a stage's flat buffers). */
typedef struct ns_tensor {
    float *data;
    uint32_t ndim;
    uint64_t shape[NS_EXEC_TENSOR_DIMS_MAX];
    uint64_t strides[NS_EXEC_TENSOR_DIMS_MAX];
} ns_tensor;

/* A contiguous row-major view of data with the given shape (1..NS_EXEC_TENSOR_DIMS_MAX dims). */
ns_tensor ns_tensor_view(float *data, uint32_t ndim, const uint64_t *shape);
uint64_t ns_tensor_numel(const ns_tensor *t);
bool ns_tensor_is_contiguous(const ns_tensor *t);

/* A tensor under its checkpoint name (Hugging Face Llama names for parameters). */
typedef struct ns_named_tensor {
    char name[NS_EXEC_NAME_BYTES_MAX];
    ns_tensor tensor;
    bool decay; /* AdamW weight decay applies: matrices yes, norm weights no */
} ns_named_tensor;

/* ---- kernels ------------------------------------------------------------------------------ */
/* Every kernel takes its executor first (threads, mode), then outputs, then inputs, then shapes.
 * Arrays are contiguous row-major. Backward kernels add into every gradient they take (+=);
 * arguments named scratch are overwritten. */

/* out[B,T,C] = wte[tokens[b,t], :]; tokens in [0, V) (the caller checks). */
void ns_embedding_forward(ns_exec *ex, float *out, const int32_t *tokens, const float *wte,
                          size_t B, size_t T, size_t C);
/* dwte[V,C] += scatter of dout[B,T,C] by token. */
void ns_embedding_backward(ns_exec *ex, float *dwte, const float *dout, const int32_t *tokens,
                           size_t B, size_t T, size_t C);

/* out[B,T,C] = inp * rstd * weight[C], rstd[B,T] = 1 / sqrt(mean(inp^2) + eps). */
void ns_rmsnorm_forward(ns_exec *ex, float *out, float *rstd, const float *inp, const float *weight,
                        size_t B, size_t T, size_t C);
/* dinp[B,T,C] +=, dweight[C] +=. */
void ns_rmsnorm_backward(ns_exec *ex, float *dinp, float *dweight, const float *dout,
                         const float *inp, const float *weight, const float *rstd, size_t B,
                         size_t T, size_t C);

/* out[B,T,OC] = inp[B,T,C] . weight[OC,C]^T (no bias; weight as Hugging Face stores it). */
void ns_matmul_forward(ns_exec *ex, float *out, const float *inp, const float *weight, size_t B,
                       size_t T, size_t C, size_t OC);
/* dinp[B,T,C] += dout . weight (skipped when dinp is NULL), dweight[OC,C] += dout^T . inp. */
void ns_matmul_backward(ns_exec *ex, float *dinp, float *dweight, const float *dout,
                        const float *inp, const float *weight, size_t B, size_t T, size_t C,
                        size_t OC);

/* The rotary tables for positions 0..T-1: cos, sin [T, D/2], angle t * theta^(-2i/D), computed
 * with our own deterministic functions so that every machine gets the same bits. */
void ns_rope_table(float *cos_out, float *sin_out, size_t T, size_t D, double theta);
/* out[B,T,NH,D] = inp rotated in the Llama rotate-half layout: for i < D/2,
 * out[i] = x[i] cos - x[i + D/2] sin, out[i + D/2] = x[i + D/2] cos + x[i] sin. out may be inp. */
void ns_rope_forward(ns_exec *ex, float *out, const float *inp, const float *cos_t,
                     const float *sin_t, size_t B, size_t T, size_t NH, size_t D);
/* dinp[B,T,NH,D] += the inverse rotation of dout. */
void ns_rope_backward(ns_exec *ex, float *dinp, const float *dout, const float *cos_t,
                      const float *sin_t, size_t B, size_t T, size_t NH, size_t D);

/* Causal grouped-query attention; head h reads key/value head h / (H / HKV).
 * out[B,T,H,D] = softmax(q k^T / sqrt(D), causal) v; q[B,T,H,D], k, v[B,T,HKV,D];
 * att[B,H,T,T] the probabilities (zero above the diagonal), kept for backward. */
void ns_attention_forward(ns_exec *ex, float *out, float *att, const float *q, const float *k,
                          const float *v, size_t B, size_t T, size_t H, size_t HKV, size_t D);
/* dq[B,T,H,D] +=, dk, dv[B,T,HKV,D] +=; scratch[B,H,T,T] is overwritten. */
void ns_attention_backward(ns_exec *ex, float *dq, float *dk, float *dv, float *scratch,
                           const float *dout, const float *q, const float *k, const float *v,
                           const float *att, size_t B, size_t T, size_t H, size_t HKV, size_t D);
/* Attention of n new query rows at positions pos..pos+n-1 (q: [n,H,D], already rotated) over the
 * cached keys and values of positions 0..pos+n-1 (k, v: [pos+n,HKV,D]), each row seeing the keys
 * up to its own position: out[n,H,D]. scratch: threads * (pos + n) floats. */
void ns_attention_decode(ns_exec *ex, float *out, const float *q, const float *k, const float *v,
                         size_t n, size_t pos, size_t H, size_t HKV, size_t D, float *scratch);

/* out[B,T,F] = silu(gate) * up, silu(x) = x / (1 + exp(-x)). */
void ns_swiglu_forward(ns_exec *ex, float *out, const float *gate, const float *up, size_t B,
                       size_t T, size_t F);
/* dgate[B,T,F] +=, dup[B,T,F] +=. */
void ns_swiglu_backward(ns_exec *ex, float *dgate, float *dup, const float *dout, const float *gate,
                        const float *up, size_t B, size_t T, size_t F);

/* out[N] = inp1 + inp2 (N = B*T*C). */
void ns_residual_forward(ns_exec *ex, float *out, const float *inp1, const float *inp2, size_t N);
/* dinp1[N] += dout, dinp2[N] += dout. */
void ns_residual_backward(ns_exec *ex, float *dinp1, float *dinp2, const float *dout, size_t N);

/* The fused softmax cross-entropy of the LM head. probs[B,T,V] = softmax(logits) (probs may be
 * logits); losses[B,T] = -log probs[target], 0 where target == NS_EXEC_IGNORE_INDEX. */
void ns_softmax_crossentropy_forward(ns_exec *ex, float *losses, float *probs, const float *logits,
                                     const int32_t *targets, size_t B, size_t T, size_t V);
/* dlogits[B,T,V] += (probs - onehot(target)) * dlosses[b,t]; nothing for ignored targets. */
void ns_softmax_crossentropy_backward(ns_exec *ex, float *dlogits, const float *dlosses,
                                      const float *probs, const int32_t *targets, size_t B,
                                      size_t T, size_t V);

/* ---- stages ------------------------------------------------------------------------------- */

typedef struct ns_stage_config {
    ns_arch arch;         /* hidden = heads * 64, heads a multiple of kv_heads */
    uint32_t layer_first; /* [layer_first, layer_last) of arch.layers */
    uint32_t layer_last;
    uint32_t batch_max;         /* B of the largest micro-batch */
    uint32_t seq_len_max;       /* T of the longest, <= arch.seq_len_max */
    uint32_t micro_batches_max; /* in flight at once, 1..NS_EXEC_MICRO_BATCHES_MAX */
} ns_stage_config;

/* A stage is not thread-safe: one call at a time (the executor's job thread, in the daemon). */
typedef struct ns_stage ns_stage;

/* What a stage's forward takes. The stage copies what it keeps; the caller may reuse its buffers
 * as soon as ns_stage_forward returns. */
typedef struct ns_stage_input {
    uint32_t batch;         /* B, 1..batch_max */
    uint32_t seq_len;       /* T, 1..seq_len_max */
    const int32_t *tokens;  /* [B,T] in [0, vocab): when the stage holds the embedding */
    const float *acts;      /* [B,T,C]: otherwise */
    const int32_t *targets; /* [B,T] in [0, vocab) or -1: when the stage holds the head */
} ns_stage_input;

/* Bytes that ns_stage_new would allocate for cfg (parameters, gradients, AdamW state, activations
 * of every micro-batch slot, scratch), so a caller can refuse a configuration before allocating.
 * NS_EINVAL for a malformed config, NS_EOVERFLOW when a size does not fit. */
NS_MUST_USE int ns_stage_memory_bytes(const ns_stage_config *cfg, uint64_t *out);
/* A stage with zeroed parameters (call ns_stage_init), zero gradients and zero AdamW state. */
NS_MUST_USE int ns_stage_new(ns_stage **out, ns_exec *exec, const ns_stage_config *cfg);
void ns_stage_free(ns_stage *st);
const ns_stage_config *ns_stage_config_of(const ns_stage *st);
bool ns_stage_has_embedding(const ns_stage *st);
bool ns_stage_has_head(const ns_stage *st);

/* Deterministic initialisation: every weight is N(0, 0.02^2), the output projections (o_proj,
 * down_proj) scaled by 1/sqrt(2 * layers), norm weights 1. Each tensor's values depend only on
 * seed, its global layer index and its kind, so any split of the model into stages gets the same
 * weights as the whole. Resets gradients and AdamW state. */
void ns_stage_init(ns_stage *st, uint64_t seed);

/* Forward of one micro-batch, kept under micro_batch_id until its backward.
 * out: [B,T,C] activations, or at the stage with the head out[0] = the mean cross-entropy over
 * targets that are not -1 (0 when there are none).
 * NS_EINVAL: bad shapes or token/target ids (nothing kept); NS_EEXIST: the id is in flight;
 * NS_ELIMIT: micro_batches_max are in flight. */
NS_MUST_USE int ns_stage_forward(ns_stage *st, uint64_t micro_batch_id, const ns_stage_input *in,
                                 float *out);
/* Backward of a micro-batch: adds its parameter gradients into the gradient buffer, writes the
 * gradient of the stage's input into dinp [B,T,C] (NULL at the stage with the embedding), and
 * forgets the micro-batch. dout: [B,T,C], or at the head dout[0] = d objective / d loss (1 for a
 * plain step, 1/n to average n accumulated micro-batches). NS_ENOENT for an unknown id. */
NS_MUST_USE int ns_stage_backward(ns_stage *st, uint64_t micro_batch_id, const float *dout,
                                  float *dinp);
/* Forgets a micro-batch without its backward (a pipeline peer went away). NS_ENOENT if unknown. */
NS_MUST_USE int ns_stage_drop(ns_stage *st, uint64_t micro_batch_id);
uint32_t ns_stage_in_flight(const ns_stage *st);

/* Named views, in the order of the flat buffers. Parameters and gradients share names; the AdamW
 * state is named "<param>.exp_avg" and "<param>.exp_avg_sq" (2 * count entries). */
const ns_named_tensor *ns_stage_params(const ns_stage *st, size_t *count);
const ns_named_tensor *ns_stage_grads(const ns_stage *st, size_t *count);
const ns_named_tensor *ns_stage_optim_state(const ns_stage *st, size_t *count);
/* The flat buffers themselves: *count floats each. */
float *ns_stage_param_buffer(ns_stage *st, size_t *count);
float *ns_stage_grad_buffer(ns_stage *st, size_t *count);
void ns_stage_zero_grad(ns_stage *st);
/* AdamW updates done so far (the optimizer state's step); a checkpoint restores it. */
uint64_t ns_stage_optim_step(const ns_stage *st);
void ns_stage_set_optim_step(ns_stage *st, uint64_t step);

/* ---- inference ---------------------------------------------------------------------------- */

#define NS_EXEC_DECODE_CHUNK                                                                       \
    64 /* positions a decode pass computes at once (a longer prefill loops) */

/* The keys and values of one sequence through one stage, so that each new token costs one
 * position's work instead of the whole prefix's. capacity is the longest sequence it holds
 * (<= the stage's seq_len_max, the reach of its rotary table). */
typedef struct ns_kv_cache ns_kv_cache;

/* Bytes that ns_kv_cache_new would allocate. NS_EINVAL for capacity 0 or beyond seq_len_max. */
NS_MUST_USE int ns_kv_cache_memory_bytes(const ns_stage *st, uint32_t capacity, uint64_t *out);
NS_MUST_USE int ns_kv_cache_new(ns_kv_cache **out, const ns_stage *st, uint32_t capacity);
void ns_kv_cache_free(ns_kv_cache *kv);
/* Decodes on ex instead of the stage's executor: a trainer in the reproducible mode can serve
 * text with a fast one (generation proves nothing, and OpenBLAS is faster for it). */
void ns_kv_cache_set_exec(ns_kv_cache *kv, ns_exec *ex);
/* Forgets the sequence: the next decode starts at position 0. */
void ns_kv_cache_reset(ns_kv_cache *kv);
uint32_t ns_kv_cache_len(const ns_kv_cache *kv);
uint32_t ns_kv_cache_capacity(const ns_kv_cache *kv);

/* Inference forward of n new positions of the sequence in kv (batch 1, no gradients kept): their
 * keys and values join the cache. Input: tokens [n] at the stage with the embedding, else acts
 * [n,C]. out: [n,C] activations, or at the stage with the head the logits [V] of the last new
 * position. The results match ns_stage_forward over the whole sequence within float rounding.
 * NS_EINVAL: n 0, a missing input, a token outside the vocabulary, or kv made for another stage;
 * NS_ELIMIT: the sequence would pass the cache's capacity. Nothing changes on an error. */
NS_MUST_USE int ns_stage_decode(ns_stage *st, ns_kv_cache *kv, uint32_t n, const int32_t *tokens,
                                const float *acts, float *out);

/* How the next token is drawn from logits. temperature 0 is greedy (the highest logit, the lowest
 * id on a tie); otherwise softmax(logits / temperature) restricted to the top_k highest (0: all)
 * and then to the smallest prefix whose probability reaches top_p (1: all). */
typedef struct ns_sample_config {
    double temperature; /* 0..NS_SAMPLE_TEMPERATURE_MAX */
    uint32_t top_k;     /* 0..vocab */
    double top_p;       /* (0, 1] */
    uint64_t seed;      /* the same seed and logits give the same tokens on every machine */
} ns_sample_config;

#define NS_SAMPLE_TEMPERATURE_MAX 100.0

typedef struct ns_sampler ns_sampler;

/* NS_EINVAL with a reason in err (when not NULL) for a parameter out of range. */
NS_MUST_USE int ns_sample_config_check(const ns_sample_config *cfg, uint32_t vocab,
                                       const char **err);
/* A sampler for cfg; the same refusals as ns_sample_config_check. */
NS_MUST_USE int ns_sampler_new(ns_sampler **out, uint32_t vocab, const ns_sample_config *cfg,
                               const char **err);
void ns_sampler_free(ns_sampler *s);
/* The next token id for logits [vocab]. NaN logits never win. */
uint32_t ns_sampler_next(ns_sampler *s, const float *logits);

/* ---- optimizer ---------------------------------------------------------------------------- */

typedef struct ns_optim_config {
    double lr_max;         /* peak learning rate, reached at the end of warm-up */
    double lr_min;         /* where the cosine ends */
    uint64_t warmup_steps; /* linear from lr_max / warmup_steps up to lr_max */
    uint64_t decay_steps;  /* total steps: the cosine reaches lr_min here and stays */
    double beta1;
    double beta2;
    double eps;
    double weight_decay; /* on matrices only */
    double grad_clip;    /* global L2 norm; 0 = no clipping */
} ns_optim_config;

/* beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1, clip 1.0, lr 3e-4 -> 3e-5, 100 warm-up
 * steps of 10000. */
void ns_optim_config_default(ns_optim_config *cfg);
/* The learning rate of update number step (0-based). */
double ns_optim_lr(const ns_optim_config *cfg, uint64_t step);
/* Sum of squared gradients of this stage, in a fixed order (double). In a pipeline the stages'
 * sums are added before ns_optim_clip_scale, so that clipping uses the global norm. */
double ns_stage_grad_sq_sum(ns_stage *st);
/* The same, added to acc tensor by tensor: a pipeline passes the sum from stage to stage in layer
 * order, and the last stage's result is the whole model's sum bit for bit. */
double ns_stage_grad_sq_sum_from(ns_stage *st, double acc);
/* min(1, grad_clip / (sqrt(grad_sq_sum) + 1e-6)), as torch.nn.utils.clip_grad_norm_. */
float ns_optim_clip_scale(const ns_optim_config *cfg, double grad_sq_sum);
/* One AdamW update with gradients multiplied by grad_scale, at the learning rate of the current
 * step; then the step advances and the gradients are zeroed. Gradient accumulation is the
 * caller's: run several forward/backward pairs (dout 1/n at the head) before one update. */
void ns_stage_adamw_step(ns_stage *st, const ns_optim_config *cfg, float grad_scale);

/* What one ns_stage_optimize did. */
typedef struct ns_optim_report {
    double grad_norm; /* before clipping */
    double lr;
    float clip_scale;
} ns_optim_report;
/* The one-stage case: norm, clip scale, AdamW update. report may be NULL. */
void ns_stage_optimize(ns_stage *st, const ns_optim_config *cfg, ns_optim_report *report);

#endif
