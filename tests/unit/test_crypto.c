/*
 * test_crypto.c: BIP39, keys and signatures, signed records and the keystore (SPEC S1).
 *
 * Known-answer tests come from published vectors: the BIP39 English vectors with passphrase
 * "TREZOR" (trezor/python-mnemonic vectors.json), secp256k1's generator for private key 1, and the
 * RFC 6979 secp256k1/SHA-256 signatures that Bitcoin libraries share. Everything else checks one
 * refusal at a time. The keystore's Argon2id calls are slow (~0.1-0.5 s), so one encrypted file is
 * made in the group setup and shared, and only three Argon2id runs happen in the whole binary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "neuroshard/crypto.h"
#include "record.pb-c.h"
#include "support/testutil.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static void hex_to(uint8_t *out, size_t len, const char *hex)
{
    assert_int_equal(strlen(hex), 2 * len);
    assert_int_equal(ns_hex_decode(out, len, hex), NS_OK);
}

static void key_from_hex(ns_key *key, const char *hex)
{
    uint8_t seckey[NS_SECKEY_BYTES];
    hex_to(seckey, sizeof seckey, hex);
    assert_int_equal(ns_key_from_seckey(key, seckey), NS_OK);
}

static void key_from_byte(ns_key *key, uint8_t b)
{
    uint8_t seckey[NS_SECKEY_BYTES] = {0};
    seckey[NS_SECKEY_BYTES - 1] = b;
    seckey[0] = 0x42;
    assert_int_equal(ns_key_from_seckey(key, seckey), NS_OK);
}

/* ---- BIP39 -------------------------------------------------------------------------------- */

typedef struct bip39_vector {
    const char *entropy;
    const char *mnemonic;
    const char *seed; /* passphrase "TREZOR" */
} bip39_vector;

/* trezor/python-mnemonic vectors.json, "english" (the fourth field, an xprv, is BIP32's). */
static const bip39_vector bip39_vectors[] = {
    {"00000000000000000000000000000000",
     "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon "
     "about",
     "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2c"
     "f141630c7a3c4ab7c81b2f001698e7463b04"},
    {"7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
     "legal winner thank year wave sausage worth useful legal winner thank yellow",
     "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1"
     "069be3a3a5bd381ee6260e8d9739fce1f607"},
    {"80808080808080808080808080808080",
     "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
     "d71de856f81a8acc65e6fc851a38d4d7ec216fd0796d0a6827a3ad6ed5511a30fa280f12eb2e47ed2ac03b5c462a"
     "0358d18d69fe4f985ec81778c1b370b652a8"},
    {"ffffffffffffffffffffffffffffffff", "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
     "ac27495480225222079d7be181583751e86f571027b0497b5b5d11218e0a8a13332572917f0f8e5a589620c6f15b"
     "11c61dee327651a14c34e18231052e48c069"},
    {"000000000000000000000000000000000000000000000000",
     "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon "
     "abandon abandon abandon abandon abandon abandon agent",
     "035895f2f481b1b0f01fcf8c289c794660b289981a78f8106447707fdd9666ca06da5a9a565181599b79f53b844d"
     "8a71dd9f439c52a3d7b3e8a79c906ac845fa"},
    {"7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
     "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth "
     "useful legal will",
     "f2b94508732bcbacbcc020faefecfc89feafa6649a5491b8c952cede496c214a0c7b3c392d168748f2d4a612bada"
     "0753b52a1c7ac53c1e93abd5c6320b9e95dd"},
    {"808080808080808080808080808080808080808080808080",
     "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount "
     "doctor acoustic avoid letter always",
     "107d7c02a5aa6f38c58083ff74f04c607c2d2c0ecc55501dadd72d025b751bc27fe913ffb796f841c49b1d33b610"
     "cf0e91d3aa239027f5e99fe4ce9e5088cd65"},
    {"ffffffffffffffffffffffffffffffffffffffffffffffff",
     "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo when",
     "0cd6e5d827bb62eb8fc1e262254223817fd068a74b5b449cc2f667c3f1f985a76379b43348d952e2265b4cd12909"
     "0758b3e3c2c49103b5051aac2eaeb890a528"},
    {"0000000000000000000000000000000000000000000000000000000000000000",
     "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon "
     "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon "
     "abandon art",
     "bda85446c68413707090a52022edd26a1c9462295029f2e60cd7c4f2bbd3097170af7a4d73245cafa9c3cca8d561"
     "a7c3de6f5d4a10be8ed2a5e608d68f92fcc8"},
    {"7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
     "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth "
     "useful legal winner thank year wave sausage worth title",
     "bc09fca1804f7e69da93c2f2028eb238c227f2e9dda30cd63699232578480a4021b146ad717fbb7e451ce9eb835f"
     "43620bf5c514db0f8add49f5d121449d3e87"},
    {"8080808080808080808080808080808080808080808080808080808080808080",
     "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount "
     "doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless",
     "c0c519bd0e91a2ed54357d9d1ebef6f5af218a153624cf4f2da911a0ed8f7a09e2ef61af0aca007096df430022f7"
     "a2b6fb91661a9589097069720d015e4e982f"},
    {"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo "
     "vote",
     "dd48c104698c30cfe2b6142103248622fb7bb0ff692eebb00089b32d22484e1613912f0a5b694407be899ffd31ed"
     "3992c456cdf60f5d4564b8ba3f05a69890ad"},
    {"9e885d952ad362caeb4efe34a8e91bd2",
     "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic",
     "274ddc525802f7c828d8ef7ddbcdc5304e87ac3535913611fbbfa986d0c9e5476c91689f9c8a54fd55bd38606aa6"
     "a8595ad213d4c9c9f9aca3fb217069a41028"},
    {"6610b25967cdcca9d59875f5cb50b0ea75433311869e930b",
     "gravity machine north sort system female filter attitude volume fold club stay feature "
     "office ecology stable narrow fog",
     "628c3827a8823298ee685db84f55caa34b5cc195a778e52d45f59bcf75aba68e4d7590e101dc414bc1bbd5737666"
     "fbbef35d1f1903953b66624f910feef245ac"},
    {"68a79eaca2324873eacc50cb9c6eca8cc68ea5d936f98787c60c7ebc74e6ce7c",
     "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy "
     "gospel tennis maple dilemma loan word shrug inflict delay length",
     "64c87cde7e12ecf6704ab95bb1408bef047c22db4cc7491c4271d170a1b213d20b385bc1588d9c7b38f1b39d4156"
     "65b8a9030c9ec653d75e65f847d8fc1fc440"},
    {"c0ba5a8e914111210f2bd131f3d5e08d",
     "scheme spot photo card baby mountain device kick cradle pact join borrow",
     "ea725895aaae8d4c1cf682c1bfd2d358d52ed9f0f0591131b559e2724bb234fca05aa9c02c57407e04ee9dc3b454"
     "aa63fbff483a8b11de949624b9f1831a9612"},
    {"6d9be1ee6ebd27a258115aad99b7317b9c8d28b6d76431c3",
     "horn tenant knee talent sponsor spell gate clip pulse soap slush warm silver nephew swap "
     "uncle crack brave",
     "fd579828af3da1d32544ce4db5c73d53fc8acc4ddb1e3b251a31179cdb71e853c56d2fcb11aed39898ce6c34b10b"
     "5382772db8796e52837b54468aeb312cfc3d"},
    {"9f6a2878b2520799a44ef18bc7df394e7061a224d2c33cd015b157d746869863",
     "panda eyebrow bullet gorilla call smoke muffin taste mesh discover soft ostrich alcohol "
     "speed nation flash devote level hobby quick inner drive ghost inside",
     "72be8e052fc4919d2adf28d5306b5474b0069df35b02303de8c1729c9538dbb6fc2d731d5f832193cd9fb6aeecbc"
     "469594a70e3dd50811b5067f3b88b28c3e8d"},
    {"23db8160a31d3e0dca3688ed941adbf3",
     "cat swing flag economy stadium alone churn speed unique patch report train",
     "deb5f45449e615feff5640f2e49f933ff51895de3b4381832b3139941c57b59205a42480c52175b6efcffaa58a25"
     "03887c1e8b363a707256bdd2b587b46541f5"},
    {"8197a4a47f0425faeaa69deebc05ca29c0a5b5cc76ceacc0",
     "light rule cinnamon wrap drastic word pride squirrel upgrade then income fatal apart "
     "sustain crack supply proud access",
     "4cbdff1ca2db800fd61cae72a57475fdc6bab03e441fd63f96dabd1f183ef5b782925f00105f318309a7e9c3ea69"
     "67c7801e46c8a58082674c860a37b93eda02"},
    {"066dca1a2bb7e8a1db2832148ce9933eea0f3ac9548d793112d9a95c9407efad",
     "all hour make first leader extend hole alien behind guard gospel lava path output census "
     "museum junior mass reopen famous sing advance salt reform",
     "26e975ec644423f4a4c4f4215ef09b4bd7ef924e85d1d17c4cf3f136c2863cf6df0a475045652c57eb5fb41513ca"
     "2a2d67722b77e954b4b3fc11f7590449191d"},
    {"f30f8c1da665478f49b001d94c5fc452",
     "vessel ladder alter error federal sibling chat ability sun glass valve picture",
     "2aaa9242daafcee6aa9d7269f17d4efe271e1b9a529178d7dc139cd18747090bf9d60295d0ce74309a78852a9caa"
     "df0af48aae1c6253839624076224374bc63f"},
    {"c10ec20dc3cd9f652c7fac2f1230f7a3c828389a14392f05",
     "scissors invite lock maple supreme raw rapid void congress muscle digital elegant little "
     "brisk hair mango congress clump",
     "7b4a10be9d98e6cba265566db7f136718e1398c71cb581e1b2f464cac1ceedf4f3e274dc270003c670ad8d02c455"
     "8b2f8e39edea2775c9e232c7cb798b069e88"},
    {"f585c11aec520db57dd353c69554b21a89b20fb0650966fa0a9d6f74fd989d8f",
     "void come effort suffer camp survey warrior heavy shoot primary clutch crush open amazing "
     "screen patrol group space point ten exist slush involve unfold",
     "01f5bced59dec48e362f2c45b5de68b9fd6c92c6634f44d6d40aab69056506f0e35524a518034ddc1192e1dacd32"
     "c1ed3eaa3c3b131c88ed8e7e54c49a5d0998"},
};

