//! The collector: every `monitor_interval_s` it samples each running container and VM
//! (their cgroups, their network namespace, restarts and health checks) and the host,
//! stores the round, evaluates the alert rules, and once a minute rolls raw samples up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use micro_os_core::metrics::{Alert, ComponentHealth, Sample, Severity};
use micro_os_core::{ContainerState, VmState};
use micro_os_monitor::{AlertChange, AlertEngine, Rates};
use micro_os_runtime::{cgroup, procfs};

use super::components::{self, Health};
use super::engine::Engine;
use super::error::{Error, Result};

/// What the collector keeps between rounds.
#[derive(Default)]
pub struct Monitor {
    /// The last round, for `monitor resources` and `/metrics`.
    pub latest: RwLock<Vec<Sample>>,
    rates: Mutex<Rates>,
    /// Health-check counts (checks, failures) at the last round, by container id.
    checks: Mutex<HashMap<String, (u64, u64, f64)>>,
    host_cpu: Mutex<Option<(u64, u64)>>,
    pub alerts: Mutex<AlertEngine>,
    /// When the last round was stored, ms.
    pub last_round: std::sync::atomic::AtomicI64,
    /// How long the last round took to collect, µs (the collector's own cost).
    pub last_cost_us: std::sync::atomic::AtomicU64,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Engine {
    /// Starts the collector.
    pub fn spawn_monitor(self: &Arc<Self>) {
        let every = Duration::from_secs_f64(self.cfg.monitor_interval_s);
        {
            let mut alerts = self.monitor.alerts.lock().unwrap();
            let mut rules = self.cfg.alerts.clone();
            rules.extend(super::chain::chain_alert_rules(&self.cfg));
            *alerts = AlertEngine::new(rules);
            alerts.adopt(&self.store.alerts(true, 10_000).unwrap_or_default());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rolled_at = 0i64;
            loop {
                tick.tick().await;
                let t = this.clone();
                let net = match this.p2p.get() {
                    Some(h) => h.status().await,
                    None => None,
                };
                let chain = this.chain_samples().await;
                let round = tokio::task::spawn_blocking(move || t.sample_round(net, chain)).await;
                if let Err(e) = round {
                    tracing::warn!("monitor: a round failed: {e}");
                }
                this.circuit_alerts().await;
                let now = now_ms();
                if now - rolled_at >= 60_000 {
                    rolled_at = now;
                    let (raw, minute) = (this.cfg.monitor_raw_hours, this.cfg.monitor_minute_days);
                    let t = this.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = t.store.downsample(now, raw as i64 * 3_600_000, minute as i64 * 86_400_000) {
                            tracing::warn!("monitor: roll-up: {e}");
                        }
                    })
                    .await;
                }
            }
        });
    }

    /// One round: collect, store, evaluate alerts.
    fn sample_round(
        &self,
        net: Option<micro_os_api::types::NetStatus>,
        mut chain: std::collections::HashMap<String, micro_os_core::metrics::ChainSample>,
    ) {
        let started = std::time::Instant::now();
        let mut samples = self.collect();
        for s in samples.iter_mut().filter(|s| s.kind == "container") {
            s.chain = chain.remove(&s.id);
        }
        samples
            .extend(net.map(|n| peer_samples(&n, samples.first().map_or_else(now_ms, |s| s.ts))).unwrap_or_default());
        self.monitor.last_cost_us.store(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.store.insert_samples(&samples) {
            tracing::warn!("monitor: store samples: {e}");
        }
        let changes = self.monitor.alerts.lock().unwrap().evaluate(&samples);
        for c in changes {
            match c {
                AlertChange::Fire(a) => match self.store.insert_alert(&a) {
                    Ok(id) => {
                        tracing::warn!("alert {} fired: {}", a.rule, a.message);
                        self.monitor.alerts.lock().unwrap().fired(&a.rule, &a.object, id);
                    }
                    Err(e) => tracing::warn!("monitor: store alert: {e}"),
                },
                AlertChange::Resolve { id, at } => {
                    tracing::info!("alert {id} resolved");
                    if let Err(e) = self.store.resolve_alert(id, at) {
                        tracing::warn!("monitor: resolve alert: {e}");
                    }
                }
            }
        }
        self.monitor.last_round.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        *self.monitor.latest.write().unwrap() = samples;
    }

    pub(super) fn collect(&self) -> Vec<Sample> {
        let ts = now_ms();
        let mut out = Vec::new();
        let mut alive = HashSet::new();
        let mut rates = self.monitor.rates.lock().unwrap();
        let containers =
            self.containers.filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Paused));
        for c in containers {
            let Some(pid) = c.pid else { continue };
            let Some(st) = cgroup::stats(self.cg(), &cgroup::placed_path(c.spec.vm.as_deref(), &c.id)) else {
                continue;
            };
            alive.insert(c.id.clone());
            let mut s = from_cgroup(ts, "container", &c.id, &c.spec.name, &st);
            s.cpu_percent = rates.cpu_percent(&c.id, st.cpu_ns, ts).unwrap_or(0.0);
            net(&mut s, procfs::net_of_pid(pid));
            s.restarts = u64::from(c.restart_count);
            if let Some(h) = &c.health {
                let mut checks = self.monitor.checks.lock().unwrap();
                let before = checks.insert(c.id.clone(), (h.checks, h.failures, 0.0));
                let rate = match before {
                    Some((n, f, _)) if h.checks > n => (h.failures - f) as f64 / (h.checks - n) as f64,
                    Some((_, _, last)) => last,
                    None if h.checks > 0 => h.failures as f64 / h.checks as f64,
                    None => 0.0,
                };
                checks.insert(c.id.clone(), (h.checks, h.failures, rate));
                s.health_ms = h.last_duration_ms;
                s.health_error_rate = Some(rate);
            }
            out.push(s);
        }
        let vms = self.vms.filter(|v| v.state == VmState::Running);
        for v in vms {
            let Ok(driver) = self.driver(v.spec.driver) else { continue };
            let Some(u) = driver.sample(&v) else { continue };
            let mut s = from_cgroup(ts, "vm", &v.id, &v.spec.name, &u.stats);
            s.cpu_percent = rates.cpu_percent(&v.id, u.stats.cpu_ns, ts).unwrap_or(0.0);
            net(&mut s, Some(u.net));
            s.restarts = u64::from(v.restart_count);
            alive.insert(v.id.clone());
            out.push(s);
        }
        rates.retain(&alive);
        drop(rates);
        out.push(self.host_sample(ts));
        out
    }

    fn host_sample(&self, ts: i64) -> Sample {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let cpu = procfs::host_cpu();
        let mut last = self.monitor.host_cpu.lock().unwrap();
        let cpu_percent = match (*last, cpu) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64 * cores * 100.0,
            _ => 0.0,
        };
        *last = cpu;
        let (mem, total) = procfs::host_memory();
        let disk = procfs::disk(&self.home.root);
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let mut s = Sample {
            ts,
            kind: "host".into(),
            id: "host".into(),
            name: hostname,
            cpu_percent,
            cpu_limit_percent: Some(cores * 100.0),
            memory_bytes: mem,
            memory_limit_bytes: Some(total),
            pids: procfs::host_pids(),
            load1: Some(procfs::load1()),
            disk_used_bytes: disk.map(|d| d.0),
            disk_total_bytes: disk.map(|d| d.1),
            ..Default::default()
        };
        net(&mut s, Some(procfs::host_net()));
        s
    }

    /// The components' health.
    pub async fn health(self: &Arc<Self>) -> Vec<ComponentHealth> {
        components::health(self).await
    }

    /// The collector's own health: whether rounds keep coming, and what the last cost.
    pub(super) fn monitor_health(&self) -> Health {
        let age = now_ms() - self.monitor.last_round.load(std::sync::atomic::Ordering::Relaxed);
        let interval_ms = (self.cfg.monitor_interval_s * 1000.0) as i64;
        if age <= 3 * interval_ms + 1000 {
            let cost = self.monitor.last_cost_us.load(std::sync::atomic::Ordering::Relaxed);
            Health::Is(
                Severity::Healthy,
                format!("sampling every {}s, last round took {cost} µs", self.cfg.monitor_interval_s),
            )
        } else {
            Health::Is(Severity::Degraded, format!("no samples for {} s", age / 1000))
        }
    }

    /// Open alerts, newest first; `ai` for those AI modules raised.
    pub fn open_alerts(&self, ai: bool) -> Vec<Alert> {
        let all = tokio::task::block_in_place(|| self.store.alerts(true, 1000)).unwrap_or_default();
        all.into_iter().filter(|a| (a.source == "ai") == ai).collect()
    }
}

