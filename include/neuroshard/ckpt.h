/*
 * ckpt.h: safetensors files and training checkpoints (SPEC S12, issue 5 item 6).
 *
 * Two layers. ns_st_* reads and writes the safetensors format (a u64 little-endian header length,
 * a JSON header, raw little-endian tensor data) with a strictly bounded reader: every length,
 * offset, shape and dtype is checked before anything is handed out, so it may be fed untrusted
 * bytes. ns_ckpt_* builds checkpoints on it: a directory ckpt-<step>/ holding model.safetensors
 * (Hugging Face Llama names), optimizer.safetensors, a Hugging Face config.json and state.json
 * (step, data position, RNG state and the SHA-256 of every other file), written so that a kill -9
 * at any moment never leaves a checkpoint that loads wrong. docs/checkpoints.md tells the layout.
 *
 * Errors come as codes and, where a buffer is given, one line for a person naming the file and
 * the tensor or field. Every err buffer may be NULL (err_size then ignored).
 */
#ifndef NEUROSHARD_CKPT_H
#define NEUROSHARD_CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"

/* ---- safetensors -------------------------------------------------------------------------- */

#ifndef NS_ST_HEADER_BYTES_MAX
#define NS_ST_HEADER_BYTES_MAX (8u << 20) /* JSON header; larger: NS_ETOOBIG */
#endif
#define NS_ST_JSON_DEPTH_MAX  3          /* root -> tensor -> shape is the deepest valid header */
#define NS_ST_JSON_VALUES_MAX (1u << 20) /* values (containers, scalars) in one header */
#define NS_ST_TENSORS_MAX     (1u << 15)
#define NS_ST_METADATA_MAX    1024 /* entries in "__metadata__" */
#define NS_ST_DIMS_MAX        8
#define NS_ST_NAME_BYTES_MAX  1024  /* a tensor name or metadata key, UTF-8 bytes */
#define NS_ST_VALUE_BYTES_MAX 65536 /* a metadata value */
#define NS_ST_ERR_SIZE        512   /* room for one message; a longer one is cut */

/* Every dtype the reader accepts; the checkpoint layer writes F32 only. */
typedef enum {
    NS_ST_BOOL = 0,
    NS_ST_U8 = 1,
    NS_ST_I8 = 2,
    NS_ST_U16 = 3,
    NS_ST_I16 = 4,
    NS_ST_F16 = 5,
    NS_ST_BF16 = 6,
    NS_ST_U32 = 7,
    NS_ST_I32 = 8,
    NS_ST_F32 = 9,
    NS_ST_U64 = 10,
    NS_ST_I64 = 11,
    NS_ST_F64 = 12,
} ns_st_dtype;
#define NS_ST_DTYPE_COUNT 13

/* "F32", "BF16", ... as the format spells them. */
const char *ns_st_dtype_name(ns_st_dtype dtype);
/* Bytes of one element: 1, 2, 4 or 8. */
size_t ns_st_dtype_size(ns_st_dtype dtype);

/* One tensor. To write, the caller fills every field (nbytes must equal the shape's element count
 * times the dtype's size; data is little-endian, row-major). From the reader, every pointer points
 * into the file's bytes and lives as long as the ns_st_file; data may be unaligned (memcpy it). */
typedef struct ns_st_tensor {
    const char *name;
    ns_st_dtype dtype;
    size_t ndim; /* 0 (a scalar) to NS_ST_DIMS_MAX */
    uint64_t shape[NS_ST_DIMS_MAX];
    const void *data;
    size_t nbytes;
} ns_st_tensor;

/* One "__metadata__" entry: string to string. */
typedef struct ns_st_meta {
    const char *key;
    const char *value;
} ns_st_meta;

typedef struct ns_st_file ns_st_file;

