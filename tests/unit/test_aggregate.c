/*
 * test_aggregate.c: the S8 screen, the five aggregators and the gradient checks against values
 * worked out by hand (each test's comment shows the sums). Aggregator tests turn the screen's
 * rejection off (sigmas of HUGE_VAL) so that they see every input; the screen tests use the
 * default sigmas. The sign-flip tests show the robust aggregators holding where the mean gives.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "neuroshard/aggregate.h"

#define INPUTS_MAX 128
#define DIM_MAX    4096

/* Inputs backed by storage of their own: the test fills data[i][0..n) and weight[i]. */
typedef struct cohort {
    size_t m, n;
    float data[INPUTS_MAX][DIM_MAX];
    ns_agg_input in[INPUTS_MAX];
} cohort;

static cohort the_cohort; /* too big for the stack */

static cohort *cohort_new(size_t m, size_t n)
{
    assert_true(m <= INPUTS_MAX);
    assert_true(n <= DIM_MAX);
    cohort *c = &the_cohort;
    memset(c, 0, sizeof *c);
    c->m = m;
    c->n = n;
    for (size_t i = 0; i < m; i++)
        c->in[i] = (ns_agg_input){.v = c->data[i], .weight = 1.0};
    return c;
}

/* Sets input i to the first c->n of the given values, with weight w. */
static void set_input(cohort *c, size_t i, double w, const float *v)
{
    memcpy(c->data[i], v, c->n * sizeof(float));
    c->in[i].weight = w;
}

static ns_agg_config screen_off(ns_agg_kind kind)
{
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    cfg.kind = kind;
    cfg.reject_sigma = HUGE_VAL;
    cfg.fraud_sigma = HUGE_VAL;
    return cfg;
}

static void run_ok(const ns_agg_config *cfg, const cohort *c, float *out)
{
    assert_int_equal(ns_agg_run(cfg, c->in, c->m, c->n, out, NULL, NULL), NS_OK);
}

static void assert_near(double got, double want, double tol, const char *label)
{
    if (!(fabs(got - want) <= tol)) {
        fprintf(stderr, "%s: got %.9g, want %.9g (tolerance %g)\n", label, got, want, tol);
        fail();
    }
}

static double distance(const float *x, const double *y, size_t n)
{
    double sum = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
    return sqrt(sum);
}

/* ---- names and defaults ------------------------------------------------------------------- */

static void test_names_parse_back_to_their_kind(void **state)
{
    (void)state;
    const char *want[] = {"mean", "trimmed-mean", "median", "krum", "bulyan"};
    for (unsigned k = NS_AGG_MEAN; k <= NS_AGG_BULYAN; k++) {
        assert_string_equal(ns_agg_name((ns_agg_kind)k), want[k]);
        ns_agg_kind got = NS_AGG_MEAN;
        assert_int_equal(ns_agg_parse(want[k], &got), NS_OK);
        assert_int_equal(got, k);
    }
    ns_agg_kind got;
    assert_int_equal(ns_agg_parse("Krum", &got), NS_EINVAL);
    assert_int_equal(ns_agg_parse("trimmed_mean", &got), NS_EINVAL);
    assert_int_equal(ns_agg_parse("", &got), NS_EINVAL);
    assert_int_equal(ns_agg_parse(NULL, &got), NS_EINVAL);
    assert_string_equal(ns_agg_verdict_name(NS_AGG_ACCEPTED), "accepted");
    assert_string_equal(ns_agg_verdict_name(NS_AGG_REJECTED), "rejected");
    assert_string_equal(ns_agg_verdict_name(NS_AGG_FRAUD), "fraud");
    assert_string_equal(ns_agg_verdict_name(NS_AGG_INVALID), "invalid");
}

static void test_default_config_is_trimmed_mean_with_the_s8_sigmas(void **state)
{
    (void)state;
    ns_agg_config cfg;
    memset(&cfg, 0xa5, sizeof cfg);
    ns_agg_config_default(&cfg);
    assert_int_equal(cfg.kind, NS_AGG_TRIMMED_MEAN);
    assert_true(cfg.trim == 0.2);
    assert_int_equal(cfg.byzantine, 0);
    assert_true(cfg.reject_sigma == 3.0);
    assert_true(cfg.fraud_sigma == 5.0);
}

/* ---- the aggregators ---------------------------------------------------------------------- */

/* weights 1, 2, 1: x = (1 + 2*2 + 6) / 4 = 2.75, y = (10 + 2*20 + 0) / 4 = 12.5 */
static void test_mean_weighs_each_contribution(void **state)
{
    (void)state;
    cohort *c = cohort_new(3, 2);
    set_input(c, 0, 1.0, (float[]){1, 10});
    set_input(c, 1, 2.0, (float[]){2, 20});
    set_input(c, 2, 1.0, (float[]){6, 0});
    ns_agg_config cfg = screen_off(NS_AGG_MEAN);
    float out[2];
    run_ok(&cfg, c, out);
    assert_true(out[0] == 2.75f);
    assert_true(out[1] == 12.5f);
}

