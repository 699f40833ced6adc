//! The RDT object store through the C ABI.
//!
//! Ownership: a successful put hands the DLPack tensors to the store, which calls
//! each deleter exactly once after the object is freed and the last view released;
//! a failed put leaves them with the caller, untouched. Tensors handed out by get
//! and pop are views of the stored memory (no copy) with their own deleter, which
//! the caller must call exactly once.

use super::boundary::{arg, guard, guard_void, object_id, out, slice, timeout};
use super::status::rdt_status;
use crate::dlpack::{DLManagedTensor, DLManagedTensorVersioned};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{CopyKind, ObjectStore, PutRejected, StoredObject};
use crate::tensor::{export, Tensor};
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

/// A per-process RDT object store (opaque).
pub struct rdt_store {
    pub(crate) inner: Arc<ObjectStore>,
}

/// How a put copy is classified.
pub type rdt_copy_kind = u32;
/// The tensors the producing actor returned.
pub const RDT_COPY_PRIMARY: rdt_copy_kind = 0;
/// A copy received from another process.
pub const RDT_COPY_SECONDARY: rdt_copy_kind = 1;

fn copy_kind(k: rdt_copy_kind) -> Result<CopyKind> {
    match k {
        RDT_COPY_PRIMARY => Ok(CopyKind::Primary),
        RDT_COPY_SECONDARY => Ok(CopyKind::Secondary),
        other => Err(Error::invalid(format!("unknown copy kind {other}"))),
    }
}

/// Creates an empty store and writes its handle to `*out_store`.
///
/// # Safety
/// `out_store` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_new(out_store: *mut *mut rdt_store) -> rdt_status {
    guard(|| {
        let out = out(out_store, "out_store")?;
        *out = Box::into_raw(Box::new(rdt_store {
            inner: Arc::new(ObjectStore::new()),
        }));
        Ok(())
    })
}

/// Destroys a store. Objects still held are freed (their deleters run once no
/// view of them is alive). NULL is ignored.
///
/// # Safety
/// `store` must come from `rdt_store_new` and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_destroy(store: *mut rdt_store) {
    guard_void("rdt_store_destroy", || {
        if !store.is_null() {
            drop(Box::from_raw(store));
        }
    })
}

/// Adopts the caller's DLPack tensors, all or none: if any is invalid, none is
/// kept (no deleter runs) and the error names its index.
pub(crate) fn adopt<P: Copy>(
    ptrs: &[P],
    wrap: unsafe fn(P) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let mut tensors = Vec::with_capacity(ptrs.len());
    for (i, &p) in ptrs.iter().enumerate() {
        // SAFETY: the caller guarantees each pointer is a valid DLPack tensor.
        match unsafe { wrap(p) } {
            Ok(t) => tensors.push(t),
            Err(e) => {
                tensors.into_iter().for_each(Tensor::disown);
                return Err(Error::new(e.kind(), format!("tensor {i}: {}", e.message())));
            }
        }
    }
    Ok(tensors)
}

/// Hands the tensors of a refused put back to the caller (no deleter runs).
pub(crate) fn refused(rejected: PutRejected) -> Error {
    rejected.tensors.into_iter().for_each(Tensor::disown);
    rejected.error
}

/// Validates every tensor, then stores them all; on any failure the caller keeps
/// ownership of every tensor.
fn put_tensors<P: Copy>(
    store: &rdt_store,
    id: crate::object_id::ObjectId,
    ptrs: &[P],
    kind: CopyKind,
    wrap: unsafe fn(P) -> Result<Tensor>,
) -> Result<()> {
    store
        .inner
        .put(id, adopt(ptrs, wrap)?, kind)
        .map_err(refused)
}

/// Stores `num_tensors` DLPack tensors under the 28-byte `object_id`.
///
/// # Safety
/// `store` valid; `object_id` 28 readable bytes; `tensors` an array of
/// `num_tensors` valid `DLManagedTensor` pointers (may be NULL when 0).
#[no_mangle]
pub unsafe extern "C" fn rdt_store_put(
    store: *const rdt_store,
    object_id: *const u8,
    tensors: *const *mut DLManagedTensor,
    num_tensors: usize,
    kind: rdt_copy_kind,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        let id = self::object_id(object_id)?;
        put_tensors(
            store,
            id,
            slice(tensors, num_tensors, "tensors")?,
            copy_kind(kind)?,
            Tensor::from_managed,
        )
    })
}

/// As `rdt_store_put`, for versioned DLPack tensors (major version 1).
///
/// # Safety
/// As `rdt_store_put`, with `DLManagedTensorVersioned` pointers.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_put_versioned(
    store: *const rdt_store,
    object_id: *const u8,
    tensors: *const *mut DLManagedTensorVersioned,
    num_tensors: usize,
    kind: rdt_copy_kind,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        let id = self::object_id(object_id)?;
        put_tensors(
            store,
            id,
            slice(tensors, num_tensors, "tensors")?,
            copy_kind(kind)?,
            Tensor::from_versioned,
        )
    })
}

/// Stores an error in place of the object's tensors: every current and future
/// waiter on `object_id` gets `RDT_ERR_OBJECT_FAILED` with `message`.
///
/// # Safety
/// `store` valid; `object_id` 28 bytes; `message` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_put_error(
    store: *const rdt_store,
    object_id: *const u8,
    message: *const c_char,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        let id = self::object_id(object_id)?;
        let msg = CStr::from_ptr(arg(message, "message")?)
            .to_string_lossy()
            .into_owned();
        store.inner.put_error(id, msg);
        Ok(())
    })
}

