//! Images without a registry: a root filesystem plus the image's default process
//! settings, stored as `<images>/<name>/{rootfs/,image.json}`.
//!
//! Images come from two places: the built-in `busybox` base, built here from Debian's
//! busybox-static, and files — an OCI image layout (directory or tar) or a `docker save`
//! tarball — whose layers are applied in order with OCI whiteouts. Builds and imports
//! happen in a scratch directory that is renamed into place at the end, so an image is
//! either complete or absent.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Context;
use crate::{Error, Result};

/// The process settings an image gives a container unless the container overrides them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// sha256 of what the image was made from (manifest or base binary).
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub size_bytes: u64,
    pub layers: usize,
    /// Where it came from: `built-in busybox (/bin/busybox)`, `import /path/x.tar`.
    pub source: String,
    pub config: ImageConfig,
}

/// One step of a long image operation, for progress bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: String,
    pub current: u64,
    pub total: u64,
}

pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress);

pub fn validate_image_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "image name {name:?} is not valid (use letters, digits, '-', '_', '.' or ':', e.g. busybox or node:1.2)"
        )))
    }
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).context(|| format!("create {}", root.display()))?;
        Ok(ImageStore { root })
    }

    /// Image directories replace ':' (a tag separator) by '@', because overlayfs reads ':'
    /// in a lower directory's path as a list separator.
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name.replace(':', "@"))
    }

    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.dir(name).join("rootfs")
    }

    pub fn get(&self, name: &str) -> Result<Image> {
        if validate_image_name(name).is_err() {
            return Err(Error::ImageNotFound(name.into()));
        }
        let meta = self.dir(name).join("image.json");
        let text = match fs::read_to_string(&meta) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::ImageNotFound(name.into())),
            Err(e) => return Err(e).context(|| format!("read {}", meta.display())),
        };
        serde_json::from_str(&text).map_err(|e| Error::BadImage { path: meta, msg: e.to_string() })
    }

    pub fn exists(&self, name: &str) -> bool {
        self.get(name).is_ok()
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).context(|| format!("read {}", self.root.display()))? {
            let name = entry.context(|| "read image dir".into())?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(img) = self.get(&name.replace('@', ":")) {
                out.push(img);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.get(name)?;
        let dir = self.dir(name);
        // hide it first (atomic), then delete at leisure
        let trash = self.root.join(format!(".rm-{}-{}", name.replace(':', "@"), std::process::id()));
        fs::rename(&dir, &trash).context(|| format!("remove {}", dir.display()))?;
        fs::remove_dir_all(&trash).context(|| format!("remove {}", trash.display()))
    }

    fn scratch(&self, name: &str) -> Result<PathBuf> {
        let s = self.root.join(format!(
            ".tmp-{}-{}-{}",
            name.replace(':', "@"),
            std::process::id(),
            micro_os_core::id::new_id()
        ));
        fs::create_dir_all(s.join("rootfs")).context(|| format!("create {}", s.display()))?;
        Ok(s)
    }

    /// Moves a finished scratch directory into place, writing `image.json` last.
    fn commit(&self, scratch: &Path, mut image: Image) -> Result<Image> {
        image.size_bytes = dir_size(&scratch.join("rootfs"));
        let meta = scratch.join("image.json");
        fs::write(&meta, serde_json::to_vec_pretty(&image).expect("image serialises"))
            .context(|| format!("write {}", meta.display()))?;
        File::open(&meta).and_then(|f| f.sync_all()).context(|| format!("sync {}", meta.display()))?;
        let dest = self.dir(&image.name);
        if dest.exists() {
            let _ = fs::remove_dir_all(scratch);
            return Err(Error::ImageExists(image.name));
        }
        fs::rename(scratch, &dest).context(|| format!("rename into {}", dest.display()))?;
        Ok(image)
    }

    /// Builds the base image `name` from a static busybox binary: every applet as a
    /// symlink, a minimal /etc, and `sh` as the default command.
    pub fn build_busybox(&self, name: &str, busybox: &Path, progress: ProgressFn<'_>) -> Result<Image> {
        self.build_base(name, busybox, None, progress)
    }

    /// Builds `name` as the busybox base plus the VM agent at `/sbin/micro-os-agent`
    /// (stripped of debug info) with the shared libraries `ldd` lists for it: the rootfs
    /// of VMs. The agent is `micro-os-agent` next to `exe` (the running `micro-os`) or
    /// `$MICRO_OS_AGENT` (`Companion::binary`).
    pub fn build_agent_base(&self, name: &str, busybox: &Path, exe: &Path, progress: ProgressFn<'_>) -> Result<Image> {
        self.build_with(name, busybox, exe, &AGENT, progress)
    }

    /// Builds `name` as the busybox base plus a companion binary of micro-os (`AGENT`,
    /// `NODE`), which is also the image's command.
    pub fn build_with(
        &self,
        name: &str,
        busybox: &Path,
        exe: &Path,
        c: &Companion,
        progress: ProgressFn<'_>,
    ) -> Result<Image> {
        let bin = c.binary(exe)?;
        self.build_base(name, busybox, Some((&bin, c)), progress)
    }

    fn build_base(
        &self,
        name: &str,
        busybox: &Path,
        extra: Option<(&Path, &Companion)>,
        progress: ProgressFn<'_>,
    ) -> Result<Image> {
        validate_image_name(name)?;
        if self.exists(name) {
            return Err(Error::ImageExists(name.into()));
        }
        let bin = fs::read(busybox).context(|| {
            format!("read {} (install Debian's busybox-static: apt-get install busybox-static)", busybox.display())
        })?;
        let scratch = self.scratch(name)?;
        let result = (|| {
            let rootfs = scratch.join("rootfs");
            for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var/www", "home", "usr/bin"] {
                fs::create_dir_all(rootfs.join(d)).context(|| format!("create {d}"))?;
            }
            let target = rootfs.join("bin/busybox");
            fs::write(&target, &bin).context(|| format!("write {}", target.display()))?;
            set_mode(&target, 0o755)?;
            let list = std::process::Command::new(busybox)
                .arg("--list")
                .output()
                .context(|| format!("run {} --list", busybox.display()))?;
            let applets: Vec<String> =
                String::from_utf8_lossy(&list.stdout).lines().map(str::to_string).filter(|a| a != "busybox").collect();
            let total = applets.len() as u64;
            for (i, applet) in applets.iter().enumerate() {
                let link = rootfs.join("bin").join(applet);
                std::os::unix::fs::symlink("busybox", &link).context(|| format!("link {}", link.display()))?;
                if i % 64 == 0 || i + 1 == applets.len() {
                    progress(Progress { stage: "linking applets".into(), current: i as u64 + 1, total });
                }
            }
            let etc = rootfs.join("etc");
            fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
                .context(|| "write /etc/passwd".into())?;
            fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n").context(|| "write /etc/group".into())?;
            fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")
                .context(|| "write /etc/hosts".into())?;
            fs::write(etc.join("resolv.conf"), "").context(|| "write /etc/resolv.conf".into())?;
            set_mode(&rootfs.join("tmp"), 0o1777)?;
            let mut cmd = vec!["sh".to_string()];
            if let Some((path, c)) = extra {
                let stage = format!("adding {}", c.what);
                progress(Progress { stage: stage.clone(), current: 0, total: 1 });
                add_binary(&rootfs, path, c.in_image)?;
                cmd = vec![format!("/{}", c.in_image)];
                progress(Progress { stage, current: 1, total: 1 });
            }
            Ok(Image {
                name: name.into(),
                id: base_id(&bin, extra.map(|(p, _)| p))?,
                created_at: Utc::now(),
                size_bytes: 0,
                layers: 1,
                source: match extra {
                    None => format!("built-in busybox ({})", busybox.display()),
                    Some((p, c)) => format!("built-in busybox + {} ({})", c.name, p.display()),
                },
                config: plain_config(cmd),
            })
        })();
        match result {
            Ok(img) => self.commit(&scratch, img),
            Err(e) => {
                let _ = fs::remove_dir_all(&scratch);
                Err(e)
            }
        }
    }

    /// Imports an OCI image layout (directory or tar) or a `docker save` tarball.
    /// `name` defaults to the archive's own tag.
    pub fn import(&self, path: &Path, name: Option<&str>, progress: ProgressFn<'_>) -> Result<Image> {
        self.import_as(path, &path.display().to_string(), name, progress)
    }

    /// [`ImageStore::import`] of a file that stands for `origin` (an upload spooled to
    /// `path`): errors and the image's source name `origin`.
    pub fn import_as(&self, path: &Path, origin: &str, name: Option<&str>, progress: ProgressFn<'_>) -> Result<Image> {
        let shown = PathBuf::from(origin);
        if let Some(n) = name {
            validate_image_name(n)?;
            if self.exists(n) {
                return Err(Error::ImageExists(n.into()));
            }
        }
        let meta = fs::metadata(path).context(|| format!("open {}", path.display()))?;
        let scratch = self.scratch(name.unwrap_or("import"))?;
        let result = (|| {
            let src = if meta.is_dir() {
                path.to_path_buf()
            } else {
                let unpacked = scratch.join("archive");
                fs::create_dir_all(&unpacked).context(|| format!("create {}", unpacked.display()))?;
                let total = meta.len();
                let file = File::open(path).context(|| format!("open {}", path.display()))?;
                let reader =
                    ProgressReader { inner: file, read: 0, total, stage: "reading archive", progress: &mut *progress };
                let mut ar = tar::Archive::new(maybe_gzip(BufReader::new(reader))?);
                ar.unpack(&unpacked).map_err(|e| Error::BadImage {
                    path: shown.clone(),
                    msg: format!("not a tar archive or directory: {e}"),
                })?;
                unpacked
            };
            // a tarball without an image manifest is a root filesystem: one layer
            let rootfs_tar = !meta.is_dir()
                && !["manifest.json", "index.json"].iter().any(|f| src.join(f).symlink_metadata().is_ok());
            let plan = match rootfs_tar {
                true => Plan {
                    layers: vec![path.to_path_buf()],
                    config: plain_config(shell_if_any(&src)),
                    tag: None,
                    id: file_sha256(path)?,
                },
                false => read_plan(&src).map_err(|msg| Error::BadImage { path: shown.clone(), msg })?,
            };
            let final_name = match name {
                Some(n) => n.to_string(),
                None => plan.tag.clone().ok_or_else(|| Error::BadImage {
                    path: shown.clone(),
                    msg: match rootfs_tar {
                        true => "a root filesystem tarball names no image (give one with --name)".into(),
                        false => "the archive names no image (give one with --name)".into(),
                    },
                })?,
            };
            validate_image_name(&final_name)?;
            if self.exists(&final_name) {
                return Err(Error::ImageExists(final_name));
            }
            let rootfs = scratch.join("rootfs");
            let n = plan.layers.len();
            for (i, layer) in plan.layers.iter().enumerate() {
                let f = File::open(layer).map_err(|e| Error::BadImage {
                    path: shown.clone(),
                    msg: format!("layer {} is missing: {e}", layer.display()),
                })?;
                let total = f.metadata().map(|m| m.len()).unwrap_or(0);
                let stage = format!("applying layer {}/{}", i + 1, n);
                progress(Progress { stage: stage.clone(), current: 0, total });
                let reader = ProgressReader { inner: f, read: 0, total, stage: &stage, progress: &mut *progress };
                apply_layer(&rootfs, maybe_gzip(BufReader::new(reader))?)
                    .map_err(|e| Error::BadImage { path: layer.clone(), msg: error_chain(&e) })?;
                progress(Progress { stage, current: total, total });
            }
            let _ = fs::remove_dir_all(scratch.join("archive"));
            Ok(Image {
                name: final_name,
                id: plan.id,
                created_at: Utc::now(),
                size_bytes: 0,
                layers: n,
                source: match rootfs_tar {
                    true => format!("root filesystem {origin}"),
                    false => format!("import {origin}"),
                },
                config: plan.config,
            })
        })();
        match result {
            Ok(img) => self.commit(&scratch, img),
            Err(e) => {
                let _ = fs::remove_dir_all(&scratch);
                Err(e)
            }
        }
    }
}

