//! Mining on the node: one block ([`mine_block`], used by `generatetoaddress`) and the
//! continuous miner of `--mine` ([`spawn_miner`]), plus the progress log a person reads.
//!
//! Key design decisions: a search is cancelled from the miner's progress callback (every
//! 250 ms) when the tip moves, the node stops, or — for the continuous miner — the template
//! is older than [`REFRESH`] and new transactions arrived; the found block is submitted with
//! [`Node::accept_block`] like a peer's. When the next block's bits are the network's pow
//! limit the difficulty cannot slow a miner down (devnet's ASERT clock starts in 2025), so
//! the continuous miner paces itself to one block per target spacing, as the network would;
//! `generatetoaddress` does not pace (regtest's behaviour, for tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::{BlockHash, ScriptBuf};
use micro_os_chain::miner::{self, Stats};

use crate::node::{now, Error, Node};

/// The continuous miner rebuilds its template this often when transactions arrived.
pub const REFRESH: Duration = Duration::from_secs(5);

/// How often the progress log speaks.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// A block the node mined.
#[derive(Debug, Clone, Copy)]
pub struct MinedBlock {
    pub hash: BlockHash,
    pub height: u32,
    pub stats: Stats,
    pub elapsed: Duration,
}

/// Mines one block on the tip paying `payout` with `threads` threads, retrying on a moved
/// tip or an exhausted nonce space; `None` when the node stops first.
pub fn mine_block(
    node: &Node,
    payout: &ScriptBuf,
    threads: usize,
    continuous: bool,
) -> Result<Option<MinedBlock>, Error> {
    let started = Instant::now();
    loop {
        if node.is_stopping() {
            return Ok(None);
        }
        let mut template = node.block_template(payout.clone())?;
        let target = template.block.header.target();
        let pool_generation = node.pool_generation();
        let cancel = AtomicBool::new(false);
        let built = Instant::now();
        let mined = miner::mine(&template.block.header, target, threads, &cancel, |stats| {
            node.set_hash_rate(stats.rate);
            let stale = node.tip_generation() != template.tip_generation;
            let refresh = continuous && built.elapsed() >= REFRESH && node.pool_generation() != pool_generation;
            if node.is_stopping() || stale || refresh {
                cancel.store(true, Ordering::Relaxed);
            }
        });
        let Some(header) = mined.header else { continue };
        template.block.header = header;
        let hash = header.block_hash();
        match node.accept_block(&template.block) {
            Ok(acc) if acc.tip.1 == hash => {
                return Ok(Some(MinedBlock {
                    hash,
                    height: template.height,
                    stats: mined.stats,
                    elapsed: started.elapsed(),
                }))
            }
            // Another block won the race for this height: mine on the new tip.
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Mines `n` blocks to `payout` (`generatetoaddress`), returning their hashes.
pub fn generate(node: &Node, n: u32, payout: &ScriptBuf) -> Result<Vec<BlockHash>, Error> {
    let mut hashes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match mine_block(node, payout, node.options().threads, false)? {
            Some(m) => hashes.push(m.hash),
            None => return Err(Error::ShuttingDown),
        }
    }
    Ok(hashes)
}

/// Sleeps until the tip is one target spacing old when the difficulty is at the pow limit;
/// returns early when the tip moves or the node stops.
fn pace(node: &Node) -> Result<(), Error> {
    let params = node.params();
    let (tip_time, bits) = {
        let st = node.state();
        let tip = st.chain.tip().1;
        let time = st.chain.header(&tip)?.map_or(0, |h| u64::from(h.time));
        (time, st.chain.next_bits(&tip)?)
    };
    if bits != params.pow_limit_bits {
        return Ok(());
    }
    let generation = node.tip_generation();
    while now() < tip_time + params.target_spacing_s && !node.is_stopping() && node.tip_generation() == generation {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts the continuous miner (`--mine`) paying `payout` on `threads` threads. It logs
/// each block it mines and stops when the node stops.
pub fn spawn_miner(node: Arc<Node>, payout: ScriptBuf, threads: usize) -> JoinHandle<()> {
    node.set_mining(true);
    std::thread::Builder::new()
        .name("miner".into())
        .spawn(move || {
            while !node.is_stopping() {
                let result = pace(&node).and_then(|()| mine_block(&node, &payout, threads, true));
                match result {
                    Ok(Some(m)) => {
                        let hash = m.hash.to_string();
                        tracing::info!(
                            "mined block {} {}… in {:.1} s at {}",
                            m.height,
                            &hash[..16],
                            m.elapsed.as_secs_f64(),
                            rate(m.stats.rate)
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("miner: {e}; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            node.set_hash_rate(0.0);
            node.set_mining(false);
        })
        .expect("spawning the miner thread")
}

/// A hash rate for people: `23.1 MH/s`.
pub fn rate(hashes_per_s: f64) -> String {
    let units = [("GH/s", 1e9), ("MH/s", 1e6), ("kH/s", 1e3)];
    for (unit, scale) in units {
        if hashes_per_s >= scale {
            return format!("{:.1} {unit}", hashes_per_s / scale);
        }
    }
    format!("{hashes_per_s:.0} H/s")
}

/// The sync line: `height 1234 of 5000 (24.7%), 85.2 blocks/s, about 44 s left`.
pub fn sync_line(blocks: u32, headers: u32, blocks_per_s: f64) -> String {
    let pct = if headers == 0 { 100.0 } else { f64::from(blocks) * 100.0 / f64::from(headers) };
    let left = if blocks_per_s > 0.0 {
        let secs = f64::from(headers.saturating_sub(blocks)) / blocks_per_s;
        format!("about {} left", human_secs(secs))
    } else {
        "waiting for blocks".to_string()
    };
    format!("height {blocks} of {headers} ({pct:.1}%), {blocks_per_s:.1} blocks/s, {left}")
}

fn human_secs(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Logs the sync line every [`LOG_EVERY`] while headers are ahead of blocks, and the
/// miner's rate while it searches for a block longer than that. Ends when the node stops.
pub fn spawn_progress_log(node: Arc<Node>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            let mut last = (Instant::now(), node.tip().0);
            // the first look a second in, so even a short sync shows its progress
            let mut first = true;
            let mut last_tip_change = (Instant::now(), node.tip_generation());
            while !node.is_stopping() {
                std::thread::sleep(Duration::from_millis(200));
                if last.0.elapsed() < LOG_EVERY && !(first && last.0.elapsed() >= Duration::from_secs(1)) {
                    continue;
                }
                first = false;
                if let Some(light) = node.light() {
                    // a light node: its headers and how far its wallet is proven
                    let (height, scanned) = (light.tip().0, light.scanned());
                    let per_s = f64::from(height.saturating_sub(last.1)) / last.0.elapsed().as_secs_f64();
                    if height != last.1 || scanned < height {
                        tracing::info!(
                            "light: headers at height {height} ({per_s:.1} headers/s), wallet proven to {scanned}"
                        );
                    }
                    last = (Instant::now(), height);
                    continue;
                }
                let info = match node.state().chain.info() {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::error!("progress: {e}");
                        continue;
                    }
                };
                let per_s = f64::from(info.blocks.saturating_sub(last.1)) / last.0.elapsed().as_secs_f64();
                if info.headers > info.blocks {
                    tracing::info!("{}", sync_line(info.blocks, info.headers, per_s));
                }
                let generation = node.tip_generation();
                if generation != last_tip_change.1 {
                    last_tip_change = (Instant::now(), generation);
                } else if node.is_mining() && last_tip_change.0.elapsed() >= LOG_EVERY {
                    tracing::info!(
                        "mining block {} at {}, {:.0} s so far",
                        info.blocks + 1,
                        rate(node.hash_rate()),
                        last_tip_change.0.elapsed().as_secs_f64()
                    );
                }
                last = (Instant::now(), info.blocks);
            }
        })
        .expect("spawning the progress thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::node;

    #[test]
    fn log_lines_read_well() {
        assert_eq!(sync_line(1234, 5000, 85.2), "height 1234 of 5000 (24.7%), 85.2 blocks/s, about 44 s left");
        assert_eq!(sync_line(0, 0, 0.0), "height 0 of 0 (100.0%), 0.0 blocks/s, waiting for blocks");
        assert!(sync_line(10, 100_000, 5.0).ends_with("about 5.6 h left"));
        assert_eq!(rate(23_100_000.0), "23.1 MH/s");
        assert_eq!(rate(512.0), "512 H/s");
    }

    #[test]
    fn generate_mines_blocks_and_the_continuous_miner_stops() {
        let (_d, node) = node();
        let node = Arc::new(node);
        let a = node.new_address().unwrap().script_pubkey();
        let hashes = generate(&node, 5, &a).unwrap();
        assert_eq!(hashes.len(), 5);
        assert_eq!(node.tip(), (5, hashes[4]));
        // The continuous miner paces to the devnet's 2 s spacing: at most a few blocks.
        let handle = spawn_miner(node.clone(), a, 1);
        std::thread::sleep(Duration::from_millis(4500));
        node.stop();
        handle.join().unwrap();
        let height = node.tip().0;
        assert!((6..=8).contains(&height), "height {height}");
        assert!(!node.is_mining());
        assert_eq!(node.hash_rate(), 0.0);
        assert!(matches!(generate(&node, 1, &ScriptBuf::new()), Err(Error::ShuttingDown)));
    }
}
