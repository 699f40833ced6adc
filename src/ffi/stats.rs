//! Per-transport counters through the C ABI.

use super::boundary::{guard, guard_plain, out};
use super::status::rdt_status;
use crate::stats;
use crate::transport_kind::TransportKind;
use std::ffi::c_char;

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

/// A path an object took (`RDT_PATH_*`).
pub type rdt_path = u32;
/// Producer and consumer on one host: shared memory over the same-host channel.
pub const RDT_PATH_SAME_HOST: rdt_path = 0;
/// The declared transport's own path (another host, or loopback on one host
/// when the same-host path is off).
pub const RDT_PATH_NETWORK: rdt_path = 1;
/// Small object carried inside its metadata record: no transfer.
pub const RDT_PATH_INLINE: rdt_path = 2;
/// From a copy another consumer of this node read over the network (node-local
/// sharing): nothing crossed the network for this consumer (ABI 2.2).
pub const RDT_PATH_NODE_COPY: rdt_path = 3;

/// Buckets of the fetch-latency histogram (the last one is unbounded).
pub const RDT_LATENCY_BUCKETS: usize = 16;
const _: () = assert!(RDT_LATENCY_BUCKETS == stats::LATENCY_BUCKETS);

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

/// Counters of one transport over one path in this process, with the
/// histogram of fetch latencies (receivers only).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rdt_path_stats {
    /// Tensor bytes sent (or served to one-sided readers).
    pub bytes_sent: u64,
    /// Tensor bytes received.
    pub bytes_received: u64,
    /// Completed transfers.
    pub transfers: u64,
    /// Failed transfers.
    pub errors: u64,
    /// Fetches per latency bucket; bucket `i < RDT_LATENCY_BUCKETS - 1` holds
    /// fetches of at most `rdt_stats_latency_bound_us(i)` microseconds.
    pub latency: [u64; RDT_LATENCY_BUCKETS],
    /// Sum of the counted fetch latencies, in microseconds.
    pub latency_sum_us: u64,
}

/// What this process's endpoints were asked to do.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rdt_endpoint_stats {
    /// Fetch requests served.
    pub fetches_served: u64,
    /// Free requests received (each may free several objects).
    pub free_requests: u64,
    /// Objects freed by free requests.
    pub objects_freed: u64,
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

/// Reads the counters of `transport` over `path` in this process into `*out_stats`.
///
/// # Safety
/// `out_stats` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_stats_path_get(
    transport: rdt_transport,
    path: rdt_path,
    out_stats: *mut rdt_path_stats,
) -> rdt_status {
    guard(|| {
        let kind = TransportKind::from_code(transport)?;
        let path = stats::Path::ALL
            .get(path as usize)
            .copied()
            .ok_or_else(|| crate::Error::invalid(format!("unknown path code {path}")))?;
        let out = out(out_stats, "out_stats")?;
        let s = stats::snapshot_path(kind, path);
        *out = rdt_path_stats {
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            transfers: s.transfers,
            errors: s.errors,
            latency: s.latency,
            latency_sum_us: s.latency_sum_us,
        };
        Ok(())
    })
}

/// The upper bound in microseconds of latency bucket `bucket`; `UINT64_MAX`
/// for the last (unbounded) bucket and beyond.
#[no_mangle]
pub extern "C" fn rdt_stats_latency_bound_us(bucket: usize) -> u64 {
    super::boundary::guard_plain("rdt_stats_latency_bound_us", u64::MAX, || {
        stats::LATENCY_BOUNDS_US
            .get(bucket)
            .copied()
            .unwrap_or(u64::MAX)
    })
}

/// What this process holds in NIXL.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rdt_nixl_stats {
    /// Producer: ranges registered for exported objects.
    pub exported_ranges: u64,
    /// Producer: references exported objects hold on those ranges.
    pub exported_refs: u64,
    /// Consumer: registrations of received objects' memory still alive.
    pub received: u64,
    /// Consumer: producer agents loaded.
    pub loaded_peers: u64,
    /// Consumer: producer registrations loaded, over all peers.
    pub loaded_ranges: u64,
}

/// Reads this process's NIXL registrations into `*out_stats` (zeros in a
/// process that never used nixl; never loads NIXL).
///
/// # Safety
/// `out_stats` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_stats_nixl_get(out_stats: *mut rdt_nixl_stats) -> rdt_status {
    guard(|| {
        let s = crate::transport::registry::nixl_stats();
        *out(out_stats, "out_stats")? = rdt_nixl_stats {
            exported_ranges: s.exported_ranges as u64,
            exported_refs: s.exported_refs as u64,
            received: s.received as u64,
            loaded_peers: s.loaded_peers as u64,
            loaded_ranges: s.loaded_ranges as u64,
        };
        Ok(())
    })
}

