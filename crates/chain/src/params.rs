//! Consensus parameters of the reference chain's networks (`devnet`, `mainnet`).
//!
//! Key design decisions: the genesis block is built deterministically in code (a coinbase
//! paying nothing to an OP_RETURN carrying a message, fixed time, bits = pow limit) and its
//! nonce is a precomputed constant that a test checks against the pow limit and a pinned
//! hash, so opening a chain never searches for a nonce. Addresses reuse rust-bitcoin's
//! networks so its `Address` type works unchanged: `devnet` uses `Network::Regtest`
//! (`bcrt1…`, `m…`/`n…`) and `mainnet` uses `Network::Testnet` (`tb1…`), so that no
//! address of the reference chain can be mistaken for (or paid from) a Bitcoin one.

use std::sync::LazyLock;

use bitcoin::address::KnownHrp;
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::p2p::Magic;
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::script::{Builder, PushBytes};
use bitcoin::transaction::Version as TxVersion;
use bitcoin::{
    absolute::LockTime, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Weight, Witness,
};

use crate::error::Error;

/// How the next block's target is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difficulty {
    /// aserti3-2d (Bitcoin Cash, 2020-11-15) anchored at the genesis block.
    Asert {
        /// Seconds of schedule drift that double (or halve) the target.
        half_life_s: u64,
    },
    /// Bitcoin's retarget every 2016 blocks, the timespan clamped to ×4 / ÷4.
    Retarget2016,
    /// Always the pow limit: blocks of a validator-sealed network are not mined for.
    Fixed,
}

/// Who may extend the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// Proof of work: the most-work valid chain wins.
    Pow,
    /// Validator-sealed blocks: a circuit's Raft log orders them, a validator's seal
    /// (`crate::seal`) signs each, a sealed block is final. The proof of work is at the pow
    /// limit (`Difficulty::Fixed`).
    Circuit,
}

/// The consensus parameters of one network.
#[derive(Debug, Clone)]
pub struct Params {
    /// Network name, as given to [`Params::by_name`].
    pub name: &'static str,
    /// P2P message start bytes.
    pub magic: Magic,
    /// Address network (bech32 HRP and base58 prefixes) in rust-bitcoin's vocabulary.
    pub network: Network,
    /// The genesis block.
    pub genesis: Block,
    /// Its hash (cached).
    pub genesis_hash: BlockHash,
    /// The easiest target a block may have.
    pub pow_limit: Target,
    /// `pow_limit` in compact form (the genesis block's bits).
    pub pow_limit_bits: CompactTarget,
    /// Target seconds between blocks.
    pub target_spacing_s: u64,
    /// Difficulty algorithm.
    pub difficulty: Difficulty,
    /// Who may extend the chain.
    pub consensus: Consensus,
    /// Subsidy of the first halving era.
    pub initial_subsidy: Amount,
    /// Blocks between subsidy halvings.
    pub halving_interval: u32,
    /// Confirmations a coinbase output needs before it can be spent.
    pub coinbase_maturity: u32,
    /// Maximum block weight (BIP141 weight units).
    pub max_block_weight: Weight,
    /// Every this many blocks the coinbase commits to the UTXO set (`crate::utxo`), so a
    /// node can fast-sync from a snapshot the chain vouches for.
    pub utxo_commit_every: u32,
    /// The node's JSON-RPC port by default: Core's regtest port on devnet; on mainnet one
    /// next to Core's 8332 but not on it, so a Bitcoin node on the same host does not collide.
    pub rpc_port: u16,
    /// The node's libp2p TCP port by default: Core's regtest P2P port on devnet; on mainnet
    /// the one after the RPC port (Bitcoin's own 8333 stays free).
    pub p2p_port: u16,
}

/// Names of the built-in networks, in the order [`Params::all`] returns them.
pub const NETWORK_NAMES: [&str; 3] = ["devnet", "mainnet", "circuit"];

const DEVNET_GENESIS_MESSAGE: &str = "micro-os reference chain devnet genesis";
const DEVNET_GENESIS_TIME: u32 = 1_735_689_600; // 2025-01-01T00:00:00Z
const DEVNET_GENESIS_NONCE: u32 = 0;
const DEVNET_POW_LIMIT: u32 = 0x207f_ffff;

const MAINNET_GENESIS_MESSAGE: &str = "micro-os reference chain mainnet genesis 2026-01-01";
const MAINNET_GENESIS_TIME: u32 = 1_767_225_600; // 2026-01-01T00:00:00Z
const MAINNET_GENESIS_NONCE: u32 = 554_497;
const MAINNET_POW_LIMIT: u32 = 0x1e0f_ffff;

const CIRCUIT_GENESIS_MESSAGE: &str = "micro-os reference chain circuit genesis: sealed by validators";
const CIRCUIT_GENESIS_TIME: u32 = 1_767_225_600; // 2026-01-01T00:00:00Z
const CIRCUIT_GENESIS_NONCE: u32 = 1;

