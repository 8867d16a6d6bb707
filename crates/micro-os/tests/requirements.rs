//! The rule of `common::require`: a test runs when it has what it needs, fails when
//! something it needs is missing although `MICRO_OS_TEST_REQUIRE` declares it, and skips
//! (saying so) when it is missing and undeclared.

mod common;

use common::{decide, parse_declared, Need, Verdict};

/// A machine that has exactly `has`; `declared` as `MICRO_OS_TEST_REQUIRE` would say it.
fn check(needs: &[Need], has: &[Need], declared: &str, expect: &str) {
    let declared = parse_declared(declared).unwrap();
    let verdict = decide("t", needs, &declared, |n| has.contains(&n));
    let got = match &verdict {
        Verdict::Run => "run".to_string(),
        Verdict::Skip(line) => format!("skip: {line}"),
        Verdict::Fail(line) => format!("fail: {line}"),
    };
    assert!(
        got.starts_with(expect),
        "needs {needs:?}, has {has:?}, declared {declared:?}: got {got:?}, want {expect:?}…"
    );
}

#[test]
fn declared_and_missing_fails_undeclared_skips_present_runs() {
    use Need::*;
    // present: runs, declared or not
    check(&[Root, Runc], &[Root, Runc], "", "run");
    check(&[Root, Runc], &[Root, Runc], "root,runc", "run");
    check(&[], &[], "root,runc", "run");
    // missing and undeclared: skips, naming what is missing and what provides it
    check(&[Root, Runc], &[Root], "", "skip: SKIP t: needs runc (Debian package runc)");
    check(&[Runc, Busybox], &[], "", "skip: SKIP t: needs runc (Debian package runc), busybox (/bin/busybox from");
    // declared for something else: still a skip
    check(
        &[Qemu],
        &[],
        "root,runc",
        "skip: SKIP t: needs qemu (qemu-system-x86_64 from Debian package qemu-system-x86)",
    );
    // missing and declared: fails, naming only what was declared
    check(
        &[Root, Runc],
        &[Root],
        "runc",
        "fail: t cannot run: missing runc (Debian package runc); MICRO_OS_TEST_REQUIRE",
    );
    check(&[Runc, Qemu], &[], " runc , npm", "fail: t cannot run: missing runc (Debian package runc); ");
    check(&[Promtool], &[], "promtool", "fail: t cannot run: missing promtool (Debian package prometheus)");
}

#[test]
fn the_declaration_names_known_requirements_only() {
    assert_eq!(parse_declared(""), Ok(vec![]));
    assert_eq!(parse_declared("root, runc,,script"), Ok(vec![Need::Root, Need::Runc, Need::Script]));
    let e = parse_declared("root,kvm").unwrap_err();
    assert!(e.starts_with("MICRO_OS_TEST_REQUIRE names \"kvm\", which is unknown (known: root, runc, busybox,"), "{e}");
    for n in Need::ALL {
        assert_eq!(Need::parse(n.name()), Some(*n));
    }
}

#[test]
fn ci_declares_every_requirement_and_the_preflight_knows_them_all() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let line = ci
        .lines()
        .find_map(|l| l.trim().strip_prefix("export MICRO_OS_TEST_REQUIRE="))
        .expect(".ci/run exports MICRO_OS_TEST_REQUIRE");
    let declared = parse_declared(line).unwrap();
    // CI runs every test: a need it does not declare would let that test skip there
    for n in Need::ALL {
        assert!(declared.contains(n), ".ci/run does not declare {}: its tests would skip in CI", n.name());
    }
    // scripts/requirements.sh checks the same names before the build
    let preflight = std::fs::read_to_string(root.join("scripts/requirements.sh")).unwrap();
    for n in Need::ALL {
        assert!(
            preflight.contains(&format!("\n    {})", n.name())),
            "scripts/requirements.sh does not check {}",
            n.name()
        );
    }
}
