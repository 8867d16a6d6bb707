//! The agent's own command line. (Its work is tested end to end in crates/micro-os/tests,
//! inside real VMs: run outside one, it would take the host's /var/lib/micro-os and port.)
//! This test also makes `cargo test --workspace` build the binary those tests boot.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_micro-os-agent");

#[test]
fn the_agent_says_its_version_and_refuses_what_it_does_not_know() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("micro-os-agent {}\n", env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("micro-os-agent: unexpected argument \"--bogus\"\nusage: "), "{err}");
    let out = Command::new(BIN).arg("--control-dir").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a flag without its value was taken");
}
