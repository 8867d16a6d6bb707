#!/usr/bin/env bash
# Issue 11's third chain benchmark: a full sync of a 10,000-block chain from a peer on
# another VM — blocks/s, and the syncing node's peak RSS. There is no named peer: the issue
# asks for these two figures only.
#
# Run by `bash bench/run.sh chain-sync` (as root), which builds the release binaries and
# starts a daemon on a scratch home; this script gets BIN, WORK, MICRO_OS_HOME and
# MICRO_OS_API from it. Knobs: SYNC_BLOCKS (10000), SYNC_CHUNK (blocks per
# generatetoaddress call, 1000), SYNC_TIMEOUT (seconds the sync may take, 1800).
#
# 1. The source chain is mined by `micro-os-node --no-p2p` standalone on the host with
#    `generatetoaddress` (no devnet 2 s pacing), then stopped.
# 2. Two sandbox VMs; container sync-src on the first, its data volume filled with that
#    chain before it starts; sync-dst on the second, given sync-src as a seed by the daemon,
#    timed from `container start` until `chain status` reports the source's height.
set -euo pipefail
: "${BIN:?run through bench/run.sh chain-sync}" "${WORK:?}" "${MICRO_OS_HOME:?}" "${MICRO_OS_API:?}"
NODE=$(dirname "$BIN")/micro-os-node
[ -x "$NODE" ] || { echo "$NODE is missing (cargo build --release -p micro-os-node)"; exit 1; }
BLOCKS=${SYNC_BLOCKS:-10000}
CHUNK=${SYNC_CHUNK:-1000}
TIMEOUT=${SYNC_TIMEOUT:-1800}
VMS=(sync-vm-1 sync-vm-2)
SRC_PID=
MADE=0
cleanup() {
  if [ -n "$SRC_PID" ]; then kill "$SRC_PID" 2>/dev/null || true; wait "$SRC_PID" 2>/dev/null || true; fi
  if [ "$MADE" = 1 ]; then
    for c in sync-fast sync-dst sync-src; do "$BIN" container rm -f "$c" >/dev/null 2>&1 || true; done
    for v in "${VMS[@]}"; do "$BIN" vm rm -f "$v" >/dev/null 2>&1 || true; done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
load() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }
LOAD0=$(load)
echo "# chain-sync $(date -u +%FT%TZ), $BLOCKS blocks, load $LOAD0"

# --- 1. the source chain, mined standalone on the host --------------------------------------
SRC=$WORK/src
RPC_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$NODE" --datadir "$SRC" --network devnet --no-p2p --rpc-bind "127.0.0.1:$RPC_PORT" >"$WORK/src-node.log" 2>&1 &
SRC_PID=$!
# one JSON-RPC 1.0 call with the cookie: prints its result, fails on an error
rpc() {
  local out
  out=$(curl -s --max-time 600 --user "$(cat "$SRC/.cookie")" -H 'Content-Type: text/plain' \
    --data-binary "{\"jsonrpc\":\"1.0\",\"id\":\"bench\",\"method\":\"$1\",\"params\":$2}" "http://127.0.0.1:$RPC_PORT/") || return 1
  if [ "$(jq -r '.error' <<<"$out")" != null ]; then echo "rpc $1: $out" >&2; return 1; fi
  jq -r '.result' <<<"$out"
}
for _ in $(seq 100); do
  [ -s "$SRC/.cookie" ] && rpc getblockcount '[]' >/dev/null 2>&1 && break
  kill -0 "$SRC_PID" 2>/dev/null || { echo "the standalone node exited:"; cat "$WORK/src-node.log"; exit 1; }
  sleep 0.1
done
ADDR=$(rpc getnewaddress '[]')
t=$(now)
height=$(rpc getblockcount '[]')
while [ "$height" -lt "$BLOCKS" ]; do
  n=$((BLOCKS - height < CHUNK ? BLOCKS - height : CHUNK))
  rpc generatetoaddress "[$n, \"$ADDR\"]" >/dev/null
  height=$(rpc getblockcount '[]')
  echo "source chain: mined to height $height ($(echo "scale=1; ($(now) - $t) / 1" | bc) s)"
