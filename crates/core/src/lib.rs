//! Domain types of micro-os: containers, their specs and lifecycle, templates and the
//! small value types users type (sizes, resource lists, port maps, restart policies).
//!
//! Design decision: this crate does no I/O. Every parser here returns a typed
//! [`ValidationError`] whose message names the input and how to fix it, so the CLI, the
//! API and the daemon all reject bad input with the same words.

pub mod circuit;
pub mod container;
pub mod error;
pub mod health;
pub mod id;
pub mod metrics;
pub mod net;
pub mod port;
pub mod resources;
pub mod restart;
pub mod size;
pub mod template;
pub mod vm;

pub use circuit::{Circuit, CircuitMember, CircuitType};
pub use container::{Container, ContainerSpec, ContainerState, ReplicaView, Transition};
pub use error::ValidationError;
pub use health::{HealthCheck, HealthProbe, HealthState, HealthStatus};
pub use port::{ContainerNetwork, PortMapping, Protocol, PublishMode};
pub use resources::Resources;
pub use restart::RestartPolicy;
pub use size::Size;
pub use template::{Template, Workload};
pub use vm::{AgentStatus, Driver, Vm, VmSpec, VmState};

/// OpenAPI schema of a type that travels as one scalar (a string or a number).
#[macro_export]
#[doc(hidden)]
macro_rules! scalar_schema {
    ($ty:ty, $kind:ident, $desc:literal $(, pattern = $pattern:literal)?) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::new(utoipa::openapi::Type::$kind))
                    .description(Some($desc))
                    $(.pattern(Some($pattern)))?
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
}

/// Names of containers, images and templates: what Docker accepts, so names
/// survive being used as directory names, cgroup names and runc ids.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(format!(
            "{kind} name {name:?} is not valid (use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["eth-node-1", "a", "my_node.2"] {
            assert!(validate_name("container", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(64)] {
            let err = validate_name("container", bad).unwrap_err();
            assert!(err.to_string().contains("container name"), "{err}");
        }
    }
}
