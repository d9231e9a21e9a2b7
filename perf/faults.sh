#!/usr/bin/env bash
# The fault-injection run: does every id answered `ok` end up in exactly one count line,
# whatever happens to the processes? For each mode of MODES, examples/faults (see its
# module docs) starts the topology on loopback,
#
#   cluster: redis-server with an append-only file (appendfsync everysec) in the run's
#            directory, INSTANCES verve instances on it (--interval INTERVAL
#            --cluster-grace GRACE), nginx in front (round robin, a second's patience per
#            instance, retries on error, timeout and 503);
#   single:  one verve with --state-file, nginx in front,
#
# drives pipelined load of distinct ids through nginx (RATE req/s on CONNECTIONS
# connections, up to DEPTH requests per write) for DURATION seconds, recording for every id
# when it was sent and answered, the outcome and the instance that answered (nginx's
# $upstream_addr in an X-Upstream header), while a nemesis (seeded: SEED) injects one fault
# at a time at random instants, every GAP_MS (MIN,MAX ms), on a random instance:
#
#   cluster: SIGKILL + restart, SIGSTOP for FREEZE_MS then SIGCONT, SIGTERM + start (a
#            deploy); Redis: DEBUG SLEEP, SIGSTOP/SIGCONT, SIGTERM + restart, SIGKILL +
#            restart;
#   single:  SIGKILL + restart, SIGTERM + start.
#
# Then it stops everything gracefully and checks every window of the load: one count line
# across the instances (or scope=local lines: a warning), no second line but the documented
# one (same count, its first writer killed or stopped right after writing it), and
# lower <= count <= upper (lower: the ids answered ok by an instance not SIGKILLed before it
# could ship them: within PROTECT_MS after the answer, or in cluster mode while Redis was
# unavailable to it or around a Redis SIGKILL, see perf/README.md; upper: the ids sent; each
# id may belong to any window between its send and its answer). Prints the windows checked, the faults by kind, the ids lost, the
# duplicate lines and every violation.
#
#   perf/faults.sh                                  # 10 min per mode, both modes (~22 min)
#   DURATION=120 MODES=cluster perf/faults.sh       # shorter
#   SEED=4242 perf/faults.sh                        # the same fault schedule again
#
# Environment: MODES ("cluster single"), DURATION (600 s per mode), INTERVAL (2), GRACE (3),
# INSTANCES (3), RATE (2000), CONNECTIONS (8), DEPTH (16), SEED (from the clock; printed),
# GAP_MS (500,3000), FREEZE_MS (1000,6000), PROTECT_MS (1000), VERVE_ARGS (more flags for
# every instance), CARGO_TARGET_DIR.
# Output: the checker's summaries and a table on stdout; everything in
# perf/out/faults-<UTC>.txt; each mode's run directory (ids-*.tsv, events.tsv, the logs,
# windows.tsv with each window's bounds) in perf/out/faults-<UTC>-<mode>/; check one again
# with `target/release/examples/faults check DIR`.
#
# Exit status: 0 when every mode's checker passed, 1 when one found a violation (the
# result, printed loudly), 2 for a usage error, a missing tool or a run that could not be
# carried out (a process that did not start).
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

MODES=${MODES:-cluster single}
DURATION=${DURATION:-600}
INTERVAL=${INTERVAL:-2}
GRACE=${GRACE:-3}
INSTANCES=${INSTANCES:-3}
RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-8}
DEPTH=${DEPTH:-16}
SEED=${SEED:-$(($(date +%s) % 1000000))}
GAP_MS=${GAP_MS:-500,3000}
FREEZE_MS=${FREEZE_MS:-1000,6000}
PROTECT_MS=${PROTECT_MS:-1000}
VERVE_ARGS=${VERVE_ARGS:-}
for v in DURATION INTERVAL GRACE INSTANCES RATE CONNECTIONS DEPTH PROTECT_MS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ $SEED =~ ^[0-9]+$ ]] || die "SEED must be a number, not '$SEED'"
for v in GAP_MS FREEZE_MS; do
  [[ ${!v} =~ ^[0-9]+,[0-9]+$ ]] || die "$v must be MIN,MAX in ms, not '${!v}'"
done
for m in $MODES; do
  [[ $m == cluster || $m == single ]] || die "MODES: '$m' is neither cluster nor single"
