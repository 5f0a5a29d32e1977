/*
 * diloco_train.c: the training half of `netsim --diloco`: the data, the small models, one run.
 *
 * A world holds what every run shares: the Genesis text (or a folder of text), its tokenizer, the
 * training tokens by shard, the held-out batches and the warm start. A run builds K nodes, each a
 * whole model (an ns_stage in the reproducible mode: the same bits on every machine) with its own
 * shard and AdamW state, and trains them in synchronous data parallel or with DiLoCo: H inner
 * steps, Δ = w0 - w, the real cohort cores over an in-process FIFO on a virtual clock, the outer
 * Nesterov step. Attackers replace their Δ first. Only the report's wall time reads a clock.
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "netsim.h"
#include "neuroshard/compress.h"
#include "neuroshard/data.h"
#include "neuroshard/exec.h"
#include "neuroshard/sync.h"

#define DL_TOKENIZER_TEXT_MAX (1u << 20) /* bytes of training text the tokenizer learns from */
#define DL_TEXT_SHARD_BYTES   16384      /* a folder of text is cut this fine: K shards at least */
#define DL_QUEUE_MAX          4096       /* messages in flight in one exchange */
#define DL_TIMERS_MAX         1024       /* timers pending at once, all cohort cores */
#define DL_PUMP_MAX           (1u << 20) /* deliveries and timer firings of one exchange */
#define DL_ROUND_MS           600000     /* virtual time between two rounds' starts */
#define DL_LR_MAX             1e-3       /* the trainer's AdamW (src/node/train.c) */
#define DL_LR_MIN             1e-4
#define DL_WARMUP_STEPS       50
#define DL_DATA_TEXT_SIZE     160

static_assert(NS_DL_NODES_MAX <= NS_SYNC_GROUP_MAX, "a run's cohort is one group");

static int warm_start(ns_dl_world *w);

struct ns_dl_world {
    ns_dl_model model;
    ns_arch arch;
    uint64_t seed;
    uint32_t *train; /* every training token, shard after shard */
    size_t train_count;
    size_t *shard_end; /* where each shard's tokens end in train */
    uint32_t shard_count;
    int32_t *val_inputs, *val_targets; /* [val_batches][B*T] */
    float *warm;                       /* the warm start's weights, or NULL */
    double warm_loss;                  /* its validation loss */
    char data[DL_DATA_TEXT_SIZE];
};

/* ---- the world: data, tokenizer, validation batches ------------------------------------------ */

static void remove_dataset_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[NS_DATASET_DIR_BYTES_MAX + 300];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

static int build_dataset(const char *text_dir, const char *dir, ns_dataset *ds, char *err)
{
    if (text_dir != NULL) {
        ns_key key;
        ns_genesis_key(&key);
        int rc =
            ns_dataset_build_from_dir(text_dir, dir, "local", &key, DL_TEXT_SHARD_BYTES, ds, err);
        if (rc == NS_ETOOBIG) /* a large folder: the automatic size */
            rc = ns_dataset_build_from_dir(text_dir, dir, "local", &key, 0, ds, err);
        return rc;
    }
    char brown[NS_DATASET_DIR_BYTES_MAX];
    int rc = ns_brown_default_dir(brown, sizeof brown);
    if (rc == NS_OK)
        rc = ns_genesis_build(brown, dir, ds, err);
    if (rc == NS_ENOENT)
        snprintf(err, NS_DATA_ERR_BYTES,
                 "no Genesis data: the Brown corpus is not in the cache (scripts/fetch-data.sh) "
                 "and no --text DIR was given");
    return rc;
}

/* The tokenizer learns from the first training shards, up to DL_TOKENIZER_TEXT_MAX bytes. */
static int train_tokenizer(const ns_dataset *ds, uint32_t vocab, ns_bpe **out, char *err)
{
    uint8_t *text = malloc(DL_TOKENIZER_TEXT_MAX);
    size_t total = 0;
    int rc = text == NULL ? NS_ENOMEM : NS_OK;
    for (uint32_t i = 0; rc == NS_OK && i < ds->train_count && total < DL_TOKENIZER_TEXT_MAX; i++) {
        uint8_t *shard;
        size_t len;
        rc = ns_dataset_read_shard(ds, ds->train[i], &shard, &len, err);
        if (rc != NS_OK)
            break;
        size_t take = len < DL_TOKENIZER_TEXT_MAX - total ? len : DL_TOKENIZER_TEXT_MAX - total;
        memcpy(text + total, shard, take);
        total += take;
        free(shard);
    }
    if (rc == NS_OK) {
        rc = ns_bpe_train(text, total, vocab, out);
        if (rc != NS_OK)
            snprintf(err, NS_DATA_ERR_BYTES, "cannot train a tokenizer of %u tokens: %s", vocab,
                     ns_strerror(rc));
    }
    free(text);
    return rc;
}

static int load_train_tokens(ns_dl_world *w, const ns_bpe *bpe, const ns_dataset *ds, char *err)
{
    w->shard_end = calloc(ds->train_count, sizeof *w->shard_end);
    if (w->shard_end == NULL)
        return NS_ENOMEM;
    for (uint32_t i = 0; i < ds->train_count; i++) {
        uint32_t *ids;
        size_t count;
        int rc = ns_data_tokenize_shards(bpe, ds, &ds->train[i], 1, &ids, &count, err);
        if (rc != NS_OK)
            return rc;
        uint32_t *grown = realloc(w->train, (w->train_count + count) * sizeof *grown);
        if (grown == NULL) {
            free(ids);
            return NS_ENOMEM;
        }
        memcpy(grown + w->train_count, ids, count * sizeof *ids);
        free(ids);
        w->train = grown;
        w->train_count += count;
        w->shard_end[i] = w->train_count;
    }
    w->shard_count = ds->train_count;
    return NS_OK;
}

