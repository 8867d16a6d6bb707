//! The replicated key-value state and the pure function that applies a command to it.
//!
//! Nothing here does I/O, reads a clock or draws a random number: the same commands in the
//! same order give the same state and the same responses on every member.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A change to the replicated state, as it travels in a Raft log entry: the `StateOp` the
/// API and the daemon speak, so a request reaches the log without a translation.
pub use micro_os_core::circuit::StateOp as Command;

/// What applying one log entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// A `Set` or a successful `CompareAndSet`: the key's new version and the hex sha256 of
    /// its value (the version and checksum of the spec's SYNC payload).
    Stored { version: u64, checksum: String },
    /// A `Delete` removed the key, which was at `version`.
    Deleted { version: u64 },
    /// A `CompareAndSet` whose expected version was not the key's `current` one (0: absent).
    Conflict { current: u64 },
    /// A `Delete` of a key that does not exist.
    NotFound,
    /// A blank or membership entry: nothing for a client.
    Empty,
}

/// One key's value with its version and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub value: String,
    /// Counts the writes to this key since it was (re)created, starting at 1.
    pub version: u64,
    /// Hex sha256 of `value`.
    pub checksum: String,
}

impl Stored {
    fn new(value: String, version: u64) -> Stored {
        let checksum = checksum(&value);
        Stored { value, version, checksum }
    }
}

/// Hex sha256 of a value, the form `micro_os_net::Payload` carries.
pub fn checksum(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// What one command did to one key, so the store can write just that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Put(String, Stored),
    Remove(String),
}

/// The replicated map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    entries: BTreeMap<String, Stored>,
}

impl Kv {
    pub fn get(&self, key: &str) -> Option<&Stored> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies one command and says what it answered.
    pub fn apply(&mut self, command: &Command) -> Response {
        self.apply_change(command).0
    }

    pub(crate) fn insert_stored(&mut self, key: String, stored: Stored) {
        self.entries.insert(key, stored);
    }

    /// Applies one command; also returns the change to persist, if any.
    pub(crate) fn apply_change(&mut self, command: &Command) -> (Response, Option<Change>) {
        match command {
            Command::Set { key, value } => self.put(key, value),
            Command::Delete { key } => match self.entries.remove(key) {
                Some(old) => (Response::Deleted { version: old.version }, Some(Change::Remove(key.clone()))),
                None => (Response::NotFound, None),
            },
            Command::CompareAndSet { key, expected_version, value } => {
                let current = self.entries.get(key).map_or(0, |s| s.version);
                if current == *expected_version {
                    self.put(key, value)
                } else {
                    (Response::Conflict { current }, None)
                }
            }
        }
    }

    fn put(&mut self, key: &str, value: &str) -> (Response, Option<Change>) {
        let version = self.entries.get(key).map_or(1, |s| s.version + 1);
        let stored = Stored::new(value.to_owned(), version);
        let response = Response::Stored { version, checksum: stored.checksum.clone() };
        self.entries.insert(key.to_owned(), stored.clone());
        (response, Some(Change::Put(key.to_owned(), stored)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::Set { key: key.into(), value: value.into() }
    }
    fn cas(key: &str, expected_version: u64, value: &str) -> Command {
        Command::CompareAndSet { key: key.into(), expected_version, value: value.into() }
    }
    fn del(key: &str) -> Command {
        Command::Delete { key: key.into() }
    }
    fn stored(version: u64, value: &str) -> Response {
        Response::Stored { version, checksum: checksum(value) }
    }

    /// Applies `commands` in order to an empty map and compares every response.
    fn check(steps: &[(Command, Response)]) -> Kv {
        let mut kv = Kv::default();
        for (i, (command, want)) in steps.iter().enumerate() {
            assert_eq!(&kv.apply(command), want, "step {i}: {command:?}");
        }
        kv
    }

    #[test]
    fn checksum_is_hex_sha256_of_the_value() {
        // sha256("abc"), FIPS 180-2 appendix B.1
        assert_eq!(checksum("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn versions_count_writes_per_key() {
        let kv = check(&[
            (set("a", "1"), stored(1, "1")),
            (set("a", "2"), stored(2, "2")),
            (set("b", "x"), stored(1, "x")),
            (set("a", "3"), stored(3, "3")),
        ]);
        assert_eq!(kv.get("a").map(|s| (s.value.as_str(), s.version)), Some(("3", 3)));
        assert_eq!(kv.get("a").unwrap().checksum, checksum("3"));
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn compare_and_set_succeeds_only_on_the_current_version() {
        let kv = check(&[
            (cas("k", 1, "v"), Response::Conflict { current: 0 }),
            (cas("k", 0, "v"), stored(1, "v")),
            (cas("k", 0, "w"), Response::Conflict { current: 1 }),
            (cas("k", 2, "w"), Response::Conflict { current: 1 }),
            (cas("k", 1, "w"), stored(2, "w")),
        ]);
        assert_eq!(kv.get("k").unwrap().value, "w");
    }

    #[test]
    fn a_failed_compare_and_set_changes_nothing() {
        let mut kv = check(&[(set("k", "v"), stored(1, "v"))]);
        let before = kv.clone();
        assert_eq!(kv.apply_change(&cas("k", 7, "w")), (Response::Conflict { current: 1 }, None));
        assert_eq!(kv, before);
    }

    #[test]
    fn delete_removes_and_a_new_set_starts_over() {
        let kv = check(&[
            (del("k"), Response::NotFound),
            (set("k", "v"), stored(1, "v")),
            (set("k", "w"), stored(2, "w")),
            (del("k"), Response::Deleted { version: 2 }),
            (del("k"), Response::NotFound),
            (cas("k", 2, "x"), Response::Conflict { current: 0 }),
            (set("k", "y"), stored(1, "y")),
        ]);
        assert_eq!(kv.get("k").unwrap().version, 1);
    }

    #[test]
    fn the_same_commands_give_the_same_state() {
        let commands = [set("a", "1"), cas("a", 1, "2"), del("b"), set("b", "3"), del("a"), cas("c", 0, "4")];
        let (mut x, mut y) = (Kv::default(), Kv::default());
        let rx: Vec<_> = commands.iter().map(|c| x.apply(c)).collect();
        let ry: Vec<_> = commands.iter().map(|c| y.apply(c)).collect();
        assert_eq!(rx, ry);
        assert_eq!(x, y);
        assert_eq!(x.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn commands_and_responses_have_a_stable_json_form() {
        let json = serde_json::to_string(&cas("k", 3, "v")).unwrap();
        assert_eq!(json, r#"{"op":"compare_and_set","key":"k","expected_version":3,"value":"v"}"#);
        let json = serde_json::to_string(&Response::Conflict { current: 3 }).unwrap();
        assert_eq!(json, r#"{"result":"conflict","current":3}"#);
    }
}
