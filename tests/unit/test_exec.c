/*
 * test_exec.c: the CPU executor: kernels, stages, AdamW, determinism (SPEC S3, issue 5).
 *
 * Three kinds of evidence. (1) tests/reference/tiny.nsref, written by an independent PyTorch
 * implementation (tests/reference/make_reference.py, float64) from the same formula weights:
 * logits, loss, every parameter gradient, and losses, gradient norms and update norms over three
 * AdamW steps, compared through check_tensor, which reports the largest difference relative to
 * the largest reference value. (2) Central finite differences for every backward kernel, on tiny
 * shapes, in both modes; the gradients start at 0.5 so that "backward adds" is checked too.
 * (3) Determinism: bit-identical runs with the same thread count, and in the reproducible mode
 * bit-identical results across thread counts and across the scalar, AVX2 and AVX-512 kernels.
 * Everything is small enough to stay well under 30 s under AddressSanitizer.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../src/exec/stage_internal.h"
#include "neuroshard/exec.h"

#define REFERENCE_PATH      "tests/reference/tiny.nsref"
#define REFERENCE_BYTES_MAX (4u << 20)
#define REFERENCE_ITEMS_MAX 64

/* Tolerances against the float64 PyTorch reference, relative to the tensor's largest value
 * (float32 arithmetic over a 2-layer model; the measured errors, about 1e-6, are 5-15x below). */
#define TOL_LOGITS      5e-6
#define TOL_LOSS        5e-6
#define TOL_GRAD        1e-5
#define TOL_STEP_LOSS   2e-5 /* after AdamW updates with lr 1e-2, float32 drift compounds */
#define TOL_UPDATE_NORM 1e-5
/* Finite differences: |analytic - numeric| <= FD_TOL_ABS + FD_TOL_REL * |numeric|. */
#define FD_STEP       1e-3f
#define FD_TOL_ABS    1e-3
#define FD_TOL_REL    1e-2
#define FD_GRAD_START 0.5f /* gradients start here: backward must add, not overwrite */
/* Fast mode against reproducible mode: same math, other summation order. */
#define TOL_MODES 1e-4

/* ---- helpers ------------------------------------------------------------------------------ */

/* max |got - want| / max |want|, silently. */
static double rel_diff(const float *got, const float *want, size_t n)
{
    double diff_max = 0.0;
    double want_max = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        diff_max = d > diff_max ? d : diff_max;
        want_max = fabs(want[i]) > want_max ? fabs(want[i]) : want_max;
    }
    return diff_max / (want_max > 0 ? want_max : 1.0);
}

/* Prints and returns max |got - want| / max |want| (llm.c's check_tensor, made relative). */
static double check_tensor(const float *got, const float *want, size_t n, const char *label)
{
    double diff_max = 0.0;
    double want_max = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        diff_max = d > diff_max ? d : diff_max;
        want_max = fabs(want[i]) > want_max ? fabs(want[i]) : want_max;
    }
    double rel = diff_max / (want_max > 0 ? want_max : 1.0);
    printf("  %-52s max diff %.3e  (relative %.3e, n %zu)\n", label, diff_max, rel, n);
    return rel;
}

static uint64_t rng_next(uint64_t *state)
{
    *state += 1;
    return ns__mix64(*state);
}

/* Uniform in [-1, 1). */
static float rng_uniform(uint64_t *state)
{
    return (float)((double)(rng_next(state) >> 40) * 0x1p-23 - 1.0);
}

static void fill_uniform(float *x, size_t n, uint64_t seed, float scale)
{
    uint64_t state = seed;
    for (size_t i = 0; i < n; i++)
        x[i] = scale * rng_uniform(&state);
}

static float *floats(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static ns_exec *exec_new(uint32_t threads, ns_exec_mode mode)
{
    ns_exec *ex;
    assert_int_equal(ns_exec_new(&ex, threads, mode), NS_OK);
    return ex;
}

/* ---- the reference file ------------------------------------------------------------------- */

typedef struct ref_item {
    char name[96];
    uint32_t dtype; /* 0 f32, 1 i32, 2 f64 */
    uint32_t ndim;
    uint32_t dims[4];
    size_t count;
    const uint8_t *data;
} ref_item;

typedef struct reference {
    uint8_t *buf;
    size_t len;
    ref_item items[REFERENCE_ITEMS_MAX];
    size_t count;
} reference;

static bool read_u32(const uint8_t *buf, size_t len, size_t *pos, uint32_t *out)
{
    if (len - *pos < 4)
        return false;
    *out = (uint32_t)buf[*pos] | (uint32_t)buf[*pos + 1] << 8 | (uint32_t)buf[*pos + 2] << 16 |
           (uint32_t)buf[*pos + 3] << 24;
    *pos += 4;
    return true;
}

static bool parse_item(const uint8_t *buf, size_t len, size_t *pos, ref_item *it)
{
    uint32_t name_len;
    if (!read_u32(buf, len, pos, &name_len) || name_len >= sizeof it->name || len - *pos < name_len)
        return false;
    memcpy(it->name, buf + *pos, name_len);
    it->name[name_len] = 0;
    *pos += name_len;
    if (!read_u32(buf, len, pos, &it->dtype) || it->dtype > 2 ||
        !read_u32(buf, len, pos, &it->ndim) || it->ndim > 4)
        return false;
    it->count = 1;
    for (uint32_t d = 0; d < it->ndim; d++) {
        if (!read_u32(buf, len, pos, &it->dims[d]))
            return false;
        it->count *= it->dims[d];
    }
    size_t bytes = it->count * (it->dtype == 2 ? 8 : 4);
    if (len - *pos < bytes)
        return false;
    it->data = buf + *pos;
    *pos += bytes;
    return true;
}

static void reference_load(reference *ref)
{
    memset(ref, 0, sizeof *ref);
    int err = ns_file_read(REFERENCE_PATH, REFERENCE_BYTES_MAX, &ref->buf, &ref->len);
    if (err != NS_OK)
        fail_msg("%s: %s (run the tests from the repository root)", REFERENCE_PATH,
                 ns_strerror(err));
    size_t pos = 8;
    uint32_t count = 0;
    assert_true(ref->len >= 8 && memcmp(ref->buf, "NSREF001", 8) == 0);
    assert_true(read_u32(ref->buf, ref->len, &pos, &count) && count <= REFERENCE_ITEMS_MAX);
    for (uint32_t i = 0; i < count; i++)
        assert_true(parse_item(ref->buf, ref->len, &pos, &ref->items[i]));
    ref->count = count;
    assert_int_equal(pos, ref->len);
}

static const ref_item *ref_get(const reference *ref, const char *name, uint32_t dtype)
{
    for (size_t i = 0; i < ref->count; i++) {
        if (strcmp(ref->items[i].name, name) == 0) {
            assert_int_equal(ref->items[i].dtype, dtype);
            return &ref->items[i];
        }
    }
    fail_msg("reference has no %s", name);
    return NULL;
}

/* Little-endian file, little-endian machine (x86-64, aarch64): the data is read in place. */
static float *ref_f32(const reference *ref, const char *name, size_t n)
{
    const ref_item *it = ref_get(ref, name, 0);
    assert_int_equal(it->count, n);
    float *out = floats(n);
    memcpy(out, it->data, n * sizeof(float));
    return out;
}

static void ref_i32(const reference *ref, const char *name, int32_t *out, size_t n)
{
    const ref_item *it = ref_get(ref, name, 1);
    assert_int_equal(it->count, n);
    memcpy(out, it->data, n * sizeof(int32_t));
}

static double ref_f64(const reference *ref, const char *name, size_t index)
{
    const ref_item *it = ref_get(ref, name, 2);
    assert_true(index < it->count);
    double out;
    memcpy(&out, it->data + index * 8, 8);
    return out;
}

/* The formula weights of make_reference.py: tensor `index`, element j. */
static void formula_weights(float *w, size_t n, uint64_t index, bool is_norm, uint64_t seed)
{
    uint64_t seed_mix = ns__mix64(seed);
    for (size_t j = 0; j < n; j++) {
        uint64_t z = ns__mix64(((index << 32) + j) ^ seed_mix);
        if (is_norm)
            w[j] = (float)(1.0 + ((double)(int64_t)(z >> 42) - 0x1p21) * 0x1p-21 * 0.25);
        else
            w[j] = (float)(((double)(int64_t)(z >> 40) - 0x1p23) * 0x1p-23 *
                           (index == 0 ? 1.0 : 0.125));
    }
}

/* ---- the tiny model of the reference ------------------------------------------------------- */

typedef struct tiny {
    reference ref;
    ns_arch arch;
    uint32_t B;
    uint32_t T;
    int32_t tokens[64];
    int32_t targets[64];
    ns_optim_config optim;
    uint32_t steps;
} tiny;

static void tiny_load(tiny *t)
{
    reference_load(&t->ref);
    int32_t cfg[9];
    ref_i32(&t->ref, "config", cfg, 9);
    t->arch = (ns_arch){.layers = (uint32_t)cfg[0],
                        .hidden = (uint32_t)cfg[1],
                        .heads = (uint32_t)cfg[2],
                        .kv_heads = (uint32_t)cfg[3],
                        .intermediate = (uint32_t)cfg[4],
                        .vocab = (uint32_t)cfg[5],
                        .seq_len_max = (uint32_t)cfg[7]};
    t->B = (uint32_t)cfg[6];
    t->T = (uint32_t)cfg[7];
    assert_true(t->B * t->T <= 64);
    ref_i32(&t->ref, "tokens", t->tokens, t->B * t->T);
    ref_i32(&t->ref, "targets", t->targets, t->B * t->T);
    t->optim = (ns_optim_config){.lr_max = ref_f64(&t->ref, "optim", 0),
                                 .lr_min = ref_f64(&t->ref, "optim", 1),
                                 .warmup_steps = (uint64_t)ref_f64(&t->ref, "optim", 2),
                                 .decay_steps = (uint64_t)ref_f64(&t->ref, "optim", 3),
                                 .beta1 = ref_f64(&t->ref, "optim", 4),
                                 .beta2 = ref_f64(&t->ref, "optim", 5),
                                 .eps = ref_f64(&t->ref, "optim", 6),
                                 .weight_decay = ref_f64(&t->ref, "optim", 7),
                                 .grad_clip = ref_f64(&t->ref, "optim", 8)};
    t->steps = (uint32_t)ref_f64(&t->ref, "optim", 9);
}

static ns_stage *tiny_stage(const tiny *t, ns_exec *ex)
{
    ns_stage_config cfg = {.arch = t->arch,
                           .layer_first = 0,
                           .layer_last = t->arch.layers,
                           .batch_max = t->B,
                           .seq_len_max = t->T,
                           .micro_batches_max = 2};
    ns_stage *st;
    assert_int_equal(ns_stage_new(&st, ex, &cfg), NS_OK);
    size_t count;
    const ns_named_tensor *p = ns_stage_params(st, &count);
    double sum = 0.0;
    for (size_t i = 0; i < count; i++) {
        size_t n = (size_t)ns_tensor_numel(&p[i].tensor);
        formula_weights(p[i].tensor.data, n, i, p[i].tensor.ndim == 1, 20260101);
        for (size_t j = 0; j < n; j++)
            sum += p[i].tensor.data[j];
    }
    assert_true(fabs(sum - ref_f64(&t->ref, "weights_sum", 0)) < 1e-6);
    return st;
}

static ns_stage_input tiny_input(const tiny *t)
{
    return (ns_stage_input){
        .batch = t->B, .seq_len = t->T, .tokens = t->tokens, .targets = t->targets};
}

static void reference_forward(ns_exec_mode mode)
{
    tiny t;
    tiny_load(&t);
    ns_exec *ex = exec_new(2, mode);
    ns_stage *st = tiny_stage(&t, ex);
    ns_stage_input in = tiny_input(&t);
    float loss;
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_OK);

    size_t BT = (size_t)t.B * t.T;
    float *logits = floats(BT * t.arch.vocab);
    ns_matmul_forward(ex, logits, st->slots[0].lnf, st->head, t.B, t.T, t.arch.hidden,
                      t.arch.vocab);
    float *want = ref_f32(&t.ref, "logits", BT * t.arch.vocab);
    assert_true(check_tensor(logits, want, BT * t.arch.vocab, "logits") <= TOL_LOGITS);
    float want_loss = (float)ref_f64(&t.ref, "loss", 0);
    assert_true(check_tensor(&loss, &want_loss, 1, "loss") <= TOL_LOSS);
    free(want);
    free(logits);
    ns_stage_free(st);
    ns_exec_free(ex);
    free(t.ref.buf);
}

