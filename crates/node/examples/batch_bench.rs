//! The batch size the arrival forecast drives against a fixed `batch_size` (issue 14's
//! benchmark), in one process on a real node. Payments arrive in bursts — the seeded
//! synthetic series of `forecast::synthetic_arrivals`, one of its seconds a tick of
//! `--tick-ms`, scaled to `--load` of the measured capacity on average, so the bursts
//! overload the node for a while — and are queued in the node's `Optimizer` (a random
//! forest serving the top fee decile first, as in `priority_bench`). A server thread hands
//! each batch to a worker thread and waits for it, as the node's intake hands a batch to a
//! blocking thread: the hand-off is what a larger batch saves, and a long batch is what a
//! high-fee payment that arrives meanwhile waits behind.
//!
//! Three disciplines on the same arrivals: batches of 1, of 128 (the default
//! `batch_size`), and of what the forecast asks for (an LSTM trained on another stretch of
//! the same kind of series predicts the next tick's arrivals from the ticks so far;
//! `forecast::adaptive_batch`, at most 128). Prints throughput, latency p50/p99 of every
//! payment and p99 of the high-fee ones, and the mean batch.
//!
//! `batch_bench [--txs 20000] [--runs 3] [--load 0.7] [--tick-ms 50]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::rand::rngs::StdRng;
use bitcoin::secp256k1::rand::{Rng, SeedableRng};
use micro_os_ai::forecast::{adaptive_batch, synthetic_arrivals, ForecastParams, Forecaster};
use micro_os_ai::{label_by_fee_rate, Classifier, PriorityClassifier, TxFeatures, TxOptimizerConfig};
use micro_os_chain::params::Params;
use micro_os_node::ai::{Job, ModelKind};
use micro_os_node::node::{Node, Options};

mod common;
use common::{payments, unwind, Payment};

const LEVELS: u32 = 10;
const MAX_BATCH: u32 = 128;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    micro_os_ai::metrics::percentile(v, p)
}

/// What one replay measured.
struct Run {
    secs: f64,
    all: Vec<f64>,
    high: Vec<f64>,
    batches: u64,
}