static DEVNET: LazyLock<Params> = LazyLock::new(|| {
    let bits = CompactTarget::from_consensus(DEVNET_POW_LIMIT);
    let genesis = genesis_block(DEVNET_GENESIS_MESSAGE, DEVNET_GENESIS_TIME, bits, DEVNET_GENESIS_NONCE);
    Params {
        name: "devnet",
        magic: Magic::from_bytes([0xe3, 0x6d, 0x6f, 0x64]),
        network: Network::Regtest,
        genesis_hash: genesis.block_hash(),
        genesis,
        pow_limit: Target::from_compact(bits),
        pow_limit_bits: bits,
        target_spacing_s: 2,
        difficulty: Difficulty::Asert { half_life_s: 60 },
        consensus: Consensus::Pow,
        initial_subsidy: Amount::from_int_btc(50),
        halving_interval: 210_000,
        coinbase_maturity: 10,
        max_block_weight: Weight::MAX_BLOCK,
        utxo_commit_every: 100,
        rpc_port: 18443,
        p2p_port: 18444,
    }
});

static MAINNET: LazyLock<Params> = LazyLock::new(|| {
    let bits = CompactTarget::from_consensus(MAINNET_POW_LIMIT);
    let genesis = genesis_block(MAINNET_GENESIS_MESSAGE, MAINNET_GENESIS_TIME, bits, MAINNET_GENESIS_NONCE);
    Params {
        name: "mainnet",
        magic: Magic::from_bytes([0xe3, 0x6d, 0x6f, 0x73]),
        network: Network::Testnet,
        genesis_hash: genesis.block_hash(),
        genesis,
        pow_limit: Target::from_compact(bits),
        pow_limit_bits: bits,
        target_spacing_s: 60,
        difficulty: Difficulty::Asert { half_life_s: 3600 },
        consensus: Consensus::Pow,
        // 60 s blocks, halving every ~4 years, 21 million coins in total.
        initial_subsidy: Amount::from_int_btc(5),
        halving_interval: 2_100_000,
        coinbase_maturity: 100,
        max_block_weight: Weight::MAX_BLOCK,
        utxo_commit_every: 1000,
        rpc_port: 8382,
        p2p_port: 8383,
    }
});

static CIRCUIT: LazyLock<Params> = LazyLock::new(|| {
    let bits = CompactTarget::from_consensus(DEVNET_POW_LIMIT);
    let genesis = genesis_block(CIRCUIT_GENESIS_MESSAGE, CIRCUIT_GENESIS_TIME, bits, CIRCUIT_GENESIS_NONCE);
    Params {
        name: "circuit",
        magic: Magic::from_bytes([0xe3, 0x6d, 0x6f, 0x63]),
        network: Network::Regtest,
        genesis_hash: genesis.block_hash(),
        genesis,
        pow_limit: Target::from_compact(bits),
        pow_limit_bits: bits,
        target_spacing_s: 2,
        difficulty: Difficulty::Fixed,
        consensus: Consensus::Circuit,
        initial_subsidy: Amount::from_int_btc(50),
        halving_interval: 210_000,
        coinbase_maturity: 10,
        // a sealed block travels in one Raft entry, whose value holds at most 256 KiB: a
        // block's bytes (at most its weight) stay under 100 KB
        max_block_weight: Weight::from_wu(100_000),
        utxo_commit_every: 100,
        rpc_port: 18453,
        p2p_port: 18454,
    }
});

impl Params {
    /// The network sealed by validators on a circuit: 2 s blocks, regtest addresses.
    pub fn circuit() -> &'static Params {
        &CIRCUIT
    }

    /// Whether validators seal this network's blocks.
    pub fn is_sealed(&self) -> bool {
        self.consensus == Consensus::Circuit
    }

    /// The development network: 2 s blocks, regtest-easy pow limit, ASERT half-life 60 s.
    pub fn devnet() -> &'static Params {
        &DEVNET
    }

    /// The reference chain's main network: 60 s blocks, ASERT half-life 1 h.
    pub fn mainnet() -> &'static Params {
        &MAINNET
    }

    /// All built-in networks.
    pub fn all() -> [&'static Params; 3] {
        [Self::devnet(), Self::mainnet(), Self::circuit()]
    }

    /// The built-in network called `name`.
    pub fn by_name(name: &str) -> Result<&'static Params, Error> {
        Self::all()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownNetwork { name: name.to_string(), known: NETWORK_NAMES.join(", ") })
    }

    /// The subsidy of a block at `height`: halves every `halving_interval` blocks.
    pub fn block_subsidy(&self, height: u32) -> Amount {
        let halvings = height / self.halving_interval;
        if halvings >= 64 {
            return Amount::ZERO;
        }
        Amount::from_sat(self.initial_subsidy.to_sat() >> halvings)
    }

    /// The bech32 human-readable part of this network's segwit addresses.
    pub fn hrp(&self) -> KnownHrp {
        KnownHrp::from(self.network)
    }

    /// The time ASERT treats as the anchor block's parent's: genesis time minus one spacing.
    pub fn asert_anchor_parent_time(&self) -> i64 {
        i64::from(self.genesis.header.time) - self.target_spacing_s as i64
    }
}

