/*
 * test_ckpt.c: the safetensors reader and writer, and checkpoints (SPEC S12).
 *
 * The reader is checked against a file built by hand byte for byte from the format's description,
 * and against one malformed file for each way a file can be wrong, each refused with its own code
 * and a message that names the file and the tensor or field. Checkpoints are saved and loaded
 * through a small Llama-shaped model held, like the real one, in one flat buffer with views; a
 * corrupted byte, a tampered state.json and a leftover temporary directory must each be skipped;
 * and a child process killed with SIGKILL at random moments while it saves must never leave a
 * checkpoint that loads wrong.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../src/ckpt/ckpt_internal.h"
#include "neuroshard/ckpt.h"
#include "support/testutil.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A file from a header text and data bytes, with the header length the text's own. */
static uint8_t *file_from(const char *json, const void *data, size_t data_len, size_t *len)
{
    size_t n = strlen(json);
    uint8_t *buf = malloc(8 + n + data_len + 1);
    assert_non_null(buf);
    put_le64(buf, n);
    memcpy(buf + 8, json, n);
    if (data_len > 0)
        memcpy(buf + 8 + n, data, data_len);
    *len = 8 + n + data_len;
    return buf;
}

/* Parses buf and expects refusal with code, the message naming the label and holding `what`. */
static void expect_refusal(const uint8_t *buf, size_t len, int code, const char *what)
{
    ns_st_file *f = NULL;
    char err[NS_ST_ERR_SIZE] = "";
    int rc = ns_st_parse(buf, len, "bad.safetensors", &f, err, sizeof err);
    if (rc != code || strstr(err, "bad.safetensors") == NULL || strstr(err, what) == NULL)
        fail_msg("want %s with \"%s\", got %s: %s", ns_strerror(code), what, ns_strerror(rc), err);
    assert_null(f);
}

static void expect_json_refusal(const char *json, size_t data_len, int code, const char *what)
{
    uint8_t *data = calloc(data_len + 1, 1);
    size_t len;
    uint8_t *buf = file_from(json, data, data_len, &len);
    expect_refusal(buf, len, code, what);
    free(buf);
    free(data);
}

/* ---- safetensors: round trip and the exact bytes ------------------------------------------ */

static void test_st_round_trips_tensors_and_metadata(void **state)
{
    (void)state;
    const float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
    const uint16_t bf16[3] = {0x3f80, 0xc000, 0x0001};
    const int64_t i64[2] = {-1, INT64_MAX};
    const uint16_t f16 = 0x3c00;
    ns_st_tensor in[] = {
        {.name = "w", .dtype = NS_ST_F32, .ndim = 2, .shape = {2, 3}, .data = f32, .nbytes = 24},
        {.name = "b", .dtype = NS_ST_BF16, .ndim = 1, .shape = {3}, .data = bf16, .nbytes = 6},
        {.name = "ids", .dtype = NS_ST_I64, .ndim = 1, .shape = {2}, .data = i64, .nbytes = 16},
        {.name = "scalar", .dtype = NS_ST_F16, .ndim = 0, .data = &f16, .nbytes = 2},
        {.name = "empty", .dtype = NS_ST_F32, .ndim = 2, .shape = {0, 4}, .nbytes = 0},
    };
    const ns_st_meta meta[] = {{"format", "pt"}, {"note", "h\xc3\xa9llo \"quoted\""}};
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_st_build(in, 5, meta, 2, &buf, &len, NULL, 0), NS_OK);
    uint64_t hdr = 0;
    for (int i = 7; i >= 0; i--)
        hdr = hdr << 8 | buf[i];
    assert_int_equal(hdr % 8, 0); /* data starts 8-aligned */
    ns_st_file *f;
    char err[NS_ST_ERR_SIZE];
    assert_int_equal(ns_st_parse(buf, len, "rt", &f, err, sizeof err), NS_OK);
    assert_int_equal(ns_st_count(f), 5);
    for (size_t i = 0; i < 5; i++) {
        const ns_st_tensor *t;
        assert_int_equal(
            ns_st_get(f, in[i].name, in[i].dtype, in[i].shape, in[i].ndim, &t, err, sizeof err),
            NS_OK);
        assert_int_equal(t->nbytes, in[i].nbytes);
        if (t->nbytes > 0)
            assert_memory_equal(t->data, in[i].data, t->nbytes);
    }
    assert_string_equal(ns_st_at(f, 0)->name, "b"); /* name order */
    assert_int_equal(ns_st_metadata_count(f), 2);
    assert_string_equal(ns_st_metadata(f, "format"), "pt");
    assert_string_equal(ns_st_metadata(f, "note"), "h\xc3\xa9llo \"quoted\"");
    assert_null(ns_st_metadata(f, "absent"));
    ns_st_free(f);
    free(buf);
}

