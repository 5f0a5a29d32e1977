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
# Every daemon a test starts: a free loopback peer port, no LAN multicast and no training, unless
# a test says otherwise with flags (which beat these variables).
export NEUROSHARD_LISTEN=127.0.0.1:0 NEUROSHARD_LAN_DISCOVERY=off NEUROSHARD_TRAIN=off
PIDS=""
PASSED=0
FAILED=0

cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    if [ -n "${KEEP_TMP:-}" ]; then echo "# kept $TMP_ROOT" >&2; else rm -rf "$TMP_ROOT"; fi
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
    _c_desc=$1
    shift
    if "$@"; then ok "$_c_desc"; else not_ok "$_c_desc"; fi
}

# contains HAYSTACK NEEDLE
contains() {
    case "$1" in *"$2"*) return 0 ;; esac
    echo "    expected to find: $2" >&2
    echo "    in: $1" >&2
    return 1
}

not_contains() {
    case "$1" in *"$2"*)
        echo "    did not expect: $2" >&2
        return 1
        ;;
    esac
    return 0
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
    _sn_dir=$1
    shift
    rm -f "$_sn_dir/api.addr"
    "$NSD" --data-dir "$_sn_dir" --api-listen 127.0.0.1:0 "$@" 2>>"$_sn_dir.log" &
    NODE_PID=$!
    PIDS="$PIDS $NODE_PID"
    _sn_try=0
    while [ $_sn_try -lt 200 ]; do
        if [ -s "$_sn_dir/api.addr" ]; then
            API=$(cat "$_sn_dir/api.addr")
            if curl -sf "http://$API/healthz" >/dev/null 2>&1; then return 0; fi
        fi
        if ! kill -0 "$NODE_PID" 2>/dev/null; then
            echo "    daemon exited early:" >&2
            tail -5 "$_sn_dir.log" >&2
            return 1
        fi
        sleep 0.05
        _sn_try=$((_sn_try + 1))
    done
    echo "    daemon did not become ready" >&2
    return 1
}

# wait_exit PID SECONDS: waits for a child to end (killing it after SECONDS); sets EXIT_RC.
# Not for $(...): a subshell cannot wait for its parent's children.
wait_exit() {
    _we_pid=$1
    _we_n=$(($2 * 20))
    while [ $_we_n -gt 0 ] && kill -0 "$_we_pid" 2>/dev/null && ! zombie "$_we_pid"; do
        sleep 0.05
        _we_n=$((_we_n - 1))
    done
    kill -9 "$_we_pid" 2>/dev/null
    wait "$_we_pid" 2>/dev/null
    EXIT_RC=$?
}

zombie() {
    [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]
}

# http METHOD PATH [CURL ARGS...]: prints "STATUS BODY".
http() {
    _h_method=$1
    _h_path=$2
    shift 2
    curl -s -o "$TMP_ROOT/body" -w '%{http_code}' -X "$_h_method" "$@" "http://$API$_h_path" >"$TMP_ROOT/code"
    echo "$(cat "$TMP_ROOT/code") $(cat "$TMP_ROOT/body")"
}

# wait_for HALF_SECONDS COMMAND...: runs COMMAND every half second until it succeeds.
wait_for() {
    _wf_n=$1
    shift
    _wf=0
    while [ $_wf -lt "$_wf_n" ]; do
        "$@" && return 0
        sleep 0.5
        _wf=$((_wf + 1))
    done
    return 1
}

# finisher NODE...: the one of them whose /training_status names it the pipeline's finisher, into
# FIN (API_<node> holds each one's API address). A member is in its quorum a moment before its
# trainer takes its stage, so callers wait for this rather than test it once.
finisher() {
    FIN=""
    for _fn in "$@"; do
        eval "_fa=\$API_$_fn"
        case "$(curl -s "http://$_fa/training_status")" in
        *'"role":"finisher (head, loss)"'*) FIN=$_fn ;;
        esac
    done
    [ -n "$FIN" ]
}

# json_field FIELD: the value of "FIELD" (a string or a number) in the JSON on stdin; its last
# occurrence when it occurs more than once.
json_field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }

# text_dir DIR: a small folder of text to train on (this repository's own documents).
text_dir() {
    mkdir -p "$1"
    cat README.md docs/design.md >"$1/a.txt"
    cat docs/operator.md docs/ledger.md >"$1/b.txt"
}

# tree_sum DIR: one hash over every file's name and bytes (what "nothing changed" compares).
tree_sum() {
    (cd "$1" && find . -type f ! -name lock -print0 | sort -z | xargs -0 sha256sum) | sha256sum
}
