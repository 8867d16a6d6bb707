//! A validator on a circuit, in the manner of Quorum's Raft mode: the validator on the
//! circuit leader's VM assembles a block from its mempool, seals it and commits it through
//! the circuit's Raft log; every validator applies the committed blocks in order.
//!
//! Key design decision: the circuit's replicated state holds one key, `head`, the last
//! sealed block (height, block, seal), and a block is committed by a compare-and-set of
//! `head` at the version it had when its parent was committed. So no height is ever
//! sealed twice — a deposed leader's write finds `head` moved and fails — and a block is
//! final once the write returns. A validator that fell more than one block behind catches
//! up over the chain's P2P sync (the blocks carry their seals). The validators register
//! their keys under `validators`, by their member's Raft node id; each seal names the keys
//! of the circuit's current voting members, so a member added becomes a validator and a
//! member removed stops being one, and full nodes outside the circuit check the next seal
//! against that set.
//!
//! Every validator then attests each block it holds up to the committed `head` (an
//! `Attestation`, gossiped to the chain's peers): a block attested by a majority of its set
//! is final to nodes outside the circuit without trusting any one validator.
//!
//! The validator reaches its VM's circuit member through the agent's local endpoint
//! (JSON lines on loopback inside the VM, `MICRO_OS_CIRCUIT_ENDPOINT`, with the token
//! micro-os gives the circuit's replicas, `MICRO_OS_CIRCUIT_TOKEN`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Block, BlockHash, ScriptBuf};
use micro_os_chain::miner;
use micro_os_chain::seal::{normalize, Attestation, Seal};
use micro_os_core::circuit::{
    CircuitCall, CircuitError, LocalRequest, MemberStatus, ReadResult, StateEntry, StateOp, WriteOutcome, WriteResult,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::node::Node;

/// The key of the last sealed block.
pub const HEAD: &str = "head";
/// The key of the validators' public keys (a JSON object: Raft node id → key hex).
pub const VALIDATORS: &str = "validators";
/// How often a validator looks at the circuit.
const POLL: Duration = Duration::from_millis(100);
/// The shortest time between two blocks (their times must climb past the median time past).
const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Where the validator's circuit is.
#[derive(Debug, Clone)]
pub struct CircuitConfig {
    pub circuit: String,
    pub endpoint: SocketAddr,
    pub token: String,
}

/// What went wrong talking to the circuit.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("circuit endpoint {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("circuit endpoint answered something malformed: {0}")]
    Malformed(String),
    #[error("circuit: {0}")]
    Circuit(#[from] CircuitError),
    #[error("circuit endpoint: {0}")]
    Refused(String),
}

/// The sealed block as `head` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    pub height: u32,
    pub hash: BlockHash,
    pub block: String,
    pub seal: String,
}

/// A client of the agent's local endpoint: one connection per call (loopback, a few a
/// second).
#[derive(Debug, Clone)]
pub struct Client {
    cfg: CircuitConfig,
}

impl Client {
    pub fn new(cfg: CircuitConfig) -> Client {
        Client { cfg }
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, call: CircuitCall) -> Result<T, ClientError> {
        let io = |e| ClientError::Io(self.cfg.endpoint, e);
        let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(self.cfg.endpoint))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_string(&LocalRequest { token: self.cfg.token.clone(), request: call })
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        line.push('\n');
        w.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(30), BufReader::new(r).read_line(&mut answer))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        #[derive(Deserialize)]
        struct Refused {
            refused: String,
        }
        // not an untagged enum: buffered content loses serde_json's integer map keys
        if let Ok(r) = serde_json::from_str::<Refused>(&answer) {
            return Err(ClientError::Refused(r.refused));
        }
        match serde_json::from_str::<Result<T, CircuitError>>(&answer) {
            Ok(r) => Ok(r?),
            Err(e) => Err(ClientError::Malformed(format!("{e}: {}", answer.trim()))),
        }
    }

    pub async fn status(&self) -> Result<MemberStatus, ClientError> {
        self.call(CircuitCall::Status { circuit: self.cfg.circuit.clone() }).await
    }

    /// One key: linearizable unless `stale`.
    pub async fn get(&self, key: &str, stale: bool) -> Result<Option<StateEntry>, ClientError> {
        let r: ReadResult =
            self.call(CircuitCall::Read { circuit: self.cfg.circuit.clone(), key: Some(key.into()), stale }).await?;
        Ok(r.entries.into_iter().find(|e| e.key == key))
    }

    pub async fn cas(&self, key: &str, expected_version: u64, value: String) -> Result<WriteOutcome, ClientError> {
        let op = StateOp::CompareAndSet { key: key.into(), expected_version, value };
        let r: WriteResult = self.call(CircuitCall::Write { circuit: self.cfg.circuit.clone(), op }).await?;
        Ok(r.outcome)
    }
}

