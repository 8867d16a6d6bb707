//! The priority classifier: a random forest (smartcore) from a transaction's features to
//! its class, 0 served first; and its baseline, a logistic regression on standardised
//! features. Both are seeded and serialise to JSON.

use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::{Error, Result};

type Forest = RandomForestClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>>;
type Logistic = LogisticRegression<f64, u32, DenseMatrix<f64>, Vec<u32>>;

/// Trees in the forest, and how deep they may grow.
pub const TREES: u16 = 50;
pub const MAX_DEPTH: u16 = 10;

fn matrix(rows: &[[f64; 6]]) -> Result<DenseMatrix<f64>> {
    let rows: Vec<Vec<f64>> = rows.iter().map(|r| r.to_vec()).collect();
    DenseMatrix::from_2d_vec(&rows).map_err(|e| Error::Model(e.to_string()))
}

fn check(x: &[[f64; 6]], y: &[u32]) -> Result<()> {
    if x.len() != y.len() || x.is_empty() {
        return Err(Error::Data(format!(
            "{} rows and {} labels: training needs as many of each, and some",
            x.len(),
            y.len()
        )));
    }
    let first = y[0];
    if y.iter().all(|&c| c == first) {
        return Err(Error::Data(format!(
            "every training sample is in class {first}: the classifier needs transactions of different fee rates"
        )));
    }
    Ok(())
}

/// The class of each fee rate: `levels` quantile buckets, the highest fee rates in class 0.
/// Equal fee rates always share a class.
pub fn label_by_fee_rate(fee_rates: &[f64], levels: u32) -> Vec<u32> {
    let mut sorted = fee_rates.to_vec();
    let cuts: Vec<f64> = (1..levels)
        .map(|k| crate::metrics::percentile(&mut sorted, 100.0 * f64::from(k) / f64::from(levels)))
        .collect();
    fee_rates
        .iter()
        .map(|f| {
            let above = cuts.iter().filter(|c| f > *c).count() as u32;
            levels - 1 - above
        })
        .collect()
}

/// The random forest.
#[derive(Debug, Serialize, Deserialize)]
pub struct PriorityClassifier {
    forest: Forest,
}

impl Clone for PriorityClassifier {
    fn clone(&self) -> Self {
        // smartcore's forest is not Clone; its serialised form is exact
        serde_json::from_value(serde_json::to_value(self).expect("a forest serialises"))
            .expect("a serialised forest loads")
    }
}

impl PriorityClassifier {
    pub fn fit(x: &[[f64; 6]], y: &[u32], seed: u64) -> Result<Self> {
        check(x, y)?;
        // every feature is a candidate at every split: smartcore's trees stop at a node
        // where the features drawn cannot split it (scikit-learn's draw more), so with
        // sqrt(6) = 2 of 6 drawn a forest whose signal is in one feature (the fee rate, when
        // every transaction has the same shape) would be mostly single leaves
        let params = RandomForestClassifierParameters::default()
            .with_n_trees(TREES)
            .with_max_depth(MAX_DEPTH)
            .with_m(6)
            .with_seed(seed);
        let forest = Forest::fit(&matrix(x)?, &y.to_vec(), params).map_err(|e| Error::Model(e.to_string()))?;
        Ok(PriorityClassifier { forest })
    }

    /// The class of each row (empty if smartcore refuses the rows, which rows of six
    /// numbers never make it do).
    pub fn predict(&self, x: &[[f64; 6]]) -> Vec<u32> {
        if x.is_empty() {
            return Vec::new();
        }
        matrix(x).and_then(|m| self.forest.predict(&m).map_err(|e| Error::Model(e.to_string()))).unwrap_or_default()
    }
}

/// The baseline: multinomial logistic regression on features standardised with the
/// training data's means and standard deviations.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogisticBaseline {
    mean: [f64; 6],
    std: [f64; 6],
    model: Logistic,
}

impl Clone for LogisticBaseline {
    fn clone(&self) -> Self {
        serde_json::from_value(serde_json::to_value(self).expect("a model serialises"))
            .expect("a serialised model loads")
    }
}

