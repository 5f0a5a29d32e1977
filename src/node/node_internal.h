/*
 * node_internal.h: what the daemon's files share among themselves (never included by a core).
 *
 * The libuv binding of ns_env, the local HTTP API server (libmicrohttpd on its own thread, every
 * request handed to the loop thread through a queue and answered there), and listening sockets.
 */
#ifndef NS_NODE_INTERNAL_H
#define NS_NODE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"
#include "neuroshard/exec.h"
#include "neuroshard/ledger.h"
#include "neuroshard/link.h"
#include "neuroshard/node.h"
#include "neuroshard/wire.h"

/* ---- ns_env over libuv -------------------------------------------------------------------- */

#define NS_UV_TIMERS_MAX 4096

typedef struct ns_uv_timer ns_uv_timer;

typedef int (*ns_uv_send_fn)(void *arg, const ns_peer *to, ns_channel ch, const ns_frame *f);

typedef struct ns_uv_env {
    ns_env env;
    uv_loop_t *loop;
    ns_uv_send_fn send; /* bound by the peer network (net.c); NULL: sending is refused */
    void *send_arg;
    int64_t epoch_offset_ms; /* wall clock at start minus loop time at start */
    uint64_t next_timer_id;
    ns_uv_timer *timers; /* armed timers, a doubly linked list */
    size_t timer_count;
} ns_uv_env;

void ns_uv_env_init(ns_uv_env *uvenv, uv_loop_t *loop);
/* Cancels every armed timer; their handles close on the next loop pass. */
void ns_uv_env_close(ns_uv_env *uvenv);

/* ---- listening sockets -------------------------------------------------------------------- */

/* A bound, listening TCP socket; *bound gets the address actually bound (port 0 resolved).
 * NS_EADDRINUSE when taken, NS_EPERM when not allowed, NS_EIO otherwise. */
NS_MUST_USE int ns_listen_tcp(const ns_addr_text *addr, int *fd, ns_addr_text *bound);

/* ---- the local HTTP API ------------------------------------------------------------------- */

#define NS_API_BODY_BYTES_MAX  (64 * 1024)
#define NS_API_CONNECTIONS_MAX 64
#define NS_API_TIMEOUT_S       15

typedef struct ns_api ns_api;

#define NS_API_ARGS_MAX      8
#define NS_API_ARG_BYTES_MAX 1024

/* One request as the loop thread sees it. The handler sets status, content_type and body (a
 * malloc'd buffer the API frees after sending) — or sets deferred and answers later with
 * ns_api_complete (for answers that wait on the network, such as a DHT lookup). */
typedef struct ns_api_request {
    const char *method;
    const char *path;
    const uint8_t *body;
    size_t body_len;
    const char *arg_keys[NS_API_ARGS_MAX]; /* the query string, decoded */
    const char *arg_values[NS_API_ARGS_MAX];
    size_t arg_count;
    bool args_truncated;
    bool deferred;
    int status;
    const char *content_type;
    char *response;
    size_t response_len;
} ns_api_request;

typedef void (*ns_api_handler)(void *arg, ns_api_request *req);

/* Serves on listen_fd (taken over: closed by ns_api_stop). Every POST must carry
 * "Authorization: Bearer <token>" or gets 401 without reaching the handler. The handler runs on
 * the loop thread. */
NS_MUST_USE int ns_api_start(ns_api **out, uv_loop_t *loop, int listen_fd, const char *token,
                             ns_api_handler handler, void *arg);
/* The value of a query argument, or NULL. */
const char *ns_api_arg(const ns_api_request *req, const char *key);
/* Sends the answer of a deferred request (loop thread only); req is not valid afterwards. */
void ns_api_complete(ns_api *api, ns_api_request *req);
/* Answers what is still queued or deferred with 503, stops the HTTP thread, frees everything. */
void ns_api_stop(ns_api *api);
uint64_t ns_api_requests(const ns_api *api, int status_class); /* 2, 4 or 5: 2xx, 4xx, 5xx */

/* Fills a request's response with body (a reference taken over) as compact JSON; a NULL body or
 * one that cannot be encoded becomes a 500. */
void ns_api_reply_json(ns_api_request *req, int status, json_t *body);
/* Fills a request's response with a JSON error body {"error": "..."}. */
void ns_api_error(ns_api_request *req, int status, const char *message);

