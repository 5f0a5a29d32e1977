/*
 * arch.c: the architecture function of SPEC S3, total swarm memory -> one NeuroLLM shape.
 *
 * Every node must compute the same shape from the same memory, so this is a pure function: no
 * clock, no randomness, and floating point only in two calls to pow() whose results are rounded
 * to coarse grids (multiples of 8 layers, of 512 hidden units) far from where libm differences
 * could move them.
 *
 * The paper gives width ∝ M^0.6 and depth ∝ M^0.4, but those exponents contradict its own
 * reference points (2 GB → 8×512, 40 GB → 16×1024, 800 GB → 32×3072, 8 TB → 64×7168). We use a
 * fit that meets all four exactly. With M_GB = total_memory_mb / 1024 and r = M_GB / 2:
 *     layers = 8 · r^0.25, rounded to the nearest multiple of 8 (at least 8)
 *     hidden = 512 · r^0.32, rounded down to a multiple of 512 (at least 512)
 * Width still grows faster than depth: of the log-growth, 0.32 / 0.57 ≈ 56 % goes to width and
 * 44 % to depth, close to the paper's 60/40. The rest follows S3: heads = hidden / 64, kv_heads =
 * the largest divisor of heads that is at most heads / 3 (so grouped-query attention has equal
 * groups), intermediate = hidden · 8 / 3 rounded to the nearest multiple of 64, vocab 32000,
 * sequence length 2048. ns_arch_for_shape applies the same rules to a depth and width given by
 * hand (--model LxH), so that every node sizes the layers of one such model alike.
 */
#include <assert.h>
#include <math.h>

#include "neuroshard/swarm.h"

#define ARCH_LAYERS_BASE       8
#define ARCH_LAYERS_STEP       8
#define ARCH_LAYERS_EXPONENT   0.25
#define ARCH_HIDDEN_BASE       512
#define ARCH_HIDDEN_STEP       512
#define ARCH_HIDDEN_EXPONENT   0.32
#define ARCH_REFERENCE_GB      2.0  /* the memory at which the shape is 8 × 512 */
#define ARCH_FLOOR_EPSILON     1e-9 /* keeps r = 1 from flooring just below 1 */
#define ARCH_INTERMEDIATE_STEP 64

static_assert(ARCH_HIDDEN_STEP % NS_ARCH_HEAD_DIM == 0, "hidden must split into whole heads");
static_assert(ARCH_HIDDEN_BASE % ARCH_HIDDEN_STEP == 0, "the base width is on the width grid");
static_assert(ARCH_LAYERS_BASE % ARCH_LAYERS_STEP == 0, "the base depth is on the depth grid");
static_assert(NS_ARCH_MEMORY_MB_MIN < NS_ARCH_MEMORY_MB_MAX, "the memory range is not empty");

/* The largest divisor of heads that is at most max(1, heads / 3). */
static uint32_t kv_heads_for(uint32_t heads)
{
    NS_ASSERT(heads >= 1);
    uint32_t limit = heads / 3 > 1 ? heads / 3 : 1;
    for (uint32_t kv = limit; kv > 1; kv--) {
        if (heads % kv == 0)
            return kv;
    }
    return 1;
}

/* hidden · 8 / 3 to the nearest multiple of 64, in integers: never a tie, since hidden is a
 * multiple of 64 and so hidden · 8 / 192 has a fractional part of 0, 1/3 or 2/3. */
static uint32_t intermediate_for(uint32_t hidden)
{
    uint64_t step3 = 3u * ARCH_INTERMEDIATE_STEP;
    uint64_t steps = ((uint64_t)hidden * 8u + step3 / 2u) / step3;
    return (uint32_t)(steps * ARCH_INTERMEDIATE_STEP);
}

uint64_t ns_arch_layer_params(const ns_arch *arch)
{
    NS_ASSERT(arch != NULL);
    NS_ASSERT(arch->hidden > 0);
    NS_ASSERT(arch->kv_heads > 0);
    uint64_t h = arch->hidden;
    uint64_t kv_dim = (uint64_t)arch->kv_heads * NS_ARCH_HEAD_DIM;
    uint64_t attention = h * h + 2u * h * kv_dim + h * h; /* q, k and v, o */
    uint64_t mlp = 3u * h * arch->intermediate;           /* gate, up, down */
    uint64_t norms = 2u * h;                              /* before attention, before the MLP */
    return attention + mlp + norms;
}

