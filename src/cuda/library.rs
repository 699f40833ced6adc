//! Finding and loading the three CUDA libraries at run time, before anything
//! calls into them.
//!
//! | library | used for | found (first wins) |
//! |---|---|---|
//! | driver, `libcuda.so.1` | every GPU operation, through cudarc | [`DRIVER_ENV`]; the names cudarc tries (`libcuda.so`, ..., `libcuda.so.1`) through the dynamic linker (the driver is a system library) |
//! | runtime, `libcudart.so.13` | only the caller's current device when the binding did not name one | [`RUNTIME_ENV`]; a copy already mapped (torch loaded it); torch's wheels (`site-packages/nvidia/cu13/lib`, `nvidia/cuda_runtime/lib`); the dynamic linker |
//! | NCCL, `libnccl.so.2` | the nccl transport | [`NCCL_ENV`]; a copy already mapped (torch loaded it); `site-packages/nvidia/nccl/lib`; the dynamic linker |
//!
//! `site-packages` folders come from [`crate::dylib::site_packages`] (the
//! running Python's, the binding's `sys.prefix`, `VIRTUAL_ENV`, the source
//! tree's `.venv`).
//!
//! cudarc's own loader (`dynamic-loading`) **panics** when it cannot find a
//! library or a symbol. So the driver is probed here first, by the very names
//! cudarc will try, and every symbol the plugin calls is looked up before the
//! first call ([`DRIVER_SYMBOLS`]); cudarc is only called once that succeeded,
//! and [`super::driver`] still runs each call under `catch_unwind`. cudarc's NCCL
//! loader would not find the wheels' library at all (it asks for `libnccl.so`,
//! `libnccl.so.13`, ... but the soname is `libnccl.so.2`), so NCCL's functions are
//! resolved here from the library found ([`super::nccl`]), with cudarc's types.
//!
//! Each probe runs once per process, on first use (never at plugin load); a
//! failure is an [`ErrorKind::Unavailable`] error that names what is missing,
//! and the process lives on.

use crate::dylib::{self, Library};
use crate::error::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Full path of the CUDA driver library (`libcuda.so.1`), tried first.
pub const DRIVER_ENV: &str = "RAY_RDT_CUDA_DRIVER_LIB";
/// Full path of the CUDA runtime library (`libcudart.so.13`), tried first.
pub const RUNTIME_ENV: &str = "RAY_RDT_CUDA_LIB";
/// Full path of NCCL (`libnccl.so.2`), tried first.
pub const NCCL_ENV: &str = "RAY_RDT_NCCL_LIB";
/// When set (to anything but `0` or empty), only the `*_LIB` variables are
/// tried: no search in the Python environment or through the dynamic linker.
pub const NO_SEARCH_ENV: &str = "RAY_RDT_CUDA_NO_SEARCH";

/// Every driver symbol the plugin calls (through cudarc): all must resolve
/// before the first call.
pub const DRIVER_SYMBOLS: [&std::ffi::CStr; 29] = [
    c"cuInit",
    c"cuDriverGetVersion",
    c"cuGetErrorName",
    c"cuGetErrorString",
    c"cuDeviceGet",
    c"cuDeviceGetCount",
    c"cuDeviceGetUuid_v2",
    c"cuDevicePrimaryCtxRetain",
    c"cuCtxPushCurrent_v2",
    c"cuCtxPopCurrent_v2",
    c"cuStreamCreate",
    c"cuStreamWaitEvent",
    c"cuEventCreate",
    c"cuEventRecord",
    c"cuEventQuery",
    c"cuEventDestroy_v2",
    c"cuMemAlloc_v2",
    c"cuMemFree_v2",
    c"cuMemcpyDtoDAsync_v2",
    c"cuMemcpyPeerAsync",
    c"cuMemcpyHtoD_v2",
    c"cuMemcpyDtoH_v2",
    c"cuMemGetAddressRange_v2",
    c"cuPointerGetAttribute",
    c"cuIpcGetMemHandle",
    c"cuIpcOpenMemHandle_v2",
    c"cuIpcCloseMemHandle",
    c"cuIpcGetEventHandle",
    c"cuIpcOpenEventHandle",
];

/// A library that was found and loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The handle (never closed).
    pub lib: Library,
    /// Where it was loaded from.
    pub path: PathBuf,
}

/// The three libraries' probes, each run once.
static DRIVER: OnceLock<Result<Loaded, String>> = OnceLock::new();
static RUNTIME: OnceLock<Result<Loaded, String>> = OnceLock::new();
static NCCL: OnceLock<Result<Loaded, String>> = OnceLock::new();

