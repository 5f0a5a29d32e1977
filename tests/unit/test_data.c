/*
 * test_data.c: the tokenizer, the Brown converter, datasets and the batch loader (SPEC S11).
 *
 * Everything runs on small hand-written text, so no test needs the network; the one test that
 * wants the real Brown corpus (the pinned Genesis manifest) skips when scripts/fetch-data.sh has
 * not been run. Each test makes its own temporary directory and removes it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "neuroshard/data.h"
#include "support/testutil.h"

/* ---- a small corpus ----------------------------------------------------------------------- */

static const char *const sentences[] = {
    "The jury said the election was conducted in a fair and orderly manner.",
    "She walked along the river, thinking about the letters her brother had written.",
    "Prices of wheat and corn rose again this week, the third rise since March.",
    "\"We will not give up,\" the mayor told the crowd outside the city hall.",
    "A quiet morning: the birds, the wind in the pines, and the smell of coffee.",
    "It's the kind of problem that doesn't go away when you ignore it.",
    "The committee's report runs to 312 pages and recommends 14 changes.",
    "He asked whether the train to Boston would leave on time (it didn't).",
    "Children played in the street until their mothers called them home.",
    "The old house stood at the end of the road, its windows dark.",
};

/* About len bytes of sentences in an order drawn from seed: the same seed, the same text. */
static char *make_corpus(size_t len, uint32_t seed)
{
    char *text = malloc(len + 256);
    assert_non_null(text);
    size_t at = 0;
    uint32_t x = seed;
    size_t n_sent = sizeof sentences / sizeof sentences[0];
    while (at < len) {
        x = x * 1664525u + 1013904223u;
        const char *s = sentences[(x >> 16) % n_sent];
        size_t n = strlen(s);
        memcpy(text + at, s, n);
        at += n;
        text[at++] = (x >> 8) % 5 == 0 ? '\n' : ' ';
    }
    text[at] = '\0';
    return text;
}

static ns_bpe *train_small(uint32_t vocab)
{
    char *text = make_corpus(20000, 1);
    ns_bpe *bpe;
    assert_int_equal(ns_bpe_train((const uint8_t *)text, strlen(text), vocab, &bpe), NS_OK);
    free(text);
    return bpe;
}

static void assert_round_trip(const ns_bpe *bpe, const uint8_t *buf, size_t len)
{
    uint32_t *ids = malloc((len + 1) * sizeof *ids);
    uint8_t *back = malloc(len + 1);
    assert_non_null(ids);
    assert_non_null(back);
    size_t n = ns_bpe_encode(bpe, buf, len, ids);
    assert_true(n <= len);
    size_t back_len;
    assert_int_equal(ns_bpe_decode(bpe, ids, n, back, len + 1, &back_len), NS_OK);
    assert_int_equal(back_len, len);
    assert_memory_equal(back, buf, len);
    free(ids);
    free(back);
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    uint8_t *buf;
    assert_int_equal(ns_file_read(path, 1 << 24, &buf, len), NS_OK);
    return buf;
}

static void key_from_byte(ns_key *key, uint8_t b)
{
    uint8_t seckey[NS_SECKEY_BYTES] = {0x42};
    seckey[NS_SECKEY_BYTES - 1] = b;
    assert_int_equal(ns_key_from_seckey(key, seckey), NS_OK);
}

/* ---- tokenizer ---------------------------------------------------------------------------- */

static void test_bpe_round_trips_arbitrary_bytes(void **state)
{
    (void)state;
    ns_bpe *bpe = train_small(600);
    const uint8_t tricky[] = {0x00, 'a',  0x00, 0xff, 0xfe, 0xc0, 0x80, 0xed, 0xa0, 0x80, 0xf4,
                              0x90, 0x80, 0x80, 0x80, ' ',  ' ',  '\n', '\t', 0xe2, 0x82, 0xac,
                              'x',  '\'', 's',  ' ',  0xe2, 0x82, 0x00, 't',  'h',  'e',  ' '};
    assert_round_trip(bpe, tricky, sizeof tricky);
    uint8_t buf[4096];
    uint32_t x = 7;
    for (int round = 0; round < 200; round++) {
        size_t len = (size_t)(x % sizeof buf);
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            /* mostly text-like bytes, with NULs, spaces and high bytes mixed in */
            uint8_t r = (uint8_t)(x >> 16);
            buf[i] = r < 16   ? 0
                     : r < 64 ? ' '
                     : r < 96 ? (uint8_t)(0x80 | r)
                              : (uint8_t)('a' + r % 26);
        }
        assert_round_trip(bpe, buf, len);
        x = x * 1103515245u + 12345u;
    }
    ns_bpe_free(bpe);
}

static void test_bpe_training_is_deterministic(void **state)
{
    (void)state;
    ns_bpe *a = train_small(700);
    ns_bpe *b = train_small(700);
    uint8_t ha[NS_SHA256_BYTES];
    uint8_t hb[NS_SHA256_BYTES];
    ns_bpe_hash(a, ha);
    ns_bpe_hash(b, hb);
    assert_memory_equal(ha, hb, sizeof ha);
    assert_int_equal(ns_bpe_vocab_size(a), ns_bpe_vocab_size(b));
    assert_true(ns_bpe_vocab_size(a) > 500); /* the small corpus runs out of pairs near 560 */
    ns_bpe_free(a);
    ns_bpe_free(b);
}

