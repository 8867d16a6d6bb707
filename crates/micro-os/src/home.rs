//! The micro-os home: node key, API token, config, store and state directories.
//!
//! `MICRO_OS_HOME`, else `/var/lib/micro-os` for root, else `~/.local/share/micro-os`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

/// The daemon's configuration (`config.json` in the home; `init --config FILE` copies
/// a file of this shape there). Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the REST API. Keep it on loopback unless a proxy with TLS is in front.
    pub api_addr: String,
    /// The OCI runtime binary.
    pub runtime: String,
    /// The static busybox the `busybox` base image is built from.
    pub busybox: PathBuf,
    /// Seconds `stop` waits between SIGTERM and SIGKILL unless told otherwise.
    pub stop_timeout_s: f64,
    /// Log filter for the daemon (tracing's env-filter syntax).
    pub log_level: String,
    /// The bridge micro-os owns for the VM network.
    pub vm_bridge: String,
    /// The VM network's subnet; the host takes its first address on the bridge.
    pub vm_subnet: String,
    /// Whether VMs may reach the REST API (when it listens beyond loopback).
    pub vm_api_access: bool,
    /// Multiaddrs the host's libp2p peer listens on (TCP and QUIC).
    pub p2p_listen: Vec<String>,
    /// Peers to dial at start, as multiaddrs ending in /p2p/<peer id>; they are trusted.
    pub p2p_bootstrap: Vec<String>,
    /// Peer ids (besides this host's VMs and the bootstrap peers) whose messages count.
    pub p2p_trusted: Vec<String>,
    /// Seconds between rotations of the key that signs messages (delegated by the node key).
    pub p2p_key_rotation_s: u64,
    /// Find peers on the local network by multicast DNS (VMs always do, on the VM bridge).
    pub p2p_mdns: bool,
    /// NAT traversal: `{"autonat": true, "relay_server": false, "relay_client": false}`;
    /// with relay_client, listen on `<relay>/p2p-circuit` addresses (in p2p_listen) and
    /// dcutr upgrades relayed connections to direct ones.
    pub p2p_nat: crate::p2p::Nat,
    /// Addresses peers reach this host at (a public address, a forwarded port), as
    /// multiaddrs. A relay server needs one; without any, its listen addresses are used.
    pub p2p_external: Vec<String>,
    /// What one peer may ask of this host: `{"per_second": 10000, "burst": 20000,
    /// "ban_below": -100, "ban_s": 600}` — requests a second and at once (over them a
    /// request is refused, "rate limited"), and the score below which a peer is
    /// disconnected and refused for `ban_s` seconds (every refused message costs score).
    pub p2p_limits: crate::p2p::Limits,
    /// The fabric's join token (`micro-os host token` on one of its hosts): a host alone
    /// at start joins the fabric through the `p2p_bootstrap` addresses with it.
    pub host_token: String,
    /// The UDP port of the encrypted overlay between the fabric's hosts (WireGuard in
    /// userspace); 0 turns the overlay off.
    pub overlay_port: u16,
    /// The MTU of the overlay's TUN device: 1420 (WireGuard's) keeps each sealed packet
    /// within a 1500-byte path; larger ones are fragmented on the way (fewer, larger
    /// packets for the userspace WireGuard: faster where fragments pass, see bench/RESULTS.md).
    pub overlay_mtu: u32,
    /// Seconds between samples of every container, VM and the host.
    pub monitor_interval_s: f64,
    /// Hours raw samples are kept; older ones live on as one-minute averages.
    pub monitor_raw_hours: u64,
    /// Days one-minute averages are kept.
    pub monitor_minute_days: u64,
    /// Alert rules: `[{"name": "crash-loop", "metric": "restarts", "above": 2,
    /// "increase_over_s": 60, "objects": "container/*"}]` (see `AlertRule`).
    pub alerts: Vec<micro_os_core::metrics::AlertRule>,
    /// Milliseconds between a circuit leader's heartbeats.
    pub circuit_heartbeat_ms: u64,
    /// Silence from the leader after which a circuit member starts an election
    /// (randomised up to twice this).
    pub circuit_election_timeout_ms: u64,
    /// Log entries between a circuit member's snapshots (the log before one is purged).
    pub circuit_snapshot_every: u64,
    /// Entries a circuit member may lag behind the leader before it counts as lagging.
    pub circuit_lag_alert: u64,
    /// A chain node this many blocks behind the best height it knows of, for
    /// `chain_alert_for_s`, raises `chain-node-lagging` (0: never).
    pub chain_alert_lag_blocks: u64,
    pub chain_alert_for_s: u64,
    /// A chain node whose tip is this many block intervals old raises `chain-node-stalled`
    /// (0: never).
    pub chain_alert_stall_intervals: u64,
    /// A chain node without peers for this many seconds raises `chain-node-no-peers` (0: never).
    pub chain_alert_no_peers_s: u64,
    /// A container's log (and a sandbox VM's console log) is rotated before it grows past
    /// this size (`10M`; `0` never rotates), ...
    pub log_max_size: micro_os_core::Size,
    /// ... keeping this many files, the one being written included (3).
    pub log_max_files: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_addr: "127.0.0.1:8080".into(),
            runtime: "runc".into(),
            busybox: "/bin/busybox".into(),
            stop_timeout_s: 10.0,
            log_level: "info".into(),
            vm_bridge: "mos0".into(),
            vm_subnet: "10.88.0.0/16".into(),
            vm_api_access: false,
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            p2p_bootstrap: vec![],
            p2p_trusted: vec![],
            p2p_key_rotation_s: 3600,
            p2p_mdns: true,
            p2p_nat: crate::p2p::Nat { autonat: true, relay_server: false, relay_client: false },
            p2p_external: vec![],
            p2p_limits: crate::p2p::Limits::default(),
            host_token: String::new(),
            overlay_port: 51820,
            overlay_mtu: 1420,
            monitor_interval_s: 5.0,
            monitor_raw_hours: 24,
            monitor_minute_days: 30,
            alerts: vec![],
            circuit_heartbeat_ms: 100,
            circuit_election_timeout_ms: 500,
            circuit_snapshot_every: 5000,
            circuit_lag_alert: 1000,
            chain_alert_lag_blocks: 6,
            chain_alert_for_s: 60,
            chain_alert_stall_intervals: 10,
            chain_alert_no_peers_s: 300,
            log_max_size: micro_os_core::Size(10 << 20),
            log_max_files: 3,
        }
    }
}

