//! One node of micro-os's reference chain: the chain state, mempool, wallet and miner of
//! `micro-os-chain` put together ([`node::Node`]), and a JSON-RPC server compatible with
//! Bitcoin Core's ([`rpc`]) so existing clients and mining tools work unchanged.
//!
//! Invariant: only this crate (a binary's) knows HTTP; `micro-os-chain` stays free of it.
//! The P2P sync is a later step: it drives [`node::Node`] through `accept_header`,
//! `accept_block`, `accept_tx`, `locator`, `headers_after`, `block` and `subscribe`.

pub mod health;
pub mod mining;
pub mod node;
pub mod rpc;
pub mod wallet;
