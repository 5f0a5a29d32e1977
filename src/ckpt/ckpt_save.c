/*
 * ckpt_save.c: writing a checkpoint so that a crash at any moment leaves only complete ones.
 *
 * The order is the whole point. Every file goes into dir/.tmp-<pid>-<step>/ and is fsynced; the
 * temporary directory is fsynced; one rename makes it ckpt-<step>; dir is fsynced. Before that
 * rename the new checkpoint does not exist under any name that a loader looks at; after it, every
 * byte of it is on disk. Old checkpoints go only after the new one is in place (ckpt_dir.c).
 * state.json, written last, holds the SHA-256 of every other file, so a loader checks them all.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_internal.h"

typedef struct ckpt_writer {
    const char *dir;
    char tmp[NS_CKPT_PATH_MAX];
    char final[NS_CKPT_PATH_MAX];
    ns_ckpt_info info;
    char *err;
    size_t err_size;
} ckpt_writer;

static int path_join(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, NS_CKPT_PATH_MAX, "%s/%s", dir, name);
    return n > 0 && n < NS_CKPT_PATH_MAX ? NS_OK : NS_EINVAL;
}

/* Opens dir/name for a new file that nothing else has: O_EXCL, mode 0600. */
static int create_file(const ckpt_writer *w, const char *name, int *fd)
{
    char path[NS_CKPT_PATH_MAX];
    if (path_join(path, w->tmp, name) != NS_OK)
        return ns__err(w->err, w->err_size, NS_EINVAL, "%s/%s: path too long", w->tmp, name);
    *fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (*fd < 0) {
        int rc = ns__ckpt_errno(errno);
        return ns__err(w->err, w->err_size, rc, "%s: cannot create: %s", path, ns_strerror(rc));
    }
    return NS_OK;
}

static int finish_file(const ckpt_writer *w, const char *name, int fd, int rc)
{
    if (rc == NS_OK && fsync(fd) != 0)
        rc = ns__err(w->err, w->err_size, NS_EIO, "%s/%s: fsync failed", w->tmp, name);
    if (close(fd) != 0 && rc == NS_OK)
        rc = ns__err(w->err, w->err_size, NS_EIO, "%s/%s: close failed", w->tmp, name);
    return rc;
}

static int write_small(const ckpt_writer *w, const char *name, const char *text,
                       uint8_t sha256[NS_SHA256_BYTES], uint64_t *bytes)
{
    int fd;
    int rc = create_file(w, name, &fd);
    if (rc != NS_OK)
        return rc;
    size_t len = strlen(text);
    rc = ns__ckpt_write_all(fd, text, len);
    if (rc != NS_OK)
        ns__err(w->err, w->err_size, rc, "%s/%s: write failed", w->tmp, name);
    if (sha256 != NULL)
        ns_sha256(sha256, text, len);
    if (bytes != NULL)
        *bytes = len;
    return finish_file(w, name, fd, rc);
}

/* The caller's float tensors as safetensors F32 entries (allocated; the caller frees). */
static int st_view(const ns_ckpt_tensor *in, size_t count, ns_st_tensor **out, char *err,
                   size_t err_size)
{
    NS_ASSERT(in != NULL || count == 0);
    ns_st_tensor *t = calloc(count + 1, sizeof *t);
    *out = t; /* also on failure: NULL, or freed below and reset */
    if (t == NULL)
        return ns__err(err, err_size, NS_ENOMEM, "out of memory");
    for (size_t i = 0; i < count; i++) {
        uint64_t bytes;
        if (in[i].ndim > NS_ST_DIMS_MAX ||
            !ns__st_shape_bytes(in[i].shape, in[i].ndim, NS_ST_F32, &bytes) || bytes > SIZE_MAX) {
            free(t);
            *out = NULL;
            return ns__err(err, err_size, NS_EINVAL, "tensor \"%s\": shape out of range",
                           in[i].name != NULL ? in[i].name : "");
        }
        t[i] = (ns_st_tensor){.name = in[i].name,
                              .dtype = NS_ST_F32,
                              .ndim = in[i].ndim,
                              .data = in[i].data,
                              .nbytes = (size_t)bytes};
        memcpy(t[i].shape, in[i].shape, sizeof t[i].shape);
    }
    return NS_OK;
}

