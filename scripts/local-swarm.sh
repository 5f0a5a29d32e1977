#!/bin/sh
# local-swarm.sh [N] [MODEL]: starts N nodes on this machine that form one quorum and train a
# model (default 3 nodes, model 6x128) as a pipeline, and shows the finisher's progress until
# Ctrl-C stops them all.
#
# Each node gets its own wallet and data directory under $SWARM_DIR (default ./swarm), a free
# loopback port, one compute thread, and bootstraps from the first. Run `make` first (or let
# this script do it). Watch any node with
#     build/neuroctl --data-dir swarm/node1 train status
#     build/neuroctl --data-dir swarm/node1 quorum
set -eu
N=${1:-3}
MODEL=${2:-6x128}
BUILD=${BUILD:-build}
DIR=${SWARM_DIR:-swarm}
case "$N" in '' | *[!0-9]*) echo "usage: $0 [N] [LxH]" >&2 && exit 2 ;; esac
if [ "$N" -lt 2 ] || [ "$N" -gt 16 ]; then
    echo "local-swarm: N must be 2..16 (one node trains alone with 'make run')" >&2
    exit 2
fi
[ -x "$BUILD/neuroshardd" ] && [ -x "$BUILD/neuroctl" ] || make --no-print-directory "$BUILD/neuroshardd" "$BUILD/neuroctl"
NSD=$BUILD/neuroshardd
CTL=$BUILD/neuroctl
mkdir -p "$DIR"
PIDS=""
stop_all() {
    trap - INT TERM EXIT
    echo
    echo "local-swarm: stopping $N nodes (each saves a checkpoint)"
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null || true; done
    wait
}
trap stop_all INT TERM EXIT

seed=""
i=1
while [ "$i" -le "$N" ]; do
    d=$DIR/node$i
    [ -f "$d/key" ] || "$CTL" --data-dir "$d" wallet new >/dev/null
    rm -f "$d/api.addr"
    # shellcheck disable=SC2086
    "$NSD" --data-dir "$d" --api-listen 127.0.0.1:0 --listen 127.0.0.1:0 --lan-discovery off \
        --model "$MODEL" --quorum-size "$N" --threads 1 ${seed:+--bootstrap "$seed"} \
        2>>"$d.log" &
    PIDS="$PIDS $!"
    t=0
    while [ ! -s "$d/api.addr" ] && [ $t -lt 200 ]; do sleep 0.05; t=$((t + 1)); done
    if [ -z "$seed" ]; then
        sleep 0.5
        seed=$(curl -s "http://$(cat "$d/api.addr")/api/stats" | sed -n 's/.*"listen":"\([^"]*\)".*/\1/p')
    fi
    echo "local-swarm: node$i started (log $d.log)"
    i=$((i + 1))
done

echo "local-swarm: waiting for the quorum; Ctrl-C stops the swarm"
while :; do
    sleep 5
    i=1
    line=""
    while [ "$i" -le "$N" ]; do
        s=$(curl -s "http://$(cat "$DIR/node$i/api.addr")/training_status" 2>/dev/null || true)
        case "$s" in
        *'"role":"finisher (head, loss)"'*)
            step=$(echo "$s" | sed -n 's/.*"step":\([0-9]*\).*/\1/p')
            loss=$(echo "$s" | sed -n 's/.*"loss":\([0-9.]*\).*/\1/p')
            tps=$(echo "$s" | sed -n 's/.*"tokens_per_s":\([0-9.]*\).*/\1/p')
            line="step $step  loss $loss  ${tps%%.*} tokens/s  (finisher: node$i)"
            ;;
        esac
        i=$((i + 1))
    done
    echo "local-swarm: ${line:-forming the quorum...}"
done
