//! Host memory copies of many pieces, split over two threads when large (one
//! core rarely saturates memory bandwidth), large pieces with streaming stores
//! ([`crate::stream_copy`]: the destination is not read into the cache first).

/// One piece of a copy: `len` bytes from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Destination address.
    pub dst: usize,
    /// Source address.
    pub src: usize,
    /// Length in bytes.
    pub len: usize,
}

/// Copies of at least this many bytes in all use two threads.
const PARALLEL_FROM: usize = 8 << 20;
/// Pieces of at least this many bytes are copied with streaming stores in a
/// large copy; smaller ones stay in the cache for whoever reads them next
/// (measured here: 256 MiB in 64 KiB pieces, 26.8 ms streamed against glibc's
/// 38.5 ms; in 1 MiB pieces, 24.6 ms).
const STREAM_FROM: usize = 256 << 10;
/// A copy of at least this many bytes in all is large: it streams its large
/// pieces. A smaller one may well stay in the cache, where ordinary stores
/// win (the same 4 MiB copied again and again: 0.32 ms ordinary, up to
/// 0.38 ms streamed).
const LARGE_COPY: usize = 16 << 20;

/// Splits `pieces` into two parts of half the bytes each (give or take one),
/// one for each of two threads; a piece across the middle is cut in two.
pub fn halves(pieces: &[Piece]) -> (Vec<Piece>, Vec<Piece>) {
    let total: usize = pieces.iter().map(|p| p.len).sum();
    split_at_bytes(
        pieces,
        total / 2,
        |p| p.len,
        |p, head| {
            (
                Piece { len: head, ..*p },
                Piece {
                    dst: p.dst + head,
                    src: p.src + head,
                    len: p.len - head,
                },
            )
        },
    )
}

/// Splits `pieces` so that the first part holds `at` bytes (a piece that
/// straddles the point is cut in two).
pub fn split_at_bytes<T: Copy>(
    pieces: &[T],
    at: usize,
    len: impl Fn(&T) -> usize,
    cut: impl Fn(&T, usize) -> (T, T),
) -> (Vec<T>, Vec<T>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut seen = 0usize;
    for p in pieces {
        let n = len(p);
        let head = at.saturating_sub(seen).min(n);
        if head == n {
            first.push(*p);
        } else if head == 0 {
            second.push(*p);
        } else {
            let (a, b) = cut(p, head);
            first.push(a);
            second.push(b);
        }
        seen += n;
    }
    (first, second)
}

/// Copies every piece (memmove semantics: a piece's source and destination may
/// overlap; pieces must not overlap each other's destinations). A copy of
/// 16 MiB or more in all streams its pieces of 256 KiB and more.
///
/// # Safety
/// Every piece's source must be readable and its destination writable for
/// `len` bytes, for the whole call.
pub unsafe fn copy_pieces(pieces: &[Piece]) {
    let total: usize = pieces.iter().map(|p| p.len).sum();
    copy_split(pieces, total, total >= LARGE_COPY);
}

/// As [`copy_pieces`], for one chunk of a larger copy (a staged object, 4 MiB
/// at a time): its pieces of 256 KiB and more are streamed whatever the
/// chunk's size.
///
/// # Safety
/// As [`copy_pieces`].
pub unsafe fn copy_chunk(pieces: &[Piece]) {
    let total: usize = pieces.iter().map(|p| p.len).sum();
    copy_split(pieces, total, true);
}

/// # Safety
/// As [`copy_pieces`]; `total` is the pieces' bytes.
unsafe fn copy_split(pieces: &[Piece], total: usize, stream: bool) {
    // A piece onto itself is moved as memmove moves it: forward streaming or
    // two threads could each overwrite bytes before they are read.
    if pieces.iter().any(|p| p.overlaps_itself()) {
        for p in pieces {
            std::ptr::copy(p.src as *const u8, p.dst as *mut u8, p.len);
        }
        return;
    }
    if total < PARALLEL_FROM {
        copy_serial(pieces, stream);
        return;
    }
    let (first, second) = halves(pieces);
    std::thread::scope(|scope| {
        // SAFETY: as the caller promised, for disjoint halves of the pieces.
        scope.spawn(|| unsafe { copy_serial(&second, stream) });
        copy_serial(&first, stream);
    });
}

/// # Safety
/// As [`copy_pieces`], and no piece overlaps itself.
unsafe fn copy_serial(pieces: &[Piece], stream: bool) {
    for p in pieces {
        if stream && p.len >= STREAM_FROM {
            // SAFETY: as the caller promised; the two ranges are apart.
            crate::stream_copy::copy_nonoverlapping(p.dst as *mut u8, p.src as *const u8, p.len);
        } else {
            std::ptr::copy_nonoverlapping(p.src as *const u8, p.dst as *mut u8, p.len);
        }
    }
}

impl Piece {
    /// Whether the piece's source and destination share a byte.
    fn overlaps_itself(&self) -> bool {
        self.dst < self.src + self.len && self.src < self.dst + self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_copies_of_many_pieces_arrive_whole() {
        let n = 9 << 20;
        let src: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; n];
        // Three uneven pieces, so the split point falls inside one of them.
        let cuts = [0, 1000, 5 << 20, n];
        let pieces: Vec<Piece> = cuts
            .windows(2)
            .map(|w| Piece {
                dst: dst.as_mut_ptr() as usize + w[0],
                src: src.as_ptr() as usize + w[0],
                len: w[1] - w[0],
            })
            .collect();
        // SAFETY: every piece lies inside the two vectors.
        unsafe { copy_pieces(&pieces) };
        assert!(dst == src);
    }

    #[test]
    fn a_large_piece_onto_itself_moves_as_memmove_does() {
        // One piece of a large copy whose destination overlaps its source,
        // a page further on: a forward streaming copy, or two threads each
        // copying a half, would overwrite source bytes before reading them.
        let n = LARGE_COPY;
        type Copy = unsafe fn(&[Piece]);
        let copies: [(&str, Copy); 2] = [("copy_pieces", copy_pieces), ("copy_chunk", copy_chunk)];
        for (name, copy) in copies {
            let mut buf: Vec<u8> = (0..n + 4096).map(|i| (i % 253) as u8).collect();
            let want: Vec<u8> = buf[..n].to_vec();
            let base = buf.as_mut_ptr() as usize;
            let piece = Piece {
                dst: base + 4096,
                src: base,
                len: n,
            };
            // SAFETY: both ranges lie inside the buffer; memmove semantics
            // allow the overlap.
            unsafe { copy(&[piece]) };
            assert!(buf[4096..] == want[..], "{name}");
        }
    }
}
