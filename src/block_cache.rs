//! The plugin's global allocator: the system allocator, with large blocks
//! kept for reuse.
//!
//! An object of 10,000 tensors makes several heap arrays of 128 KiB to a few
//! MiB on every put and fetch (the adopted tensors, their descriptors, the
//! layout, the record), on Ray's task threads, whose glibc arenas hand freed
//! memory back to the kernel (`munmap` of large chunks, `MADV_DONTNEED` when an
//! arena's top is trimmed). Each step then pays one page fault and the
//! kernel's zeroing for every page of those arrays again: about 1 ms on each
//! side of a 10,000-tensor step on the reference machine, 10% of its cost
//! above one tensor's (docs/weights-bench.md, 2026-12-07 update).
//!
//! Blocks of [`MIN_BLOCK`] bytes and more are therefore rounded up to a power
//! of two and, when freed, kept (at most [`PER_CLASS`] of each size and
//! [`MAX_KEPT`] bytes in all, per process) for the next allocation of their
//! size class, pages already resident. Smaller blocks, and blocks aligned
//! beyond what malloc guarantees, go to the system allocator untouched.
//! Nothing here allocates, so the allocator never calls itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The smallest block kept: glibc's initial `mmap` threshold.
const MIN_BLOCK: usize = 128 << 10;
/// The largest block kept (a descriptor array of about 500,000 tensors).
const MAX_BLOCK: usize = 64 << 20;
/// Blocks kept per size class.
const PER_CLASS: usize = 4;
/// Most bytes kept in all (counted in whole blocks).
const MAX_KEPT: usize = 64 << 20;
/// Alignment of every block of a size class (malloc's own on x86-64 and aarch64).
const ALIGN: usize = 16;
const CLASSES: usize = (MAX_BLOCK.trailing_zeros() - MIN_BLOCK.trailing_zeros() + 1) as usize;

/// Freed blocks of one size class, waiting for reuse.
struct Kept {
    blocks: [usize; PER_CLASS],
    len: usize,
}

/// The system allocator with freed large blocks kept for reuse (see the
/// module docs). Installed as the crate's `#[global_allocator]`.
pub struct BlockCache {
    classes: [Mutex<Kept>; CLASSES],
    kept_bytes: AtomicUsize,
}

impl BlockCache {
    /// An empty cache.
    pub const fn new() -> BlockCache {
        BlockCache {
            classes: [const {
                Mutex::new(Kept {
                    blocks: [0; PER_CLASS],
                    len: 0,
                })
            }; CLASSES],
            kept_bytes: AtomicUsize::new(0),
        }
    }

    /// Bytes held in freed blocks now.
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.kept_bytes.load(Ordering::Relaxed)
    }

    /// A freed block of `class`, if one is kept.
    fn take(&self, class: usize) -> Option<*mut u8> {
        let mut kept = self.classes[class]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if kept.len == 0 {
            return None;
        }
        kept.len -= 1;
        let block = kept.blocks[kept.len];
        self.kept_bytes
            .fetch_sub(class_size(class), Ordering::Relaxed);
        Some(block as *mut u8)
    }

    /// Keeps freed block `ptr` of `class`; false (the caller frees it) when
    /// the class or the cache is full.
    fn keep(&self, class: usize, ptr: *mut u8) -> bool {
        let size = class_size(class);
        let mut kept = self.classes[class]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if kept.len == PER_CLASS {
            return false;
        }
        if self.kept_bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_KEPT {
            self.kept_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        let len = kept.len;
        kept.blocks[len] = ptr as usize;
        kept.len += 1;
        true
    }
}

/// The size class of an allocation of `layout`, if it is one this cache keeps.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() < MIN_BLOCK || layout.size() > MAX_BLOCK || layout.align() > ALIGN {
        return None;
    }
    let shift = layout.size().next_power_of_two().trailing_zeros();
    Some((shift - MIN_BLOCK.trailing_zeros()) as usize)
}

fn class_size(class: usize) -> usize {
    MIN_BLOCK << class
}

fn class_layout(class: usize) -> Layout {
    // SAFETY: a power of two no larger than MAX_BLOCK, with a power-of-two alignment.
    unsafe { Layout::from_size_align_unchecked(class_size(class), ALIGN) }
}

