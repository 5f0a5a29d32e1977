/*
 * ckpt_load.c: opening checkpoints, verifying them, and copying them into the caller's tensors.
 *
 * Opening reads state.json first (its own hash), then checks every other file's size and SHA-256
 * against it before parsing a byte of that file; the two safetensors files are mapped and hashed
 * on two threads. Reading checks the caller's whole tensor list against the files before the
 * first byte is copied, so a checkpoint that does not fit leaves the caller's buffers as they
 * were. The newest checkpoint that passes all of this wins; the others are logged and skipped.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_internal.h"

struct ns_ckpt {
    ns_ckpt_state state;
    ns_ckpt_llama_config config;
    ns_ckpt_info info;
    ns_st_file *model;
    ns_st_file *optimizer;
};

/* A mapped file and the hash it should have. */
typedef struct mapped {
    char path[NS_CKPT_PATH_MAX];
    const uint8_t *map;
    size_t len;
    uint8_t sha256[NS_SHA256_BYTES];
} mapped;

static int map_file(const char *dir, const char *name, uint64_t want_bytes, mapped *m, char *err,
                    size_t err_size)
{
    int n = snprintf(m->path, sizeof m->path, "%s/%s", dir, name);
    if (n <= 0 || (size_t)n >= sizeof m->path)
        return ns__err(err, err_size, NS_EINVAL, "%s/%s: path too long", dir, name);
    int rc = ns__ckpt_map(m->path, SIZE_MAX, true, &m->map, &m->len);
    if (rc != NS_OK)
        return ns__err(err, err_size, rc, "%s: cannot open: %s", m->path, ns_strerror(rc));
    if (m->len != want_bytes)
        return ns__err(err, err_size, NS_ECORRUPT, "%s: %zu bytes, state.json says %llu", m->path,
                       m->len, (unsigned long long)want_bytes);
    return NS_OK;
}

static void *hash_thread(void *arg)
{
    mapped *m = arg;
    ns__sha256_buf(m->sha256, m->map, m->len);
    return NULL;
}

/* Hashes both files, the second on its own thread when it is large enough to be worth one. */
static void hash_both(mapped *a, mapped *b)
{
    pthread_t thread;
    bool threaded = b->len >= (1u << 20) && pthread_create(&thread, NULL, hash_thread, b) == 0;
    hash_thread(a);
    if (threaded)
        NS_ASSERT(pthread_join(thread, NULL) == 0);
    else
        hash_thread(b);
}

static int check_hash(const mapped *m, const uint8_t want[NS_SHA256_BYTES], char *err,
                      size_t err_size)
{
    if (memcmp(m->sha256, want, NS_SHA256_BYTES) == 0)
        return NS_OK;
    char got[2 * NS_SHA256_BYTES + 1];
    ns_hex_encode(got, sizeof got, m->sha256, NS_SHA256_BYTES);
    return ns__err(err, err_size, NS_ECORRUPT, "%s: SHA-256 %.16s... differs from state.json's",
                   m->path, got);
}

/* Maps, sizes, hashes and parses both safetensors files into c. */
static int open_tensors(ns_ckpt *c, const char *path, char *err, size_t err_size)
{
    mapped m[2] = {0};
    int rc = map_file(path, NS_CKPT_MODEL_FILE, c->info.model_bytes, &m[0], err, err_size);
    if (rc == NS_OK)
        rc = map_file(path, NS_CKPT_OPTIMIZER_FILE, c->info.optimizer_bytes, &m[1], err, err_size);
    if (rc == NS_OK) {
        hash_both(&m[0], &m[1]);
        rc = check_hash(&m[0], c->info.model_sha256, err, err_size);
    }
    if (rc == NS_OK)
        rc = check_hash(&m[1], c->info.optimizer_sha256, err, err_size);
    if (rc == NS_OK &&
        (rc = ns__st_parse_map(m[0].map, m[0].len, m[0].path, &c->model, err, err_size)) == NS_OK)
        m[0].map = NULL; /* the parsed file owns it now */
    if (rc == NS_OK && (rc = ns__st_parse_map(m[1].map, m[1].len, m[1].path, &c->optimizer, err,
                                              err_size)) == NS_OK)
        m[1].map = NULL;
    ns__ckpt_unmap(m[0].map, m[0].len);
    ns__ckpt_unmap(m[1].map, m[1].len);
    return rc;
}