/* rows[B*(T+1)] into inputs[B*T] and targets[B*T]. */
static void split_rows(const uint32_t *rows, int32_t *inputs, int32_t *targets, uint32_t B,
                       uint32_t T)
{
    for (uint32_t b = 0; b < B; b++) {
        const uint32_t *row = rows + (size_t)b * (T + 1);
        for (uint32_t t = 0; t < T; t++) {
            inputs[(size_t)b * T + t] = (int32_t)row[t];
            targets[(size_t)b * T + t] = (int32_t)row[t + 1];
        }
    }
}

static int load_val_batches(ns_dl_world *w, const ns_bpe *bpe, const ns_dataset *ds, char *err)
{
    const ns_dl_model *m = &w->model;
    uint32_t *ids = NULL;
    size_t count = 0;
    ns_data_loader *loader = NULL;
    size_t cells = (size_t)m->batch * m->seq_len;
    uint32_t *rows = malloc((size_t)m->batch * (m->seq_len + 1) * sizeof *rows);
    w->val_inputs = malloc(cells * m->val_batches * sizeof *w->val_inputs);
    w->val_targets = malloc(cells * m->val_batches * sizeof *w->val_targets);
    int rc = rows == NULL || w->val_inputs == NULL || w->val_targets == NULL ? NS_ENOMEM : NS_OK;
    if (rc == NS_OK)
        rc = ns_data_tokenize_shards(bpe, ds, ds->val, ds->val_count, &ids, &count, err);
    if (rc == NS_OK)
        rc = ns_data_loader_new(ids, count, m->batch, m->seq_len,
                                ns__sim_hash3(w->seed, 0x76616cu, 0), &loader);
    for (uint32_t b = 0; rc == NS_OK && b < m->val_batches; b++) {
        ns_data_loader_next(loader, rows);
        split_rows(rows, w->val_inputs + b * cells, w->val_targets + b * cells, m->batch,
                   m->seq_len);
    }
    if (rc != NS_OK && err[0] == '\0')
        snprintf(err, NS_DATA_ERR_BYTES, "not enough held-out text: %s", ns_strerror(rc));
    ns_data_loader_free(loader);
    free(ids);
    free(rows);
    return rc;
}

/* The shape rules of SPEC S3 (as `--model LxH` in src/node/train.c), the tokenizer's vocabulary. */
static void plan_arch(ns_dl_world *w, uint32_t vocab)
{
    ns_arch *a = &w->arch;
    memset(a, 0, sizeof *a);
    a->layers = w->model.layers;
    a->hidden = w->model.hidden;
    a->heads = a->hidden / 64;
    a->kv_heads = 1;
    for (uint32_t kv = a->heads / 3; kv > 1; kv--) {
        if (a->heads % kv == 0) {
            a->kv_heads = kv;
            break;
        }
    }
    a->intermediate = (uint32_t)(((uint64_t)a->hidden * 8 + 96) / 192 * 64);
    a->vocab = vocab;
    a->seq_len_max = w->model.seq_len;
    a->params =
        (uint64_t)a->layers * ns_arch_layer_params(a) + 2ull * vocab * a->hidden + a->hidden;
}

static int world_load(ns_dl_world *w, const char *text_dir, const char *dir, char *err)
{
    ns_dataset *ds = calloc(1, sizeof *ds);
    ns_bpe *bpe = NULL;
    int rc = ds == NULL ? NS_ENOMEM : build_dataset(text_dir, dir, ds, err);
    if (rc == NS_OK && (ds->train_count == 0 || ds->val_count == 0)) {
        snprintf(err, NS_DATA_ERR_BYTES, "the text makes %u shards: too little to train on",
                 ds->shard_count);
        rc = NS_EINVAL;
    }
    if (rc == NS_OK)
        rc = train_tokenizer(ds, w->model.vocab, &bpe, err);
    if (rc == NS_OK)
        rc = load_train_tokens(w, bpe, ds, err);
    if (rc == NS_OK)
        rc = load_val_batches(w, bpe, ds, err);
    if (rc == NS_OK) {
        plan_arch(w, ns_bpe_vocab_size(bpe));
        snprintf(w->data, sizeof w->data,
                 "%s: %zu training tokens in %u shards, %u held-out batches, vocabulary %u",
                 ds->name, w->train_count, w->shard_count, w->model.val_batches, w->arch.vocab);
    }
    ns_bpe_free(bpe);
    free(ds);
    return rc;
}

int ns__dl_world_new(ns_dl_world **out, const ns_dl_model *model, uint64_t seed,
                     const char *text_dir, char *err, size_t err_size)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(model != NULL);
    NS_ASSERT(err_size >= NS_DATA_ERR_BYTES);
    NS_ASSERT(model->hidden % 64 == 0 && model->hidden > 0);
    NS_ASSERT(model->batch > 0 && model->seq_len > 0 && model->val_batches > 0);
    err[0] = '\0';
    ns_dl_world *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NS_ENOMEM;
    w->model = *model;
    w->seed = seed;
    const char *tmp = getenv("TMPDIR");
    char dir[NS_DATASET_DIR_BYTES_MAX];
    snprintf(dir, sizeof dir, "%s/ns-diloco.XXXXXX", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    int rc = mkdtemp(dir) == NULL ? NS_EIO : NS_OK;
    if (rc != NS_OK)
        snprintf(err, err_size, "cannot make a temporary directory %s", dir);
    if (rc == NS_OK) {
        rc = world_load(w, text_dir, dir, err);
        remove_dataset_dir(dir);
    }
    if (rc == NS_OK) {
        rc = warm_start(w);
        if (rc != NS_OK)
            snprintf(err, err_size, "the warm start failed: %s", ns_strerror(rc));
    }
    if (rc != NS_OK) {
        ns__dl_world_free(w);
        return rc;
    }
    *out = w;
    return NS_OK;
}

