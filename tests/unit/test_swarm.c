/*
 * test_swarm.c: the architecture function (S3), shapes given by hand (--model LxH) and the speed
 * tiers (S2).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "neuroshard/swarm.h"

#define MB_PER_GB 1024ull
#define MB_PER_TB (1024ull * 1024ull)

static ns_arch arch_for_gb(uint64_t gb)
{
    ns_arch arch;
    assert_int_equal(ns_arch_for_memory(gb * MB_PER_GB, &arch), NS_OK);
    return arch;
}

/* The parameter count written out from the shape, independently of the code under test. */
static uint64_t params_by_hand(const ns_arch *a)
{
    uint64_t h = a->hidden;
    uint64_t kv_dim = (uint64_t)a->kv_heads * 64u;
    uint64_t layer = h * h + 2u * h * kv_dim + h * h + 3u * h * a->intermediate + 2u * h;
    return (uint64_t)a->vocab * h + a->layers * layer + h + (uint64_t)a->vocab * h;
}

static void test_arch_meets_the_reference_points(void **state)
{
    (void)state;
    const struct {
        uint64_t gb;
        uint32_t layers;
        uint32_t hidden;
    } points[] = {
        {2, 8, 512}, {40, 16, 1024}, {300, 24, 2048}, {800, 32, 3072}, {8000, 64, 7168},
    };
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        ns_arch arch = arch_for_gb(points[i].gb);
        assert_int_equal(arch.layers, points[i].layers);
        assert_int_equal(arch.hidden, points[i].hidden);
    }
}

static void test_arch_derives_heads_kv_heads_and_intermediate_at_reference_points(void **state)
{
    (void)state;
    const struct {
        uint64_t gb;
        uint32_t heads;
        uint32_t kv_heads;
        uint32_t intermediate;
    } points[] = {
        {2, 8, 2, 1344},        /* 8 / 3 = 2 divides 8 */
        {40, 16, 4, 2752},      /* 16 / 3 = 5 does not divide 16; 4 does */
        {300, 32, 8, 5440},     /* 32 / 3 = 10 -> 8 */
        {800, 48, 16, 8192},    /* 48 / 3 = 16 */
        {8000, 112, 28, 19136}, /* 112 / 3 = 37 -> 28 */
    };
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        ns_arch arch = arch_for_gb(points[i].gb);
        assert_int_equal(arch.heads, points[i].heads);
        assert_int_equal(arch.kv_heads, points[i].kv_heads);
        assert_int_equal(arch.intermediate, points[i].intermediate);
        assert_int_equal(arch.vocab, NS_ARCH_VOCAB_DEFAULT);
        assert_int_equal(arch.seq_len_max, NS_ARCH_SEQ_LEN_DEFAULT);
    }
}

static void test_arch_counts_parameters_exactly(void **state)
{
    (void)state;
    ns_arch arch = arch_for_gb(2);
    /* Block: q 512·512 + k,v 2·512·128 + o 512·512 + MLP 3·512·1344 + norms 2·512. */
    assert_int_equal(ns_arch_layer_params(&arch), 2720768u);
    /* Embedding and head 2·32000·512 + 8 blocks + final norm 512. */
    assert_int_equal(arch.params, 54534656u);
}

static void test_arch_is_consistent_over_a_memory_sweep(void **state)
{
    (void)state;
    uint64_t sweep_end_mb = 64u * MB_PER_TB;
    size_t shapes = 0;
    for (uint64_t mb = NS_ARCH_MEMORY_MB_MIN; mb <= sweep_end_mb; mb += mb / 256 + 1) {
        ns_arch arch;
        assert_int_equal(ns_arch_for_memory(mb, &arch), NS_OK);
        assert_true(arch.layers >= 8 && arch.layers % 8 == 0);
        assert_true(arch.hidden >= 512 && arch.hidden % 512 == 0);
        assert_int_equal(arch.heads * NS_ARCH_HEAD_DIM, arch.hidden);
        assert_int_equal(arch.heads % arch.kv_heads, 0);
        uint32_t kv_limit = arch.heads / 3 > 1 ? arch.heads / 3 : 1;
        assert_true(arch.kv_heads <= kv_limit);
        for (uint32_t kv = arch.kv_heads + 1; kv <= kv_limit; kv++)
            assert_true(arch.heads % kv != 0); /* kv_heads is the largest such divisor */
        assert_int_equal(arch.intermediate % 64, 0);
        int64_t off = (int64_t)arch.intermediate * 3 - (int64_t)arch.hidden * 8;
        assert_true(off >= -3 * 32 && off <= 3 * 32); /* nearest multiple of 64 to hidden·8/3 */
        assert_int_equal(arch.params, params_by_hand(&arch));
        shapes++;
    }
    assert_true(shapes > 1000);
}

