//! Attacks on the P2P layer that must fail, each a test: a peer that floods (rate limited,
//! scored down, banned, let back only when the ban ends, while a well-behaved peer is
//! served throughout), and oversized and malformed messages on every protocol of the
//! node's own (`/micro-os/msg/1`, `/micro-os/data/1`) and on a registered protocol, written
//! by hand on raw streams, each refused and counted by its reason.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::{PeerId, StreamProtocol};
use micro_os_core::net::NetStatus;
use micro_os_net::{Envelope, MemoryNonces, MessageType, Payload};

use crate::testing::{config, listening, Anyone};
use crate::{spawn, Error, Handle, Limits, Nat, ProtocolHandler, Refusal, Request, StreamError};

const ECHO: StreamProtocol = StreamProtocol::new("/micro-os/test-echo/1");
const SMALL: u32 = 4096;

/// Answers "echo <state>" to a JSON object and refuses anything else, as a real protocol
/// refuses a request it cannot parse; takes requests of at most `SMALL` bytes.
struct Echo;

impl ProtocolHandler for Echo {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>> {
        Box::pin(async move {
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&request.state) {
                Ok(_) => Ok(format!("echo {}", request.state).into_bytes()),
                Err(_) => Err(Refusal("malformed echo request".into())),
            }
        })
    }

    fn max_request(&self) -> u32 {
        SMALL
    }
}

fn peer_with(limits: Limits) -> (Handle, PeerId) {
    let k = Keypair::generate_ed25519();
    let id = k.public().to_peer_id();
    let cfg = crate::Config { limits, ..config(&["/ip4/127.0.0.1/tcp/0"], Nat::default()) };
    (spawn(k, cfg, Box::new(MemoryNonces::default()), Arc::new(Anyone)).unwrap(), id)
}

async fn status(h: &Handle) -> NetStatus {
    h.status().await.unwrap()
}

fn rejected(st: &NetStatus, why: &str) -> u64 {
    st.rejections.get(why).copied().unwrap_or(0)
}

