/*
 * link.h: authenticated, encrypted links between two nodes, as a sans-IO core.
 *
 * A link turns a reliable byte stream (TCP, bound by src/node/; a simulated pipe in tests) into
 * a channel of frames that only the two node ids at its ends can read or write. It never touches
 * a socket: the transport feeds it received bytes (ns_link_on_bytes) and carries away what it
 * writes (callbacks.write); timers (handshake timeout, keep-alive, idle) come from the env.
 *
 * Handshake (three messages, proto/link.proto, byte for byte in docs/protocol.md (part 1)), each
 * sent in the clear as u16 length (big-endian) || protobuf message, at most
 * NS_LINK_HANDSHAKE_BYTES_MAX:
 *   1. I -> R  LinkHello      version, network id, ephemeral e_i
 *   2. R -> I  LinkHelloReply e_r, R's signed node record (binds its X25519 static key s_r to its
 *                             node id), R's ECDSA signature sig_r over
 * SHA256("neuroshard/link/r/v1"
 *                             || T2)
 *   3. I -> R  LinkFinish     I's signed node record, I's signature sig_i over
 *                             SHA256("neuroshard/link/i/v1" || T3)
 *   T2 = SHA256(SHA256("neuroshard/link/v1" || network_id) || M1 || e_r || record_r)
 *   T3 = SHA256(T2 || sig_r || record_i)
 *   (M1 is LinkHello's protobuf bytes without the length prefix; records are the exact envelopes.)
 *   keys = BLAKE2b-512(key = T3, msg = X25519(e_i, e_r) || X25519(e_i, s_r) || X25519(s_i, e_r))
 *          -> first 32 bytes initiator-to-responder, last 32 responder-to-initiator
 * Fresh ephemerals on both sides make a replayed handshake useless; the signatures over the
 * transcript make a man in the middle fail; the static DH terms bind the session to the keys the
 * records name. The initiator is established once it has sent LinkFinish, the responder once it
 * has checked it.
 *
 * Records after the handshake: u32 length (big-endian) || ChaCha20-Poly1305-IETF ciphertext of
 * one encoded frame (wire.h) with its 16-byte tag; the length counts ciphertext and tag. The
 * nonce is 4 zero bytes || the direction's 64-bit record counter (little-endian); the 4 length
 * bytes are the associated data. A direction rekeys itself after NS_LINK_REKEY_FRAMES records or
 * NS_LINK_REKEY_BYTES plaintext bytes under one key:
 * key' = BLAKE2b-256(key = key, msg = "neuroshard/link/rekey/v1"), counter back to 0 — both ends
 * do it at the same record, so no message is needed. Any record that fails to decrypt or parse
 * closes the link. No plaintext frame exists.
 *
 * Why a link closes (the reason closed() gets): NS_OK clean close by either side; NS_EFOREIGN
 * another link version; NS_EPERM another network (in LinkHello or the peer's record); NS_ECORRUPT
 * a peer record that does not verify (NS_EEXPIRED / NS_EFUTURE when only its time is wrong);
 * NS_EBADSIG a transcript signature that does not verify; NS_EAUTHOR not the expected peer;
 * NS_ETOOBIG a handshake message or record over its limit; NS_EPARSE a malformed message or frame;
 * NS_ECRYPTO a record that fails to decrypt, or a DH result of zero; NS_ELIMIT a timeout (the
 * handshake, NS_LINK_IDLE_TIMEOUT_MS without receiving, or a CLOSE that never got written);
 * NS_ENOMEM; or the reason given to ns_link_on_transport_closed.
 *
 * Re-entrancy: every callback may call into the link again (send, close, free). ns_link_free from
 * inside a callback is deferred until the link's outermost call returns, and no callback follows.
 * ns_link_on_bytes must not be called from inside a callback of the same link.
 */
#ifndef NEUROSHARD_LINK_H
#define NEUROSHARD_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"
#include "neuroshard/wire.h"

