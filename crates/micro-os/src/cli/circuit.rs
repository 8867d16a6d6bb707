//! `micro-os circuit …`: circuits of VMs and their replicated key-value state.

use std::io::IsTerminal;
use std::time::Duration;

use micro_os_api::types::{CircuitCreate, MemberRequest, StateWrite};
use micro_os_core::circuit::{
    validate_key, CircuitType, CircuitView, ReadResult, WriteOutcome, WriteResult, MAX_VALUE,
};

use super::args::{CircuitCmd, CircuitRef, Format, StateCmd};
use super::client::{exit, query, seg, CliError, CliResult, Client};
use super::output::{print, table};

/// Longest value a `state list` table shows before cutting it.
const LIST_VALUE: usize = 60;

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One line of a value for a table: escaped newlines, cut to `max` characters.
fn cut(value: &str, max: usize) -> String {
    let one_line = value.replace('\n', "\\n");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::usage(e.to_string())
}

fn path(c: &CircuitRef) -> String {
    format!("/circuits/{}", seg(c.key()))
}

fn key_path(c: &CircuitRef, key: &str) -> CliResult<String> {
    validate_key(key).map_err(bad)?;
    Ok(format!("{}/state/{}", path(c), seg(key)))
}

/// The header (leader, term, commit, applied, health and why) and one row per member.
fn view_table(v: &CircuitView) -> String {
    let leader = match (&v.leader, v.leader_node) {
        (Some(vm), Some(n)) => format!("{vm} (node {n})"),
        (Some(vm), None) => vm.clone(),
        (None, _) => "none".into(),
    };
    let mut out = format!(
        "circuit  {} (id {}, {})\nleader   {leader}\nterm     {}\ncommit   {}\napplied  {}\nhealth   {}\n",
        v.name, v.id, v.kind, v.term, v.committed, v.applied, v.health
    );
    for p in &v.problems {
        out.push_str(&format!("problem  {p}\n"));
    }
    out.push('\n');
    out.push_str(&table(
        &["VM", "HOST", "NODE", "ROLE", "STATE", "MATCHED", "LAG", "APPLIED", "HEALTH"],
        v.members
            .iter()
            .map(|m| {
                vec![
                    m.vm.clone(),
                    // a peer id's first 16 characters: enough for `--host`
                    m.host.as_deref().map_or_else(|| "here".to_string(), |h| h.get(..16).unwrap_or(h).to_string()),
                    m.node_id.to_string(),
                    format!("{:?}", m.role).to_lowercase(),
                    m.state.clone(),
                    dash(m.matched),
                    dash(m.lag),
                    dash(m.applied),
                    m.health.clone(),
                ]
            })
            .collect(),
    ));
    for m in v.members.iter().filter(|m| m.error.is_some()) {
        out.push_str(&format!("\n{}: {}", m.vm, m.error.as_deref().unwrap_or_default()));
    }
    out
}

fn list_table(vs: &[CircuitView]) -> String {
    table(
        &["NAME", "ID", "TYPE", "MEMBERS", "LEADER", "TERM", "COMMIT", "HEALTH"],
        vs.iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    short_id(&v.id).to_string(),
                    v.kind.to_string(),
                    v.members.len().to_string(),
                    dash(v.leader.as_deref()),
                    v.term.to_string(),
                    v.committed.to_string(),
                    v.health.clone(),
                ]
            })
            .collect(),
    )
}

/// `circuit monitor` off a terminal: one line per refresh.
fn monitor_line(v: &CircuitView, now: &str) -> String {
    let lags: Vec<String> = v
        .members
        .iter()
        .map(|m| match (m.lag, m.state.as_str()) {
            (Some(l), _) => format!("{}={l}", m.vm),
            (None, "unreachable") => format!("{}=unreachable", m.vm),
            (None, _) => format!("{}=-", m.vm),
        })
        .collect();
    format!(
        "{now} {} leader {} term {} commit {} applied {} lag {} health {}",
        v.name,
        dash(v.leader.as_deref()),
        v.term,
        v.committed,
        v.applied,
        lags.join(","),
        v.health
    )
}

/// Rows of keys; in a list (`full` false) values are cut and checksums shortened.
fn entries_table(r: &ReadResult, full: bool) -> String {
    table(
        &["KEY", "VALUE", "VERSION", "CHECKSUM"],
        r.entries
            .iter()
            .map(|e| {
                let (value, sum) = if full {
                    (e.value.clone(), e.checksum.clone())
                } else {
                    (cut(&e.value, LIST_VALUE), short_id(&e.checksum).to_string())
                };
                vec![e.key.clone(), value, e.version.to_string(), sum]
            })
            .collect(),
    )
}

