/*
 * test_ponw.c: Proofs of Neural Work: encoding, structural rules, signing, every verdict of the
 * validator, and the rewards of S10 against hand-computed values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "neuroshard/ponw.h"
#include "ponw.pb-c.h"

#define NANO  1000000000LL
#define T0_MS 1800000000000ull /* a fixed "now" */

static void key_of(ns_key *key, uint8_t seed_byte)
{
    uint8_t sk[NS_SECKEY_BYTES];
    memset(sk, seed_byte, sizeof sk);
    assert_int_equal(ns_key_from_seckey(key, sk), NS_OK);
}

/* A valid training proof for the period (end - 60 s, end]. */
static ns_proof training_proof(uint64_t end_ms, uint64_t sequence)
{
    ns_proof p = {.type = NS_PROOF_TRAINING,
                  .nonce = 0x1234 + sequence,
                  .sequence = sequence,
                  .timestamp_ms = end_ms,
                  .period_start_ms = end_ms - 60000,
                  .uptime_s = 60,
                  .tokens = 8 * 128 * 50,
                  .batches = 50,
                  .layers = 8,
                  .has_embed = true,
                  .has_head = true,
                  .tier = 3,
                  .has_training = true};
    ns_training_commit *c = &p.training;
    memset(c->model_hash_before, 0xa1, NS_SHA256_BYTES);
    memset(c->model_hash_after, 0xa2, NS_SHA256_BYTES);
    memset(c->delta_hash, 0xa3, NS_SHA256_BYTES);
    c->shard = 4;
    c->batch_first = 1000;
    c->batch_count = 50;
    c->loss_before = 6.5f;
    c->loss_after = 6.25f;
    c->micro_batches = 2;
    for (uint32_t i = 0; i < c->micro_batches; i++) {
        memset(c->activation_in[i], 0xb1 + (int)i, NS_SHA256_BYTES);
        memset(c->activation_out[i], 0xc1 + (int)i, NS_SHA256_BYTES);
    }
    c->layer_first = 0;
    c->layer_last = 8;
    c->exec_mode = 1;
    return p;
}

static ns_proof uptime_proof(uint64_t end_ms, uint64_t sequence)
{
    return (ns_proof){.type = NS_PROOF_UPTIME,
                      .nonce = sequence,
                      .sequence = sequence,
                      .timestamp_ms = end_ms,
                      .period_start_ms = end_ms - 60000,
                      .uptime_s = 60,
                      .tier = 2};
}

static uint8_t *sign(const ns_key *key, ns_proof *p, size_t *len)
{
    uint8_t *env;
    assert_int_equal(ns_proof_sign(key, p, &env, len), NS_OK);
    return env;
}

/* ---- encoding ----------------------------------------------------------------------------- */

static void test_proof_body_round_trips_and_only_canonical_bytes_decode(void **state)
{
    (void)state;
    ns_proof p = training_proof(T0_MS, 1), q = {0};
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_proof_encode(&p, &buf, &len), NS_OK);
    q.timestamp_ms = p.timestamp_ms; /* envelope fields are the caller's */
    q.sequence = p.sequence;
    assert_int_equal(ns_proof_decode(buf, len, &q), NS_OK);
    assert_memory_equal(&q.training, &p.training, sizeof p.training);
    assert_int_equal(q.tokens, p.tokens);
    assert_int_equal(q.batches, 50);
    assert_true(q.has_embed && q.has_head && q.has_training);
    assert_null(ns_proof_check(&q));

    /* an unknown field appended */
    uint8_t *longer = malloc(len + 3);
    memcpy(longer, buf, len);
    longer[len] = (uint8_t)(99 << 3); /* field 99, varint */
    longer[len + 1] = 0x01;
    assert_int_equal(ns_proof_decode(longer, len + 2, &q), NS_EPARSE);
    /* a zero written out: field 4 (uptime_s) = 0 is not canonical proto3 */
    Neuroshard__Proof m = NEUROSHARD__PROOF__INIT;
    m.proof_type = NS_PROOF_UPTIME;
    m.tier = 2;
    uint8_t small[64];
    size_t n = neuroshard__proof__pack(&m, small);
    uint8_t padded[80];
    memcpy(padded, small, n);
    padded[n] = (uint8_t)(4 << 3);
    padded[n + 1] = 0x00;
    assert_int_equal(ns_proof_decode(small, n, &q), NS_OK);
    assert_int_equal(ns_proof_decode(padded, n + 2, &q), NS_EPARSE);
    /* truncated: refused, or (cut at a field boundary) a different proof; the signature of
     * the envelope is what pins the whole body */
    size_t refused = 0;
    for (size_t cut = 1; cut < len; cut++) {
        ns_proof t = p;
        if (ns_proof_decode(buf, len - cut, &t) != NS_OK)
            refused++;
        else
            assert_true(memcmp(&t.training, &p.training, sizeof t.training) != 0 ||
                        t.tier != p.tier || t.in_quorum != p.in_quorum);
    }
    assert_true(refused > len / 2);
    /* oversize */
    uint8_t *huge = calloc(1, NS_PONW_BODY_BYTES_MAX + 1);
    assert_int_equal(ns_proof_decode(huge, NS_PONW_BODY_BYTES_MAX + 1, &q), NS_ETOOBIG);
    free(huge);
    free(longer);
    free(buf);
}

