//! The plugin context through the C ABI: what a Ray worker calls at task return
//! (`rdt_context_put`), at argument resolution (`rdt_context_fetch`), when an
//! object goes out of scope (`rdt_context_free`) and for `wait_tensor_freed`.

use super::boundary::{arg, guard, guard_void, object_id, out, slice, timeout};
use super::stats::rdt_transport;
use super::status::rdt_status;
use crate::dlpack::{DLManagedTensor, DLManagedTensorVersioned, DLTensor};
use crate::endpoint::ClusterToken;
use crate::engine::{Context, ContextConfig, Fetched, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{PutRejected, StoredObject};
use crate::tensor::{export, Tensor};
use crate::transport_kind::TransportKind;
use std::ffi::{c_char, c_void, CStr};
use std::net::IpAddr;
use std::sync::Arc;

/// One process's plugin: object store, endpoint, transports (opaque).
pub struct rdt_context {
    pub(crate) inner: Context,
}

/// Bytes owned by the plugin; release with `rdt_buffer_free`.
#[repr(C)]
#[derive(Debug)]
pub struct rdt_buffer {
    /// Start of the bytes (NULL when empty).
    pub data: *mut u8,
    /// Number of bytes.
    pub len: usize,
}

impl rdt_buffer {
    pub(crate) fn from_vec(bytes: Vec<u8>) -> rdt_buffer {
        let len = bytes.len();
        let data = Box::into_raw(bytes.into_boxed_slice()) as *mut u8;
        rdt_buffer { data, len }
    }
}

/// Releases a buffer's bytes and resets it to empty. NULL is ignored.
///
/// # Safety
/// `buf` must be NULL or hold bytes handed out by this library (or be empty).
#[no_mangle]
pub unsafe extern "C" fn rdt_buffer_free(buf: *mut rdt_buffer) {
    guard_void("rdt_buffer_free", || {
        if let Some(b) = buf.as_mut() {
            if !b.data.is_null() {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    b.data, b.len,
                )));
            }
            b.data = std::ptr::null_mut();
            b.len = 0;
        }
    })
}

/// Adopts the caller's DLPack tensors, all or none: if any is invalid, none is
/// kept (no deleter runs) and the error names its index.
fn adopt<P: Copy>(ptrs: &[P], wrap: unsafe fn(P) -> Result<Tensor>) -> Result<Vec<Tensor>> {
    let mut tensors = Vec::with_capacity(ptrs.len());
    for (i, &p) in ptrs.iter().enumerate() {
        // SAFETY: the caller guarantees each pointer is a valid DLPack tensor.
        match unsafe { wrap(p) } {
            Ok(t) => tensors.push(t),
            Err(e) => {
                tensors.into_iter().for_each(Tensor::disown);
                return Err(Error::new(e.kind(), format!("tensor {i}: {}", e.message())));
            }
        }
    }
    Ok(tensors)
}

/// Hands the tensors of a refused put back to the caller (no deleter runs).
fn refused(rejected: PutRejected) -> Error {
    rejected.tensors.into_iter().for_each(Tensor::disown);
    rejected.error
}

/// Reads an optional NUL-terminated UTF-8 string.
unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|_| Error::invalid(format!("`{name}` is not UTF-8")))
}

/// Reads a required NUL-terminated UTF-8 string.
pub(crate) unsafe fn req_str<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    opt_str(arg(p, name)?, name).map(|s| s.unwrap_or_default())
}

