//! Component health through the real daemon: checks that wait on the host run off the
//! async worker threads, so a slow runtime never stalls the API.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::Daemon;

#[test]
fn a_slow_runtime_check_does_not_stall_the_api() {
    // a "runc" whose --version takes two seconds; nothing else is asked of it here
    let mut d = Daemon::prepared("127.0.0.1");
    let slow = d.home_path().join("slow-runc");
    std::fs::write(&slow, "#!/bin/sh\nsleep 2\necho 'runc version 9.9'\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.set_config("runtime", serde_json::json!(slow));
    d.spawn();
    // more health checks at once than the daemon has worker threads (2)
    let checks: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/api/v1/monitor/health", d.url());
            let token = d.token();
            std::thread::spawn(move || {
                let r = ureq::get(&url).set("Authorization", &format!("Bearer {token}")).call();
                r.expect("monitor health answers").into_string().expect("a body")
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    ureq::get(&format!("{}/api/v1/health", d.url())).call().unwrap();
    let waited = t.elapsed();
    for c in checks {
        let body = c.join().unwrap();
        assert!(body.contains("slow-runc 9.9"), "{body}");
    }
    assert!(waited < Duration::from_millis(800), "the API waited {waited:?} behind runtime checks");
}
