#!/bin/sh
# test_nearest.sh: S5's "minimise latency" in a fixed-size quorum. Four daemons want a pipeline
# of three (--quorum-size 3). The smallest free node proposes itself and the two free nodes
# nearest to it by the round trips it measured (SWARM_PING / PONG), when it knows more free nodes
# than it needs (with just enough it proposes at once; the test then says there was no choice to
# check). F answers pings 400 ms late
# (NEUROSHARD_TEST_PONG_DELAY_MS, as a long home link would), so it is left out, unless it is
# the proposer itself (then the check is only that it proposed). See test_netns.sh for the same
# over emulated links, where the kernel has netem.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 3x64 --threads 1 --train on --quorum-size 3 --sync-every off"
for n in a f b c; do new_wallet "$TMP_ROOT/$n" >/dev/null; done

# shellcheck disable=SC2086
start_node "$TMP_ROOT/a" $COMMON || exit 1
PID_a=$NODE_PID API_a=$API
SEED=$(curl -s "http://$API_a/api/stats" | json_field listen)
for n in f b c; do
    [ $n = f ] && export NEUROSHARD_TEST_PONG_DELAY_MS=400
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $COMMON --bootstrap "$SEED" || exit 1
    unset NEUROSHARD_TEST_PONG_DELAY_MS
    eval "PID_$n=\$NODE_PID API_$n=\$API"
done

status_of() { curl -s "http://$1/training_status"; }
three_in_quorum() {
    MEMBERS=""
    for n in a b c f; do
        eval "api=\$API_$n"
        case "$(status_of "$api")" in *'"in_quorum":true'*) MEMBERS="$MEMBERS$n" ;; esac
    done
    [ ${#MEMBERS} -eq 3 ]
}
check "three of the four form a quorum" wait_for 120 three_in_quorum
proposer=""
for n in a b c f; do
    grep -q "proposing a quorum of 3" "$TMP_ROOT/$n.log" && proposer=$n
done
check "  ... one of them proposed it (${proposer:-none})" test -n "$proposer"
free=$(sed -n 's/.*nearest of \([0-9]*\) free peers.*/\1/p' "$TMP_ROOT/$proposer.log" 2>/dev/null | tail -1)
if [ "$proposer" = f ]; then
    check "  ... F proposed it, so it is a member (members $MEMBERS)" contains "$MEMBERS" f
elif [ "${free:-0}" -lt 3 ]; then # it knew just enough free nodes: it proposed at once
    echo "# $proposer proposed when it knew ${free:-no} other free nodes: no choice to check"
else
    check "  ... $proposer chose the two nearest of the three others: F, 400 ms away, is left out (members $MEMBERS)" test "$MEMBERS" = abc
    far=$(sed -n 's/.*nearest of 3 free peers (round trips up to [0-9.-]* ms; the farthest \([0-9.-]*\) ms.*/\1/p' "$TMP_ROOT/$proposer.log" | tail -1)
    check "  ... by the round trips it measured (the farthest: ${far:-none} ms)" sh -c "awk 'BEGIN { exit !(${far:-0} >= 400) }'"
fi
far_replica() { status_of "$API_f" | grep -q '"contribution":"replica"'; }
case "$MEMBERS" in *f*) ;; *) check "F follows the quorum as a replica" wait_for 60 far_replica ;; esac

for n in a b c f; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done
finish
