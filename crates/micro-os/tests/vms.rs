//! Sandbox VMs end to end: their own address on the VM bridge, limits that bind what
//! runs in them, pause, graceful and forced stop, re-adoption.

mod common;

use std::time::{Duration, Instant};

use common::{require, Daemon, Need, QEMU, VMS};

#[test]
fn two_vms_reach_each_other_and_not_the_host_api() {
    if !require("two_vms_reach_each_other_and_not_the_host_api", VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "vm-a", "--memory", "128", "--cpu", "1"]);
    d.ok(&["vm", "create", "--name", "vm-b", "--memory", "128", "--cpu", "0.5"]);
    let out = d.ok(&["vm", "start", "vm-a"]);
    assert!(out.contains("agent ready"), "{out}");
    d.ok(&["vm", "start", "--name", "vm-b"]);
    let (a, b) = (d.vm("vm-a"), d.vm("vm-b"));
    assert_eq!(a["agent"], "ready");
    assert!(a["peer_id"].as_str().unwrap().starts_with("12D3KooW"), "{a}");
    assert_ne!(a["peer_id"], b["peer_id"]);
    assert_ne!(a["address"], b["address"]);
    let b_addr = b["address"].as_str().unwrap().to_string();
    let gateway = {
        let a = a["address"].as_str().unwrap();
        format!("{}.1", &a[..a.rfind('.').unwrap()])
    };
    // a web server on vm-b; a client on vm-a reaches it by vm-b's address
    d.ok(&[
        "container",
        "create",
        "--name",
        "srv",
        "--vm",
        "vm-b",
        "--image",
        "busybox",
        "--",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    d.ok(&["container", "start", "srv"]);
    std::thread::sleep(Duration::from_millis(300));
    let script = format!(
        "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; \
         printf 'GET /group HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {b_addr} 80 | tail -1; \
         printf 'GET /api/v1/health HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {gateway} {port} && echo HOST-API-REACHED; \
         printf 'GET /api/v1/health HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 {port} && echo HOST-API-REACHED; true",
        port = d.port
    );
    let o = d.cli(&["container", "run", "--rm", "--vm", "vm-a", "--image", "busybox", "--", "sh", "-c", &script]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("inet {}", a["address"].as_str().unwrap())),
        "container does not have vm-a's address: {out}"
    );
    assert!(out.contains("nogroup:x:65534:"), "vm-a could not reach vm-b's web server: {out}");
    assert!(!out.contains("HOST-API-REACHED"), "a VM reached the host API: {out}");
    // `vm rm` answers once the host side is gone (a daemon killed right after leaks nothing)
    d.ok(&["container", "rm", "--force", "srv"]);
    let id = b["id"].as_str().unwrap();
    let netns = format!("/run/netns/mos-{}", &id[..12]);
    assert!(std::path::Path::new(&netns).exists());
    d.ok(&["vm", "rm", "--force", "vm-b"]);
    assert!(!std::path::Path::new(&netns).exists(), "{netns} outlived `vm rm`");
}

#[test]
fn vm_memory_limit_bounds_what_runs_in_it() {
    if !require("vm_memory_limit_bounds_what_runs_in_it", VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "small", "--memory", "48"]);
    d.ok(&["vm", "create", "--name", "other", "--memory", "64"]);
    d.ok(&["vm", "start", "small"]);
    d.ok(&["vm", "start", "other"]);
    d.ok(&["container", "create", "--name", "steady", "--vm", "other", "--image", "busybox", "--", "sleep", "60"]);
    d.ok(&["container", "start", "steady"]);
    // no container limit: only the VM's 48 MiB bounds it
    d.ok(&[
        "container",
        "create",
        "--name",
        "hog",
        "--vm",
        "small",
        "--image",
        "busybox",
        "--",
        "awk",
        "BEGIN{s=\"x\"; while(1){s=s s}}",
    ]);
    d.ok(&["container", "start", "hog"]);
    let c = d.wait_for("hog", "exit", |c| c["state"] == "exited");
    assert_eq!(c["exit_code"], 137, "{c:#}");
    assert_eq!(d.vm("small")["state"], "running", "the VM itself went down");
    assert_eq!(d.vm("other")["agent"], "ready");
    assert_eq!(d.inspect("steady")["state"], "running", "the other VM was touched");
    // a container cannot start on a stopped VM
    d.ok(&["vm", "stop", "small", "--force"]);
    let err = d.fails(&["container", "start", "hog"], 4);
    assert!(err.contains("start the vm first"), "{err}");
}

