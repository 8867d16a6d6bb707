//! `/micro-os/msg/1`'s codec: JSON envelopes and `Ack`s, as request-response's own JSON
//! codec writes them (what js-libp2p speaks to us), with explicit maximum sizes. A request
//! over its maximum is refused once that many bytes have come, never read whole.
//!
//! A request that cannot be read is still handed to the node as a request
//! (`Incoming::Unreadable`, with why), not as a read error: request-response drops a
//! failed read without telling the behaviour, and the node must count it, charge the
//! peer and answer with the reason.

use std::io;

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use micro_os_core::net::Ack;
use micro_os_net::envelope::MAX_WIRE_BYTES;
use micro_os_net::{Envelope, Rejection};

/// The largest request: an envelope as `Envelope::decode` takes it.
pub(crate) const MAX_REQUEST: u64 = MAX_WIRE_BYTES as u64;
/// The largest answer: an `Ack` is a verdict and a short reason.
pub(crate) const MAX_ANSWER: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Codec;

/// A request on `/micro-os/msg/1`: an envelope, or why the bytes that came are not one.
#[derive(Debug)]
pub(crate) enum Incoming {
    Envelope(Box<Envelope>),
    Unreadable(Rejection),
}

/// Reads at most `max` bytes; `None` when there are more (the rest is left unread).
async fn read_at_most<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    io.take(max + 1).read_to_end(&mut buf).await?;
    Ok((buf.len() as u64 <= max).then_some(buf))
}

#[async_trait::async_trait]
impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Incoming;
    type Response = Ack;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Incoming>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(match read_at_most(io, MAX_REQUEST).await? {
            None => Incoming::Unreadable(Rejection::TooLarge),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(env) => Incoming::Envelope(Box::new(env)),
                Err(_) => Incoming::Unreadable(Rejection::Malformed),
            },
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Ack>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_at_most(io, MAX_ANSWER)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "answer over its maximum size"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Incoming) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Incoming::Envelope(env) => io.write_all(&serde_json::to_vec(&*env)?).await,
            Incoming::Unreadable(why) => Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_string())),
        }
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, resp: Ack) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&serde_json::to_vec(&resp)?).await
    }
}
