//! Weight-sync shapes between real processes, over shm, nixl and gloo: an
//! object of 100,000 tensors that are the rows of one matrix (one extent, one
//! registration), one of 100,000 separate allocations, and two whose tensors
//! overlap (a matrix twice, as tied weights are, with views of some of its
//! rows; views nested in one another), fetched by a consumer process into new
//! tensors, into targets laid out back to back in one buffer (the direct case)
//! and into separate targets in a shuffled order (the scattered case), every
//! byte checked and the bytes counted; and the checks on targets (count,
//! shape, dtype, contiguity, device, overlap) refusing before any byte moves.
//! Over gloo also objects of many small separate allocations, each its own
//! extent, which gloo packs into shared messages.
//!
//! The producer is the test process; the consumer is a child driven line by
//! line over its stdin and stdout (replies tagged `>> `), as in tests/gloo.rs.
//! A record of 100,000 tensors (about 600 KB) does not fit an environment
//! variable, so it travels on the line.

mod multiprocess;

use multiprocess::*;
use ray_rdt::dlpack::{kDLBfloat, kDLCUDA, kDLFloat, DLDataType, DLDevice};
use ray_rdt::testing::nixl;
use ray_rdt::testing::{stats, ErrorKind, Metadata, ObjectId, Target, Tensor, TensorMeta};
use ray_rdt::testing::{Context, Fetched, TransportKind};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tensors per object.
const ROWS: usize = 100_000;
/// Elements per tensor (one row).
const COLS: i64 = 24;
/// Bytes per tensor: 48, so a row straddles gloo's 4 MiB piece boundary
/// (4 MiB / 48 is not whole) and the 4.8 MB matrix travels as two pieces.
const ROW_BYTES: usize = COLS as usize * 2;
/// float16.
const F16: DLDataType = dtype(kDLFloat, 16);
/// bfloat16: as wide as float16, another dtype.
const BF16: DLDataType = dtype(kDLBfloat, 16);
/// Separate allocations come in groups of this many, with a [`FILLER`]-byte
/// allocation between groups: more than a page apart, so they cannot share an
/// extent.
const GROUP: usize = 1000;
const FILLER: usize = 64 << 10;
/// What target memory holds before a fetch.
const SENTINEL: u8 = 0xa5;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Seeds of the objects' contents.
const MATRIX_SEED: u8 = 3;
const SEPARATE_SEED: u8 = 101;
const TIED_SEED: u8 = 57;
const NESTED_SEED: u8 = 77;

/// Tensor `j`'s bytes in the object of `seed` (`out`: at least 5 bytes): its
/// index first (so every tensor differs), then a pattern.
fn fill_row(seed: u8, j: usize, out: &mut [u8]) {
    out.copy_from_slice(&pattern(out.len(), seed.wrapping_add(j as u8)));
    out[..4].copy_from_slice(&(j as u32).to_le_bytes());
    out[4] = seed;
}

fn row(seed: u8, j: usize) -> [u8; ROW_BYTES] {
    let mut r = [0u8; ROW_BYTES];
    fill_row(seed, j, &mut r);
    r
}

/// Views of one matrix, as (first row, rows): the matrix and rows of it
/// with the matrix again (tied weights): one row in gloo's first 4 MiB piece,
/// the row that straddles the pieces' boundary, the last row.
const TIED: [(usize, usize); 5] = [
    (0, ROWS),
    (5, 1),
    ((4 << 20) / ROW_BYTES, 1),
    (ROWS - 1, 1),
    (0, ROWS),
];
/// Views of one matrix that contain one another: the matrix, row 5, the
/// matrix from row 6 and from row 7 on, row 8.
const NESTED: [(usize, usize); 5] = [(0, ROWS), (5, 1), (6, ROWS - 6), (7, ROWS - 7), (8, 1)];

/// Tensors of the [`Shape::Small`] object and the bytes of each.
const SMALL: (usize, usize) = (5000, 4096);
/// Tensors of the [`Shape::Mixed`] object.
const MIXED: usize = 600;

/// Bytes of tensor `j` of the [`Shape::Mixed`] object: runs of small tensors
/// (48 B to just under 64 KiB, which gloo packs into shared messages) between
/// larger ones that travel alone: 64 KiB, 1 MiB, and 4 MiB + 48 (one full
/// 4 MiB message, then a 48-byte tail that packs with the small ones after it).
fn mixed_bytes(j: usize) -> usize {
    match (j % 150, j % 50) {
        (75, _) => (4 << 20) + 48,
        (140, _) => 1 << 20,
        (_, 10) => 64 << 10,
        _ => [48, 4096, (64 << 10) - 2, 2000][j % 4],
    }
}

