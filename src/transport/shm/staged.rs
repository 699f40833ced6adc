//! Reads into targets on one host by several consumers at once (fan-out to
//! generators): the producer copies the object's extents once into a
//! shared-memory segment, chunk by chunk, and every consumer reading the
//! object at that time copies each chunk from its own mapping of the segment
//! into its targets as soon as the chunk has landed.
//!
//! Why not let each consumer read the producer's memory directly
//! ([`super::cma`])? On the machines measured, `process_vm_readv` costs about
//! 2.5x a memcpy's CPU per byte, and each consumer pays it in full: four
//! generators of one trainer took about 93 ms for 256 MiB on two cores. Here
//! the producer pays one memcpy and each consumer one memcpy from memory
//! already mapped, pipelined: 72 ms (`docs/weights-bench.md`). A consumer
//! alone is still served directly, which is cheaper than two copies side by
//! side; who does what is [`Stagings`]'s rule.
//!
//! Both sides keep their mappings between objects, as the steps of a weight
//! sync repeat: the producer's segment goes back to an idle pool when the last
//! reader of its object is done ([`SegmentPool`]) and serves the next object
//! of a similar size; consumers keep their mapping of it ([`MappingCache`]),
//! so a steady loop maps and faults nothing. What that costs is memory: the
//! producer holds about one object's bytes more, in a segment its consumers
//! map too (within the pool's bound; the segment used last always stays).
//! Objects from 1 MiB to 4 GiB take this path ([`applies`]); smaller and
//! larger ones are always read straight from the producer's memory.
//!
//! Protocol, after the fetch request (mode [`MODE_STAGED`], whether the
//! consumer may read the producer's memory, its timeout): the producer
//! either answers as to a direct read (`OK, MODE_READ, addresses...`, see
//! [`super::read_direct`]), or, for an object in one of its shared regions
//! ([`super::shared`]), `OK, MODE_MAPPED, ...` (see [`super::read_mapped`]),
//! or replies `OK, MODE_STAGED, total bytes` with the
//! segment's descriptor, then sends `OK, bytes landed` frames, strictly
//! increasing, until every byte has; the consumer says when it is done
//! copying, and the producer acknowledges. A reader that dies or gives up
//! costs the others nothing: the copy goes on, and the segment is released
//! when the last reader has left.

use super::mappings::MappingCache;
use super::pool::{Lease, Segment, SegmentPool};
use super::segment::{self, Mapping};
use super::{
    le_u64, read_direct, read_mapped, request_body, serve_read, MODE_MAPPED, MODE_READ,
    MODE_STAGED, REPLY_TIMEOUT,
};
use crate::copy::{copy_chunk, Piece};
use crate::endpoint::{wire, Channel};
use crate::error::{Error, Result};
use crate::layout::{packed_extents, Runs};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::transport::{deadline_after, fetch_request, Peer};
use crate::transport_kind::TransportKind;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Objects of at least this many bytes are read into targets through a
/// staging segment; smaller ones straight from the producer's memory
/// (override: `RAY_RDT_SHM_STAGED_FROM`).
const DEFAULT_STAGED_FROM: usize = 1 << 20;
/// Objects of more than this many bytes are read straight from the
/// producer's memory too, which costs the producer no memory (override:
/// `RAY_RDT_SHM_STAGED_UPTO`).
const DEFAULT_STAGED_UPTO: usize = 4 << 30;
/// Bytes the producer copies between two progress reports, and the most a
/// consumer copies before it looks for the next report.
const CHUNK: usize = 4 << 20;

/// Whether an object of `total` bytes goes through a staging segment.
pub fn applies(total: u64) -> bool {
    let from = crate::settings::bytes_or("RAY_RDT_SHM_STAGED_FROM", DEFAULT_STAGED_FROM);
    let upto = crate::settings::bytes_or("RAY_RDT_SHM_STAGED_UPTO", DEFAULT_STAGED_UPTO);
    total > 0 && (from as u64..=upto as u64).contains(&total)
}

