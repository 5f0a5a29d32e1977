/*
 * error.c: the text of every NS_E* code, and the assertion failure path.
 *
 * Kept in one table indexed by the negated code so that adding a code without its text fails the
 * static assertion below instead of printing "unknown error" at runtime.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "neuroshard/base.h"

static const char *const error_text[NS_ERR_COUNT_] = {
    [0] = "ok",
    [-NS_EINVAL] = "invalid argument or input",
    [-NS_ENOMEM] = "out of memory",
    [-NS_EIO] = "input/output error",
    [-NS_ENOENT] = "no such file or item",
    [-NS_EEXIST] = "already exists",
    [-NS_EPERM] = "permissions are wrong",
    [-NS_ETOOBIG] = "input too large",
    [-NS_EPARSE] = "malformed input",
    [-NS_EWORD] = "word not in the BIP39 list",
    [-NS_ECHECKSUM] = "mnemonic checksum does not match",
    [-NS_EBADSIG] = "bad signature",
    [-NS_EAUTHOR] = "signer is not the author",
    [-NS_EEXPIRED] = "record expired",
    [-NS_EFUTURE] = "timestamp is in the future",
    [-NS_EPASSPHRASE] = "wrong passphrase",
    [-NS_ECORRUPT] = "file is corrupt",
    [-NS_EFOREIGN] = "file belongs to another program or a newer version",
    [-NS_ELOCKED] = "locked by another process",
    [-NS_EADDRINUSE] = "address already in use",
    [-NS_ECRYPTO] = "cryptographic failure",
    [-NS_EOVERFLOW] = "arithmetic overflow",
    [-NS_ELIMIT] = "limit reached",
    [-NS_EFORK] = "the account forked (two entries with one sequence)",
    [-NS_EWAIT] = "not yet: it waits for something to be done first",
};

static_assert(-NS_EWAIT + 1 == NS_ERR_COUNT_, "every error code needs its text");

const char *ns_strerror(int err)
{
    if (err > 0 || -err >= NS_ERR_COUNT_ || error_text[-err] == NULL)
        return "unknown error";
    return error_text[-err];
}

void ns__assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "neuroshard: assertion failed: %s (%s:%d)\n", cond, file, line);
    fflush(stderr);
    abort();
}
