//! Uploads spooled in the daemon's home (`spool/upload-<random>/`): an image archive or a
//! file to send arrives as a request body, is written here as it comes (never held whole
//! in memory), used by the path-based code (`ImageStore::import_as`, a DATA stream) and
//! removed when its [`Spool`] drops — after the job, on an error, or when the client went
//! away mid-upload. What a crash leaves is removed at the next start ([`clear`]).

use std::io;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use micro_os_api::action::Upload;
use tokio::io::AsyncWriteExt;

use crate::home::Home;

fn root(home: &Home) -> PathBuf {
    home.root.join("spool")
}

/// Removes what earlier runs left in the spool.
pub(super) fn clear(home: &Home) {
    let _ = std::fs::remove_dir_all(root(home));
}

/// One upload's directory, removed with everything in it when dropped.
pub(super) struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub(super) fn new(home: &Home) -> io::Result<Spool> {
        use std::os::unix::fs::DirBuilderExt;
        let root = root(home);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&root)?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(io::Error::other)?;
        let dir = root.join(format!("upload-{}", hex::encode(id)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Spool { dir })
    }

    /// A file of this upload; `name` is one path component (checked by [`file_name`]).
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` when it is a plain file name (what a client may call an upload).
pub(super) fn file_name(name: &str) -> Result<&str, String> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    match plain {
        true => Ok(name),
        false => Err(format!("file name {name:?} is not a plain file name (no '/', not . or ..)")),
    }
}

/// Writes the upload to `to` as it arrives; `progress` hears (received, declared) about
/// every 1 % of a declared length, or every 64 MiB. Returns the bytes received.
pub(super) async fn receive(upload: Upload, to: &Path, progress: &mut impl FnMut(u64, u64)) -> io::Result<u64> {
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(to).await?;
    let total = upload.declared.unwrap_or(0);
    let step = if total > 0 { (total / 100).max(1 << 20) } else { 64 << 20 };
    let (mut got, mut next) = (0u64, step);
    let mut body = upload.body;
    progress(0, total);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        file.write_all(&chunk).await?;
        got += chunk.len() as u64;
        if got >= next {
            progress(got, total.max(got));
            next = got + step;
        }
    }
    file.sync_all().await?;
    if total > 0 && got != total {
        return Err(io::Error::other(format!("the upload ended after {got} of {total} bytes")));
    }
    progress(got, total.max(got));
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(chunks: Vec<io::Result<&'static [u8]>>, declared: Option<u64>) -> Upload {
        let s = futures_util::stream::iter(chunks.into_iter().map(|c| c.map(axum::body::Bytes::from_static)));
        Upload { body: Box::pin(s), declared }
    }

    #[tokio::test]
    async fn spools_an_upload_and_removes_it_whatever_happens() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home { root: tmp.path().to_path_buf() };
        let spool = Spool::new(&home).unwrap();
        let f = spool.path("a.bin");
        let mut seen = vec![];
        let n = receive(upload(vec![Ok(b"abc"), Ok(b"de")], Some(5)), &f, &mut |g, t| seen.push((g, t))).await.unwrap();
        assert_eq!((n, std::fs::read(&f).unwrap()), (5, b"abcde".to_vec()));
        assert_eq!(seen.last(), Some(&(5, 5)));
        let dir = f.parent().unwrap().to_path_buf();
        drop(spool);
        assert!(!dir.exists(), "the spool outlived its upload");
        // a client that goes away mid-upload: an error, and the spool goes with its guard
        let spool = Spool::new(&home).unwrap();
        let broken = upload(vec![Ok(b"abc"), Err(io::Error::other("connection reset"))], None);
        assert!(receive(broken, &spool.path("b"), &mut |_, _| {}).await.is_err());
        let short = upload(vec![Ok(b"abc")], Some(10));
        let e = receive(short, &spool.path("c"), &mut |_, _| {}).await.unwrap_err();
        assert!(e.to_string().contains("3 of 10"), "{e}");
        drop(spool);
        assert_eq!(std::fs::read_dir(tmp.path().join("spool")).unwrap().count(), 0);
        assert!(file_name("chain.bin").is_ok());
        for bad in ["", ".", "..", "a/b", "/etc/shadow"] {
            assert!(file_name(bad).is_err(), "{bad}");
        }
    }
}
