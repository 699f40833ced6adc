//! Mappings of segments another process made, kept for reuse: the producer's
//! of the segments consumers send back to be written again, a consumer's of
//! the producers' staging segments ([`super::staged`]).
//!
//! The same segment comes back step after step; mapping it again would cost a
//! page-table walk over every page (about 12 ms per 256 MiB), so the mapping
//! is kept, keyed by the file's identity, and the next copy is a plain memcpy.
//! Bounded in bytes and entries, least recently used out first; the mapping
//! used last always stays, whatever its size (a model larger than the bound,
//! moved every step, is mapped once: see the consumer's `pool`). A mapping
//! keeps its file alive, so an identity cannot be reused by a new file while
//! it is cached. The mappings a peer sent go once it has died, at the next
//! transfer ([`MappingCache::forget_dead_peers`]): a survivor keeps no dead
//! peer's memory beyond that.

use super::segment::Mapping;
use crate::error::Result;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Most bytes of mappings kept in each cache (override:
/// `RAY_RDT_SHM_PRODUCER_CACHE_BYTES` for the producer's,
/// `RAY_RDT_SHM_STAGED_CACHE_BYTES` for the consumer's).
const DEFAULT_LIMIT: usize = 1 << 30;
/// Most mappings kept.
const MAX_ENTRIES: usize = 16;

/// (device, inode) of a memory file.
pub type Identity = (u64, u64);

/// A cached mapping: the file's identity, the process that sent it (0:
/// unknown), the mapping.
type Entry = (Identity, u32, Arc<Mapping>);

/// Recently used segments' mappings.
#[derive(Debug)]
pub struct MappingCache {
    entries: Mutex<VecDeque<Entry>>,
    limit: usize,
}

impl MappingCache {
    /// An empty cache bounded by the setting `limit_setting` (bytes).
    pub fn bounded_by(limit_setting: &str) -> MappingCache {
        MappingCache {
            entries: Mutex::new(VecDeque::new()),
            limit: crate::settings::bytes_or(limit_setting, DEFAULT_LIMIT),
        }
    }

    /// The mapping of the file `fd` (identity `id`, `size` bytes) that
    /// process `peer` sent (0: unknown), reused if cached, else mapped with
    /// every page populated and cached. (Callers drop dead peers' mappings
    /// with [`MappingCache::forget_dead_peers`] at every transfer.)
    pub fn get(&self, id: Identity, peer: u32, fd: &OwnedFd, size: usize) -> Result<Arc<Mapping>> {
        let mut entries = self.entries.lock();
        if let Some(i) = entries
            .iter()
            .position(|(k, _, m)| *k == id && m.len() == size)
        {
            let entry = entries.remove(i).expect("index from position");
            let mapping = entry.2.clone();
            entries.push_back(entry);
            return Ok(mapping);
        }
        drop(entries);
        let mapping = Arc::new(Mapping::new(fd, size, true)?);
        let mut entries = self.entries.lock();
        entries.push_back((id, peer, mapping.clone()));
        let mut dropped = Vec::new();
        while entries.len() > 1
            && (entries.len() > MAX_ENTRIES
                || entries.iter().map(|(_, _, m)| m.len()).sum::<usize>() > self.limit)
        {
            dropped.extend(entries.pop_front());
        }
        drop(entries);
        // Unmapped outside the lock.
        drop(dropped);
        Ok(mapping)
    }

    /// Drops the mappings of segments whose sender has died (a check per
    /// entry, at most [`MAX_ENTRIES`]: cheap enough for every transfer).
    pub fn forget_dead_peers(&self) {
        let mut entries = self.entries.lock();
        let (kept, dropped): (VecDeque<Entry>, VecDeque<Entry>) =
            entries.drain(..).partition(|e| alive(e.1));
        *entries = kept;
        drop(entries);
        // Unmapped outside the lock.
        drop(dropped);
    }
}

/// Whether process `pid` still exists (0, unknown, counts as alive).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    pid == 0
        || unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::shm::segment::{create, identity};

    fn ids(cache: &MappingCache) -> Vec<Identity> {
        cache.entries.lock().iter().map(|(k, _, _)| *k).collect()
    }

    #[test]
    fn a_mapping_larger_than_the_bound_is_kept_alone() {
        let cache = MappingCache {
            entries: Mutex::new(VecDeque::new()),
            limit: 1 << 20,
        };
        let small = create(c"test", 4096).unwrap();
        let large = create(c"test", 2 << 20).unwrap();
        let (small_id, _) = identity(&small).unwrap();
        let (large_id, _) = identity(&large).unwrap();
        cache.get(small_id, 0, &small, 4096).unwrap();
        let first = cache.get(large_id, 0, &large, 2 << 20).unwrap();
        let again = cache.get(large_id, 0, &large, 2 << 20).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the large mapping was mapped again"
        );
        assert_eq!(ids(&cache), vec![large_id]);
    }

    #[test]
    fn a_dead_peers_mappings_go() {
        let cache = MappingCache::bounded_by("RAY_RDT_TEST_UNSET");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let (a, b) = (
            create(c"test", 4096).unwrap(),
            create(c"test", 4096).unwrap(),
        );
        let (a_id, b_id) = (identity(&a).unwrap().0, identity(&b).unwrap().0);
        cache.get(a_id, std::process::id(), &a, 4096).unwrap();
        cache.get(b_id, dead, &b, 4096).unwrap();
        assert_eq!(ids(&cache), vec![a_id, b_id]);
        cache.forget_dead_peers();
        assert_eq!(ids(&cache), vec![a_id]);
    }
}
