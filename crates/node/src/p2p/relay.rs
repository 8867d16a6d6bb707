//! Relay: a new tip is pushed to the chain peers (the block itself, or a `Hello` when it is
//! too large for one request), a transaction that entered the mempool is pushed as `Tx` —
//! never back to the peer it came from, nor a block to a peer known to have it, nor a
//! transaction to a light node. A validator's attestation that was new here is pushed as
//! `Attest` to every chain peer but its sender. While a
//! sync runs nothing is relayed block by block: the sync announces its end with `Hello`s.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Txid};
use micro_os_chain::seal::Attestation;
use micro_os_p2p::PeerId;
use tokio::sync::broadcast::error::RecvError;

use super::wire::{self, Ack, Message};
use super::Service;
use crate::node::Event;

/// Follows the node's events until it stops.
pub async fn run(svc: Arc<Service>) {
    let mut events = svc.node.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::debug!("relay: {n} events skipped");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if svc.node.is_stopping() {
            return;
        }
        match event {
            Event::Tip { height, hash } => {
                // only the newest tip of a burst matters
                let mut newest = (height, hash);
                while let Ok(e) = events.try_recv() {
                    match e {
                        Event::Tip { height, hash } => newest = (height, hash),
                        Event::Tx(txid) => tx(&svc, txid),
                        Event::Attested { hash, attestation } => attested(&svc, hash, attestation),
                    }
                }
                if !svc.syncing.load(Ordering::Relaxed) {
                    block(&svc, newest.0, newest.1);
                }
            }
            Event::Tx(txid) => tx(&svc, txid),
            Event::Attested { hash, attestation } => attested(&svc, hash, attestation),
        }
    }
}

/// The seen-set's id of an attestation: its signature's `r`.
pub(crate) fn attestation_id(a: &Attestation) -> [u8; 32] {
    let mut id = [0; 32];
    id.copy_from_slice(&a.signature.serialize_compact()[..32]);
    id
}

fn attested(svc: &Arc<Service>, hash: BlockHash, attestation: Attestation) {
    let peers = targets(svc, &attestation_id(&attestation));
    let attestations = Attestation::list_to_hex(&[attestation]);
    for (peer, _) in peers {
        let svc = svc.clone();
        let message = Message::Attest { block: hash, attestations: attestations.clone() };
        tokio::spawn(async move {
            if let Err(e) = svc.request::<Ack>(peer, "attest", message).await {
                tracing::debug!("attestation of {hash} to {peer}: {e}");
            }
        });
    }
}

fn targets(svc: &Service, id: &[u8; 32]) -> Vec<(PeerId, super::peers::Peer)> {
    let book = svc.book();
    let from = book.seen.from(id);
    book.chain_peers().into_iter().filter(|(p, _)| Some(*p) != from && svc.bans.until(p).is_none()).collect()
}

fn block(svc: &Arc<Service>, height: u32, hash: BlockHash) {
    let peers: Vec<PeerId> = targets(svc, &hash.to_byte_array())
        .into_iter()
        .filter(|(_, p)| p.tip != Some(hash) && p.height.is_none_or(|h| h <= height))
        .map(|(id, _)| id)
        .collect();
    if peers.is_empty() {
        return;
    }
    let svc = svc.clone();
    tokio::spawn(async move {
        let node = svc.node.clone();
        let found = tokio::task::spawn_blocking(move || {
            let block = node.block(&hash).ok().flatten()?;
            let seal = node.seal(&hash).ok().flatten().map(|s| s.to_hex());
            Some((wire::block_hex(&block), seal))
        })
        .await
        .ok()
        .flatten();
        let Some((hex, seal)) = found else { return };
        for peer in peers {
            let svc = svc.clone();
            if hex.len() > wire::MAX_PUSH_HEX {
                tokio::spawn(svc.greet(peer));
                continue;
            }
            let (hex, seal) = (hex.clone(), seal.clone());
            tokio::spawn(async move {
                match svc.request::<Ack>(peer, "block", Message::Block { hex, seal }).await {
                    Ok(ack) => {
                        if ack.note.is_none() {
                            svc.book().has(peer, height, hash);
                        }
                    }
                    Err(e) => tracing::debug!("block {hash} to {peer}: {e}"),
                }
            });
        }
    });
}

pub(crate) fn tx(svc: &Arc<Service>, txid: Txid) {
    // a light node keeps no mempool: transactions go to full nodes only
    let peers: Vec<PeerId> =
        targets(svc, &txid.to_byte_array()).into_iter().filter(|(_, p)| !p.light).map(|(id, _)| id).collect();
    if peers.is_empty() {
        return;
    }
    let Some(hex) = svc.node.relay_tx(&txid).map(|t| wire::tx_hex(&t)) else { return };
    for peer in peers {
        let (svc, hex) = (svc.clone(), hex.clone());
        tokio::spawn(async move {
            if let Err(e) = svc.request::<Ack>(peer, "tx", Message::Tx { hex }).await {
                tracing::debug!("tx {txid} to {peer}: {e}");
            }
        });
    }
}
