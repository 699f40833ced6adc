//! The CUDA driver API as the transports use it: through cudarc's raw bindings
//! (`cudarc::driver::sys`, loaded at run time), each call guarded.
//!
//! Every call goes through [`call`]: the driver must have been found
//! ([`super::library::driver`]) and initialised (`cuInit`, once), the call runs
//! under `catch_unwind` (cudarc's loader panics on a missing symbol), and a
//! failure becomes an [`Error`] naming the call and CUDA's error name.
//!
//! Contexts: the plugin uses each device's **primary context** (the one the CUDA
//! runtime, and so torch, uses), retained once per process and made current on
//! the calling thread only for the duration of each call ([`on`]: pushed, then
//! popped, so the caller's own current context, torch's, is left as it was).
//! Streams: the plugin's own non-blocking streams ([`plugin_stream`], one per device, process lifetime);
//! the caller's stream comes from [`super::current`]. Waiting on the host is
//! always bounded: [`Event::wait`] polls until a deadline.

use crate::error::{Error, ErrorKind, Result};
use cudarc::driver::sys::{self, CUresult};
use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A device address.
pub type DevicePtr = u64;
/// A raw CUDA stream handle (`cudaStream_t` and `CUstream` are the same
/// pointer); 0 is the legacy default stream of the current context.
pub type RawStream = u64;

static INIT: OnceLock<Result<(), Error>> = OnceLock::new();

/// Loads the driver and runs `cuInit` once per process. A machine without a
/// driver or without a GPU gives [`ErrorKind::Unavailable`].
pub fn init() -> Result<()> {
    INIT.get_or_init(|| {
        super::library::driver()?;
        // SAFETY: the library and its symbols were checked by library::driver.
        raw_call("cuInit", || unsafe { sys::cuInit(0) }).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("CUDA is unavailable on this machine: {e}"),
            )
        })
    })
    .clone()
}

/// Runs one driver call after [`init`], under `catch_unwind`.
pub fn call(what: &str, f: impl FnOnce() -> CUresult) -> Result<()> {
    init()?;
    raw_call(what, f)
}

fn raw_call(what: &str, f: impl FnOnce() -> CUresult) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(CUresult::CUDA_SUCCESS) => Ok(()),
        Ok(r) => Err(cu_error(what, r)),
        Err(panic) => Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "the CUDA driver could not run {what}: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("cudarc panicked")
            ),
        )),
    }
}

/// An error for a failed driver call: the call and CUDA's error name and text.
fn cu_error(what: &str, r: CUresult) -> Error {
    let e = cudarc::driver::DriverError(r);
    let name = catch_unwind(AssertUnwindSafe(|| {
        e.error_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{r:?}"))
    }))
    .unwrap_or_else(|_| format!("{r:?}"));
    let text = catch_unwind(AssertUnwindSafe(|| {
        e.error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }))
    .unwrap_or_default();
    let kind = match r {
        CUresult::CUDA_ERROR_NO_DEVICE
        | CUresult::CUDA_ERROR_NOT_INITIALIZED
        | CUresult::CUDA_ERROR_DEINITIALIZED
        | CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
        | CUresult::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => ErrorKind::Unavailable,
        CUresult::CUDA_ERROR_OUT_OF_MEMORY => ErrorKind::Io,
        _ => ErrorKind::Transport,
    };
    Error::new(kind, format!("CUDA {what} failed: {name} ({text})"))
}

/// Number of devices this process sees.
pub fn device_count() -> Result<i32> {
    let mut n = 0;
    // SAFETY: out-pointer to a local.
    call("cuDeviceGetCount", || unsafe {
        sys::cuDeviceGetCount(&mut n)
    })?;
    Ok(n)
}

/// A retained primary context (kept for the life of the process).
#[derive(Clone, Copy)]
struct Primary(sys::CUcontext);
// SAFETY: a CUDA context handle may be used from any thread.
unsafe impl Send for Primary {}

static CONTEXTS: Mutex<Vec<(i32, Primary)>> = Mutex::new(Vec::new());