/// Reads what this process's endpoints were asked to do into `*out_stats`.
///
/// # Safety
/// `out_stats` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_stats_endpoint_get(out_stats: *mut rdt_endpoint_stats) -> rdt_status {
    guard(|| {
        let s = stats::endpoint_snapshot();
        *out(out_stats, "out_stats")? = rdt_endpoint_stats {
            fetches_served: s.fetches_served,
            free_requests: s.free_requests,
            objects_freed: s.objects_freed,
        };
        Ok(())
    })
}

/// How many transfers this process runs at once (all contexts together).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rdt_concurrency_stats {
    /// Consumer: fetches under way now.
    pub fetching: u64,
    /// Consumer: the most fetches under way at once so far.
    pub fetching_peak: u64,
    /// Producer: fetch requests its endpoint serves now.
    pub serving: u64,
    /// Producer: the most fetch requests served at once so far.
    pub serving_peak: u64,
}

/// Reads how many transfers this process runs at once into `*out_stats`.
///
/// # Safety
/// `out_stats` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_stats_concurrency_get(
    out_stats: *mut rdt_concurrency_stats,
) -> rdt_status {
    guard(|| {
        let (fetching, fetching_peak) = crate::stats::FETCHING.read();
        let (serving, serving_peak) = crate::stats::SERVING.read();
        *out(out_stats, "out_stats")? = rdt_concurrency_stats {
            fetching,
            fetching_peak,
            serving,
            serving_peak,
        };
        Ok(())
    })
}

/// The lower-case name of transport `transport` (`"gloo"`, `"nccl"`,
/// `"nixl"`, `"cuda_ipc"`, `"shm"`), a static NUL-terminated string; NULL for
/// a code no transport has.
#[no_mangle]
pub extern "C" fn rdt_transport_name(transport: rdt_transport) -> *const c_char {
    guard_plain(
        "rdt_transport_name",
        std::ptr::null(),
        || match u8::try_from(transport)
            .ok()
            .and_then(|c| TransportKind::from_code(c.into()).ok())
        {
            Some(TransportKind::Gloo) => c"gloo".as_ptr(),
            Some(TransportKind::Nccl) => c"nccl".as_ptr(),
            Some(TransportKind::Nixl) => c"nixl".as_ptr(),
            Some(TransportKind::CudaIpc) => c"cuda_ipc".as_ptr(),
            Some(TransportKind::Shm) => c"shm".as_ptr(),
            None => std::ptr::null(),
        },
    )
}

/// The name of path `path` (`"same_host"`, `"network"`, `"inline"`,
/// `"node_copy"`), a static NUL-terminated string; NULL for a code no path
/// has.
#[no_mangle]
pub extern "C" fn rdt_path_name(path: rdt_path) -> *const c_char {
    guard_plain("rdt_path_name", std::ptr::null(), || match path {
        RDT_PATH_SAME_HOST => c"same_host".as_ptr(),
        RDT_PATH_NETWORK => c"network".as_ptr(),
        RDT_PATH_INLINE => c"inline".as_ptr(),
        RDT_PATH_NODE_COPY => c"node_copy".as_ptr(),
        _ => std::ptr::null(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn name(p: *const c_char) -> Option<&'static str> {
        // SAFETY: the functions return static C strings or NULL.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap())
    }

    #[test]
    fn every_transport_and_path_has_its_name_and_nothing_else_has_one() {
        for kind in TransportKind::ALL {
            assert_eq!(
                name(rdt_transport_name(kind.code().into())),
                Some(kind.name())
            );
        }
        assert_eq!(
            name(rdt_transport_name(TransportKind::ALL.len() as u32)),
            None
        );
        assert_eq!(name(rdt_transport_name(u32::MAX)), None);
        let paths: Vec<_> = stats::Path::ALL
            .iter()
            .map(|&p| name(rdt_path_name(p as u32)))
            .collect();
        assert_eq!(
            paths,
            [
                Some("same_host"),
                Some("network"),
                Some("inline"),
                Some("node_copy")
            ]
        );
        assert_eq!(name(rdt_path_name(stats::Path::ALL.len() as u32)), None);
    }
}
