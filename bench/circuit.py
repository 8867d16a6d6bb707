#!/usr/bin/env python3
"""Circuit benchmark (issue 10): a 3-member micro-os circuit of sandbox VMs against a
3-member etcd cluster (Debian's etcd-server 3.4), same machine, same run, same load.

Run by bench/run.sh circuit (as root, with a daemon: $BIN, $MICRO_OS_API, $MICRO_OS_HOME,
$WORK); `circuit.py --etcd-only` runs the etcd half alone and needs none of them.

- etcd: three `etcd` processes started here on 127.0.0.1 (free ports, data in
  $WORK/etcd, default heartbeat/election and fsync settings), killed on exit. The load goes
  to the leader's client URL (etcd's best case: a follower would forward over gRPC).
- micro-os: VMs cb1..cb3 (256 MiB, 1 CPU), `circuit create --name bench --nodes
  cb1,cb2,cb3`, the load through the daemon's API ($MICRO_OS_API).
- load: wrk with bench/circuit.lua for both sides: keys "k0".."k<N-1>" in turn, values of
  the same size, HTTP keep-alive; 1 client (-t1 -c1) and 64 clients (-t2 -c64).
  Writes: etcd POST /v3/kv/put, micro-os PUT /api/v1/circuits/bench/state/{key}; both
  answer once the write is committed. Reads are linearizable on both: etcd POST
  /v3/kv/range (serializable false, a ReadIndex), micro-os GET .../state/{key}.
  Both sides are prefilled with every key first. Writes/s count 2xx answers only; every
  non-2xx answer, socket error and timeout is reported.
- failover: FAILOVER_RUNS times, kill -9 the leader (micro-os: the leader VM's agent, its
  PID 1; etcd: the leader process) and time from the kill to the first committed write,
  starting a write every 10 ms (each with its own timeout, so they overlap); then restart
  the killed member and wait until all three are healthy again. p50 and max. A side
  whose failover fails is reported as failed, after the load figures.

Environment: CIRCUIT_PARTS ("load failover": which parts run), CIRCUIT_DURATION (s per
wrk run, 10), CIRCUIT_CLIENTS ("1 64"), CIRCUIT_THREADS (wrk threads when clients > 1,
2), CIRCUIT_KEYS (1000), CIRCUIT_VALUE (bytes, 128), FAILOVER_RUNS (20; 0 skips),
FAILOVER_POLL_TIMEOUT (s per polled write, 1).
"""
import atexit, base64, ctypes, http.client, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
from urllib.parse import urlparse

ETCD_ONLY = "--etcd-only" in sys.argv[1:]
DURATION = int(os.environ.get("CIRCUIT_DURATION", "10"))
CLIENTS = [int(c) for c in os.environ.get("CIRCUIT_CLIENTS", "1 64").split()]
THREADS = int(os.environ.get("CIRCUIT_THREADS", "2"))
KEYS = int(os.environ.get("CIRCUIT_KEYS", "1000"))
VALUE = int(os.environ.get("CIRCUIT_VALUE", "128"))
FAILOVER_RUNS = int(os.environ.get("FAILOVER_RUNS", "20"))
PARTS = os.environ.get("CIRCUIT_PARTS", "load failover").split()
POLL_TIMEOUT = float(os.environ.get("FAILOVER_POLL_TIMEOUT", "1"))
CIRCUIT = "bench"
LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "circuit.lua")

# >>> ELECTION TIMEOUT of micro-os circuits, printed with the failover figures. The daemon
# does not report its Raft settings (no config endpoint, nothing in `circuit view`), so
# they come from the keys circuit_election_timeout_ms / circuit_heartbeat_ms of
# $MICRO_OS_HOME/config.json when set there, else these defaults (Config::default in
# crates/micro-os/src/home.rs; a member waits up to twice the timeout). Update them if
# those defaults change.
ELECTION_TIMEOUT_MS = 500
HEARTBEAT_MS = 100
# <<<

OWN_WORK = not os.environ.get("WORK")  # run.sh's $WORK is removed by run.sh
WORK = os.environ.get("WORK") or tempfile.mkdtemp(prefix="micro-os-circuit.")
PROCS = []  # everything started here, killed on exit


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    if OWN_WORK:
        shutil.rmtree(WORK, ignore_errors=True)


atexit.register(cleanup)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda s, f: sys.exit(128 + s))

_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no etcd outlives this script


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def value(key):
    return (key + "=" + "v" * VALUE)[:VALUE]


