/*
 * bip39.c: BIP39 mnemonics over the English list, and the mnemonic-to-seed function.
 *
 * A mnemonic encodes entropy (16 to 32 bytes) plus a checksum of entropy_bits/32 bits taken from
 * SHA-256(entropy), 11 bits a word. The seed is PBKDF2-HMAC-SHA512 over the NFKD forms of the
 * mnemonic and of "mnemonic" + passphrase, 2048 rounds, 64 bytes: one PBKDF2 block, written here
 * over libsodium's HMAC-SHA512 with the keyed HMAC state computed once and copied each round.
 * NFKD comes from ICU. Nothing secret stays on the stack: every buffer that held a mnemonic,
 * passphrase or HMAC state is wiped before return.
 */
#include <assert.h>
#include <string.h>

#include <sodium.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include "neuroshard/crypto.h"

#define WORD_BITS         11
#define WORD_LETTERS_MAX  8
#define WORDS_MIN         12
#define WORDS_MAX         24
#define ENTROPY_BYTES_MAX 32
#define PBKDF2_ROUNDS     2048
#define SALT_PREFIX       "mnemonic"
#define TEXT_UNITS_MAX    1024 /* UTF-16 units of an NFKD mnemonic or passphrase */

static_assert(NS_BIP39_WORDS == 1 << WORD_BITS, "one word per 11 bits");
static_assert(WORDS_MAX * WORD_BITS == ENTROPY_BYTES_MAX * 8 + ENTROPY_BYTES_MAX / 4,
              "24 words carry 256 bits of entropy and an 8-bit checksum");
static_assert(WORDS_MAX * (WORD_LETTERS_MAX + 1) <= NS_MNEMONIC_SIZE_MAX,
              "the longest mnemonic fits NS_MNEMONIC_SIZE_MAX");
static_assert(NS_BIP39_PASSPHRASE_BYTES_MAX < TEXT_UNITS_MAX, "a passphrase fits the buffers");

static bool word_count_valid(size_t words)
{
    return words >= WORDS_MIN && words <= WORDS_MAX && words % 3 == 0;
}

/* Bit i (0 = most significant of bytes[0]) of a big-endian bit string. */
static unsigned bit_get(const uint8_t *bytes, size_t i)
{
    return (bytes[i / 8] >> (7 - i % 8)) & 1u;
}

static void bit_set(uint8_t *bytes, size_t i)
{
    bytes[i / 8] |= (uint8_t)(0x80u >> (i % 8));
}

int ns_bip39_from_entropy(const uint8_t *entropy, size_t len, char *out, size_t out_size)
{
    NS_ASSERT(entropy != NULL);
    NS_ASSERT(out != NULL);
    if (len < 16 || len > ENTROPY_BYTES_MAX || len % 4 != 0)
        return NS_EINVAL;
    /* entropy || checksum; the checksum is the first len/4 bits of SHA-256(entropy). */
    uint8_t bits[ENTROPY_BYTES_MAX + 1];
    memcpy(bits, entropy, len);
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, entropy, len);
    bits[len] = digest[0];
    size_t words = (len * 8 + len / 4) / WORD_BITS;
    NS_ASSERT(word_count_valid(words));
    size_t used = 0;
    int rc = NS_OK;
    for (size_t w = 0; w < words && rc == NS_OK; w++) {
        unsigned index = 0;
        for (size_t b = 0; b < WORD_BITS; b++)
            index = (index << 1) | bit_get(bits, w * WORD_BITS + b);
        NS_ASSERT(index < NS_BIP39_WORDS);
        const char *word = ns_bip39_english[index];
        size_t word_len = strlen(word);
        size_t need = word_len + (w > 0 ? 1 : 0) + 1; /* separator, word, NUL */
        if (used + need > out_size) {
            rc = NS_EINVAL;
            break;
        }
        if (w > 0)
            out[used++] = ' ';
        memcpy(out + used, word, word_len);
        used += word_len;
        out[used] = '\0';
    }
    sodium_memzero(bits, sizeof bits);
    sodium_memzero(digest, sizeof digest);
    if (rc != NS_OK && out_size > 0)
        sodium_memzero(out, out_size);
    return rc;
}

