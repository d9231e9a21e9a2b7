#!/usr/bin/env bash
# A CPU flamegraph of verve under wrk load.
#
#   scripts/flamegraph.sh                       # 15 s, written to perf/out/flamegraph-<UTC time>.svg
#   DURATION=30 CALLGRAPH=fp KEEP_DATA=1 scripts/flamegraph.sh
#
# Builds verve in release mode (the shipped profile: fat LTO, one codegen unit) with frame
# pointers and line tables, in its own target directory (target/flame) so the normal build
# is not disturbed; starts it on a free loopback port; warms it up with wrk for WARMUP
# seconds; then records it with `perf record` while
#   wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -s perf/random_ids.lua
# loads it; stops it with SIGTERM; folds the stacks with inferno (or Brendan Gregg's
# FlameGraph scripts) into an SVG and prints the functions with the most self time.
#
# Needs: cargo, wrk (apt-get install wrk), perf (Debian: apt-get install linux-perf), and
# inferno (cargo install inferno: inferno-collapse-perf, inferno-flamegraph, looked up in
# PATH and ~/.cargo/bin) or the FlameGraph scripts (stackcollapse-perf.pl, flamegraph.pl in
# PATH or in $FLAMEGRAPH_DIR). Only verve's process is recorded (user and kernel time of all
# its threads), not wrk.
#
# Environment:
#   DURATION     seconds recorded under load (15)
#   FREQ         sampling frequency, perf -F (999)
#   CALLGRAPH    dwarf | fp (dwarf): how perf unwinds stacks, see below
#   OUT          the SVG to write (perf/out/flamegraph-<UTC time>.svg)
#   EVENT        perf event (cycles where the CPU has a PMU, else cpu-clock: VMs often have none)
#   WARMUP       seconds of unrecorded load first (2). With random ids the first seconds of
#                every window are dominated by roaring creating its 65 536 containers (memmove):
#                WARMUP=15 or more with VERVE_ARGS="--interval 3600" profiles the steady state;
#                a recording that crosses a window boundary includes a window start
#   THREADS, CONNECTIONS  wrk's -t and -c (2, 64)
#   SEED         the id stream's seed (1)
#   VERVE_ARGS   extra verve flags, e.g. "--workers 1"
#   KEEP_DATA=1  keep perf.data next to the SVG (for `perf report -i ...`)
#   FLAME_TARGET_DIR  the separate target directory (target/flame)
#
# CALLGRAPH: verve's connections run on may coroutines, each on its own mmap'd stack; a
# coroutine's first frame (generator's gen_init) has a null frame pointer, so both modes stop
# there: a connection's stacks start at the coroutine entry, not at the may scheduler that
# resumed it. The difference is libc. Debian's glibc is built without frame pointers, so with
# fp the walk is lost at every libc frame: a sample in the kernel under send() or read() (most
# of verve's time) shows no user-space caller at all, and memmove's caller is misattributed.
# dwarf (the default) copies 8 KiB of stack per sample and unwinds it afterwards with the
# unwind tables and line info: full stacks through libc, inlined functions named (fat LTO
# inlines nearly the whole request path into a few symbols). It costs ~5 MB of perf.data a
# second instead of ~0.1 MB, and a couple of seconds more to fold; fp is for long or
# high-frequency recordings. verve is built with frame pointers either way.
set -euo pipefail

