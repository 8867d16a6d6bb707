//! Circuits end to end: three sandbox VMs whose agents run Raft members over the libp2p
//! layer, driven through the real binary and the API. While clients write, compare-and-set
//! and read concurrently, the test kills the leader's agent, cuts a member off the VM
//! bridge, pauses one, adds a fourth that catches up from a snapshot and removes one; the
//! recorded history must be linearizable (`micro_os_circuit::check`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::circuit::{all_caught_up, client, leader, view, wait_view};
use common::{ip, require, Daemon, VMS};
use micro_os_circuit::check::Recorder;
use serde_json::Value;

#[test]
fn a_circuit_stays_linearizable_through_kills_partitions_pauses_and_membership_changes() {
    let test = "a_circuit_stays_linearizable_through_kills_partitions_pauses_and_membership_changes";
    if !require(test, VMS) {
        return;
    }
    let mut d = Daemon::prepared("127.0.0.1");
    // a snapshot every 40 entries: the fourth member catches up from one
    d.set_config("circuit_snapshot_every", serde_json::json!(40));
    d.set_config("monitor_interval_s", serde_json::json!(0.5));
    d.spawn();
    for vm in ["m1", "m2", "m3", "m4"] {
        d.ok(&["vm", "create", "--name", vm, "--memory", "128", "--cpu", "0.5"]);
    }
    for vm in ["m1", "m2", "m3"] {
        d.ok(&["vm", "start", "--name", vm]);
    }

    // bad input: one line, a distinct exit code, and nothing made
    let e = d.fails(&["circuit", "create", "--name", "lin", "--nodes", "m1,m2,m3", "--type", "paxos"], 2);
    assert!(e.contains("the types are: consensus"), "{e}");
    let e = d.fails(&["circuit", "create", "--name", "lin", "--nodes", "m1,nope"], 3);
    assert!(e.contains("vm \"nope\" not found"), "{e}");
    let e = d.fails(&["circuit", "create", "--name", "lin", "--nodes", "m1,m4"], 4);
    assert!(e.contains("vm \"m4\" is created (start it first)"), "{e}");
    let e = d.fails(&["circuit", "create", "--name", "lin", "--nodes", "m1,m1"], 2);
    assert!(e.contains("appears twice"), "{e}");
    let r = d.api("POST", "/circuits").send_json(serde_json::json!({"name": "lin", "nodes": []}));
    assert!(matches!(r, Err(ureq::Error::Status(400, _))), "a circuit of zero members: {r:?}");
    assert_eq!(d.ok(&["circuit", "list", "--format", "json"]).trim(), "[]", "a refused create made something");

    // the spec's command; a leader within a few election timeouts
    let out = d.ok(&["circuit", "create", "--name", "lin", "--nodes", "m1,m2,m3", "--type", "consensus"]);
    assert!(out.contains("leader"), "{out}");
    let e = d.fails(&["circuit", "create", "--name", "lin", "--nodes", "m4"], 4);
    assert!(e.contains("already exists"), "{e}");
    let e = d.fails(&["circuit", "create", "--name", "other", "--nodes", "m1"], 4);
    assert!(e.contains("is a member of circuit \"lin\" already"), "{e}");
    wait_view(&d, "lin", "three caught-up members", Duration::from_secs(10), |v| all_caught_up(v, 3));

    // a write through one member is read from each, linearizably and from its own copy
    let out = d.ok(&["circuit", "state", "set", "--name", "lin", "--via", "m3", "config/batch_size", "128"]);
    assert!(out.contains("version 1"), "{out}");
    for vm in ["m1", "m2", "m3"] {
        let r: Value = serde_json::from_str(&d.ok(&[
            "circuit",
            "state",
            "get",
            "--name",
            "lin",
            "--via",
            vm,
            "config/batch_size",
            "--format",
            "json",
        ]))
        .unwrap();
        assert_eq!(r["entries"][0]["value"], "128", "{vm}: {r}");
        assert_eq!(r["entries"][0]["checksum"], "2747b7c718564ba5f066f0523b03e17f6a496b06851333d2d59ab6d863225848");
    }
    // compare-and-set: the wrong version is a conflict that changes nothing
    let e = d
        .fails(&["circuit", "state", "set", "--name", "lin", "config/batch_size", "256", "--expected-version", "7"], 4);
    assert!(e.contains("at version 1"), "{e}");
    d.ok(&["circuit", "state", "set", "--name", "lin", "config/batch_size", "256", "--expected-version", "1"]);

    // clients run through every fault below
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let members: Vec<String> = ["m1", "m2", "m3"].iter().map(|s| s.to_string()).collect();
    let clients: Vec<_> = (1..=4)
        .map(|id| {
            let (url, token, members) = (d.url(), d.token(), members.clone());
            let (rec, stop, done) = (rec.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || client(url, token, id, members, rec, stop, done))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // 1. kill -9 the leader's agent: a new leader commits; the old member rejoins and catches up
    let old = leader(&view(&d, "lin"));
    let pid = d.vm(&old)["pid"].as_u64().unwrap();
    let before = done.load(Ordering::SeqCst);
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = wait_view(&d, "lin", "a new leader", Duration::from_secs(15), |v| {
        v["leader"].is_string() && v["leader"] != old.as_str()
    });
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let key = format!("after-kill/{i}");
        d.ok(&["circuit", "state", "set", "--name", "lin", &key, "v"]);
        acknowledged.push(key);
    }
    eprintln!("leader {old} killed: {} leads, first commit after {:?}", leader(&v), killed.elapsed());
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.vm(&old)["state"] != "stopped" {
        assert!(Instant::now() < deadline, "vm {old} did not stop after its agent was killed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // the member's absence is an alert of the circuit component
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // exit 1 while something is critical (no leader yet): the report is printed all the same
        let o = d.cli(&["monitor", "health", "--format", "json"]);
        let h: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let alerts = h["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.iter().any(|a| a["rule"] == "circuit-member-unreachable" && a["source"] == "circuit") {
            break;
        }
        assert!(Instant::now() < deadline, "no alert for the killed member: {h:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    d.ok(&["vm", "start", "--name", &old]);
    wait_view(&d, "lin", "the killed member caught up", Duration::from_secs(20), |v| all_caught_up(v, 3));
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::SeqCst) <= before {
        assert!(Instant::now() < deadline, "the clients made no progress after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. cut a follower off the bridge: the majority commits; the minority refuses
    let v = view(&d, "lin");
    let cut = ["m1", "m2", "m3"].into_iter().find(|m| *m != leader(&v)).unwrap().to_string();
    let link = d.veth(&cut);
    ip(&["link", "set", &link, "down"]);
    d.ok(&["circuit", "state", "set", "--name", "lin", "partition/majority", "yes"]);
    acknowledged.push("partition/majority".into());
    let o = d.cli(&["circuit", "state", "set", "--name", "lin", "--via", &cut, "partition/minority", "no"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "a write on the minority side must fail: {err}");
    assert!(err.contains("no leader") || err.contains("no quorum") || err.contains("outcome unknown"), "{err}");
    let o = d.cli(&["circuit", "state", "get", "--name", "lin", "--via", &cut, "partition/majority"]);
    assert_eq!(o.status.code(), Some(1), "a linearizable read on the minority side must fail");
    // its own copy is still there to read, stale
    d.ok(&["circuit", "state", "get", "--name", "lin", "--via", &cut, "--stale", "config/batch_size"]);
    ip(&["link", "set", &link, "up"]);
    wait_view(&d, "lin", "the cut member caught up", Duration::from_secs(20), |v| all_caught_up(v, 3));

    // 3. pause a member, write, resume: it catches up
    d.ok(&["vm", "pause", "--name", &cut]);
    d.ok(&["circuit", "state", "set", "--name", "lin", "paused/write", "yes"]);
    acknowledged.push("paused/write".into());
    d.ok(&["vm", "resume", "--name", &cut]);
    wait_view(&d, "lin", "the paused member caught up", Duration::from_secs(20), |v| all_caught_up(v, 3));

    // 4. a fourth member joins after more than a snapshot's worth of entries: from a snapshot
    for i in 0..50 {
        d.api("PUT", &format!("/circuits/lin/state/fill/{i}")).send_json(serde_json::json!({"value": "f"})).unwrap();
    }
    d.ok(&["vm", "start", "--name", "m4"]);
    let out = d.ok(&["circuit", "add-node", "--name", "lin", "--node", "m4"]);
    assert!(out.contains("m4"), "{out}");
    let v = wait_view(&d, "lin", "four caught-up members", Duration::from_secs(30), |v| all_caught_up(v, 4));
    let m4 = v["members"].as_array().unwrap().iter().find(|m| m["vm"] == "m4").unwrap().clone();
    assert_eq!(m4["role"], "voter", "{v:#}");
    let local: Value = serde_json::from_str(
        &d.ok(&["circuit", "state", "list", "--name", "lin", "--via", "m4", "--stale", "--format", "json"]),
    )
    .unwrap();
    let keys: Vec<&str> = local["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    for k in acknowledged.iter().chain(["fill/49".to_string()].iter()) {
        assert!(keys.contains(&k.as_str()), "m4's copy lacks {k}: {keys:?}");
    }
    assert!(m4["snapshot"].as_u64().unwrap() > 0, "m4 caught up without a snapshot: {v:#}");

    // 5. remove a member: three remain and commit
    d.ok(&["circuit", "remove-node", "--name", "lin", "--node", "m1"]);
    let v = wait_view(&d, "lin", "three members after the removal", Duration::from_secs(15), |v| all_caught_up(v, 3));
    assert!(v["members"].as_array().unwrap().iter().all(|m| m["vm"] != "m1"), "{v:#}");
    d.ok(&["circuit", "state", "set", "--name", "lin", "after/remove", "yes"]);
    acknowledged.push("after/remove".into());

    // 6. hand leadership to a follower while the clients write
    let v = view(&d, "lin");
    let to = ["m2", "m3", "m4"].into_iter().find(|m| *m != leader(&v)).unwrap();
    let out = d.ok(&["circuit", "transfer-leader", "--name", "lin", "--to", to]);
    assert!(out.contains(to), "{out}");
    assert_eq!(leader(&view(&d, "lin")), to, "leadership did not move");
    d.ok(&["circuit", "state", "set", "--name", "lin", "after/transfer", "yes"]);
    acknowledged.push("after/transfer".into());
    let e = d.fails(&["circuit", "transfer-leader", "--name", "lin", "--to", "m1"], 2);
    assert!(e.contains("not a member"), "{e}");

    // the Prometheus exposition carries the circuit's figures
    let metrics = d.api("GET", "/metrics").call().unwrap().into_string().unwrap();
    for want in ["micro_os_circuit_term{circuit=\"lin\"}", "micro_os_circuit_member_lag{circuit=\"lin\",vm=\"m4\"}"] {
        assert!(metrics.contains(want), "{want} missing from the exposition");
    }
    // and `monitor health` its component
    let health = d.ok(&["monitor", "health", "--components", "circuit", "--format", "json"]);
    assert!(health.contains("lin: leader"), "{health}");

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let history = rec.events();
    assert!(done.load(Ordering::SeqCst) >= 50, "too few operations completed: {}", done.load(Ordering::SeqCst));
    let verdict = rec.check();
    assert!(verdict.is_linearizable(), "{verdict}");
    eprintln!("{} operations, {verdict}", history.len());

    // nothing acknowledged is lost: every key is there, read linearizably through each member
    for vm in ["m2", "m3", "m4"] {
        let all: Value = serde_json::from_str(
            &d.ok(&["circuit", "state", "list", "--name", "lin", "--via", vm, "--format", "json"]),
        )
        .unwrap();
        let keys: Vec<&str> = all["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
        for k in &acknowledged {
            assert!(keys.contains(&k.as_str()), "{vm} lacks acknowledged key {k}");
        }
    }

    // the daemon is not a member: killed and restarted, it finds the circuit as it was
    d.kill9();
    d.spawn();
    let v =
        wait_view(&d, "lin", "the circuit after a daemon restart", Duration::from_secs(20), |v| all_caught_up(v, 3));
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = d.cli(&["circuit", "state", "get", "--name", "lin", "after/transfer"]);
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("yes"));
            break;
        }
        if Instant::now() > deadline {
            for vm in ["m2", "m3", "m4"] {
                eprintln!("{vm}: {}", d.ok(&["monitor", "network", "--detailed", "--vm", vm]));
            }
            eprintln!("{:#}", view(&d, "lin"));
            panic!("no linearizable read after a daemon restart: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // `circuit monitor` without a terminal prints a line per refresh
    let mut child = std::process::Command::new(common::BIN)
        .args(["circuit", "monitor", "--name", "lin", "--interval", "0.3"])
        .env("MICRO_OS_HOME", d.home_path())
        .env("MICRO_OS_API", d.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().filter(|l| l.contains("lin")).count() >= 2, "circuit monitor printed: {text}");

    // the circuit goes away with its members' stores
    d.ok(&["circuit", "rm", "--name", "lin"]);
    d.fails(&["circuit", "view", "--name", "lin"], 3);
}

/// The replicas of `c` (inspect JSON) as (vm, state, health).
fn replicas(c: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = c["replicas"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                    (s("vm"), s("state"), s("health"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn all_healthy_on(c: &Value, vms: &[&str]) -> bool {
    let rs = replicas(c);
    rs.len() == vms.len()
        && rs.iter().zip(vms).all(|((vm, state, health), want)| vm == want && state == "running" && health == "healthy")
}

#[test]
fn replicated_containers_follow_the_circuit_membership() {
    let test = "replicated_containers_follow_the_circuit_membership";
    if !require(test, VMS) {
        return;
    }
    let mut d = Daemon::prepared("127.0.0.1");
    d.spawn();
    for vm in ["r1", "r2", "r3"] {
        d.ok(&["vm", "create", "--name", vm, "--memory", "128", "--cpu", "0.5"]);
        d.ok(&["vm", "start", "--name", vm]);
    }
    d.ok(&["circuit", "create", "--name", "rep", "--nodes", "r1,r2"]);
    wait_view(&d, "rep", "two caught-up members", Duration::from_secs(10), |v| all_caught_up(v, 2));

    // bad input: one line, a distinct exit code, nothing made
    let create = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec!["container", "create", "--name", "web", "--template", "busybox-httpd"];
        a.extend_from_slice(extra);
        a
    };
    let e = d.fails(&create(&["--circuit", "rep"]), 2);
    assert!(e.contains("--circuit needs --replicate"), "{e}");
    let e = d.fails(&create(&["--circuit", "nope", "--replicate"]), 3);
    assert!(e.contains("circuit \"nope\" not found"), "{e}");
    let e = d.fails(&create(&["--circuit", "rep", "--replicate", "--port", "18080:80"]), 2);
    assert!(e.contains("cannot publish host ports"), "{e}");
    assert!(d.names().is_empty(), "a refused create made {:?}", d.names());

    // the spec's command: one replica per member, each running busybox httpd in its VM
    d.ok(&create(&["--circuit", "rep", "--replicate"]));
    let c = d.inspect("web");
    assert_eq!(
        replicas(&c),
        vec![("r1".into(), "created".into(), "-".into()), ("r2".into(), "created".into(), "-".into())],
        "{c:#}"
    );
    let out = d.ok(&["container", "start", "--name", "web"]);
    assert!(out.contains("2 of 2 replicas running"), "{out}");
    d.wait_for("web", "two healthy replicas", |c| all_healthy_on(c, &["r1", "r2"]));
    let table = d.ok(&["container", "inspect", "--name", "web"]);
    assert!(table.contains("web.r1") && table.contains("web.r2"), "{table}");
    let list = d.ok(&["container", "list"]);
    assert!(list.contains("running (2/2 replicas)"), "{list}");
    // a replica is a container of its own, but it goes only with its circuit membership
    let r1 = d.inspect("web.r1");
    assert_eq!(r1["state"], "running", "{r1:#}");
    let e = d.fails(&["container", "rm", "--name", "web.r1", "--force"], 4);
    assert!(e.contains("is a replica of \"web\""), "{e}");
    // the logs of a replicated container, or of the circuit, are its replicas' (httpd
    // prints nothing: every line there is would carry a replica's prefix)
    for args in [&["container", "logs", "--name", "web"][..], &["logs", "--circuit", "rep"]] {
        let out = d.ok(args);
        assert!(out.lines().all(|l| l.starts_with("web.r1 | ") || l.starts_with("web.r2 | ")), "{out}");
    }
    let e = d.fails(&["logs", "--circuit", "nope"], 3);
    assert!(e.contains("circuit \"nope\" not found"), "{e}");

    // a member that joins gets a replica, started; one that leaves loses its own
    d.ok(&["circuit", "add-node", "--name", "rep", "--node", "r3"]);
    d.wait_for("web", "a third healthy replica", |c| all_healthy_on(c, &["r1", "r2", "r3"]));
    d.ok(&["circuit", "remove-node", "--name", "rep", "--node", "r1"]);
    d.wait_for("web", "the replica on r1 gone", |c| all_healthy_on(c, &["r2", "r3"]));
    d.fails(&["container", "inspect", "--name", "web.r1"], 3);

    // a daemon killed and restarted finds the replicas running and the record as it was
    let pids: Vec<Value> = d.inspect("web")["replicas"].as_array().unwrap().iter().map(|r| r["pid"].clone()).collect();
    d.kill9();
    d.spawn();
    let c = d.wait_for("web", "replicas re-adopted", |c| all_healthy_on(c, &["r2", "r3"]));
    let after: Vec<Value> = c["replicas"].as_array().unwrap().iter().map(|r| r["pid"].clone()).collect();
    assert_eq!(pids, after, "the replicas kept running through the daemon's restart");

    // the circuit cannot go while it runs replicas; stop and rm take every replica along
    let e = d.fails(&["circuit", "rm", "--name", "rep"], 4);
    assert!(e.contains("runs replicated containers web"), "{e}");
    let out = d.ok(&["container", "stop", "--name", "web"]);
    assert!(out.contains("web stopped"), "{out}");
    let c = d.inspect("web");
    assert!(replicas(&c).iter().all(|(_, state, _)| state == "exited"), "{c:#}");
    d.ok(&["container", "rm", "--name", "web"]);
    assert!(d.names().is_empty(), "left behind: {:?}", d.names());
    d.ok(&["circuit", "rm", "--name", "rep"]);
}