/* Parses a whole safetensors file held in buf (which must outlive the result: views point into
 * it). label names the file in messages. Errors:
 *   NS_ETOOBIG   header length over NS_ST_HEADER_BYTES_MAX; JSON deeper than
 *                NS_ST_JSON_DEPTH_MAX or with more than NS_ST_JSON_VALUES_MAX values; more than
 *                NS_ST_TENSORS_MAX tensors, NS_ST_METADATA_MAX metadata entries or NS_ST_DIMS_MAX
 *                dimensions; a name or value over its limit
 *   NS_EPARSE    shorter than 8 bytes; header not JSON, not an object, or with a duplicate name;
 *                a tensor entry whose fields are missing, unknown or of the wrong type; an
 *                unknown dtype; metadata that is not an object of strings
 *   NS_EOVERFLOW a shape whose byte size does not fit 64 bits
 *   NS_ECORRUPT  header length past the end of the file; begin > end; end past the data;
 *                end - begin != shape product * dtype size; overlapping tensors, a gap between
 *                them, or data bytes that no tensor covers
 * On failure *out is untouched. */
NS_MUST_USE int ns_st_parse(const uint8_t *buf, size_t len, const char *label, ns_st_file **out,
                            char *err, size_t err_size);
/* Maps the file at path read-only and parses it; the mapping is released by ns_st_free. The file
 * must not shrink while it is mapped (reading a view would then raise SIGBUS).
 * NS_ENOENT / NS_EIO / NS_EPERM from the file system, else as ns_st_parse. */
NS_MUST_USE int ns_st_open(const char *path, ns_st_file **out, char *err, size_t err_size);
void ns_st_free(ns_st_file *file); /* NULL is a no-op */

/* Tensors in name order (bytewise), index < ns_st_count. */
size_t ns_st_count(const ns_st_file *file);
const ns_st_tensor *ns_st_at(const ns_st_file *file, size_t index);
/* NULL when absent. */
const ns_st_tensor *ns_st_find(const ns_st_file *file, const char *name);
/* The typed lookup: the tensor `name` of dtype `dtype` and exactly this shape. NS_ENOENT when
 * absent; NS_EINVAL when the dtype or the shape differs, the message naming both. */
NS_MUST_USE int ns_st_get(const ns_st_file *file, const char *name, ns_st_dtype dtype,
                          const uint64_t *shape, size_t ndim, const ns_st_tensor **out, char *err,
                          size_t err_size);
/* A "__metadata__" value, NULL when absent. */
const char *ns_st_metadata(const ns_st_file *file, const char *key);
size_t ns_st_metadata_count(const ns_st_file *file);
const ns_st_meta *ns_st_metadata_at(const ns_st_file *file, size_t index);

/* The writer lays tensors out as Hugging Face's does (by dtype size, largest first, then by name;
 * HF breaks ties between dtypes of one size by dtype, this writer by name),
 * writes "__metadata__" first when there is any, pads the header with spaces to a multiple of 8,
 * and so is canonical: the same tensors and metadata give the same bytes. NS_EINVAL for a tensor
 * or entry the reader would refuse (empty, duplicate or over-long name, "__metadata__" as a name,
 * nbytes that does not match the shape, non-UTF-8 text). */
/* The whole file in a malloc'd buffer the caller frees. */
NS_MUST_USE int ns_st_build(const ns_st_tensor *tensors, size_t count, const ns_st_meta *meta,
                            size_t meta_count, uint8_t **out, size_t *out_len, char *err,
                            size_t err_size);
/* Writes the file to fd (at its current position) without fsync; sha256 (may be NULL) receives
 * the hash of every byte written and *written_bytes (may be NULL) their count. */
NS_MUST_USE int ns_st_write_fd(int fd, const ns_st_tensor *tensors, size_t count,
                               const ns_st_meta *meta, size_t meta_count,
                               uint8_t sha256[NS_SHA256_BYTES], uint64_t *written_bytes, char *err,
                               size_t err_size);

/* ---- checkpoints -------------------------------------------------------------------------- */

