//! The hosts' libp2p peers: connection over TCP and QUIC, identify and ping, signed
//! messages accepted from known peers and refused from strangers.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.ok(&["monitor", "network", "--format", "json"])).unwrap()
}

fn addr(d: &Daemon, transport: &str) -> String {
    let st = status(d);
    let a = st["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .find(|a| a.contains(transport))
        .unwrap()
        .to_string();
    format!("{a}/p2p/{}", st["peer_id"].as_str().unwrap())
}

fn wait_connected(d: &Daemon, peer: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(d);
        if let Some(p) = st["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == peer) {
            if p["connected"] == true && p["rtt_ms"].is_number() && p["agent"].is_string() {
                return p.clone();
            }
        }
        assert!(Instant::now() < deadline, "{peer} never connected: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn hosts_connect_and_exchange_signed_messages() {
    // loopback only; no root needed
    let mut b = Daemon::prepared("127.0.0.1");
    let b_id = b.peer_id();
    let mut a = Daemon::prepared("127.0.0.1");
    a.set_config("p2p_trusted", serde_json::json!([b_id]));
    a.spawn();
    let a_id = status(&a)["peer_id"].as_str().unwrap().to_string();
    assert_eq!(a_id, a.peer_id(), "the p2p identity is the node key");
    b.set_config("p2p_bootstrap", serde_json::json!([addr(&a, "/tcp/")]));
    // B's signing key rotates every second: its messages below cross rotations
    b.set_config("p2p_key_rotation_s", serde_json::json!(1));
    b.spawn();
    let peer = wait_connected(&b, &a_id);
    assert!(peer["agent"].as_str().unwrap().starts_with("micro-os/"), "{peer}");
    wait_connected(&a, &b_id);

    // B -> A: B is trusted by A
    let out = b.ok(&["net", "send", "--to", &a_id, "--type", "PING"]);
    assert!(out.contains("delivered"), "{out}");
    std::thread::sleep(Duration::from_millis(1100));
    b.ok(&["net", "send", "--to", &a_id, "--type", "DATA", "--state", "block 7"]);
    let st = status(&a);
    assert_eq!(st["messages"]["PING"], 1);
    assert_eq!(st["messages"]["DATA"], 1);
    let from_b = st["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == b_id.as_str()).unwrap().clone();
    assert_eq!(from_b["messages_in"], 2);
    // two envelopes of some hundreds of bytes each (ids, signature, delegation)
    let bytes = from_b["bytes_in"].as_u64().unwrap();
    assert!((400..4000).contains(&bytes), "{from_b}");
    let to_a = status(&b)["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == a_id.as_str()).unwrap().clone();
    assert_eq!(to_a["bytes_out"], bytes, "sender and receiver disagree on the bytes");
    // A -> B: A is B's bootstrap peer, so trusted
    a.ok(&["net", "send", "--to", &b_id, "--type", "CTRL", "--state", "sync now"]);
    assert_eq!(status(&b)["messages"]["CTRL"], 1);

    // a broadcast (gossipsub, strict signing) from B reaches A, verified like the rest
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.cli(&["net", "send", "--to", "*", "--type", "SYNC", "--state", "height 9"]).status.success() {
        assert!(Instant::now() < deadline, "B never found a peer on the broadcast topic");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&a)["messages"]["SYNC"] != 1 {
        assert!(Instant::now() < deadline, "A did not count the broadcast: {:#}", status(&a));
        std::thread::sleep(Duration::from_millis(100));
    }

    // a stranger, over QUIC: it connects, but its CTRL is refused and counted
    let mut c = Daemon::prepared("127.0.0.1");
    c.set_config("p2p_bootstrap", serde_json::json!([addr(&a, "/quic-v1")]));
    c.spawn();
    let c_id = c.peer_id();
    wait_connected(&c, &a_id);
    let err = c.fails(&["net", "send", "--to", &a_id, "--type", "CTRL", "--state", "stop"], 1);
    assert!(err.contains("sender is not a known peer"), "{err}");
    let st = status(&a);
    assert_eq!(st["rejections"]["sender is not a known peer"], 1, "{st:#}");
    let stranger = st["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == c_id.as_str()).unwrap().clone();
    assert!(stranger["score"].as_i64().unwrap() < 0, "{stranger}");
    assert!(stranger["addresses"][0].as_str().unwrap().contains("quic-v1"), "{stranger}");
    // bad input
    let err = b.fails(&["net", "send", "--to", &a_id, "--type", "GOSSIP"], 2);
    assert!(err.contains("message type \"GOSSIP\""), "{err}");
    b.fails(&["net", "send", "--to", "no-such-vm", "--type", "PING"], 3);
    let detailed = a.ok(&["monitor", "network", "--protocol", "p2p", "--detailed"]);
    assert!(detailed.contains("sender is not a known peer") && detailed.contains("PING"), "{detailed}");
    // the sender counts what it sent, by type, beside what it accepted
    let sent = status(&b)["messages_sent"].clone();
    assert_eq!([&sent["PING"], &sent["DATA"], &sent["SYNC"]], [1, 1, 1], "{sent}");
    let detailed = b.ok(&["monitor", "network", "--protocol", "p2p", "--detailed"]);
    let row = |kind: &str| detailed.lines().find(|l| l.split_whitespace().next() == Some(kind)).map(str::to_string);
    let words = |l: Option<String>| l.map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>());
    assert_eq!(words(row("PING")), Some(vec!["PING".into(), "0".into(), "1".into()]), "{detailed}");
    assert_eq!(words(row("CTRL")), Some(vec!["CTRL".into(), "1".into(), "0".into()]), "{detailed}");
}

#[test]
fn vms_are_peers_that_exchange_every_message_type() {
    if !common::require("vms_are_peers_that_exchange_every_message_type", common::VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "va", "--memory", "64"]);
    d.ok(&["vm", "create", "--name", "vb", "--memory", "64"]);
    d.ok(&["vm", "start", "va"]);
    d.ok(&["vm", "start", "vb"]);
    let (va, vb) = (d.vm("va"), d.vm("vb"));
    let (pa, pb) = (va["peer_id"].as_str().unwrap().to_string(), vb["peer_id"].as_str().unwrap().to_string());
    // the host's peer dials its VMs' agents
    let peer = wait_connected(&d, &pa);
    assert!(peer["addresses"][0].as_str().unwrap().contains(va["address"].as_str().unwrap()), "{peer}");
    wait_connected(&d, &pb);
    for kind in ["SYNC", "DISC", "DATA", "CTRL", "PING"] {
        let out = d.ok(&["net", "send", "--to", "va", "--type", kind, "--state", &format!("{kind} from the host")]);
        assert!(out.contains("delivered"), "{out}");
        let out = d.ok(&["net", "send", "--from", "va", "--to", "vb", "--type", kind, "--state", "from va"]);
        assert!(out.contains("delivered"), "va -> vb {kind}: {out}");
        d.ok(&["net", "send", "--from", "vb", "--to", &pa, "--type", kind]);
    }

    // the VMs found each other on the bridge by mDNS, not only through the daemon
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st: serde_json::Value =
            serde_json::from_str(&d.ok(&["net", "peers", "--vm", "va", "--format", "json"])).unwrap();
        let seen = st["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == pb.as_str()).cloned();
        if seen.as_ref().is_some_and(|p| p["discovered"].as_array().unwrap().iter().any(|d| d == "mdns")) {
            break;
        }
        assert!(Instant::now() < deadline, "va never found vb by mDNS: {st:#}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // finding is not connecting: a VM that talks to nobody stays connected to its host
    // only, or a host's VMs would grow a full mesh (about a MiB per connection)
    d.ok(&["vm", "create", "--name", "vc", "--memory", "64"]);
    d.ok(&["vm", "start", "vc"]);
    let host = status(&d)["peer_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st: serde_json::Value =
            serde_json::from_str(&d.ok(&["net", "peers", "--vm", "vc", "--format", "json"])).unwrap();
        let peers = st["peers"].as_array().unwrap();
        let found_by_mdns = |id: &str| {
            peers.iter().any(|p| p["peer_id"] == id && p["discovered"].as_array().unwrap().iter().any(|d| d == "mdns"))
        };
        let connected: Vec<&str> =
            peers.iter().filter(|p| p["connected"] == true).map(|p| p["peer_id"].as_str().unwrap()).collect();
        if found_by_mdns(&pa) && found_by_mdns(&pb) && connected.contains(&host.as_str()) {
            assert_eq!(connected, [host.as_str()], "vc connected to more than its host: {st:#}");
            break;
        }
        assert!(Instant::now() < deadline, "vc never found its siblings: {st:#}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // a VM advertises its containers in the DHT; the host and the other VM find them
    d.ok(&["container", "create", "--name", "ledger", "--image", "busybox", "--vm", "vb", "--", "sleep", "60"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = d.cli(&["net", "find", "container/ledger", "--format", "json"]);
        let text = String::from_utf8_lossy(&found.stdout).to_string();
        if found.status.success() {
            let list: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(list[0]["peer_id"], pb.as_str(), "{list:#}");
            assert_eq!(list[0]["vm"], "vb", "{list:#}");
            break;
        }
        assert!(Instant::now() < deadline, "the host never found container/ledger: {text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.cli(&["net", "find", "vm/vb", "--vm", "va"]).status.success() {
        assert!(Instant::now() < deadline, "va never found vm/vb in the DHT");
        std::thread::sleep(Duration::from_millis(300));
    }
    let err = d.fails(&["net", "find", "container/nothing-here"], 3);
    assert!(err.contains("no peer offers"), "{err}");

    // DATA as a stream: a file from one VM to the other, checked end to end
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chain.bin");
    let body: Vec<u8> = (0..5 * 1024 * 1024 + 77).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let out = d.ok(&["net", "send", "--from", "va", "--to", "vb", "--type", "DATA", "--file", file.to_str().unwrap()]);
    let sum = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&body));
    assert!(out.contains(&sum), "{out}");
    let vb_pid = d.vm("vb")["pid"].as_u64().unwrap();
    let kept = std::fs::read(format!("/proc/{vb_pid}/root/var/lib/micro-os/inbox/chain.bin")).unwrap();
    assert!(kept == body, "the file vb kept differs from the one sent");
    // generated data from the host, and many small messages with their round trips
    let out = d.ok(&["net", "send", "--to", "vb", "--type", "DATA", "--stream", "--size", "8M"]);
    assert!(out.contains("delivered a stream of 8M"), "{out}");
    let st: serde_json::Value =
        serde_json::from_str(&d.ok(&["net", "peers", "--vm", "vb", "--format", "json"])).unwrap();
    assert_eq!(st["streams_in"], 2, "{st:#}");
    assert_eq!(st["stream_bytes_in"], body.len() as u64 + 8 * 1024 * 1024, "{st:#}");
    let out = d.ok(&["net", "send", "--from", "va", "--to", "vb", "--type", "DATA", "--count", "300", "--size", "256"]);
    assert!(out.contains("delivered 300 messages") && out.contains("p99"), "{out}");
    let err = d.fails(&["net", "send", "--to", "vb", "--type", "CTRL", "--stream", "--size", "1M"], 2);
    assert!(err.contains("only DATA travels as a stream"), "{err}");

    // a peer that is neither this host nor one of its VMs: refused by the VM's agent
    let mut stranger = Daemon::prepared("127.0.0.1");
    stranger.set_config(
        "p2p_bootstrap",
        serde_json::json!([format!("/ip4/{}/tcp/4001/p2p/{pa}", va["address"].as_str().unwrap())]),
    );
    stranger.spawn();
    wait_connected(&stranger, &pa);
    let err = stranger.fails(&["net", "send", "--to", &pa, "--type", "CTRL", "--state", "stop"], 1);
    assert!(err.contains("sender is not a known peer"), "{err}");
}

#[test]
fn a_js_libp2p_peer_identifies_and_pings() {
    if !common::require("a_js_libp2p_peer_identifies_and_pings", &[common::Need::Npm]) {
        return;
    }
    let dir = common::interop_dir();
    let d = Daemon::prepared("127.0.0.1");
    let mut d = d;
    d.spawn();
    let target = addr(&d, "/tcp/");
    let out = std::process::Command::new("node").arg("dial.mjs").arg(&target).current_dir(&dir).output().unwrap();
    assert!(out.status.success(), "js-libp2p failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(r["peer"], status(&d)["peer_id"]);
    assert!(r["agent"].as_str().unwrap().starts_with("micro-os/"), "{r}");
    let protocols: Vec<&str> = r["protocols"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for p in ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/micro-os/msg/1"] {
        assert!(protocols.contains(&p), "{p} missing: {protocols:?}");
    }
    assert!(r["rtt_ms"].as_f64().unwrap() >= 0.0);
    // and micro-os saw the js peer identify itself
    let st = status(&d);
    assert!(
        st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["agent"].as_str().is_some_and(|a| a.starts_with("js-libp2p/"))),
        "{st:#}"
    );
}

#[test]
fn ctrl_overtakes_a_data_flood() {
    if !common::require("ctrl_overtakes_a_data_flood", common::VMS) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["vm", "create", "--name", "busy", "--memory", "128"]);
    d.ok(&["vm", "start", "busy"]);
    let peer = d.vm("busy")["peer_id"].as_str().unwrap().to_string();
    wait_connected(&d, &peer);
    let (home, url) = (d.home.path().to_path_buf(), d.url());
    let flood = std::thread::spawn(move || {
        let t = Instant::now();
        let o = std::process::Command::new(common::BIN)
            .args(["net", "send", "--to", "busy", "--type", "DATA", "--count", "200", "--size", "65536"])
            .env("MICRO_OS_HOME", &home)
            .env("MICRO_OS_API", &url)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        t.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    d.ok(&["net", "send", "--to", "busy", "--type", "CTRL", "--state", "urgent"]);
    let ctrl = started.elapsed();
    let flood = flood.join().unwrap();
    eprintln!("CTRL took {ctrl:?} during a DATA flood of {flood:?}");
    // the CTRL did not queue behind the flood: it finished long before the flood did
    assert!(ctrl * 3 < flood, "CTRL {ctrl:?} vs flood {flood:?}");
    assert_eq!(
        status(&d)["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == peer.as_str()).unwrap()["messages_out"],
        201
    );
}

#[test]
fn a_tls_only_peer_connects() {
    use futures_util::StreamExt;
    use libp2p::swarm::SwarmEvent;
    let mut d = Daemon::prepared("127.0.0.1");
    d.spawn();
    let target: libp2p::Multiaddr = addr(&d, "/tcp/").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connected = rt.block_on(async move {
        // a peer that speaks only TLS 1.3 (libp2p-tls), not noise
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(libp2p::tcp::Config::default(), libp2p::tls::Config::new, libp2p::yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| libp2p::ping::Behaviour::default())
            .unwrap()
            .build();
        swarm.dial(target).unwrap();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return None,
                e = swarm.select_next_some() => match e {
                    SwarmEvent::Behaviour(libp2p::ping::Event { result: Ok(rtt), .. }) => return Some(rtt),
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("TLS dial failed: {error}"),
                    _ => {}
                },
            }
        }
    });
    assert!(connected.is_some(), "no ping over a TLS-only connection");
}

/// A bare rust-libp2p peer with only `/micro-os/msg/1`: it sends hand-made envelopes
/// and returns the daemon's verdict on each.
fn send_raw(
    target: &str,
    key: &libp2p::identity::Keypair,
    envelopes: Vec<micro_os_net::Envelope>,
) -> Vec<(bool, String)> {
    use futures_util::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    let target: libp2p::Multiaddr = target.parse().unwrap();
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = target.iter().last() else { panic!("{target}") };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_tcp(libp2p::tcp::Config::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| {
                request_response::json::Behaviour::<micro_os_net::Envelope, micro_os_api::types::Ack>::new(
                    [(libp2p::StreamProtocol::new("/micro-os/msg/1"), ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                )
            })
            .unwrap()
            .build();
        swarm.add_peer_address(peer, target);
        let mut out = Vec::new();
        for env in envelopes {
            swarm.behaviour_mut().send_request(&peer, env);
            let deadline = tokio::time::sleep(Duration::from_secs(15));
            tokio::pin!(deadline);
            let ack = loop {
                tokio::select! {
                    _ = &mut deadline => panic!("no answer from {peer}"),
                    e = swarm.select_next_some() => match e {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. }, ..
                        }) => break response,
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                            panic!("request failed: {error}")
                        }
                        _ => {}
                    },
                }
            };
            out.push((ack.accepted, ack.reason.unwrap_or_default()));
        }
        out
    })
}

#[test]
fn forged_tampered_replayed_and_stale_messages_are_refused_and_counted() {
    use micro_os_net::{Envelope, MessageType, Payload};
    let key = libp2p::identity::Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let mut d = Daemon::prepared("127.0.0.1");
    d.set_config("p2p_trusted", serde_json::json!([me.to_string()]));
    // the same port after a restart
    let port = common::free_port();
    d.set_config("p2p_listen", serde_json::json!([format!("/ip4/127.0.0.1/tcp/{port}")]));
    d.spawn();
    let target = addr(&d, "/tcp/");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let host = d.peer_id();
    let seal = |state: &str, at: u64, signer: &libp2p::identity::Keypair| {
        Envelope::seal(MessageType::Ctrl, &me, &host, Payload::new(state, 1), at, signer, None)
    };
    let good = seal("sync now", now(), &key);
    let mut tampered = seal("pay 1", now(), &key);
    tampered.payload = Payload::new("pay 1000", 1); // checksum recomputed, signature not
    let mut bad_checksum = seal("pay 1", now(), &key);
    bad_checksum.payload.state = "pay 1000".into();
    let forged = seal("stop", now(), &libp2p::identity::Keypair::generate_ed25519());
    let stale = seal("old news", now() - 120, &key);
    let verdicts = send_raw(&target, &key, vec![good.clone(), good.clone(), tampered, bad_checksum, forged, stale]);
    let reasons: Vec<&str> = verdicts.iter().map(|(ok, why)| if *ok { "accepted" } else { why.as_str() }).collect();
    assert_eq!(
        reasons,
        [
            "accepted",
            "nonce already seen",
            "bad signature",
            "payload checksum does not match",
            "bad signature",
            "timestamp outside the window"
        ]
    );
    let st = status(&d);
    for (reason, n) in [
        ("nonce already seen", 1),
        ("bad signature", 2),
        ("payload checksum does not match", 1),
        ("timestamp outside the window", 1),
    ] {
        assert_eq!(st["rejections"][reason], n, "{reason}: {st:#}");
    }
    assert_eq!(st["messages"]["CTRL"], 1);
    let score =
        st["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == me.to_string()).unwrap()["score"].clone();
    assert!(score.as_i64().unwrap() < 0, "{score}");

    // a replay after the daemon crashed and came back is refused too
    d.kill9();
    d.spawn();
    let verdicts = send_raw(&addr(&d, "/tcp/"), &key, vec![good, seal("fresh", now(), &key)]);
    assert_eq!(verdicts[0], (false, "nonce already seen".to_string()));
    assert!(verdicts[1].0, "{verdicts:?}");
}

#[test]
fn a_peer_over_its_rate_is_refused_and_the_refusals_show_in_monitor_network() {
    use micro_os_net::{Envelope, MessageType, Payload};
    let key = libp2p::identity::Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let mut d = Daemon::prepared("127.0.0.1");
    d.set_config("p2p_trusted", serde_json::json!([me.to_string()]));
    // a small budget, and no ban within this test: it is about the rate and its counter
    d.set_config("p2p_limits", serde_json::json!({"per_second": 1, "burst": 5, "ban_below": -1000}));
    d.spawn();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let host = d.peer_id();
    let envelopes: Vec<Envelope> = (0..20)
        .map(|i| Envelope::seal(MessageType::Ctrl, &me, &host, Payload::new(format!("n{i}"), 1), now, &key, None))
        .collect();
    let verdicts = send_raw(&addr(&d, "/tcp/"), &key, envelopes);
    let accepted = verdicts.iter().filter(|(ok, _)| *ok).count();
    let limited = verdicts.iter().filter(|(_, why)| why == "rate limited").count();
    assert!((5..=8).contains(&accepted), "{accepted} of 20 accepted on a budget of 5 and 1 a second: {verdicts:?}");
    assert_eq!(accepted + limited, 20, "{verdicts:?}");
    let st = status(&d);
    assert_eq!(st["rejections"]["rate limited"], limited as u64, "{st:#}");
    let detailed = d.ok(&["monitor", "network", "--protocol", "p2p", "--detailed"]);
    assert!(detailed.contains("rate limited"), "{detailed}");
}