/// What a context is created with (see `rdt_context_create`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rdt_context_config {
    /// Ray's binary node ID of this process's node (NULL when `node_id_len` is 0).
    pub node_id: *const u8,
    /// Bytes at `node_id`.
    pub node_id_len: usize,
    /// Ray's binary actor ID of this process (NULL when `actor_id_len` is 0,
    /// e.g. in a driver).
    pub actor_id: *const u8,
    /// Bytes at `actor_id`.
    pub actor_id_len: usize,
    /// The node's IP as Ray knows it ("10.0.0.7", "::1"), NUL-terminated: the
    /// endpoint for other hosts listens on TCP there. NULL: no TCP endpoint
    /// (only processes on this host can fetch from this one).
    pub node_ip: *const c_char,
    /// Ray's cluster token (the bytes of `~/.ray/auth_token` or
    /// `RAY_AUTH_TOKEN`) when Ray's token authentication is on: peers on other
    /// hosts must prove it. NULL or length 0: authentication off.
    pub auth_token: *const u8,
    /// Bytes at `auth_token`.
    pub auth_token_len: usize,
}

/// Creates the plugin context of this process and starts its endpoint: a
/// same-host Unix socket always, and TCP on `config->node_ip` when given.
///
/// # Safety
/// `config` valid, its pointers valid for their lengths; `out_ctx` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_create(
    config: *const rdt_context_config,
    out_ctx: *mut *mut rdt_context,
) -> rdt_status {
    guard(|| {
        let c = arg(config, "config")?;
        let out = out(out_ctx, "out_ctx")?;
        let node_ip = opt_str(c.node_ip, "node_ip")?
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| Error::invalid(format!("node_ip {ip:?} is not an IP address")))
            })
            .transpose()?;
        let inner = Context::new(ContextConfig {
            node_ip,
            token: ClusterToken::new(Some(slice(c.auth_token, c.auth_token_len, "auth_token")?)),
            ..ContextConfig::same_host(
                slice(c.node_id, c.node_id_len, "node_id")?,
                slice(c.actor_id, c.actor_id_len, "actor_id")?,
            )
        })?;
        *out = Box::into_raw(Box::new(rdt_context { inner }));
        Ok(())
    })
}

/// Creates a context with only a same-host endpoint (no TCP, no token): the
/// 1.0 form of `rdt_context_create`. `node_id` and `actor_id` are Ray's binary
/// IDs (either may be empty).
///
/// # Safety
/// `node_id`/`actor_id` point to the given number of bytes (or are NULL when 0);
/// `out_ctx` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_new(
    node_id: *const u8,
    node_id_len: usize,
    actor_id: *const u8,
    actor_id_len: usize,
    out_ctx: *mut *mut rdt_context,
) -> rdt_status {
    let config = rdt_context_config {
        node_id,
        node_id_len,
        actor_id,
        actor_id_len,
        node_ip: std::ptr::null(),
        auth_token: std::ptr::null(),
        auth_token_len: 0,
    };
    rdt_context_create(&config, out_ctx)
}

/// Destroys a context: stops its endpoint and frees every object it holds. NULL
/// is ignored. Returns once the objects' deleters ran (a fetch the endpoint
/// was still serving is waited for, up to `RAY_RDT_FRAME_TIMEOUT_MS`), except
/// for objects the caller still holds; call it without holding a lock a
/// deleter takes (Python's GIL).
///
/// # Safety
/// `ctx` must come from `rdt_context_new` and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_destroy(ctx: *mut rdt_context) {
    guard_void("rdt_context_destroy", || {
        if !ctx.is_null() {
            drop(Box::from_raw(ctx));
        }
    })
}

/// Writes the context's endpoint address (NUL-free bytes) to `*out_address`.
///
/// # Safety
/// `ctx` valid; `out_address` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_endpoint(
    ctx: *const rdt_context,
    out_address: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let out = out(out_address, "out_address")?;
        *out = rdt_buffer::from_vec(ctx.inner.endpoint().as_bytes().to_vec());
        Ok(())
    })
}

/// Writes the context's endpoint address for other hosts (`tcp:IP:PORT`) to
/// `*out_address`; empty when the context has no TCP endpoint.
///
/// # Safety
/// `ctx` valid; `out_address` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_tcp_endpoint(
    ctx: *const rdt_context,
    out_address: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let out = out(out_address, "out_address")?;
        *out = rdt_buffer::from_vec(ctx.inner.addresses().tcp.as_bytes().to_vec());
        Ok(())
    })
}