/* ---- the peer network (net.c) ------------------------------------------------------------- */

typedef struct ns_net ns_net;
typedef struct ns_dht ns_dht;

/* Binds UDP and TCP on cfg->listen (port 0: one free port for both), starts the DHT and the
 * link listener, and begins bootstrapping from every source. On failure writes one line into
 * err; *out may then be set and must be stopped and freed like a running one. */
NS_MUST_USE int ns_net_start(ns_net **out, uv_loop_t *loop, ns_uv_env *uvenv, const ns_config *cfg,
                             const ns_key *key, uint64_t memory_mb, char err[NS_ERR_TEXT_SIZE]);
/* Saves the routing table (when save), frees the DHT (no callback after), closes sockets and
 * links. The loop must then run until their handles are closed, before ns_net_free. */
void ns_net_stop(ns_net *net, bool save);
void ns_net_free(ns_net *net);
ns_dht *ns_net_dht(ns_net *net);
const ns_addr *ns_net_bound(const ns_net *net);
size_t ns_net_link_count(const ns_net *net);
json_t *ns_net_peers_json(ns_net *net);
json_t *ns_net_doctor_json(ns_net *net);
/* Prometheus lines about the network; *text is malloc'd. */
void ns_net_metrics(ns_net *net, char **text, int *len);
/* Peer links (kept at a few, dialed from the routing table) carry frames of type >= NS_FRAME_APP
 * to on_frame; on_link hears of every peer link that comes up. Both run on the loop thread. */
typedef void (*ns_net_frame_fn)(void *arg, const uint8_t peer_id[NS_NODE_ID_BYTES],
                                const ns_frame *f);
typedef void (*ns_net_link_fn)(void *arg, const uint8_t peer_id[NS_NODE_ID_BYTES]);
/* The capacity fields of this node's record (S2: latency, tier, bandwidth, layers, quorum,
 * stake, reputation); a change re-signs the record and publishes it in the DHT. */
void ns_net_set_capacity(ns_net *net, const ns_node_info *capacity);
/* Who takes a peer link's frames of type >= NS_FRAME_APP: the ledger's gossip and verification
 * (types below NS_FRAME_PIPE_ACT) or the swarm (the pipeline, capacity and quorum frames). */
typedef enum ns_net_app {
    NS_NET_APP_ECON = 0,
    NS_NET_APP_SWARM = 1,
    NS_NET_APP_SYNC = 2,
    NS_NET_APPS_ = 3
} ns_net_app;
void ns_net_set_app(ns_net *net, ns_net_app app, ns_net_frame_fn on_frame, ns_net_link_fn on_link,
                    ns_net_link_fn on_down, void *arg);
/* Whether an established peer link to peer_id is up. */
bool ns_net_has_link(ns_net *net, const uint8_t peer_id[NS_NODE_ID_BYTES]);
/* Links to the holders of a topic (a layer cohort): every 15 s the records of `type` under
 * `topic` are looked up in the DHT and their authors whose bodies start with prefix dialled,
 * beyond the peer links kept for gossip. topic NULL: none wanted. */
void ns_net_want_holders(ns_net *net, uint32_t type, const char *topic, const uint8_t *prefix,
                         size_t prefix_len);
/* Sends f on every established peer link but except's (may be NULL); how many took it. */
size_t ns_net_broadcast(ns_net *net, const ns_frame *f, const uint8_t *except);
/* NS_ENOENT when no link to that peer is up. */
NS_MUST_USE int ns_net_send_frame(ns_net *net, const uint8_t peer_id[NS_NODE_ID_BYTES],
                                  const ns_frame *f);

/* ---- solo training (train.c) ------------------------------------------------------------- */

#define NS_TRAIN_CKPT_EVERY       100  /* steps between checkpoints */
#define NS_TRAIN_VOCAB            8192 /* the tokenizer trained on the Genesis text */
#define NS_TRAIN_QUEUED_MAX       10000
#define NS_TRAIN_REPLAY_STEPS_MAX 100000 /* steps one proof's recompute may take */

