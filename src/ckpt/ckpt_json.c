/*
 * ckpt_json.c: a checkpoint's two JSON files, config.json and state.json.
 *
 * config.json is a Hugging Face LlamaConfig, so that transformers' from_pretrained builds the
 * model from the directory as it is. state.json is ours: where training stands, and the size and
 * SHA-256 of every other file; its own integrity comes from "state_sha256", the SHA-256 of the
 * rest of the object printed compact with sorted keys (jansson prints integers and ASCII strings
 * one way only, so the form is canonical). Reading is strict: a version-1 state.json has exactly
 * the fields written here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ckpt_internal.h"

#define STATE_FORMAT "neuroshard-checkpoint"

/* ---- config.json -------------------------------------------------------------------------- */

int ns__ckpt_config_check(const ns_ckpt_llama_config *c, char *err, size_t err_size)
{
    NS_ASSERT(c != NULL);
    const char *bad = NULL;
    if (c->hidden_size == 0 || c->intermediate_size == 0 || c->num_hidden_layers == 0 ||
        c->vocab_size == 0 || c->max_position_embeddings == 0)
        bad = "a size is zero";
    else if (c->num_attention_heads == 0 || c->hidden_size % c->num_attention_heads != 0)
        bad = "num_attention_heads does not divide hidden_size";
    else if (c->num_key_value_heads == 0 || c->num_attention_heads % c->num_key_value_heads != 0)
        bad = "num_key_value_heads does not divide num_attention_heads";
    else if (!isfinite(c->rms_norm_eps) || c->rms_norm_eps <= 0 || !isfinite(c->rope_theta) ||
             c->rope_theta <= 0)
        bad = "rms_norm_eps and rope_theta must be finite and positive";
    if (bad != NULL)
        return ns__err(err, err_size, NS_EINVAL, "config.json: %s", bad);
    return NS_OK;
}

/* 15 significant digits print 1e-05 as "1e-05"; where that would not read back as the same
 * double, 17 digits, which always do. */
static size_t real_precision(const ns_ckpt_llama_config *c)
{
    char text[64];
    const double values[2] = {c->rms_norm_eps, c->rope_theta};
    for (int i = 0; i < 2; i++) {
        snprintf(text, sizeof text, "%.15g", values[i]);
        if (strtod(text, NULL) != values[i])
            return 17;
    }
    return 15;
}

static json_t *token_id(int64_t id)
{
    return id < 0 ? json_null() : json_integer((json_int_t)id);
}

char *ns__ckpt_config_json(const ns_ckpt_llama_config *c)
{
    NS_ASSERT(c != NULL);
    json_t *root = json_pack(
        "{s:[s],s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:n,s:s,s:b,s:f,s:b,s:b,s:s,s:b,s:o,"
        "s:o}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size",
        (json_int_t)c->hidden_size, "intermediate_size", (json_int_t)c->intermediate_size,
        "num_attention_heads", (json_int_t)c->num_attention_heads, "num_key_value_heads",
        (json_int_t)c->num_key_value_heads, "num_hidden_layers", (json_int_t)c->num_hidden_layers,
        "head_dim", (json_int_t)(c->hidden_size / c->num_attention_heads), "vocab_size",
        (json_int_t)c->vocab_size, "max_position_embeddings",
        (json_int_t)c->max_position_embeddings, "rms_norm_eps", c->rms_norm_eps, "rope_theta",
        c->rope_theta, "rope_scaling", "hidden_act", "silu", "attention_bias", 0,
        "attention_dropout", 0.0, "mlp_bias", 0, "tie_word_embeddings", 0, "torch_dtype", "float32",
        "use_cache", 1, "bos_token_id", token_id(c->bos_token_id), "eos_token_id",
        token_id(c->eos_token_id));
    if (root == NULL)
        return NULL;
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(real_precision(c)));
    json_decref(root);
    if (text == NULL)
        return NULL;
    size_t n = strlen(text);
    char *out = realloc(text, n + 2);
    if (out == NULL) {
        free(text);
        return NULL;
    }
    memcpy(out + n, "\n", 2);
    return out;
}

