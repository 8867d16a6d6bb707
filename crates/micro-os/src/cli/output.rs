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

/// A number of cores for a table: at most two decimals (`1`, `0.5`, `0.33`); a limit
/// stored before the 0.01 minimum shows as `<0.01` rather than as its digits.
pub fn cores(cpu: f64) -> String {
    if cpu > 0.0 && cpu < 0.005 {
        return "<0.01".into();
    }
    let s = format!("{cpu:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_show_at_most_two_decimals() {
        for (cpu, shown) in [
            (1.0, "1"),
            (2.0, "2"),
            (0.5, "0.5"),
            (0.25, "0.25"),
            (1.0 / 3.0, "0.33"),
            (0.01, "0.01"),
            (0.0000001, "<0.01"),
            (1e-250, "<0.01"),
            (10.0, "10"),
        ] {
            assert_eq!(cores(cpu), shown, "{cpu}");
        }
    }
}
