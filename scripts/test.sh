#!/usr/bin/env bash
# Ferry's whole test suite, as CI runs it (.ci/run calls exactly this):
#   formatting, clippy with warnings as errors, every test of the workspace against real
#   services (Azurite is installed from the pinned lock file, started on a free loopback port,
#   and stopped whatever happens), and one quick pass of each benchmark (no timings asserted).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. scripts/azurite.sh
trap azurite_stop EXIT

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== starting Azurite"
azurite_start "$root"
export FERRY_REQUIRE_AZURITE=1

echo "== build (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== benchmarks, one quick pass each (correctness only)"
cargo test --workspace --locked --benches
