#!/bin/sh
# test_netns.sh: a pipeline of three daemons across emulated home-internet links.
#
# A, B and C each run in their own Linux network namespace, joined by a bridge in a fourth one:
#
#     ns A (10.77.0.1) --veth-- +                  each veth: netem on both ends, so every
#     ns B (10.77.0.2) --veth-- + br0 (bridge ns)  packet in either direction waits the
#     ns C (10.77.0.3) --veth-- +                  link's latency and shares its rate
#
#     ns D (10.77.0.4) --veth-- +
#
# The links: A 20 ms / 200 Mbit/s, B 50 ms / 100 Mbit/s, C 80 ms / 50 Mbit/s (so A to C is
# 100 ms one way), D 150 ms / 20 Mbit/s. Each daemon listens for peers on its namespace's address,
# the others bootstrap from A, all ask for a quorum of three (--quorum-size 3) and train a tiny
# model as a pipeline. Checks: three of the four form the quorum, and when the proposer had a
# choice they are it and the two nodes nearest to it by the round trips it measured (S5:
# minimise latency); the finisher reaches $STEPS (5) steps with finite losses, and `neuroctl quorum` lists
# the three members. Then the same pipeline of A, B and C runs on loopback in the test's own
# namespace and the time a step took on each is printed, as information only.
#
# Each daemon's API stays on 127.0.0.1 inside its namespace, so curl and neuroctl run under
# `ip netns exec` too. Everything this test makes lives in namespaces named after its PID;
# deleting them (on every exit path) removes the bridge and the veths with them.
#
# Skips (exit 0) when not root, without ip, tc or curl, when namespaces, veths or a bridge cannot
# be made, or when the kernel has no sch_netem. NETNS_WITHOUT_NETEM=1 runs the same topology over
# plain veths (no qdiscs), which checks the namespace wiring on kernels without netem.

. "$(dirname "$0")/lib.sh"

STEPS=5
NETEM_OFF=${NETNS_WITHOUT_NETEM:-0}
SUBNET=10.77.0
PORT=8420
NODES="a b c d"
NS_BR=nsd-$$-br
# shellcheck disable=SC2034 # NS_c and NS_d are read through ns_of
NS_a=nsd-$$-a NS_b=nsd-$$-b NS_c=nsd-$$-c NS_d=nsd-$$-d
# shellcheck disable=SC2034
ADDR_a=$SUBNET.1 ADDR_b=$SUBNET.2 ADDR_c=$SUBNET.3 ADDR_d=$SUBNET.4
NS_LIST=""

skip() {
    echo "skip - $*"
    exit 0
}

# Kills every daemon (and waits, so that its namespace is really gone), deletes the namespaces,
# then lib.sh's cleanup; keeps the exit status.
netns_cleanup() {
    _nc_rc=$?
    trap - EXIT INT TERM HUP
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    for ns in $NS_LIST; do # anything else still in our namespaces
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    PIDS=""
    for ns in $NS_LIST; do ip netns del "$ns" 2>/dev/null; done
    cleanup
    exit "$_nc_rc"
}
trap netns_cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- can this machine run it? ---------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "not root (network namespaces need CAP_NET_ADMIN)"
for tool in ip tc curl; do
    command -v "$tool" >/dev/null 2>&1 || skip "no '$tool' command"
done
ERR=$TMP_ROOT/ip.err
ns_add() {
    ip netns add "$1" 2>"$ERR" || return 1
    NS_LIST="$NS_LIST $1"
    ip netns exec "$1" ip link set lo up 2>>"$ERR"
}
ns_add "$NS_BR" || skip "cannot create a network namespace: $(head -1 "$ERR")"
ip -n "$NS_BR" link add br0 type bridge 2>"$ERR" || skip "cannot create a bridge: $(head -1 "$ERR")"
ip -n "$NS_BR" link set br0 up 2>"$ERR" || skip "cannot bring the bridge up: $(head -1 "$ERR")"

# link_of NODE: sets DELAY (ms) and RATE (Mbit/s) of the node's access link.
link_of() {
    case "$1" in
    a) DELAY=20 RATE=200 ;;
    b) DELAY=50 RATE=100 ;;
    c) DELAY=80 RATE=50 ;;
    d) DELAY=150 RATE=20 ;;
    esac
}