void ns__dl_world_free(ns_dl_world *w)
{
    if (w == NULL)
        return;
    free(w->train);
    free(w->shard_end);
    free(w->val_inputs);
    free(w->val_targets);
    free(w->warm);
    free(w);
}

size_t ns__dl_world_params(const ns_dl_world *w)
{
    return (size_t)w->arch.params;
}

const char *ns__dl_world_data(const ns_dl_world *w)
{
    return w->data;
}

/* A node's shard: every K-th training shard from its index, or a K-th of all the tokens when
 * there are fewer shards than nodes. *out is malloc'd. */
static int node_tokens(const ns_dl_world *w, uint32_t node, uint32_t nodes, uint32_t **out,
                       size_t *count)
{
    size_t total = 0;
    uint32_t *ids = malloc(w->train_count * sizeof *ids);
    if (ids == NULL)
        return NS_ENOMEM;
    if (w->shard_count >= nodes) {
        for (uint32_t s = node; s < w->shard_count; s += nodes) {
            size_t from = s == 0 ? 0 : w->shard_end[s - 1];
            memcpy(ids + total, w->train + from, (w->shard_end[s] - from) * sizeof *ids);
            total += w->shard_end[s] - from;
        }
    } else {
        size_t from = w->train_count * node / nodes, to = w->train_count * (node + 1) / nodes;
        memcpy(ids, w->train + from, (to - from) * sizeof *ids);
        total = to - from;
    }
    *out = ids;
    *count = total;
    return NS_OK;
}

/* ---- a run ----------------------------------------------------------------------------------- */

typedef struct dl_ctx dl_ctx;

typedef struct dl_node {
    dl_ctx *x;
    uint32_t index;
    bool attacker;
    uint8_t id[NS_ID_BYTES];
    ns_stage *stage; /* honest nodes; attackers do not train */
    float *w;        /* the stage's parameters, or own_w */
    float *own_w;
    uint32_t *tokens;
    ns_data_loader *loader;
    ns_outer outer;
    bool outer_ready;
    float *delta, *agg;
    ns_cohort *cohort;
    ns_env env;
    bool done; /* this round's aggregate came */
    uint64_t bytes_wire, bytes_report;
} dl_node;

typedef struct dl_msg {
    uint32_t from, to;
    uint8_t *bytes;
    size_t len;
} dl_msg;

typedef struct dl_timer {
    uint64_t id, at_ms;
    ns_timer_fn fn;
    void *arg;
    bool live;
} dl_timer;

struct dl_ctx {
    const ns_dl_world *w;
    const ns_dl_run *run;
    ns_dl_result *res;
    size_t n; /* parameters */
    ns_exec *exec;
    ns_stage_config sc;
    ns_optim_config optim;
    ns_compress_config compress;
    ns_agg_config agg;
    uint32_t honest;
    dl_node nodes[NS_DL_NODES_MAX];
    uint32_t *rows;
    int32_t *inputs, *targets;
    uint64_t micro_id;
    /* the exchange: a FIFO of messages, timers on a virtual clock */
    dl_msg *queue;
    size_t queue_head, queue_count;
    bool queue_overflow;
    dl_timer timers[DL_TIMERS_MAX];
    uint64_t timer_id_next, now_ms;
    ns_sim_rng rng;
    bool fraud_seen[NS_DL_NODES_MAX];
    float *scratch; /* n floats: the raw wire's aggregate, ALIE's mean */
    double blob_ratio_sum;
    float *keep; /* the warm start: where run_dp leaves its weights */
    /* the loss curve */
    double window_sum;
    uint32_t window_count, curve_every;
};

static void curve_add(dl_ctx *x, uint64_t step, double loss)
{
    x->window_sum += loss;
    if (++x->window_count < x->curve_every)
        return;
    ns_dl_result *r = x->res;
    if (r->curve_count < NS_DL_CURVE_MAX) {
        r->curve_step[r->curve_count] = (double)step;
        r->curve_loss[r->curve_count] = x->window_sum / x->window_count;
        r->curve_count++;
    }
    x->window_sum = 0;
    x->window_count = 0;
}

/* Forward and backward of the next batch of loader into st's gradients, scaled by dout. */
static int fwd_bwd(dl_ctx *x, ns_stage *st, ns_data_loader *loader, float dout, float *loss)
{
    const ns_dl_model *m = &x->w->model;
    ns_data_loader_next(loader, x->rows);
    split_rows(x->rows, x->inputs, x->targets, m->batch, m->seq_len);
    ns_stage_input in = {
        .batch = m->batch, .seq_len = m->seq_len, .tokens = x->inputs, .targets = x->targets};
    uint64_t id = x->micro_id++;
    int rc = ns_stage_forward(st, id, &in, loss);
    if (rc == NS_OK)
        rc = ns_stage_backward(st, id, &dout, NULL);
    return rc;
}

