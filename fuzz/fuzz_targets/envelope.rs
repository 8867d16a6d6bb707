//! Wire input to the envelope decoder and verifier must never panic.
//! Run: cargo +nightly fuzz run envelope (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_os_net::{Envelope, MemoryNonces, Verifier};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::decode(data) {
        let mut v = Verifier::new(MemoryNonces::default());
        let _ = v.verify(&e, 1_700_000_000, |_| true);
        let _ = Envelope::decode(&e.encode());
    }
});
