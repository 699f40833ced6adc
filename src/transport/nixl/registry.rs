//! The producer's registration cache: memory ranges registered with NIXL, keyed
//! by (address, length, device) and reference-counted by the objects that export
//! them, so returning the same tensor in several objects registers it once. A
//! range is deregistered when the last object holding it is released.
//!
//! Every registration gets a process-unique ID that travels in the metadata
//! record. Host memory is registered with that ID as its NIXL device ID (UCX
//! ignores the device ID of DRAM; NIXL matches descriptors on it): a range
//! registered again after a free (Ray steps often return the same buffer) is a
//! new descriptor to consumers, so the stale one they loaded can never be picked
//! and they need not reconnect to the producer (a reconnect costs ~3 ms; a
//! sections load microseconds). CUDA memory keeps its device ordinal.

use super::agent::{Region, Runtime};
use crate::error::Result;
use nixl_sys::RegistrationHandle;
use parking_lot::Mutex;
use std::collections::HashMap;

struct Entry {
    refs: usize,
    registered: Registered,
    /// Deregisters on drop.
    _handle: RegistrationHandle,
}

/// A registration as NIXL knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// The range registered (host memory: device ID = [`Registered::id`]).
    pub region: Region,
    /// Process-unique registration ID.
    pub id: u64,
}

/// Registered ranges of this process.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<Region, Entry>>,
    next_id: Mutex<u64>,
}

impl Registry {
    /// Takes one reference on each distinct region in `regions` (keyed with their
    /// real device), registering those not yet registered. All or nothing: on
    /// error no reference is kept. Returns each region's registration, in order.
    pub fn acquire(&self, runtime: &Runtime, regions: &[Region]) -> Result<Vec<Registered>> {
        let mut entries = self.entries.lock();
        let mut taken: Vec<Region> = Vec::with_capacity(regions.len());
        let mut out = Vec::with_capacity(regions.len());
        for region in regions {
            if let Some(e) = entries.get_mut(region) {
                e.refs += 1;
            } else {
                let id = {
                    let mut next = self.next_id.lock();
                    *next += 1;
                    *next
                };
                let tagged = if region.cuda {
                    *region
                } else {
                    Region { dev: id, ..*region }
                };
                match runtime.register(tagged) {
                    Ok(handle) => {
                        entries.insert(
                            *region,
                            Entry {
                                refs: 1,
                                registered: Registered { region: tagged, id },
                                _handle: handle,
                            },
                        );
                    }
                    Err(e) => {
                        // Undo what this call took.
                        let dropped: Vec<Entry> = taken
                            .iter()
                            .filter_map(|r| Self::unref(&mut entries, r))
                            .collect();
                        drop(dropped);
                        return Err(e);
                    }
                }
            }
            taken.push(*region);
            out.push(entries[region].registered);
        }
        Ok(out)
    }

    /// Drops one reference on each region (as taken by [`Registry::acquire`]),
    /// deregistering those no object holds any more.
    pub fn release(&self, regions: &[Region]) {
        let mut entries = self.entries.lock();
        let dropped: Vec<Entry> = regions
            .iter()
            .filter_map(|r| Self::unref(&mut entries, r))
            .collect();
        // Deregister while still holding the lock, so that a concurrent acquire of
        // the same range cannot register it again before NIXL forgot the old one.
        drop(dropped);
        drop(entries);
    }

    fn unref(entries: &mut HashMap<Region, Entry>, region: &Region) -> Option<Entry> {
        let e = entries.get_mut(region)?;
        e.refs -= 1;
        if e.refs == 0 {
            entries.remove(region)
        } else {
            None
        }
    }

    /// Number of registered ranges and the references on them (for tests).
    pub fn stats(&self) -> (usize, usize) {
        let entries = self.entries.lock();
        (entries.len(), entries.values().map(|e| e.refs).sum())
    }
}