static void test_a_hash_of_the_wrong_length_is_refused(void **state)
{
    (void)state;
    Neuroshard__Proof m = NEUROSHARD__PROOF__INIT;
    Neuroshard__TrainingCommit t = NEUROSHARD__TRAINING_COMMIT__INIT;
    uint8_t h[33] = {0};
    m.proof_type = NS_PROOF_TRAINING;
    m.training = &t;
    t.model_hash_before = (ProtobufCBinaryData){.len = 31, .data = h};
    t.model_hash_after = (ProtobufCBinaryData){.len = 32, .data = h};
    t.delta_hash = (ProtobufCBinaryData){.len = 32, .data = h};
    uint8_t buf[256];
    size_t n = neuroshard__proof__pack(&m, buf);
    ns_proof q = {0};
    assert_int_equal(ns_proof_decode(buf, n, &q), NS_EPARSE);
    t.model_hash_before.len = 32;
    n = neuroshard__proof__pack(&m, buf);
    assert_int_equal(ns_proof_decode(buf, n, &q), NS_OK);
}

/* Found by fuzz_proof: a training commit holding one empty activation hash made the canonical
 * check compare against a NULL pointer (undefined behaviour). It must simply be refused. */
static void test_an_empty_hash_inside_the_commit_is_refused(void **state)
{
    (void)state;
    const uint8_t body[] = {0x6a, 0x02, 0x4a, 0x00};
    ns_proof q = {0};
    assert_int_equal(ns_proof_decode(body, sizeof body, &q), NS_EPARSE);
}

static void test_structural_rules_each_have_a_reason(void **state)
{
    (void)state;
    ns_proof good = training_proof(T0_MS, 1);
    assert_null(ns_proof_check(&good));
    ns_proof p;
#define BROKEN(stmt, fragment)                                                                     \
    do {                                                                                           \
        p = good;                                                                                  \
        stmt;                                                                                      \
        const char *why = ns_proof_check(&p);                                                      \
        assert_non_null(why);                                                                      \
        assert_non_null(strstr(why, fragment));                                                    \
        uint8_t *out;                                                                              \
        size_t out_len;                                                                            \
        assert_int_equal(ns_proof_encode(&p, &out, &out_len), NS_EINVAL);                          \
    } while (0)
    BROKEN(p.type = 9, "unknown proof type");
    BROKEN(p.period_start_ms = p.timestamp_ms, "ends before it starts");
    BROKEN(p.period_start_ms = p.timestamp_ms - 11 * 60000, "longer than 10 minutes");
    BROKEN(p.uptime_s = 62, "more uptime");
    BROKEN(p.tier = 0, "tier");
    BROKEN(p.tier = 6, "tier");
    BROKEN(p.has_training = false, "training commit");
    BROKEN(p.training.batch_count = 49, "batch count");
    BROKEN(p.training.layer_last = 7, "layer range");
    BROKEN(p.training.micro_batches = 0, "activation hashes");
    BROKEN(p.tokens = 10, "fewer tokens than batches");
    BROKEN(p.layers = NS_PONW_LAYERS_MAX + 1, "too many layers");
    ns_proof u = uptime_proof(T0_MS, 1);
    assert_null(ns_proof_check(&u));
    good = u;
    BROKEN(p.batches = 3, "batches on a proof that is not for training");
    BROKEN(p.samples = 3, "samples on a proof that is not for data");
    BROKEN(p.has_training = true, "training commit");
#undef BROKEN
}

