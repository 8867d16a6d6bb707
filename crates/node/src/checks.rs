//! The order of a transaction's cheap checks (the transaction optimiser's adaptive
//! validation). Before the expensive part — its coins read and its signatures verified —
//! a transaction passes four cheap checks: context-free validity, not already in the
//! chain, no conflict with the mempool, final. Run in the order of most likely to fail per
//! unit of cost first, a refused transaction is refused after the least work on average
//! (for independent checks, sorting by failure rate over cost is optimal); each check's
//! runs, failures and time are counted, and the order is recomputed every
//! [`CheckOrder::EVERY`] transactions.
//!
//! A transaction that fails several checks is refused with the first one's reason in the
//! current order; the mempool duplicate check stays first, outside this order, so the same
//! transaction twice is always `txn-already-in-mempool`.

use serde_json::{json, Value};

/// A reorderable cheap check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `check_transaction` and not a coinbase.
    Context,
    /// Not in a block of the active chain.
    InChain,
    /// No input spent by a mempool transaction.
    Conflict,
    /// Final at the next block's height and time.
    Final,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Context => "context",
            Check::InChain => "in-chain",
            Check::Conflict => "conflict",
            Check::Final => "final",
        }
    }
}

/// Bitcoin Core's order, the starting point.
const CORE: [Check; 4] = [Check::Context, Check::InChain, Check::Conflict, Check::Final];

#[derive(Debug, Default, Clone, Copy)]
struct Stat {
    runs: u64,
    fails: u64,
    nanos: u64,
}

impl Stat {
    /// Failures per nanosecond of work, smoothed (a check never run ranks by its prior).
    fn rank(&self) -> f64 {
        let p = (self.fails as f64 + 0.5) / (self.runs as f64 + 1.0);
        let cost = (self.nanos as f64 + 1000.0) / (self.runs as f64 + 1.0);
        p / cost
    }
}

#[derive(Debug)]
pub struct CheckOrder {
    stats: [Stat; 4],
    order: [Check; 4],
    since: u64,
    reorders: u64,
}

impl Default for CheckOrder {
    fn default() -> Self {
        CheckOrder { stats: [Stat::default(); 4], order: CORE, since: 0, reorders: 0 }
    }
}

fn index(c: Check) -> usize {
    CORE.iter().position(|x| *x == c).expect("every check is in CORE")
}

impl CheckOrder {
    /// Transactions between two recomputations of the order.
    pub const EVERY: u64 = 256;

    pub fn order(&self) -> [Check; 4] {
        self.order
    }

    /// Records one transaction's checks: each one run, its time, and whether it failed.
    pub fn record(&mut self, ran: &[(Check, u64, bool)]) {
        for (c, nanos, failed) in ran {
            let s = &mut self.stats[index(*c)];
            s.runs += 1;
            s.nanos += nanos;
            s.fails += u64::from(*failed);
        }
        self.since += 1;
        if self.since >= Self::EVERY {
            self.since = 0;
            let mut order = CORE;
            order.sort_by(|a, b| self.stats[index(*b)].rank().total_cmp(&self.stats[index(*a)].rank()));
            if order != self.order {
                self.order = order;
                self.reorders += 1;
            }
        }
    }

    /// The order and each check's counts (`getaiinfo`).
    pub fn report(&self) -> Value {
        let checks: Vec<Value> = self
            .order
            .iter()
            .map(|c| {
                let s = self.stats[index(*c)];
                json!({
                    "check": c.name(), "runs": s.runs, "fails": s.fails,
                    "mean_ns": s.nanos.checked_div(s.runs).unwrap_or(0),
                })
            })
            .collect();
        json!({ "order": checks, "reorders": self.reorders })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cheap_check_that_often_fails_moves_first() {
        let mut o = CheckOrder::default();
        assert_eq!(o.order(), CORE);
        // a conflict flood: half the transactions conflict; the in-chain lookup is slow
        for i in 0..CheckOrder::EVERY {
            let conflict = i % 2 == 0;
            let mut ran =
                vec![(Check::Context, 2_000, false), (Check::InChain, 40_000, false), (Check::Conflict, 500, conflict)];
            if !conflict {
                ran.push((Check::Final, 3_000, false));
            }
            o.record(&ran);
        }
        assert_eq!(o.order()[0], Check::Conflict, "{:?}", o.order());
        assert_eq!(o.order()[3], Check::InChain, "the slow one that never fails goes last: {:?}", o.order());
        let r = o.report();
        assert_eq!(r["order"][0]["check"], "conflict");
        assert_eq!(r["order"][0]["fails"], CheckOrder::EVERY / 2);
        assert_eq!(r["reorders"], 1);
    }

    #[test]
    fn the_order_holds_between_recomputations() {
        let mut o = CheckOrder::default();
        for _ in 0..CheckOrder::EVERY - 1 {
            o.record(&[(Check::Context, 10, false), (Check::InChain, 10, false), (Check::Conflict, 10, true)]);
        }
        assert_eq!(o.order(), CORE, "not yet");
        o.record(&[(Check::Context, 10, false)]);
        assert_eq!(o.order()[0], Check::Conflict);
    }
}
