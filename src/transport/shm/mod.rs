//! `shm`: same-host, one-sided transport for CPU tensors; no collective group.
//!
//! Into new tensors: the consumer asks the producer's endpoint for the object;
//! the producer copies its extents into a shared-memory segment and passes the
//! descriptor back over the Unix socket; the consumer's tensors are views of
//! its mapping, released by their DLPack deleters. One memory copy in total.
//! When the consumer has an idle segment from an earlier transfer ([`pool`]) it
//! sends that one along with the request and the producer writes into it, so
//! repeated transfers skip the kernel's page zeroing and faulting.
//!
//! Into the caller's tensors (targets), objects from 1 MiB to 4 GiB: the
//! producer copies the object once into a staging segment, chunk by chunk, and
//! every consumer reading it at the time copies from there into its targets as
//! the chunks land ([`staged`]): one memcpy on each side, however many
//! consumers. Smaller and larger objects: the producer answers with its
//! extents' addresses and holds the object until the consumer has read them
//! straight into the targets ([`cma`]); where the kernel forbids that, the
//! segment path and one more copy. An object that lies in one of the
//! producer's shared regions (memory the plugin allocated, [`shared`]) is
//! copied by each consumer straight from its mapping of the region, whatever
//! the size: one memcpy per consumer and none by the producer. Across hosts
//! it is a clear error.

mod cma;
mod mappings;
mod pool;
mod segment;
pub(crate) mod shared;
mod staged;

use super::{fetch_request, Local, Peer, Served, Transport};
use crate::copy::copy_pieces;
use crate::dlpack::DLDevice;
use crate::endpoint::{wire, Channel};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{packed_extents, Runs};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{is_host, Tensor};
use crate::transport_kind::TransportKind;
use mappings::MappingCache;
use pool::{Lease, Segment, SegmentPool};
use segment::Mapping;
use staged::Stagings;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the producer waits for a consumer to take its reply (a few bytes
/// and a descriptor: the socket buffer takes it at once unless the consumer is
/// gone or stuck).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Request mode: write the extents into a segment.
const MODE_SEGMENT: u8 = 0;
/// Request mode: answer with the extents' addresses, hold the object until the
/// consumer says it has read them.
const MODE_READ: u8 = 1;
/// Request mode: read through the producer's staging segment ([`staged`]).
const MODE_STAGED: u8 = 2;
/// Reply mode (to [`MODE_READ`] and [`MODE_STAGED`]): the object lies in one
/// of the producer's shared regions ([`shared`]), whose file comes with the
/// reply; copy from it, then say done.
const MODE_MAPPED: u8 = 3;
/// Most extent addresses per reply frame (8 bytes each, well under a frame).
const ADDRESSES_PER_FRAME: usize = 65_536;

/// Whether this process may read other processes' memory (cleared, once, at
/// the first refusal).
static READ_PERMITTED: AtomicBool = AtomicBool::new(true);

/// The shm transport: the consumer's pool of idle segments and its mappings
/// of producers' staging segments; the producer's mappings of segments it
/// wrote and its staging segments.
#[derive(Debug)]
pub struct Shm {
    pool: SegmentPool,
    staged: MappingCache,
    written: MappingCache,
    stagings: Stagings,
}

impl Default for Shm {
    fn default() -> Self {
        Shm {
            pool: SegmentPool::default(),
            staged: MappingCache::bounded_by("RAY_RDT_SHM_STAGED_CACHE_BYTES"),
            written: MappingCache::bounded_by("RAY_RDT_SHM_PRODUCER_CACHE_BYTES"),
            stagings: Stagings::default(),
        }
    }
}

fn other_host_error() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "the shm transport only works between processes on the same host: the producer is on another host (another node); use gloo or nixl",
    )
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

    fn is_same_host_path(&self) -> bool {
        true
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
        id: &ObjectId,
        object: &StoredObject,
        request: &[u8],
        channel: &mut Channel,
    ) -> Result<Served> {
        if !channel.passes_descriptors() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("the shm transport only works between processes on the same host: {} reached this producer from another host; use gloo or nixl", channel.peer()),
            ));
        }
        match request {
            [mode @ (MODE_READ | MODE_STAGED), rest @ ..] => {
                let (may_read, timeout) = read_request(*mode, rest)?;
                // An object in one of this process's shared regions is
                // copied from there by every reader, whatever it asked for.
                if let Some((region, offsets)) = shared::holding(&object.layout.extents) {
                    crate::hold::point("serve");
                    serve_mapped(&region, &offsets, channel, timeout)
                } else if *mode == MODE_READ {
                    crate::hold::point("serve");
                    serve_read(object, channel, timeout)
                } else {
                    self.stagings.serve(id, object, may_read, timeout, channel)
                }
                .map(|()| Served::Sent)
            }
            [] | [MODE_SEGMENT, ..] => {
                let fd = channel.take_received_descriptor();
                self.serve_segment(object, fd, channel)
                    .map(|()| Served::Sent)
            }
            [mode, ..] => Err(Error::transport(format!(
                "unknown shm request mode {mode} (a plugin of another version?)"
            ))),
        }
    }

    fn fetch(
        &self,
        _local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let (offsets, lease) = self.fetch_segment(peer, id, meta, timeout)?;
        let Some(lease) = lease else {
            return Ok(crate::layout::views(
                meta,
                std::ptr::NonNull::<u64>::dangling().as_ptr() as usize,
                &offsets,
                DLDevice::cpu(),
                Arc::new(()),
            ));
        };
        let base = lease.as_ptr() as usize;
        Ok(crate::layout::views(
            meta,
            base,
            &offsets,
            DLDevice::cpu(),
            lease,
        ))
    }

    fn fetch_into(
        &self,
        _local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        runs: &Runs,
        timeout: Duration,
    ) -> Result<()> {
        if !peer.same_host {
            return Err(other_host_error());
        }
        self.staged.forget_dead_peers();
        let staged = staged::applies(packed_extents(&meta.extents).1);
        if READ_PERMITTED.load(Ordering::Relaxed) {
            let read = if staged {
                staged::read(&self.staged, peer, id, meta, runs, timeout, true)
            } else {
                read_into(&self.staged, peer, id, meta, runs, timeout)
            };
            match read {
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    READ_PERMITTED.store(false, Ordering::Relaxed);
                    log::warn!("ray-rdt: {e}; same-host transfers into targets go through shared-memory segments");
                }
                done => return done,
            }
        }
        if staged {
            return staged::read(&self.staged, peer, id, meta, runs, timeout, false);
        }
        let (offsets, lease) = self.fetch_segment(peer, id, meta, timeout)?;
        let Some(lease) = lease else { return Ok(()) };
        let base = lease.as_ptr() as usize;
        let starts: Vec<usize> = offsets.iter().map(|&o| base + o as usize).collect();
        let pieces = runs.pieces(&starts);
        // SAFETY: the sources lie in the segment (the runs were checked against
        // the record's extents), the destinations in the caller's targets.
        unsafe { copy_pieces(&pieces) };
        Ok(())
    }
}

