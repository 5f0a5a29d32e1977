/*
 * link.c: the encrypted link between two nodes, a sans-IO core (include/neuroshard/link.h).
 *
 * Three parts, in this order below: the handshake (LinkHello, LinkHelloReply, LinkFinish: an
 * X25519 key agreement whose transcript both nodes sign with their node keys), the record layer
 * (ChaCha20-Poly1305 over encoded frames, one counter and key per direction, rekeyed by both ends
 * at the same record), and the plumbing around them: the receive state machine that accepts any
 * split of the byte stream, back-pressure accounting, and one timer for the handshake deadline,
 * keep-alive, idle and close timeouts. It never touches a socket, a clock or randomness except
 * through its env and callbacks.
 *
 * Callbacks may call back into the link, free it included. Every public entry point counts itself
 * in link->depth; ns_link_free inside a callback only marks the link, and the outermost entry
 * point frees it on its way out. After calling any callback, code here checks the state before
 * touching anything else, and calling closed() or write() is always the last thing a path does.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "link.pb-c.h"
#include "neuroshard/link.h"
#include "record.pb-c.h"

#define LINK_DOMAIN         "neuroshard/link/v1"
#define LINK_SIG_R_DOMAIN   "neuroshard/link/r/v1"
#define LINK_SIG_I_DOMAIN   "neuroshard/link/i/v1"
#define LINK_REKEY_DOMAIN   "neuroshard/link/rekey/v1"
#define LINK_X25519_BYTES   32
#define LINK_KEY_BYTES      32
#define LINK_TAG_BYTES      16
#define LINK_NONCE_BYTES    12
#define LINK_HS_PREFIX      2 /* u16 length before each handshake message */
#define LINK_RECORD_PREFIX  4 /* u32 length before each record */
#define LINK_PING_BODY      8
#define LINK_RECORD_MIN     (4 + LINK_TAG_BYTES) /* the smallest frame is its 4-byte prefix */
#define LINK_RECORD_MAX     ((size_t)NS_FRAME_BYTES_MAX + LINK_TAG_BYTES)
#define LINK_RX_SMALL_BYTES NS_LINK_HANDSHAKE_BYTES_MAX /* kept buffer; larger records malloc */
/* The largest own node record: the rest of LinkHelloReply (e_r, signature, tags and lengths)
 * takes 104 bytes at most. */
#define LINK_OWN_RECORD_BYTES_MAX (NS_LINK_HANDSHAKE_BYTES_MAX - 128)

static_assert(LINK_TAG_BYTES == crypto_aead_chacha20poly1305_ietf_ABYTES, "tag size");
static_assert(LINK_NONCE_BYTES == crypto_aead_chacha20poly1305_ietf_NPUBBYTES, "nonce size");
static_assert(LINK_KEY_BYTES == crypto_aead_chacha20poly1305_ietf_KEYBYTES, "key size");
static_assert(LINK_X25519_BYTES == crypto_scalarmult_BYTES, "X25519 size");
static_assert(LINK_RECORD_PREFIX + LINK_TAG_BYTES == NS_LINK_RECORD_OVERHEAD, "overhead");
static_assert(LINK_RECORD_MAX <= UINT32_MAX, "a record's length fits its u32 prefix");
static_assert(NS_LINK_HANDSHAKE_BYTES_MAX <= UINT16_MAX, "a message's length fits its u16");
static_assert(2 * LINK_KEY_BYTES <= crypto_generichash_BYTES_MAX, "one BLAKE2b gives both keys");
static_assert(NS_SHA256_BYTES >= crypto_generichash_KEYBYTES_MIN &&
                  NS_SHA256_BYTES <= crypto_generichash_KEYBYTES_MAX,
              "T3 is a valid BLAKE2b key");
static_assert(NS_LINK_REKEY_FRAMES > 0 && NS_LINK_REKEY_BYTES > 0, "rekey thresholds");

typedef enum {
    LINK_WAIT_HELLO,  /* responder: waiting for LinkHello */
    LINK_WAIT_REPLY,  /* initiator: LinkHello sent, waiting for LinkHelloReply */
    LINK_WAIT_FINISH, /* responder: LinkHelloReply sent, waiting for LinkFinish */
    LINK_ESTABLISHED,
    LINK_CLOSING, /* CLOSE handed to the transport; closed(NS_OK) once everything is written */
    LINK_CLOSED,  /* closed() called or the owner freed the link: no callback ever again */
} link_state;

/* One direction of the record layer. */
typedef struct link_direction {
    uint8_t key[LINK_KEY_BYTES];
    uint64_t counter; /* records under this key: the nonce */
    uint64_t bytes;   /* plaintext bytes under this key */
} link_direction;

struct ns_link {
    ns_link_role role;
    link_state state;
    const ns_link_identity *identity;
    const ns_env *env;
    ns_link_callbacks cb;
    bool has_expected_peer;
    bool has_peer_id;
    uint8_t expected_peer[NS_ID_BYTES];
    uint8_t peer_id[NS_ID_BYTES];

    /* The handshake; secrets are wiped once the keys exist. */
    uint8_t eph_secret[LINK_X25519_BYTES];
    uint8_t eph_public[LINK_X25519_BYTES];
    uint8_t peer_eph[LINK_X25519_BYTES];
    crypto_hash_sha256_state transcript; /* T2's input so far, then T3's */
    uint8_t t2[NS_SHA256_BYTES];

