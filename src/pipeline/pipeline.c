/*
 * pipeline.c: one stage's 1F1B schedule and the bookkeeping of what it may accept (pipeline.h).
 *
 * The op sequence of a step is a pure function of (s, S, m): position pos in 0..2m-1 names a
 * forward or a backward, 2m the NORM and 2m+1 the UPDATE. Inputs are kept in two slots, one for
 * the step in progress and one for the next (a faster neighbour may already be there); an input
 * is a flag, since the caller holds the tensors. Nothing here allocates after ns_pipe_new.
 * Running ahead (cfg.run_ahead) leaves the sequence as it is: a forward done early is skipped
 * when the sequence reaches it.
 */
#include <stdlib.h>
#include <string.h>

#include "neuroshard/pipeline.h"

typedef struct step_inputs {
    uint64_t step;
    bool act[NS_PIPE_MICRO_MAX];
    bool grad[NS_PIPE_MICRO_MAX];
    bool norm_in;
    double norm;
    bool scale_in;
    float scale;
} step_inputs;

struct ns_pipe {
    ns_pipe_config cfg;
    uint64_t step;
    uint32_t pos; /* the next op of this step's sequence */
    bool fwd_done[NS_PIPE_MICRO_MAX];
    bool bwd_done[NS_PIPE_MICRO_MAX];
    uint32_t fwd_count; /* forwards done this step: they run in order, so the next is this one */
    uint64_t ran_ahead;
    step_inputs slots[2]; /* by step & 1 */
    bool own_scale_set;
    float own_scale;
    uint64_t refused[NS_PIPE_REFUSALS_];
};

static const char *const refusal_names[NS_PIPE_REFUSALS_] = {
    "duplicate", "late", "early", "unasked", "bad_index",
};

int ns_pipe_new(ns_pipe **out, const ns_pipe_config *cfg, uint64_t first_step)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(cfg != NULL);
    *out = NULL;
    if (cfg->stages == 0 || cfg->stages > NS_PIPE_STAGES_MAX || cfg->stage >= cfg->stages ||
        cfg->micro_batches == 0 || cfg->micro_batches > NS_PIPE_MICRO_MAX ||
        cfg->run_ahead > NS_PIPE_MICRO_MAX || first_step == UINT64_MAX)
        return NS_EINVAL;
    ns_pipe *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NS_ENOMEM;
    p->cfg = *cfg;
    p->step = first_step;
    p->slots[first_step & 1].step = first_step;
    p->slots[(first_step + 1) & 1].step = first_step + 1;
    *out = p;
    return NS_OK;
}

void ns_pipe_free(ns_pipe *p)
{
    free(p);
}

const ns_pipe_config *ns_pipe_config_of(const ns_pipe *p)
{
    return &p->cfg;
}

uint64_t ns_pipe_step(const ns_pipe *p)
{
    return p->step;
}

static bool is_first(const ns_pipe *p)
{
    return p->cfg.stage == 0;
}

static bool is_last(const ns_pipe *p)
{
    return p->cfg.stage + 1 == p->cfg.stages;
}

uint32_t ns_pipe_in_flight_max(const ns_pipe_config *cfg)
{
    uint32_t fill = cfg->stages - cfg->stage + cfg->run_ahead;
    return fill < cfg->micro_batches ? fill : cfg->micro_batches;
}

uint64_t ns_pipe_ran_ahead(const ns_pipe *p)
{
    return p->ran_ahead;
}

/* The op at position pos of the step's 1F1B sequence: w = min(S-1-s, m) forwards to fill the
 * pipe, then (m - w) pairs of a forward and a backward, then the last w backwards; backwards run
 * in micro-batch order, so gradients accumulate in the order of one process. */
