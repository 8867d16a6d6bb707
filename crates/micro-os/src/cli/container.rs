use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};

use micro_os_api::types::{ContainerCreate, DeployRequest, EventInfo, WaitResponse};
use micro_os_core::{Container, HealthCheck, HealthProbe, PortMapping, Resources, RestartPolicy};

use super::args::{ContainerCmd, CreateArgs, NameArg};
use super::client::{exit, seg, CliError, CliResult, Client};
use super::output::{ago, cores, print, table};

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::usage(e.to_string())
}

pub fn name_of(n: &NameArg) -> CliResult<String> {
    super::pick_name(&n.positional, &n.name, "container")
}

fn request(a: &CreateArgs, default_name: Option<String>) -> CliResult<ContainerCreate> {
    let name = match (&a.positional, &a.name, default_name) {
        (None, None, Some(d)) => d,
        _ => super::pick_name(&a.positional, &a.name, "container")?,
    };
    let mut env = BTreeMap::new();
    for e in &a.env {
        let (k, v) = micro_os_core::container::parse_env(e).map_err(bad)?;
        env.insert(k, v);
    }
    let probe = if let Some(cmd) = &a.health_cmd {
        Some(HealthProbe::Command { command: vec!["sh".into(), "-c".into(), cmd.clone()] })
    } else if let Some(p) = a.health_tcp {
        Some(HealthProbe::Tcp { port: p })
    } else if let Some(h) = &a.health_http {
        Some(HealthCheck::parse_http(h).map_err(bad)?)
    } else {
        None
    };
    if probe.is_none() && (a.health_interval.is_some() || a.health_timeout.is_some() || a.health_retries.is_some()) {
        return Err(CliError::usage("--health-interval/--health-timeout/--health-retries need a probe (--health-cmd, --health-tcp or --health-http)"));
    }
    let health_check = probe.map(|p| {
        let mut h = HealthCheck::new(p);
        if let Some(v) = a.health_interval {
            h.interval_s = v;
        }
        if let Some(v) = a.health_timeout {
            h.timeout_s = v;
        }
        if let Some(v) = a.health_retries {
            h.retries = v;
        }
        h
    });
    if let Some(h) = &health_check {
        h.validate().map_err(bad)?;
    }
    Ok(ContainerCreate {
        name,
        image: a.image.clone(),
        template: a.template.clone(),
        command: (!a.command.is_empty()).then(|| a.command.clone()),
        env,
        resources: a.resources.as_deref().map(Resources::parse).transpose().map_err(bad)?,
        ports: if a.ports.is_empty() {
            None
        } else {
            Some(a.ports.iter().map(|p| PortMapping::parse(p)).collect::<Result<_, _>>().map_err(bad)?)
        },
        restart: a.restart.as_deref().map(RestartPolicy::parse).transpose().map_err(bad)?,
        health_check,
        config: BTreeMap::new(),
        vm: a.vm.clone(),
        network: None,
        circuit: a.circuit.clone(),
        replicate: a.replicate,
        depends_on: Vec::new(),
    })
}

fn summary_rows(cs: &[Container]) -> Vec<Vec<String>> {
    cs.iter()
        .map(|c| {
            let status = match (c.state, c.exit_code) {
                (micro_os_core::ContainerState::Exited, Some(code)) => {
                    format!("exited ({code}){}", if c.oom_killed { " oom" } else { "" })
                }
                (s, _) => s.to_string(),
            };
            let status = if c.is_replicated() {
                let up = c.replicas.iter().filter(|r| r.state == micro_os_core::ContainerState::Running).count();
                format!("{status} ({up}/{} replicas)", c.replicas.len())
            } else {
                status
            };
            let health =
                c.health.as_ref().map(|h| format!("{:?}", h.status).to_lowercase()).unwrap_or_else(|| "-".into());
            vec![
                c.id[..12].to_string(),
                c.spec.name.clone(),
                c.spec.image.clone(),
                status,
                health,
                c.spec.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
                ago(c.created_at),
            ]
        })
        .collect()
}