static void test_signed_proof_opens_with_its_author_and_id(void **state)
{
    (void)state;
    ns_key key;
    key_of(&key, 7);
    ns_proof p = training_proof(T0_MS, 3), q;
    size_t len;
    uint8_t *env = sign(&key, &p, &len);
    assert_memory_equal(p.author, key.node_id, NS_NODE_ID_BYTES);
    uint8_t id[NS_SHA256_BYTES];
    ns_sha256(id, env, len);
    assert_memory_equal(p.id, id, sizeof id);
    assert_int_equal(ns_proof_open(env, len, T0_MS, &q), NS_OK);
    assert_memory_equal(q.author, key.node_id, NS_NODE_ID_BYTES);
    assert_memory_equal(q.id, id, sizeof id);
    assert_int_equal(q.sequence, 3);
    assert_int_equal(q.timestamp_ms, T0_MS);
    assert_memory_equal(&q.training, &p.training, sizeof p.training);
    /* every flipped byte is refused */
    for (size_t i = 0; i < len; i++) {
        env[i] ^= 0x20;
        assert_int_not_equal(ns_proof_open(env, len, T0_MS, &q), NS_OK);
        env[i] ^= 0x20;
    }
    /* a record of another type is not a proof */
    ns_record r = {.type = NS_RECORD_NODE, .sequence = 1, .timestamp_ms = T0_MS};
    uint8_t *other;
    size_t other_len;
    assert_int_equal(ns_record_sign(&key, &r, &other, &other_len), NS_OK);
    assert_int_equal(ns_proof_open(other, other_len, T0_MS, &q), NS_EINVAL);
    free(other);
    free(env);
}

/* ---- validation --------------------------------------------------------------------------- */

static ns_ponw_verdict validate_one(ns_ponw_validator *v, const ns_key *key, ns_proof p,
                                    uint64_t now_ms)
{
    size_t len;
    uint8_t *env = sign(key, &p, &len);
    ns_proof out;
    ns_ponw_verdict verdict = ns_ponw_validate(v, env, len, now_ms, &out);
    free(env);
    return verdict;
}

static void test_validator_gives_each_verdict_and_counts_it(void **state)
{
    (void)state;
    ns_key key;
    key_of(&key, 9);
    ns_ponw_validator *v;
    assert_int_equal(ns_ponw_validator_new(&v, 100), NS_OK);

    ns_proof p = training_proof(T0_MS, 1);
    size_t len;
    uint8_t *env = sign(&key, &p, &len);
    ns_proof out;
    assert_int_equal(ns_ponw_validate(v, env, len, T0_MS + 1000, &out), NS_PONW_ACCEPTED);
    assert_memory_equal(out.id, p.id, NS_SHA256_BYTES);
    assert_int_equal(ns_ponw_validate(v, env, len, T0_MS + 2000, &out), NS_PONW_DUPLICATE);
    env[len - 50] ^= 1; /* inside the signature's r */
    assert_int_equal(ns_ponw_validate(v, env, len, T0_MS + 2000, &out), NS_PONW_BAD_SIGNATURE);
    assert_int_equal(ns_ponw_validate(v, env, 3, T0_MS + 2000, &out), NS_PONW_MALFORMED);
    free(env);

    /* the next minute is fine; the same minute again overlaps */
    assert_int_equal(validate_one(v, &key, training_proof(T0_MS + 60000, 2), T0_MS + 61000),
                     NS_PONW_ACCEPTED);
    ns_proof again = training_proof(T0_MS + 30000, 3);
    assert_int_equal(validate_one(v, &key, again, T0_MS + 61000), NS_PONW_OVERLAP);
    /* stale and future */
    assert_int_equal(validate_one(v, &key, uptime_proof(T0_MS - 400000, 4), T0_MS), NS_PONW_STALE);
    assert_int_equal(validate_one(v, &key, uptime_proof(T0_MS + 200000, 5), T0_MS), NS_PONW_FUTURE);
    /* 1 M tokens a minute, and the tier's bound */
    ns_proof greedy = training_proof(T0_MS + 120000, 6);
    greedy.tokens = NS_PONW_TOKENS_PER_MIN_MAX + 1;
    greedy.tier = 1;
    assert_int_equal(validate_one(v, &key, greedy, T0_MS + 121000), NS_PONW_OVER_TOKENS);
    ns_proof slow = training_proof(T0_MS + 120000, 7);
    slow.tier = 5;
    slow.tokens = ns_ponw_tier_tokens_per_s_max(5) * 60 + 1;
    assert_int_equal(validate_one(v, &key, slow, T0_MS + 121000), NS_PONW_IMPLAUSIBLE);
    slow.tokens -= 1; /* exactly at the bound */
    slow.nonce++;
    assert_int_equal(validate_one(v, &key, slow, T0_MS + 121000), NS_PONW_ACCEPTED);

    assert_int_equal(ns_ponw_verdict_count(v, NS_PONW_ACCEPTED), 3);
    const ns_ponw_verdict once[] = {NS_PONW_DUPLICATE,   NS_PONW_BAD_SIGNATURE, NS_PONW_MALFORMED,
                                    NS_PONW_OVERLAP,     NS_PONW_STALE,         NS_PONW_FUTURE,
                                    NS_PONW_OVER_TOKENS, NS_PONW_IMPLAUSIBLE};
    for (size_t i = 0; i < sizeof once / sizeof once[0]; i++) {
        assert_int_equal(ns_ponw_verdict_count(v, once[i]), 1);
        assert_string_not_equal(ns_ponw_verdict_name(once[i]), "unknown");
    }
    ns_ponw_validator_free(v);
}

