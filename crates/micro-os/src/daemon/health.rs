//! Health probes: a command run in the container, a TCP connect or an HTTP GET inside
//! the container's network namespace.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_os_core::{ContainerState, HealthCheck, HealthProbe};
use micro_os_runtime::netns;

use super::engine::Engine;

pub async fn run(engine: Arc<Engine>, id: String, pid: u32, check: HealthCheck) {
    let interval = Duration::from_secs_f64(check.interval_s);
    let timeout = Duration::from_secs_f64(check.timeout_s);
    loop {
        tokio::time::sleep(interval).await;
        match engine.find(&id) {
            Ok(c) if c.pid == Some(pid) && c.state == ContainerState::Running => {}
            Ok(c) if c.pid == Some(pid) && c.state == ContainerState::Paused => continue,
            _ => return,
        }
        let probe = check.probe.clone();
        let runc = engine.runc.clone();
        let id2 = id.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || probe_once(&runc, &id2, pid, &probe, timeout))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (ok, output) = match result {
            Ok(out) => (true, out),
            Err(e) => (false, e),
        };
        if !engine.record_health(&id, pid, ok, check.retries, ms, output) {
            return;
        }
    }
}

fn probe_once(
    runc: &micro_os_runtime::runc::Runc,
    id: &str,
    pid: u32,
    probe: &HealthProbe,
    timeout: Duration,
) -> Result<String, String> {
    match probe {
        HealthProbe::Command { command } => match runc.exec(id, command, timeout) {
            Ok((0, out)) => Ok(out),
            Ok((124, _)) => Err(format!("timed out after {timeout:?}")),
            Ok((code, out)) => Err(format!("exit code {code}: {out}")),
            Err(e) => Err(e.to_string()),
        },
        HealthProbe::Tcp { port } => netns::connect_tcp(&netns::ns_path(pid), *port, timeout)
            .map(|_| format!("connected to port {port}"))
            .map_err(|e| format!("port {port}: {e}")),
        HealthProbe::Http { port, path } => {
            let mut s =
                netns::connect_tcp(&netns::ns_path(pid), *port, timeout).map_err(|e| format!("port {port}: {e}"))?;
            s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: micro-os-health\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut head = [0u8; 64];
            let n = s.read(&mut head).map_err(|e| format!("read: {e}"))?;
            let line = String::from_utf8_lossy(&head[..n]);
            let status = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
            match status {
                Some(c) if (200..400).contains(&c) => Ok(format!("HTTP {c}")),
                Some(c) => Err(format!("HTTP {c}")),
                None => Err(format!("not an HTTP response: {:?}", line.lines().next().unwrap_or(""))),
            }
        }
    }
}
