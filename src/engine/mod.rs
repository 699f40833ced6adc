//! The per-process plugin context: the object store, this process's endpoint and
//! the transports, tied together for the two places Ray calls the data plane
//! (task return: [`Context::put`]; argument resolution: [`Context::fetch`]) and the
//! lifecycle around them.
//!
//! How a fetch travels ([`crate::stats::Path`]): a small object comes out of its
//! own record ([`inline`]); a producer on this host serves CPU tensors through
//! shared memory whatever transport was declared (the same-host path, as NCCL
//! and UCX pick theirs inside a node), after the declared transport's own
//! contract check; CPU tensors from another host are read over the declared
//! transport once per node and shared by the node's consumers
//! ([`node_share`]); anything else goes over the declared transport.

mod group_events;
mod group_watch;
mod inline;
mod node_share;
mod receive;
mod remote_free;
mod serve;
mod targets;

pub use node_share::Settings as NodeShareSettings;
pub use targets::Target;

use crate::dlpack::DLDevice;
use crate::endpoint::{Addresses, ClientPool, ClusterToken, Contact, Endpoint, Limits};
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::{Metadata, Producer};
use crate::object_id::ObjectId;
use crate::rendezvous::Rendezvous;
use crate::stats::{self, Path};
use crate::store::{CopyKind, ObjectStore, PutRejected, StoredObject};
use crate::tensor::{is_host, Tensor};
use crate::transport::group::GroupSpec;
use crate::transport::{CollectiveGroups, Local, Peer, Registry, Transport};
use crate::transport_kind::TransportKind;
use parking_lot::Mutex;
use receive::{IntoTargets, NewTensors, Receiver, Request};
use remote_free::RemoteFrees;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable: `0` turns the same-host path off (every transport
/// then moves its own bytes on one host too), for measurements.
pub const SAME_HOST_PATH_ENV: &str = "RAY_RDT_SAME_HOST_PATH";

/// What a context is created with.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    /// Ray's binary node ID of this process's node (may be empty).
    pub node_id: Vec<u8>,
    /// Ray's binary actor ID of this process (empty for a driver).
    pub actor_id: Vec<u8>,
    /// The node's IP as Ray knows it: the TCP endpoint (for peers on other
    /// hosts) binds it. `None`: no TCP endpoint; only same-host peers reach
    /// this process.
    pub node_ip: Option<IpAddr>,
    /// Ray's cluster token, which TCP peers must prove (none: Ray's token
    /// authentication is off).
    pub token: ClusterToken,
    /// Bounds on the endpoint's connections ([`Limits::from_env`] by default).
    pub limits: Limits,
    /// Whether CPU tensors from a producer on this host take the same-host
    /// path whatever transport was declared (`RAY_RDT_SAME_HOST_PATH`, default on).
    pub same_host_path: bool,
    /// Objects of at most this many bytes travel inside their record
    /// (`RAY_RDT_INLINE_BYTES`, default `inline::DEFAULT_THRESHOLD`; 0: never).
    pub inline_bytes: u64,
    /// Node-local sharing of objects from other hosts
    /// ([`NodeShareSettings::from_env`] by default).
    pub node_share: NodeShareSettings,
    /// This process's host identity, which decides whether a producer is on
    /// this host (`endpoint::host::identity` by default; tests give
    /// contexts of one host different identities to make a producer look
    /// remote).
    pub host_id: Vec<u8>,
}

impl ContextConfig {
    /// A context reachable only from this host (no TCP endpoint, no token).
    pub fn same_host(node_id: &[u8], actor_id: &[u8]) -> ContextConfig {
        ContextConfig {
            node_id: node_id.to_vec(),
            actor_id: actor_id.to_vec(),
            node_ip: None,
            token: ClusterToken::default(),
            limits: Limits::from_env(),
            same_host_path: crate::settings::flag_or(SAME_HOST_PATH_ENV, true),
            inline_bytes: inline::threshold(),
            node_share: NodeShareSettings::from_env(),
            host_id: crate::endpoint::host::identity(),
        }
    }
}

