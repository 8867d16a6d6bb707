//! Many hosts, one fabric, end to end: three hosts, each a daemon with a home of its own in
//! a network namespace of its own, joined by veth to a test bridge (in a namespace of its
//! own too: nothing touches the machine's interfaces), each joined to the fabric through
//! the host before it. Each lists the three; a container on a VM of host A (and of host C)
//! reaches a web server in a container on a VM of host B by address and by name (the VM
//! bridge's resolver), over TCP and UDP, and a capture on the test bridge (host A's port)
//! meanwhile sees WireGuard's UDP between the hosts and not one packet with a VM's address
//! in the clear; the spec's container network publishes an ingress port that answers on
//! every host and a UDP port in host mode. Host A's daemon is stopped, killed and
//! restarted: the overlay comes back. Reference-chain nodes on VMs of the three hosts find
//! each other (the daemons' heartbeats name them) and converge over the overlay. A
//! circuit with one member per host stays linearizable while its leader's agent is
//! killed, a host is cut off the bridge and a member is paused, and then moves a member
//! from one host to another. With a host's daemon killed and restarted too it fails at
//! times (a known bug of issue 13): that variant is `#[ignore]`d, for `--ignored` runs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ip, require, Daemon, Need, TestNet, VMS};
use serde_json::Value;

