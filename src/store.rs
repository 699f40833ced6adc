//! The per-process RDT object store.
//!
//! Keyed by Ray's ObjectID, it holds the tensors an actor method returned (the
//! primary copy) and tensors received from other processes (secondary copies), or
//! an error in their place. It is safe to use from the main thread, transfer
//! threads and Ray's free-callback thread at once: one mutex guards the map and one
//! condition variable wakes every waiter on any change.
//!
//! Reads never copy: [`ObjectStore::get`] returns a shared handle to the stored
//! tensors, so a ref passed back to its producer yields the very same memory.
//! Tensors are dropped (their DLPack deleters called, exactly once) when the last
//! handle goes, and always outside the store's lock.

use crate::copy::Piece;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::ObjectLayout;
use crate::object_id::ObjectId;
use crate::tensor::Tensor;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a stored object is the producer's own tensors or a received copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// The tensors the producing actor returned.
    Primary,
    /// A copy received from another process.
    Secondary,
}

/// The tensors of one RDT object, shared by the store and any readers.
#[derive(Debug)]
pub struct StoredObject {
    /// The tensors, in the order they were returned.
    pub tensors: Vec<Tensor>,
    /// Primary or secondary copy.
    pub kind: CopyKind,
    /// Where the tensors' bytes are: the extents transports move.
    pub layout: ObjectLayout,
}

impl StoredObject {
    /// The byte ranges of its extents that its tensors cover
    /// ([`crate::layout::covered`]).
    pub fn covered(&self) -> Vec<(u32, u64, u64)> {
        let sizes: Vec<u64> = self.tensors.iter().map(|t| t.meta().nbytes).collect();
        crate::layout::covered(&self.layout.places, &sizes)
    }

    /// Copy pieces that lay its covered bytes out in a buffer at `base`, as
    /// `packed_extents` places its extents ([`ObjectLayout::packed_pieces`]).
    pub fn packed_pieces(&self, base: usize) -> Vec<Piece> {
        self.layout.packed_pieces(base, &self.covered())
    }

    /// Total bytes of all tensors.
    pub fn nbytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.meta().nbytes).sum()
    }
}

/// A map entry: tensors, or the error that replaced them.
#[derive(Debug)]
enum Slot {
    Ready(Arc<StoredObject>),
    Failed(String),
}

/// A rejected put: the error and the tensors, handed back untouched.
#[derive(Debug)]
pub struct PutRejected {
    /// Why the put was refused.
    pub error: Error,
    /// The tensors the caller still owns.
    pub tensors: Vec<Tensor>,
}

/// Hashes a data address with one folded multiply: a put of a 100,000-tensor
/// model enters 100,000 addresses under the store's lock, where the default
/// SipHash took most of the time. Addresses are not chosen by an adversary.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.write_u64(u64::from(b)));
    }

    fn write_usize(&mut self, addr: usize) {
        self.write_u64(addr as u64);
    }

    fn write_u64(&mut self, v: u64) {
        // The high and low halves of the product folded together: every bit of
        // the address reaches the low bits (the bucket) and the high bits (the tag).
        let product = u128::from(self.0 ^ v) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectId, Slot>,
    /// Data address -> number of stored tensors at that address.
    held: HashMap<usize, usize, BuildHasherDefault<AddressHasher>>,
    bytes: u64,
}

impl State {
    fn remove(&mut self, id: &ObjectId) -> Option<Slot> {
        let slot = self.objects.remove(id)?;
        if let Slot::Ready(obj) = &slot {
            self.bytes -= obj.nbytes();
            for t in obj.tensors.iter().filter(|t| t.meta().nbytes > 0) {
                if let Some(n) = self.held.get_mut(&t.data_ptr()) {
                    *n -= 1;
                    if *n == 0 {
                        self.held.remove(&t.data_ptr());
                    }
                }
            }
        }
        Some(slot)
    }
}

/// Thread-safe store of RDT objects for one process.
#[derive(Default)]
pub struct ObjectStore {
    state: Mutex<State>,
    changed: Condvar,
    /// Threads blocked in a wait now.
    waiting: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("ObjectStore")
            .field("objects", &s.objects.len())
            .field("bytes", &s.bytes)
            .finish()
    }
}

