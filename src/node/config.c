/*
 * config.c: the daemon's configuration from defaults, an INI file, the environment and flags.
 *
 * One setter (config_set) knows every key; the INI file ([node] section), the NEUROSHARD_*
 * variables and the --flags all go through it, so the three sources cannot disagree on what a key
 * means or how it is checked. Precedence rises in that order. Every error names its source: the
 * file and line, the variable, or the flag. The INI file is read with libinih.
 */
#include <errno.h>
#include <ini.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/aggregate.h"
#include "neuroshard/exec.h"
#include "neuroshard/ledger.h"
#include "neuroshard/node.h"

#define CONFIG_FLAGS_MAX 64
#define WHY_SIZE         256 /* what is wrong with one value, without its source */

typedef struct setting {
    const char *key;  /* INI key */
    const char *flag; /* command-line flag */
    const char *env;  /* environment variable */
} setting;

static const setting settings[] = {
    {"data_dir", "--data-dir", "NEUROSHARD_DATA_DIR"},
    {"config", "--config", "NEUROSHARD_CONFIG"},
    {"api_listen", "--api-listen", "NEUROSHARD_API_LISTEN"},
    {"listen", "--listen", "NEUROSHARD_LISTEN"},
    {"log_level", "--log-level", "NEUROSHARD_LOG_LEVEL"},
    {"memory_mb", "--memory-mb", "NEUROSHARD_MEMORY_MB"},
    {"network", "--network", "NEUROSHARD_NETWORK"},
    {"bootstrap", "--bootstrap", "NEUROSHARD_BOOTSTRAP"},
    {"lan_discovery", "--lan-discovery", "NEUROSHARD_LAN_DISCOVERY"},
    {"train", "--train", "NEUROSHARD_TRAIN"},
    {"dataset", "--dataset", "NEUROSHARD_DATASET"},
    {"model", "--model", "NEUROSHARD_MODEL"},
    {"ponw_interval_s", "--ponw-interval-s", "NEUROSHARD_PONW_INTERVAL_S"},
    {"ponw_window_s", "--ponw-window-s", "NEUROSHARD_PONW_WINDOW_S"},
    {"role", "--role", "NEUROSHARD_ROLE"},
    {"verify_ppm", "--verify-ppm", "NEUROSHARD_VERIFY_PPM"},
    {"exec_mode", "--exec-mode", "NEUROSHARD_EXEC_MODE"},
    {"ponw_bond", "--ponw-bond", "NEUROSHARD_PONW_BOND"},
    {"threads", "--threads", "NEUROSHARD_THREADS"},
    {"quorum_size", "--quorum-size", "NEUROSHARD_QUORUM_SIZE"},
    {"micro_batches", "--micro-batches", "NEUROSHARD_MICRO_BATCHES"},
    {"run_ahead", "--run-ahead", "NEUROSHARD_RUN_AHEAD"},
    {"checkpoint_every", "--checkpoint-every", "NEUROSHARD_CHECKPOINT_EVERY"},
    {"sync_every", "--sync-every", "NEUROSHARD_SYNC_EVERY"},
    {"aggregator", "--aggregator", "NEUROSHARD_AGGREGATOR"},
    {"sync_role", "--sync-role", "NEUROSHARD_SYNC_ROLE"},
    {"sync_timeout_s", "--sync-timeout-s", "NEUROSHARD_SYNC_TIMEOUT_S"},
    {"quorum_session_s", "--quorum-session-s", "NEUROSHARD_QUORUM_SESSION_S"},
};
#define SETTINGS_COUNT (sizeof settings / sizeof settings[0])

