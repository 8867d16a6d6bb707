//! What the transaction optimiser knows of a transaction before validating it.

use serde::{Deserialize, Serialize};

/// The features of one transaction. The node computes them (it has the coins); the
/// models only see these six numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxFeatures {
    /// Fee per virtual byte, in satoshis (0 when an input is unknown: an orphan).
    pub fee_rate: f64,
    /// Virtual size in bytes.
    pub vsize: f64,
    pub inputs: f64,
    pub outputs: f64,
    /// How many transactions the node saw before from the same sender (the key that
    /// signed the first input).
    pub sender_history: f64,
    /// Age in blocks of the youngest coin it spends (Bitcoin's old "coin age" priority).
    pub coin_age: f64,
}

impl TxFeatures {
    pub const NAMES: [&'static str; 6] = ["fee_rate", "vsize", "inputs", "outputs", "sender_history", "coin_age"];
    /// The smallest difference that means something in each feature: 1 sat/vB, 10 vB, one
    /// input, one output, one transaction, one block.
    pub const RESOLUTION: [f64; 6] = [1.0, 10.0, 1.0, 1.0, 1.0, 1.0];

    pub fn to_vec(&self) -> [f64; 6] {
        [self.fee_rate, self.vsize, self.inputs, self.outputs, self.sender_history, self.coin_age]
    }
}
