#!/usr/bin/env bash
# What cluster mode (--redis) costs, in three parts:
#
#   a. throughput: one verve instance in cluster mode against one in single mode, under the
#      perf/compare.sh load (wrk -t$THREADS -c$CONNECTIONS --latency -s perf/random_ids.lua,
#      random ids in 0..2^32), ROUNDS alternating pairs (single then cluster in odd rounds,
#      cluster then single in even ones), each on a free loopback port, WARMUP s then
#      DURATION s; ratio cluster/single per pair and its median. The cluster-mode instance
#      ships to a redis-server this script starts (free loopback port, no persistence), under a
#      --redis-prefix of its own per round. Runs are placed so that none crosses a window
#      boundary (--interval INTERVAL): this is the steady state, shipping a delta every second;
#      the boundary's own work is parts b and c.
#   b. bytes shipped per window: one cluster-mode instance (--interval BOUNDARY_INTERVAL)
#      takes the wrk load for one whole window; verve_cluster_shipped_bytes_total (read before
#      the boundary and after the window's count line) divided by the window's unique_count:
#      bytes per distinct id, for the deltas shipped each second and for the last shipment at
#      the close; beside it, the size of one shipment of as many random ids
#      (examples/leader_merge.rs with one instance).
#   c. the cluster's count: examples/leader_merge.rs, MERGE_INSTANCES x MERGE_IDS ids (random
#      over 0..2^32, or MERGE_DIST=random-i64: over the whole i64 range), for each
#      case of MERGE_CASES (OVERLAP:SHIPMENTS: the share of ids all instances hold, and how
#      many deltas each instance ships them in: 1 = all at once, 60 = one a second for a 60 s
#      window, as verve does), shipped per partition to this script's redis-server, frozen and
#      counted by 2 counter processes; MERGE_RUNS runs with one shipment per instance,
#      MERGE_DELTA_RUNS with more. perf/cluster_scale.sh sets it beside the old single leader.
#
#   perf/cluster.sh                          # about 4 minutes plus the build
#   ROUNDS=3 DURATION=5 PARTS="a" perf/cluster.sh
#
# Environment: ROUNDS (5), DURATION (8), WARMUP (2), THREADS (2), CONNECTIONS (64), SEED (1),
# INTERVAL (60), BOUNDARY_INTERVAL (20), MERGE_INSTANCES (10), MERGE_IDS (1000000),
# MERGE_RUNS (5), MERGE_DELTA_RUNS (3), MERGE_CASES ("0:1 0.5:1 0:60"), MERGE_DIST
# (random-u32 | random-i64), PARTS ("a b c"),
# CARGO_TARGET_DIR.
# Output: markdown tables on stdout; everything, raw wrk output, count logs and metrics
# included, in perf/out/cluster-<UTC time>.txt.
#
# Checks (exit 1 after the tables): every answer 2xx and no socket errors, each verve exits 0
# on SIGTERM, each log has exactly one count line per window, none with scope=local, a count
# above 0 and at most the requests sent; in cluster mode verve_redis_errors_total is 0; the
# examples' counts are exact (they check themselves).
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
export SEED=${SEED:-1}
INTERVAL=${INTERVAL:-60}
BOUNDARY_INTERVAL=${BOUNDARY_INTERVAL:-20}
MERGE_INSTANCES=${MERGE_INSTANCES:-10}
MERGE_IDS=${MERGE_IDS:-1000000}
MERGE_RUNS=${MERGE_RUNS:-5}
MERGE_DELTA_RUNS=${MERGE_DELTA_RUNS:-3}
MERGE_CASES=${MERGE_CASES:-0:1 0.5:1 0:60}
MERGE_DIST=${MERGE_DIST:-random-u32}
[[ $MERGE_DIST =~ ^random-(u32|i64)$ ]] || die "MERGE_DIST must be random-u32 or random-i64, not '$MERGE_DIST'"
PARTS=${PARTS:-a b c}
for v in ROUNDS DURATION WARMUP THREADS CONNECTIONS SEED INTERVAL BOUNDARY_INTERVAL \
  MERGE_INSTANCES MERGE_IDS MERGE_RUNS MERGE_DELTA_RUNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