static void test_validator_holds_a_node_to_120_proofs_an_hour(void **state)
{
    (void)state;
    ns_key key;
    key_of(&key, 11);
    ns_ponw_validator *v;
    assert_int_equal(ns_ponw_validator_new(&v, 10), NS_OK);
    /* 30-second periods back to back: 120 fill an hour */
    uint64_t t = T0_MS;
    for (uint64_t i = 0; i < NS_PONW_PER_HOUR_MAX; i++) {
        ns_proof p = uptime_proof(t + 30000, i + 1);
        p.period_start_ms = t;
        p.uptime_s = 30;
        assert_int_equal(validate_one(v, &key, p, t + 30000), NS_PONW_ACCEPTED);
        t += 30000;
    }
    ns_proof p = uptime_proof(t + 10000, 500);
    p.period_start_ms = t;
    p.uptime_s = 10;
    assert_int_equal(validate_one(v, &key, p, t + 10000), NS_PONW_OVER_RATE);
    /* half an hour later the oldest have left the hour */
    t += 30 * 60000;
    p = uptime_proof(t, 501);
    assert_int_equal(validate_one(v, &key, p, t), NS_PONW_ACCEPTED);
    ns_ponw_validator_free(v);
}

static void test_validator_makes_room_only_by_dropping_silent_nodes(void **state)
{
    (void)state;
    ns_key a, b, c;
    key_of(&a, 21);
    key_of(&b, 22);
    key_of(&c, 23);
    ns_ponw_validator *v;
    assert_int_equal(ns_ponw_validator_new(&v, 2), NS_OK);
    assert_int_equal(validate_one(v, &a, uptime_proof(T0_MS, 1), T0_MS), NS_PONW_ACCEPTED);
    assert_int_equal(validate_one(v, &b, uptime_proof(T0_MS, 1), T0_MS), NS_PONW_ACCEPTED);
    assert_int_equal(validate_one(v, &c, uptime_proof(T0_MS, 1), T0_MS), NS_PONW_FULL);
    /* an hour on, a and b are silent: c gets a place, and a's memory is gone with it */
    uint64_t later = T0_MS + 3600000 + 60000;
    assert_int_equal(validate_one(v, &c, uptime_proof(later, 2), later), NS_PONW_ACCEPTED);
    assert_int_equal(validate_one(v, &a, uptime_proof(later, 2), later), NS_PONW_ACCEPTED);
    assert_int_equal(validate_one(v, &b, uptime_proof(later, 2), later), NS_PONW_FULL);
    ns_ponw_validator_free(v);
}

/* ---- rewards ------------------------------------------------------------------------------ */

static ns_neuro neuro(int64_t units)
{
    return (ns_neuro){.nano = units * NANO};
}

