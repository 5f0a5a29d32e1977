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
/* Pipeline mode needs T1-T4 (S2); every tier may train asynchronously. */
bool ns_tier_can_pipeline(ns_tier tier);

#endif
