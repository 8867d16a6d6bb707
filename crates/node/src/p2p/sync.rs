//! Headers-first sync: for a peer ahead of us, ask `GetHeaders` with our locator, store
//! the headers (`accept_header`), download the blocks we lack in batches — several
//! batches in flight, spread over the chain peers that have them — and connect them in
//! order (`accept_block`); repeat until the peer has nothing more.
//!
//! Key design decision: the sync keeps no state of its own. Headers and blocks are in the
//! chain state, which commits per block, so after a restart (even a `kill -9`) the next
//! round's locator starts where the chain state stopped, and headers already stored come
//! back as "known, no data" and are fetched. One sync runs at a time, woken by a hint (a
//! `Hello` from a peer ahead, a pushed block that does not connect) or every few seconds.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::{Block, BlockHash};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use micro_os_chain::chainstate::BlockStatus;
use micro_os_chain::seal::{Attestation, Seal};
use micro_os_p2p::PeerId;

use super::serve::{block_penalty, take_attestations, INVALID_BLOCK, MALFORMED};
use super::wire::{self, Blocks, Headers, Message, SnapshotPart};
use super::{Error, RequestError, Service};
use crate::node::Node;

/// Blocks asked for in one `GetBlocks`.
pub const BATCH: usize = 32;
/// `GetBlocks` requests in flight at once.
pub const IN_FLIGHT: usize = 4;
/// How often the sync looks for a peer ahead of us without being woken.
const LOOK_EVERY: Duration = Duration::from_secs(3);

/// The sync task: one sync at a time, with the peer hinted first, else the highest peer
/// ahead of our tip.
pub async fn run(svc: Arc<Service>) {
    loop {
        tokio::select! {
            _ = svc.wake.notified() => {}
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if svc.node.is_stopping() {
            return;
        }
        while let Some(peer) = next_peer(&svc) {
            svc.syncing.store(true, Ordering::Relaxed);
            let before = svc.node.tip();
            let started = Instant::now();
            let result = sync_with(&svc, peer).await;
            svc.syncing.store(false, Ordering::Relaxed);
            let after = svc.node.tip();
            match result {
                Ok(()) if after != before => {
                    let n = after.0.saturating_sub(before.0);
                    let secs = started.elapsed().as_secs_f64();
                    tracing::info!(
                        "synced with {peer}: height {} ({}), {n} blocks in {secs:.1} s ({:.0} blocks/s)",
                        after.0,
                        after.1,
                        f64::from(n) / secs.max(1e-3)
                    );
                    // tell the others where we are now
                    announce(&svc).await;
                }
                Ok(()) => {}
                Err(e) => tracing::warn!("sync with {peer}: {e}"),
            }
            if svc.node.is_stopping() || after == before {
                break;
            }
        }
    }
}

/// Sends our `Hello` to every chain peer not known to be at our tip.
pub async fn announce(svc: &Arc<Service>) {
    let (height, tip) = svc.node.tip();
    for (id, p) in svc.book().chain_peers() {
        if p.tip != Some(tip) && p.height.is_none_or(|h| h <= height) {
            tokio::spawn(svc.clone().greet(id));
        }
    }
}

fn next_peer(svc: &Service) -> Option<PeerId> {
    while let Some(p) = svc.take_hint() {
        if svc.bans.until(&p).is_none() && svc.book().peers.get(&p).is_some_and(|p| p.connected) {
            return Some(p);
        }
    }
    let height = svc.node.tip().0;
    let light = svc.node.is_light();
    svc.book()
        .chain_peers()
        .into_iter()
        .filter(|(id, p)| (light || !p.light) && p.height.is_some_and(|h| h > height) && svc.bans.until(id).is_none())
        .max_by_key(|(_, p)| p.height)
        .map(|(id, _)| id)
}

async fn blocking<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&Node) -> T + Send + 'static,
) -> Result<T, Error> {
    let node = node.clone();
    Ok(tokio::task::spawn_blocking(move || f(&node)).await?)
}

fn request_error(peer: PeerId, what: &'static str, e: RequestError) -> Error {
    match e {
        RequestError::P2p(e) => Error::P2p(e),
        RequestError::Malformed { why, .. } => Error::Malformed { peer, what, why },
    }
}

