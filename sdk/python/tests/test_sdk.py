"""Every namespace of the SDK against a live daemon, the spec's example verbatim, each
exception type, and following logs and events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from micro_os import (
    AsyncMicroOS,
    Conflict,
    DaemonUnreachable,
    InvalidInput,
    MicroOS,
    NotFound,
    Unauthorized,
    Unavailable,
    models,
)

# the spec's example (seed/micro-os-spec.md, "Python SDK"), verbatim
SEED_EXAMPLE = '''from micro_os import MicroOS

# Initialize SDK
micro = MicroOS(config_file="config.json")

# Create a VM
vm = micro.vm.create(name="vm-from-sdk", memory=2048, cpu=1)

# Deploy a container
container = micro.container.create(
    name="container-from-sdk",
    template="blockchain-light",
    vm=vm.id
)

# Enable AI optimization
micro.ai.enable(module="transaction", container=container.id)
'''


def test_the_spec_example_runs_unchanged(daemon, micro, tmp_path: Path) -> None:
    # config.json with the keys the README shows: where the API is, and the home (its token)
    (tmp_path / "config.json").write_text(json.dumps({"api_addr": f"127.0.0.1:{daemon.port}", "home": str(daemon.home)}))
    (tmp_path / "example.py").write_text(SEED_EXAMPLE)
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    vm = micro.vm.get("vm-from-sdk")
    assert isinstance(vm, models.Vm) and vm.memory_mib == 2048 and vm.cpus == 1
    c = micro.container.get("container-from-sdk")
    assert c.vm == vm.id and c.template in ("blockchain-light", "blockchain-light-node")
    modules = [m for m in micro.ai.list() if m.module == "transaction" and m.container == "container-from-sdk"]
    assert modules and modules[0].enabled


def test_the_daemon_is_found_as_the_cli_finds_it(daemon, monkeypatch, tmp_path: Path) -> None:
    # the environment: MICRO_OS_API and the token in MICRO_OS_HOME
    monkeypatch.setenv("MICRO_OS_API", daemon.url)
    monkeypatch.setenv("MICRO_OS_HOME", str(daemon.home))
    monkeypatch.delenv("MICRO_OS_TOKEN", raising=False)
    assert isinstance(MicroOS().vm.list(), list)
    # a daemon's own config.json, in its home: api_addr, and the token beside it
    assert isinstance(MicroOS(config_file=str(daemon.home / "config.json"), url=daemon.url).vm.list(), list)
    # MICRO_OS_TOKEN wins over the home's
    monkeypatch.setenv("MICRO_OS_TOKEN", "wrong")
    with pytest.raises(Unauthorized):
        MicroOS().vm.list()
    (tmp_path / "c.json").write_text(json.dumps({"api": daemon.url, "token_file": str(daemon.home / "token")}))
    assert isinstance(MicroOS(config_file=str(tmp_path / "c.json")).vm.list(), list)


def test_vms_and_containers_on_them(micro: MicroOS) -> None:
    vm = micro.vm.create(name="sdk-vm", memory=256, cpu=0.5)
    assert vm.state == "created" and vm.address
    ready = micro.vm.start("sdk-vm", wait=True)
    assert ready.state == "running" and ready.agent == "ready" and ready.peer_id
    assert any(v.name == "sdk-vm" for v in micro.vm.list())
    c = micro.container.create("sdk-on-vm", image="busybox", vm="sdk-vm",
                               command=["sh", "-c", "echo hello from $(hostname); sleep 60"])
    running = micro.container.start(c.id, wait=True)
    assert running.state == "running" and running.vm == vm.id
    deadline = time.monotonic() + 10
    while not any("hello from" in line for line in micro.container.logs("sdk-on-vm")):
        assert time.monotonic() < deadline, "no log line"
        time.sleep(0.1)
    assert micro.vm.pause("sdk-vm").state == "paused"
    assert micro.vm.resume("sdk-vm").state == "running"
    micro.container.remove("sdk-on-vm", force=True)
    assert micro.vm.stop("sdk-vm", force=True).state == "stopped"
    micro.vm.remove("sdk-vm")
    with pytest.raises(NotFound):
        micro.vm.get("sdk-vm")
    many = micro.vm.create_many([{"name": "sdk-a", "memory": 128}, {"name": "sdk-b", "memory": 128}])
    assert [v.name for v in many] == ["sdk-a", "sdk-b"]
    for v in many:
        micro.vm.remove(v.id)


def test_container_lifecycle_config_logs_and_events(micro: MicroOS) -> None:
    c = micro.container.create("sdk-web", template="busybox-httpd")
    assert isinstance(c, models.Container) and c.state == "created"
    micro.container.start("sdk-web", wait=True)
    got = micro.container.get("sdk-web")
    assert got.health is not None and got.health.status == "healthy"
    assert micro.container.pause("sdk-web").state == "paused"
    assert micro.container.resume("sdk-web").state == "running"
    assert micro.container.stop("sdk-web", timeout=1).state == "exited"
    actions = [e.action for e in micro.container.events("sdk-web")]
    assert actions[0] == "created" and "started" in actions and actions[-1] == "exited", actions
    micro.container.remove("sdk-web")

    box = micro.container.create("sdk-box", image="busybox", env={"GREETING": "hi"}, command=["sleep", "60"], start=True)
    r = micro.container.exec(box.id, ["sh", "-c", "echo $GREETING $MORE; echo err >&2; exit 4"], env={"MORE": "there"})
    assert isinstance(r, models.ExecResult) and (r.exit_code, r.stdout, r.stderr) == (4, "hi there\n", "err\n")
    with pytest.raises(InvalidInput, match="command"):
        micro.container.exec(box.id, [])
    micro.container.remove(box.id, force=True)

    job = micro.container.create("sdk-job", image="busybox", command=["sh", "-c", "echo $GREETING; exit 3"],
                                 env={"GREETING": "hi"}, start=True)
    assert micro.container.wait(job.id).exit_code == 3
    assert micro.container.logs("sdk-job") == ["hi"]
    micro.container.remove("sdk-job")

    # a deploy starts in dependency order; a cycle is refused with nothing created
    with pytest.raises(InvalidInput, match="cycle"):
        micro.container.deploy([{"name": "sdk-x", "image": "busybox", "depends_on": [{"name": "sdk-y"}]},
                                {"name": "sdk-y", "image": "busybox", "depends_on": [{"name": "sdk-x"}]}])
    assert not [c for c in micro.container.list() if c.name in ("sdk-x", "sdk-y")]
    stack = micro.container.deploy([
        {"name": "sdk-app", "image": "busybox", "command": ["sleep", "60"],
         "depends_on": [{"name": "sdk-init", "condition": "completed"}]},
        {"name": "sdk-init", "image": "busybox", "command": ["true"]},
    ])
    assert [(c.name, c.state) for c in stack] == [("sdk-app", "running"), ("sdk-init", "exited")]
    for c in stack:
        micro.container.remove(c.id, force=True)

    node = micro.container.create("sdk-node", template="blockchain-full-node")
    assert micro.container.configure("sdk-node", {"rpc_port": 18555}).id == node.id
    assert micro.container.config("sdk-node")["rpc_port"] == "18555"
    micro.container.remove("sdk-node")


def test_logs_follow_as_the_container_writes(micro: MicroOS) -> None:
    micro.container.create("sdk-ticker", image="busybox", start=True,
                           command=["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"])
    lines = micro.container.logs("sdk-ticker", follow=True)
    first = [next(lines) for _ in range(5)]
    lines.close()
    assert first == [f"tick {i}" for i in range(5)]
    micro.container.remove("sdk-ticker", force=True)


def test_events_stream_and_resume(micro: MicroOS) -> None:
    stream = micro.events.stream(type="container")
    seen: list[models.Event] = []

    def read() -> None:
        for e in stream:
            seen.append(e)
            if e.name == "sdk-evt" and e.action == "removed":
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.5)  # the stream starts with the next event
    micro.container.create("sdk-evt", image="busybox", command=["true"])
    micro.container.remove("sdk-evt")
    t.join(timeout=10)
    assert [(e.name, e.action) for e in seen] == [("sdk-evt", "created"), ("sdk-evt", "removed")]
    assert all(isinstance(e, models.Event) and e.type == "container" for e in seen)
    # resumed after the first, the list has the second only
    again = micro.events.list(type="container", since=seen[0].id)
    assert [e.id for e in again] == [seen[1].id]
    assert [e.id for e in micro.events.list(object="sdk-evt", tail=1)] == [seen[1].id]
    with pytest.raises(InvalidInput, match="pods"):
        micro.events.list(type="pods")


def test_circuits_and_their_state(micro: MicroOS) -> None:
    names = [f"sdk-c{i}" for i in range(3)]
    for n in names:
        micro.vm.create(name=n, memory=128)
        micro.vm.start(n, wait=True)
    try:
        c = micro.circuit.create("sdk-circuit", names)
        assert isinstance(c, models.CircuitView) and len(c.members) == 3
        w = micro.circuit.state.set("sdk-circuit", "height", "42")
        assert w.outcome.result == "stored" and w.outcome.version == 1
        with pytest.raises(Conflict, match="version 1, not 7"):
            micro.circuit.state.set("sdk-circuit", "height", "43", expected_version=7)
        r = micro.circuit.state.get("sdk-circuit", "height")
        assert [(e.key, e.value, e.version) for e in r.entries] == [("height", "42", 1)]
        assert len(micro.circuit.state.all("sdk-circuit", stale=True).entries) == 1
        assert micro.circuit.state.delete("sdk-circuit", "height").outcome.result == "deleted"
        assert micro.circuit.get("sdk-circuit").name == "sdk-circuit"
        assert any(x.name == "sdk-circuit" for x in micro.circuit.list())
        micro.circuit.remove("sdk-circuit")
    finally:
        for n in names:
            micro.vm.remove(n, force=True)


def test_chain_ai_monitor_images_templates_hosts(micro: MicroOS) -> None:
    node = micro.container.create("sdk-chain", template="blockchain-full-node", start=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            st = micro.chain.status("sdk-chain")
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the chain node did not answer"
            time.sleep(0.5)
    assert isinstance(st, models.ChainStatus) and st.network
    assert micro.chain.wallet("sdk-chain").address
    # ai: enable answers the module it enabled; a bad key is InvalidInput; too few samples, Conflict
    on = micro.ai.enable(module="transaction", container="sdk-chain")
    assert [(m.module, m.container, m.enabled) for m in on] == [("transaction", "sdk-chain", True)]
    conf = micro.ai.configure("transaction", {"batch_size": 64}, container="sdk-chain")
    assert conf[0].config["batch_size"] == 64
    with pytest.raises(InvalidInput, match="speed"):
        micro.ai.configure("transaction", {"speed": 1}, container="sdk-chain")
    with pytest.raises(Conflict, match="samples"):
        micro.ai.train("transaction", container="sdk-chain")
    assert isinstance(micro.ai.models(), list)
    assert not [m for m in micro.ai.disable("transaction", "sdk-chain") if m.container == "sdk-chain" and m.enabled]
    # monitor
    assert "micro_os_" in micro.monitor.metrics()
    assert isinstance(micro.monitor.health(), models.HealthReport)
    assert isinstance(micro.monitor.resources(all=True), list)
    assert isinstance(micro.monitor.network(), models.NetStatus)
    assert isinstance(micro.monitor.history(from_="5m"), list)
    assert micro.monitor.export(from_="5m", format="csv").startswith("time,kind,id,name,")
    assert isinstance(micro.monitor.performance("sdk-chain"), models.PerformanceReport)
    assert micro.monitor.daemon_logs(tail=5)
    micro.container.remove(node.id, force=True)
    # images: a build reports progress, then the image
    stages: list[str] = []
    img = micro.images.build("busybox", name="sdk-img", progress=lambda ev: stages.append(ev.event))
    assert isinstance(img, models.ImageInfo) and img.name == "sdk-img"
    assert "progress" in stages and stages[-1] == "done"
    assert any(i.name == "sdk-img" for i in micro.images.list())
    with pytest.raises(Conflict, match="sdk-img"):
        micro.images.build("busybox", name="sdk-img")
    micro.images.remove("sdk-img")
    # templates, hosts, net
    assert micro.templates.get("blockchain-light-node").name == "blockchain-light-node"
    assert len(micro.templates.list()) >= 5
    hosts = micro.host.list()
    assert len(hosts) == 1 and hosts[0].peer_id
    assert micro.host.token().token
    assert micro.net.providers("nothing-provides-this") == []


def test_each_exception_type_carries_the_servers_message(daemon, micro: MicroOS) -> None:
    with pytest.raises(NotFound, match='container "ghost" not found') as e:
        micro.container.get("ghost")
    assert e.value.status == 404 and e.value.problem_type.endswith("/not-found")
    micro.container.create("sdk-twice", image="busybox", command=["true"])
    with pytest.raises(Conflict, match="sdk-twice"):
        micro.container.create("sdk-twice", image="busybox", command=["true"])
    micro.container.remove("sdk-twice")
    with pytest.raises(InvalidInput, match="memory"):
        micro.vm.create(name="sdk-bad", memory=0)
    with pytest.raises(Unauthorized):
        MicroOS(url=daemon.url, token="not-the-token").vm.list()
    with pytest.raises(DaemonUnreachable, match="cannot reach the micro-os daemon"):
        MicroOS(url="http://127.0.0.1:9", token="x").vm.list()
    with pytest.raises(InvalidInput, match="not JSON"):
        MicroOS(config_file=__file__)


def rootfs(tmp_path: Path) -> Path:
    """A small root: a file, a directory, a symlink (kept a link) and a fifo (skipped)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("from the sdk\n")
    os.symlink("/etc/shadow", root / "shadow")
    os.mkfifo(root / "fifo")
    return root