static void test_bpe_merges_make_encoding_shorter(void **state)
{
    (void)state;
    char *text = make_corpus(20000, 2); /* another draw than the training text */
    size_t len = strlen(text);
    uint32_t *ids = malloc(len * sizeof *ids);
    assert_non_null(ids);
    ns_bpe *bytes_only;
    assert_int_equal(ns_bpe_from_merges(NULL, 0, &bytes_only, NULL), NS_OK);
    assert_int_equal(ns_bpe_encode(bytes_only, (const uint8_t *)text, len, ids), len);
    ns_bpe *bpe = train_small(800);
    size_t n = ns_bpe_encode(bpe, (const uint8_t *)text, len, ids);
    assert_true(n * 3 < len); /* over three bytes a token on text like the training text */
    ns_bpe_free(bpe);
    ns_bpe_free(bytes_only);
    free(ids);
    free(text);
}

/* The reference: every merge in order, each applied left to right over the whole piece. */
static size_t reference_encode_piece(const ns_bpe *bpe, const uint32_t *pairs, const uint8_t *s,
                                     size_t n, uint32_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = s[i];
    for (uint32_t m = 0; m < ns_bpe_merge_count(bpe); m++) {
        size_t w = 0;
        for (size_t i = 0; i < n; i++) {
            if (i + 1 < n && out[i] == pairs[2 * m] && out[i + 1] == pairs[2 * m + 1]) {
                out[w++] = NS_BPE_FIRST_MERGE + m;
                i++;
            } else {
                out[w++] = out[i];
            }
        }
        n = w;
    }
    return n;
}

static void test_bpe_encode_matches_merges_applied_in_order(void **state)
{
    (void)state;
    ns_bpe *bpe = train_small(600);
    uint8_t *file;
    size_t file_len;
    assert_int_equal(ns_bpe_serialize(bpe, &file, &file_len), NS_OK);
    uint32_t count = ns_bpe_merge_count(bpe);
    uint32_t *pairs = malloc(2 * count * sizeof *pairs);
    for (size_t i = 0; i < 2 * (size_t)count; i++) {
        const uint8_t *p = file + NS_BPE_FILE_HEADER_BYTES + 4 * i;
        pairs[i] =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    }
    /* a text unlike the training text in its mix, with pieces that merge only partly */
    char *text = make_corpus(6000, 5);
    static const char odd[] = "unjurylike thinkingly rerisen 13121999 caf\xc3\xa9ss";
    memcpy(text + 100, odd, sizeof odd - 1);
    size_t len = strlen(text);
    uint32_t got[NS_BPE_PIECE_BYTES_MAX];
    uint32_t want[NS_BPE_PIECE_BYTES_MAX];
    for (size_t pos = 0; pos < len;) {
        size_t n = ns_bpe_piece_len((const uint8_t *)text + pos, len - pos);
        size_t ng = ns_bpe_encode(bpe, (const uint8_t *)text + pos, n, got);
        size_t nw = reference_encode_piece(bpe, pairs, (const uint8_t *)text + pos, n, want);
        assert_int_equal(ng, nw);
        assert_memory_equal(got, want, ng * sizeof got[0]);
        pos += n;
    }
    free(text);
    free(pairs);
    free(file);
    ns_bpe_free(bpe);
}

static void test_bpe_tokens_never_cross_a_word(void **state)
{
    (void)state;
    ns_bpe *bpe = train_small(800);
    for (uint32_t id = NS_BPE_FIRST_MERGE; id < ns_bpe_vocab_size(bpe); id++) {
        size_t len;
        const uint8_t *t = ns_bpe_token_bytes(bpe, id, &len);
        assert_non_null(t);
        assert_int_equal(ns_bpe_piece_len(t, len), len); /* a token is at most one piece */
    }
    ns_bpe_free(bpe);
}

static void test_bpe_pieces_follow_the_rules(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t len;
    } cases[] = {
        {"hello world", 5},  {" world", 6},   {"   word", 2}, {"don't", 3}, {"'tis", 4},
        {" 'tis", 5},        {"1999 was", 4}, {"...\"x", 4},  {"\n\nA", 2}, {"  \n", 3},
        {"caf\xc3\xa9s", 6}, {"a1", 1},       {"x", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = ns_bpe_piece_len((const uint8_t *)cases[i].text, strlen(cases[i].text));
        if (got != cases[i].len)
            fail_msg("piece of \"%s\": %zu bytes, want %zu", cases[i].text, got, cases[i].len);
    }
    uint8_t run[200];
    memset(run, 'a', sizeof run);
    assert_int_equal(ns_bpe_piece_len(run, sizeof run), NS_BPE_PIECE_BYTES_MAX);
}

static void test_bpe_end_of_text_is_special(void **state)
{
    (void)state;
    ns_bpe *bpe = train_small(600);
    const char *text = "before<|endoftext|>after";
    uint32_t ids[64];
    size_t n = ns_bpe_encode(bpe, (const uint8_t *)text, strlen(text), ids);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(ids[i], NS_BPE_EOT);
    uint32_t with_eot[] = {'a', NS_BPE_EOT, 'b'};
    uint8_t out[8];
    size_t out_len;
    assert_int_equal(ns_bpe_decode(bpe, with_eot, 3, out, sizeof out, &out_len), NS_OK);
    assert_int_equal(out_len, 2);
    assert_memory_equal(out, "ab", 2);
    ns_bpe_free(bpe);
}