typedef struct ns_train_config {
    char data_dir[PATH_MAX];
    char dataset_dir[PATH_MAX]; /* "" = Genesis (the Brown corpus) */
    const ns_key *key;          /* signs a local dataset's manifest */
    uint64_t memory_mb;         /* the budget the model is sized for (S3) */
    uint32_t threads;           /* 0 = one a core */
    uint32_t checkpoint_every;  /* 0 = NS_TRAIN_CKPT_EVERY */
    uint32_t model_layers;      /* 0 = the architecture function decides */
    uint32_t model_hidden;
    bool start_running;
    ns_exec_mode exec_mode;  /* NS_EXEC_REPRODUCIBLE: its work can be verified by recompute */
    uint64_t window_ms;      /* the challenge window: a period's checkpoint is kept this long */
    uint64_t interval_ms;    /* how often proofs are made (work periods close at most so often) */
    uint64_t ckpt_budget_mb; /* disk for the checkpoints kept (0: 2048) */
    /* A pipeline (pipeline.h): this node is stage `stage` of `stages` holding [layer_first,
     * layer_last) (stages 0 or 1: the whole model); micro_batches a step (0: S6's rule in a
     * pipeline, 1 alone). send hands a frame for the stage before (dir -1) or after (+1) to the
     * network; it is called on the trainer thread and must copy what it keeps. */
    uint32_t stage, stages, layer_first, layer_last, micro_batches;
    /* forwards a stage may run beyond 1F1B's while its next backward's gradient is late
     * (pipeline.h); NS_RUN_AHEAD_AUTO: up to the step's micro-batches, as memory allows */
    uint32_t run_ahead;
    uint32_t generation; /* of the quorum's membership, stamped on every pipeline frame */
    /* names the quorum and generation in this stage's proofs, so neighbours' proofs cross-check
     * (SHA-256 of the members by stage and the generation) */
    uint8_t pipeline_id[NS_SHA256_BYTES];
    /* steps up to this one were already in a closed work period (a restart after a failover
     * recomputes them): they are not counted again */
    uint64_t proved_through;
    /* DiLoCo (sync.h): every sync_every steps (0: never) the trainer hands its pseudo-gradient
     * to sync (trainer thread; it must copy nothing it needs later and return at once) and waits
     * for ns_trainer_sync_result. Its checkpoints keep the outer state beside them. */
    uint32_t sync_every;
    bool sync_async; /* an asynchronous contributor: the answer to a round is the cohort's
                        weights to start again from (ns_trainer_sync_weights), asked first at
                        the start too (round 0, delta NULL) */
    void (*sync)(void *arg, uint64_t round, const float *delta, size_t n, double weight,
                 const uint8_t w0_hash[NS_SHA256_BYTES], uint32_t layer_first, uint32_t layer_last);
    void *sync_arg;
    void (*send)(void *arg, int dir, const ns_frame *f);
    void *send_arg;
} ns_train_config;

typedef struct ns_train_status {
    bool enabled, ready, running;
    char phase[32]; /* starting, loading data, tokenizer, building the model, training, ... */
    char error[512];
    uint64_t step, checkpoint_step, tokens_seen, eta_s;
    uint64_t aligned_checkpoint_step; /* a pipeline's newest checkpoint at a multiple of
                                         checkpoint_every (every stage has it) */
    uint32_t queued;
    double loss, val_loss, tokens_per_s, lr, grad_norm;
    uint32_t layers, hidden, vocab;
    uint64_t params;
    /* what the model should take: parameters, gradients, AdamW moments, activations and
     * scratch of one batch (ns_stage_memory_bytes), plus generation's key/value cache */
    uint64_t memory_estimate_bytes;
} ns_train_status;

typedef struct ns_trainer ns_trainer;

/* Refuses a model that would not fit cfg->memory_mb or the free memory, before anything is
 * allocated: the daemon calls it at start and stops with err. */
NS_MUST_USE int ns_trainer_check(const ns_train_config *cfg, char *err, size_t err_size);
/* S2's self-benchmark: the forward of one layer of the model cfg describes, for one row of the
 * trainer's sequence length, best of five (microseconds). Allocates one layer; takes about five
 * forwards of it. Any thread. */
NS_MUST_USE int ns_train_layer_benchmark(const ns_train_config *cfg, uint64_t *latency_us);
/* Checks, then starts the trainer thread (which loads data and the last checkpoint). */
NS_MUST_USE int ns_trainer_start(ns_trainer **out, const ns_train_config *cfg, char *err,
                                 size_t err_size);
