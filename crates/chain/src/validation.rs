//! placeholder
use std::fmt;

/// Why a block, header or transaction was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    BadPow,
}
impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bad-pow")
    }
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Reject {
    pub code: RejectCode,
    pub reason: String,
}
impl Reject {
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Self {
        Reject { code, reason: reason.into() }
    }
}