// SAFETY: every block handed out is a live system allocation of at least the
// requested size and alignment, owned by one caller until freed; a kept block
// belongs to no caller.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => self
                .take(class)
                .unwrap_or_else(|| System.alloc(class_layout(class))),
            None => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => match self.take(class) {
                Some(block) => {
                    std::ptr::write_bytes(block, 0, layout.size());
                    block
                }
                None => System.alloc_zeroed(class_layout(class)),
            },
            None => System.alloc_zeroed(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => {
                if !self.keep(class, ptr) {
                    System.dealloc(ptr, class_layout(class));
                }
            }
            None => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (of the new layout): the caller guarantees `new_size`, rounded
        // to `layout.align()`, does not overflow isize.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => System.realloc(ptr, layout, new_size),
            (Some(old), Some(new)) if old == new => ptr,
            _ => {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn a_freed_large_block_is_reused_for_its_size_class() {
        let cache = BlockCache::new();
        unsafe {
            let a = cache.alloc(layout(MIN_BLOCK + 1));
            a.write_bytes(7, MIN_BLOCK + 1);
            cache.dealloc(a, layout(MIN_BLOCK + 1));
            assert_eq!(cache.kept_bytes(), 2 * MIN_BLOCK);
            // Same class (rounded up to 2 * MIN_BLOCK): the same block.
            let b = cache.alloc(layout(2 * MIN_BLOCK));
            assert_eq!(a, b);
            assert_eq!(cache.kept_bytes(), 0);
            // Zeroed on request, even when reused.
            cache.dealloc(b, layout(2 * MIN_BLOCK));
            let c = cache.alloc_zeroed(layout(MIN_BLOCK + 5));
            assert_eq!(c, a);
            assert!(std::slice::from_raw_parts(c, MIN_BLOCK + 5)
                .iter()
                .all(|&x| x == 0));
            cache.dealloc(c, layout(MIN_BLOCK + 5));
        }
    }

    #[test]
    fn small_and_overaligned_blocks_are_not_kept() {
        let cache = BlockCache::new();
        unsafe {
            let small = cache.alloc(layout(MIN_BLOCK - 1));
            cache.dealloc(small, layout(MIN_BLOCK - 1));
            let aligned = Layout::from_size_align(MIN_BLOCK, 4096).unwrap();
            let page = cache.alloc(aligned);
            assert_eq!(page as usize % 4096, 0);
            cache.dealloc(page, aligned);
            let huge = layout(MAX_BLOCK + 1);
            let h = cache.alloc(huge);
            assert!(!h.is_null());
            cache.dealloc(h, huge);
        }
        assert_eq!(cache.kept_bytes(), 0);
    }

    #[test]
    fn the_cache_keeps_at_most_per_class_blocks_and_max_kept_bytes() {
        let cache = BlockCache::new();
        unsafe {
            let blocks: Vec<_> = (0..PER_CLASS + 2)
                .map(|_| cache.alloc(layout(MIN_BLOCK)))
                .collect();
            for &b in &blocks {
                cache.dealloc(b, layout(MIN_BLOCK));
            }
            assert_eq!(cache.kept_bytes(), PER_CLASS * MIN_BLOCK);
            // The largest class alone fills the byte budget.
            let big: Vec<_> = (0..2).map(|_| cache.alloc(layout(MAX_BLOCK))).collect();
            for &b in &big {
                cache.dealloc(b, layout(MAX_BLOCK));
            }
            assert!(cache.kept_bytes() <= MAX_KEPT);
            assert_eq!(cache.kept_bytes(), PER_CLASS * MIN_BLOCK);
        }
    }

    #[test]
    fn threads_sharing_the_cache_never_get_one_block_twice() {
        let cache = BlockCache::new();
        std::thread::scope(|scope| {
            for id in 0..8u8 {
                let cache = &cache;
                scope.spawn(move || {
                    for round in 0..200usize {
                        let size = MIN_BLOCK << (round % 3);
                        let mine = layout(size);
                        unsafe {
                            let block = cache.alloc(mine);
                            assert!(!block.is_null());
                            block.write_bytes(id, size);
                            std::thread::yield_now();
                            // Nobody else wrote into it meanwhile.
                            let bytes = std::slice::from_raw_parts(block, size);
                            assert!(bytes.iter().step_by(4096).all(|&b| b == id));
                            assert_eq!(bytes[size - 1], id);
                            cache.dealloc(block, mine);
                        }
                    }
                });
            }
        });
        assert!(cache.kept_bytes() <= MAX_KEPT);
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_stays_put_within_one() {
        let cache = BlockCache::new();
        unsafe {
            let small = layout(1000);
            let p = cache.alloc(small);
            p.write_bytes(3, 1000);
            // Into a class.
            let q = cache.realloc(p, small, MIN_BLOCK + 10);
            assert!(std::slice::from_raw_parts(q, 1000).iter().all(|&x| x == 3));
            // Within the class (2 * MIN_BLOCK): no move.
            let r = cache.realloc(q, layout(MIN_BLOCK + 10), 2 * MIN_BLOCK);
            assert_eq!(q, r);
            // Out of it again.
            let s = cache.realloc(r, layout(2 * MIN_BLOCK), 500);
            assert!(std::slice::from_raw_parts(s, 500).iter().all(|&x| x == 3));
            cache.dealloc(s, layout(500));
        }
        assert_eq!(cache.kept_bytes(), 2 * MIN_BLOCK);
    }
}
