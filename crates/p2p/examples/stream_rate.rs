//! One DATA stream between two peers of this process over loopback, each on its own
//! single-threaded runtime as in two VM agents: MiB/s for each way of securing it.
//! Usage: stream_rate [MiB] [noise|tls|quic ...] (default 1024 MiB, all three)

use std::sync::Arc;
use std::time::Duration;

use micro_os_core::net::SendJob;
use micro_os_p2p::libp2p::identity::Keypair;
use micro_os_p2p::{net::MemoryNonces, spawn, Config, Handle, Multiaddr, PeerId, Policy, Security};

struct Anyone;

impl Policy for Anyone {
    fn known(&self, _: &PeerId) -> bool {
        true
    }
}

/// A peer on a runtime of its own thread.
fn peer(listen: &str, security: Security) -> (Handle, PeerId, tokio::runtime::Handle) {
    let (tx, rx) = std::sync::mpsc::channel();
    let listen: Multiaddr = listen.parse().expect("a multiaddr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async move {
            let k = Keypair::generate_ed25519();
            let id = k.public().to_peer_id();
            let cfg = Config { listen: vec![listen], security, ..Config::default() };
            let h = spawn(k, cfg, Box::new(MemoryNonces::default()), Arc::new(Anyone)).expect("a peer");
            tx.send((h, id, tokio::runtime::Handle::current())).expect("main waits");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the peer started")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map(|a| a.parse().expect("MiB")).unwrap_or(1024);
    let mut ways: Vec<String> = args.collect();
    if ways.is_empty() {
        ways = ["noise", "tls", "quic"].map(String::from).to_vec();
    }
    for way in ways {
        let (listen, security) = match way.as_str() {
            "quic" => ("/ip4/127.0.0.1/udp/0/quic-v1", Security::Auto),
            s => ("/ip4/127.0.0.1/tcp/0", s.parse().expect("noise, tls or quic")),
        };
        let (a, _, rt) = peer(listen, security);
        let (b, b_id, _) = peer(listen, security);
        // on the sending peer's own thread, as an agent runs a send job
        let report = rt
            .block_on(rt.spawn(async move {
                let addr = loop {
                    if let Some(a) = b.status().await.and_then(|s| s.listen.into_iter().next()) {
                        break a.parse().expect("a multiaddr");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                a.add_address(b_id, addr).await;
                let job = |size| SendJob {
                    to: b_id.to_string(),
                    kind: "DATA".into(),
                    stream: true,
                    size: Some(size),
                    ..SendJob::default()
                };
                a.run(job(1 << 20)).await; // connect
                a.run(job(mib << 20)).await
            }))
            .expect("the send ran");
        assert!(report.accepted, "{report:?}");
        println!("{way}: {:.0} MiB/s", report.bytes as f64 / (1 << 20) as f64 * 1000.0 / report.elapsed_ms);
    }
}
