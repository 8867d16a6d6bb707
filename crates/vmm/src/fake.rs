//! A driver that runs nothing: `start` hands out a made-up pid and `wait` resolves when a
//! test calls [`Fake::exit`]. It lets the logic around drivers (op locks, conflicts,
//! restarts, recovery) be tested without root. Never registered in a real daemon.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use micro_os_core::{Driver, Vm, VmSpec};
use tokio::sync::watch;

use crate::{BoxFuture, Capabilities, Error, Exit, Recovered, Result, Signal, Started, Usage};

#[derive(Default)]
pub struct Fake {
    next_pid: AtomicU32,
    /// The exit of each started pid, once a test or a signal has decided it.
    exits: Mutex<HashMap<u32, watch::Sender<Option<Exit>>>>,
    /// Every call, in order, as "start <name>", "signal <name> Kill", … for assertions.
    pub calls: Mutex<Vec<String>>,
    /// Pids `recover` reports as still running.
    pub alive: Mutex<Vec<u32>>,
    /// When set, `start` fails with this message.
    pub fail_start: Mutex<Option<String>>,
    /// Whether the VM's first process exits on SIGTERM (an agent that stops at once).
    pub term_exits: std::sync::atomic::AtomicBool,
}

impl Fake {
    pub fn new() -> Fake {
        Fake { next_pid: AtomicU32::new(1000), term_exits: true.into(), ..Default::default() }
    }

    /// Ends the process `pid` with `code`.
    pub fn exit(&self, pid: u32, code: i32) {
        if let Some(tx) = self.exits.lock().unwrap().get(&pid) {
            // kept for a waiter that subscribes later, too
            tx.send_replace(Some(Exit::code(code)));
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl crate::VmDriver for Fake {
    fn kind(&self) -> Driver {
        Driver::Sandbox
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { containers: true, files: false, boot: Duration::ZERO, boot_grace: Duration::from_secs(60) }
    }

    fn validate(&self, spec: &VmSpec) -> Result<()> {
        if spec.name.starts_with("invalid") {
            return Err(Error::Invalid(format!("vm {:?} is refused by the fake driver", spec.name)));
        }
        Ok(())
    }

    fn start(&self, vm: &Vm) -> Result<Started> {
        self.note(format!("start {}", vm.spec.name));
        if let Some(msg) = self.fail_start.lock().unwrap().clone() {
            return Err(Error::Failed(msg));
        }
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.exits.lock().unwrap().insert(pid, watch::channel(None).0);
        Ok(Started { pid, monitor_pid: None, accel: None, detail: format!("pid {pid}") })
    }

    fn wait(&self, _vm: &Vm, run: &Started) -> BoxFuture<Exit> {
        let rx = self.exits.lock().unwrap().entry(run.pid).or_insert_with(|| watch::channel(None).0).subscribe();
        Box::pin(async move {
            let mut rx = rx;
            let exit = match rx.wait_for(|e| e.is_some()).await {
                Ok(e) => e.clone().expect("waited for some"),
                Err(_) => Exit::code(255),
            };
            exit
        })
    }

    fn signal(&self, vm: &Vm, sig: Signal) -> Result<()> {
        self.note(format!("signal {} {sig:?}", vm.spec.name));
        if let Some(pid) = vm.pid {
            if sig == Signal::Kill || self.term_exits.load(Ordering::Relaxed) {
                self.exit(pid, if sig == Signal::Kill { 137 } else { 143 });
            }
        }
        Ok(())
    }

    fn freeze(&self, vm: &Vm, frozen: bool) -> Result<()> {
        self.note(format!("freeze {} {frozen}", vm.spec.name));
        Ok(())
    }

    fn recover(&self, vm: &Vm) -> Recovered {
        let pid = vm.pid.unwrap_or(0);
        if self.alive.lock().unwrap().contains(&pid) {
            self.exits.lock().unwrap().entry(pid).or_insert_with(|| watch::channel(None).0);
            Recovered::Running(Started { pid, monitor_pid: None, accel: None, detail: format!("pid {pid}") })
        } else {
            Recovered::Exited(Exit::code(0))
        }
    }

    fn sample(&self, _vm: &Vm) -> Option<Usage> {
        Some(Usage::default())
    }

    fn release(&self, vm: &Vm) {
        self.note(format!("release {}", vm.spec.name));
    }
}
