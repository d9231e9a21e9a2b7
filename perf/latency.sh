#!/usr/bin/env bash
# Latency at a constant request rate, corrected for coordinated omission, with oha or wrk2.
#
#   perf/latency.sh                          # max rate from a 5 s wrk run, then 30 s at half of it
#   MAX_RATE=120000 DURATION=60 perf/latency.sh
#   RATE=20000 perf/latency.sh               # a fixed rate instead of max/2
#   LOAD=wrk2 RATE=20000 perf/latency.sh     # the load from wrk2 instead of oha
#   LOAD=wrk2 RATE=20000 THREADS=1 CONNECTIONS=32 VERVE_ARGS="--workers 1" \
#     VERVE_CPUS=0 LOAD_CPUS=1 perf/latency.sh   # verve on core 0, the load on core 1
#
# Builds --release verve and starts it on a free loopback port. Unless MAX_RATE is given it
# measures verve's maximum rate first (wrk -t2 -c64 -d${MAX_DURATION}s with perf/random_ids.lua),
# then, on a freshly restarted verve (an empty window either way), runs
#   oha -q RATE --latency-correction -z ${DURATION}s -c $CONNECTIONS --no-tui \
#       --rand-regex-url --output-format csv 'http://127.0.0.1:PORT/api/verve/accept\?id=[0-3][0-9]{9}'
# with RATE = MAX_RATE / 2. The id is ten digits, the first 0-3, the rest 0-9, each uniform
# (rand_regex draws each class independently): ids uniform over 0..3 999 999 999, 93% of the
# u32 range, written with leading zeros (which the API allows). oha's CSV holds every
# successful request; its request-duration is measured from when the request was due
# (--latency-correction), so a stall shows in every request queued behind it.
#
# With LOAD=wrk2 (wrk2 on PATH: github.com/giltene/wrk2, built with `make`) the measured run is
#   wrk2 -t $THREADS -c $CONNECTIONS -d ${DURATION}s -R RATE --latency -s perf/random_ids.lua URL
# (ids uniform over 0..2^32-1). wrk2 sends at the constant rate RATE and measures each request
# from when it was due, as oha's --latency-correction does; it keeps no per-request record but
# prints its HdrHistogram's "Detailed Percentile spectrum", from which the percentiles (the
# histogram's value at each), the curve and the histogram (by the spectrum's steps) are made.
#
# Prints p50/p90/p99/p99.9/max and whether p99 <= TARGET_P99_MS; writes to perf/out/:
#   latency-<UTC>.txt              the summary, the full percentile table, the log-bucket histogram
#   latency-<UTC>-percentiles.csv  percentile,latency_ms (nearest rank; 0 = min, 100 = max)
#   latency-<UTC>-histogram.csv    bucket_upper_ms,count,cumulative_percent (10 buckets/decade)
#   latency-<UTC>-curve.csv        the percentile curve that is plotted
#   latency-<UTC>-oha.csv.gz       oha's per-request CSV (LOAD=oha)
#   latency-<UTC>-wrk2.txt         wrk2's output with the percentile spectrum (LOAD=wrk2)
# and the chart to $SVG (perf/latency.svg): latency (log) against percentile on the "nines"
# scale (1/(1-p), log).
#
# Environment: LOAD (oha or wrk2), DURATION (30 s), CONNECTIONS (64), THREADS (wrk2's -t, 2),
# MAX_RATE (measured when unset), MAX_DURATION (5 s), RATE (MAX_RATE/2), TARGET_P99_MS (1),
# VERVE_ARGS (extra verve flags), VERVE_CPUS and LOAD_CPUS (taskset CPU lists for verve's
# threads and for the load generator; unset: not pinned), BASELINE (0 skips the run against
# the bare server), BIN and BASELINE_BIN (binaries to measure instead of building them), SVG,
# CARGO_TARGET_DIR.
# Exit status 1 if verve answered anything but 200, the load generator saw socket errors or got
# less than 95% of the requests it was asked for answered (it could not keep up, or requests
# failed), or verve did not exit 0 on SIGTERM. A p99 over the target is reported, not an error.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

