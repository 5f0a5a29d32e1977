/*
 * unlock.c: opening the key file the way a person expects, for the daemon and neuroctl alike.
 *
 * The passphrase of an encrypted key file comes from NEUROSHARD_PASSPHRASE, else from a prompt on
 * the terminal; without either the answer is a clear refusal, never a guess. Every failure gets
 * one line that says what is wrong with which file and what to do.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sodium.h>
#include <sys/stat.h>

#include "neuroshard/crypto.h"

#define PASSPHRASE_SIZE_MAX 1024

int ns_keystore_unlock(const char *path, ns_key *key, char err[512])
{
    bool encrypted;
    uint8_t node_id[NS_NODE_ID_BYTES];
    int rc = ns_keystore_peek(path, &encrypted, node_id);
    if (rc == NS_ENOENT) {
        snprintf(err, 512, "no key file at %s", path);
        return rc;
    }
    char passphrase[PASSPHRASE_SIZE_MAX] = "";
    if (rc == NS_OK && encrypted) {
        const char *env = getenv("NEUROSHARD_PASSPHRASE");
        if (env != NULL) {
            snprintf(passphrase, sizeof passphrase, "%s", env);
        } else if (ns_tty_read_secret("passphrase for the key file: ", passphrase,
                                      sizeof passphrase) != NS_OK) {
            snprintf(err, 512,
                     "key file %s is encrypted: set NEUROSHARD_PASSPHRASE or run on a terminal",
                     path);
            return NS_EPASSPHRASE;
        }
    }
    if (rc == NS_OK)
        rc = ns_keystore_load(path, encrypted ? passphrase : NULL, key);
    sodium_memzero(passphrase, sizeof passphrase);
    struct stat st;
    switch (rc) {
    case NS_OK:
        return NS_OK;
    case NS_EPERM:
        if (stat(path, &st) == 0)
            snprintf(err, 512, "key file %s is open to others (mode %03o): run 'chmod 600 %s'",
                     path, (unsigned)(st.st_mode & 0777), path);
        else
            snprintf(err, 512, "key file %s: permissions are wrong", path);
        return rc;
    case NS_EPASSPHRASE:
        snprintf(err, 512, "wrong passphrase for the key file %s", path);
        return rc;
    case NS_ECORRUPT:
        snprintf(err, 512, "key file %s is corrupt or not a neuroshard key file", path);
        return rc;
    default:
        snprintf(err, 512, "cannot read key file %s: %s", path, ns_strerror(rc));
        return rc;
    }
}
