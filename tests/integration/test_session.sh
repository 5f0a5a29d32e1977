#!/bin/sh
# test_session.sh: a quorum's session (S5). Two nodes form a pipeline with a 10 s session; at 80 %
# of it the member with the smaller id finds far fewer than the 1,000 steps a renewal needs, so
# it tells the other and both dissolve, saving their weights in a checkpoint; being free again
# they form a new quorum and training goes on from where it stopped.

. "$(dirname "$0")/lib.sh"

TXT=$TMP_ROOT/text
text_dir "$TXT"
COMMON="--listen 127.0.0.1:0 --lan-discovery off --dataset $TXT --model 2x64 --threads 1 --train on --quorum-size 2 --quorum-session-s 10 --sync-every off"
for n in a b; do new_wallet "$TMP_ROOT/$n" >/dev/null; done
# shellcheck disable=SC2086
start_node "$TMP_ROOT/a" $COMMON || exit 1
PID_a=$NODE_PID API_a=$API
SEED=$(curl -s "http://$API_a/api/stats" | json_field listen)
# shellcheck disable=SC2086
start_node "$TMP_ROOT/b" $COMMON --bootstrap "$SEED" || exit 1
PID_b=$NODE_PID API_b=$API

status_of() { curl -s "http://$1/training_status"; }
both_in_quorum() {
    for api in "$API_a" "$API_b"; do
        case "$(status_of "$api")" in *'"in_quorum":true'*) ;; *) return 1 ;; esac
    done
}
check "two nodes form a quorum" wait_for 120 both_in_quorum
dissolved() {
    grep -q "the quorum dissolves: too few steps in the session to renew it" "$TMP_ROOT/a.log" "$TMP_ROOT/b.log" &&
        grep -q "the quorum dissolves: the session is over (told by a member)" "$TMP_ROOT/a.log" "$TMP_ROOT/b.log"
}
check "at 80 % of its session, short of 1,000 steps, the quorum dissolves (both members)" wait_for 60 dissolved
saved() {
    for n in a b; do
        sed -n '/the quorum dissolves/,$p' "$TMP_ROOT/$n.log" | grep -q "train: checkpoint step=" || return 1
    done
}
check "  ... each saving its weights" wait_for 30 saved
step_at=$(sed -n '/the quorum dissolves/,$p' "$TMP_ROOT/a.log" | sed -n 's/.*train: checkpoint step=\([0-9]*\).*/\1/p' | head -1)
again() {
    [ "$(grep -c "joined quorum" "$TMP_ROOT/a.log")" -ge 2 ] && both_in_quorum
}
check "  ... and they form a new quorum" wait_for 60 again
d=$(status_of "$API_a" | json_field dissolutions)
check "/training_status counts the dissolution ($d)" test "${d:-0}" -ge 1
resumed() { grep -q "resumed from checkpoint step=$step_at" "$TMP_ROOT/a.log"; }
check "  ... and training resumes from the saved step ($step_at)" wait_for 30 resumed
past() { [ "$(status_of "$API_a" | json_field step)" -gt "${step_at:-0}" ] 2>/dev/null; }
check "  ... and goes past it" wait_for 120 past

for n in a b; do
    eval "pid=\$PID_$n"
    kill -TERM "$pid"
done
for n in a b; do
    eval "pid=\$PID_$n"
    wait_exit "$pid" 60
    check "node $n stops cleanly" test "$EXIT_RC" -eq 0
done

finish
