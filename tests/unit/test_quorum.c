/*
 * test_quorum.c: quorum planning over hand-built pools (cover, tiers, latency, order), then the
 * core on a hand-driven clock: propose, accept, refuse (every reason), time out, renew or end the
 * session, and the members' heartbeats from degraded to stale to replaced or dissolved.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "neuroshard/quorum.h"
#include "support/testutil.h"

#define T0_MS  1800000000000ull
#define LAYERS 8
#define MIN_MS (60ull * 1000)

enum { A = 1, B = 2, C = 3, D = 4, E = 5, F = 6, G = 7, Z = 99 }; /* node tags */

static void id_of(uint8_t id[NS_ID_BYTES], uint8_t tag)
{
    memset(id, 0, NS_ID_BYTES);
    id[0] = tag;
}

static ns_quorum_candidate cand(uint8_t tag, ns_tier tier, uint32_t first, uint32_t last,
                                uint32_t latency_ms)
{
    ns_quorum_candidate c = {.latency_ms = latency_ms};
    id_of(c.node.id, tag);
    c.node.memory_mb = 4096;
    c.node.tier = tier;
    c.node.layer_first = first;
    c.node.layer_last = last;
    return c;
}

static void assert_member(const ns_quorum_member *m, uint8_t tag, uint32_t first, uint32_t last)
{
    assert_int_equal(m->id[0], tag);
    assert_int_equal(m->layer_first, first);
    assert_int_equal(m->layer_last, last);
}

/* ---- planning ----------------------------------------------------------------------------- */

static void test_plan_covers_the_layers_with_the_cheapest_members(void **state)
{
    (void)state;
    ns_quorum_candidate pool[] = {cand(A, NS_TIER_T2, 0, 4, 10), cand(B, NS_TIER_T2, 3, 8, 10),
                                  cand(C, NS_TIER_T2, 0, 8, 50), cand(D, NS_TIER_T5, 0, 8, 1)};
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pool, 4, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 2);
    assert_member(&p.members[0], A, 0, 4); /* initiator: embedding */
    assert_member(&p.members[1], B, 4, 8); /* finisher: head; runs from where A stops */
    assert_int_equal(p.latency_ms_sum, 20);
    assert_int_equal(p.layers, LAYERS);
    assert_int_equal(p.session_start_ms, T0_MS);

    uint8_t buf[2 * NS_ID_BYTES + 8], want[NS_SHA256_BYTES];
    id_of(buf, A);
    id_of(buf + NS_ID_BYTES, B);
    for (int i = 0; i < 8; i++)
        buf[2 * NS_ID_BYTES + i] = (uint8_t)(T0_MS >> (56 - 8 * i));
    ns_sha256(want, buf, sizeof buf);
    assert_memory_equal(p.id, want, NS_SHA256_BYTES);
}

static void test_plan_without_full_cover_is_enoent(void **state)
{
    (void)state;
    ns_quorum_candidate pool[] = {cand(A, NS_TIER_T2, 0, 4, 10), cand(B, NS_TIER_T2, 5, 8, 10),
                                  cand(C, NS_TIER_T5, 4, 5, 10),  /* T5 never pipelines */
                                  cand(D, NS_TIER_T2, 4, 9, 10)}; /* past the last layer */
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pool, 4, LAYERS, 0, T0_MS, &p), NS_ENOENT);
    assert_int_equal(ns_quorum_plan(NULL, 0, LAYERS, 0, T0_MS, &p), NS_ENOENT);
}

static void test_plan_keeps_tiers_within_two_adjacent(void **state)
{
    (void)state;
    ns_quorum_candidate pool[] = {cand(A, NS_TIER_T1, 0, 4, 1), cand(B, NS_TIER_T3, 4, 8, 1),
                                  cand(C, NS_TIER_T2, 4, 8, 30)};
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pool, 2, LAYERS, 0, T0_MS, &p), NS_ENOENT); /* T1 with T3 */
    assert_int_equal(ns_quorum_plan(pool, 3, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 2);
    assert_member(&p.members[0], A, 0, 4);
    assert_member(&p.members[1], C, 4, 8); /* slower, but T1-T2 */

    ns_tier ok[] = {NS_TIER_T3, NS_TIER_T4, NS_TIER_T3}, wide[] = {NS_TIER_T2, NS_TIER_T4},
            slow[] = {NS_TIER_T5};
    assert_true(ns_quorum_tiers_compatible(ok, 3));
    assert_false(ns_quorum_tiers_compatible(wide, 2));
    assert_false(ns_quorum_tiers_compatible(slow, 1));
}

static void test_plan_prefers_the_lowest_latency_sum(void **state)
{
    (void)state;
    /* T1-T2 costs 1 + 30; T3 alone costs 5 + 1; one T2 node holding everything costs 4. */
    ns_quorum_candidate pool[] = {cand(A, NS_TIER_T1, 0, 4, 1), cand(C, NS_TIER_T2, 4, 8, 30),
                                  cand(E, NS_TIER_T3, 0, 4, 5), cand(B, NS_TIER_T3, 4, 8, 1),
                                  cand(F, NS_TIER_T2, 0, 8, 4)};
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pool, 4, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 2);
    assert_member(&p.members[0], E, 0, 4);
    assert_member(&p.members[1], B, 4, 8);
    assert_int_equal(p.latency_ms_sum, 6);
    assert_int_equal(ns_quorum_plan(pool, 5, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 1); /* one node: initiator and finisher */
    assert_member(&p.members[0], F, 0, 8);
}

