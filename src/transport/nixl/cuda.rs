//! CUDA destination memory for NIXL reads of `kDLCUDA` objects.
//!
//! UNTESTED ON THIS PROJECT'S MACHINES (no GPU): kept deliberately small. The
//! CUDA runtime is loaded at run time (`libcudart.so.13`, `.12`, or the copy in
//! the nvidia wheels next to NIXL's), never linked, so the plugin builds and
//! loads without CUDA. Buffers are allocated with `cudaMalloc` on the calling
//! thread's current device and released with `cudaFree`.

use crate::error::{Error, ErrorKind, Result};
use std::ffi::{c_int, c_void, CString};
use std::path::Path;
use std::sync::OnceLock;

type GetDevice = unsafe extern "C" fn(*mut c_int) -> c_int;
type Malloc = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
type Free = unsafe extern "C" fn(*mut c_void) -> c_int;

struct Cudart {
    get_device: GetDevice,
    malloc: Malloc,
    free: Free,
}

static CUDART: OnceLock<Result<Cudart, String>> = OnceLock::new();

fn cudart() -> Result<&'static Cudart> {
    CUDART.get_or_init(load).as_ref().map_err(|m| {
        Error::new(
            ErrorKind::Unavailable,
            format!("receiving CUDA tensors over nixl needs the CUDA runtime: {m}"),
        )
    })
}

fn load() -> Result<Cudart, String> {
    let mut names: Vec<String> = vec![
        "libcudart.so.13".into(),
        "libcudart.so.12".into(),
        "libcudart.so".into(),
    ];
    // The nvidia wheels next to NIXL's (site-packages/nvidia/cu13/lib, .../cuda_runtime/lib).
    if let Some(site) = super::library::load()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
    {
        for rel in [
            "nvidia/cu13/lib/libcudart.so.13",
            "nvidia/cuda_runtime/lib/libcudart.so.12",
        ] {
            names.push(site.join(rel).to_string_lossy().into_owned());
        }
    }
    for name in &names {
        let Ok(c) = CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: loading a shared library; the handle is kept for the process's life.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            continue;
        }
        let sym = |s: &std::ffi::CStr| {
            // SAFETY: looking a symbol up in a loaded library.
            let p = unsafe { libc::dlsym(handle, s.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        if let (Some(g), Some(m), Some(f)) =
            (sym(c"cudaGetDevice"), sym(c"cudaMalloc"), sym(c"cudaFree"))
        {
            // SAFETY: these are the CUDA runtime's documented signatures.
            return Ok(unsafe {
                Cudart {
                    get_device: std::mem::transmute::<*mut c_void, GetDevice>(g),
                    malloc: std::mem::transmute::<*mut c_void, Malloc>(m),
                    free: std::mem::transmute::<*mut c_void, Free>(f),
                }
            });
        }
    }
    Err(format!("none of {} could be loaded", names.join(", ")))
}

/// Device memory owned by the plugin, freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: *mut c_void,
    /// CUDA ordinal it lives on.
    pub device: i32,
}

// SAFETY: a device allocation may be freed from any thread.
unsafe impl Send for DeviceBuffer {}
// SAFETY: shared access only reads the pointer.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `len` bytes (at least 1) on the current CUDA device.
    pub fn new(len: usize) -> Result<DeviceBuffer> {
        let rt = cudart()?;
        let mut device: c_int = 0;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: out-pointers are valid locals.
        unsafe {
            let e = (rt.get_device)(&mut device);
            if e != 0 {
                return Err(Error::transport(format!(
                    "cudaGetDevice failed with error {e}"
                )));
            }
            let e = (rt.malloc)(&mut ptr, len.max(1));
            if e != 0 || ptr.is_null() {
                return Err(Error::transport(format!(
                    "cudaMalloc of {len} bytes failed with error {e}"
                )));
            }
        }
        Ok(DeviceBuffer { ptr, device })
    }

    /// Start of the allocation.
    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Ok(rt) = cudart() {
            // SAFETY: freeing our own cudaMalloc allocation exactly once.
            unsafe { (rt.free)(self.ptr) };
        }
    }
}
