//! The transaction optimiser's priority queue against FIFO (issue 14's benchmark), in one
//! process on a real node: a devnet chain is mined, coins are fanned out to many keys, and
//! one-in-one-out P2WPKH payments are signed beforehand, 10 % of them paying a high fee
//! rate. Each run replays a seeded open-loop Poisson trace of those payments at a share of
//! the measured validation capacity into the node's `Optimizer` — with the module on and
//! a random forest trained on a separate trace (priority) and off (one class: FIFO) — while
//! a server thread validates what the queue hands out (`next_batch`, `Node::accept_tx`).
//! The latency of a payment is from its arrival to the end of its validation.
//!
//! Prints, per load, the high-priority latency p50/p99/p99.9 of both disciplines (pooled
//! over the runs, with a 95 % interval of the per-run p50 and p99), throughput, the worst
//! low-priority wait, and the mean high-priority wait against what Cobham's formula for a
//! non-preemptive M/G/1 priority queue predicts from the measured service times.
//!
//! `priority_bench [--txs 4000] [--runs 10] [--loads 0.5,0.8,0.95,1.1] [--batch 1]
//! [--features-out FILE]` (release build; `bash bench/run.sh ai`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::rand::rngs::StdRng;
use bitcoin::secp256k1::rand::{Rng, SeedableRng};
use micro_os_ai::{label_by_fee_rate, Classifier, PriorityClassifier, TxOptimizerConfig};
use micro_os_chain::params::Params;
use micro_os_node::ai::ModelKind;
use micro_os_node::node::{Node, Options};

/// Priority classes: the top decile of fee rates is class 0.
const LEVELS: u32 = 10;

mod common;
use common::{payments, unwind, Payment, HIGH};