static void test_stake_multiplier_is_one_plus_a_tenth_of_log2(void **state)
{
    (void)state;
    assert_int_equal(ns_ponw_stake_multiplier_ppm(neuro(0)), 1000000);
    assert_int_equal(ns_ponw_stake_multiplier_ppm(neuro(1000)), 1100000);  /* log2(2) = 1 */
    assert_int_equal(ns_ponw_stake_multiplier_ppm(neuro(3000)), 1200000);  /* log2(4) = 2 */
    assert_int_equal(ns_ponw_stake_multiplier_ppm(neuro(63000)), 1600000); /* log2(64) = 6 */
    /* log2(1.1) = 0.137503523749935: 1.0137503 -> 1013750 ppm */
    assert_int_equal(ns_ponw_stake_multiplier_ppm(neuro(100)), 1013750);
    /* log2(1.5) = 0.584962500721156 -> 1058496 */
    assert_int_equal(ns_ponw_stake_multiplier_ppm(neuro(500)), 1058496);
    /* monotone over a sweep, and never below 1 */
    uint32_t last = 0;
    for (int64_t s = 0; s < 5000; s += 37) {
        uint32_t m = ns_ponw_stake_multiplier_ppm(neuro(s));
        assert_true(m >= last);
        last = m;
    }
    ns_neuro max = {.nano = INT64_MAX};
    assert_true(ns_ponw_stake_multiplier_ppm(max) > 2000000); /* log2(9.2e6) ~ 23.1 */
    assert_true(ns_ponw_stake_multiplier_ppm(max) < 3400000);
}

static void test_rewards_match_hand_computed_values(void **state)
{
    (void)state;
    ns_neuro r;
    /* a minute of uptime: 0.0001 NEURO */
    ns_proof up = uptime_proof(T0_MS, 1);
    assert_int_equal(ns_ponw_reward(&up, neuro(0), &r), NS_OK);
    assert_int_equal(r.nano, 100000);
    /* the whitepaper's example (§5.6): a processor, 25 layers, 60 batches, 100 NEURO staked:
     * 0.0005 * 25 * 60 = 0.75 NEURO, times 1.013750 (the paper rounds it to 1.01) */
    ns_proof tr = training_proof(T0_MS, 1);
    tr.uptime_s = 0;
    tr.batches = tr.training.batch_count = 60;
    tr.layers = 25;
    tr.training.layer_last = 25;
    tr.has_embed = tr.has_head = false;
    assert_int_equal(ns_ponw_reward(&tr, neuro(100), &r), NS_OK);
    assert_int_equal(r.nano, 760312500); /* 750000000 * 1013750 / 1e6 */
    /* in a quorum: times 1.1 */
    tr.in_quorum = true;
    assert_int_equal(ns_ponw_reward(&tr, neuro(100), &r), NS_OK);
    assert_int_equal(r.nano, 836343750);
    /* roles: embedding +0.2; head +0.3 only with 100 staked */
    tr.in_quorum = false;
    tr.has_embed = true;
    assert_int_equal(ns_ponw_role_multiplier_ppm(&tr, neuro(0)), 1200000);
    tr.has_head = true;
    assert_int_equal(ns_ponw_role_multiplier_ppm(&tr, neuro(99)), 1200000);
    assert_int_equal(ns_ponw_role_multiplier_ppm(&tr, neuro(100)), 1500000);
    /* 0.75 * 1.5 * 1.01375 */
    assert_int_equal(ns_ponw_reward(&tr, neuro(100), &r), NS_OK);
    assert_int_equal(r.nano, 1140468750);
    /* inference: 0.1 NEURO a million tokens times the share */
    ns_proof inf = uptime_proof(T0_MS, 1);
    inf.type = NS_PROOF_INFERENCE;
    inf.uptime_s = 0;
    inf.tokens = 1000000;
    assert_int_equal(ns_ponw_reward(&inf, neuro(0), &r), NS_OK);
    assert_int_equal(r.nano, 70000000); /* a middle stage: 0.70 */
    inf.has_embed = true;
    assert_int_equal(ns_ponw_reward(&inf, neuro(0), &r), NS_OK);
    assert_int_equal(r.nano, 18000000); /* 0.15 share, times the embedding's 1.2 */
    inf.has_head = true;
    assert_int_equal(ns_ponw_reward(&inf, neuro(0), &r), NS_OK);
    assert_int_equal(r.nano, 120000000); /* the whole model: 1.0 share, 1.2 role */
    /* data: 0.00001 NEURO a sample */
    ns_proof data = uptime_proof(T0_MS, 1);
    data.type = NS_PROOF_DATA;
    data.uptime_s = 30;
    data.samples = 1000;
    assert_int_equal(ns_ponw_reward(&data, neuro(0), &r), NS_OK);
    assert_int_equal(r.nano, 10000000 + 50000);
    /* overflow is an error, not a wrap */
    tr.batches = UINT64_MAX / 4; /* the reward does not look at the commit */
    assert_int_equal(ns_ponw_reward(&tr, neuro(0), &r), NS_EOVERFLOW);
}

