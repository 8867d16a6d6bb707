//! What the fuzz targets share: a jail for the image targets (a scratch directory with a
//! canary outside the root they unpack into, checked after every input) and a devnet
//! chain node for the chain and RPC targets.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A scratch directory for one target, in memory when the machine has /dev/shm:
///
/// ```text
/// base/            root-owned, 0755
///   outside/       canary (a file) and dir/ (empty): must stay as they are
///   in/            the unprivileged user's: what the target may write
/// ```
///
/// Run as root, the code under test runs with the effective uid and gid of `nobody`
/// (65534), so a bug that escapes `in/` cannot harm the machine fuzzing it; the checks run
/// as root again.
pub struct Jail {
    pub base: PathBuf,
    canary_ino: u64,
    root: bool,
}

pub const NOBODY: u32 = 65534;
const CANARY: &[u8] = b"canary: nothing may write here\n";

impl Jail {
    pub fn new(name: &str) -> Jail {
        let tmp = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let base = tmp.join(format!("micro-os-fuzz-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("outside/dir")).unwrap();
        fs::create_dir_all(base.join("in")).unwrap();
        fs::write(base.join("outside/canary"), CANARY).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::lchown(base.join("in"), Some(NOBODY), Some(NOBODY)).unwrap();
            // root's supplementary groups would let `nobody` write group-writable files
            assert_eq!(unsafe { libc::setgroups(0, std::ptr::null()) }, 0, "setgroups");
            // a panic under `as_nobody` must still write its crash artifact as root
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                unsafe {
                    libc::seteuid(0);
                    libc::setegid(0);
                }
                prev(info)
            }));
        }
        remove_at_exit(&base);
        let canary_ino = fs::metadata(base.join("outside/canary")).unwrap().ino();
        Jail { base, canary_ino, root }
    }

    /// `in/`, where the target writes.
    pub fn inside(&self) -> PathBuf {
        self.base.join("in")
    }

    /// Empties `in/` (as root: the code under test may have left modes 000 behind).
    pub fn reset(&self) {
        let inside = self.inside();
        if let Ok(rd) = fs::read_dir(&inside) {
            for e in rd.flatten() {
                let p = e.path();
                make_removable(&p);
                let _ =
                    if e.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            }
        }
        if !inside.is_dir() {
            fs::create_dir_all(&inside).unwrap();
            if self.root {
                std::os::unix::fs::lchown(&inside, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
    }

    /// Makes `path` (a new file or directory, and what is below it) the unprivileged user's.
    pub fn give(&self, path: &Path) {
        if !self.root {
            return;
        }
        std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        if fs::symlink_metadata(path).unwrap().is_dir() {
            for e in fs::read_dir(path).unwrap().flatten() {
                self.give(&e.path());
            }
        }
    }

    /// Runs `f` as `nobody` when the process is root.
    pub fn as_nobody<R>(&self, f: impl FnOnce() -> R) -> R {
        if !self.root {
            return f();
        }
        unsafe {
            assert_eq!(libc::setegid(NOBODY), 0, "setegid");
            assert_eq!(libc::seteuid(NOBODY), 0, "seteuid");
        }
        let r = f();
        unsafe {
            assert_eq!(libc::seteuid(0), 0, "seteuid back");
            assert_eq!(libc::setegid(0), 0, "setegid back");
        }
        r
    }

    /// Panics unless `base/` holds exactly `in/` and `outside/` and `outside/` is as made:
    /// the same canary file (contents, inode, one link, mode) and an empty `dir/`.
    /// `in_names` are the names `in/` may hold.
    pub fn check(&self, in_names: &[&str]) {
        assert_eq!(names(&self.base), ["in", "outside"], "something was written next to the root");
        assert_eq!(names(&self.base.join("outside")), ["canary", "dir"], "something was written outside the root");
        assert!(names(&self.base.join("outside/dir")).is_empty(), "something was written outside the root");
        let canary = self.base.join("outside/canary");
        let m = fs::symlink_metadata(&canary).expect("the canary is gone");
        assert!(m.is_file(), "the canary was replaced");
        assert_eq!(m.ino(), self.canary_ino, "the canary was replaced");
        assert_eq!(m.nlink(), 1, "a hard link to the canary was made");
        assert_eq!(m.mode() & 0o7777, 0o644, "the canary's mode changed");
        assert_eq!(m.uid(), unsafe { libc::geteuid() }, "the canary's owner changed");
        assert_eq!(fs::read(&canary).unwrap(), CANARY, "the canary was written");
        for n in names(&self.inside()) {
            assert!(in_names.contains(&n.as_str()), "unexpected {n:?} in the jail");
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is gone: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Gives every directory below `p` a mode its owner can list and empty (root needs no
/// permission, but an unprivileged run of the targets does).
fn make_removable(p: &Path) {
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    make_removable(&e.path());
                }
            }
        }
    }
}

/// A devnet node in a scratch directory with a funded wallet (a few mature coinbases) and
/// no p2p: the chain and RPC targets feed it.
pub struct Chain {
    pub ctx: micro_os_node::rpc::Ctx,
    pub coinbases: Vec<bitcoin::OutPoint>,
    _dir: tempfile::TempDir,
}

impl Chain {
    pub fn new() -> Chain {
        use micro_os_node::node::{Node, Options};
        use serde_json::json;
        use std::sync::Arc;
        let dir = tempfile::Builder::new().prefix("micro-os-fuzz-chain-").tempdir_in(shm()).unwrap();
        remove_at_exit(dir.path());
        let node = Node::open(dir.path(), micro_os_chain::params::Params::devnet(), Options::default()).unwrap();
        let ctx =
            micro_os_node::rpc::Ctx { node: Arc::new(node), shutdown: Arc::new(tokio::sync::Notify::new()), p2p: None };
        let call = |method: &str, params: serde_json::Value| {
            let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params});
            let r = micro_os_node::rpc::handle(&ctx, body.to_string().as_bytes());
            assert_eq!(r.status, 200, "{method}: {}", r.body);
            r.body["result"].clone()
        };
        let addr = call("getnewaddress", json!([]));
        call("generatetoaddress", json!([12, addr]));
        let mut coinbases = Vec::new();
        for h in 1..=12 {
            let hash = call("getblockhash", json!([h]));
            let block = call("getblock", json!([hash, 1]));
            let txid: bitcoin::Txid = block["tx"][0].as_str().unwrap().parse().unwrap();
            coinbases.push(bitcoin::OutPoint { txid, vout: 0 });
        }
        Chain { ctx, coinbases, _dir: dir }
    }

    pub fn node(&self) -> &micro_os_node::node::Node {
        &self.ctx.node
    }
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

fn shm() -> PathBuf {
    if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// Scratch directories removed when the process exits (libFuzzer ends with `exit`, which
/// drops no static).
static SCRATCH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn remove_at_exit(p: &Path) {
    static REGISTER: OnceLock<()> = OnceLock::new();
    REGISTER.get_or_init(|| {
        extern "C" fn cleanup() {
            if let Ok(list) = SCRATCH.lock() {
                for p in list.iter() {
                    make_removable(p);
                    let _ = fs::remove_dir_all(p);
                }
            }
        }
        unsafe { libc::atexit(cleanup) };
    });
    SCRATCH.lock().unwrap().push(p.to_path_buf());
}
