/*
 * routing.c: the routing table (k-buckets), XOR distance, and the table's save format.
 *
 * Buckets are indexed by the length of the prefix a contact's id shares with ours, so bucket 0
 * holds the farther half of the id space and deeper buckets ever nearer ids. Only buckets that
 * have held someone exist, and each grows its arrays on demand: in a network of n nodes a table
 * holds about k*log2(n) contacts, which keeps ten thousand simulated cores affordable. Every
 * contact here answered us and proved its id (rpc.c checks that before calling in); a bucket
 * that is full keeps newcomers as spares and pings its oldest contact, which is kept if it
 * answers and replaced by the newest spare if it does not (Kademlia's least-recently-seen rule).
 * Nothing here sends a packet except through rpc.c, and nothing trusts a loaded table: ns_dht_load
 * queues the contacts for pings.
 */
#include <stdlib.h>
#include <string.h>

#include "dht_internal.h"

/* ---- distance ----------------------------------------------------------------------------- */

int ns_dht_distance_cmp(const uint8_t target[NS_ID_BYTES], const uint8_t a[NS_ID_BYTES],
                        const uint8_t b[NS_ID_BYTES])
{
    for (size_t i = 0; i < NS_ID_BYTES; i++) {
        uint8_t da = (uint8_t)(a[i] ^ target[i]);
        uint8_t db = (uint8_t)(b[i] ^ target[i]);
        if (da != db)
            return da < db ? -1 : 1;
    }
    return 0;
}

/* Bits a and b share from the top: 0..256. */
static int common_prefix_bits(const uint8_t a[NS_ID_BYTES], const uint8_t b[NS_ID_BYTES])
{
    for (int i = 0; i < NS_ID_BYTES; i++) {
        uint8_t x = (uint8_t)(a[i] ^ b[i]);
        if (x != 0)
            return i * 8 + __builtin_clz((unsigned)x) - 24;
    }
    return NS_DHT_ID_BITS;
}

int ns_dht_bucket_index(const uint8_t self[NS_ID_BYTES], const uint8_t id[NS_ID_BYTES])
{
    int cpl = common_prefix_bits(self, id);
    int index = NS_DHT_ID_BITS - 1 - cpl;
    NS_ASSERT(index >= -1 && index < NS_DHT_ID_BITS);
    return index;
}

bool ns__dht_addr_usable(const ns_addr *addr)
{
    if ((addr->family != 4 && addr->family != 6) || addr->port == 0)
        return false;
    size_t n = addr->family == 4 ? 4 : 16;
    for (size_t i = 0; i < n; i++) {
        if (addr->ip[i] != 0)
            return true;
    }
    return false;
}

/* ---- buckets ------------------------------------------------------------------------------ */

ns__dht_bucket *ns__dht_bucket_for(ns_dht *dht, const uint8_t id[NS_ID_BYTES], bool create)
{
    int cpl = common_prefix_bits(dht->self_id, id);
    if (cpl >= NS_DHT_ID_BITS)
        return NULL;
    if ((size_t)cpl >= dht->bucket_slots) {
        if (!create)
            return NULL;
        ns__dht_bucket **grown = realloc(dht->buckets, (size_t)(cpl + 1) * sizeof *grown);
        if (grown == NULL)
            return NULL;
        memset(grown + dht->bucket_slots, 0, ((size_t)cpl + 1 - dht->bucket_slots) * sizeof *grown);
        dht->buckets = grown;
        dht->bucket_slots = (size_t)cpl + 1;
    }
    if (dht->buckets[cpl] == NULL && create) {
        dht->buckets[cpl] = calloc(1, sizeof(ns__dht_bucket));
        if (dht->buckets[cpl] != NULL)
            dht->buckets[cpl]->refreshed_ms = ns__dht_now(dht);
    }
    return dht->buckets[cpl];
}

static const ns__dht_bucket *bucket_find(const ns_dht *dht, const uint8_t id[NS_ID_BYTES])
{
    int cpl = common_prefix_bits(dht->self_id, id);
    if (cpl >= NS_DHT_ID_BITS || (size_t)cpl >= dht->bucket_slots)
        return NULL;
    return dht->buckets[cpl];
}

