//! What survives the daemon: containers, their logs, and every acknowledged object.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{require, Daemon, CONTAINERS};

#[test]
fn containers_outlive_a_daemon_crash_and_are_readopted() {
    if !require("containers_outlive_a_daemon_crash_and_are_readopted", CONTAINERS) {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "ticker",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    d.ok(&["container", "create", "--name", "brief", "--image", "busybox", "--", "sh", "-c", "sleep 1; exit 7"]);
    d.ok(&["container", "start", "ticker"]);
    d.ok(&["container", "start", "brief"]);
    let pid = d.inspect("ticker")["pid"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    // while the daemon is down: ticker keeps going, brief ends
    std::thread::sleep(Duration::from_millis(1500));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "container died with the daemon");
    d.spawn();
    let t = d.inspect("ticker");
    assert_eq!(t["state"], "running");
    assert_eq!(t["pid"], pid);
    let b = d.inspect("brief");
    assert_eq!(b["state"], "exited", "{b:#}");
    assert_eq!(b["exit_code"], 7);
    // logs kept flowing while the daemon was down, and keep flowing now
    let n1: u64 = last_tick(&d.ok(&["container", "logs", "ticker", "--tail", "1"]));
    assert!(n1 >= 15, "log stalled during the outage: tick {n1}");
    std::thread::sleep(Duration::from_millis(500));
    let n2 = last_tick(&d.ok(&["container", "logs", "ticker", "--tail", "1"]));
    assert!(n2 > n1, "log stalled after re-adoption");
    // and the re-adopted container is fully controllable
    d.ok(&["container", "stop", "ticker", "--timeout", "0"]);
    assert_eq!(d.inspect("ticker")["exit_code"], 137);
}

fn last_tick(s: &str) -> u64 {
    s.trim().rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn sigterm_shuts_the_daemon_down_cleanly_and_leaves_containers_running() {
    if !require("sigterm_shuts_the_daemon_down_cleanly_and_leaves_containers_running", CONTAINERS) {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&["container", "create", "--name", "stay", "--image", "busybox", "--", "sleep", "60"]);
    d.ok(&["container", "start", "stay"]);
    // a follower holds a streaming response open; shutdown must not wait for it forever
    let mut follower = std::process::Command::new(common::BIN)
        .args(["container", "logs", "--follow", "stay"])
        .env("MICRO_OS_HOME", d.home.path())
        .env("MICRO_OS_API", d.url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = d.terminate();
    assert!(status.success(), "daemon exited with {status:?}: {}", d.log());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let _ = follower.kill();
    let _ = follower.wait();
    d.spawn();
    assert_eq!(d.inspect("stay")["state"], "running");
}

#[test]
fn kill9_during_a_burst_of_creates_loses_nothing_acknowledged() {
    if !require("kill9_during_a_burst_of_creates_loses_nothing_acknowledged", CONTAINERS) {
        return;
    }
    let mut d = Daemon::start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = d.url();
    let token = d.token();
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0..10_000 {
                let name = format!("burst-{i}");
                let r = ureq::post(&format!("{url}/api/v1/containers"))
                    .set("Authorization", &format!("Bearer {token}"))
                    .send_json(serde_json::json!({"name": name, "image": "busybox", "command": ["true"]}));
                match r {
                    Ok(resp) if resp.status() == 201 => acked.lock().unwrap().push(name),
                    _ => return i,
                }
            }
            10_000
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    d.kill9();
    let attempted = writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 10, "too few creates before the kill to mean anything: {}", acked.len());
    d.spawn();
    let names: std::collections::HashSet<String> = d.names().into_iter().collect();
    for n in &acked {
        assert!(names.contains(n), "acknowledged {n} was lost ({} acked, {attempted} attempted)", acked.len());
    }
    // at most the one in flight may exist without an acknowledgement
    assert!(names.len() <= acked.len() + 1, "{} stored, {} acked", names.len(), acked.len());
}