static int read_json(const char *dir, const char *name, uint8_t **buf, size_t *len, char *path,
                     char *err, size_t err_size)
{
    int n = snprintf(path, NS_CKPT_PATH_MAX, "%s/%s", dir, name);
    if (n <= 0 || n >= NS_CKPT_PATH_MAX)
        return ns__err(err, err_size, NS_EINVAL, "%s/%s: path too long", dir, name);
    int rc = ns_file_read(path, NS_CKPT_JSON_BYTES_MAX, buf, len);
    if (rc != NS_OK)
        return ns__err(err, err_size, rc, "%s: cannot read: %s", path, ns_strerror(rc));
    return NS_OK;
}

/* state.json, then config.json checked against it and parsed. */
static int open_json(ns_ckpt *c, const char *path, uint64_t step, char *err, size_t err_size)
{
    char file[NS_CKPT_PATH_MAX];
    uint8_t *buf;
    size_t len;
    int rc = read_json(path, NS_CKPT_STATE_FILE, &buf, &len, file, err, err_size);
    if (rc != NS_OK)
        return rc;
    rc = ns__ckpt_state_parse(buf, len, file, &c->state, &c->info, err, err_size);
    free(buf);
    if (rc == NS_OK && c->state.step != step)
        rc = ns__err(err, err_size, NS_ECORRUPT, "%s: step %llu in a directory of step %llu", file,
                     (unsigned long long)c->state.step, (unsigned long long)step);
    if (rc != NS_OK)
        return rc;
    rc = read_json(path, NS_CKPT_CONFIG_FILE, &buf, &len, file, err, err_size);
    if (rc != NS_OK)
        return rc;
    uint8_t sha[NS_SHA256_BYTES];
    ns_sha256(sha, buf, len);
    if (len != c->info.config_bytes || memcmp(sha, c->info.config_sha256, sizeof sha) != 0)
        rc = ns__err(err, err_size, NS_ECORRUPT, "%s: size or SHA-256 differs from state.json's",
                     file);
    else
        rc = ns__ckpt_config_parse(buf, len, file, &c->config, err, err_size);
    free(buf);
    return rc;
}

int ns_ckpt_open(const char *path, ns_ckpt **out, char *err, size_t err_size)
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(out != NULL);
    const char *slash = strrchr(path, '/');
    uint64_t step;
    if (!ns__ckpt_parse_name(slash != NULL ? slash + 1 : path, &step))
        return ns__err(err, err_size, NS_EINVAL, "%s: not named " NS_CKPT_DIR_PREFIX "<step>",
                       path);
    if (strlen(path) >= NS_CKPT_PATH_MAX)
        return ns__err(err, err_size, NS_EINVAL, "%s: path too long", path);
    ns_ckpt *c = calloc(1, sizeof *c);
    if (c == NULL)
        return ns__err(err, err_size, NS_ENOMEM, "%s: out of memory", path);
    c->info.step = step;
    strcpy(c->info.path, path);
    int rc = open_json(c, path, step, err, err_size);
    if (rc == NS_OK)
        rc = open_tensors(c, path, err, err_size);
    if (rc != NS_OK) {
        ns_ckpt_close(c);
        return rc;
    }
    *out = c;
    return NS_OK;
}

void ns_ckpt_close(ns_ckpt *ckpt)
{
    if (ckpt == NULL)
        return;
    ns_st_free(ckpt->model);
    ns_st_free(ckpt->optimizer);
    free(ckpt);
}

