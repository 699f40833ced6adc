//! `cuda_ipc`: one-sided transport for CUDA tensors between processes of one
//! host, through CUDA IPC handles; no collective group.
//!
//! NEVER RUN ON A GPU YET (no GPU was lent to this work): the record, the
//! refusals and the errors without a driver are tested; the copies wait for
//! `ci/gpu-nightly`.
//!
//! - **Put** ([`Transport::export`]): for each (contiguous) tensor, the IPC
//!   handle of the allocation holding it and its offset there
//!   ([`crate::cuda::ipc::export`]), so blocks of torch's caching allocator work;
//!   plus an interprocess event recorded on the producer's current stream,
//!   marking the work that produces the tensors (the producer never waits).
//!   The record is self-contained: the producer's endpoint serves nothing.
//! - **Fetch**: refused unless the producer is on this host. The consumer maps
//!   each producer allocation once (the process-wide [`Mappings`] cache), takes
//!   pooled memory on its current device, makes its copy stream wait for the
//!   producer's event, copies every tensor on that stream, and waits on the host
//!   (until the deadline) for the copies, so that the producer may free or reuse
//!   its memory as soon as Ray lets it; the consumer's current stream then waits
//!   for the copies too. A producer in this very process is copied from directly.
//! - Empty objects touch no CUDA at all, on either side.

pub mod record;

use super::{deadline_after, packed_layout, Local, Peer, Served, Transport};
use crate::cuda::driver::{self, Event, IpcHandle};
use crate::cuda::ipc::{self, Mappings};
use crate::cuda::pool::{self, Lease};
use crate::cuda::{self as cuda_layer, current};
use crate::dlpack::{kDLCUDA, DLDevice};
use crate::endpoint::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{Tensor, TensorMeta};
use crate::transport_kind::TransportKind;
use parking_lot::Mutex;
use record::Record;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

/// The producer allocations this process has mapped.
static MAPPINGS: LazyLock<Mappings> = LazyLock::new(Mappings::default);
/// Events this process exported, by IPC handle: a consumer in the same process
/// (another context) waits on the event itself (CUDA cannot open a handle in
/// the process that made it).
static LOCAL_EVENTS: LazyLock<Mutex<HashMap<IpcHandle, Weak<Event>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The cuda_ipc transport of one context: the events of its exports.
#[derive(Default)]
pub struct CudaIpc {
    exports: Mutex<HashMap<ObjectId, Arc<Event>>>,
}

/// Open mappings in this process, for tests.
pub fn open_mappings() -> usize {
    MAPPINGS.len()
}

impl Transport for CudaIpc {
    fn kind(&self) -> TransportKind {
        TransportKind::CudaIpc
    }

    fn serves(&self, device: DLDevice) -> bool {
        device.device_type == kDLCUDA
    }