static void test_st_writer_matches_hand_built_bytes(void **state)
{
    (void)state;
    /* From the format: u64 LE header length, compact JSON with __metadata__ first and tensors by
     * dtype size then name, spaces to a multiple of 8, then the data in that order. */
    static const char json[] = "{\"__metadata__\":{\"format\":\"pt\"},"
                               "\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}"
                               "     ";
    static const uint8_t len_bytes[8] = {0x90, 0, 0, 0, 0, 0, 0, 0}; /* 144 */
    static const uint8_t data[16] = {5, 0, 0,    0,    0, 0, 0, 0,   /* I64 5 */
                                     0, 0, 0x80, 0x3f,               /* F32 1.0 */
                                     0, 0, 0,    0xc0};              /* F32 -2.0 */
    assert_int_equal(sizeof json - 1, 144);
    const float b[2] = {1.0f, -2.0f};
    const int64_t a = 5;
    ns_st_tensor in[] = {
        {.name = "b", .dtype = NS_ST_F32, .ndim = 1, .shape = {2}, .data = b, .nbytes = 8},
        {.name = "a", .dtype = NS_ST_I64, .ndim = 1, .shape = {1}, .data = &a, .nbytes = 8},
    };
    const ns_st_meta meta[] = {{"format", "pt"}};
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_st_build(in, 2, meta, 1, &buf, &len, NULL, 0), NS_OK);
    assert_int_equal(len, 8 + 144 + 16);
    assert_memory_equal(buf, len_bytes, 8);
    assert_memory_equal(buf + 8, json, 144);
    assert_memory_equal(buf + 8 + 144, data, 16);
    free(buf);
}

static void test_st_write_fd_hashes_what_it_writes(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    char path[300];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    size_t n = (3u << 20) / 4 + 5; /* large enough for the hashing thread */
    float *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)i;
    ns_st_tensor t = {
        .name = "w", .dtype = NS_ST_F32, .ndim = 1, .shape = {n}, .data = w, .nbytes = n * 4};
    FILE *fp = fopen(path, "wb");
    uint8_t sha[NS_SHA256_BYTES];
    uint64_t bytes;
    assert_int_equal(ns_st_write_fd(fileno(fp), &t, 1, NULL, 0, sha, &bytes, NULL, 0), NS_OK);
    fclose(fp);
    uint8_t *file;
    size_t len;
    assert_int_equal(ns_file_read(path, 64u << 20, &file, &len), NS_OK);
    assert_int_equal(len, bytes);
    uint8_t want[NS_SHA256_BYTES];
    ns_sha256(want, file, len);
    assert_memory_equal(sha, want, sizeof want);
    ns_st_file *f;
    assert_int_equal(ns_st_open(path, &f, NULL, 0), NS_OK);
    assert_memory_equal(ns_st_find(f, "w")->data, w, n * 4);
    ns_st_free(f);
    free(file);
    free(w);
    ns_test_rmtree(dir);
}

static void test_st_open_refuses_missing_file(void **state)
{
    (void)state;
    ns_st_file *f = NULL;
    char err[NS_ST_ERR_SIZE];
    assert_int_equal(ns_st_open("/nonexistent/x.safetensors", &f, err, sizeof err), NS_ENOENT);
    assert_non_null(strstr(err, "/nonexistent/x.safetensors"));
    assert_null(f);
}

static void test_st_accepts_empty_header(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = file_from("{}      ", NULL, 0, &len);
    ns_st_file *f;
    assert_int_equal(ns_st_parse(buf, len, "empty", &f, NULL, 0), NS_OK);
    assert_int_equal(ns_st_count(f), 0);
    ns_st_free(f);
    free(buf);
}

/* ---- safetensors: refusals ---------------------------------------------------------------- */

static void test_st_refuses_file_shorter_than_length_field(void **state)
{
    (void)state;
    const uint8_t buf[5] = {2, 0, 0, 0, 0};
    expect_refusal(buf, sizeof buf, NS_EPARSE, "shorter than the 8-byte header length");
}

static void test_st_refuses_header_length_past_end(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = file_from("{}", NULL, 0, &len);
    put_le64(buf, 3);
    expect_refusal(buf, len, NS_ECORRUPT, "header length 3 runs past the end of the file");
    put_le64(buf, UINT64_MAX);
    expect_refusal(buf, len, NS_ETOOBIG, "over the limit");
    free(buf);
}

static void test_st_refuses_header_length_cutting_json(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf =
        file_from("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x", 1, &len);
    put_le64(buf, 20); /* the JSON ends early; the rest would count as data */
    expect_refusal(buf, len, NS_EPARSE, "header JSON");
    free(buf);
}

static void test_st_refuses_header_over_limit(void **state)
{
    (void)state;
    size_t n = NS_ST_HEADER_BYTES_MAX + 8;
    uint8_t *buf = malloc(8 + n);
    put_le64(buf, n);
    memset(buf + 8, ' ', n);
    buf[8] = '{';
    buf[9] = '}';
    expect_refusal(buf, 8 + n, NS_ETOOBIG, "over the limit");
    free(buf);
}

static void test_st_refuses_truncated_data(void **state)
{
    (void)state;
    const float d[4] = {1, 2, 3, 4};
    ns_st_tensor t = {
        .name = "w", .dtype = NS_ST_F32, .ndim = 1, .shape = {4}, .data = d, .nbytes = 16};
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_st_build(&t, 1, NULL, 0, &buf, &len, NULL, 0), NS_OK);
    expect_refusal(buf, len - 1, NS_ECORRUPT, "tensor \"w\": data_offsets end 16 past the end");
    free(buf);
}

static void test_st_refuses_overlapping_offsets(void **state)
{
    (void)state;
    expect_json_refusal("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                        12, NS_ECORRUPT, "tensor \"b\": data_offsets [4, 12) overlap tensor \"a\"");
}

static void test_st_refuses_gap_between_tensors(void **state)
{
    (void)state;
    expect_json_refusal("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                        12, NS_ECORRUPT, "tensor \"b\": gap of 4 bytes");
}

