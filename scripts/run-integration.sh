#!/bin/sh
# run-integration.sh BUILD: run every tests/integration/test_*.sh against BUILD's binaries.
set -u
export BUILD=${1:-build}
failed=""
for t in tests/integration/test_*.sh; do
    echo "== $t (BUILD=$BUILD)"
    if ! sh "$t"; then
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "integration tests FAILED:$failed" >&2
    exit 1
fi
echo "integration tests: all passed"
