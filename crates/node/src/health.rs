//! The container's health probe (`micro-os-node health --datadir DIR`) and the validator
//! key.
//!
//! "Healthy" means the node is serving and not stalled: its RPC answers
//! `getblockchaininfo` with its cookie, and when it knows headers beyond its blocks, its
//! height has moved within `STALL_S` seconds. The probe runs apart from the node (in the
//! container, by micro-os's health checker), so it keeps what it saw last in
//! `<datadir>/.health` to compare with.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bitcoin::secp256k1::{rand, PublicKey, Secp256k1, SecretKey};
use micro_os_chain::params::Params;

/// Seconds without a new block, while headers are ahead, before the node counts as stalled.
pub const STALL_S: u64 = 120;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs the probe with its arguments (after `health`); prints one line, returns the exit
/// code (0 healthy, 1 not, 2 bad input).
pub fn probe(args: Vec<String>) -> i32 {
    let mut datadir = std::env::var_os("MICRO_OS_CONFIG_DATADIR").map(PathBuf::from);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--datadir", Some(d)) => datadir = Some(d.into()),
            _ => {
                eprintln!("micro-os-node health: {a:?} is not an option here (give --datadir DIR)");
                return 2;
            }
        }
    }
    let Some(datadir) = datadir else {
        eprintln!("micro-os-node health: give --datadir DIR (the node's data directory)");
        return 2;
    };
    match check(&datadir) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(why) => {
            println!("{why}");
            1
        }
    }
}

fn check(datadir: &Path) -> Result<String, String> {
    let network = std::env::var("MICRO_OS_CONFIG_NETWORK").unwrap_or_else(|_| "devnet".into());
    let params = Params::by_name(&network).map_err(|e| e.to_string())?;
    let bind = std::env::var("MICRO_OS_CONFIG_RPC_BIND").unwrap_or_else(|_| format!("127.0.0.1:{}", params.rpc_port));
    let bind = bind.replace("0.0.0.0", "127.0.0.1");
    let cookie = std::fs::read_to_string(datadir.join(".cookie")).map_err(|e| format!("no rpc cookie yet: {e}"))?;
    let auth = base64::engine::general_purpose::STANDARD.encode(cookie.trim());
    let reply: serde_json::Value = ureq::post(&format!("http://{bind}/"))
        .set("authorization", &format!("Basic {auth}"))
        .timeout(Duration::from_secs(3))
        .send_string(r#"{"jsonrpc":"1.0","id":"health","method":"getblockchaininfo","params":[]}"#)
        .map_err(|e| format!("rpc on {bind} does not answer: {e}"))?
        .into_json()
        .map_err(|e| format!("rpc on {bind} answered no JSON: {e}"))?;
    let info = &reply["result"];
    let blocks = info["blocks"].as_u64().ok_or("getblockchaininfo has no height")?;
    let headers = info["headers"].as_u64().unwrap_or(blocks);
    let state = datadir.join(".health");
    let last: Option<(u64, u64)> = std::fs::read_to_string(&state).ok().and_then(|t| {
        let mut w = t.split_whitespace().map(|x| x.parse::<u64>().ok());
        Some((w.next()??, w.next()??))
    });
    let now = now();
    // remember when the height last moved
    let since = match last {
        Some((h, at)) if h == blocks => at,
        _ => {
            let _ = std::fs::write(&state, format!("{blocks} {now}\n"));
            now
        }
    };
    if headers > blocks && now.saturating_sub(since) > STALL_S {
        return Err(format!("stalled at height {blocks} of {headers} for {} s", now - since));
    }
    Ok(format!("serving on {bind}: height {blocks} of {headers}"))
}

/// The validator key of the node in `datadir` (`validator.key`, mode 0600, made on first
/// use): its public key, hex.
pub fn validator_key(datadir: &Path) -> anyhow::Result<String> {
    Ok(PublicKey::from_secret_key(&Secp256k1::new(), &validator_secret(datadir)?).to_string())
}

/// The validator's secret key, made on first use (see [`validator_key`]).
pub fn validator_secret(datadir: &Path) -> anyhow::Result<SecretKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = datadir.join("validator.key");
    let secret = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<SecretKey>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::new(&mut rand::thread_rng());
            let tmp = datadir.join("validator.key.tmp");
            let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(key.display_secret().to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            key
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validator_key_is_made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let first = validator_key(d.path()).unwrap();
        assert_eq!(validator_key(d.path()).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("validator.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_node_that_does_not_answer_is_not_healthy() {
        let d = tempfile::tempdir().unwrap();
        assert!(check(d.path()).unwrap_err().contains("no rpc cookie"));
        std::fs::write(d.path().join(".cookie"), "__cookie__:x").unwrap();
        std::env::set_var("MICRO_OS_CONFIG_RPC_BIND", "127.0.0.1:9");
        let e = check(d.path()).unwrap_err();
        std::env::remove_var("MICRO_OS_CONFIG_RPC_BIND");
        assert!(e.contains("does not answer"), "{e}");
    }
}
