#!/usr/bin/env bash
# Ferry's whole test suite, as CI runs it (.ci/run calls exactly this):
#   formatting, clippy with warnings as errors, a build of every binary, one quick pass of each
#   benchmark (correctness only, no timings asserted), the Debian packages' install, upgrade and
#   removal (scripts/package-check.sh, as root), then every test of the workspace against
#   real services: Azurite is installed from the pinned lock file, started on a free loopback
#   port with a fresh data directory, and stopped whatever happens.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. scripts/azurite.sh
trap azurite_stop EXIT

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

echo "== benchmarks, one quick pass each (correctness only)"
cargo test --workspace --locked --bench '*'

echo "== doc tests"
cargo test --workspace --locked --doc

echo "== API docs (broken or private intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The Debian packages' whole life (build, lintian, install, init, replicate, upgrade, purge):
# it installs system-wide, so it runs where this is a Debian-like machine run as root, with
# the tools it needs installed here first.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  missing=""
  for tool in lintian:lintian dpkg-shlibdeps:dpkg-dev fakeroot:fakeroot setpriv:util-linux; do
    command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
  done
  if [ -n "$missing" ]; then
    echo "== installing$missing for the package check"
    apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 ||
      { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; }
  fi
  echo "== packages: scripts/package-check.sh"
  scripts/package-check.sh
else
  echo "== packages: skipped (scripts/package-check.sh needs root on a Debian-like machine)"
fi

echo "== starting Azurite"
azurite_start "$root"
export FERRY_REQUIRE_AZURITE=1
# The agent's block-device and fsfreeze test needs root and loop devices; where this machine
# has both, a failure to use them is a failure, not a skip.
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v mkfs.ext4 >/dev/null; then
  export FERRY_REQUIRE_LOOP=1
fi
# The point-in-time pass test needs a loop-mounted XFS (reflink): install xfsprogs where it is
# missing and this is a Debian-like machine run as root; where XFS can then be made, it is
# required too.
if [ "$(id -u)" = 0 ] && ! command -v mkfs.xfs >/dev/null && command -v apt-get >/dev/null; then
  echo "== installing xfsprogs (mkfs.xfs) for the point-in-time pass test"
  apt-get install -y --no-install-recommends xfsprogs >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends xfsprogs >/dev/null 2>&1; } ||
    echo "   (could not install xfsprogs: that test skips, saying so)"
fi
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v mkfs.xfs >/dev/null && grep -qw xfs /proc/filesystems; then
  export FERRY_REQUIRE_XFS=1
fi

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests
fi
