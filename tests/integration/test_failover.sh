#!/bin/sh
# test_failover.sh: a pipeline member killed with -9 is replaced by a replica of its layers.
#
# Six daemons ask for quorums of three: three form the quorum and train, the other three become
# replicas, one of each stage, and pull their stage's checkpoints (written by every stage at the
# same steps, --checkpoint-every 5). The processor (stage 1) is killed with -9. The smallest live
# member sees its link gone, hands stage 1 to its replica, and everyone restarts from the
# replica's step: the steps after it are computed again, to the same losses digit for digit (so
# none was applied twice), and training goes on past the step where the processor died. Then the
# initiator stalls (SIGSTOP; its links stay up): the processor waiting for its activations asks it
# again (RESEND) and hears nothing, not even the ALIVE its network thread would send, so it tells
# the quorum (SWARM_SUSPECT, S6's "no ACK: the next candidate") and the initiator is replaced by
# its replica in seconds, long before its heartbeats would go stale (20 s). Woken, it learns it
# was replaced and follows the quorum as a replica.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 3x64 --micro-batches 4 --threads 1 --train on --quorum-size 3 --checkpoint-every 5 --ponw-interval-s 1 --role verify --verify-ppm 0"
NODES="n1 n2 n3 n4 n5 n6"
for n in $NODES; do new_wallet "$TMP_ROOT/$n" >/dev/null; done

first_field() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }
status_of() { curl -s "http://$1/training_status"; }

SEED=""
for n in $NODES; do
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $COMMON ${SEED:+--bootstrap "$SEED"} || exit 1
    eval "PID_$n=\$NODE_PID API_$n=\$API"
    [ -n "$SEED" ] || SEED=$(curl -s "http://$API/api/stats" | json_field listen)
done

role_of() { eval "_api=\$API_$1"; status_of "$_api" | grep -o '"role":"[a-z]*' | head -1 | cut -d'"' -f4; }
ready() {
    members=0 replicas=0
    for n in $NODES; do
        eval "api=\$API_$n"
        s=$(status_of "$api")
        case "$s" in *'"in_quorum":true'*) members=$((members + 1)) ;; esac
        step=$(echo "$s" | grep -o '"replica":{"stage":[0-9]*,"step":[0-9]*' | sed 's/.*"step"://')
        [ "${step:-0}" -ge 5 ] && replicas=$((replicas + 1))
    done
    [ $members -eq 3 ] && [ $replicas -eq 3 ]
}
if ! wait_for 240 ready; then
    for n in $NODES; do
        eval "api=\$API_$n"
        echo "    $n: $(status_of "$api" | grep -o '"quorum_size".*' | cut -c1-300)" >&2
    done
fi
check "three nodes form the quorum, three follow it as replicas with a checkpoint" ready
PROC="" FIN=""
for n in $NODES; do
    case "$(role_of $n)" in processor) PROC=$n ;; finisher) FIN=$n ;; esac
done
check "  ... with a processor and a finisher" test -n "$PROC" -a -n "$FIN"
eval "API_f=\$API_$FIN PID_p=\$PID_$PROC"
before=$(status_of "$API_f" | json_field step)
kill -9 "$PID_p"
KILLED=$(date +%s)
echo "# killed the processor $PROC at step $before"

restarted() { case "$(status_of "$API_f")" in *'"generation":2'*) return 0 ;; esac; return 1; }
check "the quorum fails over to the processor's replica" wait_for 60 restarted
REPL=""
for n in $NODES; do
    [ "$n" = "$PROC" ] && continue
    [ "$(role_of $n)" = processor ] && REPL=$n
