//! The Raft log, the vote and the log pointers, in the `log` and `log_meta` tables.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};

use crate::db::{Db, Write};
use crate::error::{Error, Result};
use crate::{NodeId, TypeConfig};

type StorageResult<T> = std::result::Result<T, StorageError<NodeId>>;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log half of a member's store (`RaftLogStorage`).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

/// Reads log entries for openraft's replication tasks; shares the store's thread.
#[derive(Clone)]
pub struct LogReader {
    db: Db,
}

impl LogStore {
    pub(crate) fn new(db: Db) -> LogStore {
        LogStore { db }
    }
}

fn get_meta<T: DeserializeOwned>(conn: &Connection, name: &'static str) -> Result<Option<T>> {
    let raw: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM log_meta WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    raw.map(|raw| serde_json::from_slice(&raw).map_err(Error::corrupt(name))).transpose()
}

fn put_meta<T: Serialize>(conn: &Connection, name: &'static str, value: &T) -> Result<()> {
    let raw = serde_json::to_vec(value).map_err(Error::encode(name))?;
    conn.execute(
        "INSERT INTO log_meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, raw],
    )?;
    Ok(())
}

fn decode_entry(raw: &[u8]) -> Result<Entry<TypeConfig>> {
    serde_json::from_slice(raw).map_err(Error::corrupt("log entry"))
}

/// `[start, end)` of a range of log indexes; `end` is `None` when open.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

async fn entries(db: &Db, range: impl RangeBounds<u64>) -> StorageResult<Vec<Entry<TypeConfig>>> {
    let (start, end) = bounds(&range);
    // SQLite integers are i64; log indexes stay far below i64::MAX.
    let end = end.map_or(i64::MAX, |e| e.min(i64::MAX as u64) as i64);
    let start = start.min(i64::MAX as u64) as i64;
    db.read(move |conn| {
        let mut stmt = conn.prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")?;
        let rows = stmt.query_map(params![start, end], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|raw| decode_entry(&raw?)).collect()
    })
    .await
    .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        entries(&self.db, range).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        entries(&self.db, range).await
    }
}

/// An append: its rows, and the callback openraft waits on, fired only after the commit.
struct Append {
    rows: Vec<(i64, i64, Vec<u8>)>,
    callback: LogFlushed<TypeConfig>,
}

impl Write for Append {
    fn run(&mut self, conn: &Connection) -> Result<()> {
        let mut stmt = conn.prepare_cached("INSERT OR REPLACE INTO log (idx, term, entry) VALUES (?1, ?2, ?3)")?;
        for (idx, term, entry) in &self.rows {
            stmt.execute(params![idx, term, entry])?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        self.callback.log_io_completed(committed.map_err(std::io::Error::other));
    }
}

/// A write openraft does not wait for: it rides on the next commit.
struct Background<F>(Option<F>);

impl<F: FnOnce(&Connection) -> Result<()> + Send + 'static> Write for Background<F> {
    fn run(&mut self, conn: &Connection) -> Result<()> {
        (self.0.take().expect("a write job runs once"))(conn)
    }

    fn finish(self: Box<Self>, _committed: Result<()>) {}
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.db
            .read(|conn| {
                let last_purged_log_id: Option<LogId<NodeId>> = get_meta(conn, LAST_PURGED)?;
                let last: Option<Vec<u8>> =
                    conn.query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0)).optional()?;
                let last_log_id = match last {
                    Some(raw) => Some(decode_entry(&raw)?.log_id),
                    None => last_purged_log_id,
                };
                Ok(LogState { last_purged_log_id, last_log_id })
            })
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader { db: self.db.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote = *vote;
        self.db
            .write(move |conn| put_meta(conn, VOTE, &vote))
            .await
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.db.read(|conn| get_meta(conn, VOTE)).await.map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Queued, not awaited: the state machine persists what it applied itself, so a lost
    /// `committed` only means a restarted member re-applies a little less eagerly.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.db
            .submit(Background(Some(move |conn: &Connection| put_meta(conn, COMMITTED, &committed))))
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.db
            .read(|conn| Ok(get_meta::<Option<LogId<NodeId>>>(conn, COMMITTED)?.flatten()))
            .await
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    /// Queues the entries and returns; they are readable at once (reads queue behind
    /// them) and `callback` fires once their transaction committed.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let raw = serde_json::to_vec(&entry).map_err(|e| {
                Error::encode("log entry")(e).storage(ErrorSubject::Log(entry.log_id), ErrorVerb::Write)
            })?;
            rows.push((entry.log_id.index as i64, entry.log_id.leader_id.term as i64, raw));
        }
        self.db.submit(Append { rows, callback }).map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Write))
    }

    /// Deletes the entries from `log_id.index` on, durably.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let since = log_id.index as i64;
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM log WHERE idx >= ?1", [since])?;
                Ok(())
            })
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    /// Deletes the entries up to `log_id.index` and records `log_id` as the last purged,
    /// in one durable transaction.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let upto = log_id.index as i64;
        self.db
            .write(move |conn| {
                put_meta(conn, LAST_PURGED, &log_id)?;
                conn.execute("DELETE FROM log WHERE idx <= ?1", [upto])?;
                Ok(())
            })
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_turn_any_range_into_start_and_end() {
        assert_eq!(bounds(&(3..7)), (3, Some(7)));
        assert_eq!(bounds(&(3..=7)), (3, Some(8)));
        assert_eq!(bounds(&(3..)), (3, None));
        assert_eq!(bounds(&(..7)), (0, Some(7)));
        assert_eq!(bounds(&(..)), (0, None));
        assert_eq!(bounds(&(0..=u64::MAX)), (0, None));
    }
}