static void test_st_refuses_data_no_tensor_covers(void **state)
{
    (void)state;
    expect_json_refusal("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6,
                        NS_ECORRUPT, "2 data bytes after the last tensor");
}

static void test_st_refuses_shape_size_mismatch(void **state)
{
    (void)state;
    expect_json_refusal("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20,
                        NS_ECORRUPT,
                        "tensor \"w\": shape and dtype give 24 bytes, data_offsets 20");
}

static void test_st_refuses_shape_overflow(void **state)
{
    (void)state;
    expect_json_refusal("{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                        "\"data_offsets\":[0,0]}}",
                        0, NS_EOVERFLOW, "tensor \"w\": shape's byte size overflows");
}

static void test_st_refuses_unknown_dtype(void **state)
{
    (void)state;
    expect_json_refusal("{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                        NS_EPARSE, "tensor \"w\": unknown dtype \"F33\"");
    expect_json_refusal("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NS_EPARSE,
                        "tensor \"w\": unknown dtype (not a string)");
}

static void test_st_refuses_duplicate_names(void **state)
{
    (void)state;
    expect_json_refusal("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                        8, NS_EPARSE, "duplicate");
    /* The same name spelled with an escape is the same name. */
    expect_json_refusal("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"\\u0077\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                        8, NS_EPARSE, "duplicate");
}

static void test_st_refuses_json_too_deep(void **state)
{
    (void)state;
    expect_json_refusal("{\"__metadata__\":{\"a\":[[1]]}}", 0, NS_ETOOBIG, "nested deeper than 3");
    char deep[20001];
    for (int i = 0; i < 10000; i++) {
        deep[i] = '[';
        deep[10000 + i] = ']';
    }
    deep[20000] = '\0';
    expect_json_refusal(deep, 0, NS_ETOOBIG, "nested deeper");
    /* Brackets inside strings do not count. */
    expect_json_refusal("{\"__metadata__\":{\"k\":\"[[[[\\\"{{{{\"},\"x\":1}", 0, NS_EPARSE,
                        "tensor \"x\": entry is not an object");
}

static void test_st_refuses_json_with_too_many_values(void **state)
{
    (void)state;
    size_t n = NS_ST_JSON_VALUES_MAX + 10;
    char *json = malloc(2 * n + 64);
    size_t at = (size_t)sprintf(json, "{\"w\":{\"dtype\":\"F32\",\"shape\":[");
    for (size_t i = 0; i < n; i++) {
        json[at++] = '1';
        json[at++] = ',';
    }
    strcpy(json + at - 1, "]}}");
    expect_json_refusal(json, 0, NS_ETOOBIG, "more than");
    free(json);
}

static void test_st_refuses_offsets_past_end(void **state)
{
    (void)state;
    expect_json_refusal("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 8,
                        NS_ECORRUPT, "tensor \"w\": data_offsets end 12 past the end of the data");
    expect_json_refusal("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                        NS_ECORRUPT, "tensor \"w\": data_offsets begin 8 after end 4");
}

typedef struct malformed {
    const char *json;
    int code;
    const char *what;
} malformed;

static void test_st_refuses_malformed_fields(void **state)
{
    (void)state;
    static const malformed cases[] = {
        {"[]", NS_EPARSE, "not an object"},
        {"{\"w\":[1]}", NS_EPARSE, "tensor \"w\": entry is not an object"},
        {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", NS_EPARSE, "missing field dtype"},
        {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", NS_EPARSE, "missing field shape"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", NS_EPARSE, "missing field data_offsets"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", NS_EPARSE,
         "unknown field"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", NS_EPARSE,
         "shape holds something other than a non-negative integer"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", NS_EPARSE,
         "shape holds"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", NS_EPARSE,
         "shape is not an array"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", NS_EPARSE,
         "data_offsets is not an array of two"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", NS_EPARSE,
         "data_offsets holds"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
         NS_ETOOBIG, "9 dimensions"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", NS_EPARSE,
         "empty name"},
        {"{\"__metadata__\":[]}", NS_EPARSE, "__metadata__ is not an object"},
        {"{\"__metadata__\":{\"k\":1}}", NS_EPARSE, "__metadata__ field \"k\" is not a string"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", NS_EPARSE,
         "header JSON"},
        {"{\"w\\u0000\":{}}", NS_EPARSE, "header JSON"},
        {"{\"\xff\":{}}", NS_EPARSE, "header JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_json_refusal(cases[i].json, 4, cases[i].code, cases[i].what);
}

/* ---- safetensors: typed lookup and the writer's refusals ---------------------------------- */

static void test_st_get_refuses_wrong_dtype_or_shape_naming_both(void **state)
{
    (void)state;
    const float d[6] = {0};
    ns_st_tensor t = {
        .name = "w", .dtype = NS_ST_F32, .ndim = 2, .shape = {2, 3}, .data = d, .nbytes = 24};
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_st_build(&t, 1, NULL, 0, &buf, &len, NULL, 0), NS_OK);
    ns_st_file *f;
    assert_int_equal(ns_st_parse(buf, len, "m.safetensors", &f, NULL, 0), NS_OK);
    const ns_st_tensor *got;
    char err[NS_ST_ERR_SIZE];
    const uint64_t want[2] = {3, 2};
    assert_int_equal(ns_st_get(f, "w", NS_ST_BF16, t.shape, 2, &got, err, sizeof err), NS_EINVAL);
    assert_string_equal(err, "m.safetensors: tensor \"w\" has dtype F32, expected BF16");
    assert_int_equal(ns_st_get(f, "w", NS_ST_F32, want, 2, &got, err, sizeof err), NS_EINVAL);
    assert_string_equal(err, "m.safetensors: tensor \"w\" has shape [2, 3], expected [3, 2]");
    assert_int_equal(ns_st_get(f, "w", NS_ST_F32, want, 1, &got, err, sizeof err), NS_EINVAL);
    assert_int_equal(ns_st_get(f, "v", NS_ST_F32, want, 2, &got, err, sizeof err), NS_ENOENT);
    assert_string_equal(err, "m.safetensors: no tensor \"v\"");
    ns_st_free(f);
    free(buf);
}

static void test_st_writer_refuses_what_reader_would(void **state)
{
    (void)state;
    const float d[2] = {0};
    ns_st_tensor t[2] = {
        {.name = "w", .dtype = NS_ST_F32, .ndim = 1, .shape = {2}, .data = d, .nbytes = 8},
        {.name = "w", .dtype = NS_ST_F32, .ndim = 1, .shape = {2}, .data = d, .nbytes = 8},
    };
    uint8_t *buf;
    size_t len;
    char err[NS_ST_ERR_SIZE];
    assert_int_equal(ns_st_build(t, 2, NULL, 0, &buf, &len, err, sizeof err), NS_EINVAL);
    assert_non_null(strstr(err, "appears twice"));
    t[1].name = "__metadata__";
    assert_int_equal(ns_st_build(t, 2, NULL, 0, &buf, &len, err, sizeof err), NS_EINVAL);
    t[1].name = "v";
    t[1].nbytes = 4;
    assert_int_equal(ns_st_build(t, 2, NULL, 0, &buf, &len, err, sizeof err), NS_EINVAL);
    assert_non_null(strstr(err, "tensor \"v\": nbytes 4"));
    t[1].nbytes = 8;
    t[1].name = "\xff";
    assert_int_equal(ns_st_build(t, 2, NULL, 0, &buf, &len, err, sizeof err), NS_EINVAL);
    const ns_st_meta dup[2] = {{"k", "a"}, {"k", "b"}};
    assert_int_equal(ns_st_build(t, 1, dup, 2, &buf, &len, err, sizeof err), NS_EINVAL);
}

static void test_sha256_stream_matches_one_shot(void **state)
{
    (void)state;
    size_t n = 70000;
    uint8_t *buf = malloc(n);
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    for (size_t len = 0; len < n; len = len < 200 ? len + 1 : len * 3 / 2 + 7) {
        uint8_t want[NS_SHA256_BYTES];
        uint8_t got[NS_SHA256_BYTES];
        ns_sha256(want, buf, len);
        ns__sha256 s;
        ns__sha256_init(&s);
        for (size_t at = 0, step = 1; at < len; at += step, step = step * 7 % 131 + 1)
            ns__sha256_update(&s, buf + at, step < len - at ? step : len - at);
        ns__sha256_final(&s, got);
        if (memcmp(want, got, sizeof want) != 0)
            fail_msg("SHA-256 differs at length %zu (shani=%d)", len, ns__sha256_has_shani());
    }
    free(buf);
}

/* ---- a small Llama in one flat buffer ----------------------------------------------------- */

#define MODEL_LAYERS     2
#define MODEL_PARAMS_MAX (3 + 9 * MODEL_LAYERS)

/* What the model owner holds: one allocation, views into it, names for each. */
typedef struct model {
    ns_ckpt_llama_config config;
    float *flat;
    size_t floats;
    ns_ckpt_tensor weights[MODEL_PARAMS_MAX];
    size_t weights_count;
    ns_ckpt_tensor opt[2 * MODEL_PARAMS_MAX];
    size_t opt_count;
    char names[3 * MODEL_PARAMS_MAX][64];
} model;

static void add_param(model *m, const char *name, uint64_t rows, uint64_t cols)
{
    size_t i = m->weights_count++;
    snprintf(m->names[i], 64, "%s", name);
    m->weights[i] =
        (ns_ckpt_tensor){.name = m->names[i], .ndim = cols > 0 ? 2 : 1, .shape = {rows, cols}};
    m->floats += rows * (cols > 0 ? cols : 1);
}

static uint64_t product(const ns_ckpt_tensor *t)
{
    uint64_t n = 1;
    for (size_t i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

static void model_init(model *m)
{
    memset(m, 0, sizeof *m);
    m->config = (ns_ckpt_llama_config){.hidden_size = 8,
                                       .intermediate_size = 16,
                                       .num_attention_heads = 2,
                                       .num_key_value_heads = 1,
                                       .num_hidden_layers = MODEL_LAYERS,
                                       .vocab_size = 11,
                                       .max_position_embeddings = 32,
                                       .rms_norm_eps = 1e-5,
                                       .rope_theta = 10000.0,
                                       .bos_token_id = 1,
                                       .eos_token_id = -1};
    add_param(m, "model.embed_tokens.weight", 11, 8);
    for (int l = 0; l < MODEL_LAYERS; l++) {
        char n[64];
        static const char *const proj[7] = {
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        static const uint64_t rows[7] = {8, 4, 4, 8, 16, 16, 8};
        static const uint64_t cols[7] = {8, 8, 8, 8, 8, 8, 16};
        for (int p = 0; p < 7; p++) {
            snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, proj[p]);
            add_param(m, n, rows[p], cols[p]);
        }
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", l);
        add_param(m, n, 8, 0);
        snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.weight", l);
        add_param(m, n, 8, 0);
    }
    add_param(m, "model.norm.weight", 8, 0);
    add_param(m, "lm_head.weight", 11, 8);
    size_t params = m->floats;
    m->flat = calloc(3 * params, sizeof *m->flat); /* weights, exp_avg, exp_avg_sq */
    assert_non_null(m->flat);
    size_t at = 0;
    for (size_t i = 0; i < m->weights_count; i++) {
        ns_ckpt_tensor *w = &m->weights[i];
        w->data = m->flat + at;
        for (int k = 0; k < 2; k++) {
            ns_ckpt_tensor *o = &m->opt[m->opt_count++];
            *o = *w;
            o->data = m->flat + (size_t)(k + 1) * params + at;
            char *name = m->names[MODEL_PARAMS_MAX + 2 * i + (size_t)k];
            snprintf(name, 64, "%.50s.%s", w->name, k == 0 ? "exp_avg" : "exp_avg_sq");
            o->name = name;
        }
        at += product(w);
    }
    m->floats = 3 * params;
}

static void model_fill(model *m, uint64_t step)
{
    for (size_t i = 0; i < m->floats; i++)
        m->flat[i] = (float)(step * 1000003u + i) * 0.001f;
}

static bool model_holds(const model *m, uint64_t step)
{
    for (size_t i = 0; i < m->floats; i++)
        if (m->flat[i] != (float)(step * 1000003u + i) * 0.001f)
            return false;
    return true;
}

static ns_ckpt_state state_for(uint64_t step)
{
    ns_ckpt_state s = {.step = step,
                       .timestamp_ms = 1790000000000ULL + step,
                       .data_epoch = step / 10,
                       .data_shard = 3,
                       .data_offset = step * 4096,
                       .rng_len = 32};
    for (size_t i = 0; i < s.rng_len; i++)
        s.rng[i] = (uint8_t)(step + i);
    return s;
}

static void save_step(model *m, const char *dir, uint64_t step, size_t keep)
{
    model_fill(m, step);
    ns_ckpt_state s = state_for(step);
    char err[NS_CKPT_ERR_SIZE] = "";
    int rc = ns_ckpt_save(dir, m->weights, m->weights_count, m->opt, m->opt_count, &s, &m->config,
                          keep, NULL, err, sizeof err);
    if (rc != NS_OK)
        fail_msg("save step %llu: %s: %s", (unsigned long long)step, ns_strerror(rc), err);
}

/* Loads into m (scrambled first); returns the step loaded, or fails. */
static uint64_t load_into(model *m, const char *dir)
{
    for (size_t i = 0; i < m->floats; i++)
        m->flat[i] = -1.0f;
    ns_ckpt_state s;
    char err[NS_CKPT_ERR_SIZE] = "";
    int rc = ns_ckpt_load_latest(dir, m->weights, m->weights_count, m->opt, m->opt_count, &s, NULL,
                                 NULL, err, sizeof err);
    if (rc != NS_OK)
        fail_msg("load: %s: %s", ns_strerror(rc), err);
    ns_ckpt_state want = state_for(s.step);
    assert_memory_equal(&s, &want, sizeof s);
    if (!model_holds(m, s.step))
        fail_msg("loaded step %llu but the tensors hold something else",
                 (unsigned long long)s.step);
    return s.step;
}

static void ckpt_file(char *out, size_t size, const char *dir, uint64_t step, const char *name)
{
    snprintf(out, size, "%s/ckpt-%llu/%s", dir, (unsigned long long)step, name);
}

static size_t count_entries(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static void test_ckpt_round_trips(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 42, 3);
    assert_int_equal(load_into(&m, dir), 42);
    ns_ckpt_llama_config cfg;
    ns_ckpt_info info;
    assert_int_equal(
        ns_ckpt_load_latest(dir, m.weights, m.weights_count, NULL, 0, NULL, &cfg, &info, NULL, 0),
        NS_OK);
    assert_int_equal(cfg.hidden_size, m.config.hidden_size);
    assert_int_equal(cfg.intermediate_size, m.config.intermediate_size);
    assert_int_equal(cfg.num_attention_heads, m.config.num_attention_heads);
    assert_int_equal(cfg.num_key_value_heads, m.config.num_key_value_heads);
    assert_int_equal(cfg.num_hidden_layers, m.config.num_hidden_layers);
    assert_int_equal(cfg.vocab_size, m.config.vocab_size);
    assert_int_equal(cfg.max_position_embeddings, m.config.max_position_embeddings);
    assert_true(cfg.rms_norm_eps == m.config.rms_norm_eps);
    assert_true(cfg.rope_theta == m.config.rope_theta);
    assert_int_equal(cfg.bos_token_id, 1);
    assert_int_equal(cfg.eos_token_id, -1);
    assert_int_equal(info.step, 42);
    assert_non_null(strstr(info.path, "/ckpt-42"));
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_model_hash_is_sha256_of_weight_file(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    model_fill(&m, 7);
    ns_ckpt_state s = state_for(7);
    ns_ckpt_info info;
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, m.opt, m.opt_count, &s,
                                  &m.config, 1, &info, NULL, 0),
                     NS_OK);
    char path[512];
    ckpt_file(path, sizeof path, dir, 7, NS_CKPT_MODEL_FILE);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_file_read(path, 1u << 20, &buf, &len), NS_OK);
    uint8_t sha[NS_SHA256_BYTES];
    ns_sha256(sha, buf, len);
    assert_memory_equal(sha, info.model_sha256, sizeof sha);
    assert_int_equal(len, info.model_bytes);
    ns_st_file *f;
    assert_int_equal(ns_st_parse(buf, len, path, &f, NULL, 0), NS_OK);
    assert_string_equal(ns_st_metadata(f, "format"), "pt");
    assert_non_null(ns_st_find(f, "model.layers.1.mlp.down_proj.weight"));
    assert_int_equal(ns_st_count(f), m.weights_count);
    ns_st_free(f);
    free(buf);
    ns_ckpt *c;
    char ckdir[512];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt-7", dir);
    assert_int_equal(ns_ckpt_open(ckdir, &c, NULL, 0), NS_OK);
    assert_memory_equal(ns_ckpt_get_info(c)->model_sha256, sha, sizeof sha);
    ns_ckpt_close(c);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_config_json_is_hugging_face_llama(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 1, 1);
    char path[512];
    ckpt_file(path, sizeof path, dir, 1, NS_CKPT_CONFIG_FILE);
    json_error_t jerr;
    json_t *cfg = json_load_file(path, 0, &jerr);
    assert_non_null(cfg);
    assert_string_equal(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)),
                        "LlamaForCausalLM");
    assert_string_equal(json_string_value(json_object_get(cfg, "model_type")), "llama");
    assert_string_equal(json_string_value(json_object_get(cfg, "torch_dtype")), "float32");
    assert_true(json_is_false(json_object_get(cfg, "tie_word_embeddings")));
    assert_int_equal(json_integer_value(json_object_get(cfg, "num_key_value_heads")), 1);
    assert_int_equal(json_integer_value(json_object_get(cfg, "head_dim")), 4);
    assert_true(json_real_value(json_object_get(cfg, "rms_norm_eps")) == 1e-5);
    assert_true(json_real_value(json_object_get(cfg, "rope_theta")) == 10000.0);
    assert_int_equal(json_integer_value(json_object_get(cfg, "bos_token_id")), 1);
    assert_true(json_is_null(json_object_get(cfg, "eos_token_id")));
    json_decref(cfg);
    uint8_t *text;
    size_t len;
    assert_int_equal(ns_file_read(path, 1u << 16, &text, &len), NS_OK);
    /* Short, as a person would write it, not 1.0000000000000001e-05. */
    assert_true(strstr((char *)text, "\"rms_norm_eps\": 1e-5,") != NULL ||
                strstr((char *)text, "\"rms_norm_eps\": 1e-05,") != NULL);
    free(text);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_keeps_last_k(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    for (uint64_t step = 10; step <= 60; step += 10)
        save_step(&m, dir, step, 3);
    uint64_t steps[8];
    size_t n;
    assert_int_equal(ns_ckpt_list(dir, steps, 8, &n), NS_OK);
    assert_int_equal(n, 3);
    assert_int_equal(steps[0], 60);
    assert_int_equal(steps[1], 50);
    assert_int_equal(steps[2], 40);
    assert_int_equal(count_entries(dir, NS_CKPT_TMP_PREFIX), 0);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_prune_never_touches_later_steps(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 90, 1);
    save_step(&m, dir, 20, 1);
    save_step(&m, dir, 30, 1); /* deletes 20, keeps 90 (not older) and 30 */
    uint64_t steps[8];
    size_t n;
    assert_int_equal(ns_ckpt_list(dir, steps, 8, &n), NS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(steps[0], 90);
    assert_int_equal(steps[1], 30);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_save_of_same_step_replaces_it(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 5, 2);
    model_fill(&m, 6); /* other content, same step */
    ns_ckpt_state s = state_for(5);
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, m.opt, m.opt_count, &s,
                                  &m.config, 2, NULL, NULL, 0),
                     NS_OK);
    ns_ckpt *c;
    assert_int_equal(ns_ckpt_open_latest(dir, &c, NULL, 0), NS_OK);
    model_fill(&m, 0);
    assert_int_equal(ns_ckpt_read(c, m.weights, m.weights_count, m.opt, m.opt_count, NULL, 0),
                     NS_OK);
    assert_true(model_holds(&m, 6));
    ns_ckpt_close(c);
    assert_int_equal(count_entries(dir, NS_CKPT_TMP_PREFIX), 0);
    assert_int_equal(count_entries(dir, NS_CKPT_DIR_PREFIX), 1);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void flip_byte(const char *path, long from_end)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, -from_end, SEEK_END), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, -from_end, SEEK_END), 0);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void test_ckpt_corrupted_weight_byte_falls_back_to_previous(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 1, 3);
    save_step(&m, dir, 2, 3);
    char path[512];
    ckpt_file(path, sizeof path, dir, 2, NS_CKPT_MODEL_FILE);
    flip_byte(path, 5); /* inside the last tensor's data: parses fine, hash differs */
    assert_int_equal(load_into(&m, dir), 1);
    ns_ckpt *c = NULL;
    char err[NS_CKPT_ERR_SIZE];
    char ckdir[512];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt-2", dir);
    assert_int_equal(ns_ckpt_open(ckdir, &c, err, sizeof err), NS_ECORRUPT);
    assert_non_null(strstr(err, "ckpt-2/model.safetensors: SHA-256"));
    assert_null(c);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_tampered_state_falls_back_to_previous(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 1, 3);
    save_step(&m, dir, 2, 3);
    char path[512];
    ckpt_file(path, sizeof path, dir, 2, NS_CKPT_STATE_FILE);
    uint8_t *text;
    size_t len;
    assert_int_equal(ns_file_read(path, 1u << 16, &text, &len), NS_OK);
    char *shard = strstr((char *)text, "\"shard\": 3");
    assert_non_null(shard);
    shard[strlen("\"shard\": ")] = '4'; /* still valid JSON, still every file's right hash */
    assert_int_equal(ns_file_write_atomic(path, text, len, 0600), NS_OK);
    free(text);
    assert_int_equal(load_into(&m, dir), 1);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_missing_file_falls_back_to_previous(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 1, 3);
    save_step(&m, dir, 2, 3);
    char path[512];
    ckpt_file(path, sizeof path, dir, 2, NS_CKPT_OPTIMIZER_FILE);
    assert_int_equal(truncate(path, 100), 0);
    assert_int_equal(load_into(&m, dir), 1);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(load_into(&m, dir), 1);
    free(m.flat);
    ns_test_rmtree(dir);
}

