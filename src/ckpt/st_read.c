/*
 * st_read.c: the safetensors reader, strictly bounded.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON, then the data. The header's
 * length, nesting depth and number of values are checked before jansson sees a byte, so the
 * parser's memory and recursion stay bounded on any input; then every entry is checked (fields,
 * dtype, shape, offsets), and finally the layout: tensors sorted by offset must tile the data
 * exactly, with no overlap, no gap and nothing left over (what Hugging Face's reader demands).
 * Only then is anything handed out. Bad input gets an error code and a message naming the file
 * and the tensor or field; never an assertion.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ckpt_internal.h"

struct ns_st_file {
    char *label;
    const uint8_t *buf; /* the whole file */
    size_t len;
    const uint8_t *map; /* owned mapping (ns_st_open), else NULL */
    size_t map_len;
    ns_st_tensor *tensors; /* name order */
    size_t tensor_count;
    ns_st_meta *meta;
    size_t meta_count;
};

/* Offsets of one entry, kept beside the tensors while the layout is checked. */
typedef struct st_span {
    uint64_t begin;
    uint64_t end;
    size_t index;
} st_span;

typedef struct st_parse {
    const char *label;
    char *err;
    size_t err_size;
    uint64_t data_len;
    ns_st_file *file;
    st_span *spans;
} st_parse;

/* ---- header length and the scan before jansson -------------------------------------------- */

static int st_header_len(st_parse *p, const uint8_t *buf, size_t len, uint64_t *hdr_len)
{
    *hdr_len = 0; /* set on every path: callers may not tell ns__err's codes from NS_OK */
    if (len < 8)
        return ns__err(p->err, p->err_size, NS_EPARSE,
                       "%s: %zu bytes, shorter than the 8-byte header length", p->label, len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    if (n > NS_ST_HEADER_BYTES_MAX)
        return ns__err(p->err, p->err_size, NS_ETOOBIG,
                       "%s: header length %llu over the limit of %u bytes", p->label,
                       (unsigned long long)n, (unsigned)NS_ST_HEADER_BYTES_MAX);
    if (n > len - 8)
        return ns__err(p->err, p->err_size, NS_ECORRUPT,
                       "%s: header length %llu runs past the end of the file (%zu bytes)", p->label,
                       (unsigned long long)n, len);
    *hdr_len = n;
    return NS_OK;
}

/* Counts nesting and separators outside strings, the way the JSON grammar nests them. A text that
 * the scan misjudges is not JSON and jansson refuses it; jansson's own depth cap stays behind. */
static int st_prescan(st_parse *p, const uint8_t *hdr, size_t n)
{
    size_t depth = 0;
    size_t values = 1;
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = hdr[i];
        if (in_string) {
            if (c == '\\')
                i++; /* the escaped byte cannot end the string */
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > NS_ST_JSON_DEPTH_MAX)
                return ns__err(p->err, p->err_size, NS_ETOOBIG,
                               "%s: header JSON nested deeper than %d at byte %zu", p->label,
                               NS_ST_JSON_DEPTH_MAX, i);
            values++;
        } else if (c == '}' || c == ']') {
            depth -= depth > 0;
        } else if (c == ',' || c == ':') {
            values++;
        }
        if (values > NS_ST_JSON_VALUES_MAX)
            return ns__err(p->err, p->err_size, NS_ETOOBIG,
                           "%s: header JSON holds more than %u values", p->label,
                           (unsigned)NS_ST_JSON_VALUES_MAX);
    }
    return NS_OK;
}

/* ---- entries ------------------------------------------------------------------------------ */

static int st_read_uint(st_parse *p, const char *name, const char *field, json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return ns__err(p->err, p->err_size, NS_EPARSE,
                       "%s: tensor \"%s\": %s holds something other than a non-negative integer",
                       p->label, name, field);
    *out = (uint64_t)json_integer_value(v);
    return NS_OK;
}

