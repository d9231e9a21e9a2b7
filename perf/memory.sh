#!/usr/bin/env bash
# Bytes per distinct id that verve holds for a window (examples/memory.rs), for four id
# distributions (random over the whole i64 range, random over 0..2^32, sequential,
# snowflake-like) at three window sizes (100K, 1M, 10M ids). Each case runs in a process of
# its own, REPEAT times (the table gives the medians): the ids are recorded through
# verve::shards::Shards with an absorb every 100 000 records, then the window is sealed, and
# with the sealed set alive the example reports, per distinct id: RSS growth, live and peak
# heap, IdSet::heap_bytes() (what the --max-memory budget charges), serialized size, and the
# time per id.
#
#   perf/memory.sh                                  # all 12 cases, 3 times (about 5 min; random-i64 at 10M needs ~60 MB, its "before" ~2.5 GB)
#   SIZES="100000 1000000" REPEAT=1 perf/memory.sh  # quicker
#   BEFORE=../target-base/release/examples/memory perf/memory.sh
#
# BEFORE: the memory example of an earlier build (the roaring-based set), run at the same
# sizes for the distributions it knows (random-u32, sequential, random-i64): the "before"
# columns. Snowflake ids, which it does not know, get theirs from `memory --set treemap`
# (a RoaringTreemap filled with sorted batches of 2048 keys, which is what the earlier set
# did with every id outside 0..2^32); for random-i64 both are run, as a cross-check.
#
# Environment: SIZES ("100000 1000000 10000000"), DISTS ("random-i64 random-u32 sequential
# snowflake"), REPEAT (3), BEFORE (unset: no before columns, no "no worse than before"
# checks), SVG (perf/memory.svg), CARGO_TARGET_DIR.
# Output: the tables and the target checks on stdout and in perf/out/memory-<UTC time>.txt,
# the chart's data in perf/out/memory-<UTC time>.csv, the chart in $SVG. Exit status 1 if a
# measurement failed or a distinct count is implausible; a missed target is reported, not an
# error.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

SIZES=${SIZES:-"100000 1000000 10000000"}
DISTS=${DISTS:-"random-i64 random-u32 sequential snowflake"}
REPEAT=${REPEAT:-3}
BEFORE=${BEFORE:-}
SVG=${SVG:-$ROOT/perf/memory.svg}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, not '$REPEAT'"
for n in $SIZES; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES must be positive integers, not '$n'"
done
for d in $DISTS; do
  [[ $d =~ ^(random-i64|random-u32|sequential|snowflake)$ ]] || die "unknown distribution '$d' in DISTS"
done
if [[ -n $BEFORE ]]; then
  [[ -x $BEFORE ]] || die "BEFORE=$BEFORE is not an executable"
fi

need_common
mkdir -p "$PERF_OUT"
RAW=$PERF_OUT/memory-$STAMP.txt
CSV=$PERF_OUT/memory-$STAMP.csv

build --example memory
BIN=$(target_dir)/release/examples/memory
[[ -x $BIN ]] || die "$BIN not found after the build"

{
  echo "# perf/memory.sh $STAMP: SIZES=\"$SIZES\" DISTS=\"$DISTS\" REPEAT=$REPEAT BEFORE=${BEFORE:-}"
  machine_line
  echo "# other CPU busy in the second before: $(other_busy)"
} | tee "$RAW"

# run TAG CMD...: runs one measurement, appends its RESULT line to $RAW tagged `set=TAG`
# (the earlier example's lines have no set field).
run() {
  local tag=$1 out
  shift
  echo "\$ $*" >>"$RAW"
  if ! out=$("$@" 2>&1); then
    fail "$* failed: $out"
    return 0
  fi
  grep '^RESULT ' <<<"$out" | sed -e 's/ set=[^ ]*//' -e "s/^RESULT /RESULT set=$tag /" >>"$RAW"
  grep -q '^RESULT ' <<<"$out" || fail "no RESULT line from $*"
}

for rep in $(seq 1 "$REPEAT"); do
  for n in $SIZES; do
    for d in $DISTS; do
      echo "round $rep/$REPEAT: $d $n ..." >&2
      run verve "$BIN" "$d" "$n"
      case $d in
        snowflake) run treemap "$BIN" --set treemap "$d" "$n" ;;
        random-i64) [[ -z $BEFORE ]] || run treemap "$BIN" --set treemap "$d" "$n" ;;
      esac
      if [[ -n $BEFORE && $d != snowflake ]]; then
        run before "$BEFORE" "$d" "$n"
      fi
    done
  done
