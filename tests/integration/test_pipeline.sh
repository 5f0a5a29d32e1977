#!/bin/sh
# test_pipeline.sh: three daemons form a quorum and train one model as a pipeline.
#
# A, B and C ask for a quorum of three (--quorum-size 3) on one folder of text; the smallest id
# proposes, each takes a third of the layers, and they train: activations forward and gradients
# back over their encrypted links, the gradient norm and the clip scale along the chain. R trains
# the same model alone with the same micro-batches. The finisher's losses must be R's, digit for
# digit (the reproducible mode computes the same bits whatever the split), and fall. Each stage
# proves its work with hashes of the activations it took in and sent on; B lies about them
# (NEUROSHARD_TEST_CHEAT=activations), and the cross-check of neighbouring stages' proofs names it.
# C's link loses every 7th pipeline frame it sends (NEUROSHARD_TEST_DROP_PIPE=7): its neighbours
# wait 200 ms, ask for the frames again (RESEND), and the losses are still R's, digit for digit.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 3x64 --micro-batches 4 --threads 1 --train on --checkpoint-every 2 --ponw-interval-s 1 --sync-every off"
STEPS=6
for n in r a b c; do new_wallet "$TMP_ROOT/$n" >/dev/null; done


# shellcheck disable=SC2086
start_node "$TMP_ROOT/r" $COMMON || exit 1
PID_r=$NODE_PID API_r=$API
# shellcheck disable=SC2086
start_node "$TMP_ROOT/a" $COMMON --quorum-size 3 || exit 1
PID_a=$NODE_PID API_a=$API
SEED=$(curl -s "http://$API_a/api/stats" | json_field listen)
for n in b c; do
    [ $n = b ] && export NEUROSHARD_TEST_CHEAT=activations
    [ $n = c ] && export NEUROSHARD_TEST_DROP_PIPE=7
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $COMMON --quorum-size 3 --bootstrap "$SEED" || exit 1
    unset NEUROSHARD_TEST_CHEAT NEUROSHARD_TEST_DROP_PIPE
    eval "PID_$n=\$NODE_PID API_$n=\$API"
done

status_of() { curl -s "http://$1/training_status"; }
in_quorum() {
    for n in a b c; do
        eval "api=\$API_$n"
        case "$(status_of "$api")" in *'"in_quorum":true'*) ;; *) return 1 ;; esac
    done
}
check "three nodes that ask for a quorum of three form one" wait_for 120 in_quorum
check "  ... one of them is the finisher" wait_for 60 finisher a b c
[ -n "$FIN" ] || exit 1
roles_of() { for n in a b c; do eval "api=\$API_$n"; status_of "$api" | grep -o '"role":"[a-z]*' | head -1; done | sort | tr '\n' ','; }
all_roles() { roles=$(roles_of) && case "$roles" in *initiator*processor*) return 0 ;; esac && return 1; }
wait_for 60 all_roles
check "  ... with an initiator and a processor" contains "$roles" "initiator"
check "  ... and a processor" contains "$roles" "processor"

eval "API_f=\$API_$FIN"
steps_done() {
    [ "$(status_of "$API_f" | json_field step)" -ge $STEPS ] 2>/dev/null &&
        [ "$(status_of "$API_r" | json_field step)" -ge $STEPS ] 2>/dev/null
}
check "the pipeline trains $STEPS steps" wait_for 600 steps_done
losses() { sed -n "2,$((STEPS + 1))p" "$1/train.csv" | cut -d, -f1,2; }
ref=$(losses "$TMP_ROOT/r")
pipe=$(losses "$TMP_ROOT/$FIN")
check "  ... with the losses of one process holding the whole model, digit for digit" contains "$pipe" "$ref"
sum_of() {
    _t=0
    for n in a b c; do
        eval "api=\$API_$n"
        _v=$(status_of "$api" | json_field "$1")
        _t=$((_t + ${_v:-0}))
    done
    echo $_t
}
asked=$(sum_of resend_asked)
resent=$(sum_of resent)
ahead=$(sum_of ran_ahead)
echo "# forwards run ahead of 1F1B while a gradient was late: $ahead"
runs=$(for n in a b c; do eval "api=\$API_$n"; status_of "$api" | json_field run_ahead; echo; done | sort | tr '\n' ' ')
# 4 micro-batches: 1F1B holds 3, 2 and 1 of them; each stage that waits for gradients may hold all 4
check "  ... the stages may run 1 and 2 forwards ahead of 1F1B, the finisher none ($runs)" \
    test "$runs" = "0 1 2 "
