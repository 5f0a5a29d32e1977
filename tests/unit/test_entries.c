/*
 * test_entries.c: applying signed entries to the NEURO ledger: claims of proofs, sends, receives,
 * stakes, the chain rules (gaps, links, duplicates, forks), refusals that change nothing, the
 * same state from the same entries in another order, and ns_ledger_check's replay.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../src/ledger/ledger_internal.h"
#include "neuroshard/ponw.h"
#include "support/testutil.h"

#define T0_MS 1800000000000ull
#define NANO  1000000000LL
#define MIN   60000ull

typedef struct fixture {
    char dir[512];
    char path[600];
    ns_ledger *ledger;
    ns_key a, b, c;
    uint64_t now;
} fixture;

static void key_of(ns_key *key, uint8_t seed_byte)
{
    uint8_t sk[NS_SECKEY_BYTES];
    memset(sk, seed_byte, sizeof sk);
    assert_int_equal(ns_key_from_seckey(key, sk), NS_OK);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    ns_test_tempdir(f->dir, sizeof f->dir);
    snprintf(f->path, sizeof f->path, "%s/ledger.db", f->dir);
    assert_int_equal(ns_ledger_open_at(f->path, T0_MS, &f->ledger), NS_OK);
    key_of(&f->a, 0x31);
    key_of(&f->b, 0x32);
    key_of(&f->c, 0x33);
    f->now = T0_MS;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ns_ledger_close(f->ledger);
    ns_test_rmtree(f->dir);
    free(f);
    return 0;
}

/* A signed training proof of key for the minute ending at end_ms. */
static uint8_t *proof_env(const ns_key *key, uint64_t end_ms, uint64_t batches, size_t *len,
                          ns_proof *out)
{
    ns_proof p = {.type = NS_PROOF_TRAINING,
                  .nonce = end_ms ^ batches,
                  .sequence = end_ms / MIN,
                  .timestamp_ms = end_ms,
                  .period_start_ms = end_ms - MIN,
                  .uptime_s = 60,
                  .tokens = batches * 128,
                  .batches = batches,
                  .layers = 4,
                  .tier = 3,
                  .has_training = true};
    p.training.batch_count = (uint32_t)batches;
    p.training.layer_last = 4;
    p.training.micro_batches = 1;
    uint8_t *env;
    assert_int_equal(ns_proof_sign(key, &p, &env, len), NS_OK);
    if (out != NULL)
        *out = p;
    return env;
}

/* Appends an entry of key's account; returns ns_ledger_append's code, *hash its hash. */
static int append(fixture *f, const ns_key *key, ns_entry e, char *why, uint8_t *hash)
{
    uint8_t *env = NULL;
    size_t len = 0;
    int rc = ns_ledger_append(f->ledger, key, &e, f->now, &env, &len, why);
    if (rc == NS_OK && hash != NULL)
        memcpy(hash, e.hash, NS_SHA256_BYTES);
    free(env);
    return rc;
}

/* Claims the proof of the minute ending at end_ms at f->now with the right reward. */
static int claim(fixture *f, const ns_key *key, uint64_t end_ms, uint64_t batches, char *why,
                 ns_neuro *reward)
{
    size_t len;
    ns_proof p;
    uint8_t *env = proof_env(key, end_ms, batches, &len, &p);
    ns_account acct;
    assert_int_equal(ns_ledger_account(f->ledger, key->node_id, &acct), NS_OK);
    ns_neuro r;
    assert_int_equal(ns_ponw_reward(&p, acct.stake, &r), NS_OK);
    ns_entry e = {.kind = NS_ENTRY_CLAIM, .amount = r, .proof = env, .proof_len = len};
    int rc = append(f, key, e, why, NULL);
    free(env);
    if (reward != NULL)
        *reward = r;
    return rc;
}

static ns_neuro balance_of(fixture *f, const ns_key *key)
{
    ns_account a;
    assert_int_equal(ns_ledger_account(f->ledger, key->node_id, &a), NS_OK);
    return a.balance;
}

static void assert_checks_out(fixture *f)
{
    ns_ledger_report rep;
    assert_int_equal(ns_ledger_check(f->ledger, &rep), NS_OK);
    if (!rep.ok)
        fail_msg("ledger check: %s", rep.problem);
    assert_int_equal(rep.held.nano, rep.minted.nano - rep.burned.nano);
}

/* ---- claims ------------------------------------------------------------------------------- */

static int rounds_seen;

/* Checks a training round's row against the claim's reward (arg) and the proof's counts. */
static bool count_round(void *arg, const ns_training_round *r)
{
    const ns_neuro *reward = arg;
    assert_int_equal(r->minted.nano, reward->nano);
    assert_int_equal(r->batch_size, 50);
    assert_int_equal(r->contributors, 1);
    rounds_seen++;
    return true;
}

static void test_a_claim_mints_the_reward_after_the_window(void **state)
{
    fixture *f = *state;
    char why[NS_LEDGER_WHY_SIZE];
    f->now = T0_MS + 5 * MIN;
    assert_int_equal(claim(f, &f->a, T0_MS, 50, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "challenge window"));
    f->now = T0_MS + 10 * MIN;
    ns_neuro r;
    assert_int_equal(claim(f, &f->a, T0_MS, 50, why, &r), NS_OK);
    assert_int_equal(r.nano, 50 * 4 * 500000LL + 100000); /* 0.0005 a batch a layer + uptime */
    assert_int_equal(balance_of(f, &f->a).nano, r.nano);
    ns_neuro minted, burned;
    assert_int_equal(ns_ledger_totals(f->ledger, &minted, &burned), NS_OK);
    assert_int_equal(minted.nano, r.nano);
    assert_int_equal(burned.nano, 0);
    uint64_t height;
    assert_int_equal(ns_ledger_height(f->ledger, &height), NS_OK);
    assert_int_equal(height, 1);
    rounds_seen = 0;
    assert_int_equal(ns_ledger_training_rounds(f->ledger, 10, count_round, &r), NS_OK);
    assert_int_equal(rounds_seen, 1); /* the Intelligence Ledger's row for the round */
    assert_checks_out(f);
}

