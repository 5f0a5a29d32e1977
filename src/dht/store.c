/*
 * store.c: what a DHT node keeps for others: values, STORE tokens, and per-source rate limits.
 *
 * Values are verified signed records (rpc.c checks each before it gets here) in a hash table of
 * keys, each key holding at most NS_DHT_VALUES_PER_KEY_MAX values, one per author, the highest
 * sequence winning. A value goes at its record's expiry or NS_DHT_VALUE_TTL_MS after it was last
 * stored, whichever is first; the whole table never holds more than NS_DHT_STORED_VALUES_MAX.
 * Tokens follow BEP 5: HMAC-SHA256 of the requester's address under a secret from env->random,
 * rotated every NS_DHT_TOKEN_ROTATE_MS with the previous secret still accepted. The rate limit is
 * a token bucket per source IP (IPv6: per /64) in a small set-associative table that starts tiny,
 * doubles up to NS_DHT_RATE_SOURCES_MAX, and then replaces the least recently used entry of a
 * set. Both hash tables use SipHash under a random key, so nobody can aim at one slot.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "dht_internal.h"

static_assert(crypto_auth_hmacsha256_BYTES == NS_DHT_TOKEN_BYTES, "a token is one HMAC");
static_assert(crypto_auth_hmacsha256_KEYBYTES == 32, "token secrets are 32 bytes");
static_assert(crypto_shorthash_KEYBYTES == 16, "hash keys are 16 bytes");

static uint64_t hash_bytes(const ns_dht *dht, const uint8_t *buf, size_t len)
{
    uint8_t out[crypto_shorthash_BYTES];
    crypto_shorthash(out, buf, len, dht->hash_key);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return h;
}

/* ---- tokens ------------------------------------------------------------------------------- */

static void tokens_rotate(ns_dht *dht, uint64_t now_ms)
{
    for (int i = 0; i < 2 && now_ms >= dht->token_rotated_ms + NS_DHT_TOKEN_ROTATE_MS; i++) {
        memcpy(dht->token_secret_prev, dht->token_secret, sizeof dht->token_secret);
        ns_env_random(&dht->env, dht->token_secret, sizeof dht->token_secret);
        dht->token_rotated_ms += NS_DHT_TOKEN_ROTATE_MS;
    }
    if (now_ms >= dht->token_rotated_ms + NS_DHT_TOKEN_ROTATE_MS)
        dht->token_rotated_ms = now_ms; /* asleep for long: both secrets are new already */
}

static void token_compute(const uint8_t secret[32], const ns_addr *addr,
                          uint8_t token[NS_DHT_TOKEN_BYTES])
{
    uint8_t msg[1 + 16 + 2] = {addr->family};
    memcpy(msg + 1, addr->ip, addr->family == 4 ? 4 : 16);
    msg[17] = (uint8_t)(addr->port >> 8);
    msg[18] = (uint8_t)addr->port;
    crypto_auth_hmacsha256(token, msg, sizeof msg, secret);
}

void ns__dht_token_make(ns_dht *dht, const ns_addr *addr, uint64_t now_ms,
                        uint8_t token[NS_DHT_TOKEN_BYTES])
{
    tokens_rotate(dht, now_ms);
    token_compute(dht->token_secret, addr, token);
}

bool ns__dht_token_check(ns_dht *dht, const ns_addr *addr, uint64_t now_ms,
                         const uint8_t token[NS_DHT_TOKEN_BYTES])
{
    tokens_rotate(dht, now_ms);
    uint8_t want[NS_DHT_TOKEN_BYTES];
    token_compute(dht->token_secret, addr, want);
    if (sodium_memcmp(want, token, NS_DHT_TOKEN_BYTES) == 0)
        return true;
    token_compute(dht->token_secret_prev, addr, want);
    return sodium_memcmp(want, token, NS_DHT_TOKEN_BYTES) == 0;
}

/* ---- rate limit --------------------------------------------------------------------------- */

