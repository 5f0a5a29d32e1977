/*
 * pipeline.h: the schedule of one pipeline stage (SPEC S6), a sans-IO core.
 *
 * A quorum's S stages each hold a contiguous layer range; stage 0 (the initiator) reads the data
 * and holds the embedding, stage S-1 (the finisher) holds the head and computes the loss. One
 * training step is m micro-batches. Each stage runs the one-forward-one-backward (1F1B) order:
 * min(S-1-s, m) forwards to fill the pipe, then a forward and a backward in turn, then the
 * remaining backwards, so that stage s never holds more than S-s micro-batches' activations.
 * With run_ahead > 0 a stage whose next backward waits for its gradient does not idle: it runs
 * the next forward instead (in micro-batch order, while its input is there), holding up to
 * run_ahead more micro-batches than 1F1B does. This is S6's "interleaved" 1F1B of the
 * whitepaper (forwards run ahead of backwards to hide the links' latency behind compute): the
 * forwards and the backwards each still run in micro-batch order, so the bits do not change.
 * After its last backward a stage adds its squared gradients to the running sum it receives
 * from stage s-1 and passes it on (NORM); the finisher turns the whole model's sum into the
 * clipping scale, which travels back stage to stage (SCALE) and lets every stage update. The sum
 * and the backward order are those of one process holding the whole model, so a pipeline's
 * weights equal the one-process model's bit for bit in the reproducible mode.
 *
 * The core decides only what to compute next and what may be accepted: the caller holds the
 * tensors, runs the stage, moves frames, and tells the core what arrived and what was done.
 * Inputs for the next step may arrive before this stage has finished the current one (a faster
 * neighbour) and are kept; anything older, repeated or never asked for is refused and counted.
 */
#ifndef NEUROSHARD_PIPELINE_H
#define NEUROSHARD_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"

#ifndef NS_PIPE_STAGES_MAX
#define NS_PIPE_STAGES_MAX 64
#endif
#ifndef NS_PIPE_MICRO_MAX
#define NS_PIPE_MICRO_MAX 64 /* micro-batches a step */
#endif

typedef struct ns_pipe_config {
    uint32_t stage;         /* s, 0..stages-1 */
    uint32_t stages;        /* S, 1..NS_PIPE_STAGES_MAX */
    uint32_t micro_batches; /* m, 1..NS_PIPE_MICRO_MAX */
    uint32_t run_ahead;     /* micro-batches a stage may hold beyond 1F1B's min(S-s, m) while
                               its next backward waits; 0: strict 1F1B */
} ns_pipe_config;

typedef enum ns_pipe_op_kind {
    NS_PIPE_WAIT = 0,     /* nothing can be done until something arrives */
    NS_PIPE_FORWARD = 1,  /* forward micro-batch `micro`; then send ACT to s+1 (unless finisher) */
    NS_PIPE_BACKWARD = 2, /* backward of `micro`; then send GRAD to s-1 (unless initiator) */
    NS_PIPE_NORM = 3,     /* sum squared gradients from norm_in; send NORM to s+1 (the finisher:
                             turn the sum into the clip scale and call ns_pipe_scale) */
    NS_PIPE_UPDATE = 4,   /* the optimizer step with `scale`; send SCALE to s-1 first */
} ns_pipe_op_kind;

/* The inputs a stage takes from its neighbours: ACT and NORM from the stage before, GRAD and
 * SCALE from the stage after. */
typedef enum ns_pipe_input {
    NS_PIPE_IN_NONE = 0,
    NS_PIPE_IN_ACT = 1,
    NS_PIPE_IN_GRAD = 2,
    NS_PIPE_IN_NORM = 3,
    NS_PIPE_IN_SCALE = 4,
} ns_pipe_input;

typedef struct ns_pipe_op {
    ns_pipe_op_kind kind;
    uint64_t step;
    uint32_t micro;       /* FORWARD, BACKWARD; WAIT: the micro-batch of the input awaited */
    double norm_in;       /* NORM: the running sum of stages before this one (0 at stage 0) */
    float scale;          /* UPDATE: the clipping scale of the whole model */
    ns_pipe_input awaits; /* WAIT: the input that would let the stage go on */
} ns_pipe_op;