/// The objects a producer puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The rows of one matrix.
    Matrix,
    /// Separate allocations.
    Separate,
    /// Overlapping views of one matrix: [`TIED`].
    Tied,
    /// Views of one matrix nested in one another: [`NESTED`].
    Nested,
    /// [`SMALL`] separate allocations of 4 KiB, each its own extent.
    Small,
    /// [`MIXED`] separate allocations of [`mixed_bytes`], each its own extent.
    Mixed,
}

impl Shape {
    const ALL: [Shape; 6] = [
        Shape::Matrix,
        Shape::Separate,
        Shape::Tied,
        Shape::Nested,
        Shape::Small,
        Shape::Mixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::Matrix => "matrix",
            Shape::Separate => "separate",
            Shape::Tied => "tied",
            Shape::Nested => "nested",
            Shape::Small => "small",
            Shape::Mixed => "mixed",
        }
    }

    fn from_name(name: &str) -> Shape {
        Shape::ALL.into_iter().find(|s| s.name() == name).unwrap()
    }

    /// The views of one matrix an object of this shape is.
    fn views(self) -> Option<&'static [(usize, usize)]> {
        match self {
            Shape::Tied => Some(&TIED),
            Shape::Nested => Some(&NESTED),
            _ => None,
        }
    }

    /// Tensors of an object of separate allocations of this shape.
    fn count(self) -> usize {
        match self {
            Shape::Small => SMALL.0,
            Shape::Mixed => MIXED,
            _ => ROWS,
        }
    }

    /// Bytes of tensor `j` of an object of separate allocations of this shape.
    fn tensor_bytes(self, j: usize) -> usize {
        match self {
            Shape::Small => SMALL.1,
            Shape::Mixed => mixed_bytes(j),
            _ => ROW_BYTES,
        }
    }

    /// The allocations of an object of separate allocations of this shape
    /// come in groups of this many, with a filler of this many bytes before
    /// each group: more than a page, so that groups cannot share an extent.
    fn fillers(self) -> (usize, usize) {
        match self {
            Shape::Small | Shape::Mixed => (1, 8 << 10),
            _ => (GROUP, FILLER),
        }
    }

    /// Tensor `j`'s bytes in the object of this shape and `seed`.
    fn expected(self, seed: u8, j: usize) -> Vec<u8> {
        match self.views() {
            None => {
                let mut bytes = vec![0; self.tensor_bytes(j)];
                fill_row(seed, j, &mut bytes);
                bytes
            }
            Some(views) => {
                let (first, rows) = views[j];
                (first..first + rows).flat_map(|r| row(seed, r)).collect()
            }
        }
    }

    /// Tensor `j`'s shape.
    fn shape(self, j: usize) -> Vec<i64> {
        match self.views().map(|v| v[j].1) {
            Some(rows) if rows > 1 => vec![rows as i64, COLS],
            Some(_) => vec![COLS],
            None => vec![(self.tensor_bytes(j) / 2) as i64],
        }
    }
}

/// The ROWS x COLS matrix of `seed`: row `j` is `row(seed, j)`.
fn matrix_bytes(seed: u8) -> Vec<u8> {
    let mut m = vec![0u8; ROWS * ROW_BYTES];
    for (j, r) in m.chunks_exact_mut(ROW_BYTES).enumerate() {
        fill_row(seed, j, r);
    }
    m
}

/// A permutation of `0..n` (Fisher-Yates over xorshift64), fixed by `seed`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

/// A compact float16 view of `shape` at byte `offset` of a shared buffer; it
/// keeps the buffer alive.
fn view(buffer: &Arc<Vec<u8>>, offset: usize, shape: Vec<i64>) -> Tensor {
    let meta = TensorMeta::compact(F16, shape).unwrap();
    assert!(offset + meta.nbytes as usize <= buffer.len());
    // The producer only reads through the pointer.
    let data = buffer[offset..].as_ptr() as *mut std::ffi::c_void;
    Tensor::from_owner(meta, DLDevice::cpu(), data, Box::new(buffer.clone()))
}

/// The rows of one ROWS x COLS float16 matrix, as views of it.
fn matrix_object(seed: u8) -> Vec<Tensor> {
    let m = Arc::new(matrix_bytes(seed));
    (0..ROWS)
        .map(|j| view(&m, j * ROW_BYTES, vec![COLS]))
        .collect()
}

/// `views` (first row, rows) of one matrix.
fn views_object(seed: u8, views: &[(usize, usize)]) -> Vec<Tensor> {
    let m = Arc::new(matrix_bytes(seed));
    views
        .iter()
        .map(|&(first, rows)| {
            let shape = match rows {
                1 => vec![COLS],
                _ => vec![rows as i64, COLS],
            };
            view(&m, first * ROW_BYTES, shape)
        })
        .collect()
}

