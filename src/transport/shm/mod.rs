//! `shm`: same-host, one-sided transport for CPU tensors; no collective group.
//!
//! The consumer asks the producer's endpoint for the object; the producer copies
//! its tensors into a shared-memory segment and passes the descriptor back over
//! the Unix socket; the consumer's tensors are views of its mapping, released by
//! their DLPack deleters. One memory copy in total. When the consumer has an idle
//! segment from an earlier transfer ([`pool`]) it sends that one along with the
//! request and the producer writes into it, so repeated transfers skip the kernel's
//! page zeroing and faulting. Across hosts it is a clear error.

mod pool;
mod segment;
mod written;

use super::{fetch_request, packed_layout, Local, Peer, Transport};
use crate::dlpack::DLDevice;
use crate::endpoint::{wire, Channel};
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{is_host, Tensor, TensorMeta};
use crate::transport_kind::TransportKind;
use pool::{Segment, SegmentPool};
use segment::Mapping;
use std::os::fd::OwnedFd;
use std::time::Duration;
use written::WrittenMappings;

/// How long the producer waits for a consumer to take its reply (a few bytes
/// and a descriptor: the socket buffer takes it at once unless the consumer is
/// gone or stuck).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The shm transport: the consumer's pool of idle segments and the producer's
/// mappings of segments it wrote.
#[derive(Debug, Default)]
pub struct Shm {
    pool: SegmentPool,
    written: WrittenMappings,
}

impl Transport for Shm {
    fn kind(&self) -> TransportKind {
        TransportKind::Shm
    }

    fn serves(&self, device: DLDevice) -> bool {
        is_host(device)
    }

    fn devices(&self) -> &'static str {
        "CPU tensors of one host (CUDA tensors go with tensor_transport=\"cuda_ipc\", \"nccl\" or \"nixl\")"
    }

    fn export(
        &self,
        _id: &ObjectId,
        _object: &StoredObject,
        _group: Option<&str>,
    ) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn serve(
        &self,
        _local: &Local<'_>,
        _id: &ObjectId,
        object: &StoredObject,
        _request: &[u8],
        fd: Option<OwnedFd>,
        channel: &mut Channel,
    ) -> Result<()> {
        if !channel.passes_descriptors() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("the shm transport only works between processes on the same host: {} reached this producer from another host; use gloo or nixl", channel.peer()),
            ));
        }
        let (_, total) = packed_layout(object.tensors.iter().map(|t| t.meta().nbytes));
        // Write into the consumer's segment if it sent one, else into a new one
        // whose descriptor goes back with the reply.
        let (fd, fresh) = match fd {
            Some(fd) => (Some(fd), false),
            None if total == 0 => (None, false),
            None => (Some(segment::create(total)?), true),
        };
        crate::hold::point("serve");
        if let Some(fd) = &fd {
            let (id, size) = segment::identity(fd)?;
            segment::fill(&*self.written.get(id, fd, size as usize)?, object)?;
        }
        let reply_fd = if fresh { fd } else { None };
        channel.send_with_fd(&[wire::REPLY_OK], reply_fd.as_ref(), REPLY_TIMEOUT)?;
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
        if !peer.same_host {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the shm transport only works between processes on the same host: the producer is on another host (another node); use gloo or nixl",
            ));
        }
        let metas: Vec<TensorMeta> = meta.tensors.iter().map(TensorMeta::to_compact).collect();
        let (offsets, total) = packed_layout(metas.iter().map(|m| m.nbytes));
        // An object of no bytes still asks the producer: it must still hold it.
        let reused = if total == 0 {
            None
        } else {
            self.pool.take(total as usize)
        };
        let request = fetch_request(TransportKind::Shm, meta, id, &[]);
        let segment = peer.exchange(timeout, |channel| {
            channel.send_with_fd(&request, reused.as_ref().map(|s| &s.fd), timeout)?;
            crate::hold::point("fetch");
            let reply = channel.recv(timeout)?;
            let fd = reply.fd;
            wire::parse_reply(&reply.payload)?;
            match (reused, fd) {
                _ if total == 0 => Ok(None),
                (Some(segment), _) => Ok(Some(segment)),
                (None, Some(fd)) => {
                    let (_, size) = segment::identity(&fd)?;
                    if size != total {
                        return Err(Error::transport(format!(
                            "shm segment is {size} bytes, the metadata record describes {total}"
                        )));
                    }
                    let mapping = Mapping::new(&fd, total as usize, false)?;
                    Ok(Some(Segment { fd, mapping }))
                }
                (None, None) => Err(Error::transport(
                    "the producer sent no shared-memory segment",
                )),
            }
        })?;
        let Some(segment) = segment else {
            return metas.iter().map(Tensor::alloc_host).collect();
        };
        let lease = self.pool.lease(segment);
        let cpu = DLDevice::cpu();
        let tensors = metas
            .into_iter()
            .zip(offsets)
            .map(|(m, off)| {
                // SAFETY: the offset lies inside the segment (its size was checked).
                let data = unsafe { lease.as_ptr().add(off as usize) } as *mut _;
                Tensor::from_owner(m, cpu, data, Box::new(lease.clone()))
            })
            .collect();
        Ok(tensors)
    }
}