def b64(s):
    return base64.b64encode(s.encode()).decode()


def call(method, url, body=None, headers=None, timeout=10.0):
    """(status, parsed JSON or text); raises OSError on a socket error or timeout."""
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = json.dumps(body) if body is not None else None
        h = dict(headers or {})
        if data is not None:
            h["Content-Type"] = "application/json"
        c.request(method, u.path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw or b"null")
        except ValueError:
            return r.status, raw.decode(errors="replace")
    finally:
        c.close()



def poll_until(what, check, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ValueError, KeyError, subprocess.CalledProcessError):
            pass
        time.sleep(0.1)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")


def prefill(put):
    """Write every key once; put(key) -> HTTP status."""
    for i in range(KEYS):
        st = put(f"k{i}")
        if not 200 <= st < 300:
            raise SystemExit(f"circuit bench: prefill of k{i} answered {st}")


class Etcd:
    def __init__(self):
        ports = free_ports(6)
        self.client = [f"http://127.0.0.1:{p}" for p in ports[:3]]
        self.peer = [f"http://127.0.0.1:{p}" for p in ports[3:]]
        self.names = ["e1", "e2", "e3"]
        self.cluster = ",".join(f"{n}={u}" for n, u in zip(self.names, self.peer))
        self.procs = [None, None, None]
        os.makedirs(f"{WORK}/etcd", exist_ok=True)
        for i in range(3):
            self.start(i)
        self.wait_healthy()

    def start(self, i):
        log = open(f"{WORK}/etcd/{self.names[i]}.log", "ab")
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", self.names[i], "--data-dir", f"{WORK}/etcd/{self.names[i]}",
             "--listen-client-urls", self.client[i], "--advertise-client-urls", self.client[i],
             "--listen-peer-urls", self.peer[i], "--initial-advertise-peer-urls", self.peer[i],
             "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", f"micro-os-bench-{os.getpid()}",
             "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"],
            stdout=log, stderr=log, preexec_fn=die_with_parent,
        )
        PROCS.append(self.procs[i])

    def status(self, i, timeout=2.0):
        st, s = call("POST", f"{self.client[i]}/v3/maintenance/status", {}, timeout=timeout)
        assert st == 200, s
        return s

    def leader(self):
        for i in range(3):
            s = self.status(i)
            if s.get("leader") and s["leader"] == s["header"]["member_id"]:
                return i
        return None

    def healthy(self):
        for i in range(3):
            if self.procs[i].poll() is not None:
                raise SystemExit(f"etcd {self.names[i]} exited; its log:\n" +
                                 open(f"{WORK}/etcd/{self.names[i]}.log").read()[-3000:])
            st, h = call("GET", f"{self.client[i]}/health", timeout=1.0)
            if st != 200 or str(h.get("health")).lower() != "true":
                return False
        leaders = {self.status(i).get("leader") for i in range(3)}
        return len(leaders) == 1 and None not in leaders and "0" not in leaders

    def wait_healthy(self, timeout=60):
        poll_until("etcd's 3 members healthy with one leader", self.healthy, timeout)

    def check_read(self, i, key):
        st, r = call("POST", f"{self.client[i]}/v3/kv/range", {"key": b64(key)})
        got = base64.b64decode(r["kvs"][0]["value"]).decode() if st == 200 and r.get("kvs") else None
        if got != value(key):
            raise SystemExit(f"circuit bench: etcd read of {key} gave {st} {r}")

    def revision(self, i):
        return int(self.status(i)["header"]["revision"])

    def put(self, i, key, timeout=10.0):
        return call("POST", f"{self.client[i]}/v3/kv/put", {"key": b64(key), "value": b64(value(key))}, timeout=timeout)[0]


