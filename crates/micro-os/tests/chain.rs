//! The reference chain through micro-os: the spec's deploy example with the
//! blockchain-full-node template, a node that mines, answers `chain status|wallet|send`
//! over its JSON-RPC, reports healthy, and keeps its chain in its data volume across a
//! restart of its container.

mod common;

use std::time::{Duration, Instant};

use common::{require, Daemon, CONTAINERS};
use serde_json::Value;

fn status(d: &Daemon) -> Value {
    serde_json::from_str(&d.ok(&["chain", "status", "--container", "eth-node-1", "--format", "json"])).unwrap()
}

/// Polls `chain status` until `pred` holds.
fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let o = d.cli(&["chain", "status", "--container", "eth-node-1", "--format", "json"]);
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            if pred(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_full_node_from_its_template_mines_pays_and_keeps_its_chain() {
    let test = "a_full_node_from_its_template_mines_pays_and_keeps_its_chain";
    if !require(test, CONTAINERS) {
        return;
    }
    let node = std::path::Path::new(common::BIN).with_file_name("micro-os-node");
    assert!(node.is_file(), "{} is missing (cargo build -p micro-os-node)", node.display());
    let mut d = Daemon::prepared("127.0.0.1");
    d.set_config("monitor_interval_s", serde_json::json!(0.5));
    d.set_config("chain_alert_no_peers_s", serde_json::json!(1));
    d.spawn();

    // the spec's example: create from the template, configure, start
    d.ok(&["container", "create", "--name", "eth-node-1", "--template", "blockchain-full-node"]);
    // the spec's `container config eth-node-1 --network mainnet --sync-mode fast`, verbatim
    d.ok(&["container", "config", "eth-node-1", "--network", "mainnet", "--sync-mode", "fast"]);
    let c = d.inspect("eth-node-1");
    assert_eq!((c["config"]["network"].as_str(), c["config"]["sync-mode"].as_str()), (Some("mainnet"), Some("fast")));
    let e = d.fails(&["container", "config", "eth-node-1", "--sync-mode", "warp"], 2);
    assert!(e.contains("sync mode \"warp\" is unknown (use full, fast or light)"), "{e}");
    let e = d.fails(&["container", "config", "eth-node-1", "--network", "moon"], 2);
    assert!(e.contains("known: devnet, mainnet, circuit"), "{e}");
    let e = d.fails(&["chain", "status", "--container", "eth-node-1"], 4);
    assert!(e.contains("start it first"), "{e}");
    d.ok(&["container", "config", "eth-node-1", "--network", "devnet", "--sync-mode", "full", "--mine", "true"]);
    d.ok(&["container", "start", "--name", "eth-node-1"]);

    // it mines; its logs say so; coinbase matures after 10 blocks on devnet
    let s = wait_status(&d, "12 blocks", |s| s["height"].as_u64().is_some_and(|h| h >= 12));
    assert_eq!(s["network"], "devnet", "{s}");
    assert!(s["hashrate"].as_f64().is_some_and(|h| h > 0.0), "{s}");
    let logs = d.ok(&["container", "logs", "--name", "eth-node-1"]);
    assert!(logs.contains("mined block 1 "), "{logs}");
    d.wait_for("eth-node-1", "healthy", |c| c["health"]["status"] == "healthy");

    // watched: its figures in /metrics and the history, its component's health, and the
    // default alert of a node without peers (after 1 s here)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = d.api("GET", "/metrics").call().unwrap().into_string().unwrap();
        let line = m.lines().find(|l| l.starts_with("micro_os_container_chain_height{container=\"eth-node-1\""));
        if line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()).is_some_and(|h| h >= 1.0) {
            assert!(m.contains("micro_os_container_chain_hashrate{container=\"eth-node-1\""), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "no chain height in /metrics: {line:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = file.path().to_str().unwrap();
    d.ok(&["monitor", "export", "--from", "10m", "--format", "json", "--output", out, "--object", "eth-node-1"]);
    let history: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap_or(Value::Null);
    let heights: Vec<u64> =
        history.as_array().into_iter().flatten().filter_map(|s| s["chain_height"].as_u64()).collect();
    assert!(!heights.is_empty(), "no chain heights in the history: {history}");
    let health = d.ok(&["monitor", "health", "--components", "chain", "--format", "json"]);
    assert!(health.contains("1 of 1 nodes running"), "{health}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = d.cli(&["monitor", "health", "--format", "json"]);
        let h: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let alerts = h["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.iter().any(|a| a["rule"] == "chain-node-no-peers" && a["object"] == "container/eth-node-1") {
            break;
        }
        assert!(Instant::now() < deadline, "no alert for a node without peers: {h:#}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // the wallet pays; a bad address is one clear line
    let w: Value =
        serde_json::from_str(&d.ok(&["chain", "wallet", "--container", "eth-node-1", "--format", "json"])).unwrap();
    assert!(w["balance"].as_f64().is_some_and(|b| b > 0.0), "{w}");
    let to = w["address"].as_str().unwrap();
    assert!(to.starts_with("bcrt1"), "{w}");
    let txid = d.ok(&["chain", "send", "--container", "eth-node-1", "--to", to, "--amount", "1.5"]);
    assert_eq!(txid.trim().len(), 64, "{txid}");
    let e = d.fails(&["chain", "send", "--container", "eth-node-1", "--to", "nonsense", "--amount", "1"], 2);
    assert!(e.contains("nonsense"), "{e}");
    // the next blocks take it from the mempool
    let before = status(&d)["height"].as_u64().unwrap();
    wait_status(&d, "the send mined", |s| s["mempool_txs"] == 0 && s["height"].as_u64().unwrap() > before);

    // the chain lives in the container's data volume: a restart keeps it
    d.ok(&["container", "stop", "--name", "eth-node-1"]);
    d.ok(&["container", "config", "eth-node-1", "--mine", "false"]);
    let height = {
        d.ok(&["container", "start", "--name", "eth-node-1"]);
        wait_status(&d, "the node back", |_| true)["height"].as_u64().unwrap()
    };
    assert!(height > before, "the restarted node is at {height}, it had mined past {before}");
    d.ok(&["container", "rm", "--name", "eth-node-1", "--force"]);
}

/// `chain status` of `node`, or `None` while it does not answer.
fn status_of(d: &Daemon, node: &str) -> Option<Value> {
    let o = d.cli(&["chain", "status", "--container", node, "--format", "json"]);
    o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn three_nodes_on_three_vms_converge_and_carry_a_payment() {
    let test = "three_nodes_on_three_vms_converge_and_carry_a_payment";
    if !require(test, common::VMS) {
        return;
    }
    let d = Daemon::start();
    let nodes = ["node-1", "node-2", "node-3"];
    for (i, node) in nodes.iter().enumerate() {
        let vm = format!("chain-vm-{}", i + 1);
        d.ok(&["vm", "create", "--name", &vm, "--memory", "512", "--cpu", "1"]);
        d.ok(&["vm", "start", "--name", &vm]);
        d.ok(&["container", "create", "--name", node, "--template", "blockchain-full-node", "--vm", &vm]);
    }
    // and a light node, by the name the spec's examples use, on a VM of its own
    d.ok(&["vm", "create", "--name", "chain-vm-4", "--memory", "256", "--cpu", "0.5"]);
    d.ok(&["vm", "start", "--name", "chain-vm-4"]);
    d.ok(&["container", "create", "--name", "light-1", "--template", "blockchain-light", "--vm", "chain-vm-4"]);
    let e = d.fails(&["container", "config", "light-1", "--mine", "true"], 2);
    assert!(e.contains("a light node does not mine"), "{e}");
    // node-1 mines; the others start after it and are given it as a seed by the daemon
    d.ok(&["container", "config", "node-1", "--mine", "true"]);
    for node in nodes {
        d.ok(&["container", "start", "--name", node]);
    }
    d.ok(&["container", "start", "--name", "light-1"]);
    let nodes = ["node-1", "node-2", "node-3", "light-1"];
    // one tip everywhere, past the coinbase maturity of devnet
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all: Vec<Option<Value>> = nodes.iter().map(|n| status_of(&d, n)).collect();
        let tips: Vec<(u64, String)> = all
            .iter()
            .flatten()
            .map(|s| (s["height"].as_u64().unwrap_or(0), s["tip"].as_str().unwrap_or("").to_string()))
            .collect();
        if tips.len() == 4 && tips[0].0 >= 12 && tips.iter().all(|t| *t == tips[0]) {
            assert!(all.iter().flatten().all(|s| s["peers"].as_u64().unwrap_or(0) >= 1), "{all:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the nodes did not converge: {all:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // a payment from the miner to node-3's wallet, sent on node-1, mined, seen by node-3;
    // and one to the light node's wallet, which it proves with a merkle proof
    let w: Value =
        serde_json::from_str(&d.ok(&["chain", "wallet", "--container", "node-3", "--format", "json"])).unwrap();
    let to = w["address"].as_str().unwrap().to_string();
    d.ok(&["chain", "send", "--container", "node-1", "--to", &to, "--amount", "2"]);
    let w: Value =
        serde_json::from_str(&d.ok(&["chain", "wallet", "--container", "light-1", "--format", "json"])).unwrap();
    let to_light = w["address"].as_str().unwrap().to_string();
    d.ok(&["chain", "send", "--container", "node-1", "--to", &to_light, "--amount", "3"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w: Value =
            serde_json::from_str(&d.ok(&["chain", "wallet", "--container", "node-3", "--format", "json"])).unwrap();
        // mined: out of every mempool, in node-3's balance
        let pools: Vec<u64> =
            nodes.iter().filter_map(|n| status_of(&d, n)).filter_map(|s| s["mempool_txs"].as_u64()).collect();
        let light: Value =
            serde_json::from_str(&d.ok(&["chain", "wallet", "--container", "light-1", "--format", "json"])).unwrap();
        if w["balance"].as_f64().is_some_and(|b| b >= 2.0)
            && light["balance"].as_f64().is_some_and(|b| b >= 3.0)
            && pools == [0, 0, 0, 0]
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-3 and light-1 never saw the payments mined: {w}, {light}, mempools {pools:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for node in nodes {
        d.ok(&["container", "rm", "--name", node, "--force"]);
    }
}
