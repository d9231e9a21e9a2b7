# Shared helpers of the scripts under perf/ and scripts/ (sourced, not run): each script
# starts with
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"   # from perf/
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"              # from scripts/
#
# and uses these helpers rather than its own. Sets ROOT (the repository), PERF_OUT
# (perf/out, git-ignored), STAMP (the UTC start time, for output file names) and SCRIPT_NAME
# (for messages).
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
PERF_OUT=$ROOT/perf/out
# shellcheck disable=SC2034
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
SCRIPT_NAME=$(basename "$0")

# --- messages and tools ---------------------------------------------------------------------

# die MESSAGE: to stderr, exit 2 (a usage error or a missing tool).
die() {
  echo "$SCRIPT_NAME: $*" >&2
  exit 2
}

# need TOOL "how to install it": exits 2 with the hint when TOOL is not on PATH.
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found; install it with: $2"
}

need_common() {
  need cargo "rustup (https://rustup.rs), stable toolchain"
  need awk "apt-get install -y gawk"
  need git "apt-get install -y git"
}

# --- the machine and the build --------------------------------------------------------------

# One line describing the machine and the code, for every raw output file.
machine_line() {
  echo "# $(uname -srm); nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //');" \
    "load $(cut -d' ' -f1-3 /proc/loadavg); git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git -C "$ROOT" diff --quiet -- src Cargo.toml 2>/dev/null || echo '(src or Cargo.toml modified)')"
}

# Percent of all CPUs busy over one second (call while nothing of ours runs: what other jobs
# on the machine take).
other_busy() {
  local a b
  read -ra a </proc/stat
  sleep 1
  read -ra b </proc/stat
  awk -v u="$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8]))" \
    -v i="$((b[4] + b[5] - a[4] - a[5]))" 'BEGIN {printf "%d%%", (u + i) ? 100 * u / (u + i) : 0}'
}

# The load average over the last minute.
load1() { cut -d' ' -f1 /proc/loadavg; }

