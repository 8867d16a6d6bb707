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

/// The `id`s of `events ... --format json` output, in order.
fn event_ids(out: &str) -> Vec<i64> {
    out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap()).collect()
}

#[test]
fn the_event_stream_resumes_after_a_disconnect_and_a_daemon_crash_with_nothing_missed_or_repeated() {
    use std::io::BufRead;
    if !require(
        "the_event_stream_resumes_after_a_disconnect_and_a_daemon_crash_with_nothing_missed_or_repeated",
        CONTAINERS,
    ) {
        return;
    }
    let mut d = Daemon::start();
    // bad input: one line naming it, exit 2
    let e = d.fails(&["events", "--type", "pods"], 2);
    assert!(e.contains("\"pods\"") && e.contains("container, vm"), "{e}");

    // a follower from the start of the stream, over SSE
    let mut follower = std::process::Command::new(common::BIN)
        .args(["events", "--since", "0", "--type", "container", "--format", "json"])
        .env("MICRO_OS_HOME", d.home.path())
        .env("MICRO_OS_API", d.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                return;
            }
        }
    });
    d.ok(&["container", "create", "--name", "a", "--image", "busybox", "--", "sleep", "60"]);
    d.ok(&["container", "start", "a"]);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &serde_json::Value| e["name"] == "a" && e["action"] == "started") {
        let e = rx.recv_timeout(Duration::from_secs(10)).expect("the follower saw a's start");
        assert_eq!(e["type"], "container", "{e}");
        seen.push(e);
    }
    // the client goes away; events go on without it, through a crash of the daemon
    let _ = follower.kill();
    let _ = follower.wait();
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    let last = seen.last().unwrap()["id"].as_i64().unwrap();
    d.ok(&["container", "create", "--name", "b", "--image", "busybox", "--", "sleep", "60"]);
    d.ok(&["container", "start", "b"]);
    d.ok(&["container", "stop", "b", "--timeout", "0"]);
    d.ok(&["container", "rm", "b"]);
    d.kill9();
    d.spawn();
    d.ok(&["container", "create", "--name", "c", "--image", "busybox", "--", "true"]);

    // resumed after the last id it saw, the client gets each later event once
    let resumed =
        d.ok(&["events", "--since", &last.to_string(), "--type", "container", "--no-follow", "--format", "json"]);
    let mut ids: Vec<i64> = seen.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    ids.extend(event_ids(&resumed));
    let everything =
        event_ids(&d.ok(&["events", "--since", "0", "--type", "container", "--no-follow", "--format", "json"]));
    assert_eq!(ids, everything, "seen then resumed, against the whole stream");
    assert!(everything.windows(2).all(|w| w[0] < w[1]), "{everything:?}");
    for (name, action) in [("b", "created"), ("b", "started"), ("b", "exited"), ("b", "removed"), ("c", "created")] {
        let n = resumed
            .lines()
            .filter(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains(&format!("\"action\":\"{action}\"")))
            .count();
        assert_eq!(n, 1, "{name} {action} once in:\n{resumed}");
    }
    // the SSE header a browser's EventSource sends on reconnect does the same as --since
    let body = d
        .api("GET", "/events?type=container&follow=false")
        .set("Last-Event-ID", &last.to_string())
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let sse_ids: Vec<i64> = body.lines().filter_map(|l| l.strip_prefix("id: ")).map(|i| i.parse().unwrap()).collect();
    assert_eq!(sse_ids, event_ids(&resumed), "{body}");
    assert!(body.contains("event: container"), "{body}");
    d.ok(&["container", "rm", "--force", "a"]);
}

/// One step of the crash sweep's workload, and what it leaves once acknowledged.
#[derive(Debug, Clone, Copy)]
enum Step {
    Create(usize),
    Start(usize),
    Config(usize),
    Stop(usize),
    Remove(usize),
}

impl Step {
    fn args(self) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            Step::Create(i) => {
                s(&["container", "create", "--name", &format!("sweep-{i}"), "--image", "busybox", "--", "sleep", "600"])
            }
            Step::Start(i) => s(&["container", "start", &format!("sweep-{i}")]),
            Step::Config(i) => s(&["container", "config", &format!("sweep-{i}"), "--sync-mode", &format!("v{i}")]),
            Step::Stop(i) => s(&["container", "stop", &format!("sweep-{i}"), "--timeout", "0"]),
            Step::Remove(i) => s(&["container", "rm", &format!("sweep-{i}")]),
        }
    }
}

/// What the acknowledged steps say a container is.
#[derive(Debug, Clone, Default, PartialEq)]
struct Expected {
    exists: bool,
    running: bool,
    config: Option<String>,
}

fn apply(model: &mut Expected, step: Step) {
    match step {
        Step::Create(_) => *model = Expected { exists: true, ..Expected::default() },
        Step::Start(_) => model.running = true,
        Step::Config(i) => model.config = Some(format!("v{i}")),
        Step::Stop(_) => model.running = false,
        Step::Remove(_) => *model = Expected::default(),
    }
}

/// What the restarted daemon says the container is.
fn observed(d: &Daemon, i: usize) -> Expected {
    let name = format!("sweep-{i}");
    let o = d.cli(&["container", "inspect", &name, "--format", "json"]);
    if !o.status.success() {
        return Expected::default();
    }
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cfg = d.ok(&["container", "config", &name]);
    Expected {
        exists: true,
        running: c["state"] == "running",
        config: cfg
            .lines()
            .find_map(|l| l.split_once("sync-mode").map(|(_, v)| v.trim_matches([' ', '=', ':']).to_string())),
    }
}