#define NS_CKPT_MODEL_FILE     "model.safetensors"
#define NS_CKPT_OPTIMIZER_FILE "optimizer.safetensors"
#define NS_CKPT_CONFIG_FILE    "config.json"
#define NS_CKPT_STATE_FILE     "state.json"
#define NS_CKPT_DIR_PREFIX     "ckpt-" /* ckpt-<step>, step in decimal */
#define NS_CKPT_TMP_PREFIX     ".tmp-" /* .tmp-<pid>-...: unfinished work, never loaded */
#define NS_CKPT_STATE_VERSION  1
#define NS_CKPT_RNG_BYTES_MAX  256
#define NS_CKPT_KEEP_MAX       1000
#ifndef NS_CKPT_SCAN_MAX
#define NS_CKPT_SCAN_MAX 4096 /* entries of a checkpoint directory looked at; more: NS_ELIMIT */
#endif
#define NS_CKPT_JSON_BYTES_MAX (64 * 1024) /* state.json, config.json */
#define NS_CKPT_PATH_MAX       4096
#define NS_CKPT_ERR_SIZE       NS_ST_ERR_SIZE

/* One float32 tensor of the caller's (a view into its flat parameter buffer): read on save,
 * written on load. name is the Hugging Face name ("model.layers.0.self_attn.q_proj.weight"). */
typedef struct ns_ckpt_tensor {
    const char *name;
    size_t ndim;
    uint64_t shape[NS_ST_DIMS_MAX];
    float *data; /* product(shape) floats, row-major */
} ns_ckpt_tensor;

/* Where training stands. Every integer must be at most INT64_MAX (JSON); NS_EOVERFLOW if not. */
typedef struct ns_ckpt_state {
    uint64_t step;         /* optimizer steps done; names the directory */
    uint64_t timestamp_ms; /* the caller's clock when it was taken, ms since the Unix epoch */
    uint64_t data_epoch;   /* complete passes over the data */
    uint64_t data_shard;   /* the shard being read */
    uint64_t data_offset;  /* the position inside it, in the data part's unit */
    uint8_t rng[NS_CKPT_RNG_BYTES_MAX];
    size_t rng_len; /* bytes of rng in use */
} ns_ckpt_state;

/* What config.json says, a Hugging Face LlamaConfig. The file also names LlamaForCausalLM,
 * model_type llama, hidden_act silu, tie_word_embeddings false, torch_dtype float32. */
typedef struct ns_ckpt_llama_config {
    uint32_t hidden_size;
    uint32_t intermediate_size;
    uint32_t num_attention_heads;
    uint32_t num_key_value_heads;
    uint32_t num_hidden_layers;
    uint32_t vocab_size;
    uint32_t max_position_embeddings;
    double rms_norm_eps;  /* 1e-5 for NeuroLLM */
    double rope_theta;    /* 10000 for NeuroLLM */
    int64_t bos_token_id; /* < 0: none (written as null) */
    int64_t eos_token_id; /* < 0: none */
} ns_ckpt_llama_config;

/* What identifies a checkpoint once written or loaded. model_sha256 is the SHA-256 of the bytes
 * of model.safetensors (the writer is canonical, so equal weights give an equal hash on every
 * node; `sha256sum model.safetensors` shows it). */
typedef struct ns_ckpt_info {
    uint64_t step;
    uint8_t model_sha256[NS_SHA256_BYTES];
    uint8_t optimizer_sha256[NS_SHA256_BYTES];
    uint8_t config_sha256[NS_SHA256_BYTES];
    uint64_t model_bytes;
    uint64_t optimizer_bytes;
    uint64_t config_bytes;
    char path[NS_CKPT_PATH_MAX]; /* the checkpoint's directory */
} ns_ckpt_info;

/* Saves a checkpoint as dir/ckpt-<state->step>/ (dir is created when missing): every file is
 * written into dir/.tmp-<pid>-<step>/ and fsynced, the directory fsynced and renamed into place,
 * dir fsynced. A checkpoint of the same step already there is swapped out atomically
 * (renameat2 RENAME_EXCHANGE) and then deleted. Afterwards the older checkpoints (smaller steps)
 * beyond the newest `keep` (1..NS_CKPT_KEEP_MAX, counting this one) are deleted; checkpoints of
 * larger steps are never touched. optimizer may be NULL when optimizer_count is 0 (an empty
 * optimizer.safetensors is written). The tensors must not change during the call. info may be
 * NULL. NS_EINVAL for a bad argument (a name, shape, config, keep or rng_len), NS_EOVERFLOW, or
 * a file-system error; on failure the temporary directory is removed and nothing else changed. */
