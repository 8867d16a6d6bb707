//! Metrics history: raw samples, their one-minute averages, and alerts.
//!
//! Samples are wide rows (one per object per interval) rather than one row per metric:
//! a sample of 20 numbers costs one row, and the one-minute rollup is one `GROUP BY`.

use chrono::{DateTime, Utc};
use micro_os_core::metrics::{Alert, ChainSample, Sample, Severity};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{insert_event, Durability, Event, Result, Store};

/// The event kind of alerts fired and resolved.
pub const ALERT_KIND: &str = "alert";

pub(crate) const MIGRATION: &str = "
    CREATE TABLE samples (
        ts INTEGER NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
        cpu REAL NOT NULL, cpu_limit REAL, mem INTEGER NOT NULL, mem_limit INTEGER,
        oom INTEGER NOT NULL, io_read INTEGER NOT NULL, io_write INTEGER NOT NULL,
        pids INTEGER NOT NULL, rx_bytes INTEGER NOT NULL, tx_bytes INTEGER NOT NULL,
        rx_packets INTEGER NOT NULL, tx_packets INTEGER NOT NULL, restarts INTEGER NOT NULL,
        health_ms REAL, health_err REAL, load1 REAL, disk_used INTEGER, disk_total INTEGER
    );
    CREATE INDEX samples_ts ON samples (ts);
    CREATE INDEX samples_object ON samples (id, ts);
    CREATE TABLE samples_1m AS SELECT * FROM samples WHERE 0;
    CREATE INDEX samples_1m_ts ON samples_1m (ts);
    CREATE INDEX samples_1m_object ON samples_1m (id, ts);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT NOT NULL, object TEXT NOT NULL, severity TEXT NOT NULL, source TEXT NOT NULL,
        value REAL NOT NULL, message TEXT NOT NULL, fired_at TEXT NOT NULL, resolved_at TEXT
    );
    CREATE INDEX alerts_open ON alerts (resolved_at);";

/// 4: what reference-chain nodes report (NULL for everything else).
pub(crate) const CHAIN_MIGRATION: &str = "
    ALTER TABLE samples ADD COLUMN chain_height INTEGER;
    ALTER TABLE samples ADD COLUMN chain_peers INTEGER;
    ALTER TABLE samples ADD COLUMN chain_mempool_txs INTEGER;
    ALTER TABLE samples ADD COLUMN chain_mempool_bytes INTEGER;
    ALTER TABLE samples ADD COLUMN chain_hashrate REAL;
    ALTER TABLE samples ADD COLUMN chain_interval REAL;
    ALTER TABLE samples ADD COLUMN chain_lag INTEGER;
    ALTER TABLE samples ADD COLUMN chain_stall REAL;
    ALTER TABLE samples_1m ADD COLUMN chain_height INTEGER;
    ALTER TABLE samples_1m ADD COLUMN chain_peers INTEGER;
    ALTER TABLE samples_1m ADD COLUMN chain_mempool_txs INTEGER;
    ALTER TABLE samples_1m ADD COLUMN chain_mempool_bytes INTEGER;
    ALTER TABLE samples_1m ADD COLUMN chain_hashrate REAL;
    ALTER TABLE samples_1m ADD COLUMN chain_interval REAL;
    ALTER TABLE samples_1m ADD COLUMN chain_lag INTEGER;
    ALTER TABLE samples_1m ADD COLUMN chain_stall REAL;";

const COLUMNS: &str = "ts, kind, id, name, cpu, cpu_limit, mem, mem_limit, oom, io_read, io_write, pids, \
    rx_bytes, tx_bytes, rx_packets, tx_packets, restarts, health_ms, health_err, load1, disk_used, disk_total, \
    chain_height, chain_peers, chain_mempool_txs, chain_mempool_bytes, chain_hashrate, chain_interval, chain_lag, \
    chain_stall";

