//! CUDA IPC: the producer's allocations as other processes of the host map them.
//!
//! A tensor lives inside an allocation (torch's caching allocator hands out
//! blocks of large `cudaMalloc` segments), and IPC handles name allocations, not
//! addresses: the producer exports the handle of the allocation holding the
//! tensor and the tensor's offset in it ([`export`]). A consumer maps each
//! allocation once ([`Mappings::open`]) and keeps the mapping for later objects
//! in the same allocation. Mappings are closed when:
//!
//! - the producer freed the allocation: a later object of the same producer
//!   names a different allocation overlapping the same addresses (the address
//!   range was given back and reused), so the old mapping is stale;
//! - the cache is full (`RAY_RDT_CUDA_IPC_CACHE`, default 64 mappings): the least
//!   recently used idle one goes;
//! - the process exits.
//!
//! A mapping in use by a copy is never closed under it (it is shared by `Arc`).

use super::driver::{self, DevicePtr, IpcHandle};
use crate::error::Result;
use parking_lot::Mutex;
use std::sync::Arc;

/// Mappings kept per process.
pub const CACHE_ENV: &str = "RAY_RDT_CUDA_IPC_CACHE";

/// Where a tensor is, as another process can map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// The allocation's IPC handle.
    pub handle: IpcHandle,
    /// The allocation's base address in the producer.
    pub base: u64,
    /// The allocation's size.
    pub size: u64,
    /// The tensor's first byte, from `base`.
    pub offset: u64,
}

/// The IPC description of the device memory at `ptr` on device `ordinal`.
/// Memory from `cudaMalloc` (torch's default caching allocator) works; memory
/// from CUDA's virtual memory API (torch's `expandable_segments:True`) has no
/// legacy IPC handle, and the driver refuses it.
pub fn export(ordinal: i32, ptr: DevicePtr) -> Result<Exported> {
    let _on = driver::on(ordinal)?;
    let (base, size) = driver::allocation_of(ptr)?;
    Ok(Exported {
        handle: driver::ipc_mem_handle(base)?,
        base,
        size: size as u64,
        offset: ptr - base,
    })
}

/// One producer allocation mapped into this process.
#[derive(Debug)]
pub struct Mapping {
    /// Its address here.
    pub ptr: DevicePtr,
    /// The device whose context mapped it.
    pub device: i32,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Err(e) = driver::ipc_close(self.device, self.ptr) {
            log::debug!("ray-rdt: closing a CUDA IPC mapping failed: {e}");
        }
    }
}

struct Entry {
    producer: u32,
    exported: Exported,
    mapping: Arc<Mapping>,
    last_used: u64,
}

/// The mappings of this process.
#[derive(Default)]
pub struct Mappings {
    entries: Mutex<(Vec<Entry>, u64)>,
}

impl Mappings {
    /// The mapping of `exported` (from producer process `producer`), opened in
    /// device `device`'s context on first use.
    pub fn open(&self, producer: u32, exported: &Exported, device: i32) -> Result<Arc<Mapping>> {
        let stale: Vec<Entry>;
        {
            let mut guard = self.entries.lock();
            let (entries, clock) = &mut *guard;
            *clock += 1;
            if let Some(e) = entries
                .iter_mut()
                .find(|e| e.producer == producer && e.exported.handle == exported.handle)
            {
                e.last_used = *clock;
                return Ok(e.mapping.clone());
            }
            // The same producer's addresses under another handle: that
            // allocation was freed; its mapping is stale.
            let overlaps = |e: &Entry| {
                e.producer == producer
                    && e.exported.base < exported.base + exported.size
                    && exported.base < e.exported.base + e.exported.size
            };
            let (old, keep): (Vec<Entry>, Vec<Entry>) = entries.drain(..).partition(overlaps);
            *entries = keep;
            stale = old;
        }
        drop(stale); // closes them (unless a copy still holds one)
        let mapping = Arc::new(Mapping {
            ptr: driver::ipc_open(device, &exported.handle)?,
            device,
        });
        let evicted = {
            let mut guard = self.entries.lock();
            let (entries, clock) = &mut *guard;
            entries.push(Entry {
                producer,
                exported: *exported,
                mapping: mapping.clone(),
                last_used: *clock,
            });
            let max = crate::settings::u64_or(CACHE_ENV, 64).max(1) as usize;
            let mut evicted = Vec::new();
            while entries.len() > max {
                let oldest = entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(i, _)| i)
                    .expect("not empty");
                evicted.push(entries.remove(oldest));
            }
            evicted
        };
        drop(evicted);
        Ok(mapping)
    }

    /// Closes every mapping of producer process `producer` (it is gone).
    pub fn forget(&self, producer: u32) {
        let gone: Vec<Entry> = {
            let mut guard = self.entries.lock();
            let (entries, _) = &mut *guard;
            let (gone, keep) = entries.drain(..).partition(|e| e.producer == producer);
            *entries = keep;
            gone
        };
        drop(gone);
    }

    /// Number of open mappings, for tests.
    pub fn len(&self) -> usize {
        self.entries.lock().0.len()
    }
}
