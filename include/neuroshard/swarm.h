/*
 * swarm.h: pure functions of the swarm that every node must compute alike (SPEC S2, S3).
 *
 * The architecture function maps the memory the nodes announce to one NeuroLLM shape, and the
 * speed-tier function maps a measured layer latency to a tier. Same inputs, same answer on every
 * node: no clocks, no randomness, no floating point that depends on the platform beyond IEEE pow.
 */
#ifndef NEUROSHARD_SWARM_H
#define NEUROSHARD_SWARM_H

#include <stdbool.h>
#include <stdint.h>

#include "neuroshard/base.h"

#define NS_ARCH_VOCAB_DEFAULT   32000
#define NS_ARCH_SEQ_LEN_DEFAULT 2048
#define NS_ARCH_HEAD_DIM        64

typedef struct ns_arch {
    uint32_t layers;
    uint32_t hidden;
    uint32_t heads;        /* hidden / 64 */
    uint32_t kv_heads;     /* the largest divisor of heads that is <= max(1, heads / 3) */
    uint32_t intermediate; /* hidden * 8 / 3, rounded to a multiple of 64 */
    uint32_t vocab;
    uint32_t seq_len_max;
    uint64_t params; /* exact parameter count of this shape (untied embedding and head) */
} ns_arch;

/* The architecture for a swarm whose nodes announce total_memory_mb in all. NS_EINVAL below the
 * smallest model's memory (NS_ARCH_MEMORY_MB_MIN), NS_ETOOBIG above NS_ARCH_MEMORY_MB_MAX (1 PiB,
 * far beyond any real swarm; the caller clamps sums of untrusted announcements to it). */
#define NS_ARCH_MEMORY_MB_MIN 256
#define NS_ARCH_MEMORY_MB_MAX (1024ull * 1024 * 1024)
NS_MUST_USE int ns_arch_for_memory(uint64_t total_memory_mb, ns_arch *out);
/* The shape of a model of `layers` blocks of width `hidden` by S3's rules (what --model LxH
 * means): heads = hidden / 64, kv_heads and intermediate as above, `vocab` tokens, the default
 * context, the parameters counted. Every node that trains one LxH model must size its layers
 * alike, so the trainer and the layer pool both take the shape from here. NS_EINVAL for layers
 * outside 1..NS_ARCH_SHAPE_LAYERS_MAX, a hidden that is not a multiple of 64 in
 * 64..NS_ARCH_SHAPE_HIDDEN_MAX, or vocab outside 1..NS_ARCH_SHAPE_VOCAB_MAX. */
#define NS_ARCH_SHAPE_LAYERS_MAX 256
#define NS_ARCH_SHAPE_HIDDEN_MAX 65536
#define NS_ARCH_SHAPE_VOCAB_MAX  (1u << 24)
NS_MUST_USE int ns_arch_for_shape(uint32_t layers, uint32_t hidden, uint32_t vocab, ns_arch *out);
/* Parameter count of one transformer block of this shape. */
uint64_t ns_arch_layer_params(const ns_arch *arch);

typedef enum {
    NS_TIER_T1 = 1, /* < 10 ms a layer */
    NS_TIER_T2 = 2, /* 10 - 50 ms */
    NS_TIER_T3 = 3, /* 50 - 200 ms */
    NS_TIER_T4 = 4, /* 200 - 1000 ms */
    NS_TIER_T5 = 5, /* > 1000 ms: async only */
} ns_tier;

ns_tier ns_tier_for_latency_us(uint64_t layer_latency_us);
const char *ns_tier_name(ns_tier tier); /* "T1".."T5" */
/* A layer's forward time that stands for a tier when a node's own is not known: the geometric
 * middle of its band (T1 3.2 ms, T2 22 ms, T3 100 ms, T4 447 ms, T5 3 s), in microseconds. */
uint64_t ns_tier_nominal_us(ns_tier tier);
/* Pipeline mode needs T1-T4 (S2); every tier may train asynchronously. */
bool ns_tier_can_pipeline(ns_tier tier);

/* ---- layer pool (SPEC S3) ----------------------------------------------------------------- */

