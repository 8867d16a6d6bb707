//! `micro-os host …`: the hosts of a fabric.

use micro_os_api::types::{HostInfo, HostJoin, HostToken};

use super::args::HostCmd;
use super::client::{CliResult, Client};
use super::output::{print, table};

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{}M", b >> 20),
        b => format!("{}K", b >> 10),
    }
}

fn hosts_table(hosts: &[HostInfo]) -> String {
    let rows = hosts
        .iter()
        .map(|h| {
            let s = h.status.clone().unwrap_or_default();
            let known = h.status.is_some();
            let or_dash = |v: String| if known { v } else { "-".into() };
            vec![
                h.peer_id.clone(),
                h.state.clone(),
                or_dash(s.addrs.first().cloned().unwrap_or_default()),
                or_dash(format!(
                    "{} cpu, {} mem, {} disk free",
                    s.cpus,
                    bytes(s.memory_bytes),
                    bytes(s.disk_free_bytes)
                )),
                or_dash(format!("{}/{}", s.vms_running, s.vms)),
                or_dash(format!("{:.2}", s.load)),
                or_dash(s.health.clone()),
                match &h.overlay {
                    Some(l) => match l.handshake_s_ago {
                        Some(ago) => format!("handshake {ago}s ago, rx {} tx {}", bytes(l.rx_bytes), bytes(l.tx_bytes)),
                        None => "no handshake yet".into(),
                    },
                    None => "-".into(),
                },
            ]
        })
        .collect();
    table(&["PEER ID", "STATE", "ADDRESS", "CAPACITY", "VMS (RUNNING/ALL)", "LOAD", "HEALTH", "OVERLAY"], rows)
}

pub fn run(client: &Client, cmd: HostCmd) -> CliResult<i32> {
    match cmd {
        HostCmd::List { format } => {
            let hosts: Vec<HostInfo> = client.call("GET", "/hosts", None::<&()>)?;
            print(format, &hosts, |h| hosts_table(h))?;
        }
        HostCmd::Token { format } => {
            let t: HostToken = client.call("GET", "/hosts/token", None::<&()>)?;
            print(format, &t, |t| {
                let at = t.join.first().cloned().unwrap_or_else(|| format!("<address>/p2p/{}", t.peer_id));
                format!(
                    "token {}\non another host, to join this one:\n  micro-os host join {at} --token {}\n",
                    t.token, t.token
                )
            })?;
        }
        HostCmd::Join { addr, token } => {
            let hosts: Vec<HostInfo> = client.call("POST", "/hosts/join", Some(&HostJoin { addr, token }))?;
            println!("joined a fabric of {} hosts", hosts.len());
            print!("{}", hosts_table(&hosts));
        }
        HostCmd::Leave => {
            client.call_empty("POST", "/hosts/leave")?;
            println!("left the fabric: this host stands alone");
        }
    }
    Ok(0)
}