/// The config of an image micro-os made itself: `cmd`, the usual PATH, `/` as workdir.
fn plain_config(cmd: Vec<String>) -> ImageConfig {
    ImageConfig {
        cmd,
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        workdir: "/".into(),
        ..Default::default()
    }
}

/// `sh` when the root `root` has one, else no command.
fn shell_if_any(root: &Path) -> Vec<String> {
    if root.join("bin/sh").exists() {
        vec!["sh".into()]
    } else {
        Vec::new()
    }
}

/// Copies a dynamically linked binary into `rootfs` at `dest` with every library `ldd`
/// lists, at the same paths, so it runs inside a busybox root.
/// A binary of micro-os that goes into a built-in image: found next to `micro-os`, or
/// where its environment variable says.
#[derive(Debug, Clone, Copy)]
pub struct Companion {
    /// What it is, for messages.
    pub what: &'static str,
    /// Its file name, next to `micro-os`.
    pub name: &'static str,
    /// The environment variable that names it elsewhere.
    pub env: &'static str,
    /// Where an image holds it.
    pub in_image: &'static str,
    /// How to get it, for the message when it is missing.
    pub install: &'static str,
    /// The npm package that carries it (found in `npm root -g`), for binaries from npm.
    pub npm: Option<&'static str>,
}