/// The tensors a fetch produced.
pub enum Fetched {
    /// The producer is this process: the stored object itself (no copy).
    Local(Arc<StoredObject>),
    /// Tensors received over a transport.
    Received(Vec<Tensor>),
}

/// State shared between the context and its endpoint's connection threads.
struct Shared {
    store: ObjectStore,
    /// The metadata record of each object in `store` (what its put returned).
    records: Mutex<HashMap<ObjectId, Vec<u8>>>,
    node_id: Vec<u8>,
    actor_id: Vec<u8>,
    host_id: Vec<u8>,
    node_ip: Option<IpAddr>,
    pool: Arc<ClientPool>,
    transports: Registry,
    same_host_path: bool,
    inline_bytes: u64,
    /// How long a reply may take to write.
    reply_timeout: Duration,
    /// Failed transfers reported by the members of groups this process owns.
    failures: group_events::FailureQueue,
    /// The endpoint's addresses, known once it is bound.
    addresses: OnceLock<Addresses>,
    /// Fetches being served now, each holding a stored object.
    serves: serve::Serves,
}

impl Shared {
    /// The object `id` as this process holds it now (no waiting: the producer
    /// stored it before any record naming it existed).
    fn held(&self, id: &ObjectId) -> Result<Arc<StoredObject>> {
        self.store
            .get(id, Duration::ZERO)
            .map_err(|e| match e.kind() {
                ErrorKind::Timeout => Error::new(
                    ErrorKind::NotFound,
                    format!("object {id} is not held by the producer (freed, or never stored)"),
                ),
                _ => e,
            })
    }

    fn free(&self, id: &ObjectId) -> bool {
        self.transports.iter().for_each(|t| t.release(id));
        self.records.lock().remove(id);
        self.store.free(id)
    }

    fn local(&self) -> Local<'_> {
        Local {
            store: &self.store,
            node_id: &self.node_id,
            failures: self,
        }
    }
}

/// Refuses a record that describes another object than the one asked for.
fn check_key(id: &ObjectId, meta: &Metadata) -> Result<()> {
    if meta.object != *id {
        return Err(Error::invalid(format!(
            "the metadata record describes object {}, not {id}",
            meta.object
        )));
    }
    Ok(())
}

/// One process's plugin: store, endpoint, transports.
///
/// Dropping it frees every object it holds, leaves its collective groups and
/// closes its endpoint (peers' pooled connections to it see it gone). When
/// `drop` returns, the tensors of every object it held are dropped, their
/// deleters run (on the dropping thread, or on the connection thread that let
/// go last): a fetch its endpoint was still serving is waited for, its
/// connection shut down first so that a reply still being written fails at
/// once. The wait is bounded by the reply timeout ([`Limits::frame_timeout`]);
/// a serve still running past it (a transport blocked beyond its own
/// timeouts) is logged and frees its object when it ends. Objects the caller
/// still holds itself ([`Fetched::Local`], [`Context::held`]) live until it
/// lets them go. Drop it without holding a lock a deleter takes (Python's GIL:
/// the binding calls the C ABI's destroy with the GIL released), or the wait
/// runs to its bound.
pub struct Context {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    rendezvous: Rendezvous,
    /// Rendezvous address of each group this process created, by (backend, name).
    group_stores: Mutex<HashMap<(TransportKind, String), String>>,
    token_set: bool,
    frees: RemoteFrees,
    /// Reports groups a peer's death broke outside a transfer (started with the first group).
    group_watch: group_watch::GroupWatch,
    /// This context's own fetches (the process-wide table counts all contexts).
    fetch_stats: stats::ContextCounters,
    /// Node copies of objects from other hosts, shared with this node's consumers.
    node_share: node_share::NodeShare,
}

