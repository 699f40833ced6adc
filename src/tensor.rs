//! Owned DLPack tensors and their descriptors.
//!
//! [`Tensor`] owns one `DLManagedTensor` (either form) and calls its deleter exactly
//! once, on drop. [`TensorMeta`] is the validated description of a tensor (dtype,
//! shape, strides, byte size) that travels in metadata records. [`export`] hands a
//! tensor view out through the C ABI with a deleter of our own that keeps the
//! memory's owner alive.

use crate::dlpack::*;
use crate::error::{Error, Result};
pub use crate::host_buffer::HostBuffer;
use smallvec::SmallVec;
use std::any::Any;
use std::os::raw::c_void;
use std::ptr::NonNull;

/// Most dimensions a tensor may have.
pub const MAX_NDIM: usize = 64;
/// Largest tensor we accept, in bytes (256 TiB): rejects nonsense sizes early.
pub const MAX_TENSOR_BYTES: u64 = 1 << 48;

/// A tensor's shape or strides: up to four dimensions held inline (a model's
/// tensors have one or two), so describing a tensor allocates nothing.
pub type Dims = SmallVec<[i64; 4]>;

/// Validated description of a tensor: what a receiver needs to allocate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Element type.
    pub dtype: DLDataType,
    /// Shape; empty for a 0-d tensor.
    pub shape: Dims,
    /// Strides in elements, one per dimension (compact row-major when produced here).
    pub strides: Dims,
    /// Packed size in bytes: number of elements times element size.
    pub nbytes: u64,
}

/// Bytes per element of `dtype`, or an error for types that are not byte sized.
pub fn element_size(dtype: DLDataType) -> Result<u64> {
    let bits = u64::from(dtype.bits) * u64::from(dtype.lanes);
    if dtype.bits == 0 || dtype.lanes == 0 || bits % 8 != 0 {
        return Err(Error::invalid(format!(
            "unsupported dtype (code {}, {} bits, {} lanes): elements must be whole bytes",
            dtype.code, dtype.bits, dtype.lanes
        )));
    }
    if dtype.code == kDLOpaqueHandle || dtype.code > kDLFloat4_e2m1fn {
        return Err(Error::invalid(format!(
            "unsupported dtype code {}",
            dtype.code
        )));
    }
    Ok(bits / 8)
}

/// Row-major strides (in elements) for `shape`.
pub fn compact_strides(shape: &[i64]) -> Dims {
    let mut strides: Dims = smallvec::smallvec![0i64; shape.len()];
    let mut acc = 1i64;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d.max(1));
    }
    strides
}

impl TensorMeta {
    /// Validates and builds a descriptor; `nbytes` is derived from dtype and shape.
    pub fn new(
        dtype: DLDataType,
        shape: impl Into<Dims>,
        strides: impl Into<Dims>,
    ) -> Result<Self> {
        let (shape, strides): (Dims, Dims) = (shape.into(), strides.into());
        if shape.len() > MAX_NDIM {
            return Err(Error::invalid(format!(
                "tensor has {} dimensions, at most {MAX_NDIM} are supported",
                shape.len()
            )));
        }
        if strides.len() != shape.len() {
            return Err(Error::invalid(format!(
                "{} strides given for {} dimensions",
                strides.len(),
                shape.len()
            )));
        }
        let item = element_size(dtype)?;
        let mut numel: u64 = 1;
        for &d in &shape {
            let d = u64::try_from(d).map_err(|_| {
                Error::invalid(format!("negative dimension {d} in shape {shape:?}"))
            })?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| Error::invalid(format!("shape {shape:?} overflows")))?;
        }
        let nbytes = numel
            .checked_mul(item)
            .filter(|&n| n <= MAX_TENSOR_BYTES)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "shape {shape:?} is larger than {MAX_TENSOR_BYTES} bytes"
                ))
            })?;
        Ok(TensorMeta {
            dtype,
            shape,
            strides,
            nbytes,
        })
    }

    /// A compact row-major descriptor for `shape`.
    pub fn compact(dtype: DLDataType, shape: impl Into<Dims>) -> Result<Self> {
        let shape: Dims = shape.into();
        let strides = compact_strides(&shape);
        Self::new(dtype, shape, strides)
    }

    /// Reads and validates the descriptor of a DLPack tensor.
    ///
    /// # Safety
    /// `t.shape` (and `t.strides` unless NULL) must point to `t.ndim` readable values.
    pub unsafe fn from_dl(t: &DLTensor) -> Result<Self> {
        let ndim = usize::try_from(t.ndim)
            .ok()
            .filter(|&n| n <= MAX_NDIM)
            .ok_or_else(|| Error::invalid(format!("invalid ndim {}", t.ndim)))?;
        if ndim > 0 && t.shape.is_null() {
            return Err(Error::new(
                crate::ErrorKind::NullArgument,
                "DLTensor.shape is NULL",
            ));
        }
        let shape = if ndim == 0 {
            Dims::new()
        } else {
            Dims::from_slice(std::slice::from_raw_parts(t.shape, ndim))
        };
        let strides = if t.strides.is_null() || ndim == 0 {
            compact_strides(&shape)
        } else {
            Dims::from_slice(std::slice::from_raw_parts(t.strides, ndim))
        };
        Self::new(t.dtype, shape, strides)
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Whether the strides describe a compact row-major layout (size-1 and empty
    /// dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        if self.numel() == 0 {
            return true;
        }
        let mut expected = 1i64;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// This descriptor with compact strides (what a receiver allocates).
    pub fn to_compact(&self) -> TensorMeta {
        TensorMeta {
            strides: compact_strides(&self.shape),
            ..self.clone()
        }
    }
}

