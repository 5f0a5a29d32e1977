/*
 * daemon.c: neuroshardd's life: start in checked steps, serve, stop cleanly.
 *
 * Start is a sequence of steps, each of which either succeeds or stops the daemon with one line
 * saying what is wrong and what to do, before anything on disk is changed: configuration, data
 * directory, the one-instance lock, the wallet's key, the ledger, the API socket. Only then are
 * the API token and address written and the loop run. The loop thread owns all node state; the
 * HTTP thread only hands requests over (api.c). Timed work goes through the chores core and env.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "neuroshard/crypto.h"
#include "neuroshard/dht.h"
#include "neuroshard/link.h"
#include "neuroshard/ledger.h"
#include "neuroshard/swarm.h"
#include "neuroshard/pipeline.h"
#include "neuroshard/sync.h"
#include "node_internal.h"

#define EXIT_REFUSED 1
#define EXIT_USAGE   2
#define MIB          (1024ull * 1024ull)

typedef struct node {
    ns_config cfg;
    int argc;
    char **argv;
    uv_loop_t loop;
    ns_uv_env uvenv;
    ns_chores chores;
    ns_key key;
    char node_id_hex[NS_NODE_ID_HEX_SIZE];
    ns_ledger *ledger;
    ns_api *api;
    ns_net *net;
    ns_trainer *trainer;
    ns_gen_service *gen;
    ns_econ *econ;
    ns_swarm *swarm;
    ns_diloco *diloco;
    struct dht_op *dht_ops; /* API requests waiting on a DHT lookup */
    ns_addr_text api_bound;
    int api_fd; /* bound, not yet served */
    char api_addr_path[PATH_MAX];
    int lock_fd;
    uv_signal_t sig_int, sig_term, sig_hup;
    uint64_t started_ms;
    uint64_t memory_mb;
    bool stopping;
} node;

static void NS_PRINTF(1, 2) refuse(const char *fmt, ...)
{
    char line[NS_ERR_TEXT_SIZE + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "neuroshardd: %s\n", line);
}

static int path_in(char *out, size_t out_size, const char *dir, const char *name)
{
    int n = snprintf(out, out_size, "%s/%s", dir, name);
    return (n < 0 || (size_t)n >= out_size) ? NS_EINVAL : NS_OK;
}

/* ---- start steps -------------------------------------------------------------------------- */

static int check_data_dir(const node *n)
{
    const char *dir = n->cfg.data_dir;
    struct stat st;
    if (stat(dir, &st) != 0) {
        refuse("data directory %s does not exist: create a wallet first with "
               "'neuroctl wallet new --data-dir %s'",
               dir, dir);
        return NS_ENOENT;
    }
    if (!S_ISDIR(st.st_mode)) {
        refuse("data directory %s is not a directory", dir);
        return NS_EINVAL;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        refuse("data directory %s is not writable: %s", dir, strerror(errno));
        return NS_EPERM;
    }
    return NS_OK;
}

/* One instance per data directory: an flock, which the kernel drops when a process dies, even
 * by kill -9, so a crash never leaves the lock stuck. */
static int take_lock(node *n)
{
    char path[PATH_MAX];
    if (path_in(path, sizeof path, n->cfg.data_dir, NS_LOCK_FILE) != NS_OK)
        return NS_EINVAL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        refuse("cannot open lock file %s: %s", path, strerror(errno));
        return NS_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t r = pread(fd, pid, sizeof pid - 1, 0);
        pid[r > 0 ? r : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        refuse("another neuroshardd (pid %s) is already running on %s", pid[0] ? pid : "?",
               n->cfg.data_dir);
        close(fd);
        return NS_ELOCKED;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        refuse("cannot write lock file %s: %s", path, strerror(errno));
        close(fd);
        return NS_EIO;
    }
    n->lock_fd = fd;
    return NS_OK;
}

static int load_key(node *n)
{
    char path[PATH_MAX], err[NS_ERR_TEXT_SIZE];
    if (path_in(path, sizeof path, n->cfg.data_dir, NS_KEYSTORE_FILE) != NS_OK)
        return NS_EINVAL;
    int rc = ns_keystore_unlock(path, &n->key, err);
    if (rc == NS_ENOENT) {
        refuse("no wallet in %s: create one with 'neuroctl wallet new --data-dir %s'",
               n->cfg.data_dir, n->cfg.data_dir);
        return rc;
    }
    if (rc != NS_OK) {
        refuse("%s", err);
        return rc;
    }
    ns_hex_encode(n->node_id_hex, sizeof n->node_id_hex, n->key.node_id, NS_NODE_ID_BYTES);
    return NS_OK;
}

static int open_ledger(node *n)
{
    char path[PATH_MAX];
    if (path_in(path, sizeof path, n->cfg.data_dir, NS_LEDGER_FILE) != NS_OK)
        return NS_EINVAL;
    int rc = ns_ledger_open(path, &n->ledger);
    switch (rc) {
    case NS_OK:
        rc = ns_ledger_set_window(n->ledger, n->cfg.ponw_window_s * 1000);
        if (rc == NS_OK)
            rc = ns_ledger_set_bond(n->ledger, (ns_neuro){n->cfg.ponw_bond_nano});
        if (rc != NS_OK)
            refuse("cannot write ledger %s: %s", path, ns_strerror(rc));
        return rc;
    case NS_ECORRUPT:
        refuse("ledger %s is corrupt; it was left untouched: restore it from a backup or move it "
               "away to start a new one",
               path);
        return rc;
    case NS_EFOREIGN:
        refuse("ledger %s belongs to another program or a newer neuroshard; it was left untouched",
               path);
        return rc;
    default:
        refuse("cannot open ledger %s: %s", path, ns_strerror(rc));
        return rc;
    }
}

/* The API token: 32 random bytes in hex in DATA/api.token (0600), kept across restarts. */
static int api_token(node *n, char token[NS_API_TOKEN_HEX_SIZE])
{
    char path[PATH_MAX];
    if (path_in(path, sizeof path, n->cfg.data_dir, NS_API_TOKEN_FILE) != NS_OK)
        return NS_EINVAL;
    uint8_t *buf;
    size_t len;
    struct stat st;
    if (ns_file_read(path, 256, &buf, &len) == NS_OK) {
        uint8_t raw[32];
        bool ok = len >= 64 && (len == 64 || buf[64] == '\n');
        if (ok) {
            buf[64] = '\0';
            ok = ns_hex_decode(raw, sizeof raw, (char *)buf) == NS_OK && stat(path, &st) == 0 &&
                 (st.st_mode & 077) == 0;
        }
        if (ok)
            memcpy(token, buf, NS_API_TOKEN_HEX_SIZE);
        free(buf);
        if (ok)
            return NS_OK;
    }
    uint8_t raw[32];
    randombytes_buf(raw, sizeof raw);
    ns_hex_encode(token, NS_API_TOKEN_HEX_SIZE, raw, sizeof raw);
    char line[NS_API_TOKEN_HEX_SIZE + 1];
    snprintf(line, sizeof line, "%s\n", token);
    int rc = ns_file_write_atomic(path, line, strlen(line), 0600);
    if (rc != NS_OK)
        refuse("cannot write API token %s: %s", path, ns_strerror(rc));
    return rc;
}

static void api_handler(void *arg, ns_api_request *req);

/* Binds the API's socket; serving starts later (start_api), once nothing can fail any more
 * before files are written. */
static int bind_api(node *n)
{
    char addr[NS_HOST_SIZE + 16];
    ns_addr_format(addr, sizeof addr, &n->cfg.api_listen);
    int rc = ns_listen_tcp(&n->cfg.api_listen, &n->api_fd, &n->api_bound);
    if (rc != NS_OK)
        refuse("cannot listen for the API on %s: %s", addr,
               rc == NS_EADDRINUSE ? "address already in use (is another node running?)"
                                   : ns_strerror(rc));
    return rc;
}

