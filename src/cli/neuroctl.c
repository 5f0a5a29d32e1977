/*
 * neuroctl.c: the command-line client of a neuroshard node.
 *
 * Wallet commands work on the data directory's key file directly (no daemon needed); the others
 * talk to the node's local HTTP API, whose address and token the daemon leaves in the data
 * directory (api.addr, api.token). Every failure prints one line to stderr and exits non-zero:
 * 1 when the command failed, 2 when it was used wrongly.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "neuroshard/crypto.h"
#include "neuroshard/ledger.h"
#include "neuroshard/node.h"

#define EXIT_FAILED         1
#define EXIT_USAGE          2
#define HTTP_BODY_BYTES_MAX (1024 * 1024)
#define HTTP_TIMEOUT_S      10
#define GENERATE_TIMEOUT_S  600 /* a long generation waits for a training step, then decodes */
#define ARGS_MAX            32

typedef struct ctl {
    char data_dir[PATH_MAX];
    const char *api; /* --api HOST:PORT, else DATA_DIR/api.addr */
    int argc;        /* positional words and command flags, global options removed */
    const char *argv[ARGS_MAX];
} ctl;

static const char usage_main[] =
    "usage: neuroctl [--data-dir DIR] [--api HOST:PORT] COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  wallet new       create this node's wallet and show its mnemonic once\n"
    "  wallet restore   recreate the wallet from a mnemonic read from stdin\n"
    "  wallet show      show the wallet's node id and key file\n"
    "  status           what the running node is doing\n"
    "  peers            the peers in the node's routing table\n"
    "  doctor           what works and what does not in joining the swarm, in plain words\n"
    "  wallet balance   balance, stake and newest entries of this node's account\n"
    "  wallet send ID AMOUNT | stake AMOUNT | unstake AMOUNT\n"
    "  wallet history   this account's entries\n"
    "  ledger check     replay every ledger entry from genesis and check the result\n"
    "  ponw             the newest proofs of neural work and the validator's verdicts\n"
    "  quorum           the quorum this node trains in: members, stages, layers\n"
    "  train status     the node's training: step, loss, tokens/s, ETA\n"
    "  train start|stop switch training on or off\n"
    "  generate TEXT    continue TEXT with the node's model\n"
    "  reload           make the running node re-read its configuration\n"
    "\n"
    "DIR defaults to NEUROSHARD_DATA_DIR, else $XDG_DATA_HOME/neuroshard or\n"
    "~/.local/share/neuroshard. 'neuroctl COMMAND --help' tells more.\n";

static const char usage_wallet_new[] =
    "usage: neuroctl wallet new [--words 12|24] [--encrypt]\n"
    "\n"
    "Creates a BIP39 mnemonic from secure randomness, derives the node's key from it and writes\n"
    "the key file DATA_DIR/key (mode 0600). The mnemonic is shown once, here, and never stored:\n"
    "write it down. An existing wallet is never overwritten.\n"
    "  --words N    12 (default) or 24 words\n"
    "  --encrypt    encrypt the key file with a passphrase (NEUROSHARD_PASSPHRASE, or a prompt);\n"
    "               setting NEUROSHARD_PASSPHRASE alone also encrypts\n"
    "NEUROSHARD_BIP39_PASSPHRASE, when set, is the optional BIP39 passphrase of the mnemonic.\n";

static const char usage_wallet_restore[] =
    "usage: neuroctl wallet restore [--encrypt] < mnemonic.txt\n"
    "\n"
    "Reads a BIP39 mnemonic (one line; a prompt on a terminal), checks every word and the\n"
    "checksum, and writes the key file it derives. Options as for 'wallet new'.\n";

static const char usage_wallet_show[] = "usage: neuroctl wallet show\n"
                                        "\n"
                                        "Shows the node id and key file; needs no passphrase.\n";

static const char usage_status[] = "usage: neuroctl status [--json]\n"
                                   "\n"
                                   "Asks the running node for its state (GET /api/stats).\n";

static const char usage_peers[] = "usage: neuroctl peers [--json]\n"
                                  "\n"
                                  "Lists the peers the running node knows (GET /api/peers).\n";

static const char usage_doctor[] =
    "usage: neuroctl doctor [--json]\n"
    "\n"
    "Says in plain words what works and what does not: the listening port, each bootstrap\n"
    "seed (does it answer? another network?), how many peers answer, whether peers can reach\n"
    "this node (a peer dials it back), and the clock skew against peers. Exits 1 when something\n"
    "needs attention.\n";

static const char usage_train[] =
    "usage: neuroctl train status [--json] | start | stop\n"
    "\n"
    "status: what the node's trainer is doing (GET /training_status). start and stop flip the\n"
    "training switch (POST /api/train, with the API token); a stopped trainer keeps its model\n"
    "and resumes where it was.\n";

static const char usage_generate[] =
    "usage: neuroctl generate [options] TEXT   (TEXT '-' or absent: read from stdin)\n"
    "\n"
    "Continues TEXT with the model the node trains (POST /generate_text, with the API token)\n"
    "and prints TEXT followed by the continuation; a line on stderr tells the tokens, speed,\n"
    "training step, seed and why it stopped.\n"
    "  --max-tokens N     tokens to generate, 1..1024 (default 64)\n"
    "  --temperature T    0 is greedy; higher is more random (default 0.8)\n"
    "  --top-k K          sample among the K likeliest tokens, 0 = all (default 40)\n"
    "  --top-p P          ... and among the fewest whose probability reaches P (default 0.95)\n"
    "  --seed S           the same seed, weights and settings give the same text\n"
    "  --json             print the node's answer as it is\n";

static const char usage_wallet_money[] =
    "usage: neuroctl wallet balance | history [--limit N] | send NODE_ID AMOUNT | stake AMOUNT |\n"
    "       unstake AMOUNT   [--json]\n"
    "\n"
    "balance and history show this node's account (GET /api/wallet). send moves AMOUNT NEURO\n"
    "(e.g. 1.5) to another node, of which 5 % is burned; stake and unstake move it between the\n"
    "balance and the stake (POST /api/wallet/..., with the API token). The entries spread to\n"
    "every node by gossip; docs/ledger.md has the rules.\n";

static const char usage_ledger[] =
    "usage: neuroctl ledger check [--json]\n"
    "\n"
    "Replays every entry from genesis into a fresh ledger and checks each signature, chain link\n"
    "and rule again, the state hash, every account, and that the NEURO held equals minted minus\n"
    "burned. Asks the running node; with none running, opens DATA_DIR/ledger.db itself. Exits 1\n"
    "when a problem is found.\n";

static const char usage_ponw[] = "usage: neuroctl ponw [--json]\n"
                                 "\n"
                                 "The newest proofs of neural work this node keeps and how its\n"
                                 "validator judged the proofs it received (GET /api/ponw).\n";

static const char usage_quorum[] = "usage: neuroctl quorum [--json]\n"
                                   "\n"
                                   "The quorum this node trains in as a pipeline: each member's\n"
                                   "stage, role and layers (GET /training_status).\n";

