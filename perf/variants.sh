#!/usr/bin/env bash
# Build settings measured one at a time: each variant of verve against verve as committed
# (the reference build), alternating under the same wrk load as perf/compare.sh.
#
#   perf/variants.sh                              # every variant, 3 rounds of 8 s each
#   ROUNDS=5 DURATION=10 perf/variants.sh work-steal mimalloc
#
# A variant is a name from the table below: extra cargo flags, RUSTFLAGS and profile
# settings (cargo's CARGO_PROFILE_RELEASE_* variables). Each is built into its own target
# directory under target/variants/. Per round, the reference and the variant are each
# started on a free loopback port, warmed up for WARMUP s and measured with
#   wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -s perf/random_ids.lua
# The order within a round alternates. Prints the req/s of every run and, per variant, the
# median of variant/reference over the rounds; raw output goes to perf/out/variants-*.txt.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
export SEED=${SEED:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh"
OUT_DIR=$ROOT/perf/out
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW=$OUT_DIR/variants-$STAMP.txt
mkdir -p "$OUT_DIR"

# name | cargo flags | RUSTFLAGS | profile overrides (space-separated VAR=value)
VARIANTS=(
  "work-steal|--features work-steal||"
  "mimalloc|--features mimalloc||"
  "target-cpu-native||-C target-cpu=native|"
  "panic-abort|||CARGO_PROFILE_RELEASE_PANIC=abort"
  "thin-lto-16cgu|||CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16"
)

wanted=("$@")
selected=()
for v in "${VARIANTS[@]}"; do
  name=${v%%|*}
  if [[ ${#wanted[@]} -eq 0 ]] || [[ " ${wanted[*]} " == *" $name "* ]]; then
    selected+=("$v")
  fi
done
[[ ${#selected[@]} -gt 0 ]] || { echo "variants.sh: no such variant: $*" >&2; exit 2; }

build() { # dir cargo-flags rustflags profile-env
  local dir=$1 flags=$2 rustflags=$3 profile=$4
  echo "building $dir ($flags $rustflags $profile)" >&2
  # shellcheck disable=SC2086
  (cd "$ROOT" && env $profile CARGO_TARGET_DIR="$dir" RUSTFLAGS="$rustflags" \
    cargo build --release --quiet $flags --bin verve)
}

PID=
cleanup() { [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null || true; }
trap cleanup EXIT

measure() { # binary -> req/s
  local bin=$1 port dir
  port=$(free_port)
  dir=$(mktemp -d -t verve-variant.XXXXXX)
  "$bin" --listen "127.0.0.1:$port" --log-file "$dir/verve.log" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$ROOT/perf/random_ids.lua" \
    "http://127.0.0.1:$port" >/dev/null
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$ROOT/perf/random_ids.lua" \
    "http://127.0.0.1:$port")
  echo "$out" >>"$RAW"
  kill -TERM "$PID"
  wait "$PID" || true
  PID=
  rm -rf "$dir"
  grep -q "Non-2xx" <<<"$out" && { echo "variants.sh: non-2xx answers from $bin" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

REF_DIR=$ROOT/target/variants/reference
build "$REF_DIR" "" "" ""
{
  echo "# perf/variants.sh $STAMP rounds=$ROUNDS duration=${DURATION}s wrk -t$THREADS -c$CONNECTIONS"
  echo "# $(nproc) cores, $(uptime)"
  echo "# commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo ' (dirty)')"
} | tee -a "$RAW"
printf '%-16s %5s %12s %12s %7s\n' variant round reference variant ratio | tee -a "$RAW"
for v in "${selected[@]}"; do
  IFS='|' read -r name flags rustflags profile <<<"$v"
  dir=$ROOT/target/variants/$name
  build "$dir" "$flags" "$rustflags" "$profile"
  ratios=()
  for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then
      ref=$(measure "$REF_DIR/release/verve")
      var=$(measure "$dir/release/verve")
    else
      var=$(measure "$dir/release/verve")
      ref=$(measure "$REF_DIR/release/verve")
    fi
    ratio=$(awk -v a="$var" -v b="$ref" 'BEGIN {printf "%.3f", a / b}')
    ratios+=("$ratio")
    printf '%-16s %5s %12s %12s %7s\n' "$name" "$round" "$ref" "$var" "$ratio" | tee -a "$RAW"
  done
  printf '%-16s median variant/reference %s\n' "$name" \
    "$(printf '%s\n' "${ratios[@]}" | median)" | tee -a "$RAW"
done
echo "raw output: $RAW"