# The cargo target directory (CARGO_TARGET_DIR or cargo's own answer).
target_dir() {
  if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    echo "$CARGO_TARGET_DIR"
  else
    (cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  fi
}

# build ARGS...: cargo build --release --quiet ARGS (from the repository root). The caller's
# CARGO_TARGET_DIR, RUSTFLAGS and CARGO_PROFILE_* reach cargo as usual.
build() {
  echo "building (cargo build --release $*) ..." >&2
  (cd "$ROOT" && cargo build --release --quiet "$@") || die "cargo build failed"
}

# --- time -----------------------------------------------------------------------------------

# The Unix time now, with nanoseconds.
now() { date +%s.%N; }

# sleep_until UNIX_SECONDS (fractions allowed): returns at once if that time has passed.
sleep_until() {
  local d
  d=$(awk -v t="$1" -v n="$(now)" 'BEGIN {d = t - n; printf "%.3f", (d > 0 ? d : 0)}')
  sleep "$d"
}

# --- processes ------------------------------------------------------------------------------

# A loopback port nobody listens on, below Linux's ephemeral range.
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# wait_port PORT PID: until PID accepts connections on PORT; fails if it died or after 10 s.
wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# wait_healthy PORT: until the server on PORT answers GET /healthz with 200; fails after
# about 5 s. The port accepts connections as soon as it is bound, before may has started its
# worker threads.
wait_healthy() {
  local port=$1 line
  for _ in $(seq 1 100); do
    if exec 3<>"/dev/tcp/127.0.0.1/$port"; then
      printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
      line=
      read -r -t 2 line <&3 || true
      exec 3<&-
      [[ $line == *" 200 "* ]] && return 0
    fi 2>/dev/null
    sleep 0.05
  done
  return 1
}

# wait_log FILE REGEX SECONDS [PID]: until a line of FILE matches REGEX (grep -E); fails
# after SECONDS, or as soon as PID (when given) has died.
wait_log() {
  local file=$1 regex=$2 secs=$3 pid=${4:-}
  for _ in $(seq 1 $((secs * 10))); do
    grep -Eq -- "$regex" "$file" 2>/dev/null && return 0
    [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# stop_pid PID [SIGNAL [SECONDS]]: sends SIGNAL (TERM), waits up to SECONDS (10), then
# SIGKILL; sets STOP_RC (the exit status, or "timeout"). PID must be a child of this shell
# (for its exit status); an empty PID does nothing.
STOP_RC=
stop_pid() {
  local pid=$1 sig=${2:-TERM} secs=${3:-10} rc=0
  STOP_RC=0
  [[ -n $pid ]] || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    STOP_RC=timeout
  fi
  wait "$pid" 2>/dev/null || rc=$?
  [[ $STOP_RC == timeout ]] || STOP_RC=$rc
}

# kill_pids PID...: SIGTERM to those still running (for an EXIT trap; empty PIDs skipped).
kill_pids() {
  local pid
  for pid in "$@"; do
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  done
  return 0
}

# start_verve BIN PORT LOG [FLAGS...]: starts verve on 127.0.0.1:PORT in the background, its
# stdout and stderr in LOG.out; sets VERVE_PID. Exits 1 if it does not come up.
VERVE_PID=
start_verve() {
  local bin=$1 port=$2 logf=$3
  shift 3
  "$bin" --listen "127.0.0.1:$port" --log-file "$logf" "$@" >"$logf.out" 2>&1 &
  VERVE_PID=$!
  if ! wait_port "$port" "$VERVE_PID"; then
    echo "$SCRIPT_NAME: verve did not start on port $port:" >&2
    cat "$logf.out" >&2
    exit 1
  fi
}

# stop_verve: stop_pid on the verve that start_verve started.
stop_verve() {
  stop_pid "$VERVE_PID"
  VERVE_PID=
}

# start_redis [--setsid] DIR: a redis-server on a free loopback port without persistence, its
# directory, log and output in DIR; with --setsid in a session of its own (a Ctrl-C in the
# terminal does not reach it). Sets REDIS_PID, REDIS_PORT and REDIS_URL; exits 2 if it does not
# come up.
REDIS_PID=
start_redis() {
  local launch=()
  if [[ $1 == --setsid ]]; then
    launch=(setsid)
    shift
  fi
  local dir=$1
  REDIS_PORT=$(free_port)
  "${launch[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize no >"$dir/redis.out" 2>&1 &
  REDIS_PID=$!
  if ! wait_port "$REDIS_PORT" "$REDIS_PID"; then
    cat "$dir/redis.out" "$dir/redis.log" >&2 2>/dev/null || true
    die "redis-server did not start on port $REDIS_PORT"
  fi
  # shellcheck disable=SC2034 # used by the scripts that source this file
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
}

# --- numbers and outputs --------------------------------------------------------------------

# median of the numbers on stdin, with 3 decimals.
median() {
  sort -g | awk '{r[NR] = $1} END {if (NR % 2) printf "%.3f", r[(NR + 1) / 2];
    else printf "%.3f", (r[NR / 2] + r[NR / 2 + 1]) / 2}'
}

# ratio A B [DECIMALS]: A / B with DECIMALS (3) decimals; nothing if either is missing or B
# is 0.
ratio() {
  awk -v a="$1" -v b="$2" -v d="${3:-3}" \
    'BEGIN {if (a != "" && b != "" && b + 0 != 0) printf "%." d "f", a / b}'
}

# field KEY TEXT: the value of the first KEY=value in TEXT (a RESULT or SUMMARY line).
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2" | head -1; }

# metric FILE NAME: the value of an unlabelled metric in a saved /metrics page.
metric() { awk -v m="$2" '$1 == m {print $2}' "$1"; }

# Count lines of a verve log: "window_start unique_count delay_ms" per line, where delay_ms is
# how long after its window closed the line was written (the log time minus window_start
# minus the interval $2 seconds).
count_lines() {
  local logf=$1 interval=$2
  [[ -f $logf ]] || return 0
  grep 'unique_count=' "$logf" | while read -r ts _ _ ws uc _; do
    local t w
    t=$(date -u -d "$ts" +%s.%N 2>/dev/null) || continue
    w=$(date -u -d "${ws#window_start=}" +%s 2>/dev/null) || continue
    awk -v t="$t" -v w="$w" -v i="$interval" -v ws="${ws#window_start=}" -v uc="${uc#unique_count=}" \
      'BEGIN {printf "%s %s %.0f\n", ws, uc, (t - w - i) * 1000}'
  done
}

# --- checks ---------------------------------------------------------------------------------
# The scripts' raw output file is $RAW, set before `log` or `fail` is used. Failed checks
# are collected by `fail` and reported by `exit_if_failed` at the script's end (exit 1).

# log TEXT: to stdout and to $RAW.
log() { echo "$*" | tee -a "$RAW"; }

FAILURES=()
# fail TEXT: a failed check, to stderr and $RAW; the script goes on.
fail() {
  FAILURES+=("$*")
  echo "CHECK FAILED: $*" | tee -a "$RAW" >&2
}

# exit_if_failed: lists the failed checks and exits 1 if there were any.
exit_if_failed() {
  if ((${#FAILURES[@]})); then
    echo "${#FAILURES[@]} check(s) failed:" >&2
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
  fi
}

# check_wrk NAME FILE: wrk's output FILE has no non-2xx answer and no socket error.
check_wrk() {
  if grep -q "Non-2xx" "$2"; then fail "$1: non-2xx answers: $(grep 'Non-2xx' "$2")"; fi
  if grep -q "Socket errors" "$2"; then fail "$1: wrk saw socket errors: $(grep 'Socket errors' "$2")"; fi
}

# check_log NAME LOG REQUESTS [EXPECTED]: verve's count log LOG has exactly one count line per
# window, none with scope=local, a total above 0 and at most REQUESTS (plus what wrk leaves
# in flight: two per connection, warm-up and measurement); shows its warnings and errors,
# except those matching the regex EXPECTED. Sets COUNT_LINES.
COUNT_LINES=
check_log() {
  local name=$1 logf=$2 sent=$3 expected=${4:-^$} n windows sum warnings
  n=$(grep -c 'unique_count=' "$logf" || true)
  windows=$(grep -o 'window_start=[^ ]*' "$logf" | sort -u | wc -l)
  sum=$(sed -n 's/.*unique_count=\([0-9]*\).*/\1/p' "$logf" | awk '{s += $1} END {print s + 0}')
  # shellcheck disable=SC2034 # read by the scripts
  COUNT_LINES=$n
  ((n >= 1)) || fail "$name: no unique_count= line in its log"
  ((n == windows)) || fail "$name: $n count lines for $windows windows"
  if grep -q 'scope=local' "$logf"; then fail "$name: a scope=local count line"; fi
  ((sum >= 1)) || fail "$name: counted 0 distinct ids"
  ((sum <= sent + 2 * ${CONNECTIONS:-0})) || fail "$name: counted $sum distinct ids, more than the $sent requests sent"
  warnings=$(grep -E ' (WARN|ERROR) ' "$logf" | grep -Ev -- "$expected" || true)
  if [[ -n $warnings ]]; then
    log "$name: $(wc -l <<<"$warnings") warning or error line(s) in its log, the first:"
    head -3 <<<"$warnings" | tee -a "$RAW"
  fi
}
