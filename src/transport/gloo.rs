//! `gloo`: two-sided transport over a Gloo collective group (CPU tensors).
//!
//! Groups are created per process with a name, rank and size; rank 0's process
//! serves the rendezvous store ([`Gloo::serve_rendezvous`]) and every rank joins
//! with its address. A fetch is pulled by the consumer: it asks the producer's
//! endpoint to send object X on a fresh slot, the producer acknowledges (or
//! refuses: unknown object, unknown group), sends each tensor over Gloo, and
//! confirms; the consumer receives straight into the new tensors' memory.
//!
//! Any Gloo failure (timeout, dead peer) breaks the group: later transfers fail
//! with a clear error until the group is destroyed and created again.

use super::group::{CollectiveGroups, GroupSpec};
use super::{fetch_request, Local, Peer, Transport};
use crate::dlpack::DLDevice;
use crate::endpoint::{wire, Channel};
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{element_size, is_host, Tensor, TensorMeta};
use crate::transport_kind::TransportKind;
use gloo_sys::ContextOptions;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One joined collective group.
struct Group {
    ctx: gloo_sys::Context,
}

/// The gloo transport: this process's groups.
#[derive(Default)]
pub struct Gloo {
    groups: RwLock<HashMap<String, Arc<Group>>>,
    next_slot: AtomicU64,
}

/// Environment variable naming the network interface Gloo binds, as
/// torch.distributed reads it.
pub const SOCKET_IFNAME_ENV: &str = "GLOO_SOCKET_IFNAME";

fn gloo_error(group: &str, e: gloo_sys::GlooError) -> Error {
    let kind = match e.kind() {
        gloo_sys::ErrorKind::Timeout => ErrorKind::Timeout,
        _ => ErrorKind::Transport,
    };
    Error::new(kind, format!("gloo group {group:?}: {e}"))
}

/// The local address this host uses to reach `target` (what peers can reach us on).
fn local_ip_towards(target: SocketAddr) -> String {
    UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(target).and_then(|_| s.local_addr()))
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// Encodes the transport data of a gloo record: producer rank and group name.
fn encode_location(rank: usize, group: &str) -> Vec<u8> {
    let mut out = (rank as u32).to_le_bytes().to_vec();
    out.extend_from_slice(group.as_bytes());
    out
}

fn decode_location(data: &[u8]) -> Result<(usize, &str)> {
    if data.len() < 4 {
        return Err(Error::malformed("gloo transport data is truncated"));
    }
    let (rank, name) = data.split_at(4);
    let name =
        std::str::from_utf8(name).map_err(|_| Error::malformed("gloo group name is not UTF-8"))?;
    Ok((
        u32::from_le_bytes(rank.try_into().expect("4 bytes")) as usize,
        name,
    ))
}

/// Largest message a tensor is split into (rounded down to whole elements).
const CHUNK: u64 = 4 << 20;

/// The (first byte, length) of each message the producer's tensor `meta` travels
/// as: one message when it is contiguous (Gloo pipelines it), else chunks of at
/// most [`CHUNK`] bytes. Both sides derive the same split from the record.
fn chunks(meta: &TensorMeta) -> Result<Vec<(u64, u64)>> {
    if meta.is_contiguous() {
        return Ok(if meta.nbytes == 0 {
            Vec::new()
        } else {
            vec![(0, meta.nbytes)]
        });
    }
    let step = CHUNK / element_size(meta.dtype)? * element_size(meta.dtype)?;
    Ok((0..meta.nbytes)
        .step_by(step as usize)
        .map(|first| (first, step.min(meta.nbytes - first)))
        .collect())
}

/// A fetch request's transport-specific part.
struct SendRequest<'a> {
    slot: u64,
    consumer_rank: usize,
    timeout: Duration,
    group: &'a str,
}