int ns_bip39_generate(unsigned words, char *out, size_t out_size)
{
    NS_ASSERT(out != NULL);
    if (!word_count_valid(words))
        return NS_EINVAL;
    NS_ASSERT(sodium_init() >= 0);
    size_t len = words * WORD_BITS * 32 / 33 / 8; /* 12 words: 16 bytes, 24 words: 32 bytes */
    uint8_t entropy[ENTROPY_BYTES_MAX];
    NS_ASSERT(len <= sizeof entropy);
    randombytes_buf(entropy, len);
    int rc = ns_bip39_from_entropy(entropy, len, out, out_size);
    sodium_memzero(entropy, sizeof entropy);
    return rc;
}

/* The word's index in the sorted English list, or -1. */
static int word_index(const char *word, size_t len)
{
    if (len == 0 || len > WORD_LETTERS_MAX)
        return -1;
    char key[WORD_LETTERS_MAX + 1];
    memcpy(key, word, len);
    key[len] = '\0';
    int lo = 0;
    int hi = NS_BIP39_WORDS - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int cmp = strcmp(key, ns_bip39_english[mid]);
        if (cmp == 0)
            return mid;
        if (cmp < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return -1;
}

/* Words are separated by exactly one ASCII space; an empty word (a leading, trailing or doubled
 * space) counts as a word and is not in the list. */
static size_t word_count(const char *mnemonic)
{
    size_t words = 1;
    for (const char *p = mnemonic; *p != '\0'; p++)
        words += *p == ' ';
    return words;
}

int ns_bip39_check(const char *mnemonic, int *bad_word_index)
{
    NS_ASSERT(mnemonic != NULL);
    if (strnlen(mnemonic, NS_MNEMONIC_SIZE_MAX) == NS_MNEMONIC_SIZE_MAX)
        return NS_ETOOBIG;
    size_t words = word_count(mnemonic);
    if (!word_count_valid(words))
        return NS_EINVAL;
    uint8_t bits[ENTROPY_BYTES_MAX + 1] = {0};
    const char *p = mnemonic;
    for (size_t w = 0; w < words; w++) {
        size_t len = strcspn(p, " ");
        int index = word_index(p, len);
        if (index < 0) {
            if (bad_word_index != NULL)
                *bad_word_index = (int)w;
            sodium_memzero(bits, sizeof bits);
            return NS_EWORD;
        }
        for (size_t b = 0; b < WORD_BITS; b++) {
            if ((index >> (WORD_BITS - 1 - b)) & 1)
                bit_set(bits, w * WORD_BITS + b);
        }
        p += len + (p[len] == ' ' ? 1 : 0);
    }
    size_t checksum_bits = words * WORD_BITS / 33;
    size_t len = checksum_bits * 4;
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, bits, len);
    unsigned mask = (0xffu << (8 - checksum_bits)) & 0xffu;
    int rc = (digest[0] & mask) == (bits[len] & mask) ? NS_OK : NS_ECHECKSUM;
    sodium_memzero(bits, sizeof bits);
    sodium_memzero(digest, sizeof digest);
    return rc;
}

/* NFKD of a NUL-terminated UTF-8 string into out (UTF-8, not NUL-terminated). */
static int nfkd_utf8(const char *in, uint8_t *out, size_t out_size, size_t *out_len)
{
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2 *nfkd = unorm2_getNFKDInstance(&err);
    if (U_FAILURE(err))
        return NS_ECRYPTO;
    UChar wide[TEXT_UNITS_MAX];
    UChar norm[TEXT_UNITS_MAX];
    int32_t wide_len = 0;
    int32_t norm_len = 0;
    int32_t utf8_len = 0;
    u_strFromUTF8(wide, TEXT_UNITS_MAX, &wide_len, in, -1, &err);
    if (U_SUCCESS(err))
        norm_len = unorm2_normalize(nfkd, wide, wide_len, norm, TEXT_UNITS_MAX, &err);
    if (U_SUCCESS(err))
        u_strToUTF8((char *)out, (int32_t)out_size, &utf8_len, norm, norm_len, &err);
    sodium_memzero(wide, sizeof wide);
    sodium_memzero(norm, sizeof norm);
    if (err == U_BUFFER_OVERFLOW_ERROR || err == U_STRING_NOT_TERMINATED_WARNING)
        return NS_ETOOBIG;
    if (U_FAILURE(err))
        return NS_EINVAL; /* not valid UTF-8 */
    NS_ASSERT(utf8_len >= 0 && (size_t)utf8_len <= out_size);
    *out_len = (size_t)utf8_len;
    return NS_OK;
}