    link_direction tx, rx;

    /* Receiving: the length prefix, then the message or record it announces. */
    uint8_t rx_prefix[LINK_RECORD_PREFIX];
    size_t rx_prefix_have;
    size_t rx_body_len;
    size_t rx_body_have;
    uint8_t *rx_body; /* rx_small, rx_heap, or NULL while no partial body is held */
    uint8_t *rx_heap; /* a record larger than rx_small, freed once handled */
    bool in_rx;
    uint8_t rx_small[LINK_RX_SMALL_BYTES];

    size_t outbound_bytes; /* handed to write(), not yet reported by ns_link_on_written */
    bool writable_wanted;  /* a send was refused: call writable() below half */

    uint64_t timer_id; /* 0: none armed */
    uint64_t timer_at_ms;
    uint64_t handshake_deadline_ms;
    uint64_t close_deadline_ms;
    uint64_t last_send_ms;
    uint64_t last_recv_ms;

    int close_reason;
    unsigned depth; /* public entry points on the stack */
    bool free_pending;
    ns_link_stats stats;
};

/* ---- lifetime, timers, writing ------------------------------------------------------------ */

static void link_timer_callback(void *arg, uint64_t now_ms);

static void link_destroy(ns_link *link)
{
    free(link->rx_heap);
    sodium_memzero(link, sizeof *link);
    free(link);
}

static void link_enter(ns_link *link)
{
    link->depth++;
}

/* The last thing an entry point does: nothing may touch the link afterwards. */
static void link_leave(ns_link *link)
{
    NS_ASSERT(link->depth > 0);
    link->depth--;
    if (link->depth == 0 && link->free_pending)
        link_destroy(link);
}

static bool link_alive(const ns_link *link)
{
    return link->state != LINK_CLOSED;
}

static void link_wipe_secrets(ns_link *link)
{
    sodium_memzero(link->eph_secret, sizeof link->eph_secret);
    sodium_memzero(&link->tx, sizeof link->tx);
    sodium_memzero(&link->rx, sizeof link->rx);
    sodium_memzero(&link->transcript, sizeof link->transcript);
}

static void link_timer_stop(ns_link *link)
{
    if (link->timer_id != 0)
        ns_env_timer_cancel(link->env, link->timer_id);
    link->timer_id = 0;
}

/* When the timer should next fire in the current state. */
static uint64_t link_deadline_ms(const ns_link *link)
{
    switch (link->state) {
    case LINK_WAIT_HELLO:
    case LINK_WAIT_REPLY:
    case LINK_WAIT_FINISH:
        return link->handshake_deadline_ms;
    case LINK_ESTABLISHED: {
        uint64_t ping_at = link->last_send_ms + NS_LINK_KEEPALIVE_MS;
        uint64_t idle_at = link->last_recv_ms + NS_LINK_IDLE_TIMEOUT_MS;
        return ping_at < idle_at ? ping_at : idle_at;
    }
    case LINK_CLOSING:
        return link->close_deadline_ms;
    case LINK_CLOSED:
        break;
    }
    NS_ASSERT(!"no deadline for a closed link");
    return 0;
}

static void link_timer_arm(ns_link *link)
{
    NS_ASSERT(link_alive(link));
    uint64_t at_ms = link_deadline_ms(link);
    if (link->timer_id != 0 && link->timer_at_ms == at_ms)
        return;
    link_timer_stop(link);
    link->timer_at_ms = at_ms;
    link->timer_id = ns_env_timer(link->env, at_ms, link_timer_callback, link);
    NS_ASSERT(link->timer_id != 0);
}

/* Closes the link and tells the owner; the caller returns at once and touches nothing after. */
static void link_finish(ns_link *link, int reason)
{
    NS_ASSERT(link_alive(link));
    NS_ASSERT(reason <= 0);
    link->state = LINK_CLOSED;
    link->close_reason = reason;
    link_timer_stop(link);
    link_wipe_secrets(link);
    link->cb.closed(link->cb.arg, reason);
}

/* Hands buf (malloc'd, len bytes) to the transport; the caller touches nothing after. */
static void link_write(ns_link *link, uint8_t *buf, size_t len)
{
    NS_ASSERT(len > 0);
    link->outbound_bytes += len;
    link->stats.bytes_sent += len;
    link->last_send_ms = ns_env_now(link->env);
    link->cb.write(link->cb.arg, buf, len);
}

/* ---- the record layer --------------------------------------------------------------------- */

static void direction_nonce(const link_direction *dir, uint8_t nonce[LINK_NONCE_BYTES])
{
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(dir->counter >> (8 * i));
}

/* Counts one record of plaintext_len bytes and rekeys at the threshold; true when it rekeyed. */
static bool direction_advance(link_direction *dir, size_t plaintext_len)
{
    dir->counter++;
    dir->bytes += plaintext_len;
    if (dir->counter < NS_LINK_REKEY_FRAMES && dir->bytes < NS_LINK_REKEY_BYTES)
        return false;
    uint8_t next[LINK_KEY_BYTES];
    crypto_generichash(next, sizeof next, (const uint8_t *)LINK_REKEY_DOMAIN,
                       sizeof LINK_REKEY_DOMAIN - 1, dir->key, sizeof dir->key);
    memcpy(dir->key, next, sizeof next);
    sodium_memzero(next, sizeof next);
    dir->counter = 0;
    dir->bytes = 0;
    return true;
}

