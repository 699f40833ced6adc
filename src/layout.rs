//! Where an object's bytes are: a few extents and a table that places each
//! tensor in one of them.
//!
//! A model's parameters are views of a few large allocations; the rows of one
//! matrix are views of one. The producer therefore describes an object by its
//! **extents** (the used byte ranges of the memory its tensors live in: each
//! allocation's span, once) and gives every non-empty tensor a [`Place`]: an
//! extent and a byte offset in it. Transports move extents (one registration,
//! one mapping, one message stream per extent), never tensors one by one; a
//! consumer lays the extents out in one buffer of its own and makes its tensors
//! views of it, or lands the bytes straight in the caller's tensors
//! ([`Runs`]).
//!
//! Every tensor a record places is row-major contiguous at its offset: the
//! producer packs a non-contiguous host tensor into a staging extent of its own
//! when the object is stored (a strided view's span holds bytes that are not
//! its own, so it cannot travel in place).

use crate::copy::Piece;
use crate::dlpack::{kDLCUDA, DLDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::{is_host, HostBuffer, Tensor};

/// Where one tensor's bytes are: an extent of the object and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Index of the extent in the object's extent list.
    pub extent: u32,
    /// Byte offset of the tensor's first element in that extent.
    pub offset: u64,
}

/// One extent of a stored object: a byte range of the producer's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceExtent {
    /// Address of the first byte (device memory for CUDA objects).
    pub addr: usize,
    /// Length in bytes.
    pub len: u64,
}

/// The producer's layout of a stored object.
#[derive(Debug, Default)]
pub struct ObjectLayout {
    /// The extents, in address order.
    pub extents: Vec<SourceExtent>,
    /// One per tensor; `None` for a tensor of no bytes.
    pub places: Vec<Option<Place>>,
    /// Packed copies of non-contiguous host tensors (their extents point here).
    _staging: Vec<HostBuffer>,
}

/// Host page size used by the merge rule (the smallest Linux page).
const PAGE: usize = 4096;

