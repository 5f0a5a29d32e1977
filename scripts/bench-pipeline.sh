#!/bin/sh
# bench-pipeline.sh BUILD: pipeline training against solo training of the same model, in real
# neuroshardd processes on this machine, one after the other so each has every core.
#
# Prints bench lines for scripts/bench.sh:
#   pipeline_tokens_per_s: a 2-stage pipeline (two daemons, one compute thread each) against
#     one daemon training the whole model with 2 threads, same model and data (goal >= 0.8);
#   wire_bytes_per_token: activation, gradient and norm bytes the stages sent per trained token,
#     against the activation bytes of one token at the stage boundary (C floats forward and C
#     back): the frames' overhead;
#   bubble: the share of time the stages waited for each other, against 1F1B's (S-1)/(m+S-1);
#   pipeline_lossy_tokens_per_s: the same pipeline when one stage loses every 20th frame it sends
#     (NEUROSHARD_TEST_DROP_PIPE=20: 5 % loss, recovered by RESEND after 200 ms), against the
#     lossless pipeline (BENCH_SKIP_LOSSY=1 skips);
#   pipeline_run_ahead_tokens_per_s: the pipeline as it runs by default (a stage whose gradient
#     is late runs the next forwards ahead, pipeline.h) against the same pipeline in strict 1F1B
#     (--run-ahead 0), with each one's initiator bubble (BENCH_SKIP_STRICT=1 skips).
# The Genesis tokenizer and dataset are copied from BUILD/bench-node when bench-train.sh made
# them (else each node builds its own once, in BUILD/bench-pipe/).
set -eu
build=${1:-build}
model=${BENCH_PIPE_MODEL:-8x512}
measure_s=${BENCH_PIPE_SECONDS:-60}
root=$PWD/$build/bench-pipe
mkdir -p "$root"
pids=""
pipe_flags="" # more flags for both stages of the next pipeline
trap 'for p in $pids; do kill -TERM $p 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

num() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" | head -1; }
status() { curl -s "http://$(cat "$1/api.addr")/training_status"; }

# pipeline NAME1 NAME2 [N]: starts a 2-stage pipeline (NAME1 losing every N-th frame it sends)
# and waits for its finisher (into $fin)
pipeline() {
    drop=${3:-0}
    # shellcheck disable=SC2086
    start "$1" --threads 1 --quorum-size 2 $pipe_flags
    drop=0
    seed=$(curl -s "http://$(cat "$root/$1/api.addr")/api/stats" | sed -n 's/.*"listen":"\([^"]*\)".*/\1/p')
    # shellcheck disable=SC2086
    start "$2" --threads 1 --quorum-size 2 --bootstrap "$seed" $pipe_flags
    fin=""
    i=0
    while [ -z "$fin" ]; do
        for n in "$1" "$2"; do
            case "$(status "$root/$n")" in *'"role":"finisher (head, loss)"'*) fin=$n ;; esac
        done
        i=$((i + 1))
        if [ $i -gt 900 ]; then
            echo "bench-pipeline: no quorum formed; see $root/$1.log" >&2
            exit 1
        fi
        sleep 1
    done
    wait_steps "$root/$fin" 3
}

