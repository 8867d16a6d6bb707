//! End to end: the real `micro-os-node` binary on devnet, driven by python-bitcoinrpc (a
//! client library of Bitcoin Core's RPC from PyPI) through `tests/rpc_client.py`; then a
//! `kill -9` and a restart that must keep the tip and the wallet's balance.
//!
//! Needs python3 with `venv` and access to PyPI on first run (the venv is kept under the
//! target directory). When python-bitcoinrpc cannot be installed the test fails and says so.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PACKAGE: &str = "python-bitcoinrpc==1.0";

/// Kills the node when dropped, also when the test fails.
struct NodeProcess {
    child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(datadir: &Path, port: u16, extra: &[&str]) -> NodeProcess {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(datadir.with_extension("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_micro-os-node"))
        .args(["--datadir", datadir.to_str().unwrap(), "--network", "devnet"])
        .args(["--rpc-bind", &format!("127.0.0.1:{port}"), "--no-p2p"])
        .args(extra)
        .env_remove("MICRO_OS_CONFIG_MINE")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting micro-os-node");
    let node = NodeProcess { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "micro-os-node did not open its rpc port {port}; log:\n{}", log_of(datadir));
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

fn log_of(datadir: &Path) -> String {
    std::fs::read_to_string(datadir.with_extension("log")).unwrap_or_default()
}

/// A venv with python-bitcoinrpc under the target directory, made once.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv-python-bitcoinrpc");
    let py = venv.join("bin/python");
    let has_package = |py: &Path| {
        Command::new(py).args(["-c", "import bitcoinrpc.authproxy"]).output().is_ok_and(|o| o.status.success())
    };
    if has_package(&py) {
        return py;
    }
    let run = |cmd: &mut Command| -> Output { cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}")) };
    let out = run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
    assert!(
        out.status.success(),
        "python3 -m venv {} failed (install python3-venv): {}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out =
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", PACKAGE]));
    assert!(
        out.status.success() && has_package(&py),
        "could not install {PACKAGE} from PyPI into {} — this test needs it: {}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    py
}

fn client(py: &Path, args: &[&str], datadir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rpc_client.py");
    let out = Command::new(py).arg(script).args(args).output().expect("running rpc_client.py");
    assert!(
        out.status.success(),
        "rpc_client.py {} failed:\n{}\n{}\nnode log:\n{}",
        args[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log_of(datadir)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn python_bitcoinrpc_drives_the_node_and_state_survives_kill_9() {
    let py = python();
    let tmp = tempfile::tempdir().unwrap();
    let datadir = tmp.path().join("node");
    let port = free_port();

    // Cookie authentication, as Core's clients read it.
    let mut node = start(&datadir, port, &[]);
    let cookie = std::fs::read_to_string(datadir.join(".cookie")).unwrap();
    assert!(cookie.starts_with("__cookie__:") && cookie.len() == "__cookie__:".len() + 64, "{cookie}");
    let state = client(&py, &["run", &format!("http://{cookie}@127.0.0.1:{port}")], &datadir);

    // kill -9, then restart with a user and password.
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    drop(node);
    let port = free_port();
    let mut node = start(&datadir, port, &["--rpc-user", "alice", "--rpc-password", "s3cret"]);
    let ok = client(&py, &["check", &format!("http://alice:s3cret@127.0.0.1:{port}"), &state], &datadir);
    assert_eq!(ok, "ok");

    // SIGTERM: a clean exit 0 that removes the cookie.
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = node.child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}; log:\n{}", log_of(&datadir));
    assert!(!datadir.join(".cookie").exists());
    assert!(log_of(&datadir).contains("stopped at height 123"), "{}", log_of(&datadir));
}
