//! What users and workloads hand the daemon as JSON or as a typed string, parsed and
//! checked as the daemon checks it: container specs (`ContainerSpec::validate`), the API's
//! create bodies, deploy files (`container deploy --from-file`), VM definitions (`vm
//! create --from-file`), templates, alert rules, Raft settings, the transaction
//! optimiser's config (`ai enable --config`), the lines an agent and a VM's workloads send
//! (`AgentMessage`, `LocalRequest`), and the string forms of ports, resources, sizes,
//! restart policies, health probes, environment variables, times and state keys.
//!
//! Every parser sees the same input; none may panic, and a value that parses and passes
//! its checks must serialise and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_os_api::types::{ContainerCreate, DeployRequest, VmDefinitions};
use micro_os_core::circuit::{validate_key, LocalRequest, RaftSettings};
use micro_os_core::metrics::{parse_range, parse_time, AlertRule};
use micro_os_core::vm::{AgentMessage, DaemonMessage};
use micro_os_core::{
    container::parse_env, ContainerNetwork, ContainerSpec, HealthCheck, PortMapping, Resources, RestartPolicy, Size,
    Template, VmSpec,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses `data` as `T`; when it parses and `check` passes, JSON of the value parses back
/// to an equal value.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    data: &[u8],
    check: impl Fn(&T) -> bool,
) -> Option<T> {
    let v: T = serde_json::from_slice(data).ok()?;
    if check(&v) {
        let json = serde_json::to_string(&v).expect("a parsed value serialises");
        let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        assert_eq!(back, v, "{json} parses back to another value");
    }
    Some(v)
}

/// Parses `data` as `T` (a type without `PartialEq`) and serialises it again.
fn parse<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_string(&v).expect("a parsed value serialises");
    let _: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    // files and request bodies
    round_trip::<ContainerSpec>(data, |s| s.validate().is_ok());
    round_trip::<VmSpec>(data, |s| s.validate(64 * 1024, 64).is_ok());
    round_trip::<Template>(data, |t| t.validate().is_ok());
    round_trip::<AlertRule>(data, |r| r.validate().is_ok());
    round_trip::<RaftSettings>(data, |r| r.validate().is_ok());
    round_trip::<HealthCheck>(data, |h| h.validate().is_ok());
    round_trip::<Resources>(data, |r| r.validate().is_ok());
    round_trip::<LocalRequest>(data, |_| true);
    round_trip::<AgentMessage>(data, |_| true);
    round_trip::<DaemonMessage>(data, |_| true);
    if let Some(c) = parse::<ContainerCreate>(data) {
        if let Some(n) = &c.network {
            let _ = ContainerNetwork::parse(n);
        }
    }
    if let Some(d) = parse::<DeployRequest>(data) {
        for c in d.containers.iter().filter_map(|c| c.network.as_ref()) {
            let _ = ContainerNetwork::parse(c);
        }
    }
    if let Some(v) = parse::<VmDefinitions>(data) {
        let _ = v.into_vec();
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(n) = ContainerNetwork::parse(&value) {
            let json = serde_json::to_value(&n).expect("a network serialises");
            ContainerNetwork::parse(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = micro_os_ai::TxOptimizerConfig::from_json_str(text) {
            let json = serde_json::to_string(&c).expect("a config serialises");
            micro_os_ai::TxOptimizerConfig::from_json_str(&json)
                .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        }
        let mut c = micro_os_ai::TxOptimizerConfig::default();
        let _ = c.set(text);
        // the string forms users type on the command line
        if let Ok(p) = PortMapping::parse(text) {
            let again = PortMapping::parse(&p.to_string()).unwrap_or_else(|e| panic!("{p} does not parse back: {e}"));
            assert_eq!(again, p);
        }
        let _ = Resources::parse(text);
        if let Ok(s) = Size::parse("memory", text) {
            let _ = Size::parse("memory", &s.to_string());
        }
        let _ = RestartPolicy::parse(text);
        let _ = HealthCheck::parse_http(text);
        let _ = parse_env(text);
        let _ = validate_key(text);
        let now = 1_700_000_000_000;
        let _ = parse_time(text, false, now);
        let _ = parse_time(text, true, now);
        let (from, to) = text.split_once(',').unwrap_or((text, ""));
        let _ = parse_range(from, Some(to), now);
        let _ = parse_range(text, None, now);
    }
});
