//! A linearizability checker for histories recorded against a circuit's key-value store.
//! End-to-end fault tests (and benches that want to assert correctness) record what each
//! client asked, when, and what it was told, with a [`Recorder`]; [`check`] then decides
//! whether one sequential order of those ops, each placed between its invoke and its return,
//! explains every answer under the store's rules ([`Kv::apply`](crate::Kv::apply), plus
//! reads). A failed read is not recorded at all: it changed nothing and reported nothing.
//!
//! Each key is checked on its own (linearizability is compositional), by the Wing–Gong
//! search with Lowe's improvements and memoised (ops placed, state) pairs, as porcupine and
//! knossos' `wgl` do.
//!
//! Design decision: an op whose outcome is [`Outcome::Unknown`] (timed out, connection lost)
//! is *optional*: it may take effect anywhere after its invoke, or never, and nothing waits
//! for it; the search succeeds once every op with a known outcome is placed. Unlike in a
//! plain register, an unknown write here cannot be dropped just because nobody read its
//! value, because every write bumps a version that later answers reveal. So only unknown
//! reads and unknown ops invoked after every known op returned are dropped; values nobody
//! read are folded into one, and unknown ops that are then identical are placed only in
//! invoke order. A burst of timed-out writes costs the search a few states, not 2^n.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One op a client sent for one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Store `value`: [`Outcome::Stored`] at version 1 for an absent key, one more than
    /// before otherwise.
    Set { value: String },
    /// Remove the key: [`Outcome::Deleted`] with the version it was at, or
    /// [`Outcome::NotFound`]. A key set again afterwards starts over at version 1.
    Delete,
    /// Store `value` only if the key is at `expected_version` now (0: absent):
    /// [`Outcome::Stored`], or [`Outcome::Conflict`] with the version it is at.
    Cas { expected_version: u64, value: String },
    /// Read the key: [`Outcome::Value`].
    Get,
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A `Set` or a successful `Cas` stored the value at `version`.
    Stored { version: u64 },
    /// A `Delete` removed the key, which was at `version`.
    Deleted { version: u64 },
    /// A `Delete` found no key.
    NotFound,
    /// A `Cas` found the key at `current` (0: absent), not at the version it expected.
    Conflict { current: u64 },
    /// A `Get` read this value and version, or found no key.
    Value(Option<(String, u64)>),
    /// No answer (timed out, connection lost after sending): the op may have taken effect,
    /// at any time after its invoke, or not at all.
    Unknown,
}

/// One op as recorded: who sent what for which key, when, and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub client: u64,
    pub key: String,
    pub op: Op,
    /// Nanoseconds since the recorder's origin, taken before the op was sent.
    pub invoke: u64,
    /// Nanoseconds since the recorder's origin, taken after the answer arrived; `None` when
    /// there was none. The checker reads `None`, and any time of an [`Outcome::Unknown`]
    /// op, as +infinity. A return at the same instant as another op's invoke counts as
    /// overlapping it (the permissive reading of a tie).
    pub ret: Option<u64>,
    pub outcome: Outcome,
}

/// Collects a history from many client threads or tasks, with all times taken from one
/// monotonic origin. `Send + Sync`: share it behind an `Arc`.
///
/// ```ignore
/// let t = rec.invoke();
/// let outcome = match client.set(&key, &value).await {
///     Ok(version) => Outcome::Stored { version },
///     Err(e) if e.is_timeout() => Outcome::Unknown,
///     Err(_) => return, // refused before it reached the log: did not happen, record nothing
/// };
/// rec.complete(client_id, &key, Op::Set { value }, t, outcome);
/// ```
///
/// Record a write that failed without an answer as [`Outcome::Unknown`]. Leave out a failed
/// read, and an op the store provably refused before it could take effect: not recording
/// an op is how a history says it never happened.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Recorder {
        Recorder { origin: Instant::now(), events: Mutex::new(Vec::new()) }
    }

    /// Nanoseconds since this recorder was created.
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The invoke time of an op about to be sent; pass it to [`Recorder::complete`].
    pub fn invoke(&self) -> u64 {
        self.now()
    }

    /// Records an op invoked at `invoke` that just completed with `outcome`; its return time
    /// is now, or none if the outcome is [`Outcome::Unknown`].
    pub fn complete(&self, client: u64, key: impl Into<String>, op: Op, invoke: u64, outcome: Outcome) {
        let ret = (outcome != Outcome::Unknown).then(|| self.now());
        let event = Event { client, key: key.into(), op, invoke, ret, outcome };
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(event);
    }

    /// The events recorded so far, in the order they completed.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Checks the events recorded so far, every key starting absent.
    pub fn check(&self) -> Verdict {
        check(&self.events())
    }
}

