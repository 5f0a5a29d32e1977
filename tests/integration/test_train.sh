#!/bin/sh
# test_train.sh: solo training in a real daemon, on a small model and a small folder of text.
#
# A model that does not fit is refused before anything is written; the trainer runs, is switched
# off and on, runs queued steps while off, writes a checkpoint when stopped, resumes from it after
# a restart and after kill -9, and refuses a damaged tokenizer without replacing it.

. "$(dirname "$0")/lib.sh"

D=$TMP_ROOT/node
new_wallet "$D" >/dev/null
TXT=$TMP_ROOT/text
mkdir -p "$TXT"
cat README.md docs/design.md >"$TXT/a.txt"
cat docs/operator.md docs/protocol.md >"$TXT/b.txt"
SMALL="--train on --dataset $TXT --model 2x64"

json_num() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }

status_step() { curl -s "http://$API/training_status" | json_num step; }

# wait_step N: until the trainer has done N steps (or 120 s).
wait_step() {
    _ws=0
    while [ $_ws -lt 1200 ]; do
        s=$(status_step)
        [ "${s:-0}" -ge "$1" ] && return 0
        sleep 0.1
        _ws=$((_ws + 1))
    done
    echo "    trainer stuck at step ${s:-?}: $(curl -s "http://$API/training_status")" >&2
    return 1
}

# ---- refusals before anything is written ---------------------------------------------------
before=$(tree_sum "$D")
out=$("$NSD" --data-dir "$D" --api-listen 127.0.0.1:0 --train on --memory-mb 100 2>&1)
check "a memory budget below the smallest model is refused" test $? -eq 1
check "  ... saying so" contains "$out" "below the smallest model"
out=$("$NSD" --data-dir "$D" --api-listen 127.0.0.1:0 --train on --model 8x1024 --memory-mb 300 2>&1)
check "a model larger than the memory budget is refused" test $? -eq 1
check "  ... saying so" contains "$out" "more than the budget"
out=$("$NSD" --data-dir "$D" --api-listen 127.0.0.1:0 --train on --model 64x16384 --memory-mb 4000000 2>&1)
check "a model larger than the free memory is refused" test $? -eq 1
check "  ... saying so" contains "$out" "MiB are free"
check "  ... and nothing on disk changed" test "$(tree_sum "$D")" = "$before"

# ---- training, the switch, queued steps ----------------------------------------------------
# shellcheck disable=SC2086
check "the daemon starts and trains" start_node "$D" $SMALL
check "  ... it makes steps" wait_step 3
r=$(curl -s "http://$API/training_status")
check "/training_status reports the model and the loss" contains "$r" '"model":{"layers":2,"hidden":64'
check "  ... with a finite loss" test -n "$(printf '%s' "$r" | json_num loss)"
out=$("$CTL" --data-dir "$D" train status)
check "neuroctl train status" contains "$out" "2 layers x 64 hidden"
check "neuroctl train stop" contains "$("$CTL" --data-dir "$D" train stop)" "training stopped"
sleep 1
s1=$(status_step)
sleep 1.5
s2=$(status_step)
check "  ... no more steps while stopped ($s1 then $s2)" test "$s2" -eq "$s1"
TOKEN=$(cat "$D/api.token")
r=$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $TOKEN" --data '{"steps": 2}' \
    "http://$API/train_step")