/* One safetensors file of the checkpoint, metadata {"format": "pt"} as transformers expects. */
static int write_tensors(const ckpt_writer *w, const char *name, const ns_ckpt_tensor *tensors,
                         size_t count, uint8_t sha256[NS_SHA256_BYTES], uint64_t *bytes)
{
    static const ns_st_meta meta[] = {{"format", "pt"}};
    ns_st_tensor *view;
    int rc = st_view(tensors, count, &view, w->err, w->err_size);
    if (rc != NS_OK)
        return rc;
    int fd;
    rc = create_file(w, name, &fd);
    if (rc == NS_OK) {
        char why[NS_ST_ERR_SIZE];
        rc = ns_st_write_fd(fd, view, count, meta, 1, sha256, bytes, why, sizeof why);
        if (rc != NS_OK)
            ns__err(w->err, w->err_size, rc, "%s/%s: %s", w->tmp, name, why);
        rc = finish_file(w, name, fd, rc);
    }
    free(view);
    return rc;
}

/* The optimizer file, written on a thread of its own while the caller's thread writes the
 * weights: hashing is most of a save's CPU time, and the two files hash independently. */
typedef struct optimizer_job {
    ckpt_writer w; /* a copy whose err points at err below */
    const ns_ckpt_tensor *tensors;
    size_t count;
    int rc;
    char err[NS_CKPT_ERR_SIZE];
} optimizer_job;

static void *optimizer_thread(void *arg)
{
    optimizer_job *job = arg;
    job->rc = write_tensors(&job->w, NS_CKPT_OPTIMIZER_FILE, job->tensors, job->count,
                            job->w.info.optimizer_sha256, &job->w.info.optimizer_bytes);
    return NULL;
}

static int write_both(ckpt_writer *w, const ns_ckpt_tensor *weights, size_t weights_count,
                      const ns_ckpt_tensor *optimizer, size_t optimizer_count)
{
    optimizer_job *job = malloc(sizeof *job);
    if (job == NULL)
        return ns__err(w->err, w->err_size, NS_ENOMEM, "out of memory");
    job->w = *w;
    job->w.err = job->err;
    job->w.err_size = sizeof job->err;
    job->tensors = optimizer;
    job->count = optimizer_count;
    pthread_t thread;
    bool threaded = pthread_create(&thread, NULL, optimizer_thread, job) == 0;
    int rc = write_tensors(w, NS_CKPT_MODEL_FILE, weights, weights_count, w->info.model_sha256,
                           &w->info.model_bytes);
    if (threaded)
        NS_ASSERT(pthread_join(thread, NULL) == 0);
    else
        optimizer_thread(job);
    if (rc == NS_OK && job->rc != NS_OK)
        rc = ns__err(w->err, w->err_size, job->rc, "%s", job->err);
    memcpy(w->info.optimizer_sha256, job->w.info.optimizer_sha256, NS_SHA256_BYTES);
    w->info.optimizer_bytes = job->w.info.optimizer_bytes;
    free(job);
    return rc;
}

static int write_files(ckpt_writer *w, const ns_ckpt_tensor *weights, size_t weights_count,
                       const ns_ckpt_tensor *optimizer, size_t optimizer_count,
                       const ns_ckpt_state *state, const ns_ckpt_llama_config *config)
{
    ns_ckpt_info *info = &w->info;
    int rc = write_both(w, weights, weights_count, optimizer, optimizer_count);
    char *text = rc == NS_OK ? ns__ckpt_config_json(config) : NULL;
    if (rc == NS_OK && text == NULL)
        rc = ns__err(w->err, w->err_size, NS_ENOMEM, "out of memory for config.json");
    if (rc == NS_OK)
        rc = write_small(w, NS_CKPT_CONFIG_FILE, text, info->config_sha256, &info->config_bytes);
    free(text);
    text = rc == NS_OK ? ns__ckpt_state_json(state, info) : NULL;
    if (rc == NS_OK && text == NULL)
        rc = ns__err(w->err, w->err_size, NS_ENOMEM, "out of memory for state.json");
    if (rc == NS_OK)
        rc = write_small(w, NS_CKPT_STATE_FILE, text, NULL, NULL);
    free(text);
    if (rc == NS_OK && ns__ckpt_fsync_dir(w->tmp) != NS_OK)
        rc = ns__err(w->err, w->err_size, NS_EIO, "%s: fsync failed", w->tmp);
    return rc;
}

/* Makes dir when missing (and fsyncs its parent, so that the new entry survives a crash). */
static int ensure_dir(const ckpt_writer *w)
{
    struct stat st;
    if (stat(w->dir, &st) == 0)
        return S_ISDIR(st.st_mode)
                   ? NS_OK
                   : ns__err(w->err, w->err_size, NS_EINVAL, "%s: not a directory", w->dir);
    int rc = ns_mkdir_p(w->dir);
    if (rc != NS_OK)
        return ns__err(w->err, w->err_size, rc, "%s: cannot create: %s", w->dir, ns_strerror(rc));
    char parent[NS_CKPT_PATH_MAX];
    if (path_join(parent, w->dir, "..") == NS_OK)
        (void)ns__ckpt_fsync_dir(parent);
    return NS_OK;
}