/// What [`check`] found.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every answer. `ops` counts all events given, `keys` the keys.
    Linearizable { keys: usize, ops: usize },
    /// No order explains the answers on `key`. `window` holds the ops around the point where
    /// the longest consistent order stopped (by invoke); `explanation` says why each of the
    /// ops that could have come next does not fit there.
    Violation { key: String, window: Vec<Event>, explanation: String },
    /// An event that cannot be checked: an answer its op cannot give, or a return before
    /// its invoke. A recorder bug rather than a store bug.
    Malformed { event: Event, reason: String },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

/// Checks a history in which every key starts absent.
pub fn check(history: &[Event]) -> Verdict {
    check_from(history, &BTreeMap::new())
}

/// Checks a history in which each key of `initial` starts with that value and version
/// (at least 1) and every other key starts absent.
pub fn check_from(history: &[Event], initial: &BTreeMap<String, (String, u64)>) -> Verdict {
    if let Some((event, reason)) = history.iter().find_map(|e| malformed(e).map(|reason| (e, reason))) {
        return Verdict::Malformed { event: event.clone(), reason };
    }
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in history {
        by_key.entry(&event.key).or_default().push(event);
    }
    for (key, events) in &by_key {
        if let Some(violation) = check_key(key, events, initial.get(*key)) {
            return violation;
        }
    }
    Verdict::Linearizable { keys: by_key.len(), ops: history.len() }
}

/// Why an event cannot be checked, if it cannot.
fn malformed(e: &Event) -> Option<String> {
    if let Some(ret) = e.ret.filter(|&ret| ret < e.invoke) {
        return Some(format!("returned at {} ms, before its invoke at {} ms", ms(ret), ms(e.invoke)));
    }
    let fits = matches!(
        (&e.op, &e.outcome),
        (_, Outcome::Unknown)
            | (Op::Set { .. }, Outcome::Stored { .. })
            | (Op::Delete, Outcome::Deleted { .. } | Outcome::NotFound)
            | (Op::Cas { .. }, Outcome::Stored { .. } | Outcome::Conflict { .. })
            | (Op::Get, Outcome::Value(_))
    );
    (!fits).then(|| format!("{} cannot answer {}", e.op, e.outcome))
}

/// The sequential specification, on strings: what `op` answers on a key holding `state`, and
/// the state after it. The search runs [`step`], the same rules on interned values.
fn spec(state: &Option<(String, u64)>, op: &Op) -> (Outcome, Option<(String, u64)>) {
    let current = state.as_ref().map_or(0, |(_, version)| *version);
    let next = current.saturating_add(1);
    match op {
        Op::Set { value } => (Outcome::Stored { version: next }, Some((value.clone(), next))),
        Op::Delete => match state {
            Some((_, version)) => (Outcome::Deleted { version: *version }, None),
            None => (Outcome::NotFound, None),
        },
        Op::Cas { expected_version, value } if *expected_version == current => {
            (Outcome::Stored { version: next }, Some((value.clone(), next)))
        }
        Op::Cas { .. } => (Outcome::Conflict { current }, state.clone()),
        Op::Get => (Outcome::Value(state.clone()), state.clone()),
    }
}

/// A key's state during the search: an interned value and its version. Value 0 stands for
/// every value no read returned: no step can tell those apart.
type State = Option<(u32, u64)>;

/// An op with its value interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Set(u32),
    Delete,
    Cas(u64, u32),
    Get,
}

/// An outcome with its value interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Stored(u64),
    Deleted(u64),
    NotFound,
    Conflict(u64),
    Value(State),
}

/// [`spec`] on interned values.
fn step(state: State, op: Step) -> (Answer, State) {
    let current = state.map_or(0, |(_, version)| version);
    let next = current.saturating_add(1);
    match op {
        Step::Set(value) => (Answer::Stored(next), Some((value, next))),
        Step::Delete => match state {
            Some((_, version)) => (Answer::Deleted(version), None),
            None => (Answer::NotFound, None),
        },
        Step::Cas(expected, value) if expected == current => (Answer::Stored(next), Some((value, next))),
        Step::Cas(..) => (Answer::Conflict(current), state),
        Step::Get => (Answer::Value(state), state),
    }
}

/// One op of one key, ready for the search.
#[derive(Debug, Clone, Copy)]
struct Planned {
    step: Step,
    /// `None`: unknown, the op is optional.
    answer: Option<Answer>,
    invoke: u64,
    /// `None`: +infinity.
    ret: Option<u64>,
    /// For an unknown op, the previous unknown op (by invoke) with the same step. The search
    /// places this one only once that one is placed: which of two identical optional ops
    /// takes effect first makes no difference, and both are available by then (the earlier
    /// one was invoked first, and nothing waits for either).
    twin: Option<usize>,
}