LOAD=${LOAD:-oha}
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
MAX_RATE=${MAX_RATE:-}
MAX_DURATION=${MAX_DURATION:-5}
RATE=${RATE:-}
TARGET_P99_MS=${TARGET_P99_MS:-1}
VERVE_ARGS=${VERVE_ARGS:-}
SVG=${SVG:-$ROOT/perf/latency.svg}
[[ $LOAD == oha || $LOAD == wrk2 ]] || die "LOAD must be oha or wrk2, not '$LOAD'"
for v in DURATION CONNECTIONS THREADS MAX_DURATION; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
for v in MAX_RATE RATE; do
  [[ -z ${!v} || ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

((THREADS <= CONNECTIONS)) || die "THREADS ($THREADS) must not exceed CONNECTIONS ($CONNECTIONS)"

need_common
if [[ $LOAD == oha ]]; then
  need oha "cargo install oha --version 1.16.0 --locked   (builds with rustc 1.95 and gcc; takes ~10 min)"
else
  need wrk2 "git clone https://github.com/giltene/wrk2 && cd wrk2 && make && cp wrk /usr/local/bin/wrk2   (needs gcc, make, libssl-dev, zlib1g-dev)"
fi
[[ -z ${VERVE_CPUS:-}${LOAD_CPUS:-} ]] || need taskset "apt-get install -y util-linux"
need gnuplot "apt-get install -y gnuplot-nox"
need gzip "apt-get install -y gzip"
[[ -n $MAX_RATE || -n $RATE ]] || need wrk "apt-get install -y wrk"

mkdir -p "$PERF_OUT"
BASE=$PERF_OUT/latency-$STAMP
RAW=$BASE.txt
OHA_CSV=$BASE-oha.csv
WRK2_OUT=$BASE-wrk2.txt
TMP=$(mktemp -d -t verve-latency.XXXXXX)
BASELINE_PID=
cleanup() {
  kill_pids "$VERVE_PID" "$BASELINE_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# BIN and BASELINE_BIN measure given binaries (another build, say) instead of building.
[[ -n ${BIN:-} ]] || build --bin verve
[[ -n ${BASELINE_BIN:-} || ${BASELINE:-1} != 1 ]] || build --example baseline
VERVE_BIN=${BIN:-$(target_dir)/release/verve}
BASELINE_BIN=${BASELINE_BIN:-$(target_dir)/release/examples/baseline}
[[ -x $VERVE_BIN ]] || die "$VERVE_BIN not found"

# The load generator's command prefix: pinned to LOAD_CPUS when given.
PIN_LOAD=()
[[ -z ${LOAD_CPUS:-} ]] || PIN_LOAD=(taskset -c "$LOAD_CPUS")
# pin_server PID: every thread of PID onto VERVE_CPUS, when given.
pin_server() {
  [[ -z ${VERVE_CPUS:-} ]] || taskset -a -p -c "$VERVE_CPUS" "$1" >/dev/null || die "taskset -c $VERVE_CPUS failed"
}
if [[ $LOAD == oha ]]; then
  LOAD_VERSION=$(oha --version)
else
  LOAD_VERSION="wrk2 ($(wrk2 -v 2>&1 | awk 'NR == 1 {print $1, $2}' || true))"
fi

{
  echo "# perf/latency.sh $STAMP: DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS MAX_RATE=${MAX_RATE:-measure}" \
    "RATE=${RATE:-max/2} LOAD=$LOAD THREADS=$THREADS VERVE_CPUS=${VERVE_CPUS:-} LOAD_CPUS=${LOAD_CPUS:-}" \
    "VERVE_ARGS='$VERVE_ARGS'; $LOAD_VERSION"
  machine_line
  echo "# other CPU busy in the second before: $(other_busy)"
} | tee "$RAW"

PORT=$(free_port)
URL=http://127.0.0.1:$PORT
# shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
start_verve "$VERVE_BIN" "$PORT" "$TMP/verve.log" $VERVE_ARGS
pin_server "$VERVE_PID"

if [[ -z $RATE && -z $MAX_RATE ]]; then
  echo "\$ wrk -t2 -c64 -d${MAX_DURATION}s -s perf/random_ids.lua $URL" | tee -a "$RAW"
  SEED=7 "${PIN_LOAD[@]}" wrk -t2 -c64 -d"${MAX_DURATION}s" -s "$ROOT/perf/random_ids.lua" "$URL" >"$TMP/wrk.txt"
  cat "$TMP/wrk.txt" >>"$RAW"
  MAX_RATE=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$TMP/wrk.txt")
  [[ -n $MAX_RATE && $MAX_RATE -gt 0 ]] || die "no Requests/sec in wrk's output"
  if grep -q 'Non-2xx\|Socket errors' "$TMP/wrk.txt"; then
    echo "WARNING: the max-rate run saw errors: $(grep 'Non-2xx\|Socket errors' "$TMP/wrk.txt")" | tee -a "$RAW"
  fi
  echo "max rate (wrk, ${MAX_DURATION}s): $MAX_RATE req/s" | tee -a "$RAW"
  # A fresh verve for the measured run: the same start (an empty window) whether or not
  # the max rate was measured here.
  stop_verve
  [[ $STOP_RC == 0 ]] || die "verve exit status $STOP_RC after the max-rate run"
  cat "$TMP/verve.log" >>"$RAW"
  rm -f "$TMP/verve.log"
  PORT=$(free_port)
  URL=http://127.0.0.1:$PORT
  # shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
  start_verve "$VERVE_BIN" "$PORT" "$TMP/verve.log" $VERVE_ARGS
  pin_server "$VERVE_PID"
fi
RATE=${RATE:-$((MAX_RATE / 2))}

# --- the measured run -------------------------------------------------------------------------

# Each path leaves N (requests answered), BAD (answers not 200), ERRORS (the load generator's
# socket errors and timeouts), BASELINE_SUMMARY and, in $TMP/points, "latency_ms weight" lines
# that the percentiles, curve and histogram below are computed from.
OHA_PATTERN='/api/verve/accept\?id=[0-3][0-9]{9}'

measure_oha() {
  local oha_url=$URL$OHA_PATTERN
  local oha_args=(-q "$RATE" --latency-correction -z "${DURATION}s" -c "$CONNECTIONS" --no-tui
    --rand-regex-url)
  echo "\$ oha ${oha_args[*]} --output-format csv -o $OHA_CSV '$oha_url'" | tee -a "$RAW"
  "${PIN_LOAD[@]}" oha "${oha_args[@]}" --output-format csv -o "$OHA_CSV" "$oha_url" 2>"$TMP/oha.err" || {
    cat "$TMP/oha.err" >&2
    die "oha failed"
  }
  if [[ -s $TMP/oha.err ]]; then
    {
      echo "oha stderr:"
      cat "$TMP/oha.err"
    } | tee -a "$RAW"
  fi
  stop_verve
  echo "verve exit status after SIGTERM: $STOP_RC" >>"$RAW"

  if [[ $BASELINE_RUN == 1 ]]; then
    start_baseline
    local b_url=$B_URL$OHA_PATTERN
    echo "\$ oha ${oha_args[*]} '$b_url'   # baseline" | tee -a "$RAW"
    "${PIN_LOAD[@]}" oha "${oha_args[@]}" "$b_url" >"$TMP/baseline-oha.txt" 2>&1 ||
      die "oha failed against the baseline"
    kill_pids "$BASELINE_PID"
    cat "$TMP/baseline-oha.txt" >>"$RAW"
    pct() { awk -v p="$1" '$1 == p {print $3, $4}' "$TMP/baseline-oha.txt"; }
    BASELINE_SUMMARY="p50 $(pct 50.00%)   p90 $(pct 90.00%)   p99 $(pct 99.00%)   p99.9 $(pct 99.90%)"
  fi

  # oha's CSV: request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status
  [[ -s $OHA_CSV ]] || die "oha wrote no CSV"
  read -r N BAD < <(awk -F, 'NR > 1 {n++; if ($7 != 200) bad++} END {print n + 0, bad + 0}' "$OHA_CSV")
  ERRORS=0
  awk -F, 'NR > 1 {printf "%.6f 1\n", $5 * 1000}' "$OHA_CSV" >"$TMP/points"
  OUTPUTS="-oha.csv.gz"
}

# wrk2_spectrum FILE: wrk2's "Detailed Percentile spectrum" as "latency_ms requests" lines:
# each value with the number of requests the spectrum adds at it (TotalCount's step).
wrk2_spectrum() {
  awk '/Detailed Percentile spectrum/ {on = 1; next}
       on && /^#\[Mean/ {exit}
       on && NF == 4 && $1 ~ /^[0-9.]+$/ && $3 ~ /^[0-9]+$/ {
           if ($3 > seen) printf "%s %d\n", $1, $3 - seen
           seen = $3
       }' "$1"
}

# wrk2_distribution FILE: wrk2's "Latency Distribution" (the HdrHistogram's own value at 50,
# 75, 90, 99, 99.9, 99.99, 99.999 and 100%) as "percentile latency_ms" lines. These are exact
# to the histogram's precision; the spectrum's steps fall near, not on, these percentiles.
wrk2_distribution() {
  awk '/Latency Distribution/ {on = 1; next}
       on && $1 ~ /^[0-9.]+%$/ && $2 ~ /^[0-9.]+(us|ms|s|m)$/ {
           v = $2; unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
           scale = (unit == "us") ? 0.001 : (unit == "ms") ? 1 : (unit == "s") ? 1000 : 60000
           p = $1; sub(/%$/, "", p)
           printf "%s %.3f\n", p + 0, v * scale
       }
       on && NF == 0 {exit}' "$1"
}

measure_wrk2() {
  local wrk2_args=(-t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" -R "$RATE" --latency
    -s "$ROOT/perf/random_ids.lua")
  echo "\$ wrk2 ${wrk2_args[*]} $URL" | tee -a "$RAW"
  SEED=7 "${PIN_LOAD[@]}" wrk2 "${wrk2_args[@]}" "$URL" >"$WRK2_OUT" 2>&1 || {
    cat "$WRK2_OUT" >&2
    die "wrk2 failed"
  }
  stop_verve
  echo "verve exit status after SIGTERM: $STOP_RC" >>"$RAW"

  if [[ $BASELINE_RUN == 1 ]]; then
    start_baseline
    echo "\$ wrk2 ${wrk2_args[*]} $B_URL   # baseline" | tee -a "$RAW"
    SEED=7 "${PIN_LOAD[@]}" wrk2 "${wrk2_args[@]}" "$B_URL" >"$TMP/baseline-wrk2.txt" 2>&1 ||
      die "wrk2 failed against the baseline"
    kill_pids "$BASELINE_PID"
    cat "$TMP/baseline-wrk2.txt" >>"$RAW"
    wrk2_distribution "$TMP/baseline-wrk2.txt" >"$TMP/baseline-dist"
    [[ -s $TMP/baseline-dist ]] || die "no latency distribution in wrk2's output against the baseline"
    BASELINE_SUMMARY=$(awk '{d[$1] = $2} END {printf "p50 %s ms   p90 %s ms   p99 %s ms   p99.9 %s ms",
      d["50"], d["90"], d["99"], d["99.9"]}' "$TMP/baseline-dist")
  fi

  # perf/random_ids.lua's done() prints one RESULT line with wrk2's own counts.
  local result
  result=$(grep -m1 '^RESULT ' "$WRK2_OUT") || die "no RESULT line in wrk2's output"
  N=$(field requests "$result")
  BAD=$(field status_errors "$result")
  ERRORS=$(($(field connect_errors "$result") + $(field read_errors "$result") +
    $(field write_errors "$result") + $(field timeouts "$result")))
  wrk2_spectrum "$WRK2_OUT" >"$TMP/points"
  [[ -s $TMP/points ]] || die "no percentile spectrum in wrk2's output"
  wrk2_distribution "$WRK2_OUT" >"$TMP/dist"
  [[ -s $TMP/dist ]] || die "no latency distribution in wrk2's output"
  OUTPUTS="-wrk2.txt"
}

# start_baseline: the bare may_minihttp server (examples/baseline.rs) on a free port, under the
# same load as verve: on a machine where the load generator shares the cores with the server,
# this says how much of the tail is the load generator's and the machine's rather than
# verve's. BASELINE=0 skips it.
start_baseline() {
  BPORT=$(free_port)
  "$BASELINE_BIN" "127.0.0.1:$BPORT" >"$TMP/baseline.out" 2>&1 &
  BASELINE_PID=$!
  wait_port "$BPORT" "$BASELINE_PID" || die "the baseline did not start"
  pin_server "$BASELINE_PID"
  B_URL=http://127.0.0.1:$BPORT
}

BASELINE_RUN=${BASELINE:-1}
BASELINE_SUMMARY="not measured (BASELINE=0)"
"measure_$LOAD"

EXPECTED=$((RATE * DURATION))
ACHIEVED=$(awk -v n="$N" -v d="$DURATION" 'BEGIN {printf "%.0f", n / d}')
echo "requests: $N answered (asked for $RATE/s x ${DURATION}s = $EXPECTED), $ACHIEVED/s achieved, $BAD not 200, $ERRORS socket errors" | tee -a "$RAW"
((BAD == 0)) || fail "$BAD answers were not 200"
((ERRORS == 0)) || fail "$LOAD saw $ERRORS socket errors or timeouts"
((N * 100 >= EXPECTED * 95)) || fail "only $N of $EXPECTED requests answered: $LOAD could not keep up or requests failed"
[[ $STOP_RC == 0 ]] || fail "verve exit status $STOP_RC after SIGTERM"

# Percentiles (nearest rank over the requests; with wrk2 each spectrum value stands for the
# requests it adds), the curve and the histogram, from "latency_ms weight" sorted by latency.
sort -g "$TMP/points" | awk -v pct="$BASE-percentiles.csv" -v curve="$BASE-curve.csv" -v hist="$BASE-histogram.csv" '
    { v[NR] = $1; c[NR] = $2; cum[NR] = (NR > 1 ? cum[NR - 1] : 0) + $2 }
    # The latency of rank r (1-based) among the cum[NR] requests.
    function at_rank(r,   lo, hi, mid) {
        lo = 1; hi = NR
        while (lo < hi) { mid = int((lo + hi) / 2); if (cum[mid] >= r) hi = mid; else lo = mid + 1 }
        return v[lo]
    }
    # Nearest rank: the smallest rank r with r >= p% of n (1e-9: 0.999 * 3000 is not exact).
    function at(p,   n, x, r) { n = cum[NR]; x = p / 100 * n; r = int(x); if (x - r > 1e-9) r++; if (r < 1) r = 1; if (r > n) r = n; return at_rank(r) }
    END {
        total_n = cum[NR]
        k = split("0 10 25 50 75 90 95 99 99.5 99.9 99.95 99.99 99.999 100", ps, " ")
        print "percentile,latency_ms" > pct
        for (i = 1; i <= k; i++) printf "%s,%.3f\n", ps[i], at(ps[i]) > pct
        # Curve: 40 points per decade of 1/(1-p), up to where a point is still one request.
        print "percentile,latency_ms" > curve
        for (j = 0; ; j++) {
            x = 10 ^ (j / 40)
            if (x > total_n) break
            p = 100 * (1 - 1 / x)
            printf "%.6f,%.3f\n", p, at(p) > curve
        }
        # Histogram: 10 log buckets per decade, from 10 us.
        print "bucket_upper_ms,count,cumulative_percent" > hist
        j = 0; b = 0; total = 0
        for (i = 1; i <= NR; i++) {
            while (v[i] > 0.01 * 10 ^ (j / 10)) {
                if (b) { total += b; printf "%.4g,%d,%.4f\n", 0.01 * 10 ^ (j / 10), b, 100 * total / total_n > hist }
                b = 0; j++
            }
            b += c[i]
        }
        total += b
        printf "%.4g,%d,%.4f\n", 0.01 * 10 ^ (j / 10), b, 100 * total / total_n > hist
    }'

if [[ $LOAD == wrk2 ]]; then
  # The percentiles wrk2 reports itself replace those read off the spectrum, and its exact
  # maximum (#[Max = ...]) the spectrum's last bucket; no percentile is above the maximum.
  WRK2_MAX=$(awk '/^#\[Max/ {gsub(",", "", $3); printf "%.3f", $3; exit}' "$WRK2_OUT")
  [[ -n $WRK2_MAX ]] || die "no #[Max = ...] line in wrk2's output"
  awk -v max="$WRK2_MAX" 'NR == FNR {d[$1 + 0] = $2; next}
      FNR == 1 {print; next}
      {split($0, f, ","); p = f[1] + 0; v = (p in d) ? d[p] : f[2]
       if (p == 100 || v + 0 > max + 0) v = max
       printf "%s,%.3f\n", f[1], v}' "$TMP/dist" "$BASE-percentiles.csv" >"$TMP/percentiles.csv"
  mv "$TMP/percentiles.csv" "$BASE-percentiles.csv"
  cat "$WRK2_OUT" >>"$RAW"
fi
p() { awk -F, -v p="$1" '$1 == p {print $2}' "$BASE-percentiles.csv"; }
P50=$(p 50) P90=$(p 90) P99=$(p 99) P999=$(p 99.9) MAX=$(p 100)
VERDICT=$(awk -v x="$P99" -v t="$TARGET_P99_MS" 'BEGIN {print (x <= t) ? "yes" : "NO"}')

{
  echo
  echo "## percentiles (ms), $N requests at $RATE/s, $CONNECTIONS connections, latency-corrected ($LOAD)"
  echo
  echo "| percentile | latency ms |"
  echo "| ---: | ---: |"
  awk -F, 'NR > 1 {printf "| %s | %s |\n", ($1 == 0 ? "min" : ($1 == 100 ? "max" : $1)), $2}' "$BASE-percentiles.csv"
  echo
  echo "## histogram (10 buckets per decade; bucket_upper_ms,count,cumulative_percent)"
  echo
  cat "$BASE-histogram.csv"
  echo
  echo "## verve's count log"
  cat "$TMP/verve.log"
} >>"$RAW"

if gnuplot -e "csv='$BASE-curve.csv'; out='$SVG'; tool='$LOAD'; target_ms=$TARGET_P99_MS; subtitle='$STAMP, $RATE req/s for ${DURATION}s, $CONNECTIONS connections, p99 $P99 ms, max $MAX ms, nproc $(nproc)'" \
  "$ROOT/perf/plot_latency.gnuplot"; then
  CHART="chart: ${SVG#"$ROOT"/}"
else
  fail "gnuplot could not draw $SVG"
  CHART="no chart"
fi
[[ $LOAD != oha ]] || gzip -f "$OHA_CSV"

{
  echo
  echo "$LOAD: rate $RATE req/s (max ${MAX_RATE:-not measured}), ${DURATION}s, $CONNECTIONS connections, $N requests:"
  echo "  p50 $P50 ms   p90 $P90 ms   p99 $P99 ms   p99.9 $P999 ms   max $MAX ms"
  echo "  p99 <= $TARGET_P99_MS ms: $VERDICT"
  echo "  bare baseline, same load: $BASELINE_SUMMARY"
  echo "  window boundaries crossed during the run: $(($(grep -c 'unique_count=' "$TMP/verve.log" || true) - 1))" \
    "(each starts an empty window, whose first seconds cost the most)"
  echo "outputs: ${RAW#"$ROOT"/} (+ -percentiles.csv, -histogram.csv, -curve.csv, $OUTPUTS); $CHART"
} | tee -a "$RAW"

exit_if_failed
