//! Forecasting transaction arrivals: an LSTM (candle) over the last `window` per-second
//! arrival counts predicts the next one, against an EWMA, the named baseline; the forecast
//! drives the validation batch size ([`adaptive_batch`]).
//!
//! Key design decisions: the LSTM sees counts divided by the training series' largest value
//! (a logarithm was tried: it hid the bursts the forecast exists for, and lost to the EWMA);
//! its weights are drawn from a seeded ChaCha
//! stream (candle cannot seed its CPU generator) and trained with AdamW on seeded
//! mini-batches to the mean absolute error, the metric it is judged by (squared error made
//! it lose to the EWMA on MAE while winning on RMSE), so a fit repeats for a seed on a given machine; a model serialises as its
//! parameters and every weight, exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::rnn::{lstm, LSTMConfig, LSTM, RNN};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Error, Result};

/// How an LSTM forecaster is shaped and trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForecastParams {
    /// Past values it looks at.
    pub window: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

impl Default for ForecastParams {
    fn default() -> Self {
        ForecastParams { window: 30, hidden: 16, epochs: 30, learning_rate: 0.01, seed: 0 }
    }
}

fn model(e: candle_core::Error) -> Error {
    Error::Model(e.to_string())
}

/// A trained LSTM forecaster.
pub struct Forecaster {
    params: ForecastParams,
    /// The largest value of the training series: inputs are divided by it.
    scale: f64,
    varmap: VarMap,
    lstm: LSTM,
    head: Linear,
}

impl std::fmt::Debug for Forecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forecaster").field("params", &self.params).field("scale", &self.scale).finish()
    }
}

/// What a fit did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitReport {
    pub windows: usize,
    pub final_loss: f64,
    pub fit_ms: f64,
}