impl Config {
    /// How containers' and VMs' logs are rotated.
    pub fn log_rotation(&self) -> micro_os_runtime::logs::Rotation {
        micro_os_runtime::logs::Rotation { max_size: self.log_max_size.bytes(), max_files: self.log_max_files }
    }

    /// How the members of circuits created from now on run their Raft.
    pub fn raft_settings(&self) -> micro_os_core::circuit::RaftSettings {
        micro_os_core::circuit::RaftSettings {
            heartbeat_ms: self.circuit_heartbeat_ms,
            election_timeout_ms: self.circuit_election_timeout_ms,
            snapshot_every: self.circuit_snapshot_every,
        }
    }

    /// Every component checks its own keys (`daemon::components`).
    pub fn validate(&self) -> Result<()> {
        crate::daemon::components::validate(self).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The keys of the p2p layer.
    pub fn validate_p2p(&self) -> Result<()> {
        for a in self.p2p_listen.iter().chain(&self.p2p_bootstrap).chain(&self.p2p_external) {
            if a.parse::<libp2p::Multiaddr>().is_err() {
                bail!("p2p address {a:?} is not a multiaddr (try /ip4/127.0.0.1/tcp/4001)");
            }
        }
        let circuit = self.p2p_listen.iter().any(|a| a.contains("/p2p-circuit"));
        if circuit && !self.p2p_nat.relay_client {
            bail!("p2p_listen has a /p2p-circuit address but p2p_nat.relay_client is off (turn it on)");
        }
        if !(1280..=65000).contains(&self.overlay_mtu) {
            bail!("overlay_mtu {} is out of range (1280 to 65000; 1420 fits a 1500-byte path)", self.overlay_mtu);
        }
        self.p2p_limits.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.p2p_key_rotation_s == 0 {
            bail!("p2p_key_rotation_s 0 is too short (give seconds, e.g. 3600)");
        }
        for p in &self.p2p_trusted {
            if p.parse::<libp2p::PeerId>().is_err() {
                bail!("trusted peer {p:?} is not a peer id (they start with 12D3KooW)");
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = fs::read_to_string(path).with_context(|| format!("config {} cannot be read", path.display()))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("config {} is not valid: {e} (see docs/ARCHITECTURE.md for the keys)", path.display())
        })?;
        cfg.validate().with_context(|| format!("config {}", path.display()))?;
        Ok(cfg)
    }
}

impl Home {
    pub fn locate() -> Home {
        if let Some(h) = std::env::var_os("MICRO_OS_HOME").filter(|h| !h.is_empty()) {
            return Home { root: h.into() };
        }
        if nix::unistd::geteuid().is_root() {
            return Home { root: "/var/lib/micro-os".into() };
        }
        let base = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
        Home { root: base.join(".local/share/micro-os") }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn token_path(&self) -> PathBuf {
        self.root.join("token")
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("state.db")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn templates(&self) -> PathBuf {
        self.root.join("templates")
    }
    pub fn runc_root(&self) -> PathBuf {
        self.root.join("runc")
    }

    pub fn config(&self) -> Result<Config> {
        if self.config_path().exists() {
            Config::load(&self.config_path())
        } else {
            Ok(Config::default())
        }
    }

    /// The node key as a libp2p identity (the same ed25519 key, so the same peer id).
    pub fn libp2p_key(&self) -> Result<libp2p::identity::Keypair> {
        let key = read_key(&self.key_path())?;
        libp2p::identity::Keypair::ed25519_from_bytes(key.to_bytes()).map_err(|e| anyhow::anyhow!("node key: {e}"))
    }

    pub fn token(&self) -> Result<String> {
        let p = self.token_path();
        let t = fs::read_to_string(&p).with_context(|| {
            format!("no API token at {} (run `micro-os init`, or set MICRO_OS_HOME to the daemon's home)", p.display())
        })?;
        Ok(t.trim().to_string())
    }

    /// Creates what is missing: directories, node key, token, config. Never replaces an
    /// existing key or token; replaces the config only when `config` is given.
    pub fn init(&self, config: Option<&Config>) -> Result<InitReport> {
        for d in [self.root.clone(), self.images(), self.containers(), self.templates(), self.runc_root()] {
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot chmod {}", self.root.display()))?;
        let mut report = InitReport { home: self.root.clone(), ..Default::default() };

        let key_path = self.key_path();
        let key = if key_path.exists() {
            read_key(&key_path)?
        } else {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            write_secret(&key_path, hex::encode(seed).as_bytes())?;
            report.created.push("node key".into());
            SigningKey::from_bytes(&seed)
        };
        report.public_key = hex::encode(key.verifying_key().as_bytes());

        if !self.token_path().exists() {
            let mut t = [0u8; 32];
            getrandom::fill(&mut t).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            write_secret(&self.token_path(), hex::encode(t).as_bytes())?;
            report.created.push("API token".into());
        }

        match config {
            Some(c) => {
                write_atomic(&self.config_path(), &serde_json::to_vec_pretty(c)?)?;
                report.created.push("config".into());
            }
            None if !self.config_path().exists() => {
                write_atomic(&self.config_path(), &serde_json::to_vec_pretty(&Config::default())?)?;
                report.created.push("config".into());
            }
            None => {}
        }
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct InitReport {
    pub home: PathBuf,
    pub created: Vec<String>,
    pub public_key: String,
}

fn read_key(path: &Path) -> Result<SigningKey> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
    match bytes {
        Some(seed) => Ok(SigningKey::from_bytes(&seed)),
        None => bail!("node key {} is not 64 hex digits (move it away to make a new one)", path.display()),
    }
}

/// Writes a file readable by its owner only, created exclusively (never replaced).
fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Replaces a file readable by its owner only, atomically (a temporary file, fsynced,
/// renamed over it): tokens and keys the daemon makes or is handed.
pub fn write_secret_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_keeps_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home { root: dir.path().join("h") };
        let first = home.init(None).unwrap();
        assert_eq!(first.created, ["node key", "API token", "config"]);
        let token = home.token().unwrap();
        let key = fs::read(home.key_path()).unwrap();
        let mode = fs::metadata(home.token_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cfg = Config { api_addr: "127.0.0.1:9999".into(), ..Default::default() };
        let second = home.init(Some(&cfg)).unwrap();
        assert_eq!(second.created, ["config"]);
        assert_eq!(second.public_key, first.public_key);
        assert_eq!(home.token().unwrap(), token);
        assert_eq!(fs::read(home.key_path()).unwrap(), key);
        assert_eq!(home.config().unwrap().api_addr, "127.0.0.1:9999");
    }

    #[test]
    fn bad_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        fs::write(&p, r#"{"api_addr": "nowhere"}"#).unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(format!("{e:#}").contains("api_addr \"nowhere\""), "{e:#}");
        fs::write(&p, r#"{"colour": 1}"#).unwrap();
        assert!(format!("{:#}", Config::load(&p).unwrap_err()).contains("unknown field"));
    }
}
