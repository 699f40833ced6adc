//! Finding and loading the shared libraries transports use at run time (NIXL's
//! C API, the CUDA driver and runtime, NCCL), none of which the plugin links.
//!
//! Python wheels ship most of them (`nixl-cu13`, torch's `nvidia-*` wheels), so
//! the search looks in the `site-packages` folders of the Python environment the
//! plugin runs in: folders of files already mapped into the process (Ray's
//! `_raylet.so`, torch's libraries), prefixes the binding reported
//! ([`add_python_prefix`], the interpreter's `sys.prefix`), the prefix of the
//! running executable, `VIRTUAL_ENV`, and the `.venv` of the source tree the
//! plugin was built from, in that order.
//!
//! Libraries are opened for good (never closed) and their symbols kept local
//! (`RTLD_LOCAL`) unless a caller asks otherwise.

// The library finder serves the transports that load libraries at run time
// (nixl, cuda): in a build without them only the search prefix is used.
#![cfg_attr(not(any(feature = "nixl", feature = "cuda")), allow(dead_code))]

use parking_lot::Mutex;
use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

static PYTHON_PREFIXES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Adds a Python prefix (`sys.prefix`) whose `site-packages` are searched, after
/// the folders of files already mapped into the process.
pub fn add_python_prefix(prefix: &Path) {
    let mut prefixes = PYTHON_PREFIXES.lock();
    if !prefixes.iter().any(|p| p == prefix) {
        prefixes.push(prefix.to_path_buf());
    }
}

/// Whether the environment variable `name` is set to something other than
/// empty or `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The path in the environment variable `name`, if set and not empty.
pub fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Every `site-packages` folder to search, in order, without duplicates (see
/// the module documentation).
pub fn site_packages() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = mapped_site_packages();
    for prefix in PYTHON_PREFIXES.lock().iter() {
        dirs.extend(site_packages_under(prefix));
    }
    if let Some(prefix) = std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        dirs.extend(site_packages_under(&prefix));
    }
    if let Some(venv) = env_path("VIRTUAL_ENV") {
        dirs.extend(site_packages_under(&venv));
    }
    dirs.extend(site_packages_under(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"),
    ));
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Existing files `<site-packages>/<relative>` for every folder of
/// [`site_packages`], in order.
pub fn in_site_packages(relative: &str) -> Vec<PathBuf> {
    site_packages()
        .into_iter()
        .map(|d| d.join(relative))
        .filter(|p| p.is_file())
        .collect()
}

/// Paths of the files mapped into this process (from `/proc/self/maps`), in
/// first-seen order.
pub fn mapped_files() -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let path = PathBuf::from(path);
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// The first file mapped into this process whose name starts with `prefix`
/// (e.g. `"libnccl.so"`): a library some other code already loaded.
pub fn mapped_library(prefix: &str) -> Option<PathBuf> {
    mapped_files().into_iter().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
    })
}

/// `site-packages` folders of files mapped into this process.
fn mapped_site_packages() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for path in mapped_files() {
        let text = path.to_string_lossy();
        if let Some(i) = text.find("/site-packages/") {
            let dir = PathBuf::from(&text[..i + "/site-packages".len()]);
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

/// `<prefix>/lib/python3*/site-packages` folders.
pub fn site_packages_under(prefix: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().as_bytes().starts_with(b"python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// A path as a C string.
pub fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path contains a NUL byte", path.display()))
}

/// Whether the library at `path` is already loaded in this process (never
/// loads it).
pub fn already_loaded(path: &Path) -> bool {
    let Ok(c) = c_path(path) else { return false };
    // SAFETY: RTLD_NOLOAD never loads anything; it only looks the object up.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    !handle.is_null()
}

/// A loaded shared library, never unloaded.
#[derive(Debug, Clone, Copy)]
pub struct Library {
    handle: *mut c_void,
}

// SAFETY: a dlopen handle may be used from any thread.
unsafe impl Send for Library {}
// SAFETY: dlsym on a handle is thread-safe.
unsafe impl Sync for Library {}

impl Library {
    /// Loads `path` (a full path, or a bare name the dynamic linker searches
    /// for) with `RTLD_NOW | RTLD_LOCAL`.
    pub fn open(path: &Path) -> Result<Library, String> {
        Self::open_with(path, libc::RTLD_NOW | libc::RTLD_LOCAL)
    }

    /// Loads `path` with the given `dlopen` flags.
    pub fn open_with(path: &Path, flags: libc::c_int) -> Result<Library, String> {
        let c = c_path(path)?;
        // SAFETY: loading a shared library; failure is reported by dlerror.
        let handle = unsafe { libc::dlopen(c.as_ptr(), flags) };
        if handle.is_null() {
            return Err(format!("{}: {}", path.display(), dlerror()));
        }
        Ok(Library { handle })
    }

    /// The address of symbol `name`, if the library (or its dependencies) has it.
    pub fn symbol(&self, name: &CStr) -> Option<*mut c_void> {
        // SAFETY: looking a symbol up in a loaded library.
        let p = unsafe { libc::dlsym(self.handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// The file the library was loaded from (found through one of its symbols).
    pub fn file_of(&self, symbol: &CStr) -> Option<PathBuf> {
        let addr = self.symbol(symbol)?;
        // SAFETY: dladdr only reads the loader's tables; info is a valid out-parameter.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dli_fname) };
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
    }
}

/// The loader's last error text.
fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a valid C string owned by libc.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".to_owned()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Tries `candidates` in order and returns the first that loads (with its
/// path), or the reason each failed.
pub fn open_first(candidates: &[PathBuf]) -> Result<(Library, PathBuf), Vec<String>> {
    let mut tried = Vec::new();
    for c in candidates {
        match Library::open(c) {
            Ok(lib) => return Ok((lib, c.clone())),
            Err(e) => tried.push(e),
        }
    }
    Err(tried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_prefix_adds_its_site_packages() {
        let dir = std::env::temp_dir().join(format!("rdt-dylib-{}", std::process::id()));
        let site = dir.join("lib/python3.99/site-packages");
        std::fs::create_dir_all(site.join("pkg")).unwrap();
        std::fs::write(site.join("pkg/libfake.so.1"), b"").unwrap();
        add_python_prefix(&dir);
        assert!(site_packages().contains(&site));
        assert_eq!(
            in_site_packages("pkg/libfake.so.1"),
            vec![site.join("pkg/libfake.so.1")]
        );
        // An empty file is no library: the reason names the path.
        let err = open_first(&[site.join("pkg/libfake.so.1")]).unwrap_err();
        assert!(err[0].contains("libfake.so.1"), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn libc_is_mapped_and_loads_by_name() {
        assert!(mapped_library("libc.so").is_some() || mapped_library("libc-").is_some());
        let lib = Library::open(Path::new("libc.so.6")).unwrap();
        assert!(lib.symbol(c"malloc").is_some());
        assert!(lib.symbol(c"no_such_symbol_here").is_none());
        assert!(lib.file_of(c"malloc").is_some());
    }
}
