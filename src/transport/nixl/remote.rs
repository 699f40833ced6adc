//! The consumer's cache of producer agents it has loaded, by agent name.
//!
//! The first fetch from a producer loads its connection info (`load_remote_md`,
//! which makes the UCX endpoint); each fetch then loads the registrations its
//! tensors live in, unless they are already loaded under the same registration
//! ID. Host registrations carry unique device IDs ([`super::registry`]), so
//! stale ones never match. A CUDA range loaded under another ID, or overlapping
//! a loaded one, means the producer deregistered and registered again: NIXL
//! keeps no way to replace one remote descriptor, so the peer is invalidated and
//! loaded afresh (as Ray's own NIXL transport does on a metadata-version
//! change). Past [`MAX_LOADED_PER_PEER`] remembered ranges the same happens, which
//! bounds what stale registrations cost. Transfers hold a read lock
//! on their peer's entry; reloading takes the write lock, so it never pulls the
//! endpoint from under a running transfer.

use super::agent::Runtime;
use super::record::{Desc, Record};
use crate::error::{Error, Result};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most producers kept loaded; the least recently used idle one goes first.
pub const MAX_PEERS: usize = 256;
/// Most registrations remembered per producer before it is reloaded from scratch.
pub const MAX_LOADED_PER_PEER: usize = 4096;

/// What this process loaded about one producer agent.
#[derive(Default)]
pub struct Loaded {
    connected: bool,
    /// Loaded registrations by NIXL device ID: (addr, len, registration id).
    ranges: HashMap<u64, Vec<(u64, u64, u64)>>,
    count: usize,
}

impl Loaded {
    fn covers(&self, descs: &[Desc]) -> bool {
        self.connected
            && descs.iter().filter(|d| d.len > 0).all(|d| {
                self.ranges
                    .get(&d.dev)
                    .is_some_and(|v| v.contains(&(d.addr, d.len, d.reg_id)))
            })
    }

    /// Whether loading `descs` could leave a stale descriptor NIXL might pick:
    /// one overlapping a new one on the same device ID (NIXL only matches
    /// descriptors of equal device IDs, and host registrations have unique ones).
    fn conflicts(&self, descs: &[Desc]) -> bool {
        if self.count + descs.len() > MAX_LOADED_PER_PEER {
            return true;
        }
        descs.iter().filter(|d| d.len > 0).any(|d| {
            self.ranges.get(&d.dev).is_some_and(|v| {
                v.iter().any(|&(addr, len, id)| {
                    let overlaps =
                        addr < d.addr.saturating_add(d.len) && d.addr < addr.saturating_add(len);
                    overlaps && (id, addr, len) != (d.reg_id, d.addr, d.len)
                })
            })
        })
    }

    fn insert(&mut self, d: &Desc) {
        let v = self.ranges.entry(d.dev).or_default();
        if !v.contains(&(d.addr, d.len, d.reg_id)) {
            v.push((d.addr, d.len, d.reg_id));
            self.count += 1;
        }
    }
}

struct Peer {
    state: RwLock<Loaded>,
    last_used: AtomicU64,
}

/// Loaded producer agents of this process.
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<String, Arc<Peer>>>,
    clock: AtomicU64,
}

/// A producer whose registrations for one fetch are loaded; transfers from it
/// may run while this is held.
pub struct Ready<'a> {
    _guard: RwLockReadGuard<'a, Loaded>,
}

impl Peers {
    /// Makes sure `record`'s producer and registrations are loaded, then runs `f`
    /// while holding the peer's read lock.
    pub fn with_loaded<T>(
        &self,
        rt: &Runtime,
        record: &Record,
        f: impl FnOnce(&Ready<'_>) -> T,
    ) -> Result<T> {
        let peer = self.peer(rt, &record.agent);
        let guard = {
            let read = peer.state.read();
            if read.covers(&record.descs) {
                read
            } else {
                drop(read);
                let mut write = peer.state.write();
                Self::load(rt, record, &mut write)?;
                RwLockWriteGuard::downgrade(write)
            }
        };
        let ready = Ready { _guard: guard };
        Ok(f(&ready))
    }

    /// (producer agents known, registrations loaded over all of them).
    pub fn stats(&self) -> (usize, usize) {
        let map = self.map.lock();
        let ranges = map.values().map(|p| p.state.read().count).sum();
        (map.len(), ranges)
    }

    /// Forgets `agent` after a failed transfer, so the next fetch reconnects.
    pub fn forget(&self, rt: &Runtime, agent: &str) {
        // The entry stays: whoever loads this peer next serialises on its lock.
        let Some(peer) = self.map.lock().get(agent).cloned() else {
            return;
        };
        let mut state = peer.state.write();
        if state.connected {
            rt.invalidate_remote(agent);
        }
        *state = Loaded::default();
    }

    fn peer(&self, rt: &Runtime, agent: &str) -> Arc<Peer> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map.lock();
        if let Some(p) = map.get(agent) {
            p.last_used.store(now, Ordering::Relaxed);
            return p.clone();
        }
        if map.len() >= MAX_PEERS {
            // Evict the least recently used peer nobody is using right now.
            let mut idle: Vec<(u64, String)> = map
                .iter()
                .filter(|(_, p)| Arc::strong_count(p) == 1)
                .map(|(name, p)| (p.last_used.load(Ordering::Relaxed), name.clone()))
                .collect();
            idle.sort();
            if let Some((_, name)) = idle.first() {
                if let Some(p) = map.remove(name) {
                    if p.state.read().connected {
                        rt.invalidate_remote(name);
                    }
                }
            }
        }
        let p = Arc::new(Peer {
            state: RwLock::new(Loaded::default()),
            last_used: AtomicU64::new(now),
        });
        map.insert(agent.to_owned(), p.clone());
        p
    }

    fn load(rt: &Runtime, record: &Record, state: &mut Loaded) -> Result<()> {
        if state.covers(&record.descs) {
            return Ok(());
        }
        if state.connected && state.conflicts(&record.descs) {
            rt.invalidate_remote(&record.agent);
            *state = Loaded::default();
        }
        for attempt in 0..2 {
            if !state.connected {
                Self::load_md(rt, &record.agent, &record.conn_md, "connection info")?;
                state.connected = true;
            }
            if record.sections_md.is_empty() {
                return Ok(());
            }
            match Self::load_md(
                rt,
                &record.agent,
                &record.sections_md,
                "registration metadata",
            ) {
                Ok(()) => {
                    record
                        .descs
                        .iter()
                        .filter(|d| d.len > 0)
                        .for_each(|d| state.insert(d));
                    return Ok(());
                }
                // NIXL drops the whole peer when a section fails to load: start over once.
                Err(e) if attempt == 0 => {
                    log::debug!("ray-rdt: reloading NIXL peer {} after: {e}", record.agent);
                    rt.invalidate_remote(&record.agent);
                    *state = Loaded::default();
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn load_md(rt: &Runtime, agent: &str, md: &[u8], what: &str) -> Result<()> {
        let name = rt.load_remote_md(md).map_err(|e| {
            Error::transport(format!(
                "NIXL could not load the {what} of producer agent {agent}: {e}"
            ))
        })?;
        if name != agent {
            return Err(Error::malformed(format!(
                "the record names NIXL agent {agent} but its metadata belongs to {name}"
            )));
        }
        Ok(())
    }
}