static bool outbound_allows(const ns_link *link, size_t len)
{
    size_t max = NS_LINK_OUTBOUND_BYTES_MAX;
    return link->outbound_bytes == 0 ||
           (link->outbound_bytes <= max && len <= max - link->outbound_bytes);
}

static void store_be32(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

/* Encrypts f into one malloc'd record and writes it; the payload is copied once, by
 * ns_frame_encode, and encrypted in place. limited: NS_ELIMIT over the outbound limit. */
static int record_send(ns_link *link, const ns_frame *f, bool limited)
{
    size_t frame_len;
    int rc = ns_frame_encoded_len(f, &frame_len);
    if (rc != NS_OK)
        return rc;
    size_t total = LINK_RECORD_PREFIX + frame_len + LINK_TAG_BYTES;
    if (limited && !outbound_allows(link, total))
        return NS_ELIMIT;
    uint8_t *buf = malloc(total);
    if (buf == NULL)
        return NS_ENOMEM;
    store_be32(buf, (uint32_t)(frame_len + LINK_TAG_BYTES));
    uint8_t *plain = buf + LINK_RECORD_PREFIX;
    size_t written;
    NS_ASSERT(ns_frame_encode(f, plain, frame_len, &written) == NS_OK);
    NS_ASSERT(written == frame_len);
    uint8_t nonce[LINK_NONCE_BYTES];
    direction_nonce(&link->tx, nonce);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(plain, plain + frame_len, NULL, plain,
                                                       frame_len, buf, LINK_RECORD_PREFIX, NULL,
                                                       nonce, link->tx.key);
    if (direction_advance(&link->tx, frame_len))
        link->stats.rekeys++;
    link->stats.frames_sent++;
    link_write(link, buf, total);
    return NS_OK;
}

static int record_send_control(ns_link *link, uint32_t type, const uint8_t *body, size_t len,
                               bool limited)
{
    ns_frame f = {.type = type, .body = body, .body_len = len};
    return record_send(link, &f, limited);
}

/* A decrypted frame: the link's own types are handled here, the rest go to the owner. */
static int record_dispatch(ns_link *link, const ns_frame *f)
{
    int rc;
    switch (f->type) {
    case NS_FRAME_PING:
        if (f->body_len != LINK_PING_BODY)
            return NS_EPARSE;
        /* A peer that pings without reading gets no answer beyond the outbound limit. */
        rc = record_send_control(link, NS_FRAME_PONG, f->body, f->body_len, true);
        return rc == NS_ELIMIT ? NS_OK : rc;
    case NS_FRAME_PONG:
        return NS_OK;
    case NS_FRAME_CLOSE:
        link_finish(link, NS_OK);
        return NS_OK;
    default:
        link->cb.frame(link->cb.arg, f);
        return NS_OK;
    }
}

/* One complete record: ct[0..ct_len) is ciphertext and tag; the plaintext goes to plain, which
 * may be ct itself. */
static int record_receive(ns_link *link, const uint8_t *ct, size_t ct_len, uint8_t *plain)
{
    NS_ASSERT(ct_len >= LINK_RECORD_MIN);
    size_t plain_len = ct_len - LINK_TAG_BYTES;
    uint8_t nonce[LINK_NONCE_BYTES];
    direction_nonce(&link->rx, nonce);
    if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
            plain, NULL, ct, plain_len, ct + plain_len, link->rx_prefix, LINK_RECORD_PREFIX, nonce,
            link->rx.key) != 0)
        return NS_ECRYPTO;
    if (direction_advance(&link->rx, plain_len))
        link->stats.rekeys++;
    link->stats.frames_received++;
    ns_frame f;
    if (ns_frame_decode(plain, plain_len, &f) != NS_OK)
        return NS_EPARSE;
    return record_dispatch(link, &f);
}

/* ---- the handshake ------------------------------------------------------------------------ */

/* Whether msg is the canonical encoding of the bytes it came from (and has no unknown fields),
 * so that no second encoding of one handshake message exists. */
static bool message_is_canonical(const ProtobufCMessage *msg, const uint8_t *buf, size_t len)
{
    if (msg->n_unknown_fields != 0 || protobuf_c_message_get_packed_size(msg) != len)
        return false;
    uint8_t repacked[NS_LINK_HANDSHAKE_BYTES_MAX];
    NS_ASSERT(len <= sizeof repacked);
    NS_ASSERT(protobuf_c_message_pack(msg, repacked) == len);
    return memcmp(repacked, buf, len) == 0;
}

/* Packs msg behind a u16 length into a malloc'd buffer and writes it. */
static int handshake_send(ns_link *link, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    NS_ASSERT(len <= NS_LINK_HANDSHAKE_BYTES_MAX); /* own record checked in ns_link_new */
    uint8_t *buf = malloc(LINK_HS_PREFIX + len);
    if (buf == NULL)
        return NS_ENOMEM;
    buf[0] = (uint8_t)(len >> 8);
    buf[1] = (uint8_t)len;
    NS_ASSERT(protobuf_c_message_pack(msg, buf + LINK_HS_PREFIX) == len);
    link_write(link, buf, LINK_HS_PREFIX + len);
    return NS_OK;
}