fn list_table(cs: &[Container]) -> String {
    table(&["ID", "NAME", "IMAGE", "STATE", "HEALTH", "PORTS", "CREATED"], summary_rows(cs))
}

fn inspect_table(c: &Container) -> String {
    let r = &c.spec.resources;
    let mut rows = vec![
        vec!["id".into(), c.id.clone()],
        vec!["name".into(), c.spec.name.clone()],
        vec!["image".into(), c.spec.image.clone()],
        vec!["template".into(), c.spec.template.clone().unwrap_or_else(|| "-".into())],
        vec!["state".into(), c.state.to_string()],
        vec!["pid".into(), c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())],
        vec![
            "command".into(),
            if c.spec.command.is_empty() { "(image default)".into() } else { c.spec.command.join(" ") },
        ],
        vec!["cpu".into(), r.cpu.map(cores).unwrap_or_else(|| "unlimited".into())],
        vec!["memory".into(), r.memory.map(|v| v.to_string()).unwrap_or_else(|| "unlimited".into())],
        vec!["pids".into(), r.pids.map(|v| v.to_string()).unwrap_or_else(|| "unlimited".into())],
        vec!["ports".into(), c.spec.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")],
        vec!["restart".into(), format!("{} (restarted {} times)", c.spec.restart, c.restart_count)],
        vec!["created".into(), c.created_at.to_rfc3339()],
    ];
    if let Some(t) = c.started_at {
        rows.push(vec!["started".into(), t.to_rfc3339()]);
    }
    if let Some(t) = c.finished_at {
        rows.push(vec!["finished".into(), t.to_rfc3339()]);
    }
    if let Some(code) = c.exit_code {
        rows.push(vec!["exit code".into(), format!("{code}{}", if c.oom_killed { " (OOM-killed)" } else { "" })]);
    }
    if let Some(h) = &c.health {
        rows.push(vec![
            "health".into(),
            format!(
                "{} (streak {}, {} checks, {} failed{})",
                format!("{:?}", h.status).to_lowercase(),
                h.failing_streak,
                h.checks,
                h.failures,
                h.last_duration_ms.map(|m| format!(", last {m:.1} ms")).unwrap_or_default()
            ),
        ]);
        if !h.last_output.is_empty() {
            rows.push(vec!["health output".into(), h.last_output.clone()]);
        }
    }
    for (k, v) in &c.spec.env {
        rows.push(vec!["env".into(), format!("{k}={v}")]);
    }
    for (k, v) in &c.spec.config {
        rows.push(vec!["config".into(), format!("{k}={v}")]);
    }
    if let Some(e) = &c.error {
        rows.push(vec!["error".into(), e.clone()]);
    }
    let mut out = table(&["FIELD", "VALUE"], rows);
    if c.is_replicated() {
        let circuit = c.spec.circuit.as_deref().unwrap_or("-");
        out.push_str(&format!("\nreplicas (one per member of circuit {circuit}):\n"));
        let rows = c
            .replicas
            .iter()
            .map(|r| {
                let state = match (r.state, r.exit_code) {
                    (micro_os_core::ContainerState::Exited, Some(code)) => format!("exited ({code})"),
                    (s, _) => s.to_string(),
                };
                vec![
                    r.name.clone(),
                    r.vm.clone(),
                    state,
                    r.health.map(|h| format!("{h:?}").to_lowercase()).unwrap_or_else(|| "-".into()),
                    r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    r.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(&["REPLICA", "VM", "STATE", "HEALTH", "PID", "ERROR"], rows));
    }
    out
}

fn since_param(s: &str) -> CliResult<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc).to_rfc3339());
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        CliError::usage(format!("since {s:?} is neither a time (2024-01-02T15:04:05Z) nor a duration (10m, 2h)"))
    })?;
    let t = chrono::Utc::now() - chrono::Duration::from_std(d).map_err(bad)?;
    Ok(t.to_rfc3339())
}

