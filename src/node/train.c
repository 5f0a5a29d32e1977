/*
 * train.c: solo training (SPEC S5, the N = 1 Genesis case) on a thread of its own.
 *
 * The trainer owns one whole-model stage (src/exec/), the Genesis data (src/data/) and the
 * checkpoints (src/ckpt/), and runs steps on its own thread so the libuv loop never computes.
 * Everything that can be refused — a model that does not fit the memory budget or the free
 * memory, missing or damaged data, a corrupt tokenizer, checkpoints that exist but none loads —
 * is found before the first large allocation, and leaves what is on disk as it was. The loop
 * thread reads a status snapshot under a mutex, flips the running switch and queues generation
 * requests (answered between two steps through a callback); nothing else is shared. A checkpoint is
 * written every NS_TRAIN_CKPT_EVERY steps and when the trainer stops, so a kill -9 loses at most
 * the steps since the last one.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "neuroshard/ckpt.h"
#include "neuroshard/data.h"
#include "neuroshard/exec.h"
#include "neuroshard/pipeline.h"
#include "neuroshard/sync.h"
#include "node_internal.h"

#define TRAIN_VOCAB       NS_TRAIN_VOCAB
#define TRAIN_BATCH       8
#define TRAIN_SEQ         128
#define TRAIN_SEED        20261126u
#define TRAIN_VAL_EVERY   50
#define TRAIN_VAL_BATCHES 4
#define TRAIN_LOG_EVERY   10
#define TRAIN_KEEP        5
#define TRAIN_DECAY_STEPS 20000
#define MIB               (1024ull * 1024ull)

struct ns_trainer {
    ns_train_config cfg;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock; /* guards status, running, stop, queued */
    pthread_cond_t wake;
    ns_train_status status;
    bool running;
    bool stop;
    uint32_t queued;  /* steps asked for by POST /train_step while paused */
    ns_gen_job *jobs; /* generation requests, oldest first */
    ns_gen_job **jobs_tail;
    uint32_t job_count;
    bool exited; /* the trainer thread takes no more requests */
    /* owned by the trainer thread */
    ns_exec *exec;
    ns_stage *stage;
    ns_bpe *bpe;
    ns_dataset *dataset;
    uint32_t *train_tokens, *val_tokens;
    size_t train_count, val_count;
    ns_data_loader *loader, *val_loader;
    uint32_t *batch;
    int32_t *inputs, *targets;
    ns_optim_config optim;
    ns_ckpt_tensor *weights, *moments;
    size_t weight_count, moment_count;
    ns_kv_cache *kv;   /* generation's, made at the first request */
    ns_exec *gen_exec; /* a fast executor for generation when training is reproducible */
    /* work periods for proofs: the open one is the trainer thread's; closed and the flags are
     * guarded by lock */
    uint32_t keep;          /* checkpoints kept: enough for the window, within the budget */
    uint64_t period_min_ms; /* a work period lasts at least this */
    ns_train_work period;
    ns_train_work closed;
    bool close_wanted, closed_ready;
    uint64_t open_batches; /* period.batches, readable under lock */
    double last_close_s;
    uint64_t closed_through; /* the last step of any closed period (under lock) */
    /* a pipeline stage's open segment: chained hashes of what went in and out since the last
     * aligned step; segment_ok once the segment began at an aligned step */
    uint8_t chain_in[NS_SHA256_BYTES], chain_out[NS_SHA256_BYTES];
    bool segment_ok;
    /* a pipeline (or gradient accumulation alone): the schedule, the inbox (under lock), and
     * the trainer thread's buffers for what neighbours sent */
    ns_pipe *pipe;
    uint32_t rows; /* of a micro-batch */
    struct inbox_msg *inbox, **inbox_tail;
    uint32_t inbox_count;
    float *acts_in[2][NS_PIPE_MICRO_MAX]; /* by step parity and micro-batch */
    int32_t *targets_in[2][NS_PIPE_MICRO_MAX];
    float *grad_in[NS_PIPE_MICRO_MAX];
    float *out_buf, *dinp_buf;
    float micro_loss[NS_PIPE_MICRO_MAX];
    /* what this stage sent in the step in progress and the one before, should a neighbour ask
     * for it again (RESEND, pipeline.h); when it last made progress and how long it waits
     * before asking; when it last answered each neighbour (by direction: [0] before, [1] after) */
    struct sent_frame *sent, **sent_tail;
    double progress_s, resend_after_s, served_s[2];
    /* when the schedule last moved, when each neighbour was last heard from (any pipeline frame
     * or ALIVE), and when this stage last told the quorum a neighbour is unresponsive */
    double moved_s, heard_s[2], suspected_s;
    ns_train_pipe_status pipe_status; /* under lock */
    /* DiLoCo: the outer state (trainer thread), the pseudo-gradient handed out and the
     * cohort's answer (agg, agg_n and the flags under lock) */
    ns_outer outer;
    bool outer_on;
    float *delta, *agg;
    size_t agg_n;
    bool sync_waiting, sync_ready, agg_is_weights;
    uint64_t sync_round, agg_round, round_ms; /* round_ms: when w0 was set (Unix ms) */
    uint8_t w0_hash[NS_SHA256_BYTES];         /* of outer.w0, under lock */
    uint8_t state_hash[NS_SHA256_BYTES];      /* of w0 and momentum (outer_state_hash) */
    ns_train_sync_status sync_status;         /* under lock */
    char ckpt_dir[PATH_MAX + 32];
    char csv_path[PATH_MAX + 32];
};

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t epoch_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static void set_phase(ns_trainer *t, const char *phase)
{
    pthread_mutex_lock(&t->lock);
    snprintf(t->status.phase, sizeof t->status.phase, "%s", phase);
    pthread_mutex_unlock(&t->lock);
}

static void set_error(ns_trainer *t, const char *msg)
{
    pthread_mutex_lock(&t->lock);
    snprintf(t->status.error, sizeof t->status.error, "%s", msg);
    snprintf(t->status.phase, sizeof t->status.phase, "stopped");
    pthread_mutex_unlock(&t->lock);
    NS_LOG_E("train", "training stopped: %s", msg);
}

/* MemAvailable from /proc/meminfo, in bytes; 0 when it cannot be read. */
static uint64_t available_bytes(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (f == NULL)
        return 0;
    char line[128];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    }
    fclose(f);
    return (uint64_t)kib * 1024;
}

/* The model for the memory budget (S3), the tokenizer's vocabulary in place of the default. */
/* Micro-batches a step: as asked, else S6's rule in a pipeline, else one (the whole batch). */
static uint32_t micro_batches_of(const ns_train_config *cfg, const ns_arch *arch)
{
    if (cfg->micro_batches != 0)
        return cfg->micro_batches;
    if (cfg->stages <= 1)
        return 1;
    /* a row's activations across the stage's layers, about 16 floats a hidden unit each */
    uint64_t act_row =
        (uint64_t)TRAIN_SEQ * arch->hidden * 4 * 16 *
        (cfg->layer_last > cfg->layer_first ? cfg->layer_last - cfg->layer_first : 1);
    uint32_t rows =
        ns_pipe_micro_rows(cfg->memory_mb * MIB, act_row, TRAIN_SEQ, arch->hidden, TRAIN_BATCH);
    return TRAIN_BATCH / rows;
}

static int plan_model(const ns_train_config *cfg, ns_stage_config *sc, char *err, size_t err_size)
{
    ns_arch arch;
    if (ns_arch_for_memory(cfg->memory_mb, &arch) != NS_OK) {
        snprintf(err, err_size, "memory_mb %llu is below the smallest model (%d MB)",
                 (unsigned long long)cfg->memory_mb, NS_ARCH_MEMORY_MB_MIN);
        return NS_EINVAL;
    }
    arch.vocab = TRAIN_VOCAB;
    /* --model LxH: the shape rules of S3, the size given (as every node of a pool computes it) */
    if (cfg->model_layers != 0 &&
        ns_arch_for_shape(cfg->model_layers, cfg->model_hidden, TRAIN_VOCAB, &arch) != NS_OK) {
        snprintf(err, err_size, "model %ux%u is not a shape S3 allows", cfg->model_layers,
                 cfg->model_hidden);
        return NS_EINVAL;
    }
    arch.params = (uint64_t)arch.layers * ns_arch_layer_params(&arch) +
                  2ull * arch.vocab * arch.hidden + arch.hidden;
    memset(sc, 0, sizeof *sc);
    sc->arch = arch;
    sc->layer_first = 0;
    sc->layer_last = arch.layers;
    sc->batch_max = TRAIN_BATCH;
    sc->seq_len_max = TRAIN_SEQ;
    sc->micro_batches_max = 1;
    if (cfg->stages > 1) {
        if (cfg->stage >= cfg->stages || cfg->stages > NS_PIPE_STAGES_MAX ||
            cfg->layer_first >= cfg->layer_last || cfg->layer_last > arch.layers) {
            snprintf(err, err_size, "stage %u of %u with layers %u..%u does not fit a model of %u",
                     cfg->stage, cfg->stages, cfg->layer_first, cfg->layer_last, arch.layers);
            return NS_EINVAL;
        }
        sc->layer_first = cfg->layer_first;
        sc->layer_last = cfg->layer_last;
    }
    uint32_t m = micro_batches_of(cfg, &arch);
    if (m == 0 || TRAIN_BATCH % m != 0 || m > NS_PIPE_MICRO_MAX) {
        snprintf(err, err_size, "micro_batches must divide the batch of %u", TRAIN_BATCH);
        return NS_EINVAL;
    }
    sc->batch_max = TRAIN_BATCH / m;
    ns_pipe_config pc = {.stage = cfg->stages > 1 ? cfg->stage : 0,
                         .stages = cfg->stages > 1 ? cfg->stages : 1,
                         .micro_batches = m};
    uint32_t fill = ns_pipe_in_flight_max(&pc);
    if (fill > NS_EXEC_MICRO_BATCHES_MAX) {
        snprintf(err, err_size, "a stage this deep would hold %u micro-batches (at most %u)", fill,
                 NS_EXEC_MICRO_BATCHES_MAX);
        return NS_EINVAL;
    }
    /* Running ahead (pipeline.h) holds more micro-batches; only a stage that waits for gradients
     * (not the finisher, not a node alone) ever does. Auto: as many as the step has, fewer if
     * memory says so; a number asked for is kept or refused. */
    bool waits_for_grads = pc.stages > 1 && pc.stage + 1 < pc.stages;
    bool auto_run = cfg->run_ahead == NS_RUN_AHEAD_AUTO;
    uint32_t run = !waits_for_grads ? 0 : auto_run ? m : cfg->run_ahead;
    uint64_t budget = cfg->memory_mb * MIB;
    uint64_t avail = available_bytes();
    uint64_t need;
    int rc;
    for (;;) {
        pc.run_ahead = run;
        uint32_t hold = ns_pipe_in_flight_max(&pc);
        sc->micro_batches_max = hold < NS_EXEC_MICRO_BATCHES_MAX ? hold : NS_EXEC_MICRO_BATCHES_MAX;
        rc = ns_stage_memory_bytes(sc, &need);
        if (rc != NS_OK) {
            snprintf(err, err_size, "cannot size the model: %s", ns_strerror(rc));
            return rc;
        }
        bool fits = need <= budget && (avail == 0 || need <= avail);
        if (fits || !auto_run || sc->micro_batches_max <= fill)
            break;
        run = sc->micro_batches_max - 1 - (pc.stages - pc.stage); /* hold one fewer */
    }
    if (need > budget) {
        snprintf(err, err_size,
                 "the model for memory_mb %llu needs %llu MiB to train, more than the budget",
                 (unsigned long long)cfg->memory_mb, (unsigned long long)(need / MIB));
        return NS_ELIMIT;
    }
    if (avail != 0 && need > avail) {
        snprintf(err, err_size,
                 "the model needs %llu MiB to train but only %llu MiB are free: lower "
                 "--memory-mb",
                 (unsigned long long)(need / MIB), (unsigned long long)(avail / MIB));
        return NS_ELIMIT;
    }
    return NS_OK;
}

