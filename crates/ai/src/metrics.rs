//! Scores of models on held-back data, and the seeded split that holds it back.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The share of predictions equal to the truth (0 for no predictions).
pub fn accuracy(predicted: &[u32], truth: &[u32]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    predicted.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / truth.len() as f64
}

/// The mean over classes `0..classes` of each class's F1 (a class that never occurs and
/// is never predicted is left out of the mean).
pub fn macro_f1(predicted: &[u32], truth: &[u32], classes: u32) -> f64 {
    let mut sum = 0.0;
    let mut counted = 0;
    for c in 0..classes {
        let tp = predicted.iter().zip(truth).filter(|(p, t)| **p == c && **t == c).count() as f64;
        let fp = predicted.iter().zip(truth).filter(|(p, t)| **p == c && **t != c).count() as f64;
        let fn_ = predicted.iter().zip(truth).filter(|(p, t)| **p != c && **t == c).count() as f64;
        if tp + fp + fn_ == 0.0 {
            continue;
        }
        sum += 2.0 * tp / (2.0 * tp + fp + fn_);
        counted += 1;
    }
    if counted == 0 {
        0.0
    } else {
        sum / f64::from(counted)
    }
}

/// The area under the ROC curve of `scores` (higher means positive) against `labels`: the
/// probability that a random positive scores above a random negative, ties counting half
/// (Mann-Whitney U with average ranks). 0.5 when either class is empty.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // ranks i+1..=j+1 share their mean
        let rank = (i + j + 2) as f64 / 2.0;
        for k in &order[i..=j] {
            ranks[*k] = rank;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    let rank_sum: f64 = ranks.iter().zip(labels).filter(|(_, l)| **l).map(|(r, _)| r).sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Indices `0..n` shuffled with `seed` and cut into (train, test), test taking
/// `test_fraction` of them (at least one of each when n >= 2).
pub fn split_train_test(n: usize, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut n_test = (n as f64 * test_fraction).round() as usize;
    if n >= 2 {
        n_test = n_test.clamp(1, n - 1);
    }
    let test = idx.split_off(n - n_test.min(n));
    (idx, test)
}

/// The `p`th percentile (0..=100) of `values`, interpolated linearly between ranks as
/// numpy's default does; sorts `values`. NaN for no values.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let pos = (p / 100.0).clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        // positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5) (0.5>0.1)
        let auc = roc_auc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]);
        assert!((auc - 3.5 / 4.0).abs() < 1e-12, "{auc}");
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, true]), 1.0);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, false]), 0.0);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), 0.5);
    }

    #[test]
    fn f1_and_accuracy() {
        let truth = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 2, 0];
        assert!((accuracy(&pred, &truth) - 4.0 / 6.0).abs() < 1e-12);
        // class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fp0 fn1 -> 2/3
        let f1 = macro_f1(&pred, &truth, 3);
        assert!((f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12, "{f1}");
        assert_eq!(macro_f1(&pred, &truth, 4), f1, "an absent class is left out");
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (a, b) = split_train_test(100, 0.2, 5);
        assert_eq!((a.len(), b.len()), (80, 20));
        assert_eq!(split_train_test(100, 0.2, 5), (a.clone(), b.clone()));
        assert_ne!(split_train_test(100, 0.2, 6).1, b);
        let mut all: Vec<usize> = a.into_iter().chain(b).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split_train_test(2, 0.01, 1).1.len(), 1);
    }

    #[test]
    fn percentiles_interpolate() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&mut v, 50.0), 2.5);
        assert_eq!(percentile(&mut v, 100.0), 4.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
