//! Monitoring end to end: samples of real containers and VMs, history and export, alerts,
//! the live view in a pseudo-terminal, and the Prometheus exposition checked by promtool.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Need};

/// A daemon that samples twice a second.
fn daemon(alerts: serde_json::Value) -> Daemon {
    let mut d = Daemon::prepared("127.0.0.1");
    d.set_config("monitor_interval_s", serde_json::json!(0.5));
    d.set_config("alerts", alerts);
    d.spawn();
    d
}

fn resources(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["monitor", "resources", "--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&d.ok(&all)).unwrap()
}

/// Waits until the latest sample of `name` satisfies `pred`.
fn sample_until(d: &Daemon, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = resources(d, &["--all"]);
        if let Some(s) = all.iter().find(|s| s["name"] == name) {
            if pred(s) {
                return s.clone();
            }
        }
        assert!(Instant::now() < deadline, "{name} never showed {what}: {all:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn cpu_memory_and_traffic_of_real_workloads_show() {
    if !common::require("cpu_memory_and_traffic_of_real_workloads_show", common::VMS) {
        return;
    }
    let d = daemon(serde_json::json!([]));
    let busy = "while :; do :; done";
    d.ok(&[
        "container",
        "create",
        "--name",
        "burner",
        "--image",
        "busybox",
        "--resources",
        "cpu=0.5",
        "--",
        "sh",
        "-c",
        busy,
    ]);
    d.ok(&["container", "start", "burner"]);
    let fill = "head -c 50331648 /dev/zero > /tmp/fill; sleep 600";
    d.ok(&[
        "container",
        "create",
        "--name",
        "hog",
        "--image",
        "busybox",
        "--resources",
        "memory=128M",
        "--",
        "sh",
        "-c",
        fill,
    ]);
    d.ok(&["container", "start", "hog"]);
    // traffic: a container on a VM sends to this test, listening on the host's address on
    // the test's own bridge
    d.ok(&["vm", "create", "--name", "talker-vm", "--memory", "128"]);
    d.ok(&["vm", "start", "talker-vm"]);
    let vm = d.vm("talker-vm");
    let addr = vm["address"].as_str().unwrap();
    let gateway = format!("{}.1", &addr[..addr.rfind('.').unwrap()]);
    let sink = std::net::TcpListener::bind((gateway.as_str(), 0)).unwrap();
    let port = sink.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = sink.accept() {
            let _ = std::io::copy(&mut conn, &mut std::io::sink());
        }
    });
    let send = format!("dd if=/dev/zero bs=1024 count=3000 2>/dev/null | nc {gateway} {port}; sleep 600");
    d.ok(&[
        "container",
        "create",
        "--name",
        "talker",
        "--image",
        "busybox",
        "--vm",
        "talker-vm",
        "--",
        "sh",
        "-c",
        &send,
    ]);
    d.ok(&["container", "start", "talker"]);

    // near its limit of half a core, and not above it
    let s = sample_until(&d, "burner", "CPU near its limit", |s| s["cpu_percent"].as_f64().unwrap() > 35.0);
    assert_eq!(s["cpu_limit_percent"], 50.0, "{s}");
    assert!(s["cpu_percent"].as_f64().unwrap() < 60.0, "over its limit: {s}");
    let s = sample_until(&d, "hog", "its 48 MiB", |s| s["memory_bytes"].as_u64().unwrap() > 45 << 20);
    assert_eq!(s["memory_limit_bytes"], 128u64 << 20, "{s}");
    assert!(s["memory_bytes"].as_u64().unwrap() < 100 << 20, "{s}");
    let s = sample_until(&d, "talker", "its traffic", |s| s["net_tx_bytes"].as_u64().unwrap() > 2 << 20);
    // at least a packet per 64 KiB, the largest segment the veth's offload makes (a CI
    // run counted 552 packets for 3 MB, so not one per 1500-byte frame)
    let (bytes, packets) = (s["net_tx_bytes"].as_u64().unwrap(), s["net_tx_packets"].as_u64().unwrap());
    assert!(packets >= bytes / 65536, "{s}");
    // the VM counts what runs in it
    let v = sample_until(&d, "talker-vm", "its traffic", |s| s["net_tx_bytes"].as_u64().unwrap() > 2 << 20);
    assert_eq!(v["memory_limit_bytes"], 128u64 << 20, "{v}");
    // filters: one container; a VM and what is placed on it
    let one = resources(&d, &["--container", "hog"]);
    assert_eq!(one.len(), 1);
    let on_vm = resources(&d, &["--vm", "talker-vm"]);
    let names: Vec<&str> = on_vm.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"talker") && names.contains(&"talker-vm"));
    // the host only with --all
    assert!(!resources(&d, &[]).iter().any(|s| s["kind"] == "host"));
    let host = resources(&d, &["--all"]).into_iter().find(|s| s["kind"] == "host").unwrap();
    assert!(host["load1"].is_number() && host["disk_total_bytes"].as_u64().unwrap() > 0, "{host}");
    let table = d.ok(&["monitor", "resources", "--all"]);
    assert!(table.contains("burner") && table.contains("CPU") && table.contains("host"), "{table}");
    // the history of one container, and its performance report
    let perf: serde_json::Value = serde_json::from_str(&d.ok(&[
        "monitor",
        "performance",
        "--container",
        "burner",
        "--ai-stats",
        "--format",
        "json",
    ]))
    .unwrap();
    assert!(perf["samples"].as_u64().unwrap() >= 2, "{perf}");
    assert!(perf["cpu_percent_max"].as_f64().unwrap() > 35.0, "{perf}");
    assert!(perf["ai_stats"].as_str().unwrap().contains("no AI modules"), "{perf}");
    d.fails(&["monitor", "resources", "--container", "nope"], 3);
}