/// Streams log text to stdout; returns when the daemon closes the response.
/// The containers whose logs `container logs --name LIST` shows: each of a comma list, a
/// replicated container by its replicas.
fn expand(client: &Client, list: &str) -> CliResult<Vec<String>> {
    let mut out = Vec::new();
    for n in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let c: Container = client.call("GET", &format!("/containers/{}", seg(n)), None::<&()>)?;
        if c.is_replicated() {
            out.extend(c.replicas.iter().map(|r| r.name.clone()));
        } else {
            out.push(c.spec.name);
        }
    }
    if out.is_empty() {
        return Err(CliError::usage("give a container's name (--name N, or several: --name a,b,c)"));
    }
    Ok(out)
}

/// `micro-os logs --circuit N`: the replicas of every container replicated on circuit N.
pub fn circuit_logs(
    client: &Client,
    circuit: &str,
    follow: bool,
    tail: Option<usize>,
    since: Option<String>,
    timestamps: bool,
) -> CliResult<()> {
    let view: micro_os_core::circuit::CircuitView =
        client.call("GET", &format!("/circuits/{}", seg(circuit)), None::<&()>)?;
    let all: Vec<Container> = client.call("GET", "/containers", None::<&()>)?;
    let mut names: Vec<String> = all
        .iter()
        .filter(|c| c.spec.replica_of.is_none() && c.spec.circuit.as_deref() == Some(view.id.as_str()))
        .flat_map(|c| c.replicas.iter().map(|r| r.name.clone()))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(CliError::new(
            exit::NOT_FOUND,
            format!(
                "circuit {:?} runs no replicated containers (container create --circuit {} --replicate)",
                view.name, view.name
            ),
        ));
    }
    let since = since.as_deref().map(since_param).transpose()?;
    super::logs::merged(client, &names, &super::logs::Query { follow, tail, since, timestamps })
}

fn stream_logs(client: &Client, name: &str, query: &str) -> CliResult<()> {
    stream_text(client, &format!("/containers/{}/logs{query}", seg(name)))
}

/// Copies a text response to stdout line by line as it arrives.
pub fn stream_text(client: &Client, path: &str) -> CliResult<()> {
    let resp = client.raw("GET", path, None)?;
    let mut reader = BufReader::new(resp.into_reader());
    let stdout = std::io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                let mut out = stdout.lock();
                if out.write_all(&line).and_then(|_| out.flush()).is_err() {
                    return Ok(()); // stdout closed (e.g. piped into head)
                }
            }
            Err(e) => return Err(CliError::new(exit::FAILURE, format!("log stream broke: {e}"))),
        }
    }
}

/// Exit code of `container run` when micro-os itself failed to start the command.
fn run_failure_code(msg: &str) -> i32 {
    let m = msg.to_ascii_lowercase();
    let exec = m.contains("exec:") || m.contains("exec ");
    if m.contains("executable file not found") || (exec && m.contains("no such file or directory")) {
        127
    } else if exec && m.contains("permission denied") {
        126
    } else {
        125
    }
}