static const char usage_reload[] = "usage: neuroctl reload\n"
                                   "\n"
                                   "Makes the running node re-read its configuration, as SIGHUP "
                                   "does (POST /api/reload, with the API token).\n";

static long http_timeout_s = HTTP_TIMEOUT_S;

static int NS_PRINTF(2, 3) fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("neuroctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static bool has_flag(const ctl *c, const char *flag)
{
    for (int i = 0; i < c->argc; i++) {
        if (strcmp(c->argv[i], flag) == 0)
            return true;
    }
    return false;
}

/* Refuses any word after the command words that is not one of the allowed flags. */
static int check_flags(const ctl *c, int first, const char *const *allowed, const char *command)
{
    for (int i = first; i < c->argc; i++) {
        bool ok = false;
        for (const char *const *a = allowed; *a != NULL; a++) {
            if (strcmp(c->argv[i], *a) == 0)
                ok = true;
        }
        if (strcmp(c->argv[i], "--words") == 0 && ok)
            i++; /* its value is checked by the command */
        else if (!ok)
            return fail(EXIT_USAGE, "unknown option '%s' (see '%s --help')", c->argv[i], command);
    }
    return 0;
}

static int key_path(const ctl *c, char *out, size_t out_size)
{
    int n = snprintf(out, out_size, "%s/%s", c->data_dir, NS_KEYSTORE_FILE);
    return (n < 0 || (size_t)n >= out_size) ? NS_EINVAL : NS_OK;
}

/* ---- wallet ------------------------------------------------------------------------------- */

/* The keystore passphrase: NEUROSHARD_PASSPHRASE, else with --encrypt a prompt, asked twice. */
static int keystore_passphrase(bool encrypt, char *out, size_t out_size)
{
    const char *env = getenv("NEUROSHARD_PASSPHRASE");
    out[0] = '\0';
    if (env != NULL) {
        snprintf(out, out_size, "%s", env);
        return 0;
    }
    if (!encrypt)
        return 0;
    char again[256];
    if (ns_tty_read_secret("new passphrase for the key file: ", out, out_size) != NS_OK ||
        ns_tty_read_secret("the same passphrase again: ", again, sizeof again) != NS_OK)
        return fail(EXIT_FAILED, "--encrypt needs a terminal or NEUROSHARD_PASSPHRASE");
    int same = strcmp(out, again) == 0;
    sodium_memzero(again, sizeof again);
    if (!same)
        return fail(EXIT_FAILED, "the two passphrases differ; nothing was written");
    if (out[0] == '\0')
        return fail(EXIT_FAILED, "an empty passphrase does not encrypt; nothing was written");
    return 0;
}

/* Derives the key from a checked mnemonic and writes the key file. */
static int write_wallet(const ctl *c, const char *mnemonic, bool encrypt, ns_key *key)
{
    const char *bip39_pass = getenv("NEUROSHARD_BIP39_PASSPHRASE");
    uint8_t seed[NS_BIP39_SEED_BYTES];
    if (ns_bip39_seed(mnemonic, bip39_pass, seed) != NS_OK)
        return fail(EXIT_FAILED, "cannot derive the seed (is the BIP39 passphrase valid UTF-8?)");
    int rc = ns_key_from_seed(key, seed);
    sodium_memzero(seed, sizeof seed);
    if (rc != NS_OK)
        return fail(EXIT_FAILED, "cannot derive a key from this mnemonic: %s", ns_strerror(rc));
    char passphrase[256];
    int frc = keystore_passphrase(encrypt, passphrase, sizeof passphrase);
    if (frc != 0)
        return frc;
    if (ns_mkdir_p(c->data_dir) != NS_OK)
        return fail(EXIT_FAILED, "cannot create data directory %s: %s", c->data_dir,
                    strerror(errno));
    char path[PATH_MAX];
    if (key_path(c, path, sizeof path) != NS_OK)
        return fail(EXIT_FAILED, "data directory path is too long");
    rc = ns_keystore_create(path, key, passphrase[0] != '\0' ? passphrase : NULL);
    sodium_memzero(passphrase, sizeof passphrase);
    if (rc == NS_EEXIST)
        return fail(EXIT_FAILED, "a wallet already exists at %s; it is never overwritten", path);
    if (rc != NS_OK)
        return fail(EXIT_FAILED, "cannot write key file %s: %s", path, ns_strerror(rc));
    return 0;
}

static int refuse_existing_wallet(const ctl *c)
{
    char path[PATH_MAX];
    if (key_path(c, path, sizeof path) != NS_OK)
        return fail(EXIT_USAGE, "data directory path is too long");
    if (access(path, F_OK) == 0)
        return fail(EXIT_FAILED, "a wallet already exists at %s; it is never overwritten", path);
    return 0;
}

static void print_node_id(const ns_key *key)
{
    char hex[NS_NODE_ID_HEX_SIZE];
    ns_hex_encode(hex, sizeof hex, key->node_id, NS_NODE_ID_BYTES);
    printf("node id: %s\n", hex);
}

static int cmd_wallet_new(const ctl *c)
{
    static const char *const allowed[] = {"--words", "--encrypt", NULL};
    int rc = check_flags(c, 2, allowed, "neuroctl wallet new");
    if (rc != 0)
        return rc;
    unsigned words = 12;
    for (int i = 2; i < c->argc; i++) {
        if (strcmp(c->argv[i], "--words") != 0)
            continue;
        const char *v = i + 1 < c->argc ? c->argv[i + 1] : "";
        if (strcmp(v, "12") != 0 && strcmp(v, "24") != 0)
            return fail(EXIT_USAGE, "--words must be 12 or 24");
        words = (unsigned)atoi(v);
    }
    if ((rc = refuse_existing_wallet(c)) != 0)
        return rc;
    char mnemonic[NS_MNEMONIC_SIZE_MAX];
    if (ns_bip39_generate(words, mnemonic, sizeof mnemonic) != NS_OK)
        return fail(EXIT_FAILED, "cannot generate a mnemonic");
    ns_key key;
    rc = write_wallet(c, mnemonic, has_flag(c, "--encrypt"), &key);
    if (rc == 0) {
        printf("Your wallet's mnemonic. Write it down now: it is shown only this once, it is the\n"
               "only way to restore this node's identity and balance, and anyone who has it owns "
               "them.\n\n    %s\n\n",
               mnemonic);
        print_node_id(&key);
        printf("key file: %s/%s\n", c->data_dir, NS_KEYSTORE_FILE);
    }
    sodium_memzero(mnemonic, sizeof mnemonic);
    ns_key_wipe(&key);
    return rc;
}

/* Lowercases and joins the words of a line with single spaces. */
static void normalise_mnemonic(char *s)
{
    char *out = s;
    bool space = false;
    for (char *p = s; *p != '\0'; p++) {
        if (isspace((unsigned char)*p)) {
            space = out != s;
            continue;
        }
        if (space)
            *out++ = ' ';
        space = false;
        *out++ = (char)tolower((unsigned char)*p);
    }
    *out = '\0';
}

static int read_mnemonic(char *out, size_t out_size)
{
    if (isatty(STDIN_FILENO)) {
        if (ns_tty_read_secret("mnemonic: ", out, out_size) != NS_OK)
            return fail(EXIT_FAILED, "cannot read the mnemonic from the terminal");
    } else if (fgets(out, (int)out_size, stdin) == NULL) {
        return fail(EXIT_FAILED, "no mnemonic on stdin");
    } else if (strchr(out, '\n') == NULL && !feof(stdin)) {
        return fail(EXIT_FAILED, "the mnemonic line is too long");
    }
    normalise_mnemonic(out);
    return 0;
}

static int explain_bad_mnemonic(const char *mnemonic, int rc, int bad)
{
    if (rc == NS_EWORD) {
        const char *w = mnemonic;
        for (int i = 0; i < bad && w != NULL; i++) {
            w = strchr(w, ' ');
            w = w != NULL ? w + 1 : NULL;
        }
        int len = w != NULL ? (int)strcspn(w, " ") : 0;
        return fail(EXIT_FAILED, "word %d ('%.*s') is not in the BIP39 English list", bad + 1, len,
                    w != NULL ? w : "");
    }
    if (rc == NS_ECHECKSUM)
        return fail(EXIT_FAILED,
                    "the mnemonic's checksum does not match: a word is wrong or out of order");
    return fail(EXIT_FAILED, "a mnemonic has 12, 15, 18, 21 or 24 words");
}

static int cmd_wallet_restore(const ctl *c)
{
    static const char *const allowed[] = {"--encrypt", NULL};
    int rc = check_flags(c, 2, allowed, "neuroctl wallet restore");
    if (rc != 0 || (rc = refuse_existing_wallet(c)) != 0)
        return rc;
    char mnemonic[1024];
    if ((rc = read_mnemonic(mnemonic, sizeof mnemonic)) != 0)
        return rc;
    int bad = -1;
    int check = ns_bip39_check(mnemonic, &bad);
    if (check != NS_OK) {
        rc = explain_bad_mnemonic(mnemonic, check, bad);
        sodium_memzero(mnemonic, sizeof mnemonic);
        return rc;
    }
    ns_key key;
    rc = write_wallet(c, mnemonic, has_flag(c, "--encrypt"), &key);
    sodium_memzero(mnemonic, sizeof mnemonic);
    if (rc == 0) {
        printf("wallet restored\n");
        print_node_id(&key);
    }
    ns_key_wipe(&key);
    return rc;
}

static int cmd_wallet_show(const ctl *c)
{
    static const char *const allowed[] = {NULL};
    int rc = check_flags(c, 2, allowed, "neuroctl wallet show");
    if (rc != 0)
        return rc;
    char path[PATH_MAX];
    if (key_path(c, path, sizeof path) != NS_OK)
        return fail(EXIT_USAGE, "data directory path is too long");
    bool encrypted;
    uint8_t node_id[NS_NODE_ID_BYTES];
    rc = ns_keystore_peek(path, &encrypted, node_id);
    if (rc == NS_ENOENT)
        return fail(EXIT_FAILED, "no wallet at %s: create one with 'neuroctl wallet new'", path);
    if (rc != NS_OK)
        return fail(EXIT_FAILED, "cannot read key file %s: %s", path, ns_strerror(rc));
    char hex[NS_NODE_ID_HEX_SIZE];
    ns_hex_encode(hex, sizeof hex, node_id, NS_NODE_ID_BYTES);
    printf("node id:   %s\nkey file:  %s\nencrypted: %s\n", hex, path, encrypted ? "yes" : "no");
    return 0;
}

/* ---- talking to the node ------------------------------------------------------------------ */

typedef struct http_body {
    char *buf;
    size_t len;
    bool too_big;
} http_body;

static size_t http_collect(char *data, size_t size, size_t nmemb, void *user)
{
    http_body *b = user;
    size_t n = size * nmemb;
    if (b->len + n > HTTP_BODY_BYTES_MAX) {
        b->too_big = true;
        return 0;
    }
    char *grown = realloc(b->buf, b->len + n + 1);
    if (grown == NULL)
        return 0;
    memcpy(grown + b->len, data, n);
    b->buf = grown;
    b->len += n;
    b->buf[b->len] = '\0';
    return n;
}

static int read_data_file(const ctl *c, const char *name, char *out, size_t out_size)
{
    char path[PATH_MAX + 32];
    int n = snprintf(path, sizeof path, "%s/%s", c->data_dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return NS_EINVAL;
    uint8_t *buf;
    size_t len;
    int rc = ns_file_read(path, out_size - 1, &buf, &len);
    if (rc != NS_OK)
        return rc;
    memcpy(out, buf, len + 1);
    free(buf);
    out[strcspn(out, "\r\n")] = '\0';
    return NS_OK;
}

/* Sends one request to the node, with data as the body of a POST (""  for none); on success
 * *status and *body (malloc'd, NUL-terminated). */
static int http_call_body(const ctl *c, const char *method, const char *path, const char *data,
                          long *status, char **body)
{
    char addr[NS_HOST_SIZE + 16];
    if (c->api != NULL)
        snprintf(addr, sizeof addr, "%s", c->api);
    else if (read_data_file(c, NS_API_ADDR_FILE, addr, sizeof addr) != NS_OK)
        return fail(EXIT_FAILED, "no node is running on %s (no %s there)", c->data_dir,
                    NS_API_ADDR_FILE);
    char url[sizeof addr + 128];
    snprintf(url, sizeof url, "http://%s%s", addr, path);
    CURL *curl = curl_easy_init();
    if (curl == NULL)
        return fail(EXIT_FAILED, "cannot start libcurl");
    http_body b = {0};
    struct curl_slist *headers = NULL;
    if (strcmp(method, "POST") == 0) {
        char token[NS_API_TOKEN_HEX_SIZE + 1];
        char header[NS_API_TOKEN_HEX_SIZE + 32];
        if (read_data_file(c, NS_API_TOKEN_FILE, token, sizeof token) != NS_OK) {
            curl_easy_cleanup(curl);
            return fail(EXIT_FAILED, "cannot read the API token in %s", c->data_dir);
        }
        snprintf(header, sizeof header, "Authorization: Bearer %s", token);
        headers = curl_slist_append(headers, header);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, data);
        sodium_memzero(header, sizeof header);
        sodium_memzero(token, sizeof token);
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, http_timeout_s);
    curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, http_collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
    CURLcode cc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    if (cc != CURLE_OK) {
        free(b.buf);
        return fail(EXIT_FAILED, "no node answers at %s: %s (is neuroshardd running?)", addr,
                    b.too_big ? "answer too large" : curl_easy_strerror(cc));
    }
    *body = b.buf != NULL ? b.buf : strdup("");
    return 0;
}

static int http_call(const ctl *c, const char *method, const char *path, long *status, char **body)
{
    return http_call_body(c, method, path, "", status, body);
}

static int api_error(long status, const char *body)
{
    json_t *j = json_loads(body, 0, NULL);
    const char *msg = j != NULL ? json_string_value(json_object_get(j, "error")) : NULL;
    int rc = fail(EXIT_FAILED, "the node answered %ld: %s", status, msg != NULL ? msg : body);
    json_decref(j);
    return rc;
}

static int cmd_status(const ctl *c)
{
    static const char *const allowed[] = {"--json", NULL};
    int rc = check_flags(c, 1, allowed, "neuroctl status");
    if (rc != 0)
        return rc;
    long status = 0;
    char *body = NULL;
    if ((rc = http_call(c, "GET", "/api/stats", &status, &body)) != 0)
        return rc;
    if (status != 200) {
        rc = api_error(status, body);
        free(body);
        return rc;
    }
    json_t *j = json_loads(body, 0, NULL);
    if (has_flag(c, "--json") || j == NULL) {
        printf("%s\n", body);
    } else {
        printf("node id        %s\n", json_string_value(json_object_get(j, "node_id")));
        printf("version        %s\n", json_string_value(json_object_get(j, "version")));
        printf("state          %s\n", json_string_value(json_object_get(j, "state")));
        printf("uptime         %llds\n",
               (long long)json_integer_value(json_object_get(j, "uptime_s")));
        printf("peers          %lld\n", (long long)json_integer_value(json_object_get(j, "peers")));
        printf("balance        %s NEURO\n", json_string_value(json_object_get(j, "balance")));
        printf("stake          %s NEURO\n", json_string_value(json_object_get(j, "stake")));
        printf("ledger height  %lld\n",
               (long long)json_integer_value(json_object_get(j, "ledger_height")));
        printf("api            http://%s\n", json_string_value(json_object_get(j, "api")));
    }
    json_decref(j);
    free(body);
    return 0;
}

/* GETs path and parses the JSON answer; on failure prints why and returns non-zero. */
static int get_json(const ctl *c, const char *path, json_t **out, char **raw)
{
    long status = 0;
    char *body = NULL;
    int rc = http_call(c, "GET", path, &status, &body);
    if (rc != 0)
        return rc;
    if (status != 200) {
        rc = api_error(status, body);
        free(body);
        return rc;
    }
    *out = json_loads(body, 0, NULL);
    if (*out == NULL) {
        free(body);
        return fail(EXIT_FAILED, "the node's answer is not JSON");
    }
    *raw = body;
    return 0;
}

static int cmd_peers(const ctl *c)
{
    static const char *const allowed[] = {"--json", NULL};
    int rc = check_flags(c, 1, allowed, "neuroctl peers");
    json_t *j = NULL;
    char *raw = NULL;
    if (rc != 0 || (rc = get_json(c, "/api/peers", &j, &raw)) != 0)
        return rc;
    if (has_flag(c, "--json")) {
        printf("%s\n", raw);
    } else {
        json_t *peers = json_object_get(j, "peers");
        printf("%zu peers\n", json_array_size(peers));
        if (json_array_size(peers) > 0)
            printf("%-64s  %-22s  %9s  %5s  %s\n", "node id", "address", "seen ago", "fails",
                   "link");
        size_t i;
        json_t *p;
        json_array_foreach(peers, i, p)
        {
            printf("%-64s  %-22s  %8llds  %5lld  %s\n",
                   json_string_value(json_object_get(p, "node_id")),
                   json_string_value(json_object_get(p, "addr")),
                   (long long)json_integer_value(json_object_get(p, "last_seen_ms_ago")) / 1000,
                   (long long)json_integer_value(json_object_get(p, "fails")),
                   json_is_true(json_object_get(p, "link")) ? "yes" : "-");
        }
    }
    json_decref(j);
    free(raw);
    return 0;
}

static int doctor_line(bool ok, const char *what, const char *fmt, ...) NS_PRINTF(3, 4);

static int doctor_line(bool ok, const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%-4s %-11s ", ok ? "ok" : "FAIL", what);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    return ok ? 0 : 1;
}

static int doctor_seeds(json_t *seeds, bool lan)
{
    int bad = 0;
    size_t i;
    json_t *s;
    if (json_array_size(seeds) == 0)
        doctor_line(true, "bootstrap", "no seeds configured: %s",
                    lan ? "joining through the local network or starting a new swarm"
                        : "this node starts a new swarm (genesis) unless others bootstrap from it");
    json_array_foreach(seeds, i, s)
    {
        const char *seed = json_string_value(json_object_get(s, "seed"));
        const char *err = json_string_value(json_object_get(s, "resolve_error"));
        const char *id = json_string_value(json_object_get(s, "node_id"));
        if (err != NULL)
            bad |= doctor_line(false, "bootstrap", "%s: the name does not resolve (%s)", seed, err);
        else if (json_is_true(json_object_get(s, "answered")))
            doctor_line(true, "bootstrap", "%s answers (node %.16s…)", seed, id);
        else if (json_is_true(json_object_get(s, "refused")))
            bad |= doctor_line(false, "bootstrap",
                               "%s answers but was refused: another network (--network) or an "
                               "identity that does not check out",
                               seed);
        else
            bad |= doctor_line(false, "bootstrap",
                               "%s does not answer (%lld pings): is it running, and is UDP to its "
                               "port open?",
                               seed, (long long)json_integer_value(json_object_get(s, "pings")));
    }
    return bad;
}

static int cmd_doctor(const ctl *c)
{
    static const char *const allowed[] = {"--json", NULL};
    int rc = check_flags(c, 1, allowed, "neuroctl doctor");
    json_t *j = NULL;
    char *raw = NULL;
    if (rc != 0 || (rc = get_json(c, "/api/doctor", &j, &raw)) != 0)
        return rc;
    if (has_flag(c, "--json")) {
        printf("%s\n", raw);
        json_decref(j);
        free(raw);
        return 0;
    }
    int bad = 0;
    json_t *listen = json_object_get(j, "listening");
    doctor_line(true, "listening", "UDP and TCP on %s",
                json_string_value(json_object_get(listen, "addr")));
    bool lan = json_is_true(json_object_get(j, "lan_discovery"));
    bad |= doctor_seeds(json_object_get(j, "bootstrap"), lan);
    doctor_line(true, "lan", "%s", lan ? "discovery on (UDP multicast)" : "discovery off");
    json_t *peers = json_object_get(j, "peers");
    long long count = (long long)json_integer_value(json_object_get(peers, "count"));
    long long recent = (long long)json_integer_value(json_object_get(peers, "answered_last_10min"));
    bad |= doctor_line(count > 0, "peers",
                       "%lld in the routing table, %lld answered in the last 10 "
                       "minutes",
                       count, recent);
    json_t *reach = json_object_get(j, "reachable");
    const char *status = json_string_value(json_object_get(reach, "status"));
    const char *seen = json_string_value(json_object_get(j, "observed_addr"));
    if (status != NULL && strcmp(status, "yes") == 0)
        doctor_line(true, "reachable",
                    "a peer connected back to this node %llds ago (peers see "
                    "it at %s)",
                    (long long)json_integer_value(json_object_get(reach, "age_s")),
                    seen != NULL ? seen : "?");
    else if (status != NULL && strcmp(status, "no") == 0)
        bad |= doctor_line(false, "reachable",
                           "a peer could not connect back to %s: forward the TCP and UDP port on "
                           "your router, or peers can only be reached by you",
                           seen != NULL ? seen : "this node");
    else
        doctor_line(true, "reachable",
                    "not checked yet (needs one peer; checked every 10 minutes)");
    json_t *clock = json_object_get(j, "clock");
    long long skew = (long long)json_integer_value(json_object_get(clock, "median_skew_ms"));
    long long n = (long long)json_integer_value(json_object_get(clock, "peers"));
    if (n == 0)
        doctor_line(true, "clock", "no peers to compare with yet");
    else
        bad |= doctor_line(llabs(skew) < 30000, "clock",
                           "median skew against %lld peers %+lld ms%s", n, skew,
                           llabs(skew) < 30000 ? ""
                                               : ": set the clock right (NTP), or records "
                                                 "look expired or from the future");
    json_decref(j);
    free(raw);
    return bad != 0 ? EXIT_FAILED : 0;
}

/* The pipeline part of /training_status: role, stage, layers, schedule and the quorum. */
static void print_pipeline(json_t *j)
{
    json_t *p = json_object_get(j, "pipeline");
    json_t *q = json_object_get(j, "quorum");
    if (p != NULL) {
        printf("role          %s, stage %lld of %lld, layers %lld..%lld\n",
               json_string_value(json_object_get(j, "role")),
               (long long)json_integer_value(json_object_get(p, "stage")),
               (long long)json_integer_value(json_object_get(p, "stages")),
               (long long)json_integer_value(json_object_get(p, "layer_first")),
               (long long)json_integer_value(json_object_get(p, "layer_last")));
        printf("schedule      1F1B, %lld micro-batches of %lld rows; waiting %.0f%% of the time "
               "(1F1B's bubble: %.0f%%); inbox %.0f%% full\n",
               (long long)json_integer_value(json_object_get(p, "micro_batches")),
               (long long)json_integer_value(json_object_get(p, "rows")),
               100.0 * json_real_value(json_object_get(p, "bubble")),
               100.0 * json_real_value(json_object_get(p, "bubble_1f1b")),
               100.0 * json_real_value(json_object_get(p, "inbox_fill")));
    }
    bool pool = q != NULL && json_is_string(json_object_get(q, "mode")) &&
                strcmp(json_string_value(json_object_get(q, "mode")), "pool") == 0;
    const char *mode = q != NULL ? json_string_value(json_object_get(q, "contribution")) : NULL;
    if (mode != NULL && strcmp(mode, "async") == 0) {
        const char *tier = json_string_value(json_object_get(q, "tier"));
        printf("contribution  asynchronous: tier %s is too slow for a pipeline, so this node "
               "trains the whole model and submits its updates to its cohort\n",
               tier != NULL ? tier : "?");
        return;
    }
    if (q == NULL || !json_is_true(json_object_get(q, "in_quorum"))) {
        json_t *held = pool ? json_object_get(q, "held") : NULL;
        json_t *seen = pool ? json_object_get(q, "pool") : NULL;
        if (pool)
            printf("quorum        waiting: the pool knows %lld nodes; this node holds layers "
                   "%lld..%lld\n",
                   (long long)json_integer_value(json_object_get(seen, "nodes")),
                   (long long)json_integer_value(json_object_get(held, "layer_first")),
                   (long long)json_integer_value(json_object_get(held, "layer_last")));
        else if (q != NULL && json_integer_value(json_object_get(q, "quorum_size")) > 1)
            printf("quorum        waiting: %lld of %lld nodes known\n",
                   (long long)json_integer_value(json_object_get(q, "peers_known")) + 1,
                   (long long)json_integer_value(json_object_get(q, "quorum_size")));
        return;
    }
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(q, "members"), i, m)
    {
        printf("%-13s %lld %-10s layers %lld..%lld  %.16s…%s\n", i == 0 ? "quorum" : "",
               (long long)json_integer_value(json_object_get(m, "stage")),
               json_string_value(json_object_get(m, "role")),
               (long long)json_integer_value(json_object_get(m, "layer_first")),
               (long long)json_integer_value(json_object_get(m, "layer_last")),
               json_string_value(json_object_get(m, "node_id")),
               json_is_true(json_object_get(m, "self")) ? "  (this node)" : "");
    }
}