static void test_claims_that_break_a_rule_change_nothing(void **state)
{
    fixture *f = *state;
    char why[NS_LEDGER_WHY_SIZE];
    f->now = T0_MS + 20 * MIN;
    assert_int_equal(claim(f, &f->a, T0_MS, 10, why, NULL), NS_OK);
    uint8_t before[NS_SHA256_BYTES], after[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(f->ledger, before), NS_OK);

    /* the same proof again */
    size_t len;
    ns_proof p;
    uint8_t *env = proof_env(&f->a, T0_MS, 10, &len, &p);
    ns_neuro r;
    assert_int_equal(ns_ponw_reward(&p, (ns_neuro){0}, &r), NS_OK);
    ns_entry e = {.kind = NS_ENTRY_CLAIM, .amount = r, .proof = env, .proof_len = len};
    assert_int_equal(append(f, &f->a, e, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "claimed already"));
    free(env);
    /* another proof over an overlapping period */
    assert_int_equal(claim(f, &f->a, T0_MS + 30000, 11, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "overlaps"));
    /* someone else's proof */
    env = proof_env(&f->b, T0_MS + 2 * MIN, 10, &len, &p);
    assert_int_equal(ns_ponw_reward(&p, (ns_neuro){0}, &r), NS_OK);
    e = (ns_entry){.kind = NS_ENTRY_CLAIM, .amount = r, .proof = env, .proof_len = len};
    assert_int_equal(append(f, &f->a, e, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "its author"));
    free(env);
    /* the wrong amount */
    env = proof_env(&f->a, T0_MS + 3 * MIN, 10, &len, &p);
    assert_int_equal(ns_ponw_reward(&p, (ns_neuro){0}, &r), NS_OK);
    r.nano += 1;
    e = (ns_entry){.kind = NS_ENTRY_CLAIM, .amount = r, .proof = env, .proof_len = len};
    assert_int_equal(append(f, &f->a, e, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "reward"));
    free(env);
    /* 2.56 M tokens in a minute */
    assert_int_equal(claim(f, &f->a, T0_MS + 4 * MIN, 20000, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "over_tokens"));

    assert_int_equal(ns_ledger_state_hash(f->ledger, after), NS_OK);
    assert_memory_equal(before, after, sizeof before);
    uint64_t height;
    assert_int_equal(ns_ledger_height(f->ledger, &height), NS_OK);
    assert_int_equal(height, 1);
    assert_checks_out(f);
}

/* ---- moving NEURO ------------------------------------------------------------------------- */

/* a earns some NEURO: claims of n minutes of 2000 batches (2000 * 4 * 0.0005 = 4 NEURO each). */
static void earn(fixture *f, const ns_key *key, int minutes)
{
    uint64_t saved = f->now;
    for (int i = 0; i < minutes; i++) {
        f->now = T0_MS + (uint64_t)(i + 10) * MIN;
        char why[NS_LEDGER_WHY_SIZE];
        int rc = claim(f, key, T0_MS + (uint64_t)i * MIN, 2000, why, NULL);
        if (rc != NS_OK)
            fail_msg("claim %d: %s", i, why);
    }
    f->now = saved > f->now ? saved : f->now;
}

static void test_send_burns_five_percent_and_receive_takes_the_rest(void **state)
{
    fixture *f = *state;
    earn(f, &f->a, 3);
    ns_neuro start = balance_of(f, &f->a);
    assert_true(start.nano > 12 * NANO);
    char why[NS_LEDGER_WHY_SIZE];
    uint8_t send_hash[NS_SHA256_BYTES];
    ns_entry send = {.kind = NS_ENTRY_SEND, .amount = {10 * NANO}};
    memcpy(send.counterparty, f->b.node_id, NS_NODE_ID_BYTES);
    assert_int_equal(append(f, &f->a, send, why, send_hash), NS_OK);
    assert_int_equal(balance_of(f, &f->a).nano, start.nano - 10 * NANO);
    assert_int_equal(ns_ledger_send_fee((ns_neuro){10 * NANO}).nano, NANO / 2);
    assert_int_equal(ns_ledger_send_fee((ns_neuro){1}).nano, 1); /* rounded up */
    assert_checks_out(f);                                        /* the send is held in transit */

    ns_entry recv = {.kind = NS_ENTRY_RECEIVE, .amount = {10 * NANO}};
    memcpy(recv.reference, send_hash, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->b, recv, why, NULL), NS_EINVAL); /* the fee is not b's */
    assert_non_null(strstr(why, "after its fee"));
    recv.amount.nano = 10 * NANO - NANO / 2;
    assert_int_equal(append(f, &f->a, recv, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "another account"));
    assert_int_equal(append(f, &f->b, recv, why, NULL), NS_OK);
    assert_int_equal(balance_of(f, &f->b).nano, 10 * NANO - NANO / 2);
    assert_int_equal(append(f, &f->b, recv, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "received already"));
    ns_entry unknown = recv;
    memset(unknown.reference, 0x77, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->b, unknown, why, NULL), NS_ENOENT);

    ns_neuro minted, burned;
    assert_int_equal(ns_ledger_totals(f->ledger, &minted, &burned), NS_OK);
    assert_int_equal(burned.nano, NANO / 2);
    assert_int_equal(balance_of(f, &f->a).nano + balance_of(f, &f->b).nano,
                     minted.nano - burned.nano);
    /* beyond the balance, to oneself, nothing: refused, nothing changes */
    send.amount.nano = balance_of(f, &f->a).nano + 1;
    assert_int_equal(append(f, &f->a, send, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "beyond the balance"));
    send.amount.nano = 0;
    assert_int_equal(append(f, &f->a, send, why, NULL), NS_EINVAL);
    send.amount.nano = NANO;
    memcpy(send.counterparty, f->a.node_id, NS_NODE_ID_BYTES);
    assert_int_equal(append(f, &f->a, send, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "oneself"));
    assert_checks_out(f);
}

