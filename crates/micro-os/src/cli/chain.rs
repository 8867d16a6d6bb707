//! `micro-os chain …`: reference-chain nodes for people (the node itself answers
//! Bitcoin Core's JSON-RPC for tools).

use micro_os_api::types::{ChainSend, ChainSent, ChainStatus, ChainWallet};

use super::args::ChainCmd;
use super::client::{seg, CliResult, Client};
use super::output::{print, table};

fn status_table(s: &ChainStatus) -> String {
    let sync = if s.syncing {
        format!("syncing: {} of {} ({:.1}%)", s.height, s.headers, s.sync_progress * 100.0)
    } else {
        "in sync".into()
    };
    let rows = vec![
        vec!["container".into(), s.container.clone()],
        vec!["network".into(), s.network.clone()],
        vec!["height".into(), s.height.to_string()],
        vec!["tip".into(), s.tip.clone()],
        vec!["sync".into(), sync],
        vec!["peers".into(), s.peers.to_string()],
        vec!["mempool".into(), format!("{} txs, {} vB", s.mempool_txs, s.mempool_bytes)],
        vec!["hash rate".into(), hashrate(s.hashrate)],
        vec!["difficulty".into(), format!("{}", s.difficulty)],
    ];
    let mut rows = rows;
    if s.light {
        rows.insert(2, vec!["kind".into(), "light (headers only)".into()]);
    }
    if s.consensus == "circuit" {
        rows.retain(|r| r[0] != "hash rate" && r[0] != "difficulty");
        rows.push(vec!["consensus".into(), "sealed by validators on a circuit".into()]);
        rows.push(vec!["validators".into(), s.validators.len().to_string()]);
        let finalized = s.finalized.map_or("-".into(), |f| format!("{f} (attested by a majority)"));
        rows.push(vec!["finalized".into(), finalized]);
    }
    table(&["FIELD", "VALUE"], rows)
}

fn hashrate(h: f64) -> String {
    match h {
        h if h >= 1e9 => format!("{:.2} GH/s", h / 1e9),
        h if h >= 1e6 => format!("{:.2} MH/s", h / 1e6),
        h if h >= 1e3 => format!("{:.2} kH/s", h / 1e3),
        h if h > 0.0 => format!("{h:.0} H/s"),
        _ => "not mining".into(),
    }
}

pub fn run(client: &Client, cmd: ChainCmd) -> CliResult<i32> {
    match cmd {
        ChainCmd::Status { container, format } => {
            let s: ChainStatus = client.call("GET", &format!("/chain/{}", seg(&container)), None::<&()>)?;
            print(format, &s, status_table)?;
        }
        ChainCmd::Send { container, to, amount, fee_rate } => {
            let sent: ChainSent = client.call(
                "POST",
                &format!("/chain/{}/send", seg(&container)),
                Some(&ChainSend { to, amount, fee_rate }),
            )?;
            println!("{}", sent.txid);
        }
        ChainCmd::Wallet { container, format } => {
            let w: ChainWallet = client.call("GET", &format!("/chain/{}/wallet", seg(&container)), None::<&()>)?;
            print(format, &w, |w| {
                table(
                    &["FIELD", "VALUE"],
                    vec![
                        vec!["container".into(), w.container.clone()],
                        vec!["balance".into(), format!("{:.8}", w.balance)],
                        vec!["receive at".into(), w.address.clone()],
                    ],
                )
            })?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_rates_read_well() {
        assert_eq!(hashrate(0.0), "not mining");
        assert_eq!(hashrate(23_100_000.0), "23.10 MH/s");
        assert_eq!(hashrate(1500.0), "1.50 kH/s");
    }
}
