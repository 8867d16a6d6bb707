#!/usr/bin/env bash
# Issue 13's overlay benchmark: TCP throughput and round trips between VMs of two hosts
# over the encrypted overlay (userspace WireGuard, boringtun), against iperf3 over the same
# veth path between the two hosts without the overlay.
#
# Run by `bash bench/run.sh overlay` (as root; it builds the release binaries). Two hosts,
# each a network namespace with a daemon of its own (a scratch home), joined by veth to a
# test bridge in a namespace of its own; host B joins host A's fabric; a sandbox VM on
# each. iperf3 runs in the VMs' network namespaces (where their containers run), then
# between the hosts' namespaces over the bare veth path. Knobs: OVERLAY_SECS (10),
# OVERLAY_MTU (the overlay's TUN MTU, 1420).
set -euo pipefail
: "${BIN:?run through bench/run.sh overlay}" "${WORK:?}"
SECS=${OVERLAY_SECS:-10}
MTU=${OVERLAY_MTU:-1420}
TAG=$$
BR=mob$TAG; HA=moa$TAG; HB=mobb$TAG
cleanup() {
  for h in A B; do
    [ -f "$WORK/host-$h/port" ] && on "$h" vm rm -f "v$h" >/dev/null 2>&1 || true
  done
  for h in A B; do
    home=$WORK/host-$h
    [ -f "$home/pid" ] && kill "$(cat "$home/pid")" 2>/dev/null || true
  done
  sleep 0.5
  ip netns del "$HA" 2>/dev/null || true; ip netns del "$HB" 2>/dev/null || true; ip netns del "$BR" 2>/dev/null || true
  pkill -f "iperf3 -s -p 52" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$BR"; ip -n "$BR" link add br0 type bridge; ip -n "$BR" link set br0 up
i=0
for ns in "$HA" "$HB"; do
  i=$((i + 1))
  ip netns add "$ns"
  ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$BR"
  ip -n "$BR" link set "p$i" master br0 up
  ip -n "$ns" addr add "10.250.9.$i/24" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
done
# one daemon per host namespace (nsenter keeps the machine's /sys, and its cgroups)
start() { # $1 host letter, $2 netns, $3 address, $4 subnet
  local home=$WORK/host-$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$home"
  echo "{\"vm_bridge\": \"mo$1$TAG\", \"vm_subnet\": \"$4\", \"overlay_mtu\": $MTU, \"p2p_mdns\": false, \"p2p_listen\": [\"/ip4/$3/tcp/0\"]}" >"$home/config.json"
  MICRO_OS_HOME=$home "$BIN" init >/dev/null
  MICRO_OS_HOME=$home nsenter --net=/run/netns/"$2" "$BIN" daemon --api-addr "127.0.0.1:$port" >"$home/daemon.log" 2>&1 &
  echo $! >"$home/pid"
  echo "$port" >"$home/port"
}
on() { # $1 host letter, then the CLI's arguments
  local h=$1; shift
  MICRO_OS_HOME=$WORK/host-$h MICRO_OS_API=http://127.0.0.1:$(cat "$WORK/host-$h/port") \
    nsenter --net=/run/netns/"$([ "$h" = A ] && echo "$HA" || echo "$HB")" "$BIN" "$@"
}
start A "$HA" 10.250.9.1 10.71.0.0/24
start B "$HB" 10.250.9.2 10.72.0.0/24
for h in A B; do for _ in $(seq 100); do on "$h" host list >/dev/null 2>&1 && break; sleep 0.1; done; done
TOKEN=$(on A host token --format json | jq -r .token)
JOIN=$(on A host token --format json | jq -r '.join[0]')
on B host join "$JOIN" --token "$TOKEN" >/dev/null
for h in A B; do
  on "$h" vm create --name "v$h" --memory 256 --cpu 1 >/dev/null
  on "$h" vm start --name "v$h" >/dev/null
done
ns_of() { echo "mos-$(on "$1" vm inspect "v$1" --format json | jq -r .id | cut -c1-12)"; }
VA=$(ns_of A); VB=$(ns_of B)
ADDR_B=$(on B vm inspect vB --format json | jq -r .address)
# the overlay comes up with the heartbeats
PING=(busybox ping)
for _ in $(seq 60); do ip netns exec "$VA" "${PING[@]}" -c1 -W1 "$ADDR_B" >/dev/null 2>&1 && break; sleep 1; done
ip netns exec "$VA" "${PING[@]}" -c1 -W1 "$ADDR_B" >/dev/null || { echo "the overlay did not come up"; tail -n 5 "$WORK"/host-*/daemon.log; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# overlay $(date -u +%FT%TZ), ${SECS}s per run, overlay mtu $MTU, load $(load)"
iperf() { # $1 server netns, $2 client netns, $3 server address, $4 port
  ip netns exec "$1" iperf3 -s -p "$4" -1 >/dev/null 2>&1 &
  sleep 0.5
  ip netns exec "$2" iperf3 -c "$3" -p "$4" -t "$SECS" -J | jq '.end.sum_received.bits_per_second'
}
rtt() { # $1 client netns, $2 address: p50 and p99 of 200 pings, ms
  ip netns exec "$1" "${PING[@]}" -c 50 -i 0.01 -q "$2" >/dev/null 2>&1 || true
  ip netns exec "$1" "${PING[@]}" -c 200 -i 0.01 "$2" 2>/dev/null | awk -F'time=' '/time=/{split($2,a," "); print a[1]}' | sort -n |
    awk '{v[NR]=$1} END {printf "%.3f %.3f\n", v[int(NR*0.5)], v[int(NR*0.99)]}'
}
OVER=$(iperf "$VB" "$VA" "$ADDR_B" 5201)
BARE=$(iperf "$HB" "$HA" 10.250.9.2 5202)
read -r O50 O99 < <(rtt "$VA" "$ADDR_B")
read -r B50 B99 < <(rtt "$HA" 10.250.9.2)
mbit() { awk -v b="$1" 'BEGIN{printf "%.0f", b / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.3f", a / b; else print "-" }'; }
echo
echo "VM on host A to VM on host B over the overlay, against host A to host B over the same veth path, load $(load)"
echo
echo "| measure | overlay | bare veth | overlay / bare |"
echo "|---|---|---|---|"
echo "| TCP throughput, Mbit/s (iperf3, ${SECS} s) | $(mbit "$OVER") | $(mbit "$BARE") | $(ratio "$OVER" "$BARE") |"
echo "| round trip p50, ms (ping) | $O50 | $B50 | $(ratio "$O50" "$B50") |"
echo "| round trip p99, ms (ping) | $O99 | $B99 | $(ratio "$O99" "$B99") |"
