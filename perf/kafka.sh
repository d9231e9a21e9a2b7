#!/usr/bin/env bash
# What the Kafka reporter (--kafka-brokers) costs on the request path: one verve instance in
# three modes under the perf/compare.sh load (wrk -t$THREADS -c$CONNECTIONS --latency -s
# perf/random_ids.lua, random ids in 0..2^32):
#
#   plain    no Kafka;
#   idle     no Kafka either, but a tansu broker runs beside it, unused: the control, since
#            the broker shares the machine's two cores with verve and wrk in the next modes;
#   kafka    --kafka-brokers to a healthy broker: a record per window, acknowledged;
#   frozen   --kafka-brokers to a broker that this script stops with SIGSTOP right after
#            verve has delivered its first record (a ` kafka window_start=... offset=` line in
#            its log), and resumes with SIGCONT only after verve has exited: the connection
#            stays open but nothing is answered, so records pile up in verve's backlog.
#
# ROUNDS rounds, the order of the four modes rotated each round (plain idle kafka frozen, then
# idle kafka frozen plain, ...); each run: a fresh verve on a free loopback port with
# --interval INTERVAL, and for idle, kafka and frozen a fresh tansu broker (in memory) on
# another; once verve has written its first count line (plain, idle) or delivered its first
# record (kafka, frozen: then the freeze), WARMUP s of wrk (another seed), then DURATION s
# measured.
# The interval is short on purpose: unlike perf/cluster.sh part a, every run crosses several
# window boundaries, so several records are produced (or pile up) while it is measured. Ratios
# per round and their medians: kafka/plain and frozen/plain (everything Kafka costs, the
# broker's share of the CPU included), idle/plain (the broker's presence alone) and
# kafka/idle (what verve's own Kafka work costs).
#
#   perf/kafka.sh                            # about 7 minutes plus the build
#   ROUNDS=3 DURATION=5 perf/kafka.sh
#
# Environment: ROUNDS (5), DURATION (8), WARMUP (2), THREADS (2), CONNECTIONS (64), SEED (1),
# INTERVAL (2), START_TIMEOUT (20: seconds to wait for the first count line or record),
# CARGO_TARGET_DIR. tansu (0.6) is taken from PATH or ~/.cargo/bin.
# Output: markdown table on stdout; everything, raw wrk output, /metrics, verve's logs and the
# brokers' output included, in perf/out/kafka-<UTC time>.txt.
#
# Checks (exit 1 after the table): every answer 2xx and no socket errors, each verve exits 0
# on SIGTERM, each log has exactly one count line per window, a count above 0 and at most the
# requests sent; kafka: every count line's window has a delivered record (` kafka
# window_start=<the same> topic=... offset=`) and no `lost=` line; frozen: the broker was
# stopped, count lines kept coming while it was (at least DURATION/INTERVAL - 1 of them
# between the freeze and SIGTERM) and verve_backlog_windows read from /metrics before SIGTERM
# is above 0.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
export SEED=${SEED:-1}
INTERVAL=${INTERVAL:-2}
START_TIMEOUT=${START_TIMEOUT:-20}
for v in ROUNDS DURATION WARMUP THREADS CONNECTIONS SEED INTERVAL START_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
MIN_FROZEN_LINES=$((DURATION / INTERVAL - 1))
((MIN_FROZEN_LINES >= 1)) || die "DURATION must be at least twice INTERVAL (windows must close during a run)"

[[ -d $HOME/.cargo/bin ]] && PATH=$PATH:$HOME/.cargo/bin
need_common
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need tansu "cargo install tansu --version 0.6.0 --locked"
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/kafka-$STAMP.txt
LUA=$ROOT/perf/random_ids.lua
TMP=$(mktemp -d -t verve-perf-kafka.XXXXXX)
SERVER_PID=
BROKER_PID=