static void test_stake_moves_balance_and_raises_the_reward(void **state)
{
    fixture *f = *state;
    earn(f, &f->a, 30); /* 120 NEURO */
    ns_neuro bal = balance_of(f, &f->a);
    char why[NS_LEDGER_WHY_SIZE];
    ns_entry st = {.kind = NS_ENTRY_STAKE, .amount = {100 * NANO}};
    assert_int_equal(append(f, &f->a, st, why, NULL), NS_OK);
    ns_account acct;
    assert_int_equal(ns_ledger_account(f->ledger, f->a.node_id, &acct), NS_OK);
    assert_int_equal(acct.stake.nano, 100 * NANO);
    assert_int_equal(acct.balance.nano, bal.nano - 100 * NANO);
    /* the next claim earns 1.01375 times as much (log2(1.1) / 10) */
    f->now = T0_MS + 100 * MIN;
    ns_neuro r;
    assert_int_equal(claim(f, &f->a, T0_MS + 80 * MIN, 2000, why, &r), NS_OK);
    assert_int_equal(r.nano, (4 * NANO + 100000) * 1013750 / 1000000);
    /* the wrong amount for the stake is refused: a reward computed without it */
    ns_entry un = {.kind = NS_ENTRY_UNSTAKE, .amount = {101 * NANO}};
    assert_int_equal(append(f, &f->a, un, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "beyond the stake"));
    un.amount.nano = 40 * NANO;
    assert_int_equal(append(f, &f->a, un, why, NULL), NS_OK);
    assert_int_equal(ns_ledger_account(f->ledger, f->a.node_id, &acct), NS_OK);
    assert_int_equal(acct.stake.nano, 60 * NANO);
    st.amount.nano = acct.balance.nano + 1;
    assert_int_equal(append(f, &f->a, st, why, NULL), NS_EINVAL);
    assert_checks_out(f);
}

/* ---- the chain ---------------------------------------------------------------------------- */

static uint8_t *signed_entry(const ns_key *key, uint64_t seq, const uint8_t prev[32], uint32_t kind,
                             int64_t amount, uint64_t ts, size_t *len, ns_entry *out)
{
    ns_entry e = {.kind = kind, .sequence = seq, .timestamp_ms = ts, .amount = {amount}};
    memcpy(e.prev_hash, prev, 32);
    uint8_t *env;
    assert_int_equal(ns_entry_sign(key, &e, &env, len), NS_OK);
    if (out != NULL)
        *out = e;
    return env;
}

static void test_chain_gaps_links_duplicates_and_forks(void **state)
{
    fixture *f = *state;
    earn(f, &f->a, 2);
    ns_account acct;
    assert_int_equal(ns_ledger_account(f->ledger, f->a.node_id, &acct), NS_OK);
    assert_int_equal(acct.sequence, 2);
    char why[NS_LEDGER_WHY_SIZE];
    uint64_t ts = f->now;
    size_t len, len2;
    ns_entry e3;
    uint8_t *gap = signed_entry(&f->a, 4, acct.head_hash, NS_ENTRY_STAKE, NANO, ts, &len, NULL);
    assert_int_equal(ns_ledger_apply(f->ledger, gap, len, ts, why), NS_ENOENT);
    assert_non_null(strstr(why, "missing"));
    uint8_t wrong[32] = {1};
    uint8_t *unlinked = signed_entry(&f->a, 3, wrong, NS_ENTRY_STAKE, NANO, ts, &len2, NULL);
    assert_int_equal(ns_ledger_apply(f->ledger, unlinked, len2, ts, why), NS_EINVAL);
    assert_non_null(strstr(why, "does not follow"));
    free(unlinked);
    uint8_t *good = signed_entry(&f->a, 3, acct.head_hash, NS_ENTRY_STAKE, NANO, ts, &len2, &e3);
    assert_int_equal(ns_ledger_apply(f->ledger, good, len2, ts, why), NS_OK);
    assert_int_equal(ns_ledger_apply(f->ledger, good, len2, ts, why), NS_EEXIST);
    /* the gap is closed now: entry 4 (whose link is wrong) is refused for its link */
    assert_int_equal(ns_ledger_apply(f->ledger, gap, len, ts, why), NS_EINVAL);
    free(gap);
    /* a second, different entry 3: a fork; both kept; the account frozen */
    uint8_t *fork =
        signed_entry(&f->a, 3, acct.head_hash, NS_ENTRY_STAKE, 2 * NANO, ts, &len, NULL);
    assert_int_equal(ns_ledger_apply(f->ledger, fork, len, ts, why), NS_EFORK);
    assert_int_equal(ns_ledger_account(f->ledger, f->a.node_id, &acct), NS_OK);
    assert_true(acct.frozen);
    assert_int_equal(acct.stake.nano, NANO); /* the first entry 3 stands */
    assert_int_equal(ns_ledger_apply(f->ledger, fork, len, ts, why), NS_EFORK); /* once recorded */
    int64_t forks = -1;
    assert_int_equal(ns__ledger_query_int64(f->ledger->db, "SELECT count(*) FROM forks", &forks),
                     NS_OK);
    assert_int_equal(forks, 1);
    uint8_t *next = signed_entry(&f->a, 4, e3.hash, NS_ENTRY_UNSTAKE, NANO, ts, &len, NULL);
    assert_int_equal(ns_ledger_apply(f->ledger, next, len, ts, why), NS_EINVAL);
    assert_non_null(strstr(why, "frozen"));
    free(next);
    free(fork);
    free(good);
    assert_checks_out(f); /* the replay freezes it too */
}

