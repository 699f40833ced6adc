//! `gloo`: two-sided transport over a Gloo collective group (CPU tensors).
//!
//! Groups are created per process with a name, rank and size; rank 0's process
//! serves the rendezvous store ([`crate::engine::Context::serve_rendezvous`]) and every rank joins
//! with its address. A fetch is pulled by the consumer: it asks the producer's
//! endpoint to send object X on a fresh slot, the producer acknowledges (or
//! refuses: unknown object, unknown group), sends each tensor over Gloo, and
//! confirms; the consumer receives straight into the new tensors' memory.
//!
//! Any Gloo failure (timeout, dead peer) breaks the group: later transfers fail
//! with a clear error until the group is destroyed and created again.

use super::group::{
    break_on_system_error, decode_location, encode_location, CollectiveGroups, GroupSpec,
    OwnerReport, PullRequest, RendezvousStore,
};
use super::group_table::{check_peer_rank, usable, GroupTable, Member};
use super::{fetch_request, Local, Peer, Served, Transport};
use crate::dlpack::DLDevice;
use crate::endpoint::{wire, Channel};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{packed_extents, Run, Runs};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{is_host, HostBuffer, Tensor};
use crate::transport_kind::TransportKind;
use gloo_sys::{ContextOptions, PendingOp};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One joined collective group.
struct Group {
    ctx: gloo_sys::Context,
    /// Failed transfers go to the group's owner.
    report: OwnerReport,
}

impl Member for Group {
    fn rank(&self) -> usize {
        self.ctx.rank()
    }

    fn size(&self) -> usize {
        self.ctx.size()
    }

    fn broken_reason(&self) -> Option<String> {
        self.ctx.broken_reason()
    }

    fn break_with(&self, _cause: &Error) {
        // Aborting closes the connections, so the peers' contexts break too.
        self.ctx.abort();
    }

    fn leave(&self) {
        self.ctx.abort();
    }

    fn owner_report(&self) -> &OwnerReport {
        &self.report
    }
}

/// The gloo transport: this process's groups.
pub struct Gloo {
    groups: GroupTable<Group>,
    next_slot: AtomicU64,
}

impl Default for Gloo {
    fn default() -> Self {
        Gloo {
            groups: GroupTable::new(TransportKind::Gloo),
            next_slot: AtomicU64::new(0),
        }
    }
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

/// A group's rendezvous store as Gloo asks it.
struct GlooStore<'a>(&'a dyn RendezvousStore);

impl gloo_sys::Store for GlooStore<'_> {
    fn set(&self, key: &str, value: &[u8]) -> std::result::Result<(), gloo_sys::GlooError> {
        self.0.set(key, value).map_err(to_gloo)
    }

    fn get(
        &self,
        key: &str,
        timeout: Duration,
    ) -> std::result::Result<Vec<u8>, gloo_sys::GlooError> {
        self.0.get(key, timeout).map_err(to_gloo)
    }
}

/// A store failure as Gloo reports it (a timeout stays a timeout).
fn to_gloo(e: Error) -> gloo_sys::GlooError {
    let kind = match e.kind() {
        ErrorKind::Timeout => gloo_sys::ErrorKind::Timeout,
        _ => gloo_sys::ErrorKind::Store,
    };
    gloo_sys::GlooError::new(kind, e.message())
}

/// The local address this host uses to reach `target` (what peers can reach us on).
fn local_ip_towards(target: SocketAddr) -> String {
    UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(target).and_then(|_| s.local_addr()))
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// Largest message an extent is split into.
const CHUNK: u64 = 4 << 20;

/// The messages an object travels as: (extent, first byte, length) of each
/// piece of at most [`CHUNK`] bytes of the extents' covered ranges
/// (`layout::covered`: a gap merged between two allocations never travels),
/// in order. Both sides derive the same split: the producer from its layout,
/// the consumer from the record.
fn chunks(covered: &[(u32, u64, u64)]) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
    covered.iter().flat_map(|&(e, offset, len)| {
        (0..len)
            .step_by(CHUNK as usize)
            .map(move |at| (e as usize, offset + at, CHUNK.min(len - at)))
    })
}

impl CollectiveGroups for Gloo {
    fn create_group(&self, spec: &GroupSpec<'_>) -> Result<()> {
        self.groups.check_join(spec)?;
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
        let store = GlooStore(spec.store);
        let ctx = gloo_sys::Context::connect(spec.rank, spec.world_size, &store, spec.name, &opts)
            .map_err(|e| gloo_error(spec.name, e))?;
        self.groups.insert(
            spec.name,
            Group {
                ctx,
                report: OwnerReport::new(spec.owner),
            },
        )
    }

    fn destroy_group(&self, name: &str) -> Result<()> {
        self.groups.destroy(name)
    }

    fn group_names(&self) -> Vec<String> {
        self.groups.names()
    }