static pid_t dead_pid(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    return pid;
}

static void test_ckpt_leftover_temp_dir_ignored_and_removed(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 3, 3);
    save_step(&m, dir, 9, 3);
    char from[512];
    char to[512];
    snprintf(from, sizeof from, "%s/ckpt-9", dir);
    snprintf(to, sizeof to, "%s/" NS_CKPT_TMP_PREFIX "%ld-9", dir, (long)dead_pid());
    assert_int_equal(rename(from, to), 0); /* a complete-looking leftover */
    char live[512];
    snprintf(live, sizeof live, "%s/" NS_CKPT_TMP_PREFIX "%ld-4", dir, (long)getppid());
    assert_int_equal(mkdir(live, 0700), 0); /* a live process's work: left alone */
    assert_int_equal(load_into(&m, dir), 3);
    struct stat st;
    assert_int_equal(stat(to, &st), -1);
    assert_int_equal(stat(live, &st), 0);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_refuses_checkpoint_of_other_shapes(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    save_step(&m, dir, 1, 3);
    model_fill(&m, 77);
    m.weights[0].shape[0] = 12; /* another vocabulary */
    char err[NS_CKPT_ERR_SIZE];
    assert_int_equal(ns_ckpt_load_latest(dir, m.weights, m.weights_count - 1, m.opt, m.opt_count,
                                         NULL, NULL, NULL, err, sizeof err),
                     NS_ECORRUPT);
    assert_non_null(strstr(err, "model.embed_tokens.weight\" has shape [11, 8], expected [12, 8]"));
    assert_true(model_holds(&m, 77)); /* nothing copied */
    m.weights[0].shape[0] = 11;
    assert_int_equal(ns_ckpt_load_latest(dir, m.weights, m.weights_count - 1, NULL, 0, NULL, NULL,
                                         NULL, err, sizeof err),
                     NS_ECORRUPT);
    assert_non_null(strstr(err, "tensor \"lm_head.weight\" is not in this model"));
    assert_true(model_holds(&m, 77));
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_load_without_checkpoint_is_enoent(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    assert_int_equal(
        ns_ckpt_load_latest(dir, m.weights, m.weights_count, NULL, 0, NULL, NULL, NULL, NULL, 0),
        NS_ENOENT);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none", dir);
    ns_ckpt *c;
    assert_int_equal(ns_ckpt_open_latest(missing, &c, NULL, 0), NS_ENOENT);
    free(m.flat);
    ns_test_rmtree(dir);
}

static void test_ckpt_save_refuses_bad_arguments(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    ns_ckpt_state s = state_for(1);
    char err[NS_CKPT_ERR_SIZE];
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, NULL, 0, &s, &m.config, 0, NULL,
                                  err, sizeof err),
                     NS_EINVAL);
    s.rng_len = NS_CKPT_RNG_BYTES_MAX + 1;
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, NULL, 0, &s, &m.config, 1, NULL,
                                  err, sizeof err),
                     NS_EINVAL);
    s = state_for(1);
    s.data_offset = UINT64_MAX;
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, NULL, 0, &s, &m.config, 1, NULL,
                                  err, sizeof err),
                     NS_EOVERFLOW);
    s = state_for(1);
    m.config.num_key_value_heads = 3;
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, NULL, 0, &s, &m.config, 1, NULL,
                                  err, sizeof err),
                     NS_EINVAL);
    m.config.num_key_value_heads = 1;
    m.weights[1].name = m.weights[0].name;
    assert_int_equal(ns_ckpt_save(dir, m.weights, m.weights_count, NULL, 0, &s, &m.config, 1, NULL,
                                  err, sizeof err),
                     NS_EINVAL);
    assert_non_null(strstr(err, "appears twice"));
    assert_int_equal(count_entries(dir, ""), 2); /* . and .. : nothing left behind */
    free(m.flat);
    ns_test_rmtree(dir);
}

