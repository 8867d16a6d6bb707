//! Hosts that join into one fabric, end to end: three daemons with homes of their own on
//! one machine (libp2p on loopback), `host token`, `host join` refused without the token
//! and accepted with it (at the founder, and at a host that joined — any member admits),
//! `host list` from each host showing all three up with their capacity, the membership
//! kept across a `kill -9` of a daemon, and `host leave`.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;

fn hosts(d: &Daemon) -> Vec<Value> {
    serde_json::from_str(&d.ok(&["host", "list", "--format", "json"])).unwrap()
}

/// Waits until `d` lists exactly `peers`, every one up (or this host) with a heartbeat's
/// capacity.
fn sees(d: &Daemon, peers: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = hosts(d);
        let mut ids: Vec<String> = list.iter().map(|h| h["peer_id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        let mut want = peers.to_vec();
        want.sort();
        let all_up = list.iter().all(|h| {
            ["up", "this host"].contains(&h["state"].as_str().unwrap()) && h["status"]["cpus"].as_u64() > Some(0)
        });
        if ids == want && all_up {
            assert_eq!(list[0]["peer_id"], d.peer_id(), "this host comes first");
            assert_eq!(list[0]["state"], "this host");
            assert!(list.iter().all(|h| h["status"]["memory_bytes"].as_u64() > Some(0)), "{list:#?}");
            return;
        }
        assert!(Instant::now() < deadline, "{} should see {peers:?}: {list:#?}", d.peer_id());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn token(d: &Daemon) -> (String, String) {
    let t: Value = serde_json::from_str(&d.ok(&["host", "token", "--format", "json"])).unwrap();
    (t["token"].as_str().unwrap().to_string(), t["join"][0].as_str().unwrap().to_string())
}

#[test]
fn hosts_join_with_the_token_list_each_other_and_leave() {
    let a = Daemon::start();
    let mut b = Daemon::start();
    let c = Daemon::start();
    let (pa, pb, pc) = (a.peer_id(), b.peer_id(), c.peer_id());
    // alone, each host is a fabric of one
    sees(&a, std::slice::from_ref(&pa));
    let (tok, at_a) = token(&a);
    assert_eq!(tok.len(), 64);
    assert!(at_a.ends_with(&format!("/p2p/{pa}")), "{at_a}");
    let mode = std::fs::metadata(a.home_path().join("host.token")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);

    // bad input and a wrong token are refused, and change nothing
    let e = b.fails(&["host", "join", &at_a, "--token", &"0".repeat(64)], 2);
    assert!(e.contains("refused to admit this host") && e.contains("not this fabric's"), "{e}");
    let e = b.fails(&["host", "join", "/ip4/127.0.0.1/tcp/1", "--token", &tok], 2);
    assert!(e.contains("/p2p/<peer id>"), "{e}");
    let e = b.fails(&["host", "join", "nonsense", "--token", &tok], 2);
    assert!(e.contains("is not a multiaddr"), "{e}");
    sees(&b, std::slice::from_ref(&pb));
    sees(&a, std::slice::from_ref(&pa));

    // b joins a with the token; c joins through b, which holds the fabric's token now
    let out = b.ok(&["host", "join", &at_a, "--token", &tok]);
    assert!(out.contains("joined a fabric of 2 hosts"), "{out}");
    let (tok_b, at_b) = token(&b);
    assert_eq!(tok_b, tok, "one fabric, one token");
    c.ok(&["host", "join", &at_b, "--token", &tok]);
    let all = vec![pa.clone(), pb.clone(), pc.clone()];
    for d in [&a, &b, &c] {
        sees(d, &all);
    }
    // a host in a fabric joins no other before it leaves
    let e = c.fails(&["host", "join", &at_a, "--token", &tok], 4);
    assert!(e.contains("host leave"), "{e}");

    // the membership survives a kill -9 of a daemon
    b.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hosts(&a).iter().any(|h| h["peer_id"] == pb.as_str() && h["state"] == "unreachable") {
        assert!(Instant::now() < deadline, "a never saw b unreachable: {:#?}", hosts(&a));
        std::thread::sleep(Duration::from_millis(300));
    }
    b.spawn();
    for d in [&a, &b, &c] {
        sees(d, &all);
    }

    // c leaves: a and b forget it, and c stands alone with a token of its own
    c.ok(&["host", "leave"]);
    sees(&c, std::slice::from_ref(&pc));
    let two = vec![pa.clone(), pb.clone()];
    sees(&a, &two);
    sees(&b, &two);
    assert_ne!(token(&c).0, tok);
    let e = c.fails(&["host", "leave"], 4);
    assert!(e.contains("no fabric but its own"), "{e}");
}

#[test]
fn a_vm_is_made_and_driven_on_another_host_from_this_one() {
    let test = "a_vm_is_made_and_driven_on_another_host_from_this_one";
    if !common::require(test, common::VMS) {
        return;
    }
    let a = Daemon::start();
    let b = Daemon::start();
    let (pa, pb) = (a.peer_id(), b.peer_id());
    let (tok, at_a) = token(&a);
    b.ok(&["host", "join", &at_a, "--token", &tok]);
    sees(&a, &[pa.clone(), pb.clone()]);
    // a host the fabric does not have
    let e = a.fails(&["vm", "create", "--host", "12D3KooWnope", "--name", "far", "--memory", "128", "--cpu", "0.5"], 3);
    assert!(e.contains("is not in this fabric"), "{e}");
    // made on b from a (a unique prefix of b's peer id will do), started and inspected by name
    let prefix = &pb[..16];
    a.ok(&["vm", "create", "--host", prefix, "--name", "far", "--memory", "128", "--cpu", "0.5"]);
    let on_b: Vec<Value> = serde_json::from_str(&b.ok(&["vm", "list", "--format", "json"])).unwrap();
    assert_eq!(on_b.len(), 1, "{on_b:#?}");
    assert_eq!(on_b[0]["name"], "far");
    let on_a: Vec<Value> = serde_json::from_str(&a.ok(&["vm", "list", "--format", "json"])).unwrap();
    assert!(on_a.is_empty(), "the VM is b's, not a's: {on_a:#?}");
    // a learns from b's heartbeat where "far" is, and forwards what names it
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.cli(&["vm", "start", "--name", "far"]).status.success() {
        assert!(Instant::now() < deadline, "a never forwarded `vm start far` to b");
        std::thread::sleep(Duration::from_millis(300));
    }
    let far: Value = serde_json::from_str(&a.ok(&["vm", "inspect", "far", "--format", "json"])).unwrap();
    assert_eq!(far["state"], "running", "{far:#?}");
    let local: Value = serde_json::from_str(&b.ok(&["vm", "inspect", "far", "--format", "json"])).unwrap();
    assert_eq!(far["id"], local["id"], "the same VM, asked at a and at b");
    // so does a monitor query that names it (once b's collector sampled it)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = a.cli(&["monitor", "resources", "--vm", "far", "--format", "json"]);
        let rows: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if o.status.success() && rows.iter().any(|r| r.to_string().contains(far["id"].as_str().unwrap())) {
            break;
        }
        assert!(Instant::now() < deadline, "a never showed far's resources: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    // a request for this host itself is served here
    let own: Vec<Value> = serde_json::from_str(&a.ok(&["vm", "list", "--host", &pa, "--format", "json"])).unwrap();
    assert!(own.is_empty());
    a.ok(&["vm", "rm", "far", "--force"]);
    let on_b: Vec<Value> = serde_json::from_str(&b.ok(&["vm", "list", "--format", "json"])).unwrap();
    assert!(on_b.is_empty(), "{on_b:#?}");
}

#[test]
fn a_host_with_the_token_in_its_config_joins_at_start() {
    let a = Daemon::start();
    let (tok, at_a) = token(&a);
    let mut d = Daemon::prepared("127.0.0.1");
    d.set_config("host_token", Value::String(tok));
    d.set_config("p2p_bootstrap", serde_json::json!([at_a]));
    d.spawn();
    let both = vec![a.peer_id(), d.peer_id()];
    sees(&a, &both);
    sees(&d, &both);
    // a wrong token in the config joins nothing
    let mut e = Daemon::prepared("127.0.0.1");
    e.set_config("host_token", Value::String("0".repeat(64)));
    e.set_config("p2p_bootstrap", serde_json::json!([at_a]));
    e.spawn();
    std::thread::sleep(Duration::from_secs(5));
    sees(&e, &[e.peer_id()]);
    sees(&a, &both);
}
