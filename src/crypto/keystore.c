/*
 * keystore.c: the key file, the node's secret key at rest (SPEC S1: mode 0600, never overwritten).
 *
 * Layout, all integers little-endian:
 *   header  magic "NSKEY\0\r\n" (8) | version 1 (1) | flags (1) | reserved 0 (2) | node_id (32)
 *   plain   (flags 0)  header | secret key (32)                                        = 76 bytes
 *   sealed  (flags 1)  header | salt (16) | opslimit (8) | memlimit (8) | nonce (24)
 *                      | XChaCha20-Poly1305(secret key) (32 + 16)                     = 148 bytes
 * A sealed file's key is Argon2id(passphrase, salt, opslimit, memlimit), and everything before the
 * ciphertext is its associated data, so no header or parameter byte can change undetected. The
 * node id is in the clear for `peek`, and a loaded key must re-derive it. Secrets (the key, the
 * derived key, the file image) are wiped before any return.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "neuroshard/crypto.h"

#define KEYFILE_VERSION      1
#define KEYFILE_FLAG_SEALED  0x01u
#define KEYFILE_MAGIC_BYTES  8
#define KEYFILE_HEADER_BYTES (KEYFILE_MAGIC_BYTES + 4 + NS_NODE_ID_BYTES)
#define KEYFILE_PLAIN_BYTES  (KEYFILE_HEADER_BYTES + NS_SECKEY_BYTES)
#define KEYFILE_SALT_BYTES   crypto_pwhash_SALTBYTES
#define KEYFILE_NONCE_BYTES  crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define KEYFILE_AD_BYTES     (KEYFILE_HEADER_BYTES + KEYFILE_SALT_BYTES + 16 + KEYFILE_NONCE_BYTES)
#define KEYFILE_TAG_BYTES    crypto_aead_xchacha20poly1305_ietf_ABYTES
#define KEYFILE_SEALED_BYTES (KEYFILE_AD_BYTES + NS_SECKEY_BYTES + KEYFILE_TAG_BYTES)
#define KEYFILE_BYTES_MAX    KEYFILE_SEALED_BYTES

static const uint8_t keyfile_magic[KEYFILE_MAGIC_BYTES] = {'N', 'S', 'K', 'E', 'Y', 0, '\r', '\n'};

static_assert(KEYFILE_PLAIN_BYTES == 76, "the plain layout is part of the file format");
static_assert(KEYFILE_SEALED_BYTES == 148, "the sealed layout is part of the file format");
static_assert(KEYFILE_SALT_BYTES == 16, "Argon2id salt");

/* The parsed clear part of a key file. */
typedef struct keyfile {
    uint8_t image[KEYFILE_BYTES_MAX];
    size_t len;
    bool sealed;
    uint8_t node_id[NS_NODE_ID_BYTES];
    uint64_t opslimit;
    uint64_t memlimit;
} keyfile;

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int passphrase_len(const char *passphrase, size_t *len)
{
    *len = passphrase == NULL ? 0 : strnlen(passphrase, NS_KEYSTORE_PASSPHRASE_BYTES_MAX + 1);
    return *len > NS_KEYSTORE_PASSPHRASE_BYTES_MAX ? NS_ETOOBIG : NS_OK;
}

/* Argon2id(passphrase, salt) with the given cost; NS_ENOMEM when the memory is not there. */
static int derive_key(uint8_t out[crypto_aead_xchacha20poly1305_ietf_KEYBYTES],
                      const char *passphrase, size_t passphrase_len, const uint8_t *salt,
                      uint64_t opslimit, uint64_t memlimit)
{
    int rc =
        crypto_pwhash(out, crypto_aead_xchacha20poly1305_ietf_KEYBYTES, passphrase, passphrase_len,
                      salt, opslimit, (size_t)memlimit, crypto_pwhash_ALG_ARGON2ID13);
    return rc == 0 ? NS_OK : NS_ENOMEM;
}

static void header_write(uint8_t *p, const ns_key *key, bool sealed)
{
    memcpy(p, keyfile_magic, KEYFILE_MAGIC_BYTES);
    p[8] = KEYFILE_VERSION;
    p[9] = sealed ? KEYFILE_FLAG_SEALED : 0;
    p[10] = 0;
    p[11] = 0;
    memcpy(p + 12, key->node_id, NS_NODE_ID_BYTES);
}