/// The tensors of `shape` (one that is not views), each of its own
/// allocation, put in an order other than their addresses', with fillers
/// between them ([`Shape::fillers`]); returns the tensors and the fillers (to
/// keep until the object is freed).
fn separate_object(shape: Shape, seed: u8) -> (Vec<Tensor>, Vec<Vec<u8>>) {
    let n = shape.count();
    let (group, filler) = shape.fillers();
    // Tensor j lives in allocation order[j].
    let order = shuffled(n, seed.into());
    let mut bytes = vec![0; n];
    order
        .iter()
        .enumerate()
        .for_each(|(j, &k)| bytes[k] = shape.tensor_bytes(j));
    // Every allocation first (nothing else allocated in between), filled after.
    let mut fillers = Vec::with_capacity(n / group + 1);
    let mut boxes: Vec<Option<Box<[u8]>>> = Vec::with_capacity(n);
    for (k, &len) in bytes.iter().enumerate() {
        if k % group == 0 {
            fillers.push(vec![0u8; filler]);
        }
        boxes.push(Some(vec![0u8; len].into_boxed_slice()));
    }
    let tensors = order
        .into_iter()
        .enumerate()
        .map(|(j, k)| {
            let mut b = boxes[k].take().unwrap();
            fill_row(seed, j, &mut b);
            tensor_from_bytes(F16, shape.shape(j), b.into_vec())
        })
        .collect();
    (tensors, fillers)
}

/// How many extents `ObjectLayout::of` documents for host tensors at `spans`
/// (start, end): spans that overlap, touch, or leave a gap within the last page
/// of one and the first page of the next share one.
fn extents_by_rule(mut spans: Vec<(usize, usize)>) -> usize {
    const PAGE: usize = 4096;
    spans.sort_unstable();
    let mut extents = 0;
    let mut end = 0;
    for (start, stop) in spans {
        let joins = extents > 0 && (start < end || start / PAGE <= (end - 1) / PAGE + 1);
        if !joins {
            extents += 1;
        }
        end = if joins { end.max(stop) } else { stop };
    }
    extents
}

// ---------------------------------------------------------------------------
// Consumer (child process).

/// `Err(message)` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn describe(e: &ray_rdt::testing::Error) -> String {
    format!("{:?}: {}", e.kind(), e.message())
}

/// CPU targets for tensors of `metas` at `addrs`.
fn targets_at<'m>(
    metas: impl Iterator<Item = &'m TensorMeta>,
    addrs: impl Iterator<Item = usize>,
) -> Vec<Target> {
    metas
        .zip(addrs)
        .map(|(meta, addr)| Target {
            meta: meta.to_compact(),
            device: DLDevice::cpu(),
            addr,
        })
        .collect()
}

/// The consumer's side of one object: fetch it three ways and check every
/// byte and the counters, and check that bad targets are refused untouched.
struct Check<'a> {
    ctx: &'a Context,
    kind: TransportKind,
    id: ObjectId,
    record: Vec<u8>,
    meta: Metadata,
    shape: Shape,
    seed: u8,
}

