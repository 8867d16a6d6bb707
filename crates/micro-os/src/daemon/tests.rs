//! The engine's logic around drivers — op locks, conflicts, exits, restarts with
//! backoff, recovery after a restart, what the collector reports — with the fake VM
//! driver: no root, no runc, no network.

use std::sync::Arc;
use std::time::Duration;

use micro_os_api::types::VmCreate;
use micro_os_core::{RestartPolicy, Vm, VmState};
use micro_os_vmm::fake::Fake;
use micro_os_vmm::VmDriver;

use super::engine::Engine;
use super::error::Class;
use crate::home::{Config, Home};

struct Bed {
    _dir: tempfile::TempDir,
    home: Home,
    fake: Arc<Fake>,
    engine: Arc<Engine>,
}

fn open(home: &Home, fake: &Arc<Fake>) -> Arc<Engine> {
    let f: Arc<dyn VmDriver> = fake.clone();
    Engine::open_with(home.clone(), Config::default(), move |_| vec![f]).unwrap()
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let home = Home { root: dir.path().to_path_buf() };
    // an image of the fake's VMs: only its record, the fake boots nothing
    let img = home.images().join("fake");
    std::fs::create_dir_all(img.join("rootfs")).unwrap();
    let meta = serde_json::json!({"name": "fake", "id": "sha256:0", "created_at": "2026-12-01T00:00:00Z",
        "size_bytes": 0, "layers": 0, "source": "test", "config": {}});
    std::fs::write(img.join("image.json"), meta.to_string()).unwrap();
    let fake = Arc::new(Fake::new());
    let engine = open(&home, &fake);
    Bed { _dir: dir, home, fake, engine }
}

fn req(name: &str, restart: Option<RestartPolicy>) -> VmCreate {
    VmCreate { name: name.into(), memory: 64, cpu: 0.5, image: Some("fake".into()), driver: None, restart }
}

impl Bed {
    async fn vm(&self, name: &str, restart: Option<RestartPolicy>) -> Vm {
        self.engine.create_vms(vec![req(name, restart)]).await.unwrap().remove(0)
    }