impl Forecaster {
    fn build(params: ForecastParams) -> Result<(VarMap, LSTM, Linear)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let l = lstm(1, params.hidden, LSTMConfig::default(), vb.pp("lstm")).map_err(model)?;
        let head = linear(params.hidden, 1, vb.pp("head")).map_err(model)?;
        Ok((varmap, l, head))
    }

    /// Every weight, by name, in name order.
    fn weights(&self) -> Vec<(String, candle_core::Var)> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, candle_core::Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Draws every weight from U(-1/sqrt(hidden), 1/sqrt(hidden)) (PyTorch's LSTM init) with
    /// `seed`, in name order.
    fn seed_weights(&self, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = 1.0 / (self.params.hidden as f32).sqrt();
        for (_, var) in self.weights() {
            let n = var.elem_count();
            let values: Vec<f32> = (0..n).map(|_| rng.gen_range(-k..k)).collect();
            let t = Tensor::from_vec(values, var.shape(), &Device::Cpu).map_err(model)?;
            var.set(&t).map_err(model)?;
        }
        Ok(())
    }

    fn transform(&self, x: f64) -> f32 {
        (x.max(0.0) / self.scale) as f32
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let states = self.lstm.seq(x)?;
        let last = states.last().ok_or_else(|| candle_core::Error::Msg("an empty window".into()))?;
        self.head.forward(last.h())
    }

    /// Trains on `series` (counts per interval, oldest first).
    pub fn fit(series: &[f64], params: ForecastParams) -> Result<(Forecaster, FitReport)> {
        let started = std::time::Instant::now();
        let w = params.window;
        if w == 0 || params.hidden == 0 {
            return Err(Error::Data("a forecaster needs a window and a hidden size of 1 or more".into()));
        }
        if series.len() < w + 10 {
            return Err(Error::Data(format!(
                "a series of {} values is too short to train on windows of {w} (at least {} needed)",
                series.len(),
                w + 10
            )));
        }
        let scale = series.iter().copied().fold(0.0, f64::max).max(1e-6);
        let (varmap, l, head) = Self::build(params)?;
        let f = Forecaster { params, scale, varmap, lstm: l, head };
        f.seed_weights(params.seed)?;
        let z: Vec<f32> = series.iter().map(|x| f.transform(*x)).collect();
        let n = z.len() - w;
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed ^ 0x5eed);
        let mut opt = AdamW::new(
            f.varmap.all_vars(),
            ParamsAdamW { lr: params.learning_rate, weight_decay: 0.0, ..Default::default() },
        )
        .map_err(model)?;
        const BATCH: usize = 128;
        let mut final_loss = f64::NAN;
        for _ in 0..params.epochs {
            order.shuffle(&mut rng);
            let mut sum = 0.0;
            let mut batches = 0;
            for chunk in order.chunks(BATCH) {
                let xs: Vec<f32> = chunk.iter().flat_map(|&i| z[i..i + w].iter().copied()).collect();
                let ys: Vec<f32> = chunk.iter().map(|&i| z[i + w]).collect();
                let x = Tensor::from_vec(xs, (chunk.len(), w, 1), &Device::Cpu).map_err(model)?;
                let y = Tensor::from_vec(ys, (chunk.len(), 1), &Device::Cpu).map_err(model)?;
                let loss = f.forward(&x).and_then(|p| (p - &y)?.abs()?.mean_all()).map_err(model)?;
                opt.backward_step(&loss).map_err(model)?;
                sum += f64::from(loss.to_scalar::<f32>().map_err(model)?);
                batches += 1;
            }
            final_loss = sum / f64::from(batches.max(1));
        }
        let report = FitReport { windows: n, final_loss, fit_ms: started.elapsed().as_secs_f64() * 1e3 };
        Ok((f, report))
    }

    /// The next value after `recent` (its last `window` values; a shorter history is padded
    /// with its first value), in the series' units, never negative.
    pub fn predict_next(&self, recent: &[f64]) -> f64 {
        let w = self.params.window;
        if recent.is_empty() {
            return 0.0;
        }
        let tail: Vec<f32> = (0..w)
            .map(|k| {
                let i = (recent.len() + k).saturating_sub(w);
                self.transform(recent[i.min(recent.len() - 1)])
            })
            .collect();
        let y = Tensor::from_vec(tail, (1, w, 1), &Device::Cpu)
            .and_then(|x| self.forward(&x))
            .and_then(|p| p.flatten_all()?.to_vec1::<f32>());
        match y {
            Ok(v) => (f64::from(v[0]) * self.scale).max(0.0),
            Err(_) => 0.0,
        }
    }

    pub fn params(&self) -> ForecastParams {
        self.params
    }

    /// The model as JSON: its parameters, scale and every weight (shape and values).
    pub fn to_json(&self) -> Value {
        let weights: BTreeMap<String, Value> = self
            .weights()
            .into_iter()
            .map(|(name, var)| {
                let dims = var.dims().to_vec();
                let values = var.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap_or_default();
                (name, json!({ "shape": dims, "values": values }))
            })
            .collect();
        json!({ "params": self.params, "scale": self.scale, "weights": weights })
    }

    pub fn from_json(v: &Value) -> Result<Forecaster> {
        let bad = |what: &str| Error::Model(format!("forecaster: {what}"));
        let params: ForecastParams =
            serde_json::from_value(v["params"].clone()).map_err(|e| bad(&format!("params: {e}")))?;
        let scale = v["scale"].as_f64().ok_or_else(|| bad("no scale"))?;
        let (varmap, l, head) = Self::build(params)?;
        let f = Forecaster { params, scale, varmap, lstm: l, head };
        for (name, var) in f.weights() {
            let w = &v["weights"][&name];
            let values: Vec<f32> =
                serde_json::from_value(w["values"].clone()).map_err(|e| bad(&format!("{name}: {e}")))?;
            if values.len() != var.elem_count() {
                return Err(bad(&format!("{name} has {} values, not {}", values.len(), var.elem_count())));
            }
            let t = Tensor::from_vec(values, var.shape(), &Device::Cpu).map_err(model)?;
            var.set(&t).map_err(model)?;
        }
        Ok(f)
    }
}