/// The VM agent (the first process of every VM).
pub const AGENT: Companion = Companion {
    what: "the VM agent",
    name: AGENT_NAME,
    env: "MICRO_OS_AGENT",
    in_image: AGENT_IN_IMAGE,
    install: "install micro-os-agent beside micro-os, or build it: cargo build -p micro-os-agent",
    npm: None,
};
/// The reference chain's node.
pub const NODE: Companion = Companion {
    what: "the chain node",
    name: "micro-os-node",
    env: "MICRO_OS_NODE",
    in_image: "usr/bin/micro-os-node",
    install: "install micro-os-node beside micro-os, or build it: cargo build -p micro-os-node",
    npm: None,
};
/// anvil, the Ethereum development node of Foundry, from npm (the `ethereum-dev` template).
pub const ANVIL: Companion = Companion {
    what: "anvil (Foundry's Ethereum development node)",
    name: "anvil",
    env: "MICRO_OS_ANVIL",
    in_image: "usr/bin/anvil",
    install: "install it: npm install -g @foundry-rs/anvil-linux-amd64",
    npm: Some("@foundry-rs/anvil-linux-amd64/bin/anvil"),
};
/// The agent's name, next to `micro-os`.
pub const AGENT_NAME: &str = "micro-os-agent";
/// Where a VM image holds the agent.
pub const AGENT_IN_IMAGE: &str = "sbin/micro-os-agent";