/* trim 0.2 of 5 drops one value at each end, per coordinate, then weighs the rest.
 * x: 1 2 3 4 100 (weights 1 1 2 1 1) keeps 2 3 4:    (2 + 2*3 + 4) / 4 = 3
 * y: -7 5 6 7 50 (weights 1 2 1 1 1) keeps 5 6 7:    (2*5 + 6 + 7) / 4 = 5.75 */
static void test_trimmed_mean_drops_the_ends_of_each_coordinate_and_weighs_the_rest(void **state)
{
    (void)state;
    cohort *c = cohort_new(5, 2);
    set_input(c, 0, 1.0, (float[]){1, 50});
    set_input(c, 1, 1.0, (float[]){2, -7});
    set_input(c, 2, 2.0, (float[]){3, 5});
    set_input(c, 3, 1.0, (float[]){4, 6});
    set_input(c, 4, 1.0, (float[]){100, 7});
    ns_agg_config cfg = screen_off(NS_AGG_TRIMMED_MEAN);
    float out[2];
    run_ok(&cfg, c, out);
    assert_true(out[0] == 3.0f);
    assert_true(out[1] == 5.75f);
}

static void test_trimmed_mean_with_zero_trim_is_the_weighted_mean(void **state)
{
    (void)state;
    cohort *c = cohort_new(3, 1);
    set_input(c, 0, 1.0, (float[]){1});
    set_input(c, 1, 2.0, (float[]){2});
    set_input(c, 2, 1.0, (float[]){6});
    ns_agg_config cfg = screen_off(NS_AGG_TRIMMED_MEAN);
    cfg.trim = 0.0;
    float out;
    run_ok(&cfg, c, &out);
    assert_true(out == 2.75f);
}

/* 0.29 x 100 is 28.999999999999996 in double, yet 29 values go at each end: the kept values are
 * 29..70, mean 49.5. Were only 28 dropped, value 28 (weight 1000) would pull the mean to ~28.7. */
static void test_trimmed_mean_share_is_not_lost_to_rounding(void **state)
{
    (void)state;
    assert_true(0.29 * 100.0 < 29.0);
    cohort *c = cohort_new(100, 1);
    for (size_t i = 0; i < 100; i++)
        set_input(c, i, i == 28 ? 1000.0 : 1.0, (float[]){(float)i});
    ns_agg_config cfg = screen_off(NS_AGG_TRIMMED_MEAN);
    cfg.trim = 0.29;
    float out;
    run_ok(&cfg, c, &out);
    assert_true(out == 49.5f);
}

/* x: 1 2 3 4 with weights 1 1 1 3: total 6, cumulative 1 2 3 reaches half at 3 (the lower one
 * at an exact half, though 4 also splits the weight). y: 10(w 3) 20 30 40 reaches half at 10. */
static void test_median_is_weighted_per_coordinate(void **state)
{
    (void)state;
    cohort *c = cohort_new(4, 2);
    set_input(c, 0, 1.0, (float[]){1, 40});
    set_input(c, 1, 1.0, (float[]){2, 30});
    set_input(c, 2, 1.0, (float[]){3, 20});
    set_input(c, 3, 3.0, (float[]){4, 10});
    ns_agg_config cfg = screen_off(NS_AGG_MEDIAN);
    float out[2];
    run_ok(&cfg, c, out);
    assert_true(out[0] == 3.0f);
    assert_true(out[1] == 10.0f);
    c->in[3].weight = 3.5; /* past the half: 4 holds more than the others together */
    run_ok(&cfg, c, out);
    assert_true(out[0] == 4.0f);
}

static void test_median_of_an_even_count_is_the_lower_middle(void **state)
{
    (void)state;
    cohort *c = cohort_new(4, 1);
    for (size_t i = 0; i < 4; i++)
        set_input(c, i, 1.0, (float[]){(float)(4 - i)});
    ns_agg_config cfg = screen_off(NS_AGG_MEDIAN);
    float out;
    run_ok(&cfg, c, &out);
    assert_true(out == 2.0f);
}

/* Seven inputs x * (1, 2): attackers 100 and 101 first, then the honest 10 11 12 14 19. With
 * f = 2 each sums its 3 nearest squared distances (in units of 5 = 1^2 + 2^2):
 *   10: 1+4+16 = 21   11: 1+1+9 = 11   12: 4+1+4 = 9   14: 4+9+16 = 29   19: 25+49+64 = 138
 *   100: 1 + 81^2 + 86^2 = 13958        101: 1 + 82^2 + 87^2 = 14294
 * so Krum returns input 4, (12, 24), bit for bit (summing 2 nearest would choose 11, summing 4
 * would choose 14). f = 2 is also the default for m = 7; input 0's weight changes nothing. */
