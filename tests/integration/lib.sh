# lib.sh: helpers for the integration tests, which start real neuroshardd processes.
#
# Sourced by tests/integration/test_*.sh. Every daemon a test starts runs in its own temporary
# data directory on a free loopback port (port 0, read back from DATA/api.addr), and every one is
# killed on exit, whatever happens.

set -u
BUILD=${BUILD:-build}
NSD=$PWD/$BUILD/neuroshardd
CTL=$PWD/$BUILD/neuroctl
TMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/ns-it.XXXXXX")
PIDS=""
PASSED=0
FAILED=0

cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$TMP_ROOT"
}
trap cleanup EXIT

ok() {
    PASSED=$((PASSED + 1))
    echo "ok - $*"
}

not_ok() {
    FAILED=$((FAILED + 1))
    echo "not ok - $*"
}

# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
    desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

# contains HAYSTACK NEEDLE
contains() {
    case "$1" in *"$2"*) return 0 ;; esac
    echo "    expected to find: $2" >&2
    echo "    in: $1" >&2
    return 1
}

finish() {
    echo "# $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# new_wallet DIR: creates a wallet there, prints its node id.
new_wallet() {
    "$CTL" --data-dir "$1" wallet new | sed -n 's/^node id: //p'
}

# start_node DIR [FLAGS...]: starts a daemon in the background on a free API port, waits until
# it answers /healthz; sets NODE_PID and API. Its stderr goes to DIR.log.
start_node() {
    dir=$1
    shift
    rm -f "$dir/api.addr"
    "$NSD" --data-dir "$dir" --api-listen 127.0.0.1:0 "$@" 2>>"$dir.log" &
    NODE_PID=$!
    PIDS="$PIDS $NODE_PID"
    i=0
    while [ $i -lt 200 ]; do
        if [ -s "$dir/api.addr" ]; then
            API=$(cat "$dir/api.addr")
            if curl -sf "http://$API/healthz" >/dev/null 2>&1; then return 0; fi
        fi
        if ! kill -0 "$NODE_PID" 2>/dev/null; then
            echo "    daemon exited early:" >&2
            tail -5 "$dir.log" >&2
            return 1
        fi
        sleep 0.05
        i=$((i + 1))
    done
    echo "    daemon did not become ready" >&2
    return 1
}

# wait_exit PID SECONDS: waits for a child to end (killing it after SECONDS); sets EXIT_RC.
# Not for $(...): a subshell cannot wait for its parent's children.
wait_exit() {
    pid=$1
    n=$(($2 * 20))
    while [ $n -gt 0 ] && kill -0 "$pid" 2>/dev/null && ! zombie "$pid"; do
        sleep 0.05
        n=$((n - 1))
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    EXIT_RC=$?
}

zombie() {
    [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]
}

# http METHOD PATH [CURL ARGS...]: prints "STATUS BODY".
http() {
    method=$1
    path=$2
    shift 2
    curl -s -o "$TMP_ROOT/body" -w '%{http_code}' -X "$method" "$@" "http://$API$path" >"$TMP_ROOT/code"
    echo "$(cat "$TMP_ROOT/code") $(cat "$TMP_ROOT/body")"
}

# tree_sum DIR: one hash over every file's name and bytes (what "nothing changed" compares).
tree_sum() {
    (cd "$1" && find . -type f ! -name lock -print0 | sort -z | xargs -0 sha256sum) | sha256sum
}
