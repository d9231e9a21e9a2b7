#!/usr/bin/env bash
# Does scraping /metrics slow anybody down? verve holds a large open window (FILL random
# 64-bit ids, sent first), then wrk measures the latency of accept requests on CONNECTIONS
# connections for DURATION seconds, twice per round: alone, and while another wrk sends
# batches of 1000 pipelined GET /metrics on one connection. A scrape reads gauges only, so
# the p99 should not move beyond the run-to-run noise (compare the alone-vs-alone spread).
#
#   perf/scrape.sh                           # 3 rounds, 10 s each, 2M ids in the window
#   ROUNDS=5 FILL=5000000 perf/scrape.sh
#
# Environment: ROUNDS (3), DURATION (10), CONNECTIONS (16), FILL (2000000), PIPELINE (1000),
# SCRAPE_PATH (/metrics; `/`, a static page twice the size, is the control that separates the
# cost of rendering the metrics from that of answering a pipelined batch at all), CARGO_TARGET_DIR. Output: a table on stdout and everything in perf/out/scrape-<UTC>.txt.
# Exit status 1 if a check failed (non-2xx answers, socket errors, no scrape answered).
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
FILL=${FILL:-2000000}
export PIPELINE=${PIPELINE:-1000}

need_common
need wrk "apt-get install -y wrk"
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/scrape-$STAMP.txt
TMP=$(mktemp -d -t verve-scrape.XXXXXX)
SCRAPER_PID=
trap 'kill_pids "$VERVE_PID" "$SCRAPER_PID"; rm -rf "$TMP"' EXIT

build --bin verve
BIN=$(target_dir)/release/verve
log "# perf/scrape.sh $STAMP: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS" \
  "FILL=$FILL PIPELINE=$PIPELINE SCRAPE_PATH=${SCRAPE_PATH:-/metrics}"
machine_line | tee -a "$RAW"

port=$(free_port)
url=http://127.0.0.1:$port
# One window for the whole run: the fill stays in it.
start_verve "$BIN" "$port" "$TMP/verve.log" --interval 86400
export IDS=i64
# wrk -d takes whole seconds: fill at whatever rate, until the gauge passes FILL.
# Each pass with a seed of its own: the same seed sends the same ids again.
fill_seed=${SEED:-1}
while :; do
  fill_seed=$((fill_seed + 1))
  SEED=$fill_seed wrk -t2 -c64 -d2s -s "$ROOT/perf/random_ids.lua" "$url" >/dev/null
  sleep 1.1 # the gauge is merged once a second
  held=$(curl -s "$url/metrics" | awk '$1 == "verve_window_unique_ids" {print $2}')
  [[ $held =~ ^[0-9]+$ ]] || die "no verve_window_unique_ids on $url/metrics"
  ((held >= FILL)) && break
done
log "window holds $held distinct ids"

# measure NAME: wrk's latency run; sets P99 and P50 (ms).
measure() {
  local out=$TMP/wrk-$1.txt
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$ROOT/perf/random_ids.lua" "$url" >"$out"
  check_wrk "$1" "$out"
  cat "$out" >>"$RAW"
  to_ms() { awk '{v = $1; if (v ~ /us$/) v = v / 1000; else if (v ~ /ms$/) v = v + 0; else if (v ~ /s$/) v = v * 1000; print v}'; }
  P50=$(awk '$1 == "50%" {print $2}' "$out" | to_ms)
  P99=$(awk '$1 == "99%" {print $2}' "$out" | to_ms)
}

ROWS=()
for round in $(seq 1 "$ROUNDS"); do
  measure "alone-$round"
  alone50=$P50 alone99=$P99
  wrk -t1 -c1 -d"$((DURATION + 2))s" -s "$ROOT/perf/pipelined_metrics.lua" "$url" \
    >"$TMP/scraper-$round.txt" &
  SCRAPER_PID=$!
  sleep 1
  measure "scraped-$round"
  wait "$SCRAPER_PID"
  SCRAPER_PID=
  scrapes=$(awk '/requests in/ {print $1}' "$TMP/scraper-$round.txt")
  cat "$TMP/scraper-$round.txt" >>"$RAW"
  check_wrk "scraper-$round" "$TMP/scraper-$round.txt"
  ((scrapes > 0)) || fail "round $round: no scrape answered"
  ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$round" "$alone50" "$alone99" "$P50" "$P99" "$scrapes")")
done
stop_verve

{
  echo
  echo "| round | p50 ms alone | p99 ms alone | p50 ms while scraped | p99 ms while scraped | scrapes answered |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${ROWS[@]}"
  echo "raw output: ${RAW#"$ROOT"/}"
} | tee -a "$RAW"
exit_if_failed