/// Syncs with `peer` until it has no headers we lack.
pub async fn sync_with(svc: &Arc<Service>, peer: PeerId) -> Result<(), Error> {
    if svc.node.wants_snapshot() {
        return fast_sync(svc, peer).await;
    }
    loop {
        let tip = svc.node.tip();
        let locator = blocking(&svc.node, |n| n.locator()).await??;
        let answer: Headers = svc
            .request(peer, "get_headers", Message::GetHeaders { locator })
            .await
            .map_err(|e| request_error(peer, "get_headers", e))?;
        if answer.headers.is_empty() {
            return Ok(());
        }
        if answer.headers.len() > wire::MAX_HEADERS {
            svc.misbehaved(peer, "oversized", MALFORMED);
            let why = format!("{} headers (at most {})", answer.headers.len(), wire::MAX_HEADERS);
            return Err(Error::Invalid { peer, what: "headers", why });
        }
        let headers = decode_headers(svc, peer, &answer)?;
        let full = headers.len() == wire::MAX_HEADERS;
        // a light node of a sealed network checks each header's seal
        let mut seals = Vec::new();
        if svc.node.is_light() && svc.node.is_sealed() {
            if answer.seals.len() != headers.len() {
                svc.misbehaved(peer, "bad-seal", MALFORMED);
                let why = format!("{} headers with {} seals", headers.len(), answer.seals.len());
                return Err(Error::Invalid { peer, what: "headers", why });
            }
            for s in &answer.seals {
                match Seal::from_hex(s) {
                    Ok(s) => seals.push(s),
                    Err(r) => {
                        svc.misbehaved(peer, "bad-seal", MALFORMED);
                        return Err(Error::Invalid { peer, what: "headers", why: r.to_string() });
                    }
                }
            }
        }
        let attestations =
            if seals.is_empty() { Vec::new() } else { attestations_of(svc, peer, &answer.attestations)? };
        let stored = blocking(&svc.node, move |n| {
            let mut need = Vec::new();
            let mut last = None;
            for (i, h) in headers.iter().enumerate() {
                let s = match seals.get(i) {
                    Some(seal) => n.accept_sealed_header(h, seal)?,
                    None => n.accept_header(h)?,
                };
                if let Some(list) = attestations.get(i) {
                    take_attestations(n, &s.hash, list.clone())?;
                }
                last = Some((s.height, s.hash));
                if s.status == BlockStatus::HeaderOnly {
                    need.push((s.height, s.hash));
                }
            }
            Ok::<_, crate::node::Error>((need, last))
        })
        .await?;
        let (need, last) = match stored {
            Ok(x) => x,
            Err(e) => {
                if let Some(r) = e.reject() {
                    svc.misbehaved(peer, r.code.as_str(), block_penalty(r.code));
                    return Err(Error::Invalid { peer, what: "header", why: r.to_string() });
                }
                return Err(e.into());
            }
        };
        if let Some((height, hash)) = last {
            svc.book().has(peer, height, hash);
        }
        // a light node keeps the headers only
        if !need.is_empty() && !svc.node.is_light() {
            download(svc, peer, need).await?;
        }
        // nothing moved: its branch has no more work than ours, or it sent nothing new
        if svc.node.tip() == tip && !full {
            return Ok(());
        }
        if svc.node.tip() == tip {
            return Err(Error::Invalid { peer, what: "headers", why: "a full batch that moved nothing".into() });
        }
    }
}

/// The headers of a `Headers` answer; one that does not decode costs the peer score.
fn decode_headers(svc: &Service, peer: PeerId, answer: &Headers) -> Result<Vec<Header>, Error> {
    answer.headers.iter().map(|h| wire::decode::<Header>("header", h)).collect::<Result<_, _>>().map_err(|why| {
        svc.misbehaved(peer, "malformed", MALFORMED);
        Error::Malformed { peer, what: "headers", why }
    })
}

