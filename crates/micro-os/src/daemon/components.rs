//! The registry of the daemon's components. Each owns its health check, the log
//! targets whose events `micro-os logs --component` shows as its, and its keys of the
//! config, which it validates through the crate that owns them. `monitor health`,
//! `micro-os logs` and `test integration` all read this one list.
//!
//! A new component (the circuits, the chain, an AI module) is one entry in [`REGISTRY`].

use std::sync::Arc;

use micro_os_core::metrics::{ComponentHealth, Severity};
use micro_os_core::{AgentStatus, ContainerState, HealthStatus, ValidationError, VmState};

use super::engine::Engine;
use super::supervisor::BoxFuture;
use crate::home::Config;

pub struct Component {
    pub name: &'static str,
    /// Prefixes of the tracing targets whose events are this component's.
    pub targets: &'static [&'static str],
    /// The keys of `config.json` it owns.
    pub config: &'static [&'static str],
    /// Checks its keys; the message names the key and how to fix it (a line of this
    /// module: `validate` below turns it into the crate's `ValidationError`).
    pub validate: fn(&Config) -> Result<(), String>,
    pub health: for<'a> fn(&'a Arc<Engine>) -> BoxFuture<'a, Health>,
}

/// What a component says of itself.
pub enum Health {
    Is(Severity, String),
    /// Nothing is configured for it: neither healthy nor failing.
    NotConfigured,
}

fn no_keys(_: &Config) -> Result<(), String> {
    Ok(())
}

fn not_configured(_: &Arc<Engine>) -> BoxFuture<'_, Health> {
    Box::pin(async { Health::NotConfigured })
}