static int entry_index(const ns__dht_entry *entries, size_t count, const uint8_t id[NS_ID_BYTES])
{
    for (size_t i = 0; i < count; i++) {
        if (memcmp(entries[i].c.node_id, id, NS_ID_BYTES) == 0)
            return (int)i;
    }
    return -1;
}

static void entry_remove(ns__dht_entry *entries, uint8_t *count, size_t index)
{
    NS_ASSERT(index < *count);
    memmove(&entries[index], &entries[index + 1], (*count - index - 1) * sizeof *entries);
    (*count)--;
}

static bool bucket_reserve(ns__dht_bucket *b)
{
    if (b->count < b->capacity)
        return true;
    NS_ASSERT(b->capacity < NS_DHT_K);
    uint8_t capacity = b->capacity == 0 ? 4 : (uint8_t)(b->capacity * 2);
    if (capacity > NS_DHT_K)
        capacity = NS_DHT_K;
    ns__dht_entry *grown = realloc(b->entries, capacity * sizeof *grown);
    if (grown == NULL)
        return false;
    b->entries = grown;
    b->capacity = capacity;
    return true;
}

static void bucket_append(ns_dht *dht, ns__dht_bucket *b, const ns__dht_entry *e)
{
    NS_ASSERT(b->count < NS_DHT_K);
    if (!bucket_reserve(b))
        return;
    b->entries[b->count++] = *e;
    dht->contact_count++;
}

/* Moves the newest spare into the bucket, if there is one and room. */
static void bucket_promote_spare(ns_dht *dht, ns__dht_bucket *b)
{
    if (b->spare_count == 0 || b->count >= NS_DHT_K)
        return;
    ns__dht_entry e = b->spares[--b->spare_count];
    bucket_append(dht, b, &e);
}

static void spare_add(ns__dht_bucket *b, const ns__dht_entry *e)
{
    if (b->spares == NULL) {
        b->spares = calloc(NS_DHT_REPLACEMENTS_MAX, sizeof *b->spares);
        if (b->spares == NULL)
            return;
    }
    int i = entry_index(b->spares, b->spare_count, e->c.node_id);
    if (i >= 0)
        entry_remove(b->spares, &b->spare_count, (size_t)i);
    if (b->spare_count == NS_DHT_REPLACEMENTS_MAX)
        entry_remove(b->spares, &b->spare_count, 0);
    b->spares[b->spare_count++] = *e;
}

/* Another id answered from addr: whoever the table held there is gone. */
static void table_forget_addr(ns_dht *dht, const ns_addr *addr, const uint8_t keep[NS_ID_BYTES])
{
    for (size_t s = 0; s < dht->bucket_slots; s++) {
        ns__dht_bucket *b = dht->buckets[s];
        for (size_t i = 0; b != NULL && i < b->count; i++) {
            if (ns_addr_equal(&b->entries[i].c.addr, addr) &&
                memcmp(b->entries[i].c.node_id, keep, NS_ID_BYTES) != 0) {
                entry_remove(b->entries, &b->count, i);
                dht->contact_count--;
                bucket_promote_spare(dht, b);
                return;
            }
        }
    }
}

bool ns__dht_table_knows(const ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *addr)
{
    const ns__dht_bucket *b = bucket_find(dht, id);
    if (b == NULL)
        return false;
    int i = entry_index(b->entries, b->count, id);
    if (i >= 0)
        return ns_addr_equal(&b->entries[i].c.addr, addr);
    i = entry_index(b->spares, b->spare_count, id);
    return i >= 0 && ns_addr_equal(&b->spares[i].c.addr, addr);
}

bool ns__dht_table_has_room(const ns_dht *dht, const uint8_t id[NS_ID_BYTES])
{
    if (memcmp(id, dht->self_id, NS_ID_BYTES) == 0)
        return false;
    const ns__dht_bucket *b = bucket_find(dht, id);
    return b == NULL || (b->count < NS_DHT_K && entry_index(b->entries, b->count, id) < 0);
}

