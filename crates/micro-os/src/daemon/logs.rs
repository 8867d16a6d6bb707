//! Streams a container's log file to an API response: the lines written so far (with
//! `tail` and `since` applied), then, when following, new lines until the container
//! stops. A follower wakes on every state change of the daemon and every 50 ms.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use micro_os_api::types::LogsQuery;
use micro_os_api::ByteStream;
use micro_os_core::ContainerState;
use micro_os_runtime::logs::parse_line;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::engine::Engine;

fn render(line: &str, q: &LogsQuery, out: &mut Vec<u8>) {
    let Some(l) = parse_line(line.trim_end_matches('\n')) else { return };
    if q.since.is_some_and(|s| l.time < s) {
        return;
    }
    if q.timestamps {
        let t = l.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        out.extend_from_slice(format!("{t} {} ", l.stream).as_bytes());
    }
    out.extend_from_slice(l.message.as_bytes());
    if !l.partial {
        out.push(b'\n');
    }
}

/// Reads every complete line available now; a trailing partial line stays in `pending`.
async fn read_complete<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, pending: &mut String) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match reader.read_line(pending).await {
            Ok(n) if n > 0 && pending.ends_with('\n') => lines.push(std::mem::take(pending)),
            _ => return lines,
        }
    }
}

pub fn stream(engine: Arc<Engine>, id: String, path: PathBuf, q: LogsQuery) -> ByteStream {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut changes = engine.subscribe();
        // a container that never ran has no log yet: follow an empty one
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(_) if q.follow => {
                let _ = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await;
                match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
            Err(_) => return,
        };
        let mut reader = BufReader::new(file);
        let mut pending = String::new();
        let existing = read_complete(&mut reader, &mut pending).await;
        let keep = q.tail.map_or(usize::MAX, |n| n as usize);
        let mut last: VecDeque<String> = VecDeque::new();
        for l in existing {
            if last.len() == keep {
                last.pop_front();
            }
            if keep > 0 {
                last.push_back(l);
            }
        }
        let mut out = Vec::new();
        for l in &last {
            render(l, &q, &mut out);
            if out.len() > 64 * 1024 && tx.send(Bytes::from(std::mem::take(&mut out))).await.is_err() {
                return;
            }
        }
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        if !q.follow {
            return;
        }
        loop {
            let running = matches!(
                engine.state_of(&id),
                Some(ContainerState::Running | ContainerState::Paused | ContainerState::Created)
            );
            let mut out = Vec::new();
            for l in read_complete(&mut reader, &mut pending).await {
                render(&l, &q, &mut out);
            }
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            // the state was read before the last read of the file: when it said stopped,
            // everything the container wrote has been sent
            if !running {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = changes.recv() => {}
                _ = tx.closed() => return,
            }
        }
    });
    byte_stream(rx)
}

/// A response body from the chunks a task sends.
pub fn byte_stream(rx: mpsc::Receiver<Bytes>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) }))
}
