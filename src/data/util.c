/*
 * util.c: small helpers the data part shares: error lines, a growing buffer, and a sorted
 * directory listing (datasets are built from directories, and the order of their files must not
 * depend on the file system, or two nodes would cut different shards from the same files).
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data_internal.h"

int ns__data_err(char *err, int rc, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, NS_DATA_ERR_BYTES, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int ns__buf_append(ns__buf *b, const void *p, size_t n)
{
    NS_ASSERT(b != NULL);
    NS_ASSERT(p != NULL || n == 0);
    if (n + 1 > b->cap - b->len || b->data == NULL) {
        size_t cap = b->cap == 0 ? 4096 : b->cap;
        while (cap - b->len < n + 1) {
            if (cap > SIZE_MAX / 2)
                return NS_ENOMEM;
            cap *= 2;
        }
        uint8_t *data = realloc(b->data, cap);
        if (data == NULL)
            return NS_ENOMEM;
        b->data = data;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return NS_OK;
}

void ns__data_names_free(char **names, size_t count)
{
    if (names == NULL)
        return;
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_regular_file(const char *dir, const char *name)
{
    char path[NS_DATASET_DIR_BYTES_MAX + 256];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return n > 0 && (size_t)n < sizeof path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int ns__data_list_dir(const char *dir, int (*keep)(const char *name), size_t max, char ***names,
                      size_t *count, char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(dir != NULL);
    NS_ASSERT(keep != NULL);
    DIR *d = opendir(dir);
    if (d == NULL)
        return ns__data_err(err, errno == ENOENT ? NS_ENOENT : NS_EIO, "%s: cannot open: %s", dir,
                            strerror(errno));
    char **list = NULL;
    size_t n = 0;
    int rc = NS_OK;
    struct dirent *e;
    while (rc == NS_OK && (e = readdir(d)) != NULL) {
        if (!keep(e->d_name) || !is_regular_file(dir, e->d_name))
            continue;
        if (n == max) {
            rc = ns__data_err(err, NS_ELIMIT, "%s: more than %zu files", dir, max);
            break;
        }
        char **grown = realloc(list, (n + 1) * sizeof *list);
        char *name = strdup(e->d_name);
        if (grown != NULL)
            list = grown;
        if (grown == NULL || name == NULL) {
            free(name);
            rc = ns__data_err(err, NS_ENOMEM, "%s: out of memory listing files", dir);
            break;
        }
        list[n++] = name;
    }
    closedir(d);
    if (rc != NS_OK) {
        ns__data_names_free(list, n);
        return rc;
    }
    if (n > 0)
        qsort(list, n, sizeof *list, name_cmp);
    *names = list;
    *count = n;
    return NS_OK;
}