/* The part of an address that names its source: the IPv4 address or the IPv6 /64. */
static void rate_source(const ns_addr *addr, uint8_t ip[8])
{
    memset(ip, 0, 8);
    memcpy(ip, addr->ip, addr->family == 4 ? 4 : 8);
}

static ns__dht_rate_entry *rate_slot(ns_dht *dht, uint8_t family, const uint8_t ip[8], bool *fresh)
{
    uint8_t in[9] = {family};
    memcpy(in + 1, ip, 8);
    size_t sets = dht->rate_capacity / NS_DHT_RATE_WAYS;
    ns__dht_rate_entry *set =
        &dht->rate[(hash_bytes(dht, in, sizeof in) & (sets - 1)) * NS_DHT_RATE_WAYS];
    ns__dht_rate_entry *victim = &set[0];
    for (size_t w = 0; w < NS_DHT_RATE_WAYS; w++) {
        ns__dht_rate_entry *e = &set[w];
        if (e->family == family && memcmp(e->ip, ip, 8) == 0) {
            *fresh = false;
            return e;
        }
        if (victim->family != 0 && (e->family == 0 || e->last_ms < victim->last_ms))
            victim = e;
    }
    if (victim->family == 0)
        dht->rate_used++;
    *fresh = true;
    return victim;
}

static bool rate_resize(ns_dht *dht, size_t capacity)
{
    ns__dht_rate_entry *old = dht->rate;
    size_t old_capacity = dht->rate_capacity;
    ns__dht_rate_entry *grown = calloc(capacity, sizeof *grown);
    if (grown == NULL)
        return false;
    dht->rate = grown;
    dht->rate_capacity = capacity;
    dht->rate_used = 0;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].family == 0)
            continue;
        bool fresh;
        ns__dht_rate_entry *e = rate_slot(dht, old[i].family, old[i].ip, &fresh);
        if (fresh || e->last_ms < old[i].last_ms)
            *e = old[i];
    }
    free(old);
    return true;
}

bool ns__dht_rate_allow(ns_dht *dht, const ns_addr *addr, uint64_t now_ms)
{
    if (dht->rate == NULL && !rate_resize(dht, NS_DHT_RATE_SOURCES_MIN))
        return false;
    if (dht->rate_used > dht->rate_capacity / 2 && dht->rate_capacity < NS_DHT_RATE_SOURCES_MAX)
        (void)rate_resize(dht, dht->rate_capacity * 2);
    uint8_t ip[8];
    rate_source(addr, ip);
    bool fresh;
    ns__dht_rate_entry *e = rate_slot(dht, addr->family, ip, &fresh);
    const uint64_t full = (uint64_t)NS_DHT_RATE_BURST * 1000;
    if (fresh) {
        e->family = addr->family;
        memcpy(e->ip, ip, 8);
        e->milli = (uint32_t)full;
    } else if (now_ms > e->last_ms) {
        uint64_t elapsed = now_ms - e->last_ms;
        uint64_t milli = elapsed >= full ? full : e->milli + elapsed * NS_DHT_RATE_PER_S;
        e->milli = (uint32_t)(milli < full ? milli : full);
    }
    e->last_ms = now_ms;
    if (e->milli < 1000)
        return false;
    e->milli -= 1000;
    return true;
}

void ns__dht_rate_free(ns_dht *dht)
{
    free(dht->rate);
    dht->rate = NULL;
    dht->rate_capacity = 0;
    dht->rate_used = 0;
}

/* ---- values ------------------------------------------------------------------------------- */

static size_t slot_of(const ns_dht *dht, const uint8_t key[NS_ID_BYTES])
{
    NS_ASSERT(dht->store_slot_count > 0);
    return (size_t)(hash_bytes(dht, key, NS_ID_BYTES) & (dht->store_slot_count - 1));
}

