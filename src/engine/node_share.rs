//! Node-local sharing: when several consumers of one node fetch the same
//! object from a producer on another host, one read crosses the network and
//! the others take the bytes from that consumer's copy in shared memory.
//!
//! Only for objects that would take the network path (producer on another
//! host, host memory, not inline); the declared transport's consumer check
//! runs for every consumer. Per object, the consumers of a node meet at an
//! abstract Unix socket named after the object and its producer
//! ([`share_name`]): abstract sockets belong to the network namespace (the
//! node) and vanish with their process, so nothing is left on disk and a dead
//! holder is noticed at once.
//!
//! - **Leader**: the consumer that binds the socket. It reads the object from
//!   the producer over the declared transport into a buffer of its own, the
//!   **node copy** (the record's extents, packed: [`ObjectLayout::received`]),
//!   and gives its caller a copy of that (new tensors, or its targets filled):
//!   the node copy never aliases a consumer's tensors. The socket is an
//!   endpoint of its own ([`Endpoint::on_unix`], peers admitted as at the
//!   process's endpoint) that serves the node copy over the same-host path's
//!   transport (shm: a segment, or `process_vm_readv` straight into targets),
//!   as a producer serves its object. A request that arrives while the read is
//!   under way waits for it (hold point `share_wait`); a failed read answers
//!   with its error and the node copy is dropped at once.
//! - **Follower**: a consumer that finds the socket bound connects to it and
//!   fetches over the same-host path (counted under [`Path::NodeCopy`]). If
//!   nothing listens any more (the holder just dropped its copy or died), it
//!   claims the socket again, a bounded number of times; if the fetch fails
//!   (the leader died mid-read, its read failed, the wait ran past the
//!   timeout) it reads from the producer itself within what is left of its
//!   timeout. A dead producer is therefore still a dead producer to every
//!   consumer.
//!
//! A node copy lingers for [`Settings::linger`] after its last use (each
//! follower's fetch starts the time again), then its socket is closed; a
//! consumer that comes later becomes a new leader (one more network read).
//! The node copies of a process hold at most [`Settings::max_bytes`]; over
//! that a consumer reads directly, unshared. Consumers that share one read
//! get what the producer held at that read.

use super::receive::Receiver;
use super::Shared;
use crate::endpoint::channel::Deadline;
use crate::endpoint::{unix, wire, Channel, ClientPool, ClusterToken, Endpoint, Handler, Limits};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{packed_extents, ObjectLayout};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::stats::{self, Path};
use crate::store::{CopyKind, StoredObject};
use crate::tensor::{is_host, Tensor};
use crate::transport::{parse_fetch_request, Peer, Transport};
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Environment variable: `0` turns node-local sharing off (every consumer
/// reads from the producer), for measurements.
pub const ENABLED_ENV: &str = "RAY_RDT_NODE_SHARING";
/// Environment variable: how long a node copy is kept after its last use, in
/// milliseconds.
pub const LINGER_ENV: &str = "RAY_RDT_NODE_SHARE_LINGER_MS";
/// Environment variable: the most bytes a process holds in node copies.
pub const BYTES_ENV: &str = "RAY_RDT_NODE_SHARE_BYTES";

/// Default linger: the generators of one node ask for one step's weights
/// within milliseconds of each other (followers that come while the leader
/// reads wait for it, whatever the linger), and a copy kept longer holds a
/// model's memory into the next step, whose reads then need fresh memory: at
/// 5 s one generator's cross-node gloo step took 1,040 ms, at 200 ms 157 ms
/// (docs/weights-bench.md). At 200 ms a step of about that length still found
/// the previous copy alive, so its read needed a fresh 256 MiB buffer every
/// other step (four generators on two nodes: 250-1,450 ms a step); at 50 ms
/// the released buffer is reused (212-312 ms; docs/fanout-bench.md).
const DEFAULT_LINGER: Duration = Duration::from_millis(50);
/// Default bound on the bytes of a process's node copies.
const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// Times a consumer claims an object's socket when its holder has just gone.
const CLAIMS: u32 = 4;

/// Node-local sharing's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Whether consumers of one node share one network read
    /// (`RAY_RDT_NODE_SHARING`, default on).
    pub enabled: bool,
    /// How long a node copy is kept after its last use
    /// (`RAY_RDT_NODE_SHARE_LINGER_MS`, default 50 ms).
    pub linger: Duration,
    /// The most bytes this process holds in node copies
    /// (`RAY_RDT_NODE_SHARE_BYTES`, default 4 GiB); over it a consumer reads
    /// unshared.
    pub max_bytes: u64,
}

