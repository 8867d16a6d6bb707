"""A live daemon for the SDK's tests: the real binary, in a home of its own, on a free port.

The binary is ``$MICRO_OS_BIN``, else the workspace's ``target/debug/micro-os`` (built by
``cargo test``; its companions micro-os-agent and micro-os-node beside it). Containers
and VMs outlive a daemon, so the session removes every one it made before it stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from micro_os import MicroOS

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self) -> None:
        self.bin = os.environ.get("MICRO_OS_BIN") or str(REPO / "target/debug/micro-os")
        if not Path(self.bin).exists():
            raise RuntimeError(f"{self.bin} is missing: build it (cargo build) or set MICRO_OS_BIN")
        self.dir = tempfile.TemporaryDirectory(prefix="micro-os-sdk-")
        self.home = Path(self.dir.name) / "home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home.mkdir()
        # a bridge and subnet of its own, as the Rust tests do; no mDNS on the host
        (self.home / "config.json").write_text(json.dumps({
            "p2p_mdns": False,
            "vm_bridge": f"ms{self.port}",
            "vm_subnet": f"10.{100 + self.port % 100}.{(self.port // 100) % 250}.0/24",
            "p2p_listen": ["/ip4/127.0.0.1/tcp/0"],
        }))
        self.cli("init")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "MICRO_OS_HOME": str(self.home), "MICRO_OS_API": self.url}

    def cli(self, *args: str) -> str:
        out = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"micro-os {' '.join(args)}: {out.stderr}")
        return out.stdout

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    def start(self) -> None:
        log = open(self.home / "daemon.log", "ab")
        self.proc = subprocess.Popen([self.bin, "daemon", "--api-addr", f"127.0.0.1:{self.port}"], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not come up: {(self.home / 'daemon.log').read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def clean(self) -> None:
        with MicroOS(url=self.url, token=self.token) as m:
            for c in m.container.list():
                m.container.remove(c.id, force=True)
            for v in m.vm.list():
                m.vm.remove(v.id, force=True)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    try:
        yield d
    finally:
        try:
            d.clean()
        finally:
            d.stop()
            d.dir.cleanup()
            # the VM bridge is the machine's, not the home's: the Rust tests remove theirs too
            subprocess.run(["ip", "link", "del", f"ms{d.port}"], capture_output=True)


@pytest.fixture()
def micro(daemon: Daemon) -> Iterator[MicroOS]:
    with MicroOS(url=daemon.url, token=daemon.token) as m:
        yield m