/* Which neighbour sends an input: -1 the stage before, +1 the stage after (0 for none). */
int ns_pipe_input_from(ns_pipe_input in);

/* Why a message was refused; each is counted. */
typedef enum ns_pipe_refusal {
    NS_PIPE_DUPLICATE = 0, /* this input for this step and micro-batch came before */
    NS_PIPE_LATE = 1,      /* for a step this stage has finished */
    NS_PIPE_EARLY = 2,     /* for a step beyond the next one */
    NS_PIPE_UNASKED = 3,   /* a gradient for a micro-batch this stage never sent, or an input
                              this stage does not take (ACT at stage 0, GRAD at the finisher) */
    NS_PIPE_BAD_INDEX = 4, /* a micro-batch index >= m */
    NS_PIPE_REFUSALS_ = 5,
} ns_pipe_refusal;

typedef struct ns_pipe ns_pipe;

NS_MUST_USE int ns_pipe_new(ns_pipe **out, const ns_pipe_config *cfg, uint64_t first_step);
void ns_pipe_free(ns_pipe *p);
const ns_pipe_config *ns_pipe_config_of(const ns_pipe *p);
uint64_t ns_pipe_step(const ns_pipe *p); /* the step in progress */

/* What to do next (NS_PIPE_WAIT when it waits for an input). The same op is returned until
 * ns_pipe_done reports it done. */
void ns_pipe_next(const ns_pipe *p, ns_pipe_op *op);
/* The op returned by ns_pipe_next was done. After UPDATE the next step begins. */
void ns_pipe_done(ns_pipe *p, const ns_pipe_op *op);

/* Inputs. NS_OK: kept (the caller keeps its tensor until the op that uses it is done);
 * NS_EINVAL with *why set: refused, changes nothing. */
NS_MUST_USE int ns_pipe_on_activation(ns_pipe *p, uint64_t step, uint32_t micro,
                                      ns_pipe_refusal *why);
NS_MUST_USE int ns_pipe_on_gradient(ns_pipe *p, uint64_t step, uint32_t micro,
                                    ns_pipe_refusal *why);
NS_MUST_USE int ns_pipe_on_norm(ns_pipe *p, uint64_t step, double sum, ns_pipe_refusal *why);
NS_MUST_USE int ns_pipe_on_scale(ns_pipe *p, uint64_t step, float scale, ns_pipe_refusal *why);
/* The finisher's own clip scale, after its NORM. */
void ns_pipe_scale(ns_pipe *p, float scale);

uint64_t ns_pipe_refused(const ns_pipe *p, ns_pipe_refusal why);
const char *ns_pipe_refusal_name(ns_pipe_refusal why);
/* Micro-batches whose activations this stage holds (forward done, backward not yet). */
uint32_t ns_pipe_in_flight(const ns_pipe *p);
/* The most a stage ever holds: min(S - s + run_ahead, m) (1F1B's min(S - s, m) plus the run). */
uint32_t ns_pipe_in_flight_max(const ns_pipe_config *cfg);
/* Forwards this stage ran ahead of the 1F1B order because a gradient was late, since it began. */
uint64_t ns_pipe_ran_ahead(const ns_pipe *p);

/* Rows of a micro-batch for S6: min(memory_bytes / 10 / activation bytes a row,
 * 64 KiB / (seq_len * hidden * 4)), at least 1, at most batch, and a divisor of batch. */
uint32_t ns_pipe_micro_rows(uint64_t memory_bytes, uint64_t act_bytes_per_row, uint32_t seq_len,
                            uint32_t hidden, uint32_t batch);

/* Splits layers [0, layers) among stages so that the slowest stage is as fast as it can be:
 * every layer costs 1000, the last stage also pays head_cost (the LM head and the loss, in
 * thousandths of a layer: about 1000 * vocab / (12 * hidden) for a forward and backward), the
 * first embed_cost. bounds[0..stages] gets the boundaries (bounds[0] = 0, bounds[stages] =
 * layers, each stage at least one layer). Among equal splits, the one with the smallest sum of
 * squared stage costs, then the first in order. NS_EINVAL when stages is 0, above
 * NS_PIPE_STAGES_MAX or above layers, or layers above 4096. */
