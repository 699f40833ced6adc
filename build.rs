//! Generates `include/ray_rdt.h` from the C ABI with cbindgen. CI regenerates it
//! and fails when the checked-in header differs.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    // The header is the C ABI (src/ffi/) and the DLPack types it names; nothing
    // of the crate's internals is parsed, so nothing of them can leak into it.
    let built = cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{crate_dir}/src/dlpack.rs"))
        .with_src(format!("{crate_dir}/src/ffi/mod.rs"))
        .generate();
    match built {
        Ok(bindings) => {
            bindings.write_to_file(format!("{crate_dir}/include/ray_rdt.h"));
        }
        Err(e) => panic!("cbindgen could not generate include/ray_rdt.h: {e}"),
    }
}