static const char usage[] =
    "usage: neuroshardd [options]\n"
    "\n"
    "Runs a neuroshard node: it keeps the wallet's identity, the NEURO ledger and the local API.\n"
    "\n"
    "options (each also NEUROSHARD_<NAME> in the environment, or <name> in the INI file's "
    "[node]):\n"
    "  --data-dir DIR       where the key, ledger and API token live\n"
    "                       (default $XDG_DATA_HOME/neuroshard or ~/.local/share/neuroshard)\n"
    "  --config FILE        INI file to read (default DATA_DIR/neuroshard.ini when present)\n"
    "  --api-listen H:P     local HTTP API address (default 127.0.0.1:8421; port 0 = any free)\n"
    "  --listen H:P         peer port, UDP and TCP (default 0.0.0.0:8420)\n"
    "  --log-level L        error, warn, info or debug (default info)\n"
    "  --memory-mb N        memory offered to the swarm; sizes the model (default 2048)\n"
    "  --train B            on (default) or off: train solo while there is no quorum\n"
    "  --dataset DIR        train on the UTF-8 .txt files in DIR instead of Genesis\n"
    "  --model LxH          override the architecture: L layers of hidden size H\n"
    "                       (H a multiple of 64), e.g. 2x128; default auto\n"
    "  --ponw-interval-s N  seconds between this node's proofs of work (default 60)\n"
    "  --ponw-window-s N    challenge window before a proof is claimed (default 600); a rule\n"
    "                       of the swarm: every node of one swarm must use the same (test\n"
    "                       swarms shorten it)\n"
    "  --threads N          compute threads for training (default: one a core)\n"
    "  --quorum-size N      train as a pipeline of N nodes with the same --model (default 1:\n"
    "                       alone); the node waits for N-1 peers and takes a stage; auto:\n"
    "                       the layer pool gives it the layers its --memory-mb holds and a\n"
    "                       planner forms a pipeline of holders that covers the model\n"
    "  --quorum-session-s N a quorum's session (default 3600, S5): at 80 % of it the quorum\n"
    "                       renews if it trained 1000 steps in it (at most 4 sessions), else\n"
    "                       dissolves, saving its weights, and forms again\n"
    "  --micro-batches N    micro-batches a step (default: 1 alone, S6's rule in a pipeline)\n"
    "  --run-ahead N        forwards a pipeline stage may run ahead of 1F1B while a gradient\n"
    "                       is late, hiding the links' latency (0: strict 1F1B; default auto:\n"
    "                       as many as the step has and memory holds)\n"
    "  --checkpoint-every N steps between checkpoints (default 100; a pipeline's stages write\n"
    "                       theirs at the same steps, its failover restarts from one)\n"
    "  --sync-every N       DiLoCo: meet the other holders of this node's layers every N steps\n"
    "                       and take the outer step with their robust aggregate (default auto:\n"
    "                       S7's 100, 500 or 1000 by swarm size; off: never)\n"
    "  --aggregator A       trimmed-mean (default), median, krum, bulyan or mean: how a cohort\n"
    "                       combines its members' updates (S8)\n"
    "  --sync-role R        member (default: meet the cohort every --sync-every steps) or async:\n"
    "                       download a member's weights, train, submit the update, download\n"
    "                       again (for a slow machine, S7)\n"
    "  --sync-timeout-s N   how long a phase of the cohort's exchange waits for its members\n"
    "                       (default 30)\n"
    "  --ponw-bond AMOUNT   NEURO a challenge bonds (default 10); a rule of the swarm, like\n"
    "                       the window\n"
    "  --role R             train (default), or verify: also recompute a sample of peers'\n"
    "                       training proofs and challenge the false ones (needs 10 NEURO\n"
    "                       staked)\n"
    "  --verify-ppm N       how many proofs in a million a verifier checks (default: S9's\n"
    "                       share for the swarm's size)\n"
    "  --exec-mode M        reproducible (default: work a verifier can recompute bit for bit)\n"
    "                       or fast (about 15 % faster, but its training earns nothing)\n"
    "  --bootstrap H:P,...  seed nodes to join through (repeatable; host names allowed);\n"
    "                       none: start a new swarm or find one on the local network\n"
    "  --lan-discovery B    on (default) or off: find peers on the LAN by UDP multicast\n"
    "  --network NAME       which swarm (default neuroshard-genesis)\n"
    "  --help               this text\n"
    "  --version            the version\n"
    "\n"
    "The key file may be encrypted; its passphrase comes from NEUROSHARD_PASSPHRASE or a prompt.\n"
    "Signals: SIGINT/SIGTERM stop cleanly, SIGHUP reloads the configuration.\n";

