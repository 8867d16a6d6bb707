//! The closed vocabularies of the wire (AI modules, log components, message types, ...) and
//! the OpenAPI schemas that state them, so the document says exactly what the server
//! accepts. The daemon checks its input against these same lists (or, for lists it owns,
//! a test checks that they agree), so the two cannot drift apart.

use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{KnownFormat, RefOr};

/// The AI modules of the spec (`ai enable --module M`).
pub const AI_MODULES: &[&str] = &["transaction", "mining", "network"];
/// The AI modules this build has; the document offers only these, and the others of the
/// spec are answered 501 (not in this build).
pub const AI_MODULES_BUILT: &[&str] = &["transaction"];
/// VM drivers (`vm create --driver D`).
pub const VM_DRIVERS: &[&str] = &["sandbox", "qemu"];
/// The built-in base images `image build` makes.
pub const IMAGE_BASES: &[&str] = &["busybox", "blockchain-base", "blockchain-node", "ethereum-dev"];
/// The spec's message types (`net send --type T`).
pub const MESSAGE_TYPES: &[&str] = &["SYNC", "DISC", "DATA", "CTRL", "PING"];
/// The daemon's components, as `monitor health --components` and `logs --component` name them.
pub const COMPONENTS: &[&str] =
    &["api", "store", "runtime", "vms", "containers", "net", "monitor", "circuit", "chain", "ai"];
/// Log levels, least severe first.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
/// `monitor export --format F`.
pub const EXPORT_FORMATS: &[&str] = &["csv", "json"];
/// `circuit create --type T`.
pub const CIRCUIT_TYPES: &[&str] = &["consensus"];

fn string(description: &str) -> ObjectBuilder {
    bare().description(Some(description))
}

fn bare() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::new(Type::String))
}

/// One of `values`.
fn one_of(values: &[&str], description: &str) -> RefOr<Schema> {
    string(description).enum_values(Some(values.iter().copied())).into()
}