done
check "  ... which now runs stage 1" test -n "$REPL"
check "  ... from the checkpoint it pulled from the processor" grep -q "failover: generation 2, restarting stage 1" "$TMP_ROOT/$REPL.log"
past() { [ "$(status_of "$API_f" | json_field step)" -gt "$((before + 3))" ] 2>/dev/null; }
check "training goes on past the step where the processor died" wait_for 240 past
echo "# resumed; failover took $(status_of "$API_f" | first_field failover_ms) ms on the finisher ($(($(date +%s) - KILLED)) s to pass step $((before + 3)))"
# Steps between the restart point and the kill were computed twice: the same losses both times.
dups=$(cut -d, -f1 "$TMP_ROOT/$FIN/train.csv" | sort | uniq -d | wc -l)
agree() {
    awk -F, 'NR > 1 { if ($1 in seen && seen[$1] != $2) bad++; seen[$1] = $2 } END { exit bad > 0 }' "$TMP_ROOT/$FIN/train.csv"
}
check "steps computed again after the restart give the same losses ($dups steps twice)" agree
check "  ... and some were" test "$dups" -gt 0

# A member that stalls (SIGSTOP: its links stay up, its heartbeats stop) is replaced too, and
# when it wakes up it learns so and follows the quorum as a replica.
INIT=""
for n in $NODES; do
    [ "$n" = "$PROC" ] && continue
    [ "$(role_of $n)" = initiator ] && INIT=$n
done
eval "PID_i=\$PID_$INIT"
# its replica must hold a copy from this generation first: one every member still keeps
c2=$(grep -o "restarting stage [0-9] of 3 from step [0-9]*" "$TMP_ROOT/$FIN.log" | tail -1 | sed 's/.* //')
fresh() {
    for n in $NODES; do
        eval "api=\$API_$n"
        step=$(status_of "$api" | grep -o '"replica":{"stage":0,"step":[0-9]*' | sed 's/.*"step"://')
        [ "${step:-0}" -gt "${c2:-0}" ] && return 0
    done
    return 1
}
check "the initiator's replica pulls a checkpoint of the new generation" wait_for 120 fresh
t_stop=$(date +%s)
kill -STOP "$PID_i"
gen3() { case "$(status_of "$API_f")" in *'"generation":3'*) return 0 ;; esac; return 1; }
check "a stalled initiator is replaced by its replica" wait_for 180 gen3
echo "# replaced $(($(date +%s) - t_stop)) s after it stopped (its heartbeats go stale after 20 s)"
raised=0
for n in $NODES; do
    [ "$n" = "$PROC" ] || [ "$n" = "$INIT" ] && continue
    eval "api=\$API_$n"
    v=$(status_of "$api" | first_field unresponsive_raised)
    raised=$((raised + ${v:-0}))
done
check "  ... because its neighbour found it answered nothing, not even ALIVE ($raised)" test "$raised" -gt 0
kill -CONT "$PID_i"
woke() { grep -q "was replaced in its quorum" "$TMP_ROOT/$INIT.log"; }
check "  ... and, woken up, it learns it was replaced and follows" wait_for 30 woke
before=$(status_of "$API_f" | json_field step)
check "  ... while training goes on" wait_for 120 past

# Every stage proved its segments of steps with hashes of its activations, and every node (a
# verifier) compared neighbours' proofs and each author's proofs with its previous one: the
# steps recomputed after each restart were not proved twice, and every hash agreed.
sum_ponw() {
    _t=0
    for n in $NODES; do
        [ "$n" = "$PROC" ] && continue
        eval "api=\$API_$n"
        _v=$(curl -s "http://$api/api/ponw" | json_field "$1")
        _t=$((_t + ${_v:-0}))
    done
    echo $_t
}
crossed() { [ "$(sum_ponw cross_checked)" -gt 0 ]; }
check "neighbouring stages' proofs cross-check their activations" wait_for 60 crossed
check "  ... and agree" test "$(sum_ponw cross_mismatched)" -eq 0
check "no stage proved a step twice across the restarts (no contradiction found)" test "$(sum_ponw fraud_found)" -eq 0

for n in $NODES; do
    [ "$n" = "$PROC" ] && continue
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in $NODES; do
    [ "$n" = "$PROC" ] && continue
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done

finish