check "  ... though C lost every 7th frame: its neighbours asked again ($asked) and got them ($resent)" test "$asked" -gt 0 -a "$resent" -gt 0
check "  ... and, answered (ALIVE), took no stage for unresponsive" test "$(sum_of unresponsive_raised)" -eq 0
# each step's loss is of another batch, and the first steps' learning rate is tiny (warm-up):
# over 30 steps the mean of the last five falls below that of the first five
LONG=30
long_done() { [ "$(status_of "$API_f" | json_field step)" -ge $LONG ] 2>/dev/null; }
check "  ... and trains on to step $LONG" wait_for 600 long_done
mean_loss() { sed -n "$(($1 + 1)),$(($2 + 1))p" "$TMP_ROOT/$FIN/train.csv" | cut -d, -f2 | awk '{ s += $1 } END { printf "%.5f", s / NR }'; }
first=$(mean_loss 1 5)
last=$(mean_loss $((LONG - 4)) $LONG)
check "  ... and the loss falls (steps 1-5: $first, $((LONG - 4))-$LONG: $last)" awk "BEGIN { exit !($last < $first) }"
s=$(status_of "$API_f")
check "/training_status shows the pipeline's stages, bubble and refusals" contains "$s" '"bubble_1f1b":'
check "  ... and the quorum's members" contains "$s" '"role":"initiator"'
check "  ... each with the round trip this node measured to it (SWARM_PING)" contains "$s" '"rtt_ms":'
benchmarked() {
    _s=$(status_of "$API_f")
    echo "$_s" | grep -q '"tier":"T[1-5]"' && echo "$_s" | grep -q '"layer_latency_us":[1-9]'
}
check "the self-benchmark timed a layer and gave a tier (S2)" wait_for 20 benchmarked
q=$("$CTL" --data-dir "$TMP_ROOT/$FIN" quorum 2>&1)
check "neuroctl quorum lists the members" contains "$q" "finisher"
API=$API_f
g=$(http POST /generate_text -H "Authorization: Bearer $(cat "$TMP_ROOT/$FIN/api.token")" -d '{"prompt":"the"}')
check "a stage refuses generation it cannot do alone" contains "$g" "503"

# every stage proves its segments of aligned steps; B's hashes of its activations are lies
cross_mismatched() {
    for n in a b c; do
        eval "api=\$API_$n"
        [ "$(curl -s "http://$api/api/ponw" | json_field cross_mismatched)" -gt 0 ] 2>/dev/null && return 0
    done
    return 1
}
check "the cross-check of neighbouring stages' proofs finds the lying stage" wait_for 60 cross_mismatched
ID_b=$(curl -s "http://$API_b/api/stats" | json_field node_id | cut -c1-16)
lines=$(cat "$TMP_ROOT"/a.log "$TMP_ROOT"/b.log "$TMP_ROOT"/c.log | grep "cross-check:")
check "  ... and every disagreement it reports involves B" sh -c '! echo "$1" | grep -v "$2"' _ "$lines" "$ID_b"
checked=0
for n in a b c; do
    eval "api=\$API_$n"
    c=$(curl -s "http://$api/api/ponw" | json_field cross_checked)
    checked=$((checked + ${c:-0}))
done
check "  ... after comparing segments ($checked)" test "$checked" -gt 0

for n in r a b c; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in r a b c; do
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done

finish