/// The host's P2P peers as samples (kind `peer`): bytes in and out, messages in and out
/// in the packet columns, and the ping round trip in `health_ms`.
fn peer_samples(net: &micro_os_api::types::NetStatus, ts: i64) -> Vec<Sample> {
    net.peers
        .iter()
        .filter(|p| p.connected)
        .map(|p| Sample {
            ts,
            kind: "peer".into(),
            id: p.peer_id.clone(),
            name: p.peer_id.clone(),
            net_rx_bytes: p.bytes_in,
            net_tx_bytes: p.bytes_out,
            net_rx_packets: p.messages_in,
            net_tx_packets: p.messages_out,
            health_ms: p.rtt_ms,
            ..Default::default()
        })
        .collect()
}

fn from_cgroup(ts: i64, kind: &str, id: &str, name: &str, st: &cgroup::Stats) -> Sample {
    Sample {
        ts,
        kind: kind.into(),
        id: id.into(),
        name: name.into(),
        cpu_limit_percent: st.cpu_limit.map(|c| c * 100.0),
        memory_bytes: st.memory_bytes,
        memory_limit_bytes: st.memory_limit,
        oom_kills: st.oom_kills,
        io_read_bytes: st.io_read_bytes,
        io_write_bytes: st.io_write_bytes,
        pids: st.pids,
        ..Default::default()
    }
}