static int start_api(node *n)
{
    char addr[NS_HOST_SIZE + 16];
    ns_addr_format(addr, sizeof addr, &n->cfg.api_listen);
    char token[NS_API_TOKEN_HEX_SIZE];
    int rc = api_token(n, token);
    if (rc != NS_OK)
        return rc;
    int fd = n->api_fd;
    n->api_fd = -1; /* the API owns it from here, even when it fails to start */
    rc = ns_api_start(&n->api, &n->loop, fd, token, api_handler, n);
    sodium_memzero(token, sizeof token);
    if (rc != NS_OK) {
        refuse("cannot start the HTTP API on %s", addr);
        return rc;
    }
    ns_addr_format(addr, sizeof addr, &n->api_bound);
    char line[sizeof addr + 1];
    snprintf(line, sizeof line, "%s\n", addr);
    if (path_in(n->api_addr_path, sizeof n->api_addr_path, n->cfg.data_dir, NS_API_ADDR_FILE) !=
            NS_OK ||
        ns_file_write_atomic(n->api_addr_path, line, strlen(line), 0644) != NS_OK) {
        refuse("cannot write %s", n->api_addr_path);
        return NS_EIO;
    }
    return NS_OK;
}

static int start_net(node *n)
{
    char err[NS_ERR_TEXT_SIZE];
    int rc = ns_net_start(&n->net, &n->loop, &n->uvenv, &n->cfg, &n->key, n->memory_mb, err);
    if (rc != NS_OK)
        refuse("%s", err);
    return rc;
}

static void train_config(const node *n, ns_train_config *tc)
{
    memset(tc, 0, sizeof *tc);
    snprintf(tc->data_dir, sizeof tc->data_dir, "%s", n->cfg.data_dir);
    snprintf(tc->dataset_dir, sizeof tc->dataset_dir, "%s", n->cfg.dataset);
    tc->key = &n->key;
    tc->memory_mb = n->memory_mb;
    tc->model_layers = n->cfg.model_layers;
    tc->model_hidden = n->cfg.model_hidden;
    tc->start_running = true;
    tc->exec_mode = n->cfg.exec_fast ? NS_EXEC_FAST : NS_EXEC_REPRODUCIBLE;
    tc->threads = n->cfg.threads;
    tc->window_ms = n->cfg.ponw_window_s * 1000;
    tc->interval_ms = n->cfg.ponw_interval_s * 1000;
    tc->micro_batches = n->cfg.micro_batches;
    tc->run_ahead = n->cfg.run_ahead;
    tc->checkpoint_every = n->cfg.checkpoint_every;
    tc->sync_every =
        n->cfg.sync_every == NS_SYNC_EVERY_AUTO
            ? ns_sync_inner_steps(n->net != NULL ? ns_dht_contact_count(ns_net_dht(n->net)) + 1 : 1)
            : n->cfg.sync_every;
    tc->sync_async = n->cfg.sync_async;
    tc->sync = n->diloco != NULL ? ns_diloco_request : NULL;
    tc->sync_arg = n->diloco;
}

/* A model that would not fit is refused before anything is allocated or written. */
static int check_training(node *n)
{
    if (!n->cfg.train)
        return NS_OK;
    if (n->cfg.quorum_size != 1 && n->cfg.model_layers == 0) {
        refuse("cannot train in a pipeline: --quorum-size needs --model LxH, the same on every "
               "member");
        return NS_EINVAL;
    }
    uint32_t every = n->cfg.sync_every == NS_SYNC_EVERY_AUTO ? 100 : n->cfg.sync_every;
    uint32_t ckpt = n->cfg.checkpoint_every ? n->cfg.checkpoint_every : NS_TRAIN_CKPT_EVERY;
    if (n->cfg.quorum_size != 1 && n->cfg.sync_async) {
        refuse("a pipeline stage cannot be an asynchronous contributor: --sync-role async trains "
               "the whole model alone");
        return NS_EINVAL;
    }
    if (n->cfg.quorum_size != 1 && every != 0 && every % ckpt != 0) {
        refuse("cannot sync a pipeline stage every %u steps: it must be a multiple of "
               "--checkpoint-every (%u), where every stage can stop together",
               every, ckpt);
        return NS_EINVAL;
    }
    if (n->cfg.quorum_size > n->cfg.model_layers && n->cfg.model_layers != 0) {
        refuse("cannot train in a pipeline of %u nodes: the model has only %u layers",
               n->cfg.quorum_size, n->cfg.model_layers);
        return NS_EINVAL;
    }
    ns_train_config tc;
    train_config(n, &tc);
    if (n->cfg.quorum_size == NS_QUORUM_SIZE_AUTO) {
        /* the pool gives this node only the layers its memory holds (its stage is checked when
         * it starts): here, whether one middle layer fits at all */
        tc.stages = 3;
        tc.stage = 1;
        tc.layer_first = tc.model_layers >= 3 ? 1 : 0;
        tc.layer_last = tc.layer_first + 1;
    }
    char err[NS_ERR_TEXT_SIZE];
    int rc = ns_trainer_check(&tc, err, sizeof err);
    if (rc != NS_OK)
        refuse("cannot train: %s (or --train off)", err);
    return rc;
}

static void start_training(node *n)
{
    if (!n->cfg.train || n->cfg.quorum_size != 1)
        return; /* in a pipeline the swarm starts the trainer when the quorum forms */
    ns_train_config tc;
    train_config(n, &tc);
    char err[NS_ERR_TEXT_SIZE];
    if (ns_trainer_start(&n->trainer, &tc, err, sizeof err) != NS_OK)
        NS_LOG_E("train", "training not started: %s", err);
}

static uint64_t physical_memory_mb(void)
{
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0)
        return NS_ARCH_MEMORY_MB_MIN;
    return (uint64_t)pages * (uint64_t)page / MIB;
}

/* ---- the API's answers -------------------------------------------------------------------- */

typedef struct node_stats {
    uint64_t uptime_s;
    uint64_t height;
    ns_neuro balance, stake, minted, burned;
} node_stats;

static int collect_stats(node *n, node_stats *s)
{
    s->uptime_s = (ns_env_now(&n->uvenv.env) - n->started_ms) / 1000;
    int rc = ns_ledger_height(n->ledger, &s->height);
    if (rc == NS_OK)
        rc = ns_ledger_balance(n->ledger, n->key.node_id, &s->balance, &s->stake);
    if (rc == NS_OK)
        rc = ns_ledger_totals(n->ledger, &s->minted, &s->burned);
    return rc;
}

static void answer_stats(node *n, ns_api_request *req)
{
    node_stats s;
    if (collect_stats(n, &s) != NS_OK) {
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    char balance[32], stake[32], api[NS_HOST_SIZE + 16], listen[NS_ADDR_TEXT_SIZE];
    ns_neuro_format(balance, sizeof balance, s.balance);
    ns_neuro_format(stake, sizeof stake, s.stake);
    ns_addr_format(api, sizeof api, &n->api_bound);
    ns_addr_to_text(listen, sizeof listen, ns_net_bound(n->net));
    ns_api_reply_json(req, 200,
                      json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:I, s:s, s:s, s:s, s:I}",
                                "node_id", n->node_id_hex, "version", NS_VERSION, "uptime_s",
                                (json_int_t)s.uptime_s, "peers",
                                (json_int_t)ns_dht_contact_count(ns_net_dht(n->net)), "balance",
                                balance, "stake", stake, "ledger_height", (json_int_t)s.height,
                                "state", n->stopping ? "stopping" : "running", "api", api, "listen",
                                listen, "memory_mb", (json_int_t)n->memory_mb));
}

static void answer_model_info(node *n, ns_api_request *req)
{
    ns_arch a;
    if (ns_arch_for_memory(n->memory_mb, &a) != NS_OK) {
        ns_api_error(req, 503, "this node offers too little memory for any model");
        return;
    }
    ns_api_reply_json(req, 200,
                      json_pack("{s:I, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I}", "memory_mb",
                                (json_int_t)n->memory_mb, "layers", (int)a.layers, "hidden",
                                (int)a.hidden, "heads", (int)a.heads, "kv_heads", (int)a.kv_heads,
                                "intermediate", (int)a.intermediate, "vocab", (int)a.vocab,
                                "seq_len_max", (int)a.seq_len_max, "params", (json_int_t)a.params));
}

/* The most resident memory this process has had (getrusage's ru_maxrss, in KiB on Linux). */
static uint64_t peak_rss_bytes(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_maxrss * 1024 : 0;
}