/// Builds a genesis block: one coinbase whose only output pays nothing to `OP_RETURN message`.
pub fn genesis_block(message: &str, time: u32, bits: CompactTarget, nonce: u32) -> Block {
    let msg: &PushBytes = message.as_bytes().try_into().expect("genesis message under 520 bytes");
    let coinbase = Transaction {
        version: TxVersion::ONE,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: Builder::new().push_int(0).push_slice(msg).into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return(msg) }],
    };
    let merkle_root = TxMerkleNode::from_raw_hash(coinbase.compute_txid().to_raw_hash());
    Block {
        header: Header {
            version: BlockVersion::ONE,
            prev_blockhash: BlockHash::all_zeros(),
            merkle_root,
            time,
            bits,
            nonce,
        },
        txdata: vec![coinbase],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_deterministic_and_meets_its_pow_limit() {
        let pinned = [
            ("devnet", "0494fee6ea1c68699a3253b6a25641e9cebb3cb5acdb52325c7de50238f296af"),
            ("mainnet", "00000e9afc13b0ceb857b5eb662ccc1019a3d419b3e24e400d49dee682fb8ebd"),
            ("circuit", "2417b344552de3bcb02f2e6ab2fc92f784d22c1551e10bc6a996794edc513aa2"),
        ];
        for (name, hash) in pinned {
            let p = Params::by_name(name).unwrap();
            assert_eq!(p.genesis_hash.to_string(), hash, "{name} genesis hash");
            let again = genesis_block(
                match name {
                    "devnet" => DEVNET_GENESIS_MESSAGE,
                    "circuit" => CIRCUIT_GENESIS_MESSAGE,
                    _ => MAINNET_GENESIS_MESSAGE,
                },
                p.genesis.header.time,
                p.pow_limit_bits,
                p.genesis.header.nonce,
            );
            assert_eq!(again, p.genesis);
            assert_eq!(p.genesis.header.validate_pow(p.pow_limit).unwrap(), p.genesis_hash);
            assert!(p.genesis.check_merkle_root());
            let out = &p.genesis.txdata[0].output[0];
            assert!(out.script_pubkey.is_op_return());
            assert_eq!(out.value, Amount::ZERO);
            assert!(p.genesis.txdata[0].is_coinbase());
            // The compact pow limit round-trips, so "bits == pow limit" is well defined.
            assert_eq!(p.pow_limit.to_compact_lossy(), p.pow_limit_bits);
        }
        let magics: std::collections::HashSet<_> = Params::all().iter().map(|p| p.magic).collect();
        assert_eq!(magics.len(), 3);
        let geneses: std::collections::HashSet<_> = Params::all().iter().map(|p| p.genesis_hash).collect();
        assert_eq!(geneses.len(), 3);
        assert!(Params::circuit().is_sealed() && !Params::devnet().is_sealed());
    }

    #[test]
    fn by_name_lists_known_names_on_error() {
        assert_eq!(Params::by_name("devnet").unwrap().name, "devnet");
        assert_eq!(Params::by_name("mainnet").unwrap().target_spacing_s, 60);
        let e = Params::by_name("moon").unwrap_err().to_string();
        assert_eq!(e, "unknown network \"moon\" (known: devnet, mainnet, circuit)");
    }

    #[test]
    fn subsidy_halves_and_ends() {
        let p = Params::mainnet();
        assert_eq!(p.block_subsidy(0), Amount::from_int_btc(5));
        assert_eq!(p.block_subsidy(p.halving_interval - 1), Amount::from_int_btc(5));
        assert_eq!(p.block_subsidy(p.halving_interval), Amount::from_sat(250_000_000));
        assert_eq!(p.block_subsidy(p.halving_interval * 2), Amount::from_sat(125_000_000));
        assert_eq!(p.block_subsidy(u32::MAX), Amount::ZERO);
        let d = Params::devnet();
        assert_eq!(d.block_subsidy(d.halving_interval * 33), Amount::ZERO);
        assert_eq!(d.block_subsidy(d.halving_interval * 32), Amount::from_sat(1));
        // Total issuance of mainnet stays under 21 million coins.
        let total: u64 = (0..64u32)
            .map(|era| p.block_subsidy(era.saturating_mul(p.halving_interval)).to_sat())
            .map(|s| s * u64::from(p.halving_interval))
            .sum();
        assert!(total <= 21_000_000 * 100_000_000, "total {total}");
    }

    #[test]
    fn addresses_use_distinct_non_bitcoin_hrps() {
        assert_eq!(Params::devnet().hrp(), KnownHrp::Regtest);
        assert_eq!(Params::mainnet().hrp(), KnownHrp::Testnets);
        assert_eq!(Params::devnet().asert_anchor_parent_time(), 1_735_689_598);
    }
}
