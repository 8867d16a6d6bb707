//! Container logs in the CRI format that Kubernetes and containerd use:
//! `2024-01-02T03:04:05.123456789Z stdout F the line`. `F` marks a full line, `P` a part
//! of one longer than the writer's buffer.
//!
//! A log is rotated by size, as Docker's json-file driver does: [`Writer`] renames a full
//! `container.log` to `container.log.1` (`.1` to `.2`, …, the oldest dropped) and starts
//! a new one, always between two lines; [`files`] lists what is kept, oldest first, for a
//! reader that reads across them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// When a log is rotated and how many of its files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// A file that would grow past this many bytes is rotated first; 0: never rotate.
    pub max_size: u64,
    /// Files kept, the one being written included (at least 1).
    pub max_files: u32,
}

impl Default for Rotation {
    /// 10 MiB × 3, Docker's json-file `max-size=10m, max-file=3` as many set it.
    fn default() -> Self {
        Rotation { max_size: 10 << 20, max_files: 3 }
    }
}

/// The `n`th rotated file of the log at `path` (`container.log.1`, …); 0 is `path`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The files of the log at `path` that exist, oldest first, the one being written last.
pub fn files(path: &Path, max_files: u32) -> Vec<PathBuf> {
    (0..max_files.max(1)).rev().map(|n| rotated(path, n)).filter(|p| p.exists()).collect()
}

/// Appends lines to a log and rotates it at its size limit.
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl Writer {
    /// Opens (or creates) the log at `path` for appending; its size so far counts.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Writer> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Writer { path: path.to_path_buf(), file, size, rotation })
    }

    /// Writes one whole line, rotating first when it would take the file past its limit
    /// (a line longer than the limit gets a file of its own).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let max = self.rotation.max_size;
        if max > 0 && self.size > 0 && self.size + line.len() as u64 > max {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `path.{n-2}` → `path.{n-1}` (replacing the oldest), …, `path` → `path.1`, and a new
    /// empty `path`. A reader holding the old file reads it to its end, then finds the
    /// new one by its changed inode.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.max(1);
        if keep == 1 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..keep - 1).rev() {
                match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        // a file beyond what is kept now (the limit was lowered) goes too
        let _ = std::fs::remove_file(rotated(&self.path, keep));
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

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

    fn check(rotation: Rotation, lines: usize, line_len: usize, want_files: usize, want_kept: std::ops::Range<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = Writer::open(&path, rotation).unwrap();
        for i in 0..lines {
            let mut line = format!("{i:0width$}", width = line_len - 1).into_bytes();
            line.push(b'\n');
            w.write_line(&line).unwrap();
        }
        let files = files(&path, rotation.max_files);
        assert_eq!(files.len(), want_files, "{rotation:?}: {files:?}");
        let mut kept = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            if rotation.max_size > 0 {
                assert!(text.len() as u64 <= rotation.max_size.max(line_len as u64), "{f:?}: {}", text.len());
            }
            kept.extend(text.lines().map(|l| l.parse::<usize>().unwrap()));
        }
        // whole lines, in order, the newest kept and the oldest dropped
        assert_eq!(kept, want_kept.collect::<Vec<_>>(), "{rotation:?}");
        let on_disk: usize = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(on_disk, want_files, "nothing beyond the kept files");
    }

    #[test]
    fn rotation_keeps_the_newest_whole_lines_in_order() {
        // 10-byte lines, 100 bytes a file: 10 lines each
        let r = |max_size, max_files| Rotation { max_size, max_files };
        check(r(100, 3), 5, 10, 1, 0..5);
        check(r(100, 3), 10, 10, 1, 0..10);
        check(r(100, 3), 11, 10, 2, 0..11);
        check(r(100, 3), 30, 10, 3, 0..30);
        check(r(100, 3), 31, 10, 3, 10..31);
        check(r(100, 3), 1000, 10, 3, 970..1000);
        // one file: the full one is dropped
        check(r(100, 1), 25, 10, 1, 20..25);
        // a limit that is not a multiple of the line: a file never passes it
        check(r(95, 2), 40, 10, 2, 27..40);
        // a line longer than the limit gets a file of its own
        check(r(5, 2), 3, 10, 2, 1..3);
        // 0: never rotate
        check(r(0, 3), 1000, 10, 1, 0..1000);
    }

    #[test]
    fn a_reopened_log_counts_its_size_and_a_lowered_limit_drops_the_extra_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut w = Writer::open(&path, Rotation { max_size: 100, max_files: 4 }).unwrap();
        for _ in 0..35 {
            w.write_line(b"123456789\n").unwrap();
        }
        assert_eq!(files(&path, 4).len(), 4);
        drop(w);
        // reopened with 3 files: the 50 bytes there count, and .3 goes at the next rotation
        let mut w = Writer::open(&path, Rotation { max_size: 100, max_files: 3 }).unwrap();
        for _ in 0..5 {
            w.write_line(b"123456789\n").unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
        w.write_line(b"123456789\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10);
        assert!(!rotated(&path, 3).exists());
        assert_eq!(files(&path, 3), vec![rotated(&path, 2), rotated(&path, 1), path.clone()]);
    }
}
