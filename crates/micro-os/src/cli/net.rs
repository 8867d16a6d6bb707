use micro_os_api::types::{NetSend, NetStatus, Provider, SendReport};

use super::args::{Format, NetCmd};
use super::client::{exit, query, CliError, CliResult, Client};
use super::output::{print, table};

fn peers_table(st: &NetStatus) -> String {
    table(
        &["PEER", "CONNECTED", "RTT", "IN", "OUT", "BYTES IN", "BYTES OUT", "SCORE", "AGENT", "FOUND BY", "ADDRESSES"],
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
                    if p.discovered.is_empty() { "-".into() } else { p.discovered.join(",") },
                    p.addresses.join(" "),
                ]
            })
            .collect(),
    )
}

fn detailed(st: &NetStatus) -> String {
    let mut out = format!("peer id  {}\nlisten   {}\n", st.peer_id, st.listen.join(" "));
    if let Some(nat) = &st.nat {
        out.push_str(&format!("nat      {nat}\n"));
    }
    if !st.provides.is_empty() {
        out.push_str(&format!("provides {}\n", st.provides.join(" ")));
    }
    out.push_str(&format!(
        "streams  {} in, {}\n\n{}",
        st.streams_in,
        micro_os_core::Size(st.stream_bytes_in),
        peers_table(st)
    ));
    out.push_str("\n\n");
    // received (accepted) and sent, by type: one row per type seen either way
    let kinds: std::collections::BTreeSet<&String> = st.messages.keys().chain(st.messages_sent.keys()).collect();
    let count = |m: &std::collections::BTreeMap<String, u64>, k: &String| m.get(k).copied().unwrap_or(0).to_string();
    out.push_str(&table(
        &["MESSAGES", "ACCEPTED", "SENT"],
        kinds.into_iter().map(|k| vec![k.clone(), count(&st.messages, k), count(&st.messages_sent, k)]).collect(),
    ));
    out.push_str("\n\n");
    out.push_str(&table(
        &["REJECTED", "COUNT"],
        st.rejections.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect(),
    ));
    out
}

fn status_path(vm: Option<&str>) -> String {
    match vm {
        Some(vm) => format!("/monitor/network?vm={}", super::client::seg(vm)),
        None => "/monitor/network".into(),
    }
}

/// One line about a delivered send: a stream's size, hash and rate, or the messages'
/// rate and round trips.
fn summary(to: &str, r: &SendReport) -> String {
    let secs = r.elapsed_ms / 1000.0;
    match &r.checksum {
        Some(sum) => format!(
            "delivered a stream of {} to {to} in {secs:.3} s ({:.1} MiB/s), xxh3 {sum}",
            micro_os_core::Size(r.bytes),
            r.mib_per_second()
        ),
        None if r.sent > 1 => format!(
            "delivered {} messages to {to} in {secs:.3} s: {:.0} msg/s, round trip p50 {:.2} ms, p99 {:.2} ms",
            r.sent,
            r.per_second(),
            r.p50_ms.unwrap_or_default(),
            r.p99_ms.unwrap_or_default()
        ),
        None => format!("delivered to {to} ({:.2} ms)", r.p50_ms.unwrap_or(r.elapsed_ms)),
    }
}

pub fn run(client: &Client, cmd: NetCmd) -> CliResult<i32> {
    match cmd {
        NetCmd::Peers { vm, format } => {
            let st: NetStatus = client.call("GET", &status_path(vm.as_deref()), None::<&()>)?;
            print(format, &st, peers_table)?;
        }
        NetCmd::Find { key, vm, format } => {
            let mut path = format!("/net/providers?key={}", super::client::seg(&key));
            if let Some(vm) = &vm {
                path.push_str(&format!("&vm={}", super::client::seg(vm)));
            }
            let found: Vec<Provider> = client.call("GET", &path, None::<&()>)?;
            if found.is_empty() {
                return Err(CliError::new(exit::NOT_FOUND, format!("no peer offers {key:?}")));
            }
            print(format, &found, |list| {
                table(
                    &["PEER", "VM", "CONNECTED", "ADDRESSES"],
                    list.iter()
                        .map(|p| {
                            vec![
                                p.peer_id.clone(),
                                p.vm.clone().unwrap_or_else(|| "-".into()),
                                p.connected.to_string(),
                                p.addresses.join(" "),
                            ]
                        })
                        .collect(),
                )
            })?;
        }
        NetCmd::Send { from, to, kind, state, file, count, size, stream } => {
            let data = kind.eq_ignore_ascii_case("data");
            let r: SendReport = match (state, file) {
                // DATA from a file travels as a stream: this client uploads the file's bytes
                (None, Some(f)) if data => {
                    let body = super::upload::file(&f).map_err(|e| CliError::usage(e.message))?;
                    let q = query(&[("from", from), ("to", Some(to.clone())), ("name", Some(body.name.clone()))]);
                    let resp = client.upload("POST", &format!("/net/send/stream{q}"), body)?;
                    resp.into_json()
                        .map_err(|e| CliError::new(exit::FAILURE, format!("the daemon's reply is not valid: {e}")))?
                }
                (state, file) => {
                    let state = match (state, file) {
                        (Some(s), _) => s,
                        (None, Some(f)) => std::fs::read_to_string(&f)
                            .map_err(|e| CliError::usage(format!("file {} cannot be read: {e}", f.display())))?,
                        (None, None) => String::new(),
                    };
                    let req = NetSend { from, to: to.clone(), kind, state, count, size: size.map(|s| s.0), stream };
                    client.call("POST", "/net/send", Some(&req))?
                }
            };
            if !r.accepted {
                let why = r.reason.unwrap_or_default();
                let msg = if r.sent > 1 {
                    format!("{to} refused {} of {} messages: {why}", r.refused, r.sent)
                } else {
                    format!("{to} refused the message: {why}")
                };
                return Err(CliError::new(exit::FAILURE, msg));
            }
            println!("{}", summary(&to, &r));
        }
    }
    Ok(0)
}

/// `monitor network`: the host's peer (or a VM's), once or every `interval` seconds.
pub fn monitor(
    client: &Client,
    protocol: &str,
    interval: Option<f64>,
    more: bool,
    vm: Option<&str>,
    format: Format,
) -> CliResult<i32> {
    if protocol != "p2p" {
        return Err(CliError::usage(format!("protocol {protocol:?} is unknown (use p2p)")));
    }
    if let Some(i) = interval {
        if !(i.is_finite() && i > 0.0) {
            return Err(CliError::usage(format!("interval {i} is not a number of seconds above 0")));
        }
    }
    loop {
        let st: NetStatus = client.call("GET", &status_path(vm), None::<&()>)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detailed_view_counts_messages_sent_by_type_too() {
        let st = NetStatus {
            messages: [("CTRL".to_string(), 2)].into(),
            messages_sent: [("CTRL".to_string(), 3), ("DATA".to_string(), 5)].into(),
            ..Default::default()
        };
        let out = detailed(&st);
        let row = |kind: &str| {
            out.lines().find(|l| l.split_whitespace().next() == Some(kind)).map(|l| l.split_whitespace().collect())
        };
        assert_eq!(row("MESSAGES"), Some(vec!["MESSAGES", "ACCEPTED", "SENT"]), "{out}");
        assert_eq!(row("CTRL"), Some(vec!["CTRL", "2", "3"]), "{out}");
        assert_eq!(row("DATA"), Some(vec!["DATA", "0", "5"]), "sent only: {out}");
    }
}