cleanup() {
  # A frozen broker takes SIGTERM only once it runs again.
  [[ -z $BROKER_PID ]] || kill -CONT "$BROKER_PID" 2>/dev/null || true
  kill_pids "$SERVER_PID" "$BROKER_PID"
  [[ -z $SERVER_PID ]] || wait "$SERVER_PID" 2>/dev/null || true
  [[ -z $BROKER_PID ]] || wait "$BROKER_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# range of the numbers on stdin: "min-max".
range() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'; }
# lines FILE: its number of lines (0 when missing).
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# check_delivered NAME LOG: every count line's window has a delivered record, none is lost.
check_delivered() {
  local name=$1 logf=$2 ws missing=()
  while read -r ws; do
    grep -q " kafka window_start=$ws topic=.* offset=" "$logf" || missing+=("$ws")
  done < <(sed -n 's/.* window_start=\([^ ]*\) unique_count=.*/\1/p' "$logf")
  ((${#missing[@]} == 0)) || fail "$name: no delivered record for window(s) ${missing[*]}"
  if grep -q 'lost=' "$logf"; then fail "$name: $(grep -c 'lost=' "$logf") record(s) lost: $(grep -m1 'lost=' "$logf")"; fi
}

cd "$ROOT"
{
  echo "# perf/kafka.sh $STAMP: ROUNDS=$ROUNDS DURATION=${DURATION}s WARMUP=${WARMUP}s" \
    "THREADS=$THREADS CONNECTIONS=$CONNECTIONS SEED=$SEED INTERVAL=$INTERVAL START_TIMEOUT=$START_TIMEOUT"
  machine_line
  echo "# $(tansu --version 2>&1 | head -1) ($(command -v tansu))"
} | tee "$RAW"

build --bin verve
VERVE_BIN=$(target_dir)/release/verve
[[ -x $VERVE_BIN ]] || die "verve not found in $(target_dir)/release"

# start_broker NAME: a fresh tansu on a free loopback port, in memory; sets BROKER_PID and
# BROKER_ADDR.
start_broker() {
  local port
  port=$(free_port)
  BROKER_ADDR=127.0.0.1:$port
  tansu broker --listener-url "tcp://$BROKER_ADDR" --advertised-listener-url "tcp://$BROKER_ADDR" \
    --storage-engine memory://tansu/ >"$TMP/$1.broker.out" 2>&1 &
  BROKER_PID=$!
  wait_port "$port" "$BROKER_PID" || {
    cat "$TMP/$1.broker.out" >&2
    die "tansu did not start on $BROKER_ADDR"
  }
}

# run_one MODE ROUND: start (broker and) verve, wait for its first count line or record
# (frozen: then freeze the broker), warm up, measure, read /metrics, stop, thaw, check. Sets
# RPS, P99, BUSY, LOAD, COUNT_LINES, and for frozen FROZEN_LINES and BACKLOG.
run_one() {
  local mode=$1 round=$2 name="round $2 $1" port url logf flags warm_req req busy load \
    wrk_out metrics frozen_at=0 term_at verve_rc broker_state=- broker_rc=-
  busy=$(other_busy)
  load=$(load1)
  flags=(--interval "$INTERVAL")
  if [[ $mode != plain ]]; then
    start_broker "$mode-r$round"
    [[ $mode == idle ]] || flags+=(--kafka-brokers "$BROKER_ADDR")
  fi
  port=$(free_port)
  url=http://127.0.0.1:$port
  logf=$TMP/$mode-r$round.log
  start_verve "$VERVE_BIN" "$port" "$logf" "${flags[@]}"
  # shellcheck disable=SC2153 # set by lib.sh's start_verve
  SERVER_PID=$VERVE_PID
  if [[ $mode == plain || $mode == idle ]]; then
    wait_log "$logf" 'unique_count=' "$START_TIMEOUT" "$SERVER_PID" || fail "$name: no count line within ${START_TIMEOUT}s of the start"
  elif ! wait_log "$logf" ' kafka window_start=.* offset=' "$START_TIMEOUT" "$SERVER_PID"; then
    fail "$name: no record delivered within ${START_TIMEOUT}s of the start"
  elif [[ $mode == frozen ]]; then
    kill -STOP "$BROKER_PID"
    frozen_at=$(lines "$logf")
    broker_state=$(ps -o stat= -p "$BROKER_PID" 2>/dev/null || echo gone)
    [[ $broker_state == T* ]] || fail "$name: the broker is not stopped after SIGSTOP (state '$broker_state')"
  fi
  SEED=$((SEED + 1000)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$LUA" "$url" \
    >"$TMP/warmup.txt"
  warm_req=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$TMP/warmup.txt")
  wrk_out=$TMP/wrk-$mode-$round.txt
  {
    echo "=== round $round: $mode on $url, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)," \
      "other CPU busy in the second before: $busy"
    [[ $mode == plain ]] || echo "\$ tansu broker --listener-url tcp://$BROKER_ADDR --advertised-listener-url tcp://$BROKER_ADDR --storage-engine memory://tansu/"
    [[ $mode != frozen ]] || echo "# broker (pid $BROKER_PID) stopped with SIGSTOP after log line $frozen_at, state '$broker_state'"
    echo "\$ $VERVE_BIN --listen 127.0.0.1:$port --log-file $logf ${flags[*]}"
    echo "\$ wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s perf/random_ids.lua $url"
  } >>"$RAW"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$url" >"$wrk_out"
  metrics=$TMP/$mode-r$round.metrics
  curl -fsS "$url/metrics" >"$metrics" || : >"$metrics"
  term_at=$(lines "$logf")
  stop_pid "$SERVER_PID"
  SERVER_PID=
  verve_rc=$STOP_RC
  if [[ -n $BROKER_PID ]]; then
    kill -CONT "$BROKER_PID" 2>/dev/null || true
    stop_pid "$BROKER_PID"
    BROKER_PID=
    broker_rc=$STOP_RC
  fi
  cat "$wrk_out" >>"$RAW"
  {
    echo "--- metrics before SIGTERM"
    grep -E '^verve_(kafka|backlog|window_unique|requests)' "$metrics" || true
    echo "--- verve log (exit status $verve_rc; SIGTERM after line $term_at)"
    cat "$logf"
    if [[ $mode != plain ]]; then
      echo "--- broker output (exit status after SIGCONT + SIGTERM: $broker_rc), last 20 lines"
      tail -n 20 "$TMP/$mode-r$round.broker.out"
    fi
  } >>"$RAW"
  RPS=$(awk '/^Requests\/sec:/ {print $2}' "$wrk_out")
  P99=$(awk '$1 == "99%" {print $2}' "$wrk_out")
  req=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$wrk_out")
  [[ -n $RPS && -n $req && -n $warm_req ]] || die "no figures in wrk's output ($wrk_out)"
  check_wrk "$name" "$wrk_out"
  [[ $verve_rc == 0 ]] || fail "$name: verve exit status $verve_rc after SIGTERM"
  if [[ $mode == frozen ]]; then
    # The backlog given up at exit, the broker being frozen: expected.
    check_log "$name" "$logf" $((warm_req + req)) 'kafka ([0-9]+ records? not delivered at exit|window_start=[^ ]* lost=not-delivered-at-exit)$'
  else
    check_log "$name" "$logf" $((warm_req + req))
  fi
  BUSY=$busy LOAD=$load
  case $mode in
    kafka)
      check_delivered "$name" "$logf"
      ;;
    frozen)
      FROZEN_LINES=$(awk -v a="$frozen_at" -v b="$term_at" 'NR > a && NR <= b && /unique_count=/' "$logf" | wc -l)
      BACKLOG=$(metric "$metrics" verve_backlog_windows)
      if ((frozen_at > 0)); then
        ((FROZEN_LINES >= MIN_FROZEN_LINES)) ||
          fail "$name: $FROZEN_LINES count lines between the freeze and SIGTERM, fewer than $MIN_FROZEN_LINES"
        if ! [[ ${BACKLOG:-x} =~ ^[0-9]+$ ]] || ((BACKLOG == 0)); then
          fail "$name: verve_backlog_windows ${BACKLOG:-missing} before SIGTERM, not above 0"
        fi
      fi
      ;;
  esac
}

MODES=(plain idle kafka frozen)
ROWS=()
KP=()
FP=()
IP=()
KI=()
for round in $(seq 1 "$ROUNDS"); do
  first=$(((round - 1) % ${#MODES[@]}))
  order=("${MODES[@]:first}" "${MODES[@]:0:first}")
  declare -A rps=() p99=() busy=() load=() cl=()
  FROZEN_LINES=- BACKLOG=-
  for mode in "${order[@]}"; do
    echo "round $round: $mode ..." >&2
    run_one "$mode" "$round"
    rps[$mode]=$RPS p99[$mode]=$P99 busy[$mode]=$BUSY load[$mode]=$LOAD cl[$mode]=$COUNT_LINES
  done
  kp=$(ratio "${rps[kafka]}" "${rps[plain]}")
  fp=$(ratio "${rps[frozen]}" "${rps[plain]}")
  ip=$(ratio "${rps[idle]}" "${rps[plain]}")
  ki=$(ratio "${rps[kafka]}" "${rps[idle]}")
  KP+=("$kp")
  FP+=("$fp")
  IP+=("$ip")
  KI+=("$ki")
  ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s | **%s** | **%s** | %s | **%s** | %s / %s / %s / %s | %s / %s / %s / %s | %s / %s | %s / %s / %s / %s | %s / %s / %s / %s |' \
    "$round" "${order[*]}" "${rps[plain]}" "${rps[idle]}" "${rps[kafka]}" "${rps[frozen]}" "$kp" "$fp" "$ip" "$ki" \
    "${p99[plain]}" "${p99[idle]}" "${p99[kafka]}" "${p99[frozen]}" \
    "${cl[plain]}" "${cl[idle]}" "${cl[kafka]}" "${cl[frozen]}" \
    "$FROZEN_LINES" "$BACKLOG" "${load[plain]}" "${load[idle]}" "${load[kafka]}" "${load[frozen]}" \
    "${busy[plain]}" "${busy[idle]}" "${busy[kafka]}" "${busy[frozen]}")")
  echo "round $round: plain ${rps[plain]}, idle ${rps[idle]}, kafka ${rps[kafka]}, frozen ${rps[frozen]} req/s;" \
    "kafka/plain $kp, frozen/plain $fp, idle/plain $ip, kafka/idle $ki" >&2
done
# summary RATIOS...: "median (range min-max)"
summary() { echo "**$(printf '%s\n' "$@" | median)** (range $(printf '%s\n' "$@" | range))"; }
{
  echo
  echo "### Throughput with Kafka, one instance, wrk -t$THREADS -c$CONNECTIONS, ${DURATION} s runs, --interval $INTERVAL"
  echo
  echo "| round | order | plain req/s | idle req/s | kafka req/s | frozen req/s | kafka/plain | frozen/plain | idle/plain | kafka/idle | p99 (p / i / k / f) | count lines (p / i / k / f) | frozen: count lines while frozen / backlog | load1 at start (p / i / k / f) | other CPU busy before (p / i / k / f) |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | :---: | :---: | :---: | :---: |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "over $ROUNDS rounds: median kafka/plain $(summary "${KP[@]}"), frozen/plain $(summary "${FP[@]}")," \
    "idle/plain $(summary "${IP[@]}"), kafka/idle $(summary "${KI[@]}") (load now $(cut -d' ' -f1-3 /proc/loadavg))"
} | tee -a "$RAW"

echo
echo "raw output: ${RAW#"$ROOT"/}" | tee -a "$RAW"
exit_if_failed
