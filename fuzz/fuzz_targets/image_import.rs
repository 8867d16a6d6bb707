//! An image file, as `ImageStore::import` takes it (`micro-os image import FILE`): a
//! `docker save` tarball (manifest.json, config, layer tars), an OCI image layout as a tar
//! (index.json, blobs, nested indexes), or a root filesystem tarball; gzip or not. After
//! each input nothing outside the store's directory may have changed.
#![no_main]

use std::fs;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use micro_os_fuzz::Jail;
use micro_os_runtime::image::ImageStore;

static JAIL: OnceLock<Jail> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let jail = JAIL.get_or_init(|| Jail::new("image_import"));
    jail.reset();
    let input = jail.inside().join("input.tar");
    fs::write(&input, data).unwrap();
    jail.give(&input);
    jail.as_nobody(|| {
        let store = ImageStore::new(jail.inside().join("images")).unwrap();
        // without a name the archive's own tag names the image
        let name = if data.len() % 2 == 0 { None } else { Some("fuzz") };
        let _ = store.import(&input, name, &mut |_| {});
    });
    jail.check(&["images", "input.tar"]);
});
