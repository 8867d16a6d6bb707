//! The daemon's errors, by what the caller can do about them. The one place they become
//! HTTP statuses is `From<Error> for ApiError` below; the CLI turns statuses into exit
//! codes (`cli::client`).

use micro_os_api::{ApiError, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: the request names something wrong or malformed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the object's state (or another object) is in the way.
    #[error("{0}")]
    Conflict(String),
    /// A conflict of a VM that does not run (or whose agent is not connected), found
    /// before anything was sent to it: another member of a circuit may take the request.
    #[error("{0}")]
    NotRunning(String),
    /// Another host of the fabric could not be reached: nothing was sent to it.
    #[error("{0}")]
    Unreached(String),
    /// Something failed on the host; not the caller's fault.
    #[error("{0}")]
    Internal(String),
    /// A part the request needs cannot serve it now (a circuit without a leader or a
    /// quorum); the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A valid request for what this build does not have (answered 501).
    #[error("{0}")]
    NotBuilt(String),
    #[error(transparent)]
    Store(#[from] micro_os_store::Error),
    #[error(transparent)]
    Runtime(#[from] micro_os_runtime::Error),
    #[error(transparent)]
    Driver(#[from] micro_os_vmm::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the caller can do about an error: the class its status and exit code follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Invalid,
    NotFound,
    Conflict,
    Internal,
    Unavailable,
    NotBuilt,
}

impl Error {
    pub fn invalid(m: impl Into<String>) -> Self {
        Error::Invalid(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Error::NotFound(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Error::Conflict(m.into())
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Error::Internal(m.into())
    }

    pub fn class(&self) -> Class {
        use micro_os_runtime::Error as R;
        use micro_os_vmm::Error as V;
        match self {
            Error::Invalid(_) => Class::Invalid,
            Error::NotFound(_) => Class::NotFound,
            Error::Conflict(_) | Error::NotRunning(_) => Class::Conflict,
            Error::Internal(_) => Class::Internal,
            Error::Unavailable(_) | Error::Unreached(_) => Class::Unavailable,
            Error::NotBuilt(_) => Class::NotBuilt,
            Error::Store(micro_os_store::Error::Conflict { .. }) => Class::Conflict,
            Error::Store(_) => Class::Internal,
            Error::Runtime(r) | Error::Driver(V::Runtime(r)) => match r {
                R::ImageNotFound(_) => Class::NotFound,
                R::ImageExists(_) => Class::Conflict,
                R::BadImage { .. } | R::Invalid(_) => Class::Invalid,
                // a part the host lacks, found while working: the host's problem, not the caller's
                _ => Class::Internal,
            },
            Error::Driver(V::Invalid(_)) => Class::Invalid,
            Error::Driver(V::Missing(_) | V::Failed(_)) => Class::Internal,
        }
    }

    /// A driver's verdict on a spec before anything is made: what it refuses and what
    /// the host lacks for it are both reasons to refuse the request (400), with the fix.
    pub fn refused(e: micro_os_vmm::Error) -> Error {
        match e {
            micro_os_vmm::Error::Invalid(m) | micro_os_vmm::Error::Missing(m) => Error::Invalid(m),
            micro_os_vmm::Error::Runtime(micro_os_runtime::Error::Missing(m)) => Error::Invalid(m),
            other => Error::Driver(other),
        }
    }

    /// The same error with what it concerns in front (`containers[2] ("web"): …`).
    pub fn within(self, what: impl std::fmt::Display) -> Error {
        let m = format!("{what}: {self}");
        match self.class() {
            Class::Invalid => Error::Invalid(m),
            Class::NotFound => Error::NotFound(m),
            Class::Conflict => Error::Conflict(m),
            Class::Internal => Error::Internal(m),
            Class::Unavailable => Error::Unavailable(m),
            Class::NotBuilt => Error::NotBuilt(m),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let kind = match e.class() {
            Class::Invalid => ErrorKind::BadRequest,
            Class::NotFound => ErrorKind::NotFound,
            Class::Conflict => ErrorKind::Conflict,
            Class::Internal => ErrorKind::Internal,
            Class::Unavailable => ErrorKind::Unavailable,
            Class::NotBuilt => ErrorKind::NotImplemented,
        };
        let message = match &e {
            Error::Store(micro_os_store::Error::Conflict { kind, name }) => {
                format!("{kind} {name:?} already exists (pick another name or remove it first)")
            }
            other => other.to_string(),
        };
        ApiError::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: Error, status: u16) {
        let text = e.to_string();
        let api = ApiError::from(e);
        assert_eq!(api.kind.status().as_u16(), status, "{text}");
    }

    #[test]
    fn classes_map_to_statuses() {
        check(Error::invalid("cpu \"x\" is not a number"), 400);
        check(Error::not_found("vm \"a\" not found"), 404);
        check(Error::conflict("container \"a\" is not paused"), 409);
        check(Error::internal("runc died"), 500);
        check(Error::Unavailable("circuit \"c\": no quorum".into()), 503);
        // a failed build of boot files is the host's failure, not bad input
        check(Error::Runtime(micro_os_runtime::Error::Failed("cpio failed to write the initramfs".into())), 500);
        check(Error::Driver(micro_os_vmm::Error::Runtime(micro_os_runtime::Error::Failed("ip: busy".into()))), 500);
        check(Error::Runtime(micro_os_runtime::Error::Invalid("image name \"A B\" is not valid".into())), 400);
        check(Error::Runtime(micro_os_runtime::Error::ImageNotFound("x".into())), 404);
        // a host part missing while starting is the host's failure; before create, a refusal
        check(Error::Driver(micro_os_vmm::Error::Missing("install iproute2".into())), 500);
        check(Error::Runtime(micro_os_runtime::Error::Missing("no kernel in /boot".into())), 500);
        check(Error::refused(micro_os_vmm::Error::Missing("install qemu-system-x86".into())), 400);
        check(Error::refused(micro_os_vmm::Error::Runtime(micro_os_runtime::Error::Missing("no kernel".into()))), 400);
        check(Error::refused(micro_os_vmm::Error::Failed("probe".into())), 500);
        check(Error::Store(micro_os_store::Error::Conflict { kind: "vm".into(), name: "a".into() }), 409);
        check(Error::conflict("x").within("containers[1] (\"b\")"), 409);
    }
}
