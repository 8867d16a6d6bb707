//! Fast sync (`--sync-mode fast`): a fresh node downloads the headers, then the UTXO set
//! at a recent commitment from a peer, checks it against the commitment the chain carries
//! (`micro_os_chain::utxo`: the coinbase of every K-th block), loads it and validates
//! forward from there. The blocks below the snapshot are fetched afterwards, in the
//! background (`p2p::sync::backfill`), checked against the headers and stored for serving.
//!
//! Every full node keeps the UTXO set each K-th commitment will cover — the state after
//! each block at height K·n − 1 — in `<datadir>/snapshots/<height>.bin` (the two newest),
//! and serves it in parts with `GetSnapshot`.

use std::path::{Path, PathBuf};

use micro_os_chain::utxo::Snapshot;

/// Snapshots kept, the newest.
const KEEP: usize = 2;

fn dir(datadir: &Path) -> PathBuf {
    datadir.join("snapshots")
}

/// Writes `snap` as `<height>.bin` (atomically) and drops all but the newest [`KEEP`].
pub fn keep_snapshot(datadir: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let d = dir(datadir);
    std::fs::create_dir_all(&d)?;
    let path = d.join(format!("{}.bin", snap.height));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, snap.to_bytes())?;
    std::fs::rename(&tmp, &path)?;
    let mut heights: Vec<u32> = std::fs::read_dir(&d)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".bin")?.parse().ok())
        .collect();
    heights.sort_unstable();
    for h in heights.iter().rev().skip(KEEP) {
        let _ = std::fs::remove_file(d.join(format!("{h}.bin")));
    }
    Ok(())
}

/// The bytes of the kept snapshot at `height`, if there is one.
pub fn snapshot_bytes(datadir: &Path, height: u32) -> Option<Vec<u8>> {
    std::fs::read(dir(datadir).join(format!("{height}.bin"))).ok()
}

/// The path of the kept snapshot at `height` (for tests that tamper with it).
pub fn snapshot_path(datadir: &Path, height: u32) -> PathBuf {
    dir(datadir).join(format!("{height}.bin"))
}
