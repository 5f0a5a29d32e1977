#!/bin/sh
# test_daemon.sh: the daemon and neuroctl as a person uses them, with real processes.
#
# Starts neuroshardd in temporary data directories on free loopback ports, queries every
# endpoint, stops it with SIGTERM and SIGKILL and restarts it, runs a second instance against the
# same directory, and feeds it each kind of bad input the walking-skeleton issue names. Bad input
# must give a one-line error, a non-zero exit, and leave the files on disk as they were.

. "$(dirname "$0")/lib.sh"

D=$TMP_ROOT/node
ID=$(new_wallet "$D")

# ---- wallet -------------------------------------------------------------------------------
check "wallet new writes a key file of mode 0600" test "$(stat -c %a "$D/key")" = 600
check "wallet new prints a 64-hex node id" contains "$(echo "$ID" | grep -E '^[0-9a-f]{64}$')" "$ID"
check "wallet show gives the same node id" contains "$("$CTL" --data-dir "$D" wallet show)" "$ID"
out=$("$CTL" --data-dir "$D" wallet new 2>&1)
check "wallet new refuses to overwrite a wallet" test $? -ne 0
check "  ... saying so" contains "$out" "already exists"

# ---- the running node ---------------------------------------------------------------------
check "daemon starts and answers /healthz" start_node "$D"
r=$(http GET /api/stats)
check "GET /api/stats is 200 with this node's id" contains "$r" "200 {\"node_id\":\"$ID\""
check "  ... with version, uptime, peers, balance, height, state" \
    contains "$r" '"peers":0,"balance":"0.000000000","stake":"0.000000000","ledger_height":0,"state":"running"'
