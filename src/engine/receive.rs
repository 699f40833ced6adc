//! What a consumer's fetch lands in: new tensors ([`NewTensors`]) or the
//! caller's tensors ([`IntoTargets`]). The engine picks the path and the
//! transport ([`super::Context::fetch_decoded`], [`super::Context::fetch_into`]);
//! a receiver moves the bytes, from a peer over a transport, from the record's
//! inline bytes, or out of an object this process holds (its own object, or a
//! node copy: [`super::node_share`]).

use super::inline;
use crate::copy::{copy_pieces, Piece};
use crate::dlpack::DLDevice;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{packed_extents, Runs};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{HostBuffer, Tensor};
use crate::transport::{Local, Peer, Transport};
use std::sync::Arc;
use std::time::Duration;

/// Where the bytes of one fetch land.
pub(super) trait Receiver {
    /// What the fetch gives its caller.
    type Output;

    /// The object from `peer` (its producer, or the holder of a node copy)
    /// over `transport`, within `timeout`.
    fn receive(
        &self,
        transport: &dyn Transport,
        peer: &Peer<'_>,
        timeout: Duration,
    ) -> Result<Self::Output>;

    /// The object from the record's inline bytes.
    fn inline(&self, bytes: &[u8]) -> Result<Self::Output>;

    /// The object copied out of `object`, host memory of this process laid
    /// out in the record's extents (never a view of it: the caller may change
    /// what it gets).
    fn copy_of(&self, object: &StoredObject) -> Result<Self::Output>;

    /// The object given to the caller: `object` is this fetch's own read,
    /// which nothing else refers to any more (a node copy no follower asked
    /// for), so it may be handed over as it is.
    fn take(&self, object: StoredObject) -> Result<Self::Output> {
        self.copy_of(&object)
    }

    /// Whether the bytes land in the caller's own memory, which a node copy
    /// can then be made out of ([`Receiver::copy_back`]): a node-copy leader
    /// reads straight into it.
    fn lands_in_caller_memory(&self) -> bool {
        false
    }

    /// New tensors holding a copy of what this fetch received in the
    /// caller's memory (the record's extents, packed, in a buffer of this
    /// process): a node copy. Only where [`Receiver::lands_in_caller_memory`],
    /// before the caller has its memory back.
    fn copy_back(&self) -> Result<Vec<Tensor>> {
        Err(Error::invalid(
            "this fetch landed nothing in the caller's memory",
        ))
    }
}

/// The object `meta` describes, as the caller asked for it.
pub(super) struct Request<'a> {
    /// What the transports see of this process.
    pub local: Local<'a>,
    /// The object.
    pub id: &'a ObjectId,
    /// Its record.
    pub meta: &'a Metadata,
}

impl Request<'_> {
    /// Refuses `object` unless its extents are the record's.
    fn check_layout(&self, object: &StoredObject) -> Result<()> {
        if object.layout.lengths() != self.meta.extents {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "object {} is held with another layout than its record describes (stored again since)",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

/// Into new tensors: views of one buffer of the consumer's own.
pub(super) struct NewTensors<'a>(pub Request<'a>);

impl Receiver for NewTensors<'_> {
    type Output = Vec<Tensor>;

    fn receive(
        &self,
        transport: &dyn Transport,
        peer: &Peer<'_>,
        timeout: Duration,
    ) -> Result<Vec<Tensor>> {
        let r = &self.0;
        transport.fetch(&r.local, peer, r.id, r.meta, timeout)
    }

    fn inline(&self, bytes: &[u8]) -> Result<Vec<Tensor>> {
        inline::unpack(self.0.meta, bytes)
    }

    fn take(&self, object: StoredObject) -> Result<Vec<Tensor>> {
        self.0.check_layout(&object)?;
        Ok(object.tensors)
    }

    fn copy_of(&self, object: &StoredObject) -> Result<Vec<Tensor>> {
        self.0.check_layout(object)?;
        packed_tensors(self.0.meta, |base, _| {
            // SAFETY: the destinations lie in the new buffer (packed as the
            // record's extents, which are `object`'s: checked above); the
            // sources are host extents `object` keeps alive.
            unsafe { copy_pieces(&object.packed_pieces(base)) }
        })
    }
}

/// Into the caller's tensors (`runs`, checked against the record).
pub(super) struct IntoTargets<'a> {
    /// The object.
    pub request: Request<'a>,
    /// Where its bytes land.
    pub runs: &'a Runs,
}

impl Receiver for IntoTargets<'_> {
    type Output = ();

    fn receive(&self, transport: &dyn Transport, peer: &Peer<'_>, timeout: Duration) -> Result<()> {
        let r = &self.request;
        transport.fetch_into(&r.local, peer, r.id, r.meta, self.runs, timeout)
    }

    fn inline(&self, bytes: &[u8]) -> Result<()> {
        inline::unpack_into(self.request.meta, bytes, self.runs)
    }

    fn copy_of(&self, object: &StoredObject) -> Result<()> {
        self.request.check_layout(object)?;
        let starts: Vec<usize> = object.layout.extents.iter().map(|e| e.addr).collect();
        // SAFETY: the sources lie in `object`'s extents (the record's, checked
        // above), which it keeps alive; the destinations are the caller's
        // checked targets.
        unsafe { copy_pieces(&self.runs.pieces(&starts)) };
        Ok(())
    }

    /// Targets that tied weights share a source range with (a view inside
    /// its base) would write that range twice: those take the staged path.
    fn lands_in_caller_memory(&self) -> bool {
        !self.runs.sources_overlap()
    }

    fn copy_back(&self) -> Result<Vec<Tensor>> {
        packed_tensors(self.request.meta, |base, offsets| {
            let starts: Vec<usize> = offsets.iter().map(|&o| base + o as usize).collect();
            let pieces: Vec<Piece> = self
                .runs
                .pieces(&starts)
                .into_iter()
                .map(|p| Piece {
                    dst: p.src,
                    src: p.dst,
                    len: p.len,
                })
                .collect();
            // SAFETY: the sources are the caller's checked targets, which
            // this fetch filled and the caller has not got back; the
            // destinations lie in the new buffer (packed as the record's
            // extents) and, the runs' sources being disjoint, do not overlap.
            unsafe { copy_pieces(&pieces) }
        })
    }
}

/// New tensors of `meta`'s object: views of one buffer of this process that
/// holds the record's extents packed, which `fill` writes first (given the
/// buffer's address and each extent's offset in it).
fn packed_tensors(meta: &Metadata, fill: impl FnOnce(usize, &[u64])) -> Result<Vec<Tensor>> {
    let (offsets, total) = packed_extents(&meta.extents);
    let buffer = HostBuffer::new(total as usize)?;
    let base = buffer.as_ptr() as usize;
    fill(base, &offsets);
    Ok(crate::layout::views(
        meta,
        base,
        &offsets,
        DLDevice::cpu(),
        Arc::new(buffer),
    ))
}