static void op_at(const ns_pipe *p, uint32_t pos, ns_pipe_op *op)
{
    uint32_t m = p->cfg.micro_batches;
    uint32_t fill = p->cfg.stages - 1 - p->cfg.stage;
    uint32_t w = fill < m ? fill : m;
    NS_ASSERT(pos < 2 * m + 2);
    *op = (ns_pipe_op){.step = p->step};
    if (pos >= 2 * m) {
        op->kind = pos == 2 * m ? NS_PIPE_NORM : NS_PIPE_UPDATE;
    } else if (pos < w) {
        op->kind = NS_PIPE_FORWARD;
        op->micro = pos;
    } else if (pos < 2 * m - w) {
        uint32_t j = pos - w;
        op->kind = j % 2 == 0 ? NS_PIPE_FORWARD : NS_PIPE_BACKWARD;
        op->micro = j % 2 == 0 ? w + j / 2 : j / 2;
    } else {
        op->kind = NS_PIPE_BACKWARD;
        op->micro = pos - m;
    }
}

void ns_pipe_next(const ns_pipe *p, ns_pipe_op *op)
{
    ns_pipe_op want;
    op_at(p, p->pos, &want);
    const step_inputs *in = &p->slots[p->step & 1];
    NS_ASSERT(in->step == p->step);
    bool ready = false;
    switch (want.kind) {
    case NS_PIPE_FORWARD:
        ready = is_first(p) || in->act[want.micro];
        break;
    case NS_PIPE_BACKWARD:
        NS_ASSERT(p->fwd_done[want.micro]);
        ready = is_last(p) || in->grad[want.micro];
        break;
    case NS_PIPE_NORM:
        ready = is_first(p) || in->norm_in;
        want.norm_in = is_first(p) ? 0.0 : in->norm;
        break;
    case NS_PIPE_UPDATE:
        ready = is_last(p) ? p->own_scale_set : in->scale_in;
        want.scale = is_last(p) ? p->own_scale : in->scale;
        break;
    case NS_PIPE_WAIT:
        break;
    }
    if (ready) {
        *op = want;
        return;
    }
    /* the backward's gradient is late: the next forward instead, if its input is here and the
     * stage may hold one more (in strict 1F1B it never may at a backward: in flight is the max) */
    uint32_t f = p->fwd_count;
    if (want.kind == NS_PIPE_BACKWARD && f < p->cfg.micro_batches && (is_first(p) || in->act[f]) &&
        ns_pipe_in_flight(p) < ns_pipe_in_flight_max(&p->cfg)) {
        *op = (ns_pipe_op){.kind = NS_PIPE_FORWARD, .step = p->step, .micro = f};
        return;
    }
    static const ns_pipe_input awaited[] = {
        [NS_PIPE_FORWARD] = NS_PIPE_IN_ACT,
        [NS_PIPE_BACKWARD] = NS_PIPE_IN_GRAD,
        [NS_PIPE_NORM] = NS_PIPE_IN_NORM,
        [NS_PIPE_UPDATE] = NS_PIPE_IN_SCALE,
    };
    *op = (ns_pipe_op){
        .kind = NS_PIPE_WAIT,
        .step = p->step,
        .micro = want.kind == NS_PIPE_FORWARD || want.kind == NS_PIPE_BACKWARD ? want.micro : 0,
        .awaits = awaited[want.kind]};
}

int ns_pipe_input_from(ns_pipe_input in)
{
    switch (in) {
    case NS_PIPE_IN_ACT:
    case NS_PIPE_IN_NORM:
        return -1;
    case NS_PIPE_IN_GRAD:
    case NS_PIPE_IN_SCALE:
        return +1;
    case NS_PIPE_IN_NONE:
        break;
    }
    return 0;
}

void ns_pipe_done(ns_pipe *p, const ns_pipe_op *op)
{
    ns_pipe_op want;
    op_at(p, p->pos, &want);
    NS_ASSERT(op->step == p->step);
    if (op->kind == NS_PIPE_FORWARD && want.kind == NS_PIPE_BACKWARD) { /* run ahead */
        NS_ASSERT(op->micro == p->fwd_count);
        p->fwd_done[op->micro] = true;
        p->fwd_count++;
        p->ran_ahead++;
        return;
    }
    NS_ASSERT(op->kind == want.kind);
    NS_ASSERT(op->micro == want.micro);
    if (op->kind == NS_PIPE_FORWARD) {
        p->fwd_done[op->micro] = true;
        p->fwd_count++;
    }
    if (op->kind == NS_PIPE_BACKWARD)
        p->bwd_done[op->micro] = true;
    if (op->kind != NS_PIPE_UPDATE) {
        p->pos++;
        for (;;) { /* past the forwards that ran ahead */
            op_at(p, p->pos, &want);
            if (want.kind != NS_PIPE_FORWARD || !p->fwd_done[want.micro])
                break;
            p->pos++;
        }
        return;
    }
    /* the step is over: the next one's slot may hold inputs already; this one's is reused */
    step_inputs *old = &p->slots[p->step & 1];
    memset(old, 0, sizeof *old);
    p->step++;
    old->step = p->step + 1;
    NS_ASSERT(p->slots[p->step & 1].step == p->step);
    p->pos = 0;
    memset(p->fwd_done, 0, sizeof p->fwd_done);
    memset(p->bwd_done, 0, sizeof p->bwd_done);
    p->fwd_count = 0;
    p->own_scale_set = false;
}

