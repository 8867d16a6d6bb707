//! DATA as a stream: `/micro-os/data/1`, for payloads too large for one envelope.
//!
//! On the wire, after libp2p has opened the stream:
//!
//! ```text
//! sender:   u32 (big endian) length, then a signed DATA envelope whose state is a
//!           `StreamHeader` (size, optional checksum, optional name)
//! receiver: "go\n"  or  "refused <reason>\n"
//! sender:   `size` bytes of body, then the body's checksum (16 bytes), then closes
//! receiver: "ok <checksum hex>\n"  or  "refused <reason>\n"
//! ```
//!
//! The header is verified like every envelope (signature, known sender, window, nonce)
//! before a byte of body is read. The receiver checksums the body as it arrives and
//! compares it with the trailer and with the header's checksum when the sender knew it up
//! front (a file), so a truncated or corrupted transfer is refused and counted.
//!
//! Design decision: the checksum is XXH3-128, not SHA-256. It guards against accidental
//! corruption and truncation; authenticity comes from the signed header and the
//! authenticated, encrypted connection (a sender able to forge a collision is the signer
//! itself). SHA-256 took a third of both ends' CPU at VM-to-VM speeds here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use micro_os_net::{Envelope, MessageType, Rejection};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, oneshot};
use xxhash_rust::xxh3::Xxh3;

use crate::handle::Command;
use crate::limits::Limiter;
use crate::StreamError;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/micro-os/data/1");
/// The largest header envelope: a larger one is refused from its length alone.
pub const MAX_HEADER: u32 = 64 * 1024;
const CHUNK: usize = 256 * 1024;
/// Disk space a kept stream must leave free.
const KEEP_MARGIN: u64 = 1 << 30;

/// The state of a stream's header envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub size: u64,
    /// XXH3-128 of the body, hex, when known before sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// Keep the body in the receiver's inbox under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where a stream's body comes from.
pub type Source = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

async fn read_line<R: futures_util::AsyncRead + Unpin>(r: &mut R) -> Result<String, StreamError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b).await? {
            0 => return Err(StreamError::Closed),
            _ if b[0] == b'\n' => break,
            _ if line.len() < 1024 => line.push(b[0]),
            _ => return Err(StreamError::TooLong),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn verdict(line: &str) -> Result<&str, StreamError> {
    match line.split_once(' ').unwrap_or((line, "")) {
        ("go", _) => Ok(""),
        ("ok", rest) => Ok(rest),
        ("refused", why) => Err(StreamError::Refused(why.to_string())),
        _ => Err(StreamError::Unexpected(line.to_string())),
    }
}

/// Bytes free on the filesystem of `path`.
fn free_space(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_free() as u64 * s.fragment_size() as u64)
}

/// The hex form of a checksum.
pub fn hex128(sum: u128) -> String {
    format!("{sum:032x}")
}

/// XXH3-128 of a file, read in large chunks.
pub fn checksum_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(hex128(h.digest128())),
            n => h.update(&buf[..n]),
        }
    }
}

/// Sends `header` (a sealed DATA envelope) and the body; returns the body's length and
/// checksum once the receiver has accepted both.
pub(crate) async fn send(
    control: &mut libp2p_stream::Control,
    to: PeerId,
    header: &Envelope,
    mut body: Source,
) -> Result<(u64, String), StreamError> {
    let mut s =
        control.open_stream(to, PROTOCOL).await.map_err(|source| StreamError::Open { protocol: PROTOCOL, source })?;
    let head = header.encode();
    s.write_all(&(head.len() as u32).to_be_bytes()).await?;
    s.write_all(&head).await?;
    s.flush().await?;
    verdict(&read_line(&mut s).await?)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = body.read(&mut buf).await.map_err(StreamError::Source)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        s.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    let sum = hasher.digest128();
    s.write_all(&sum.to_be_bytes()).await?;
    s.close().await?;
    let answer = read_line(&mut s).await?;
    let theirs = verdict(&answer)?;
    let ours = hex128(sum);
    if theirs != ours {
        return Err(StreamError::Checksum { theirs: theirs.to_string(), ours });
    }
    Ok((sent, ours))
}

/// Serves incoming data streams until the swarm goes away.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    tx: mpsc::Sender<Command>,
    inbox: Option<PathBuf>,
    limiter: Arc<Limiter>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        if limiter.check_key(&peer).is_err() {
            tokio::spawn(refuse(peer, stream, tx.clone(), Rejection::RateLimited));
            continue;
        }
        tokio::spawn(receive(peer, stream, tx.clone(), inbox.clone()));
    }
}