static void test_krum_picks_a_member_of_the_honest_cluster(void **state)
{
    (void)state;
    const float x[] = {100, 101, 10, 11, 12, 14, 19};
    cohort *c = cohort_new(7, 2);
    for (size_t i = 0; i < 7; i++)
        set_input(c, i, i == 0 ? 50.0 : 1.0, (float[]){x[i], 2 * x[i]});
    ns_agg_config cfg = screen_off(NS_AGG_KRUM);
    cfg.byzantine = 2;
    float out[2];
    run_ok(&cfg, c, out);
    assert_true(out[0] == 12.0f);
    assert_true(out[1] == 24.0f);
    cfg.byzantine = 0;
    out[0] = out[1] = 0;
    run_ok(&cfg, c, out);
    assert_true(out[0] == 12.0f);
    assert_true(out[1] == 24.0f);
}

/* m = 7, f = 1 (the default): theta = 5 chosen by Krum on 7, 6, 5, 4, 3 candidates (summing
 * their 4, 3, 2, 1, 1 nearest), beta = 3. Inputs (x, y; weight):
 *   0 (10, 5; 1)  1 (11, 3; 2)  2 (60, -40; 1) attacker  3 (12, 8; 1)  4 (14, 1; 3)
 *   5 (17, 2; 1)  6 (19, 6; 2)
 * Krum chooses 1 (score 81), 5 (88), 0 (45), 4 (50, tie with 6: lower index), 3 (53, tie with
 * 6). Per coordinate over the chosen:
 *   x: 10(1) 11(2) 12(1) 14(3) 17(1); weighted median 12 (exact half); nearest 3: 11, then 10
 *      (tie with 14 at distance 2 goes low): (10 + 2*11 + 12) / 4 = 11
 *   y: 1(3) 2(1) 3(2) 5(1) 8(1); weighted median 2; nearest 3: 1 (tie with 3 goes low), then 3:
 *      (3*1 + 2 + 2*3) / 6 = 11/6 */
static void test_bulyan_averages_the_values_nearest_the_median_of_the_krum_choice(void **state)
{
    (void)state;
    const float v[7][2] = {{10, 5}, {11, 3}, {60, -40}, {12, 8}, {14, 1}, {17, 2}, {19, 6}};
    const double w[7] = {1, 2, 1, 1, 3, 1, 2};
    cohort *c = cohort_new(7, 2);
    for (size_t i = 0; i < 7; i++)
        set_input(c, i, w[i], v[i]);
    ns_agg_config cfg = screen_off(NS_AGG_BULYAN);
    float out[2];
    run_ok(&cfg, c, out);
    assert_true(out[0] == 11.0f);
    assert_true(out[1] == (float)(11.0 / 6.0));
}

/* With f = 1, five inputs are fewer than 4f + 3 = 7: Bulyan gives the weighted median, 3. With
 * the default f = floor((5 - 3) / 4) = 0 it keeps and averages all five: 60 / 5 = 12. */
static void test_bulyan_falls_back_to_the_median_with_too_few_inputs(void **state)
{
    (void)state;
    const float x[] = {50, 1, 4, 2, 3};
    cohort *c = cohort_new(5, 1);
    for (size_t i = 0; i < 5; i++)
        set_input(c, i, 1.0, &x[i]);
    ns_agg_config cfg = screen_off(NS_AGG_BULYAN);
    cfg.byzantine = 1;
    float out;
    run_ok(&cfg, c, &out);
    assert_true(out == 3.0f);
    cfg.byzantine = 0;
    run_ok(&cfg, c, &out);
    assert_true(out == 12.0f);
}

/* ---- the screen --------------------------------------------------------------------------- */

/* Nine inputs (x, 5): honest x = -3..3, one at 9, one at 1000. Median (1, 5); distances
 * d = |x - 1|: honest 4 3 2 1 0 1 2, then 8 and 999; med(d) = 2; |d - 2|: 2 1 0 1 2 1 0 6 997,
 * MAD = 1; z = (d - 2) / 1.4826. The one at 9: z = 6 / 1.4826 = 4.05, rejected; the one at
 * 1000: z = 997 / 1.4826 = 672.5, fraud. The trimmed mean of the seven honest drops -3 and 3:
 * (0, 5). */
