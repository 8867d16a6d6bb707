//! Envelope verification rate on one core, single and batched (bench/run.sh verify).
//! Prints one line: `single <per second> batched <per second>`.

use std::time::Instant;

use libp2p_identity::Keypair;
use micro_os_net::{Envelope, MemoryNonces, MessageType, Payload, Verifier};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let now = 1_700_000_000;
    let keys: Vec<Keypair> = (0..64).map(|_| Keypair::generate_ed25519()).collect();
    let make = || -> Vec<Envelope> {
        (0..n)
            .map(|i| {
                let k = &keys[i % keys.len()];
                let p = k.public().to_peer_id();
                Envelope::seal(MessageType::Data, &p, "*", Payload::new(format!("tx {i}"), 1), now, k, None)
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