impl Shm {
    /// Producer: writes the extents into the consumer's segment if it sent one,
    /// else into a new one whose descriptor goes back with the reply.
    fn serve_segment(
        &self,
        object: &StoredObject,
        fd: Option<OwnedFd>,
        channel: &mut Channel,
    ) -> Result<()> {
        let (_, total) = packed_extents(&object.layout.lengths());
        let (fd, fresh) = match fd {
            Some(fd) => (Some(fd), false),
            None if total == 0 => (None, false),
            None => (Some(segment::create(c"ray-rdt-shm", total)?), true),
        };
        crate::hold::point("serve");
        self.written.forget_dead_peers();
        if let Some(fd) = &fd {
            let (id, size) = segment::identity(fd)?;
            let peer = channel.peer_pid().unwrap_or(0);
            segment::fill(&*self.written.get(id, peer, fd, size as usize)?, object)?;
        }
        let reply_fd = if fresh { fd } else { None };
        channel.send_with_fd(&[wire::REPLY_OK], reply_fd.as_ref(), REPLY_TIMEOUT)?;
        Ok(())
    }

    /// Consumer: the object's extents in a segment (the extents' offsets in it,
    /// and the segment; none for an object of no bytes).
    fn fetch_segment(
        &self,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<(Vec<u64>, Option<Arc<Lease>>)> {
        if !peer.same_host {
            return Err(other_host_error());
        }
        let (offsets, total) = packed_extents(&meta.extents);
        // An object of no bytes still asks the producer: it must still hold it.
        let reused = if total == 0 {
            None
        } else {
            self.pool.take(total as usize)
        };
        let request = fetch_request(TransportKind::Shm, meta, id, &[MODE_SEGMENT]);
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
        Ok((offsets, segment.map(|s| self.pool.lease(s))))
    }
}

/// Producer: sends the extents' addresses and holds the object until the
/// consumer has read them (or `timeout` passed). The first frame says
/// [`MODE_READ`], for a consumer that asked for [`MODE_STAGED`] and is told to
/// read directly.
fn serve_read(object: &StoredObject, channel: &mut Channel, timeout: Duration) -> Result<()> {
    let addrs: Vec<u64> = object
        .layout
        .extents
        .iter()
        .map(|e| e.addr as u64)
        .collect();
    serve_in_place(
        channel,
        vec![wire::REPLY_OK, MODE_READ],
        &addrs,
        None,
        timeout,
    )
}

/// Producer: sends the shared region that holds the object (its file, its
/// size, each extent's offset in it) and holds the object until the consumer
/// has copied from it (or `timeout` passed).
fn serve_mapped(
    region: &shared::Region,
    offsets: &[u64],
    channel: &mut Channel,
    timeout: Duration,
) -> Result<()> {
    let mut first = vec![wire::REPLY_OK, MODE_MAPPED];
    first.extend_from_slice(&(region.len() as u64).to_le_bytes());
    serve_in_place(channel, first, offsets, Some(region.fd()), timeout)
}

/// Producer: sends `first` (the reply's first frame so far, with `fd` if
/// any), the count of `numbers` and the numbers (8 bytes each, over as many
/// frames as it takes); then the object (and its memory) stays alive until
/// the consumer says it is done with them.
fn serve_in_place(
    channel: &mut Channel,
    mut frame: Vec<u8>,
    numbers: &[u64],
    fd: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<()> {
    frame.extend_from_slice(&(numbers.len() as u64).to_le_bytes());
    let mut chunks = numbers.chunks(ADDRESSES_PER_FRAME);
    let mut fd = fd;
    loop {
        if let Some(chunk) = chunks.next() {
            chunk
                .iter()
                .for_each(|a| frame.extend_from_slice(&a.to_le_bytes()));
        }
        channel.send_with_fd(&frame, fd.take(), REPLY_TIMEOUT)?;
        if chunks.len() == 0 {
            break;
        }
        frame = Vec::with_capacity(8 * ADDRESSES_PER_FRAME);
    }
    channel.recv(timeout)?;
    channel.send(&[wire::REPLY_OK], REPLY_TIMEOUT)
}

/// What a [`MODE_READ`] (`rest`: the timeout) or [`MODE_STAGED`] (`rest`:
/// may-read byte, then the timeout) request asks: whether the reader may
/// read this process's memory (always, for a direct read), and its timeout
/// in milliseconds.
fn read_request(mode: u8, rest: &[u8]) -> Result<(bool, Duration)> {
    let (may_read, timeout) = match (mode, rest) {
        (MODE_STAGED, [may_read, timeout @ ..]) => (*may_read != 0, timeout),
        (MODE_READ, timeout) => (true, timeout),
        _ => (false, &[][..]),
    };
    let timeout = Duration::from_millis(le_u64(timeout, "shm read request")?);
    Ok((may_read, timeout))
}

/// The little-endian number that makes up all of `bytes` (eight of them),
/// or an error naming `what` as malformed.
fn le_u64(bytes: &[u8], what: &str) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| Error::transport(format!("malformed {what}")))
}

