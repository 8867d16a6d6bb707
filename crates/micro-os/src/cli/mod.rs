//! The command-line client. Every command here talks to the daemon through the API
//! types of `micro-os-api`; none touches the store or the runtime.

mod ai;
pub mod args;
mod chain;
mod circuit;
pub mod client;
mod container;
mod events;
mod host;
mod image;
mod logs;
mod monitor;
mod net;
mod output;
mod selftest;
mod upload;
mod vm;

pub use args::Cli;
use args::Command;
use client::{CliResult, Client};

/// The object's name from a positional argument or `--name` (one of them, or both equal).
pub fn pick_name(positional: &Option<String>, flag: &Option<String>, what: &str) -> CliResult<String> {
    match (positional, flag) {
        (Some(a), Some(b)) if a != b => {
            Err(client::CliError::usage(format!("two names given ({a:?} and --name {b:?}); give one")))
        }
        (Some(a), _) | (None, Some(a)) => Ok(a.clone()),
        (None, None) => Err(client::CliError::usage(format!("give the {what}'s name (--name N)"))),
    }
}

pub fn run(api: Option<String>, host: Option<String>, cmd: Command) -> CliResult<i32> {
    let client = Client::new(api, host);
    match cmd {
        Command::Vm(c) => vm::run(&client, c),
        Command::Net(c) => net::run(&client, c),
        Command::Monitor(c) => monitor::run(&client, c),
        Command::Container(c) => container::run(&client, *c),
        Command::Circuit(c) => circuit::run(&client, c),
        Command::Chain(c) => chain::run(&client, c),
        Command::Host(c) => host::run(&client, c),
        Command::Ai(c) => ai::run(&client, c),
        Command::Image(c) => image::run(&client, c),
        Command::Template(c) => image::run_template(&client, c),
        Command::Test(args::TestCmd::Integration { components }) => selftest::integration(&client, &components),
        Command::Logs { circuit: Some(circuit), follow, tail, since, timestamps, .. } => {
            container::circuit_logs(&client, &circuit, follow, tail, since, timestamps).map(|_| 0)
        }
        Command::Logs { component, level, follow, tail, .. } => {
            let mut q = format!("component={}&level={}&follow={follow}", client::seg(&component), client::seg(&level));
            if let Some(n) = tail {
                q.push_str(&format!("&tail={n}"));
            }
            container::stream_text(&client, &format!("/logs?{q}")).map(|_| 0)
        }
        Command::Events { kinds, object, since, tail, no_follow, format } => {
            events::run(&client, events::Args { kinds, object, since, tail, follow: !no_follow, format })
        }
        _ => unreachable!("local commands are handled in main"),
    }
}