/* Pool mode: every node plans without latencies and the shared plan's smallest member proposes;
 * it then takes, among itself and the larger ids, the holders nearest to it. */
static void test_plan_near_is_the_shared_proposers_with_its_latencies(void **state)
{
    (void)state;
    /* shared plan: B holds 0..4 (before D by id), A 4..8 (before C): {B, A}, proposed by A.
     * A measured B at 40 ms, D at 2, C at 50: it proposes D and itself. */
    ns_quorum_candidate pool[] = {cand(A, NS_TIER_T1, 4, 8, 0), cand(B, NS_TIER_T1, 0, 4, 40),
                                  cand(C, NS_TIER_T1, 4, 8, 50), cand(D, NS_TIER_T1, 0, 4, 2)};
    ns_quorum_proposal p;
    bool proposes = false;
    assert_int_equal(ns_quorum_plan(pool, 4, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_member(&p.members[0], D, 0, 4); /* the latencies alone would say so too */
    uint8_t self[NS_ID_BYTES];
    id_of(self, A);
    assert_int_equal(ns_quorum_plan_near(pool, 4, self, LAYERS, 0, T0_MS, &p, &proposes), NS_OK);
    assert_true(proposes);
    assert_int_equal(p.member_count, 2);
    assert_member(&p.members[0], D, 0, 4);
    assert_member(&p.members[1], A, 4, 8);
    /* every other node sees A propose: B, C and D do not */
    for (uint8_t tag = B; tag <= D; tag++) {
        id_of(self, tag);
        assert_int_equal(ns_quorum_plan_near(pool, 4, self, LAYERS, 0, T0_MS, &p, &proposes),
                         NS_OK);
        assert_false(proposes);
        assert_member(&p.members[0], B, 0, 4); /* the shared plan */
        assert_member(&p.members[1], A, 4, 8);
    }
    /* the same from any order of the announcements */
    ns_quorum_candidate shuffled[] = {pool[3], pool[1], pool[0], pool[2]};
    id_of(self, A);
    assert_int_equal(ns_quorum_plan_near(shuffled, 4, self, LAYERS, 0, T0_MS, &p, &proposes),
                     NS_OK);
    assert_true(proposes);
    assert_member(&p.members[0], D, 0, 4);
    /* no cover at all */
    assert_int_equal(ns_quorum_plan_near(pool, 1, self, LAYERS, 0, T0_MS, &p, &proposes),
                     NS_ENOENT);
    assert_false(proposes);
}

/* The proposer never takes a smaller id than its own, even a nearer one: its peers expect the
 * plan's smallest member to propose. */
static void test_plan_near_keeps_the_proposer_the_smallest(void **state)
{
    (void)state;
    /* shared plan: {D 0..4, B 4..8} (two members beat A + C + B), proposed by B. B measured A
     * and C at 1 ms, D at 50: with every id it would pick {A, C, B}, which A would have to
     * propose; it keeps to ids from its own up: {D, B}. */
    ns_quorum_candidate pool[] = {cand(A, NS_TIER_T1, 0, 2, 1), cand(B, NS_TIER_T1, 4, 8, 0),
                                  cand(C, NS_TIER_T1, 2, 4, 1), cand(D, NS_TIER_T1, 0, 4, 50)};
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pool, 4, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 3);
    assert_member(&p.members[0], A, 0, 2);
    bool proposes = false;
    uint8_t self[NS_ID_BYTES];
    id_of(self, B);
    assert_int_equal(ns_quorum_plan_near(pool, 4, self, LAYERS, 0, T0_MS, &p, &proposes), NS_OK);
    assert_true(proposes);
    assert_int_equal(p.member_count, 2);
    assert_member(&p.members[0], D, 0, 4);
    assert_member(&p.members[1], B, 4, 8);
    id_of(self, A);
    assert_int_equal(ns_quorum_plan_near(pool, 4, self, LAYERS, 0, T0_MS, &p, &proposes), NS_OK);
    assert_false(proposes);
}

/* The members are chosen as above; where neighbours' holdings overlap, the boundary goes where
 * the slowest stage is fastest: by layer counts for equal nodes, by speed for unequal ones, with
 * the head at the finisher. */
static void test_plan_splits_the_layers_by_speed(void **state)
{
    (void)state;
    ns_quorum_proposal p;
    /* equal T2 nodes (22.361 ms a layer, the tier's nominal): four layers each */
    ns_quorum_candidate even[] = {cand(A, NS_TIER_T2, 0, 6, 1), cand(B, NS_TIER_T2, 2, 8, 1)};
    assert_int_equal(ns_quorum_plan(even, 2, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 2);
    assert_member(&p.members[0], A, 0, 4);
    assert_member(&p.members[1], B, 4, 8);
    assert_int_equal(p.slowest_stage_us, 4 * 22361);
    /* A is three times as fast as B: 6 x 10 ms against 2 x 30 ms */
    ns_quorum_candidate uneven[] = {cand(A, NS_TIER_T2, 0, 7, 1), cand(B, NS_TIER_T2, 1, 8, 1)};
    uneven[0].layer_us = 10000;
    uneven[1].layer_us = 30000;
    assert_int_equal(ns_quorum_plan(uneven, 2, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_member(&p.members[0], A, 0, 6);
    assert_member(&p.members[1], B, 6, 8);
    assert_int_equal(p.slowest_stage_us, 60000);
    /* with a head as costly as a layer, B runs one layer and the head: 7 x 10 against 2 x 30 */
    assert_int_equal(ns_quorum_plan(uneven, 2, LAYERS, 1000, T0_MS, &p), NS_OK);
    assert_member(&p.members[0], A, 0, 7);
    assert_member(&p.members[1], B, 7, 8);
    assert_int_equal(p.slowest_stage_us, 70000);
    /* three equal nodes holding 0..3, 3..7 and 5..8 of an 8-layer model whose head costs 4/3 of a
     * layer (test_pool.sh's pool): 3, 3 and 2 layers + head, not 3, 4 and 1 + head */
    ns_quorum_candidate three[] = {cand(A, NS_TIER_T3, 0, 3, 0), cand(B, NS_TIER_T3, 3, 7, 0),
                                   cand(C, NS_TIER_T3, 5, 8, 0)};
    assert_int_equal(ns_quorum_plan(three, 3, LAYERS, 1333, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 3);
    assert_member(&p.members[0], A, 0, 3);
    assert_member(&p.members[1], B, 3, 6);
    assert_member(&p.members[2], C, 6, 8);
    assert_int_equal(p.slowest_stage_us, 2 * 100000 + 133300);
    /* no overlap: nothing to move */
    ns_quorum_candidate fixed[] = {cand(A, NS_TIER_T2, 0, 2, 0), cand(B, NS_TIER_T2, 2, 8, 0)};
    assert_int_equal(ns_quorum_plan(fixed, 2, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_member(&p.members[0], A, 0, 2);
    assert_member(&p.members[1], B, 2, 8);
    /* a head cost beyond a thousand layers is refused */
    assert_int_equal(ns_quorum_plan(fixed, 2, LAYERS, 1000001, T0_MS, &p), NS_EINVAL);
}

static void test_plan_ties_go_to_the_lowest_id(void **state)
{
    (void)state;
    ns_quorum_candidate pool[] = {cand(G, NS_TIER_T2, 0, 8, 7), cand(C, NS_TIER_T2, 0, 8, 7),
                                  cand(E, NS_TIER_T2, 0, 8, 7)};
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pool, 3, LAYERS, 0, T0_MS, &p), NS_OK);
    assert_int_equal(p.member_count, 1);
    assert_member(&p.members[0], C, 0, 8);
}

static void test_plan_is_the_same_for_any_input_order(void **state)
{
    (void)state;
    ns_quorum_candidate pool[8] = {cand(A, NS_TIER_T2, 0, 3, 9), cand(B, NS_TIER_T2, 0, 2, 4),
                                   cand(C, NS_TIER_T3, 2, 6, 4), cand(D, NS_TIER_T2, 3, 8, 9),
                                   cand(E, NS_TIER_T3, 6, 8, 4), cand(F, NS_TIER_T2, 2, 6, 5),
                                   cand(G, NS_TIER_T3, 0, 2, 5), cand(Z, NS_TIER_T2, 6, 8, 4)};
    ns_quorum_proposal want, got;
    assert_int_equal(ns_quorum_plan(pool, 8, LAYERS, 0, T0_MS, &want), NS_OK);
    const size_t perms[3][8] = {
        {7, 6, 5, 4, 3, 2, 1, 0}, {2, 3, 4, 5, 6, 7, 0, 1}, {1, 3, 5, 7, 0, 2, 4, 6}};
    for (int k = 0; k < 3; k++) {
        ns_quorum_candidate shuffled[8];
        for (int i = 0; i < 8; i++)
            shuffled[i] = pool[perms[k][i]];
        assert_int_equal(ns_quorum_plan(shuffled, 8, LAYERS, 0, T0_MS, &got), NS_OK);
        assert_memory_equal(&got, &want, sizeof want);
    }
}

static void test_plan_refuses_bad_input(void **state)
{
    (void)state;
    static ns_quorum_candidate many[NS_QUORUM_CANDIDATES_MAX + 1];
    ns_quorum_candidate twice[] = {cand(A, NS_TIER_T2, 0, 8, 1), cand(A, NS_TIER_T2, 0, 4, 1)};
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(twice, 1, 0, 0, T0_MS, &p), NS_EINVAL);
    assert_int_equal(ns_quorum_plan(twice, 1, NS_POOL_LAYERS_MAX + 1, 0, T0_MS, &p), NS_EINVAL);
    assert_int_equal(ns_quorum_plan(NULL, 1, LAYERS, 0, T0_MS, &p), NS_EINVAL);
    assert_int_equal(ns_quorum_plan(twice, 2, LAYERS, 0, T0_MS, &p), NS_EINVAL);
    assert_int_equal(ns_quorum_plan(many, NS_QUORUM_CANDIDATES_MAX + 1, LAYERS, 0, T0_MS, &p),
                     NS_ETOOBIG);
}

/* ---- the core ----------------------------------------------------------------------------- */

/* What the callbacks saw. */
typedef struct record {
    int proposes, formed, failed, heartbeats, degraded, healthy, replaced, renewed, dissolved;
    uint8_t proposed_to;
    const char *reason;
    ns_quorum_member stale, by;
    uint64_t renewed_until_ms;
} record;

static void on_propose(void *arg, const uint8_t to[NS_ID_BYTES], const ns_quorum_proposal *p)
{
    record *r = arg;
    (void)p;
    r->proposes++;
    r->proposed_to = to[0];
}

static void on_formed(void *arg, const ns_quorum_proposal *p)
{
    (void)p;
    ((record *)arg)->formed++;
}

static void on_failed(void *arg, const ns_quorum_proposal *p, const char *reason)
{
    (void)p;
    ((record *)arg)->failed++;
    ((record *)arg)->reason = reason;
}

static void on_heartbeat(void *arg, const ns_quorum_proposal *p)
{
    (void)p;
    ((record *)arg)->heartbeats++;
}

static void on_health(void *arg, const ns_quorum_member *m, ns_quorum_health health)
{
    record *r = arg;
    (void)m;
    if (health == NS_QUORUM_DEGRADED)
        r->degraded++;
    else
        r->healthy++;
}

static void on_replaced(void *arg, const ns_quorum_member *stale, const ns_quorum_member *by,
                        const ns_quorum_proposal *p)
{
    record *r = arg;
    (void)p;
    r->replaced++;
    r->stale = *stale;
    r->by = *by;
}

static void on_renewed(void *arg, const ns_quorum_proposal *p, uint64_t session_end_ms)
{
    (void)p;
    ((record *)arg)->renewed++;
    ((record *)arg)->renewed_until_ms = session_end_ms;
}

static void on_dissolved(void *arg, const ns_quorum_proposal *p, const char *reason)
{
    (void)p;
    ((record *)arg)->dissolved++;
    ((record *)arg)->reason = reason;
}

typedef struct fixture {
    ns_fake_env fake;
    record rec;
    ns_quorum *q;
} fixture;

/* A core for node `self` over pool, on a fresh fake clock at T0_MS. */
static void start(fixture *f, uint8_t self, const ns_quorum_candidate *pool, size_t n)
{
    memset(&f->rec, 0, sizeof f->rec);
    ns_fake_env_init(&f->fake, T0_MS, 1);
    ns_quorum_config config = {.layers = LAYERS,
                               .arg = &f->rec,
                               .propose = on_propose,
                               .formed = on_formed,
                               .failed = on_failed,
                               .heartbeat = on_heartbeat,
                               .health = on_health,
                               .replaced = on_replaced,
                               .renewed = on_renewed,
                               .dissolved = on_dissolved};
    id_of(config.self_id, self);
    assert_int_equal(ns_quorum_new(&f->q, &config, &f->fake.env), NS_OK);
    assert_int_equal(ns_quorum_set_pool(f->q, pool, n), NS_OK);
}

static void finish(fixture *f)
{
    ns_quorum_free(f->q);
    assert_int_equal(f->fake.timer_count, 0); /* free cancelled every timer */
}

#define CANDIDATE(tag, t, first, last, latency)                                                    \
    {                                                                                              \
        .node = {.id = {tag},                                                                      \
                 .memory_mb = 4096,                                                                \
                 .tier = t,                                                                        \
                 .layer_first = first,                                                             \
                 .layer_last = last},                                                              \
        .latency_ms = latency                                                                      \
    }

/* A (self, T2) holds 0..4, B (T2) 4..8; C and D also hold 4..8, G holds 2..8. */
static const ns_quorum_candidate pair_pool[] = {
    CANDIDATE(A, NS_TIER_T2, 0, 4, 0),
    CANDIDATE(B, NS_TIER_T2, 4, 8, 10),
    CANDIDATE(C, NS_TIER_T2, 4, 8, 20),
    CANDIDATE(D, NS_TIER_T4, 4, 8, 1), /* fast, but T4 does not pipeline with T2 */
    CANDIDATE(G, NS_TIER_T3, 2, 8, 25),
};
#define PAIR_POOL_N (sizeof pair_pool / sizeof pair_pool[0])

/* Node A proposes A + B and B accepts. */
static void form_pair(fixture *f, size_t pool_count)
{
    start(f, A, pair_pool, pool_count);
    uint8_t b[NS_ID_BYTES];
    id_of(b, B);
    assert_int_equal(ns_quorum_propose(f->q), NS_OK);
    ns_quorum_on_answer(f->q, b, true);
    assert_int_equal(ns_quorum_get_state(f->q), NS_QUORUM_ACTIVE);
}

static void test_quorum_forms_when_every_member_accepts(void **state)
{
    (void)state;
    fixture f;
    start(&f, A, pair_pool, 2);
    uint8_t b[NS_ID_BYTES], c[NS_ID_BYTES];
    id_of(b, B);
    id_of(c, C);
    assert_int_equal(ns_quorum_propose(f.q), NS_OK);
    assert_int_equal(f.rec.proposes, 1); /* to B only; A accepts its own plan */
    assert_int_equal(f.rec.proposed_to, B);
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_PROPOSING);
    assert_int_equal(ns_quorum_propose(f.q), NS_EEXIST);
    ns_quorum_on_answer(f.q, c, true); /* not a member */
    assert_int_equal(ns_quorum_ignored(f.q), 1);
    ns_quorum_on_answer(f.q, b, true);
    assert_int_equal(f.rec.formed, 1);
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_ACTIVE);
    assert_int_equal(ns_quorum_session_end_ms(f.q), T0_MS + NS_QUORUM_SESSION_MS);
    ns_quorum_on_answer(f.q, b, true); /* late duplicate */
    assert_int_equal(ns_quorum_ignored(f.q), 2);
    finish(&f);
}

static void test_refusal_fails_formation(void **state)
{
    (void)state;
    fixture f;
    start(&f, A, pair_pool, 2);
    uint8_t b[NS_ID_BYTES];
    id_of(b, B);
    assert_int_equal(ns_quorum_propose(f.q), NS_OK);
    ns_quorum_on_answer(f.q, b, false);
    assert_int_equal(f.rec.failed, 1);
    assert_string_equal(f.rec.reason, "refused by a member");
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_IDLE);
    assert_null(ns_quorum_current(f.q));
    finish(&f);
}

static void test_silence_fails_formation_at_the_timeout(void **state)
{
    (void)state;
    fixture f;
    start(&f, A, pair_pool, 2);
    assert_int_equal(ns_quorum_propose(f.q), NS_OK);
    ns_fake_env_advance(&f.fake, NS_QUORUM_PROPOSE_TIMEOUT_MS - 1);
    assert_int_equal(f.rec.failed, 0);
    ns_fake_env_advance(&f.fake, 1);
    assert_int_equal(f.rec.failed, 1);
    assert_string_equal(f.rec.reason, "answers timed out");
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_IDLE);
    finish(&f);
}