fn refusal(r: &Result<Vec<u8>, Error>) -> Option<&str> {
    match r {
        Err(Error::Stream(StreamError::Refused(why))) => Some(why),
        _ => None,
    }
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> BoxFuture<'static, bool>) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_rate_limited_scored_down_banned_and_let_back_when_the_ban_ends() {
    let limits = Limits { per_second: 20, burst: 20, ban_below: -100, ban_s: 4 };
    let (server, server_id) = peer_with(limits);
    server.register(ECHO, Arc::new(Echo)).unwrap();
    let addr = listening(&server).await;
    let (flooder, flooder_id) = peer_with(Limits::default());
    let (good, _) = peer_with(Limits::default());
    flooder.add_address(server_id, addr.clone()).await;
    good.add_address(server_id, addr).await;

    // connected first (a session opened while the connection is still being made can be
    // closed under it: retried, as callers do)
    for h in [&flooder, &good] {
        let mut tries = 0;
        while h.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await.is_err() {
            tries += 1;
            assert!(tries < 20, "no session opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // a well-behaved peer asks ten times a second, within its budget, the whole time
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let steady = {
        let (good, stop, served, failed) = (good.clone(), stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match good.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await {
                    Ok(a) if a == b"echo {}" => served.fetch_add(1, Ordering::SeqCst),
                    other => {
                        failures.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failures
        })
    };

    // the flood: 600 requests at once on its session
    let flood: Vec<_> = (0..600)
        .map(|_| {
            let f = flooder.clone();
            tokio::spawn(async move { f.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in flood {
        answers.push(t.await.unwrap());
    }
    let limited = answers.iter().filter(|a| refusal(a) == Some("rate limited")).count();
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    eprintln!("flood: {answered} answered, {limited} rate limited, {} cut off", 600 - answered - limited);
    assert!(answered <= 60, "{answered} of 600 served: the budget is 20 a second, 20 at once");
    // refusals sent once the ban closed the connection never arrive
    assert!(limited >= 10, "only {limited} refused as rate limited");

    // scored down and banned: disconnected, counted
    let st = status(&server).await;
    assert!(rejected(&st, "rate limited") >= 100, "{:?}", st.rejections);
    assert_eq!(rejected(&st, "peer banned"), 1, "{:?}", st.rejections);
    let f = st.peers.iter().find(|p| p.peer_id == flooder_id.to_string()).expect("the flooder is known");
    assert!(f.score < -100, "score {}", f.score);
    wait_for("the flooder disconnected", Duration::from_secs(5), || {
        let server = server.clone();
        Box::pin(async move {
            let st = status(&server).await;
            st.peers.iter().any(|p| p.peer_id == flooder_id.to_string() && !p.connected)
        })
    })
    .await;

    // it cannot come back while banned: its connections are refused
    let banned_at = Instant::now();
    let again = flooder.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await;
    assert!(again.is_err(), "a banned peer was served: {again:?}");
    assert!(rejected(&status(&server).await, "connection from a banned peer") >= 1, "{:?}", status(&server).await);

    // once the ban has ended, it is served again
    let mut back = None;
    while banned_at.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if flooder.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await.is_ok() {
            back = Some(banned_at.elapsed());
            break;
        }
    }
    let back = back.expect("the flooder was never let back");
    assert!(back > Duration::from_secs(2), "let back after {back:?}, before its 4 s ban ended");
    let st = status(&server).await;
    let f = st.peers.iter().find(|p| p.peer_id == flooder_id.to_string()).unwrap();
    assert!(f.score >= 0, "a lifted ban starts again from 0: {}", f.score);

    // and the well-behaved peer was served throughout
    stop.store(true, Ordering::SeqCst);
    let failures = steady.await.unwrap();
    assert!(failures.is_empty(), "the good peer was refused: {failures:?}");
    assert!(served.load(Ordering::SeqCst) >= 20, "served {}", served.load(Ordering::SeqCst));
    assert_eq!(failed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn messages_over_the_rate_are_refused_on_the_message_protocol_and_data_streams() {
    // a ban far away: this test is about the rate alone
    let limits = Limits { per_second: 10, burst: 10, ban_below: -1_000_000, ban_s: 60 };
    let (server, server_id) = peer_with(limits);
    let addr = listening(&server).await;
    let (flooder, _) = peer_with(Limits::default());
    let (good, _) = peer_with(Limits::default());
    flooder.add_address(server_id, addr.clone()).await;
    good.add_address(server_id, addr).await;
    // connected first (a message takes one token)
    assert!(flooder.send(server_id, MessageType::Ctrl, "hello".into()).await.unwrap().ack.accepted);
    let sends: Vec<_> = (0..60)
        .map(|i| {
            let f = flooder.clone();
            tokio::spawn(async move { f.send(server_id, MessageType::Ctrl, format!("n{i}")).await.unwrap() })
        })
        .collect();
    let mut reasons = Vec::new();
    for s in sends {
        reasons.push(s.await.unwrap().ack.reason);
    }
    let limited = reasons.iter().filter(|r| r.as_deref() == Some("rate limited")).count();
    assert!(limited >= 40, "{limited} of 60 refused: {reasons:?}");
    // a DATA stream takes a token too
    let body: crate::stream::Source = Box::new(std::io::Cursor::new(b"x".to_vec()));
    let header = crate::stream::StreamHeader { size: 1, xxh3: None, name: None };
    let err = flooder.send_stream(server_id, header, body).await.unwrap_err().to_string();
    assert!(err.contains("rate limited"), "{err}");
    // another peer has its own budget
    let d = good.send(server_id, MessageType::Ctrl, "hello".into()).await.unwrap();
    assert!(d.ack.accepted, "{:?}", d.ack);
    let st = status(&server).await;
    assert_eq!(rejected(&st, "rate limited"), limited as u64 + 1, "{:?}", st.rejections);
    assert_eq!(rejected(&st, "peer banned"), 0);
}

/// Writes `bytes` on a fresh raw stream of `protocol` to `to` and closes its writing
/// side; gives back what the other side answered before closing. Reads while it writes:
/// the other side may answer and stop reading before all of it is written.
async fn raw(from: &Handle, to: PeerId, protocol: StreamProtocol, bytes: Vec<u8>) -> Vec<u8> {
    let mut control = from.control.clone();
    let s = control.open_stream(to, protocol).await.expect("a stream opens");
    let (mut rd, mut wr) = s.split();
    let write = async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = wr.write_all(&bytes).await;
            let _ = wr.close().await;
        })
        .await;
    };
    let read = async move {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
        answer
    };
    futures_util::join!(write, read).1
}

fn frame(id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A registered protocol's answer to the frame with `id`: (refused, body).
fn answer_to(bytes: &[u8], id: u64) -> Option<(bool, String)> {
    let mut rest = bytes;
    while rest.len() >= 12 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let got = u64::from_be_bytes(rest[4..12].try_into().unwrap());
        let body = &rest[12..12 + len];
        if got == id {
            return Some((body[0] == 1, String::from_utf8_lossy(&body[1..]).into_owned()));
        }
        rest = &rest[12 + len..];
    }
    None
}

fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn oversized_and_malformed_messages_are_refused_and_counted_on_every_protocol() {
    let limits = Limits { ban_below: -1_000_000, ..Limits::default() };
    let (server, server_id) = peer_with(limits);
    server.register(ECHO, Arc::new(Echo)).unwrap();
    let addr = listening(&server).await;
    let (attacker, attacker_id) = peer_with(Limits::default());
    attacker.add_address(server_id, addr).await;
    // connected, and a baseline: nothing refused yet
    assert_eq!(attacker.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await.unwrap(), b"echo {}");
    let seal = |kind, state: &str| attacker.seal(server_id, kind, state.to_string());
    let good = seal(MessageType::Ctrl, "{}").await.unwrap().encode();
    let truncated = good[..good.len() / 2].to_vec();
    let mut counts = std::collections::BTreeMap::new();
    let mut expect = |why: &'static str| *counts.entry(why).or_insert(0u64) += 1;

    // /micro-os/msg/1 (request-response, one JSON envelope a stream)
    let msg = crate::swarm::MSG_PROTOCOL;
    raw(&attacker, server_id, msg.clone(), garbage(300, 1)).await;
    expect("malformed envelope");
    raw(&attacker, server_id, msg.clone(), truncated.clone()).await;
    expect("malformed envelope");
    // two MiB: refused once one byte over the 1 MiB maximum has come
    raw(&attacker, server_id, msg.clone(), vec![b'['; 2 << 20]).await;
    expect("message too large");
    // a valid envelope whose payload is garbage: its checksum does not cover it
    let mut env = seal(MessageType::Ctrl, "pay 1").await.unwrap();
    env.payload = Payload { state: String::from_utf8_lossy(&garbage(64, 2)).into_owned(), ..env.payload };
    raw(&attacker, server_id, msg.clone(), env.encode()).await;
    expect("payload checksum does not match");

    // /micro-os/data/1 (a length-prefixed header envelope, then the body)
    let data = crate::stream::PROTOCOL;
    let prefixed = |b: &[u8]| [&(b.len() as u32).to_be_bytes()[..], b].concat();
    let a = raw(&attacker, server_id, data.clone(), prefixed(&garbage(100, 3))).await;
    assert_eq!(a, b"refused malformed envelope\n");
    expect("malformed envelope");
    let whole = seal(MessageType::Data, r#"{"size":1}"#).await.unwrap().encode();
    let mut cut = prefixed(&whole);
    cut.truncate(4 + whole.len() / 2);
    let a = raw(&attacker, server_id, data.clone(), cut).await;
    assert_eq!(a, b"refused malformed envelope\n");
    expect("malformed envelope");
    // a header said to be 100 MiB: refused from its length, nothing more is read
    let a = raw(&attacker, server_id, data.clone(), (100u32 << 20).to_be_bytes().to_vec()).await;
    assert_eq!(a, b"refused message too large\n");
    expect("message too large");
    // a signed DATA envelope whose state is not a stream header
    let a =
        raw(&attacker, server_id, data.clone(), prefixed(&seal(MessageType::Data, "garbage").await.unwrap().encode()))
            .await;
    assert_eq!(a, b"refused malformed envelope\n");
    expect("malformed envelope");

    // a registered protocol (frames: u32 length, u64 id, body; the first an envelope)
    let a = raw(&attacker, server_id, ECHO, frame(0, &garbage(200, 4))).await;
    assert_eq!(answer_to(&a, 0), Some((true, "malformed envelope".into())));
    expect("malformed envelope");
    let a = raw(&attacker, server_id, ECHO, frame(0, &truncated)).await;
    assert_eq!(answer_to(&a, 0), Some((true, "malformed envelope".into())));
    expect("malformed envelope");
    // over the protocol's own maximum (4 KiB here), and a frame said to be 100 MiB: both
    // answered from the length alone
    let a = raw(&attacker, server_id, ECHO, frame(7, &vec![b'x'; SMALL as usize + 1])).await;
    assert_eq!(answer_to(&a, 7), Some((true, "message too large".into())));
    expect("message too large");
    let mut head = frame(9, &[]);
    head[..4].copy_from_slice(&(100u32 << 20).to_be_bytes());
    let a = raw(&attacker, server_id, ECHO, head).await;
    assert_eq!(answer_to(&a, 9), Some((true, "message too large".into())));
    expect("message too large");
    // after a verified first envelope: a frame that is not UTF-8, one too large, and a
    // valid request whose payload the handler cannot parse
    let first = seal(MessageType::Sync, "{}").await.unwrap().encode();
    let bytes = [frame(0, &first), frame(1, &[0xff, 0xfe, 0x80]), frame(2, b"not json")].concat();
    let a = raw(&attacker, server_id, ECHO, bytes).await;
    assert_eq!(answer_to(&a, 0), Some((false, "echo {}".into())));
    assert_eq!(answer_to(&a, 1), Some((true, "malformed envelope".into())));
    assert_eq!(answer_to(&a, 2), Some((true, "malformed echo request".into())));
    expect("malformed envelope");
    expect("malformed echo request");
    // the same through the handle: a request over the protocol's maximum
    let r =
        attacker.send_request(server_id, ECHO, MessageType::Sync, format!("\"{}\"", "y".repeat(SMALL as usize))).await;
    assert_eq!(refusal(&r), Some("message too large"), "{r:?}");
    expect("message too large");

    let st = status(&server).await;
    for (why, n) in &counts {
        assert_eq!(rejected(&st, why), *n, "{why}: {:?}", st.rejections);
    }
    let a = st.peers.iter().find(|p| p.peer_id == attacker_id.to_string()).unwrap();
    assert!(a.score < -100, "every refusal costs score: {}", a.score);
    // the server still serves: nothing above took it down
    let (good, _) = peer_with(Limits::default());
    good.add_address(server_id, listening(&server).await).await;
    assert_eq!(good.send_request(server_id, ECHO, MessageType::Sync, "{}".into()).await.unwrap(), b"echo {}");
}

#[test]
fn a_peer_that_was_good_cannot_bank_score_for_a_flood_later() {
    let k = Keypair::generate_ed25519();
    let p = k.public().to_peer_id();
    let mut v = micro_os_net::Verifier::new(MemoryNonces::default());
    let now = crate::now_secs();
    for i in 0..1000 {
        let e = Envelope::seal(MessageType::Ping, &p, "*", Payload::new(format!("{i}"), 1), now, &k, None);
        assert_eq!(v.verify(&e, now, |_| true), Ok(()));
    }
    assert_eq!(v.scores[&p.to_string()], micro_os_net::MAX_SCORE);
    // so 21 refusals at 10 each bring it below the default ban threshold of -100
    for _ in 0..21 {
        v.reject(&p.to_string(), micro_os_net::Rejection::Malformed);
    }
    assert!(v.scores[&p.to_string()] < Limits::default().ban_below);
}