/// Refuses a stream before reading anything of it, and charges its peer.
async fn refuse(peer: PeerId, mut s: libp2p::Stream, tx: mpsc::Sender<Command>, why: Rejection) {
    let _ = tx.send(Command::Penalty(peer, why)).await;
    let _ = s.write_all(format!("refused {why}\n").as_bytes()).await;
    let _ = s.close().await;
}

/// What the swarm task is told when a stream has been read.
pub(crate) struct Received {
    pub peer: PeerId,
    pub bytes: u64,
    pub result: Result<(), Rejection>,
}

async fn receive(peer: PeerId, mut s: libp2p::Stream, tx: mpsc::Sender<Command>, inbox: Option<PathBuf>) {
    let (outcome, bytes) = match take(peer, &mut s, &tx, inbox.as_deref()).await {
        Ok((bytes, sum)) => (format!("ok {sum}\n"), Some((bytes, Ok(())))),
        Err(Refusal { why, counted: Some(bytes), .. }) => (format!("refused {why}\n"), Some((bytes, Err(why)))),
        Err(Refusal { why, counted: None, unverified }) => {
            if unverified {
                let _ = tx.send(Command::Penalty(peer, why)).await;
            }
            (format!("refused {why}\n"), None)
        }
    };
    if let Some((bytes, result)) = bytes {
        let _ = tx.send(Command::Received(Received { peer, bytes, result })).await;
    }
    let _ = s.write_all(outcome.as_bytes()).await;
    let _ = s.close().await;
}

struct Refusal {
    why: Rejection,
    /// Set once the header was accepted: the body bytes read, reported to the swarm
    /// task (header refusals were counted by its verifier already).
    counted: Option<u64>,
    /// A header refused before the verifier saw it (too large, not an envelope): counted
    /// and charged here.
    unverified: bool,
}

