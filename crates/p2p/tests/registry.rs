//! The protocol registry end to end: two (three) real swarms on loopback, a protocol
//! registered on one, requests from a known peer answered by its handler, and requests the
//! verifier or the policy refuses never reaching it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use micro_os_p2p::libp2p::identity::Keypair;
use micro_os_p2p::net::{MemoryNonces, MessageType};
use micro_os_p2p::{
    spawn, Config, Error, Handle, Multiaddr, PeerId, Policy, ProtocolHandler, Refusal, Request, StreamError,
    StreamProtocol,
};

const TEST: StreamProtocol = StreamProtocol::new("/micro-os/test/1");

/// Knows the peers put in it.
#[derive(Default)]
struct Members(RwLock<HashSet<PeerId>>);

impl Policy for Members {
    fn known(&self, peer: &PeerId) -> bool {
        self.0.read().unwrap().contains(peer)
    }
}

/// Answers "echo <state>", refuses the state "no", and counts what it was given.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
}

impl ProtocolHandler for Echo {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(request.protocol, TEST);
            match request.state.as_str() {
                "no" => Err(Refusal("the handler says no".into())),
                s => Ok(format!("echo {s}").into_bytes()),
            }
        })
    }
}

fn peer(policy: Arc<dyn Policy>) -> (Handle, PeerId) {
    let k = Keypair::generate_ed25519();
    let id = k.public().to_peer_id();
    let cfg = Config { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], ..Config::default() };
    (spawn(k, cfg, Box::new(MemoryNonces::default()), policy).unwrap(), id)
}

async fn listening(h: &Handle) -> Multiaddr {
    for _ in 0..100 {
        if let Some(a) = h.status().await.and_then(|s| s.listen.into_iter().next()) {
            return a.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the peer never listened");
}

fn refusal(r: Result<Vec<u8>, Error>) -> String {
    match r {
        Err(Error::Stream(StreamError::Refused(why))) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_registered_protocol_gets_only_verified_requests_from_members() {
    let members = Arc::new(Members::default());
    let (server, server_id) = peer(members.clone());
    let anyone = Arc::new(Members::default());
    let (known, known_id) = peer(anyone.clone());
    let (stranger, _) = peer(anyone);
    members.0.write().unwrap().insert(known_id);

    let echo = Arc::new(Echo::default());
    server.register(TEST, echo.clone()).unwrap();
    let addr = listening(&server).await;
    known.add_address(server_id, addr.clone()).await;
    stranger.add_address(server_id, addr).await;

    // a member's signed request reaches the handler, and its answer comes back
    let answer = known.send_request(server_id, TEST, MessageType::Sync, "hello".into()).await.unwrap();
    assert_eq!(answer, b"echo hello");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
    // later requests ride the verified session, many at once, each answered in kind
    let many: Vec<_> = (0..50)
        .map(|i| {
            let known = known.clone();
            tokio::spawn(async move { known.send_request(server_id, TEST, MessageType::Sync, format!("n{i}")).await })
        })
        .collect();
    for (i, t) in many.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), format!("echo n{i}").into_bytes());
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), 51);
    // the handler may refuse too; its reason travels back
    let r = known.send_request(server_id, TEST, MessageType::Sync, "no".into()).await;
    assert_eq!(refusal(r), "the handler says no");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 52);

    // a peer the policy does not know is refused before the handler sees it
    let r = stranger.send_request(server_id, TEST, MessageType::Sync, "let me in".into()).await;
    assert_eq!(refusal(r), "sender is not a known peer");
    // a replay of an envelope that was delivered once is refused too
    let env = known.seal(server_id, MessageType::Ctrl, "once".into()).await.unwrap();
    assert_eq!(known.send_sealed(server_id, TEST, &env).await.unwrap(), b"echo once");
    let r = known.send_sealed(server_id, TEST, &env).await;
    assert_eq!(refusal(r), "nonce already seen");
    // and one changed on the way (its signature no longer covers it)
    let mut forged = known.seal(server_id, MessageType::Ctrl, "pay 1".into()).await.unwrap();
    forged.payload.state = "pay 1000".into();
    let r = known.send_sealed(server_id, TEST, &forged).await;
    assert!(!refusal(r).is_empty());
    assert_eq!(echo.calls.load(Ordering::SeqCst), 53, "a refused request reached the handler");

    let st = server.status().await.unwrap();
    assert_eq!(st.rejections.get("sender is not a known peer"), Some(&1), "{st:?}");
    assert_eq!(st.rejections.get("nonce already seen"), Some(&1), "{st:?}");
    assert_eq!((st.messages.get("SYNC"), st.messages.get("CTRL")), (Some(&52), Some(&1)), "{st:?}");
    let sent = known.status().await.unwrap().messages_sent;
    assert_eq!((sent.get("SYNC"), sent.get("CTRL")), (Some(&52), Some(&3)), "{sent:?}");
}

#[tokio::test]
async fn a_protocol_is_registered_once_and_the_built_in_ones_not_at_all() {
    let (h, _) = peer(Arc::new(Members::default()));
    h.register(TEST, Arc::new(Echo::default())).unwrap();
    let again = h.register(TEST, Arc::new(Echo::default())).unwrap_err();
    assert!(matches!(again, Error::AlreadyRegistered(_)), "{again}");
    for p in ["/micro-os/msg/1", "/micro-os/data/1"] {
        let e = h.register(StreamProtocol::new(p), Arc::new(Echo::default())).unwrap_err();
        assert!(matches!(e, Error::Reserved(_)), "{p}: {e}");
    }
}

const OPEN: StreamProtocol = StreamProtocol::new("/micro-os/test-open/1");

/// Answers with the requester's peer id: the handler of an open protocol authorises.
struct WhoAmI;

impl ProtocolHandler for WhoAmI {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>> {
        Box::pin(async move { Ok(request.peer.to_string().into_bytes()) })
    }
}

#[tokio::test]
async fn an_open_protocol_admits_strangers_but_still_verifies_their_envelopes() {
    let (server, server_id) = peer(Arc::new(Members::default()));
    let (stranger, stranger_id) = peer(Arc::new(Members::default()));
    server.register_open(OPEN, Arc::new(WhoAmI)).unwrap();
    server.register(TEST, Arc::new(Echo::default())).unwrap();
    let addr = listening(&server).await;
    stranger.add_address(server_id, addr).await;
    // a stranger reaches the open protocol's handler, which sees who it is
    let answer = stranger.send_request(server_id, OPEN, MessageType::Ctrl, "join".into()).await.unwrap();
    assert_eq!(answer, stranger_id.to_string().into_bytes());
    // but not a protocol for members
    let r = stranger.send_request(server_id, TEST, MessageType::Sync, "hello".into()).await;
    assert_eq!(refusal(r), "sender is not a known peer");
    // a replayed envelope is refused on the open protocol too
    let env = stranger.seal(server_id, MessageType::Ctrl, "once".into()).await.unwrap();
    stranger.send_sealed(server_id, OPEN, &env).await.unwrap();
    assert_eq!(refusal(stranger.send_sealed(server_id, OPEN, &env).await), "nonce already seen");
    // an open protocol is registered once, and reserved names stay reserved
    assert!(server.register_open(OPEN, Arc::new(WhoAmI)).is_err());
    assert!(server.register_open(StreamProtocol::new("/micro-os/msg/1"), Arc::new(WhoAmI)).is_err());
}