int ns_train_layer_benchmark(const ns_train_config *cfg, uint64_t *latency_us)
{
    ns_stage_config sc;
    char err[NS_ERR_TEXT_SIZE];
    ns_train_config whole = *cfg;
    whole.stages = 0;
    whole.micro_batches = 1;
    if (cfg->model_layers >= 2) { /* sized as the one layer it times: a node of the layer pool
                                     may hold far less than the whole model */
        whole.stages = 2;
        whole.stage = 1;
        whole.layer_first = 1;
        whole.layer_last = 2;
    }
    int rc = plan_model(&whole, &sc, err, sizeof err);
    if (rc != NS_OK)
        return rc;
    /* one block of the current architecture, a middle one (no embedding, no head) when there is */
    sc.layer_first = sc.arch.layers >= 3 ? 1 : 0;
    sc.layer_last = sc.layer_first + 1;
    sc.batch_max = 1;
    sc.micro_batches_max = 1;
    ns_exec *ex = NULL;
    ns_stage *st = NULL;
    rc = ns_exec_new(&ex, cfg->threads, cfg->exec_mode);
    if (rc == NS_OK)
        rc = ns_stage_new(&st, ex, &sc);
    size_t n = (size_t)TRAIN_SEQ * sc.arch.hidden;
    float *in = rc == NS_OK ? malloc(n * sizeof *in) : NULL;
    float *out = rc == NS_OK ? malloc(n * sizeof *out) : NULL;
    int32_t tokens[TRAIN_SEQ] = {0};
    if (rc == NS_OK && (in == NULL || out == NULL))
        rc = NS_ENOMEM;
    double best = INFINITY;
    if (rc == NS_OK) {
        ns_stage_init(st, TRAIN_SEED);
        for (size_t i = 0; i < n; i++)
            in[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        ns_stage_input input = {.batch = 1,
                                .seq_len = TRAIN_SEQ,
                                .tokens = sc.layer_first == 0 ? tokens : NULL,
                                .acts = sc.layer_first == 0 ? NULL : in};
        for (int k = 0; k < 5 && rc == NS_OK; k++) { /* the best of five: the least disturbed */
            double t0 = wall_s();
            rc = ns_stage_forward(st, 0, &input, out);
            double dt = wall_s() - t0;
            if (rc == NS_OK)
                rc = ns_stage_drop(st, 0);
            best = dt < best ? dt : best;
        }
    }
    free(in);
    free(out);
    ns_stage_free(st);
    ns_exec_free(ex);
    if (rc == NS_OK)
        *latency_us = (uint64_t)(best * 1e6) + 1;
    return rc;
}

int ns_trainer_check(const ns_train_config *cfg, char *err, size_t err_size)
{
    ns_stage_config sc;
    return plan_model(cfg, &sc, err, err_size);
}

/* The optimizer of solo training: a verifier's recompute uses the same. */
static void trainer_optim(ns_optim_config *o)
{
    ns_optim_config_default(o);
    o->lr_max = 1e-3;
    o->lr_min = 1e-4;
    o->warmup_steps = 50;
    o->decay_steps = TRAIN_DECAY_STEPS;
}

/* ---- setup on the trainer thread ---------------------------------------------------------- */

/* The Genesis dataset in DATA/dataset, built from the Brown corpus the install step fetched, or
 * a user's folder of text (--dataset DIR) signed by this node's key. */
static int open_data(ns_trainer *t, char *err)
{
    char dir[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/dataset", t->cfg.data_dir);
    t->dataset = calloc(1, sizeof *t->dataset);
    if (t->dataset == NULL)
        return NS_ENOMEM;
    if (t->cfg.dataset_dir[0] != '\0')
        return ns_dataset_build_from_dir(t->cfg.dataset_dir, dir, "local", t->cfg.key, 0,
                                         t->dataset, err);
    if (ns_genesis_open(dir, t->dataset, err) == NS_OK)
        return NS_OK;
    char brown[PATH_MAX];
    int rc = ns_brown_default_dir(brown, sizeof brown);
    if (rc == NS_OK)
        rc = ns_genesis_build(brown, dir, t->dataset, err);
    if (rc != NS_OK && rc != NS_ENOENT)
        return rc;
    if (rc == NS_ENOENT)
        snprintf(err, NS_DATA_ERR_BYTES,
                 "no training data: the Brown corpus is not in the cache (run "
                 "scripts/fetch-data.sh) and no --dataset was given");
    return rc;
}

/* The tokenizer: DATA/tokenizer.bpe when it is there (a damaged one is refused, not replaced),
 * else trained on the training text, deterministically, and saved. */
static int open_tokenizer(ns_trainer *t, char *err)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/tokenizer.bpe", t->cfg.data_dir);
    if (access(path, F_OK) == 0)
        return ns_bpe_load(path, &t->bpe, err);
    size_t total = 0;
    uint8_t *text = NULL;
    for (uint32_t i = 0; i < t->dataset->train_count; i++) {
        uint8_t *shard;
        size_t len;
        int rc = ns_dataset_read_shard(t->dataset, t->dataset->train[i], &shard, &len, err);
        if (rc != NS_OK) {
            free(text);
            return rc;
        }
        uint8_t *grown = realloc(text, total + len);
        if (grown == NULL) {
            free(shard);
            free(text);
            return NS_ENOMEM;
        }
        memcpy(grown + total, shard, len);
        text = grown;
        total += len;
        free(shard);
    }
    int rc = ns_bpe_train(text, total, TRAIN_VOCAB, &t->bpe);
    free(text);
    if (rc == NS_OK)
        rc = ns_bpe_save(t->bpe, path);
    if (rc != NS_OK)
        snprintf(err, NS_DATA_ERR_BYTES, "cannot train or save the tokenizer %.300s: %s", path,
                 ns_strerror(rc));
    return rc;
}

static int open_loaders(ns_trainer *t, char *err)
{
    int rc = ns_data_tokenize_shards(t->bpe, t->dataset, t->dataset->train, t->dataset->train_count,
                                     &t->train_tokens, &t->train_count, err);
    if (rc == NS_OK && t->dataset->val_count > 0) {
        rc = ns_data_tokenize_shards(t->bpe, t->dataset, t->dataset->val, t->dataset->val_count,
                                     &t->val_tokens, &t->val_count, err);
    } else if (rc == NS_OK) {
        /* A dataset of one shard has no validation split: hold out its last tenth instead. */
        size_t held = t->train_count / 10;
        t->val_tokens = malloc(sizeof *t->val_tokens * (held > 0 ? held : 1));
        if (t->val_tokens == NULL)
            return NS_ENOMEM;
        memcpy(t->val_tokens, t->train_tokens + t->train_count - held,
               sizeof *t->val_tokens * held);
        t->val_count = held;
        t->train_count -= held;
    }
    if (rc == NS_OK)
        rc = ns_data_loader_new(t->train_tokens, t->train_count, TRAIN_BATCH, TRAIN_SEQ, TRAIN_SEED,
                                &t->loader);
    if (rc == NS_OK)
        rc = ns_data_loader_new(t->val_tokens, t->val_count, TRAIN_BATCH, TRAIN_SEQ, TRAIN_SEED + 1,
                                &t->val_loader);
    if (rc != NS_OK && err[0] == '\0')
        snprintf(err, NS_DATA_ERR_BYTES, "not enough text to train on: %s", ns_strerror(rc));
    return rc;
}

static ns_ckpt_tensor *ckpt_views(const ns_named_tensor *named, size_t count)
{
    ns_ckpt_tensor *v = calloc(count > 0 ? count : 1, sizeof *v);
    for (size_t i = 0; v != NULL && i < count; i++) {
        v[i].name = named[i].name;
        v[i].ndim = named[i].tensor.ndim;
        for (uint32_t d = 0; d < named[i].tensor.ndim; d++)
            v[i].shape[d] = named[i].tensor.shape[d];
        v[i].data = named[i].tensor.data;
    }
    return v;
}

static void llama_config(const ns_trainer *t, ns_ckpt_llama_config *c)
{
    const ns_arch *a = &ns_stage_config_of(t->stage)->arch;
    *c = (ns_ckpt_llama_config){.hidden_size = a->hidden,
                                .intermediate_size = a->intermediate,
                                .num_attention_heads = a->heads,
                                .num_key_value_heads = a->kv_heads,
                                .num_hidden_layers = a->layers,
                                .vocab_size = a->vocab,
                                .max_position_embeddings = a->seq_len_max,
                                .rms_norm_eps = NS_EXEC_RMSNORM_EPS,
                                .rope_theta = NS_EXEC_ROPE_THETA,
                                .bos_token_id = -1,
                                .eos_token_id = NS_BPE_EOT};
}

/* The model: the newest checkpoint that verifies, else fresh weights from the seed. Checkpoints
 * that exist but none of which loads are an error: they are kept for a person to look at. */
static int open_model(ns_trainer *t, char *err)
{
    ns_stage_config sc;
    int rc = plan_model(&t->cfg, &sc, err, NS_DATA_ERR_BYTES);
    if (rc == NS_OK)
        rc = ns_exec_new(&t->exec, t->cfg.threads, t->cfg.exec_mode);
    if (rc == NS_OK)
        rc = ns_stage_new(&t->stage, t->exec, &sc);
    if (rc != NS_OK) {
        if (err[0] == '\0')
            snprintf(err, NS_DATA_ERR_BYTES, "cannot build the model: %s", ns_strerror(rc));
        return rc;
    }
    size_t np, no;
    const ns_named_tensor *params = ns_stage_params(t->stage, &np);
    const ns_named_tensor *moments = ns_stage_optim_state(t->stage, &no);
    t->weights = ckpt_views(params, np);
    t->moments = ckpt_views(moments, no);
    t->weight_count = np;
    t->moment_count = no;
    if (t->weights == NULL || t->moments == NULL)
        return NS_ENOMEM;
    ns_ckpt_state state;
    ns_ckpt_llama_config config;
    ns_ckpt_info info;
    rc = ns_ckpt_load_latest(t->ckpt_dir, t->weights, np, t->moments, no, &state, &config, &info,
                             err, NS_DATA_ERR_BYTES);
    if (rc == NS_ENOENT) {
        err[0] = '\0';
        ns_stage_init(t->stage, TRAIN_SEED);
        if (t->cfg.sync_every > 0 && t->cfg.key != NULL) {
            /* members of a cohort start from the same weights but read the data from their own
             * place in it (their checkpoints carry it on) */
            uint64_t at = 0, room = ns_data_loader_epoch_sequences(t->loader) / TRAIN_BATCH;
            for (int i = 0; i < 8; i++)
                at = at << 8 | t->cfg.key->node_id[i];
            ns_data_pos pos = {.epoch = 0, .index = room > 0 ? (at % room) * TRAIN_BATCH : 0};
            if (ns_data_loader_seek(t->loader, pos) != NS_OK)
                NS_LOG_W("sync", "the data position of this node could not be set");
        }
        return NS_OK;
    }
    if (rc != NS_OK)
        return rc;
    ns_stage_set_optim_step(t->stage, state.step);
    ns_data_pos pos = {.epoch = state.data_epoch, .index = state.data_offset};
    if (ns_data_loader_seek(t->loader, pos) != NS_OK)
        NS_LOG_W("train", "saved data position not valid for this data; starting the epoch over");
    NS_LOG_I("train", "resumed from checkpoint step=%llu dir=%s", (unsigned long long)state.step,
             t->ckpt_dir);
    return NS_OK;
}

static void outer_save(ns_trainer *t, uint64_t step);
static double held_out_loss(ns_trainer *t, int batches);

static int save_checkpoint(ns_trainer *t)
{
    ns_data_pos pos = ns_data_loader_pos(t->loader);
    ns_ckpt_state state = {.step = ns_stage_optim_step(t->stage),
                           .timestamp_ms = epoch_ms(),
                           .data_epoch = pos.epoch,
                           .data_offset = pos.index};
    ns_ckpt_llama_config config;
    llama_config(t, &config);
    char err[NS_CKPT_ERR_SIZE];
    ns_ckpt_info info;
    int rc = ns_ckpt_save(t->ckpt_dir, t->weights, t->weight_count, t->moments, t->moment_count,
                          &state, &config, t->keep, &info, err, sizeof err);
    if (rc != NS_OK) {
        NS_LOG_E("train", "checkpoint failed: %s", err);
        return rc;
    }
    if (t->outer_on)
        outer_save(t, state.step);
    pthread_mutex_lock(&t->lock);
    t->status.checkpoint_step = state.step;
    pthread_mutex_unlock(&t->lock);
    NS_LOG_I("train", "checkpoint step=%llu dir=%s", (unsigned long long)state.step, t->ckpt_dir);
    return NS_OK;
}

/* ---- steps -------------------------------------------------------------------------------- */

static void split_batch(ns_trainer *t)
{
    for (uint32_t b = 0; b < TRAIN_BATCH; b++) {
        const uint32_t *row = t->batch + (size_t)b * (TRAIN_SEQ + 1);
        for (uint32_t i = 0; i < TRAIN_SEQ; i++) {
            t->inputs[(size_t)b * TRAIN_SEQ + i] = (int32_t)row[i];
            t->targets[(size_t)b * TRAIN_SEQ + i] = (int32_t)row[i + 1];
        }
    }
}

static int forward_batch(ns_trainer *t, uint64_t id, float *loss)
{
    split_batch(t);
    ns_stage_input in = {
        .batch = TRAIN_BATCH, .seq_len = TRAIN_SEQ, .tokens = t->inputs, .targets = t->targets};
    return ns_stage_forward(t->stage, id, &in, loss);
}

static int train_step(ns_trainer *t, float *loss, ns_optim_report *report)
{
    uint64_t id = ns_stage_optim_step(t->stage);
    ns_data_loader_next(t->loader, t->batch);
    int rc = forward_batch(t, id, loss);
    float one = 1.0f;
    if (rc == NS_OK)
        rc = ns_stage_backward(t->stage, id, &one, NULL);
    if (rc == NS_OK)
        ns_stage_optimize(t->stage, &t->optim, report);
    return rc;
}

/* ---- a step as a pipeline stage (pipeline.h) ---------------------------------------------- */

/* What a neighbouring stage sent, copied off the loop thread. */
typedef struct inbox_msg {
    struct inbox_msg *next;
    ns_pipe_msg m;    /* data and targets point into the allocation below */
    float *acts;      /* [rows, T, C] */
    int32_t *targets; /* [rows, T] */
} inbox_msg;

static bool is_pipeline(const ns_trainer *t)
{
    return t->pipe != NULL;
}

static bool has_head(const ns_trainer *t)
{
    return ns_stage_has_head(t->stage);
}

int ns_trainer_pipe_input(ns_trainer *t, const ns_pipe_msg *m)
{
    size_t cells = (size_t)m->rows * m->seq_len, floats = cells * m->hidden;
    bool tensor = m->type == NS_FRAME_PIPE_ACT || m->type == NS_FRAME_PIPE_GRAD;
    inbox_msg *in = calloc(1, sizeof *in + (tensor ? floats * sizeof(float) + cells * 4 : 0));
    if (in == NULL)
        return NS_ENOMEM;
    in->m = *m;
    if (tensor) {
        in->acts = (float *)(void *)(in + 1);
        memcpy(in->acts, m->data, floats * sizeof(float));
        in->targets = (int32_t *)(void *)(in->acts + floats);
        for (size_t i = 0; m->type == NS_FRAME_PIPE_ACT && i < cells; i++)
            in->targets[i] = ns_pipe_msg_target(m, i);
    }
    in->m.data = NULL;
    in->m.targets = NULL;
    pthread_mutex_lock(&t->lock);
    int rc = NS_OK;
    if (t->inbox_count >= NS_TRAIN_INBOX_MAX || t->exited) {
        rc = NS_ELIMIT;
    } else {
        *t->inbox_tail = in;
        t->inbox_tail = &in->next;
        t->inbox_count++;
        pthread_cond_signal(&t->wake);
    }
    pthread_mutex_unlock(&t->lock);
    if (rc != NS_OK)
        free(in);
    return rc;
}

static void serve_resend(ns_trainer *t, const ns_pipe_msg *m);

/* The neighbour a message came from: -1 the stage before, +1 the one after. */
static int sender_of(const ns_pipe_msg *m)
{
    switch (m->type) {
    case NS_FRAME_PIPE_ACT:
    case NS_FRAME_PIPE_NORM:
        return -1;
    case NS_FRAME_PIPE_RESEND: /* from the stage that awaits what this one owes */
        return -ns_pipe_input_from(m->awaits);
    case NS_FRAME_PIPE_ALIVE: /* from the stage this one asked */
        return ns_pipe_input_from(m->awaits);
    default:
        return +1;
    }
}

/* Hands what arrived to the schedule; what it refuses is counted and dropped. */
static void take_inbox(ns_trainer *t)
{
    pthread_mutex_lock(&t->lock);
    inbox_msg *list = t->inbox;
    t->inbox = NULL;
    t->inbox_tail = &t->inbox;
    t->inbox_count = 0;
    pthread_mutex_unlock(&t->lock);
    size_t cells = (size_t)t->rows * TRAIN_SEQ;
    size_t floats = cells * ns_stage_config_of(t->stage)->arch.hidden;
    while (list != NULL) {
        inbox_msg *in = list;
        list = in->next;
        const ns_pipe_msg *m = &in->m;
        t->heard_s[sender_of(m) > 0] = wall_s();
        ns_pipe_refusal why = NS_PIPE_UNASKED;
        int rc = NS_EINVAL;
        bool shaped = m->rows == t->rows && m->seq_len == TRAIN_SEQ &&
                      (size_t)m->rows * m->seq_len * m->hidden == floats;
        if (m->type == NS_FRAME_PIPE_ACT && shaped) {
            rc = ns_pipe_on_activation(t->pipe, m->step, m->micro, &why);
            if (rc == NS_OK) {
                memcpy(t->acts_in[m->step & 1][m->micro], in->acts, floats * sizeof(float));
                memcpy(t->targets_in[m->step & 1][m->micro], in->targets, cells * 4);
            }
        } else if (m->type == NS_FRAME_PIPE_GRAD && shaped) {
            rc = ns_pipe_on_gradient(t->pipe, m->step, m->micro, &why);
            if (rc == NS_OK)
                memcpy(t->grad_in[m->micro], in->acts, floats * sizeof(float));
        } else if (m->type == NS_FRAME_PIPE_NORM) {
            rc = ns_pipe_on_norm(t->pipe, m->step, m->norm, &why);
        } else if (m->type == NS_FRAME_PIPE_SCALE) {
            rc = ns_pipe_on_scale(t->pipe, m->step, m->scale, &why);
        } else if (m->type == NS_FRAME_PIPE_RESEND) {
            serve_resend(t, m);
            rc = NS_OK;
        } else if (m->type == NS_FRAME_PIPE_ALIVE) {
            rc = NS_OK; /* the neighbour is there (heard above) */
        } else {
            NS_LOG_W("pipe", "a %u x %u x %u tensor where this stage takes %u x %u: refused",
                     m->rows, m->seq_len, m->hidden, t->rows, TRAIN_SEQ);
        }
        if (rc != NS_OK) {
            pthread_mutex_lock(&t->lock);
            t->pipe_status.refused[why]++;
            pthread_mutex_unlock(&t->lock);
            NS_LOG_D("pipe", "message refused: %s", ns_pipe_refusal_name(why));
        }
        free(in);
    }
}

/* A frame this stage sent, kept whole (body, then tensor) for a RESEND. */
typedef struct sent_frame {
    struct sent_frame *next;
    uint64_t step;
    uint32_t micro;
    int dir;
    ns_frame f;
    uint8_t bytes[];
} sent_frame;

#define RESEND_FIRST_S 0.2 /* S6: ask again after 200 ms without the input awaited */
#define RESEND_MAX_S   1.6 /* doubling while nothing comes, up to this */
#define RESEND_SERVE_S 0.1 /* a neighbour's RESENDs are answered at most this often */
/* asked this long with neither frames nor ALIVE: the neighbour is hung or cut off, and the
 * quorum should replace it */
#define SUSPECT_S 4.0

static void keep_sent(ns_trainer *t, int dir, const ns_pipe_msg *m, const ns_frame *f)
{
    size_t tensor = f->tensor.dtype != NS_DTYPE_NONE ? f->tensor.bytes : 0;
    sent_frame *k = malloc(sizeof *k + f->body_len + tensor);
    if (k == NULL)
        return; /* not kept: a loss of this frame would be recovered by nobody, as before */
    *k = (sent_frame){.step = m->step, .micro = m->micro, .dir = dir, .f = *f};
    memcpy(k->bytes, f->body, f->body_len);
    k->f.body = k->bytes;
    if (tensor > 0) {
        memcpy(k->bytes + f->body_len, f->tensor.data, tensor);
        k->f.tensor.data = k->bytes + f->body_len;
    }
    if (t->sent_tail == NULL)
        t->sent_tail = &t->sent;
    *t->sent_tail = k;
    t->sent_tail = &k->next;
}

/* Forgets what was sent before the step before `step`. */
static void forget_sent(ns_trainer *t, uint64_t step)
{
    while (t->sent != NULL && (step == UINT64_MAX || t->sent->step + 1 < step)) {
        sent_frame *k = t->sent;
        t->sent = k->next;
        free(k);
    }
    if (t->sent == NULL)
        t->sent_tail = &t->sent;
}

/* Sends a message to the stage before (dir -1) or after (+1); keeps the schedule's messages
 * for a RESEND. */
static void pipe_send(ns_trainer *t, int dir, const ns_pipe_msg *m, const int32_t *targets)
{
    if (t->cfg.send == NULL)
        return;
    uint8_t stack[256];
    size_t need = ns_pipe_msg_body_bytes(m);
    uint8_t *body = need <= sizeof stack ? stack : malloc(need);
    if (body == NULL)
        return;
    ns_frame f;
    ns_pipe_msg with = *m;
    with.generation = t->cfg.generation;
    ns_pipe_msg_frame(&with, targets, body, &f);
    t->cfg.send(t->cfg.send_arg, dir, &f);
    if (m->type != NS_FRAME_PIPE_RESEND)
        keep_sent(t, dir, m, &f);
    if (body != stack)
        free(body);
}

/* The input a frame carries to the stage that receives it. */
static ns_pipe_input input_of(uint32_t type)
{
    switch (type) {
    case NS_FRAME_PIPE_ACT:
        return NS_PIPE_IN_ACT;
    case NS_FRAME_PIPE_GRAD:
        return NS_PIPE_IN_GRAD;
    case NS_FRAME_PIPE_NORM:
        return NS_PIPE_IN_NORM;
    case NS_FRAME_PIPE_SCALE:
        return NS_PIPE_IN_SCALE;
    default:
        return NS_PIPE_IN_NONE;
    }
}

/* A neighbour waits for an input of step m->step that this stage sent (or has not sent yet):
 * sends again, toward it, every frame of that step from the awaited one on. ACTs go before the
 * NORM and GRADs before the SCALE, so "from there on" is: the same kind from that micro-batch,
 * then the sum or scale that follows them. */
static void serve_resend(ns_trainer *t, const ns_pipe_msg *m)
{
    int dir = -ns_pipe_input_from(m->awaits); /* the asker is after this stage when it waits
                                                 for an ACT or a NORM */
    double now = wall_s();
    if (now - t->served_s[dir > 0] < RESEND_SERVE_S)
        return; /* asked again already: the last answer is on its way */
    t->served_s[dir > 0] = now;
    ns_pipe_input tail = m->awaits == NS_PIPE_IN_ACT || m->awaits == NS_PIPE_IN_NORM
                             ? NS_PIPE_IN_NORM
                             : NS_PIPE_IN_SCALE;
    uint64_t n = 0;
    for (const sent_frame *k = t->sent; k != NULL; k = k->next) {
        ns_pipe_input in = input_of(k->f.type);
        bool wanted = in == tail || (in == m->awaits && k->micro >= m->micro);
        if (k->step != m->step || k->dir != dir || !wanted)
            continue;
        t->cfg.send(t->cfg.send_arg, dir, &k->f);
        n++;
    }
    if (n > 0)
        NS_LOG_D("pipe", "sent %" PRIu64 " frames of step %" PRIu64 " again, as asked", n, m->step);
    pthread_mutex_lock(&t->lock);
    t->pipe_status.resent += n;
    pthread_mutex_unlock(&t->lock);
}

/* The stage has waited for `op`'s input since its last progress: asks the neighbour that owes it
 * to send it again, then waits twice as long before asking again. */
static void maybe_ask_resend(ns_trainer *t, const ns_pipe_op *op)
{
    const ns_pipe_config *pc = ns_pipe_config_of(t->pipe);
    int from = ns_pipe_input_from(op->awaits);
    double now = wall_s();
    if (from == 0 || (from < 0 && pc->stage == 0) || (from > 0 && pc->stage + 1 == pc->stages) ||
        now - t->progress_s < t->resend_after_s)
        return;
    ns_pipe_msg ask = {
        .type = NS_FRAME_PIPE_RESEND, .step = op->step, .micro = op->micro, .awaits = op->awaits};
    pipe_send(t, from, &ask, NULL);
    t->progress_s = now;
    t->resend_after_s = t->resend_after_s * 2 < RESEND_MAX_S ? t->resend_after_s * 2 : RESEND_MAX_S;
    pthread_mutex_lock(&t->lock);
    t->pipe_status.resend_asked++;
    pthread_mutex_unlock(&t->lock);
    /* S6: no answer at all (not even ALIVE, which the neighbour's network thread sends at once)
     * while this stage asked for SUSPECT_S: route around it. The swarm turns this into a
     * failover to the next candidate for its layers (a replica); a stage computing slowly still
     * answers, so only a hung, stopped or cut-off one is named. */
    double since = now - t->moved_s, silent = now - t->heard_s[from > 0];
    if (since >= SUSPECT_S && silent >= SUSPECT_S && now - t->suspected_s >= 3 * SUSPECT_S) {
        t->suspected_s = now;
        NS_LOG_W("pipe",
                 "the stage %s has answered nothing for %.1f s of asking: asking the quorum "
                 "to replace it",
                 from < 0 ? "before" : "after", since);
        ns_frame f = {.type = NS_FRAME_SWARM_SUSPECT};
        t->cfg.send(t->cfg.send_arg, from, &f);
        pthread_mutex_lock(&t->lock);
        t->pipe_status.suspected++;
        pthread_mutex_unlock(&t->lock);
    }
}

/* Waits for the inbox (or a stop); false when the trainer is stopping. */
static bool wait_inbox(ns_trainer *t)
{
    double t0 = wall_s();
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 50 * 1000000L; /* often enough to ask for a resend in time */
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->lock);
    if (t->inbox == NULL && !t->stop)
        (void)pthread_cond_timedwait(&t->wake, &t->lock, &until);
    bool go_on = !t->stop;
    t->pipe_status.wait_s += wall_s() - t0;
    snprintf(t->status.phase, sizeof t->status.phase, "waiting for the pipeline");
    pthread_mutex_unlock(&t->lock);
    return go_on;
}

