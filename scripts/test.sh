#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests that drive the real binary,
# a real daemon and real runc containers. Run as root; tests that need root, runc or
# cgroups say so and skip when they are missing, unless MICRO_OS_TEST_REQUIRE declares
# them (as .ci/run does): then a missing one fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash scripts/setup.sh --deps-only
  # for the tests only: promtool checks /metrics, script gives the live view a terminal
  # python3-venv: the chain node's RPC test drives it with python-bitcoinrpc from PyPI
  if ! command -v promtool >/dev/null || ! command -v script >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus bsdutils python3 python3-venv >/dev/null
  fi
else
  echo "test: not root: end-to-end tests that need runc will report that they skip" >&2
fi
# a second libp2p implementation for the interoperability test (the npm registry)
if command -v npm >/dev/null; then
  npm ci --prefix tests/interop/js --no-audit --no-fund --loglevel=error >/dev/null
else
  echo "test: npm is missing: the js-libp2p interoperability test will report that it skips" >&2
fi
# what MICRO_OS_TEST_REQUIRE declares is here (one line and exit 1 if not)
bash scripts/requirements.sh
# the tests' SKIP lines (libtest hides the output of tests that pass), listed at the end
skips=$(mktemp)
trap 'if [ -s "$skips" ]; then echo "test: skipped for lack of what they need ($(wc -l <"$skips")):" >&2; sort "$skips" >&2; fi; rm -f "$skips"' EXIT
export MICRO_OS_TEST_SKIP_LOG="$skips"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
# the Python SDK against a live daemon of this build (pytest, from PyPI into a venv)
bash sdk/python/test.sh
# every parser of outside input fuzzed for a bounded time (cargo-fuzz on nightly; the
# long run: scripts/fuzz.sh 600 with the default, optimised and sanitised, build)
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  FUZZ_FLAGS="--dev -s none" bash scripts/fuzz.sh "${MICRO_OS_FUZZ_SECS:-15}"
else
  echo "test: no nightly toolchain: the fuzz targets did not run" >&2
  echo "fuzz (scripts/fuzz.sh): no nightly toolchain" >>"$skips"
fi