void ns_trainer_status(ns_trainer *t, ns_train_status *out);
void ns_trainer_set_running(ns_trainer *t, bool on);
/* Runs steps more while paused (POST /train_step). NS_ELIMIT when the trainer is not ready yet
 * or too many are queued; NS_EINVAL when it stopped on an error. */
NS_MUST_USE int ns_trainer_queue_steps(ns_trainer *t, uint32_t steps);
/* Stops after the step in progress, writes a checkpoint, joins, frees. NULL is a no-op. */
void ns_trainer_stop(ns_trainer *t);
/* A pipeline message from a neighbouring stage (loop thread): copied to the trainer's inbox.
 * NS_ELIMIT when the inbox is full (NS_TRAIN_INBOX_MAX). */
#define NS_TRAIN_INBOX_MAX 256
typedef struct ns_pipe_msg ns_pipe_msg;
NS_MUST_USE int ns_trainer_pipe_input(ns_trainer *t, const ns_pipe_msg *m);
/* Pipeline figures for /training_status: refusals by reason, micro-batches, rows, inbox fill. */
typedef struct ns_train_pipe_status {
    bool on;
    uint32_t stage, stages, layer_first, layer_last, micro_batches, rows;
    uint32_t inbox, inbox_max, in_flight;
    uint32_t run_ahead; /* forwards it may run ahead of 1F1B (0: strict) */
    uint64_t ran_ahead; /* forwards it ran ahead while a gradient was late */
    uint64_t refused[5], steps;
    uint64_t resend_asked; /* RESENDs this stage sent after waiting 200 ms for an input */
    uint64_t resent;       /* frames it sent again when a neighbour asked */
    uint64_t suspected;    /* times it told the quorum a neighbour answers nothing */
    double wait_s, busy_s; /* time waiting for neighbours and computing, since the start */
} ns_train_pipe_status;
void ns_trainer_pipe_status(ns_trainer *t, ns_train_pipe_status *out);
/* What the trainer did in one period, for a training proof (ponw.h): the steps from the
 * checkpoint at step ckpt_step to the checkpoint written when the period closed. */
#define NS_TRAIN_SEGMENTS_MAX 64 /* a proof's activation hashes (NS_PONW_MICRO_BATCHES_MAX) */
typedef struct ns_train_work {
    uint64_t ckpt_step; /* the optimizer step the period starts from (a checkpoint) */
    uint32_t exec_mode;
    uint64_t batches; /* optimizer steps */
    uint64_t tokens;
    uint64_t batch_first; /* data position of the first step: epoch and index */
    uint64_t data_epoch;
    float loss_first, loss_last;
    uint32_t layers;                  /* held: layer_last - layer_first */
    uint32_t layer_first, layer_last; /* of the model's layers */
    bool has_embed, has_head, in_quorum;
    uint64_t layer_latency_us; /* a layer's forward, estimated from the step time (S2 tier) */
    uint8_t model_before[NS_SHA256_BYTES], model_after[NS_SHA256_BYTES];
    uint8_t input_hash[NS_SHA256_BYTES];  /* of the last step's token ids */
    uint8_t output_hash[NS_SHA256_BYTES]; /* of its loss */
    /* a pipeline stage's period is whole aligned segments of segment_steps steps; for each, the
     * chained hashes of its inputs and outputs (ns_training_commit) */
    bool in_pipeline;
    uint8_t pipeline_id[NS_SHA256_BYTES];
    uint32_t segment_steps, segments;
    uint8_t segment_in[NS_TRAIN_SEGMENTS_MAX][NS_SHA256_BYTES];
    uint8_t segment_out[NS_TRAIN_SEGMENTS_MAX][NS_SHA256_BYTES];
    uint64_t outer_round; /* the DiLoCo round whose outer step the period starts from (0: none) */
} ns_train_work;

typedef enum ns_work_state {
    NS_WORK_NONE = 0,   /* no steps since the last period: an uptime proof */
    NS_WORK_OPEN = 1,   /* steps, in a period not closed yet: no proof this time */
    NS_WORK_CLOSED = 2, /* *out is a closed period: a training proof */
} ns_work_state;
/* Takes the work period the trainer closed since the last call, and asks it to close the current
 * one at its next step (checkpoint and weight hash on its own thread). */