static void reference_gradients(ns_exec_mode mode)
{
    tiny t;
    tiny_load(&t);
    ns_exec *ex = exec_new(2, mode);
    ns_stage *st = tiny_stage(&t, ex);
    ns_stage_input in = tiny_input(&t);
    float loss;
    float one = 1.0f;
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_OK);
    assert_int_equal(ns_stage_backward(st, 1, &one, NULL), NS_OK);
    size_t count;
    const ns_named_tensor *g = ns_stage_grads(st, &count);
    assert_int_equal(count, 2 + 9 * t.arch.layers + 1);
    for (size_t i = 0; i < count; i++) {
        char name[128];
        snprintf(name, sizeof name, "grad.%s", g[i].name);
        size_t n = (size_t)ns_tensor_numel(&g[i].tensor);
        float *want = ref_f32(&t.ref, name, n);
        assert_true(check_tensor(g[i].tensor.data, want, n, name) <= TOL_GRAD);
        free(want);
    }
    ns_stage_free(st);
    ns_exec_free(ex);
    free(t.ref.buf);
}

static void reference_adamw(ns_exec_mode mode)
{
    tiny t;
    tiny_load(&t);
    ns_exec *ex = exec_new(2, mode);
    ns_stage *st = tiny_stage(&t, ex);
    size_t n_params;
    float *params = ns_stage_param_buffer(st, &n_params);
    float *initial = floats(n_params);
    memcpy(initial, params, n_params * sizeof(float));
    ns_stage_input in = tiny_input(&t);
    float losses[8];
    float norms[8];
    float one = 1.0f;
    for (uint32_t s = 0; s < t.steps; s++) {
        assert_int_equal(ns_stage_forward(st, s, &in, &losses[s]), NS_OK);
        assert_int_equal(ns_stage_backward(st, s, &one, NULL), NS_OK);
        ns_optim_report report;
        ns_stage_optimize(st, &t.optim, &report);
        norms[s] = (float)report.grad_norm;
    }
    assert_int_equal(ns_stage_forward(st, 99, &in, &losses[t.steps]), NS_OK);
    assert_int_equal(ns_stage_drop(st, 99), NS_OK);
    for (uint32_t s = 0; s <= t.steps; s++) {
        char label[64];
        snprintf(label, sizeof label, "loss before AdamW step %u", s + 1);
        float want = (float)ref_f64(&t.ref, "step_losses", s);
        assert_true(check_tensor(&losses[s], &want, 1, label) <= TOL_STEP_LOSS);
        if (s < t.steps) {
            float want_norm = (float)ref_f64(&t.ref, "step_grad_norms", s);
            snprintf(label, sizeof label, "gradient norm at step %u", s + 1);
            assert_true(check_tensor(&norms[s], &want_norm, 1, label) <= TOL_STEP_LOSS);
        }
    }
    size_t count;
    const ns_named_tensor *p = ns_stage_params(st, &count);
    for (size_t i = 0; i < count; i++) {
        size_t offset = (size_t)(p[i].tensor.data - params);
        double sq = 0.0;
        for (size_t j = 0; j < ns_tensor_numel(&p[i].tensor); j++) {
            double d = (double)params[offset + j] - initial[offset + j];
            sq += d * d;
        }
        float got = (float)sqrt(sq);
        float want = (float)ref_f64(&t.ref, "update_norms", i);
        char label[128];
        snprintf(label, sizeof label, "update norm %s", p[i].name);
        assert_true(check_tensor(&got, &want, 1, label) <= TOL_UPDATE_NORM);
    }
    free(initial);
    ns_stage_free(st);
    ns_exec_free(ex);
    free(t.ref.buf);
}

static void test_reference_logits_and_loss_match_pytorch(void **state)
{
    (void)state;
    reference_forward(NS_EXEC_FAST);
    reference_forward(NS_EXEC_REPRODUCIBLE);
}

static void test_reference_every_parameter_gradient_matches_pytorch(void **state)
{
    (void)state;
    reference_gradients(NS_EXEC_FAST);
    reference_gradients(NS_EXEC_REPRODUCIBLE);
}

static void test_reference_three_adamw_steps_match_pytorch(void **state)
{
    (void)state;
    reference_adamw(NS_EXEC_FAST);
    reference_adamw(NS_EXEC_REPRODUCIBLE);
}

/* ---- finite differences ------------------------------------------------------------------- */

/* One input of a kernel under test: its values and the analytic gradient backward added. */
typedef struct fd_input {
    const char *name;
    float *x;
    float *dx;
    size_t n;
} fd_input;

/* Runs the kernel's forward on the current inputs; returns sum(out * weights) in double. */
typedef double (*fd_objective_fn)(void *ctx);

/* Compares each analytic gradient (minus FD_GRAD_START) with a central difference. */
static void fd_check(const char *kernel, const fd_input *inputs, size_t n_inputs,
                     fd_objective_fn objective, void *ctx)
{
    for (size_t k = 0; k < n_inputs; k++) {
        const fd_input *in = &inputs[k];
        double worst = 0.0;
        for (size_t i = 0; i < in->n; i++) {
            float saved = in->x[i];
            in->x[i] = saved + FD_STEP;
            double up = objective(ctx);
            in->x[i] = saved - FD_STEP;
            double down = objective(ctx);
            in->x[i] = saved;
            double numeric = (up - down) / (2.0 * (double)FD_STEP);
            double analytic = (double)in->dx[i] - FD_GRAD_START;
            double err = fabs(analytic - numeric);
            if (err > FD_TOL_ABS + FD_TOL_REL * fabs(numeric))
                fail_msg("%s d%s[%zu]: analytic %.6g numeric %.6g", kernel, in->name, i, analytic,
                         numeric);
            worst = err > worst ? err : worst;
        }
        printf("  %-14s d%-6s max |analytic - numeric| %.2e over %zu\n", kernel, in->name, worst,
               in->n);
    }
}

static float *grads_start(size_t n)
{
    float *g = floats(n);
    for (size_t i = 0; i < n; i++)
        g[i] = FD_GRAD_START;
    return g;
}

static double dot_out(const float *out, const float *w, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)out[i] * w[i];
    return s;
}

/* Every kernel test below: fill inputs, pick random output weights w (the objective's dout),
 * run backward once into gradients that start at FD_GRAD_START, then fd_check. */

typedef struct fd_matmul {
    ns_exec *ex;
    float *out, *inp, *weight, *w;
    size_t B, T, C, OC;
} fd_matmul;

static double matmul_objective(void *ctx)
{
    fd_matmul *c = ctx;
    ns_matmul_forward(c->ex, c->out, c->inp, c->weight, c->B, c->T, c->C, c->OC);
    return dot_out(c->out, c->w, c->B * c->T * c->OC);
}

