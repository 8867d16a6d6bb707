//! A thin client of the `runc` binary. Every call is one short-lived process; errors
//! carry runc's own message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    /// runc's state directory (`--root`), ours alone so we never see others' containers.
    pub root: PathBuf,
}

impl Runc {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Runc { binary: binary.into(), root: root.into() }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c
    }

    fn run(&self, action: &str, id: &str, args: &[&str]) -> Result<String> {
        let out = self.command().arg(action).args(args).stdin(Stdio::null()).output().map_err(|e| Error::Runc {
            action: action.into(),
            id: id.into(),
            msg: format!("cannot run {}: {e}", self.binary.display()),
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Runc { action: action.into(), id: id.into(), msg: last_error(&out.stderr) })
        }
    }

    /// runc's version line (`runc version 1.1.5`), or why it cannot run.
    pub fn version(&self) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Missing(format!("cannot run {} (install runc): {e}", self.binary.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        Ok(first.rsplit(' ').next().unwrap_or(first).to_string())
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.run("kill", id, &[id, signal]).map(drop)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.run("pause", id, &[id]).map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.run("resume", id, &[id]).map(drop)
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        if force {
            self.run("delete", id, &["--force", id]).map(drop)
        } else {
            self.run("delete", id, &[id]).map(drop)
        }
    }

    /// Runs a command in a running container; returns its exit code and combined output
    /// (truncated to 4 KiB). A command still running at `timeout` is killed and reported
    /// as exit code 124, like coreutils' timeout.
    pub fn exec(&self, id: &str, args: &[String], timeout: Duration) -> Result<(i32, String)> {
        let dir = tempfile_dir(&self.root)?;
        let out_path = dir.join(format!("exec-{}-{}.out", id, std::process::id()));
        let out = std::fs::File::create(&out_path)
            .map_err(|e| Error::Failed(format!("exec output {}: {e}", out_path.display())))?;
        let mut child = self
            .command()
            .arg("exec")
            .arg(id)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| Error::Failed(e.to_string()))?)
            .stderr(out)
            .spawn()
            .map_err(|e| Error::Runc { action: "exec".into(), id: id.into(), msg: e.to_string() })?;
        let start = Instant::now();
        let code = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.code().unwrap_or(128),
                Ok(None) if start.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break 124;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(Error::Runc { action: "exec".into(), id: id.into(), msg: e.to_string() }),
            }
        };
        let mut text = std::fs::read(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        text.truncate(4096);
        Ok((code, String::from_utf8_lossy(&text).trim().to_string()))
    }
}

fn tempfile_dir(root: &Path) -> Result<PathBuf> {
    let d = root.join("tmp");
    std::fs::create_dir_all(&d).map_err(|e| Error::Failed(format!("{}: {e}", d.display())))?;
    Ok(d)
}

/// runc prints JSON log lines or plain text on stderr; keep the last message.
pub fn last_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(m) = v.get("msg").and_then(|m| m.as_str()) {
            return m.to_string();
        }
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_reads_json_and_text() {
        assert_eq!(last_error(b"{\"level\":\"error\",\"msg\":\"container not running\"}\n"), "container not running");
        assert_eq!(last_error(b"first\nsecond line\n\n"), "second line");
    }
}
