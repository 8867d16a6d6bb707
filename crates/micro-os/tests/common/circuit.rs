//! A circuit's clients and views, for the tests that drive circuits under faults.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_os_circuit::check::{Op, Outcome, Recorder};
use serde_json::Value;

use super::Daemon;

pub const KEYS: &[&str] = &["x", "y", "z"];

pub fn view(d: &Daemon, name: &str) -> Value {
    serde_json::from_str(&d.ok(&["circuit", "view", "--name", name, "--format", "json"])).unwrap()
}

/// Polls the circuit's view until `pred` holds.
pub fn wait_view(d: &Daemon, name: &str, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = view(d, name);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "circuit {name}: timed out waiting for {what}; last: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A leader, and every member following it within a few entries (the clients keep
/// writing, so "exactly even" may never be seen).
pub fn all_caught_up(v: &Value, members: usize) -> bool {
    let m = v["members"].as_array().unwrap();
    let near = |x: &Value| x.as_u64().is_some_and(|x| x + 20 >= v["committed"].as_u64().unwrap_or(0));
    v["leader"].is_string()
        && m.len() == members
        && m.iter().all(|m| {
            m["health"] == "ok"
                && (m["state"] == "leader" || m["state"] == "follower")
                && m["lag"].as_u64().is_some_and(|l| l <= 20)
                && near(&m["applied"])
        })
}

pub fn leader(v: &Value) -> String {
    v["leader"].as_str().expect("a leader").to_string()
}

/// One client of the history: random sets, compare-and-sets and reads through random
/// members, over the API, until told to stop.
pub fn client(
    url: String,
    token: String,
    id: u64,
    members: Vec<String>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (id * 0x1234_5678);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = KEYS[(next() % KEYS.len() as u64) as usize];
        let via = &members[(next() % members.len() as u64) as usize];
        let path = format!("{url}/api/v1/circuits/lin/state/{key}?via={via}");
        let auth = format!("Bearer {token}");
        match next() % 3 {
            0 => {
                let value = format!("c{id}-{n}");
                let t = rec.invoke();
                let r = agent.put(&path).set("Authorization", &auth).send_json(serde_json::json!({ "value": value }));
                let outcome = match r {
                    Ok(resp) => {
                        let w: Value = resp.into_json().unwrap();
                        Outcome::Stored { version: w["outcome"]["version"].as_u64().unwrap() }
                    }
                    // refused before it reached a member (a stopped VM's agent): nothing was written
                    Err(ureq::Error::Status(400 | 404 | 409, _)) => continue,
                    Err(_) => Outcome::Unknown,
                };
                if !matches!(outcome, Outcome::Unknown) {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                rec.complete(id, key, Op::Set { value }, t, outcome);
            }
            1 => {
                // compare-and-set on the version a stale read saw
                let stale = agent.get(&format!("{path}&stale=true")).set("Authorization", &auth).call();
                let expected = match stale {
                    Ok(r) => r.into_json::<Value>().unwrap()["entries"][0]["version"].as_u64().unwrap_or(0),
                    Err(_) => 0,
                };
                let value = format!("c{id}-{n}");
                let t = rec.invoke();
                let r = agent
                    .put(&path)
                    .set("Authorization", &auth)
                    .send_json(serde_json::json!({ "value": value, "expected_version": expected }));
                let outcome = match r {
                    Ok(resp) => {
                        let w: Value = resp.into_json().unwrap();
                        Outcome::Stored { version: w["outcome"]["version"].as_u64().unwrap() }
                    }
                    Err(ureq::Error::Status(409, resp)) => {
                        let text = resp.into_string().unwrap_or_default();
                        // `key "x" is at version N, not M`; any other conflict (the member's
                        // VM is stopped) refused the request before it reached a member
                        let current = text
                            .split("at version ")
                            .nth(1)
                            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|s| s.parse().ok());
                        match current {
                            Some(current) => Outcome::Conflict { current },
                            None => continue,
                        }
                    }
                    Err(ureq::Error::Status(400 | 404, _)) => continue,
                    Err(_) => Outcome::Unknown,
                };
                if !matches!(outcome, Outcome::Unknown) {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                rec.complete(id, key, Op::Cas { expected_version: expected, value }, t, outcome);
            }
            _ => {
                let t = rec.invoke();
                let r = agent.get(&path).set("Authorization", &auth).call();
                let outcome = match r {
                    Ok(resp) => {
                        let e = &resp.into_json::<Value>().unwrap()["entries"][0];
                        Outcome::Value(Some((e["value"].as_str().unwrap().to_string(), e["version"].as_u64().unwrap())))
                    }
                    Err(ureq::Error::Status(404, _)) => Outcome::Value(None),
                    // a failed read tells nothing: not recorded
                    Err(_) => continue,
                };
                ok.fetch_add(1, Ordering::SeqCst);
                rec.complete(id, key, Op::Get, t, outcome);
            }
        }
    }
}