fn net(s: &mut Sample, n: Option<procfs::NetCounters>) {
    if let Some(n) = n {
        s.net_rx_bytes = n.rx_bytes;
        s.net_tx_bytes = n.tx_bytes;
        s.net_rx_packets = n.rx_packets;
        s.net_tx_packets = n.tx_packets;
    }
}

use micro_os_api::types::{
    HealthQuery, HealthReport, HistoryQuery, PerformanceQuery, PerformanceReport, ResourcesQuery,
};

fn bad(e: micro_os_core::ValidationError) -> Error {
    Error::invalid(e.to_string())
}

impl Engine {
    /// The latest round, filtered as `monitor resources` asks.
    pub fn resources(&self, q: &ResourcesQuery) -> Result<Vec<Sample>> {
        let latest = self.monitor.latest.read().unwrap().clone();
        let keep: Box<dyn Fn(&Sample) -> bool> = match (&q.container, &q.vm) {
            (Some(c), _) => {
                let id = self.find(c)?.id;
                Box::new(move |s| s.id == id)
            }
            (None, Some(v)) => {
                let vm = self.find_vm(v)?.id;
                let placed: HashSet<String> = self
                    .containers
                    .filter(|c| c.spec.vm.as_deref() == Some(vm.as_str()))
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                Box::new(move |s| s.id == vm || placed.contains(&s.id))
            }
            (None, None) => {
                let all = q.all;
                Box::new(move |s| all || (s.kind != "host" && s.kind != "peer"))
            }
        };
        Ok(latest.into_iter().filter(|s| keep(s)).collect())
    }