impl Settings {
    /// The settings in the environment, else the defaults.
    pub fn from_env() -> Settings {
        use crate::settings::{flag_or, millis_or, u64_or};
        Settings {
            enabled: flag_or(ENABLED_ENV, true),
            linger: millis_or(LINGER_ENV, DEFAULT_LINGER),
            max_bytes: u64_or(BYTES_ENV, DEFAULT_MAX_BYTES),
        }
    }
}

/// The name of the abstract socket where the consumers of one node meet for
/// `meta`'s object: the object ID and a hash of its producer's endpoint and
/// extents (two producers of one ID, in tests, never meet).
fn share_name(meta: &Metadata) -> String {
    let mut hash = Sha256::new();
    hash.update(meta.producer.endpoint.as_bytes());
    hash.update([meta.transport.code()]);
    meta.extents
        .iter()
        .for_each(|e| hash.update(e.to_le_bytes()));
    let digest = hash.finalize();
    let tag = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    format!("ray-rdt-share-{}-{tag:016x}", meta.object)
}

/// What a node copy holds now.
enum CopyState {
    /// The leader is reading it from the producer, until the deadline at most.
    Reading(Deadline),
    /// The object, in the record's extents.
    Ready(Arc<StoredObject>),
    /// The leader's read failed.
    Failed(Error),
    /// No follower asked for it during the leader's read: the leader's caller
    /// took the object itself, and the copy is gone.
    Retired,
}

/// One object read from its producer by this process and shared with the
/// consumers of its node.
struct NodeCopy {
    id: ObjectId,
    state: Mutex<CopyState>,
    ready: Condvar,
    /// Followers' requests being served now (the copy is not dropped under them).
    serving: AtomicUsize,
    /// Whether a follower has asked for the copy (set under `state`'s lock,
    /// so that [`NodeCopy::retire`] and a follower never both win).
    asked: AtomicBool,
    /// When the copy was last used (read, or served).
    last_use: Mutex<Instant>,
}

impl NodeCopy {
    /// Ends the leader's read; wakes every follower waiting for it.
    fn finish(&self, outcome: Result<Arc<StoredObject>>) {
        *self.state.lock() = match outcome {
            Ok(object) => CopyState::Ready(object),
            Err(e) => CopyState::Failed(e),
        };
        self.touch();
        self.ready.notify_all();
    }

