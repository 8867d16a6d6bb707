//! The priority classifier against its baseline (issue 14's benchmark): smartcore's random
//! forest and a logistic regression on standardised features, trained and scored on the
//! same seeded 80/20 splits of recorded transaction features (`priority_bench
//! --features-out`), labelled by fee-rate quantiles as the daemon labels them. Prints a
//! markdown table: accuracy and macro F1 (mean ± 95 % interval over the seeds) and fit time.
//!
//! `classifier_bench FEATURES.csv [--levels 3,10] [--seeds 10]`

use std::time::Instant;

use micro_os_ai::metrics::{accuracy, macro_f1, split_train_test};
use micro_os_ai::{label_by_fee_rate, LogisticBaseline, PriorityClassifier};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    (mean, 2.26 * sd / n.sqrt())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1).filter(|a| !a.starts_with("--")) else {
        eprintln!("usage: classifier_bench FEATURES.csv [--levels 3,10] [--seeds 10]");
        std::process::exit(2);
    };
    let levels: Vec<u32> = arg(&args, "--levels")
        .unwrap_or_else(|| "3,10".into())
        .split(',')
        .map(|l| l.parse().expect("--levels are numbers"))
        .collect();
    let seeds: u64 = arg(&args, "--seeds").and_then(|s| s.parse().ok()).unwrap_or(10);
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rows: Vec<[f64; 6]> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.trim().parse().expect("a number")).collect();
            std::array::from_fn(|j| v[j])
        })
        .collect();
    println!("# classifier_bench: {} transactions from {path}, {seeds} seeded 80/20 splits", rows.len());
    println!("| classes | model | accuracy | macro F1 | fit ms |");
    println!("|---|---|---|---|---|");
    for &k in &levels {
        let y = label_by_fee_rate(&rows.iter().map(|r| r[0]).collect::<Vec<_>>(), k);
        let mut score = [(Vec::new(), Vec::new(), Vec::new()), (Vec::new(), Vec::new(), Vec::new())];
        for seed in 0..seeds {
            let (train, test) = split_train_test(rows.len(), 0.2, seed);
            let xtr: Vec<[f64; 6]> = train.iter().map(|&i| rows[i]).collect();
            let ytr: Vec<u32> = train.iter().map(|&i| y[i]).collect();
            let xte: Vec<[f64; 6]> = test.iter().map(|&i| rows[i]).collect();
            let yte: Vec<u32> = test.iter().map(|&i| y[i]).collect();
            let t = Instant::now();
            let forest = PriorityClassifier::fit(&xtr, &ytr, seed).expect("forest");
            let tf = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let logistic = LogisticBaseline::fit(&xtr, &ytr, seed).expect("logistic");
            let tl = t.elapsed().as_secs_f64() * 1e3;
            for (i, (p, ms)) in [(forest.predict(&xte), tf), (logistic.predict(&xte), tl)].into_iter().enumerate() {
                score[i].0.push(accuracy(&p, &yte));
                score[i].1.push(macro_f1(&p, &yte, k));
                score[i].2.push(ms);
            }
        }
        for (i, name) in ["random forest", "logistic regression (baseline)"].iter().enumerate() {
            let (a, ac) = ci(&score[i].0);
            let (f, fc) = ci(&score[i].1);
            let ms = score[i].2.iter().sum::<f64>() / score[i].2.len() as f64;
            println!("| {k} | {name} | {a:.4} ± {ac:.4} | {f:.4} ± {fc:.4} | {ms:.1} |");
        }
    }
}
