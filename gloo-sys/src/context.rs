//! [`Context`]: a connected full-mesh Gloo group with tagged send/receive.

use std::ffi::CString;
use std::marker::PhantomData;
use std::os::raw::c_int;
use std::ptr::{self, NonNull};
use std::time::Duration;

use crate::error::{ErrBuf, ErrorKind, GlooError};
use crate::ffi;
use crate::store::{shim_store, Store};
use crate::timeout::timeout_ms;

/// How a [`Context`] binds and how long its rendezvous may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextOptions {
    /// Address or host name to bind and advertise to the peers, e.g.
    /// `"127.0.0.1"` for a single-host group or the node's IP. `None` (and no
    /// `iface`): Gloo resolves this machine's host name.
    pub hostname: Option<String>,
    /// Network interface to bind, e.g. `"eth0"`; takes precedence over
    /// `hostname`.
    pub iface: Option<String>,
    /// Bound on the rendezvous: store lookups and connecting the mesh.
    pub timeout: Duration,
}

impl Default for ContextOptions {
    /// No bind address (Gloo's default: this host's name) and a 30 s timeout.
    fn default() -> ContextOptions {
        ContextOptions {
            hostname: None,
            iface: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A connected Gloo group of `size` processes over TCP.
///
/// Created by [`Context::connect`], which every rank calls with the same
/// store, prefix and size. Transfers are point to point: a message sent with
/// [`send`](Self::send) on `(peer, slot)` is received by the peer's
/// [`recv`](Self::recv) on `(its sender, slot)` with the same length; several
/// messages on one `(peer, slot)` arrive in order.
///
/// # Faults
/// Any failed transfer (timeout, connection error, abort, an abandoned
/// [`PendingOp`]) *breaks* the context: every pending operation fails at
/// once, every later one fails with [`ErrorKind::Broken`] (or
/// [`ErrorKind::Aborted`]), and all connections are closed, so the peers'
/// contexts break promptly too. A peer that dies is noticed as soon as its
/// connection drops, also in the middle of a transfer. Recovery means a new
/// context under a new prefix.
///
/// # Threads
/// `Context` is `Send` and `Sync`: every shim entry point is thread-safe (the
/// shim guards its own state with a mutex and Gloo locks each connection),
/// so several threads may transfer at once and any thread may call
/// [`abort`](Self::abort). Concurrent operations on the same `(peer, slot,
/// direction)` are matched in the order Gloo sees them, which threads do not
/// control: give concurrent streams different slots.
pub struct Context {
    raw: NonNull<ffi::gloo_shim_context>,
    rank: usize,
    size: usize,
}

// SAFETY: see "Threads" above: the shim's context is safe to use from any
// thread, and concurrently; destruction happens once, in Drop.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("broken", &self.is_broken())
            .finish()
    }
}

/// `value` as a C `int`, or an invalid-argument error naming `what`.
fn to_c_int(value: usize, what: &str) -> Result<c_int, GlooError> {
    c_int::try_from(value).map_err(|_| {
        GlooError::new(
            ErrorKind::InvalidArgument,
            format!("{what} {value} is out of range"),
        )
    })
}

/// `s` as a C string, or an invalid-argument error naming `what`.
fn to_cstring(s: &str, what: &str) -> Result<CString, GlooError> {
    CString::new(s).map_err(|_| {
        GlooError::new(
            ErrorKind::InvalidArgument,
            format!("{what} contains a NUL byte"),
        )
    })
}

impl Context {
    /// Joins the group as `rank` of `size`: binds a TCP endpoint, publishes
    /// its address in `store` under `prefix`, and connects to every other
    /// rank. Blocks until all ranks joined or `opts.timeout` passed.
    ///
    /// `prefix` must be the same on all ranks and unique per rendezvous (for
    /// example the group name plus a generation number): store keys are never
    /// deleted, so reusing a prefix would find stale addresses. The store is
    /// only used during this call.
    pub fn connect(
        rank: usize,
        size: usize,
        store: &dyn Store,
        prefix: &str,
        opts: &ContextOptions,
    ) -> Result<Context, GlooError> {
        let c_rank = to_c_int(rank, "rank")?;
        let c_size = to_c_int(size, "group size")?;
        let prefix_c = to_cstring(prefix, "prefix")?;
        let hostname = opts
            .hostname
            .as_deref()
            .map(|h| to_cstring(h, "hostname"))
            .transpose()?;
        let iface = opts
            .iface
            .as_deref()
            .map(|i| to_cstring(i, "iface"))
            .transpose()?;
        let c_opts = ffi::gloo_shim_options {
            hostname: hostname.as_ref().map_or(ptr::null(), |h| h.as_ptr()),
            iface: iface.as_ref().map_or(ptr::null(), |i| i.as_ptr()),
            timeout_ms: timeout_ms(opts.timeout),
        };
        let holder: &dyn Store = store;
        let c_store = shim_store(&holder);
        let mut raw = ptr::null_mut();
        let mut err = ErrBuf::new();
        // SAFETY: all pointers are valid for the call; `holder` outlives it,
        // and the shim does not keep the store after returning.
        let status = unsafe {
            ffi::gloo_shim_context_create(
                c_rank,
                c_size,
                &c_store,
                prefix_c.as_ptr(),
                &c_opts,
                &mut raw,
                err.ptr(),
                err.cap(),
            )
        };
        err.check(status)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            GlooError::new(
                ErrorKind::Internal,
                "the shim returned success without a context",
            )
        })?;
        Ok(Context { raw, rank, size })
    }

    /// This process's rank in the group.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the group.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Sends `data` to `peer` on `slot` and waits up to `timeout` until it
    /// has been handed to the network (the peer must post the matching
    /// [`recv`](Self::recv) of `data.len()` bytes within that time).
    /// Timeouts are rounded up to whole milliseconds, and capped at about
    /// 24.8 days.
    pub fn send(
        &self,
        peer: usize,
        slot: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), GlooError> {
        // SAFETY: `data` is valid for reads for the whole blocking call.
        self.blocking(peer, |raw, peer, err| unsafe {
            ffi::gloo_shim_send(
                raw,
                peer,
                slot,
                data.as_ptr().cast(),
                data.len(),
                timeout_ms(timeout),
                err.ptr(),
                err.cap(),
            )
        })
    }

    /// Receives exactly `buf.len()` bytes from `peer` on `slot`, waiting up
    /// to `timeout`. A sender that sends another length never matches: both
    /// sides time out. On error the contents of `buf` are unspecified.
    pub fn recv(
        &self,
        peer: usize,
        slot: u64,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<(), GlooError> {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: `buf` is valid for writes for the whole blocking call.
        self.blocking(peer, |raw, peer, err| unsafe {
            ffi::gloo_shim_recv(
                raw,
                peer,
                slot,
                ptr.cast(),
                len,
                timeout_ms(timeout),
                err.ptr(),
                err.cap(),
            )
        })
    }

    /// Shared body of the blocking calls: checks the peer rank and makes the
    /// shim call `call` (context, peer, error buffer).
    fn blocking(
        &self,
        peer: usize,
        call: impl FnOnce(*mut ffi::gloo_shim_context, c_int, &mut ErrBuf) -> ffi::gloo_shim_status,
    ) -> Result<(), GlooError> {
        let peer = to_c_int(peer, "peer rank")?;
        let mut err = ErrBuf::new();
        let status = call(self.raw.as_ptr(), peer, &mut err);
        err.check(status)
    }

    /// Posts a send of `len` bytes at `ptr` without waiting, so several
    /// transfers can overlap; finish it with [`PendingOp::wait`].
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes (it may dangle when `len`
    /// is 0), and the memory must not be written or freed until the returned
    /// op has been dropped or waited on (`wait` consumes it).
    pub unsafe fn post_send(
        &self,
        peer: usize,
        slot: u64,
        ptr: *const u8,
        len: usize,
    ) -> Result<PendingOp<'_>, GlooError> {
        let ptr = if len == 0 { ptr::null() } else { ptr };
        // SAFETY: the caller guarantees the memory.
        self.post(peer, |raw, peer, op, err| unsafe {
            ffi::gloo_shim_post_send(raw, peer, slot, ptr.cast(), len, op, err.ptr(), err.cap())
        })
    }

    /// Posts a receive of exactly `len` bytes into `ptr` without waiting;
    /// finish it with [`PendingOp::wait`].
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes (it may dangle when
    /// `len` is 0), and the memory must not be accessed or freed until the
    /// returned op has been dropped or waited on.
    pub unsafe fn post_recv(
        &self,
        peer: usize,
        slot: u64,
        ptr: *mut u8,
        len: usize,
    ) -> Result<PendingOp<'_>, GlooError> {
        let ptr = if len == 0 { ptr::null_mut() } else { ptr };
        // SAFETY: the caller guarantees the memory.
        self.post(peer, |raw, peer, op, err| unsafe {
            ffi::gloo_shim_post_recv(raw, peer, slot, ptr.cast(), len, op, err.ptr(), err.cap())
        })
    }

    /// Shared body of the posting calls: checks the peer rank, makes the shim
    /// call `post` (context, peer, where the op goes, error buffer), and wraps
    /// the op, which cannot outlive `self` (lifetime of [`PendingOp`]).
    fn post(
        &self,
        peer: usize,
        post: impl FnOnce(
            *mut ffi::gloo_shim_context,
            c_int,
            *mut *mut ffi::gloo_shim_op,
            &mut ErrBuf,
        ) -> ffi::gloo_shim_status,
    ) -> Result<PendingOp<'_>, GlooError> {
        let peer = to_c_int(peer, "peer rank")?;
        let mut op = ptr::null_mut();
        let mut err = ErrBuf::new();
        let status = post(self.raw.as_ptr(), peer, &mut op, &mut err);
        err.check(status)?;
        PendingOp::new(op)
    }

    /// Makes every pending and future operation fail promptly with
    /// [`ErrorKind::Aborted`], and closes all connections so that the peers'
    /// operations fail promptly too. Callable from any thread, repeatedly.
    /// If the context was already broken, the original reason stays.
    pub fn abort(&self) {
        // SAFETY: `raw` is a live context; abort is thread-safe.
        unsafe { ffi::gloo_shim_context_abort(self.raw.as_ptr()) }
    }

    /// Whether the context is broken (or aborted); see "Faults" above.
    pub fn is_broken(&self) -> bool {
        // SAFETY: `raw` is a live context; a NULL reason buffer is allowed.
        unsafe { ffi::gloo_shim_context_is_broken(self.raw.as_ptr(), ptr::null_mut(), 0) != 0 }
    }

    /// Why the context is broken, or `None` while it works.
    pub fn broken_reason(&self) -> Option<String> {
        let mut reason = ErrBuf::new();
        // SAFETY: `raw` is a live context; the buffer is valid for its capacity.
        let broken = unsafe {
            ffi::gloo_shim_context_is_broken(self.raw.as_ptr(), reason.ptr(), reason.cap())
        };
        (broken != 0).then(|| reason.text())
    }
}

