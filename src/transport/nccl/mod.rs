//! `nccl`: two-sided transport over an NCCL collective group (CUDA tensors).
//!
//! NEVER RUN ON A GPU YET (no GPU was lent to this work): the code paths that
//! need no device are tested; the transfers wait for `ci/gpu-nightly`.
//!
//! - **Group** ([`CollectiveGroups::create_group`]): rank 0 creates NCCL's
//!   unique ID and publishes it in the group's rendezvous store (the plugin's,
//!   served by rank 0's process; never a Ray task); every rank reads it and joins
//!   a non-blocking communicator on its current device ([`crate::cuda::current`]),
//!   bounded by the group timeout. Each member has its own stream for the group.
//! - **Put** ([`Transport::export`]): the tensors must be contiguous CUDA tensors
//!   on the group's device; an event recorded on the producer's current stream
//!   marks the work that produces them. The record carries rank and group name.
//! - **Fetch** (pulled by the consumer, like gloo): the consumer takes pooled
//!   memory on its group device ([`crate::cuda::pool`]), asks the producer's
//!   endpoint for the object, and on *go* receives every tensor in one grouped
//!   `ncclRecv`; the producer's stream waits for the put's event (no host or
//!   device-wide synchronisation), then sends in one grouped `ncclSend`. Both sides
//!   wait on the host, until the deadline, for their operation to complete, so
//!   every error is the fetch's; the consumer's current stream then waits for the
//!   receive before anything queued on it later reads the tensors.
//! - **One transfer per rank at a time** ([`turn`]), so crossing transfers
//!   cannot deadlock in NCCL.
//! - **Faults**: any NCCL failure or timeout after an operation was issued aborts
//!   the communicator (`ncclCommAbort`: the way out of a hung NCCL call) and
//!   breaks the group; later transfers fail with "collective group ... was
//!   destroyed by a system error (...)". A refusal before anything was issued
//!   (unknown object, wrong rank) leaves the group usable.

pub mod turn;

use super::group::{
    break_on_system_error, decode_location, encode_location, CollectiveGroups, GroupSpec,
    OwnerReport, PullRequest,
};
use super::group_table::{check_peer_rank, GroupTable, Member};
use super::{deadline_after, fetch_request, packed_layout, Local, Peer, Served, Transport};
use crate::cuda::driver::{self, Event, RawStream};
use crate::cuda::nccl::{self as nccl_api, Comm};
use crate::cuda::pool::{self, Lease};
use crate::cuda::{self, current};
use crate::dlpack::{kDLCUDA, DLDevice};
use crate::endpoint::{wire, Channel};
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{Tensor, TensorMeta};
use crate::transport_kind::TransportKind;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turn::Turns;

/// The producer's answer to a fetch, after `REPLY_OK`: it sends now.
const GO: u8 = 0;
/// The producer's answer to a fetch, after `REPLY_OK`: its rank is busy
/// fetching; try again.
const BUSY: u8 = 1;

/// One joined group.
struct Group {
    name: String,
    comm: Mutex<Comm>,
    rank: usize,
    size: usize,
    device: i32,
    /// The group's stream on `device`.
    stream: RawStream,
    /// Marks the end of the rank's current transfer (one at a time).
    done: Event,
    turns: Turns,
    broken: Mutex<Option<String>>,
    /// Failed transfers go to the group's owner.
    report: OwnerReport,
}

impl Member for Group {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn broken_reason(&self) -> Option<String> {
        self.broken.lock().clone()
    }

    /// Aborts the communicator and records why: every later transfer fails.
    fn break_with(&self, reason: &Error) {
        self.broken.lock().get_or_insert_with(|| reason.to_string());
        self.comm.lock().abort();
        log::error!("ray-rdt: NCCL group {:?} is broken: {reason}", self.name);
    }

    fn leave(&self) {
        // Pending transfers end (they fail); resources go.
        self.comm.lock().abort();
    }

    fn owner_report(&self) -> &OwnerReport {
        &self.report
    }
}