fn unavailable(message: &str) -> Error {
    Error::new(ErrorKind::Unavailable, message.to_owned())
}

/// The CUDA driver, loaded and checked for `DRIVER_SYMBOLS`; after `Ok`,
/// cudarc's driver calls cannot fail for a missing library or symbol.
pub fn driver() -> Result<&'static Loaded> {
    DRIVER
        .get_or_init(probe_driver)
        .as_ref()
        .map_err(|m| unavailable(m))
}

/// The CUDA runtime (for `cudaGetDevice` only).
pub fn runtime() -> Result<&'static Loaded> {
    RUNTIME
        .get_or_init(probe_runtime)
        .as_ref()
        .map_err(|m| unavailable(m))
}

/// NCCL.
pub fn nccl() -> Result<&'static Loaded> {
    NCCL.get_or_init(probe_nccl)
        .as_ref()
        .map_err(|m| unavailable(m))
}

const DRIVER_HINT: &str = "CUDA tensors need an NVIDIA GPU with its driver installed (libcuda.so.1 is part of \
     the driver, not of the Python wheels); set RAY_RDT_CUDA_DRIVER_LIB to its full path if it is installed \
     somewhere the dynamic linker does not look";

fn probe_driver() -> Result<Loaded, String> {
    let mut candidates: Vec<PathBuf> = dylib::env_path(DRIVER_ENV).into_iter().collect();
    let env_given = !candidates.is_empty();
    if !dylib::env_flag(NO_SEARCH_ENV) || env_given {
        // The names cudarc's loader tries, in its order: a success here means
        // cudarc finds a library too (a path given in RAY_RDT_CUDA_DRIVER_LIB is
        // then already loaded, and matches its soname, libcuda.so.1).
        candidates.extend(
            ["cuda", "nvcuda"]
                .iter()
                .flat_map(|n| cudarc::get_lib_name_candidates(n))
                .map(PathBuf::from),
        );
    }
    let (mut lib, mut path) = match dylib::open_first(&candidates) {
        Ok(found) => found,
        Err(tried) => {
            // Names the dynamic linker does not know are one fact, not 34.
            let missing = "cannot open shared object file: No such file or directory";
            let by_name = &tried[usize::from(env_given)..];
            let absent = by_name.iter().filter(|e| e.ends_with(missing)).count();
            let mut why = Vec::new();
            if env_given {
                why.push(format!("{DRIVER_ENV}: {}", tried[0]));
            }
            if absent > 0 {
                why.push(format!(
                    "the dynamic linker knows none of the {absent} names cudarc tries (libcuda.so, ..., libcuda.so.1)"
                ));
            }
            why.extend(by_name.iter().filter(|e| !e.ends_with(missing)).cloned());
            let why = why.join("; ");
            return Err(format!(
                "the CUDA driver is unavailable: libcuda.so.1 could not be loaded ({why}); {DRIVER_HINT}"
            ));
        }
    };
    if env_given && path == candidates[0] {
        // cudarc loads by name: check that its names reach the same library.
        match dylib::open_first(&candidates[1..]) {
            Ok(found) => (lib, path) = (found.0, found.1),
            Err(_) => {
                return Err(format!(
                "the CUDA driver is unavailable: {} loads, but cudarc looks the driver up by name \
                     (libcuda.so.1) and finds nothing: its soname must be libcuda.so.1",
                path.display()
            ))
            }
        }
    }
    if let Some(missing) = DRIVER_SYMBOLS.iter().find(|s| lib.symbol(s).is_none()) {
        return Err(format!(
            "the CUDA driver is unavailable: {} has no {} (a driver for CUDA 13.0 or newer is needed)",
            path.display(),
            missing.to_string_lossy()
        ));
    }
    // Second line of defence: cudarc's loader itself, which panics on failure.
    if std::panic::catch_unwind(|| {
        // SAFETY: only loads the library (by the names tried above).
        let _ = unsafe { cudarc::driver::sys::culib() };
    })
    .is_err()
    {
        return Err(format!(
            "the CUDA driver is unavailable: cudarc could not load it although {} loads",
            path.display()
        ));
    }
    let path = lib.file_of(c"cuInit").unwrap_or(path);
    log::info!("ray-rdt: CUDA driver {}", path.display());
    Ok(Loaded { lib, path })
}

