#!/usr/bin/env bash
# Installs what micro-os needs on Debian (as root), builds it, installs the binary and
# the shell completions. `--deps-only` stops after the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (containers need runc, cgroups and mounts): sudo bash scripts/setup.sh" >&2
  exit 2
fi

# qemu-system-x86, linux-image-amd64, cpio and binutils (strip) are for qemu VMs
pkgs=(runc busybox-static iproute2 ca-certificates curl qemu-system-x86 linux-image-amd64 cpio binutils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "${1:-}" = "--deps-only" ] && exit 0

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing: install a Rust toolchain (https://rustup.rs) and run this again" >&2
  exit 1
fi
echo "setup: building micro-os, micro-os-agent and micro-os-node (release)"
cargo build --release --locked -p micro-os -p micro-os-agent -p micro-os-node
install -m 0755 target/release/micro-os /usr/local/bin/micro-os
# the VM agent: the daemon puts it into VM images from beside its own binary
install -m 0755 target/release/micro-os-agent /usr/local/bin/micro-os-agent
# the reference chain's node: likewise put into the blockchain-node image
install -m 0755 target/release/micro-os-node /usr/local/bin/micro-os-node

share=/usr/local/share/micro-os
mkdir -p "$share" /etc/bash_completion.d /usr/local/share/zsh/site-functions
micro-os completion bash > "$share/micro_os_completion.bash"
micro-os completion zsh > "$share/micro_os_completion.zsh"
ln -sf "$share/micro_os_completion.bash" /etc/bash_completion.d/micro-os
ln -sf "$share/micro_os_completion.zsh" /usr/local/share/zsh/site-functions/_micro-os
micro-os init >/dev/null
echo "setup: installed /usr/local/bin/micro-os, micro-os-agent and micro-os-node; completions: source $share/micro_os_completion.bash (or .zsh)"