/// Writes whether peers on other hosts must prove Ray's cluster token to this
/// context's TCP endpoint (false: authentication off, or no TCP endpoint).
///
/// # Safety
/// `ctx` valid; `out_authenticated` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_authenticated(
    ctx: *const rdt_context,
    out_authenticated: *mut bool,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        *out(out_authenticated, "out_authenticated")? = ctx.inner.authenticated();
        Ok(())
    })
}

/// Task return: stores the tensors as the primary copy of `object_id` (28 bytes)
/// and writes the metadata record for Ray's object store to `*out_metadata`.
/// `group` names the collective group for two-sided transports (NULL for
/// one-sided ones). On success the plugin owns the tensors (each deleter runs once
/// after the object is freed); on error the caller keeps them.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `group` NULL or a C string; `tensors` an
/// array of `num_tensors` valid pointers; `out_metadata` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_put(
    ctx: *const rdt_context,
    object_id: *const u8,
    transport: rdt_transport,
    group: *const c_char,
    tensors: *const *mut DLManagedTensor,
    num_tensors: usize,
    out_metadata: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        put(
            ctx,
            object_id,
            transport,
            group,
            slice(tensors, num_tensors, "tensors")?,
            Tensor::from_managed,
            out_metadata,
        )
    })
}

/// As `rdt_context_put`, for versioned DLPack tensors (major version 1; another
/// major is refused and the tensors stay with the caller).
///
/// # Safety
/// As `rdt_context_put`, with `DLManagedTensorVersioned` pointers.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_put_versioned(
    ctx: *const rdt_context,
    object_id: *const u8,
    transport: rdt_transport,
    group: *const c_char,
    tensors: *const *mut DLManagedTensorVersioned,
    num_tensors: usize,
    out_metadata: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        put(
            ctx,
            object_id,
            transport,
            group,
            slice(tensors, num_tensors, "tensors")?,
            Tensor::from_versioned,
            out_metadata,
        )
    })
}

/// The shared body of the two puts: every check before the tensors are adopted,
/// so that a failure leaves them all with the caller.
///
/// # Safety
/// As `rdt_context_put`.
unsafe fn put<P: Copy>(
    ctx: *const rdt_context,
    object_id: *const u8,
    transport: rdt_transport,
    group: *const c_char,
    ptrs: &[P],
    wrap: unsafe fn(P) -> Result<Tensor>,
    out_metadata: *mut rdt_buffer,
) -> Result<()> {
    let ctx = arg(ctx, "ctx")?;
    let id = self::object_id(object_id)?;
    let kind = TransportKind::from_code(transport)?;
    let group = opt_str(group, "group")?;
    let out = out(out_metadata, "out_metadata")?;
    let record = ctx
        .inner
        .put(id, kind, group, adopt(ptrs, wrap)?)
        .map_err(refused)?;
    *out = rdt_buffer::from_vec(record);
    Ok(())
}

/// Writes the metadata record of object `object_id`, which this context holds
/// (the bytes `rdt_context_put` wrote for it), to `*out_record` (free it with
/// `rdt_buffer_free`). Not held (never put, or freed): `RDT_ERR_NOT_FOUND`.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `out_record` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_record_get(
    ctx: *const rdt_context,
    object_id: *const u8,
    out_record: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        let out = out(out_record, "out_record")?;
        *out = rdt_buffer::from_vec(ctx.inner.record(&id)?);
        Ok(())
    })
}