/// One replay: latencies (s) of the high and the low payments, and the run's seconds. The
/// features are computed beforehand (they take the node's lock, which validation holds):
/// what arrives is classified and queued.
fn replay(
    node: &Arc<Node>,
    trace: &[Payment],
    features: &[micro_os_ai::TxFeatures],
    arrivals: &[f64],
) -> (Vec<f64>, Vec<f64>, f64) {
    node.ai().forget_senders();
    let done = Arc::new(AtomicBool::new(false));
    let high: Arc<Mutex<Vec<f64>>> = Arc::default();
    let low: Arc<Mutex<Vec<f64>>> = Arc::default();
    let is_high: std::collections::HashMap<bitcoin::Txid, bool> =
        trace.iter().map(|p| (p.tx.compute_txid(), p.high)).collect();
    let server = {
        let (node, done, high, low) = (node.clone(), done.clone(), high.clone(), low.clone());
        let n = trace.len();
        std::thread::spawn(move || {
            let mut served = 0;
            while served < n {
                let batch = node.ai().next_batch();
                if batch.is_empty() {
                    if done.load(Ordering::SeqCst) && node.ai().queued() == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                for job in batch {
                    let r = node.accept_tx(job.tx.clone());
                    let latency = job.waited();
                    assert!(r.is_ok(), "a payment was refused: {r:?}");
                    let into = if is_high[&job.txid] { &high } else { &low };
                    into.lock().unwrap().push(latency);
                    served += 1;
                }
            }
        })
    };
    let start = Instant::now();
    for ((p, f), at) in trace.iter().zip(features).zip(arrivals) {
        let wait = Duration::from_secs_f64(*at).saturating_sub(start.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        node.ai().enqueue(p.tx.clone(), None, f.clone());
    }
    done.store(true, Ordering::SeqCst);
    server.join().expect("server");
    let secs = start.elapsed().as_secs_f64();
    let (h, l) = (high.lock().unwrap().clone(), low.lock().unwrap().clone());
    (h, l, secs)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    micro_os_ai::metrics::percentile(v, p)
}

/// Mean and half-width of a 95 % interval (Student t, n - 1 degrees of freedom).
fn ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    let t = match v.len() {
        0..=2 => 12.71,
        3 => 4.30,
        4 => 3.18,
        5 => 2.78,
        6..=10 => 2.26,
        _ => 2.0,
    };
    (mean, t * sd / n.sqrt())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--txs").and_then(|v| v.parse().ok()).unwrap_or(4000);
    let runs: usize = arg(&args, "--runs").and_then(|v| v.parse().ok()).unwrap_or(10);
    let batch: u32 = arg(&args, "--batch").and_then(|v| v.parse().ok()).unwrap_or(1);
    let loads: Vec<f64> = arg(&args, "--loads")
        .unwrap_or_else(|| "0.5,0.8,0.95,1.1".into())
        .split(',')
        .map(|l| l.parse().expect("--loads are numbers"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let params = Params::by_name("devnet").expect("devnet");
    let node = Arc::new(Node::open(dir.path(), params, Options::default()).expect("node"));
    let mut rng = StdRng::seed_from_u64(14);
    let t = Instant::now();
    let training = 1500;
    let all = payments(&node, n + training, &mut rng);
    let (train, trace) = all.split_at(training);
    eprintln!("priority_bench: {} payments signed in {:.1} s", all.len(), t.elapsed().as_secs_f64());

    // the classifier, trained on a trace of its own, labelled by fee-rate deciles
    let rows: Vec<[f64; 6]> = train.iter().map(|p| node.tx_features(&p.tx).to_vec()).collect();
    let labels = label_by_fee_rate(&rows.iter().map(|r| r[0]).collect::<Vec<_>>(), LEVELS);
    let model = PriorityClassifier::fit(&rows, &labels, 14).expect("train");
    let served = serde_json::to_value(Classifier::RandomForest(model)).expect("serialise");
    node.ai().set_model(ModelKind::Classifier, 1, served).expect("load");
    let on = TxOptimizerConfig { batch_size: batch, priority_levels: LEVELS, ..Default::default() };
    if let Some(path) = arg(&args, "--features-out") {
        let csv: String = std::iter::once(micro_os_ai::TxFeatures::NAMES.join(",") + "\n")
            .chain(trace.iter().chain(train).map(|p| {
                let f = node.tx_features(&p.tx).to_vec();
                f.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",") + "\n"
            }))
            .collect();
        std::fs::write(&path, csv).expect("--features-out");
    }

    let features: Vec<micro_os_ai::TxFeatures> = trace.iter().map(|p| node.tx_features(&p.tx)).collect();
    let t = Instant::now();
    for f in features.iter().take(1000) {
        node.ai().configure(true, TxOptimizerConfig { priority_levels: LEVELS, ..Default::default() }).expect("on");
        std::hint::black_box(node.ai().assess(f));
    }
    let classify_us = t.elapsed().as_secs_f64() * 1e6 / 1000.0;
    // capacity: the trace validated back to back through the same queue, three times
    node.ai().configure(false, on.clone()).expect("config");
    let mut service = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..3 {
        node.ai().forget_senders();
        for p in trace.iter() {
            let f = node.tx_features(&p.tx);
            node.ai().enqueue(p.tx.clone(), None, f);
        }
        let t = Instant::now();
        loop {
            let b = node.ai().next_batch();
            if b.is_empty() {
                break;
            }
            for job in b {
                let s = Instant::now();
                node.accept_tx(job.tx).expect("valid");
                service.push(s.elapsed().as_secs_f64());
            }
        }
        rates.push(trace.len() as f64 / t.elapsed().as_secs_f64());
        unwind(&node, trace);
    }
    let capacity = pct(&mut rates, 50.0);
    let es = service.iter().sum::<f64>() / service.len() as f64;
    let es2 = service.iter().map(|s| s * s).sum::<f64>() / service.len() as f64;
    println!(
        "# priority_bench: {n} payments ({:.0} % high fee rate), {runs} runs per load, batch {batch}, {LEVELS} classes; \
         capacity {capacity:.0} tx/s (service mean {:.1} us, cv {:.2}); classifying one on arrival {classify_us:.1} us",
        HIGH * 100.0,
        es * 1e6,
        ((es2 - es * es).max(0.0)).sqrt() / es
    );
    println!(
        "| load | discipline | high p50 ms (95% CI of runs) | high p99 ms (95% CI) | high p99.9 ms | throughput tx/s | worst low wait ms | high mean wait ms | Cobham mean wait ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &load in &loads {
        let lambda = load * capacity;
        // Cobham, non-preemptive M/G/1: W0 = λE[S²]/2; class 1 waits W0/(1-ρ1), FIFO W0/(1-ρ)
        let w0 = lambda * es2 / 2.0;
        let rho = lambda * es;
        let rho_high = HIGH * rho;
        let predicted = [w0 / (1.0 - rho).max(1e-9), w0 / (1.0 - rho_high)];
        let mut measured_wait = [0.0; 2];
        #[derive(Default)]
        struct Acc {
            p50s: Vec<f64>,
            p99s: Vec<f64>,
            all_high: Vec<f64>,
            worst_low: f64,
            tput: Vec<f64>,
        }
        let mut acc = [Acc::default(), Acc::default()];
        for run in 0..runs {
            let mut r = StdRng::seed_from_u64(1000 + run as u64);
            let mut at = 0.0;
            let arrivals: Vec<f64> = (0..trace.len())
                .map(|_| {
                    at += -(1.0 - r.gen::<f64>()).ln() / lambda;
                    at
                })
                .collect();
            // both disciplines on the same arrivals, back to back, the first alternating:
            // the machine's noise falls on both alike
            for d in [run % 2, 1 - run % 2] {
                node.ai().configure(d == 1, on.clone()).expect("config");
                let (mut h, l, secs) = replay(&node, trace, &features, &arrivals);
                if std::env::var("PRIO_DEBUG").is_ok() {
                    let classes: Vec<u32> = features.iter().map(|f| node.ai().assess(f).0).collect();
                    let high0 = trace.iter().zip(&classes).filter(|(p, c)| p.high && **c == 0).count();
                    eprintln!(
                        "discipline {d}: {} high of which {high0} in class 0; info {}",
                        trace.iter().filter(|p| p.high).count(),
                        node.ai().info()["counters"]
                    );
                }
                unwind(&node, trace);
                let a = &mut acc[d];
                a.p50s.push(pct(&mut h, 50.0) * 1e3);
                a.p99s.push(pct(&mut h, 99.0) * 1e3);
                a.worst_low = a.worst_low.max(l.iter().copied().fold(0.0, f64::max));
                a.tput.push(trace.len() as f64 / secs);
                a.all_high.extend(h);
            }
        }
        for (d, name) in ["fifo", "priority"].iter().enumerate() {
            let a = &mut acc[d];
            let (m50, c50) = ci(&a.p50s);
            let (m99, c99) = ci(&a.p99s);
            let mean_wait = (a.all_high.iter().sum::<f64>() / a.all_high.len() as f64 - es).max(0.0);
            measured_wait[d] = mean_wait;
            let p999 = pct(&mut a.all_high, 99.9) * 1e3;
            println!(
                "| {load} | {name} | {m50:.2} ± {c50:.2} | {m99:.2} ± {c99:.2} | {p999:.2} | {:.0} | {:.1} | {:.3} | {} |",
                a.tput.iter().sum::<f64>() / a.tput.len() as f64,
                a.worst_low * 1e3,
                mean_wait * 1e3,
                if load < 1.0 || d == 1 { format!("{:.3}", predicted[d] * 1e3) } else { "unstable".into() }
            );
        }
        if load < 1.0 {
            println!(
                "| {load} | gain | FIFO/priority high mean wait: measured {:.1}x, Cobham {:.1}x | | | | | | |",
                measured_wait[0] / measured_wait[1].max(1e-9),
                predicted[0] / predicted[1]
            );
        }
    }
}
