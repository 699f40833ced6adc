//! CUDA and run-time libraries through the C ABI: the caller's CUDA device and
//! stream, where to look for libraries, and what was found.

use super::boundary::{guard, out};
use super::context::{rdt_buffer, req_str};
use super::status::rdt_status;
use std::ffi::c_char;
use std::path::Path;

/// Tells the plugin which CUDA device and stream the calling thread works on
/// (torch's current device and current stream), for the next puts, fetches and
/// NCCL group creations on this thread that involve CUDA tensors: a put orders
/// its sends or copies after the work already queued on `stream`; tensors a
/// fetch returns live on `device` and are ready for work queued on `stream`
/// afterwards. `stream` is a `cudaStream_t` (0: the legacy default stream). A
/// negative `device` forgets the setting: the plugin then uses the CUDA
/// runtime's current device and the legacy default stream. Never blocks and
/// never touches the GPU.
#[no_mangle]
pub extern "C" fn rdt_cuda_set_current(device: i32, stream: u64) -> rdt_status {
    guard(|| {
        #[cfg(feature = "cuda")]
        crate::cuda::current::set(device, stream);
        // Without the cuda feature the plugin moves no CUDA memory: nothing to tell.
        #[cfg(not(feature = "cuda"))]
        let _ = (device, stream);
        Ok(())
    })
}

/// Adds a Python prefix (`sys.prefix`) whose `lib/python3.X/site-packages` folders the
/// plugin searches for the libraries its transports load at run time (NIXL's C
/// API, the CUDA runtime, NCCL), after the folders of files already mapped into
/// the process. The Python binding calls it with its interpreter's prefix.
///
/// # Safety
/// `prefix` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rdt_library_search_prefix(prefix: *const c_char) -> rdt_status {
    guard(|| {
        crate::dylib::add_python_prefix(Path::new(req_str(prefix, "prefix")?));
        Ok(())
    })
}

/// Writes a JSON description of the CUDA libraries the plugin finds to
/// `*out_json` (free it with `rdt_buffer_free`): for `"driver"`, `"runtime"`
/// and `"nccl"`, the `"path"` loaded (and the driver's device count or NCCL's
/// version) or the `"error"` saying what is missing. Loads the libraries and
/// initialises the driver if that has not happened yet; fails only on a NULL
/// argument.
///
/// # Safety
/// `out_json` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_cuda_libraries(out_json: *mut rdt_buffer) -> rdt_status {
    guard(|| {
        let out = out(out_json, "out_json")?;
        #[cfg(feature = "cuda")]
        let report = crate::cuda::report();
        #[cfg(not(feature = "cuda"))]
        let report = {
            let none = r#"{"error": "this build of the plugin has no CUDA layer (built without the cuda feature)"}"#;
            format!(r#"{{"driver": {none}, "runtime": {none}, "nccl": {none}}}"#)
        };
        *out = rdt_buffer::from_vec(report.into_bytes());
        Ok(())
    })
}
