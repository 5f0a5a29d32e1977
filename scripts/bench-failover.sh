#!/bin/sh
# bench-failover.sh BUILD: how long a pipeline stands still after a member is killed with -9.
#
# Six daemons on loopback ask for quorums of three (a small model, 3x64): three train, three
# follow them as replicas. Once every replica holds a checkpoint, the processor is killed with -9
# and the finisher's figures tell how long it took from the first sign of the death to the
# restart of every stage (failover_ms), and from the kill to the next completed step. Then the
# initiator is stopped with SIGSTOP (its links stay up): its neighbour hears nothing back from its
# RESENDs, not even ALIVE, and the quorum replaces it (stall_to_next_step_ms, against the 20 s its
# heartbeats take to go stale). Prints bench lines for scripts/bench.sh (goal: the flow resumes
# within 1 s after a kill).
set -eu
build=${1:-build}
root=$(mktemp -d "${TMPDIR:-/tmp}/ns-bench-failover.XXXXXX")
pids=""
trap 'for p in $pids; do kill -9 $p 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$root"' EXIT
mkdir -p "$root/text"
cat README.md docs/design.md >"$root/text/a.txt"
cat docs/operator.md docs/ledger.md >"$root/text/b.txt"

status() { curl -s "http://$(cat "$root/$1/api.addr")/training_status"; }
seed=""
for n in 1 2 3 4 5 6; do
    d=$root/n$n
    NEUROSHARD_PASSPHRASE= "$build/neuroctl" --data-dir "$d" wallet new >/dev/null
    "$build/neuroshardd" --data-dir "$d" --api-listen 127.0.0.1:0 --listen 127.0.0.1:0 \
        --lan-discovery off --dataset "$root/text" --model 3x64 --micro-batches 4 --threads 1 \
        --train on --quorum-size 3 --checkpoint-every 5 ${seed:+--bootstrap "$seed"} \
        >"$d.log" 2>&1 &
    pids="$pids $!"
    eval "pid_n$n=\$!"
    i=0
    while [ ! -s "$d/api.addr" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    [ -n "$seed" ] || { sleep 0.3; seed=$(curl -s "http://$(cat "$d/api.addr")/api/stats" | sed -n 's/.*"listen":"\([^"]*\)".*/\1/p'); }
done

ready() {
    r=0
    for n in 1 2 3 4 5 6; do
        s=$(status n$n)
        step=$(echo "$s" | grep -o '"replica":{"stage":[0-9]*,"step":[0-9]*' | sed 's/.*"step"://')
        [ "${step:-0}" -ge 5 ] && r=$((r + 1))
    done
    [ $r -eq 3 ]
}
i=0
until ready; do
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "bench-failover: replicas not ready" >&2; exit 1; }
    sleep 0.5
done
proc="" fin="" init=""
for n in 1 2 3 4 5 6; do
    case "$(status n$n | grep -o '"role":"[a-z]*' | head -1)" in
    *processor) proc=n$n ;;
    *finisher) fin=n$n ;;
    *initiator) init=n$n ;;
    esac
done
eval "kill -9 \$pid_$proc"
t0=$(date +%s.%N)
# resumed GEN: the finisher's restarted stage completes a step (its new trainer has seen tokens)
resumed() {
    i=0
    while :; do
        s=$(status "$fin")
        gen=$(echo "$s" | grep -o '"generation":[0-9]*' | cut -d: -f2)
        seen=$(echo "$s" | sed -n 's/.*"tokens_seen":\([0-9]*\).*/\1/p')
        [ "${gen:-1}" -ge "$1" ] && [ "${seen:-0}" -gt 0 ] && break
        i=$((i + 1))
        [ $i -lt 1200 ] || { echo "bench-failover: no failover to generation $1" >&2; exit 1; }
        sleep 0.05
    done
}
resumed 2
t1=$(date +%s.%N)
ms=$(echo "$s" | grep -o '"failover_ms":[0-9]*' | cut -d: -f2)

# the stall: once the initiator's replica holds a copy from the new generation
c2=$(grep -o "restarting stage [0-9] of 3 from step [0-9]*" "$root/$fin.log" | tail -1 | sed 's/.* //')
fresh() {
    for n in 1 2 3 4 5 6; do
        step=$(status n$n 2>/dev/null | grep -o '"replica":{"stage":0,"step":[0-9]*' | sed 's/.*"step"://')
        [ "${step:-0}" -gt "${c2:-0}" ] && return 0
    done
    return 1
}
i=0
until fresh; do
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "bench-failover: the initiator's replica has no fresh copy" >&2; exit 1; }
    sleep 0.5
done
eval "kill -STOP \$pid_$init"
t2=$(date +%s.%N)
resumed 3
t3=$(date +%s.%N)
eval "kill -CONT \$pid_$init"
awk -v t2="$t2" -v t3="$t3" 'BEGIN {
    printf "bench stall_to_next_step_ms=%.0f heartbeats_stale_ms=20000 ratio=%.2f goal=-\n",
        (t3 - t2) * 1000, 20 / (t3 - t2)
}'
awk -v ms="$ms" -v t0="$t0" -v t1="$t1" 'BEGIN {
    printf "bench failover_ms=%d goal_ms=1000 ratio=%.2f goal=1.0\n", ms, 1000 / (ms > 0 ? ms : 1)
    printf "bench kill_to_next_step_ms=%.0f goal_ms=- ratio=- goal=-\n", (t1 - t0) * 1000
}'