static int seal(uint8_t image[KEYFILE_SEALED_BYTES], const ns_key *key, const char *passphrase,
                size_t passphrase_len)
{
    uint8_t *salt = image + KEYFILE_HEADER_BYTES;
    uint8_t *params = salt + KEYFILE_SALT_BYTES;
    uint8_t *nonce = params + 16;
    uint8_t *cipher = image + KEYFILE_AD_BYTES;
    header_write(image, key, true);
    randombytes_buf(salt, KEYFILE_SALT_BYTES);
    put_u64(params, crypto_pwhash_OPSLIMIT_INTERACTIVE);
    put_u64(params + 8, crypto_pwhash_MEMLIMIT_INTERACTIVE);
    randombytes_buf(nonce, KEYFILE_NONCE_BYTES);
    uint8_t dk[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
    int rc = derive_key(dk, passphrase, passphrase_len, salt, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                        crypto_pwhash_MEMLIMIT_INTERACTIVE);
    if (rc == NS_OK) {
        unsigned long long cipher_len = 0;
        crypto_aead_xchacha20poly1305_ietf_encrypt(cipher, &cipher_len, key->seckey,
                                                   NS_SECKEY_BYTES, image, KEYFILE_AD_BYTES, NULL,
                                                   nonce, dk);
        NS_ASSERT(cipher_len == NS_SECKEY_BYTES + KEYFILE_TAG_BYTES);
    }
    sodium_memzero(dk, sizeof dk);
    return rc;
}

int ns_keystore_create(const char *path, const ns_key *key, const char *passphrase)
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(key != NULL);
    size_t pass_len;
    int rc = passphrase_len(passphrase, &pass_len);
    if (rc != NS_OK)
        return rc;
    NS_ASSERT(sodium_init() >= 0);
    struct stat st;
    if (lstat(path, &st) == 0)
        return NS_EEXIST;
    if (errno != ENOENT)
        return errno == EACCES ? NS_EPERM : NS_EIO;
    uint8_t image[KEYFILE_BYTES_MAX];
    size_t len = KEYFILE_PLAIN_BYTES;
    if (pass_len == 0) {
        header_write(image, key, false);
        memcpy(image + KEYFILE_HEADER_BYTES, key->seckey, NS_SECKEY_BYTES);
    } else {
        len = KEYFILE_SEALED_BYTES;
        rc = seal(image, key, passphrase, pass_len);
    }
    /* The early check spares the Argon2 work; this write is what guarantees no overwrite. */
    if (rc == NS_OK)
        rc = ns_file_create_atomic(path, image, len, 0600);
    sodium_memzero(image, sizeof image);
    return rc;
}

