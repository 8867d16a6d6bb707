//! Measures the miner against the machine's SHA-256 compression limit, in one run:
//!
//! * ours: `miner::mine` on 1 thread and on N threads (all cores by default),
//! * the plain `sha2::compress256` midstate loop ([`Backend::Portable`], 1 thread),
//! * the limit: `openssl speed -bytes 16384 sha256` bytes/s ÷ 64 = compressions/s, ÷ 2 (a
//!   nonce costs two compressions) = nonces/s per core; × threads for the all-core row.
//!
//! `cargo run --release -p micro-os-chain --example miner_bench -- [--threads N] [--seconds S]`

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::{BlockHash, TxMerkleNode};
use micro_os_chain::miner::{self, Backend, Job};

fn main() {
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut seconds = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--threads" => threads = value("--threads").max(1) as usize,
            "--seconds" => seconds = value("--seconds").max(1),
            other => {
                eprintln!("unknown argument {other}\nusage: miner_bench [--threads N] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    let duration = Duration::from_secs(seconds);
    let header = Header {
        version: Version::from_consensus(0x2000_0000),
        prev_blockhash: BlockHash::from_byte_array([0x11; 32]),
        merkle_root: TxMerkleNode::from_byte_array([0x22; 32]),
        time: 1_700_000_000,
        bits: CompactTarget::from_consensus(0x1d00ffff),
        nonce: 0,
    };
    println!(
        "backend {:?}, {threads} thread(s), {seconds} s per measurement, cpu: {}",
        Backend::best(),
        common::cpu_model()
    );

    let ours_1 = ours(&header, 1, duration);
    let ours_n = ours(&header, threads, duration);
    let portable = portable(&header, duration);
    let limit = openssl_nonce_limit(seconds);

    println!();
    println!("{:<44} {:>14} {:>14} {:>12}", "measurement", "nonces/s", "limit", "ours/limit");
    let row = |name: &str, rate: f64, limit: Option<f64>| match limit {
        Some(l) => println!("{name:<44} {:>14} {:>14} {:>12.3}", mega(rate), mega(l), rate / l),
        None => println!("{name:<44} {:>14} {:>14} {:>12}", mega(rate), "n/a", "n/a"),
    };
    row("ours, 1 thread", ours_1, limit);
    row(&format!("ours, {threads} thread(s)"), ours_n, limit.map(|l| l * threads as f64));
    row("sha2::compress256 midstate loop, 1 thread", portable, limit);
    match limit {
        Some(l) => println!("{:<44} {:>14} {:>14} {:>12}", "limit: openssl sha256 compressions/s ÷ 2", mega(l), "", ""),
        None => println!("openssl not found or its output not understood: the limit column is skipped"),
    }
    println!("\nours / sha2::compress256 loop (1 thread): {:.2}×", ours_1 / portable);
}

fn mega(rate: f64) -> String {
    format!("{:.2} M", rate / 1e6)
}

/// `miner::mine` against an unreachable target for `duration`, cancelled from its progress
/// callback.
fn ours(header: &Header, threads: usize, duration: Duration) -> f64 {
    let cancel = AtomicBool::new(false);
    let mined = miner::mine(header, Target::ZERO, threads, &cancel, |stats| {
        if stats.elapsed >= duration {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert!(mined.header.is_none(), "the zero target is never met");
    mined.stats.rate
}

/// The `sha2::compress256` midstate loop (two compressions per nonce) on one thread.
fn portable(header: &Header, duration: Duration) -> f64 {
    let job = Job::with_backend(header, Target::ZERO, Backend::Portable);
    let started = Instant::now();
    let mut hashes = 0u64;
    while started.elapsed() < duration {
        let chunk = 1 << 18;
        assert_eq!(job.scan(hashes % (1 << 32)..hashes % (1 << 32) + chunk), None);
        hashes += chunk;
    }
    hashes as f64 / started.elapsed().as_secs_f64()
}

/// Nonces/s one core could do at OpenSSL's SHA-256 throughput (two compressions a nonce).
fn openssl_nonce_limit(seconds: u64) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), "-bytes", "16384", "sha256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "sha256         1754023.40k": thousands of bytes per second.
    let line = text.lines().find(|l| l.trim_start().starts_with("sha256 "))?;
    let field = line.split_whitespace().nth(1)?;
    let (number, scale) = match field.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => (field, 1.0),
    };
    let bytes_per_s = number.parse::<f64>().ok()? * scale;
    println!("openssl speed: {line}");
    Some(bytes_per_s / 64.0 / 2.0)
}
