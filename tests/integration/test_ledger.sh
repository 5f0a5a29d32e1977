#!/bin/sh
# test_ledger.sh: five real neuroshardd processes keep one NEURO ledger.
#
# Each node signs a proof of its uptime every second and claims it when its (shortened, 2 s)
# challenge window has passed; entries and proofs spread by gossip over the peer links. Transfers
# between nodes are taken in by their recipients; all five end with one state hash; a node
# stopped and restarted, and one killed with -9 while entries flow, catch up; `neuroctl ledger
# check` passes on every node; sends that break a rule are refused with the reason.

. "$(dirname "$0")/lib.sh"

N=5
COMMON="--listen 127.0.0.1:0 --lan-discovery off --log-level warn --ponw-interval-s 1 --ponw-window-s 2"

json_field() { # json_field FIELD: a top-level string or number from stdin
    sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"
}

i=0
while [ $i -lt $N ]; do
    ID_OF_NODE=$(new_wallet "$TMP_ROOT/n$i")
    eval "ID_$i=$ID_OF_NODE"
    i=$((i + 1))
done
api_of() { eval "echo \$API_$1"; }
id_of() { eval "echo \$ID_$1"; }
pid_of() { eval "echo \$PID_$1"; }

# shellcheck disable=SC2086
start_node "$TMP_ROOT/n0" $COMMON || exit 1
PID_0=$NODE_PID
API_0=$API
SEED=$(curl -s "http://$API_0/api/stats" | json_field listen)
i=1
while [ $i -lt $N ]; do
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/n$i" $COMMON --bootstrap "$SEED" || not_ok "node $i starts"
    eval "PID_$i=$NODE_PID API_$i=$API"
    i=$((i + 1))
done

balance_nano() { # the balance of node $1 in nano-NEURO
    b=$(curl -s "http://$(api_of "$1")/api/wallet?limit=1" | json_field balance)
    echo "${b:-0}" | awk -F. '{ printf "%d\n", $1 * 1000000000 + $2 }'
}

# wait_all_earn: until every node's balance is above zero (its claims are applied)
wait_all_earn() {
    _we=0
    while [ $_we -lt 300 ]; do
        poor=0
        for k in 0 1 2 3 4; do
            [ "$(balance_nano $k)" -gt 0 ] || poor=$((poor + 1))
        done
        [ $poor -eq 0 ] && return 0
        sleep 0.2
        _we=$((_we + 1))
    done
    echo "    $poor nodes earned nothing" >&2
    return 1
}

# same_state: until the five nodes show one state hash at one moment (entries keep flowing, so
# this waits for a quiet instant), or 40 s
same_state() {
    _ss=0
    while [ $_ss -lt 200 ]; do
        hashes=$(for k in 0 1 2 3 4; do curl -s "http://$(api_of "$k")/api/ledger" | json_field state_hash; done | sort -u)
        [ "$(echo "$hashes" | wc -l)" -eq 1 ] && [ -n "$hashes" ] && return 0
        sleep 0.2
        _ss=$((_ss + 1))
    done
    echo "    state hashes differ: $(echo "$hashes" | tr '\n' ' ')" >&2
    return 1
}

check "every node earns from its proofs" wait_all_earn
r=$(curl -s "http://$API_0/api/ponw")
check "/api/ponw lists proofs of the other nodes" contains "$r" "\"author\":\"$(id_of 3)\""
check "  ... accepted by the validator" contains "$r" '"accepted":'
out=$("$CTL" --data-dir "$TMP_ROOT/n0" ponw)
check "neuroctl ponw" contains "$out" "proofs made"

# ---- transfers -----------------------------------------------------------------------------
wait_for() { _wf=0; while [ $_wf -lt 150 ]; do "$@" && return 0; sleep 0.2; _wf=$((_wf + 1)); done; return 1; }
rich() { [ "$(balance_nano "$1")" -ge 20000 ]; }
check "node 0 earns 0.00002 NEURO" wait_for rich 0
check "  ... and node 2 too" wait_for rich 2
out=$("$CTL" --data-dir "$TMP_ROOT/n0" wallet send "$(id_of 1)" 0.00001 2>&1)
check "neuroctl wallet send" contains "$out" "0.000000500 NEURO burned"
out=$("$CTL" --data-dir "$TMP_ROOT/n2" wallet send "$(id_of 3)" 0.000002 2>&1)
check "  ... from another node too" contains "$out" "sent: entry"
received() { "$CTL" --data-dir "$TMP_ROOT/n1" wallet history --limit 100 | grep -q "receive  *0.000009500"; }
check "the recipient takes the send in, minus the 5 % burned" wait_for received
out=$("$CTL" --data-dir "$TMP_ROOT/n4" wallet send "$(id_of 0)" 1000000 2>&1)
check "a send beyond the balance is refused with the reason" contains "$out" "beyond the balance"
out=$("$CTL" --data-dir "$TMP_ROOT/n4" wallet send "$(id_of 0)" -3 2>&1)
check "  ... a negative amount never leaves neuroctl" contains "$out" "not an amount of NEURO"
r=$(curl -s -w ' %{http_code}' -X POST --data "{\"to\":\"$(id_of 0)\",\"amount\":\"1\"}" "http://$(api_of 4)/api/wallet/send")
check "  ... and spending needs the API token" contains "$r" ' 401'
out=$("$CTL" --data-dir "$TMP_ROOT/n3" wallet stake 0.000001)
check "neuroctl wallet stake" contains "$out" "stake     0.000001000 NEURO"
check "the five nodes agree on one state hash" same_state

# ---- a restart and a kill -9 ---------------------------------------------------------------
kill -TERM "$PID_2"
wait_exit "$PID_2" 30
sleep 3 # the others go on claiming meanwhile
# shellcheck disable=SC2086
start_node "$TMP_ROOT/n2" $COMMON --bootstrap "$SEED" || not_ok "node 2 restarts"
PID_2=$NODE_PID
API_2=$API
check "a node stopped for a while catches up" same_state
kill -9 "$PID_3"
wait_exit "$PID_3" 5
# shellcheck disable=SC2086
start_node "$TMP_ROOT/n3" $COMMON --bootstrap "$SEED" || not_ok "node 3 restarts"
PID_3=$NODE_PID
API_3=$API
check "a node killed with -9 while entries flow catches up" same_state

for k in 0 1 2 3 4; do
    out=$("$CTL" --data-dir "$TMP_ROOT/n$k" ledger check)
    check "neuroctl ledger check passes on node $k" contains "$out" "ledger ok"
done
r=$(curl -s "http://$API_0/metrics")
check "/metrics counts proofs by verdict" contains "$r" 'neuroshard_ponw_proofs_total{verdict="accepted"}'

for k in 0 1 2 3 4; do
    kill -TERM "$(pid_of $k)"
done
for k in 0 1 2 3 4; do
    wait_exit "$(pid_of $k)" 30
done
out=$("$CTL" --data-dir "$TMP_ROOT/n1" ledger check)
check "ledger check also runs with the node stopped" contains "$out" "ledger ok"

finish