check "POST /train_step queues steps while stopped" contains "$r" '{"queued":2} 202'
check "  ... and they run" wait_step $((s2 + 2))
r=$(curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $TOKEN" --data '{"steps": -3}' \
    "http://$API/train_step")
check "  ... bad parameters are a 400" contains "$r" ' 400'
r=$(curl -s -w ' %{http_code}' -X POST --data '{"steps": 1}' "http://$API/train_step")
check "  ... and the token is required" contains "$r" ' 401'
# ---- generation (the trainer is paused: the weights stay put) ----------------------------
gen() { curl -s -w ' %{http_code}' -X POST -H "Authorization: Bearer $TOKEN" --data "$1" "http://$API/generate_text"; }
ids_of() { sed -n 's/.*"tokens":\[\([0-9,]*\)\].*/\1/p'; }
g1=$(gen '{"prompt": "The node", "max_tokens": 12, "temperature": 0}')
check "POST /generate_text answers with text and token ids" contains "$g1" '"generated_tokens":12'
check "  ... 200" contains "$g1" ' 200'
g2=$(gen '{"prompt": "The node", "max_tokens": 12, "temperature": 0}')
check "  ... greedy twice gives the same tokens" test "$(printf '%s' "$g1" | ids_of)" = "$(printf '%s' "$g2" | ids_of)"
s1=$(gen '{"prompt": "The node", "max_tokens": 16, "temperature": 1.0, "top_k": 0, "seed": 7}')
s2=$(gen '{"prompt": "The node", "max_tokens": 16, "temperature": 1.0, "top_k": 0, "seed": 7}')
check "  ... the same seed gives the same sample" test "$(printf '%s' "$s1" | ids_of)" = "$(printf '%s' "$s2" | ids_of)"
check "  ... and reports it" contains "$s1" '"seed":7'
ids=$(printf '%s' "$g1" | ids_of)
t1=$(gen "{\"tokens\": [$ids], \"max_tokens\": 3, \"temperature\": 0}")
check "  ... a prompt given as token ids" contains "$t1" "\"prompt_tokens\":12"
check "  ... bad parameters are a 400 with the reason" contains "$(gen '{"prompt": "x", "top_p": 2}')" 'top_p must be in (0, 1]'
check "  ... an unknown field is a 400" contains "$(gen '{"prompt": "x", "temp": 1}')" '"unknown field \"temp\"'
check "  ... a token id outside the vocabulary is a 400" contains "$(gen '{"tokens": [1, 8192]}')" 'outside the vocabulary'
long=$(awk 'BEGIN { for (i = 0; i < 300; i++) printf "word%d ", i }')
check "  ... a prompt longer than the context is a 400" contains "$(gen "{\"prompt\": \"$long\"}")" 'the context holds 128'
r=$(curl -s -w ' %{http_code}' -X POST --data '{"prompt": "x"}' "http://$API/generate_text")
check "  ... and the token is required" contains "$r" ' 401'
out=$("$CTL" --data-dir "$D" generate --max-tokens 5 --temperature 0 "The node" 2>&1)
check "neuroctl generate prints the prompt and its continuation" contains "$out" "The node"
check "  ... and what it did" contains "$out" "5 tokens in"
out=$("$CTL" --data-dir "$D" generate --top-k -3 "x" 2>&1)
check "  ... and refuses a bad option" contains "$out" "--top-k needs a whole number"
m=$(curl -s "http://$API/metrics")
check "/metrics tells the training step and the generations" contains "$m" 'neuroshard_generate_requests_total{result="ok"} 6'
check "  ... and the loss" contains "$m" 'neuroshard_train_loss '
check "neuroctl train start" contains "$("$CTL" --data-dir "$D" train start)" "training started"
s3=$(status_step)
check "  ... steps go on" wait_step $((s3 + 2))
g3=$(gen '{"prompt": "The node", "max_tokens": 4}')
check "generation is answered while training runs" contains "$g3" ' 200'


# ---- checkpoint on stop, resume ------------------------------------------------------------
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 120
check "SIGTERM stops the trainer cleanly" test "$EXIT_RC" -eq 0
last=$(ls "$D/checkpoints" | sed -n 's/^ckpt-//p' | sort -n | tail -1)
check "  ... after writing a checkpoint (step ${last:-none})" test -n "$last"
check "  ... with weights, optimizer state, config and state" \
    test -f "$D/checkpoints/ckpt-$last/model.safetensors" -a -f "$D/checkpoints/ckpt-$last/optimizer.safetensors" \
    -a -f "$D/checkpoints/ckpt-$last/config.json" -a -f "$D/checkpoints/ckpt-$last/state.json"
check "  ... a Hugging Face LlamaConfig" contains "$(cat "$D/checkpoints/ckpt-$last/config.json")" '"LlamaForCausalLM"'
# shellcheck disable=SC2086
check "restart" start_node "$D" $SMALL
r=$(curl -s "http://$API/training_status")
check "  ... resumes at the saved step" wait_step "$last"
s4=$(status_step)
check "  ... and goes on from there" wait_step $((s4 + 1))

# ---- kill -9 -------------------------------------------------------------------------------
kill -9 "$NODE_PID"
wait_exit "$NODE_PID" 5
# shellcheck disable=SC2086
check "restart after kill -9" start_node "$D" $SMALL
check "  ... resumes from the last checkpoint" wait_step "$last"
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 120

# ---- a damaged tokenizer is refused, not replaced ------------------------------------------
printf 'not a tokenizer' >"$D/tokenizer.bpe"
tok=$(sha256sum "$D/tokenizer.bpe")
# shellcheck disable=SC2086
start_node "$D" $SMALL
i=0
while [ $i -lt 100 ]; do
    r=$(curl -s "http://$API/training_status")
    case "$r" in *'"phase":"stopped"'*) break ;; esac
    sleep 0.1
    i=$((i + 1))
done
check "a damaged tokenizer stops training with an error naming the file" contains "$r" "tokenizer.bpe"
check "  ... the node keeps serving" contains "$(curl -s "http://$API/healthz")" "ok"
check "  ... and the file is left as it was" test "$(sha256sum "$D/tokenizer.bpe")" = "$tok"
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 30

finish