static int st_read_shape(st_parse *p, const char *name, json_t *v, ns_st_tensor *t)
{
    if (!json_is_array(v))
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: tensor \"%s\": shape is not an array",
                       p->label, name);
    if (json_array_size(v) > NS_ST_DIMS_MAX)
        return ns__err(p->err, p->err_size, NS_ETOOBIG,
                       "%s: tensor \"%s\": shape has %zu dimensions, more than %d", p->label, name,
                       json_array_size(v), NS_ST_DIMS_MAX);
    t->ndim = json_array_size(v);
    for (size_t i = 0; i < t->ndim; i++) {
        int rc = st_read_uint(p, name, "shape", json_array_get(v, i), &t->shape[i]);
        if (rc != NS_OK)
            return rc;
    }
    return NS_OK;
}

static int st_read_offsets(st_parse *p, const char *name, json_t *v, st_span *span)
{
    if (!json_is_array(v) || json_array_size(v) != 2)
        return ns__err(p->err, p->err_size, NS_EPARSE,
                       "%s: tensor \"%s\": data_offsets is not an array of two integers", p->label,
                       name);
    int rc = st_read_uint(p, name, "data_offsets", json_array_get(v, 0), &span->begin);
    if (rc == NS_OK)
        rc = st_read_uint(p, name, "data_offsets", json_array_get(v, 1), &span->end);
    return rc;
}

/* Reads the three fields of one entry; unknown or missing fields are refused. */
static int st_read_fields(st_parse *p, const char *name, json_t *entry, ns_st_tensor *t,
                          st_span *span)
{
    if (!json_is_object(entry))
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: tensor \"%s\": entry is not an object",
                       p->label, name);
    json_t *dtype = json_object_get(entry, "dtype");
    json_t *shape = json_object_get(entry, "shape");
    json_t *offsets = json_object_get(entry, "data_offsets");
    if (dtype == NULL || shape == NULL || offsets == NULL)
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: tensor \"%s\": missing field %s",
                       p->label, name,
                       dtype == NULL   ? "dtype"
                       : shape == NULL ? "shape"
                                       : "data_offsets");
    if (json_object_size(entry) != 3)
        return ns__err(p->err, p->err_size, NS_EPARSE,
                       "%s: tensor \"%s\": unknown field beside dtype, shape, data_offsets",
                       p->label, name);
    if (!json_is_string(dtype) || !ns__st_dtype_parse(json_string_value(dtype), &t->dtype))
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: tensor \"%s\": unknown dtype %s%s%s",
                       p->label, name, json_is_string(dtype) ? "\"" : "",
                       json_is_string(dtype) ? json_string_value(dtype) : "(not a string)",
                       json_is_string(dtype) ? "\"" : "");
    int rc = st_read_shape(p, name, shape, t);
    if (rc == NS_OK)
        rc = st_read_offsets(p, name, offsets, span);
    return rc;
}

/* One tensor entry: fields, then its size against its offsets and the data's end. */
static int st_read_tensor(st_parse *p, const char *name, json_t *entry, ns_st_tensor *t,
                          st_span *span)
{
    size_t name_len = strlen(name);
    if (name_len == 0)
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: a tensor has an empty name", p->label);
    if (name_len > NS_ST_NAME_BYTES_MAX)
        return ns__err(p->err, p->err_size, NS_ETOOBIG,
                       "%s: a tensor name of %zu bytes, over the limit of %d", p->label, name_len,
                       NS_ST_NAME_BYTES_MAX);
    int rc = st_read_fields(p, name, entry, t, span);
    if (rc != NS_OK)
        return rc;
    uint64_t bytes;
    if (!ns__st_shape_bytes(t->shape, t->ndim, t->dtype, &bytes))
        return ns__err(p->err, p->err_size, NS_EOVERFLOW,
                       "%s: tensor \"%s\": shape's byte size overflows 64 bits", p->label, name);
    if (span->begin > span->end)
        return ns__err(p->err, p->err_size, NS_ECORRUPT,
                       "%s: tensor \"%s\": data_offsets begin %llu after end %llu", p->label, name,
                       (unsigned long long)span->begin, (unsigned long long)span->end);
    if (span->end > p->data_len)
        return ns__err(p->err, p->err_size, NS_ECORRUPT,
                       "%s: tensor \"%s\": data_offsets end %llu past the end of the data "
                       "(%llu bytes)",
                       p->label, name, (unsigned long long)span->end,
                       (unsigned long long)p->data_len);
    if (span->end - span->begin != bytes)
        return ns__err(p->err, p->err_size, NS_ECORRUPT,
                       "%s: tensor \"%s\": shape and dtype give %llu bytes, data_offsets %llu",
                       p->label, name, (unsigned long long)bytes,
                       (unsigned long long)(span->end - span->begin));
    t->nbytes = (size_t)bytes;
    t->name = strdup(name);
    return t->name != NULL ? NS_OK : NS_ENOMEM;
}