static void test_bpe_decode_refuses_unknown_id(void **state)
{
    (void)state;
    ns_bpe *bpe = train_small(600);
    uint32_t ids[] = {'a', ns_bpe_vocab_size(bpe)};
    uint8_t out[256];
    size_t out_len;
    assert_int_equal(ns_bpe_decode(bpe, ids, 2, out, sizeof out, &out_len), NS_EINVAL);
    assert_int_equal(ns_bpe_decode(bpe, ids, 1, out, 0, &out_len), NS_ETOOBIG);
    ns_bpe_free(bpe);
}

static void test_bpe_training_stops_when_no_pair_repeats(void **state)
{
    (void)state;
    const char *text = "abcabc xyz";
    ns_bpe *bpe;
    assert_int_equal(ns_bpe_train((const uint8_t *)text, strlen(text), 5000, &bpe), NS_OK);
    /* "ab" (2), then "abc" (2), then "abcabc" is one piece seen once: two merges, then none. */
    assert_int_equal(ns_bpe_merge_count(bpe), 2);
    assert_int_equal(ns_bpe_vocab_size(bpe), NS_BPE_FIRST_MERGE + 2);
    ns_bpe_free(bpe);
    assert_int_equal(ns_bpe_train((const uint8_t *)text, strlen(text), 256, &bpe), NS_EINVAL);
}

static void test_bpe_save_load_round_trip(void **state)
{
    (void)state;
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    char path[320];
    snprintf(path, sizeof path, "%s/tokenizer.bpe", dir);
    ns_bpe *bpe = train_small(700);
    assert_int_equal(ns_bpe_save(bpe, path), NS_OK);
    ns_bpe *back;
    char err[NS_DATA_ERR_BYTES];
    assert_int_equal(ns_bpe_load(path, &back, err), NS_OK);
    uint8_t ha[NS_SHA256_BYTES];
    uint8_t hb[NS_SHA256_BYTES];
    ns_bpe_hash(bpe, ha);
    ns_bpe_hash(back, hb);
    assert_memory_equal(ha, hb, sizeof ha);
    char *text = make_corpus(5000, 3);
    size_t len = strlen(text);
    uint32_t *x = malloc(len * sizeof *x);
    uint32_t *y = malloc(len * sizeof *y);
    size_t nx = ns_bpe_encode(bpe, (const uint8_t *)text, len, x);
    size_t ny = ns_bpe_encode(back, (const uint8_t *)text, len, y);
    assert_int_equal(nx, ny);
    assert_memory_equal(x, y, nx * sizeof *x);
    free(x);
    free(y);
    free(text);
    ns_bpe_free(bpe);
    ns_bpe_free(back);
    ns_test_rmtree(dir);
}

/* Saves a tokenizer, lets damage() change the file, and checks that loading it is refused with
 * want_rc and an error line that names the file and contains want_text. */
static void check_refused(void (*damage)(uint8_t *buf, size_t *len), int want_rc,
                          const char *want_text)
{
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    char path[320];
    snprintf(path, sizeof path, "%s/tokenizer.bpe", dir);
    ns_bpe *bpe = train_small(600);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_bpe_serialize(bpe, &buf, &len), NS_OK);
    damage(buf, &len);
    write_file(path, buf, len);
    ns_bpe *back = NULL;
    char err[NS_DATA_ERR_BYTES] = "";
    assert_int_equal(ns_bpe_load(path, &back, err), want_rc);
    assert_null(back);
    if (strstr(err, path) == NULL || strstr(err, want_text) == NULL)
        fail_msg("error line \"%s\" should name %s and say \"%s\"", err, path, want_text);
    free(buf);
    ns_bpe_free(bpe);
    ns_test_rmtree(dir);
}

static void truncate_file(uint8_t *buf, size_t *len)
{
    (void)buf;
    *len -= 40;
}

static void flip_a_merge_byte(uint8_t *buf, size_t *len)
{
    (void)len;
    buf[NS_BPE_FILE_HEADER_BYTES + 5] ^= 0x01;
}

static void change_magic(uint8_t *buf, size_t *len)
{
    (void)len;
    buf[0] = 'X';
}

/* Rewrites the version and recomputes the hash, so only the version is wrong. */
static void change_version(uint8_t *buf, size_t *len)
{
    buf[8] = 2;
    ns_sha256(buf + *len - NS_SHA256_BYTES, buf, *len - NS_SHA256_BYTES);
}

/* Makes merge 0 use a token that no merge has made yet, with a correct hash. */
static void use_unmade_token(uint8_t *buf, size_t *len)
{
    buf[NS_BPE_FILE_HEADER_BYTES] = 0x00;
    buf[NS_BPE_FILE_HEADER_BYTES + 1] = 0x02; /* left id 512, little-endian */
    ns_sha256(buf + *len - NS_SHA256_BYTES, buf, *len - NS_SHA256_BYTES);
}