const char *ns_config_usage(void)
{
    return usage;
}

int ns_addr_parse(const char *text, ns_addr_text *out)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || colon[1] == '\0')
        return NS_EINVAL;
    const char *host = text;
    size_t host_len = (size_t)(colon - text);
    if (host[0] == '[') {
        if (host_len < 3 || host[host_len - 1] != ']')
            return NS_EINVAL;
        host++;
        host_len -= 2;
    }
    if (host_len >= NS_HOST_SIZE)
        return NS_EINVAL;
    char h[NS_HOST_SIZE];
    memcpy(h, host, host_len);
    h[host_len] = '\0';
    if (strcmp(h, "localhost") == 0)
        strcpy(h, "127.0.0.1");
    unsigned char tmp[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, h, tmp) != 1 && inet_pton(AF_INET6, h, tmp) != 1)
        return NS_EINVAL;
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || port > 65535 || colon[1] == '-' || colon[1] == '+')
        return NS_EINVAL;
    strcpy(out->host, h);
    out->port = (uint16_t)port;
    return NS_OK;
}

void ns_addr_format(char *out, size_t out_size, const ns_addr_text *addr)
{
    bool v6 = strchr(addr->host, ':') != NULL;
    snprintf(out, out_size, v6 ? "[%s]:%u" : "%s:%u", addr->host, (unsigned)addr->port);
}

static int parse_u64(const char *text, uint64_t *out)
{
    if (text[0] < '0' || text[0] > '9')
        return NS_EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return NS_EINVAL;
    *out = v;
    return NS_OK;
}

static int parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"on", "yes", "true", "1"};
    static const char *const no[] = {"off", "no", "false", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(text, yes[i]) == 0 || strcmp(text, no[i]) == 0) {
            *out = strcmp(text, yes[i]) == 0;
            return NS_OK;
        }
    }
    return NS_EINVAL;
}

/* One "host:port" seed: a non-empty host (a name or an address, resolved when used) and a
 * numeric port. */
static int check_seed(const char *seed, size_t len)
{
    if (len == 0 || len >= NS_BOOTSTRAP_TEXT_SIZE)
        return NS_EINVAL;
    const char *colon = memrchr(seed, ':', len);
    if (colon == NULL || colon == seed || colon == seed + len - 1)
        return NS_EINVAL;
    unsigned long port = 0;
    for (const char *p = colon + 1; p < seed + len; p++) {
        if (*p < '0' || *p > '9' || (port = port * 10 + (unsigned long)(*p - '0')) > 65535)
            return NS_EINVAL;
    }
    return port > 0 ? NS_OK : NS_EINVAL;
}