/* ---- crashes ------------------------------------------------------------------------------ */

#ifndef CRASH_ROUNDS
#define CRASH_ROUNDS 50 /* a longer soak: -DCRASH_ROUNDS=1000 */
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Every ckpt-<step> directory in dir opens and verifies: none is half-written. */
static void expect_all_verify(const char *dir, uint64_t seed)
{
    uint64_t steps[16];
    size_t n;
    assert_int_equal(ns_ckpt_list(dir, steps, 16, &n), NS_OK);
    for (size_t i = 0; i < n; i++) {
        char path[512];
        char err[NS_CKPT_ERR_SIZE] = "";
        snprintf(path, sizeof path, "%s/ckpt-%llu", dir, (unsigned long long)steps[i]);
        ns_ckpt *c;
        int rc = ns_ckpt_open(path, &c, err, sizeof err);
        if (rc != NS_OK)
            fail_msg("seed=%llu: a broken checkpoint was left: %s", (unsigned long long)seed, err);
        ns_ckpt_close(c);
    }
}

/* The child: saves step after step until it is killed. */
_Noreturn static void save_forever(model *m, const char *dir, uint64_t step)
{
    for (;; step++) {
        model_fill(m, step);
        ns_ckpt_state s = state_for(step);
        if (ns_ckpt_save(dir, m->weights, m->weights_count, m->opt, m->opt_count, &s, &m->config, 2,
                         NULL, NULL, 0) != NS_OK)
            _exit(3);
    }
}

