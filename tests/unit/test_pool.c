/*
 * test_pool.c: the layer pool of S3: replica targets, what a range costs, assignments checked by
 * hand, independence from input order, refusals of bad input, S10's scarcity multiplier, and
 * which held ranges are surplus (two nodes that took the same layers at once).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "neuroshard/swarm.h"

/* One block of the 512-wide shape (heads 8, kv_heads 2, intermediate 1344), by hand:
 * q, o 2*512*512 + k, v 2*512*128 + MLP 3*512*1344 + two norms 2*512 = 2 720 768. */
#define LAYER_PARAMS 2720768ull
#define LAYER_BYTES  (16ull * LAYER_PARAMS)

/* 512 wide with a tiny vocabulary (64 tokens), so the ends cost little next to a layer. */
static ns_arch tiny_vocab_arch(uint32_t layers)
{
    return (ns_arch){.layers = layers,
                     .hidden = 512,
                     .heads = 8,
                     .kv_heads = 2,
                     .intermediate = 1344,
                     .vocab = 64,
                     .seq_len_max = 2048};
}

/* Embedding 64 * 512, LM head 64 * 512 + final norm 512, at 16 bytes a parameter. */
#define TINY_EMBED_BYTES (16ull * 64 * 512)
#define TINY_HEAD_BYTES  (16ull * (64 * 512 + 512))

/* The smallest whole MB whose 80 % holds bytes, plus one MB of slack. */
static uint64_t mb_for(uint64_t bytes)
{
    uint64_t mb = (1ull << 20);
    return (bytes * 100 / 80 + mb - 1) / mb + 1;
}

static ns_pool_node node(uint8_t tag, uint64_t memory_mb, uint32_t first, uint32_t last)
{
    ns_pool_node n = {.memory_mb = memory_mb, .tier = NS_TIER_T2};
    n.id[0] = tag;
    n.layer_first = first;
    n.layer_last = last;
    return n;
}

static void assert_range(ns_pool_range r, uint32_t first, uint32_t last)
{
    assert_int_equal(r.layer_first, first);
    assert_int_equal(r.layer_last, last);
}

static void test_replica_target_follows_swarm_size(void **state)
{
    (void)state;
    assert_int_equal(ns_pool_replicas_target(0), 1);
    assert_int_equal(ns_pool_replicas_target(4), 1);
    assert_int_equal(ns_pool_replicas_target(5), 2);
    assert_int_equal(ns_pool_replicas_target(19), 2);
    assert_int_equal(ns_pool_replicas_target(20), 3);
    assert_int_equal(ns_pool_replicas_target(100000), 3);
}

static void test_range_costs_sixteen_bytes_a_parameter_and_the_ends(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    assert_int_equal(ns_arch_layer_params(&a), LAYER_PARAMS);
    assert_int_equal(ns_pool_range_bytes(&a, 2, 4), 2 * LAYER_BYTES);
    assert_int_equal(ns_pool_range_bytes(&a, 0, 1), LAYER_BYTES + TINY_EMBED_BYTES);
    assert_int_equal(ns_pool_range_bytes(&a, 5, 6), LAYER_BYTES + TINY_HEAD_BYTES);
    /* The whole model costs 16 bytes for each of the architecture's parameters. */
    ns_arch real;
    assert_int_equal(ns_arch_for_memory(2048, &real), NS_OK);
    assert_int_equal(ns_pool_range_bytes(&real, 0, real.layers), 16 * real.params);
    assert_int_equal(ns_pool_budget_bytes(100), 100ull * 1048576 / 100 * 80);
}

static void test_one_node_holds_all_eight_layers(void **state)
{
    (void)state;
    ns_arch a;
    assert_int_equal(ns_arch_for_memory(2048, &a), NS_OK);
    assert_int_equal(a.layers, 8);
    ns_pool_node n = node(1, 2048, 0, 0);
    ns_pool_range r;
    assert_int_equal(ns_pool_assign(&a, &n, 1, &r), NS_OK);
    assert_range(r, 0, 8);
}

