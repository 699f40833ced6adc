//! Collective groups through the C ABI (the gloo transport's groups).

use super::boundary::{arg, guard, out, timeout};
use super::context::{rdt_buffer, rdt_context, req_str};
use super::stats::rdt_transport;
use super::status::rdt_status;
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
    guard(|| {
        let ctx = arg(ctx, "ctx")?;
        let name = req_str(name, "name")?;
        let address = req_str(rendezvous_address, "rendezvous_address")?;
        let kind = TransportKind::from_code(backend)?;
        let rank =
            usize::try_from(rank).map_err(|_| Error::invalid(format!("negative rank {rank}")))?;
        let size = usize::try_from(world_size)
            .map_err(|_| Error::invalid(format!("negative world size {world_size}")))?;
        ctx.inner
            .create_group(kind, name, rank, size, address, timeout(timeout_ms))
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