/* Makes merge 1 repeat merge 0, with a correct hash. */
static void repeat_a_merge(uint8_t *buf, size_t *len)
{
    memcpy(buf + NS_BPE_FILE_HEADER_BYTES + 8, buf + NS_BPE_FILE_HEADER_BYTES, 8);
    ns_sha256(buf + *len - NS_SHA256_BYTES, buf, *len - NS_SHA256_BYTES);
}

static void test_bpe_refuses_truncated_file(void **state)
{
    (void)state;
    check_refused(truncate_file, NS_ECORRUPT, "truncated");
}

static void test_bpe_refuses_file_with_wrong_hash(void **state)
{
    (void)state;
    check_refused(flip_a_merge_byte, NS_ECORRUPT, "SHA-256");
}

static void test_bpe_refuses_file_without_magic(void **state)
{
    (void)state;
    check_refused(change_magic, NS_ECORRUPT, "not a tokenizer file");
}

static void test_bpe_refuses_other_version(void **state)
{
    (void)state;
    check_refused(change_version, NS_EFOREIGN, "version 2");
}

static void test_bpe_refuses_merge_of_unmade_token(void **state)
{
    (void)state;
    check_refused(use_unmade_token, NS_ECORRUPT, "not made before it");
}

static void test_bpe_refuses_repeated_merge(void **state)
{
    (void)state;
    check_refused(repeat_a_merge, NS_ECORRUPT, "repeats merge 0");
}

static void test_bpe_refuses_every_truncation(void **state)
{
    (void)state;
    ns_bpe *bpe = train_small(300);
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_bpe_serialize(bpe, &buf, &len), NS_OK);
    for (size_t n = 0; n < len; n++) {
        ns_bpe *back = NULL;
        assert_int_not_equal(ns_bpe_parse(buf, n, &back, NULL), NS_OK);
        assert_null(back);
    }
    free(buf);
    ns_bpe_free(bpe);
}

/* ---- Brown -------------------------------------------------------------------------------- */

static void check_brown(const char *tagged, const char *want)
{
    uint8_t *out;
    size_t out_len;
    assert_int_equal(ns_brown_to_text((const uint8_t *)tagged, strlen(tagged), &out, &out_len),
                     NS_OK);
    if (out_len != strlen(want) || memcmp(out, want, out_len) != 0)
        fail_msg("Brown text\n%s\ngave\n%.*s\nwant\n%s", tagged, (int)out_len, out, want);
    free(out);
}

static void test_brown_strips_tags(void **state)
{
    (void)state;
    check_brown("\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr\n",
                "The Fulton County Grand Jury said Friday\n");
}

static void test_brown_restores_punctuation_spacing(void **state)
{
    (void)state;
    check_brown("\t``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ./.\n",
                "\"Only a handful\", the jury said.\n");
    check_brown("\tHe/pps left/vbd (/( at/in noon/nn )/) ;/. why/wrb ?/.\n",
                "He left (at noon); why?\n");
    check_brown("\tIvan/np Allen/np Jr./np ./.\n", "Ivan Allen Jr.\n");
    check_brown("\tDo/do n't/* --/-- ever/rb !/.\n", "Do n't -- ever!\n");
}

static void test_brown_keeps_slashes_inside_words(void **state)
{
    (void)state;
    check_brown("\tabout/rb 1/2/cd of/in and/or/cc //in it/pps\n", "about 1/2 of and/or / it\n");
}

static void test_brown_paragraphs_and_headlines(void **state)
{
    (void)state;
    check_brown("\n\n\tOne/cd ./.\nTwo/cd ./.\n\n\n\tThree/cd ./.\n\n\n"
                "Merger/nn-hl proposed/vbn-hl \nHowever/wrb ,/, no/at ./.\n",
                "One. Two.\nThree.\nMerger proposed\nHowever, no.\n");
}

/* ---- datasets ----------------------------------------------------------------------------- */

typedef struct ds_fixture {
    char dir[256];
    char out[320];
    ns_key key;
    ns_dataset ds;
    char *text;
    size_t len;
} ds_fixture;

static int ds_setup(void **state)
{
    ds_fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    ns_test_tempdir(f->dir, sizeof f->dir);
    snprintf(f->out, sizeof f->out, "%s/ds", f->dir);
    key_from_byte(&f->key, 1);
    f->text = make_corpus(30000, 4);
    f->len = strlen(f->text);
    char err[NS_DATA_ERR_BYTES];
    /* 30 KB in 2 KB shards: about 15 shards, so the split has more than one validation shard */
    assert_int_equal(ns_dataset_build((const uint8_t *)f->text, f->len, f->out, "test", &f->key,
                                      2048, &f->ds, err),
                     NS_OK);
    *state = f;
    return 0;
}

static int ds_teardown(void **state)
{
    ds_fixture *f = *state;
    ns_test_rmtree(f->dir);
    free(f->text);
    free(f);
    return 0;
}

static void test_dataset_manifest_signature_verifies(void **state)
{
    ds_fixture *f = *state;
    ns_dataset *opened = malloc(sizeof *opened);
    char err[NS_DATA_ERR_BYTES];
    assert_int_equal(ns_dataset_open(f->out, f->key.node_id, opened, err), NS_OK);
    assert_memory_equal(opened->signer, f->key.node_id, NS_NODE_ID_BYTES);
    assert_memory_equal(opened->manifest_sha256, f->ds.manifest_sha256, NS_SHA256_BYTES);
    assert_int_equal(opened->shard_count, f->ds.shard_count);
    assert_memory_equal(opened->shards, f->ds.shards, f->ds.shard_count * sizeof f->ds.shards[0]);
    assert_string_equal(opened->name, "test");
    free(opened);
}

