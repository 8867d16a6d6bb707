//! Messages: the outbox's envelopes on `/micro-os/msg/1` and their verdicts, broadcasts
//! on gossipsub, and the verification of envelopes that arrive on streams (data streams'
//! headers, registered protocols' requests).

use std::time::Instant;

use libp2p::request_response::{self, ResponseChannel};
use libp2p::{gossipsub, PeerId};
use micro_os_core::net::Ack;
use micro_os_net::{Envelope, MessageType, Rejection};

use crate::handle::Delivery;
use crate::node::Node;
use crate::{codec, now_secs, stream, Error};

impl Node {
    /// Sends what the outbox lets out now.
    pub fn send_queued(&mut self) {
        while let Some(q) = self.outbox.pop() {
            let low = q.kind.priority() <= MessageType::Data.priority();
            let env = self.signer.seal(q.kind, &q.to.to_string(), q.state, now_secs());
            let size = env.encoded_len() as u64;
            let id = self.swarm.behaviour_mut().msg.send_request(&q.to, codec::Incoming::Envelope(Box::new(env)));
            self.count_sent(q.to, q.kind, size);
            self.pending.insert(id, (low, Instant::now(), size, q.reply));
        }
    }

    pub fn broadcast(&mut self, kind: MessageType, state: String) -> Result<(), Error> {
        let env = self.signer.seal(kind, "*", state, now_secs());
        let topic = self.topic.clone();
        self.swarm.behaviour_mut().gossip.publish(topic, env.encode())?;
        *self.sent.entry(kind.to_string()).or_default() += 1;
        Ok(())
    }