static void ephemeral_make(ns_link *link)
{
    ns_env_random(link->env, link->eph_secret, sizeof link->eph_secret);
    NS_ASSERT(crypto_scalarmult_base(link->eph_public, link->eph_secret) == 0);
}

/* Starts the transcript: SHA256(SHA256(LINK_DOMAIN || network_id) || M1 ... */
static void transcript_start(ns_link *link, const uint8_t *m1, size_t m1_len)
{
    uint8_t net_hash[NS_SHA256_BYTES];
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)LINK_DOMAIN, sizeof LINK_DOMAIN - 1);
    crypto_hash_sha256_update(&st, link->identity->network_id, 32);
    crypto_hash_sha256_final(&st, net_hash);
    crypto_hash_sha256_init(&link->transcript);
    crypto_hash_sha256_update(&link->transcript, net_hash, sizeof net_hash);
    crypto_hash_sha256_update(&link->transcript, m1, m1_len);
}

/* ... || e_r || record_r) = T2. */
static void transcript_t2(ns_link *link, const uint8_t e_r[LINK_X25519_BYTES],
                          const uint8_t *record_r, size_t record_r_len)
{
    crypto_hash_sha256_update(&link->transcript, e_r, LINK_X25519_BYTES);
    crypto_hash_sha256_update(&link->transcript, record_r, record_r_len);
    crypto_hash_sha256_final(&link->transcript, link->t2);
}

/* T3 = SHA256(T2 || sig_r || record_i), in two steps: the responder knows sig_r a message
 * before it sees record_i. */
static void transcript_t3_begin(ns_link *link, const uint8_t sig_r[NS_SIG_BYTES])
{
    crypto_hash_sha256_init(&link->transcript);
    crypto_hash_sha256_update(&link->transcript, link->t2, sizeof link->t2);
    crypto_hash_sha256_update(&link->transcript, sig_r, NS_SIG_BYTES);
}

static void transcript_t3_end(ns_link *link, const uint8_t *record_i, size_t record_i_len,
                              uint8_t t3[NS_SHA256_BYTES])
{
    crypto_hash_sha256_update(&link->transcript, record_i, record_i_len);
    crypto_hash_sha256_final(&link->transcript, t3);
}

/* SHA256(domain || t), the digest each side signs. */
static void transcript_digest(uint8_t digest[NS_SHA256_BYTES], const char *domain,
                              const uint8_t t[NS_SHA256_BYTES])
{
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)domain, strlen(domain));
    crypto_hash_sha256_update(&st, t, NS_SHA256_BYTES);
    crypto_hash_sha256_final(&st, digest);
}

/* The public key of an envelope that ns_record_verify accepted (so it parses, and its author is
 * SHA256(pubkey)); only running out of memory can fail. */
static int record_pubkey(const uint8_t *record, size_t len, const uint8_t author[NS_ID_BYTES],
                         uint8_t pubkey[NS_PUBKEY_BYTES])
{
    Neuroshard__SignedEnvelope *env = neuroshard__signed_envelope__unpack(NULL, len, record);
    if (env == NULL)
        return NS_ENOMEM;
    NS_ASSERT(env->pubkey.len == NS_PUBKEY_BYTES);
    memcpy(pubkey, env->pubkey.data, NS_PUBKEY_BYTES);
    neuroshard__signed_envelope__free_unpacked(env, NULL);
    uint8_t id[NS_ID_BYTES];
    ns_node_id_from_pubkey(id, pubkey);
    NS_ASSERT(memcmp(id, author, NS_ID_BYTES) == 0);
    return NS_OK;
}

/* Checks the peer's node record and its signature over the transcript digest: fills peer_id and
 * peer_static. */
static int peer_check(ns_link *link, const ProtobufCBinaryData *record, const uint8_t *digest,
                      const ProtobufCBinaryData *sig, uint8_t peer_static[LINK_X25519_BYTES])
{
    ns_record rec;
    ns_node_info info;
    int rc = ns_node_record_open(record->data, record->len, ns_env_now(link->env), &rec, &info);
    if (rc == NS_EEXPIRED || rc == NS_EFUTURE)
        return rc;
    if (rc != NS_OK)
        return NS_ECORRUPT;
    if (sodium_memcmp(info.network_id, link->identity->network_id, 32) != 0)
        return NS_EPERM;
    if (link->has_expected_peer && memcmp(rec.author, link->expected_peer, NS_ID_BYTES) != 0)
        return NS_EAUTHOR;
    uint8_t pubkey[NS_PUBKEY_BYTES];
    rc = record_pubkey(record->data, record->len, rec.author, pubkey);
    if (rc != NS_OK)
        return rc;
    if (ns_verify_digest(pubkey, digest, sig->data) != NS_OK)
        return NS_EBADSIG;
    memcpy(link->peer_id, rec.author, NS_ID_BYTES);
    memcpy(peer_static, info.link_static, LINK_X25519_BYTES);
    return NS_OK;
}

