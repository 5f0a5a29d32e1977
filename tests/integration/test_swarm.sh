#!/bin/sh
# test_swarm.sh: twenty real neuroshardd processes on loopback form one DHT.
#
# Node 0 starts a new swarm; the others bootstrap from it. Every node must find every other
# node's signed record; after kill -9 of five nodes, lookups still succeed and the dead contacts
# leave the routing tables; a node stopped cleanly and restarted without any seed rejoins from
# its saved table; a forged record is refused and never served. LAN discovery is off so that
# only the mechanisms under test are at work.

. "$(dirname "$0")/lib.sh"

N=20
COMMON="--listen 127.0.0.1:0 --lan-discovery off --log-level warn"

json_field() { # json_field FIELD: a top-level string or number from stdin
    sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

i=0
while [ $i -lt $N ]; do
    ID_OF_NODE=$(new_wallet "$TMP_ROOT/n$i")
    eval "ID_$i=$ID_OF_NODE"
    i=$((i + 1))
done

# shellcheck disable=SC2086
start_node "$TMP_ROOT/n0" $COMMON || exit 1
PID_0=$NODE_PID
API_0=$API
SEED=$(curl -s "http://$API_0/api/stats" | json_field listen)
check "node 0 listens for peers" contains "$SEED" "127.0.0.1:"

i=1
while [ $i -lt $N ]; do
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/n$i" $COMMON --bootstrap "$SEED" || not_ok "node $i starts"
    eval "PID_$i=$NODE_PID API_$i=$API"
    i=$((i + 1))
done

api_of() { eval "echo \$API_$1"; }
id_of() { eval "echo \$ID_$1"; }
pid_of() { eval "echo \$PID_$1"; }

# Wait until every node knows at least MIN peers (bootstrap and the self-lookup take a moment).
wait_peers() {
    min=$1
    shift
    tries=0
    while [ $tries -lt 150 ]; do
        low=0
        for k in "$@"; do
            p=$(curl -s "http://$(api_of "$k")/api/stats" | json_field peers)
            [ "${p:-0}" -ge "$min" ] || low=$((low + 1))
        done
        [ $low -eq 0 ] && return 0
        sleep 0.2
        tries=$((tries + 1))
    done
    echo "    $low nodes still have fewer than $min peers" >&2
    return 1
}

ALL=$(seq 0 $((N - 1)))
# shellcheck disable=SC2086
check "all $N nodes joined (each knows 10 peers or more)" wait_peers 10 $ALL

# Every node finds every other node's record.
missing=0
for a in $ALL; do
    for b in $ALL; do
        [ "$a" = "$b" ] && continue
        r=$(curl -s "http://$(api_of "$a")/api/dht/record?key=$(id_of "$b")")
        case "$r" in
        *"\"author\":\"$(id_of "$b")\""*) ;;
        *)
            missing=$((missing + 1))
            echo "    node $a did not find node $b: $(printf '%s' "$r" | head -c 200)" >&2
            ;;
        esac
    done
done
check "every node finds every other node's record ($((N * (N - 1))) lookups, $missing missed)" \
    test "$missing" -eq 0

# neuroctl peers shows them.
out=$("$CTL" --data-dir "$TMP_ROOT/n3" peers)
check "neuroctl peers lists the swarm" contains "$out" "$(id_of 0)"

# A forged record (a valid one with one byte of its signature changed) is refused.
good=$(curl -s "http://$API_0/api/dht/record?key=$(id_of 1)" | sed -n 's/.*"envelope_hex":"\([0-9a-f]*\)".*/\1/p')
check "a record can be fetched whole" test -n "$good"
forged=$(printf '%s' "$good" | sed 's/.\(.\)$/0\1/')
[ "$forged" = "$good" ] && forged=$(printf '%s' "$good" | sed 's/.\(.\)$/1\1/')
r=$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $(cat "$TMP_ROOT/n0/api.token")" \
    --data "$forged" "http://$API_0/api/dht/put")
check "a forged record is refused by the API" contains "$r" "record refused"
r=$(curl -s "http://$(api_of 5)/api/dht/record?key=$(id_of 1)")
check "  ... and the genuine one is still what is served" contains "$r" "$good"
check "  ... never the forged one" test "$(printf '%s' "$r" | grep -c "$forged")" -eq 0

