/*
 * pool.c: the layer pool of SPEC S3: which node holds which contiguous layer range.
 *
 * Every node runs ns_pool_assign over the announcements it sees and must reach the answer every
 * other node reaches, so it is a pure function of the set of announcements: nodes are taken in
 * node-id order (never in input order), ties have fixed rules, and all sizes are integer bytes.
 * Nodes that already hold a valid range keep it (moving layers costs downloads); the others fill
 * the scarcest layers first, which is what brings every layer to the replica target where the
 * memory exists. Everything is bounded by NS_POOL_NODES_MAX and NS_POOL_LAYERS_MAX; the working
 * arrays live on the stack, so the function allocates nothing and cannot fail for memory.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/swarm.h"

#define POOL_HIDDEN_MAX       65536u     /* far above the widest shape (34304) */
#define POOL_INTERMEDIATE_MAX (1u << 19) /* 8 x the widest hidden */
#define POOL_VOCAB_MAX        (1u << 24) /* 16M tokens */
#define POOL_MB_BYTES         (1ull << 20)
#define POOL_REPLICAS_2_FROM  5u  /* nodes */
#define POOL_REPLICAS_3_FROM  20u /* nodes */
#define POOL_SCARCITY_HALF    (NS_POOL_SCARCITY_PPM_BASE / 2u)

/* With these bounds a layer is below 2^37 parameters and a whole range below 2^50 bytes. */
static_assert(NS_POOL_LAYERS_MAX <= 256, "byte counts of a full range stay below 2^50");
static_assert(NS_POOL_MEMORY_USABLE_PERCENT > 0 && NS_POOL_MEMORY_USABLE_PERCENT <= 100,
              "the usable share of memory is a percentage");

uint32_t ns_pool_replicas_target(size_t nodes)
{
    if (nodes < POOL_REPLICAS_2_FROM)
        return 1;
    if (nodes < POOL_REPLICAS_3_FROM)
        return 2;
    return 3;
}

/* Bad input, not a bug: an arch may come from a peer or a hand-made config. */
static bool arch_valid(const ns_arch *arch)
{
    return arch != NULL && arch->layers >= 1 && arch->layers <= NS_POOL_LAYERS_MAX &&
           arch->hidden >= NS_ARCH_HEAD_DIM && arch->hidden <= POOL_HIDDEN_MAX &&
           arch->kv_heads >= 1 && (uint64_t)arch->kv_heads * NS_ARCH_HEAD_DIM <= arch->hidden &&
           arch->intermediate <= POOL_INTERMEDIATE_MAX && arch->vocab <= POOL_VOCAB_MAX;
}

uint64_t ns_pool_range_bytes(const ns_arch *arch, uint32_t first, uint32_t last)
{
    NS_ASSERT(arch_valid(arch));
    NS_ASSERT(first < last);
    NS_ASSERT(last <= arch->layers);
    uint64_t params = (uint64_t)(last - first) * ns_arch_layer_params(arch);
    uint64_t vocab_params = (uint64_t)arch->vocab * arch->hidden;
    if (first == 0)
        params += vocab_params; /* token embedding */
    if (last == arch->layers)
        params += vocab_params + arch->hidden; /* LM head and final RMSNorm */
    return params * NS_POOL_BYTES_PER_PARAM;
}

uint64_t ns_pool_budget_bytes(uint64_t memory_mb)
{
    uint64_t mb = memory_mb < NS_ARCH_MEMORY_MB_MAX ? memory_mb : NS_ARCH_MEMORY_MB_MAX;
    return mb * POOL_MB_BYTES / 100u * NS_POOL_MEMORY_USABLE_PERCENT;
}

static int node_by_id(const void *a, const void *b)
{
    const ns_pool_node *x = *(const ns_pool_node *const *)a;
    const ns_pool_node *y = *(const ns_pool_node *const *)b;
    return memcmp(x->id, y->id, NS_ID_BYTES);
}

static bool range_fits(const ns_arch *arch, uint32_t first, uint32_t last, uint64_t budget)
{
    return ns_pool_range_bytes(arch, first, last) <= budget;
}

/* A held range a node may keep: non-empty, inside the architecture, within its budget. */
static bool held_range_valid(const ns_arch *arch, const ns_pool_node *node)
{
    return node->layer_first < node->layer_last && node->layer_last <= arch->layers &&
           range_fits(arch, node->layer_first, node->layer_last,
                      ns_pool_budget_bytes(node->memory_mb));
}

/* The scarcest layer whose holding alone fits budget, or arch->layers if none fits. */
static uint32_t scarcest_fitting(const ns_arch *arch, const uint32_t *holders, uint64_t budget)
{
    uint32_t best = arch->layers;
    for (uint32_t l = 0; l < arch->layers; l++) {
        if (range_fits(arch, l, l + 1, budget) &&
            (best == arch->layers || holders[l] < holders[best]))
            best = l;
    }
    return best;
}

/* Grows [first, last) from the scarcest fitting layer toward the scarcer neighbour while the
 * range fits; ties go to the lower index. */
