//! include/pompc.h is what cbindgen makes of src/ today: a change to the interface that was
//! not carried into the checked-in header fails here. `POMPC_BLESS=1 cargo test --release -p
//! pompc-capi --test header` rewrites the header instead.

use std::path::Path;

#[test]
fn checked_in_header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen could not read capi/src")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = dir.join("include/pompc.h");
    if std::env::var_os("POMPC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "capi/include/pompc.h differs from what cbindgen generates from capi/src (first at \
             line {}); regenerate it with POMPC_BLESS=1 cargo test --release -p pompc-capi \
             --test header, and review the diff",
            line + 1
        );
    }
}

#[test]
fn header_names_this_version() {
    let h = include_str!("../include/pompc.h");
    let v = format!("#define POMPC_VERSION \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(h.contains(&v), "the header's POMPC_VERSION is not {v}");
    // SAFETY: a static C string.
    let lib = unsafe { std::ffi::CStr::from_ptr(pompc_c::pompc_version()) };
    assert_eq!(lib.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
