/*
 * ckpt_dir.c: the checkpoint directory: which entries are checkpoints, which are leftovers, and
 * how old ones go.
 *
 * The directory holds ckpt-<step> directories (complete: each came into being by one rename of
 * a fully fsynced directory) and .tmp-<pid>-... ones (work in progress, or what a crash left). A
 * leftover is deleted once its process is gone; a checkpoint is deleted by renaming it to a .tmp-
 * name first, so that a crash half-way through the deletion leaves a leftover, never half a
 * checkpoint.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_internal.h"

/* "ckpt-<step>": decimal digits, no sign, no leading zero (except "0"), fits 64 bits. */
bool ns__ckpt_parse_name(const char *name, uint64_t *step)
{
    size_t prefix = strlen(NS_CKPT_DIR_PREFIX);
    if (strncmp(name, NS_CKPT_DIR_PREFIX, prefix) != 0)
        return false;
    const char *d = name + prefix;
    size_t n = strlen(d);
    if (n == 0 || n > 20 || (d[0] == '0' && n > 1))
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i] < '0' || d[i] > '9' || __builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(d[i] - '0'), &v))
            return false;
    }
    *step = v;
    return true;
}

static bool is_dir(const char *dir, const char *name)
{
    char path[NS_CKPT_PATH_MAX];
    struct stat st;
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    return n > 0 && (size_t)n < sizeof path && lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int by_step_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

int ns__ckpt_scan(const char *dir, uint64_t **steps, size_t *count)
{
    DIR *d = opendir(dir);
    if (d == NULL && errno == ENOENT) {
        *steps = NULL;
        *count = 0;
        return NS_OK;
    }
    if (d == NULL)
        return ns__ckpt_errno(errno);
    uint64_t *out = malloc(NS_CKPT_SCAN_MAX * sizeof *out);
    size_t n = 0;
    size_t entries = 0;
    int rc = out != NULL ? NS_OK : NS_ENOMEM;
    struct dirent *e;
    while (rc == NS_OK && (e = readdir(d)) != NULL) {
        if (++entries > NS_CKPT_SCAN_MAX)
            rc = NS_ELIMIT;
        else if (ns__ckpt_parse_name(e->d_name, &out[n]) && is_dir(dir, e->d_name))
            n++;
    }
    closedir(d);
    if (rc != NS_OK) {
        free(out);
        return rc;
    }
    qsort(out, n, sizeof *out, by_step_desc);
    *steps = out;
    *count = n;
    return NS_OK;
}

int ns_ckpt_list(const char *dir, uint64_t *steps, size_t max, size_t *count)
{
    NS_ASSERT(dir != NULL);
    NS_ASSERT(steps != NULL || max == 0);
    NS_ASSERT(count != NULL);
    uint64_t *all;
    size_t n;
    int rc = ns__ckpt_scan(dir, &all, &n);
    if (rc != NS_OK)
        return rc;
    *count = n < max ? n : max;
    if (*count > 0)
        memcpy(steps, all, *count * sizeof *steps);
    free(all);
    return NS_OK;
}

/* The pid in ".tmp-<pid>-...", or 0. */
static pid_t tmp_owner(const char *name)
{
    size_t prefix = strlen(NS_CKPT_TMP_PREFIX);
    if (strncmp(name, NS_CKPT_TMP_PREFIX, prefix) != 0)
        return 0;
    char *end;
    unsigned long pid = strtoul(name + prefix, &end, 10);
    if (end == name + prefix || *end != '-' || pid == 0 || pid > INT32_MAX)
        return 0;
    return (pid_t)pid;
}

void ns__ckpt_clean_leftovers(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    size_t entries = 0;
    while ((e = readdir(d)) != NULL && ++entries <= NS_CKPT_SCAN_MAX) {
        pid_t pid = tmp_owner(e->d_name);
        /* Ours are in use; another live process's may be too; only the dead leave litter. */
        if (pid == 0 || pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        char path[NS_CKPT_PATH_MAX];
        int n = snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (n <= 0 || (size_t)n >= sizeof path)
            continue;
        int rc = ns__ckpt_rmtree(path);
        if (rc == NS_OK)
            NS_LOG_I("ckpt", "removed leftover path=%s", path);
        else
            NS_LOG_W("ckpt", "cannot remove leftover path=%s err=%s", path, ns_strerror(rc));
    }
    closedir(d);
}

/* Renames ckpt-<step> out of the way, then deletes it. */
static int delete_checkpoint(const char *dir, uint64_t step)
{
    char from[NS_CKPT_PATH_MAX];
    char to[NS_CKPT_PATH_MAX];
    int a =
        snprintf(from, sizeof from, "%s/" NS_CKPT_DIR_PREFIX "%llu", dir, (unsigned long long)step);
    int b = snprintf(to, sizeof to, "%s/" NS_CKPT_TMP_PREFIX "%ld-old-%llu", dir, (long)getpid(),
                     (unsigned long long)step);
    if (a <= 0 || (size_t)a >= sizeof from || b <= 0 || (size_t)b >= sizeof to)
        return NS_EINVAL;
    if (rename(from, to) != 0)
        return ns__ckpt_errno(errno);
    return ns__ckpt_rmtree(to);
}

void ns__ckpt_prune(const char *dir, uint64_t saved_step, size_t keep)
{
    NS_ASSERT(keep >= 1);
    uint64_t *steps;
    size_t n;
    int rc = ns__ckpt_scan(dir, &steps, &n);
    if (rc != NS_OK) {
        NS_LOG_W("ckpt", "cannot list dir=%s err=%s", dir, ns_strerror(rc));
        return;
    }
    size_t older_kept = 0;
    bool deleted = false;
    for (size_t i = 0; i < n; i++) {
        if (steps[i] >= saved_step)
            continue; /* the new one, and any of a later step: not ours to judge */
        if (++older_kept < keep)
            continue;
        rc = delete_checkpoint(dir, steps[i]);
        deleted = true;
        if (rc != NS_OK)
            NS_LOG_W("ckpt", "cannot delete step=%llu dir=%s err=%s", (unsigned long long)steps[i],
                     dir, ns_strerror(rc));
    }
    free(steps);
    if (deleted && ns__ckpt_fsync_dir(dir) != NS_OK)
        NS_LOG_W("ckpt", "cannot fsync dir=%s", dir);
}