/// One of `values`, or null (an optional field).
fn one_of_or_null(values: &[&str], description: &str) -> RefOr<Schema> {
    let values = values.iter().map(|v| serde_json::json!(v)).chain([serde_json::Value::Null]);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// A comma-separated list of `values`; empty means no filter.
fn list_of(values: &[&str], description: &str) -> RefOr<Schema> {
    let alt = values.join("|");
    string(description).pattern(Some(format!("^(({alt})(,({alt}))*)?$"))).into()
}

const AI_MODULE: &str = "The module. The spec's others (`mining`, `network`) are answered 501: not in this build.";

pub(crate) fn ai_module() -> RefOr<Schema> {
    one_of(AI_MODULES_BUILT, AI_MODULE)
}

pub(crate) fn ai_module_or_null() -> RefOr<Schema> {
    one_of_or_null(AI_MODULES_BUILT, AI_MODULE)
}

pub(crate) fn vm_driver() -> RefOr<Schema> {
    one_of_or_null(VM_DRIVERS, "`sandbox` (default) or `qemu`.")
}

pub(crate) fn image_base() -> RefOr<Schema> {
    one_of(IMAGE_BASES, "Which built-in image to build.")
}

pub(crate) fn message_type() -> RefOr<Schema> {
    let lower: Vec<String> = MESSAGE_TYPES.iter().map(|t| t.to_lowercase()).collect();
    let mut all: Vec<&str> = MESSAGE_TYPES.to_vec();
    all.extend(lower.iter().map(String::as_str));
    one_of(&all, "The message type, in either case.")
}

/// What a request body must hold that one field's schema cannot say: which fields go
/// together. Added to the served document's component schemas (JSON Schema keywords
/// beside `properties`), each as the daemon checks it.
pub(crate) fn cross_field_rules() -> serde_json::Value {
    // a field given and not null
    let given = |f: &str| serde_json::json!({"required": [f], "properties": {f: {"type": "string"}}});
    let absent = |f: &str| serde_json::json!({"properties": {f: {"type": "null"}}});
    let module_or_all = serde_json::json!({"oneOf": [
        {"allOf": [given("module")], "properties": {"all": {"const": false}}},
        {"allOf": [absent("module")], "required": ["all"], "properties": {"all": {"const": true}}}
    ]});
    // enable also takes the module's settings: the transaction optimiser's keys and ranges
    let mut enable = module_or_all.clone();
    enable["properties"] = serde_json::json!({"config": {
        "type": ["object", "null"], "additionalProperties": false, "properties": tx_config()
    }});
    let stream = serde_json::json!({"required": ["stream"], "properties": {"stream": {"const": true}}});
    let name = serde_json::json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"});
    serde_json::json!({
        "ContainerCreate": {"allOf": [
            {"anyOf": [given("image"), given("template")]},
            // replicas run on a circuit's members, and a circuit is named only for them
            {"anyOf": [{"properties": {"replicate": {"const": false}}}, given("circuit")]},
            {"anyOf": [absent("circuit"), {"required": ["replicate"], "properties": {"replicate": {"const": true}}}]},
            // on one VM, or replicated on a circuit's members: not both
            {"anyOf": [absent("vm"), absent("circuit")]}
        ]},
        // a deploy file lists a container or more, and does not replicate (yet)
        "DeployRequest": {"properties": {"containers": {
            "minItems": 1, "items": {"properties": {"replicate": {"const": false}}}
        }}},
        // at least 16 MiB (an integer, not 16.0); a qemu guest gets whole cores and 256 MiB
        "VmCreate": {
            "properties": {"memory": {"minimum": 16}},
            "anyOf": [
                {"properties": {"driver": {"not": {"const": "qemu"}}}},
                {"properties": {"cpu": {"multipleOf": 1}, "memory": {"minimum": 256}}}
            ]
        },
        "CircuitCreate": {"properties": {"nodes": {"items": name}}},
        // a memory limit runc can start under (6 MiB), in bytes a JSON number holds exactly
        "Resources": {"properties": {"memory": {"minimum": 6 << 20, "maximum": (1u64 << 53) - 1}}},
        // at least one VM, bare or under `vms` (and nothing else beside it)
        "VmDefinitions": {"oneOf": [
            {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/VmCreate"}},
            {"type": "object", "required": ["vms"], "additionalProperties": false, "properties": {
                "vms": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/VmCreate"}}
            }}
        ]},
        "AiEnable": enable,
        "AiDisable": module_or_all,
        "NetSend": {"allOf": [
            // only DATA travels as a stream
            {"anyOf": [{"properties": {"type": {"enum": ["DATA", "data"]}}}, {"not": stream.clone()}]},
            // a message carries at most 512 KiB; a stream any size
            {"anyOf": [stream, {"properties": {"size": {"maximum": 512 * 1024}}}]}
        ]},
        "AiConfigure": {"properties": {"set": {"minItems": 1, "items": {"type": "string", "pattern": tx_assignment()}}}}
    })
}

pub(crate) fn component() -> RefOr<Schema> {
    let mut all = vec!["all"];
    all.extend_from_slice(COMPONENTS);
    one_of(&all, "One component, or `all` (the default).")
}

pub(crate) fn components() -> RefOr<Schema> {
    let mut all = vec!["all"];
    all.extend_from_slice(COMPONENTS);
    list_of(&all, "Comma-separated components, or `all` (the default).")
}

pub(crate) fn log_level() -> RefOr<Schema> {
    one_of(LOG_LEVELS, "The least severe level shown (default info).")
}

pub(crate) fn export_format() -> RefOr<Schema> {
    one_of(EXPORT_FORMATS, "csv (the default) or json.")
}

pub(crate) fn circuit_type() -> RefOr<Schema> {
    one_of_or_null(CIRCUIT_TYPES, "`consensus` (the default).")
}

pub(crate) fn event_types() -> RefOr<Schema> {
    list_of(crate::types::EVENT_TYPES, "Only these kinds, comma-separated.")
}

/// A time as users type it (`micro_os_core::metrics::parse_time`): a date, an RFC 3339
/// time, an ISO time without an offset (UTC), `now`, or a duration ago (`90s`, `2h`, `7d`).
pub(crate) fn time() -> RefOr<Schema> {
    let format = |f| bare().format(Some(SchemaFormat::KnownFormat(f))).build();
    AnyOfBuilder::new()
        .description(Some(
            "A date (2023-01-31), an RFC 3339 time, an ISO time taken as UTC (2023-01-31T12:00:00), \
             `now`, or a duration ago (90s, 15m, 2h, 7d; at most 9 digits)",
        ))
        .item(format(KnownFormat::Date))
        .item(format(KnownFormat::DateTime))
        .item(bare().pattern(Some(
            "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,9})?)?$",
        )))
        .item(bare().pattern(Some("^(now|[0-9]{1,9}[smhd])$")))
        .into()
}

/// A multiaddr that ends in `/p2p/<peer id>` (a format of our own: the test suite gives
/// schemathesis a strategy for it).
pub(crate) fn peer_addr() -> RefOr<Schema> {
    string("The address of a host of the fabric, ending in `/p2p/<peer id>` (copy it from `micro-os host token`).")
        .format(Some(SchemaFormat::Custom("multiaddr".into())))
        .into()
}

/// A count of lines or events asked for (`tail`): what the document states, at most
/// 2147483647 (a 32-bit integer's range, which clients' integer types hold).
pub(crate) fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::Deserialize;
    let n = Option::<u32>::deserialize(d)?;
    match n {
        Some(n) if n > i32::MAX as u32 => {
            Err(serde::de::Error::custom(format!("{n} is more than the largest count, {}", i32::MAX)))
        }
        n => Ok(n),
    }
}

/// The transaction optimiser's settings (`tx_optimizer_config` of the spec): name, JSON
/// type, range (inclusive for integers; exclusive for `anomaly_threshold`). The AI crate
/// checks them; a test in the binary checks the two agree.
pub const TX_CONFIG_KEYS: &[(&str, &str, f64, f64)] = &[
    ("batch_size", "integer", 1.0, 65536.0),
    ("priority_levels", "integer", 2.0, 16.0),
    ("anomaly_threshold", "number", 0.0, 1.0),
    ("model_update_interval", "integer", 60.0, 604800.0),
];

fn tx_config() -> serde_json::Value {
    let mut props = serde_json::Map::new();
    for &(key, ty, lo, hi) in TX_CONFIG_KEYS {
        let s = match ty {
            "integer" => serde_json::json!({"type": "integer", "minimum": lo as u64, "maximum": hi as u64}),
            _ => serde_json::json!({"type": "number", "exclusiveMinimum": lo, "exclusiveMaximum": hi}),
        };
        props.insert(key.into(), s);
    }
    props.into()
}

/// `key=value` of `ai config --set`, each value in its key's range.
fn tx_assignment() -> String {
    let alts: Vec<String> = TX_CONFIG_KEYS
        .iter()
        .map(|&(key, ty, lo, hi)| match ty {
            "integer" => format!("{key}=({})", int_range(lo as u64, hi as u64)),
            // (0, 1): a decimal fraction with a non-zero digit
            _ => format!("{key}=0?\\.[0-9]{{0,8}}[1-9]"),
        })
        .collect();
    format!("^({})$", alts.join("|"))
}

/// A regular expression matching exactly the decimal integers `lo..=hi` (no leading zeros).
pub fn int_range(lo: u64, hi: u64) -> String {
    let mut alts = Vec::new();
    let mut start = lo;
    while start <= hi {
        // the largest block [start, start + 10^k - 1] aligned on 10^k and within hi
        let mut step = 1u64;
        while start.is_multiple_of(step * 10) && start + step * 10 - 1 <= hi {
            step *= 10;
        }
        let end = start + step - 1;
        let (s, e) = (start.to_string(), end.to_string());
        let mut re = String::new();
        for (a, b) in s.chars().zip(e.chars()) {
            if a == b {
                re.push(a);
            } else if a == '0' && b == '9' {
                re.push_str("[0-9]");
            } else {
                re.push_str(&format!("[{a}-{b}]"));
            }
        }
        alts.push(re);
        start = end + 1;
    }
    alts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ranges_match_exactly_their_numbers() {
        for (lo, hi) in [(1, 65536), (2, 16), (60, 604_800), (1, 65535), (0, 9), (7, 7)] {
            let re = regex::Regex::new(&format!("^({})$", int_range(lo, hi))).unwrap();
            for n in (0..700_000u64).filter(|n| *n < 100 || n % 97 == 0 || n.abs_diff(hi) < 3 || n.abs_diff(lo) < 3) {
                assert_eq!(re.is_match(&n.to_string()), (lo..=hi).contains(&n), "{n} in {lo}..={hi}: {re}");
            }
            assert!(!re.is_match(&format!("0{lo}")), "a leading zero");
        }
        // the port pattern of core's PortMapping takes exactly what its parser takes
        let port = serde_json::to_value(<micro_os_core::PortMapping as utoipa::PartialSchema>::schema()).unwrap();
        let port = regex::Regex::new(port["pattern"].as_str().unwrap()).unwrap();
        for n in (0..70_000u32).filter(|n| *n < 100 || n % 89 == 0 || n.abs_diff(65535) < 3) {
            for m in [format!("{n}:80"), format!("80:{n}/udp"), format!("{n}:{n}/tcp")] {
                assert_eq!(port.is_match(&m), m.parse::<micro_os_core::PortMapping>().is_ok(), "{m}");
            }
        }
        let set = regex::Regex::new(&tx_assignment()).unwrap();
        for ok in
            ["batch_size=1", "batch_size=65536", "priority_levels=16", "anomaly_threshold=0.85", "anomaly_threshold=.5"]
        {
            assert!(set.is_match(ok), "{ok}");
        }
        for bad in [
            "batch_size=0",
            "batch_size=65537",
            "priority_levels=1",
            "anomaly_threshold=1",
            "anomaly_threshold=0.0",
            "x=1",
            "",
        ] {
            assert!(!set.is_match(bad), "{bad}");
        }
    }
}