static void test_screen_rejects_the_far_and_flags_the_very_far_as_fraud(void **state)
{
    (void)state;
    const float x[] = {-3, -2, 1000, -1, 0, 1, 9, 2, 3};
    cohort *c = cohort_new(9, 2);
    for (size_t i = 0; i < 9; i++)
        set_input(c, i, 1.0, (float[]){x[i], 5});
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    float out[2];
    ns_agg_verdict verdicts[9];
    double sigmas[9];
    assert_int_equal(ns_agg_run(&cfg, c->in, 9, 2, out, verdicts, sigmas), NS_OK);
    for (size_t i = 0; i < 9; i++) {
        double d = fabs(x[i] - 1.0);
        assert_near(sigmas[i], (d - 2.0) / 1.4826, 1e-9, "sigma");
        ns_agg_verdict want = i == 2 ? NS_AGG_FRAUD : i == 6 ? NS_AGG_REJECTED : NS_AGG_ACCEPTED;
        assert_int_equal(verdicts[i], want);
    }
    assert_near(sigmas[6], 4.0469, 1e-4, "moderate");
    assert_near(sigmas[2], 672.4673, 1e-4, "huge");
    assert_true(out[0] == 0.0f);
    assert_true(out[1] == 5.0f);
}

/* Eight inputs (x): honest -3..3 and one at 1000. The median of an even count is the mean of the
 * middle two, 0.5; d = |x - 0.5|: 3.5 2.5 1.5 0.5 0.5 1.5 2.5 999.5; med(d) = (1.5 + 2.5) / 2 = 2;
 * |d - 2|: 1.5 0.5 0.5 1.5 1.5 0.5 0.5 997.5, MAD = (0.5 + 1.5) / 2 = 1; z = (d - 2) / 1.4826. */
static void test_screen_of_an_even_count_takes_the_mean_of_the_middle_two(void **state)
{
    (void)state;
    const float x[] = {-3, -2, -1, 0, 1, 2, 3, 1000};
    cohort *c = cohort_new(8, 1);
    for (size_t i = 0; i < 8; i++)
        set_input(c, i, 1.0, &x[i]);
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    float out;
    ns_agg_verdict verdicts[8];
    double sigmas[8];
    assert_int_equal(ns_agg_run(&cfg, c->in, 8, 1, &out, verdicts, sigmas), NS_OK);
    for (size_t i = 0; i < 8; i++) {
        assert_near(sigmas[i], (fabs(x[i] - 0.5) - 2.0) / 1.4826, 1e-9, "sigma");
        assert_int_equal(verdicts[i], i == 7 ? NS_AGG_FRAUD : NS_AGG_ACCEPTED);
    }
}

/* Three honest updates whose distances to the median differ by less than 2x are not fraud, in
 * the smallest cohort the screen judges: (0, 1), (0, -1.1), (2, 0) have the median (0, 0) and
 * d = 1, 1.1, 2; med(d) = 1.1 and MAD = 0.1, so a bare MAD would put the third at 6.1 sigma.
 * The floor of 0.25 med(d) makes it (2 - 1.1) / (1.4826 x 0.275) = 2.2 sigma. */
static void test_screen_of_three_honest_updates_accepts_them_all(void **state)
{
    (void)state;
    cohort *c = cohort_new(3, 2);
    set_input(c, 0, 1.0, (float[]){0, 1});
    set_input(c, 1, 1.0, (float[]){0, -1.1f});
    set_input(c, 2, 1.0, (float[]){2, 0});
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    float out[2];
    ns_agg_verdict verdicts[3];
    double sigmas[3];
    assert_int_equal(ns_agg_run(&cfg, c->in, 3, 2, out, verdicts, sigmas), NS_OK);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(verdicts[i], NS_AGG_ACCEPTED);
    assert_near(sigmas[2], (2.0 - 1.1) / (1.4826 * 0.275), 1e-6, "third");
    /* one of them a hundred times as far is still fraud */
    set_input(c, 2, 1.0, (float[]){200, 0});
    assert_int_equal(ns_agg_run(&cfg, c->in, 3, 2, out, verdicts, sigmas), NS_OK);
    assert_int_equal(verdicts[2], NS_AGG_FRAUD);
    assert_int_equal(verdicts[0], NS_AGG_ACCEPTED);
}

