use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("image {0:?} not found (see `micro-os image ls`; build the base with `micro-os image build busybox`)")]
    ImageNotFound(String),
    #[error("image {0:?} already exists (remove it first with `micro-os image rm {0}`)")]
    ImageExists(String),
    #[error("{path}: {msg}")]
    BadImage { path: PathBuf, msg: String },
    #[error("runc {action} {id}: {msg}")]
    Runc { action: String, id: String, msg: String },
    #[error("oci spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error(
        "{what} is missing: neither {env} ({}) nor {} is a file ({install}, or set {env} to its path)",
        from_env.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "not set".into()),
        beside.display()
    )]
    CompanionMissing {
        what: &'static str,
        install: &'static str,
        env: &'static str,
        beside: PathBuf,
        from_env: Option<PathBuf>,
    },
    /// Bad input: a name, an address or a setting the caller must fix.
    #[error("{0}")]
    Invalid(String),
    /// The host lacks something (a kernel, a package); the message says what to install.
    #[error("{0}")]
    Missing(String),
    /// An operation failed on the host (a command, a mount, a spawn).
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path or action to an I/O error, so messages name what failed.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: what(), source })
    }
}