static void test_forged_tampered_and_foreign_bytes_are_refused(void **state)
{
    fixture *f = *state;
    ns_account acct;
    assert_int_equal(ns_ledger_account(f->ledger, f->a.node_id, &acct), NS_OK);
    size_t len;
    uint8_t *env = signed_entry(&f->a, 1, acct.head_hash, NS_ENTRY_STAKE, 0, T0_MS, &len, NULL);
    char why[NS_LEDGER_WHY_SIZE];
    for (size_t i = 0; i < len; i++) {
        env[i] ^= 0x01;
        assert_int_not_equal(ns_ledger_apply(f->ledger, env, len, T0_MS, why), NS_OK);
        env[i] ^= 0x01;
    }
    free(env);
    /* a record of another type */
    ns_record r = {.type = NS_RECORD_PROOF, .sequence = 1, .timestamp_ms = T0_MS};
    assert_int_equal(ns_record_sign(&f->a, &r, &env, &len), NS_OK);
    assert_int_equal(ns_ledger_apply(f->ledger, env, len, T0_MS, why), NS_EINVAL);
    free(env);
    /* from the future */
    env = signed_entry(&f->a, 1, acct.head_hash, NS_ENTRY_STAKE, 0, T0_MS + 10 * MIN, &len, NULL);
    assert_int_equal(ns_ledger_apply(f->ledger, env, len, T0_MS, why), NS_EFUTURE);
    free(env);
    uint64_t height;
    assert_int_equal(ns_ledger_height(f->ledger, &height), NS_OK);
    assert_int_equal(height, 0);
}

/* ---- agreement ---------------------------------------------------------------------------- */

typedef struct collected {
    uint8_t *buf[64];
    size_t len[64];
    size_t n;
} collected;

static bool collect(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    (void)id;
    collected *c = arg;
    assert_true(c->n < 64);
    c->buf[c->n] = malloc(len);
    memcpy(c->buf[c->n], buf, len);
    c->len[c->n++] = len;
    return true;
}

/* Another node applying the same entries, in another order that keeps each chain's order (and a
 * receive after its send), ends in the same state. */
static void test_same_entries_in_another_order_give_the_same_state(void **state)
{
    fixture *f = *state;
    earn(f, &f->b, 2);
    earn(f, &f->a, 3);
    char why[NS_LEDGER_WHY_SIZE];
    ns_entry send = {.kind = NS_ENTRY_SEND, .amount = {3 * NANO}};
    memcpy(send.counterparty, f->b.node_id, NS_NODE_ID_BYTES);
    uint8_t h[NS_SHA256_BYTES];
    assert_int_equal(append(f, &f->a, send, why, h), NS_OK);
    ns_entry recv = {.kind = NS_ENTRY_RECEIVE, .amount = {3 * NANO - 3 * NANO / 20}};
    memcpy(recv.reference, h, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->b, recv, why, NULL), NS_OK);
    collected c = {0};
    assert_int_equal(ns_ledger_each_entry(f->ledger, 0, collect, &c, NULL), NS_OK);
    assert_int_equal(c.n, 7);

    char path2[700];
    snprintf(path2, sizeof path2, "%s/other.db", f->dir);
    ns_ledger *other;
    assert_int_equal(ns_ledger_open_at(path2, T0_MS + 999, &other), NS_OK);
    /* a's entries first (entries 2..5, then the receive's dependency order holds), b's after;
     * b's receive (the last) before b's claims would be a gap: apply b's claims first */
    const size_t order[] = {2, 3, 4, 5, 0, 1, 6};
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(ns_ledger_apply(other, c.buf[order[i]], c.len[order[i]], f->now, why),
                         NS_OK);
    uint8_t ha[NS_SHA256_BYTES], hb[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(f->ledger, ha), NS_OK);
    assert_int_equal(ns_ledger_state_hash(other, hb), NS_OK);
    assert_memory_equal(ha, hb, sizeof ha);
    ns_ledger_close(other);
    for (size_t i = 0; i < c.n; i++)
        free(c.buf[i]);
}

static void test_check_finds_a_balance_changed_behind_its_back(void **state)
{
    fixture *f = *state;
    earn(f, &f->a, 2);
    assert_checks_out(f);
    assert_int_equal(ns__ledger_exec(f->ledger->db, "UPDATE accounts SET balance_nano ="
                                                    " balance_nano + 1"),
                     NS_OK);
    ns_ledger_report rep;
    assert_int_equal(ns_ledger_check(f->ledger, &rep), NS_OK);
    assert_false(rep.ok);
    assert_non_null(strstr(rep.problem, "differs"));
    assert_int_equal(rep.entries, 2);
}

/* ---- challenges --------------------------------------------------------------------------- */