done
((DURATION >= 20)) || die "DURATION must be at least 20 s"
# At least 20 windows of load, as the check is meant to cover.
((DURATION / INTERVAL >= 20)) || echo "$SCRIPT_NAME: note: fewer than 20 windows of load ($DURATION s / $INTERVAL s)" >&2

need_common
need redis-server "apt-get install -y redis-server"
need redis-cli "apt-get install -y redis-tools"
[[ -x /usr/sbin/nginx ]] || need nginx "apt-get install -y nginx-light"
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/faults-$STAMP.txt

{
  echo "# perf/faults.sh $STAMP: MODES='$MODES' DURATION=${DURATION}s INTERVAL=$INTERVAL GRACE=$GRACE" \
    "INSTANCES=$INSTANCES RATE=$RATE CONNECTIONS=$CONNECTIONS DEPTH=$DEPTH SEED=$SEED" \
    "GAP_MS=$GAP_MS FREEZE_MS=$FREEZE_MS PROTECT_MS=$PROTECT_MS VERVE_ARGS='$VERVE_ARGS'"
  machine_line
  echo "# $(redis-server --version); $( (/usr/sbin/nginx -v || nginx -v) 2>&1)"
  echo "# other CPU busy in the second before: $(other_busy)"
} | tee "$RAW"

build --bin verve --example faults
TARGET_DIR=$(target_dir)
VERVE_BIN=$TARGET_DIR/release/verve
FAULTS_BIN=$TARGET_DIR/release/examples/faults
[[ -x $VERVE_BIN && -x $FAULTS_BIN ]] || die "binaries not found in $TARGET_DIR"

ROWS=()
for mode in $MODES; do
  dir=$PERF_OUT/faults-$STAMP-$mode
  args=(run --mode "$mode" --verve "$VERVE_BIN" --dir "$dir" --instances "$INSTANCES"
    --interval "$INTERVAL" --grace "$GRACE" --seconds "$DURATION" --rate "$RATE"
    --connections "$CONNECTIONS" --depth "$DEPTH" --seed "$SEED" --gap-ms "$GAP_MS"
    --freeze-ms "$FREEZE_MS" --protect-ms "$PROTECT_MS" --verve-args "$VERVE_ARGS")
  echo "$mode: about $((DURATION + 30)) s ..." >&2
  echo "=== $mode, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW"
  echo "\$ ${FAULTS_BIN#"$TARGET_DIR"/} ${args[*]}" >>"$RAW"
  rc=0
  "$FAULTS_BIN" "${args[@]}" >"$dir.summary" 2>"$dir.progress" || rc=$?
  cat "$dir.progress" >>"$RAW"
  ((rc != 2)) || {
    tail -5 "$dir.progress" >&2
    die "the $mode run could not be carried out (see $RAW)"
  }
  {
    echo
    echo "### $mode mode (seed $SEED)"
    echo
    cat "$dir.summary"
  } | tee -a "$RAW"
  s=$(cat "$dir.summary")
  num() { sed -n "s/^$1 \([0-9]*\).*/\1/p" <<<"$s" | head -1; }
  dups=$(sed -n 's/^duplicate lines: \([0-9]*\) documented.*, \([0-9]*\) unexplained, \([0-9]*\) with another.*/\1 \/ \2 \/ \3/p' <<<"$s")
  alone=$(sed -n 's/.*scope=local only): \([0-9]*\); .*: \([0-9]*\)$/\1 \/ \2/p' <<<"$s")
  verdict=$(sed -n 's/^verdict: //p' <<<"$s")
  ROWS+=("| $mode | $(num 'windows checked:') | $(sed -n 's/^faults injected: //p' <<<"$s") | $(num 'ids sent:') | **$(num 'ids lost:')** | $dups | $(num 'windows without a count line:') | $alone | $verdict |")
  ((rc == 0)) || fail "$mode: the checker found violations (see above; windows.tsv in $dir)"
done

{
  echo
  echo "### Summary: ${DURATION} s of load per mode, --interval $INTERVAL, $RATE req/s, seed $SEED"
  echo
  echo "| mode | windows checked | faults injected | ids sent | ids lost | duplicate lines (documented / unexplained / other count) | windows without a line | reported alone / with late local lines | verdict |"
  echo "| --- | ---: | --- | ---: | ---: | :---: | ---: | :---: | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "raw output: ${RAW#"$ROOT"/}"
} | tee -a "$RAW"
exit_if_failed
