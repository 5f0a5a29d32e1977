/*
 * bpe_train.c: learning BPE merges from a corpus.
 *
 * The corpus is cut into pieces and counted once, so training works on the distinct pieces
 * ("words") with their counts, never on the text again. Pair counts are kept up to date
 * incrementally: each pair knows the words it occurs in, and a merge touches only those words
 * (it takes their pairs out, merges, puts their pairs back), so a merge costs what it changes,
 * not a recount. The best pair comes from a max-heap with lazy deletion: an entry whose count is
 * stale is pushed again with the true count when it reaches the top. Ties go to the smaller
 * (left, right), so the result depends on the text alone. Everything here is freed before the
 * function returns; the learned merges become a tokenizer through ns_bpe_from_merges.
 */
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

#define MIN_PAIR_COUNT 2 /* a pair seen once is not worth a token */

/* ---- distinct pieces ---------------------------------------------------------------------- */

typedef struct piece_set {
    const uint8_t *text;
    uint32_t *slots; /* index + 1 into the arrays below; 0 = empty */
    size_t mask;
    uint32_t *off;
    uint8_t *len;
    uint64_t *count;
    uint64_t *hash;
    size_t n;
    size_t cap;
} piece_set;

static uint64_t piece_hash(const uint8_t *s, size_t n)
{
    uint64_t h = 0x243F6A8885A308D3ULL ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 29;
    }
    uint64_t v = 0;
    memcpy(&v, s + i, n - i);
    h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 32);
}

static void piece_set_free(piece_set *ps)
{
    free(ps->slots);
    free(ps->off);
    free(ps->len);
    free(ps->count);
    free(ps->hash);
}

static int piece_set_grow(piece_set *ps)
{
    size_t cap = ps->cap == 0 ? 4096 : 2 * ps->cap;
    uint32_t *off = realloc(ps->off, cap * sizeof *off);
    if (off != NULL)
        ps->off = off;
    uint8_t *len = realloc(ps->len, cap * sizeof *len);
    if (len != NULL)
        ps->len = len;
    uint64_t *count = realloc(ps->count, cap * sizeof *count);
    if (count != NULL)
        ps->count = count;
    uint64_t *hash = realloc(ps->hash, cap * sizeof *hash);
    if (hash != NULL)
        ps->hash = hash;
    uint32_t *slots = calloc(2 * cap, sizeof *slots);
    if (off == NULL || len == NULL || count == NULL || hash == NULL || slots == NULL) {
        free(slots);
        return NS_ENOMEM;
    }
    free(ps->slots);
    ps->slots = slots;
    ps->mask = 2 * cap - 1;
    ps->cap = cap;
    for (size_t i = 0; i < ps->n; i++) {
        size_t slot = ps->hash[i] & ps->mask;
        while (ps->slots[slot] != 0)
            slot = (slot + 1) & ps->mask;
        ps->slots[slot] = (uint32_t)(i + 1);
    }
    return NS_OK;
}

static int piece_set_add(piece_set *ps, size_t off, size_t n)
{
    if (ps->n == ps->cap && piece_set_grow(ps) != NS_OK)
        return NS_ENOMEM;
    const uint8_t *s = ps->text + off;
    uint64_t h = piece_hash(s, n);
    size_t slot = h & ps->mask;
    for (;;) {
        uint32_t idx = ps->slots[slot];
        if (idx == 0)
            break;
        idx--;
        if (ps->hash[idx] == h && ps->len[idx] == n && memcmp(ps->text + ps->off[idx], s, n) == 0) {
            ps->count[idx]++;
            return NS_OK;
        }
        slot = (slot + 1) & ps->mask;
    }
    ps->slots[slot] = (uint32_t)(ps->n + 1);
    ps->off[ps->n] = (uint32_t)off;
    ps->len[ps->n] = (uint8_t)n;
    ps->count[ps->n] = 1;
    ps->hash[ps->n] = h;
    ps->n++;
    return NS_OK;
}

static int count_pieces(const uint8_t *text, size_t len, piece_set *ps)
{
    memset(ps, 0, sizeof *ps);
    ps->text = text;
    size_t pos = 0;
    while (pos < len) {
        size_t n = ns_bpe_piece_len(text + pos, len - pos);
        if (piece_set_add(ps, pos, n) != NS_OK)
            return NS_ENOMEM;
        pos += n;
    }
    return NS_OK;
}

/* ---- training state ----------------------------------------------------------------------- */