/* The test's judge: the first byte of the recomputed hash says what "recompute" found. */
static ns_judgement test_judge(void *arg, const ns_proof *proof, const ns_entry *challenge)
{
    (void)arg;
    (void)proof;
    return challenge->reference[0] == 0xff   ? NS_JUDGE_FRAUD
           : challenge->reference[0] == 0x00 ? NS_JUDGE_HONEST
                                             : NS_JUDGE_UNKNOWN;
}

/* by challenges a's proof of the minute ending at end_ms with the given evidence byte. */
static int challenge_by(fixture *f, const ns_key *by, uint64_t end_ms, uint8_t evidence,
                        int64_t bond, char *why, uint8_t *hash)
{
    size_t len;
    ns_proof p;
    uint8_t *env = proof_env(&f->a, end_ms, 2000, &len, &p);
    ns_entry e = {.kind = NS_ENTRY_CHALLENGE, .amount = {bond}, .proof = env, .proof_len = len};
    memset(e.reference, evidence, NS_SHA256_BYTES);
    int rc = append(f, by, e, why, hash);
    free(env);
    if (rc != NS_OK)
        printf("  challenge: %s\n", why);
    return rc;
}

static int challenge(fixture *f, uint64_t end_ms, uint8_t evidence, int64_t bond, char *why)
{
    return challenge_by(f, &f->b, end_ms, evidence, bond, why, NULL);
}

/* The cohort judge of the test: a bundle hash starting 0xff shows fraud, 0x00 none. */
static ns_judgement cohort_judge(void *arg, const ns_proof *proof, const ns_entry *challenge)
{
    (void)proof;
    uint64_t round;
    uint8_t bundle[NS_SHA256_BYTES];
    int *calls = arg;
    assert_true(ns_ledger_cohort_evidence_parse(challenge->evidence, challenge->evidence_len,
                                                &round, bundle));
    (*calls)++;
    return bundle[0] == 0xff   ? NS_JUDGE_FRAUD
           : bundle[0] == 0x00 ? NS_JUDGE_HONEST
                               : NS_JUDGE_UNKNOWN;
}

/* by challenges a's proof (outer round 0) with cohort evidence of `round` and bundle byte b. */
static int cohort_challenge(fixture *f, uint64_t end_ms, uint64_t round, uint8_t b, char *why)
{
    size_t len;
    uint8_t *env = proof_env(&f->a, end_ms, 2000, &len, NULL);
    uint8_t bundle[NS_SHA256_BYTES], evidence[NS_LEDGER_COHORT_EVIDENCE_BYTES];
    memset(bundle, b, sizeof bundle);
    ns_ledger_cohort_evidence(evidence, round, bundle);
    ns_entry e = {.kind = NS_ENTRY_CHALLENGE,
                  .amount = {NS_LEDGER_CHALLENGE_BOND},
                  .proof = env,
                  .proof_len = len,
                  .evidence = evidence,
                  .evidence_len = sizeof evidence};
    int rc = append(f, &f->b, e, why, NULL);
    free(env);
    return rc;
}

static ns_account account_of(fixture *f, const ns_key *key)
{
    ns_account a;
    assert_int_equal(ns_ledger_account(f->ledger, key->node_id, &a), NS_OK);
    return a;
}

static void stake_bond(fixture *f, const ns_key *key)
{
    earn(f, key, 3); /* 12 NEURO */
    char why[NS_LEDGER_WHY_SIZE];
    ns_entry st = {.kind = NS_ENTRY_STAKE, .amount = {NS_LEDGER_CHALLENGE_BOND}};
    assert_int_equal(append(f, key, st, why, NULL), NS_OK);
}

static void stake_b(fixture *f)
{
    stake_bond(f, &f->b);
}

/* A challenge by the cohort's screen names the round after the proof's; its judge decides. */
static void test_a_cohort_challenge_names_the_round_after_the_proof_and_is_judged(void **state)
{
    fixture *f = *state;
    int calls = 0;
    ns_ledger_set_judge(f->ledger, cohort_judge, &calls);
    earn(f, &f->a, 3);
    stake_b(f);
    char why[NS_LEDGER_WHY_SIZE];
    uint64_t end = f->now - MIN / 2;
    /* encoding: 45 bytes, and nothing else parses as one */
    uint8_t ev[NS_LEDGER_COHORT_EVIDENCE_BYTES], h[NS_SHA256_BYTES], got[NS_SHA256_BYTES];
    memset(h, 7, sizeof h);
    ns_ledger_cohort_evidence(ev, 1ull << 40, h);
    uint64_t round = 0;
    assert_true(ns_ledger_cohort_evidence_parse(ev, sizeof ev, &round, got));
    assert_true(round == 1ull << 40);
    assert_memory_equal(got, h, sizeof h);
    assert_false(ns_ledger_cohort_evidence_parse(ev, sizeof ev - 1, &round, got));
    ev[4] = 2;
    assert_false(ns_ledger_cohort_evidence_parse(ev, sizeof ev, &round, got));
    /* the proof is of outer round 0: a cohort round other than 1 is refused unjudged */
    assert_int_equal(cohort_challenge(f, end, 2, 0xff, why), NS_EINVAL);
    assert_non_null(strstr(why, "cohort round"));
    assert_int_equal(cohort_challenge(f, end, 0, 0xff, why), NS_EINVAL);
    assert_int_equal(calls, 0);
    /* not judged yet: it waits; judged fraud: a owes the slash */
    assert_int_equal(cohort_challenge(f, end, 1, 0x42, why), NS_EWAIT);
    assert_int_equal(calls, 1);
    ns_account a0 = account_of(f, &f->a);
    assert_int_equal(cohort_challenge(f, end, 1, 0xff, why), NS_OK);
    assert_int_equal(calls, 2);
    ns_account a1 = account_of(f, &f->a);
    assert_true(a1.debt.nano > a0.debt.nano);
    /* a false one from the same challenger of the same proof: refused, already challenged */
    assert_int_equal(cohort_challenge(f, end, 1, 0x00, why), NS_EINVAL);
    assert_checks_out(f);
}

