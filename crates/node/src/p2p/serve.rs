//! The chain protocol's handler: answers `Hello`, `GetHeaders` and `GetBlocks`, takes
//! pushed transactions, blocks and validators' attestations. A request of another network (its magic), a malformed
//! one, or a block or transaction that breaks a rule is refused with the reason — the
//! node's `Reject` for blocks — counted by reason, and costs the sender score.

use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, OutPoint, ScriptBuf, Transaction, Txid};
use futures_util::future::BoxFuture;
use micro_os_chain::seal::{Attestation, Seal};
use micro_os_chain::validation::RejectCode;
use micro_os_p2p::{PeerId, ProtocolHandler, Refusal, Request};

use super::wire::{self, Ack, Blocks, Headers, Hello, Message, Proofs, ProvenBlock};
use super::Service;
use crate::node::{Node, TxError};
use crate::sealed::Attested;

/// Score lost for a request of another network.
pub const WRONG_MAGIC: i64 = 20;
/// Score lost for a request we cannot parse.
pub const MALFORMED: i64 = 20;
/// Score lost for a block (or header) that breaks a consensus rule.
pub const INVALID_BLOCK: i64 = 50;
/// Score lost for a transaction that breaks a consensus rule.
pub const INVALID_TX: i64 = 10;

/// How much a block's rule violation costs its sender: none for a block whose time is
/// merely ahead of our clock, the full price for anything provably invalid.
pub fn block_penalty(code: RejectCode) -> i64 {
    match code {
        RejectCode::BadTime => 0,
        _ => INVALID_BLOCK,
    }
}

impl ProtocolHandler for Service {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>> {
        Box::pin(async move {
            let answer = self.serve(request.peer, &request.state).await?;
            let bytes = serde_json::to_vec(&answer).expect("answers serialise");
            self.book().peer(request.peer).answer_bytes_out += bytes.len() as u64;
            Ok(bytes)
        })
    }
}

fn to_value<T: serde::Serialize>(t: T) -> serde_json::Value {
    serde_json::to_value(t).expect("answers serialise")
}

async fn blocking<T: Send + 'static>(node: &Arc<Node>, f: impl FnOnce(&Node) -> T + Send + 'static) -> T {
    let node = node.clone();
    tokio::task::spawn_blocking(move || f(&node)).await.expect("a node call panicked")
}

impl Service {
    fn refuse(&self, peer: PeerId, reason: &str, message: String, points: i64) -> Refusal {
        tracing::info!("refused a request from {peer}: {message}");
        self.misbehaved(peer, reason, points);
        Refusal(message)
    }