const ns_ckpt_state *ns_ckpt_get_state(const ns_ckpt *ckpt)
{
    NS_ASSERT(ckpt != NULL);
    return &ckpt->state;
}

const ns_ckpt_llama_config *ns_ckpt_get_config(const ns_ckpt *ckpt)
{
    NS_ASSERT(ckpt != NULL);
    return &ckpt->config;
}

const ns_ckpt_info *ns_ckpt_get_info(const ns_ckpt *ckpt)
{
    NS_ASSERT(ckpt != NULL);
    return &ckpt->info;
}

const ns_st_file *ns_ckpt_model_file(const ns_ckpt *ckpt)
{
    NS_ASSERT(ckpt != NULL);
    return ckpt->model;
}

const ns_st_file *ns_ckpt_optimizer_file(const ns_ckpt *ckpt)
{
    NS_ASSERT(ckpt != NULL);
    return ckpt->optimizer;
}

/* ---- reading into the caller's tensors ---------------------------------------------------- */

static bool listed(const ns_ckpt_tensor *list, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(list[i].name, name) == 0)
            return true;
    return false;
}

/* The file holds exactly the listed tensors, each F32 of the listed shape. */
static int check_list(const ns_st_file *file, const char *label, const ns_ckpt_tensor *list,
                      size_t count, char *err, size_t err_size)
{
    NS_ASSERT(list != NULL || count == 0);
    for (size_t i = 0; i < count; i++) {
        NS_ASSERT(list[i].name != NULL);
        NS_ASSERT(list[i].ndim <= NS_ST_DIMS_MAX);
        const ns_st_tensor *t;
        int rc = ns_st_get(file, list[i].name, NS_ST_F32, list[i].shape, list[i].ndim, &t, err,
                           err_size);
        if (rc != NS_OK)
            return rc == NS_ENOENT ? ns__err(err, err_size, NS_EINVAL, "%s: no tensor \"%s\"",
                                             label, list[i].name)
                                   : rc;
        NS_ASSERT(list[i].data != NULL || t->nbytes == 0);
    }
    for (size_t i = 0; i < ns_st_count(file); i++) {
        const char *name = ns_st_at(file, i)->name;
        if (!listed(list, count, name))
            return ns__err(err, err_size, NS_EINVAL, "%s: tensor \"%s\" is not in this model",
                           label, name);
    }
    return NS_OK;
}

static void copy_list(const ns_st_file *file, const ns_ckpt_tensor *list, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const ns_st_tensor *t = ns_st_find(file, list[i].name);
        NS_ASSERT(t != NULL);
        NS_ASSERT(t->dtype == NS_ST_F32);
        if (t->nbytes > 0)
            memcpy(list[i].data, t->data, t->nbytes);
    }
}

static int check_lists(const ns_ckpt *c, const ns_ckpt_tensor *weights, size_t weights_count,
                       const ns_ckpt_tensor *optimizer, size_t optimizer_count, char *err,
                       size_t err_size)
{
    char label[NS_CKPT_PATH_MAX + 32];
    snprintf(label, sizeof label, "%s/" NS_CKPT_MODEL_FILE, c->info.path);
    int rc = check_list(c->model, label, weights, weights_count, err, err_size);
    snprintf(label, sizeof label, "%s/" NS_CKPT_OPTIMIZER_FILE, c->info.path);
    if (rc == NS_OK && optimizer != NULL)
        rc = check_list(c->optimizer, label, optimizer, optimizer_count, err, err_size);
    return rc;
}

int ns_ckpt_read(const ns_ckpt *ckpt, const ns_ckpt_tensor *weights, size_t weights_count,
                 const ns_ckpt_tensor *optimizer, size_t optimizer_count, char *err,
                 size_t err_size)
{
    NS_ASSERT(ckpt != NULL);
    NS_ASSERT(optimizer != NULL || optimizer_count == 0);
    int rc = check_lists(ckpt, weights, weights_count, optimizer, optimizer_count, err, err_size);
    if (rc != NS_OK)
        return rc;
    copy_list(ckpt->model, weights, weights_count);
    if (optimizer != NULL)
        copy_list(ckpt->optimizer, optimizer, optimizer_count);
    return NS_OK;
}