static int cmd_quorum(const ctl *c)
{
    static const char *const allowed[] = {"--json", NULL};
    int rc = check_flags(c, 1, allowed, "neuroctl quorum");
    json_t *j = NULL;
    char *raw = NULL;
    if (rc != 0 || (rc = get_json(c, "/training_status", &j, &raw)) != 0)
        return rc;
    json_t *q = json_object_get(j, "quorum");
    if (has_flag(c, "--json")) {
        char *text = q != NULL ? json_dumps(q, JSON_COMPACT) : NULL;
        printf("%s\n", text != NULL ? text : "null");
        free(text);
    } else if (q == NULL || (json_integer_value(json_object_get(q, "quorum_size")) <= 1 &&
                             json_object_get(q, "held") == NULL)) {
        printf("this node trains alone (--quorum-size 1)\n");
    } else {
        print_pipeline(j);
    }
    json_decref(j);
    free(raw);
    return 0;
}

static int cmd_train_switch(const ctl *c, bool on)
{
    long status = 0;
    char *body = NULL;
    int rc = http_call_body(c, "POST", "/api/train", on ? "{\"on\":true}" : "{\"on\":false}",
                            &status, &body);
    if (rc != 0)
        return rc;
    rc = status == 200 ? 0 : api_error(status, body);
    if (rc == 0)
        printf("training %s\n", on ? "started" : "stopped");
    free(body);
    return rc;
}