/// How a minute of samples becomes one: averages for levels, the last value (the
/// largest) for counters and limits.
const ROLLUP: &str = "(ts / 60000) * 60000, kind, id, name, AVG(cpu), MAX(cpu_limit), CAST(AVG(mem) AS INTEGER), \
    MAX(mem_limit), MAX(oom), MAX(io_read), MAX(io_write), CAST(AVG(pids) AS INTEGER), MAX(rx_bytes), MAX(tx_bytes), \
    MAX(rx_packets), MAX(tx_packets), MAX(restarts), AVG(health_ms), AVG(health_err), AVG(load1), MAX(disk_used), \
    MAX(disk_total), MAX(chain_height), CAST(AVG(chain_peers) AS INTEGER), CAST(AVG(chain_mempool_txs) AS INTEGER), \
    CAST(AVG(chain_mempool_bytes) AS INTEGER), AVG(chain_hashrate), AVG(chain_interval), MAX(chain_lag), MAX(chain_stall)";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn sample(r: &Row<'_>) -> rusqlite::Result<Sample> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let ou = |i: usize| -> rusqlite::Result<Option<u64>> { Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64)) };
    Ok(Sample {
        ts: r.get(0)?,
        kind: r.get(1)?,
        id: r.get(2)?,
        name: r.get(3)?,
        cpu_percent: r.get(4)?,
        cpu_limit_percent: r.get(5)?,
        memory_bytes: u(6)?,
        memory_limit_bytes: ou(7)?,
        oom_kills: u(8)?,
        io_read_bytes: u(9)?,
        io_write_bytes: u(10)?,
        pids: u(11)?,
        net_rx_bytes: u(12)?,
        net_tx_bytes: u(13)?,
        net_rx_packets: u(14)?,
        net_tx_packets: u(15)?,
        restarts: u(16)?,
        health_ms: r.get(17)?,
        health_error_rate: r.get(18)?,
        load1: r.get(19)?,
        disk_used_bytes: ou(20)?,
        disk_total_bytes: ou(21)?,
        chain: match ou(22)? {
            None => None,
            Some(h) => Some(ChainSample {
                chain_height: h,
                chain_peers: ou(23)?.unwrap_or(0),
                chain_mempool_txs: ou(24)?.unwrap_or(0),
                chain_mempool_bytes: ou(25)?.unwrap_or(0),
                chain_hashrate: r.get::<_, Option<f64>>(26)?.unwrap_or(0.0),
                chain_block_interval_s: r.get::<_, Option<f64>>(27)?.unwrap_or(0.0),
                chain_lag_blocks: ou(28)?.unwrap_or(0),
                chain_stall_intervals: r.get::<_, Option<f64>>(29)?.unwrap_or(0.0),
            }),
        },
    })
}

/// Which samples a query wants.
#[derive(Debug, Clone, Default)]
pub struct SampleQuery {
    /// Milliseconds since the epoch, inclusive.
    pub from: i64,
    /// Milliseconds since the epoch, inclusive.
    pub to: i64,
    /// Only this object (its id).
    pub id: Option<String>,
}

fn severity(s: &str) -> Severity {
    match s {
        "critical" => Severity::Critical,
        "degraded" => Severity::Degraded,
        _ => Severity::Healthy,
    }
}

fn alert(r: &Row<'_>) -> rusqlite::Result<Alert> {
    let at = |i: usize| -> rusqlite::Result<Option<DateTime<Utc>>> {
        Ok(r.get::<_, Option<String>>(i)?.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|d| d.to_utc()))
    };
    Ok(Alert {
        id: r.get(0)?,
        rule: r.get(1)?,
        object: r.get(2)?,
        severity: severity(&r.get::<_, String>(3)?),
        source: r.get(4)?,
        value: r.get(5)?,
        message: r.get(6)?,
        fired_at: at(7)?.unwrap_or_default(),
        resolved_at: at(8)?,
    })
}

