//! Device memory for received tensors: a per-device cache of `cuMemAlloc`
//! blocks, so that a steady stream of transfers allocates nothing (like torch's
//! caching allocator, which the plugin cannot reach from Rust).
//!
//! A received object lives in one block ([`Lease`]); its tensors are views of
//! it and the lease goes back to the pool when the last one is dropped. The
//! consumer may still have work queued that reads the tensors, on the stream
//! they were handed to, so the lease records an event on that stream when it is
//! returned, and the next user of the block orders after it: on the device
//! ([`Lease::order_after_previous_use`], for the plugin's own copies and NCCL
//! receives) or on the host ([`Lease::wait_previous_use`], for NIXL, whose
//! writes are on no stream of ours). As with torch's allocator, work on other
//! streams than the one the tensors were received on must be ordered by the
//! user (`record_stream`).
//!
//! Sizes are rounded (powers of two up to 1 MiB, then multiples of 2 MiB) and a
//! request takes the smallest cached block that fits and is at most twice its
//! size. Bounds per device: `RAY_RDT_CUDA_POOL_BYTES` (default 1 GiB) and
//! `RAY_RDT_CUDA_POOL_BLOCKS` (16); beyond them the oldest cached blocks are
//! freed (after their last use completed).

use super::driver::{self, DevicePtr, Event, RawStream};
use crate::dlpack::{kDLCUDA, DLDevice};
use crate::error::Result;
use crate::tensor::{Tensor, TensorMeta};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cached bytes per device.
pub const POOL_BYTES_ENV: &str = "RAY_RDT_CUDA_POOL_BYTES";
/// Cached blocks per device.
pub const POOL_BLOCKS_ENV: &str = "RAY_RDT_CUDA_POOL_BLOCKS";

/// One device allocation.
struct Block {
    ptr: DevicePtr,
    capacity: usize,
    device: i32,
    /// Recorded on the stream that last used the block, when it was returned.
    last_use: Option<Event>,
}

#[derive(Default)]
struct Cache {
    free: Vec<Block>,
    bytes: usize,
}

static POOLS: Mutex<Option<HashMap<i32, Cache>>> = Mutex::new(None);

/// The capacity a request of `len` bytes is served with.
pub fn rounded(len: usize) -> usize {
    const MIB: usize = 1 << 20;
    if len <= MIB {
        len.max(512).next_power_of_two()
    } else {
        len.div_ceil(2 * MIB) * 2 * MIB
    }
}

fn limits() -> (usize, usize) {
    (
        crate::settings::bytes_or(POOL_BYTES_ENV, 1 << 30),
        crate::settings::u64_or(POOL_BLOCKS_ENV, 16) as usize,
    )
}

/// A block of device memory held by one received object.
pub struct Lease {
    block: Option<Block>,
    /// The stream whose later work may read the memory (the consumer's).
    release_stream: RawStream,
}