ns_work_state ns_trainer_take_work(ns_trainer *t, ns_train_work *out);
/* The last step any work period of this trainer (or its predecessors: cfg.proved_through) holds:
 * a trainer started again after a failover must not count those steps twice. */
uint64_t ns_trainer_closed_through(ns_trainer *t);
/* The cohort's answer to round `round` (any thread): agg[0..n) is its aggregate pseudo-gradient;
 * n = 0 when this node was alone (no outer step: the inner weights stand) or the round failed.
 * The trainer copies agg before returning. An answer to a round it no longer waits for is
 * dropped. */
void ns_trainer_sync_result(ns_trainer *t, uint64_t round, const float *agg, size_t n);
/* A download's answer: the cohort's outer state of the meeting `round` (at round_ms, Unix ms),
 * to train from next: n = the stage's parameter count (w0 alone: the momentum restarts) or twice
 * that (w0 then the momentum); anything else counts as a failed round. */
void ns_trainer_sync_weights(ns_trainer *t, uint64_t round, uint64_t round_ms, const float *w,
                             size_t n);
/* Copies the outer state, w0 (the weights of this node's last meeting) then the momentum (2 n
 * floats), [offset, offset + count) into out, for a node that downloads them (loop thread).
 * NS_ENOENT without an outer loop (or for an asynchronous contributor), NS_EINVAL for a range
 * beyond it. *n is the parameter count; *round, *round_ms and hash (ns_train_outer_state_hash)
 * describe the whole state. count 0 asks for those alone (out may be NULL). */
NS_MUST_USE int ns_trainer_outer_copy(ns_trainer *t, uint64_t offset, size_t count, float *out,
                                      size_t *n, uint64_t *round, uint64_t *round_ms,
                                      uint8_t hash[NS_SHA256_BYTES]);
void ns_train_outer_state_hash(const float *w0, const float *m, size_t n,
                               uint8_t out[NS_SHA256_BYTES]);
/* DiLoCo figures for /training_status. */
typedef struct ns_train_sync_status {
    bool on;
    uint32_t every;
    uint64_t rounds, rounds_alone, rounds_failed, last_round;
    uint64_t downloads; /* an asynchronous contributor's: the cohort's weights installed */
    /* S8's loss check of the last outer step (held-out batches, solo only; NaN: none yet) and
     * how many outer steps raised it */
    double loss_before, loss_after;
    uint64_t loss_rises;
    bool waiting, async;
    uint8_t w0_hash[NS_SHA256_BYTES]; /* the weights of the last meeting */
} ns_train_sync_status;
void ns_trainer_sync_status(ns_trainer *t, ns_train_sync_status *out);

/* Recomputes `steps` training steps from the checkpoint at ckpt_path with this node's copy of
 * the data (cfg as the trainer would open it), in the reproducible mode: what a verifier does
 * with a training proof (S9). *before and *after get the SHA-256 of the weights. Runs on the
 * calling thread; err names what failed. */
NS_MUST_USE int ns_train_replay(const ns_train_config *cfg, const char *ckpt_path, uint64_t steps,
                                uint8_t before[NS_SHA256_BYTES], uint8_t after[NS_SHA256_BYTES],
                                char *err, size_t err_size);

/* ---- text generation (train.c, on the trainer's model) ------------------------------------ */

#define NS_GEN_TOKENS_MAX       1024 /* max_tokens of one request */
#define NS_GEN_PROMPT_BYTES_MAX 16384
#define NS_GEN_QUEUED_MAX       8

typedef struct ns_gen_job ns_gen_job;
/* Called once per job, on the trainer thread, when it is answered (or cancelled at stop). */
typedef void (*ns_gen_done_fn)(ns_gen_job *job);

/* One POST /generate_text. The caller fills the request; the trainer fills the answer. */
struct ns_gen_job {
    /* request: text, or token ids (prompt NULL) */
    char *prompt;
    size_t prompt_len;
    uint32_t *prompt_ids;
    size_t prompt_id_count;
    uint32_t max_tokens; /* 1..NS_GEN_TOKENS_MAX */
    ns_sample_config sample;
    /* answer */
    int status;      /* 200, or the HTTP status of the error */
    char error[256]; /* when status is not 200 */
    size_t prompt_tokens;
    uint32_t *tokens; /* generated ids (end-of-text not included), malloc'd */
    size_t token_count;
    uint8_t *text; /* their bytes, malloc'd; not necessarily valid UTF-8 */
    size_t text_len;
    const char *finish; /* "length", "end_of_text" or "context" */
    uint64_t step;      /* the training step of the weights that answered */
    double seconds;
    /* plumbing */
    ns_gen_done_fn done;
    void *arg;
    ns_gen_job *next;
};