static void fd_matmul_run(ns_exec_mode mode)
{
    fd_matmul c = {.ex = exec_new(2, mode), .B = 2, .T = 3, .C = 5, .OC = 7};
    size_t bt = c.B * c.T;
    c.out = floats(bt * c.OC);
    c.inp = floats(bt * c.C);
    c.weight = floats(c.OC * c.C);
    c.w = floats(bt * c.OC);
    fill_uniform(c.inp, bt * c.C, 1, 1.0f);
    fill_uniform(c.weight, c.OC * c.C, 2, 1.0f);
    fill_uniform(c.w, bt * c.OC, 3, 1.0f);
    fd_input in[2] = {{"inp", c.inp, grads_start(bt * c.C), bt * c.C},
                      {"weight", c.weight, grads_start(c.OC * c.C), c.OC * c.C}};
    ns_matmul_backward(c.ex, in[0].dx, in[1].dx, c.w, c.inp, c.weight, c.B, c.T, c.C, c.OC);
    fd_check("matmul", in, 2, matmul_objective, &c);
    free(in[0].dx);
    free(in[1].dx);
    free(c.out);
    free(c.inp);
    free(c.weight);
    free(c.w);
    ns_exec_free(c.ex);
}

static void test_matmul_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_matmul_run(NS_EXEC_FAST);
    fd_matmul_run(NS_EXEC_REPRODUCIBLE);
}

typedef struct fd_embedding {
    ns_exec *ex;
    float *out, *wte, *w;
    int32_t tokens[6];
} fd_embedding;

static double embedding_objective(void *ctx)
{
    fd_embedding *c = ctx;
    ns_embedding_forward(c->ex, c->out, c->tokens, c->wte, 2, 3, 4);
    return dot_out(c->out, c->w, 2 * 3 * 4);
}

static void test_embedding_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_embedding c = {.ex = exec_new(2, NS_EXEC_FAST), .tokens = {3, 1, 3, 0, 4, 3}};
    c.out = floats(24);
    c.wte = floats(5 * 4);
    c.w = floats(24);
    fill_uniform(c.wte, 20, 4, 1.0f);
    fill_uniform(c.w, 24, 5, 1.0f);
    fd_input in = {"wte", c.wte, grads_start(20), 20};
    ns_embedding_backward(c.ex, in.dx, c.w, c.tokens, 2, 3, 4);
    fd_check("embedding", &in, 1, embedding_objective, &c);
    for (size_t i = 2 * 4; i < 3 * 4; i++)
        assert_true(in.dx[i] == FD_GRAD_START); /* token 2 never appears */
    free(in.dx);
    free(c.out);
    free(c.wte);
    free(c.w);
    ns_exec_free(c.ex);
}

typedef struct fd_rmsnorm {
    ns_exec *ex;
    float *out, *rstd, *inp, *weight, *w;
} fd_rmsnorm;

static double rmsnorm_objective(void *ctx)
{
    fd_rmsnorm *c = ctx;
    ns_rmsnorm_forward(c->ex, c->out, c->rstd, c->inp, c->weight, 2, 3, 8);
    return dot_out(c->out, c->w, 48);
}

static void test_rmsnorm_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_rmsnorm c = {.ex = exec_new(2, NS_EXEC_FAST)};
    c.out = floats(48);
    c.rstd = floats(6);
    c.inp = floats(48);
    c.weight = floats(8);
    c.w = floats(48);
    fill_uniform(c.inp, 48, 6, 1.0f);
    fill_uniform(c.weight, 8, 7, 1.0f);
    fill_uniform(c.w, 48, 8, 1.0f);
    fd_input in[2] = {{"inp", c.inp, grads_start(48), 48}, {"weight", c.weight, grads_start(8), 8}};
    rmsnorm_objective(&c);
    ns_rmsnorm_backward(c.ex, in[0].dx, in[1].dx, c.w, c.inp, c.weight, c.rstd, 2, 3, 8);
    fd_check("rmsnorm", in, 2, rmsnorm_objective, &c);
    free(in[0].dx);
    free(in[1].dx);
    free(c.out);
    free(c.rstd);
    free(c.inp);
    free(c.weight);
    free(c.w);
    ns_exec_free(c.ex);
}

typedef struct fd_rope {
    ns_exec *ex;
    float *out, *inp, *w, *cos_t, *sin_t;
} fd_rope;

static double rope_objective(void *ctx)
{
    fd_rope *c = ctx;
    ns_rope_forward(c->ex, c->out, c->inp, c->cos_t, c->sin_t, 2, 5, 3, 8);
    return dot_out(c->out, c->w, 2 * 5 * 3 * 8);
}

static void test_rope_backward_matches_finite_differences(void **state)
{
    (void)state;
    size_t n = 2 * 5 * 3 * 8;
    fd_rope c = {.ex = exec_new(2, NS_EXEC_FAST)};
    c.out = floats(n);
    c.inp = floats(n);
    c.w = floats(n);
    c.cos_t = floats(5 * 4);
    c.sin_t = floats(5 * 4);
    ns_rope_table(c.cos_t, c.sin_t, 5, 8, NS_EXEC_ROPE_THETA);
    fill_uniform(c.inp, n, 9, 1.0f);
    fill_uniform(c.w, n, 10, 1.0f);
    fd_input in = {"inp", c.inp, grads_start(n), n};
    ns_rope_backward(c.ex, in.dx, c.w, c.cos_t, c.sin_t, 2, 5, 3, 8);
    fd_check("rope", &in, 1, rope_objective, &c);
    /* position 0 is the identity; a rotation keeps norms */
    rope_objective(&c);
    assert_memory_equal(c.out, c.inp, 3 * 8 * sizeof(float));
    free(in.dx);
    free(c.out);
    free(c.inp);
    free(c.w);
    free(c.cos_t);
    free(c.sin_t);
    ns_exec_free(c.ex);
}

typedef struct fd_attention {
    ns_exec *ex;
    float *out, *att, *q, *k, *v, *w;
    size_t B, T, H, HKV, D;
} fd_attention;

static double attention_objective(void *ctx)
{
    fd_attention *c = ctx;
    ns_attention_forward(c->ex, c->out, c->att, c->q, c->k, c->v, c->B, c->T, c->H, c->HKV, c->D);
    return dot_out(c->out, c->w, c->B * c->T * c->H * c->D);
}

static void fd_attention_run(ns_exec_mode mode, size_t B, size_t T, size_t H, size_t HKV, size_t D)
{
    size_t nq = B * T * H * D, nk = B * T * HKV * D, na = B * H * T * T;
    fd_attention c = {.ex = exec_new(2, mode), .B = B, .T = T, .H = H, .HKV = HKV, .D = D};
    c.out = floats(nq);
    c.att = floats(na);
    c.q = floats(nq);
    c.k = floats(nk);
    c.v = floats(nk);
    c.w = floats(nq);
    fill_uniform(c.q, nq, 11, 1.0f);
    fill_uniform(c.k, nk, 12, 1.0f);
    fill_uniform(c.v, nk, 13, 1.0f);
    fill_uniform(c.w, nq, 14, 1.0f);
    fd_input in[3] = {{"q", c.q, grads_start(nq), nq},
                      {"k", c.k, grads_start(nk), nk},
                      {"v", c.v, grads_start(nk), nk}};
    float *scratch = floats(na);
    attention_objective(&c);
    ns_attention_backward(c.ex, in[0].dx, in[1].dx, in[2].dx, scratch, c.w, c.q, c.k, c.v, c.att, B,
                          T, H, HKV, D);
    fd_check("attention", in, 3, attention_objective, &c);
    for (size_t t = 0; t < T; t++) { /* causal: rows sum to 1, nothing above the diagonal */
        double sum = 0.0;
        for (size_t j = 0; j < T; j++)
            sum += c.att[t * T + j];
        assert_true(fabs(sum - 1.0) < 1e-5);
        for (size_t j = t + 1; j < T; j++)
            assert_true(c.att[t * T + j] == 0.0f);
    }
    for (int i = 0; i < 3; i++)
        free(in[i].dx);
    free(scratch);
    free(c.out);
    free(c.att);
    free(c.q);
    free(c.k);
    free(c.v);
    free(c.w);
    ns_exec_free(c.ex);
}

/* Two query heads a key/value head; then T = 70 crosses the kernel's 64-row query blocks. */
static void test_attention_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_attention_run(NS_EXEC_FAST, 2, 5, 4, 2, 8);
    fd_attention_run(NS_EXEC_REPRODUCIBLE, 2, 5, 4, 2, 8);
    fd_attention_run(NS_EXEC_FAST, 1, 70, 2, 1, 4);
    fd_attention_run(NS_EXEC_REPRODUCIBLE, 1, 70, 2, 1, 4);
}

typedef struct fd_swiglu {
    ns_exec *ex;
    float *out, *gate, *up, *w;
} fd_swiglu;

static double swiglu_objective(void *ctx)
{
    fd_swiglu *c = ctx;
    ns_swiglu_forward(c->ex, c->out, c->gate, c->up, 2, 3, 7);
    return dot_out(c->out, c->w, 42);
}

static void test_swiglu_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_swiglu c = {.ex = exec_new(2, NS_EXEC_FAST)};
    c.out = floats(42);
    c.gate = floats(42);
    c.up = floats(42);
    c.w = floats(42);
    fill_uniform(c.gate, 42, 15, 4.0f);
    fill_uniform(c.up, 42, 16, 1.0f);
    fill_uniform(c.w, 42, 17, 1.0f);
    fd_input in[2] = {{"gate", c.gate, grads_start(42), 42}, {"up", c.up, grads_start(42), 42}};
    ns_swiglu_backward(c.ex, in[0].dx, in[1].dx, c.w, c.gate, c.up, 2, 3, 7);
    fd_check("swiglu", in, 2, swiglu_objective, &c);
    free(in[0].dx);
    free(in[1].dx);
    free(c.out);
    free(c.gate);
    free(c.up);
    free(c.w);
    ns_exec_free(c.ex);
}

typedef struct fd_residual {
    ns_exec *ex;
    float *out, *a, *b, *w;
} fd_residual;

static double residual_objective(void *ctx)
{
    fd_residual *c = ctx;
    ns_residual_forward(c->ex, c->out, c->a, c->b, 12);
    return dot_out(c->out, c->w, 12);
}