/// The two DLPack ownership forms a [`Tensor`] may hold.
#[derive(Debug)]
enum Managed {
    Unversioned(NonNull<DLManagedTensor>),
    Versioned(NonNull<DLManagedTensorVersioned>),
}

/// An owned DLPack tensor: the plugin calls its deleter exactly once, when dropped.
#[derive(Debug)]
pub struct Tensor {
    managed: Managed,
    meta: TensorMeta,
}

// SAFETY: DLPack producers (torch, numpy, our own exports) allow the deleter to run
// on any thread, and the plugin never mutates through the pointer concurrently.
unsafe impl Send for Tensor {}
// SAFETY: shared access only reads the immutable DLTensor header.
unsafe impl Sync for Tensor {}

impl Tensor {
    /// Takes ownership of an unversioned DLPack tensor after validating it. On error
    /// ownership stays with the caller (the deleter is not called).
    ///
    /// # Safety
    /// `ptr` must be a valid `DLManagedTensor` not owned by anyone else after success.
    pub unsafe fn from_managed(ptr: *mut DLManagedTensor) -> Result<Self> {
        let nn = NonNull::new(ptr)
            .ok_or_else(|| Error::new(crate::ErrorKind::NullArgument, "DLManagedTensor is NULL"))?;
        let meta = TensorMeta::from_dl(&nn.as_ref().dl_tensor)?;
        Ok(Tensor {
            managed: Managed::Unversioned(nn),
            meta,
        })
    }

    /// Takes ownership of a versioned DLPack tensor after validating it (major
    /// version must match). On error ownership stays with the caller.
    ///
    /// # Safety
    /// As [`Tensor::from_managed`].
    pub unsafe fn from_versioned(ptr: *mut DLManagedTensorVersioned) -> Result<Self> {
        let nn = NonNull::new(ptr).ok_or_else(|| {
            Error::new(
                crate::ErrorKind::NullArgument,
                "DLManagedTensorVersioned is NULL",
            )
        })?;
        let v = nn.as_ref().version;
        if v.major != DLPACK_MAJOR_VERSION {
            return Err(Error::invalid(format!(
                "DLPack major version {} is not supported (this plugin implements {DLPACK_MAJOR_VERSION})",
                v.major
            )));
        }
        let meta = TensorMeta::from_dl(&nn.as_ref().dl_tensor)?;
        Ok(Tensor {
            managed: Managed::Versioned(nn),
            meta,
        })
    }

    /// Wraps memory owned by `owner` (dropped when the tensor is) as a tensor.
    /// `data` must stay valid for `meta` as long as `owner` lives.
    pub fn from_owner(
        meta: TensorMeta,
        device: DLDevice,
        data: *mut c_void,
        owner: Box<dyn Any + Send>,
    ) -> Tensor {
        let ptr = export(&meta, device, data, 0, owner);
        // SAFETY: `export` returns a valid, uniquely owned DLManagedTensor.
        Tensor {
            managed: Managed::Unversioned(unsafe { NonNull::new_unchecked(ptr) }),
            meta,
        }
    }

    /// A new CPU tensor of `meta`'s shape in plugin-owned host memory (see
    /// [`HostBuffer`]: contents unspecified), with compact strides.
    pub fn alloc_host(meta: &TensorMeta) -> Result<Tensor> {
        let meta = meta.to_compact();
        let buf = HostBuffer::new(meta.nbytes as usize)?;
        let data = buf.as_ptr() as *mut c_void;
        Ok(Tensor::from_owner(
            meta,
            DLDevice::cpu(),
            data,
            Box::new(buf),
        ))
    }

    /// Hands the tensor out as an unversioned `DLManagedTensor` that the receiver
    /// must release with its deleter (versioned tensors are wrapped in a view that
    /// keeps them alive).
    pub fn into_managed(self) -> *mut DLManagedTensor {
        if let Managed::Unversioned(p) = self.managed {
            self.disown();
            return p.as_ptr();
        }
        let (meta, dl) = (self.meta.clone(), self.dl());
        let (device, data, offset) = (dl.device, dl.data, dl.byte_offset);
        export(&meta, device, data, offset, Box::new(self))
    }