/* The bucket is full: keep e as a spare and make sure its oldest contact is being pinged. */
static void bucket_contest(ns_dht *dht, ns__dht_bucket *b, const ns__dht_entry *e, uint64_t now_ms)
{
    spare_add(b, e);
    if (b->evicting)
        return;
    ns__dht_entry *oldest = &b->entries[0];
    int rc = ns__dht_ping_send(dht, NS__RPC_PING_EVICT, &oldest->c.addr, oldest->c.node_id, now_ms);
    if (rc == NS_OK) {
        b->evicting = true;
        oldest->pinged_ms = now_ms;
    }
}

void ns__dht_table_seen(ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *addr,
                        uint64_t now_ms, int64_t clock_skew_ms)
{
    if (memcmp(id, dht->self_id, NS_ID_BYTES) == 0 || !ns__dht_addr_usable(addr))
        return;
    ns__dht_bucket *b = ns__dht_bucket_for(dht, id, true);
    if (b == NULL)
        return;
    int i = entry_index(b->entries, b->count, id);
    if (i >= 0) {
        ns__dht_entry e = b->entries[i];
        /* A known id keeps the address it answers at; a second one wins only once it fails. */
        if (!ns_addr_equal(&e.c.addr, addr) && e.c.fails == 0)
            return;
        e.c.addr = *addr;
        e.c.last_seen_ms = now_ms;
        e.c.fails = 0;
        e.c.clock_skew_ms = clock_skew_ms;
        entry_remove(b->entries, &b->count, (size_t)i);
        b->entries[b->count++] = e;
        return;
    }
    table_forget_addr(dht, addr, id);
    ns__dht_entry e = {
        .c = {.addr = *addr, .last_seen_ms = now_ms, .fails = 0, .clock_skew_ms = clock_skew_ms}};
    memcpy(e.c.node_id, id, NS_ID_BYTES);
    int s = entry_index(b->spares, b->spare_count, id);
    if (s >= 0)
        entry_remove(b->spares, &b->spare_count, (size_t)s);
    if (b->count < NS_DHT_K)
        bucket_append(dht, b, &e);
    else
        bucket_contest(dht, b, &e, now_ms);
}

void ns__dht_table_failed(ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *addr,
                          bool evicting)
{
    ns__dht_bucket *b = ns__dht_bucket_for(dht, id, false);
    if (b == NULL)
        return;
    if (evicting)
        b->evicting = false;
    int i = entry_index(b->entries, b->count, id);
    if (i < 0) {
        int s = entry_index(b->spares, b->spare_count, id);
        if (s >= 0 && ns_addr_equal(&b->spares[s].c.addr, addr))
            entry_remove(b->spares, &b->spare_count, (size_t)s);
        return;
    }
    ns__dht_entry *e = &b->entries[i];
    if (!ns_addr_equal(&e->c.addr, addr))
        return;
    if (e->c.fails < UINT32_MAX)
        e->c.fails++;
    if ((evicting && b->spare_count > 0) || e->c.fails >= NS_DHT_CONTACT_FAILS_MAX) {
        entry_remove(b->entries, &b->count, (size_t)i);
        dht->contact_count--;
        bucket_promote_spare(dht, b);
    }
}

/* Inserts n into out (sorted nearest first, *count of them, at most max), if near enough. */
static void closest_insert(const uint8_t target[NS_ID_BYTES], const ns__dht_entry *e,
                           ns__dht_node *out, size_t *count, size_t max)
{
    size_t at = *count;
    while (at > 0 && ns_dht_distance_cmp(target, e->c.node_id, out[at - 1].node_id) < 0)
        at--;
    if (at >= max)
        return;
    size_t moved = *count < max ? *count - at : max - 1 - at;
    memmove(&out[at + 1], &out[at], moved * sizeof *out);
    memcpy(out[at].node_id, e->c.node_id, NS_ID_BYTES);
    out[at].addr = e->c.addr;
    if (*count < max)
        (*count)++;
}