/* Queues a job for the trainer thread, which runs it between two steps (at once while paused).
 * NS_ELIMIT: the model is not loaded yet or NS_GEN_QUEUED_MAX jobs wait; NS_EINVAL: the trainer
 * stopped on an error. On an error job->done is never called. */
NS_MUST_USE int ns_trainer_generate(ns_trainer *t, ns_gen_job *job);
/* Frees what the trainer put in a job's answer and the request's buffers (not the job). */
void ns_gen_job_clear(ns_gen_job *job);

/* ---- verification by recompute (verify.c) ------------------------------------------------- */

typedef struct ns_verifier ns_verifier;
/* Called on the loop thread when a check ends: NS_JUDGE_UNKNOWN when it could not be done. */
typedef void (*ns_verdict_fn)(void *arg, const ns_proof *p, ns_judgement verdict,
                              const uint8_t recomputed[NS_SHA256_BYTES], bool spot_check);
typedef struct ns_verifier_config {
    ns_uv_env *uvenv;
    ns_net *net;
    ns_train_config train; /* this node's data, as its trainer opens it */
    char data_dir[PATH_MAX];
    uint8_t self[NS_NODE_ID_BYTES];
    uint64_t window_ms; /* a spot check later than a proof's window is pointless */
    bool silent;        /* NEUROSHARD_TEST_CHEAT=silent: never serve a checkpoint (tests only) */
    ns_verdict_fn done;
    void *arg;
} ns_verifier_config;

NS_MUST_USE int ns_verifier_new(ns_verifier **out, uv_loop_t *loop, const ns_verifier_config *cfg);
/* Waits for a recompute in progress, drops queued jobs; the loop must run once more to free. */
void ns_verifier_free(ns_verifier *v);
/* Queues a training proof for recompute (spot_check: chosen by this node, else to judge a
 * challenge); a proof judged or queued already is ignored. */
void ns_verifier_check(ns_verifier *v, const ns_proof *p, bool spot_check);
/* The verdict kept for a proof (recomputed gets the hash this node computed), or UNKNOWN. */
ns_judgement ns_verifier_verdict(const ns_verifier *v, const uint8_t id[NS_SHA256_BYTES],
                                 uint8_t recomputed[NS_SHA256_BYTES]);
/* VERIFY_GET (served from DATA/checkpoints) and VERIFY_PART frames from a peer link. */
void ns_verifier_on_frame(ns_verifier *v, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f);
/* Asks again or gives up on a job that stalled: call every few seconds. */
void ns_verifier_tick(ns_verifier *v);
/* Proofs judged, found fraudulent (unanswered ones among them), and left unjudged. */
void ns_verifier_counts(const ns_verifier *v, uint64_t *checked, uint64_t *fraud, uint64_t *failed,
                        uint64_t *unanswered);

/* A checkpoint's files, as they are asked for by index (verify.c): model, optimizer, config,
 * state; NULL beyond. */
#define NS_CKPT_FILES 4
/* Removes a directory's files and the directory (one level: a checkpoint). */
void ns_dir_remove(const char *dir);
const char *ns_ckpt_file_name(uint32_t file);
/* Answers a request for part of one of this node's checkpoints (body: step 8, file 1, offset 8,
 * big-endian) with a frame of answer_type: the request's 17 bytes, the file's size (0: not
 * here) and up to 1 MiB of it from offset as a U8 tensor. */
void ns_ckpt_serve(ns_net *net, const char *data_dir, const uint8_t *peer, const ns_frame *req,
                   uint32_t answer_type);

/* ---- the swarm: capacity, the quorum and the pipeline's frames (swarm.c) --------------------- */