/* Reads the whole file into kf->image; with check_mode, refuses a file others may read. */
static int keyfile_read(const char *path, bool check_mode, keyfile *kf)
{
    /* O_NONBLOCK: a FIFO put in the key file's place must not hang the load (refused below). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT ? NS_ENOENT : (errno == EACCES ? NS_EPERM : NS_EIO);
    struct stat st;
    int rc = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? NS_OK : NS_EIO;
    if (rc == NS_OK && check_mode && (st.st_mode & 077) != 0)
        rc = NS_EPERM;
    if (rc == NS_OK && (st.st_size != KEYFILE_PLAIN_BYTES && st.st_size != KEYFILE_SEALED_BYTES))
        rc = NS_ECORRUPT;
    kf->len = 0;
    while (rc == NS_OK && kf->len < (size_t)st.st_size) {
        ssize_t r = read(fd, kf->image + kf->len, (size_t)st.st_size - kf->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            rc = NS_EIO;
        else
            kf->len += (size_t)r;
    }
    close(fd);
    return rc;
}

/* Checks and decodes the clear part of kf->image. */
static int keyfile_parse(keyfile *kf)
{
    const uint8_t *p = kf->image;
    if (kf->len < KEYFILE_HEADER_BYTES || memcmp(p, keyfile_magic, KEYFILE_MAGIC_BYTES) != 0)
        return NS_ECORRUPT;
    if (p[8] != KEYFILE_VERSION || (p[9] & ~KEYFILE_FLAG_SEALED) != 0 || p[10] != 0 || p[11] != 0)
        return NS_EFOREIGN; /* a newer version wrote it */
    kf->sealed = (p[9] & KEYFILE_FLAG_SEALED) != 0;
    if (kf->len != (kf->sealed ? KEYFILE_SEALED_BYTES : KEYFILE_PLAIN_BYTES))
        return NS_ECORRUPT;
    memcpy(kf->node_id, p + 12, NS_NODE_ID_BYTES);
    if (!kf->sealed)
        return NS_OK;
    const uint8_t *params = p + KEYFILE_HEADER_BYTES + KEYFILE_SALT_BYTES;
    kf->opslimit = get_u64(params);
    kf->memlimit = get_u64(params + 8);
    /* Bounded, so that an edited file cannot make a load take minutes or gigabytes. */
    if (kf->opslimit < crypto_pwhash_OPSLIMIT_MIN ||
        kf->opslimit > crypto_pwhash_OPSLIMIT_SENSITIVE ||
        kf->memlimit < crypto_pwhash_MEMLIMIT_MIN ||
        kf->memlimit > crypto_pwhash_MEMLIMIT_SENSITIVE)
        return NS_ECORRUPT;
    return NS_OK;
}

static int unseal(const keyfile *kf, const char *passphrase, size_t passphrase_len,
                  uint8_t seckey[NS_SECKEY_BYTES])
{
    const uint8_t *salt = kf->image + KEYFILE_HEADER_BYTES;
    const uint8_t *nonce = salt + KEYFILE_SALT_BYTES + 16;
    const uint8_t *cipher = kf->image + KEYFILE_AD_BYTES;
    uint8_t dk[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
    int rc = derive_key(dk, passphrase, passphrase_len, salt, kf->opslimit, kf->memlimit);
    unsigned long long plain_len = 0;
    if (rc == NS_OK && crypto_aead_xchacha20poly1305_ietf_decrypt(
                           seckey, &plain_len, NULL, cipher, NS_SECKEY_BYTES + KEYFILE_TAG_BYTES,
                           kf->image, KEYFILE_AD_BYTES, nonce, dk) != 0)
        rc = NS_EPASSPHRASE;
    NS_ASSERT(rc != NS_OK || plain_len == NS_SECKEY_BYTES);
    sodium_memzero(dk, sizeof dk);
    return rc;
}

static int keyfile_load(const keyfile *kf, const char *passphrase, ns_key *key)
{
    size_t pass_len;
    int rc = passphrase_len(passphrase, &pass_len);
    if (rc != NS_OK)
        return rc;
    if (kf->sealed && pass_len == 0)
        return NS_EPASSPHRASE;
    uint8_t seckey[NS_SECKEY_BYTES];
    if (kf->sealed)
        rc = unseal(kf, passphrase, pass_len, seckey);
    else
        memcpy(seckey, kf->image + KEYFILE_HEADER_BYTES, NS_SECKEY_BYTES);
    ns_key loaded;
    if (rc == NS_OK)
        rc = ns_key_from_seckey(&loaded, seckey) == NS_OK ? NS_OK : NS_ECORRUPT;
    if (rc == NS_OK && memcmp(loaded.node_id, kf->node_id, NS_NODE_ID_BYTES) != 0)
        rc = NS_ECORRUPT; /* the secret is not the one the header names */
    if (rc == NS_OK)
        *key = loaded;
    sodium_memzero(seckey, sizeof seckey);
    sodium_memzero(&loaded, sizeof loaded);
    return rc;
}

int ns_keystore_load(const char *path, const char *passphrase, ns_key *key)
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(key != NULL);
    NS_ASSERT(sodium_init() >= 0);
    keyfile kf;
    int rc = keyfile_read(path, true, &kf);
    if (rc == NS_OK)
        rc = keyfile_parse(&kf);
    if (rc == NS_OK)
        rc = keyfile_load(&kf, passphrase, key);
    sodium_memzero(&kf, sizeof kf);
    return rc;
}

int ns_keystore_peek(const char *path, bool *encrypted, uint8_t node_id[NS_NODE_ID_BYTES])
{
    NS_ASSERT(path != NULL);
    NS_ASSERT(encrypted != NULL);
    NS_ASSERT(node_id != NULL);
    keyfile kf;
    int rc = keyfile_read(path, false, &kf);
    if (rc == NS_OK)
        rc = keyfile_parse(&kf);
    if (rc == NS_OK) {
        *encrypted = kf.sealed;
        memcpy(node_id, kf.node_id, NS_NODE_ID_BYTES);
    }
    sodium_memzero(&kf, sizeof kf);
    return rc;
}