size_t ns__dht_table_closest(const ns_dht *dht, const uint8_t target[NS_ID_BYTES],
                             const uint8_t *excluding, ns__dht_node *out, size_t n)
{
    size_t count = 0;
    for (size_t s = 0; s < dht->bucket_slots; s++) {
        const ns__dht_bucket *b = dht->buckets[s];
        for (size_t i = 0; b != NULL && i < b->count; i++) {
            const ns__dht_entry *e = &b->entries[i];
            if (e->c.fails > 0 ||
                (excluding != NULL && memcmp(e->c.node_id, excluding, NS_ID_BYTES) == 0))
                continue;
            closest_insert(target, e, out, &count, n);
        }
    }
    NS_ASSERT(count <= n);
    return count;
}

/* Pings contacts that missed an answer, and those silent for NS_DHT_STALE_MS, a few a chore, so
 * that dead ones fail their way out of the table within a few chores, even where no lookup
 * passes. */
void ns__dht_table_chores(ns_dht *dht, uint64_t now_ms)
{
    size_t pings = 0;
    for (size_t s = 0; s < dht->bucket_slots && pings < NS_DHT_STALE_PINGS_PER_CHORE; s++) {
        ns__dht_bucket *b = dht->buckets[s];
        for (size_t i = 0; b != NULL && i < b->count && pings < NS_DHT_STALE_PINGS_PER_CHORE; i++) {
            ns__dht_entry *e = &b->entries[i];
            /* A contact that missed an answer is questioned at once (lookups skip it, so only
             * these pings can clear or confirm it); a healthy one only once it is stale. */
            if ((e->c.fails == 0 && e->c.last_seen_ms + NS_DHT_STALE_MS > now_ms) ||
                e->pinged_ms + NS_DHT_RPC_TIMEOUT_MS > now_ms)
                continue;
            if (ns__dht_ping_send(dht, NS__RPC_PING_STALE, &e->c.addr, e->c.node_id, now_ms) !=
                NS_OK)
                return;
            e->pinged_ms = now_ms;
            pings++;
        }
    }
}

void ns__dht_table_free(ns_dht *dht)
{
    for (size_t s = 0; s < dht->bucket_slots; s++) {
        if (dht->buckets[s] != NULL) {
            free(dht->buckets[s]->entries);
            free(dht->buckets[s]->spares);
            free(dht->buckets[s]);
        }
    }
    free(dht->buckets);
    dht->buckets = NULL;
    dht->bucket_slots = 0;
    dht->contact_count = 0;
}

/* ---- public views ------------------------------------------------------------------------- */

size_t ns_dht_contacts(const ns_dht *dht, ns_dht_contact *out, size_t max)
{
    size_t n = 0;
    for (size_t s = dht->bucket_slots; s-- > 0 && n < max;) {
        const ns__dht_bucket *b = dht->buckets[s];
        for (size_t i = 0; b != NULL && i < b->count && n < max; i++)
            out[n++] = b->entries[i].c;
    }
    return n;
}

size_t ns_dht_contact_count(const ns_dht *dht)
{
    return dht->contact_count;
}

/* ---- save and load ------------------------------------------------------------------------
 *
 *   "NSDHT\n" | version u8 | network_id[32] | count u16 | count x entry
 *   entry = node_id[32] | family u8 (4 or 6) | ip[16] (IPv4: 4 bytes then 12 zeros) | port u16
 *
 * Integers big-endian. The length must be exactly what count says. */

#define SAVE_MAGIC_BYTES  (sizeof NS_DHT_SAVE_MAGIC - 1)
#define SAVE_HEADER_BYTES (SAVE_MAGIC_BYTES + 1 + 32 + 2)
#define SAVE_ENTRY_BYTES  (NS_ID_BYTES + 1 + 16 + 2)

static_assert(NS_DHT_SAVE_CONTACTS_MAX <= 65535, "the count is a u16");

