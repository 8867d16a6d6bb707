//! `micro-os events`: the daemon's event stream (Server-Sent Events), one line per event.

use std::io::{BufRead, BufReader, Write};

use micro_os_api::types::Event;

use super::args::Format;
use super::client::{exit, seg, CliError, CliResult, Client};

pub struct Args {
    pub kinds: Option<String>,
    pub object: Option<String>,
    pub since: Option<i64>,
    pub tail: Option<usize>,
    pub follow: bool,
    pub format: Format,
}

/// How many recorded events `--no-follow` shows when neither `--since` nor `--tail` is given.
const RECENT: usize = 100;

pub fn run(client: &Client, a: Args) -> CliResult<i32> {
    if a.format == Format::Yaml {
        return Err(CliError::usage("events are printed as a table or json (--format table|json)"));
    }
    if a.since.is_some_and(|s| s < 0) {
        return Err(CliError::usage("--since takes an event id (0 or more)"));
    }
    let mut q = vec![format!("follow={}", a.follow)];
    if let Some(k) = &a.kinds {
        q.push(format!("type={}", seg(k)));
    }
    if let Some(o) = &a.object {
        q.push(format!("object={}", seg(o)));
    }
    if let Some(s) = a.since {
        q.push(format!("since={s}"));
    } else if let Some(n) = a.tail.or((!a.follow).then_some(RECENT)) {
        q.push(format!("tail={n}"));
    }
    let resp = client.raw("GET", &format!("/events?{}", q.join("&")), None)?;
    let mut reader = BufReader::new(resp.into_reader());
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(e) => return Err(CliError::new(exit::FAILURE, format!("event stream broke: {e}"))),
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(d) = l.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if l.is_empty() && !data.is_empty() {
            let ev: Event = serde_json::from_str(&data).map_err(|e| {
                CliError::new(exit::FAILURE, format!("the daemon sent an event that is not valid: {e}"))
            })?;
            data.clear();
            let out = match a.format {
                Format::Json => serde_json::to_string(&ev).expect("events serialise"),
                _ => table_line(&ev),
            };
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, "{out}").and_then(|_| stdout.flush()).is_err() {
                return Ok(0); // stdout closed (e.g. piped into head)
            }
        }
    }
}

fn table_line(e: &Event) -> String {
    let at = e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let detail = if e.detail.is_empty() { String::new() } else { format!("  {}", e.detail) };
    format!("{at}  #{:<6} {:<9} {:<24} {}{detail}", e.id, e.kind, e.name, e.action)
}