#define BIP39_VECTOR_COUNT (sizeof bip39_vectors / sizeof bip39_vectors[0])

static void test_bip39_matches_trezor_vectors(void **state)
{
    (void)state;
    assert_int_equal(BIP39_VECTOR_COUNT, 24);
    for (size_t i = 0; i < BIP39_VECTOR_COUNT; i++) {
        const bip39_vector *v = &bip39_vectors[i];
        uint8_t entropy[32];
        size_t entropy_len = strlen(v->entropy) / 2;
        hex_to(entropy, entropy_len, v->entropy);
        char mnemonic[NS_MNEMONIC_SIZE_MAX];
        assert_int_equal(ns_bip39_from_entropy(entropy, entropy_len, mnemonic, sizeof mnemonic),
                         NS_OK);
        assert_string_equal(mnemonic, v->mnemonic);
        assert_int_equal(ns_bip39_check(mnemonic, NULL), NS_OK);
        uint8_t want[NS_BIP39_SEED_BYTES];
        uint8_t got[NS_BIP39_SEED_BYTES];
        hex_to(want, sizeof want, v->seed);
        assert_int_equal(ns_bip39_seed(mnemonic, "TREZOR", got), NS_OK);
        assert_memory_equal(got, want, sizeof want);
    }
}

static void test_bip39_refuses_bad_checksum(void **state)
{
    (void)state;
    const char *twelve_abandon = "abandon abandon abandon abandon abandon abandon abandon abandon "
                                 "abandon abandon abandon abandon";
    assert_int_equal(ns_bip39_check(twelve_abandon, NULL), NS_ECHECKSUM);
    assert_int_equal(ns_bip39_check("zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo", NULL),
                     NS_ECHECKSUM);
}

