#!/bin/sh
# test_cohorts.sh: two pipelines of two stages each sync their stages' layers (S7 layer cohorts).
#
# Six daemons ask for quorums of two (--quorum-size 2) on one model: the first two form a quorum,
# the next two follow its stages as replicas, and with the last two there are free nodes enough
# for a second quorum, each with an initiator (layers 0..1 and the embedding) and a finisher
# (1..2 and the head). The two
# initiators hold the same layers, and so do the two finishers: each pair is a layer cohort and
# meets every 8 steps (--sync-every 8), the initiators' Δ over their range, the finishers' over
# theirs. After a round, each cohort's members hold the same weights of the meeting (w0), bit
# for bit, while the two cohorts hold different tensors; both pipelines keep training.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 2x64 --micro-batches 2 --threads 1 --train on --quorum-size 2 --sync-every 8 --checkpoint-every 4 --sync-timeout-s 5"
NODES="a b c d e f"
for n in $NODES; do new_wallet "$TMP_ROOT/$n" >/dev/null; done

SEED=""
for n in $NODES; do
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $COMMON ${SEED:+--bootstrap "$SEED"} || exit 1
    eval "PID_$n=\$NODE_PID API_$n=\$API"
    [ -n "$SEED" ] || SEED=$(curl -s "http://$API/api/stats" | json_field listen)
done

status_of() { curl -s "http://$1/training_status"; }
sync_field() { status_of "$1" | sed -n "s/.*\"sync\":{\(.*\)/\1/p" | json_field "$2"; }
two_quorums() {
    _q=0
    for n in $NODES; do
        eval "api=\$API_$n"
        case "$(status_of "$api")" in *'"in_quorum":true'*) _q=$((_q + 1)) ;; esac
    done
    [ $_q -eq 4 ]
}
check "six nodes that ask for quorums of two form two (and two replicas)" wait_for 240 two_quorums
roles() { # INIT and FIN: the members that are initiators and finishers; true once both are two
    INIT="" FIN=""
    for n in $NODES; do
        eval "api=\$API_$n"
        case "$(status_of "$api")" in
        *'"role":"initiator (data, embedding)"'*) INIT="$INIT $n" ;;
        *'"role":"finisher (head, loss)"'*) FIN="$FIN $n" ;;
        esac
    done
    # shellcheck disable=SC2086
    [ "$(echo $INIT | wc -w)" -eq 2 ] && [ "$(echo $FIN | wc -w)" -eq 2 ]
}
wait_for 60 roles # a member is in its quorum a moment before its trainer takes its stage
# shellcheck disable=SC2086
set -- $INIT
check "  ... two initiators ($INIT)" test $# -eq 2
# shellcheck disable=SC2086
set -- $FIN
check "  ... and two finishers ($FIN)" test $# -eq 2

# cohort_agrees N1 N2: both past two rounds, on the same round with the same w0
cohort_agrees() {
    eval "a1=\$API_$1 a2=\$API_$2"
    r1=$(sync_field "$a1" outer_round) r2=$(sync_field "$a2" outer_round)
    [ "${r1:-0}" -ge 2 ] 2>/dev/null && [ "$r1" = "$r2" ] &&
        [ "$(sync_field "$a1" w0_sha256)" = "$(sync_field "$a2" w0_sha256)" ]
}
# shellcheck disable=SC2086
check "the initiators' cohort ends its rounds with the same weights" wait_for 600 cohort_agrees $INIT
# shellcheck disable=SC2086
check "  ... and the finishers' cohort too" wait_for 600 cohort_agrees $FIN
# shellcheck disable=SC2086
set -- $INIT $FIN
eval "ai=\$API_$1 af=\$API_$3"
check "  ... two cohorts, two ranges: their weights differ" test "$(sync_field "$ai" w0_sha256)" != "$(sync_field "$af" w0_sha256)"
members=$(sync_field "$ai" cohort)
check "  ... each of two members ($members)" test "${members:-0}" -eq 2

for n in $NODES; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in $NODES; do
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done

finish