pub fn run(client: &Client, cmd: ContainerCmd) -> CliResult<i32> {
    match cmd {
        ContainerCmd::Create(a) => {
            let req = request(&a, None)?;
            let c: Container = client.call("POST", "/containers", Some(&req))?;
            println!("{}", c.id);
        }
        ContainerCmd::Run { create, rm, detach } => {
            if create.circuit.is_some() && !detach {
                return Err(CliError::new(
                    125,
                    "a replicated container runs on every member: give --detach and read a replica's logs",
                ));
            }
            let default = format!("run-{}", &micro_os_core::id::new_id()[..8]);
            let req = request(&create, Some(default)).map_err(|e| CliError::new(125, e.message))?;
            // created and started in one request; with --rm the daemon removes a
            // container that cannot start, and the wait below removes it once it stopped
            let path = if rm { "/containers?start=true&rm=true" } else { "/containers?start=true" };
            let c: Container = client
                .call("POST", path, Some(&req))
                .map_err(|e| CliError::new(run_failure_code(&e.message), e.message))?;
            if detach {
                println!("{}", c.id);
                return Ok(0);
            }
            stream_logs(client, &c.id, "?follow=true")?;
            let wait = format!("/containers/{}/wait{}", c.id, if rm { "?rm=true" } else { "" });
            let w: WaitResponse = client.call("POST", &wait, None::<&()>)?;
            if w.oom_killed {
                eprintln!("container {:?} was OOM-killed (raise its memory limit)", c.spec.name);
            }
            if let Some(err) = w.error {
                return Err(CliError::new(run_failure_code(&err), err));
            }
            return Ok(w.exit_code);
        }
        ContainerCmd::Deploy { from_file } => {
            let text = std::fs::read_to_string(&from_file)
                .map_err(|e| CliError::usage(format!("deploy file {} cannot be read: {e}", from_file.display())))?;
            let req: DeployRequest = serde_json::from_str(&text)
                .map_err(|e| CliError::usage(format!("deploy file {} is not valid: {e}", from_file.display())))?;
            let cs: Vec<Container> = client.call("POST", "/containers/deploy", Some(&req))?;
            println!("{}", list_table(&cs));
        }
        ContainerCmd::Start(n) => {
            let c: Container =
                client.call("POST", &format!("/containers/{}/start", seg(&name_of(&n)?)), None::<&()>)?;
            if c.is_replicated() {
                let up = c.replicas.iter().filter(|r| r.state == micro_os_core::ContainerState::Running).count();
                println!("{} started ({up} of {} replicas running)", c.spec.name, c.replicas.len());
                if let Some(e) = &c.error {
                    eprintln!("{e}");
                }
            } else {
                println!("{} started (pid {})", c.spec.name, c.pid.unwrap_or(0));
            }
        }
        ContainerCmd::Stop { name, timeout } => {
            let q = timeout.map(|t| format!("?timeout={t}")).unwrap_or_default();
            let c: Container =
                client.call("POST", &format!("/containers/{}/stop{q}", seg(&name_of(&name)?)), None::<&()>)?;
            println!(
                "{} stopped (exit code {})",
                c.spec.name,
                c.exit_code.map(|c| c.to_string()).unwrap_or("-".into())
            );
        }
        ContainerCmd::Pause(n) => {
            let c: Container =
                client.call("POST", &format!("/containers/{}/pause", seg(&name_of(&n)?)), None::<&()>)?;
            println!("{} paused", c.spec.name);
        }
        ContainerCmd::Resume(n) => {
            let c: Container =
                client.call("POST", &format!("/containers/{}/resume", seg(&name_of(&n)?)), None::<&()>)?;
            println!("{} resumed", c.spec.name);
        }
        ContainerCmd::Inspect { name, format } => {
            let c: Container = client.call("GET", &format!("/containers/{}", seg(&name_of(&name)?)), None::<&()>)?;
            print(format, &c, inspect_table)?;
        }
        ContainerCmd::List { format } => {
            let cs: Vec<Container> = client.call("GET", "/containers", None::<&()>)?;
            print(format, &cs, |cs| list_table(cs))?;
        }
        ContainerCmd::Logs { name, follow, tail, since, timestamps } => {
            let names = expand(client, &name_of(&name)?)?;
            if names.len() > 1 {
                let since = since.as_deref().map(since_param).transpose()?;
                super::logs::merged(client, &names, &super::logs::Query { follow, tail, since, timestamps })?;
                return Ok(0);
            }
            let mut q = vec![format!("follow={follow}"), format!("timestamps={timestamps}")];
            if let Some(t) = tail {
                q.push(format!("tail={t}"));
            }
            if let Some(s) = since {
                q.push(format!("since={}", seg(&since_param(&s)?)));
            }
            stream_logs(client, &names[0], &format!("?{}", q.join("&")))?;
        }
        ContainerCmd::Exec { name, env, timeout, command } => {
            let env = env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => Err(CliError::usage(format!("--env {kv:?} is not KEY=VALUE"))),
                })
                .collect::<CliResult<BTreeMap<String, String>>>()?;
            let req = micro_os_api::types::ExecRequest { command, env, timeout_s: timeout };
            let r: micro_os_api::types::ExecResult =
                client.call("POST", &format!("/containers/{}/exec", seg(&name_of(&name)?)), Some(&req))?;
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            let _ = out.write_all(r.stdout.as_bytes()).and_then(|_| out.flush());
            let _ = err.write_all(r.stderr.as_bytes());
            if r.truncated {
                let _ = writeln!(err, "micro-os: the output was cut off at 4 MiB per stream");
            }
            return Ok(r.exit_code);
        }
        ContainerCmd::Events { name, format } => {
            let v: Vec<EventInfo> =
                client.call("GET", &format!("/containers/{}/events", seg(&name_of(&name)?)), None::<&()>)?;
            print(format, &v, |v| {
                table(
                    &["TIME", "EVENT", "DETAIL"],
                    v.iter().map(|e| vec![e.at.to_rfc3339(), e.action.clone(), e.detail.clone()]).collect(),
                )
            })?;
        }
        ContainerCmd::Rm { name, force } => {
            let n = name_of(&name)?;
            client.call_empty("DELETE", &format!("/containers/{}?force={force}", seg(&n)))?;
            println!("{n} removed");
        }
        ContainerCmd::Config { args } => {
            let (name, settings) = parse_config_args(&args)?;
            if settings.is_empty() {
                let cfg: BTreeMap<String, String> =
                    client.call("GET", &format!("/containers/{}/config", seg(&name)), None::<&()>)?;
                for (k, v) in cfg {
                    println!("{k}={v}");
                }
            } else {
                let c: Container =
                    client.call("PATCH", &format!("/containers/{}/config", seg(&name)), Some(&settings))?;
                println!("{} configured: {}", c.spec.name, settings.keys().cloned().collect::<Vec<_>>().join(", "));
            }
        }
    }
    Ok(0)
}

