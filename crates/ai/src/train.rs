//! Training runs of the transaction optimiser: samples in, model files with their report
//! out. Each run trains the model and its named baseline on the same seeded split and
//! serves whichever scored better on the held-back part, saying which in the file.
//!
//! - The **classifier** learns the priority class of a transaction (the fee-rate quantile
//!   class a block assembler would give it, `label_by_fee_rate`) from all six features; a
//!   random forest against a logistic regression, by macro F1.
//! - The **anomaly model** is an isolation forest fitted on what the node saw, alone and
//!   guarded by a range check, against a robust z-score rule (the largest |x - median| /
//!   MAD over the features), by ROC-AUC on the held-back samples with anomalies injected
//!   into a copy of them (fee outliers, dust floods, sender bursts, oversized shapes):
//!   recorded traffic has no labels of its own. Scores are in (0, 1) and
//!   `anomaly_threshold` applies to them as they are.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::classifier::{label_by_fee_rate, LogisticBaseline, PriorityClassifier};
use crate::iforest::{IForestParams, IsolationForest};
use crate::metrics::{accuracy, macro_f1, roc_auc, split_train_test};
use crate::store::ModelFile;
use crate::{Error, Result, TxFeatures, TxSample};

/// Fewer samples than this and a training run waits for more.
pub const MIN_SAMPLES: usize = 200;
/// The share of samples held back for scoring.
const TEST_FRACTION: f64 = 0.2;
/// Injected anomalies per held-back sample.
const INJECTED: f64 = 0.1;

/// The classifier a node serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "algorithm", content = "model", rename_all = "snake_case")]
pub enum Classifier {
    RandomForest(PriorityClassifier),
    LogisticRegression(LogisticBaseline),
}

impl Classifier {
    pub fn predict(&self, rows: &[[f64; 6]]) -> Vec<u32> {
        match self {
            Classifier::RandomForest(m) => m.predict(rows),
            Classifier::LogisticRegression(m) => m.predict(rows),
        }
    }
}

/// The median and the median absolute deviation of each feature: the robust z-score
/// baseline, and what an alert compares an anomaly with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub median: Vec<f64>,
    pub mad: Vec<f64>,
    /// The mean absolute deviation from the median: the scale where the MAD is 0 (a
    /// feature that is mostly one value, as the sender history of a quiet node).
    #[serde(default)]
    pub mean_ad: Vec<f64>,
    /// The smallest scale of each feature: its resolution ([`TxFeatures::RESOLUTION`]), so
    /// that a feature seen at one value only makes one unit off it 1, not infinity.
    #[serde(default)]
    pub min_scale: Vec<f64>,
}

impl Profile {
    pub fn fit(rows: &[[f64; 6]], min_scale: &[f64]) -> Profile {
        let mut median = Vec::new();
        let mut mad = Vec::new();
        let mut mean_ad = Vec::new();
        for j in 0..6 {
            let mut col: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            let m = crate::metrics::percentile(&mut col, 50.0);
            let mut dev: Vec<f64> = rows.iter().map(|r| (r[j] - m).abs()).collect();
            median.push(m);
            mean_ad.push(dev.iter().sum::<f64>() / dev.len().max(1) as f64);
            mad.push(crate::metrics::percentile(&mut dev, 50.0));
        }
        Profile { median, mad, mean_ad, min_scale: min_scale.to_vec() }
    }

    /// The largest robust z-score z as z / (z + 3).
    pub fn score(&self, x: &[f64]) -> f64 {
        let z = self.z(x).into_iter().fold(0.0, f64::max);
        z / (z + 3.0)
    }

    /// |x - median| / scale of each feature, the scale being 1.4826 MAD (a standard
    /// deviation for normal data), else 1.2533 times the mean absolute deviation (the same
    /// for normal data) where the MAD is 0, and at least the feature's resolution.
    pub fn z(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(j, v)| {
                let mean_ad = self.mean_ad.get(j).copied().unwrap_or(0.0);
                let floor = self.min_scale.get(j).copied().unwrap_or(1e-9).max(1e-9);
                let scale = (1.4826 * self.mad[j]).max(1.2533 * mean_ad).max(floor);
                (v - self.median[j]).abs() / scale
            })
            .collect()
    }
}

/// The anomaly model a node serves; both score in (0, 1), higher is stranger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "algorithm", content = "model", rename_all = "snake_case")]
pub enum AnomalyModel {
    IsolationForest(IsolationForest),
    /// The largest robust z-score z, as z / (z + 3): 0.5 at 3 MADs, 0.85 at 17.
    RobustZ(Profile),
    /// The isolation forest guarded by the range check: the higher of the two scores. A
    /// forest only sees ranks inside the range it was grown on, so a value far beyond
    /// anything seen scores no higher than the most extreme normal one; the guard catches
    /// those, the forest catches unusual combinations inside the range.
    IsolationForestWithRange {
        forest: IsolationForest,
        profile: Profile,
    },
}