#[test]
fn an_export_holds_exactly_the_samples_of_its_range() {
    let d = daemon(serde_json::json!([]));
    // the host is sampled without any workload
    let deadline = Instant::now() + Duration::from_secs(20);
    let history = loop {
        let h: Vec<serde_json::Value> =
            d.api("GET", "/monitor/history?from=1h&object=host").call().unwrap().into_json().unwrap();
        if h.len() >= 6 {
            break h;
        }
        assert!(Instant::now() < deadline, "too few samples: {}", h.len());
        std::thread::sleep(Duration::from_millis(300));
    };
    let ts: Vec<i64> = history.iter().map(|s| s["ts"].as_i64().unwrap()).collect();
    let (from, to) = (ts[1], ts[4]);
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    // every object's samples in [from, to], as the API has them
    let all: Vec<serde_json::Value> = d
        .api("GET", &format!("/monitor/history?from={}&to={}", iso(from), iso(to)))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert!(all.iter().all(|s| (from..=to).contains(&s["ts"].as_i64().unwrap())));
    let expected = all.len();
    assert!(expected >= 4, "{all:#?}");
    let dir = tempfile::tempdir().unwrap();
    let export = |format: &str, file: &str| {
        let out = dir.path().join(file);
        let (f, t) = (iso(from), iso(to));
        d.ok(&["monitor", "export", "--from", &f, "--to", &t, "--format", format, "--output", out.to_str().unwrap()]);
        std::fs::read_to_string(out).unwrap()
    };
    let text = export("csv", "range.csv");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("time,kind,id,name,cpu_percent,"), "{}", lines[0]);
    assert_eq!(lines.len() - 1, expected, "{text}");
    assert!(lines[1].starts_with(&iso(from)), "{}", lines[1]);
    assert!(lines.last().unwrap().starts_with(&iso(to)), "{text}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&export("json", "range.json")).unwrap();
    assert_eq!(rows, all);

    // bad input: one clear line, a usage exit, and no file left behind
    let out = dir.path().join("never.csv");
    let err = d.fails(
        &["monitor", "export", "--from", "2023-02-01", "--to", "2023-01-31", "--output", out.to_str().unwrap()],
        2,
    );
    assert!(err.contains("--from \"2023-02-01\" is after --to \"2023-01-31\""), "{err}");
    let err = d.fails(&["monitor", "export", "--from", "yesterday-ish", "--output", out.to_str().unwrap()], 2);
    assert!(err.contains("\"yesterday-ish\" is not a date"), "{err}");
    assert!(!out.exists());
    let err = d.fails(&["monitor", "export", "--from", "1h", "--output", "/no/such/dir/x.csv"], 2);
    assert!(err.contains("output /no/such/dir/x.csv cannot be written"), "{err}");
    let err = d.fails(&["monitor", "health", "--components", "runtime,warp-drive"], 2);
    assert!(err.contains("component \"warp-drive\" is unknown"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_alert_fires_when_a_container_is_killed_repeatedly_and_resolves_after() {
    if !common::require("an_alert_fires_when_a_container_is_killed_repeatedly_and_resolves_after", common::CONTAINERS) {
        return;
    }
    let rule = serde_json::json!([{
        "name": "crash-loop", "metric": "restarts", "above": 2, "increase_over_s": 8, "objects": "container/*"
    }]);
    let d = daemon(rule);
    d.ok(&[
        "container",
        "create",
        "--name",
        "flaky",
        "--image",
        "busybox",
        "--restart",
        "always",
        "--",
        "sleep",
        "600",
    ]);
    d.ok(&["container", "start", "flaky"]);
    // the rule watches growth within its window, from what it has seen: let it see 0
    sample_until(&d, "flaky", "a first sample", |s| s["restarts"] == 0);
    for i in 0..3 {
        let c = d.wait_for("flaky", "running", |c| c["state"] == "running" && c["restart_count"] == i);
        let pid = c["pid"].as_i64().unwrap() as i32;
        // the restart policy brings it back each time
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    d.wait_for("flaky", "restarted three times", |c| c["restart_count"] == 3 && c["state"] == "running");
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let o = d.cli(&["monitor", "health", "--format", "json"]);
        let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if !h["alerts"].as_array().unwrap().is_empty() {
            // a critical alert makes `monitor health` exit 1, for scripts
            assert_eq!(o.status.code(), Some(1));
            break h;
        }
        assert!(Instant::now() < deadline, "the alert never fired: {h:#}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let alert = &health["alerts"][0];
    assert_eq!((alert["rule"].as_str(), alert["object"].as_str()), (Some("crash-loop"), Some("container/flaky")));
    assert_eq!(health["status"], "critical");
    let text = String::from_utf8_lossy(&d.cli(&["monitor", "health"]).stdout).to_string();
    assert!(text.contains("crash-loop") && text.contains("container/flaky"), "{text}");
    // it stays one alert while it holds, and resolves once the restarts are out of the window
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h: serde_json::Value =
            serde_json::from_slice(&d.cli(&["monitor", "health", "--format", "json"]).stdout).unwrap();
        if h["alerts"].as_array().unwrap().is_empty() {
            assert_eq!(h["status"], "healthy", "{h:#}");
            break;
        }
        assert_eq!(h["alerts"].as_array().unwrap().len(), 1, "the alert repeated: {h:#}");
        assert!(Instant::now() < deadline, "the alert never resolved: {h:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // both ends are stored
    let metrics = d.api("GET", "/metrics").call().unwrap().into_string().unwrap();
    assert!(!metrics.is_empty());
    assert!(metrics.contains("micro_os_alerts_firing{severity=\"critical\"} 0"), "{metrics}");
    assert!(metrics.contains("micro_os_container_restarts_total{container=\"flaky\",vm=\"\"} 3"), "{metrics}");
}

#[test]
fn the_live_view_renders_in_a_terminal_and_quits_on_q() {
    if !common::require("the_live_view_renders_in_a_terminal_and_quits_on_q", &[Need::Script]) {
        return;
    }
    let d = daemon(serde_json::json!([]));
    std::thread::sleep(Duration::from_millis(1200));
    let cmd = format!("{} monitor resources --all --refresh 0.3", common::BIN);
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("MICRO_OS_HOME", d.home_path())
        .env("MICRO_OS_API", d.url())
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the live view did not stay up");
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let started = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "q did not end the live view");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("micro-os resources") && screen.contains("q quits"), "{screen}");
    assert!(screen.contains("host") && screen.contains("CPU"), "{screen}");
    // the alternate screen was entered and left, so the terminal is restored
    assert!(screen.contains("\x1b[?1049h") && screen.contains("\x1b[?1049l"), "{screen:?}");
}

#[test]
fn metrics_pass_promtool() {
    let d = daemon(serde_json::json!([]));
    std::thread::sleep(Duration::from_millis(1500));
    // where Prometheus looks by default, and under /api/v1; never without the token
    let root = ureq::get(&format!("{}/metrics", d.url()))
        .set("Authorization", &format!("Bearer {}", d.token()))
        .call()
        .unwrap();
    assert!(root.content_type().starts_with("text/plain"));
    let text = root.into_string().unwrap();
    assert!(text.contains("# TYPE micro_os_host_cpu_percent gauge"), "{text}");
    assert!(text.contains("# TYPE micro_os_host_network_receive_bytes_total counter"), "{text}");
    let v1 = d.api("GET", "/metrics").call().unwrap().into_string().unwrap();
    assert!(v1.contains("# TYPE micro_os_host_cpu_percent gauge"));
    let anon = ureq::get(&format!("{}/metrics", d.url())).call();
    assert!(matches!(anon, Err(ureq::Error::Status(401, _))));
    if !common::require("metrics_pass_promtool (its promtool check)", &[Need::Promtool]) {
        return;
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn self_checks_and_the_daemons_own_log() {
    if !common::require("self_checks_and_the_daemons_own_log", common::VMS) {
        return;
    }
    let d = daemon(serde_json::json!([]));
    let out = d.ok(&["test", "integration", "--components", "all"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "one line per component: {out}");
    let verdict = |c: &str| lines.iter().find(|l| l.split_whitespace().nth(1) == Some(c)).map(|l| &l[..4]);
    for c in ["api", "store", "runtime", "vms", "containers", "net", "monitor"] {
        assert_eq!(verdict(c), Some("PASS"), "{c}: {out}");
    }
    // nothing is configured for them yet: skipped, not passed
    for c in ["circuit", "chain", "ai"] {
        assert_eq!(verdict(c), Some("SKIP"), "{c}: {out}");
    }
    assert!(out.contains("not configured"), "{out}");
    let health = d.ok(&["monitor", "health", "--components", "ai", "--format", "json"]);
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["components"][0]["configured"], false, "{h}");
    // it cleans up after itself
    assert!(d.names().is_empty(), "{:?}", d.names());
    assert_eq!(d.ok(&["vm", "list", "--format", "json"]).trim(), "[]");
    let err = d.fails(&["test", "integration", "--components", "runtime,teleport"], 2);
    assert!(err.contains("component \"teleport\" is unknown"), "{err}");

    // cross-component checks, with a VM's agent and its P2P link
    d.ok(&["vm", "create", "--name", "linked", "--memory", "64"]);
    d.ok(&["vm", "start", "linked"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = d.cli(&["monitor", "integration", "--format", "json"]);
        let links: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let p2p = links.iter().find(|l| l["check"] == "host p2p -> vm linked").cloned();
        let agent = links.iter().find(|l| l["check"] == "daemon -> vm linked agent").cloned();
        if p2p.as_ref().is_some_and(|l| l["status"] == "healthy") {
            assert_eq!(agent.unwrap()["status"], "healthy");
            assert!(links.iter().any(|l| l["check"] == "api -> store" && l["status"] == "healthy"), "{links:#?}");
            assert!(o.status.success());
            break;
        }
        assert!(Instant::now() < deadline, "the VM's p2p link never became healthy: {links:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // P2P peers are sampled too: messages in the packet columns, the round trip as health_ms
    d.ok(&["net", "send", "--to", "linked", "--type", "PING", "--count", "3"]);
    let peer = d.vm("linked")["peer_id"].as_str().unwrap().to_string();
    let s = sample_until(&d, &peer, "the messages sent to it and a round trip", |s| {
        s["net_tx_packets"].as_u64() >= Some(3) && s["health_ms"].is_number()
    });
    assert_eq!(s["kind"], "peer");
    assert!(s["net_tx_bytes"].as_u64().unwrap() > 300, "{s}");
    assert!(!resources(&d, &[]).iter().any(|s| s["kind"] == "peer"), "peers only with --all");

    // the daemon's log by component: the self-test's VM start is runtime's, the p2p
    // layer's listening line is net's
    let runtime = d.ok(&["logs", "--component", "runtime"]);
    assert!(runtime.lines().all(|l| l.split_whitespace().nth(2) == Some("runtime")), "{runtime}");
    assert!(runtime.contains("micro-os daemon listening"), "{runtime}");
    let net = d.ok(&["logs", "--component", "net", "--level", "debug"]);
    assert!(net.contains("p2p listening on"), "{net}");
    assert!(!net.contains("micro-os daemon listening"), "{net}");
    let warn = d.ok(&["logs", "--component", "all", "--level", "error"]);
    assert!(warn.lines().all(|l| l.split_whitespace().nth(1) == Some("ERROR")), "{warn}");
    let last = d.ok(&["logs", "--tail", "2"]);
    assert_eq!(last.lines().count(), 2, "{last}");
    let err = d.fails(&["logs", "--component", "kernel"], 2);
    assert!(err.contains("component \"kernel\" is unknown"), "{err}");
    let err = d.fails(&["logs", "--level", "chatty"], 2);
    assert!(err.contains("level \"chatty\" is unknown"), "{err}");
}