static void test_screen_marks_non_finite_values_and_bad_weights_invalid(void **state)
{
    (void)state;
    cohort *c = cohort_new(10, 2);
    set_input(c, 0, 1.0, (float[]){1, 1});
    set_input(c, 1, 1.0, (float[]){NAN, 2});
    set_input(c, 2, 1.0, (float[]){2, INFINITY});
    set_input(c, 3, 1.0, (float[]){-INFINITY, 2});
    set_input(c, 4, 0.0, (float[]){2, 2});
    set_input(c, 5, -1.0, (float[]){2, 2});
    set_input(c, 6, NAN, (float[]){2, 2});
    set_input(c, 7, INFINITY, (float[]){2, 2});
    set_input(c, 8, 1.0, (float[]){2, 2});
    set_input(c, 9, 1.0, (float[]){3, 3});
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    cfg.kind = NS_AGG_MEAN;
    float out[2];
    ns_agg_verdict verdicts[10];
    double sigmas[10];
    for (size_t i = 0; i < 10; i++)
        sigmas[i] = 99.0;
    assert_int_equal(ns_agg_run(&cfg, c->in, 10, 2, out, verdicts, sigmas), NS_OK);
    for (size_t i = 1; i <= 7; i++) {
        assert_int_equal(verdicts[i], NS_AGG_INVALID);
        assert_true(sigmas[i] == 0.0);
    }
    assert_int_equal(verdicts[0], NS_AGG_ACCEPTED);
    assert_int_equal(verdicts[8], NS_AGG_ACCEPTED);
    assert_int_equal(verdicts[9], NS_AGG_ACCEPTED);
    assert_true(sigmas[8] < 0.0); /* the median itself: d = 0 < med(d) = sqrt(2) */
    assert_true(out[0] == 2.0f);  /* the mean of the three valid ones */
    assert_true(out[1] == 2.0f);
}

static void test_screen_rejects_nothing_below_three_valid_inputs(void **state)
{
    (void)state;
    cohort *c = cohort_new(3, 2);
    set_input(c, 0, 1.0, (float[]){0, 0});
    set_input(c, 1, 1.0, (float[]){1000, 1000});
    set_input(c, 2, 1.0, (float[]){NAN, 0});
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    cfg.kind = NS_AGG_MEAN;
    float out[2];
    ns_agg_verdict verdicts[3];
    double sigmas[3] = {9, 9, 9};
    assert_int_equal(ns_agg_run(&cfg, c->in, 3, 2, out, verdicts, sigmas), NS_OK);
    assert_int_equal(verdicts[0], NS_AGG_ACCEPTED);
    assert_int_equal(verdicts[1], NS_AGG_ACCEPTED);
    assert_int_equal(verdicts[2], NS_AGG_INVALID);
    for (size_t i = 0; i < 3; i++)
        assert_true(sigmas[i] == 0.0);
    assert_true(out[0] == 500.0f);
    assert_true(out[1] == 500.0f);
}

/* The screen never rejects every valid input (half lie at or below med(d)), so no accepted input
 * means none was valid. */
static void test_no_accepted_input_is_enoent_with_a_zero_result(void **state)
{
    (void)state;
    cohort *c = cohort_new(2, 3);
    set_input(c, 0, 0.0, (float[]){1, 2, 3});
    set_input(c, 1, 1.0, (float[]){1, NAN, 3});
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    float out[3] = {7, 7, 7};
    ns_agg_verdict verdicts[2] = {NS_AGG_ACCEPTED, NS_AGG_ACCEPTED};
    assert_int_equal(ns_agg_run(&cfg, c->in, 2, 3, out, verdicts, NULL), NS_ENOENT);
    assert_int_equal(verdicts[0], NS_AGG_INVALID);
    assert_int_equal(verdicts[1], NS_AGG_INVALID);
    for (size_t j = 0; j < 3; j++)
        assert_true(out[j] == 0.0f);
}

/* ---- sign flips --------------------------------------------------------------------------- */

#define FLIP_M      10
#define FLIP_HONEST 7
#define FLIP_N      64

static uint64_t lcg_state;

static double lcg_uniform(void) /* in [-1, 1) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / (double)(1ull << 52) - 1.0;
}

/* Seven honest inputs g + noise (g_j in [0.5, 1.5], noise within 0.1) and three that send the
 * sign-flipped -(g + noise) of their own: 30 % attackers. Fills the honest mean. */
static cohort *sign_flip_cohort(double honest_mean[FLIP_N])
{
    lcg_state = 42;
    cohort *c = cohort_new(FLIP_M, FLIP_N);
    memset(honest_mean, 0, FLIP_N * sizeof honest_mean[0]);
    for (size_t i = 0; i < FLIP_M; i++) {
        for (size_t j = 0; j < FLIP_N; j++) {
            double g = 1.0 + 0.5 * sin((double)j) + 0.1 * lcg_uniform();
            c->data[i][j] = (float)(i < FLIP_HONEST ? g : -g);
            if (i < FLIP_HONEST)
                honest_mean[j] += (double)c->data[i][j] / FLIP_HONEST;
        }
    }
    return c;
}

static double norm(const double *x, size_t n)
{
    double sum = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += x[j] * x[j];
    return sqrt(sum);
}

