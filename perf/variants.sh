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

# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
RAW=$PERF_OUT/variants-$STAMP.txt
need_common
need wrk "apt-get install -y wrk"
mkdir -p "$PERF_OUT"

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
[[ ${#selected[@]} -gt 0 ]] || die "no such variant: $*"

# build_variant DIR CARGO-FLAGS RUSTFLAGS PROFILE-ENV: verve built into the target directory
# DIR with the variant's settings.
build_variant() {
  local dir=$1 flags=$2 rustflags=$3 profile=$4
  (
    # shellcheck disable=SC2086,SC2163 # space-separated VAR=value settings
    [[ -z $profile ]] || export $profile
    export CARGO_TARGET_DIR=$dir RUSTFLAGS=$rustflags
    # shellcheck disable=SC2086
    build $flags --bin verve
  )
}

TMP=$(mktemp -d -t verve-variant.XXXXXX)
trap 'kill_pids "$VERVE_PID"; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

# measure BINARY: its req/s under wrk, after a warm-up.
measure() {
  local bin=$1 port
  port=$(free_port)
  start_verve "$bin" "$port" "$TMP/verve.log"
  wait_healthy "$port" || die "$bin did not answer /healthz on port $port"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$ROOT/perf/random_ids.lua" \
    "http://127.0.0.1:$port" >/dev/null
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$ROOT/perf/random_ids.lua" \
    "http://127.0.0.1:$port")
  echo "$out" >>"$RAW"
  stop_verve
  rm -f "$TMP/verve.log" "$TMP/verve.log.out"
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$SCRIPT_NAME: non-2xx answers from $bin" >&2
    exit 1
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

REF_DIR=$ROOT/target/variants/reference
build_variant "$REF_DIR" "" "" ""
{
  echo "# perf/variants.sh $STAMP rounds=$ROUNDS duration=${DURATION}s wrk -t$THREADS -c$CONNECTIONS"
  echo "# $(nproc) cores, $(uptime)"
  echo "# commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo ' (dirty)')"
} | tee -a "$RAW"
printf '%-16s %5s %12s %12s %7s\n' variant round reference variant ratio | tee -a "$RAW"
for v in "${selected[@]}"; do
  IFS='|' read -r name flags rustflags profile <<<"$v"
  dir=$ROOT/target/variants/$name
  build_variant "$dir" "$flags" "$rustflags" "$profile"
  ratios=()
  for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then
      ref=$(measure "$REF_DIR/release/verve")
      var=$(measure "$dir/release/verve")
    else
      var=$(measure "$dir/release/verve")
      ref=$(measure "$REF_DIR/release/verve")
    fi
    ratio=$(ratio "$var" "$ref")
    ratios+=("$ratio")
    printf '%-16s %5s %12s %12s %7s\n' "$name" "$round" "$ref" "$var" "$ratio" | tee -a "$RAW"
  done
  printf '%-16s median variant/reference %s\n' "$name" \
    "$(printf '%s\n' "${ratios[@]}" | median)" | tee -a "$RAW"
done
echo "raw output: $RAW"