/// `NAME --key value --other=value` or `--name NAME --key value`.
fn parse_config_args(args: &[String]) -> CliResult<(String, BTreeMap<String, String>)> {
    let mut name = None;
    let mut set = BTreeMap::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if let Some(flag) = a.strip_prefix("--") {
            let (k, v) = match flag.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| CliError::usage(format!("--{flag} needs a value (e.g. --{flag} VALUE)")))?;
                    (flag.to_string(), v.clone())
                }
            };
            if k == "name" {
                name = Some(v);
            } else {
                set.insert(k, v);
            }
        } else if name.is_none() {
            name = Some(a.clone());
        } else {
            return Err(CliError::usage(format!("unexpected {a:?}: give settings as --key value")));
        }
    }
    let name = name.ok_or_else(|| CliError::usage("give the container's name (container config NAME --key value)"))?;
    Ok((name, set))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn config_args() {
        let (n, s) = parse_config_args(&args("eth-node-1 --network mainnet --sync-mode=fast")).unwrap();
        assert_eq!(n, "eth-node-1");
        assert_eq!(s.get("network").unwrap(), "mainnet");
        assert_eq!(s.get("sync-mode").unwrap(), "fast");
        let (n, s) = parse_config_args(&args("--name x")).unwrap();
        assert_eq!((n.as_str(), s.len()), ("x", 0));
        assert!(parse_config_args(&args("x --network")).is_err());
        assert!(parse_config_args(&args("--network a")).is_err());
    }

    #[test]
    fn run_failure_codes() {
        assert_eq!(run_failure_code("exec: \"nope\": executable file not found in $PATH"), 127);
        assert_eq!(run_failure_code("exec /x: permission denied"), 126);
        assert_eq!(run_failure_code("mount overlay failed"), 125);
        assert_eq!(run_failure_code("mount overlay root at /x: ENOENT: No such file or directory"), 125);
    }
}