impl Drop for Context {
    /// Closes the connections (peers see their connection to this rank
    /// close) and joins the context's threads.
    fn drop(&mut self) {
        // SAFETY: `raw` is live and no PendingOp can outlive `self`.
        unsafe { ffi::gloo_shim_context_destroy(self.raw.as_ptr()) }
    }
}

/// A send or receive posted with [`Context::post_send`] or
/// [`Context::post_recv`].
///
/// [`wait`](Self::wait) for it. Dropping it before it completed breaks the
/// context (the peer's matching operation can no longer be honoured) and
/// returns only once Gloo no longer touches the memory.
#[must_use = "dropping a PendingOp before it completed breaks the context"]
pub struct PendingOp<'ctx> {
    raw: NonNull<ffi::gloo_shim_op>,
    _ctx: PhantomData<&'ctx Context>,
}

// SAFETY: a shim op may be waited on and destroyed from any thread, one at a
// time; `wait` and `drop` take it by value or exclusively.
unsafe impl Send for PendingOp<'_> {}

impl std::fmt::Debug for PendingOp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOp").finish_non_exhaustive()
    }
}

impl<'ctx> PendingOp<'ctx> {
    fn new(raw: *mut ffi::gloo_shim_op) -> Result<PendingOp<'ctx>, GlooError> {
        let raw = NonNull::new(raw).ok_or_else(|| {
            GlooError::new(
                ErrorKind::Internal,
                "the shim returned success without an op",
            )
        })?;
        Ok(PendingOp {
            raw,
            _ctx: PhantomData,
        })
    }

    /// Waits up to `timeout` for the transfer to complete; on success the
    /// memory may be used again (and a receive's bytes read). A failure
    /// breaks the context.
    pub fn wait(self, timeout: Duration) -> Result<(), GlooError> {
        let mut err = ErrBuf::new();
        // SAFETY: `raw` is a live op, used by this thread only.
        let status = unsafe {
            ffi::gloo_shim_op_wait(self.raw.as_ptr(), timeout_ms(timeout), err.ptr(), err.cap())
        };
        err.check(status)
        // `self` drops here and frees the op.
    }
}

impl Drop for PendingOp<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` is a live op, destroyed exactly once.
        unsafe { ffi::gloo_shim_op_destroy(self.raw.as_ptr()) }
    }
}