impl AnomalyModel {
    pub fn score(&self, x: &[f64]) -> f64 {
        match self {
            AnomalyModel::IsolationForest(m) => m.score(x),
            AnomalyModel::RobustZ(p) => p.score(x),
            AnomalyModel::IsolationForestWithRange { forest, profile } => forest.score(x).max(profile.score(x)),
        }
    }
}

fn rows(samples: &[TxSample]) -> Vec<[f64; 6]> {
    samples.iter().map(|s| s.features.to_vec()).collect()
}

fn file(
    data_size: usize,
    seed: u64,
    primary: &str,
    metrics: BTreeMap<String, f64>,
    baseline: BTreeMap<String, f64>,
    model: Value,
) -> ModelFile {
    ModelFile {
        module: String::new(),
        scope: String::new(),
        version: 0,
        created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        data_size: data_size as u64,
        seed,
        metrics,
        baseline_metrics: baseline,
        primary_metric: primary.into(),
        model,
        trainer: String::new(),
        lower_is_better: false,
    }
}

/// Trains the priority classifier on `samples` (`levels` classes). The file's `model` holds
/// `algorithm`, `baseline` and `serving` (a [`Classifier`]); its metrics are those of what
/// is served.
pub fn classifier(samples: &[TxSample], levels: u32, seed: u64) -> Result<ModelFile> {
    let x = rows(samples);
    let fee: Vec<f64> = samples.iter().map(|s| s.features.fee_rate).collect();
    let y = label_by_fee_rate(&fee, levels);
    let (train, test) = split_train_test(x.len(), TEST_FRACTION, seed);
    let pick = |idx: &[usize]| -> (Vec<[f64; 6]>, Vec<u32>) {
        (idx.iter().map(|&i| x[i]).collect(), idx.iter().map(|&i| y[i]).collect())
    };
    let (xtr, ytr) = pick(&train);
    let (xte, yte) = pick(&test);
    let forest = PriorityClassifier::fit(&xtr, &ytr, seed)?;
    let logistic = LogisticBaseline::fit(&xtr, &ytr, seed)?;
    let score = |p: Vec<u32>| -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("accuracy".to_string(), accuracy(&p, &yte)),
            ("macro_f1".to_string(), macro_f1(&p, &yte, levels)),
        ])
    };
    let m_forest = score(forest.predict(&xte));
    let m_logistic = score(logistic.predict(&xte));
    let forest_wins = m_forest["macro_f1"] >= m_logistic["macro_f1"];
    let (serving, algorithm, metrics) = if forest_wins {
        (Classifier::RandomForest(forest), "random_forest", m_forest)
    } else {
        (
            Classifier::LogisticRegression(logistic),
            "logistic_regression (the random forest lost to it)",
            m_logistic.clone(),
        )
    };
    let model = json!({
        "algorithm": algorithm,
        "baseline": "logistic_regression",
        "levels": levels,
        "serving": serde_json::to_value(&serving).map_err(|e| Error::Model(e.to_string()))?,
    });
    Ok(file(x.len(), seed, "macro_f1", metrics, m_logistic, model))
}

/// A copy of `x` made strange in one seeded way: a fee outlier, a dust-flood shape, a
/// sender burst or an oversized transaction.
pub fn inject(x: &[f64; 6], rng: &mut ChaCha8Rng) -> [f64; 6] {
    let mut a = *x;
    match rng.gen_range(0..4) {
        0 => a[0] = a[0] * rng.gen_range(30.0..200.0) + 500.0,
        1 => {
            a[0] = rng.gen_range(0.0..0.5);
            a[2] += rng.gen_range(20.0..80.0);
            a[3] += rng.gen_range(20.0..80.0);
            a[1] += (a[2] + a[3]) * 40.0;
        }
        2 => a[4] += rng.gen_range(300.0..3000.0),
        _ => {
            a[1] *= rng.gen_range(20.0..60.0);
            a[3] += rng.gen_range(50.0..300.0);
        }
    }
    a
}

