/*
 * bench_data.c: how fast the tokenizer encodes the Genesis text, against memcpy of the same text.
 *
 * The text is the Brown corpus as ns_brown_read_all gives it (about 6 MB), from the cache that
 * scripts/fetch-data.sh fills; without it the benchmark says so on stderr and prints no line. A
 * tokenizer of NS_BENCH_VOCAB ids is trained on it first (the time goes to stderr). Then encode
 * and the baseline, memcpy of the same bytes into another buffer (the floor of any pass over the
 * text), are measured in alternating rounds, best round kept. Single thread. Output on stdout:
 *   bench tokenizer_encode_mb_per_s=<x> memcpy_mb_per_s=<y> ratio=<x/y>
 * and on stderr, for reference: training time, bytes per token, UTF-8 validation MB/s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "neuroshard/data.h"

#define BENCH_VOCAB       8192
#define BENCH_ROUNDS      5
#define BENCH_ROUND_S_MIN 0.2 /* each measurement repeats until it has run this long */

static double seconds_now(void)
{
    struct timespec ts;
    NS_ASSERT(clock_gettime(CLOCK_MONOTONIC, &ts) == 0);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct bench_state {
    const ns_bpe *bpe;
    const uint8_t *text;
    size_t len;
    uint32_t *ids;
    uint8_t *copy;
    size_t token_count;
    unsigned valid_count;
} bench_state;

typedef void (*bench_fn)(bench_state *st);

static void run_encode(bench_state *st)
{
    st->token_count = ns_bpe_encode(st->bpe, st->text, st->len, st->ids);
}

static void run_memcpy(bench_state *st)
{
    memcpy(st->copy, st->text, st->len);
    __asm__ volatile("" : : "r"(st->copy) : "memory"); /* the copy must happen */
}

static void run_utf8(bench_state *st)
{
    st->valid_count += ns_utf8_valid(st->text, st->len, NULL);
}

/* MB/s of fn over the text, repeated for at least BENCH_ROUND_S_MIN. */
static double bench_rate(bench_fn fn, bench_state *st)
{
    fn(st); /* warm caches */
    double start = seconds_now();
    double elapsed = 0;
    unsigned runs = 0;
    while (elapsed < BENCH_ROUND_S_MIN) {
        fn(st);
        runs++;
        elapsed = seconds_now() - start;
    }
    return (double)st->len * runs / elapsed / 1e6;
}

static int load_text(uint8_t **text, size_t *len)
{
    char dir[1024];
    char err[NS_DATA_ERR_BYTES];
    if (ns_brown_default_dir(dir, sizeof dir) != NS_OK) {
        fprintf(stderr, "bench_data: skipped: no HOME or XDG_CACHE_HOME to find the corpus\n");
        return NS_ENOENT;
    }
    int rc = ns_brown_read_all(dir, text, len, err);
    if (rc != NS_OK)
        fprintf(stderr, "bench_data: skipped: %s\n", err);
    return rc;
}

int main(void)
{
    uint8_t *text;
    size_t len;
    if (load_text(&text, &len) != NS_OK)
        return 0;
    double t0 = seconds_now();
    ns_bpe *bpe;
    NS_ASSERT(ns_bpe_train(text, len, BENCH_VOCAB, &bpe) == NS_OK);
    double train_s = seconds_now() - t0;
    bench_state st = {.bpe = bpe, .text = text, .len = len};
    st.ids = malloc(len * sizeof *st.ids);
    st.copy = malloc(len);
    NS_ASSERT(st.ids != NULL && st.copy != NULL);

    double encode = 0;
    double copy = 0;
    double utf8 = 0;
    for (int r = 0; r < BENCH_ROUNDS; r++) {
        double e = bench_rate(run_encode, &st);
        double c = bench_rate(run_memcpy, &st);
        double u = bench_rate(run_utf8, &st);
        encode = e > encode ? e : encode;
        copy = c > copy ? c : copy;
        utf8 = u > utf8 ? u : utf8;
    }
    fprintf(stderr,
            "bench_data: %zu bytes of Brown text; %u merges trained in %.2f s; %.2f bytes a "
            "token; UTF-8 validation %.0f MB/s\n",
            len, ns_bpe_merge_count(bpe), train_s, (double)len / (double)st.token_count, utf8);
    printf("bench tokenizer_encode_mb_per_s=%.1f memcpy_mb_per_s=%.0f ratio=%.4f\n", encode, copy,
           encode / copy);
    free(st.ids);
    free(st.copy);
    ns_bpe_free(bpe);
    free(text);
    return 0;
}