static void test_bip39_reports_index_of_unknown_word(void **state)
{
    (void)state;
    int bad = -1;
    assert_int_equal(ns_bip39_check("abandon abandon abandon abandon abandon abandon abandon "
                                    "abandon abandon abandon neuroshard about",
                                    &bad),
                     NS_EWORD);
    assert_int_equal(bad, 10);
    bad = -1;
    assert_int_equal(ns_bip39_check("Abandon abandon abandon abandon abandon abandon abandon "
                                    "abandon abandon abandon abandon about",
                                    &bad),
                     NS_EWORD);
    assert_int_equal(bad, 0);
}

static void test_bip39_treats_doubled_space_as_unknown_word(void **state)
{
    (void)state;
    int bad = -1;
    /* 11 real words and one empty one: the count is right, the empty word is not in the list. */
    assert_int_equal(ns_bip39_check("abandon abandon abandon abandon abandon abandon abandon "
                                    "abandon abandon abandon  about",
                                    &bad),
                     NS_EWORD);
    assert_int_equal(bad, 10);
}

static void test_bip39_refuses_wrong_word_count(void **state)
{
    (void)state;
    assert_int_equal(ns_bip39_check("abandon abandon abandon abandon abandon abandon abandon "
                                    "abandon abandon abandon about",
                                    NULL),
                     NS_EINVAL);
    assert_int_equal(ns_bip39_check("zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong", NULL),
                     NS_EINVAL);
    assert_int_equal(ns_bip39_check("", NULL), NS_EINVAL);
}

