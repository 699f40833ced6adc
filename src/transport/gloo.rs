//! `gloo`: two-sided transport over a Gloo collective group (CPU tensors).
//!
//! Groups are created per process with a name, rank and size; rank 0's process
//! serves the rendezvous store ([`crate::engine::Context::serve_rendezvous`]) and every rank joins
//! with its address. A fetch is pulled by the consumer: it asks the producer's
//! endpoint to send object X on a fresh slot, the producer acknowledges (or
//! refuses: unknown object, unknown group), sends the object's bytes over Gloo
//! as the messages of a [`Plan`] both sides derive from the record, and
//! confirms; the consumer receives large pieces straight into their
//! destination and runs of small ones packed into shared messages.
//!
//! A group is joined as [`lanes`] Gloo contexts of the same ranks, each with
//! its own TCP connection to every peer and its own network thread; an
//! object's messages take turns over them. One TCP stream is bound by the one
//! core that does its kernel work: between two network namespaces of this
//! project's machine one stream moves about 2 GB/s and two move 4 GB/s
//! (docs/weights-bench.md, 2026-12-07 09:00), where UCX (nixl) already
//! spreads its bytes.
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
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One joined collective group: its lanes, contexts of the same ranks (at
/// least one).
struct Group {
    lanes: Vec<gloo_sys::Context>,
    /// Failed transfers go to the group's owner.
    report: OwnerReport,
}

impl Group {
    /// The first lane (ranks and size are every lane's).
    fn first(&self) -> &gloo_sys::Context {
        &self.lanes[0]
    }

    /// The lane of an object's message `index`: both sides number an
    /// object's messages alike ([`Plan`]), so they agree on every lane.
    fn lane(&self, index: usize) -> &gloo_sys::Context {
        &self.lanes[index % self.lanes.len()]
    }

    /// Aborts every lane: the connections close, so the peers' lanes break too.
    fn abort(&self) {
        self.lanes.iter().for_each(gloo_sys::Context::abort);
    }
}

impl Member for Group {
    fn rank(&self) -> usize {
        self.first().rank()
    }

    fn size(&self) -> usize {
        self.first().size()
    }

    fn broken_reason(&self) -> Option<String> {
        self.lanes.iter().find_map(gloo_sys::Context::broken_reason)
    }

    fn break_with(&self, _cause: &Error) {
        self.abort();
    }

    fn leave(&self) {
        self.abort();
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

/// Environment variable: how many lanes (Gloo contexts, so TCP connections to
/// each peer) a group is joined with. Rank 0's setting is the group's: it
/// publishes it in the rendezvous store (key `<group>/lanes`).
pub const LANES_ENV: &str = "RAY_RDT_GLOO_LANES";

/// Default lanes: two streams double what one moves between two hosts here,
/// four moved no more (docs/weights-bench.md, 2026-12-07 09:00).
const DEFAULT_LANES: u64 = 2;

/// Most lanes a group is joined with.
const MAX_LANES: u64 = 8;

/// Lanes of the groups this process joins ([`LANES_ENV`], 1 to [`MAX_LANES`]).
fn lanes() -> usize {
    crate::settings::u64_or(LANES_ENV, DEFAULT_LANES).clamp(1, MAX_LANES) as usize
}

/// The lanes of the group `spec` joins: rank 0 publishes its own
/// ([`lanes`]) in the rendezvous store, the others read them there, so that a
/// member started with another setting still joins every lane.
fn agreed_lanes(spec: &GroupSpec<'_>) -> Result<usize> {
    let key = format!("{}/lanes", spec.name);
    if spec.rank == 0 {
        let lanes = lanes();
        spec.store.set(&key, lanes.to_string().as_bytes())?;
        return Ok(lanes);
    }
    let value = spec.store.get(&key, spec.timeout)?;
    std::str::from_utf8(&value)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=MAX_LANES as usize).contains(n))
        .ok_or_else(|| {
            Error::malformed(format!(
                "gloo group {:?}: rank 0 published {:?} lanes, not a number from 1 to {MAX_LANES}",
                spec.name,
                String::from_utf8_lossy(&value)
            ))
        })
}

/// The rendezvous prefix of lane `lane` of group `name` (lane 0: the name).
fn lane_prefix(name: &str, lane: usize) -> String {
    match lane {
        0 => name.to_owned(),
        n => format!("{name}/lane{n}"),
    }
}

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
    fn set(&self, key: &str, value: &[u8]) -> GlooResult<()> {
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

/// Largest message an object travels in.
const CHUNK: u64 = 4 << 20;

/// Pieces shorter than this travel packed with their neighbours (see
/// [`Plan`]): below it, a Gloo message of its own costs more than copying the
/// piece into and out of a staging buffer. Measured on loopback (256 MiB of
/// separate allocations, 2 cores): packing moves 4 KiB pieces 5x faster,
/// 16 KiB 2.3x, 64 KiB 1.3x; 128 KiB and 107 KB pieces no faster or slightly
/// slower.
const PACK_BELOW: u64 = 64 << 10;

/// Staged messages of one transfer in flight at once: one buffer is filled or
/// emptied while the others travel.
const STAGES: usize = 2;

/// Bytes of an object that travel together: `len` bytes of extent `extent`
/// from byte `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// Index of the extent in the object's extent list.
    extent: usize,
    /// Offset of the first byte in the extent.
    first: u64,
    /// Length in bytes (never 0).
    len: u64,
}

/// A Gloo operation's result.
type GlooResult<T> = std::result::Result<T, gloo_sys::GlooError>;

/// The messages an object travels as. Both sides derive it from the same
/// covered ranges (`layout::covered`: the producer from its layout, the
/// consumer from the record), so they agree on every message's pieces and
/// length.
///
/// The covered ranges, in order, are cut into pieces of at most [`CHUNK`]
/// bytes (a gap merged between two allocations never travels). A piece of
/// [`PACK_BELOW`] bytes or more is a message of its own; consecutive shorter
/// pieces share one, back to back, up to [`CHUNK`] bytes. A message of one
/// piece travels in place; one of several goes through a staging buffer on
/// each side (the producer packs it, the consumer unpacks it): two memcpys
/// instead of a Gloo message per piece, which matters for models made of many
/// separate allocations.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    pieces: Vec<Piece>,
    /// Where each message's pieces end in `pieces` (exclusive), in order.
    ends: Vec<usize>,
}