static void test_a_confirmed_challenge_slashes_the_prover_and_pays_the_challenger(void **state)
{
    fixture *f = *state;
    ns_ledger_set_judge(f->ledger, test_judge, NULL);
    earn(f, &f->a, 3); /* a claims minutes 0, 1, 2: 12.0003 NEURO */
    stake_b(f);
    ns_account a0 = account_of(f, &f->a), b0 = account_of(f, &f->b);
    ns_neuro minted0, burned0;
    assert_int_equal(ns_ledger_totals(f->ledger, &minted0, &burned0), NS_OK);
    char why[NS_LEDGER_WHY_SIZE];
    /* a's newest proof, still in its window, was fabricated */
    uint64_t end = f->now - MIN / 2;
    assert_int_equal(challenge(f, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why), NS_OK);
    int64_t reward = 4 * NANO + 100000, slash = 2 * reward;
    ns_account a1 = account_of(f, &f->a), b1 = account_of(f, &f->b);
    /* the slash is a debt: a's own chain (balance, stake) is untouched */
    assert_int_equal(a1.balance.nano, a0.balance.nano);
    assert_int_equal(a1.debt.nano, a0.debt.nano + slash);
    assert_int_equal(b1.balance.nano, b0.balance.nano + slash / 2);
    assert_int_equal(b1.stake.nano, NS_LEDGER_CHALLENGE_BOND); /* the bond is kept */
    ns_neuro minted1, burned1;
    assert_int_equal(ns_ledger_totals(f->ledger, &minted1, &burned1), NS_OK);
    assert_int_equal(burned1.nano - burned0.nano, slash / 2);
    assert_int_equal(minted1.nano, minted0.nano);
    assert_int_equal(challenge(f, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why), NS_EINVAL);
    assert_non_null(strstr(why, "challenged this proof already"));
    /* a second challenger that proves the same fraud is paid too, and a owes for both */
    stake_bond(f, &f->c);
    ns_account c0 = account_of(f, &f->c);
    assert_int_equal(challenge_by(f, &f->c, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why, NULL), NS_OK);
    assert_int_equal(account_of(f, &f->c).balance.nano, c0.balance.nano + slash / 2);
    assert_int_equal(account_of(f, &f->a).debt.nano, a0.debt.nano + 2 * slash);
    /* the fraudulent proof may still be claimed after its window: the slashes take back more */
    f->now = end + 11 * MIN;
    ns_neuro paid;
    assert_int_equal(claim(f, &f->a, end, 2000, why, &paid), NS_OK);
    ns_account a2 = account_of(f, &f->a);
    assert_true(a2.balance.nano + a2.stake.nano - a2.debt.nano <
                a0.balance.nano + a0.stake.nano - a0.debt.nano - slash);
    assert_checks_out(f);
}

/* The hash of the newest entry of key's account. */
static void collected_hash_of_newest(fixture *f, const ns_key *key, uint8_t hash[NS_SHA256_BYTES])
{
    memcpy(hash, account_of(f, key).head_hash, NS_SHA256_BYTES);
}

static void test_a_false_challenge_costs_the_challenger_its_bond(void **state)
{
    fixture *f = *state;
    ns_ledger_set_judge(f->ledger, test_judge, NULL);
    earn(f, &f->a, 1);
    stake_b(f);
    ns_account a0 = account_of(f, &f->a);
    char why[NS_LEDGER_WHY_SIZE];
    assert_int_equal(challenge(f, f->now - MIN / 2, 0x00, NS_LEDGER_CHALLENGE_BOND, why), NS_OK);
    ns_account a1 = account_of(f, &f->a), b1 = account_of(f, &f->b);
    assert_int_equal(b1.stake.nano, 0);
    assert_int_equal(b1.debt.nano, 0);
    /* half the bond is sent to the prover, who takes it in like any send */
    assert_int_equal(a1.balance.nano, a0.balance.nano);
    uint8_t hash[NS_SHA256_BYTES];
    collected_hash_of_newest(f, &f->b, hash);
    ns_entry recv = {.kind = NS_ENTRY_RECEIVE, .amount = {NS_LEDGER_CHALLENGE_BOND / 2 + 1}};
    memcpy(recv.reference, hash, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->a, recv, why, NULL), NS_EINVAL); /* not what it delivers */
    recv.amount.nano = NS_LEDGER_CHALLENGE_BOND / 2;
    assert_int_equal(append(f, &f->a, recv, why, NULL), NS_OK);
    assert_int_equal(account_of(f, &f->a).balance.nano,
                     a0.balance.nano + NS_LEDGER_CHALLENGE_BOND / 2);
    assert_checks_out(f);
}