/// The primary context of device `ordinal`, retained on first use.
pub fn context(ordinal: i32) -> Result<sys::CUcontext> {
    if let Some((_, c)) = CONTEXTS.lock().iter().find(|(d, _)| *d == ordinal) {
        return Ok(c.0);
    }
    let mut dev = 0;
    // SAFETY: out-pointers to locals.
    call("cuDeviceGet", || unsafe {
        sys::cuDeviceGet(&mut dev, ordinal)
    })?;
    let mut ctx = std::ptr::null_mut();
    call("cuDevicePrimaryCtxRetain", || unsafe {
        sys::cuDevicePrimaryCtxRetain(&mut ctx, dev)
    })?;
    let mut contexts = CONTEXTS.lock();
    if let Some((_, c)) = contexts.iter().find(|(d, _)| *d == ordinal) {
        return Ok(c.0); // another thread won; its retain counts once more, harmlessly
    }
    contexts.push((ordinal, Primary(ctx)));
    Ok(ctx)
}

/// Device `ordinal`'s primary context, current on the calling thread until
/// dropped; then the thread's previous context is current again, so that the
/// caller (torch, on the user's thread) sees no change of device.
#[must_use = "the context is current only while the scope lives"]
pub struct On(std::marker::PhantomData<*const ()>);

/// Makes device `ordinal`'s primary context current for the scope returned
/// (`cuCtxPushCurrent`, undone by `cuCtxPopCurrent` when it is dropped).
pub fn on(ordinal: i32) -> Result<On> {
    let ctx = context(ordinal)?;
    // SAFETY: a retained context; popped by On's drop on this same thread.
    call("cuCtxPushCurrent_v2", || unsafe {
        sys::cuCtxPushCurrent_v2(ctx)
    })?;
    Ok(On(std::marker::PhantomData))
}

impl Drop for On {
    fn drop(&mut self) {
        let mut previous = std::ptr::null_mut();
        // SAFETY: pops the context this scope pushed.
        let _ = call("cuCtxPopCurrent_v2", || unsafe {
            sys::cuCtxPopCurrent_v2(&mut previous)
        });
    }
}

/// The UUID of device `ordinal` (the identity of a GPU across processes, whose
/// ordinals differ with `CUDA_VISIBLE_DEVICES`).
pub fn uuid(ordinal: i32) -> Result<[u8; 16]> {
    let mut dev = 0;
    // SAFETY: out-pointers to locals.
    call("cuDeviceGet", || unsafe {
        sys::cuDeviceGet(&mut dev, ordinal)
    })?;
    let mut id = sys::CUuuid { bytes: [0; 16] };
    call("cuDeviceGetUuid_v2", || unsafe {
        sys::cuDeviceGetUuid_v2(&mut id, dev)
    })?;
    Ok(id.bytes.map(|b| b as u8))
}

/// The ordinal of the visible device with `uuid`, if this process sees it.
pub fn ordinal_of(uuid_bytes: &[u8; 16]) -> Result<Option<i32>> {
    for ordinal in 0..device_count()? {
        if &uuid(ordinal)? == uuid_bytes {
            return Ok(Some(ordinal));
        }
    }
    Ok(None)
}

/// The base address and size of the allocation that holds `ptr`.
pub fn allocation_of(ptr: DevicePtr) -> Result<(DevicePtr, usize)> {
    let (mut base, mut size) = (0, 0usize);
    // SAFETY: out-pointers to locals.
    call("cuMemGetAddressRange_v2", || unsafe {
        sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr)
    })?;
    Ok((base, size))
}

/// The plugin's own stream on device `ordinal` (non-blocking, created once).
pub fn plugin_stream(ordinal: i32) -> Result<RawStream> {
    static STREAMS: Mutex<Vec<(i32, RawStream)>> = Mutex::new(Vec::new());
    let mut streams = STREAMS.lock();
    if let Some((_, s)) = streams.iter().find(|(d, _)| *d == ordinal) {
        return Ok(*s);
    }
    let s = new_stream(ordinal)?;
    streams.push((ordinal, s));
    Ok(s)
}

/// A new non-blocking stream on device `ordinal` (never destroyed: streams
/// live as long as the group or process that uses them).
pub fn new_stream(ordinal: i32) -> Result<RawStream> {
    let _on = on(ordinal)?;
    let mut s = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; flag 1 is CU_STREAM_NON_BLOCKING.
    call("cuStreamCreate", || unsafe {
        sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
    })?;
    Ok(s as RawStream)
}

fn stream_ptr(s: RawStream) -> sys::CUstream {
    s as usize as sys::CUstream
}

/// A CUDA event, destroyed on drop.
#[derive(Debug)]
pub struct Event {
    raw: sys::CUevent,
    /// The device whose context created it.
    pub device: i32,
}