/* Adds seeds from a comma-separated list; "" or "none" clears the list. */
static int add_bootstrap(ns_config *cfg, const char *value, char *why, size_t why_size)
{
    if (value[0] == '\0' || strcmp(value, "none") == 0) {
        cfg->bootstrap_count = 0;
        return NS_OK;
    }
    for (const char *p = value; *p != '\0';) {
        size_t len = strcspn(p, ",");
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        size_t trimmed = len;
        while (trimmed > 0 && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t'))
            trimmed--;
        if (check_seed(p, trimmed) != NS_OK) {
            snprintf(why, why_size, "bootstrap '%.*s' is not HOST:PORT", (int)trimmed, p);
            return NS_EINVAL;
        }
        if (cfg->bootstrap_count == NS_BOOTSTRAP_MAX) {
            snprintf(why, why_size, "more than %d bootstrap seeds", NS_BOOTSTRAP_MAX);
            return NS_EINVAL;
        }
        memcpy(cfg->bootstrap[cfg->bootstrap_count], p, trimmed);
        cfg->bootstrap[cfg->bootstrap_count][trimmed] = '\0';
        cfg->bootstrap_count++;
        p += len;
        if (*p == ',')
            p++;
    }
    return NS_OK;
}

/* "auto", or "LxH": L layers (1..256) of hidden size H (64..16384, a multiple of 64). */
static int parse_model(const char *text, uint32_t *layers, uint32_t *hidden)
{
    if (strcmp(text, "auto") == 0) {
        *layers = 0;
        *hidden = 0;
        return NS_OK;
    }
    unsigned l, h;
    char tail;
    if (sscanf(text, "%ux%u%c", &l, &h, &tail) != 2 || l < 1 || l > 256 || h < 64 || h > 16384 ||
        h % 64 != 0)
        return NS_EINVAL;
    *layers = l;
    *hidden = h;
    return NS_OK;
}

static int copy_path(char *dst, size_t dst_size, const char *value)
{
    size_t n = strlen(value);
    if (n == 0 || n >= dst_size)
        return NS_EINVAL;
    memcpy(dst, value, n + 1);
    return NS_OK;
}

/* Sets one key; on a bad value writes "what is wrong" (without the source) into why. */
static int config_set(ns_config *cfg, const char *key, const char *value, char *why,
                      size_t why_size)
{
    int rc = NS_EINVAL;
    if (strcmp(key, "data_dir") == 0) {
        rc = copy_path(cfg->data_dir, sizeof cfg->data_dir, value);
        snprintf(why, why_size, "data_dir must be a non-empty path");
    } else if (strcmp(key, "config") == 0) {
        rc = copy_path(cfg->config_path, sizeof cfg->config_path, value);
        snprintf(why, why_size, "config must be a non-empty path");
    } else if (strcmp(key, "api_listen") == 0) {
        rc = ns_addr_parse(value, &cfg->api_listen);
        snprintf(why, why_size, "api_listen '%s' is not HOST:PORT", value);
    } else if (strcmp(key, "listen") == 0) {
        rc = ns_addr_parse(value, &cfg->listen);
        snprintf(why, why_size, "listen '%s' is not HOST:PORT", value);
    } else if (strcmp(key, "log_level") == 0) {
        rc = ns_log_parse_level(value, &cfg->log_level);
        snprintf(why, why_size, "log_level '%s' is not error, warn, info or debug", value);
    } else if (strcmp(key, "network") == 0) {
        size_t n = strlen(value);
        rc = n > 0 && n < sizeof cfg->network ? NS_OK : NS_EINVAL;
        if (rc == NS_OK)
            memcpy(cfg->network, value, n + 1);
        snprintf(why, why_size, "network must be a name of 1 to %zu bytes",
                 sizeof cfg->network - 1);
    } else if (strcmp(key, "bootstrap") == 0) {
        rc = add_bootstrap(cfg, value, why, why_size);
    } else if (strcmp(key, "lan_discovery") == 0) {
        rc = parse_bool(value, &cfg->lan_discovery);
        snprintf(why, why_size, "lan_discovery '%s' is not on or off", value);
    } else if (strcmp(key, "train") == 0) {
        rc = parse_bool(value, &cfg->train);
        snprintf(why, why_size, "train '%s' is not on or off", value);
    } else if (strcmp(key, "dataset") == 0) {
        rc = copy_path(cfg->dataset, sizeof cfg->dataset, value);
        snprintf(why, why_size, "dataset must be a non-empty path");
    } else if (strcmp(key, "model") == 0) {
        rc = parse_model(value, &cfg->model_layers, &cfg->model_hidden);
        snprintf(why, why_size, "model '%s' is not auto or LxH with H a multiple of 64", value);
    } else if (strcmp(key, "ponw_interval_s") == 0) {
        rc = parse_u64(value, &cfg->ponw_interval_s);
        if (rc == NS_OK && (cfg->ponw_interval_s == 0 || cfg->ponw_interval_s > 600))
            rc = NS_EINVAL;
        snprintf(why, why_size, "ponw_interval_s '%s' is not a number of seconds in 1..600", value);
    } else if (strcmp(key, "ponw_window_s") == 0) {
        rc = parse_u64(value, &cfg->ponw_window_s);
        if (rc == NS_OK && (cfg->ponw_window_s == 0 || cfg->ponw_window_s > 86400))
            rc = NS_EINVAL;
        snprintf(why, why_size, "ponw_window_s '%s' is not a number of seconds in 1..86400", value);
    } else if (strcmp(key, "role") == 0) {
        rc = strcmp(value, "train") == 0 || strcmp(value, "verify") == 0 ? NS_OK : NS_EINVAL;
        if (rc == NS_OK)
            cfg->verifier = strcmp(value, "verify") == 0;
        snprintf(why, why_size, "role '%s' is not train or verify", value);
    } else if (strcmp(key, "verify_ppm") == 0) {
        uint64_t v = 0;
        rc = parse_u64(value, &v);
        if (rc == NS_OK && v > 1000000)
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->verify_ppm = (int64_t)v;
        snprintf(why, why_size, "verify_ppm '%s' is not a number in 0..1000000", value);
    } else if (strcmp(key, "threads") == 0) {
        uint64_t v = 0;
        rc = parse_u64(value, &v);
        if (rc == NS_OK && (v == 0 || v > NS_EXEC_THREADS_MAX))
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->threads = (uint32_t)v;
        snprintf(why, why_size, "threads '%s' is not a number in 1..%d", value,
                 NS_EXEC_THREADS_MAX);
    } else if (strcmp(key, "quorum_size") == 0 && strcmp(value, "auto") == 0) {
        cfg->quorum_size = NS_QUORUM_SIZE_AUTO;
        rc = NS_OK;
    } else if (strcmp(key, "quorum_size") == 0 || strcmp(key, "micro_batches") == 0) {
        bool quorum = key[0] == 'q';
        uint64_t v = 0;
        rc = parse_u64(value, &v);
        if (rc == NS_OK && (quorum ? v == 0 || v > 16 : v > 64))
            rc = NS_EINVAL;
        if (rc == NS_OK && quorum)
            cfg->quorum_size = (uint32_t)v;
        else if (rc == NS_OK)
            cfg->micro_batches = (uint32_t)v;
        snprintf(why, why_size, "%s '%s' is not a number in %s", key, value,
                 quorum ? "1..16 or auto" : "0..64 (0: automatic)");
    } else if (strcmp(key, "run_ahead") == 0) {
        uint64_t v = 0;
        rc = strcmp(value, "auto") == 0 ? NS_OK : parse_u64(value, &v);
        if (rc == NS_OK && v > 64)
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->run_ahead = strcmp(value, "auto") == 0 ? NS_RUN_AHEAD_AUTO : (uint32_t)v;
        snprintf(why, why_size, "run_ahead '%s' is not auto or a number in 0..64", value);
    } else if (strcmp(key, "checkpoint_every") == 0) {
        uint64_t v = 0;
        rc = parse_u64(value, &v);
        if (rc == NS_OK && (v == 0 || v > 1000000))
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->checkpoint_every = (uint32_t)v;
        snprintf(why, why_size, "checkpoint_every '%s' is not a number of steps in 1..1000000",
                 value);
    } else if (strcmp(key, "sync_every") == 0) {
        uint64_t v = 0;
        if (strcmp(value, "auto") == 0) {
            cfg->sync_every = NS_SYNC_EVERY_AUTO;
            rc = NS_OK;
        } else if (strcmp(value, "off") == 0) {
            cfg->sync_every = 0;
            rc = NS_OK;
        } else {
            rc = parse_u64(value, &v);
            if (rc == NS_OK && (v == 0 || v > 1000000))
                rc = NS_EINVAL;
            if (rc == NS_OK)
                cfg->sync_every = (uint32_t)v;
        }
        snprintf(why, why_size,
                 "sync_every '%s' is not auto, off or a number of steps in 1..1000000", value);
    } else if (strcmp(key, "quorum_session_s") == 0) {
        uint64_t v = 0;
        rc = parse_u64(value, &v);
        if (rc == NS_OK && (v < 10 || v > 86400))
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->quorum_session_s = (uint32_t)v;
        snprintf(why, why_size, "quorum_session_s '%s' is not a number of seconds in 10..86400",
                 value);
    } else if (strcmp(key, "sync_timeout_s") == 0) {
        uint64_t v = 0;
        rc = parse_u64(value, &v);
        if (rc == NS_OK && (v == 0 || v > 3600))
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->sync_timeout_s = (uint32_t)v;
        snprintf(why, why_size, "sync_timeout_s '%s' is not a number of seconds in 1..3600", value);
    } else if (strcmp(key, "sync_role") == 0) {
        rc = strcmp(value, "member") == 0 || strcmp(value, "async") == 0 ? NS_OK : NS_EINVAL;
        if (rc == NS_OK)
            cfg->sync_async = strcmp(value, "async") == 0;
        snprintf(why, why_size, "sync_role '%s' is not member or async", value);
    } else if (strcmp(key, "aggregator") == 0) {
        ns_agg_kind kind;
        rc = ns_agg_parse(value, &kind);
        if (rc == NS_OK)
            cfg->sync_aggregator = (uint32_t)kind;
        snprintf(why, why_size, "aggregator '%s' is not mean, trimmed-mean, median, krum or bulyan",
                 value);
    } else if (strcmp(key, "ponw_bond") == 0) {
        ns_neuro bond = {0};
        rc = ns_neuro_parse(value, &bond);
        if (rc == NS_OK && bond.nano <= 0)
            rc = NS_EINVAL;
        if (rc == NS_OK)
            cfg->ponw_bond_nano = bond.nano;
        snprintf(why, why_size, "ponw_bond '%s' is not an amount of NEURO above 0", value);
    } else if (strcmp(key, "exec_mode") == 0) {
        rc = strcmp(value, "fast") == 0 || strcmp(value, "reproducible") == 0 ? NS_OK : NS_EINVAL;
        if (rc == NS_OK)
            cfg->exec_fast = strcmp(value, "fast") == 0;
        snprintf(why, why_size, "exec_mode '%s' is not reproducible or fast", value);
    } else if (strcmp(key, "memory_mb") == 0) {
        rc = parse_u64(value, &cfg->memory_mb);
        snprintf(why, why_size, "memory_mb '%s' is not a whole number", value);
    } else {
        snprintf(why, why_size, "unknown setting '%s'", key);
    }
    return rc;
}

typedef struct ini_state {
    ns_config *cfg;
    char why[WHY_SIZE];
} ini_state;

static int config_ini_line(void *user, const char *section, const char *name, const char *value)
{
    ini_state *st = user;
    if (strcmp(section, "node") != 0) {
        snprintf(st->why, sizeof st->why, "unknown section [%s] (settings go in [node])", section);
        return 0;
    }
    if (strcmp(name, "config") == 0) {
        snprintf(st->why, sizeof st->why, "'config' cannot be set inside a config file");
        return 0;
    }
    return config_set(st->cfg, name, value, st->why, sizeof st->why) == NS_OK;
}

static int load_ini(ns_config *cfg, const char *path, bool must_exist, char err[NS_ERR_TEXT_SIZE])
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (!must_exist && errno == ENOENT)
            return NS_OK;
        snprintf(err, NS_ERR_TEXT_SIZE, "%s: cannot read config file: %s", path, strerror(errno));
        return NS_EINVAL;
    }
    ini_state st = {.cfg = cfg, .why = "syntax error"};
    int line = ini_parse_file(f, config_ini_line, &st);
    fclose(f);
    if (line != 0) {
        snprintf(err, NS_ERR_TEXT_SIZE, "%s:%d: %s", path, line, st.why);
        return NS_EINVAL;
    }
    if (strlen(path) >= sizeof cfg->config_path)
        return NS_EINVAL;
    strcpy(cfg->config_path, path);
    return NS_OK;
}