done

# val SET KIND N FIELD: the median over the repeats of FIELD ("" if none).
val() {
  local vals
  vals=$(awk -v s="set=$1" -v k="kind=$2" -v n="n=$3" -v f="$4" '
        $1 == "RESULT" && $2 == s {
            hit = 0; v = ""
            for (i = 2; i <= NF; i++) {
                if ($i == k) hit++
                if ($i == n) hit++
                if (index($i, f "=") == 1) v = substr($i, length(f) + 2)
            }
            if (hit == 2 && v != "") print v
        }' "$RAW")
  [[ -n $vals ]] || return 0
  # The middle value as printed (an even count: the mean of the two middle ones).
  sort -g <<<"$vals" | awk '{r[NR] = $1} END {if (NR % 2) print r[(NR + 1) / 2];
        else printf "%.6g\n", (r[NR / 2] + r[NR / 2 + 1]) / 2}'
}
# per_id N NS: NS (old example: insert_secs) as ns per id.
ns_of_secs() { awk -v s="$1" -v n="$2" 'BEGIN {if (s != "") printf "%.1f", s * 1e9 / n}'; }
# minus A B: A - B with 1 decimal.
minus() { awk -v a="$1" -v b="$2" 'BEGIN {if (a != "" && b != "") printf "%.1f", a - b}'; }
# le A B: 1 if A <= B.
le() { awk -v a="$1" -v b="$2" 'BEGIN {print (a != "" && b != "" && a + 0 <= b + 0) ? 1 : 0}'; }

# Sanity: distinct counts (only random u32 ids repeat, about n^2 / 2^33 times).
for n in $SIZES; do
  for d in $DISTS; do
    distinct=$(val verve "$d" "$n" distinct)
    case $d in
      random-u32) expect=$(awk -v n="$n" 'BEGIN {printf "%.0f", n - n * n / 2^33}') ;;
      *) expect=$n ;;
    esac
    if [[ -z $distinct || $(awk -v d="$distinct" -v e="$expect" 'BEGIN {print (d >= e * 0.999 && d <= e * 1.001 + 1)}') != 1 ]]; then
      fail "$d $n: ${distinct:-no} distinct ids, expected about $expect"
    fi
  done
done

{
  echo
  echo "### After: through Shards (1 shard, an absorb every 100 000 records, then the seal), median of $REPEAT"
  echo
  echo "| ids | window | distinct | RSS B/id | live heap B/id | peak heap B/id | \`heap_bytes()\` B/id | RSS / \`heap_bytes()\` | budget peak B/id | serialized B/id | ns/id (record + absorb) | of which absorbs | so the request path | last absorb ms | max absorb ms | seal ms |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for d in $DISTS; do
    for n in $SIZES; do
      v() { val verve "$d" "$n" "$1"; }
      echo "| $d | $n | $(v distinct) | $(v rss_per_id) | $(v heap_per_id) | $(v peak_per_id) | $(v accounted_per_id) | $(ratio "$(v rss_bytes)" "$(v accounted_bytes)" 2) | $(v budget_peak_per_id) | $(v serialized_per_id) | $(v ns_per_id) | $(v absorb_ns_per_id) | $(minus "$(v ns_per_id)" "$(v absorb_ns_per_id)") | $(v last_absorb_ms) | $(v max_absorb_ms) | $(v seal_ms) |"
    done
  done
  if [[ -n $BEFORE ]] || [[ $DISTS == *snowflake* ]]; then
    echo
    echo "### Before and after, median of $REPEAT (before: the earlier build's example, a bare set; snowflake and the second random-i64 row: \`memory --set treemap\`)"
    echo
    echo "| ids | window | before: set | before RSS B/id | after RSS B/id | before serialized B/id | after serialized B/id | before ns/id | after ns/id |"
    echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for d in $DISTS; do
      for n in $SIZES; do
        for tag in before treemap; do
          [[ -n $(val "$tag" "$d" "$n" distinct) ]] || continue
          b() { val "$tag" "$d" "$n" "$1"; }
          a() { val verve "$d" "$n" "$1"; }
          if [[ $tag == before ]]; then what="earlier build"; else what="RoaringTreemap"; fi
          echo "| $d | $n | $what | $(b rss_per_id) | $(a rss_per_id) | $(b serialized_per_id) | $(a serialized_per_id) | $(ns_of_secs "$(b insert_secs)" "$n") | $(a ns_per_id) |"
        done
      done
    done
  fi
  echo
} | tee -a "$RAW"

