/*
 * dht_internal.h: what the files of the DHT core share, and nobody else (tests may include it).
 *
 * The core is split by concern: packet.c turns a DhtPacket into bytes and back (the only file
 * that sees protobuf-c), routing.c holds the k-buckets and the save format, store.c the values,
 * tokens and the per-source rate limit, rpc.c the ns_dht object, its requests in flight, its one
 * wake-up timer and every incoming packet, lookup.c the iterative lookups (find node, get, put)
 * and the chores that start them. All of them work on one struct ns_dht defined here.
 */
#ifndef NEUROSHARD_DHT_INTERNAL_H
#define NEUROSHARD_DHT_INTERNAL_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/dht.h"

/* ---- limits and timers not in dht.h ------------------------------------------------------- */

#define NS_DHT_VERSION               1
#define NS_DHT_TOKEN_BYTES           32  /* HMAC-SHA256 of the requester's address */
#define NS_DHT_NODE_RECORD_BYTES_MAX 512 /* a node record, ours or a peer's */
#define NS_DHT_PACKET_RECORDS_MAX    16  /* records in one packet (each is at least ~140 bytes) */
#define NS_DHT_PACKET_OVERHEAD_MAX   320 /* every field of a packet but records and contacts */
#define NS_DHT_SHORTLIST_MAX         (3 * NS_DHT_K) /* candidates one lookup keeps */
#define NS_DHT_RPCS_MAX              512            /* requests in flight at once */
#define NS_DHT_PINGS_MAX             32             /* ns_dht_ping and loaded contacts in flight */
#define NS_DHT_VERIFY_PINGS_MAX      16             /* pings to unknown requesters in flight */
#define NS_DHT_PING_QUEUE_MAX        512            /* addresses waiting for a ping (ns_dht_load) */
#define NS_DHT_REPLACEMENTS_MAX      8              /* verified spares kept per full bucket */
#define NS_DHT_OBSERVED_MAX          32  /* reports of our address remembered (one per reporter) */
#define NS_DHT_OWN_RECORDS_MAX       64  /* records this node republishes */
#define NS_DHT_SOFT_TIMEOUT_MIN_MS   250 /* a lookup stops waiting for an answer after... */
#define NS_DHT_LOOKUP_TRIES_MAX      2   /* requests to one candidate in one lookup */
#define NS_DHT_PAGES_MAX             16  /* FIND_VALUE pages asked of one node in one lookup */
#define NS_DHT_CHORE_MS              10000 /* refresh, stale pings, republish, sweep checks */
#define NS_DHT_SWEEP_MS              60000 /* expired values are dropped this often */
#define NS_DHT_STALE_MS              (15 * 60 * 1000) /* ping a contact silent for this long */
#define NS_DHT_STALE_PINGS_PER_CHORE 8
#define NS_DHT_REFRESHES_PER_CHORE   2
#define NS_DHT_VALUE_TTL_MS          (3 * NS_DHT_REPUBLISH_MS)   /* a value not stored again */
#define NS_DHT_BOOTSTRAP_WAIT_MS     (2 * NS_DHT_RPC_TIMEOUT_MS) /* for seeds to answer */
#define NS_DHT_SAVE_CONTACTS_MAX     NS_DHT_PING_QUEUE_MAX /* all of a saved table is pinged */
#define NS_DHT_SAVE_MAGIC            "NSDHT\n"
#define NS_DHT_SAVE_VERSION          1
#define NS_DHT_RATE_SOURCES_MIN      64 /* the rate table starts this small and doubles */
#define NS_DHT_RATE_WAYS             4  /* entries a source hashes to (the LRU one is replaced) */
#define NS_DHT_STORE_SLOTS_MIN       16 /* the value table's hash slots start this small */

static_assert(NS_DHT_VALUE_BYTES_MAX + NS_DHT_PACKET_OVERHEAD_MAX <= NS_DHT_PACKET_BYTES_MAX,
              "any value fits a STORE request and a FIND_VALUE page by itself");
static_assert(NS_DHT_NODE_RECORD_BYTES_MAX + NS_DHT_PACKET_OVERHEAD_MAX <= NS_DHT_PACKET_BYTES_MAX,
              "a PONG with the largest node record fits a packet");
static_assert(NS_DHT_ALPHA <= NS_DHT_K, "alpha is at most k");
static_assert(NS_DHT_K <= 255, "bucket counts are bytes");
static_assert(NS_DHT_LOOKUPS_MAX * (NS_DHT_ALPHA + 1) + NS_DHT_PINGS_MAX +
                      NS_DHT_VERIFY_PINGS_MAX <=
                  NS_DHT_RPCS_MAX,
              "lookups and pings fit the request table together");
static_assert((NS_DHT_RATE_SOURCES_MAX & (NS_DHT_RATE_SOURCES_MAX - 1)) == 0,
              "the rate table's size is a power of two");