# netem NS DEV NODE: the node's link emulation on DEV's egress.
netem() {
    link_of "$3"
    ip netns exec "$1" tc qdisc add dev "$2" root netem delay "${DELAY}ms" rate "${RATE}mbit" \
        limit 100000 2>"$ERR"
}
ns_of() { eval "echo \"\$NS_$1\""; }
addr_of() { eval "echo \"\$ADDR_$1\""; }
api_of() { eval "echo \"\$API_$1\""; }

for n in $NODES; do
    ns=$(ns_of "$n")
    ns_add "$ns" || skip "cannot create a network namespace: $(head -1 "$ERR")"
    ip -n "$NS_BR" link add "v$n" type veth peer name eth0 netns "$ns" 2>"$ERR" ||
        skip "cannot create a veth pair: $(head -1 "$ERR")"
    ip -n "$NS_BR" link set "v$n" master br0 up 2>"$ERR" ||
        skip "cannot attach a veth to the bridge: $(head -1 "$ERR")"
    if ! ip -n "$ns" addr add "$(addr_of "$n")/24" dev eth0 2>"$ERR" ||
        ! ip -n "$ns" link set eth0 up 2>"$ERR"; then
        skip "cannot configure a veth: $(head -1 "$ERR")"
    fi
    if [ "$NETEM_OFF" != 1 ]; then
        # The first qdisc is the probe: a kernel without sch_netem fails here.
        netem "$ns" eth0 "$n" || skip "no netem in this kernel (tc qdisc add ... netem: $(head -1 "$ERR"))"
        netem "$NS_BR" "v$n" "$n" || skip "netem on the bridge side failed: $(head -1 "$ERR")"
    fi
done
ip netns exec "$NS_a" true 2>"$ERR" || skip "ip netns exec does not work here: $(head -1 "$ERR")"

if [ "$NETEM_OFF" = 1 ]; then
    echo "# links: plain veths through a bridge (NETNS_WITHOUT_NETEM=1, no netem)"
else
    for n in $NODES; do
        link_of "$n"
        echo "# link $n: $DELAY ms each way, $RATE Mbit/s each way (netem)"
    done
fi

# The wiring: each namespace reaches the others over its veth (when there is a ping to ask).
reach() { ip netns exec "$1" ping -c 1 -W 5 "$2" >/dev/null 2>&1; }
if command -v ping >/dev/null 2>&1; then
    check "namespace a reaches b over the bridge" reach "$NS_a" "$ADDR_b"
    check "  ... and c" reach "$NS_a" "$ADDR_c"
    check "  ... and b reaches c" reach "$NS_b" "$ADDR_c"
fi

# ---- helpers --------------------------------------------------------------------------------
TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--lan-discovery off --dataset $TXT --model 3x64 --micro-batches 4 --threads 1 --train on --quorum-size 3"


# in_ns NS COMMAND...: runs COMMAND in namespace NS, or here when NS is empty (the loopback run).
in_ns() {
    _in_ns=$1
    shift
    if [ -n "$_in_ns" ]; then ip netns exec "$_in_ns" "$@"; else "$@"; fi
}