NS_MUST_USE int ns_ckpt_save(const char *dir, const ns_ckpt_tensor *weights, size_t weights_count,
                             const ns_ckpt_tensor *optimizer, size_t optimizer_count,
                             const ns_ckpt_state *state, const ns_ckpt_llama_config *config,
                             size_t keep, ns_ckpt_info *info, char *err, size_t err_size);

/* A checkpoint opened and verified: every hash in state.json checked, both safetensors files
 * parsed, state.json and config.json read. Holds both files mapped until ns_ckpt_close. */
typedef struct ns_ckpt ns_ckpt;

/* Opens one checkpoint directory (a path ending in ckpt-<step>). NS_ENOENT when a file is
 * missing, NS_ECORRUPT when a size or hash differs or state.json's own hash fails,
 * NS_EFOREIGN for another format or version, NS_EPARSE and the ns_st_parse codes for files that
 * do not parse. */
NS_MUST_USE int ns_ckpt_open(const char *path, ns_ckpt **out, char *err, size_t err_size);
/* Opens the newest checkpoint in dir that verifies, newest step first; each one that fails is
 * logged (warn, naming it and why) and skipped. Leftover temporary directories of processes no
 * longer running are deleted. NS_ENOENT when dir holds no checkpoint; NS_ECORRUPT when it holds
 * some and none verifies (err names the newest and why). */
NS_MUST_USE int ns_ckpt_open_latest(const char *dir, ns_ckpt **out, char *err, size_t err_size);
void ns_ckpt_close(ns_ckpt *ckpt); /* NULL is a no-op */

const ns_ckpt_state *ns_ckpt_get_state(const ns_ckpt *ckpt);
const ns_ckpt_llama_config *ns_ckpt_get_config(const ns_ckpt *ckpt);
const ns_ckpt_info *ns_ckpt_get_info(const ns_ckpt *ckpt);
/* The parsed files, for tools that look inside (valid until ns_ckpt_close). */
const ns_st_file *ns_ckpt_model_file(const ns_ckpt *ckpt);
const ns_st_file *ns_ckpt_optimizer_file(const ns_ckpt *ckpt);

/* Copies the checkpoint's tensors into the caller's: model.safetensors must hold exactly the
 * tensors in weights (same names, F32, same shapes, no others), optimizer.safetensors exactly
 * those in optimizer (pass NULL, 0 to leave the optimizer state unread). Everything is checked
 * before the first byte is copied, so on failure (NS_EINVAL, the message naming the file and
 * tensor) the caller's buffers are untouched. */
NS_MUST_USE int ns_ckpt_read(const ns_ckpt *ckpt, const ns_ckpt_tensor *weights,
                             size_t weights_count, const ns_ckpt_tensor *optimizer,
                             size_t optimizer_count, char *err, size_t err_size);

/* ns_ckpt_open_latest + ns_ckpt_read + close: loads the newest checkpoint that verifies and whose
 * tensors match the caller's lists (a verified one that does not match is skipped too, logged).
 * state, config and info (each may be NULL) receive what it held. The caller's buffers are
 * written only by the checkpoint that is loaded. NS_ENOENT when dir holds no checkpoint,
 * NS_ECORRUPT when none loads. */
NS_MUST_USE int ns_ckpt_load_latest(const char *dir, const ns_ckpt_tensor *weights,
                                    size_t weights_count, const ns_ckpt_tensor *optimizer,
                                    size_t optimizer_count, ns_ckpt_state *state,
                                    ns_ckpt_llama_config *config, ns_ckpt_info *info, char *err,
                                    size_t err_size);

/* The steps of the checkpoints in dir (ckpt-<step> directories, complete or not), newest first;
 * *count receives how many (at most max). */
NS_MUST_USE int ns_ckpt_list(const char *dir, uint64_t *steps, size_t max, size_t *count);

/* SHA-256 of a buffer through the checkpoint writer's code (SHA-NI where the CPU has it, several
 * times faster than libsodium's portable code): for hashing whole weight buffers. */
void ns_ckpt_sha256(uint8_t out[NS_SHA256_BYTES], const void *buf, size_t len);

#endif
