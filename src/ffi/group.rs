//! Collective groups through the C ABI (the gloo transport's groups).

use super::boundary::{arg, guard, guard_void, out, slice, timeout};
use super::context::{rdt_buffer, rdt_context, req_str};
use super::stats::rdt_transport;
use super::status::rdt_status;
use crate::endpoint::Contact;
use crate::error::Error;
use crate::transport_kind::TransportKind;
use std::ffi::c_char;

/// Starts a rendezvous store for a new group in this process (the process of
/// rank 0), bound to `bind_host` (e.g. "127.0.0.1" or the node's IP), and writes
/// its "host:port" to `*out_address`. Every rank then calls `rdt_group_create`
/// with it. The store lives until the group is destroyed.
///
/// # Safety
/// `ctx` valid; `bind_host` a C string; `out_address` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_rendezvous_serve(
    ctx: *const rdt_context,
    bind_host: *const c_char,
    out_address: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let host = req_str(bind_host, "bind_host")?;
        let out = out(out_address, "out_address")?;
        *out = rdt_buffer::from_vec(ctx.inner.serve_rendezvous(host)?.into_bytes());
        Ok(())
    })
}

/// Joins collective group `name` of `backend` as `rank` of `world_size`, through
/// the rendezvous store at `rendezvous_address`; blocks until every rank joined
/// or `timeout_ms` passed. A process is in at most one group of a given name.
/// Failed transfers are reported to nobody (see `rdt_group_create_owned`).
///
/// # Safety
/// `ctx` valid; `name` and `rendezvous_address` C strings.
#[no_mangle]
pub unsafe extern "C" fn rdt_group_create(
    ctx: *const rdt_context,
    name: *const c_char,
    backend: rdt_transport,
    rank: i32,
    world_size: i32,
    rendezvous_address: *const c_char,
    timeout_ms: u64,
) -> rdt_status {
    rdt_group_create_owned(
        ctx,
        name,
        backend,
        rank,
        world_size,
        rendezvous_address,
        std::ptr::null(),
        0,
        timeout_ms,
    )
}

/// `rdt_group_create` for a group whose owner (the process that created it in
/// Ray) is reachable at `owner_contact` (`rdt_context_contact` of the owner's
/// context; NULL when `owner_contact_len` is 0: nobody): a transfer in the
/// group that fails with a system error is reported to the owner before the
/// failing call returns (`rdt_context_next_group_failure` there).
///
/// # Safety
/// `ctx` valid; `name` and `rendezvous_address` C strings; `owner_contact`
/// `owner_contact_len` bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rdt_group_create_owned(
    ctx: *const rdt_context,
    name: *const c_char,
    backend: rdt_transport,
    rank: i32,
    world_size: i32,
    rendezvous_address: *const c_char,
    owner_contact: *const u8,
    owner_contact_len: usize,
    timeout_ms: u64,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let name = req_str(name, "name")?;
        let address = req_str(rendezvous_address, "rendezvous_address")?;
        let kind = TransportKind::from_code(backend)?;
        let rank =
            usize::try_from(rank).map_err(|_| Error::invalid(format!("negative rank {rank}")))?;
        let size = usize::try_from(world_size)
            .map_err(|_| Error::invalid(format!("negative world size {world_size}")))?;
        let contact = slice(owner_contact, owner_contact_len, "owner_contact")?;
        let owner = (!contact.is_empty())
            .then(|| Contact::decode(contact))
            .transpose()?;
        ctx.inner.create_group(
            kind,
            name,
            rank,
            size,
            address,
            timeout(timeout_ms),
            owner.as_ref(),
        )
    })
}

/// A failed transfer in a group this process owns, as a member reported it.
/// Release with `rdt_group_failure_free`.
#[repr(C)]
#[derive(Debug)]
pub struct rdt_group_failure {
    /// The group's transport.
    pub transport: rdt_transport,
    /// The group's name (UTF-8).
    pub group: rdt_buffer,
    /// The object being moved (Ray's 28-byte ObjectID).
    pub object_id: [u8; 28],
    /// The producer's rank.
    pub src_rank: u32,
    /// The consumer's rank.
    pub dst_rank: u32,
    /// The rank of the member that reported it.
    pub reporter_rank: u32,
    /// What failed (UTF-8).
    pub cause: rdt_buffer,
}

/// Writes this context's contact (its host identity and endpoint addresses,
/// opaque bytes) to `*out_contact`, for `rdt_group_create_owned` in the
/// members of groups this process owns.
///
/// # Safety
/// `ctx` valid; `out_contact` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_contact(
    ctx: *const rdt_context,
    out_contact: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        *out(out_contact, "out_contact")? = rdt_buffer::from_vec(ctx.inner.contact().encode());
        Ok(())
    })
}

/// Waits up to `timeout_ms` for the next failed transfer reported by a member
/// of a group this process owns; writes it to `*out_failure` and true to
/// `*out_got`, or false to `*out_got` when none came in time.
///
/// # Safety
/// `ctx` valid; `out_failure` and `out_got` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_context_next_group_failure(
    ctx: *const rdt_context,
    timeout_ms: u64,
    out_failure: *mut rdt_group_failure,
    out_got: *mut bool,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let failure_out = out(out_failure, "out_failure")?;
        let got = out(out_got, "out_got")?;
        *got = false;
        if let Some(f) = ctx.inner.next_group_failure(timeout(timeout_ms)) {
            *failure_out = rdt_group_failure {
                transport: f.transport.code().into(),
                group: rdt_buffer::from_vec(f.group.into_bytes()),
                object_id: f.object.0,
                src_rank: f.src_rank,
                dst_rank: f.dst_rank,
                reporter_rank: f.reporter_rank,
                cause: rdt_buffer::from_vec(f.cause.into_bytes()),
            };
            *got = true;
        }
        Ok(())
    })
}

/// Releases the buffers of a failure written by `rdt_context_next_group_failure`
/// (the struct itself is the caller's). NULL is ignored.
///
/// # Safety
/// `failure` NULL or written by `rdt_context_next_group_failure`.
#[no_mangle]
pub unsafe extern "C" fn rdt_group_failure_free(failure: *mut rdt_group_failure) {
    guard_void("rdt_group_failure_free", || {
        if let Some(f) = failure.as_mut() {
            super::context::rdt_buffer_free(&mut f.group);
            super::context::rdt_buffer_free(&mut f.cause);
        }
    })
}

/// Leaves collective group `name`: pending transfers fail, connections close.
/// The group can then be created again on the same processes.
///
/// # Safety
/// `ctx` valid; `name` a C string.
#[no_mangle]
pub unsafe extern "C" fn rdt_group_destroy(
    ctx: *const rdt_context,
    name: *const c_char,
) -> rdt_status {
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        ctx.inner.destroy_group_named(req_str(name, "name")?)
    })
}