    fn report_broken(&self, local: &Local<'_>) {
        let broken: Vec<(String, String)> = self
            .groups
            .all()
            .into_iter()
            .filter(|(_, g)| !g.report.done())
            .filter_map(|(name, g)| g.ctx.broken_reason().map(|r| (name, r)))
            .collect();
        for (name, reason) in broken {
            let cause = Error::new(
                ErrorKind::PeerGone,
                format!("a member of the group is gone ({reason})"),
            );
            self.break_group(
                local,
                &name,
                &ObjectId([0; crate::object_id::OBJECT_ID_LEN]),
                None,
                &cause,
            );
        }
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
}

impl Gloo {
    /// Consumer side: receives the object of `meta` into `landing` over the
    /// group the record names; a system error breaks the group.
    fn receive(
        &self,
        local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
        landing: &mut dyn Landing,
    ) -> Result<()> {
        let (producer_rank, name) = decode_location(&meta.transport_data, "gloo")?;
        let group = self.groups.joined(name)?;
        let received = usable(&*group, name).and_then(|()| {
            self.receive_object(
                &group,
                peer,
                id,
                meta,
                producer_rank,
                name,
                timeout,
                landing,
            )
        });
        let ranks = (producer_rank, group.ctx.rank());
        break_on_system_error(self, local, name, id, ranks, received)
    }
}

impl Transport for Gloo {
    fn kind(&self) -> TransportKind {
        TransportKind::Gloo
    }

    fn serves(&self, device: DLDevice) -> bool {
        is_host(device)
    }

    fn devices(&self) -> &'static str {
        "CPU tensors (CUDA tensors go with tensor_transport=\"nccl\", \"cuda_ipc\" or \"nixl\")"
    }

    fn export(
        &self,
        _id: &ObjectId,
        _object: &StoredObject,
        group: Option<&str>,
    ) -> Result<Vec<u8>> {
        let name = group
            .ok_or_else(|| Error::invalid("the gloo transport needs a collective group name"))?;
        Ok(encode_location(self.groups.usable(name)?.ctx.rank(), name))
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
        check_peer_rank(&*group, req.consumer_rank, req.group)?;
        let sent = usable(&*group, req.group)
            .and_then(|()| self.send_object(&group, &req, object, channel));
        let ranks = (group.ctx.rank(), req.consumer_rank);
        break_on_system_error(self, local, req.group, id, ranks, sent).map(|()| Served::Sent)
    }

    fn fetch(
        &self,
        local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let (offsets, total) = packed_extents(&meta.extents);
        let buffer = HostBuffer::new(total as usize)?;
        let mut fresh = Fresh {
            base: buffer.as_ptr(),
            offsets,
        };
        self.receive(local, peer, id, meta, timeout, &mut fresh)?;
        let base = buffer.as_ptr() as usize;
        Ok(crate::layout::views(
            meta,
            base,
            &fresh.offsets,
            DLDevice::cpu(),
            Arc::new(buffer),
        ))
    }

    fn fetch_into(
        &self,
        local: &Local<'_>,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        runs: &Runs,
        timeout: Duration,
    ) -> Result<()> {
        let mut into = IntoRuns::new(&runs.runs);
        self.receive(local, peer, id, meta, timeout, &mut into)
    }

    fn check_consumer(&self, meta: &Metadata) -> Result<()> {
        let (_, name) = decode_location(&meta.transport_data, "gloo")?;
        self.groups.usable(name).map(|_| ())
    }

    fn groups(&self) -> Option<&dyn CollectiveGroups> {
        Some(self)
    }
}

impl Gloo {
    /// Producer side of a fetch: acknowledges, sends every extent (in
    /// [`chunks`]), confirms.
    fn send_object(
        &self,
        group: &Group,
        req: &PullRequest<'_>,
        object: &StoredObject,
        channel: &mut Channel,
    ) -> Result<()> {
        channel.send(&[wire::REPLY_OK], req.timeout)?;
        crate::hold::point("serve");
        // Every piece is posted at once and they overlap; messages on a slot
        // arrive in the order they were posted.
        let send_err = |e| gloo_error(req.group, e);
        let covered = object.covered();
        let mut pending = Vec::new();
        for (e, first, len) in chunks(&covered) {
            // SAFETY: a host extent of the object, which outlives the waits below.
            let bytes = unsafe { object.layout.host_bytes(e) };
            // SAFETY: as above; [first, first + len) lies inside the extent.
            let op = unsafe {
                group.ctx.post_send(
                    req.consumer_rank,
                    req.slot,
                    bytes.as_ptr().add(first as usize),
                    len as usize,
                )
            };
            pending.push(op.map_err(send_err)?);
        }
        pending
            .into_iter()
            .try_for_each(|op| op.wait(req.timeout))
            .map_err(send_err)?;
        channel.send(&[wire::REPLY_OK], req.timeout)
    }