class MicroOs:
    def __init__(self):
        self.bin = os.environ["BIN"]
        self.api = os.environ["MICRO_OS_API"]
        self.token = open(os.path.join(os.environ["MICRO_OS_HOME"], "token")).read().strip()
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.vms = ["cb1", "cb2", "cb3"]
        for n in self.vms:
            self.cli("vm", "create", "--name", n, "--memory", "256", "--cpu", "1")
            self.cli("vm", "start", "--name", n)
        out = subprocess.run([self.bin, "circuit", "create", "--name", CIRCUIT, "--nodes", ",".join(self.vms)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"circuit bench: `micro-os circuit create` failed: {out.stderr.strip() or out.stdout.strip()}")
        poll_until("the circuit's first leader", lambda: self.view().get("leader"), 60)
        poll_until("the circuit's 3 members healthy", self.healthy, 60)

    def cli(self, *args):
        return subprocess.run([self.bin, *args], check=True, capture_output=True, text=True).stdout

    def view(self):
        return json.loads(self.cli("circuit", "view", "--name", CIRCUIT, "--format", "json"))

    def healthy(self):
        v = self.view()
        return (v.get("leader") and v.get("health") == "ok" and len(v.get("members", [])) == 3
                and all(m.get("health") == "ok" for m in v["members"]))

    def url(self, key):
        return f"{self.api}/api/v1/circuits/{CIRCUIT}/state/{key}"

    def put_answer(self, key, timeout=10.0):
        return call("PUT", self.url(key), {"value": value(key)}, self.auth, timeout=timeout)

    def put(self, key, timeout=10.0):
        return self.put_answer(key, timeout)[0]

    def get_answer(self, key, timeout=10.0):
        return call("GET", self.url(key), headers=self.auth, timeout=timeout)

    def check_read(self, key):
        st, r = call("GET", self.url(key), headers=self.auth)
        got = r["entries"][0]["value"] if st == 200 and isinstance(r, dict) and r.get("entries") else None
        if got != value(key):
            raise SystemExit(f"circuit bench: micro-os read of {key} gave {st} {r}")

    def remove(self):
        try:
            call("DELETE", f"{self.api}/api/v1/circuits/{CIRCUIT}", headers=self.auth)
        except OSError:
            pass
        for n in self.vms:
            subprocess.run([self.bin, "vm", "rm", "--force", "--name", n], capture_output=True)


def wrk(side, op, url, clients, token=""):
    threads = 1 if clients == 1 else min(THREADS, clients)
    env = dict(os.environ, CIRCUIT_SIDE=side, CIRCUIT_OP=op, CIRCUIT_KEYS=str(KEYS), CIRCUIT_VALUE=str(VALUE),
               CIRCUIT_NAME=CIRCUIT, CIRCUIT_TOKEN=token)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{DURATION}s", "--timeout", "10s",
                          "-s", LUA, url], capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"circuit bench: wrk failed ({side} {op} -c{clients}):\n{out.stdout}{out.stderr}")
    r = json.loads(lines[-1])
    r["ok"] = r["requests"] - r["status_errors"]
    r["rate"] = r["ok"] / (r["duration_us"] / 1e6)
    r["errors"] = r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return r


class Failed(Exception):
    pass


def probe_errors(send, clients):
    """After a run with non-2xx answers: the same requests from `clients` threads for 2 s,
    and what the failing answers said (status and the start of the body), by count."""
    seen, lock, end = {}, threading.Lock(), time.monotonic() + 2

    def loop(t):
        i = t * 487
        while time.monotonic() < end:
            i += 1
            try:
                st, body = send(f"k{i % KEYS}")
                why = None if 200 <= st < 300 else f"{st} {json.dumps(body)[:160]}"
            except (OSError, http.client.HTTPException) as e:
                why = f"{type(e).__name__}: {e}"
            if why:
                with lock:
                    seen[why] = seen.get(why, 0) + 1

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def first_write_after_kill(kill, put):
    """Seconds from kill() to the first write put(timeout) answered with 2xx. A new
    attempt starts every 10 ms, each with its own timeout, while earlier ones may still be
    waiting (a write sent during the election can hang until its timeout: the figure must
    not depend on that timeout)."""
    done = threading.Event()
    first, last = [], ["none answered"]
    lock = threading.Lock()

    def attempt():
        try:
            st = put(POLL_TIMEOUT)
            ok, why = 200 <= st < 300, f"HTTP {st}"
        except (OSError, http.client.HTTPException) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        with lock:
            if ok:
                first.append(time.perf_counter())
            else:
                last[0] = why
        if ok:
            done.set()

    t0 = time.perf_counter()
    kill()
    while not done.is_set():
        if time.perf_counter() - t0 > 120:
            raise Failed(f"no write committed within 120 s of the kill (last attempt: {last[0]})")
        threading.Thread(target=attempt, daemon=True).start()
        done.wait(0.01)
    with lock:
        return min(first) - t0


def failover_etcd(etcd, times):
    for _ in range(FAILOVER_RUNS):
        poll_until("an etcd leader", lambda: etcd.leader() is not None, 30)
        l = etcd.leader()
        other = (l + 1) % 3
        p = etcd.procs[l]
        times.append(first_write_after_kill(lambda: os.kill(p.pid, signal.SIGKILL),
                                            lambda t: etcd.put(other, "failover", timeout=t)))
        p.wait()
        etcd.start(l)
        etcd.wait_healthy()


