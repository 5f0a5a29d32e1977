/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors reader, ns_st_parse.
 *
 * Checkpoint files come from disk and, once nodes fetch snapshots from each other (S12), from
 * peers: any bytes must be refused with an error code, never crash, read out of bounds or leak.
 * On the inputs that parse, every view must lie inside the input, tensors must tile the data
 * exactly, the typed lookup must find each tensor by its own name, dtype and shape, and writing
 * the parsed tensors back out must give a file that parses to the same tensors.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "neuroshard/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_views(const ns_st_file *f, const uint8_t *data, size_t size)
{
    uint64_t covered = 0;
    for (size_t i = 0; i < ns_st_count(f); i++) {
        const ns_st_tensor *t = ns_st_at(f, i);
        const uint8_t *p = t->data;
        NS_ASSERT(p >= data && t->nbytes <= size && p + t->nbytes <= data + size);
        NS_ASSERT(t->ndim <= NS_ST_DIMS_MAX);
        const ns_st_tensor *got;
        NS_ASSERT(ns_st_get(f, t->name, t->dtype, t->shape, t->ndim, &got, NULL, 0) == NS_OK);
        NS_ASSERT(got == t);
        covered += t->nbytes;
    }
    NS_ASSERT(covered <= size);
}

/* Writes what was read and reads it again: same names, dtypes, shapes and bytes. */
static void check_rewrite(const ns_st_file *f)
{
    size_t n = ns_st_count(f);
    ns_st_tensor *ts = calloc(n + 1, sizeof *ts);
    ns_st_meta *ms = calloc(ns_st_metadata_count(f) + 1, sizeof *ms);
    NS_ASSERT(ts != NULL && ms != NULL);
    for (size_t i = 0; i < n; i++)
        ts[i] = *ns_st_at(f, i);
    for (size_t i = 0; i < ns_st_metadata_count(f); i++)
        ms[i] = *ns_st_metadata_at(f, i);
    uint8_t *buf;
    size_t len;
    int rc = ns_st_build(ts, n, ms, ns_st_metadata_count(f), &buf, &len, NULL, 0);
    /* Only a header grown past its limit by padding and reordering may be refused. */
    NS_ASSERT(rc == NS_OK || rc == NS_ETOOBIG);
    if (rc == NS_OK) {
        ns_st_file *g;
        NS_ASSERT(ns_st_parse(buf, len, "rewrite", &g, NULL, 0) == NS_OK);
        NS_ASSERT(ns_st_count(g) == n);
        for (size_t i = 0; i < n; i++) {
            const ns_st_tensor *a = ns_st_at(f, i);
            const ns_st_tensor *b = ns_st_at(g, i);
            NS_ASSERT(strcmp(a->name, b->name) == 0 && a->dtype == b->dtype);
            NS_ASSERT(a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0);
        }
        ns_st_free(g);
        free(buf);
    }
    free(ts);
    free(ms);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_st_file *f = NULL;
    char err[NS_ST_ERR_SIZE];
    int rc = ns_st_parse(data, size, "fuzz.safetensors", &f, err, sizeof err);
    if (rc != NS_OK) {
        NS_ASSERT(rc < 0 && rc > -NS_ERR_COUNT_);
        NS_ASSERT(f == NULL);
        NS_ASSERT(strncmp(err, "fuzz.safetensors", 16) == 0);
        return 0;
    }
    check_views(f, data, size);
    check_rewrite(f);
    ns_st_free(f);
    return 0;
}