    /// A follower asks for the copy: refused once it is retired.
    fn ask(&self) -> Result<()> {
        let state = self.state.lock();
        if matches!(*state, CopyState::Retired) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the node copy of object {} was taken by its reader (no follower had asked)",
                    self.id
                ),
            ));
        }
        self.asked.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Retires the copy, read or being read, when no follower has asked for
    /// it (the leader's caller then takes the object itself and nothing is
    /// kept); whether it did.
    fn retire(&self) -> bool {
        let mut state = self.state.lock();
        let unread_or_ready = matches!(*state, CopyState::Reading(_) | CopyState::Ready(_));
        if self.asked.load(Ordering::SeqCst) || !unread_or_ready {
            return false;
        }
        *state = CopyState::Retired;
        true
    }

    /// Counts the copy as used now (its linger starts again).
    fn touch(&self) {
        *self.last_use.lock() = Instant::now();
    }

    /// The object once the leader has read it (or its error), waiting for the
    /// read at most until the leader's deadline.
    fn wait_ready(&self) -> Result<Arc<StoredObject>> {
        if matches!(*self.state.lock(), CopyState::Reading(_)) {
            crate::hold::point("share_wait");
        }
        let mut state = self.state.lock();
        loop {
            match &*state {
                CopyState::Ready(object) => return Ok(object.clone()),
                CopyState::Failed(e) => {
                    return Err(Error::new(
                        e.kind(),
                        format!("the node copy's read from the producer failed: {e}"),
                    ))
                }
                CopyState::Retired => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("the node copy of object {} is gone", self.id),
                    ))
                }
                CopyState::Reading(deadline) => {
                    let left = deadline.left();
                    let timed_out =
                        left.is_zero() || self.ready.wait_for(&mut state, left).timed_out();
                    if timed_out && matches!(*state, CopyState::Reading(_)) {
                        return Err(Error::timeout(format!(
                            "the node copy of object {} was not read in time",
                            self.id
                        )));
                    }
                }
            }
        }
    }

    /// When the copy may be dropped: `linger` after its last use, once it is
    /// read and no follower is being served (`now + linger` while one is: look
    /// again then); `None` while it is being read.
    fn expiry(&self, linger: Duration, now: Instant) -> Option<Instant> {
        if matches!(*self.state.lock(), CopyState::Reading(_)) {
            return None;
        }
        if self.serving.load(Ordering::SeqCst) > 0 {
            return Some(now + linger);
        }
        Some(*self.last_use.lock() + linger)
    }
}

/// A follower's request being served: counted while it lasts, then the copy
/// counts as used.
struct Serving<'a>(&'a NodeCopy);

impl<'a> Serving<'a> {
    fn start(copy: &'a NodeCopy) -> Serving<'a> {
        copy.serving.fetch_add(1, Ordering::SeqCst);
        Serving(copy)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The endpoint of one node copy: serves fetches of its object over the
/// same-host path.
struct CopyServer {
    copy: Arc<NodeCopy>,
    /// The context (weak: the context holds this server's endpoint).
    shared: Weak<Shared>,
}

impl Handler for CopyServer {
    fn handle(&self, request: &[u8], channel: &mut Channel) -> Result<()> {
        let req = match wire::split_op(request)? {
            (wire::OP_FETCH, body) => parse_fetch_request(body)?,
            (op, _) => {
                return Err(Error::transport(format!(
                    "a node copy serves fetches only, not operation {op}"
                )))
            }
        };
        if req.id != self.copy.id {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "this node copy holds object {}, not {}",
                    self.copy.id, req.id
                ),
            ));
        }
        let shared = self.shared.upgrade().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "the process holding this node copy is shutting down",
            )
        })?;
        let transport = shared.transports.get(req.serving)?;
        if !transport.is_same_host_path() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a node copy is served over the same-host path, not {}",
                    req.serving.name()
                ),
            ));
        }
        stats::record_fetch_served();
        let _serving = stats::SERVING.enter();
        self.copy.ask()?;
        let _use = Serving::start(&self.copy);
        let object = self.copy.wait_ready()?;
        shared.serve_object(&req, transport, Path::NodeCopy, &object, channel)
    }
}

/// A node copy this process holds, and its endpoint.
struct Entry {
    copy: Arc<NodeCopy>,
    bytes: u64,
    /// Closed (the socket with it) when the entry is dropped.
    _endpoint: Endpoint,
}

/// The node copies of one context, and the bytes they hold (reserved from a
/// claim on).
#[derive(Default)]
struct Held {
    entries: HashMap<String, Entry>,
    bytes: u64,
    stopping: bool,
}

/// What a consumer's claim of an object's socket came to.
enum Claim {
    /// It holds the socket: it reads the node copy.
    Leader(Arc<NodeCopy>),
    /// Another consumer of this node holds it.
    Follower,
    /// Its node copies are at the byte bound: it takes the object from a
    /// node copy if another consumer holds one, else reads it unshared.
    FollowerOnly,
    /// No sharing for this fetch (the socket cannot be served): read
    /// directly.
    Unshared,
}

