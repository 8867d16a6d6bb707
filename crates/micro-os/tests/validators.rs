//! Validators on a circuit, through micro-os: the spec's example verbatim (a consensus
//! circuit of three VMs and `--template blockchain-validator --circuit … --replicate`), a
//! full node outside the circuit that follows over gossip and checks the seals, payments
//! sealed into final blocks, the leader's VM killed (the new leader's validator goes on
//! sealing), a member cut off the bridge and healed, a fourth member that becomes a
//! validator and stops being one when it is removed. At the end every node holds one chain: the same tip, no height sealed twice
//! (each height appears in at most one validator's "sealed block" log line), and every
//! acknowledged payment in it exactly once (the follower's balance is their exact sum); and
//! the full and the light node outside hold the chain as finalized: every block attested
//! by a majority of its validators.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ip, require, Daemon, VMS};
use serde_json::Value;

fn status_of(d: &Daemon, node: &str) -> Option<Value> {
    let o = d.cli(&["chain", "status", "--container", node, "--format", "json"]);
    o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn wallet(d: &Daemon, node: &str) -> Value {
    serde_json::from_str(&d.ok(&["chain", "wallet", "--container", node, "--format", "json"])).unwrap()
}

fn leader_vm(d: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value =
            serde_json::from_str(&d.ok(&["circuit", "view", "--name", "validation-cluster", "--format", "json"]))
                .unwrap();
        if let Some(l) = v["leader"].as_str() {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no leader: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every node in `nodes` answers with the same tip at a height of at least
/// `min`; returns (height, tip).
fn converge(d: &Daemon, nodes: &[String], min: u64, limit: Duration) -> (u64, String) {
    let deadline = Instant::now() + limit;
    loop {
        let all: Vec<Option<Value>> = nodes.iter().map(|n| status_of(d, n)).collect();
        let tips: Vec<(u64, String)> = all
            .iter()
            .flatten()
            .map(|s| (s["height"].as_u64().unwrap_or(0), s["tip"].as_str().unwrap_or("").to_string()))
            .collect();
        if tips.len() == nodes.len() && tips[0].0 >= min && tips.iter().all(|t| *t == tips[0]) {
            return tips[0].clone();
        }
        assert!(Instant::now() < deadline, "nodes {nodes:?} did not converge past {min}: {all:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The heights each validator replica says it sealed.
fn sealed_heights(d: &Daemon, replicas: &[String]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in replicas {
        let logs = d.ok(&["container", "logs", "--name", r]);
        for line in logs.lines() {
            // "INFO sealed block N (hash) with K txs": not "applied sealed block", not "not sealed"
            if let Some(rest) = line.split("INFO sealed block ").nth(1) {
                if let Some(h) = rest.split_whitespace().next().and_then(|h| h.parse().ok()) {
                    out.entry(h).or_default().push(r.clone());
                }
            }
        }
    }
    out
}

#[test]
fn validators_on_a_circuit_seal_one_final_chain_through_faults() {
    let test = "validators_on_a_circuit_seal_one_final_chain_through_faults";
    if !require(test, VMS) {
        return;
    }
    let d = Daemon::start();
    let vms = ["blockchain-node-1", "blockchain-node-2", "blockchain-node-3"];
    for vm in vms {
        d.ok(&["vm", "create", "--name", vm, "--memory", "384", "--cpu", "1"]);
        d.ok(&["vm", "start", "--name", vm]);
    }
    // the spec's example, verbatim
    d.ok(&[
        "circuit",
        "create",
        "--name",
        "validation-cluster",
        "--nodes",
        "blockchain-node-1,blockchain-node-2,blockchain-node-3",
        "--type",
        "consensus",
    ]);
    d.ok(&[
        "container",
        "create",
        "--name",
        "validator",
        "--template",
        "blockchain-validator",
        "--circuit",
        "validation-cluster",
        "--replicate",
    ]);
    d.ok(&["container", "start", "--name", "validator"]);
    // a full node outside the circuit follows the validators' chain
    d.ok(&["vm", "create", "--name", "outside", "--memory", "256", "--cpu", "0.5"]);
    d.ok(&["vm", "start", "--name", "outside"]);
    d.ok(&["container", "create", "--name", "follower", "--template", "blockchain-full-node", "--vm", "outside"]);
    d.ok(&["container", "config", "follower", "--network", "circuit"]);
    let e = d.fails(&["container", "config", "follower", "--mine", "true"], 2);
    assert!(e.contains("sealed by validators"), "{e}");
    d.ok(&["container", "config", "follower", "--mine", "false"]);
    d.ok(&["container", "start", "--name", "follower"]);
    // and a light node outside, which checks each header's seal
    d.ok(&["vm", "create", "--name", "outside-light", "--memory", "256", "--cpu", "0.5"]);
    d.ok(&["vm", "start", "--name", "outside-light"]);
    d.ok(&["container", "create", "--name", "light", "--template", "blockchain-light", "--vm", "outside-light"]);
    d.ok(&["container", "config", "light", "--network", "circuit"]);
    d.ok(&["container", "start", "--name", "light"]);

    let replicas: Vec<String> = vms.iter().map(|vm| format!("validator.{vm}")).collect();
    let mut nodes = replicas.clone();
    nodes.push("follower".into());
    nodes.push("light".into());
    // past the coinbase maturity (10) of the leader's first blocks
    let (height, _) = converge(&d, &nodes, 14, Duration::from_secs(150));
    let s = status_of(&d, "follower").unwrap();
    assert_eq!(s["consensus"], "circuit", "{s}");
    assert_eq!(s["validators"].as_array().unwrap().len(), 3, "the follower knows the three validators: {s}");

    // payments from the leader's validator to the follower, each final once sealed
    let to = wallet(&d, "follower")["address"].as_str().unwrap().to_string();
    let leader = leader_vm(&d);
    let mut sent = 0.0;
    for amount in [1.0, 2.0, 3.0] {
        d.ok(&[
            "chain",
            "send",
            "--container",
            &format!("validator.{leader}"),
            "--to",
            &to,
            "--amount",
            &amount.to_string(),
        ]);
        sent += amount;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while wallet(&d, "follower")["balance"].as_f64() != Some(sent) {
        assert!(Instant::now() < deadline, "the payments were not sealed: {}", wallet(&d, "follower"));
        std::thread::sleep(Duration::from_millis(300));
    }

    // cut a follower member off the bridge: the other two go on sealing; healed, it catches up
    let cut = vms.iter().find(|v| **v != leader).unwrap().to_string();
    ip(&["link", "set", &d.veth(&cut), "down"]);
    let live: Vec<String> = vec![format!("validator.{leader}"), "follower".into(), "light".into()];
    let (cut_height, _) = converge(&d, &live, height + 5, Duration::from_secs(60));
    ip(&["link", "set", &d.veth(&cut), "up"]);
    let (healed, _) = converge(&d, &nodes, cut_height + 3, Duration::from_secs(90));

    // kill the leader's VM: the new leader's validator goes on sealing
    d.ok(&["vm", "stop", "--name", &leader, "--force"]);
    let rest: Vec<String> = nodes.iter().filter(|n| !n.ends_with(&leader)).cloned().collect();
    let (after_kill, _) = converge(&d, &rest, healed + 10, Duration::from_secs(120));
    let new_leader = leader_vm(&d);
    assert_ne!(new_leader, leader);

    // the dead leader's VM comes back and catches up; a fourth member becomes a validator
    d.ok(&["vm", "start", "--name", &leader]);
    d.ok(&["vm", "create", "--name", "blockchain-node-4", "--memory", "384", "--cpu", "1"]);
    d.ok(&["vm", "start", "--name", "blockchain-node-4"]);
    d.ok(&["circuit", "add-node", "--name", "validation-cluster", "--node", "blockchain-node-4"]);
    let mut all = nodes.clone();
    all.push("validator.blockchain-node-4".into());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status_of(&d, "follower");
        if s.as_ref().is_some_and(|s| s["validators"].as_array().is_some_and(|v| v.len() == 4)) {
            break;
        }
        assert!(Instant::now() < deadline, "the fourth member never became a validator: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (end, _) = converge(&d, &all, after_kill + 5, Duration::from_secs(120));
    let s = status_of(&d, "light").unwrap();
    assert_eq!(s["light"], true, "{s}");
    assert_eq!(s["validators"].as_array().map(Vec::len), Some(4), "the light node follows the set: {s}");

    // a member removed from the circuit stops being a validator with the next block (its
    // replica goes with it: its log is read first)
    let sealed_by_4 = sealed_heights(&d, &["validator.blockchain-node-4".to_string()]);
    d.ok(&["circuit", "remove-node", "--name", "validation-cluster", "--node", "blockchain-node-4"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status_of(&d, "follower");
        if s.as_ref().is_some_and(|s| s["validators"].as_array().is_some_and(|v| v.len() == 3)) {
            break;
        }
        assert!(Instant::now() < deadline, "the removed member is still a validator: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    all.pop();
    let (end, _) = converge(&d, &all, end + 2, Duration::from_secs(60));

    // every validator attests what it applied: outside the circuit, the blocks up to the
    // tip are attested by a majority of their set (final without trusting one validator)
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in ["follower", "light"] {
        loop {
            let s = status_of(&d, n).unwrap();
            let finalized = s["finalized"].as_u64().unwrap_or(0);
            assert!(finalized <= s["height"].as_u64().unwrap(), "finalized past the tip: {s}");
            if finalized >= end {
                break;
            }
            assert!(Instant::now() < deadline, "{n}: blocks up to {end} were not attested by a majority: {s}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // one chain, no height sealed twice, every payment in it exactly once
    let mut sealed = sealed_heights(&d, &replicas);
    for (h, by) in sealed_by_4 {
        sealed.entry(h).or_default().extend(by);
    }
    let twice: Vec<_> = sealed.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "heights sealed twice: {twice:?}");
    assert!(sealed.len() as u64 >= end / 2, "the logs show the sealing: {} of {end}", sealed.len());
    assert_eq!(wallet(&d, "follower")["balance"].as_f64(), Some(sent));
    for n in ["validator", "follower", "light"] {
        d.ok(&["container", "rm", "--name", n, "--force"]);
    }
}
