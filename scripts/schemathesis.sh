#!/usr/bin/env bash
# The API against its own contract: schemathesis (PyPI) with every check and every phase
# (examples, coverage, fuzzing, stateful; every check is on by default, and a --checks
# option would override the per-operation settings of tests/schemathesis/schemathesis.toml) against a daemon of this build in a scratch home.
# Usage: scripts/schemathesis.sh [MAX_EXAMPLES]  (default 10; the long run: 100)
# Exits non-zero on any failure. Needs root (the daemon makes its bridge), python3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-10}
target=${CARGO_TARGET_DIR:-target}
bin="$target/debug/micro-os"
[ -x "$bin" ] || cargo build --locked -p micro-os
venv="$target/st-venv"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis==4.32.5
fi
home=$(mktemp -d /tmp/micro-os-st.XXXXXX)
port=$((20000 + RANDOM % 20000))
export MICRO_OS_HOME="$home"
"$bin" init >/dev/null
python3 - "$home/config.json" "$port" <<'PY'
import json, sys
path, port = sys.argv[1], int(sys.argv[2])
c = json.load(open(path))
# a bridge, subnet and ports of its own: nothing shared with another daemon on the machine
c.update(api_addr=f"127.0.0.1:{port}", vm_bridge=f"mst{port % 10000}", vm_subnet=f"10.{200 + port % 50}.0.0/16",
         p2p_mdns=False, p2p_listen=[f"/ip4/127.0.0.1/tcp/{port + 1}"], overlay_port=port + 2)
json.dump(c, open(path, "w"), indent=2)
PY
# a host set up as a user's would be: anvil (npm) for the ethereum-dev image
anvil="$target/st-npm/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
if [ ! -x "$anvil" ] && command -v npm >/dev/null; then
  npm install --no-audit --no-fund --loglevel=error --prefix "$target/st-npm" @foundry-rs/anvil-linux-amd64 >/dev/null
fi
if [ -x "$anvil" ]; then MICRO_OS_ANVIL=$(realpath "$anvil"); export MICRO_OS_ANVIL; fi
"$bin" daemon >"$home/daemon.log" 2>&1 &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  # what the run created outlives the daemon (containers and VMs do): end it all
  for id in $(runc --root "$home/runc" list -q 2>/dev/null); do runc --root "$home/runc" delete --force "$id" >/dev/null 2>&1 || true; done
  sleep 0.5
  grep -o " $home[^ ]*" /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
  ip link del "mst$((port % 10000))" 2>/dev/null || true
  rm -rf "$home"
}
trap cleanup EXIT
api="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$api/api/v1/health" >/dev/null && break; sleep 0.1; done
token=$(cat "$home/token")


export SCHEMATHESIS_HOOKS=hooks
export PYTHONPATH="$PWD/tests/schemathesis"
"$venv/bin/schemathesis" --no-color --config-file tests/schemathesis/schemathesis.toml run "$api/api/v1/openapi.json" \
  -H "Authorization: Bearer $token" --max-examples "$examples" \
  --seed "${ST_SEED:-$RANDOM}" --request-timeout 30
