//! Per-transport counters for this process: what `ray_rdt.stats()` reports, so a
//! test or an operator can see that bytes really went through the plugin, over
//! which transport and which path.
//!
//! Counters are kept per transport (as declared by the producer's method) and
//! per [`Path`]: the same-host path (a same-host channel and shared memory), the
//! network path (another host), inline (a small object carried inside its
//! metadata record, no transfer at all), or a node copy (bytes another consumer
//! of this node read over the network, taken from its shared copy). Receivers also keep a histogram of
//! fetch latencies. Everything is a relaxed atomic: recording costs a few
//! nanoseconds and never takes a lock.

use crate::ffi::stats as codes;
use crate::transport_kind::TransportKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How an object travelled. The discriminant is the C ABI's `RDT_PATH_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Path {
    /// Producer and consumer on one host: shared memory over the same-host
    /// channel (the shm transport, or the same-host path of another one).
    SameHost = codes::RDT_PATH_SAME_HOST as u8,
    /// The declared transport's own path: TCP, Gloo or NIXL between hosts (or
    /// over loopback on one host, when the same-host path is off).
    Network = codes::RDT_PATH_NETWORK as u8,
    /// Inside the metadata record (small objects): no transfer.
    Inline = codes::RDT_PATH_INLINE as u8,
    /// From a copy another consumer of this node read over the network and
    /// shares (node-local sharing, `crate::engine::node_share`): shared
    /// memory between two consumers of one node, nothing crossed the network.
    NodeCopy = codes::RDT_PATH_NODE_COPY as u8,
}

impl Path {
    /// Every path, in code order.
    pub const ALL: [Path; 4] = [Path::SameHost, Path::Network, Path::Inline, Path::NodeCopy];
}

/// Upper bounds (inclusive, microseconds) of the latency histogram's buckets;
/// one more bucket holds everything slower.
pub const LATENCY_BOUNDS_US: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    10_000_000, 60_000_000,
];
/// Buckets of the latency histogram.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Live counters of one (transport, path).
struct Counters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    transfers: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_us: AtomicU64,
}

/// A snapshot of one (transport, path)'s counters, or of a transport's sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Tensor bytes this process sent (or served to one-sided readers).
    pub bytes_sent: u64,
    /// Tensor bytes this process received.
    pub bytes_received: u64,
    /// Completed transfers (one per object sent or received).
    pub transfers: u64,
    /// Failed transfers.
    pub errors: u64,
    /// Fetches per latency bucket (see [`LATENCY_BOUNDS_US`]), receivers only.
    pub latency: [u64; LATENCY_BUCKETS],
    /// Sum of the fetch latencies counted in `latency`, in microseconds.
    pub latency_sum_us: u64,
}

static TABLE: [[Counters; Path::ALL.len()]; TransportKind::ALL.len()] = [const {
    [const {
        Counters {
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: [const { AtomicU64::new(0) }; LATENCY_BUCKETS],
            latency_sum_us: AtomicU64::new(0),
        }
    }; Path::ALL.len()]
};
    TransportKind::ALL.len()];

fn counters(t: TransportKind, p: Path) -> &'static Counters {
    &TABLE[t.code() as usize][p as usize]
}

/// Records a completed send of `bytes` over `t` and `p`.
pub fn record_sent(t: TransportKind, p: Path, bytes: u64) {
    let c = counters(t, p);
    c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    c.transfers.fetch_add(1, Ordering::Relaxed);
}

/// Records a completed receive of `bytes` over `t` and `p` that took `took`.
pub fn record_received(t: TransportKind, p: Path, bytes: u64, took: Duration) {
    let c = counters(t, p);
    c.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    c.transfers.fetch_add(1, Ordering::Relaxed);
    let us = took.as_micros().min(u64::MAX as u128) as u64;
    let bucket = LATENCY_BOUNDS_US
        .iter()
        .position(|&bound| us <= bound)
        .unwrap_or(LATENCY_BOUNDS_US.len());
    c.latency[bucket].fetch_add(1, Ordering::Relaxed);
    c.latency_sum_us.fetch_add(us, Ordering::Relaxed);
}

/// Records a failed transfer over `t` and `p`.
pub fn record_error(t: TransportKind, p: Path) {
    counters(t, p).errors.fetch_add(1, Ordering::Relaxed);
}

/// Reads the counters of `t` over `p`.
pub fn snapshot_path(t: TransportKind, p: Path) -> Snapshot {
    let c = counters(t, p);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Snapshot {
        bytes_sent: load(&c.bytes_sent),
        bytes_received: load(&c.bytes_received),
        transfers: load(&c.transfers),
        errors: load(&c.errors),
        latency: std::array::from_fn(|i| load(&c.latency[i])),
        latency_sum_us: load(&c.latency_sum_us),
    }
}

