//! The transport interface and its backends.
//!
//! A transfer is always pulled by the consumer: it calls [`Transport::fetch`] with
//! the metadata record, which talks to the producer's endpoint directly (through
//! the [`Peer`] it is given). On the producer, the endpoint hands the request to
//! the same transport's [`Transport::serve`]. Two-sided transports (gloo) move the
//! bytes over their collective group while the control channel synchronises;
//! one-sided ones (shm, nixl) need the producer only to hand out access.

#[cfg(feature = "cuda")]
pub mod cuda_ipc;
#[cfg(feature = "gloo")]
pub mod gloo;
pub mod group;
#[cfg(feature = "gloo")]
pub mod group_table;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(feature = "nixl")]
pub mod nixl;
pub mod registry;
pub mod shm;

pub use group::CollectiveGroups;
pub use registry::Registry;

use crate::dlpack::DLDevice;
use crate::endpoint::{wire, Channel, ClientPool};
use crate::error::Result;
use crate::layout::Runs;
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::{ObjectStore, StoredObject};
use crate::tensor::Tensor;
use crate::transport_kind::TransportKind;
use std::time::Duration;

/// What a transport sees of the process it runs in.
pub struct Local<'a> {
    /// This process's object store.
    pub store: &'a ObjectStore,
    /// Ray node ID of this process (may be empty when unknown).
    pub node_id: &'a [u8],
    /// Where failed transfers of collective groups are reported.
    pub failures: &'a dyn group::FailureSink,
}

/// The consumer's way to the producer's endpoint.
pub struct Peer<'a> {
    /// Connections to other processes' endpoints.
    pub pool: &'a ClientPool,
    /// The producer's endpoint address chosen for this consumer (from the
    /// metadata record): its same-host address when `same_host`, else its TCP
    /// one; `None` when the producer is on another host and has no TCP endpoint.
    pub address: Option<&'a str>,
    /// Whether the producer runs on this host (same host identity).
    pub same_host: bool,
    /// The producer's process ID, for messages.
    pub pid: u32,
}

impl Peer<'_> {
    /// Adds what is known about the producer to a failed transfer's error: a
    /// producer whose endpoint no longer exists is gone (the error becomes
    /// [`crate::ErrorKind::PeerGone`]); one whose endpoint answers is still
    /// running; one that cannot be reached does not answer. Probes for at most
    /// about a second (a dying process may still hold its socket briefly).
    pub fn explain(&self, error: crate::Error) -> crate::Error {
        use crate::ErrorKind;
        if !matches!(
            error.kind(),
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::Io
        ) || self.address.is_none()
        {
            return error;
        }
        let mut probe = Ok(());
        for attempt in 0..4 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            probe = self.exchange(Duration::from_millis(250), |_| Ok(()));
            if matches!(&probe, Ok(()))
                || matches!(&probe, Err(e) if e.kind() == ErrorKind::PeerGone)
            {
                break;
            }
        }
        let pid = self.pid;
        match probe {
            Err(e) if e.kind() == ErrorKind::PeerGone => crate::Error::new(
                ErrorKind::PeerGone,
                format!("{e}; the transfer failed with: {error}"),
            ),
            Err(e) => crate::Error::new(
                error.kind(),
                format!("{error} (the producer, pid {pid}, does not answer: {e})"),
            ),
            Ok(()) => crate::Error::new(
                error.kind(),
                format!("{error} (the producer, pid {pid}, is still running)"),
            ),
        }
    }

    /// The address to reach the producer at, or why there is none.
    pub fn address(&self) -> Result<&str> {
        self.address.ok_or_else(|| {
            crate::Error::new(
                crate::ErrorKind::Unsupported,
                format!(
                    "the producer (pid {}) runs on another host and its plugin has no TCP endpoint (it was created without the node's IP)",
                    self.pid
                ),
            )
        })
    }

    /// Runs `exchange` on a connection to the producer's endpoint (see
    /// [`ClientPool::with_connection`]). A producer that is gone is named by
    /// its process ID.
    pub fn exchange<T>(
        &self,
        timeout: Duration,
        exchange: impl FnOnce(&mut Channel) -> Result<T>,
    ) -> Result<T> {
        self.pool
            .with_connection(self.address()?, timeout, exchange)
            .map_err(|e| match e.kind() {
                crate::ErrorKind::PeerGone => crate::Error::new(
                    e.kind(),
                    format!("the producer (pid {}) is gone: {e}", self.pid),
                ),
                _ => e,
            })
    }
}

/// What serving a fetch request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The object's bytes went to the consumer (or it was handed access).
    Sent,
    /// The producer declined for now (busy); the consumer asks again.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Declined,
}

/// One tensor transport backend.
pub trait Transport: Send + Sync {
    /// Which transport this is.
    fn kind(&self) -> TransportKind;