# Targets: RSS growth per distinct id.
target() { # target KIND N LIMIT [BAR]
  local rss verdict
  rss=$(val verve "$1" "$2" rss_per_id)
  [[ -n $rss ]] || return 0
  if [[ $(le "$rss" "$3") == 1 ]]; then
    verdict=met
  elif [[ -n ${4:-} && $(le "$rss" "$4") == 1 ]]; then
    verdict="NOT met (within the bar of $4)"
  else
    verdict="NOT met"
  fi
  echo "target: $1 at $2 ids, RSS <= $3 B/id${4:+ (bar $4)}: $verdict ($rss B/id)"
}
{
  for n in $SIZES; do
    case $n in
      100000)
        target random-i64 "$n" 16
        target random-u32 "$n" 8
        ;;
      1000000)
        target random-i64 "$n" 10 16
        target random-u32 "$n" 4
        ;;
      10000000)
        target random-i64 "$n" 10 16
        target random-u32 "$n" 3
        ;;
    esac
    for d in sequential snowflake; do
      [[ $DISTS == *$d* ]] || continue
      if [[ $d == sequential ]]; then tag=before; else tag=treemap; fi
      before=$(val "$tag" "$d" "$n" rss_bytes)
      after=$(val verve "$d" "$n" rss_bytes)
      [[ -n $before && -n $after ]] || continue
      # RSS moves by whole pages: two pages of slack.
      if [[ $(le "$after" "$((${before%.*} + 8192))") == 1 ]]; then verdict=met; else verdict="NOT met"; fi
      echo "target: $d at $n ids, RSS no worse than before: $verdict ($after bytes, before $before)"
    done
    # Speed: random i64 ids now against random u32 ids before.
    if [[ -n $BEFORE ]]; then
      now=$(val verve random-i64 "$n" ns_per_id)
      secs=$(val before random-u32 "$n" insert_secs)
      old=$(ns_of_secs "$secs" "$n")
      if [[ -n $now && -n $old ]]; then
        if [[ $(le "$secs" 0.1) == 1 ]]; then
          # The earlier example prints its time in steps of 10 ms.
          verdict="inconclusive (the earlier example took $secs s, printed in 10 ms steps)"
        elif [[ $(le "$now" "$old") == 1 ]]; then
          verdict=met
        else
          verdict="NOT met"
        fi
        echo "target: random-i64 ids at $n recorded at least as fast as random-u32 ids before, absorbs included: $verdict ($now ns/id, before $old ns/id)"
        path=$(minus "$now" "$(val verve random-i64 "$n" absorb_ns_per_id)")
        if [[ $(le "$secs" 0.1) == 1 ]]; then
          :
        elif [[ $(le "$path" "$old") == 1 ]]; then
          verdict=met
        else
          verdict="NOT met"
        fi
        echo "target: the same, the request path alone (without the collector's absorbs): $verdict ($path ns/id, before $old ns/id)"
      fi
    fi
  done
} | tee -a "$RAW"

# The chart: bytes per id against the window size, RSS and serialized, per distribution.
{
  printf 'n'
  for d in random-i64 random-u32 sequential snowflake; do printf ',%s RSS,%s serialized' "$d" "$d"; done
  for d in random-i64 random-u32 sequential snowflake; do printf ',%s RSS before' "$d"; done
  echo
  for n in $SIZES; do
    printf '%s' "$n"
    for d in random-i64 random-u32 sequential snowflake; do
      printf ',%s,%s' "$(val verve "$d" "$n" rss_per_id)" "$(val verve "$d" "$n" serialized_per_id)"
    done
    for d in random-i64 random-u32 sequential snowflake; do
      if [[ $d == snowflake ]]; then tag=treemap; else tag=before; fi
      printf ',%s' "$(val "$tag" "$d" "$n" rss_per_id)"
    done
    echo
  done
} >"$CSV"
if command -v gnuplot >/dev/null; then
  if gnuplot -e "csv='$CSV'; out='$SVG'; subtitle='$STAMP, git $(git -C "$ROOT" rev-parse --short HEAD), median of $REPEAT, nproc $(nproc)'" \
    "$ROOT/perf/plot_memory.gnuplot"; then
    echo "chart: ${SVG#"$ROOT"/}" | tee -a "$RAW"
  else
    fail "gnuplot could not draw $SVG"
  fi
else
  echo "no chart: gnuplot not found (apt-get install -y gnuplot-nox)" | tee -a "$RAW" >&2
fi
echo "raw output: ${RAW#"$ROOT"/}, chart data: ${CSV#"$ROOT"/}"
exit_if_failed
