#!/bin/sh
# test_sync.sh: DiLoCo between real daemons: three quorums of one node each (every one holds the
# whole model, so they are one layer cohort) train on their own parts of the data and meet every
# 8 steps: each sends its compressed pseudo-gradient, the chunks' owners screen and aggregate
# them, and every member takes the same outer step. P sends its update flipped and scaled
# (NEUROSHARD_TEST_CHEAT=poison): the others screen it out as fraud and keep the evidence, and
# all three still end each round with the same weights. C and Q are asynchronous contributors
# (--sync-role async): each downloads a member's weights, trains 8 steps, submits its update and
# downloads again; the member folds C's into its own contribution and refuses Q's (poisoned).
# Every member loses every other request for its weights, so each download asks again.
# A and B stake the (test swarm's) bond: the owner that screens P's part as fraud challenges P's
# proof in the ledger with the bundle of sealed parts it screened, and every node fetches the
# bundle, runs the screen again and slashes P.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
RULES="--ponw-interval-s 10 --ponw-window-s 30 --ponw-bond 0.01"
# one outbound peer link a node (a sparse swarm): the cohort is found through the DHT's
# layer-holder records (ns_net_want_holders), not by being linked to everyone
export NEUROSHARD_TEST_PEER_LINKS=1
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 2x64 --threads 1 --train on --sync-every 8 --sync-timeout-s 5 $RULES"
nano_of() { echo "${1:-0}" | awk -F. '{ printf "%d\n", $1 * 1000000000 + $2 }'; }
for n in a b p c q; do new_wallet "$TMP_ROOT/$n" >/dev/null; done

# every member loses every other request for its weights (NEUROSHARD_TEST_CHEAT=drop-weights-get):
# the downloads below must ask again
export NEUROSHARD_TEST_CHEAT=drop-weights-get
# shellcheck disable=SC2086
start_node "$TMP_ROOT/a" $COMMON || exit 1
PID_a=$NODE_PID API_a=$API
SEED=$(curl -s "http://$API_a/api/stats" | json_field listen)
for n in b p; do
    [ $n = p ] && export NEUROSHARD_TEST_CHEAT=poison,drop-weights-get
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $COMMON --bootstrap "$SEED" || exit 1
    eval "PID_$n=\$NODE_PID API_$n=\$API"
done
unset NEUROSHARD_TEST_CHEAT

for n in c q; do
    [ $n = q ] && export NEUROSHARD_TEST_CHEAT=poison
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $COMMON --sync-role async --bootstrap "$SEED" || exit 1
    unset NEUROSHARD_TEST_CHEAT
    eval "PID_$n=\$NODE_PID API_$n=\$API"
done

status_of() { curl -s "http://$1/training_status"; }
sync_field() { status_of "$1" | sed -n "s/.*\"sync\":{\(.*\)/\1/p" | json_field "$2"; }

cohort_of_three() {
    for n in a b p; do
        eval "api=\$API_$n"
        [ "$(sync_field "$api" cohort)" = 3 ] || return 1
    done
}
check "three nodes training the same model find each other as one cohort" wait_for 120 cohort_of_three
dialed=0
for n in a b p; do
    eval "api=\$API_$n"
    v=$(curl -s "http://$api/metrics" | sed -n 's/^neuroshard_cohort_holders_total{event="dialed"} //p')
    dialed=$((dialed + ${v:-0}))
done
check "  ... linked through the DHT's layer-holder records, not by chance ($dialed holders dialed)" test "$dialed" -gt 0

stepped() {
    for n in a b p; do
        eval "api=\$API_$n"
        [ "$(sync_field "$api" outer_steps)" -ge 3 ] 2>/dev/null || return 1
    done
}
check "every member takes outer steps with the cohort's aggregate" wait_for 600 stepped