done
GEN_S=$(echo "scale=1; ($(now) - $t) / 1" | bc)
TIP=$(rpc getbestblockhash '[]')
kill -TERM "$SRC_PID"; wait "$SRC_PID" || { echo "the standalone node did not stop cleanly:"; tail "$WORK/src-node.log"; exit 1; }
SRC_PID=
echo "source chain: $BLOCKS blocks in ${GEN_S} s, tip $TIP, $(du -sh "$SRC" | cut -f1) on disk"

# --- 2. two VMs; the source node serves the chain, the destination syncs it ----------------
MADE=1
for v in "${VMS[@]}"; do
  "$BIN" vm create --name "$v" --memory 1024 --cpu 1 >/dev/null
  "$BIN" vm start --name "$v" >/dev/null
done
src_id=$("$BIN" container create --name sync-src --template blockchain-full-node --vm "${VMS[0]}")
# the container's data volume (spawn_shim binds <state dir>/data at /data), filled before
# its first start; the lock and cookie belong to the stopped standalone node
VOL=$MICRO_OS_HOME/containers/$src_id/data
mkdir -p "$VOL"
find "$SRC" -mindepth 1 -maxdepth 1 ! -name .lock ! -name .cookie -exec cp -a {} "$VOL/" \;
"$BIN" container start --name sync-src >/dev/null