/// Writes views of `obj`'s tensors to `out_tensors`.
fn export_views(obj: &Arc<StoredObject>, out_tensors: *mut *mut DLManagedTensor) {
    for (i, t) in obj.tensors.iter().enumerate() {
        let dl = t.dl();
        let view = export(
            t.meta(),
            dl.device,
            dl.data,
            dl.byte_offset,
            Box::new(obj.clone()),
        );
        // SAFETY: the caller checked capacity >= number of tensors.
        unsafe { *out_tensors.add(i) = view };
    }
}

/// Shared body of get and pop.
unsafe fn get_or_pop(
    store: *const rdt_store,
    object_id: *const u8,
    timeout_ms: u64,
    out_tensors: *mut *mut DLManagedTensor,
    capacity: usize,
    out_count: *mut usize,
    remove: bool,
) -> Result<()> {
    let store = arg(store, "store")?;
    let id = self::object_id(object_id)?;
    let count = out(out_count, "out_count")?;
    if out_tensors.is_null() && capacity > 0 {
        return Err(Error::new(
            ErrorKind::NullArgument,
            "argument `out_tensors` is NULL",
        ));
    }
    // Capacity is checked under the store's lock, before a pop removes anything.
    let mut fits = |obj: &StoredObject| {
        *count = obj.tensors.len();
        if capacity < obj.tensors.len() {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!(
                    "object {id} has {} tensors, the output array holds {capacity}",
                    obj.tensors.len()
                ),
            ));
        }
        Ok(())
    };
    let obj = if remove {
        store.inner.pop_if(&id, timeout(timeout_ms), &mut fits)?
    } else {
        store.inner.get(&id, timeout(timeout_ms))?
    };
    fits(&obj)?;
    export_views(&obj, out_tensors);
    Ok(())
}

/// Waits up to `timeout_ms` for `object_id` and writes views of its tensors (no
/// copy: they share the stored memory) to `out_tensors[0..*out_count]`. When
/// `capacity` is too small, writes the needed count and returns
/// `RDT_ERR_BUFFER_TOO_SMALL`. Each view's deleter must be called once.
/// `timeout_ms == UINT64_MAX` waits without limit.
///
/// # Safety
/// `store` valid; `object_id` 28 bytes; `out_tensors` room for `capacity`
/// pointers; `out_count` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_get(
    store: *const rdt_store,
    object_id: *const u8,
    timeout_ms: u64,
    out_tensors: *mut *mut DLManagedTensor,
    capacity: usize,
    out_count: *mut usize,
) -> rdt_status {
    guard(|| {
        get_or_pop(
            store,
            object_id,
            timeout_ms,
            out_tensors,
            capacity,
            out_count,
            false,
        )
    })
}

/// As `rdt_store_get`, and removes the object from the store (a received copy
/// consumed by its task). The views keep the memory alive until released.
///
/// # Safety
/// As `rdt_store_get`.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_pop(
    store: *const rdt_store,
    object_id: *const u8,
    timeout_ms: u64,
    out_tensors: *mut *mut DLManagedTensor,
    capacity: usize,
    out_count: *mut usize,
) -> rdt_status {
    guard(|| {
        get_or_pop(
            store,
            object_id,
            timeout_ms,
            out_tensors,
            capacity,
            out_count,
            true,
        )
    })
}

/// Waits up to `timeout_ms` until `object_id` is present (tensors or error).
///
/// # Safety
/// `store` valid; `object_id` 28 bytes.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_wait(
    store: *const rdt_store,
    object_id: *const u8,
    timeout_ms: u64,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        store
            .inner
            .wait(&self::object_id(object_id)?, timeout(timeout_ms))
    })
}

/// Frees `object_id` (out of scope in Ray). Writes whether it was present to
/// `*out_found`. Deleters run once no view is alive.
///
/// # Safety
/// `store` valid; `object_id` 28 bytes; `out_found` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_free_object(
    store: *const rdt_store,
    object_id: *const u8,
    out_found: *mut bool,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        let id = self::object_id(object_id)?;
        let found = out(out_found, "out_found")?;
        *found = store.inner.free(&id);
        Ok(())
    })
}

/// Waits up to `timeout_ms` until no stored object holds memory at `data_ptr`
/// (the address of a tensor's first element).
///
/// # Safety
/// `store` valid.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_wait_tensor_freed(
    store: *const rdt_store,
    data_ptr: *const c_void,
    timeout_ms: u64,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        store
            .inner
            .wait_tensor_freed(data_ptr as usize, timeout(timeout_ms))
    })
}

/// Writes whether `object_id` is present to `*out_present`.
///
/// # Safety
/// `store` valid; `object_id` 28 bytes; `out_present` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_contains(
    store: *const rdt_store,
    object_id: *const u8,
    out_present: *mut bool,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        *out(out_present, "out_present")? = store.inner.contains(&self::object_id(object_id)?);
        Ok(())
    })
}

/// Writes the number of objects and of tensor bytes held.
///
/// # Safety
/// `store` valid; both outputs valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_store_counts(
    store: *const rdt_store,
    out_objects: *mut usize,
    out_bytes: *mut u64,
) -> rdt_status {
    guard(|| {
        let store = arg(store, "store")?;
        let objects = out(out_objects, "out_objects")?;
        let bytes = out(out_bytes, "out_bytes")?;
        *objects = store.inner.num_objects();
        *bytes = store.inner.num_bytes();
        Ok(())
    })
}