static int cmd_train(const ctl *c)
{
    const char *what = c->argc >= 2 ? c->argv[1] : "status";
    if (strcmp(what, "start") == 0 || strcmp(what, "stop") == 0) {
        static const char *const none[] = {NULL};
        int rc = check_flags(c, 2, none, "neuroctl train");
        return rc != 0 ? rc : cmd_train_switch(c, strcmp(what, "start") == 0);
    }
    if (strcmp(what, "status") != 0 && strncmp(what, "--", 2) != 0)
        return fail(EXIT_USAGE, "unknown train command '%s' (status, start or stop)", what);
    static const char *const allowed[] = {"--json", NULL};
    int rc = check_flags(c, strcmp(what, "status") == 0 ? 2 : 1, allowed, "neuroctl train");
    json_t *j = NULL;
    char *raw = NULL;
    if (rc != 0 || (rc = get_json(c, "/training_status", &j, &raw)) != 0)
        return rc;
    if (has_flag(c, "--json")) {
        printf("%s\n", raw);
    } else if (!json_is_true(json_object_get(j, "enabled"))) {
        printf("training      %s\n", json_string_value(json_object_get(j, "phase")));
        print_pipeline(j);
    } else {
        json_t *m = json_object_get(j, "model");
        const char *err = json_string_value(json_object_get(j, "error"));
        printf("phase         %s%s\n", json_string_value(json_object_get(j, "phase")),
               json_is_true(json_object_get(j, "running")) ? "" : " (switched off)");
        if (err != NULL && err[0] != '\0')
            printf("error         %s\n", err);
        printf("model         %lld layers x %lld hidden, vocab %lld, %lld parameters\n",
               (long long)json_integer_value(json_object_get(m, "layers")),
               (long long)json_integer_value(json_object_get(m, "hidden")),
               (long long)json_integer_value(json_object_get(m, "vocab")),
               (long long)json_integer_value(json_object_get(m, "params")));
        printf("step          %lld (checkpoint at %lld)\n",
               (long long)json_integer_value(json_object_get(j, "step")),
               (long long)json_integer_value(json_object_get(j, "checkpoint_step")));
        printf("loss          %.4f (validation %.4f)\n",
               json_real_value(json_object_get(j, "loss")),
               json_real_value(json_object_get(j, "val_loss")));
        printf("speed         %.0f tokens/s, ETA %llds\n",
               json_real_value(json_object_get(j, "tokens_per_s")),
               (long long)json_integer_value(json_object_get(j, "eta_s")));
        print_pipeline(j);
    }
    json_decref(j);
    free(raw);
    return 0;
}