static bool get_u32(json_t *root, const char *key, uint32_t *out)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > UINT32_MAX)
        return false;
    *out = (uint32_t)json_integer_value(v);
    return true;
}

static bool get_token_id(json_t *root, const char *key, int64_t *out)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        *out = -1;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

static const char *config_fields(json_t *root, ns_ckpt_llama_config *c)
{
    if (!get_u32(root, "hidden_size", &c->hidden_size))
        return "hidden_size";
    if (!get_u32(root, "intermediate_size", &c->intermediate_size))
        return "intermediate_size";
    if (!get_u32(root, "num_attention_heads", &c->num_attention_heads))
        return "num_attention_heads";
    if (!get_u32(root, "num_key_value_heads", &c->num_key_value_heads))
        return "num_key_value_heads";
    if (!get_u32(root, "num_hidden_layers", &c->num_hidden_layers))
        return "num_hidden_layers";
    if (!get_u32(root, "vocab_size", &c->vocab_size))
        return "vocab_size";
    if (!get_u32(root, "max_position_embeddings", &c->max_position_embeddings))
        return "max_position_embeddings";
    if (!json_is_number(json_object_get(root, "rms_norm_eps")))
        return "rms_norm_eps";
    c->rms_norm_eps = json_number_value(json_object_get(root, "rms_norm_eps"));
    if (!json_is_number(json_object_get(root, "rope_theta")))
        return "rope_theta";
    c->rope_theta = json_number_value(json_object_get(root, "rope_theta"));
    if (!get_token_id(root, "bos_token_id", &c->bos_token_id))
        return "bos_token_id";
    if (!get_token_id(root, "eos_token_id", &c->eos_token_id))
        return "eos_token_id";
    return NULL;
}

int ns__ckpt_config_parse(const uint8_t *buf, size_t len, const char *label,
                          ns_ckpt_llama_config *out, char *err, size_t err_size)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ns__err(err, err_size, NS_EPARSE, "%s: %s at byte %d", label, jerr.text,
                       jerr.position);
    int rc = NS_OK;
    json_t *type = json_object_get(root, "model_type");
    ns_ckpt_llama_config c;
    const char *bad = NULL;
    if (!json_is_string(type) || strcmp(json_string_value(type), "llama") != 0)
        rc = ns__err(err, err_size, NS_EFOREIGN, "%s: model_type is not \"llama\"", label);
    else if ((bad = config_fields(root, &c)) != NULL)
        rc = ns__err(err, err_size, NS_EPARSE, "%s: field %s is missing or out of range", label,
                     bad);
    else if ((rc = ns__ckpt_config_check(&c, err, err_size)) == NS_OK)
        *out = c;
    json_decref(root);
    return rc;
}

/* ---- state.json --------------------------------------------------------------------------- */

int ns__ckpt_state_check(const ns_ckpt_state *s, char *err, size_t err_size)
{
    NS_ASSERT(s != NULL);
    if (s->rng_len > NS_CKPT_RNG_BYTES_MAX)
        return ns__err(err, err_size, NS_EINVAL, "state: rng_len %zu over %d", s->rng_len,
                       NS_CKPT_RNG_BYTES_MAX);
    if (s->step > INT64_MAX || s->timestamp_ms > INT64_MAX || s->data_epoch > INT64_MAX ||
        s->data_shard > INT64_MAX || s->data_offset > INT64_MAX)
        return ns__err(err, err_size, NS_EOVERFLOW, "state: a value is over INT64_MAX");
    return NS_OK;
}

