//! The storage thread: the one place the SQLite connection lives.
//!
//! Every read and write of the log store and the state machine is a job on one queue, run
//! in order by one OS thread, so the async runtime never waits on disk and all I/O is
//! serialised as openraft requires. Jobs that are queued together run in one transaction
//! and share one commit (one WAL fsync with `synchronous=FULL`): group commit. A write
//! reports only after that commit returned; a read answers at once and sees every write
//! queued before it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: log, log metadata, the applied state machine and its current snapshot
    "CREATE TABLE log (
        idx INTEGER PRIMARY KEY,
        term INTEGER NOT NULL,
        entry BLOB NOT NULL
    );
    CREATE TABLE log_meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        version INTEGER NOT NULL,
        checksum TEXT NOT NULL
    );
    CREATE TABLE sm_meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        meta BLOB NOT NULL,
        data BLOB NOT NULL
    );",
];

/// A write job: `run` does its part inside the batch's transaction, `finish` is told
/// whether that transaction committed.
pub(crate) trait Write: Send + 'static {
    fn run(&mut self, conn: &Connection) -> Result<()>;
    fn finish(self: Box<Self>, committed: Result<()>);
    /// Whether its commit must be on disk before `finish` (an fsync). A batch of writes
    /// that all say no commits without one (WAL, `synchronous=NORMAL`): it survives a
    /// crash of the process, and the next durable commit puts it on disk too.
    fn durable(&self) -> bool {
        true
    }
}

enum Job {
    Read(Box<dyn FnOnce(&Connection) + Send>),
    Write(Box<dyn Write>),
}

/// A handle to the storage thread; clones share it. The thread ends, closing the
/// database, when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Db {
    jobs: mpsc::Sender<Job>,
}

impl Db {
    /// Opens (or creates) the database at `path` on a new storage thread and runs `init`
    /// there once the schema is current.
    pub(crate) async fn open<T, F>(path: &Path, init: F) -> Result<(Db, T)>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel();
        let (tx, rx) = oneshot::channel();
        let path = path.to_path_buf();
        thread::Builder::new()
            .name("circuit-store".into())
            .spawn(move || {
                let conn = match connect(&path).and_then(|conn| Ok((init(&conn)?, conn))) {
                    Ok((value, conn)) => {
                        let _ = tx.send(Ok(value));
                        conn
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                serve(&conn, &queue);
            })
            .map_err(|_| Error::Closed)?;
        let value = rx.await.map_err(|_| Error::Closed)??;
        Ok((Db { jobs }, value))
    }

    /// Runs `f` on the storage thread and answers what it returned.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Read(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        })))?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` in a transaction on the storage thread and answers once that committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_as(f, true).await
    }

    /// [`Db::write`] without an fsync of its own, for what can be rebuilt from durable
    /// data after a power cut (the state machine, re-applied from the log).
    pub(crate) async fn write_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_as(f, false).await
    }

    async fn write_as<T, F>(&self, f: F, durable: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(Reply { f: Some(f), value: None, tx, durable })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Queues a write job; its `finish` says when it committed.
    pub(crate) fn submit(&self, job: impl Write) -> Result<()> {
        self.send(Job::Write(Box::new(job)))
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs.send(job).map_err(|_| Error::Closed)
    }
}

/// A write whose caller awaits the value `f` computed, after the commit.
struct Reply<F, T> {
    f: Option<F>,
    value: Option<T>,
    tx: oneshot::Sender<Result<T>>,
    durable: bool,
}

impl<F, T> Write for Reply<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> Result<()> {
        let f = self.f.take().expect("a write job runs once");
        self.value = Some(f(conn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let Reply { value, tx, .. } = *self;
        let _ = tx.send(committed.map(|()| value.expect("a committed job has run")));
    }

    fn durable(&self) -> bool {
        self.durable
    }
}

fn connect(path: &PathBuf) -> Result<Connection> {
    let open = |source| Error::Open { path: path.clone(), source };
    let conn = Connection::open(path).map_err(open)?;
    // A store that is still open elsewhere (another process, or a member in this one that
    // has not shut down yet) may be closing: wait a little for it.
    conn.busy_timeout(std::time::Duration::from_secs(2)).map_err(open)?;
    // One owner per file: the storage thread holds an exclusive lock until it ends, so two
    // members can never write one log (a double vote). Set before WAL mode, so the WAL
    // index lives in this process's memory and no -shm file is shared.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(open)?;
    // WAL with synchronous=FULL fsyncs the WAL on every commit: a commit that returned is on
    // disk. (NORMAL would not be: a power cut could lose the last commits.)
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(|e| in_use(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotWal { path: path.clone(), mode });
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(open)?;
    // A small page cache: a VM agent must stay small (the default is 2 MiB).
    conn.pragma_update(None, "cache_size", -512).map_err(open)?;
    // Take the exclusive lock now rather than at the first write.
    conn.execute_batch("BEGIN IMMEDIATE; COMMIT;").map_err(|e| in_use(path, e))?;
    let done: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open)?;
    if done > MIGRATIONS.len() as i64 {
        return Err(Error::Schema { path: path.clone(), found: done, known: MIGRATIONS.len() });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = conn.unchecked_transaction().map_err(open)?;
        tx.execute_batch(sql).map_err(open)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(open)?;
        tx.commit().map_err(open)?;
    }
    Ok(conn)
}

fn in_use(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Error::InUse { path: path.to_path_buf() }
        }
        _ => Error::Open { path: path.to_path_buf(), source: e },
    }
}

