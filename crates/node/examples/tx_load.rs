//! A transaction load for a running node (issue 12's validator benchmark): sends `--txs`
//! payments through the node's `sendtoaddress` as fast as it takes them, watches the tip
//! and reports, for every payment, the time from `sendtoaddress` returning to the payment
//! being in a block on the node's chain — final on the circuit network, one confirmation on
//! a mined one. Prints one JSON line: payments, seconds, payments/s, p50/p99/max in ms.
//!
//! `tx_load --rpc 127.0.0.1:18453 --cookie DATADIR/.cookie --to ADDR [--txs 500]
//! [--amount 0.001] [--presigned --senders 4]`; run it where the node's RPC is reachable
//! (`ip netns exec` of the VM).
//!
//! With `--presigned` the node's wallet is out of the measured path: the load funds a key
//! of its own (a few wallet payments, split into one coin per payment and confirmed), signs
//! every payment beforehand, and then submits them with `sendrawtransaction` from
//! `--senders` threads at once — so what is measured is how fast the chain takes and seals
//! transactions, not how fast one wallet signs them.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{rand, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Address, Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use micro_os_chain::params::Params;
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

/// A key of the load's own, and the coins it holds.
struct Funds {
    sk: SecretKey,
    pk: CompressedPublicKey,
    script: ScriptBuf,
    secp: Secp256k1<bitcoin::secp256k1::All>,
}

impl Funds {
    fn new() -> Funds {
        let secp = Secp256k1::new();
        let sk = SecretKey::new(&mut rand::thread_rng());
        let pk = CompressedPublicKey::from_private_key(&secp, &bitcoin::PrivateKey::new(sk, bitcoin::Network::Regtest))
            .expect("compressed key");
        Funds { sk, pk, script: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()), secp }
    }

    /// One P2WPKH spend of `coin` (worth `value`, ours) into `outputs`.
    fn spend(&self, coin: OutPoint, value: Amount, outputs: Vec<TxOut>) -> Transaction {
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: outputs,
        };
        let hash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &self.script, value, EcdsaSighashType::All)
            .expect("one p2wpkh input");
        let sig = self.secp.sign_ecdsa(&Message::from_digest(hash.to_byte_array()), &self.sk);
        let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
        tx.input[0].witness = Witness::p2wpkh(&sig, &self.pk.0);
        tx
    }
}

/// Waits until every transaction of `txids` is in a block.
fn wait_confirmed(node: &Rpc, txids: &[Txid], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    for t in txids {
        loop {
            let v = node.call("getrawtransaction", json!([t.to_string(), 1])).unwrap_or(Value::Null);
            if v["blockhash"].is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "tx_load: {what} {t} not in a block after 300 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Pre-signs `n` payments of `amount` to `to`, each spending a coin of the load's own key,
/// funded by the node's wallet.
fn presign(node: &Rpc, n: usize, to: &str, amount: f64) -> Vec<Transaction> {
    const PER_SPLIT: usize = 100;
    const FEE: Amount = Amount::from_sat(1_000);
    let info = node.call("getblockchaininfo", json!([])).expect("getblockchaininfo");
    let params = Params::by_name(info["chain"].as_str().unwrap_or("devnet")).expect("a known network");
    let funds = Funds::new();
    let mine = Address::p2wpkh(&funds.pk, params.hrp());
    let to = Address::from_str(to).expect("--to is an address").assume_checked().script_pubkey();
    let pay = Amount::from_btc(amount).expect("--amount is a number of coins");
    let coin = pay + FEE;
    let splits = n.div_ceil(PER_SPLIT);
    let funding = coin * PER_SPLIT as u64 + FEE * 10;
    eprintln!("tx_load: funding {splits} coins of {funding} from the wallet");
    let mut funded = Vec::new();
    for _ in 0..splits {
        loop {
            match node.call("sendtoaddress", json!([mine.to_string(), funding.to_btc()])) {
                Ok(t) => {
                    funded.push(t.as_str().expect("txid").parse::<Txid>().expect("txid"));
                    break;
                }
                Err(e) => {
                    eprintln!("tx_load: funding: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
    wait_confirmed(node, &funded, "funding");
    let mut split_txids = Vec::new();
    for t in &funded {
        let v = node.call("getrawtransaction", json!([t.to_string(), 1])).expect("funding tx");
        let vout = v["vout"]
            .as_array()
            .and_then(|o| {
                o.iter().position(|o| o["scriptPubKey"]["hex"].as_str() == Some(&funds.script.to_hex_string()))
            })
            .expect("the funding output");
        let outputs = vec![TxOut { value: coin, script_pubkey: funds.script.clone() }; PER_SPLIT];
        let tx = funds.spend(OutPoint::new(*t, vout as u32), funding, outputs);
        node.call("sendrawtransaction", json!([serialize_hex(&tx)])).expect("split");
        split_txids.push(tx.compute_txid());
    }
    wait_confirmed(node, &split_txids, "split");
    eprintln!("tx_load: {n} payments signed beforehand");
    split_txids
        .iter()
        .flat_map(|t| (0..PER_SPLIT as u32).map(move |i| OutPoint::new(*t, i)))
        .take(n)
        .map(|c| funds.spend(c, coin, vec![TxOut { value: pay, script_pubkey: to.clone() }]))
        .collect()
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
    let presigned = args.iter().any(|a| a == "--presigned");
    let senders: usize = arg(&args, "--senders").and_then(|n| n.parse().ok()).unwrap_or(4).max(1);
    let signed = if presigned { presign(&node, txs, &to, amount) } else { Vec::new() };
    let start = Instant::now();
    let mut n = 0;
    let mut refused = 0;
    if presigned {
        let chunk = signed.len().div_ceil(senders);
        std::thread::scope(|s| {
            for part in signed.chunks(chunk) {
                let (node, sent) = (&node, &sent);
                s.spawn(move || {
                    for tx in part {
                        match node.call("sendrawtransaction", json!([serialize_hex(tx)])) {
                            Ok(t) => {
                                sent.lock().unwrap().insert(t.as_str().unwrap_or_default().to_string(), Instant::now());
                            }
                            Err(e) => eprintln!("tx_load: {e}"),
                        }
                    }
                });
            }
        });
        n = txs;
    }
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
        "mode": if presigned { format!("presigned, {senders} senders") } else { "sendtoaddress".into() },
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