impl Lease {
    /// At least `len` bytes on device `ordinal`: a cached block, else a new one.
    pub fn take(ordinal: i32, len: usize) -> Result<Lease> {
        let want = rounded(len);
        let cached = {
            let mut pools = POOLS.lock();
            let cache = pools
                .get_or_insert_with(HashMap::new)
                .entry(ordinal)
                .or_default();
            let best = cache
                .free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity >= want && b.capacity <= 2 * want)
                .min_by_key(|(_, b)| b.capacity)
                .map(|(i, _)| i);
            best.map(|i| {
                let b = cache.free.remove(i);
                cache.bytes -= b.capacity;
                b
            })
        };
        let block = match cached {
            Some(b) => b,
            None => Block {
                ptr: driver::malloc(ordinal, want)?,
                capacity: want,
                device: ordinal,
                last_use: None,
            },
        };
        Ok(Lease {
            block: Some(block),
            release_stream: 0,
        })
    }

    fn block(&self) -> &Block {
        self.block
            .as_ref()
            .expect("a lease holds its block until dropped")
    }

    /// Start of the memory.
    pub fn ptr(&self) -> DevicePtr {
        self.block().ptr
    }

    /// The device it is on.
    pub fn device(&self) -> i32 {
        self.block().device
    }

    /// Makes `stream` (of this device) wait for the block's previous use.
    pub fn order_after_previous_use(&self, stream: RawStream) -> Result<()> {
        match &self.block().last_use {
            Some(e) => e.wait_on(stream, self.device()),
            None => Ok(()),
        }
    }

    /// Waits on the host, until `deadline`, for the block's previous use.
    pub fn wait_previous_use(&self, deadline: Instant) -> Result<()> {
        match &self.block().last_use {
            Some(e) => e.wait(deadline, "the previous use of a pooled CUDA buffer", || {
                Ok(())
            }),
            None => Ok(()),
        }
    }

    /// Names the stream the received tensors are handed to: the block is
    /// reused only after the work queued there before they are dropped.
    pub fn release_on(&mut self, stream: RawStream) {
        self.release_stream = stream;
    }

    /// Tensors of `metas` at `offsets` in this memory, which they keep alive
    /// (the lease returns to the pool when the last of them is dropped).
    pub fn into_tensors(self, metas: Vec<TensorMeta>, offsets: &[u64]) -> Vec<Tensor> {
        let device = DLDevice {
            device_type: kDLCUDA,
            device_id: self.device(),
        };
        let base = self.ptr();
        let owner = Arc::new(self);
        metas
            .into_iter()
            .zip(offsets)
            .map(|(m, &off)| {
                Tensor::from_owner(
                    m,
                    device,
                    (base + off) as usize as *mut _,
                    Box::new(owner.clone()),
                )
            })
            .collect()
    }

    /// Gives the memory up for good (a transfer that may still write into it
    /// timed out): it is never reused or freed.
    pub fn leak(mut self) {
        if let Some(b) = self.block.take() {
            log::warn!(
                "ray-rdt: keeping {} bytes of CUDA memory on device {} that a timed-out transfer may still write",
                b.capacity,
                b.device
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut block) = self.block.take() else {
            return;
        };
        let recorded = match block.last_use.take() {
            Some(e) => Ok(e),
            None => Event::new(block.device, false),
        }
        .and_then(|e| e.record(self.release_stream).map(|_| e));
        match recorded {
            Ok(e) => {
                block.last_use = Some(e);
                give_back(block);
            }
            // Without an event nothing says when the memory is free: release it
            // (cuMemFree waits for the device's pending work on it).
            Err(e) => {
                log::debug!("ray-rdt: freeing a CUDA buffer instead of pooling it: {e}");
                let _ = driver::free(block.device, block.ptr);
            }
        }
    }
}

/// Empty CUDA tensors of `metas` on `device` (no memory: null data pointers).
pub fn empty_tensors(metas: Vec<TensorMeta>, device: DLDevice) -> Vec<Tensor> {
    metas
        .into_iter()
        .map(|m| Tensor::from_owner(m, device, std::ptr::null_mut(), Box::new(())))
        .collect()
}

fn give_back(block: Block) {
    let (max_bytes, max_blocks) = limits();
    let evicted = {
        let mut pools = POOLS.lock();
        let cache = pools
            .get_or_insert_with(HashMap::new)
            .entry(block.device)
            .or_default();
        cache.bytes += block.capacity;
        cache.free.push(block);
        let mut evicted = Vec::new();
        while !cache.free.is_empty() && (cache.bytes > max_bytes || cache.free.len() > max_blocks) {
            let b = cache.free.remove(0);
            cache.bytes -= b.capacity;
            evicted.push(b);
        }
        evicted
    };
    for b in evicted {
        release(b);
    }
}

/// Frees a block once its last use completed (bounded wait; a block still in
/// use after it is leaked rather than freed under running work).
fn release(b: Block) {
    if let Some(e) = &b.last_use {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Err(err) = e.wait(deadline, "the last use of a pooled CUDA buffer", || Ok(())) {
            log::warn!(
                "ray-rdt: not freeing a CUDA buffer of {} bytes: {err}",
                b.capacity
            );
            return;
        }
    }
    if let Err(err) = driver::free(b.device, b.ptr) {
        log::debug!("ray-rdt: cuMemFree failed: {err}");
    }
}

/// (cached blocks, cached bytes) on device `ordinal`, for tests.
pub fn cached(ordinal: i32) -> (usize, usize) {
    POOLS
        .lock()
        .as_ref()
        .and_then(|p| p.get(&ordinal))
        .map_or((0, 0), |c| (c.free.len(), c.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_classes() {
        assert_eq!(rounded(1), 512);
        assert_eq!(rounded(4096), 4096);
        assert_eq!(rounded(4097), 8192);
        assert_eq!(rounded(1 << 20), 1 << 20);
        assert_eq!(rounded((1 << 20) + 1), 2 << 20);
        assert_eq!(rounded(5 << 20), 6 << 20);
    }

    #[test]
    fn without_a_driver_take_is_unavailable() {
        if driver::init().is_ok() {
            eprintln!("skipped: this machine has a CUDA driver and device");
            return;
        }
        let e = Lease::take(0, 4096).err().expect("no driver");
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable, "{e}");
        assert_eq!(cached(0), (0, 0));
    }
}
