#!/bin/sh
# test_tiers.sh: S2's contribution modes, mode = f(tier, quorum availability). M trains the whole
# model alone (a quorum of one) and meets its layer cohort every 8 steps. S and F both want a
# pipeline of two (--quorum-size 2), but S's self-benchmark puts it in T5 (a layer's forward
# over 1 s; NEUROSHARD_TEST_LAYER_MS=1500 makes it measure so): too slow for any pipeline. So no
# quorum forms: F never enlists S and keeps waiting, and S trains the whole model as an
# asynchronous contributor (S7) instead: it downloads M's weights, trains, submits its update,
# which M folds into its own, and downloads again. P is as slow, in pool mode (--quorum-size auto):
# it holds no layers in the pool and trains asynchronously too.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 2x64 --threads 1 --train on --sync-every 8 --sync-timeout-s 5 --checkpoint-every 8"
for n in m s f p; do new_wallet "$TMP_ROOT/$n" >/dev/null; done

# shellcheck disable=SC2086
start_node "$TMP_ROOT/m" $COMMON || exit 1
PID_m=$NODE_PID API_m=$API
SEED=$(curl -s "http://$API_m/api/stats" | json_field listen)
export NEUROSHARD_TEST_LAYER_MS=1500
# shellcheck disable=SC2086
start_node "$TMP_ROOT/s" $COMMON --quorum-size 2 --bootstrap "$SEED" || exit 1
PID_s=$NODE_PID API_s=$API
# shellcheck disable=SC2086
start_node "$TMP_ROOT/p" $COMMON --quorum-size auto --bootstrap "$SEED" || exit 1
PID_p=$NODE_PID API_p=$API
unset NEUROSHARD_TEST_LAYER_MS
# shellcheck disable=SC2086
start_node "$TMP_ROOT/f" $COMMON --quorum-size 2 --bootstrap "$SEED" || exit 1
PID_f=$NODE_PID API_f=$API

status_of() { curl -s "http://$1/training_status"; }
quorum_field() { status_of "$1" | sed -n 's/.*"quorum":{\(.*\)/\1/p' | json_field "$2"; }
async_field() { status_of "$1" | sed -n 's/.*"async":{\([^}]*\)}.*/\1/p' | json_field "$2"; }

is_t5() { [ "$(quorum_field "$API_s" tier)" = T5 ]; }
check "the slow node's self-benchmark puts it in T5" wait_for 60 is_t5
trains_async() { [ "$(quorum_field "$API_s" contribution)" = async ]; }
check "  ... so it trains asynchronously instead of waiting for a pipeline" wait_for 60 trains_async
check "  ... and says so in /training_status" contains "$(status_of "$API_s")" '"role":"asynchronous contributor'
check "  ... and in its log" grep -q "trains the whole model as an asynchronous contributor" "$TMP_ROOT/s.log"
out=$("$CTL" --data-dir "$TMP_ROOT/s" quorum 2>&1)
check "  ... and neuroctl quorum" contains "$out" "contribution  asynchronous: tier T5"

downloaded() { [ "$(async_field "$API_s" downloads)" -ge 2 ] 2>/dev/null; }
check "it downloads the member's weights, trains and downloads again" wait_for 600 downloaded
ID_s=$(curl -s "http://$API_s/api/stats" | json_field node_id | cut -c1-16)
folded() { grep -q "contribution of $ID_s… (weight" "$TMP_ROOT/m.log"; }
check "  ... and the member folds its contribution in" wait_for 120 folded

check "the other node wants a pipeline of two but never enlists the T5 node" test "$(quorum_field "$API_f" contribution)" = "waiting for a quorum"
check "  ... nobody joined a quorum" sh -c "! grep -q 'joined quorum' '$TMP_ROOT/s.log' '$TMP_ROOT/f.log'"
check "  ... and the T5 node never proposed or accepted one" test "$(quorum_field "$API_s" in_quorum)" = false

pool_async() { [ "$(quorum_field "$API_p" contribution)" = async ] && [ "$(async_field "$API_p" downloads)" -ge 1 ] 2>/dev/null; }
check "in pool mode a T5 node trains asynchronously too" wait_for 120 pool_async
held=$(status_of "$API_p" | sed -n 's/.*"held":{\([^}]*\)}.*/\1/p')
check "  ... and holds no layers in the pool ($held)" test "$(echo "$held" | json_field layer_last)" = 0

for n in s f p m; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done
finish