/* One step of the 1F1B schedule: the initiator reads the batch, each micro-batch goes forward and
 * back through the stages, the gradient norm and the clip scale travel along, and every stage
 * updates. *loss is the step's loss at the stage with the head (NaN elsewhere). NS_EWAIT when the
 * trainer was stopped while it waited. */
static void chain_add(uint8_t h[NS_SHA256_BYTES], const void *buf, size_t len);

static int pipe_step(ns_trainer *t, float *loss, ns_optim_report *report)
{
    const ns_pipe_config *pc = ns_pipe_config_of(t->pipe);
    bool first = pc->stage == 0, last = pc->stage + 1 == pc->stages;
    uint32_t m = pc->micro_batches, C = ns_stage_config_of(t->stage)->arch.hidden;
    size_t cells = (size_t)t->rows * TRAIN_SEQ;
    uint64_t step = ns_pipe_step(t->pipe);
    if (first) {
        ns_data_loader_next(t->loader, t->batch);
        split_batch(t);
    }
    forget_sent(t, step);
    t->progress_s = wall_s();
    t->moved_s = t->progress_s;
    t->resend_after_s = RESEND_FIRST_S;
    double sq = 0.0, busy = 0.0;
    const float inv_m = 1.0f / (float)m;
    for (;;) {
        take_inbox(t);
        ns_pipe_op op;
        ns_pipe_next(t->pipe, &op);
        if (op.kind == NS_PIPE_WAIT) {
            maybe_ask_resend(t, &op);
            if (!wait_inbox(t))
                return NS_EWAIT;
            continue;
        }
        double t0 = wall_s();
        int rc = NS_OK;
        uint32_t i = op.micro;
        const int32_t *targets = first ? t->targets + i * cells : t->targets_in[step & 1][i];
        if (op.kind == NS_PIPE_FORWARD) {
            ns_stage_input in = {.batch = t->rows,
                                 .seq_len = TRAIN_SEQ,
                                 .tokens = first ? t->inputs + i * cells : NULL,
                                 .acts = first ? NULL : t->acts_in[step & 1][i],
                                 .targets = last ? targets : NULL};
            rc = ns_stage_forward(t->stage, i, &in, t->out_buf);
            if (rc == NS_OK && last)
                t->micro_loss[i] = t->out_buf[0];
            if (rc == NS_OK && pc->stages > 1) { /* what the neighbours' proofs must agree on */
                if (first)
                    chain_add(t->chain_in, in.tokens, sizeof *in.tokens * cells);
                else
                    chain_add(t->chain_in, in.acts, sizeof *in.acts * cells * C);
                if (last)
                    chain_add(t->chain_out, &t->micro_loss[i], sizeof t->micro_loss[i]);
                else
                    chain_add(t->chain_out, t->out_buf, sizeof *t->out_buf * cells * C);
            }
            if (rc == NS_OK && !last) {
                ns_pipe_msg msg = {.type = NS_FRAME_PIPE_ACT,
                                   .step = step,
                                   .micro = i,
                                   .rows = t->rows,
                                   .seq_len = TRAIN_SEQ,
                                   .hidden = C,
                                   .data = t->out_buf};
                pipe_send(t, +1, &msg, targets);
            }
        } else if (op.kind == NS_PIPE_BACKWARD) {
            rc = ns_stage_backward(t->stage, i, last ? &inv_m : t->grad_in[i],
                                   first ? NULL : t->dinp_buf);
            if (rc == NS_OK && !first) {
                ns_pipe_msg msg = {.type = NS_FRAME_PIPE_GRAD,
                                   .step = step,
                                   .micro = i,
                                   .rows = t->rows,
                                   .seq_len = TRAIN_SEQ,
                                   .hidden = C,
                                   .data = t->dinp_buf};
                pipe_send(t, -1, &msg, NULL);
            }
        } else if (op.kind == NS_PIPE_NORM) {
            sq = ns_stage_grad_sq_sum_from(t->stage, op.norm_in);
            if (last) {
                ns_pipe_scale(t->pipe, ns_optim_clip_scale(&t->optim, sq));
            } else {
                ns_pipe_msg msg = {.type = NS_FRAME_PIPE_NORM, .step = step, .norm = sq};
                pipe_send(t, +1, &msg, NULL);
            }
        } else {
            if (!first) {
                ns_pipe_msg msg = {.type = NS_FRAME_PIPE_SCALE, .step = step, .scale = op.scale};
                pipe_send(t, -1, &msg, NULL);
            }
            double lr = ns_optim_lr(&t->optim, ns_stage_optim_step(t->stage));
            ns_stage_adamw_step(t->stage, &t->optim, op.scale);
            *report = (ns_optim_report){
                .grad_norm = last ? sqrt(sq) : 0.0, .lr = lr, .clip_scale = op.scale};
        }
        if (rc != NS_OK)
            return rc;
        ns_pipe_done(t->pipe, &op);
        t->progress_s = wall_s();
        t->moved_s = t->progress_s;
        t->resend_after_s = RESEND_FIRST_S;
        busy += wall_s() - t0;
        if (op.kind != NS_PIPE_UPDATE)
            continue;
        float sum = 0.0f;
        for (uint32_t k = 0; k < m; k++)
            sum += t->micro_loss[k] * inv_m;
        *loss = last ? (m == 1 ? t->micro_loss[0] : sum) : NAN;
        pthread_mutex_lock(&t->lock);
        t->pipe_status.busy_s += busy;
        t->pipe_status.steps++;
        t->pipe_status.ran_ahead = ns_pipe_ran_ahead(t->pipe);
        pthread_mutex_unlock(&t->lock);
        return NS_OK;
    }
}

