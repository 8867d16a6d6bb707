//! One supervisor for every workload: it records how a container's or a VM's first
//! process ended, and restarts it by its restart policy with backoff and jitter. What is
//! particular to a kind — how it is launched, what its exit leaves behind — comes from
//! [`Kind`]; what is particular to a VM driver lives in `micro_os_vmm`.
//!
//! Invariant: an exit is recorded only for the process it belongs to (`pid` matches), so
//! a late exit of a replaced process never marks its successor down; a restart takes
//! the object's op lock and re-checks that nobody started or stopped it meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use micro_os_core::container::InvalidTransition;
use micro_os_core::{Container, ContainerState, RestartPolicy, Transition, Vm, VmState};
use micro_os_runtime::workload::Exit;

use super::error::{Error, Result};
use super::table::{Object, OpLocks, Table};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An object whose first process the supervisor watches.
pub trait Supervised: Object {
    /// Whether the object's state machine allows `t` now.
    fn allows(&self, t: Transition) -> Result<(), InvalidTransition>;
    fn pid(&self) -> Option<u32>;
    fn exit_code(&self) -> Option<i32>;
    /// Marks the object down after its process ended.
    fn record_exit(&mut self, exit: &Exit);
    /// Down after an exit (and not started again since).
    fn is_down(&self) -> bool;
    fn stop_requested(&self) -> bool;
    fn request_stop(&mut self);
    /// Still the same run as `before` (same process, same state)?
    fn same_run(&self, before: &Self) -> bool;
    /// Marks the object frozen (paused) or thawed.
    fn mark_frozen(&mut self, frozen: bool);
    fn restart_policy(&self) -> (&RestartPolicy, u32);
    fn count_restart(&mut self);
    /// The event an exit leaves: its action and detail.
    fn exit_event(exit: &Exit) -> (&'static str, String);
}

/// How one kind of object is launched again, and what its exit leaves to undo.
pub trait Kind<T: Supervised>: Locks + Send + Sync + 'static {
    fn table(&self) -> &Table<T>;
    /// Launches the object again; the caller holds its op lock.
    fn relaunch<'a>(self: &'a Arc<Self>, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Called once an exit is recorded, before any restart.
    fn after_exit(self: &Arc<Self>, _id: &str) {}
}

/// Who holds the op locks of every kind.
pub trait Locks {
    fn ops(&self) -> &OpLocks;
}

/// Takes the op lock of the object `key` names and checks that `t` is allowed: the
/// object as it is once the lock is held, and the guard. Every lifecycle action starts so.
pub async fn begin<T: Supervised>(
    table: &Table<T>,
    ops: &OpLocks,
    key: &str,
    t: Transition,
) -> Result<(T, tokio::sync::OwnedMutexGuard<()>)> {
    let (o, guard) = locked(table, ops, key).await?;
    o.allows(t).map_err(|e| Error::conflict(e.to_string()))?;
    Ok((o, guard))
}

/// A stop of an object that is down with a restart due (its backoff running) cancels the
/// restart, as `docker stop` does for a restarting container; `None` when none is due.
pub async fn cancel_restart<T: Supervised>(table: &Table<T>, ops: &OpLocks, key: &str) -> Result<Option<T>> {
    let (o, _g) = locked(table, ops, key).await?;
    let (policy, count) = o.restart_policy();
    let due = o.is_down() && !o.stop_requested() && policy.should_restart(o.exit_code().unwrap_or(0), count);
    if !due {
        return Ok(None);
    }
    table.update(o.id(), |o| o.request_stop());
    table.persist(o.id(), "restart-cancelled", "stopped during the restart backoff")?;
    Ok(table.get(o.id()))
}

/// Records that `before`'s process was frozen or thawed — only if it is still the same run:
/// one that exited meanwhile stays down, and the caller hears it as a conflict.
pub fn record_freeze<T: Supervised>(table: &Table<T>, before: &T, frozen: bool) -> Result<T> {
    let mut done = false;
    table.update(before.id(), |o| {
        if o.same_run(before) {
            o.mark_frozen(frozen);
            done = true;
        }
    });
    if !done {
        let verb = if frozen { "pause" } else { "resume" };
        return Err(Error::conflict(format!("cannot {verb} {} {:?}: it ended meanwhile", T::KIND, before.name())));
    }
    table.persist(before.id(), if frozen { "paused" } else { "resumed" }, "")?;
    table.find(before.id())
}

/// Takes the op lock of the object `key` names: the object as it is then, and the guard.
pub async fn locked<T: Object>(
    table: &Table<T>,
    ops: &OpLocks,
    key: &str,
) -> Result<(T, tokio::sync::OwnedMutexGuard<()>)> {
    let id = table.find(key)?.id().to_string();
    let guard = ops.of(&id).lock_owned().await;
    Ok((table.find(&id)?, guard))
}

