//! Generates `include/ray_rdt.h` from the C ABI with cbindgen. CI regenerates it
//! and fails when the checked-in header differs.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    match cbindgen::generate_with_config(&crate_dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(format!("{crate_dir}/include/ray_rdt.h"));
        }
        Err(e) => panic!("cbindgen could not generate include/ray_rdt.h: {e}"),
    }
}
