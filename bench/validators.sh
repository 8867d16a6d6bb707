#!/usr/bin/env bash
# Issue 12's validator benchmark: payments sealed into final blocks by validators on a
# circuit of three sandbox VMs (the spec's example), against the same workload on the PoW
# devnet (three full nodes on the same VMs, one mining): payments/s that reach a block, and
# the time from `sendtoaddress` returning to the payment in a block on the sending node
# (final on the circuit network; one confirmation on the devnet), p50/p99.
#
# Run by `bash bench/run.sh validators` (as root), which builds the release binaries and
# starts a daemon on a scratch home; this script gets BIN, WORK, MICRO_OS_HOME and
# MICRO_OS_API from it. Knobs: VAL_TXS (wallet payments per run, 400), VAL_PRESIGNED
# (pre-signed payments per run, 2000), VAL_SENDERS (threads submitting them, 4).
# The load is crates/node/examples/tx_load.rs, run inside the sending node's VM network
# namespace (`ip netns exec`), where the node's RPC listens.
set -euo pipefail
: "${BIN:?run through bench/run.sh validators}" "${WORK:?}" "${MICRO_OS_HOME:?}" "${MICRO_OS_API:?}"
LOAD=$(dirname "$BIN")/examples/tx_load
[ -x "$LOAD" ] || { echo "$LOAD is missing (cargo build --release -p micro-os-node --example tx_load)"; exit 1; }
TXS=${VAL_TXS:-400}
PRESIGNED=${VAL_PRESIGNED:-2000}
SENDERS=${VAL_SENDERS:-4}
VMS=(blockchain-node-1 blockchain-node-2 blockchain-node-3)
MADE=0
cleanup() {
  if [ "$MADE" = 1 ]; then
    for c in validator pow-1 pow-2 pow-3; do "$BIN" container rm -f "$c" >/dev/null 2>&1 || true; done
    "$BIN" circuit rm --name validation-cluster >/dev/null 2>&1 || true
    for v in "${VMS[@]}"; do "$BIN" vm rm -f "$v" >/dev/null 2>&1 || true; done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# validators $(date -u +%FT%TZ), $TXS payments per run, load $(load)"

# `chain status` field $2 of container $1, or nothing while it does not answer
field() { "$BIN" chain status --container "$1" --format json 2>/dev/null | jq -r ".$2" 2>/dev/null || true; }
wait_height() {
  local deadline=$(($(date +%s) + 300))
  until [ "$(field "$1" height)" -ge "$2" ] 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$1 did not reach height $2"; "$BIN" container logs --name "$1" | tail; exit 1; }
    sleep 1
  done
}
# runs the load against container $1 (on VM $2, RPC port $3), paying $4; then its own
# arguments (--txs N, --presigned --senders K)
run_load() {
  local cid vmid
  cid=$("$BIN" container inspect --name "$1" --format json | jq -r .id)
  vmid=$("$BIN" vm inspect --name "$2" --format json | jq -r .id)
  ip netns exec "mos-${vmid:0:12}" "$LOAD" --rpc "127.0.0.1:$3" \
    --cookie "$MICRO_OS_HOME/containers/$cid/data/.cookie" --to "$4" "${@:5}"
}

MADE=1
for v in "${VMS[@]}"; do
  "$BIN" vm create --name "$v" --memory 512 --cpu 1 >/dev/null
  "$BIN" vm start --name "$v" >/dev/null
done

# --- 1. validators on a circuit --------------------------------------------------------
"$BIN" circuit create --name validation-cluster --nodes "$(IFS=,; echo "${VMS[*]}")" --type consensus >/dev/null
"$BIN" container create --name validator --template blockchain-validator --circuit validation-cluster --replicate >/dev/null
"$BIN" container start --name validator >/dev/null
LEADER=$("$BIN" circuit view --name validation-cluster --format json | jq -r .leader)
# the leader seals, so its wallet holds the coinbases: past maturity with a few to spend
wait_height "validator.$LEADER" 40
OTHER=$(printf '%s\n' "${VMS[@]}" | grep -v "^$LEADER$" | head -1)
TO=$("$BIN" chain wallet --container "validator.$OTHER" --format json | jq -r .address)
LEADER=$("$BIN" circuit view --name validation-cluster --format json | jq -r .leader)
echo "circuit: leader $LEADER, sending $TXS payments through validator.$LEADER"
CIRCUIT=$(run_load "validator.$LEADER" "$LEADER" 18453 "$TO" --txs "$TXS")
echo "circuit: $CIRCUIT"
echo "circuit: $PRESIGNED pre-signed payments from $SENDERS senders through validator.$LEADER"
CIRCUIT_P=$(run_load "validator.$LEADER" "$LEADER" 18453 "$TO" --txs "$PRESIGNED" --presigned --senders "$SENDERS")
echo "circuit: $CIRCUIT_P"
"$BIN" container stop --name validator >/dev/null

# --- 2. the PoW devnet, same VMs -----------------------------------------------------------
for i in 1 2 3; do
  "$BIN" container create --name "pow-$i" --template blockchain-full-node --vm "${VMS[$((i - 1))]}" >/dev/null
done
"$BIN" container config pow-1 --mine true --threads 1 >/dev/null
for i in 1 2 3; do "$BIN" container start --name "pow-$i" >/dev/null; done
wait_height pow-1 40
TO=$("$BIN" chain wallet --container pow-2 --format json | jq -r .address)
echo "devnet: sending $TXS payments through pow-1 (the miner)"
POW=$(run_load pow-1 "${VMS[0]}" 18443 "$TO" --txs "$TXS")
echo "devnet: $POW"
echo "devnet: $PRESIGNED pre-signed payments from $SENDERS senders through pow-1"
POW_P=$(run_load pow-1 "${VMS[0]}" 18443 "$TO" --txs "$PRESIGNED" --presigned --senders "$SENDERS")
echo "devnet: $POW_P"

j() { jq -r ".$2" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "validators on a circuit of 3 sandbox VMs (512 MiB, 1 vCPU each) vs the PoW devnet on the same VMs; load $(load)"
row() { echo "| $1 | $(j "$2" "$3" | xargs printf "$4") | $(j "$5" "$3" | xargs printf "$4") | $(ratio "$(j "$2" "$3")" "$(j "$5" "$3")") |"; }
for mode in wallet presigned; do
  if [ "$mode" = wallet ]; then C=$CIRCUIT P=$POW N=$TXS; echo; echo "$TXS payments through the node's wallet (sendtoaddress, one at a time: bound by the sender)"; fi
  if [ "$mode" = presigned ]; then C=$CIRCUIT_P P=$POW_P N=$PRESIGNED; echo; echo "$PRESIGNED payments signed beforehand, submitted by $SENDERS senders (sendrawtransaction): bound by the chain"; fi
  echo
  echo "| measure | circuit | PoW devnet | circuit / devnet |"
  echo "|---|---|---|---|"
  row "payments in a block / s" "$C" tps %.1f "$P"
  row "send → in a block, p50 ms" "$C" p50_ms %.0f "$P"
  row "send → in a block, p99 ms" "$C" p99_ms %.0f "$P"
  echo "| payments confirmed / sent | $(j "$C" confirmed) / $N | $(j "$P" confirmed) / $N | |"
  echo "| finality | final when sealed | 1 confirmation, reorganisable | |"
done