static ns__dht_group **group_link(ns_dht *dht, const uint8_t key[NS_ID_BYTES])
{
    if (dht->store_slot_count == 0)
        return NULL;
    ns__dht_group **link = &dht->store_slots[slot_of(dht, key)];
    while (*link != NULL && memcmp((*link)->key, key, NS_ID_BYTES) != 0)
        link = &(*link)->next;
    return *link != NULL ? link : NULL;
}

static bool store_grow(ns_dht *dht)
{
    size_t count = dht->store_slot_count == 0 ? NS_DHT_STORE_SLOTS_MIN : 2 * dht->store_slot_count;
    ns__dht_group **slots = calloc(count, sizeof *slots);
    if (slots == NULL)
        return false;
    ns__dht_group **old = dht->store_slots;
    size_t old_count = dht->store_slot_count;
    dht->store_slots = slots;
    dht->store_slot_count = count;
    for (size_t i = 0; i < old_count; i++) {
        while (old[i] != NULL) {
            ns__dht_group *g = old[i];
            old[i] = g->next;
            size_t s = slot_of(dht, g->key);
            g->next = slots[s];
            slots[s] = g;
        }
    }
    free(old);
    return true;
}

static ns__dht_group *group_create(ns_dht *dht, const uint8_t key[NS_ID_BYTES])
{
    if ((dht->store_slot_count == 0 || dht->group_count >= dht->store_slot_count) &&
        dht->store_slot_count < NS_DHT_STORED_VALUES_MAX && !store_grow(dht))
        return NULL;
    ns__dht_group *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    memcpy(g->key, key, NS_ID_BYTES);
    size_t s = slot_of(dht, key);
    g->next = dht->store_slots[s];
    dht->store_slots[s] = g;
    dht->group_count++;
    return g;
}

static void value_drop(ns_dht *dht, ns__dht_group *g, size_t i)
{
    NS_ASSERT(i < g->count);
    free(g->values[i].data);
    g->values[i] = g->values[--g->count];
    NS_ASSERT(dht->value_count > 0);
    dht->value_count--;
}

static bool value_gone(const ns__dht_value *v, uint64_t now_ms)
{
    return (v->expiry_ms != 0 && now_ms >= v->expiry_ms) ||
           v->stored_ms + NS_DHT_VALUE_TTL_MS <= now_ms;
}

/* Drops what has expired under *link; frees the group if nothing is left. */
static void group_prune(ns_dht *dht, ns__dht_group **link, uint64_t now_ms)
{
    ns__dht_group *g = *link;
    for (size_t i = g->count; i-- > 0;) {
        if (value_gone(&g->values[i], now_ms))
            value_drop(dht, g, i);
    }
    if (g->count == 0) {
        *link = g->next;
        free(g->values);
        free(g);
        dht->group_count--;
    }
    dht->stats.records_stored = dht->value_count;
}

static int group_insert(ns_dht *dht, ns__dht_group *g, const uint8_t *buf, size_t len,
                        const ns_record *rec, uint64_t now_ms)
{
    size_t i = 0;
    while (i < g->count && memcmp(g->values[i].author, rec->author, NS_ID_BYTES) != 0)
        i++;
    if (i < g->count) {
        ns__dht_value *v = &g->values[i];
        if (rec->sequence < v->sequence ||
            (rec->sequence == v->sequence && (len != v->len || memcmp(buf, v->data, len) != 0)))
            return NS_EEXIST;
        if (rec->sequence == v->sequence) {
            v->stored_ms = now_ms;
            return NS_OK;
        }
    } else {
        if (g->count >= NS_DHT_VALUES_PER_KEY_MAX || dht->value_count >= NS_DHT_STORED_VALUES_MAX)
            return NS_ELIMIT;
        if (g->count == g->capacity) {
            uint32_t capacity = g->capacity == 0 ? 2 : 2 * g->capacity;
            ns__dht_value *grown = realloc(g->values, capacity * sizeof *grown);
            if (grown == NULL)
                return NS_ENOMEM;
            g->values = grown;
            g->capacity = capacity;
        }
        g->values[i] = (ns__dht_value){0};
    }
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return NS_ENOMEM;
    memcpy(copy, buf, len);
    ns__dht_value *v = &g->values[i];
    if (i == g->count) {
        g->count++;
        dht->value_count++;
    }
    free(v->data);
    *v = (ns__dht_value){.data = copy,
                         .len = len,
                         .sequence = rec->sequence,
                         .expiry_ms = rec->expiry_ms,
                         .stored_ms = now_ms};
    memcpy(v->author, rec->author, NS_ID_BYTES);
    return NS_OK;
}