/// A request's body: `mode`, then `extra`, then `timeout` in milliseconds.
fn request_body(mode: u8, extra: &[u8], timeout: Duration) -> Vec<u8> {
    let mut body = vec![mode];
    body.extend_from_slice(extra);
    body.extend_from_slice(&(timeout.as_millis().min(u64::MAX as u128) as u64).to_le_bytes());
    body
}

/// Consumer: reads the producer's extents straight into the caller's tensors
/// (or copies them from the producer's shared region, mapped through
/// `mappings`).
fn read_into(
    mappings: &MappingCache,
    peer: &Peer<'_>,
    id: &ObjectId,
    meta: &Metadata,
    runs: &Runs,
    timeout: Duration,
) -> Result<()> {
    let deadline = super::deadline_after(timeout);
    let request = fetch_request(
        TransportKind::Shm,
        meta,
        id,
        &request_body(MODE_READ, &[], timeout),
    );
    peer.exchange(timeout, |channel| {
        channel.send(&request, timeout)?;
        let reply = channel.recv(timeout)?;
        match wire::parse_reply(&reply.payload)? {
            [MODE_READ, rest @ ..] => read_direct(channel, rest, meta, runs, deadline),
            [MODE_MAPPED, rest @ ..] => {
                read_mapped(mappings, channel, reply.fd, rest, meta, runs, deadline)
            }
            _ => Err(Error::transport("malformed shm read reply")),
        }
    })
}

