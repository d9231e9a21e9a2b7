#!/usr/bin/env bash
# Latency at a constant request rate, corrected for coordinated omission, with oha.
#
#   perf/latency.sh                          # max rate from a 5 s wrk run, then 30 s at half of it
#   MAX_RATE=120000 DURATION=60 perf/latency.sh
#   RATE=20000 perf/latency.sh               # a fixed rate instead of max/2
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
# Prints p50/p90/p99/p99.9/max and whether p99 <= TARGET_P99_MS; writes to perf/out/:
#   latency-<UTC>.txt              the summary, the full percentile table, the log-bucket histogram
#   latency-<UTC>-percentiles.csv  percentile,latency_ms (nearest rank; 0 = min, 100 = max)
#   latency-<UTC>-histogram.csv    bucket_upper_ms,count,cumulative_percent (10 buckets/decade)
#   latency-<UTC>-curve.csv        the percentile curve that is plotted
#   latency-<UTC>-oha.csv.gz       oha's per-request CSV
# and the chart to $SVG (perf/latency.svg): latency (log) against percentile on the "nines"
# scale (1/(1-p), log).
#
# Environment: DURATION (30 s), CONNECTIONS (64), MAX_RATE (measured when unset),
# MAX_DURATION (5 s), RATE (MAX_RATE/2), TARGET_P99_MS (1), VERVE_ARGS (extra verve flags),
# SVG, CARGO_TARGET_DIR.
# Exit status 1 if verve answered anything but 200, oha sent less than 95% of the requests it
# was asked for (it could not keep up, or requests failed), or verve did not exit 0 on
# SIGTERM. A p99 over the target is reported, not an error.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-64}
MAX_RATE=${MAX_RATE:-}
MAX_DURATION=${MAX_DURATION:-5}
RATE=${RATE:-}
TARGET_P99_MS=${TARGET_P99_MS:-1}
VERVE_ARGS=${VERVE_ARGS:-}
SVG=${SVG:-$ROOT/perf/latency.svg}
for v in DURATION CONNECTIONS MAX_DURATION; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
for v in MAX_RATE RATE; do
  [[ -z ${!v} || ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

need_common
need oha "cargo install oha --version 1.16.0 --locked   (builds with rustc 1.95 and gcc; takes ~10 min)"
need gnuplot "apt-get install -y gnuplot-nox"
need gzip "apt-get install -y gzip"
[[ -n $MAX_RATE || -n $RATE ]] || need wrk "apt-get install -y wrk"

mkdir -p "$PERF_OUT"
BASE=$PERF_OUT/latency-$STAMP
RAW=$BASE.txt
OHA_CSV=$BASE-oha.csv
TMP=$(mktemp -d -t verve-latency.XXXXXX)
cleanup() {
  kill_pids "$VERVE_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build --bin verve --example baseline
VERVE_BIN=$(target_dir)/release/verve
BASELINE_BIN=$(target_dir)/release/examples/baseline
[[ -x $VERVE_BIN ]] || die "$VERVE_BIN not found after the build"

{
  echo "# perf/latency.sh $STAMP: DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS MAX_RATE=${MAX_RATE:-measure}" \
    "RATE=${RATE:-max/2} VERVE_ARGS='$VERVE_ARGS'; $(oha --version)"
  machine_line
  echo "# other CPU busy in the second before: $(other_busy)"
} | tee "$RAW"

PORT=$(free_port)
URL=http://127.0.0.1:$PORT
# shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
start_verve "$VERVE_BIN" "$PORT" "$TMP/verve.log" $VERVE_ARGS

if [[ -z $RATE && -z $MAX_RATE ]]; then
  echo "\$ wrk -t2 -c64 -d${MAX_DURATION}s -s perf/random_ids.lua $URL" | tee -a "$RAW"
  SEED=7 wrk -t2 -c64 -d"${MAX_DURATION}s" -s "$ROOT/perf/random_ids.lua" "$URL" >"$TMP/wrk.txt"
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
fi
RATE=${RATE:-$((MAX_RATE / 2))}

OHA_URL="$URL/api/verve/accept\\?id=[0-3][0-9]{9}"
OHA_ARGS=(-q "$RATE" --latency-correction -z "${DURATION}s" -c "$CONNECTIONS" --no-tui
  --rand-regex-url --output-format csv -o "$OHA_CSV")
echo "\$ oha ${OHA_ARGS[*]} '$OHA_URL'" | tee -a "$RAW"
oha "${OHA_ARGS[@]}" "$OHA_URL" 2>"$TMP/oha.err" || {
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

# The same load against the bare may_minihttp server (examples/baseline.rs): on a machine
# where oha shares the cores with the server, this says how much of the tail is the load
# generator's and the machine's rather than verve's. BASELINE=0 skips it.
BASELINE_SUMMARY="not measured (BASELINE=0)"
if [[ ${BASELINE:-1} == 1 ]]; then
  BPORT=$(free_port)
  "$BASELINE_BIN" "127.0.0.1:$BPORT" >"$TMP/baseline.out" 2>&1 &
  BASELINE_PID=$!
  wait_port "$BPORT" "$BASELINE_PID" || die "the baseline did not start"
  B_URL="http://127.0.0.1:$BPORT/api/verve/accept\\?id=[0-3][0-9]{9}"
  echo "\$ oha -q $RATE --latency-correction -z ${DURATION}s -c $CONNECTIONS --no-tui --rand-regex-url '$B_URL'   # baseline" | tee -a "$RAW"
  oha -q "$RATE" --latency-correction -z "${DURATION}s" -c "$CONNECTIONS" --no-tui \
    --rand-regex-url "$B_URL" >"$TMP/baseline-oha.txt" 2>&1 || die "oha failed against the baseline"
  kill_pids "$BASELINE_PID"
  cat "$TMP/baseline-oha.txt" >>"$RAW"
  pct() { awk -v p="$1" '$1 == p {print $3, $4}' "$TMP/baseline-oha.txt"; }
  BASELINE_SUMMARY="p50 $(pct 50.00%)   p90 $(pct 90.00%)   p99 $(pct 99.00%)   p99.9 $(pct 99.90%)"
fi

# oha's CSV: request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status
[[ -s $OHA_CSV ]] || die "oha wrote no CSV"
read -r N BAD < <(awk -F, 'NR > 1 {n++; if ($7 != 200) bad++} END {print n + 0, bad + 0}' "$OHA_CSV")
EXPECTED=$((RATE * DURATION))
ACHIEVED=$(awk -v n="$N" -v d="$DURATION" 'BEGIN {printf "%.0f", n / d}')
echo "requests: $N answered (asked for $RATE/s x ${DURATION}s = $EXPECTED), $ACHIEVED/s achieved, $BAD not 200" | tee -a "$RAW"
((BAD == 0)) || fail "$BAD answers were not 200"
((N * 100 >= EXPECTED * 95)) || fail "only $N of $EXPECTED requests answered: oha could not keep up or requests failed"
[[ $STOP_RC == 0 ]] || fail "verve exit status $STOP_RC after SIGTERM"

awk -F, 'NR > 1 {printf "%.6f\n", $5 * 1000}' "$OHA_CSV" | sort -n >"$TMP/sorted_ms"

# Percentiles (nearest rank), the curve and the histogram, from the sorted latencies.
awk -v pct="$BASE-percentiles.csv" -v curve="$BASE-curve.csv" -v hist="$BASE-histogram.csv" '
    { v[NR] = $1 }
    function at(p,   r) { r = int(p / 100 * NR); if (r < p / 100 * NR) r++; if (r < 1) r = 1; if (r > NR) r = NR; return v[r] }
    END {
        n = split("0 10 25 50 75 90 95 99 99.5 99.9 99.95 99.99 99.999 100", ps, " ")
        print "percentile,latency_ms" > pct
        for (i = 1; i <= n; i++) printf "%s,%.3f\n", ps[i], at(ps[i]) > pct
        # Curve: 40 points per decade of 1/(1-p), up to where a point is still one request.
        print "percentile,latency_ms" > curve
        for (k = 0; ; k++) {
            x = 10 ^ (k / 40)
            if (x > NR) break
            p = 100 * (1 - 1 / x)
            printf "%.6f,%.3f\n", p, at(p) > curve
        }
        # Histogram: 10 log buckets per decade, from 10 us.
        print "bucket_upper_ms,count,cumulative_percent" > hist
        j = 0; c = 0; total = 0
        for (i = 1; i <= NR; i++) {
            while (v[i] > 0.01 * 10 ^ (j / 10)) {
                if (c) { total += c; printf "%.4g,%d,%.4f\n", 0.01 * 10 ^ (j / 10), c, 100 * total / NR > hist }
                c = 0; j++
            }
            c++
        }
        total += c
        printf "%.4g,%d,%.4f\n", 0.01 * 10 ^ (j / 10), c, 100 * total / NR > hist
    }' "$TMP/sorted_ms"

p() { awk -F, -v p="$1" '$1 == p {print $2}' "$BASE-percentiles.csv"; }
P50=$(p 50) P90=$(p 90) P99=$(p 99) P999=$(p 99.9) MAX=$(p 100)
VERDICT=$(awk -v x="$P99" -v t="$TARGET_P99_MS" 'BEGIN {print (x <= t) ? "yes" : "NO"}')

{
  echo
  echo "## percentiles (ms), $N requests at $RATE/s, $CONNECTIONS connections, latency-corrected"
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

if gnuplot -e "csv='$BASE-curve.csv'; out='$SVG'; target_ms=$TARGET_P99_MS; subtitle='$STAMP, $RATE req/s for ${DURATION}s, $CONNECTIONS connections, p99 $P99 ms, max $MAX ms, nproc $(nproc)'" \
  "$ROOT/perf/plot_latency.gnuplot"; then
  CHART="chart: ${SVG#"$ROOT"/}"
else
  fail "gnuplot could not draw $SVG"
  CHART="no chart"
fi
gzip -f "$OHA_CSV"

{
  echo
  echo "rate $RATE req/s (max ${MAX_RATE:-not measured}), ${DURATION}s, $CONNECTIONS connections, $N requests:"
  echo "  p50 $P50 ms   p90 $P90 ms   p99 $P99 ms   p99.9 $P999 ms   max $MAX ms"
  echo "  p99 <= $TARGET_P99_MS ms: $VERDICT"
  echo "  bare baseline, same load: $BASELINE_SUMMARY"
  echo "  window boundaries crossed during the run: $(($(grep -c 'unique_count=' "$TMP/verve.log" || true) - 1))" \
    "(each starts an empty window, whose first seconds cost the most)"
  echo "outputs: ${RAW#"$ROOT"/} (+ -percentiles.csv, -histogram.csv, -curve.csv, -oha.csv.gz); $CHART"
} | tee -a "$RAW"

exit_if_failed