static void test_residual_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_residual c = {.ex = exec_new(2, NS_EXEC_FAST)};
    c.out = floats(12);
    c.a = floats(12);
    c.b = floats(12);
    c.w = floats(12);
    fill_uniform(c.a, 12, 18, 1.0f);
    fill_uniform(c.b, 12, 19, 1.0f);
    fill_uniform(c.w, 12, 20, 1.0f);
    fd_input in[2] = {{"inp1", c.a, grads_start(12), 12}, {"inp2", c.b, grads_start(12), 12}};
    ns_residual_backward(c.ex, in[0].dx, in[1].dx, c.w, 12);
    fd_check("residual", in, 2, residual_objective, &c);
    free(in[0].dx);
    free(in[1].dx);
    free(c.out);
    free(c.a);
    free(c.b);
    free(c.w);
    ns_exec_free(c.ex);
}

typedef struct fd_xent {
    ns_exec *ex;
    float *losses, *probs, *logits, *dlosses;
    int32_t targets[6];
} fd_xent;

static double xent_objective(void *ctx)
{
    fd_xent *c = ctx;
    ns_softmax_crossentropy_forward(c->ex, c->losses, c->probs, c->logits, c->targets, 2, 3, 9);
    return dot_out(c->losses, c->dlosses, 6);
}

static void test_softmax_crossentropy_backward_matches_finite_differences(void **state)
{
    (void)state;
    fd_xent c = {.ex = exec_new(2, NS_EXEC_FAST), .targets = {4, 0, NS_EXEC_IGNORE_INDEX, 8, 8, 2}};
    c.losses = floats(6);
    c.probs = floats(54);
    c.logits = floats(54);
    c.dlosses = floats(6);
    fill_uniform(c.logits, 54, 21, 3.0f);
    fill_uniform(c.dlosses, 6, 22, 1.0f);
    fd_input in = {"logits", c.logits, grads_start(54), 54};
    xent_objective(&c);
    ns_softmax_crossentropy_backward(c.ex, in.dx, c.dlosses, c.probs, c.targets, 2, 3, 9);
    fd_check("crossentropy", &in, 1, xent_objective, &c);
    xent_objective(&c);
    assert_true(c.losses[2] == 0.0f); /* the ignored target */
    /* probs may alias logits */
    float *copy = floats(54);
    memcpy(copy, c.logits, 54 * sizeof(float));
    ns_softmax_crossentropy_forward(c.ex, c.losses, copy, copy, c.targets, 2, 3, 9);
    assert_memory_equal(copy, c.probs, 54 * sizeof(float));
    free(copy);
    free(in.dx);
    free(c.losses);
    free(c.probs);
    free(c.logits);
    free(c.dlosses);
    ns_exec_free(c.ex);
}

/* ---- the reproducible matrix multiply ----------------------------------------------------- */

/* C (= or +=) op(A) op(B) against a double-precision loop, for every transpose and odd sizes. */
static void gemm_case(ns_exec *ex, bool ta, bool tb, size_t M, size_t N, size_t K, bool acc,
                      float *out)
{
    float *A = floats(M * K);
    float *B = floats(K * N);
    fill_uniform(A, M * K, 100 + M, 1.0f);
    fill_uniform(B, K * N, 200 + N, 1.0f);
    fill_uniform(out, M * N, 300 + K, 1.0f);
    float *want = floats(M * N);
    for (size_t i = 0; i < M; i++) {
        for (size_t j = 0; j < N; j++) {
            double s = acc ? out[i * N + j] : 0.0;
            for (size_t k = 0; k < K; k++)
                s +=
                    (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
            want[i * N + j] = (float)s;
        }
    }
    ns__gemm(ex, NS__WORKERS_ALL, ta, tb, M, N, K, A, ta ? M : K, B, tb ? K : N, acc, out, N);
    double worst = 0.0;
    for (size_t i = 0; i < M * N; i++)
        worst = fmax(worst, fabs((double)out[i] - want[i]));
    assert_true(worst < 1e-5 * sqrt((double)K) * 8);
    free(A);
    free(B);
    free(want);
}

/* Edges of every tile width, K across a KC block (256), M across MC (96), N across NC (1024). */
static const size_t gemm_shapes[][3] = {
    {1, 1, 1}, {7, 33, 5}, {37, 40, 300}, {100, 9, 270}, {3, 1030, 4}};

/* Every path on this CPU gives bit-identical results, with 1 and 2 threads. */
static void test_reproducible_gemm_paths_agree_bit_for_bit(void **state)
{
    (void)state;
    ns__simd_path paths[] = {NS__SIMD_SCALAR, NS__SIMD_AVX2, NS__SIMD_AVX512};
    for (size_t s = 0; s < sizeof gemm_shapes / sizeof gemm_shapes[0]; s++) {
        size_t M = gemm_shapes[s][0], N = gemm_shapes[s][1], K = gemm_shapes[s][2];
        for (int form = 0; form < 8; form++) {
            bool ta = form & 1, tb = form & 2, acc = form & 4;
            float *first = NULL;
            for (size_t p = 0; p < 3; p++) {
                if (!ns__simd_force(paths[p])) {
                    printf("  gemm path %d not on this CPU: skipped\n", (int)paths[p]);
                    continue;
                }
                for (uint32_t threads = 1; threads <= 2; threads++) {
                    ns_exec *ex = exec_new(threads, NS_EXEC_REPRODUCIBLE);
                    float *out = floats(M * N);
                    gemm_case(ex, ta, tb, M, N, K, acc, out);
                    if (first == NULL)
                        first = out;
                    else {
                        assert_memory_equal(out, first, M * N * sizeof(float));
                        free(out);
                    }
                    ns_exec_free(ex);
                }
            }
            free(first);
        }
    }
    assert_true(ns__simd_force(NS__SIMD_AUTO));
}

/* ---- inference ---------------------------------------------------------------------------- */

/* Logits of every position of every row, decoded with a KV cache one token at a time, and a
 * whole row prefilled at once (then in two uneven parts), against PyTorch's full forward. */
static void reference_decode(ns_exec_mode mode)
{
    tiny t;
    tiny_load(&t);
    ns_exec *ex = exec_new(2, mode);
    ns_stage *st = tiny_stage(&t, ex);
    size_t V = t.arch.vocab;
    float *want = ref_f32(&t.ref, "logits", (size_t)t.B * t.T * V);
    float *got = floats(V);
    ns_kv_cache *kv;
    assert_int_equal(ns_kv_cache_new(&kv, st, t.T), NS_OK);
    assert_int_equal(ns_kv_cache_capacity(kv), t.T);
    for (uint32_t b = 0; b < t.B; b++) {
        const int32_t *row = t.tokens + (size_t)b * t.T;
        ns_kv_cache_reset(kv);
        double worst = 0.0;
        for (uint32_t i = 0; i < t.T; i++) {
            assert_int_equal(ns_stage_decode(st, kv, 1, row + i, NULL, got), NS_OK);
            assert_int_equal(ns_kv_cache_len(kv), i + 1);
            double d = rel_diff(got, want + ((size_t)b * t.T + i) * V, V);
            worst = d > worst ? d : worst;
        }
        printf("  %-52s relative %.3e over %u positions\n", "decode logits, one token a call",
               worst, t.T);
        assert_true(worst <= TOL_LOGITS);
        const float *last = want + ((size_t)b * t.T + t.T - 1) * V;
        ns_kv_cache_reset(kv);
        assert_int_equal(ns_stage_decode(st, kv, t.T, row, NULL, got), NS_OK);
        assert_true(check_tensor(got, last, V, "prefill logits") <= TOL_LOGITS);
        ns_kv_cache_reset(kv);
        assert_int_equal(ns_stage_decode(st, kv, 3, row, NULL, got), NS_OK);
        assert_int_equal(ns_stage_decode(st, kv, t.T - 3, row + 3, NULL, got), NS_OK);
        assert_true(check_tensor(got, last, V, "two-part prefill logits") <= TOL_LOGITS);
    }
    ns_kv_cache_free(kv);
    free(got);
    free(want);
    ns_stage_free(st);
    ns_exec_free(ex);
    free(t.ref.buf);
}

static void test_decode_with_kv_cache_matches_pytorch(void **state)
{
    (void)state;
    reference_decode(NS_EXEC_FAST);
    reference_decode(NS_EXEC_REPRODUCIBLE);
}

static ns_arch long_arch(void)
{
    return (ns_arch){.layers = 2,
                     .hidden = 128,
                     .heads = 2,
                     .kv_heads = 1,
                     .intermediate = 192,
                     .vocab = 67,
                     .seq_len_max = 160};
}

static ns_stage *long_stage(ns_exec *ex, uint32_t first, uint32_t last)
{
    ns_stage_config cfg = {.arch = long_arch(),
                           .layer_first = first,
                           .layer_last = last,
                           .batch_max = 1,
                           .seq_len_max = 160,
                           .micro_batches_max = 1};
    ns_stage *st;
    assert_int_equal(ns_stage_new(&st, ex, &cfg), NS_OK);
    ns_stage_init(st, 7);
    return st;
}

/* A prompt longer than a decode chunk (several chunks in one call) gives the loss the training
 * forward gives over the same sequence: the cross-entropy of each position's decoded logits. */
static void test_decode_over_several_chunks_agrees_with_the_training_forward(void **state)
{
    (void)state;
    enum { N = 150 };
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    ns_stage *st = long_stage(ex, 0, 2);
    int32_t tokens[N], targets[N];
    uint64_t r = 99;
    for (size_t i = 0; i < N; i++)
        tokens[i] = (int32_t)(rng_next(&r) % 67);
    for (size_t i = 0; i < N; i++)
        targets[i] = i + 1 < N ? tokens[i + 1] : NS_EXEC_IGNORE_INDEX;
    ns_stage_input in = {.batch = 1, .seq_len = N, .tokens = tokens, .targets = targets};
    float loss;
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_OK);
    assert_int_equal(ns_stage_drop(st, 1), NS_OK);

    ns_kv_cache *kv;
    assert_int_equal(ns_kv_cache_new(&kv, st, 160), NS_OK);
    float logits[67], prefill_last[67];
    assert_int_equal(ns_stage_decode(st, kv, N - 1, tokens, NULL, prefill_last), NS_OK);
    assert_int_equal(ns_kv_cache_len(kv), N - 1);
    ns_kv_cache_reset(kv);
    double sum = 0.0;
    for (size_t i = 0; i + 1 < N; i++) {
        assert_int_equal(ns_stage_decode(st, kv, 1, tokens + i, NULL, logits), NS_OK);
        double max = logits[0], z = 0.0;
        for (size_t j = 1; j < 67; j++)
            max = logits[j] > max ? logits[j] : max;
        for (size_t j = 0; j < 67; j++)
            z += exp(logits[j] - max);
        sum += log(z) + max - logits[targets[i]];
    }
    float decoded = (float)(sum / (N - 1));
    assert_true(check_tensor(&decoded, &loss, 1, "decoded loss vs forward loss") <= 1e-5);
    assert_true(check_tensor(logits, prefill_last, 67, "3-chunk prefill vs one by one") <= 1e-5);
    ns_kv_cache_free(kv);
    ns_stage_free(st);
    ns_exec_free(ex);
}

