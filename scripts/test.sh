#!/usr/bin/env bash
# The test command: installs what the test suite needs and the machine lacks, each only when
# it is missing, then runs `cargo test` with this script's arguments.
#
#   scripts/test.sh                      # the whole suite
#   scripts/test.sh --test cluster       # arguments go to `cargo test` as they are
#   scripts/test.sh -- --nocapture
#   scripts/test.sh --install-only       # install what is missing, run nothing (.ci/run)
#
# Needs a Debian machine (apt-get, as root or through sudo) with the Rust toolchain. The
# first run on a fresh machine builds tansu (see README: about 17 minutes on 2 cores); a
# machine that has everything skips apt and cargo install entirely.
set -euo pipefail
cd "$(dirname "$0")/.."

say() {
  echo "scripts/test.sh: $*"
}

# Everything the tests need besides the Rust toolchain, with what each is for.
# Debian packages:
packages=(
  shellcheck      # the lint of every shell script, which .ci/run runs before the tests
  redis-server    # the Redis servers (single and a 3-node Redis Cluster) of the cluster tests
  nginx           # the load balancer in front of three instances in tests/cluster.rs
  libnginx-mod-stream # nginx's stream module: the TLS front of the broker in tests/kafka_tls.rs
  openssl         # the test certificates of tests/kafka_tls.rs
  prometheus      # promtool, which checks and unit-tests scripts/verve.rules.yml
  systemd         # systemd-analyze, which checks scripts/verve.service (systemd need not run)
  dpkg-dev        # dpkg-shlibdeps: the Debian package's dependencies (tests/package.rs)
  adduser         # what the Debian package depends on, installed and purged by tests/package.rs
  chromium        # headless Chromium: tests/status_page.rs loads the status page in it
  ca-certificates # HTTPS to crates.io, for cargo (the crates and tansu)
)
# and tansu, an Apache Kafka compatible broker (crates.io, built from source by cargo, with
# nothing beyond the C compiler the build needs anyway), for the Kafka tests:
tansu_version='^0.6'
tansu_features=dynostore
# and cargo-deb (crates.io, the same way), with which tests/package.rs builds the Debian
# package through scripts/package.sh, which installs it (its version is set there).

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install the Rust toolchain (rustup, stable) first" >&2
  exit 1
fi

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  say "Debian packages present: ${packages[*]}"
else
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${missing[*]}, and there is no apt-get to install them (not Debian?):" \
      "install them by hand, then run this again or run cargo test" >&2
    exit 1
  fi
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      say "missing: ${missing[*]}; installing them needs root, and there is no sudo:" \
        "run this as root, or run as root: apt-get install ${missing[*]}" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update ||
    ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"; then
    say "could not install ${missing[*]} with ${as_root[*]:-} apt-get (see above)" >&2
    exit 1
  fi
  # The tests start redis-server and nginx themselves, on ports they choose. The system
  # instances a package may have just started are not needed (and nginx's holds port 80).
  for service in redis-server nginx prometheus; do
    if [[ " ${missing[*]} " == *" $service "* ]]; then
      say "stopping the system $service service the package started (the tests run their own)"
      "${as_root[@]}" service "$service" stop >/dev/null 2>&1 || true
    fi
  done
fi

# cargo install puts tansu here; the Kafka tests look for it on PATH (or in $TANSU).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ -n "${TANSU:-}" ]; then
  say "tansu: $TANSU (from \$TANSU)"
elif command -v tansu >/dev/null 2>&1; then
  say "tansu: $(command -v tansu)"
else
  say "installing tansu $tansu_version, the Kafka broker of the Kafka tests" \
    "(a build from source: about 17 minutes on 2 cores, once)"
  # Optimisation level 1: measured on 2 cores, 17.0 CPU-minutes against 20.1 at the
  # default level 3, and the Kafka tests pass as with 3; at level 0 (7.6 CPU-minutes)
  # tansu is too slow to answer a SCRAM login within the tests' 30 s, so they fail.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install --locked tansu --version "$tansu_version" --features "$tansu_features"
fi

if cargo deb --version >/dev/null 2>&1; then
  say "cargo-deb: $(cargo deb --version)"
else
  say "installing cargo-deb, which builds the Debian package of tests/package.rs" \
    "(a build from source: about 3 minutes on 2 cores, once)"
  scripts/package.sh --install-only
fi

if [ "${1:-}" = --install-only ]; then
  say "everything the tests need is installed"
  exit 0
fi

say "cargo test $*"
exec cargo test "$@"