/// Captures on a port of the test bridge (host A's, `p1`: forwarded frames do not pass
/// the bridge device itself) for a few seconds (AF_PACKET, Python's standard library):
/// prints one JSON line of what crossed it.
const CAPTURE: &str = r#"
import json, socket, struct, sys, time
nets = [tuple(int(x) for x in n.split('.')[:3]) for n in sys.argv[2].split(',')]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((sys.argv[3], 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
out = {'frames': 0, 'clear_vm': 0, 'wireguard': 0, 'wireguard_data': 0}
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    out['frames'] += 1
    if len(f) < 34 or f[12:14] != b'\x08\x00':
        continue
    ip = f[14:]
    hl = (ip[0] & 15) * 4
    src, dst = tuple(ip[12:15]), tuple(ip[16:19])
    if src in nets or dst in nets:
        out['clear_vm'] += 1
    if ip[9] == 17:
        sport, dport = struct.unpack('!HH', ip[hl:hl + 4])
        if 51820 in (sport, dport):
            out['wireguard'] += 1
            if ip[hl + 8] == 4:
                out['wireguard_data'] += 1
print(json.dumps(out))
"#;

fn subnet_prefix(d: &Daemon) -> String {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(d.home_path().join("config.json")).unwrap()).unwrap();
    let s = cfg["vm_subnet"].as_str().unwrap();
    s[..s.rfind('.').unwrap()].to_string()
}

/// `n` hosts of a [`TestNet`], each a daemon in its namespace, each joined to the fabric
/// through the host before it; `None` when the machine lacks what they need (the test
/// then says it skips).
fn joined_hosts(test: &str, n: usize) -> Option<(TestNet, Vec<Daemon>)> {
    if !require(test, VMS) || !require(test, &[Need::Tun]) {
        return None;
    }
    let net = TestNet::new(n);
    let mut hosts: Vec<Daemon> = net.hosts.iter().map(|(ns, addr)| Daemon::prepared_in(ns, addr)).collect();
    for d in &mut hosts {
        d.spawn();
    }
    for i in 1..n {
        let t: Value = serde_json::from_str(&hosts[i - 1].ok(&["host", "token", "--format", "json"])).unwrap();
        let at = t["join"][0].as_str().unwrap();
        assert!(at.starts_with(&format!("/ip4/10.250.0.{i}/")), "{at}");
        hosts[i].ok(&["host", "join", at, "--token", t["token"].as_str().unwrap()]);
    }
    Some((net, hosts))
}

#[test]
fn containers_on_three_hosts_reach_each_other_over_the_encrypted_overlay() {
    let test = "containers_on_three_hosts_reach_each_other_over_the_encrypted_overlay";
    let Some((net, hosts)) = joined_hosts(test, 3) else {
        return;
    };
    let [mut a, b, c]: [Daemon; 3] = hosts.try_into().ok().unwrap();
    // every host lists the three, up
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in [&a, &b, &c] {
        loop {
            let list: Vec<Value> = serde_json::from_str(&d.ok(&["host", "list", "--format", "json"])).unwrap();
            if list.len() == 3 && list.iter().all(|h| h["state"] != "unreachable") {
                break;
            }
            assert!(Instant::now() < deadline, "{list:#?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    for (d, vm) in [(&a, "va"), (&b, "vb"), (&c, "vc")] {
        d.ok(&["vm", "create", "--name", vm, "--memory", "128", "--cpu", "0.5"]);
        d.ok(&["vm", "start", "--name", vm]);
    }
    let vb = b.vm("vb")["address"].as_str().unwrap().to_string();
    b.ok(&[
        "container",
        "create",
        "--name",
        "srv",
        "--vm",
        "vb",
        "--image",
        "busybox",
        "--",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    b.ok(&["container", "start", "srv"]);

    // the overlay comes up with the heartbeats: a client on va reaches vb's web server
    let fetch = format!("printf 'GET /group HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vb} 80 | tail -1");
    let reaches = |a: &Daemon, vm: &str, b: &Daemon, when: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = a.cli(&["container", "run", "--rm", "--vm", vm, "--image", "busybox", "--", "sh", "-c", &fetch]);
            if String::from_utf8_lossy(&o.stdout).contains("nogroup:x:65534:") {
                return;
            }
            assert!(Instant::now() < deadline, "{vm} never reached vb {when}:\n{}\n{}", a.log(), b.log());
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    reaches(&a, "va", &b, "over the overlay");
    reaches(&c, "vc", &b, "over the overlay, from the third host");

    // by name: the VM bridge's resolver on host A answers host B's container, by its full
    // name and by its bare one (the container's network is the search domain), and an
    // unknown name of the network is NXDOMAIN
    let lookup = |name: &str| {
        let script = format!("nslookup {name} | awk '/^Address/ {{a=$NF}} END {{print a}}'");
        let o = a.cli(&["container", "run", "--rm", "--vm", "va", "--image", "busybox", "--", "sh", "-c", &script]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while lookup("srv.micro-os") != vb {
        assert!(Instant::now() < deadline, "srv.micro-os does not resolve to {vb} on host A: {}", a.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(lookup("srv"), vb, "the bare name, through the search domain");
    let o = a.cli(&["container", "run", "--rm", "--vm", "va", "--image", "busybox", "--", "nslookup", "nope.micro-os"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("NXDOMAIN"), "{}", String::from_utf8_lossy(&o.stdout));
    // TCP by name, across the hosts
    let by_name = "ip=$(nslookup srv.micro-os | awk '/^Address/ {a=$NF} END {print a}'); \
                   printf 'GET /group HTTP/1.0\r\n\r\n' | nc -w 3 $ip 80 | tail -1";
    let o = c.cli(&["container", "run", "--rm", "--vm", "vc", "--image", "busybox", "--", "sh", "-c", by_name]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nogroup:x:65534:"), "host C did not reach srv by name");

    // the same again with a capture on the test bridge: only WireGuard crosses it
    let nets = format!("{},{},{}", subnet_prefix(&a), subnet_prefix(&b), subnet_prefix(&c));
    let capture = Command::new("ip")
        .args(["netns", "exec", &net.bridge_ns, "python3", "-c", CAPTURE, "6", &nets, "p1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = a.cli(&["container", "run", "--rm", "--vm", "va", "--image", "busybox", "--", "sh", "-c", &fetch]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nogroup:x:65534:"));
    let seen: Value = serde_json::from_slice(&capture.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(seen["clear_vm"], 0, "VM traffic crossed the hosts' bridge in the clear: {seen}");
    assert!(seen["wireguard_data"].as_u64() > Some(0), "no WireGuard data packets on the bridge: {seen}");
    // host A's `host list` shows its overlay link to B: a handshake, bytes both ways
    let list: Vec<Value> = serde_json::from_str(&a.ok(&["host", "list", "--format", "json"])).unwrap();
    let to_b = list.iter().find(|h| h["peer_id"] == b.peer_id().as_str()).unwrap();
    assert!(to_b["overlay"]["handshake_s_ago"].as_u64().is_some(), "{to_b:#}");
    assert!(to_b["overlay"]["rx_bytes"].as_u64() > Some(0) && to_b["overlay"]["tx_bytes"].as_u64() > Some(0));
    assert!(list[0].get("overlay").is_none(), "no link to itself: {:#}", list[0]);
    // UDP too, between the VMs' network namespaces (where their containers run): a
    // datagram from va, to the address srv's name resolves to there, reaches a listener
    // on vb
    let ns_of = |d: &Daemon, vm: &str| format!("mos-{}", &d.vm(vm)["id"].as_str().unwrap()[..12]);
    let listener = Command::new("ip")
        .args(["netns", "exec", &ns_of(&b, "vb"), "python3", "-c"])
        .arg(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9000)); \
             s.settimeout(20); print(s.recvfrom(100)[0].decode())",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // to the address the resolver gave va for srv's name
    let to = lookup("srv");
    let send = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello over udp', ('{to}', 9000))"
    );
    let sent = Command::new("ip").args(["netns", "exec", &ns_of(&a, "va"), "python3", "-c", &send]).status().unwrap();
    assert!(sent.success());
    let got = listener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello over udp");
    // the spec's container network: port 8080 in ingress mode answers on every host (each
    // forwards over the overlay to the container on vb), 9000/udp in host mode on host B
    let deploy = serde_json::json!({"containers": [{
        "name": "web", "image": "busybox", "vm": "vb",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
        "network": {"mode": "overlay", "encryption": true, "discovery": "libp2p", "ports": {
            "8080": {"protocol": "tcp", "mode": "ingress"}, "9000": {"protocol": "udp", "mode": "host"}}}
    }]});
    let file = b.home_path().join("deploy.json");
    std::fs::write(&file, deploy.to_string()).unwrap();
    b.ok(&["container", "deploy", "--from-file", file.to_str().unwrap()]);
    if b.inspect("web")["state"] != "running" {
        b.ok(&["container", "start", "web"]);
    }
    // bad network settings are refused with the key named, and make nothing
    let bad = serde_json::json!({"containers": [{"name": "bad", "image": "busybox", "vm": "vb",
        "network": {"mode": "overlay", "ports": {"8080": {"protocol": "sctp"}}}}]});
    std::fs::write(&file, bad.to_string()).unwrap();
    let e = b.fails(&["container", "deploy", "--from-file", file.to_str().unwrap()], 2);
    assert!(e.contains("network"), "{e}");
    assert!(!b.names().contains(&"bad".to_string()));
    let ingress_answers = |ns: String| {
        std::thread::spawn(move || {
            common::enter_netns(&ns);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = std::net::TcpStream::connect("127.0.0.1:8080").and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"GET /group HTTP/1.0\r\n\r\n")?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok(out)
                });
                match got {
                    Ok(out) if out.contains("nogroup:x:65534:") => return,
                    _ if Instant::now() > deadline => panic!("ingress port 8080 does not answer on {ns}: {got:?}"),
                    _ => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        })
    };
    for (ns, _) in &net.hosts {
        ingress_answers(ns.clone()).join().unwrap();
    }
    // 9000/udp on host B's loopback reaches a listener in web's network namespace (vb's)
    let echo = Command::new("ip")
        .args(["netns", "exec", &ns_of(&b, "vb"), "python3", "-c"])
        .arg(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9000)); \
             s.settimeout(20); d, a = s.recvfrom(100); s.sendto(b'pong ' + d, a)",
        )
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let ping = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10); \
                s.sendto(b'ping', ('127.0.0.1', 9000)); print(s.recvfrom(100)[0].decode())";
    let o = Command::new("ip").args(["netns", "exec", &net.hosts[1].0, "python3", "-c", ping]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "pong ping", "{}", String::from_utf8_lossy(&o.stderr));
    let _ = echo.wait_with_output();
    // host mode is a published port of the container itself (its shim's, on host B)
    assert!(b.inspect("web")["ports"].to_string().contains("9000:9000/udp"), "{}", b.inspect("web"));

    // the overlay's device leaves the daemon's signals alone: SIGTERM still stops it
    let (status, took) = a.terminate();
    assert!(status.success() && took < Duration::from_secs(10), "{status:?} after {took:?}");
    a.spawn();
    // a host's daemon killed and restarted: its VMs ran on, the overlay comes back with it
    a.kill9();
    a.spawn();
    reaches(&a, "va", &b, "after host A's daemon was killed and restarted");
}

#[test]
fn chain_nodes_on_three_hosts_find_each_other_and_converge() {
    let Some((_net, hosts)) = joined_hosts("chain_nodes_on_three_hosts_find_each_other_and_converge", 3) else {
        return;
    };
    // a mining node on host A; full nodes on hosts B and C, started once A's heartbeat
    // named A's node, are seeded with it and sync over the overlay
    let node = |d: &Daemon, vm: &str, name: &str| {
        d.ok(&["vm", "create", "--name", vm, "--memory", "384", "--cpu", "1"]);
        d.ok(&["vm", "start", "--name", vm]);
        d.ok(&["container", "create", "--name", name, "--template", "blockchain-full-node", "--vm", vm]);
    };
    node(&hosts[0], "chain-a", "node-a");
    hosts[0].ok(&["container", "config", "node-a", "--mine", "true"]);
    hosts[0].ok(&["container", "start", "--name", "node-a"]);
    node(&hosts[1], "chain-b", "node-b");
    node(&hosts[2], "chain-c", "node-c");
    std::thread::sleep(Duration::from_secs(5));
    hosts[1].ok(&["container", "start", "--name", "node-b"]);
    hosts[2].ok(&["container", "start", "--name", "node-c"]);
    let status = |d: &Daemon, n: &str| -> Option<Value> {
        let o = d.cli(&["chain", "status", "--container", n, "--format", "json"]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let s: Vec<Option<Value>> =
            hosts.iter().zip(["node-a", "node-b", "node-c"]).map(|(d, n)| status(d, n)).collect();
        let tips: Vec<Option<(u64, Value)>> =
            s.iter().map(|s| s.as_ref().map(|s| (s["height"].as_u64().unwrap_or(0), s["tip"].clone()))).collect();
        if let [Some(a), Some(b), Some(c)] = tips.as_slice() {
            if a.0 >= 5 && a == b && b == c {
                for st in &s[1..] {
                    assert!(st.as_ref().unwrap()["peers"].as_u64() >= Some(1));
                }
                break;
            }
        }
        assert!(Instant::now() < deadline, "the nodes on three hosts did not converge: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_circuit_with_a_member_on_each_host_stays_linearizable_through_faults() {
    circuit_across_hosts("a_circuit_with_a_member_on_each_host_stays_linearizable_through_faults", false);
}

/// The same with a host's daemon killed and restarted among the faults.
#[test]
#[ignore = "known bug (issue 13): after host B's daemon restarts, B's member at times stays cut off from the leader for 30 s+ (a candidate with a higher term, or reads finding no leader); run with --ignored to reproduce"]
fn a_circuit_across_hosts_survives_a_host_daemon_restart() {
    circuit_across_hosts("a_circuit_across_hosts_survives_a_host_daemon_restart", true);
}

fn circuit_across_hosts(test: &str, restart_host: bool) {
    use common::circuit::{all_caught_up, client, leader, view, wait_view};
    use micro_os_circuit::check::Recorder;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let Some((net, hosts)) = joined_hosts(test, 3) else {
        return;
    };
    let [a, mut b, c]: [Daemon; 3] = hosts.try_into().ok().unwrap();
    for (d, vm) in [(&a, "m1"), (&b, "m2"), (&c, "m3")] {
        d.ok(&["vm", "create", "--name", vm, "--memory", "128", "--cpu", "0.5"]);
        d.ok(&["vm", "start", "--name", vm]);
    }
    // made from host A, of VMs on A, B and C: once the heartbeats name B's and C's VMs as
    // ready and the overlay is up (a refusal makes nothing)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = a.cli(&["circuit", "create", "--name", "lin", "--nodes", "m1,m2,m3"]);
        if o.status.success() {
            break;
        }
        assert_eq!(a.ok(&["circuit", "list", "--format", "json"]).trim(), "[]", "a refused create made something");
        assert!(Instant::now() < deadline, "no circuit across the hosts: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_secs(1));
    }
    let v = wait_view(&a, "lin", "three caught-up members", Duration::from_secs(60), |v| all_caught_up(v, 3));
    let host_of = |vm: &str| {
        v["members"].as_array().unwrap().iter().find(|m| m["vm"] == vm).unwrap()["host"].as_str().map(String::from)
    };
    assert_eq!(host_of("m1"), None, "m1 is on the circuit's own host: {v:#}");
    assert_eq!(host_of("m2"), Some(b.peer_id()), "{v:#}");
    assert_eq!(host_of("m3"), Some(c.peer_id()), "{v:#}");
    // the circuit is A's, and any host answers for it (forwarded to A), once A's
    // heartbeat has named it
    let deadline = Instant::now() + Duration::from_secs(10);
    for (d, name) in [(&b, "B"), (&c, "C")] {
        while !d.cli(&["circuit", "view", "--name", "lin"]).status.success() {
            assert!(Instant::now() < deadline, "host {name} never learnt of circuit lin");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let w = c.ok(&["circuit", "state", "set", "--name", "lin", "--via", "m2", "config/batch_size", "128"]);
    assert!(w.contains("version 1"), "{w}");
    for vm in ["m1", "m2", "m3"] {
        let r = b.ok(&["circuit", "state", "get", "--name", "lin", "--via", vm, "config/batch_size"]);
        assert!(r.contains("128"), "{vm}: {r}");
    }

    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let members: Vec<String> = ["m1", "m2", "m3"].iter().map(|s| s.to_string()).collect();
    let clients: Vec<_> = (1..=3)
        .map(|id| {
            let (url, token, members, ns) = (a.url(), a.token(), members.clone(), net.hosts[0].0.clone());
            let (rec, stop, done) = (rec.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                // host A's API listens on A's loopback
                common::enter_netns(&ns);
                client(url, token, id, members, rec, stop, done)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut acknowledged = Vec::new();
    // an operator's write: tried again while an election is under way (a member back
    // from a partition, with a higher term, makes the leader step down); setting the same
    // value twice is harmless, and only an acknowledged write counts
    let mut write = |d: &Daemon, key: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = d.cli(&["circuit", "state", "set", "--name", "lin", key, "yes"]);
            if o.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "write {key}: {}", String::from_utf8_lossy(&o.stderr));
            std::thread::sleep(Duration::from_millis(300));
        }
        acknowledged.push(key.to_string());
    };

    // 1. kill -9 the leader's agent, wherever it runs: a new leader commits; the VM,
    //    started again from host A, rejoins and catches up
    let old = leader(&view(&a, "lin"));
    let pid = a.vm(&old)["pid"].as_u64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_view(&a, "lin", "a new leader", Duration::from_secs(20), |v| {
        v["leader"].is_string() && v["leader"] != old.as_str()
    });
    write(&a, "after-kill");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.vm(&old)["state"] != "stopped" {
        assert!(Instant::now() < deadline, "vm {old} did not stop after its agent was killed");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.ok(&["vm", "start", "--name", &old]);
    wait_view(&a, "lin", "the killed member caught up", Duration::from_secs(40), |v| all_caught_up(v, 3));

    // 2. cut off the test bridge a host (B or C) whose member follows: the other two
    //    commit; the cut-off member is unreachable, and a write through it fails
    let l = leader(&view(&a, "lin"));
    let (cut_vm, port) = if l == "m3" { ("m2", "p2") } else { ("m3", "p3") };
    ip(&["-n", &net.bridge_ns, "link", "set", port, "down"]);
    write(&a, "partition/majority");
    let o = a.cli(&["circuit", "state", "set", "--name", "lin", "--via", cut_vm, "partition/minority", "no"]);
    assert!(!o.status.success(), "a write through the cut-off host's member succeeded");
    wait_view(&a, "lin", "the cut-off member unreachable", Duration::from_secs(20), |v| {
        v["members"].as_array().unwrap().iter().any(|m| m["vm"] == cut_vm && m["health"] == "unreachable")
    });
    ip(&["-n", &net.bridge_ns, "link", "set", port, "up"]);
    wait_view(&a, "lin", "the cut-off member caught up", Duration::from_secs(60), |v| all_caught_up(v, 3));

    // 3. pause B's member from host A, write, resume: it catches up
    a.ok(&["vm", "pause", "--name", "m2"]);
    write(&a, "paused/write");
    a.ok(&["vm", "resume", "--name", "m2"]);
    wait_view(&a, "lin", "the paused member caught up", Duration::from_secs(40), |v| all_caught_up(v, 3));

    if restart_host {
        // 4. host B's daemon killed (its end of the overlay with it: its member is cut off)
        //    and restarted: the others commit meanwhile, and B's member catches up after
        b.kill9();
        wait_view(&a, "lin", "a leader off host B", Duration::from_secs(30), |v| {
            v["leader"].is_string() && v["leader"] != "m2"
        });
        write(&a, "host-b/down");
        b.spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !all_caught_up(&view(&a, "lin"), 3) {
            if Instant::now() > deadline {
                diagnose(&net, &a, &b, &c);
                panic!("B's member did not catch up after its daemon's restart: {:#}", view(&a, "lin"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        write(&a, "host-b/back");
    }

    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.join().unwrap();
    }
    assert!(done.load(Ordering::SeqCst) >= 30, "too few operations completed: {}", done.load(Ordering::SeqCst));
    let verdict = rec.check();
    assert!(verdict.is_linearizable(), "{verdict}");
    eprintln!("{} operations across three hosts, {verdict}", rec.events().len());
    // nothing acknowledged is lost: every key read linearizably through each member
    for vm in ["m1", "m2", "m3"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let all: Value = loop {
            let o = a.cli(&["circuit", "state", "list", "--name", "lin", "--via", vm, "--format", "json"]);
            if o.status.success() {
                break serde_json::from_slice(&o.stdout).unwrap();
            }
            if Instant::now() > deadline {
                diagnose(&net, &a, &b, &c);
                panic!("list via {vm}: {}", String::from_utf8_lossy(&o.stderr));
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let keys: Vec<&str> = all["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
        for k in &acknowledged {
            assert!(keys.contains(&k.as_str()), "{vm} lacks acknowledged key {k}");
        }
    }
    // a member moves between hosts' VMs: a new VM of host B joins, C's member leaves
    b.ok(&["vm", "create", "--name", "m4", "--memory", "128", "--cpu", "0.5"]);
    b.ok(&["vm", "start", "--name", "m4"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = a.cli(&["circuit", "add-node", "--name", "lin", "--node", "m4"]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "m4 did not join: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_secs(1));
    }
    a.ok(&["circuit", "remove-node", "--name", "lin", "--node", "m3"]);
    let v = wait_view(&a, "lin", "m1, m2, m4", Duration::from_secs(30), |v| all_caught_up(v, 3));
    assert!(v["members"].as_array().unwrap().iter().all(|m| m["vm"] != "m3"), "{v:#}");
    a.ok(&["circuit", "rm", "--name", "lin"]);
}

/// What the three hosts and their members saw, for a failure of `circuit_across_hosts`.
fn diagnose(net: &TestNet, a: &Daemon, b: &Daemon, c: &Daemon) {
    let sh = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        format!("$ {}\n{}{}", args.join(" "), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let m1 = a.vm("m1")["address"].as_str().unwrap().to_string();
    let ns2 = format!("mos-{}", &b.vm("m2")["id"].as_str().unwrap()[..12]);
    let bns = net.hosts[1].0.clone();
    eprintln!("{}", sh(&["ip", "netns", "exec", &ns2, "busybox", "ping", "-c", "2", "-W", "1", &m1]));
    eprintln!("{}", sh(&["ip", "-n", &bns, "route"]));
    eprintln!("{}", sh(&["ip", "-n", &bns, "link"]));
    eprintln!("{}", sh(&["ip", "-n", &ns2, "route"]));
    eprintln!("{}", b.ok(&["host", "list"]));
    eprintln!("{}", b.ok(&["monitor", "network", "--detailed", "--vm", "m2"]));
    eprintln!("B's log: {}", b.log());
    for (d, vm) in [(a, "m1"), (b, "m2"), (c, "m3")] {
        let id = d.vm(vm)["id"].as_str().unwrap().to_string();
        let log = std::fs::read_to_string(d.home_path().join("vms").join(&id).join("console.log"));
        let log = log.unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        eprintln!("{vm}'s console, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    eprintln!("{}", a.ok(&["monitor", "network", "--detailed", "--vm", "m1"]));
}
