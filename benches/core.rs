//! Micro-benchmarks of the plugin core; run with `cargo bench --bench core`.
//!
//! (a) store put + get + free of one object of 4 small CPU tensors, through the C
//!     ABI exactly as a core worker drives it: fill in the DLPack structs, put,
//!     get the views, release the views, free the object;
//! (b) metadata encode + decode of a record of 8 tensors.
//!
//! Each case runs in batches; the per-iteration time of every batch is one sample,
//! and the median, p10 and p90 of the samples are printed with the target.
//! Results and targets are recorded in `docs/core-bench.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use ray_rdt::dlpack::*;
use ray_rdt::ffi::context::*;
use ray_rdt::ffi::stats::RDT_TRANSPORT_SHM;
use ray_rdt::ffi::status::rdt_status::RDT_OK;
use ray_rdt::testing::Metadata;
use std::hint::black_box;
use std::os::raw::c_void;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Iterations per sample.
const BATCH: usize = 2_000;
/// Samples per case.
const SAMPLES: usize = 500;

/// Runs `f` in `SAMPLES` batches after a warm-up and prints the distribution of
/// the time per call against `target_ns`.
fn bench(name: &str, target_ns: f64, mut f: impl FnMut()) {
    (0..BATCH).for_each(|_| f());
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            (0..BATCH).for_each(|_| f());
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let pct = |p: usize| samples[p * (SAMPLES - 1) / 100];
    let verdict = if pct(50) < target_ns {
        "meets"
    } else {
        "MISSES"
    };
    println!(
        "{name:<44} median {:>7.0} ns   p10 {:>7.0} ns   p90 {:>7.0} ns   ({verdict} target < {target_ns:.0} ns)",
        pct(50),
        pct(10),
        pct(90)
    );
}

/// Deleter calls of the benchmark's tensors (their memory is static, so the
/// deleter only counts).
static DELETED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_deletion(_: *mut DLManagedTensor) {
    DELETED.fetch_add(1, Ordering::Relaxed);
}

/// (a): one object of 4 float32 [16, 16] tensors per iteration, each under a new
/// ObjectID.
fn store_round_trip() {
    const TENSORS: usize = 4;
    let mut data = vec![[0f32; 256]; TENSORS];
    let mut shapes = [[16i64, 16]; TENSORS];
    let mut managed: Vec<DLManagedTensor> = Vec::with_capacity(TENSORS);
    let mut store = null_mut();
    // SAFETY: `store` is writable; no IDs.
    assert_eq!(
        unsafe { rdt_context_new(null(), 0, null(), 0, &mut store) },
        RDT_OK
    );
    let mut record = rdt_buffer {
        data: null_mut(),
        len: 0,
    };
    let mut views = [null_mut::<DLManagedTensor>(); TENSORS];
    let mut next_id = 0u64;
    let iterations_before = DELETED.load(Ordering::Relaxed);
    let mut iterations = 0;

    bench("(a) store put + get + free, 4 tensors", 2_000.0, || {
        // What the worker does per return value: wrap each tensor as DLPack...
        managed.clear();
        managed.extend(
            data.iter_mut()
                .zip(shapes.iter_mut())
                .map(|(d, s)| DLManagedTensor {
                    dl_tensor: DLTensor {
                        data: d.as_mut_ptr() as *mut c_void,
                        device: DLDevice::cpu(),
                        ndim: 2,
                        dtype: DLDataType {
                            code: kDLFloat,
                            bits: 32,
                            lanes: 1,
                        },
                        shape: s.as_mut_ptr(),
                        strides: null_mut(),
                        byte_offset: 0,
                    },
                    manager_ctx: null_mut(),
                    deleter: Some(count_deletion),
                }),
        );
        let ptrs: [*mut DLManagedTensor; TENSORS] =
            std::array::from_fn(|i| &mut managed[i] as *mut _);
        next_id += 1;
        let id = common::oid(next_id);
        let id = id.as_bytes().as_ptr();
        let (mut count, mut found) = (0usize, false);
        // SAFETY: a live store, a 28-byte ID, valid tensors and outputs; each view
        // is released once; the tensors' memory outlives the object.
        unsafe {
            // ...hand them to the store, read them back, and free the object.
            assert_eq!(
                rdt_context_put(
                    store,
                    id,
                    RDT_TRANSPORT_SHM,
                    null(),
                    ptrs.as_ptr(),
                    TENSORS,
                    &mut record
                ),
                RDT_OK
            );
            rdt_buffer_free(&mut record);
            assert_eq!(
                rdt_context_get(store, id, views.as_mut_ptr(), TENSORS, &mut count),
                RDT_OK
            );
            for &v in &views[..count] {
                black_box((*v).dl_tensor.data);
                ((*v).deleter.unwrap())(v);
            }
            assert_eq!(rdt_context_free(store, id, &mut found), RDT_OK);
        }
        iterations += 1;
    });
    // SAFETY: created above, not used afterwards.
    unsafe { rdt_context_destroy(store) };
    assert_eq!(
        DELETED.load(Ordering::Relaxed) - iterations_before,
        iterations * TENSORS,
        "every deleter ran once"
    );
}

/// (b): the record a worker stores for a return value of 8 tensors.
fn metadata_round_trip() {
    let record = common::sample_metadata(8);
    bench("(b) metadata encode + decode, 8 tensors", 1_000.0, || {
        let bytes = black_box(&record).encode().unwrap();
        black_box(Metadata::decode(black_box(&bytes)).unwrap());
    });
}

fn main() {
    println!("ray-rdt core benchmarks: {SAMPLES} samples of {BATCH} iterations each");
    store_round_trip();
    metadata_round_trip();
}