#[test]
fn pause_freezes_the_whole_vm() {
    if !require("pause_freezes_the_whole_vm", VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "p", "--memory", "64"]);
    d.ok(&["vm", "start", "p"]);
    d.ok(&[
        "container",
        "create",
        "--name",
        "counter",
        "--vm",
        "p",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done",
    ]);
    d.ok(&["container", "start", "counter"]);
    std::thread::sleep(Duration::from_millis(500));
    d.ok(&["vm", "pause", "p"]);
    assert_eq!(d.vm("p")["state"], "paused");
    d.fails(&["vm", "pause", "p"], 4);
    let before = d.ok(&["container", "logs", "counter"]).lines().count();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.ok(&["container", "logs", "counter"]).lines().count(), before, "counter ran in a paused VM");
    d.ok(&["vm", "resume", "p"]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(d.ok(&["container", "logs", "counter"]).lines().count() > before + 3, "counter did not continue");
    assert_eq!(d.vm("p")["agent"], "ready");
}

#[test]
fn stop_is_graceful_unless_forced() {
    if !require("stop_is_graceful_unless_forced", VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "g", "--memory", "64"]);
    d.ok(&["vm", "start", "g"]);
    let t = Instant::now();
    d.ok(&["vm", "stop", "g"]);
    let v = d.vm("g");
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["exit_code"], 0, "the agent did not exit cleanly: {v}");
    assert!(t.elapsed() < Duration::from_secs(5), "graceful stop took {:?}", t.elapsed());
    let console =
        std::fs::read_to_string(d.home.path().join("vms").join(v["id"].as_str().unwrap()).join("console.log")).unwrap();
    assert!(console.contains("stopped (asked by the daemon)"), "{console}");
    d.ok(&["vm", "start", "g"]);
    let t = Instant::now();
    d.ok(&["vm", "stop", "g", "--force"]);
    assert!(t.elapsed() < Duration::from_secs(2), "forced stop took {:?}", t.elapsed());
    assert_eq!(d.vm("g")["exit_code"], 137);
    // restartable, with the same address and identity
    let before = d.vm("g");
    let out = d.ok(&["vm", "start", "g"]);
    assert!(out.contains("agent ready"), "a restarted VM's agent: {out}");
    let after = d.vm("g");
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["peer_id"], before["peer_id"]);
}

