#!/bin/sh
# experiments.sh BUILD: the DiLoCo experiments of issue 8 at full size (make experiments).
#
# Runs BUILD/netsim --diloco all (sync, compress, byzantine: real training of a small NeuroLLM on
# the Genesis data by simulated nodes) into docs/experiments/, which gets one CSV, one CSV of loss
# curves and one SVG figure an experiment, and summary.txt: the report with the machine, commit
# and wall time. The report goes to stderr; stdout gets only the "bench NAME=VALUE ... ratio=R"
# lines, for scripts/bench.sh to collect. About eight minutes on two idle cores.
#
#   EXPERIMENTS_OUT=DIR   write there instead of docs/experiments
#   EXPERIMENTS_JOBS=N    runs trained at once (default: the cores, at most 2); results are the
#                         same for any N
#   EXPERIMENTS_ARGS=...  more netsim --diloco options (--seed N, --text DIR, --assert)
set -eu
build=${1:-build}
out=${EXPERIMENTS_OUT:-docs/experiments}
cores=$(nproc 2>/dev/null || echo 1)
jobs=${EXPERIMENTS_JOBS:-$([ "$cores" -ge 2 ] && echo 2 || echo 1)}
netsim=$build/netsim
[ -x "$netsim" ] || {
    echo "experiments.sh: $netsim is not built (make $netsim)" >&2
    exit 2
}
mkdir -p "$out"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

start=$(date +%s)
rc=0
# shellcheck disable=SC2086
"$netsim" --diloco all --jobs "$jobs" --out "$out" ${EXPERIMENTS_ARGS:-} >"$tmp" || rc=$?
wall=$(($(date +%s) - start))

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    echo "# netsim --diloco all: $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
    echo "# machine: $(uname -sm), ${cpu:-unknown cpu}, $cores cores"
    echo "# --jobs $jobs, wall ${wall} s, exit status $rc"
    cat "$tmp"
} >"$out/summary.txt"
grep -v '^bench ' "$out/summary.txt" >&2
grep '^bench ' "$tmp" || true
echo "bench diloco_experiments wall_s=$wall jobs=$jobs ratio=-"
exit "$rc"
