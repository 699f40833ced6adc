//! Per-transport counters through the C ABI.

use super::boundary::{guard, out};
use super::status::rdt_status;
use crate::stats;
use crate::transport_kind::TransportKind;

/// A transport identifier (`RDT_TRANSPORT_*`).
pub type rdt_transport = u32;
/// Gloo collective group (CPU).
pub const RDT_TRANSPORT_GLOO: rdt_transport = 0;
/// NCCL collective group (CUDA).
pub const RDT_TRANSPORT_NCCL: rdt_transport = 1;
/// NIXL one-sided reads (CPU, CUDA).
pub const RDT_TRANSPORT_NIXL: rdt_transport = 2;
/// CUDA IPC (same node).
pub const RDT_TRANSPORT_CUDA_IPC: rdt_transport = 3;
/// Shared memory (same host, CPU).
pub const RDT_TRANSPORT_SHM: rdt_transport = 4;

/// Counters of one transport in this process.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rdt_transport_stats {
    /// Tensor bytes sent (or served to one-sided readers).
    pub bytes_sent: u64,
    /// Tensor bytes received.
    pub bytes_received: u64,
    /// Completed transfers.
    pub transfers: u64,
    /// Failed transfers.
    pub errors: u64,
}

/// Reads the counters of `transport` in this process into `*out`.
///
/// # Safety
/// `out` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_stats_get(
    transport: rdt_transport,
    out_stats: *mut rdt_transport_stats,
) -> rdt_status {
    guard(|| {
        let kind = TransportKind::from_code(transport)?;
        let out = out(out_stats, "out_stats")?;
        let s = stats::snapshot(kind);
        *out = rdt_transport_stats {
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            transfers: s.transfers,
            errors: s.errors,
        };
        Ok(())
    })
}