pub const REGISTRY: &[Component] = &[
    Component {
        name: "api",
        targets: &["micro_os_api", "tower_http", "hyper", "axum", "micro_os::cli"],
        config: &["api_addr", "vm_api_access"],
        validate: |c| {
            c.api_addr
                .parse::<std::net::SocketAddr>()
                .map(drop)
                .map_err(|_| format!("api_addr {:?} is not an address (try 127.0.0.1:8080)", c.api_addr))
        },
        health: |e| {
            Box::pin(async move {
                use std::sync::atomic::Ordering::Relaxed;
                let s = &e.serve_stats;
                let (per, all) = (s.refused_per_client.load(Relaxed), s.refused_total.load(Relaxed));
                let refused = match per + all {
                    0 => String::new(),
                    _ => format!("; refused {per} connections over the per-client cap, {all} over the total"),
                };
                Health::Is(Severity::Healthy, format!("serving on {}{refused}", e.cfg.api_addr))
            })
        },
    },
    Component {
        name: "store",
        targets: &["micro_os_store", "rusqlite"],
        config: &[],
        validate: no_keys,
        health: |e| {
            Box::pin(async move {
                let store = e.store.clone();
                match tokio::task::spawn_blocking(move || store.alerts(true, 1)).await {
                    Ok(Ok(_)) => Health::Is(Severity::Healthy, format!("{} answers", e.home.db_path().display())),
                    Ok(Err(err)) => Health::Is(Severity::Critical, format!("the store does not answer: {err}")),
                    Err(err) => Health::Is(Severity::Critical, format!("store check: {err}")),
                }
            })
        },
    },
    Component {
        name: "runtime",
        targets: &["micro_os_runtime", "micro_os::daemon::engine", "micro_os::daemon"],
        config: &["runtime", "busybox", "log_level"],
        validate: no_keys,
        health: |e| {
            Box::pin(async move {
                // `runc --version` is a process: off the async threads
                let runc = e.runc.clone();
                match tokio::task::spawn_blocking(move || runc.version()).await {
                    Ok(Ok(v)) => Health::Is(Severity::Healthy, format!("{} {v}, cgroup {:?}", e.cfg.runtime, e.cg())),
                    Ok(Err(err)) => Health::Is(Severity::Critical, err.to_string()),
                    Err(err) => Health::Is(Severity::Critical, format!("runc check: {err}")),
                }
            })
        },
    },
    Component {
        name: "vms",
        targets: &["micro_os_vmm", "micro_os::daemon::vms"],
        config: &["vm_bridge", "vm_subnet"],
        validate: |c| {
            micro_os_runtime::fabric::Fabric::parse(&c.vm_bridge, &c.vm_subnet).map(drop).map_err(|e| e.to_string())
        },
        health: |e| {
            Box::pin(async move {
                let vms = e.vms.list();
                let running = vms.iter().filter(|v| v.state == VmState::Running).count();
                let bad: Vec<String> = vms
                    .iter()
                    .filter(|v| v.state == VmState::Running && v.agent != AgentStatus::Ready)
                    .map(|v| format!("{} ({})", v.spec.name, format!("{:?}", v.agent).to_lowercase()))
                    .collect();
                if bad.is_empty() {
                    Health::Is(Severity::Healthy, format!("{running} running, agents ready"))
                } else {
                    Health::Is(Severity::Degraded, format!("agents not ready: {}", bad.join(", ")))
                }
            })
        },
    },
    Component {
        name: "containers",
        targets: &["micro_os::daemon::containers", "micro_os::daemon::health", "micro_os::daemon::logs"],
        config: &["stop_timeout_s", "log_max_size", "log_max_files"],
        validate: |c| {
            if !(c.stop_timeout_s.is_finite() && c.stop_timeout_s >= 0.0) {
                return Err(format!("stop_timeout_s {} is not a number of seconds (try 10)", c.stop_timeout_s));
            }
            if c.log_max_files == 0 {
                return Err("log_max_files 0 keeps no log (give 1 or more, e.g. 3)".into());
            }
            Ok(())
        },
        health: |e| {
            Box::pin(async move {
                let cs = e.containers.list();
                let unhealthy: Vec<String> = cs
                    .iter()
                    .filter(|c| c.health.as_ref().is_some_and(|h| h.status == HealthStatus::Unhealthy))
                    .map(|c| c.spec.name.clone())
                    .collect();
                let running = cs.iter().filter(|c| c.state == ContainerState::Running).count();
                if unhealthy.is_empty() {
                    Health::Is(Severity::Healthy, format!("{running} running of {}", cs.len()))
                } else {
                    Health::Is(Severity::Degraded, format!("unhealthy: {}", unhealthy.join(", ")))
                }
            })
        },
    },
    Component {
        name: "net",
        targets: &["micro_os_p2p", "micro_os::p2p", "libp2p", "micro_os_net"],
        config: &[
            "p2p_listen",
            "p2p_bootstrap",
            "p2p_trusted",
            "p2p_key_rotation_s",
            "p2p_mdns",
            "p2p_nat",
            "p2p_external",
            "p2p_limits",
            "host_token",
            "overlay_port",
            "overlay_mtu",
        ],
        validate: |c| c.validate_p2p().map_err(|e| e.to_string()),
        health: |e| {
            Box::pin(async move {
                let Some(h) = e.p2p.get() else {
                    return Health::Is(Severity::Critical, "the p2p layer is not running".into());
                };
                match h.status().await {
                    Some(st) => {
                        let connected = st.peers.iter().filter(|p| p.connected).count();
                        let refused: u64 = st.rejections.values().sum();
                        Health::Is(
                            Severity::Healthy,
                            format!("{connected} peers connected, {refused} messages refused"),
                        )
                    }
                    None => Health::Is(Severity::Critical, "the p2p layer does not answer".into()),
                }
            })
        },
    },
    Component {
        name: "monitor",
        targets: &["micro_os::daemon::monitor", "micro_os_monitor"],
        config: &["monitor_interval_s", "monitor_raw_hours", "monitor_minute_days", "alerts"],
        validate: |c| {
            if !(c.monitor_interval_s.is_finite() && c.monitor_interval_s >= 0.1) {
                return Err(format!(
                    "monitor_interval_s {} is too short (give seconds, at least 0.1, e.g. 5)",
                    c.monitor_interval_s
                ));
            }
            c.alerts.iter().try_for_each(|r| r.validate().map_err(|e| format!("alerts: {e}")))
        },
        health: |e| Box::pin(async move { e.monitor_health() }),
    },
    Component {
        name: "circuit",
        targets: &["micro_os_circuit", "openraft", "micro_os::daemon::circuits"],
        config: &["circuit_heartbeat_ms", "circuit_election_timeout_ms", "circuit_snapshot_every", "circuit_lag_alert"],
        validate: |c| c.raft_settings().validate().map_err(|e| e.to_string()),
        health: |e| Box::pin(async move { e.circuits_health().await }),
    },
    Component {
        name: "chain",
        targets: &["micro_os_chain", "micro_os::daemon::chain"],
        config: &[
            "chain_alert_lag_blocks",
            "chain_alert_for_s",
            "chain_alert_stall_intervals",
            "chain_alert_no_peers_s",
        ],
        validate: no_keys,
        health: |e| Box::pin(async move { e.chain_health() }),
    },
    Component { name: "ai", targets: &["micro_os_ai"], config: &[], validate: no_keys, health: not_configured },
];