/// Trains the anomaly model on `samples`. The file's `model` holds `algorithm`,
/// `baseline`, `serving` (an [`AnomalyModel`]) and `profile` (for alerts' reasons).
pub fn iforest(samples: &[TxSample], seed: u64) -> Result<ModelFile> {
    let x = rows(samples);
    let (train, test) = split_train_test(x.len(), TEST_FRACTION, seed);
    let xtr: Vec<[f64; 6]> = train.iter().map(|&i| x[i]).collect();
    let xte: Vec<[f64; 6]> = test.iter().map(|&i| x[i]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x001f_0e57);
    let n_bad = ((xte.len() as f64 * INJECTED).ceil() as usize).max(1);
    let mut eval: Vec<[f64; 6]> = xte.clone();
    let mut labels = vec![false; xte.len()];
    for _ in 0..n_bad {
        let base = xte[rng.gen_range(0..xte.len())];
        eval.push(inject(&base, &mut rng));
        labels.push(true);
    }
    let forest = IsolationForest::fit(
        &xtr.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        IForestParams { seed, ..Default::default() },
    )?;
    let profile = Profile::fit(&xtr, &TxFeatures::RESOLUTION);
    let guarded = AnomalyModel::IsolationForestWithRange { forest: forest.clone(), profile: profile.clone() };
    let forest_model = AnomalyModel::IsolationForest(forest);
    let z_model = AnomalyModel::RobustZ(profile.clone());
    let auc = |m: &AnomalyModel| roc_auc(&eval.iter().map(|r| m.score(r)).collect::<Vec<_>>(), &labels);
    let (a_forest, a_guarded, a_z) = (auc(&forest_model), auc(&guarded), auc(&z_model));
    let metric = |a: f64| BTreeMap::from([("roc_auc_injected".to_string(), a)]);
    let mut metrics = metric(a_forest.max(a_guarded));
    metrics.insert("roc_auc_injected_forest_alone".into(), a_forest);
    metrics.insert("roc_auc_injected_forest_with_range".into(), a_guarded);
    let (serving, algorithm) = if a_forest.max(a_guarded) < a_z {
        metrics.insert("roc_auc_injected".into(), a_z);
        (z_model, "robust_z (the isolation forests lost to it)")
    } else if a_forest >= a_guarded {
        (forest_model, "isolation_forest")
    } else {
        (guarded, "isolation_forest+range")
    };
    let model = json!({
        "algorithm": algorithm,
        "baseline": "robust_z",
        "serving": serde_json::to_value(&serving).map_err(|e| Error::Model(e.to_string()))?,
        "profile": profile,
        "injected": n_bad,
    });
    Ok(file(x.len(), seed, "roc_auc_injected", metrics, metric(a_z), model))
}

/// The forecaster a node's batch size follows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServedForecaster {
    /// An LSTM's JSON ([`crate::forecast::Forecaster::to_json`]).
    Lstm {
        model: Value,
    },
    Ewma {
        alpha: f64,
    },
}

/// Trains the arrival forecaster on the per-second arrival counts of `samples` (an LSTM
/// against an EWMA, by one-step MAE on the last 20 % of the seconds). The window is 30
/// seconds, shorter for a short history (at least 5).
pub fn forecaster(samples: &[TxSample], seed: u64) -> Result<ModelFile> {
    let ts: Vec<i64> = samples.iter().map(|s| s.ts).collect();
    let series = crate::forecast::counts(&ts, 1000);
    let window = (series.len() / 4).clamp(5, 30);
    let params = crate::forecast::ForecastParams { window, seed, ..Default::default() };
    let (report, lstm) = crate::forecast::evaluate(&series, 1.0 - TEST_FRACTION, params)?;
    let metrics = |mae: f64, rmse: f64| BTreeMap::from([("mae".to_string(), mae), ("rmse".to_string(), rmse)]);
    let ewma = metrics(report.ewma_mae, report.ewma_rmse);
    let (serving, algorithm, mut served) = if report.lstm_mae <= report.ewma_mae {
        (ServedForecaster::Lstm { model: lstm.to_json() }, "lstm", metrics(report.lstm_mae, report.lstm_rmse))
    } else {
        (ServedForecaster::Ewma { alpha: report.ewma_alpha }, "ewma (the lstm lost to it)", ewma.clone())
    };
    served.insert("lstm_mae".into(), report.lstm_mae);
    let model = json!({
        "algorithm": algorithm,
        "baseline": "ewma",
        "serving": serde_json::to_value(&serving).map_err(|e| Error::Model(e.to_string()))?,
        "seconds": series.len(),
        "window": window,
    });
    let mut f = file(samples.len(), seed, "mae", served, ewma, model);
    f.lower_is_better = true;
    Ok(f)
}