impl Companion {
    /// Its binary: `$ENV` when set, else next to `exe` (the running `micro-os`).
    pub fn binary(&self, exe: &Path) -> Result<PathBuf> {
        self.find(exe, std::env::var_os(self.env).map(PathBuf::from))
    }

    /// Its binary: `from_env` when given, else next to `exe`, else (from npm) in the global
    /// `node_modules`.
    pub fn find(&self, exe: &Path, from_env: Option<PathBuf>) -> Result<PathBuf> {
        let beside = exe.parent().unwrap_or(Path::new("/")).join(self.name);
        let path = from_env.clone().unwrap_or_else(|| beside.clone());
        if path.is_file() {
            return Ok(path);
        }
        if let (Some(pkg), None) = (self.npm, &from_env) {
            let root = std::process::Command::new("npm").args(["root", "-g"]).output();
            if let Some(out) = root.ok().filter(|o| o.status.success()) {
                let p = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join(pkg);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(Error::CompanionMissing { what: self.what, install: self.install, env: self.env, beside, from_env })
    }
}

/// The id of a built-in image: busybox's bytes and, for a VM image, the agent's (the image
/// is what the agent is: a rebuilt agent makes another image).
fn base_id(busybox: &[u8], agent: Option<&Path>) -> Result<String> {
    let mut id = Sha256::new();
    id.update(busybox);
    if let Some(agent) = agent {
        id.update(fs::read(agent).context(|| format!("read {}", agent.display()))?);
    }
    Ok(hex::encode(id.finalize()))
}

impl ImageStore {
    /// Whether the built-in VM image `name` was built from another agent (or busybox) than
    /// the ones this binary would use now: after an upgrade, its VMs would run the old agent.
    pub fn agent_base_is_stale(&self, name: &str, busybox: &Path, exe: &Path) -> Result<bool> {
        self.is_stale(name, busybox, exe, &AGENT)
    }

    /// Whether the built-in image `name` holds another build of `c` (or busybox) than the
    /// one this binary would use now.
    pub fn is_stale(&self, name: &str, busybox: &Path, exe: &Path, c: &Companion) -> Result<bool> {
        let image = self.get(name)?;
        let agent = c.binary(exe)?;
        let bin = fs::read(busybox).context(|| format!("read {}", busybox.display()))?;
        Ok(image.id != base_id(&bin, Some(&agent))?)
    }
}

/// Puts `bin` at `dest` in `rootfs` with the libraries it links to. `strip` (binutils)
/// drops its debug info when it can (a release build carries some); otherwise the binary
/// goes in as it is.
fn add_binary(rootfs: &Path, bin: &Path, dest: &str) -> Result<()> {
    let target = rootfs.join(dest);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))?;
    }
    let stripped = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&target)
        .arg(bin)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // else a hard link when on the same filesystem (the binary is large), a copy otherwise
    if !stripped && fs::hard_link(bin, &target).is_err() {
        fs::copy(bin, &target).context(|| format!("copy {} into the image", bin.display()))?;
    }
    set_mode(&target, 0o755)?;
    let out = std::process::Command::new("ldd").arg(bin).output().context(|| "run ldd".into())?;
    let text = String::from_utf8_lossy(&out.stdout);
    // lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    for lib in text.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))) {
        let src = Path::new(lib);
        let dst = rootfs.join(lib.trim_start_matches('/'));
        if dst.exists() {
            continue;
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))?;
        }
        fs::copy(src, &dst).context(|| format!("copy {lib} into the image"))?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).context(|| format!("chmod {}", p.display()))
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

struct ProgressReader<'a, R> {
    inner: R,
    read: u64,
    total: u64,
    stage: &'a str,
    progress: ProgressFn<'a>,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.read >> 20;
        self.read += n as u64;
        if self.read >> 20 != before || n == 0 {
            (self.progress)(Progress {
                stage: self.stage.into(),
                current: self.read.min(self.total),
                total: self.total,
            });
        }
        Ok(n)
    }
}

/// Wraps `r` in a gzip decoder when it starts with the gzip magic.
fn maybe_gzip<'a, R: io::BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf().context(|| "read archive".into())?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::GzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// What to apply, in order, and the image's settings.
struct Plan {
    layers: Vec<PathBuf>,
    config: ImageConfig,
    tag: Option<String>,
    id: String,
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize, Default)]
struct ConfigInner {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    workdir: Option<String>,
}

impl From<ConfigFile> for ImageConfig {
    fn from(c: ConfigFile) -> Self {
        let c = c.config.unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            workdir: c.workdir.unwrap_or_default(),
        }
    }
}