# the same round on all three: the same weights of the meeting, bit for bit
same_weights() {
    r_a=$(status_of "$API_a") r_b=$(status_of "$API_b") r_p=$(status_of "$API_p")
    round=$(echo "$r_a" | json_field outer_round)
    [ "$(echo "$r_b" | json_field outer_round)" = "$round" ] &&
        [ "$(echo "$r_p" | json_field outer_round)" = "$round" ] || return 1
    w=$(echo "$r_a" | json_field w0_sha256)
    SAME_ROUND=$round
    [ "$(echo "$r_b" | json_field w0_sha256)" = "$w" ] && [ "$(echo "$r_p" | json_field w0_sha256)" = "$w" ]
}
check "after a round every member holds the same weights" wait_for 120 same_weights
echo "# round $SAME_ROUND: one w0 on all three"

frauds=0
for n in a b; do
    eval "api=\$API_$n"
    f=$(sync_field "$api" fraud)
    frauds=$((frauds + ${f:-0}))
done
check "the poisoned pseudo-gradient is screened out as fraud ($frauds times)" test "$frauds" -gt 0
ID_p=$(curl -s "http://$API_p/api/stats" | json_field node_id)
check "  ... the log names the poisoner" grep -q "pseudo-gradient of $(echo "$ID_p" | cut -c1-16)… is fraud" "$TMP_ROOT/a.log" "$TMP_ROOT/b.log"
check "  ... and its message is kept as evidence" sh -c "ls '$TMP_ROOT'/a/evidence/sync-*-$ID_p.bin '$TMP_ROOT'/b/evidence/sync-*-$ID_p.bin 2>/dev/null | grep -q ."
honest_fraud=$(cat "$TMP_ROOT/a.log" "$TMP_ROOT/b.log" "$TMP_ROOT/p.log" | grep "is fraud" | grep -vc "$(echo "$ID_p" | cut -c1-16)")
check "  ... and no honest member is called a fraud" test "$honest_fraud" -eq 0

# the fraud goes to the ledger: A and B stake the bond once they have earned it
balance_of() { nano_of "$(curl -s "http://$1/api/wallet?limit=1" | json_field balance)"; }
earned() { [ "$(balance_of "$API_a")" -ge 10000000 ] && [ "$(balance_of "$API_b")" -ge 10000000 ]; }
check "the honest members earn by training" wait_for 300 earned
for n in a b; do
    out=$("$CTL" --data-dir "$TMP_ROOT/$n" wallet stake 0.01 2>&1)
    check "  ... $n stakes the bond" contains "$out" "stake     0.010000000 NEURO"
done
slashed_on() {
    case "$(curl -s "http://$1/api/ledger")" in
    *"\"prover\":\"$ID_p\",\"challenger\":\"$ID_a\",\"verdict\":\"fraud\""* | *"\"prover\":\"$ID_p\",\"challenger\":\"$ID_b\",\"verdict\":\"fraud\""*) return 0 ;;
    esac
    return 1
}
ID_a=$(curl -s "http://$API_a/api/stats" | json_field node_id)
ID_b=$(curl -s "http://$API_b/api/stats" | json_field node_id)
slashed_everywhere() { slashed_on "$API_a" && slashed_on "$API_b" && slashed_on "$API_p"; }
check "a member challenges the poisoner's proof with the sealed parts; every node judges it fraud" wait_for 600 slashed_everywhere
check "  ... after fetching the bundle and running the screen again" grep -q "beyond 5 sigma .* signed parts): fraud" "$TMP_ROOT/a.log" "$TMP_ROOT/b.log" "$TMP_ROOT/p.log"
j=$(curl -s "http://$API_a/api/ledger")
check "  ... and no challenge was false" not_contains "$j" '"verdict":"honest"'
p_debt() { [ "$(nano_of "$(curl -s "http://$API_a/api/wallet?limit=1&account=$ID_p" | json_field debt)")" -gt 0 ]; }
check "  ... the poisoner owes the slash" p_debt