int ns_dht_save(const ns_dht *dht, uint8_t **out, size_t *out_len)
{
    size_t count = dht->contact_count < NS_DHT_SAVE_CONTACTS_MAX ? dht->contact_count
                                                                 : NS_DHT_SAVE_CONTACTS_MAX;
    size_t len = SAVE_HEADER_BYTES + count * SAVE_ENTRY_BYTES;
    uint8_t *buf = calloc(1, len);
    if (buf == NULL)
        return NS_ENOMEM;
    uint8_t *p = buf;
    memcpy(p, NS_DHT_SAVE_MAGIC, SAVE_MAGIC_BYTES);
    p += SAVE_MAGIC_BYTES;
    *p++ = NS_DHT_SAVE_VERSION;
    memcpy(p, dht->network_id, 32);
    p += 32;
    *p++ = (uint8_t)(count >> 8);
    *p++ = (uint8_t)count;
    size_t written = 0;
    for (size_t s = dht->bucket_slots; s-- > 0 && written < count;) {
        const ns__dht_bucket *b = dht->buckets[s];
        for (size_t i = 0; b != NULL && i < b->count && written < count; i++) {
            const ns_dht_contact *c = &b->entries[i].c;
            memcpy(p, c->node_id, NS_ID_BYTES);
            p[NS_ID_BYTES] = c->addr.family;
            memcpy(p + NS_ID_BYTES + 1, c->addr.ip, c->addr.family == 4 ? 4 : 16);
            p[NS_ID_BYTES + 17] = (uint8_t)(c->addr.port >> 8);
            p[NS_ID_BYTES + 18] = (uint8_t)c->addr.port;
            p += SAVE_ENTRY_BYTES;
            written++;
        }
    }
    NS_ASSERT(written == count);
    NS_ASSERT((size_t)(p - buf) == len);
    *out = buf;
    *out_len = len;
    return NS_OK;
}

static bool entry_parse(const uint8_t *p, ns__dht_node *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out->node_id, p, NS_ID_BYTES);
    uint8_t family = p[NS_ID_BYTES];
    const uint8_t *ip = p + NS_ID_BYTES + 1;
    if (family != 4 && family != 6)
        return false;
    if (family == 4) {
        for (size_t i = 4; i < 16; i++) {
            if (ip[i] != 0)
                return false;
        }
    }
    out->addr.family = family;
    memcpy(out->addr.ip, ip, family == 4 ? 4 : 16);
    out->addr.port = (uint16_t)(p[NS_ID_BYTES + 17] << 8 | p[NS_ID_BYTES + 18]);
    return ns__dht_addr_usable(&out->addr);
}

int ns_dht_load(ns_dht *dht, const uint8_t *buf, size_t len)
{
    NS_ASSERT(buf != NULL || len == 0);
    if (len < SAVE_HEADER_BYTES || memcmp(buf, NS_DHT_SAVE_MAGIC, SAVE_MAGIC_BYTES) != 0)
        return NS_EPARSE;
    if (buf[SAVE_MAGIC_BYTES] != NS_DHT_SAVE_VERSION)
        return NS_EFOREIGN;
    if (memcmp(buf + SAVE_MAGIC_BYTES + 1, dht->network_id, 32) != 0)
        return NS_EFOREIGN;
    size_t count = (size_t)buf[SAVE_HEADER_BYTES - 2] << 8 | buf[SAVE_HEADER_BYTES - 1];
    if (count > NS_DHT_SAVE_CONTACTS_MAX || len != SAVE_HEADER_BYTES + count * SAVE_ENTRY_BYTES)
        return NS_EPARSE;
    ns__dht_node node;
    for (size_t i = 0; i < count; i++) {
        if (!entry_parse(buf + SAVE_HEADER_BYTES + i * SAVE_ENTRY_BYTES, &node))
            return NS_EPARSE;
    }
    if (count > 0 && dht->ping_queue == NULL) {
        dht->ping_queue = calloc(NS_DHT_PING_QUEUE_MAX, sizeof *dht->ping_queue);
        if (dht->ping_queue == NULL)
            return NS_ENOMEM;
    }
    for (size_t i = 0; i < count && dht->ping_queue_count < NS_DHT_PING_QUEUE_MAX; i++) {
        NS_ASSERT(entry_parse(buf + SAVE_HEADER_BYTES + i * SAVE_ENTRY_BYTES, &node));
        if (memcmp(node.node_id, dht->self_id, NS_ID_BYTES) == 0)
            continue;
        size_t at = (dht->ping_queue_head + dht->ping_queue_count) % NS_DHT_PING_QUEUE_MAX;
        dht->ping_queue[at] = node;
        dht->ping_queue_count++;
    }
    ns__dht_wake_at(dht, ns__dht_now(dht));
    return NS_OK;
}
