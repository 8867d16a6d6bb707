use micro_os_api::types::{VmCreate, VmDefinitions};
use micro_os_core::{RestartPolicy, Vm};

use super::args::{VmCmd, VmName};
use super::client::{seg, CliError, CliResult, Client};
use super::output::{ago, cores, print, table};

fn name_of(n: &VmName) -> CliResult<String> {
    super::pick_name(&n.positional, &n.name, "VM")
}

fn list_table(vs: &[Vm]) -> String {
    table(
        &["ID", "NAME", "DRIVER", "STATE", "AGENT", "ADDRESS", "MEMORY", "CPU", "CREATED"],
        vs.iter()
            .map(|v| {
                vec![
                    v.id[..12].to_string(),
                    v.spec.name.clone(),
                    v.spec.driver.to_string(),
                    v.state.to_string(),
                    format!("{:?}", v.agent).to_lowercase(),
                    v.address.to_string(),
                    format!("{} MiB", v.spec.memory_mib),
                    cores(v.spec.cpus),
                    ago(v.created_at),
                ]
            })
            .collect(),
    )
}

fn inspect_table(v: &Vm) -> String {
    let mut rows = vec![
        vec!["id".into(), v.id.clone()],
        vec!["name".into(), v.spec.name.clone()],
        vec!["driver".into(), v.spec.driver.to_string()],
        vec!["image".into(), v.spec.image.clone()],
        vec!["state".into(), v.state.to_string()],
        vec!["address".into(), v.address.to_string()],
        vec!["memory".into(), format!("{} MiB", v.spec.memory_mib)],
        vec!["cpu".into(), cores(v.spec.cpus)],
        vec!["agent".into(), format!("{:?}", v.agent).to_lowercase()],
        vec!["peer id".into(), v.peer_id.clone().unwrap_or_else(|| "-".into())],
        vec!["pid".into(), v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())],
        vec!["restart".into(), format!("{} (restarted {} times)", v.spec.restart, v.restart_count)],
        vec!["created".into(), v.created_at.to_rfc3339()],
    ];
    if let Some(t) = v.started_at {
        rows.push(vec!["started".into(), t.to_rfc3339()]);
    }
    if let Some(t) = v.last_report {
        rows.push(vec!["last report".into(), t.to_rfc3339()]);
    }
    if let Some(c) = v.exit_code {
        rows.push(vec!["agent exit code".into(), format!("{c}{}", if v.oom_killed { " (OOM-killed)" } else { "" })]);
    }
    if let Some(e) = &v.error {
        rows.push(vec!["error".into(), e.clone()]);
    }
    table(&["FIELD", "VALUE"], rows)
}

pub fn run(client: &Client, cmd: VmCmd) -> CliResult<i32> {
    match cmd {
        VmCmd::Create { positional, name, memory, cpu, image, driver, restart, from_file } => {
            if let Some(f) = from_file {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| CliError::usage(format!("definitions file {} cannot be read: {e}", f.display())))?;
                let defs: VmDefinitions = serde_json::from_str(&text).map_err(|e| {
                    CliError::usage(format!(
                        "definitions file {} is not valid: {e} (give a JSON list of {{\"name\", \"memory\", ...}})",
                        f.display()
                    ))
                })?;
                let vs: Vec<Vm> = client.call("POST", "/vms/batch", Some(&defs))?;
                println!("{}", list_table(&vs));
                return Ok(0);
            }
            if positional.is_none() && name.is_none() {
                return Err(CliError::usage("give the VM's name (--name N) or --from-file FILE"));
            }
            let name = super::pick_name(&positional, &name, "VM")?;
            let memory = memory.ok_or_else(|| CliError::usage("give the VM's memory in MiB (--memory 512)"))?;
            let restart =
                restart.as_deref().map(RestartPolicy::parse).transpose().map_err(|e| CliError::usage(e.to_string()))?;
            let req = VmCreate { name, memory, cpu: cpu.unwrap_or(1.0), image, driver, restart };
            let v: Vm = client.call("POST", "/vms", Some(&req))?;
            println!("{} {}", v.id, v.address);
        }
        VmCmd::Start(n) => {
            let v: Vm = client.call("POST", &format!("/vms/{}/start", seg(&name_of(&n)?)), None::<&()>)?;
            println!("{} started ({}, agent {})", v.spec.name, v.address, format!("{:?}", v.agent).to_lowercase());
        }
        VmCmd::Stop { name, force, timeout } => {
            let mut q = format!("?force={force}");
            if let Some(t) = timeout {
                q.push_str(&format!("&timeout={t}"));
            }
            let v: Vm = client.call("POST", &format!("/vms/{}/stop{q}", seg(&name_of(&name)?)), None::<&()>)?;
            println!(
                "{} stopped (agent exit code {})",
                v.spec.name,
                v.exit_code.map(|c| c.to_string()).unwrap_or("-".into())
            );
        }
        VmCmd::Pause(n) => {
            let v: Vm = client.call("POST", &format!("/vms/{}/pause", seg(&name_of(&n)?)), None::<&()>)?;
            println!("{} paused", v.spec.name);
        }
        VmCmd::Resume(n) => {
            let v: Vm = client.call("POST", &format!("/vms/{}/resume", seg(&name_of(&n)?)), None::<&()>)?;
            println!("{} resumed", v.spec.name);
        }
        VmCmd::Inspect { name, format } => {
            let v: Vm = client.call("GET", &format!("/vms/{}", seg(&name_of(&name)?)), None::<&()>)?;
            print(format, &v, inspect_table)?;
        }
        VmCmd::List { format } => {
            let vs: Vec<Vm> = client.call("GET", "/vms", None::<&()>)?;
            print(format, &vs, |v| list_table(v))?;
        }
        VmCmd::Rm { name, force } => {
            let n = name_of(&name)?;
            client.call_empty("DELETE", &format!("/vms/{}?force={force}", seg(&n)))?;
            println!("{n} removed");
        }
    }
    Ok(0)
}
