//! Images without a registry: the built-in base and archives imported from files.

mod common;

use std::path::Path;
use std::process::Command;

use common::{require, Daemon, Need, CONTAINERS};

/// What making a qemu kernel + initramfs needs.
const QEMU_BOOT: &[Need] = &[Need::Kernel, Need::Cpio, Need::Strip];

fn sh(cmd: &str) {
    let s = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(s.success(), "{cmd}");
}

/// A `docker save`-style archive made with GNU tar: layer 1 is busybox, layer 2 deletes
/// a file of layer 1 with a whiteout and adds one.
fn docker_archive(dir: &Path) -> std::path::PathBuf {
    let d = dir.display();
    sh(&format!(
        "set -e; cd {d}; mkdir -p l1/bin l1/etc l2/etc out/l1 out/l2;
         cp /bin/busybox l1/bin/busybox; ln -s busybox l1/bin/sh; ln -s busybox l1/bin/cat; ln -s busybox l1/bin/ls;
         echo base > l1/etc/motd; echo doomed > l1/etc/doomed;
         : > l2/etc/.wh.doomed; echo layered > l2/etc/added;
         tar -C l1 -cf out/l1/layer.tar .; tar -C l2 -cf out/l2/layer.tar .;
         echo '{{\"config\": {{\"Cmd\": [\"sh\", \"-c\", \"cat /etc/motd /etc/added; ls /etc\"]}}}}' > out/config.json;
         echo '[{{\"Config\": \"config.json\", \"RepoTags\": [\"example.org/team/app:1.2\"], \"Layers\": [\"l1/layer.tar\", \"l2/layer.tar\"]}}]' > out/manifest.json;
         tar -C out -cf app.tar ."
    ));
    dir.join("app.tar")
}

#[test]
fn import_run_and_remove_an_image() {
    if !require("import_run_and_remove_an_image", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let archive = docker_archive(work.path());
    let out = d.ok(&["image", "import", archive.to_str().unwrap()]);
    assert!(out.contains("imported app:1.2 (2 layers"), "{out}");
    let list = d.ok(&["image", "ls"]);
    assert!(list.contains("app:1.2") && list.contains("busybox"), "{list}");
    // the image's own command runs, and the whiteout removed the lower file
    let o = d.cli(&["container", "run", "--rm", "--image", "app:1.2"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("base\nlayered\n"), "{stdout}");
    assert!(!stdout.contains("doomed"), "whiteout not applied: {stdout}");
    // containers write to their own upper layer, never to the image
    d.ok(&["container", "run", "--name", "writer", "--image", "app:1.2", "--", "sh", "-c", "echo x > /etc/motd"]);
    let o = d.cli(&["container", "run", "--rm", "--image", "app:1.2", "--", "cat", "/etc/motd"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "base\n");
    // in use: refused; then removable
    d.fails(&["image", "rm", "app:1.2"], 4);
    d.ok(&["container", "rm", "writer"]);
    d.ok(&["image", "rm", "app:1.2"]);
    d.fails(&["container", "create", "--name", "late", "--image", "app:1.2"], 3);
    // importing again under an explicit name; a second time is a conflict
    d.ok(&["image", "import", archive.to_str().unwrap(), "--name", "again"]);
    d.fails(&["image", "import", archive.to_str().unwrap(), "--name", "again"], 4);
    // junk is refused with one line and leaves nothing
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, "not an archive").unwrap();
    let err = d.fails(&["image", "import", junk.to_str().unwrap(), "--name", "junk"], 2);
    assert!(err.contains("junk.tar"), "{err}");
    d.fails(&["image", "import", "/does/not/exist.tar"], 3);
    let list = d.ok(&["image", "ls", "--format", "json"]);
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list)
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["again", "busybox"]);
    // building the base again is a conflict; under a new name it works
    d.fails(&["image", "build", "busybox"], 4);
    let out = d.ok(&["image", "build", "busybox", "--name", "base2"]);
    assert!(out.contains("built base2"), "{out}");
    // the VM base: busybox plus the agent (micro-os-agent, beside micro-os), runnable inside
    let boot_files = require("import_run_and_remove_an_image (the qemu boot files)", QEMU_BOOT);
    let out = d.ok(&["image", "build", "blockchain-base", "--name", "vmbase"]);
    assert!(out.contains("built vmbase"), "{out}");
    let o = d.cli(&["container", "run", "--rm", "--image", "vmbase", "--", "/sbin/micro-os-agent", "--version"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("micro-os-agent "),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    if boot_files {
        let boot = d.home.path().join("images/vmbase/boot");
        assert!(boot.join("vmlinuz").exists() && boot.join("initramfs.img").exists(), "no qemu boot files");
    }
}

/// An image from a directory of the client's (`image build --from-dir`: tarred by the CLI
/// and uploaded) and from a root filesystem tarball (`image import`: uploaded as it is),
/// each running a container; bad input is one line.
#[test]
fn images_from_a_directory_and_a_rootfs_tarball_run() {
    let test = "images_from_a_directory_and_a_rootfs_tarball_run";
    if !require(test, CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().display();
    sh(&format!(
        "set -e; mkdir -p {t}/root/bin {t}/root/etc; cp /bin/busybox {t}/root/bin/busybox;
         ln -s busybox {t}/root/bin/sh; ln -s busybox {t}/root/bin/cat;
         echo from-a-directory > {t}/root/etc/motd; tar -C {t}/root -cf {t}/root.tar ."
    ));
    let out = d.ok(&["image", "build", "--from-dir", &format!("{t}/root"), "--name", "from-dir"]);
    assert!(out.contains("built from-dir"), "{out}");
    let o = d.cli(&["container", "run", "--rm", "--image", "from-dir", "--", "cat", "/etc/motd"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "from-a-directory", "{o:?}");
    let ls = d.ok(&["image", "ls"]);
    assert!(ls.contains("root filesystem upload root"), "the source says where it came from: {ls}");

    let out = d.ok(&["image", "import", &format!("{t}/root.tar"), "--name", "from-tar"]);
    assert!(out.contains("imported from-tar"), "{out}");
    let o = d.cli(&["container", "run", "--rm", "--image", "from-tar", "--", "cat", "/etc/motd"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "from-a-directory", "{o:?}");

    // bad input: one line, and nothing made
    let e = d.fails(&["image", "build", "--from-dir", &format!("{t}/nowhere"), "--name", "x"], 3);
    assert!(e.contains("nowhere") && e.contains("cannot be opened"), "{e}");
    let e = d.fails(&["image", "import", &format!("{t}/root.tar")], 2);
    assert!(e.contains("names no image (give one with --name)"), "{e}");
    let e = d.fails(&["image", "build", "--from-dir", &format!("{t}/root"), "--name", "from-dir"], 4);
    assert!(e.contains("from-dir"), "{e}");
    assert!(!d.ok(&["image", "ls"]).contains("\nx "));
}