def failover_ours(m, times):
    for _ in range(FAILOVER_RUNS):
        poll_until("a circuit leader", lambda: m.view().get("leader"), 60)
        vm = m.view()["leader"]
        pid = json.loads(m.cli("vm", "inspect", "--name", vm, "--format", "json"))["pid"]
        times.append(first_write_after_kill(lambda: os.kill(pid, signal.SIGKILL),
                                            lambda t: m.put("failover", timeout=t)))

        def restarted():  # the daemon may not have seen the VM stop yet
            subprocess.run([m.bin, "vm", "start", "--name", vm], check=True, capture_output=True)
            return True
        poll_until(f"vm start of {vm} after the kill", restarted, 60)
        poll_until("the circuit's 3 members healthy after the restart", m.healthy, 120)


def our_election_timeout():
    try:
        cfg = json.load(open(os.path.join(os.environ["MICRO_OS_HOME"], "config.json")))
    except (KeyError, OSError, ValueError):
        cfg = {}
    e = cfg.get("circuit_election_timeout_ms", ELECTION_TIMEOUT_MS)
    h = cfg.get("circuit_heartbeat_ms", HEARTBEAT_MS)
    return f"election timeout {e}-{2 * e} ms, heartbeat {h} ms"


def versions():
    def first(cmd, prefix):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True).stdout + ""
        except OSError:
            return "?"
        return next((l.split(prefix, 1)[1].strip() for l in out.splitlines() if prefix in l), "?")
    etcd = first(["etcd", "--version"], "etcd Version:")
    go = first(["etcd", "--version"], "Go Version:")
    ctl = first(["etcdctl", "version"], "etcdctl version:")
    w = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wv = (w.stdout + w.stderr).split()[1] if (w.stdout + w.stderr).startswith("wrk") else "?"
    return f"etcd {etcd} ({go}, etcdctl {ctl}), wrk {wv}"


def ms(us):
    return f"{us / 1000:.2f} ms"


def ratio(a, b):
    return f"**{a / b:.2f}**" if a is not None and b else "—"