/// How far the producer's copy has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// The first this many bytes of the segment hold the object.
    Upto(u64),
    /// The copy stopped before the end (its thread panicked).
    Abandoned,
}

/// One object's staging segment and the progress of the copy into it.
#[derive(Debug)]
struct Staging {
    segment: Arc<Lease>,
    total: u64,
    landed: Mutex<Landed>,
    moved: Condvar,
}

impl Staging {
    fn set(&self, landed: Landed) {
        *self.landed.lock() = landed;
        self.moved.notify_all();
    }

    /// Copies `object` into the segment a chunk at a time, calling `report`
    /// with the bytes landed after each chunk (the last call says `total`).
    fn fill(&self, object: &StoredObject, mut report: impl FnMut(u64)) {
        let base = self.segment.as_ptr() as usize;
        let mut pieces: Vec<Piece> = object
            .packed_pieces(base)
            .into_iter()
            .flat_map(|p| cut(p, CHUNK))
            .collect();
        pieces.sort_by_key(|p| p.dst);
        let mut abandon = AbandonUnlessDone(self, false);
        let mut groups = groups(&pieces, CHUNK).into_iter().peekable();
        while let Some(group) = groups.next() {
            // SAFETY: the destinations lie in the segment, which holds the
            // packed extents (checked when it was taken); the sources are the
            // host extents of a stored object that the serve keeps alive.
            unsafe { copy_chunk(group) };
            if groups.peek().is_some() {
                let end = group.last().map_or(0, |p| (p.dst + p.len - base) as u64);
                self.set(Landed::Upto(end));
                report(end);
            }
        }
        // The last report says the total once (the padding after the last
        // extent included): the reader stops reading reports there.
        abandon.1 = true;
        self.set(Landed::Upto(self.total));
        report(self.total);
    }

    /// Waits for the copy another reader makes, calling `report` with the
    /// bytes landed each time more have (the last call says `total`).
    fn follow(&self, deadline: Instant, mut report: impl FnMut(u64) -> Result<()>) -> Result<()> {
        let mut told = 0;
        while told < self.total {
            let mut landed = self.landed.lock();
            let upto = loop {
                match *landed {
                    Landed::Abandoned => {
                        return Err(Error::transport(
                            "the copy into the staging segment stopped part way",
                        ))
                    }
                    Landed::Upto(n) if n > told => break n,
                    Landed::Upto(_) => {}
                }
                if self.moved.wait_until(&mut landed, deadline).timed_out() {
                    return Err(Error::timeout(
                        "the copy into the staging segment did not finish in time",
                    ));
                }
            };
            drop(landed);
            report(upto)?;
            told = upto;
        }
        Ok(())
    }
}

/// Marks a staging abandoned if its copy stops before the end.
struct AbandonUnlessDone<'a>(&'a Staging, bool);

impl Drop for AbandonUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.set(Landed::Abandoned);
        }
    }
}