typedef struct word {
    uint32_t start; /* into trainer.syms */
    uint32_t len;
    uint64_t count;
    uint32_t stamp; /* the last merge that processed this word */
} word;

typedef struct pair {
    uint32_t left;
    uint32_t right;
    int64_t count;
    uint32_t *words; /* words it occurs in (a superset: a word may have lost it since) */
    uint32_t word_count;
    uint32_t word_cap;
    uint32_t stamp; /* the last merge that raised its count */
} pair;

typedef struct heap_entry {
    int64_t count;
    uint32_t pair;
} heap_entry;

typedef struct trainer {
    uint32_t *syms;
    word *words;
    size_t word_count;
    pair *pairs;
    size_t pair_count;
    size_t pair_cap;
    uint32_t *slots; /* pair index + 1; 0 = empty */
    size_t slot_mask;
    heap_entry *heap;
    size_t heap_len;
    size_t heap_cap;
    uint32_t *touched; /* pairs whose count a merge raised, to push afterwards */
    size_t touched_len;
    size_t touched_cap;
} trainer;

static void trainer_free(trainer *t)
{
    for (size_t i = 0; i < t->pair_count; i++)
        free(t->pairs[i].words);
    free(t->syms);
    free(t->words);
    free(t->pairs);
    free(t->slots);
    free(t->heap);
    free(t->touched);
}

