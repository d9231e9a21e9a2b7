#!/usr/bin/env bash
# The cluster's count of a window at scale (examples/leader_merge.rs: the window's ids cut into
# 16 partitions, frozen, counted by counter processes, the counts added), beside today's single
# leader (the same example at OLD_REV, which counts the window's one list in one process), in
# three parts:
#
#   a. one redis-server: ROUNDS alternating pairs (old then new in odd rounds, new then old in
#      even ones) of INSTANCES x IDS random 64-bit ids in SHIPMENTS deltas each; the old
#      figure is `count_of_shipments` through Redis (`SUMMARY mode=redis total_ms`), the new
#      one the freeze to the sum (`sum_ms`) with COUNTERS counters; the ratio old/new per pair
#      and its median.
#   b. the same against a 3-master Redis Cluster (scripts/redis-cluster.sh), plus each node's
#      share of the window's bytes and the bytes shipped per id.
#   c. BIG_INSTANCES x IDS (100 x 1M: 100M ids, ~670 MB in Redis) against the Redis Cluster,
#      BIG_COUNTERS counters, BIG_RUNS runs: the sum within 1 s of the freeze is the goal; the
#      per-partition times, the counters' CPU seconds, each node's share.
#
#   perf/cluster_scale.sh                       # about 15 minutes plus the builds, 2 cores
#   ROUNDS=5 PARTS="a" perf/cluster_scale.sh
#   OLD_BIN=/path/to/old/leader_merge perf/cluster_scale.sh
#
# Environment: COUNT (tally: the counters count with merge::count_partition_with, what the
# cluster runs, a streaming cluster::tally::Tally; union: every shipment decoded, then one
# k-way count_union, what a partition's count did before the tally),
# ROUNDS (3), INSTANCES (10), IDS (1000000), SHIPMENTS (60), COUNTERS (2),
# BIG_INSTANCES (100), BIG_COUNTERS (8), BIG_RUNS (1), PARTS ("a b c"), CLUSTER_PORT (a free
# one: the nodes take it and the next two, and the same + 10000), OLD_REV (e5d461f: main before
# partitions), OLD_BIN (the old example's binary; without it the script exports OLD_REV to
# OLD_SRC, default perf/out/old-leader-OLD_REV, with `git archive` and builds its
# leader_merge in release into OLD_TARGET_DIR, default <target dir>/old-leader), CARGO_TARGET_DIR.
# Output: markdown tables on stdout; the examples' whole output in perf/out/cluster_scale-<UTC>.txt.
#
# Checks (exit 1 after the tables): every count is exact (the examples check themselves and
# fail otherwise). The goals are printed with the figures, not checked: this machine's two
# cores, shared with the Redis servers, cap part c.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

ROUNDS=${ROUNDS:-3}
INSTANCES=${INSTANCES:-10}
IDS=${IDS:-1000000}
SHIPMENTS=${SHIPMENTS:-60}
COUNTERS=${COUNTERS:-2}
BIG_INSTANCES=${BIG_INSTANCES:-100}
BIG_COUNTERS=${BIG_COUNTERS:-8}
BIG_RUNS=${BIG_RUNS:-1}
PARTS=${PARTS:-a b c}
OLD_REV=${OLD_REV:-e5d461f}
COUNT=${COUNT:-tally}
[[ $COUNT =~ ^(union|tally)$ ]] || die "COUNT must be union or tally, not '$COUNT'"
for v in ROUNDS INSTANCES IDS SHIPMENTS COUNTERS BIG_INSTANCES BIG_COUNTERS BIG_RUNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
part() { [[ " $PARTS " == *" $1 "* ]]; }

need_common
need redis-server "apt-get install -y redis-server"
need redis-cli "apt-get install -y redis-tools"
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/cluster_scale-$STAMP.txt
TMP=$(mktemp -d -t verve-perf-cluster-scale.XXXXXX)
CLUSTER_DIR=
CLUSTER_PORT=${CLUSTER_PORT:-}