/* ---- generate ----------------------------------------------------------------------------- */

#define GENERATE_STDIN_MAX 16384

/* value of an option taking a number: a finite real, or an integer with integer_only */
static int option_number(const char *name, const char *text, bool integer_only, json_t **out)
{
    char *end = NULL;
    errno = 0;
    if (integer_only) {
        long long v = strtoll(text, &end, 10);
        if (errno == 0 && end != text && *end == '\0' && v >= 0) {
            *out = json_integer(v);
            return 0;
        }
        return fail(EXIT_USAGE, "%s needs a whole number >= 0, not '%s'", name, text);
    }
    double v = strtod(text, &end);
    if (errno == 0 && end != text && *end == '\0' && isfinite(v)) {
        *out = json_real(v);
        return 0;
    }
    return fail(EXIT_USAGE, "%s needs a number, not '%s'", name, text);
}

/* The prompt from stdin, up to GENERATE_STDIN_MAX bytes; malloc'd, NULL on failure. */
static char *read_stdin_prompt(void)
{
    char *buf = malloc(GENERATE_STDIN_MAX + 2);
    if (buf == NULL)
        return NULL;
    size_t n = fread(buf, 1, GENERATE_STDIN_MAX + 1, stdin);
    if (n > GENERATE_STDIN_MAX) {
        free(buf);
        fail(EXIT_USAGE, "the prompt on stdin is longer than %d bytes", GENERATE_STDIN_MAX);
        return NULL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    return buf;
}

static int print_generation(const char *prompt, json_t *j)
{
    const char *text = json_string_value(json_object_get(j, "text"));
    if (text == NULL)
        return fail(EXIT_FAILED, "the node's answer has no text");
    printf("%s%s\n", prompt, text);
    fprintf(stderr, "[%lld tokens in %.2f s, %.0f tokens/s; model step %lld, seed %lld; %s]\n",
            (long long)json_integer_value(json_object_get(j, "generated_tokens")),
            json_real_value(json_object_get(j, "seconds")),
            json_real_value(json_object_get(j, "tokens_per_s")),
            (long long)json_integer_value(json_object_get(j, "step")),
            (long long)json_integer_value(json_object_get(j, "seed")),
            json_string_value(json_object_get(j, "finish_reason")));
    return 0;
}

static int cmd_generate(const ctl *c)
{
    static const struct {
        const char *flag, *field;
        bool integer;
    } options[] = {{"--max-tokens", "max_tokens", true},
                   {"--temperature", "temperature", false},
                   {"--top-k", "top_k", true},
                   {"--top-p", "top_p", false},
                   {"--seed", "seed", true}};
    json_t *req = json_object();
    const char *prompt = NULL;
    bool as_json = false;
    int rc = 0;
    for (int i = 1; i < c->argc && rc == 0; i++) {
        const char *a = c->argv[i];
        size_t k = 0;
        while (k < sizeof options / sizeof options[0] && strcmp(a, options[k].flag) != 0)
            k++;
        if (k < sizeof options / sizeof options[0]) {
            json_t *v = NULL;
            if (i + 1 >= c->argc)
                rc = fail(EXIT_USAGE, "%s needs a value", a);
            else if ((rc = option_number(a, c->argv[++i], options[k].integer, &v)) == 0)
                json_object_set_new(req, options[k].field, v);
        } else if (strcmp(a, "--json") == 0) {
            as_json = true;
        } else if (strncmp(a, "--", 2) == 0) {
            rc = fail(EXIT_USAGE, "unknown option '%s' (see 'neuroctl generate --help')", a);
        } else if (prompt != NULL) {
            rc = fail(EXIT_USAGE, "give the prompt as one argument (quote it)");
        } else {
            prompt = a;
        }
    }
    char *owned = NULL;
    if (rc == 0 && (prompt == NULL || strcmp(prompt, "-") == 0)) {
        owned = read_stdin_prompt();
        prompt = owned;
        if (owned == NULL)
            rc = EXIT_USAGE;
    }
    if (rc == 0 && prompt[0] == '\0')
        rc = fail(EXIT_USAGE, "the prompt is empty");
    char *data = NULL;
    if (rc == 0) {
        json_object_set_new(req, "prompt", json_string(prompt));
        data = json_dumps(req, JSON_COMPACT);
        if (data == NULL)
            rc = fail(EXIT_USAGE, "the prompt is not valid UTF-8");
    }
    long status = 0;
    char *body = NULL;
    http_timeout_s = GENERATE_TIMEOUT_S;
    if (rc == 0)
        rc = http_call_body(c, "POST", "/generate_text", data, &status, &body);
    if (rc == 0 && status != 200)
        rc = api_error(status, body);
    if (rc == 0 && as_json) {
        printf("%s\n", body);
    } else if (rc == 0) {
        json_t *j = json_loads(body, 0, NULL);
        rc = j != NULL ? print_generation(prompt, j)
                       : fail(EXIT_FAILED, "the node's answer is not JSON");
        json_decref(j);
    }
    free(body);
    free(data);
    free(owned);
    json_decref(req);
    return rc;
}

/* ---- wallet, ledger, proofs ---------------------------------------------------------------- */

static int print_wallet(json_t *j)
{
    printf("account   %s\n", json_string_value(json_object_get(j, "node_id")));
    printf("balance   %s NEURO\n", json_string_value(json_object_get(j, "balance")));
    printf("stake     %s NEURO%s\n", json_string_value(json_object_get(j, "stake")),
           json_is_true(json_object_get(j, "frozen")) ? "   (frozen: the account forked)" : "");
    const char *debt = json_string_value(json_object_get(j, "debt"));
    if (debt != NULL && strspn(debt, "0.") != strlen(debt))
        printf("debt      %s NEURO   (slashed for fraud: owed beyond what it held)\n", debt);
    json_t *h = json_object_get(j, "history");
    size_t i;
    json_t *e;
    json_array_foreach(h, i, e)
    {
        const char *to = json_string_value(json_object_get(e, "to"));
        printf("  #%-6lld %-8s %18s%s%.16s\n",
               (long long)json_integer_value(json_object_get(e, "sequence")),
               json_string_value(json_object_get(e, "kind")),
               json_string_value(json_object_get(e, "amount")), to != NULL ? "  to " : "",
               to != NULL ? to : "");
    }
    return 0;
}

static int post_and_print(const ctl *c, const char *path, json_t *body, bool wallet_answer)
{
    char *data = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (data == NULL)
        return fail(EXIT_FAILED, "out of memory");
    long status = 0;
    char *raw = NULL;
    int rc = http_call_body(c, "POST", path, data, &status, &raw);
    free(data);
    if (rc == 0 && status != 200)
        rc = api_error(status, raw);
    if (rc == 0 && has_flag(c, "--json")) {
        printf("%s\n", raw);
    } else if (rc == 0) {
        json_t *j = json_loads(raw, 0, NULL);
        if (j == NULL)
            rc = fail(EXIT_FAILED, "the node's answer is not JSON");
        else if (wallet_answer)
            rc = print_wallet(j);
        else
            printf("sent: entry %s, %s NEURO burned\n",
                   json_string_value(json_object_get(j, "entry")),
                   json_string_value(json_object_get(j, "burned")));
        json_decref(j);
    }
    free(raw);
    return rc;
}

/* An AMOUNT argument: checked here so that a typo never reaches the node. */
static int amount_arg(const char *text, json_t **out)
{
    ns_neuro n;
    if (ns_neuro_parse(text, &n) != NS_OK || n.nano <= 0)
        return fail(EXIT_USAGE, "'%s' is not an amount of NEURO (like 12 or 0.5)", text);
    *out = json_string(text);
    return 0;
}

static int cmd_wallet_money(const ctl *c)
{
    const char *what = c->argv[1];
    static const char *const json_only[] = {"--json", NULL};
    if (strcmp(what, "balance") == 0 || strcmp(what, "history") == 0) {
        int first = 2;
        char path[64] = "/api/wallet";
        if (c->argc >= 4 && strcmp(c->argv[2], "--limit") == 0) {
            char *end;
            long n = strtol(c->argv[3], &end, 10);
            if (*end != '\0' || n < 1 || n > 1000)
                return fail(EXIT_USAGE, "--limit needs a number 1..1000");
            snprintf(path, sizeof path, "/api/wallet?limit=%ld", n);
            first = 4;
        } else if (strcmp(what, "balance") == 0) {
            snprintf(path, sizeof path, "/api/wallet?limit=5");
        }
        int rc = check_flags(c, first, json_only, "neuroctl wallet");
        json_t *j = NULL;
        char *raw = NULL;
        if (rc != 0 || (rc = get_json(c, path, &j, &raw)) != 0)
            return rc;
        if (has_flag(c, "--json"))
            printf("%s\n", raw);
        else
            rc = print_wallet(j);
        json_decref(j);
        free(raw);
        return rc;
    }
    json_t *amount = NULL;
    if (strcmp(what, "send") == 0) {
        if (c->argc < 4)
            return fail(EXIT_USAGE, "usage: neuroctl wallet send NODE_ID AMOUNT");
        uint8_t id[NS_NODE_ID_BYTES];
        if (ns_hex_decode(id, sizeof id, c->argv[2]) != NS_OK)
            return fail(EXIT_USAGE, "'%s' is not a node id (64 hex digits)", c->argv[2]);
        int rc = amount_arg(c->argv[3], &amount);
        if (rc == 0)
            rc = check_flags(c, 4, json_only, "neuroctl wallet send");
        if (rc != 0) {
            json_decref(amount);
            return rc;
        }
        return post_and_print(c, "/api/wallet/send",
                              json_pack("{s:s, s:o}", "to", c->argv[2], "amount", amount), false);
    }
    if (c->argc < 3)
        return fail(EXIT_USAGE, "usage: neuroctl wallet %s AMOUNT", what);
    int rc = amount_arg(c->argv[2], &amount);
    if (rc == 0)
        rc = check_flags(c, 3, json_only, "neuroctl wallet");
    if (rc != 0) {
        json_decref(amount);
        return rc;
    }
    return post_and_print(c,
                          strcmp(what, "stake") == 0 ? "/api/wallet/stake" : "/api/wallet/unstake",
                          json_pack("{s:o}", "amount", amount), true);
}

typedef struct check_view {
    bool ok;
    long long entries, accounts;
    const char *minted, *burned, *held, *problem;
} check_view;

static int print_check(const check_view *v)
{
    printf("%s: %lld entries of %lld accounts replayed from genesis\n",
           v->ok ? "ledger ok" : "LEDGER PROBLEM", v->entries, v->accounts);
    printf("minted %s, burned %s, held %s NEURO\n", v->minted, v->burned, v->held);
    if (!v->ok)
        printf("problem: %s\n", v->problem);
    return v->ok ? 0 : EXIT_FAILED;
}

static int print_report(const ctl *c, json_t *j, const char *raw)
{
    check_view v = {.ok = json_is_true(json_object_get(j, "ok")),
                    .entries = (long long)json_integer_value(json_object_get(j, "entries")),
                    .accounts = (long long)json_integer_value(json_object_get(j, "accounts")),
                    .minted = json_string_value(json_object_get(j, "minted")),
                    .burned = json_string_value(json_object_get(j, "burned")),
                    .held = json_string_value(json_object_get(j, "held")),
                    .problem = json_string_value(json_object_get(j, "problem"))};
    if (has_flag(c, "--json")) {
        printf("%s\n", raw);
        return v.ok ? 0 : EXIT_FAILED;
    }
    return print_check(&v);
}

/* No node running: open the file (it must exist: a check never creates a ledger). */
static int ledger_check_offline(const ctl *c)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/%s", c->data_dir, NS_LEDGER_FILE);
    struct stat st;
    if (stat(path, &st) != 0)
        return fail(EXIT_FAILED, "no ledger at %s", path);
    ns_ledger *l;
    int rc = ns_ledger_open(path, &l);
    if (rc != NS_OK)
        return fail(EXIT_FAILED, "cannot open %s: %s", path, ns_strerror(rc));
    ns_ledger_report r;
    rc = ns_ledger_check(l, &r);
    ns_ledger_close(l);
    if (rc != NS_OK)
        return fail(EXIT_FAILED, "cannot check %s: %s", path, ns_strerror(rc));
    char m[NS_NEURO_FORMAT_SIZE], b[NS_NEURO_FORMAT_SIZE], h[NS_NEURO_FORMAT_SIZE];
    ns_neuro_format(m, sizeof m, r.minted);
    ns_neuro_format(b, sizeof b, r.burned);
    ns_neuro_format(h, sizeof h, r.held);
    check_view v = {.ok = r.ok,
                    .entries = (long long)r.entries,
                    .accounts = (long long)r.accounts,
                    .minted = m,
                    .burned = b,
                    .held = h,
                    .problem = r.problem};
    return print_check(&v);
}