static void test_three_equal_nodes_split_six_layers_two_each(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES); /* two layers and an end, not three */
    ns_pool_node nodes[3] = {node(3, mb, 0, 0), node(1, mb, 0, 0), node(2, mb, 0, 0)};
    ns_pool_range r[3];
    assert_int_equal(ns_pool_assign(&a, nodes, 3, r), NS_OK);
    assert_range(r[1], 0, 2); /* id 1 first: the scarcest layer is 0 */
    assert_range(r[2], 2, 4); /* id 2: layer 2, then toward the unheld layer 3 */
    assert_range(r[0], 4, 6);
}

static void test_six_nodes_hold_every_layer_twice(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    ns_pool_node nodes[6];
    for (uint8_t i = 0; i < 6; i++)
        nodes[i] = node((uint8_t)(i + 1), mb, 0, 0);
    ns_pool_range r[6];
    assert_int_equal(ns_pool_replicas_target(6), 2);
    assert_int_equal(ns_pool_assign(&a, nodes, 6, r), NS_OK);
    uint32_t holders[6];
    assert_int_equal(ns_pool_holders(&a, r, 6, holders), NS_OK);
    for (int l = 0; l < 6; l++)
        assert_int_equal(holders[l], 2);
    assert_range(r[3], 0, 2);
    assert_range(r[4], 2, 4);
    assert_range(r[5], 4, 6);
}

static void test_node_that_fits_no_layer_gets_nothing(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    ns_pool_node n = node(1, mb_for(LAYER_BYTES) - 2, 0, 0);
    ns_pool_range r;
    assert_int_equal(ns_pool_assign(&a, &n, 1, &r), NS_OK);
    assert_range(r, 0, 0);
}

static void test_node_too_small_for_an_end_takes_a_middle_layer(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    a.vocab = 32000; /* the embedding now costs about six layers */
    ns_pool_node n = node(1, mb_for(LAYER_BYTES), 0, 0);
    ns_pool_range r;
    assert_int_equal(ns_pool_assign(&a, &n, 1, &r), NS_OK);
    assert_range(r, 1, 2);
}

static void test_joining_node_takes_the_scarcest_layers(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    /* The newcomer has the lowest id, yet the holders before it are counted first. */
    ns_pool_node nodes[6] = {node(10, mb, 0, 2), node(11, mb, 2, 4), node(12, mb, 4, 6),
                             node(13, mb, 0, 2), node(14, mb, 2, 4), node(1, mb, 0, 0)};
    ns_pool_range r[6];
    assert_int_equal(ns_pool_assign(&a, nodes, 6, r), NS_OK);
    for (int i = 0; i < 5; i++)
        assert_range(r[i], nodes[i].layer_first, nodes[i].layer_last);
    assert_range(r[5], 4, 6);
}

static void test_range_grows_toward_the_scarcer_neighbour_ties_to_lower(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    /* Held: [0,2), [3,4), [5,6): layers 2 and 4 are unheld; 2 is lower; its neighbours 1 and 3
     * have one holder each, so the range grows to the lower one. */
    ns_pool_node nodes[4] = {node(10, mb, 0, 2), node(11, mb, 3, 4), node(12, mb, 5, 6),
                             node(13, mb, 0, 0)};
    ns_pool_range r[4];
    assert_int_equal(ns_pool_assign(&a, nodes, 4, r), NS_OK);
    assert_range(r[3], 1, 3);
}

static void test_held_range_no_longer_valid_is_reassigned(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    ns_pool_node nodes[3] = {node(1, mb, 0, 6), /* more than it can hold now */
                             node(2, mb, 5, 9), /* past the last layer */
                             node(3, mb, 4, 2)};
    ns_pool_range r[3];
    assert_int_equal(ns_pool_assign(&a, nodes, 3, r), NS_OK);
    assert_range(r[0], 0, 2);
    assert_range(r[1], 2, 4);
    assert_range(r[2], 4, 6);
}