static int evaluate(dl_ctx *x, ns_stage *st, double *loss)
{
    const ns_dl_model *m = &x->w->model;
    size_t cells = (size_t)m->batch * m->seq_len;
    double sum = 0;
    for (uint32_t b = 0; b < m->val_batches; b++) {
        ns_stage_input in = {.batch = m->batch,
                             .seq_len = m->seq_len,
                             .tokens = x->w->val_inputs + b * cells,
                             .targets = x->w->val_targets + b * cells};
        uint64_t id = x->micro_id++;
        float l;
        int rc = ns_stage_forward(st, id, &in, &l);
        if (rc == NS_OK)
            rc = ns_stage_drop(st, id);
        if (rc != NS_OK)
            return rc;
        sum += l;
    }
    *loss = sum / m->val_batches;
    return NS_OK;
}

static int new_stage(dl_ctx *x, ns_stage **st)
{
    int rc = ns_stage_new(st, x->exec, &x->sc);
    if (rc != NS_OK)
        return rc;
    ns_stage_init(*st, x->w->seed);
    if (x->w->warm != NULL && x->keep == NULL) {
        size_t n;
        memcpy(ns_stage_param_buffer(*st, &n), x->w->warm, x->n * sizeof(float));
    }
    return NS_OK;
}

/* ---- the cohort cores' env: a FIFO and timers on a virtual clock ----------------------------- */

static uint64_t env_now(void *ctx)
{
    const dl_node *node = ctx;
    return node->x->now_ms;
}

static uint64_t env_timer(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    dl_ctx *x = ((dl_node *)ctx)->x;
    for (size_t i = 0; i < DL_TIMERS_MAX; i++) {
        if (!x->timers[i].live) {
            x->timers[i] = (dl_timer){
                .id = ++x->timer_id_next, .at_ms = at_ms, .fn = fn, .arg = arg, .live = true};
            return x->timers[i].id;
        }
    }
    NS_ASSERT(!"DL_TIMERS_MAX timers pending: a cohort core leaks timers");
    return 0;
}

static void env_timer_cancel(void *ctx, uint64_t timer_id)
{
    dl_ctx *x = ((dl_node *)ctx)->x;
    for (size_t i = 0; i < DL_TIMERS_MAX; i++) {
        if (x->timers[i].live && x->timers[i].id == timer_id)
            x->timers[i].live = false;
    }
}

static int env_send(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f)
{
    (void)ctx;
    (void)to;
    (void)ch;
    (void)f;
    NS_ASSERT(!"the cohort core sends through its config, not the env");
    return NS_EINVAL;
}

static void env_random(void *ctx, void *buf, size_t n)
{
    ns__sim_rng_fill(&((dl_node *)ctx)->x->rng, buf, n);
}

static int index_of(const dl_ctx *x, const uint8_t id[NS_ID_BYTES], uint32_t *index)
{
    for (uint32_t i = 0; i < x->run->nodes; i++) {
        if (memcmp(x->nodes[i].id, id, NS_ID_BYTES) == 0) {
            *index = i;
            return NS_OK;
        }
    }
    return NS_ENOENT;
}

static void cohort_send(void *arg, const uint8_t to[NS_ID_BYTES], const uint8_t *msg, size_t len)
{
    dl_node *node = arg;
    dl_ctx *x = node->x;
    uint32_t dest;
    NS_ASSERT(index_of(x, to, &dest) == NS_OK);
    NS_ASSERT(dest != node->index);
    uint8_t *copy = malloc(len > 0 ? len : 1);
    if (copy == NULL || x->queue_count == DL_QUEUE_MAX) {
        free(copy);
        x->queue_overflow = true;
        return;
    }
    memcpy(copy, msg, len);
    x->queue[(x->queue_head + x->queue_count) % DL_QUEUE_MAX] =
        (dl_msg){.from = node->index, .to = dest, .bytes = copy, .len = len};
    x->queue_count++;
    node->bytes_wire += len;
}

static void cohort_done(void *arg, const float *agg, size_t n, const ns_cohort_report *report)
{
    dl_node *node = arg;
    NS_ASSERT(n == node->x->n);
    memcpy(node->agg, agg, n * sizeof *agg);
    node->done = true;
    node->bytes_report += report->bytes_sent;
    node->x->res->missing_chunks += report->missing_chunks;
}

static void count_verdict(dl_ctx *x, uint32_t from, ns_agg_verdict verdict)
{
    bool attacker = x->nodes[from].attacker;
    switch (verdict) {
    case NS_AGG_ACCEPTED:
    case NS_AGG_INVALID:
        return;
    case NS_AGG_FRAUD:
        x->fraud_seen[from] = true;
        *(attacker ? &x->res->fraud_attacker : &x->res->fraud_honest) += 1;
        *(attacker ? &x->res->rejected_attacker : &x->res->rejected_honest) += 1;
        return;
    case NS_AGG_REJECTED:
        *(attacker ? &x->res->rejected_attacker : &x->res->rejected_honest) += 1;
        return;
    }
}

static void cohort_verdict(void *arg, const uint8_t from[NS_ID_BYTES], ns_agg_verdict verdict,
                           double sigma, const uint8_t *msg, size_t len)
{
    (void)sigma;
    (void)msg;
    (void)len;
    dl_ctx *x = ((dl_node *)arg)->x;
    uint32_t index;
    NS_ASSERT(index_of(x, from, &index) == NS_OK);
    count_verdict(x, index, verdict);
}

