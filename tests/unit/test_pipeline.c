/*
 * test_pipeline.c: the pipeline core (src/pipeline/): the 1F1B order of every stage, the bound on
 * micro-batches in flight, every refusal, and the central claim: three stages driven by the core,
 * with their messages delivered in random orders, train to the same losses and the same weights,
 * bit for bit, as one process holding the whole model (reproducible mode).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <math.h>

#include "neuroshard/exec.h"
#include "neuroshard/pipeline.h"
#include "neuroshard/wire.h"

static ns_pipe *pipe_of(uint32_t s, uint32_t S, uint32_t m)
{
    ns_pipe_config cfg = {.stage = s, .stages = S, .micro_batches = m};
    ns_pipe *p;
    assert_int_equal(ns_pipe_new(&p, &cfg, 0), NS_OK);
    return p;
}

/* Appends op to out as "F0", "B3", "N0" or "U0", after a space unless out is empty. */
static void append_op(char *out, size_t size, const ns_pipe_op *op)
{
    char word[16];
    snprintf(word, sizeof word, "%s%s%u", out[0] != '\0' ? " " : "",
             op->kind == NS_PIPE_FORWARD    ? "F"
             : op->kind == NS_PIPE_BACKWARD ? "B"
             : op->kind == NS_PIPE_NORM     ? "N"
                                            : "U",
             op->kind <= NS_PIPE_BACKWARD ? op->micro : 0);
    strncat(out, word, size - strlen(out) - 1);
}

/* Runs one step of stage s with every input there when asked; writes "F0 F1 B0 ..." to out. */
static void one_step_order(uint32_t s, uint32_t S, uint32_t m, char *out, size_t size)
{
    ns_pipe *p = pipe_of(s, S, m);
    out[0] = '\0';
    uint32_t in_flight_max = 0;
    for (int guard = 0; guard < 1000; guard++) {
        ns_pipe_op op;
        ns_pipe_next(p, &op);
        if (op.kind == NS_PIPE_WAIT) {
            /* hand it what it waits for */
            ns_pipe_op want;
            int accepted = 0; /* refusals (not yet forwarded, repeats) are expected here */
            for (uint32_t i = 0; i < m; i++) {
                accepted += ns_pipe_on_activation(p, 0, i, NULL) == NS_OK;
                accepted += ns_pipe_on_gradient(p, 0, i, NULL) == NS_OK;
            }
            accepted += ns_pipe_on_norm(p, 0, 1.0, NULL) == NS_OK;
            accepted += ns_pipe_on_scale(p, 0, 1.0f, NULL) == NS_OK;
            assert_true(accepted > 0);
            ns_pipe_next(p, &want);
            assert_int_not_equal(want.kind, NS_PIPE_WAIT);
            continue;
        }
        append_op(out, size, &op);
        if (op.kind == NS_PIPE_NORM && s + 1 == S)
            ns_pipe_scale(p, 0.5f);
        ns_pipe_done(p, &op);
        if (ns_pipe_in_flight(p) > in_flight_max)
            in_flight_max = ns_pipe_in_flight(p);
        if (op.kind == NS_PIPE_UPDATE)
            break;
    }
    ns_pipe_config cfg = {.stage = s, .stages = S, .micro_batches = m};
    assert_int_equal(in_flight_max, ns_pipe_in_flight_max(&cfg));
    assert_int_equal(ns_pipe_step(p), 1);
    ns_pipe_free(p);
}

static void test_each_stage_runs_one_forward_one_backward(void **state)
{
    (void)state;
    char order[256];
    one_step_order(0, 3, 4, order, sizeof order);
    assert_string_equal(order, "F0 F1 F2 B0 F3 B1 B2 B3 N0 U0");
    one_step_order(1, 3, 4, order, sizeof order);
    assert_string_equal(order, "F0 F1 B0 F2 B1 F3 B2 B3 N0 U0");
    one_step_order(2, 3, 4, order, sizeof order);
    assert_string_equal(order, "F0 B0 F1 B1 F2 B2 F3 B3 N0 U0");
    /* more stages than micro-batches: fill with all of them, then drain */
    one_step_order(0, 4, 2, order, sizeof order);
    assert_string_equal(order, "F0 F1 B0 B1 N0 U0");
    /* one stage: the solo case */
    one_step_order(0, 1, 3, order, sizeof order);
    assert_string_equal(order, "F0 B0 F1 B1 F2 B2 N0 U0");
}

