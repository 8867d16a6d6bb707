//! What the monitor measures and decides: samples of an object's resource use, alert
//! rules and alerts, and the health of the daemon's components.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// One measurement of a container, a VM, the host or a P2P peer. Counters (CPU time,
/// I/O, network) are cumulative since the object started; `cpu_percent` is over the last
/// interval. For a peer (kind `peer`), the packet columns count messages and `health_ms`
/// is the ping round trip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// container, vm, host or peer.
    pub kind: String,
    pub id: String,
    pub name: String,
    /// CPU use over the last interval, percent of one core.
    pub cpu_percent: f64,
    /// The CPU limit, percent of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<f64>,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub pids: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_packets: u64,
    pub restarts: u64,
    /// Mean health-check response time, ms, and the share of failed checks (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error_rate: Option<f64>,
    /// Host only: load average and the disk holding the home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// A reference-chain node (a container on the `blockchain-node` image), as its RPC
    /// reports it.
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub chain: Option<ChainSample>,
}

/// What a reference-chain node reports each round. Flattened into a [`Sample`], where only
/// chain nodes have these fields: none is required in the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainSample {
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_height: u64,
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_peers: u64,
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_mempool_txs: u64,
    /// Virtual bytes of the mempool's transactions.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_mempool_bytes: u64,
    /// Hashes per second of the node's miner.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_hashrate: f64,
    /// Mean seconds between the last ten blocks.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_block_interval_s: f64,
    /// Blocks behind the best height it knows of (its headers, its peers').
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_lag_blocks: u64,
    /// Time since its tip's timestamp, in target block intervals of its network.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub chain_stall_intervals: f64,
}

/// The metrics an alert rule can watch, with how to read each from a sample.
pub const METRICS: &[&str] = &[
    "cpu_percent",
    "memory_bytes",
    "memory_percent",
    "oom_kills",
    "pids",
    "restarts",
    "health_ms",
    "health_error_rate",
    "load1",
    "disk_percent",
    "chain_height",
    "chain_peers",
    "chain_no_peers",
    "chain_mempool_txs",
    "chain_mempool_bytes",
    "chain_hashrate",
    "chain_block_interval_s",
    "chain_lag_blocks",
    "chain_stall_intervals",
];

impl Sample {
    /// The value of one of `METRICS`, if this sample has it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        Some(match name {
            "cpu_percent" => self.cpu_percent,
            "memory_bytes" => self.memory_bytes as f64,
            "memory_percent" => self.memory_bytes as f64 * 100.0 / self.memory_limit_bytes? as f64,
            "oom_kills" => self.oom_kills as f64,
            "pids" => self.pids as f64,
            "restarts" => self.restarts as f64,
            "health_ms" => self.health_ms?,
            "health_error_rate" => self.health_error_rate?,
            "load1" => self.load1?,
            "disk_percent" => self.disk_used_bytes? as f64 * 100.0 / self.disk_total_bytes? as f64,
            "chain_height" => self.chain.as_ref()?.chain_height as f64,
            "chain_peers" => self.chain.as_ref()?.chain_peers as f64,
            "chain_no_peers" => f64::from(u8::from(self.chain.as_ref()?.chain_peers == 0)),
            "chain_mempool_txs" => self.chain.as_ref()?.chain_mempool_txs as f64,
            "chain_mempool_bytes" => self.chain.as_ref()?.chain_mempool_bytes as f64,
            "chain_hashrate" => self.chain.as_ref()?.chain_hashrate,
            "chain_block_interval_s" => self.chain.as_ref()?.chain_block_interval_s,
            "chain_lag_blocks" => self.chain.as_ref()?.chain_lag_blocks as f64,
            "chain_stall_intervals" => self.chain.as_ref()?.chain_stall_intervals,
            _ => return None,
        })
    }

    /// `kind/name`, how users name the object in filters and alert rules.
    pub fn object(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// How bad a component or an alert is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Healthy,
    Degraded,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Healthy => "healthy",
            Severity::Degraded => "degraded",
            Severity::Critical => "critical",
        })
    }
}

/// A threshold on a metric that must hold for a while before it fires (config `alerts`):
/// `{"name": "crash-loop", "metric": "restarts", "above": 2, "for_s": 0, "objects": "container/*"}`.
/// With `increase`, the rule watches how much a counter grew over `window_s` instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// One of `METRICS`.
    pub metric: String,
    /// Fires when the value is above this.
    pub above: f64,
    /// ...for at least this many seconds (0: at the first sample).
    #[serde(default)]
    pub for_s: u64,
    /// Watch the counter's growth over this many seconds instead of its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increase_over_s: Option<u64>,
    /// Which objects: `container/*`, `vm/name`, `host`, a `*` glob at the end; default all.
    #[serde(default = "all_objects")]
    pub objects: String,
    #[serde(default = "critical")]
    pub severity: Severity,
}