impl Check<'_> {
    fn expected(&self, j: usize) -> Vec<u8> {
        self.shape.expected(self.seed, j)
    }

    /// Each tensor's byte offset when they are laid out back to back, and the
    /// total.
    fn back_to_back(&self) -> (Vec<usize>, usize) {
        let mut at = 0;
        let offsets = self
            .meta
            .tensors
            .iter()
            .map(|t| {
                at += t.nbytes as usize;
                at - t.nbytes as usize
            })
            .collect();
        (offsets, at)
    }

    fn received(&self) -> u64 {
        stats::snapshot(self.kind).bytes_received
    }

    /// Runs `fetch` and checks the process counted exactly the object's bytes.
    fn counted<T>(
        &self,
        what: &str,
        fetch: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        let before = self.received();
        let out = fetch().map_err(|e| format!("{what}: {e}"))?;
        let grew = self.received() - before;
        ensure!(
            grew == self.meta.total_bytes(),
            "{what}: bytes_received grew by {grew}, the object has {} bytes",
            self.meta.total_bytes()
        );
        Ok(out)
    }

    /// Every check; all of them run, and every failure is reported.
    fn all(&self) -> Result<String, String> {
        let mut failures = Vec::new();
        let mut timings = Vec::new();
        let mut step = |name: &str, check: &dyn Fn() -> Result<(), String>| {
            let start = Instant::now();
            if let Err(e) = check() {
                failures.push(e);
            }
            timings.push(format!("{name} {:?}", start.elapsed()));
        };
        step("new", &|| self.new_tensors());
        if self.meta.tensors.len() == ROWS {
            step("refused", &|| self.refused_targets());
        }
        step("one-buffer", &|| self.fetch_into_one_buffer());
        step("scattered", &|| self.fetch_into_scattered());
        let own = self.ctx.fetch_stats(self.kind);
        if own.errors != 0 {
            failures.push(format!("the context counted errors: {own:?}"));
        }
        match failures.is_empty() {
            true => Ok(timings.join(" ")),
            false => Err(failures.join("; ")),
        }
    }

    /// (a) Into new tensors: views of one buffer in which every extent is laid
    /// out whole.
    fn new_tensors(&self) -> Result<(), String> {
        let tensors = self.counted("fetch", || {
            match self.ctx.fetch(&self.id, &self.record, TIMEOUT) {
                Ok(Fetched::Received(t)) => Ok(t),
                Ok(Fetched::Local(_)) => Err("got the producer's own object".into()),
                Err(e) => Err(describe(&e)),
            }
        })?;
        ensure!(
            tensors.len() == self.meta.tensors.len(),
            "{} tensors",
            tensors.len()
        );
        // Where each extent starts in the consumer's buffer, from its tensors.
        let mut bases: Vec<Option<usize>> = vec![None; self.meta.extents.len()];
        for (j, (t, place)) in tensors.iter().zip(&self.meta.places).enumerate() {
            ensure!(
                t.meta().shape.as_slice() == self.shape.shape(j).as_slice()
                    && t.meta().dtype == F16,
                "tensor {j} is {:?}",
                t.meta()
            );
            let bytes = t
                .host_bytes()
                .ok_or_else(|| format!("tensor {j} is not a contiguous CPU tensor"))?;
            ensure!(bytes == self.expected(j), "tensor {j}'s bytes differ");
            let place = place.ok_or_else(|| format!("tensor {j} has no place"))?;
            let base = t.data_ptr() - place.offset as usize;
            let known = bases[place.extent as usize].get_or_insert(base);
            ensure!(
                *known == base,
                "tensor {j} is not where its place puts it in extent {}",
                place.extent
            );
        }
        // The extents follow one another in one buffer, in order.
        let bases: Vec<usize> = bases.into_iter().flatten().collect();
        ensure!(
            bases.len() == self.meta.extents.len(),
            "an extent has no tensor"
        );
        for (e, w) in bases.windows(2).enumerate() {
            ensure!(
                w[0] + self.meta.extents[e] as usize <= w[1],
                "extents {e} and {} overlap or are out of order in the received buffer",
                e + 1
            );
        }
        Ok(())
    }

    /// (b) Into one buffer, the targets back to back in the record's order
    /// (the rows of one matrix for the matrix object).
    fn fetch_into_one_buffer(&self) -> Result<(), String> {
        let (offsets, total) = self.back_to_back();
        let mut buffer = vec![SENTINEL; total];
        let base = buffer.as_mut_ptr() as usize;
        let targets = targets_at(self.meta.tensors.iter(), offsets.iter().map(|&o| base + o));
        self.counted("fetch_into one buffer", || {
            self.ctx
                .fetch_into(&self.id, &self.meta, &targets, TIMEOUT)
                .map_err(|e| describe(&e))
        })?;
        for (j, (&o, t)) in offsets.iter().zip(&self.meta.tensors).enumerate() {
            let got = &buffer[o..o + t.nbytes as usize];
            if got != self.expected(j) {
                let first = got
                    .iter()
                    .zip(self.expected(j))
                    .position(|(a, b)| *a != b)
                    .unwrap_or_default();
                return Err(format!(
                    "fetch_into one buffer: target {j} differs from byte {first} of {}",
                    got.len()
                ));
            }
        }
        Ok(())
    }

    /// (c) Into separate allocations, tensor `j` into allocation `order[j]`:
    /// target addresses in no relation to the record's order.
    fn fetch_into_scattered(&self) -> Result<(), String> {
        let n = self.meta.tensors.len();
        let order = shuffled(n, 7 + u64::from(self.seed));
        // Allocation k is for tensor inverse[k].
        let mut inverse = vec![0; n];
        order.iter().enumerate().for_each(|(j, &k)| inverse[k] = j);
        let mut boxes: Vec<Box<[u8]>> = inverse
            .iter()
            .map(|&j| vec![SENTINEL; self.meta.tensors[j].nbytes as usize].into_boxed_slice())
            .collect();
        let targets = targets_at(
            self.meta.tensors.iter(),
            order.iter().map(|&k| boxes[k].as_mut_ptr() as usize),
        );
        self.counted("fetch_into scattered targets", || {
            self.ctx
                .fetch_into(&self.id, &self.meta, &targets, TIMEOUT)
                .map_err(|e| describe(&e))
        })?;
        for (j, &k) in order.iter().enumerate() {
            ensure!(
                *boxes[k] == *self.expected(j),
                "fetch_into scattered targets: target {j} differs"
            );
        }
        Ok(())
    }

    /// Bad targets: each refused with InvalidArgument naming the index (or
    /// the counts), no byte of any target written, nothing counted.
    fn refused_targets(&self) -> Result<(), String> {
        let mut matrix = vec![SENTINEL; ROWS * ROW_BYTES];
        let mut extra = vec![SENTINEL; ROW_BYTES];
        let base = matrix.as_mut_ptr() as usize;
        let rows = || {
            targets_at(
                self.meta.tensors.iter(),
                (0..ROWS).map(|j| base + j * ROW_BYTES),
            )
        };
        let with = |i: usize, change: &dyn Fn(&mut Target)| {
            let mut t = rows();
            change(&mut t[i]);
            t
        };
        let mut one_more = rows();
        one_more.extend(targets_at(
            self.meta.tensors.iter().take(1),
            std::iter::once(extra.as_mut_ptr() as usize),
        ));
        let cases: Vec<(&str, Vec<Target>, &str)> = vec![
            (
                "one target too few",
                rows().into_iter().take(ROWS - 1).collect(),
                "Length of tensor_buffers (99999) does not match length from object metadata (100000).",
            ),
            (
                "one target too many",
                one_more,
                "Length of tensor_buffers (100001) does not match length from object metadata (100000).",
            ),
            (
                "a wrong shape (same bytes)",
                with(77_777, &|t| {
                    t.meta = TensorMeta::compact(F16, vec![2, COLS / 2]).unwrap()
                }),
                "Shape of tensor_buffer at index 77777 ([2, 12]) does not match shape from object metadata ([24]).",
            ),
            (
                "a wrong dtype (same width)",
                with(4242, &|t| {
                    t.meta = TensorMeta::compact(BF16, vec![COLS]).unwrap()
                }),
                "Dtype of tensor_buffer at index 4242 (",
            ),
            (
                "a non-contiguous target",
                with(12_345, &|t| {
                    t.meta = TensorMeta::new(F16, vec![COLS], vec![2]).unwrap()
                }),
                "Tensor buffer at index 12345 is not contiguous.",
            ),
            (
                "a CUDA target",
                with(31, &|t| {
                    t.device = DLDevice {
                        device_type: kDLCUDA,
                        device_id: 0,
                    }
                }),
                "Tensor buffer at index 31 is on cuda",
            ),
            (
                "neighbouring targets overlapping by 46 bytes",
                with(501, &|t| t.addr = base + 500 * ROW_BYTES + 2),
                "Tensor buffers at index 500 and 501 overlap",
            ),
            (
                "the last target the same memory as the fourth",
                with(ROWS - 1, &|t| t.addr = base + 3 * ROW_BYTES),
                "Tensor buffers at index 3 and 99999 overlap",
            ),
        ];
        let received = self.received();
        let own = self.ctx.fetch_stats(self.kind);
        for (what, targets, expected) in &cases {
            match self.ctx.fetch_into(&self.id, &self.meta, targets, TIMEOUT) {
                Ok(()) => return Err(format!("{what}: accepted")),
                Err(e) => {
                    ensure!(
                        e.kind() == ErrorKind::InvalidArgument && e.message().contains(expected),
                        "{what}: {} (expected InvalidArgument with {expected:?})",
                        describe(&e)
                    );
                }
            }
            if let Some(i) = matrix.iter().position(|&b| b != SENTINEL) {
                return Err(format!("{what}: target byte {i} was written"));
            }
            ensure!(
                extra.iter().all(|&b| b == SENTINEL),
                "{what}: the extra target was written"
            );
        }
        ensure!(
            self.received() == received && self.ctx.fetch_stats(self.kind) == own,
            "refused fetches were counted"
        );
        Ok(())
    }
}