/* Stage 0 of 2, six micro-batches, each gradient handed over only once the stage waits for it:
 * strict 1F1B idles at every backward; with run_ahead 2 the stage fills that wait with the next
 * forwards (the whitepaper's "F0 F1 F2 F3 B0 F4 B1 F5 ..."), holding at most 2 + 2. */
static void late_gradients_order(uint32_t run_ahead, char *out, size_t size, uint32_t *held)
{
    ns_pipe_config cfg = {.stage = 0, .stages = 2, .micro_batches = 6, .run_ahead = run_ahead};
    ns_pipe *p;
    assert_int_equal(ns_pipe_new(&p, &cfg, 0), NS_OK);
    out[0] = '\0';
    *held = 0;
    for (int guard = 0; guard < 100; guard++) {
        ns_pipe_op op;
        ns_pipe_next(p, &op);
        if (op.kind == NS_PIPE_WAIT) {
            if (op.awaits == NS_PIPE_IN_GRAD) {
                assert_int_equal(ns_pipe_on_gradient(p, 0, op.micro, NULL), NS_OK);
            } else {
                assert_int_equal(op.awaits, NS_PIPE_IN_SCALE);
                assert_int_equal(ns_pipe_on_scale(p, 0, 1.0f, NULL), NS_OK);
            }
            continue;
        }
        append_op(out, size, &op);
        ns_pipe_done(p, &op);
        if (ns_pipe_in_flight(p) > *held)
            *held = ns_pipe_in_flight(p);
        if (op.kind == NS_PIPE_UPDATE)
            break;
    }
    assert_int_equal(ns_pipe_step(p), 1);
    assert_int_equal(ns_pipe_ran_ahead(p), run_ahead == 0 ? 0 : 4);
    ns_pipe_free(p);
}

static void test_forwards_run_ahead_of_a_late_gradient(void **state)
{
    (void)state;
    char order[256];
    uint32_t held;
    late_gradients_order(0, order, sizeof order, &held);
    assert_string_equal(order, "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5 N0 U0");
    assert_int_equal(held, 2);
    late_gradients_order(2, order, sizeof order, &held);
    assert_string_equal(order, "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 N0 U0");
    assert_int_equal(held, 4);
    ns_pipe_config cfg = {.stage = 0, .stages = 2, .micro_batches = 6, .run_ahead = 2};
    assert_int_equal(ns_pipe_in_flight_max(&cfg), 4);
    cfg.run_ahead = 9; /* never more than the step's micro-batches */
    assert_int_equal(ns_pipe_in_flight_max(&cfg), 6);
    cfg.run_ahead = NS_PIPE_MICRO_MAX + 1;
    ns_pipe *p;
    assert_int_equal(ns_pipe_new(&p, &cfg, 0), NS_EINVAL);
}

/* Every (s, S, m) up to 6 x 6: each micro-batch forward once then backward once, backwards in
 * order, never more in flight than min(S - s, m). */
static void test_every_shape_keeps_its_bounds(void **state)
{
    (void)state;
    char order[1024];
    for (uint32_t S = 1; S <= 6; S++)
        for (uint32_t s = 0; s < S; s++)
            for (uint32_t m = 1; m <= 6; m++) {
                one_step_order(s, S, m, order, sizeof order);
                uint32_t next_b = 0, f_seen = 0;
                for (char *w = strtok(order, " "); w != NULL; w = strtok(NULL, " ")) {
                    uint32_t i = (uint32_t)atoi(w + 1);
                    if (w[0] == 'F')
                        assert_int_equal(i, f_seen++);
                    if (w[0] == 'B') {
                        assert_int_equal(i, next_b++);
                        assert_true(i < f_seen);
                    }
                }
                assert_int_equal(f_seen, m);
                assert_int_equal(next_b, m);
            }
}