static_assert(NS_DHT_RATE_SOURCES_MIN % NS_DHT_RATE_WAYS == 0, "whole sets");
static_assert(NS_DHT_TOKEN_ROTATE_MS > 2 * NS_DHT_RPC_TIMEOUT_MS, "a token outlives a lookup");

/* ---- packets (packet.c) ------------------------------------------------------------------- */

typedef enum {
    NS__DHT_PING = 1,
    NS__DHT_FIND_NODE = 2,
    NS__DHT_FIND_VALUE = 3,
    NS__DHT_STORE = 4,
} ns__dht_kind;

typedef enum {
    NS__DHT_ERROR_NONE = 0,
    NS__DHT_ERROR_TOKEN = 1,
    NS__DHT_ERROR_RECORD = 2,
    NS__DHT_ERROR_FULL = 3,
    NS__DHT_ERROR_STALE = 4,
} ns__dht_error;

typedef struct ns__dht_node {
    uint8_t node_id[NS_ID_BYTES];
    ns_addr addr;
} ns__dht_node;

/* One DhtPacket, decoded or to encode. Views (records, sender_record) point into the caller's
 * memory when encoding and into `unpacked_` after decoding, valid until ns__dht_packet_release. */
typedef struct ns__dht_packet {
    uint8_t sender_id[NS_ID_BYTES];
    uint64_t txid;
    bool response;
    ns__dht_kind kind;
    uint64_t time_ms;
    bool want_record;
    bool has_target;
    uint8_t target[NS_ID_BYTES];
    uint32_t skip;
    bool has_token;
    uint8_t token[NS_DHT_TOKEN_BYTES];
    ns__dht_error error;
    bool has_observed;
    ns_addr observed;
    uint32_t values_total;
    size_t contact_count;
    ns__dht_node contacts[NS_DHT_K];
    const uint8_t *sender_record;
    size_t sender_record_len;
    size_t record_count;
    const uint8_t *records[NS_DHT_PACKET_RECORDS_MAX];
    size_t record_lens[NS_DHT_PACKET_RECORDS_MAX];
    void *unpacked_;
} ns__dht_packet;

/* Encodes p into out. If it is larger than out_max, records beyond the first are left off from
 * the end, then contacts, then the last record, until it fits; p's counts then say what went
 * out. NS_ETOOBIG if even that does not fit. */
NS_MUST_USE int ns__dht_packet_encode(ns__dht_packet *p, const uint8_t network_id[32], uint8_t *out,
                                      size_t out_max, size_t *out_len);
/* Decodes and checks a packet: canonical encoding, every length, version, network id, and only
 * the fields that belong to its kind and direction. NS_EPARSE (or NS_ETOOBIG) otherwise. On
 * success the caller calls ns__dht_packet_release. */
NS_MUST_USE int ns__dht_packet_decode(const uint8_t *buf, size_t len, const uint8_t network_id[32],
                                      ns__dht_packet *p);
void ns__dht_packet_release(ns__dht_packet *p);

/* ---- routing table (routing.c) ------------------------------------------------------------ */

typedef struct ns__dht_entry {
    ns_dht_contact c;
    uint64_t pinged_ms; /* when a liveness ping last went out; 0 never */
} ns__dht_entry;

/* One k-bucket: contacts oldest first (least recently seen at 0), and verified spares that wait
 * for a place, newest last. Both arrays grow on demand up to their limits. */
typedef struct ns__dht_bucket {
    ns__dht_entry *entries;
    uint8_t count, capacity;
    uint8_t spare_count;
    bool evicting; /* a ping of entries[0] is in flight */
    ns__dht_entry *spares;
    uint64_t refreshed_ms; /* last lookup of an id in this bucket */
} ns__dht_bucket;

/* ---- requests in flight (rpc.c) ----------------------------------------------------------- */

typedef enum {
    NS__RPC_FREE = 0,
    NS__RPC_LOOKUP,      /* a FIND_NODE / FIND_VALUE of a lookup */
    NS__RPC_PAGE,        /* a further FIND_VALUE page of a lookup */
    NS__RPC_STORE,       /* a STORE of a put */
    NS__RPC_PING_USER,   /* ns_dht_ping or a loaded contact */
    NS__RPC_PING_VERIFY, /* an unknown requester, to prove its id and address */
    NS__RPC_PING_EVICT,  /* the oldest contact of a full bucket */
    NS__RPC_PING_STALE,  /* a contact silent for NS_DHT_STALE_MS */
} ns__rpc_purpose;