impl LogisticBaseline {
    pub fn fit(x: &[[f64; 6]], y: &[u32], _seed: u64) -> Result<Self> {
        check(x, y)?;
        let n = x.len() as f64;
        let mut mean = [0.0; 6];
        let mut std = [0.0; 6];
        for j in 0..6 {
            mean[j] = x.iter().map(|r| r[j]).sum::<f64>() / n;
            std[j] = (x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-12);
        }
        let z = Self::standardise(&mean, &std, x);
        // the solver is deterministic: the seed only names the run
        let model = Logistic::fit(&matrix(&z)?, &y.to_vec(), LogisticRegressionParameters::default())
            .map_err(|e| Error::Model(e.to_string()))?;
        Ok(LogisticBaseline { mean, std, model })
    }

    fn standardise(mean: &[f64; 6], std: &[f64; 6], x: &[[f64; 6]]) -> Vec<[f64; 6]> {
        x.iter().map(|r| std::array::from_fn(|j| (r[j] - mean[j]) / std[j])).collect()
    }

    pub fn predict(&self, x: &[[f64; 6]]) -> Vec<u32> {
        if x.is_empty() {
            return Vec::new();
        }
        let z = Self::standardise(&self.mean, &self.std, x);
        matrix(&z).and_then(|m| self.model.predict(&m).map_err(|e| Error::Model(e.to_string()))).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn data(n: usize, seed: u64) -> (Vec<[f64; 6]>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<[f64; 6]> = (0..n)
            .map(|_| {
                [rng.gen_range(0.0..4.0f64).exp(), rng.gen_range(100.0..400.0), 1.0, 2.0, rng.gen_range(0.0..5.0), 3.0]
            })
            .collect();
        let fee: Vec<f64> = x.iter().map(|r| r[0]).collect();
        let y = label_by_fee_rate(&fee, 3);
        (x, y)
    }

    #[test]
    fn labels_are_fee_quantiles_highest_first() {
        let y = label_by_fee_rate(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3);
        assert_eq!(y, vec![2, 2, 1, 1, 0, 0]);
        assert_eq!(label_by_fee_rate(&[5.0, 5.0, 5.0], 3), vec![2, 2, 2], "equal fee rates share a class");
    }

    #[test]
    fn forest_and_baseline_learn_and_round_trip() {
        let (x, y) = data(600, 1);
        let (xt, yt) = data(200, 2);
        let forest = PriorityClassifier::fit(&x, &y, 5).unwrap();
        let logistic = LogisticBaseline::fit(&x, &y, 5).unwrap();
        let acc = |p: Vec<u32>| crate::metrics::accuracy(&p, &yt);
        let (af, al) = (acc(forest.predict(&xt)), acc(logistic.predict(&xt)));
        assert!(af > 0.9, "forest {af}");
        assert!(al > 0.5, "logistic {al}");
        let back: PriorityClassifier = serde_json::from_str(&serde_json::to_string(&forest).unwrap()).unwrap();
        assert_eq!(back.predict(&xt), forest.predict(&xt));
        let back: LogisticBaseline = serde_json::from_str(&serde_json::to_string(&logistic).unwrap()).unwrap();
        assert_eq!(back.predict(&xt), logistic.predict(&xt));
        assert_eq!(PriorityClassifier::fit(&x, &y, 5).unwrap().predict(&xt), forest.predict(&xt), "seeded");
    }

    #[test]
    fn a_signal_in_one_feature_is_learnt() {
        // every transaction of one shape: only the fee rate varies
        let (mut x, _) = data(500, 3);
        for r in &mut x {
            r[1] = 110.0;
            r[4] = 0.0;
        }
        let y = label_by_fee_rate(&x.iter().map(|r| r[0]).collect::<Vec<_>>(), 10);
        let f = PriorityClassifier::fit(&x, &y, 1).unwrap();
        let acc = crate::metrics::accuracy(&f.predict(&x), &y);
        assert!(acc > 0.9, "{acc}");
    }

    #[test]
    fn one_class_is_refused_with_a_reason() {
        let x = vec![[1.0; 6]; 10];
        let e = PriorityClassifier::fit(&x, &[2; 10], 1).unwrap_err().to_string();
        assert!(e.contains("every training sample is in class 2"), "{e}");
        assert!(LogisticBaseline::fit(&x, &[1; 9], 1).is_err());
    }
}