/* keys = BLAKE2b-512(key = T3, msg = DH(e_i, e_r) || DH(e_i, s_r) || DH(s_i, e_r)). */
static int keys_derive(ns_link *link, const uint8_t t3[NS_SHA256_BYTES],
                       const uint8_t peer_static[LINK_X25519_BYTES])
{
    const uint8_t *s_own = link->identity->link_static_secret;
    bool initiator = link->role == NS_LINK_INITIATOR;
    uint8_t dh[3 * LINK_X25519_BYTES];
    int bad = crypto_scalarmult(dh, link->eph_secret, link->peer_eph);
    /* The middle term is always DH(e_i, s_r), the last DH(s_i, e_r), whoever computes them. */
    bad |= initiator ? crypto_scalarmult(dh + 32, link->eph_secret, peer_static)
                     : crypto_scalarmult(dh + 32, s_own, link->peer_eph);
    bad |= initiator ? crypto_scalarmult(dh + 64, s_own, link->peer_eph)
                     : crypto_scalarmult(dh + 64, link->eph_secret, peer_static);
    uint8_t keys[2 * LINK_KEY_BYTES];
    crypto_generichash(keys, sizeof keys, dh, sizeof dh, t3, NS_SHA256_BYTES);
    memcpy(link->tx.key, initiator ? keys : keys + LINK_KEY_BYTES, LINK_KEY_BYTES);
    memcpy(link->rx.key, initiator ? keys + LINK_KEY_BYTES : keys, LINK_KEY_BYTES);
    sodium_memzero(dh, sizeof dh);
    sodium_memzero(keys, sizeof keys);
    sodium_memzero(link->eph_secret, sizeof link->eph_secret);
    return bad != 0 ? NS_ECRYPTO : NS_OK;
}

static int hello_send(ns_link *link)
{
    ephemeral_make(link);
    Neuroshard__LinkHello m = NEUROSHARD__LINK_HELLO__INIT;
    m.version = NS_LINK_VERSION;
    m.network_id.data = (uint8_t *)link->identity->network_id;
    m.network_id.len = 32;
    m.ephemeral.data = link->eph_public;
    m.ephemeral.len = LINK_X25519_BYTES;
    uint8_t m1[NS_LINK_HANDSHAKE_BYTES_MAX];
    size_t m1_len = neuroshard__link_hello__pack(&m, m1);
    transcript_start(link, m1, m1_len);
    link->state = LINK_WAIT_REPLY;
    return handshake_send(link, &m.base);
}

static int hello_check(const Neuroshard__LinkHello *m, const uint8_t *buf, size_t len,
                       const uint8_t network_id[32])
{
    if (m->version != NS_LINK_VERSION)
        return NS_EFOREIGN;
    if (m->network_id.len != 32 || m->ephemeral.len != LINK_X25519_BYTES ||
        !message_is_canonical(&m->base, buf, len))
        return NS_EPARSE;
    if (sodium_memcmp(m->network_id.data, network_id, 32) != 0)
        return NS_EPERM;
    return NS_OK;
}

/* Responder: LinkHello in, LinkHelloReply out. */
static int hello_receive(ns_link *link, const uint8_t *buf, size_t len)
{
    Neuroshard__LinkHello *m = neuroshard__link_hello__unpack(NULL, len, buf);
    if (m == NULL)
        return NS_EPARSE;
    int rc = hello_check(m, buf, len, link->identity->network_id);
    if (rc == NS_OK)
        memcpy(link->peer_eph, m->ephemeral.data, LINK_X25519_BYTES);
    neuroshard__link_hello__free_unpacked(m, NULL);
    if (rc != NS_OK)
        return rc;
    transcript_start(link, buf, len);
    ephemeral_make(link);
    const ns_link_identity *id = link->identity;
    transcript_t2(link, link->eph_public, id->node_record, id->node_record_len);
    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    transcript_digest(digest, LINK_SIG_R_DOMAIN, link->t2);
    rc = ns_sign_digest(id->key, digest, sig);
    if (rc != NS_OK)
        return rc;
    Neuroshard__LinkHelloReply reply = NEUROSHARD__LINK_HELLO_REPLY__INIT;
    reply.ephemeral.data = link->eph_public;
    reply.ephemeral.len = LINK_X25519_BYTES;
    reply.node_record.data = (uint8_t *)id->node_record;
    reply.node_record.len = id->node_record_len;
    reply.signature.data = sig;
    reply.signature.len = NS_SIG_BYTES;
    transcript_t3_begin(link, sig);
    link->state = LINK_WAIT_FINISH;
    return handshake_send(link, &reply.base);
}

/* The handshake is done: keys exist, the timer moves to keep-alive, the owner hears of it. */
static void link_establish(ns_link *link, const uint8_t *record, size_t record_len)
{
    link->state = LINK_ESTABLISHED;
    link->has_peer_id = true;
    link->last_recv_ms = ns_env_now(link->env);
    link_timer_arm(link);
    link->cb.established(link->cb.arg, link->peer_id, record, record_len);
}

/* Initiator: signs T3 and sends LinkFinish. */
static int finish_send(ns_link *link, const uint8_t t3[NS_SHA256_BYTES])
{
    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    transcript_digest(digest, LINK_SIG_I_DOMAIN, t3);
    int rc = ns_sign_digest(link->identity->key, digest, sig);
    if (rc != NS_OK)
        return rc;
    Neuroshard__LinkFinish m = NEUROSHARD__LINK_FINISH__INIT;
    m.node_record.data = (uint8_t *)link->identity->node_record;
    m.node_record.len = link->identity->node_record_len;
    m.signature.data = sig;
    m.signature.len = NS_SIG_BYTES;
    return handshake_send(link, &m.base);
}