impl<'a> SendRequest<'a> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.group.len());
        out.extend_from_slice(&self.slot.to_le_bytes());
        out.extend_from_slice(&(self.consumer_rank as u32).to_le_bytes());
        out.extend_from_slice(
            &(self.timeout.as_millis().min(u64::MAX as u128) as u64).to_le_bytes(),
        );
        out.extend_from_slice(self.group.as_bytes());
        out
    }

    fn decode(body: &'a [u8]) -> Result<Self> {
        if body.len() < 20 {
            return Err(Error::transport("gloo send request is truncated"));
        }
        let slot = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let consumer_rank = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
        let timeout = Duration::from_millis(u64::from_le_bytes(
            body[12..20].try_into().expect("8 bytes"),
        ));
        let group = std::str::from_utf8(&body[20..])
            .map_err(|_| Error::transport("group name is not UTF-8"))?;
        Ok(SendRequest {
            slot,
            consumer_rank,
            timeout,
            group,
        })
    }
}

impl CollectiveGroups for Gloo {
    fn create_group(&self, spec: &GroupSpec<'_>) -> Result<()> {
        let already = || {
            Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "this process is already in collective group {:?}",
                    spec.name
                ),
            )
        };
        if self.groups.read().contains_key(spec.name) {
            return Err(already());
        }
        if spec.rank >= spec.world_size {
            return Err(Error::invalid(format!(
                "rank {} is out of range for a group of {}",
                spec.rank, spec.world_size
            )));
        }
        // Bind what peers on other hosts can reach: the interface torch names
        // (GLOO_SOCKET_IFNAME), else the node's IP, else the local address that
        // routes to the rendezvous store.
        let iface = crate::settings::string(SOCKET_IFNAME_ENV);
        let hostname = match (&iface, spec.local_ip) {
            (Some(_), _) => None,
            (None, Some(ip)) => Some(ip.to_owned()),
            (None, None) => Some(local_ip_towards(spec.store_addr)),
        };
        let opts = ContextOptions {
            hostname,
            iface,
            timeout: spec.timeout,
        };
        let ctx =
            gloo_sys::Context::connect(spec.rank, spec.world_size, spec.store, spec.name, &opts)
                .map_err(|e| gloo_error(spec.name, e))?;
        let mut groups = self.groups.write();
        if groups.contains_key(spec.name) {
            return Err(already());
        }
        groups.insert(spec.name.to_owned(), Arc::new(Group { ctx }));
        Ok(())
    }

    fn destroy_group(&self, name: &str) -> Result<()> {
        let group = self
            .groups
            .write()
            .remove(name)
            .ok_or_else(|| not_in_group(name))?;
        group.ctx.abort();
        Ok(())
    }

    fn group_names(&self) -> Vec<String> {
        self.groups.read().keys().cloned().collect()
    }
}

fn not_in_group(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("this process is not in collective group {name:?}"),
    )
}

impl Gloo {
    fn group(&self, name: &str) -> Result<Arc<Group>> {
        let group = self.groups.read().get(name).cloned().ok_or_else(|| {
            let e = not_in_group(name);
            Error::new(
                e.kind(),
                format!("{e}: create the group on both actors before passing gloo objects"),
            )
        })?;
        if let Some(reason) = group.ctx.broken_reason() {
            return Err(Error::transport(format!(
                "collective group {name:?} was destroyed by a system error ({reason}); destroy it and create it again"
            )));
        }
        Ok(group)
    }
}

impl Transport for Gloo {
    fn kind(&self) -> TransportKind {
        TransportKind::Gloo
    }

    fn serves(&self, device: DLDevice) -> bool {
        is_host(device)
    }

    fn export(
        &self,
        _id: &ObjectId,
        _object: &StoredObject,
        group: Option<&str>,
    ) -> Result<Vec<u8>> {
        let name = group
            .ok_or_else(|| Error::invalid("the gloo transport needs a collective group name"))?;
        Ok(encode_location(self.group(name)?.ctx.rank(), name))
    }