/// The baseline: an exponentially weighted moving average, its smoothing chosen on the
/// training series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    pub alpha: f64,
}

impl Ewma {
    const ALPHAS: [f64; 7] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9];

    /// The alpha with the lowest one-step mean absolute error on `series`.
    pub fn fit(series: &[f64]) -> Ewma {
        let mae = |alpha: f64| {
            let mut level = series.first().copied().unwrap_or(0.0);
            let mut err = 0.0;
            for x in series.iter().skip(1) {
                err += (x - level).abs();
                level = alpha * x + (1.0 - alpha) * level;
            }
            err
        };
        let alpha = Self::ALPHAS.iter().copied().min_by(|a, b| mae(*a).total_cmp(&mae(*b))).unwrap_or(0.3);
        Ewma { alpha }
    }

    pub fn predict_next(&self, recent: &[f64]) -> f64 {
        let mut it = recent.iter();
        let Some(first) = it.next() else { return 0.0 };
        it.fold(*first, |level, x| self.alpha * x + (1.0 - self.alpha) * level)
    }
}

/// One-step-ahead forecast errors of the LSTM and the EWMA on the held-back tail of a series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub lstm_mae: f64,
    pub lstm_rmse: f64,
    pub ewma_mae: f64,
    pub ewma_rmse: f64,
    pub ewma_alpha: f64,
    pub train_len: usize,
    pub test_len: usize,
    pub fit_ms: f64,
}

/// Fits both on the first `train_fraction` of `series` (in time order) and scores each
/// one-step forecast of the rest, each seeing the true history up to its step. Returns the
/// report and the fitted LSTM.
pub fn evaluate(series: &[f64], train_fraction: f64, params: ForecastParams) -> Result<(Report, Forecaster)> {
    let cut = ((series.len() as f64) * train_fraction) as usize;
    let (train, _) = series.split_at(cut.min(series.len()));
    let (lstm, fit) = Forecaster::fit(train, params)?;
    let ewma = Ewma::fit(train);
    let lookback = params.window.max(200);
    let (mut le, mut lse, mut ee, mut ese) = (0.0, 0.0, 0.0, 0.0);
    let test_len = series.len() - cut;
    for t in cut..series.len() {
        let history = &series[t.saturating_sub(lookback)..t];
        let (l, e) = (lstm.predict_next(history) - series[t], ewma.predict_next(history) - series[t]);
        le += l.abs();
        lse += l * l;
        ee += e.abs();
        ese += e * e;
    }
    let n = test_len.max(1) as f64;
    let report = Report {
        lstm_mae: le / n,
        lstm_rmse: (lse / n).sqrt(),
        ewma_mae: ee / n,
        ewma_rmse: (ese / n).sqrt(),
        ewma_alpha: ewma.alpha,
        train_len: cut,
        test_len,
        fit_ms: fit.fit_ms,
    };
    Ok((report, lstm))
}

/// Per-interval counts of `ts` (unix ms, any order) over `interval_ms` buckets from the first
/// to the last, empty buckets included.
pub fn counts(ts: &[i64], interval_ms: i64) -> Vec<f64> {
    let (Some(lo), Some(hi)) = (ts.iter().min(), ts.iter().max()) else { return Vec::new() };
    let interval_ms = interval_ms.max(1);
    let mut out = vec![0.0; ((hi - lo) / interval_ms + 1) as usize];
    for t in ts {
        out[((t - lo) / interval_ms) as usize] += 1.0;
    }
    out
}

