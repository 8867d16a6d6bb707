//! What a node records of each transaction it sees: the training data of the transaction
//! optimiser, collected by the daemon.

use serde::{Deserialize, Serialize};

use crate::TxFeatures;

/// One transaction a node saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TxSample {
    /// The node's number of the sample (from 1; again from 1 after the node restarts).
    pub seq: u64,
    /// Unix milliseconds when it arrived.
    pub ts: i64,
    pub txid: String,
    pub features: TxFeatures,
    /// The class it was served in (0 first).
    pub class: u32,
    /// The live isolation forest's score, when one was live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Milliseconds from arrival to the end of its validation.
    pub wait_ms: f64,
    /// `accepted`, `held`, or the reason it was refused (Bitcoin Core's reject reasons).
    pub outcome: String,
    /// `p2p` (pushed by a peer, queued) or `rpc` (`sendrawtransaction`, validated at once).
    pub source: String,
    pub held: bool,
}
