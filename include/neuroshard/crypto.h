/*
 * crypto.h: identity and signatures (SPEC S1).
 *
 * BIP39 mnemonics (English list generated at build time from Debian's python3-mnemonic), the
 * wallet derivation seed -> token -> secp256k1 key -> node_id, RFC 6979 low-S ECDSA, signed
 * records (the self-certifying unit everything published is made of), and the keystore that keeps
 * the key at rest in the data directory.
 */
#ifndef NEUROSHARD_CRYPTO_H
#define NEUROSHARD_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"

#define NS_SHA256_BYTES     32
#define NS_NODE_ID_BYTES    32
#define NS_PUBKEY_BYTES     33 /* compressed secp256k1 */
#define NS_SECKEY_BYTES     32
#define NS_SIG_BYTES        64 /* compact r || s, low-S */
#define NS_BIP39_SEED_BYTES 64
#define NS_NODE_ID_HEX_SIZE (2 * NS_NODE_ID_BYTES + 1)

void ns_sha256(uint8_t out[NS_SHA256_BYTES], const void *buf, size_t len);

/* ---- BIP39 -------------------------------------------------------------------------------- */

#define NS_BIP39_WORDS                2048
#define NS_MNEMONIC_SIZE_MAX          256 /* 24 words of at most 8 letters, spaces, NUL */
#define NS_BIP39_PASSPHRASE_BYTES_MAX 512 /* UTF-8 bytes of a BIP39 passphrase */

/* The English word list, generated at build time; index 0..2047. */
extern const char *const ns_bip39_english[NS_BIP39_WORDS];

/* A new mnemonic of 12 or 24 words (also 15, 18 or 21) from the system's secure randomness.
 * NS_EINVAL for another word count or an out buffer too small (NS_MNEMONIC_SIZE_MAX suffices). */
NS_MUST_USE int ns_bip39_generate(unsigned words, char *out, size_t out_size);
/* Mnemonic from entropy (16, 20, 24, 28 or 32 bytes: 12 to 24 words); used by generate and by the
 * test vectors. Words are separated by one space. NS_EINVAL for another length or a small out. */
NS_MUST_USE int ns_bip39_from_entropy(const uint8_t *entropy, size_t len, char *out,
                                      size_t out_size);
/* Checks a mnemonic: word count (12, 15, 18, 21 or 24), every word in the list, checksum.
 * Words are lowercase and separated by exactly one space (an empty word, from a doubled, leading
 * or trailing space, is an unknown word), because the seed is computed over the exact text.
 * NS_EWORD sets *bad_word_index (0-based) to the first unknown word; NS_ECHECKSUM when the words
 * are valid but the checksum is not; NS_EINVAL for a wrong word count; NS_ETOOBIG for a string
 * of NS_MNEMONIC_SIZE_MAX bytes or more. bad_word_index may be NULL.
 */
NS_MUST_USE int ns_bip39_check(const char *mnemonic, int *bad_word_index);
/* seed = PBKDF2-HMAC-SHA512(NFKD(mnemonic), "mnemonic" + NFKD(passphrase), 2048 rounds, 64 B).
 * passphrase may be NULL (empty). Does not check the mnemonic; callers check first. NS_ETOOBIG
 * for a mnemonic of NS_MNEMONIC_SIZE_MAX bytes or more, a passphrase over
 * NS_BIP39_PASSPHRASE_BYTES_MAX, or text that NFKD grows past 1023 UTF-16 units; NS_EINVAL for
 * text that is not UTF-8. */
NS_MUST_USE int ns_bip39_seed(const char *mnemonic, const char *passphrase,
                              uint8_t seed[NS_BIP39_SEED_BYTES]);

/* ---- keys --------------------------------------------------------------------------------- */

typedef struct ns_key {
    uint8_t seckey[NS_SECKEY_BYTES];
    uint8_t pubkey[NS_PUBKEY_BYTES];
    uint8_t node_id[NS_NODE_ID_BYTES]; /* SHA256(pubkey) */
} ns_key;

/* S1: token = seed[:32]; private key = SHA256(token); pubkey compressed; node_id = SHA256(pub). */
NS_MUST_USE int ns_key_from_seed(ns_key *key, const uint8_t seed[NS_BIP39_SEED_BYTES]);
/* A key from a 32-byte secret key (what the keystore stores). NS_ECRYPTO if not a valid key. */
NS_MUST_USE int ns_key_from_seckey(ns_key *key, const uint8_t seckey[NS_SECKEY_BYTES]);
/* Overwrites the secret with zeros (pubkey and node_id stay). */
void ns_key_wipe(ns_key *key);

/* RFC 6979 deterministic ECDSA over a 32-byte digest; the signature is low-S, compact.
 * Safe to call from several threads at once (one shared, read-only secp256k1 context). */
NS_MUST_USE int ns_sign_digest(const ns_key *key, const uint8_t digest[NS_SHA256_BYTES],
                               uint8_t sig[NS_SIG_BYTES]);
/* NS_OK or NS_EBADSIG (high-S signatures, and r or s not below the group order, are refused).
 * NS_ECRYPTO for an unparsable pubkey. */
NS_MUST_USE int ns_verify_digest(const uint8_t pubkey[NS_PUBKEY_BYTES],
                                 const uint8_t digest[NS_SHA256_BYTES],
                                 const uint8_t sig[NS_SIG_BYTES]);
void ns_node_id_from_pubkey(uint8_t node_id[NS_NODE_ID_BYTES],
                            const uint8_t pubkey[NS_PUBKEY_BYTES]);

/* ---- signed records ----------------------------------------------------------------------- */

