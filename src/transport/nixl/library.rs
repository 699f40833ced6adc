//! Finding and loading NIXL's C API (`libnixl_capi.so`) at run time.
//!
//! The plugin links `nixl-sys` with its `stub-api` feature: every `nixl_capi_*`
//! call goes through a stub that `dlopen`s `"libnixl_capi.so"` by name on first
//! use and **aborts the process** when it cannot. So nothing may call `nixl-sys`
//! before [`load`] has succeeded. [`load`] finds the library (see [`candidates`]),
//! loads it by full path with `RTLD_NOW | RTLD_LOCAL` (its dependencies resolve
//! through its own RPATH), and only then asks the stub whether it resolves: the
//! stub's later `dlopen` by soname finds the copy that is already loaded (glibc
//! matches loaded objects by soname whatever their scope). `RTLD_LOCAL` keeps the
//! wheels' bundled grpc/absl/protobuf/UCX symbols out of the process's global
//! scope, where they could capture other libraries' references; Python's `nixl`
//! module loads the same libraries locally too.
//!
//! The probe runs once per process, on first use; its result (the path, or the
//! error text) is kept for the life of the process.

use crate::dylib;
use crate::error::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Full path of `libnixl_capi.so` to use; searched first.
pub const LIB_ENV: &str = "RAY_RDT_NIXL_LIB";
/// When set (to anything but `0` or empty), only [`LIB_ENV`] is tried: no search.
pub const NO_SEARCH_ENV: &str = "RAY_RDT_NIXL_NO_SEARCH";
/// The library's file name (and soname).
pub const LIB_NAME: &str = "libnixl_capi.so";
/// Where NIXL's wheels put their libraries inside `site-packages`, in order of preference.
pub const WHEEL_LIB_DIRS: [&str; 3] = [
    ".nixl_cu13.mesonpy.libs",
    ".nixl_cu12.mesonpy.libs",
    ".nixl.mesonpy.libs",
];
/// What to do when the library is missing.
pub const INSTALL_HINT: &str = "install NIXL's Python wheels into this Python environment (`pip install nixl==1.5.1`, \
     which brings the nixl-cu13 wheels) or set RAY_RDT_NIXL_LIB to the full path of libnixl_capi.so";

static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Loads NIXL's C API once per process. Returns the path it was loaded from, or
/// an [`ErrorKind::Unavailable`] error naming what to install. After `Ok`, calling
/// `nixl-sys` is safe.
pub fn load() -> Result<&'static Path> {
    match LOADED.get_or_init(probe) {
        Ok(path) => Ok(path),
        Err(message) => Err(Error::new(ErrorKind::Unavailable, message.clone())),
    }
}

fn probe() -> Result<PathBuf, String> {
    let candidates = candidates();
    // A copy already in the process (Python's `nixl` module was imported first:
    // it loads the libnixl.so next to libnixl_capi.so) wins: two different
    // libnixl builds in one process would clash.
    let mut chosen = candidates
        .iter()
        .find(|c| {
            dylib::already_loaded(c) || dylib::already_loaded(&c.with_file_name("libnixl.so"))
        })
        .cloned();
    let mut tried = Vec::new();
    if chosen.is_none() {
        for candidate in &candidates {
            preload_bundled(candidate);
            match dlopen_local(candidate) {
                Ok(()) => {
                    chosen = Some(candidate.clone());
                    break;
                }
                Err(e) => tried.push(e),
            }
        }
    } else if let Some(c) = &chosen {
        preload_bundled(c);
        // Take our own reference on the copy that is there.
        dlopen_local(c)?;
    }
    let Some(path) = chosen else {
        let no_search = dylib::env_flag(NO_SEARCH_ENV);
        let looked = if tried.is_empty() && no_search {
            "RAY_RDT_NIXL_NO_SEARCH is set and RAY_RDT_NIXL_LIB is not".to_owned()
        } else if tried.is_empty() {
            "no candidate found: no site-packages with NIXL's wheels (looked for .nixl_cu13.mesonpy.libs, \
             .nixl_cu12.mesonpy.libs and .nixl.mesonpy.libs next to the running Python, in VIRTUAL_ENV and in \
             the plugin's source tree .venv)"
                .to_owned()
        } else {
            format!("tried {}", tried.join("; "))
        };
        return Err(format!("the nixl transport is unavailable: NIXL's C API ({LIB_NAME}) could not be loaded ({looked}); {INSTALL_HINT}"));
    };
    // Safe only now: the stub resolves `libnixl_capi.so` once, and finds the copy we loaded.
    if nixl_sys::is_stub() {
        return Err(format!(
            "the nixl transport is unavailable: {} was loaded but NIXL's stub cannot resolve {LIB_NAME}; {INSTALL_HINT}",
            path.display()
        ));
    }
    log::info!("ray-rdt: nixl transport uses {}", path.display());
    Ok(path)
}

/// Where to look for `libnixl_capi.so`, in order: `LIB_ENV`; unless
/// `NO_SEARCH_ENV` is set, the wheels' library folders (`WHEEL_LIB_DIRS`) in
/// each `site-packages` folder `crate::dylib::site_packages` lists (the
/// running Python's, the binding's `sys.prefix`, `VIRTUAL_ENV`, the source
/// tree's `.venv`).
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = dylib::env_path(LIB_ENV) {
        out.push(p);
    }
    if dylib::env_flag(NO_SEARCH_ENV) {
        return out;
    }
    for dir in dylib::site_packages() {
        for wheel in WHEEL_LIB_DIRS {
            let lib = dir.join(wheel).join(LIB_NAME);
            if lib.is_file() && !out.contains(&lib) {
                out.push(lib);
            }
        }
    }
    out
}

/// NIXL's wheels bundle their own libnl-3 and libnl-route-3 (for UCX's IB module,
/// in `<site-packages>/nixl_cuXX.libs/`). When the system's copies are already in
/// the process's global scope (an executable linking Gloo, which needs
/// libibverbs), the bundled copies' calls bind to the system's and the two corrupt
/// each other at exit (SIGSEGV in `rtnl_tc_unregister` during `_dl_fini`). Loading
/// the bundled copies first with `RTLD_DEEPBIND` keeps each copy bound to itself.
fn preload_bundled(lib: &Path) {
    let system_libnl = std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.contains("/libnl-route-3.so") || m.contains("/libnl-3.so"))
        .unwrap_or(false);
    if !system_libnl {
        return;
    }
    let Some(dir) = lib.parent() else { return };
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let stem = name
        .trim_start_matches('.')
        .trim_end_matches(".mesonpy.libs");
    let bundled = dir.with_file_name(format!("{stem}.libs"));
    let Ok(entries) = std::fs::read_dir(&bundled) else {
        return;
    };
    let files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    for prefix in ["libnl-3-", "libnl-route-3-"] {
        let Some(file) = files.iter().find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.contains(".so"))
        }) else {
            continue;
        };
        if let Err(e) = dylib::Library::open_with(
            file,
            libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_DEEPBIND,
        ) {
            log::debug!("ray-rdt: could not preload {e}");
        }
    }
}

/// Loads `path` for good (never closed), its symbols kept local.
fn dlopen_local(path: &Path) -> Result<(), String> {
    dylib::Library::open(path).map(|_| ())
}
