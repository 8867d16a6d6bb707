use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::NodeId;

/// Why the circuit store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("circuit store {path:?}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("circuit store {path:?} is in use by another member or process")]
    InUse { path: PathBuf },
    #[error("circuit store {path:?}: journal mode is {mode:?}, not WAL")]
    NotWal { path: PathBuf, mode: String },
    #[error("circuit store {path:?}: schema version {found} is newer than this binary knows ({known})")]
    Schema { path: PathBuf, found: i64, known: usize },
    #[error("circuit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("circuit store: stored {what} is not valid: {source}")]
    Corrupt { what: &'static str, source: serde_json::Error },
    #[error("circuit store: cannot encode {what}: {source}")]
    Encode { what: &'static str, source: serde_json::Error },
    /// The transaction a write was part of did not commit; nothing of it is on disk.
    #[error("circuit store: write not committed: {0}")]
    NotCommitted(String),
    /// An earlier write failed; the store refuses writes so no hole can appear in the log.
    #[error("circuit store: refusing writes after an earlier failure ({0}); reopen the store")]
    Poisoned(String),
    #[error("circuit store: the storage thread has stopped")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
        move |source| Error::Corrupt { what, source }
    }

    pub(crate) fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
        move |source| Error::Encode { what, source }
    }

    /// The error openraft expects, naming what failed and how.
    pub(crate) fn storage(&self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError<NodeId> {
        StorageError::IO { source: StorageIOError::new(subject, verb, AnyError::new(self)) }
    }
}
