//! Envelope verification rate on one core, single and batched (bench/run.sh verify), of
//! envelopes as micro-os peers send them: signed by a key each sender's identity delegates.
//! Prints one line: `single <per second> batched <per second>`.

use std::time::Instant;

use libp2p_identity::Keypair;
use micro_os_net::{Delegation, Envelope, MemoryNonces, MessageType, Payload, Verifier};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let now = 1_700_000_000;
    // 64 senders, each with an identity key and a delegated signing key
    let senders: Vec<(Keypair, Keypair, Delegation)> = (0..64)
        .map(|_| {
            let identity = Keypair::generate_ed25519();
            let hot = Keypair::generate_ed25519();
            let d = Delegation::issue(&identity, &hot.public(), now + 3600);
            (identity, hot, d)
        })
        .collect();
    let make = || -> Vec<Envelope> {
        (0..n)
            .map(|i| {
                let (identity, hot, d) = &senders[i % senders.len()];
                let p = identity.public().to_peer_id();
                let payload = Payload::new(format!("tx {i}"), 1);
                Envelope::seal(MessageType::Data, &p, "*", payload, now, hot, Some(d.clone()))
            })
            .collect()
    };
    let envs = make();
    let mut v = Verifier::new(MemoryNonces::default());
    let t = Instant::now();
    let ok = envs.iter().filter(|e| v.verify(e, now, |_| true).is_ok()).count();
    let single = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(ok, n);
    let envs = make();
    let mut v = Verifier::new(MemoryNonces::default());
    let t = Instant::now();
    let ok: usize =
        envs.chunks(64).map(|c| v.verify_batch(c, now, |_| true).iter().filter(|r| r.is_ok()).count()).sum();
    let batched = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(ok, n);
    println!("single {single:.0} batched {batched:.0}");
}