static void test_dataset_shards_hold_the_text_in_order(void **state)
{
    ds_fixture *f = *state;
    size_t at = 0;
    assert_true(f->ds.shard_count > 8);
    for (uint32_t i = 0; i < f->ds.shard_count; i++) {
        uint8_t *buf;
        size_t len;
        char err[NS_DATA_ERR_BYTES];
        assert_int_equal(ns_dataset_read_shard(&f->ds, i, &buf, &len, err), NS_OK);
        assert_true(len <= 2048);
        assert_memory_equal(buf, f->text + at, len);
        at += len;
        free(buf);
    }
    assert_int_equal(at, f->len);
}

static void test_dataset_refuses_tampered_shard(void **state)
{
    ds_fixture *f = *state;
    char path[400];
    assert_int_equal(ns_dataset_shard_path(f->out, 3, path, sizeof path), NS_OK);
    size_t len;
    uint8_t *buf = read_whole(path, &len);
    buf[len / 2] ^= 0x20;
    write_file(path, buf, len);
    uint8_t *got = NULL;
    size_t got_len;
    char err[NS_DATA_ERR_BYTES] = "";
    assert_int_equal(ns_dataset_read_shard(&f->ds, 3, &got, &got_len, err), NS_ECORRUPT);
    assert_null(got);
    if (strstr(err, path) == NULL || strstr(err, "refused") == NULL)
        fail_msg("error line \"%s\" should name %s", err, path);
    buf[len / 2] ^= 0x20;
    write_file(path, buf, len);
    assert_int_equal(ns_dataset_read_shard(&f->ds, 3, &got, &got_len, err), NS_OK);
    free(got);
    free(buf);
}

static void test_dataset_refuses_longer_shard(void **state)
{
    ds_fixture *f = *state;
    char path[400];
    assert_int_equal(ns_dataset_shard_path(f->out, 0, path, sizeof path), NS_OK);
    size_t len;
    uint8_t *buf = read_whole(path, &len);
    FILE *fh = fopen(path, "ab");
    assert_non_null(fh);
    fputc('x', fh);
    fclose(fh);
    uint8_t *got = NULL;
    size_t got_len;
    char err[NS_DATA_ERR_BYTES] = "";
    assert_int_equal(ns_dataset_read_shard(&f->ds, 0, &got, &got_len, err), NS_ECORRUPT);
    assert_non_null(strstr(err, path));
    write_file(path, buf, len);
    free(buf);
}

static void test_dataset_refuses_tampered_manifest(void **state)
{
    ds_fixture *f = *state;
    char path[400];
    snprintf(path, sizeof path, "%s/manifest", f->out);
    size_t len;
    uint8_t *buf = read_whole(path, &len);
    ns_dataset *opened = malloc(sizeof *opened);
    char err[NS_DATA_ERR_BYTES];
    /* one shard hash changed inside the signed body: the signature no longer covers it */
    buf[len - 80] ^= 0x01;
    write_file(path, buf, len);
    assert_int_not_equal(ns_dataset_open(f->out, NULL, opened, err), NS_OK);
    assert_non_null(strstr(err, path));
    buf[len - 80] ^= 0x01;
    write_file(path, buf, len);
    assert_int_equal(ns_dataset_open(f->out, NULL, opened, err), NS_OK);
    free(opened);
    free(buf);
}

static void test_dataset_refuses_other_signer(void **state)
{
    ds_fixture *f = *state;
    ns_key other;
    key_from_byte(&other, 2);
    ns_dataset *opened = malloc(sizeof *opened);
    char err[NS_DATA_ERR_BYTES];
    assert_int_equal(ns_dataset_open(f->out, other.node_id, opened, err), NS_EAUTHOR);
    free(opened);
}

static void test_dataset_shard_for_node_is_hash_mod_train_count(void **state)
{
    ds_fixture *f = *state;
    unsigned hits[NS_DATASET_SHARDS_MAX] = {0};
    for (uint32_t n = 0; n < 200; n++) {
        uint8_t node_id[NS_NODE_ID_BYTES];
        ns_sha256(node_id, &n, sizeof n);
        uint8_t h[NS_SHA256_BYTES];
        ns_sha256(h, node_id, sizeof node_id);
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            v = v << 8 | h[i];
        uint32_t want = f->ds.train[v % f->ds.train_count];
        uint32_t got = ns_dataset_shard_for_node(&f->ds, node_id);
        assert_int_equal(got, want);
        assert_int_equal(f->ds.shards[got].split, NS_SHARD_TRAIN);
        hits[got]++;
    }
    for (uint32_t i = 0; i < f->ds.train_count; i++)
        assert_true(hits[f->ds.train[i]] > 0); /* 200 nodes reach every training shard */
}

