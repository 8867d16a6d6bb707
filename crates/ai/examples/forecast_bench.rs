//! The arrival forecaster against its baseline (issue 14's benchmark): the LSTM and the EWMA
//! fitted on the first 80 % of a per-second arrival series and scored one step ahead on the
//! rest. Series: the seeded synthetic one with bursts every two minutes
//! (`forecast::synthetic_arrivals`), and a plain Poisson one of the same mean (nothing to
//! learn: the EWMA should not lose there by much). Prints a markdown table.
//!
//! `forecast_bench [--seconds 3000] [--epochs 30] [--hidden 16] [--window 30] [--lr 0.01]`

use micro_os_ai::forecast::{evaluate, synthetic_arrivals, ForecastParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--seconds", 3000);
    let d = ForecastParams::default();
    let params = ForecastParams {
        window: arg(&args, "--window", d.window),
        hidden: arg(&args, "--hidden", d.hidden),
        epochs: arg(&args, "--epochs", d.epochs),
        learning_rate: arg(&args, "--lr", d.learning_rate),
        seed: 7,
    };
    let bursty = synthetic_arrivals(n, 7);
    let mean = bursty.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let flat: Vec<f64> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean + mean.sqrt() * z).round().max(0.0)
        })
        .collect();
    println!("# forecast_bench: {n} seconds, {params:?}");
    println!("| series | LSTM MAE | EWMA MAE (alpha) | LSTM/EWMA MAE | LSTM RMSE | EWMA RMSE | fit s |");
    println!("|---|---|---|---|---|---|---|");
    for (name, series) in [("bursty (every 120 s)", &bursty), ("flat Poisson", &flat)] {
        let (r, _) = evaluate(series, 0.8, params).expect("evaluate");
        println!(
            "| {name} | {:.2} | {:.2} ({}) | {:.3} | {:.2} | {:.2} | {:.1} |",
            r.lstm_mae,
            r.ewma_mae,
            r.ewma_alpha,
            r.lstm_mae / r.ewma_mae,
            r.lstm_rmse,
            r.ewma_rmse,
            r.fit_ms / 1e3
        );
    }
}