#define NS_LINK_VERSION             1
#define NS_LINK_HANDSHAKE_BYTES_MAX 4096 /* one handshake message */
#define NS_LINK_RECORD_OVERHEAD     20   /* length prefix and tag */
/* Limits a test or netsim may lower. */
#ifndef NS_LINK_HANDSHAKE_TIMEOUT_MS
#define NS_LINK_HANDSHAKE_TIMEOUT_MS 10000
#endif
#ifndef NS_LINK_KEEPALIVE_MS
#define NS_LINK_KEEPALIVE_MS 15000 /* PING after this long without sending */
#endif
#ifndef NS_LINK_IDLE_TIMEOUT_MS
#define NS_LINK_IDLE_TIMEOUT_MS 60000 /* close after this long without receiving */
#endif
#ifndef NS_LINK_CLOSE_TIMEOUT_MS
#define NS_LINK_CLOSE_TIMEOUT_MS 10000 /* give up waiting for CLOSE to be written */
#endif
#ifndef NS_LINK_REKEY_FRAMES
#define NS_LINK_REKEY_FRAMES (1u << 20)
#endif
#ifndef NS_LINK_REKEY_BYTES
#define NS_LINK_REKEY_BYTES (1ull << 30)
#endif
#ifndef NS_LINK_OUTBOUND_BYTES_MAX
#define NS_LINK_OUTBOUND_BYTES_MAX (32u * 1024 * 1024) /* written but not yet on the wire */
#endif

/* Who this node is, for every link it makes. The node record is this node's signed
 * NS_RECORD_NODE record whose NodeInfo names link_static_public. */
typedef struct ns_link_identity {
    const ns_key *key;
    uint8_t link_static_secret[32];
    uint8_t link_static_public[32];
    const uint8_t *node_record; /* owned by the caller; must outlive the links */
    size_t node_record_len;
    uint8_t network_id[32];
} ns_link_identity;

typedef struct ns_link_callbacks {
    /* Bytes for the transport. Ownership of buf passes to the transport, which frees it with
     * free() once written and then calls ns_link_on_written(link, len). */
    void (*write)(void *arg, uint8_t *buf, size_t len);
    /* The handshake finished: the peer is peer_id, its signed node record is record (verified;
     * valid only during the call). */
    void (*established)(void *arg, const uint8_t peer_id[NS_ID_BYTES], const uint8_t *record,
                        size_t record_len);
    /* One frame from the peer; the views in f are valid only during the call. PING, PONG and
     * CLOSE are handled by the link and not passed on. */
    void (*frame)(void *arg, const ns_frame *f);
    /* The outbound queue fell below half of NS_LINK_OUTBOUND_BYTES_MAX after a refused send. */
    void (*writable)(void *arg);
    /* The link is closed (reason: NS_OK for a clean close by either side, else why). No call
     * comes after this one; the owner frees the link (from here is allowed). */
    void (*closed)(void *arg, int reason);
    void *arg;
} ns_link_callbacks;

typedef struct ns_link ns_link;

typedef enum {
    NS_LINK_INITIATOR = 0,
    NS_LINK_RESPONDER = 1,
} ns_link_role;

/* A new link; the initiator sends its LinkHello at once (from inside this call, so *out is set
 * before write() runs). expected_peer (may be NULL; for the initiator, the node id the dialer
 * means to reach) closes the link with NS_EAUTHOR when the peer turns out to be another id.
 * identity and env must outlive the link. NS_ETOOBIG when the identity's node record cannot fit a
 * handshake message. */
NS_MUST_USE int ns_link_new(ns_link **out, ns_link_role role, const ns_link_identity *identity,
                            const uint8_t *expected_peer, const ns_env *env,
                            const ns_link_callbacks *callbacks);
void ns_link_free(ns_link *link); /* cancels its timers; NULL is a no-op; no callback after */

/* Bytes received from the transport, any split. Returns NS_OK, or the error that closed the
 * link (closed() has then been called); NS_EINVAL on a link already closed. While the link is
 * closing (ns_link_close) received bytes are dropped. */