impl Group {
    /// Issues one grouped send or receive of `buffers` with `peer` on the
    /// group's stream, then waits on the host until it completed. Any failure
    /// breaks the group (an issued NCCL operation cannot be taken back).
    fn transfer(
        &self,
        send: bool,
        buffers: &[(u64, usize)],
        peer: usize,
        deadline: Instant,
    ) -> Result<()> {
        let what = if send { "sending" } else { "receiving" };
        let result = self
            .comm
            .lock()
            .exchange(send, buffers, peer, self.stream, deadline)
            .and_then(|_| self.done.record(self.stream))
            .and_then(|_| {
                self.done.wait(
                    deadline,
                    &format!("{what} over NCCL (group {:?}, peer rank {peer})", self.name),
                    || self.comm.lock().state().map(|_| ()),
                )
            });
        result.inspect_err(|e| self.break_with(e))
    }
}

/// The nccl transport: this process's groups and the events of its exports.
pub struct Nccl {
    groups: GroupTable<Group>,
    /// Per exported object: the event marking the work that produced it.
    exports: Mutex<HashMap<ObjectId, Arc<Event>>>,
}

impl Default for Nccl {
    fn default() -> Self {
        Nccl {
            groups: GroupTable::new(TransportKind::Nccl),
            exports: Mutex::default(),
        }
    }
}

/// The store key rank 0 publishes the unique ID under.
fn unique_id_key(group: &str) -> String {
    format!("ray-rdt/nccl/{group}/unique-id")
}

impl CollectiveGroups for Nccl {
    fn create_group(&self, spec: &GroupSpec<'_>) -> Result<()> {
        self.groups.check_join(spec)?;
        let deadline = deadline_after(spec.timeout);
        // Fail early, and the same on every rank, where CUDA or NCCL is missing.
        driver::init()?;
        nccl_api::version()?;
        let key = unique_id_key(spec.name);
        let id: nccl_api::UniqueId = if spec.rank == 0 {
            let id = nccl_api::unique_id()?;
            spec.store.set(&key, &id)?;
            id
        } else {
            let bytes = spec.store.get(&key, spec.timeout)?;
            bytes.as_slice().try_into().map_err(|_| {
                Error::malformed(format!(
                    "the NCCL unique ID of group {:?} has {} bytes, not 128",
                    spec.name,
                    bytes.len()
                ))
            })?
        };
        let device = current::device();
        let comm = Comm::init(&id, spec.rank, spec.world_size, device, deadline).map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "joining NCCL group {:?} as rank {} of {} on cuda:{device}: {e} (NCCL cannot form a \
                     communicator with two ranks on one GPU)",
                    spec.name, spec.rank, spec.world_size
                ),
            )
        })?;
        let group = Group {
            name: spec.name.to_owned(),
            rank: spec.rank,
            size: spec.world_size,
            device,
            stream: driver::new_stream(device)?,
            done: Event::new(device, false)?,
            turns: Turns::default(),
            broken: Mutex::new(None),
            report: OwnerReport::new(spec.owner),
            comm: Mutex::new(comm),
        };
        self.groups.insert(spec.name, group)
    }

    fn destroy_group(&self, name: &str) -> Result<()> {
        self.groups.destroy(name)
    }

    fn break_group(
        &self,
        local: &Local<'_>,
        name: &str,
        object: &ObjectId,
        ranks: Option<(usize, usize)>,
        cause: &Error,
    ) {
        self.groups.break_group(local, name, object, ranks, cause);
    }

    fn group_names(&self) -> Vec<String> {
        self.groups.names()
    }
}

/// `(address, bytes)` of each non-empty tensor.
fn buffers(tensors: &[Tensor]) -> Vec<(u64, usize)> {
    tensors
        .iter()
        .filter(|t| t.meta().nbytes > 0)
        .map(|t| (t.data_ptr() as u64, t.meta().nbytes as usize))
        .collect()
}