/* Two consecutive training proofs of one author: consistent, a gap, or a contradiction. */
static void test_contradictions_between_consecutive_proofs(void **state)
{
    (void)state;
    ns_proof a = training_proof(T0_MS, 1), b = training_proof(T0_MS + 60000, 2);
    memset(a.author, 7, sizeof a.author);
    memcpy(b.author, a.author, sizeof a.author);
    a.training.batch_first = 1000; /* 50 batches: steps 1000..1049 */
    b.training.batch_first = 1050;
    memcpy(b.training.model_hash_before, a.training.model_hash_after, NS_SHA256_BYTES);
    assert_null(ns_ponw_contradiction(&a, &b));
    /* a gap: b starts later (steps never proved, e.g. after a crash): no contradiction */
    b.training.batch_first = 1080;
    memset(b.training.model_hash_before, 0x55, NS_SHA256_BYTES);
    assert_null(ns_ponw_contradiction(&a, &b));
    /* a claimed ten times the batches it trained: b starts inside a's claimed steps */
    b.training.batch_first = 1005;
    assert_non_null(ns_ponw_contradiction(&a, &b));
    /* a claimed weights it never computed: b starts right after a, from other weights */
    b.training.batch_first = 1050;
    assert_non_null(strstr(ns_ponw_contradiction(&a, &b), "other weights"));
    /* an outer step of DiLoCo between the two: the weights may change, the steps may not */
    b.training.outer_round = a.training.outer_round + 1;
    assert_null(ns_ponw_contradiction(&a, &b));
    b.training.batch_first = 1005;
    assert_non_null(ns_ponw_contradiction(&a, &b));
    b.training.batch_first = 1050;
    b.training.outer_round = a.training.outer_round;
    /* not comparable: another author, another stage, or b not after a */
    ns_proof other = b;
    other.author[0] ^= 1;
    assert_null(ns_ponw_contradiction(&a, &other));
    other = b;
    other.training.layer_first = 1;
    other.training.layer_last = 9;
    assert_null(ns_ponw_contradiction(&a, &other));
    other = b;
    other.period_start_ms = a.timestamp_ms - 1;
    assert_null(ns_ponw_contradiction(&a, &other));
    ns_proof up = uptime_proof(T0_MS + 60000, 2);
    assert_null(ns_ponw_contradiction(&a, &up));
}

/* A stage's proof over `segments` aligned segments of 10 steps from step `first`, layers
 * [lf, ll); input hash of segment i is tag_in + step/10, output tag_out + step/10. */
static ns_proof stage_proof(uint32_t lf, uint32_t ll, uint64_t first, uint32_t segments,
                            uint8_t tag_in, uint8_t tag_out)
{
    ns_proof p = training_proof(T0_MS, 1);
    p.layers = ll - lf;
    p.has_embed = lf == 0;
    p.has_head = false;
    p.batches = (uint64_t)segments * 10;
    p.tokens = p.batches * 64;
    ns_training_commit *c = &p.training;
    c->layer_first = lf;
    c->layer_last = ll;
    c->batch_first = first;
    c->batch_count = (uint32_t)p.batches;
    c->in_pipeline = true;
    memset(c->pipeline_id, 0x77, NS_SHA256_BYTES);
    c->segment_steps = 10;
    c->micro_batches = segments;
    for (uint32_t i = 0; i < segments; i++) {
        uint8_t k = (uint8_t)((first / 10) + i);
        memset(c->activation_in[i], (uint8_t)(tag_in + k), NS_SHA256_BYTES);
        memset(c->activation_out[i], (uint8_t)(tag_out + k), NS_SHA256_BYTES);
    }
    return p;
}