/// Why `features` (a [`TxFeatures`] as JSON) looks anomalous next to the profile in an
/// anomaly model file's `model`: the features furthest from typical, e.g.
/// `fee_rate 0.1 (typical 12.5), inputs 40 (typical 1)`.
pub fn explain(model: &Value, features: &Value) -> Option<String> {
    let profile: Profile = serde_json::from_value(model.get("profile")?.clone()).ok()?;
    let f: TxFeatures = serde_json::from_value(features.clone()).ok()?;
    let x = f.to_vec();
    let z = profile.z(&x);
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
    let parts: Vec<String> = order
        .iter()
        .take(3)
        .filter(|&&j| z[j] > 3.0)
        .map(|&j| format!("{} {:.3} (typical {:.3})", TxFeatures::NAMES[j], x[j], profile.median[j]))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded traffic a node might see: fee rates spread over two orders of magnitude.
    fn traffic(n: usize, seed: u64) -> Vec<TxSample> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let inputs = f64::from(rng.gen_range(1..4));
                let outputs = f64::from(rng.gen_range(1..3));
                TxSample {
                    seq: i as u64 + 1,
                    ts: i as i64,
                    txid: format!("{i:064x}"),
                    features: TxFeatures {
                        fee_rate: (rng.gen_range(0.0..4.5f64)).exp(),
                        vsize: 68.0 * inputs + 31.0 * outputs + 11.0,
                        inputs,
                        outputs,
                        sender_history: f64::from(rng.gen_range(0..5)),
                        coin_age: f64::from(rng.gen_range(1..100)),
                    },
                    class: 0,
                    score: None,
                    wait_ms: 1.0,
                    outcome: "accepted".into(),
                    source: "p2p".into(),
                    held: false,
                }
            })
            .collect()
    }

    #[test]
    fn the_classifier_learns_fee_classes_and_reports_its_baseline() {
        let f = classifier(&traffic(1000, 1), 3, 7).unwrap();
        assert_eq!(f.primary_metric, "macro_f1");
        assert!(f.metrics["macro_f1"] > 0.9, "{:?}", f.metrics);
        assert!(f.baseline_metrics.contains_key("macro_f1"));
        assert!(f.metrics["macro_f1"] >= f.baseline_metrics["macro_f1"]);
        let serving: Classifier = serde_json::from_value(f.model["serving"].clone()).unwrap();
        // a rich transaction lands in the first class, a poor one in the last
        let rich =
            TxFeatures { fee_rate: 80.0, vsize: 110.0, inputs: 1.0, outputs: 1.0, sender_history: 0.0, coin_age: 5.0 };
        let poor = TxFeatures { fee_rate: 1.1, ..rich.clone() };
        assert_eq!(serving.predict(&[rich.to_vec(), poor.to_vec()]), vec![0, 2]);
    }

    #[test]
    fn the_anomaly_model_finds_injected_anomalies_and_explains_one() {
        let f = iforest(&traffic(2000, 2), 7).unwrap();
        assert!(f.metrics["roc_auc_injected"] > 0.9, "{:?}", f.metrics);
        let serving: AnomalyModel = serde_json::from_value(f.model["serving"].clone()).unwrap();
        let normal = traffic(1, 3)[0].features.clone();
        let spam = TxFeatures { fee_rate: 0.1, inputs: 60.0, outputs: 60.0, vsize: 9000.0, ..normal.clone() };
        assert!(serving.score(&spam.to_vec()) > serving.score(&normal.to_vec()));
        let why = explain(&f.model, &serde_json::to_value(&spam).unwrap()).unwrap();
        assert!(why.contains("inputs") || why.contains("outputs") || why.contains("vsize"), "{why}");
    }

    #[test]
    fn the_same_seed_gives_the_same_model() {
        let s = traffic(500, 4);
        let a = iforest(&s, 9).unwrap();
        let b = iforest(&s, 9).unwrap();
        assert_eq!(a.model, b.model);
        assert_eq!(a.metrics, b.metrics);
    }

    #[test]
    fn a_feature_that_is_mostly_one_value_does_not_drown_the_others() {
        // sender history 0 but for a few: MAD 0, so the mean deviation gives the scale
        let mut rows = vec![[10.0, 140.0, 1.0, 2.0, 0.0, 0.0]; 95];
        rows.extend(vec![[20.0, 140.0, 1.0, 2.0, 2.0, 1.0]; 5]);
        let p = Profile::fit(&rows, &TxFeatures::RESOLUTION);
        let z = p.z(&[4000.0, 140.0, 1.0, 2.0, 10.0, 10.0]);
        assert!(z[0] > z[4] && z[0] > z[5], "the fee outlier stands out most: {z:?}");
        // seen at one value only: one unit off it is one resolution off
        let p = Profile::fit(&vec![[10.0, 140.0, 1.0, 2.0, 0.0, 0.0]; 50], &TxFeatures::RESOLUTION);
        assert_eq!(p.z(&[10.0, 140.0, 1.0, 2.0, 9.0, 0.0])[4], 9.0);
    }

    #[test]
    fn robust_z_scores_half_at_three_deviations() {
        let p = Profile { median: vec![0.0; 6], mad: vec![1.0 / 1.4826; 6], mean_ad: vec![0.0; 6], min_scale: vec![] };
        let m = AnomalyModel::RobustZ(p);
        assert!((m.score(&[3.0, 0.0, 0.0, 0.0, 0.0, 0.0]) - 0.5).abs() < 1e-9);
        assert!(m.score(&[0.0; 6]).abs() < 1e-9);
    }
}