/// A seeded per-second arrival series: a base rate swinging over ten minutes, a burst that
/// builds up over 20 s every 2 minutes (a pattern to learn, which an average lags), and
/// Poisson noise.
pub fn synthetic_arrivals(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|t| {
            let base = 20.0 + 10.0 * (2.0 * std::f64::consts::PI * t as f64 / 600.0).sin();
            let phase = t % 120;
            let burst = if phase >= 100 { 1.0 + 4.0 * (phase - 100) as f64 / 20.0 } else { 1.0 };
            let lambda = base * burst;
            // Poisson by its normal approximation (lambda >= 10 here), Box-Muller
            let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (lambda + lambda.sqrt() * z).round().max(0.0)
        })
        .collect()
}

/// The validation batch size for the next interval: the transactions expected to arrive in
/// one 20 ms window at the forecast rate, rounded up to a power of two and kept within
/// `[min, max]` — large when a burst comes (fewer hand-offs per transaction), small when it
/// is quiet (a transaction does not wait behind a long batch).
pub fn adaptive_batch(forecast_per_s: f64, min: u32, max: u32) -> u32 {
    let expected = (forecast_per_s.max(0.0) * 0.020).ceil().max(1.0);
    let pow2 =
        if expected >= f64::from(u32::MAX / 2) { u32::MAX / 2 + 1 } else { (expected as u32).next_power_of_two() };
    pow2.clamp(min.max(1), max.max(min.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ForecastParams {
        ForecastParams { window: 20, hidden: 8, epochs: 12, learning_rate: 0.02, seed: 3 }
    }

    /// The size the daemon trains (the tensor kernels are optimised in debug builds too).
    fn full() -> ForecastParams {
        ForecastParams { seed: 3, ..Default::default() }
    }

    #[test]
    fn the_lstm_beats_the_ewma_on_bursts_it_can_learn() {
        let series = synthetic_arrivals(2000, 7);
        let (r, _) = evaluate(&series, 0.8, full()).unwrap();
        assert!(r.lstm_mae < r.ewma_mae && r.lstm_rmse < r.ewma_rmse, "{r:?}");
        assert_eq!((r.train_len, r.test_len), (1600, 400));
    }

    #[test]
    fn a_seed_repeats_and_a_reload_predicts_the_same() {
        let series = synthetic_arrivals(400, 1);
        let (a, _) = Forecaster::fit(&series, small()).unwrap();
        let (b, _) = Forecaster::fit(&series, small()).unwrap();
        let recent = &series[300..];
        assert_eq!(a.predict_next(recent), b.predict_next(recent));
        let back = Forecaster::from_json(&a.to_json()).unwrap();
        assert_eq!(back.predict_next(recent), a.predict_next(recent));
        assert!(a.predict_next(recent) >= 0.0);
    }

    #[test]
    fn short_series_are_refused_with_both_lengths() {
        let e = Forecaster::fit(&[1.0; 25], small()).unwrap_err().to_string();
        assert!(e.contains("a series of 25 values is too short to train on windows of 20 (at least 30"), "{e}");
    }

    #[test]
    fn ewma_and_counts() {
        let e = Ewma { alpha: 0.5 };
        assert_eq!(e.predict_next(&[0.0, 4.0]), 2.0);
        assert_eq!(Ewma::fit(&[5.0; 20]).predict_next(&[5.0, 5.0]), 5.0);
        assert_eq!(counts(&[1000, 1500, 3100, 1200], 1000), vec![3.0, 0.0, 1.0]);
        assert!(counts(&[], 1000).is_empty());
    }

    #[test]
    fn the_batch_grows_with_the_forecast_and_stays_in_bounds() {
        assert_eq!(adaptive_batch(0.0, 1, 128), 1);
        assert_eq!(adaptive_batch(100.0, 1, 128), 2);
        assert_eq!(adaptive_batch(1000.0, 1, 128), 32);
        assert_eq!(adaptive_batch(1e9, 1, 128), 128);
        assert_eq!(adaptive_batch(10.0, 8, 128), 8);
        let sizes: Vec<u32> =
            [0.0, 10.0, 100.0, 1000.0, 10_000.0].iter().map(|r| adaptive_batch(*r, 1, 4096)).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    }
}
