#!/bin/sh
# fuzz.sh SECONDS: build every tests/fuzz/fuzz_*.c as a libFuzzer target and run each for SECONDS.
#
# The library is rebuilt with clang under AddressSanitizer + UBSan into build-fuzz/. Crashes are
# written to build-fuzz/crashes/; a crash fails the run and names the input that replays it.
set -eu
seconds=${1:-20}
bd=build-fuzz
# fuzzer-no-link: the library is instrumented for coverage too, so the fuzzer sees inside it.
make --no-print-directory BUILD=$bd CC=clang SAN=1 EXTRA_CFLAGS=-fsanitize=fuzzer-no-link \
    $bd/libneuroshard.a $bd/libneuroshard-node.a
mkdir -p $bd/fuzz $bd/crashes
libs=$(pkg-config --libs libuv libsodium libsecp256k1 sqlite3 libprotobuf-c libmicrohttpd jansson \
    inih libsystemd icu-uc libcurl openblas libzstd)
status=0
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    bin=$bd/fuzz/$name
    clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
        -I$bd/gen "$src" $bd/libneuroshard-node.a $bd/libneuroshard.a $libs -lm -o "$bin"
    corpus=$bd/fuzz/$name.corpus
    mkdir -p "$corpus"
    echo "== $name for ${seconds}s"
    if ! "$bin" -max_total_time="$seconds" -max_len=70000 -artifact_prefix=$bd/crashes/$name- \
        "$corpus" 2>$bd/fuzz/$name.log; then
        echo "fuzz: $name FAILED; see $bd/fuzz/$name.log and $bd/crashes/" >&2
        status=1
    fi
    tail -1 $bd/fuzz/$name.log
done
exit $status