    pub fn on_msg(&mut self, e: request_response::Event<codec::Incoming, Ack>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    // over the rate, too large or not an envelope: refused before the
                    // verifier spends a signature check on it
                    let refused = match request {
                        _ if self.limiter.check_key(&peer).is_err() => Rejection::RateLimited,
                        codec::Incoming::Envelope(env) => return self.batch.push((peer, *env, channel)),
                        codec::Incoming::Unreadable(why) => why,
                    };
                    tracing::warn!("refused a message from {peer}: {refused}");
                    self.refuse(peer, refused);
                    let ack = Ack { accepted: false, reason: Some(refused.to_string()) };
                    let _ = self.swarm.behaviour_mut().msg.send_response(channel, ack);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((low, at, bytes, r)) = self.pending.remove(&request_id) {
                        self.outbox.low_in_flight -= usize::from(low);
                        let _ = r.send(Ok(Delivery { ack: response, rtt: at.elapsed(), bytes }));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some((low, _, _, r)) = self.pending.remove(&request_id) {
                    self.outbox.low_in_flight -= usize::from(low);
                    let _ = r.send(Err(Error::Outbound(error)));
                }
            }
            _ => {}
        }
    }

    pub fn on_broadcast(&mut self, message: gossipsub::Message) {
        // strict mode: gossipsub checked the author's signature; the envelope must come
        // from that same author and pass our own checks too
        let verdict = match (Envelope::decode(&message.data), message.source) {
            (Ok(env), Some(author)) if env.sender == author.to_string() => {
                let (trusted, policy) = (&self.trusted, &self.policy);
                self.verifier
                    .verify(&env, now_secs(), |p| Self::is_known(trusted, policy, p))
                    .map(|_| env)
                    .map_err(|r| r.to_string())
            }
            (Ok(_), _) => Err("broadcast author is not the envelope's sender".to_string()),
            (Err(e), _) => Err(e.to_string()),
        };
        match verdict {
            Ok(env) => {
                *self.messages.entry(env.kind.to_string()).or_default() += 1;
                if let Some(p) = message.source.and_then(|a| self.peers.get_mut(&a)) {
                    p.messages_in += 1;
                    p.bytes_in += message.data.len() as u64;
                }
            }
            Err(reason) => {
                tracing::warn!("refused a broadcast: {reason}");
                if let Some(author) = message.source {
                    self.judge(author);
                }
            }
        }
    }

    /// Verifies the requests that arrived together — one ed25519 batch — and answers each.
    pub fn verify_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut envs = Vec::with_capacity(self.batch.len());
        let mut from = Vec::with_capacity(self.batch.len());
        for (peer, env, channel) in std::mem::take(&mut self.batch) {
            // the envelope must come from the connection's own peer
            if env.sender == peer.to_string() {
                envs.push(env);
                from.push((peer, channel));
            } else {
                self.verifier.reject(&peer.to_string(), Rejection::UnknownSender);
                self.judge(peer);
                self.answer(peer, &env, channel, Err("sender is not the connected peer".to_string()));
            }
        }
        let (trusted, policy) = (&self.trusted, &self.policy);
        let verdicts = self.verifier.verify_batch(&envs, now_secs(), |p| Self::is_known(trusted, policy, p));
        for ((env, (peer, channel)), verdict) in envs.into_iter().zip(from).zip(verdicts) {
            if verdict.is_err() {
                self.judge(peer);
            }
            self.answer(peer, &env, channel, verdict.map_err(|r| r.to_string()));
        }
    }

    /// Counts a request's verdict and sends it back as the request's `Ack`.
    fn answer(&mut self, peer: PeerId, env: &Envelope, channel: ResponseChannel<Ack>, verdict: Result<(), String>) {
        let ack = match verdict {
            Ok(()) => {
                self.count_received(peer, env);
                Ack { accepted: true, reason: None }
            }
            Err(reason) => {
                tracing::warn!("refused {} from {peer}: {reason}", env.kind);
                Ack { accepted: false, reason: Some(reason) }
            }
        };
        let _ = self.swarm.behaviour_mut().msg.send_response(channel, ack);
    }

    /// A request on a verified session (its envelope was counted when the session opened).
    pub fn count_frame(&mut self, peer: PeerId, kind: MessageType, bytes: u64) {
        *self.messages.entry(kind.to_string()).or_default() += 1;
        let p = self.peer(peer);
        p.messages_in += 1;
        p.bytes_in += bytes;
    }

    fn count_received(&mut self, peer: PeerId, env: &Envelope) {
        *self.messages.entry(env.kind.to_string()).or_default() += 1;
        let p = self.peer(peer);
        p.messages_in += 1;
        p.bytes_in += env.encoded_len() as u64;
    }

    /// An envelope that came on a stream: its sender must be the stream's peer, and it
    /// must pass the verifier (known sender, signature, window, nonce, delegation).
    /// `counts`: a whole message (a registered protocol's request), counted once accepted.
    /// `open`: an open protocol's session, whose sender need not be known.
    pub fn verify_on_stream(
        &mut self,
        peer: PeerId,
        env: &Envelope,
        counts: bool,
        open: bool,
    ) -> Result<(), Rejection> {
        let verdict = if env.sender != peer.to_string() {
            // charged to the connection's peer: a forger must not lower another's score
            Err(self.verifier.reject(&peer.to_string(), Rejection::UnknownSender))
        } else {
            let (trusted, policy) = (&self.trusted, &self.policy);
            self.verifier.verify(env, now_secs(), |p| open || Self::is_known(trusted, policy, p))
        };
        match &verdict {
            Ok(()) if counts => self.count_received(peer, env),
            Ok(()) => {}
            Err(r) => {
                tracing::warn!("refused a stream from {peer}: {r}");
                self.judge(peer);
            }
        }
        verdict
    }

    /// A data stream has been read.
    pub fn received_stream(&mut self, r: stream::Received) {
        let p = self.peer(r.peer);
        p.bytes_in += r.bytes;
        match r.result {
            Ok(()) => {
                p.messages_in += 1;
                self.streams_in += 1;
                self.stream_bytes_in += r.bytes;
                *self.messages.entry(MessageType::Data.to_string()).or_default() += 1;
            }
            Err(why) => {
                tracing::warn!("refused a data stream from {}: {why}", r.peer);
                self.refuse(r.peer, why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{listening, node};
    use crate::Nat;
    use micro_os_net::MessageType;

    #[tokio::test]
    async fn messages_are_counted_by_type_both_ways() {
        let (a, _) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        let (b, b_id) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        a.add_address(b_id, listening(&b).await).await;
        for kind in [MessageType::Ctrl, MessageType::Ctrl, MessageType::Ping] {
            let d = a.send(b_id, kind, "x".into()).await.unwrap();
            assert!(d.ack.accepted, "{:?}", d.ack.reason);
        }
        let (sent, received) = (a.status().await.unwrap(), b.status().await.unwrap());
        assert_eq!(sent.messages_sent.get("CTRL"), Some(&2), "{sent:?}");
        assert_eq!(sent.messages_sent.get("PING"), Some(&1), "{sent:?}");
        assert_eq!(received.messages.get("CTRL"), Some(&2), "{received:?}");
        assert!(received.messages_sent.is_empty(), "the receiver sent nothing: {received:?}");
    }
}