static void test_dataset_validation_split_is_disjoint(void **state)
{
    ds_fixture *f = *state;
    assert_true(f->ds.val_count >= 1);
    assert_true(f->ds.train_count >= 1);
    assert_int_equal(f->ds.train_count + f->ds.val_count, f->ds.shard_count);
    uint8_t seen[NS_DATASET_SHARDS_MAX] = {0};
    for (uint32_t i = 0; i < f->ds.train_count; i++)
        seen[f->ds.train[i]] |= 1;
    for (uint32_t i = 0; i < f->ds.val_count; i++)
        seen[f->ds.val[i]] |= 2;
    for (uint32_t i = 0; i < f->ds.shard_count; i++)
        assert_true(seen[i] == 1 || seen[i] == 2);
}

static void test_dataset_build_is_deterministic(void **state)
{
    ds_fixture *f = *state;
    char out2[400];
    snprintf(out2, sizeof out2, "%s/again", f->dir);
    ns_dataset *again = malloc(sizeof *again);
    char err[NS_DATA_ERR_BYTES];
    assert_int_equal(
        ns_dataset_build((const uint8_t *)f->text, f->len, out2, "test", &f->key, 2048, again, err),
        NS_OK);
    assert_memory_equal(again->manifest_sha256, f->ds.manifest_sha256, NS_SHA256_BYTES);
    free(again);
}

static void test_dataset_from_dir_matches_text(void **state)
{
    ds_fixture *f = *state;
    char src[400];
    snprintf(src, sizeof src, "%s/src", f->dir);
    assert_int_equal(mkdir(src, 0700), 0);
    /* two files, written in the opposite order of their names; plus one that is not .txt */
    size_t half = f->len / 2;
    char path[500];
    snprintf(path, sizeof path, "%s/b.txt", src);
    write_file(path, f->text + half, f->len - half);
    snprintf(path, sizeof path, "%s/a.txt", src);
    write_file(path, f->text, half);
    snprintf(path, sizeof path, "%s/notes.md", src);
    write_file(path, "\xff", 1);
    char out[400];
    snprintf(out, sizeof out, "%s/fromdir", f->dir);
    ns_dataset *ds = malloc(sizeof *ds);
    char err[NS_DATA_ERR_BYTES];
    assert_int_equal(ns_dataset_build_from_dir(src, out, "test", &f->key, 2048, ds, err), NS_OK);
    /* a.txt, a line end if missing, a blank line, b.txt, likewise */
    size_t len;
    uint8_t *want = malloc(f->len + 8);
    memcpy(want, f->text, half);
    len = half;
    if (want[len - 1] != '\n')
        want[len++] = '\n';
    want[len++] = '\n';
    memcpy(want + len, f->text + half, f->len - half);
    len += f->len - half;
    if (want[len - 1] != '\n')
        want[len++] = '\n';
    want[len++] = '\n';
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, want, len);
    assert_memory_equal(ds->text_sha256, digest, NS_SHA256_BYTES);
    free(want);
    free(ds);
}

static void test_dataset_from_dir_refuses_invalid_utf8(void **state)
{
    ds_fixture *f = *state;
    char src[400];
    snprintf(src, sizeof src, "%s/bad", f->dir);
    assert_int_equal(mkdir(src, 0700), 0);
    char path[500];
    snprintf(path, sizeof path, "%s/good.txt", src);
    write_file(path, "caf\xc3\xa9 ok\n", 8);
    snprintf(path, sizeof path, "%s/latin1.txt", src);
    write_file(path, "caf\xe9 au lait\n", 13);
    char out[400];
    snprintf(out, sizeof out, "%s/badout", f->dir);
    ns_dataset *ds = malloc(sizeof *ds);
    char err[NS_DATA_ERR_BYTES] = "";
    assert_int_equal(ns_dataset_build_from_dir(src, out, "test", &f->key, 2048, ds, err),
                     NS_EPARSE);
    if (strstr(err, path) == NULL || strstr(err, "byte 3") == NULL)
        fail_msg("error line \"%s\" should name %s and byte 3", err, path);
    free(ds);
}

static void test_utf8_validation(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        bool valid;
        size_t bad_offset;
    } cases[] = {
        {"plain ascii text, long enough for the fast path", true, 0},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", true, 0}, /* é € 😀 */
        {"ab\xc0\xaf", false, 2},                          /* overlong '/' */
        {"ab\xe0\x80\xaf", false, 2},                      /* overlong, three bytes */
        {"\xed\xa0\x80", false, 0},                        /* a surrogate */
        {"x\xf4\x90\x80\x80", false, 1},                   /* over U+10FFFF */
        {"xyz\xe2\x82", false, 3},                         /* cut short */
        {"0123456789\x80", false, 10},                     /* a lone continuation byte */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t bad = 999;
        bool ok = ns_utf8_valid((const uint8_t *)cases[i].bytes, strlen(cases[i].bytes), &bad);
        assert_int_equal(ok, cases[i].valid);
        if (!ok)
            assert_int_equal(bad, cases[i].bad_offset);
    }
}

static void test_dataset_refuses_bad_arguments(void **state)
{
    ds_fixture *f = *state;
    char out[400];
    snprintf(out, sizeof out, "%s/refused", f->dir);
    ns_dataset *ds = malloc(sizeof *ds);
    const uint8_t *text = (const uint8_t *)f->text;
    assert_int_equal(ns_dataset_build(text, 0, out, "test", &f->key, 2048, ds, NULL), NS_EINVAL);
    assert_int_equal(ns_dataset_build(text, f->len, out, "Bad Name", &f->key, 2048, ds, NULL),
                     NS_EINVAL);
    assert_int_equal(ns_dataset_build(text, f->len, out, "test", &f->key, 10, ds, NULL), NS_EINVAL);
    /* 30 KB in 256-byte shards would need over a hundred shards: fine; 1024 is the limit */
    size_t big_len = 300 * 1024;
    uint8_t *big = malloc(big_len);
    memset(big, 'a', big_len);
    assert_int_equal(ns_dataset_build(big, big_len, out, "test", &f->key, 256, ds, NULL),
                     NS_ETOOBIG);
    free(big);
    free(ds);
}