# Garbage, truncated and replayed datagrams and a flood from one address: node 2 keeps serving
# the others and counts what it dropped.
PEER_2=$(curl -s "http://$API_2/api/stats" | json_field listen)
/usr/bin/python3 - "$PEER_2" <<'PY'
import os, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3000):
    s.sendto(os.urandom(1 + i % 1400), (host, int(port)))   # garbage of every length
for i in range(2000):
    s.sendto(b"\x08\x01\x12\x20" + os.urandom(60), (host, int(port)))  # a plausible start
PY
sleep 0.5
m=$(curl -s "http://$API_2/metrics")
drops=$(printf '%s\n' "$m" | sed -n 's/^neuroshard_dht_dropped_total{reason="malformed"} //p')
# Some of a burst may overflow the kernel's socket buffer before the node sees it.
check "garbage datagrams are dropped and counted ($drops of 5000)" test "${drops:-0}" -ge 2500
r=$(curl -s "http://$API_2/api/dht/record?key=$(id_of 11)")
check "  ... and the node keeps serving" contains "$r" "\"author\":\"$(id_of 11)\""
r=$(curl -s "http://$(api_of 11)/api/dht/record?key=$(id_of 2)")
check "  ... and the others still reach it" contains "$r" "\"author\":\"$(id_of 2)\""

# Kill -9 five nodes.
DEAD="15 16 17 18 19"
for d in $DEAD; do kill -9 "$(pid_of "$d")"; done
LIVE=$(seq 0 14)
ok_lookups=0
total=0
for a in $LIVE; do
    for b in 0 4 9 14; do
        [ "$a" = "$b" ] && continue
        total=$((total + 1))
        r=$(curl -s "http://$(api_of "$a")/api/dht/record?key=$(id_of "$b")")
        case "$r" in *"\"author\":\"$(id_of "$b")\""*) ok_lookups=$((ok_lookups + 1)) ;; esac
    done
done
check "after kill -9 of 5 nodes, lookups still succeed ($ok_lookups of $total)" \
    test "$ok_lookups" -eq "$total"

# Dead contacts leave the tables: lookups keep touching them until they are dropped.
dead_left() {
    left=0
    for a in $LIVE; do
        peers=$(curl -s "http://$(api_of "$a")/api/peers")
        for d in $DEAD; do
            case "$peers" in *"$(id_of "$d")"*) left=$((left + 1)) ;; esac
        done
    done
    echo $left
}
tries=0
left=$(dead_left)
while [ "$left" -gt 0 ] && [ $tries -lt 40 ]; do
    for a in $LIVE; do
        for d in $DEAD; do
            curl -s "http://$(api_of "$a")/api/dht/lookup?target=$(id_of "$d")" >/dev/null &
        done
    done
    wait_lookups=0
    while [ $wait_lookups -lt 50 ] && [ -n "$(jobs -p)" ]; do sleep 0.1; wait_lookups=$((wait_lookups + 1)); done
    left=$(dead_left)
    tries=$((tries + 1))
done
if [ "$left" -gt 0 ]; then
    for a in $LIVE; do
        peers=$(curl -s "http://$(api_of "$a")/api/peers")
        for d in $DEAD; do
            case "$peers" in *"$(id_of "$d")"*) echo "    node $a still lists dead node $d: $(printf '%s' "$peers" | grep -o "\"node_id\":\"$(id_of "$d")\"[^}]*")" >&2 ;; esac
        done
    done
fi
check "dead contacts leave the routing tables ($left entries left)" test "$left" -eq 0

# A node stopped cleanly restarts with no seed and rejoins from its saved table.
kill -TERM "$(pid_of 7)"
wait_exit "$(pid_of 7)" 10
check "a stopped node saved its routing table" test -s "$TMP_ROOT/n7/routing.bin"
start_node "$TMP_ROOT/n7" --listen 127.0.0.1:0 --lan-discovery off --log-level warn || not_ok "node 7 restarts"
API_7=$API
check "  ... and rejoins from it without a seed" wait_peers 5 7
r=$(curl -s "http://$API_7/api/dht/record?key=$(id_of 3)")
check "  ... and finds records again" contains "$r" "\"author\":\"$(id_of 3)\""

out=$("$CTL" --data-dir "$TMP_ROOT/n2" doctor)
check "neuroctl doctor reports the listening port and peers" contains "$out" "ok   peers"

finish