impl Drop for Context {
    fn drop(&mut self) {
        self.shared.records.lock().clear();
        self.shared.store.clear();
        let groups: Vec<_> = self.group_stores.lock().keys().cloned().collect();
        for (kind, name) in groups {
            let _ = self.destroy_group(kind, &name);
        }
        // A fetch being served may still hold an object the store let go:
        // shut its connection down (so it stops writing) and wait for it.
        self.endpoint.close();
        if !self.shared.serves.wait_idle(self.shared.reply_timeout) {
            log::warn!(
                "ray-rdt: a fetch from this process was still being served {:?} after its context was dropped; its object is freed when that serve ends",
                self.shared.reply_timeout
            );
        }
    }
}

impl Context {
    /// Creates the context of this process and starts its endpoint (same-host
    /// always; TCP when the config names the node's IP).
    pub fn new(config: ContextConfig) -> Result<Context> {
        crate::logging::install();
        let limits = config.limits;
        let shared = Arc::new(Shared {
            store: ObjectStore::new(),
            records: Mutex::new(HashMap::new()),
            node_id: config.node_id,
            actor_id: config.actor_id,
            host_id: config.host_id,
            node_ip: config.node_ip,
            pool: Arc::new(ClientPool::new(config.token.clone(), limits)),
            transports: Registry::builtin(),
            same_host_path: config.same_host_path,
            inline_bytes: config.inline_bytes,
            reply_timeout: limits.frame_timeout,
            failures: Default::default(),
            addresses: OnceLock::new(),
            serves: Default::default(),
        });
        let token_set = config.token.is_set();
        let endpoint = Endpoint::start(shared.clone(), config.node_ip, config.token, limits)?;
        let _ = shared.addresses.set(endpoint.addresses().clone());
        let frees = RemoteFrees::start(shared.pool.clone())?;
        Ok(Context {
            shared,
            endpoint,
            rendezvous: Rendezvous::default(),
            group_stores: Mutex::new(HashMap::new()),
            token_set,
            frees,
            group_watch: Default::default(),
            fetch_stats: stats::ContextCounters::default(),
            node_share: node_share::NodeShare::new(config.node_share, limits),
        })
    }

    /// What this context's own fetches over `kind` received and how many
    /// failed (see [`stats::ContextCounters`]; [`stats::snapshot`] counts the
    /// whole process).
    pub fn fetch_stats(&self, kind: TransportKind) -> stats::Snapshot {
        self.fetch_stats.snapshot(kind)
    }

    /// This process's object store.
    pub fn store(&self) -> &ObjectStore {
        &self.shared.store
    }

    /// The object `id` this process holds (a primary copy it produced).
    pub fn held(&self, id: &ObjectId) -> Result<Arc<StoredObject>> {
        self.shared.held(id)
    }

