#!/bin/sh
# run-unit.sh BIN...: run each cmocka test binary, print its summary, fail if any failed.
set -u
failed=""
for t in "$@"; do
    echo "== $t"
    if ! "$t"; then
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "unit tests FAILED:$failed" >&2
    exit 1
fi
echo "unit tests: all $# binaries passed"