/* A proof of a's with its batch_first and weights set, signed. */
static uint8_t *chained_proof(fixture *f, uint64_t end_ms, uint64_t first, uint8_t before,
                              uint8_t after, size_t *len)
{
    ns_proof p = {.type = NS_PROOF_TRAINING,
                  .nonce = end_ms,
                  .sequence = end_ms / MIN,
                  .timestamp_ms = end_ms,
                  .period_start_ms = end_ms - MIN,
                  .uptime_s = 60,
                  .tokens = 2000 * 128,
                  .batches = 2000,
                  .layers = 4,
                  .tier = 3,
                  .has_training = true};
    p.training.batch_first = first;
    p.training.batch_count = 2000;
    p.training.layer_last = 4;
    p.training.micro_batches = 1;
    memset(p.training.model_hash_before, before, NS_SHA256_BYTES);
    memset(p.training.model_hash_after, after, NS_SHA256_BYTES);
    uint8_t *env;
    assert_int_equal(ns_proof_sign(&f->a, &p, &env, len), NS_OK);
    return env;
}

/* A challenge carrying a later proof that contradicts the earlier one needs no judge: every node
 * sees the fraud in the two signed proofs; evidence that agrees is refused. */
static void test_a_challenge_by_continuity_needs_no_recompute(void **state)
{
    fixture *f = *state;
    earn(f, &f->a, 1);
    stake_b(f);
    uint64_t end = f->now - MIN / 2;
    size_t la, lb, lc;
    uint8_t *a = chained_proof(f, end - MIN, 100, 1, 2, &la);  /* steps 100..2099, ends at w2 */
    uint8_t *ok = chained_proof(f, end, 2100, 2, 3, &lb);      /* follows on */
    uint8_t *bad = chained_proof(f, end + 1, 2100, 9, 3, &lc); /* starts from other weights */
    char why[NS_LEDGER_WHY_SIZE];
    ns_entry e = {.kind = NS_ENTRY_CHALLENGE,
                  .amount = {NS_LEDGER_CHALLENGE_BOND},
                  .proof = a,
                  .proof_len = la,
                  .evidence = ok,
                  .evidence_len = lb};
    f->now = end; /* within the earlier proof's window */
    assert_int_equal(append(f, &f->b, e, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "does not contradict"));
    ns_account a0 = account_of(f, &f->a);
    e.evidence = bad;
    e.evidence_len = lc;
    assert_int_equal(append(f, &f->b, e, why, NULL), NS_OK); /* no judge was set */
    ns_account a1 = account_of(f, &f->a);
    assert_true(a1.debt.nano > a0.debt.nano);
    free(a);
    free(ok);
    free(bad);
    assert_checks_out(f);
}

static void test_challenges_that_break_a_rule_or_wait_change_nothing(void **state)
{
    fixture *f = *state;
    char why[NS_LEDGER_WHY_SIZE];
    earn(f, &f->a, 1);
    earn(f, &f->b, 3);
    /* no judge yet: every challenge waits */
    ns_entry st = {.kind = NS_ENTRY_STAKE, .amount = {5 * NANO}};
    assert_int_equal(append(f, &f->b, st, why, NULL), NS_OK);
    uint64_t end = f->now - MIN / 2; /* a's proof, in its window */
    assert_int_equal(challenge(f, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why), NS_EINVAL);
    assert_non_null(strstr(why, "bond (10 NEURO) staked"));
    assert_int_equal(append(f, &f->b, st, why, NULL), NS_OK); /* 10 staked now */
    uint8_t before[NS_SHA256_BYTES], after[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(f->ledger, before), NS_OK);
    assert_int_equal(challenge(f, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why), NS_EWAIT);
    assert_non_null(strstr(why, "recompute"));
    ns_ledger_set_judge(f->ledger, test_judge, NULL);
    assert_int_equal(challenge(f, end, 0x77, NS_LEDGER_CHALLENGE_BOND, why), NS_EWAIT);
    assert_int_equal(challenge(f, end, 0xff, NS_LEDGER_CHALLENGE_BOND - 1, why), NS_EINVAL);
    assert_non_null(strstr(why, "exactly the swarm"));
    /* one's own proof */
    size_t len;
    ns_proof p;
    uint8_t *env = proof_env(&f->b, end, 2000, &len, &p);
    ns_entry own = {.kind = NS_ENTRY_CHALLENGE,
                    .amount = {NS_LEDGER_CHALLENGE_BOND},
                    .proof = env,
                    .proof_len = len};
    memset(own.reference, 0xff, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->b, own, why, NULL), NS_EINVAL);
    assert_non_null(strstr(why, "own proof"));
    free(env);
    /* after the proof's challenge window */
    f->now = end + 10 * MIN + 1;
    assert_int_equal(challenge(f, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why), NS_EINVAL);
    assert_non_null(strstr(why, "window has closed"));
    assert_int_equal(ns_ledger_state_hash(f->ledger, after), NS_OK);
    assert_memory_equal(before, after, sizeof before);
    assert_checks_out(f);
}

/* Every entry of the ledger, applied to a fresh ledger in an order drawn from seed: sweeps over
 * them until each applied, entries that depend on one not yet here (NS_ENOENT) wait a sweep. */
static ns_ledger *apply_shuffled(fixture *f, const collected *c, uint64_t seed)
{
    ns_ledger *other;
    assert_int_equal(ns_ledger_open_memory(&other), NS_OK);
    ns_ledger_set_judge(other, test_judge, NULL);
    size_t order[64];
    for (size_t i = 0; i < c->n; i++)
        order[i] = i;
    for (size_t i = c->n; i > 1; i--) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        size_t j = (size_t)(seed >> 33) % i, t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    bool done[64] = {0};
    size_t applied = 0;
    while (applied < c->n) {
        size_t before = applied;
        for (size_t i = 0; i < c->n; i++) {
            if (done[order[i]])
                continue;
            char why[NS_LEDGER_WHY_SIZE];
            int rc = ns_ledger_apply(other, c->buf[order[i]], c->len[order[i]], f->now, why);
            if (rc == NS_ENOENT)
                continue;
            if (rc != NS_OK)
                fail_msg("entry %zu refused in order %llu: %s", order[i], (unsigned long long)seed,
                         why);
            done[order[i]] = true;
            applied++;
        }
        assert_true(applied > before);
    }
    return other;
}