static void test_bip39_refuses_overlong_mnemonic(void **state)
{
    (void)state;
    char text[NS_MNEMONIC_SIZE_MAX + 8];
    memset(text, 'a', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    assert_int_equal(ns_bip39_check(text, NULL), NS_ETOOBIG);
    uint8_t seed[NS_BIP39_SEED_BYTES];
    assert_int_equal(ns_bip39_seed(text, NULL, seed), NS_ETOOBIG);
}

static void test_bip39_from_entropy_refuses_bad_length(void **state)
{
    (void)state;
    uint8_t entropy[36] = {0};
    char out[NS_MNEMONIC_SIZE_MAX];
    assert_int_equal(ns_bip39_from_entropy(entropy, 12, out, sizeof out), NS_EINVAL);
    assert_int_equal(ns_bip39_from_entropy(entropy, 17, out, sizeof out), NS_EINVAL);
    assert_int_equal(ns_bip39_from_entropy(entropy, 36, out, sizeof out), NS_EINVAL);
    assert_int_equal(ns_bip39_from_entropy(entropy, 16, out, 20), NS_EINVAL); /* out too small */
}

static void test_bip39_generate_gives_valid_distinct_mnemonics(void **state)
{
    (void)state;
    char a[NS_MNEMONIC_SIZE_MAX];
    char b[NS_MNEMONIC_SIZE_MAX];
    assert_int_equal(ns_bip39_generate(12, a, sizeof a), NS_OK);
    assert_int_equal(ns_bip39_generate(12, b, sizeof b), NS_OK);
    assert_int_equal(ns_bip39_check(a, NULL), NS_OK);
    assert_int_equal(ns_bip39_check(b, NULL), NS_OK);
    assert_string_not_equal(a, b);
    size_t spaces = 0;
    for (const char *p = a; *p != '\0'; p++)
        spaces += *p == ' ';
    assert_int_equal(spaces, 11);
    assert_int_equal(ns_bip39_generate(24, a, sizeof a), NS_OK);
    assert_int_equal(ns_bip39_check(a, NULL), NS_OK);
    assert_int_equal(ns_bip39_generate(13, a, sizeof a), NS_EINVAL);
}

static void test_bip39_seed_normalises_passphrase_to_nfkd(void **state)
{
    (void)state;
    const char *mnemonic = bip39_vectors[0].mnemonic;
    uint8_t composed[NS_BIP39_SEED_BYTES];
    uint8_t decomposed[NS_BIP39_SEED_BYTES];
    uint8_t plain_e[NS_BIP39_SEED_BYTES];
    /* U+00E9 (precomposed e-acute) against U+0065 U+0301 (e, combining acute accent). */
    assert_int_equal(ns_bip39_seed(mnemonic, "caf\xc3\xa9", composed), NS_OK);
    assert_int_equal(ns_bip39_seed(mnemonic, "cafe\xcc\x81", decomposed), NS_OK);
    assert_int_equal(ns_bip39_seed(mnemonic, "cafe", plain_e), NS_OK);
    assert_memory_equal(composed, decomposed, sizeof composed);
    assert_memory_not_equal(composed, plain_e, sizeof composed);
}

static void test_bip39_seed_without_passphrase_equals_empty_one(void **state)
{
    (void)state;
    uint8_t a[NS_BIP39_SEED_BYTES];
    uint8_t b[NS_BIP39_SEED_BYTES];
    assert_int_equal(ns_bip39_seed(bip39_vectors[0].mnemonic, NULL, a), NS_OK);
    assert_int_equal(ns_bip39_seed(bip39_vectors[0].mnemonic, "", b), NS_OK);
    assert_memory_equal(a, b, sizeof a);
}

static void test_bip39_seed_refuses_invalid_utf8(void **state)
{
    (void)state;
    uint8_t seed[NS_BIP39_SEED_BYTES];
    assert_int_equal(ns_bip39_seed(bip39_vectors[0].mnemonic, "bad\xc3", seed), NS_EINVAL);
    assert_int_equal(ns_bip39_seed(bip39_vectors[0].mnemonic, "\xff\xfe", seed), NS_EINVAL);
}

/* ---- keys and signatures ------------------------------------------------------------------ */

#define KEY_ONE "0000000000000000000000000000000000000000000000000000000000000001"

static void test_key_one_has_generator_as_pubkey(void **state)
{
    (void)state;
    ns_key key;
    key_from_hex(&key, KEY_ONE);
    uint8_t want[NS_PUBKEY_BYTES];
    hex_to(want, sizeof want, "0279BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798");
    assert_memory_equal(key.pubkey, want, sizeof want);
    uint8_t id[NS_NODE_ID_BYTES];
    ns_sha256(id, want, sizeof want);
    assert_memory_equal(key.node_id, id, sizeof id);
}

static void test_key_from_seed_follows_s1_derivation(void **state)
{
    (void)state;
    uint8_t seed[NS_BIP39_SEED_BYTES];
    hex_to(seed, sizeof seed, bip39_vectors[0].seed);
    ns_key key;
    assert_int_equal(ns_key_from_seed(&key, seed), NS_OK);
    uint8_t seckey[NS_SECKEY_BYTES];
    ns_sha256(seckey, seed, 32); /* SHA256(token), token = seed[:32] */
    assert_memory_equal(key.seckey, seckey, sizeof seckey);
    ns_key again;
    assert_int_equal(ns_key_from_seckey(&again, seckey), NS_OK);
    assert_memory_equal(&again, &key, sizeof key);
    assert_int_equal(key.pubkey[0] == 0x02 || key.pubkey[0] == 0x03, 1);
    uint8_t id[NS_NODE_ID_BYTES];
    ns_node_id_from_pubkey(id, key.pubkey);
    assert_memory_equal(key.node_id, id, sizeof id);
}

static void test_key_refuses_zero_and_group_order(void **state)
{
    (void)state;
    ns_key key;
    uint8_t seckey[NS_SECKEY_BYTES] = {0};
    assert_int_equal(ns_key_from_seckey(&key, seckey), NS_ECRYPTO);
    hex_to(seckey, sizeof seckey,
           "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    assert_int_equal(ns_key_from_seckey(&key, seckey), NS_ECRYPTO);
}

static void test_key_wipe_zeroes_secret_only(void **state)
{
    (void)state;
    ns_key key;
    key_from_hex(&key, KEY_ONE);
    uint8_t pubkey[NS_PUBKEY_BYTES];
    memcpy(pubkey, key.pubkey, sizeof pubkey);
    ns_key_wipe(&key);
    const uint8_t zero[NS_SECKEY_BYTES] = {0};
    assert_memory_equal(key.seckey, zero, sizeof zero);
    assert_memory_equal(key.pubkey, pubkey, sizeof pubkey);
}

typedef struct sig_vector {
    const char *seckey;
    const char *message;
    const char *sig; /* r || s, low-S */
} sig_vector;

/* RFC 6979 secp256k1 with SHA-256 of the message, as published with bitcoinj's, python-ecdsa's
 * and others' tests (the s values here are the low-S forms). */
static const sig_vector sig_vectors[] = {
    {KEY_ONE, "Satoshi Nakamoto",
     "934b1ea10a4b3c1757e2b0c017d0b6143ce3c9a7e6a4a49860d7a6ab210ee3d8"
     "2442ce9d2b916064108014783e923ec36b49743e2ffa1c4496f01a512aafd9e5"},
    {KEY_ONE, "All those moments will be lost in time, like tears in rain. Time to die...",
     "8600dbd41e348fe5c9465ab92d23e3db8b98b873beecd930736488696438cb6b"
     "547fe64427496db33bf66019dacbf0039c04199abb0122918601db38a72cfc21"},
    {"fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140", "Satoshi Nakamoto",
     "fd567d121db66e382991534ada77a6bd3106f0a1098c231e47993447cd6af2d0"
     "6b39cd0eb1bc8603e159ef5c20a5c8ad685a45b06ce9bebed3f153d10d93bed5"},
    {"f8b8af8ce3c7cca5e300d33939540c10d45ce001b8f252bfbc57ba0342904181", "Alan Turing",
     "7063ae83e7f62bbb171798131b4a0564b956930092b33b07b395615d9ec7e15c"
     "58dfcc1e00a35e1572f366ffe34ba0fc47db1e7189759b9fb233c5b05ab388ea"},
    {"e91671c46231f833a6406ccbea0e3e392c76c167bac1cb013f6f1013980455c2",
     "There is a computer disease that anybody who works with computers knows about. It's a very "
     "serious disease and it interferes completely with the work. The trouble with computers is "
     "that you 'play' with them!",
     "b552edd27580141f3b2a5463048cb7cd3e047b97c9f98076c32dbdf85a68718b"
     "279fa72dd19bfae05577e06c7c0c1900c371fcd5893f7e1d56a37d30174671f6"},
};

static void test_sign_matches_rfc6979_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof sig_vectors / sizeof sig_vectors[0]; i++) {
        const sig_vector *v = &sig_vectors[i];
        ns_key key;
        key_from_hex(&key, v->seckey);
        uint8_t digest[NS_SHA256_BYTES];
        ns_sha256(digest, v->message, strlen(v->message));
        uint8_t want[NS_SIG_BYTES];
        uint8_t got[NS_SIG_BYTES];
        hex_to(want, sizeof want, v->sig);
        assert_int_equal(ns_sign_digest(&key, digest, got), NS_OK);
        assert_memory_equal(got, want, sizeof want);
        assert_int_equal(ns_verify_digest(key.pubkey, digest, got), NS_OK);
    }
}

static void test_sign_is_deterministic_and_low_s(void **state)
{
    (void)state;
    uint8_t half_order[32];
    hex_to(half_order, sizeof half_order,
           "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");
    ns_key key;
    key_from_byte(&key, 7);
    for (unsigned i = 0; i < 200; i++) {
        uint8_t digest[NS_SHA256_BYTES];
        ns_sha256(digest, &i, sizeof i);
        uint8_t a[NS_SIG_BYTES];
        uint8_t b[NS_SIG_BYTES];
        assert_int_equal(ns_sign_digest(&key, digest, a), NS_OK);
        assert_int_equal(ns_sign_digest(&key, digest, b), NS_OK);
        assert_memory_equal(a, b, sizeof a);
        assert_true(memcmp(a + 32, half_order, 32) <= 0);
    }
}

static void test_verify_refuses_high_s(void **state)
{
    (void)state;
    ns_key key;
    key_from_hex(&key, KEY_ONE);
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, "Satoshi Nakamoto", 16);
    uint8_t sig[NS_SIG_BYTES];
    /* The same signature with s replaced by n - s: valid ECDSA, but not the low-S form. */
    hex_to(sig, sizeof sig,
           "934b1ea10a4b3c1757e2b0c017d0b6143ce3c9a7e6a4a49860d7a6ab210ee3d8"
           "dbbd3162d46e9f9bef7feb87c16dc13b4f6568a87f4e83f728e2443ba586675c");
    assert_int_equal(ns_verify_digest(key.pubkey, digest, sig), NS_EBADSIG);
    hex_to(sig + 32, 32, "2442ce9d2b916064108014783e923ec36b49743e2ffa1c4496f01a512aafd9e5");
    assert_int_equal(ns_verify_digest(key.pubkey, digest, sig), NS_OK);
}

