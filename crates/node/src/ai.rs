//! The transaction optimiser inside a node (the AI layer's first module, issue 14).
//!
//! Every transaction that reaches the node is described by its features
//! ([`micro_os_ai::TxFeatures`]), put in a priority class by the live random forest and
//! scored by the live isolation forest. What peers push waits in a priority queue (with
//! aging, so the lowest class is not starved) and is validated in batches of `batch_size`,
//! highest class first; an anomaly is held back and counted, never silently dropped. Every
//! transaction seen becomes a [`TxSample`] that the daemon collects to train the next models.
//!
//! Key design decision: the node serves models, it never trains. The daemon trains on the
//! samples it collected, keeps the versions, and pushes the live ones here (`setaimodel`).
//! A node with the module disabled, or without a classifier, puts every transaction in one
//! class: the queue is then FIFO, which is the baseline the benchmarks compare with.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bitcoin::hashes::{hash160, Hash};
use bitcoin::{Transaction, Txid};
use micro_os_ai::{AnomalyModel, Classifier, PriorityQueue, Scheduler, TxFeatures, TxOptimizerConfig, TxSample};
use micro_os_p2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// Samples kept for the daemon to collect (the oldest go first).
pub const SAMPLES_KEPT: usize = 50_000;
/// Senders remembered for the `sender_history` feature.
const SENDERS_KEPT: usize = 100_000;
/// A queued transaction moves up one class per this many seconds of waiting.
pub const AGING_SECS: f64 = 2.0;
/// Anomalies listed in `getaiinfo`.
const RECENT_ANOMALIES: usize = 20;
/// Anomalies held back at most; past this the oldest is released to validation (and
/// counted), so a flood cannot grow the node's memory without bound.
const HELD_MAX: usize = 10_000;

/// A transaction waiting for validation.
#[derive(Debug, Clone)]
pub struct Job {
    pub tx: Transaction,
    pub txid: Txid,
    /// The peer that pushed it.
    pub peer: Option<PeerId>,
    pub features: TxFeatures,
    pub class: u32,
    pub score: Option<f64>,
    arrived: Instant,
    seq: u64,
}

impl Job {
    /// Seconds it has waited.
    pub fn waited(&self) -> f64 {
        self.arrived.elapsed().as_secs_f64()
    }
}

/// Which model a `setaimodel` call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Classifier,
    Iforest,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counters {
    seen: u64,
    queued: u64,
    batches: u64,
    validated: u64,
    /// Served while a transaction that arrived earlier still waited.
    reordered: u64,
    anomalies: u64,
    released: u64,
}

struct Inner {
    enabled: bool,
    config: TxOptimizerConfig,
    /// The live models, shared so that scoring runs outside the lock.
    classifier: Option<(u64, Arc<Classifier>)>,
    iforest: Option<(u64, Arc<AnomalyModel>)>,
    queue: PriorityQueue<Job>,
    /// Arrival numbers of what waits in the queue, to count reorderings.
    waiting: BTreeSet<u64>,
    next_seq: u64,
    senders: HashMap<[u8; 20], u32>,
    samples: VecDeque<TxSample>,
    next_sample: u64,
    counters: Counters,
    /// The last anomalies seen, held or not, newest last.
    recent_anomalies: VecDeque<Value>,
    /// The batch size the arrival forecast asks for (at most `batch_size`), when one is live.
    adaptive_batch: Option<u32>,
}

/// The optimiser's state in one node. See the module documentation.
pub struct Optimizer {
    inner: Mutex<Inner>,
    started: Instant,
    /// Woken when a job is queued.
    pub wake: Notify,
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer {
            inner: Mutex::new(Inner {
                enabled: false,
                config: TxOptimizerConfig::default(),
                classifier: None,
                iforest: None,
                queue: PriorityQueue::new(AGING_SECS),
                waiting: BTreeSet::new(),
                next_seq: 0,
                senders: HashMap::new(),
                samples: VecDeque::new(),
                next_sample: 1,
                counters: Counters::default(),
                recent_anomalies: VecDeque::new(),
                adaptive_batch: None,
            }),
            started: Instant::now(),
            wake: Notify::new(),
        }
    }
}