/// Why a follower did not get the object from the node copy.
enum NotFollowed {
    /// Nothing listens at the socket any more: claim it again.
    NoLeader,
    /// The node copy failed this follower: read directly.
    Failed(Error),
}

/// Node-local sharing of one context: its node copies, the thread that drops
/// them after their linger, and its settings.
pub(super) struct NodeShare {
    settings: Settings,
    limits: Limits,
    held: Arc<(Mutex<Held>, Condvar)>,
    reaper: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NodeShare {
    /// Sharing with `settings`; node copies are served within `limits`.
    pub(super) fn new(settings: Settings, limits: Limits) -> NodeShare {
        NodeShare {
            settings,
            limits,
            held: Default::default(),
            reaper: Mutex::new(None),
        }
    }

    /// Whether `meta`'s object is shared on this node: sharing is on and the
    /// object would take the network path (producer on another host, host
    /// memory, bytes to move).
    pub(super) fn applies(
        &self,
        meta: &Metadata,
        peer: &Peer<'_>,
        declared: &dyn Transport,
    ) -> bool {
        self.settings.enabled
            && !peer.same_host
            && is_host(meta.device)
            && !declared.is_same_host_path()
            && meta.extent_bytes() > 0
    }

    /// Fetches `meta`'s object into `receiver` through the node's shared copy
    /// (see the module docs), within `timeout`; returns the path the bytes
    /// took with the outcome.
    pub(super) fn fetch<R: Receiver>(
        &self,
        shared: &Arc<Shared>,
        meta: &Metadata,
        declared: &dyn Transport,
        peer: &Peer<'_>,
        receiver: &R,
        timeout: Duration,
    ) -> (Path, Result<R::Output>) {
        let deadline = Deadline::after(timeout);
        if let Err(e) = declared.check_consumer(meta) {
            return (Path::Network, Err(e));
        }
        let name = share_name(meta);
        let same_host = shared.transports.same_host_path();
        let mut backoff = Duration::from_millis(1);
        for _ in 0..CLAIMS {
            let claim = self.claim(shared, &name, meta, deadline);
            let followed = match (&claim, same_host) {
                (Claim::Leader(copy), _) if receiver.lands_in_caller_memory() => {
                    let out =
                        self.lead_in_place(&name, copy, meta, receiver, declared, peer, deadline);
                    return (Path::Network, out);
                }
                (Claim::Leader(copy), _) => {
                    let read = self.lead(shared, &name, copy, meta, declared, peer, deadline);
                    let out = read.and_then(|object| {
                        // No follower asked while it was read: the caller
                        // takes the read itself (new tensors need no second
                        // copy) and nothing is kept; a consumer that comes
                        // later reads again.
                        if copy.retire() {
                            self.drop_copy(&name);
                            return match Arc::try_unwrap(object) {
                                Ok(object) => receiver.take(object),
                                Err(object) => receiver.copy_of(&object),
                            };
                        }
                        receiver.copy_of(&object)
                    });
                    return (Path::Network, out);
                }
                (Claim::Follower | Claim::FollowerOnly, Some(same_host)) => {
                    self.follow(&name, same_host, receiver, deadline)
                }
                (Claim::Follower | Claim::FollowerOnly, None) | (Claim::Unshared, _) => break,
            };
            match followed {
                Ok(out) => return (Path::NodeCopy, Ok(out)),
                Err(NotFollowed::NoLeader) if matches!(claim, Claim::FollowerOnly) => break,
                Err(NotFollowed::NoLeader) => {
                    std::thread::sleep(backoff.min(deadline.left()));
                    backoff *= 2;
                }
                Err(NotFollowed::Failed(e)) => {
                    stats::record_error(meta.transport, Path::NodeCopy);
                    log::debug!("ray-rdt: the node copy of {} failed this consumer ({e}); reading it from the producer", meta.object);
                    break;
                }
            }
        }
        (
            Path::Network,
            receiver.receive(declared, peer, deadline.left()),
        )
    }

    /// Claims the socket of `meta`'s object: binds it (within the byte bound)
    /// and serves the node copy there, or finds another consumer holding it.
    fn claim(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        meta: &Metadata,
        deadline: Deadline,
    ) -> Claim {
        let (_, bytes) = packed_extents(&meta.extents);
        {
            let mut held = self.held.0.lock();
            if held.bytes.saturating_add(bytes) > self.settings.max_bytes {
                log::debug!("ray-rdt: node copies hold {} bytes, {bytes} more would pass {BYTES_ENV}={}: {} is not read for sharing", held.bytes, self.settings.max_bytes, meta.object);
                return Claim::FollowerOnly;
            }
            held.bytes += bytes;
        }
        let served = unix::claim(name).and_then(|bound| {
            let Some((listener, address)) = bound else {
                return Ok(None);
            };
            let copy = Arc::new(NodeCopy {
                id: meta.object,
                state: Mutex::new(CopyState::Reading(deadline)),
                ready: Condvar::new(),
                serving: AtomicUsize::new(0),
                asked: AtomicBool::new(false),
                last_use: Mutex::new(Instant::now()),
            });
            let server = Arc::new(CopyServer {
                copy: copy.clone(),
                shared: Arc::downgrade(shared),
            });
            let endpoint = Endpoint::on_unix(listener, address, server, self.limits)?;
            Ok(Some(Entry {
                copy,
                bytes,
                _endpoint: endpoint,
            }))
        });
        let mut held = self.held.0.lock();
        match served {
            Ok(Some(entry)) => {
                let copy = entry.copy.clone();
                held.entries.insert(name.to_owned(), entry);
                drop(held);
                self.start_reaper();
                Claim::Leader(copy)
            }
            Ok(None) => {
                held.bytes -= bytes;
                Claim::Follower
            }
            Err(e) => {
                held.bytes -= bytes;
                log::warn!(
                    "ray-rdt: cannot share object {} on this node ({e}): reading it unshared",
                    meta.object
                );
                Claim::Unshared
            }
        }
    }

    /// The leader's read: the object from the producer over the declared
    /// transport, kept as the node copy (dropped at once if the read failed).
    #[allow(clippy::too_many_arguments)]
    fn lead(
        &self,
        shared: &Shared,
        name: &str,
        copy: &NodeCopy,
        meta: &Metadata,
        declared: &dyn Transport,
        peer: &Peer<'_>,
        deadline: Deadline,
    ) -> Result<Arc<StoredObject>> {
        let read = declared
            .fetch(&shared.local(), peer, &meta.object, meta, deadline.left())
            .and_then(|tensors| node_copy(meta, tensors));
        self.publish(name, copy, read.clone());
        read
    }

    /// Ends the leader's read with `outcome`, the node copy or why there is
    /// none (then dropped at once), and wakes every follower waiting for it.
    fn publish(&self, name: &str, copy: &NodeCopy, outcome: Result<Arc<StoredObject>>) {
        let failed = outcome.is_err();
        copy.finish(outcome);
        if failed {
            self.drop_copy(name);
        }
        self.held.1.notify_all();
    }

    /// The leader's read when the bytes land in its caller's own memory (its
    /// targets): straight into them, from the producer over the declared
    /// transport. The node copy is made out of them, before the caller has
    /// them back, only when a follower asked during the read; a lone consumer
    /// copies nothing more.
    #[allow(clippy::too_many_arguments)]
    fn lead_in_place<R: Receiver>(
        &self,
        name: &str,
        copy: &NodeCopy,
        meta: &Metadata,
        receiver: &R,
        declared: &dyn Transport,
        peer: &Peer<'_>,
        deadline: Deadline,
    ) -> Result<R::Output> {
        let out = receiver.receive(declared, peer, deadline.left());
        if out.is_ok() && copy.retire() {
            self.drop_copy(name);
            return out;
        }
        let outcome = match &out {
            Ok(_) => receiver.copy_back().and_then(|t| node_copy(meta, t)),
            Err(e) => Err(e.clone()),
        };
        self.publish(name, copy, outcome);
        out
    }

    /// A follower's fetch from the node copy's holder over the same-host path,
    /// on a connection of its own (closed when done).
    fn follow<R: Receiver>(
        &self,
        name: &str,
        same_host: &dyn Transport,
        receiver: &R,
        deadline: Deadline,
    ) -> Result<R::Output, NotFollowed> {
        let address = format!("{}{name}", unix::PREFIX);
        let pool = ClientPool::new(ClusterToken::default(), self.limits);
        let channel = pool
            .connect(&address, deadline.left())
            .map_err(|e| match e.kind() {
                ErrorKind::PeerGone => NotFollowed::NoLeader,
                _ => NotFollowed::Failed(e),
            })?;
        let pid = channel.peer_pid().unwrap_or(0);
        pool.keep(&address, channel);
        let holder = Peer {
            pool: &pool,
            address: Some(&address),
            same_host: true,
            pid,
        };
        receiver
            .receive(same_host, &holder, deadline.left())
            .map_err(|e| {
                NotFollowed::Failed(Error::new(
                    e.kind(),
                    format!("from the node copy held by process {pid}: {e}"),
                ))
            })
    }

    /// Drops the node copy named `name` now (closing its socket).
    fn drop_copy(&self, name: &str) {
        let entry = self.held.0.lock().remove(name);
        drop(entry);
    }

    /// Starts the thread that drops node copies after their linger (once).
    fn start_reaper(&self) {
        let mut reaper = self.reaper.lock();
        if reaper.is_some() {
            return;
        }
        let (held, linger) = (self.held.clone(), self.settings.linger);
        match std::thread::Builder::new()
            .name("rdt-node-share".into())
            .spawn(move || reap(&held, linger))
        {
            Ok(thread) => *reaper = Some(thread),
            // Without the thread, copies are dropped with the context.
            Err(e) => log::warn!("ray-rdt: cannot start the node-copy thread: {e}"),
        }
    }
}

impl Held {
    fn remove(&mut self, name: &str) -> Option<Entry> {
        let entry = self.entries.remove(name)?;
        self.bytes -= entry.bytes;
        Some(entry)
    }
}

impl Drop for NodeShare {
    fn drop(&mut self) {
        let (lock, changed) = &*self.held;
        lock.lock().stopping = true;
        changed.notify_all();
        if let Some(thread) = self.reaper.get_mut().take() {
            let _ = thread.join();
        }
        let entries = std::mem::take(&mut lock.lock().entries);
        drop(entries);
    }
}

/// The node copy of `meta`'s object made of `tensors` (host memory of this
/// process holding the record's extents).
fn node_copy(meta: &Metadata, tensors: Vec<Tensor>) -> Result<Arc<StoredObject>> {
    let layout = ObjectLayout::received(&tensors, &meta.places, &meta.extents)?;
    Ok(Arc::new(StoredObject {
        tensors,
        kind: CopyKind::Secondary,
        layout,
    }))
}

/// The reaper: drops each node copy `linger` after its last use, until the
/// context stops.
fn reap(held: &(Mutex<Held>, Condvar), linger: Duration) {
    let (lock, changed) = held;
    let mut state = lock.lock();
    while !state.stopping {
        let now = Instant::now();
        let expiries: Vec<(String, Option<Instant>)> = state
            .entries
            .iter()
            .map(|(name, e)| (name.clone(), e.copy.expiry(linger, now)))
            .collect();
        let expired: Vec<Entry> = expiries
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| at <= now))
            .filter_map(|(name, _)| state.remove(name))
            .collect();
        let next = expiries
            .iter()
            .filter_map(|(_, at)| *at)
            .filter(|&at| at > now)
            .min();
        parking_lot::MutexGuard::unlocked(&mut state, || drop(expired));
        match next {
            Some(at) => {
                changed.wait_until(&mut state, at);
            }
            None => changed.wait(&mut state),
        }
    }
}