static int cmd_ledger(const ctl *c)
{
    static const char *const json_only[] = {"--json", NULL};
    if (c->argc < 2 || strcmp(c->argv[1], "check") != 0)
        return fail(EXIT_USAGE, "usage: neuroctl ledger check [--json]");
    int rc = check_flags(c, 2, json_only, "neuroctl ledger check");
    if (rc != 0)
        return rc;
    char addr[64];
    if (c->api == NULL && read_data_file(c, NS_API_ADDR_FILE, addr, sizeof addr) != NS_OK)
        return ledger_check_offline(c);
    json_t *j = NULL;
    char *raw = NULL;
    http_timeout_s = GENERATE_TIMEOUT_S;
    if ((rc = get_json(c, "/api/ledger/check", &j, &raw)) != 0)
        return rc;
    rc = print_report(c, j, raw);
    json_decref(j);
    free(raw);
    return rc;
}

static int cmd_ponw(const ctl *c)
{
    static const char *const json_only[] = {"--json", NULL};
    int rc = check_flags(c, 1, json_only, "neuroctl ponw");
    json_t *j = NULL;
    char *raw = NULL;
    if (rc != 0 || (rc = get_json(c, "/api/ponw", &j, &raw)) != 0)
        return rc;
    if (has_flag(c, "--json")) {
        printf("%s\n", raw);
    } else {
        printf("proofs made %lld, claimed %lld, claims refused %lld\n",
               (long long)json_integer_value(json_object_get(j, "proofs_made")),
               (long long)json_integer_value(json_object_get(j, "claims_made")),
               (long long)json_integer_value(json_object_get(j, "claims_refused")));
        printf("verdicts on proofs received:");
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(j, "verdicts"), k, v)
        {
            if (json_integer_value(v) != 0)
                printf(" %s %lld", k, (long long)json_integer_value(v));
        }
        printf("\n");
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(j, "proofs"), i, p)
        {
            printf("  %.16s  by %.16s  %-9s %s\n", json_string_value(json_object_get(p, "id")),
                   json_string_value(json_object_get(p, "author")),
                   json_string_value(json_object_get(p, "kind")),
                   json_string_value(json_object_get(p, "status")));
        }
    }
    json_decref(j);
    free(raw);
    return 0;
}