    /// Waits (polling) until the fake driver has seen `call`.
    async fn called(&self, call: &str) {
        for _ in 0..500 {
            if self.fake.calls().iter().any(|c| c == call) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the driver never saw {call:?}: {:?}", self.fake.calls());
    }

    async fn until(&self, id: &str, what: &str, done: impl Fn(&Vm) -> bool) -> Vm {
        self.engine
            .vms
            .wait_until(id, done, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{what}: {:?}", self.engine.find_vm(id)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_twice_is_a_conflict_and_stop_signals_the_driver() {
    let b = bed();
    // a policy that would restart it: a stop on request must still not
    let v = b.vm("a", Some(RestartPolicy::Always)).await;
    let running = b.engine.start_vm("a").await.unwrap();
    assert_eq!(running.state, VmState::Running);
    let again = b.engine.start_vm(&v.id).await.unwrap_err();
    assert_eq!(again.class(), Class::Conflict, "{again}");
    // no agent is connected: the stop falls back to SIGTERM, which ends the fake's process
    let stopped = b.engine.stop_vm("a", false, Some(1.0)).await.unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(b.fake.calls()[..2], ["start a".to_string(), "signal a Term".to_string()]);
    // stopped on request: no restart, and the host side is released
    b.called("release a").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.fake.calls().iter().filter(|c| c.starts_with("start")).count(), 1);
    assert_eq!(b.engine.find_vm("a").unwrap().state, VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_restart_backoff_cancels_the_restart() {
    let b = bed();
    let v = b.vm("backoff", Some(RestartPolicy::Always)).await;
    let pid = b.engine.start_vm("backoff").await.unwrap().pid.unwrap();
    // five restarts behind it: the next waits about 3 s
    b.engine.vms.update(&v.id, |v| v.restart_count = 5);
    b.fake.exit(pid, 1);
    b.until(&v.id, "down", |v| v.state == VmState::Stopped).await;
    let stopped = b.engine.stop_vm("backoff", false, None).await.unwrap();
    assert!(stopped.stop_requested);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(b.fake.calls().iter().filter(|c| c.starts_with("start")).count(), 1, "{:?}", b.fake.calls());
    // with nothing due, a stop of what is down is a conflict again
    let e = b.engine.stop_vm("backoff", false, None).await.unwrap_err();
    assert_eq!(e.class(), Class::Conflict, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_keeps_its_host_side() {
    let b = bed();
    let v = b.vm("kept", None).await;
    b.engine.start_vm("kept").await.unwrap();
    // a release that comes late, after the VM was started again, must not tear it down
    b.engine.release_if_stopped(&v.id).await;
    assert!(!b.fake.calls().iter().any(|c| c.starts_with("release")), "{:?}", b.fake.calls());
    b.engine.stop_vm("kept", true, None).await.unwrap();
    b.called("release kept").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_restarts_by_policy_until_its_limit() {
    let b = bed();
    let v = b.vm("crashy", Some(RestartPolicy::OnFailure { max: Some(2) })).await;
    let mut pid = b.engine.start_vm("crashy").await.unwrap().pid.unwrap();
    for n in 1..=2 {
        b.fake.exit(pid, 1);
        let v = b.until(&v.id, "restarted", |v| v.restart_count == n && v.state == VmState::Running).await;
        assert_ne!(v.pid, Some(pid), "a new process");
        pid = v.pid.unwrap();
    }
    b.fake.exit(pid, 1);
    let v = b.until(&v.id, "stays down past max", |v| v.state == VmState::Stopped).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = b.engine.find_vm(&v.id).unwrap();
    assert_eq!((v.state, v.restart_count, v.exit_code), (VmState::Stopped, 2, Some(1)));
    // the collector reports the VM's restarts (it used to say 0 for every VM)
    let pid = b.engine.start_vm("crashy").await.unwrap().pid.unwrap();
    let samples = tokio::task::spawn_blocking({
        let e = b.engine.clone();
        move || e.collect()
    })
    .await
    .unwrap();
    let s = samples.iter().find(|s| s.id == v.id).expect("the VM is sampled");
    assert_eq!(s.restarts, 2);
    b.fake.exit(pid, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_exit_of_a_replaced_process_changes_nothing() {
    let b = bed();
    let v = b.vm("late", None).await;
    let first = b.engine.start_vm("late").await.unwrap().pid.unwrap();
    b.fake.exit(first, 0);
    b.until(&v.id, "down", |v| v.state == VmState::Stopped).await;
    let second = b.engine.start_vm("late").await.unwrap().pid.unwrap();
    // the first process's exit arrives again (a stale watcher): the VM stays up
    super::supervisor::on_exit::<Vm, _>(&b.engine, &v.id, first, micro_os_vmm::Exit::code(9)).await;
    let now = b.engine.find_vm(&v.id).unwrap();
    assert_eq!((now.state, now.pid), (VmState::Running, Some(second)));
    b.fake.exit(second, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_one_vm_never_interleave() {
    let b = bed();
    b.vm("busy", None).await;
    b.fake.term_exits.store(false, std::sync::atomic::Ordering::Relaxed);
    b.engine.start_vm("busy").await.unwrap();
    // a stop that waits out its timeout holds the op lock; a pause meanwhile waits for it
    let (e1, e2) = (b.engine.clone(), b.engine.clone());
    let stop = tokio::spawn(async move { e1.stop_vm("busy", false, Some(0.5)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pause = tokio::spawn(async move { e2.pause_vm("busy", true).await });
    let stopped = stop.await.unwrap().unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    b.called("release busy").await;
    // the pause ran after the stop, so it finds a stopped VM and refuses
    let refused = pause.await.unwrap().unwrap_err();
    assert_eq!(refused.class(), Class::Conflict, "{refused}");
    let calls = b.fake.calls();
    assert_eq!(calls, ["start busy", "signal busy Term", "signal busy Kill", "release busy"], "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_adopts_what_survived_and_records_what_did_not() {
    let b = bed();
    let up = b.vm("survivor", None).await;
    let down = b.vm("gone", None).await;
    let pid = b.engine.start_vm("survivor").await.unwrap().pid.unwrap();
    b.engine.start_vm("gone").await.unwrap();
    // the daemon restarts: a new engine on the same home; only one process survived
    let fake = Arc::new(Fake::new());
    fake.alive.lock().unwrap().push(pid);
    let engine = open(&b.home, &fake);
    engine.recover_vms().await;
    let survivor = engine.find_vm(&up.id).unwrap();
    assert_eq!((survivor.state, survivor.pid), (VmState::Running, Some(pid)));
    let gone = engine.vms.wait_until(&down.id, |v| v.state == VmState::Stopped, Duration::from_secs(5)).await;
    assert!(gone.is_some(), "{:?}", engine.find_vm(&down.id));
    // nobody undid its network and cgroup while the daemon was down: recovery does
    let b2 =
        Bed { _dir: tempfile::tempdir().unwrap(), home: b.home.clone(), fake: fake.clone(), engine: engine.clone() };
    b2.called("release gone").await;
    assert!(!fake.calls().contains(&"release survivor".to_string()), "{:?}", fake.calls());
    let events = engine.store.events(Some(&up.id), 10).unwrap();
    assert!(events.iter().any(|e| e.action == "adopted"), "{events:?}");
    // the adopted process is supervised: its exit is recorded
    fake.exit(pid, 0);
    engine.vms.wait_until(&up.id, |v| v.state == VmState::Stopped, Duration::from_secs(5)).await.expect("exit seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_invalid_and_create_nothing() {
    let b = bed();
    let mut two = vec![req("ok-1", None), req("invalid-2", None)];
    let e = b.engine.create_vms(two.clone()).await.unwrap_err();
    assert_eq!(e.class(), Class::Invalid, "{e}");
    assert!(e.to_string().starts_with("vms[1] (\"invalid-2\"):"), "{e}");
    assert!(b.engine.find_vm("ok-1").is_err(), "all or nothing");
    two[1].name = "ok-1".into();
    let e = b.engine.create_vms(two).await.unwrap_err();
    assert_eq!(e.class(), Class::Invalid, "{e}");
    b.vm("taken", None).await;
    let e = b.engine.create_vms(vec![req("taken", None)]).await.unwrap_err();
    assert_eq!(e.class(), Class::Conflict, "{e}");
    let e = b.engine.start_vm("nope").await.unwrap_err();
    assert_eq!(e.class(), Class::NotFound, "{e}");
}