async fn take(
    peer: PeerId,
    s: &mut libp2p::Stream,
    tx: &mpsc::Sender<Command>,
    inbox: Option<&Path>,
) -> Result<(u64, String), Refusal> {
    let header_refused = |why| Refusal { why, counted: None, unverified: false };
    let unverified = |why| Refusal { why, counted: None, unverified: true };
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(|_| header_refused(Rejection::Malformed))?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER {
        // refused from its length: the header is never read
        return Err(unverified(Rejection::TooLarge));
    }
    let mut head = vec![0u8; len as usize];
    s.read_exact(&mut head).await.map_err(|_| unverified(Rejection::Malformed))?;
    let env = Envelope::decode(&head).map_err(|_| unverified(Rejection::Malformed))?;
    let header: StreamHeader = serde_json::from_str(&env.payload.state)
        .ok()
        .filter(|_| env.kind == MessageType::Data)
        .ok_or(unverified(Rejection::Malformed))?;
    let (reply, verdict) = oneshot::channel();
    tx.send(Command::Verify { peer, env: Box::new(env.clone()), counts: false, open: false, reply })
        .await
        .map_err(|_| header_refused(Rejection::Malformed))?;
    verdict.await.unwrap_or(Err(Rejection::Malformed)).map_err(header_refused)?;
    // a stream to keep must fit on the inbox's disk with a margin (not counted against
    // the sender: the body never came)
    if let (Some(dir), Some(_)) = (inbox, &header.name) {
        if free_space(dir.parent().unwrap_or(dir)).is_some_and(|f| header.size.saturating_add(KEEP_MARGIN) > f) {
            return Err(header_refused(Rejection::NoRoom));
        }
    }
    s.write_all(b"go\n").await.map_err(|_| header_refused(Rejection::Truncated))?;
    s.flush().await.map_err(|_| header_refused(Rejection::Truncated))?;

    let mut keep = match (inbox, &header.name) {
        (Some(dir), Some(_)) => {
            let partial = dir.join(format!(".partial-{}", env.nonce));
            let _ = std::fs::create_dir_all(dir);
            tokio::fs::File::create(&partial).await.ok().map(|f| (f, partial))
        }
        _ => None,
    };
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let refused = |why, got| Refusal { why, counted: Some(got), unverified: false };
    let body = async {
        while got < header.size {
            let want = (header.size - got).min(CHUNK as u64) as usize;
            let n = s.read(&mut buf[..want]).await.map_err(|_| refused(Rejection::Truncated, got))?;
            if n == 0 {
                return Err(refused(Rejection::Truncated, got));
            }
            hasher.update(&buf[..n]);
            if let Some((f, _)) = &mut keep {
                tokio::io::AsyncWriteExt::write_all(f, &buf[..n])
                    .await
                    .map_err(|_| refused(Rejection::Truncated, got))?;
            }
            got += n as u64;
        }
        let mut trailer = [0u8; 16];
        s.read_exact(&mut trailer).await.map_err(|_| refused(Rejection::Truncated, got))?;
        let sum = hasher.digest128();
        let declared = header.xxh3.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(&hex128(sum)));
        if u128::from_be_bytes(trailer) != sum || !declared {
            return Err(refused(Rejection::StreamChecksum, got));
        }
        Ok((got, hex128(sum)))
    }
    .await;
    if let Some((mut f, partial)) = keep {
        // a tokio File writes in the background: wait for the last write before the rename
        let _ = tokio::io::AsyncWriteExt::flush(&mut f).await;
        drop(f);
        match (&body, header.name.as_deref().and_then(|n| Path::new(n).file_name())) {
            (Ok(_), Some(name)) => {
                let _ = std::fs::rename(&partial, partial.with_file_name(name));
            }
            _ => {
                let _ = std::fs::remove_file(&partial);
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{listening, node, node_with_inbox};
    use crate::Nat;

    fn header(size: usize, xxh3: Option<String>) -> StreamHeader {
        StreamHeader { size: size as u64, xxh3, name: None }
    }

    #[tokio::test]
    async fn a_corrupted_or_truncated_data_stream_is_refused_and_counted() {
        let (a, _) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        let (b, b_id) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        a.add_address(b_id, listening(&b).await).await;
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();
        let sum = hex128(xxhash_rust::xxh3::xxh3_128(&data));
        let body = |d: &Vec<u8>| -> Source { Box::new(std::io::Cursor::new(d.clone())) };

        let sent = a.send_stream(b_id, header(data.len(), Some(sum.clone())), body(&data)).await.unwrap();
        assert_eq!(sent, (data.len() as u64, sum.clone()));
        // the body differs from what the signed header promised (a file that changed
        // after it was hashed, a bit flipped before the transport)
        let mut flipped = data.clone();
        flipped[1_000_000] ^= 1;
        let err =
            a.send_stream(b_id, header(data.len(), Some(sum.clone())), body(&flipped)).await.unwrap_err().to_string();
        assert!(err.contains("stream checksum does not match"), "{err}");
        // shorter than declared
        let err = a.send_stream(b_id, header(data.len() + 100, None), body(&data)).await.unwrap_err().to_string();
        assert!(err.contains("stream truncated"), "{err}");
        // no hash up front, and a trailer that does not match the body
        let env = a.seal(b_id, MessageType::Data, serde_json::to_string(&header(4, None)).unwrap()).await.unwrap();
        let mut s = a.control.clone().open_stream(b_id, PROTOCOL).await.unwrap();
        use futures_util::{AsyncReadExt, AsyncWriteExt};
        let head = env.encode();
        s.write_all(&(head.len() as u32).to_be_bytes()).await.unwrap();
        s.write_all(&head).await.unwrap();
        let mut go = [0u8; 3];
        s.read_exact(&mut go).await.unwrap();
        assert_eq!(&go, b"go\n");
        s.write_all(b"abcd").await.unwrap();
        s.write_all(&xxhash_rust::xxh3::xxh3_128(b"abce").to_be_bytes()).await.unwrap();
        s.close().await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "refused stream checksum does not match\n");

        let st = b.status().await.unwrap();
        assert_eq!(st.rejections.get("stream checksum does not match"), Some(&2), "{st:?}");
        assert_eq!(st.rejections.get("stream truncated"), Some(&1), "{st:?}");
        assert_eq!((st.streams_in, st.stream_bytes_in), (1, data.len() as u64), "only the good stream counts");
        assert_eq!(st.messages.get("DATA"), Some(&1));
    }

    #[tokio::test]
    async fn named_streams_are_kept_when_they_fit() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let (a, _) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        let (b, b_id) = node_with_inbox(&["/ip4/127.0.0.1/tcp/0"], Nat::default(), Some(inbox.clone()));
        a.add_address(b_id, listening(&b).await).await;
        let data = b"block 1\nblock 2\n".to_vec();
        let named = |size: u64, name: &str| StreamHeader { size, xxh3: None, name: Some(name.into()) };
        let body: Source = Box::new(std::io::Cursor::new(data.clone()));
        a.send_stream(b_id, named(data.len() as u64, "../../chain.txt"), body).await.unwrap();
        // kept under its base name only, inside the inbox
        assert_eq!(std::fs::read(inbox.join("chain.txt")).unwrap(), data);
        // one that cannot fit on the disk is refused before any of it is sent
        let body: Source = Box::new(tokio::io::AsyncReadExt::take(tokio::io::repeat(0), 0));
        let err = a.send_stream(b_id, named(u64::MAX / 4, "huge.bin"), body).await.unwrap_err().to_string();
        assert!(err.contains("no room to keep the stream"), "{err}");
        assert!(!inbox.join("huge.bin").exists());
        let st = b.status().await.unwrap();
        assert!(st.rejections.is_empty(), "not the sender's fault: {:?}", st.rejections);
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1, "no partial file left");
    }
}
