//! NCCL communicators, for the nccl transport.
//!
//! NCCL's functions are resolved from the library [`super::library::nccl`]
//! found (cudarc's own NCCL loader asks for names the wheels do not ship), with
//! cudarc's NCCL types (`ncclComm_t`, `ncclUniqueId`, `ncclConfig_t`). Results
//! are read as plain integers, so a code newer than the bindings cannot be
//! undefined behaviour.
//!
//! Communicators are **non-blocking** (`config.blocking = 0`): initialisation and
//! grouped sends and receives return at once and the plugin polls
//! `ncclCommGetAsyncError` until they settle or a deadline passes, then aborts the
//! communicator (`ncclCommAbort`), which is the only way out of an NCCL call that
//! hangs (a dead or silent peer). A communicator is used by one thread at a time
//! (the nccl transport holds a lock around each call sequence).

use super::driver::{self, RawStream};
use crate::error::{Error, ErrorKind, Result};
use cudarc::nccl::sys::{ncclComm_t, ncclConfig_t, ncclUniqueId};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
const NCCL_TIMEOUT: c_int = 8;
/// `ncclUint8`: bytes are sent as bytes.
const NCCL_UINT8: c_int = 1;
/// `NCCL_CONFIG_UNDEF_INT`.
const UNDEF: c_int = c_int::MIN;

/// NCCL's unique ID: what rank 0 creates and every rank joins with.
pub type UniqueId = [u8; 128];

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> c_int;
type InitRankConfig =
    unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int, *mut ncclConfig_t) -> c_int;
type CommFn = unsafe extern "C" fn(ncclComm_t) -> c_int;
type AsyncError = unsafe extern "C" fn(ncclComm_t, *mut c_int) -> c_int;
type GroupFn = unsafe extern "C" fn() -> c_int;
type SendFn =
    unsafe extern "C" fn(*const c_void, usize, c_int, c_int, ncclComm_t, *mut c_void) -> c_int;
type RecvFn =
    unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, ncclComm_t, *mut c_void) -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type LastError = unsafe extern "C" fn(ncclComm_t) -> *const c_char;

/// The NCCL functions the plugin calls.
struct Api {
    get_version: GetVersion,
    get_unique_id: GetUniqueId,
    init_rank_config: InitRankConfig,
    get_async_error: AsyncError,
    abort: CommFn,
    finalize: CommFn,
    destroy: CommFn,
    group_start: GroupFn,
    group_end: GroupFn,
    send: SendFn,
    recv: RecvFn,
    error_string: ErrorString,
    last_error: LastError,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn api() -> Result<&'static Api> {
    API.get_or_init(resolve)
        .as_ref()
        .map_err(|m| Error::new(ErrorKind::Unavailable, m.clone()))
}

fn resolve() -> Result<Api, String> {
    let loaded = super::library::nccl().map_err(|e| e.message().to_owned())?;
    let sym = |name: &CStr| {
        loaded.lib.symbol(name).ok_or_else(|| {
            format!(
                "NCCL is unavailable: {} has no {} (NCCL 2.19 or newer is needed)",
                loaded.path.display(),
                name.to_string_lossy()
            )
        })
    };
    // SAFETY: each symbol is NCCL's function of that name, with the documented
    // signature (results as int, cudaStream_t as a pointer).
    unsafe {
        use std::mem::transmute as t;
        Ok(Api {
            get_version: t::<*mut c_void, GetVersion>(sym(c"ncclGetVersion")?),
            get_unique_id: t::<*mut c_void, GetUniqueId>(sym(c"ncclGetUniqueId")?),
            init_rank_config: t::<*mut c_void, InitRankConfig>(sym(c"ncclCommInitRankConfig")?),
            get_async_error: t::<*mut c_void, AsyncError>(sym(c"ncclCommGetAsyncError")?),
            abort: t::<*mut c_void, CommFn>(sym(c"ncclCommAbort")?),
            finalize: t::<*mut c_void, CommFn>(sym(c"ncclCommFinalize")?),
            destroy: t::<*mut c_void, CommFn>(sym(c"ncclCommDestroy")?),
            group_start: t::<*mut c_void, GroupFn>(sym(c"ncclGroupStart")?),
            group_end: t::<*mut c_void, GroupFn>(sym(c"ncclGroupEnd")?),
            send: t::<*mut c_void, SendFn>(sym(c"ncclSend")?),
            recv: t::<*mut c_void, RecvFn>(sym(c"ncclRecv")?),
            error_string: t::<*mut c_void, ErrorString>(sym(c"ncclGetErrorString")?),
            last_error: t::<*mut c_void, LastError>(sym(c"ncclGetLastError")?),
        })
    }
}

