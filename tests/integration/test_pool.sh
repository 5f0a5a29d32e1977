#!/bin/sh
# test_pool.sh: with --quorum-size auto the layer pool and the planner form the pipeline.
#
# A, B and C each offer 256 MB (204.8 MB of it for layers) for model 8x512 with the daemon's
# 8192-token vocabulary: a block costs 41.5 MB at 16 bytes a parameter, the embedding and the LM
# head 64 MB each, the whole model 460 MB. So no node holds more than about half of it (the
# initiator's 0..3 is 189 MB). No quorum size is given: every heartbeat each node runs the layer
# pool over the nodes it hears and takes the scarcest layers its memory fits, the planner finds
# the fewest free holders that cover layers 0..7, and the smallest of them proposes. They must
# form one quorum of three on their own, each member running layers it holds, and train: the
# finisher's loss falls. D, a fourth 256 MB node that comes later, takes layers that a stage
# runs and follows that stage as a replica. Then the member running that stage is killed with -9:
# D takes its stage over from the checkpoint it pulled and the pipeline trains on. A node in pool
# mode without --model is refused.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --threads 1 --train on --ponw-interval-s 1 --sync-every off --quorum-size auto"
POOL="$COMMON --model 8x512 --memory-mb 256 --checkpoint-every 2"
STEPS=3
NODES="a b c"
for n in a b c d e; do new_wallet "$TMP_ROOT/$n" >/dev/null; done

status_of() { curl -s "http://$1/training_status"; }
# held_of JSON: "FIRST LAST", the range the node says it holds
held_of() { echo "$1" | grep -o '"held":{"layer_first":[0-9]*,"layer_last":[0-9]*' | sed 's/[^0-9,]//g; s/,/ /'; }
# stages_of JSON: one "FIRST LAST" line a member, in stage order
stages_of() { echo "$1" | grep -o '"layer_first":[0-9]*,"layer_last":[0-9]*,"self"' | sed 's/[^0-9,]//g; s/,$//; s/,/ /'; }

# shellcheck disable=SC2086
start_node "$TMP_ROOT/e" $COMMON --memory-mb 256
check "a node in pool mode without --model is refused at start" test -z "$(cat "$TMP_ROOT/e/api.addr" 2>/dev/null)"
check "  ... and says why" grep -q "quorum-size needs --model" "$TMP_ROOT/e.log"

SEED=""
for n in $NODES; do
    # shellcheck disable=SC2086
    start_node "$TMP_ROOT/$n" $POOL ${SEED:+--bootstrap "$SEED"} || exit 1
    eval "PID_$n=\$NODE_PID API_$n=\$API"
    [ -n "$SEED" ] || SEED=$(curl -s "http://$API/api/stats" | json_field listen)
done

in_quorum() {
    for n in $NODES; do
        eval "api=\$API_$n"
        case "$(status_of "$api")" in *'"in_quorum":true'*) ;; *) return 1 ;; esac
    done
}
if ! wait_for 240 in_quorum; then
    for n in $NODES; do
        eval "api=\$API_$n"
        echo "    $n: $(status_of "$api" | grep -o '"in_quorum".*' | cut -c1-400)" >&2
    done