impl ObjectLayout {
    /// Groups `tensors` into extents.
    ///
    /// Host tensors whose byte spans overlap, touch, or leave a gap that lies
    /// within the pages of its neighbours (so every byte of the merged range is
    /// mapped memory) share one extent: views of one allocation become one.
    /// A non-contiguous host tensor is packed into a staging buffer that becomes
    /// its extent. CUDA tensors merge only where their spans overlap (two
    /// touching CUDA ranges may be different allocations, which one registration
    /// cannot cover); a non-contiguous CUDA tensor is refused.
    pub fn of(tensors: &[Tensor]) -> Result<ObjectLayout> {
        let mut staging = Vec::new();
        // (start, end, tensor index) of every non-empty tensor's bytes.
        let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let n = t.meta().nbytes as usize;
            if n == 0 {
                continue;
            }
            let start = if t.meta().is_contiguous() {
                t.data_ptr()
            } else if is_host(t.device()) {
                let buf = HostBuffer::new(n)?;
                // SAFETY: the buffer is n bytes long and owned here.
                t.pack_into(unsafe { std::slice::from_raw_parts_mut(buf.as_ptr(), n) })?;
                let start = buf.as_ptr() as usize;
                staging.push(buf);
                start
            } else {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("tensor {i} is a non-contiguous {} tensor: its bytes cannot be moved in place (call .contiguous())", crate::tensor::device_name(t.device())),
                ));
            };
            let end = start.checked_add(n).ok_or_else(|| {
                Error::invalid(format!("tensor {i}'s bytes wrap the address space"))
            })?;
            spans.push((start, end, i));
        }
        let cuda = tensors
            .first()
            .is_some_and(|t| t.device().device_type == kDLCUDA);
        let ranges: Vec<(usize, usize)> = spans.iter().map(|&(s, e, _)| (s, e)).collect();
        let (merged, of_span) = coalesce_indexed(&ranges, cuda);
        let mut places = vec![None; tensors.len()];
        for (&(start, _, i), &e) in spans.iter().zip(&of_span) {
            places[i] = Some(Place {
                extent: e,
                offset: (start - merged[e as usize].0) as u64,
            });
        }
        Ok(ObjectLayout {
            extents: merged.into_iter().map(|(s, e)| extent(s, e)).collect(),
            places,
            _staging: staging,
        })
    }

    /// The layout of tensors received as a record describes them (`places`
    /// and extent `lengths`): extent `i` starts where a tensor placed in it
    /// starts, less that tensor's offset. For the tensors of a fetch (views
    /// laid out by [`packed_extents`]), whose extents must stay the record's
    /// ([`ObjectLayout::of`] may group neighbours differently).
    pub fn received(
        tensors: &[Tensor],
        places: &[Option<Place>],
        lengths: &[u64],
    ) -> Result<ObjectLayout> {
        let mut starts: Vec<Option<usize>> = vec![None; lengths.len()];
        for (t, place) in tensors.iter().zip(places) {
            let Some(p) = place else { continue };
            let start = starts.get_mut(p.extent as usize).ok_or_else(|| {
                Error::malformed(format!(
                    "a tensor is placed in extent {}, which the record lacks",
                    p.extent
                ))
            })?;
            start.get_or_insert(t.data_ptr().wrapping_sub(p.offset as usize));
        }
        let extents = starts
            .iter()
            .zip(lengths)
            .enumerate()
            .map(|(i, (start, &len))| {
                start.map(|addr| SourceExtent { addr, len }).ok_or_else(|| {
                    Error::malformed(format!("extent {i} of the record holds no tensor"))
                })
            })
            .collect::<Result<_>>()?;
        Ok(ObjectLayout {
            extents,
            places: places.to_vec(),
            _staging: Vec::new(),
        })
    }

    /// Copy pieces that lay the `covered` ranges of the extents (see
    /// [`covered`]) out in a buffer at `base`, each where [`packed_extents`]
    /// places its extent: a gap merged between two allocations is neither
    /// tensor's to read, and its bytes in the buffer are left as they are.
    pub fn packed_pieces(&self, base: usize, covered: &[(u32, u64, u64)]) -> Vec<Piece> {
        let (offsets, _) = packed_extents(&self.lengths());
        covered
            .iter()
            .map(|&(e, offset, len)| Piece {
                dst: base + (offsets[e as usize] + offset) as usize,
                src: self.extents[e as usize].addr + offset as usize,
                len: len as usize,
            })
            .collect()
    }

    /// The extents' lengths, as a record carries them.
    pub fn lengths(&self) -> Vec<u64> {
        self.extents.iter().map(|e| e.len).collect()
    }

    /// Bytes of all extents.
    pub fn total(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// The bytes of extent `i` (host objects only).
    ///
    /// # Safety
    /// The object's tensors (and so the memory the extent covers) must stay
    /// alive while the slice is used, and the extent must be host memory.
    pub unsafe fn host_bytes(&self, i: usize) -> &[u8] {
        let e = self.extents[i];
        if e.len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(e.addr as *const u8, e.len as usize)
    }
}

/// The byte ranges of an object's extents that its tensors (placed at
/// `places`, of byte sizes `sizes`) cover, as `(extent, offset, len)`, sorted
/// and merged. An extent merged across a gap between two allocations (see
/// [`ObjectLayout::of`]) covers two ranges: the gap belongs to neither tensor,
/// so no copy or message ever reads it. Producer and consumer derive the same
/// ranges, the producer from its layout, the consumer from the record.
pub fn covered(places: &[Option<Place>], sizes: &[u64]) -> Vec<(u32, u64, u64)> {
    let mut spans: Vec<(u32, u64, u64)> = places
        .iter()
        .zip(sizes)
        .filter_map(|(p, &n)| {
            p.filter(|_| n > 0)
                .map(|p| (p.extent, p.offset, p.offset + n))
        })
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u32, u64, u64)> = Vec::with_capacity(spans.len());
    for (e, start, end) in spans {
        match out.last_mut() {
            Some(last) if last.0 == e && start <= last.2 => last.2 = last.2.max(end),
            _ => out.push((e, start, end)),
        }
    }
    out.into_iter().map(|(e, s, end)| (e, s, end - s)).collect()
}