static void test_verify_refuses_other_digest_and_bad_pubkey(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 9);
    uint8_t digest[NS_SHA256_BYTES];
    ns_sha256(digest, "a", 1);
    uint8_t sig[NS_SIG_BYTES];
    assert_int_equal(ns_sign_digest(&key, digest, sig), NS_OK);
    digest[0] ^= 1;
    assert_int_equal(ns_verify_digest(key.pubkey, digest, sig), NS_EBADSIG);
    digest[0] ^= 1;
    uint8_t pubkey[NS_PUBKEY_BYTES];
    memcpy(pubkey, key.pubkey, sizeof pubkey);
    pubkey[0] = 0x05;
    assert_int_equal(ns_verify_digest(pubkey, digest, sig), NS_ECRYPTO);
    memset(sig + 32, 0xff, 32); /* s beyond the group order */
    assert_int_equal(ns_verify_digest(key.pubkey, digest, sig), NS_EBADSIG);
}

/* ---- signed records ----------------------------------------------------------------------- */

#define NOW_MS 1790000000000ULL

static const uint8_t record_body[200] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, [199] = 0xee};

static ns_record record_template(void)
{
    return (ns_record){.type = NS_RECORD_NODE,
                       .sequence = 7,
                       .timestamp_ms = NOW_MS - 1000,
                       .expiry_ms = NOW_MS + 3600 * 1000,
                       .body = record_body,
                       .body_len = sizeof record_body};
}

static void sign_record(const ns_key *key, const ns_record *rec, uint8_t **env, size_t *env_len)
{
    assert_int_equal(ns_record_sign(key, rec, env, env_len), NS_OK);
    assert_true(*env_len <= NS_RECORD_BYTES_MAX);
}

/* An envelope built field by field, for tests that need one the signer would not make. */
static uint8_t *envelope_pack(const uint8_t *rec, size_t rec_len, const uint8_t *pubkey,
                              const uint8_t *sig, size_t *len)
{
    Neuroshard__SignedEnvelope env = NEUROSHARD__SIGNED_ENVELOPE__INIT;
    env.record.data = (uint8_t *)rec;
    env.record.len = rec_len;
    env.pubkey.data = (uint8_t *)pubkey;
    env.pubkey.len = NS_PUBKEY_BYTES;
    env.signature.data = (uint8_t *)sig;
    env.signature.len = NS_SIG_BYTES;
    *len = neuroshard__signed_envelope__get_packed_size(&env);
    uint8_t *out = malloc(*len);
    assert_non_null(out);
    assert_int_equal(neuroshard__signed_envelope__pack(&env, out), *len);
    return out;
}

static void record_digest(uint8_t digest[NS_SHA256_BYTES], const uint8_t *rec, size_t len)
{
    size_t domain_len = strlen(NS_RECORD_DOMAIN);
    uint8_t *buf = malloc(domain_len + len);
    assert_non_null(buf);
    memcpy(buf, NS_RECORD_DOMAIN, domain_len);
    memcpy(buf + domain_len, rec, len);
    ns_sha256(digest, buf, domain_len + len);
    free(buf);
}

static void test_record_round_trips(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_OK);
    assert_int_equal(got.type, rec.type);
    assert_memory_equal(got.author, key.node_id, NS_NODE_ID_BYTES);
    assert_int_equal(got.sequence, rec.sequence);
    assert_int_equal(got.timestamp_ms, rec.timestamp_ms);
    assert_int_equal(got.expiry_ms, rec.expiry_ms);
    assert_int_equal(got.body_len, rec.body_len);
    assert_memory_equal(got.body, rec.body, rec.body_len);
    assert_true(got.body >= env && got.body + got.body_len <= env + env_len);
    free(env);
}

static void test_record_signature_covers_domain_and_exact_bytes(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    Neuroshard__SignedEnvelope *e = neuroshard__signed_envelope__unpack(NULL, env_len, env);
    assert_non_null(e);
    uint8_t digest[NS_SHA256_BYTES];
    record_digest(digest, e->record.data, e->record.len);
    assert_int_equal(ns_verify_digest(e->pubkey.data, digest, e->signature.data), NS_OK);
    neuroshard__signed_envelope__free_unpacked(e, NULL);
    free(env);
}

static void test_record_without_body_or_expiry_round_trips(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = {.type = NS_RECORD_PROOF, .timestamp_ms = NOW_MS};
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_OK);
    assert_int_equal(ns_record_verify(env, env_len, UINT64_MAX, &got), NS_OK); /* never expires */
    assert_int_equal(got.body_len, 0);
    assert_int_equal(got.expiry_ms, 0);
    free(env);
}

static void test_record_largest_body_round_trips(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    uint8_t *body = calloc(1, NS_RECORD_BODY_BYTES_MAX + 1);
    assert_non_null(body);
    ns_record rec = record_template();
    rec.body = body;
    rec.body_len = NS_RECORD_BODY_BYTES_MAX;
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_OK);
    assert_int_equal(got.body_len, NS_RECORD_BODY_BYTES_MAX);
    free(env);
    rec.body_len = NS_RECORD_BODY_BYTES_MAX + 1;
    assert_int_equal(ns_record_sign(&key, &rec, &env, &env_len), NS_ETOOBIG);
    free(body);
}

static void test_record_refuses_every_single_byte_change(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    uint8_t *copy = malloc(env_len);
    assert_non_null(copy);
    const uint8_t flips[] = {0x01, 0x02, 0x10, 0x40, 0x80, 0xff};
    for (size_t pos = 0; pos < env_len; pos++) {
        for (size_t f = 0; f < sizeof flips; f++) {
            memcpy(copy, env, env_len);
            copy[pos] ^= flips[f];
            ns_record got;
            int rc = ns_record_verify(copy, env_len, NOW_MS, &got);
            if (rc == NS_OK)
                fail_msg("byte %zu ^ 0x%02x was accepted", pos, flips[f]);
        }
    }
    free(copy);
    free(env);
}

