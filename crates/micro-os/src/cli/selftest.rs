//! `micro-os test integration`: a self-check through the API. It makes a scratch VM and
//! container, exercises them and every component's path, removes what it made, and
//! prints one pass/fail line per component.

use std::time::{Duration, Instant};

use micro_os_api::types::{ContainerCreate, HealthReport, NetStatus, Sample, SendReport, VmCreate, WaitResponse};
use micro_os_core::{Container, Vm};

use super::client::{exit, seg, CliError, CliResult, Client};

type Check = Result<String, String>;

struct Scratch<'a> {
    client: &'a Client,
    tag: String,
    vm: Option<Vm>,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for name in [format!("{}-c", self.tag), format!("{}-vc", self.tag)] {
            let _ = self.client.call_empty("DELETE", &format!("/containers/{}?force=true", seg(&name)));
        }
        if let Some(vm) = &self.vm {
            let _ = self.client.call_empty("DELETE", &format!("/vms/{}?force=true", seg(&vm.id)));
        }
    }
}

fn err(e: CliError) -> String {
    e.message
}

fn run_container(c: &Client, name: &str, vm: Option<&str>, script: &str) -> Result<(i32, String), String> {
    let req = ContainerCreate {
        name: name.into(),
        image: Some("busybox".into()),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        vm: vm.map(String::from),
        ..Default::default()
    };
    let made: Container = c.call("POST", "/containers", Some(&req)).map_err(err)?;
    c.call::<Container>("POST", &format!("/containers/{}/start", made.id), None::<&()>).map_err(err)?;
    let w: WaitResponse = c.call("POST", &format!("/containers/{}/wait", made.id), None::<&()>).map_err(err)?;
    let logs = c.raw("GET", &format!("/containers/{}/logs", made.id), None).map_err(err)?;
    let text = logs.into_string().map_err(|e| e.to_string())?;
    c.call_empty("DELETE", &format!("/containers/{}", made.id)).map_err(err)?;
    Ok((w.exit_code, text))
}

fn check(component: &str, s: &mut Scratch<'_>) -> Check {
    let c = s.client;
    match component {
        "api" => {
            let h: serde_json::Value = c.call("GET", "/health", None::<&()>).map_err(err)?;
            Ok(format!("health says {}", h["status"].as_str().unwrap_or("?")))
        }
        "store" => {
            // a record written and read back, then removed
            let name = format!("{}-c", s.tag);
            let req = ContainerCreate {
                name: name.clone(),
                image: Some("busybox".into()),
                command: Some(vec!["true".into()]),
                ..Default::default()
            };
            let made: Container = c.call("POST", "/containers", Some(&req)).map_err(err)?;
            let back: Container = c.call("GET", &format!("/containers/{}", made.id), None::<&()>).map_err(err)?;
            c.call_empty("DELETE", &format!("/containers/{}", made.id)).map_err(err)?;
            (back.spec.name == name)
                .then(|| "a record written, read back and removed".into())
                .ok_or("read back differs".into())
        }
        "runtime" | "containers" => {
            let (code, out) = run_container(c, &format!("{}-c", s.tag), None, "echo micro-os-selftest; exit 3")?;
            if code == 3 && out.contains("micro-os-selftest") {
                Ok("a busybox container ran, logged and exited 3 as told".into())
            } else {
                Err(format!("container exited {code} with output {out:?}"))
            }
        }
        "vms" => {
            let vm = scratch_vm(s)?;
            let (code, out) = run_container(c, &format!("{}-vc", s.tag), Some(&vm.id), "ip -4 addr show eth0")?;
            let addr = vm.address.to_string();
            if code == 0 && out.contains(&addr) {
                Ok(format!("vm {} ready at {addr}; a container on it has its address", vm.spec.name))
            } else {
                Err(format!("the container on the vm exited {code}: {out:?}"))
            }
        }
        "net" => {
            let vm = scratch_vm(s)?;
            let body = serde_json::json!({"to": vm.spec.name, "type": "PING", "state": "selftest"});
            let r: SendReport = c.call("POST", "/net/send", Some(&body)).map_err(err)?;
            let st: NetStatus = c.call("GET", "/monitor/network", None::<&()>).map_err(err)?;
            if r.accepted {
                Ok(format!("a signed PING to the vm's agent was accepted; {} peers", st.peers.len()))
            } else {
                Err(format!("the vm's agent refused a PING: {}", r.reason.unwrap_or_default()))
            }
        }
        "monitor" => {
            let vm = scratch_vm(s)?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let rows: Vec<Sample> =
                    c.call("GET", &format!("/monitor/resources?vm={}", seg(&vm.id)), None::<&()>).map_err(err)?;
                if let Some(r) = rows.iter().find(|r| r.id == vm.id) {
                    return Ok(format!("the vm is sampled: {:.1}% cpu, {} pids", r.cpu_percent, r.pids));
                }
                if Instant::now() > deadline {
                    return Err("the vm never showed in monitor resources".into());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        other => Err(format!("no check for {other} yet")),
    }
}

fn scratch_vm(s: &mut Scratch<'_>) -> Result<Vm, String> {
    if let Some(vm) = &s.vm {
        return Ok(vm.clone());
    }
    let req =
        VmCreate { name: format!("{}-vm", s.tag), memory: 128, cpu: 1.0, image: None, driver: None, restart: None };
    let vm: Vm = s.client.call("POST", "/vms", Some(&req)).map_err(err)?;
    s.vm = Some(vm.clone());
    let vm: Vm = s.client.call("POST", &format!("/vms/{}/start", vm.id), None::<&()>).map_err(err)?;
    s.vm = Some(vm.clone());
    Ok(vm)
}

pub fn integration(client: &Client, components: &str) -> CliResult<i32> {
    // the daemon's registry says which components there are and which are configured
    let health: HealthReport = client.call("GET", "/monitor/health", None::<&()>)?;
    let known: Vec<&str> = health.components.iter().map(|c| c.component.as_str()).collect();
    let wanted: Vec<&str> = if components == "all" {
        known.clone()
    } else {
        let list: Vec<&str> = components.split(',').map(str::trim).collect();
        if let Some(bad) = list.iter().find(|c| !known.contains(c)) {
            return Err(CliError::usage(format!("component {bad:?} is unknown (use {} or all)", known.join(", "))));
        }
        list
    };
    let tag = format!("selftest-{}", &micro_os_core::id::new_id()[..6]);
    let mut scratch = Scratch { client, tag, vm: None };
    let mut failed = 0;
    for component in wanted {
        let h = health.components.iter().find(|c| c.component == component).expect("a known component");
        if !h.configured {
            println!("SKIP {component:<10} {:>6} ms  {}", 0, h.reason);
            continue;
        }
        let started = Instant::now();
        let result = check(component, &mut scratch);
        let ms = started.elapsed().as_millis();
        match result {
            Ok(detail) => println!("PASS {component:<10} {ms:>6} ms  {detail}"),
            Err(why) => {
                failed += 1;
                println!("FAIL {component:<10} {ms:>6} ms  {why}");
            }
        }
    }
    drop(scratch);
    Ok(if failed > 0 { exit::FAILURE } else { 0 })
}