    async fn serve(&self, peer: PeerId, state: &str) -> Result<serde_json::Value, Refusal> {
        if self.bans.until(&peer).is_some() {
            return Err(Refusal(format!("peer {peer} is banned")));
        }
        let req: wire::Request = serde_json::from_str(state)
            .map_err(|e| self.refuse(peer, "malformed", format!("request is malformed: {e}"), MALFORMED))?;
        if req.magic != self.magic {
            let msg = format!(
                "wrong network magic {:?} (this node is on {} with magic {})",
                req.magic,
                self.node.params().name,
                self.magic
            );
            return Err(self.refuse(peer, "wrong network magic", msg, WRONG_MAGIC));
        }
        match req.message {
            Message::Hello(h) => {
                if h.genesis != self.node.params().genesis_hash {
                    let msg =
                        format!("wrong genesis {} (this node's is {})", h.genesis, self.node.params().genesis_hash);
                    return Err(self.refuse(peer, "wrong genesis", msg, WRONG_MAGIC));
                }
                self.got_hello(peer, h);
                Ok(to_value::<Hello>(self.hello()))
            }
            Message::GetHeaders { mut locator } => {
                locator.truncate(wire::MAX_LOCATOR);
                let (headers, seals, attestations) = blocking(&self.node, move |n| {
                    let headers = n.headers_after(&locator, wire::MAX_HEADERS)?;
                    let (mut seals, mut attestations) = (Vec::new(), Vec::new());
                    if n.is_sealed() {
                        // each header with its seal, up to the first this node lacks
                        for h in &headers {
                            match n.seal(&h.block_hash())? {
                                Some(s) => seals.push(s.to_hex()),
                                None => break,
                            }
                            attestations.push(Attestation::list_to_hex(&n.attestations(&h.block_hash())?));
                        }
                    }
                    Ok::<_, crate::node::Error>((headers, seals, attestations))
                })
                .await
                .map_err(|e| Refusal(format!("headers: {e}")))?;
                let n = if self.node.is_sealed() { seals.len() } else { headers.len() };
                let headers = headers.iter().take(n).map(bitcoin::consensus::encode::serialize_hex).collect();
                Ok(to_value(Headers { headers, seals, attestations }))
            }
            Message::GetBlocks { hashes } => {
                if hashes.len() > wire::MAX_GET_BLOCKS {
                    let msg = format!("{} blocks asked at once (at most {})", hashes.len(), wire::MAX_GET_BLOCKS);
                    return Err(self.refuse(peer, "oversized", msg, MALFORMED));
                }
                let answer = blocking(&self.node, move |n| blocks_hex(n, &hashes))
                    .await
                    .map_err(|e| Refusal(format!("blocks: {e}")))?;
                Ok(to_value(answer))
            }
            Message::GetProofs { from, to, scripts, outpoints } => {
                self.proofs(peer, from, to, scripts, outpoints).await.map(to_value)
            }
            Message::GetSnapshot { height, offset } => {
                let datadir = self.node.datadir().to_path_buf();
                let bytes = tokio::task::spawn_blocking(move || crate::fast::snapshot_bytes(&datadir, height))
                    .await
                    .map_err(|e| Refusal(format!("snapshot: {e}")))?
                    .ok_or_else(|| Refusal(format!("no utxo snapshot at height {height} here")))?;
                let from = (offset.min(bytes.len() as u64)) as usize;
                let to = (from + wire::SNAPSHOT_PART).min(bytes.len());
                Ok(to_value(wire::SnapshotPart { total: bytes.len() as u64, data: hex::encode(&bytes[from..to]) }))
            }
            Message::Tx { .. } if self.node.is_light() => {
                Ok(to_value(Ack { note: Some("a light node keeps no mempool: not relayed".into()) }))
            }
            Message::Tx { hex } => self.take_tx(peer, &hex).await.map(to_value),
            Message::Block { hex, seal } => self.take_block(peer, &hex, seal.as_deref()).await.map(to_value),
            Message::Attest { block, attestations } => {
                let list = Attestation::list_from_hex(&attestations)
                    .map_err(|r| self.refuse(peer, r.code.as_str(), format!("block {block}: {r}"), MALFORMED))?;
                if list.len() > 2 * micro_os_chain::seal::MAX_VALIDATORS {
                    let msg = format!("{} attestations at once", list.len());
                    return Err(self.refuse(peer, "oversized", msg, MALFORMED));
                }
                for a in &list {
                    self.book().seen.insert(super::relay::attestation_id(a), peer);
                }
                let pending = blocking(&self.node, move |n| take_attestations(n, &block, list)).await.map_err(|e| {
                    match e.reject() {
                        Some(r) => self.refuse(peer, r.code.as_str(), r.to_string(), INVALID_BLOCK),
                        None => Refusal(format!("attestations of block {block}: {e}")),
                    }
                })?;
                let note = pending.then(|| format!("block {block} is not here yet: its attestations wait for it"));
                Ok(to_value(Ack { note }))
            }
        }
    }

