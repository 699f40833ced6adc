//! Helpers shared by the integration tests: DLPack tensors built here with
//! deleters that count their calls, object IDs, and sample metadata records.
//!
//! Every test crate includes this module and uses a subset of it.
#![allow(dead_code)]

use ray_rdt::dlpack::*;
use ray_rdt::testing::{Metadata, ObjectId, Place, Producer, Tensor, TensorMeta, TransportKind};
use std::os::raw::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts deleter calls of the tensors made with it; clones share the count.
#[derive(Clone, Default)]
pub struct Deletions(Arc<AtomicUsize>);

impl Deletions {
    /// A fresh counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deleter calls so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a test tensor's `manager_ctx` owns: its data, its shape and its counter.
struct Ctx {
    data: Vec<f32>,
    shape: Vec<i64>,
    deletions: Deletions,
}

impl Ctx {
    /// Allocates a float32 tensor of `shape` whose element `i` is `i as f32`.
    fn boxed(deletions: &Deletions, shape: &[i64]) -> Box<Ctx> {
        let numel: i64 = shape.iter().product();
        let data = (0..numel).map(|i| i as f32).collect();
        Box::new(Ctx {
            data,
            shape: shape.to_vec(),
            deletions: deletions.clone(),
        })
    }

    /// The (compact, NULL-strided) DLPack view of this context's data.
    fn dl_tensor(&mut self) -> DLTensor {
        DLTensor {
            data: self.data.as_mut_ptr() as *mut c_void,
            device: DLDevice::cpu(),
            ndim: self.shape.len() as i32,
            dtype: DLDataType {
                code: kDLFloat,
                bits: 32,
                lanes: 1,
            },
            shape: self.shape.as_mut_ptr(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        }
    }
}

/// Frees the context of a tensor made by [`counting_tensor`] and counts the call.
unsafe fn release(manager_ctx: *mut c_void) {
    let ctx = Box::from_raw(manager_ctx as *mut Ctx);
    ctx.deletions.0.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn delete_unversioned(p: *mut DLManagedTensor) {
    let managed = Box::from_raw(p);
    release(managed.manager_ctx);
}

unsafe extern "C" fn delete_versioned(p: *mut DLManagedTensorVersioned) {
    let managed = Box::from_raw(p);
    release(managed.manager_ctx);
}

/// A new unversioned float32 CPU tensor of `shape` whose deleter counts into
/// `deletions`. The caller owns it until a successful put.
pub fn counting_tensor(deletions: &Deletions, shape: &[i64]) -> *mut DLManagedTensor {
    let mut ctx = Ctx::boxed(deletions, shape);
    let dl_tensor = ctx.dl_tensor();
    let manager_ctx = Box::into_raw(ctx) as *mut c_void;
    Box::into_raw(Box::new(DLManagedTensor {
        dl_tensor,
        manager_ctx,
        deleter: Some(delete_unversioned),
    }))
}

/// As [`counting_tensor`], in the versioned DLPack form with major version `major`.
pub fn counting_tensor_versioned(
    deletions: &Deletions,
    shape: &[i64],
    major: u32,
) -> *mut DLManagedTensorVersioned {
    let mut ctx = Ctx::boxed(deletions, shape);
    let dl_tensor = ctx.dl_tensor();
    let manager_ctx = Box::into_raw(ctx) as *mut c_void;
    Box::into_raw(Box::new(DLManagedTensorVersioned {
        version: DLPackVersion {
            major,
            minor: DLPACK_MINOR_VERSION,
        },
        manager_ctx,
        deleter: Some(delete_versioned),
        flags: 0,
        dl_tensor,
    }))
}

/// Calls the deleter of a tensor the plugin handed back or refused.
///
/// # Safety
/// `p` must be a valid tensor whose deleter has not run.
pub unsafe fn delete(p: *mut DLManagedTensor) {
    ((*p).deleter.expect("tensor has a deleter"))(p)
}

/// `n` owned tensors of `shape` counting into `deletions`.
pub fn tensors(deletions: &Deletions, n: usize, shape: &[i64]) -> Vec<Tensor> {
    (0..n)
        // SAFETY: counting_tensor returns a valid tensor nobody else owns.
        .map(|_| {
            unsafe { Tensor::from_managed(counting_tensor(deletions, shape)) }
                .expect("valid tensor")
        })
        .collect()
}

/// An ObjectID whose bytes are derived from `n`.
pub fn oid(n: u64) -> ObjectId {
    let mut id = [0xa5u8; 28];
    id[..8].copy_from_slice(&n.to_le_bytes());
    ObjectId(id)
}

/// Runs `f` and returns its result with the time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// A short wait the tests expect to run out.
pub const SHORT: Duration = Duration::from_millis(100);
/// Slack allowed past a timeout before the test calls a wait late.
pub const SLACK: Duration = Duration::from_secs(2);
/// A wait the tests expect to be cut short by another thread.
pub const LONG: Duration = Duration::from_secs(10);

/// A realistic record: `n` float32 tensors of shape `[1024, 256]` on CPU, rows
/// of one allocation (one extent), served over shared memory.
pub fn sample_metadata(n: usize) -> Metadata {
    let dtype = DLDataType {
        code: kDLFloat,
        bits: 32,
        lanes: 1,
    };
    Metadata {
        transport: TransportKind::Shm,
        device: DLDevice::cpu(),
        object: oid(n as u64),
        tensors: (0..n)
            .map(|_| TensorMeta::compact(dtype, vec![1024, 256]).expect("valid shape"))
            .collect(),
        extents: if n == 0 {
            vec![]
        } else {
            vec![n as u64 * 1024 * 1024]
        },
        places: (0..n as u64)
            .map(|i| {
                Some(Place {
                    extent: 0,
                    offset: i * 1024 * 1024,
                })
            })
            .collect(),
        producer: Producer {
            node_id: vec![7; 28],
            pid: 4242,
            actor_id: vec![9; 16],
            endpoint: "/dev/shm/ray-rdt-4242".into(),
            ..Producer::default()
        },
        transport_data: vec![1; 32],
        inline: None,
    }
}

/// Polls `condition` until it holds; panics after [`LONG`] (a condition that
/// never comes is a failure, not a hang).
pub fn wait_until(condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < LONG, "condition not met within {LONG:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