fn select(conn: &Connection, table: &str, q: &SampleQuery, before: Option<i64>) -> Result<Vec<Sample>> {
    let to = before.map_or(q.to, |b| q.to.min(b - 1));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {table} WHERE ts >= ?1 AND ts <= ?2 AND (?3 IS NULL OR id = ?3) ORDER BY ts, kind, name"
    ))?;
    let rows = stmt.query_map(params![q.from, to, q.id], sample)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Stores one round of samples in one transaction.
    pub fn insert_samples(&self, samples: &[Sample]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO samples ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
                 ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)"
            ))?;
            for s in samples {
                let c = s.chain.as_ref();
                stmt.execute(params![
                    s.ts,
                    s.kind,
                    s.id,
                    s.name,
                    s.cpu_percent,
                    s.cpu_limit_percent,
                    to_i64(s.memory_bytes),
                    s.memory_limit_bytes.map(to_i64),
                    to_i64(s.oom_kills),
                    to_i64(s.io_read_bytes),
                    to_i64(s.io_write_bytes),
                    to_i64(s.pids),
                    to_i64(s.net_rx_bytes),
                    to_i64(s.net_tx_bytes),
                    to_i64(s.net_rx_packets),
                    to_i64(s.net_tx_packets),
                    to_i64(s.restarts),
                    s.health_ms,
                    s.health_error_rate,
                    s.load1,
                    s.disk_used_bytes.map(to_i64),
                    s.disk_total_bytes.map(to_i64),
                    c.map(|c| to_i64(c.chain_height)),
                    c.map(|c| to_i64(c.chain_peers)),
                    c.map(|c| to_i64(c.chain_mempool_txs)),
                    c.map(|c| to_i64(c.chain_mempool_bytes)),
                    c.map(|c| c.chain_hashrate),
                    c.map(|c| c.chain_block_interval_s),
                    c.map(|c| to_i64(c.chain_lag_blocks)),
                    c.map(|c| c.chain_stall_intervals),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Samples in a time range, oldest first: raw ones where they are kept, one-minute
    /// averages before the oldest raw sample.
    pub fn samples(&self, q: &SampleQuery) -> Result<Vec<Sample>> {
        let conn = self.conn();
        let oldest_raw: Option<i64> = conn.query_row("SELECT MIN(ts) FROM samples", [], |r| r.get(0))?;
        let mut out = match oldest_raw {
            Some(o) if o > q.from => select(&conn, "samples_1m", q, Some(o))?,
            Some(_) => Vec::new(),
            None => select(&conn, "samples_1m", q, None)?,
        };
        out.extend(select(&conn, "samples", q, None)?);
        Ok(out)
    }

    /// Rolls complete minutes of raw samples up into one-minute averages, then forgets raw
    /// samples older than `raw_keep_ms` and averages older than `minute_keep_ms`.
    pub fn downsample(&self, now_ms: i64, raw_keep_ms: i64, minute_keep_ms: i64) -> Result<()> {
        let conn = self.conn();
        let done: Option<i64> = conn.query_row("SELECT MAX(ts) FROM samples_1m", [], |r| r.get(0))?;
        let from = done.map_or(i64::MIN, |d| d + 60_000);
        let until = now_ms / 60_000 * 60_000;
        conn.execute(
            &format!(
                "INSERT INTO samples_1m ({COLUMNS}) SELECT {ROLLUP} FROM samples WHERE ts >= ?1 AND ts < ?2 \
                 GROUP BY ts / 60000, id"
            ),
            params![from, until],
        )?;
        // raw samples go by whole minutes, so the averages before the oldest raw sample
        // cover complete minutes: no gap and no overlap where the two meet
        let raw_cutoff = (now_ms - raw_keep_ms).div_euclid(60_000) * 60_000;
        conn.execute("DELETE FROM samples WHERE ts < ?1", params![raw_cutoff.min(until)])?;
        conn.execute("DELETE FROM samples_1m WHERE ts < ?1", params![now_ms - minute_keep_ms])?;
        Ok(())
    }

    /// Records a fired alert with its `fired` event (kind `alert`, the alert's object as
    /// the event's name); gives its id.
    pub fn insert_alert(&self, a: &Alert) -> Result<i64> {
        self.write(Durability::Committed, |tx| {
            tx.execute(
                "INSERT INTO alerts (rule, object, severity, source, value, message, fired_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    a.rule,
                    a.object,
                    a.severity.to_string(),
                    a.source,
                    a.value,
                    a.message,
                    a.fired_at.to_rfc3339()
                ],
            )?;
            let id = tx.last_insert_rowid();
            let detail = format!("{} {} ({}): {}", a.severity, a.rule, a.source, a.message);
            let mut ev = Event::new(ALERT_KIND, &id.to_string(), &a.object, "fired", detail);
            ev.at = a.fired_at;
            insert_event(tx, &ev)?;
            Ok(id)
        })
    }

    /// Marks an alert resolved, with its `resolved` event; resolving one already resolved
    /// (or unknown) changes nothing.
    pub fn resolve_alert(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.write(Durability::Committed, |tx| {
            let open: Option<(String, String, String)> = tx
                .query_row(
                    "SELECT object, rule, source FROM alerts WHERE id = ?1 AND resolved_at IS NULL",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((object, rule, source)) = open else { return Ok(()) };
            tx.execute("UPDATE alerts SET resolved_at = ?2 WHERE id = ?1", params![id, at.to_rfc3339()])?;
            let mut ev = Event::new(ALERT_KIND, &id.to_string(), &object, "resolved", format!("{rule} ({source})"));
            ev.at = at;
            insert_event(tx, &ev)
        })
    }

    /// Alerts, newest first: the open ones only, or the latest `limit` of all.
    pub fn alerts(&self, open_only: bool, limit: usize) -> Result<Vec<Alert>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, rule, object, severity, source, value, message, fired_at, resolved_at FROM alerts \
             WHERE (?1 = 0 OR resolved_at IS NULL) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![open_only as i64, limit as i64], alert)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, id: &str, cpu: f64, rx: u64) -> Sample {
        Sample {
            ts,
            kind: "container".into(),
            id: id.into(),
            name: format!("n-{id}"),
            cpu_percent: cpu,
            memory_bytes: 100,
            memory_limit_bytes: Some(1000),
            net_rx_bytes: rx,
            health_ms: Some(2.0),
            ..Default::default()
        }
    }

    #[test]
    fn samples_round_trip_and_range_queries_are_exact() {
        let store = Store::open_in_memory().unwrap();
        let all: Vec<Sample> = (0..10).map(|i| s(1_000 + i * 5_000, "a", i as f64, i as u64 * 10)).collect();
        store.insert_samples(&all).unwrap();
        store.insert_samples(&[s(6_000, "b", 1.0, 1)]).unwrap();
        let q =
            |from, to, id: Option<&str>| store.samples(&SampleQuery { from, to, id: id.map(String::from) }).unwrap();
        assert_eq!(q(0, i64::MAX, Some("a")), all, "what went in comes out");
        let mid = q(6_000, 16_000, Some("a"));
        assert_eq!(mid.iter().map(|s| s.ts).collect::<Vec<_>>(), [6_000, 11_000, 16_000], "inclusive bounds");
        assert_eq!(q(6_000, 6_000, None).len(), 2);
        assert!(q(50_000, 60_000, None).is_empty());
    }

    #[test]
    fn minutes_roll_up_and_old_samples_go() {
        let store = Store::open_in_memory().unwrap();
        // two minutes of samples every 10 s, then the rollup at 2 min 30 s
        let all: Vec<Sample> = (0..12).map(|i| s(i * 10_000, "a", i as f64, i as u64)).collect();
        store.insert_samples(&all).unwrap();
        store.downsample(150_000, 60_000, 3_600_000).unwrap();
        let got = store.samples(&SampleQuery { from: 0, to: i64::MAX, id: None }).unwrap();
        // raw samples of the first minute are gone (kept: from 1:00, a minute before 2:30
        // rounded down); that minute reads as its average
        let ts: Vec<i64> = got.iter().map(|s| s.ts).collect();
        assert_eq!(ts, [0, 60_000, 70_000, 80_000, 90_000, 100_000, 110_000], "{got:?}");
        assert_eq!((got[0].cpu_percent, got[0].net_rx_bytes, got[0].memory_limit_bytes), (2.5, 5, Some(1000)));
        assert_eq!(got[1], all[6], "raw samples come back as they went in");
        // the rollup does not count a minute twice
        store.downsample(150_000, 60_000, 3_600_000).unwrap();
        assert_eq!(store.samples(&SampleQuery { from: 0, to: i64::MAX, id: None }).unwrap().len(), 7);
        // an hour later: no raw samples, and only averages younger than an hour
        store.downsample(3_650_000, 60_000, 3_600_000).unwrap();
        let left = store.samples(&SampleQuery { from: 0, to: i64::MAX, id: None }).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!((left[0].ts, left[0].cpu_percent, left[0].net_rx_bytes), (60_000, 8.5, 11));
    }

    #[test]
    fn alerts_fire_and_resolve() {
        let store = Store::open_in_memory().unwrap();
        let a = Alert {
            id: 0,
            rule: "crash-loop".into(),
            object: "container/web".into(),
            severity: Severity::Critical,
            source: "rules".into(),
            value: 3.0,
            message: "restarts 3 above 2".into(),
            fired_at: Utc::now(),
            resolved_at: None,
        };
        let id = store.insert_alert(&a).unwrap();
        assert_eq!(store.alerts(true, 10).unwrap().len(), 1);
        store.resolve_alert(id, Utc::now()).unwrap();
        assert!(store.alerts(true, 10).unwrap().is_empty());
        let all = store.alerts(false, 10).unwrap();
        assert_eq!(all[0].rule, "crash-loop");
        assert!(all[0].resolved_at.is_some());
        assert_eq!(all[0].severity, Severity::Critical);
        // firing and resolving are events of kind alert, named by the alerted object;
        // resolving again adds none
        store.resolve_alert(id, Utc::now()).unwrap();
        let filter = crate::EventFilter { kinds: vec![ALERT_KIND.into()], object: Some("container/web".into()) };
        let evs = store.events_after(0, &filter, 10).unwrap();
        let actions: Vec<_> = evs.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["fired", "resolved"]);
        assert_eq!(evs[0].object_id, id.to_string());
    }
}
