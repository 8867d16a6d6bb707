//! A light node's wallet scan: while its wallet is scanned to below its best header, ask a
//! full peer for merkle proofs (`GetProofs`) of the next range of heights, check them
//! against the headers (`Node::accept_proofs`) and move on; a proof that does not check
//! costs the peer score like an invalid block. Transactions the wallet sent are pushed to
//! full peers again every [`RESEND_EVERY`] until a proof shows them in a block.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::merkle_tree::MerkleBlock;
use bitcoin::Transaction;
use micro_os_p2p::PeerId;
use tokio::sync::broadcast::error::RecvError;

use super::serve::{INVALID_BLOCK, MALFORMED};
use super::wire::{self, Message, Proofs};
use super::{relay, Error, RequestError, Service};
use crate::light::{Proof, ProofError};

/// How often the scan looks without being woken by a new header.
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// Pending transactions are pushed again this often.
const RESEND_EVERY: Duration = Duration::from_secs(30);

/// The scan task of a light node.
pub async fn run(svc: Arc<Service>) {
    let mut events = svc.node.subscribe();
    let mut resent = Instant::now();
    loop {
        tokio::select! {
            e = events.recv() => if matches!(e, Err(RecvError::Closed)) { return },
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
        if svc.node.is_stopping() {
            return;
        }
        let Some(light) = svc.node.light() else { return };
        while let Some((from, to)) = light.next_scan() {
            let Some(peer) = full_peer(&svc, to) else { break };
            match scan(&svc, peer, from, to).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("light: {n} wallet transaction(s) proven in blocks {from}..={to} by {peer}"),
                Err(e) => {
                    tracing::warn!("light: proofs for {from}..={to} from {peer}: {e}");
                    break;
                }
            }
        }
        if resent.elapsed() >= RESEND_EVERY {
            resent = Instant::now();
            let pending = light.pending().unwrap_or_default();
            for tx in pending {
                relay::tx(&svc, tx.compute_txid());
            }
        }
    }
}

/// A full chain peer that has height `to`, the highest first.
fn full_peer(svc: &Service, to: u32) -> Option<PeerId> {
    svc.book()
        .chain_peers()
        .into_iter()
        .filter(|(id, p)| !p.light && p.height.is_some_and(|h| h >= to) && svc.bans.until(id).is_none())
        .max_by_key(|(id, p)| (p.height, *id))
        .map(|(id, _)| id)
}

/// Asks `peer` for the proofs of `from..=to` and hands them to the node; the number of
/// wallet transactions kept.
async fn scan(svc: &Arc<Service>, peer: PeerId, from: u32, to: u32) -> Result<usize, Error> {
    let filter = {
        let node = svc.node.clone();
        tokio::task::spawn_blocking(move || node.light_filter()).await??
    };
    let scripts = filter.0.iter().map(|s| hex::encode(s.as_bytes())).collect();
    let outpoints = filter.1.iter().map(ToString::to_string).collect();
    let answer: Proofs = svc
        .request(peer, "get_proofs", Message::GetProofs { from, to, scripts, outpoints })
        .await
        .map_err(|e| match e {
            RequestError::P2p(e) => Error::P2p(e),
            RequestError::Malformed { why, .. } => Error::Malformed { peer, what: "proofs", why },
        })?;
    let (Some(last), Some(end)) = (answer.to, answer.end) else {
        return Err(Error::Invalid { peer, what: "proofs", why: format!("it has no block at {from}") });
    };
    if last < from || last > to {
        svc.misbehaved(peer, "bad-proof", MALFORMED);
        return Err(Error::Invalid { peer, what: "proofs", why: format!("it scanned to {last}, asked {from}..={to}") });
    }
    let mut proofs = Vec::with_capacity(answer.blocks.len());
    for b in &answer.blocks {
        let decoded = wire::decode::<MerkleBlock>("merkle block", &b.merkle_block).and_then(|merkle_block| {
            let txs = b.txs.iter().map(|t| wire::decode::<Transaction>("transaction", t)).collect::<Result<_, _>>()?;
            Ok(Proof { height: b.height, merkle_block, txs })
        });
        match decoded {
            Ok(p) => proofs.push(p),
            Err(why) => {
                svc.misbehaved(peer, "malformed", MALFORMED);
                return Err(Error::Malformed { peer, what: "proofs", why });
            }
        }
    }
    let node = svc.node.clone();
    match tokio::task::spawn_blocking(move || node.accept_proofs(from, last, end, proofs)).await? {
        Ok(n) => Ok(n),
        Err(ProofError::Invalid(why)) => {
            svc.misbehaved(peer, "bad-proof", INVALID_BLOCK);
            Err(Error::Invalid { peer, what: "proofs", why })
        }
        Err(ProofError::OtherBranch(why)) => Err(Error::Invalid { peer, what: "proofs", why }),
        Err(ProofError::Store(e)) => Err(Error::Node(e.into())),
    }
}
