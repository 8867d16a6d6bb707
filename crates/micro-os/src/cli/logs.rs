//! One log stream from several containers: `container logs --name a,b,c`, a replicated
//! container's replicas, or `micro-os logs --circuit N`. Lines are interleaved by the time
//! the shim stamped them, each with a prefix naming its container (as `docker compose
//! logs` does). Each container's log is read on a thread of its own; lines wait briefly
//! (`HOLD`) so that ones from a slower stream still come out in time order, and the
//! backlog of every stream is in before the first line is printed.

use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::client::{exit, seg, CliError, CliResult, Client};

/// How long a line waits for older lines of other streams.
const HOLD: Duration = Duration::from_millis(300);

pub struct Query {
    pub follow: bool,
    pub tail: Option<usize>,
    /// Already in the form the API takes.
    pub since: Option<String>,
    pub timestamps: bool,
}

enum Msg {
    Connected,
    Line { at: DateTime<Utc>, who: usize, text: String },
    Ended(Option<String>),
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    at: std::cmp::Reverse<(DateTime<Utc>, u64)>,
    who: usize,
    text: String,
}

/// Prints the logs of `names`, merged by time, each line prefixed with its name.
pub fn merged(client: &Client, names: &[String], q: &Query) -> CliResult<()> {
    let mut params = vec![format!("follow={}", q.follow), "timestamps=true".to_string()];
    if let Some(t) = q.tail {
        params.push(format!("tail={t}"));
    }
    if let Some(s) = &q.since {
        params.push(format!("since={}", seg(s)));
    }
    let (tx, rx) = mpsc::channel::<Msg>();
    for (who, name) in names.iter().enumerate() {
        // a request now, on this thread, so that a wrong name fails before any output
        let resp = client.raw("GET", &format!("/containers/{}/logs?{}", seg(name), params.join("&")), None)?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Msg::Connected);
            let mut reader = BufReader::new(resp.into_reader());
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        // "<time> <stream> <message>"
                        let l = line.trim_end_matches('\n');
                        let mut parts = l.splitn(3, ' ');
                        let at = parts.next().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
                        let (Some(at), Some(_stream)) = (at, parts.next()) else { continue };
                        let text = parts.next().unwrap_or("").to_string();
                        if tx.send(Msg::Line { at: at.to_utc(), who, text }).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Msg::Ended(Some(e.to_string())));
                        return;
                    }
                }
            }
            let _ = tx.send(Msg::Ended(None));
        });
    }
    drop(tx);
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut heap = BinaryHeap::new();
    let (mut connected, mut live, mut seq) = (0, names.len(), 0u64);
    let mut printing_from: Option<Instant> = None;
    let stdout = std::io::stdout();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Msg::Connected) => {
                connected += 1;
                if connected == names.len() {
                    printing_from = Some(Instant::now() + HOLD);
                }
            }
            Ok(Msg::Line { at, who, text }) => {
                seq += 1;
                heap.push(Held { at: std::cmp::Reverse((at, seq)), who, text });
            }
            Ok(Msg::Ended(err)) => {
                live -= 1;
                if let Some(e) = err {
                    return Err(CliError::new(exit::FAILURE, format!("a log stream broke: {e}")));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => live = 0,
        }
        let all_in = live == 0;
        if !all_in && printing_from.is_none_or(|t| Instant::now() < t) {
            continue;
        }
        let ripe = Utc::now() - chrono::Duration::from_std(HOLD).expect("small");
        let mut out = stdout.lock();
        while heap.peek().is_some_and(|h| all_in || h.at.0 .0 <= ripe) {
            let h = heap.pop().expect("peeked");
            let line = if q.timestamps {
                format!(
                    "{:<width$} | {} {}\n",
                    names[h.who],
                    h.at.0 .0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    h.text
                )
            } else {
                format!("{:<width$} | {}\n", names[h.who], h.text)
            };
            if out.write_all(line.as_bytes()).is_err() {
                return Ok(()); // stdout closed (e.g. piped into head)
            }
        }
        let _ = out.flush();
        if all_in {
            return Ok(());
        }
    }
}
