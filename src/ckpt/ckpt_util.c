/*
 * ckpt_util.c: the small helpers the checkpoint files share: messages, errno codes, whole writes,
 * directory fsync, tree deletion and read-only mappings.
 *
 * Kept apart so that st_read.c and st_write.c stay about the format and checkpoint.c about the
 * order in which things reach the disk.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_internal.h"

int ns__err(char *err, size_t err_size, int code, const char *fmt, ...)
{
    if (err != NULL && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return code;
}

int ns__ckpt_errno(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return NS_ENOENT;
    case EEXIST:
    case ENOTEMPTY:
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

int ns__ckpt_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
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

int ns__ckpt_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return ns__ckpt_errno(errno);
    int rc = fsync(fd) == 0 ? NS_OK : NS_EIO;
    close(fd);
    return rc;
}

static int rmtree_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    return rc == 0 || errno == ENOENT ? 0 : -1;
}

int ns__ckpt_rmtree(const char *path)
{
    /* FTW_DEPTH: contents before their directory; FTW_PHYS: a link is removed, not followed. */
    if (nftw(path, rmtree_entry, 8, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0)
        return errno == ENOENT ? NS_OK : ns__ckpt_errno(errno);
    return NS_OK;
}

int ns__ckpt_map(const char *path, size_t len_max, bool populate, const uint8_t **map, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return ns__ckpt_errno(errno);
    struct stat st;
    int rc = NS_OK;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        rc = NS_EIO;
    else if ((uint64_t)st.st_size > len_max || (uint64_t)st.st_size > SIZE_MAX)
        rc = NS_ETOOBIG;
    void *p = NULL;
    if (rc == NS_OK && st.st_size > 0) {
        /* MAP_POPULATE reads the whole file in one go, far cheaper than a fault a page. */
        p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | (populate ? MAP_POPULATE : 0),
                 fd, 0);
        if (p == MAP_FAILED)
            rc = ns__ckpt_errno(errno);
        else
            madvise(p, (size_t)st.st_size, MADV_SEQUENTIAL);
    }
    close(fd);
    if (rc != NS_OK)
        return rc;
    *map = p;
    *len = (size_t)st.st_size;
    return NS_OK;
}

void ns__ckpt_unmap(const uint8_t *map, size_t len)
{
    if (map != NULL)
        NS_ASSERT(munmap((void *)map, len) == 0);
}
