//! An isolation forest (Liu, Ting and Zhou, 2008), the algorithm of scikit-learn's
//! `IsolationForest`: trees of random splits over random sub-samples, where an anomaly is
//! isolated in fewer splits than a normal point. Seeded, so a fit repeats exactly.
//!
//! Written here rather than taken from a crate: the one on crates.io draws from
//! `thread_rng` and cannot be seeded. The trees live in one flat arena for speed and a
//! compact serialised form.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a forest is grown (scikit-learn's defaults: 100 trees of 256 samples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IForestParams {
    pub trees: usize,
    pub sample_size: usize,
    pub seed: u64,
}

impl Default for IForestParams {
    fn default() -> Self {
        IForestParams { trees: 100, sample_size: 256, seed: 0 }
    }
}

/// A node: a split (`f` >= 0: `x[f] < v` goes to `l`, else `r`) or a leaf (`f` = -1, `v`
/// the number of training points that reached it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Node {
    f: i16,
    v: f64,
    l: u32,
    r: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// Points each tree was grown on.
    psi: usize,
    features: usize,
}

const EULER: f64 = 0.577_215_664_901_532_9;

/// The mean path length of an unsuccessful search in a binary search tree of `n` points:
/// what a leaf holding `n` points adds, and the normaliser of the score.
pub fn c(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n <= 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER) - 2.0 * (n - 1.0) / n
    }
}

impl IsolationForest {
    /// Grows the forest on `data` (rows of equal length).
    pub fn fit(data: &[Vec<f64>], params: IForestParams) -> Result<Self> {
        let n = data.len();
        if n == 0 {
            return Err(Error::Data("no rows to fit an isolation forest on".into()));
        }
        let features = data[0].len();
        if features == 0 || features > i16::MAX as usize || data.iter().any(|r| r.len() != features) {
            return Err(Error::Data(format!(
                "rows must all have the same number (1 or more) of features, the first has {features}"
            )));
        }
        if params.trees == 0 || params.sample_size < 2 {
            return Err(Error::Data("an isolation forest needs 1 or more trees of 2 or more samples".into()));
        }
        let psi = params.sample_size.min(n);
        let limit = (psi as f64).log2().ceil() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mut forest = IsolationForest { nodes: Vec::new(), roots: Vec::new(), psi, features };
        for _ in 0..params.trees {
            let idx: Vec<usize> = sample(&mut rng, n, psi).into_vec();
            let root = forest.grow(data, idx, limit, &mut rng);
            forest.roots.push(root);
        }
        Ok(forest)
    }