static void test_propose_without_cover_is_enoent_and_calls_nothing(void **state)
{
    (void)state;
    fixture f;
    start(&f, A, pair_pool, 1);
    assert_int_equal(ns_quorum_propose(f.q), NS_ENOENT);
    assert_int_equal(f.rec.proposes + f.rec.failed + f.rec.formed, 0);
    finish(&f);
}

static void test_solo_node_forms_its_quorum_at_once(void **state)
{
    (void)state;
    fixture f;
    ns_quorum_candidate solo = cand(A, NS_TIER_T1, 0, LAYERS, 0);
    start(&f, A, &solo, 1);
    assert_int_equal(ns_quorum_propose(f.q), NS_OK);
    assert_int_equal(f.rec.proposes, 0);
    assert_int_equal(f.rec.formed, 1);
    assert_int_equal(ns_quorum_current(f.q)->member_count, 1);
    finish(&f);
}

/* The plan A + B as A proposes it. */
static ns_quorum_proposal plan_from_a(void)
{
    ns_quorum_proposal p;
    assert_int_equal(ns_quorum_plan(pair_pool, 2, LAYERS, 0, T0_MS, &p), NS_OK);
    id_of(p.proposer, A);
    return p;
}

static void test_member_accepts_and_forms_on_the_proposers_word(void **state)
{
    (void)state;
    fixture f;
    start(&f, B, pair_pool, PAIR_POOL_N);
    ns_quorum_proposal p = plan_from_a();
    p.members[1].tier = NS_TIER_T4; /* a false claim; the id does not cover it */
    p.members[1].latency_ms = 999;
    ns_quorum_refusal why;
    uint8_t a[NS_ID_BYTES], c[NS_ID_BYTES];
    id_of(a, A);
    id_of(c, C);
    assert_int_equal(ns_quorum_on_proposal(f.q, a, &p, &why), NS_OK);
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_JOINING);
    const ns_quorum_proposal *joined = ns_quorum_current(f.q);
    assert_int_equal(joined->members[1].tier, NS_TIER_T2); /* as B's own pool has it */
    assert_int_equal(joined->members[1].latency_ms, 10);
    assert_int_equal(joined->latency_ms_sum, 10);
    ns_quorum_on_formed(f.q, c, p.id); /* not the proposer */
    assert_int_equal(ns_quorum_ignored(f.q), 1);
    ns_quorum_on_formed(f.q, a, p.id);
    assert_int_equal(f.rec.formed, 1);
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_ACTIVE);
    finish(&f);
}