/* ---- Genesis ------------------------------------------------------------------------------ */

static void test_genesis_key_is_the_pinned_one(void **state)
{
    (void)state;
    ns_key key;
    ns_genesis_key(&key);
    char hex[NS_NODE_ID_HEX_SIZE];
    ns_hex_encode(hex, sizeof hex, key.node_id, NS_NODE_ID_BYTES);
    assert_string_equal(hex, NS_GENESIS_NODE_ID_HEX);
}

static void test_genesis_builds_the_pinned_manifest(void **state)
{
    (void)state;
    char brown[1024];
    char probe[1100];
    if (ns_brown_default_dir(brown, sizeof brown) != NS_OK)
        skip();
    snprintf(probe, sizeof probe, "%s/ca01", brown);
    if (access(probe, R_OK) != 0) {
        print_message("skipped: no Brown corpus in %s (scripts/fetch-data.sh)\n", brown);
        skip();
    }
    char dir[256];
    ns_test_tempdir(dir, sizeof dir);
    ns_dataset *ds = malloc(sizeof *ds);
    char err[NS_DATA_ERR_BYTES] = "";
    int rc = ns_genesis_build(brown, dir, ds, err);
    if (rc != NS_OK)
        fail_msg("%s", err);
    assert_true(ds->val_count >= 3);
    assert_int_equal(ns_genesis_open(dir, ds, err), NS_OK);
    free(ds);
    ns_test_rmtree(dir);
}

/* ---- loader ------------------------------------------------------------------------------- */

#define LOADER_TOKENS 5000

static uint32_t *make_tokens(void)
{
    uint32_t *t = malloc(LOADER_TOKENS * sizeof *t);
    assert_non_null(t);
    for (uint32_t i = 0; i < LOADER_TOKENS; i++)
        t[i] = i; /* each id tells where it came from */
    return t;
}

static void test_loader_is_deterministic(void **state)
{
    (void)state;
    uint32_t *tokens = make_tokens();
    ns_data_loader *a;
    ns_data_loader *b;
    ns_data_loader *c;
    assert_int_equal(ns_data_loader_new(tokens, LOADER_TOKENS, 4, 32, 99, &a), NS_OK);
    assert_int_equal(ns_data_loader_new(tokens, LOADER_TOKENS, 4, 32, 99, &b), NS_OK);
    assert_int_equal(ns_data_loader_new(tokens, LOADER_TOKENS, 4, 32, 100, &c), NS_OK);
    uint32_t ba[4 * 33];
    uint32_t bb[4 * 33];
    uint32_t bc[4 * 33];
    bool differs = false;
    for (int step = 0; step < 100; step++) {
        ns_data_loader_next(a, ba);
        ns_data_loader_next(b, bb);
        ns_data_loader_next(c, bc);
        assert_memory_equal(ba, bb, sizeof ba);
        differs = differs || memcmp(ba, bc, sizeof ba) != 0;
    }
    assert_true(differs);
    ns_data_loader_free(a);
    ns_data_loader_free(b);
    ns_data_loader_free(c);
    free(tokens);
}

static void test_loader_resumes_at_saved_position(void **state)
{
    (void)state;
    uint32_t *tokens = make_tokens();
    ns_data_loader *a;
    assert_int_equal(ns_data_loader_new(tokens, LOADER_TOKENS, 3, 50, 7, &a), NS_OK);
    uint32_t batch[3 * 51];
    for (int step = 0; step < 40; step++) /* past the first epoch (about 99 windows) */
        ns_data_loader_next(a, batch);
    ns_data_pos saved = ns_data_loader_pos(a);
    assert_true(saved.epoch >= 1);
    uint32_t want[20][3 * 51];
    for (int step = 0; step < 20; step++)
        ns_data_loader_next(a, want[step]);
    ns_data_loader *b;
    assert_int_equal(ns_data_loader_new(tokens, LOADER_TOKENS, 3, 50, 7, &b), NS_OK);
    assert_int_equal(ns_data_loader_seek(b, saved), NS_OK);
    for (int step = 0; step < 20; step++) {
        ns_data_loader_next(b, batch);
        assert_memory_equal(batch, want[step], sizeof batch);
    }
    ns_data_pos bad = {.epoch = 0, .index = ns_data_loader_epoch_sequences(b) + 1};
    assert_int_equal(ns_data_loader_seek(b, bad), NS_EINVAL);
    ns_data_loader_free(a);
    ns_data_loader_free(b);
    free(tokens);
}