    async fn proofs(
        &self,
        peer: PeerId,
        from: u32,
        to: u32,
        scripts: Vec<String>,
        outpoints: Vec<String>,
    ) -> Result<Proofs, Refusal> {
        if self.node.is_light() {
            return Err(Refusal("a light node keeps no blocks to prove transactions with".into()));
        }
        if scripts.len() + outpoints.len() > wire::MAX_FILTER {
            let msg = format!("a filter of {} items (at most {})", scripts.len() + outpoints.len(), wire::MAX_FILTER);
            return Err(self.refuse(peer, "oversized", msg, MALFORMED));
        }
        let scripts = scripts
            .iter()
            .map(|h| hex::decode(h).map(ScriptBuf::from_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.refuse(peer, "malformed", format!("a filter script is not hex: {e}"), MALFORMED))?;
        let outpoints =
            outpoints.iter().map(|o| o.parse::<OutPoint>()).collect::<Result<Vec<_>, _>>().map_err(|e| {
                self.refuse(peer, "malformed", format!("a filter outpoint is not txid:vout: {e}"), MALFORMED)
            })?;
        let (end, proofs) = blocking(&self.node, move |n| n.proofs(from, to, scripts, outpoints))
            .await
            .map_err(|e| Refusal(format!("proofs: {e}")))?;
        let mut answer = Proofs { to: end.map(|e| e.0), end: end.map(|e| e.1), blocks: Vec::new() };
        let mut size = 0;
        for p in proofs {
            let txs: Vec<String> = p.txs.iter().map(wire::tx_hex).collect();
            size += txs.iter().map(String::len).sum::<usize>();
            if size > wire::MAX_PROOFS_HEX && !answer.blocks.is_empty() {
                // stop before this block: the light node asks again from here
                answer.to = Some(p.height - 1);
                answer.end = Some(p.merkle_block.header.prev_blockhash);
                break;
            }
            let merkle_block = bitcoin::consensus::encode::serialize_hex(&p.merkle_block);
            answer.blocks.push(ProvenBlock { height: p.height, merkle_block, txs });
        }
        Ok(answer)
    }

    async fn take_tx(&self, peer: PeerId, hex: &str) -> Result<Ack, Refusal> {
        let tx: Transaction =
            wire::decode("transaction", hex).map_err(|why| self.refuse(peer, "malformed", why, MALFORMED))?;
        let txid = tx.compute_txid();
        self.book().seen.insert(txid.to_byte_array(), peer);
        if self.node.ai().enabled() {
            // validated in class order by the intake (`intake::run`), which scores the peer
            blocking(&self.node, move |n| {
                let features = n.tx_features(&tx);
                n.ai().enqueue(tx, Some(peer), features);
            })
            .await;
            return Ok(Ack { note: Some("queued".into()) });
        }
        let result = blocking(&self.node, move |n| {
            let started = std::time::Instant::now();
            let features = n.tx_features(&tx);
            let result = n.accept_tx(tx.clone());
            let outcome = result.as_ref().map_or_else(|e| e.reason(), |_| "accepted");
            n.ai().observed(&tx, features, "p2p", started.elapsed().as_secs_f64() * 1000.0, outcome);
            result
        })
        .await;
        self.tx_verdict(peer, txid, result)
    }

    /// What a peer hears of the transaction it pushed, and its score when it was invalid.
    pub(crate) fn tx_verdict(&self, peer: PeerId, txid: Txid, result: Result<Txid, TxError>) -> Result<Ack, Refusal> {
        match result {
            Ok(_) => Ok(Ack::default()),
            Err(e @ TxError::Orphan { .. }) => Ok(Ack { note: Some(e.to_string()) }),
            Err(TxError::Invalid(r)) => {
                Err(self.refuse(peer, r.code.as_str(), format!("tx {txid} refused: {r}"), INVALID_TX))
            }
            // pool policy, a duplicate, already mined: not the peer's fault
            Err(e) => Err(Refusal(format!("tx {txid} refused: {}: {e}", e.reason()))),
        }
    }

    async fn take_block(&self, peer: PeerId, hex: &str, seal: Option<&str>) -> Result<Ack, Refusal> {
        if hex.len() > wire::MAX_PUSH_HEX * 2 {
            return Err(self.refuse(
                peer,
                "oversized",
                format!("pushed block of {} hex characters", hex.len()),
                MALFORMED,
            ));
        }
        let block: Block = wire::decode("block", hex).map_err(|why| self.refuse(peer, "malformed", why, MALFORMED))?;
        let seal = seal
            .map(Seal::from_hex)
            .transpose()
            .map_err(|r| self.refuse(peer, r.code.as_str(), format!("block {}: {r}", block.block_hash()), MALFORMED))?;
        let hash = block.block_hash();
        self.book().seen.insert(hash.to_byte_array(), peer);
        let prev = block.header.prev_blockhash;
        let known = blocking(&self.node, move |n| n.state().chain.entry(&prev).map(|e| e.is_some()))
            .await
            .map_err(|e| Refusal(format!("block {hash}: {e}")))?;
        if !known {
            // a block we cannot connect: our chain is behind, or on another branch
            self.hint(peer);
            return Ok(Ack { note: Some(format!("block {hash}: parent {prev} is unknown, asking for headers")) });
        }
        let accepted = blocking(&self.node, move |n| match &seal {
            Some(seal) => n.accept_sealed(&block, seal),
            None => n.accept_block(&block),
        });
        match accepted.await {
            Ok(acc) => {
                self.book().has(peer, acc.height, hash);
                Ok(Ack::default())
            }
            Err(e) => match e.reject() {
                Some(r) => {
                    let msg = format!("block {hash} refused: {r}");
                    Err(self.refuse(peer, r.code.as_str(), msg, block_penalty(r.code)))
                }
                None => Err(Refusal(format!("block {hash}: {e}"))),
            },
        }
    }
}

/// Takes validators' attestations of `block` (from a push or beside blocks and headers);
/// `true` when the block is not here yet and they wait for it.
pub(crate) fn take_attestations(
    node: &Node,
    block: &BlockHash,
    list: Vec<Attestation>,
) -> Result<bool, crate::node::Error> {
    let mut pending = false;
    for a in list {
        pending |= node.attest(block, a)? == Attested::Pending;
    }
    Ok(pending)
}

/// The blocks asked for that we have, in order, until the answer's cap (at least one),
/// with their seals and attestations on a validator-sealed network.
fn blocks_hex(node: &Node, hashes: &[BlockHash]) -> Result<Blocks, crate::node::Error> {
    let mut out = Blocks::default();
    let mut size = 0;
    for h in hashes {
        let Some(b) = node.block(h)? else { break };
        let seal = match node.is_sealed() {
            true => match node.seal(h)? {
                Some(s) => Some(s.to_hex()),
                None => break,
            },
            false => None,
        };
        let hex = wire::block_hex(&b);
        if !out.blocks.is_empty() && size + hex.len() > wire::MAX_BLOCKS_HEX {
            break;
        }
        size += hex.len();
        out.blocks.push(hex);
        if let Some(seal) = seal {
            out.seals.push(seal);
            out.attestations.push(Attestation::list_to_hex(&node.attestations(h)?));
        }
    }
    Ok(out)
}