NS_MUST_USE int ns_pipe_split(uint32_t layers, uint32_t stages, uint64_t head_cost,
                              uint64_t embed_cost, uint32_t *bounds);

/* The bubble of 1F1B: (S - 1) / (m + S - 1) of each stage's time idle, with equal stages. */
double ns_pipe_bubble_fraction(uint32_t stages, uint32_t micro_batches);

/* ---- messages between stages (frames NS_FRAME_PIPE_*, wire.h) ----------------------------- */

/* A lost frame must not stall the pipeline (S6: resend after 200 ms without an answer). A stage
 * that has waited 200 ms for an input (ns_pipe_next's WAIT names it) sends RESEND to the
 * neighbour that owes it; the neighbour sends again every frame of that step, toward the asker,
 * from the awaited one on. The schedule refuses whatever came twice (NS_PIPE_DUPLICATE), so
 * nothing is ever applied twice. The neighbour's network thread also answers every RESEND at
 * once with ALIVE (the same body): a neighbour that sends neither frames nor ALIVE for seconds
 * of asking is hung or cut off, and the quorum replaces it with the next candidate for its
 * layers (S6's "no ACK: the next candidate"; swarm.c). */

#ifndef NS_PIPE_ROWS_MAX
#define NS_PIPE_ROWS_MAX 64
#endif
#ifndef NS_PIPE_SEQ_MAX
#define NS_PIPE_SEQ_MAX 4096
#endif
#ifndef NS_PIPE_HIDDEN_MAX
#define NS_PIPE_HIDDEN_MAX 16384
#endif
/* the targets ride in an ACT frame's header: rows * seq_len of them, 4 bytes each */
#define NS_PIPE_TARGETS_MAX ((64 * 1024 - 64) / 4)

typedef struct ns_frame ns_frame; /* wire.h */

/* One message of the pipeline, as carried by a frame: pointers into the frame's bytes. Integers
 * are big-endian in the body; the tensor is float32 in the host's (little-endian) order. */
typedef struct ns_pipe_msg {
    uint32_t type;       /* NS_FRAME_PIPE_ACT, _GRAD, _NORM, _SCALE, _RESEND or _ALIVE */
    uint32_t generation; /* of the quorum's membership: a restart after failover moves it on */
    uint64_t step;
    uint32_t micro;
    uint32_t rows, seq_len, hidden; /* ACT, GRAD: the tensor's shape [rows, seq_len, hidden] */
    const uint8_t *targets;         /* ACT: rows * seq_len big-endian int32 (-1: ignored) */
    const float *data;              /* ACT, GRAD: the tensor (may be unaligned: copy it) */
    double norm;                    /* NORM */
    float scale;                    /* SCALE */
    ns_pipe_input awaits;           /* RESEND, ALIVE: the input awaited; `micro` its micro-batch */
} ns_pipe_msg;

/* Bytes of the body ns_pipe_msg_frame writes for m. */
size_t ns_pipe_msg_body_bytes(const ns_pipe_msg *m);
/* Fills f (body in body_buf, of at least ns_pipe_msg_body_bytes; the tensor points at m->data)
 * from m, whose targets for ACT are given as int32 in host order in targets_host. */
void ns_pipe_msg_frame(const ns_pipe_msg *m, const int32_t *targets_host, uint8_t *body_buf,
                       ns_frame *f);
/* Parses a pipeline frame: NS_EPARSE for a body or tensor that does not fit its type (lengths,
 * shape, dtype, a micro-batch, row, length or width beyond the limits, targets below -1, values
 * that are not finite, a sum below zero, a scale outside (0, 1]). Never reads outside the frame. */
NS_MUST_USE int ns_pipe_msg_parse(const ns_frame *f, ns_pipe_msg *out);
/* The i-th target of a parsed ACT. */
int32_t ns_pipe_msg_target(const ns_pipe_msg *m, size_t i);

#endif