/// Reads `t`'s counters, all paths together.
pub fn snapshot(t: TransportKind) -> Snapshot {
    Path::ALL
        .iter()
        .map(|&p| snapshot_path(t, p))
        .fold(Snapshot::default(), |a, b| Snapshot {
            bytes_sent: a.bytes_sent + b.bytes_sent,
            bytes_received: a.bytes_received + b.bytes_received,
            transfers: a.transfers + b.transfers,
            errors: a.errors + b.errors,
            latency: std::array::from_fn(|i| a.latency[i] + b.latency[i]),
            latency_sum_us: a.latency_sum_us + b.latency_sum_us,
        })
}

/// One context's own fetch counters per transport, all paths together: what
/// that context received and how many of its fetches failed. Other contexts
/// of the process leave them alone, so a test can count one context's
/// transfers while other tests of its binary run.
#[derive(Debug, Default)]
pub struct ContextCounters {
    /// Per transport: bytes received, transfers, errors.
    table: [[AtomicU64; 3]; TransportKind::ALL.len()],
}

impl ContextCounters {
    /// Records a completed receive of `bytes` over `t`.
    pub fn record_received(&self, t: TransportKind, bytes: u64) {
        let c = &self.table[t.code() as usize];
        c[0].fetch_add(bytes, Ordering::Relaxed);
        c[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failed fetch over `t`.
    pub fn record_error(&self, t: TransportKind) {
        self.table[t.code() as usize][2].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `t`'s counters: `bytes_received`, `transfers` and `errors` (the
    /// other fields stay zero).
    pub fn snapshot(&self, t: TransportKind) -> Snapshot {
        let c = &self.table[t.code() as usize];
        Snapshot {
            bytes_received: c[0].load(Ordering::Relaxed),
            transfers: c[1].load(Ordering::Relaxed),
            errors: c[2].load(Ordering::Relaxed),
            ..Snapshot::default()
        }
    }
}

/// What this process's endpoint was asked to do, all contexts together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// Fetch requests served.
    pub fetches_served: u64,
    /// Free requests received (each may free several objects).
    pub free_requests: u64,
    /// Objects freed by free requests.
    pub objects_freed: u64,
}

static FETCHES_SERVED: AtomicU64 = AtomicU64::new(0);
static FREE_REQUESTS: AtomicU64 = AtomicU64::new(0);
static OBJECTS_FREED: AtomicU64 = AtomicU64::new(0);

/// Records a fetch request served by the endpoint.
pub fn record_fetch_served() {
    FETCHES_SERVED.fetch_add(1, Ordering::Relaxed);
}

/// Records a free request that freed `objects` objects.
pub fn record_free_request(objects: u64) {
    FREE_REQUESTS.fetch_add(1, Ordering::Relaxed);
    OBJECTS_FREED.fetch_add(objects, Ordering::Relaxed);
}

/// Reads the endpoint's counters.
pub fn endpoint_snapshot() -> EndpointSnapshot {
    EndpointSnapshot {
        fetches_served: FETCHES_SERVED.load(Ordering::Relaxed),
        free_requests: FREE_REQUESTS.load(Ordering::Relaxed),
        objects_freed: OBJECTS_FREED.load(Ordering::Relaxed),
    }
}

/// A count of operations under way in this process and the most seen at once.
#[derive(Debug)]
pub struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    const fn new() -> Gauge {
        Gauge {
            now: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// Counts one operation until the returned guard drops.
    pub fn enter(&'static self) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        GaugeGuard(self)
    }

    /// (under way now, most at once so far).
    pub fn read(&self) -> (u64, u64) {
        (
            self.now.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
        )
    }
}

/// One operation counted by a [`Gauge`].
#[derive(Debug)]
pub struct GaugeGuard(&'static Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Fetches this process runs now (consumers: several refs at once).
pub static FETCHING: Gauge = Gauge::new();
/// Fetch requests this process's endpoint serves now (producers: several
/// consumers at once).
pub static SERVING: Gauge = Gauge::new();

/// What this process holds in NIXL (all zero in a build without nixl): its
/// registrations on both sides and the producers it has loaded. Every field
/// returns to its earlier value once the objects involved are freed (the
/// loaded producers and ranges stay, bounded by the nixl transport's peer
/// limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NixlStats {
    /// Producer: ranges registered for exported objects.
    pub exported_ranges: usize,
    /// Producer: references exported objects hold on those ranges.
    pub exported_refs: usize,
    /// Consumer: registrations of received objects' memory, alive until their
    /// tensors are dropped (and kept for good by a read that timed out while it
    /// might still be writing).
    pub received: usize,
    /// Consumer: producer agents loaded (connected or not).
    pub loaded_peers: usize,
    /// Consumer: producer registrations loaded, over all peers.
    pub loaded_ranges: usize,
}