    /// Grows one tree over `idx` and returns its root, depth first with an explicit stack.
    fn grow(&mut self, data: &[Vec<f64>], idx: Vec<usize>, limit: usize, rng: &mut ChaCha8Rng) -> u32 {
        let root = self.nodes.len() as u32;
        self.nodes.push(Node { f: -1, v: 0.0, l: 0, r: 0 });
        let mut stack = vec![(root, idx, 0usize)];
        let mut ranges: Vec<(usize, f64, f64)> = Vec::with_capacity(self.features);
        while let Some((at, idx, depth)) = stack.pop() {
            let leaf = Node { f: -1, v: idx.len() as f64, l: 0, r: 0 };
            if depth >= limit || idx.len() <= 1 {
                self.nodes[at as usize] = leaf;
                continue;
            }
            ranges.clear();
            ranges.extend((0..self.features).filter_map(|f| {
                let (lo, hi) = idx
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| (lo.min(data[i][f]), hi.max(data[i][f])));
                (lo < hi).then_some((f, lo, hi))
            }));
            if ranges.is_empty() {
                // every point alike: nothing left to split
                self.nodes[at as usize] = leaf;
                continue;
            }
            let (f, lo, hi) = ranges[rng.gen_range(0..ranges.len())];
            let mut v = rng.gen_range(lo..hi);
            if v <= lo {
                v = (lo + hi) / 2.0;
            }
            let (left, right): (Vec<usize>, Vec<usize>) = idx.into_iter().partition(|&i| data[i][f] < v);
            let l = self.nodes.len() as u32;
            self.nodes.push(leaf);
            self.nodes.push(leaf);
            self.nodes[at as usize] = Node { f: f as i16, v, l, r: l + 1 };
            stack.push((l, left, depth + 1));
            stack.push((l + 1, right, depth + 1));
        }
        root
    }

    fn path_length(&self, root: u32, x: &[f64]) -> f64 {
        let mut at = root as usize;
        let mut depth = 0.0;
        loop {
            let n = self.nodes[at];
            if n.f < 0 {
                return depth + c(n.v);
            }
            at = if x[n.f as usize] < n.v { n.l } else { n.r } as usize;
            depth += 1.0;
        }
    }

    /// The anomaly score 2^(-E[h(x)] / c(psi)) in (0, 1): near 1 is an anomaly, 0.5 or
    /// below is normal. A row of the wrong length scores 1 (nothing like what was seen).
    pub fn score(&self, x: &[f64]) -> f64 {
        if x.len() != self.features {
            return 1.0;
        }
        let mean = self.roots.iter().map(|&r| self.path_length(r, x)).sum::<f64>() / self.roots.len() as f64;
        2f64.powf(-mean / c(self.psi as f64))
    }

    pub fn score_many(&self, rows: &[Vec<f64>]) -> Vec<f64> {
        rows.iter().map(|r| self.score(r)).collect()
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::roc_auc;

    fn blob(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| (0..4).map(|_| rng.gen_range(-1.0..1.0) + rng.gen_range(-1.0..1.0)).collect()).collect()
    }

    #[test]
    fn c_matches_scikit_learn() {
        assert_eq!(c(1.0), 0.0);
        assert_eq!(c(2.0), 1.0);
        // sklearn: _average_path_length([256]) = 10.244770920116851
        assert!((c(256.0) - 10.244_770_920_116_851).abs() < 1e-9, "{}", c(256.0));
    }

    #[test]
    fn outliers_score_high_and_inliers_low() {
        let data = blob(2000, 1);
        let f = IsolationForest::fit(&data, IForestParams { seed: 3, ..Default::default() }).unwrap();
        let centre = f.score(&[0.0; 4]);
        let far = f.score(&[6.0, -6.0, 6.0, 6.0]);
        assert!(far > 0.7 && centre < 0.5, "far {far} centre {centre}");
        let mut rows = blob(300, 2);
        let mut labels = vec![false; rows.len()];
        for i in 0..30 {
            rows.push(vec![3.0 + f64::from(i) * 0.1, -3.0, 3.0, -3.0]);
            labels.push(true);
        }
        let auc = roc_auc(&f.score_many(&rows), &labels);
        assert!(auc > 0.95, "{auc}");
    }

    #[test]
    fn a_seed_repeats_and_another_differs() {
        let data = blob(500, 4);
        let p = IForestParams { trees: 20, sample_size: 64, seed: 9 };
        let a = IsolationForest::fit(&data, p).unwrap();
        assert_eq!(a, IsolationForest::fit(&data, p).unwrap());
        assert_ne!(a, IsolationForest::fit(&data, IForestParams { seed: 10, ..p }).unwrap());
        let back: IsolationForest = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.score(&[1.0, 2.0, 3.0, 4.0]), a.score(&[1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn degenerate_input_is_refused_or_handled() {
        assert!(IsolationForest::fit(&[], IForestParams::default()).is_err());
        assert!(IsolationForest::fit(&[vec![1.0], vec![1.0, 2.0]], IForestParams::default()).is_err());
        // all rows alike: every tree is one leaf, every point scores alike
        let same = vec![vec![1.0, 1.0]; 50];
        let f = IsolationForest::fit(&same, IForestParams::default()).unwrap();
        assert_eq!(f.score(&[1.0, 1.0]), f.score(&[5.0, 5.0]));
        assert_eq!(f.score(&[1.0]), 1.0);
    }
}