/// Who spent a transaction's first input: the hash of the last witness element (the
/// public key of a P2WPKH spend) or of the last push of the script (P2PKH).
fn sender(tx: &Transaction) -> Option<[u8; 20]> {
    let input = tx.input.first()?;
    let key: Vec<u8> = match input.witness.last() {
        Some(k) => k.to_vec(),
        None => input
            .script_sig
            .instructions()
            .filter_map(|i| i.ok()?.push_bytes().map(|b| b.as_bytes().to_vec()))
            .last()?,
    };
    Some(hash160::Hash::hash(&key).to_byte_array())
}

impl Optimizer {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// Turns the module on or off with `config` (already validated by the daemon, checked
    /// again here). Turning it off releases what was held to validation.
    pub fn configure(&self, enabled: bool, config: TxOptimizerConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())?;
        let mut g = self.lock();
        g.enabled = enabled;
        g.config = config;
        if !enabled {
            let held = g.queue.release_held();
            g.counters.released += held.len() as u64;
            let now = self.now();
            for job in held {
                g.waiting.insert(job.seq);
                g.queue.push(job, 0, now);
            }
        }
        drop(g);
        self.wake.notify_one();
        Ok(())
    }

    /// Makes `model` (the JSON of a trained [`Classifier`] or [`AnomalyModel`]) live at
    /// `version`.
    pub fn set_model(&self, kind: ModelKind, version: u64, model: Value) -> Result<(), String> {
        let mut g = self.lock();
        match kind {
            ModelKind::Classifier => {
                let m: Classifier =
                    serde_json::from_value(model).map_err(|e| format!("classifier v{version} does not load: {e}"))?;
                g.classifier = Some((version, Arc::new(m)));
            }
            ModelKind::Iforest => {
                let m: AnomalyModel = serde_json::from_value(model)
                    .map_err(|e| format!("anomaly model v{version} does not load: {e}"))?;
                g.iforest = Some((version, Arc::new(m)));
            }
        }
        Ok(())
    }

    /// Counts `tx`'s sender and returns how often it was seen before.
    pub fn sender_history(&self, tx: &Transaction) -> u32 {
        let Some(key) = sender(tx) else { return 0 };
        let mut g = self.lock();
        if g.senders.len() >= SENDERS_KEPT && !g.senders.contains_key(&key) {
            // forget everyone at once rather than keep an LRU: the feature is a rate
            g.senders.clear();
        }
        let n = g.senders.entry(key).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    /// Forgets every sender seen (a benchmark replaying one trace starts each run afresh).
    pub fn forget_senders(&self) {
        self.lock().senders.clear();
    }

    /// The class (0 is served first) and anomaly score of a transaction with `features`;
    /// one class for all when the module is off or no classifier is live.
    pub fn assess(&self, features: &TxFeatures) -> (u32, Option<f64>) {
        let (classifier, iforest, levels) = {
            let g = self.lock();
            if !g.enabled {
                return (0, None);
            }
            let classifier = g.classifier.as_ref().map(|(_, m)| Arc::clone(m));
            let iforest = g.iforest.as_ref().map(|(_, m)| Arc::clone(m));
            (classifier, iforest, g.config.priority_levels)
        };
        // the models run outside the lock: validation takes it for every batch
        let row = features.to_vec();
        let class =
            classifier.and_then(|m| m.predict(&[row]).first().copied()).unwrap_or(0).min(levels.saturating_sub(1));
        let score = iforest.map(|m| m.score(&row));
        (class, score)
    }

    /// Whether `score` marks an anomaly under the live configuration.
    pub fn is_anomaly(&self, score: Option<f64>) -> bool {
        let g = self.lock();
        g.enabled && score.is_some_and(|s| s >= g.config.anomaly_threshold)
    }

    /// Queues a transaction a peer pushed; an anomaly is held instead.
    pub fn enqueue(&self, tx: Transaction, peer: Option<PeerId>, features: TxFeatures) {
        let (class, score) = self.assess(&features);
        let anomaly = self.is_anomaly(score);
        let txid = tx.compute_txid();
        let now = self.now();
        let mut g = self.lock();
        let seq = g.next_seq;
        g.next_seq += 1;
        g.counters.seen += 1;
        let job = Job { tx, txid, peer, features, class, score, arrived: Instant::now(), seq };
        if anomaly {
            g.counters.anomalies += 1;
            let sample = Self::sample_of(&job, 0.0, "held", "p2p", true);
            Self::keep(&mut g, sample);
            g.queue.hold(job, format!("anomaly score {:.3}", score.unwrap_or_default()));
            if g.queue.held_len() > HELD_MAX {
                if let Some(oldest) = g.queue.release_oldest_held() {
                    g.counters.released += 1;
                    g.waiting.insert(oldest.seq);
                    let class = oldest.class;
                    g.queue.push(oldest, class, now);
                }
            }
        } else {
            g.counters.queued += 1;
            g.waiting.insert(seq);
            g.queue.push(job, class, now);
        }
        drop(g);
        self.wake.notify_one();
    }

    /// Up to `batch_size` jobs to validate, highest class first.
    pub fn next_batch(&self) -> Vec<Job> {
        let now = self.now();
        let mut g = self.lock();
        let n = g.adaptive_batch.map_or(g.config.batch_size, |a| a.min(g.config.batch_size)).max(1) as usize;
        let mut batch = Vec::new();
        while batch.len() < n {
            let Some(job) = g.queue.pop(now) else { break };
            if g.waiting.first().is_some_and(|&first| first < job.seq) {
                g.counters.reordered += 1;
            }
            g.waiting.remove(&job.seq);
            batch.push(job);
        }
        if !batch.is_empty() {
            g.counters.batches += 1;
        }
        batch
    }

    /// Follows the arrival forecast's batch size (`None`: `batch_size` again).
    pub fn set_adaptive_batch(&self, batch: Option<u32>) {
        self.lock().adaptive_batch = batch.filter(|b| *b > 0);
    }

    /// Transactions waiting for validation.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Releases every held anomaly to validation; returns how many.
    pub fn release_held(&self) -> usize {
        let now = self.now();
        let mut g = self.lock();
        let held = g.queue.release_held();
        let n = held.len();
        g.counters.released += n as u64;
        for job in held {
            g.waiting.insert(job.seq);
            let class = job.class;
            g.queue.push(job, class, now);
        }
        drop(g);
        self.wake.notify_one();
        n
    }

    fn sample_of(job: &Job, wait_ms: f64, outcome: &str, source: &str, held: bool) -> TxSample {
        TxSample {
            seq: 0,
            ts: unix_ms() - (job.waited() * 1000.0) as i64,
            txid: job.txid.to_string(),
            features: job.features.clone(),
            class: job.class,
            score: job.score,
            wait_ms,
            outcome: outcome.into(),
            source: source.into(),
            held,
        }
    }

    fn keep(g: &mut Inner, mut sample: TxSample) {
        if sample.score.is_some_and(|s| s >= g.config.anomaly_threshold) && g.enabled {
            if g.recent_anomalies.len() >= RECENT_ANOMALIES {
                g.recent_anomalies.pop_front();
            }
            g.recent_anomalies.push_back(json!({
                "txid": sample.txid, "score": sample.score, "features": sample.features,
                "source": sample.source, "held": sample.held,
            }));
        }
        sample.seq = g.next_sample;
        g.next_sample += 1;
        if g.samples.len() >= SAMPLES_KEPT {
            g.samples.pop_front();
        }
        g.samples.push_back(sample);
    }

    /// Records the end of a queued job's validation.
    pub fn validated(&self, job: &Job, outcome: &str) {
        let sample = Self::sample_of(job, job.waited() * 1000.0, outcome, "p2p", false);
        let mut g = self.lock();
        g.counters.validated += 1;
        Self::keep(&mut g, sample);
    }

    /// Records a transaction validated at once (`sendrawtransaction`, or any when the
    /// module is off), scored all the same so that anomalies are counted.
    pub fn observed(&self, tx: &Transaction, features: TxFeatures, source: &str, wait_ms: f64, outcome: &str) {
        let (class, score) = self.assess(&features);
        let anomaly = self.is_anomaly(score);
        let sample = TxSample {
            seq: 0,
            ts: unix_ms() - wait_ms as i64,
            txid: tx.compute_txid().to_string(),
            features,
            class,
            score,
            wait_ms,
            outcome: outcome.into(),
            source: source.into(),
            held: false,
        };
        let mut g = self.lock();
        g.counters.seen += 1;
        g.counters.validated += 1;
        if anomaly {
            g.counters.anomalies += 1;
        }
        Self::keep(&mut g, sample);
    }

    /// Samples after `since` (a sample's `seq`), at most `limit`, and the `seq` to ask from
    /// next time.
    pub fn samples(&self, since: u64, limit: usize) -> (Vec<TxSample>, u64) {
        let g = self.lock();
        // a node that restarted numbers its samples from 1 again
        let since = if since >= g.next_sample { 0 } else { since };
        let out: Vec<TxSample> = g.samples.iter().filter(|s| s.seq > since).take(limit).cloned().collect();
        let next = out.last().map_or(since, |s| s.seq);
        (out, next)
    }

    /// What the module is set to and what it did (`getaiinfo`).
    pub fn info(&self) -> Value {
        let g = self.lock();
        let held: Vec<Value> = g
            .queue
            .held()
            .take(RECENT_ANOMALIES)
            .map(|(j, why)| json!({ "txid": j.txid.to_string(), "score": j.score, "why": why, "features": j.features }))
            .collect();
        json!({
            "enabled": g.enabled,
            "config": g.config,
            "classifier_version": g.classifier.as_ref().map(|m| m.0),
            "iforest_version": g.iforest.as_ref().map(|m| m.0),
            "queued": g.queue.len(),
            "class_queued": g.queue.class_lens(),
            "held": g.queue.held_len(),
            "held_sample": held,
            "recent_anomalies": g.recent_anomalies,
            "counters": g.counters,
            "samples_kept": g.samples.len(),
            "adaptive_batch": g.adaptive_batch,
            "batch_now": g.adaptive_batch.map_or(g.config.batch_size, |a| a.min(g.config.batch_size)),
            "last_sample": g.next_sample - 1,
        })
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness};

    fn tx(n: u32, key: u8) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid: Txid::all_zeros(), vout: n },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[vec![1u8; 71], vec![key; 33]]),
            }],
            output: vec![TxOut { value: Amount::from_sat(1000), script_pubkey: ScriptBuf::new() }],
        }
    }

    fn features(fee_rate: f64) -> TxFeatures {
        TxFeatures { fee_rate, vsize: 110.0, inputs: 1.0, outputs: 1.0, sender_history: 0.0, coin_age: 1.0 }
    }

    #[test]
    fn off_means_one_class_and_fifo() {
        let o = Optimizer::default();
        for i in 0..5 {
            o.enqueue(tx(i, 1), None, features(f64::from(i)));
        }
        let order: Vec<u32> = o.next_batch().iter().map(|j| j.tx.input[0].previous_output.vout).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(o.lock().counters.reordered, 0);
    }

    #[test]
    fn batches_are_capped_by_batch_size() {
        let o = Optimizer::default();
        let config = TxOptimizerConfig { batch_size: 3, ..Default::default() };
        o.configure(true, config).unwrap();
        for i in 0..7 {
            o.enqueue(tx(i, 1), None, features(1.0));
        }
        assert_eq!(o.next_batch().len(), 3);
        assert_eq!(o.next_batch().len(), 3);
        assert_eq!(o.next_batch().len(), 1);
        assert!(o.next_batch().is_empty());
        assert_eq!(o.lock().counters.batches, 3);
    }

    /// A live random forest trained on fee-rate deciles, as the daemon would push it.
    fn with_classifier(o: &Optimizer) {
        let rows: Vec<[f64; 6]> = (0..400).map(|i| features(1.0 + f64::from(i) * 0.25).to_vec()).collect();
        let y = micro_os_ai::label_by_fee_rate(&rows.iter().map(|r| r[0]).collect::<Vec<_>>(), 3);
        let m = micro_os_ai::PriorityClassifier::fit(&rows, &y, 1).unwrap();
        o.set_model(ModelKind::Classifier, 1, serde_json::to_value(Classifier::RandomForest(m)).unwrap()).unwrap();
    }

    #[test]
    fn a_high_fee_transaction_is_served_ahead_of_a_queued_flood() {
        let o = Optimizer::default();
        o.configure(true, TxOptimizerConfig { batch_size: 16, ..Default::default() }).unwrap();
        with_classifier(&o);
        for i in 0..1000 {
            o.enqueue(tx(i, 1), None, features(1.5));
        }
        o.enqueue(tx(5000, 2), None, features(90.0));
        let first = o.next_batch();
        assert_eq!(first[0].tx.input[0].previous_output.vout, 5000, "the high-fee one first");
        assert_eq!(first[0].class, 0);
        assert!(first[1..].iter().all(|j| j.class == 2), "then the flood");
        assert_eq!(o.lock().counters.reordered, 1);
        // with the module off the same arrivals are served in order
        let fifo = Optimizer::default();
        for i in 0..10 {
            fifo.enqueue(tx(i, 1), None, features(1.5));
        }
        fifo.enqueue(tx(5000, 2), None, features(90.0));
        assert_eq!(fifo.next_batch().last().unwrap().tx.input[0].previous_output.vout, 5000);
    }

    #[test]
    fn an_anomaly_is_held_counted_and_released_not_dropped() {
        let o = Optimizer::default();
        o.configure(true, TxOptimizerConfig::default()).unwrap();
        let rows: Vec<[f64; 6]> = (0..200).map(|i| features(5.0 + f64::from(i % 10)).to_vec()).collect();
        let profile = micro_os_ai::train::Profile::fit(&rows, &TxFeatures::RESOLUTION);
        o.set_model(ModelKind::Iforest, 3, serde_json::to_value(AnomalyModel::RobustZ(profile)).unwrap()).unwrap();
        o.enqueue(tx(1, 1), None, features(8.0));
        let spam = TxFeatures { inputs: 80.0, outputs: 80.0, vsize: 9000.0, ..features(0.0) };
        o.enqueue(tx(2, 3), None, spam);
        let served = o.next_batch();
        assert_eq!(served.len(), 1, "the anomaly is not served");
        let info = o.info();
        assert_eq!((info["held"].as_u64(), info["counters"]["anomalies"].as_u64()), (Some(1), Some(1)), "{info}");
        assert_eq!(info["recent_anomalies"][0]["held"], true, "{info}");
        assert_eq!(info["iforest_version"], 3);
        assert_eq!(o.release_held(), 1);
        assert_eq!(o.next_batch()[0].tx.input[0].previous_output.vout, 2, "released to validation");
    }

    #[test]
    fn the_forecast_batch_is_capped_by_batch_size() {
        let o = Optimizer::default();
        o.configure(true, TxOptimizerConfig { batch_size: 4, ..Default::default() }).unwrap();
        for i in 0..10 {
            o.enqueue(tx(i, 1), None, features(1.0));
        }
        o.set_adaptive_batch(Some(2));
        assert_eq!(o.next_batch().len(), 2);
        o.set_adaptive_batch(Some(64));
        assert_eq!(o.next_batch().len(), 4, "never above batch_size");
        assert_eq!(o.info()["batch_now"], 4);
        o.set_adaptive_batch(None);
        assert_eq!(o.next_batch().len(), 4);
    }

    #[test]
    fn sender_history_counts_the_same_key() {
        let o = Optimizer::default();
        assert_eq!(o.sender_history(&tx(0, 7)), 0);
        assert_eq!(o.sender_history(&tx(1, 7)), 1);
        assert_eq!(o.sender_history(&tx(2, 8)), 0);
        assert_eq!(o.sender_history(&tx(3, 7)), 2);
    }

    #[test]
    fn samples_page_by_seq() {
        let o = Optimizer::default();
        for i in 0..5 {
            o.observed(&tx(i, 1), features(1.0), "rpc", 0.1, "accepted");
        }
        let (first, next) = o.samples(0, 3);
        assert_eq!(first.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let (rest, next2) = o.samples(next, 10);
        assert_eq!(rest.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![4, 5]);
        let (none, next3) = o.samples(next2, 10);
        assert!(none.is_empty());
        assert_eq!(next3, 5);
        // a collector that knew a later seq (the node restarted) starts over
        let (again, _) = o.samples(99, 2);
        assert_eq!(again.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2]);
    }
}