/* Fires the earliest live timer due at or before until_ms; false when there is none. */
static bool fire_next_timer(dl_ctx *x, uint64_t until_ms)
{
    dl_timer *next = NULL;
    for (size_t i = 0; i < DL_TIMERS_MAX; i++) {
        dl_timer *t = &x->timers[i];
        if (t->live && t->at_ms <= until_ms &&
            (next == NULL || t->at_ms < next->at_ms ||
             (t->at_ms == next->at_ms && t->id < next->id)))
            next = t;
    }
    if (next == NULL)
        return false;
    next->live = false;
    if (next->at_ms > x->now_ms)
        x->now_ms = next->at_ms;
    next->fn(next->arg, x->now_ms);
    return true;
}

static void deliver_queue(dl_ctx *x)
{
    while (x->queue_count > 0) {
        dl_msg m = x->queue[x->queue_head];
        x->queue_head = (x->queue_head + 1) % DL_QUEUE_MAX;
        x->queue_count--;
        dl_node *to = &x->nodes[m.to];
        if (ns_cohort_on_message(to->cohort, x->nodes[m.from].id, m.bytes, m.len) != NS_OK)
            x->res->refusals++;
        free(m.bytes);
    }
}

static bool all_done(const dl_ctx *x)
{
    for (uint32_t i = 0; i < x->run->nodes; i++) {
        if (!x->nodes[i].done)
            return false;
    }
    return true;
}

static int exchange_cohort(dl_ctx *x, uint64_t round)
{
    uint32_t K = x->run->nodes;
    uint8_t members[NS_DL_NODES_MAX][NS_ID_BYTES];
    for (uint32_t i = 0; i < K; i++)
        memcpy(members[i], x->nodes[i].id, NS_ID_BYTES);
    double weight = ns_sync_weight(x->run->h, 0);
    for (uint32_t i = 0; i < K; i++) {
        dl_node *node = &x->nodes[i];
        uint8_t hash[NS_SHA256_BYTES];
        ns_outer_w0_hash(&node->outer, hash);
        node->done = false;
        int rc = ns_cohort_start(node->cohort, round, (const uint8_t(*)[NS_ID_BYTES])members, K,
                                 node->delta, weight, hash);
        if (rc != NS_OK)
            return rc;
    }
    for (uint32_t pass = 0; pass < DL_PUMP_MAX; pass++) {
        deliver_queue(x);
        if (x->queue_overflow)
            return NS_ELIMIT;
        if (all_done(x))
            return NS_OK;
        if (!fire_next_timer(x, UINT64_MAX))
            return NS_EINVAL; /* stuck: nothing to deliver, no timer, a round not done */
    }
    return NS_ELIMIT;
}

static int exchange_raw(dl_ctx *x)
{
    uint32_t K = x->run->nodes;
    ns_agg_input in[NS_DL_NODES_MAX];
    ns_agg_verdict verdicts[NS_DL_NODES_MAX];
    double weight = ns_sync_weight(x->run->h, 0);
    for (uint32_t i = 0; i < K; i++)
        in[i] = (ns_agg_input){.v = x->nodes[i].delta, .weight = weight};
    int rc = ns_agg_run(&x->agg, in, K, x->n, x->scratch, verdicts, NULL);
    if (rc == NS_ENOENT) /* nobody accepted: the aggregate is zero */
        rc = NS_OK;
    if (rc != NS_OK)
        return rc;
    for (uint32_t i = 0; i < K; i++) {
        count_verdict(x, i, verdicts[i]);
        memcpy(x->nodes[i].agg, x->scratch, x->n * sizeof(float));
        /* a reduce-scatter and an all-gather of float32 chunks */
        x->nodes[i].bytes_wire += (uint64_t)(2.0 * (K - 1) / K * 4.0 * (double)x->n);
        x->nodes[i].bytes_report = x->nodes[i].bytes_wire;
    }
    return NS_OK;
}

/* ---- attackers ------------------------------------------------------------------------------- */

static double gaussian(ns_sim_rng *rng)
{
    double u1 = 1.0 - ns__sim_rng_unit(rng), u2 = ns__sim_rng_unit(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* The inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9). */
static double normal_quantile(double p)
{
    static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                               -2.759285104469687e+02, 1.383577518672690e+02,
                               -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                               -1.556989798598866e+02, 6.680131188771972e+01,
                               -1.328068155288572e+01};
    static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                               -2.400758277161838e+00, -2.549732539343734e+00,
                               4.374664141464968e+00,  2.938163982698783e+00};
    static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                               3.754408661907416e+00};
    p = p < 1e-9 ? 1e-9 : p > 1 - 1e-9 ? 1 - 1e-9 : p;
    if (p < 0.02425 || p > 1 - 0.02425) {
        double q = sqrt(-2 * log(p < 0.5 ? p : 1 - p));
        double v = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
                   ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
        return p < 0.5 ? v : -v;
    }
    double q = p - 0.5, r = q * q;
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/* ALIE's z (Baruch et al. 2019): s = floor(n/2 + 1) - f supporters are needed, and z is the
 * largest for which the normal CDF stays below (n - s) / n. */
static double alie_z(uint32_t nodes, uint32_t attackers)
{
    double s = floor(nodes / 2.0 + 1) - attackers;
    return normal_quantile((nodes - s) / nodes);
}

static void attack_alie(dl_ctx *x, float *out)
{
    size_t n = x->n;
    double z = alie_z(x->run->nodes, x->run->attackers);
    for (size_t k = 0; k < n; k++) {
        double mean = 0, sq = 0;
        for (uint32_t i = 0; i < x->honest; i++)
            mean += x->nodes[i].delta[k];
        mean /= x->honest;
        for (uint32_t i = 0; i < x->honest; i++) {
            double dv = x->nodes[i].delta[k] - mean;
            sq += dv * dv;
        }
        out[k] = (float)(mean - z * sqrt(sq / x->honest));
    }
}