/* Decoding through layers [0,1) then [1,2) gives the whole stage's logits bit for bit. */
static void test_decode_through_two_stages_equals_one_stage(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    ns_stage *whole = long_stage(ex, 0, 2), *first = long_stage(ex, 0, 1),
             *last = long_stage(ex, 1, 2);
    ns_kv_cache *kw, *kf, *kl;
    assert_int_equal(ns_kv_cache_new(&kw, whole, 40), NS_OK);
    assert_int_equal(ns_kv_cache_new(&kf, first, 40), NS_OK);
    assert_int_equal(ns_kv_cache_new(&kl, last, 40), NS_OK);
    int32_t tokens[12] = {1, 5, 9, 66, 0, 3, 3, 3, 12, 40, 2, 7};
    float a[67], b[67], acts[12 * 128];
    assert_int_equal(ns_stage_decode(whole, kw, 10, tokens, NULL, a), NS_OK);
    assert_int_equal(ns_stage_decode(first, kf, 10, tokens, NULL, acts), NS_OK);
    assert_int_equal(ns_stage_decode(last, kl, 10, NULL, acts, b), NS_OK);
    assert_memory_equal(a, b, sizeof a);
    for (int i = 10; i < 12; i++) {
        assert_int_equal(ns_stage_decode(whole, kw, 1, tokens + i, NULL, a), NS_OK);
        assert_int_equal(ns_stage_decode(first, kf, 1, tokens + i, NULL, acts), NS_OK);
        assert_int_equal(ns_stage_decode(last, kl, 1, NULL, acts, b), NS_OK);
        assert_memory_equal(a, b, sizeof a);
    }
    ns_kv_cache_free(kw);
    ns_kv_cache_free(kf);
    ns_kv_cache_free(kl);
    ns_stage_free(whole);
    ns_stage_free(first);
    ns_stage_free(last);
    ns_exec_free(ex);
}

/* A reproducible stage decoding on a fast executor (what the trainer does for generation) gives
 * the stage's own logits within the fast mode's tolerance. */
static void test_decode_on_another_executor_agrees(void **state)
{
    (void)state;
    ns_exec *repro = exec_new(2, NS_EXEC_REPRODUCIBLE), *fast = exec_new(2, NS_EXEC_FAST);
    ns_stage *st = long_stage(repro, 0, 2);
    ns_kv_cache *a, *b;
    assert_int_equal(ns_kv_cache_new(&a, st, 40), NS_OK);
    assert_int_equal(ns_kv_cache_new(&b, st, 40), NS_OK);
    ns_kv_cache_set_exec(b, fast);
    int32_t tokens[9] = {4, 8, 15, 16, 23, 42, 1, 2, 3};
    float la[67], lb[67];
    assert_int_equal(ns_stage_decode(st, a, 9, tokens, NULL, la), NS_OK);
    assert_int_equal(ns_stage_decode(st, b, 9, tokens, NULL, lb), NS_OK);
    assert_true(check_tensor(lb, la, 67, "decode, fast executor vs the stage's") <= TOL_MODES);
    ns_kv_cache_free(a);
    ns_kv_cache_free(b);
    ns_stage_free(st);
    ns_exec_free(repro);
    ns_exec_free(fast);
}

static void test_decode_refuses_bad_input_and_keeps_its_cache(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(1, NS_EXEC_FAST);
    ns_stage *st = long_stage(ex, 0, 2), *other = long_stage(ex, 0, 1);
    ns_kv_cache *kv;
    assert_int_equal(ns_kv_cache_new(&kv, st, 0), NS_EINVAL);
    assert_int_equal(ns_kv_cache_new(&kv, st, 161), NS_EINVAL);
    uint64_t bytes;
    assert_int_equal(ns_kv_cache_memory_bytes(st, 8, &bytes), NS_OK);
    assert_true(bytes > 2ull * 2 * 8 * 64 * sizeof(float)); /* at least the keys and values */
    assert_int_equal(ns_kv_cache_new(&kv, st, 8), NS_OK);
    int32_t ok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bad[2] = {3, 67}, neg[1] = {-1};
    float logits[67], again[67];
    assert_int_equal(ns_stage_decode(st, kv, 6, ok, NULL, logits), NS_OK);
    assert_int_equal(ns_stage_decode(st, kv, 0, ok, NULL, logits), NS_EINVAL);
    assert_int_equal(ns_stage_decode(st, kv, 2, bad, NULL, logits), NS_EINVAL);
    assert_int_equal(ns_stage_decode(st, kv, 1, neg, NULL, logits), NS_EINVAL);
    assert_int_equal(ns_stage_decode(st, kv, 1, NULL, NULL, logits), NS_EINVAL);
    assert_int_equal(ns_stage_decode(other, kv, 1, ok, NULL, logits), NS_EINVAL);
    assert_int_equal(ns_stage_decode(st, kv, 3, ok, NULL, logits), NS_ELIMIT);
    assert_int_equal(ns_kv_cache_len(kv), 6);
    /* the refusals left the cache as it was: the next token decodes as if they never happened */
    assert_int_equal(ns_stage_decode(st, kv, 1, ok + 6, NULL, logits), NS_OK);
    ns_kv_cache_reset(kv);
    assert_int_equal(ns_stage_decode(st, kv, 7, ok, NULL, again), NS_OK);
    assert_true(check_tensor(logits, again, 67, "after refusals") <= 1e-5);
    ns_kv_cache_free(kv);
    ns_stage_free(st);
    ns_stage_free(other);
    ns_exec_free(ex);
}

static void test_sampler_greedy_takes_the_highest_logit_and_the_lowest_id_on_a_tie(void **state)
{
    (void)state;
    float logits[6] = {0.5f, 2.0f, NAN, 2.0f, -1.0f, 1.0f};
    ns_sampler *s;
    ns_sample_config cfg = {.temperature = 0.0, .top_p = 1.0, .seed = 1};
    assert_int_equal(ns_sampler_new(&s, 6, &cfg, NULL), NS_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ns_sampler_next(s, logits), 1);
    ns_sampler_free(s);
    cfg = (ns_sample_config){.temperature = 5.0, .top_k = 1, .top_p = 1.0, .seed = 9};
    assert_int_equal(ns_sampler_new(&s, 6, &cfg, NULL), NS_OK);
    assert_int_equal(ns_sampler_next(s, logits), 1); /* top-k 1 is greedy whatever the heat */
    ns_sampler_free(s);
}

/* Draws n tokens; returns how often each id came out. */
static void sample_counts(const ns_sample_config *cfg, const float *logits, uint32_t vocab,
                          uint32_t n, uint32_t *counts)
{
    ns_sampler *s;
    assert_int_equal(ns_sampler_new(&s, vocab, cfg, NULL), NS_OK);
    memset(counts, 0, sizeof *counts * vocab);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = ns_sampler_next(s, logits);
        assert_true(id < vocab);
        counts[id]++;
    }
    ns_sampler_free(s);
}

static void test_sampler_follows_the_softmax_within_top_k_and_top_p(void **state)
{
    (void)state;
    enum { V = 8, N = 20000 };
    float logits[V] = {1.0f, 3.0f, 0.0f, 2.0f, -2.0f, NAN, 2.5f, -1.0f};
    uint32_t counts[V];
    /* temperature 1, all tokens: frequencies within 0.015 of the softmax */
    ns_sample_config cfg = {.temperature = 1.0, .top_p = 1.0, .seed = 3};
    sample_counts(&cfg, logits, V, N, counts);
    double z = 0.0;
    for (int i = 0; i < V; i++)
        z += i == 5 ? 0.0 : exp(logits[i]);
    for (int i = 0; i < V; i++) {
        double p = i == 5 ? 0.0 : exp(logits[i]) / z;
        assert_true(fabs((double)counts[i] / N - p) < 0.015);
    }
    assert_int_equal(counts[5], 0); /* NaN never comes out */
    /* top-k 2: only ids 1 and 6, in the ratio e^3 : e^2.5 */
    cfg.top_k = 2;
    sample_counts(&cfg, logits, V, N, counts);
    assert_int_equal(counts[1] + counts[6], N);
    assert_true(fabs((double)counts[1] / N - 1.0 / (1.0 + exp(-0.5))) < 0.015);
    /* top-p: id 1 alone holds 46 % of the mass, ids 1 and 6 together 73 % */
    cfg.top_k = 0;
    cfg.top_p = 0.4;
    sample_counts(&cfg, logits, V, 1000, counts);
    assert_int_equal(counts[1], 1000);
    cfg.top_p = 0.7;
    sample_counts(&cfg, logits, V, N, counts);
    assert_int_equal(counts[1] + counts[6], N);
    assert_true(counts[6] > N / 4);
    /* a high temperature flattens: the rarest finite token shows up */
    cfg = (ns_sample_config){.temperature = 50.0, .top_p = 1.0, .seed = 4};
    sample_counts(&cfg, logits, V, N, counts);
    assert_true(counts[4] > N / 10);
}