/// Argument resolution: fetches the tensors the metadata record describes and
/// writes them to `out_tensors[0..*out_count]`. When this process produced the
/// object they are views of the stored tensors (same memory); otherwise the bytes
/// move directly from the producer's plugin over the record's transport. Each
/// returned tensor's deleter must be called once. Waits at most `timeout_ms`
/// (`UINT64_MAX`: no limit). A too-small `capacity` gives
/// `RDT_ERR_BUFFER_TOO_SMALL` with the needed count, checked before any transfer.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `metadata` `metadata_len` bytes;
/// `out_tensors` room for `capacity` pointers; `out_count` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_fetch(
    ctx: *const rdt_context,
    object_id: *const u8,
    metadata: *const u8,
    metadata_len: usize,
    timeout_ms: u64,
    out_tensors: *mut *mut DLManagedTensor,
    capacity: usize,
    out_count: *mut usize,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        let record = slice(metadata, metadata_len, "metadata")?;
        let count = out(out_count, "out_count")?;
        let meta = crate::metadata::Metadata::decode(record)?;
        let needed = meta.tensors.len();
        *count = needed;
        if capacity < needed {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!("object has {needed} tensors, the output array holds {capacity}"),
            ));
        }
        if needed > 0 && out_tensors.is_null() {
            return Err(Error::new(
                ErrorKind::NullArgument,
                "argument `out_tensors` is NULL",
            ));
        }
        let handed: Vec<*mut DLManagedTensor> =
            match ctx.inner.fetch_decoded(&id, &meta, timeout(timeout_ms))? {
                Fetched::Local(object) => views(&object),
                Fetched::Received(tensors) => {
                    tensors.into_iter().map(Tensor::into_managed).collect()
                }
            };
        hand_out(handed, out_tensors, capacity, count);
        Ok(())
    })
}

/// `ray.get` into the caller's tensors (`set_target_for_ref`): fetches the
/// object the metadata record describes straight into `targets[0..num_targets]`
/// (borrowed: the plugin reads their descriptions and writes their bytes, and
/// never calls a deleter; they must stay valid until this returns). The targets
/// are checked before any byte moves, as Ray 2.60 checks them: their count, and
/// each one's shape and dtype against the record's tensor at the same index,
/// row-major contiguity, CPU memory, no two overlapping; a mismatch is
/// `RDT_ERR_INVALID_ARGUMENT` naming the index. When this process produced the
/// object its bytes are copied from the stored tensors. Waits at most
/// `timeout_ms` (`UINT64_MAX`: no limit).
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `metadata` `metadata_len` bytes;
/// `targets` an array of `num_targets` valid `DLTensor` pointers (a
/// `DLManagedTensor*` may be passed: its `dl_tensor` comes first) whose memory
/// is writable for the whole call.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_fetch_into(
    ctx: *const rdt_context,
    object_id: *const u8,
    metadata: *const u8,
    metadata_len: usize,
    targets: *const *const DLTensor,
    num_targets: usize,
    timeout_ms: u64,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        let meta = crate::metadata::Metadata::decode(slice(metadata, metadata_len, "metadata")?)?;
        let targets = slice(targets, num_targets, "targets")?
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let t = t.as_ref().ok_or_else(|| {
                    Error::new(ErrorKind::NullArgument, format!("target {i} is NULL"))
                })?;
                Target::from_dl(t)
            })
            .collect::<Result<Vec<_>>>()?;
        ctx.inner
            .fetch_into(&id, &meta, &targets, timeout(timeout_ms))
    })
}

/// DLPack views of a stored object's tensors (same memory), each keeping the
/// object alive until its deleter runs.
fn views(object: &Arc<StoredObject>) -> Vec<*mut DLManagedTensor> {
    object
        .tensors
        .iter()
        .map(|t| {
            let dl = t.dl();
            export(
                t.meta(),
                dl.device,
                dl.data,
                dl.byte_offset,
                Box::new(Arc::clone(object)),
            )
        })
        .collect()
}

/// Writes `handed` to `out[0..capacity]` and their number to `*count`.
///
/// # Safety
/// `out` has room for `capacity` pointers (or is NULL when nothing is handed).
unsafe fn hand_out(
    handed: Vec<*mut DLManagedTensor>,
    out: *mut *mut DLManagedTensor,
    capacity: usize,
    count: &mut usize,
) {
    *count = handed.len();
    for (i, p) in handed.into_iter().enumerate().take(capacity) {
        *out.add(i) = p;
    }
}