/* ---- the newest that works ---------------------------------------------------------------- */

/* What a caller asks of a candidate beyond verifying: NULL for nothing. */
typedef struct want_lists {
    const ns_ckpt_tensor *weights;
    size_t weights_count;
    const ns_ckpt_tensor *optimizer;
    size_t optimizer_count;
} want_lists;

static int try_candidate(const char *path, const want_lists *want, ns_ckpt **out, char *err,
                         size_t err_size)
{
    ns_ckpt *c;
    int rc = ns_ckpt_open(path, &c, err, err_size);
    if (rc != NS_OK)
        return rc;
    if (want != NULL)
        rc = check_lists(c, want->weights, want->weights_count, want->optimizer,
                         want->optimizer_count, err, err_size);
    if (rc != NS_OK) {
        ns_ckpt_close(c);
        return rc;
    }
    *out = c;
    return NS_OK;
}

static int pick(const char *dir, const want_lists *want, ns_ckpt **out, char *err, size_t err_size)
{
    NS_ASSERT(dir != NULL);
    NS_ASSERT(out != NULL);
    ns__ckpt_clean_leftovers(dir);
    uint64_t *steps;
    size_t count;
    int rc = ns__ckpt_scan(dir, &steps, &count);
    if (rc != NS_OK)
        return ns__err(err, err_size, rc, "%s: cannot list: %s", dir, ns_strerror(rc));
    char first[NS_CKPT_ERR_SIZE] = "";
    rc = NS_ENOENT;
    for (size_t i = 0; i < count && rc != NS_OK; i++) {
        char path[NS_CKPT_PATH_MAX];
        char why[NS_CKPT_ERR_SIZE] = "";
        int n = snprintf(path, sizeof path, "%s/" NS_CKPT_DIR_PREFIX "%llu", dir,
                         (unsigned long long)steps[i]);
        int trc = n > 0 && (size_t)n < sizeof path ? try_candidate(path, want, out, why, sizeof why)
                                                   : NS_EINVAL;
        if (trc == NS_OK) {
            rc = NS_OK;
            break;
        }
        NS_LOG_W("ckpt", "skipping checkpoint path=%s err=%s why=\"%s\"", path, ns_strerror(trc),
                 why);
        if (first[0] == '\0')
            snprintf(first, sizeof first, "%s", why);
    }
    free(steps);
    if (rc == NS_OK)
        return NS_OK;
    if (count == 0)
        return ns__err(err, err_size, NS_ENOENT, "%s: no checkpoint", dir);
    return ns__err(err, err_size, NS_ECORRUPT, "%s: none of %zu checkpoints loads; newest: %s", dir,
                   count, first);
}

int ns_ckpt_open_latest(const char *dir, ns_ckpt **out, char *err, size_t err_size)
{
    return pick(dir, NULL, out, err, err_size);
}

int ns_ckpt_load_latest(const char *dir, const ns_ckpt_tensor *weights, size_t weights_count,
                        const ns_ckpt_tensor *optimizer, size_t optimizer_count,
                        ns_ckpt_state *state, ns_ckpt_llama_config *config, ns_ckpt_info *info,
                        char *err, size_t err_size)
{
    want_lists want = {weights, weights_count, optimizer, optimizer_count};
    ns_ckpt *c;
    int rc = pick(dir, &want, &c, err, err_size);
    if (rc != NS_OK)
        return rc;
    rc = ns_ckpt_read(c, weights, weights_count, optimizer, optimizer_count, err, err_size);
    NS_ASSERT(rc == NS_OK); /* pick checked the same lists */
    if (state != NULL)
        *state = c->state;
    if (config != NULL)
        *config = c->config;
    if (info != NULL)
        *info = c->info;
    ns_ckpt_close(c);
    return NS_OK;
}