/* Initiator: LinkHelloReply in; the keys, LinkFinish out; established. */
static int reply_handle(ns_link *link, const Neuroshard__LinkHelloReply *m)
{
    memcpy(link->peer_eph, m->ephemeral.data, LINK_X25519_BYTES);
    transcript_t2(link, m->ephemeral.data, m->node_record.data, m->node_record.len);
    uint8_t digest[NS_SHA256_BYTES];
    transcript_digest(digest, LINK_SIG_R_DOMAIN, link->t2);
    uint8_t peer_static[LINK_X25519_BYTES];
    int rc = peer_check(link, &m->node_record, digest, &m->signature, peer_static);
    if (rc != NS_OK)
        return rc;
    uint8_t t3[NS_SHA256_BYTES];
    const ns_link_identity *id = link->identity;
    transcript_t3_begin(link, m->signature.data);
    transcript_t3_end(link, id->node_record, id->node_record_len, t3);
    rc = keys_derive(link, t3, peer_static);
    if (rc != NS_OK)
        return rc;
    /* LinkFinish goes out before anything the owner sends from established(). */
    link->state = LINK_ESTABLISHED;
    rc = finish_send(link, t3);
    if (rc != NS_OK || link->state != LINK_ESTABLISHED)
        return rc; /* write() may have closed the link */
    link_establish(link, m->node_record.data, m->node_record.len);
    return NS_OK;
}

static int reply_receive(ns_link *link, const uint8_t *buf, size_t len)
{
    Neuroshard__LinkHelloReply *m = neuroshard__link_hello_reply__unpack(NULL, len, buf);
    if (m == NULL)
        return NS_EPARSE;
    int rc = NS_EPARSE;
    if (m->ephemeral.len == LINK_X25519_BYTES && m->signature.len == NS_SIG_BYTES &&
        m->node_record.len > 0 && message_is_canonical(&m->base, buf, len))
        rc = reply_handle(link, m);
    neuroshard__link_hello_reply__free_unpacked(m, NULL);
    return rc;
}

/* Responder: LinkFinish in; the keys; established. */
static int finish_handle(ns_link *link, const Neuroshard__LinkFinish *m)
{
    uint8_t t3[NS_SHA256_BYTES];
    transcript_t3_end(link, m->node_record.data, m->node_record.len, t3);
    uint8_t digest[NS_SHA256_BYTES];
    transcript_digest(digest, LINK_SIG_I_DOMAIN, t3);
    uint8_t peer_static[LINK_X25519_BYTES];
    int rc = peer_check(link, &m->node_record, digest, &m->signature, peer_static);
    if (rc != NS_OK)
        return rc;
    rc = keys_derive(link, t3, peer_static);
    if (rc != NS_OK)
        return rc;
    link_establish(link, m->node_record.data, m->node_record.len);
    return NS_OK;
}

static int finish_receive(ns_link *link, const uint8_t *buf, size_t len)
{
    Neuroshard__LinkFinish *m = neuroshard__link_finish__unpack(NULL, len, buf);
    if (m == NULL)
        return NS_EPARSE;
    int rc = NS_EPARSE;
    if (m->signature.len == NS_SIG_BYTES && m->node_record.len > 0 &&
        message_is_canonical(&m->base, buf, len))
        rc = finish_handle(link, m);
    neuroshard__link_finish__free_unpacked(m, NULL);
    return rc;
}

/* ---- receiving ---------------------------------------------------------------------------- */

static bool link_in_handshake(const ns_link *link)
{
    return link->state == LINK_WAIT_HELLO || link->state == LINK_WAIT_REPLY ||
           link->state == LINK_WAIT_FINISH;
}

/* One whole message or record, body[0..len); writable is body itself when the bytes are ours to
 * decrypt in place, else NULL. */
static int rx_message(ns_link *link, const uint8_t *body, size_t len, uint8_t *writable)
{
    switch (link->state) {
    case LINK_WAIT_HELLO:
        return hello_receive(link, body, len);
    case LINK_WAIT_REPLY:
        return reply_receive(link, body, len);
    case LINK_WAIT_FINISH:
        return finish_receive(link, body, len);
    case LINK_ESTABLISHED: {
        uint8_t *plain = writable;
        size_t plain_len = len - LINK_TAG_BYTES;
        if (plain == NULL && plain_len <= sizeof link->rx_small) {
            plain = link->rx_small;
        } else if (plain == NULL) {
            NS_ASSERT(link->rx_heap == NULL);
            plain = link->rx_heap = malloc(plain_len);
            if (plain == NULL)
                return NS_ENOMEM;
        }
        return record_receive(link, body, len, plain);
    }
    case LINK_CLOSING:
    case LINK_CLOSED:
        break;
    }
    NS_ASSERT(!"a message received while not receiving");
    return NS_EINVAL;
}

/* The length prefix is complete: checks the announced length before anything is allocated. */
static int rx_length(ns_link *link)
{
    const uint8_t *p = link->rx_prefix;
    size_t len;
    if (link_in_handshake(link)) {
        len = (size_t)p[0] << 8 | p[1];
        if (len > NS_LINK_HANDSHAKE_BYTES_MAX)
            return NS_ETOOBIG;
        if (len == 0)
            return NS_EPARSE;
    } else {
        len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (len > LINK_RECORD_MAX)
            return NS_ETOOBIG;
        if (len < LINK_RECORD_MIN)
            return NS_EPARSE;
    }
    link->rx_body_len = len;
    link->rx_body_have = 0;
    return NS_OK;
}