static void test_input_order_does_not_change_the_assignment(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(12);
    uint64_t small = mb_for(LAYER_BYTES + TINY_HEAD_BYTES);
    uint64_t two = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    uint64_t five = mb_for(5 * LAYER_BYTES + TINY_HEAD_BYTES);
    ns_pool_node nodes[9] = {node(9, five, 0, 0),    node(4, two, 3, 5),  node(7, small, 0, 0),
                             node(1, two, 0, 0),     node(8, five, 0, 0), node(2, 4, 0, 0),
                             node(6, small, 11, 12), node(3, two, 0, 0),  node(5, five, 6, 11)};
    ns_pool_range want[9];
    assert_int_equal(ns_pool_assign(&a, nodes, 9, want), NS_OK);
    const size_t perms[3][9] = {
        {8, 7, 6, 5, 4, 3, 2, 1, 0}, {3, 4, 5, 6, 7, 8, 0, 1, 2}, {1, 3, 5, 7, 0, 2, 4, 6, 8}};
    for (int p = 0; p < 3; p++) {
        ns_pool_node shuffled[9];
        ns_pool_range got[9];
        for (int i = 0; i < 9; i++)
            shuffled[i] = nodes[perms[p][i]];
        assert_int_equal(ns_pool_assign(&a, shuffled, 9, got), NS_OK);
        for (int i = 0; i < 9; i++)
            assert_range(got[i], want[perms[p][i]].layer_first, want[perms[p][i]].layer_last);
    }
}

static void test_bad_input_is_refused(void **state)
{
    (void)state;
    static ns_pool_node many[NS_POOL_NODES_MAX + 1];
    static ns_pool_range out[NS_POOL_NODES_MAX + 1];
    ns_arch a = tiny_vocab_arch(6);
    ns_pool_node n[2] = {node(1, 1024, 0, 0), node(1, 2048, 0, 0)};
    assert_int_equal(ns_pool_assign(&a, NULL, 0, NULL), NS_OK);
    assert_int_equal(ns_pool_assign(NULL, n, 1, out), NS_EINVAL);
    assert_int_equal(ns_pool_assign(&a, NULL, 1, out), NS_EINVAL);
    assert_int_equal(ns_pool_assign(&a, n, 1, NULL), NS_EINVAL);
    assert_int_equal(ns_pool_assign(&a, n, 2, out), NS_EINVAL); /* one id twice */
    assert_int_equal(ns_pool_assign(&a, many, NS_POOL_NODES_MAX + 1, out), NS_ETOOBIG);
    ns_arch bad = a;
    bad.layers = 0;
    assert_int_equal(ns_pool_assign(&bad, n, 1, out), NS_EINVAL);
    bad.layers = NS_POOL_LAYERS_MAX + 1;
    assert_int_equal(ns_pool_assign(&bad, n, 1, out), NS_EINVAL);
    bad = a;
    bad.kv_heads = 0;
    assert_int_equal(ns_pool_assign(&bad, n, 1, out), NS_EINVAL);
    bad = a;
    bad.hidden = 0;
    assert_int_equal(ns_pool_assign(&bad, n, 1, out), NS_EINVAL);

    uint32_t holders[6];
    ns_pool_range reversed = {3, 2}, past = {5, 7};
    assert_int_equal(ns_pool_holders(&a, &reversed, 1, holders), NS_EINVAL);
    assert_int_equal(ns_pool_holders(&a, &past, 1, holders), NS_EINVAL);
}

static void test_scarcity_multiplier_in_parts_per_million(void **state)
{
    (void)state;
    assert_int_equal(ns_pool_scarcity_ppm(3, 0), 1500000);
    assert_int_equal(ns_pool_scarcity_ppm(3, 1), 1333333);
    assert_int_equal(ns_pool_scarcity_ppm(3, 2), 1166666);
    assert_int_equal(ns_pool_scarcity_ppm(3, 3), 1000000);
    assert_int_equal(ns_pool_scarcity_ppm(3, 7), 1000000);
    assert_int_equal(ns_pool_scarcity_ppm(2, 1), 1250000);
    assert_int_equal(ns_pool_scarcity_ppm(1, 0), 1500000);
    assert_int_equal(ns_pool_scarcity_ppm(0, 0), 1000000);
}

/* Two nodes that took layers 0..1 at once: with layers 4..5 held by nobody, the larger id gives
 * its copy up and, assigned again, takes the unheld layers; the smaller keeps its range. */