static void test_inputs_that_do_not_belong_are_refused(void **state)
{
    (void)state;
    ns_pipe *first = pipe_of(0, 3, 2), *mid = pipe_of(1, 3, 2), *last = pipe_of(2, 3, 2);
    ns_pipe_refusal why;
    /* the initiator takes no activations, the finisher no gradients */
    assert_int_equal(ns_pipe_on_activation(first, 0, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_UNASKED);
    assert_int_equal(ns_pipe_on_gradient(last, 0, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_UNASKED);
    /* an index beyond m, a step beyond the next */
    assert_int_equal(ns_pipe_on_activation(mid, 0, 2, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_BAD_INDEX);
    assert_int_equal(ns_pipe_on_activation(mid, 2, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_EARLY);
    /* the next step's activation is kept; a repeat of it is not */
    assert_int_equal(ns_pipe_on_activation(mid, 1, 0, &why), NS_OK);
    assert_int_equal(ns_pipe_on_activation(mid, 1, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_DUPLICATE);
    /* a gradient for a micro-batch this stage never sent */
    assert_int_equal(ns_pipe_on_gradient(mid, 0, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_UNASKED);
    assert_int_equal(ns_pipe_on_activation(mid, 0, 0, &why), NS_OK);
    ns_pipe_op op;
    ns_pipe_next(mid, &op);
    assert_int_equal(op.kind, NS_PIPE_FORWARD);
    ns_pipe_done(mid, &op);
    assert_int_equal(ns_pipe_on_gradient(mid, 0, 0, &why), NS_OK);
    assert_int_equal(ns_pipe_on_gradient(mid, 0, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_DUPLICATE);
    /* norms and scales: never negative or NaN, never above 1, never twice */
    assert_int_equal(ns_pipe_on_norm(mid, 0, -1.0, &why), NS_EINVAL);
    assert_int_equal(ns_pipe_on_scale(mid, 0, 1.5f, &why), NS_EINVAL);
    assert_int_equal(ns_pipe_on_norm(first, 0, 1.0, &why), NS_EINVAL);
    assert_int_equal(ns_pipe_on_scale(last, 0, 1.0f, &why), NS_EINVAL);
    assert_int_equal(ns_pipe_on_norm(mid, 0, 2.0, &why), NS_OK);
    assert_int_equal(ns_pipe_on_norm(mid, 0, 2.0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_DUPLICATE);
    assert_int_equal(ns_pipe_refused(mid, NS_PIPE_DUPLICATE), 3);
    assert_string_equal(ns_pipe_refusal_name(NS_PIPE_LATE), "late");
    ns_pipe_free(first);
    ns_pipe_free(mid);
    ns_pipe_free(last);
    /* bad configurations */
    ns_pipe *p;
    ns_pipe_config bad[] = {{.stage = 3, .stages = 3, .micro_batches = 1},
                            {.stage = 0, .stages = 0, .micro_batches = 1},
                            {.stage = 0, .stages = 1, .micro_batches = 0},
                            {.stage = 0, .stages = 1, .micro_batches = NS_PIPE_MICRO_MAX + 1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ns_pipe_new(&p, &bad[i], 0), NS_EINVAL);
}

static void test_micro_batch_rows_and_bubble(void **state)
{
    (void)state;
    /* S6: 64 KiB on the wire per micro-batch bounds the rows; at least one; a divisor of B */
    assert_int_equal(ns_pipe_micro_rows(1ull << 30, 1000, 128, 64, 8), 2);
    assert_int_equal(ns_pipe_micro_rows(1ull << 30, 1000, 128, 512, 8), 1);
    assert_int_equal(ns_pipe_micro_rows(1ull << 30, 1000, 16, 64, 8), 8);
    assert_int_equal(ns_pipe_micro_rows(1ull << 30, 1000, 16, 64, 6), 6);
    assert_int_equal(ns_pipe_micro_rows(1ull << 30, 1000, 48, 64, 6), 3); /* 5 -> 4 -> 3 */
    assert_int_equal(ns_pipe_micro_rows(10000, 1000, 16, 64, 8), 1);      /* memory-bound */
    assert_true(ns_pipe_bubble_fraction(1, 8) == 0.0);
    assert_true(ns_pipe_bubble_fraction(3, 4) == 2.0 / 6.0);
}

/* The split balances the slowest stage, counting the head on the last one. */
static void test_split_balances_the_slowest_stage(void **state)
{
    (void)state;
    uint32_t b[8];
    /* no head: equal shares */
    assert_int_equal(ns_pipe_split(6, 3, 0, 0, b), NS_OK);
    assert_int_equal(b[0], 0);
    assert_int_equal(b[1], 2);
    assert_int_equal(b[2], 4);
    assert_int_equal(b[3], 6);
    /* 8 layers, a head worth 1.33 layers: 5 | 3 + head (4.33) beats 4 | 4 + head (5.33) */
    assert_int_equal(ns_pipe_split(8, 2, 1333, 0, b), NS_OK);
    assert_int_equal(b[1], 5);
    /* a heavy head: the last stage keeps one layer, the others share the rest as evenly as they
     * can (2 | 3 and 3 | 2 tie: the first found wins) */
    assert_int_equal(ns_pipe_split(6, 3, 5333, 0, b), NS_OK);
    assert_int_equal(b[1], 2);
    assert_int_equal(b[2], 5);
    assert_int_equal(b[3], 6);
    /* one layer a stage when there are as many stages as layers */
    assert_int_equal(ns_pipe_split(3, 3, 10000, 0, b), NS_OK);
    assert_int_equal(b[1], 1);
    assert_int_equal(b[2], 2);
    /* the embedding's cost moves layers off the first stage */
    assert_int_equal(ns_pipe_split(4, 2, 0, 2000, b), NS_OK);
    assert_int_equal(b[1], 1);
    /* refused: no stages, more stages than layers */
    assert_int_equal(ns_pipe_split(4, 0, 0, 0, b), NS_EINVAL);
    assert_int_equal(ns_pipe_split(2, 3, 0, 0, b), NS_EINVAL);
}

/* A waiting stage names what it waits for and from whom, so that it can ask for it again. */
static void test_a_wait_names_the_input_awaited(void **state)
{
    (void)state;
    ns_pipe *p = pipe_of(1, 3, 2); /* a processor: F0 F1 B0 B1 N U */
    ns_pipe_op op;
    ns_pipe_next(p, &op);
    assert_int_equal(op.kind, NS_PIPE_WAIT);
    assert_int_equal(op.awaits, NS_PIPE_IN_ACT);
    assert_int_equal(op.micro, 0);
    assert_int_equal(ns_pipe_input_from(op.awaits), -1);
    assert_int_equal(ns_pipe_on_activation(p, 0, 0, NULL), NS_OK);
    ns_pipe_next(p, &op);
    ns_pipe_done(p, &op); /* F0 */
    ns_pipe_next(p, &op);
    assert_int_equal(op.awaits, NS_PIPE_IN_ACT);
    assert_int_equal(op.micro, 1);
    assert_int_equal(ns_pipe_on_activation(p, 0, 1, NULL), NS_OK);
    ns_pipe_next(p, &op);
    ns_pipe_done(p, &op); /* F1 */
    ns_pipe_next(p, &op);
    assert_int_equal(op.kind, NS_PIPE_WAIT);
    assert_int_equal(op.awaits, NS_PIPE_IN_GRAD);
    assert_int_equal(op.micro, 0);
    assert_int_equal(ns_pipe_input_from(op.awaits), +1);
    /* the gradient arrives twice (a resend crossed the first): kept once, refused once */
    ns_pipe_refusal why;
    assert_int_equal(ns_pipe_on_gradient(p, 0, 0, &why), NS_OK);
    assert_int_equal(ns_pipe_on_gradient(p, 0, 0, &why), NS_EINVAL);
    assert_int_equal(why, NS_PIPE_DUPLICATE);
    for (int k = 0; k < 2; k++) {
        ns_pipe_next(p, &op);
        if (op.kind == NS_PIPE_WAIT) {
            assert_int_equal(op.awaits, NS_PIPE_IN_GRAD);
            assert_int_equal(op.micro, 1);
            assert_int_equal(ns_pipe_on_gradient(p, 0, 1, NULL), NS_OK);
            ns_pipe_next(p, &op);
        }
        assert_int_equal(op.kind, NS_PIPE_BACKWARD);
        ns_pipe_done(p, &op);
    }
    ns_pipe_next(p, &op);
    assert_int_equal(op.awaits, NS_PIPE_IN_NORM);
    assert_int_equal(ns_pipe_on_norm(p, 0, 2.0, NULL), NS_OK);
    ns_pipe_next(p, &op);
    ns_pipe_done(p, &op); /* N */
    ns_pipe_next(p, &op);
    assert_int_equal(op.kind, NS_PIPE_WAIT);
    assert_int_equal(op.awaits, NS_PIPE_IN_SCALE);
    assert_int_equal(ns_pipe_input_from(op.awaits), +1);
    assert_int_equal(ns_pipe_input_from(NS_PIPE_IN_NONE), 0);
    assert_int_equal(ns_pipe_refused(p, NS_PIPE_DUPLICATE), 1);
    ns_pipe_free(p);
}

/* ---- the frames -------------------------------------------------------------------------- */

static void test_resend_frames_round_trip_and_refuse_what_names_nothing(void **state)
{
    (void)state;
    ns_pipe_msg m = {.type = NS_FRAME_PIPE_RESEND,
                     .step = 77,
                     .generation = 3,
                     .micro = 5,
                     .awaits = NS_PIPE_IN_GRAD};
    uint8_t body[64];
    ns_frame f;
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(f.type, NS_FRAME_PIPE_RESEND);
    assert_int_equal(f.body_len, ns_pipe_msg_body_bytes(&m));
    ns_pipe_msg back;
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_OK);
    assert_true(back.step == 77);
    assert_int_equal(back.generation, 3);
    assert_int_equal(back.micro, 5);
    assert_int_equal(back.awaits, NS_PIPE_IN_GRAD);
    /* an input that is none, a micro-batch beyond the limit, a body of another length */
    m.awaits = NS_PIPE_IN_NONE;
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    m.awaits = (ns_pipe_input)5;
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    m.awaits = NS_PIPE_IN_SCALE;
    m.micro = NS_PIPE_MICRO_MAX;
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    m.micro = 0;
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_OK);
    f.body_len--;
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    /* ALIVE, the answer of the asked stage's network thread: the same body, checked alike */
    m = (ns_pipe_msg){.type = NS_FRAME_PIPE_ALIVE,
                      .step = 78,
                      .generation = 4,
                      .micro = 2,
                      .awaits = NS_PIPE_IN_ACT};
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(f.type, NS_FRAME_PIPE_ALIVE);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_OK);
    assert_int_equal(back.type, NS_FRAME_PIPE_ALIVE);
    assert_true(back.step == 78);
    assert_int_equal(back.generation, 4);
    assert_int_equal(back.micro, 2);
    assert_int_equal(back.awaits, NS_PIPE_IN_ACT);
    m.awaits = NS_PIPE_IN_NONE;
    ns_pipe_msg_frame(&m, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
}

static void test_frames_round_trip_and_refuse_what_would_poison_a_stage(void **state)
{
    (void)state;
    float acts[2 * 3 * 4];
    for (size_t i = 0; i < 24; i++)
        acts[i] = (float)i * 0.5f - 3.0f;
    int32_t targets[6] = {1, 2, 3, -1, 5, 66};
    ns_pipe_msg m = {.type = NS_FRAME_PIPE_ACT,
                     .step = 1ull << 40,
                     .micro = 3,
                     .rows = 2,
                     .seq_len = 3,
                     .hidden = 4,
                     .data = acts};
    uint8_t body[256];
    ns_frame f;
    ns_pipe_msg_frame(&m, targets, body, &f);
    assert_int_equal(f.body_len, ns_pipe_msg_body_bytes(&m));
    ns_pipe_msg back;
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_OK);
    assert_true(back.step == m.step);
    assert_int_equal(back.micro, 3);
    assert_int_equal(back.rows * back.seq_len * back.hidden, 24);
    assert_memory_equal(back.data, acts, sizeof acts);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(ns_pipe_msg_target(&back, i), targets[i]);
    /* a shape that does not match, a body cut short, another dtype */
    ns_frame bad = f;
    bad.tensor.shape[2] = 5;
    assert_int_equal(ns_pipe_msg_parse(&bad, &back), NS_EPARSE);
    bad = f;
    bad.body_len--;
    assert_int_equal(ns_pipe_msg_parse(&bad, &back), NS_EPARSE);
    bad = f;
    bad.tensor.dtype = NS_DTYPE_I32;
    assert_int_equal(ns_pipe_msg_parse(&bad, &back), NS_EPARSE);
    /* a NaN or an infinity in the activations, a target below -1 */
    acts[7] = NAN;
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    acts[7] = INFINITY;
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    acts[7] = 0.0f;
    targets[2] = -2;
    ns_pipe_msg_frame(&m, targets, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    /* a micro-batch index, rows or a width beyond the limits */
    targets[2] = 0;
    m.micro = NS_PIPE_MICRO_MAX;
    ns_pipe_msg_frame(&m, targets, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    /* norms and scales */
    ns_pipe_msg n = {.type = NS_FRAME_PIPE_NORM, .step = 9, .norm = 12.5};
    ns_pipe_msg_frame(&n, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_OK);
    assert_true(back.norm == 12.5);
    n.norm = -1.0;
    ns_pipe_msg_frame(&n, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    n.norm = NAN;
    ns_pipe_msg_frame(&n, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    ns_pipe_msg sc = {.type = NS_FRAME_PIPE_SCALE, .step = 9, .scale = 0.25f};
    ns_pipe_msg_frame(&sc, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_OK);
    assert_true(back.scale == 0.25f);
    sc.scale = 1.5f;
    ns_pipe_msg_frame(&sc, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    sc.scale = 0.0f;
    ns_pipe_msg_frame(&sc, NULL, body, &f);
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
    /* a type that is not the pipeline's */
    f.type = NS_FRAME_PROOF;
    assert_int_equal(ns_pipe_msg_parse(&f, &back), NS_EPARSE);
}

/* ---- three stages against the whole model ------------------------------------------------- */

#define L     3
#define B     4
#define T     8
#define V     67
#define C     64
#define M     4 /* micro-batches a step: more than stages, so forwards can run ahead */
#define ROWS  (B / M)
#define STEPS 3

static ns_stage_config stage_cfg(uint32_t first, uint32_t last, uint32_t slots)
{
    return (ns_stage_config){.arch = {.layers = L,
                                      .hidden = C,
                                      .heads = 1,
                                      .kv_heads = 1,
                                      .intermediate = 192,
                                      .vocab = V,
                                      .seq_len_max = T},
                             .layer_first = first,
                             .layer_last = last,
                             .batch_max = ROWS,
                             .seq_len_max = T,
                             .micro_batches_max = slots};
}

/* Clipping below the gradients' norm, so that the scale depends on the exact sum of squares. */
static ns_optim_config optim_of(void)
{
    ns_optim_config optim;
    ns_optim_config_default(&optim);
    optim.warmup_steps = 1;
    optim.lr_max = 1e-2;
    optim.grad_clip = 0.05;
    return optim;
}

static void batch_of(uint64_t step, int32_t *tokens, int32_t *targets)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (step + 1);
    for (size_t i = 0; i < B * T; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokens[i] = (int32_t)(x % V);
        targets[i] = (tokens[i] * 7 + 3) % V; /* learnable: a function of the token */
    }
}

typedef enum msg_kind { MSG_ACT, MSG_GRAD, MSG_NORM, MSG_SCALE } msg_kind;

typedef struct msg {
    msg_kind kind;
    uint32_t to;
    uint64_t step;
    uint32_t micro;
    float *acts; /* [ROWS,T,C] */
    int32_t targets[ROWS * T];
    double norm;
    float scale;
} msg;

#define MSGS_MAX 64

typedef struct member {
    ns_stage *st;
    ns_pipe *p;
    float *in[2][M]; /* activations (or gradients) that arrived, by step parity */
    float *grad_in[M];
    int32_t targets[2][M][ROWS * T];
    float losses[M];
} member;

static void post(msg *q, size_t *n, msg m)
{
    assert_true(*n < MSGS_MAX);
    q[(*n)++] = m;
}

static void run_op(member *mb, uint32_t s, uint32_t S, const ns_pipe_op *op,
                   const ns_optim_config *optim, msg *q, size_t *n, float *step_loss)
{
    size_t act = (size_t)ROWS * T * C;
    uint32_t i = op->micro;
    member *me = &mb[s];
    if (op->kind == NS_PIPE_FORWARD) {
        int32_t tokens[B * T], targets[B * T];
        batch_of(op->step, tokens, targets);
        const int32_t *tg = s == 0 ? targets + i * ROWS * T : me->targets[op->step & 1][i];
        ns_stage_input in = {.batch = ROWS,
                             .seq_len = T,
                             .tokens = s == 0 ? tokens + i * ROWS * T : NULL,
                             .acts = s == 0 ? NULL : me->in[op->step & 1][i],
                             .targets = s + 1 == S ? tg : NULL};
        float *out = malloc(act * sizeof *out);
        assert_int_equal(ns_stage_forward(me->st, i, &in, out), NS_OK);
        if (s > 0) {
            free(me->in[op->step & 1][i]);
            me->in[op->step & 1][i] = NULL;
        }
        if (s + 1 < S) {
            msg m = {.kind = MSG_ACT, .to = s + 1, .step = op->step, .micro = i, .acts = out};
            memcpy(m.targets, tg, sizeof m.targets);
            post(q, n, m);
        } else {
            me->losses[i] = out[0];
            free(out);
        }
    } else if (op->kind == NS_PIPE_BACKWARD) {
        float one_over_m = 1.0f / M;
        float *dinp = s > 0 ? malloc(act * sizeof *dinp) : NULL;
        const float *dout = s + 1 == S ? &one_over_m : me->grad_in[i];
        assert_int_equal(ns_stage_backward(me->st, i, dout, dinp), NS_OK);
        free(me->grad_in[i]);
        me->grad_in[i] = NULL;
        if (s > 0)
            post(q, n,
                 (msg){.kind = MSG_GRAD, .to = s - 1, .step = op->step, .micro = i, .acts = dinp});
    } else if (op->kind == NS_PIPE_NORM) {
        double sum = ns_stage_grad_sq_sum_from(me->st, op->norm_in);
        if (s + 1 < S) {
            post(q, n, (msg){.kind = MSG_NORM, .to = s + 1, .step = op->step, .norm = sum});
        } else {
            ns_pipe_scale(me->p, ns_optim_clip_scale(optim, sum));
            float loss = 0.0f;
            for (uint32_t k = 0; k < M; k++)
                loss += me->losses[k] / M;
            step_loss[op->step] = loss;
        }
    } else {
        if (s > 0)
            post(q, n, (msg){.kind = MSG_SCALE, .to = s - 1, .step = op->step, .scale = op->scale});
        ns_stage_adamw_step(me->st, optim, op->scale);
    }
}

static void deliver(member *mb, msg *m)
{
    member *me = &mb[m->to];
    int rc = NS_OK;
    switch (m->kind) {
    case MSG_ACT:
        rc = ns_pipe_on_activation(me->p, m->step, m->micro, NULL);
        me->in[m->step & 1][m->micro] = m->acts;
        memcpy(me->targets[m->step & 1][m->micro], m->targets, sizeof m->targets);
        break;
    case MSG_GRAD:
        rc = ns_pipe_on_gradient(me->p, m->step, m->micro, NULL);
        me->grad_in[m->micro] = m->acts;
        break;
    case MSG_NORM:
        rc = ns_pipe_on_norm(me->p, m->step, m->norm, NULL);
        break;
    case MSG_SCALE:
        rc = ns_pipe_on_scale(me->p, m->step, m->scale, NULL);
        break;
    }
    assert_int_equal(rc, NS_OK);
}

/* Three stages on one executor, messages delivered in an order drawn from seed; each stage may
 * run run_ahead forwards beyond 1F1B's. *ran_ahead: how many forwards did. */
static void run_pipeline(ns_exec *ex, uint64_t seed, uint32_t run_ahead, float *losses,
                         ns_stage *out[3], uint64_t *ran_ahead)
{
    const uint32_t S = 3;
    member mb[3];
    memset(mb, 0, sizeof mb);
    ns_optim_config optim = optim_of();
    for (uint32_t s = 0; s < S; s++) {
        ns_stage_config cfg = stage_cfg(s, s + 1, M);
        assert_int_equal(ns_stage_new(&mb[s].st, ex, &cfg), NS_OK);
        ns_stage_init(mb[s].st, 7);
        ns_pipe_config pc = {.stage = s, .stages = S, .micro_batches = M, .run_ahead = run_ahead};
        assert_int_equal(ns_pipe_new(&mb[s].p, &pc, 0), NS_OK);
    }
    msg q[MSGS_MAX];
    size_t n = 0;
    uint64_t x = seed;
    for (int guard = 0; guard < 100000; guard++) {
        bool all_done = true;
        for (uint32_t s = 0; s < S; s++)
            all_done = all_done && ns_pipe_step(mb[s].p) == STEPS;
        if (all_done)
            break;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t pick = (uint32_t)(x >> 33);
        if (n > 0 && pick % 2 == 0) {
            size_t k = (pick / 2) % n;
            msg m = q[k];
            q[k] = q[--n];
            deliver(mb, &m);
            continue;
        }
        uint32_t s = (pick / 2) % S;
        ns_pipe_op op;
        ns_pipe_next(mb[s].p, &op);
        if (op.kind == NS_PIPE_WAIT || op.step >= STEPS)
            continue;
        run_op(mb, s, S, &op, &optim, q, &n, losses);
        ns_pipe_done(mb[s].p, &op);
    }
    assert_int_equal(n, 0);
    *ran_ahead = 0;
    for (uint32_t s = 0; s < S; s++) {
        assert_int_equal(ns_pipe_step(mb[s].p), STEPS);
        *ran_ahead += ns_pipe_ran_ahead(mb[s].p);
        ns_pipe_free(mb[s].p);
        out[s] = mb[s].st;
    }
}

static void run_whole(ns_exec *ex, float *losses, ns_stage **out)
{
    ns_stage_config cfg = stage_cfg(0, L, M);
    ns_stage *st;
    assert_int_equal(ns_stage_new(&st, ex, &cfg), NS_OK);
    ns_stage_init(st, 7);
    ns_optim_config optim = optim_of();
    for (uint64_t step = 0; step < STEPS; step++) {
        int32_t tokens[B * T], targets[B * T];
        batch_of(step, tokens, targets);
        float loss = 0.0f, one_over_m = 1.0f / M;
        for (uint32_t i = 0; i < M; i++) {
            ns_stage_input in = {.batch = ROWS,
                                 .seq_len = T,
                                 .tokens = tokens + i * ROWS * T,
                                 .targets = targets + i * ROWS * T};
            float l;
            assert_int_equal(ns_stage_forward(st, i, &in, &l), NS_OK);
            assert_int_equal(ns_stage_backward(st, i, &one_over_m, NULL), NS_OK);
            loss += l / M;
        }
        losses[step] = loss;
        ns_optim_report rep;
        ns_stage_optimize(st, &optim, &rep);
        assert_true(rep.clip_scale < 1.0f);
    }
    *out = st;
}

static void test_three_stages_train_like_one_process_bit_for_bit(void **state)
{
    (void)state;
    ns_exec *ex;
    assert_int_equal(ns_exec_new(&ex, 2, NS_EXEC_REPRODUCIBLE), NS_OK);
    float whole_loss[STEPS];
    ns_stage *whole;
    run_whole(ex, whole_loss, &whole);
    assert_true(whole_loss[STEPS - 1] < whole_loss[0]); /* it learns */
    size_t whole_n;
    const ns_named_tensor *wp = ns_stage_params(whole, &whole_n);
    uint64_t ran_ahead_total = 0;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        float pipe_loss[STEPS];
        ns_stage *parts[3];
        uint64_t ran_ahead = 0;
        uint32_t run_ahead = seed % 2 == 0 ? M : 0; /* strict 1F1B, then running ahead */
        run_pipeline(ex, seed, run_ahead, pipe_loss, parts, &ran_ahead);
        if (run_ahead == 0)
            assert_int_equal(ran_ahead, 0);
        ran_ahead_total += ran_ahead;
        assert_memory_equal(pipe_loss, whole_loss, sizeof pipe_loss);
        size_t matched = 0;
        for (int s = 0; s < 3; s++) {
            size_t n;
            const ns_named_tensor *pp = ns_stage_params(parts[s], &n);
            for (size_t k = 0; k < n; k++) {
                for (size_t w = 0; w < whole_n; w++) {
                    if (strcmp(wp[w].name, pp[k].name) != 0)
                        continue;
                    uint64_t count = ns_tensor_numel(&pp[k].tensor);
                    assert_int_equal(count, ns_tensor_numel(&wp[w].tensor));
                    assert_memory_equal(pp[k].tensor.data, wp[w].tensor.data,
                                        count * sizeof(float));
                    matched++;
                }
            }
            ns_stage_free(parts[s]);
        }
        assert_int_equal(matched, whole_n);
    }
    assert_true(ran_ahead_total > 0); /* the random orders did make gradients late */
    ns_stage_free(whole);
    ns_exec_free(ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_stage_runs_one_forward_one_backward),
        cmocka_unit_test(test_every_shape_keeps_its_bounds),
        cmocka_unit_test(test_forwards_run_ahead_of_a_late_gradient),
        cmocka_unit_test(test_inputs_that_do_not_belong_are_refused),
        cmocka_unit_test(test_a_wait_names_the_input_awaited),
        cmocka_unit_test(test_resend_frames_round_trip_and_refuse_what_names_nothing),
        cmocka_unit_test(test_micro_batch_rows_and_bubble),
        cmocka_unit_test(test_split_balances_the_slowest_stage),
        cmocka_unit_test(test_frames_round_trip_and_refuse_what_would_poison_a_stage),
        cmocka_unit_test(test_three_stages_train_like_one_process_bit_for_bit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
