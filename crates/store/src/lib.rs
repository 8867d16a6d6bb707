//! The embedded store: one SQLite database (WAL mode) holding every object micro-os
//! manages and the lifecycle events that happened to them.
//!
//! Design decision: objects are stored as JSON documents keyed by (kind, id) with a
//! unique (kind, name), and every write commits in its own transaction before it returns,
//! so nothing the API acknowledged is lost to a `kill -9` of the daemon. A write is
//! [`Durability::Synced`] (`synchronous=FULL`: the WAL is fsynced at commit, so it also
//! survives a power cut) unless its caller says it is [`Durability::Committed`]: a fact
//! the daemon observed on its own and can observe again (a process exit, which the shim
//! also keeps in `status.json`), fsynced with the next synced write or [`Store::sync`].
//! Readers keep their own in-memory copy; the store is written through, not queried on
//! hot paths.

mod ai;
mod metrics;

pub use metrics::SampleQuery;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name:?} already exists")]
    Conflict { kind: String, name: String },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: stored {kind} {id} is not valid JSON: {source}")]
    Corrupt { kind: String, id: String, source: serde_json::Error },
    #[error("store: sync {path}: {source}")]
    Sync { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: objects and events
    "CREATE TABLE objects (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (kind, id),
        UNIQUE (kind, name)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_object ON events (object_id, seq);",
    // 2: nonces of verified P2P messages, so a replay is caught after a restart too
    "CREATE TABLE seen_nonces (
        sender TEXT NOT NULL,
        nonce TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (sender, nonce)
    ) WITHOUT ROWID;
    CREATE INDEX seen_nonces_at ON seen_nonces (at);",
    // 3: metrics history and alerts
    metrics::MIGRATION,
    // 4: reference-chain nodes in the history
    metrics::CHAIN_MIGRATION,
    // 5: what the AI layer collected to train on
    ai::MIGRATION,
];

/// A lifecycle event: `created`, `started`, `exited`, `oom`, `restarted`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub object_id: String,
    pub name: String,
    pub action: String,
    pub detail: String,
}

impl Event {
    pub fn new(kind: &str, object_id: &str, name: &str, action: &str, detail: impl Into<String>) -> Self {
        Event {
            seq: 0,
            at: Utc::now(),
            kind: kind.into(),
            object_id: object_id.into(),
            name: name.into(),
            action: action.into(),
            detail: detail.into(),
        }
    }
}

/// Which events a reader wants: every one when empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Kinds (`container`, `vm`, `circuit`, `host`, `ai`, `alert`); any when empty.
    pub kinds: Vec<String>,
    /// One object, by id or name.
    pub object: Option<String>,
}