typedef struct ns_swarm ns_swarm;
typedef struct ns_diloco ns_diloco;
typedef struct ns_swarm_config {
    ns_uv_env *uvenv;
    ns_net *net;
    const ns_key *key;
    uint32_t quorum_size; /* 1: alone (the swarm only announces capacity); 0: pool mode */
    uint32_t model_layers, model_hidden;
    uint64_t memory_mb;
    uint64_t session_ms;      /* a quorum's session period (S5); 0: NS_QUORUM_SESSION_MS */
    ns_train_config train;    /* the stage's trainer starts from this, with its place filled in */
    ns_trainer **trainer;     /* the daemon's: set when the quorum forms */
    uint32_t test_drop_every; /* tests only (NEUROSHARD_TEST_DROP_PIPE): lose every n-th
                                 pipeline frame this node sends, as a dropping link would */
    uint32_t test_layer_ms;   /* tests only (NEUROSHARD_TEST_LAYER_MS): the self-benchmark's
                                 time of a layer, as a slow machine would measure it */
    uint32_t test_pong_delay_ms; /* tests only (NEUROSHARD_TEST_PONG_DELAY_MS): answers to
                                    round-trip pings held back, as on a long link */
    ns_diloco *diloco; /* the daemon's cohort sync (NULL: off): a T5 node's asynchronous role */
} ns_swarm_config;
NS_MUST_USE int ns_swarm_start(ns_swarm **out, const ns_swarm_config *cfg);
void ns_swarm_stop(ns_swarm *s); /* NULL is a no-op; after the trainer stopped */
json_t *ns_swarm_json(ns_swarm *s);
/* Whether this node's trainer is the whole model trained asynchronously (S2: a T5 node). */
bool ns_swarm_async(const ns_swarm *s);

/* ---- DiLoCo's cohort sync (diloco.c) ----------------------------------------------------- */

#include "neuroshard/aggregate.h"

typedef struct ns_diloco ns_diloco;
typedef struct ns_diloco_config {
    ns_uv_env *uvenv;
    ns_net *net;
    const ns_key *key;
    ns_trainer **trainer; /* the daemon's (it may come and go) */
    uint32_t sync_every;  /* H */
    bool async;           /* an asynchronous contributor, not a member of the rounds */
    ns_agg_kind aggregator;
    double density;      /* top-k share (0: compress.h's default) */
    uint64_t timeout_ms; /* a round's phases (0: sync.h's default) */
    char data_dir[PATH_MAX];
    const char *cheat;           /* NEUROSHARD_TEST_CHEAT */
    struct ns_econ *const *econ; /* the daemon's: where cohort fraud becomes a challenge */
    bool expect_peers; /* seeds or LAN discovery: a fresh member listens for its cohort first */
} ns_diloco_config;
NS_MUST_USE int ns_diloco_start(ns_diloco **out, const ns_diloco_config *cfg);
void ns_diloco_stop(ns_diloco *d); /* NULL is a no-op; after the trainer stopped */
/* Makes this node an asynchronous contributor (or a member of the rounds again); only while no
 * trainer runs, before the next one starts. */
void ns_diloco_set_async(ns_diloco *d, bool async);
/* The trainer's sync callback (ns_train_config.sync with sync_arg = the ns_diloco). */
void ns_diloco_request(void *arg, uint64_t round, const float *delta, size_t n, double weight,
                       const uint8_t w0_hash[NS_SHA256_BYTES], uint32_t layer_first,
                       uint32_t layer_last);
json_t *ns_diloco_json(ns_diloco *d);

/* ---- proofs of neural work and the ledger's gossip (econ.c) -------------------------------- */

typedef struct ns_econ ns_econ;
typedef struct ns_econ_config {
    ns_ledger *ledger;
    const ns_key *key;
    ns_net *net;
    ns_uv_env *uvenv;
    ns_trainer *const *trainer; /* the node's trainer pointer (it may come and go) */
    uint64_t started_ms;
    uint64_t proof_interval_ms; /* 0: NS_PONW_INTERVAL_MS */
    bool verifier;              /* --role verify: spot-check peers' training proofs */
    int64_t verify_ppm;         /* -1: S9's share for the swarm's size */
    const char *cheat;          /* NEUROSHARD_TEST_CHEAT: a lying node, for tests only */
    ns_neuro bond;              /* what this swarm's challenges bond */
    uint64_t window_ms;         /* this swarm's challenge window */
    ns_verifier_config verify;  /* uvenv, net and done are filled in by ns_econ_start */
} ns_econ_config;

