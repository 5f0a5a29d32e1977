/*
 * file.c: whole-file reads and crash-safe whole-file writes, and the data directory's place.
 *
 * Every file neuroshard writes outside SQLite (key, API token, address) goes through
 * ns_file_write_atomic: a crash leaves the old file or the new one, never half of one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "neuroshard/base.h"

static int errno_to_ns(int e)
{
    switch (e) {
    case ENOENT:
        return NS_ENOENT;
    case EEXIST:
        return NS_EEXIST;
    case EACCES:
    case EPERM:
    case EROFS:
        return NS_EPERM;
    case ENOMEM:
        return NS_ENOMEM;
    default:
        return NS_EIO;
    }
}

static int fsync_parent_dir(const char *path)
{
    char dir[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof dir)
        return NS_EINVAL;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno_to_ns(errno);
    int rc = fsync(fd) == 0 ? NS_OK : NS_EIO;
    close(fd);
    return rc;
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return NS_EIO;
        p += w;
        len -= (size_t)w;
    }
    return NS_OK;
}

/* Writes and fsyncs a temporary file beside path; on success its name is in tmp. */
static int write_temp(const char *path, const void *buf, size_t len, unsigned mode, char *tmp,
                      size_t tmp_size)
{
    if (snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid()) >= (int)tmp_size)
        return NS_EINVAL;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (fd < 0)
        return errno_to_ns(errno);
    int rc = fchmod(fd, (mode_t)mode) == 0 ? NS_OK : NS_EIO; /* the umask must not widen it */
    if (rc == NS_OK)
        rc = write_all(fd, buf, len);
    if (rc == NS_OK && fsync(fd) != 0)
        rc = NS_EIO;
    if (close(fd) != 0 && rc == NS_OK)
        rc = NS_EIO;
    if (rc != NS_OK)
        unlink(tmp);
    return rc;
}

int ns_file_write_atomic(const char *path, const void *buf, size_t len, unsigned mode)
{
    char tmp[PATH_MAX];
    int rc = write_temp(path, buf, len, mode, tmp, sizeof tmp);
    if (rc != NS_OK)
        return rc;
    if (rename(tmp, path) != 0) {
        rc = errno_to_ns(errno);
        unlink(tmp);
        return rc;
    }
    return fsync_parent_dir(path);
}

int ns_file_create_atomic(const char *path, const void *buf, size_t len, unsigned mode)
{
    char tmp[PATH_MAX];
    int rc = write_temp(path, buf, len, mode, tmp, sizeof tmp);
    if (rc != NS_OK)
        return rc;
    rc = link(tmp, path) == 0 ? NS_OK : errno_to_ns(errno); /* link never replaces */
    unlink(tmp);
    if (rc != NS_OK)
        return rc;
    return fsync_parent_dir(path);
}

int ns_file_read(const char *path, size_t max_len, uint8_t **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno_to_ns(errno);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return NS_EIO;
    }
    if ((uint64_t)st.st_size > max_len) {
        close(fd);
        return NS_ETOOBIG;
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return NS_ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != (size_t)st.st_size) {
        free(buf);
        return NS_EIO;
    }
    buf[got] = '\0';
    *out = buf;
    *out_len = got;
    return NS_OK;
}

int ns_default_data_dir(char *out, size_t out_size)
{
    const char *xdg = getenv("XDG_DATA_HOME");
    int n;
    if (xdg != NULL && xdg[0] == '/') {
        n = snprintf(out, out_size, "%s/neuroshard", xdg);
    } else {
        const char *home = getenv("HOME");
        if (home == NULL || home[0] != '/')
            return NS_ENOENT;
        n = snprintf(out, out_size, "%s/.local/share/neuroshard", home);
    }
    return (n < 0 || (size_t)n >= out_size) ? NS_EINVAL : NS_OK;
}

int ns_mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return NS_EINVAL;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return errno_to_ns(errno);
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return errno_to_ns(errno);
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return NS_EIO;
    return NS_OK;
}