static int cmd_reload(const ctl *c)
{
    static const char *const allowed[] = {NULL};
    int rc = check_flags(c, 1, allowed, "neuroctl reload");
    if (rc != 0)
        return rc;
    long status = 0;
    char *body = NULL;
    if ((rc = http_call(c, "POST", "/api/reload", &status, &body)) != 0)
        return rc;
    rc = status == 200 ? 0 : api_error(status, body);
    if (rc == 0)
        printf("the node re-read its configuration\n");
    free(body);
    return rc;
}

/* ---- dispatch ----------------------------------------------------------------------------- */

typedef struct command {
    const char *word1, *word2;
    int (*run)(const ctl *c);
    const char *usage;
} command;

static const command commands[] = {
    {"wallet", "new", cmd_wallet_new, usage_wallet_new},
    {"wallet", "restore", cmd_wallet_restore, usage_wallet_restore},
    {"wallet", "show", cmd_wallet_show, usage_wallet_show},
    {"status", NULL, cmd_status, usage_status},
    {"reload", NULL, cmd_reload, usage_reload},
    {"peers", NULL, cmd_peers, usage_peers},
    {"doctor", NULL, cmd_doctor, usage_doctor},
    {"train", NULL, cmd_train, usage_train},
    {"generate", NULL, cmd_generate, usage_generate},
    {"wallet", "balance", cmd_wallet_money, usage_wallet_money},
    {"wallet", "history", cmd_wallet_money, usage_wallet_money},
    {"wallet", "send", cmd_wallet_money, usage_wallet_money},
    {"wallet", "stake", cmd_wallet_money, usage_wallet_money},
    {"wallet", "unstake", cmd_wallet_money, usage_wallet_money},
    {"ledger", NULL, cmd_ledger, usage_ledger},
    {"ponw", NULL, cmd_ponw, usage_ponw},
    {"quorum", NULL, cmd_quorum, usage_quorum},
};