static void test_arch_never_shrinks_as_memory_grows(void **state)
{
    (void)state;
    ns_arch last;
    assert_int_equal(ns_arch_for_memory(NS_ARCH_MEMORY_MB_MIN, &last), NS_OK);
    for (uint64_t mb = NS_ARCH_MEMORY_MB_MIN + 1; mb <= 64u * MB_PER_TB; mb += mb / 512 + 1) {
        ns_arch arch;
        assert_int_equal(ns_arch_for_memory(mb, &arch), NS_OK);
        assert_true(arch.layers >= last.layers);
        assert_true(arch.hidden >= last.hidden);
        assert_true(arch.params >= last.params);
        last = arch;
    }
}

static void test_arch_refuses_memory_outside_its_range(void **state)
{
    (void)state;
    ns_arch arch;
    assert_int_equal(ns_arch_for_memory(0, &arch), NS_EINVAL);
    assert_int_equal(ns_arch_for_memory(NS_ARCH_MEMORY_MB_MIN - 1, &arch), NS_EINVAL);
    assert_int_equal(ns_arch_for_memory(NS_ARCH_MEMORY_MB_MIN, &arch), NS_OK);
    assert_int_equal(arch.layers, 8);
    assert_int_equal(arch.hidden, 512);
    assert_int_equal(ns_arch_for_memory(NS_ARCH_MEMORY_MB_MAX, &arch), NS_OK);
    assert_int_equal(arch.params, params_by_hand(&arch));
    assert_int_equal(ns_arch_for_memory(NS_ARCH_MEMORY_MB_MAX + 1, &arch), NS_ETOOBIG);
    assert_int_equal(ns_arch_for_memory(UINT64_MAX, &arch), NS_ETOOBIG);
}

/* A shape given by hand follows the same rules as the architecture function's own. */
static void test_arch_for_shape_matches_the_architecture_function(void **state)
{
    (void)state;
    const uint64_t gbs[] = {2, 40, 800};
    for (size_t i = 0; i < sizeof gbs / sizeof gbs[0]; i++) {
        ns_arch want = arch_for_gb(gbs[i]);
        ns_arch got;
        assert_int_equal(ns_arch_for_shape(want.layers, want.hidden, want.vocab, &got), NS_OK);
        assert_int_equal(got.layers, want.layers);
        assert_int_equal(got.hidden, want.hidden);
        assert_int_equal(got.heads, want.heads);
        assert_int_equal(got.kv_heads, want.kv_heads);
        assert_int_equal(got.intermediate, want.intermediate);
        assert_int_equal(got.vocab, want.vocab);
        assert_int_equal(got.seq_len_max, want.seq_len_max);
        assert_int_equal(got.params, want.params);
    }
}

/* The daemon's small test models: 3x64 and 8x512 with the 8192-token vocabulary, by hand. */
static void test_arch_for_shape_of_small_models(void **state)
{
    (void)state;
    ns_arch a;
    assert_int_equal(ns_arch_for_shape(3, 64, 8192, &a), NS_OK);
    assert_int_equal(a.heads, 1);
    assert_int_equal(a.kv_heads, 1);
    assert_int_equal(a.intermediate, 192); /* 64 * 8 / 3 = 170.7: nearest multiple of 64 */
    assert_int_equal(a.seq_len_max, NS_ARCH_SEQ_LEN_DEFAULT);
    assert_int_equal(a.params, params_by_hand(&a));
    assert_int_equal(ns_arch_for_shape(8, 512, 8192, &a), NS_OK);
    assert_int_equal(a.heads, 8);
    assert_int_equal(a.kv_heads, 2);
    assert_int_equal(a.intermediate, 1344);
    assert_int_equal(a.params, params_by_hand(&a));
}

