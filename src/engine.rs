//! The per-process plugin context: the object store, this process's endpoint and
//! the transports, tied together for the two places Ray calls the data plane
//! (task return: [`Context::put`]; argument resolution: [`Context::fetch`]) and the
//! lifecycle around them.

use crate::dlpack::{kDLCPU, DLDevice};
use crate::endpoint::{ClientPool, Endpoint, Handler};
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::{Metadata, Producer};
use crate::object_id::ObjectId;
use crate::store::{CopyKind, ObjectStore, PutRejected, StoredObject};
use crate::tensor::Tensor;
use crate::transport::{
    gloo::Gloo, nixl::Nixl, parse_fetch_request, shm::Shm, Local, Peer, Transport,
};
use crate::transport_kind::TransportKind;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
    node_id: Vec<u8>,
    actor_id: Vec<u8>,
    pool: ClientPool,
    shm: Shm,
    gloo: Gloo,
    nixl: Nixl,
    /// The endpoint's address, known once it is bound.
    address: OnceLock<String>,
}

impl Shared {
    fn transport(&self, kind: TransportKind) -> Result<&dyn Transport> {
        match kind {
            TransportKind::Shm => Ok(&self.shm),
            TransportKind::Gloo => Ok(&self.gloo),
            TransportKind::Nixl => Ok(&self.nixl),
            other => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the {} transport is not available in this build of the plugin",
                    other.name()
                ),
            )),
        }
    }

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

    fn local(&self) -> Local<'_> {
        Local {
            store: &self.store,
            node_id: &self.node_id,
        }
    }
}

impl Handler for Shared {
    fn handle(&self, request: &[u8], fd: Option<OwnedFd>, stream: &mut UnixStream) -> Result<()> {
        let (kind, id, body) = parse_fetch_request(request)?;
        let transport = self.transport(kind)?;
        let object = self.held(&id)?;
        transport
            .serve(&self.local(), &id, &object, body, fd, stream)
            .inspect_err(|_| crate::stats::record_error(kind))
    }
}

/// One process's plugin: store, endpoint, transports. Dropping it closes the
/// endpoint and frees every object at once (connection threads that are still
/// finishing a reply hold only what they serve).
pub struct Context {
    shared: Arc<Shared>,
    _endpoint: Endpoint,
}

impl Drop for Context {
    fn drop(&mut self) {
        self.shared.store.clear();
        self.shared.gloo.group_names().iter().for_each(|name| {
            let _ = self.shared.gloo.destroy_group(name);
        });
    }
}

impl Context {
    /// Creates the context for a process on Ray node `node_id`, running actor
    /// `actor_id` (empty for a driver), and starts its endpoint.
    pub fn new(node_id: &[u8], actor_id: &[u8]) -> Result<Context> {
        crate::logging::install();
        let shared = Arc::new(Shared {
            store: ObjectStore::new(),
            node_id: node_id.to_vec(),
            actor_id: actor_id.to_vec(),
            pool: ClientPool::default(),
            shm: Shm::default(),
            gloo: Gloo::default(),
            nixl: Nixl::default(),
            address: OnceLock::new(),
        });
        let endpoint = Endpoint::start(shared.clone())?;
        let _ = shared.address.set(endpoint.address().to_owned());
        Ok(Context {
            shared,
            _endpoint: endpoint,
        })
    }

    /// This process's object store.
    pub fn store(&self) -> &ObjectStore {
        &self.shared.store
    }

    /// The address peers fetch from.
    pub fn endpoint(&self) -> &str {
        self.shared
            .address
            .get()
            .map(String::as_str)
            .unwrap_or_default()
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
        let transport = match self.shared.transport(kind) {
            Ok(t) => t,
            Err(error) => return Err(PutRejected { error, tensors }),
        };
        let device = tensors.first().map(Tensor::device).unwrap_or(DLDevice {
            device_type: kDLCPU,
            device_id: 0,
        });
        if let Some((i, t)) = tensors
            .iter()
            .enumerate()
            .find(|(_, t)| t.device() != device || !transport.serves(t.device()))
        {
            let error = Error::new(
                ErrorKind::Unsupported,
                format!(
                    "tensor {i} is on device type {} (id {}), which the {} transport does not serve (all tensors of an object must share one supported device)",
                    t.device().device_type,
                    t.device().device_id,
                    kind.name()
                ),
            );
            return Err(PutRejected { error, tensors });
        }
        let tensor_metas = tensors.iter().map(|t| t.meta().clone()).collect();
        self.shared.store.put(id, tensors, CopyKind::Primary)?;
        let exported = self
            .shared
            .store
            .get(&id, Duration::ZERO)
            .and_then(|object| transport.export(&id, &object, group))
            .and_then(|transport_data| {
                Metadata {
                    transport: kind,
                    device,
                    tensors: tensor_metas,
                    producer: self.producer(),
                    transport_data,
                }
                .encode()
            });
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
        let meta = Metadata::decode(record)?;
        if meta.producer.endpoint == self.endpoint() {
            return self.shared.held(id).map(Fetched::Local);
        }
        let transport = self.shared.transport(meta.transport)?;
        let peer = Peer {
            pool: &self.shared.pool,
            address: &meta.producer.endpoint,
        };
        transport
            .fetch(&self.shared.local(), &peer, id, &meta, timeout)
            .map(Fetched::Received)
            .inspect_err(|_| crate::stats::record_error(meta.transport))
    }

    /// Frees the primary copy of `id` (out of scope in Ray). Returns whether it was held.
    pub fn free(&self, id: &ObjectId) -> bool {
        TransportKind::ALL
            .iter()
            .filter_map(|&k| self.shared.transport(k).ok())
            .for_each(|t| t.release(id));
        self.shared.store.free(id)
    }

    /// The gloo transport, for managing collective groups.
    pub fn gloo(&self) -> &Gloo {
        &self.shared.gloo
    }

    fn producer(&self) -> Producer {
        Producer {
            node_id: self.shared.node_id.clone(),
            pid: std::process::id(),
            actor_id: self.shared.actor_id.clone(),
            endpoint: self.endpoint().to_owned(),
        }
    }
}
