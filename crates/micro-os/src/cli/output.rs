//! Rendering replies as tables, JSON or YAML.

use comfy_table::presets::NOTHING;
use comfy_table::Table;
use serde::Serialize;

use super::args::Format;
use super::client::{CliError, CliResult};

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string().lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

/// Prints `value` as JSON or YAML, or calls `as_table` for the table format.
pub fn print<T: Serialize>(format: Format, value: &T, as_table: impl FnOnce(&T) -> String) -> CliResult<()> {
    let text = match format {
        Format::Table => as_table(value),
        Format::Json => serde_json::to_string_pretty(value).map_err(|e| CliError::new(1, e.to_string()))?,
        Format::Yaml => {
            serde_yaml::to_string(value).map_err(|e| CliError::new(1, e.to_string()))?.trim_end().to_string()
        }
    };
    println!("{text}");
    Ok(())
}

pub fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - t).num_seconds().max(0) as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}