def test_images_and_files_are_uploaded_not_named(daemon, micro: MicroOS, tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    stages: list[str] = []
    img = micro.images.build(name="sdk-dir", from_dir=str(root), progress=lambda ev: stages.append(ev.event))
    assert img.name == "sdk-dir" and "upload root" in img.source
    assert stages[-1] == "done"
    kept = daemon.home / "images" / "sdk-dir" / "rootfs"
    assert (kept / "etc" / "motd").read_text() == "from the sdk\n"
    assert os.readlink(kept / "shadow") == "/etc/shadow", "a link stays a link"
    assert not (kept / "fifo").exists()
    # a tarball as it is, gzip too; a directory that is no image is refused as one
    tarball = tmp_path / "root.tar.gz"
    with tarfile.open(tarball, "w:gz") as t:
        t.add(root / "etc", arcname="etc")
    assert micro.images.import_file(str(tarball), name="sdk-tgz").layers == 1
    with pytest.raises(InvalidInput, match="names no image"):
        micro.images.import_file(str(tarball))
    with pytest.raises(Conflict, match="sdk-dir"):
        micro.images.build(name="sdk-dir", from_dir=str(root))
    with pytest.raises(FileNotFoundError):
        micro.images.import_file(str(tmp_path / "nowhere.tar"))
    for name in ("sdk-dir", "sdk-tgz"):
        micro.images.remove(name)
    assert not list((daemon.home / "spool").iterdir()), "the spool keeps uploads"


def test_the_async_twin(daemon, tmp_path: Path) -> None:
    root = rootfs(tmp_path)

    async def main() -> None:
        async with AsyncMicroOS(url=daemon.url, token=daemon.token) as micro:
            assert (await micro.health()).status == "ok"
            c = await micro.container.create("sdk-async", image="busybox", command=["sh", "-c", "echo one; echo two"])
            await micro.container.start(c.id)
            assert (await micro.container.wait(c.id)).exit_code == 0
            assert await micro.container.logs("sdk-async") == ["one", "two"]
            events = [e async for e in micro.events.stream(object="sdk-async", since=0, follow=False)]
            assert [e.action for e in events][:2] == ["created", "started"]
            assert [e.id for e in await micro.events.list(object="sdk-async", since=0)] == [e.id for e in events]
            await micro.container.remove(c.id)
            with pytest.raises(NotFound):
                await micro.container.get("sdk-async")
            # an upload, streamed from an async generator
            img = await micro.images.build(name="sdk-async-dir", from_dir=str(root))
            assert img.name == "sdk-async-dir"
            await micro.images.remove("sdk-async-dir")

    asyncio.run(main())