fi
check "three pool-mode nodes without a quorum size form one quorum" in_quorum
s=$(status_of "$API_a")
check "  ... /training_status says pool mode" contains "$s" '"mode":"pool"'
check "  ... and the pool it sees: 3 nodes, 1 replica each (S3: N < 5)" contains "$s" '"nodes":3,"replicas_target":1'
stages=$(stages_of "$s")
covered=$(echo "$stages" | awk 'BEGIN { at = 0 } $1 != at { exit 1 } { at = $2 } END { if (at != 8 || NR != 3) exit 1; print "yes" }')
check "  ... of three stages that cover layers 0..8 in order ($(echo "$stages" | tr '\n' ' '))" test "$covered" = yes
fits=0
for n in $NODES; do
    eval "api=\$API_$n"
    s=$(status_of "$api")
    held=$(held_of "$s")
    mine=$(echo "$s" | grep -o '"layer_first":[0-9]*,"layer_last":[0-9]*,"self":true' | sed 's/[^0-9,]//g; s/,$//; s/,/ /')
    echo "# $n holds layers $held and runs $mine"
    # shellcheck disable=SC2086
    set -- $held $mine
    [ $# -eq 4 ] && [ "$1" -le "$3" ] && [ "$4" -le "$2" ] && [ $(($2 - $1)) -lt 8 ] && fits=$((fits + 1))
done
check "  ... each member runs layers it holds, and none holds the whole model" test $fits -eq 3
# the planner splits by the time of a layer each member announced (CAPACITY version 3)
times=$(status_of "$API_a" | grep -o '"layer_us":[0-9]*' | cut -d: -f2 | tr '\n' ' ')
check "  ... each member's announced time of a layer is known to the others ($times us)" \
    test "$(echo $times | wc -w)" -eq 3

# shellcheck disable=SC2086
check "  ... one of them is the finisher" wait_for 120 finisher $NODES
[ -n "$FIN" ] || exit 1
eval "API_f=\$API_$FIN"
steps_done() { [ "$(status_of "$API_f" | json_field step)" -ge $STEPS ] 2>/dev/null; }
check "the pipeline trains $STEPS steps" wait_for 600 steps_done
# (three steps of warm-up say nothing about learning: test_pipeline.sh shows the loss falling
# over thirty, and that a pipeline's losses are one process's, digit for digit)
losses=$(sed -n "2,$((STEPS + 1))p" "$TMP_ROOT/$FIN/train.csv" | cut -d, -f2 | tr '\n' ' ')
finite() { for l in $losses; do awk "BEGIN { exit !($l > 0 && $l < 100) }" || return 1; done; }
check "  ... and the finisher reports a finite loss for each ($losses)" finite

# S3 and S5 in the DHT: every holder is found under each layer's key, the quorum under its id
topic_key() { # TYPE TOPIC: the DHT key of a record (ns_record_key)
    { printf 'neuroshard/topic/v1'; printf "\\000\\000\\000\\$(printf '%03o' "$1")"; printf '%s' "$2"; } |
        sha256sum | cut -c1-64
}
holders_of() { # LAYER: authors of layer-holder records under its key, as seen from a node
    curl -s "http://$API_a/api/dht/record?key=$(topic_key 2 "8x512/$1")" | grep -o '"author":"[0-9a-f]*' | sort -u | wc -l
}
all_layers_held() {
    for l in 0 1 2 3 4 5 6 7; do [ "$(holders_of $l)" -ge 1 ] || return 1; done
}
check "every layer's holders are found in the DHT under its layer-holder key" wait_for 60 all_layers_held
QID=$(status_of "$API_f" | json_field quorum_id | cut -c1-32)
quorum_found() {
    curl -s "http://$API_a/api/dht/record?key=$(topic_key 3 "$QID")" | grep -q '"type":3'
}
check "  ... and the quorum under its id" wait_for 60 quorum_found

# a fourth node takes layers a stage runs and follows it
# shellcheck disable=SC2086
start_node "$TMP_ROOT/d" $POOL --bootstrap "$SEED" || exit 1
PID_d=$NODE_PID API_d=$API
follows() { status_of "$API_d" | grep -q '"replica":{"stage":[0-9]'; }
check "a fourth pool-mode node follows a stage as a replica" wait_for 120 follows
s=$(status_of "$API_d")
st=$(echo "$s" | grep -o '"replica":{"stage":[0-9]*' | sed 's/.*://')
# shellcheck disable=SC2046
set -- $(held_of "$s") $(stages_of "$(status_of "$API_a")" | sed -n "$((${st:-0} + 1))p")
echo "# d holds layers $1 $2 and follows stage $st ($3 $4)"
check "  ... whose layers it holds" test $# -eq 4 -a "$1" -le "$3" -a "$4" -le "$2"
check "  ... and is not in the quorum" contains "$s" '"in_quorum":false'

# pool-mode failover: the member running that stage dies; D takes its layers over
copied() { [ "$(status_of "$API_d" | grep -o '"replica":{"stage":[0-9]*,"step":[0-9]*' | sed 's/.*://')" -ge 2 ] 2>/dev/null; }
check "  ... and pulls a checkpoint of that stage (step >= 2)" wait_for 600 copied
ids=$(status_of "$API_a" | grep -o '"node_id":"[0-9a-f]*","stage":[0-9]*' | sed 's/"node_id":"\([0-9a-f]*\)","stage":\([0-9]*\)/\2 \1/')
victim_id=$(echo "$ids" | awk -v st="$st" '$1 == st { print $2 }')
VICTIM=""
LIVE=""
for n in a b c; do
    eval "api=\$API_$n"
    if [ "$(curl -s "http://$api/api/stats" | json_field node_id)" = "$victim_id" ]; then VICTIM=$n; else LIVE="$LIVE $n"; fi
done
check "  ... the member running stage $st is found ($VICTIM)" test -n "$VICTIM"
eval "kill -9 \$PID_$VICTIM"
step_now=$(status_of "$API_d" | grep -o '"replica":{"stage":[0-9]*,"step":[0-9]*' | sed 's/.*://')
took_over() { case "$(status_of "$API_d")" in *'"in_quorum":true'*'"generation":2'* | *'"generation":2'*'"in_quorum":true'*) return 0 ;; esac; return 1; }
check "after kill -9 of $VICTIM, the replica D joins the quorum in its place (generation 2)" wait_for 120 took_over
# shellcheck disable=SC2086
check "  ... with a finisher again" wait_for 120 finisher $LIVE d
[ -n "$FIN" ] || exit 1
eval "API_f2=\$API_$FIN"
target=$((step_now + 2))
trains_on() { [ "$(status_of "$API_f2" | json_field step)" -ge $target ] 2>/dev/null; }
check "  ... and the pipeline trains on from its copy (step $step_now) to step $target" wait_for 600 trains_on

for n in $LIVE d; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in $LIVE d; do
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done

finish