typedef struct ns__dht_rpc {
    uint64_t txid;
    uint64_t sent_ms, deadline_ms;
    /* A lookup stops waiting at soft_deadline_ms (from the measured round-trip time) but an
     * answer still counts until deadline_ms; only then is the contact charged a failure. */
    uint64_t soft_deadline_ms;
    bool soft_expired;
    ns_addr addr;
    uint8_t expected_id[NS_ID_BYTES]; /* who we believe is there (expect_id) */
    bool expect_id;
    bool id_verified; /* expected_id is a verified contact at addr: no record asked for */
    uint8_t purpose;  /* ns__rpc_purpose */
    uint8_t kind;     /* ns__dht_kind */
    uint32_t lookup_id;
    uint32_t skip; /* NS__RPC_PAGE */
} ns__dht_rpc;

/* ---- lookups (lookup.c) ------------------------------------------------------------------- */

typedef enum {
    NS__LOOKUP_FIND_NODE = 0,
    NS__LOOKUP_GET,
    NS__LOOKUP_PUT,
    NS__LOOKUP_BOOTSTRAP,
    NS__LOOKUP_REFRESH,
} ns__lookup_type;

typedef struct ns__dht_lookup ns__dht_lookup;

/* ---- values (store.c) --------------------------------------------------------------------- */

typedef struct ns__dht_value {
    uint8_t *data;
    size_t len;
    uint8_t author[NS_ID_BYTES];
    uint64_t sequence;
    uint64_t expiry_ms; /* the record's own; 0 never */
    uint64_t stored_ms; /* last STORE of it; it goes NS_DHT_VALUE_TTL_MS later */
} ns__dht_value;

typedef struct ns__dht_group {
    uint8_t key[NS_ID_BYTES];
    ns__dht_value *values;
    uint32_t count, capacity;
    struct ns__dht_group *next; /* hash chain */
} ns__dht_group;

typedef struct ns__dht_rate_entry {
    uint8_t ip[8]; /* IPv4 address, or the /64 of an IPv6 one */
    uint8_t family;
    uint32_t milli; /* tokens times 1000 */
    uint64_t last_ms;
} ns__dht_rate_entry;

typedef struct ns__dht_own {
    uint8_t key[NS_ID_BYTES];
    uint8_t *data;
    size_t len;
    uint64_t sequence, expiry_ms;
    uint64_t republish_ms;
} ns__dht_own;

typedef struct ns__dht_observation {
    uint8_t reporter[NS_ID_BYTES];
    ns_addr addr;
} ns__dht_observation;

/* ---- the core ----------------------------------------------------------------------------- */

struct ns_dht {
    ns_env env;
    const ns_key *key;
    uint8_t self_id[NS_ID_BYTES];
    uint8_t network_id[32];
    uint8_t *self_record;
    size_t self_record_len;
    int (*verify)(void *arg, const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *out);
    void *verify_arg;
    uint8_t hash_key[16]; /* SipHash key for the value and rate tables, from env->random */

    /* routing table, indexed by the common prefix length with our id (0: farthest half) */
    ns__dht_bucket **buckets;
    size_t bucket_slots;
    size_t contact_count;

    ns__dht_rpc *rpcs;
    size_t rpc_capacity, rpc_count;
    uint32_t user_pings, verify_pings;
    ns__dht_node *ping_queue; /* ring of loaded contacts waiting for a ping */
    size_t ping_queue_head, ping_queue_count;

    ns__dht_lookup *lookups[NS_DHT_LOOKUPS_MAX];
    size_t lookup_count;
    uint32_t next_lookup_id;

    ns__dht_group **store_slots;
    size_t store_slot_count, group_count, value_count;

    uint8_t token_secret[32], token_secret_prev[32];
    uint64_t token_rotated_ms;

    ns__dht_rate_entry *rate;
    size_t rate_capacity, rate_used;

    ns__dht_observation *observed;
    size_t observed_count, observed_next;

    ns__dht_own *own;
    size_t own_count;

    int64_t srtt_ms, rttvar_ms; /* smoothed round-trip time of answers (0: none yet) */

    uint64_t wake_timer, wake_at_ms;
    bool started;
    uint64_t chore_ms, sweep_ms;

    ns_dht_stats stats;
};

/* rpc.c */
uint64_t ns__dht_now(const ns_dht *dht);
void ns__dht_wake_at(ns_dht *dht, uint64_t at_ms);
/* A new request slot (NULL when NS_DHT_RPCS_MAX are in flight). expected_id may be NULL. */
ns__dht_rpc *ns__dht_rpc_new(ns_dht *dht, ns__rpc_purpose purpose, ns__dht_kind kind,
                             const ns_addr *addr, const uint8_t *expected_id, uint64_t now_ms);
/* Fills the header fields of p from rpc and sends it; on failure the slot is freed. */
NS_MUST_USE int ns__dht_rpc_send(ns_dht *dht, ns__dht_rpc *rpc, ns__dht_packet *p);
NS_MUST_USE int ns__dht_ping_send(ns_dht *dht, ns__rpc_purpose purpose, const ns_addr *addr,
                                  const uint8_t *expected_id, uint64_t now_ms);