static void test_loader_visits_each_window_once_an_epoch(void **state)
{
    (void)state;
    uint32_t *tokens = make_tokens();
    const uint32_t T = 64;
    ns_data_loader *l;
    assert_int_equal(ns_data_loader_new(tokens, LOADER_TOKENS, 1, T, 5, &l), NS_OK);
    uint64_t windows = ns_data_loader_epoch_sequences(l);
    uint8_t *seen = calloc(LOADER_TOKENS, 1);
    uint32_t row[65];
    uint32_t offset = 0;
    for (uint64_t w = 0; w < windows; w++) {
        ns_data_loader_next(l, row);
        for (uint32_t t = 1; t <= T; t++)
            assert_int_equal(row[t], row[0] + t); /* a contiguous piece of the stream */
        assert_int_equal(seen[row[0]], 0);
        seen[row[0]] = 1;
        offset = row[0] % T;
    }
    for (uint32_t start = offset; start + T < LOADER_TOKENS && start < offset + windows * T;
         start += T)
        assert_int_equal(seen[start], 1);
    assert_int_equal(ns_data_loader_pos(l).epoch, 0);
    ns_data_loader_next(l, row);
    assert_int_equal(ns_data_loader_pos(l).epoch, 1);
    free(seen);
    ns_data_loader_free(l);
    free(tokens);
}

static void test_loader_refuses_too_few_tokens(void **state)
{
    (void)state;
    uint32_t tokens[10] = {0};
    ns_data_loader *l;
    assert_int_equal(ns_data_loader_new(tokens, 10, 1, 10, 1, &l), NS_EINVAL);
    assert_int_equal(ns_data_loader_new(tokens, 10, 0, 4, 1, &l), NS_EINVAL);
    assert_int_equal(ns_data_loader_new(tokens, 11, 1, 10, 1, &l), NS_OK);
    ns_data_loader_free(l);
}

static void test_tokenize_shards_ends_each_with_eot(void **state)
{
    ds_fixture *f = *state;
    ns_bpe *bpe = train_small(600);
    uint32_t *ids;
    size_t count;
    char err[NS_DATA_ERR_BYTES];
    uint32_t pick[] = {f->ds.train[0], f->ds.train[1]};
    assert_int_equal(ns_data_tokenize_shards(bpe, &f->ds, pick, 2, &ids, &count, err), NS_OK);
    size_t eots = 0;
    for (size_t i = 0; i < count; i++)
        eots += ids[i] == NS_BPE_EOT;
    assert_int_equal(eots, 2);
    assert_int_equal(ids[count - 1], NS_BPE_EOT);
    free(ids);
    ns_bpe_free(bpe);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_round_trips_arbitrary_bytes),
        cmocka_unit_test(test_bpe_training_is_deterministic),
        cmocka_unit_test(test_bpe_merges_make_encoding_shorter),
        cmocka_unit_test(test_bpe_encode_matches_merges_applied_in_order),
        cmocka_unit_test(test_bpe_tokens_never_cross_a_word),
        cmocka_unit_test(test_bpe_pieces_follow_the_rules),
        cmocka_unit_test(test_bpe_end_of_text_is_special),
        cmocka_unit_test(test_bpe_decode_refuses_unknown_id),
        cmocka_unit_test(test_bpe_training_stops_when_no_pair_repeats),
        cmocka_unit_test(test_bpe_save_load_round_trip),
        cmocka_unit_test(test_bpe_refuses_truncated_file),
        cmocka_unit_test(test_bpe_refuses_file_with_wrong_hash),
        cmocka_unit_test(test_bpe_refuses_file_without_magic),
        cmocka_unit_test(test_bpe_refuses_other_version),
        cmocka_unit_test(test_bpe_refuses_merge_of_unmade_token),
        cmocka_unit_test(test_bpe_refuses_repeated_merge),
        cmocka_unit_test(test_bpe_refuses_every_truncation),
        cmocka_unit_test(test_brown_strips_tags),
        cmocka_unit_test(test_brown_restores_punctuation_spacing),
        cmocka_unit_test(test_brown_keeps_slashes_inside_words),
        cmocka_unit_test(test_brown_paragraphs_and_headlines),
        cmocka_unit_test_setup_teardown(test_dataset_manifest_signature_verifies, ds_setup,
                                        ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_shards_hold_the_text_in_order, ds_setup,
                                        ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_refuses_tampered_shard, ds_setup, ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_refuses_longer_shard, ds_setup, ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_refuses_tampered_manifest, ds_setup,
                                        ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_refuses_other_signer, ds_setup, ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_shard_for_node_is_hash_mod_train_count,
                                        ds_setup, ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_validation_split_is_disjoint, ds_setup,
                                        ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_build_is_deterministic, ds_setup, ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_from_dir_matches_text, ds_setup, ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_from_dir_refuses_invalid_utf8, ds_setup,
                                        ds_teardown),
        cmocka_unit_test_setup_teardown(test_dataset_refuses_bad_arguments, ds_setup, ds_teardown),
        cmocka_unit_test(test_utf8_validation),
        cmocka_unit_test(test_genesis_key_is_the_pinned_one),
        cmocka_unit_test(test_genesis_builds_the_pinned_manifest),
        cmocka_unit_test(test_loader_is_deterministic),
        cmocka_unit_test(test_loader_resumes_at_saved_position),
        cmocka_unit_test(test_loader_visits_each_window_once_an_epoch),
        cmocka_unit_test(test_loader_refuses_too_few_tokens),
        cmocka_unit_test_setup_teardown(test_tokenize_shards_ends_each_with_eot, ds_setup,
                                        ds_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