/// The validator's task: register, follow `head`, seal when this VM leads.
pub async fn run(node: Arc<Node>, key: SecretKey, client: Client, payout: ScriptBuf) {
    let me = PublicKey::from_secret_key(&Secp256k1::signing_only(), &key);
    tracing::info!("validator {me} on circuit {} via {}", client.cfg.circuit, client.cfg.endpoint);
    let mut registered = false;
    let mut last_sealed = Instant::now() - Duration::from_secs(3600);
    let mut last_error: Option<String> = None;
    let spacing = Duration::from_secs(node.params().target_spacing_s);
    let mut attested = {
        let n = node.clone();
        tokio::task::spawn_blocking(move || last_attested(&n, me)).await.unwrap_or(0)
    };
    while !node.is_stopping() {
        tokio::time::sleep(POLL).await;
        let step = async {
            let status = client.status().await?;
            if !registered {
                registered = register(&client, status.node_id, me).await?;
            }
            let leading = status.state == "leader" && status.leader == Some(status.node_id);
            // the leader reads what the quorum committed; a follower its own applied copy
            let head = client.get(HEAD, !leading).await?;
            let (version, committed) = match &head {
                Some(e) => (e.version, Some(parse_head(&e.value)?)),
                None => (0, None),
            };
            let tip = node.tip();
            if let Some(h) = &committed {
                let upto = tip.0.min(h.height);
                if attested < upto {
                    let (n, from) = (node.clone(), attested);
                    attested = tokio::task::spawn_blocking(move || attest(&n, &key, from, upto)).await??;
                }
                if h.height == tip.0 + 1 {
                    apply(&node, h).await?;
                    return Ok::<_, anyhow::Error>(());
                }
                if h.height > tip.0 + 1 {
                    // more than one block behind: the chain's p2p sync fetches them
                    return Ok(());
                }
            }
            let at_tip = committed.as_ref().map_or(tip.0 == 0, |h| h.height == tip.0 && h.hash == tip.1);
            let pending = !node.state().mempool.is_empty();
            let due = last_sealed.elapsed() >= spacing || (pending && last_sealed.elapsed() >= MIN_INTERVAL);
            if leading && at_tip && due {
                let set = validator_set(&client, &status, me).await?;
                let (head, block, seal) = seal_block(&node, &key, set, payout.clone()).await?;
                match client.cas(HEAD, version, serde_json::to_string(&head)?).await? {
                    WriteOutcome::Stored { .. } => {
                        last_sealed = Instant::now();
                        let n = node.clone();
                        tokio::task::spawn_blocking(move || n.accept_sealed(&block, &seal)).await??;
                        tracing::info!("sealed block {} ({}) with {} txs", head.height, head.hash, block_txs(&head));
                    }
                    WriteOutcome::Conflict { current } => {
                        tracing::info!("block {} not sealed: head moved to version {current}", head.height);
                    }
                    other => tracing::warn!("sealing block {}: {other:?}", head.height),
                }
            }
            Ok(())
        };
        match step.await {
            Ok(()) => last_error = None,
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("validator: {e}");
                }
                last_error = Some(e);
            }
        }
    }
}

/// Blocks this validator attests in one step, at most.
const ATTEST_BATCH: u32 = 500;

/// The height of the newest block `me` attested (looking back a few thousand blocks).
fn last_attested(node: &Node, me: PublicKey) -> u32 {
    let tip = node.tip().0;
    for h in (tip.saturating_sub(5000)..=tip).rev() {
        let Ok(Some(hash)) = node.hash_at(h) else { return 0 };
        if h == 0 || node.attestations(&hash).is_ok_and(|l| l.iter().any(|a| a.validator == me)) {
            return h;
        }
    }
    tip.saturating_sub(5000)
}