impl Plan {
    /// The plan for an object's covered ranges `(extent, offset, len)`, in
    /// the order `layout::covered` gives them.
    fn new(covered: &[(u32, u64, u64)]) -> Plan {
        let mut plan = Plan::default();
        // Bytes of the last message while more short pieces may join it.
        let mut open = 0;
        for &(extent, offset, len) in covered {
            for at in (0..len).step_by(CHUNK as usize) {
                let piece = Piece {
                    extent: extent as usize,
                    first: offset + at,
                    len: CHUNK.min(len - at),
                };
                let short = piece.len < PACK_BELOW;
                if !(short && open > 0 && open + piece.len <= CHUNK) {
                    plan.close();
                    open = 0;
                }
                plan.pieces.push(piece);
                if short {
                    open += piece.len;
                }
            }
        }
        plan.close();
        plan
    }

    /// Ends the message being built, if it holds a piece.
    fn close(&mut self) {
        if self.ends.last().copied().unwrap_or(0) < self.pieces.len() {
            self.ends.push(self.pieces.len());
        }
    }

    /// The messages' pieces, in order.
    fn messages(&self) -> impl Iterator<Item = &[Piece]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.pieces[s..e])
    }

    /// Bytes of the longest message.
    fn longest(&self) -> u64 {
        self.messages().map(bytes).max().unwrap_or(0)
    }
}

/// Bytes of a message's pieces.
fn bytes(pieces: &[Piece]) -> u64 {
    pieces.iter().map(|p| p.len).sum()
}

/// The staging buffers of one side of a transfer, used in turn: a buffer is
/// used again only once the message that last used it completed, so at most
/// [`STAGES`] messages are staged at once, each in a buffer as long as the
/// plan's longest message (at most [`CHUNK`] bytes).
struct Staging<'ctx, 'p> {
    /// Staged messages in flight, oldest first: the op, the message's pieces
    /// and the index of its buffer. Declared before `buffers` so that it
    /// drops first: dropping an op that has not completed returns only once
    /// Gloo no longer touches its buffer.
    in_flight: VecDeque<(PendingOp<'ctx>, &'p [Piece], usize)>,
    buffers: Vec<Vec<u8>>,
    /// Length of each buffer.
    len: usize,
    /// Messages staged so far.
    staged: usize,
    timeout: Duration,
}

