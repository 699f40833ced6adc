//! The CUDA device and stream the calling thread works on.
//!
//! torch's "current device" and "current stream" are per thread and live in
//! torch, not in CUDA, so the binding tells the plugin before a put, a fetch or
//! a group creation that involves CUDA (`rdt_cuda_set_current`). The plugin then
//! orders its work against that stream:
//!
//! - **put** (producer): an event recorded on the current stream when the
//!   tensors are stored marks the work that produces them; sends and copies of
//!   those tensors wait for it (never a device-wide synchronisation);
//! - **fetch** (consumer): tensors are received on the consumer's current device,
//!   and its current stream waits for the receive before anything queued on it
//!   later reads them.
//!
//! Without a call (a C caller that never set one) the device is the CUDA
//! runtime's current device (`cudaGetDevice`, if the runtime can be loaded),
//! else 0, and the stream is the legacy default stream of that device (0),
//! which orders against every blocking stream.

use super::driver::RawStream;
use crate::error::{Error, Result};
use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<Option<(i32, RawStream)>> = const { Cell::new(None) };
}

/// Sets the calling thread's device and stream (`device < 0` clears them).
pub fn set(device: i32, stream: RawStream) {
    CURRENT.with(|c| c.set((device >= 0).then_some((device, stream))));
}

/// What [`set`] last set on this thread, if anything.
pub fn get() -> Option<(i32, RawStream)> {
    CURRENT.with(Cell::get)
}

/// The calling thread's current device: the one set, else the runtime's
/// current device, else 0.
pub fn device() -> i32 {
    if let Some((d, _)) = get() {
        return d;
    }
    runtime_device().unwrap_or(0)
}

/// The stream to order against on `device`: the one set when it is for that
/// device, else the legacy default stream (0).
pub fn stream(device: i32) -> RawStream {
    match get() {
        Some((d, s)) if d == device => s,
        _ => 0,
    }
}

/// `cudaGetDevice` of the CUDA runtime, if it can be loaded and answers.
fn runtime_device() -> Result<i32> {
    type GetDevice = unsafe extern "C" fn(*mut std::ffi::c_int) -> std::ffi::c_int;
    let rt = super::library::runtime()?;
    let sym = rt
        .lib
        .symbol(c"cudaGetDevice")
        .ok_or_else(|| Error::transport("the CUDA runtime has no cudaGetDevice"))?;
    // SAFETY: cudaGetDevice's documented signature.
    let get: GetDevice = unsafe { std::mem::transmute::<*mut std::ffi::c_void, GetDevice>(sym) };
    let mut device = 0;
    // SAFETY: out-pointer to a local.
    let rc = unsafe { get(&mut device) };
    if rc != 0 {
        return Err(Error::transport(format!(
            "cudaGetDevice failed with error {rc}"
        )));
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_per_thread_and_matches_the_device() {
        set(1, 0xabc);
        assert_eq!(stream(1), 0xabc);
        assert_eq!(stream(0), 0, "another device's stream is never used");
        assert_eq!(device(), 1);
        std::thread::spawn(|| assert_eq!(get(), None))
            .join()
            .unwrap();
        set(-1, 0);
        assert_eq!(get(), None);
    }
}