# start NAME FLAGS...: a fresh model in root/NAME (tokenizer and dataset kept or copied)
start() {
    d=$root/$1
    shift
    mkdir -p "$d"
    rm -rf "$d/checkpoints" "$d/train.csv" "$d/api.addr" "$d/proofs"
    [ -f "$d/key" ] || NEUROSHARD_PASSPHRASE= "$build/neuroctl" --data-dir "$d" wallet new >/dev/null
    src=$PWD/$build/bench-node
    if [ ! -f "$d/tokenizer.bpe" ] && [ -f "$src/tokenizer.bpe" ]; then
        cp "$src/tokenizer.bpe" "$d/" && cp -r "$src/dataset" "$d/" 2>/dev/null || true
    fi
    NEUROSHARD_TEST_DROP_PIPE=${drop:-0} "$build/neuroshardd" --data-dir "$d" \
        --api-listen 127.0.0.1:0 --listen 127.0.0.1:0 \
        --lan-discovery off --train on --model "$model" "$@" >"$d.log" 2>&1 &
    pids="$pids $!"
    i=0
    while [ ! -s "$d/api.addr" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
}

# wait_steps DIR N: until the node at DIR has made N steps (15 minutes at most: a first start
# trains the tokenizer)
wait_steps() {
    i=0
    while [ "$(status "$1" | num step)" -lt "$2" ] 2>/dev/null || [ -z "$(status "$1" | num step)" ]; do
        i=$((i + 1))
        if [ $i -gt 900 ]; then
            echo "bench-pipeline: $1 did not train; see $1.log" >&2
            exit 1
        fi
        sleep 1
    done
}

# rate DIR: tokens a second over measure_s
rate() {
    t0=$(status "$1" | num tokens_seen)
    s0=$(date +%s.%N)
    sleep "$measure_s"
    t1=$(status "$1" | num tokens_seen)
    s1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" 'BEGIN { printf "%.1f", (b - a) / (e - s) }'
}

stop_all() {
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=""
}

echo "bench-pipeline: solo, 2 threads, model $model" >&2
start solo --threads 2
wait_steps "$root/solo" 3
solo=$(rate "$root/solo")
stop_all

echo "bench-pipeline: a 2-stage pipeline, 1 thread a stage" >&2
pipeline s1 s2
b0=$(($(status "$root/s1" | num bytes_out) + $(status "$root/s2" | num bytes_out)))
tok0=$(status "$root/$fin" | num tokens_seen)
pipe=$(rate "$root/$fin")
b1=$(($(status "$root/s1" | num bytes_out) + $(status "$root/s2" | num bytes_out)))
tok1=$(status "$root/$fin" | num tokens_seen)
s=$(status "$root/$fin")
m=$(printf '%s' "$s" | num micro_batches)
bubble=$(printf '%s' "$s" | num bubble)
theory=$(printf '%s' "$s" | num bubble_1f1b)
other=s1
[ "$fin" = s1 ] && other=s2
bubble_other=$(status "$root/$other" | num bubble)
hidden=${model#*x}
stop_all

lossy=""
if [ "${BENCH_SKIP_LOSSY:-0}" != 1 ]; then
    echo "bench-pipeline: the same pipeline, one stage losing every 20th frame it sends" >&2
    pipeline l1 l2 20
    lossy=$(rate "$root/$fin")
    asked=$(($(status "$root/l1" | num resend_asked) + $(status "$root/l2" | num resend_asked)))
    stop_all
fi

strict=""
if [ "${BENCH_SKIP_STRICT:-0}" != 1 ]; then
    echo "bench-pipeline: the same pipeline in strict 1F1B (--run-ahead 0)" >&2
    pipe_flags="--run-ahead 0"
    pipeline r1 r2
    pipe_flags=""
    strict=$(rate "$root/$fin")
    other=r1
    [ "$fin" = r1 ] && other=r2
    strict_bubble=$(status "$root/$other" | num bubble)
    ahead=$(status "$root/$other" | num ran_ahead)
    stop_all
fi

awk -v solo="$solo" -v pipe="$pipe" -v b0="$b0" -v b1="$b1" -v t0="$tok0" -v t1="$tok1" \
    -v c="$hidden" -v m="$m" -v bf="$bubble" -v bo="$bubble_other" -v th="$theory" 'BEGIN {
    printf "bench pipeline_tokens_per_s=%.0f solo_2_threads_tokens_per_s=%.0f ratio=%.2f goal=>=0.8\n",
        pipe, solo, pipe / solo
    per = (b1 - b0) / (t1 - t0)
    printf "bench wire_bytes_per_token=%.0f activation_bytes_per_token=%d ratio=%.3f goal=-\n",
        per, 8 * c, per / (8 * c)
    printf "bench bubble_initiator=%.3f bubble_1f1b_m%d=%.3f ratio=%.2f goal=-\n",
        bo, m, th, (th > 0 ? bo / th : 0)
    printf "bench bubble_finisher=%.3f bubble_1f1b_m%d=%.3f ratio=%.2f goal=-\n",
        bf, m, th, (th > 0 ? bf / th : 0)
}'
if [ -n "$lossy" ]; then
    awk -v l="$lossy" -v p="$pipe" -v a="${asked:-0}" 'BEGIN {
        printf "bench pipeline_lossy_tokens_per_s=%.0f pipeline_tokens_per_s=%.0f ratio=%.2f goal=-\n",
            l, p, l / p
        printf "bench-pipeline: at 5 %% loss the stages asked for %d resends\n", a > "/dev/stderr"
    }'
fi
if [ -n "$strict" ]; then
    awk -v r="$pipe" -v st="$strict" -v bo="$bubble_other" -v sb="$strict_bubble" 'BEGIN {
        printf "bench pipeline_run_ahead_tokens_per_s=%.0f pipeline_strict_1f1b_tokens_per_s=%.0f ratio=%.2f goal=-\n",
            r, st, r / st
        printf "bench bubble_initiator_run_ahead=%.3f bubble_initiator_strict_1f1b=%.3f ratio=%.2f goal=-\n",
            bo, sb, (sb > 0 ? bo / sb : 0)
    }'
    echo "bench-pipeline: strict 1F1B ran ${ahead:-?} forwards ahead (0 expected)" >&2
fi