static void test_member_gives_up_when_never_formed(void **state)
{
    (void)state;
    fixture f;
    start(&f, B, pair_pool, PAIR_POOL_N);
    ns_quorum_proposal p = plan_from_a();
    ns_quorum_refusal why;
    uint8_t a[NS_ID_BYTES];
    id_of(a, A);
    assert_int_equal(ns_quorum_on_proposal(f.q, a, &p, &why), NS_OK);
    ns_fake_env_advance(&f.fake, NS_QUORUM_JOIN_TIMEOUT_MS);
    assert_int_equal(f.rec.failed, 1);
    assert_string_equal(f.rec.reason, "not formed in time");
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_IDLE);
    finish(&f);
}

/* Offers p from `from` to node B and expects the refusal `want` with error err, counted once. */
static void expect_refusal(uint8_t from_tag, const ns_quorum_proposal *p, ns_quorum_refusal want,
                           int err)
{
    fixture f;
    start(&f, B, pair_pool, PAIR_POOL_N);
    uint8_t from[NS_ID_BYTES];
    id_of(from, from_tag);
    ns_quorum_refusal why;
    assert_int_equal(ns_quorum_on_proposal(f.q, from, p, &why), err);
    assert_int_equal(why, want);
    assert_non_null(ns_quorum_refusal_text(why));
    for (int r = 0; r < NS_QUORUM_REFUSE_COUNT_; r++)
        assert_int_equal(ns_quorum_refused(f.q, (ns_quorum_refusal)r), r == (int)want ? 1 : 0);
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_IDLE);
    finish(&f);
}