DURATION=${DURATION:-15}
FREQ=${FREQ:-999}
CALLGRAPH=${CALLGRAPH:-dwarf}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
export SEED=${SEED:-1}
VERVE_ARGS=${VERVE_ARGS:-}
KEEP_DATA=${KEEP_DATA:-0}

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-$PERF_OUT/flamegraph-$STAMP.svg}
[[ $OUT == /* ]] || OUT=$PWD/$OUT
LUA=$ROOT/perf/random_ids.lua
TARGET_DIR=${FLAME_TARGET_DIR:-$ROOT/target/flame}

case $CALLGRAPH in
  fp) CALLGRAPH_ARG=fp ;;
  dwarf) CALLGRAPH_ARG=dwarf,8192 ;;
  *) die "CALLGRAPH must be fp or dwarf, not '$CALLGRAPH'" ;;
esac
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds"
[[ $FREQ =~ ^[1-9][0-9]*$ ]] || die "FREQ must be a positive number"

# --- tools ---------------------------------------------------------------------------------
need_common
need wrk "apt-get install -y wrk"
need perf "apt-get install -y linux-perf (Debian), linux-tools-\$(uname -r) (Ubuntu)"

# inferno first, then the FlameGraph Perl scripts.
find_tool() {
  local name=$1 dir
  if command -v "$name" >/dev/null; then
    command -v "$name"
    return 0
  fi
  for dir in "${CARGO_HOME:-$HOME/.cargo}/bin" "${FLAMEGRAPH_DIR:-}"; do
    if [[ -n $dir && -x $dir/$name ]]; then
      echo "$dir/$name"
      return 0
    fi
  done
  return 1
}
if COLLAPSE=$(find_tool inferno-collapse-perf) && FLAMEGRAPH=$(find_tool inferno-flamegraph); then
  FOLDER=inferno
elif COLLAPSE=$(find_tool stackcollapse-perf.pl) && FLAMEGRAPH=$(find_tool flamegraph.pl); then
  FOLDER=FlameGraph
else
  die "no flamegraph tools: cargo install inferno (or put Brendan Gregg's FlameGraph" \
    "scripts in PATH or FLAMEGRAPH_DIR)"
fi

# A CPU without a PMU (most VMs) has no `cycles`: `perf stat` then says "<not supported>"
# and still exits 0, so its output is what tells.
if [[ -z ${EVENT:-} ]]; then
  EVENT=cycles
  if ! STAT=$(perf stat -e cycles true 2>&1) || [[ $STAT == *"<not supported>"* ||
    $STAT == *"<not counted>"* ]]; then
    EVENT=cpu-clock
  fi
fi

perf_hint() {
  local paranoid
  paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?')
  {
    echo "flamegraph.sh: perf could not record (kernel.perf_event_paranoid = $paranoid)."
    echo "  As root:  sysctl kernel.perf_event_paranoid=1   (and for kernel symbols:"
    echo "            sysctl kernel.kptr_restrict=0), or run this script as root."
    echo "  In a container, perf_event_open must be allowed (e.g. --cap-add PERFMON)."
  } >&2
}

# --- clean-up ------------------------------------------------------------------------------
TMP=$(mktemp -d -t verve-flame.XXXXXX)
PERF_PID=
WRK_PID=

cleanup() {
  stop_pid "$WRK_PID" TERM 2
  stop_pid "$PERF_PID" INT 10
  stop_pid "$VERVE_PID" TERM 10
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "flamegraph.sh: interrupted" >&2; exit 130' INT TERM HUP

# --- build ---------------------------------------------------------------------------------
cd "$ROOT"
# line-tables-only is the release profile's own setting; set here too so a change there does
# not silently lose source lines in the profile.
CARGO_TARGET_DIR=$TARGET_DIR \
  CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only} \
  CARGO_PROFILE_RELEASE_STRIP=none \
  RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes" \
  build --bin verve
BIN=$TARGET_DIR/release/verve
[[ -x $BIN ]] || die "$BIN was not built"

# --- run -----------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
PORT=$(free_port)
URL=http://127.0.0.1:$PORT
# shellcheck disable=SC2086 # VERVE_ARGS is a list of flags
start_verve "$BIN" "$PORT" "$TMP/verve.log" $VERVE_ARGS
# `perf record -p` only sees the threads that exist when it starts: wait for may's workers.
wait_healthy "$PORT" || die "verve did not answer /healthz on port $PORT"

if ((WARMUP > 0)); then
  echo "warming up for ${WARMUP}s ..." >&2
  SEED=$((SEED + 1000)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$LUA" "$URL" \
    >"$TMP/warmup.txt"
fi

echo "recording verve (pid $VERVE_PID): perf record -e $EVENT -F $FREQ --call-graph $CALLGRAPH_ARG" \
  "while wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s runs ..." >&2
perf record -e "$EVENT" -F "$FREQ" --call-graph "$CALLGRAPH_ARG" -p "$VERVE_PID" \
  -o "$TMP/perf.data" >"$TMP/perf-record.txt" 2>&1 &
PERF_PID=$!
sleep 0.5
if ! kill -0 "$PERF_PID" 2>/dev/null; then
  cat "$TMP/perf-record.txt" >&2
  perf_hint
  exit 1
fi
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$LUA" "$URL" >"$TMP/wrk.txt" &
WRK_PID=$!
wait "$WRK_PID" || {
  cat "$TMP/wrk.txt" >&2
  die "wrk failed"
}
WRK_PID=
# perf record with -p runs until interrupted; SIGINT makes it write its file and exit.
kill -INT "$PERF_PID" 2>/dev/null || true
PERF_RC=0
wait "$PERF_PID" || PERF_RC=$?
PERF_PID=
if [[ ! -s $TMP/perf.data ]] || grep -qi 'error\|permission' "$TMP/perf-record.txt"; then
  cat "$TMP/perf-record.txt" >&2
  perf_hint
  exit 1
fi
((PERF_RC == 0 || PERF_RC == 130)) || echo "flamegraph.sh: perf record exited $PERF_RC" >&2
stop_pid "$VERVE_PID" TERM 10
VERVE_PID=

# --- fold, draw, summarise -----------------------------------------------------------------
echo "folding stacks with $FOLDER ..." >&2
TITLE="verve under wrk -t$THREADS -c$CONNECTIONS, $EVENT @ ${FREQ} Hz, --call-graph $CALLGRAPH, $STAMP"
perf script -i "$TMP/perf.data" 2>/dev/null >"$TMP/perf.script"
"$COLLAPSE" "$TMP/perf.script" >"$TMP/folded.txt"
[[ -s $TMP/folded.txt ]] || die "no stacks recorded"
"$FLAMEGRAPH" --title "$TITLE" "$TMP/folded.txt" >"$OUT"

if [[ $KEEP_DATA == 1 ]]; then
  cp "$TMP/perf.data" "${OUT%.svg}.perf.data"
fi

report() { # report ARGS...: perf report's table, comments and blank lines dropped
  # perf 6.1 appends empty IPC columns ("-  -") on machines without a PMU: cut them.
  perf report -i "$TMP/perf.data" --stdio -g none --percent-limit 0.01 "$@" 2>/dev/null |
    awk 'NF && !/^#/' | sed 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//'
}

echo
grep -E '^Requests/sec|^RESULT' "$TMP/wrk.txt" || true
echo "samples: $(awk 'END {print NR}' "$TMP/folded.txt") distinct stacks," \
  "$(sed -n 's/.*(\([0-9]* samples\)).*/\1/p' "$TMP/perf-record.txt" | awk 'NR == 1')"
echo
echo "where the time went (self time by binary):"
report --no-children --sort dso | awk 'n++ < 8'
echo
echo "top 15 functions by self time ([k] kernel, [.] user space):"
report --no-children --sort symbol | awk 'n++ < 15'
echo
echo "flamegraph: ${OUT#"$ROOT"/}"
if [[ $KEEP_DATA == 1 ]]; then
  echo "perf data:  ${OUT%.svg}.perf.data (perf report -i ${OUT%.svg}.perf.data)"
fi
