#!/bin/sh
# bench-train.sh BUILD SGEMM_PEAK_GFLOPS: solo training and generation of the default model in a
# real neuroshardd, as `make run` starts it (Genesis data, the memory budget's architecture).
#
# Prints bench lines for scripts/bench.sh:
#   train_tokens_per_s against the rate the block's matrix multiplies would reach at the sgemm peak
#     measured in the same run (6 N + 12 L T C floating-point operations a token, N the
#     parameters that multiply: so the ratio is the model FLOPs utilisation);
#   train_peak_rss_mib against the trainer's estimate (weights, gradients, AdamW moments,
#     activations, scratch, KV cache), goal <= 1.5;
#   generate_tokens_per_s (greedy, KV cache) against training's tokens/s.
# The node's data directory is kept in BUILD/bench-node, so the Genesis tokenizer is trained
# once; its checkpoints are removed first, so every run measures from a fresh model.
set -eu
build=${1:-build}
peak=${2:-}
dir=$PWD/$build/bench-node
measure_s=${BENCH_TRAIN_SECONDS:-60}

mkdir -p "$dir"
rm -rf "$dir/checkpoints" "$dir/train.csv" "$dir/api.addr"
[ -f "$dir/key" ] || NEUROSHARD_PASSPHRASE= "$build/neuroctl" --data-dir "$dir" wallet new >/dev/null

"$build/neuroshardd" --data-dir "$dir" --api-listen 127.0.0.1:0 --listen 127.0.0.1:0 \
    --lan-discovery off --train on >"$dir/node.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT

num() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }
status() { curl -s "http://$(cat "$dir/api.addr")/training_status"; }

# Up to 15 minutes for a first start (the Genesis tokenizer is trained once), then 3 steps.
i=0
while :; do
    s=$( [ -f "$dir/api.addr" ] && status || true)
    step=$(printf '%s' "$s" | num step)
    [ "${step:-0}" -ge 3 ] && break
    i=$((i + 1))
    if [ $i -gt 900 ] || ! kill -0 $pid 2>/dev/null; then
        echo "bench-train: the node did not start training; see $dir/node.log" >&2
        exit 1
    fi
    sleep 1
done

tok0=$(status | num tokens_seen)
t0=$(date +%s.%N)
sleep "$measure_s"
s=$(status)
t1=$(date +%s.%N)
tok1=$(printf '%s' "$s" | num tokens_seen)
params=$(printf '%s' "$s" | num params)
layers=$(printf '%s' "$s" | num layers)
hidden=$(printf '%s' "$s" | num hidden)
vocab=$(printf '%s' "$s" | num vocab)
estimate=$(printf '%s' "$s" | num estimate_bytes)

token=$(cat "$dir/api.token")
g=$(curl -s -X POST -H "Authorization: Bearer $token" \
    --data '{"prompt": "The", "max_tokens": 100, "temperature": 0}' \
    "http://$(cat "$dir/api.addr")/generate_text")
gen_rate=$(printf '%s' "$g" | num tokens_per_s)
rss_kib=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status")

awk -v tok0="$tok0" -v tok1="$tok1" -v t0="$t0" -v t1="$t1" -v params="$params" \
    -v layers="$layers" -v hidden="$hidden" -v vocab="$vocab" -v peak="$peak" \
    -v estimate="$estimate" -v rss_kib="$rss_kib" -v gen="${gen_rate:-0}" 'BEGIN {
    rate = (tok1 - tok0) / (t1 - t0)
    seq = 128 # TRAIN_SEQ in src/node/train.c
    flops = 6 * (params - vocab * hidden) + 12 * layers * seq * hidden
    if (peak != "")
        printf "bench train_tokens_per_s=%.0f sgemm_peak_tokens_per_s=%.0f ratio=%.2f goal=-\n",
            rate, peak * 1e9 / flops, rate / (peak * 1e9 / flops)
    else
        printf "bench train_tokens_per_s=%.0f sgemm_peak_tokens_per_s=- ratio=- goal=-\n", rate
    printf "bench train_peak_rss_mib=%.0f estimate_mib=%.0f ratio=%.2f goal=<=1.5\n",
        rss_kib / 1024, estimate / 1048576, rss_kib * 1024 / estimate
    printf "bench generate_tokens_per_s=%.0f train_tokens_per_s=%.0f ratio=%.2f goal=-\n",
        gen, rate, gen / rate
    printf "bench model_params=%d layers_x_hidden=%dx%d ratio=- goal=-\n", params, layers, hidden
}'