/* PBKDF2-HMAC-SHA512 (RFC 8018) for one 64-byte block: the only length BIP39 asks for. */
static void pbkdf2_sha512_block(uint8_t out[crypto_auth_hmacsha512_BYTES], const uint8_t *pass,
                                size_t pass_len, const uint8_t *salt, size_t salt_len,
                                unsigned rounds)
{
    NS_ASSERT(rounds >= 1);
    crypto_auth_hmacsha512_state keyed;
    crypto_auth_hmacsha512_state st;
    uint8_t u[crypto_auth_hmacsha512_BYTES];
    const uint8_t block_index[4] = {0, 0, 0, 1};
    crypto_auth_hmacsha512_init(&keyed, pass, pass_len);
    st = keyed;
    crypto_auth_hmacsha512_update(&st, salt, salt_len);
    crypto_auth_hmacsha512_update(&st, block_index, sizeof block_index);
    crypto_auth_hmacsha512_final(&st, u);
    memcpy(out, u, sizeof u);
    for (unsigned r = 1; r < rounds; r++) {
        st = keyed;
        crypto_auth_hmacsha512_update(&st, u, sizeof u);
        crypto_auth_hmacsha512_final(&st, u);
        for (size_t i = 0; i < sizeof u; i++)
            out[i] ^= u[i];
    }
    sodium_memzero(&keyed, sizeof keyed);
    sodium_memzero(&st, sizeof st);
    sodium_memzero(u, sizeof u);
}

int ns_bip39_seed(const char *mnemonic, const char *passphrase, uint8_t seed[NS_BIP39_SEED_BYTES])
{
    NS_ASSERT(mnemonic != NULL);
    NS_ASSERT(seed != NULL);
    static_assert(NS_BIP39_SEED_BYTES == crypto_auth_hmacsha512_BYTES, "one PBKDF2 block");
    if (strnlen(mnemonic, NS_MNEMONIC_SIZE_MAX) == NS_MNEMONIC_SIZE_MAX)
        return NS_ETOOBIG;
    if (passphrase == NULL)
        passphrase = "";
    if (strnlen(passphrase, NS_BIP39_PASSPHRASE_BYTES_MAX + 1) > NS_BIP39_PASSPHRASE_BYTES_MAX)
        return NS_ETOOBIG;
    /* NFKD may grow text (one code point can become several), hence the UTF-8 room. */
    uint8_t pass[4 * TEXT_UNITS_MAX];
    uint8_t salt[sizeof SALT_PREFIX - 1 + 4 * TEXT_UNITS_MAX];
    size_t pass_len = 0;
    size_t salt_len = 0;
    memcpy(salt, SALT_PREFIX, sizeof SALT_PREFIX - 1);
    int rc = nfkd_utf8(mnemonic, pass, sizeof pass, &pass_len);
    if (rc == NS_OK)
        rc = nfkd_utf8(passphrase, salt + sizeof SALT_PREFIX - 1,
                       sizeof salt - (sizeof SALT_PREFIX - 1), &salt_len);
    if (rc == NS_OK)
        pbkdf2_sha512_block(seed, pass, pass_len, salt, sizeof SALT_PREFIX - 1 + salt_len,
                            PBKDF2_ROUNDS);
    sodium_memzero(pass, sizeof pass);
    sodium_memzero(salt, sizeof salt);
    return rc;
}
