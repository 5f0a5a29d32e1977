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
    echo
    echo "## Baselines"
    echo
    echo "- raw_sign_per_s: secp256k1_ecdsa_sign (RFC 6979) on a 32-byte digest, one context."
    echo "- raw_verify_per_s: what any verifier of wire bytes does: parse the compressed public key"
    echo "  and the compact signature, then secp256k1_ecdsa_verify."
    echo "- raw_verify_preparsed_per_s: secp256k1_ecdsa_verify alone, the key parsed once beforehand."
    echo "- ours: ns_record_sign / ns_record_verify on a record with a 200-byte body (protobuf-c"
    echo "  encoding, canonical-form check, SHA-256 with the domain tag, author check)."
    echo "- Single thread; each pair measured in alternating rounds, best round kept."
} >"$out"
cat "$out"