static int parse_global(ctl *c, int argc, char *argv[], bool *help)
{
    const char *dir = getenv("NEUROSHARD_DATA_DIR");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *help = true;
        } else if (strcmp(a, "--data-dir") == 0 || strcmp(a, "--api") == 0) {
            if (i + 1 >= argc)
                return fail(EXIT_USAGE, "%s needs a value", a);
            if (strcmp(a, "--api") == 0)
                c->api = argv[++i];
            else
                dir = argv[++i];
        } else if (c->argc == ARGS_MAX) {
            return fail(EXIT_USAGE, "too many arguments");
        } else {
            c->argv[c->argc++] = a;
        }
    }
    if (dir != NULL && dir[0] != '\0') {
        if (strlen(dir) >= sizeof c->data_dir)
            return fail(EXIT_USAGE, "--data-dir is too long");
        strcpy(c->data_dir, dir);
    } else if (ns_default_data_dir(c->data_dir, sizeof c->data_dir) != NS_OK) {
        return fail(EXIT_USAGE, "no data directory: set --data-dir or HOME");
    }
    return 0;
}

int main(int argc, char *argv[])
{
    static ctl c;
    bool help = false;
    int rc = parse_global(&c, argc, argv, &help);
    if (rc != 0)
        return rc;
    if (c.argc == 0) {
        fputs(usage_main, help ? stdout : stderr);
        return help ? 0 : EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const command *cmd = &commands[i];
        if (strcmp(cmd->word1, c.argv[0]) != 0)
            continue;
        if (cmd->word2 != NULL && (c.argc < 2 || strcmp(cmd->word2, c.argv[1]) != 0))
            continue;
        if (help) {
            fputs(cmd->usage, stdout);
            return 0;
        }
        if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return fail(EXIT_FAILED, "cannot initialise libsodium or libcurl");
        rc = cmd->run(&c);
        curl_global_cleanup();
        return rc;
    }
    if (help) {
        fputs(usage_main, stdout);
        return 0;
    }
    return fail(EXIT_USAGE, "unknown command '%s%s%s' (see 'neuroctl --help')", c.argv[0],
                c.argc > 1 ? " " : "", c.argc > 1 ? c.argv[1] : "");
}