fn written_line(key: &str, w: &WriteResult) -> String {
    match &w.outcome {
        WriteOutcome::Stored { version, checksum } => format!("{key} version {version} checksum {checksum}"),
        WriteOutcome::Deleted { version } => format!("{key} deleted (was at version {version})"),
        // the API answers these with 409 and 404; shown all the same should one arrive
        WriteOutcome::Conflict { current } => format!("{key} is at version {current}: not written"),
        WriteOutcome::NotFound => format!("{key} not found"),
    }
}

fn create_request(name: String, nodes: Vec<String>, kind: Option<String>) -> CliResult<CircuitCreate> {
    if let Some(k) = &kind {
        CircuitType::parse(k).map_err(bad)?;
    }
    if nodes.iter().any(|n| n.trim().is_empty()) {
        return Err(CliError::usage(format!(
            "--nodes {:?} has an empty VM name (give names separated by commas: vm1,vm2,vm3)",
            nodes.join(",")
        )));
    }
    Ok(CircuitCreate { name, nodes: nodes.into_iter().map(|n| n.trim().to_string()).collect(), kind })
}

fn interval(s: f64) -> CliResult<Duration> {
    if s.is_finite() && s >= 0.1 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(CliError::usage(format!("interval {s} is not a number of seconds of 0.1 or more")))
    }
}

fn get(client: &Client, c: &CircuitRef) -> CliResult<CircuitView> {
    client.call("GET", &path(c), None::<&()>)
}

/// Prints a changed circuit: what happened, then the view (or only the view as JSON/YAML).
fn changed(format: Format, what: String, v: &CircuitView) -> CliResult<()> {
    print(format, v, |v| format!("{what}\n\n{}", view_table(v)))
}

fn monitor(client: &Client, c: &CircuitRef, every: Duration) -> CliResult<i32> {
    // a wrong name fails at once; later failures are shown and retried
    let first = get(client, c)?;
    let now = || chrono::Local::now().format("%F %T").to_string();
    if std::io::stdout().is_terminal() {
        let mut last = Some(first);
        return super::monitor::live_view(every, || {
            let v = last.take().map(Ok).unwrap_or_else(|| get(client, c));
            let head =
                format!("micro-os circuit {}  {}  every {:.1}s  (q quits)\n\n", c.key(), now(), every.as_secs_f64());
            Ok(match v {
                Ok(v) => head + &view_table(&v),
                Err(e) => head + &format!("refresh failed (retrying): {}", e.message),
            })
        });
    }
    println!("{}", monitor_line(&first, &now()));
    loop {
        std::thread::sleep(every);
        match get(client, c) {
            Ok(v) => println!("{}", monitor_line(&v, &now())),
            Err(e) => eprintln!("{} {}: {}", now(), c.key(), e.message),
        }
    }
}

fn state(client: &Client, cmd: StateCmd) -> CliResult<i32> {
    match cmd {
        StateCmd::Set { circuit, key, value, expected_version, via, format } => {
            let path = key_path(&circuit, &key)?;
            if value.len() > MAX_VALUE {
                return Err(CliError::usage(format!(
                    "value of key {key:?} is {} bytes, more than the limit of {MAX_VALUE} bytes",
                    value.len()
                )));
            }
            let body = StateWrite { value, expected_version };
            let w: WriteResult = client.call("PUT", &format!("{path}{}", query(&[("via", via)])), Some(&body))?;
            print(format, &w, |w| written_line(&key, w))?;
        }
        StateCmd::Get { circuit, key, stale, via, format } => {
            let path = key_path(&circuit, &key)?;
            let q = query(&[("stale", stale.then(|| "true".into())), ("via", via)]);
            let r: ReadResult = client.call("GET", &format!("{path}{q}"), None::<&()>)?;
            if r.entries.is_empty() {
                return Err(CliError::new(
                    exit::NOT_FOUND,
                    format!("key {key:?} not found in circuit {:?}", circuit.key()),
                ));
            }
            print(format, &r, |r| entries_table(r, true))?;
        }
        StateCmd::Rm { circuit, key, via } => {
            let path = key_path(&circuit, &key)?;
            let w: WriteResult = client.call("DELETE", &format!("{path}{}", query(&[("via", via)])), None::<&()>)?;
            println!("{}", written_line(&key, &w));
        }
        StateCmd::List { circuit, stale, via, format } => {
            let q = query(&[("stale", stale.then(|| "true".into())), ("via", via)]);
            let r: ReadResult = client.call("GET", &format!("{}/state{q}", path(&circuit)), None::<&()>)?;
            print(format, &r, |r| entries_table(r, false))?;
        }
    }
    Ok(0)
}