    /// The metadata record of object `id`, which this process holds (what
    /// [`Context::put`] returned for it).
    pub fn record(&self, id: &ObjectId) -> Result<Vec<u8>> {
        self.shared.records.lock().get(id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("object {id} is not held by this process (freed, or never stored)"),
            )
        })
    }

    /// The same-host address peers on this host fetch from.
    pub fn endpoint(&self) -> &str {
        &self.addresses().unix
    }

    /// Both addresses of this process's endpoint.
    pub fn addresses(&self) -> &Addresses {
        self.shared
            .addresses
            .get()
            .expect("set when the context was created")
    }

    /// Connections the endpoint serves now.
    pub fn connections(&self) -> usize {
        self.endpoint.connections()
    }

    /// The connections this process keeps to peers' endpoints.
    pub fn client_pool(&self) -> &ClientPool {
        &self.shared.pool
    }

    /// Task return: stores `tensors` as the primary copy of `id` and returns the
    /// metadata record for Ray's object store. On error the tensors are handed back.
    pub fn put(
        &self,
        id: ObjectId,
        kind: TransportKind,
        group: Option<&str>,
        tensors: Vec<Tensor>,
    ) -> Result<Vec<u8>, PutRejected> {
        let transport = match self.shared.transports.get(kind) {
            Ok(t) => t,
            Err(error) => return Err(PutRejected { error, tensors }),
        };
        let device = tensors
            .first()
            .map(Tensor::device)
            .unwrap_or(DLDevice::cpu());
        if let Some((i, t)) = tensors
            .iter()
            .enumerate()
            .find(|(_, t)| t.device() != device || !transport.serves(t.device()))
        {
            let error = Error::new(
                ErrorKind::Unsupported,
                format!(
                    "tensor {i} is a {} tensor, which the {} transport does not move: it moves {} (all tensors of an object share one device)",
                    crate::tensor::device_name(t.device()),
                    kind.name(),
                    transport.devices()
                ),
            );
            // For a collective transport this is a system error (the guide's
            // "a CPU tensor when using NCCL"): the group is broken and destroyed.
            if let (Some(groups), Some(name)) = (transport.groups(), group) {
                groups.break_group(&self.shared.local(), name, &id, None, &error);
            }
            return Err(PutRejected { error, tensors });
        }
        let tensor_metas = tensors.iter().map(|t| t.meta().clone()).collect();
        self.shared.store.put(id, tensors, CopyKind::Primary)?;
        let exported = self
            .shared
            .store
            .get(&id, Duration::ZERO)
            .and_then(|object| {
                let inline = inline::pack(&object, self.shared.inline_bytes);
                let transport_data = match inline {
                    Some(_) => transport.export_inline(&id, &object, group),
                    None => transport.export(&id, &object, group),
                }?;
                Metadata {
                    transport: kind,
                    device,
                    object: id,
                    tensors: tensor_metas,
                    extents: object.layout.lengths(),
                    places: object.layout.places.clone(),
                    producer: self.producer(),
                    transport_data,
                    inline,
                }
                .encode()
            });
        if let Ok(record) = &exported {
            self.shared.records.lock().insert(id, record.clone());
        }
        exported.map_err(|error| {
            // Undo the export and hand the tensors back: take the object out again.
            transport.release(&id);
            let tensors = self
                .shared
                .store
                .pop(&id, Duration::ZERO)
                .ok()
                .and_then(|obj| Arc::try_unwrap(obj).ok())
                .map(|obj| obj.tensors)
                .unwrap_or_default();
            PutRejected { error, tensors }
        })
    }

    /// Argument resolution: fetches the tensors described by the metadata record,
    /// from this process's store when it produced them, else over the transport.
    pub fn fetch(&self, id: &ObjectId, record: &[u8], timeout: Duration) -> Result<Fetched> {
        self.fetch_decoded(id, &Metadata::decode(record)?, timeout)
    }

    /// [`Context::fetch`] of a record already decoded.
    pub fn fetch_decoded(
        &self,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Fetched> {
        check_key(id, meta)?;
        if meta.producer.endpoint == self.endpoint() {
            return self.shared.held(id).map(Fetched::Local);
        }
        let receiver = NewTensors(self.request(id, meta));
        self.transfer(meta, &receiver, timeout)
            .map(Fetched::Received)
    }

    /// `ray.get` into the caller's tensors (`set_target_for_ref`): checks the
    /// targets against the record (before any byte moves), then lands the
    /// object's bytes straight in them. The caller keeps the targets valid
    /// until this returns.
    pub fn fetch_into(
        &self,
        id: &ObjectId,
        meta: &Metadata,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<()> {
        check_key(id, meta)?;
        let runs = targets::runs(meta, targets)?;
        let receiver = IntoTargets {
            request: self.request(id, meta),
            runs: &runs,
        };
        if meta.producer.endpoint == self.endpoint() {
            return receiver.copy_of(&*self.shared.held(id)?);
        }
        self.transfer(meta, &receiver, timeout)
    }

    /// What a fetch of object `id` (record `meta`) asks for.
    fn request<'a>(&'a self, id: &'a ObjectId, meta: &'a Metadata) -> Request<'a> {
        Request {
            local: self.shared.local(),
            id,
            meta,
        }
    }

    /// Moves the bytes of `meta`'s object from its producer into `receiver`,
    /// on the path and with the transport that serve it (see the module
    /// docs), and counts the outcome.
    fn transfer<R: Receiver>(
        &self,
        meta: &Metadata,
        receiver: &R,
        timeout: Duration,
    ) -> Result<R::Output> {
        let declared = self.shared.transports.get(meta.transport)?;
        let contact = meta.producer.contact();
        let peer = self.peer(&meta.producer, &contact);
        let _fetching = stats::FETCHING.enter();
        let start = Instant::now();
        let (path, result) = if let Some(bytes) = &meta.inline {
            let r = declared
                .check_consumer(meta)
                .and_then(|()| receiver.inline(bytes));
            (Path::Inline, r)
        } else if let Some(same_host) = self.same_host_path_for(meta, &peer, declared) {
            let r = declared
                .check_consumer(meta)
                .and_then(|()| receiver.receive(same_host, &peer, timeout));
            (Path::SameHost, r)
        } else if self.node_share.applies(meta, &peer, declared) {
            self.node_share
                .fetch(&self.shared, meta, declared, &peer, receiver, timeout)
        } else {
            // The declared transport moves the bytes itself: its network path,
            // also on one host (loopback), unless it is the same-host path.
            let path = if declared.is_same_host_path() {
                Path::SameHost
            } else {
                Path::Network
            };
            (path, receiver.receive(declared, &peer, timeout))
        };
        match &result {
            Ok(_) => {
                stats::record_received(meta.transport, path, meta.total_bytes(), start.elapsed());
                self.fetch_stats
                    .record_received(meta.transport, meta.total_bytes());
            }
            Err(_) => {
                stats::record_error(meta.transport, path);
                self.fetch_stats.record_error(meta.transport);
            }
        }
        result.map_err(|e| match path {
            Path::Inline => e,
            _ => peer.explain(e),
        })
    }

    /// The same-host path's transport when it carries `meta`'s object in place
    /// of the declared transport: CPU tensors from a producer on this host,
    /// with the same-host path on.
    fn same_host_path_for(
        &self,
        meta: &Metadata,
        peer: &Peer<'_>,
        declared: &dyn Transport,
    ) -> Option<&dyn Transport> {
        let applies = peer.same_host
            && self.shared.same_host_path
            && !declared.is_same_host_path()
            && is_host(meta.device);
        applies
            .then(|| self.shared.transports.same_host_path())
            .flatten()
    }

    /// The owner's free of object `id` described by `record`: sent to the
    /// producer's endpoint in the background, batched with other frees to the
    /// same producer (see [`remote_free`]). Frees locally when this process is
    /// the producer.
    pub fn free_remote(&self, id: &ObjectId, record: &[u8]) -> Result<()> {
        let meta = Metadata::decode(record)?;
        if meta.producer.endpoint == self.endpoint() {
            self.free(id);
            return Ok(());
        }
        let contact = meta.producer.contact();
        self.frees
            .enqueue(self.peer(&meta.producer, &contact).address()?, *id);
        Ok(())
    }

    /// Waits up to `timeout` until every queued remote free was sent; returns
    /// whether they all were.
    pub fn flush_frees(&self, timeout: Duration) -> bool {
        self.frees.flush(timeout)
    }

    /// How this process reaches `producer`: its same-host endpoint when it runs
    /// on this host, else its TCP endpoint.
    fn peer<'a>(&'a self, producer: &'a Producer, contact: &'a Contact) -> Peer<'a> {
        let (address, same_host) = contact.route(&self.shared.host_id);
        Peer {
            pool: &self.shared.pool,
            address,
            same_host,
            pid: producer.pid,
        }
    }

    /// Frees the primary copy of `id` (out of scope in Ray). Returns whether it was held.
    pub fn free(&self, id: &ObjectId) -> bool {
        self.shared.free(id)
    }

    /// Starts a rendezvous store on `bind_host` for a group whose rank 0 runs
    /// in this process; returns its `host:port`.
    pub fn serve_rendezvous(&self, bind_host: &str) -> Result<String> {
        self.rendezvous.serve(bind_host)
    }

    /// Joins collective group `name` of transport `kind` as `rank` of
    /// `world_size`, through the rendezvous store at `rendezvous`, reporting
    /// failed transfers to `owner` (the C ABI's `rdt_group_create_owned`).
    #[allow(clippy::too_many_arguments)]
    pub fn create_group(
        &self,
        kind: TransportKind,
        name: &str,
        rank: usize,
        world_size: usize,
        rendezvous: &str,
        timeout: Duration,
        owner: Option<&Contact>,
    ) -> Result<()> {
        let groups = self.shared.transports.groups(kind)?;
        let local_ip = self.shared.node_ip.map(|ip| ip.to_string());
        let store_addr = crate::rendezvous::parse_address(rendezvous)?;
        self.rendezvous.with_store(rendezvous, timeout, |store| {
            groups.create_group(&GroupSpec {
                name,
                rank,
                world_size,
                store,
                store_addr,
                local_ip: local_ip.as_deref(),
                timeout,
                owner,
            })
        })?;
        self.group_stores
            .lock()
            .insert((kind, name.to_owned()), rendezvous.to_owned());
        self.group_watch.ensure_started(&self.shared)
    }

    /// Leaves collective group `name` of transport `kind` (and stops its
    /// rendezvous store if this process served it).
    pub fn destroy_group(&self, kind: TransportKind, name: &str) -> Result<()> {
        let result = self.shared.transports.groups(kind)?.destroy_group(name);
        if let Some(address) = self.group_stores.lock().remove(&(kind, name.to_owned())) {
            self.rendezvous.stop(&address);
        }
        result
    }

    /// Leaves collective group `name`, in whichever transport has it.
    pub fn destroy_group_named(&self, name: &str) -> Result<()> {
        let kind = self
            .shared
            .transports
            .iter()
            .find(|t| {
                t.groups()
                    .is_some_and(|g| g.group_names().iter().any(|n| n == name))
            })
            .map(|t| t.kind())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("this process is not in collective group {name:?}"),
                )
            })?;
        self.destroy_group(kind, name)
    }

    /// How peers reach this process's endpoint (e.g. a group's members, to
    /// report failed transfers to their owner).
    pub fn contact(&self) -> Contact {
        let a = self.addresses();
        Contact {
            host_id: self.shared.host_id.clone(),
            unix: a.unix.clone(),
            tcp: a.tcp.clone(),
        }
    }

    /// The next failed transfer reported by a member of a group this process
    /// owns, waiting up to `timeout` for one.
    pub fn next_group_failure(
        &self,
        timeout: Duration,
    ) -> Option<crate::transport::group::GroupFailure> {
        self.shared.failures.next(timeout)
    }

    /// Whether TCP peers must prove Ray's cluster token to this endpoint.
    pub fn authenticated(&self) -> bool {
        !self.addresses().tcp.is_empty() && self.token_set
    }

    /// The collective groups of transport `kind`.
    pub fn groups(&self, kind: TransportKind) -> Result<&dyn CollectiveGroups> {
        self.shared.transports.groups(kind)
    }

    fn producer(&self) -> Producer {
        let addresses = self.addresses();
        Producer {
            node_id: self.shared.node_id.clone(),
            pid: std::process::id(),
            actor_id: self.shared.actor_id.clone(),
            host_id: self.shared.host_id.clone(),
            endpoint: addresses.unix.clone(),
            tcp_endpoint: addresses.tcp.clone(),
        }
    }
}
