#!/usr/bin/env bash
# Builds verve's Debian package with `cargo deb`: the release binary as /usr/bin/verve, the
# systemd unit, /etc/verve/verve.env (a conffile, mode 0600), the logrotate file, the
# copyright and the changelog, and the maintainer scripts of packaging/debian. What goes in
# and where: [package.metadata.deb] in Cargo.toml.
#
#   scripts/package.sh                      # target/debian/verve_<version>-1_<arch>.deb
#   scripts/package.sh --no-default-features --features system-openssl
#   scripts/package.sh --install-only       # install cargo-deb if missing, build nothing
#
# Other arguments go to `cargo deb` as they are (`--output DIR`, `--profile NAME`,
# `--deb-revision N`, ...). The last line of the output is the package's path.
#
# Installs cargo-deb (crates.io, `cargo install --locked`, about 3 minutes on 2 cores, once)
# when it is missing. Needs dpkg-shlibdeps (Debian package dpkg-dev), with which cargo-deb
# computes the package's dependencies from the libraries the binary links.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The cargo-deb releases this script is written for: 3.x reads [package.metadata.deb] as
# Cargo.toml has it.
cargo_deb_version='^3'

need cargo "rustup (https://rustup.rs), stable toolchain"
need dpkg-deb "apt-get install -y dpkg"
need dpkg-shlibdeps "apt-get install -y dpkg-dev"

# cargo install puts cargo-deb here.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo deb --version >/dev/null 2>&1; then
  echo "$SCRIPT_NAME: installing cargo-deb $cargo_deb_version (a build from source, once)" >&2
  cargo install --locked cargo-deb --version "$cargo_deb_version" ||
    die "could not install cargo-deb (see above)"
fi

if [ "${1:-}" = --install-only ]; then
  echo "$SCRIPT_NAME: $(cargo deb --version)" >&2
  exit 0
fi

cd "$ROOT"
# --locked: the versions of Cargo.lock, as every build of verve. cargo-deb prints the path of
# the package it wrote as its last line.
cargo deb --locked "$@"