    /// The id samples are stored under for what a user typed: a container's or VM's name
    /// or id, or `host`.
    fn object_id(&self, object: &str) -> Result<String> {
        if object == "host" {
            return Ok("host".into());
        }
        if let Ok(c) = self.find(object) {
            return Ok(c.id);
        }
        self.find_vm(object)
            .map(|v| v.id)
            .map_err(|_| Error::not_found(format!("no container or vm {object:?} (or give host)")))
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<Sample>> {
        let (from, to) = micro_os_core::metrics::parse_bounds(&q.from, q.to.as_deref(), now_ms()).map_err(bad)?;
        let id = q.object.as_deref().map(|o| self.object_id(o)).transpose()?;
        let query = micro_os_store::SampleQuery { from, to, id };
        Ok(tokio::task::block_in_place(|| self.store.samples(&query))?)
    }

    pub fn health_report(&self, q: &HealthQuery, components: Vec<ComponentHealth>) -> Result<HealthReport> {
        // empty, or `all` anywhere in the list: every component
        let wanted: Option<Vec<String>> = q
            .components
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| c.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
            .filter(|w| !w.iter().any(|c| c == "all"));
        if let Some(w) = &wanted {
            let known = components::names();
            if let Some(unknown) = w.iter().find(|c| !known.contains(&c.as_str())) {
                return Err(Error::invalid(format!(
                    "component {unknown:?} is unknown (use {} or all)",
                    known.join(", ")
                )));
            }
        }
        let mut components: Vec<ComponentHealth> =
            components.into_iter().filter(|c| wanted.as_ref().is_none_or(|w| w.contains(&c.component))).collect();
        let mut alerts = self.open_alerts(q.ai_alerts);
        if q.critical_only {
            components.retain(|c| c.status == Severity::Critical);
            alerts.retain(|a| a.severity == Severity::Critical);
        }
        let status =
            components.iter().map(|c| c.status).chain(alerts.iter().map(|a| a.severity)).max().unwrap_or_default();
        Ok(HealthReport { status, components, alerts })
    }

    pub fn performance(&self, q: &PerformanceQuery) -> Result<PerformanceReport> {
        let c = self.find(&q.container)?;
        let now = now_ms();
        let since = q.since.as_deref().unwrap_or("1h");
        let from = micro_os_core::metrics::parse_time(since, false, now).map_err(bad)?;
        let query = micro_os_store::SampleQuery { from, to: now, id: Some(c.id.clone()) };
        let rows = tokio::task::block_in_place(|| self.store.samples(&query))?;
        let mut r = PerformanceReport {
            container: c.spec.name.clone(),
            from: chrono::DateTime::from_timestamp_millis(from).unwrap_or_default(),
            to: chrono::DateTime::from_timestamp_millis(now).unwrap_or_default(),
            samples: rows.len() as u64,
            ..Default::default()
        };
        if q.ai_stats {
            let (words, modules) = self.ai_performance(&c);
            r.ai_stats = Some(words);
            r.ai = modules;
        }
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return Ok(r) };
        let mut cpu: Vec<f64> = rows.iter().map(|s| s.cpu_percent).collect();
        cpu.sort_by(f64::total_cmp);
        r.cpu_percent_avg = cpu.iter().sum::<f64>() / cpu.len() as f64;
        r.cpu_percent_max = *cpu.last().unwrap_or(&0.0);
        r.cpu_percent_p95 = micro_os_core::net::quantile(&cpu, 0.95).unwrap_or(0.0);
        r.cpu_limit_percent = last.cpu_limit_percent;
        r.memory_bytes_avg = rows.iter().map(|s| s.memory_bytes).sum::<u64>() / rows.len() as u64;
        r.memory_bytes_max = rows.iter().map(|s| s.memory_bytes).max().unwrap_or(0);
        r.memory_limit_bytes = last.memory_limit_bytes;
        let secs = ((last.ts - first.ts) as f64 / 1000.0).max(f64::MIN_POSITIVE);
        let rate = |a: u64, b: u64| if last.ts > first.ts { b.saturating_sub(a) as f64 / secs } else { 0.0 };
        r.net_rx_bytes_per_s = rate(first.net_rx_bytes, last.net_rx_bytes);
        r.net_tx_bytes_per_s = rate(first.net_tx_bytes, last.net_tx_bytes);
        r.io_read_bytes_per_s = rate(first.io_read_bytes, last.io_read_bytes);
        r.io_write_bytes_per_s = rate(first.io_write_bytes, last.io_write_bytes);
        r.restarts = last.restarts;
        r.oom_kills = rows.iter().map(|s| s.oom_kills).max().unwrap_or(0);
        let health: Vec<f64> = rows.iter().filter_map(|s| s.health_ms).collect();
        r.health_ms_avg = (!health.is_empty()).then(|| health.iter().sum::<f64>() / health.len() as f64);
        let errors: Vec<f64> = rows.iter().filter_map(|s| s.health_error_rate).collect();
        r.health_error_rate = (!errors.is_empty()).then(|| errors.iter().sum::<f64>() / errors.len() as f64);
        Ok(r)
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        let samples = self.monitor.latest.read().unwrap().clone();
        let vm_names: HashMap<String, String> = self.vms.list().into_iter().map(|v| (v.id, v.spec.name)).collect();
        let placement: HashMap<String, String> = self
            .containers
            .list()
            .into_iter()
            .filter_map(|c| Some((c.id.clone(), vm_names.get(c.spec.vm.as_ref()?)?.clone())))
            .collect();
        let vm_of = |id: &str| placement.get(id).cloned();
        let net = match self.p2p.get() {
            Some(h) => h.status().await,
            None => None,
        };
        let alerts = self.open_alerts(false);
        let net = net.unwrap_or_default();
        let circuits = self.list_circuits().await;
        micro_os_monitor::prometheus::encode_scrape(&micro_os_monitor::prometheus::Scrape {
            samples: &samples,
            vm_of: &vm_of,
            peers: net
                .peers
                .iter()
                .map(|p| micro_os_monitor::prometheus::PeerCounters {
                    peer: &p.peer_id,
                    rtt_ms: p.rtt_ms,
                    messages_in: p.messages_in,
                    messages_out: p.messages_out,
                    bytes_in: p.bytes_in,
                    bytes_out: p.bytes_out,
                })
                .collect(),
            messages: net.messages.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
            rejections: net.rejections.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
            open_alerts: &alerts,
            circuits: circuits
                .iter()
                .map(|c| micro_os_monitor::prometheus::CircuitGauges {
                    circuit: &c.name,
                    leader: c.leader.is_some(),
                    term: c.term,
                    committed: c.committed,
                    applied: c.applied,
                    members: c
                        .members
                        .iter()
                        .map(|m| (m.vm.as_str(), m.lag.filter(|_| m.state != "unreachable")))
                        .collect(),
                })
                .collect(),
        })
    }
}