fn all_objects() -> String {
    "*".into()
}

fn critical() -> Severity {
    Severity::Critical
}

impl AlertRule {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.name.trim().is_empty() {
            return Err(ValidationError::new(format!("alert rule for {:?} has no name (give \"name\")", self.metric)));
        }
        if !METRICS.contains(&self.metric.as_str()) {
            return Err(ValidationError::new(format!(
                "alert rule {:?}: metric {:?} is unknown (use one of {})",
                self.name,
                self.metric,
                METRICS.join(", ")
            )));
        }
        if !self.above.is_finite() {
            return Err(ValidationError::new(format!("alert rule {:?}: \"above\" is not a number", self.name)));
        }
        if self.increase_over_s == Some(0) {
            return Err(ValidationError::new(format!(
                "alert rule {:?}: increase_over_s 0 is no window (give seconds, e.g. 60)",
                self.name
            )));
        }
        Ok(())
    }

    /// Whether the rule watches this object (`kind/name`).
    pub fn matches(&self, object: &str) -> bool {
        match self.objects.strip_suffix('*') {
            Some(prefix) => object.starts_with(prefix),
            None => object == self.objects || (self.objects == "host" && object.starts_with("host/")),
        }
    }
}

/// An alert: a rule that fired for one object; `resolved_at` once it stopped holding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub id: i64,
    pub rule: String,
    pub object: String,
    pub severity: Severity,
    /// Raised by: rules (the monitor) or an AI module.
    pub source: String,
    pub value: f64,
    pub message: String,
    pub fired_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// The health of one part of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComponentHealth {
    pub component: String,
    pub status: Severity,
    pub reason: String,
    /// False for a component with nothing configured (no circuits, no AI modules): it
    /// is neither healthy nor failing, and a self-test skips it.
    #[serde(default = "yes")]
    pub configured: bool,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(objects: &str) -> AlertRule {
        AlertRule {
            name: "r".into(),
            metric: "cpu_percent".into(),
            above: 90.0,
            for_s: 0,
            increase_over_s: None,
            objects: objects.into(),
            severity: Severity::Critical,
        }
    }

    #[test]
    fn rules_match_objects_by_glob() {
        let check = |objects: &str, object: &str| rule(objects).matches(object);
        assert!(check("*", "container/web"));
        assert!(check("container/*", "container/web"));
        assert!(!check("container/*", "vm/web"));
        assert!(check("vm/node-1", "vm/node-1"));
        assert!(!check("vm/node-1", "vm/node-10"));
        assert!(check("host", "host/this"));
    }

    #[test]
    fn rules_are_validated() {
        assert!(rule("*").validate().is_ok());
        let mut r = rule("*");
        r.metric = "cpu".into();
        assert!(r.validate().unwrap_err().to_string().contains("metric \"cpu\" is unknown"));
        r = rule("*");
        r.increase_over_s = Some(0);
        assert!(r.validate().is_err());
    }

    #[test]
    fn metrics_read_from_samples() {
        let s = Sample { memory_bytes: 50, memory_limit_bytes: Some(200), cpu_percent: 12.5, ..Default::default() };
        assert_eq!(s.metric("memory_percent"), Some(25.0));
        assert_eq!(s.metric("cpu_percent"), Some(12.5));
        assert_eq!(s.metric("health_ms"), None);
        assert_eq!(s.metric("nope"), None);
        assert_eq!(s.metric("chain_height"), None, "only chain nodes have chain metrics");
        let node = Sample { chain: Some(ChainSample { chain_peers: 0, ..Default::default() }), ..Default::default() };
        assert_eq!(node.metric("chain_no_peers"), Some(1.0));
        for m in METRICS {
            // every listed metric is known to `metric` (a sample with everything has them all)
            let host = Sample {
                memory_limit_bytes: Some(1),
                health_ms: Some(1.0),
                health_error_rate: Some(0.0),
                load1: Some(0.1),
                disk_used_bytes: Some(1),
                disk_total_bytes: Some(2),
                chain: Some(ChainSample::default()),
                ..Default::default()
            };
            assert!(host.metric(m).is_some(), "{m}");
        }
    }
}