/* A message or record is complete: resets the receive state before handling it (handling may
 * call back into the owner), then frees a large record's buffer. */
static int rx_complete(ns_link *link, const uint8_t *body, size_t len, uint8_t *writable)
{
    link->rx_prefix_have = 0;
    link->rx_body_len = 0;
    link->rx_body_have = 0;
    link->rx_body = NULL;
    int rc = rx_message(link, body, len, writable);
    free(link->rx_heap);
    link->rx_heap = NULL;
    return rc;
}

/* Takes the next piece of the body: straight from buf when it holds the whole body, else into
 * rx_small or a heap buffer of exactly the announced length. */
static int rx_body_step(ns_link *link, const uint8_t *buf, size_t len, size_t *used)
{
    size_t need = link->rx_body_len;
    if (link->rx_body_have == 0 && len >= need) {
        *used = need;
        return rx_complete(link, buf, need, NULL);
    }
    if (link->rx_body == NULL) {
        if (need <= sizeof link->rx_small) {
            link->rx_body = link->rx_small;
        } else {
            link->rx_body = link->rx_heap = malloc(need);
            if (link->rx_body == NULL)
                return NS_ENOMEM;
        }
    }
    size_t n = need - link->rx_body_have < len ? need - link->rx_body_have : len;
    memcpy(link->rx_body + link->rx_body_have, buf, n);
    link->rx_body_have += n;
    *used = n;
    if (link->rx_body_have < need)
        return NS_OK;
    return rx_complete(link, link->rx_body, need, link->rx_body);
}

/* Consumes at least one byte of buf. */
static int rx_step(ns_link *link, const uint8_t *buf, size_t len, size_t *used)
{
    size_t prefix_len = link_in_handshake(link) ? LINK_HS_PREFIX : LINK_RECORD_PREFIX;
    if (link->rx_prefix_have < prefix_len) {
        size_t n =
            prefix_len - link->rx_prefix_have < len ? prefix_len - link->rx_prefix_have : len;
        memcpy(link->rx_prefix + link->rx_prefix_have, buf, n);
        link->rx_prefix_have += n;
        *used = n;
        return link->rx_prefix_have == prefix_len ? rx_length(link) : NS_OK;
    }
    return rx_body_step(link, buf, len, used);
}

static bool link_receiving(const ns_link *link)
{
    return link_in_handshake(link) || link->state == LINK_ESTABLISHED;
}

/* ---- the timer ---------------------------------------------------------------------------- */

static void link_on_timer(ns_link *link, uint64_t now_ms)
{
    if (link_in_handshake(link) && now_ms >= link->handshake_deadline_ms) {
        link_finish(link, NS_ELIMIT);
        return;
    }
    if (link->state == LINK_CLOSING && now_ms >= link->close_deadline_ms) {
        link_finish(link, NS_ELIMIT);
        return;
    }
    if (link->state == LINK_ESTABLISHED) {
        if (now_ms >= link->last_recv_ms + NS_LINK_IDLE_TIMEOUT_MS) {
            link_finish(link, NS_ELIMIT);
            return;
        }
        if (now_ms >= link->last_send_ms + NS_LINK_KEEPALIVE_MS) {
            uint8_t nonce[LINK_PING_BODY];
            ns_env_random(link->env, nonce, sizeof nonce);
            int rc = record_send_control(link, NS_FRAME_PING, nonce, sizeof nonce, false);
            if (rc != NS_OK) {
                link_finish(link, rc);
                return;
            }
        }
    }
    if (link_alive(link)) /* write() may have closed it */
        link_timer_arm(link);
}

static void link_timer_callback(void *arg, uint64_t now_ms)
{
    ns_link *link = arg;
    link->timer_id = 0;
    if (!link_alive(link))
        return;
    link_enter(link);
    link_on_timer(link, now_ms);
    link_leave(link);
}

/* ---- the public interface ----------------------------------------------------------------- */

static bool callbacks_complete(const ns_link_callbacks *cb)
{
    return cb->write != NULL && cb->established != NULL && cb->frame != NULL &&
           cb->writable != NULL && cb->closed != NULL;
}

int ns_link_new(ns_link **out, ns_link_role role, const ns_link_identity *identity,
                const uint8_t *expected_peer, const ns_env *env, const ns_link_callbacks *callbacks)
{
    NS_ASSERT(out != NULL);
    NS_ASSERT(identity != NULL);
    NS_ASSERT(identity->key != NULL);
    NS_ASSERT(identity->node_record != NULL);
    NS_ASSERT(env != NULL);
    NS_ASSERT(callbacks != NULL);
    NS_ASSERT(callbacks_complete(callbacks));
    NS_ASSERT(role == NS_LINK_INITIATOR || role == NS_LINK_RESPONDER);
    if (identity->node_record_len == 0)
        return NS_EINVAL;
    if (identity->node_record_len > LINK_OWN_RECORD_BYTES_MAX)
        return NS_ETOOBIG;
    NS_ASSERT(sodium_init() >= 0);
    ns_link *link = calloc(1, sizeof *link);
    if (link == NULL)
        return NS_ENOMEM;
    link->role = role;
    link->identity = identity;
    link->env = env;
    link->cb = *callbacks;
    link->has_expected_peer = expected_peer != NULL;
    if (expected_peer != NULL)
        memcpy(link->expected_peer, expected_peer, NS_ID_BYTES);
    uint64_t now_ms = ns_env_now(env);
    link->handshake_deadline_ms = now_ms + NS_LINK_HANDSHAKE_TIMEOUT_MS;
    link->last_send_ms = now_ms;
    link->last_recv_ms = now_ms;
    link->state = role == NS_LINK_INITIATOR ? LINK_WAIT_REPLY : LINK_WAIT_HELLO;
    *out = link;
    link_enter(link);
    link_timer_arm(link);
    if (role == NS_LINK_INITIATOR) {
        int rc = hello_send(link);
        if (rc != NS_OK && link_alive(link))
            link_finish(link, rc);
    }
    link_leave(link);
    return NS_OK;
}

