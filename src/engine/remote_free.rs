//! Frees sent by an object's owner to its producer over the producer's endpoint
//! (no Ray task per free): [`RemoteFrees::enqueue`] returns at once; one thread
//! per context sends what is queued in batches, one request per producer, so
//! that many objects going out of scope together cost one round trip.
//!
//! Exactly once: Ray's owner frees each object once, and the producer's free is
//! idempotent. A producer that is gone has nothing left to free: its batch is
//! dropped (as Ray drops a `__ray_free__` task to a dead actor).

use crate::endpoint::{wire, ClientPool};
use crate::error::{Error, ErrorKind, Result};
use crate::object_id::{ObjectId, OBJECT_ID_LEN};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Most object IDs in one free request (28 bytes each, well inside a frame).
pub(crate) const MAX_BATCH: usize = 4096;
/// How long the sender waits for more frees to join a batch. A round trip
/// wakes a thread on each side; with transfers every few milliseconds (one at
/// a time or pipelined, `docs/performance.md`) 10 ms gathers several frees
/// per request, while memory comes back well within any Ray free's latency.
const GATHER: Duration = Duration::from_millis(10);
/// Bound on one free request's exchange.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Queue {
    /// Object IDs to free, by producer endpoint address.
    pending: HashMap<String, Vec<ObjectId>>,
    /// Requests being sent now.
    in_flight: usize,
    stopping: bool,
}

/// The owner side's queue of frees and the thread that sends them.
pub(crate) struct RemoteFrees {
    state: Arc<(Mutex<Queue>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RemoteFrees {
    /// Starts the sending thread, which uses `pool`'s connections.
    pub(crate) fn start(pool: Arc<ClientPool>) -> Result<RemoteFrees> {
        let state = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("rdt-free".into())
            .spawn(move || send_loop(&shared, &pool))
            .map_err(|e| Error::io("starting the free thread", e))?;
        Ok(RemoteFrees {
            state,
            thread: Some(thread),
        })
    }

    /// Queues a free of `id` at the producer whose endpoint is `address`.
    pub(crate) fn enqueue(&self, address: &str, id: ObjectId) {
        let (lock, cv) = &*self.state;
        lock.lock()
            .pending
            .entry(address.to_owned())
            .or_default()
            .push(id);
        cv.notify_one();
    }

    /// Waits up to `timeout` until every queued free was sent; returns whether
    /// the queue drained.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.state;
        let deadline = std::time::Instant::now() + timeout.min(Duration::from_secs(3600));
        let mut q = lock.lock();
        while !(q.pending.is_empty() && q.in_flight == 0) {
            if cv.wait_until(&mut q, deadline).timed_out() {
                return q.pending.is_empty() && q.in_flight == 0;
            }
        }
        true
    }
}

impl Drop for RemoteFrees {
    /// Sends what is still queued (bounded), then stops the thread.
    fn drop(&mut self) {
        self.flush(Duration::from_secs(2));
        let (lock, cv) = &*self.state;
        lock.lock().stopping = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send_loop(state: &(Mutex<Queue>, Condvar), pool: &ClientPool) {
    let (lock, cv) = state;
    loop {
        let batch = {
            let mut q = lock.lock();
            while q.pending.is_empty() && !q.stopping {
                cv.wait(&mut q);
            }
            if q.stopping {
                return;
            }
            // Let frees that go out of scope together join this batch.
            drop(q);
            std::thread::sleep(GATHER);
            let mut q = lock.lock();
            let batch: Vec<(String, Vec<ObjectId>)> = q.pending.drain().collect();
            q.in_flight += batch.len();
            batch
        };
        for (address, ids) in batch {
            for chunk in ids.chunks(MAX_BATCH) {
                if let Err(e) = send(pool, &address, chunk) {
                    if e.kind() != ErrorKind::PeerGone {
                        log::warn!(
                            "ray-rdt: freeing {} objects at {address} failed: {e}",
                            chunk.len()
                        );
                    }
                }
            }
            lock.lock().in_flight -= 1;
            cv.notify_all();
        }
    }
}

/// Encodes a free request: the free operation, a count, the object IDs.
pub(crate) fn free_request(ids: &[ObjectId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + ids.len() * OBJECT_ID_LEN);
    out.push(wire::OP_FREE);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    ids.iter()
        .for_each(|id| out.extend_from_slice(id.as_bytes()));
    out
}

/// Decodes the body of a free request (after its operation byte).
pub(crate) fn parse_free_request(body: &[u8]) -> Result<Vec<ObjectId>> {
    let (count, ids) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| Error::transport("free request is truncated"))?;
    let count = u32::from_le_bytes(*count) as usize;
    if count > MAX_BATCH || ids.len() != count * OBJECT_ID_LEN {
        return Err(Error::transport(format!(
            "free request claims {count} objects in {} bytes",
            ids.len()
        )));
    }
    ids.chunks(OBJECT_ID_LEN)
        .map(ObjectId::from_slice)
        .collect()
}

fn send(pool: &ClientPool, address: &str, ids: &[ObjectId]) -> Result<()> {
    pool.with_connection(address, TIMEOUT, |channel| {
        channel.send(&free_request(ids), TIMEOUT)?;
        wire::parse_reply(&channel.recv(TIMEOUT)?.payload).map(|_| ())
    })
}