static void test_sampler_same_seed_same_tokens_and_bad_parameters_refused(void **state)
{
    (void)state;
    enum { V = 50 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)((i * 37) % 11) * 0.3f;
    ns_sample_config cfg = {.temperature = 0.9, .top_k = 20, .top_p = 0.95, .seed = 77};
    ns_sampler *a, *b, *c;
    assert_int_equal(ns_sampler_new(&a, V, &cfg, NULL), NS_OK);
    assert_int_equal(ns_sampler_new(&b, V, &cfg, NULL), NS_OK);
    cfg.seed = 78;
    assert_int_equal(ns_sampler_new(&c, V, &cfg, NULL), NS_OK);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        uint32_t x = ns_sampler_next(a, logits), y = ns_sampler_next(b, logits);
        assert_int_equal(x, y);
        differ += ns_sampler_next(c, logits) != x;
    }
    assert_true(differ > 0);
    ns_sampler_free(a);
    ns_sampler_free(b);
    ns_sampler_free(c);

    const ns_sample_config bad[] = {
        {.temperature = -0.1, .top_p = 1.0},
        {.temperature = 101.0, .top_p = 1.0},
        {.temperature = NAN, .top_p = 1.0},
        {.temperature = 1.0, .top_p = 0.0},
        {.temperature = 1.0, .top_p = 1.5},
        {.temperature = 1.0, .top_p = NAN},
        {.temperature = 1.0, .top_k = V + 1, .top_p = 1.0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *why = NULL;
        ns_sampler *s = NULL;
        assert_int_equal(ns_sampler_new(&s, V, &bad[i], &why), NS_EINVAL);
        assert_non_null(why);
        assert_null(s);
    }
}

/* ---- stages ------------------------------------------------------------------------------- */

static ns_arch small_arch(void)
{
    return (ns_arch){.layers = 3,
                     .hidden = 128,
                     .heads = 2,
                     .kv_heads = 1,
                     .intermediate = 192,
                     .vocab = 67,
                     .seq_len_max = 32};
}

static ns_stage *small_stage(ns_exec *ex, uint32_t first, uint32_t last, uint32_t slots)
{
    ns_stage_config cfg = {.arch = small_arch(),
                           .layer_first = first,
                           .layer_last = last,
                           .batch_max = 2,
                           .seq_len_max = 8,
                           .micro_batches_max = slots};
    ns_stage *st;
    assert_int_equal(ns_stage_new(&st, ex, &cfg), NS_OK);
    ns_stage_init(st, 42);
    return st;
}

static void small_data(int32_t *tokens, int32_t *targets, uint64_t seed)
{
    uint64_t state = seed;
    for (size_t i = 0; i < 16; i++) {
        tokens[i] = (int32_t)(rng_next(&state) % 67);
        targets[i] = (int32_t)(rng_next(&state) % 67);
    }
    targets[5] = NS_EXEC_IGNORE_INDEX;
}

/* Trains `steps` AdamW steps on fresh data each step; writes the losses. */
static void train_small(ns_stage *st, uint32_t steps, float *losses)
{
    ns_optim_config cfg;
    ns_optim_config_default(&cfg);
    cfg.lr_max = 1e-2;
    cfg.warmup_steps = 1;
    int32_t tokens[16], targets[16];
    float one = 1.0f;
    for (uint32_t s = 0; s < steps; s++) {
        small_data(tokens, targets, 1000 + s);
        ns_stage_input in = {.batch = 2, .seq_len = 8, .tokens = tokens, .targets = targets};
        assert_int_equal(ns_stage_forward(st, s, &in, &losses[s]), NS_OK);
        assert_int_equal(ns_stage_backward(st, s, &one, NULL), NS_OK);
        ns_stage_optimize(st, &cfg, NULL);
    }
}

static void test_same_seed_data_and_threads_give_bit_identical_training(void **state)
{
    (void)state;
    ns_exec_mode modes[2] = {NS_EXEC_FAST, NS_EXEC_REPRODUCIBLE};
    for (int m = 0; m < 2; m++) {
        float losses[2][4];
        float *params[2];
        size_t n = 0;
        ns_stage *st[2];
        for (int run = 0; run < 2; run++) {
            ns_exec *ex = exec_new(2, modes[m]);
            st[run] = small_stage(ex, 0, 3, 1);
            train_small(st[run], 4, losses[run]);
            params[run] = floats(ns_stage_param_buffer(st[run], &n) ? n : 0);
            memcpy(params[run], ns_stage_param_buffer(st[run], &n), n * sizeof(float));
            ns_stage_free(st[run]);
            ns_exec_free(ex);
        }
        assert_memory_equal(losses[0], losses[1], sizeof losses[0]);
        assert_memory_equal(params[0], params[1], n * sizeof(float));
        assert_true(losses[0][3] < losses[0][0]);
        free(params[0]);
        free(params[1]);
    }
}

/* Trains `steps` steps with an executor of `threads` threads and the given gemm path; returns a
 * copy of the weights. */
static float *reproducible_run(uint32_t threads, ns__simd_path path, uint32_t steps, float *losses,
                               size_t *n)
{
    assert_true(ns__simd_force(path));
    ns_exec *ex = exec_new(threads, NS_EXEC_REPRODUCIBLE);
    ns_stage *st = small_stage(ex, 0, 3, 1);
    train_small(st, steps, losses);
    float *params = floats(ns_stage_param_buffer(st, n) ? *n : 0);
    memcpy(params, ns_stage_param_buffer(st, n), *n * sizeof(float));
    ns_stage_free(st);
    ns_exec_free(ex);
    assert_true(ns__simd_force(NS__SIMD_AUTO));
    return params;
}

static void assert_same_run(uint32_t threads, ns__simd_path path, uint32_t steps,
                            const float *want_losses, const float *want, size_t n)
{
    float losses[3];
    size_t got_n;
    float *got = reproducible_run(threads, path, steps, losses, &got_n);
    assert_int_equal(got_n, n);
    assert_memory_equal(losses, want_losses, steps * sizeof(float));
    assert_memory_equal(got, want, n * sizeof(float));
    free(got);
}

/* Threads 1 and 2 over three steps; then one step on the scalar kernel (slow: a call to fmaf a
 * multiply-add) and on AVX2, against the widest kernel of this CPU. */
static void test_reproducible_mode_is_bit_identical_across_threads_and_vector_widths(void **state)
{
    (void)state;
    float want_losses[3];
    size_t n;
    float *want = reproducible_run(1, NS__SIMD_AUTO, 3, want_losses, &n);
    assert_same_run(2, NS__SIMD_AUTO, 3, want_losses, want, n);
    free(want);
    want = reproducible_run(2, NS__SIMD_AUTO, 1, want_losses, &n);
    assert_same_run(2, NS__SIMD_SCALAR, 1, want_losses, want, n);
    if (ns__simd_force(NS__SIMD_AVX2))
        assert_same_run(1, NS__SIMD_AVX2, 1, want_losses, want, n);
    free(want);
}

static void test_fast_and_reproducible_modes_agree_within_tolerance(void **state)
{
    (void)state;
    float fast[3], repro[3];
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    ns_stage *st = small_stage(ex, 0, 3, 1);
    train_small(st, 3, fast);
    ns_stage_free(st);
    ns_exec_free(ex);
    size_t n;
    free(reproducible_run(2, NS__SIMD_AUTO, 3, repro, &n));
    assert_true(check_tensor(fast, repro, 3, "losses, fast vs reproducible") <= TOL_MODES);
}

/* The fast mode with another thread count: OpenBLAS splits differently, so only close. */
static void test_fast_mode_across_thread_counts_agrees_within_tolerance(void **state)
{
    (void)state;
    float losses[2][3];
    float *params[2];
    size_t n = 0;
    for (uint32_t threads = 1; threads <= 2; threads++) {
        ns_exec *ex = exec_new(threads, NS_EXEC_FAST);
        ns_stage *st = small_stage(ex, 0, 3, 1);
        train_small(st, 3, losses[threads - 1]);
        float *buf = ns_stage_param_buffer(st, &n);
        params[threads - 1] = floats(n);
        memcpy(params[threads - 1], buf, n * sizeof(float));
        ns_stage_free(st);
        ns_exec_free(ex);
    }
    assert_true(check_tensor(losses[1], losses[0], 3, "fast losses, 2 threads vs 1") <= TOL_MODES);
    assert_true(check_tensor(params[1], params[0], n, "fast weights, 2 threads vs 1") <= TOL_MODES);
    free(params[0]);
    free(params[1]);
}

/* Layers [0,1) and [1,3) chained give what one stage [0,3) gives, bit for bit. */
static void test_two_stages_chained_equal_one_stage(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    ns_stage *whole = small_stage(ex, 0, 3, 1);
    ns_stage *first = small_stage(ex, 0, 1, 2);
    ns_stage *last = small_stage(ex, 1, 3, 2);
    assert_false(ns_stage_has_head(first));
    assert_false(ns_stage_has_embedding(last));
    int32_t tokens[16], targets[16];
    small_data(tokens, targets, 5);
    ns_stage_input in = {.batch = 2, .seq_len = 8, .tokens = tokens, .targets = targets};
    float loss_whole, loss_split, one = 1.0f;
    float *acts = floats(16 * 128);
    float *dacts = floats(16 * 128);
    assert_int_equal(ns_stage_forward(whole, 7, &in, &loss_whole), NS_OK);
    assert_int_equal(ns_stage_forward(first, 7, &in, acts), NS_OK);
    ns_stage_input mid = {.batch = 2, .seq_len = 8, .acts = acts, .targets = targets};
    assert_int_equal(ns_stage_forward(last, 7, &mid, &loss_split), NS_OK);
    assert_memory_equal(&loss_whole, &loss_split, sizeof(float));
    assert_int_equal(ns_stage_backward(whole, 7, &one, NULL), NS_OK);
    assert_int_equal(ns_stage_backward(last, 7, &one, dacts), NS_OK);
    assert_int_equal(ns_stage_backward(first, 7, dacts, NULL), NS_OK);
    size_t nw, nf, nl;
    const ns_named_tensor *gw = ns_stage_grads(whole, &nw);
    const ns_named_tensor *gf = ns_stage_grads(first, &nf);
    const ns_named_tensor *gl = ns_stage_grads(last, &nl);
    assert_int_equal(nw, nf + nl);
    for (size_t i = 0; i < nw; i++) {
        const ns_named_tensor *g = i < nf ? &gf[i] : &gl[i - nf];
        assert_string_equal(gw[i].name, g->name);
        assert_memory_equal(gw[i].tensor.data, g->tensor.data,
                            ns_tensor_numel(&g->tensor) * sizeof(float));
    }
    free(acts);
    free(dacts);
    ns_stage_free(whole);
    ns_stage_free(first);
    ns_stage_free(last);
    ns_exec_free(ex);
}

