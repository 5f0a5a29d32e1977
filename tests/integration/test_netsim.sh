#!/bin/sh
# test_netsim.sh: netsim runs the small scenario, meets its success goal, and replays exactly.
#
# Runs $BUILD/netsim on netsim/scenarios/small.ini (500 real DHT cores, a few simulated minutes)
# with --assert-success 0.99, checks the report's lines and the CSV, runs the same seed again and
# compares the reports byte for byte (the "wall" lines, the only ones that depend on the machine,
# filtered out), runs another seed and expects another trace, and feeds netsim bad scenarios and
# options, which must give exit status 2 and one line naming the culprit (file:line for a file).

. "$(dirname "$0")/lib.sh"

NETSIM=$PWD/$BUILD/netsim
SMALL=netsim/scenarios/small.ini
T=$TMP_ROOT

# run_netsim NAME ARGS...: runs netsim, stdout to $T/NAME.out, stderr to $T/NAME.err; sets RC.
run_netsim() {
    name=$1
    shift
    "$NETSIM" "$@" >"$T/$name.out" 2>"$T/$name.err"
    RC=$?
}

report_of() {
    grep -v '^wall' "$T/$1.out"
}

trace_of() {
    sed -n 's/^events .*trace \([0-9a-f]*\)$/\1/p' "$T/$1.out"
}

# ---- the small scenario ---------------------------------------------------------------------
run_netsim a --scenario "$SMALL" --assert-success 0.99 --quiet --csv "$T/a.csv"
check "small scenario exits 0 with --assert-success 0.99 (rc $RC)" test "$RC" -eq 0
if [ "$RC" -ne 0 ]; then
    cat "$T/a.out" "$T/a.err" | sed 's/^/    /'
fi
out=$(cat "$T/a.out")
check "the report names the scenario" contains "$out" "scenario           $SMALL"
check "  ... and the seed" contains "$out" "seed               1"
check "  ... the nodes" contains "$out" "nodes              500 (joined "
check "  ... the lookup success rate" contains "$out" "lookups            "
for kind in find_node get_node get_topic; do
    check "  ... the $kind rate" contains "$out" "  $kind "
done
check "  ... hops p50/p99" contains "$out" "hops               p50 "
check "  ... latency p50/p99" contains "$out" "lookup latency     p50 "
check "  ... messages per node per minute" contains "$out" " per node per minute"
check "  ... routing-table health" contains "$out" "contacts per node, "
check "  ... the trace" contains "$out" "trace "
check "  ... simulated seconds per wall second" contains "$out" "simulated s per wall s"
check "  ... memory per simulated node" contains "$out" "KiB per simulated node"
check "no progress lines with --quiet" test ! -s "$T/a.err"
check "the CSV has a header and one row" test "$(wc -l <"$T/a.csv")" -eq 2
check "  ... with the success rate" contains "$(head -1 "$T/a.csv")" ",success_rate,"

# ---- determinism ----------------------------------------------------------------------------
run_netsim b --scenario "$SMALL" --quiet
report_of a >"$T/a.report"
report_of b >"$T/b.report"
check "the same seed gives a byte-identical report" cmp -s "$T/a.report" "$T/b.report"
if ! cmp -s "$T/a.report" "$T/b.report"; then
    diff "$T/a.report" "$T/b.report" | sed 's/^/    /'
fi
run_netsim c --scenario "$SMALL" --seed 2 --quiet
check "another seed runs (rc $RC)" test "$RC" -eq 0
check "  ... and gives another trace" test "$(trace_of a)" != "$(trace_of c)"
check "  ... and says which seed" contains "$(cat "$T/c.out")" "seed               2"

# ---- failing the goal names the seed --------------------------------------------------------
run_netsim d --scenario "$SMALL" --nodes 60 --duration 200 --assert-success 1.01 --quiet
check "an unreachable --assert-success is a usage error (rc $RC)" test "$RC" -eq 2
printf '[scenario]\nnodes = 40\nduration_s = 150\nwarmup_s = 60\nloss = 0.9\n' >"$T/lossy.ini"
run_netsim e --scenario "$T/lossy.ini" --seed 7 --assert-success 0.99 --quiet
check "a run below the goal exits 1 (rc $RC)" test "$RC" -eq 1
check "  ... with one line naming the seed" contains "$(cat "$T/e.err")" "(seed 7;"
check "  ... and the report still printed" contains "$(cat "$T/e.out")" "seed               7"

# ---- bad input ------------------------------------------------------------------------------
printf '[scenario]\nnodes = 10\nduration_s = 100\nlatency_median = 50\n' >"$T/badkey.ini"
run_netsim f --scenario "$T/badkey.ini"
check "an unknown key gives exit 2 (rc $RC)" test "$RC" -eq 2
check "  ... naming file:line and the key" contains "$(cat "$T/f.err")" \
    "$T/badkey.ini:4: unknown key 'latency_median'"