static void test_record_topic_round_trips_and_names_the_dht_key(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_OK);
    uint8_t node_key[NS_SHA256_BYTES];
    ns_record_key(&got, node_key); /* no topic: keyed by the author's node id */
    free(env);
    memcpy(rec.topic, "layer/7", 7);
    rec.topic_len = 7;
    sign_record(&key, &rec, &env, &env_len);
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_OK);
    assert_int_equal(got.topic_len, 7);
    assert_memory_equal(got.topic, "layer/7", 7);
    assert_memory_equal(node_key, key.node_id, NS_NODE_ID_BYTES);
    uint8_t topic_key[NS_SHA256_BYTES], want[NS_SHA256_BYTES];
    ns_record_key(&got, topic_key);
    uint8_t buf[64];
    size_t n = strlen("neuroshard/topic/v1");
    memcpy(buf, "neuroshard/topic/v1", n);
    buf[n] = (uint8_t)(got.type >> 24);
    buf[n + 1] = (uint8_t)(got.type >> 16);
    buf[n + 2] = (uint8_t)(got.type >> 8);
    buf[n + 3] = (uint8_t)got.type;
    memcpy(buf + n + 4, "layer/7", 7);
    ns_sha256(want, buf, n + 11);
    assert_memory_equal(topic_key, want, sizeof want);
    free(env);
    rec.topic_len = NS_RECORD_TOPIC_BYTES_MAX + 1;
    assert_int_equal(ns_record_sign(&key, &rec, &env, &env_len), NS_ETOOBIG);
}

static void test_record_refuses_truncations(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    for (size_t len = 0; len < env_len; len++) {
        /* A fresh copy of exactly len bytes, so ASan sees any read past the end. */
        uint8_t *cut = malloc(len > 0 ? len : 1);
        assert_non_null(cut);
        memcpy(cut, env, len);
        ns_record got;
        assert_int_not_equal(ns_record_verify(cut, len, NOW_MS, &got), NS_OK);
        free(cut);
    }
    free(env);
}

static void test_record_refuses_other_key_as_author(void **state)
{
    (void)state;
    ns_key author;
    ns_key other;
    key_from_byte(&author, 1);
    key_from_byte(&other, 2);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&author, &rec, &env, &env_len);
    Neuroshard__SignedEnvelope *e = neuroshard__signed_envelope__unpack(NULL, env_len, env);
    assert_non_null(e);
    /* The other key signs the author's record bytes correctly: only the author check can fail. */
    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    record_digest(digest, e->record.data, e->record.len);
    assert_int_equal(ns_sign_digest(&other, digest, sig), NS_OK);
    size_t forged_len;
    uint8_t *forged = envelope_pack(e->record.data, e->record.len, other.pubkey, sig, &forged_len);
    ns_record got;
    assert_int_equal(ns_record_verify(forged, forged_len, NOW_MS, &got), NS_EAUTHOR);
    free(forged);
    neuroshard__signed_envelope__free_unpacked(e, NULL);
    free(env);
}

static void test_record_refuses_signature_over_other_record(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    Neuroshard__SignedEnvelope *e = neuroshard__signed_envelope__unpack(NULL, env_len, env);
    assert_non_null(e);
    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    ns_sha256(digest, e->record.data, e->record.len); /* no domain: not the signed digest */
    assert_int_equal(ns_sign_digest(&key, digest, sig), NS_OK);
    size_t bad_len;
    uint8_t *bad = envelope_pack(e->record.data, e->record.len, key.pubkey, sig, &bad_len);
    ns_record got;
    assert_int_equal(ns_record_verify(bad, bad_len, NOW_MS, &got), NS_EBADSIG);
    free(bad);
    neuroshard__signed_envelope__free_unpacked(e, NULL);
    free(env);
}

static void test_record_refuses_expired(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    rec.expiry_ms = NOW_MS;
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS - 1, &got), NS_OK);
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_EEXPIRED);
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS + 1, &got), NS_EEXPIRED);
    free(env);
}

static void test_record_refuses_future(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    rec.timestamp_ms = NOW_MS + NS_RECORD_SKEW_MS_MAX + 1;
    rec.expiry_ms = 0;
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_EFUTURE);
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS + 1, &got), NS_OK);
    free(env);
}

static void test_record_refuses_oversize(void **state)
{
    (void)state;
    size_t len = NS_RECORD_BYTES_MAX + 1;
    uint8_t *buf = calloc(1, len);
    assert_non_null(buf);
    ns_record got;
    assert_int_equal(ns_record_verify(buf, len, NOW_MS, &got), NS_ETOOBIG);
    free(buf);
}

static void test_record_refuses_body_over_limit(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    uint8_t *body = calloc(1, NS_RECORD_BODY_BYTES_MAX + 1);
    assert_non_null(body);
    Neuroshard__Record rec = NEUROSHARD__RECORD__INIT;
    rec.type = NS_RECORD_NODE;
    rec.author.data = key.node_id;
    rec.author.len = NS_NODE_ID_BYTES;
    rec.timestamp_ms = NOW_MS;
    rec.body.data = body;
    rec.body.len = NS_RECORD_BODY_BYTES_MAX + 1;
    size_t rec_len = neuroshard__record__get_packed_size(&rec);
    uint8_t *rec_buf = malloc(rec_len);
    assert_non_null(rec_buf);
    assert_int_equal(neuroshard__record__pack(&rec, rec_buf), rec_len);
    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    record_digest(digest, rec_buf, rec_len);
    assert_int_equal(ns_sign_digest(&key, digest, sig), NS_OK);
    size_t env_len;
    uint8_t *env = envelope_pack(rec_buf, rec_len, key.pubkey, sig, &env_len);
    assert_true(env_len <= NS_RECORD_BYTES_MAX);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_EPARSE);
    free(env);
    free(rec_buf);
    free(body);
}

