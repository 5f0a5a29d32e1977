/*
 * st_write.c: the safetensors writer, and the dtype table both directions share.
 *
 * The output is canonical and follows the layout of Hugging Face's safetensors writer:
 * "__metadata__" first, tensors ordered by dtype size (largest first) then by name, the JSON
 * compact (jansson keeps insertion order: dtype, shape, data_offsets), the header padded with
 * spaces to a multiple of 8 so that the data starts aligned. Canonical output is what lets a
 * model hash be the plain SHA-256 of the file. Data goes from the caller's buffers straight to
 * the file, never copied; a second thread hashes the same bytes while the first writes them.
 * Everything the reader would refuse is refused here first, with NS_EINVAL.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ckpt_internal.h"

/* A valid file's header holds at most this many JSON values (see st_read.c's scan): per tensor
 * the name, its object, 3 fields, 2 arrays, their elements and separators. */
_Static_assert((uint64_t)NS_ST_TENSORS_MAX *(12 + NS_ST_DIMS_MAX) + 3 * NS_ST_METADATA_MAX + 8 <=
                   NS_ST_JSON_VALUES_MAX,
               "the writer's largest header must pass the reader's value limit");

/* ---- dtypes ------------------------------------------------------------------------------- */

const char *ns_st_dtype_name(ns_st_dtype dtype)
{
    switch (dtype) {
    case NS_ST_BOOL:
        return "BOOL";
    case NS_ST_U8:
        return "U8";
    case NS_ST_I8:
        return "I8";
    case NS_ST_U16:
        return "U16";
    case NS_ST_I16:
        return "I16";
    case NS_ST_F16:
        return "F16";
    case NS_ST_BF16:
        return "BF16";
    case NS_ST_U32:
        return "U32";
    case NS_ST_I32:
        return "I32";
    case NS_ST_F32:
        return "F32";
    case NS_ST_U64:
        return "U64";
    case NS_ST_I64:
        return "I64";
    case NS_ST_F64:
        return "F64";
    }
    NS_ASSERT(!"unknown dtype");
    return "?";
}

size_t ns_st_dtype_size(ns_st_dtype dtype)
{
    switch (dtype) {
    case NS_ST_BOOL:
    case NS_ST_U8:
    case NS_ST_I8:
        return 1;
    case NS_ST_U16:
    case NS_ST_I16:
    case NS_ST_F16:
    case NS_ST_BF16:
        return 2;
    case NS_ST_U32:
    case NS_ST_I32:
    case NS_ST_F32:
        return 4;
    case NS_ST_U64:
    case NS_ST_I64:
    case NS_ST_F64:
        return 8;
    }
    NS_ASSERT(!"unknown dtype");
    return 0;
}

bool ns__st_dtype_parse(const char *text, ns_st_dtype *out)
{
    for (int d = 0; d < NS_ST_DTYPE_COUNT; d++) {
        if (strcmp(text, ns_st_dtype_name((ns_st_dtype)d)) == 0) {
            *out = (ns_st_dtype)d;
            return true;
        }
    }
    return false;
}

bool ns__st_shape_bytes(const uint64_t *shape, size_t ndim, ns_st_dtype dtype, uint64_t *bytes)
{
    uint64_t n = ns_st_dtype_size(dtype);
    bool fits = true;
    for (size_t i = 0; i < ndim && fits; i++)
        fits = !__builtin_mul_overflow(n, shape[i], &n);
    *bytes = fits ? n : 0;
    return fits;
}

/* ---- checks and order --------------------------------------------------------------------- */

typedef struct st_out {
    const ns_st_tensor *tensors;
    size_t count;
    const ns_st_tensor **sorted; /* in file order */
    uint8_t *head;               /* 8-byte length and the padded JSON */
    size_t head_len;
    uint64_t data_len;
} st_out;

static int st_check_tensor(const ns_st_tensor *t, char *err, size_t err_size)
{
    size_t name_len = t->name != NULL ? strlen(t->name) : 0;
    if (name_len == 0 || name_len > NS_ST_NAME_BYTES_MAX || strcmp(t->name, "__metadata__") == 0)
        return ns__err(err, err_size, NS_EINVAL,
                       "tensor name \"%.64s\" is empty, too long or "
                       "reserved",
                       t->name != NULL ? t->name : "");
    if (t->ndim > NS_ST_DIMS_MAX)
        return ns__err(err, err_size, NS_EINVAL, "tensor \"%s\": %zu dimensions, more than %d",
                       t->name, t->ndim, NS_ST_DIMS_MAX);
    uint64_t bytes;
    bool fits = ns__st_shape_bytes(t->shape, t->ndim, t->dtype, &bytes);
    for (size_t i = 0; i < t->ndim; i++)
        fits = fits && t->shape[i] <= INT64_MAX;
    if (!fits || bytes != t->nbytes || (t->data == NULL && t->nbytes > 0))
        return ns__err(err, err_size, NS_EINVAL,
                       "tensor \"%s\": nbytes %zu does not match its shape and dtype", t->name,
                       t->nbytes);
    return NS_OK;
}

