//! Host memory the plugin allocates for received tensors, with a small cache of
//! released large buffers.
//!
//! Receiving into fresh memory costs the kernel's page zeroing and one fault per
//! page, as much as the copy itself for large tensors. Released buffers of 2 MiB
//! and more therefore go to a bounded per-process cache (like the caching
//! allocators of torch and CUDA) and the next receive of a similar size reuses
//! them, pages already resident. Contents of a new buffer are unspecified.

use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::ffi::c_void;
use std::ptr::NonNull;

/// Buffers at least this large are mapped directly and cached when released.
const MMAP_THRESHOLD: usize = 2 << 20;
/// Most bytes the cache keeps (override: `RAY_RDT_HOST_CACHE_BYTES`).
const DEFAULT_CACHE_BYTES: usize = 1 << 30;
/// Most buffers the cache keeps.
const CACHE_ENTRIES: usize = 16;

/// A released mapping waiting for reuse.
struct Cached {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an idle mapping with no other owner.
unsafe impl Send for Cached {}

static CACHE: Mutex<Vec<Cached>> = Mutex::new(Vec::new());

fn cache_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT
        .get_or_init(|| crate::settings::bytes_or("RAY_RDT_HOST_CACHE_BYTES", DEFAULT_CACHE_BYTES))
}

/// Host memory owned by the plugin: 64-byte aligned heap memory for small
/// buffers, an anonymous (possibly reused) mapping for large ones.
#[derive(Debug)]
pub struct HostBuffer {
    ptr: NonNull<u8>,
    /// Length of the underlying mapping (>= the requested length), or None for heap memory.
    mapped: Option<usize>,
    layout: Option<std::alloc::Layout>,
}

// SAFETY: a plain allocation with a unique owner.
unsafe impl Send for HostBuffer {}
// SAFETY: shared access only hands out the address; writes go through raw
// pointers whose users order them (receivers write before handing tensors out).
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// Allocates `len` bytes (contents unspecified).
    pub fn new(len: usize) -> Result<Self> {
        if len >= MMAP_THRESHOLD {
            return Self::mapped(len);
        }
        let layout = std::alloc::Layout::from_size_align(len.max(1), 64)
            .map_err(|e| Error::invalid(format!("cannot allocate {len} bytes: {e}")))?;
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("out of memory allocating {len} bytes"),
            )
        })?;
        Ok(HostBuffer {
            ptr,
            mapped: None,
            layout: Some(layout),
        })
    }

    fn mapped(len: usize) -> Result<Self> {
        {
            let mut cache = CACHE.lock();
            let best = cache
                .iter()
                .enumerate()
                .filter(|(_, c)| c.len >= len && c.len <= 2 * len)
                .min_by_key(|(_, c)| c.len)
                .map(|(i, _)| i);
            if let Some(i) = best {
                let c = cache.swap_remove(i);
                return Ok(HostBuffer {
                    ptr: c.ptr,
                    mapped: Some(c.len),
                    layout: None,
                });
            }
        }
        // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(Error::io(
                &format!("mmap of {len} bytes"),
                std::io::Error::last_os_error(),
            ));
        }
        // No MADV_HUGEPAGE: with the kernel's common `defrag=madvise`, a fault
        // in an advised mapping compacts memory synchronously, and where the
        // page cache has fragmented it a fresh 256 MiB buffer stalled 0.5-1 s
        // (cross-node node copies, 2026-12-06: every other step 600-1,100 ms
        // instead of about 110). Faulting 4 KiB pages is slower on a quiet
        // machine (about 2x, docs/nixl.md), but the cache below makes a
        // steady stream fault each buffer once.
        // SAFETY: mmap succeeded, so raw is non-null.
        Ok(HostBuffer {
            ptr: unsafe { NonNull::new_unchecked(raw as *mut u8) },
            mapped: Some(len),
            layout: None,
        })
    }

    /// Start of the buffer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        match (self.layout, self.mapped) {
            // SAFETY: allocated in `new` with this layout.
            (Some(layout), _) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            (None, Some(len)) => {
                let mut cache = CACHE.lock();
                let held: usize = cache.iter().map(|c| c.len).sum();
                if cache.len() < CACHE_ENTRIES && held + len <= cache_limit() {
                    cache.push(Cached { ptr: self.ptr, len });
                    return;
                }
                drop(cache);
                // SAFETY: unmapping exactly the mapping this buffer owned.
                unsafe { libc::munmap(self.ptr.as_ptr() as *mut c_void, len) };
            }
            (None, None) => unreachable!("a buffer is heap or mapped"),
        }
    }
}
