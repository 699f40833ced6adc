//! Raw declarations of the C shim (`shim/gloo_shim.h`), written by hand.
//!
//! Everything here mirrors the header one to one; the header's comments are
//! the reference for the semantics. Prefer the safe layer ([`crate::Context`],
//! [`crate::Store`]) unless you are building another C boundary on top.

// The C names are kept, as is customary for -sys crates.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

/// Status code returned by the shim (`gloo_shim_status`).
pub type gloo_shim_status = c_int;

/// Success.
pub const GLOO_SHIM_OK: gloo_shim_status = 0;
/// A bad argument (NULL pointer, rank out of range, non-positive timeout...).
pub const GLOO_SHIM_INVALID_ARGUMENT: gloo_shim_status = 1;
/// The operation (or the rendezvous) did not complete within its timeout.
pub const GLOO_SHIM_TIMEOUT: gloo_shim_status = 2;
/// `gloo_shim_context_abort` was called on the context.
pub const GLOO_SHIM_ABORTED: gloo_shim_status = 3;
/// The context broke earlier, or while the operation waited.
pub const GLOO_SHIM_BROKEN: gloo_shim_status = 4;
/// A connection failed (peer died, connection reset...).
pub const GLOO_SHIM_IO: gloo_shim_status = 5;
/// The rendezvous store failed during context creation.
pub const GLOO_SHIM_STORE: gloo_shim_status = 6;
/// Anything else Gloo or the C++ runtime threw.
pub const GLOO_SHIM_INTERNAL: gloo_shim_status = 7;

/// Store callback result: success.
pub const GLOO_SHIM_STORE_OK: c_int = 0;
/// Store callback result: `get` found no value within its timeout.
pub const GLOO_SHIM_STORE_TIMEOUT: c_int = 1;
/// Store callback result: any other failure (details in `err`).
pub const GLOO_SHIM_STORE_ERROR: c_int = 2;

/// Size of the pieces a large message travels in (`GLOO_SHIM_CHUNK_BYTES`).
pub const GLOO_SHIM_CHUNK_BYTES: usize = 4 << 20;

/// Largest timeout the shim accepts, in milliseconds (2^31 - 1).
pub const GLOO_SHIM_MAX_TIMEOUT_MS: i64 = 2_147_483_647;

/// Receives the value found by a store `get` (`gloo_shim_sink_fn`).
pub type gloo_shim_sink_fn = unsafe extern "C" fn(sink: *mut c_void, data: *const u8, len: usize);

/// Store `set` callback: stores `value` under `key`.
pub type gloo_shim_store_set_fn = unsafe extern "C" fn(
    user: *mut c_void,
    key: *const c_char,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    err: *mut c_char,
    err_cap: usize,
) -> c_int;

/// Store `get` callback: blocks until `key` exists or `timeout_ms` passed,
/// then hands the value to `sink_fn(sink, ...)`.
pub type gloo_shim_store_get_fn = unsafe extern "C" fn(
    user: *mut c_void,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    sink: *mut c_void,
    sink_fn: gloo_shim_sink_fn,
    err: *mut c_char,
    err_cap: usize,
) -> c_int;

/// A caller-provided rendezvous key-value store (`gloo_shim_store`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gloo_shim_store {
    /// Passed back as the first argument of both callbacks.
    pub user: *mut c_void,
    /// Stores a value.
    pub set: Option<gloo_shim_store_set_fn>,
    /// Fetches a value, waiting for it.
    pub get: Option<gloo_shim_store_get_fn>,
}

/// Options of `gloo_shim_context_create` (`gloo_shim_options`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gloo_shim_options {
    /// NUL-terminated address or host name to bind, or NULL.
    pub hostname: *const c_char,
    /// NUL-terminated interface name to bind, or NULL.
    pub iface: *const c_char,
    /// Rendezvous timeout in milliseconds, 1..=`GLOO_SHIM_MAX_TIMEOUT_MS`.
    pub timeout_ms: i64,
}

/// Opaque connected Gloo context.
#[repr(C)]
pub struct gloo_shim_context {
    _private: [u8; 0],
}

/// Opaque posted send or receive.
#[repr(C)]
pub struct gloo_shim_op {
    _private: [u8; 0],
}

extern "C" {
    /// Creates a context and connects the full mesh through `store`.
    pub fn gloo_shim_context_create(
        rank: c_int,
        size: c_int,
        store: *const gloo_shim_store,
        prefix: *const c_char,
        opts: *const gloo_shim_options,
        out: *mut *mut gloo_shim_context,
        err: *mut c_char,
        err_cap: usize,
    ) -> gloo_shim_status;

    /// Closes and frees a context; all its ops must be destroyed first.
    pub fn gloo_shim_context_destroy(ctx: *mut gloo_shim_context);

    /// Fails every pending and future operation of `ctx`; any thread.
    pub fn gloo_shim_context_abort(ctx: *mut gloo_shim_context);

    /// Returns 1 (and the reason) if the context is broken, else 0.
    pub fn gloo_shim_context_is_broken(
        ctx: *mut gloo_shim_context,
        reason: *mut c_char,
        reason_cap: usize,
    ) -> c_int;

    /// Blocking send of `nbytes` at `ptr` to `peer` on `slot`.
    pub fn gloo_shim_send(
        ctx: *mut gloo_shim_context,
        peer: c_int,
        slot: u64,
        ptr: *const c_void,
        nbytes: usize,
        timeout_ms: i64,
        err: *mut c_char,
        err_cap: usize,
    ) -> gloo_shim_status;

    /// Blocking receive of exactly `nbytes` from `peer` on `slot`.
    pub fn gloo_shim_recv(
        ctx: *mut gloo_shim_context,
        peer: c_int,
        slot: u64,
        ptr: *mut c_void,
        nbytes: usize,
        timeout_ms: i64,
        err: *mut c_char,
        err_cap: usize,
    ) -> gloo_shim_status;

    /// Posts a send; the memory must stay valid until the op is destroyed.
    pub fn gloo_shim_post_send(
        ctx: *mut gloo_shim_context,
        peer: c_int,
        slot: u64,
        ptr: *const c_void,
        nbytes: usize,
        out: *mut *mut gloo_shim_op,
        err: *mut c_char,
        err_cap: usize,
    ) -> gloo_shim_status;

    /// Posts a receive; the memory must stay valid until the op is destroyed.
    pub fn gloo_shim_post_recv(
        ctx: *mut gloo_shim_context,
        peer: c_int,
        slot: u64,
        ptr: *mut c_void,
        nbytes: usize,
        out: *mut *mut gloo_shim_op,
        err: *mut c_char,
        err_cap: usize,
    ) -> gloo_shim_status;

    /// Waits for a posted op.
    pub fn gloo_shim_op_wait(
        op: *mut gloo_shim_op,
        timeout_ms: i64,
        err: *mut c_char,
        err_cap: usize,
    ) -> gloo_shim_status;

    /// Frees an op; an incomplete op breaks its context.
    pub fn gloo_shim_op_destroy(op: *mut gloo_shim_op);
}
