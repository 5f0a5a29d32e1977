#!/bin/sh
# bench.sh BUILD: run every benchmark binary, print a table, rewrite docs/benchmarks.md.
#
# Each bench binary prints lines "bench NAME=VALUE ... ratio=R", where the ratio compares our
# path with a baseline measured in the same run on the same machine (raw libsecp256k1 for
# signatures, ...), so the figures mean something on any machine. Timings never gate a test.
set -eu
build=${1:-build}
out=docs/benchmarks.md
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

for b in "$build"/bench/bench_*; do
    [ -x "$b" ] || continue
    echo "== $b" >&2
    "$b" | grep '^bench ' | sed "s|^bench |$(basename "$b") |" >>"$tmp"
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
    echo "# Benchmarks"
    echo
    echo "Produced by \`make bench\` (scripts/bench.sh); every ratio compares with a baseline"
    echo "measured in the same run on the same machine. Rewritten on every run."
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- machine: $(uname -sm), ${cpu:-unknown cpu}, $(nproc) cores"
    echo "- command: \`make bench\`"
    echo
    echo "| benchmark | measurement | ours | baseline | ratio | goal |"
    echo "|---|---|---|---|---|---|"
    while read -r bin rest; do
        # rest: "a_per_s=N raw_a_per_s=M ratio=R [goal=G]"
        set -- $rest
        ours=$1
        base=$2
        ratio=${3#ratio=}
        goal=${4:-}
        goal=${goal#goal=}
        echo "| $bin | ${ours%%=*} | ${ours#*=} | ${base%%=*} ${base#*=} | $ratio | ${goal:--} |"
    done <"$tmp"
} >"$out"
cat "$out"