impl ObjectStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `tensors` under `id`, grouped into extents
    /// ([`ObjectLayout::of`]). Fails (handing the tensors back) when the ID is
    /// already present or the tensors cannot be laid out.
    pub fn put(
        &self,
        id: ObjectId,
        tensors: Vec<Tensor>,
        kind: CopyKind,
    ) -> Result<(), PutRejected> {
        let layout = match ObjectLayout::of(&tensors) {
            Ok(layout) => layout,
            Err(error) => return Err(PutRejected { error, tensors }),
        };
        let mut s = self.state.lock();
        if s.objects.contains_key(&id) {
            return Err(PutRejected {
                error: Error::new(
                    ErrorKind::AlreadyExists,
                    format!("object {id} is already stored"),
                ),
                tensors,
            });
        }
        let obj = StoredObject {
            tensors,
            kind,
            layout,
        };
        s.bytes += obj.nbytes();
        s.held.reserve(obj.tensors.len());
        for t in obj.tensors.iter().filter(|t| t.meta().nbytes > 0) {
            *s.held.entry(t.data_ptr()).or_insert(0) += 1;
        }
        s.objects.insert(id, Slot::Ready(Arc::new(obj)));
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// Stores an error in place of `id`'s tensors so that every waiter gets it.
    /// Replaces tensors already stored under `id`.
    pub fn put_error(&self, id: ObjectId, message: impl Into<String>) {
        let mut s = self.state.lock();
        let old = s.remove(&id);
        s.objects.insert(id, Slot::Failed(message.into()));
        drop(s);
        self.changed.notify_all();
        drop(old);
    }

    /// Waits up to `timeout` for `id` and returns its tensors without copying.
    pub fn get(&self, id: &ObjectId, timeout: Duration) -> Result<Arc<StoredObject>> {
        self.take(id, timeout, false, |_| Ok(()))
    }

    /// Waits up to `timeout` for `id`, removes it and returns its tensors.
    pub fn pop(&self, id: &ObjectId, timeout: Duration) -> Result<Arc<StoredObject>> {
        self.take(id, timeout, true, |_| Ok(()))
    }

    /// As [`ObjectStore::pop`], but removes the object only if `accept` approves
    /// it; checked and removed under one lock, so concurrent pops of one ID
    /// cannot both succeed.
    pub fn pop_if(
        &self,
        id: &ObjectId,
        timeout: Duration,
        accept: impl FnOnce(&StoredObject) -> Result<()>,
    ) -> Result<Arc<StoredObject>> {
        self.take(id, timeout, true, accept)
    }

    /// Waits up to `timeout` until `id` is present (tensors or error).
    pub fn wait(&self, id: &ObjectId, timeout: Duration) -> Result<()> {
        let mut s = self.state.lock();
        self.wait_while(&mut s, timeout, |s| !s.objects.contains_key(id))
            .map_err(|_| Error::timeout(format!("object {id} did not arrive within {timeout:?}")))
    }

    /// Removes `id` (Ray's reference counting says it is out of scope). Returns
    /// whether it was present. Deleters run once the last reader lets go.
    pub fn free(&self, id: &ObjectId) -> bool {
        let mut s = self.state.lock();
        let old = s.remove(id);
        drop(s);
        self.changed.notify_all();
        old.is_some()
    }

    /// Frees every object (the process's plugin is shutting down).
    pub fn clear(&self) {
        let mut s = self.state.lock();
        let old = std::mem::take(&mut *s);
        drop(s);
        self.changed.notify_all();
        drop(old);
    }

    /// Waits up to `timeout` until no stored object holds memory at `data_ptr`.
    pub fn wait_tensor_freed(&self, data_ptr: usize, timeout: Duration) -> Result<()> {
        let mut s = self.state.lock();
        self.wait_while(&mut s, timeout, |s| s.held.contains_key(&data_ptr))
            .map_err(|_| {
                Error::timeout(format!(
                    "tensor at {data_ptr:#x} is still held by an RDT object after {timeout:?}"
                ))
            })
    }

    /// Whether `id` is present (tensors or error).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.state.lock().objects.contains_key(id)
    }

    /// Number of objects held (including failed ones).
    pub fn num_objects(&self) -> usize {
        self.state.lock().objects.len()
    }

    /// Bytes of tensor data held.
    pub fn num_bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Threads blocked in a wait on this store now (counted while they wait
    /// on its condition variable).
    pub fn waiters(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn take(
        &self,
        id: &ObjectId,
        timeout: Duration,
        remove: bool,
        accept: impl FnOnce(&StoredObject) -> Result<()>,
    ) -> Result<Arc<StoredObject>> {
        let mut s = self.state.lock();
        self.wait_while(&mut s, timeout, |s| !s.objects.contains_key(id))
            .map_err(|_| {
                Error::timeout(format!("object {id} did not arrive within {timeout:?}"))
            })?;
        let result = match s.objects.get(id) {
            Some(Slot::Ready(obj)) => accept(obj).map(|_| obj.clone()),
            Some(Slot::Failed(msg)) => Err(Error::new(ErrorKind::ObjectFailed, msg.clone())),
            None => unreachable!("waited for presence under the lock"),
        };
        if remove && result.is_ok() {
            let old = s.remove(id);
            drop(s);
            self.changed.notify_all();
            drop(old);
        }
        result
    }

    /// Waits on the condition variable while `pending` holds, up to `timeout`.
    fn wait_while(
        &self,
        s: &mut parking_lot::MutexGuard<'_, State>,
        timeout: Duration,
        pending: impl Fn(&State) -> bool,
    ) -> Result<(), ()> {
        use std::sync::atomic::Ordering;
        let deadline = Instant::now().checked_add(timeout);
        while pending(s) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let timed_out = match deadline {
                Some(d) => self.changed.wait_until(s, d).timed_out(),
                None => {
                    self.changed.wait(s);
                    false
                }
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if timed_out && pending(s) {
                return Err(());
            }
        }
        Ok(())
    }
}