/* Prometheus lines about training and generation; *text is malloc'd. -1 when out of memory. */
static int train_metrics(node *n, char **text)
{
    ns_train_status t = {0};
    if (n->trainer != NULL)
        ns_trainer_status(n->trainer, &t);
    uint64_t gen_ok = 0, gen_err = 0;
    if (n->gen != NULL)
        ns_gen_counts(n->gen, &gen_ok, &gen_err);
    return asprintf(text,
                    "# HELP neuroshard_process_peak_rss_bytes Most resident memory so far.\n"
                    "# TYPE neuroshard_process_peak_rss_bytes gauge\n"
                    "neuroshard_process_peak_rss_bytes %llu\n"
                    "# HELP neuroshard_train_memory_estimate_bytes What the model should "
                    "take: weights, gradients, optimizer, activations, KV cache.\n"
                    "# TYPE neuroshard_train_memory_estimate_bytes gauge\n"
                    "neuroshard_train_memory_estimate_bytes %llu\n"
                    "# HELP neuroshard_train_running 1 while the trainer makes steps.\n"
                    "# TYPE neuroshard_train_running gauge\n"
                    "neuroshard_train_running %d\n"
                    "# HELP neuroshard_train_step Optimizer steps of the model so far.\n"
                    "# TYPE neuroshard_train_step gauge\n"
                    "neuroshard_train_step %llu\n"
                    "# HELP neuroshard_train_checkpoint_step Step of the newest checkpoint.\n"
                    "# TYPE neuroshard_train_checkpoint_step gauge\n"
                    "neuroshard_train_checkpoint_step %llu\n"
                    "# HELP neuroshard_train_loss Training loss of the last step.\n"
                    "# TYPE neuroshard_train_loss gauge\n"
                    "neuroshard_train_loss %.6g\n"
                    "# HELP neuroshard_train_val_loss Loss on the held-out split, last measured.\n"
                    "# TYPE neuroshard_train_val_loss gauge\n"
                    "neuroshard_train_val_loss %.6g\n"
                    "# HELP neuroshard_train_tokens_per_second Training throughput (moving "
                    "average).\n"
                    "# TYPE neuroshard_train_tokens_per_second gauge\n"
                    "neuroshard_train_tokens_per_second %.1f\n"
                    "# HELP neuroshard_train_tokens_total Tokens trained on since the start.\n"
                    "# TYPE neuroshard_train_tokens_total counter\n"
                    "neuroshard_train_tokens_total %llu\n"
                    "# HELP neuroshard_generate_requests_total Generation requests answered "
                    "by the model.\n"
                    "# TYPE neuroshard_generate_requests_total counter\n"
                    "neuroshard_generate_requests_total{result=\"ok\"} %llu\n"
                    "neuroshard_generate_requests_total{result=\"error\"} %llu\n",
                    (unsigned long long)peak_rss_bytes(),
                    (unsigned long long)t.memory_estimate_bytes, t.running && t.ready ? 1 : 0,
                    (unsigned long long)t.step, (unsigned long long)t.checkpoint_step, t.loss,
                    t.val_loss, t.tokens_per_s, (unsigned long long)t.tokens_seen,
                    (unsigned long long)gen_ok, (unsigned long long)gen_err);
}

static void answer_metrics(node *n, ns_api_request *req)
{
    node_stats s;
    if (collect_stats(n, &s) != NS_OK) {
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    char *text = NULL;
    int len = asprintf(
        &text,
        "# HELP neuroshard_build_info Version of this node.\n"
        "# TYPE neuroshard_build_info gauge\n"
        "neuroshard_build_info{version=\"%s\",node_id=\"%s\"} 1\n"
        "# HELP neuroshard_uptime_seconds Seconds since the node started.\n"
        "# TYPE neuroshard_uptime_seconds gauge\n"
        "neuroshard_uptime_seconds %llu\n"
        "# HELP neuroshard_peers Peers currently known.\n"
        "# TYPE neuroshard_peers gauge\n"
        "neuroshard_peers %zu\n"
        "# HELP neuroshard_ledger_height Ledger entries applied.\n"
        "# TYPE neuroshard_ledger_height gauge\n"
        "neuroshard_ledger_height %llu\n"
        "# HELP neuroshard_balance_nano This node's balance in nano-NEURO.\n"
        "# TYPE neuroshard_balance_nano gauge\n"
        "neuroshard_balance_nano %lld\n"
        "# HELP neuroshard_minted_nano NEURO minted over the whole ledger, in nano-NEURO.\n"
        "# TYPE neuroshard_minted_nano gauge\n"
        "neuroshard_minted_nano %lld\n"
        "# HELP neuroshard_api_requests_total API requests answered, by status class.\n"
        "# TYPE neuroshard_api_requests_total counter\n"
        "neuroshard_api_requests_total{class=\"2xx\"} %llu\n"
        "neuroshard_api_requests_total{class=\"4xx\"} %llu\n"
        "neuroshard_api_requests_total{class=\"5xx\"} %llu\n",
        NS_VERSION, n->node_id_hex, (unsigned long long)s.uptime_s,
        ns_dht_contact_count(ns_net_dht(n->net)), (unsigned long long)s.height,
        (long long)s.balance.nano, (long long)s.minted.nano,
        (unsigned long long)ns_api_requests(n->api, 2),
        (unsigned long long)ns_api_requests(n->api, 4),
        (unsigned long long)ns_api_requests(n->api, 5));
    char *net_text = NULL;
    int net_len = -1;
    if (len >= 0)
        ns_net_metrics(n->net, &net_text, &net_len);
    char *train_text = NULL;
    int train_len = net_len >= 0 ? train_metrics(n, &train_text) : -1;
    char *econ_text = NULL;
    int econ_len = train_len < 0     ? -1
                   : n->econ != NULL ? ns_econ_metrics(n->econ, &econ_text)
                                     : asprintf(&econ_text, "%s", "");
    char *all = NULL;
    int all_len =
        econ_len >= 0 ? asprintf(&all, "%s%s%s%s", text, net_text, train_text, econ_text) : -1;
    free(text);
    free(net_text);
    free(train_text);
    free(econ_text);
    if (all_len < 0) {
        ns_api_error(req, 500, "out of memory");
        return;
    }
    free(req->response);
    req->response = all;
    req->response_len = (size_t)all_len;
    req->status = 200;
    req->content_type = "text/plain; version=0.0.4";
}

static void answer_peers(node *n, ns_api_request *req)
{
    json_t *peers = ns_net_peers_json(n->net);
    ns_api_reply_json(req, 200,
                      peers != NULL ? json_pack("{s:I, s:o}", "count",
                                                (json_int_t)json_array_size(peers), "peers", peers)
                                    : NULL);
}

static void answer_doctor(node *n, ns_api_request *req)
{
    ns_api_reply_json(req, 200, ns_net_doctor_json(n->net));
}

/* ---- DHT operations that wait on the network ---------------------------------------------- */

typedef struct dht_op {
    node *n;
    ns_api_request *req;
    struct dht_op *prev, *next;
} dht_op;

static dht_op *dht_op_new(node *n, ns_api_request *req)
{
    dht_op *op = calloc(1, sizeof *op);
    if (op == NULL)
        return NULL;
    op->n = n;
    op->req = req;
    op->next = n->dht_ops;
    if (op->next != NULL)
        op->next->prev = op;
    n->dht_ops = op;
    req->deferred = true;
    return op;
}

static void dht_op_finish(dht_op *op)
{
    node *n = op->n;
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        n->dht_ops = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
    ns_api_complete(n->api, op->req);
    free(op);
}

static json_t *contacts_json(const ns_dht_result *r)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < r->contact_count; i++) {
        char id[NS_NODE_ID_HEX_SIZE], where[NS_ADDR_TEXT_SIZE];
        ns_hex_encode(id, sizeof id, r->contacts[i].node_id, NS_ID_BYTES);
        ns_addr_to_text(where, sizeof where, &r->contacts[i].addr);
        json_array_append_new(arr, json_pack("{s:s, s:s}", "node_id", id, "addr", where));
    }
    return arr;
}