static const setting *setting_for_flag(const char *flag)
{
    for (size_t i = 0; i < SETTINGS_COUNT; i++) {
        if (strcmp(settings[i].flag, flag) == 0)
            return &settings[i];
    }
    return NULL;
}

static const char *env_lookup(char *const envp[], const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++) {
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i] + n + 1;
    }
    return NULL;
}

typedef struct flag_value {
    const setting *setting;
    const char *value;
} flag_value;

/* Collects --flag VALUE and --flag=VALUE pairs; unknown flags and stray words are errors. */
static int scan_flags(int argc, char *const argv[], flag_value *out, size_t *count, bool *help,
                      bool *version, char err[NS_ERR_TEXT_SIZE])
{
    *count = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = true;
            continue;
        }
        if (strcmp(arg, "--version") == 0) {
            *version = true;
            continue;
        }
        char name[64];
        const char *eq = strchr(arg, '=');
        size_t name_len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
        const setting *s = NULL;
        if (name_len < sizeof name) {
            memcpy(name, arg, name_len);
            name[name_len] = '\0';
            s = setting_for_flag(name);
        }
        if (s == NULL) {
            snprintf(err, NS_ERR_TEXT_SIZE, "unknown option '%s' (see --help)", arg);
            return NS_EINVAL;
        }
        const char *value = eq != NULL ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (value == NULL) {
            snprintf(err, NS_ERR_TEXT_SIZE, "option %s needs a value", s->flag);
            return NS_EINVAL;
        }
        if (*count == CONFIG_FLAGS_MAX) {
            snprintf(err, NS_ERR_TEXT_SIZE, "too many options");
            return NS_EINVAL;
        }
        out[(*count)++] = (flag_value){s, value};
    }
    return NS_OK;
}