static uint64_t arch_params(const ns_arch *arch)
{
    uint64_t embedding = (uint64_t)arch->vocab * arch->hidden;
    uint64_t head = (uint64_t)arch->vocab * arch->hidden; /* untied from the embedding */
    uint64_t final_norm = arch->hidden;
    return embedding + (uint64_t)arch->layers * ns_arch_layer_params(arch) + final_norm + head;
}

int ns_arch_for_memory(uint64_t total_memory_mb, ns_arch *out)
{
    NS_ASSERT(out != NULL);
    if (total_memory_mb < NS_ARCH_MEMORY_MB_MIN)
        return NS_EINVAL;
    if (total_memory_mb > NS_ARCH_MEMORY_MB_MAX)
        return NS_ETOOBIG;

    double r = ((double)total_memory_mb / 1024.0) / ARCH_REFERENCE_GB;
    double layer_steps = round(ARCH_LAYERS_BASE * pow(r, ARCH_LAYERS_EXPONENT) / ARCH_LAYERS_STEP);
    double hidden_steps = floor(ARCH_HIDDEN_BASE * pow(r, ARCH_HIDDEN_EXPONENT) / ARCH_HIDDEN_STEP +
                                ARCH_FLOOR_EPSILON);
    /* The memory limit keeps both well inside uint32_t (at most 216 layers, 34304 hidden). */
    uint32_t layers = (uint32_t)layer_steps * ARCH_LAYERS_STEP;
    uint32_t hidden = (uint32_t)hidden_steps * ARCH_HIDDEN_STEP;
    layers = layers > ARCH_LAYERS_BASE ? layers : ARCH_LAYERS_BASE;
    hidden = hidden > ARCH_HIDDEN_BASE ? hidden : ARCH_HIDDEN_BASE;

    ns_arch arch = {
        .layers = layers,
        .hidden = hidden,
        .heads = hidden / NS_ARCH_HEAD_DIM,
        .vocab = NS_ARCH_VOCAB_DEFAULT,
        .seq_len_max = NS_ARCH_SEQ_LEN_DEFAULT,
    };
    arch.kv_heads = kv_heads_for(arch.heads);
    arch.intermediate = intermediate_for(hidden);
    arch.params = arch_params(&arch);

    NS_ASSERT(arch.layers >= ARCH_LAYERS_BASE && arch.layers % ARCH_LAYERS_STEP == 0);
    NS_ASSERT(arch.hidden >= ARCH_HIDDEN_BASE && arch.hidden % ARCH_HIDDEN_STEP == 0);
    NS_ASSERT(arch.heads % arch.kv_heads == 0);
    NS_ASSERT(arch.intermediate % ARCH_INTERMEDIATE_STEP == 0);
    *out = arch;
    return NS_OK;
}

int ns_arch_for_shape(uint32_t layers, uint32_t hidden, uint32_t vocab, ns_arch *out)
{
    NS_ASSERT(out != NULL);
    if (layers < 1 || layers > NS_ARCH_SHAPE_LAYERS_MAX || hidden < NS_ARCH_HEAD_DIM ||
        hidden > NS_ARCH_SHAPE_HIDDEN_MAX || hidden % NS_ARCH_HEAD_DIM != 0 || vocab < 1 ||
        vocab > NS_ARCH_SHAPE_VOCAB_MAX)
        return NS_EINVAL;
    ns_arch arch = {
        .layers = layers,
        .hidden = hidden,
        .heads = hidden / NS_ARCH_HEAD_DIM,
        .vocab = vocab,
        .seq_len_max = NS_ARCH_SEQ_LEN_DEFAULT,
    };
    arch.kv_heads = kv_heads_for(arch.heads);
    arch.intermediate = intermediate_for(hidden);
    arch.params = arch_params(&arch);
    NS_ASSERT(arch.heads % arch.kv_heads == 0);
    NS_ASSERT(arch.intermediate % ARCH_INTERMEDIATE_STEP == 0);
    *out = arch;
    return NS_OK;
}