/// Fast sync's first steps with `peer`: every header, then the UTXO snapshot at the last
/// commitment (checked against the commitment in that block's coinbase), loaded. The
/// blocks from the commitment on are then downloaded and connected by the ordinary sync.
async fn fast_sync(svc: &Arc<Service>, peer: PeerId) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let locator = blocking(&svc.node, |n| n.header_locator()).await??;
        let answer: Headers = svc
            .request(peer, "get_headers", Message::GetHeaders { locator })
            .await
            .map_err(|e| request_error(peer, "get_headers", e))?;
        let n = answer.headers.len();
        let headers = decode_headers(svc, peer, &answer)?;
        let stored =
            blocking(&svc.node, move |node| headers.iter().try_for_each(|h| node.accept_header(h).map(drop))).await?;
        if let Err(e) = stored {
            if let Some(r) = e.reject() {
                svc.misbehaved(peer, r.code.as_str(), block_penalty(r.code));
                return Err(Error::Invalid { peer, what: "header", why: r.to_string() });
            }
            return Err(e.into());
        }
        if n < wire::MAX_HEADERS {
            break;
        }
    }
    let (best, _) = blocking(&svc.node, |n| n.best_header()).await??;
    let k = svc.node.params().utxo_commit_every;
    let commit_at = best.checked_div(k).map_or(0, |n| n * k);
    if commit_at == 0 {
        tracing::info!("fast sync: no utxo commitment below the best header ({best}); syncing in full");
        svc.node.give_up_fast();
        return Ok(());
    }
    let base_height = commit_at - 1;
    let (commit_hash, base_hash) = blocking(&svc.node, move |n| {
        Ok::<_, crate::node::Error>((n.header_hash_at(commit_at)?, n.header_hash_at(base_height)?))
    })
    .await??;
    let (Some(commit_hash), Some(base_hash)) = (commit_hash, base_hash) else {
        return Err(Error::Invalid { peer, what: "headers", why: format!("no header at {commit_at}") });
    };
    // the block carrying the commitment: its merkle root ties its coinbase to the header chain
    let (block, _, _) = fetch(svc, peer, &[commit_hash]).await?.pop().expect("one block fetched");
    if let Err(r) = micro_os_chain::validation::check_block(&block, svc.node.params()) {
        svc.misbehaved(peer, r.code.as_str(), INVALID_BLOCK);
        return Err(Error::Invalid { peer, what: "block", why: r.to_string() });
    }
    let Some(commitment) = micro_os_chain::utxo::find(&block.txdata[0]) else {
        tracing::warn!("fast sync: block {commit_at} carries no utxo commitment; syncing in full");
        svc.node.give_up_fast();
        return Ok(());
    };
    // the snapshot, in parts
    let mut bytes = Vec::new();
    loop {
        let part: SnapshotPart = svc
            .request(peer, "get_snapshot", Message::GetSnapshot { height: base_height, offset: bytes.len() as u64 })
            .await
            .map_err(|e| request_error(peer, "get_snapshot", e))?;
        let data = hex::decode(&part.data).map_err(|e| {
            svc.misbehaved(peer, "malformed", MALFORMED);
            Error::Malformed { peer, what: "snapshot", why: e.to_string() }
        })?;
        if data.is_empty() && (bytes.len() as u64) < part.total {
            return Err(Error::Invalid { peer, what: "snapshot", why: "an empty part before the end".into() });
        }
        bytes.extend_from_slice(&data);
        if bytes.len() as u64 >= part.total || bytes.len() > 1 << 30 {
            break;
        }
    }
    let checked = micro_os_chain::utxo::Snapshot::from_bytes(&bytes).map_err(|e| e.to_string()).and_then(|snap| {
        if snap.base != base_hash || snap.height != base_height {
            return Err(format!("it is of block {} at {}, not {base_hash} at {base_height}", snap.base, snap.height));
        }
        if snap.hash() != commitment {
            return Err(format!(
                "its hash {} is not the commitment {} in block {commit_at}",
                hex::encode(snap.hash()),
                hex::encode(commitment)
            ));
        }
        Ok(snap)
    });
    let snap = match checked {
        Ok(s) => s,
        Err(why) => {
            svc.misbehaved(peer, "bad-snapshot", INVALID_BLOCK);
            tracing::warn!("fast sync: the utxo snapshot from {peer} is refused: {why}; syncing in full");
            svc.node.give_up_fast();
            return Err(Error::Invalid { peer, what: "snapshot", why });
        }
    };
    let coins = snap.coins.len();
    blocking(&svc.node, move |n| n.load_snapshot(&snap)).await??;
    tracing::info!(
        "fast sync: utxo snapshot at height {base_height} ({coins} coins, {} KiB) from {peer} matches block {commit_at}'s commitment; loaded in {:.1} s, validating from {commit_at}",
        bytes.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// After a fast sync, the blocks below the snapshot in the background, a batch at a time
/// from a full peer that has them, checked against the active chain's headers and stored
/// (so the node can serve them and find their transactions). Runs for every node; one that
/// never fast-synced has nothing to fetch.
pub async fn backfill(svc: Arc<Service>) {
    let mut fetched = 0usize;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if svc.node.is_stopping() {
            return;
        }
        if svc.syncing.load(Ordering::Relaxed) {
            continue;
        }
        let missing = match blocking(&svc.node, |n| n.missing_below_snapshot(BATCH * IN_FLIGHT)).await {
            Ok(Ok(m)) => m,
            _ => continue,
        };
        let Some(&(top, _)) = missing.last() else {
            if fetched > 0 {
                tracing::info!("fast sync: the {fetched} blocks below the snapshot are fetched");
                fetched = 0;
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
            continue;
        };
        let peer = svc
            .book()
            .chain_peers()
            .into_iter()
            .filter(|(id, p)| !p.light && p.height.is_some_and(|h| h >= top) && svc.bans.until(id).is_none())
            .map(|(id, _)| id)
            .min();
        let Some(peer) = peer else { continue };
        for batch in missing.chunks(BATCH) {
            let hashes: Vec<BlockHash> = batch.iter().map(|b| b.1).collect();
            let blocks = match fetch(&svc, peer, &hashes).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!("fast sync: old blocks from {peer}: {e}");
                    break;
                }
            };
            let n = blocks.len();
            let stored =
                blocking(&svc.node, move |node| blocks.iter().try_for_each(|(b, _, _)| node.store_old_block(b))).await;
            match stored {
                Ok(Ok(())) => fetched += n,
                Ok(Err(e)) => {
                    if let Some(r) = e.reject() {
                        svc.misbehaved(peer, r.code.as_str(), INVALID_BLOCK);
                    }
                    tracing::warn!("fast sync: an old block from {peer}: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// A block as fetched: with its seal and attestations on a validator-sealed network.
type Fetched = (Block, Option<Seal>, Vec<Attestation>);

/// A batch being fetched: the peer that answered, and the blocks.
type Fetch = BoxFuture<'static, Result<(PeerId, Vec<Fetched>), Error>>;

/// Downloads `need` (heights and hashes, in chain order) and connects the blocks in order:
/// batches of [`BATCH`], [`IN_FLIGHT`] at once, each from a chain peer that has it (round
/// robin), the sync's peer retrying a batch another peer failed.
async fn download(svc: &Arc<Service>, peer: PeerId, need: Vec<(u32, BlockHash)>) -> Result<(), Error> {
    let batches: Vec<Vec<(u32, BlockHash)>> = need.chunks(BATCH).map(<[_]>::to_vec).collect();
    let mut next = batches.into_iter().enumerate();
    let mut inflight: FuturesOrdered<Fetch> = FuturesOrdered::new();
    let fill = |inflight: &mut FuturesOrdered<Fetch>,
                next: &mut dyn Iterator<Item = (usize, Vec<(u32, BlockHash)>)>| {
        while inflight.len() < IN_FLIGHT {
            let Some((i, batch)) = next.next() else { break };
            let top = batch.last().map_or(0, |b| b.0);
            let mut sources: Vec<PeerId> = svc
                .book()
                .chain_peers()
                .into_iter()
                .filter(|(id, p)| {
                    *id != peer && !p.light && p.height.is_some_and(|h| h >= top) && svc.bans.until(id).is_none()
                })
                .map(|(id, _)| id)
                .collect();
            sources.sort();
            sources.push(peer);
            let from = sources[i % sources.len()];
            let svc = svc.clone();
            inflight.push_back(Box::pin(async move {
                let hashes: Vec<BlockHash> = batch.iter().map(|b| b.1).collect();
                match fetch(&svc, from, &hashes).await {
                    Err(e) if from != peer => {
                        tracing::debug!("blocks from {from}: {e}; asking {peer}");
                        fetch(&svc, peer, &hashes).await.map(|b| (peer, b))
                    }
                    r => r.map(|b| (from, b)),
                }
            }));
        }
    };
    fill(&mut inflight, &mut next);
    while let Some(got) = inflight.next().await {
        let (from, blocks) = got?;
        let result = blocking(&svc.node, move |n| {
            for (b, seal, attestations) in &blocks {
                let accepted = match seal {
                    Some(seal) => n.accept_sealed(b, seal),
                    None => n.accept_block(b),
                };
                let taken = accepted.and_then(|_| take_attestations(n, &b.block_hash(), attestations.clone()));
                if let Err(e) = taken {
                    return Err((b.block_hash(), Box::new(e)));
                }
            }
            Ok(())
        })
        .await?;
        match result {
            Ok(_) => {}
            Err((hash, e)) => {
                if let Some(r) = e.reject() {
                    svc.misbehaved(from, r.code.as_str(), block_penalty(r.code));
                    return Err(Error::Invalid { peer: from, what: "block", why: format!("block {hash}: {r}") });
                }
                return Err((*e).into());
            }
        }
        if svc.node.is_stopping() {
            return Ok(());
        }
        fill(&mut inflight, &mut next);
    }
    Ok(())
}

/// Blocks `hashes` from `peer`, all of them, in order (asking again for the rest of a
/// capped answer); a block other than the one asked for costs the peer score.
async fn fetch(svc: &Arc<Service>, peer: PeerId, hashes: &[BlockHash]) -> Result<Vec<Fetched>, Error> {
    let mut out: Vec<Fetched> = Vec::with_capacity(hashes.len());
    while out.len() < hashes.len() {
        let ask = hashes[out.len()..].to_vec();
        let answer: Blocks = svc
            .request(peer, "get_blocks", Message::GetBlocks { hashes: ask.clone() })
            .await
            .map_err(|e| request_error(peer, "get_blocks", e))?;
        if answer.blocks.is_empty() {
            return Err(Error::Invalid {
                peer,
                what: "blocks",
                why: format!("it has none of {} blocks asked", ask.len()),
            });
        }
        let asked: HashSet<BlockHash> = ask.iter().copied().collect();
        let sealed = svc.node.is_sealed();
        let attestations = if sealed { attestations_of(svc, peer, &answer.attestations)? } else { Vec::new() };
        if sealed && answer.seals.len() != answer.blocks.len() {
            svc.misbehaved(peer, "bad-seal", MALFORMED);
            let why = format!("{} blocks with {} seals", answer.blocks.len(), answer.seals.len());
            return Err(Error::Invalid { peer, what: "blocks", why });
        }
        for (i, (hex, want)) in answer.blocks.iter().zip(&ask).enumerate() {
            let b: Block = match wire::decode("block", hex) {
                Ok(b) => b,
                Err(why) => {
                    svc.misbehaved(peer, "malformed", MALFORMED);
                    return Err(Error::Malformed { peer, what: "blocks", why });
                }
            };
            let got = b.block_hash();
            if got != *want {
                svc.misbehaved(peer, "unasked block", INVALID_BLOCK);
                let why = if asked.contains(&got) { "out of order" } else { "not asked for" };
                return Err(Error::Invalid { peer, what: "blocks", why: format!("block {got} {why}") });
            }
            let seal = match sealed {
                true => match Seal::from_hex(&answer.seals[i]) {
                    Ok(s) => Some(s),
                    Err(r) => {
                        svc.misbehaved(peer, "bad-seal", MALFORMED);
                        return Err(Error::Invalid { peer, what: "blocks", why: r.to_string() });
                    }
                },
                false => None,
            };
            out.push((b, seal, attestations.get(i).cloned().unwrap_or_default()));
        }
    }
    Ok(out)
}

/// The attestations beside an answer's blocks or headers (a peer from before attestations
/// sends none); a malformed list costs the peer score.
fn attestations_of(svc: &Service, peer: PeerId, lists: &[String]) -> Result<Vec<Vec<Attestation>>, Error> {
    lists.iter().map(|l| Attestation::list_from_hex(l)).collect::<Result<Vec<_>, _>>().map_err(|r| {
        svc.misbehaved(peer, "bad-attestation", MALFORMED);
        Error::Invalid { peer, what: "attestations", why: r.to_string() }
    })
}