/// Handles one protocol line.
fn handle(ctx: &Context, line: &str) -> String {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["JOIN", name, addr] => {
            match ctx.create_group(TransportKind::Gloo, name, 1, 2, addr, TIMEOUT, None) {
                Ok(()) => "JOINED".into(),
                Err(e) => format!("ERR {}", describe(&e)),
            }
        }
        ["CHECK", kind, shape, id, record, seed] => {
            let record = unhex(record);
            let meta = match Metadata::decode(&record) {
                Ok(meta) => meta,
                Err(e) => return format!("ERR decode: {}", describe(&e)),
            };
            let check = Check {
                ctx,
                kind: TransportKind::from_name(kind).unwrap(),
                id: ObjectId::from_slice(&unhex(id)).unwrap(),
                record,
                meta,
                shape: Shape::from_name(shape),
                seed: seed.parse().unwrap(),
            };
            match check.all() {
                Ok(timings) => format!("OK {timings}"),
                Err(e) => format!("ERR {e}"),
            }
        }
        ["PROBE", pid, addr] => probe(pid.parse().unwrap(), addr.parse().unwrap()),
        other => format!("ERR unknown command {:?}", other.first()),
    }
}

/// Whether this process may read 8 bytes at `addr` in process `pid`:
/// `READABLE`, `REFUSED` (the kernel says EPERM) or an error.
fn probe(pid: i32, addr: usize) -> String {
    let mut word = 0u64;
    let local = libc::iovec {
        iov_base: &mut word as *mut u64 as *mut _,
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: 8,
    };
    // SAFETY: the local iovec is `word`; the kernel checks the remote one.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    let e = std::io::Error::last_os_error();
    match n {
        8 => "READABLE".into(),
        _ if e.raw_os_error() == Some(libc::EPERM) => "REFUSED".into(),
        _ => format!("ERR process_vm_readv: {n} ({e})"),
    }
}

