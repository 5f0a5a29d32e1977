/*
 * node.h: the composition root — configuration, the daemon's lifecycle and its periodic chores.
 *
 * The daemon (src/node/) is the only part that owns sockets, signals, threads and the libuv loop.
 * Its configuration comes from, in rising precedence: built-in defaults, an INI file, NEUROSHARD_*
 * environment variables, command-line flags. The chores it does on a timer are a sans-IO core
 * (ns_chores) driven through ns_env, so the same schedule runs under the fake env of the tests.
 */
#ifndef NEUROSHARD_NODE_H
#define NEUROSHARD_NODE_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "neuroshard/base.h"

#define NS_CONFIG_FILE        "neuroshard.ini"
#define NS_API_ADDR_FILE      "api.addr"
#define NS_API_TOKEN_FILE     "api.token"
#define NS_API_TOKEN_HEX_SIZE 65 /* 32 random bytes in hex, NUL */
#define NS_LOCK_FILE          "lock"
#define NS_API_PORT_DEFAULT   8421
#define NS_PEER_PORT_DEFAULT  8420
#define NS_MEMORY_MB_DEFAULT  2048 /* a model that trains visibly on a 2-core machine */
#define NS_HOST_SIZE          64
#define NS_ERR_TEXT_SIZE      (PATH_MAX + 512) /* a path and what is wrong with it */

#define NS_BOOTSTRAP_MAX       16
#define NS_BOOTSTRAP_TEXT_SIZE 262 /* a DNS name, a colon and a port */
#define NS_NETWORK_NAME_SIZE   64

typedef struct ns_addr_text {
    char host[NS_HOST_SIZE]; /* numeric IPv4 or IPv6 (without brackets) */
    uint16_t port;           /* 0 = any free port */
} ns_addr_text;

typedef struct ns_config {
    char data_dir[PATH_MAX];
    char config_path[PATH_MAX]; /* the INI file read, "" when none */
    ns_addr_text api_listen;    /* local HTTP API; default 127.0.0.1:8421 */
    ns_addr_text listen;        /* peer port (UDP + TCP); default 0.0.0.0:8420 */
    ns_log_level log_level;
    uint64_t memory_mb; /* memory this node offers the swarm; sizes the model (S3) */
    char network[NS_NETWORK_NAME_SIZE];                       /* which swarm to join */
    char bootstrap[NS_BOOTSTRAP_MAX][NS_BOOTSTRAP_TEXT_SIZE]; /* "host:port" seeds */
    size_t bootstrap_count;
    bool lan_discovery;     /* find peers on the local network by UDP multicast */
    bool train;             /* train solo while the node has no quorum (S5, N = 1) */
    char dataset[PATH_MAX]; /* a folder of UTF-8 text instead of Genesis; "" = Genesis */
    uint32_t model_layers;  /* 0 = the architecture function decides (S3) */
    uint32_t model_hidden;
    uint64_t ponw_interval_s;  /* between this node's proofs (S9: 60) */
    uint64_t ponw_window_s;    /* challenge window (S9: 600); the same on every node of a swarm */
    bool verifier;             /* --role verify: recompute a sample of peers' training proofs */
    int64_t verify_ppm;        /* proofs a verifier checks, per million; -1: S9 by swarm size */
    bool exec_fast;            /* train in the fast mode (unverifiable, so unpaid for training) */
    int64_t ponw_bond_nano;    /* a challenge's bond (S9: 10 NEURO); the same on every node */
    uint32_t threads;          /* compute threads; 0: one a core */
    uint32_t quorum_size;      /* 1: train alone; N: as one of a pipeline of N (S5, S6);
                                  NS_QUORUM_SIZE_AUTO: the layer pool and planner decide */
    uint32_t micro_batches;    /* a step's micro-batches; 0: automatic */
    uint32_t run_ahead;        /* forwards a stage may run beyond 1F1B's while a gradient is late
                                  (pipeline.h); NS_RUN_AHEAD_AUTO: as many as memory holds */
    uint32_t checkpoint_every; /* steps between checkpoints; 0: NS_TRAIN_CKPT_EVERY */
    uint32_t sync_every;       /* DiLoCo's H (S7): 0 off, NS_SYNC_EVERY_AUTO by swarm size */
    uint32_t sync_aggregator;  /* ns_agg_kind of the cohort's robust aggregation (S8) */
    bool sync_async;           /* an asynchronous contributor rather than a member (S7) */
    uint32_t sync_timeout_s;   /* a cohort exchange phase waits at most this long */
    uint32_t quorum_session_s; /* a quorum's session period (S5: 1 h; renewed up to 4 of them) */
} ns_config;