# start_ns_node NS DIR [FLAGS...]: lib.sh's start_node inside namespace NS: the daemon's API on
# 127.0.0.1 there, /healthz asked there. Sets NODE_PID and API; stderr goes to DIR.log.
start_ns_node() {
    _sn_ns=$1
    _sn_dir=$2
    shift 2
    rm -f "$_sn_dir/api.addr"
    # Simple commands, not in_ns, so that $! is the daemon itself (ip netns exec execs it).
    if [ -n "$_sn_ns" ]; then
        ip netns exec "$_sn_ns" "$NSD" --data-dir "$_sn_dir" --api-listen 127.0.0.1:0 "$@" \
            2>>"$_sn_dir.log" &
    else
        "$NSD" --data-dir "$_sn_dir" --api-listen 127.0.0.1:0 "$@" 2>>"$_sn_dir.log" &
    fi
    NODE_PID=$!
    PIDS="$PIDS $NODE_PID"
    _sn_try=0
    while [ $_sn_try -lt 400 ]; do
        if [ -s "$_sn_dir/api.addr" ]; then
            API=$(cat "$_sn_dir/api.addr")
            if in_ns "$_sn_ns" curl -sf "http://$API/healthz" >/dev/null 2>&1; then return 0; fi
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

status_of() { # status_of NODE (of the current run: $P is its variable prefix)
    eval "in_ns \"\$${P}NS_$1\" curl -s \"http://\$${P}API_$1/training_status\""
}
# in_quorum: three of the nodes are in a quorum; MEMBERS names them
in_quorum() {
    MEMBERS=""
    for n in $NODES; do
        case "$(status_of "$n")" in *'"in_quorum":true'*) MEMBERS="$MEMBERS$n" ;; esac
    done
    [ ${#MEMBERS} -eq 3 ]
}
steps_done() { [ "$(status_of "$FIN" | json_field step)" -ge "$STEPS" ] 2>/dev/null; }
# losses_finite CSV: the first $STEPS rows of train.csv each have a finite number for a loss.
losses_finite() {
    awk -F, -v s="$STEPS" 'NR > 1 && NR <= s + 1 {
        n++
        if ($2 !~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/) bad = 1
    } END { exit bad || n < s }' "$1"
}
# ms_per_step CSV: wall time per step between the first and the $STEPS-th step (unix_ms column).
ms_per_step() {
    awk -F, -v s="$STEPS" 'NR == 2 { t0 = $6 } NR == s + 1 { t1 = $6 }
        END { if (t1 > 0 && s > 1) printf "%.0f", (t1 - t0) / (s - 1) }' "$1"
}
find_finisher() {
    FIN=""
    for n in $NODES; do
        case "$(status_of "$n")" in *'"role":"finisher (head, loss)"'*) FIN=$n ;; esac
    done
    [ -n "$FIN" ] # a member is in its quorum a moment before its trainer takes its stage: wait
}
stop_nodes() { # stop_nodes CHECK(1/0): SIGTERM, wait, and (if CHECK) check a clean exit
    for n in $NODES; do
        eval "kill -TERM \"\$${P}PID_$n\""
    done
    for n in $NODES; do
        eval "wait_exit \"\$${P}PID_$n\" 60"
        [ "$1" = 1 ] && check "node $n stops cleanly" test "$EXIT_RC" -eq 0
    done
}

# ---- the pipeline across namespaces ---------------------------------------------------------
for n in $NODES; do new_wallet "$TMP_ROOT/$n" >/dev/null; done
P=""
T0=$(date +%s)
SEED=$ADDR_a:$PORT
for n in $NODES; do
    ns=$(ns_of "$n")
    boot=""
    [ "$n" = a ] || boot="--bootstrap $SEED"
    # shellcheck disable=SC2086
    start_ns_node "$ns" "$TMP_ROOT/$n" $COMMON --listen "$(addr_of "$n"):$PORT" $boot || {
        not_ok "node $n starts in namespace $ns"
        exit 1
    }
    eval "PID_$n=\$NODE_PID API_$n=\$API"
    check "node $n starts in its namespace, its API on $API there" test -n "$API"
    if [ "$n" = a ]; then
        s=$(in_ns "$ns" curl -s "http://$API/api/stats" | json_field listen)
        check "node a listens for peers on its namespace's address" contains "$s" "$SEED"
    fi
done

# Each API is on 127.0.0.1 of its own namespace: the nodes cannot talk over a shared loopback.
api_a=$(api_of a)
if [ "$api_a" != "$(api_of b)" ]; then
    check "node a's API (127.0.0.1 in its namespace) is out of reach from namespace b" \
        test "$(ip netns exec "$NS_b" curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$api_a/healthz")" = 000
fi

check "three of the four nodes in their namespaces form a quorum" wait_for 360 in_quorum
T_Q=$(($(date +%s) - T0))
echo "# quorum formed ${T_Q}s after the first daemon started"
# the proposer (its log says so) and, when it had a choice (more free nodes than it needed), the
# two whose links are shortest: the round trip from the proposer to X is 2 x (its link's delay
# + X's), so the order of the links' delays
proposer=""
for n in $NODES; do
    grep -q "proposing a quorum of 3" "$TMP_ROOT/$n.log" && proposer=$n