static int st_read_metadata(st_parse *p, json_t *meta)
{
    if (!json_is_object(meta))
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: __metadata__ is not an object",
                       p->label);
    if (json_object_size(meta) > NS_ST_METADATA_MAX)
        return ns__err(p->err, p->err_size, NS_ETOOBIG,
                       "%s: __metadata__ has %zu entries, more than %d", p->label,
                       json_object_size(meta), NS_ST_METADATA_MAX);
    ns_st_file *f = p->file;
    f->meta = calloc(json_object_size(meta) + 1, sizeof *f->meta);
    if (f->meta == NULL)
        return NS_ENOMEM;
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value)
    {
        if (!json_is_string(value))
            return ns__err(p->err, p->err_size, NS_EPARSE,
                           "%s: __metadata__ field \"%s\" is not a string", p->label, key);
        if (strlen(key) > NS_ST_NAME_BYTES_MAX || json_string_length(value) > NS_ST_VALUE_BYTES_MAX)
            return ns__err(p->err, p->err_size, NS_ETOOBIG,
                           "%s: __metadata__ field \"%.64s\" is over its size limit", p->label,
                           key);
        ns_st_meta *m = &f->meta[f->meta_count++];
        m->key = strdup(key);
        m->value = strdup(json_string_value(value));
        if (m->key == NULL || m->value == NULL)
            return NS_ENOMEM;
    }
    return NS_OK;
}

/* ---- layout ------------------------------------------------------------------------------- */

