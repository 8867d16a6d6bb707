//! The REST surface and the CLI's handling of bad input.

mod common;

use std::time::{Duration, Instant};

use common::{require, Daemon, Need, BIN};

fn status_of(r: Result<ureq::Response, ureq::Error>) -> (u16, String, String) {
    match r {
        Ok(resp) => (resp.status(), resp.content_type().to_string(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => {
            (code, resp.content_type().to_string(), resp.into_string().unwrap_or_default())
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn bad_input_gets_one_clear_error_and_changes_nothing() {
    if !require("bad_input_gets_one_clear_error_and_changes_nothing", &[Need::Busybox]) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["container", "create", "--name", "exists", "--image", "busybox", "--", "true"]);
    let before = d.names();
    // (args, exit code, words the message must contain)
    let cases: &[(&[&str], i32, &str)] = &[
        (&["container", "create", "--name", "a", "--image", "nope"], 3, "image \"nope\" not found"),
        (&["container", "create", "--name", "a", "--template", "nope"], 3, "template \"nope\" not found"),
        (
            &["container", "create", "--name", "a", "--image", "busybox", "--resources", "memory=4XB"],
            2,
            "memory \"4XB\" is not a size (try 512M or 4G)",
        ),
        (&["container", "create", "--name", "a", "--image", "busybox", "--resources", "cpus=0"], 2, "cpu 0"),
        (&["container", "create", "--name", "a", "--image", "busybox", "--port", "80"], 2, "port \"80\""),
        (&["container", "create", "--name", "a", "--image", "busybox", "--restart", "sometimes"], 2, "restart policy"),
        (&["container", "create", "--name", "a", "--image", "busybox", "--env", "NOEQUALS"], 2, "env \"NOEQUALS\""),
        (&["container", "create", "--name", "bad/name", "--image", "busybox"], 2, "container name \"bad/name\""),
        (&["container", "create", "--name", "exists", "--image", "busybox"], 4, "already exists"),
        (&["container", "create", "--name", "a"], 2, "give an image or a template"),
        (&["container", "create", "--name", "a", "--image", "busybox", "--vm", "vm1"], 3, "vm \"vm1\" not found"),
        (&["container", "start", "--name", "ghost"], 3, "container \"ghost\" not found"),
        (&["container", "logs", "exists", "--since", "yesterday-ish"], 2, "since \"yesterday-ish\""),
        (&["container", "deploy", "--from-file", "/nonexistent.json"], 2, "cannot be read"),
        (&["image", "rm", "busybox"], 4, "used by containers exists"),
        (&["image", "rm", "nope"], 3, "image \"nope\" not found"),
        (&["image", "build", "debian"], 2, "base image \"debian\" is unknown"),
        (&["container", "frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, code, needle) in cases {
        let err = d.fails(args, *code);
        assert!(err.contains(needle), "micro-os {}: {err:?} lacks {needle:?}", args.join(" "));
    }
    // a malformed spec file
    let bad = d.home.path().join("bad.json");
    std::fs::write(&bad, "{\"containers\": [ {\"name\": \"x\", \"image\": \"busybox\", }").unwrap();
    let err = d.fails(&["container", "deploy", "--from-file", bad.to_str().unwrap()], 2);
    assert!(err.contains("bad.json is not valid"), "{err}");
    std::fs::write(&bad, r#"{"containers": [{"name": "x", "imag": "busybox"}]}"#).unwrap();
    let err = d.fails(&["container", "deploy", "--from-file", bad.to_str().unwrap()], 2);
    assert!(err.contains("unknown field `imag`"), "{err}");
    assert_eq!(d.names(), before, "bad input changed the container list");
}

#[test]
fn auth_body_limit_problem_json_and_openapi() {
    if !require("auth_body_limit_problem_json_and_openapi", &[Need::Busybox, Need::Curl]) {
        return;
    }
    let d = Daemon::start();
    let url = d.url();
    // health needs no token; everything else does
    let (code, _, body) = status_of(ureq::get(&format!("{url}/api/v1/health")).call());
    assert_eq!(code, 200, "{body}");
    let (code, ctype, body) = status_of(ureq::get(&format!("{url}/api/v1/containers")).call());
    assert_eq!((code, ctype.as_str()), (401, "application/problem+json"), "{body}");
    let (code, _, _) =
        status_of(ureq::get(&format!("{url}/api/v1/containers")).set("Authorization", "Bearer wrong").call());
    assert_eq!(code, 401);
    let (code, _, _) = status_of(ureq::get(&format!("{url}/api/v1/openapi.json")).call());
    assert_eq!(code, 401);
    // the CLI with a wrong token: exit code 6
    let o = std::process::Command::new(BIN)
        .args(["container", "list"])
        .env("MICRO_OS_API", &url)
        .env("MICRO_OS_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", String::from_utf8_lossy(&o.stderr));
    // the daemon unreachable: exit code 5, and it says how to start it
    let o = std::process::Command::new(BIN)
        .args(["container", "list"])
        .env("MICRO_OS_API", format!("http://127.0.0.1:{}", common::free_port()))
        .env("MICRO_OS_HOME", d.home.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("micro-os daemon"));

    // an oversized body is refused with 413 before it is uploaded, and changes nothing
    let huge = serde_json::json!({"name": "big", "image": "busybox", "env": {"X": "a".repeat(2 << 20)}});
    let file = d.home.path().join("huge.json");
    std::fs::write(&file, huge.to_string()).unwrap();
    let o = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code} %{content_type}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {}", d.token()), "-H", "Content-Type: application/json"])
        .args(["-H", "Expect: 100-continue", "--data-binary", &format!("@{}", file.display())])
        .arg(format!("{url}/api/v1/containers"))
        .output()
        .expect("curl is installed by scripts/setup.sh");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "413 application/problem+json");
    assert!(String::from_utf8_lossy(&o.stderr).contains("larger than the limit"));
    let (code, _, body) =
        status_of(d.api("POST", "/containers").set("Content-Type", "application/json").send_string("{nope"));
    assert_eq!(code, 400, "{body}");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["status"], 400);
    assert!(p["detail"].as_str().unwrap().contains("not valid"), "{p}");
    // JSON nested deeper than the parser goes (serde_json's limit is 128): a 400, not a
    // stack overflow, and the daemon answers the next request
    // (`network` takes any JSON value, so the parser goes as deep as the body does)
    let deep = format!("{{\"name\": \"d\", \"image\": \"busybox\", \"network\": {}", "{\"a\":".repeat(50_000));
    for body in ["[".repeat(200_000), deep] {
        let (code, ctype, answer) =
            status_of(d.api("POST", "/containers").set("Content-Type", "application/json").send_string(&body));
        assert_eq!((code, ctype.as_str()), (400, "application/problem+json"), "{answer}");
        assert!(body.starts_with('[') || answer.contains("recursion limit"), "{answer}");
    }
    assert_eq!(status_of(ureq::get(&format!("{url}/api/v1/health")).call()).0, 200);
    assert!(d.names().is_empty());

    // the spec's curl example, with the token added, and a template that exists
    let (code, _, body) = status_of(
        d.api("POST", "/containers")
            .send_json(serde_json::json!({"name": "api-container", "template": "busybox-httpd"})),
    );
    assert_eq!(code, 201, "{body}");
    let (code, _, body) = status_of(d.api("GET", "/containers/api-container").call());
    assert_eq!(code, 200);
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (code, _, _) = status_of(d.api("GET", &format!("/containers/{}", c["id"].as_str().unwrap())).call());
    assert_eq!(code, 200, "lookup by id");

    // every documented path is served (a request to it does not reach the fallback)
    let (_, _, doc) = status_of(d.api("GET", "/openapi.json").call());
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{:?}", paths.keys());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let mut concrete = path.replace("{id}", "api-container").replace("{name}", "zzz");
            if path == "/api/v1/events" {
                concrete.push_str("?follow=false"); // the stream would not end
            }
            // every endpoint but health refuses a request without the token, or with a
            // wrong one, before it looks at anything else
            let full = format!("{url}{concrete}");
            for token in [None, Some("Bearer wrong"), Some("Basic d3Jvbmc6d3Jvbmc=")] {
                let mut r = ureq::request(&method.to_uppercase(), &full);
                if let Some(t) = token {
                    r = r.set("Authorization", t);
                }
                let (code, ctype, _) = status_of(match method.as_str() {
                    "post" | "patch" | "put" => r.set("Content-Type", "application/json").send_string("{}"),
                    _ => r.call(),
                });
                if path == "/api/v1/health" {
                    assert_eq!(code, 200, "{method} {path} with {token:?}");
                } else {
                    assert_eq!(
                        (code, ctype.as_str()),
                        (401, "application/problem+json"),
                        "{method} {path} with {token:?}"
                    );
                }
            }
            let req = d.api(&method.to_uppercase(), &concrete.replace("/api/v1", ""));
            let (code, _, body) = status_of(match method.as_str() {
                "post" | "patch" => req.set("Content-Type", "application/json").send_string("{}"),
                _ => req.call(),
            });
            assert!(!body.contains("no such endpoint"), "{method} {path} documented but not served ({code})");
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[test]
fn an_unprivileged_daemon_serves_auth_and_validation() {
    // needs nothing of the machine: as root, the daemon drops to nobody
    let mut d = Daemon::prepared("127.0.0.1");
    d.unprivileged();
    d.spawn();
    let pid = d.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    assert_ne!(uid, "0", "the daemon runs as root");
    // it says what it cannot do, and serves the rest
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.log().contains("not running as root: containers and VMs cannot start") {
        assert!(std::time::Instant::now() < deadline, "no word about running unprivileged: {}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = d.url();
    let (code, _, body) = status_of(ureq::get(&format!("{url}/api/v1/health")).call());
    assert_eq!(code, 200, "{body}");
    // auth: no token, a wrong token
    let (code, ctype, body) = status_of(ureq::get(&format!("{url}/api/v1/vms")).call());
    assert_eq!((code, ctype.as_str()), (401, "application/problem+json"), "{body}");
    let (code, _, _) = status_of(ureq::get(&format!("{url}/api/v1/vms")).set("Authorization", "Bearer wrong").call());
    assert_eq!(code, 401);
    let o = std::process::Command::new(BIN)
        .args(["vm", "list"])
        .env("MICRO_OS_API", &url)
        .env("MICRO_OS_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", String::from_utf8_lossy(&o.stderr));
    // validation by the daemon, through the CLI: one line, a usage exit
    let cases: &[(&[&str], &str)] = &[
        (&["vm", "create", "--name", "a", "--memory", "0"], "memory 0 MiB is too small"),
        (
            &["vm", "create", "--name", "a", "--memory", "64", "--cpu", "0.0000001"],
            "cpu 0.0000001 is below the minimum 0.01 (try 0.5 or 2)",
        ),
        (&["vm", "create", "--name", "bad/name", "--memory", "64"], "vm name \"bad/name\""),
    ];
    for (args, needle) in cases {
        let err = d.fails(args, 2);
        assert!(err.contains(needle), "micro-os {}: {err:?} lacks {needle:?}", args.join(" "));
    }
    // and through the API: problem+json that names the input
    let (code, ctype, body) = status_of(
        d.api("POST", "/containers")
            .send_json(serde_json::json!({"name": "c", "image": "busybox", "resources": {"memory": "4XB"}})),
    );
    assert_eq!((code, ctype.as_str()), (400, "application/problem+json"), "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("resources.memory: size \"4XB\" is not a size"), "{problem}");
    let (code, _, body) =
        status_of(d.api("POST", "/vms").send_json(serde_json::json!({"name": "v", "memory": 64, "cpu": 1e-250})));
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, problem["detail"].as_str().unwrap()),
        (400, "cpu 1e-250 is below the minimum 0.01 (try 0.5 or 2)")
    );
    // nothing was created
    assert!(d.names().is_empty(), "{:?}", d.names());
    // a well-formed VM is refused up front, in one line that says why, not at its start
    let err = d.fails(&["vm", "create", "--name", "fine", "--memory", "64"], 2);
    assert!(err.contains("sandbox VMs need the daemon to run as root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(d.ok(&["vm", "list", "--format", "json"]).trim(), "[]");
}

#[test]
fn init_help_and_completion() {
    let home = tempfile::tempdir().unwrap();
    let run =
        |args: &[&str]| std::process::Command::new(BIN).args(args).env("MICRO_OS_HOME", home.path()).output().unwrap();
    let cfg = home.path().join("basic_config.json");
    std::fs::write(&cfg, r#"{"api_addr": "127.0.0.1:9191", "stop_timeout_s": 3}"#).unwrap();
    let o = run(&["init", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = std::fs::read_to_string(home.path().join("token")).unwrap();
    let key = std::fs::read_to_string(home.path().join("node.key")).unwrap();
    let o = run(&["init"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already set up"));
    assert_eq!(std::fs::read_to_string(home.path().join("token")).unwrap(), token);
    assert_eq!(std::fs::read_to_string(home.path().join("node.key")).unwrap(), key);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["api_addr"], "127.0.0.1:9191");
    // every key the README lists for config.json is one init keeps, and the other way round
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let listed = readme.split("`config.json` (keys:").nth(1).expect("the README lists the config keys");
    let listed = &listed[..listed.find(").\n").expect("the key list ends")];
    for key in saved.as_object().unwrap().keys() {
        assert!(listed.contains(&format!("`{key}`")), "config key {key} is not in the README's list");
    }
    // a key that is not one of them is refused by name, and nothing is set up
    let other = tempfile::tempdir().unwrap();
    std::fs::write(&cfg, r#"{"api_adr": "127.0.0.1:9191"}"#).unwrap();
    let o = std::process::Command::new(BIN)
        .args(["init", "--config", cfg.to_str().unwrap()])
        .env("MICRO_OS_HOME", other.path().join("home"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown field `api_adr`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!other.path().join("home").exists(), "a refused config set up a home");
    std::fs::write(&cfg, r#"{"api_addr": "not an address"}"#).unwrap();
    let o = run(&["init", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("api_addr \"not an address\""));

    let help = run(&["help", "container", "create"]);
    let flag = run(&["container", "create", "--help"]);
    assert!(help.status.success());
    assert_eq!(String::from_utf8_lossy(&help.stdout), String::from_utf8_lossy(&flag.stdout));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
    assert_eq!(run(&["help", "no-such"]).status.code(), Some(2));
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completion", shell]);
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("container"), "{shell}");
    }
}

/// A docker-save archive with a link that leads out of it: `layer.tar` → `target`.
fn archive_with_link(dir: &std::path::Path, target: &std::path::Path) -> std::path::PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("config.json", br#"{"config": {"Cmd": ["sh"]}}"#);
    add("manifest.json", br#"[{"Config": "config.json", "RepoTags": ["evil:1"], "Layers": ["layer.tar"]}]"#);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "layer.tar", target).unwrap();
    let out = dir.join(format!("evil-{}.tar", target.file_name().unwrap().to_string_lossy()));
    std::fs::write(&out, b.into_inner().unwrap()).unwrap();
    out
}

/// Issue 16: with the right token, no request makes the daemon read a host file it names.
/// The old JSON forms that named a path on the daemon's host (`images/import` with
/// `path`, `images/build` with `from_dir`, `net/send` with `file`) are refused; the served
/// document has no operation that takes a host path; an uploaded archive whose manifest
/// points a layer at a link to `/etc/shadow` (or to a valid layer outside the archive) is
/// refused and no image holds the file; the spool is empty after every upload, a broken
/// one too.
#[test]
fn no_request_makes_the_daemon_read_a_host_file() {
    if !require("no_request_makes_the_daemon_read_a_host_file", &[Need::Busybox]) {
        return;
    }
    let d = Daemon::start();
    let json = |method: &str, path: &str, body: serde_json::Value| {
        status_of(d.api(method, path).set("Content-Type", "application/json").send_string(&body.to_string()))
    };
    let (code, ctype, body) = json("POST", "/images/import", serde_json::json!({"path": "/etc/shadow", "name": "x"}));
    assert_eq!((code, ctype.as_str()), (415, "application/problem+json"), "{body}");
    let (code, _, body) = json("POST", "/images/build", serde_json::json!({"from_dir": "/etc", "name": "x"}));
    assert_eq!(code, 400, "{body}");
    let (code, _, body) =
        json("POST", "/net/send", serde_json::json!({"to": d.peer_id(), "type": "DATA", "file": "/etc/shadow"}));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("file"), "{body}");
    let (code, _, body) =
        json("POST", &format!("/net/send/stream?to={}", d.peer_id()), serde_json::json!({"file": "/etc/shadow"}));
    assert_eq!(code, 415, "{body}");

    // the document: no body field, no parameter names a host path
    let (_, _, doc) = status_of(d.api("GET", "/openapi.json").call());
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    // an absolute path anywhere but a health check's (a URL path inside the container)
    let mut others = doc["components"]["schemas"].clone();
    for probe in ["HealthProbe", "HealthCheck"] {
        others.as_object_mut().unwrap().remove(probe);
    }
    for part in [&doc["paths"], &others] {
        assert!(!part.to_string().contains(r#""pattern":"^/""#), "a field still takes an absolute path");
    }
    let host_path = ["path", "file", "from_dir", "dir", "directory"];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(!host_path.contains(&p["name"].as_str().unwrap()), "{method} {path} takes {}", p["name"]);
            }
            for (kind, content) in op["requestBody"]["content"].as_object().into_iter().flatten() {
                let mut schema = &content["schema"];
                if let Some(r) = schema["$ref"].as_str() {
                    schema = &doc["components"]["schemas"][r.rsplit('/').next().unwrap()];
                }
                for field in schema["properties"].as_object().into_iter().flatten().map(|(k, _)| k) {
                    assert!(!host_path.contains(&field.as_str()), "{method} {path} ({kind}) takes {field}");
                }
            }
        }
    }
    assert!(doc["paths"]["/api/v1/images/import"]["post"]["requestBody"]["content"]["application/x-tar"].is_object());

    // an uploaded archive with a link out of it: refused, and no image holds what it names
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("secret-layer.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(11);
    h.set_mode(0o644);
    b.append_data(&mut h, "etc/stolen", &b"host secret"[..]).unwrap();
    std::fs::write(&outside, b.into_inner().unwrap()).unwrap();
    for target in [std::path::Path::new("/etc/shadow"), outside.as_path()] {
        let evil = archive_with_link(work.path(), target);
        let e = d.fails(&["image", "import", evil.to_str().unwrap(), "--name", "evil"], 2);
        assert!(e.contains("leads out of the archive"), "{e}");
        let e = d.fails(&["image", "import", evil.to_str().unwrap()], 2);
        assert!(e.contains("leads out of the archive"), "{e}");
    }
    let list = d.ok(&["image", "ls"]);
    assert!(!list.contains("evil"), "{list}");
    let stolen = std::process::Command::new("grep")
        .args(["-rlF", "host secret"])
        .arg(d.home.path().join("images"))
        .output()
        .unwrap();
    assert!(stolen.stdout.is_empty(), "an image holds the outside file: {}", String::from_utf8_lossy(&stolen.stdout));
    let spool = d.home.path().join("spool");
    let left = |what: &str| {
        let n = std::fs::read_dir(&spool).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "the spool keeps uploads after {what}");
    };
    left("refused imports");

    // a client that goes away mid-upload leaves nothing behind either
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(d.url().trim_start_matches("http://")).unwrap();
    write!(
        s,
        "POST /api/v1/images/import?name=half HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: 10000000\r\n\r\n",
        d.token()
    )
    .unwrap();
    s.write_all(&[0u8; 100_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 1, "the upload is spooled as it arrives");
    drop(s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(&spool).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "a broken upload stays in the spool");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!d.ok(&["image", "ls"]).contains("half"));
}

/// A connection to the daemon from another loopback address, as a client elsewhere.
fn connect_from(ip: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let s = rt
        .block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(format!("{ip}:0").parse().unwrap())?;
            s.connect(to).await
        })
        .unwrap()
        .into_std()
        .unwrap();
    s.set_nonblocking(false).unwrap();
    s
}

/// Whether the server has closed `s` by now (a read ends or is reset; data or nothing
/// to read yet means open).
fn closed(mut s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let gone = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // an answer before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    gone
}

#[test]
fn slow_clients_and_a_connection_flood_leave_others_served() {
    use std::io::Write;
    if !require("slow_clients_and_a_connection_flood_leave_others_served", &[Need::Busybox]) {
        return;
    }
    let d = Daemon::start();
    let addr: std::net::SocketAddr = d.url().trim_start_matches("http://").parse().unwrap();
    let served_quickly = |what: &str| {
        let t = Instant::now();
        let (code, _, body) = status_of(d.api("GET", "/containers").call());
        assert_eq!(code, 200, "{what}: {body}");
        assert!(t.elapsed() < Duration::from_secs(2), "{what}: answered in {:?}", t.elapsed());
    };
    // slowloris: 64 clients that start a request and never finish its headers
    let mut slow: Vec<std::net::TcpStream> = (0..64)
        .map(|_| {
            let mut s = connect_from("127.0.0.2", addr);
            s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    served_quickly("beside 64 slow clients");
    // a flood from one address: 300 connections, of which the cap (256) stay open
    let flood: Vec<std::net::TcpStream> = (0..300).map(|_| connect_from("127.0.0.3", addr)).collect();
    served_quickly("during a connection flood");
    std::thread::sleep(Duration::from_millis(500));
    let refused = flood.iter().filter(|s| closed(s)).count();
    assert_eq!(refused, 300 - 256, "connections over the per-client cap are closed at once");
    let (_, _, health) = status_of(d.api("GET", "/monitor/health?components=api").call());
    assert!(health.contains("refused 44 connections over the per-client cap"), "{health}");
    // the slow clients keep trickling a byte a second; the header deadline (10 s) ends them
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        for s in &mut slow {
            let _ = s.write_all(b"x");
        }
        served_quickly("while slow clients trickle");
        std::thread::sleep(Duration::from_secs(1));
    }
    let still_open = slow.iter().filter(|s| !closed(s)).count();
    assert_eq!(still_open, 0, "slow clients past the header deadline are disconnected");
    drop(flood);
    served_quickly("after it all");
}