/* Two micro-batches of one row each, dloss 1/2, add up to the gradient of the two-row batch
 * (both rows count the same number of targets, so the means agree). */
static void test_gradient_accumulation_matches_one_larger_batch(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    ns_stage *big = small_stage(ex, 0, 3, 1);
    ns_stage *acc = small_stage(ex, 0, 3, 2);
    int32_t tokens[16], targets[16];
    small_data(tokens, targets, 9);
    targets[5] = 1; /* every target counts */
    float loss, half = 0.5f, one = 1.0f;
    ns_stage_input in = {.batch = 2, .seq_len = 8, .tokens = tokens, .targets = targets};
    assert_int_equal(ns_stage_forward(big, 1, &in, &loss), NS_OK);
    assert_int_equal(ns_stage_backward(big, 1, &one, NULL), NS_OK);
    /* both rows in flight at once, backward in the other order, as a pipeline may */
    ns_stage_input row0 = {.batch = 1, .seq_len = 8, .tokens = tokens, .targets = targets};
    ns_stage_input row1 = {.batch = 1, .seq_len = 8, .tokens = tokens + 8, .targets = targets + 8};
    float l0, l1;
    assert_int_equal(ns_stage_forward(acc, 10, &row0, &l0), NS_OK);
    assert_int_equal(ns_stage_forward(acc, 11, &row1, &l1), NS_OK);
    assert_int_equal(ns_stage_in_flight(acc), 2);
    assert_int_equal(ns_stage_backward(acc, 11, &half, NULL), NS_OK);
    assert_int_equal(ns_stage_backward(acc, 10, &half, NULL), NS_OK);
    assert_true(fabsf((l0 + l1) / 2 - loss) < 1e-5f);
    size_t n;
    float *gb = ns_stage_grad_buffer(big, &n);
    float *ga = ns_stage_grad_buffer(acc, &n);
    assert_true(check_tensor(ga, gb, n, "accumulated gradients vs one batch") < 1e-5);
    ns_stage_free(big);
    ns_stage_free(acc);
    ns_exec_free(ex);
}

static void test_stage_refuses_bad_input_and_keeps_nothing(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(1, NS_EXEC_FAST);
    ns_stage *st = small_stage(ex, 0, 3, 2);
    int32_t tokens[16], targets[16];
    small_data(tokens, targets, 3);
    float loss, one = 1.0f;
    ns_stage_input in = {.batch = 2, .seq_len = 8, .tokens = tokens, .targets = targets};
    ns_stage_input bad = in;
    bad.batch = 3;
    assert_int_equal(ns_stage_forward(st, 1, &bad, &loss), NS_EINVAL);
    bad = in;
    bad.seq_len = 9;
    assert_int_equal(ns_stage_forward(st, 1, &bad, &loss), NS_EINVAL);
    tokens[4] = 67;
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_EINVAL);
    tokens[4] = -1;
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_EINVAL);
    tokens[4] = 0;
    targets[2] = -2;
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_EINVAL);
    targets[2] = 0;
    assert_int_equal(ns_stage_in_flight(st), 0);
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_OK);
    assert_int_equal(ns_stage_forward(st, 1, &in, &loss), NS_EEXIST);
    assert_int_equal(ns_stage_forward(st, 2, &in, &loss), NS_OK);
    assert_int_equal(ns_stage_forward(st, 3, &in, &loss), NS_ELIMIT);
    assert_int_equal(ns_stage_backward(st, 3, &one, NULL), NS_ENOENT);
    assert_int_equal(ns_stage_drop(st, 2), NS_OK);
    assert_int_equal(ns_stage_drop(st, 2), NS_ENOENT);
    assert_int_equal(ns_stage_backward(st, 1, &one, NULL), NS_OK);
    assert_int_equal(ns_stage_in_flight(st), 0);
    /* all targets ignored: loss 0 and no gradient from the head */
    for (int i = 0; i < 16; i++)
        targets[i] = NS_EXEC_IGNORE_INDEX;
    ns_stage_zero_grad(st);
    assert_int_equal(ns_stage_forward(st, 4, &in, &loss), NS_OK);
    assert_true(loss == 0.0f);
    assert_int_equal(ns_stage_backward(st, 4, &one, NULL), NS_OK);
    assert_true(ns_stage_grad_sq_sum(st) == 0.0);
    ns_stage_free(st);
    ns_exec_free(ex);
}

static void test_stage_refuses_malformed_configs(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(1, NS_EXEC_FAST);
    ns_stage_config good = {.arch = small_arch(),
                            .layer_first = 0,
                            .layer_last = 3,
                            .batch_max = 2,
                            .seq_len_max = 8,
                            .micro_batches_max = 1};
    ns_stage_config cfgs[6] = {good, good, good, good, good, good};
    cfgs[0].arch.hidden = 100; /* not heads * 64 */
    cfgs[1].arch.kv_heads = 3; /* does not divide heads */
    cfgs[2].layer_last = 4;    /* beyond the model */
    cfgs[3].seq_len_max = 33;  /* beyond arch.seq_len_max */
    cfgs[4].micro_batches_max = NS_EXEC_MICRO_BATCHES_MAX + 1;
    cfgs[5].layer_first = 2;
    cfgs[5].layer_last = 1;
    for (int i = 0; i < 6; i++) {
        ns_stage *st = (ns_stage *)&good; /* must be reset to NULL */
        uint64_t bytes;
        assert_int_equal(ns_stage_memory_bytes(&cfgs[i], &bytes), NS_EINVAL);
        assert_int_equal(ns_stage_new(&st, ex, &cfgs[i]), NS_EINVAL);
        assert_null(st);
    }
    ns_stage_config huge = good;
    huge.arch.vocab = INT32_MAX;
    huge.arch.seq_len_max = UINT32_MAX;
    huge.seq_len_max = UINT32_MAX;
    huge.batch_max = UINT32_MAX;
    uint64_t bytes;
    assert_int_equal(ns_stage_memory_bytes(&huge, &bytes), NS_EOVERFLOW);
    ns_exec *none = NULL;
    assert_int_equal(ns_exec_new(&none, 0, NS_EXEC_FAST), NS_EINVAL);
    assert_int_equal(ns_exec_new(&none, NS_EXEC_THREADS_MAX + 1, NS_EXEC_FAST), NS_EINVAL);
    ns_exec_free(ex);
}

static void test_init_is_deterministic_split_invariant_and_scaled(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    ns_stage *whole = small_stage(ex, 0, 3, 1);
    ns_stage *tail = small_stage(ex, 2, 3, 1);
    size_t nw, nt;
    const ns_named_tensor *pw = ns_stage_params(whole, &nw);
    const ns_named_tensor *pt = ns_stage_params(tail, &nt);
    /* the tail's layer 2, norm and head are the whole model's last tensors */
    for (size_t i = 0; i < nt; i++) {
        const ns_named_tensor *w = &pw[nw - nt + i];
        assert_string_equal(w->name, pt[i].name);
        assert_memory_equal(w->tensor.data, pt[i].tensor.data,
                            ns_tensor_numel(&w->tensor) * sizeof(float));
    }
    for (size_t i = 0; i < nw; i++) {
        size_t n = (size_t)ns_tensor_numel(&pw[i].tensor);
        double sum = 0, sq = 0;
        for (size_t j = 0; j < n; j++) {
            sum += pw[i].tensor.data[j];
            sq += (double)pw[i].tensor.data[j] * pw[i].tensor.data[j];
        }
        double mean = sum / n, std = sqrt(sq / n - mean * mean);
        if (!pw[i].decay) {
            assert_true(sum == (double)n); /* norms start at 1 */
            continue;
        }
        bool output = strstr(pw[i].name, "o_proj") || strstr(pw[i].name, "down_proj");
        double want = NS_EXEC_INIT_STD / (output ? sqrt(2.0 * 3) : 1.0);
        assert_true(fabs(std / want - 1.0) < 0.05);
        assert_true(fabs(mean) < 0.1 * want);
    }
    ns_stage_init(tail, 43);
    assert_memory_not_equal(pw[nw - 1].tensor.data, pt[nt - 1].tensor.data, 64 * sizeof(float));
    ns_stage_free(whole);
    ns_stage_free(tail);
    ns_exec_free(ex);
}