static void test_record_refuses_noncanonical_envelope(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    ns_record rec = record_template();
    uint8_t *env;
    size_t env_len;
    sign_record(&key, &rec, &env, &env_len);
    uint8_t *alt = malloc(env_len + 2);
    assert_non_null(alt);
    ns_record got;
    /* An unknown field (number 4, varint 0) after the others. */
    memcpy(alt, env, env_len);
    alt[env_len] = 0x20;
    alt[env_len + 1] = 0x00;
    assert_int_equal(ns_record_verify(alt, env_len + 2, NOW_MS, &got), NS_EPARSE);
    /* The signature field (the last 66 bytes) moved to the front. */
    size_t sig_field = 2 + NS_SIG_BYTES;
    memcpy(alt, env + env_len - sig_field, sig_field);
    memcpy(alt + sig_field, env, env_len - sig_field);
    assert_int_equal(ns_record_verify(alt, env_len, NOW_MS, &got), NS_EPARSE);
    /* The same signature field twice: protobuf keeps the last, canonical form has one. */
    free(alt);
    alt = malloc(env_len + sig_field);
    assert_non_null(alt);
    memcpy(alt, env, env_len);
    memcpy(alt + env_len, env + env_len - sig_field, sig_field);
    assert_int_equal(ns_record_verify(alt, env_len + sig_field, NOW_MS, &got), NS_EPARSE);
    free(alt);
    free(env);
}

static void test_record_refuses_noncanonical_record(void **state)
{
    (void)state;
    ns_key key;
    key_from_byte(&key, 1);
    Neuroshard__Record rec = NEUROSHARD__RECORD__INIT;
    rec.type = NS_RECORD_NODE;
    rec.author.data = key.node_id;
    rec.author.len = NS_NODE_ID_BYTES;
    rec.timestamp_ms = NOW_MS;
    size_t rec_len = neuroshard__record__get_packed_size(&rec);
    uint8_t rec_buf[128];
    assert_true(rec_len + 2 <= sizeof rec_buf);
    assert_int_equal(neuroshard__record__pack(&rec, rec_buf), rec_len);
    /* sequence = 0 written out (field 3, varint 0): valid protobuf, not the canonical form. */
    rec_buf[rec_len] = 0x18;
    rec_buf[rec_len + 1] = 0x00;
    uint8_t digest[NS_SHA256_BYTES];
    uint8_t sig[NS_SIG_BYTES];
    record_digest(digest, rec_buf, rec_len + 2);
    assert_int_equal(ns_sign_digest(&key, digest, sig), NS_OK);
    size_t env_len;
    uint8_t *env = envelope_pack(rec_buf, rec_len + 2, key.pubkey, sig, &env_len);
    ns_record got;
    assert_int_equal(ns_record_verify(env, env_len, NOW_MS, &got), NS_EPARSE);
    free(env);
}

/* ---- keystore ----------------------------------------------------------------------------- */

#define PASSPHRASE "correct horse battery staple"

typedef struct keystore_fixture {
    char dir[256];
    char sealed_path[320];
    ns_key key;
} keystore_fixture;

static keystore_fixture fixture;

static int keystore_setup(void **state)
{
    (void)state;
    ns_test_tempdir(fixture.dir, sizeof fixture.dir);
    snprintf(fixture.sealed_path, sizeof fixture.sealed_path, "%s/sealed", fixture.dir);
    key_from_byte(&fixture.key, 0x33);
    return ns_keystore_create(fixture.sealed_path, &fixture.key, PASSPHRASE) == NS_OK ? 0 : -1;
}

static int keystore_teardown(void **state)
{
    (void)state;
    ns_test_rmtree(fixture.dir);
    return 0;
}

static void fixture_path(char *out, size_t out_size, const char *name)
{
    int n = snprintf(out, out_size, "%s/%s", fixture.dir, name);
    assert_true(n > 0 && (size_t)n < out_size);
}

static void test_keystore_round_trips_plain(void **state)
{
    (void)state;
    char path[320];
    fixture_path(path, sizeof path, "plain");
    assert_int_equal(ns_keystore_create(path, &fixture.key, NULL), NS_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    ns_key got;
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_OK);
    assert_memory_equal(&got, &fixture.key, sizeof got);
    bool encrypted = true;
    uint8_t id[NS_NODE_ID_BYTES];
    assert_int_equal(ns_keystore_peek(path, &encrypted, id), NS_OK);
    assert_false(encrypted);
    assert_memory_equal(id, fixture.key.node_id, sizeof id);
}

static void test_keystore_round_trips_encrypted(void **state)
{
    (void)state;
    struct stat st;
    assert_int_equal(stat(fixture.sealed_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    ns_key got;
    assert_int_equal(ns_keystore_load(fixture.sealed_path, PASSPHRASE, &got), NS_OK);
    assert_memory_equal(&got, &fixture.key, sizeof got);
}

static void test_keystore_encrypted_file_holds_no_secret_in_clear(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len;
    assert_int_equal(ns_file_read(fixture.sealed_path, 4096, &buf, &len), NS_OK);
    assert_true(len >= NS_SECKEY_BYTES);
    for (size_t i = 0; i + NS_SECKEY_BYTES <= len; i++)
        assert_memory_not_equal(buf + i, fixture.key.seckey, NS_SECKEY_BYTES);
    free(buf);
}

static void test_keystore_refuses_wrong_passphrase(void **state)
{
    (void)state;
    ns_key got;
    assert_int_equal(ns_keystore_load(fixture.sealed_path, "Correct horse battery staple", &got),
                     NS_EPASSPHRASE);
}

static void test_keystore_refuses_missing_passphrase(void **state)
{
    (void)state;
    ns_key got;
    assert_int_equal(ns_keystore_load(fixture.sealed_path, NULL, &got), NS_EPASSPHRASE);
    assert_int_equal(ns_keystore_load(fixture.sealed_path, "", &got), NS_EPASSPHRASE);
}

static void test_keystore_peek_shows_node_id_without_passphrase(void **state)
{
    (void)state;
    bool encrypted = false;
    uint8_t id[NS_NODE_ID_BYTES];
    assert_int_equal(ns_keystore_peek(fixture.sealed_path, &encrypted, id), NS_OK);
    assert_true(encrypted);
    assert_memory_equal(id, fixture.key.node_id, sizeof id);
}

static void test_keystore_refuses_file_readable_by_others(void **state)
{
    (void)state;
    char path[320];
    fixture_path(path, sizeof path, "open");
    assert_int_equal(ns_keystore_create(path, &fixture.key, NULL), NS_OK);
    assert_int_equal(chmod(path, 0644), 0);
    ns_key got;
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_EPERM);
    assert_int_equal(chmod(path, 0620), 0);
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_EPERM);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_OK);
}

