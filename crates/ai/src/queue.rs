//! The validation queue: transactions served by class, 0 first, with aging so that the
//! lowest class is never starved; and a held lane for anomalies, which are never served
//! until released and never silently dropped. [`Fifo`] is the baseline with the same
//! interface ([`Scheduler`]), so a benchmark swaps one for the other.
//!
//! Time is passed in (seconds on any monotonic clock), so the queue is a pure function of
//! what was pushed when.

use std::collections::VecDeque;

/// What a benchmark drives: push with a class, pop the next to serve.
pub trait Scheduler<T> {
    fn push(&mut self, item: T, class: u32, now: f64);
    fn pop(&mut self, now: f64) -> Option<T>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct Waiting<T> {
    item: T,
    arrived: f64,
    seq: u64,
}

/// Classes with aging: an item waiting `w` seconds counts as class `class - floor(w /
/// aging_secs)`; the lowest effective class is served, the earliest arrival among equals.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    classes: Vec<VecDeque<Waiting<T>>>,
    held: VecDeque<(T, String)>,
    aging_secs: f64,
    next_seq: u64,
    len: usize,
}

impl<T> PriorityQueue<T> {
    /// `aging_secs`: seconds of waiting that raise an item by one class (> 0).
    pub fn new(aging_secs: f64) -> Self {
        PriorityQueue {
            classes: Vec::new(),
            held: VecDeque::new(),
            aging_secs: if aging_secs > 0.0 { aging_secs } else { f64::INFINITY },
            next_seq: 0,
            len: 0,
        }
    }

    /// How many wait in each class.
    pub fn class_lens(&self) -> Vec<usize> {
        self.classes.iter().map(VecDeque::len).collect()
    }

    /// Holds an anomaly back, with why.
    pub fn hold(&mut self, item: T, reason: String) {
        self.held.push_back((item, reason));
    }

    pub fn held(&self) -> impl Iterator<Item = &(T, String)> {
        self.held.iter()
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Takes every held item out (to serve it, or to look at it).
    pub fn release_held(&mut self) -> Vec<T> {
        self.held.drain(..).map(|(t, _)| t).collect()
    }

    pub fn release_oldest_held(&mut self) -> Option<T> {
        self.held.pop_front().map(|(t, _)| t)
    }

    fn effective(&self, class: usize, w: &Waiting<T>, now: f64) -> f64 {
        class as f64 - ((now - w.arrived).max(0.0) / self.aging_secs).floor()
    }
}

impl<T> Scheduler<T> for PriorityQueue<T> {
    fn push(&mut self, item: T, class: u32, now: f64) {
        let c = class as usize;
        if self.classes.len() <= c {
            self.classes.resize_with(c + 1, VecDeque::new);
        }
        self.classes[c].push_back(Waiting { item, arrived: now, seq: self.next_seq });
        self.next_seq += 1;
        self.len += 1;
    }

    fn pop(&mut self, now: f64) -> Option<T> {
        // a class's head has waited longest in it, so it is the class's best
        let best = self
            .classes
            .iter()
            .enumerate()
            .filter_map(|(c, q)| q.front().map(|w| (c, self.effective(c, w, now), w.seq)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)))?;
        self.len -= 1;
        self.classes[best.0].pop_front().map(|w| w.item)
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// First in, first out: the baseline. The class is ignored.
#[derive(Debug, Default)]
pub struct Fifo<T> {
    items: VecDeque<T>,
}

impl<T> Fifo<T> {
    pub fn new() -> Self {
        Fifo { items: VecDeque::new() }
    }
}

impl<T> Scheduler<T> for Fifo<T> {
    fn push(&mut self, item: T, _class: u32, _now: f64) {
        self.items.push_back(item);
    }

    fn pop(&mut self, _now: f64) -> Option<T> {
        self.items.pop_front()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_item_goes_ahead_of_a_flood() {
        let mut q = PriorityQueue::new(2.0);
        for i in 0..1000 {
            q.push(i, 2, 0.0);
        }
        q.push(-1, 0, 0.5);
        assert_eq!(q.pop(0.6), Some(-1));
        assert_eq!(q.pop(0.6), Some(0), "then the flood in arrival order");
        assert_eq!(q.len(), 999);
        let mut f = Fifo::new();
        for i in 0..3 {
            f.push(i, 2, 0.0);
        }
        f.push(-1, 0, 0.5);
        assert_eq!(f.pop(0.6), Some(0), "FIFO does not");
    }

    #[test]
    fn aging_serves_the_lowest_class_at_the_boundary() {
        // a class-2 item aged 4 s counts as class 0; it arrived first, so it wins ties
        let mut q = PriorityQueue::new(2.0);
        q.push("old low", 2, 0.0);
        q.push("new high", 0, 3.9);
        assert_eq!(q.pop(3.99), Some("new high"), "3.99 s of waiting is one class, not two");
        q.push("new high 2", 0, 4.0);
        assert_eq!(q.pop(4.0), Some("old low"), "at 4 s it ranks with class 0 and arrived first");
        assert_eq!(q.pop(4.0), Some("new high 2"));
        assert_eq!(q.pop(4.0), None);
    }

    #[test]
    fn held_items_are_never_served_until_released() {
        let mut q = PriorityQueue::new(2.0);
        q.hold("spam", "score 0.93".into());
        q.push("tx", 1, 0.0);
        assert_eq!(q.pop(100.0), Some("tx"));
        assert_eq!(q.pop(100.0), None);
        assert_eq!(q.held().next().unwrap().1, "score 0.93");
        assert_eq!(q.release_held(), vec!["spam"]);
        assert_eq!(q.held_len(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn class_lens_count_each_class() {
        let mut q = PriorityQueue::new(1.0);
        q.push(1, 0, 0.0);
        q.push(2, 2, 0.0);
        q.push(3, 2, 0.0);
        assert_eq!(q.class_lens(), vec![1, 0, 2]);
    }
}
