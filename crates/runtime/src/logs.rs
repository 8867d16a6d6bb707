//! Container logs in the CRI format that Kubernetes and containerd use:
//! `2024-01-02T03:04:05.123456789Z stdout F the line`. `F` marks a full line, `P` a part
//! of one longer than the writer's buffer.

use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub time: DateTime<Utc>,
    pub stream: &'a str,
    pub partial: bool,
    pub message: &'a str,
}

pub fn format_line(time: DateTime<Utc>, stream: &str, partial: bool, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 48);
    out.extend_from_slice(time.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(message);
    out.push(b'\n');
    out
}

pub fn parse_line(line: &str) -> Option<LogLine<'_>> {
    let mut it = line.splitn(4, ' ');
    let time = DateTime::parse_from_rfc3339(it.next()?).ok()?.with_timezone(&Utc);
    let stream = it.next()?;
    let tag = it.next()?;
    let message = it.next().unwrap_or("");
    Some(LogLine { time, stream, partial: tag == "P", message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Utc::now();
        let bytes = format_line(t, "stderr", false, b"hello world");
        let s = String::from_utf8(bytes).unwrap();
        let l = parse_line(s.trim_end()).unwrap();
        assert_eq!(l.time, t);
        assert_eq!((l.stream, l.partial, l.message), ("stderr", false, "hello world"));
        assert!(parse_line("garbage").is_none());
    }
}
