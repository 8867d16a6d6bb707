use std::io::{IsTerminal, Write};
use std::time::Duration;

use micro_os_api::types::{HealthReport, PerformanceReport, Sample};
use micro_os_core::Size;

use super::args::{ExportFormat, Format, MonitorCmd};
use super::client::{exit, seg, CliError, CliResult, Client};
use super::output::{print, table};

fn pct(v: f64, limit: Option<f64>) -> String {
    match limit {
        Some(l) => format!("{v:.1}% / {l:.0}%"),
        None => format!("{v:.1}%"),
    }
}

fn resources_table(rows: &[Sample]) -> String {
    table(
        &["KIND", "NAME", "CPU", "MEMORY", "PIDS", "NET RX / TX", "BLOCK R / W", "RESTARTS", "HEALTH", "OOM"],
        rows.iter()
            .map(|s| {
                let mem = match s.memory_limit_bytes {
                    Some(l) => format!("{} / {}", Size(s.memory_bytes).approx(), Size(l).approx()),
                    None => Size(s.memory_bytes).approx(),
                };
                let health = match (s.health_ms, s.health_error_rate) {
                    (Some(ms), Some(e)) => format!("{ms:.1} ms, {:.0}% failed", e * 100.0),
                    _ => "-".into(),
                };
                vec![
                    s.kind.clone(),
                    s.name.clone(),
                    pct(s.cpu_percent, s.cpu_limit_percent),
                    mem,
                    s.pids.to_string(),
                    format!("{} / {}", Size(s.net_rx_bytes).approx(), Size(s.net_tx_bytes).approx()),
                    format!("{} / {}", Size(s.io_read_bytes).approx(), Size(s.io_write_bytes).approx()),
                    s.restarts.to_string(),
                    health,
                    s.oom_kills.to_string(),
                ]
            })
            .collect(),
    )
}

fn resources_path(vm: &Option<String>, container: &Option<String>, all: bool) -> String {
    let mut q = vec![];
    if let Some(v) = vm {
        q.push(format!("vm={}", seg(v)));
    }
    if let Some(c) = container {
        q.push(format!("container={}", seg(c)));
    }
    if all {
        q.push("all=true".into());
    }
    format!("/monitor/resources?{}", q.join("&"))
}

/// Restores the terminal however the live view ends.
struct Screen;

impl Screen {
    fn enter() -> CliResult<Screen> {
        let fail =
            |e: std::io::Error| CliError::new(exit::FAILURE, format!("the terminal cannot show a live view: {e}"));
        crossterm::terminal::enable_raw_mode().map_err(fail)?;
        crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen, crossterm::cursor::Hide)
            .map_err(fail)?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ =
            crossterm::execute!(std::io::stdout(), crossterm::cursor::Show, crossterm::terminal::LeaveAlternateScreen);
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Waits up to `wait` for q, Esc or Ctrl-C; true when one came.
fn quit_within(wait: Duration) -> bool {
    use crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let until = std::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match event::poll(left) {
            Ok(true) => {
                if let Ok(Event::Key(k)) = event::read() {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return true;
                    }
                }
            }
            _ => return false,
        }
    }
}

/// A full-screen view, redrawn from `frame` every `every` until q, Esc or Ctrl-C; the
/// terminal is restored however it ends.
pub(super) fn live_view(every: Duration, mut frame: impl FnMut() -> CliResult<String>) -> CliResult<i32> {
    let _screen = Screen::enter()?;
    loop {
        let text = frame()?;
        let mut out = std::io::stdout();
        let _ = crossterm::execute!(
            out,
            crossterm::cursor::MoveTo(0, 0),
            crossterm::terminal::Clear(crossterm::terminal::ClearType::All)
        );
        // raw mode: a line feed does not return the carriage
        let _ = out.write_all(text.replace('\n', "\r\n").as_bytes());
        let _ = out.flush();
        if quit_within(every) {
            return Ok(0);
        }
    }
}

fn live(client: &Client, path: &str, every: Duration) -> CliResult<i32> {
    live_view(every, || {
        let rows: Vec<Sample> = client.call("GET", path, None::<&()>)?;
        let now = chrono::Local::now().format("%H:%M:%S");
        let mut text = format!("micro-os resources  {now}  every {:.1}s  (q quits)\n\n", every.as_secs_f64());
        text.push_str(&if rows.is_empty() { "no samples yet".to_string() } else { resources_table(&rows) });
        Ok(text)
    })
}