static json_t *record_json(const uint8_t *buf, size_t len, uint64_t now_ms)
{
    ns_record rec;
    if (ns_record_verify(buf, len, now_ms, &rec) != NS_OK)
        return NULL; /* the DHT verified it; it may have expired since */
    char author[NS_NODE_ID_HEX_SIZE], topic[2 * NS_RECORD_TOPIC_BYTES_MAX + 1];
    ns_hex_encode(author, sizeof author, rec.author, NS_ID_BYTES);
    ns_hex_encode(topic, sizeof topic, rec.topic, rec.topic_len);
    char *hex = malloc(2 * len + 1);
    if (hex == NULL)
        return NULL;
    ns_hex_encode(hex, 2 * len + 1, buf, len);
    json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:s, s:s}", "author", author, "type", (int)rec.type,
                          "sequence", (json_int_t)rec.sequence, "expiry_ms",
                          (json_int_t)rec.expiry_ms, "topic_hex", topic, "envelope_hex", hex);
    free(hex);
    ns_node_info info;
    if (o != NULL && rec.type == NS_RECORD_NODE &&
        ns_node_record_open(buf, len, now_ms, NULL, &info) == NS_OK) {
        json_t *addrs = json_array();
        for (size_t i = 0; i < info.address_count; i++) {
            char where[NS_ADDR_TEXT_SIZE];
            ns_addr_to_text(where, sizeof where, &info.addresses[i]);
            json_array_append_new(addrs, json_string(where));
        }
        json_object_set_new(o, "addresses", addrs);
        json_object_set_new(o, "version", json_string(info.version));
    }
    return o;
}

static void dht_get_done(void *arg, const ns_dht_result *r)
{
    dht_op *op = arg;
    json_t *records = json_array();
    uint64_t now = ns_env_now(&op->n->uvenv.env);
    for (size_t i = 0; i < r->record_count; i++) {
        json_t *o = record_json(r->records[i], r->record_lens[i], now);
        if (o != NULL)
            json_array_append_new(records, o);
    }
    ns_api_reply_json(op->req, json_array_size(records) > 0 ? 200 : 404,
                      json_pack("{s:o, s:i, s:i, s:I}", "records", records, "hops", (int)r->hops,
                                "queried", (int)r->queried, "elapsed_ms",
                                (json_int_t)r->elapsed_ms));
    dht_op_finish(op);
}

static void dht_lookup_done(void *arg, const ns_dht_result *r)
{
    dht_op *op = arg;
    ns_api_reply_json(op->req, r->contact_count > 0 ? 200 : 404,
                      json_pack("{s:o, s:i, s:i, s:I}", "contacts", contacts_json(r), "hops",
                                (int)r->hops, "queried", (int)r->queried, "elapsed_ms",
                                (json_int_t)r->elapsed_ms));
    dht_op_finish(op);
}

static void dht_put_done(void *arg, const ns_dht_result *r)
{
    dht_op *op = arg;
    ns_api_reply_json(
        op->req, 200,
        json_pack("{s:I, s:i}", "stored_on", (json_int_t)r->contact_count, "hops", (int)r->hops));
    dht_op_finish(op);
}

static bool id_arg(ns_api_request *req, const char *name, uint8_t id[NS_ID_BYTES])
{
    const char *hex = ns_api_arg(req, name);
    if (hex == NULL || ns_hex_decode(id, NS_ID_BYTES, hex) != NS_OK) {
        char msg[128];
        snprintf(msg, sizeof msg, "query argument '%s' must be 64 hex digits", name);
        ns_api_error(req, 400, msg);
        return false;
    }
    return true;
}

/* Starts a lookup whose answer the callback sends; on a refusal answers at once. */
static void start_dht_op(node *n, ns_api_request *req,
                         int (*start)(ns_dht *, const uint8_t *, ns_dht_lookup_fn, void *),
                         const uint8_t id[NS_ID_BYTES], ns_dht_lookup_fn done)
{
    dht_op *op = dht_op_new(n, req);
    if (op == NULL) {
        ns_api_error(req, 500, "out of memory");
        return;
    }
    int rc = start(ns_net_dht(n->net), id, done, op);
    if (rc != NS_OK) {
        ns_api_error(req, 503, rc == NS_ELIMIT ? "too many lookups in flight" : ns_strerror(rc));
        dht_op_finish(op);
    }
}

static void answer_dht_record(node *n, ns_api_request *req)
{
    uint8_t key[NS_ID_BYTES];
    if (id_arg(req, "key", key))
        start_dht_op(n, req, ns_dht_get, key, dht_get_done);
}

static void answer_dht_lookup(node *n, ns_api_request *req)
{
    uint8_t target[NS_ID_BYTES];
    if (id_arg(req, "target", target))
        start_dht_op(n, req, ns_dht_find_node, target, dht_lookup_done);
}

/* POST /api/dht/put: the body is a signed record in hex. It is verified here first, so a bad
 * record gets a clear 400 and never reaches the DHT. */
static void answer_dht_put(node *n, ns_api_request *req)
{
    size_t hex_len = req->body_len;
    while (hex_len > 0 && (req->body[hex_len - 1] == '\n' || req->body[hex_len - 1] == '\r'))
        hex_len--;
    if (hex_len == 0 || hex_len % 2 != 0 || hex_len / 2 > NS_DHT_VALUE_BYTES_MAX) {
        ns_api_error(req, 400, "the body must be a signed record in hex, at most 1024 bytes");
        return;
    }
    char *hex = strndup((const char *)req->body, hex_len);
    uint8_t *rec = malloc(hex_len / 2);
    int rc = hex != NULL && rec != NULL ? ns_hex_decode(rec, hex_len / 2, hex) : NS_ENOMEM;
    free(hex);
    ns_record parsed;
    if (rc == NS_OK)
        rc = ns_record_verify(rec, hex_len / 2, ns_env_now(&n->uvenv.env), &parsed);
    if (rc != NS_OK) {
        char msg[128];
        snprintf(msg, sizeof msg, "record refused: %s", ns_strerror(rc));
        ns_api_error(req, 400, msg);
        free(rec);
        return;
    }
    dht_op *op = dht_op_new(n, req);
    rc =
        op != NULL ? ns_dht_put(ns_net_dht(n->net), rec, hex_len / 2, dht_put_done, op) : NS_ENOMEM;
    free(rec);
    if (rc != NS_OK && op != NULL) {
        ns_api_error(req, 503, ns_strerror(rc));
        dht_op_finish(op);
    } else if (rc != NS_OK) {
        ns_api_error(req, 500, "out of memory");
    }
}

/* After the API answered every deferred request with 503, what is left of their DHT lookups. */
static void free_dht_ops(node *n)
{
    while (n->dht_ops != NULL) {
        dht_op *op = n->dht_ops;
        n->dht_ops = op->next;
        free(op);
    }
}

/* ---- training ---------------------------------------------------------------------------- */