static inline size_t pair_slot(uint32_t left, uint32_t right, size_t mask)
{
    uint64_t key = (uint64_t)left << 32 | right;
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

static int pairs_grow(trainer *t)
{
    size_t cap = t->pair_cap == 0 ? 65536 : 2 * t->pair_cap;
    pair *pairs = realloc(t->pairs, cap * sizeof *pairs);
    if (pairs == NULL)
        return NS_ENOMEM;
    t->pairs = pairs;
    uint32_t *slots = calloc(2 * cap, sizeof *slots);
    if (slots == NULL)
        return NS_ENOMEM;
    free(t->slots);
    t->slots = slots;
    t->slot_mask = 2 * cap - 1;
    t->pair_cap = cap;
    for (size_t i = 0; i < t->pair_count; i++) {
        size_t slot = pair_slot(t->pairs[i].left, t->pairs[i].right, t->slot_mask);
        while (t->slots[slot] != 0)
            slot = (slot + 1) & t->slot_mask;
        t->slots[slot] = (uint32_t)(i + 1);
    }
    return NS_OK;
}

/* The index of pair (left, right), added with count 0 if new; -1 when out of memory. */
static int64_t pair_get(trainer *t, uint32_t left, uint32_t right)
{
    if (t->pair_count == t->pair_cap && pairs_grow(t) != NS_OK)
        return -1;
    size_t slot = pair_slot(left, right, t->slot_mask);
    for (;;) {
        uint32_t idx = t->slots[slot];
        if (idx == 0)
            break;
        if (t->pairs[idx - 1].left == left && t->pairs[idx - 1].right == right)
            return idx - 1;
        slot = (slot + 1) & t->slot_mask;
    }
    t->slots[slot] = (uint32_t)(t->pair_count + 1);
    t->pairs[t->pair_count] = (pair){.left = left, .right = right};
    return (int64_t)t->pair_count++;
}

static int pair_add_word(pair *p, uint32_t w)
{
    if (p->word_count > 0 && p->words[p->word_count - 1] == w)
        return NS_OK;
    if (p->word_count == p->word_cap) {
        uint32_t cap = p->word_cap == 0 ? 4 : 2 * p->word_cap;
        uint32_t *words = realloc(p->words, cap * sizeof *words);
        if (words == NULL)
            return NS_ENOMEM;
        p->words = words;
        p->word_cap = cap;
    }
    p->words[p->word_count++] = w;
    return NS_OK;
}

/* ---- the heap ----------------------------------------------------------------------------- */

/* Whether entry a should be merged before entry b. */
static bool heap_before(const trainer *t, heap_entry a, heap_entry b)
{
    if (a.count != b.count)
        return a.count > b.count;
    const pair *pa = &t->pairs[a.pair];
    const pair *pb = &t->pairs[b.pair];
    if (pa->left != pb->left)
        return pa->left < pb->left;
    return pa->right < pb->right;
}

static int heap_push(trainer *t, uint32_t p, int64_t count)
{
    if (t->heap_len == t->heap_cap) {
        size_t cap = t->heap_cap == 0 ? 65536 : 2 * t->heap_cap;
        heap_entry *heap = realloc(t->heap, cap * sizeof *heap);
        if (heap == NULL)
            return NS_ENOMEM;
        t->heap = heap;
        t->heap_cap = cap;
    }
    size_t i = t->heap_len++;
    heap_entry e = {.count = count, .pair = p};
    while (i > 0 && heap_before(t, e, t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = e;
    return NS_OK;
}

static heap_entry heap_pop(trainer *t)
{
    NS_ASSERT(t->heap_len > 0);
    heap_entry top = t->heap[0];
    heap_entry last = t->heap[--t->heap_len];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->heap_len)
            break;
        if (c + 1 < t->heap_len && heap_before(t, t->heap[c + 1], t->heap[c]))
            c++;
        if (!heap_before(t, t->heap[c], last))
            break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (t->heap_len > 0)
        t->heap[i] = last;
    return top;
}

/* The pair to merge next, or -1 when no pair occurs MIN_PAIR_COUNT times (or out of memory). */
static int64_t best_pair(trainer *t)
{
    while (t->heap_len > 0) {
        heap_entry e = heap_pop(t);
        int64_t now = t->pairs[e.pair].count;
        if (now == e.count)
            return e.pair;
        /* Counts only fall after the merge that raised them, so a stale entry is too high. */
        NS_ASSERT(now < e.count);
        if (now >= MIN_PAIR_COUNT && heap_push(t, e.pair, now) != NS_OK)
            return -1;
    }
    return -1;
}

/* ---- merging ------------------------------------------------------------------------------ */

/* Adds sign * count for every adjacent pair of word w. With sign > 0, the pairs that contain
 * made (the id the current merge makes) learn that w holds them and are marked touched. */
static int word_pairs_update(trainer *t, uint32_t w, int sign, uint32_t made, uint32_t stamp)
{
    const word *wd = &t->words[w];
    const uint32_t *s = t->syms + wd->start;
    for (uint32_t i = 0; i + 1 < wd->len; i++) {
        int64_t p = pair_get(t, s[i], s[i + 1]);
        if (p < 0)
            return NS_ENOMEM;
        pair *pp = &t->pairs[p];
        pp->count += sign * (int64_t)wd->count;
        NS_ASSERT(pp->count >= 0);
        if (sign < 0 || (s[i] != made && s[i + 1] != made))
            continue;
        if (pair_add_word(pp, w) != NS_OK)
            return NS_ENOMEM;
        if (pp->stamp != stamp) {
            pp->stamp = stamp;
            if (t->touched_len == t->touched_cap) {
                size_t cap = t->touched_cap == 0 ? 1024 : 2 * t->touched_cap;
                uint32_t *touched = realloc(t->touched, cap * sizeof *touched);
                if (touched == NULL)
                    return NS_ENOMEM;
                t->touched = touched;
                t->touched_cap = cap;
            }
            t->touched[t->touched_len++] = (uint32_t)p;
        }
    }
    return NS_OK;
}

/* Replaces every (left, right) in word w by made, left to right; false if there was none. */
static bool word_merge(trainer *t, uint32_t w, uint32_t left, uint32_t right, uint32_t made)
{
    word *wd = &t->words[w];
    uint32_t *s = t->syms + wd->start;
    uint32_t out = 0;
    bool merged = false;
    for (uint32_t i = 0; i < wd->len; i++) {
        if (i + 1 < wd->len && s[i] == left && s[i + 1] == right) {
            s[out++] = made;
            i++;
            merged = true;
        } else {
            s[out++] = s[i];
        }
    }
    wd->len = out;
    return merged;
}

static bool word_has(const trainer *t, uint32_t w, uint32_t left, uint32_t right)
{
    const word *wd = &t->words[w];
    const uint32_t *s = t->syms + wd->start;
    for (uint32_t i = 0; i + 1 < wd->len; i++) {
        if (s[i] == left && s[i + 1] == right)
            return true;
    }
    return false;
}

/* Applies merge number m (pair p makes id NS_BPE_FIRST_MERGE + m) to every word that has it. */
static int apply_merge(trainer *t, uint32_t p, uint32_t m)
{
    uint32_t left = t->pairs[p].left;
    uint32_t right = t->pairs[p].right;
    uint32_t made = NS_BPE_FIRST_MERGE + m;
    uint32_t stamp = m + 1;
    uint32_t *words = t->pairs[p].words;
    uint32_t word_count = t->pairs[p].word_count;
    t->touched_len = 0;
    for (uint32_t k = 0; k < word_count; k++) {
        uint32_t w = words[k];
        if (t->words[w].stamp == stamp || !word_has(t, w, left, right))
            continue;
        t->words[w].stamp = stamp;
        if (word_pairs_update(t, w, -1, made, stamp) != NS_OK)
            return NS_ENOMEM;
        NS_ASSERT(word_merge(t, w, left, right, made));
        if (word_pairs_update(t, w, +1, made, stamp) != NS_OK)
            return NS_ENOMEM;
    }
    /* Every occurrence is merged, and neither id is new, so the pair never forms again. */
    NS_ASSERT(t->pairs[p].count == 0);
    free(t->pairs[p].words);
    t->pairs[p].words = NULL;
    t->pairs[p].word_count = 0;
    t->pairs[p].word_cap = 0;
    for (size_t i = 0; i < t->touched_len; i++) {
        int64_t count = t->pairs[t->touched[i]].count;
        if (count >= MIN_PAIR_COUNT && heap_push(t, t->touched[i], count) != NS_OK)
            return NS_ENOMEM;
    }
    return NS_OK;
}

/* ---- setup and the loop ------------------------------------------------------------------- */

static int trainer_init(trainer *t, const piece_set *ps)
{
    size_t sym_count = 0;
    for (size_t i = 0; i < ps->n; i++)
        sym_count += ps->len[i];
    t->syms = malloc(sym_count * sizeof *t->syms + 1);
    t->words = malloc(ps->n * sizeof *t->words + 1);
    if (t->syms == NULL || t->words == NULL)
        return NS_ENOMEM;
    t->word_count = ps->n;
    size_t at = 0;
    for (size_t i = 0; i < ps->n; i++) {
        t->words[i] = (word){.start = (uint32_t)at, .len = ps->len[i], .count = ps->count[i]};
        for (size_t j = 0; j < ps->len[i]; j++)
            t->syms[at++] = ps->text[ps->off[i] + j];
    }
    for (size_t w = 0; w < t->word_count; w++) {
        const uint32_t *s = t->syms + t->words[w].start;
        for (uint32_t i = 0; i + 1 < t->words[w].len; i++) {
            int64_t p = pair_get(t, s[i], s[i + 1]);
            if (p < 0 || pair_add_word(&t->pairs[p], (uint32_t)w) != NS_OK)
                return NS_ENOMEM;
            t->pairs[p].count += (int64_t)t->words[w].count;
        }
    }
    for (size_t p = 0; p < t->pair_count; p++) {
        if (t->pairs[p].count >= MIN_PAIR_COUNT &&
            heap_push(t, (uint32_t)p, t->pairs[p].count) != NS_OK)
            return NS_ENOMEM;
    }
    return NS_OK;
}

/* Learns up to merges_max merges into merges[2 * i]; *count is how many. */
static int learn(trainer *t, uint32_t merges_max, uint32_t *merges, uint32_t *count)
{
    uint32_t m = 0;
    while (m < merges_max) {
        int64_t p = best_pair(t);
        if (p < 0)
            break;
        merges[2 * m] = t->pairs[p].left;
        merges[2 * m + 1] = t->pairs[p].right;
        if (apply_merge(t, (uint32_t)p, m) != NS_OK)
            return NS_ENOMEM;
        m++;
    }
    *count = m;
    return NS_OK;
}

int ns_bpe_train(const uint8_t *text, size_t len, uint32_t vocab_size, ns_bpe **out)
{
    NS_ASSERT(text != NULL || len == 0);
    NS_ASSERT(out != NULL);
    if (vocab_size < NS_BPE_FIRST_MERGE || vocab_size > NS_BPE_VOCAB_MAX)
        return NS_EINVAL;
    if (len > NS_BPE_TRAIN_BYTES_MAX)
        return NS_ETOOBIG;
    uint32_t merges_max = vocab_size - NS_BPE_FIRST_MERGE;
    uint32_t *merges = malloc(2 * (size_t)merges_max * sizeof *merges + 1);
    piece_set ps;
    int rc = merges == NULL ? NS_ENOMEM : count_pieces(text, len, &ps);
    trainer t = {0};
    uint32_t count = 0;
    if (rc == NS_OK)
        rc = trainer_init(&t, &ps);
    if (rc == NS_OK)
        rc = learn(&t, merges_max, merges, &count);
    if (merges != NULL)
        piece_set_free(&ps);
    trainer_free(&t);
    if (rc == NS_OK)
        rc = ns_bpe_from_merges(merges, count, out, NULL);
    /* Training makes only valid merges: the one possible failure is memory. */
    NS_ASSERT(rc == NS_OK || rc == NS_ENOMEM);
    free(merges);
    return rc;
}