#define NS_SYNC_EVERY_AUTO  UINT32_MAX
#define NS_RUN_AHEAD_AUTO   UINT32_MAX
#define NS_QUORUM_SIZE_AUTO 0 /* --quorum-size auto: pool mode (S3's pool, S5's planner) */

/* Parses "HOST:PORT" ("127.0.0.1:8421", "[::1]:8421", "localhost:0"). */
NS_MUST_USE int ns_addr_parse(const char *text, ns_addr_text *out);
/* "127.0.0.1:8421" or "[::1]:8421". */
void ns_addr_format(char *out, size_t out_size, const ns_addr_text *addr);

/* Builds the configuration from defaults, the INI file, the environment (envp, NULL-terminated
 * "KEY=VALUE" strings) and argv (flags only, argv[0] skipped). On error returns NS_EINVAL and
 * writes one line naming the culprit (the file and line, the flag, or the variable) into err.
 * *help is set when --help was given (and *version for --version); the caller prints. */
NS_MUST_USE int ns_config_load(ns_config *cfg, int argc, char *const argv[], char *const envp[],
                               bool *help, bool *version, char err[NS_ERR_TEXT_SIZE]);
/* The daemon's --help text. */
const char *ns_config_usage(void);

/* ---- chores: the daemon's timer-driven work, as a sans-IO core ---------------------------- */

typedef enum {
    NS_CHORE_WATCHDOG = 0,    /* tell systemd we are alive (only when a watchdog is set) */
    NS_CHORE_STATUS = 1,      /* refresh the one-line status (sd_notify STATUS=, the log) */
    NS_CHORE_LEDGER_SYNC = 2, /* fold the ledger's WAL back into the database */
    NS_CHORE_COUNT_ = 3
} ns_chore;

typedef void (*ns_chore_fn)(void *arg, ns_chore chore, uint64_t now_ms);

typedef struct ns_chores ns_chores;

typedef struct ns_chore_slot {
    ns_chores *owner;
    ns_chore chore;
} ns_chore_slot;

struct ns_chores {
    const ns_env *env;
    ns_chore_fn fn;
    void *arg;
    uint64_t interval_ms[NS_CHORE_COUNT_]; /* 0 = off */
    uint64_t timer_id[NS_CHORE_COUNT_];
    uint64_t due_ms[NS_CHORE_COUNT_]; /* when the armed timer is due */
    uint64_t runs[NS_CHORE_COUNT_];
    ns_chore_slot slot[NS_CHORE_COUNT_];
    bool started;
};

#define NS_CHORE_STATUS_MS      10000
#define NS_CHORE_LEDGER_SYNC_MS 60000

/* Every chore with a nonzero interval runs first one interval after start, then every interval. */
void ns_chores_init(ns_chores *chores, const ns_env *env, ns_chore_fn fn, void *arg);
void ns_chores_set_interval(ns_chores *chores, ns_chore chore, uint64_t interval_ms);
void ns_chores_start(ns_chores *chores);
void ns_chores_stop(ns_chores *chores);

/* ---- the daemon --------------------------------------------------------------------------- */

/* Runs the daemon until SIGINT/SIGTERM; returns the process exit status. Writes one-line errors
 * to stderr for everything that stops it from starting. */
int ns_daemon_main(int argc, char *argv[], char *envp[]);

#endif