/// Child entry: serve protocol lines from stdin until it closes.
fn consumer() {
    let ctx = Context::new(transport_only(b"node-a", b"consumer")).unwrap();
    for line in std::io::stdin().lock().lines() {
        println!(">> {}", handle(&ctx, &line.unwrap()));
    }
    // The producer is done: leave without libtest writing to a closed pipe.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// Producer (this test process).

/// The consumer process, driven over pipes.
struct Consumer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Consumer {
    fn spawn(test: &str) -> Consumer {
        let mut child = spawn_child(test, "consumer", &[]);
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Consumer {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next protocol reply (lines tagged `>> `), skipping libtest's
    /// output; `None` when the consumer is gone.
    fn reply(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                return None;
            }
            if let Some(i) = line.find(">> ") {
                return Some(line[i + 3..].trim().to_string());
            }
        }
    }

    /// How the consumer ended, once its output closed.
    fn died(&mut self) -> String {
        drop(self.stdin.take());
        format!("the consumer died: {:?}", self.child.wait().unwrap())
    }

    /// Closes its stdin and waits for it to exit cleanly.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the consumer exited with {status:?}");
    }
}

/// The producer's context (this process) and the consumer process of test
/// `test`, joined in gloo group [`GROUP_NAME`] when `kind` is gloo; and the
/// group to put objects in.
fn producer_and_consumer(
    kind: TransportKind,
    test: &str,
) -> (Context, Consumer, Option<&'static str>) {
    let ctx = Context::new(transport_only(b"node-a", b"producer")).unwrap();
    let mut consumer = Consumer::spawn(test);
    let group = (kind == TransportKind::Gloo).then_some(GROUP_NAME);
    if let Some(name) = group {
        let addr = ctx.serve_rendezvous("127.0.0.1").unwrap();
        consumer.send(&format!("JOIN {name} {addr}"));
        ctx.create_group(kind, name, 0, 2, &addr, TIMEOUT, None)
            .unwrap();
        assert_eq!(consumer.reply().as_deref(), Some("JOINED"));
    }
    (ctx, consumer, group)
}

/// The gloo group of the producer and the consumer.
const GROUP_NAME: &str = "weights";

/// An object put as `id`: its record and the seed and shape it was made of.
struct Put {
    shape: Shape,
    id: ObjectId,
    record: Vec<u8>,
    seed: u8,
}

/// Puts the object of separate allocations of `shape` and `seed` as `id` and
/// checks its extents: allocations a page or more apart never share one.
/// Returns it, its record's extent count and the fillers (to keep until the
/// object is freed).
fn put_separate(
    ctx: &Context,
    kind: TransportKind,
    group: Option<&str>,
    shape: Shape,
    seed: u8,
    id: ObjectId,
) -> (Put, usize, Vec<Vec<u8>>) {
    let (tensors, fillers) = separate_object(shape, seed);
    let spans: Vec<(usize, usize)> = tensors
        .iter()
        .map(|t| (t.data_ptr(), t.data_ptr() + t.meta().nbytes as usize))
        .collect();
    let record = ctx
        .put(id, kind, group, tensors)
        .map_err(|r| r.error)
        .unwrap();
    let meta = Metadata::decode(&record).unwrap();
    let extents = meta.extents.len();
    assert_eq!(meta.tensors.len(), shape.count());
    assert_eq!(
        extents,
        extents_by_rule(spans),
        "extents of separate allocations"
    );
    assert!(
        extents > 1,
        "the fillers must split the allocations into groups"
    );
    assert!(meta.extent_bytes() >= meta.total_bytes());
    println!(
        "{}: {} separate tensors ({}) in {extents} extents ({} bytes), record of {} bytes",
        kind.name(),
        shape.count(),
        shape.name(),
        meta.extent_bytes(),
        record.len()
    );
    let put = Put {
        shape,
        id,
        record,
        seed,
    };
    (put, extents, fillers)
}