int ns__dht_store_put(ns_dht *dht, const uint8_t key[NS_ID_BYTES], const uint8_t *buf, size_t len,
                      const ns_record *rec, uint64_t now_ms)
{
    NS_ASSERT(len > 0 && len <= NS_DHT_VALUE_BYTES_MAX);
    ns__dht_group **link = group_link(dht, key);
    if (link != NULL)
        group_prune(dht, link, now_ms);
    link = group_link(dht, key);
    ns__dht_group *g = link != NULL ? *link : NULL;
    if (g == NULL) {
        if (dht->value_count >= NS_DHT_STORED_VALUES_MAX)
            return NS_ELIMIT;
        g = group_create(dht, key);
        if (g == NULL)
            return NS_ENOMEM;
    }
    int rc = group_insert(dht, g, buf, len, rec, now_ms);
    link = group_link(dht, key);
    NS_ASSERT(link != NULL && *link == g);
    if (g->count == 0)
        group_prune(dht, link, now_ms);
    dht->stats.records_stored = dht->value_count;
    return rc;
}

size_t ns__dht_store_get(ns_dht *dht, const uint8_t key[NS_ID_BYTES], uint64_t now_ms, size_t skip,
                         const uint8_t **records, size_t *lens, size_t max, size_t *total)
{
    *total = 0;
    ns__dht_group **link = group_link(dht, key);
    if (link == NULL)
        return 0;
    group_prune(dht, link, now_ms);
    link = group_link(dht, key);
    if (link == NULL)
        return 0;
    const ns__dht_group *g = *link;
    *total = g->count;
    size_t n = 0;
    for (size_t i = skip; i < g->count && n < max; i++, n++) {
        records[n] = g->values[i].data;
        lens[n] = g->values[i].len;
    }
    return n;
}

void ns__dht_store_sweep(ns_dht *dht, uint64_t now_ms)
{
    for (size_t s = 0; s < dht->store_slot_count; s++) {
        ns__dht_group **link = &dht->store_slots[s];
        while (*link != NULL) {
            ns__dht_group *g = *link;
            group_prune(dht, link, now_ms);
            if (*link == g)
                link = &g->next;
        }
    }
}

void ns__dht_store_free(ns_dht *dht)
{
    for (size_t s = 0; s < dht->store_slot_count; s++) {
        while (dht->store_slots[s] != NULL) {
            ns__dht_group *g = dht->store_slots[s];
            dht->store_slots[s] = g->next;
            for (size_t i = 0; i < g->count; i++)
                free(g->values[i].data);
            free(g->values);
            free(g);
        }
    }
    free(dht->store_slots);
    dht->store_slots = NULL;
    dht->store_slot_count = 0;
    dht->group_count = 0;
    dht->value_count = 0;
}

size_t ns_dht_local_values(const ns_dht *dht, const uint8_t key[NS_ID_BYTES],
                           const uint8_t **records, size_t *lens, size_t max)
{
    if (dht->store_slot_count == 0)
        return 0;
    const ns__dht_group *g = dht->store_slots[slot_of(dht, key)];
    while (g != NULL && memcmp(g->key, key, NS_ID_BYTES) != 0)
        g = g->next;
    uint64_t now_ms = ns__dht_now(dht);
    size_t n = 0;
    for (size_t i = 0; g != NULL && i < g->count && n < max; i++) {
        if (value_gone(&g->values[i], now_ms))
            continue;
        records[n] = g->values[i].data;
        lens[n] = g->values[i].len;
        n++;
    }
    return n;
}
