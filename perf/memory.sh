#!/usr/bin/env bash
# Memory per distinct id of verve's id set (examples/memory.rs), for IDS ids (10 million) of
# three distributions: random over the u32 range, sequential, random over the whole i64
# range. Each distribution runs in a process of its own and reports, divided by the distinct
# count: RSS growth (VmRSS before/after), live heap (counting allocator) and roaring's
# serialized_size. Prints a markdown table and whether random-u32 RSS meets GOAL bytes/id.
#
#   perf/memory.sh                 # 10M ids each (about 1 min on a quiet machine; random-i64 needs ~2.5 GB)
#   IDS=1000000 perf/memory.sh     # quicker
#
# Environment: IDS (10000000), GOAL (3, bytes/id of RSS for random-u32), CARGO_TARGET_DIR.
# Output: the table on stdout and in perf/out/memory-<UTC time>.txt. Exit status 1 if a
# measurement failed or a distinct count is implausible; a missed goal is reported, not an
# error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDS=${IDS:-10000000}
GOAL=${GOAL:-3}
[[ $IDS =~ ^[1-9][0-9]*$ ]] || die "IDS must be a positive integer, not '$IDS'"

need_common
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/memory-$PERF_STAMP.txt

build --example memory
BIN=$(target_dir)/release/examples/memory
[[ -x $BIN ]] || die "$BIN not found after the build"

{
    echo "# perf/memory.sh $PERF_STAMP: IDS=$IDS"
    machine_line
    echo "\$ $BIN all $IDS"
} | tee "$RAW"
"$BIN" all "$IDS" | tee -a "$RAW"

# Sanity: distinct counts. Sequential and random-i64 ids are all distinct (2^64 values: a
# repeat among 10M is a 3e-6 chance); random u32 ids repeat ~N^2/2^33 times.
status=0
while read -r kind distinct rss; do
    case $kind in
        random-u32) expect=$(awk -v n="$IDS" 'BEGIN {printf "%.0f", n - n * n / 2^33}') ;;
        *) expect=$IDS ;;
    esac
    ok=$(awk -v d="$distinct" -v e="$expect" 'BEGIN {print (d >= e * 0.999 && d <= e * 1.001 + 1) ? 1 : 0}')
    if [[ $ok != 1 ]]; then
        echo "CHECK FAILED: $kind: $distinct distinct ids, expected about $expect" | tee -a "$RAW" >&2
        status=1
    fi
    if [[ $kind == random-u32 ]]; then
        verdict=$(awk -v r="$rss" -v g="$GOAL" 'BEGIN {print (r <= g) ? "met" : "NOT met"}')
        echo "goal: random u32 ids at <= $GOAL RSS bytes/id: $verdict ($rss bytes/id)" | tee -a "$RAW"
    fi
done < <(sed -n 's/^RESULT kind=\([^ ]*\) .*distinct=\([0-9]*\) .*rss_per_id=\([0-9.]*\).*/\1 \2 \3/p' "$RAW")
[[ $(grep -c '^RESULT ' "$RAW") == 3 ]] || { echo "CHECK FAILED: expected 3 RESULT lines" >&2; status=1; }
echo "raw output: ${RAW#"$PERF_ROOT"/}"
exit "$status"
