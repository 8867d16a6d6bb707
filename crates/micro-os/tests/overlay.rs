//! The encrypted overlay between hosts, end to end: three hosts, each a daemon with a home
//! of its own in a network namespace of its own, joined by veth to a test bridge (in a
//! namespace of its own too: nothing touches the machine's interfaces), each joined to the
//! fabric through the host before it. Each lists the three; a container on a VM of host A
//! (and of host C) reaches a web server in a container on a VM of host B by B's VM address
//! (TCP; and a UDP datagram crosses too), and a capture on the test bridge (host A's port)
//! meanwhile sees WireGuard's UDP between the hosts and not one packet with a VM's address
//! in the clear. Host A's daemon is stopped, killed and restarted: the overlay comes back.
//! And reference-chain nodes on VMs of two hosts find each other (the daemons' heartbeats
//! name them; a node starting is seeded with the others) and converge over the overlay.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, Daemon, Need, TestNet, VMS};
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
    // datagram from va reaches a listener on vb
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
    let send = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello over udp', ('{vb}', 9000))"
    );
    let sent = Command::new("ip").args(["netns", "exec", &ns_of(&a, "va"), "python3", "-c", &send]).status().unwrap();
    assert!(sent.success());
    let got = listener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello over udp");
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
fn chain_nodes_on_two_hosts_find_each_other_and_converge() {
    let Some((_net, hosts)) = joined_hosts("chain_nodes_on_two_hosts_find_each_other_and_converge", 2) else {
        return;
    };
    let [a, b]: [Daemon; 2] = hosts.try_into().ok().unwrap();
    // a mining node on host A; a full node on host B, started once A's heartbeat named
    // A's node, is seeded with it and syncs over the overlay
    a.ok(&["vm", "create", "--name", "chain-a", "--memory", "384", "--cpu", "1"]);
    a.ok(&["vm", "start", "--name", "chain-a"]);
    a.ok(&["container", "create", "--name", "node-a", "--template", "blockchain-full-node", "--vm", "chain-a"]);
    a.ok(&["container", "config", "node-a", "--mine", "true"]);
    a.ok(&["container", "start", "--name", "node-a"]);
    b.ok(&["vm", "create", "--name", "chain-b", "--memory", "384", "--cpu", "1"]);
    b.ok(&["vm", "start", "--name", "chain-b"]);
    b.ok(&["container", "create", "--name", "node-b", "--template", "blockchain-full-node", "--vm", "chain-b"]);
    std::thread::sleep(Duration::from_secs(5));
    b.ok(&["container", "start", "--name", "node-b"]);
    let status = |d: &Daemon, n: &str| -> Option<Value> {
        let o = d.cli(&["chain", "status", "--container", n, "--format", "json"]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (sa, sb) = (status(&a, "node-a"), status(&b, "node-b"));
        let tip = |s: &Option<Value>| s.as_ref().map(|s| (s["height"].as_u64().unwrap_or(0), s["tip"].clone()));
        if let (Some((ha, ta)), Some((hb, tb))) = (tip(&sa), tip(&sb)) {
            if ha >= 5 && ha == hb && ta == tb {
                assert!(sb.unwrap()["peers"].as_u64() >= Some(1));
                break;
            }
        }
        assert!(Instant::now() < deadline, "the nodes on two hosts did not converge: {sa:?} {sb:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
