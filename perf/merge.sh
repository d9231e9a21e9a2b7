#!/usr/bin/env bash
# Window merge cost (examples/merge.rs): IDS ids (10 million) recorded into SHARDS shards
# (2, one per may worker on a 2-core machine) through Shards::record from one thread per
# shard, absorbed into the window's set every ABSORB_EVERY ids (100000: a second at 100k
# req/s) except the last step, then what the collector does at a boundary, timed:
# Shards::seal (which merges the last step's ids) and LocalSink::accept (report + drop of the
# set). Also the last absorb (the collector's work each second at the end of a big window).
# Median, min and max over RUNS runs, each on freshly filled shards.
#
#   perf/merge.sh                          # 10M random u32 ids, 2 shards, 5 runs
#   IDS=1000000 RUNS=3 perf/merge.sh       # quicker
#   DIST=random-i64 perf/merge.sh          # or sequential, snowflake
#
# Environment: IDS (10000000), SHARDS (2), RUNS (5), DIST (random-u32 | random-i64 |
# sequential | snowflake), ABSORB_EVERY (100000), BUDGET_MS (800: the count line is due
# within 1 s of the boundary and the collector starts 200 ms after it), CARGO_TARGET_DIR.
# Output: a markdown table on stdout and perf/out/merge-<UTC time>.txt. Exit status 1 if the
# example failed or a distinct count is implausible; a median over BUDGET_MS is reported
# loudly, not an error.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

IDS=${IDS:-10000000}
SHARDS=${SHARDS:-2}
RUNS=${RUNS:-5}
DIST=${DIST:-random-u32}
ABSORB_EVERY=${ABSORB_EVERY:-100000}
BUDGET_MS=${BUDGET_MS:-800}
for v in IDS SHARDS RUNS ABSORB_EVERY BUDGET_MS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

need_common
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/merge-$STAMP.txt

build --example merge
BIN=$(target_dir)/release/examples/merge
[[ -x $BIN ]] || die "$BIN not found after the build"

{
  echo "# perf/merge.sh $STAMP: IDS=$IDS SHARDS=$SHARDS RUNS=$RUNS DIST=$DIST ABSORB_EVERY=$ABSORB_EVERY"
  machine_line
  echo "# other CPU busy in the second before: $(other_busy)"
  echo "\$ $BIN --ids $IDS --shards $SHARDS --runs $RUNS --dist $DIST --absorb-every $ABSORB_EVERY"
} | tee "$RAW"
"$BIN" --ids "$IDS" --shards "$SHARDS" --runs "$RUNS" --dist "$DIST" --absorb-every "$ABSORB_EVERY" | tee -a "$RAW"

SUMMARY=$(grep '^SUMMARY ' "$RAW" || true)
[[ -n $SUMMARY ]] || {
  fail "no SUMMARY line"
  exit_if_failed
}
distinct=$(field distinct "$SUMMARY")
triple() { awk -F, '{printf "%s | %s | %s", $1, $2, $3}' <<<"$(field "$1" "$SUMMARY")"; }

{
  echo
  echo "| phase ($IDS $DIST ids, $SHARDS shards, $distinct distinct, $RUNS runs) | median ms | min ms | max ms |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| fill: every record and absorb (not the collector's boundary work) | $(triple fill_ms) |"
  echo "| of which all absorbs | $(triple absorbs_ms) |"
  echo "| the last absorb ($ABSORB_EVERY ids into the window's set) | $(triple last_absorb_ms) |"
  echo "| \`Shards::seal\` (merges the last step's ids) | $(triple seal_ms) |"
  echo "| \`LocalSink::accept\` (report, free the set) | $(triple report_drop_ms) |"
  echo "| **total at the boundary (seal + report)** | $(triple total_ms) |"
  echo
} | tee -a "$RAW"

case $DIST in
  random-u32) expect=$(awk -v n="$IDS" 'BEGIN {printf "%.0f", n - n * n / 2^33}') ;;
  *) expect=$IDS ;;
esac
if [[ $(awk -v d="$distinct" -v e="$expect" 'BEGIN {print (d >= e * 0.999 && d <= e * 1.001 + 1)}') != 1 ]]; then
  fail "$distinct distinct ids, expected about $expect"
fi
median=$(field total_ms "$SUMMARY" | cut -d, -f1)
if awk -v m="$median" -v b="$BUDGET_MS" 'BEGIN {exit !(m <= b)}'; then
  echo "merge median ${median} ms: within the ${BUDGET_MS} ms budget (count line due 1 s after the boundary, collector starts at +200 ms)" | tee -a "$RAW"
else
  echo "WARNING: merge median ${median} ms is over the ${BUDGET_MS} ms budget: count lines would be late" | tee -a "$RAW"
fi
last=$(field last_absorb_ms "$SUMMARY" | cut -d, -f1)
echo "last absorb median ${last} ms: the collector merges once a second, so this is $(awk -v m="$last" 'BEGIN {printf "%.0f", m / 10}')% of a core at the end of this window" | tee -a "$RAW"
echo "raw output: ${RAW#"$ROOT"/}"
exit_if_failed
