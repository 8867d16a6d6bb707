/// What a driver reports. Bad input and a host that lacks a part are the caller's to fix;
/// the rest is a failure on the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec asks for something this driver cannot give (too little memory, …).
    #[error("{0}")]
    Invalid(String),
    /// The host lacks what the driver needs; the message says what to install.
    #[error("{0}")]
    Missing(String),
    #[error(transparent)]
    Runtime(#[from] micro_os_runtime::Error),
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