static int by_file_order(const void *a, const void *b)
{
    const ns_st_tensor *x = *(const ns_st_tensor *const *)a;
    const ns_st_tensor *y = *(const ns_st_tensor *const *)b;
    size_t sx = ns_st_dtype_size(x->dtype);
    size_t sy = ns_st_dtype_size(y->dtype);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Checks every tensor and sorts them into file order; a duplicate name shows up as neighbours. */
static int st_order(st_out *o, char *err, size_t err_size)
{
    if (o->count > NS_ST_TENSORS_MAX)
        return ns__err(err, err_size, NS_EINVAL, "%zu tensors, more than %u", o->count,
                       (unsigned)NS_ST_TENSORS_MAX);
    for (size_t i = 0; i < o->count; i++) {
        int rc = st_check_tensor(&o->tensors[i], err, err_size);
        if (rc != NS_OK)
            return rc;
    }
    o->sorted = malloc((o->count + 1) * sizeof *o->sorted);
    if (o->sorted == NULL)
        return NS_ENOMEM;
    for (size_t i = 0; i < o->count; i++)
        o->sorted[i] = &o->tensors[i];
    qsort(o->sorted, o->count, sizeof *o->sorted, by_file_order);
    for (size_t i = 1; i < o->count; i++) {
        const char *name = o->sorted[i]->name;
        if (strcmp(name, o->sorted[i - 1]->name) == 0)
            return ns__err(err, err_size, NS_EINVAL, "tensor name \"%s\" appears twice", name);
    }
    return NS_OK;
}

/* ---- the header --------------------------------------------------------------------------- */

static json_t *st_entry_json(const ns_st_tensor *t, uint64_t begin)
{
    json_t *shape = json_array();
    bool ok = shape != NULL;
    for (size_t i = 0; ok && i < t->ndim; i++)
        ok = json_array_append_new(shape, json_integer((json_int_t)t->shape[i])) == 0;
    if (!ok) {
        json_decref(shape);
        return NULL;
    }
    /* "o" hands shape over to the entry, also when packing fails. */
    return json_pack("{s:s,s:o,s:[I,I]}", "dtype", ns_st_dtype_name(t->dtype), "shape", shape,
                     "data_offsets", (json_int_t)begin, (json_int_t)(begin + t->nbytes));
}

static json_t *st_meta_json(const ns_st_meta *meta, size_t meta_count)
{
    json_t *obj = json_object();
    bool ok = obj != NULL;
    for (size_t i = 0; ok && i < meta_count; i++) {
        const ns_st_meta *m = &meta[i];
        ok = m->key != NULL && m->value != NULL && strlen(m->key) <= NS_ST_NAME_BYTES_MAX &&
             strlen(m->value) <= NS_ST_VALUE_BYTES_MAX && json_object_get(obj, m->key) == NULL &&
             json_object_set_new(obj, m->key, json_string(m->value)) == 0;
    }
    if (!ok) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* Builds the compact JSON in file order and the 8-byte length before it, padded to 8. */
static int st_header(st_out *o, const ns_st_meta *meta, size_t meta_count, char *err,
                     size_t err_size)
{
    if (meta_count > NS_ST_METADATA_MAX)
        return ns__err(err, err_size, NS_EINVAL, "%zu metadata entries, more than %d", meta_count,
                       NS_ST_METADATA_MAX);
    json_t *root = json_object();
    json_t *m = meta_count > 0 ? st_meta_json(meta, meta_count) : NULL;
    int rc = root != NULL && (meta_count == 0 || m != NULL) ? NS_OK : NS_EINVAL;
    if (rc == NS_OK && m != NULL && json_object_set_new(root, "__metadata__", m) != 0)
        rc = NS_EINVAL;
    for (size_t i = 0; rc == NS_OK && i < o->count; i++) {
        const ns_st_tensor *t = o->sorted[i];
        json_t *entry = st_entry_json(t, o->data_len);
        if (entry == NULL || json_object_set_new(root, t->name, entry) != 0)
            rc = NS_EINVAL;
        o->data_len += t->nbytes;
    }
    char *text = rc == NS_OK ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (text == NULL)
        return ns__err(err, err_size, NS_EINVAL,
                       "metadata or a tensor name is not valid UTF-8, "
                       "or a metadata key is repeated or too long");
    size_t n = strlen(text);
    size_t padded = (n + 7) / 8 * 8;
    if (padded > NS_ST_HEADER_BYTES_MAX) {
        free(text);
        return ns__err(err, err_size, NS_ETOOBIG, "header of %zu bytes over the limit of %u",
                       padded, (unsigned)NS_ST_HEADER_BYTES_MAX);
    }
    o->head_len = 8 + padded;
    o->head = malloc(o->head_len);
    if (o->head != NULL) {
        for (int i = 0; i < 8; i++)
            o->head[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        memcpy(o->head + 8, text, n);
        memset(o->head + 8 + n, ' ', padded - n);
    }
    free(text);
    return o->head != NULL ? NS_OK : NS_ENOMEM;
}

static int st_prepare(st_out *o, const ns_st_tensor *tensors, size_t count, const ns_st_meta *meta,
                      size_t meta_count, char *err, size_t err_size)
{
    NS_ASSERT(tensors != NULL || count == 0);
    NS_ASSERT(meta != NULL || meta_count == 0);
    *o = (st_out){.tensors = tensors, .count = count};
    int rc = st_order(o, err, err_size);
    if (rc == NS_OK)
        rc = st_header(o, meta, meta_count, err, err_size);
    if (rc == NS_ENOMEM)
        ns__err(err, err_size, rc, "out of memory building a safetensors header");
    return rc;
}

static void st_out_free(st_out *o)
{
    free(o->sorted);
    free(o->head);
}

int ns_st_build(const ns_st_tensor *tensors, size_t count, const ns_st_meta *meta,
                size_t meta_count, uint8_t **out, size_t *out_len, char *err, size_t err_size)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    st_out o;
    int rc = st_prepare(&o, tensors, count, meta, meta_count, err, err_size);
    uint8_t *buf = NULL;
    if (rc == NS_OK && o.data_len > SIZE_MAX - o.head_len)
        rc = ns__err(err, err_size, NS_ETOOBIG, "file does not fit in memory");
    if (rc == NS_OK && (buf = malloc(o.head_len + (size_t)o.data_len + 1)) == NULL)
        rc = ns__err(err, err_size, NS_ENOMEM, "out of memory for a safetensors file");
    if (rc == NS_OK) {
        memcpy(buf, o.head, o.head_len);
        size_t at = o.head_len;
        for (size_t i = 0; i < count; i++) {
            const ns_st_tensor *t = o.sorted[i];
            if (t->nbytes > 0)
                memcpy(buf + at, t->data, t->nbytes);
            at += t->nbytes;
        }
        NS_ASSERT(at == o.head_len + o.data_len);
        *out = buf;
        *out_len = at;
    }
    st_out_free(&o);
    return rc;
}

/* ---- to a file, hashed on the side -------------------------------------------------------- */

typedef struct st_hash_job {
    const st_out *o;
    uint8_t sha256[NS_SHA256_BYTES];
} st_hash_job;

static void st_hash(st_hash_job *job)
{
    const st_out *o = job->o;
    ns__sha256 s;
    ns__sha256_init(&s);
    ns__sha256_update(&s, o->head, o->head_len);
    for (size_t i = 0; i < o->count; i++) {
        const ns_st_tensor *t = o->sorted[i];
        ns__sha256_update(&s, t->data, t->nbytes);
    }
    ns__sha256_final(&s, job->sha256);
}

static void *st_hash_thread(void *arg)
{
    st_hash(arg);
    return NULL;
}

static int st_write_all_parts(int fd, const st_out *o)
{
    int rc = ns__ckpt_write_all(fd, o->head, o->head_len);
    for (size_t i = 0; rc == NS_OK && i < o->count; i++) {
        const ns_st_tensor *t = o->sorted[i];
        rc = ns__ckpt_write_all(fd, t->data, t->nbytes);
    }
    return rc;
}

int ns_st_write_fd(int fd, const ns_st_tensor *tensors, size_t count, const ns_st_meta *meta,
                   size_t meta_count, uint8_t sha256[NS_SHA256_BYTES], uint64_t *written_bytes,
                   char *err, size_t err_size)
{
    NS_ASSERT(fd >= 0);
    st_out o;
    int rc = st_prepare(&o, tensors, count, meta, meta_count, err, err_size);
    if (rc != NS_OK) {
        st_out_free(&o);
        return rc;
    }
    st_hash_job job = {.o = &o};
    pthread_t thread;
    bool threaded = sha256 != NULL && o.data_len >= (1u << 20) &&
                    pthread_create(&thread, NULL, st_hash_thread, &job) == 0;
    rc = st_write_all_parts(fd, &o);
    if (threaded)
        NS_ASSERT(pthread_join(thread, NULL) == 0);
    else if (sha256 != NULL && rc == NS_OK)
        st_hash(&job);
    if (rc != NS_OK)
        ns__err(err, err_size, rc, "write failed: %s", ns_strerror(rc));
    if (rc == NS_OK && sha256 != NULL)
        memcpy(sha256, job.sha256, NS_SHA256_BYTES);
    if (rc == NS_OK && written_bytes != NULL)
        *written_bytes = o.head_len + o.data_len;
    st_out_free(&o);
    return rc;
}