void ns_link_free(ns_link *link)
{
    if (link == NULL)
        return;
    NS_ASSERT(!link->free_pending);
    link_timer_stop(link);
    link->state = LINK_CLOSED;
    link_wipe_secrets(link);
    if (link->depth > 0) {
        link->free_pending = true;
        return;
    }
    link_destroy(link);
}

int ns_link_on_bytes(ns_link *link, const uint8_t *buf, size_t len)
{
    NS_ASSERT(link != NULL);
    NS_ASSERT(buf != NULL || len == 0);
    NS_ASSERT(!link->free_pending);
    NS_ASSERT(!link->in_rx); /* not from inside this link's callbacks */
    if (link->state == LINK_CLOSED)
        return NS_EINVAL;
    link_enter(link);
    link->in_rx = true;
    if (len > 0) {
        link->stats.bytes_received += len;
        link->last_recv_ms = ns_env_now(link->env);
    }
    while (len > 0 && link_receiving(link)) {
        size_t used = 0;
        int rc = rx_step(link, buf, len, &used);
        if (rc != NS_OK) {
            if (link_alive(link))
                link_finish(link, rc);
            break;
        }
        NS_ASSERT(used > 0 && used <= len);
        buf += used;
        len -= used;
    }
    link->in_rx = false;
    int result = link->state == LINK_CLOSED ? link->close_reason : NS_OK;
    link_leave(link);
    return result;
}

void ns_link_on_written(ns_link *link, size_t len)
{
    NS_ASSERT(link != NULL);
    NS_ASSERT(!link->free_pending);
    NS_ASSERT(len <= link->outbound_bytes);
    link->outbound_bytes -= len;
    if (!link_alive(link))
        return;
    link_enter(link);
    if (link->state == LINK_CLOSING && link->outbound_bytes == 0) {
        link_finish(link, NS_OK);
    } else if (link->writable_wanted && link->state == LINK_ESTABLISHED &&
               link->outbound_bytes < NS_LINK_OUTBOUND_BYTES_MAX / 2) {
        link->writable_wanted = false;
        link->cb.writable(link->cb.arg);
    }
    link_leave(link);
}

void ns_link_on_transport_closed(ns_link *link, int reason)
{
    NS_ASSERT(link != NULL);
    NS_ASSERT(!link->free_pending);
    if (!link_alive(link))
        return;
    link_enter(link);
    link_finish(link, reason);
    link_leave(link);
}

int ns_link_send(ns_link *link, const ns_frame *f)
{
    NS_ASSERT(link != NULL);
    NS_ASSERT(f != NULL);
    NS_ASSERT(!link->free_pending);
    if (link->state != LINK_ESTABLISHED || f->type == NS_FRAME_PING || f->type == NS_FRAME_PONG ||
        f->type == NS_FRAME_CLOSE)
        return NS_EINVAL;
    link_enter(link);
    int rc = record_send(link, f, true);
    if (rc == NS_ELIMIT)
        link->writable_wanted = true;
    link_leave(link);
    return rc;
}

void ns_link_close(ns_link *link)
{
    NS_ASSERT(link != NULL);
    NS_ASSERT(!link->free_pending);
    if (link->state == LINK_CLOSED || link->state == LINK_CLOSING)
        return;
    link_enter(link);
    if (link->state != LINK_ESTABLISHED) {
        link_finish(link, NS_OK);
    } else {
        link->state = LINK_CLOSING;
        link->close_deadline_ms = ns_env_now(link->env) + NS_LINK_CLOSE_TIMEOUT_MS;
        link_timer_arm(link);
        int rc = record_send_control(link, NS_FRAME_CLOSE, NULL, 0, false);
        if (rc != NS_OK && link_alive(link))
            link_finish(link, rc);
    }
    link_leave(link);
}

bool ns_link_established(const ns_link *link)
{
    NS_ASSERT(link != NULL);
    return link->state == LINK_ESTABLISHED;
}

const uint8_t *ns_link_peer_id(const ns_link *link)
{
    NS_ASSERT(link != NULL);
    return link->has_peer_id ? link->peer_id : NULL;
}

size_t ns_link_outbound_bytes(const ns_link *link)
{
    NS_ASSERT(link != NULL);
    return link->outbound_bytes;
}

void ns_link_get_stats(const ns_link *link, ns_link_stats *out)
{
    NS_ASSERT(link != NULL);
    NS_ASSERT(out != NULL);
    *out = link->stats;
}