/// Has the consumer check every object (fetched three ways), then finish;
/// returns the failures. An object the consumer dies on ends the checks.
fn check_all(mut consumer: Consumer, kind: TransportKind, objects: &[Put]) -> Vec<String> {
    let mut failures = Vec::new();
    for put in objects {
        let name = put.shape.name();
        consumer.send(&format!(
            "CHECK {} {name} {} {} {}",
            kind.name(),
            hex(put.id.as_bytes()),
            hex(&put.record),
            put.seed
        ));
        let reply = consumer.reply();
        println!("{} {name}: {reply:?}", kind.name());
        match reply {
            Some(r) if r.starts_with("OK ") => {}
            Some(r) => failures.push(format!("{name} object: {r}")),
            None => {
                failures.push(format!("{name} object: {}", consumer.died()));
                return failures;
            }
        }
    }
    consumer.finish();
    failures
}

/// A producer puts the objects over `kind`, a consumer process fetches each
/// three ways and checks the refusals. With `unreadable`, the consumer first
/// confirms that the kernel refuses it this process's memory.
fn weights_over(kind: TransportKind, test: &str, unreadable: bool) {
    if role().as_deref() == Some("consumer") {
        return consumer();
    }
    if kind == TransportKind::Nixl && !nixl_or_skip(test) {
        return;
    }
    let start = Instant::now();
    let (ctx, mut consumer, group) = producer_and_consumer(kind, test);
    if unreadable {
        let word = 0x5eed_u64;
        consumer.send(&format!(
            "PROBE {} {}",
            std::process::id(),
            &word as *const u64 as usize
        ));
        assert_eq!(
            consumer.reply().as_deref(),
            Some("REFUSED"),
            "the consumer must be refused this process's memory"
        );
    }
    let registrations = || (kind == TransportKind::Nixl).then(nixl::registration_stats);
    let (ranges0, refs0) = registrations().unwrap_or_default();

    // The rows of one matrix: one extent, every row at its offset in it, and
    // (nixl) one registered range.
    let matrix_id = ObjectId([0x10 + kind.code(); 28]);
    let matrix_record = ctx
        .put(matrix_id, kind, group, matrix_object(MATRIX_SEED))
        .map_err(|r| r.error)
        .unwrap();
    let meta = Metadata::decode(&matrix_record).unwrap();
    assert_eq!(meta.tensors.len(), ROWS);
    let one_extent = (1, (ROWS * ROW_BYTES) as u64);
    assert_eq!((meta.extents.len(), meta.extent_bytes()), one_extent);
    assert!(meta
        .places
        .iter()
        .enumerate()
        .all(|(j, p)| p.is_some_and(|p| p.extent == 0 && p.offset == (j * ROW_BYTES) as u64)));
    if let Some(stats) = registrations() {
        assert_eq!(stats, (ranges0 + 1, refs0 + 1), "one registration");
    }
    println!(
        "{}: {} tensors in one extent, record of {} bytes",
        kind.name(),
        ROWS,
        matrix_record.len()
    );

    // Separate allocations: neighbours share an extent, groups a page or more
    // apart do not; (nixl) one registered range per extent.
    let separate_id = ObjectId([0x20 + kind.code(); 28]);
    let (separate, extents, fillers) = put_separate(
        &ctx,
        kind,
        group,
        Shape::Separate,
        SEPARATE_SEED,
        separate_id,
    );
    if let Some(stats) = registrations() {
        assert_eq!(stats, (ranges0 + 1 + extents, refs0 + 1 + extents));
    }

    // Views of one matrix that overlap (tied weights, views next to their
    // base): one extent, every tensor at its offset in it; (nixl) one range.
    let matrix = Put {
        shape: Shape::Matrix,
        id: matrix_id,
        record: matrix_record,
        seed: MATRIX_SEED,
    };
    let mut objects = vec![matrix, separate];
    for (shape, seed) in [(Shape::Tied, TIED_SEED), (Shape::Nested, NESTED_SEED)] {
        let views = shape.views().unwrap();
        let id = ObjectId([0x30 + seed + kind.code(); 28]);
        let record = ctx
            .put(id, kind, group, views_object(seed, views))
            .map_err(|r| r.error)
            .unwrap();
        let meta = Metadata::decode(&record).unwrap();
        assert_eq!((meta.extents.len(), meta.extent_bytes()), one_extent);
        let offsets: Vec<u64> = meta.places.iter().map(|p| p.unwrap().offset).collect();
        let expected: Vec<u64> = views.iter().map(|v| (v.0 * ROW_BYTES) as u64).collect();
        assert_eq!(offsets, expected);
        objects.push(Put {
            shape,
            id,
            record,
            seed,
        });
    }
    if let Some(stats) = registrations() {
        assert_eq!(stats, (ranges0 + 3 + extents, refs0 + 3 + extents));
    }

    // The nested object last: a consumer that dies on it loses no other check.
    let failures = check_all(consumer, kind, &objects);
    for put in &objects {
        assert!(ctx.free(&put.id));
    }
    drop(fillers);
    if let Some(stats) = registrations() {
        assert_eq!(
            stats,
            (ranges0, refs0),
            "freed objects leave no registration"
        );
    }
    println!("{}: {:?} in all", kind.name(), start.elapsed());
    assert!(failures.is_empty(), "over {}: {failures:#?}", kind.name());
}