// SAFETY: event handles may be used and destroyed from any thread.
unsafe impl Send for Event {}
// SAFETY: recording and querying an event are thread-safe driver calls.
unsafe impl Sync for Event {}

/// An IPC handle of a memory allocation or an event (CUDA's 64 bytes).
pub type IpcHandle = [u8; 64];

impl Event {
    /// A new event on device `ordinal`, without timing; `interprocess` makes it
    /// shareable with other processes ([`Event::ipc_handle`]).
    pub fn new(ordinal: i32, interprocess: bool) -> Result<Event> {
        let _on = on(ordinal)?;
        let mut flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        if interprocess {
            flags |= sys::CUevent_flags::CU_EVENT_INTERPROCESS as u32;
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        call("cuEventCreate", || unsafe {
            sys::cuEventCreate(&mut raw, flags)
        })?;
        Ok(Event {
            raw,
            device: ordinal,
        })
    }

    /// Opens an event another process shared ([`Event::ipc_handle`]), in device
    /// `ordinal`'s context.
    pub fn open_ipc(ordinal: i32, handle: &IpcHandle) -> Result<Event> {
        let _on = on(ordinal)?;
        let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
        for (d, s) in h.reserved.iter_mut().zip(handle) {
            *d = *s as _;
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the handle is passed by value.
        call("cuIpcOpenEventHandle", || unsafe {
            sys::cuIpcOpenEventHandle(&mut raw, h)
        })?;
        Ok(Event {
            raw,
            device: ordinal,
        })
    }

    /// Records the work queued on `stream` (of this event's device) so far.
    pub fn record(&self, stream: RawStream) -> Result<()> {
        let _on = on(self.device)?;
        // SAFETY: a live event and a stream of its device.
        call("cuEventRecord", || unsafe {
            sys::cuEventRecord(self.raw, stream_ptr(stream))
        })
    }

    /// Whether the recorded work has completed.
    pub fn is_done(&self) -> Result<bool> {
        let mut r = CUresult::CUDA_SUCCESS;
        // SAFETY: a live event.
        call("cuEventQuery", || {
            r = unsafe { sys::cuEventQuery(self.raw) };
            if r == CUresult::CUDA_ERROR_NOT_READY {
                CUresult::CUDA_SUCCESS
            } else {
                r
            }
        })?;
        Ok(r == CUresult::CUDA_SUCCESS)
    }

    /// Waits on the host until the recorded work has completed, or fails with
    /// [`ErrorKind::Timeout`] at `deadline`; `poll` runs between queries (to
    /// notice a failed communicator) and may end the wait with its error.
    pub fn wait(
        &self,
        deadline: Instant,
        what: &str,
        mut poll: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(1);
        loop {
            if self.is_done()? {
                return Ok(());
            }
            poll()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!(
                    "{what} did not complete within {:.1} s",
                    now.duration_since(start).as_secs_f64()
                )));
            }
            if now.duration_since(start) < Duration::from_millis(1) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_micros(200));
            }
        }
    }

    /// Makes `stream` wait (on the device) for the work this event recorded.
    pub fn wait_on(&self, stream: RawStream, stream_device: i32) -> Result<()> {
        let _on = on(stream_device)?;
        // SAFETY: a live event; the stream belongs to the bound context.
        call("cuStreamWaitEvent", || unsafe {
            sys::cuStreamWaitEvent(stream_ptr(stream), self.raw, 0)
        })
    }

    /// The handle another process opens with [`Event::open_ipc`] (the event
    /// must have been created `interprocess`).
    pub fn ipc_handle(&self) -> Result<IpcHandle> {
        let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
        // SAFETY: out-pointer to a local; a live interprocess event.
        call("cuIpcGetEventHandle", || unsafe {
            sys::cuIpcGetEventHandle(&mut h, self.raw)
        })?;
        Ok(h.reserved.map(|b| b as u8))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: destroying our own event once (the driver allows destroying a
        // recorded event before it completes). Errors at exit are ignored.
        if let Ok(_on) = on(self.device) {
            let _ = call("cuEventDestroy_v2", || unsafe {
                sys::cuEventDestroy_v2(self.raw)
            });
        }
    }
}