    /// Gives up ownership without calling the deleter (for example a refused
    /// put: the caller still owns the DLPack tensor). Frees only the plugin's own
    /// descriptor.
    pub fn disown(self) {
        let mut this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used again and its Drop never runs.
        unsafe { std::ptr::drop_in_place(&mut this.meta) };
    }

    /// The DLPack view.
    pub fn dl(&self) -> &DLTensor {
        // SAFETY: the managed tensor stays valid until we call its deleter in Drop.
        unsafe {
            match &self.managed {
                Managed::Unversioned(p) => &p.as_ref().dl_tensor,
                Managed::Versioned(p) => &p.as_ref().dl_tensor,
            }
        }
    }

    /// The validated descriptor.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// The device holding the data.
    pub fn device(&self) -> DLDevice {
        self.dl().device
    }

    /// Address of the first element (`data + byte_offset`): the identity that
    /// `wait_tensor_freed` matches on.
    pub fn data_ptr(&self) -> usize {
        let t = self.dl();
        (t.data as usize).wrapping_add(t.byte_offset as usize)
    }

    /// The bytes of a contiguous CPU tensor, or `None` when it is strided or not on
    /// the host.
    pub fn host_bytes(&self) -> Option<&[u8]> {
        if !is_host(self.device()) || !self.meta.is_contiguous() {
            return None;
        }
        if self.meta.nbytes == 0 {
            return Some(&[]);
        }
        // SAFETY: a contiguous host tensor spans nbytes readable bytes from data_ptr.
        Some(unsafe {
            std::slice::from_raw_parts(self.data_ptr() as *const u8, self.meta.nbytes as usize)
        })
    }

    /// Mutable bytes of a contiguous CPU tensor (for receiving into it).
    pub fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.meta.nbytes as usize;
        let ptr = self.data_ptr() as *mut u8;
        self.host_bytes()?;
        if n == 0 {
            return Some(&mut []);
        }
        // SAFETY: as host_bytes; &mut self gives exclusive access through this handle.
        Some(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
    }

    /// Copies a CPU tensor's elements, in row-major order, into `dst`
    /// (`dst.len()` must equal `nbytes`). Works for strided tensors.
    pub fn pack_into(&self, dst: &mut [u8]) -> Result<()> {
        if dst.len() as u64 != self.meta.nbytes {
            return Err(Error::invalid(format!(
                "pack buffer is {} bytes, tensor is {}",
                dst.len(),
                self.meta.nbytes
            )));
        }
        self.pack_range(0, dst)
    }

    /// Copies `dst.len()` bytes of the tensor's row-major packed form, starting
    /// at packed byte `first`, into `dst`: lets a strided tensor be sent in
    /// bounded chunks. `first` and `dst.len()` must be whole elements.
    pub fn pack_range(&self, first: u64, dst: &mut [u8]) -> Result<()> {
        let item = element_size(self.meta.dtype)? as usize;
        if !first.is_multiple_of(item as u64)
            || !dst.len().is_multiple_of(item)
            || first + dst.len() as u64 > self.meta.nbytes
        {
            return Err(Error::invalid(format!(
                "byte range {first}+{} is not whole elements of the tensor",
                dst.len()
            )));
        }
        if let Some(src) = self.host_bytes() {
            dst.copy_from_slice(&src[first as usize..first as usize + dst.len()]);
            return Ok(());
        }
        if !is_host(self.device()) {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                "packing a non-CPU tensor on the host",
            ));
        }
        let base = self.data_ptr() as *const u8;
        let shape = &self.meta.shape;
        let strides = &self.meta.strides;
        // Multi-index of the first element.
        let mut index = vec![0i64; shape.len()];
        let mut rest = (first / item as u64) as i64;
        for d in (0..shape.len()).rev() {
            index[d] = rest % shape[d];
            rest /= shape[d];
        }
        let mut offset: i64 = index.iter().zip(strides).map(|(i, s)| i * s).sum();
        for chunk in dst.chunks_exact_mut(item) {
            // SAFETY: every index is within shape, so the element lies inside the
            // producer's allocation as its strides describe it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    base.offset(offset as isize * item as isize),
                    chunk.as_mut_ptr(),
                    item,
                )
            };
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                offset += strides[d];
                if index[d] < shape[d] {
                    break;
                }
                offset -= strides[d] * shape[d];
                index[d] = 0;
            }
        }
        Ok(())
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        // SAFETY: we own the managed tensor and call its deleter exactly once.
        unsafe {
            match self.managed {
                Managed::Unversioned(p) => {
                    if let Some(d) = (*p.as_ptr()).deleter {
                        d(p.as_ptr())
                    }
                }
                Managed::Versioned(p) => {
                    if let Some(d) = (*p.as_ptr()).deleter {
                        d(p.as_ptr())
                    }
                }
            }
        }
    }
}

