#!/usr/bin/env bash
# What --state-file costs: verve with and without it, side by side under the same wrk load,
# and the bytes the journal writes per window.
#
#   perf/state_cost.sh                         # 4 rounds of 10 s, then 3 windows of 60 s
#   ROUNDS=6 DURATION=20 perf/state_cost.sh
#   WINDOWS=0 perf/state_cost.sh               # throughput only
#
# Part 1, throughput: per round, verve without the flag ("plain") and with it ("state", the
# journal in a temporary directory) are each started on a free loopback port, warmed up for
# WARMUP s and measured with
#   IDS=i64 wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s perf/random_ids.lua
# The order alternates by round. Prints req/s, p99 and the server's CPU time per request of
# both, the state/plain ratios per round and their medians.
#
# Part 2, bytes per window: verve with the flag and --interval 60 under the same load for
# WINDOWS full windows (plus the partial first one); /metrics is read every second, and for
# each full window the journal's bytes written during it (verve_state_file_written_bytes_total
# from its start to its end: the appends of its ids and the rewrite after the window before
# it was reported) are set against the serialized size of its id set (its count times the
# bytes per id that examples/memory measures for that many random 64-bit ids), and the delay
# of its count line is shown.
#
# Environment: ROUNDS (4), DURATION (10), WARMUP (2), THREADS (2), CONNECTIONS (64), WINDOWS
# (3), SEED (1), CARGO_TARGET_DIR. Output: tables on stdout, everything in
# perf/out/state_cost-<UTC>.txt. Exit 1 when a check fails (non-2xx answers, a bad exit).
set -euo pipefail

ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WINDOWS=${WINDOWS:-3}
export SEED=${SEED:-1}
export IDS=i64

# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
LUA=$ROOT/perf/random_ids.lua
RAW=$PERF_OUT/state_cost-$STAMP.txt
TMP=$(mktemp -d -t verve-state-cost.XXXXXX)
need_common
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
mkdir -p "$PERF_OUT"
trap 'kill_pids "$VERVE_PID"; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

# utime + stime of a process, in clock ticks.
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# run_one NAME ROUND: start verve (with the state file for NAME=state), warm up, measure,
# stop. Sets RPS, P99, CPU_US.
run_one() {
  local name=$1 round=$2 port url flags=() ticks out
  port=$(free_port)
  url="http://127.0.0.1:$port"
  [[ $name == plain ]] || flags=(--state-file "$TMP/state-$round.journal")
  start_verve "$VERVE_BIN" "$port" "$TMP/$name-$round.log" "${flags[@]}"
  SEED=$((SEED + 1000 + round)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$LUA" \
    "$url" >/dev/null
  out=$TMP/wrk-$name-$round.txt
  ticks=$(cpu_ticks "$VERVE_PID")
  SEED=$((SEED + round)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$LUA" "$url" >"$out"
  ticks=$(($(cpu_ticks "$VERVE_PID") - ticks))
  stop_verve
  {
    echo "=== round $round: $name, load $(cut -d' ' -f1-3 /proc/loadavg), exit $STOP_RC"
    cat "$out"
  } >>"$RAW"
  check_wrk "round $round: $name" "$out"
  [[ $STOP_RC == 0 ]] || fail "round $round: $name exit status $STOP_RC"
  RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  P99=$(awk '$1 == "99%" {print $2}' "$out")
  local requests
  requests=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$out")
  CPU_US=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
    'BEGIN { printf "%.2f", (n > 0) ? t * 1e6 / hz / n : 0 }')
}

cd "$ROOT"
log "# perf/state_cost.sh $STAMP: ROUNDS=$ROUNDS DURATION=${DURATION}s WARMUP=${WARMUP}s" \
  "THREADS=$THREADS CONNECTIONS=$CONNECTIONS WINDOWS=$WINDOWS SEED=$SEED IDS=$IDS"
machine_line | tee -a "$RAW"
build --bin verve --example memory
VERVE_BIN=$(target_dir)/release/verve
MEMORY_BIN=$(target_dir)/release/examples/memory

if ((ROUNDS > 0)); then
  log ""
  log "round  plain_rps  state_rps  ratio  plain_p99  state_p99  plain_us/req  state_us/req  cpu_ratio"
  RATIOS=()
  CPU_RATIOS=()
  for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then order="plain state"; else order="state plain"; fi
    for name in $order; do
      run_one "$name" "$round"
      printf -v "${name}_rps" '%s' "$RPS"
      printf -v "${name}_p99" '%s' "$P99"
      printf -v "${name}_cpu" '%s' "$CPU_US"
    done
    # shellcheck disable=SC2154 # set through printf -v above
    r=$(ratio "$state_rps" "$plain_rps")
    # shellcheck disable=SC2154
    c=$(ratio "$plain_cpu" "$state_cpu")
    RATIOS+=("$r")
    CPU_RATIOS+=("$c")
    # shellcheck disable=SC2154
    log "$(printf '%5s  %9s  %9s  %5s  %9s  %9s  %12s  %12s  %9s' "$round" "$plain_rps" \
      "$state_rps" "$r" "$plain_p99" "$state_p99" "$plain_cpu" "$state_cpu" "$c")"
  done
  log "median state/plain req/s: $(printf '%s\n' "${RATIOS[@]}" | median)," \
    "median plain/state CPU per request: $(printf '%s\n' "${CPU_RATIOS[@]}" | median)"
fi

if ((WINDOWS > 0)); then
  log ""
  log "# bytes per window: --interval 60, $WINDOWS full windows of random 64-bit ids"
  port=$(free_port)
  logf=$TMP/windows.log
  start_verve "$VERVE_BIN" "$port" "$logf" --interval 60 --state-file "$TMP/windows.journal"
  url="http://127.0.0.1:$port"
  # Until WINDOWS whole windows have closed after the first boundary.
  secs=$(((WINDOWS + 1) * 60 + 60 - $(date +%s) % 60 + 5))
  (
    end=$(($(date +%s) + secs))
    while (($(date +%s) < end)); do
      printf '%s %s\n' "$(date +%s.%N)" \
        "$(curl -s "$url/metrics" | awk '$1 == "verve_state_file_written_bytes_total" {print $2}')"
      sleep 1
    done
  ) >"$TMP/written.txt" &
  scraper=$!
  SEED=$((SEED + 77)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" -s "$LUA" "$url" \
    >"$TMP/wrk-windows.txt"
  wait "$scraper" || true
  stop_verve
  cat "$TMP/wrk-windows.txt" >>"$RAW"
  check_wrk "bytes per window" "$TMP/wrk-windows.txt"
  log "window_start          unique_count  written_bytes  serialized_bytes  written/serialized  line_delay_ms"
  # Skip the first (partial) window and the last (closed by the SIGTERM).
  count_lines "$logf" 60 | sed '1d;$d' | while read -r ws uc delay; do
    start=$(date -u -d "$ws" +%s)
    written=$(awk -v a="$start" -v b="$((start + 60))" '
      $1 >= a && first == "" {first = $2}
      $1 >= b && last == "" {last = $2}
      END {print last - first}' "$TMP/written.txt")
    per_id=$("$MEMORY_BIN" random-i64 "$uc" | sed -n 's/.*serialized_per_id=\([0-9.]*\).*/\1/p' |
      head -1)
    serialized=$(awk -v n="$uc" -v p="$per_id" 'BEGIN {printf "%.0f", n * p}')
    log "$(printf '%s  %12s  %13s  %16s  %18s  %13s' "$ws" "$uc" "$written" "$serialized" \
      "$(ratio "$written" "$serialized" 2)" "$delay")"
  done
fi
exit_if_failed
