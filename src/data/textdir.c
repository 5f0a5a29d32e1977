/*
 * textdir.c: a dataset from a folder of UTF-8 text (the daemon's --dataset DIR), and the UTF-8
 * check it needs.
 *
 * The files are read in byte order of their names, so the same folder gives the same shards on
 * every machine. Text that is not UTF-8 is refused, with the file and the offset, rather than
 * silently trained on: it is almost always a wrong file (a binary, a Latin-1 export) that the
 * user would want to know about.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

#define ASCII_MASK 0x8080808080808080ULL

/* The length of the UTF-8 sequence at s (n > 0 bytes left), or 0 when it is not valid. */
static size_t utf8_sequence_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t need;
    uint32_t cp;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        need = 2, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0; /* a continuation byte, an overlong lead (C0, C1) or F5..FF */
    }
    if (n - 1 < need)
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return need + 1;
}

bool ns_utf8_valid(const uint8_t *buf, size_t len, size_t *bad_offset)
{
    NS_ASSERT(buf != NULL || len == 0);
    size_t i = 0;
    while (i < len) {
        if (len - i >= 8) {
            uint64_t v;
            memcpy(&v, buf + i, 8);
            if ((v & ASCII_MASK) == 0) {
                i += 8;
                continue;
            }
        }
        if (buf[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_sequence_len(buf + i, len - i);
        if (n == 0) {
            if (bad_offset != NULL)
                *bad_offset = i;
            return false;
        }
        i += n;
    }
    return true;
}

static int is_text_file(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && strcmp(name + n - 4, ".txt") == 0;
}

/* Reads one file, checks it, and appends it and a blank line to all. */
static int append_text_file(const char *dir, const char *name, ns__buf *all, char *err)
{
    char path[NS_DATASET_DIR_BYTES_MAX + 256];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return ns__data_err(err, NS_ETOOBIG, "%s/%s: path too long", dir, name);
    uint8_t *text;
    size_t len;
    int rc = ns_file_read(path, NS_DATASET_TEXT_BYTES_MAX - all->len, &text, &len);
    if (rc == NS_ETOOBIG)
        return ns__data_err(err, rc, "%s: the text in %s is over the limit of %zu bytes", path, dir,
                            NS_DATASET_TEXT_BYTES_MAX);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: cannot read: %s", path, ns_strerror(rc));
    size_t bad;
    if (!ns_utf8_valid(text, len, &bad)) {
        free(text);
        return ns__data_err(err, NS_EPARSE, "%s: not valid UTF-8 at byte %zu", path, bad);
    }
    rc = ns__buf_append(all, text, len);
    if (rc == NS_OK && len > 0 && text[len - 1] != '\n')
        rc = ns__buf_append(all, "\n", 1);
    if (rc == NS_OK && len > 0)
        rc = ns__buf_append(all, "\n", 1);
    free(text);
    return rc == NS_OK ? NS_OK : ns__data_err(err, rc, "%s: out of memory", path);
}

int ns_dataset_build_from_dir(const char *src_dir, const char *out_dir, const char *name,
                              const ns_key *key, size_t shard_bytes, ns_dataset *ds,
                              char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(src_dir != NULL);
    char **names;
    size_t count;
    int rc =
        ns__data_list_dir(src_dir, is_text_file, NS_DATASET_DIR_FILES_MAX, &names, &count, err);
    if (rc != NS_OK)
        return rc;
    ns__buf all = {0};
    for (size_t i = 0; i < count && rc == NS_OK; i++)
        rc = append_text_file(src_dir, names[i], &all, err);
    ns__data_names_free(names, count);
    if (rc == NS_OK && all.len == 0)
        rc = ns__data_err(err, NS_ENOENT, "%s: no text in any .txt file", src_dir);
    if (rc == NS_OK)
        rc = ns_dataset_build(all.data, all.len, out_dir, name, key, shard_bytes, ds, err);
    free(all.data);
    return rc;
}