check "  ... in one line" test "$(wc -l <"$T/f.err")" -eq 1
printf '[scenario]\n\nloss = lots\n' >"$T/badvalue.ini"
run_netsim g --scenario "$T/badvalue.ini"
check "a bad value gives exit 2 naming file:line (rc $RC)" \
    contains "$RC $(cat "$T/g.err")" "2 netsim: $T/badvalue.ini:3: loss 'lots' is not a number"
printf '[scenario]\nnodes = 0\n' >"$T/range.ini"
run_netsim h --scenario "$T/range.ini"
check "a value out of range gives exit 2 naming file:line (rc $RC)" \
    contains "$RC $(cat "$T/h.err")" "2 netsim: $T/range.ini:2: nodes 0 is out of range"
printf '[scenario]\nnodes = 10\n[partition split]\nstart_s = 10\nend_s = 20\ngroups = 0.7, 0.6\n' \
    >"$T/badpart.ini"
run_netsim i --scenario "$T/badpart.ini"
check "a bad partition gives exit 2 naming file:line (rc $RC)" \
    contains "$RC $(cat "$T/i.err")" "2 netsim: $T/badpart.ini:6: groups:"
run_netsim j --scenario "$T/missing.ini"
check "a missing file gives exit 2 naming it (rc $RC)" \
    contains "$RC $(cat "$T/j.err")" "2 netsim: $T/missing.ini: cannot read scenario"
run_netsim k --scenario "$SMALL" --nodes many
check "a bad option value gives exit 2 naming it (rc $RC)" \
    contains "$RC $(cat "$T/k.err")" "2 netsim: --nodes 'many'"
run_netsim l --scenario "$SMALL" --frobnicate
check "an unknown option gives exit 2 (rc $RC)" contains "$RC $(cat "$T/l.err")" "2 netsim: unknown"
run_netsim m --help
check "--help exits 0 and explains every key" \
    contains "$RC $(cat "$T/m.out")" "0 usage: netsim --scenario FILE"
for key in nodes seed duration_s warmup_s latency_median_ms latency_sigma bandwidth_mbps loss \
    churn_per_hour lookups_per_node_per_min bootstrap_seeds start_s groups; do
    check "  ... $key" contains "$(cat "$T/m.out")" "  $key"
done

# ---- the economy: real ledgers, a partition, cheaters ------------------------------------------
ECON=netsim/scenarios/economy-small.ini
run_netsim e1 --economy "$ECON"
check "the economy scenario passes (rc $RC)" test "$RC" -eq 0
out=$(cat "$T/e1.out")
check "  ... every ledger ends with one state hash after the partition" \
    contains "$out" "distinct state hashes 1 "
check "  ... every cheater is caught, no honest node is slashed" \
    contains "$out" "cheaters caught 4 of 4; honest nodes slashed 0; false challenges 0"
check "  ... and the ledger checks out" contains "$out" "ledger check ok"
run_netsim e2 --economy "$ECON"
check "  ... and replays exactly" test "$(report_of e1)" = "$(report_of e2)"
printf '[economy]\nnodes = 40\ncheaters = 0.9\n' >"$T/bad-econ.ini"
run_netsim e3 --economy "$T/bad-econ.ini"
check "a bad economy scenario gives exit 2 naming the line (rc $RC)" \
    contains "$RC $(cat "$T/e3.err")" "2 netsim: $T/bad-econ.ini:3"

# ---- the swarm: quorum and pipeline cores, tiers, churn ---------------------------------------
SWARM=netsim/scenarios/swarm-small.ini
run_netsim w1 --swarm "$SWARM"
check "the swarm scenario passes its goals (rc $RC)" contains "$RC $(cat "$T/w1.out")" "swarm: PASS"
check "  ... reports the first full quorum and the windows" \
    contains "$(cat "$T/w1.out")" "first full quorum at "
check "  ... with the measured and 1F1B bubbles" contains "$(cat "$T/w1.out")" ",bubble_1f1b,"
run_netsim w2 --swarm "$SWARM"
check "  ... and replays exactly" test "$(report_of w1)" = "$(report_of w2)"
sed 's/^run_ahead = .*/run_ahead = 0/' "$SWARM" >"$T/strict.ini"
run_netsim w4 --swarm "$T/strict.ini"
calm_tps() { awk -F, '/^calm,/ { print $NF }' "$T/$1.out"; }
ahead=$(calm_tps w1) strict=$(calm_tps w4)
check "  ... stages that run forwards ahead of a late gradient train faster than strict 1F1B ($ahead vs $strict tokens/s)" \
    test "${ahead:-0}" -gt "${strict:-0}"
printf '[swarm]\nnodes = 40\ntiers = 0.5, 0.5\n' >"$T/bad-swarm.ini"
run_netsim w3 --swarm "$T/bad-swarm.ini"
check "a bad swarm scenario gives exit 2 naming the line (rc $RC)" \
    contains "$RC $(cat "$T/w3.err")" "2 netsim: $T/bad-swarm.ini:3: tiers needs 5"

finish
