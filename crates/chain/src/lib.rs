//! The reference chain: Bitcoin's wire formats (rust-bitcoin's types are the vocabulary),
//! a small set of spending rules (P2WPKH and P2PKH), ASERT difficulty, a SQLite chain
//! state with reorganisation, a fee-rate mempool and a SHA-NI midstate miner.
//!
//! In Bitcoin Core's shape: the chain state (`chainstate`), validation as a function from
//! (state, block) to a verdict with a reason (`validation`), the mempool (`mempool`),
//! block assembly and the miner (`miner`) are separate pieces with narrow interfaces.

pub mod chainstate;
pub mod error;
pub mod mempool;
pub mod miner;
pub mod params;
pub mod pow;
pub mod seal;
pub mod utxo;
pub mod validation;