/* The schedule and buffers of a pipeline stage (or of gradient accumulation alone). */
static int open_pipe(ns_trainer *t)
{
    const ns_stage_config *sc = ns_stage_config_of(t->stage);
    uint32_t m = TRAIN_BATCH / sc->batch_max;
    bool alone = t->cfg.stages <= 1;
    if (alone && m == 1)
        return NS_OK; /* the plain step */
    ns_pipe_config pc = {
        .stage = alone ? 0 : t->cfg.stage, .stages = alone ? 1 : t->cfg.stages, .micro_batches = m};
    uint32_t fill = ns_pipe_in_flight_max(&pc); /* plan_model sized the stage for any run ahead */
    if (sc->micro_batches_max > fill)
        pc.run_ahead = sc->micro_batches_max - (pc.stages - pc.stage);
    int rc = ns_pipe_new(&t->pipe, &pc, ns_stage_optim_step(t->stage));
    if (rc != NS_OK)
        return rc;
    t->rows = sc->batch_max;
    size_t cells = (size_t)t->rows * TRAIN_SEQ, floats = cells * sc->arch.hidden;
    for (uint32_t i = 0; i < m; i++) {
        for (int k = 0; k < 2; k++) {
            t->acts_in[k][i] = calloc(floats, sizeof(float));
            t->targets_in[k][i] = calloc(cells, sizeof(int32_t));
            if (t->acts_in[k][i] == NULL || t->targets_in[k][i] == NULL)
                return NS_ENOMEM;
        }
        t->grad_in[i] = calloc(floats, sizeof(float));
        if (t->grad_in[i] == NULL)
            return NS_ENOMEM;
    }
    t->out_buf = calloc(floats > 1 ? floats : 1, sizeof(float));
    t->dinp_buf = calloc(floats, sizeof(float));
    if (t->out_buf == NULL || t->dinp_buf == NULL)
        return NS_ENOMEM;
    pthread_mutex_lock(&t->lock);
    t->pipe_status = (ns_train_pipe_status){.on = true,
                                            .stage = pc.stage,
                                            .stages = pc.stages,
                                            .layer_first = sc->layer_first,
                                            .layer_last = sc->layer_last,
                                            .micro_batches = m,
                                            .run_ahead = pc.run_ahead,
                                            .rows = t->rows,
                                            .inbox_max = NS_TRAIN_INBOX_MAX};
    pthread_mutex_unlock(&t->lock);
    NS_LOG_I("pipe", "stage %u of %u: layers %u..%u%s%s, %u micro-batches of %u rows, %u run ahead",
             pc.stage, pc.stages, sc->layer_first, sc->layer_last,
             ns_stage_has_embedding(t->stage) ? " +embedding" : "",
             ns_stage_has_head(t->stage) ? " +head" : "", m, t->rows, pc.run_ahead);
    return NS_OK;
}

void ns_trainer_pipe_status(ns_trainer *t, ns_train_pipe_status *out)
{
    pthread_mutex_lock(&t->lock);
    *out = t->pipe_status;
    out->inbox = t->inbox_count;
    pthread_mutex_unlock(&t->lock);
}