done
free=$(sed -n 's/.*nearest of \([0-9]*\) free peers.*/\1/p' "$TMP_ROOT/$proposer.log" 2>/dev/null | tail -1)
expected=$proposer
for n in $NODES; do # a b c d are in the order of their links' delays
    [ "$n" = "$proposer" ] || [ ${#expected} -ge 3 ] || expected="$expected$n"
done
expected=$(echo "$expected" | fold -w1 | sort | tr -d '\n')
if [ "$NETEM_OFF" = 1 ]; then # plain veths: every link alike, nobody nearer
    :
elif [ "${free:-0}" -lt 3 ]; then
    echo "# ${proposer:-nobody} proposed when it knew ${free:-no} other free nodes: no choice to check"
else
    check "  ... the proposer ($proposer) and the two nodes nearest to it: $expected (members: $MEMBERS)" test "$MEMBERS" = "$expected"
fi
check "  ... one of them is the finisher" wait_for 60 find_finisher
[ -n "$FIN" ] || exit 1

check "the finisher ($FIN) trains $STEPS steps" wait_for 600 steps_done
CSV=$TMP_ROOT/$FIN/train.csv
check "  ... with finite losses ($(sed -n "2,$((STEPS + 1))p" "$CSV" 2>/dev/null | cut -d, -f2 | tr '\n' ' '))" losses_finite "$CSV"
q=$(ip netns exec "$(ns_of "$FIN")" "$CTL" --data-dir "$TMP_ROOT/$FIN" quorum 2>&1)
members=$(echo "$q" | grep -cE '^(quorum)? +[0-9]+ [a-z]+ +layers ')
check "neuroctl quorum (run in the finisher's namespace) lists 3 members ($members)" test "$members" -eq 3
check "  ... the finisher among them" contains "$q" "finisher"
[ "$members" -eq 3 ] || echo "$q" | sed 's/^/    /' >&2
if [ "$NETEM_OFF" != 1 ]; then # every pair is at least 20 + 50 ms apart each way
    rtts=$(ip netns exec "$(ns_of "$FIN")" curl -s "http://$(api_of "$FIN")/training_status" |
        grep -o '"rtt_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')
    at_least_100() {
        [ -n "$1" ] || return 1
        for r in $1; do awk "BEGIN { exit !($r >= 100) }" || return 1; done
    }
    check "  ... and the round trips it measured to the others across the links ($rtts ms) are >= 100 ms" at_least_100 "$rtts"
fi
MS_NS=$(ms_per_step "$CSV")
T_NS=$(($(date +%s) - T0))
stop_nodes 1

# ---- the same pipeline on loopback, for the comparison (information only) -------------------
P=L
NODES="a b c"
for n in $NODES; do new_wallet "$TMP_ROOT/l$n" >/dev/null; done
SEED=""
started=1
for n in $NODES; do
    boot=""
    [ -n "$SEED" ] && boot="--bootstrap $SEED"
    # shellcheck disable=SC2086
    start_ns_node "" "$TMP_ROOT/l$n" $COMMON --listen 127.0.0.1:0 $boot || {
        started=0
        break
    }
    eval "LNS_$n='' LPID_$n=\$NODE_PID LAPI_$n=\$API"
    [ -n "$SEED" ] || SEED=$(curl -s "http://$API/api/stats" | json_field listen)
done
MS_LO=""
if [ $started = 1 ] && wait_for 240 in_quorum; then
    if wait_for 60 find_finisher && wait_for 600 steps_done; then
        MS_LO=$(ms_per_step "$TMP_ROOT/l$FIN/train.csv")
    fi
    stop_nodes 0
fi
links="netem links"
[ "$NETEM_OFF" = 1 ] && links="plain veths"
if [ -n "$MS_NS" ] && [ -n "$MS_LO" ]; then
    echo "# a step took ${MS_NS} ms across namespaces ($links) and ${MS_LO} ms on loopback" \
        "($(awk "BEGIN { printf \"%.1f\", $MS_NS / ($MS_LO > 0 ? $MS_LO : 1) }")x)"
else
    echo "# a step took ${MS_NS:-?} ms across namespaces ($links); loopback: ${MS_LO:-no result}"
fi
echo "# the namespace run took ${T_NS}s (quorum after ${T_Q}s)"

finish