bool ns__dht_rpc_pending_to(const ns_dht *dht, const ns_addr *addr);
/* Checks a value record: size, signature, time, and (key != NULL) that it is stored under key.
 * Counts a refusal in the stats by reason. */
NS_MUST_USE int ns__dht_value_check(ns_dht *dht, const uint8_t *buf, size_t len, uint64_t now_ms,
                                    const uint8_t *key, ns_record *rec);

/* routing.c */
bool ns__dht_addr_usable(const ns_addr *addr);
/* The verified contact with this id at this address, in the table or among the spares. */
bool ns__dht_table_knows(const ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *addr);
/* A verified node answered at now_ms: it enters, moves to the newest place, or waits as a spare
 * while the oldest of its full bucket is pinged. */
void ns__dht_table_seen(ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *addr,
                        uint64_t now_ms, int64_t clock_skew_ms);
/* A request to id at addr went unanswered (evicting: it was the eviction ping). */
void ns__dht_table_failed(ns_dht *dht, const uint8_t id[NS_ID_BYTES], const ns_addr *addr,
                          bool evicting);
/* Whether an unknown node of this id would have room (its bucket is not full). */
bool ns__dht_table_has_room(const ns_dht *dht, const uint8_t id[NS_ID_BYTES]);
/* The n verified contacts nearest target, nearest first; excluding may be NULL. */
size_t ns__dht_table_closest(const ns_dht *dht, const uint8_t target[NS_ID_BYTES],
                             const uint8_t *excluding, ns__dht_node *out, size_t n);
ns__dht_bucket *ns__dht_bucket_for(ns_dht *dht, const uint8_t id[NS_ID_BYTES], bool create);
void ns__dht_table_chores(ns_dht *dht, uint64_t now_ms);
void ns__dht_table_free(ns_dht *dht);

/* store.c */
void ns__dht_token_make(ns_dht *dht, const ns_addr *addr, uint64_t now_ms,
                        uint8_t token[NS_DHT_TOKEN_BYTES]);
bool ns__dht_token_check(ns_dht *dht, const ns_addr *addr, uint64_t now_ms,
                         const uint8_t token[NS_DHT_TOKEN_BYTES]);
/* Whether a request from addr is within its source's rate (and takes one token if so). */
bool ns__dht_rate_allow(ns_dht *dht, const ns_addr *addr, uint64_t now_ms);
/* Stores a verified record: NS_OK (new, newer, or the same again), NS_EEXIST (an older
 * sequence than held), NS_ELIMIT (per-key or global cap), NS_ENOMEM. */
NS_MUST_USE int ns__dht_store_put(ns_dht *dht, const uint8_t key[NS_ID_BYTES], const uint8_t *buf,
                                  size_t len, const ns_record *rec, uint64_t now_ms);
/* Values under key from skip on (expired ones are dropped first); *total gets how many there
 * are. */
size_t ns__dht_store_get(ns_dht *dht, const uint8_t key[NS_ID_BYTES], uint64_t now_ms, size_t skip,
                         const uint8_t **records, size_t *lens, size_t max, size_t *total);
void ns__dht_store_sweep(ns_dht *dht, uint64_t now_ms);
void ns__dht_store_free(ns_dht *dht);
void ns__dht_rate_free(ns_dht *dht);

/* lookup.c */
NS_MUST_USE int ns__dht_lookup_start(ns_dht *dht, ns__lookup_type type,
                                     const uint8_t target[NS_ID_BYTES], const uint8_t *record,
                                     size_t record_len, ns_dht_lookup_fn done, void *arg);
/* A lookup's request was answered by a verified node (p), or failed (p == NULL). */
void ns__dht_lookup_on_rpc(ns_dht *dht, const ns__dht_rpc *rpc, const ns__dht_packet *p,
                           const uint8_t *sender_id, uint64_t now_ms);
/* A lookup's request passed its soft deadline: the lookup goes on without it. */
void ns__dht_lookup_on_soft_timeout(ns_dht *dht, const ns__dht_rpc *rpc, uint64_t now_ms);
/* Deadlines, finished lookups, and bootstraps that waited for their seeds; returns the earliest
 * time a lookup wants to be woken (UINT64_MAX: none). */
uint64_t ns__dht_lookups_tick(ns_dht *dht, uint64_t now_ms);
void ns__dht_lookups_chores(ns_dht *dht, uint64_t now_ms);
void ns__dht_lookups_free(ns_dht *dht);
void ns__dht_own_free(ns_dht *dht);
NS_MUST_USE int ns__dht_own_remember(ns_dht *dht, const uint8_t key[NS_ID_BYTES],
                                     const uint8_t *buf, size_t len, const ns_record *rec,
                                     uint64_t now_ms);

#endif