    fn serve(
        &self,
        _local: &Local<'_>,
        _id: &ObjectId,
        object: &StoredObject,
        body: &[u8],
        _fd: Option<OwnedFd>,
        channel: &mut Channel,
    ) -> Result<()> {
        let req = SendRequest::decode(body)?;
        let group = self.group(req.group)?;
        if req.consumer_rank >= group.ctx.size() || req.consumer_rank == group.ctx.rank() {
            return Err(Error::invalid(format!(
                "rank {} cannot receive from rank {} in group {:?}",
                req.consumer_rank,
                group.ctx.rank(),
                req.group
            )));
        }
        channel.send(&[wire::REPLY_OK], req.timeout)?;
        crate::hold::point("serve");
        // Contiguous tensors are posted at once and overlap; a strided one goes as
        // chunks packed into one bounded staging buffer. Messages on a slot arrive
        // in the order they were posted.
        let send_err = |e| gloo_error(req.group, e);
        let mut pending = Vec::new();
        let mut staging = Vec::new();
        for t in object.tensors.iter() {
            for (first, len) in chunks(t.meta())? {
                match t.host_bytes() {
                    // SAFETY: the object (and so its memory) outlives the wait below.
                    Some(b) => pending.push(
                        unsafe {
                            group.ctx.post_send(
                                req.consumer_rank,
                                req.slot,
                                b.as_ptr().add(first as usize),
                                len as usize,
                            )
                        }
                        .map_err(send_err)?,
                    ),
                    None => {
                        staging.resize(len as usize, 0);
                        t.pack_range(first, &mut staging)?;
                        group
                            .ctx
                            .send(req.consumer_rank, req.slot, &staging, req.timeout)
                            .map_err(send_err)?;
                    }
                }
            }
        }
        pending
            .into_iter()
            .try_for_each(|op| op.wait(req.timeout))
            .map_err(send_err)?;
        channel.send(&[wire::REPLY_OK], req.timeout)?;
        Ok(())
    }

    fn fetch(
        &self,
        _local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let (producer_rank, name) = decode_location(&meta.transport_data)?;
        let group = self.group(name)?;
        let mut tensors = meta
            .tensors
            .iter()
            .map(Tensor::alloc_host)
            .collect::<Result<Vec<_>>>()?;
        let request = SendRequest {
            slot: self.next_slot.fetch_add(1, Ordering::Relaxed),
            consumer_rank: group.ctx.rank(),
            timeout,
            group: name,
        };
        peer.exchange(timeout, |channel| {
            channel.send(
                &fetch_request(TransportKind::Gloo, meta, id, &request.encode()),
                timeout,
            )?;
            wire::parse_reply(&channel.recv(timeout)?.payload)?;
            let recv_err = |e| gloo_error(name, e);
            let mut pending = Vec::new();
            for (t, producer_meta) in tensors.iter_mut().zip(&meta.tensors) {
                let buf = t
                    .host_bytes_mut()
                    .expect("freshly allocated host tensors are contiguous")
                    .as_mut_ptr();
                for (first, len) in chunks(producer_meta)? {
                    // SAFETY: the tensors outlive the waits below; ranges are disjoint.
                    let op = unsafe {
                        group.ctx.post_recv(
                            producer_rank,
                            request.slot,
                            buf.add(first as usize),
                            len as usize,
                        )
                    };
                    pending.push(op.map_err(recv_err)?);
                }
            }
            crate::hold::point("fetch");
            pending
                .into_iter()
                .try_for_each(|op| op.wait(timeout))
                .map_err(recv_err)?;
            wire::parse_reply(&channel.recv(timeout)?.payload).map(|_| ())
        })?;
        Ok(tensors)
    }

    fn check_consumer(&self, meta: &Metadata) -> Result<()> {
        let (_, name) = decode_location(&meta.transport_data)?;
        self.group(name).map(|_| ())
    }

    fn groups(&self) -> Option<&dyn CollectiveGroups> {
        Some(self)
    }
}