static void test_named_tensors_cover_the_flat_buffers_under_hf_names(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(1, NS_EXEC_FAST);
    ns_stage *st = small_stage(ex, 1, 3, 1);
    size_t n, count, n_optim;
    float *params = ns_stage_param_buffer(st, &n);
    const ns_named_tensor *p = ns_stage_params(st, &count);
    const ns_named_tensor *o = ns_stage_optim_state(st, &n_optim);
    assert_int_equal(count, 2 * 9 + 2);
    assert_int_equal(n_optim, 2 * count);
    assert_string_equal(p[0].name, "model.layers.1.input_layernorm.weight");
    assert_string_equal(p[1].name, "model.layers.1.self_attn.q_proj.weight");
    assert_string_equal(p[2].name, "model.layers.1.self_attn.k_proj.weight");
    assert_int_equal(p[2].tensor.shape[0], 64); /* [kv_heads * 64, hidden] */
    assert_int_equal(p[2].tensor.shape[1], 128);
    assert_string_equal(p[8].name, "model.layers.1.mlp.down_proj.weight");
    assert_int_equal(p[8].tensor.shape[0], 128); /* [hidden, intermediate] */
    assert_int_equal(p[8].tensor.shape[1], 192);
    assert_string_equal(p[count - 2].name, "model.norm.weight");
    assert_string_equal(p[count - 1].name, "lm_head.weight");
    assert_string_equal(o[1].name, "model.layers.1.input_layernorm.weight.exp_avg_sq");
    size_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        assert_ptr_equal(p[i].tensor.data, params + offset);
        assert_true(ns_tensor_is_contiguous(&p[i].tensor));
        assert_int_equal(p[i].decay, p[i].tensor.ndim == 2);
        offset += ns_tensor_numel(&p[i].tensor);
    }
    assert_int_equal(offset, n);
    uint64_t bytes;
    assert_int_equal(ns_stage_memory_bytes(ns_stage_config_of(st), &bytes), NS_OK);
    assert_true(bytes >= 4 * n * sizeof(float));
    ns_stage_free(st);
    ns_exec_free(ex);
}

static void test_schedule_warms_up_linearly_then_follows_the_cosine(void **state)
{
    (void)state;
    ns_optim_config cfg;
    ns_optim_config_default(&cfg);
    assert_true(cfg.beta1 == 0.9 && cfg.beta2 == 0.95 && cfg.eps == 1e-8);
    assert_true(cfg.weight_decay == 0.1 && cfg.grad_clip == 1.0);
    cfg.lr_max = 1.0;
    cfg.lr_min = 0.1;
    cfg.warmup_steps = 10;
    cfg.decay_steps = 110;
    assert_true(fabs(ns_optim_lr(&cfg, 0) - 0.1) < 1e-12);
    assert_true(fabs(ns_optim_lr(&cfg, 9) - 1.0) < 1e-12);
    assert_true(fabs(ns_optim_lr(&cfg, 10) - 1.0) < 1e-12);
    assert_true(fabs(ns_optim_lr(&cfg, 60) - 0.55) < 1e-12);
    assert_true(fabs(ns_optim_lr(&cfg, 110) - 0.1) < 1e-12);
    assert_true(fabs(ns_optim_lr(&cfg, 1000000) - 0.1) < 1e-12);
    assert_true(fabsf(ns_optim_clip_scale(&cfg, 4.0) - 0.5f) < 1e-6f);
    assert_true(ns_optim_clip_scale(&cfg, 0.25) == 1.0f);
}

/* ---- the executor ------------------------------------------------------------------------- */

typedef struct job_probe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool release;
    pthread_t ran_on;
    int ran;
} job_probe;

static void probe_job(void *arg)
{
    job_probe *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->release)
        pthread_cond_wait(&p->cv, &p->mu);
    p->ran_on = pthread_self();
    p->ran++;
    pthread_mutex_unlock(&p->mu);
}

static void test_jobs_run_in_order_off_the_calling_thread_with_a_bounded_queue(void **state)
{
    (void)state;
    ns_exec *ex = exec_new(2, NS_EXEC_FAST);
    job_probe p = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    /* the first job blocks the job thread; the queue then holds NS_EXEC_JOBS_MAX more */
    assert_int_equal(ns_exec_submit(ex, &p, probe_job), NS_OK);
    int queued = 1;
    while (ns_exec_submit(ex, &p, probe_job) == NS_OK)
        queued++;
    assert_true(queued >= NS_EXEC_JOBS_MAX && queued <= NS_EXEC_JOBS_MAX + 1);
    pthread_mutex_lock(&p.mu);
    p.release = true;
    pthread_cond_broadcast(&p.cv);
    pthread_mutex_unlock(&p.mu);
    ns_exec_wait_idle(ex);
    assert_int_equal(p.ran, queued);
    assert_false(pthread_equal(p.ran_on, pthread_self()));
    ns_exec_free(ex);
}

static void test_deterministic_math_is_close_to_libm(void **state)
{
    (void)state;
    double worst_exp = 0, worst_log = 0, worst_trig = 0;
    for (int i = -2000; i <= 2000; i++) {
        double x = i * 0.3517;
        double e = exp(x / 10);
        worst_exp = fmax(worst_exp, fabs(ns__det_exp(x / 10) - e) / e);
        double y = exp(x / 20) + 1e-3;
        worst_log = fmax(worst_log, fabs(ns__det_log(y) - log(y)) / fmax(fabs(log(y)), 1e-300));
        double s, c;
        ns__det_sincos(x, &s, &c);
        worst_trig = fmax(worst_trig, fmax(fabs(s - sin(x)), fabs(c - cos(x))));
        float xf = (float)(x / 40);
        float ef = ns__det_expf(xf);
        float lf = (float)exp((double)xf);
        assert_true(fabsf(ef - lf) <= 1.5f * (nextafterf(lf, INFINITY) - lf));
    }
    printf("  det exp rel %.2e, log rel %.2e, sin/cos abs %.2e\n", worst_exp, worst_log,
           worst_trig);
    assert_true(worst_exp < 1e-14 && worst_log < 1e-14 && worst_trig < 1e-14);
    assert_true(ns__det_expf(-200.0f) == 0.0f && isinf(ns__det_expf(100.0f)));
    assert_true(fabs(ns__det_powi(0.9, 10) - pow(0.9, 10)) < 1e-15);
}

/* The SIMD forms of exp give the scalar function's bits, edge cases included. */
static void test_deterministic_expf_array_is_bit_identical_on_every_path(void **state)
{
    (void)state;
    enum { N = 4099 };
    float *in = floats(N), *want = floats(N), *got = floats(N);
    const float edges[] = {NAN,       INFINITY, -INFINITY,   88.8f,       88.80001f,
                           88.79999f, -104.0f,  -104.00001f, -103.99999f, -87.5f,
                           -95.0f,    0.0f,     -0.0f,       1e-30f};
    uint64_t rng = 77;
    for (size_t i = 0; i < N; i++)
        in[i] = i < sizeof edges / sizeof edges[0] ? edges[i] : 100.0f * rng_uniform(&rng) - 5.0f;
    for (size_t i = 0; i < N; i++)
        want[i] = ns__det_expf(in[i]);
    ns__simd_path paths[] = {NS__SIMD_SCALAR, NS__SIMD_AVX2, NS__SIMD_AVX512};
    for (size_t p = 0; p < 3; p++) {
        if (!ns__simd_force(paths[p]))
            continue;
        memset(got, 0, N * sizeof(float));
        ns__det_expf_array(got, in, N);
        assert_memory_equal(got, want, N * sizeof(float));
    }
    assert_true(ns__simd_force(NS__SIMD_AUTO));
    free(in);
    free(want);
    free(got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_logits_and_loss_match_pytorch),
        cmocka_unit_test(test_reference_every_parameter_gradient_matches_pytorch),
        cmocka_unit_test(test_reference_three_adamw_steps_match_pytorch),
        cmocka_unit_test(test_decode_with_kv_cache_matches_pytorch),
        cmocka_unit_test(test_decode_over_several_chunks_agrees_with_the_training_forward),
        cmocka_unit_test(test_decode_through_two_stages_equals_one_stage),
        cmocka_unit_test(test_decode_on_another_executor_agrees),
        cmocka_unit_test(test_decode_refuses_bad_input_and_keeps_its_cache),
        cmocka_unit_test(test_sampler_greedy_takes_the_highest_logit_and_the_lowest_id_on_a_tie),
        cmocka_unit_test(test_sampler_follows_the_softmax_within_top_k_and_top_p),
        cmocka_unit_test(test_sampler_same_seed_same_tokens_and_bad_parameters_refused),
        cmocka_unit_test(test_matmul_backward_matches_finite_differences),
        cmocka_unit_test(test_embedding_backward_matches_finite_differences),
        cmocka_unit_test(test_rmsnorm_backward_matches_finite_differences),
        cmocka_unit_test(test_rope_backward_matches_finite_differences),
        cmocka_unit_test(test_attention_backward_matches_finite_differences),
        cmocka_unit_test(test_swiglu_backward_matches_finite_differences),
        cmocka_unit_test(test_residual_backward_matches_finite_differences),
        cmocka_unit_test(test_softmax_crossentropy_backward_matches_finite_differences),
        cmocka_unit_test(test_reproducible_gemm_paths_agree_bit_for_bit),
        cmocka_unit_test(test_same_seed_data_and_threads_give_bit_identical_training),
        cmocka_unit_test(test_reproducible_mode_is_bit_identical_across_threads_and_vector_widths),
        cmocka_unit_test(test_fast_and_reproducible_modes_agree_within_tolerance),
        cmocka_unit_test(test_fast_mode_across_thread_counts_agrees_within_tolerance),
        cmocka_unit_test(test_two_stages_chained_equal_one_stage),
        cmocka_unit_test(test_gradient_accumulation_matches_one_larger_batch),
        cmocka_unit_test(test_stage_refuses_bad_input_and_keeps_nothing),
        cmocka_unit_test(test_stage_refuses_malformed_configs),
        cmocka_unit_test(test_init_is_deterministic_split_invariant_and_scaled),
        cmocka_unit_test(test_named_tensors_cover_the_flat_buffers_under_hf_names),
        cmocka_unit_test(test_schedule_warms_up_linearly_then_follows_the_cosine),
        cmocka_unit_test(test_jobs_run_in_order_off_the_calling_thread_with_a_bounded_queue),
        cmocka_unit_test(test_deterministic_math_is_close_to_libm),
        cmocka_unit_test(test_deterministic_expf_array_is_bit_identical_on_every_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