fn health_table(h: &HealthReport) -> String {
    let mut out = format!("status {}\n\n", h.status);
    out.push_str(&table(
        &["COMPONENT", "STATUS", "REASON"],
        h.components
            .iter()
            .map(|c| {
                let status = if c.configured { c.status.to_string() } else { "-".into() };
                vec![c.component.clone(), status, c.reason.clone()]
            })
            .collect(),
    ));
    out.push_str("\n\n");
    if h.alerts.is_empty() {
        out.push_str("no open alerts");
    } else {
        out.push_str(&table(
            &["ALERT", "OBJECT", "SEVERITY", "SINCE", "MESSAGE"],
            h.alerts
                .iter()
                .map(|a| {
                    vec![
                        a.rule.clone(),
                        a.object.clone(),
                        a.severity.to_string(),
                        a.fired_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        a.message.clone(),
                    ]
                })
                .collect(),
        ));
    }
    out
}

fn performance_table(p: &PerformanceReport) -> String {
    let mut rows = vec![
        vec![
            "window".into(),
            format!("{} .. {} ({} samples)", p.from.format("%F %T"), p.to.format("%F %T"), p.samples),
        ],
        vec![
            "cpu".into(),
            format!("avg {:.1}%, p95 {:.1}%, max {:.1}%", p.cpu_percent_avg, p.cpu_percent_p95, p.cpu_percent_max)
                + &p.cpu_limit_percent.map(|l| format!(" (limit {l:.0}%)")).unwrap_or_default(),
        ],
        vec![
            "memory".into(),
            format!("avg {}, max {}", Size(p.memory_bytes_avg).approx(), Size(p.memory_bytes_max).approx())
                + &p.memory_limit_bytes.map(|l| format!(" (limit {})", Size(l).approx())).unwrap_or_default(),
        ],
        vec![
            "network".into(),
            format!(
                "rx {}/s, tx {}/s",
                Size(p.net_rx_bytes_per_s as u64).approx(),
                Size(p.net_tx_bytes_per_s as u64).approx()
            ),
        ],
        vec![
            "block i/o".into(),
            format!(
                "read {}/s, write {}/s",
                Size(p.io_read_bytes_per_s as u64).approx(),
                Size(p.io_write_bytes_per_s as u64).approx()
            ),
        ],
        vec!["restarts".into(), p.restarts.to_string()],
        vec!["oom kills".into(), p.oom_kills.to_string()],
    ];
    if let (Some(ms), Some(e)) = (p.health_ms_avg, p.health_error_rate) {
        rows.push(vec!["health checks".into(), format!("avg {ms:.1} ms, {:.1}% failed", e * 100.0)]);
    }
    if let Some(ai) = &p.ai_stats {
        rows.push(vec!["ai".into(), ai.clone()]);
    }
    format!("container {}\n\n{}", p.container, table(&["METRIC", "VALUE"], rows))
}

/// One cross-component check: what, healthy or not, how long it took, what it saw.
#[derive(serde::Serialize)]
struct Link {
    check: String,
    status: String,
    ms: f64,
    detail: String,
}

fn timed<T>(f: impl FnOnce() -> CliResult<T>) -> (CliResult<T>, f64) {
    let t = std::time::Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64() * 1000.0)
}

fn integration_round(client: &Client) -> CliResult<Vec<Link>> {
    let mut out = Vec::new();
    let (h, ms) = timed(|| client.call::<serde_json::Value>("GET", "/health", None::<&()>));
    let detail = format!("health says {}", h?["status"].as_str().unwrap_or("?"));
    out.push(Link { check: "cli -> api".into(), status: "healthy".into(), ms, detail });
    let (h, ms) = timed(|| client.call::<HealthReport>("GET", "/monitor/health", None::<&()>));
    for c in h?.components {
        out.push(Link { check: format!("api -> {}", c.component), status: c.status.to_string(), ms, detail: c.reason });
    }
    let vms: Vec<micro_os_core::Vm> = client.call("GET", "/vms", None::<&()>)?;
    let host: micro_os_api::types::NetStatus = client.call("GET", "/monitor/network", None::<&()>)?;
    for vm in vms.iter().filter(|v| v.state == micro_os_core::VmState::Running) {
        let (st, ms) = timed(|| {
            client.call::<micro_os_api::types::NetStatus>(
                "GET",
                &format!("/monitor/network?vm={}", seg(&vm.id)),
                None::<&()>,
            )
        });
        let (status, detail) = match st {
            Ok(st) => ("healthy", format!("agent answers; {} peers", st.peers.iter().filter(|p| p.connected).count())),
            Err(e) => ("critical", e.message),
        };
        out.push(Link { check: format!("daemon -> vm {} agent", vm.spec.name), status: status.into(), ms, detail });
        let peer = vm.peer_id.as_deref().and_then(|id| host.peers.iter().find(|p| p.peer_id == id));
        let (status, ms, detail) = match peer {
            Some(p) if p.connected => ("healthy", p.rtt_ms.unwrap_or(0.0), "ping round trip".to_string()),
            Some(_) => ("degraded", 0.0, "not connected".to_string()),
            None => ("degraded", 0.0, "the host's peer has not met it".to_string()),
        };
        out.push(Link { check: format!("host p2p -> vm {}", vm.spec.name), status: status.into(), ms, detail });
    }
    Ok(out)
}