static void test_keystore_never_overwrites(void **state)
{
    (void)state;
    uint8_t *before;
    size_t before_len;
    assert_int_equal(ns_file_read(fixture.sealed_path, 4096, &before, &before_len), NS_OK);
    ns_key other;
    key_from_byte(&other, 0x44);
    assert_int_equal(ns_keystore_create(fixture.sealed_path, &other, NULL), NS_EEXIST);
    assert_int_equal(ns_keystore_create(fixture.sealed_path, &other, "x"), NS_EEXIST);
    uint8_t *after;
    size_t after_len;
    assert_int_equal(ns_file_read(fixture.sealed_path, 4096, &after, &after_len), NS_OK);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);
    free(before);
    free(after);
}

static void test_keystore_refuses_corrupt_file(void **state)
{
    (void)state;
    char path[320];
    fixture_path(path, sizeof path, "corrupt");
    assert_int_equal(ns_keystore_create(path, &fixture.key, NULL), NS_OK);
    uint8_t *good;
    size_t len;
    assert_int_equal(ns_file_read(path, 4096, &good, &len), NS_OK);
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    ns_key got;
    /* A short file. */
    assert_int_equal(ns_file_write_atomic(path, good, len - 1, 0600), NS_OK);
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_ECORRUPT);
    /* A wrong magic. */
    memcpy(bad, good, len);
    bad[0] ^= 0x20;
    assert_int_equal(ns_file_write_atomic(path, bad, len, 0600), NS_OK);
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_ECORRUPT);
    bool encrypted;
    uint8_t id[NS_NODE_ID_BYTES];
    assert_int_equal(ns_keystore_peek(path, &encrypted, id), NS_ECORRUPT);
    /* A secret that does not belong to the node id in the header. */
    memcpy(bad, good, len);
    bad[len - 1] ^= 0x01;
    assert_int_equal(ns_file_write_atomic(path, bad, len, 0600), NS_OK);
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_ECORRUPT);
    /* Text, not a key file. */
    assert_int_equal(ns_file_write_atomic(path, "hello\n", 6, 0600), NS_OK);
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_ECORRUPT);
    free(bad);
    free(good);
}

static void test_keystore_missing_file_is_enoent(void **state)
{
    (void)state;
    char path[320];
    fixture_path(path, sizeof path, "missing");
    ns_key got;
    assert_int_equal(ns_keystore_load(path, NULL, &got), NS_ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bip39_matches_trezor_vectors),
        cmocka_unit_test(test_bip39_refuses_bad_checksum),
        cmocka_unit_test(test_bip39_reports_index_of_unknown_word),
        cmocka_unit_test(test_bip39_treats_doubled_space_as_unknown_word),
        cmocka_unit_test(test_bip39_refuses_wrong_word_count),
        cmocka_unit_test(test_bip39_refuses_overlong_mnemonic),
        cmocka_unit_test(test_bip39_from_entropy_refuses_bad_length),
        cmocka_unit_test(test_bip39_generate_gives_valid_distinct_mnemonics),
        cmocka_unit_test(test_bip39_seed_normalises_passphrase_to_nfkd),
        cmocka_unit_test(test_bip39_seed_without_passphrase_equals_empty_one),
        cmocka_unit_test(test_bip39_seed_refuses_invalid_utf8),
        cmocka_unit_test(test_key_one_has_generator_as_pubkey),
        cmocka_unit_test(test_key_from_seed_follows_s1_derivation),
        cmocka_unit_test(test_key_refuses_zero_and_group_order),
        cmocka_unit_test(test_key_wipe_zeroes_secret_only),
        cmocka_unit_test(test_sign_matches_rfc6979_vectors),
        cmocka_unit_test(test_sign_is_deterministic_and_low_s),
        cmocka_unit_test(test_verify_refuses_high_s),
        cmocka_unit_test(test_verify_refuses_other_digest_and_bad_pubkey),
        cmocka_unit_test(test_record_round_trips),
        cmocka_unit_test(test_record_signature_covers_domain_and_exact_bytes),
        cmocka_unit_test(test_record_without_body_or_expiry_round_trips),
        cmocka_unit_test(test_record_largest_body_round_trips),
        cmocka_unit_test(test_record_refuses_every_single_byte_change),
        cmocka_unit_test(test_record_topic_round_trips_and_names_the_dht_key),
        cmocka_unit_test(test_record_refuses_truncations),
        cmocka_unit_test(test_record_refuses_other_key_as_author),
        cmocka_unit_test(test_record_refuses_signature_over_other_record),
        cmocka_unit_test(test_record_refuses_expired),
        cmocka_unit_test(test_record_refuses_future),
        cmocka_unit_test(test_record_refuses_oversize),
        cmocka_unit_test(test_record_refuses_body_over_limit),
        cmocka_unit_test(test_record_refuses_noncanonical_envelope),
        cmocka_unit_test(test_record_refuses_noncanonical_record),
        cmocka_unit_test(test_keystore_round_trips_plain),
        cmocka_unit_test(test_keystore_round_trips_encrypted),
        cmocka_unit_test(test_keystore_encrypted_file_holds_no_secret_in_clear),
        cmocka_unit_test(test_keystore_refuses_wrong_passphrase),
        cmocka_unit_test(test_keystore_refuses_missing_passphrase),
        cmocka_unit_test(test_keystore_peek_shows_node_id_without_passphrase),
        cmocka_unit_test(test_keystore_refuses_file_readable_by_others),
        cmocka_unit_test(test_keystore_never_overwrites),
        cmocka_unit_test(test_keystore_refuses_corrupt_file),
        cmocka_unit_test(test_keystore_missing_file_is_enoent),
    };
    return cmocka_run_group_tests(tests, keystore_setup, keystore_teardown);
}