/// Groups byte ranges `(start, end)` into extents (see [`ObjectLayout::of`]
/// for the rule): the extents in address order and each range's extent.
pub fn coalesce_indexed(spans: &[(usize, usize)], cuda: bool) -> (Vec<(usize, usize)>, Vec<u32>) {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_unstable_by_key(|&i| spans[i]);
    let mut extents: Vec<(usize, usize)> = Vec::new();
    let mut of_span = vec![0u32; spans.len()];
    for i in order {
        let (start, end) = spans[i];
        match extents.last_mut() {
            Some(last) if mergeable(cuda, *last, start) => last.1 = last.1.max(end),
            _ => extents.push((start, end)),
        }
        of_span[i] = (extents.len() - 1) as u32;
    }
    (extents, of_span)
}

/// The extents byte ranges `(start, end)` group into (see [`coalesce_indexed`]).
#[cfg_attr(not(feature = "nixl"), allow(dead_code))]
pub fn coalesce(spans: &[(usize, usize)], cuda: bool) -> Vec<(usize, usize)> {
    coalesce_indexed(spans, cuda).0
}

/// Whether a span starting at `start` joins the extent `(s, e)` (spans come in
/// address order).
fn mergeable(cuda: bool, (_, e): (usize, usize), start: usize) -> bool {
    if start < e {
        return true; // overlapping views of one allocation
    }
    if cuda {
        return false;
    }
    // Touching, or a gap inside the last page of the extent and the first page
    // of the span (both mapped): every byte in between is readable.
    start / PAGE <= (e - 1) / PAGE + 1
}

fn extent(start: usize, end: usize) -> SourceExtent {
    SourceExtent {
        addr: start,
        len: (end - start) as u64,
    }
}

/// One piece of a transfer that lands in caller-owned memory: `len` bytes of
/// extent `extent` from byte `offset` go to address `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Source extent.
    pub extent: u32,
    /// Byte offset in the source extent.
    pub offset: u64,
    /// Destination address (host memory, or device memory for CUDA targets).
    pub dst: usize,
    /// Length in bytes.
    pub len: u64,
}

/// Where the bytes of an object land in the caller's tensors (targets): runs
/// sorted by source extent and offset, disjoint, each as long as the source
/// and the targets are both contiguous.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs {
    /// The runs, in source order.
    pub runs: Vec<Run>,
}

impl Runs {
    /// Runs for targets at `dsts` (one address per tensor; ignored for empty
    /// tensors) of tensors placed at `places` with byte sizes `sizes`: one per
    /// tensor, joined when both its source and its target follow the previous
    /// tensor's with no gap.
    pub fn new(places: &[Option<Place>], sizes: &[u64], dsts: &[usize]) -> Runs {
        let mut order: Vec<(Place, usize, u64)> = places
            .iter()
            .zip(sizes)
            .zip(dsts)
            .filter_map(|((p, &n), &d)| p.filter(|_| n > 0).map(|p| (p, d, n)))
            .collect();
        order.sort_unstable_by_key(|(p, _, _)| (p.extent, p.offset));
        let mut runs: Vec<Run> = Vec::with_capacity(order.len());
        for (p, dst, len) in order {
            if let Some(last) = runs.last_mut() {
                if last.extent == p.extent
                    && last.offset + last.len == p.offset
                    && last.dst + last.len as usize == dst
                {
                    last.len += len;
                    continue;
                }
            }
            runs.push(Run {
                extent: p.extent,
                offset: p.offset,
                dst,
                len,
            });
        }
        Runs { runs }
    }

    /// The runs as copy pieces from a source whose extent `i` starts at
    /// `extent_starts[i]` (the runs were checked against the same extents).
    pub fn pieces(&self, extent_starts: &[usize]) -> Vec<Piece> {
        self.runs
            .iter()
            .map(|r| Piece {
                dst: r.dst,
                src: extent_starts[r.extent as usize] + r.offset as usize,
                len: r.len as usize,
            })
            .collect()
    }

