#!/usr/bin/env bash
# Does sealing a big window stall requests? verve runs with --interval INTERVAL; one window
# is filled with TARGET (10 million) distinct ids as fast as wrk can send them, pipelined
# (perf/distinct_ids.lua); then the filler stops and, from LEAD seconds before the boundary
# to TAIL seconds after it, two clients run while the collector seals and merges the window:
#
# - the probe (examples/probe.rs): one keep-alive connection, one request every 1 ms, each
#   latency recorded with its time, measured from when the request was due;
# - oha at a moderate constant rate (LOAD_RATE req/s, LOAD_CONNECTIONS connections,
#   --latency-correction, random ids in 0..3 999 999 999), as background load and as a second
#   view (its per-request CSV; its times are placed on the wall clock by oha's start time,
#   within a few ms).
#
#   perf/merge_stall.sh                              # 60 s windows: about 2-3 min
#   INTERVAL=30 TARGET=3000000 perf/merge_stall.sh   # shorter rehearsal
#
# Prints the count line of the filled window (its unique_count, and how long after the
# boundary it was written: the collector starts 200 ms after the boundary, so the rest is
# seal + merge + report), the probe's worst latency in the second after the boundary
# ([B, B+1 s), which holds the seal) against its p99 over the whole probe, the same from oha,
# and draws the probe's latencies around the boundary, with oha's worst request per 50 ms as a
# line, into $SVG (perf/merge_stall.svg).
#
# Environment: INTERVAL (60), TARGET (10000000 distinct ids), FILL (seconds of filling,
# INTERVAL - LEAD - 3), FILL_CONNECTIONS (8), DEPTH (32 requests pipelined per write), LEAD
# (5), TAIL (5), PROBE_PERIOD_US (1000), LOAD_RATE (10000; 0 = no oha), LOAD_CONNECTIONS (16),
# VERVE_ARGS, SVG, CARGO_TARGET_DIR.
# Outputs in perf/out/: merge_stall-<UTC>.txt (everything), -probe.csv (every probe request:
# due_unix_ms,latency_us,service_us,status), -oha.csv.gz (oha's per-request CSV), -oha-50ms.csv
# (oha's worst request per 50 ms, by start time relative to the boundary: the chart's line).
# Exit status 1 if a request failed, verve did not exit 0, or no count line came for the
# filled window. A window that could not be filled to TARGET is reported loudly (raise FILL,
# i.e. INTERVAL, or lower TARGET), not an error.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

INTERVAL=${INTERVAL:-60}
TARGET=${TARGET:-10000000}
LEAD=${LEAD:-5}
TAIL=${TAIL:-5}
FILL=${FILL:-$((INTERVAL - LEAD - 3))}
FILL_CONNECTIONS=${FILL_CONNECTIONS:-8}
DEPTH=${DEPTH:-32}
PROBE_PERIOD_US=${PROBE_PERIOD_US:-1000}
LOAD_RATE=${LOAD_RATE:-10000}
LOAD_CONNECTIONS=${LOAD_CONNECTIONS:-16}
VERVE_ARGS=${VERVE_ARGS:-}
SVG=${SVG:-$ROOT/perf/merge_stall.svg}
for v in INTERVAL TARGET LEAD TAIL FILL FILL_CONNECTIONS DEPTH PROBE_PERIOD_US LOAD_CONNECTIONS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ $LOAD_RATE =~ ^[0-9]+$ ]] || die "LOAD_RATE must be a number, not '$LOAD_RATE'"
((FILL <= INTERVAL - LEAD - 2)) || die "FILL ($FILL) must end 2 s before the probe starts: at most INTERVAL - LEAD - 2 = $((INTERVAL - LEAD - 2))"
((TARGET <= 4294967296)) || die "TARGET is at most 2^32"

need_common
need wrk "apt-get install -y wrk"
need gnuplot "apt-get install -y gnuplot-nox"
need gzip "apt-get install -y gzip"
((LOAD_RATE == 0)) || need oha "cargo install oha --version 1.16.0 --locked   (or LOAD_RATE=0 to run without it)"