static double norm2(const float *v, size_t n)
{
    double s = 0;
    for (size_t k = 0; k < n; k++)
        s += (double)v[k] * v[k];
    return sqrt(s);
}

/* Attackers do not train: each starts from an honest node's Δ (a colluding attacker that sees
 * what honest nodes send is the stronger one) and replaces it. */
static void make_attacks(dl_ctx *x)
{
    const ns_dl_run *r = x->run;
    size_t n = x->n;
    if (r->attackers == 0)
        return;
    if (r->attack == NS_DL_ATTACK_ALIE)
        attack_alie(x, x->scratch);
    for (uint32_t j = x->honest; j < r->nodes; j++) {
        float *d = x->nodes[j].delta;
        const float *base = x->nodes[(j - x->honest) % x->honest].delta;
        double scale = 1, nb;
        switch (r->attack) {
        case NS_DL_ATTACK_NONE:
            memcpy(d, base, n * sizeof *d);
            break;
        case NS_DL_ATTACK_SIGNFLIP:
        case NS_DL_ATTACK_SCALE:
            scale = r->attack == NS_DL_ATTACK_SIGNFLIP ? -1.0 : r->scale;
            for (size_t k = 0; k < n; k++)
                d[k] = (float)(scale * base[k]);
            break;
        case NS_DL_ATTACK_NOISE:
            for (size_t k = 0; k < n; k++)
                d[k] = (float)gaussian(&x->rng);
            nb = norm2(d, n);
            scale = nb > 0 ? norm2(base, n) / nb : 0;
            for (size_t k = 0; k < n; k++)
                d[k] = (float)(d[k] * scale);
            break;
        case NS_DL_ATTACK_ALIE:
            memcpy(d, x->scratch, n * sizeof *d);
            break;
        }
    }
}

/* ---- the two methods ------------------------------------------------------------------------- */

static int run_dp(dl_ctx *x)
{
    const ns_dl_run *r = x->run;
    ns_stage *st = NULL;
    ns_data_loader *loaders[NS_DL_NODES_MAX] = {0};
    uint32_t *tokens[NS_DL_NODES_MAX] = {0};
    int rc = new_stage(x, &st);
    for (uint32_t i = 0; rc == NS_OK && i < r->nodes; i++) {
        size_t count;
        rc = node_tokens(x->w, i, r->nodes, &tokens[i], &count);
        if (rc == NS_OK)
            rc = ns_data_loader_new(
                tokens[i], count, x->w->model.batch, x->w->model.seq_len,
                ns__sim_hash3(x->w->seed, i, x->keep ? 0x7761726du : 0x6c6f6164u), &loaders[i]);
    }
    double ring = 2.0 * (r->nodes - 1) / r->nodes * 4.0 * (double)x->n;
    for (uint32_t s = 0; rc == NS_OK && s < r->steps; s++) {
        double sum = 0;
        for (uint32_t i = 0; rc == NS_OK && i < r->nodes; i++) {
            float loss;
            rc = fwd_bwd(x, st, loaders[i], 1.0f / (float)r->nodes, &loss);
            sum += loss;
        }
        if (rc == NS_OK)
            ns_stage_optimize(st, &x->optim, NULL);
        curve_add(x, s + 1, sum / r->nodes);
        x->res->bytes_per_node += ring;
    }
    x->res->bytes_max = x->res->bytes_per_node;
    if (rc == NS_OK)
        rc = evaluate(x, st, &x->res->val_loss);
    if (rc == NS_OK && x->keep != NULL) {
        size_t n;
        memcpy(x->keep, ns_stage_param_buffer(st, &n), x->n * sizeof(float));
    }
    for (uint32_t i = 0; i < r->nodes; i++) {
        ns_data_loader_free(loaders[i]);
        free(tokens[i]);
    }
    ns_stage_free(st);
    return rc;
}

static void node_id(uint64_t seed, uint32_t index, uint8_t id[NS_ID_BYTES])
{
    char name[64];
    int len = snprintf(name, sizeof name, "netsim-diloco/%llu/%u", (unsigned long long)seed, index);
    ns_sha256(id, name, (size_t)len);
}

static int node_setup(dl_ctx *x, dl_node *node)
{
    const ns_dl_run *r = x->run;
    node->x = x;
    node->attacker = node->index >= x->honest;
    node_id(x->w->seed, node->index, node->id);
    node->delta = malloc(x->n * sizeof(float));
    node->agg = malloc(x->n * sizeof(float));
    if (node->delta == NULL || node->agg == NULL)
        return NS_ENOMEM;
    int rc = NS_OK;
    if (!node->attacker) {
        size_t count, n;
        rc = new_stage(x, &node->stage);
        if (rc == NS_OK)
            rc = node_tokens(x->w, node->index, r->nodes, &node->tokens, &count);
        if (rc == NS_OK)
            rc = ns_data_loader_new(node->tokens, count, x->w->model.batch, x->w->model.seq_len,
                                    ns__sim_hash3(x->w->seed, node->index, 0x6c6f6164u),
                                    &node->loader);
        if (rc == NS_OK)
            node->w = ns_stage_param_buffer(node->stage, &n);
    } else {
        ns_stage *st = NULL; /* an attacker starts from the same weights, then never trains */
        node->own_w = malloc(x->n * sizeof(float));
        rc = node->own_w == NULL ? NS_ENOMEM : new_stage(x, &st);
        size_t n;
        if (rc == NS_OK)
            memcpy(node->own_w, ns_stage_param_buffer(st, &n), x->n * sizeof(float));
        ns_stage_free(st);
        node->w = node->own_w;
    }
    if (rc == NS_OK)
        rc = ns_outer_init(&node->outer, node->w, x->n, NS_SYNC_BETA, NS_SYNC_LR);
    node->outer_ready = rc == NS_OK;
    if (rc != NS_OK || r->wire != NS_DL_WIRE_COHORT)
        return rc;
    node->env = (ns_env){.now_ms = env_now,
                         .timer = env_timer,
                         .timer_cancel = env_timer_cancel,
                         .send = env_send,
                         .random = env_random,
                         .ctx = node};
    ns_cohort_config cc = {.group_max = NS_SYNC_GROUP_MAX,
                           .compress = x->compress,
                           .agg = x->agg,
                           .error_feedback = r->error_feedback,
                           .arg = node,
                           .send = cohort_send,
                           .done = cohort_done,
                           .verdict = cohort_verdict};
    memcpy(cc.self_id, node->id, NS_ID_BYTES);
    return ns_cohort_new(&node->cohort, &cc, x->n, &node->env);
}

