//! The monitor's logic, apart from where the numbers come from: CPU use from cumulative
//! counters (`Rates`), alert rules that fire and resolve (`AlertEngine`), the Prometheus
//! text exposition (`prometheus::encode`) and exports (`export`).
//!
//! Design decision: no I/O here. The daemon reads cgroups and /proc (through the runtime
//! crate), stores samples (through the store crate) and hands both ends to this crate, so
//! every rule and format is tested without a kernel.

pub mod alerts;
pub mod export;
pub mod prometheus;

use std::collections::HashMap;

pub use alerts::{AlertChange, AlertEngine};

/// Turns cumulative CPU time into percent of one core over the last interval.
#[derive(Debug, Default)]
pub struct Rates {
    last: HashMap<String, (u64, i64)>,
}

impl Rates {
    /// `cpu_ns` used by `id` up to `ts_ms`; `None` at the first reading of an object.
    pub fn cpu_percent(&mut self, id: &str, cpu_ns: u64, ts_ms: i64) -> Option<f64> {
        let before = self.last.insert(id.to_string(), (cpu_ns, ts_ms));
        let (ns, ts) = before?;
        let dt_ns = (ts_ms - ts) as f64 * 1e6;
        // a restarted object's counter starts again from zero
        (dt_ns > 0.0 && cpu_ns >= ns).then(|| (cpu_ns - ns) as f64 * 100.0 / dt_ns)
    }

    /// Forgets objects not in `alive` (removed since).
    pub fn retain(&mut self, alive: &std::collections::HashSet<String>) {
        self.last.retain(|k, _| alive.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_from_counters() {
        let mut r = Rates::default();
        assert_eq!(r.cpu_percent("c", 1_000_000_000, 10_000), None, "first reading");
        // half a second of CPU in one second: 50 % of a core
        assert_eq!(r.cpu_percent("c", 1_500_000_000, 11_000), Some(50.0));
        // two cores busy for 5 s
        assert_eq!(r.cpu_percent("c", 11_500_000_000, 16_000), Some(200.0));
        // the counter went back (restarted): no figure this round
        assert_eq!(r.cpu_percent("c", 10, 21_000), None);
        r.retain(&Default::default());
        assert_eq!(r.cpu_percent("c", 20, 22_000), None, "forgotten");
    }
}