static json_t *hex_json(const uint8_t *buf, size_t len)
{
    char text[2 * NS_CKPT_RNG_BYTES_MAX + 1];
    NS_ASSERT(len <= NS_CKPT_RNG_BYTES_MAX);
    ns_hex_encode(text, sizeof text, buf, len);
    return json_string(text);
}

static json_t *file_json(uint64_t bytes, const uint8_t sha256[NS_SHA256_BYTES])
{
    return json_pack("{s:I,s:o}", "bytes", (json_int_t)bytes, "sha256",
                     hex_json(sha256, NS_SHA256_BYTES));
}

/* The object without its own hash, in the order a person reads it. */
static json_t *state_object(const ns_ckpt_state *s, const ns_ckpt_info *info)
{
    return json_pack(
        "{s:s,s:i,s:I,s:I,s:{s:I,s:I,s:I},s:o,s:o,s:{s:o,s:o,s:o}}", "format", STATE_FORMAT,
        "version", NS_CKPT_STATE_VERSION, "step", (json_int_t)s->step, "timestamp_ms",
        (json_int_t)s->timestamp_ms, "data", "epoch", (json_int_t)s->data_epoch, "shard",
        (json_int_t)s->data_shard, "offset", (json_int_t)s->data_offset, "rng",
        hex_json(s->rng, s->rng_len), "model_sha256", hex_json(info->model_sha256, NS_SHA256_BYTES),
        "files", NS_CKPT_MODEL_FILE, file_json(info->model_bytes, info->model_sha256),
        NS_CKPT_OPTIMIZER_FILE, file_json(info->optimizer_bytes, info->optimizer_sha256),
        NS_CKPT_CONFIG_FILE, file_json(info->config_bytes, info->config_sha256));
}

static bool state_digest(json_t *obj, uint8_t out[NS_SHA256_BYTES])
{
    char *canon = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
    if (canon == NULL)
        return false;
    ns_sha256(out, canon, strlen(canon));
    free(canon);
    return true;
}

char *ns__ckpt_state_json(const ns_ckpt_state *s, const ns_ckpt_info *info)
{
    NS_ASSERT(s != NULL);
    NS_ASSERT(info != NULL);
    json_t *obj = state_object(s, info);
    uint8_t digest[NS_SHA256_BYTES];
    char *text = NULL;
    if (obj != NULL && state_digest(obj, digest) &&
        json_object_set_new(obj, "state_sha256", hex_json(digest, sizeof digest)) == 0)
        text = json_dumps(obj, JSON_INDENT(2));
    json_decref(obj);
    if (text == NULL)
        return NULL;
    size_t n = strlen(text);
    char *out = realloc(text, n + 2);
    if (out == NULL) {
        free(text);
        return NULL;
    }
    memcpy(out + n, "\n", 2);
    return out;
}

static bool get_u64(json_t *obj, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static bool get_hex(json_t *obj, const char *key, uint8_t *out, size_t max, size_t *out_len)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || json_string_length(v) % 2 != 0 || json_string_length(v) > 2 * max)
        return false;
    *out_len = json_string_length(v) / 2;
    return ns_hex_decode(out, *out_len, json_string_value(v)) == NS_OK;
}

static bool get_sha(json_t *obj, const char *key, uint8_t out[NS_SHA256_BYTES])
{
    size_t n;
    return get_hex(obj, key, out, NS_SHA256_BYTES, &n) && n == NS_SHA256_BYTES;
}

