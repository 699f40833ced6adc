//! The producer's registration cache: memory ranges registered with NIXL, keyed
//! by (address, length, device) and reference-counted by the objects that export
//! them, so returning the same tensor in several objects registers it once. A
//! range is deregistered when the last object holding it is released.
//!
//! Every registration gets a process-unique ID that travels in the metadata
//! record: a consumer that already loaded a range under another ID knows its
//! copy is stale (the memory was deregistered and registered again) and reloads.

use super::agent::{Region, Runtime};
use crate::error::Result;
use nixl_sys::RegistrationHandle;
use parking_lot::Mutex;
use std::collections::HashMap;

struct Entry {
    refs: usize,
    id: u64,
    /// Deregisters on drop.
    _handle: RegistrationHandle,
}

/// Registered ranges of this process.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<Region, Entry>>,
    next_id: Mutex<u64>,
}

impl Registry {
    /// Takes one reference on each distinct region in `regions`, registering those
    /// not yet registered. All or nothing: on error no reference is kept. Returns
    /// the registration ID of each region, in order.
    pub fn acquire(&self, runtime: &Runtime, regions: &[Region]) -> Result<Vec<u64>> {
        let mut entries = self.entries.lock();
        let mut taken: Vec<Region> = Vec::with_capacity(regions.len());
        let mut ids = Vec::with_capacity(regions.len());
        for region in regions {
            if let Some(e) = entries.get_mut(region) {
                e.refs += 1;
            } else {
                match runtime.register(*region) {
                    Ok(handle) => {
                        let id = {
                            let mut next = self.next_id.lock();
                            *next += 1;
                            *next
                        };
                        entries.insert(*region, Entry { refs: 1, id, _handle: handle });
                    }
                    Err(e) => {
                        // Undo what this call took.
                        let dropped: Vec<Entry> = taken.iter().filter_map(|r| Self::unref(&mut entries, r)).collect();
                        drop(dropped);
                        return Err(e);
                    }
                }
            }
            taken.push(*region);
            ids.push(entries[region].id);
        }
        Ok(ids)
    }

    /// Drops one reference on each region (as taken by [`Registry::acquire`]),
    /// deregistering those no object holds any more.
    pub fn release(&self, regions: &[Region]) {
        let mut entries = self.entries.lock();
        let dropped: Vec<Entry> = regions.iter().filter_map(|r| Self::unref(&mut entries, r)).collect();
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