static void test_arch_for_shape_refuses_bad_shapes(void **state)
{
    (void)state;
    ns_arch a;
    assert_int_equal(ns_arch_for_shape(0, 64, 8192, &a), NS_EINVAL);
    assert_int_equal(ns_arch_for_shape(NS_ARCH_SHAPE_LAYERS_MAX + 1, 64, 8192, &a), NS_EINVAL);
    assert_int_equal(ns_arch_for_shape(3, 0, 8192, &a), NS_EINVAL);
    assert_int_equal(ns_arch_for_shape(3, 96, 8192, &a), NS_EINVAL);
    assert_int_equal(ns_arch_for_shape(3, NS_ARCH_SHAPE_HIDDEN_MAX + 64, 8192, &a), NS_EINVAL);
    assert_int_equal(ns_arch_for_shape(3, 64, 0, &a), NS_EINVAL);
    assert_int_equal(ns_arch_for_shape(3, 64, NS_ARCH_SHAPE_VOCAB_MAX + 1, &a), NS_EINVAL);
}

static void test_tier_boundaries_belong_to_the_slower_tier_up_to_one_second(void **state)
{
    (void)state;
    assert_int_equal(ns_tier_for_latency_us(0), NS_TIER_T1);
    assert_int_equal(ns_tier_for_latency_us(9999), NS_TIER_T1);
    assert_int_equal(ns_tier_for_latency_us(10000), NS_TIER_T2); /* exactly 10 ms */
    assert_int_equal(ns_tier_for_latency_us(49999), NS_TIER_T2);
    assert_int_equal(ns_tier_for_latency_us(50000), NS_TIER_T3);
    assert_int_equal(ns_tier_for_latency_us(199999), NS_TIER_T3);
    assert_int_equal(ns_tier_for_latency_us(200000), NS_TIER_T4);
    assert_int_equal(ns_tier_for_latency_us(1000000), NS_TIER_T4); /* exactly 1000 ms */
    assert_int_equal(ns_tier_for_latency_us(1000001), NS_TIER_T5);
    assert_int_equal(ns_tier_for_latency_us(UINT64_MAX), NS_TIER_T5);
}

static void test_tier_names_and_pipeline_eligibility(void **state)
{
    (void)state;
    const char *names[] = {"T1", "T2", "T3", "T4", "T5"};
    for (int t = NS_TIER_T1; t <= NS_TIER_T5; t++) {
        assert_string_equal(ns_tier_name((ns_tier)t), names[t - 1]);
        assert_int_equal(ns_tier_can_pipeline((ns_tier)t), t != NS_TIER_T5);
    }
    assert_string_equal(ns_tier_name((ns_tier)0), "unknown");
    assert_false(ns_tier_can_pipeline((ns_tier)6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arch_meets_the_reference_points),
        cmocka_unit_test(test_arch_derives_heads_kv_heads_and_intermediate_at_reference_points),
        cmocka_unit_test(test_arch_counts_parameters_exactly),
        cmocka_unit_test(test_arch_is_consistent_over_a_memory_sweep),
        cmocka_unit_test(test_arch_never_shrinks_as_memory_grows),
        cmocka_unit_test(test_arch_refuses_memory_outside_its_range),
        cmocka_unit_test(test_arch_for_shape_matches_the_architecture_function),
        cmocka_unit_test(test_arch_for_shape_of_small_models),
        cmocka_unit_test(test_arch_for_shape_refuses_bad_shapes),
        cmocka_unit_test(test_tier_boundaries_belong_to_the_slower_tier_up_to_one_second),
        cmocka_unit_test(test_tier_names_and_pipeline_eligibility),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
