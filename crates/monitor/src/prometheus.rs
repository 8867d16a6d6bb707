//! The Prometheus exposition of the latest samples, the P2P counters and open alerts.
//!
//! Names are stable: `micro_os_<kind>_<metric>` with the object's name as the label of
//! its kind (`container` (+ `vm` it is placed on), `vm`, `host`), counters ending in `_total`, and `peer`, `type`,
//! `reason` and `severity` labels for the P2P layer and alerts. `circuit` is reserved
//! for circuits.

use micro_os_core::metrics::{Alert, Sample};
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

/// One P2P peer's counters, as the host's peer reports them.
pub struct PeerCounters<'a> {
    pub peer: &'a str,
    pub rtt_ms: Option<f64>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What one scrape shows.
pub struct Scrape<'a> {
    pub samples: &'a [Sample],
    /// For containers placed on a VM: the VM's name, by container id.
    pub vm_of: &'a dyn Fn(&str) -> Option<String>,
    pub peers: Vec<PeerCounters<'a>>,
    pub messages: Vec<(&'a str, u64)>,
    pub rejections: Vec<(&'a str, u64)>,
    pub open_alerts: &'a [Alert],
    /// Each circuit as its members report it.
    pub circuits: Vec<CircuitGauges<'a>>,
}

/// A circuit's Raft figures: term, commit and applied index, and each member's lag
/// behind the leader (absent while there is no leader or the member did not answer).
pub struct CircuitGauges<'a> {
    pub circuit: &'a str,
    pub leader: bool,
    pub term: u64,
    pub committed: u64,
    pub applied: u64,
    pub members: Vec<(&'a str, Option<u64>)>,
}

/// Families by name, made on first use with the label names of their first series.
#[derive(Default)]
struct Families {
    registry: Registry,
    gauges: std::collections::HashMap<String, GaugeVec>,
    counters: std::collections::HashMap<String, IntCounterVec>,
}

impl Families {
    fn gauge(&mut self, name: impl Into<String>, help: &'static str, labels: Vec<(String, String)>, v: f64) {
        let name = name.into();
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        let fam = self.gauges.entry(name.clone()).or_insert_with(|| {
            let g = GaugeVec::new(Opts::new(name, help), &names).expect("valid metric names");
            self.registry.register(Box::new(g.clone())).expect("each family registered once");
            g
        });
        let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
        if let Ok(g) = fam.get_metric_with_label_values(&values) {
            g.set(v);
        }
    }

    /// A counter's name ends in `_total`; give it without.
    fn counter(&mut self, name: impl Into<String>, help: &'static str, labels: Vec<(String, String)>, v: u64) {
        let name = format!("{}_total", name.into());
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        let fam = self.counters.entry(name.clone()).or_insert_with(|| {
            let c = IntCounterVec::new(Opts::new(name, help), &names).expect("valid metric names");
            self.registry.register(Box::new(c.clone())).expect("each family registered once");
            c
        });
        let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
        if let Ok(c) = fam.get_metric_with_label_values(&values) {
            c.inc_by(v);
        }
    }
}

fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn gauge_for(f: &mut Families, kind: &str, metric: &str, help: &'static str, labels: &[(String, String)], v: f64) {
    f.gauge(format!("micro_os_{kind}_{metric}"), help, labels.to_vec(), v);
}

fn counter_for(f: &mut Families, kind: &str, metric: &str, help: &'static str, labels: &[(String, String)], v: u64) {
    f.counter(format!("micro_os_{kind}_{metric}"), help, labels.to_vec(), v);
}

/// Encodes a scrape in the Prometheus text format.
pub fn encode_scrape(s: &Scrape<'_>) -> String {
    let mut f = Families::default();
    // peers have their own families below, from the P2P layer's live counters
    for x in s.samples.iter().filter(|x| x.kind != "peer") {
        let vm = (s.vm_of)(&x.id).unwrap_or_default();
        let (labels, kind) = match x.kind.as_str() {
            "container" => (l(&[("container", &x.name), ("vm", &vm)]), "container"),
            "vm" => (l(&[("vm", &x.name)]), "vm"),
            _ => (l(&[("host", &x.name)]), "host"),
        };
        gauge_for(
            &mut f,
            kind,
            "cpu_percent",
            "CPU use over the last interval, percent of one core",
            &labels,
            x.cpu_percent,
        );
        if let Some(v) = x.cpu_limit_percent {
            gauge_for(&mut f, kind, "cpu_limit_percent", "CPU limit, percent of one core", &labels, v);
        }
        gauge_for(
            &mut f,
            kind,
            "memory_bytes",
            "Memory in use, without inactive page cache",
            &labels,
            x.memory_bytes as f64,
        );
        if let Some(v) = x.memory_limit_bytes {
            gauge_for(&mut f, kind, "memory_limit_bytes", "Memory limit", &labels, v as f64);
        }
        gauge_for(&mut f, kind, "pids", "Processes", &labels, x.pids as f64);
        counter_for(&mut f, kind, "oom_kills", "Processes killed for lack of memory", &labels, x.oom_kills);
        counter_for(&mut f, kind, "io_read_bytes", "Bytes read from block devices", &labels, x.io_read_bytes);
        counter_for(&mut f, kind, "io_write_bytes", "Bytes written to block devices", &labels, x.io_write_bytes);
        counter_for(&mut f, kind, "network_receive_bytes", "Bytes received", &labels, x.net_rx_bytes);
        counter_for(&mut f, kind, "network_transmit_bytes", "Bytes sent", &labels, x.net_tx_bytes);
        counter_for(&mut f, kind, "network_receive_packets", "Packets received", &labels, x.net_rx_packets);
        counter_for(&mut f, kind, "network_transmit_packets", "Packets sent", &labels, x.net_tx_packets);
        if kind == "container" {
            counter_for(&mut f, kind, "restarts", "Restarts by the restart policy", &labels, x.restarts);
        }
        if let Some(v) = x.health_ms {
            gauge_for(&mut f, kind, "health_check_duration_ms", "Mean health-check response time", &labels, v);
        }
        if let Some(v) = x.health_error_rate {
            gauge_for(&mut f, kind, "health_check_error_ratio", "Share of failed health checks", &labels, v);
        }
        if let Some(v) = x.load1 {
            gauge_for(&mut f, kind, "load1", "Load average over one minute", &labels, v);
        }
        if let (Some(u), Some(t)) = (x.disk_used_bytes, x.disk_total_bytes) {
            gauge_for(&mut f, kind, "disk_used_bytes", "Used bytes of the disk holding the home", &labels, u as f64);
            gauge_for(&mut f, kind, "disk_size_bytes", "Size of the disk holding the home", &labels, t as f64);
        }
        if let Some(c) = &x.chain {
            let g = [
                ("chain_height", "Height of the node's best chain", c.chain_height as f64),
                ("chain_peers", "Peers of the chain node", c.chain_peers as f64),
                ("chain_mempool_transactions", "Transactions in the node's mempool", c.chain_mempool_txs as f64),
                ("chain_mempool_vbytes", "Virtual bytes of the node's mempool", c.chain_mempool_bytes as f64),
                ("chain_hashrate", "Hashes per second of the node's miner", c.chain_hashrate),
                ("chain_block_interval_seconds", "Mean seconds between the last ten blocks", c.chain_block_interval_s),
                ("chain_lag_blocks", "Blocks behind the best height the node knows of", c.chain_lag_blocks as f64),
                ("chain_stall_intervals", "Target block intervals since the tip's time", c.chain_stall_intervals),
            ];
            for (name, help, v) in g {
                gauge_for(&mut f, kind, name, help, &labels, v);
            }
        }
    }
    for p in &s.peers {
        let labels = l(&[("peer", p.peer)]);
        if let Some(rtt) = p.rtt_ms {
            f.gauge("micro_os_p2p_peer_rtt_ms", "Ping round trip to the peer", labels.clone(), rtt);
        }
        f.counter(
            "micro_os_p2p_peer_messages_received",
            "Messages accepted from the peer",
            labels.clone(),
            p.messages_in,
        );
        f.counter("micro_os_p2p_peer_messages_sent", "Messages sent to the peer", labels.clone(), p.messages_out);
        f.counter("micro_os_p2p_peer_received_bytes", "Bytes received from the peer", labels.clone(), p.bytes_in);
        f.counter("micro_os_p2p_peer_sent_bytes", "Bytes sent to the peer", labels, p.bytes_out);
    }
    for (kind, n) in &s.messages {
        f.counter("micro_os_p2p_messages_accepted", "Verified messages by type", l(&[("type", kind)]), *n);
    }
    for (reason, n) in &s.rejections {
        f.counter("micro_os_p2p_messages_rejected", "Refused messages by reason", l(&[("reason", reason)]), *n);
    }
    for c in &s.circuits {
        let labels = l(&[("circuit", c.circuit)]);
        f.gauge(
            "micro_os_circuit_has_leader",
            "1 when the circuit has a leader",
            labels.clone(),
            c.leader as u8 as f64,
        );
        f.gauge("micro_os_circuit_term", "The circuit's Raft term", labels.clone(), c.term as f64);
        f.gauge("micro_os_circuit_commit_index", "The circuit's commit index", labels.clone(), c.committed as f64);
        f.gauge("micro_os_circuit_applied_index", "The highest index a member applied", labels, c.applied as f64);
        for (vm, lag) in &c.members {
            let labels = l(&[("circuit", c.circuit), ("vm", vm)]);
            f.gauge(
                "micro_os_circuit_member_up",
                "1 when the member answers",
                labels.clone(),
                lag.is_some() as u8 as f64,
            );
            if let Some(lag) = lag {
                f.gauge("micro_os_circuit_member_lag", "Entries the member is behind the leader", labels, *lag as f64);
            }
        }
    }
    for sev in ["degraded", "critical"] {
        let n = s.open_alerts.iter().filter(|a| a.severity.to_string() == sev).count();
        f.gauge("micro_os_alerts_firing", "Open alerts by severity", l(&[("severity", sev)]), n as f64);
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&f.registry.gather(), &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_os_core::metrics::Severity;

    /// A scrape with every kind of sample, peer, message and alert.
    fn full_scrape() -> String {
        let full = |kind: &str, name: &str| Sample {
            kind: kind.into(),
            id: name.into(),
            name: name.into(),
            cpu_limit_percent: Some(100.0),
            memory_limit_bytes: Some(1),
            health_ms: Some(1.0),
            health_error_rate: Some(0.0),
            load1: Some(0.1),
            disk_used_bytes: Some(1),
            disk_total_bytes: Some(2),
            ..Default::default()
        };
        let samples = [full("container", "c"), full("vm", "v"), full("host", "h")];
        encode_scrape(&Scrape {
            samples: &samples,
            vm_of: &|_| None,
            peers: vec![PeerCounters {
                peer: "p",
                rtt_ms: Some(1.0),
                messages_in: 1,
                messages_out: 1,
                bytes_in: 1,
                bytes_out: 1,
            }],
            messages: vec![("SYNC", 1)],
            rejections: vec![("stale", 1)],
            open_alerts: &[],
            circuits: vec![CircuitGauges {
                circuit: "c",
                leader: true,
                term: 1,
                committed: 1,
                applied: 1,
                members: vec![("v", Some(0))],
            }],
        })
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_that_exist() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana/micro-os.json")).expect("the dashboard is JSON");
        let text = full_scrape();
        let mut used = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(i) = rest.find("micro_os_") {
                    let name: String =
                        rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    rest = &rest[i + name.len()..];
                    used.push(name);
                }
            }
        }
        assert!(used.len() > 20, "{used:?}");
        for name in used {
            assert!(text.contains(&format!("# TYPE {name} ")), "the dashboard uses {name}, which is not exposed");
        }
    }

    #[test]
    fn names_labels_and_types_are_stable() {
        let samples = vec![
            Sample {
                kind: "container".into(),
                id: "c1".into(),
                name: "web".into(),
                cpu_percent: 42.5,
                memory_bytes: 1024,
                net_rx_bytes: 77,
                restarts: 2,
                ..Default::default()
            },
            Sample { kind: "vm".into(), id: "v1".into(), name: "node-1".into(), pids: 3, ..Default::default() },
            Sample {
                kind: "host".into(),
                id: "host".into(),
                name: "this".into(),
                load1: Some(0.5),
                ..Default::default()
            },
        ];
        let vm_of = |id: &str| (id == "c1").then(|| "node-1".to_string());
        let alert = Alert {
            id: 1,
            rule: "r".into(),
            object: "container/web".into(),
            severity: Severity::Critical,
            source: "rules".into(),
            value: 1.0,
            message: String::new(),
            fired_at: chrono::Utc::now(),
            resolved_at: None,
        };
        let text = encode_scrape(&Scrape {
            samples: &samples,
            vm_of: &vm_of,
            peers: vec![PeerCounters {
                peer: "12D3KooWpeer",
                rtt_ms: Some(1.5),
                messages_in: 4,
                messages_out: 5,
                bytes_in: 6,
                bytes_out: 7,
            }],
            messages: vec![("DATA", 9)],
            rejections: vec![("nonce already seen", 1)],
            open_alerts: &[alert],
            circuits: vec![CircuitGauges {
                circuit: "lin",
                leader: true,
                term: 3,
                committed: 40,
                applied: 40,
                members: vec![("node-1", Some(2)), ("node-2", None)],
            }],
        });
        for line in [
            "# TYPE micro_os_container_cpu_percent gauge",
            "micro_os_container_cpu_percent{container=\"web\",vm=\"node-1\"} 42.5",
            "# TYPE micro_os_container_network_receive_bytes_total counter",
            "micro_os_container_network_receive_bytes_total{container=\"web\",vm=\"node-1\"} 77",
            "micro_os_container_restarts_total{container=\"web\",vm=\"node-1\"} 2",
            "micro_os_vm_pids{vm=\"node-1\"} 3",
            "micro_os_host_load1{host=\"this\"} 0.5",
            "micro_os_p2p_peer_rtt_ms{peer=\"12D3KooWpeer\"} 1.5",
            "micro_os_p2p_messages_accepted_total{type=\"DATA\"} 9",
            "micro_os_p2p_messages_rejected_total{reason=\"nonce already seen\"} 1",
            "micro_os_alerts_firing{severity=\"critical\"} 1",
            "micro_os_circuit_term{circuit=\"lin\"} 3",
            "micro_os_circuit_commit_index{circuit=\"lin\"} 40",
            "micro_os_circuit_member_lag{circuit=\"lin\",vm=\"node-1\"} 2",
            "micro_os_circuit_member_up{circuit=\"lin\",vm=\"node-2\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