static void free_pipe(ns_trainer *t)
{
    ns_pipe_free(t->pipe);
    for (uint32_t i = 0; i < NS_PIPE_MICRO_MAX; i++) {
        free(t->acts_in[0][i]);
        free(t->acts_in[1][i]);
        free(t->targets_in[0][i]);
        free(t->targets_in[1][i]);
        free(t->grad_in[i]);
    }
    free(t->out_buf);
    free(t->dinp_buf);
    forget_sent(t, UINT64_MAX);
    while (t->inbox != NULL) {
        inbox_msg *in = t->inbox;
        t->inbox = in->next;
        free(in);
    }
}

/* Mean loss over a few held-out batches (the same ones every time: the loader is reset). */
static double held_out_loss(ns_trainer *t, int batches);

static double validate(ns_trainer *t)
{
    return held_out_loss(t, TRAIN_VAL_BATCHES);
}

/* Mean loss over the first `batches` held-out batches. */
static double held_out_loss(ns_trainer *t, int batches)
{
    if (t->cfg.stages > 1)
        return NAN; /* a stage cannot: the whole pipeline would have to run it */
    ns_data_pos start = {0, 0};
    if (ns_data_loader_seek(t->val_loader, start) != NS_OK)
        return NAN;
    double sum = 0;
    for (int k = 0; k < batches; k++) {
        ns_data_loader_next(t->val_loader, t->batch);
        float loss;
        if (forward_batch(t, UINT64_MAX - 1, &loss) != NS_OK)
            return NAN;
        if (ns_stage_drop(t->stage, UINT64_MAX - 1) != NS_OK)
            return NAN;
        sum += loss;
    }
    return sum / batches;
}

static void append_csv(ns_trainer *t, uint64_t step, double loss, double val, double lr,
                       double tok_s)
{
    FILE *f = fopen(t->csv_path, "a");
    if (f == NULL)
        return;
    if (ftell(f) == 0)
        fprintf(f, "step,loss,val_loss,lr,tokens_per_s,unix_ms\n");
    fprintf(f, "%llu,%.9g,%.5f,%.3g,%.1f,%llu\n", (unsigned long long)step, loss, val, lr, tok_s,
            (unsigned long long)epoch_ms());
    fclose(f);
}

/* What the trainer thread does next. */
typedef enum next_work { WORK_STOP, WORK_STEP, WORK_GENERATE } next_work;

/* Waits until there is a step or a generation request; requests go first. */
static next_work next_work_wait(ns_trainer *t, ns_gen_job **job)
{
    pthread_mutex_lock(&t->lock);
    while (!t->stop && !t->running && t->queued == 0 && t->jobs == NULL)
        pthread_cond_wait(&t->wake, &t->lock);
    next_work w = WORK_STOP;
    if (t->stop) {
        snprintf(t->status.phase, sizeof t->status.phase, "stopping");
    } else if (t->jobs != NULL) {
        *job = t->jobs;
        t->jobs = (*job)->next;
        if (t->jobs == NULL)
            t->jobs_tail = &t->jobs;
        t->job_count--;
        w = WORK_GENERATE;
    } else {
        if (!t->running)
            t->queued--;
        snprintf(t->status.phase, sizeof t->status.phase, "training");
        w = WORK_STEP;
    }
    pthread_mutex_unlock(&t->lock);
    return w;
}

static void record_step(ns_trainer *t, uint64_t step, float loss, const ns_optim_report *rep,
                        double step_s)
{
    double tok_s = (double)TRAIN_BATCH * TRAIN_SEQ / (step_s > 1e-9 ? step_s : 1e-9);
    double val = NAN;
    if (step % TRAIN_VAL_EVERY == 0 || step == 1)
        val = validate(t);
    pthread_mutex_lock(&t->lock);
    ns_train_status *s = &t->status;
    s->step = step;
    if (!isnan(loss))
        s->loss = loss;
    s->tokens_per_s = s->tokens_per_s == 0 ? tok_s : 0.9 * s->tokens_per_s + 0.1 * tok_s;
    s->lr = rep->lr;
    s->grad_norm = rep->grad_norm;
    s->tokens_seen += (uint64_t)TRAIN_BATCH * TRAIN_SEQ;
    if (!isnan(val))
        s->val_loss = val;
    uint64_t left = step < TRAIN_DECAY_STEPS ? TRAIN_DECAY_STEPS - step : 0;
    s->eta_s = (uint64_t)((double)left * (double)TRAIN_BATCH * TRAIN_SEQ / s->tokens_per_s);
    pthread_mutex_unlock(&t->lock);
    if (step % TRAIN_LOG_EVERY == 0 || step == 1 || !isnan(val))
        NS_LOG_I("train", "step=%llu loss=%.4f val_loss=%.4f lr=%.2e tok_s=%.0f eta_s=%llu",
                 (unsigned long long)step, loss, t->status.val_loss, rep->lr,
                 t->status.tokens_per_s, (unsigned long long)t->status.eta_s);
    append_csv(t, step, loss, isnan(val) ? t->status.val_loss : val, rep->lr, tok_s);
}

/* ---- work periods for proofs -------------------------------------------------------------- */

static void hash_model(ns_trainer *t, uint8_t out[NS_SHA256_BYTES])
{
    size_t n;
    const float *w = ns_stage_param_buffer(t->stage, &n);
    ns_ckpt_sha256(out, w, n * sizeof *w);
}

/* How many checkpoints to keep and how long a work period must last: every proof still in its
 * challenge window needs the checkpoint its period starts from (window / period + 2 of them),
 * and they must fit the disk budget: a large model gets longer periods (at most 10 minutes). */
static void plan_retention(ns_trainer *t)
{
    size_t np, no;
    (void)ns_stage_params(t->stage, &np);
    (void)ns_stage_optim_state(t->stage, &no);
    uint64_t ckpt_bytes = (uint64_t)(np + no) * sizeof(float) + 1;
    uint64_t fit = t->cfg.ckpt_budget_mb * MIB / ckpt_bytes;
    uint64_t interval = t->cfg.interval_ms > 0 ? t->cfg.interval_ms : 60000;
    uint64_t want = t->cfg.window_ms / interval + 3;
    uint64_t keep = want < fit ? want : fit;
    if (keep < 3)
        keep = 3;
    t->keep = (uint32_t)(keep > TRAIN_KEEP ? keep : TRAIN_KEEP);
    t->period_min_ms = keep >= want ? 0 : t->cfg.window_ms / (keep - 2);
    if (t->period_min_ms > 10 * 60 * 1000)
        t->period_min_ms = 10 * 60 * 1000;
    NS_LOG_I("train", "checkpoints kept=%u work period at least %llus (budget %llu MiB)", t->keep,
             (unsigned long long)(t->period_min_ms / 1000),
             (unsigned long long)t->cfg.ckpt_budget_mb);
}

/* h = SHA-256(h || SHA-256(buf)): one tensor more in a segment's chain. */
static void chain_add(uint8_t h[NS_SHA256_BYTES], const void *buf, size_t len)
{
    uint8_t both[2 * NS_SHA256_BYTES];
    memcpy(both, h, NS_SHA256_BYTES);
    ns_ckpt_sha256(both + NS_SHA256_BYTES, buf, len);
    ns_sha256(h, both, sizeof both);
}

/* A pipeline stage at step `step` (just done): ends the open segment at an aligned step. Its
 * chains go into the period when the segment began aligned and its steps were never proved
 * before (a restart recomputes steps a closed period already holds); otherwise the period starts
 * again here. false when this step is not counted. */
static bool pipe_segment(ns_trainer *t, uint64_t step)
{
    ns_train_work *p = &t->period;
    bool aligned = step % t->cfg.checkpoint_every == 0;
    bool counted = t->segment_ok && step > t->cfg.proved_through;
    if (aligned) {
        if (counted && p->segments < NS_TRAIN_SEGMENTS_MAX) {
            memcpy(p->segment_in[p->segments], t->chain_in, NS_SHA256_BYTES);
            memcpy(p->segment_out[p->segments], t->chain_out, NS_SHA256_BYTES);
            p->segments++;
        }
        memset(t->chain_in, 0, sizeof t->chain_in);
        memset(t->chain_out, 0, sizeof t->chain_out);
        if (!counted && p->batches == 0) { /* the period starts at this aligned step */
            p->ckpt_step = step;
            hash_model(t, p->model_before);
        }
        t->segment_ok = true;
    }
    return counted;
}

/* After a step: counts it into the open period; when the loop asked and the period has lasted
 * period_min_ms, writes a checkpoint and closes the period there (a pipeline stage: at an aligned
 * step, after whole segments). true when it checkpointed. */
static bool note_work(ns_trainer *t, ns_data_pos before, float loss, double step_s, bool sync_now)
{
    ns_train_work *p = &t->period;
    bool pipeline = t->cfg.stages > 1;
    uint64_t step = ns_stage_optim_step(t->stage);
    if (pipeline && !pipe_segment(t, step))
        return false;
    if (p->batches == 0) {
        p->batch_first = before.index;
        p->data_epoch = before.epoch;
        p->loss_first = loss;
    }
    p->batches++;
    p->tokens += (uint64_t)TRAIN_BATCH * TRAIN_SEQ;
    p->loss_last = loss;
    const ns_stage_config *sc = ns_stage_config_of(t->stage);
    p->layers = sc->layer_last - sc->layer_first;
    p->layer_first = sc->layer_first;
    p->layer_last = sc->layer_last;
    p->has_embed = ns_stage_has_embedding(t->stage);
    p->has_head = ns_stage_has_head(t->stage);
    p->in_quorum = t->cfg.stages > 1;
    p->exec_mode = (uint32_t)ns_exec_mode_of(t->exec);
    /* forward + backward is about three forwards of every layer */
    p->layer_latency_us = (uint64_t)(step_s * 1e6 / (3.0 * p->layers));
    ns_sha256(p->input_hash, t->inputs, sizeof *t->inputs * TRAIN_BATCH * TRAIN_SEQ);
    ns_sha256(p->output_hash, &loss, sizeof loss);
    double now = wall_s();
    pthread_mutex_lock(&t->lock);
    t->open_batches = p->batches;
    bool close = t->close_wanted && (now - t->last_close_s) * 1000.0 >= (double)t->period_min_ms;
    pthread_mutex_unlock(&t->lock);
    close = close || sync_now; /* a period never spans an outer step: a verifier could not
                                  recompute it */
    if (pipeline) {
        bool aligned = step % t->cfg.checkpoint_every == 0;
        close = aligned && (close || p->segments == NS_TRAIN_SEGMENTS_MAX);
        p->in_pipeline = true;
        memcpy(p->pipeline_id, t->cfg.pipeline_id, NS_SHA256_BYTES);
        p->segment_steps = t->cfg.checkpoint_every;
    }
    /* at a sync the checkpoint comes after the outer step: it starts the next period */
    if (!close || (!sync_now && save_checkpoint(t) != NS_OK))
        return false;
    hash_model(t, p->model_after);
    pthread_mutex_lock(&t->lock);
    t->closed = *p;
    t->closed_ready = true;
    t->closed_through = p->ckpt_step + p->batches;
    t->close_wanted = false;
    t->open_batches = 0;
    t->last_close_s = now;
    pthread_mutex_unlock(&t->lock);
    ns_train_work next = {.ckpt_step = ns_stage_optim_step(t->stage),
                          .outer_round = p->outer_round};
    memcpy(next.model_before, p->model_after, NS_SHA256_BYTES);
    *p = next;
    return !sync_now;
}

/* ---- DiLoCo: the outer loop ------------------------------------------------------------------ */

/* The outer state beside checkpoint `step`: <data_dir>/outer/outer-<step>.bin, "NSOUTER2", step,
 * n and the outer round (8 bytes each, little-endian), the time of that round (Unix ms), w0 and
 * the momentum (n floats each), then the SHA-256 of all that. Written atomically after the
 * checkpoint; older ones than the oldest checkpoint go. */
#define OUTER_MAGIC  "NSOUTER2"
#define OUTER_HEADER 40

static void outer_path(const ns_trainer *t, uint64_t step, char *out, size_t size)
{
    snprintf(out, size, "%.3000s/outer/outer-%llu.bin", t->cfg.data_dir, (unsigned long long)step);
}