static const char *state_files(json_t *files, ns_ckpt_info *info)
{
    json_t *m = json_object_get(files, NS_CKPT_MODEL_FILE);
    json_t *o = json_object_get(files, NS_CKPT_OPTIMIZER_FILE);
    json_t *c = json_object_get(files, NS_CKPT_CONFIG_FILE);
    uint8_t model_sha[NS_SHA256_BYTES];
    if (!json_is_object(files) || json_object_size(files) != 3)
        return "files";
    if (!get_u64(m, "bytes", &info->model_bytes) || !get_sha(m, "sha256", model_sha) ||
        json_object_size(m) != 2)
        return "files." NS_CKPT_MODEL_FILE;
    if (memcmp(model_sha, info->model_sha256, NS_SHA256_BYTES) != 0)
        return "model_sha256 (differs from files." NS_CKPT_MODEL_FILE ".sha256)";
    if (!get_u64(o, "bytes", &info->optimizer_bytes) ||
        !get_sha(o, "sha256", info->optimizer_sha256) || json_object_size(o) != 2)
        return "files." NS_CKPT_OPTIMIZER_FILE;
    if (!get_u64(c, "bytes", &info->config_bytes) || !get_sha(c, "sha256", info->config_sha256) ||
        json_object_size(c) != 2)
        return "files." NS_CKPT_CONFIG_FILE;
    return NULL;
}

/* Every field of a version-1 state.json, and nothing else. */
static const char *state_fields(json_t *root, ns_ckpt_state *s, ns_ckpt_info *info)
{
    json_t *data = json_object_get(root, "data");
    if (json_object_size(root) != 8)
        return "the set of fields";
    if (!get_u64(root, "step", &s->step))
        return "step";
    if (!get_u64(root, "timestamp_ms", &s->timestamp_ms))
        return "timestamp_ms";
    if (!json_is_object(data) || json_object_size(data) != 3 ||
        !get_u64(data, "epoch", &s->data_epoch) || !get_u64(data, "shard", &s->data_shard) ||
        !get_u64(data, "offset", &s->data_offset))
        return "data";
    if (!get_hex(root, "rng", s->rng, NS_CKPT_RNG_BYTES_MAX, &s->rng_len))
        return "rng";
    if (!get_sha(root, "model_sha256", info->model_sha256))
        return "model_sha256";
    return state_files(json_object_get(root, "files"), info);
}

static int state_self_check(json_t *root, const char *label, char *err, size_t err_size)
{
    uint8_t want[NS_SHA256_BYTES];
    uint8_t got[NS_SHA256_BYTES];
    if (!get_sha(root, "state_sha256", want))
        return ns__err(err, err_size, NS_EPARSE, "%s: field state_sha256 missing or malformed",
                       label);
    json_object_del(root, "state_sha256");
    if (!state_digest(root, got))
        return ns__err(err, err_size, NS_ENOMEM, "%s: out of memory", label);
    if (memcmp(want, got, sizeof want) != 0)
        return ns__err(err, err_size, NS_ECORRUPT, "%s: state_sha256 does not match its content",
                       label);
    json_t *format = json_object_get(root, "format");
    json_t *version = json_object_get(root, "version");
    if (!json_is_string(format) || strcmp(json_string_value(format), STATE_FORMAT) != 0 ||
        !json_is_integer(version) || json_integer_value(version) != NS_CKPT_STATE_VERSION)
        return ns__err(err, err_size, NS_EFOREIGN, "%s: not a version-%d %s state file", label,
                       NS_CKPT_STATE_VERSION, STATE_FORMAT);
    return NS_OK;
}

int ns__ckpt_state_parse(const uint8_t *buf, size_t len, const char *label, ns_ckpt_state *state,
                         ns_ckpt_info *info, char *err, size_t err_size)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ns__err(err, err_size, NS_EPARSE, "%s: %s at byte %d", label, jerr.text,
                       jerr.position);
    int rc = json_is_object(root) ? state_self_check(root, label, err, err_size)
                                  : ns__err(err, err_size, NS_EPARSE, "%s: not an object", label);
    ns_ckpt_state s = {0};
    const char *bad = rc == NS_OK ? state_fields(root, &s, info) : NULL;
    if (bad != NULL)
        rc = ns__err(err, err_size, NS_EPARSE, "%s: field %s is missing or malformed", label, bad);
    json_decref(root);
    if (rc == NS_OK)
        *state = s;
    return rc;
}