cleanup() {
  kill_pids "$REDIS_PID"
  [[ -z $REDIS_PID ]] || wait "$REDIS_PID" 2>/dev/null || true
  if [[ -n $CLUSTER_DIR ]]; then
    "$ROOT/scripts/redis-cluster.sh" stop "$CLUSTER_DIR" "$CLUSTER_PORT" || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
{
  echo "# perf/cluster_scale.sh $STAMP: COUNT=$COUNT PARTS='$PARTS' ROUNDS=$ROUNDS ${INSTANCES}x$IDS" \
    "SHIPMENTS=$SHIPMENTS COUNTERS=$COUNTERS BIG=${BIG_INSTANCES}x$IDS BIG_COUNTERS=$BIG_COUNTERS" \
    "BIG_RUNS=$BIG_RUNS OLD_REV=$OLD_REV"
  machine_line
  echo "# $(redis-server --version); memory: $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
} | tee "$RAW"

build --example leader_merge
NEW_BIN=$(target_dir)/release/examples/leader_merge
[[ -x $NEW_BIN ]] || die "$NEW_BIN not found"
if [[ -z ${OLD_BIN:-} ]]; then
  OLD_SRC=${OLD_SRC:-$PERF_OUT/old-leader-$OLD_REV}
  OLD_TARGET_DIR=${OLD_TARGET_DIR:-$(target_dir)/old-leader}
  if [[ ! -f $OLD_SRC/Cargo.toml ]]; then
    mkdir -p "$OLD_SRC"
    git -C "$ROOT" archive "$OLD_REV" | tar -x -C "$OLD_SRC"
  fi
  echo "building the old leader_merge ($OLD_REV) in $OLD_SRC ..." >&2
  (cd "$OLD_SRC" && CARGO_TARGET_DIR=$OLD_TARGET_DIR cargo build --release --quiet --example leader_merge) ||
    die "building the old leader_merge failed"
  OLD_BIN=$OLD_TARGET_DIR/release/examples/leader_merge
fi
[[ -x $OLD_BIN ]] || die "$OLD_BIN not found"
log "# new: $NEW_BIN; old ($OLD_REV): $OLD_BIN"

NEW_ARGS=(--count "$COUNT" --dist random-i64 --instances "$INSTANCES" --ids "$IDS" --shipments "$SHIPMENTS")
OLD_ARGS=(--dist random-i64 --instances "$INSTANCES" --ids "$IDS" --shipments "$SHIPMENTS" --runs 1)

# run_new URL OUT ARGS...: the new example, its output in OUT and $RAW; fails the check if it
# fails.
run_new() {
  local url=$1 out=$2
  shift 2
  {
    echo "=== new $(date -u +%FT%TZ), other CPU busy: $(other_busy)"
    echo "\$ REDIS_URL=$url $NEW_BIN $*"
  } >>"$RAW"
  if ! REDIS_URL=$url "$NEW_BIN" "$@" >"$out" 2>&1; then
    cat "$out" >>"$RAW"
    fail "new leader_merge failed: $(tail -1 "$out")"
    return 1
  fi
  cat "$out" >>"$RAW"
}

run_old() {
  local url=$1 out=$2
  shift 2
  {
    echo "=== old $(date -u +%FT%TZ), other CPU busy: $(other_busy)"
    echo "\$ REDIS_URL=$url $OLD_BIN $*"
  } >>"$RAW"
  if ! REDIS_URL=$url "$OLD_BIN" "$@" >"$out" 2>&1; then
    cat "$out" >>"$RAW"
    fail "old leader_merge failed: $(tail -1 "$out")"
    return 1
  fi
  cat "$out" >>"$RAW"
}

# total_ms of the old example's Redis run ("median,min,max" of one run: the first field).
old_ms() { field total_ms "$(grep '^SUMMARY mode=redis' "$1")" | cut -d, -f1; }
new_ms() { field sum_ms "$(grep '^RESULT' "$1")"; }

# alternate NAME URL: ROUNDS pairs; a table row per pair, the median ratio. Sets LAST_NEW
# (the last new run's output).
LAST_NEW=
alternate() {
  local name=$1 url=$2 r first which o n rows=() ratios=()
  for r in $(seq 1 "$ROUNDS"); do
    first=old
    ((r % 2)) || first=new
    echo "part $name: round $r/$ROUNDS ($first first) ..." >&2
    o='' n=''
    for which in "$first" $([[ $first == old ]] && echo new || echo old); do
      if [[ $which == old ]]; then
        run_old "$url" "$TMP/old-$name-$r.txt" "${OLD_ARGS[@]}" && o=$(old_ms "$TMP/old-$name-$r.txt")
      else
        run_new "$url" "$TMP/new-$name-$r.txt" "${NEW_ARGS[@]}" --counters "$COUNTERS" &&
          n=$(new_ms "$TMP/new-$name-$r.txt")
        LAST_NEW=$TMP/new-$name-$r.txt
      fi
    done
    rows+=("| $r | $first | $o | $n | $(ratio "$o" "$n" 2) |")
    ratios+=("$(ratio "$o" "$n" 3)")
  done
  {
    echo
    echo "| round | first | old: one leader, \`count_of_shipments\` (ms) | new: freeze to sum, $COUNTERS counters, $COUNT (ms) | old / new |"
    echo "| ---: | --- | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
    echo
    echo "median old / new: **$(printf '%s\n' "${ratios[@]}" | grep . | median)** (goal: at least 4)"
  } | tee -a "$RAW"
}

# details OUT: the new run's figures beyond the sum.
details() {
  local res
  res=$(grep '^RESULT' "$1")
  {
    echo
    echo "new run in detail (\`$(basename "$1")\`): sum $(field sum_ms "$res") ms (freeze $(field freeze_ms "$res") ms);" \
      "per partition (median,min,max ms) total $(field part_total_ms "$res"), fetch+decode $(field part_fetch_ms "$res")," \
      "count (\`count_union\` or \`Tally::finish\`) $(field part_count_ms "$res"); partitions per counter $(field counter_partitions "$res")," \
      "busy ms $(field counter_busy_ms "$res"), CPU ms $(field counter_cpu_ms "$res") (total $(field cpu_total_ms "$res"));" \
      "bytes shipped per id $(field bytes_per_id "$res") (goal <= 7), largest node share $(field max_node_share "$res") (goal <= 0.5);" \
      "counter peak RSS $(field vmhwm_max_kb "$res") kB (at READY $(field rss_ready_kb "$res") kB), largest partition" \
      "$(field max_partition_bytes "$res") bytes: peak / partition $(field hwm_per_partition_bytes "$res")," \
      "growth / partition $(field hwm_growth_per_partition_bytes "$res") (goal <= 2)"
    echo
    echo '```'
    grep '^NODE' "$1"
    echo '```'
  } | tee -a "$RAW"
}

if part a; then
  start_redis "$TMP"
  log "# redis-server on $REDIS_URL (no persistence)"
  {
    echo
    echo "### a. One redis-server: ${INSTANCES} instances x $IDS random i64 ids, $SHIPMENTS deltas each"
  } | tee -a "$RAW"
  alternate a "$REDIS_URL"
  [[ -z $LAST_NEW ]] || details "$LAST_NEW"
  stop_pid "$REDIS_PID"
  REDIS_PID=
fi

if part b || part c; then
  CLUSTER_DIR=$TMP/cluster
  if [[ -z $CLUSTER_PORT ]]; then
    for _ in $(seq 1 50); do
      CLUSTER_PORT=$((20000 + RANDOM % 30000))
      ok=1
      for p in $CLUSTER_PORT $((CLUSTER_PORT + 1)) $((CLUSTER_PORT + 2)); do
        for q in $p $((p + 10000)); do
          if (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null; then ok=; fi
        done
      done
      [[ -z $ok ]] || break
    done
  fi
  CLUSTER_URL=$("$ROOT/scripts/redis-cluster.sh" start "$CLUSTER_DIR" "$CLUSTER_PORT")
  log "# Redis Cluster: $CLUSTER_URL (3 masters, no persistence)"
fi

if part b; then
  {
    echo
    echo "### b. A 3-master Redis Cluster: ${INSTANCES} instances x $IDS random i64 ids, $SHIPMENTS deltas each"
  } | tee -a "$RAW"
  alternate b "$CLUSTER_URL"
  [[ -z $LAST_NEW ]] || details "$LAST_NEW"
fi

if part c; then
  {
    echo
    echo "### c. A 3-master Redis Cluster: ${BIG_INSTANCES} instances x $IDS random i64 ids, $SHIPMENTS deltas each, $BIG_COUNTERS counters"
  } | tee -a "$RAW"
  out=$TMP/new-c.txt
  echo "part c: ${BIG_INSTANCES} x $IDS ..." >&2
  if run_new "$CLUSTER_URL" "$out" --count "$COUNT" --dist random-i64 --instances "$BIG_INSTANCES" --ids "$IDS" \
    --shipments "$SHIPMENTS" --counters "$BIG_COUNTERS" --runs "$BIG_RUNS"; then
    res=$(grep '^RESULT' "$out" | tail -1)
    cpu=$(field cpu_total_ms "$res")
    {
      echo
      echo "sum_ms (median,min,max of $BIG_RUNS): **$(field sum_ms "$(grep '^SUMMARY' "$out")")** (goal: within 1000 ms of the freeze)"
      echo "counting CPU: $cpu ms in all, $(ratio "$cpu" "$BIG_COUNTERS" 0) ms per counter if spread over $BIG_COUNTERS;" \
        "on $(nproc) cores at best $(ratio "$cpu" "$(nproc)" 0) ms"
      echo "generating and shipping (not timed): $(field generate_and_ship_s "$res") s"
    } | tee -a "$RAW"
    details "$out"
  fi
fi

echo
echo "raw output: ${RAW#"$ROOT"/}" | tee -a "$RAW"
exit_if_failed