/// Over shm where the kernel forbids reading another process's memory (as a
/// container's default seccomp profile does without `CAP_SYS_PTRACE`): the
/// producer runs as a user without that capability and is not dumpable, so
/// its consumer (the same user) is refused `process_vm_readv`, which the test
/// confirms first. Every transfer into targets then goes through segments the
/// producer writes: its staging segments (objects of the staged sizes, the
/// default here), and, with `RAY_RDT_SHM_STAGED_FROM` above every object, a
/// segment per transfer. Every byte is checked as in [`shm_weights`].
#[test]
fn shm_weights_where_reading_another_process_is_forbidden() {
    const TEST: &str = "shm_weights_where_reading_another_process_is_forbidden";
    match role().as_deref() {
        Some("consumer") => return consumer(),
        Some("producer") => {
            // SAFETY: prctl with these arguments changes only this flag.
            assert_eq!(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }, 0);
            return weights_over(TransportKind::Shm, TEST, true);
        }
        _ => {}
    }
    // Root may read any process: both ends run as nobody instead, from a
    // copy of this binary that nobody can run (the checkout may lie where
    // only root can read).
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let copy = root.then(UnprivilegedCopy::new);
    let current = std::env::current_exe().unwrap();
    let exe = copy.as_ref().map_or(current.as_path(), |c| c.exe.as_path());
    for staged_from in ["1048576", &u64::MAX.to_string()] {
        let mut producer = child_command(
            exe,
            TEST,
            "producer",
            &[("RAY_RDT_SHM_STAGED_FROM", staged_from.to_string())],
            &[],
        );
        if let Some(copy) = &copy {
            producer.uid(NOBODY).gid(NOBODY).current_dir(&copy.dir);
        }
        let out = producer.output().expect("run the producer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        assert!(
            out.status.success(),
            "staged from {staged_from} bytes: the producer failed ({})",
            out.status
        );
    }
}

/// The unprivileged user the test above runs as when started as root.
const NOBODY: u32 = 65534;

/// A copy of this test binary in a fresh directory under the system's temp
/// directory, which [`NOBODY`] can run; removed when dropped.
struct UnprivilegedCopy {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl UnprivilegedCopy {
    fn new() -> UnprivilegedCopy {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ray-rdt-unprivileged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("weights-test");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        UnprivilegedCopy { dir, exe }
    }
}

impl Drop for UnprivilegedCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn shm_weights() {
    weights_over(TransportKind::Shm, "shm_weights", false);
}

// The only test of this binary that puts nixl objects: the process-wide
// registration counts it checks change with no other test's puts.
#[test]
fn nixl_weights() {
    weights_over(TransportKind::Nixl, "nixl_weights", false);
}

#[test]
fn gloo_weights() {
    weights_over(TransportKind::Gloo, "gloo_weights", false);
}

/// Over gloo, objects of many small separate allocations, each its own
/// extent: [`SMALL`] of 4 KiB, and a mix of sizes around gloo's packing
/// threshold and its message limit ([`mixed_bytes`]). Gloo packs runs of
/// small pieces into shared messages and receives the large ones in place;
/// every byte lands where it belongs, in new tensors and in targets.
#[test]
fn gloo_small_pieces() {
    if role().as_deref() == Some("consumer") {
        return consumer();
    }
    let kind = TransportKind::Gloo;
    let (ctx, consumer, group) = producer_and_consumer(kind, "gloo_small_pieces");
    let (small, _, small_fillers) =
        put_separate(&ctx, kind, group, Shape::Small, 11, ObjectId([0x41; 28]));
    let (mixed, _, mixed_fillers) =
        put_separate(&ctx, kind, group, Shape::Mixed, 23, ObjectId([0x42; 28]));
    let objects = [small, mixed];
    let failures = check_all(consumer, kind, &objects);
    for put in &objects {
        assert!(ctx.free(&put.id));
    }
    drop((small_fillers, mixed_fillers));
    assert!(failures.is_empty(), "{failures:#?}");
}
