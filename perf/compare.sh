#!/usr/bin/env bash
# verve vs. the bare may_minihttp baseline (examples/baseline.rs), under wrk.
#
#   perf/compare.sh                      # 3 rounds of 10 s each, both id distributions
#   ROUNDS=5 DURATION=30 perf/compare.sh
#   DISTS=i64 perf/compare.sh            # 64-bit ids only
#
# Each round measures every distribution of DISTS (default "u32 i64"): u32, ids uniform over
# 0..2^32 (dense); i64, ids spread over nearly the whole i64 range (64-bit hashes). The
# baseline gets the same request stream (it ignores the id).
#
# Builds both in release mode, then runs ROUNDS rounds; each round starts the baseline, then
# verve, each on a free loopback port, warms it up for WARMUP seconds, measures it with
#   wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s perf/random_ids.lua
# and stops it; which of the two goes first alternates from round to round. Prints a table
# (req/s of both, verve/baseline ratio, each server's CPU time per request, p99 latencies,
# load) and the median ratios, and appends everything, raw wrk output included, to perf/out/.
# On a VM whose host lends it more or less of the machine from one run to the next, req/s
# moves by tens of percent between runs; CPU time per request (utime + stime of the server
# process over the measured run, over the requests wrk counted) does not, so the baseline/verve
# CPU ratio is the steadier of the two comparisons.
#
# "verve windows" is the number of count lines verve logged: 2 when the run crossed a window
# boundary (every minute with the default --interval 60), after which verve starts an empty
# window and pays again for building it (see perf/RESULTS.md).
#
# Checks, each of which makes the script exit 1 (after the table): verve answered only 2xx
# (no "Non-2xx" in wrk's report, no socket errors), exited 0 on SIGTERM, and its count log
# holds at least one `unique_count=` line with a count above 0 and at most the number of
# requests sent (plus those wrk leaves in flight when it stops).
#
# Environment: ROUNDS (3), DURATION (10), WARMUP (2), THREADS (2), CONNECTIONS (64), SEED (1,
# the request stream's seed), CARGO_TARGET_DIR (as cargo), VERVE_ARGS (extra verve flags,
# e.g. "--interval 1"), SVG (perf/compare.svg). VERVE_* variables reach verve as usual.
#
# Also writes the per-round figures to perf/out/compare-<UTC time>.csv (round, baseline_rps,
# verve_rps, ratio) and draws them with gnuplot (perf/plot_compare.gnuplot) into $SVG; without
# gnuplot it says how to install it and skips the chart.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
export SEED=${SEED:-1}
VERVE_ARGS=${VERVE_ARGS:-}
DISTS=${DISTS:-u32 i64}

# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
LUA=$ROOT/perf/random_ids.lua
RAW=$PERF_OUT/compare-$STAMP.txt
CSV=$PERF_OUT/compare-$STAMP.csv
SVG=${SVG:-$ROOT/perf/compare.svg}
TMP=$(mktemp -d -t verve-compare.XXXXXX)
SERVER_PID=

need_common
need wrk "apt-get install -y wrk"
mkdir -p "$PERF_OUT"

cleanup() {
  kill_pids "$SERVER_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops the current server with SIGTERM; sets STOP_RC (stop_pid).
stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=
}

