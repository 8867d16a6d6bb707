use micro_os_api::types::{Ack, NetSend, NetStatus};

use super::args::{Format, MonitorCmd, NetCmd};
use super::client::{exit, CliError, CliResult, Client};
use super::output::{print, table};

fn peers_table(st: &NetStatus) -> String {
    table(
        &["PEER", "CONNECTED", "RTT", "IN", "OUT", "BYTES IN", "BYTES OUT", "SCORE", "AGENT", "ADDRESSES"],
        st.peers
            .iter()
            .map(|p| {
                vec![
                    p.peer_id.clone(),
                    p.connected.to_string(),
                    p.rtt_ms.map(|r| format!("{r:.2} ms")).unwrap_or_else(|| "-".into()),
                    p.messages_in.to_string(),
                    p.messages_out.to_string(),
                    micro_os_core::Size(p.bytes_in).to_string(),
                    micro_os_core::Size(p.bytes_out).to_string(),
                    p.score.to_string(),
                    p.agent.clone().unwrap_or_else(|| "-".into()),
                    p.addresses.join(" "),
                ]
            })
            .collect(),
    )
}

fn detailed(st: &NetStatus) -> String {
    let mut out = format!("peer id  {}\nlisten   {}\n\n{}", st.peer_id, st.listen.join(" "), peers_table(st));
    out.push_str("\n\n");
    out.push_str(&table(
        &["MESSAGES", "ACCEPTED"],
        st.messages.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect(),
    ));
    out.push_str("\n\n");
    out.push_str(&table(
        &["REJECTED", "COUNT"],
        st.rejections.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect(),
    ));
    out
}

pub fn run(client: &Client, cmd: NetCmd) -> CliResult<i32> {
    match cmd {
        NetCmd::Peers { format } => {
            let st: NetStatus = client.call("GET", "/monitor/network", None::<&()>)?;
            print(format, &st, peers_table)?;
        }
        NetCmd::Send { from, to, kind, state, file, count, size } => {
            let state = match (state, file) {
                (Some(s), _) => s,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| CliError::usage(format!("file {} cannot be read: {e}", f.display())))?,
                (None, None) => String::new(),
            };
            let ack: Ack =
                client.call("POST", "/net/send", Some(&NetSend { from, to: to.clone(), kind, state, count, size }))?;
            if !ack.accepted {
                return Err(CliError::new(
                    exit::FAILURE,
                    format!("{to} refused the message: {}", ack.reason.unwrap_or_default()),
                ));
            }
            println!("delivered to {to}");
        }
    }
    Ok(0)
}

pub fn monitor(client: &Client, cmd: MonitorCmd) -> CliResult<i32> {
    match cmd {
        MonitorCmd::Network { protocol, interval, detailed: more, format } => {
            if protocol != "p2p" {
                return Err(CliError::usage(format!("protocol {protocol:?} is unknown (use p2p)")));
            }
            if let Some(i) = interval {
                if !(i.is_finite() && i > 0.0) {
                    return Err(CliError::usage(format!("interval {i} is not a number of seconds above 0")));
                }
            }
            loop {
                let st: NetStatus = client.call("GET", "/monitor/network", None::<&()>)?;
                match (format, more) {
                    (Format::Table, true) => println!("{}", detailed(&st)),
                    _ => print(format, &st, peers_table)?,
                }
                match interval {
                    Some(i) => std::thread::sleep(std::time::Duration::from_secs_f64(i)),
                    None => return Ok(0),
                }
            }
        }
    }
}
