//! Raft messages as a circuit member's network adapter decodes them: the state of a
//! request on `/micro-os/raft/1` (`network::Rpc`: circuit id and an externally tagged body
//! of openraft's `AppendEntriesRequest`, `VoteRequest`, a snapshot chunk or a forwarded
//! client call), as `Replicas::handle` reads it. Then what the member does with the
//! contents that is ours: the entries' commands applied to the key-value state machine
//! (`Kv::apply`, a pure function of the log) and a chunk's hex decoded and read as a
//! snapshot (`Applied`, as `install_snapshot` reads it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_os_circuit::network::{Body, ClientCall, Rpc};
use micro_os_circuit::{Applied, Kv, Response};
use openraft::EntryPayload;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = std::str::from_utf8(data) else { return };
    let Ok(rpc) = serde_json::from_str::<Rpc>(state) else { return };
    // what the sender would have sent for it decodes the same way
    let again = serde_json::to_string(&rpc).expect("a decoded rpc serialises");
    serde_json::from_str::<Rpc>(&again).unwrap_or_else(|e| panic!("{again} does not decode: {e}"));
    let mut kv = Kv::default();
    match rpc.body {
        Body::Append(req) => {
            for entry in &req.entries {
                if let EntryPayload::Normal(command) = &entry.payload {
                    check_apply(&mut kv, command);
                }
            }
        }
        Body::Snapshot(chunk) => {
            if let Ok(bytes) = hex::decode(&chunk.data) {
                if let Ok(applied) = serde_json::from_slice::<Applied>(&bytes) {
                    let _ = applied.kv.len();
                }
            }
        }
        Body::Client(ClientCall::Write(command)) => check_apply(&mut kv, &command),
        Body::Client(_) | Body::Vote(_) => {}
    }
});

/// Applies `command` and checks the answer against the map.
fn check_apply(kv: &mut Kv, command: &micro_os_circuit::Command) {
    match kv.apply(command) {
        Response::Stored { version, checksum } => {
            let key = command.key();
            let stored = kv.get(key).expect("a stored key is there");
            assert_eq!((stored.version, &stored.checksum), (version, &checksum));
        }
        Response::Deleted { .. } => assert!(kv.get(command.key()).is_none(), "a deleted key is gone"),
        _ => {}
    }
}