mkdir -p "$PERF_OUT"
BASE=$PERF_OUT/merge_stall-$STAMP
RAW=$BASE.txt
PROBE_CSV=$BASE-probe.csv
OHA_CSV=$BASE-oha.csv
OHA_POINTS=$BASE-oha-50ms.csv
TMP=$(mktemp -d -t verve-stall.XXXXXX)
OHA_PID=
cleanup() {
  kill_pids "$OHA_PID" "$VERVE_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build --bin verve --example probe
TARGET_DIR=$(target_dir)
VERVE_BIN=$TARGET_DIR/release/verve
PROBE_BIN=$TARGET_DIR/release/examples/probe
[[ -x $VERVE_BIN && -x $PROBE_BIN ]] || die "binaries not found in $TARGET_DIR after the build"

{
  echo "# perf/merge_stall.sh $STAMP: INTERVAL=$INTERVAL TARGET=$TARGET FILL=${FILL}s" \
    "FILL_CONNECTIONS=$FILL_CONNECTIONS DEPTH=$DEPTH LEAD=$LEAD TAIL=$TAIL PROBE_PERIOD_US=$PROBE_PERIOD_US" \
    "LOAD_RATE=$LOAD_RATE LOAD_CONNECTIONS=$LOAD_CONNECTIONS VERVE_ARGS='$VERVE_ARGS'"
  machine_line
  echo "# other CPU busy in the second before: $(other_busy)"
} | tee "$RAW"

PORT=$(free_port)
URL=http://127.0.0.1:$PORT
LOG=$TMP/verve.log
# shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
start_verve "$VERVE_BIN" "$PORT" "$LOG" --interval "$INTERVAL" $VERVE_ARGS

# The window to fill starts at the next boundary B0; it is sealed after B1 = B0 + INTERVAL.
B0=$(awk -v n="$(now)" -v i="$INTERVAL" 'BEGIN {printf "%d", (int(n / i) + 1) * i}')
B1=$((B0 + INTERVAL))
echo "waiting for the window starting at $(date -u -d "@$B0" +%T) (boundary B1 at $(date -u -d "@$B1" +%T)) ..." | tee -a "$RAW"
sleep_until "$B0.5"

echo "\$ FILL_THREADS=2 wrk -t2 -c$FILL_CONNECTIONS -d${FILL}s -s perf/distinct_ids.lua $URL -- $TARGET $DEPTH" | tee -a "$RAW"
FILL_THREADS=2 wrk -t2 -c"$FILL_CONNECTIONS" -d"${FILL}s" -s "$ROOT/perf/distinct_ids.lua" \
  "$URL" -- "$TARGET" "$DEPTH" >"$TMP/fill.txt"
cat "$TMP/fill.txt" >>"$RAW"
FILL_REQUESTS=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$TMP/fill.txt")
[[ -n $FILL_REQUESTS ]] || die "no RESULT line from the filler"
FILL_RATE=$(awk -v n="$FILL_REQUESTS" -v d="$FILL" 'BEGIN {printf "%.0f", n / d}')
echo "filler: $FILL_REQUESTS requests in ${FILL}s ($FILL_RATE/s), ended $(date -u +%T.%3N)" | tee -a "$RAW"

if grep -q 'Non-2xx\|Socket errors' "$TMP/fill.txt"; then
  fail "the filler saw errors: $(grep 'Non-2xx\|Socket errors' "$TMP/fill.txt" | tr '\n' ' ')"
fi

SPAN=$((LEAD + TAIL))
sleep_until "$((B1 - LEAD))"
if ((LOAD_RATE > 0)); then
  OHA_URL="$URL/api/verve/accept\\?id=[0-3][0-9]{9}"
  OHA_ARGS=(-q "$LOAD_RATE" --latency-correction -z "${SPAN}s" -c "$LOAD_CONNECTIONS" --no-tui
    --rand-regex-url --output-format csv -o "$OHA_CSV")
  echo "\$ oha ${OHA_ARGS[*]} '$OHA_URL' &" | tee -a "$RAW"
  OHA_START=$(now)
  oha "${OHA_ARGS[@]}" "$OHA_URL" 2>"$TMP/oha.err" &
  OHA_PID=$!
  echo "oha launched at unix time $OHA_START (B1 = $B1): its request-start column is relative to about then" >>"$RAW"
fi
PROBE_ARGS=(--addr "127.0.0.1:$PORT" --seconds "$SPAN" --period-us "$PROBE_PERIOD_US"
  --interval "$INTERVAL" --out "$PROBE_CSV")
echo "\$ probe ${PROBE_ARGS[*]}" | tee -a "$RAW"
PROBE_RC=0
"$PROBE_BIN" "${PROBE_ARGS[@]}" >"$TMP/probe.txt" 2>&1 || PROBE_RC=$?
cat "$TMP/probe.txt" >>"$RAW"
((PROBE_RC == 0)) || fail "the probe failed (exit $PROBE_RC): $(grep -v '^RESULT' "$TMP/probe.txt" | tr '\n' ' ')"
if [[ -n $OHA_PID ]]; then
  wait "$OHA_PID" || fail "oha failed: $(tr '\n' ' ' <"$TMP/oha.err")"
  OHA_PID=
fi

# The filled window's count line comes ~200 ms + the merge after B1.
W0=$(date -u -d "@$B0" +%FT%TZ)
wait_log "$LOG" "window_start=$W0 unique_count=" 10 || true
stop_verve
[[ $STOP_RC == 0 ]] || fail "verve exit status $STOP_RC after SIGTERM"

{
  echo
  echo "## verve's log (count lines and warnings)"
  cat "$LOG"
} >>"$RAW"

# --- the collector: count lines with their delay after the window's end
echo | tee -a "$RAW"
echo "collector (count lines; delay = written after the window closed: 200 ms settle + seal + merge + report):" | tee -a "$RAW"
count_lines "$LOG" "$INTERVAL" | while read -r ws uc delay; do
  if ((delay < 0)); then
    printf '  window_start=%s unique_count=%s (partial: written at shutdown)\n' "$ws" "$uc"
  else
    printf '  window_start=%s unique_count=%s written %s ms after its end\n' "$ws" "$uc" "$delay"
  fi
done | tee -a "$RAW"
grep -E ' (WARN|ERROR) ' "$LOG" | sed 's/^/  /' | tee -a "$RAW" || true
read -r _ COUNT DELAY < <(count_lines "$LOG" "$INTERVAL" | awk -v w="$W0" '$1 == w') || true
if [[ -z ${COUNT:-} ]]; then
  fail "no count line for the filled window $W0"
  COUNT=0 DELAY="n/a"
fi
WANT=$((FILL_REQUESTS < TARGET ? FILL_REQUESTS : TARGET))
if ((COUNT * 100 < WANT * 99)); then
  fail "the filled window counted $COUNT distinct ids; the filler sent $WANT distinct ones"
fi
if ((COUNT * 10 < TARGET * 9)); then
  echo "WARNING: the window holds $COUNT ids, short of TARGET=$TARGET: the filler managed $FILL_RATE/s; raise INTERVAL (and FILL) or lower TARGET" | tee -a "$RAW" >&2
fi

# --- the probe
ALL=$(grep '^RESULT scope=all' "$TMP/probe.txt" || true)
AT=$(grep "^RESULT scope=boundary boundary_unix_s=$B1 " "$TMP/probe.txt" || true)
us2ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }
if [[ -n $ALL && -n $AT ]]; then
  P_P50=$(us2ms "$(field p50_us "$ALL")") P_P99=$(us2ms "$(field p99_us "$ALL")")
  P_P999=$(us2ms "$(field p999_us "$ALL")") P_MAX=$(us2ms "$(field max_us "$ALL")")
  B_MAX=$(us2ms "$(field max_us "$AT")") B_AT=$(field max_at_ms_after "$AT")
  R_P99=$(us2ms "$(field rest_p99_us "$AT")") R_MAX=$(us2ms "$(field rest_max_us "$AT")")
