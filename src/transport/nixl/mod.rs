//! `nixl`: one-sided transport over NIXL (UCX backend), CPU and CUDA tensors, no
//! collective group. See docs/nixl.md for the design and measurements.
//!
//! - **Producer** ([`Transport::export`], when the actor method returns): the
//!   tensors' memory is registered with the process's serving agent
//!   ([`agent::serving`], progress thread on) through a refcounted registration
//!   cache ([`registry`]); the record's transport data ([`record`]) carries the
//!   agent's name and connection info, the metadata of this object's
//!   registrations and one descriptor per tensor. Nothing else happens on the
//!   producer: consumers read its memory directly. [`Transport::release`] (object
//!   freed) drops the object's registration references.
//! - **Consumer** ([`Transport::fetch`]): the process's fetching agent
//!   ([`agent::fetching`], no progress thread: the waiting thread drives it) loads
//!   the producer's metadata once per producer agent ([`remote`]), allocates one
//!   destination buffer for the object (host memory: from [`HostBuffer`], 2 MiB
//!   aligned and huge-page advised, for objects of [`MAPPED_FROM`] bytes and more,
//!   else from [`heap`], which keeps a long-running consumer's memory flat; CUDA
//!   memory from `cuda.rs` for `kDLCUDA` objects), registers it, posts one READ for
//!   all tensors and waits until the timeout. The destination's registration
//!   lives as long as the received tensors.
//!
//! NIXL is loaded lazily on first use ([`library`]); where it is missing, the
//! transport reports [`ErrorKind::Unavailable`] naming what to install, and the
//! process lives on. Objects whose tensors are all empty never touch NIXL.
//!
//! Counters: the consumer counts `bytes_received`. One-sided reads do not involve
//! the producer, so the producer's `bytes_sent` stays 0 for nixl (documented).

pub mod agent;
pub mod heap;
pub mod library;
pub mod record;
pub mod registry;
pub mod remote;

use super::{deadline_after, Local, Peer, Transport};
use crate::copy::split_at_bytes;
#[cfg(feature = "cuda")]
use crate::cuda::pool::{self, Lease};
#[cfg(feature = "cuda")]
use crate::cuda::{self as cuda_layer, current};
use crate::dlpack::{kDLCUDA, DLDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{packed_extents, Runs};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{is_host, HostBuffer, Tensor};
use crate::transport_kind::TransportKind;
use agent::{ReadError, Region};
use heap::HeapBuffer;
use nixl_sys::RegistrationHandle;
use parking_lot::Mutex;
use record::{Desc, Record};
use registry::Registry;
use remote::Peers;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The process's registrations (one serving agent per process).
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);
/// The producers this process has loaded.
static PEERS: LazyLock<Peers> = LazyLock::new(Peers::default);

/// Loads NIXL (once per process) and creates the process's fetching agent, or
/// says why not.
pub fn available() -> Result<()> {
    agent::fetching().map(|_| ())
}

/// Destination registrations of received objects alive in this process.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// Host objects of at least this many bytes are received into a [`HostBuffer`]
/// (which maps, and caches, buffers from this size up); smaller ones into a
/// [`HeapBuffer`] (see [`heap`] for why not a `HostBuffer`).
const MAPPED_FROM: usize = 2 << 20;

/// (registered ranges, references on them) in this process, for tests and debugging.
pub fn registration_stats() -> (usize, usize) {
    REGISTRY.stats()
}

/// This process's [`crate::stats::NixlStats`]. Touches no NIXL state: a process that never
/// used nixl reads zeros.
pub fn stats() -> crate::stats::NixlStats {
    let (exported_ranges, exported_refs) = REGISTRY.stats();
    let (loaded_peers, loaded_ranges) = PEERS.stats();
    crate::stats::NixlStats {
        exported_ranges,
        exported_refs,
        received: RECEIVED.load(Ordering::Relaxed),
        loaded_peers,
        loaded_ranges,
    }
}

/// What the producer keeps for one exported object: the regions it holds
/// references on.
struct Export {
    regions: Vec<Region>,
}