    /// Whether two runs read the same source bytes (tied weights: a tensor
    /// and a view inside it, both in the object).
    pub fn sources_overlap(&self) -> bool {
        let mut reach: Option<(u32, u64)> = None;
        for r in &self.runs {
            match reach {
                Some((extent, end)) if extent == r.extent && r.offset < end => return true,
                Some((extent, end)) if extent == r.extent => {
                    reach = Some((extent, end.max(r.offset + r.len)))
                }
                _ => reach = Some((r.extent, r.offset + r.len)),
            }
        }
        false
    }

    /// Total bytes the runs move.
    #[cfg_attr(not(feature = "nixl"), allow(dead_code))]
    pub fn total(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }
}

/// Offset of each extent when the extents of `lengths` are laid out one after
/// another in one buffer (each 64-byte aligned), and the buffer's length.
pub fn packed_extents(lengths: &[u64]) -> (Vec<u64>, u64) {
    crate::transport::packed_layout(lengths.iter().copied())
}

/// The record's tensors as views of a buffer at `base` in which extent `i`
/// starts at `extent_offsets[i]`; each view keeps `owner` alive. Empty tensors
/// point at `base`.
pub fn views(
    meta: &crate::metadata::Metadata,
    base: usize,
    extent_offsets: &[u64],
    device: DLDevice,
    owner: std::sync::Arc<dyn std::any::Any + Send + Sync>,
) -> Vec<Tensor> {
    meta.tensors
        .iter()
        .zip(&meta.places)
        .map(|(m, place)| {
            let at = place.map_or(0, |p| extent_offsets[p.extent as usize] + p.offset);
            Tensor::from_owner(
                m.clone(),
                device,
                (base + at as usize) as *mut _,
                Box::new(owner.clone()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_within_neighbouring_pages_merge_and_others_do_not() {
        // Touching.
        assert!(mergeable(false, (0, 100), 100));
        // Gap inside the next page.
        assert!(mergeable(false, (0, 100), PAGE + 10));
        // Two pages away: not every byte in between is known to be mapped.
        assert!(!mergeable(false, (0, 100), 2 * PAGE));
        // CUDA: only overlapping spans.
        assert!(!mergeable(true, (0, 100), 100));
        assert!(mergeable(true, (0, 100), 50));
    }

    #[test]
    fn covered_ranges_leave_out_the_gaps_between_allocations() {
        let p = |extent, offset| Some(Place { extent, offset });
        // The second overlaps the first; the third follows a gap.
        let places = [p(0, 0), p(0, 50), p(0, 200), None, p(1, 0)];
        assert_eq!(
            covered(&places, &[100, 60, 100, 0, 8]),
            vec![(0, 0, 110), (0, 200, 100), (1, 0, 8)]
        );
    }

    #[test]
    fn runs_join_only_where_source_and_target_both_follow_on() {
        let p = |extent, offset| Some(Place { extent, offset });
        let places = [p(0, 0), p(0, 8), p(0, 16), p(1, 0), None];
        let sizes = [8, 8, 8, 4, 0];
        // Targets: first two adjacent, third elsewhere, fourth adjacent to the third.
        let dsts = [1000, 1008, 5000, 5008, 0];
        let runs = Runs::new(&places, &sizes, &dsts);
        assert_eq!(
            runs.runs,
            vec![
                Run {
                    extent: 0,
                    offset: 0,
                    dst: 1000,
                    len: 16
                },
                Run {
                    extent: 0,
                    offset: 16,
                    dst: 5000,
                    len: 8
                },
                Run {
                    extent: 1,
                    offset: 0,
                    dst: 5008,
                    len: 4
                },
            ]
        );
        assert_eq!(runs.total(), 28);
        assert!(!runs.sources_overlap());
    }

    #[test]
    fn runs_that_read_the_same_source_bytes_overlap() {
        let p = |extent, offset| Some(Place { extent, offset });
        // A tensor and a view inside it (tied weights), then the next extent.
        let runs = Runs::new(
            &[p(0, 0), p(0, 4), p(1, 0)],
            &[16, 4, 8],
            &[1000, 2000, 3000],
        );
        assert!(runs.sources_overlap());
        // The same offsets in different extents do not overlap.
        let runs = Runs::new(&[p(0, 0), p(1, 0)], &[16, 16], &[1000, 2000]);
        assert!(!runs.sources_overlap());
    }
}