static void outer_save(ns_trainer *t, uint64_t step)
{
    size_t n = t->outer.n, len = OUTER_HEADER + 2 * n * sizeof(float) + NS_SHA256_BYTES;
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        return;
    memcpy(buf, OUTER_MAGIC, 8);
    pthread_mutex_lock(&t->lock);
    uint64_t round_ms = t->round_ms;
    pthread_mutex_unlock(&t->lock);
    for (int i = 0; i < 8; i++) {
        buf[8 + i] = (uint8_t)(step >> (8 * i));
        buf[16 + i] = (uint8_t)((uint64_t)n >> (8 * i));
        buf[24 + i] = (uint8_t)(t->outer.round >> (8 * i));
        buf[32 + i] = (uint8_t)(round_ms >> (8 * i));
    }
    memcpy(buf + OUTER_HEADER, t->outer.w0, n * sizeof(float));
    memcpy(buf + OUTER_HEADER + n * sizeof(float), t->outer.momentum, n * sizeof(float));
    ns_sha256(buf + len - NS_SHA256_BYTES, buf, len - NS_SHA256_BYTES);
    char dir[PATH_MAX + 16], path[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%.3000s/outer", t->cfg.data_dir);
    (void)mkdir(dir, 0700);
    outer_path(t, step, path, sizeof path);
    if (ns_file_write_atomic(path, buf, len, 0600) != NS_OK)
        NS_LOG_W("sync", "the outer state of step %llu was not saved", (unsigned long long)step);
    free(buf);
    /* the ones no checkpoint needs any more */
    char ckpts[PATH_MAX + 32];
    snprintf(ckpts, sizeof ckpts, "%.3000s/checkpoints", t->cfg.data_dir);
    uint64_t steps[NS_TRAIN_SEGMENTS_MAX];
    size_t count = 0;
    if (ns_ckpt_list(ckpts, steps, NS_TRAIN_SEGMENTS_MAX, &count) != NS_OK || count == 0 ||
        count == NS_TRAIN_SEGMENTS_MAX)
        return;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        unsigned long long k;
        char tail;
        if (sscanf(e->d_name, "outer-%llu.bi%c", &k, &tail) == 2 && k < steps[count - 1]) {
            outer_path(t, k, path, sizeof path);
            (void)unlink(path);
        }
    }
    if (d != NULL)
        closedir(d);
}

/* Loads the outer state of checkpoint `step` when it is there and whole; else starts the outer
 * loop from the current weights (w0 = w, no momentum). */
static int outer_open(ns_trainer *t, uint64_t step)
{
    size_t n;
    float *w = ns_stage_param_buffer(t->stage, &n);
    int rc = ns_outer_init(&t->outer, w, n, NS_SYNC_BETA, NS_SYNC_LR);
    if (rc != NS_OK)
        return rc;
    t->delta = malloc(n * sizeof(float));
    t->agg = malloc(2 * n * sizeof(float)); /* an aggregate, or a download: w0 and momentum */
    if (t->delta == NULL || t->agg == NULL)
        return NS_ENOMEM;
    t->outer_on = true;
    t->outer.round = step / t->cfg.sync_every;
    t->round_ms = epoch_ms();
    char path[PATH_MAX + 64];
    outer_path(t, step, path, sizeof path);
    size_t len = OUTER_HEADER + 2 * n * sizeof(float) + NS_SHA256_BYTES, got = 0;
    uint8_t *buf = NULL;
    if (ns_file_read(path, len, &buf, &got) != NS_OK) {
        if (step > 0)
            NS_LOG_W("sync",
                     "no outer state beside checkpoint %llu: the outer loop starts again "
                     "from these weights",
                     (unsigned long long)step);
        return NS_OK;
    }
    uint8_t h[NS_SHA256_BYTES];
    ns_sha256(h, buf, len - NS_SHA256_BYTES);
    uint64_t s_step = 0, s_n = 0, s_round = 0, s_round_ms = 0;
    for (int i = 7; got == len && i >= 0; i--) {
        s_step = s_step << 8 | buf[8 + i];
        s_n = s_n << 8 | buf[16 + i];
        s_round = s_round << 8 | buf[24 + i];
        s_round_ms = s_round_ms << 8 | buf[32 + i];
    }
    if (got != len || memcmp(buf, OUTER_MAGIC, 8) != 0 || s_step != step || s_n != n ||
        memcmp(h, buf + len - NS_SHA256_BYTES, NS_SHA256_BYTES) != 0) {
        NS_LOG_W("sync",
                 "the outer state beside checkpoint %llu is damaged: starting the outer "
                 "loop again from these weights",
                 (unsigned long long)step);
    } else {
        memcpy(t->outer.w0, buf + OUTER_HEADER, n * sizeof(float));
        memcpy(t->outer.momentum, buf + OUTER_HEADER + n * sizeof(float), n * sizeof(float));
        t->outer.round = s_round;
        t->round_ms = s_round_ms;
        NS_LOG_I("sync", "outer state of checkpoint %llu loaded (round %llu)",
                 (unsigned long long)step, (unsigned long long)t->outer.round);
    }
    free(buf);
    return NS_OK;
}

/* SHA-256(SHA-256(w0) || SHA-256(momentum)): what a download of the outer state is checked
 * against (ns_trainer_outer_copy serves w0 then the momentum). */
void ns_train_outer_state_hash(const float *w0, const float *m, size_t n,
                               uint8_t out[NS_SHA256_BYTES])
{
    uint8_t both[2 * NS_SHA256_BYTES];
    ns_sha256(both, w0, n * sizeof *w0);
    ns_sha256(both + NS_SHA256_BYTES, m, n * sizeof *m);
    ns_sha256(out, both, sizeof both);
}

/* Step `step` ends an inner loop: hands Δ = w0 - w to the cohort and waits for the aggregate,
 * then takes the outer step (alone: w0 = w, the inner weights stand). false when the trainer was
 * stopped while it waited. */
static bool sync_round(ns_trainer *t, uint64_t step)
{
    size_t n;
    float *w = ns_stage_param_buffer(t->stage, &n);
    uint64_t round = t->outer.round + 1; /* every member of a meeting is on the same round */
    ns_outer_delta(&t->outer, w, t->delta);
    bool fetch_only = step == 0 && t->outer.round == 0; /* a fresh start: the cohort's weights */
    uint8_t h[NS_SHA256_BYTES];
    ns_outer_w0_hash(&t->outer, h);
    const ns_stage_config *sc = ns_stage_config_of(t->stage);
    pthread_mutex_lock(&t->lock);
    t->sync_waiting = true;
    t->sync_ready = false;
    t->sync_round = round;
    t->sync_status.waiting = true;
    snprintf(t->status.phase, sizeof t->status.phase, "syncing with the cohort");
    pthread_mutex_unlock(&t->lock);
    t->cfg.sync(t->cfg.sync_arg, round, fetch_only ? NULL : t->delta, n,
                ns_sync_weight(t->cfg.sync_every, 0), h, sc->layer_first, sc->layer_last);
    pthread_mutex_lock(&t->lock);
    while (!t->sync_ready && !t->stop)
        pthread_cond_wait(&t->wake, &t->lock);
    bool ready = t->sync_ready;
    size_t got = t->agg_n;
    t->sync_waiting = false;
    t->sync_status.waiting = false;
    snprintf(t->status.phase, sizeof t->status.phase, "training");
    pthread_mutex_unlock(&t->lock);
    if (!ready)
        return false;
    /* S8's loss check, on the held-out batches: the meeting's weights before and after the
     * outer step (every member takes the same step, so a rise is reported, not refused) */
    bool check = got == n && !t->agg_is_weights && t->cfg.stages <= 1;
    double before = NAN, after = NAN;
    if (check) {
        memcpy(w, t->outer.w0, n * sizeof *w); /* the inner weights are done with */
        before = held_out_loss(t, 1);
    }
    pthread_mutex_lock(&t->lock); /* w0 is read by the loop thread (ns_trainer_outer_copy) */
    bool installed = (got == n || got == 2 * n) && t->agg_is_weights;
    bool stepped = got == n && !installed && ns_outer_apply(&t->outer, t->agg, w) == NS_OK;
    if (installed) { /* the cohort's weights (with its momentum when it came along) */
        memcpy(w, t->agg, n * sizeof *w);
        ns_outer_rebase(&t->outer, w, got != 2 * n);
        if (got == 2 * n)
            memcpy(t->outer.momentum, t->agg + n, n * sizeof *w);
        round = t->agg_round;
    } else if (!stepped) {
        ns_outer_rebase(&t->outer, w, false);
    }
    if (fetch_only && !installed && !t->cfg.sync_async)
        round = 0; /* a fresh member that heard no cohort: nothing happened, round 0 stands */
    t->outer.round = round;
    if (!installed)
        t->round_ms = epoch_ms();
    ns_outer_w0_hash(&t->outer, t->w0_hash);
    ns_train_outer_state_hash(t->outer.w0, t->outer.momentum, n, t->state_hash);
    memcpy(t->sync_status.w0_hash, t->w0_hash, NS_SHA256_BYTES);
    t->sync_status.last_round = round;
    if (installed)
        t->sync_status.downloads++;
    else if (stepped)
        t->sync_status.rounds++;
    else if (got == 0 && !(fetch_only && !t->cfg.sync_async))
        t->sync_status.rounds_alone++;
    else
        t->sync_status.rounds_failed++;
    pthread_mutex_unlock(&t->lock);
    if (stepped && check)
        after = held_out_loss(t, 1);
    if (stepped && !isnan(before) && !isnan(after)) {
        pthread_mutex_lock(&t->lock);
        t->sync_status.loss_before = before;
        t->sync_status.loss_after = after;
        t->sync_status.loss_rises += after > before;
        pthread_mutex_unlock(&t->lock);
        if (after > before)
            NS_LOG_W("sync", "round %llu: the outer step raised the held-out loss %.4f -> %.4f",
                     (unsigned long long)round, before, after);
    }
    if (stepped)
        NS_LOG_I("sync", "round %llu: outer step with the cohort's pseudo-gradient",
                 (unsigned long long)round);
    if (installed)
        NS_LOG_I("sync", "installed the cohort's weights of round %llu", (unsigned long long)round);
    return true;
}

static void sync_answer(ns_trainer *t, uint64_t round, const float *v, size_t n, bool weights,
                        uint64_t weights_round, uint64_t round_ms)
{
    pthread_mutex_lock(&t->lock);
    if (t->sync_waiting && !t->sync_ready && round == t->sync_round) {
        size_t want = t->outer.n;
        bool fits = v != NULL && (n == want || (weights && n == 2 * want));
        t->agg_n = fits ? n : (n == 0 ? 0 : SIZE_MAX);
        if (fits)
            memcpy(t->agg, v, n * sizeof *v);
        t->agg_is_weights = weights;
        t->agg_round = weights_round;
        if (weights && fits)
            t->round_ms = round_ms;
        t->sync_ready = true;
        pthread_cond_broadcast(&t->wake);
    }
    pthread_mutex_unlock(&t->lock);
}

void ns_trainer_sync_result(ns_trainer *t, uint64_t round, const float *agg, size_t n)
{
    sync_answer(t, round, agg, n, false, 0, 0);
}

void ns_trainer_sync_weights(ns_trainer *t, uint64_t round, uint64_t round_ms, const float *w,
                             size_t n)
{
    pthread_mutex_lock(&t->lock);
    uint64_t asked = t->sync_round;
    pthread_mutex_unlock(&t->lock);
    sync_answer(t, asked, w, n, true, round, round_ms);
}