pub fn run(client: &Client, cmd: MonitorCmd) -> CliResult<i32> {
    match cmd {
        MonitorCmd::Integration { interval, format } => {
            if let Some(i) = interval {
                if !(i.is_finite() && i > 0.0) {
                    return Err(CliError::usage(format!("interval {i} is not a number of seconds above 0")));
                }
            }
            loop {
                let links = integration_round(client)?;
                print(format, &links, |l| {
                    table(
                        &["CHECK", "STATUS", "LATENCY", "DETAIL"],
                        l.iter()
                            .map(|l| {
                                vec![l.check.clone(), l.status.clone(), format!("{:.1} ms", l.ms), l.detail.clone()]
                            })
                            .collect(),
                    )
                })?;
                match interval {
                    Some(i) => {
                        println!();
                        std::thread::sleep(Duration::from_secs_f64(i));
                    }
                    None => return Ok(if links.iter().any(|l| l.status == "critical") { exit::FAILURE } else { 0 }),
                }
            }
        }
        MonitorCmd::Network { protocol, interval, detailed, vm, format } => {
            super::net::monitor(client, &protocol, interval, detailed, vm.as_deref(), format)
        }
        MonitorCmd::Resources { vm, container, all, refresh, format } => {
            let path = resources_path(&vm, &container, all);
            let every = match refresh {
                Some(s) if s.is_finite() && s >= 0.1 => Some(Duration::from_secs_f64(s)),
                Some(s) => {
                    return Err(CliError::usage(format!("refresh {s} is not a number of seconds of 0.1 or more")))
                }
                None => None,
            };
            if let (Some(every), Format::Table, true) = (every, format, std::io::stdout().is_terminal()) {
                return live(client, &path, every);
            }
            loop {
                let rows: Vec<Sample> = client.call("GET", &path, None::<&()>)?;
                if rows.is_empty() && format == Format::Table {
                    println!("no samples yet (the monitor samples running containers and VMs every interval)");
                } else {
                    print(format, &rows, |r| resources_table(r))?;
                }
                match every {
                    Some(d) => std::thread::sleep(d),
                    None => return Ok(0),
                }
            }
        }
        MonitorCmd::Health { components, critical_only, ai_alerts, format } => {
            let mut q = vec![];
            if let Some(c) = &components {
                q.push(format!("components={}", seg(c)));
            }
            if critical_only {
                q.push("critical_only=true".into());
            }
            if ai_alerts {
                q.push("ai_alerts=true".into());
            }
            let h: HealthReport = client.call("GET", &format!("/monitor/health?{}", q.join("&")), None::<&()>)?;
            print(format, &h, health_table)?;
            Ok(if h.status == micro_os_core::metrics::Severity::Critical { exit::FAILURE } else { 0 })
        }
        MonitorCmd::Performance { container, since, ai_stats, format } => {
            let mut path = format!("/monitor/performance?container={}", seg(&container));
            if let Some(s) = &since {
                path.push_str(&format!("&since={}", seg(s)));
            }
            if ai_stats {
                path.push_str("&ai_stats=true");
            }
            let p: PerformanceReport = client.call("GET", &path, None::<&()>)?;
            print(format, &p, performance_table)?;
            Ok(0)
        }
        MonitorCmd::Export { from, to, format, output, object } => {
            // checked here first, so bad input leaves no file behind
            micro_os_core::metrics::parse_range(&from, to.as_deref(), chrono::Utc::now().timestamp_millis())
                .map_err(|e| CliError::usage(e.to_string()))?;
            let existed = output.exists();
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&output).map_err(|e| {
                    CliError::usage(format!(
                        "output {} cannot be written: {e} (pick another --output)",
                        output.display()
                    ))
                })?;
            let fmt = if format == ExportFormat::Json { "json" } else { "csv" };
            let mut path = format!("/monitor/export?from={}&format={fmt}", seg(&from));
            if let Some(t) = &to {
                path.push_str(&format!("&to={}", seg(t)));
            }
            if let Some(o) = &object {
                path.push_str(&format!("&object={}", seg(o)));
            }
            let body = client.raw("GET", &path, None).and_then(|r| {
                r.into_string().map_err(|e| CliError::new(exit::FAILURE, format!("reading the export: {e}")))
            });
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    if !existed {
                        let _ = std::fs::remove_file(&output);
                    }
                    return Err(e);
                }
            };
            let rows = match format {
                ExportFormat::Csv => body.lines().count().saturating_sub(1),
                ExportFormat::Json => {
                    serde_json::from_str::<Vec<serde_json::Value>>(&body).map(|v| v.len()).unwrap_or(0)
                }
            };
            file.set_len(0)
                .and_then(|_| file.write_all(body.as_bytes()))
                .map_err(|e| CliError::new(exit::FAILURE, format!("writing {}: {e}", output.display())))?;
            eprintln!("wrote {rows} samples to {}", output.display());
            Ok(0)
        }
    }
}