/* The mean lands near 0.4 g, 0.6 |g| away; trimmed mean (trim 0.3: the three flipped are the
 * three lowest values of each coordinate), median and Krum stay within the honest noise. */
static void test_sign_flips_pull_the_mean_but_not_the_robust_aggregators(void **state)
{
    (void)state;
    double hm[FLIP_N];
    cohort *c = sign_flip_cohort(hm);
    double scale = norm(hm, FLIP_N);
    float out[FLIP_N];
    ns_agg_config cfg = screen_off(NS_AGG_MEAN);
    run_ok(&cfg, c, out);
    assert_true(distance(out, hm, FLIP_N) > 0.5 * scale);
    cfg = screen_off(NS_AGG_TRIMMED_MEAN);
    cfg.trim = 0.3;
    run_ok(&cfg, c, out);
    assert_true(distance(out, hm, FLIP_N) < 0.05 * scale);
    cfg = screen_off(NS_AGG_MEDIAN);
    run_ok(&cfg, c, out);
    assert_true(distance(out, hm, FLIP_N) < 0.1 * scale);
    cfg = screen_off(NS_AGG_KRUM);
    run_ok(&cfg, c, out);
    assert_true(distance(out, hm, FLIP_N) < 0.1 * scale);
}

/* With the default config the screen itself catches them, and the trimmed mean of the honest
 * lands close to their mean. */
static void test_default_screen_catches_sign_flips(void **state)
{
    (void)state;
    double hm[FLIP_N];
    cohort *c = sign_flip_cohort(hm);
    ns_agg_config cfg;
    ns_agg_config_default(&cfg);
    float out[FLIP_N];
    ns_agg_verdict verdicts[FLIP_M];
    double sigmas[FLIP_M];
    assert_int_equal(ns_agg_run(&cfg, c->in, FLIP_M, FLIP_N, out, verdicts, sigmas), NS_OK);
    for (size_t i = 0; i < FLIP_M; i++) {
        assert_int_equal(verdicts[i], i < FLIP_HONEST ? NS_AGG_ACCEPTED : NS_AGG_FRAUD);
        assert_true(i < FLIP_HONEST ? sigmas[i] <= 3.0 : sigmas[i] > 5.0);
    }
    assert_true(distance(out, hm, FLIP_N) < 0.05 * norm(hm, FLIP_N));
}

/* ---- determinism and bad arguments -------------------------------------------------------- */

/* Nine inputs of 3000 values (past one accumulation block): every kind gives the same bits twice,
 * and the mean is bit for bit the plain sum in index order. */
static void test_runs_are_bit_for_bit_repeatable(void **state)
{
    (void)state;
    enum { M = 9, N = 3000 };
    lcg_state = 7;
    cohort *c = cohort_new(M, N);
    for (size_t i = 0; i < M; i++) {
        c->in[i].weight = 1.0 + (double)i / 3.0;
        for (size_t j = 0; j < N; j++)
            c->data[i][j] = (float)lcg_uniform();
    }
    static float a[N], b[N];
    for (unsigned k = NS_AGG_MEAN; k <= NS_AGG_BULYAN; k++) {
        ns_agg_config cfg = screen_off((ns_agg_kind)k);
        run_ok(&cfg, c, a);
        run_ok(&cfg, c, b);
        assert_memory_equal(a, b, sizeof a);
    }
    ns_agg_config cfg = screen_off(NS_AGG_MEAN);
    run_ok(&cfg, c, a);
    double w = 0.0;
    for (size_t i = 0; i < M; i++)
        w += c->in[i].weight;
    for (size_t j = 0; j < N; j++) {
        double s = 0.0;
        for (size_t i = 0; i < M; i++)
            s += c->in[i].weight * (double)c->data[i][j];
        assert_true(a[j] == (float)(s / w));
    }
}

static void assert_refused(const ns_agg_config *cfg, const ns_agg_input *in, size_t m, size_t n,
                           float *out)
{
    ns_agg_verdict verdicts[4] = {NS_AGG_FRAUD, NS_AGG_FRAUD, NS_AGG_FRAUD, NS_AGG_FRAUD};
    float before = out != NULL ? out[0] : 0.0f;
    assert_int_equal(ns_agg_run(cfg, in, m, n, out, verdicts, NULL), NS_EINVAL);
    assert_int_equal(verdicts[0], NS_AGG_FRAUD); /* nothing written */
    if (out != NULL)
        assert_true(out[0] == before);
}