fn time_left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl Transport for Nccl {
    fn kind(&self) -> TransportKind {
        TransportKind::Nccl
    }

    fn serves(&self, device: DLDevice) -> bool {
        device.device_type == kDLCUDA
    }

    fn devices(&self) -> &'static str {
        "CUDA tensors only (CPU tensors go with tensor_transport=\"gloo\", \"shm\" or \"nixl\")"
    }

    fn export(&self, id: &ObjectId, object: &StoredObject, group: Option<&str>) -> Result<Vec<u8>> {
        let name = group
            .ok_or_else(|| Error::invalid("the nccl transport needs a collective group name"))?;
        let g = self.groups.usable(name)?;
        for (i, t) in object.tensors.iter().enumerate() {
            if t.device().device_id != g.device {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "tensor {i} is on cuda:{}, but this rank of NCCL group {name:?} communicates from cuda:{}",
                        t.device().device_id,
                        g.device
                    ),
                ));
            }
        }
        if object.nbytes() > 0 {
            let ready = cuda::mark_current_work(g.device, false)?;
            self.exports.lock().insert(*id, Arc::new(ready));
        }
        Ok(encode_location(g.rank, name))
    }

    fn release(&self, id: &ObjectId) {
        self.exports.lock().remove(id);
    }

    fn serve(
        &self,
        local: &Local<'_>,
        id: &ObjectId,
        object: &StoredObject,
        body: &[u8],
        channel: &mut Channel,
    ) -> Result<Served> {
        let req = PullRequest::decode(body)?;
        let group = self.groups.joined(req.group)?;
        let ranks = (group.rank, req.consumer_rank);
        let result = self.serve_pull(&req, id, object, channel);
        break_on_system_error(self, local, req.group, id, ranks, result)
    }

    fn fetch(
        &self,
        local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let (producer_rank, name) = decode_location(&meta.transport_data, "nccl")?;
        let group = self.groups.joined(name)?;
        let ranks = (producer_rank, group.rank);
        let result = self.fetch_pull(peer, id, meta, timeout);
        break_on_system_error(self, local, name, id, ranks, result)
    }

    fn groups(&self) -> Option<&dyn CollectiveGroups> {
        Some(self)
    }
}

impl Nccl {
    /// Producer side of a fetch: answers go (or busy: declined, the consumer
    /// asks again), sends, confirms.
    fn serve_pull(
        &self,
        req: &PullRequest<'_>,
        id: &ObjectId,
        object: &StoredObject,
        channel: &mut Channel,
    ) -> Result<Served> {
        let group = self.groups.usable(req.group)?;
        check_peer_rank(&*group, req.consumer_rank, req.group)?;
        let deadline = deadline_after(req.timeout);
        let Some(_turn) = group.turns.serve(deadline)? else {
            return channel
                .send(&[wire::REPLY_OK, BUSY], req.timeout)
                .map(|()| Served::Declined);
        };
        channel.send(&[wire::REPLY_OK, GO], req.timeout)?;
        let bufs = buffers(&object.tensors);
        if !bufs.is_empty() {
            let ready = self.exports.lock().get(id).cloned();
            if let Some(ready) = ready {
                // The consumer already posted its receive: a failure from here
                // on breaks the group on both sides.
                ready
                    .wait_on(group.stream, group.device)
                    .inspect_err(|e| group.break_with(e))?;
            }
            group.transfer(true, &bufs, req.consumer_rank, deadline)?;
        }
        channel.send(&[wire::REPLY_OK], time_left(deadline))?;
        Ok(Served::Sent)
    }

