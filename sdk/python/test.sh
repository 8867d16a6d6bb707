#!/usr/bin/env bash
# The SDK's tests: builds its wheel offline, installs it in a venv with httpx and pytest
# (from PyPI), and runs pytest against a daemon the test session starts from the
# workspace's build (cargo build first; scripts/test.sh runs this after cargo test).
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
venv=${MICRO_OS_SDK_VENV:-$target/sdk-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check httpx pytest setuptools wheel
# the wheel builds offline: no build isolation, no index
rm -rf "$target/sdk-dist"
"$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation --no-index -w "$target/sdk-dist" .
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$target"/sdk-dist/micro_os-*.whl
export MICRO_OS_BIN=${MICRO_OS_BIN:-$target/debug/micro-os}
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