static ns_pool_range take_scarcest(const ns_arch *arch, const uint32_t *holders, uint64_t budget)
{
    uint32_t start = scarcest_fitting(arch, holders, budget);
    if (start == arch->layers)
        return (ns_pool_range){0, 0};
    ns_pool_range r = {start, start + 1};
    for (;;) {
        bool left = r.layer_first > 0 && range_fits(arch, r.layer_first - 1, r.layer_last, budget);
        bool right = r.layer_last < arch->layers &&
                     range_fits(arch, r.layer_first, r.layer_last + 1, budget);
        if (!left && !right)
            break;
        if (left && (!right || holders[r.layer_first - 1] <= holders[r.layer_last]))
            r.layer_first--;
        else
            r.layer_last++;
    }
    NS_ASSERT(r.layer_first < r.layer_last);
    NS_ASSERT(r.layer_last <= arch->layers);
    return r;
}

static void count_range(uint32_t *holders, ns_pool_range r)
{
    for (uint32_t l = r.layer_first; l < r.layer_last; l++)
        holders[l]++;
}

int ns_pool_assign(const ns_arch *arch, const ns_pool_node *nodes, size_t n, ns_pool_range *out)
{
    if (!arch_valid(arch))
        return NS_EINVAL;
    if (n == 0)
        return NS_OK;
    if (nodes == NULL || out == NULL)
        return NS_EINVAL;
    if (n > NS_POOL_NODES_MAX)
        return NS_ETOOBIG;

    const ns_pool_node *sorted[NS_POOL_NODES_MAX];
    for (size_t i = 0; i < n; i++)
        sorted[i] = &nodes[i];
    qsort(sorted, n, sizeof sorted[0], node_by_id);
    for (size_t i = 1; i < n; i++) {
        if (memcmp(sorted[i - 1]->id, sorted[i]->id, NS_ID_BYTES) == 0)
            return NS_EINVAL;
    }

    uint32_t holders[NS_POOL_LAYERS_MAX] = {0};
    bool keeps[NS_POOL_NODES_MAX];
    for (size_t k = 0; k < n; k++) {
        const ns_pool_node *node = sorted[k];
        keeps[k] = held_range_valid(arch, node);
        if (keeps[k]) {
            out[node - nodes] = (ns_pool_range){node->layer_first, node->layer_last};
            count_range(holders, out[node - nodes]);
        }
    }
    for (size_t k = 0; k < n; k++) {
        if (keeps[k])
            continue;
        const ns_pool_node *node = sorted[k];
        out[node - nodes] = take_scarcest(arch, holders, ns_pool_budget_bytes(node->memory_mb));
        count_range(holders, out[node - nodes]);
    }
    return NS_OK;
}

int ns_pool_holders(const ns_arch *arch, const ns_pool_range *ranges, size_t n, uint32_t *holders)
{
    if (!arch_valid(arch) || holders == NULL || (n > 0 && ranges == NULL))
        return NS_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (ranges[i].layer_first > ranges[i].layer_last || ranges[i].layer_last > arch->layers)
            return NS_EINVAL;
    }
    memset(holders, 0, arch->layers * sizeof holders[0]);
    for (size_t i = 0; i < n; i++)
        count_range(holders, ranges[i]);
    return NS_OK;
}

bool ns_pool_surplus(const ns_arch *arch, const ns_pool_node *nodes, const ns_pool_range *ranges,
                     size_t n, size_t self)
{
    NS_ASSERT(arch_valid(arch));
    NS_ASSERT(self < n);
    NS_ASSERT(n <= NS_POOL_NODES_MAX);
    ns_pool_range mine = ranges[self];
    NS_ASSERT(mine.layer_first <= mine.layer_last && mine.layer_last <= arch->layers);
    if (mine.layer_first == mine.layer_last)
        return false;
    uint32_t target = ns_pool_replicas_target(n);
    uint32_t holders[NS_POOL_LAYERS_MAX] = {0};
    uint32_t smaller[NS_POOL_LAYERS_MAX] = {0}; /* holders with an id below nodes[self]'s */
    for (size_t i = 0; i < n; i++) {
        NS_ASSERT(ranges[i].layer_first <= ranges[i].layer_last);
        NS_ASSERT(ranges[i].layer_last <= arch->layers);
        count_range(holders, ranges[i]);
        if (memcmp(nodes[i].id, nodes[self].id, NS_ID_BYTES) < 0)
            count_range(smaller, ranges[i]);
    }
    bool short_somewhere = false;
    for (uint32_t l = 0; l < arch->layers; l++)
        short_somewhere = short_somewhere || holders[l] < target;
    if (!short_somewhere)
        return false;
    for (uint32_t l = mine.layer_first; l < mine.layer_last; l++) {
        if (smaller[l] < target)
            return false;
    }
    return true;
}

uint32_t ns_pool_scarcity_ppm(uint32_t target, uint32_t actual)
{
    if (target == 0 || actual >= target)
        return NS_POOL_SCARCITY_PPM_BASE;
    uint64_t bonus = (uint64_t)POOL_SCARCITY_HALF * (target - actual) / target;
    NS_ASSERT(bonus <= POOL_SCARCITY_HALF);
    return NS_POOL_SCARCITY_PPM_BASE + (uint32_t)bonus;
}