/// Where the longest order the search found stopped.
#[derive(Debug, Default)]
struct Failure {
    /// Ops with known outcomes in `placed`.
    depth: usize,
    /// The order, by index into the key's planned ops.
    placed: Vec<usize>,
    /// The op whose return forced a choice none of `pending` satisfied.
    blocked: usize,
    /// The ops that could have come next, by invoke (`blocked` among them).
    pending: Vec<usize>,
}

/// Checks one key's events; `Some` is the violation.
fn check_key(key: &str, events: &[&Event], initial: Option<&(String, u64)>) -> Option<Verdict> {
    // An unknown op invoked after every known op returned can only come after all of them,
    // where it explains nothing; an unknown read never changes anything. Drop both.
    let known = |e: &&&Event| e.outcome != Outcome::Unknown;
    // No known op (`?` gives `None`, no violation): every op may simply not have happened.
    let horizon = events.iter().filter(known).map(|e| e.ret.unwrap_or(u64::MAX)).max()?;
    let mut kept: Vec<&Event> =
        events.iter().filter(|e| known(e) || (e.op != Op::Get && e.invoke <= horizon)).copied().collect();
    kept.sort_by_key(|e| e.invoke);

    let mut read: HashMap<&str, u32> = HashMap::new();
    for e in &kept {
        if let Outcome::Value(Some((value, _))) = &e.outcome {
            let id = u32::try_from(read.len() + 1).unwrap_or(u32::MAX);
            read.entry(value.as_str()).or_insert(id);
        }
    }
    let intern = |value: &str| read.get(value).copied().unwrap_or(0);
    let mut last_twin: HashMap<Step, usize> = HashMap::new();
    let plan: Vec<Planned> = kept
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let step = match &e.op {
                Op::Set { value } => Step::Set(intern(value)),
                Op::Delete => Step::Delete,
                Op::Cas { expected_version, value } => Step::Cas(*expected_version, intern(value)),
                Op::Get => Step::Get,
            };
            let answer = match &e.outcome {
                Outcome::Stored { version } => Some(Answer::Stored(*version)),
                Outcome::Deleted { version } => Some(Answer::Deleted(*version)),
                Outcome::NotFound => Some(Answer::NotFound),
                Outcome::Conflict { current } => Some(Answer::Conflict(*current)),
                Outcome::Value(value) => Some(Answer::Value(value.as_ref().map(|(v, n)| (intern(v), *n)))),
                Outcome::Unknown => None,
            };
            let twin = if answer.is_none() { last_twin.insert(step, i) } else { None };
            let ret = if answer.is_none() { None } else { e.ret };
            Planned { step, answer, invoke: e.invoke, ret, twin }
        })
        .collect();
    let init = initial.map(|(value, version)| (intern(value), *version));

    search(&plan, init).err().map(|failure| violation(key, &kept, initial, &failure))
}

/// Dancing links over the call and return entries of one key's ops, sorted by time.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    /// Takes `x` out; it keeps its own links, so [`List::restore`] can put it back.
    fn remove(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Puts back the last entry removed (removals are undone in reverse order).
    fn restore(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }
}

