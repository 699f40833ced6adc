//! The producer's mappings of segments it has written into, kept for reuse.
//!
//! A consumer sends its idle segment back with its next request; mapping it
//! again would cost a page-table walk over every page (about 12 ms per 256 MiB),
//! so the producer keeps the mapping, keyed by the file's identity, and the next
//! write is a plain memcpy. Bounded in bytes and entries, least recently used out
//! first; the mapping used last always stays, whatever its size (a model larger
//! than the bound, written every step, is mapped once: see the consumer's
//! `pool`). A mapping keeps its file alive, so an identity cannot be reused by a
//! new file while it is cached; a dead consumer's segments are released when
//! evicted.

use super::segment::Mapping;
use crate::error::Result;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Most bytes of mappings kept (override: `RAY_RDT_SHM_PRODUCER_CACHE_BYTES`).
const DEFAULT_LIMIT: usize = 1 << 30;
/// Most mappings kept.
const MAX_ENTRIES: usize = 16;

/// (device, inode) of a memory file.
pub type Identity = (u64, u64);

/// Recently written segments' mappings.
#[derive(Debug)]
pub struct WrittenMappings {
    entries: Mutex<VecDeque<(Identity, Arc<Mapping>)>>,
    limit: usize,
}

impl Default for WrittenMappings {
    fn default() -> Self {
        let limit = crate::settings::bytes_or("RAY_RDT_SHM_PRODUCER_CACHE_BYTES", DEFAULT_LIMIT);
        WrittenMappings {
            entries: Mutex::new(VecDeque::new()),
            limit,
        }
    }
}

impl WrittenMappings {
    /// The mapping of the file `fd` (identity `id`, `size` bytes), reused if
    /// cached, else mapped with every page populated and cached.
    pub fn get(&self, id: Identity, fd: &OwnedFd, size: usize) -> Result<Arc<Mapping>> {
        let mut entries = self.entries.lock();
        if let Some(i) = entries
            .iter()
            .position(|(k, m)| *k == id && m.len() == size)
        {
            let entry = entries.remove(i).expect("index from position");
            let mapping = entry.1.clone();
            entries.push_back(entry);
            return Ok(mapping);
        }
        drop(entries);
        let mapping = Arc::new(Mapping::new(fd, size, true)?);
        let mut entries = self.entries.lock();
        entries.push_back((id, mapping.clone()));
        while entries.len() > 1
            && (entries.len() > MAX_ENTRIES
                || entries.iter().map(|(_, m)| m.len()).sum::<usize>() > self.limit)
        {
            entries.pop_front();
        }
        Ok(mapping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::shm::segment::{create, identity};

    #[test]
    fn a_mapping_larger_than_the_bound_is_kept_alone() {
        let cache = WrittenMappings {
            entries: Mutex::new(VecDeque::new()),
            limit: 1 << 20,
        };
        let small = create(4096).unwrap();
        let large = create(2 << 20).unwrap();
        let (small_id, _) = identity(&small).unwrap();
        let (large_id, _) = identity(&large).unwrap();
        cache.get(small_id, &small, 4096).unwrap();
        let first = cache.get(large_id, &large, 2 << 20).unwrap();
        let again = cache.get(large_id, &large, 2 << 20).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the large mapping was mapped again"
        );
        let ids: Vec<Identity> = cache.entries.lock().iter().map(|(k, _)| *k).collect();
        assert_eq!(ids, vec![large_id]);
    }
}
