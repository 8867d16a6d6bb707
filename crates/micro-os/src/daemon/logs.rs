//! Streams a container's log file to an API response.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use micro_os_api::types::LogsQuery;
use micro_os_api::ByteStream;
use micro_os_core::ContainerState;
use micro_os_runtime::logs::parse_line;
use tokio::sync::mpsc;

use super::engine::Engine;

fn render(line: &str, q: &LogsQuery, out: &mut Vec<u8>) -> bool {
    let Some(l) = parse_line(line.trim_end_matches('\n')) else { return false };
    if q.since.is_some_and(|s| l.time < s) {
        return false;
    }
    if q.timestamps {
        out.extend_from_slice(
            format!("{} {} ", l.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), l.stream).as_bytes(),
        );
    }
    out.extend_from_slice(l.message.as_bytes());
    if !l.partial {
        out.push(b'\n');
    }
    true
}

pub fn stream(engine: Arc<Engine>, id: String, path: PathBuf, q: LogsQuery) -> ByteStream {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        let Ok(file) = File::open(&path).or_else(|_| {
            let _ = std::fs::create_dir_all(path.parent().unwrap());
            std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|_| File::open(&path))
        }) else {
            return;
        };
        let mut reader = BufReader::new(file);
        // the existing lines, with --tail applied
        let mut lines: Vec<String> = Vec::new();
        let mut buf = String::new();
        while reader.read_line(&mut buf).unwrap_or(0) > 0 {
            if buf.ends_with('\n') {
                lines.push(std::mem::take(&mut buf));
            } else {
                break; // a line still being written: read it again while following
            }
        }
        let pos = reader.stream_position().unwrap_or(0) - buf.len() as u64;
        let skip = q.tail.map_or(0, |t| lines.len().saturating_sub(t));
        let mut out = Vec::new();
        for l in &lines[skip..] {
            render(l, &q, &mut out);
            if out.len() > 64 * 1024 && tx.blocking_send(Bytes::from(std::mem::take(&mut out))).is_err() {
                return;
            }
        }
        if !out.is_empty() && tx.blocking_send(Bytes::from(out)).is_err() {
            return;
        }
        if !q.follow {
            return;
        }
        let _ = reader.seek(SeekFrom::Start(pos));
        buf.clear();
        let mut idle_checks = 0u32;
        loop {
            match reader.read_line(&mut buf) {
                Ok(n) if n > 0 && buf.ends_with('\n') => {
                    let mut out = Vec::new();
                    render(&buf, &q, &mut out);
                    buf.clear();
                    idle_checks = 0;
                    if !out.is_empty() && tx.blocking_send(Bytes::from(out)).is_err() {
                        return;
                    }
                }
                Ok(_) => {
                    if tx.is_closed() {
                        return;
                    }
                    // stop once the container is gone or has stopped and the file is drained;
                    // poll fast at first (a `run` waits on this), then settle at 50 ms
                    idle_checks = idle_checks.saturating_add(1);
                    match engine.state_of(&id) {
                        Some(ContainerState::Running | ContainerState::Paused | ContainerState::Created) => {}
                        _ => {
                            // the shim has exited: everything it wrote is in the file
                            if reader.read_line(&mut buf).unwrap_or(0) > 0 {
                                continue;
                            }
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(if idle_checks < 200 { 5 } else { 50 }));
                }
                Err(_) => return,
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) }))
}