/// The Wing–Gong–Lowe search. Entries (a call and a return per op) form one list sorted by
/// time, calls first on ties. Walking from the head, a call is a candidate to go next; the
/// first return met means its op must already be placed, so the last choice is undone and
/// the walk goes on after it. Placing an op takes both its entries out of the list; a state
/// (set of ops placed, key state) already seen is never explored twice. Optional ops that
/// would change nothing are not placed, since an order without them is just as good.
fn search(plan: &[Planned], init: State) -> Result<(), Failure> {
    const HEAD: usize = 0;
    let mut entries: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * plan.len());
    for (i, op) in plan.iter().enumerate() {
        entries.push((op.invoke, 0, i));
        entries.push(op.ret.map_or((u64::MAX, 2, i), |ret| (ret, 1, i)));
    }
    entries.sort_unstable();
    // Node 0 is the head of a circular list; node k + 1 is entries[k].
    let nodes = entries.len() + 1;
    let mut list = List {
        next: (0..nodes).map(|k| (k + 1) % nodes).collect(),
        prev: (0..nodes).map(|k| (k + nodes - 1) % nodes).collect(),
    };
    let (mut call_of, mut ret_of) = (vec![0; plan.len()], vec![0; plan.len()]);
    for (k, &(_, kind, i)) in entries.iter().enumerate() {
        if kind == 0 {
            call_of[i] = k + 1;
        } else {
            ret_of[i] = k + 1;
        }
    }
    let is_call = |node: usize| entries[node - 1].1 == 0;
    let op_of = |node: usize| entries[node - 1].2;

    let required = plan.iter().filter(|op| op.answer.is_some()).count();
    let mut done = 0;
    let mut placed = vec![0u64; plan.len().div_ceil(64)];
    let is_placed = |bits: &[u64], i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
    let mut state = init;
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut best: Option<Failure> = None;
    let mut cursor = list.next[HEAD];
    loop {
        if done == required {
            return Ok(());
        }
        // Unplaced ops with known outcomes remain, so the list still holds their returns
        // and the cursor never reaches the head.
        let node = cursor;
        let i = op_of(node);
        if is_call(node) {
            let op = &plan[i];
            let (answer, after) = step(state, op.step);
            let fits = match op.answer {
                Some(want) => want == answer,
                None => after != state && op.twin.is_none_or(|twin| is_placed(&placed, twin)),
            };
            if fits {
                placed[i / 64] |= 1 << (i % 64);
                if seen.insert((placed.clone(), after)) {
                    stack.push((i, state));
                    state = after;
                    done += usize::from(op.answer.is_some());
                    list.remove(node);
                    list.remove(ret_of[i]);
                    cursor = list.next[HEAD];
                    continue;
                }
                placed[i / 64] &= !(1 << (i % 64));
            }
            cursor = list.next[node];
        } else {
            if best.as_ref().is_none_or(|b| done > b.depth) {
                let mut pending = Vec::new();
                let mut x = list.next[HEAD];
                while x != node {
                    if is_call(x) {
                        pending.push(op_of(x));
                    }
                    x = list.next[x];
                }
                let order = stack.iter().map(|&(i, _)| i).collect();
                best = Some(Failure { depth: done, placed: order, blocked: i, pending });
            }
            let Some((last, before)) = stack.pop() else {
                return Err(best.unwrap_or_default());
            };
            placed[last / 64] &= !(1 << (last % 64));
            state = before;
            done -= usize::from(plan[last].answer.is_some());
            list.restore(ret_of[last]);
            list.restore(call_of[last]);
            cursor = list.next[call_of[last]];
        }
    }
}

/// Most ops a violation lists as candidates, and how many placed ops it shows before them.
const WINDOW: usize = 16;
const CONTEXT: usize = 3;

/// Turns where the search stopped into a verdict a person can read.
fn violation(key: &str, kept: &[&Event], initial: Option<&(String, u64)>, failure: &Failure) -> Verdict {
    let mut state = initial.cloned();
    for &i in &failure.placed {
        state = spec(&state, &kept[i].op).1;
    }
    let blocked = kept[failure.blocked];
    let mut pending = failure.pending.clone();
    if pending.len() > WINDOW {
        let cut = pending.len() - WINDOW;
        let tail = pending.split_off(cut);
        pending = if tail.contains(&failure.blocked) { tail } else { [&[failure.blocked][..], &tail[1..]].concat() };
    }

    let required = kept.iter().filter(|e| e.outcome != Outcome::Unknown).count();
    let held = match &state {
        Some((value, version)) => format!("{value:?} v{version}"),
        None => "absent".to_owned(),
    };
    let stop = match blocked.ret.filter(|_| blocked.outcome != Outcome::Unknown) {
        Some(ret) => {
            let (client, op) = (blocked.client, &blocked.op);
            format!("client {client}'s {op} returned at {} ms, yet no op invoked by then fits next", ms(ret))
        }
        None => "no order of the remaining ops fits".to_owned(),
    };
    let depth = failure.depth;
    let mut explanation = format!(
        "{depth} of {required} ops with known outcomes fit one order; after them the key is {held}, and {stop}:"
    );
    for &i in &pending {
        let e = kept[i];
        let (would, after) = spec(&state, &e.op);
        let why = if e.outcome == Outcome::Unknown {
            if after == state {
                "outcome unknown, and it would change nothing here".to_owned()
            } else {
                "outcome unknown: taking effect here or not, no order of the rest fits".to_owned()
            }
        } else if would == e.outcome {
            "fits here, but no order of the rest fits after it".to_owned()
        } else {
            format!("here it would answer {would}")
        };
        explanation += &format!("\n  client {} {} → {}: {why}", e.client, e.op, e.outcome);
    }

    let shown = failure.placed.len().saturating_sub(CONTEXT);
    let mut window: Vec<Event> = failure.placed[shown..].iter().chain(&pending).map(|&i| kept[i].clone()).collect();
    window.sort_by_key(|e| e.invoke);
    Verdict::Violation { key: key.to_owned(), window, explanation }
}

