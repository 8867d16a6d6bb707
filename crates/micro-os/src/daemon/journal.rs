//! The daemon's own log: every event as a JSON line in `$HOME/logs/daemon.log` (rotated
//! to `daemon.log.1` at 16 MiB), with micro-os's own targets at debug, and what
//! `micro-os logs --component C --level L` reads back, by component.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use micro_os_api::types::DaemonLogsQuery;
use micro_os_api::{ApiError, ByteStream};
use tokio::io::AsyncBufReadExt;

const ROTATE_AT: u64 = 16 << 20;

const LEVELS: &[&str] = micro_os_api::schema::LOG_LEVELS;

/// Which component an event's target belongs to.
pub fn component_of(target: &str) -> &'static str {
    super::components::of_target(target)
}

/// Appends to the log file, rotating it when it grows past `ROTATE_AT`.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<(PathBuf, Option<std::fs::File>, u64)>>,
}

impl Journal {
    pub fn open(path: PathBuf) -> Journal {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&path).ok();
        let size = f.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        Journal { inner: Arc::new(Mutex::new((path, f, size))) }
    }
}

impl Write for Journal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (path, file, size) = &mut *g;
        if *size + buf.len() as u64 > ROTATE_AT {
            let _ = std::fs::rename(&*path, path.with_extension("log.1"));
            *file = std::fs::OpenOptions::new().create(true).append(true).open(&*path).ok();
            *size = 0;
        }
        *size += buf.len() as u64;
        match file {
            Some(f) => f.write_all(buf).map(|_| buf.len()),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Journal {
    type Writer = Journal;
    fn make_writer(&'a self) -> Journal {
        self.clone()
    }
}

pub fn check(q: &DaemonLogsQuery) -> Result<(), ApiError> {
    let c = q.component.as_deref().unwrap_or("all");
    let known = super::components::names();
    if c != "all" && !known.contains(&c) {
        return Err(ApiError::bad_request(format!("component {c:?} is unknown (use all, {})", known.join(", "))));
    }
    let l = q.level.as_deref().unwrap_or("info");
    if !LEVELS.contains(&l) {
        return Err(ApiError::bad_request(format!("level {l:?} is unknown (use {})", LEVELS.join(", "))));
    }
    Ok(())
}

fn rank(level: &str) -> usize {
    LEVELS.iter().position(|l| l.eq_ignore_ascii_case(level)).unwrap_or(2)
}

/// One JSON line as text, if it passes the query's component and level.
fn render(line: &str, component: &str, min: usize) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let target = v["target"].as_str().unwrap_or("");
    let c = component_of(target);
    let level = v["level"].as_str().unwrap_or("INFO");
    if (component != "all" && component != c) || rank(level) < min {
        return None;
    }
    let fields = v["fields"].as_object();
    let message = fields.and_then(|f| f.get("message")).and_then(|m| m.as_str()).unwrap_or("");
    let mut text = format!("{} {level:>5} {c} {target}: {message}", v["timestamp"].as_str().unwrap_or(""));
    for (k, val) in fields.into_iter().flatten().filter(|(k, _)| *k != "message") {
        text.push_str(&format!(" {k}={}", val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string())));
    }
    text.push('\n');
    Some(text)
}

/// The matching lines of the log (the last `tail`), then, when following, new ones.
pub fn stream(path: &Path, q: DaemonLogsQuery) -> ByteStream {
    let path = path.to_path_buf();
    let component = q.component.clone().unwrap_or_else(|| "all".into());
    let min = rank(q.level.as_deref().unwrap_or("info"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let Ok(file) = tokio::fs::File::open(&path).await else { return };
        let mut reader = tokio::io::BufReader::new(file);
        let mut backlog = std::collections::VecDeque::new();
        let mut line = String::new();
        while reader.read_line(&mut line).await.is_ok_and(|n| n > 0) {
            if let Some(t) = render(&line, &component, min) {
                backlog.push_back(t);
                if q.tail.is_some_and(|n| backlog.len() > n as usize) {
                    backlog.pop_front();
                }
            }
            line.clear();
        }
        let now: String = backlog.into_iter().collect();
        if !now.is_empty() && tx.send(Bytes::from(now)).await.is_err() {
            return;
        }
        if !q.follow {
            return;
        }
        loop {
            match reader.read_line(&mut line).await {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if let Some(t) = render(&line, &component, min) {
                        if tx.send(Bytes::from(t)).await.is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
                _ => {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    super::logs::byte_stream(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_go_to_components_and_levels_filter() {
        assert_eq!(component_of("micro_os::daemon::engine"), "runtime");
        assert_eq!(component_of("micro_os_p2p::node"), "net");
        assert_eq!(component_of("libp2p_swarm"), "net");
        assert_eq!(component_of("tower_http::trace::on_response"), "api");
        assert_eq!(component_of("micro_os::daemon::monitor"), "monitor");
        let line = r#"{"timestamp":"2026-11-24T09:00:00.000Z","level":"DEBUG","fields":{"message":"hello","peer":"p1"},"target":"micro_os_p2p::node"}"#;
        let shown = render(line, "net", rank("debug")).unwrap();
        assert_eq!(shown, "2026-11-24T09:00:00.000Z DEBUG net micro_os_p2p::node: hello peer=p1\n");
        assert!(render(line, "all", rank("debug")).is_some());
        assert!(render(line, "net", rank("info")).is_none(), "debug is below info");
        assert!(render(line, "runtime", rank("debug")).is_none());
        let bad = DaemonLogsQuery { component: Some("warp".into()), ..Default::default() };
        assert!(check(&bad).unwrap_err().to_string().contains("component \"warp\" is unknown"));
        let bad = DaemonLogsQuery { level: Some("loud".into()), ..Default::default() };
        assert!(check(&bad).is_err());
    }
}