static void config_defaults(ns_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->api_listen.host, "127.0.0.1");
    cfg->api_listen.port = NS_API_PORT_DEFAULT;
    strcpy(cfg->listen.host, "0.0.0.0");
    cfg->listen.port = NS_PEER_PORT_DEFAULT;
    cfg->log_level = NS_LOG_INFO;
    cfg->lan_discovery = true;
    cfg->train = true;
    cfg->memory_mb = NS_MEMORY_MB_DEFAULT;
    cfg->ponw_interval_s = 60;
    cfg->ponw_window_s = 600;
    cfg->verify_ppm = -1;
    cfg->quorum_size = 1;
    cfg->run_ahead = NS_RUN_AHEAD_AUTO;
    cfg->sync_every = NS_SYNC_EVERY_AUTO;
    cfg->sync_aggregator = NS_AGG_TRIMMED_MEAN;
    cfg->sync_timeout_s = 30;
    cfg->quorum_session_s = 3600;
    cfg->ponw_bond_nano = 10 * NS_NEURO_NANO_PER_UNIT;
    strcpy(cfg->network, "neuroshard-genesis");
}

/* Where the INI file is: --config, NEUROSHARD_CONFIG, else DATA_DIR/neuroshard.ini if present. */
static int find_config_path(ns_config *probe, const flag_value *flags, size_t flag_count,
                            char *const envp[], bool *explicit_path, char err[NS_ERR_TEXT_SIZE])
{
    char why[WHY_SIZE];
    const char *env_dir = env_lookup(envp, "NEUROSHARD_DATA_DIR");
    const char *env_cfg = env_lookup(envp, "NEUROSHARD_CONFIG");
    if (env_dir != NULL && config_set(probe, "data_dir", env_dir, why, sizeof why) != NS_OK) {
        snprintf(err, NS_ERR_TEXT_SIZE, "NEUROSHARD_DATA_DIR: %s", why);
        return NS_EINVAL;
    }
    if (env_cfg != NULL && config_set(probe, "config", env_cfg, why, sizeof why) != NS_OK) {
        snprintf(err, NS_ERR_TEXT_SIZE, "NEUROSHARD_CONFIG: %s", why);
        return NS_EINVAL;
    }
    for (size_t i = 0; i < flag_count; i++) {
        const char *key = flags[i].setting->key;
        if (strcmp(key, "data_dir") != 0 && strcmp(key, "config") != 0)
            continue;
        if (config_set(probe, key, flags[i].value, why, sizeof why) != NS_OK) {
            snprintf(err, NS_ERR_TEXT_SIZE, "%s: %s", flags[i].setting->flag, why);
            return NS_EINVAL;
        }
    }
    *explicit_path = probe->config_path[0] != '\0';
    if (!*explicit_path) {
        if (probe->data_dir[0] == '\0' &&
            ns_default_data_dir(probe->data_dir, sizeof probe->data_dir) != NS_OK) {
            snprintf(err, NS_ERR_TEXT_SIZE, "no data directory: set --data-dir or HOME");
            return NS_EINVAL;
        }
        int n = snprintf(probe->config_path, sizeof probe->config_path, "%s/%s", probe->data_dir,
                         NS_CONFIG_FILE);
        if (n < 0 || (size_t)n >= sizeof probe->config_path) {
            snprintf(err, NS_ERR_TEXT_SIZE, "data directory path is too long");
            return NS_EINVAL;
        }
    }
    return NS_OK;
}

