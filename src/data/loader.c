/*
 * loader.c: training batches of token ids, deterministic from a seed and a position.
 *
 * An epoch cuts the token stream into windows of T+1 ids (a window's last id is the next one's
 * first), starting at an offset drawn from (seed, epoch) so that window edges move from epoch to
 * epoch, and visits the windows in an order drawn from (seed, epoch). A batch is B consecutive
 * windows of that order. So the position is two integers, (epoch, windows done), and a restarted
 * node that seeks to a saved position yields exactly the batches it would have. The generator is
 * splitmix64, written out here: it must never change, or resumed runs would see other data.
 * Reading shards and encoding them (ns_data_tokenize_shards) happens once, before training.
 */
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

struct ns_data_loader {
    const uint32_t *tokens;
    size_t token_count;
    uint32_t B;
    uint32_t T;
    uint64_t seed;
    ns_data_pos pos;
    uint64_t offset;       /* where the current epoch's first window starts */
    uint64_t window_count; /* windows in the current epoch */
    uint32_t *order;       /* window_count entries: the epoch's visiting order */
};

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound), bound > 0, without modulo bias. */
static uint64_t draw_below(uint64_t *state, uint64_t bound)
{
    NS_ASSERT(bound > 0);
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do {
        x = splitmix64(state);
    } while (x >= limit);
    return x % bound;
}

/* Sets up epoch `epoch`: its offset, window count and order. */
static void epoch_prepare(ns_data_loader *l, uint64_t epoch)
{
    uint64_t state = l->seed;
    uint64_t epoch_state = epoch;
    state = splitmix64(&state) ^ splitmix64(&epoch_state);
    uint64_t usable = l->token_count - 1;
    l->offset = usable >= 2 * (uint64_t)l->T ? draw_below(&state, l->T) : 0;
    l->window_count = (usable - l->offset) / l->T;
    NS_ASSERT(l->window_count >= 1);
    NS_ASSERT(l->offset + l->window_count * l->T + 1 <= l->token_count);
    for (uint64_t i = 0; i < l->window_count; i++)
        l->order[i] = (uint32_t)i;
    for (uint64_t i = l->window_count - 1; i > 0; i--) {
        uint64_t j = draw_below(&state, i + 1);
        uint32_t t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
    l->pos.epoch = epoch;
}

int ns_data_loader_new(const uint32_t *tokens, size_t token_count, uint32_t B, uint32_t T,
                       uint64_t seed, ns_data_loader **out)
{
    NS_ASSERT(tokens != NULL || token_count == 0);
    NS_ASSERT(out != NULL);
    if (B == 0 || B > NS_DATA_BATCH_MAX || T == 0 || T > NS_DATA_SEQ_MAX ||
        token_count < (size_t)T + 1 || (token_count - 1) / T > UINT32_MAX)
        return NS_EINVAL;
    ns_data_loader *l = calloc(1, sizeof *l);
    uint32_t *order = malloc((token_count - 1) / T * sizeof *order);
    if (l == NULL || order == NULL) {
        free(l);
        free(order);
        return NS_ENOMEM;
    }
    *l = (ns_data_loader){
        .tokens = tokens, .token_count = token_count, .B = B, .T = T, .seed = seed, .order = order};
    epoch_prepare(l, 0);
    *out = l;
    return NS_OK;
}

void ns_data_loader_free(ns_data_loader *loader)
{
    if (loader == NULL)
        return;
    free(loader->order);
    free(loader);
}

void ns_data_loader_next(ns_data_loader *loader, uint32_t *batch)
{
    NS_ASSERT(loader != NULL);
    NS_ASSERT(batch != NULL);
    const size_t row = (size_t)loader->T + 1;
    for (uint32_t b = 0; b < loader->B; b++) {
        if (loader->pos.index == loader->window_count) {
            epoch_prepare(loader, loader->pos.epoch + 1);
            loader->pos.index = 0;
        }
        uint64_t start = loader->offset + (uint64_t)loader->order[loader->pos.index] * loader->T;
        NS_ASSERT(start + row <= loader->token_count);
        memcpy(batch + b * row, loader->tokens + start, row * sizeof *batch);
        loader->pos.index++;
    }
}

ns_data_pos ns_data_loader_pos(const ns_data_loader *loader)
{
    NS_ASSERT(loader != NULL);
    return loader->pos;
}

int ns_data_loader_seek(ns_data_loader *loader, ns_data_pos pos)
{
    NS_ASSERT(loader != NULL);
    ns_data_pos was = loader->pos;
    if (pos.epoch != loader->pos.epoch)
        epoch_prepare(loader, pos.epoch);
    if (pos.index > loader->window_count) {
        epoch_prepare(loader, was.epoch);
        loader->pos = was;
        return NS_EINVAL;
    }
    loader->pos = pos;
    return NS_OK;
}

uint64_t ns_data_loader_epoch_sequences(const ns_data_loader *loader)
{
    NS_ASSERT(loader != NULL);
    return loader->window_count;
}

/* ---- shards to token ids ------------------------------------------------------------------ */

static int tokenize_one(const ns_bpe *bpe, const ns_dataset *ds, uint32_t index, uint32_t **ids,
                        size_t *count, size_t *cap, char *err)
{
    uint8_t *text;
    size_t len;
    int rc = ns_dataset_read_shard(ds, index, &text, &len, err);
    if (rc != NS_OK)
        return rc;
    if (len + 1 > *cap - *count) {
        size_t cap_new = *count + len + 1;
        if (cap_new < 2 * *cap)
            cap_new = 2 * *cap;
        uint32_t *grown = realloc(*ids, cap_new * sizeof *grown);
        if (grown == NULL) {
            free(text);
            return ns__data_err(err, NS_ENOMEM, "out of memory encoding shard %u", index);
        }
        *ids = grown;
        *cap = cap_new;
    }
    *count += ns_bpe_encode(bpe, text, len, *ids + *count);
    (*ids)[(*count)++] = NS_BPE_EOT;
    free(text);
    return NS_OK;
}

int ns_data_tokenize_shards(const ns_bpe *bpe, const ns_dataset *ds, const uint32_t *indexes,
                            size_t index_count, uint32_t **tokens, size_t *token_count,
                            char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(bpe != NULL);
    NS_ASSERT(ds != NULL);
    NS_ASSERT(indexes != NULL || index_count == 0);
    NS_ASSERT(tokens != NULL);
    NS_ASSERT(token_count != NULL);
    uint32_t *ids = NULL;
    size_t count = 0;
    size_t cap = 0;
    for (size_t i = 0; i < index_count; i++) {
        NS_ASSERT(indexes[i] < ds->shard_count);
        int rc = tokenize_one(bpe, ds, indexes[i], &ids, &count, &cap, err);
        if (rc != NS_OK) {
            free(ids);
            return rc;
        }
    }
    *tokens = ids;
    *token_count = count;
    return NS_OK;
}