static void test_refuses_a_sender_outside_the_pool_or_not_the_proposer(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    id_of(p.proposer, Z);
    expect_refusal(Z, &p, NS_QUORUM_REFUSE_NOT_IN_POOL, NS_EPERM);
    p = plan_from_a();
    expect_refusal(C, &p, NS_QUORUM_REFUSE_NOT_PROPOSER, NS_EPERM);
}

static void test_refuses_a_malformed_proposal(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    p.layers = LAYERS - 1;
    expect_refusal(A, &p, NS_QUORUM_REFUSE_MALFORMED, NS_EINVAL);
    p = plan_from_a();
    p.member_count = 0;
    expect_refusal(A, &p, NS_QUORUM_REFUSE_MALFORMED, NS_EINVAL);
    p = plan_from_a();
    p.member_count = NS_QUORUM_MEMBERS_MAX + 1;
    expect_refusal(A, &p, NS_QUORUM_REFUSE_MALFORMED, NS_EINVAL);
    p = plan_from_a();
    memcpy(p.members[1].id, p.members[0].id, NS_ID_BYTES); /* one member twice */
    expect_refusal(A, &p, NS_QUORUM_REFUSE_MALFORMED, NS_EINVAL);
}

static void test_refuses_a_plan_that_does_not_cover_the_layers(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    p.members[1].layer_last = LAYERS - 1; /* no head */
    expect_refusal(A, &p, NS_QUORUM_REFUSE_NO_COVER, NS_EINVAL);
    p = plan_from_a();
    p.members[1].layer_first = 5; /* a gap at layer 4 */
    expect_refusal(A, &p, NS_QUORUM_REFUSE_NO_COVER, NS_EINVAL);
}