static int span_by_offset(const void *a, const void *b)
{
    const st_span *x = a;
    const st_span *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Sorted by offset, each tensor must start where the one before ends, the first at 0, and the
 * last must end at the end of the data: no overlap, no gap, no stray bytes. */
static int st_check_layout(st_parse *p, const uint8_t *data)
{
    ns_st_file *f = p->file;
    qsort(p->spans, f->tensor_count, sizeof *p->spans, span_by_offset);
    uint64_t at = 0;
    for (size_t i = 0; i < f->tensor_count; i++) {
        const st_span *s = &p->spans[i];
        const char *name = f->tensors[s->index].name;
        if (s->begin < at)
            return ns__err(p->err, p->err_size, NS_ECORRUPT,
                           "%s: tensor \"%s\": data_offsets [%llu, %llu) overlap tensor \"%s\"",
                           p->label, name, (unsigned long long)s->begin, (unsigned long long)s->end,
                           f->tensors[p->spans[i - 1].index].name);
        if (s->begin > at)
            return ns__err(p->err, p->err_size, NS_ECORRUPT,
                           "%s: tensor \"%s\": gap of %llu bytes before its data", p->label, name,
                           (unsigned long long)(s->begin - at));
        f->tensors[s->index].data = data + s->begin;
        at = s->end;
    }
    if (at != p->data_len)
        return ns__err(p->err, p->err_size, NS_ECORRUPT,
                       "%s: %llu data bytes after the last tensor", p->label,
                       (unsigned long long)(p->data_len - at));
    return NS_OK;
}

static int tensor_by_name(const void *a, const void *b)
{
    return strcmp(((const ns_st_tensor *)a)->name, ((const ns_st_tensor *)b)->name);
}

/* ---- the whole header --------------------------------------------------------------------- */

static int st_read_entries(st_parse *p, json_t *root)
{
    ns_st_file *f = p->file;
    size_t entries = json_object_size(root);
    if (entries > NS_ST_TENSORS_MAX + 1)
        return ns__err(p->err, p->err_size, NS_ETOOBIG, "%s: %zu tensors, more than %u", p->label,
                       entries, (unsigned)NS_ST_TENSORS_MAX);
    f->tensors = calloc(entries + 1, sizeof *f->tensors);
    p->spans = calloc(entries + 1, sizeof *p->spans);
    if (f->tensors == NULL || p->spans == NULL)
        return NS_ENOMEM;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
    {
        int rc;
        if (strcmp(key, "__metadata__") == 0) {
            rc = st_read_metadata(p, value);
        } else {
            if (f->tensor_count == NS_ST_TENSORS_MAX)
                return ns__err(p->err, p->err_size, NS_ETOOBIG, "%s: more than %u tensors",
                               p->label, (unsigned)NS_ST_TENSORS_MAX);
            st_span *span = &p->spans[f->tensor_count];
            span->index = f->tensor_count;
            rc = st_read_tensor(p, key, value, &f->tensors[f->tensor_count], span);
            if (f->tensors[f->tensor_count].name != NULL)
                f->tensor_count++;
        }
        if (rc != NS_OK)
            return rc;
    }
    return NS_OK;
}

static int st_parse_header(st_parse *p, const uint8_t *hdr, size_t hdr_len, const uint8_t *data)
{
    int rc = st_prescan(p, hdr, hdr_len);
    if (rc != NS_OK)
        return rc;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)hdr, hdr_len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ns__err(p->err, p->err_size, NS_EPARSE, "%s: header JSON: %s at byte %d", p->label,
                       jerr.text, jerr.position);
    if (!json_is_object(root))
        rc = ns__err(p->err, p->err_size, NS_EPARSE, "%s: header JSON is not an object", p->label);
    else
        rc = st_read_entries(p, root);
    json_decref(root);
    if (rc == NS_OK)
        rc = st_check_layout(p, data);
    if (rc == NS_OK)
        qsort(p->file->tensors, p->file->tensor_count, sizeof *p->file->tensors, tensor_by_name);
    return rc;
}

int ns_st_parse(const uint8_t *buf, size_t len, const char *label, ns_st_file **out, char *err,
                size_t err_size)
{
    NS_ASSERT(buf != NULL || len == 0);
    NS_ASSERT(label != NULL);
    NS_ASSERT(out != NULL);
    st_parse p = {.label = label, .err = err, .err_size = err_size};
    uint64_t hdr_len;
    int rc = st_header_len(&p, buf, len, &hdr_len);
    if (rc != NS_OK)
        return rc;
    p.data_len = len - 8 - hdr_len;
    p.file = calloc(1, sizeof *p.file);
    if (p.file == NULL)
        return NS_ENOMEM;
    p.file->buf = buf;
    p.file->len = len;
    p.file->label = strdup(label);
    rc = p.file->label != NULL ? NS_OK : NS_ENOMEM;
    if (rc == NS_OK)
        rc = st_parse_header(&p, buf + 8, (size_t)hdr_len, buf + 8 + hdr_len);
    free(p.spans);
    if (rc == NS_ENOMEM)
        ns__err(err, err_size, rc, "%s: out of memory", label);
    if (rc != NS_OK) {
        ns_st_free(p.file);
        return rc;
    }
    *out = p.file;
    return NS_OK;
}

int ns__st_parse_map(const uint8_t *map, size_t len, const char *label, ns_st_file **out, char *err,
                     size_t err_size)
{
    static const uint8_t empty[1]; /* an empty file maps to NULL */
    int rc = ns_st_parse(map != NULL ? map : empty, len, label, out, err, err_size);
    if (rc != NS_OK)
        return rc;
    (*out)->map = map;
    (*out)->map_len = len;
    return NS_OK;
}

int ns_st_open(const char *path, ns_st_file **out, char *err, size_t err_size)
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(out != NULL);
    const uint8_t *map;
    size_t len;
    int rc = ns__ckpt_map(path, SIZE_MAX, false, &map, &len);
    if (rc != NS_OK)
        return ns__err(err, err_size, rc, "%s: cannot open: %s", path, ns_strerror(rc));
    rc = ns__st_parse_map(map, len, path, out, err, err_size);
    if (rc != NS_OK)
        ns__ckpt_unmap(map, len);
    return rc;
}