static void test_larger_of_two_same_range_holders_is_surplus_and_moves(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    ns_pool_node nodes[3] = {node(2, mb, 0, 2), node(1, mb, 0, 2), node(3, mb, 2, 4)};
    ns_pool_range r[3];
    assert_int_equal(ns_pool_assign(&a, nodes, 3, r), NS_OK);
    assert_range(r[0], 0, 2); /* sticky: both keep their valid ranges */
    assert_range(r[1], 0, 2);
    assert_true(ns_pool_surplus(&a, nodes, r, 3, 0));
    assert_false(ns_pool_surplus(&a, nodes, r, 3, 1)); /* the smaller id stays */
    assert_false(ns_pool_surplus(&a, nodes, r, 3, 2)); /* the only holder of 2..3 */
    nodes[0].layer_first = nodes[0].layer_last = 0;
    assert_int_equal(ns_pool_assign(&a, nodes, 3, r), NS_OK);
    assert_range(r[0], 4, 6);
    assert_range(r[1], 0, 2);
    assert_range(r[2], 2, 4);
}

static void test_no_range_is_surplus_once_every_layer_has_its_target(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    ns_pool_node nodes[4] = {node(1, mb, 0, 2), node(2, mb, 2, 4), node(3, mb, 4, 6),
                             node(4, mb, 0, 2)};
    ns_pool_range r[4];
    assert_int_equal(ns_pool_assign(&a, nodes, 4, r), NS_OK);
    for (size_t i = 0; i < 4; i++)
        assert_false(ns_pool_surplus(&a, nodes, r, 4, i));
}

/* With six nodes the target is two holders: a third copy of layers 0..1 is surplus while layers
 * are short, the second is not. */
static void test_surplus_counts_the_target_of_smaller_holders(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    uint64_t mb = mb_for(2 * LAYER_BYTES + TINY_HEAD_BYTES);
    ns_pool_node nodes[6] = {node(1, mb, 0, 2), node(2, mb, 0, 2), node(3, mb, 0, 2),
                             node(4, mb, 2, 4), node(5, mb, 2, 4), node(6, mb, 4, 6)};
    ns_pool_range r[6];
    assert_int_equal(ns_pool_replicas_target(6), 2);
    assert_int_equal(ns_pool_assign(&a, nodes, 6, r), NS_OK);
    assert_false(ns_pool_surplus(&a, nodes, r, 6, 0));
    assert_false(ns_pool_surplus(&a, nodes, r, 6, 1));
    assert_true(ns_pool_surplus(&a, nodes, r, 6, 2));
    assert_false(ns_pool_surplus(&a, nodes, r, 6, 4)); /* 2..3 has only its two holders */
}

static void test_empty_range_is_never_surplus(void **state)
{
    (void)state;
    ns_arch a = tiny_vocab_arch(6);
    ns_pool_node nodes[2] = {node(1, mb_for(2 * LAYER_BYTES), 0, 2), node(2, 1, 0, 0)};
    ns_pool_range r[2];
    assert_int_equal(ns_pool_assign(&a, nodes, 2, r), NS_OK);
    assert_range(r[1], 0, 0); /* 1 MB fits no layer */
    assert_false(ns_pool_surplus(&a, nodes, r, 2, 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replica_target_follows_swarm_size),
        cmocka_unit_test(test_range_costs_sixteen_bytes_a_parameter_and_the_ends),
        cmocka_unit_test(test_one_node_holds_all_eight_layers),
        cmocka_unit_test(test_three_equal_nodes_split_six_layers_two_each),
        cmocka_unit_test(test_six_nodes_hold_every_layer_twice),
        cmocka_unit_test(test_node_that_fits_no_layer_gets_nothing),
        cmocka_unit_test(test_node_too_small_for_an_end_takes_a_middle_layer),
        cmocka_unit_test(test_joining_node_takes_the_scarcest_layers),
        cmocka_unit_test(test_range_grows_toward_the_scarcer_neighbour_ties_to_lower),
        cmocka_unit_test(test_held_range_no_longer_valid_is_reassigned),
        cmocka_unit_test(test_input_order_does_not_change_the_assignment),
        cmocka_unit_test(test_bad_input_is_refused),
        cmocka_unit_test(test_scarcity_multiplier_in_parts_per_million),
        cmocka_unit_test(test_larger_of_two_same_range_holders_is_surplus_and_moves),
        cmocka_unit_test(test_no_range_is_surplus_once_every_layer_has_its_target),
        cmocka_unit_test(test_surplus_counts_the_target_of_smaller_holders),
        cmocka_unit_test(test_empty_range_is_never_surplus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