/// `pieces` in consecutive groups of at least `chunk` bytes each (the last
/// one may hold less).
fn groups(pieces: &[Piece], chunk: usize) -> Vec<&[Piece]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, p) in pieces.iter().enumerate() {
        bytes += p.len;
        if bytes >= chunk {
            out.push(&pieces[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < pieces.len() {
        out.push(&pieces[start..]);
    }
    out
}

/// The readers of one object now: how many, and the staging segment they
/// share once there is one.
#[derive(Debug, Default)]
struct Readers {
    count: usize,
    staging: Option<Arc<Staging>>,
}

/// What one reader does.
enum Role {
    /// Reads the producer's memory directly ([`super::cma`]): a reader
    /// expected to be alone costs the producer nothing.
    Direct,
    /// Copies the object into a new staging segment for itself and the
    /// readers that follow.
    Copier(Arc<Staging>),
    /// Follows the copy into the object's staging segment.
    Follower(Arc<Staging>),
}

/// Objects whose readers are remembered (see [`Stagings`]).
const REMEMBERED: usize = 16;

/// The readers of the objects being read now, and how many readers the last
/// few objects read here had in all (the most recent last).
#[derive(Debug, Default)]
struct State {
    live: HashMap<ObjectId, Readers>,
    recent: VecDeque<(ObjectId, usize)>,
}

impl State {
    /// Counts one more reader of `id`: (readers of `id` before this one,
    /// readers of the object first read before it).
    fn count_reader(&mut self, id: &ObjectId) -> (usize, usize) {
        if let Some((_, readers)) = self.recent.iter_mut().find(|(k, _)| k == id) {
            *readers += 1;
            return (*readers - 1, 0);
        }
        let before = self.recent.back().map_or(0, |(_, readers)| *readers);
        self.recent.push_back((*id, 1));
        if self.recent.len() > REMEMBERED {
            self.recent.pop_front();
        }
        (0, before)
    }
}

/// The producer's staging segments: those of the objects being read now, with
/// their readers, and the idle ones kept for the next objects.
///
/// Who stages an object depends on the object before: a weight sync repeats,
/// and a reader alone (one generator) is served fastest straight from memory,
/// while several (fan-out) are served fastest from one staged copy. So an
/// object's first reader reads directly if the object read before it had one
/// reader; every other reader stages the object (or follows the copy under
/// way).
#[derive(Debug, Default)]
pub struct Stagings {
    state: Mutex<State>,
    idle: SegmentPool,
}

impl Stagings {
    /// Producer: serves one reader of `object` that asked for a staged read
    /// (whether it `may_read` this process's memory directly, and its
    /// `timeout`).
    pub fn serve(
        &self,
        id: &ObjectId,
        object: &StoredObject,
        may_read: bool,
        timeout: Duration,
        channel: &mut Channel,
    ) -> Result<()> {
        let deadline = deadline_after(timeout);
        crate::hold::point("serve");
        let (_, total) = packed_extents(&object.layout.lengths());
        let role = self.join(id, total, may_read)?;
        let _reader = Reader {
            stagings: self,
            id: *id,
        };
        let (staging, copies) = match role {
            Role::Direct => return serve_read(object, channel, timeout),
            Role::Copier(staging) => (staging, true),
            Role::Follower(staging) => (staging, false),
        };
        let mut first = vec![wire::REPLY_OK, MODE_STAGED];
        first.extend_from_slice(&total.to_le_bytes());
        let sent = channel.send_with_fd(&first, Some(staging.segment.fd()), REPLY_TIMEOUT);
        if copies {
            // The other readers wait on this copy: it goes on whatever
            // becomes of this reader.
            let mut sent = sent;
            staging.fill(object, |upto| {
                if sent.is_ok() {
                    sent = report_landed(channel, upto);
                }
            });
            sent?;
        } else {
            sent?;
            staging.follow(deadline, |upto| report_landed(channel, upto))?;
        }
        // The reader copies the last chunks now; the segment stays with it
        // until it says it is done.
        channel.recv(timeout)?;
        channel.send(&[wire::REPLY_OK], REPLY_TIMEOUT)
    }

    /// Joins the readers of object `id` (`total` bytes packed): the first
    /// reads directly if it `may_read` and the object before had one reader;
    /// a reader while no copy is under way makes one into a staging segment;
    /// the ones that come during a copy follow it.
    fn join(&self, id: &ObjectId, total: u64, may_read: bool) -> Result<Role> {
        let mut state = self.state.lock();
        let (earlier, before) = state.count_reader(id);
        let readers = state.live.entry(*id).or_default();
        if let Some(staging) = readers.staging.clone() {
            readers.count += 1;
            return Ok(Role::Follower(staging));
        }
        if earlier == 0 && before <= 1 && may_read {
            readers.count += 1;
            return Ok(Role::Direct);
        }
        let staging = match self.stage(total) {
            Ok(staging) => staging,
            Err(e) => {
                if readers.count == 0 {
                    state.live.remove(id);
                }
                return Err(e);
            }
        };
        readers.count += 1;
        readers.staging = Some(staging.clone());
        Ok(Role::Copier(staging))
    }

    /// A staging segment for `total` bytes: an idle one, or a new one.
    ///
    /// Called under the state lock. A new segment is mapped without
    /// populating it: its pages are made as the copy writes them, chunk by
    /// chunk, outside the lock (populating 256 MiB here takes as long as
    /// faulting it in, 60-150 ms, which readers of other objects would wait).
    fn stage(&self, total: u64) -> Result<Arc<Staging>> {
        let segment = match self.idle.take(total as usize) {
            Some(segment) => segment,
            None => {
                let fd = segment::create(c"ray-rdt-stage", total)?;
                let mapping = Mapping::new(&fd, total as usize, false)?;
                Segment { fd, mapping }
            }
        };
        Ok(Arc::new(Staging {
            segment: self.idle.lease(segment),
            total,
            landed: Mutex::new(Landed::Upto(0)),
            moved: Condvar::new(),
        }))
    }
}

/// One reader of an object, counted until it drops.
struct Reader<'a> {
    stagings: &'a Stagings,
    id: ObjectId,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let live = &mut self.stagings.state.lock().live;
        if let Some(readers) = live.get_mut(&self.id) {
            readers.count -= 1;
            if readers.count == 0 {
                live.remove(&self.id);
            }
        }
    }
}

/// Consumer: reads the object into the caller's tensors (`runs`): directly
/// from the producer's memory if the producer says so (the first reader, and
/// this process `may_read` it), else through the producer's staging segment,
/// mapped through `mappings`.
pub fn read(
    mappings: &MappingCache,
    peer: &Peer<'_>,
    id: &ObjectId,
    meta: &Metadata,
    runs: &Runs,
    timeout: Duration,
    may_read: bool,
) -> Result<()> {
    let deadline = deadline_after(timeout);
    let left = || deadline.saturating_duration_since(Instant::now());
    let (offsets, total) = packed_extents(&meta.extents);
    let body = request_body(MODE_STAGED, &[u8::from(may_read)], timeout);
    let request = fetch_request(TransportKind::Shm, meta, id, &body);
    peer.exchange(timeout, |channel| {
        channel.send(&request, timeout)?;
        let reply = channel.recv(timeout)?;
        let said = match wire::parse_reply(&reply.payload)? {
            [MODE_READ, first @ ..] if may_read => {
                return read_direct(channel, first, meta, runs, deadline)
            }
            [MODE_MAPPED, first @ ..] => {
                return read_mapped(mappings, channel, reply.fd, first, meta, runs, deadline)
            }
            [MODE_STAGED, said @ ..] => le_u64(said, "shm staged reply")?,
            _ => return Err(Error::transport("malformed shm staged reply")),
        };
        if said != total {
            return Err(Error::transport(format!(
                "the producer stages {said} bytes, the record describes {total}"
            )));
        }
        let fd = reply
            .fd
            .ok_or_else(|| Error::transport("the producer sent no staging segment"))?;
        let (identity, size) = segment::identity(&fd)?;
        if size < total {
            return Err(Error::transport(format!(
                "the staging segment is {size} bytes, the record describes {total}"
            )));
        }
        let producer = channel.peer_pid().unwrap_or(0);
        let mapping = mappings.get(identity, producer, &fd, size as usize)?;
        crate::hold::point("fetch");
        let base = mapping.as_ptr() as usize;
        let starts: Vec<usize> = offsets.iter().map(|&o| base + o as usize).collect();
        let mut pieces: Vec<Piece> = runs
            .pieces(&starts)
            .iter()
            .flat_map(|p| cut(*p, CHUNK))
            .collect();
        pieces.sort_by_key(|p| p.src + p.len);
        let mut next = 0;
        let mut landed = 0;
        while landed < total {
            let frame = channel.recv(left())?;
            landed = le_u64(wire::parse_reply(&frame.payload)?, "shm staged report")?.min(total);
            let end = base + landed as usize;
            let ready = pieces[next..].partition_point(|p| p.src + p.len <= end);
            // SAFETY: the sources lie in the mapped segment and have landed
            // (the runs were checked against the record's extents, which fit
            // the segment); the destinations are the caller's targets.
            unsafe { copy_chunk(&pieces[next..next + ready]) };
            next += ready;
        }
        channel.send(&[0], left())?;
        if !wire::parse_reply(&channel.recv(left())?.payload)?.is_empty() {
            return Err(Error::transport("malformed shm staged acknowledgement"));
        }
        Ok(())
    })
}

/// Producer: tells the reader the first `upto` bytes have landed.
fn report_landed(channel: &mut Channel, upto: u64) -> Result<()> {
    let mut frame = vec![wire::REPLY_OK];
    frame.extend_from_slice(&upto.to_le_bytes());
    channel.send(&frame, REPLY_TIMEOUT)
}

/// `piece` in parts of at most `most` bytes.
fn cut(piece: Piece, most: usize) -> impl Iterator<Item = Piece> {
    (0..piece.len).step_by(most.max(1)).map(move |at| Piece {
        dst: piece.dst + at,
        src: piece.src + at,
        len: most.min(piece.len - at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn staging(total: u64) -> Staging {
        let pool = SegmentPool::default();
        let fd = segment::create(c"test", total).unwrap();
        let mapping = Mapping::new(&fd, total as usize, false).unwrap();
        Staging {
            segment: pool.lease(Segment { fd, mapping }),
            total,
            landed: Mutex::new(Landed::Upto(0)),
            moved: Condvar::new(),
        }
    }

    #[test]
    fn pieces_cut_and_grouped_keep_every_byte_in_order() {
        let lens = [10 << 20, 1024, 1024, 1024, 5 << 20, 0];
        let mut at = 0;
        let pieces: Vec<Piece> = lens
            .iter()
            .map(|&len| {
                let p = Piece {
                    dst: at,
                    src: 1 << 40 | at,
                    len,
                };
                at += len;
                p
            })
            .collect();
        let cuts: Vec<Piece> = pieces.iter().flat_map(|p| cut(*p, CHUNK)).collect();
        assert!(cuts.iter().all(|p| p.len <= CHUNK && p.len > 0));
        let grouped = groups(&cuts, CHUNK);
        let (last, full) = grouped.split_last().unwrap();
        assert!(full
            .iter()
            .all(|g| g.iter().map(|p| p.len).sum::<usize>() >= CHUNK));
        assert!(!last.is_empty());
        // Concatenated, the groups are the pieces' bytes, once each, in order.
        let mut next = 0;
        for p in grouped.concat() {
            assert_eq!((p.dst, p.src), (next, 1 << 40 | next));
            next += p.len;
        }
        assert_eq!(next, at);
    }

    #[test]
    fn the_copy_lands_every_extent_packed_and_reports_the_total_once() {
        use crate::dlpack::{kDLUInt, DLDataType};
        use crate::layout::ObjectLayout;
        use crate::store::CopyKind;
        use crate::tensor::{Tensor, TensorMeta};
        let u8s = DLDataType {
            code: kDLUInt,
            bits: 8,
            lanes: 1,
        };
        // Separate allocations: several extents, one longer than a chunk.
        let tensors: Vec<Tensor> = [CHUNK + 5, 1000, 3 * CHUNK, 7]
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let meta = TensorMeta::compact(u8s, vec![len as i64]).unwrap();
                let mut t = Tensor::alloc_host(&meta).unwrap();
                let bytes = t.host_bytes_mut().unwrap();
                bytes
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (i * 31 + j % 251) as u8);
                t
            })
            .collect();
        let layout = ObjectLayout::of(&tensors).unwrap();
        let object = StoredObject {
            tensors,
            kind: CopyKind::Primary,
            layout,
        };
        let (offsets, total) = packed_extents(&object.layout.lengths());
        let staging = staging(total);
        let mut reports = Vec::new();
        staging.fill(&object, |upto| reports.push(upto));
        assert_eq!(
            reports.iter().filter(|&&r| r == total).count(),
            1,
            "{reports:?}"
        );
        assert_eq!(reports.last(), Some(&total));
        assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
        assert!(reports.len() > 2, "{reports:?}");
        assert_eq!(*staging.landed.lock(), Landed::Upto(total));
        // Every byte of every tensor (a gap an extent spans between two
        // allocations is no tensor's, and is not copied).
        for (e, offset, len) in object.covered() {
            let (e, offset, len) = (e as usize, offset as usize, len as usize);
            // SAFETY: extent `e` of the stored object, on the host.
            let extent = unsafe { object.layout.host_bytes(e) };
            // SAFETY: the packed extent lies in the segment.
            let landed = unsafe {
                let at = staging.segment.as_ptr().add(offsets[e] as usize + offset);
                std::slice::from_raw_parts(at, len)
            };
            assert!(
                landed == &extent[offset..offset + len],
                "extent {e} differs"
            );
        }
    }

    #[test]
    fn readers_read_directly_alone_and_share_a_staged_copy_when_several() {
        use crate::object_id::OBJECT_ID_LEN;
        let stagings = Stagings::default();
        let role = |id: &ObjectId, may_read| match stagings.join(id, 4096, may_read).unwrap() {
            Role::Direct => "direct",
            Role::Copier(_) => "copier",
            Role::Follower(_) => "follower",
        };
        let leave = |id: ObjectId, n| {
            for _ in 0..n {
                drop(Reader {
                    stagings: &stagings,
                    id,
                });
            }
        };
        // A first object: its first reader reads directly, a second one
        // (while the first still reads) stages it, a third follows; a fourth,
        // once they are all done, stages it again.
        let first = ObjectId([1; OBJECT_ID_LEN]);
        assert_eq!(role(&first, true), "direct");
        assert_eq!(role(&first, true), "copier");
        assert_eq!(role(&first, true), "follower");
        leave(first, 3);
        assert!(stagings.state.lock().live.is_empty());
        assert_eq!(role(&first, true), "copier");
        leave(first, 1);
        // It had several readers: the next object is staged from its first
        // reader on.
        let second = ObjectId([2; OBJECT_ID_LEN]);
        assert_eq!(role(&second, true), "copier");
        leave(second, 1);
        // That one had one reader: the next is read directly again, unless
        // its reader may not read this process's memory.
        let third = ObjectId([3; OBJECT_ID_LEN]);
        assert_eq!(role(&third, false), "copier");
        leave(third, 1);
        let fourth = ObjectId([4; OBJECT_ID_LEN]);
        assert_eq!(role(&fourth, true), "direct");
        leave(fourth, 1);
        assert!(stagings.state.lock().live.is_empty());
    }

    #[test]
    fn a_follower_hears_every_landing_up_to_the_total() {
        let staging = staging(4096);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut heard = Vec::new();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for upto in [1000, 4096] {
                    std::thread::sleep(Duration::from_millis(20));
                    staging.set(Landed::Upto(upto));
                }
            });
            staging
                .follow(deadline, |upto| {
                    heard.push(upto);
                    Ok(())
                })
                .unwrap();
        });
        assert_eq!(heard.last(), Some(&4096));
        assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
    }

    #[test]
    fn an_abandoned_or_late_copy_fails_its_followers() {
        let staging = staging(4096);
        staging.set(Landed::Upto(100));
        let soon = Instant::now() + Duration::from_millis(50);
        let late = staging.follow(soon, |_| Ok(())).unwrap_err();
        assert_eq!(late.kind(), ErrorKind::Timeout, "{late}");
        staging.set(Landed::Abandoned);
        let later = Instant::now() + Duration::from_secs(10);
        let gone = staging.follow(later, |_| Ok(())).unwrap_err();
        assert_eq!(gone.kind(), ErrorKind::Transport, "{gone}");
        assert!(gone.to_string().contains("stopped part way"), "{gone}");
    }
}