static void node_teardown(dl_ctx *x, dl_node *node)
{
    if (node->cohort != NULL) {
        for (int why = 0; why < NS_COHORT_REFUSE_COUNT_; why++)
            x->res->refusals += ns_cohort_refusals(node->cohort, (ns_cohort_refusal)why);
    }
    ns_cohort_free(node->cohort);
    if (node->outer_ready)
        ns_outer_free(&node->outer);
    ns_data_loader_free(node->loader);
    free(node->tokens);
    ns_stage_free(node->stage);
    free(node->own_w);
    free(node->delta);
    free(node->agg);
}

/* The blob of node 0's whole Δ at the run's density, as the compression ratio's witness. */
static int measure_blob(dl_ctx *x)
{
    uint8_t *blob;
    size_t len;
    int rc = ns_compress_encode(&x->compress, x->nodes[0].delta, x->n, NULL, &blob, &len);
    if (rc != NS_OK)
        return rc;
    x->blob_ratio_sum += 4.0 * (double)x->n / (double)len;
    free(blob);
    return NS_OK;
}

static int inner_steps(dl_ctx *x, uint64_t round)
{
    const ns_dl_run *r = x->run;
    double *loss = calloc(r->h, sizeof *loss);
    int rc = loss == NULL ? NS_ENOMEM : NS_OK;
    for (uint32_t i = 0; rc == NS_OK && i < x->honest; i++) {
        dl_node *node = &x->nodes[i];
        for (uint32_t s = 0; rc == NS_OK && s < r->h; s++) {
            float l;
            rc = fwd_bwd(x, node->stage, node->loader, 1.0f, &l);
            if (rc == NS_OK)
                ns_stage_optimize(node->stage, &x->optim, NULL);
            loss[s] += l;
        }
    }
    for (uint32_t s = 0; rc == NS_OK && s < r->h; s++)
        curve_add(x, round * r->h + s + 1, loss[s] / x->honest);
    free(loss);
    return rc;
}

static int diloco_round(dl_ctx *x, uint64_t round)
{
    const ns_dl_run *r = x->run;
    /* every round starts later on the virtual clock; what the cores left pending fires first */
    uint64_t start_ms = (round + 1) * DL_ROUND_MS;
    while (fire_next_timer(x, start_ms))
        deliver_queue(x);
    x->now_ms = start_ms;
    int rc = inner_steps(x, round);
    for (uint32_t i = 0; rc == NS_OK && i < r->nodes; i++)
        ns_outer_delta(&x->nodes[i].outer, x->nodes[i].w, x->nodes[i].delta);
    if (rc == NS_OK)
        make_attacks(x);
    if (rc == NS_OK && r->wire == NS_DL_WIRE_COHORT)
        rc = measure_blob(x);
    if (rc == NS_OK)
        rc = r->wire == NS_DL_WIRE_COHORT ? exchange_cohort(x, round + 1) : exchange_raw(x);
    for (uint32_t i = 0; rc == NS_OK && i < r->nodes; i++)
        rc = ns_outer_apply(&x->nodes[i].outer, x->nodes[i].agg, x->nodes[i].w);
    return rc;
}

static void diloco_totals(dl_ctx *x)
{
    const ns_dl_run *r = x->run;
    ns_dl_result *res = x->res;
    double sum = 0;
    for (uint32_t i = 0; i < r->nodes; i++) {
        const dl_node *node = &x->nodes[i];
        sum += (double)node->bytes_wire;
        if ((double)node->bytes_wire > res->bytes_max)
            res->bytes_max = (double)node->bytes_wire;
        if (node->bytes_wire != node->bytes_report)
            res->report_mismatch++;
        if (memcmp(node->w, x->nodes[0].w, x->n * sizeof(float)) != 0)
            res->diverged++;
        if (node->attacker && x->fraud_seen[i])
            res->attackers_caught++;
    }
    res->bytes_per_node = sum / r->nodes;
    /* a cohort owner never reports a verdict on its own part: K - 1 verdicts a sender a round */
    uint64_t per_sender = (uint64_t)res->rounds * (r->wire == NS_DL_WIRE_COHORT ? r->nodes - 1 : 1);
    res->parts_attacker = per_sender * r->attackers;
    res->parts_honest = per_sender * x->honest;
    res->blob_ratio = res->rounds > 0 ? x->blob_ratio_sum / res->rounds : 0;
}

