//! A pool of idle segments this process made: the consumer's received
//! segments, and the producer's staging segments ([`super::staged`], back
//! here when the last reader of their object is done). When every tensor
//! viewing a received segment has been released, the segment (file and
//! mapping, pages already faulted in) returns here; the next fetch of a
//! similar size hands it back to the producer to write into, so a steady
//! stream of transfers costs one memcpy each, with no page zeroing or
//! faulting. Bounded in bytes and count, the
//! oldest idle segments going first; the segment returned last always stays,
//! whatever its size, so that a steady stream of objects larger than the bound
//! (a model just over 1 GiB sent every step) still reuses one segment instead
//! of creating and faulting in a new one every time (issue 18: 1 GiB as 10,000
//! separate tensors, a segment slightly over 1 GiB: 1,108 ms per step before,
//! 144 ms with reuse).

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
    /// Oldest first.
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
        let seg = idle.segments.remove(i);
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
        idle.bytes += segment.mapping.len();
        idle.segments.push(segment);
        let mut evicted = Vec::new();
        while idle.segments.len() > 1
            && (idle.segments.len() > MAX_SEGMENTS || idle.bytes > self.limit)
        {
            let oldest = idle.segments.remove(0);
            idle.bytes -= oldest.mapping.len();
            evicted.push(oldest);
        }
        drop(idle);
        // Unmapped and closed outside the lock.
        drop(evicted);
    }

    /// Sizes of the idle segments, oldest first.
    #[cfg(test)]
    fn idle_sizes(&self) -> Vec<usize> {
        self.idle
            .lock()
            .segments
            .iter()
            .map(|s| s.mapping.len())
            .collect()
    }
}

/// A segment in use by received tensors.
#[derive(Debug)]
pub struct Lease {
    segment: Option<Segment>,
    pool: SegmentPool,
}

impl Lease {
    /// The segment's memory file.
    pub fn fd(&self) -> &OwnedFd {
        &self.segment.as_ref().expect("present until drop").fd
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::shm::segment::create;

    fn pool(limit: usize) -> SegmentPool {
        SegmentPool {
            limit,
            ..SegmentPool::default()
        }
    }

    fn segment(len: usize) -> Segment {
        let fd = create(c"test", len as u64).unwrap();
        let mapping = Mapping::new(&fd, len, false).unwrap();
        Segment { fd, mapping }
    }

    #[test]
    fn a_segment_larger_than_the_bound_is_kept_alone() {
        let pool = pool(1 << 20);
        pool.give_back(segment(64 << 10));
        pool.give_back(segment(2 << 20));
        assert_eq!(pool.idle_sizes(), vec![2 << 20]);
        let again = pool.take(2 << 20).expect("the large segment is reused");
        assert_eq!(again.mapping.len(), 2 << 20);
        assert!(pool.idle_sizes().is_empty());
    }

    #[test]
    fn the_oldest_go_first_within_the_bound() {
        let pool = pool(3 << 16);
        for len in [1 << 16, 2 << 16, 1 << 16] {
            pool.give_back(segment(len));
        }
        // 4 x 64 KiB over a bound of 3: the oldest went.
        assert_eq!(pool.idle_sizes(), vec![2 << 16, 1 << 16]);
        for _ in 0..MAX_SEGMENTS + 2 {
            pool.give_back(segment(4096));
        }
        assert_eq!(pool.idle_sizes().len(), MAX_SEGMENTS);
        assert!(pool.idle_sizes().iter().all(|&l| l == 4096));
    }
}