/* The slot for an input of `step`, or a refusal. */
static step_inputs *slot_for(ns_pipe *p, uint64_t step, bool next_ok, ns_pipe_refusal *why)
{
    if (step < p->step) {
        *why = NS_PIPE_LATE;
        return NULL;
    }
    if (step > p->step + (next_ok ? 1 : 0)) {
        *why = step == p->step + 1 ? NS_PIPE_UNASKED : NS_PIPE_EARLY;
        return NULL;
    }
    step_inputs *in = &p->slots[step & 1];
    NS_ASSERT(in->step == step);
    return in;
}

static int refuse(ns_pipe *p, ns_pipe_refusal why, ns_pipe_refusal *out)
{
    p->refused[why]++;
    if (out != NULL)
        *out = why;
    return NS_EINVAL;
}

int ns_pipe_on_activation(ns_pipe *p, uint64_t step, uint32_t micro, ns_pipe_refusal *why)
{
    ns_pipe_refusal r = NS_PIPE_UNASKED;
    if (is_first(p))
        return refuse(p, NS_PIPE_UNASKED, why);
    if (micro >= p->cfg.micro_batches)
        return refuse(p, NS_PIPE_BAD_INDEX, why);
    step_inputs *in = slot_for(p, step, true, &r);
    if (in == NULL)
        return refuse(p, r, why);
    if (in->act[micro])
        return refuse(p, NS_PIPE_DUPLICATE, why);
    in->act[micro] = true;
    return NS_OK;
}

int ns_pipe_on_gradient(ns_pipe *p, uint64_t step, uint32_t micro, ns_pipe_refusal *why)
{
    ns_pipe_refusal r = NS_PIPE_UNASKED;
    if (is_last(p))
        return refuse(p, NS_PIPE_UNASKED, why);
    if (micro >= p->cfg.micro_batches)
        return refuse(p, NS_PIPE_BAD_INDEX, why);
    step_inputs *in = slot_for(p, step, false, &r);
    if (in == NULL)
        return refuse(p, r, why);
    if (in->grad[micro])
        return refuse(p, NS_PIPE_DUPLICATE, why);
    if (!p->fwd_done[micro])
        return refuse(p, NS_PIPE_UNASKED, why); /* never sent: nothing to take it back to */
    in->grad[micro] = true;
    return NS_OK;
}

int ns_pipe_on_norm(ns_pipe *p, uint64_t step, double sum, ns_pipe_refusal *why)
{
    ns_pipe_refusal r = NS_PIPE_UNASKED;
    if (is_first(p) || !(sum >= 0.0))
        return refuse(p, NS_PIPE_UNASKED, why);
    step_inputs *in = slot_for(p, step, false, &r);
    if (in == NULL)
        return refuse(p, r, why);
    if (in->norm_in)
        return refuse(p, NS_PIPE_DUPLICATE, why);
    in->norm_in = true;
    in->norm = sum;
    return NS_OK;
}

int ns_pipe_on_scale(ns_pipe *p, uint64_t step, float scale, ns_pipe_refusal *why)
{
    ns_pipe_refusal r = NS_PIPE_UNASKED;
    if (is_last(p) || !(scale > 0.0f && scale <= 1.0f))
        return refuse(p, NS_PIPE_UNASKED, why);
    step_inputs *in = slot_for(p, step, false, &r);
    if (in == NULL)
        return refuse(p, r, why);
    if (in->scale_in)
        return refuse(p, NS_PIPE_DUPLICATE, why);
    in->scale_in = true;
    in->scale = scale;
    return NS_OK;
}