# run_one NAME ROUND: start, warm up, measure, stop. Sets RPS, P99, REQUESTS, WARM_REQUESTS,
# WRK_OUT.
run_one() {
  local name=$1 round=$2 port url
  BUSY=$(other_busy)
  port=$(free_port)
  url="http://127.0.0.1:$port"
  case $name in
    baseline) "$BASELINE_BIN" "127.0.0.1:$port" >"$TMP/$name.out" 2>&1 & ;;
    verve)
      VERVE_LOG=$TMP/verve-round$round-$IDS.log
      # shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
      "$VERVE_BIN" --listen "127.0.0.1:$port" --log-file "$VERVE_LOG" $VERVE_ARGS \
        >"$TMP/$name.out" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  if ! wait_port "$port" "$SERVER_PID"; then
    echo "compare.sh: $name did not start on port $port:" >&2
    cat "$TMP/$name.out" >&2
    exit 1
  fi
  # The warm-up uses another seed so that the measured ids are new to verve too.
  SEED=$((SEED + 1000)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$LUA" "$url" \
    >"$TMP/warmup.txt"
  WARM_REQUESTS=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$TMP/warmup.txt")
  WRK_OUT=$TMP/wrk-$name-$round.txt
  {
    echo "=== round $round: $name on $url, $(date -u +%FT%TZ), nproc $(nproc)," \
      "load $(cut -d' ' -f1-3 /proc/loadavg), other CPU busy in the second before: $BUSY"
    echo "\$ IDS=$IDS wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s perf/random_ids.lua $url"
  } >>"$RAW"
  local ticks_before
  ticks_before=$(cpu_ticks "$SERVER_PID")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$url" >"$WRK_OUT"
  CPU_TICKS=$(($(cpu_ticks "$SERVER_PID") - ticks_before))
  cat "$WRK_OUT" >>"$RAW"
  stop_server
  echo "(server exit status: $STOP_RC)" >>"$RAW"
  RPS=$(awk '/^Requests\/sec:/ {print $2}' "$WRK_OUT")
  P99=$(awk '$1 == "99%" {print $2}' "$WRK_OUT")
  REQUESTS=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$WRK_OUT")
  [[ -n $RPS ]] || {
    echo "compare.sh: no Requests/sec in wrk output" >&2
    exit 1
  }
  # The server's CPU time per request, in microseconds: unlike req/s it does not move with
  # how much of the machine the host lends this VM from one run to the next.
  CPU_US=$(awk -v t="$CPU_TICKS" -v hz="$(getconf CLK_TCK)" -v n="$REQUESTS" \
    'BEGIN { printf "%.2f", (n > 0) ? t * 1e6 / hz / n : 0 }')
  echo "(server CPU: $CPU_TICKS ticks, $CPU_US us per request)" >>"$RAW"
}