/* Challenges (two of one fraud, one false), the fraudulent proof's claim, and the prover's own
 * sends, applied in any order, give the same balances, stakes, debts and totals: no rule reads
 * another account's state, so the order entries arrive in cannot matter. */
static void test_challenges_give_the_same_state_in_any_order(void **state)
{
    fixture *f = *state;
    ns_ledger_set_judge(f->ledger, test_judge, NULL);
    char why[NS_LEDGER_WHY_SIZE];
    earn(f, &f->a, 3);
    stake_bond(f, &f->b);
    stake_bond(f, &f->c);
    uint64_t end = f->now - MIN / 2;
    assert_int_equal(challenge_by(f, &f->b, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why, NULL), NS_OK);
    assert_int_equal(challenge_by(f, &f->c, end, 0xff, NS_LEDGER_CHALLENGE_BOND, why, NULL), NS_OK);
    uint8_t false_hash[NS_SHA256_BYTES];
    assert_int_equal(
        challenge_by(f, &f->b, end - 1000, 0x00, NS_LEDGER_CHALLENGE_BOND, why, false_hash), NS_OK);
    ns_entry send = {.kind = NS_ENTRY_SEND, .amount = {5 * NANO}};
    memcpy(send.counterparty, f->c.node_id, NS_NODE_ID_BYTES);
    uint8_t send_hash[NS_SHA256_BYTES];
    assert_int_equal(append(f, &f->a, send, why, send_hash), NS_OK);
    f->now = end + 11 * MIN;
    assert_int_equal(claim(f, &f->a, end, 2000, why, NULL), NS_OK);
    ns_entry recv = {.kind = NS_ENTRY_RECEIVE, .amount = {NS_LEDGER_CHALLENGE_BOND / 2}};
    memcpy(recv.reference, false_hash, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->a, recv, why, NULL), NS_OK);
    recv.amount.nano = 5 * NANO - 5 * NANO / 20;
    memcpy(recv.reference, send_hash, NS_SHA256_BYTES);
    assert_int_equal(append(f, &f->c, recv, why, NULL), NS_OK);
    assert_checks_out(f);

    collected c = {0};
    assert_int_equal(ns_ledger_each_entry(f->ledger, 0, collect, &c, NULL), NS_OK);
    const ns_key *keys[] = {&f->a, &f->b, &f->c};
    ns_neuro minted, burned;
    assert_int_equal(ns_ledger_totals(f->ledger, &minted, &burned), NS_OK);
    uint8_t want[NS_SHA256_BYTES];
    assert_int_equal(ns_ledger_state_hash(f->ledger, want), NS_OK);
    for (uint64_t seed = 1; seed <= 24; seed++) {
        ns_ledger *other = apply_shuffled(f, &c, seed);
        for (size_t k = 0; k < 3; k++) {
            ns_account x = account_of(f, keys[k]), y;
            assert_int_equal(ns_ledger_account(other, keys[k]->node_id, &y), NS_OK);
            assert_int_equal(x.balance.nano, y.balance.nano);
            assert_int_equal(x.stake.nano, y.stake.nano);
            assert_int_equal(x.debt.nano, y.debt.nano);
            assert_int_equal(x.sequence, y.sequence);
        }
        ns_neuro m2, b2;
        assert_int_equal(ns_ledger_totals(other, &m2, &b2), NS_OK);
        assert_int_equal(m2.nano, minted.nano);
        assert_int_equal(b2.nano, burned.nano);
        uint8_t got[NS_SHA256_BYTES];
        assert_int_equal(ns_ledger_state_hash(other, got), NS_OK);
        assert_memory_equal(got, want, sizeof got);
        ns_ledger_report rep;
        assert_int_equal(ns_ledger_check(other, &rep), NS_OK);
        assert_true(rep.ok);
        ns_ledger_close(other);
    }
    for (size_t i = 0; i < c.n; i++)
        free(c.buf[i]);
}

#define ENTRY_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    ns_log_set_level(NS_LOG_WARN);
    const struct CMUnitTest tests[] = {
        ENTRY_TEST(test_a_claim_mints_the_reward_after_the_window),
        ENTRY_TEST(test_claims_that_break_a_rule_change_nothing),
        ENTRY_TEST(test_send_burns_five_percent_and_receive_takes_the_rest),
        ENTRY_TEST(test_stake_moves_balance_and_raises_the_reward),
        ENTRY_TEST(test_chain_gaps_links_duplicates_and_forks),
        ENTRY_TEST(test_forged_tampered_and_foreign_bytes_are_refused),
        ENTRY_TEST(test_same_entries_in_another_order_give_the_same_state),
        ENTRY_TEST(test_check_finds_a_balance_changed_behind_its_back),
        ENTRY_TEST(test_a_confirmed_challenge_slashes_the_prover_and_pays_the_challenger),
        ENTRY_TEST(test_a_cohort_challenge_names_the_round_after_the_proof_and_is_judged),
        ENTRY_TEST(test_a_false_challenge_costs_the_challenger_its_bond),
        ENTRY_TEST(test_challenges_that_break_a_rule_or_wait_change_nothing),
        ENTRY_TEST(test_a_challenge_by_continuity_needs_no_recompute),
        ENTRY_TEST(test_challenges_give_the_same_state_in_any_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