    /// Consumer side of a fetch: takes this rank's turn and receive memory,
    /// asks the producer to send ([`Pull::once`]), receives on the group's
    /// stream; asks again, backing off, while the producer is busy.
    fn fetch_pull(
        &self,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let (producer_rank, name) = decode_location(&meta.transport_data, "nccl")?;
        let group = self.groups.usable(name)?;
        if meta.device.device_type != kDLCUDA {
            return Err(Error::malformed(
                "an nccl record names a device that is not CUDA",
            ));
        }
        if producer_rank >= group.size || producer_rank == group.rank {
            return Err(Error::malformed(format!(
                "the record names rank {producer_rank} of group {name:?} (this process is rank {} of {})",
                group.rank, group.size
            )));
        }
        let deadline = deadline_after(timeout);
        let metas: Vec<TensorMeta> = meta.tensors.iter().map(TensorMeta::to_compact).collect();
        let (offsets, total) = packed_layout(metas.iter().map(|m| m.nbytes));
        let mut attempt = 0;
        let lease = loop {
            let turn = group.turns.fetch(deadline)?;
            // Memory first: once the producer says go, it sends.
            let lease = match total {
                0 => None,
                n => Some(Lease::take(group.device, n as usize)?),
            };
            let bufs: Vec<(u64, usize)> = lease.as_ref().map_or_else(Vec::new, |lease| {
                metas
                    .iter()
                    .zip(&offsets)
                    .filter(|(m, _)| m.nbytes > 0)
                    .map(|(m, &off)| (lease.ptr() + off, m.nbytes as usize))
                    .collect()
            });
            let pull = Pull {
                group: &group,
                name,
                producer_rank,
                deadline,
            };
            let outcome = pull.once(peer, id, meta, lease.as_ref().map(|l| (l, &bufs[..])));
            match outcome {
                Ok(true) => break lease,
                Ok(false) => {
                    drop(turn);
                    let pause = turn::backoff(attempt);
                    if Instant::now() + pause >= deadline {
                        return Err(Error::timeout(format!(
                            "the producer's rank {producer_rank} of NCCL group {name:?} stayed busy with its own transfers"
                        )));
                    }
                    std::thread::sleep(pause);
                    attempt += 1;
                }
                Err(e) => {
                    // A receive that may still be writing keeps its memory.
                    if let (Some(lease), Some(_)) = (lease, group.broken_reason()) {
                        lease.leak();
                    }
                    return Err(e);
                }
            }
        };
        let device = DLDevice {
            device_type: kDLCUDA,
            device_id: group.device,
        };
        let Some(mut lease) = lease else {
            return Ok(pool::empty_tensors(metas, device));
        };
        lease.release_on(current::stream(group.device));
        Ok(lease.into_tensors(metas, &offsets))
    }
}

/// One consumer's pull of one object over a group.
struct Pull<'a> {
    group: &'a Group,
    name: &'a str,
    producer_rank: usize,
    deadline: Instant,
}

impl Pull<'_> {
    /// Asks the producer once: `Ok(false)` when it is busy; else receives
    /// into `into` (the lease and its buffers; none for an object of no
    /// bytes) and returns `Ok(true)`.
    fn once(
        &self,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        into: Option<(&Lease, &[(u64, usize)])>,
    ) -> Result<bool> {
        let group = self.group;
        let request = PullRequest {
            slot: 0,
            consumer_rank: group.rank,
            timeout: time_left(self.deadline),
            group: self.name,
        };
        peer.exchange(time_left(self.deadline), |channel| {
            channel.send(
                &fetch_request(TransportKind::Nccl, meta, id, &request.encode()),
                time_left(self.deadline),
            )?;
            match wire::parse_reply(&channel.recv(time_left(self.deadline))?.payload)? {
                [BUSY] => return Ok(false),
                [GO] => {}
                _ => return Err(Error::transport("malformed nccl reply from the producer")),
            }
            if let Some((lease, bufs)) = into {
                lease
                    .order_after_previous_use(group.stream)
                    .inspect_err(|e| group.break_with(e))?;
                group.transfer(false, bufs, self.producer_rank, self.deadline)?;
                // The consumer's stream waits for the receive (complete
                // already; this orders stream-side use after it all the
                // same), while this rank's turn keeps `done` unchanged.
                group
                    .done
                    .wait_on(current::stream(group.device), group.device)?;
            }
            wire::parse_reply(&channel.recv(time_left(self.deadline))?.payload).map(|_| true)
        })
    }
}