int ns_trainer_outer_copy(ns_trainer *t, uint64_t offset, size_t count, float *out, size_t *n,
                          uint64_t *round, uint64_t *round_ms, uint8_t hash[NS_SHA256_BYTES])
{
    pthread_mutex_lock(&t->lock);
    int rc = NS_OK;
    if (!t->outer_on || t->sync_status.async)
        rc = NS_ENOENT; /* only members serve the weights of their meetings */
    else if (offset > 2 * t->outer.n || count > 2 * t->outer.n - offset)
        rc = NS_EINVAL;
    if (rc == NS_OK) {
        size_t n0 = t->outer.n;
        for (size_t i = 0; i < count; i++) { /* w0, then the momentum */
            size_t at = offset + i;
            out[i] = at < n0 ? t->outer.w0[at] : t->outer.momentum[at - n0];
        }
        *n = n0;
        *round = t->outer.round;
        *round_ms = t->round_ms;
        memcpy(hash, t->state_hash, NS_SHA256_BYTES);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void ns_trainer_sync_status(ns_trainer *t, ns_train_sync_status *out)
{
    pthread_mutex_lock(&t->lock);
    *out = t->sync_status;
    pthread_mutex_unlock(&t->lock);
}

/* ---- generation --------------------------------------------------------------------------- */

static void job_fail(ns_gen_job *job, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_fail(ns_gen_job *job, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->error, sizeof job->error, fmt, ap);
    va_end(ap);
    job->status = status;
}

/* Answers every queued request with 503 and takes no more: the trainer thread is ending. */
static void cancel_jobs(ns_trainer *t, const char *why)
{
    pthread_mutex_lock(&t->lock);
    t->exited = true;
    ns_gen_job *list = t->jobs;
    t->jobs = NULL;
    t->jobs_tail = &t->jobs;
    t->job_count = 0;
    pthread_mutex_unlock(&t->lock);
    while (list != NULL) {
        ns_gen_job *next = list->next;
        job_fail(list, 503, "%s", why);
        list->done(list);
        list = next;
    }
}

/* The ids the tokenizer defines: the model's vocabulary may be larger (its size is fixed before
 * a small corpus has shown how many merges it supports), and the ids beyond are never trained. */
static uint32_t usable_vocab(const ns_trainer *t)
{
    uint32_t model = ns_stage_config_of(t->stage)->arch.vocab, bpe = ns_bpe_vocab_size(t->bpe);
    return bpe < model ? bpe : model;
}

/* Logits of ids no text can hold get -inf, so they are never drawn. */
static void mask_unusable(const ns_trainer *t, float *logits)
{
    uint32_t model = ns_stage_config_of(t->stage)->arch.vocab;
    for (uint32_t i = usable_vocab(t); i < model; i++)
        logits[i] = -INFINITY;
}

/* The prompt as token ids in ids (room for prompt_len or prompt_id_count); false with the job
 * failed when it is empty or names a token outside the vocabulary. */
static bool prompt_ids(ns_trainer *t, ns_gen_job *job, int32_t *ids, size_t *count)
{
    uint32_t vocab = usable_vocab(t);
    if (job->prompt != NULL) {
        size_t n =
            ns_bpe_encode(t->bpe, (const uint8_t *)job->prompt, job->prompt_len, (uint32_t *)ids);
        *count = n;
    } else {
        for (size_t i = 0; i < job->prompt_id_count; i++) {
            if (job->prompt_ids[i] >= vocab) {
                job_fail(job, 400, "tokens[%zu] = %u is outside the vocabulary (0..%u)", i,
                         job->prompt_ids[i], vocab - 1);
                return false;
            }
            ids[i] = (int32_t)job->prompt_ids[i];
        }
        *count = job->prompt_id_count;
    }
    if (*count == 0) {
        job_fail(job, 400, "the prompt is empty");
        return false;
    }
    return true;
}

/* Prefills the prompt, then samples one token at a time through the KV cache until max_tokens,
 * end-of-text or the end of the context. */
static void generate(ns_trainer *t, ns_gen_job *job)
{
    double t0 = wall_s();
    const ns_arch *a = &ns_stage_config_of(t->stage)->arch;
    uint32_t context = ns_stage_config_of(t->stage)->seq_len_max;
    job->status = 200;
    job->step = ns_stage_optim_step(t->stage);
    if (t->cfg.stages > 1) {
        const ns_stage_config *sc = ns_stage_config_of(t->stage);
        job_fail(job, 503, "this node holds layers %u..%u of a pipeline, not the whole model",
                 sc->layer_first, sc->layer_last);
        return;
    }
    if (t->kv == NULL && ns_kv_cache_new(&t->kv, t->stage, context) != NS_OK) {
        job_fail(job, 503, "no memory for the key/value cache");
        return;
    }
    if (t->gen_exec == NULL && ns_exec_mode_of(t->exec) != NS_EXEC_FAST &&
        ns_exec_new(&t->gen_exec, ns_exec_threads(t->exec), NS_EXEC_FAST) == NS_OK)
        ns_kv_cache_set_exec(t->kv, t->gen_exec);
    size_t room = job->prompt != NULL ? job->prompt_len : job->prompt_id_count;
    int32_t *ids = malloc(sizeof *ids * (room > 0 ? room : 1));
    float *logits = malloc(sizeof *logits * a->vocab);
    job->tokens = malloc(sizeof *job->tokens * job->max_tokens);
    job->text = malloc((size_t)job->max_tokens * NS_BPE_TOKEN_BYTES_MAX);
    ns_sampler *sampler = NULL;
    const char *why = NULL;
    size_t count = 0;
    if (ids == NULL || logits == NULL || job->tokens == NULL || job->text == NULL) {
        job_fail(job, 503, "out of memory");
    } else if (!prompt_ids(t, job, ids, &count)) {
        /* failed with its reason */
    } else if (count >= context) {
        job_fail(job, 400,
                 "the prompt is %zu tokens but the context holds %u (and at least one must be "
                 "left to generate)",
                 count, context);
    } else if (ns_sampler_new(&sampler, a->vocab, &job->sample, &why) != NS_OK) {
        job_fail(job, 400, "%s", why != NULL ? why : "cannot make a sampler");
    }
    job->prompt_tokens = count;
    if (job->status != 200)
        goto out;
    ns_kv_cache_reset(t->kv);
    int rc = ns_stage_decode(t->stage, t->kv, (uint32_t)count, ids, NULL, logits);
    job->finish = "length";
    while (rc == NS_OK) {
        mask_unusable(t, logits);
        uint32_t next = ns_sampler_next(sampler, logits);
        if (next == NS_BPE_EOT) {
            job->finish = "end_of_text";
            break;
        }
        job->tokens[job->token_count++] = next;
        if (job->token_count == job->max_tokens)
            break;
        if (ns_kv_cache_len(t->kv) == context) {
            job->finish = "context";
            break;
        }
        int32_t in = (int32_t)next;
        rc = ns_stage_decode(t->stage, t->kv, 1, &in, NULL, logits);
    }
    if (rc != NS_OK) {
        job_fail(job, 500, "decoding failed: %s", ns_strerror(rc));
        goto out;
    }
    if (ns_bpe_decode(t->bpe, job->tokens, job->token_count, job->text,
                      (size_t)job->max_tokens * NS_BPE_TOKEN_BYTES_MAX, &job->text_len) != NS_OK)
        job_fail(job, 500, "the tokenizer cannot decode the generated ids");
out:
    job->seconds = wall_s() - t0;
    ns_sampler_free(sampler);
    free(ids);
    free(logits);
}

static void *trainer_main(void *arg)
{
    ns_trainer *t = arg;
    char err[NS_DATA_ERR_BYTES] = "";
    set_phase(t, "loading data");
    int rc = open_data(t, err);
    if (rc == NS_OK) {
        set_phase(t, "tokenizer");
        rc = open_tokenizer(t, err);
    }
    if (rc == NS_OK)
        rc = open_loaders(t, err);
    if (rc == NS_OK) {
        set_phase(t, "building the model");
        rc = open_model(t, err);
    }
    t->batch = malloc(sizeof *t->batch * TRAIN_BATCH * (TRAIN_SEQ + 1));
    t->inputs = malloc(sizeof *t->inputs * TRAIN_BATCH * TRAIN_SEQ);
    t->targets = malloc(sizeof *t->targets * TRAIN_BATCH * TRAIN_SEQ);
    if (rc == NS_OK && (t->batch == NULL || t->inputs == NULL || t->targets == NULL))
        rc = NS_ENOMEM;
    if (rc == NS_OK)
        rc = open_pipe(t);
    if (rc != NS_OK) {
        set_error(t, err[0] != '\0' ? err : ns_strerror(rc));
        cancel_jobs(t, "the model could not be loaded (see /training_status)");
        return NULL;
    }
    const ns_arch *a = &ns_stage_config_of(t->stage)->arch;
    uint64_t stage_bytes = 0, kv_bytes = 0;
    if (ns_stage_memory_bytes(ns_stage_config_of(t->stage), &stage_bytes) != NS_OK ||
        ns_kv_cache_memory_bytes(t->stage, ns_stage_config_of(t->stage)->seq_len_max, &kv_bytes) !=
            NS_OK)
        stage_bytes = kv_bytes = 0; /* cannot happen for a stage that exists: shown as unknown */
    if (t->cfg.sync_every > 0 && t->cfg.sync != NULL &&
        outer_open(t, ns_stage_optim_step(t->stage)) != NS_OK) {
        set_error(t, "no memory for the outer loop's state");
        cancel_jobs(t, "the model could not be loaded (see /training_status)");
        return NULL;
    }
    pthread_mutex_lock(&t->lock);
    t->sync_status.on = t->outer_on;
    t->sync_status.async = t->outer_on && t->cfg.sync_async;
    t->sync_status.every = t->cfg.sync_every;
    if (t->outer_on) {
        ns_outer_w0_hash(&t->outer, t->w0_hash);
        ns_train_outer_state_hash(t->outer.w0, t->outer.momentum, t->outer.n, t->state_hash);
        memcpy(t->sync_status.w0_hash, t->w0_hash, NS_SHA256_BYTES);
    }
    pthread_mutex_unlock(&t->lock);
    /* a member or an asynchronous contributor that starts afresh asks for the cohort's
     * weights first (S3: a new holder fetches its layers' current weights; the checkpoint of
     * step 0 below then holds them) */
    if (t->outer_on && ns_stage_optim_step(t->stage) == 0 && t->outer.round == 0) {
        pthread_mutex_lock(&t->lock);
        t->status.layers = a->layers;
        t->status.hidden = a->hidden;
        pthread_mutex_unlock(&t->lock);
        if (!sync_round(t, 0)) {
            cancel_jobs(t, "the node is shutting down");
            return NULL;
        }
    }
    plan_retention(t);
    /* the first work period starts from a checkpoint too, so that a verifier can recompute it */
    t->period.outer_round = t->outer_on ? t->outer.round : 0;
    t->period.ckpt_step = ns_stage_optim_step(t->stage);
    t->segment_ok = t->cfg.stages > 1 && t->period.ckpt_step % t->cfg.checkpoint_every == 0;
    if (ns_stage_optim_step(t->stage) == 0)
        (void)save_checkpoint(t);
    t->last_close_s = wall_s();
    hash_model(t, t->period.model_before);
    pthread_mutex_lock(&t->lock);
    t->status.memory_estimate_bytes = stage_bytes + kv_bytes;
    t->status.ready = true;
    t->status.layers = a->layers;
    t->status.hidden = a->hidden;
    t->status.vocab = a->vocab;
    t->status.params = a->params;
    t->status.step = ns_stage_optim_step(t->stage);
    t->status.checkpoint_step = t->status.step;
    if (t->cfg.stages > 1 && t->status.step % t->cfg.checkpoint_every == 0)
        t->status.aligned_checkpoint_step = t->status.step;
    pthread_mutex_unlock(&t->lock);
    NS_LOG_I("train",
             "model layers=%u hidden=%u heads=%u kv_heads=%u vocab=%u params=%llu "
             "step=%llu",
             a->layers, a->hidden, a->heads, a->kv_heads, a->vocab, (unsigned long long)a->params,
             (unsigned long long)t->status.step);
    uint64_t since_ckpt = 0;
    for (;;) {
        ns_gen_job *job = NULL;
        next_work w = next_work_wait(t, &job);
        if (w == WORK_STOP)
            break;
        if (w == WORK_GENERATE) {
            generate(t, job);
            job->done(job);
            continue;
        }
        float loss;
        ns_optim_report rep;
        double t0 = wall_s();
        ns_data_pos before = ns_data_loader_pos(t->loader);
        rc = is_pipeline(t) ? pipe_step(t, &loss, &rep) : train_step(t, &loss, &rep);
        if (rc == NS_EWAIT) { /* stopped while the pipeline waited: the step is dropped */
            if (ns_data_loader_seek(t->loader, before) != NS_OK)
                NS_LOG_W("train", "the data position of the dropped step is lost");
            break;
        }
        if (rc != NS_OK || (has_head(t) && !isfinite(loss))) {
            set_error(t, "a training step failed (loss not finite or a shape error)");
            break;
        }
        double step_s = wall_s() - t0;
        uint64_t step = ns_stage_optim_step(t->stage);
        record_step(t, step, loss, &rep, step_s);
        /* a pipeline's stages checkpoint at the same steps, so that after a failover every stage
         * (and the replica that takes over) can restart from one of them */
        bool aligned = t->cfg.stages > 1 && step % t->cfg.checkpoint_every == 0;
        bool sync_now = t->outer_on && step % t->cfg.sync_every == 0;
        bool saved = note_work(t, before, loss, step_s, sync_now);
        if (sync_now) { /* the outer step, then the checkpoint the next period starts from */
            if (!sync_round(t, step))
                break;
            saved = save_checkpoint(t) == NS_OK;
            t->period.ckpt_step = step;
            t->period.outer_round = t->outer.round;
            hash_model(t, t->period.model_before);
        }
        if (!saved &&
            (aligned || (t->cfg.stages <= 1 && since_ckpt + 1 >= t->cfg.checkpoint_every)))
            saved = save_checkpoint(t) == NS_OK;
        since_ckpt = saved ? 0 : since_ckpt + 1;
        if (aligned && saved) {
            pthread_mutex_lock(&t->lock);
            t->status.aligned_checkpoint_step = step;
            pthread_mutex_unlock(&t->lock);
        }
    }
    if (since_ckpt > 0)
        (void)save_checkpoint(t); /* a clean stop loses nothing */
    set_phase(t, "stopped");
    cancel_jobs(t, "the node is shutting down");
    return NULL;
}

/* ---- recomputing a proof's steps (a verifier's work) -------------------------------------- */

/* The stage a checkpoint's config describes, for a batch of the trainer's shape. */
static int stage_config_of(const ns_ckpt_llama_config *c, ns_stage_config *sc)
{
    memset(sc, 0, sizeof *sc);
    sc->arch = (ns_arch){.layers = c->num_hidden_layers,
                         .hidden = c->hidden_size,
                         .heads = c->num_attention_heads,
                         .kv_heads = c->num_key_value_heads,
                         .intermediate = c->intermediate_size,
                         .vocab = c->vocab_size,
                         .seq_len_max = c->max_position_embeddings};
    sc->layer_first = 0;
    sc->layer_last = c->num_hidden_layers;
    sc->batch_max = TRAIN_BATCH;
    sc->seq_len_max = TRAIN_SEQ;
    sc->micro_batches_max = 1;
    uint64_t need;
    int rc = ns_stage_memory_bytes(sc, &need);
    if (rc != NS_OK)
        return rc;
    uint64_t avail = available_bytes();
    return avail != 0 && need > avail / 2 ? NS_ELIMIT : NS_OK;
}

int ns_train_replay(const ns_train_config *cfg, const char *ckpt_path, uint64_t steps,
                    uint8_t before[NS_SHA256_BYTES], uint8_t after[NS_SHA256_BYTES], char *err,
                    size_t err_size)
{
    if (steps == 0 || steps > NS_TRAIN_REPLAY_STEPS_MAX) {
        snprintf(err, err_size, "%llu steps is not something to recompute",
                 (unsigned long long)steps);
        return NS_EINVAL;
    }
    ns_trainer *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NS_ENOMEM;
    t->cfg = *cfg;
    if (t->cfg.threads == 0)
        t->cfg.threads = 1;
    trainer_optim(&t->optim);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->wake, NULL);
    char derr[NS_DATA_ERR_BYTES] = "";
    int rc = open_data(t, derr);
    if (rc == NS_OK)
        rc = open_tokenizer(t, derr);
    if (rc == NS_OK)
        rc = open_loaders(t, derr);
    if (rc != NS_OK)
        snprintf(err, err_size, "this node's data: %s", derr[0] != '\0' ? derr : ns_strerror(rc));
    ns_ckpt *ck = NULL;
    if (rc == NS_OK)
        rc = ns_ckpt_open(ckpt_path, &ck, err, err_size);
    ns_stage_config sc;
    if (rc == NS_OK && (rc = stage_config_of(ns_ckpt_get_config(ck), &sc)) != NS_OK)
        snprintf(err, err_size, "the checkpoint's model cannot be built here: %s", ns_strerror(rc));
    if (rc == NS_OK)
        rc = ns_exec_new(&t->exec, t->cfg.threads, NS_EXEC_REPRODUCIBLE);
    if (rc == NS_OK)
        rc = ns_stage_new(&t->stage, t->exec, &sc);
    size_t np = 0, no = 0;
    if (rc == NS_OK) {
        const ns_named_tensor *params = ns_stage_params(t->stage, &np);
        const ns_named_tensor *moments = ns_stage_optim_state(t->stage, &no);
        t->weights = ckpt_views(params, np);
        t->moments = ckpt_views(moments, no);
        t->batch = malloc(sizeof *t->batch * TRAIN_BATCH * (TRAIN_SEQ + 1));
        t->inputs = malloc(sizeof *t->inputs * TRAIN_BATCH * TRAIN_SEQ);
        t->targets = malloc(sizeof *t->targets * TRAIN_BATCH * TRAIN_SEQ);
        if (t->weights == NULL || t->moments == NULL || t->batch == NULL || t->inputs == NULL ||
            t->targets == NULL)
            rc = NS_ENOMEM;
    }
    if (rc == NS_OK)
        rc = ns_ckpt_read(ck, t->weights, np, t->moments, no, err, err_size);
    if (rc == NS_OK) {
        const ns_ckpt_state *st = ns_ckpt_get_state(ck);
        ns_stage_set_optim_step(t->stage, st->step);
        ns_data_pos pos = {.epoch = st->data_epoch, .index = st->data_offset};
        if ((rc = ns_data_loader_seek(t->loader, pos)) != NS_OK)
            snprintf(err, err_size, "the checkpoint's data position is not in this node's data");
    }
    if (rc == NS_OK) {
        hash_model(t, before);
        for (uint64_t i = 0; rc == NS_OK && i < steps; i++) {
            float loss;
            ns_optim_report rep;
            rc = train_step(t, &loss, &rep);
            if (rc == NS_OK && !isfinite(loss))
                rc = NS_EINVAL;
        }
        if (rc == NS_OK)
            hash_model(t, after);
        else
            snprintf(err, err_size, "a recomputed step failed: %s", ns_strerror(rc));
    }
    ns_ckpt_close(ck);
    ns_trainer_stop(t);
    return rc;
}

/* ---- the loop thread's side --------------------------------------------------------------- */

int ns_trainer_start(ns_trainer **out, const ns_train_config *cfg, char *err, size_t err_size)
{
    int rc = ns_trainer_check(cfg, err, err_size);
    if (rc != NS_OK)
        return rc;
    ns_trainer *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NS_ENOMEM;
    t->cfg = *cfg;
    if (t->cfg.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        t->cfg.threads = n > 0 ? (uint32_t)(n < NS_EXEC_THREADS_MAX ? n : NS_EXEC_THREADS_MAX) : 1;
    }
    if (t->cfg.checkpoint_every == 0)
        t->cfg.checkpoint_every = NS_TRAIN_CKPT_EVERY;
    if (t->cfg.ckpt_budget_mb == 0)
        t->cfg.ckpt_budget_mb = 2048;
    t->keep = TRAIN_KEEP;
    snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/checkpoints", cfg->data_dir);
    snprintf(t->csv_path, sizeof t->csv_path, "%s/train.csv", cfg->data_dir);
    trainer_optim(&t->optim);
    t->running = cfg->start_running;
    t->jobs_tail = &t->jobs;
    t->inbox_tail = &t->inbox;
    t->status.enabled = true;
    t->status.running = t->running;
    snprintf(t->status.phase, sizeof t->status.phase, "starting");
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->wake, NULL);
    if (pthread_create(&t->thread, NULL, trainer_main, t) != 0) {
        snprintf(err, err_size, "cannot start the training thread");
        free(t);
        return NS_EIO;
    }
    t->thread_started = true;
    *out = t;
    return NS_OK;
}

