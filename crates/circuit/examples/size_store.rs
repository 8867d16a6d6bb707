//! Size probe: the baseline plus this crate's store (SQLite, the state machine), without
//! the Raft engine. `size_store PATH` opens the store at PATH, applies one command and
//! prints the value and its resident set size.

use micro_os_circuit::{open, Command, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "size.db".into());
    let (_log, mut sm) = open(&path).await.expect("open the store");
    let next = sm.view().last_applied().map_or(1, |l| l.index + 1);
    let command = Command::Set { key: "k".into(), value: format!("v{next}") };
    let entry: Entry<TypeConfig> =
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), next), payload: EntryPayload::Normal(command) };
    sm.apply([entry]).await.expect("apply");
    println!("{}", serde_json::json!({ "path": path, "k": sm.view().get("k"), "rss": rss() }));
}

/// VmRSS, RssAnon and RssFile from /proc/self/status.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or("? ?");
        line.split_whitespace().nth(1).unwrap_or("?").to_owned()
    };
    format!("{} kB (anon {} kB, file {} kB)", field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}
