#!/bin/sh
# test_verify.sh: a verifier recomputes training proofs and the cheaters are slashed.
#
# Four real daemons on loopback train a tiny NeuroLLM on one folder of text in the reproducible
# mode (V only verifies). C claims ten times the batches it trained and never answers a verifier,
# D claims weights it never computed (NEUROSHARD_TEST_CHEAT), H is honest. V compares each training proof with its author's
# previous one: steps or weights that do not follow on are fraud shown by the two signed proofs,
# which every node checks alike, so the cheaters are slashed everywhere and V is paid. V also
# recomputes a sample of proofs from the prover's checkpoint, with one thread where the provers
# use two, and finds the honest node's work bit for bit (it checks the prover checked longest ago
# first, so C's unanswered requests, each a wait, cannot crowd H out); H never loses anything. A prover that
# does not serve its checkpoint (C) loses as if it cheated (S9). Short proof
# intervals, window and bond make it quick (rules of this test swarm).

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
RULES="--ponw-interval-s 3 --ponw-window-s 20 --ponw-bond 0.01"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 2x64 $RULES"

nano_of() { echo "${1:-0}" | awk -F. '{ printf "%d\n", $1 * 1000000000 + $2 }'; }

for n in v h c d; do
    ID_OF_NODE=$(new_wallet "$TMP_ROOT/$n")
    eval "ID_$n=$ID_OF_NODE"
done
# shellcheck disable=SC2086
start_node "$TMP_ROOT/v" $COMMON --train off --role verify --verify-ppm 300000 --threads 1 || exit 1
PID_v=$NODE_PID API_v=$API
SEED=$(curl -s "http://$API_v/api/stats" | json_field listen)
# shellcheck disable=SC2086
start_node "$TMP_ROOT/h" $COMMON --train on --threads 2 --bootstrap "$SEED" || exit 1
PID_h=$NODE_PID API_h=$API
export NEUROSHARD_TEST_CHEAT=batches,silent
# shellcheck disable=SC2086
start_node "$TMP_ROOT/c" $COMMON --train on --bootstrap "$SEED" || exit 1
PID_c=$NODE_PID API_c=$API
export NEUROSHARD_TEST_CHEAT=delta
# shellcheck disable=SC2086
start_node "$TMP_ROOT/d" $COMMON --train on --bootstrap "$SEED" || exit 1
PID_d=$NODE_PID API_d=$API
unset NEUROSHARD_TEST_CHEAT

balance_of() { nano_of "$(curl -s "http://$1/api/wallet?limit=1${2:+&account=$2}" | json_field balance)"; }

# The verifier has no NEURO of its own (it does not train): the honest node pays it a bond.
h_rich() { [ "$(balance_of "$API_h")" -ge 30000000 ]; }
check "the honest node earns by training" wait_for 240 h_rich
out=$("$CTL" --data-dir "$TMP_ROOT/h" wallet send "$ID_v" 0.02 2>&1)
check "  ... and pays the verifier" contains "$out" "sent: entry"
v_paid() { [ "$(balance_of "$API_v")" -ge 15000000 ]; }
check "the verifier receives it" wait_for 60 v_paid
out=$("$CTL" --data-dir "$TMP_ROOT/v" wallet stake 0.01 2>&1)
check "  ... and stakes the bond" contains "$out" "stake     0.010000000 NEURO"

judged() { curl -s "http://$API_h/api/ledger"; }
both_caught() {
    j=$(judged)
    case "$j" in *"\"prover\":\"$ID_c\",\"challenger\":\"$ID_v\",\"verdict\":\"fraud\""*) ;; *) return 1 ;; esac
    case "$j" in *"\"prover\":\"$ID_d\",\"challenger\":\"$ID_v\",\"verdict\":\"fraud\""*) return 0 ;; esac
    return 1
}
check "both cheaters are caught and judged fraudulent on the honest node too" wait_for 360 both_caught
j=$(judged)
check "  ... the honest node was never accused" not_contains "$j" "\"prover\":\"$ID_h\""
check "  ... and no challenge was false" not_contains "$j" '"verdict":"honest"'
p=$(curl -s "http://$API_v/api/ponw")
honest_recomputed() { grep -q "of $(echo "$ID_h" | cut -c1-16)… recomputed ([0-9]* steps): honest" "$TMP_ROOT/v.log"; }
check "the verifier recomputes the honest node's proofs with one thread, the same bits" wait_for 240 honest_recomputed
check "/api/ponw counts the challenges" contains "$p" '"challenges_made":'
c_unanswered() { grep -q "of $(echo "$ID_c" | cut -c1-16)…: the prover sent nothing while asked for its checkpoint: judged as fraud (unanswered)" "$TMP_ROOT/v.log"; }
check "a prover that never answers a spot check is judged as if it cheated" wait_for 240 c_unanswered
p=$(curl -s "http://$API_v/api/ponw")
check "  ... and /api/ponw counts it" not_contains "$p" '"unanswered":0'
d_debt() { [ "$(nano_of "$(curl -s "http://$API_h/api/wallet?limit=1&account=$ID_d" | json_field debt)")" -gt 0 ]; }
check "a slashed cheater owes the slash as debt on the honest node" d_debt
r=$(curl -s "http://$API_h/api/intelligence?limit=3")
check "the Intelligence Ledger has a row for each paid training round" contains "$r" '"contributors":1,"batch_size":'
r=$(curl -s "http://$API_v/api/wallet?limit=100")
check "the verifier's history shows its challenges" contains "$r" '"kind":"challenge"'

for n in v h c d; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in v h c d; do
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    out=$("$CTL" --data-dir "$TMP_ROOT/$n" ledger check)
    check "ledger check passes on node $n" contains "$out" "ledger ok"
done

finish
