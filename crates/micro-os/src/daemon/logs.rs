//! Streams a container's log file to an API response: the lines written so far (with
//! `tail` and `since` applied), then, when following, new lines until the container
//! stops. A follower wakes on every state change of the daemon and every 50 ms. The log
//! may be rotated (`micro_os_runtime::logs::Writer`): reading goes across its files.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use micro_os_api::types::LogsQuery;
use micro_os_api::ByteStream;
use micro_os_core::ContainerState;
use micro_os_runtime::logs::{files, parse_line};
use std::os::unix::fs::MetadataExt;
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

/// Reads a log across its rotated files (`logs::files`, oldest first): at the end of a
/// file that is no longer the one being written it goes on to the next one, found by
/// inode, so a reader that started before a rotation (or a follower during one) reads on
/// in order. A reader more than `max_files` rotations behind resumes at the oldest kept.
struct LogReader {
    path: PathBuf,
    max_files: u32,
    reader: BufReader<tokio::fs::File>,
    ino: u64,
    pending: String,
}

impl LogReader {
    /// Starts at the oldest file kept; `None` when there is none.
    async fn open(path: PathBuf, max_files: u32) -> Option<LogReader> {
        let first = files(&path, max_files).into_iter().next()?;
        let (reader, ino) = open_file(&first).await?;
        Some(LogReader { path, max_files, reader, ino, pending: String::new() })
    }

    /// Every complete line available now, across rotations.
    async fn read(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            lines.extend(read_complete(&mut self.reader, &mut self.pending).await);
            let current = tokio::fs::metadata(&self.path).await.ok().map(|m| m.ino());
            if current.is_none_or(|ino| ino == self.ino) {
                return lines;
            }
            // rotated: our file was complete before its rename, which came before the
            // look above; what was written between our read and the rename is read now
            lines.extend(read_complete(&mut self.reader, &mut self.pending).await);
            let mut kept = Vec::new();
            for f in files(&self.path, self.max_files) {
                if let Ok(m) = tokio::fs::metadata(&f).await {
                    kept.push((f, m.ino()));
                }
            }
            let next = match kept.iter().position(|(_, ino)| *ino == self.ino) {
                Some(i) => kept.get(i + 1),
                None => kept.first(),
            };
            let Some((next, _)) = next else { return lines };
            let Some((reader, ino)) = open_file(next).await else { return lines };
            (self.reader, self.ino) = (reader, ino);
        }
    }
}

async fn open_file(path: &std::path::Path) -> Option<(BufReader<tokio::fs::File>, u64)> {
    let file = tokio::fs::File::open(path).await.ok()?;
    let ino = file.metadata().await.ok()?.ino();
    Some((BufReader::new(file), ino))
}

pub fn stream(engine: Arc<Engine>, id: String, path: PathBuf, max_files: u32, q: LogsQuery) -> ByteStream {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut changes = engine.subscribe();
        // a container that never ran has no log yet: follow an empty one
        let mut log = match LogReader::open(path.clone(), max_files).await {
            Some(r) => r,
            None if q.follow => {
                // (nor, before its first start, a state directory)
                if let Some(dir) = path.parent() {
                    let _ = tokio::fs::create_dir_all(dir).await;
                }
                let _ = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await;
                match LogReader::open(path, max_files).await {
                    Some(r) => r,
                    None => return,
                }
            }
            None => return,
        };
        let existing = log.read().await;
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
            for l in log.read().await {
                render(&l, &q, &mut out);
                if out.len() > 64 * 1024 && tx.send(Bytes::from(std::mem::take(&mut out))).await.is_err() {
                    return;
                }
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