/// Watches `exit` (the process `pid` of object `id`) and records it when it resolves.
pub fn watch<T: Supervised, K: Kind<T>>(k: &Arc<K>, id: &str, pid: u32, exit: BoxFuture<'static, Exit>) {
    let (k, id) = (k.clone(), id.to_string());
    tokio::spawn(async move {
        let exit = exit.await;
        on_exit::<T, K>(&k, &id, pid, exit).await;
    });
}

/// Records the exit of process `pid` of object `id` and restarts it if its policy says so.
pub async fn on_exit<T: Supervised, K: Kind<T>>(k: &Arc<K>, id: &str, pid: u32, exit: Exit) {
    let mut recorded = false;
    let Some(o) = k.table().update(id, |o| {
        if o.pid() == Some(pid) {
            o.record_exit(&exit);
            recorded = true;
        }
    }) else {
        return;
    };
    if !recorded {
        return;
    }
    let (action, detail) = T::exit_event(&exit);
    // an observed fact, not an acknowledged change: committed (it survives a kill -9 of
    // the daemon) without an fsync on the way to the waiters; after a power cut the
    // shim's status.json (or its absence) tells the exit again
    if let Err(e) = k.table().record(id, action, detail) {
        tracing::error!("record exit of {} {}: {e}", T::KIND, o.name());
    }
    k.after_exit(id);
    let (policy, count) = o.restart_policy();
    if o.stop_requested() || !policy.should_restart(exit.code, count) {
        return;
    }
    let delay = micro_os_core::restart::backoff(count, Utc::now().timestamp_subsec_nanos() as u64);
    let (k, id) = (k.clone(), id.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if k.table().get(&id).is_none() {
            return;
        }
        let lock = k.ops().of(&id);
        let _g = lock.lock().await;
        let Some(o) = k.table().get(&id) else { return };
        if !o.is_down() || o.stop_requested() {
            return;
        }
        k.table().update(&id, |o| o.count_restart());
        if let Err(e) = k.relaunch(&id).await {
            tracing::warn!("restart {} {}: {e}", T::KIND, o.name());
        }
    });
}

/// What containers and VMs keep alike about their process and restarts.
macro_rules! supervised_fields {
    () => {
        fn allows(&self, t: Transition) -> Result<(), InvalidTransition> {
            self.state.check(&self.spec.name, t)
        }
        fn pid(&self) -> Option<u32> {
            self.pid
        }
        fn exit_code(&self) -> Option<i32> {
            self.exit_code
        }
        fn stop_requested(&self) -> bool {
            self.stop_requested
        }
        fn request_stop(&mut self) {
            self.stop_requested = true;
        }
        fn same_run(&self, before: &Self) -> bool {
            self.pid == before.pid && self.state == before.state
        }
        fn restart_policy(&self) -> (&RestartPolicy, u32) {
            (&self.spec.restart, self.restart_count)
        }
        fn count_restart(&mut self) {
            self.restart_count += 1;
        }
    };
}

impl Supervised for Container {
    supervised_fields!();
    fn mark_frozen(&mut self, frozen: bool) {
        self.state = if frozen { ContainerState::Paused } else { ContainerState::Running };
    }
    fn record_exit(&mut self, exit: &Exit) {
        self.state = ContainerState::Exited;
        self.pid = None;
        self.exit_code = Some(exit.code);
        self.oom_killed = exit.oom_killed;
        self.finished_at = Some(exit.finished_at);
        if exit.error.is_some() {
            self.error = exit.error.clone();
        }
    }
    fn is_down(&self) -> bool {
        self.state == ContainerState::Exited
    }
    fn exit_event(exit: &Exit) -> (&'static str, String) {
        let detail = format!("exit code {}{}", exit.code, if exit.oom_killed { ", OOM-killed" } else { "" });
        (if exit.oom_killed { "oom-killed" } else { "exited" }, detail)
    }
}

impl Supervised for Vm {
    supervised_fields!();
    fn mark_frozen(&mut self, frozen: bool) {
        self.state = if frozen { VmState::Paused } else { VmState::Running };
        // a paused agent cannot report: the silence it leaves behind is not its fault
        if !frozen && self.last_report.is_some() {
            self.last_report = Some(Utc::now());
        }
    }
    fn record_exit(&mut self, exit: &Exit) {
        self.state = VmState::Stopped;
        self.pid = None;
        self.agent = micro_os_core::AgentStatus::Unreachable;
        self.exit_code = Some(exit.code);
        self.oom_killed = exit.oom_killed;
        self.stopped_at = Some(exit.finished_at);
        if exit.error.is_some() {
            self.error = exit.error.clone();
        }
    }
    fn is_down(&self) -> bool {
        self.state == VmState::Stopped
    }
    fn exit_event(exit: &Exit) -> (&'static str, String) {
        ("stopped", format!("agent exit code {}", exit.code))
    }
}
