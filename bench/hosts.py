#!/usr/bin/env python3
"""Issue 13: a forwarded command against the same command on the host itself.

Run by `bash bench/run.sh hosts` (as root), which starts host A's daemon; this starts a
second daemon (host B) on a scratch home of its own, joins B to A's fabric with A's token,
makes a VM on B from A (`vm create --host B`), and then times `GET /api/v1/vms/far` (what
`vm inspect far` asks) at B itself and at A, which forwards it to B over libp2p
(/micro-os/host-api/1, a member's session) — alternating, on kept-alive connections, N
rounds each. Prints p50/p99 of both and the ratio forwarded / local.
"""
import http.client, json, os, socket, statistics, subprocess, sys, tempfile, time

BIN = os.environ["BIN"]
WORK = os.environ["WORK"]
N = int(os.environ.get("HOSTS_RUNS", "300"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cli(home, api, *args):
    env = dict(os.environ, MICRO_OS_HOME=home, MICRO_OS_API=api)
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True, env=env).stdout


def main():
    a_home, a_api = os.environ["MICRO_OS_HOME"], os.environ["MICRO_OS_API"]
    b_home = tempfile.mkdtemp(prefix="hosts-b-", dir=WORK)
    b_port = free_port()
    b_api = f"http://127.0.0.1:{b_port}"
    with open(f"{b_home}/config.json", "w") as f:
        json.dump({"vm_bridge": f"mb{b_port}", "vm_subnet": "10.78.0.0/16", "p2p_mdns": False,
                   "p2p_listen": ["/ip4/127.0.0.1/tcp/0"]}, f)
    cli(b_home, b_api, "init")
    log = open(f"{WORK}/daemon-b.log", "w")
    b = subprocess.Popen([BIN, "daemon", "--api-addr", f"127.0.0.1:{b_port}"], stdout=log, stderr=log,
                         env=dict(os.environ, MICRO_OS_HOME=b_home))
    try:
        for _ in range(100):
            try:
                cli(b_home, b_api, "host", "list")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        t = json.loads(cli(a_home, a_api, "host", "token", "--format", "json"))
        cli(b_home, b_api, "host", "join", t["join"][0], "--token", t["token"])
        b_peer = json.loads(cli(b_home, b_api, "host", "token", "--format", "json"))["peer_id"]
        cli(a_home, a_api, "vm", "create", "--host", b_peer, "--name", "far", "--memory", "128", "--cpu", "0.5")
        # A learns where "far" is from B's next heartbeat
        for _ in range(100):
            try:
                cli(a_home, a_api, "vm", "inspect", "far")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)

        def conn(api, home):
            host, port = api.removeprefix("http://").split(":")
            token = open(f"{home}/token").read().strip()
            return http.client.HTTPConnection(host, int(port)), {"Authorization": f"Bearer {token}"}

        local, forwarded = [], []
        (cb, hb), (ca, ha) = conn(b_api, b_home), conn(a_api, a_home)
        for i in range(N + 20):
            for c, h, out in ((cb, hb, local), (ca, ha, forwarded)):
                t0 = time.perf_counter()
                c.request("GET", "/api/v1/vms/far", headers=h)
                r = c.getresponse()
                body = r.read()
                dt = (time.perf_counter() - t0) * 1000
                assert r.status == 200 and b'"far"' in body, (r.status, body[:200])
                if i >= 20:  # warm-up
                    out.append(dt)
        cli(a_home, a_api, "vm", "rm", "far", "--force")
    finally:
        b.terminate()
        b.wait()
        subprocess.run(["ip", "link", "del", f"mb{b_port}"], capture_output=True)

    def pct(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(round((len(v) - 1) * p)))]

    lp50, lp99, fp50, fp99 = pct(local, 0.5), pct(local, 0.99), pct(forwarded, 0.5), pct(forwarded, 0.99)
    print(f"vm inspect of a VM on host B, {N} rounds each, load {open('/proc/loadavg').read().split()[0]}")
    print()
    print("| measure | at B itself | at A, forwarded to B | forwarded / local |")
    print("|---|---|---|---|")
    print(f"| p50 ms | {lp50:.2f} | {fp50:.2f} | {fp50 / lp50:.2f} |")
    print(f"| p99 ms | {lp99:.2f} | {fp99:.2f} | {fp99 / lp99:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