/// Replays `trace` at `arrivals` (seconds); `forecast` sets the batch size each tick.
fn replay(
    node: &Arc<Node>,
    trace: &[Payment],
    features: &[TxFeatures],
    arrivals: &[f64],
    tick: f64,
    forecast: Option<&Forecaster>,
) -> Run {
    node.ai().forget_senders();
    let n = trace.len();
    let high: std::collections::HashMap<bitcoin::Txid, bool> =
        trace.iter().map(|p| (p.tx.compute_txid(), p.high)).collect();
    let all = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let high_lat = Arc::new(Mutex::new(Vec::new()));
    let batches = Arc::new(AtomicU64::new(0));
    // the worker: validates a batch handed to it and answers when done
    let (to_worker, work) = mpsc::channel::<Vec<Job>>();
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let worker = {
        let (node, all, high_lat) = (node.clone(), all.clone(), high_lat.clone());
        std::thread::spawn(move || {
            for batch in work {
                let k = batch.len();
                for job in batch {
                    let r = node.accept_tx(job.tx.clone());
                    assert!(r.is_ok(), "a payment was refused: {r:?}");
                    let latency = job.waited();
                    all.lock().unwrap().push(latency);
                    if high[&job.txid] {
                        high_lat.lock().unwrap().push(latency);
                    }
                }
                if done_tx.send(k).is_err() {
                    return;
                }
            }
        })
    };
    let server = {
        let (node, batches) = (node.clone(), batches.clone());
        std::thread::spawn(move || {
            let mut served = 0;
            while served < n {
                let batch = node.ai().next_batch();
                if batch.is_empty() {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                batches.fetch_add(1, Ordering::Relaxed);
                to_worker.send(batch).expect("worker");
                served += done_rx.recv().expect("worker");
            }
        })
    };
    let start = Instant::now();
    let mut counts: Vec<f64> = Vec::new();
    let mut next_tick = 0usize;
    for ((p, f), at) in trace.iter().zip(features).zip(arrivals) {
        // at each tick boundary: the ticks so far, and the forecast's batch for the next one
        let tick_of = (*at / tick) as usize;
        while next_tick <= tick_of {
            if let Some(model) = forecast {
                let expected = model.predict_next(&counts);
                node.ai().set_adaptive_batch(Some(adaptive_batch(expected / tick, 1, MAX_BATCH)));
            }
            counts.push(0.0);
            next_tick += 1;
        }
        if let Some(last) = counts.last_mut() {
            *last += 1.0;
        }
        let wait = Duration::from_secs_f64(*at).saturating_sub(start.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        node.ai().enqueue(p.tx.clone(), None, f.clone());
    }
    server.join().expect("server");
    let secs = start.elapsed().as_secs_f64();
    drop(worker);
    let all = std::mem::take(&mut *all.lock().unwrap());
    let high = std::mem::take(&mut *high_lat.lock().unwrap());
    Run { secs, all, high, batches: batches.load(Ordering::Relaxed) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--txs", 20_000);
    let runs: usize = arg(&args, "--runs", 3);
    let load: f64 = arg(&args, "--load", 0.7);
    let tick = arg(&args, "--tick-ms", 50.0) / 1000.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let params = Params::by_name("devnet").expect("devnet");
    let node = Arc::new(Node::open(dir.path(), params, Options::default()).expect("node"));
    let mut rng = StdRng::seed_from_u64(15);
    let training = 1500;
    let t = Instant::now();
    let all = payments(&node, n + training, &mut rng);
    let (train, trace) = all.split_at(training);
    eprintln!("batch_bench: {} payments signed in {:.1} s", all.len(), t.elapsed().as_secs_f64());
    let rows: Vec<[f64; 6]> = train.iter().map(|p| node.tx_features(&p.tx).to_vec()).collect();
    let labels = label_by_fee_rate(&rows.iter().map(|r| r[0]).collect::<Vec<_>>(), LEVELS);
    let model = PriorityClassifier::fit(&rows, &labels, 15).expect("train");
    node.ai()
        .set_model(ModelKind::Classifier, 1, serde_json::to_value(Classifier::RandomForest(model)).expect("json"))
        .expect("load");
    let features: Vec<TxFeatures> = trace.iter().map(|p| node.tx_features(&p.tx)).collect();
    let config = |batch: u32| TxOptimizerConfig { batch_size: batch, priority_levels: LEVELS, ..Default::default() };

    // capacity: the trace drained back to back through the hand-off, in batches of 128
    node.ai().configure(true, config(MAX_BATCH)).expect("config");
    let burst: Vec<f64> = vec![0.0; trace.len()];
    let capacity = trace.len() as f64 / replay(&node, trace, &features, &burst, tick, None).secs;
    unwind(&node, trace);

    // the arrivals: the synthetic series' shape, scaled to `load` of capacity on average
    let shape = synthetic_arrivals(100_000, 21);
    let mean = shape.iter().sum::<f64>() / shape.len() as f64;
    let scale = load * capacity * tick / mean;
    let mut arrivals = Vec::with_capacity(trace.len());
    let mut r = StdRng::seed_from_u64(22);
    'ticks: for (i, s) in shape.iter().enumerate() {
        for _ in 0..(s * scale).round() as usize {
            if arrivals.len() == trace.len() {
                break 'ticks;
            }
            arrivals.push((i as f64 + r.gen::<f64>()) * tick);
        }
    }
    arrivals.sort_by(f64::total_cmp);
    // the forecaster learns the same kind of series (another stretch, scaled alike)
    let history: Vec<f64> = synthetic_arrivals(3000, 23).iter().map(|s| (s * scale).round()).collect();
    let (lstm, fit) = Forecaster::fit(&history, ForecastParams { seed: 23, ..Default::default() }).expect("fit");
    println!(
        "# batch_bench: {} payments over {:.1} s of bursty arrivals ({:.0} % of a {capacity:.0} tx/s capacity on \
         average, ticks of {:.0} ms), {runs} runs; forecaster fitted in {:.1} s",
        trace.len(),
        arrivals.last().copied().unwrap_or(0.0),
        load * 100.0,
        tick * 1e3,
        fit.fit_ms / 1e3
    );
    println!("| batches | throughput tx/s | p50 ms | p99 ms | high-fee p99 ms | mean batch |");
    println!("|---|---|---|---|---|---|");
    let modes: [(&str, u32, bool); 3] =
        [("fixed 1", 1, false), ("fixed 128", MAX_BATCH, false), ("forecast (LSTM, at most 128)", MAX_BATCH, true)];
    // per discipline: throughput, p50, p99, high-fee p99, mean batch — one value per run
    let mut results: Vec<[Vec<f64>; 5]> = vec![Default::default(); modes.len()];
    for run in 0..runs {
        for k in 0..modes.len() {
            // the disciplines in turn, the first rotating, on the same arrivals
            let m = (k + run) % modes.len();
            let (_, batch, adaptive) = modes[m];
            node.ai().configure(true, config(batch)).expect("config");
            node.ai().set_adaptive_batch(None);
            let mut out = replay(&node, trace, &features, &arrivals, tick, adaptive.then_some(&lstm));
            unwind(&node, trace);
            let res = &mut results[m];
            res[0].push(trace.len() as f64 / out.secs);
            res[1].push(pct(&mut out.all, 50.0) * 1e3);
            res[2].push(pct(&mut out.all, 99.0) * 1e3);
            res[3].push(pct(&mut out.high, 99.0) * 1e3);
            res[4].push(trace.len() as f64 / out.batches.max(1) as f64);
        }
    }
    node.ai().set_adaptive_batch(None);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (m, (name, _, _)) in modes.iter().enumerate() {
        let r = &results[m];
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} |",
            mean(&r[0]),
            mean(&r[1]),
            mean(&r[2]),
            mean(&r[3]),
            mean(&r[4])
        );
    }
}
