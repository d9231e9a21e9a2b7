#!/usr/bin/env bash
# How late count lines are written when the machine is saturated: verve under wrk (-t2 -c64,
# the load generator on the same cores) for DURATION seconds with INTERVAL-second windows,
# then the distribution of the delays between each window's close and its count line.
#
#   perf/count_delay.sh                                    # 2 s windows, 130 s: >= 60 windows, u32 and i64 ids
#   INTERVAL=60 DURATION=340 DISTS=i64 perf/count_delay.sh # 5 full minutes of 64-bit ids
#   BIN=/path/to/verve perf/count_delay.sh                 # another build (an older one, say)
#
# The delay of a count line is its log timestamp minus the end of its window. The window in
# which the run starts (partly empty) counts; the one closed by the final SIGTERM (a partial
# count written at shutdown) does not. Every count line is due within 1 s of its
# window's close (README, *The count log*); verve aims at 0.5 s.
#
# Environment: INTERVAL (2), DURATION (130), DISTS ("u32 i64", see perf/random_ids.lua),
# THREADS (2), CONNECTIONS (64), BIN (build and use this checkout's release verve),
# VERVE_ARGS (extra flags), CARGO_TARGET_DIR.
# Output: a table per distribution on stdout and everything in perf/out/count_delay-<UTC>.txt.
# Exit status 1 if a check failed (verve answered non-2xx, a window has no count line).
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

INTERVAL=${INTERVAL:-2}
DURATION=${DURATION:-130}
DISTS=${DISTS:-u32 i64}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
VERVE_ARGS=${VERVE_ARGS:-}
export SEED=${SEED:-1}

need_common
need wrk "apt-get install -y wrk"
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/count_delay-$STAMP.txt
TMP=$(mktemp -d -t verve-count-delay.XXXXXX)
trap 'kill_pids "$VERVE_PID"; rm -rf "$TMP"' EXIT

if [[ -z ${BIN:-} ]]; then
  build --bin verve
  BIN=$(target_dir)/release/verve
fi
[[ -x $BIN ]] || die "$BIN is not an executable"

log "# perf/count_delay.sh $STAMP: INTERVAL=$INTERVAL DURATION=${DURATION}s DISTS='$DISTS'" \
  "THREADS=$THREADS CONNECTIONS=$CONNECTIONS BIN=$BIN VERVE_ARGS='$VERVE_ARGS'"
machine_line | tee -a "$RAW"

# percentile P of the numbers on stdin (nearest rank).
percentile() {
  sort -g | awk -v p="$1" '{r[NR] = $1} END {if (NR == 0) {print "-"; exit}
    i = int((p / 100) * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print r[i]}'
}

for dist in $DISTS; do
  export IDS=$dist
  port=$(free_port)
  logf=$TMP/verve-$dist.log
  # shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
  start_verve "$BIN" "$port" "$logf" --interval "$INTERVAL" $VERVE_ARGS
  log "--- $dist ids: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s on port $port"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$ROOT/perf/random_ids.lua" \
    "http://127.0.0.1:$port" >"$TMP/wrk-$dist.txt"
  cat "$TMP/wrk-$dist.txt" >>"$RAW"
  check_wrk "$dist" "$TMP/wrk-$dist.txt"
  # The collector thread's scheduler statistics (/proc/PID/task/TID/schedstat: time on a CPU,
  # time waiting for one while runnable, slices run): a thread that gives its CPU away in the
  # middle of a seal shows up as a large wait and many slices.
  for task in /proc/"$VERVE_PID"/task/*; do
    if [[ $(cat "$task/comm") == verve-collecto* ]]; then
      read -r run_ns wait_ns slices <"$task/schedstat"
      log "collector thread: on CPU $((run_ns / 1000000)) ms, waiting for a CPU $((wait_ns / 1000000)) ms," \
        "$slices slices, over the run"
    fi
  done
  stop_verve
  [[ $STOP_RC == 0 ]] || fail "$dist: verve exit status $STOP_RC after SIGTERM"
  # Every count line but the last (the shutdown's partial window).
  count_lines "$logf" "$INTERVAL" | sed '$d' >"$TMP/delays-$dist.txt"
  {
    echo "window_start unique_count delay_ms"
    cat "$TMP/delays-$dist.txt"
  } >>"$RAW"
  windows=$(wc -l <"$TMP/delays-$dist.txt")
  ((windows > 0)) || fail "$dist: no count line"
  # Consecutive windows: a missing count line would show as a gap.
  first=$(head -1 "$TMP/delays-$dist.txt" | cut -d' ' -f1)
  last=$(tail -1 "$TMP/delays-$dist.txt" | cut -d' ' -f1)
  span=$((($(date -u -d "$last" +%s) - $(date -u -d "$first" +%s)) / INTERVAL + 1))
  ((span == windows)) || fail "$dist: $windows count lines for $span windows"
  delays() { cut -d' ' -f3 "$TMP/delays-$dist.txt"; }
  ids=$(cut -d' ' -f2 "$TMP/delays-$dist.txt" | median)
  log "$(printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' "$dist" "$INTERVAL s" "$windows" \
    "$ids" "$(delays | median)" "$(delays | percentile 90)" "$(delays | percentile 99)" \
    "$(delays | sort -g | tail -1)" "$(delays | awk '$1 > 500' | wc -l)" "$(delays | awk '$1 > 1000' | wc -l)")"
  log "$(awk '/^Requests\/sec:/ {print "wrk: " $2 " req/s"}' "$TMP/wrk-$dist.txt")"
done

echo
echo "| ids | window | windows | median distinct ids | median delay ms | p90 | p99 | max | > 500 ms | > 1 s |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
grep '^| ' "$RAW" | grep -v '^| ids'
echo "raw output: ${RAW#"$ROOT"/}"
exit_if_failed