def main():
    load0 = os.getloadavg()[0]
    print(f"# circuit: 3 members per side on 127.0.0.1, one machine, data on one disk ({WORK}); {versions()}")
    print(f"# {KEYS} keys k0..k{KEYS - 1}, values {VALUE} B, wrk {DURATION} s per run, clients {CLIENTS}; "
          f"etcd defaults (heartbeat 100 ms, election timeout 1000 ms, fsync on)"
          + ("; etcd only" if ETCD_ONLY else f"; micro-os {os.environ.get('BIN')}"))
    etcd = Etcd()
    el = etcd.leader()
    etcd_url = etcd.client[el]
    prefill(lambda k: etcd.put(el, k))
    etcd.check_read(el, f"k{KEYS - 1}")
    ours, ours_failed = None, None
    if not ETCD_ONLY:
        try:  # without a working circuit the etcd half still runs, and the exit status says so
            ours = MicroOs()
            prefill(ours.put)
            ours.check_read(f"k{KEYS - 1}")
        except (SystemExit, Failed, subprocess.CalledProcessError) as e:
            ours_failed = str(e) + (f" {e.stderr.strip()}" if isinstance(e, subprocess.CalledProcessError) else "")
            print(f"# micro-os half not run: {ours_failed}")
            ours = None

    res = {}  # (side, op, clients) -> wrk result
    stored = {"etcd": 0, "ours": 0}
    if "load" in PARTS:
        # what the writes left in each store, against the 2xx answers wrk counted
        rev0, committed0 = etcd.revision(el), ours.view()["committed"] if ours else 0
        for op in ("put", "get"):
            for c in CLIENTS:
                res[("etcd", op, c)] = wrk("etcd", op, etcd_url, c)
                if ours:
                    r = res[("ours", op, c)] = wrk("micro-os", op, ours.api, c, ours.token)
                    if r["status_errors"]:
                        r["probe"] = probe_errors(ours.put_answer if op == "put" else ours.get_answer, c)
            if op == "put":
                stored = {"etcd": etcd.revision(el) - rev0, "ours": ours.view()["committed"] - committed0 if ours else 0}

    print(f"\n| measure | ratio micro-os/etcd | target | micro-os | etcd 3.4 |")
    print("|---|---|---|---|---|")

    def cell(r):
        if r is None:
            return "not run"
        err = f", **{r['errors']} errors**" if r["errors"] else ""
        return f"{r['rate']:,.0f}/s, p50 {ms(r['p50_us'])}, p99 {ms(r['p99_us'])}{err}"

    for op, what in (("put", "committed writes"), ("get", "linearizable reads")):
        for c in CLIENTS if "load" in PARTS else []:
            o, e = res.get(("ours", op, c)), res[("etcd", op, c)]
            n = f"{c} client" + ("s" if c > 1 else "")
            print(f"| {what}/s, {n} | {ratio(o and o['rate'], e['rate'])} | ≥ 1.0 | {cell(o)} | {cell(e)} |")
            print(f"| {what} p99 latency, {n} | {ratio(o and o['p99_us'], e['p99_us'])} | ≤ 1.0 | "
                  f"{ms(o['p99_us']) if o else 'not run'} | {ms(e['p99_us'])} |")
    sys.stdout.flush()

    fo_etcd, fo_ours, fo_failed = [], [], {}
    if FAILOVER_RUNS and "failover" in PARTS:
        for side, run, arg, times in (("etcd", failover_etcd, etcd, fo_etcd), ("ours", failover_ours, ours, fo_ours)):
            if arg is None:
                continue
            try:
                run(arg, times)
            except (Failed, subprocess.CalledProcessError) as e:
                fo_failed[side] = str(e) + (f" {e.stderr.strip()}" if isinstance(e, subprocess.CalledProcessError) else "")
        election = our_election_timeout()

        def fo(side, t):
            if side in fo_failed:
                return f"**failed at kill {len(t) + 1}**" + (f" (before: p50 {statistics.median(t) * 1000:.0f} ms)" if t else "")
            return f"p50 {statistics.median(t) * 1000:.0f} ms, max {max(t) * 1000:.0f} ms" if t else "not run"
        r = ratio(statistics.median(fo_ours), statistics.median(fo_etcd)) if fo_ours and fo_etcd and not fo_failed else "—"
        print(f"| leader kill -9 → first committed write, {FAILOVER_RUNS} kills (p50 ratio; election timeouts differ) "
              f"| {r} | report | {fo('ours', fo_ours)} ({election}) | {fo('etcd', fo_etcd)} "
              f"(election timeout 1000-2000 ms, heartbeat 100 ms) |")

    errs = {s: sum(r["errors"] for (side, _, _), r in res.items() if side == s) for s in ("ours", "etcd")}
    print(f"\nerrors (non-2xx, socket errors, timeouts) over all load runs: micro-os "
          f"{errs['ours'] if ours else 'not run'}, etcd {errs['etcd']}; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    for (side, op, c), r in sorted(res.items()):
        print(f"  {side} {op} -c{c}: {r['requests']} requests in {r['duration_us'] / 1e6:.1f} s, "
              f"{r['status_errors']} non-2xx, {r['connect_errors'] + r['read_errors'] + r['write_errors']} socket errors, "
              f"{r['timeouts']} timeouts, p90 {ms(r['p90_us'])}, max {ms(r['max_us'])}")
        if "probe" in r:
            print(f"    the same requests again from {c} threads for 2 s, failed answers: "
                  + ("; ".join(f"{n}x {why}" for why, n in sorted(r["probe"].items(), key=lambda x: -x[1])) or "none"))
    if res:
        puts = {s: sum(r["ok"] for (side, op, _), r in res.items() if side == s and op == "put") for s in ("ours", "etcd")}
        print(f"  2xx writes against the stores: etcd {puts['etcd']} answered, revision +{stored['etcd']}"
              + (f"; micro-os {puts['ours']} answered, committed index +{stored['ours']}" if ours else ""))
        if stored["etcd"] < puts["etcd"] or (ours and stored["ours"] < puts["ours"]):
            print("  **a store holds fewer writes than were answered 2xx**")
    if fo_etcd or fo_ours or fo_failed:
        print(f"  failover ms: micro-os {[round(t * 1000) for t in fo_ours]}; etcd {[round(t * 1000) for t in fo_etcd]}")
    for side, why in fo_failed.items():
        print(f"  failover {'micro-os' if side == 'ours' else side} failed: {why}")
    if ours:
        ours.remove()
    if ours_failed:
        raise SystemExit(f"{ours_failed} (the etcd half ran)")
    if fo_failed:
        raise SystemExit(1)

if __name__ == "__main__":
    main()
