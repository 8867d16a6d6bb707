//! Samples as CSV (a header, then one row per sample) or as JSON (an array).

use micro_os_core::metrics::Sample;

pub const CSV_HEADER: &str = "time,kind,id,name,cpu_percent,cpu_limit_percent,memory_bytes,memory_limit_bytes,\
oom_kills,io_read_bytes,io_write_bytes,pids,net_rx_bytes,net_tx_bytes,net_rx_packets,net_tx_packets,restarts,\
health_ms,health_error_rate,load1,disk_used_bytes,disk_total_bytes,chain_height,chain_peers,chain_mempool_txs,\
chain_mempool_bytes,chain_hashrate,chain_block_interval_s,chain_lag_blocks,chain_stall_intervals";

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv_row(s: &Sample) -> String {
    let time = chrono::DateTime::from_timestamp_millis(s.ts)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    [
        time,
        field(&s.kind),
        field(&s.id),
        field(&s.name),
        format!("{:.3}", s.cpu_percent),
        opt(s.cpu_limit_percent),
        s.memory_bytes.to_string(),
        opt(s.memory_limit_bytes),
        s.oom_kills.to_string(),
        s.io_read_bytes.to_string(),
        s.io_write_bytes.to_string(),
        s.pids.to_string(),
        s.net_rx_bytes.to_string(),
        s.net_tx_bytes.to_string(),
        s.net_rx_packets.to_string(),
        s.net_tx_packets.to_string(),
        s.restarts.to_string(),
        opt(s.health_ms),
        opt(s.health_error_rate),
        opt(s.load1),
        opt(s.disk_used_bytes),
        opt(s.disk_total_bytes),
        // a reference-chain node's columns, empty for everything else
        opt(s.chain.as_ref().map(|c| c.chain_height)),
        opt(s.chain.as_ref().map(|c| c.chain_peers)),
        opt(s.chain.as_ref().map(|c| c.chain_mempool_txs)),
        opt(s.chain.as_ref().map(|c| c.chain_mempool_bytes)),
        opt(s.chain.as_ref().map(|c| c.chain_hashrate)),
        opt(s.chain.as_ref().map(|c| c.chain_block_interval_s)),
        opt(s.chain.as_ref().map(|c| c.chain_lag_blocks)),
        opt(s.chain.as_ref().map(|c| c.chain_stall_intervals)),
    ]
    .join(",")
}

pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::with_capacity(64 + samples.len() * 160);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for s in samples {
        out.push_str(&csv_row(s));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_one_row_per_sample() {
        let s = Sample {
            ts: 1_700_000_000_123,
            kind: "container".into(),
            id: "abc".into(),
            name: "web,1".into(),
            cpu_percent: 12.5,
            memory_bytes: 4096,
            memory_limit_bytes: Some(8192),
            ..Default::default()
        };
        let text = csv(&[s.clone(), s]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(
            lines[1].starts_with("2023-11-14T22:13:20.123Z,container,abc,\"web,1\",12.500,,4096,8192,"),
            "{}",
            lines[1]
        );
        let columns = CSV_HEADER.split(',').count();
        assert_eq!(lines[1].replace("\"web,1\"", "x").split(',').count(), columns);
        assert!(lines[1].ends_with(",,,,,,,,"), "no chain columns for a plain container: {}", lines[1]);
        let node = Sample {
            chain: Some(micro_os_core::metrics::ChainSample {
                chain_height: 42,
                chain_peers: 3,
                chain_lag_blocks: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let row = csv_row(&node);
        assert_eq!(row.split(',').count(), columns);
        assert!(row.ends_with(",42,3,0,0,0,0,1,0"), "{row}");
    }
}
