#!/usr/bin/env python3
"""Sandbox VM benchmarks (run by bench/run.sh vm, as root, with a daemon running).

- start: `vm create` + `vm start` until the agent reports ready, p50 over N runs, against
  the floor: a bare process in fresh pid/net/mount/uts/ipc namespaces under a new memory
  cgroup (`unshare` + cgroup), measured in the same run.
- density: memory per idle sandbox VM (its cgroup's charge plus its shim's PSS) and how
  many would fit in 2 GiB.
- agent RSS of an idle VM.
- qemu: boot until the agent reports ready, with the accelerator used (report only).
"""
import json, os, statistics, subprocess, sys, time

BIN = os.environ["BIN"]
N = int(os.environ.get("VM_RUNS", "20"))
BATCH = int(os.environ.get("VM_BATCH", "20"))


def cli(*args):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True).stdout


def cgroup_v2():
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def floor_once(i):
    name = f"micro-os-floor-{os.getpid()}-{i}"
    mem = f"/sys/fs/cgroup/{name}" if cgroup_v2() else f"/sys/fs/cgroup/memory/{name}"
    limit = "memory.max" if cgroup_v2() else "memory.limit_in_bytes"
    t = time.perf_counter()
    os.mkdir(mem)
    with open(f"{mem}/{limit}", "w") as f:
        f.write(str(64 << 20))
    subprocess.run(
        ["sh", "-c", f"echo $$ > {mem}/cgroup.procs && exec unshare --pid --fork --mount-proc --net --uts --ipc --mount true"],
        check=True,
    )
    dt = time.perf_counter() - t
    os.rmdir(mem)
    return dt


def vm_once(i):
    name = f"bench-{os.getpid()}-{i}"
    t = time.perf_counter()
    cli("vm", "create", "--name", name, "--memory", "64", "--cpu", "0.5")
    out = cli("vm", "start", name)
    dt = time.perf_counter() - t
    assert "agent ready" in out, out
    cli("vm", "rm", "--force", name)
    return dt


def main():
    vm_once(-1)  # warm: builds blockchain-base and the bridge
    floor, vm = [], []
    for i in range(N):
        floor.append(floor_once(i))
        vm.append(vm_once(i))
    f, v = statistics.median(floor) * 1000, statistics.median(vm) * 1000
    print(f"sandbox vm create+start until agent ready p50: {v:.1f} ms (target < 150 ms); "
          f"floor unshare+cgroup p50: {f:.1f} ms; ratio {v / f:.1f}")

    names = [f"dense-{os.getpid()}-{i}" for i in range(BATCH)]
    for n in names:
        cli("vm", "create", "--name", n, "--memory", "64", "--cpu", "0.1")
        cli("vm", "start", n)
    time.sleep(3)
    # per VM: what its cgroup is charged (agent, its page cache, kernel memory on v1)
    # plus the proportional set size of its shim
    home = os.environ["MICRO_OS_HOME"]
    costs, rss = [], []
    for n in names:
        v = json.loads(cli("vm", "inspect", n, "--format", "json"))
        cg = (f"/sys/fs/cgroup/micro-os/{v['id']}/memory.current" if cgroup_v2()
              else f"/sys/fs/cgroup/memory/micro-os/{v['id']}/memory.usage_in_bytes")
        charged = int(open(cg).read())
        shim = int(open(f"{home}/vms/{v['id']}/shim.pid").read())
        pss = sum(int(l.split()[1]) for l in open(f"/proc/{shim}/smaps_rollup") if l.startswith("Pss:")) * 1024
        costs.append(charged + pss)
        rss.append(int([l for l in open(f"/proc/{v['pid']}/status") if l.startswith("VmRSS")][0].split()[1]))
    per_vm = statistics.median(costs)
    print(f"sandbox density: {per_vm / 2**20:.1f} MiB per idle VM (cgroup charge + shim PSS, median of {BATCH}) "
          f"-> {int(2 * 2**30 / per_vm)} idle VMs in 2 GiB; agent RSS {statistics.median(rss) / 1024:.1f} MiB (target < 15 MiB)")
    for n in names:
        cli("vm", "rm", "--force", n)

    if os.environ.get("QEMU", "1") == "1" and any(f.startswith("vmlinuz-") for f in os.listdir("/boot")):
        boots, accel = [], "?"
        for i in range(int(os.environ.get("QEMU_RUNS", "3"))):
            name = f"qemu-{os.getpid()}-{i}"
            cli("vm", "create", "--name", name, "--memory", "512", "--driver", "qemu")
            if i == 0:
                # the first start also builds the boot files and probes KVM: not timed
                cli("vm", "start", name)
                cli("vm", "stop", "--force", name)
            t = time.perf_counter()
            out = cli("vm", "start", name)
            boots.append(time.perf_counter() - t)
            assert "agent ready" in out, out
            accel = json.loads(cli("vm", "inspect", name, "--format", "json")).get("accel", "?")
            cli("vm", "rm", "--force", name)
        print(f"qemu vm start until agent ready: p50 {statistics.median(boots):.2f} s over {len(boots)} boots, "
              f"accelerator {accel} (report only)")


if __name__ == "__main__":
    sys.exit(main())