# the asynchronous contributors
async_sum() {
    _t=0
    for n in a b p; do
        eval "api=\$API_$n"
        _v=$(status_of "$api" | sed -n 's/.*"async":{\([^}]*\)}.*/\1/p' | json_field "$1")
        _t=$((_t + ${_v:-0}))
    done
    echo $_t
}
downloaded() {
    for n in c q; do
        eval "api=\$API_$n"
        [ "$(status_of "$api" | sed -n 's/.*"async":{\([^}]*\)}.*/\1/p' | json_field downloads)" -ge 2 ] 2>/dev/null || return 1
    done
}
check "asynchronous contributors download a member's weights, train and download again" wait_for 300 downloaded
folded() { [ "$(async_sum accepted)" -gt 0 ] && [ "$(async_sum refused)" -gt 0 ]; }
check "  ... the members fold the honest contribution in and refuse the poisoned one" wait_for 300 folded
ID_c=$(curl -s "http://$API_c/api/stats" | json_field node_id | cut -c1-16)
ID_q=$(curl -s "http://$API_q/api/stats" | json_field node_id | cut -c1-16)
check "  ... by name" sh -c "grep -q 'contribution of $ID_c… (weight' '$TMP_ROOT'/a.log '$TMP_ROOT'/b.log '$TMP_ROOT'/p.log && grep -q 'contribution of $ID_q… is refused' '$TMP_ROOT'/a.log '$TMP_ROOT'/b.log '$TMP_ROOT'/p.log"
check "  ... and no contributor counts as a member of the rounds" cohort_of_three
reasks=0
for n in c q; do
    eval "api=\$API_$n"
    v=$(status_of "$api" | sed -n 's/.*"async":{\([^}]*\)}.*/\1/p' | json_field reasks)
    reasks=$((reasks + ${v:-0}))
done
check "  ... asking again for the weights whose request a member lost ($reasks times)" test "$reasks" -gt 0

for n in c q; do # the contributors are done: fewer processes for the slow builds
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
    wait_exit "$pid" 60
    check "contributor $n stops cleanly" test "$EXIT_RC" -eq 0
done

# a member that starts late (a new holder of the layers) downloads the cohort's weights before
# its first step (S3), sits one round out, downloads again, then meets the cohort
new_wallet "$TMP_ROOT/l" >/dev/null
# the usual links for it (the sparse swarm's discovery was checked above): it must hear the
# cohort within the HELLO period a fresh member listens, even on a slow (ASan) build
unset NEUROSHARD_TEST_PEER_LINKS
# shellcheck disable=SC2086
start_node "$TMP_ROOT/l" $COMMON --bootstrap "$SEED" || exit 1
PID_l=$NODE_PID API_l=$API
caught_up() {
    grep -q "installed the cohort's weights" "$TMP_ROOT/l.log" &&
        [ "$(sync_field "$API_l" outer_steps)" -ge 1 ] 2>/dev/null
}
check "a member that starts late downloads the cohort's weights and then meets it" wait_for 900 caught_up
first_line() { grep -n "$1" "$TMP_ROOT/l.log" | head -1 | cut -d: -f1; }
check "  ... before its first step" test "$(first_line "installed the cohort's weights")" -lt "$(first_line "train: step=1 ")"
same_as_a() {
    r_a=$(status_of "$API_a") r_l=$(status_of "$API_l")
    [ "$(echo "$r_a" | json_field outer_round)" = "$(echo "$r_l" | json_field outer_round)" ] &&
        [ "$(echo "$r_a" | json_field w0_sha256)" = "$(echo "$r_l" | json_field w0_sha256)" ]
}
check "  ... and holds the same weights as the others after a round" wait_for 180 same_as_a

# the outer state survives a restart beside its checkpoint
kill -TERM "$PID_b"
wait_exit "$PID_b" 60
check "a member stops cleanly" test "$EXIT_RC" -eq 0
ls "$TMP_ROOT"/b/outer/outer-*.bin >/dev/null 2>&1
check "  ... its outer state (w0, momentum) is kept beside its checkpoints" test $? -eq 0
# shellcheck disable=SC2086
start_node "$TMP_ROOT/b" $COMMON --bootstrap "$SEED" || exit 1
PID_b=$NODE_PID API_b=$API
loaded() { grep -q "outer state of checkpoint [0-9]* loaded" "$TMP_ROOT/b.log"; }
check "  ... and loads it when it starts again" wait_for 60 loaded

for n in a b p l; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in a b p l; do
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
    out=$("$CTL" --data-dir "$TMP_ROOT/$n" ledger check)
    check "  ... its ledger checks out (the judgements replay)" contains "$out" "ledger ok"
done

finish
