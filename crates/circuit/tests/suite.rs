//! openraft's own storage conformance suite, run against the SQLite store.

use micro_os_circuit::{open, LogStore, NodeId, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use tempfile::TempDir;

/// Opens a fresh store in its own temporary directory; the directory lives as long as the
/// guard the suite keeps.
struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let io = |e: &dyn std::error::Error| StorageError::IO {
            source: StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::error(e)),
        };
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let (log, sm) = open(dir.path().join("circuit.db")).await.map_err(|e| io(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(FreshStore) {
        panic!("storage suite: {e}");
    }
}