impl<'ctx, 'p> Staging<'ctx, 'p> {
    /// Buffers for the messages of `plan`; none is allocated until used.
    fn new(plan: &Plan, timeout: Duration) -> Staging<'ctx, 'p> {
        Staging {
            in_flight: VecDeque::new(),
            buffers: Vec::new(),
            len: plan.longest() as usize,
            staged: 0,
            timeout,
        }
    }

    /// The buffer for the next staged message. When every buffer is in
    /// flight, first waits for the oldest message and hands its pieces and
    /// bytes to `done`.
    fn buffer(&mut self, done: &mut dyn FnMut(&[Piece], &[u8])) -> GlooResult<&mut [u8]> {
        if self.in_flight.len() == STAGES {
            self.complete_oldest(done)?;
        }
        let i = self.staged % STAGES;
        if i == self.buffers.len() {
            self.buffers.push(vec![0; self.len]);
        }
        Ok(&mut self.buffers[i])
    }

    /// Records the op that sends or receives `pieces` in the buffer
    /// [`buffer`](Self::buffer) returned last.
    fn posted(&mut self, op: PendingOp<'ctx>, pieces: &'p [Piece]) {
        self.in_flight.push_back((op, pieces, self.staged % STAGES));
        self.staged += 1;
    }

    /// Waits for the oldest message in flight and hands it to `done`.
    fn complete_oldest(&mut self, done: &mut dyn FnMut(&[Piece], &[u8])) -> GlooResult<()> {
        if let Some((op, pieces, i)) = self.in_flight.pop_front() {
            op.wait(self.timeout)?;
            done(pieces, &self.buffers[i][..bytes(pieces) as usize]);
        }
        Ok(())
    }