int ns_config_load(ns_config *cfg, int argc, char *const argv[], char *const envp[], bool *help,
                   bool *version, char err[NS_ERR_TEXT_SIZE])
{
    flag_value flags[CONFIG_FLAGS_MAX];
    size_t flag_count;
    *help = false;
    *version = false;
    err[0] = '\0';
    int rc = scan_flags(argc, argv, flags, &flag_count, help, version, err);
    if (rc != NS_OK || *help || *version)
        return rc;

    ns_config probe;
    config_defaults(&probe);
    bool explicit_path;
    rc = find_config_path(&probe, flags, flag_count, envp, &explicit_path, err);
    if (rc != NS_OK)
        return rc;

    config_defaults(cfg);
    rc = load_ini(cfg, probe.config_path, explicit_path, err);
    if (rc != NS_OK)
        return rc;

    char why[WHY_SIZE];
    for (size_t i = 0; i < SETTINGS_COUNT; i++) {
        const char *value = env_lookup(envp, settings[i].env);
        if (value == NULL || strcmp(settings[i].key, "config") == 0)
            continue;
        if (strcmp(settings[i].key, "bootstrap") == 0)
            cfg->bootstrap_count = 0; /* a list from a stronger source replaces, not extends */
        if (config_set(cfg, settings[i].key, value, why, sizeof why) != NS_OK) {
            snprintf(err, NS_ERR_TEXT_SIZE, "%s: %s", settings[i].env, why);
            return NS_EINVAL;
        }
    }
    bool flag_seeds_seen = false;
    for (size_t i = 0; i < flag_count; i++) {
        if (strcmp(flags[i].setting->key, "config") == 0)
            continue;
        if (strcmp(flags[i].setting->key, "bootstrap") == 0 && !flag_seeds_seen) {
            cfg->bootstrap_count = 0; /* --bootstrap flags replace the file's and env's list */
            flag_seeds_seen = true;
        }
        if (config_set(cfg, flags[i].setting->key, flags[i].value, why, sizeof why) != NS_OK) {
            snprintf(err, NS_ERR_TEXT_SIZE, "%s: %s", flags[i].setting->flag, why);
            return NS_EINVAL;
        }
    }
    if (cfg->data_dir[0] == '\0' && ns_default_data_dir(cfg->data_dir, sizeof cfg->data_dir) != 0) {
        snprintf(err, NS_ERR_TEXT_SIZE, "no data directory: set --data-dir or HOME");
        return NS_EINVAL;
    }
    return NS_OK;
}