/// A time as users type it: a date (`2023-01-31`: its start, or with `end_of_day` its
/// last millisecond), an RFC 3339 time, an ISO time without an offset (taken as UTC:
/// `2023-01-31T12:00:00`, `2023-01-31 12:00`), `now`, or a duration ago (`90s`, `15m`,
/// `2h`, `7d`). Gives milliseconds since the epoch.
pub fn parse_time(input: &str, end_of_day: bool, now_ms: i64) -> Result<i64, ValidationError> {
    let t = input.trim();
    if t == "now" {
        return Ok(now_ms);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let start = d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis();
        return Ok(if end_of_day { start + 86_400_000 - 1 } else { start });
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_millis());
    }
    // an ISO time without an offset is UTC, as every time we print is
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    let unit = |s: &str| -> Option<i64> {
        let (n, u) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
        if n.is_empty() || n.len() > 9 {
            return None;
        }
        let n: i64 = n.parse().ok()?;
        let ms = match u {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        // a duration past the range of times is not a time ago (`9223372036854775807d`)
        now_ms.checked_sub(n.checked_mul(ms)?)
    };
    unit(t).ok_or_else(|| {
        ValidationError::new(format!(
            "time {input:?} is not a date or a time (try 2023-01-31, 2023-01-31T12:00:00 (UTC), 2023-01-31T12:00:00+02:00, now or 2h for two hours ago)"
        ))
    })
}

/// The two ends of a range as users typed them, `to` defaulting to now, in any order
/// (the API answers an empty range for a `from` after `to`; the CLI refuses it).
pub fn parse_bounds(from: &str, to: Option<&str>, now_ms: i64) -> Result<(i64, i64), ValidationError> {
    let f = parse_time(from, false, now_ms).map_err(|e| ValidationError::new(format!("--from: {e}")))?;
    let t = match to {
        Some(t) => parse_time(t, true, now_ms).map_err(|e| ValidationError::new(format!("--to: {e}")))?,
        None => now_ms,
    };
    Ok((f, t))
}

/// A time range from what users typed; `to` defaults to now.
pub fn parse_range(from: &str, to: Option<&str>, now_ms: i64) -> Result<(i64, i64), ValidationError> {
    let (f, t) = parse_bounds(from, to, now_ms)?;
    if f > t {
        return Err(ValidationError::new(format!(
            "--from {from:?} is after --to {:?} (swap them)",
            to.unwrap_or("now")
        )));
    }
    Ok((f, t))
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn times_and_ranges() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("2023-01-01", false, now), Ok(1_672_531_200_000));
        assert_eq!(parse_time("2023-01-01", true, now), Ok(1_672_617_599_999));
        assert_eq!(parse_time("2023-01-01T00:00:01Z", true, now), Ok(1_672_531_201_000));
        assert_eq!(parse_time("now", false, now), Ok(now));
        assert_eq!(parse_time("2h", false, now), Ok(now - 7_200_000));
        assert!(parse_time("2023-13-01", false, now).unwrap_err().to_string().contains("\"2023-13-01\""));
        assert!(parse_time("2x", false, now).is_err());
        // a duration of more than 9 digits is refused, not an overflow
        assert!(parse_time("999999999999999999d", false, now).is_err());
        assert_eq!(parse_time("999999999s", false, now), Ok(now - 999_999_999_000));
        assert_eq!(parse_bounds("now", Some("2h"), now), Ok((now, now - 7_200_000)));
        assert_eq!(parse_range("2023-01-01", Some("2023-01-31"), now), Ok((1_672_531_200_000, 1_675_209_599_999)));
        let e = parse_range("2023-02-01", Some("2023-01-31"), now).unwrap_err().to_string();
        assert!(e.contains("is after --to"), "{e}");
    }
    /// `input` parses to `want` ms since the epoch, or fails with a message containing `want_err`.
    fn check(input: &str, end_of_day: bool, want: Result<i64, &str>) {
        let now = 1_700_000_000_000;
        match (parse_time(input, end_of_day, now), want) {
            (Ok(got), Ok(ms)) => assert_eq!(got, ms, "{input}"),
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    /// Found by the `spec_json` fuzz target: a duration ago this large overflowed (a panic
    /// in a debug build, a wrapped time in a release one).
    #[test]
    fn durations_past_the_range_of_times_are_refused() {
        check("204220422020422042m", false, Err("is not a date or a time"));
        check("9223372036854775807d", true, Err("is not a date or a time"));
        check("106751d", false, Ok(1_700_000_000_000 - 106_751 * 86_400_000));
    }

    #[test]
    fn iso_times_without_an_offset_are_utc() {
        // 2026-12-01T20:33:12Z is 1_796_157_192_000 ms
        let t = 1_796_157_192_000;
        check("2026-12-01T20:33:12", false, Ok(t));
        check("2026-12-01T20:33:12", true, Ok(t));
        check("2026-12-01T20:33:12.250", false, Ok(t + 250));
        check("2026-12-01 20:33:12", false, Ok(t));
        check("2026-12-01T20:33", false, Ok(t - 12_000));
        check("2026-12-01 20:33", false, Ok(t - 12_000));
        check("2026-12-01T20:33:12Z", false, Ok(t));
        check("2026-12-01T22:33:12+02:00", false, Ok(t));
        check("2026-12-01T25:33:12", false, Err("time \"2026-12-01T25:33:12\" is not a date or a time"));
        check("2026-12-01T20", false, Err("(try 2023-01-31, 2023-01-31T12:00:00 (UTC),"));
    }
}
