//! An image layer, as `micro_os_runtime::image::apply_layer` applies it: tar entries,
//! whiteouts (`.wh.NAME`, `.wh..wh..opq`), symlinks and hard links. The input is one layer
//! tar, or two one after the other (the second applied over the first). The root it is
//! applied to already holds a lower layer, with symlinks that point out of it (relative
//! and absolute); after each input, nothing outside the root may have changed.
#![no_main]

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::symlink;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use micro_os_fuzz::Jail;
use micro_os_runtime::image::apply_layer;

static JAIL: OnceLock<Jail> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let jail = JAIL.get_or_init(|| Jail::new("image_layer"));
    jail.reset();
    let root = jail.inside().join("rootfs");
    // the lower layer
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("data/sub")).unwrap();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::write(root.join("etc/keep"), "keep").unwrap();
    fs::write(root.join("data/old"), "old").unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("../../outside", root.join("up")).unwrap();
    symlink("../../outside/canary", root.join("canary")).unwrap();
    symlink(jail.base.join("outside"), root.join("abs")).unwrap();
    jail.give(&root);

    jail.as_nobody(|| {
        let mut first = Cursor::new(data);
        if apply_layer(&root, &mut first).is_ok() {
            // a second layer after the first one's end-of-archive blocks
            let mut rest = &data[(first.position() as usize).min(data.len())..];
            while rest.len() >= 512 && rest[..512].iter().all(|b| *b == 0) {
                rest = &rest[512..];
            }
            if !rest.is_empty() {
                let _ = apply_layer(&root, rest);
            }
        }
    });
    jail.check(&["rootfs"]);
    assert!(root.is_dir(), "the root itself was removed");
});