static void test_run_refuses_bad_configs_and_arguments(void **state)
{
    (void)state;
    cohort *c = cohort_new(4, 2);
    for (size_t i = 0; i < 4; i++)
        set_input(c, i, 1.0, (float[]){(float)i, 1});
    float out[2] = {7, 7};
    ns_agg_config good;
    ns_agg_config_default(&good);
    ns_agg_config cfg = good;
    cfg.trim = 0.5;
    assert_refused(&cfg, c->in, 4, 2, out);
    cfg.trim = -0.1;
    assert_refused(&cfg, c->in, 4, 2, out);
    cfg.trim = NAN;
    assert_refused(&cfg, c->in, 4, 2, out);
    cfg = good;
    cfg.kind = (ns_agg_kind)5;
    assert_refused(&cfg, c->in, 4, 2, out);
    cfg = good;
    cfg.reject_sigma = 0.0;
    assert_refused(&cfg, c->in, 4, 2, out);
    cfg.reject_sigma = NAN;
    assert_refused(&cfg, c->in, 4, 2, out);
    cfg = good;
    cfg.fraud_sigma = 2.0; /* below reject_sigma */
    assert_refused(&cfg, c->in, 4, 2, out);
    assert_refused(&good, c->in, 0, 2, out);
    assert_refused(&good, c->in, NS_AGG_INPUTS_MAX + 1, 2, out);
    assert_refused(&good, c->in, 4, 0, out);
    assert_refused(&good, NULL, 4, 2, out);
    assert_refused(&good, c->in, 4, 2, NULL);
    c->in[2].v = NULL;
    assert_refused(&good, c->in, 4, 2, out);
}

/* ---- gradient checks ---------------------------------------------------------------------- */

static void test_grad_check_passes_a_faithful_update(void **state)
{
    (void)state;
    const float t[] = {1, -2, 3, 0.5f};
    const float u[] = {1.1f, -1.9f, 3.2f, 0.4f};
    ns_grad_check r;
    assert_int_equal(ns_grad_check_run(u, t, 4, &r), NS_OK);
    assert_true(r.ok);
    assert_null(r.why);
    assert_true(r.cosine > 0.99 && r.cosine <= 1.0 + 1e-12);
    assert_near(r.magnitude, 1.0, 0.05, "magnitude");
    assert_near(r.variance, 1.0, 0.1, "variance");
    assert_int_equal(ns_grad_check_run(t, t, 4, &r), NS_OK);
    assert_near(r.cosine, 1.0, 1e-12, "cosine of itself");
    assert_true(r.magnitude == 1.0);
    assert_true(r.variance == 1.0);
}

/* (1, 1, 0, 0) against (1, 0, 0, 0) has cosine 1/sqrt 2 = 0.707, passing; (0, 1, 0, 0) is
 * orthogonal (0) and (-1, 0, 0, 0) opposite (-1), failing. */
static void test_grad_check_fails_on_direction(void **state)
{
    (void)state;
    const float t[] = {1, 0, 0, 0};
    ns_grad_check r;
    assert_int_equal(ns_grad_check_run((float[]){1, 1, 0, 0}, t, 4, &r), NS_OK);
    assert_near(r.cosine, sqrt(0.5), 1e-12, "45 degrees");
    assert_true(r.ok);
    assert_int_equal(ns_grad_check_run((float[]){0, 1, 0, 0}, t, 4, &r), NS_OK);
    assert_true(r.cosine == 0.0);
    assert_false(r.ok);
    assert_string_equal(r.why, "cosine");
    assert_int_equal(ns_grad_check_run((float[]){-1, 0, 0, 0}, t, 4, &r), NS_OK);
    assert_true(r.cosine == -1.0);
    assert_string_equal(r.why, "cosine");
    assert_int_equal(ns_grad_check_run((float[]){0, 0, 0, 0}, t, 4, &r), NS_OK);
    assert_true(r.cosine == 0.0); /* a zero update has no direction */
    assert_string_equal(r.why, "cosine");
}

/* 9 x the trusted vector passes (ratio 9, variance ratio 81); 10.5 x fails on magnitude first
 * (its variance ratio, 110.25, fails too). */
static void test_grad_check_fails_on_magnitude(void **state)
{
    (void)state;
    const float t[] = {1, -2, 4, 0.5f};
    float u[4];
    ns_grad_check r;
    for (size_t j = 0; j < 4; j++)
        u[j] = 9.0f * t[j];
    assert_int_equal(ns_grad_check_run(u, t, 4, &r), NS_OK);
    assert_near(r.magnitude, 9.0, 1e-12, "nine times");
    assert_near(r.variance, 81.0, 1e-9, "nine times");
    assert_true(r.ok);
    for (size_t j = 0; j < 4; j++)
        u[j] = 10.5f * t[j];
    assert_int_equal(ns_grad_check_run(u, t, 4, &r), NS_OK);
    assert_near(r.magnitude, 10.5, 1e-12, "ten and a half");
    assert_near(r.cosine, 1.0, 1e-12, "same direction");
    assert_false(r.ok);
    assert_string_equal(r.why, "magnitude");
}