static void test_ckpt_sigkill_during_save_never_leaves_a_bad_checkpoint(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    model m;
    model_init(&m);
    double t0 = now_s();
    save_step(&m, dir, 1, 2);
    double save_s = now_s() - t0;
    uint64_t seed = (uint64_t)time(NULL);
    uint64_t x = seed | 1;
    uint64_t last = 1;
    for (int round = 0; round < CRASH_ROUNDS; round++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* Anywhere from before the first save ends to several saves in. */
        useconds_t delay_us = (useconds_t)((double)(x % 1000) / 1000.0 * 6 * save_s * 1e6);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            save_forever(&m, dir, last + 1);
        usleep(delay_us);
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status))
            fail_msg("seed=%llu round=%d: the saving child exited %d on its own",
                     (unsigned long long)seed, round, WEXITSTATUS(status));
        uint64_t got = load_into(&m, dir); /* fails the test on any bad load */
        if (got < last)
            fail_msg("seed=%llu round=%d: loaded step %llu after %llu", (unsigned long long)seed,
                     round, (unsigned long long)got, (unsigned long long)last);
        last = got;
        expect_all_verify(dir, seed);
        assert_int_equal(count_entries(dir, NS_CKPT_TMP_PREFIX), 0);
    }
    print_message("crash rounds=%d last_step=%llu save_ms=%.1f seed=%llu\n", CRASH_ROUNDS,
                  (unsigned long long)last, save_s * 1e3, (unsigned long long)seed);
    free(m.flat);
    ns_test_rmtree(dir);
}

