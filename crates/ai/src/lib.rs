//! The AI layer of micro-os: what a transaction looks like to a model ([`TxFeatures`],
//! [`TxSample`]), the models (a random forest and its logistic baseline in [`classifier`],
//! an isolation forest in [`iforest`]), training runs that score each model against its
//! named baseline on held-back data ([`train`]), the validation queue with aging
//! ([`queue`]), the module's configuration ([`config`]) and the versioned model store
//! ([`store`]).
//!
//! Key design decision: a model is an artefact with a report. Training, scoring and
//! serving are separate functions; every model file carries its data size, seed, metrics
//! on held-back data and its baseline's metrics on the same data, and a model that loses to
//! its baseline is not served: the baseline is, and the file says so. Nothing here reads a
//! clock or an unseeded random source, so every result repeats.

pub mod classifier;
pub mod config;
mod error;
pub mod features;
pub mod forecast;
pub mod iforest;
pub mod metrics;
pub mod queue;
pub mod sample;
pub mod store;
pub mod train;

pub use classifier::{label_by_fee_rate, LogisticBaseline, PriorityClassifier};
pub use config::TxOptimizerConfig;
pub use error::{Error, Result};
pub use features::TxFeatures;
pub use iforest::{IForestParams, IsolationForest};
pub use queue::{Fifo, PriorityQueue, Scheduler};
pub use sample::TxSample;
pub use store::{ModelFile, ModelStore, Promotion};
pub use train::{AnomalyModel, Classifier};
