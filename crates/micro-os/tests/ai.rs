//! The AI layer through the real binary: the transaction optimiser enabled, configured and
//! refused bad input on a reference-chain node; samples collected from the transactions
//! the node sees; models trained, stored, served to the node and listed; a burst of
//! outlying transactions raising an `ai` alert naming the node; everything kept across a
//! daemon restart; disabled again.

mod common;

use std::time::{Duration, Instant};

use common::{require, Daemon, CONTAINERS};
use serde_json::{json, Value};

fn poll<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn json_of(d: &Daemon, args: &[&str]) -> Value {
    serde_json::from_str(&d.ok(args)).unwrap_or_else(|e| panic!("{args:?} did not print JSON: {e}"))
}

/// The transaction module's row for eth-node-1 in `ai status`.
fn module(d: &Daemon) -> Value {
    let all = json_of(d, &["ai", "status", "--format", "json"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == "transaction" && m["container"] == "eth-node-1")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Sends `amount` at `fee_rate` sat/vB, retrying while the wallet's unconfirmed chain is at
/// the mempool's limit (a block every 2 s on devnet lifts it).
fn send(d: &Daemon, to: &str, fee_rate: u32) {
    let fee = fee_rate.to_string();
    let args = ["chain", "send", "--container", "eth-node-1", "--to", to, "--amount", "0.01", "--fee-rate", &fee];
    poll("a send to go through", 60, || d.cli(&args).status.success().then_some(()));
}

#[test]
fn the_transaction_optimiser_trains_on_a_node_serves_it_and_alerts() {
    let test = "the_transaction_optimiser_trains_on_a_node_serves_it_and_alerts";
    if !require(test, CONTAINERS) {
        return;
    }
    let mut d = Daemon::prepared("127.0.0.1");
    d.set_config("monitor_interval_s", json!(0.5));
    d.spawn();
    d.ok(&["container", "create", "--name", "eth-node-1", "--template", "blockchain-full-node"]);
    d.ok(&["container", "config", "eth-node-1", "--mine", "true"]);
    d.ok(&["container", "start", "--name", "eth-node-1"]);
    d.ok(&["container", "create", "--name", "web", "--image", "busybox", "--", "sleep", "600"]);

    // bad input: one clear line, exit 2, nothing changed
    let e = d.fails(&["ai", "enable", "--module", "teleport", "--container", "eth-node-1"], 2);
    assert!(e.contains("module \"teleport\" is unknown (use transaction, mining, network)"), "{e}");
    let e = d.fails(&["ai", "enable", "--module", "mining", "--container", "eth-node-1"], 7);
    assert!(e.contains("module \"mining\" is not available in this build yet"), "{e}");
    let e = d.fails(&["ai", "enable", "--module", "transaction", "--container", "web"], 2);
    assert!(e.contains("container \"web\" runs no reference-chain node"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    // a config file that is refused (not JSON: by the CLI; an unknown key: by the daemon)
    let refused = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        d.fails(&["ai", "enable", "--module", "transaction", "--container", "eth-node-1", "--config", path], 2)
    };
    let e = refused("tx_config.json", "batch_size: 256\n");
    assert!(e.contains("is not JSON"), "{e}");
    let e = refused("unknown.json", r#"{"batch_size": 256, "turbo": true}"#);
    assert!(e.contains("key \"turbo\" is unknown"), "{e}");
    assert_eq!(module(&d), Value::Null, "nothing was enabled by bad input");

    // the spec's example, with its high-throughput preset as a file
    let high = dir.path().join("tx_opt_high_throughput.json");
    std::fs::write(
        &high,
        r#"{"batch_size": 256, "priority_levels": 4, "anomaly_threshold": 0.9, "model_update_interval": 1800}"#,
    )
    .unwrap();
    // the answer is the module just enabled, not the ones that are not built
    let enabled = json_of(
        &d,
        &[
            "ai",
            "enable",
            "--module",
            "transaction",
            "--container",
            "eth-node-1",
            "--config",
            high.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(enabled.as_array().unwrap().len(), 1, "{enabled}");
    assert_eq!(enabled[0]["module"], "transaction", "{enabled}");
    let m = module(&d);
    assert_eq!(m["enabled"], true, "{m}");
    assert_eq!(m["config"]["batch_size"], 256, "{m}");
    let e =
        d.fails(&["ai", "config", "--module", "transaction", "--container", "eth-node-1", "--set", "batch_size=0"], 2);
    assert!(e.contains("batch_size \"0\" is out of range 1..=65536"), "{e}");
    let e = d.fails(
        &[
            "ai",
            "config",
            "--module",
            "transaction",
            "--container",
            "eth-node-1",
            "--set",
            "priority_levels=3",
            "--set",
            "colour=blue",
        ],
        2,
    );
    assert!(e.contains("key \"colour\" is unknown"), "{e}");
    assert_eq!(module(&d)["config"]["priority_levels"], 4, "a refused --set changes nothing");
    d.ok(&[
        "ai",
        "config",
        "--module",
        "transaction",
        "--container",
        "eth-node-1",
        "--set",
        "batch_size=64",
        "--set",
        "priority_levels=3",
    ]);
    let m = module(&d);
    assert_eq!(
        (m["config"]["batch_size"].as_u64(), m["config"]["priority_levels"].as_u64()),
        (Some(64), Some(3)),
        "{m}"
    );
    // the node runs it with that configuration
    poll("the node to take the configuration", 30, || {
        let n = module(&d)["node"].clone();
        (n["enabled"] == true && n["config"]["batch_size"] == 64).then_some(())
    });
    let e = d.fails(&["ai", "train", "--module", "transaction", "--container", "eth-node-1"], 4);
    assert!(e.contains("training needs 200"), "{e}");

    // traffic at many fee rates, once the coinbase has matured
    poll("a spendable balance", 120, || {
        let w = json_of(&d, &["chain", "wallet", "--container", "eth-node-1", "--format", "json"]);
        w["balance"].as_f64().is_some_and(|b| b > 10.0).then_some(())
    });
    let w = json_of(&d, &["chain", "wallet", "--container", "eth-node-1", "--format", "json"]);
    let to = w["address"].as_str().unwrap().to_string();
    let rates = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89];
    // spread over about 40 s, so the arrival forecaster has a history to learn from
    let started = Instant::now();
    for i in 0..230 {
        send(&d, &to, rates[i % rates.len()]);
        let due = Duration::from_millis(175 * (i as u64 + 1));
        std::thread::sleep(due.saturating_sub(started.elapsed()));
    }
    poll("230 samples collected", 60, || (module(&d)["samples"].as_u64() >= Some(230)).then_some(()));

    // training (the loop trains by itself once there are 200 samples; this is a retrain):
    // each model is promoted or kept with the reason, and both kinds are live with their
    // reports against their baselines
    let r = json_of(&d, &["ai", "train", "--module", "transaction", "--container", "eth-node-1", "--format", "json"]);
    let results: Vec<String> =
        r[0]["results"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    assert_eq!(results.len(), 3, "{r}");
    for (line, kind) in results.iter().zip(["classifier", "iforest", "forecaster"]) {
        assert!(
            line.starts_with(&format!("{kind}: ")) && (line.contains(" is live (") || line.contains(": kept v")),
            "{line}"
        );
    }
    let models = json_of(&d, &["ai", "models", "--format", "json"]);
    let models = models.as_array().unwrap();
    let live: Vec<&Value> = models.iter().filter(|m| m["live"] == true).collect();
    assert_eq!(live.len(), 3, "one live model of each kind: {models:?}");
    let forecaster = live.iter().find(|m| m["kind"] == "forecaster").unwrap();
    assert_eq!((forecaster["baseline"].as_str(), forecaster["primary_metric"].as_str()), (Some("ewma"), Some("mae")));
    // the forecast sets the node's batch size, never above batch_size (64 here)
    poll("the node to follow the forecast's batch size", 30, || {
        let n = module(&d)["node"].clone();
        n["adaptive_batch"].as_u64().filter(|b| (1..=64).contains(b)).map(|_| ())
    });
    for m in &live {
        assert!(m["data_size"].as_u64() >= Some(200), "{m}");
        let metric = m["primary_metric"].as_str().unwrap();
        assert!(m["metrics"][metric].as_f64().is_some() && m["baseline_metrics"][metric].as_f64().is_some(), "{m}");
    }
    let classifier = live.iter().find(|m| m["kind"] == "classifier").unwrap();
    assert_eq!(classifier["baseline"], "logistic_regression", "{classifier}");
    let iforest = live.iter().find(|m| m["kind"] == "iforest").unwrap();
    assert_eq!(iforest["baseline"], "robust_z", "{iforest}");
    let versions = (classifier["version"].as_u64(), iforest["version"].as_u64());
    poll("the node to serve the live models", 30, || {
        let n = module(&d)["node"].clone();
        ((n["classifier_version"].as_u64(), n["iforest_version"].as_u64()) == versions).then_some(())
    });
    let table = d.ok(&["ai", "models"]);
    assert!(table.contains(" (live)") && table.contains("logistic_regression"), "{table}");

    // a burst of fee outliers: anomalies, and an alert with source ai naming the node
    for _ in 0..8 {
        send(&d, &to, 4000);
    }
    let alert = poll("an ai alert", 30, || {
        let h = json_of(&d, &["monitor", "health", "--ai-alerts", "--format", "json"]);
        h["alerts"].as_array().unwrap().iter().find(|a| a["source"] == "ai").cloned()
    });
    assert_eq!(alert["object"], "container/eth-node-1", "{alert}");
    let message = alert["message"].as_str().unwrap();
    assert!(message.contains("node eth-node-1") && message.contains("fee_rate"), "{message}");
    let h = json_of(&d, &["monitor", "health", "--format", "json"]);
    assert!(!h["alerts"].as_array().unwrap().iter().any(|a| a["source"] == "ai"), "ai alerts only with --ai-alerts");
    // the event stream carries the AI layer's decisions and the alert, named by the node
    let events: Vec<Value> = d
        .ok(&[
            "events",
            "--type",
            "ai,alert",
            "--object",
            "eth-node-1",
            "--no-follow",
            "--tail",
            "1000",
            "--format",
            "json",
        ])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"enabled") && actions.contains(&"configured") && actions.contains(&"trained"),
        "{actions:?}"
    );
    let fired =
        d.ok(&["events", "--type", "alert", "--object", "container/eth-node-1", "--no-follow", "--format", "json"]);
    assert!(fired.contains("\"fired\"") && fired.contains("fee_rate"), "{fired}");
    let perf = d.ok(&["monitor", "performance", "--container", "eth-node-1", "--ai-stats"]);
    assert!(perf.contains("transaction optimiser: enabled") && perf.contains("against logistic_regression"), "{perf}");
    assert!(perf.contains("forecast: ") && perf.contains("so batches of"), "{perf}");

    // a restart keeps what is set, what was collected and the models
    let before = module(&d);
    d.kill9();
    d.spawn();
    let after = module(&d);
    assert_eq!(after["config"], before["config"]);
    assert!(after["samples"].as_u64() >= before["samples"].as_u64(), "{after}");
    assert_eq!(json_of(&d, &["ai", "models", "--format", "json"]).as_array().unwrap().len(), models.len());
    // the API answers the same, with the token only
    let list: Value = d.api("GET", "/ai").call().unwrap().into_json().unwrap();
    assert!(list.as_array().unwrap().iter().any(|m| m["container"] == "eth-node-1"), "{list}");
    let e = d.api("POST", "/ai/enable").send_json(json!({"module": "transaction", "speed": 1})).unwrap_err();
    assert!(matches!(e, ureq::Error::Status(400, _)), "{e:?}");

    // the AI services: a training container takes the training over (the daemon exports the
    // samples to it and imports what it trains), an inference container serves the live
    // models to whoever asks
    d.ok(&["container", "create", "--name", "ai-train", "--template", "ai-training"]);
    d.ok(&["container", "config", "ai-train", "--interval", "2"]);
    d.ok(&["container", "start", "--name", "ai-train"]);
    let trained = poll("a version trained by the container", 90, || {
        let m = json_of(&d, &["ai", "models", "--format", "json"]);
        m.as_array().unwrap().iter().find(|x| x["trainer"] == "container ai-train").cloned()
    });
    assert!(trained["data_size"].as_u64() >= Some(200), "{trained}");
    let port = common::free_port();
    let publish = format!("{port}:8600/tcp");
    d.ok(&["container", "create", "--name", "ai-inf", "--template", "ai-inference", "--port", &publish]);
    d.ok(&["container", "start", "--name", "ai-inf"]);
    let rich = json!({"fee_rate": 89.0, "vsize": 141.0, "inputs": 1.0, "outputs": 2.0, "sender_history": 0.0, "coin_age": 0.0});
    let mut poor = rich.clone();
    poor["fee_rate"] = json!(1.0);
    // (the daemon publishes the models one after the other: wait for both)
    let scored = poll("scores from the inference container with both models", 60, || {
        let body = json!({"scope": "eth-node-1", "transactions": [rich, poor]});
        let v: Value = ureq::post(&format!("http://127.0.0.1:{port}/score")).send_json(body).ok()?.into_json().ok()?;
        v["anomaly_version"].as_u64().and(v["classifier_version"].as_u64()).map(|_| v)
    });
    assert_eq!(
        (scored["results"][0]["class"].as_u64(), scored["results"][1]["class"].as_u64()),
        (Some(0), Some(2)),
        "{scored}"
    );
    assert!(
        scored["classifier_version"].as_u64().is_some() && scored["anomaly_version"].as_u64().is_some(),
        "{scored}"
    );
    d.ok(&["container", "rm", "--name", "ai-train", "--force"]);
    d.ok(&["container", "rm", "--name", "ai-inf", "--force"]);

    // disabled: the node stops queueing by class
    d.ok(&["ai", "disable", "--module", "transaction", "--container", "eth-node-1"]);
    assert_eq!(module(&d)["enabled"], false);
    poll("the node to turn the module off", 30, || (module(&d)["node"]["enabled"] == false).then_some(()));
    d.ok(&["container", "rm", "--name", "eth-node-1", "--force"]);
    d.ok(&["container", "rm", "--name", "web", "--force"]);
}
