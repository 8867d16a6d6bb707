//! What can go wrong in the AI layer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key or value out of its schema; the message names both.
    #[error("{0}")]
    Config(String),
    /// Training could not run on the data given.
    #[error("{0}")]
    Data(String),
    /// A model could not be fitted, used or (de)serialised.
    #[error("model: {0}")]
    Model(String),
    #[error("model store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model file {path} does not parse: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    /// A module or scope name that is not safe as a path component.
    #[error("{what} {name:?} is not a valid name (letters, digits, '_', '.' and '-', not starting with '.')")]
    Name { what: &'static str, name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