/// The crash sweep: a scripted workload (create, start, config, stop, rm) cut by
/// `kill -9` of the daemon at every step in turn, at a different moment within each. After
/// each restart everything acknowledged is there, a step in flight either happened or did
/// not (never half), and runc's own state agrees with the store.
#[test]
fn a_kill9_at_every_step_of_a_workload_loses_nothing_acknowledged() {
    if !require("a_kill9_at_every_step_of_a_workload_loses_nothing_acknowledged", CONTAINERS) {
        return;
    }
    let mut d = Daemon::start();
    let containers = 3;
    let mut steps = Vec::new();
    for i in 0..containers {
        steps.extend([Step::Create(i), Step::Start(i), Step::Config(i), Step::Stop(i), Step::Start(i)]);
    }
    steps.extend((0..containers).flat_map(|i| [Step::Stop(i), Step::Remove(i)]));
    let mut models = vec![Expected::default(); containers];
    let (mut kills, mut acked_in_flight) = (0, 0);
    for (k, step) in steps.iter().copied().enumerate() {
        let i = match step {
            Step::Create(i) | Step::Start(i) | Step::Config(i) | Step::Stop(i) | Step::Remove(i) => i,
        };
        let before = models[i].clone();
        let mut after = before.clone();
        apply(&mut after, step);
        // the step, and a kill -9 0-40 ms into it
        let mut cli = std::process::Command::new(common::BIN)
            .args(step.args())
            .env("MICRO_OS_HOME", d.home.path())
            .env("MICRO_OS_API", d.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis((k as u64 * 7) % 41));
        d.kill9();
        kills += 1;
        let acked = cli.wait().unwrap().success();
        d.spawn();
        let seen = observed(&d, i);
        if acked {
            acked_in_flight += 1;
            assert_eq!(seen, after, "step {k} {step:?} was acknowledged, then lost at the kill");
        } else {
            assert!(seen == before || seen == after, "step {k} {step:?}: half done: {seen:?} (before {before:?})");
        }
        // finish an unacknowledged step, as a user would retry it
        if seen != after {
            d.ok(&step.args().iter().map(String::as_str).collect::<Vec<_>>());
        }
        models[i] = after;
        // every other container is as its acknowledged steps left it
        for (j, m) in models.iter().enumerate() {
            assert_eq!(&observed(&d, j), m, "container {j} after the kill at step {k} {step:?}");
        }
    }
    // runc's state agrees: nothing left behind of the removed containers
    let runc = std::process::Command::new("runc")
        .args(["--root", &d.home.path().join("runc").display().to_string(), "list", "-q"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&runc.stdout).trim().to_string();
    assert!(left.is_empty(), "runc still knows containers after every rm: {left}");
    assert!(d.names().is_empty(), "{:?}", d.names());
    eprintln!("crash sweep: {kills} kills, {acked_in_flight} steps acknowledged just before a kill, nothing lost");
}

/// Unmounts a test's tmpfs when dropped (after the daemon that used it).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A full disk: the daemon's home on a small tmpfs, filled up. Writes are refused with a
/// clear line, the daemon keeps answering, and after a `kill -9` and room again nothing
/// that was acknowledged before is missing.
#[test]
fn a_full_disk_gives_clear_errors_and_loses_nothing_committed() {
    if !require("a_full_disk_gives_clear_errors_and_loses_nothing_committed", CONTAINERS) {
        return;
    }
    let mut d = Daemon::prepared("127.0.0.1");
    let home = d.home.path().to_path_buf();
    let config = std::fs::read(home.join("config.json")).unwrap();
    nix::mount::mount(Some("tmpfs"), &home, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=64m")).unwrap();
    let _unmount = Unmount(home.clone());
    std::fs::write(home.join("config.json"), config).unwrap();
    d.ok(&["init"]);
    d.spawn();
    let names: Vec<String> = (0..5).map(|i| format!("kept-{i}")).collect();
    for n in &names {
        d.ok(&["container", "create", "--name", n, "--image", "busybox", "--", "sleep", "600"]);
    }
    d.ok(&["container", "start", "kept-0"]);
    // fill what is left
    let filler = home.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = Vec::new();
    for i in 0..20 {
        let name = format!("more-{i}");
        let o = d.cli(&["container", "create", "--name", &name, "--image", "busybox", "--", "sleep", "600"]);
        if !o.status.success() {
            refused.push(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
    }
    assert!(!refused.is_empty(), "nothing was refused on a full disk");
    for e in &refused {
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.contains("full") || e.contains("space"), "the error says the disk is full: {e}");
    }
    // the daemon still answers reads
    assert!(d.names().contains(&"kept-4".to_string()));
    d.kill9();
    std::fs::remove_file(&filler).unwrap();
    d.spawn();
    let now: std::collections::HashSet<String> = d.names().into_iter().collect();
    for n in &names {
        assert!(now.contains(n), "acknowledged {n} was lost on the full disk");
    }
    assert_eq!(d.inspect("kept-0")["state"], "running");
    // and with room again, it works
    d.ok(&["container", "create", "--name", "after", "--image", "busybox", "--", "true"]);
    eprintln!("full disk: {} creates refused with: {}", refused.len(), refused[0]);
    // the daemon (which cleans up through the home) goes before its tmpfs does
    drop(d);
}