/// NCCL's version code (e.g. 23007 for 2.30.7); loads NCCL, needs no GPU.
pub fn version() -> Result<i32> {
    let api = api()?;
    let mut v = 0;
    // SAFETY: out-pointer to a local.
    let rc = unsafe { (api.get_version)(&mut v) };
    check(api, rc, "ncclGetVersion", None)?;
    Ok(v)
}

/// A new unique ID (rank 0 creates it; it carries rank 0's bootstrap address).
pub fn unique_id() -> Result<UniqueId> {
    driver::init()?;
    let api = api()?;
    let mut id = ncclUniqueId { internal: [0; 128] };
    // SAFETY: out-pointer to a local.
    let rc = unsafe { (api.get_unique_id)(&mut id) };
    check(api, rc, "ncclGetUniqueId", None)?;
    Ok(id.internal.map(|b| b as u8))
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NCCL returns NUL-terminated strings it owns.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn check(api: &Api, rc: c_int, what: &str, comm: Option<ncclComm_t>) -> Result<()> {
    if rc == NCCL_SUCCESS || rc == NCCL_IN_PROGRESS {
        return Ok(());
    }
    Err(nccl_error(api, rc, what, comm))
}

fn nccl_error(api: &Api, rc: c_int, what: &str, comm: Option<ncclComm_t>) -> Error {
    // SAFETY: both return static or comm-owned strings.
    let name = text(unsafe { (api.error_string)(rc) });
    let detail = comm
        .map(|c| text(unsafe { (api.last_error)(c) }))
        .filter(|d| !d.is_empty())
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    let kind = if rc == NCCL_TIMEOUT {
        ErrorKind::Timeout
    } else {
        ErrorKind::Transport
    };
    Error::new(
        kind,
        format!("NCCL {what} failed: {name} (code {rc}){detail}"),
    )
}

/// One NCCL communicator of this process (one rank of a group).
pub struct Comm {
    raw: ncclComm_t,
    api: &'static Api,
    /// The device it was created on (its buffers must live there).
    pub device: i32,
    aborted: bool,
}

// SAFETY: a communicator may be used from any thread, one at a time (the
// owner serialises calls).
unsafe impl Send for Comm {}

impl Comm {
    /// Joins as `rank` of `size` with rank 0's `id`, on device `device`;
    /// returns once every rank joined, or fails (aborting what was started) at
    /// `deadline`.
    pub fn init(
        id: &UniqueId,
        rank: usize,
        size: usize,
        device: i32,
        deadline: Instant,
    ) -> Result<Comm> {
        let _on = driver::on(device)?;
        let api = api()?;
        let mut config = default_config();
        config.blocking = 0;
        let mut unique = ncclUniqueId { internal: [0; 128] };
        for (d, s) in unique.internal.iter_mut().zip(id) {
            *d = *s as _;
        }
        let mut raw: ncclComm_t = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; config initialised as NCCL_CONFIG_INITIALIZER.
        let rc = unsafe {
            (api.init_rank_config)(&mut raw, size as c_int, unique, rank as c_int, &mut config)
        };
        if raw.is_null() {
            check(api, rc, "ncclCommInitRankConfig", None)?;
            return Err(Error::transport(
                "NCCL ncclCommInitRankConfig returned no communicator",
            ));
        }
        let mut comm = Comm {
            raw,
            api,
            device,
            aborted: false,
        };
        if let Err(e) = check(api, rc, "ncclCommInitRankConfig", Some(raw))
            .and_then(|_| comm.settle(deadline, "joining the NCCL communicator"))
        {
            comm.abort();
            return Err(e);
        }
        Ok(comm)
    }

    /// The communicator's state: `Ok(true)` when idle, `Ok(false)` while an
    /// operation is still being issued, or its error.
    pub fn state(&self) -> Result<bool> {
        let mut err = NCCL_SUCCESS;
        // SAFETY: a live communicator; out-pointer to a local.
        let rc = unsafe { (self.api.get_async_error)(self.raw, &mut err) };
        check(self.api, rc, "ncclCommGetAsyncError", Some(self.raw))?;
        match err {
            NCCL_SUCCESS => Ok(true),
            NCCL_IN_PROGRESS => Ok(false),
            e => Err(nccl_error(self.api, e, "an operation", Some(self.raw))),
        }
    }

    /// Waits until the communicator is idle (its last call fully issued), or
    /// fails at `deadline`.
    pub fn settle(&self, deadline: Instant, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.state()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(format!(
                    "{what} did not complete within {:.1} s",
                    start.elapsed().as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Issues one grouped send (`send`) or receive of every `(address, bytes)`
    /// buffer with `peer` on `stream`, and waits until it is issued (not until
    /// it completed: record an event on `stream` for that).
    pub fn exchange(
        &self,
        send: bool,
        buffers: &[(u64, usize)],
        peer: usize,
        stream: RawStream,
        deadline: Instant,
    ) -> Result<()> {
        let _on = driver::on(self.device)?;
        let what = if send { "ncclSend" } else { "ncclRecv" };
        // SAFETY: group calls bracket the operations issued below.
        check(
            self.api,
            unsafe { (self.api.group_start)() },
            "ncclGroupStart",
            Some(self.raw),
        )?;
        let mut issued = Ok(());
        for &(addr, len) in buffers {
            let s = stream as usize as *mut c_void;
            // SAFETY: each buffer is `len` bytes of device memory on the
            // communicator's device that outlives the operation.
            let rc = unsafe {
                if send {
                    (self.api.send)(
                        addr as *const c_void,
                        len,
                        NCCL_UINT8,
                        peer as c_int,
                        self.raw,
                        s,
                    )
                } else {
                    (self.api.recv)(
                        addr as *mut c_void,
                        len,
                        NCCL_UINT8,
                        peer as c_int,
                        self.raw,
                        s,
                    )
                }
            };
            issued = check(self.api, rc, what, Some(self.raw));
            if issued.is_err() {
                break;
            }
        }
        // The group is closed whatever happened inside it.
        // SAFETY: closes the group opened above.
        let end = check(
            self.api,
            unsafe { (self.api.group_end)() },
            "ncclGroupEnd",
            Some(self.raw),
        );
        issued.and(end)?;
        self.settle(deadline, what)
    }

    /// Aborts the communicator: pending operations end, its resources go.
    /// Every later call fails; dropping it does nothing more.
    pub fn abort(&mut self) {
        if !self.aborted {
            self.aborted = true;
            let _on = driver::on(self.device);
            // SAFETY: a live communicator, aborted once.
            unsafe { (self.api.abort)(self.raw) };
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if self.aborted {
            return;
        }
        let _on = driver::on(self.device);
        // A healthy communicator is finalised (bounded), then destroyed; one
        // that does not finalise in time is aborted.
        // SAFETY: a live communicator, finalised and destroyed once.
        let rc = unsafe { (self.api.finalize)(self.raw) };
        let finalized = check(self.api, rc, "ncclCommFinalize", Some(self.raw)).and_then(|_| {
            self.settle(
                Instant::now() + Duration::from_secs(5),
                "finalizing the NCCL communicator",
            )
        });
        match finalized {
            // SAFETY: as above.
            Ok(()) => unsafe {
                (self.api.destroy)(self.raw);
            },
            Err(e) => {
                log::warn!("ray-rdt: aborting an NCCL communicator that did not finalize: {e}");
                self.abort();
            }
        }
    }
}

/// `NCCL_CONFIG_INITIALIZER` for the layout cudarc binds (NCCL 2.28's, which
/// NCCL reads by its `size`, so older and newer libraries accept it).
fn default_config() -> ncclConfig_t {
    ncclConfig_t {
        size: std::mem::size_of::<ncclConfig_t>(),
        magic: 0xcafe_beef,
        version: 22800,
        blocking: UNDEF,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_loads_nccl_without_a_gpu() {
        match version() {
            Ok(v) => assert!(v >= 21900, "NCCL {v}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                eprintln!("skipped: {e}");
            }
        }
    }
}
