/*
 * dht.h: a Kademlia DHT of self-certifying signed records, as a sans-IO core (SPEC S4).
 *
 * 256-bit ids (node ids; record keys from ns_record_key), k-buckets of NS_DHT_K contacts with
 * least-recently-seen eviction that pings the oldest contact before replacing it, iterative
 * lookups with NS_DHT_ALPHA requests in flight and per-request timeouts, and four RPCs over the
 * datagram channel: PING, FIND_NODE, FIND_VALUE, STORE (proto/dht.proto, docs/protocol.md (part
 * 2)).
 *
 * Trust: a contact enters the routing table only after it answered us and proved its id with its
 * signed node record (verified once, then remembered with the contact); requests carry random
 * 64-bit transaction ids and answers must come from the address asked, so an off-path host
 * cannot inject answers. A node record is public, so it proves that the id belongs to a real key
 * of this network, not that the answering host holds that key: an id already in the table keeps
 * the address it answers at, one address holds one id, and links check keys in their handshake.
 * Values are signed records: each is verified before it is stored or served, keyed by
 * ns_record_key, at most one per author per key (the highest sequence wins), dropped at expiry,
 * and republished by their author. A record with a bad signature, from the future or over the
 * size limit is dropped and counted.
 * STORE needs a token that the storing node handed to the requester's address in an earlier
 * answer (HMAC of the address under a secret rotated every NS_DHT_TOKEN_ROTATE_MS, the previous
 * secret still accepted, as in BitTorrent's BEP 5), so nobody stores from a spoofed address.
 * Each source IP (IPv6: each /64) has a token bucket of requests; a flood from one source is
 * dropped and counted without slowing answers to others. netsim must give each node its own IP.
 *
 * The core never touches a socket or a clock: packets go out through env->send on
 * NS_CHANNEL_DATAGRAM (the frame's body is the packet, type NS_FRAME_DHT) and come in through
 * ns_dht_on_datagram; all timing is one env timer at a time. env->send must not call back into
 * the core. A lookup callback may start new lookups but must not free the core.
 */
#ifndef NEUROSHARD_DHT_H
#define NEUROSHARD_DHT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"

#ifndef NS_DHT_K
#define NS_DHT_K 20
#endif
#define NS_DHT_ALPHA              3
#define NS_DHT_ID_BITS            256
#define NS_DHT_PACKET_BYTES_MAX   1400 /* fits one unfragmented UDP datagram on the Internet */
#define NS_DHT_RPC_TIMEOUT_MS     2000
#define NS_DHT_LOOKUP_TIMEOUT_MS  15000
#define NS_DHT_LOOKUPS_MAX        64 /* lookups in flight at once */
#define NS_DHT_VALUES_PER_KEY_MAX 64
#define NS_DHT_STORED_VALUES_MAX  65536
#define NS_DHT_VALUE_BYTES_MAX    1024 /* a record must fit a packet with room to spare */
#define NS_DHT_REFRESH_MS         (15 * 60 * 1000) /* refresh a bucket not looked up for this long */
#define NS_DHT_REPUBLISH_MS       (30 * 60 * 1000) /* authors republish their records this often */
#define NS_DHT_TOKEN_ROTATE_MS    (5 * 60 * 1000)
#define NS_DHT_RATE_PER_S         50 /* requests a second one source address may send us */
#define NS_DHT_RATE_BURST         100
#define NS_DHT_RATE_SOURCES_MAX   4096
#define NS_DHT_CONTACT_FAILS_MAX  3 /* unanswered requests in a row before a contact is dropped */

typedef struct ns_dht ns_dht;

typedef struct ns_dht_config {
    const ns_key *key;
    uint8_t network_id[32];
    /* This node's signed node record (link.h ns_node_record_make), sent to prove our id: at most
     * 512 bytes, of config.network_id, authored by key, not expired (ns_dht_new and
     * ns_dht_set_self_record refuse it with NS_EINVAL otherwise). The core copies it. The owner
     * replaces it before it expires and when its addresses change (ns_dht_observed_addr). */
    const uint8_t *self_record;
    size_t self_record_len;
    /* How records are verified: NULL means ns_record_verify. netsim passes a memoising wrapper
     * so ten thousand cores in one process do not verify one record ten thousand times. */
    int (*verify)(void *arg, const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *out);
    void *verify_arg;
} ns_dht_config;

typedef struct ns_dht_contact {
    uint8_t node_id[NS_ID_BYTES];
    ns_addr addr;
    uint64_t last_seen_ms; /* last time it answered us */
    uint32_t fails;        /* unanswered requests in a row */
    int64_t clock_skew_ms; /* its clock minus ours, from its last answer */
} ns_dht_contact;

/* The outcome of a lookup. contacts: the closest answering nodes found, nearest first.
 * records: for ns_dht_get, the verified values found under the key (views valid during the call
 * only). hops: the longest chain of answers that led to a result. */
