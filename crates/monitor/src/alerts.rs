//! Alert rules over samples: a rule fires for an object once its condition has held for
//! `for_s`, stays one alert while it keeps holding, and resolves when it stops.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, TimeZone, Utc};
use micro_os_core::metrics::{Alert, AlertRule, Sample};

/// What the daemon must store after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    /// A new alert (its id is 0 until stored; give the stored id to `fired`).
    Fire(Alert),
    /// The alert with this id stopped holding.
    Resolve { id: i64, at: DateTime<Utc> },
}

#[derive(Debug, Default)]
struct State {
    /// Since when the condition holds, while it holds.
    since: Option<i64>,
    /// The open alert's id, once fired and stored.
    firing: Option<i64>,
    /// Recent (ts, value) of the metric, for `increase_over_s`.
    history: VecDeque<(i64, f64)>,
    /// When the object was last in a round.
    seen: Option<i64>,
}

#[derive(Debug, Default)]
pub struct AlertEngine {
    pub rules: Vec<AlertRule>,
    states: HashMap<(String, String), State>,
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl AlertEngine {
    pub fn new(rules: Vec<AlertRule>) -> AlertEngine {
        AlertEngine { rules, states: HashMap::new() }
    }

    /// Alerts that were open when the daemon stopped: they resolve or stay open with
    /// the next evaluation instead of firing again.
    pub fn adopt(&mut self, open: &[Alert]) {
        for a in open.iter().filter(|a| a.source == "rules") {
            let st = self.states.entry((a.rule.clone(), a.object.clone())).or_default();
            st.firing = Some(a.id);
            st.since = Some(a.fired_at.timestamp_millis());
        }
    }

    /// Records the id a fired alert got when it was stored.
    pub fn fired(&mut self, rule: &str, object: &str, id: i64) {
        if let Some(st) = self.states.get_mut(&(rule.to_string(), object.to_string())) {
            st.firing = Some(id);
        }
    }

    /// Evaluates every rule against one round of samples. An object absent from the
    /// rounds (stopped, removed) for longer than its rule's window resolves its alert.
    pub fn evaluate(&mut self, samples: &[Sample]) -> Vec<AlertChange> {
        let mut out = Vec::new();
        if let Some(now) = samples.iter().map(|s| s.ts).max() {
            for rule in &self.rules {
                let window = (rule.increase_over_s.unwrap_or(0).max(rule.for_s) + 10) as i64 * 1000;
                // and is forgotten: a removed object's state would otherwise stay for the
                // daemon's lifetime, one per rule and container ever seen
                self.states.retain(|(r, _), st| {
                    if r != &rule.name || st.seen.is_none_or(|seen| now - seen <= window) {
                        return true;
                    }
                    if let Some(id) = st.firing.take() {
                        out.push(AlertChange::Resolve { id, at: at(now) });
                    }
                    false
                });
            }
        }
        for rule in &self.rules {
            for s in samples {
                let object = s.object();
                if !rule.matches(&object) {
                    continue;
                }
                let st = self.states.entry((rule.name.clone(), object.clone())).or_default();
                st.seen = Some(s.ts);
                let Some(raw) = s.metric(&rule.metric) else { continue };
                let value = match rule.increase_over_s {
                    None => raw,
                    Some(window) => {
                        st.history.push_back((s.ts, raw));
                        while st.history.front().is_some_and(|(t, _)| *t < s.ts - window as i64 * 1000) {
                            st.history.pop_front();
                        }
                        // counters restart from zero when the object does: take the growth
                        // since the smallest value in the window
                        let low = st.history.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
                        raw - low
                    }
                };
                if value > rule.above {
                    let since = *st.since.get_or_insert(s.ts);
                    if st.firing.is_none() && s.ts - since >= rule.for_s as i64 * 1000 {
                        st.firing = Some(0);
                        out.push(AlertChange::Fire(Alert {
                            id: 0,
                            rule: rule.name.clone(),
                            object: object.clone(),
                            severity: rule.severity,
                            source: "rules".into(),
                            value,
                            message: format!("{} {value:.2} above {} on {object}", rule.metric, rule.above),
                            fired_at: at(s.ts),
                            resolved_at: None,
                        }));
                    }
                } else {
                    st.since = None;
                    if let Some(id) = st.firing.take() {
                        out.push(AlertChange::Resolve { id, at: at(s.ts) });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_os_core::metrics::Severity;

    fn rule(metric: &str, above: f64, for_s: u64, increase: Option<u64>) -> AlertRule {
        AlertRule {
            name: "r".into(),
            metric: metric.into(),
            above,
            for_s,
            increase_over_s: increase,
            objects: "container/*".into(),
            severity: Severity::Critical,
        }
    }

    fn sample(ts_s: i64, cpu: f64, restarts: u64) -> Sample {
        Sample {
            ts: ts_s * 1000,
            kind: "container".into(),
            name: "web".into(),
            cpu_percent: cpu,
            restarts,
            ..Default::default()
        }
    }

    fn kinds(c: &[AlertChange]) -> Vec<&'static str> {
        c.iter().map(|c| if matches!(c, AlertChange::Fire(_)) { "fire" } else { "resolve" }).collect()
    }

    #[test]
    fn fires_after_the_duration_once_and_resolves() {
        let mut e = AlertEngine::new(vec![rule("cpu_percent", 90.0, 10, None)]);
        let steps = [(0, 95.0), (5, 99.0), (10, 97.0), (15, 98.0), (20, 10.0), (25, 12.0)];
        let mut seen = Vec::new();
        for (t, cpu) in steps {
            let changes = e.evaluate(&[sample(t, cpu, 0)]);
            if let Some(AlertChange::Fire(a)) = changes.first() {
                assert_eq!((a.object.as_str(), a.value), ("container/web", 97.0));
                e.fired("r", "container/web", 7);
            }
            if let Some(AlertChange::Resolve { id, .. }) = changes.first() {
                assert_eq!(*id, 7);
            }
            seen.push((t, kinds(&changes)));
        }
        assert_eq!(
            seen,
            [(0, vec![]), (5, vec![]), (10, vec!["fire"]), (15, vec![]), (20, vec!["resolve"]), (25, vec![])]
        );
    }

    #[test]
    fn a_blip_shorter_than_the_duration_does_not_fire() {
        let mut e = AlertEngine::new(vec![rule("cpu_percent", 90.0, 10, None)]);
        for (t, cpu) in [(0, 95.0), (5, 20.0), (10, 95.0), (15, 20.0)] {
            assert!(e.evaluate(&[sample(t, cpu, 0)]).is_empty());
        }
    }

    #[test]
    fn counter_increase_over_a_window() {
        // more than 2 restarts within 30 s
        let mut e = AlertEngine::new(vec![rule("restarts", 2.0, 0, Some(30))]);
        let mut out = Vec::new();
        for (t, restarts) in [(0, 0), (5, 1), (10, 2), (15, 3), (20, 3), (40, 3), (50, 3)] {
            let c = e.evaluate(&[sample(t, 0.0, restarts)]);
            if matches!(c.first(), Some(AlertChange::Fire(_))) {
                e.fired("r", "container/web", 1);
            }
            out.push((t, kinds(&c)));
        }
        // fires when the third restart lands in the window; resolves once the window
        // holds no more growth than 2
        assert_eq!(out[3], (15, vec!["fire"]));
        assert_eq!(out.iter().filter(|(_, k)| !k.is_empty()).count(), 2, "{out:?}");
        assert_eq!(out[5], (40, vec!["resolve"]));
    }

    #[test]
    fn an_object_that_disappears_resolves_after_the_window() {
        let mut e = AlertEngine::new(vec![rule("cpu_percent", 90.0, 0, None)]);
        assert!(matches!(e.evaluate(&[sample(0, 99.0, 0)]).as_slice(), [AlertChange::Fire(_)]));
        e.fired("r", "container/web", 4);
        let other = |t: i64| Sample { ts: t * 1000, kind: "host".into(), name: "h".into(), ..Default::default() };
        assert!(e.evaluate(&[other(5)]).is_empty(), "a short absence (a restart) changes nothing");
        assert_eq!(e.evaluate(&[other(11)]), vec![AlertChange::Resolve { id: 4, at: at(11_000) }]);
        assert!(e.evaluate(&[other(20)]).is_empty(), "resolved once");
        assert!(e.states.is_empty(), "the gone object is forgotten: {:?}", e.states);
    }

    #[test]
    fn churned_objects_are_forgotten() {
        // a container a second, each seen in one round: the states stay within the window's
        let mut e = AlertEngine::new(vec![rule("cpu_percent", 90.0, 0, None)]);
        for t in 0..1000 {
            let s = Sample { name: format!("churn-{t}"), ..sample(t, 1.0, 0) };
            assert!(e.evaluate(&[s]).is_empty());
            assert!(e.states.len() <= 12, "{} states at {t} s", e.states.len());
        }
    }

    #[test]
    fn adopted_alerts_are_not_fired_again() {
        let mut e = AlertEngine::new(vec![rule("cpu_percent", 90.0, 0, None)]);
        e.adopt(&[Alert {
            id: 3,
            rule: "r".into(),
            object: "container/web".into(),
            severity: Severity::Critical,
            source: "rules".into(),
            value: 99.0,
            message: String::new(),
            fired_at: Utc::now(),
            resolved_at: None,
        }]);
        assert!(e.evaluate(&[sample(0, 99.0, 0)]).is_empty());
        assert_eq!(e.evaluate(&[sample(5, 1.0, 0)]), vec![AlertChange::Resolve { id: 3, at: at(5000) }]);
    }
}