int ns_link_on_bytes(ns_link *link, const uint8_t *buf, size_t len);
/* The transport wrote len bytes of what write() handed it. Allowed after closed(), never after
 * ns_link_free (buffers still with the transport then are the transport's to free). */
void ns_link_on_written(ns_link *link, size_t len);
/* The transport failed or the peer hung up: closes the link with reason. */
void ns_link_on_transport_closed(ns_link *link, int reason);

/* Encrypts and writes one frame. NS_ELIMIT: the outbound queue is full (wait for writable()): a
 * frame is refused when it would take the outbound bytes over NS_LINK_OUTBOUND_BYTES_MAX, unless
 * nothing is outbound (so one frame larger than the whole budget still goes, alone). NS_EINVAL
 * before the handshake finished, after close, or for PING, PONG and CLOSE (the link's own);
 * NS_ETOOBIG / NS_EINVAL for a frame ns_frame_encode refuses; NS_ENOMEM. */
NS_MUST_USE int ns_link_send(ns_link *link, const ns_frame *f);
/* Sends CLOSE and closes; closed(NS_OK) follows once the CLOSE is written (everything outbound
 * written), or closed(NS_ELIMIT) after NS_LINK_CLOSE_TIMEOUT_MS. Before the handshake finished,
 * closed(NS_OK) comes at once. A no-op on a link that is closing or closed. */
void ns_link_close(ns_link *link);

bool ns_link_established(const ns_link *link);       /* handshake done, not closing or closed */
const uint8_t *ns_link_peer_id(const ns_link *link); /* NULL before the handshake */
size_t ns_link_outbound_bytes(const ns_link *link);

typedef struct ns_link_stats {
    uint64_t frames_sent, frames_received; /* records, PING/PONG/CLOSE included */
    uint64_t bytes_sent, bytes_received;   /* on the wire, handshake included */
    uint64_t rekeys;                       /* both directions */
} ns_link_stats;
void ns_link_get_stats(const ns_link *link, ns_link_stats *out);

/* ---- node records (the identity a link and the DHT both rely on) --------------------------- */

#define NS_NODE_ADDRESSES_MAX 4
#define NS_NODE_VERSION_SIZE  32

typedef struct ns_node_info {
    uint8_t network_id[32];
    uint8_t link_static[32];
    ns_addr addresses[NS_NODE_ADDRESSES_MAX];
    size_t address_count;
    char version[NS_NODE_VERSION_SIZE];
    uint64_t memory_mb;
    /* capacity (S2): zero until known */
    uint64_t layer_latency_us;
    uint32_t tier; /* 1..5, 0 unknown */
    uint32_t bandwidth_mbps;
    uint32_t layer_first, layer_last; /* held [first, last) */
    bool in_quorum;
    uint8_t quorum_id[32];
    uint64_t stake_nano;
    uint32_t reputation_ppm; /* <= 1000000 */
} ns_node_info;

/* Signs this node's record: type NS_RECORD_NODE, empty topic, body NodeInfo (proto/node.proto).
 * *out is malloc'd. */
NS_MUST_USE int ns_node_record_make(const ns_key *key, const ns_node_info *info, uint64_t now_ms,
                                    uint64_t ttl_ms, uint64_t sequence, uint8_t **out,
                                    size_t *out_len);
/* Verifies a node record and decodes its body: NS_EPARSE when it is not a node record (wrong
 * type, a topic, a malformed body), else the errors of ns_record_verify. rec may be NULL. */
NS_MUST_USE int ns_node_record_open(const uint8_t *buf, size_t len, uint64_t now_ms, ns_record *rec,
                                    ns_node_info *info);

/* The network id of a named network: SHA256("neuroshard/network/v1" || name). */
void ns_network_id(uint8_t out[32], const char *name);
#define NS_NETWORK_DEFAULT "neuroshard-genesis"

#endif