/// The names of every component, in order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|c| c.name).collect()
}

/// The component an event's target belongs to: the longest matching prefix wins;
/// anything else of ours is the runtime's.
pub fn of_target(target: &str) -> &'static str {
    REGISTRY
        .iter()
        .flat_map(|c| c.targets.iter().map(move |t| (c.name, *t)))
        .filter(|(_, t)| target.starts_with(t))
        .max_by_key(|(_, t)| t.len())
        .map_or("runtime", |(name, _)| name)
}

/// Validates every component's keys of the config.
pub fn validate(cfg: &Config) -> Result<(), ValidationError> {
    REGISTRY.iter().try_for_each(|c| (c.validate)(cfg)).map_err(ValidationError::new)
}

/// Each component's settings as `key=value` pairs, for the daemon's start-up log.
pub fn settings(cfg: &Config) -> Vec<(&'static str, String)> {
    let all = serde_json::to_value(cfg).unwrap_or_default();
    REGISTRY
        .iter()
        .filter(|c| !c.config.is_empty())
        .map(|c| {
            let pairs: Vec<String> = c.config.iter().map(|k| format!("{k}={}", all[*k])).collect();
            (c.name, pairs.join(" "))
        })
        .collect()
}

/// Every component's health, in registry order.
pub async fn health(e: &Arc<Engine>) -> Vec<ComponentHealth> {
    let mut out = Vec::new();
    for c in REGISTRY {
        let (status, reason, configured) = match (c.health)(e).await {
            Health::Is(s, r) => (s, r, true),
            Health::NotConfigured => (Severity::Healthy, "not configured".to_string(), false),
        };
        out.push(ComponentHealth { component: c.name.into(), status, reason, configured });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's document states these vocabularies; the daemon's own lists must agree.
    #[test]
    fn the_documented_vocabularies_are_the_daemons() {
        use micro_os_api::schema;
        assert_eq!(names(), schema::COMPONENTS);
        assert_eq!(micro_os_core::circuit::CircuitType::ALL, schema::CIRCUIT_TYPES);
        for t in schema::MESSAGE_TYPES {
            let parsed: micro_os_net::MessageType = serde_json::from_value(serde_json::json!(t)).unwrap();
            assert_eq!(parsed.to_string(), *t);
        }
        let mut ours = vec!["busybox"];
        ours.extend(crate::daemon::engine::BUILT_IN_IMAGES.iter().map(|(name, _)| *name));
        assert_eq!(ours, schema::IMAGE_BASES);
        let keys: Vec<_> = micro_os_ai::config::KEYS.iter().map(|k| (k.0, k.1, k.2, k.3)).collect();
        assert_eq!(keys, schema::TX_CONFIG_KEYS);
    }

    #[test]
    fn targets_map_to_their_component() {
        for (target, component) in [
            ("micro_os_api::server", "api"),
            ("micro_os::daemon::vms", "vms"),
            ("micro_os_vmm::qemu", "vms"),
            ("micro_os::daemon::containers", "containers"),
            ("micro_os::daemon::monitor", "monitor"),
            ("micro_os::daemon", "runtime"),
            ("micro_os_runtime::shim", "runtime"),
            ("libp2p_swarm", "net"),
            ("micro_os_p2p::node", "net"),
            ("openraft::core", "circuit"),
            ("something_else", "runtime"),
        ] {
            assert_eq!(of_target(target), component, "{target}");
        }
    }

    #[test]
    fn every_config_key_has_one_owner() {
        let keys = serde_json::to_value(Config::default()).unwrap();
        let keys: Vec<&String> = keys.as_object().unwrap().keys().collect();
        for k in keys {
            let owners: Vec<_> = REGISTRY.iter().filter(|c| c.config.contains(&k.as_str())).map(|c| c.name).collect();
            assert_eq!(owners.len(), 1, "config key {k} is owned by {owners:?}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let bad = Config { monitor_interval_s: 0.0, ..Config::default() };
        assert!(validate(&bad).unwrap_err().to_string().contains("monitor_interval_s"));
        let bad = Config { vm_subnet: "nope".into(), ..Config::default() };
        assert!(validate(&bad).unwrap_err().to_string().contains("vm subnet"));
        let bad = Config { log_max_files: 0, ..Config::default() };
        assert!(validate(&bad).unwrap_err().to_string().contains("log_max_files 0"));
        validate(&Config::default()).unwrap();
    }
}
