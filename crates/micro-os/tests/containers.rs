//! Container lifecycle end to end: real daemon, real runc.

mod common;

use std::time::Duration;

use common::{free_port, require, Daemon, CONTAINERS};

#[test]
fn lifecycle_and_invalid_transitions() {
    if !require("lifecycle_and_invalid_transitions", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "counter",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo n=$i; i=$((i+1)); sleep 0.1; done",
    ]);
    assert_eq!(d.inspect("counter")["state"], "created");
    let yaml = d.ok(&["container", "inspect", "counter", "--format", "yaml"]);
    assert!(yaml.contains("name: counter") && yaml.contains("state: created"), "{yaml}");
    let table = d.ok(&["container", "inspect", "counter"]);
    assert!(table.contains("FIELD") && table.contains("created"), "{table}");
    d.fails(&["container", "pause", "--name", "counter"], 4);
    d.ok(&["container", "start", "--name", "counter"]);
    let c = d.inspect("counter");
    assert_eq!(c["state"], "running");
    let pid = c["pid"].as_u64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // pause freezes: the log stops growing; resume thaws it
    d.ok(&["container", "pause", "counter"]);
    assert_eq!(d.inspect("counter")["state"], "paused");
    let err = d.fails(&["container", "pause", "counter"], 4);
    assert!(err.contains("it is paused"), "{err}");
    let before = d.ok(&["container", "logs", "counter"]).lines().count();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(d.ok(&["container", "logs", "counter"]).lines().count(), before, "paused container kept logging");
    d.ok(&["container", "resume", "counter"]);
    // resuming what runs is a conflict that says why (it answered 500 once)
    let err = d.fails(&["container", "resume", "counter"], 4);
    assert!(err.contains("it is running, not paused"), "{err}");
    std::thread::sleep(Duration::from_millis(600));
    assert!(d.ok(&["container", "logs", "counter"]).lines().count() > before, "resumed container did not log");

    // rm of a running container is a conflict unless forced
    let err = d.fails(&["container", "rm", "counter"], 4);
    assert!(err.contains("--force"), "{err}");
    // sh as PID 1 ignores SIGTERM: stop must fall back to SIGKILL after the timeout
    let t = std::time::Instant::now();
    d.ok(&["container", "stop", "--name", "counter", "--timeout", "1"]);
    assert!(t.elapsed() >= Duration::from_millis(900), "stop returned before its timeout");
    let c = d.inspect("counter");
    assert_eq!(c["state"], "exited");
    assert_eq!(c["exit_code"], 137);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || pid_is_not(pid));
    d.fails(&["container", "resume", "counter"], 4);
    // restartable after exit
    d.ok(&["container", "start", "counter"]);
    assert_eq!(d.inspect("counter")["state"], "running");
    d.ok(&["container", "rm", "--force", "counter"]);
    d.fails(&["container", "inspect", "counter"], 3);
}

fn pid_is_not(pid: u64) -> bool {
    // the pid may have been reused by another process; it must not be a busybox sh
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).map_or(true, |c| !c.contains("while true"))
}