void ns_pipe_scale(ns_pipe *p, float scale)
{
    NS_ASSERT(is_last(p));
    NS_ASSERT(scale > 0.0f && scale <= 1.0f);
    p->own_scale_set = true;
    p->own_scale = scale;
}

uint64_t ns_pipe_refused(const ns_pipe *p, ns_pipe_refusal why)
{
    NS_ASSERT(why < NS_PIPE_REFUSALS_);
    return p->refused[why];
}

const char *ns_pipe_refusal_name(ns_pipe_refusal why)
{
    return why < NS_PIPE_REFUSALS_ ? refusal_names[why] : "unknown";
}

uint32_t ns_pipe_in_flight(const ns_pipe *p)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->cfg.micro_batches; i++)
        n += p->fwd_done[i] && !p->bwd_done[i];
    return n;
}

uint32_t ns_pipe_micro_rows(uint64_t memory_bytes, uint64_t act_bytes_per_row, uint32_t seq_len,
                            uint32_t hidden, uint32_t batch)
{
    NS_ASSERT(batch >= 1);
    uint64_t by_memory = act_bytes_per_row > 0 ? memory_bytes / 10 / act_bytes_per_row : batch;
    uint64_t row_bytes = (uint64_t)seq_len * hidden * 4;
    uint64_t by_wire = row_bytes > 0 ? 65536 / row_bytes : batch;
    uint64_t rows = by_memory < by_wire ? by_memory : by_wire;
    if (rows < 1)
        rows = 1;
    if (rows > batch)
        rows = batch;
    while (batch % rows != 0)
        rows--;
    return (uint32_t)rows;
}

int ns_pipe_split(uint32_t layers, uint32_t stages, uint64_t head_cost, uint64_t embed_cost,
                  uint32_t *bounds)
{
    if (stages == 0 || stages > NS_PIPE_STAGES_MAX || stages > layers || layers > 4096 ||
        head_cost > 1000000000 || embed_cost > 1000000000)
        return NS_EINVAL;
    /* best[k][j]: the best split of layers [0, j) into k stages (max cost, then sum of squares);
     * from[k][j] the start of its last stage. O(stages * layers^2), a few million steps at most. */
    typedef struct cell {
        uint64_t max, sq;
        uint32_t from;
        bool ok;
    } cell;
    size_t w = (size_t)layers + 1;
    cell *best = calloc((size_t)(stages + 1) * w, sizeof *best);
    if (best == NULL)
        return NS_ENOMEM;
    best[0].ok = true;
    for (uint32_t k = 1; k <= stages; k++) {
        for (uint32_t j = k; j <= layers; j++) {
            cell *c = &best[(size_t)k * w + j];
            for (uint32_t i = k - 1; i < j; i++) {
                const cell *p = &best[(size_t)(k - 1) * w + i];
                if (!p->ok)
                    continue;
                uint64_t cost = 1000ull * (j - i) + (i == 0 ? embed_cost : 0) +
                                (j == layers && k == stages ? head_cost : 0);
                uint64_t max = p->max > cost ? p->max : cost, sq = p->sq + cost * cost;
                if (!c->ok || max < c->max || (max == c->max && sq < c->sq)) {
                    *c = (cell){.max = max, .sq = sq, .from = i, .ok = true};
                }
            }
        }
    }
    NS_ASSERT(best[(size_t)stages * w + layers].ok);
    bounds[stages] = layers;
    for (uint32_t k = stages; k > 0; k--)
        bounds[k - 1] = best[(size_t)k * w + bounds[k]].from;
    NS_ASSERT(bounds[0] == 0);
    free(best);
    return NS_OK;
}

double ns_pipe_bubble_fraction(uint32_t stages, uint32_t micro_batches)
{
    NS_ASSERT(stages >= 1);
    NS_ASSERT(micro_batches >= 1);
    return (double)(stages - 1) / (double)(micro_batches + stages - 1);
}