static void test_pipeline_stage_proofs_cross_check_their_activations(void **state)
{
    (void)state;
    /* stage 0 (layers 0..3) outputs what stage 1 (3..8) takes in: tag 0x40 */
    ns_proof up = stage_proof(0, 3, 100, 4, 0x10, 0x40);
    ns_proof down = stage_proof(3, 8, 120, 4, 0x40, 0x70);
    assert_null(ns_proof_check(&up));
    assert_null(ns_proof_check(&down));
    uint8_t *buf;
    size_t len;
    ns_proof q = {0};
    assert_int_equal(ns_proof_encode(&down, &buf, &len), NS_OK);
    assert_int_equal(ns_proof_decode(buf, len, &q), NS_OK);
    free(buf);
    assert_memory_equal(&q.training, &down.training, sizeof q.training);

    uint32_t bad = 99;
    /* up covers steps 100..139, down 120..159: two segments in common, both equal */
    assert_int_equal(ns_ponw_cross_check(&up, &down, &bad), 2);
    assert_int_equal(bad, 0);
    /* the wrong direction (down's layers do not end where up's begin): nothing compared */
    assert_int_equal(ns_ponw_cross_check(&down, &up, &bad), 0);
    /* down lies about its input of steps 130..139 */
    ns_proof liar = down;
    liar.training.activation_in[1][5] ^= 1;
    assert_int_equal(ns_ponw_cross_check(&up, &liar, &bad), 2);
    assert_int_equal(bad, 1);
    /* another pipeline (or generation), another segment length, no common steps: not compared */
    ns_proof other = down;
    other.training.pipeline_id[0] ^= 1;
    assert_int_equal(ns_ponw_cross_check(&up, &other, &bad), 0);
    other = stage_proof(3, 8, 140, 2, 0x40, 0x70);
    assert_int_equal(ns_ponw_cross_check(&up, &other, &bad), 0);
    assert_int_equal(bad, 0);
    ns_proof solo = training_proof(T0_MS, 1);
    assert_int_equal(ns_ponw_cross_check(&solo, &down, &bad), 0);

    /* the segments must tile the period's aligned steps */
    other = up;
    other.training.batch_first = 105;
    assert_non_null(strstr(ns_proof_check(&other), "segments"));
    other = up;
    other.training.segment_steps = 0;
    assert_non_null(ns_proof_check(&other));
    other = solo;
    other.training.segment_steps = 10;
    assert_non_null(ns_proof_check(&other));
    /* a pipeline id of another length does not decode */
    assert_int_equal(ns_proof_encode(&up, &buf, &len), NS_OK);
    uint8_t *at = memmem(buf, len, up.training.pipeline_id, NS_SHA256_BYTES);
    assert_non_null(at);
    at[-1] = 31; /* the length byte before the id */
    assert_int_equal(ns_proof_decode(buf, len, &q), NS_EPARSE);
    free(buf);
}

static void test_challenge_probability_by_swarm_size(void **state)
{
    (void)state;
    assert_int_equal(ns_ponw_challenge_ppm(1), 0);
    assert_int_equal(ns_ponw_challenge_ppm(19), 0);
    assert_int_equal(ns_ponw_challenge_ppm(20), 10000);
    assert_int_equal(ns_ponw_challenge_ppm(99), 10000);
    assert_int_equal(ns_ponw_challenge_ppm(100), 30000);
    assert_int_equal(ns_ponw_challenge_ppm(499), 30000);
    assert_int_equal(ns_ponw_challenge_ppm(500), 50000);
    assert_int_equal(ns_ponw_challenge_ppm(1000000), 50000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proof_body_round_trips_and_only_canonical_bytes_decode),
        cmocka_unit_test(test_a_hash_of_the_wrong_length_is_refused),
        cmocka_unit_test(test_an_empty_hash_inside_the_commit_is_refused),
        cmocka_unit_test(test_structural_rules_each_have_a_reason),
        cmocka_unit_test(test_signed_proof_opens_with_its_author_and_id),
        cmocka_unit_test(test_validator_gives_each_verdict_and_counts_it),
        cmocka_unit_test(test_validator_holds_a_node_to_120_proofs_an_hour),
        cmocka_unit_test(test_validator_makes_room_only_by_dropping_silent_nodes),
        cmocka_unit_test(test_stake_multiplier_is_one_plus_a_tenth_of_log2),
        cmocka_unit_test(test_rewards_match_hand_computed_values),
        cmocka_unit_test(test_contradictions_between_consecutive_proofs),
        cmocka_unit_test(test_pipeline_stage_proofs_cross_check_their_activations),
        cmocka_unit_test(test_challenge_probability_by_swarm_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
