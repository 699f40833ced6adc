//! Weight-sync shapes between real processes, over shm, nixl and gloo: an
//! object of 100,000 tensors that are the rows of one matrix (one extent, one
//! registration) and one of 100,000 separate allocations, fetched by a
//! consumer process into new tensors, into the rows of one target matrix (the
//! direct case) and into separate targets in a shuffled order (the scattered
//! case), every byte checked; and the checks on targets (count, shape, dtype,
//! contiguity, device, overlap) refusing before any byte moves.
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
/// Seeds of the two objects' contents.
const MATRIX_SEED: u8 = 3;
const SEPARATE_SEED: u8 = 101;

/// Environment variable that lets the nixl test skip where NIXL is missing.
const ALLOW_MISSING: &str = "RAY_RDT_ALLOW_MISSING_NIXL";

/// Tensor `j`'s bytes in the object of `seed`: its index first (so every row
/// differs), then a pattern.
fn fill_row(seed: u8, j: usize, out: &mut [u8]) {
    out.copy_from_slice(&pattern(ROW_BYTES, seed.wrapping_add(j as u8)));
    out[..4].copy_from_slice(&(j as u32).to_le_bytes());
    out[4] = seed;
}

fn row(seed: u8, j: usize) -> [u8; ROW_BYTES] {
    let mut r = [0u8; ROW_BYTES];
    fill_row(seed, j, &mut r);
    r
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

/// Consecutive views of one shared buffer, each `shape` of `dtype` (the rows of
/// a matrix); every view keeps the buffer alive.
fn views_of(buffer: Arc<Vec<u8>>, dtype: DLDataType, shape: &[i64]) -> Vec<Tensor> {
    let meta = TensorMeta::compact(dtype, shape.to_vec()).unwrap();
    let n = meta.nbytes as usize;
    assert_eq!(buffer.len() % n, 0, "the buffer is not whole views");
    (0..buffer.len() / n)
        .map(|i| {
            // The producer only reads through the pointer.
            let data = buffer[i * n..].as_ptr() as *mut std::ffi::c_void;
            Tensor::from_owner(
                meta.clone(),
                DLDevice::cpu(),
                data,
                Box::new(buffer.clone()),
            )
        })
        .collect()
}

/// The rows of one ROWS x COLS float16 matrix.
fn matrix_object(seed: u8) -> Vec<Tensor> {
    let mut m = vec![0u8; ROWS * ROW_BYTES];
    for (j, r) in m.chunks_exact_mut(ROW_BYTES).enumerate() {
        fill_row(seed, j, r);
    }
    views_of(Arc::new(m), F16, &[COLS])
}

/// ROWS tensors of their own allocation each, put in an order other than
/// their addresses', with a filler between every [`GROUP`] of them; returns
/// the tensors and the fillers (to keep until the object is freed).
fn separate_object(seed: u8) -> (Vec<Tensor>, Vec<Vec<u8>>) {
    // Every allocation first (nothing else allocated in between), filled after.
    let mut fillers = Vec::with_capacity(ROWS / GROUP + 1);
    let mut boxes: Vec<Option<Box<[u8]>>> = Vec::with_capacity(ROWS);
    for k in 0..ROWS {
        if k % GROUP == 0 {
            fillers.push(vec![0u8; FILLER]);
        }
        boxes.push(Some(vec![0u8; ROW_BYTES].into_boxed_slice()));
    }
    let tensors = shuffled(ROWS, seed.into())
        .into_iter()
        .enumerate()
        .map(|(j, k)| {
            let mut b = boxes[k].take().unwrap();
            fill_row(seed, j, &mut b);
            tensor_from_bytes(F16, vec![COLS], b.into_vec())
        })
        .collect();
    (tensors, fillers)
}

/// Whether NIXL can be used here (as tests/nixl.rs decides): where it cannot,
/// fails, unless [`ALLOW_MISSING`] is `1`: then says so on the real stderr.
fn nixl_or_skip(test: &str) -> bool {
    let Err(e) = nixl::available() else {
        return true;
    };
    let why = format!("NIXL is not available on this machine: {e}");
    assert!(
        std::env::var(ALLOW_MISSING).as_deref() == Ok("1"),
        "{test}: {why} (set {ALLOW_MISSING}=1 to skip the NIXL transfer tests)"
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {test}: {why} ({ALLOW_MISSING}=1)");
    let _ = err.flush();
    false
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

/// Targets at `addrs`, one per tensor of the object (each a [COLS] float16).
fn targets_at(addrs: impl Iterator<Item = usize>) -> Vec<Target> {
    let meta = TensorMeta::compact(F16, vec![COLS]).unwrap();
    addrs
        .map(|addr| Target {
            meta: meta.clone(),
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
    seed: u8,
}

impl Check<'_> {
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

    fn all(&self) -> Result<String, String> {
        let t0 = Instant::now();
        self.new_tensors()?;
        let t1 = Instant::now();
        self.refused_targets()?;
        let t2 = Instant::now();
        self.into_matrix_rows()?;
        let t3 = Instant::now();
        self.into_scattered()?;
        let t4 = Instant::now();
        let own = self.ctx.fetch_stats(self.kind);
        ensure!(own.errors == 0, "the context counted errors: {own:?}");
        Ok(format!(
            "new {:?} refused {:?} rows {:?} scattered {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3
        ))
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
        ensure!(tensors.len() == ROWS, "{} tensors", tensors.len());
        // Where each extent starts in the consumer's buffer, from its tensors.
        let mut bases: Vec<Option<usize>> = vec![None; self.meta.extents.len()];
        for (j, (t, place)) in tensors.iter().zip(&self.meta.places).enumerate() {
            ensure!(
                t.meta().shape == [COLS] && t.meta().dtype == F16,
                "tensor {j} is {:?}",
                t.meta()
            );
            let bytes = t
                .host_bytes()
                .ok_or_else(|| format!("tensor {j} is not a contiguous CPU tensor"))?;
            ensure!(bytes == row(self.seed, j), "tensor {j}'s bytes differ");
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

    /// (b) Into the rows of one contiguous matrix, in the record's order.
    fn into_matrix_rows(&self) -> Result<(), String> {
        let mut matrix = vec![SENTINEL; ROWS * ROW_BYTES];
        let base = matrix.as_mut_ptr() as usize;
        let targets = targets_at((0..ROWS).map(|j| base + j * ROW_BYTES));
        self.counted("fetch_into matrix rows", || {
            self.ctx
                .fetch_into(&self.id, &self.meta, &targets, TIMEOUT)
                .map_err(|e| describe(&e))
        })?;
        for (j, r) in matrix.chunks_exact(ROW_BYTES).enumerate() {
            ensure!(r == row(self.seed, j), "matrix row {j} differs");
        }
        Ok(())
    }

    /// (c) Into separate allocations, tensor `j` into allocation `order[j]`:
    /// target addresses in no relation to the record's order.
    fn into_scattered(&self) -> Result<(), String> {
        let mut boxes: Vec<Box<[u8]>> = (0..ROWS)
            .map(|_| vec![SENTINEL; ROW_BYTES].into_boxed_slice())
            .collect();
        let order = shuffled(ROWS, 7 + u64::from(self.seed));
        let targets = targets_at(order.iter().map(|&k| boxes[k].as_mut_ptr() as usize));
        self.counted("fetch_into scattered targets", || {
            self.ctx
                .fetch_into(&self.id, &self.meta, &targets, TIMEOUT)
                .map_err(|e| describe(&e))
        })?;
        for (j, &k) in order.iter().enumerate() {
            ensure!(
                *boxes[k] == row(self.seed, j),
                "scattered target of tensor {j} differs"
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
        let rows = || targets_at((0..ROWS).map(|j| base + j * ROW_BYTES));
        let with = |i: usize, change: &dyn Fn(&mut Target)| {
            let mut t = rows();
            change(&mut t[i]);
            t
        };
        let mut one_more = rows();
        one_more.extend(targets_at(std::iter::once(extra.as_mut_ptr() as usize)));
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
        ["CHECK", kind, id, record, seed] => {
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
                seed: seed.parse().unwrap(),
            };
            match check.all() {
                Ok(timings) => format!("OK {timings}"),
                Err(e) => format!("ERR {e}"),
            }
        }
        other => format!("ERR unknown command {:?}", other.first()),
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

    /// The next protocol reply (lines tagged `>> `), skipping libtest's output.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the consumer exited"
            );
            if let Some(i) = line.find(">> ") {
                return line[i + 3..].trim().to_string();
            }
        }
    }

    /// Closes its stdin and waits for it to exit cleanly.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the consumer exited with {status:?}");
    }
}

/// A producer puts both objects over `kind`, a consumer process fetches each
/// three ways and checks the refusals.
fn weights_over(kind: TransportKind, test: &str) {
    if role().as_deref() == Some("consumer") {
        return consumer();
    }
    if kind == TransportKind::Nixl && !nixl_or_skip(test) {
        return;
    }
    let start = Instant::now();
    let ctx = Context::new(transport_only(b"node-a", b"producer")).unwrap();
    let mut consumer = Consumer::spawn(test);
    let group = (kind == TransportKind::Gloo).then_some("weights");
    if let Some(name) = group {
        let addr = ctx.serve_rendezvous("127.0.0.1").unwrap();
        consumer.send(&format!("JOIN {name} {addr}"));
        ctx.create_group(kind, name, 0, 2, &addr, TIMEOUT, None)
            .unwrap();
        assert_eq!(consumer.reply(), "JOINED");
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
    assert_eq!(meta.extents, [(ROWS * ROW_BYTES) as u64], "one extent");
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
    let (tensors, fillers) = separate_object(SEPARATE_SEED);
    let separate_record = ctx
        .put(separate_id, kind, group, tensors)
        .map_err(|r| r.error)
        .unwrap();
    let meta = Metadata::decode(&separate_record).unwrap();
    let extents = meta.extents.len();
    assert_eq!(meta.tensors.len(), ROWS);
    assert!(
        extents >= ROWS / GROUP && extents < ROWS / 10,
        "{extents} extents for {ROWS} allocations in {} groups",
        ROWS / GROUP
    );
    assert!(meta.extent_bytes() >= meta.total_bytes());
    if let Some(stats) = registrations() {
        assert_eq!(stats, (ranges0 + 1 + extents, refs0 + 1 + extents));
    }
    println!(
        "{}: {} separate tensors in {extents} extents ({} bytes), record of {} bytes",
        kind.name(),
        ROWS,
        meta.extent_bytes(),
        separate_record.len()
    );

    for (id, record, seed) in [
        (matrix_id, &matrix_record, MATRIX_SEED),
        (separate_id, &separate_record, SEPARATE_SEED),
    ] {
        consumer.send(&format!(
            "CHECK {} {} {} {seed}",
            kind.name(),
            hex(id.as_bytes()),
            hex(record)
        ));
        let reply = consumer.reply();
        assert!(reply.starts_with("OK "), "{}: {reply}", kind.name());
        println!("{} seed {seed}: {reply}", kind.name());
    }
    consumer.finish();

    assert!(ctx.free(&matrix_id));
    assert!(ctx.free(&separate_id));
    drop(fillers);
    if let Some(stats) = registrations() {
        assert_eq!(
            stats,
            (ranges0, refs0),
            "freed objects leave no registration"
        );
    }
    println!("{}: {:?} in all", kind.name(), start.elapsed());
}

#[test]
fn shm_weights() {
    weights_over(TransportKind::Shm, "shm_weights");
}

// The only test of this binary that puts nixl objects: the process-wide
// registration counts it checks change with no other test's puts.
#[test]
fn nixl_weights() {
    weights_over(TransportKind::Nixl, "nixl_weights");
}

#[test]
fn gloo_weights() {
    weights_over(TransportKind::Gloo, "gloo_weights");
}