#[test]
fn sigterm_stops_a_cooperative_container_quickly() {
    if !require("sigterm_stops_a_cooperative_container_quickly", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "polite",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    d.ok(&["container", "start", "polite"]);
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    d.ok(&["container", "stop", "polite", "--timeout", "10"]);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_eq!(d.inspect("polite")["exit_code"], 0);
    assert!(d.ok(&["container", "logs", "polite"]).contains("got TERM"));
}

#[test]
fn run_returns_exit_codes_like_docker() {
    if !require("run_returns_exit_codes_like_docker", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let o =
        d.cli(&["container", "run", "--rm", "--image", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("out") && out.contains("err"), "{out}");
    let o = d.cli(&["container", "run", "--rm", "--image", "busybox", "--", "/no/such/binary"]);
    assert_eq!(o.status.code(), Some(127), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.names().is_empty(), "--rm left containers: {:?}", d.names());
    let o = d.cli(&["container", "run", "--name", "kept", "--image", "busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(d.inspect("kept")["exit_code"], 0);
    // without --rm a container that cannot start stays, with its error
    let o = d.cli(&["container", "run", "--name", "broken", "--image", "busybox", "--", "/no/such/binary"]);
    assert_eq!(o.status.code(), Some(127), "{}", String::from_utf8_lossy(&o.stderr));
    let b = d.inspect("broken");
    assert_eq!(b["state"], "created", "{b:#}");
    assert!(b["error"].as_str().unwrap_or("").contains("/no/such/binary"), "{b:#}");
}

#[test]
fn exec_runs_in_the_container_with_its_environment_like_docker_exec() {
    if !require("exec_runs_in_the_container_with_its_environment_like_docker_exec", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "box",
        "--image",
        "busybox",
        "--env",
        "GREETING=hello",
        "--",
        "sleep",
        "60",
    ]);
    // not running yet: a conflict, exit 4
    let e = d.fails(&["container", "exec", "--name", "box", "--", "true"], 4);
    assert!(e.contains("box") && e.contains("start it first"), "{e}");
    d.ok(&["container", "start", "box"]);
    let o = d.cli(&[
        "container",
        "exec",
        "--name",
        "box",
        "--env",
        "EXTRA=more",
        "--",
        "sh",
        "-c",
        "echo $GREETING $EXTRA; cat /proc/1/cmdline | tr '\\0' ' '; echo oops >&2; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    // the container's environment, plus --env; in its pid namespace (pid 1 is its sleep)
    assert_eq!(out.lines().collect::<Vec<_>>(), ["hello more", "sleep 60 "], "{out}");
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "oops");
    // not found, not runnable, too slow: the shell's and timeout's codes
    assert_eq!(d.cli(&["container", "exec", "box", "--", "/no/such/binary"]).status.code(), Some(127));
    assert_eq!(d.cli(&["container", "exec", "box", "--", "/etc/passwd"]).status.code(), Some(126));
    assert_eq!(d.cli(&["container", "exec", "box", "--timeout", "0.5", "--", "sleep", "5"]).status.code(), Some(124));
    // bad input names itself; an unknown container is not found
    let e = d.fails(&["container", "exec", "box", "--env", "NOEQUALS", "--", "true"], 2);
    assert!(e.contains("NOEQUALS"), "{e}");
    d.fails(&["container", "exec", "ghost", "--", "true"], 3);
    // the API refuses an empty command
    let r = d.api("POST", "/containers/box/exec").send_json(serde_json::json!({"command": []})).unwrap_err();
    assert!(matches!(r, ureq::Error::Status(400, _)), "{r:?}");
    d.ok(&["container", "rm", "--force", "box"]);
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    if !require("memory_hog_is_oom_killed_and_reported", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "hog",
        "--image",
        "busybox",
        "--resources",
        "memory=32M",
        "--",
        "awk",
        "BEGIN{s=\"x\"; while(1){s=s s}}",
    ]);
    d.ok(&["container", "start", "hog"]);
    let c = d.wait_for("hog", "exit", |c| c["state"] == "exited");
    assert_eq!(c["oom_killed"], true, "{c:#}");
    assert_eq!(c["exit_code"], 137);
    let inspect = d.ok(&["container", "inspect", "hog"]);
    assert!(inspect.contains("OOM-killed"), "{inspect}");
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["container", "events", "hog", "--format", "json"])).unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["created", "started", "oom-killed"], "{events:?}");
}

#[test]
fn limits_reach_the_cgroup_and_pids_are_bounded() {
    if !require("limits_reach_the_cgroup_and_pids_are_bounded", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "lim",
        "--image",
        "busybox",
        "--resources",
        "cpu=0.5,memory=64M,pids=8",
        "--",
        "sh",
        "-c",
        "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done'; echo survived; sleep 30",
    ]);
    d.ok(&["container", "start", "lim"]);
    let id = d.inspect("lim")["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(500));
    let logs = d.ok(&["container", "logs", "lim"]);
    assert!(
        logs.contains("can't fork") || logs.contains("Resource temporarily unavailable"),
        "pids limit not hit: {logs}"
    );
    assert!(logs.contains("survived"), "{logs}");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    if v2 {
        assert_eq!(read(&format!("/sys/fs/cgroup/micro-os/{id}/memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&format!("/sys/fs/cgroup/micro-os/{id}/cpu.max")), "50000 100000");
        assert_eq!(read(&format!("/sys/fs/cgroup/micro-os/{id}/pids.max")), "8");
    } else {
        assert_eq!(
            read(&format!("/sys/fs/cgroup/memory/micro-os/{id}/memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&format!("/sys/fs/cgroup/cpu/micro-os/{id}/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&format!("/sys/fs/cgroup/pids/micro-os/{id}/pids.max")), "8");
    }
}

#[test]
fn containers_are_hardened() {
    if !require("containers_are_hardened", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let script = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
        mount -t tmpfs none /mnt 2>&1 && echo MOUNTED; \
        touch /sys/x 2>&1 || echo SYS-RO; \
        unshare -n true 2>&1 || echo UNSHARE-DENIED; \
        for p in /proc/keys /proc/timer_list /proc/sched_debug; do [ -e $p ] && echo \"masked $p $(wc -c < $p)\"; done";
    let o = d.cli(&["container", "run", "--rm", "--image", "busybox", "--", "sh", "-c", script]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let cap_eff = out.lines().find(|l| l.starts_with("CapEff:")).unwrap().split_whitespace().nth(1).unwrap();
    let caps = u64::from_str_radix(cap_eff, 16).unwrap();
    assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN kept: {out}");
    assert_eq!(caps.count_ones(), 10, "{out}");
    assert!(!out.contains("MOUNTED"), "{out}");
    assert!(out.contains("SYS-RO"), "{out}");
    assert!(out.contains("UNSHARE-DENIED"), "{out}");
    let host_has =
        ["/proc/keys", "/proc/timer_list", "/proc/sched_debug"].iter().any(|p| std::path::Path::new(p).exists());
    let masked: Vec<&str> = out.lines().filter(|l| l.starts_with("masked ")).collect();
    assert!(!host_has || !masked.is_empty(), "{out}");
    assert!(masked.iter().all(|l| l.ends_with(" 0")), "masked /proc paths readable: {out}");
}

#[test]
fn ports_health_checks_and_templates() {
    if !require("ports_health_checks_and_templates", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let port = free_port();
    d.ok(&["container", "create", "--name", "web", "--template", "busybox-httpd", "--port", &format!("{port}:80/tcp")]);
    d.ok(&["container", "start", "web"]);
    let c = d.wait_for("web", "healthy", |c| c["health"]["status"] == "healthy");
    assert_eq!(c["template"], "busybox-httpd");
    assert!(c["health"]["last_output"].as_str().unwrap().contains("200"), "{c:#}");
    let body = ureq::get(&format!("http://127.0.0.1:{port}/")).call().unwrap().into_string().unwrap();
    assert_eq!(body.trim(), "ok");
    // the same host port twice cannot be published
    d.ok(&[
        "container",
        "create",
        "--name",
        "web2",
        "--template",
        "busybox-httpd",
        "--port",
        &format!("{port}:80/tcp"),
    ]);
    let err = d.fails(&["container", "start", "web2"], 1);
    assert!(err.contains(&port.to_string()), "{err}");
    assert_eq!(d.inspect("web2")["state"], "created");

    // a tcp probe of a closed port turns unhealthy after its retries
    d.ok(&[
        "container",
        "create",
        "--name",
        "deaf",
        "--image",
        "busybox",
        "--health-tcp",
        "9",
        "--health-interval",
        "0.2",
        "--health-retries",
        "2",
        "--",
        "sleep",
        "60",
    ]);
    d.ok(&["container", "start", "deaf"]);
    let c = d.wait_for("deaf", "unhealthy", |c| c["health"]["status"] == "unhealthy");
    assert!(c["health"]["failures"].as_u64().unwrap() >= 2);
    // a command probe
    d.ok(&[
        "container",
        "create",
        "--name",
        "cmd",
        "--image",
        "busybox",
        "--health-cmd",
        "test -f /tmp/ready",
        "--health-interval",
        "0.2",
        "--",
        "sh",
        "-c",
        "sleep 1; touch /tmp/ready; sleep 60",
    ]);
    d.ok(&["container", "start", "cmd"]);
    d.wait_for("cmd", "healthy", |c| c["health"]["status"] == "healthy");

    // a user template from the home
    std::fs::write(
        d.home.path().join("templates/echoer.json"),
        r#"{"name":"echoer","image":"busybox","workload":"blockchain","command":["sh","-c","echo from-template $GREETING"],
            "env":{"GREETING":"hi"},"resources":{"memory":"40M"}}"#,
    )
    .unwrap();
    let o = d.cli(&["container", "run", "--name", "e1", "--template", "echoer"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("from-template hi"));
    assert_eq!(d.inspect("e1")["resources"]["memory"], 50u64 << 20, "blockchain headroom 1.25x");
}

#[test]
fn restart_policy_restarts_with_backoff_then_gives_up() {
    if !require("restart_policy_restarts_with_backoff_then_gives_up", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "flaky",
        "--image",
        "busybox",
        "--restart",
        "on-failure:2",
        "--",
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    d.ok(&["container", "start", "flaky"]);
    let c = d.wait_for("flaky", "two restarts", |c| c["restart_count"] == 2 && c["state"] == "exited");
    assert_eq!(c["exit_code"], 1);
    std::thread::sleep(Duration::from_millis(1500));
    let c = d.inspect("flaky");
    assert_eq!(c["restart_count"], 2, "restarted past its limit");
    assert_eq!(d.ok(&["container", "logs", "flaky"]).matches("run").count(), 3);
    // a stopped container is not restarted by `always`
    d.ok(&[
        "container",
        "create",
        "--name",
        "steady",
        "--image",
        "busybox",
        "--restart",
        "always",
        "--",
        "sleep",
        "60",
    ]);
    d.ok(&["container", "start", "steady"]);
    d.ok(&["container", "stop", "steady", "--timeout", "0"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.inspect("steady")["state"], "exited");
}

#[test]
fn logs_tail_since_follow_and_config() {
    if !require("logs_tail_since_follow_and_config", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&[
        "container",
        "create",
        "--name",
        "talker",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo network=$MICRO_OS_CONFIG_NETWORK sync=$MICRO_OS_CONFIG_SYNC_MODE; cat /run/micro-os/config.json; \
         for i in 1 2 3 4 5; do echo line $i; done",
    ]);
    d.ok(&["container", "config", "talker", "--network", "mainnet", "--sync-mode", "fast"]);
    let cfg = d.ok(&["container", "config", "talker"]);
    assert!(cfg.contains("network=mainnet") && cfg.contains("sync-mode=fast"), "{cfg}");
    d.ok(&["container", "start", "talker"]);
    // --follow returns once the container has exited and everything was printed
    let all = d.ok(&["container", "logs", "--name", "talker", "--follow"]);
    assert!(all.contains("network=mainnet sync=fast"), "{all}");
    assert!(all.contains("\"sync-mode\": \"fast\""), "{all}");
    assert!(all.contains("line 5"));
    assert_eq!(d.ok(&["container", "logs", "talker", "--tail", "2"]), "line 4\nline 5\n");
    assert_eq!(d.ok(&["container", "logs", "talker", "--since", "1h"]), all);
    assert_eq!(d.ok(&["container", "logs", "talker", "--since", "2999-01-01T00:00:00Z"]), "");
    let stamped = d.ok(&["container", "logs", "talker", "--tail", "1", "--timestamps"]);
    assert!(stamped.contains(" stdout line 5"), "{stamped}");
}

#[test]
fn deploy_from_file_is_all_or_nothing() {
    if !require("deploy_from_file_is_all_or_nothing", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let dir = d.home_path();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"containers": [
            {"name": "node-a", "template": "busybox-httpd", "network": {"mode": "overlay", "discovery": true}},
            {"name": "node-b", "image": "busybox", "command": ["sleep", "5"]}]}"#,
    )
    .unwrap();
    d.ok(&["container", "deploy", "--from-file", good.to_str().unwrap()]);
    assert_eq!(d.names(), ["node-a", "node-b"]);
    assert_eq!(d.inspect("node-a")["network"]["mode"], "overlay");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"containers": [{"name": "node-c", "image": "busybox"}, {"name": "node-d", "image": "nope"}]}"#,
    )
    .unwrap();
    let err = d.fails(&["container", "deploy", "--from-file", bad.to_str().unwrap()], 3);
    assert!(err.contains("node-d") && err.contains("nope"), "{err}");
    assert_eq!(d.names(), ["node-a", "node-b"], "a failed deploy created containers");
}

#[test]
fn deploy_starts_in_dependency_order_gated_on_health_and_refuses_cycles_before_creating() {
    if !require("deploy_starts_in_dependency_order_gated_on_health_and_refuses_cycles_before_creating", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let file = d.home_path().join("stack.json");
    let deploy = |json: &str| {
        std::fs::write(&file, json).unwrap();
        d.cli(&["container", "deploy", "--from-file", file.to_str().unwrap()])
    };
    let refused = |json: &str, needle: &str| {
        let o = deploy(json);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err} lacks {needle:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(d.names().is_empty(), "a refused deploy created {:?}", d.names());
    };
    refused(
        r#"{"containers": [
            {"name": "a", "image": "busybox", "depends_on": [{"name": "c"}]},
            {"name": "b", "image": "busybox", "depends_on": [{"name": "a"}]},
            {"name": "c", "image": "busybox", "depends_on": [{"name": "b"}]}]}"#,
        "depends_on forms a cycle: a -> c -> b -> a",
    );
    refused(
        r#"{"containers": [{"name": "a", "image": "busybox", "depends_on": [{"name": "db"}]}]}"#,
        "containers[0] (\"a\"): depends_on names \"db\", which is not in the deploy file",
    );
    refused(
        r#"{"containers": [{"name": "db", "image": "busybox"},
            {"name": "a", "image": "busybox", "depends_on": [{"name": "db", "condition": "healthy"}]}]}"#,
        "\"db\" has no health check",
    );
    refused(
        r#"{"containers": [{"name": "db", "image": "busybox"},
            {"name": "a", "image": "busybox", "depends_on": [{"name": "db", "condition": "ready"}]}]}"#,
        "ready",
    );

    // db takes a moment to become healthy; web waits for that, app for web and a migration
    let o = deploy(
        r#"{"containers": [
            {"name": "app", "image": "busybox", "command": ["sleep", "60"],
             "depends_on": [{"name": "web"}, {"name": "migrate", "condition": "service_completed_successfully"}]},
            {"name": "web", "image": "busybox", "command": ["sleep", "60"],
             "depends_on": [{"name": "db", "condition": "healthy"}]},
            {"name": "migrate", "image": "busybox", "command": ["sh", "-c", "sleep 0.5; exit 0"]},
            {"name": "db", "image": "busybox",
             "command": ["sh", "-c", "sleep 1; mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 80 -h /www"],
             "health_check": {"type": "http", "port": 80, "path": "/", "interval_s": 0.3, "retries": 3, "timeout_s": 1}}]}"#,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for n in ["app", "web", "db"] {
        assert_eq!(d.inspect(n)["state"], "running", "{n}");
    }
    assert_eq!(d.inspect("migrate")["exit_code"], 0);
    // the order, from the event stream
    let events: Vec<serde_json::Value> = d
        .ok(&["events", "--type", "container", "--since", "0", "--no-follow", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |name: &str, action: &str, detail: Option<&str>| {
        events
            .iter()
            .position(|e| e["name"] == name && e["action"] == action && detail.is_none_or(|x| e["detail"] == x))
            .unwrap_or_else(|| panic!("no {name} {action} in {events:#?}"))
    };
    assert!(at("db", "started", None) < at("db", "health", Some("healthy")));
    assert!(at("db", "health", Some("healthy")) < at("web", "started", None));
    assert!(at("web", "started", None) < at("app", "started", None));
    assert!(at("migrate", "exited", None) < at("app", "started", None));

    // a dependency that never gets there stops the deploy, and says what started
    let o = deploy(
        r#"{"containers": [
            {"name": "db2", "image": "busybox", "command": ["sh", "-c", "exit 3"],
             "health_check": {"type": "tcp", "port": 5432, "interval_s": 0.3}},
            {"name": "web2", "image": "busybox", "command": ["sleep", "60"],
             "depends_on": [{"name": "db2", "condition": "healthy"}]}]}"#,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("\"web2\" waits for \"db2\" to be healthy, but it exited with code 3 first"), "{err}");
    assert!(err.contains("started: db2") && err.contains("not started: web2"), "{err}");
    assert_eq!(d.inspect("web2")["state"], "created");
    // depends_on belongs to deploy files
    let r = d
        .api("POST", "/containers")
        .send_json(serde_json::json!({"name": "x", "image": "busybox", "depends_on": [{"name": "db"}]}));
    assert!(matches!(r, Err(ureq::Error::Status(400, _))), "{r:?}");
    for n in d.names() {
        d.ok(&["container", "rm", "--force", &n]);
    }
}