r=$(http GET /api/model_info)
check "GET /api/model_info describes an architecture" contains "$r" '"layers":'
r=$(http GET /metrics)
check "GET /metrics is Prometheus text" contains "$r" "# TYPE neuroshard_uptime_seconds gauge"
check "  ... with the ledger height" contains "$r" "neuroshard_ledger_height 0"
r=$(http GET /healthz)
check "GET /healthz is 200" contains "$r" '200 {"status":"ok"}'
r=$(http GET /nope)
check "an unknown path is 404 with a JSON error" contains "$r" '404 {"error":'
r=$(http POST /api/stats -H "Authorization: Bearer $(cat "$D/api.token")")
check "a wrong method is 405" contains "$r" '405 {"error":'
r=$(http POST /api/reload)
check "a POST without the token is 401" contains "$r" '401 {"error":'
r=$(http POST /api/reload -H "Authorization: Bearer 0000")
check "a POST with a wrong token is 401" contains "$r" '401 {"error":'
r=$(http POST /api/reload -H "Authorization: Bearer $(cat "$D/api.token")")
check "a POST with the token is 200" contains "$r" '200 {"reloaded":true}'
head -c 100000 /dev/zero >"$TMP_ROOT/big"
r=$(http POST /generate_text -H "Authorization: Bearer $(cat "$D/api.token")" --data '{"prompt":"x"}')
check "generation with training off is 409, saying why" contains "$r" '409 {"error":"generation needs the model'
r=$(http POST /api/reload -H "Authorization: Bearer $(cat "$D/api.token")" --data-binary @"$TMP_ROOT/big")
check "an oversized body is 413" contains "$r" '413 {"error":'
check "the API token file is mode 0600" test "$(stat -c %a "$D/api.token")" = 600
port=${API##*:}
printf 'GARBAGE \001\002 NOT HTTP\r\n\r\n' | timeout 5 curl -s "telnet://127.0.0.1:$port" >/dev/null 2>&1
r=$(http GET /healthz)
check "malformed HTTP does not hurt the daemon" contains "$r" "200"
out=$("$CTL" --data-dir "$D" status)
check "neuroctl status shows the node" contains "$out" "node id        $ID"
check "neuroctl reload uses the token" contains "$("$CTL" --data-dir "$D" reload)" "re-read"

# ---- one instance per data directory ------------------------------------------------------
out=$("$NSD" --data-dir "$D" --api-listen 127.0.0.1:0 2>&1)
rc=$?
check "a second instance on the same data directory is refused" test "$rc" -eq 1
check "  ... naming the running one" contains "$out" "already running"

# ---- port in use --------------------------------------------------------------------------
D2=$TMP_ROOT/node2
new_wallet "$D2" >/dev/null
sum=$(tree_sum "$D2")
out=$("$NSD" --data-dir "$D2" --api-listen "$API" 2>&1)
rc=$?
check "an API port in use is refused" test "$rc" -eq 1
check "  ... saying so" contains "$out" "cannot listen for the API on $API: address already in use"
PEER=$(http GET /api/stats | sed -n 's/.*"listen":"\([^"]*\)".*/\1/p')
out=$("$NSD" --data-dir "$D2" --api-listen 127.0.0.1:0 --listen "$PEER" 2>&1)
rc=$?
check "a peer port in use is refused" test "$rc" -eq 1
check "  ... saying so" contains "$out" "cannot listen for peers on $PEER: address already in use"
check "  ... and nothing changed" test "$(tree_sum "$D2")" = "$sum"

# ---- SIGHUP reload ------------------------------------------------------------------------
printf '[node]\nlog_level = debug\n' >"$D/neuroshard.ini"
kill -HUP "$NODE_PID"
sleep 0.3
check "SIGHUP reloads the configuration" contains "$(cat "$D.log")" "reloaded log_level=3"
rm -f "$D/neuroshard.ini"

# ---- SIGTERM and restart ------------------------------------------------------------------
genesis=$(sqlite3 "$D/ledger.db" 'SELECT hex(hash) FROM genesis')
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 10
check "SIGTERM stops the daemon with status 0" test "$EXIT_RC" -eq 0
check "  ... and removes api.addr" test ! -e "$D/api.addr"
check "restart after SIGTERM" start_node "$D"
check "  ... keeps the node id" contains "$(http GET /api/stats)" "\"node_id\":\"$ID\""
check "  ... keeps the ledger" test "$(sqlite3 "$D/ledger.db" 'SELECT hex(hash) FROM genesis')" = "$genesis"

# ---- SIGKILL and restart ------------------------------------------------------------------
kill -9 "$NODE_PID"
wait_exit "$NODE_PID" 5
check "restart after kill -9 (the lock is not stuck)" start_node "$D"
check "  ... the ledger passes its integrity check" \
    test "$(sqlite3 "$D/ledger.db" 'PRAGMA integrity_check')" = ok
check "  ... and keeps its genesis" \
    test "$(sqlite3 "$D/ledger.db" 'SELECT hex(hash) FROM genesis')" = "$genesis"
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 10

# ---- bad input: each a one-line error, a non-zero exit, nothing changed -------------------
# refused NAME WANT_RC WANT_TEXT DIR COMMAND...: runs COMMAND, checks status, message, files.
refused() {
    name=$1
    want_rc=$2
    want=$3
    dir=$4
    shift 4
    before=$(tree_sum "$dir")
    out=$("$@" 2>&1 </dev/null)
    rc=$?
    check "$name: exit $want_rc" test "$rc" -eq "$want_rc"
    check "$name: says '$want'" contains "$out" "$want"
    check "$name: one line" test "$(printf '%s\n' "$out" | wc -l)" -eq 1
    check "$name: nothing on disk changed" test "$(tree_sum "$dir")" = "$before"
}

refused "unknown flag" 2 "unknown option '--bogus'" "$D" "$NSD" --data-dir "$D" --bogus
printf '[node]\napi_listen = 127.0.0.1:0\nlisten = nowhere\n' >"$TMP_ROOT/bad.ini"
refused "malformed config" 2 "bad.ini:3: listen 'nowhere'" "$D" \
    "$NSD" --data-dir "$D" --config "$TMP_ROOT/bad.ini"

E=$TMP_ROOT/empty
mkdir -p "$E"
refused "no wallet" 1 "no wallet in $E" "$E" "$NSD" --data-dir "$E" --api-listen 127.0.0.1:0

chmod 644 "$D/key"
refused "key file readable by others" 1 "chmod 600" "$D" "$NSD" --data-dir "$D" --api-listen 127.0.0.1:0
chmod 600 "$D/key"

P=$TMP_ROOT/locked
NEUROSHARD_PASSPHRASE=correct-horse "$CTL" --data-dir "$P" wallet new >/dev/null
refused "wrong passphrase" 1 "wrong passphrase" "$P" \
    env NEUROSHARD_PASSPHRASE=wrong "$NSD" --data-dir "$P" --api-listen 127.0.0.1:0
export NEUROSHARD_PASSPHRASE=correct-horse
check "the right passphrase starts it" start_node "$P"
unset NEUROSHARD_PASSPHRASE
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 10

cp "$D/ledger.db" "$TMP_ROOT/ledger.good"
head -c 8192 /dev/urandom >"$D/ledger.db"
rm -f "$D/ledger.db-wal" "$D/ledger.db-shm"
refused "corrupt ledger" 1 "ledger $D/ledger.db is corrupt" "$D" \
    "$NSD" --data-dir "$D" --api-listen 127.0.0.1:0
rm -f "$D/ledger.db"
sqlite3 "$D/ledger.db" 'CREATE TABLE recipes(name TEXT); INSERT INTO recipes VALUES ("soup");'
refused "foreign ledger" 1 "belongs to another program" "$D" \
    "$NSD" --data-dir "$D" --api-listen 127.0.0.1:0
cp "$TMP_ROOT/ledger.good" "$D/ledger.db"

W=$TMP_ROOT/readonly
new_wallet "$W" >/dev/null
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    chmod 755 "$TMP_ROOT" "$W"
    refused "data directory not writable" 1 "is not writable" "$W" \
        setpriv --reuid=65534 --regid=65534 --clear-groups "$NSD" --data-dir "$W" --api-listen 127.0.0.1:0
else
    chmod 500 "$W"
    refused "data directory not writable" 1 "is not writable" "$W" \
        "$NSD" --data-dir "$W" --api-listen 127.0.0.1:0
    chmod 700 "$W"
fi

R=$TMP_ROOT/restore
printf 'abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon zebra\n' >"$TMP_ROOT/m"
mkdir -p "$R"
refused "mnemonic with a bad checksum" 1 "checksum does not match" "$R" \
    sh -c "'$CTL' --data-dir '$R' wallet restore < '$TMP_ROOT/m'"
printf 'abandon abandon abandon abandonx abandon abandon abandon abandon abandon abandon abandon about\n' >"$TMP_ROOT/m"
refused "mnemonic with an unknown word" 1 "word 4 ('abandonx')" "$R" \
    sh -c "'$CTL' --data-dir '$R' wallet restore < '$TMP_ROOT/m'"
printf 'abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about\n' >"$TMP_ROOT/m"
out=$("$CTL" --data-dir "$R" wallet restore <"$TMP_ROOT/m")
check "wallet restore of a valid mnemonic writes its key" test -f "$R/key"
out2=$("$CTL" --data-dir "$R" wallet show)
check "  ... and restoring is deterministic" contains "$out2" "$(echo "$out" | sed -n 's/^node id: //p')"
refused "neuroctl with an unknown command" 2 "unknown command 'frobnicate'" "$R" \
    "$CTL" --data-dir "$R" frobnicate
refused "neuroctl with an unknown option" 2 "unknown option '--loud'" "$R" \
    "$CTL" --data-dir "$R" wallet show --loud
refused "neuroctl status without a node" 1 "no node is running" "$R" "$CTL" --data-dir "$R" status

# ---- help on every command ----------------------------------------------------------------
for c in "wallet new" "wallet restore" "wallet show" "status" "reload"; do
    # shellcheck disable=SC2086
    check "neuroctl $c --help" contains "$("$CTL" $c --help)" "usage: neuroctl $c"
done
check "neuroshardd --help" contains "$("$NSD" --help)" "usage: neuroshardd"

finish