static void answer_training_status(node *n, ns_api_request *req)
{
    if (n->trainer == NULL) {
        json_t *o = json_pack("{s:b, s:s}", "enabled", 0, "phase",
                              !n->cfg.train             ? "off (--train off)"
                              : n->cfg.quorum_size != 1 ? "waiting for peers to form a quorum"
                                                        : "not started");
        if (n->swarm != NULL)
            json_object_set_new(o, "quorum", ns_swarm_json(n->swarm));
        ns_api_reply_json(req, 200, o);
        return;
    }
    ns_train_status s;
    ns_trainer_status(n->trainer, &s);
    json_t *o = json_pack(
        "{s:b, s:b, s:b, s:s, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:I, "
        "s:{s:i, s:i, s:i, s:I}, s:{s:I, s:I}, s:i, s:s, s:s}",
        "enabled", 1, "ready", s.ready, "running", s.running, "phase", s.phase, "step",
        (json_int_t)s.step, "checkpoint_step", (json_int_t)s.checkpoint_step, "tokens_seen",
        (json_int_t)s.tokens_seen, "loss", s.loss, "val_loss", s.val_loss, "tokens_per_s",
        s.tokens_per_s, "lr", s.lr, "grad_norm", s.grad_norm, "eta_s", (json_int_t)s.eta_s, "model",
        "layers", (int)s.layers, "hidden", (int)s.hidden, "vocab", (int)s.vocab, "params",
        (json_int_t)s.params, "memory", "estimate_bytes", (json_int_t)s.memory_estimate_bytes,
        "peak_rss_bytes", (json_int_t)peak_rss_bytes(), "queued_steps", (int)s.queued, "role",
        ns_swarm_async(n->swarm) ? "asynchronous contributor (T5: too slow for a pipeline)"
                                 : "solo (genesis, N = 1)",
        "error", s.error);
    ns_train_pipe_status ps;
    ns_trainer_pipe_status(n->trainer, &ps);
    if (ps.on && ps.stages > 1) {
        const char *role = ps.stage == 0               ? "initiator (data, embedding)"
                           : ps.stage + 1 == ps.stages ? "finisher (head, loss)"
                                                       : "processor";
        json_object_set_new(o, "role", json_string(role));
        double total = ps.wait_s + ps.busy_s;
        json_t *refused = json_object();
        for (int r = 0; r < 5; r++)
            json_object_set_new(refused, ns_pipe_refusal_name((ns_pipe_refusal)r),
                                json_integer((json_int_t)ps.refused[r]));
        json_object_set_new(
            o, "pipeline",
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:o, s:I, s:I}",
                      "stage", (json_int_t)ps.stage, "stages", (json_int_t)ps.stages, "layer_first",
                      (json_int_t)ps.layer_first, "layer_last", (json_int_t)ps.layer_last,
                      "micro_batches", (json_int_t)ps.micro_batches, "rows", (json_int_t)ps.rows,
                      "inbox", (json_int_t)ps.inbox, "steps", (json_int_t)ps.steps, "inbox_fill",
                      (double)ps.inbox / (double)(ps.inbox_max > 0 ? ps.inbox_max : 1), "waiting_s",
                      ps.wait_s, "bubble", total > 0 ? ps.wait_s / total : 0.0, "bubble_1f1b",
                      ns_pipe_bubble_fraction(ps.stages, ps.micro_batches), "refused", refused,
                      "resend_asked", (json_int_t)ps.resend_asked, "resent",
                      (json_int_t)ps.resent));
        json_t *pj = json_object_get(o, "pipeline");
        json_object_set_new(pj, "run_ahead", json_integer((json_int_t)ps.run_ahead));
        json_object_set_new(pj, "ran_ahead", json_integer((json_int_t)ps.ran_ahead));
        json_object_set_new(pj, "suspected", json_integer((json_int_t)ps.suspected));
    }
    if (n->swarm != NULL)
        json_object_set_new(o, "quorum", ns_swarm_json(n->swarm));
    ns_train_sync_status ss;
    ns_trainer_sync_status(n->trainer, &ss);
    if (ss.on && n->diloco != NULL) {
        json_t *sync = ns_diloco_json(n->diloco);
        char w0[2 * NS_SHA256_BYTES + 1];
        ns_hex_encode(w0, sizeof w0, ss.w0_hash, NS_SHA256_BYTES);
        json_object_set_new(sync, "outer_steps", json_integer((json_int_t)ss.rounds));
        json_object_set_new(sync, "outer_round", json_integer((json_int_t)ss.last_round));
        json_object_set_new(sync, "waiting", json_boolean(ss.waiting));
        json_object_set_new(sync, "w0_sha256", json_string(w0));
        json_object_set_new(sync, "loss_check",
                            json_pack("{s:f, s:f, s:I}", "before", ss.loss_before, "after",
                                      ss.loss_after, "rises", (json_int_t)ss.loss_rises));
        json_object_set_new(o, "sync", sync);
    }
    ns_api_reply_json(req, 200, o);
}

/* POST /train_step {"steps": N}: N more steps, even while training is paused. */
static void answer_train_step(node *n, ns_api_request *req)
{
    json_int_t steps = 1;
    if (req->body_len > 0) {
        json_t *j = json_loadb((const char *)req->body, req->body_len, 0, NULL);
        json_t *v = j != NULL ? json_object_get(j, "steps") : NULL;
        if (j == NULL || (v != NULL && !json_is_integer(v))) {
            json_decref(j);
            ns_api_error(req, 400, "body must be JSON like {\"steps\": 1}");
            return;
        }
        if (v != NULL)
            steps = json_integer_value(v);
        json_decref(j);
    }
    if (steps < 1 || steps > NS_TRAIN_QUEUED_MAX) {
        ns_api_error(req, 400, "steps must be between 1 and 10000");
        return;
    }
    int rc = n->trainer != NULL ? ns_trainer_queue_steps(n->trainer, (uint32_t)steps) : NS_EINVAL;
    if (rc != NS_OK) {
        ns_api_error(req, rc == NS_ELIMIT ? 503 : 409,
                     rc == NS_ELIMIT ? "the trainer is not ready yet or has too many queued"
                                     : "training is off or stopped on an error "
                                       "(see /training_status)");
        return;
    }
    ns_api_reply_json(req, 202, json_pack("{s:I}", "queued", steps));
}

/* ---- proofs, wallet, ledger -------------------------------------------------------------- */

static void answer_ponw(node *n, ns_api_request *req)
{
    if (n->econ == NULL) {
        ns_api_error(req, 503, "proofs are not running");
        return;
    }
    ns_api_reply_json(req, 200, ns_econ_ponw_json(n->econ, 50));
}

typedef struct history_ctx {
    json_t *list;
    uint64_t now;
} history_ctx;

