//! The consumer's pool of received segments. When every tensor viewing a
//! segment has been released, the segment (file and mapping, pages already
//! faulted in) returns here; the next fetch of a similar size hands it back to
//! the producer to write into, so a steady stream of transfers costs one memcpy
//! each, with no page zeroing or faulting. Bounded in bytes and count.

use super::segment::Mapping;
use parking_lot::Mutex;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Most bytes of idle segments kept (override: `RAY_RDT_SHM_POOL_BYTES`).
const DEFAULT_POOL_BYTES: usize = 1 << 30;
/// Most idle segments kept.
const MAX_SEGMENTS: usize = 16;

/// A segment this process holds: its file and a mapping of all of it.
#[derive(Debug)]
pub struct Segment {
    /// The memory file.
    pub fd: OwnedFd,
    /// The mapping the tensors view.
    pub mapping: Mapping,
}

#[derive(Debug)]
struct Idle {
    segments: Vec<Segment>,
    bytes: usize,
}

/// Idle segments, shared with the leases that return to it.
#[derive(Debug, Clone)]
pub struct SegmentPool {
    idle: Arc<Mutex<Idle>>,
    limit: usize,
}

impl Default for SegmentPool {
    fn default() -> Self {
        let limit = crate::settings::bytes_or("RAY_RDT_SHM_POOL_BYTES", DEFAULT_POOL_BYTES);
        SegmentPool {
            idle: Arc::new(Mutex::new(Idle {
                segments: Vec::new(),
                bytes: 0,
            })),
            limit,
        }
    }
}

impl SegmentPool {
    /// Takes the smallest idle segment that holds `len` bytes without wasting
    /// more than about half of itself.
    pub fn take(&self, len: usize) -> Option<Segment> {
        let mut idle = self.idle.lock();
        let fits = |s: &Segment| s.mapping.len() >= len && s.mapping.len() <= 2 * len + (1 << 20);
        let (i, _) = idle
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| fits(s))
            .min_by_key(|(_, s)| s.mapping.len())?;
        let seg = idle.segments.swap_remove(i);
        idle.bytes -= seg.mapping.len();
        Some(seg)
    }

    /// Wraps `segment` so that it comes back to the pool when the last holder drops it.
    pub fn lease(&self, segment: Segment) -> Arc<Lease> {
        Arc::new(Lease {
            segment: Some(segment),
            pool: self.clone(),
        })
    }

    fn give_back(&self, segment: Segment) {
        let mut idle = self.idle.lock();
        let len = segment.mapping.len();
        if idle.segments.len() < MAX_SEGMENTS && idle.bytes + len <= self.limit {
            idle.bytes += len;
            idle.segments.push(segment);
        }
    }
}

/// A segment in use by received tensors.
#[derive(Debug)]
pub struct Lease {
    segment: Option<Segment>,
    pool: SegmentPool,
}

impl Lease {
    /// Start of the segment's mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.segment
            .as_ref()
            .expect("present until drop")
            .mapping
            .as_ptr()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(segment) = self.segment.take() {
            self.pool.give_back(segment);
        }
    }
}
