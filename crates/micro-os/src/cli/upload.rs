//! What the CLI uploads to the daemon: a file's bytes, or a directory tarred on the fly.
//! The daemon reads what the client sends, never a path the client names, so the client
//! can send only what it can read itself.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::client::{exit, CliError, CliResult};

/// A body to upload: its bytes, its length when known, its content type and a name for it.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    pub len: Option<u64>,
    pub content_type: &'static str,
    pub name: String,
    /// Why a tar made on the fly stopped (the upload then breaks off), if it did.
    pub failed: Arc<Mutex<Option<String>>>,
}

fn name_of(p: &Path) -> String {
    fs::canonicalize(p)
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "upload".into())
}

/// A file's bytes as they are.
pub fn file(path: &Path) -> CliResult<Body> {
    let f = File::open(path)
        .map_err(|e| CliError::new(exit::NOT_FOUND, format!("file {} cannot be opened: {e}", path.display())))?;
    let meta = f.metadata().map_err(|e| CliError::new(exit::FAILURE, format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        return Err(CliError::usage(format!("{} is a directory, not a file", path.display())));
    }
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let content_type = if lower.ends_with(".gz") || lower.ends_with(".tgz") {
        "application/gzip"
    } else if lower.ends_with(".tar") {
        "application/x-tar"
    } else {
        "application/octet-stream"
    };
    Ok(Body { reader: Box::new(f), len: Some(meta.len()), content_type, name: name_of(path), failed: Arc::default() })
}

/// Directory `dir` as a tar made while it is sent: files with their modes, directories,
/// symlinks as symlinks; devices, sockets and fifos skipped. Owners are root's (the
/// image's files belong to its root, not to whoever ran the CLI).
pub fn tar_dir(dir: &Path) -> CliResult<Body> {
    let meta = fs::metadata(dir)
        .map_err(|e| CliError::new(exit::NOT_FOUND, format!("directory {} cannot be opened: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(CliError::usage(format!("{} is not a directory", dir.display())));
    }
    let (tx, rx) = sync_channel(8);
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let (root, slot) = (dir.to_path_buf(), failed.clone());
    std::thread::spawn(move || {
        let out = BufWriter::with_capacity(256 * 1024, Chunks(tx.clone()));
        let mut b = tar::Builder::new(out);
        let done = append_tree(&mut b, &root, Path::new("")).and_then(|_| b.into_inner()?.flush());
        if let Err(e) = done {
            *slot.lock().unwrap() = Some(format!("directory {} cannot be sent: {e}", root.display()));
            let _ = tx.send(Err(e));
        }
    });
    Ok(Body {
        reader: Box::new(ChunkReader { rx, buf: Vec::new(), at: 0 }),
        len: None,
        content_type: "application/x-tar",
        name: name_of(dir),
        failed,
    })
}

fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> io::Result<()> {
    let mut entries: Vec<PathBuf> =
        fs::read_dir(root.join(rel))?.map(|e| e.map(|e| rel.join(e.file_name()))).collect::<io::Result<_>>()?;
    entries.sort();
    for rel in entries {
        let src = root.join(&rel);
        let meta = fs::symlink_metadata(&src)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("")?;
        h.set_groupname("")?;
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, &rel, io::empty())?;
            append_tree(b, root, &rel)?;
        } else if ft.is_symlink() {
            h.set_size(0);
            b.append_link(&mut h, &rel, fs::read_link(&src)?)?;
        } else if ft.is_file() {
            let f = File::open(&src).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
            b.append_data(&mut h, &rel, f)?;
        }
    }
    Ok(())
}

/// The writing end: each write is one chunk to the reader (or the error that ended it).
struct Chunks(SyncSender<io::Result<Vec<u8>>>);

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(Ok(buf.to_vec())).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end: chunks until the writer is done; its error, if it failed.
struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => (self.buf, self.at) = (chunk, 0),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_tars_with_links_kept_and_specials_skipped() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/busybox"), b"elf").unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("shadow")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut body = tar_dir(&root).unwrap();
        let mut bytes = vec![];
        body.reader.read_to_end(&mut bytes).unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = vec![];
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            assert_eq!((e.header().uid().unwrap(), e.header().gid().unwrap()), (0, 0));
            let mut content = String::new();
            e.read_to_string(&mut content).unwrap();
            seen.push((path, link, content));
        }
        let want = |p: &str, l: Option<&str>, c: &str| (p.to_string(), l.map(String::from), c.to_string());
        assert_eq!(
            seen,
            [
                want("bin", None, ""),
                want("bin/busybox", None, "elf"),
                want("bin/sh", Some("busybox"), ""),
                // a link is a link: its target is never read
                want("shadow", Some("/etc/shadow"), ""),
            ]
        );
        assert_eq!(body.name, "root");
        assert!(tar_dir(&d.path().join("nowhere")).is_err());
    }
}