    /// Waits for every message in flight, oldest first, handing each to `done`.
    fn finish(mut self, done: &mut dyn FnMut(&[Piece], &[u8])) -> GlooResult<()> {
        while !self.in_flight.is_empty() {
            self.complete_oldest(done)?;
        }
        Ok(())
    }
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
        let lanes = (0..agreed_lanes(spec)?)
            .map(|lane| {
                let prefix = lane_prefix(spec.name, lane);
                gloo_sys::Context::connect(spec.rank, spec.world_size, &store, &prefix, &opts)
                    .map_err(|e| gloo_error(spec.name, e))
            })
            .collect::<Result<Vec<_>>>()?;
        self.groups.insert(
            spec.name,
            Group {
                lanes,
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
            .filter_map(|(name, g)| g.broken_reason().map(|r| (name, r)))
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
        let ranks = (producer_rank, group.rank());
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
        Ok(encode_location(self.groups.usable(name)?.rank(), name))
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
        let ranks = (group.rank(), req.consumer_rank);
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
    /// Producer side of a fetch: acknowledges, sends the object's messages
    /// (its [`Plan`]), confirms.
    fn send_object(
        &self,
        group: &Group,
        req: &PullRequest<'_>,
        object: &StoredObject,
        channel: &mut Channel,
    ) -> Result<()> {
        channel.send(&[wire::REPLY_OK], req.timeout)?;
        crate::hold::point("serve");
        // Every message is posted as soon as its bytes are ready and they
        // overlap; messages on a slot arrive in the order they were posted.
        let send_err = |e| gloo_error(req.group, e);
        let plan = Plan::new(&object.covered());
        // SAFETY: a host extent of the object, which outlives the waits below;
        // a piece lies inside its extent.
        let source = |p: &Piece| unsafe {
            object
                .layout
                .host_bytes(p.extent)
                .as_ptr()
                .add(p.first as usize)
        };
        let mut staging = Staging::new(&plan, req.timeout);
        let mut pending = Vec::new();
        // A staged message that has been sent leaves nothing to do.
        let sent = &mut |_: &[Piece], _: &[u8]| {};
        for (index, message) in plan.messages().enumerate() {
            let (ptr, len) = match message {
                [piece] => (source(piece), piece.len),
                pieces => {
                    let buffer = staging.buffer(sent).map_err(send_err)?;
                    let mut at = 0;
                    for p in pieces {
                        let len = p.len as usize;
                        // SAFETY: the piece is readable (above) and the
                        // buffer holds the longest message.
                        buffer[at..at + len]
                            .copy_from_slice(unsafe { std::slice::from_raw_parts(source(p), len) });
                        at += len;
                    }
                    (buffer.as_ptr(), at as u64)
                }
            };
            // SAFETY: `len` bytes at `ptr` (the object's memory or a staging
            // buffer) stay alive and unchanged until the op completes.
            let op = unsafe {
                group
                    .lane(index)
                    .post_send(req.consumer_rank, req.slot, ptr, len as usize)
            }
            .map_err(send_err)?;
            match message {
                [_] => pending.push(op),
                pieces => staging.posted(op, pieces),
            }
        }
        staging.finish(sent).map_err(send_err)?;
        pending
            .into_iter()
            .try_for_each(|op| op.wait(req.timeout))
            .map_err(send_err)?;
        channel.send(&[wire::REPLY_OK], req.timeout)
    }

    /// Consumer side of a fetch: asks the producer to send the object on a
    /// fresh slot and lands every message of its [`Plan`] where `landing`
    /// says: in place when it is one piece `landing` can take directly, else
    /// through a staging buffer.
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
            consumer_rank: group.rank(),
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
            let sizes: Vec<u64> = meta.tensors.iter().map(|t| t.nbytes).collect();
            let plan = Plan::new(&crate::layout::covered(&meta.places, &sizes));
            let mut staging = Staging::new(&plan, timeout);
            let mut pending = Vec::new();
            for (index, message) in plan.messages().enumerate() {
                let direct = match message {
                    [piece] => landing.direct(*piece),
                    _ => None,
                };
                let ptr = match direct {
                    Some(ptr) => ptr,
                    None => staging
                        .buffer(&mut |pieces, bytes| landing.unpack(pieces, bytes))
                        .map_err(recv_err)?
                        .as_mut_ptr(),
                };
                // SAFETY: the destination (landing memory or a staging
                // buffer) holds the message and outlives the waits below.
                let op = unsafe {
                    group.lane(index).post_recv(
                        producer_rank,
                        request.slot,
                        ptr,
                        bytes(message) as usize,
                    )
                }
                .map_err(recv_err)?;
                match direct {
                    Some(_) => pending.push(op),
                    None => staging.posted(op, message),
                }
            }
            crate::hold::point("fetch");
            staging
                .finish(&mut |pieces, bytes| landing.unpack(pieces, bytes))
                .map_err(recv_err)?;
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
    /// The address `piece` can be received at directly, or `None` when it
    /// must be staged and scattered.
    fn direct(&mut self, piece: Piece) -> Option<*mut u8>;
    /// Places a staged piece.
    fn scatter(&mut self, piece: Piece, bytes: &[u8]);
    /// Places the pieces of a staged message, which holds them back to back.
    fn unpack(&mut self, pieces: &[Piece], mut bytes: &[u8]) {
        for &p in pieces {
            let (this, rest) = bytes.split_at(p.len as usize);
            self.scatter(p, this);
            bytes = rest;
        }
    }
}

/// New memory: the extents laid out in one buffer.
struct Fresh {
    base: *mut u8,
    offsets: Vec<u64>,
}

impl Landing for Fresh {
    fn direct(&mut self, p: Piece) -> Option<*mut u8> {
        // SAFETY: the offset lies inside the buffer, sized for every extent.
        Some(unsafe { self.base.add((self.offsets[p.extent] + p.first) as usize) })
    }

    fn scatter(&mut self, p: Piece, bytes: &[u8]) {
        let dst = self.direct(p).expect("fresh memory takes every piece");
        // SAFETY: the piece lies inside the buffer (above), which the staged
        // bytes are not part of.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
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
    fn direct(&mut self, Piece { extent, first, len }: Piece) -> Option<*mut u8> {
        let mut overlapping = self.overlapping(extent, first, len);
        match (overlapping.next(), overlapping.next()) {
            (Some(r), None) if r.offset <= first && first + len <= r.offset + r.len => {
                Some((r.dst + (first - r.offset) as usize) as *mut u8)
            }
            _ => None,
        }
    }

    fn scatter(&mut self, Piece { extent, first, len }: Piece, bytes: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's messages as the lengths of their pieces; also checks what
    /// every plan must hold: the pieces, in order, are the covered ranges cut
    /// at every [`CHUNK`] bytes; no message is longer than [`CHUNK`]; a
    /// message of several pieces holds only pieces shorter than
    /// [`PACK_BELOW`].
    fn lengths(covered: &[(u32, u64, u64)]) -> Vec<Vec<u64>> {
        let plan = Plan::new(covered);
        let mut expected = Vec::new();
        for &(e, offset, len) in covered {
            let mut at = 0;
            while at < len {
                let n = CHUNK.min(len - at);
                expected.push(Piece {
                    extent: e as usize,
                    first: offset + at,
                    len: n,
                });
                at += n;
            }
        }
        assert_eq!(plan.pieces, expected);
        let messages: Vec<&[Piece]> = plan.messages().collect();
        assert_eq!(messages.concat(), expected);
        for m in &messages {
            assert!(!m.is_empty() && bytes(m) <= CHUNK, "{m:?}");
            if m.len() > 1 {
                assert!(m.iter().all(|p| p.len < PACK_BELOW), "{m:?}");
            }
        }
        assert_eq!(
            plan.longest(),
            messages.iter().map(|m| bytes(m)).max().unwrap_or(0)
        );
        messages
            .iter()
            .map(|m| m.iter().map(|p| p.len).collect())
            .collect()
    }

    /// `n` ranges of `len` bytes, each its own extent.
    fn separate(n: u32, len: u64) -> Vec<(u32, u64, u64)> {
        (0..n).map(|e| (e, 0, len)).collect()
    }

    #[test]
    fn an_empty_object_is_no_message() {
        assert!(lengths(&[]).is_empty());
        assert_eq!(Plan::new(&[]).longest(), 0);
    }

    #[test]
    fn one_large_range_is_one_message() {
        assert_eq!(lengths(&[(0, 64, 3 << 20)]), vec![vec![3 << 20]]);
    }

    #[test]
    fn many_small_pieces_share_messages_of_at_most_a_chunk() {
        // 5,000 separate 4 KiB allocations: 1,024 per 4 MiB message.
        let per = (CHUNK / 4096) as usize;
        let messages = lengths(&separate(5000, 4096));
        assert_eq!(messages.len(), 5000_usize.div_ceil(per));
        assert!(messages[..4].iter().all(|m| m.len() == per));
        assert_eq!(messages[4].len(), 5000 - 4 * per);
        // Ranges of one extent (allocations merged across small gaps) too.
        let ranges: Vec<_> = (0..10).map(|i| (0, i * 100, 48)).collect();
        assert_eq!(lengths(&ranges), vec![vec![48; 10]]);
    }

    #[test]
    fn small_pieces_pack_between_large_ones_which_travel_alone() {
        let big = PACK_BELOW * 2;
        let covered = [
            (0, 0, 10),
            (1, 0, 20),
            (2, 0, big),
            (3, 0, 30),
            (4, 0, big),
            (5, 0, big),
            (6, 0, 40),
            (6, 100, 50),
        ];
        assert_eq!(
            lengths(&covered),
            vec![
                vec![10, 20],
                vec![big],
                vec![30],
                vec![big],
                vec![big],
                vec![40, 50]
            ]
        );
    }

    #[test]
    fn a_piece_of_exactly_the_threshold_travels_alone() {
        let below = PACK_BELOW - 1;
        let covered = [
            (0, 0, below),
            (1, 0, PACK_BELOW),
            (2, 0, below),
            (3, 0, below),
        ];
        assert_eq!(
            lengths(&covered),
            vec![vec![below], vec![PACK_BELOW], vec![below, below]]
        );
    }

    #[test]
    fn a_message_never_outgrows_a_chunk() {
        // Pieces just short of the threshold: as many as fit, then the rest.
        let n = PACK_BELOW - 1;
        let fit = (CHUNK / n) as usize;
        let messages = lengths(&separate(fit as u32 + 1, n));
        assert_eq!(messages, vec![vec![n; fit], vec![n]]);
    }

    #[test]
    fn a_range_longer_than_a_chunk_is_cut_and_its_short_tail_packs_on() {
        let covered = [(0, 8, 2 * CHUNK + 100), (1, 0, 200), (2, 0, 300)];
        assert_eq!(
            lengths(&covered),
            vec![vec![CHUNK], vec![CHUNK], vec![100, 200, 300]]
        );
    }
}
