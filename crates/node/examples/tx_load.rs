//! A transaction load for a running node (issue 12's validator benchmark): sends `--txs`
//! payments through the node's `sendtoaddress` as fast as it takes them, watches the tip
//! and reports, for every payment, the time from `sendtoaddress` returning to the payment
//! being in a block on the node's chain — final on the circuit network, one confirmation on
//! a mined one. Prints one JSON line: payments, seconds, payments/s, p50/p99/max in ms.
//!
//! `tx_load --rpc 127.0.0.1:18453 --cookie DATADIR/.cookie --to ADDR [--txs 500]
//! [--amount 0.001]`; run it where the node's RPC is reachable (`ip netns exec` of the VM).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Rpc {
    url: String,
    auth: String,
}

impl Rpc {
    fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
        let reply =
            ureq::post(&self.url).set("authorization", &self.auth).timeout(Duration::from_secs(60)).send_string(&body);
        let v: Value = match reply {
            Ok(r) => r.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(_, r)) => r.into_json().map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        match &v["error"] {
            Value::Null => Ok(v["result"].clone()),
            e => Err(e.to_string()),
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tx_load --rpc HOST:PORT --cookie FILE --to ADDRESS [--txs N] [--amount COINS]";
    let (Some(rpc), Some(cookie), Some(to)) = (arg(&args, "--rpc"), arg(&args, "--cookie"), arg(&args, "--to")) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let txs: usize = arg(&args, "--txs").and_then(|n| n.parse().ok()).unwrap_or(500);
    let amount: f64 = arg(&args, "--amount").and_then(|n| n.parse().ok()).unwrap_or(0.001);
    let cookie = std::fs::read_to_string(&cookie).unwrap_or_else(|e| panic!("cookie {cookie}: {e}"));
    use base64::Engine;
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cookie.trim()));
    let node = Arc::new(Rpc { url: format!("http://{rpc}/"), auth });

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    // the watcher: each new block's transactions, matched against what was sent
    let watcher = {
        let (node, sent, latencies, done) = (node.clone(), sent.clone(), latencies.clone(), done.clone());
        std::thread::spawn(move || {
            let mut tip = node.call("getbestblockhash", json!([])).expect("getbestblockhash");
            let mut last_confirmed = Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
                let Ok(now) = node.call("getbestblockhash", json!([])) else { continue };
                if now == tip {
                    continue;
                }
                let seen = Instant::now();
                // the new blocks, newest first, back to the old tip
                let mut hash = now.clone();
                while hash != tip {
                    let Ok(b) = node.call("getblock", json!([hash, 1])) else { break };
                    let mut s = sent.lock().unwrap();
                    for t in b["tx"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if let Some(at) = s.remove(t) {
                            latencies.lock().unwrap().push(seen.duration_since(at).as_secs_f64() * 1000.0);
                            last_confirmed = seen;
                        }
                    }
                    drop(s);
                    match b["previousblockhash"].as_str() {
                        Some(p) => hash = Value::String(p.into()),
                        None => break,
                    }
                }
                tip = now;
            }
            last_confirmed
        })
    };
    let start = Instant::now();
    let mut n = 0;
    let mut refused = 0;
    while n < txs {
        match node.call("sendtoaddress", json!([to, amount])) {
            Ok(txid) => {
                sent.lock().unwrap().insert(txid.as_str().unwrap_or_default().to_string(), Instant::now());
                n += 1;
            }
            Err(e) => {
                // a full mempool chain or no mature coin yet: wait for the next block
                refused += 1;
                if refused % 50 == 1 {
                    eprintln!("tx_load: {e}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sent.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::SeqCst);
    let last = watcher.join().expect("watcher");
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let secs = last.duration_since(start).as_secs_f64();
    let out = json!({
        "payments": txs,
        "confirmed": l.len(),
        "unconfirmed": sent.lock().unwrap().len(),
        "refused_retries": refused,
        "seconds": secs,
        "tps": l.len() as f64 / secs.max(1e-9),
        "p50_ms": percentile(&l, 0.5),
        "p99_ms": percentile(&l, 0.99),
        "max_ms": l.last().copied().unwrap_or(0.0),
    });
    println!("{out}");
}