/// Attests the blocks after height `from` up to `upto` (committed, on this node's chain);
/// the height it got to.
fn attest(node: &Node, key: &SecretKey, from: u32, upto: u32) -> anyhow::Result<u32> {
    let upto = upto.min(from + ATTEST_BATCH);
    for h in from + 1..=upto {
        let Some(hash) = node.hash_at(h)? else { return Ok(h - 1) };
        let att = Attestation::sign(node.params(), key, &hash);
        // a block sealed before this validator joined is not its to attest
        if node.seal(&hash)?.is_some_and(|s| s.validators.contains(&att.validator)) {
            node.attest(&hash, att)?;
        }
    }
    Ok(upto)
}

fn block_txs(h: &Head) -> usize {
    deserialize_hex::<Block>(&h.block).map_or(0, |b| b.txdata.len() - 1)
}

fn parse_head(value: &str) -> anyhow::Result<Head> {
    serde_json::from_str(value).map_err(|e| anyhow::anyhow!("the circuit's head is malformed: {e}"))
}

/// Applies the committed block `h` (the next one).
async fn apply(node: &Arc<Node>, h: &Head) -> anyhow::Result<()> {
    let block: Block = deserialize_hex(&h.block)?;
    let seal = Seal::from_hex(&h.seal)?;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.accept_sealed(&block, &seal)).await??;
    tracing::info!("applied sealed block {} ({})", h.height, h.hash);
    Ok(())
}

/// The circuit's validators as `validators` holds them: each member's key by its Raft
/// node id (a member that comes back with a new key replaces its old one).
type Registry = BTreeMap<u64, String>;

/// Adds `me` as member `id`'s validator key; `true` once it is there.
async fn register(client: &Client, id: u64, me: PublicKey) -> anyhow::Result<bool> {
    let e = client.get(VALIDATORS, false).await?;
    let (version, mut registry): (u64, Registry) = match &e {
        Some(e) => (e.version, serde_json::from_str(&e.value)?),
        None => (0, Registry::new()),
    };
    let hex = me.to_string();
    if registry.get(&id) == Some(&hex) {
        return Ok(true);
    }
    registry.insert(id, hex);
    match client.cas(VALIDATORS, version, serde_json::to_string(&registry)?).await? {
        WriteOutcome::Stored { .. } => {
            tracing::info!("registered as the validator of member {id} ({} validators)", registry.len());
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The circuit's validators: the keys of its current voting members (with `me`); a member
/// removed from the circuit leaves the set with the next block.
async fn validator_set(client: &Client, status: &MemberStatus, me: PublicKey) -> anyhow::Result<Vec<PublicKey>> {
    let mut set = vec![me];
    if let Some(e) = client.get(VALIDATORS, true).await? {
        let registry: Registry = serde_json::from_str(&e.value)?;
        for (id, k) in registry {
            if status.voters.contains(&id) {
                set.push(k.parse()?);
            }
        }
    }
    Ok(normalize(set))
}

/// Assembles a block on the tip from the mempool, meets the fixed pow limit, and seals it.
async fn seal_block(
    node: &Arc<Node>,
    key: &SecretKey,
    set: Vec<PublicKey>,
    payout: ScriptBuf,
) -> anyhow::Result<(Head, Block, Seal)> {
    let n = node.clone();
    let key = *key;
    tokio::task::spawn_blocking(move || {
        let mut t = n.block_template(payout)?;
        let target = t.block.header.target();
        let found = miner::mine(&t.block.header, target, 1, &AtomicBool::new(false), |_| {});
        t.block.header = found.header.ok_or_else(|| anyhow::anyhow!("no nonce meets the pow limit"))?;
        let hash = t.block.block_hash();
        let seal = Seal::sign(n.params(), &key, &hash, set);
        let head = Head { height: t.height, hash, block: serialize_hex(&t.block), seal: seal.to_hex() };
        Ok((head, t.block, seal))
    })
    .await?
}