    fn devices(&self) -> &'static str {
        "CUDA tensors between processes of one host (CPU tensors go with tensor_transport=\"shm\", \"gloo\" or \"nixl\")"
    }

    fn export(
        &self,
        id: &ObjectId,
        object: &StoredObject,
        _group: Option<&str>,
    ) -> Result<Vec<u8>> {
        // Non-contiguous CUDA tensors were refused when the object was stored
        // (`layout::ObjectLayout::of`).
        if object.nbytes() == 0 {
            return Ok(Record {
                uuid: [0; 16],
                ordinal: 0,
                event: None,
                tensors: vec![None; object.tensors.len()],
            }
            .encode());
        }
        let device = object.tensors[0].device().device_id;
        let ready = Arc::new(cuda_layer::mark_current_work(device, true)?);
        let handle = ready.ipc_handle()?;
        let tensors = object
            .tensors
            .iter()
            .map(|t| match t.meta().nbytes {
                0 => Ok(None),
                _ => ipc::export(device, t.data_ptr() as u64).map(Some),
            })
            .collect::<Result<Vec<_>>>()?;
        let record = Record {
            uuid: driver::uuid(device)?,
            ordinal: device,
            event: Some(handle),
            tensors,
        };
        LOCAL_EVENTS.lock().insert(handle, Arc::downgrade(&ready));
        self.exports.lock().insert(*id, ready);
        Ok(record.encode())
    }

    fn release(&self, id: &ObjectId) {
        if self.exports.lock().remove(id).is_some() {
            LOCAL_EVENTS.lock().retain(|_, e| e.strong_count() > 0);
        }
    }

    fn serve(
        &self,
        _local: &Local<'_>,
        _id: &ObjectId,
        _object: &StoredObject,
        _request: &[u8],
        _channel: &mut Channel,
    ) -> Result<Served> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "cuda_ipc transfers are one-sided copies: the producer's endpoint serves no cuda_ipc requests",
        ))
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
                format!(
                    "object {id} was stored for cuda_ipc by a process on another host (pid {}): CUDA IPC works \
                     between processes of one host; use tensor_transport=\"nccl\" or \"nixl\" across hosts",
                    meta.producer.pid
                ),
            ));
        }
        let record = Record::decode(&meta.transport_data)?;
        if record.tensors.len() != meta.tensors.len() {
            return Err(Error::malformed(format!(
                "cuda_ipc transport data describes {} tensors, the record {}",
                record.tensors.len(),
                meta.tensors.len()
            )));
        }
        if let Some(i) = record.tensors.iter().zip(&meta.tensors).position(|(e, t)| {
            e.is_some() != (t.nbytes > 0) || e.is_some_and(|e| e.offset + t.nbytes > e.size)
        }) {
            return Err(Error::malformed(format!(
                "cuda_ipc descriptor {i} does not match its tensor's {} bytes",
                meta.tensors[i].nbytes
            )));
        }
        let metas: Vec<TensorMeta> = meta.tensors.iter().map(TensorMeta::to_compact).collect();
        let device = current::device();
        if meta.total_bytes() == 0 {
            let dev = DLDevice {
                device_type: kDLCUDA,
                device_id: device,
            };
            return Ok(pool::empty_tensors(metas, dev));
        }
        let deadline = deadline_after(timeout);
        let (offsets, total) = packed_layout(metas.iter().map(|m| m.nbytes));
        let lease = Lease::take(device, total as usize)?;
        let same_process = meta.producer.pid == std::process::id();
        match copy_in(&record, meta, &lease, &offsets, same_process, deadline) {
            Ok(done) => {
                let consumer = current::stream(device);
                done.wait_on(consumer, device)?;
                let mut lease = lease;
                lease.release_on(consumer);
                Ok(lease.into_tensors(metas, &offsets))
            }
            Err((error, in_flight)) => {
                if in_flight {
                    lease.leak();
                }
                // Mappings a copy may still read from stay open.
                if !same_process && !in_flight {
                    MAPPINGS.forget(meta.producer.pid);
                }
                Err(error)
            }
        }
    }
}

/// Where a tensor's bytes are readable from here: address, device, and the
/// mapping that keeps them readable (none for this process's own memory).
type Source = (u64, i32, Option<Arc<ipc::Mapping>>);

/// Copies every tensor into `lease` on the plugin's stream and waits for it;
/// returns the event marking the copies. On error, whether a copy may still
/// be writing.
fn copy_in(
    record: &Record,
    meta: &Metadata,
    lease: &Lease,
    offsets: &[u64],
    same_process: bool,
    deadline: Instant,
) -> std::result::Result<Event, (Error, bool)> {
    let before = |e: Error| (e, false);
    let device = lease.device();
    let stream = driver::plugin_stream(device).map_err(before)?;
    lease.order_after_previous_use(stream).map_err(before)?;
    // Where the producer's memory is readable from here.
    let sources: Vec<Option<Source>> = if same_process {
        record
            .tensors
            .iter()
            .map(|e| e.map(|e| (e.base + e.offset, record.ordinal, None)))
            .collect()
    } else {
        let open_on = driver::ordinal_of(&record.uuid)
            .map_err(before)?
            .unwrap_or(device);
        record
            .tensors
            .iter()
            .map(|e| {
                e.map(|e| {
                    MAPPINGS
                        .open(meta.producer.pid, &e, open_on)
                        .map(|m| (m.ptr + e.offset, open_on, Some(m)))
                })
                .transpose()
            })
            .collect::<Result<_>>()
            .map_err(before)?
    };
    // The producer's work on the tensors comes first.
    if let Some(handle) = &record.event {
        let local = same_process
            .then(|| LOCAL_EVENTS.lock().get(handle).and_then(Weak::upgrade))
            .flatten();
        match local {
            Some(event) => event.wait_on(stream, device),
            None if same_process => Err(Error::new(
                ErrorKind::NotFound,
                "the object's producer (this process) no longer holds it",
            )),
            None => Event::open_ipc(device, handle).and_then(|e| e.wait_on(stream, device)),
        }
        .map_err(before)?;
    }
    let done = Event::new(device, false).map_err(before)?;
    let mut issued = false;
    let copies = sources
        .iter()
        .zip(offsets)
        .zip(&meta.tensors)
        .filter_map(|((s, &off), t)| s.as_ref().map(|s| (s, off, t.nbytes as usize)))
        .try_for_each(|((src, src_device, _), off, len)| {
            issued = true;
            driver::copy(lease.ptr() + off, device, *src, *src_device, len, stream)
        })
        .and_then(|_| done.record(stream))
        .and_then(|_| done.wait(deadline, "copying over CUDA IPC", || Ok(())));
    match copies {
        Ok(()) => Ok(done),
        Err(e) => Err((e, issued)),
    }
}
