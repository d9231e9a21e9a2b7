# Shared helpers for the perf/ scripts and scripts/flamegraph.sh (sourced, not run).
# shellcheck shell=bash

PERF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
PERF_OUT=$PERF_ROOT/perf/out
# shellcheck disable=SC2034
PERF_STAMP=$(date -u +%Y%m%dT%H%M%SZ)
PERF_NAME=$(basename "$0")

die() {
    echo "$PERF_NAME: $*" >&2
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

# One line describing the machine and the code, for every raw output file.
machine_line() {
    echo "# $(uname -srm); nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //');" \
        "load $(cut -d' ' -f1-3 /proc/loadavg); git $(git -C "$PERF_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "$(git -C "$PERF_ROOT" diff --quiet -- src Cargo.toml 2>/dev/null || echo '(src or Cargo.toml modified)')"
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

# The cargo target directory (CARGO_TARGET_DIR or cargo's own answer).
target_dir() {
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        echo "$CARGO_TARGET_DIR"
    else
        (cd "$PERF_ROOT" && cargo metadata --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    fi
}

# build ARGS...: cargo build --release --quiet ARGS (from the repository root).
build() {
    echo "building (cargo build --release $*) ..." >&2
    (cd "$PERF_ROOT" && cargo build --release --quiet "$@") || die "cargo build failed"
}

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

# start_verve BIN PORT LOG [FLAGS...]: starts verve on 127.0.0.1:PORT in the background, its
# stdout and stderr in LOG.out; sets VERVE_PID. Exits 1 if it does not come up.
VERVE_PID=
start_verve() {
    local bin=$1 port=$2 logf=$3
    shift 3
    "$bin" --listen "127.0.0.1:$port" --log-file "$logf" "$@" >"$logf.out" 2>&1 &
    VERVE_PID=$!
    if ! wait_port "$port" "$VERVE_PID"; then
        echo "$PERF_NAME: verve did not start on port $port:" >&2
        cat "$logf.out" >&2
        exit 1
    fi
}

# stop_pid PID: SIGTERM, wait up to 10 s (then SIGKILL); sets STOP_RC (exit status or
# "timeout"). PID must be a child of this shell (for its exit status).
STOP_RC=
stop_pid() {
    local pid=$1 rc=0
    STOP_RC=0
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
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

# stop_verve: stop_pid on the verve that start_verve started.
stop_verve() {
    stop_pid "$VERVE_PID"
    VERVE_PID=
}

# Kills what is still running (call from an EXIT trap, with the script's own PIDs).
kill_pids() {
    local pid
    for pid in "$@"; do
        [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
    done
    return 0
}

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

# The pieces the wrk-based scripts (compare, cluster, kafka) share: their raw output file is
# $RAW, set before `log` or `fail` is used.

# log TEXT: to stdout and to $RAW.
log() { echo "$*" | tee -a "$RAW"; }
load1() { cut -d' ' -f1 /proc/loadavg; }
# metric FILE NAME: the value of an unlabelled metric in a saved /metrics page.
metric() { awk -v m="$2" '$1 == m {print $2}' "$1"; }
# median of the numbers on stdin.
median() {
    sort -g | awk '{r[NR] = $1} END {if (NR % 2) printf "%.3f", r[(NR + 1) / 2];
        else printf "%.3f", (r[NR / 2] + r[NR / 2 + 1]) / 2}'
}

# Failed checks: collected by `fail`, and reported (exit 1) by the script at its end.
FAILURES=()
fail() { FAILURES+=("$*"); log "CHECK FAILED: $*"; }

# check_wrk NAME FILE: wrk's output FILE has no non-2xx answer and no socket error.
check_wrk() {
    if grep -q "Non-2xx" "$2"; then fail "$1: non-2xx answers: $(grep 'Non-2xx' "$2")"; fi
    if grep -q "Socket errors" "$2"; then fail "$1: wrk saw socket errors: $(grep 'Socket errors' "$2")"; fi
}