static int run_diloco(dl_ctx *x)
{
    const ns_dl_run *r = x->run;
    x->scratch = malloc(x->n * sizeof(float));
    int rc = x->scratch == NULL ? NS_ENOMEM : NS_OK;
    if (r->wire == NS_DL_WIRE_COHORT && rc == NS_OK) {
        x->queue = calloc(DL_QUEUE_MAX, sizeof *x->queue);
        rc = x->queue == NULL ? NS_ENOMEM : NS_OK;
    }
    for (uint32_t i = 0; i < r->nodes; i++) {
        x->nodes[i].index = i;
        if (rc == NS_OK)
            rc = node_setup(x, &x->nodes[i]);
    }
    uint32_t rounds = r->steps / r->h;
    for (uint32_t round = 0; rc == NS_OK && round < rounds; round++) {
        rc = diloco_round(x, round);
        x->res->rounds = round + 1;
    }
    if (rc == NS_OK) {
        diloco_totals(x);
        rc = evaluate(x, x->nodes[0].stage, &x->res->val_loss);
    }
    for (uint32_t i = 0; i < r->nodes; i++)
        node_teardown(x, &x->nodes[i]);
    while (x->queue != NULL && x->queue_count > 0) {
        free(x->queue[x->queue_head].bytes);
        x->queue_head = (x->queue_head + 1) % DL_QUEUE_MAX;
        x->queue_count--;
    }
    free(x->queue);
    free(x->scratch);
    return rc;
}

static bool run_valid(const ns_dl_run *r)
{
    if (r->nodes < 1 || r->nodes > NS_DL_NODES_MAX || r->steps == 0 || r->attackers >= r->nodes)
        return false;
    if (r->method == NS_DL_DP)
        return r->attackers == 0;
    return r->h > 0 && r->steps % r->h == 0 && r->density > 0 && r->density <= 1;
}

static int ctx_setup(dl_ctx *x)
{
    const ns_dl_model *m = &x->w->model;
    const ns_dl_run *r = x->run;
    x->sc = (ns_stage_config){.arch = x->w->arch,
                              .layer_first = 0,
                              .layer_last = x->w->arch.layers,
                              .batch_max = m->batch,
                              .seq_len_max = m->seq_len,
                              .micro_batches_max = 1};
    ns_optim_config_default(&x->optim);
    x->optim.lr_max = DL_LR_MAX;
    x->optim.lr_min = DL_LR_MIN;
    x->optim.warmup_steps = DL_WARMUP_STEPS;
    x->optim.decay_steps = r->steps;
    ns_compress_config_default(&x->compress);
    x->compress.density = r->density;
    ns_agg_config_default(&x->agg);
    x->agg.kind = r->agg;
    if (r->no_screen) {
        x->agg.reject_sigma = HUGE_VAL;
        x->agg.fraud_sigma = HUGE_VAL;
    }
    x->honest = r->nodes - r->attackers;
    x->curve_every = (r->steps + NS_DL_CURVE_MAX - 1) / NS_DL_CURVE_MAX;
    ns__sim_rng_seed(&x->rng, x->w->seed, 0x61747461636bu); /* "attack" */
    x->n = (size_t)x->w->arch.params;
    size_t cells = (size_t)m->batch * m->seq_len;
    x->rows = malloc((cells + m->batch) * sizeof *x->rows);
    x->inputs = malloc(cells * sizeof *x->inputs);
    x->targets = malloc(cells * sizeof *x->targets);
    if (x->rows == NULL || x->inputs == NULL || x->targets == NULL)
        return NS_ENOMEM;
    return ns_exec_new(&x->exec, 1, NS_EXEC_REPRODUCIBLE);
}

static int run_with(const ns_dl_world *w, const ns_dl_run *run, ns_dl_result *out, float *keep)
{
    memset(out, 0, sizeof *out);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dl_ctx *x = calloc(1, sizeof *x);
    if (x == NULL)
        return out->rc = NS_ENOMEM;
    *x = (dl_ctx){.w = w, .run = run, .res = out, .keep = keep};
    int rc = run_valid(run) ? ctx_setup(x) : NS_EINVAL;
    if (rc == NS_OK)
        rc = run->method == NS_DL_DP ? run_dp(x) : run_diloco(x);
    if (rc == NS_OK && !isfinite(out->val_loss))
        rc = NS_EINVAL;
    ns_exec_free(x->exec);
    free(x->rows);
    free(x->inputs);
    free(x->targets);
    free(x);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    out->wall_s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return out->rc = rc;
}

int ns__dl_run(const ns_dl_world *w, const ns_dl_run *run, ns_dl_result *out)
{
    NS_ASSERT(w != NULL);
    NS_ASSERT(run != NULL);
    NS_ASSERT(out != NULL);
    return run_with(w, run, out, NULL);
}

/* One worker trained for warm_steps: the weights every run of the world starts from. */
static int warm_start(ns_dl_world *w)
{
    if (w->model.warm_steps == 0) {
        w->warm_loss = NAN;
        return NS_OK;
    }
    ns_dl_run run = {.method = NS_DL_DP, .nodes = 1, .steps = w->model.warm_steps, .h = 1};
    snprintf(run.label, sizeof run.label, "warm-start");
    ns_dl_result *res = malloc(sizeof *res);
    float *warm = malloc((size_t)w->arch.params * sizeof *warm);
    int rc = res == NULL || warm == NULL ? NS_ENOMEM : run_with(w, &run, res, warm);
    if (rc == NS_OK) {
        w->warm = warm;
        w->warm_loss = res->val_loss;
        warm = NULL;
    }
    free(warm);
    free(res);
    return rc;
}

double ns__dl_world_warm_loss(const ns_dl_world *w)
{
    return w->warm_loss;
}