/// The candidates of a library in torch's wheels and the system: `env`
/// first; then a copy already mapped into the process (file name starting
/// with `mapped`); then `site-packages/<each of wheel_paths>`; then the bare
/// `names` for the dynamic linker.
fn candidates(env: &str, mapped: &str, wheel_paths: &[&str], names: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dylib::env_path(env).into_iter().collect();
    if dylib::env_flag(NO_SEARCH_ENV) {
        return out;
    }
    out.extend(dylib::mapped_library(mapped));
    for rel in wheel_paths {
        out.extend(dylib::in_site_packages(rel));
    }
    out.extend(names.iter().map(PathBuf::from));
    let mut unique: Vec<PathBuf> = Vec::new();
    for c in out {
        if !unique.contains(&c) {
            unique.push(c);
        }
    }
    unique
}

/// Where the runtime is looked for, in order (see the module documentation).
pub fn runtime_candidates() -> Vec<PathBuf> {
    candidates(
        RUNTIME_ENV,
        "libcudart.so",
        &[
            "nvidia/cu13/lib/libcudart.so.13",
            "nvidia/cuda_runtime/lib/libcudart.so.13",
            "nvidia/cuda_runtime/lib/libcudart.so.12",
        ],
        &["libcudart.so.13", "libcudart.so.12"],
    )
}

/// Where NCCL is looked for, in order (see the module documentation).
pub fn nccl_candidates() -> Vec<PathBuf> {
    candidates(
        NCCL_ENV,
        "libnccl.so",
        &["nvidia/nccl/lib/libnccl.so.2"],
        &["libnccl.so.2"],
    )
}

fn probe_runtime() -> Result<Loaded, String> {
    probe_named(
        "the CUDA runtime",
        "libcudart.so.13",
        runtime_candidates(),
        c"cudaGetDevice",
        "install torch's CUDA wheels (nvidia-cuda-runtime) into this Python environment or set RAY_RDT_CUDA_LIB \
         to the full path of libcudart.so.13",
    )
}

fn probe_nccl() -> Result<Loaded, String> {
    probe_named(
        "NCCL",
        "libnccl.so.2",
        nccl_candidates(),
        c"ncclGetVersion",
        "install NCCL's wheel into this Python environment (`pip install nvidia-nccl-cu13`; torch's CUDA wheels \
         bring it) or set RAY_RDT_NCCL_LIB to the full path of libnccl.so.2",
    )
}

fn probe_named(
    what: &str,
    file: &str,
    candidates: Vec<PathBuf>,
    symbol: &std::ffi::CStr,
    hint: &str,
) -> Result<Loaded, String> {
    if candidates.is_empty() {
        return Err(format!(
            "{what} is unavailable: {file} could not be loaded ({NO_SEARCH_ENV} is set and no path was given); {hint}"
        ));
    }
    let mut tried = Vec::new();
    for c in &candidates {
        match Library::open(c) {
            Ok(lib) if lib.symbol(symbol).is_some() => {
                let path = lib.file_of(symbol).unwrap_or_else(|| c.clone());
                log::info!("ray-rdt: {what} {}", path.display());
                return Ok(Loaded { lib, path });
            }
            Ok(_) => tried.push(format!("{}: no {}", c.display(), symbol.to_string_lossy())),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "{what} is unavailable: {file} could not be loaded (tried {}); {hint}",
        summarize(&tried)
    ))
}

/// The reasons of a failed search, shortened when cudarc's long list of
/// names all failed the same way.
fn summarize(tried: &[String]) -> String {
    const SHOWN: usize = 4;
    if tried.len() <= SHOWN {
        return tried.join("; ");
    }
    format!(
        "{}; and {} more names",
        tried[..SHOWN].join("; "),
        tried.len() - SHOWN
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_env_comes_first_and_the_wheel_is_searched() {
        // The test process's environment decides what is found; the order is fixed.
        let c = nccl_candidates();
        let bare = c.iter().position(|p| p == &PathBuf::from("libnccl.so.2"));
        assert!(bare.is_some(), "{c:?}");
        for p in &c[..bare.unwrap()] {
            assert!(p.is_absolute(), "{p:?} precedes the bare name");
        }
        let r = runtime_candidates();
        assert!(r.contains(&PathBuf::from("libcudart.so.13")), "{r:?}");
    }

    #[test]
    fn summarize_shortens_long_lists() {
        let tried: Vec<String> = (0..10).map(|i| format!("n{i}: missing")).collect();
        let s = summarize(&tried);
        assert!(
            s.contains("n3") && !s.contains("n4") && s.contains("6 more"),
            "{s}"
        );
    }
}