/* Trusted (10.1, 9.9, 10.1, 9.9): mean 10, variance 0.01. Update (12, 8, 12, 8): variance 4, a
 * ratio of 400, while the norms differ by 2 % (sqrt(416 / 400.04)) and the cosine is
 * 400.8 / sqrt(400.04 * 416) = 0.9825. */
static void test_grad_check_fails_on_variance(void **state)
{
    (void)state;
    const float t[] = {10.1f, 9.9f, 10.1f, 9.9f};
    const float u[] = {12, 8, 12, 8};
    ns_grad_check r;
    assert_int_equal(ns_grad_check_run(u, t, 4, &r), NS_OK);
    assert_near(r.cosine, 400.8 / sqrt(400.04 * 416.0), 1e-6, "cosine");
    assert_near(r.magnitude, sqrt(416.0 / 400.04), 1e-6, "magnitude");
    assert_near(r.variance, 400.0, 0.01, "variance");
    assert_false(r.ok);
    assert_string_equal(r.why, "variance");
    const float flat[] = {3, 3, 3, 3}; /* a constant trusted vector: any spread is too much */
    assert_int_equal(ns_grad_check_run(u, flat, 4, &r), NS_OK);
    assert_true(r.variance == HUGE_VAL);
    assert_string_equal(r.why, "variance");
    assert_int_equal(ns_grad_check_run(flat, flat, 4, &r), NS_OK);
    assert_true(r.variance == 0.0);
    assert_true(r.ok);
}

static void test_grad_check_refuses_bad_input(void **state)
{
    (void)state;
    const float t[] = {1, 2};
    ns_grad_check r = {.ok = true, .why = "untouched"};
    assert_int_equal(ns_grad_check_run(t, t, 0, &r), NS_EINVAL);
    assert_int_equal(ns_grad_check_run((float[]){NAN, 1}, t, 2, &r), NS_EINVAL);
    assert_int_equal(ns_grad_check_run(t, (float[]){1, INFINITY}, 2, &r), NS_EINVAL);
    assert_int_equal(ns_grad_check_run(t, (float[]){0, 0}, 2, &r), NS_EINVAL);
    assert_int_equal(ns_grad_check_run(NULL, t, 2, &r), NS_EINVAL);
    assert_int_equal(ns_grad_check_run(t, NULL, 2, &r), NS_EINVAL);
    assert_string_equal(r.why, "untouched");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_parse_back_to_their_kind),
        cmocka_unit_test(test_default_config_is_trimmed_mean_with_the_s8_sigmas),
        cmocka_unit_test(test_mean_weighs_each_contribution),
        cmocka_unit_test(test_trimmed_mean_drops_the_ends_of_each_coordinate_and_weighs_the_rest),
        cmocka_unit_test(test_trimmed_mean_with_zero_trim_is_the_weighted_mean),
        cmocka_unit_test(test_trimmed_mean_share_is_not_lost_to_rounding),
        cmocka_unit_test(test_median_is_weighted_per_coordinate),
        cmocka_unit_test(test_median_of_an_even_count_is_the_lower_middle),
        cmocka_unit_test(test_krum_picks_a_member_of_the_honest_cluster),
        cmocka_unit_test(test_bulyan_averages_the_values_nearest_the_median_of_the_krum_choice),
        cmocka_unit_test(test_bulyan_falls_back_to_the_median_with_too_few_inputs),
        cmocka_unit_test(test_screen_rejects_the_far_and_flags_the_very_far_as_fraud),
        cmocka_unit_test(test_screen_of_an_even_count_takes_the_mean_of_the_middle_two),
        cmocka_unit_test(test_screen_of_three_honest_updates_accepts_them_all),
        cmocka_unit_test(test_screen_marks_non_finite_values_and_bad_weights_invalid),
        cmocka_unit_test(test_screen_rejects_nothing_below_three_valid_inputs),
        cmocka_unit_test(test_no_accepted_input_is_enoent_with_a_zero_result),
        cmocka_unit_test(test_sign_flips_pull_the_mean_but_not_the_robust_aggregators),
        cmocka_unit_test(test_default_screen_catches_sign_flips),
        cmocka_unit_test(test_runs_are_bit_for_bit_repeatable),
        cmocka_unit_test(test_run_refuses_bad_configs_and_arguments),
        cmocka_unit_test(test_grad_check_passes_a_faithful_update),
        cmocka_unit_test(test_grad_check_fails_on_direction),
        cmocka_unit_test(test_grad_check_fails_on_magnitude),
        cmocka_unit_test(test_grad_check_fails_on_variance),
        cmocka_unit_test(test_grad_check_refuses_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
