//! `micro-os`: one binary for the daemon, the CLI and the per-container shim. The VM
//! agent is a binary of its own, `micro-os-agent` (crates/agent).

mod cli;
mod daemon;
mod home;

use micro_os_p2p as p2p;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::args::Command;
use cli::client::{exit, CliError};
use home::{Config, Home};

fn main() -> ExitCode {
    // The shim starts as fast as it can: it is recognised before clap runs.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == "shim" {
        return ExitCode::from(micro_os_runtime::shim::run(std::path::Path::new(&argv[2])) as u8);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_exit(e),
    };
    if !matches!(cli.command, Command::Daemon { .. }) {
        // a client whose output is cut short (`micro-os container ls | head -1`) ends
        // quietly, as other command-line tools do, instead of panicking on EPIPE
        // SAFETY: setting a signal's disposition to the default before any thread starts
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("micro-os: {}", e.message);
            ExitCode::from(e.code as u8)
        }
    }
}

/// Help and version go to stdout as clap renders them; usage errors become one line.
fn clap_exit(e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    eprintln!("micro-os: {} (see `micro-os help`)", one_line(&e.render().to_string()));
    ExitCode::from(exit::USAGE as u8)
}

/// The first line of clap's message, with the indented lines that finish it (what follows
/// "the following required arguments were not provided:").
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ");
    if !first.ends_with(':') {
        return first.to_string();
    }
    let rest: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect();
    format!("{first} {}", rest.join(", "))
}

fn run(cli: cli::Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Init { config } => {
            let cfg = config.map(|p| Config::load(&p)).transpose().map_err(|e| CliError::usage(format!("{e:#}")))?;
            let home = Home::locate();
            let report = home.init(cfg.as_ref())?;
            println!("home       {}", report.home.display());
            println!("node key   ed25519 {}", report.public_key);
            if let Ok(k) = home.libp2p_key() {
                println!("peer id    {}", k.public().to_peer_id());
            }
            println!("token      {}", home.token_path().display());
            if report.created.is_empty() {
                println!("nothing to create: the home was already set up");
            } else {
                println!("created    {}", report.created.join(", "));
            }
            Ok(0)
        }
        Command::Daemon { api_addr, config } => {
            let home = Home::locate();
            let mut cfg = match config {
                Some(p) => Config::load(&p).map_err(|e| CliError::usage(format!("{e:#}")))?,
                None => home.config().map_err(|e| CliError::usage(format!("{e:#}")))?,
            };
            if let Some(a) = api_addr {
                cfg.api_addr = a;
            }
            cfg.validate().map_err(|e| CliError::usage(format!("{e:#}")))?;
            daemon::run(home, cfg)?;
            Ok(0)
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut cli::Cli::command(), "micro-os", &mut std::io::stdout());
            Ok(0)
        }
        Command::Help { command } => {
            // exactly what `micro-os <command…> --help` prints
            let mut cmd = cli::Cli::command();
            let mut target = &mut cmd;
            for word in &command {
                target = target.find_subcommand_mut(word).ok_or_else(|| {
                    CliError::usage(format!("no command {:?} (see `micro-os help`)", command.join(" ")))
                })?;
            }
            let argv = std::iter::once("micro-os").chain(command.iter().map(String::as_str)).chain(["--help"]);
            match cli::Cli::try_parse_from(argv) {
                Err(e) => {
                    let _ = e.print();
                    Ok(0)
                }
                Ok(_) => Err(CliError::usage("help could not be shown")),
            }
        }
        Command::Shim { .. } => Err(CliError::usage("the shim is started by the daemon, not by hand")),
        other => cli::run(cli.api, cli.host, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_is_one_line_that_names_what_is_missing() {
        let check = |argv: &[&str], want: &str| {
            let e = cli::Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(one_line(&e.render().to_string()), want, "{argv:?}");
        };
        check(
            &["micro-os", "circuit", "view"],
            "the following required arguments were not provided: <--name <NAME>|--id <ID>|--all>",
        );
        check(
            &["micro-os", "circuit", "create", "--nodes", "a"],
            "the following required arguments were not provided: --name <NAME>",
        );
        check(&["micro-os", "vm", "list", "--format", "xml"], "invalid value 'xml' for '--format <FORMAT>'");
    }
}