# utime + stime of a process, in clock ticks.
cpu_ticks() {
  # The fields after the command name (which may hold spaces): utime is the 12th, stime 13th.
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# verve's checks for one round.
check_verve() {
  local round=$1 lines sum
  check_wrk "round $round: verve" "$WRK_OUT"
  [[ $STOP_RC == 0 ]] || fail "round $round: verve exit status $STOP_RC after SIGTERM"
  lines=$(grep -c 'unique_count=' "$VERVE_LOG" 2>/dev/null || true)
  lines=${lines:-0}
  COUNT_LINES=$lines
  sum=$(sed -n 's/.*unique_count=\([0-9]*\).*/\1/p' "$VERVE_LOG" 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  log "round $round: verve log: $lines count line(s), unique_count total $sum;" \
    "requests sent $((WARM_REQUESTS + REQUESTS)) (warm-up $WARM_REQUESTS + measured $REQUESTS)"
  {
    echo "--- verve log, round $round"
    cat "$VERVE_LOG"
  } >>"$RAW"
  if ((lines < 1)); then
    fail "round $round: no unique_count= line in verve's log"
  elif ((sum < 1)); then
    fail "round $round: verve counted 0 distinct ids"
  elif ((sum > WARM_REQUESTS + REQUESTS + 2 * CONNECTIONS)); then
    # wrk does not report the requests still in flight when it stops (at most one per
    # connection, twice: warm-up and measurement), but verve may have counted them.
    fail "round $round: verve counted $sum distinct ids, more than the requests sent"
  fi
}

cd "$ROOT"
log "# perf/compare.sh $STAMP: ROUNDS=$ROUNDS DURATION=${DURATION}s WARMUP=${WARMUP}s" \
  "THREADS=$THREADS CONNECTIONS=$CONNECTIONS SEED=$SEED VERVE_ARGS='$VERVE_ARGS'"
machine_line | tee -a "$RAW"

build --bin verve --example baseline
TARGET_DIR=$(target_dir)
VERVE_BIN=$TARGET_DIR/release/verve
BASELINE_BIN=$TARGET_DIR/release/examples/baseline
[[ -x $VERVE_BIN && -x $BASELINE_BIN ]] || die "binaries not found in $TARGET_DIR"

ROWS=()
RATIOS=()
CSV_ROWS=()
declare -A DIST_RATIOS=()
declare -A DIST_CPU_RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
  for dist in $DISTS; do
    export IDS=$dist
    # The order alternates from round to round, so that neither server always runs first.
    if ((round % 2)); then order="baseline verve"; else order="verve baseline"; fi
    for name in $order; do
      if [[ $name == baseline ]]; then
        load_b=$(load1)
        run_one baseline "$round"
        base_rps=$RPS base_p99=$P99 busy_b=$BUSY base_cpu=$CPU_US
      else
        load_v=$(load1)
        run_one verve "$round"
        verve_rps=$RPS verve_p99=$P99 busy_v=$BUSY verve_cpu=$CPU_US
        check_verve "$round"
      fi
    done
    RPS=$verve_rps P99=$verve_p99
    cpu_ratio=$(ratio "$base_cpu" "$verve_cpu")
    DIST_CPU_RATIOS[$dist]+="$cpu_ratio "
    ratio=$(ratio "$RPS" "$base_rps")
    RATIOS+=("$ratio")
    DIST_RATIOS[$dist]+="$ratio "
    CSV_ROWS+=("$round,$base_rps,$RPS,$ratio")
    ROWS+=("$(printf '| %5s | %4s | %12s | %12s | %6s | %6s / %-6s | %6s | %9s | %9s | %7s | %5s / %-5s | %4s / %-4s |' \
      "$round" "$dist" "$base_rps" "$RPS" "$ratio" "$base_cpu" "$verve_cpu" "$cpu_ratio" \
      "$base_p99" "$P99" "$COUNT_LINES" "$load_b" "$load_v" "$busy_b" "$busy_v")")
    echo "round $round ($dist ids): baseline $base_rps req/s, verve $RPS req/s, ratio $ratio" >&2
  done
done

MEDIAN=$(printf '%s\n' "${RATIOS[@]}" | median)

{
  echo
  echo "| round | ids | baseline req/s | verve req/s | verve/baseline | server CPU us/req (b / v) | CPU ratio b/v | baseline p99 | verve p99 | verve windows | load1 at start (b / v) | other CPU busy before (b / v) |"
  echo "| ---: | :---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | :---: | :---: |"
  printf '%s\n' "${ROWS[@]}"
  echo
  for dist in $DISTS; do
    # shellcheck disable=SC2086 # a space-separated list of ratios
    echo "median verve/baseline ratio, $dist ids: $(printf '%s\n' ${DIST_RATIOS[$dist]} | median)"
    # shellcheck disable=SC2086 # a space-separated list of ratios
    echo "median baseline/verve CPU per request, $dist ids: $(printf '%s\n' ${DIST_CPU_RATIOS[$dist]} | median)"
  done
  echo "median verve/baseline ratio: $MEDIAN  (nproc $(nproc), load now $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "raw output: ${RAW#"$ROOT"/}"
} | tee -a "$RAW"

# Per-round CSV and the chart (verve beside the baseline per round, the ratio on the right).
{
  echo "round,baseline_rps,verve_rps,ratio"
  printf '%s\n' "${CSV_ROWS[@]}"
} >"$CSV"
echo "per-round CSV: ${CSV#"$ROOT"/}" | tee -a "$RAW"
if command -v gnuplot >/dev/null; then
  if gnuplot -e "csv='$CSV'; out='$SVG'; subtitle='$STAMP, $ROUNDS x ${DURATION}s, median ratio $MEDIAN, nproc $(nproc)'" \
    "$ROOT/perf/plot_compare.gnuplot"; then
    echo "chart: ${SVG#"$ROOT"/}" | tee -a "$RAW"
  else
    fail "gnuplot could not draw $SVG"
  fi
else
  echo "no chart: gnuplot not found (apt-get install -y gnuplot-nox)" | tee -a "$RAW" >&2
fi

exit_if_failed