static void test_refuses_a_member_named_for_layers_it_does_not_hold(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    p.members[0].layer_last = 3; /* B holds 4..8, not 3..8 */
    p.members[1].layer_first = 3;
    expect_refusal(A, &p, NS_QUORUM_REFUSE_NOT_HOLDER, NS_EINVAL);
}

static void test_refuses_incompatible_tiers(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    id_of(p.members[1].id, D);      /* D holds 4..8 but is T4, A is T2 */
    p.members[1].tier = NS_TIER_T2; /* the announcement counts, not the claim */
    ns_quorum_id(&p, p.id);
    expect_refusal(A, &p, NS_QUORUM_REFUSE_TIERS, NS_EINVAL);
}

static void test_refuses_a_wrong_quorum_id(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    p.id[5] ^= 1;
    expect_refusal(A, &p, NS_QUORUM_REFUSE_BAD_ID, NS_EINVAL);
    p = plan_from_a();
    p.session_start_ms++;
    expect_refusal(A, &p, NS_QUORUM_REFUSE_BAD_ID, NS_EINVAL);
}

static void test_refuses_a_plan_without_this_node(void **state)
{
    (void)state;
    ns_quorum_proposal p = plan_from_a();
    id_of(p.members[1].id, C);
    ns_quorum_id(&p, p.id);
    expect_refusal(A, &p, NS_QUORUM_REFUSE_NOT_MEMBER, NS_EINVAL);
}

static void test_refuses_while_in_another_quorum(void **state)
{
    (void)state;
    fixture f;
    start(&f, B, pair_pool, PAIR_POOL_N);
    ns_quorum_proposal p = plan_from_a();
    ns_quorum_refusal why;
    uint8_t a[NS_ID_BYTES];
    id_of(a, A);
    assert_int_equal(ns_quorum_on_proposal(f.q, a, &p, &why), NS_OK);
    assert_int_equal(ns_quorum_on_proposal(f.q, a, &p, &why), NS_EEXIST);
    assert_int_equal(why, NS_QUORUM_REFUSE_IN_QUORUM);
    assert_int_equal(ns_quorum_refused(f.q, NS_QUORUM_REFUSE_IN_QUORUM), 1);
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_JOINING);
    finish(&f);
}

/* ---- the session -------------------------------------------------------------------------- */