/// Short image name from a tag such as `docker.io/library/alpine:3.19` → `alpine:3.19`.
fn short_tag(tag: &str) -> String {
    tag.rsplit('/').next().unwrap_or(tag).to_string()
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    let text = fs::read(p).map_err(|e| format!("{} is missing: {e}", p.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not valid: {e}", p.display()))
}

fn blob(root: &Path, digest: &str) -> Result<PathBuf, String> {
    let (alg, hex) = digest.split_once(':').ok_or_else(|| format!("digest {digest:?} is malformed"))?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || alg.contains('/') || alg.is_empty() || alg.starts_with('.') {
        return Err(format!("digest {digest:?} is malformed"));
    }
    within(root, &root.join("blobs").join(alg).join(hex))
}

/// The hex SHA-256 of a file's content.
fn file_sha256(p: &Path) -> Result<String> {
    let mut f = File::open(p).context(|| format!("open {}", p.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).context(|| format!("read {}", p.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// `p`, resolved, when it stays inside the archive `root`: an archive's manifest, config,
/// index or layer may be a symlink, and one that leads out (to `/etc/shadow`, say) would
/// make the daemon read a host file into an image.
fn within(root: &Path, p: &Path) -> Result<PathBuf, String> {
    let top = fs::canonicalize(root).map_err(|e| format!("{} cannot be read: {e}", root.display()))?;
    let rel = p.strip_prefix(root).unwrap_or(p).display().to_string();
    let real = fs::canonicalize(p).map_err(|e| format!("{rel} is missing: {e}"))?;
    if !real.starts_with(&top) {
        return Err(format!("{rel} is a link that leads out of the archive (refused)"));
    }
    Ok(real)
}

fn read_plan(root: &Path) -> Result<Plan, String> {
    let docker = root.join("manifest.json");
    if docker.symlink_metadata().is_ok() {
        let docker = within(root, &docker)?;
        let manifests: Vec<DockerManifest> = read_json(&docker)?;
        let m = manifests.into_iter().next().ok_or("manifest.json lists no image")?;
        let config_path = safe_join(root, &m.config)?;
        let config: ConfigFile = read_json(&config_path)?;
        let raw = fs::read(&config_path).unwrap_or_default();
        return Ok(Plan {
            layers: m.layers.iter().map(|l| safe_join(root, l)).collect::<Result<_, _>>()?,
            config: config.into(),
            tag: m.repo_tags.and_then(|t| t.first().map(|t| short_tag(t))),
            id: hex::encode(Sha256::digest(raw)),
        });
    }
    let index = root.join("index.json");
    if index.symlink_metadata().is_err() {
        return Err("neither an OCI image layout (index.json) nor a docker save archive (manifest.json)".into());
    }
    let index = within(root, &index)?;
    let idx: serde_json::Value = read_json(&index)?;
    let mut desc =
        idx["manifests"].as_array().and_then(|m| m.first()).cloned().ok_or("index.json lists no manifest")?;
    let mut tag = desc["annotations"]["io.containerd.image.name"]
        .as_str()
        .or(desc["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(short_tag);
    // follow nested indexes (multi-platform) to the amd64/linux manifest
    for _ in 0..4 {
        if desc["mediaType"].as_str().is_some_and(|m| m.contains("index") || m.contains("manifest.list")) {
            let nested: serde_json::Value = read_json(&blob(root, desc["digest"].as_str().unwrap_or(""))?)?;
            let list = nested["manifests"].as_array().ok_or("nested index lists no manifest")?;
            desc = list
                .iter()
                .find(|d| d["platform"]["architecture"] == "amd64")
                .or(list.first())
                .cloned()
                .ok_or("nested index lists no manifest")?;
            if tag.is_none() {
                tag = desc["annotations"]["org.opencontainers.image.ref.name"].as_str().map(short_tag);
            }
        } else {
            break;
        }
    }
    let digest = desc["digest"].as_str().ok_or("manifest descriptor has no digest")?;
    let manifest: serde_json::Value = read_json(&blob(root, digest)?)?;
    let config: ConfigFile = read_json(&blob(root, manifest["config"]["digest"].as_str().unwrap_or(""))?)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or("manifest has no layers")?
        .iter()
        .map(|l| blob(root, l["digest"].as_str().unwrap_or("")))
        .collect::<Result<_, _>>()?;
    // a bare ref name like "latest" is not a useful image name
    let tag = tag.filter(|t| t.contains(':'));
    Ok(Plan { layers, config: config.into(), tag, id: digest.trim_start_matches("sha256:").to_string() })
}

/// `root/rel` where `rel` may not leave `root`.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("path {rel:?} in the archive leaves the archive"));
    }
    within(root, &root.join(p))
}

/// Applies one layer tar to `rootfs`: `.wh.NAME` deletes NAME from lower layers,
/// `.wh..wh..opq` empties its directory of lower-layer content, anything else is
/// unpacked (paths that would leave `rootfs` are refused by the tar crate).
pub fn apply_layer(rootfs: &Path, reader: impl Read) -> io::Result<()> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry.path()?.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        if entry.path()?.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(io::Error::other(format!("layer entry {:?} leaves the root", entry.path()?)));
        }
        let Some(fname) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else { continue };
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if fname == ".wh..wh..opq" {
            let dir = inside(rootfs, &parent)?;
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let rel = parent.join(e.file_name());
                    if !this_layer.contains(&rel) {
                        remove_any(&e.path())?;
                    }
                }
            }
        } else if let Some(victim) = fname.strip_prefix(".wh.") {
            // `.wh.` and `.wh...` would name the directory itself or its parent
            if matches!(victim, "" | "." | "..") {
                return Err(io::Error::other(format!("whiteout {:?} names no entry", entry.path()?)));
            }
            let target = inside(rootfs, &parent)?.join(victim);
            remove_any(&target)?;
        } else {
            entry.unpack_in(rootfs)?;
            this_layer.insert(path);
        }
    }
    Ok(())
}

/// `rootfs/rel`, checked not to escape `rootfs` through symlinks in `rel`'s parents.
fn inside(rootfs: &Path, rel: &Path) -> io::Result<PathBuf> {
    let joined = rootfs.join(rel);
    match joined.canonicalize() {
        Ok(c) if c.starts_with(rootfs.canonicalize()?) => Ok(joined),
        Ok(_) => Err(io::Error::other(format!("whiteout under {rel:?} leaves the root"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(joined),
        Err(e) => Err(e),
    }
}

/// An error with its causes, as the tar crate hides the interesting part in `source()`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer tar from (path, contents); `None` contents make a directory.
    pub fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, c.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn layers() -> Vec<Vec<u8>> {
        vec![
            layer(&[
                ("etc/", None),
                ("etc/keep", Some("keep")),
                ("etc/gone", Some("gone")),
                ("data/", None),
                ("data/old", Some("old")),
            ]),
            layer(&[("etc/.wh.gone", Some("")), ("data/.wh..wh..opq", Some("")), ("data/new", Some("new"))]),
        ]
    }

    fn check_rootfs(root: &Path) {
        assert_eq!(fs::read_to_string(root.join("etc/keep")).unwrap(), "keep");
        assert!(!root.join("etc/gone").exists(), "whiteout ignored");
        assert!(!root.join("data/old").exists(), "opaque dir kept lower content");
        assert_eq!(fs::read_to_string(root.join("data/new")).unwrap(), "new");
    }

    /// A `docker save` tarball with two layers.
    pub fn docker_archive(tag: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).unwrap();
        };
        let config = br#"{"config": {"Cmd": ["cat", "/etc/keep"], "Env": ["A=1"], "WorkingDir": "/data"}}"#;
        add(&mut b, "cfg.json", config);
        let mut names = vec![];
        for (i, l) in layers().iter().enumerate() {
            let n = format!("l{i}/layer.tar");
            add(&mut b, &n, l);
            names.push(n);
        }
        let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": [tag], "Layers": names}]);
        add(&mut b, "manifest.json", manifest.to_string().as_bytes());
        b.into_inner().unwrap()
    }

    /// An OCI image layout directory with gzip layers.
    fn oci_layout(dir: &Path) {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let d = sha(data);
            fs::write(blobs.join(&d), data).unwrap();
            d
        };
        let config = put(br#"{"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"]}}"#);
        let ls: Vec<_> = layers().iter().map(|l| put(&gzip(l))).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config}")},
            "layers": ls.iter().map(|d| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{d}")})).collect::<Vec<_>>()
        });
        let m = put(manifest.to_string().as_bytes());
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
        fs::write(
            dir.join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{m}"),
                "annotations": {"org.opencontainers.image.ref.name": "demo:1.0"}}]})
            .to_string(),
        )
        .unwrap();
    }

    #[test]
    fn imports_docker_save_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path().join("images")).unwrap();
        let tarball = d.path().join("img.tar");
        fs::write(&tarball, docker_archive("docker.io/library/demo:2")).unwrap();
        let mut stages = vec![];
        let img = store.import(&tarball, None, &mut |p| stages.push(p.stage)).unwrap();
        assert_eq!(img.name, "demo:2");
        assert_eq!(img.layers, 2);
        assert_eq!(img.config.cmd, ["cat", "/etc/keep"]);
        assert_eq!(img.config.workdir, "/data");
        check_rootfs(&store.rootfs("demo:2"));
        assert!(stages.iter().any(|s| s == "applying layer 2/2"), "{stages:?}");
        // a second import under the same name is refused and leaves no scratch behind
        assert!(matches!(store.import(&tarball, None, &mut |_| {}), Err(Error::ImageExists(_))));
        let leftovers: Vec<_> = fs::read_dir(d.path().join("images")).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn imports_oci_layout_dir_and_tar() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path().join("images")).unwrap();
        let layout = d.path().join("layout");
        oci_layout(&layout);
        let img = store.import(&layout, None, &mut |_| {}).unwrap();
        assert_eq!(img.name, "demo:1.0");
        assert_eq!(img.config.entrypoint, ["/bin/sh"]);
        check_rootfs(&store.rootfs("demo:1.0"));
        // the same layout as a tar, under a given name
        let tarball = d.path().join("layout.tar");
        let mut b = tar::Builder::new(fs::File::create(&tarball).unwrap());
        b.append_dir_all(".", &layout).unwrap();
        b.finish().unwrap();
        drop(b);
        store.import(&tarball, Some("mine"), &mut |_| {}).unwrap();
        check_rootfs(&store.rootfs("mine"));
        assert_eq!(store.list().unwrap().len(), 2);
        store.remove("mine").unwrap();
        assert!(matches!(store.get("mine"), Err(Error::ImageNotFound(_))));
    }

    #[test]
    fn malformed_archives_are_refused_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path().join("images")).unwrap();
        let junk = d.path().join("junk.tar");
        fs::write(&junk, b"this is not a tar file at all, not even close............").unwrap();
        let e = store.import(&junk, Some("x"), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("junk.tar"), "{e}");
        let empty = d.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = store.import(&empty, Some("x"), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("neither an OCI image layout"), "{e}");
        // a manifest pointing outside the archive
        let evil = d.path().join("evil");
        fs::create_dir(&evil).unwrap();
        fs::write(evil.join("manifest.json"), r#"[{"Config": "../../etc/passwd", "Layers": []}]"#).unwrap();
        let e = store.import(&evil, Some("x"), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("leaves the archive"), "{e}");
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(d.path().join("images")).unwrap().count(), 0, "scratch left behind");
    }

    #[test]
    fn layer_entries_cannot_escape_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        // a symlink to outside, then a whiteout through it
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        fs::write(d.path().join("victim"), "x").unwrap();
        let l = layer(&[("up/.wh.victim", Some(""))]);
        assert!(apply_layer(&root, &l[..]).is_err());
        assert!(d.path().join("victim").exists(), "whiteout followed a symlink out of the root");
    }

    /// `.wh.` named the directory holding it and `.wh...` its parent: at the top of a layer
    /// the first removed the root and the second what holds the root (the import's scratch
    /// directory). Found while writing the `image_layer` fuzz target, whose jail check
    /// catches both.
    #[test]
    fn whiteouts_of_the_directory_itself_or_its_parent_are_refused() {
        for name in [".wh.", ".wh..", ".wh...", "a/.wh.", "a/.wh..."] {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("rootfs");
            fs::create_dir_all(root.join("a")).unwrap();
            fs::write(root.join("a/keep"), "keep").unwrap();
            fs::write(d.path().join("sibling"), "x").unwrap();
            let e = apply_layer(&root, &layer(&[(name, Some(""))])[..]).unwrap_err().to_string();
            assert!(e.contains("names no entry"), "{name}: {e}");
            assert!(root.join("a/keep").exists() && d.path().join("sibling").exists(), "{name} removed something");
        }
    }

    #[test]
    fn the_agent_is_found_beside_micro_os_or_where_the_environment_says() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("micro-os");
        let e = AGENT.find(&exe, None).unwrap_err().to_string();
        let beside = d.path().join(AGENT_NAME);
        assert!(e.contains(&beside.display().to_string()) && e.contains("MICRO_OS_AGENT (not set)"), "{e}");
        fs::write(&beside, "agent").unwrap();
        assert_eq!(AGENT.find(&exe, None).unwrap(), beside);
        let other = d.path().join("elsewhere");
        let e = AGENT.find(&exe, Some(other.clone())).unwrap_err().to_string();
        assert!(e.contains(&format!("MICRO_OS_AGENT ({})", other.display())), "{e}");
        fs::write(&other, "agent").unwrap();
        assert_eq!(AGENT.find(&exe, Some(other.clone())).unwrap(), other);
    }

    #[test]
    fn the_vm_image_id_follows_the_agent_bytes_not_its_path() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            eprintln!("SKIP the_vm_image_id_follows_the_agent_bytes_not_its_path: /bin/busybox missing");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path().join("images")).unwrap();
        let bin = d.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let agent = bin.join(AGENT_NAME);
        // two builds of the agent at the same path: a script stands in for it
        fs::write(&agent, "#!/bin/sh\necho one\n").unwrap();
        let first = store.build_base("one", bb, Some((&agent, &AGENT)), &mut |_| {}).unwrap();
        fs::remove_file(&agent).unwrap();
        fs::write(&agent, "#!/bin/sh\necho two\n").unwrap();
        let second = store.build_base("two", bb, Some((&agent, &AGENT)), &mut |_| {}).unwrap();
        assert_ne!(first.id, second.id, "a rebuilt agent kept the image id");
        let again = store.build_base("three", bb, Some((&agent, &AGENT)), &mut |_| {}).unwrap();
        assert_eq!(second.id, again.id, "the same agent and busybox make the same id");
        assert_eq!(second.config.cmd, ["/sbin/micro-os-agent"]);
        // the agent beside this `exe` is the second build: the first image is stale
        let exe = bin.join("micro-os");
        assert!(store.agent_base_is_stale("one", bb, &exe).unwrap(), "an image of another agent is stale");
        assert!(!store.agent_base_is_stale("two", bb, &exe).unwrap(), "an image of this agent is current");
        let inside = store.rootfs("two").join(AGENT_IN_IMAGE);
        assert_eq!(fs::read_to_string(inside).unwrap(), "#!/bin/sh\necho two\n");
    }

    #[test]
    fn builds_busybox_when_present() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            eprintln!("SKIP builds_busybox_when_present: /bin/busybox missing (apt-get install busybox-static)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path()).unwrap();
        let mut last = None;
        let img = store.build_busybox("busybox", bb, &mut |p| last = Some(p)).unwrap();
        let last = last.unwrap();
        assert_eq!(last.current, last.total);
        assert!(store.rootfs("busybox").join("bin/sh").exists());
        assert_eq!(img.config.cmd, ["sh"]);
        assert!(img.size_bytes > 500_000);
    }

    /// An archive whose manifest names a symlink that leads out of the archive — as a
    /// layer, as the config, as the manifest itself, or as an OCI blob — is refused, and
    /// the outside file (a valid layer, so following it would succeed) is never read in.
    #[test]
    fn refuses_links_that_lead_out_of_an_archive() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::new(d.path().join("images")).unwrap();
        let secret = d.path().join("secret.tar");
        fs::write(&secret, layer(&[("etc/", None), ("etc/shadow", Some("root:secret"))])).unwrap();
        let cfg = d.path().join("secret.json");
        fs::write(&cfg, r#"{"config": {"Cmd": ["sh"]}}"#).unwrap();
        let entry = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).unwrap();
        };
        let link = |b: &mut tar::Builder<Vec<u8>>, path: &str, target: &Path| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).unwrap();
        };
        let own_layer = layer(&[("etc/", None), ("etc/keep", Some("keep"))]);
        let docker = |layer_link: bool, config_link: bool| {
            let mut b = tar::Builder::new(Vec::new());
            match config_link {
                true => link(&mut b, "cfg.json", &cfg),
                false => entry(&mut b, "cfg.json", br#"{"config": {}}"#),
            }
            match layer_link {
                true => link(&mut b, "l0/layer.tar", &secret),
                false => entry(&mut b, "l0/layer.tar", &own_layer),
            }
            let m = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["evil:1"], "Layers": ["l0/layer.tar"]}]);
            entry(&mut b, "manifest.json", m.to_string().as_bytes());
            b.into_inner().unwrap()
        };
        let manifest_link = {
            let mut b = tar::Builder::new(Vec::new());
            let outside = d.path().join("manifest.json");
            fs::write(&outside, r#"[{"Config": "x", "Layers": []}]"#).unwrap();
            link(&mut b, "manifest.json", &outside);
            b.into_inner().unwrap()
        };
        let oci_blob_link = {
            let mut b = tar::Builder::new(Vec::new());
            let digest = "a".repeat(64);
            link(&mut b, &format!("blobs/sha256/{digest}"), &secret);
            let idx = serde_json::json!({"manifests": [{"digest": format!("sha256:{digest}")}]});
            entry(&mut b, "index.json", idx.to_string().as_bytes());
            b.into_inner().unwrap()
        };
        for (what, archive) in [
            ("layer", docker(true, false)),
            ("config", docker(false, true)),
            ("manifest", manifest_link),
            ("oci blob", oci_blob_link),
        ] {
            let tarball = d.path().join("evil.tar");
            fs::write(&tarball, archive).unwrap();
            let e = store.import(&tarball, Some("evil"), &mut |_| {}).unwrap_err();
            assert!(
                matches!(&e, Error::BadImage { msg, .. } if msg.contains("leads out of the archive")),
                "{what}: {e}"
            );
            assert!(store.get("evil").is_err(), "{what}: an image was made");
        }
        // the same archive without links imports: the refusal is the link's
        fs::write(d.path().join("ok.tar"), docker(false, false)).unwrap();
        store.import(&d.path().join("ok.tar"), Some("fine"), &mut |_| {}).unwrap();
        assert_eq!(fs::read_to_string(store.rootfs("fine").join("etc/keep")).unwrap(), "keep");
        assert!(!store.rootfs("fine").join("etc/shadow").exists());
        let leftovers: Vec<_> = fs::read_dir(d.path().join("images")).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "scratch left behind: {leftovers:?}");
    }
}