/* ---- cohort fraud bundles (evidence.c) ------------------------------------------------------ */

typedef struct ns_evidence ns_evidence;
typedef struct ns_evidence_config {
    ns_uv_env *uvenv;
    ns_net *net;
    char data_dir[PATH_MAX];
    void (*fetched)(void *arg); /* a fetch ended (a challenge waiting on it may apply now) */
    void *arg;
} ns_evidence_config;
NS_MUST_USE int ns_evidence_new(ns_evidence **out, const ns_evidence_config *cfg);
void ns_evidence_free(ns_evidence *ev); /* NULL is a no-op */
/* Keeps a bundle under <data_dir>/evidence/<hash>.bundle; *hash gets its SHA-256. */
NS_MUST_USE int ns_evidence_keep(ns_evidence *ev, const uint8_t *bundle, size_t len,
                                 uint8_t hash[NS_SHA256_BYTES]);
/* The verdict on `accused` in `round` by the bundle with this hash: judged when the bundle is
 * here; else fetched from holder (NS_JUDGE_UNKNOWN meanwhile); NS_JUDGE_HONEST when the holder
 * never served it. */
ns_judgement ns_evidence_verdict(ns_evidence *ev, const uint8_t hash[NS_SHA256_BYTES],
                                 const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round,
                                 const uint8_t holder[NS_NODE_ID_BYTES]);
/* The challenger's own judgement of the bundle it keeps, before it appends the challenge (which
 * its own ledger must apply at once): the same ns_cohort_judge, on the calling thread. */
void ns_evidence_prejudge(ns_evidence *ev, const uint8_t *bundle, size_t len,
                          const uint8_t hash[NS_SHA256_BYTES],
                          const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round);
void ns_evidence_on_frame(ns_evidence *ev, const uint8_t peer[NS_NODE_ID_BYTES], const ns_frame *f);
void ns_evidence_tick(ns_evidence *ev); /* retries and gives up fetches; every few seconds */
json_t *ns_evidence_json(const ns_evidence *ev);

/* Starts signing proofs, claiming them and gossiping entries and proofs over net's peer links. */
NS_MUST_USE int ns_econ_start(ns_econ **out, const ns_econ_config *cfg);
void ns_econ_stop(ns_econ *e); /* NULL is a no-op */
/* This node's account: a send (NS_EINVAL with why for a refused one) and stake or unstake. */
NS_MUST_USE int ns_econ_send(ns_econ *e, const uint8_t to[NS_NODE_ID_BYTES], ns_neuro amount,
                             char *why, uint8_t hash[NS_SHA256_BYTES]);
NS_MUST_USE int ns_econ_stake(ns_econ *e, ns_neuro amount, bool unstake, char *why);
/* A cohort member screened `accused`'s part of cohort round `round` as fraud: keeps the bundle
 * and challenges the accused's proof of the round before, once this node holds it (and has the
 * bond staked). */
void ns_econ_accuse(ns_econ *e, const uint8_t accused[NS_NODE_ID_BYTES], uint64_t round,
                    const uint8_t *bundle, size_t len);
/* ns_ledger_check's report as JSON (daemon.c). */
json_t *ns_ledger_report_json(const ns_ledger_report *r);
/* GET /api/ponw: the newest proofs kept and the validator's verdicts. */
json_t *ns_econ_ponw_json(ns_econ *e, uint32_t limit);
/* Prometheus lines; *text malloc'd; -1 when out of memory. */
int ns_econ_metrics(ns_econ *e, char **text);

/* POST /generate_text (generate.c): checks a request, queues it on the trainer, answers it on
 * the loop thread when the trainer is done. */
typedef struct ns_gen_service ns_gen_service;
NS_MUST_USE int ns_gen_start(ns_gen_service **out, uv_loop_t *loop);
/* Answers req at once (an error) or defers it until the trainer has generated. */
void ns_gen_request(ns_gen_service *svc, ns_api *api, ns_trainer *trainer, ns_api_request *req);
void ns_gen_counts(const ns_gen_service *svc, uint64_t *answered, uint64_t *failed);
/* After ns_trainer_stop and before ns_api_stop: answers every finished job, then closes (the
 * loop must run once more to free it). NULL is a no-op. */
void ns_gen_stop(ns_gen_service *svc);

#endif