    /// Whether tensors on `device` can be moved by this transport.
    fn serves(&self, device: DLDevice) -> bool;

    /// What it moves, for refusals ("CUDA tensors (...)").
    fn devices(&self) -> &'static str;

    /// Whether this transport is the same-host path: it moves bytes only
    /// between processes of one host, through memory they share, and carries
    /// the CPU objects of the other transports between processes of one host
    /// (see [`crate::stats::Path::SameHost`]).
    fn is_same_host_path(&self) -> bool {
        false
    }

    /// Producer side, at put: the transport-specific bytes for the object's
    /// metadata record (group and rank, registration descriptors, ...).
    fn export(&self, id: &ObjectId, object: &StoredObject, group: Option<&str>) -> Result<Vec<u8>>;

    /// Producer side, at put of an object that travels inside its record (no
    /// consumer fetches it): what [`Transport::check_consumer`] needs. By
    /// default the same as [`Transport::export`].
    fn export_inline(
        &self,
        id: &ObjectId,
        object: &StoredObject,
        group: Option<&str>,
    ) -> Result<Vec<u8>> {
        self.export(id, object, group)
    }

    /// Consumer side: refuses a consumer this transport's contract excludes
    /// (e.g. gloo: not in the producer's group), whatever path the bytes take.
    fn check_consumer(&self, _meta: &Metadata) -> Result<()> {
        Ok(())
    }

    /// Producer side: releases what `export` set up, when the object is freed.
    fn release(&self, _id: &ObjectId) {}

    /// Producer side: serves a fetch request for `object` that arrived on the
    /// endpoint; `request` is the transport-specific part. Writes its replies
    /// on `channel` (which holds a descriptor sent with the request, on
    /// channels that pass them), and says whether it sent the object (only
    /// then is it counted as sent).
    fn serve(
        &self,
        local: &Local<'_>,
        id: &ObjectId,
        object: &StoredObject,
        request: &[u8],
        channel: &mut Channel,
    ) -> Result<Served>;

    /// Consumer side: fetches the tensors `meta` describes from the producer.
    fn fetch(
        &self,
        local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>>;

    /// Consumer side: fetches the object straight into the caller's tensors
    /// (`runs`, checked against the record). Transports that cannot refuse
    /// with [`crate::ErrorKind::Unsupported`].
    fn fetch_into(
        &self,
        _local: &Local<'_>,
        _peer: &Peer<'_>,
        _id: &ObjectId,
        _meta: &Metadata,
        _runs: &Runs,
        _timeout: Duration,
    ) -> Result<()> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!(
                "the {} transport cannot receive into target tensors",
                self.kind().name()
            ),
        ))
    }

    /// The transport's collective groups, if it is two-sided.
    fn groups(&self) -> Option<&dyn CollectiveGroups> {
        None
    }
}

/// The instant `timeout` from now (far in the future for `Duration::MAX`).
pub fn deadline_after(timeout: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// Tensors received into one buffer start at multiples of this.
const TENSOR_ALIGN: u64 = 64;

/// Offset of each of `sizes` when packed one after another into one buffer (each
/// start 64-byte aligned), and the bytes they span.
pub fn packed_layout(sizes: impl Iterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut end = 0u64;
    for n in sizes {
        offsets.push(end);
        end = (end + n).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
    }
    (offsets, end)
}

/// Encodes a fetch request: the fetch operation, the transport that serves it,
/// the transport the object was declared with (`meta.transport`: the producer
/// counts the bytes under it), the object ID and the serving transport's part.
pub fn fetch_request(
    serving: TransportKind,
    meta: &Metadata,
    id: &ObjectId,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + id.0.len() + body.len());
    out.push(wire::OP_FETCH);
    out.push(serving.code());
    out.push(meta.transport.code());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A decoded fetch request.
pub struct FetchRequest<'a> {
    /// The transport that serves it.
    pub serving: TransportKind,
    /// The transport the object was declared with.
    pub declared: TransportKind,
    /// The object.
    pub id: ObjectId,
    /// The serving transport's part.
    pub body: &'a [u8],
}

/// Decodes the body of a fetch request (after its operation byte).
pub fn parse_fetch_request(request: &[u8]) -> Result<FetchRequest<'_>> {
    let [serving, declared, rest @ ..] = request else {
        return Err(crate::Error::transport("fetch request is truncated"));
    };
    if rest.len() < crate::object_id::OBJECT_ID_LEN {
        return Err(crate::Error::transport(
            "fetch request too short for an object ID",
        ));
    }
    let (id, body) = rest.split_at(crate::object_id::OBJECT_ID_LEN);
    Ok(FetchRequest {
        serving: TransportKind::from_code((*serving).into())?,
        declared: TransportKind::from_code((*declared).into())?,
        id: ObjectId::from_slice(id)?,
        body,
    })
}