/// How far a write has gone when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed and fsynced: survives a `kill -9` of the daemon and a power cut. For
    /// every change the API acknowledges as done.
    Synced,
    /// Committed, not yet fsynced: survives a `kill -9` of the daemon (the commit is in
    /// the kernel's page cache) and becomes power-cut durable with the next synced write
    /// or [`Store::sync`]; a power cut before that loses it. Only for what the daemon
    /// observed on its own and can observe again after a power cut.
    Committed,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// The WAL file, which [`Store::sync`] fsyncs; `None` in memory.
    wal: Option<PathBuf>,
    /// A committed write has not been fsynced yet.
    unsynced: AtomicBool,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Self::setup(conn, Some(wal.into()))
    }

    pub fn open_in_memory() -> Result<Store> {
        Self::setup(Connection::open_in_memory()?, None)
    }

    fn setup(mut conn: Connection, wal: Option<PathBuf>) -> Result<Store> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Store { conn: Mutex::new(conn), wal, unsynced: AtomicBool::new(false) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // a panic while holding the lock cannot leave a half-written transaction behind
        // (SQLite rolls it back), so a poisoned lock is safe to reuse
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One write transaction, committed as durably as `durability` says.
    fn write<R>(&self, durability: Durability, f: impl FnOnce(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut conn = self.conn();
        let committed = durability == Durability::Committed;
        if committed {
            // in WAL mode NORMAL commits without an fsync; the frames are synced by the
            // next FULL commit, a checkpoint or `sync`, whichever comes first
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let written = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        })();
        if committed {
            // mark first: a failed switch back must not hide the unsynced write
            self.unsynced.store(true, Ordering::SeqCst);
            conn.pragma_update(None, "synchronous", "FULL")?;
        } else if written.is_ok() {
            // a FULL commit fsyncs the whole WAL, earlier commits included
            self.unsynced.store(false, Ordering::SeqCst);
        }
        written
    }

    /// Inserts a new object; a duplicate name of the same kind is a conflict;
    /// [`Durability::Synced`].
    pub fn insert<T: Serialize>(&self, kind: &str, id: &str, name: &str, obj: &T, event: &Event) -> Result<()> {
        self.insert_with(kind, id, name, obj, event, Durability::Synced)
    }

    /// [`Store::insert`] with the durability the caller needs.
    pub fn insert_with<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        obj: &T,
        event: &Event,
        durability: Durability,
    ) -> Result<()> {
        let body = serde_json::to_string(obj).expect("objects serialise");
        self.write(durability, |tx| {
            let taken: Option<String> = tx
                .query_row("SELECT id FROM objects WHERE kind = ?1 AND name = ?2", params![kind, name], |r| r.get(0))
                .optional()?;
            if taken.is_some() {
                return Err(Error::Conflict { kind: kind.into(), name: name.into() });
            }
            tx.execute(
                "INSERT INTO objects (kind, id, name, body, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![kind, id, name, body, Utc::now().to_rfc3339()],
            )?;
            insert_event(tx, event)
        })
    }

    /// Replaces an existing object (or inserts it), with an optional event, atomically;
    /// [`Durability::Synced`].
    pub fn update<T: Serialize>(&self, kind: &str, id: &str, name: &str, obj: &T, event: Option<&Event>) -> Result<()> {
        self.update_with(kind, id, name, obj, event, Durability::Synced)
    }

    /// [`Store::update`] with the durability the caller needs.
    pub fn update_with<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        obj: &T,
        event: Option<&Event>,
        durability: Durability,
    ) -> Result<()> {
        let body = serde_json::to_string(obj).expect("objects serialise");
        self.write(durability, |tx| {
            tx.execute(
                "INSERT INTO objects (kind, id, name, body, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, id) DO UPDATE SET name = excluded.name, body = excluded.body,
                 updated_at = excluded.updated_at",
                params![kind, id, name, body, Utc::now().to_rfc3339()],
            )?;
            match event {
                Some(e) => insert_event(tx, e),
                None => Ok(()),
            }
        })
    }

    /// Records an event on its own (a decision, not a change of an object);
    /// [`Durability::Committed`].
    pub fn record_event(&self, event: &Event) -> Result<()> {
        self.write(Durability::Committed, |tx| insert_event(tx, event))
    }

    /// Makes every committed write power-cut durable (fsyncs the WAL), if one is not yet.
    /// Call it before acknowledging a request whose answer reports [`Durability::Committed`]
    /// facts as done (a stop reports the exit it waited for).
    pub fn sync(&self) -> Result<()> {
        let _conn = self.conn();
        let Some(wal) = &self.wal else { return Ok(()) };
        if !self.unsynced.load(Ordering::SeqCst) {
            return Ok(());
        }
        // fsync flushes the file's pages whichever descriptor wrote them: this is the
        // sync a FULL commit would have made after writing its frames
        std::fs::File::open(wal)
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::Sync { path: wal.clone(), source })?;
        self.unsynced.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Deletes an object with its event; [`Durability::Synced`].
    pub fn delete(&self, kind: &str, id: &str, event: &Event) -> Result<bool> {
        self.write(Durability::Synced, |tx| {
            let n = tx.execute("DELETE FROM objects WHERE kind = ?1 AND id = ?2", params![kind, id])?;
            insert_event(tx, event)?;
            Ok(n > 0)
        })
    }

    pub fn list<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, body FROM objects WHERE kind = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map(params![kind], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push(serde_json::from_str(&body).map_err(|source| Error::Corrupt { kind: kind.into(), id, source })?);
        }
        Ok(out)
    }

    pub fn get<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Result<Option<T>> {
        let conn = self.conn();
        let body: Option<String> = conn
            .query_row("SELECT body FROM objects WHERE kind = ?1 AND id = ?2", params![kind, id], |r| r.get(0))
            .optional()?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|source| Error::Corrupt { kind: kind.into(), id: id.into(), source })
        })
        .transpose()
    }

    /// Records a message nonce; false when `(sender, nonce)` was already recorded.
    pub fn insert_nonce(&self, sender: &str, nonce: &str, at: u64) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT OR IGNORE INTO seen_nonces (sender, nonce, at) VALUES (?1, ?2, ?3)",
            params![sender, nonce, at as i64],
        )?;
        Ok(n == 1)
    }

    /// Forgets nonces recorded before `before` (they are outside the time window).
    pub fn prune_nonces(&self, before: u64) -> Result<usize> {
        let conn = self.conn();
        Ok(conn.execute("DELETE FROM seen_nonces WHERE at < ?1", params![before as i64])?)
    }

    /// Events after `after` (a `seq`) that `filter` lets through, oldest first, at most
    /// `limit`. Sequence numbers only grow (AUTOINCREMENT; one connection commits in
    /// order), so a reader that resumes after the last `seq` it saw misses nothing and
    /// sees nothing twice.
    pub fn events_after(&self, after: i64, filter: &EventFilter, limit: usize) -> Result<Vec<Event>> {
        let conn = self.conn();
        let kinds =
            (!filter.kinds.is_empty()).then(|| serde_json::to_string(&filter.kinds).expect("strings serialise"));
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at, kind, object_id, name, action, detail FROM events
             WHERE seq > ?1
               AND (?2 IS NULL OR kind IN (SELECT value FROM json_each(?2)))
               AND (?3 IS NULL OR object_id = ?3 OR name = ?3)
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![after, kinds, filter.object, limit as i64], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The `seq` just before the last `n` events that `filter` lets through (the latest
    /// `seq` when `n` is 0 or none passes; 0 when there are fewer than `n`).
    pub fn events_tail_start(&self, filter: &EventFilter, n: usize) -> Result<i64> {
        if n == 0 {
            return self.last_event_seq();
        }
        let conn = self.conn();
        let kinds =
            (!filter.kinds.is_empty()).then(|| serde_json::to_string(&filter.kinds).expect("strings serialise"));
        let seqs: Vec<i64> = conn
            .prepare_cached(
                "SELECT seq FROM events
                 WHERE (?1 IS NULL OR kind IN (SELECT value FROM json_each(?1)))
                   AND (?2 IS NULL OR object_id = ?2 OR name = ?2)
                 ORDER BY seq DESC LIMIT ?3",
            )?
            .query_map(params![kinds, filter.object, n as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(conn);
        match seqs.last() {
            None => self.last_event_seq(),
            Some(oldest) if seqs.len() == n => Ok(oldest - 1),
            Some(_) => Ok(0),
        }
    }

    /// The `seq` of the latest event (0 when there is none).
    pub fn last_event_seq(&self) -> Result<i64> {
        let conn = self.conn();
        Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
    }

    /// Events of one object (or all when `object_id` is `None`), oldest first, the last `limit`.
    pub fn events(&self, object_id: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at, kind, object_id, name, action, detail FROM events
             WHERE ?1 IS NULL OR object_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![object_id, limit as i64], event_row)?;
        let mut out: Vec<Event> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }
}

impl AsRef<Store> for Store {
    fn as_ref(&self) -> &Store {
        self
    }
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let at: String = r.get(1)?;
    Ok(Event {
        seq: r.get(0)?,
        at: DateTime::parse_from_rfc3339(&at).map(|t| t.with_timezone(&Utc)).unwrap_or_default(),
        kind: r.get(2)?,
        object_id: r.get(3)?,
        name: r.get(4)?,
        action: r.get(5)?,
        detail: r.get(6)?,
    })
}

pub(crate) fn insert_event(conn: &Connection, e: &Event) -> Result<()> {
    conn.execute(
        "INSERT INTO events (at, kind, object_id, name, action, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![e.at.to_rfc3339(), e.kind, e.object_id, e.name, e.action, e.detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Obj {
        id: String,
        n: u32,
    }

    fn ev(id: &str, action: &str) -> Event {
        Event::new("thing", id, "name", action, "")
    }

    #[test]
    fn events_after_resumes_without_gaps_and_filters() {
        let s = Store::open_in_memory().unwrap();
        for (i, kind) in ["container", "vm", "container", "circuit"].iter().enumerate() {
            let id = format!("o{i}");
            s.insert(
                kind,
                &id,
                &format!("n{i}"),
                &Obj { id: id.clone(), n: 0 },
                &Event::new(kind, &id, &format!("n{i}"), "created", ""),
            )
            .unwrap();
        }
        let all = s.events_after(0, &EventFilter::default(), 100).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(s.last_event_seq().unwrap(), all[3].seq);
        // resuming after the second sees the third and fourth, once each
        let rest = s.events_after(all[1].seq, &EventFilter::default(), 100).unwrap();
        assert_eq!(rest, all[2..]);
        let containers = EventFilter { kinds: vec!["container".into()], object: None };
        let names: Vec<_> = s.events_after(0, &containers, 100).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["n0", "n2"]);
        // one object, by name or by id
        let by_name = EventFilter { kinds: vec![], object: Some("n3".into()) };
        let by_id = EventFilter { kinds: vec![], object: Some("o3".into()) };
        assert_eq!(s.events_after(0, &by_name, 100).unwrap(), s.events_after(0, &by_id, 100).unwrap());
        assert_eq!(s.events_after(0, &by_id, 100).unwrap()[0].kind, "circuit");
        // the limit cuts from the oldest
        assert_eq!(s.events_after(0, &EventFilter::default(), 2).unwrap(), all[..2]);
        // a tail starts just before the last n that pass
        assert_eq!(s.events_tail_start(&containers, 1).unwrap(), all[2].seq - 1);
        assert_eq!(s.events_tail_start(&containers, 5).unwrap(), 0);
        assert_eq!(s.events_tail_start(&containers, 0).unwrap(), all[3].seq);
    }

    #[test]
    fn insert_conflict_update_delete() {
        let s = Store::open_in_memory().unwrap();
        s.insert("thing", "a", "one", &Obj { id: "a".into(), n: 1 }, &ev("a", "created")).unwrap();
        let dup = s.insert("thing", "b", "one", &Obj { id: "b".into(), n: 2 }, &ev("b", "created"));
        assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
        // the failed insert left nothing behind, not even its event
        assert_eq!(s.list::<Obj>("thing").unwrap().len(), 1);
        assert_eq!(s.events(None, 10).unwrap().len(), 1);
        s.update("thing", "a", "one", &Obj { id: "a".into(), n: 5 }, Some(&ev("a", "started"))).unwrap();
        assert_eq!(s.get::<Obj>("thing", "a").unwrap().unwrap().n, 5);
        assert!(s.delete("thing", "a", &ev("a", "removed")).unwrap());
        assert!(s.get::<Obj>("thing", "a").unwrap().is_none());
        let actions: Vec<_> = s.events(Some("a"), 10).unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["created", "started", "removed"]);
    }

    #[test]
    fn nonces_survive_a_reopen_and_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            assert!(s.insert_nonce("peer", "n1", 100).unwrap());
            assert!(!s.insert_nonce("peer", "n1", 100).unwrap());
            assert!(s.insert_nonce("other", "n1", 100).unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert!(!s.insert_nonce("peer", "n1", 101).unwrap(), "replay after a restart was accepted");
        assert_eq!(s.prune_nonces(101).unwrap(), 2);
        assert!(s.insert_nonce("peer", "n1", 200).unwrap());
    }

    fn synchronous(s: &Store) -> i64 {
        s.conn().pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap()
    }

    #[test]
    fn committed_writes_survive_a_reopen_and_wait_for_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.insert("thing", "a", "one", &Obj { id: "a".into(), n: 1 }, &ev("a", "created")).unwrap();
            assert!(!s.unsynced.load(Ordering::SeqCst));
            let o = Obj { id: "a".into(), n: 2 };
            s.update_with("thing", "a", "one", &o, Some(&ev("a", "exited")), Durability::Committed).unwrap();
            assert!(s.unsynced.load(Ordering::SeqCst), "a committed write counts as unsynced");
            // the connection is back at FULL: the next plain write is synced again
            assert_eq!(synchronous(&s), 2);
            s.sync().unwrap();
            assert!(!s.unsynced.load(Ordering::SeqCst));
            s.update_with("thing", "a", "one", &o, Some(&ev("a", "health")), Durability::Committed).unwrap();
            s.update("thing", "a", "one", &Obj { id: "a".into(), n: 3 }, Some(&ev("a", "started"))).unwrap();
            assert!(!s.unsynced.load(Ordering::SeqCst), "a synced write syncs what came before");
            s.update_with("thing", "a", "one", &Obj { id: "a".into(), n: 4 }, None, Durability::Committed).unwrap();
            let b = Obj { id: "b".into(), n: 1 };
            s.insert_with("thing", "b", "two", &b, &ev("b", "created"), Durability::Committed).unwrap();
            let dup = s.insert_with("thing", "c", "two", &b, &ev("c", "created"), Durability::Committed);
            assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
            assert_eq!(synchronous(&s), 2, "a failed committed write leaves the connection at FULL");
            assert!(s.unsynced.load(Ordering::SeqCst));
            s.delete("thing", "b", &ev("b", "removed")).unwrap();
            assert!(!s.unsynced.load(Ordering::SeqCst), "a delete is synced");
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get::<Obj>("thing", "a").unwrap().unwrap().n, 4);
        let actions: Vec<_> = s.events(Some("a"), 10).unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["created", "exited", "health", "started"]);
    }

    #[test]
    fn persists_across_reopen_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.insert("thing", "a", "one", &Obj { id: "a".into(), n: 1 }, &ev("a", "created")).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list::<Obj>("thing").unwrap(), vec![Obj { id: "a".into(), n: 1 }]);
        let mode: String = s.conn().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}
