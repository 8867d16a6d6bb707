//! One node of micro-os's reference chain: the chain state, mempool, wallet and miner of
//! `micro-os-chain` put together ([`node::Node`]), and a JSON-RPC server compatible with
//! Bitcoin Core's ([`rpc`]) so existing clients and mining tools work unchanged.
//!
//! Its peers are reached over micro-os's libp2p layer ([`p2p`]): headers-first sync, relay
//! of transactions and blocks, nodes of a network found through the DHT.
//!
//! Invariant: only this crate (a binary's) knows HTTP and the p2p layer; `micro-os-chain`
//! stays free of both. The P2P code drives [`node::Node`] only through `accept_header`,
//! `accept_block`, `accept_tx`, `locator`, `headers_after`, `block` and `subscribe`.

pub mod ai;
pub mod ai_service;
pub mod checks;
pub mod fast;
pub mod health;
pub mod light;
pub mod mining;
pub mod node;
pub mod p2p;
pub mod rpc;
pub mod sealed;
pub mod sealer;
pub mod wallet;