    /// Consumer side of a fetch: asks the producer to send the object on a
    /// fresh slot and lands every piece where `landing` says.
    #[allow(clippy::too_many_arguments)]
    fn receive_object(
        &self,
        group: &Group,
        peer: &Peer<'_>,
        id: &ObjectId,
        meta: &Metadata,
        producer_rank: usize,
        name: &str,
        timeout: Duration,
        landing: &mut dyn Landing,
    ) -> Result<()> {
        let request = PullRequest {
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
            let mut staged: Option<(PendingOp<'_>, (usize, u64, u64))> = None;
            let mut staging = Vec::new();
            let sizes: Vec<u64> = meta.tensors.iter().map(|t| t.nbytes).collect();
            let covered = crate::layout::covered(&meta.places, &sizes);
            for piece in chunks(&covered) {
                let (e, first, len) = piece;
                let direct = landing.direct(e, first, len);
                let ptr = match direct {
                    Some(ptr) => ptr,
                    None => {
                        // Scattered targets: through a bounded staging buffer,
                        // one piece at a time.
                        if let Some((op, done)) = staged.take() {
                            op.wait(timeout).map_err(recv_err)?;
                            landing.scatter(done, &staging);
                        }
                        staging.resize(len as usize, 0);
                        staging.as_mut_ptr()
                    }
                };
                // SAFETY: the destination (landing memory or the staging
                // buffer) holds `len` bytes and outlives the waits below.
                let op = unsafe {
                    group
                        .ctx
                        .post_recv(producer_rank, request.slot, ptr, len as usize)
                }
                .map_err(recv_err)?;
                match direct {
                    Some(_) => pending.push(op),
                    None => staged = Some((op, piece)),
                }
            }
            crate::hold::point("fetch");
            if let Some((op, done)) = staged.take() {
                op.wait(timeout).map_err(recv_err)?;
                landing.scatter(done, &staging);
            }
            pending
                .into_iter()
                .try_for_each(|op| op.wait(timeout))
                .map_err(recv_err)?;
            wire::parse_reply(&channel.recv(timeout)?.payload).map(|_| ())
        })
    }
}

/// Where received pieces go.
trait Landing {
    /// The address piece `(extent, first, len)` can be received at directly,
    /// or `None` when it must be staged and scattered.
    fn direct(&mut self, extent: usize, first: u64, len: u64) -> Option<*mut u8>;
    /// Places a staged piece.
    fn scatter(&mut self, piece: (usize, u64, u64), bytes: &[u8]);
}

/// New memory: the extents laid out in one buffer.
struct Fresh {
    base: *mut u8,
    offsets: Vec<u64>,
}

impl Landing for Fresh {
    fn direct(&mut self, extent: usize, first: u64, _len: u64) -> Option<*mut u8> {
        // SAFETY: the offset lies inside the buffer, sized for every extent.
        Some(unsafe { self.base.add((self.offsets[extent] + first) as usize) })
    }

    fn scatter(&mut self, _piece: (usize, u64, u64), _bytes: &[u8]) {
        unreachable!("every piece of a fresh buffer is received in place")
    }
}

/// The caller's tensors: a piece one run covers whole is received in place,
/// any other is staged and scattered to the runs it overlaps (bytes of the
/// extent that no tensor uses are dropped). Runs may overlap in the source
/// (tied weights: one tensor's bytes in two targets, a view inside its base).
struct IntoRuns<'a> {
    runs: &'a [Run],
    /// Per run: its extent and the furthest end of it and the runs before it
    /// in that extent (sorted, unlike the runs' own ends).
    reach: Vec<(usize, u64)>,
}

impl<'a> IntoRuns<'a> {
    fn new(runs: &'a [Run]) -> IntoRuns<'a> {
        let mut reach: Vec<(usize, u64)> = Vec::with_capacity(runs.len());
        for r in runs {
            let (extent, end) = (r.extent as usize, r.offset + r.len);
            let furthest = match reach.last() {
                Some(&(e, before)) if e == extent => before.max(end),
                _ => end,
            };
            reach.push((extent, furthest));
        }
        IntoRuns { runs, reach }
    }

    /// The runs that share bytes with `[first, first + len)` of `extent`.
    fn overlapping(&self, extent: usize, first: u64, len: u64) -> impl Iterator<Item = &Run> + '_ {
        let lo = self.reach.partition_point(|&k| k <= (extent, first));
        let hi = self
            .runs
            .partition_point(|r| (r.extent as usize, r.offset) < (extent, first + len));
        self.runs[lo..hi.max(lo)]
            .iter()
            .filter(move |r| r.extent as usize == extent && r.offset + r.len > first)
    }
}

impl Landing for IntoRuns<'_> {
    fn direct(&mut self, extent: usize, first: u64, len: u64) -> Option<*mut u8> {
        let mut overlapping = self.overlapping(extent, first, len);
        match (overlapping.next(), overlapping.next()) {
            (Some(r), None) if r.offset <= first && first + len <= r.offset + r.len => {
                Some((r.dst + (first - r.offset) as usize) as *mut u8)
            }
            _ => None,
        }
    }

    fn scatter(&mut self, (extent, first, len): (usize, u64, u64), bytes: &[u8]) {
        for r in self.overlapping(extent, first, len) {
            let from = r.offset.max(first);
            let to = (r.offset + r.len).min(first + len);
            // SAFETY: [from, to) lies in both the run (a checked target) and
            // the staged piece.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr().add((from - first) as usize),
                    (r.dst + (from - r.offset) as usize) as *mut u8,
                    (to - from) as usize,
                )
            };
        }
    }
}
