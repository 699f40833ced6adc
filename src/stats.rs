//! Per-transport counters for this process: what `ray_rdt.stats()` reports, so a
//! test or an operator can see that bytes really went through the plugin.

use crate::transport_kind::TransportKind;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one transport.
#[derive(Debug, Default)]
pub struct Counters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    transfers: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of one transport's counters.
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
}

static COUNTERS: [Counters; TransportKind::ALL.len()] = [const {
    Counters {
        bytes_sent: AtomicU64::new(0),
        bytes_received: AtomicU64::new(0),
        transfers: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    }
}; TransportKind::ALL.len()];

fn counters(t: TransportKind) -> &'static Counters {
    &COUNTERS[t.code() as usize]
}

/// Records a completed send of `bytes` over `t`.
pub fn record_sent(t: TransportKind, bytes: u64) {
    let c = counters(t);
    c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    c.transfers.fetch_add(1, Ordering::Relaxed);
}

/// Records a completed receive of `bytes` over `t`.
pub fn record_received(t: TransportKind, bytes: u64) {
    let c = counters(t);
    c.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    c.transfers.fetch_add(1, Ordering::Relaxed);
}

/// Records a failed transfer over `t`.
pub fn record_error(t: TransportKind) {
    counters(t).errors.fetch_add(1, Ordering::Relaxed);
}

/// Reads `t`'s counters.
pub fn snapshot(t: TransportKind) -> Snapshot {
    let c = counters(t);
    Snapshot {
        bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
        bytes_received: c.bytes_received.load(Ordering::Relaxed),
        transfers: c.transfers.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
    }
}