/// Consumer, told to read directly (`first`: the first reply's body after
/// the mode): takes the extents' addresses, reads them from the producer's
/// memory into the caller's tensors, and says it is done.
fn read_direct(
    channel: &mut Channel,
    first: &[u8],
    meta: &Metadata,
    runs: &Runs,
    deadline: std::time::Instant,
) -> Result<()> {
    let addrs: Vec<usize> = recv_extent_numbers(channel, first, meta, deadline)?
        .into_iter()
        .map(|a| a as usize)
        .collect();
    let pid = channel
        .peer_pid()
        .ok_or_else(|| Error::transport("the same-host channel names no peer process"))?;
    let pieces = runs.pieces(&addrs);
    crate::hold::point("fetch");
    // SAFETY: the destinations are the caller's targets, checked against
    // the runs; the kernel checks the sources against the producer's memory.
    let read = unsafe { cma::read(pid, &pieces, deadline) };
    say_done(channel, read, deadline)
}

/// Consumer, told the object lies in the producer's shared region (`fd`;
/// `first`: the first reply's body after the mode): maps the region (kept in
/// `mappings` for the next step), copies the extents from it into the
/// caller's tensors, and says it is done.
fn read_mapped(
    mappings: &MappingCache,
    channel: &mut Channel,
    fd: Option<OwnedFd>,
    first: &[u8],
    meta: &Metadata,
    runs: &Runs,
    deadline: std::time::Instant,
) -> Result<()> {
    let (size, first) = first
        .split_first_chunk::<8>()
        .map(|(size, rest)| (u64::from_le_bytes(*size), rest))
        .ok_or_else(|| Error::transport("malformed shm mapped reply"))?;
    let fd = fd.ok_or_else(|| Error::transport("the producer sent no shared region"))?;
    let offsets = recv_extent_numbers(channel, first, meta, deadline)?;
    let identity = shared::check_sent(&fd, size, &offsets, &meta.extents)?;
    let producer = channel.peer_pid().unwrap_or(0);
    let mapping = mappings.get(identity, producer, &fd, size as usize)?;
    let base = mapping.as_ptr() as usize;
    let starts: Vec<usize> = offsets.iter().map(|&o| base + o as usize).collect();
    let pieces = runs.pieces(&starts);
    crate::hold::point("fetch");
    // SAFETY: the sources lie in the mapping (every extent was checked to lie
    // in the region), the destinations in the caller's targets.
    unsafe { copy_pieces(&pieces) };
    say_done(channel, Ok(()), deadline)
}

/// Consumer: the count and the numbers (one per extent of the record) that
/// follow a reply's mode, from `first` and as many more frames as they take.
fn recv_extent_numbers(
    channel: &mut Channel,
    first: &[u8],
    meta: &Metadata,
    deadline: std::time::Instant,
) -> Result<Vec<u64>> {
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let (count, mut rest) = first
        .split_first_chunk::<8>()
        .map(|(c, rest)| (u64::from_le_bytes(*c), rest.to_vec()))
        .ok_or_else(|| Error::transport("malformed shm read reply"))?;
    if count != meta.extents.len() as u64 {
        return Err(Error::transport(format!(
            "the producer holds {count} extents, the record describes {}",
            meta.extents.len()
        )));
    }
    while (rest.len() as u64) < 8 * count {
        rest.extend_from_slice(&channel.recv(left())?.payload);
    }
    if rest.len() as u64 != 8 * count {
        return Err(Error::transport("malformed shm read reply"));
    }
    Ok(rest
        .chunks_exact(8)
        .map(|a| u64::from_le_bytes(a.try_into().expect("8 bytes")))
        .collect())
}

/// Consumer: tells the producer the read is over (`read`: how it went) and
/// waits for its word; returns `read`'s outcome.
fn say_done(channel: &mut Channel, read: Result<()>, deadline: std::time::Instant) -> Result<()> {
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    channel.send(&[u8::from(read.is_err())], left())?;
    wire::parse_reply(&channel.recv(left())?.payload)?;
    read
}