/// Writes whether this context holds object `object_id` (a primary copy it
/// produced and has not freed) to `*out_held`.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `out_held` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_contains(
    ctx: *const rdt_context,
    object_id: *const u8,
    out_held: *mut bool,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        *out(out_held, "out_held")? = ctx.inner.store().contains(&id);
        Ok(())
    })
}

/// Writes views of the tensors of object `object_id`, which this context
/// holds, to `out_tensors[0..*out_count]` (the same memory; each deleter must
/// be called once). Not held: `RDT_ERR_NOT_FOUND`. A too-small `capacity`
/// gives `RDT_ERR_BUFFER_TOO_SMALL` with the needed count.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `out_tensors` room for `capacity`
/// pointers; `out_count` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_get(
    ctx: *const rdt_context,
    object_id: *const u8,
    out_tensors: *mut *mut DLManagedTensor,
    capacity: usize,
    out_count: *mut usize,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        let count = out(out_count, "out_count")?;
        let object = ctx.inner.held(&id)?;
        *count = object.tensors.len();
        if capacity < object.tensors.len() {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!(
                    "object has {} tensors, the output array holds {capacity}",
                    object.tensors.len()
                ),
            ));
        }
        if !object.tensors.is_empty() && out_tensors.is_null() {
            return Err(Error::new(
                ErrorKind::NullArgument,
                "argument `out_tensors` is NULL",
            ));
        }
        hand_out(views(&object), out_tensors, capacity, count);
        Ok(())
    })
}

/// Frees the primary copy of `object_id` (out of scope in Ray) and writes whether
/// it was held to `*out_found`.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `out_found` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_free(
    ctx: *const rdt_context,
    object_id: *const u8,
    out_found: *mut bool,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        *out(out_found, "out_found")? = ctx.inner.free(&id);
        Ok(())
    })
}

/// The owner's free of object `object_id` (28 bytes), whose metadata record is
/// `metadata`: sent to the producer's endpoint in the background, batched with
/// other frees to the same producer (no Ray task). When this context is the
/// producer the object is freed at once. A producer that is gone has nothing to
/// free: its frees are dropped.
///
/// # Safety
/// `ctx` valid; `object_id` 28 bytes; `metadata` `metadata_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_free_remote(
    ctx: *const rdt_context,
    object_id: *const u8,
    metadata: *const u8,
    metadata_len: usize,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let id = self::object_id(object_id)?;
        ctx.inner
            .free_remote(&id, slice(metadata, metadata_len, "metadata")?)
    })
}

/// Waits up to `timeout_ms` until every free queued by `rdt_context_free_remote`
/// was sent, and writes whether they all were to `*out_flushed`.
///
/// # Safety
/// `ctx` valid; `out_flushed` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_flush_frees(
    ctx: *const rdt_context,
    timeout_ms: u64,
    out_flushed: *mut bool,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        *out(out_flushed, "out_flushed")? = ctx.inner.flush_frees(timeout(timeout_ms));
        Ok(())
    })
}

/// Waits up to `timeout_ms` until no object in this context holds memory at
/// `data_ptr` (a tensor's first element): the guide's `wait_tensor_freed`.
///
/// # Safety
/// `ctx` valid.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_wait_tensor_freed(
    ctx: *const rdt_context,
    data_ptr: *const c_void,
    timeout_ms: u64,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        ctx.inner
            .store()
            .wait_tensor_freed(data_ptr as usize, timeout(timeout_ms))
    })
}

/// Writes the number of objects and tensor bytes the context holds.
///
/// # Safety
/// `ctx` valid; outputs valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_counts(
    ctx: *const rdt_context,
    out_objects: *mut usize,
    out_bytes: *mut u64,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        *out(out_objects, "out_objects")? = ctx.inner.store().num_objects();
        *out(out_bytes, "out_bytes")? = ctx.inner.store().num_bytes();
        Ok(())
    })
}
