//! Builds the C++ shim over Gloo and links the system `libgloo` dynamically.
//!
//! Gloo comes from Debian's `libgloo-dev` (headers in `/usr/include/gloo`,
//! shared library `/usr/lib/libgloo.so`, no pkg-config file). Set
//! `GLOO_INCLUDE_DIR` (the directory that contains `gloo/`) and `GLOO_LIB_DIR`
//! to use another installation.

use std::env;
use std::path::PathBuf;

const NOT_FOUND: &str = "Gloo not found: install it with `apt-get install -y libgloo-dev` \
                         (or set GLOO_INCLUDE_DIR / GLOO_LIB_DIR)";

fn main() {
    println!("cargo:rerun-if-changed=shim/gloo_shim.cpp");
    println!("cargo:rerun-if-changed=shim/gloo_shim.h");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=GLOO_LIB_DIR");

    let include_dir = env::var_os("GLOO_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let context_h = include_dir.join("gloo").join("context.h");
    println!("cargo:rerun-if-changed={}", context_h.display());
    if !context_h.is_file() {
        panic!("{NOT_FOUND} ({} does not exist)", context_h.display());
    }

    let lib_dir = env::var_os("GLOO_LIB_DIR").map(PathBuf::from);
    if let Some(dir) = &lib_dir {
        if !dir.join("libgloo.so").exists() {
            panic!("{NOT_FOUND} ({} has no libgloo.so)", dir.display());
        }
    }

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        .include(&include_dir)
        .include("shim")
        .file("shim/gloo_shim.cpp")
        .compile("gloo_shim");

    if let Some(dir) = &lib_dir {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=gloo");
    // Tells dependents (DEP_GLOO_INCLUDE) where the shim's header is.
    println!(
        "cargo:include={}",
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("shim")
            .display()
    );
}
