/*
 * base.h: what every part of neuroshard stands on.
 *
 * Error codes and their text, assertions that stay on in every build, logging, hex, small file
 * helpers (atomic writes, the default data directory), and the one seam between protocol cores and
 * the world: struct ns_env. A core takes events and acts only through its env; the daemon binds
 * the env to libuv (src/node/), netsim to a virtual clock, unit tests to a hand-driven fake.
 */
#ifndef NEUROSHARD_BASE_H
#define NEUROSHARD_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NS_VERSION "0.1.0"

#define NS_MUST_USE     __attribute__((warn_unused_result))
#define NS_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- errors ------------------------------------------------------------------------------- */

/* Functions that can fail return 0 or one of these (always negative); ns_strerror names them. */
enum {
    NS_OK = 0,
    NS_EINVAL = -1,       /* an argument or input is malformed */
    NS_ENOMEM = -2,       /* out of memory */
    NS_EIO = -3,          /* a read, write or fsync failed */
    NS_ENOENT = -4,       /* the file or item does not exist */
    NS_EEXIST = -5,       /* the file or item already exists */
    NS_EPERM = -6,        /* permissions are wrong (e.g. a key file readable by others) */
    NS_ETOOBIG = -7,      /* input is larger than its limit */
    NS_EPARSE = -8,       /* input does not parse */
    NS_EWORD = -9,        /* a mnemonic word is not in the BIP39 list */
    NS_ECHECKSUM = -10,   /* a mnemonic's checksum does not match */
    NS_EBADSIG = -11,     /* a signature does not verify */
    NS_EAUTHOR = -12,     /* a record's author is not the key that signed it */
    NS_EEXPIRED = -13,    /* a record has expired */
    NS_EFUTURE = -14,     /* a record is from the future beyond the allowed skew */
    NS_EPASSPHRASE = -15, /* a passphrase is wrong */
    NS_ECORRUPT = -16,    /* a file fails its integrity check */
    NS_EFOREIGN = -17,    /* a file belongs to another program or a newer version */
    NS_ELOCKED = -18,     /* another process holds the lock */
    NS_EADDRINUSE = -19,  /* an address is already in use */
    NS_ECRYPTO = -20,     /* a cryptographic primitive failed (invalid key, ...) */
    NS_EOVERFLOW = -21,   /* an arithmetic result does not fit */
    NS_ELIMIT = -22,      /* a table, queue or retry limit was reached */
    NS_EFORK = -23,       /* two signed entries with one sequence: the account forked */
    NS_EWAIT = -24,       /* not yet: it can be done once something it waits for is done */
    NS_ERR_COUNT_ = 25
};

const char *ns_strerror(int err);

/* ---- assertions --------------------------------------------------------------------------- */

/* On in every build. A failed assertion is a bug in neuroshard, never bad input. */
#define NS_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ns__assert_fail(#cond, __FILE__, __LINE__);                                            \
    } while (0)

_Noreturn void ns__assert_fail(const char *cond, const char *file, int line);

/* ---- logging ------------------------------------------------------------------------------ */

/* One line an event on stderr: "2026-11-26T10:53:44.123Z INFO  part: event key=value". */
typedef enum {
    NS_LOG_ERROR = 0,
    NS_LOG_WARN = 1,
    NS_LOG_INFO = 2,
    NS_LOG_DEBUG = 3,
} ns_log_level;

void ns_log_set_level(ns_log_level level);
ns_log_level ns_log_get_level(void);
/* Parses "error", "warn", "info" or "debug"; NS_EINVAL otherwise. */
NS_MUST_USE int ns_log_parse_level(const char *text, ns_log_level *out);
void ns_log(ns_log_level level, const char *part, const char *fmt, ...) NS_PRINTF(3, 4);

#define NS_LOG_E(part, ...) ns_log(NS_LOG_ERROR, part, __VA_ARGS__)
#define NS_LOG_W(part, ...) ns_log(NS_LOG_WARN, part, __VA_ARGS__)
#define NS_LOG_I(part, ...) ns_log(NS_LOG_INFO, part, __VA_ARGS__)
#define NS_LOG_D(part, ...) ns_log(NS_LOG_DEBUG, part, __VA_ARGS__)

/* ---- hex ---------------------------------------------------------------------------------- */

/* Writes 2*n lowercase hex digits and a NUL; out_size must be at least 2*n+1. */
void ns_hex_encode(char *out, size_t out_size, const uint8_t *buf, size_t n);
/* Decodes exactly out_len bytes from a string of exactly 2*out_len hex digits. */
NS_MUST_USE int ns_hex_decode(uint8_t *out, size_t out_len, const char *hex);

