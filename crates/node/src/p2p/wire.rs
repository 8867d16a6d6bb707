//! The messages of `/micro-os/chain/1`: JSON requests that carry the network's magic, and
//! the answers to them. Headers, blocks and transactions travel as the hex of their
//! consensus encoding (Bitcoin's wire format), so any rust-bitcoin or Core tool reads them.

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{Block, BlockHash, Transaction};
use micro_os_p2p::StreamProtocol;
use serde::{Deserialize, Serialize};

/// The chain's protocol, registered with the p2p layer.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/micro-os/chain/1");

/// Headers in one `GetHeaders` answer, at most (Core's `MAX_HEADERS_RESULTS`).
pub const MAX_HEADERS: usize = 2000;

/// Hashes in one `GetBlocks` request, at most.
pub const MAX_GET_BLOCKS: usize = 128;

/// Locator entries read, at most (Core's `MAX_LOCATOR_SZ`).
pub const MAX_LOCATOR: usize = 101;

/// Hex characters of blocks in one `GetBlocks` answer, at most (4 MiB of blocks); an answer
/// always holds at least one block, and the requester asks again for the rest.
pub const MAX_BLOCKS_HEX: usize = 8 << 20;

/// Hex characters of a pushed block, at most: a request on a registered protocol is at most
/// 1 MiB, so a larger block is announced with a `Hello` and fetched with `GetBlocks`.
pub const MAX_PUSH_HEX: usize = 900 << 10;

/// One request: the network's magic (hex of its four message-start bytes) and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub magic: String,
    #[serde(flatten)]
    pub message: Message,
}

/// What a peer asks or tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Who we are and where our chain is; answered with the receiver's own `Hello`. Also
    /// sent again to announce a new tip (a block too large to push, the end of a sync).
    Hello(Hello),
    /// Headers after the first locator hash on the receiver's active chain; answered with
    /// [`Headers`].
    GetHeaders { locator: Vec<BlockHash> },
    /// Blocks by hash, answered in that order with [`Blocks`] (a prefix when over the cap).
    GetBlocks { hashes: Vec<BlockHash> },
    /// A transaction for the mempool; answered with [`Ack`] or refused with the reason.
    Tx { hex: String },
    /// A new block (with its seal on a validator-sealed network, hex of
    /// `Seal::to_bytes`); answered with [`Ack`] or refused with the reason.
    Block {
        hex: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seal: Option<String>,
    },
    /// A light node asks for merkle proofs of the transactions in blocks `from..=to` of the
    /// receiver's active chain that pay one of `scripts` (hex) or spend one of `outpoints`
    /// (`txid:vout`); answered with [`Proofs`].
    GetProofs { from: u32, to: u32, scripts: Vec<String>, outpoints: Vec<String> },
    /// Part of the UTXO snapshot the receiver keeps at `height` (fast sync), from byte
    /// `offset`; answered with [`SnapshotPart`].
    GetSnapshot { height: u32, offset: u64 },
    /// Validators' attestations of block `block` (hex of their bytes, one after the other;
    /// validator-sealed networks); answered with [`Ack`] or refused with the reason.
    Attest { block: BlockHash, attestations: String },
}

/// The answer to `GetSnapshot`: the snapshot's size and up to [`SNAPSHOT_PART`] bytes
/// from the offset asked, as hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    pub total: u64,
    pub data: String,
}

/// Bytes of a snapshot in one answer, at most.
pub const SNAPSHOT_PART: usize = 512 << 10;

/// A node's chain: which network (genesis) and how far it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub genesis: BlockHash,
    pub height: u32,
    pub tip: BlockHash,
    /// A light node: headers only, no blocks to serve.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub light: bool,
}

/// The answer to `GetHeaders`: headers, 80 bytes each, as hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub headers: Vec<String>,
    /// On a validator-sealed network, each header's seal (hex), in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seals: Vec<String>,
    /// On a validator-sealed network, each header's attestations (as in `Attest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<String>,
}

/// The answer to `GetBlocks`: blocks as hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    pub blocks: Vec<String>,
    /// On a validator-sealed network, each block's seal (hex), in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seals: Vec<String>,
    /// On a validator-sealed network, each block's attestations (as in `Attest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<String>,
}

/// The answer to `GetProofs`: the last height scanned and its hash (absent when the range
/// starts past the receiver's tip), and per block with a match its height, its merkle block
/// (BIP37, consensus hex) and the matched transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proofs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<BlockHash>,
    pub blocks: Vec<ProvenBlock>,
}

/// One block's proof in [`Proofs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenBlock {
    pub height: u32,
    pub merkle_block: String,
    pub txs: Vec<String>,
}

/// Scripts and outpoints in one `GetProofs` filter, at most.
pub const MAX_FILTER: usize = 10_000;

/// Hex characters of transactions in one `Proofs` answer before the scan stops early.
pub const MAX_PROOFS_HEX: usize = 4 << 20;

/// The answer to a push: taken, with a note when it is not plain (an orphan, a block
/// whose parent is unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The magic as it travels: the hex of its four bytes.
pub fn magic_hex(magic: bitcoin::p2p::Magic) -> String {
    hex::encode(magic.to_bytes())
}

pub fn block_hex(b: &Block) -> String {
    serialize_hex(b)
}

pub fn tx_hex(t: &Transaction) -> String {
    serialize_hex(t)
}

/// Decodes the hex of a consensus-encoded value, naming what it should be.
pub fn decode<T: bitcoin::consensus::Decodable>(what: &str, hex: &str) -> Result<T, String> {
    deserialize_hex(hex).map_err(|e| format!("{what} is not valid consensus hex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_json_with_the_magic() {
        let r = Request { magic: "e36d6f64".into(), message: Message::GetBlocks { hashes: vec![] } };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"magic":"e36d6f64","type":"get_blocks","hashes":[]}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        let genesis = micro_os_chain::params::Params::devnet().genesis_hash;
        let h = Request {
            magic: "x".into(),
            message: Message::Hello(Hello { genesis, height: 3, tip: genesis, light: false }),
        };
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("light"), "a full node's hello is the same as before light nodes: {json}");
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        let light = Hello { genesis, height: 3, tip: genesis, light: true };
        let json = serde_json::to_string(&light).unwrap();
        assert_eq!(serde_json::from_str::<Hello>(&json).unwrap(), light);
        assert_eq!(magic_hex(micro_os_chain::params::Params::devnet().magic), "e36d6f64");
        assert!(decode::<Block>("block", "00").unwrap_err().starts_with("block is not valid consensus hex"));
    }
}