else
  fail "no probe results around the boundary"
  P_P50="n/a" P_P99="n/a" P_P999="n/a" P_MAX="n/a" B_MAX="n/a" B_AT="n/a" R_P99="n/a" R_MAX="n/a"
fi

# --- oha: overall p99 and max, and the max of requests due in [B1, B1 + 1 s)
OHA_LINE="no oha run (LOAD_RATE=0)"
if ((LOAD_RATE > 0)) && [[ -s $OHA_CSV ]]; then
  # Requests by the time they started (oha's start + request-start): the worst per 50 ms
  # for the chart, the worst in [B1, B1 + 1 s) and when it started.
  read -r O_N O_BAD O_MAX O_BMAX O_BAT < <(awk -F, -v s="$OHA_START" -v b="$B1" -v pts="$OHA_POINTS" '
        NR > 1 {
            n++; if ($7 != 200) bad++
            l = $5 * 1000; if (l > max) max = l
            t = s + $1 - b
            if (t >= 0 && t < 1 && l > bmax) { bmax = l; bat = t * 1000 }
            k = int((t + 1000) * 20) - 20000; if (!(k in w) || l > w[k]) w[k] = l
        }
        END {
            print "seconds_since_boundary,max_latency_ms" > pts
            for (k = -20000; k <= 20000; k++) if (k in w) printf "%.2f,%.3f\n", k / 20, w[k] > pts
            printf "%d %d %.2f %.2f %.0f\n", n, bad, max, bmax, bat
        }' "$OHA_CSV")
  O_P99=$(awk -F, 'NR > 1 {printf "%.6f\n", $5 * 1000}' "$OHA_CSV" | sort -n |
    awk '{v[NR] = $1} END {r = int(0.99 * NR); if (r < 0.99 * NR) r++; if (r < 1) r = 1; printf "%.2f", v[r]}')
  ((O_BAD == 0)) || fail "oha: $O_BAD answers were not 200"
  OHA_LINE="oha ($O_N requests at $LOAD_RATE/s): p99 $O_P99 ms, max $O_MAX ms; max in [B, B+1 s) $O_BMAX ms (started at +$O_BAT ms; times placed by oha's launch, +-few ms)"
  gzip -f "$OHA_CSV"
fi

OHA_PLOT=
[[ -s $OHA_POINTS ]] && OHA_PLOT="oha='$OHA_POINTS';"
if gnuplot -e "csv='$PROBE_CSV'; $OHA_PLOT boundary=$B1; out='$SVG'; subtitle='$STAMP: window of $COUNT ids sealed at +0.2 s, count line at +$DELAY ms; nproc $(nproc)'" \
  "$ROOT/perf/plot_stall.gnuplot"; then
  CHART="chart: ${SVG#"$ROOT"/}"
else
  fail "gnuplot could not draw $SVG"
  CHART="no chart"
fi

{
  echo
  echo "window $W0: $COUNT distinct ids (TARGET $TARGET; filler $FILL_RATE req/s), count line $DELAY ms after the boundary"
  echo "probe (1 request / ${PROBE_PERIOD_US} us, ${SPAN}s, latency from the due time):"
  echo "  whole probe:  p50 $P_P50 ms   p99 $P_P99 ms   p99.9 $P_P999 ms   max $P_MAX ms"
  echo "  [B, B+1 s):   max $B_MAX ms (request due at +$B_AT ms)"
  echo "  rest:         p99 $R_P99 ms   max $R_MAX ms"
  echo "  boundary max / whole-probe p99: $(awk -v a="$B_MAX" -v b="$P_P99" 'BEGIN {if (b > 0) printf "%.1fx", a / b; else print "?"}')"
  echo "$OHA_LINE"
  echo "outputs: ${RAW#"$ROOT"/}, ${PROBE_CSV#"$ROOT"/}; $CHART"
} | tee -a "$RAW"

exit_if_failed