/* Puts the finished directory in place. A checkpoint of the same step already there is swapped
 * out in one step (RENAME_EXCHANGE), so that one of the two is always in place, then deleted. */
static int publish(const ckpt_writer *w)
{
    if (rename(w->tmp, w->final) == 0)
        return NS_OK;
    if (errno != EEXIST && errno != ENOTEMPTY)
        return ns__err(w->err, w->err_size, ns__ckpt_errno(errno), "%s: cannot rename to %s",
                       w->tmp, w->final);
    if (renameat2(AT_FDCWD, w->tmp, AT_FDCWD, w->final, RENAME_EXCHANGE) != 0)
        return ns__err(w->err, w->err_size, NS_EEXIST,
                       "%s exists and cannot be replaced atomically here", w->final);
    NS_LOG_I("ckpt", "replaced path=%s", w->final);
    return NS_OK;
}

static int check_args(const ckpt_writer *w, const ns_ckpt_state *state,
                      const ns_ckpt_llama_config *config, size_t keep)
{
    if (keep < 1 || keep > NS_CKPT_KEEP_MAX)
        return ns__err(w->err, w->err_size, NS_EINVAL, "keep %zu outside 1..%d", keep,
                       NS_CKPT_KEEP_MAX);
    int rc = ns__ckpt_state_check(state, w->err, w->err_size);
    if (rc == NS_OK)
        rc = ns__ckpt_config_check(config, w->err, w->err_size);
    return rc;
}

int ns_ckpt_save(const char *dir, const ns_ckpt_tensor *weights, size_t weights_count,
                 const ns_ckpt_tensor *optimizer, size_t optimizer_count,
                 const ns_ckpt_state *state, const ns_ckpt_llama_config *config, size_t keep,
                 ns_ckpt_info *info, char *err, size_t err_size)
{
    NS_ASSERT(dir != NULL);
    NS_ASSERT(weights != NULL || weights_count == 0);
    NS_ASSERT(optimizer != NULL || optimizer_count == 0);
    NS_ASSERT(state != NULL);
    NS_ASSERT(config != NULL);
    ckpt_writer w = {.dir = dir, .err = err, .err_size = err_size};
    w.info.step = state->step;
    int rc = check_args(&w, state, config, keep);
    int a = snprintf(w.tmp, sizeof w.tmp, "%s/" NS_CKPT_TMP_PREFIX "%ld-%llu", dir, (long)getpid(),
                     (unsigned long long)state->step);
    int b = snprintf(w.final, sizeof w.final, "%s/" NS_CKPT_DIR_PREFIX "%llu", dir,
                     (unsigned long long)state->step);
    if (rc == NS_OK &&
        (a <= 0 || b <= 0 || (size_t)a >= sizeof w.tmp || (size_t)b >= sizeof w.final))
        rc = ns__err(err, err_size, NS_EINVAL, "%s: path too long", dir);
    if (rc == NS_OK)
        rc = ensure_dir(&w);
    if (rc != NS_OK)
        return rc;
    ns__ckpt_clean_leftovers(dir);
    (void)ns__ckpt_rmtree(w.tmp); /* this process's own, from a save that died with an error */
    if (mkdir(w.tmp, 0700) != 0)
        return ns__err(err, err_size, ns__ckpt_errno(errno), "%s: cannot create", w.tmp);
    rc = write_files(&w, weights, weights_count, optimizer, optimizer_count, state, config);
    if (rc == NS_OK)
        rc = publish(&w);
    if (rc == NS_OK && ns__ckpt_fsync_dir(dir) != NS_OK)
        rc = ns__err(err, err_size, NS_EIO, "%s: fsync failed", dir);
    (void)ns__ckpt_rmtree(w.tmp); /* on failure the attempt; after an exchange the old one */
    if (rc != NS_OK)
        return rc;
    NS_LOG_I("ckpt", "saved step=%llu path=%s bytes=%llu", (unsigned long long)state->step, w.final,
             (unsigned long long)(w.info.model_bytes + w.info.optimizer_bytes));
    ns__ckpt_prune(dir, state->step, keep);
    memcpy(w.info.path, w.final, sizeof w.info.path);
    if (info != NULL)
        *info = w.info;
    return NS_OK;
}