/// Nanoseconds as milliseconds with three decimals.
fn ms(ns: u64) -> String {
    format!("{}.{:03}", ns / 1_000_000, ns % 1_000_000 / 1_000)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Set { value } => write!(f, "set {value:?}"),
            Op::Delete => f.write_str("delete"),
            Op::Cas { expected_version, value } => write!(f, "cas v{expected_version} {value:?}"),
            Op::Get => f.write_str("get"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Stored { version } => write!(f, "stored v{version}"),
            Outcome::Deleted { version } => write!(f, "deleted v{version}"),
            Outcome::NotFound => f.write_str("not found"),
            Outcome::Conflict { current } => write!(f, "conflict at v{current}"),
            Outcome::Value(Some((value, version))) => write!(f, "{value:?} v{version}"),
            Outcome::Value(None) => f.write_str("absent"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for Event {
    /// `client 3 [12.345 → 13.001 ms] key "a": set "x" → stored v2`; an unknown return is `?`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (client, invoke, ret) = (self.client, ms(self.invoke), self.ret.map_or_else(|| "?".to_owned(), ms));
        let (key, op, outcome) = (&self.key, &self.op, &self.outcome);
        write!(f, "client {client} [{invoke} → {ret} ms] key {key:?}: {op} → {outcome}")
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable { keys, ops } => write!(f, "linearizable: {ops} ops on {keys} keys"),
            Verdict::Violation { key, window, explanation } => {
                writeln!(f, "not linearizable on key {key:?}: {explanation}")?;
                write!(f, "ops around that point, by invoke (ms since the recorder started):")?;
                for e in window {
                    let (invoke, ret) = (ms(e.invoke), e.ret.map_or_else(|| "?".to_owned(), ms));
                    write!(f, "\n  {invoke:>10} → {ret:>10}  client {:<3} {} → {}", e.client, e.op, e.outcome)?;
                }
                Ok(())
            }
            Verdict::Malformed { event, reason } => write!(f, "malformed event ({reason}): {event}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;

    /// An op on key "k" by `client`, invoked and returned at those milliseconds.
    fn at(client: u64, invoke: u64, ret: u64, op: Op, outcome: Outcome) -> Event {
        Event { client, key: "k".into(), op, invoke: invoke * MS, ret: Some(ret * MS), outcome }
    }
    /// An op on key "k" that never got an answer.
    fn lost(client: u64, invoke: u64, op: Op) -> Event {
        Event { client, key: "k".into(), op, invoke: invoke * MS, ret: None, outcome: Outcome::Unknown }
    }
    fn on(key: &str, event: Event) -> Event {
        Event { key: key.into(), ..event }
    }
    fn set(value: &str) -> Op {
        Op::Set { value: value.into() }
    }
    fn cas(expected_version: u64, value: &str) -> Op {
        Op::Cas { expected_version, value: value.into() }
    }
    fn stored(version: u64) -> Outcome {
        Outcome::Stored { version }
    }
    fn read(value: &str, version: u64) -> Outcome {
        Outcome::Value(Some((value.into(), version)))
    }
    use Op::{Delete, Get};
    use Outcome::NotFound;
    const ABSENT: Outcome = Outcome::Value(None);

    /// Checks each history and asserts whether it is linearizable; returns the verdicts.
    fn check(cases: Vec<(&str, Vec<Event>, bool)>) -> Vec<Verdict> {
        cases
            .into_iter()
            .map(|(name, history, want)| {
                let verdict = super::check(&history);
                assert_eq!(verdict.is_linearizable(), want, "{name}: {verdict}");
                verdict
            })
            .collect()
    }

    #[test]
    fn sequential_histories_follow_the_store_rules() {
        check(vec![
            (
                "every op in turn",
                vec![
                    at(1, 0, 1, set("a"), stored(1)),
                    at(1, 2, 3, Get, read("a", 1)),
                    at(2, 4, 5, set("b"), stored(2)),
                    at(1, 6, 7, cas(2, "c"), stored(3)),
                    at(2, 8, 9, cas(2, "d"), Outcome::Conflict { current: 3 }),
                    at(1, 10, 11, Get, read("c", 3)),
                    at(2, 12, 13, Delete, Outcome::Deleted { version: 3 }),
                    at(1, 14, 15, Get, ABSENT),
                    at(2, 16, 17, Delete, NotFound),
                    at(1, 18, 19, cas(0, "e"), stored(1)),
                ],
                true,
            ),
            ("empty history", vec![], true),
            ("a first set is at version 2", vec![at(1, 0, 1, set("a"), stored(2))], false),
            (
                "a conflict that names the expected version",
                vec![at(1, 0, 1, cas(0, "a"), Outcome::Conflict { current: 0 })],
                false,
            ),
            (
                "a read of a value never written",
                vec![at(1, 0, 1, set("a"), stored(1)), at(1, 2, 3, Get, read("ghost", 1))],
                false,
            ),
            (
                "a read of the wrong version",
                vec![at(1, 0, 1, set("a"), stored(1)), at(1, 2, 3, Get, read("a", 2))],
                false,
            ),
        ]);
    }

    #[test]
    fn concurrent_ops_may_take_effect_in_either_order() {
        check(vec![
            (
                "x then y",
                vec![
                    at(1, 0, 10, set("x"), stored(1)),
                    at(2, 5, 15, set("y"), stored(2)),
                    at(3, 20, 21, Get, read("y", 2)),
                ],
                true,
            ),
            (
                "y then x",
                vec![
                    at(1, 0, 10, set("x"), stored(2)),
                    at(2, 5, 15, set("y"), stored(1)),
                    at(3, 20, 21, Get, read("x", 2)),
                ],
                true,
            ),
            (
                "the read contradicts the versions",
                vec![
                    at(1, 0, 10, set("x"), stored(1)),
                    at(2, 5, 15, set("y"), stored(2)),
                    at(3, 20, 21, Get, read("x", 2)),
                ],
                false,
            ),
            ("both at version 1", vec![at(1, 0, 10, set("x"), stored(1)), at(2, 5, 15, set("y"), stored(1))], false),
            (
                "a read during a write sees the old value",
                vec![
                    at(1, 0, 1, set("a"), stored(1)),
                    at(2, 2, 6, set("b"), stored(2)),
                    at(3, 3, 4, Get, read("a", 1)),
                ],
                true,
            ),
            (
                "a read during a write sees the new value",
                vec![
                    at(1, 0, 1, set("a"), stored(1)),
                    at(2, 2, 6, set("b"), stored(2)),
                    at(3, 3, 4, Get, read("b", 2)),
                ],
                true,
            ),
            (
                "a return at the instant of an invoke overlaps it",
                vec![at(1, 0, 5, set("a"), stored(1)), at(2, 5, 6, Get, ABSENT)],
                true,
            ),
        ]);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        let verdicts = check(vec![(
            "stale read",
            vec![at(1, 0, 1, set("a"), stored(1)), at(2, 2, 3, set("b"), stored(2)), at(3, 4, 5, Get, read("a", 1))],
            false,
        )]);
        let Verdict::Violation { key, window, explanation } = &verdicts[0] else { panic!("{}", verdicts[0]) };
        assert_eq!(key, "k");
        assert!(explanation.contains(r#"here it would answer "b" v2"#), "{explanation}");
        assert_eq!(window.last().map(|e| &e.op), Some(&Get), "{}", verdicts[0]);
        let message = verdicts[0].to_string();
        assert!(message.starts_with(r#"not linearizable on key "k": 2 of 3 ops"#), "{message}");
        assert!(message.contains(r#"4.000 →      5.000  client 3   get → "a" v1"#), "{message}");
    }

    #[test]
    fn compare_and_set_succeeds_once_per_version() {
        let base = || vec![at(1, 0, 1, set("a"), stored(1))];
        let with = |more: Vec<Event>| base().into_iter().chain(more).collect::<Vec<_>>();
        check(vec![
            (
                "both succeed",
                with(vec![at(2, 2, 5, cas(1, "b"), stored(2)), at(3, 3, 6, cas(1, "c"), stored(2))]),
                false,
            ),
            (
                "one succeeds",
                with(vec![
                    at(2, 2, 5, cas(1, "b"), stored(2)),
                    at(3, 3, 6, cas(1, "c"), Outcome::Conflict { current: 2 }),
                ]),
                true,
            ),
            (
                "the loser saw the version it expected",
                with(vec![
                    at(2, 2, 5, cas(1, "b"), stored(2)),
                    at(3, 3, 6, cas(1, "c"), Outcome::Conflict { current: 1 }),
                ]),
                false,
            ),
        ]);
    }

    #[test]
    fn unknown_writes_may_take_effect_later_or_never() {
        let base = || vec![at(1, 0, 1, set("a"), stored(1)), lost(2, 2, set("b"))];
        let with = |more: Vec<Event>| base().into_iter().chain(more).collect::<Vec<_>>();
        check(vec![
            ("read later", with(vec![at(3, 10, 11, Get, read("b", 2))]), true),
            ("never observed", with(vec![at(3, 10, 11, Get, read("a", 1))]), true),
            (
                "seen, then unseen",
                with(vec![at(3, 10, 11, Get, read("b", 2)), at(3, 12, 13, Get, read("a", 1))]),
                false,
            ),
            ("its version bump seen", with(vec![at(3, 10, 11, set("c"), stored(3))]), true),
            ("its version bump not seen", with(vec![at(3, 10, 11, set("c"), stored(2))]), true),
            ("a bump it cannot explain", with(vec![at(3, 10, 11, set("c"), stored(4))]), false),
            ("read before its invoke", vec![at(3, 0, 1, Get, read("b", 1)), lost(2, 5, set("b"))], false),
            (
                "a lost delete",
                vec![at(1, 0, 1, set("a"), stored(1)), lost(2, 2, Delete), at(3, 10, 11, set("b"), stored(1))],
                true,
            ),
            ("only unknown ops", vec![lost(1, 0, set("a")), lost(2, 0, Get)], true),
        ]);
    }

    #[test]
    fn delete_restarts_the_version() {
        let base = || {
            vec![
                at(1, 0, 1, set("a"), stored(1)),
                at(1, 2, 3, set("b"), stored(2)),
                at(2, 4, 5, Delete, Outcome::Deleted { version: 2 }),
            ]
        };
        let with = |more: Vec<Event>| base().into_iter().chain(more).collect::<Vec<_>>();
        check(vec![
            ("set again at 1", with(vec![at(1, 6, 7, set("c"), stored(1)), at(2, 8, 9, Get, read("c", 1))]), true),
            ("set again at 3", with(vec![at(1, 6, 7, set("c"), stored(3))]), false),
            ("cas on absent", with(vec![at(1, 6, 7, cas(0, "c"), stored(1))]), true),
            ("cas on the old version", with(vec![at(1, 6, 7, cas(2, "c"), Outcome::Conflict { current: 0 })]), true),
            ("deleted again", with(vec![at(1, 6, 7, Delete, NotFound)]), true),
            (
                "a delete that names the wrong version",
                vec![at(1, 0, 1, set("a"), stored(1)), at(2, 2, 3, Delete, Outcome::Deleted { version: 2 })],
                false,
            ),
            ("not found while present", vec![at(1, 0, 1, set("a"), stored(1)), at(2, 2, 3, Delete, NotFound)], false),
        ]);
    }

    #[test]
    fn keys_are_checked_apart_and_the_failing_one_is_named() {
        let verdicts = check(vec![
            (
                "a fine, b stale",
                vec![
                    on("a", at(1, 0, 1, set("x"), stored(1))),
                    on("b", at(1, 0, 1, set("x"), stored(1))),
                    on("b", at(2, 2, 3, set("y"), stored(2))),
                    on("a", at(2, 2, 3, Get, read("x", 1))),
                    on("b", at(3, 4, 5, Get, read("x", 1))),
                ],
                false,
            ),
            (
                "two keys",
                vec![on("a", at(1, 0, 1, set("x"), stored(1))), on("b", at(2, 0, 1, set("x"), stored(1)))],
                true,
            ),
        ]);
        assert!(matches!(&verdicts[0], Verdict::Violation { key, .. } if key == "b"), "{}", verdicts[0]);
        assert_eq!(verdicts[1], Verdict::Linearizable { keys: 2, ops: 2 });
    }

    #[test]
    fn keys_can_start_with_a_value() {
        let initial = BTreeMap::from([("k".to_owned(), ("seed".to_owned(), 4))]);
        let history = [at(1, 0, 1, Get, read("seed", 4)), at(1, 2, 3, set("a"), stored(5))];
        assert!(check_from(&history, &initial).is_linearizable());
        assert!(!super::check(&history).is_linearizable());
    }

    #[test]
    fn malformed_events_are_named() {
        for (event, reason) in [
            (at(1, 0, 1, Get, stored(1)), "get cannot answer stored v1"),
            (at(1, 5, 4, set("a"), stored(1)), "returned at 4.000 ms, before its invoke at 5.000 ms"),
        ] {
            let verdict = super::check(std::slice::from_ref(&event));
            assert_eq!(verdict, Verdict::Malformed { event, reason: reason.to_owned() });
        }
    }

    #[test]
    fn a_burst_of_lost_writes_stays_cheap() {
        // 40 timed-out writes that never took effect, pending through 100 known ones: without
        // folding identical optional ops the search would try 2^40 subsets at each step.
        let mut history: Vec<Event> = (0..40).map(|i| lost(9, i, set(&format!("lost-{i}")))).collect();
        history.extend((0..100).map(|i| at(1, 100 + 2 * i, 101 + 2 * i, set(&format!("v{i}")), stored(i + 1))));
        let started = Instant::now();
        check(vec![("lost writes unseen", history.clone(), true)]);
        history.push(at(1, 400, 401, Get, read("v99", 99)));
        check(vec![("then a read of a stale version", history, false)]);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    /// xorshift64: enough randomness for generating histories, and the same on every run.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A linearizable history: each op gets an interval and a point inside it where it takes
    /// effect on a sequential store; one write in twelve gets no answer, and takes effect or
    /// not at random.
    fn random_history(seed: u64, ops: u64, keys: u64, clients: u64) -> Vec<Event> {
        let mut rng = XorShift(seed);
        let mut free = vec![0; clients as usize];
        let mut planned = Vec::new();
        for i in 0..ops {
            let client = rng.below(clients);
            let invoke = free[client as usize] + rng.below(20);
            let point = invoke + rng.below(40);
            let ret = point + rng.below(40);
            free[client as usize] = ret + 1;
            let value = format!("c{client}-{i}");
            let op = match rng.below(20) {
                0..=6 => Op::Set { value },
                7..=8 => Delete,
                9..=11 => Op::Cas { expected_version: rng.below(4), value },
                _ => Get,
            };
            let lost = op != Get && rng.below(12) == 0;
            let effect = !lost || rng.below(2) == 0;
            let key = format!("key-{}", rng.below(keys));
            let event =
                Event { client, key, op, invoke: invoke * 1000, ret: Some(ret * 1000), outcome: Outcome::Unknown };
            planned.push((point, effect, lost, event));
        }
        planned.sort_by_key(|(point, ..)| *point);
        let mut store: HashMap<String, Option<(String, u64)>> = HashMap::new();
        let mut history = Vec::new();
        for (_, effect, lost, mut event) in planned {
            let state = store.entry(event.key.clone()).or_default();
            if effect {
                let (outcome, after) = spec(state, &event.op);
                *state = after;
                event.outcome = outcome;
            }
            if lost {
                (event.ret, event.outcome) = (None, Outcome::Unknown);
            }
            history.push(event);
        }
        history
    }

    #[test]
    fn random_linearizable_histories_pass_and_a_corrupted_read_fails() {
        for seed in 1..=10 {
            let mut history = random_history(0x9E37_79B9_7F4A_7C15 ^ seed, 300, 3, 8);
            assert!(history.iter().any(|e| e.outcome == Outcome::Unknown), "seed {seed}: no unknown op");
            let started = Instant::now();
            let verdict = super::check(&history);
            let passed = started.elapsed();
            assert_eq!(verdict, Verdict::Linearizable { keys: 3, ops: 300 }, "seed {seed}: {verdict}");

            let reads: Vec<usize> =
                (0..history.len()).filter(|&i| matches!(history[i].outcome, Outcome::Value(_))).collect();
            let victim = reads[reads.len() / 2];
            history[victim].outcome = read("never written", 1);
            let started = Instant::now();
            let verdict = super::check(&history);
            let failed = started.elapsed();
            assert!(
                matches!(&verdict, Verdict::Violation { key, .. } if *key == history[victim].key),
                "seed {seed}: {verdict}"
            );
            eprintln!("seed {seed}: linearizable in {passed:?}, corrupted read found in {failed:?}");
            assert!(passed < Duration::from_secs(2) && failed < Duration::from_secs(2), "seed {seed}: too slow");
        }
    }

    #[test]
    fn the_recorder_collects_from_many_threads() {
        fn shared<T: Send + Sync>(_: &T) {}
        let recorder = Arc::new(Recorder::new());
        shared(&recorder);
        std::thread::scope(|s| {
            for client in 0..4 {
                let recorder = Arc::clone(&recorder);
                s.spawn(move || {
                    for version in 1..=25 {
                        let t = recorder.invoke();
                        recorder.complete(client, format!("key-{client}"), set("v"), t, stored(version));
                    }
                    let t = recorder.invoke();
                    recorder.complete(client, format!("key-{client}"), set("w"), t, Outcome::Unknown);
                });
            }
        });
        let events = recorder.events();
        assert_eq!(events.len(), 104);
        assert!(events.iter().all(|e| e.ret.is_none_or(|ret| ret >= e.invoke)));
        assert_eq!(events.iter().filter(|e| e.ret.is_none()).count(), 4);
        assert_eq!(recorder.check(), Verdict::Linearizable { keys: 4, ops: 104 });
    }
}