int main(void)
{
    ns_log_set_level(NS_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_st_round_trips_tensors_and_metadata),
        cmocka_unit_test(test_st_writer_matches_hand_built_bytes),
        cmocka_unit_test(test_st_write_fd_hashes_what_it_writes),
        cmocka_unit_test(test_st_open_refuses_missing_file),
        cmocka_unit_test(test_st_accepts_empty_header),
        cmocka_unit_test(test_st_refuses_file_shorter_than_length_field),
        cmocka_unit_test(test_st_refuses_header_length_past_end),
        cmocka_unit_test(test_st_refuses_header_length_cutting_json),
        cmocka_unit_test(test_st_refuses_header_over_limit),
        cmocka_unit_test(test_st_refuses_truncated_data),
        cmocka_unit_test(test_st_refuses_overlapping_offsets),
        cmocka_unit_test(test_st_refuses_gap_between_tensors),
        cmocka_unit_test(test_st_refuses_data_no_tensor_covers),
        cmocka_unit_test(test_st_refuses_shape_size_mismatch),
        cmocka_unit_test(test_st_refuses_shape_overflow),
        cmocka_unit_test(test_st_refuses_unknown_dtype),
        cmocka_unit_test(test_st_refuses_duplicate_names),
        cmocka_unit_test(test_st_refuses_json_too_deep),
        cmocka_unit_test(test_st_refuses_json_with_too_many_values),
        cmocka_unit_test(test_st_refuses_offsets_past_end),
        cmocka_unit_test(test_st_refuses_malformed_fields),
        cmocka_unit_test(test_st_get_refuses_wrong_dtype_or_shape_naming_both),
        cmocka_unit_test(test_st_writer_refuses_what_reader_would),
        cmocka_unit_test(test_sha256_stream_matches_one_shot),
        cmocka_unit_test(test_ckpt_round_trips),
        cmocka_unit_test(test_ckpt_model_hash_is_sha256_of_weight_file),
        cmocka_unit_test(test_ckpt_config_json_is_hugging_face_llama),
        cmocka_unit_test(test_ckpt_keeps_last_k),
        cmocka_unit_test(test_ckpt_prune_never_touches_later_steps),
        cmocka_unit_test(test_ckpt_save_of_same_step_replaces_it),
        cmocka_unit_test(test_ckpt_corrupted_weight_byte_falls_back_to_previous),
        cmocka_unit_test(test_ckpt_tampered_state_falls_back_to_previous),
        cmocka_unit_test(test_ckpt_missing_file_falls_back_to_previous),
        cmocka_unit_test(test_ckpt_leftover_temp_dir_ignored_and_removed),
        cmocka_unit_test(test_ckpt_refuses_checkpoint_of_other_shapes),
        cmocka_unit_test(test_ckpt_load_without_checkpoint_is_enoent),
        cmocka_unit_test(test_ckpt_save_refuses_bad_arguments),
        cmocka_unit_test(test_ckpt_sigkill_during_save_never_leaves_a_bad_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
