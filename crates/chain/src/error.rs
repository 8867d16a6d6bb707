//! The crate's error type: what can go wrong outside of consensus.
//!
//! Key design decision: a block or transaction that breaks a rule is not an `Error` but a
//! [`Reject`] (a verdict with a code and a reason, see `validation`); `Error` is for the
//! store, the file system, a corrupt database and unknown names. `Error::Invalid` only wraps
//! a `Reject` for callers that want a single error type.

use std::path::PathBuf;

use crate::validation::Reject;

/// What went wrong, outside of a block or transaction breaking a rule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQLite chain state failed.
    #[error("chain store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A block, header or transaction broke a rule.
    #[error("invalid: {0}")]
    Invalid(#[from] Reject),
    /// `Params::by_name` was given a name it does not know.
    #[error("unknown network {name:?} (known: {known})")]
    UnknownNetwork {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// A file system operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The chain state on disk does not make sense (names the row or hash involved).
    #[error("corrupt chain state: {0}")]
    Corrupt(String),
}

impl Error {
    /// The verdict, when this error is a block, header or transaction breaking a rule.
    pub fn reject(&self) -> Option<&Reject> {
        match self {
            Error::Invalid(r) => Some(r),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::RejectCode;

    #[test]
    fn messages_are_lowercase_and_name_the_input() {
        let e = Error::UnknownNetwork { name: "moon".into(), known: "devnet, mainnet".into() };
        assert_eq!(e.to_string(), "unknown network \"moon\" (known: devnet, mainnet)");
        let e = Error::Io {
            path: "/nope/chain.db".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
        };
        assert_eq!(e.to_string(), "/nope/chain.db: not found");
        let e = Error::from(Reject::new(RejectCode::BadPow, "block 00ab: hash above target"));
        assert_eq!(e.to_string(), "invalid: bad-pow: block 00ab: hash above target");
        assert!(!e.to_string().ends_with('.'));
    }
}