((BOUNDARY_INTERVAL >= 5)) || die "BOUNDARY_INTERVAL must be at least 5"
part() { [[ " $PARTS " == *" $1 "* ]]; }

need_common
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need redis-server "apt-get install -y redis-server"
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/cluster-$STAMP.txt
LUA=$ROOT/perf/random_ids.lua
TMP=$(mktemp -d -t verve-perf-cluster.XXXXXX)
SERVER_PID=

cleanup() {
  kill_pids "$SERVER_PID" "$REDIS_PID"
  [[ -z $SERVER_PID ]] || wait "$SERVER_PID" 2>/dev/null || true
  [[ -z $REDIS_PID ]] || wait "$REDIS_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The next window boundary of INTERVAL I after now.
next_boundary() { awk -v n="$(now)" -v i="$1" 'BEGIN {printf "%d", (int(n / i) + 1) * i}'; }
# avoid_boundary SPAN: if a window boundary falls within the next SPAN seconds, wait until
# just after it.
avoid_boundary() {
  local b
  b=$(next_boundary "$INTERVAL")
  if awk -v b="$b" -v n="$(now)" -v s="$1" 'BEGIN {exit !(b - n < s)}'; then
    echo "  (waiting for the window boundary at $(date -u -d "@$b" +%T) so that the run does not cross it)" >&2
    sleep_until "$b.3"
  fi
}

# bpi BYTES: BYTES per distinct id of part b.
bpi() { awk -v b="$1" -v n="$distinct" 'BEGIN {printf "%.3f", b / n}'; }
# mm "median,min,max": "median / min".
mm() { awk -F, '{printf "%s / %s", $1, $2}' <<<"$1"; }

cd "$ROOT"
{
  echo "# perf/cluster.sh $STAMP: PARTS='$PARTS' ROUNDS=$ROUNDS DURATION=${DURATION}s" \
    "WARMUP=${WARMUP}s THREADS=$THREADS CONNECTIONS=$CONNECTIONS SEED=$SEED INTERVAL=$INTERVAL" \
    "BOUNDARY_INTERVAL=$BOUNDARY_INTERVAL MERGE=${MERGE_INSTANCES}x$MERGE_IDS" \
    "MERGE_RUNS=$MERGE_RUNS MERGE_DELTA_RUNS=$MERGE_DELTA_RUNS MERGE_CASES='$MERGE_CASES' MERGE_DIST=$MERGE_DIST"
  machine_line
  echo "# $(redis-server --version)"
} | tee "$RAW"

build --bin verve --example leader_merge
TARGET_DIR=$(target_dir)
VERVE_BIN=$TARGET_DIR/release/verve
MERGE_BIN=$TARGET_DIR/release/examples/leader_merge
[[ -x $VERVE_BIN && -x $MERGE_BIN ]] || die "binaries not found in $TARGET_DIR"

start_redis "$TMP"
log "# redis-server on $REDIS_URL (no persistence)"

# ---------------------------------------------------------------------------------------------
# a. Throughput, single vs. cluster mode.

# run_one MODE ROUND: start, warm up, measure, read /metrics, stop, check. Sets RPS, P99.
run_one() {
  local mode=$1 round=$2 port url logf flags warm_req req busy load wrk_out metrics
  avoid_boundary $((1 + WARMUP + DURATION + 3))
  busy=$(other_busy)
  load=$(load1)
  port=$(free_port)
  url=http://127.0.0.1:$port
  logf=$TMP/$mode-r$round.log
  flags=(--interval "$INTERVAL")
  if [[ $mode == cluster ]]; then
    flags+=(--redis "$REDIS_URL" --redis-prefix "verve-perf-$STAMP-r$round"
      --instance-id "perf-r$round")
  fi
  start_verve "$VERVE_BIN" "$port" "$logf" "${flags[@]}"
  # shellcheck disable=SC2153 # set by lib.sh's start_verve
  SERVER_PID=$VERVE_PID
  SEED=$((SEED + 1000)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$LUA" "$url" \
    >"$TMP/warmup.txt"
  warm_req=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$TMP/warmup.txt")
  wrk_out=$TMP/wrk-$mode-$round.txt
  {
    echo "=== round $round: $mode on $url, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)," \
      "other CPU busy in the second before: $busy"
    echo "\$ $VERVE_BIN --listen 127.0.0.1:$port --log-file $logf ${flags[*]}"
    echo "\$ wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s perf/random_ids.lua $url"
  } >>"$RAW"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$url" >"$wrk_out"
  metrics=$TMP/$mode-r$round.metrics
  curl -fsS "$url/metrics" >"$metrics" || : >"$metrics"
  stop_pid "$SERVER_PID"
  SERVER_PID=
  cat "$wrk_out" >>"$RAW"
  {
    echo "--- metrics before SIGTERM"
    grep -E '^verve_(cluster|redis|window_unique|requests)' "$metrics" || true
    echo "--- verve log (exit status $STOP_RC)"
    cat "$logf"
  } >>"$RAW"
  RPS=$(awk '/^Requests\/sec:/ {print $2}' "$wrk_out")
  P99=$(awk '$1 == "99%" {print $2}' "$wrk_out")
  req=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$wrk_out")
  [[ -n $RPS && -n $req && -n $warm_req ]] || die "no figures in wrk's output ($wrk_out)"
  check_wrk "round $round $mode" "$wrk_out"
  [[ $STOP_RC == 0 ]] || fail "round $round $mode: verve exit status $STOP_RC after SIGTERM"
  check_log "round $round $mode" "$logf" $((warm_req + req))
  BUSY=$busy LOAD=$load
  if [[ $mode == cluster ]]; then
    local errors
    errors=$(metric "$metrics" verve_redis_errors_total)
    [[ ${errors:-x} == 0 ]] || fail "round $round cluster: verve_redis_errors_total ${errors:-missing}"
    SHIPMENTS=$(metric "$metrics" verve_cluster_shipments_total)
    SHIPPED=$(metric "$metrics" verve_cluster_shipped_bytes_total)
    OPEN_IDS=$(metric "$metrics" verve_window_unique_ids)
  fi
}

if part a; then
  ROWS=()
  RATIOS=()
  for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then order=(single cluster); else order=(cluster single); fi
    for mode in "${order[@]}"; do
      echo "round $round: $mode ..." >&2
      run_one "$mode" "$round"
      if [[ $mode == single ]]; then
        s_rps=$RPS s_p99=$P99 s_busy=$BUSY s_load=$LOAD s_lines=$COUNT_LINES
      else
        c_rps=$RPS c_p99=$P99 c_busy=$BUSY c_load=$LOAD c_lines=$COUNT_LINES
        c_ship="$SHIPMENTS / $(awk -v b="$SHIPPED" -v n="$OPEN_IDS" 'BEGIN {printf "%.2f", n ? b / n : 0}')"
      fi
    done
    ratio=$(ratio "$c_rps" "$s_rps")
    RATIOS+=("$ratio")
    ROWS+=("$(printf '| %s | %s | %s | %s | **%s** | %s | %s | %s / %s | %s / %s | %s / %s | %s |' \
      "$round" "${order[0]} first" "$s_rps" "$c_rps" "$ratio" "$s_p99" "$c_p99" \
      "$s_lines" "$c_lines" "$s_load" "$c_load" "$s_busy" "$c_busy" "$c_ship")")
    echo "round $round: single $s_rps req/s, cluster $c_rps req/s, ratio $ratio" >&2
  done
  MEDIAN=$(printf '%s\n' "${RATIOS[@]}" | median)
  {
    echo
    echo "### a. Throughput: cluster mode / single mode, one instance, wrk -t$THREADS -c$CONNECTIONS, ${DURATION} s runs"
    echo
    echo "| round | order | single req/s | cluster req/s | cluster/single | single p99 | cluster p99 | count lines (s / c) | load1 at start (s / c) | other CPU busy before (s / c) | cluster: shipments / shipped B per open-window id |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | :---: | :---: | :---: | :---: |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "median cluster/single ratio: **$MEDIAN** over $ROUNDS pairs (load now $(cut -d' ' -f1-3 /proc/loadavg))"
  } | tee -a "$RAW"
fi

# ---------------------------------------------------------------------------------------------
# b. Bytes shipped for one window.

if part b; then
  echo "part b: one ${BOUNDARY_INTERVAL} s window under load ..." >&2
  bi=$BOUNDARY_INTERVAL
  port=$(free_port)
  url=http://127.0.0.1:$port
  logf=$TMP/boundary.log
  # Start just before a boundary (the instance's first window stays empty), load the next
  # window until about 2 s before its end, read the metrics just before the boundary (the
  # deltas), then after the window's count line (plus the last shipment).
  b=$(next_boundary "$bi")
  if awk -v b="$b" -v n="$(now)" 'BEGIN {exit !(b - n < 1)}'; then b=$((b + bi)); fi
  sleep_until "$((b - 1))"
  start_verve "$VERVE_BIN" "$port" "$logf" --interval "$bi" --redis "$REDIS_URL" \
    --redis-prefix "verve-perf-$STAMP-b" --instance-id perf-b
  # shellcheck disable=SC2153 # set by lib.sh's start_verve
  SERVER_PID=$VERVE_PID
  sleep_until "$b.05"
  curl -fsS "$url/metrics" >"$TMP/b0.metrics"
  ws=$(date -u -d "@$b" +%FT%TZ)
  {
    echo "=== part b: window $ws of ${bi} s, $(date -u +%FT%TZ), other CPU busy: $(other_busy)"
    echo "\$ $VERVE_BIN --listen 127.0.0.1:$port --log-file $logf --interval $bi --redis $REDIS_URL --redis-prefix verve-perf-$STAMP-b --instance-id perf-b"
    echo "\$ wrk -t$THREADS -c$CONNECTIONS -d$((bi - 2))s --latency -s perf/random_ids.lua $url"
  } >>"$RAW"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((bi - 2))s" --latency -s "$LUA" "$url" >"$TMP/wrk-b.txt"
  cat "$TMP/wrk-b.txt" >>"$RAW"
  check_wrk "part b" "$TMP/wrk-b.txt"
  sleep_until "$((b + bi - 1)).8"
  curl -fsS "$url/metrics" >"$TMP/b1.metrics"
  if awk -v b="$((b + bi))" -v n="$(now)" 'BEGIN {exit !(n > b)}'; then
    fail "part b: the pre-boundary metrics were read after the boundary (machine too slow?)"
  fi
  wait_log "$logf" "window_start=$ws unique_count=" 10 || true
  curl -fsS "$url/metrics" >"$TMP/b2.metrics"
  stop_pid "$SERVER_PID"
  SERVER_PID=
  {
    for f in b0 b1 b2; do
      echo "--- metrics $f"
      grep -E '^verve_(cluster|redis|window_unique)' "$TMP/$f.metrics" || true
    done
    echo "--- verve log (exit status $STOP_RC)"
    cat "$logf"
  } >>"$RAW"
  [[ $STOP_RC == 0 ]] || fail "part b: verve exit status $STOP_RC after SIGTERM"
  count_line=$(grep "window_start=$ws unique_count=" "$logf" || true)
  distinct=$(sed -n 's/.*unique_count=\([0-9]*\).*/\1/p' <<<"$count_line" | head -1)
  if [[ -z $distinct ]] || ((distinct == 0)); then
    fail "part b: no count line for window $ws"
  else
    breq=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$TMP/wrk-b.txt")
    check_log "part b" "$logf" "$breq"
    # wrk must have stopped before the boundary, or the next window's ids are in b2.
    next_ids=$(metric "$TMP/b2.metrics" verve_window_unique_ids)
    [[ ${next_ids:-x} == 0 ]] || fail "part b: ${next_ids:-?} ids in the window after $ws (wrk ran past the boundary)"
    s0=$(metric "$TMP/b0.metrics" verve_cluster_shipments_total)
    y0=$(metric "$TMP/b0.metrics" verve_cluster_shipped_bytes_total)
    s1=$(metric "$TMP/b1.metrics" verve_cluster_shipments_total)
    y1=$(metric "$TMP/b1.metrics" verve_cluster_shipped_bytes_total)
    s2=$(metric "$TMP/b2.metrics" verve_cluster_shipments_total)
    y2=$(metric "$TMP/b2.metrics" verve_cluster_shipped_bytes_total)
    # One shipment of as many random ids at once, for comparison.
    echo "\$ REDIS_URL=$REDIS_URL $MERGE_BIN --instances 1 --ids $distinct --shipments 1 --counters 1" >>"$RAW"
    REDIS_URL=$REDIS_URL "$MERGE_BIN" --instances 1 --ids "$distinct" --shipments 1 --counters 1 >"$TMP/one.txt"
    cat "$TMP/one.txt" >>"$RAW"
    one=$(sed -n 's/^RESULT.* bytes_per_id=\([0-9.]*\).*/\1/p' "$TMP/one.txt")
    {
      echo
      echo "### b. Bytes shipped for one ${bi} s window ($ws), one instance, wrk for $((bi - 2)) s"
      echo
      echo "| what | shipments | bytes | bytes per distinct id |"
      echo "| --- | ---: | ---: | ---: |"
      echo "| deltas during the window (every second) | $((s1 - s0)) | $((y1 - y0)) | $(bpi $((y1 - y0))) |"
      echo "| from 0.2 s before the boundary to the count line (the last shipment, at the close) | $((s2 - s1)) | $((y2 - y1)) | $(bpi $((y2 - y1))) |"
      echo "| **whole window** | $((s2 - s0)) | $((y2 - y0)) | **$(bpi $((y2 - y0)))** |"
      echo "| for comparison: the same number of random u32 ids shipped at once, cut into the 16 partitions (leader_merge) | 16 | | $one |"
      echo
      echo "distinct ids in the window: $distinct; count line \`${count_line#* INFO }\`," \
        "written $(count_lines "$logf" "$bi" | awk -v w="$ws" '$1 == w {print $3}') ms after the window closed"
    } | tee -a "$RAW"
  fi
fi

# ---------------------------------------------------------------------------------------------
# c. The leader's merge.

if part c; then
  MROWS=()
  for case in $MERGE_CASES; do
    ov=${case%%:*}
    k=${case#*:}
    [[ $case == *:* && $k =~ ^[1-9][0-9]*$ ]] || die "bad MERGE_CASES entry '$case' (OVERLAP:SHIPMENTS)"
    runs=$MERGE_RUNS
    ((k == 1)) || runs=$MERGE_DELTA_RUNS
    echo "part c: leader_merge ${MERGE_INSTANCES} x $MERGE_IDS, overlap $ov, $k shipment(s) each ..." >&2
    args=(--dist "$MERGE_DIST" --instances "$MERGE_INSTANCES" --ids "$MERGE_IDS" --overlap "$ov"
      --shipments "$k" --runs "$runs" --counters 2)
    {
      echo "=== part c: $(date -u +%FT%TZ), other CPU busy: $(other_busy)"
      echo "\$ REDIS_URL=$REDIS_URL $MERGE_BIN ${args[*]}"
    } >>"$RAW"
    out=$TMP/merge-$ov-$k.txt
    if ! REDIS_URL=$REDIS_URL "$MERGE_BIN" "${args[@]}" >"$out"; then
      cat "$out" >>"$RAW"
      fail "part c: leader_merge failed (case $case)"
      continue
    fi
    cat "$out" >>"$RAW"
    sum=$(grep '^SUMMARY' "$out")
    res=$(grep '^RESULT' "$out" | tail -1)
    MROWS+=("| $ov | $k | $runs | $(field distinct "$res") | $(field bytes_per_id "$res") | **$(mm "$(field sum_ms "$sum")")** | $(field part_total_ms "$res") | $(field part_fetch_ms "$res") | $(field part_count_ms "$res") | $(field counter_partitions "$res") |")
  done
  {
    echo
    echo "### c. The cluster's count: ${MERGE_INSTANCES} instances x $MERGE_IDS $MERGE_DIST ids, 16 partitions, 2 counter processes"
    echo
    echo "| overlap | shipments per instance | runs | distinct | bytes/id | **freeze to sum** (ms, median / min) | per partition, last run (ms, median,min,max) | of which fetch + decode | of which \`count_union\` | partitions per counter |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${MROWS[@]}"
  } | tee -a "$RAW"
fi

echo
echo "raw output: ${RAW#"$ROOT"/}" | tee -a "$RAW"
exit_if_failed