static const char *entry_kind_name(uint32_t kind)
{
    static const char *const names[] = {"?",     "claim",   "send",     "receive",
                                        "stake", "unstake", "challenge"};
    return kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

static bool history_add(void *arg, int64_t id, const uint8_t *buf, size_t len)
{
    (void)id;
    history_ctx *c = arg;
    ns_entry e;
    if (ns_entry_open(buf, len, UINT64_MAX / 4, &e) != NS_OK)
        return true;
    char amount[NS_NEURO_FORMAT_SIZE], hash[2 * NS_SHA256_BYTES + 1];
    ns_neuro_format(amount, sizeof amount, e.amount);
    ns_hex_encode(hash, sizeof hash, e.hash, sizeof e.hash);
    json_t *o = json_pack("{s:I, s:s, s:s, s:I, s:s}", "sequence", (json_int_t)e.sequence, "kind",
                          entry_kind_name(e.kind), "amount", amount, "timestamp_ms",
                          (json_int_t)e.timestamp_ms, "hash", hash);
    if (o != NULL && e.kind == NS_ENTRY_SEND) {
        char to[NS_NODE_ID_HEX_SIZE];
        ns_hex_encode(to, sizeof to, e.counterparty, NS_NODE_ID_BYTES);
        json_object_set_new(o, "to", json_string(to));
    }
    json_array_append_new(c->list, o);
    return true;
}

/* GET /api/wallet: this node's balance, stake and newest entries (?limit=N, default 20). */
static void answer_wallet(node *n, ns_api_request *req)
{
    ns_account a;
    uint8_t id[NS_NODE_ID_BYTES];
    memcpy(id, n->key.node_id, sizeof id);
    const char *other = ns_api_arg(req, "account");
    if (other != NULL && ns_hex_decode(id, sizeof id, other) != NS_OK) {
        ns_api_error(req, 400, "account must be a node id (64 hex digits)");
        return;
    }
    char id_hex[NS_NODE_ID_HEX_SIZE];
    ns_hex_encode(id_hex, sizeof id_hex, id, sizeof id);
    if (ns_ledger_account(n->ledger, id, &a) != NS_OK) {
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    const char *lim = ns_api_arg(req, "limit");
    long limit = lim != NULL ? strtol(lim, NULL, 10) : 20;
    if (limit < 1 || limit > 1000) {
        ns_api_error(req, 400, "limit must be 1..1000");
        return;
    }
    history_ctx c = {json_array(), 0};
    if (ns_ledger_account_entries(n->ledger, id, (uint32_t)limit, history_add, &c) != NS_OK) {
        json_decref(c.list);
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    char bal[NS_NEURO_FORMAT_SIZE], stake[NS_NEURO_FORMAT_SIZE], debt[NS_NEURO_FORMAT_SIZE];
    ns_neuro_format(bal, sizeof bal, a.balance);
    ns_neuro_format(stake, sizeof stake, a.stake);
    ns_neuro_format(debt, sizeof debt, a.debt);
    ns_api_reply_json(req, 200,
                      json_pack("{s:s, s:s, s:s, s:s, s:I, s:b, s:o}", "node_id", id_hex, "balance",
                                bal, "stake", stake, "debt", debt, "sequence",
                                (json_int_t)a.sequence, "frozen", a.frozen, "history", c.list));
}

/* An amount field: a decimal string ("1.5") or a whole number of NEURO. */
static int body_amount(json_t *body, ns_neuro *out)
{
    json_t *v = json_object_get(body, "amount");
    if (json_is_string(v))
        return ns_neuro_parse(json_string_value(v), out);
    if (json_is_integer(v) && json_integer_value(v) > 0 &&
        json_integer_value(v) <= INT64_MAX / NS_NEURO_NANO_PER_UNIT) {
        out->nano = json_integer_value(v) * NS_NEURO_NANO_PER_UNIT;
        return NS_OK;
    }
    return NS_EINVAL;
}

/* POST /api/wallet/send {"to": NODE_ID, "amount": "1.5"} */
static void answer_send(node *n, ns_api_request *req)
{
    json_t *j = json_loadb((const char *)req->body, req->body_len, 0, NULL);
    const char *to_hex = json_string_value(json_object_get(j, "to"));
    uint8_t to[NS_NODE_ID_BYTES];
    ns_neuro amount;
    if (j == NULL || to_hex == NULL || ns_hex_decode(to, sizeof to, to_hex) != NS_OK ||
        body_amount(j, &amount) != NS_OK || amount.nano <= 0) {
        json_decref(j);
        ns_api_error(req, 400,
                     "body must be JSON like {\"to\": \"<64 hex digits>\", \"amount\": \"1.5\"}");
        return;
    }
    json_decref(j);
    char why[NS_LEDGER_WHY_SIZE] = "";
    uint8_t hash[NS_SHA256_BYTES];
    int rc = n->econ != NULL ? ns_econ_send(n->econ, to, amount, why, hash) : NS_EINVAL;
    if (rc != NS_OK) {
        ns_api_error(req, rc == NS_EINVAL ? 409 : 500, why[0] != '\0' ? why : ns_strerror(rc));
        return;
    }
    char hex[2 * NS_SHA256_BYTES + 1], fee[NS_NEURO_FORMAT_SIZE];
    ns_hex_encode(hex, sizeof hex, hash, sizeof hash);
    ns_neuro_format(fee, sizeof fee, ns_ledger_send_fee(amount));
    ns_api_reply_json(req, 200, json_pack("{s:s, s:s}", "entry", hex, "burned", fee));
}

static void stake_or_unstake(node *n, ns_api_request *req, bool unstake)
{
    json_t *j = json_loadb((const char *)req->body, req->body_len, 0, NULL);
    ns_neuro amount;
    if (j == NULL || body_amount(j, &amount) != NS_OK || amount.nano <= 0) {
        json_decref(j);
        ns_api_error(req, 400, "body must be JSON like {\"amount\": \"10\"}");
        return;
    }
    json_decref(j);
    char why[NS_LEDGER_WHY_SIZE] = "";
    int rc = n->econ != NULL ? ns_econ_stake(n->econ, amount, unstake, why) : NS_EINVAL;
    if (rc != NS_OK) {
        ns_api_error(req, rc == NS_EINVAL ? 409 : 500, why[0] != '\0' ? why : ns_strerror(rc));
        return;
    }
    answer_wallet(n, req);
}

static void answer_stake(node *n, ns_api_request *req)
{
    stake_or_unstake(n, req, false);
}

static void answer_unstake(node *n, ns_api_request *req)
{
    stake_or_unstake(n, req, true);
}

static bool judgement_add(void *arg, const ns_ledger_judgement *j)
{
    char id[2 * NS_SHA256_BYTES + 1], prover[NS_NODE_ID_HEX_SIZE], by[NS_NODE_ID_HEX_SIZE],
        slashed[NS_NEURO_FORMAT_SIZE];
    ns_hex_encode(id, sizeof id, j->proof_id, sizeof j->proof_id);
    ns_hex_encode(prover, sizeof prover, j->prover, sizeof j->prover);
    ns_hex_encode(by, sizeof by, j->challenger, sizeof j->challenger);
    ns_neuro_format(slashed, sizeof slashed, j->slashed);
    json_array_append_new(arg, json_pack("{s:s, s:s, s:s, s:s, s:s}", "proof", id, "prover", prover,
                                         "challenger", by, "verdict", j->fraud ? "fraud" : "honest",
                                         "slashed", slashed));
    return true;
}

/* GET /api/ledger: height, totals and the state hash every honest node shares. */
static void answer_ledger(node *n, ns_api_request *req)
{
    uint64_t height;
    ns_neuro minted, burned;
    uint8_t hash[NS_SHA256_BYTES];
    if (ns_ledger_height(n->ledger, &height) != NS_OK ||
        ns_ledger_totals(n->ledger, &minted, &burned) != NS_OK ||
        ns_ledger_state_hash(n->ledger, hash) != NS_OK) {
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    char m[NS_NEURO_FORMAT_SIZE], b[NS_NEURO_FORMAT_SIZE], h[2 * NS_SHA256_BYTES + 1];
    ns_neuro_format(m, sizeof m, minted);
    ns_neuro_format(b, sizeof b, burned);
    ns_hex_encode(h, sizeof h, hash, sizeof hash);
    json_t *judged = json_array();
    if (ns_ledger_judgements(n->ledger, judgement_add, judged) != NS_OK) {
        json_decref(judged);
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    ns_api_reply_json(req, 200,
                      json_pack("{s:I, s:s, s:s, s:s, s:o}", "height", (json_int_t)height, "minted",
                                m, "burned", b, "state_hash", h, "judgements", judged));
}

static bool round_add(void *arg, const ns_training_round *r)
{
    char minted[NS_NEURO_FORMAT_SIZE], hash[2 * NS_SHA256_BYTES + 1];
    ns_neuro_format(minted, sizeof minted, r->minted);
    ns_hex_encode(hash, sizeof hash, r->checkpoint_hash, sizeof r->checkpoint_hash);
    json_array_append_new(
        arg, json_pack("{s:I, s:I, s:i, s:I, s:f, s:f, s:s, s:s}", "round", (json_int_t)r->round_id,
                       "time_ms", (json_int_t)r->time_ms, "contributors", (int)r->contributors,
                       "batch_size", (json_int_t)r->batch_size, "loss_before", r->loss_before,
                       "loss_after", r->loss_after, "minted", minted, "checkpoint_hash", hash));
    return true;
}

/* GET /api/intelligence: the Intelligence Ledger (S10), newest rounds first (?limit=N). */
static void answer_intelligence(node *n, ns_api_request *req)
{
    const char *lim = ns_api_arg(req, "limit");
    long limit = lim != NULL ? strtol(lim, NULL, 10) : 50;
    if (limit < 1 || limit > 1000) {
        ns_api_error(req, 400, "limit must be 1..1000");
        return;
    }
    json_t *rounds = json_array();
    if (ns_ledger_training_rounds(n->ledger, (uint32_t)limit, round_add, rounds) != NS_OK) {
        json_decref(rounds);
        ns_api_error(req, 500, "ledger query failed");
        return;
    }
    ns_api_reply_json(req, 200, json_pack("{s:o}", "rounds", rounds));
}

/* The report of ns_ledger_check as JSON (neuroctl ledger check prints it). */
json_t *ns_ledger_report_json(const ns_ledger_report *r)
{
    char m[NS_NEURO_FORMAT_SIZE], b[NS_NEURO_FORMAT_SIZE], h[NS_NEURO_FORMAT_SIZE];
    ns_neuro_format(m, sizeof m, r->minted);
    ns_neuro_format(b, sizeof b, r->burned);
    ns_neuro_format(h, sizeof h, r->held);
    return json_pack("{s:b, s:I, s:I, s:s, s:s, s:s, s:s}", "ok", r->ok, "entries",
                     (json_int_t)r->entries, "accounts", (json_int_t)r->accounts, "minted", m,
                     "burned", b, "held", h, "problem", r->problem);
}

/* GET /api/ledger/check: replays every entry from genesis (ns_ledger_check). */
static void answer_ledger_check(node *n, ns_api_request *req)
{
    ns_ledger_report r;
    int rc = ns_ledger_check(n->ledger, &r);
    if (rc != NS_OK) {
        ns_api_error(req, 500, ns_strerror(rc));
        return;
    }
    ns_api_reply_json(req, 200, ns_ledger_report_json(&r));
}

/* POST /generate_text: text from the model (generate.c). */
static void answer_generate(node *n, ns_api_request *req)
{
    ns_gen_request(n->gen, n->api, n->trainer, req);
}

/* POST /api/train {"on": true|false}: the training switch. */
static void answer_train_switch(node *n, ns_api_request *req)
{
    json_t *j = json_loadb((const char *)req->body, req->body_len, 0, NULL);
    json_t *on = j != NULL ? json_object_get(j, "on") : NULL;
    if (on == NULL || !json_is_boolean(on)) {
        json_decref(j);
        ns_api_error(req, 400, "body must be JSON like {\"on\": true}");
        return;
    }
    bool want = json_is_true(on);
    json_decref(j);
    if (n->trainer == NULL) {
        ns_api_error(req, 409, "training is off (--train off) or failed to start");
        return;
    }
    ns_trainer_set_running(n->trainer, want);
    ns_api_reply_json(req, 200, json_pack("{s:b}", "running", want));
}

static void node_reload(node *n);

typedef struct route {
    const char *method;
    const char *path;
    void (*answer)(node *n, ns_api_request *req);
} route;

static void answer_healthz(node *n, ns_api_request *req)
{
    ns_api_reply_json(req, n->stopping ? 503 : 200, json_pack("{s:s}", "status", "ok"));
}

static void answer_reload(node *n, ns_api_request *req)
{
    node_reload(n);
    ns_api_reply_json(req, 200, json_pack("{s:b}", "reloaded", 1));
}

static const route routes[] = {
    {"GET", "/api/stats", answer_stats},
    {"GET", "/api/model_info", answer_model_info},
    {"GET", "/metrics", answer_metrics},
    {"GET", "/healthz", answer_healthz},
    {"POST", "/api/reload", answer_reload},
    {"GET", "/api/peers", answer_peers},
    {"GET", "/api/doctor", answer_doctor},
    {"GET", "/api/dht/record", answer_dht_record},
    {"GET", "/api/dht/lookup", answer_dht_lookup},
    {"POST", "/api/dht/put", answer_dht_put},
    {"GET", "/training_status", answer_training_status},
    {"POST", "/train_step", answer_train_step},
    {"POST", "/api/train", answer_train_switch},
    {"POST", "/generate_text", answer_generate},
    {"GET", "/api/ponw", answer_ponw},
    {"GET", "/api/wallet", answer_wallet},
    {"POST", "/api/wallet/send", answer_send},
    {"POST", "/api/wallet/stake", answer_stake},
    {"POST", "/api/wallet/unstake", answer_unstake},
    {"GET", "/api/ledger", answer_ledger},
    {"GET", "/api/ledger/check", answer_ledger_check},
    {"GET", "/api/intelligence", answer_intelligence},
};

static void api_handler(void *arg, ns_api_request *req)
{
    node *n = arg;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(routes[i].path, req->path) != 0)
            continue;
        path_known = true;
        if (strcmp(routes[i].method, req->method) == 0) {
            routes[i].answer(n, req);
            return;
        }
    }
    if (path_known)
        ns_api_error(req, 405, "method not allowed on this path");
    else
        ns_api_error(req, 404, "no such endpoint");
}

/* ---- running ------------------------------------------------------------------------------ */

static void chore_run(void *arg, ns_chore chore, uint64_t now_ms)
{
    node *n = arg;
    switch (chore) {
    case NS_CHORE_WATCHDOG:
        sd_notify(0, "WATCHDOG=1");
        return;
    case NS_CHORE_STATUS: {
        node_stats s;
        if (collect_stats(n, &s) == NS_OK)
            sd_notifyf(0, "STATUS=node %.16s… ledger height %llu, up %llus", n->node_id_hex,
                       (unsigned long long)s.height, (unsigned long long)s.uptime_s);
        NS_LOG_D("node", "status uptime_ms=%llu", (unsigned long long)(now_ms - n->started_ms));
        return;
    }
    case NS_CHORE_LEDGER_SYNC:
        if (ns_ledger_checkpoint(n->ledger) != NS_OK)
            NS_LOG_W("ledger", "wal checkpoint failed");
        return;
    case NS_CHORE_COUNT_:
        break;
    }
    NS_ASSERT(false);
}

static void node_reload(node *n)
{
    ns_config fresh;
    bool help, version;
    char err[NS_ERR_TEXT_SIZE];
    extern char **environ;
    if (ns_config_load(&fresh, n->argc, n->argv, environ, &help, &version, err) != NS_OK) {
        NS_LOG_E("config", "reload refused, keeping the running configuration: %s", err);
        return;
    }
    ns_log_set_level(fresh.log_level);
    n->cfg.log_level = fresh.log_level;
    if (memcmp(&fresh.api_listen, &n->cfg.api_listen, sizeof fresh.api_listen) != 0 ||
        memcmp(&fresh.listen, &n->cfg.listen, sizeof fresh.listen) != 0 ||
        strcmp(fresh.data_dir, n->cfg.data_dir) != 0 || fresh.memory_mb != n->cfg.memory_mb)
        NS_LOG_W("config", "reloaded; changes to addresses, data_dir or memory_mb need a restart");
    else
        NS_LOG_I("config", "reloaded log_level=%d", (int)fresh.log_level);
}

static void signal_close_noop(uv_handle_t *h)
{
    (void)h;
}

static void node_stop(node *n, const char *why)
{
    if (n->stopping)
        return;
    n->stopping = true;
    NS_LOG_I("node", "stopping reason=%s", why);
    sd_notify(0, "STOPPING=1");
    ns_chores_stop(&n->chores);
    ns_trainer_stop(n->trainer); /* finishes the step in progress, writes a checkpoint */
    n->trainer = NULL;
    ns_swarm_stop(n->swarm); /* after the trainer: nothing more is queued for the links */
    ns_diloco_stop(n->diloco);
    n->swarm = NULL;
    ns_gen_stop(n->gen); /* answers what the trainer finished, before the API goes */
    n->gen = NULL;
    ns_econ_stop(n->econ); /* before the network: it sends on the peer links */
    n->econ = NULL;
    ns_net_stop(n->net, true); /* first: no DHT callback comes after this */
    ns_api_stop(n->api);       /* answers requests still waiting on the DHT with 503 */
    n->api = NULL;
    free_dht_ops(n);
    uv_close((uv_handle_t *)&n->sig_int, signal_close_noop);
    uv_close((uv_handle_t *)&n->sig_term, signal_close_noop);
    uv_close((uv_handle_t *)&n->sig_hup, signal_close_noop);
    ns_uv_env_close(&n->uvenv);
}

static void signal_callback(uv_signal_t *handle, int signum)
{
    node *n = handle->data;
    if (signum == SIGHUP)
        node_reload(n);
    else
        node_stop(n, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void watch_signals(node *n)
{
    uv_signal_t *handles[] = {&n->sig_int, &n->sig_term, &n->sig_hup};
    int nums[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        NS_ASSERT(uv_signal_init(&n->loop, handles[i]) == 0);
        handles[i]->data = n;
        NS_ASSERT(uv_signal_start(handles[i], signal_callback, nums[i]) == 0);
    }
}

static void start_chores(node *n)
{
    ns_chores_init(&n->chores, &n->uvenv.env, chore_run, n);
    uint64_t watchdog_us = 0;
    if (sd_watchdog_enabled(0, &watchdog_us) > 0 && watchdog_us >= 2000)
        ns_chores_set_interval(&n->chores, NS_CHORE_WATCHDOG, watchdog_us / 2000);
    ns_chores_set_interval(&n->chores, NS_CHORE_STATUS, NS_CHORE_STATUS_MS);
    ns_chores_set_interval(&n->chores, NS_CHORE_LEDGER_SYNC, NS_CHORE_LEDGER_SYNC_MS);
    ns_chores_start(&n->chores);
}

static int node_start(node *n)
{
    int rc = check_data_dir(n);
    if (rc == NS_OK)
        rc = take_lock(n);
    if (rc == NS_OK)
        rc = load_key(n);
    /* Everything that can be refused is checked before the first file is written. */
    n->memory_mb = n->cfg.memory_mb != 0 ? n->cfg.memory_mb : physical_memory_mb() / 2;
    if (rc == NS_OK)
        rc = check_training(n);
    if (rc == NS_OK)
        rc = bind_api(n);
    if (rc == NS_OK)
        rc = start_net(n);
    if (rc == NS_OK)
        rc = open_ledger(n);
    if (rc == NS_OK)
        rc = ns_gen_start(&n->gen, &n->loop);
    if (rc == NS_OK)
        rc = start_api(n);
    if (rc != NS_OK)
        return rc;
    n->started_ms = ns_env_now(&n->uvenv.env);
    watch_signals(n);
    start_chores(n);
    if (n->cfg.train && n->cfg.sync_every != 0 && n->cfg.sync_every != NS_SYNC_EVERY_AUTO &&
        n->cfg.sync_every < 50)
        NS_LOG_W("sync",
                 "--sync-every %u: with so few inner steps the outer Nesterov step (S7: momentum "
                 "0.9, lr 0.7) moves about 7 times as far as the inner steps did, and long runs "
                 "can diverge; S7 uses 100 to 1000",
                 n->cfg.sync_every);
    if (n->cfg.train && n->cfg.sync_every != 0) {
        ns_diloco_config dc = {.uvenv = &n->uvenv,
                               .net = n->net,
                               .key = &n->key,
                               .trainer = &n->trainer,
                               .aggregator = (ns_agg_kind)n->cfg.sync_aggregator,
                               .cheat = getenv("NEUROSHARD_TEST_CHEAT"),
                               .econ = &n->econ,
                               .expect_peers = n->cfg.bootstrap_count > 0 || n->cfg.lan_discovery};
        ns_train_config tc;
        train_config(n, &tc);
        dc.sync_every = tc.sync_every;
        dc.async = n->cfg.sync_async;
        dc.timeout_ms = (uint64_t)n->cfg.sync_timeout_s * 1000;
        snprintf(dc.data_dir, sizeof dc.data_dir, "%s", n->cfg.data_dir);
        if (ns_diloco_start(&n->diloco, &dc) != NS_OK)
            NS_LOG_E("sync", "cohort sync not started: out of memory");
    }
    start_training(n);
    ns_econ_config ec = {.ledger = n->ledger,
                         .key = &n->key,
                         .net = n->net,
                         .uvenv = &n->uvenv,
                         .trainer = &n->trainer,
                         .started_ms = ns_env_now(&n->uvenv.env),
                         .proof_interval_ms = n->cfg.ponw_interval_s * 1000,
                         .verifier = n->cfg.verifier,
                         .verify_ppm = n->cfg.verify_ppm,
                         .cheat = getenv("NEUROSHARD_TEST_CHEAT"),
                         .bond = {n->cfg.ponw_bond_nano},
                         .window_ms = n->cfg.ponw_window_s * 1000};
    train_config(n, &ec.verify.train);
    snprintf(ec.verify.data_dir, sizeof ec.verify.data_dir, "%s", n->cfg.data_dir);
    if (ns_econ_start(&n->econ, &ec) != NS_OK)
        NS_LOG_E("ponw", "proofs and ledger gossip not started: out of memory");
    ns_swarm_config sc = {.uvenv = &n->uvenv,
                          .net = n->net,
                          .key = &n->key,
                          .quorum_size = n->cfg.train ? n->cfg.quorum_size : 1,
                          .model_layers = n->cfg.model_layers,
                          .model_hidden = n->cfg.model_hidden,
                          .memory_mb = n->memory_mb,
                          .session_ms = (uint64_t)n->cfg.quorum_session_s * 1000,
                          .trainer = &n->trainer};
    const char *drop = getenv("NEUROSHARD_TEST_DROP_PIPE");
    if (drop != NULL && atoi(drop) > 0) {
        sc.test_drop_every = (uint32_t)atoi(drop);
        NS_LOG_W("swarm", "NEUROSHARD_TEST_DROP_PIPE=%u: every %u-th pipeline frame is lost",
                 sc.test_drop_every, sc.test_drop_every);
    }
    const char *layer_ms = getenv("NEUROSHARD_TEST_LAYER_MS");
    if (layer_ms != NULL && atoi(layer_ms) > 0)
        sc.test_layer_ms = (uint32_t)atoi(layer_ms);
    const char *pong_ms = getenv("NEUROSHARD_TEST_PONG_DELAY_MS");
    if (pong_ms != NULL && atoi(pong_ms) > 0)
        sc.test_pong_delay_ms = (uint32_t)atoi(pong_ms);
    sc.diloco = n->diloco;
    train_config(n, &sc.train);
    int src = ns_swarm_start(&n->swarm, &sc);
    if (src != NS_OK)
        NS_LOG_E("swarm", "the swarm part did not start: %s", ns_strerror(src));
    char api[NS_HOST_SIZE + 16];
    ns_addr_format(api, sizeof api, &n->api_bound);
    char peers[NS_ADDR_TEXT_SIZE];
    ns_addr_to_text(peers, sizeof peers, ns_net_bound(n->net));
    NS_LOG_I("node",
             "started node_id=%s api=http://%s peers=%s (udp+tcp) network=%s data_dir=%s "
             "version=%s",
             n->node_id_hex, api, peers, n->cfg.network, n->cfg.data_dir, NS_VERSION);
    sd_notifyf(0, "READY=1\nSTATUS=node %.16s… serving the API on %s\nMAINPID=%ld", n->node_id_hex,
               api, (long)getpid());
    return NS_OK;
}

static void node_release(node *n)
{
    if (!n->stopping)
        ns_net_stop(n->net, false); /* start failed half way: leave the saved table as it was */
    if (n->api_fd >= 0)
        close(n->api_fd);
    if (n->api != NULL) {
        ns_api_stop(n->api);
        n->api = NULL;
    }
    free_dht_ops(n);
    ns_gen_stop(n->gen); /* start failed after it: nothing was queued */
    n->gen = NULL;
    ns_uv_env_close(&n->uvenv);
    uv_run(&n->loop, UV_RUN_DEFAULT); /* runs the close callbacks of everything stopped */
    ns_net_free(n->net);
    if (n->ledger != NULL) {
        if (ns_ledger_checkpoint(n->ledger) != NS_OK)
            NS_LOG_W("ledger", "final wal checkpoint failed");
        ns_ledger_close(n->ledger);
    }
    if (n->api_addr_path[0] != '\0')
        unlink(n->api_addr_path);
    ns_key_wipe(&n->key);
    if (n->lock_fd >= 0)
        close(n->lock_fd);
    NS_ASSERT(uv_loop_close(&n->loop) == 0);
}

int ns_daemon_main(int argc, char *argv[], char *envp[])
{
    static node n; /* one daemon a process; static keeps the large struct off the stack */
    memset(&n, 0, sizeof n);
    n.lock_fd = -1;
    n.api_fd = -1;
    n.argc = argc;
    n.argv = argv;
    bool help, version;
    char err[NS_ERR_TEXT_SIZE];
    if (ns_config_load(&n.cfg, argc, argv, envp, &help, &version, err) != NS_OK) {
        refuse("%s", err);
        return EXIT_USAGE;
    }
    if (help) {
        fputs(ns_config_usage(), stdout);
        return 0;
    }
    if (version) {
        printf("neuroshardd %s\n", NS_VERSION);
        return 0;
    }
    ns_log_set_level(n.cfg.log_level);
    if (sodium_init() < 0) {
        refuse("libsodium failed to initialise");
        return EXIT_REFUSED;
    }
    signal(SIGPIPE, SIG_IGN);
    NS_ASSERT(uv_loop_init(&n.loop) == 0);
    ns_uv_env_init(&n.uvenv, &n.loop);
    if (node_start(&n) != NS_OK) {
        node_release(&n);
        return EXIT_REFUSED;
    }
    uv_run(&n.loop, UV_RUN_DEFAULT);
    node_release(&n);
    NS_LOG_I("node", "stopped");
    return 0;
}