void ns_st_free(ns_st_file *file)
{
    if (file == NULL)
        return;
    for (size_t i = 0; i < file->tensor_count; i++)
        free((char *)file->tensors[i].name);
    for (size_t i = 0; i < file->meta_count; i++) {
        free((char *)file->meta[i].key);
        free((char *)file->meta[i].value);
    }
    free(file->tensors);
    free(file->meta);
    free(file->label);
    ns__ckpt_unmap(file->map, file->map_len);
    free(file);
}

/* ---- lookups ------------------------------------------------------------------------------ */

size_t ns_st_count(const ns_st_file *file)
{
    NS_ASSERT(file != NULL);
    return file->tensor_count;
}

const ns_st_tensor *ns_st_at(const ns_st_file *file, size_t index)
{
    NS_ASSERT(file != NULL);
    NS_ASSERT(index < file->tensor_count);
    return &file->tensors[index];
}

const ns_st_tensor *ns_st_find(const ns_st_file *file, const char *name)
{
    NS_ASSERT(file != NULL);
    NS_ASSERT(name != NULL);
    ns_st_tensor key = {.name = name};
    return bsearch(&key, file->tensors, file->tensor_count, sizeof key, tensor_by_name);
}

/* "[2, 3]" into out, shortened with "..." when it does not fit. */
static void shape_text(char *out, size_t out_size, const uint64_t *shape, size_t ndim)
{
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0; i <= ndim && at < out_size; i++) {
        int n = i == ndim ? snprintf(out + at, out_size - at, "]")
                          : snprintf(out + at, out_size - at, "%s%llu", i == 0 ? "[" : ", ",
                                     (unsigned long long)shape[i]);
        at += n > 0 ? (size_t)n : 0;
    }
    if (ndim == 0)
        snprintf(out, out_size, "[]");
}

int ns_st_get(const ns_st_file *file, const char *name, ns_st_dtype dtype, const uint64_t *shape,
              size_t ndim, const ns_st_tensor **out, char *err, size_t err_size)
{
    NS_ASSERT(file != NULL);
    NS_ASSERT(name != NULL);
    NS_ASSERT(shape != NULL || ndim == 0);
    NS_ASSERT(ndim <= NS_ST_DIMS_MAX);
    NS_ASSERT(out != NULL);
    const ns_st_tensor *t = ns_st_find(file, name);
    if (t == NULL)
        return ns__err(err, err_size, NS_ENOENT, "%s: no tensor \"%s\"", file->label, name);
    if (t->dtype != dtype)
        return ns__err(err, err_size, NS_EINVAL, "%s: tensor \"%s\" has dtype %s, expected %s",
                       file->label, name, ns_st_dtype_name(t->dtype), ns_st_dtype_name(dtype));
    bool same = t->ndim == ndim;
    for (size_t i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char have[96];
        char want[96];
        shape_text(have, sizeof have, t->shape, t->ndim);
        shape_text(want, sizeof want, shape, ndim);
        return ns__err(err, err_size, NS_EINVAL, "%s: tensor \"%s\" has shape %s, expected %s",
                       file->label, name, have, want);
    }
    *out = t;
    return NS_OK;
}

const char *ns_st_metadata(const ns_st_file *file, const char *key)
{
    NS_ASSERT(file != NULL);
    NS_ASSERT(key != NULL);
    for (size_t i = 0; i < file->meta_count; i++)
        if (strcmp(file->meta[i].key, key) == 0)
            return file->meta[i].value;
    return NULL;
}

size_t ns_st_metadata_count(const ns_st_file *file)
{
    NS_ASSERT(file != NULL);
    return file->meta_count;
}

const ns_st_meta *ns_st_metadata_at(const ns_st_file *file, size_t index)
{
    NS_ASSERT(file != NULL);
    NS_ASSERT(index < file->meta_count);
    return &file->meta[index];
}
