//! Our isolation forest on a CSV of features (issue 14's benchmark against scikit-learn's
//! `IsolationForest`, which `bench/iforest_sklearn.py` runs on the same file): ROC-AUC and
//! fit+score time, 100 trees of 256 samples, over thirty seeds.
//!
//! `iforest_bench --data FILE.csv` scores a file whose last column is `label` (1 =
//! anomaly). `iforest_bench --inject FEATURES.csv --out FILE.csv` first makes such a file
//! from recorded transaction features: it keeps them as normal and adds 5 % anomalies made
//! from copies of them (`micro_os_ai::train::inject`: fee outliers, dust floods, sender
//! bursts, oversized shapes), seeded. Prints one JSON line.

use std::time::Instant;

use micro_os_ai::metrics::{percentile, roc_auc};
use micro_os_ai::{IForestParams, IsolationForest};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn read(path: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap_or_default().split(',').map(str::to_string).collect();
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(',').map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{path}: {v:?} is not a number"))).collect()
        })
        .collect();
    (header, rows)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = match (arg(&args, "--data"), arg(&args, "--inject"), arg(&args, "--out")) {
        (Some(d), _, _) => d,
        (None, Some(features), Some(out)) => {
            let (header, rows) = read(&features);
            assert_eq!(header.len(), 6, "{features}: six transaction features per row");
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let n_bad = rows.len() / 20;
            let mut csv = header.join(",") + ",label\n";
            for r in &rows {
                csv += &(r.iter().map(f64::to_string).collect::<Vec<_>>().join(",") + ",0\n");
            }
            for i in 0..n_bad {
                let base: [f64; 6] = std::array::from_fn(|j| rows[(i * 7919) % rows.len()][j]);
                let a = micro_os_ai::train::inject(&base, &mut rng);
                csv += &(a.iter().map(f64::to_string).collect::<Vec<_>>().join(",") + ",1\n");
            }
            std::fs::write(&out, csv).unwrap_or_else(|e| panic!("{out}: {e}"));
            out
        }
        _ => {
            eprintln!("usage: iforest_bench --data FILE.csv | --inject FEATURES.csv --out FILE.csv");
            std::process::exit(2);
        }
    };
    let (_, rows) = read(&data);
    let labels: Vec<bool> = rows.iter().map(|r| r[r.len() - 1] == 1.0).collect();
    let x: Vec<Vec<f64>> = rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect();
    let mut aucs = Vec::new();
    let mut times = Vec::new();
    for seed in 0..30 {
        let t = Instant::now();
        let f = IsolationForest::fit(&x, IForestParams { trees: 100, sample_size: 256, seed }).expect("fit");
        let scores = f.score_many(&x);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        aucs.push(roc_auc(&scores, &labels));
    }
    let mean_auc = aucs.iter().sum::<f64>() / aucs.len() as f64;
    println!(
        "{{\"impl\": \"micro-os\", \"data\": \"{data}\", \"rows\": {}, \"features\": {}, \"anomalies\": {}, \"auc_mean\": {mean_auc:.4}, \"auc_min\": {:.4}, \"auc_max\": {:.4}, \"fit_score_ms_p50\": {:.2}}}",
        x.len(),
        x[0].len(),
        labels.iter().filter(|l| **l).count(),
        aucs.iter().copied().fold(f64::INFINITY, f64::min),
        aucs.iter().copied().fold(0.0, f64::max),
        percentile(&mut times, 50.0)
    );
}