void ns_trainer_status(ns_trainer *t, ns_train_status *out)
{
    pthread_mutex_lock(&t->lock);
    *out = t->status;
    out->running = t->running;
    out->queued = t->queued;
    pthread_mutex_unlock(&t->lock);
}

void ns_trainer_set_running(ns_trainer *t, bool on)
{
    pthread_mutex_lock(&t->lock);
    t->running = on;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    NS_LOG_I("train", "training %s", on ? "started" : "paused");
}

int ns_trainer_queue_steps(ns_trainer *t, uint32_t steps)
{
    pthread_mutex_lock(&t->lock);
    int rc = NS_OK;
    if (!t->status.ready)
        rc = t->status.error[0] != '\0' ? NS_EINVAL : NS_ELIMIT;
    else if (t->queued + (uint64_t)steps > NS_TRAIN_QUEUED_MAX)
        rc = NS_ELIMIT;
    else
        t->queued += steps;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    return rc;
}

uint64_t ns_trainer_closed_through(ns_trainer *t)
{
    pthread_mutex_lock(&t->lock);
    uint64_t through =
        t->closed_through > t->cfg.proved_through ? t->closed_through : t->cfg.proved_through;
    pthread_mutex_unlock(&t->lock);
    return through;
}

ns_work_state ns_trainer_take_work(ns_trainer *t, ns_train_work *out)
{
    pthread_mutex_lock(&t->lock);
    ns_work_state state = t->closed_ready   ? NS_WORK_CLOSED
                          : t->open_batches ? NS_WORK_OPEN
                                            : NS_WORK_NONE;
    if (state == NS_WORK_CLOSED)
        *out = t->closed;
    t->closed_ready = false;
    t->close_wanted = true;
    pthread_mutex_unlock(&t->lock);
    return state;
}

int ns_trainer_generate(ns_trainer *t, ns_gen_job *job)
{
    pthread_mutex_lock(&t->lock);
    int rc = NS_OK;
    if (t->exited || !t->status.ready)
        rc = t->status.error[0] != '\0' ? NS_EINVAL : NS_ELIMIT;
    else if (t->stop || t->job_count >= NS_GEN_QUEUED_MAX)
        rc = NS_ELIMIT;
    if (rc == NS_OK) {
        job->next = NULL;
        *t->jobs_tail = job;
        t->jobs_tail = &job->next;
        t->job_count++;
        pthread_cond_signal(&t->wake);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void ns_gen_job_clear(ns_gen_job *job)
{
    free(job->prompt);
    free(job->prompt_ids);
    free(job->tokens);
    free(job->text);
    job->prompt = NULL;
    job->prompt_ids = NULL;
    job->tokens = NULL;
    job->text = NULL;
}

void ns_trainer_stop(ns_trainer *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    if (t->thread_started)
        pthread_join(t->thread, NULL);
    ns_data_loader_free(t->loader);
    ns_data_loader_free(t->val_loader);
    free(t->train_tokens);
    free(t->val_tokens);
    free(t->batch);
    free(t->inputs);
    free(t->targets);
    free(t->weights);
    free(t->moments);
    free_pipe(t);
    ns_outer_free(&t->outer);
    free(t->delta);
    free(t->agg);
    ns_kv_cache_free(t->kv);
    ns_stage_free(t->stage);
    ns_exec_free(t->gen_exec);
    ns_exec_free(t->exec);
    ns_bpe_free(t->bpe);
    free(t->dataset);
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