/// `len` bytes (at least 1) of device memory on device `ordinal`.
pub fn malloc(ordinal: i32, len: usize) -> Result<DevicePtr> {
    let _on = on(ordinal)?;
    let mut ptr = 0;
    // SAFETY: out-pointer to a local.
    call("cuMemAlloc_v2", || unsafe {
        sys::cuMemAlloc_v2(&mut ptr, len.max(1))
    })?;
    Ok(ptr)
}

/// Frees memory from [`malloc`].
pub fn free(ordinal: i32, ptr: DevicePtr) -> Result<()> {
    let _on = on(ordinal)?;
    // SAFETY: our own allocation, freed once.
    call("cuMemFree_v2", || unsafe { sys::cuMemFree_v2(ptr) })
}

/// Queues a copy of `len` bytes from `src` (device `src_device`) to `dst`
/// (device `dst_device`) on `stream` (of `dst_device`).
pub fn copy(
    dst: DevicePtr,
    dst_device: i32,
    src: DevicePtr,
    src_device: i32,
    len: usize,
    stream: RawStream,
) -> Result<()> {
    let _on = on(dst_device)?;
    if dst_device == src_device {
        // SAFETY: both ranges are valid device memory of `len` bytes.
        return call("cuMemcpyDtoDAsync_v2", || unsafe {
            sys::cuMemcpyDtoDAsync_v2(dst, src, len, stream_ptr(stream))
        });
    }
    let (dst_ctx, src_ctx) = (context(dst_device)?, context(src_device)?);
    // SAFETY: as above, each range in its device's context.
    call("cuMemcpyPeerAsync", || unsafe {
        sys::cuMemcpyPeerAsync(dst, dst_ctx, src, src_ctx, len, stream_ptr(stream))
    })
}

/// Copies `src` from the host to device memory at `dst` (device `ordinal`),
/// synchronously (tests and benchmarks).
pub fn upload(dst: DevicePtr, ordinal: i32, src: &[u8]) -> Result<()> {
    let _on = on(ordinal)?;
    // SAFETY: `dst` holds at least `src.len()` bytes of device memory.
    call("cuMemcpyHtoD_v2", || unsafe {
        sys::cuMemcpyHtoD_v2(dst, src.as_ptr() as *const _, src.len())
    })
}

/// Copies device memory at `src` (device `ordinal`) into `dst` on the host,
/// synchronously (tests and benchmarks).
pub fn download(dst: &mut [u8], src: DevicePtr, ordinal: i32) -> Result<()> {
    let _on = on(ordinal)?;
    // SAFETY: `src` holds at least `dst.len()` bytes of device memory.
    call("cuMemcpyDtoH_v2", || unsafe {
        sys::cuMemcpyDtoH_v2(dst.as_mut_ptr() as *mut _, src, dst.len())
    })
}

/// The IPC handle of the allocation starting at `base` (its base address).
pub fn ipc_mem_handle(base: DevicePtr) -> Result<IpcHandle> {
    let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
    // SAFETY: out-pointer to a local.
    call("cuIpcGetMemHandle", || unsafe {
        sys::cuIpcGetMemHandle(&mut h, base)
    })?;
    Ok(h.reserved.map(|b| b as u8))
}

/// Maps another process's allocation into device `ordinal`'s context (peer
/// access enabled as needed); close it with [`ipc_close`].
pub fn ipc_open(ordinal: i32, handle: &IpcHandle) -> Result<DevicePtr> {
    let _on = on(ordinal)?;
    let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
    for (d, s) in h.reserved.iter_mut().zip(handle) {
        *d = *s as _;
    }
    let mut ptr = 0;
    // SAFETY: out-pointer to a local; flag 1 is CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS.
    call("cuIpcOpenMemHandle_v2", || unsafe {
        sys::cuIpcOpenMemHandle_v2(&mut ptr, h, 1)
    })?;
    Ok(ptr)
}

/// Unmaps an allocation opened with [`ipc_open`].
pub fn ipc_close(ordinal: i32, ptr: DevicePtr) -> Result<()> {
    let _on = on(ordinal)?;
    // SAFETY: a mapping from ipc_open, closed once.
    call("cuIpcCloseMemHandle", || unsafe {
        sys::cuIpcCloseMemHandle(ptr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_every_call_is_unavailable_not_a_panic() {
        if init().is_ok() {
            eprintln!("skipped: this machine has a CUDA driver and device");
            return;
        }
        let e = malloc(0, 16).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert_eq!(
            Event::new(0, true).unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(device_count().unwrap_err().kind(), ErrorKind::Unavailable);
    }
}