#[test]
fn vms_outlive_a_daemon_crash() {
    if !require("vms_outlive_a_daemon_crash", VMS) {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&["vm", "create", "--name", "durable", "--memory", "64"]);
    d.ok(&["vm", "start", "durable"]);
    let pid = d.vm("durable")["pid"].as_u64().unwrap();
    d.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the VM died with the daemon");
    d.spawn();
    let v = d.vm("durable");
    assert_eq!(v["state"], "running");
    assert_eq!(v["pid"], pid);
    // the agent reconnects to the new daemon and reports again
    let since = v["last_report"].as_str().unwrap_or("").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = d.vm("durable");
        if v["last_report"].as_str().unwrap_or("") > since.as_str() && v["agent"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "agent did not report to the new daemon: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    d.ok(&["vm", "stop", "durable"]);
    assert_eq!(d.vm("durable")["exit_code"], 0);
}

#[test]
fn bad_vm_input_is_refused_and_changes_nothing() {
    if !require("bad_vm_input_is_refused_and_changes_nothing", &[Need::Busybox]) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "taken", "--memory", "64"]);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["vm", "create", "--name", "a", "--memory", "0"], 2, "memory 0 MiB is too small"),
        (&["vm", "create", "--name", "a", "--memory", "99999999"], 2, "more than this host has"),
        (&["vm", "create", "--name", "a", "--memory", "64", "--cpu", "64"], 2, "cpu 64"),
        (
            &["vm", "create", "--name", "a", "--memory", "64", "--cpu", "0.0000001"],
            2,
            "cpu 0.0000001 is below the minimum 0.01 (try 0.5 or 2)",
        ),
        (&["vm", "create", "--name", "a", "--memory", "64", "--image", "nope"], 3, "image \"nope\" not found"),
        (&["vm", "create", "--name", "a", "--memory", "64", "--driver", "xen"], 2, "driver \"xen\" is unknown"),
        (&["vm", "create", "--name", "taken", "--memory", "64"], 4, "already exists"),
        (&["vm", "create", "--name", "a"], 2, "--memory"),
        (&["vm", "start", "ghost"], 3, "vm \"ghost\" not found"),
        (&["vm", "pause", "taken"], 4, "cannot pause vm \"taken\": it is created"),
        (&["container", "create", "--name", "c", "--vm", "ghost", "--image", "busybox"], 3, "vm \"ghost\" not found"),
    ];
    for (args, code, needle) in cases {
        let err = d.fails(args, *code);
        assert!(err.contains(needle), "micro-os {}: {err:?} lacks {needle:?}", args.join(" "));
    }
    let file = d.home.path().join("vm_definitions.json");
    std::fs::write(&file, "[{\"name\": \"x\", \"memory\": 64},").unwrap();
    let err = d.fails(&["vm", "create", "--from-file", file.to_str().unwrap()], 2);
    assert!(err.contains("is not valid"), "{err}");
    std::fs::write(&file, r#"[{"name": "x1", "memory": 64}, {"name": "x2", "memory": 0}]"#).unwrap();
    let err = d.fails(&["vm", "create", "--from-file", file.to_str().unwrap()], 2);
    assert!(err.contains("vms[1]"), "{err}");
    // an unknown key is named, with the VM it is in
    std::fs::write(&file, r#"{"vms": [{"name": "x1", "memory": 64}, {"name": "x2", "memory": 64, "memroy": 3}]}"#)
        .unwrap();
    let err = d.fails(&["vm", "create", "--from-file", file.to_str().unwrap()], 2);
    assert!(err.contains("vms[1]: unknown field `memroy`"), "{err}");
    std::fs::write(&file, r#"{"vms": [], "extra": 1}"#).unwrap();
    let err = d.fails(&["vm", "create", "--from-file", file.to_str().unwrap()], 2);
    assert!(err.contains("unknown field `extra`"), "{err}");
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&d.ok(&["vm", "list", "--format", "json"]))
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["taken"], "bad input created VMs");
    // a good definitions file creates them all, with distinct addresses
    std::fs::write(&file, r#"{"vms": [{"name": "x1", "memory": 64}, {"name": "x2", "memory": 96, "cpu": 0.5}]}"#)
        .unwrap();
    d.ok(&["vm", "create", "--from-file", file.to_str().unwrap()]);
    assert_ne!(d.vm("x1")["address"], d.vm("x2")["address"]);
    // the smallest CPU is accepted, and tables round it
    d.ok(&["vm", "create", "--name", "sliver", "--memory", "64", "--cpu", "0.0125"]);
    let list = d.ok(&["vm", "list"]);
    let row = list.lines().find(|l| l.contains("sliver")).unwrap();
    assert!(row.contains(" 0.01 ") && !row.contains("0.0125"), "{list}");
}

#[test]
fn a_dead_agent_is_reported_and_restarted_per_policy() {
    if !require("a_dead_agent_is_reported_and_restarted_per_policy", VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "phoenix", "--memory", "64", "--restart", "on-failure:1"]);
    d.ok(&["vm", "create", "--name", "mortal", "--memory", "64"]);
    d.ok(&["vm", "start", "phoenix"]);
    d.ok(&["vm", "start", "mortal"]);
    let (p1, m1) = (d.vm("phoenix")["pid"].as_u64().unwrap(), d.vm("mortal")["pid"].as_u64().unwrap());
    for pid in [p1, m1] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (p, m) = (d.vm("phoenix"), d.vm("mortal"));
        if p["restart_count"] == 1 && p["state"] == "running" && p["agent"] == "ready" && m["state"] == "stopped" {
            assert_ne!(p["pid"].as_u64(), Some(p1));
            assert_eq!(m["exit_code"], 137);
            assert_eq!(m["agent"], "unreachable");
            break;
        }
        assert!(Instant::now() < deadline, "not restarted/reported: {p} {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn qemu_guest_boots_reports_ready_pauses_and_resumes() {
    let test = "qemu_guest_boots_reports_ready_pauses_and_resumes";
    if !require(test, &[VMS, QEMU].concat()) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "guest", "--memory", "512", "--driver", "qemu"]);
    d.ok(&["vm", "create", "--name", "peer", "--memory", "64"]);
    let t = Instant::now();
    let out = d.ok(&["vm", "start", "guest"]);
    eprintln!("qemu guest ready after {:?}", t.elapsed());
    assert!(out.contains("agent ready"), "{out}");
    let v = d.vm("guest");
    assert!(["kvm", "tcg"].contains(&v["accel"].as_str().unwrap()), "{v}");
    assert!(v["peer_id"].as_str().unwrap().starts_with("12D3KooW"), "{v}");
    // the guest is on the bridge: a sandbox VM's connection to a closed port is refused
    // by the guest's stack at once (an unreachable address would time out)
    d.ok(&["vm", "start", "peer"]);
    let script = format!("nc -w 3 {} 9 </dev/null; echo rc=$?", v["address"].as_str().unwrap());
    let o = d.cli(&["container", "run", "--rm", "--vm", "peer", "--image", "busybox", "--", "sh", "-c", &script]);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(all.contains("refused"), "guest not reachable on the bridge: {all}");
    d.ok(&["vm", "pause", "guest"]);
    assert_eq!(d.vm("guest")["state"], "paused");
    let before = d.vm("guest")["last_report"].clone();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.vm("guest")["last_report"], before, "a paused guest kept reporting");
    d.ok(&["vm", "resume", "guest"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.vm("guest")["last_report"] == before {
        assert!(Instant::now() < deadline, "the guest did not report after resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = Instant::now();
    d.ok(&["vm", "stop", "guest"]);
    let v = d.vm("guest");
    assert_eq!(v["state"], "stopped");
    assert!(t.elapsed() < Duration::from_secs(8), "graceful stop took {:?}", t.elapsed());
    let console =
        std::fs::read_to_string(d.home.path().join("vms").join(v["id"].as_str().unwrap()).join("console.log")).unwrap();
    assert!(console.contains("stopped (asked by the daemon)"), "{console}");
    // a guest's root is fresh at every boot, its identity is not
    let peer_id = v["peer_id"].clone();
    let out = d.ok(&["vm", "start", "guest"]);
    assert!(out.contains("agent ready"), "{out}");
    assert_eq!(d.vm("guest")["peer_id"], peer_id, "the guest got a new peer id at its second boot");
    d.ok(&["vm", "stop", "guest"]);
}

#[test]
fn vms_cannot_use_an_api_that_listens_beyond_loopback() {
    if !require("vms_cannot_use_an_api_that_listens_beyond_loopback", VMS) {
        return;
    }
    let d = Daemon::start_on("0.0.0.0");
    d.ok(&["vm", "create", "--name", "nosy", "--memory", "64"]);
    d.ok(&["vm", "start", "nosy"]);
    let a = d.vm("nosy")["address"].as_str().unwrap().to_string();
    let gateway = format!("{}.1", &a[..a.rfind('.').unwrap()]);
    // stdin stays open while the reply comes: the server does not answer a half-closed request
    let script =
        format!("(printf 'GET /api/v1/health HTTP/1.0\\r\\n\\r\\n'; sleep 2) | nc -w 3 {gateway} {} | head -1", d.port);
    let o = d.cli(&["container", "run", "--rm", "--vm", "nosy", "--image", "busybox", "--", "sh", "-c", &script]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("403"), "a VM used the API: {out:?} {} script {script}", String::from_utf8_lossy(&o.stderr));
    // the host itself still can
    assert!(ureq::get(&format!("{}/api/v1/health", d.url())).call().is_ok());
}

#[test]
fn a_second_home_may_not_take_a_bridge_or_subnet_another_home_holds() {
    let test = "a_second_home_may_not_take_a_bridge_or_subnet_another_home_holds";
    if !require(test, VMS) {
        return;
    }
    let first = Daemon::start();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.home_path().join("config.json")).unwrap()).unwrap();
    // the daemon refuses to start: one line naming the holder and the settings to change
    let refused = |key: &str, value: serde_json::Value| {
        let second = Daemon::prepared("127.0.0.1");
        let own: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(second.home_path().join("config.json")).unwrap()).unwrap();
        second.set_config(key, value);
        let mut child = std::process::Command::new(common::BIN)
            .args(["daemon", "--api-addr", &format!("127.0.0.1:{}", second.port)])
            .env("MICRO_OS_HOME", second.home_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("the second daemon started on {key} = {}", cfg[key]);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success());
        assert!(err.contains(&first.home_path().display().to_string()) && err.contains("vm_bridge"), "{err}");
        // its own settings back: dropping the harness starts it to clean up
        second.set_config(key, own[key].clone());
        err
    };
    let e = refused("vm_bridge", cfg["vm_bridge"].clone());
    assert!(e.contains("is held by the micro-os home"), "{e}");
    let e = refused("vm_subnet", cfg["vm_subnet"].clone());
    assert!(e.contains("overlaps"), "{e}");
    // the first goes on: a VM on its bridge starts
    first.ok(&["vm", "create", "--name", "mine", "--memory", "128", "--cpu", "0.5"]);
    first.ok(&["vm", "start", "--name", "mine"]);
    first.ok(&["vm", "rm", "--name", "mine", "--force"]);
}
