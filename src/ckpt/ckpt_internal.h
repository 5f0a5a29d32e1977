/*
 * ckpt_internal.h: what the files of src/ckpt/ share and nothing outside uses: a streaming
 * SHA-256 (checkpoint files are hundreds of MB, hashed as they are written and read), message
 * formatting, dtype names, and small file-system helpers.
 */
#ifndef NS_CKPT_INTERNAL_H
#define NS_CKPT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include "neuroshard/ckpt.h"

/* ---- streaming SHA-256 (sha256_stream.c) -------------------------------------------------- */

/* ns_sha256 is one-shot; these hash a file piece by piece. Where the CPU has the SHA extensions
 * (x86-64 SHA-NI) blocks go through them, about 7x faster than libsodium's portable code; else
 * through libsodium's streaming API. Both give SHA-256; tests compare them with ns_sha256. */
typedef struct ns__sha256 {
    bool shani;
    uint32_t h[8];
    uint8_t block[64];
    size_t block_len;
    uint64_t total_bytes;
    crypto_hash_sha256_state sodium;
} ns__sha256;

void ns__sha256_init(ns__sha256 *s);
void ns__sha256_update(ns__sha256 *s, const void *buf, size_t len);
void ns__sha256_final(ns__sha256 *s, uint8_t out[NS_SHA256_BYTES]);
/* The one-shot form through the same code: the fast path for whole mapped files. */
void ns__sha256_buf(uint8_t out[NS_SHA256_BYTES], const void *buf, size_t len);
/* Whether the SHA-NI path is in use on this CPU (tests report it). */
bool ns__sha256_has_shani(void);

/* ---- messages ----------------------------------------------------------------------------- */

/* Writes one message into err (when err is not NULL); returns code, so that a caller can say
 * `return ns__err(err, err_size, NS_EPARSE, "...", ...)`. */
int ns__err(char *err, size_t err_size, int code, const char *fmt, ...) NS_PRINTF(4, 5);

/* ---- dtypes (st_write.c) ------------------------------------------------------------------ */

/* Parses "F32", "BF16", ...; false for anything else. */
bool ns__st_dtype_parse(const char *text, ns_st_dtype *out);
/* Element count times dtype size of a shape; false on overflow of 64 bits. */
bool ns__st_shape_bytes(const uint64_t *shape, size_t ndim, ns_st_dtype dtype, uint64_t *bytes);

/* Parses a mapping made by ns__ckpt_map; on success the file owns (and later unmaps) it, on
 * failure the caller still does. */
int ns__st_parse_map(const uint8_t *map, size_t len, const char *label, ns_st_file **out, char *err,
                     size_t err_size);

/* ---- state.json and config.json (ckpt_json.c) --------------------------------------------- */

int ns__ckpt_config_check(const ns_ckpt_llama_config *config, char *err, size_t err_size);
/* The config.json text (malloc'd, NUL-terminated, newline at the end); NULL when out of memory. */
char *ns__ckpt_config_json(const ns_ckpt_llama_config *config);
int ns__ckpt_config_parse(const uint8_t *buf, size_t len, const char *label,
                          ns_ckpt_llama_config *out, char *err, size_t err_size);
int ns__ckpt_state_check(const ns_ckpt_state *state, char *err, size_t err_size);
/* The state.json text: state, the hashes and sizes in info, and its own hash. */
char *ns__ckpt_state_json(const ns_ckpt_state *state, const ns_ckpt_info *info);
/* Parses and checks state.json (its own hash included) into state and the hash fields of info. */
int ns__ckpt_state_parse(const uint8_t *buf, size_t len, const char *label, ns_ckpt_state *state,
                         ns_ckpt_info *info, char *err, size_t err_size);

/* ---- the checkpoint directory (ckpt_dir.c) ------------------------------------------------ */

/* Parses "ckpt-<step>" (decimal, no leading zeros). */
bool ns__ckpt_parse_name(const char *name, uint64_t *step);
/* The steps of every ckpt-<step> directory in dir, newest first, in a malloc'd array (NULL when
 * none). A dir that does not exist holds none. NS_ELIMIT beyond NS_CKPT_SCAN_MAX entries. */
int ns__ckpt_scan(const char *dir, uint64_t **steps, size_t *count);
/* Deletes the .tmp-<pid>-... directories of processes that no longer run. */
void ns__ckpt_clean_leftovers(const char *dir);
/* Deletes the checkpoints older than saved_step beyond the newest keep (counting saved_step's). */
void ns__ckpt_prune(const char *dir, uint64_t saved_step, size_t keep);

/* ---- files (ckpt_util.c) -------------------------------------------------------------------- */

int ns__ckpt_errno(int e);
/* write() until done, EINTR retried. */
int ns__ckpt_write_all(int fd, const void *buf, size_t len);
/* fsyncs a directory. */
int ns__ckpt_fsync_dir(const char *path);
/* Deletes a directory tree (files and directories, links not followed). */
int ns__ckpt_rmtree(const char *path);
/* Maps a whole regular file read-only (an empty file gives a NULL map of length 0); populate
 * reads it all in at once, for a caller that will touch every byte. */
int ns__ckpt_map(const char *path, size_t len_max, bool populate, const uint8_t **map, size_t *len);
void ns__ckpt_unmap(const uint8_t *map, size_t len);

#endif