/* A signed record on the wire is a SignedEnvelope (proto/record.proto) holding the exact
 * serialized Record bytes, the author's public key and the signature over
 *     SHA256(NS_RECORD_DOMAIN || record_bytes)
 * Verification works on those exact bytes and never re-encodes the record. */
#define NS_RECORD_DOMAIN          "neuroshard/record/v1"
#define NS_RECORD_BYTES_MAX       (64 * 1024) /* an envelope larger than this is refused */
#define NS_RECORD_BODY_BYTES_MAX  (60 * 1024)
#define NS_RECORD_TOPIC_BYTES_MAX 64
#define NS_RECORD_SKEW_MS_MAX     (60 * 1000) /* how far in the future a timestamp may be */

typedef enum {
    NS_RECORD_NODE = 1,
    NS_RECORD_LAYER_HOLDER = 2,
    NS_RECORD_QUORUM = 3,
    NS_RECORD_CHECKPOINT = 4,
    NS_RECORD_INFERENCE_ENDPOINT = 5,
    NS_RECORD_PROOF = 6,
    NS_RECORD_LEDGER_ENTRY = 7,
    NS_RECORD_DATASET_MANIFEST = 8, /* a dataset's shard hashes, signed by its key (data.h) */
} ns_record_type;

typedef struct ns_record {
    uint32_t type;
    uint8_t author[NS_NODE_ID_BYTES];
    uint64_t sequence;
    uint64_t timestamp_ms;
    uint64_t expiry_ms;                       /* absolute, ms since the Unix epoch; 0 = never */
    uint8_t topic[NS_RECORD_TOPIC_BYTES_MAX]; /* what it is about; empty for a node record */
    size_t topic_len;
    const uint8_t *body; /* on verify: points into the caller's buffer */
    size_t body_len;
} ns_record;

/* The DHT key a record is stored under: its author's node id when the topic is empty (a node's
 * own record), else SHA256("neuroshard/topic/v1" || type as 4 bytes big-endian || topic), so all
 * holders of one layer, say, meet under one key. */
void ns_record_key(const ns_record *record, uint8_t key[NS_SHA256_BYTES]);

/* Encodes and signs a record as the author `key` (record->author is ignored and set from key).
 * On success *out is a malloc'd envelope the caller frees. */
NS_MUST_USE int ns_record_sign(const ns_key *key, const ns_record *record, uint8_t **out,
                               size_t *out_len);
/* Whether message (a ProtobufCMessage *, top level free of unknown fields) packs to exactly the
 * want_len bytes at want: the canonical-encoding test every decoder of signed or hashed bytes
 * runs, without a second buffer. Nested messages' unknown fields are the caller's to check. */
bool ns_pb_packs_to(const void *message, const uint8_t *want, size_t want_len);

/* Verifies an envelope at time now_ms. Distinct errors, checked in this order: NS_ETOOBIG (input
 * over the limit), NS_EPARSE (not a canonical envelope or record: unknown fields, fields out of
 * order, zero values written out, wrong field lengths, a body over NS_RECORD_BODY_BYTES_MAX, or a
 * pubkey that is not a curve point), NS_EAUTHOR (the key is not the author's), NS_EBADSIG,
 * NS_EEXPIRED (expiry_ms != 0 and now_ms >= expiry_ms), NS_EFUTURE (timestamp_ms more than
 * NS_RECORD_SKEW_MS_MAX after now_ms). On success fills *record, body pointing into buf; on
 * failure *record is untouched. Allocates only inside protobuf-c's unpack; thread-safe. */
NS_MUST_USE int ns_record_verify(const uint8_t *buf, size_t len, uint64_t now_ms,
                                 ns_record *record);

/* ---- keystore ----------------------------------------------------------------------------- */

/* The key file (data_dir/key, mode 0600) holds the secret key, in the clear or, when a passphrase
 * is given, sealed with XChaCha20-Poly1305 under an Argon2id key. Its header holds the node id in
 * the clear, so the id can be shown without the passphrase. */
#define NS_KEYSTORE_FILE "key"

#define NS_KEYSTORE_PASSPHRASE_BYTES_MAX 1024 /* longer: NS_ETOOBIG */

/* Writes the key file; NS_EEXIST if one is there (never overwritten). passphrase NULL or "" means
 * unencrypted. The passphrase is used as given (bytes, no normalisation). */
NS_MUST_USE int ns_keystore_create(const char *path, const ns_key *key, const char *passphrase);
/* Loads the key. NS_ENOENT: no file; NS_EPERM: the file is readable or writable by group or
 * others; NS_EPASSPHRASE: wrong or missing passphrase for an encrypted file (also any change to an
 * encrypted file's header, which is authenticated with the secret); NS_ECORRUPT: the file is not a
 * key file (magic, length, a secret that does not give the node id in the header); NS_EFOREIGN: an
 * unknown version or flags. A passphrase given for an unencrypted file is ignored. */
NS_MUST_USE int ns_keystore_load(const char *path, const char *passphrase, ns_key *key);
/* Reads what is in the clear: whether the file is encrypted and the node id. Needs no passphrase
 * and does not check the file's mode (nothing secret is read out). */
NS_MUST_USE int ns_keystore_peek(const char *path, bool *encrypted,
                                 uint8_t node_id[NS_NODE_ID_BYTES]);

/* ---- unlocking (unlock.c) ----------------------------------------------------------------- */

/* Loads the key at path, taking an encrypted file's passphrase from NEUROSHARD_PASSPHRASE or a
 * terminal prompt. On failure writes one line for a person into err (file, what is wrong, what to
 * do) and returns the keystore's error code. */
NS_MUST_USE int ns_keystore_unlock(const char *path, ns_key *key, char err[512]);

#endif