static void start_solo(fixture *f)
{
    static const ns_quorum_candidate solo = {
        .node = {.id = {A}, .memory_mb = 4096, .tier = NS_TIER_T1, .layer_last = LAYERS}};
    start(f, A, &solo, 1);
    assert_int_equal(ns_quorum_propose(f->q), NS_OK);
    assert_int_equal(f->rec.formed, 1);
}

#define CHECK_MS (NS_QUORUM_SESSION_MS * 80 / 100)

static void test_session_renews_at_80_percent_with_enough_batches(void **state)
{
    (void)state;
    fixture f;
    start_solo(&f);
    ns_quorum_add_batches(f.q, NS_QUORUM_RENEW_BATCHES_MIN);
    ns_fake_env_advance(&f.fake, CHECK_MS - 1);
    assert_int_equal(f.rec.renewed, 0);
    ns_fake_env_advance(&f.fake, 1);
    assert_int_equal(f.rec.renewed, 1);
    assert_int_equal(f.rec.renewed_until_ms, T0_MS + 2 * NS_QUORUM_SESSION_MS);
    assert_int_equal(ns_quorum_session_end_ms(f.q), T0_MS + 2 * NS_QUORUM_SESSION_MS);
    assert_int_equal(f.rec.heartbeats, CHECK_MS / NS_QUORUM_HEARTBEAT_MS);
    finish(&f);
}

static void test_session_ends_without_enough_batches(void **state)
{
    (void)state;
    fixture f;
    start_solo(&f);
    ns_quorum_add_batches(f.q, NS_QUORUM_RENEW_BATCHES_MIN - 1);
    ns_fake_env_advance(&f.fake, CHECK_MS);
    assert_int_equal(f.rec.renewed + f.rec.dissolved, 0); /* decided, still training */
    ns_fake_env_advance(&f.fake, NS_QUORUM_SESSION_MS - CHECK_MS - 1);
    assert_int_equal(f.rec.dissolved, 0);
    ns_fake_env_advance(&f.fake, 1);
    assert_int_equal(f.rec.dissolved, 1);
    assert_string_equal(f.rec.reason, "too few batches to renew");
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_IDLE);
    finish(&f);
}

static void test_session_lasts_at_most_four_hours(void **state)
{
    (void)state;
    fixture f;
    start_solo(&f);
    for (int hour = 0; hour < 4; hour++) {
        ns_quorum_add_batches(f.q, 5000);
        ns_fake_env_advance(&f.fake, NS_QUORUM_SESSION_MS);
    }
    assert_int_equal(f.rec.renewed, 3);
    assert_int_equal(f.rec.dissolved, 1);
    assert_string_equal(f.rec.reason, "session at its longest");
    finish(&f);
}

static void test_owner_can_dissolve(void **state)
{
    (void)state;
    fixture f;
    start_solo(&f);
    ns_quorum_dissolve(f.q, "shutdown");
    assert_int_equal(f.rec.dissolved, 1);
    assert_string_equal(f.rec.reason, "shutdown");
    ns_quorum_dissolve(f.q, "again"); /* idle: nothing */
    assert_int_equal(f.rec.dissolved, 1);
    assert_int_equal(f.fake.timer_count, 0);
    finish(&f);
}

/* ---- health ------------------------------------------------------------------------------- */

static void test_member_degrades_after_two_missed_heartbeats_and_recovers(void **state)
{
    (void)state;
    fixture f;
    form_pair(&f, 2);
    uint8_t b[NS_ID_BYTES], z[NS_ID_BYTES];
    id_of(b, B);
    id_of(z, Z);
    ns_quorum_health h;
    for (int i = 0; i < 10; i++) { /* beating in time keeps it healthy */
        ns_fake_env_advance(&f.fake, NS_QUORUM_HEARTBEAT_MS);
        ns_quorum_on_heartbeat(f.q, b);
    }
    assert_int_equal(f.rec.heartbeats, 10);
    assert_int_equal(f.rec.degraded, 0);
    ns_fake_env_advance(&f.fake, NS_QUORUM_DEGRADED_MISSED * NS_QUORUM_HEARTBEAT_MS - 1);
    assert_int_equal(f.rec.degraded, 0);
    ns_fake_env_advance(&f.fake, 1);
    assert_int_equal(f.rec.degraded, 1);
    assert_int_equal(ns_quorum_member_health(f.q, b, &h), NS_OK);
    assert_int_equal(h, NS_QUORUM_DEGRADED);
    ns_quorum_on_heartbeat(f.q, b);
    assert_int_equal(f.rec.healthy, 1);
    assert_int_equal(ns_quorum_member_health(f.q, b, &h), NS_OK);
    assert_int_equal(h, NS_QUORUM_HEALTHY);
    ns_quorum_on_heartbeat(f.q, z);
    assert_int_equal(ns_quorum_ignored(f.q), 1);
    assert_int_equal(ns_quorum_member_health(f.q, z, &h), NS_ENOENT);
    finish(&f);
}