#[test]
fn logs_of_several_containers_interleave_by_time_with_a_prefix_each() {
    if !require("logs_of_several_containers_interleave_by_time_with_a_prefix_each", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let file = d.home_path().join("pair.json");
    std::fs::write(
        &file,
        r#"{"containers": [
            {"name": "alpha", "image": "busybox", "command": ["sh", "-c", "echo a1; sleep 0.8; echo a2; sleep 0.8; echo a3; sleep 60"]},
            {"name": "b", "image": "busybox", "command": ["sh", "-c", "sleep 0.4; echo b1; sleep 0.8; echo b2; sleep 60"]}]}"#,
    )
    .unwrap();
    d.ok(&["container", "deploy", "--from-file", file.to_str().unwrap()]);
    // following: the lines as they come, in time order, then the ones still to come
    let mut follower = std::process::Command::new(common::BIN)
        .args(["container", "logs", "--name", "alpha,b", "--follow"])
        .env("MICRO_OS_HOME", d.home.path())
        .env("MICRO_OS_API", d.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follower.stdout.take().unwrap()));
    let followed: Vec<String> = (0..5).map(|_| lines.next().unwrap().unwrap()).collect();
    let _ = follower.kill();
    let _ = follower.wait();
    let want = ["alpha | a1", "b     | b1", "alpha | a2", "b     | b2", "alpha | a3"];
    assert_eq!(followed, want);
    // all at once, from the backlog: the same order
    let out = d.ok(&["container", "logs", "--name", "alpha,b"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    let stamped = d.ok(&["container", "logs", "--name", "b,alpha", "--tail", "1", "--timestamps"]);
    let stamped: Vec<&str> = stamped.lines().collect();
    assert_eq!(stamped.len(), 2, "{stamped:?}");
    assert!(stamped[0].starts_with("b     | 20") && stamped[0].ends_with(" b2"), "{stamped:?}");
    assert!(stamped[1].starts_with("alpha | 20") && stamped[1].ends_with(" a3"), "{stamped:?}");
    // an unknown one fails before any output
    let e = d.fails(&["container", "logs", "--name", "alpha,ghost"], 3);
    assert!(e.contains("ghost"), "{e}");
    for n in ["alpha", "b"] {
        d.ok(&["container", "rm", "--force", n]);
    }
}