/// The storage thread's loop: take what is queued, run it in one transaction, commit once,
/// then tell the writers. After a failed write it refuses all later writes (openraft stops
/// a member whose storage failed; refusing keeps a hole out of the log meanwhile).
fn serve(conn: &Connection, queue: &mpsc::Receiver<Job>) {
    let mut poisoned: Option<String> = None;
    let mut synced = true;
    while let Ok(first) = queue.recv() {
        let batch: Vec<Job> = std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())).collect();
        let mut ran: Vec<Box<dyn Write>> = Vec::new();
        let mut failed: Option<String> = None;
        // fsync this commit only if a write in it needs that
        let durable = batch.iter().any(|j| matches!(j, Job::Write(w) if w.durable()));
        if durable != synced {
            let mode = if durable { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => synced = durable,
                Err(e) => failed = Some(format!("synchronous={mode}: {e}")),
            }
        }
        let began = poisoned.is_none() && failed.is_none() && {
            let begin = conn.execute_batch("BEGIN IMMEDIATE");
            if let Err(e) = &begin {
                failed = Some(format!("begin: {e}"));
            }
            begin.is_ok()
        };
        for job in batch {
            match job {
                Job::Read(f) => f(conn),
                Job::Write(mut w) => {
                    if began && failed.is_none() {
                        if let Err(e) = w.run(conn) {
                            failed = Some(e.to_string());
                        }
                    }
                    ran.push(w);
                }
            }
        }
        if began {
            let end = if failed.is_some() { "ROLLBACK" } else { "COMMIT" };
            if let Err(e) = conn.execute_batch(end) {
                failed.get_or_insert_with(|| format!("commit: {e}"));
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        // Ok, or (refused because poisoned earlier, why).
        let outcome: Result<(), (bool, String)> = match (&poisoned, failed) {
            (Some(first), _) => Err((true, first.clone())),
            (None, Some(why)) => {
                if !ran.is_empty() {
                    poisoned = Some(why.clone());
                }
                Err((false, why))
            }
            (None, None) => Ok(()),
        };
        for w in ran {
            w.finish(outcome.clone().map_err(
                |(refused, why)| {
                    if refused {
                        Error::Poisoned(why)
                    } else {
                        Error::NotCommitted(why)
                    }
                },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Sender};

    use super::*;

    /// Runs one statement; reports how its batch ended.
    struct Probe {
        sql: &'static str,
        done: Sender<(&'static str, std::result::Result<(), String>)>,
    }

    impl Write for Probe {
        fn run(&mut self, conn: &Connection) -> Result<()> {
            conn.execute_batch(self.sql)?;
            Ok(())
        }
        fn finish(self: Box<Self>, committed: Result<()>) {
            let _ = self.done.send((self.sql, committed.map_err(|e| e.to_string())));
        }
    }

    async fn count(db: &Db) -> i64 {
        db.read(|c| Ok(c.query_row("SELECT count(*) FROM log_meta", [], |r| r.get(0))?)).await.unwrap()
    }

    #[tokio::test]
    async fn a_failed_write_rolls_back_its_batch_and_refuses_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ()) = Db::open(&dir.path().join("c.db"), |_| Ok(())).await.unwrap();
        db.write(|c| Ok(c.execute_batch("INSERT INTO log_meta VALUES ('before', x'00')")?)).await.unwrap();

        // Hold the thread inside a batch until all three writes are queued behind the read.
        let (release, wait) = channel::<()>();
        db.send(Job::Read(Box::new(move |_| {
            let _ = wait.recv();
        })))
        .unwrap();
        let (done, outcomes) = channel();
        for sql in [
            "INSERT INTO log_meta VALUES ('a', x'01')",
            "INSERT INTO no_such_table VALUES (1)",
            "INSERT INTO log_meta VALUES ('c', x'03')",
        ] {
            db.submit(Probe { sql, done: done.clone() }).unwrap();
        }
        release.send(()).unwrap();
        let outcomes: Vec<_> = (0..3).map(|_| outcomes.recv().unwrap()).collect();
        for (sql, outcome) in &outcomes {
            let err = outcome.as_ref().expect_err(sql);
            assert!(err.contains("not committed") && err.contains("no_such_table"), "{sql}: {err}");
        }
        // Nothing of the batch is on disk; reads still work.
        assert_eq!(count(&db).await, 1);

        let later = db.write(|c| Ok(c.execute_batch("INSERT INTO log_meta VALUES ('d', x'04')")?)).await;
        assert!(matches!(&later, Err(Error::Poisoned(why)) if why.contains("no_such_table")), "{later:?}");
        assert_eq!(count(&db).await, 1);
    }

    #[tokio::test]
    async fn one_file_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let (first, ()) = Db::open(&path, |_| Ok(())).await.unwrap();
        let second = Db::open(&path, |_| Ok(())).await.err().expect("refused while the first is open");
        assert!(matches!(&second, Error::InUse { path: p } if p == &path), "{second}");
        // Not even a reader elsewhere gets in (and no -shm file is shared).
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        assert!(other.query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0)).is_err());
        assert!(!dir.path().join("c.db-shm").exists());
        drop(other);
        drop(first);
        // Once the first handle is gone its thread closes the file: the next open waits for that.
        Db::open(&path, |_| Ok(())).await.expect("reopened after the owner closed");
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = Db::open(&path, |_| Ok(())).await.err().expect("refused");
        assert!(matches!(err, Error::Schema { found: 99, .. }), "{err}");
    }
}