/// The nixl transport of one context.
#[derive(Default)]
pub struct Nixl {
    exports: Mutex<HashMap<ObjectId, Export>>,
}

/// NIXL's view of a device: (CUDA?, device ID).
fn memory_of(device: DLDevice) -> Result<(bool, u64)> {
    if is_host(device) {
        Ok((false, 0))
    } else if device.device_type == kDLCUDA && !cfg!(feature = "cuda") {
        Err(Error::new(
            ErrorKind::Unsupported,
            "this build of the plugin moves no CUDA tensors (built without the cuda feature)",
        ))
    } else if device.device_type == kDLCUDA {
        Ok((
            true,
            u64::try_from(device.device_id).map_err(|_| {
                Error::invalid(format!("negative CUDA device id {}", device.device_id))
            })?,
        ))
    } else {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the nixl transport moves CPU and CUDA tensors, not device type {}",
                device.device_type
            ),
        ))
    }
}

/// Received memory: host (mapped or heap), or pooled CUDA memory ([`crate::cuda::pool`]).
enum Buffer {
    Host(HostBuffer),
    Heap(HeapBuffer),
    #[cfg(feature = "cuda")]
    Cuda(Lease),
}

impl Buffer {
    /// Host memory for `len` bytes: a mapping from [`MAPPED_FROM`] up, else heap.
    fn host(len: usize) -> Result<Buffer> {
        Ok(if len >= MAPPED_FROM {
            Buffer::Host(HostBuffer::new(len)?)
        } else {
            Buffer::Heap(HeapBuffer::new(len)?)
        })
    }

    fn addr(&self) -> usize {
        match self {
            Buffer::Host(b) => b.as_ptr() as usize,
            Buffer::Heap(b) => b.as_ptr() as usize,
            #[cfg(feature = "cuda")]
            Buffer::Cuda(b) => b.ptr() as usize,
        }
    }
}

/// How long a put of CUDA tensors waits for the work that produces them
/// (`RAY_RDT_CUDA_SYNC_TIMEOUT_MS`, default 60 s).
pub const CUDA_SYNC_TIMEOUT_ENV: &str = "RAY_RDT_CUDA_SYNC_TIMEOUT_MS";

/// A received object's destination registration, counted in [`crate::stats::NixlStats::received`].
struct Registration {
    /// Deregisters on drop.
    _handle: RegistrationHandle,
}