/// A device as torch spells it (`cpu`, `cuda:0`), for messages.
#[allow(non_upper_case_globals)]
pub fn device_name(device: DLDevice) -> String {
    match device.device_type {
        kDLCPU => "cpu".to_owned(),
        kDLCUDA => format!("cuda:{}", device.device_id),
        kDLCUDAHost => "pinned host (cuda_host)".to_owned(),
        kDLCUDAManaged => format!("CUDA managed memory (device {})", device.device_id),
        t => format!("device type {t} (id {})", device.device_id),
    }
}

/// Whether `device` is memory the CPU can read directly.
pub fn is_host(device: DLDevice) -> bool {
    device.device_type == kDLCPU || device.device_type == kDLCUDAHost
}

/// Keeps what an exported DLManagedTensor points at alive. Boxed before its
/// `shape` and `strides` pointers are taken and never moved after (inline
/// [`Dims`] live inside the box).
struct ExportCtx {
    shape: Dims,
    strides: Dims,
    _owner: Box<dyn Any + Send>,
}

/// The deleter of every tensor [`export`] hands out: runs under the C ABI's
/// panic guard (a panic while dropping the owner is logged, counted and left as
/// the thread's last error, never unwound into the caller).
unsafe extern "C" fn export_deleter(ptr: *mut DLManagedTensor) {
    crate::ffi::boundary::guard_void("the deleter of an exported DLPack tensor", || {
        if ptr.is_null() {
            return;
        }
        let managed = Box::from_raw(ptr);
        drop(Box::from_raw(managed.manager_ctx as *mut ExportCtx));
        #[cfg(test)]
        tests::deleter_panic_hook();
    })
}

/// Hands out a new `DLManagedTensor` describing `data` with `meta`; its deleter
/// drops `owner`. The caller (usually C) must call the deleter exactly once.
pub fn export(
    meta: &TensorMeta,
    device: DLDevice,
    data: *mut c_void,
    byte_offset: u64,
    owner: Box<dyn Any + Send>,
) -> *mut DLManagedTensor {
    let mut ctx = Box::new(ExportCtx {
        shape: meta.shape.clone(),
        strides: meta.strides.clone(),
        _owner: owner,
    });
    let dl_tensor = DLTensor {
        data,
        device,
        ndim: meta.shape.len() as i32,
        dtype: meta.dtype,
        shape: ctx.shape.as_mut_ptr(),
        strides: ctx.strides.as_mut_ptr(),
        byte_offset,
    };
    Box::into_raw(Box::new(DLManagedTensor {
        dl_tensor,
        manager_ctx: Box::into_raw(ctx) as *mut c_void,
        deleter: Some(export_deleter),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlpack::kDLFloat;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    thread_local! {
        /// Test-only: makes the next export deleter on this thread panic (after
        /// it released what it owns).
        static PANIC_IN_DELETER: Cell<bool> = const { Cell::new(false) };
    }

    /// Called by [`export_deleter`] in unit tests.
    pub(super) fn deleter_panic_hook() {
        if PANIC_IN_DELETER.with(|p| p.replace(false)) {
            panic!("test hook: the deleter panics");
        }
    }

    /// Counts the drops of the owner it is handed with.
    struct Owner(Arc<AtomicUsize>);

    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_panic_in_the_deleter_is_caught_and_reported() {
        let drops = Arc::new(AtomicUsize::new(0));
        let meta = TensorMeta::compact(
            DLDataType {
                code: kDLFloat,
                bits: 32,
                lanes: 1,
            },
            vec![4],
        )
        .unwrap();
        let mut data = [0f32; 4];
        let ptr = export(
            &meta,
            DLDevice::cpu(),
            data.as_mut_ptr() as *mut c_void,
            0,
            Box::new(Owner(drops.clone())),
        );
        let before = crate::ffi::boundary::panics_caught();
        PANIC_IN_DELETER.with(|p| p.set(true));
        // SAFETY: `ptr` came from `export` and its deleter runs once.
        unsafe { ((*ptr).deleter.unwrap())(ptr) };
        // Still here: the panic did not unwind into the (C) caller.
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the owner was released");
        assert!(crate::ffi::boundary::panics_caught() > before);
        // SAFETY: rdt_last_error returns a NUL-terminated string.
        let last = unsafe { std::ffi::CStr::from_ptr(crate::ffi::rdt_last_error()) }
            .to_string_lossy()
            .into_owned();
        assert!(
            last.contains("deleter of an exported DLPack tensor"),
            "{last}"
        );
        assert!(last.contains("test hook: the deleter panics"), "{last}");
    }
}
