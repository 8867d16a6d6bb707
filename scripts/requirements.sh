#!/usr/bin/env bash
# Checks, before a long build, that this machine has what MICRO_OS_TEST_REQUIRE declares
# (a comma list, e.g. root,runc,busybox). The tests make a missing declared requirement a
# failure (crates/micro-os/tests/common/require.rs, whose `Need` names these are; keep
# the two alike); this says so at once, in one line, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
has() { command -v "$1" >/dev/null 2>&1; }
missing=()
IFS=',' read -ra names <<<"${MICRO_OS_TEST_REQUIRE:-}"
for n in "${names[@]}"; do
  n="${n//[[:space:]]/}"
  case "$n" in
    "") ;;
    root)
      [ "$(id -u)" = 0 ] || missing+=("root (run as root)") ;;
    runc)
      has runc || missing+=("runc (Debian package runc)") ;;
    busybox)
      [ -f /bin/busybox ] || missing+=("busybox (/bin/busybox from Debian package busybox-static)") ;;
    cgroups)
      [ -e /sys/fs/cgroup/cgroup.controllers ] || [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ] ||
        missing+=("cgroups (a cgroup v1 or v2 hierarchy at /sys/fs/cgroup)") ;;
    iproute2)
      has ip || missing+=("iproute2 (Debian package iproute2)") ;;
    qemu)
      has qemu-system-x86_64 || missing+=("qemu (Debian package qemu-system-x86)") ;;
    kernel)
      compgen -G "/boot/vmlinuz-*" >/dev/null || missing+=("kernel (/boot/vmlinuz-* from Debian package linux-image-amd64)") ;;
    cpio)
      has cpio || missing+=("cpio (Debian package cpio)") ;;
    strip)
      has strip || missing+=("strip (Debian package binutils)") ;;
    curl)
      has curl || missing+=("curl (Debian package curl)") ;;
    npm)
      { has npm && has node; } || missing+=("npm (Debian package npm)") ;;
    tun)
      [ -e /dev/net/tun ] || missing+=("tun (/dev/net/tun: modprobe tun)") ;;
    promtool)
      has promtool || missing+=("promtool (Debian package prometheus)") ;;
    script)
      has script || missing+=("script (Debian package bsdutils)") ;;
    nightly)
      { has rustup && rustup toolchain list | grep -q '^nightly'; } ||
        missing+=("nightly (the nightly Rust toolchain, for cargo-fuzz: rustup toolchain install nightly)") ;;
    *)
      echo "requirements: MICRO_OS_TEST_REQUIRE names \"$n\", which is unknown (known: root, runc, busybox, cgroups, iproute2, qemu, kernel, cpio, strip, curl, npm, promtool, script, nightly)" >&2
      exit 2 ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  printf -v list '%s, ' "${missing[@]}"
  echo "requirements: this machine lacks ${list%, }, which MICRO_OS_TEST_REQUIRE declares" >&2
  exit 1
fi
