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

/// What a command run with [`Runc::exec_output`] printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code; 124 when it was killed at the timeout, 128+N when a signal N ended it.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More than the limit was printed on stdout or stderr; the rest is cut off.
    pub truncated: bool,
}

impl Runc {
    /// Runs `args` in running container `id` as `docker exec` does: in its namespaces and
    /// cgroup, with its environment, user and working directory (runc takes them from the
    /// container's process spec) plus `env`; stdout and stderr apart, each up to `limit`
    /// bytes; killed at `timeout`.
    pub fn exec_output(
        &self,
        id: &str,
        args: &[String],
        env: &[(String, String)],
        timeout: Duration,
        limit: usize,
    ) -> Result<ExecOutput> {
        let dir = tempfile_dir(&self.root)?;
        let stamp = format!("{}-{}-{:?}", id, std::process::id(), std::thread::current().id());
        let paths = [dir.join(format!("exec-{stamp}.out")), dir.join(format!("exec-{stamp}.err"))];
        let create = |p: &PathBuf| {
            std::fs::File::create(p).map_err(|e| Error::Failed(format!("exec output {}: {e}", p.display())))
        };
        let mut cmd = self.command();
        cmd.arg("exec");
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        let spawned =
            cmd.arg(id).args(args).stdin(Stdio::null()).stdout(create(&paths[0])?).stderr(create(&paths[1])?).spawn();
        let read = |p: &PathBuf| {
            let mut b = std::fs::read(p).unwrap_or_default();
            let _ = std::fs::remove_file(p);
            let cut = b.len() > limit;
            b.truncate(limit);
            (b, cut)
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                paths.iter().for_each(|p| drop(read(p)));
                return Err(Error::Runc { action: "exec".into(), id: id.into(), msg: e.to_string() });
            }
        };
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(Error::Runc { action: "exec".into(), id: id.into(), msg: e.to_string() }),
            }
        };
        let ((stdout, cut_out), (stderr, cut_err)) = (read(&paths[0]), read(&paths[1]));
        let code = match status {
            None => 124,
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            }
        };
        Ok(ExecOutput { code, stdout, stderr, truncated: cut_out || cut_err })
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