/* What a node needs to hold a layer range: every parameter costs NS_POOL_BYTES_PER_PARAM bytes
 * (fp32 weight, gradient, AdamW first and second moments); the holder of layer 0 also holds the
 * token embedding, the holder of the last layer also the final RMSNorm and the LM head. Of a
 * node's announced memory, NS_POOL_MEMORY_USABLE_PERCENT is budgeted for layers (S3's 0.8); the
 * rest is left for activations, the runtime and the system. */
#define NS_POOL_NODES_MAX             4096
#define NS_POOL_LAYERS_MAX            256 /* the architecture function gives at most 216 */
#define NS_POOL_BYTES_PER_PARAM       16
#define NS_POOL_MEMORY_USABLE_PERCENT 80
#define NS_POOL_SCARCITY_PPM_BASE     1000000u /* a multiplier of 1.0 in parts per million */

/* One node's announcement as the pool sees it. */
typedef struct ns_pool_node {
    uint8_t id[NS_ID_BYTES];
    uint64_t memory_mb;
    ns_tier tier;
    uint32_t layer_first; /* held layers [layer_first, layer_last); equal when none */
    uint32_t layer_last;
} ns_pool_node;

typedef struct ns_pool_range {
    uint32_t layer_first; /* [layer_first, layer_last); equal when empty */
    uint32_t layer_last;
} ns_pool_range;

/* Target replicas of every layer for a swarm of nodes: 1 (N < 5), 2 (N < 20), 3 (N >= 20). */
uint32_t ns_pool_replicas_target(size_t nodes);
/* Bytes to hold layers [first, last) of arch (see above). arch must be valid for ns_pool_assign
 * and first < last <= arch->layers. */
uint64_t ns_pool_range_bytes(const ns_arch *arch, uint32_t first, uint32_t last);
/* Bytes of an announced memory budgeted for layers; memory above NS_ARCH_MEMORY_MB_MAX counts as
 * that much. */
uint64_t ns_pool_budget_bytes(uint64_t memory_mb);

/* Assigns out[i], a contiguous layer range, to nodes[i]. Every node computes the same answer from
 * the same announcements, whatever their order: nodes are taken in node-id order. First every
 * node whose held range is still valid (inside the architecture, within its budget) keeps it.
 * Then each other node, in id order, starts at the scarcest layer whose holding fits its budget
 * (fewest holders, ties to the lowest index) and grows the range one layer at a time toward the
 * scarcer neighbour (ties to the lower index) for as long as the range fits. A node that fits no
 * layer gets an empty range (0, 0). NS_EINVAL for a NULL or implausible arch (no layers, more
 * than NS_POOL_LAYERS_MAX, a shape whose byte counts could overflow), NULL nodes or out with
 * n > 0, or two announcements with one id; NS_ETOOBIG for n > NS_POOL_NODES_MAX. n = 0 is OK. */
NS_MUST_USE int ns_pool_assign(const ns_arch *arch, const ns_pool_node *nodes, size_t n,
                               ns_pool_range *out);
/* Whether nodes[self]'s range in `ranges` (ns_pool_assign's answer for nodes[0..n)) is surplus:
 * some layer has fewer holders than ns_pool_replicas_target(n), while every layer of that range
 * is held by at least the target's number of nodes with smaller ids. A surplus holder gives its
 * range up and is assigned again as if it held nothing (the others keeping theirs). So two nodes
 * that took the same layers at once, each before it heard of the other, part: the larger id
 * moves toward the layers short of holders, the smaller stays, and no layer loses the holders
 * that count toward its target. False for an empty range. ranges must be a valid assignment and
 * self < n. */
bool ns_pool_surplus(const ns_arch *arch, const ns_pool_node *nodes, const ns_pool_range *ranges,
                     size_t n, size_t self);
/* holders[l] = how many of ranges[0..n) hold layer l, for l < arch->layers. NS_EINVAL for an
 * invalid arch or a range that is reversed or reaches past the last layer. */
NS_MUST_USE int ns_pool_holders(const ns_arch *arch, const ns_pool_range *ranges, size_t n,
                                uint32_t *holders);
/* S10's scarcity multiplier 1 + 0.5 * (target - actual) / target, in parts per million and
 * rounded down: 1 500 000 for a layer nobody holds, 1 000 000 from the target up (holding a
 * well-replicated layer is never paid less than the base) and for target 0. */
uint32_t ns_pool_scarcity_ppm(uint32_t target, uint32_t actual);

#endif