typedef struct ns_dht_result {
    int status; /* NS_OK, or NS_ENOENT when nothing was found / no node answered */
    const ns_dht_contact *contacts;
    size_t contact_count;
    const uint8_t *const *records;
    const size_t *record_lens;
    size_t record_count;
    uint32_t hops;
    uint32_t queried; /* requests sent */
    uint64_t elapsed_ms;
} ns_dht_result;

typedef void (*ns_dht_lookup_fn)(void *arg, const ns_dht_result *result);

NS_MUST_USE int ns_dht_new(ns_dht **out, const ns_dht_config *config, const ns_env *env);
void ns_dht_free(ns_dht *dht); /* cancels timers; no callback after; NULL is a no-op */

/* Starts the periodic work (bucket refresh, republish, expiry, token rotation). */
void ns_dht_start(ns_dht *dht);
NS_MUST_USE int ns_dht_set_self_record(ns_dht *dht, const uint8_t *record, size_t len);

/* One received datagram. Anything malformed is dropped and counted; never an error to the
 * caller. */
void ns_dht_on_datagram(ns_dht *dht, const ns_addr *from, const uint8_t *buf, size_t len);

/* Pings addr; if it answers with a valid node record it joins the table. Used for bootstrap
 * seeds, saved contacts and LAN discoveries. NS_ELIMIT if too many pings are pending. */
NS_MUST_USE int ns_dht_ping(ns_dht *dht, const ns_addr *addr);
/* Bootstrap: a lookup of our own id, run after seeds answered (or at once with what the table
 * has). The callback (may be NULL) tells how it went. */
NS_MUST_USE int ns_dht_bootstrap(ns_dht *dht, ns_dht_lookup_fn done, void *arg);
/* Iterative FIND_NODE for target. */
NS_MUST_USE int ns_dht_find_node(ns_dht *dht, const uint8_t target[NS_ID_BYTES],
                                 ns_dht_lookup_fn done, void *arg);
/* Iterative FIND_VALUE for key: collects every verified record under it. */
NS_MUST_USE int ns_dht_get(ns_dht *dht, const uint8_t key[NS_ID_BYTES], ns_dht_lookup_fn done,
                           void *arg);
/* Verifies a signed record, stores it locally, looks up the NS_DHT_K nodes closest to its key
 * and STOREs it on each. If this node is the author, the record is republished every
 * NS_DHT_REPUBLISH_MS until it expires or is replaced. done (may be NULL) reports how many
 * nodes took it (result->contact_count). */
NS_MUST_USE int ns_dht_put(ns_dht *dht, const uint8_t *record, size_t len, ns_dht_lookup_fn done,
                           void *arg);

/* The address most answering peers say they see us at (each answer carries it); NS_ENOENT
 * before any answer. For reachability reports and for the addresses in our node record. */
NS_MUST_USE int ns_dht_observed_addr(const ns_dht *dht, ns_addr *out);

/* A copy of the routing table, nearest buckets first. */
size_t ns_dht_contacts(const ns_dht *dht, ns_dht_contact *out, size_t max);
size_t ns_dht_contact_count(const ns_dht *dht);
/* Records stored locally under key (views valid until the next call into the core). */
size_t ns_dht_local_values(const ns_dht *dht, const uint8_t key[NS_ID_BYTES],
                           const uint8_t **records, size_t *lens, size_t max);

/* The routing table as bytes to keep on disk, and back: loaded contacts are pinged, not
 * trusted; a malformed buffer is refused whole with NS_EPARSE (NS_EFOREIGN: another format
 * version or network). The saved form is versioned binary, docs/protocol.md (part 2). *out is
 * malloc'd; the caller frees it. */
NS_MUST_USE int ns_dht_save(const ns_dht *dht, uint8_t **out, size_t *out_len);
NS_MUST_USE int ns_dht_load(ns_dht *dht, const uint8_t *buf, size_t len);

typedef struct ns_dht_stats {
    uint64_t packets_in, packets_out;
    uint64_t requests_in, responses_in, timeouts;
    uint64_t dropped_malformed;    /* does not parse, wrong version or network */
    uint64_t dropped_rate_limited; /* over a source's rate */
    uint64_t dropped_unexpected;   /* answer to nothing we asked */
    uint64_t records_bad_signature, records_future, records_expired, records_oversize;
    uint64_t records_malformed; /* a value that does not parse as a signed record */
    uint64_t records_wrong_key; /* a valid record offered under a key that is not its own */
    uint64_t identity_rejected; /* a node record that did not prove the claimed id */
    uint64_t store_bad_token;
    uint64_t records_stored; /* values held now */
    uint64_t lookups_started, lookups_succeeded, lookups_failed;
} ns_dht_stats;
void ns_dht_get_stats(const ns_dht *dht, ns_dht_stats *out);

/* XOR distance helpers, exposed for tests and netsim. */
int ns_dht_distance_cmp(const uint8_t target[NS_ID_BYTES], const uint8_t a[NS_ID_BYTES],
                        const uint8_t b[NS_ID_BYTES]);
int ns_dht_bucket_index(const uint8_t self[NS_ID_BYTES], const uint8_t id[NS_ID_BYTES]);

#endif
