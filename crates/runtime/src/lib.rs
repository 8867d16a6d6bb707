//! The resource-management layer: images, OCI bundles, runc, cgroups and the
//! per-container monitor (the shim).
//!
//! Design decision: every running container has its own small monitor process — the
//! `micro-os shim` subcommand, see [`shim`] — that holds the container's stdio, writes
//! its log, proxies its published ports and records its exit status in the container's
//! state directory. The shim is a subreaper re-parented to init, so containers outlive
//! the daemon; the daemon only reads the state files the shim leaves and talks to runc.

pub mod boot;
pub mod bundle;
pub mod cgroup;
pub mod error;
pub mod fabric;
pub mod image;
pub mod logs;
pub mod netns;
pub mod pidwait;
pub mod procfs;
pub mod runc;
pub mod shim;
pub mod workload;

pub use error::{Context, Error, Result};