impl Registration {
    fn new(handle: RegistrationHandle) -> Self {
        RECEIVED.fetch_add(1, Ordering::Relaxed);
        Registration { _handle: handle }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        RECEIVED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Owner of a received object's tensors: deregisters, then frees, when the last
/// tensor goes (field order is drop order).
struct Received {
    _registration: Option<Registration>,
    _buffer: Buffer,
}

// SAFETY: the buffer is only reached through the tensors' raw pointers; this
// value is just kept alive and dropped once.
unsafe impl Sync for Received {}

impl Transport for Nixl {
    fn kind(&self) -> TransportKind {
        TransportKind::Nixl
    }

    fn serves(&self, device: DLDevice) -> bool {
        memory_of(device).is_ok()
    }

    fn devices(&self) -> &'static str {
        "CPU and CUDA tensors"
    }

    fn export(
        &self,
        id: &ObjectId,
        object: &StoredObject,
        _group: Option<&str>,
    ) -> Result<Vec<u8>> {
        let device = object
            .tensors
            .first()
            .map(Tensor::device)
            .unwrap_or(DLDevice::cpu());
        let (cuda, dev) = memory_of(device)?;
        if object.layout.extents.is_empty() {
            return Record {
                agent: String::new(),
                conn_md: Vec::new(),
                sections_md: Vec::new(),
                descs: Vec::new(),
            }
            .encode();
        }
        #[cfg(feature = "cuda")]
        if cuda {
            wait_for_producing_work(dev)?;
        }
        let rt = agent::serving()?;
        // One registration per extent (a view of an allocation another object
        // or a pinned registration already covers reuses that registration).
        let regions: Vec<Region> = object
            .layout
            .extents
            .iter()
            .map(|e| Region {
                addr: e.addr,
                len: e.len as usize,
                dev,
                cuda,
            })
            .collect();
        let registered = REGISTRY.acquire(rt, &regions)?;
        let encoded = rt
            .sections_md(&registered.iter().map(|r| r.region).collect::<Vec<_>>())
            .and_then(|sections_md| {
                Record {
                    agent: rt.name().to_owned(),
                    conn_md: rt.conn_md().to_vec(),
                    sections_md,
                    descs: regions
                        .iter()
                        .zip(&registered)
                        .map(|(r, reg)| Desc {
                            addr: r.addr as u64,
                            len: r.len as u64,
                            dev: reg.region.dev,
                            reg_id: reg.id,
                        })
                        .collect(),
                }
                .encode()
            });
        match encoded {
            Ok(bytes) => {
                let previous = self.exports.lock().insert(*id, Export { regions });
                if let Some(old) = previous {
                    REGISTRY.release(&old.regions);
                }
                Ok(bytes)
            }
            Err(e) => {
                REGISTRY.release(&regions);
                Err(e)
            }
        }
    }

    fn export_inline(
        &self,
        _id: &ObjectId,
        object: &StoredObject,
        _group: Option<&str>,
    ) -> Result<Vec<u8>> {
        // Nothing to register (no consumer reads this object's memory), but the
        // process must have NIXL, as for any nixl object with bytes.
        if object.nbytes() > 0 {
            library::load()?;
        }
        Ok(Vec::new())
    }

    fn check_consumer(&self, meta: &Metadata) -> Result<()> {
        if meta.total_bytes() == 0 {
            return Ok(()); // objects of empty tensors never touch NIXL
        }
        library::load().map(|_| ())
    }

    fn release(&self, id: &ObjectId) {
        let export = self.exports.lock().remove(id);
        if let Some(export) = export {
            REGISTRY.release(&export.regions);
        }
    }

    fn serve(
        &self,
        _local: &Local<'_>,
        _id: &ObjectId,
        _object: &StoredObject,
        _request: &[u8],
        _channel: &mut crate::endpoint::Channel,
    ) -> Result<super::Served> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "nixl transfers are one-sided reads: the producer's endpoint serves no nixl requests",
        ))
    }

    fn fetch(
        &self,
        _local: &Local<'_>,
        _peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let deadline = deadline_after(timeout);
        let record = checked_record(meta)?;
        let (cuda, _) = memory_of(meta.device)?;
        let (offsets, total) = packed_extents(&meta.extents);
        #[cfg(feature = "cuda")]
        if cuda && total == 0 {
            let device = DLDevice {
                device_type: kDLCUDA,
                device_id: current::device(),
            };
            let metas = meta.tensors.clone();
            return Ok(pool::empty_tensors(metas, device));
        }
        let (buffer, local_dev) = receive_buffer(cuda, total, deadline)?;
        let base = buffer.addr();
        let mut owner = Received {
            _registration: None,
            _buffer: buffer,
        };
        // Objects whose tensors are all empty never touch NIXL.
        if total > 0 {
            let rt = agent::fetching()?;
            owner._registration = Some(Registration::new(rt.register(Region {
                addr: base,
                len: total as usize,
                dev: local_dev.device_id as u64,
                cuda,
            })?));
            let local: Vec<Region> = record
                .descs
                .iter()
                .zip(&offsets)
                .map(|(d, &off)| Region {
                    addr: base + off as usize,
                    len: d.len as usize,
                    dev: local_dev.device_id as u64,
                    cuda,
                })
                .collect();
            let remote = remote_regions(cuda, record.descs.iter().map(|d| (d, 0, d.len)));
            if let Err(ReadError { error, in_flight }) =
                read_from(rt, &record, &local, &remote, deadline)
            {
                if in_flight {
                    log::warn!("ray-rdt: a timed-out NIXL read of {id} may still be writing: keeping its {total}-byte buffer");
                    std::mem::forget(owner);
                }
                return Err(error);
            }
        }
        Ok(crate::layout::views(
            meta,
            base,
            &offsets,
            local_dev,
            Arc::new(owner),
        ))
    }

    fn fetch_into(
        &self,
        _local: &Local<'_>,
        _peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        runs: &Runs,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = deadline_after(timeout);
        let record = checked_record(meta)?;
        if memory_of(meta.device)?.0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the plugin's nixl receives CUDA objects into new tensors only",
            ));
        }
        if runs.total() == 0 {
            return Ok(());
        }
        let rt = agent::fetching()?;
        // The targets are registered for this read (what they span, one
        // registration per stretch of neighbouring targets).
        let spans: Vec<(usize, usize)> = runs
            .runs
            .iter()
            .map(|r| (r.dst, r.dst + r.len as usize))
            .collect();
        let _registrations = crate::layout::coalesce(&spans, false)
            .into_iter()
            .map(|(start, end)| {
                rt.register(Region {
                    addr: start,
                    len: end - start,
                    dev: 0,
                    cuda: false,
                })
                .map(Registration::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let local: Vec<Region> = runs
            .runs
            .iter()
            .map(|r| Region {
                addr: r.dst,
                len: r.len as usize,
                dev: 0,
                cuda: false,
            })
            .collect();
        let remote = remote_regions(
            false,
            runs.runs
                .iter()
                .map(|r| (&record.descs[r.extent as usize], r.offset, r.len)),
        );
        read_from(rt, &record, &local, &remote, deadline).map_err(|ReadError { error, in_flight }| {
            if in_flight {
                // The caller's tensors cannot be kept: they may still receive
                // bytes after this error (as with any timed-out one-sided read).
                log::warn!("ray-rdt: a timed-out NIXL read of {id} into target tensors may still be writing into them");
            }
            error
        })
    }
}

/// A one-sided read cannot wait on the producer's stream: the work that
/// produces CUDA tensors completes before they are registered (an event on the
/// producer's current stream of device `dev`, waited on here).
#[cfg(feature = "cuda")]
fn wait_for_producing_work(dev: u64) -> Result<()> {
    let timeout = crate::settings::millis_or(CUDA_SYNC_TIMEOUT_ENV, Duration::from_secs(60));
    cuda_layer::mark_current_work(dev as i32, false)?.wait(
        deadline_after(timeout),
        "the work producing the CUDA tensors put for nixl",
        || Ok(()),
    )
}

/// New memory for an object of `total` bytes, on the consumer's current CUDA
/// device for CUDA objects, else host memory; and its device.
fn receive_buffer(cuda: bool, total: u64, deadline: Instant) -> Result<(Buffer, DLDevice)> {
    if cuda {
        cuda_buffer(total, deadline)
    } else {
        Ok((Buffer::host(total as usize)?, DLDevice::cpu()))
    }
}

/// A block of the CUDA pool on the consumer's current device, once its
/// previous user is done with it (NIXL writes outside any stream of ours).
#[cfg(feature = "cuda")]
fn cuda_buffer(total: u64, deadline: Instant) -> Result<(Buffer, DLDevice)> {
    let mut lease = Lease::take(current::device(), total as usize)?;
    lease.wait_previous_use(deadline)?;
    lease.release_on(current::stream(lease.device()));
    let device = DLDevice {
        device_type: kDLCUDA,
        device_id: lease.device(),
    };
    Ok((Buffer::Cuda(lease), device))
}

/// No CUDA memory without the cuda feature ([`memory_of`] refuses CUDA objects first).
#[cfg(not(feature = "cuda"))]
fn cuda_buffer(_total: u64, _deadline: Instant) -> Result<(Buffer, DLDevice)> {
    memory_of(DLDevice {
        device_type: kDLCUDA,
        device_id: 0,
    })
    .and(Err(Error::new(
        ErrorKind::Internal,
        "no CUDA memory in this build",
    )))
}

/// The record's nixl part, checked against its extents.
fn checked_record(meta: &Metadata) -> Result<Record> {
    let record = Record::decode(&meta.transport_data)?;
    if record.descs.len() != meta.extents.len() {
        return Err(Error::malformed(format!(
            "nixl transport data describes {} extents, the record {}",
            record.descs.len(),
            meta.extents.len()
        )));
    }
    if let Some(i) = record
        .descs
        .iter()
        .zip(&meta.extents)
        .position(|(d, &len)| d.len != len)
    {
        return Err(Error::malformed(format!(
            "nixl descriptor {i} is {} bytes, extent {i} {}",
            record.descs[i].len, meta.extents[i]
        )));
    }
    if meta.extent_bytes() > 0 && record.agent.is_empty() {
        return Err(Error::malformed(
            "nixl transport data names no producer agent for a non-empty object",
        ));
    }
    Ok(record)
}

/// The producer's regions to read: `(descriptor, offset, length)` pieces of
/// its extents.
fn remote_regions<'a>(
    cuda: bool,
    pieces: impl Iterator<Item = (&'a Desc, u64, u64)>,
) -> Vec<Region> {
    pieces
        .map(|(d, offset, len)| Region {
            addr: (d.addr + offset) as usize,
            len: len as usize,
            dev: d.dev,
            cuda,
        })
        .collect()
}

/// Reads `remote` of the record's producer into `local`, loading the producer
/// first; a failed read forgets the producer (it may be gone or restarted).
fn read_from(
    rt: &agent::Runtime,
    record: &Record,
    local: &[Region],
    remote: &[Region],
    deadline: Instant,
) -> Result<(), ReadError> {
    crate::hold::point("fetch");
    let result = PEERS
        .with_loaded(rt, record, |_| {
            read_in_parallel(rt, local, remote, &record.agent, deadline)
        })
        .map_err(|error| ReadError {
            error,
            in_flight: false,
        })
        .and_then(|r| r);
    if result.is_err() {
        PEERS.forget(rt, &record.agent);
    }
    result
}

/// Objects at least this large are read as two halves from two threads: one
/// thread's cross-memory read does not saturate memory bandwidth.
const PARALLEL_READ_FROM: usize = 16 << 20;

/// Reads the regions, large objects as two concurrent READs of half the bytes each.
fn read_in_parallel(
    rt: &agent::Runtime,
    local: &[Region],
    remote: &[Region],
    agent: &str,
    deadline: Instant,
) -> Result<(), agent::ReadError> {
    let total: usize = local.iter().map(|r| r.len).sum();
    if total < PARALLEL_READ_FROM || local.iter().any(|r| r.cuda) {
        return rt.read(local, remote, agent, deadline);
    }
    let pairs: Vec<(Region, Region)> = local.iter().copied().zip(remote.iter().copied()).collect();
    let cut = |r: &Region, head: usize| {
        (
            Region { len: head, ..*r },
            Region {
                addr: r.addr + head,
                len: r.len - head,
                ..*r
            },
        )
    };
    let (first, second) = split_at_bytes(
        &pairs,
        total / 2 / 4096 * 4096,
        |p| p.0.len,
        |p, head| {
            let ((l0, l1), (r0, r1)) = (cut(&p.0, head), cut(&p.1, head));
            ((l0, r0), (l1, r1))
        },
    );
    let unzip = |v: Vec<(Region, Region)>| -> (Vec<Region>, Vec<Region>) { v.into_iter().unzip() };
    let ((l0, r0), (l1, r1)) = (unzip(first), unzip(second));
    std::thread::scope(|scope| {
        let other = scope.spawn(|| rt.read(&l1, &r1, agent, deadline));
        let mine = rt.read(&l0, &r0, agent, deadline);
        let theirs = other.join().unwrap_or_else(|_| {
            Err(agent::ReadError {
                error: Error::new(ErrorKind::Internal, "a NIXL read thread panicked"),
                in_flight: true,
            })
        });
        mine.and(theirs)
    })
}