# the micro-os-node of a container whose pid is $1: that pid, or the node below it when
# the pid is a wrapper
node_pid() {
  local p=$1 c
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = micro-os-node ] && { echo "$p"; return; }
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do node_pid "$c"; done
}
# CPU seconds (user + system) process $1 has used; its peak RSS (VmHWM) in MiB
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
hwm_mib() { awk '/^VmHWM/{printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# `chain status` of container $1: "height peers", or nothing while it does not answer
status() {
  "$BIN" chain status --container "$1" --format json 2>/dev/null | jq -r '"\(.height) \(.peers)"' 2>/dev/null || true
}
deadline=$(($(date +%s) + 120))
until [ "$(status sync-src | cut -d' ' -f1)" = "$BLOCKS" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "sync-src is not at height $BLOCKS: $(status sync-src)"; "$BIN" container logs --name sync-src | tail; exit 1; }
  sleep 0.5
done
echo "sync-src on ${VMS[0]} serves height $BLOCKS"

"$BIN" container create --name sync-dst --template blockchain-full-node --vm "${VMS[1]}" >/dev/null
SRC_NODE=$(node_pid "$("$BIN" container inspect --name sync-src --format json | jq -r .pid)" | head -1)
[ -n "$SRC_NODE" ] || { echo "no micro-os-node process in sync-src"; exit 1; }
SRC_CPU0=$(cpu_s "$SRC_NODE")
LOAD1=$(load)
t0=$(now)
"$BIN" container start --name sync-dst >/dev/null
polls=0
deadline=$(($(date +%s) + TIMEOUT))
while :; do
  s=$(status sync-dst)
  h=${s%% *}
  [ "$h" = "$BLOCKS" ] && break
  polls=$((polls + 1))
  if [ $((polls % 10)) = 0 ]; then
    echo "sync-dst: height ${h:-?} (peers ${s#* }) after $(echo "scale=1; ($(now) - $t0) / 1" | bc) s"
    state=$("$BIN" container inspect --name sync-dst --format json | jq -r .state)
    [ "$state" = running ] || { echo "sync-dst is $state"; "$BIN" container logs --name sync-dst | tail; exit 1; }
  fi
  [ "$(date +%s)" -lt "$deadline" ] || { echo "sync-dst did not reach $BLOCKS in $TIMEOUT s"; "$BIN" container logs --name sync-dst | tail; exit 1; }
  sleep 0.5
done
SECS=$(echo "scale=2; ($(now) - $t0) / 1" | bc)
LOAD2=$(load)

DST_NODE=$(node_pid "$("$BIN" container inspect --name sync-dst --format json | jq -r .pid)" | head -1)
[ -n "$DST_NODE" ] || { echo "no micro-os-node process in sync-dst"; exit 1; }
DST_CPU=$(cpu_s "$DST_NODE")
SRC_CPU=$(awk -v a="$(cpu_s "$SRC_NODE")" -v b="$SRC_CPU0" 'BEGIN{printf "%.2f", a - b}')
DST_RSS=$(hwm_mib "$DST_NODE")
SRC_RSS=$(hwm_mib "$SRC_NODE")
RATE=$(echo "scale=1; $BLOCKS / $SECS" | bc)
TIP_DST=$("$BIN" chain status --container sync-dst --format json | jq -r .tip)
[ "$TIP_DST" = "$TIP" ] || { echo "sync-dst's tip $TIP_DST is not the source's $TIP"; exit 1; }

# --- 3. the same chain by fast sync (issue 12): headers, the committed UTXO snapshot, then
# validation from the last commitment; timed the same way, on the same VM
"$BIN" container rm -f sync-dst >/dev/null
"$BIN" container create --name sync-fast --template blockchain-full-node --vm "${VMS[1]}" >/dev/null
"$BIN" container config sync-fast --sync-mode fast >/dev/null
t0=$(now)
"$BIN" container start --name sync-fast >/dev/null
deadline=$(($(date +%s) + TIMEOUT))
until [ "$(status sync-fast | cut -d' ' -f1)" = "$BLOCKS" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "sync-fast did not reach $BLOCKS"; "$BIN" container logs --name sync-fast | tail; exit 1; }
  sleep 0.2
done
FAST_SECS=$(echo "scale=2; ($(now) - $t0) / 1" | bc)
TIP_FAST=$("$BIN" chain status --container sync-fast --format json | jq -r .tip)
[ "$TIP_FAST" = "$TIP" ] || { echo "sync-fast's tip $TIP_FAST is not the source's $TIP"; exit 1; }
"$BIN" container logs --name sync-fast | grep -q "fast sync: utxo snapshot" || { echo "sync-fast did not start from a snapshot"; "$BIN" container logs --name sync-fast | tail; exit 1; }
FAST_RATIO=$(echo "scale=1; $SECS / $FAST_SECS" | bc)

echo
echo "full sync of a $BLOCKS-block devnet chain, sync-src (${VMS[0]}) → sync-dst (${VMS[1]}); sandbox VMs 1024 MiB, 1 vCPU"
echo "no named peer: the issue asks for blocks/s and the node's RSS only"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| blocks synced | $BLOCKS (tip $TIP) |"
echo "| seconds, \`container start\` of sync-dst → \`chain status\` height $BLOCKS | $SECS |"
echo "| **blocks/s** | **$RATE** |"
echo "| **sync-dst peak RSS** (VmHWM of micro-os-node) | **$DST_RSS MiB** |"
echo "| sync-dst CPU (user+sys) during the sync | $DST_CPU s ($(echo "scale=0; 100 * $DST_CPU / $SECS" | bc)% of the wall time) |"
echo "| sync-src peak RSS (serving; it also opened the chain) | $SRC_RSS MiB |"
echo "| sync-src CPU (user+sys) during the sync | $SRC_CPU s |"
echo "| source chain mined standalone (\`generatetoaddress\`, $CHUNK a call) | ${GEN_S} s |"
echo "| load average: script start / sync start / sync end | $LOAD0 / $LOAD1 / $LOAD2 |"
echo "| fast sync (\`--sync-mode fast\`) to a node serving RPC at height $BLOCKS, seconds | $FAST_SECS |"
echo "| **fast sync vs full sync, speed-up** (target ≥ 5) | **$FAST_RATIO×** |"