static void test_stale_member_is_replaced_by_the_best_compatible_holder(void **state)
{
    (void)state;
    fixture f;
    form_pair(&f, 5);
    uint8_t id[NS_SHA256_BYTES];
    memcpy(id, ns_quorum_current(f.q)->id, sizeof id);
    ns_fake_env_advance(&f.fake, NS_QUORUM_STALE_MISSED * NS_QUORUM_HEARTBEAT_MS - 1);
    assert_int_equal(f.rec.replaced, 0);
    ns_fake_env_advance(&f.fake, 1);
    assert_int_equal(f.rec.degraded, 1);
    assert_int_equal(f.rec.replaced, 1);
    /* C (T2, 20 ms) over D (T4: not with T2) and G (T3, 25 ms). */
    assert_member(&f.rec.stale, B, 4, 8);
    assert_member(&f.rec.by, C, 4, 8);
    const ns_quorum_proposal *p = ns_quorum_current(f.q);
    assert_member(&p->members[1], C, 4, 8);
    assert_int_equal(p->latency_ms_sum, 20);
    assert_memory_equal(p->id, id, sizeof id); /* the session keeps its id */
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_ACTIVE);
    finish(&f);
}

static void test_stale_member_without_replacement_dissolves(void **state)
{
    (void)state;
    fixture f;
    form_pair(&f, 2);
    ns_fake_env_advance(&f.fake, NS_QUORUM_STALE_MISSED * NS_QUORUM_HEARTBEAT_MS);
    assert_int_equal(f.rec.replaced, 0);
    assert_int_equal(f.rec.dissolved, 1);
    assert_string_equal(f.rec.reason, "stale member without replacement");
    assert_int_equal(ns_quorum_get_state(f.q), NS_QUORUM_IDLE);
    finish(&f);
}

static void test_pool_refuses_too_many_or_twice_the_same_id(void **state)
{
    (void)state;
    static ns_quorum_candidate many[NS_QUORUM_CANDIDATES_MAX + 1];
    fixture f;
    start(&f, A, pair_pool, PAIR_POOL_N);
    ns_quorum_candidate twice[] = {cand(A, NS_TIER_T2, 0, 8, 1), cand(A, NS_TIER_T2, 0, 4, 1)};
    assert_int_equal(ns_quorum_set_pool(f.q, twice, 2), NS_EINVAL);
    assert_int_equal(ns_quorum_set_pool(f.q, many, NS_QUORUM_CANDIDATES_MAX + 1), NS_ETOOBIG);
    assert_int_equal(ns_quorum_propose(f.q), NS_OK); /* the old pool is still there */
    finish(&f);
}

int main(void)
{
    ns_log_set_level(NS_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_covers_the_layers_with_the_cheapest_members),
        cmocka_unit_test(test_plan_without_full_cover_is_enoent),
        cmocka_unit_test(test_plan_keeps_tiers_within_two_adjacent),
        cmocka_unit_test(test_plan_prefers_the_lowest_latency_sum),
        cmocka_unit_test(test_plan_near_is_the_shared_proposers_with_its_latencies),
        cmocka_unit_test(test_plan_near_keeps_the_proposer_the_smallest),
        cmocka_unit_test(test_plan_splits_the_layers_by_speed),
        cmocka_unit_test(test_plan_ties_go_to_the_lowest_id),
        cmocka_unit_test(test_plan_is_the_same_for_any_input_order),
        cmocka_unit_test(test_plan_refuses_bad_input),
        cmocka_unit_test(test_quorum_forms_when_every_member_accepts),
        cmocka_unit_test(test_refusal_fails_formation),
        cmocka_unit_test(test_silence_fails_formation_at_the_timeout),
        cmocka_unit_test(test_propose_without_cover_is_enoent_and_calls_nothing),
        cmocka_unit_test(test_solo_node_forms_its_quorum_at_once),
        cmocka_unit_test(test_member_accepts_and_forms_on_the_proposers_word),
        cmocka_unit_test(test_member_gives_up_when_never_formed),
        cmocka_unit_test(test_refuses_a_sender_outside_the_pool_or_not_the_proposer),
        cmocka_unit_test(test_refuses_a_malformed_proposal),
        cmocka_unit_test(test_refuses_a_plan_that_does_not_cover_the_layers),
        cmocka_unit_test(test_refuses_a_member_named_for_layers_it_does_not_hold),
        cmocka_unit_test(test_refuses_incompatible_tiers),
        cmocka_unit_test(test_refuses_a_wrong_quorum_id),
        cmocka_unit_test(test_refuses_a_plan_without_this_node),
        cmocka_unit_test(test_refuses_while_in_another_quorum),
        cmocka_unit_test(test_session_renews_at_80_percent_with_enough_batches),
        cmocka_unit_test(test_session_ends_without_enough_batches),
        cmocka_unit_test(test_session_lasts_at_most_four_hours),
        cmocka_unit_test(test_owner_can_dissolve),
        cmocka_unit_test(test_member_degrades_after_two_missed_heartbeats_and_recovers),
        cmocka_unit_test(test_stale_member_is_replaced_by_the_best_compatible_holder),
        cmocka_unit_test(test_stale_member_without_replacement_dissolves),
        cmocka_unit_test(test_pool_refuses_too_many_or_twice_the_same_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