/* ---- files -------------------------------------------------------------------------------- */

/* Writes a whole file so that a crash leaves either the old file or the new one: a temporary
 * file in the same directory, fsync, rename, fsync of the directory. mode is the new file's mode
 * (e.g. 0600), set before any byte is written. */
NS_MUST_USE int ns_file_write_atomic(const char *path, const void *buf, size_t len, unsigned mode);
/* The same, but never replaces an existing file: NS_EEXIST if path exists, even when another
 * process creates it while this one writes (the new file is linked into place, not renamed). */
NS_MUST_USE int ns_file_create_atomic(const char *path, const void *buf, size_t len, unsigned mode);
/* Reads a whole file of at most max_len bytes into a malloc'd buffer (NUL-terminated, the NUL
 * not counted in *out_len). NS_ETOOBIG beyond max_len. The caller frees *out. */
NS_MUST_USE int ns_file_read(const char *path, size_t max_len, uint8_t **out, size_t *out_len);
/* The default data directory: $XDG_DATA_HOME/neuroshard, else $HOME/.local/share/neuroshard. */
NS_MUST_USE int ns_default_data_dir(char *out, size_t out_size);
/* Creates a directory and its parents with mode 0700 where missing. */
NS_MUST_USE int ns_mkdir_p(const char *path);

/* ---- terminal ---------------------------------------------------------------------------- */

/* Prompts on /dev/tty and reads one line with echo off. NS_ENOENT without a terminal. */
NS_MUST_USE int ns_tty_read_secret(const char *prompt, char *out, size_t out_size);

/* ---- the seam ----------------------------------------------------------------------------- */

/* A transport address: IPv4 (ip[0..3], family 4) or IPv6 (family 6), port in host order. */
typedef struct ns_addr {
    uint8_t family; /* 4 or 6 */
    uint8_t ip[16];
    uint16_t port;
} ns_addr;

#define NS_ID_BYTES 32 /* node ids and DHT keys: 256 bits */

/* A remote node: where it is and, once known, who it is. */
typedef struct ns_peer {
    ns_addr addr;
    uint8_t node_id[NS_ID_BYTES];
    bool has_node_id;
} ns_peer;

/* "1.2.3.4:5" or "[::1]:5"; out_size >= NS_ADDR_TEXT_SIZE. */
#define NS_ADDR_TEXT_SIZE 56
void ns_addr_to_text(char *out, size_t out_size, const ns_addr *addr);
/* Parses numeric "IPv4:PORT" or "[IPv6]:PORT". */
NS_MUST_USE int ns_addr_from_text(const char *text, ns_addr *out);
bool ns_addr_equal(const ns_addr *a, const ns_addr *b);

typedef struct ns_frame ns_frame; /* one framed message; defined in wire.h */

typedef enum {
    NS_CHANNEL_DATAGRAM = 0, /* UDP: DHT RPCs */
    NS_CHANNEL_STREAM = 1,   /* an encrypted link: everything else */
} ns_channel;

typedef void (*ns_timer_fn)(void *arg, uint64_t now_ms);

/* What the outside world offers a core. A core never reads a clock, draws randomness, sleeps or
 * touches a socket except through these. now_ms is milliseconds since the Unix epoch and never
 * goes backwards within a run (the daemon anchors libuv's monotonic loop time to the wall clock
 * once at start; netsim starts its virtual clock wherever the scenario says). Timers are one-shot
 * and due at an absolute now_ms; a core re-arms what repeats. timer() returns a nonzero id that
 * timer_cancel() accepts until the timer fires. */
typedef struct ns_env {
    uint64_t (*now_ms)(void *ctx);
    uint64_t (*timer)(void *ctx, uint64_t at_ms, ns_timer_fn fn, void *arg);
    void (*timer_cancel)(void *ctx, uint64_t timer_id);
    int (*send)(void *ctx, const ns_peer *to, ns_channel ch, const ns_frame *f);
    void (*random)(void *ctx, void *buf, size_t n);
    void *ctx;
} ns_env;

static inline uint64_t ns_env_now(const ns_env *env)
{
    return env->now_ms(env->ctx);
}

static inline uint64_t ns_env_timer(const ns_env *env, uint64_t at_ms, ns_timer_fn fn, void *arg)
{
    return env->timer(env->ctx, at_ms, fn, arg);
}

static inline void ns_env_timer_cancel(const ns_env *env, uint64_t timer_id)
{
    env->timer_cancel(env->ctx, timer_id);
}

static inline void ns_env_random(const ns_env *env, void *buf, size_t n)
{
    env->random(env->ctx, buf, n);
}

#endif