pub fn run(client: &Client, cmd: CircuitCmd) -> CliResult<i32> {
    match cmd {
        CircuitCmd::Create { name, nodes, kind, format } => {
            let req = create_request(name, nodes, kind)?;
            let v: CircuitView = client.call("POST", "/circuits", Some(&req))?;
            print(format, &v, view_table)?;
        }
        CircuitCmd::View { pick, format } => {
            if pick.all {
                let vs: Vec<CircuitView> = client.call("GET", "/circuits", None::<&()>)?;
                print(format, &vs, |v| list_table(v))?;
            } else {
                let c = CircuitRef { name: pick.name, id: pick.id };
                print(format, &get(client, &c)?, view_table)?;
            }
        }
        CircuitCmd::List { format } => {
            let vs: Vec<CircuitView> = client.call("GET", "/circuits", None::<&()>)?;
            print(format, &vs, |v| list_table(v))?;
        }
        CircuitCmd::Monitor { circuit, interval: s } => return monitor(client, &circuit, interval(s)?),
        CircuitCmd::AddNode { circuit, node, format } => {
            let body = MemberRequest { vm: node.clone() };
            let v: CircuitView = client.call("POST", &format!("{}/members", path(&circuit)), Some(&body))?;
            changed(format, format!("{node} joined {}", v.name), &v)?;
        }
        CircuitCmd::RemoveNode { circuit, node, format } => {
            let p = format!("{}/members/{}", path(&circuit), seg(&node));
            let v: CircuitView = client.call("DELETE", &p, None::<&()>)?;
            changed(format, format!("{node} left {}", v.name), &v)?;
        }
        CircuitCmd::TransferLeader { circuit, to, format } => {
            let body = MemberRequest { vm: to.clone() };
            let v: CircuitView = client.call("POST", &format!("{}/leader", path(&circuit)), Some(&body))?;
            // --to may be an id: compare the member's name
            let target = v.members.iter().find(|m| m.vm == to || m.vm_id == to).map_or(to.as_str(), |m| &m.vm);
            let what = match &v.leader {
                Some(l) if l == target => format!("{l} leads {} (term {})", v.name, v.term),
                Some(l) => format!("{l} leads {} (term {}), not {target} yet", v.name, v.term),
                None => format!("{} has no leader yet (term {})", v.name, v.term),
            };
            changed(format, what, &v)?;
        }
        CircuitCmd::Rm { circuit } => {
            client.call_empty("DELETE", &path(&circuit))?;
            println!("{} removed", circuit.key());
        }
        CircuitCmd::State(cmd) => return state(client, cmd),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use clap::Parser;
    use micro_os_core::circuit::{MemberView, Role, StateEntry};

    use super::*;
    use crate::cli::args::Command;
    use crate::cli::Cli;

    fn parse(line: &str) -> Result<CircuitCmd, clap::error::ErrorKind> {
        let argv = std::iter::once("micro-os").chain(line.split_whitespace());
        match Cli::try_parse_from(argv).map_err(|e| e.kind())?.command {
            Command::Circuit(c) => Ok(c),
            other => panic!("{line}: parsed as {other:?}"),
        }
    }

    fn member(vm: &str, node: u64, state: &str, lag: Option<u64>) -> MemberView {
        MemberView {
            vm: vm.into(),
            vm_id: format!("{vm}-id"),
            node_id: node,
            peer_id: "12D3KooW".into(),
            host: None,
            role: Role::Voter,
            state: state.into(),
            matched: lag.map(|l| 42 - l),
            lag,
            applied: lag.map(|l| 42 - l),
            snapshot: Some(0),
            term: Some(3),
            health: if state == "unreachable" { "unreachable".into() } else { "ok".into() },
            error: (state == "unreachable").then(|| "agent did not answer in 2s".into()),
        }
    }

    fn sample() -> CircuitView {
        CircuitView {
            id: "3f2a9c1b0d4e5f60718293a4b5c6d7e8".into(),
            name: "validation-cluster".into(),
            kind: CircuitType::Consensus,
            leader: Some("blockchain-node-1".into()),
            leader_node: Some(1),
            term: 3,
            committed: 42,
            applied: 41,
            last_log: 42,
            health: "degraded".into(),
            problems: vec!["blockchain-node-3 is unreachable".into()],
            members: vec![
                member("blockchain-node-1", 1, "leader", Some(0)),
                member("blockchain-node-2", 2, "follower", Some(5)),
                MemberView {
                    host: Some("12D3KooWabcdefghijklmnop".into()),
                    ..member("blockchain-node-3", 3, "unreachable", None)
                },
            ],
            created_at: Utc::now(),
        }
    }

    /// The words of the table line that starts with `first`.
    fn row(out: &str, first: &str) -> Vec<String> {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(first));
        line.unwrap_or_else(|| panic!("no {first} line in:\n{out}")).split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_spec_example_parses() {
        let line = "circuit create --name validation-cluster --nodes blockchain-node-1,blockchain-node-2,blockchain-node-3 --type consensus";
        let CircuitCmd::Create { name, nodes, kind, format } = parse(line).unwrap() else { panic!("not create") };
        assert_eq!(name, "validation-cluster");
        assert_eq!(nodes, ["blockchain-node-1", "blockchain-node-2", "blockchain-node-3"]);
        assert_eq!((kind.as_deref(), format), (Some("consensus"), Format::Table));
        // what `micro-os help circuit create` prints
        let help = Cli::try_parse_from(["micro-os", "circuit", "create", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        // written across lines as the spec does: clap would wrap it at 100 columns anyway
        let joined = help.render().to_string().replace("\\\n", " ").split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(joined.contains(&format!("micro-os {line}")), "{help}");
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        use clap::error::ErrorKind::*;
        for (line, kind) in [
            ("circuit view", MissingRequiredArgument),
            ("circuit view --name a --all", ArgumentConflict),
            ("circuit view --name a --id b", ArgumentConflict),
            ("circuit create --name a", MissingRequiredArgument),
            ("circuit add-node --name a", MissingRequiredArgument),
            ("circuit transfer-leader --to b", MissingRequiredArgument),
            ("circuit monitor --interval 2", MissingRequiredArgument),
            ("circuit state set --name a k", MissingRequiredArgument),
            ("circuit state get --name a k --format xml", InvalidValue),
            ("circuit state set --name a k v --expected-version -1", UnknownArgument),
        ] {
            assert_eq!(parse(line).err(), Some(kind), "{line}");
        }
    }

    #[test]
    fn arguments_reach_their_fields() {
        let CircuitCmd::Monitor { circuit, interval } = parse("circuit monitor --id abc").unwrap() else { panic!() };
        assert_eq!((circuit.key(), interval), ("abc", 2.0));
        let cmd = parse("circuit state set --name vc config/batch_size -5 --expected-version 0 --via n2").unwrap();
        let CircuitCmd::State(StateCmd::Set { circuit, key, value, expected_version, via, .. }) = cmd else { panic!() };
        assert_eq!(
            (circuit.key(), key.as_str(), value.as_str(), expected_version, via.as_deref()),
            ("vc", "config/batch_size", "-5", Some(0), Some("n2"))
        );
        let cmd = parse("circuit view --all --format yaml").unwrap();
        let CircuitCmd::View { pick, format } = cmd else { panic!() };
        assert!(pick.all && pick.name.is_none() && format == Format::Yaml);
        assert!(matches!(parse("circuit ls").unwrap(), CircuitCmd::List { .. }));
        assert!(matches!(
            parse("circuit state ls --name a --stale").unwrap(),
            CircuitCmd::State(StateCmd::List { stale: true, .. })
        ));
    }

    #[test]
    fn bad_input_is_refused_before_the_daemon() {
        let e = create_request("a".into(), vec!["x".into()], Some("paxos".into())).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (exit::USAGE, "circuit type \"paxos\" is unknown (the types are: consensus)")
        );
        let e = create_request("a".into(), vec!["x".into(), "".into()], None).unwrap_err();
        assert!(e.message.contains("has an empty VM name"), "{}", e.message);
        let ok = create_request("a".into(), vec![" x".into(), "y".into()], Some("consensus".into())).unwrap();
        assert_eq!(ok.nodes, ["x", "y"]);
        assert!(interval(0.0).is_err() && interval(f64::NAN).is_err() && interval(0.5).is_ok());
        let c = CircuitRef { name: Some("vc".into()), id: None };
        assert_eq!(key_path(&c, "config/batch_size").unwrap(), "/circuits/vc/state/config%2Fbatch_size");
        assert!(key_path(&c, "a b").unwrap_err().message.contains("is not a state key"));
        assert_eq!(query(&[("stale", None), ("via", Some("node 2".into()))]), "?via=node%202");
        assert_eq!(query(&[("stale", None)]), "");
    }

    #[test]
    fn the_view_shows_the_leader_problems_and_each_member() {
        let out = view_table(&sample());
        assert_eq!(row(&out, "leader"), ["leader", "blockchain-node-1", "(node", "1)"]);
        assert_eq!(row(&out, "term"), ["term", "3"]);
        assert_eq!(row(&out, "commit"), ["commit", "42"]);
        assert_eq!(row(&out, "applied"), ["applied", "41"]);
        assert_eq!(row(&out, "health"), ["health", "degraded"]);
        assert!(out.contains("problem  blockchain-node-3 is unreachable"), "{out}");
        assert_eq!(row(&out, "VM"), ["VM", "HOST", "NODE", "ROLE", "STATE", "MATCHED", "LAG", "APPLIED", "HEALTH"]);
        assert_eq!(
            row(&out, "blockchain-node-2"),
            ["blockchain-node-2", "here", "2", "voter", "follower", "37", "5", "37", "ok"]
        );
        assert_eq!(
            row(&out, "blockchain-node-3"),
            ["blockchain-node-3", "12D3KooWabcdefgh", "3", "voter", "unreachable", "-", "-", "-", "unreachable"]
        );
        assert!(out.ends_with("blockchain-node-3: agent did not answer in 2s"), "{out}");
        let mut leaderless = sample();
        leaderless.leader = None;
        assert_eq!(row(&view_table(&leaderless), "leader"), ["leader", "none"]);
    }

    #[test]
    fn the_list_has_one_row_per_circuit() {
        let out = list_table(&[sample()]);
        assert_eq!(row(&out, "NAME"), ["NAME", "ID", "TYPE", "MEMBERS", "LEADER", "TERM", "COMMIT", "HEALTH"]);
        assert_eq!(
            row(&out, "validation-cluster"),
            ["validation-cluster", "3f2a9c1b0d4e", "consensus", "3", "blockchain-node-1", "3", "42", "degraded"]
        );
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    #[test]
    fn a_monitor_line_has_each_members_lag() {
        assert_eq!(
            monitor_line(&sample(), "2025-01-01 12:00:00"),
            "2025-01-01 12:00:00 validation-cluster leader blockchain-node-1 term 3 commit 42 applied 41 \
             lag blockchain-node-1=0,blockchain-node-2=5,blockchain-node-3=unreachable health degraded"
        );
    }

    #[test]
    fn state_tables_and_lines() {
        let long = "x".repeat(100);
        let r = ReadResult {
            entries: vec![
                StateEntry {
                    key: "config/batch_size".into(),
                    value: "64".into(),
                    version: 2,
                    checksum: "a".repeat(64),
                },
                StateEntry { key: "blob".into(), value: long.clone(), version: 1, checksum: "b".repeat(64) },
            ],
            node: 1,
            applied: 9,
            stale: false,
        };
        let list = entries_table(&r, false);
        assert_eq!(row(&list, "config/batch_size"), ["config/batch_size", "64", "2", &"a".repeat(12)]);
        assert_eq!(row(&list, "blob")[1], format!("{}…", "x".repeat(LIST_VALUE)));
        let full = entries_table(&r, true);
        assert_eq!(row(&full, "blob"), ["blob", &long, "1", &"b".repeat(64)]);
        assert_eq!(cut("a\nb", 60), "a\\nb");
        assert_eq!(cut("ééé", 2), "éé…");
        let w = |outcome| WriteResult { outcome, index: 7, leader: 1 };
        let stored = w(WriteOutcome::Stored { version: 3, checksum: "c0".into() });
        assert_eq!(written_line("config/batch_size", &stored), "config/batch_size version 3 checksum c0");
        assert_eq!(written_line("k", &w(WriteOutcome::Deleted { version: 3 })), "k deleted (was at version 3)");
    }
}
