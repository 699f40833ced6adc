//! DLPack's C exchange API in bulk, for the Python binding.
//!
//! DLPack 1.2 lets a framework publish C functions that export its tensors as
//! DLPack and import DLPack tensors without a Python call per tensor (a
//! [`DLPackExchangeAPI`] table in a PyCapsule named `"dlpack_exchange_api"`,
//! the tensor type's `__dlpack_c_exchange_api__`; torch publishes one). Torch's
//! `to_dlpack` costs about 170 ns per tensor with its capsule; the table's
//! export about 55 ns, which for a model of 10,000 tensors is a millisecond
//! and more on each side of a transfer (the producer's put, the consumer's
//! targets). The targets, which the plugin only reads and writes during one
//! call, are described in place instead where the table can
//! ([`rdt_tensors_view`]: nothing made, nothing to release). The binding uses
//! these functions where torch has the table, and the capsule helpers
//! ([`super::capsule`]) where it does not.
//!
//! The caller holds the GIL (the binding binds them through `ctypes.PyDLL`).
//! A Python error raised inside is cleared and reported, with its text, as the
//! function's status.

use super::boundary::{guard, null, slice};
use super::python::{api, Api, Object};
use super::status::rdt_status;
use crate::dlpack::{
    DLManagedTensorVersioned, DLPackExchangeAPI, DLPackExchangeAPIHeader, DLTensor,
    DLPACK_MAJOR_VERSION,
};
use crate::error::{Error, ErrorKind, Result};
use std::ffi::{c_void, CStr};

/// The name of the capsule that holds a framework's exchange API table.
const EXCHANGE_API: &CStr = c"dlpack_exchange_api";

/// The table of `capsule` (or an older one it chains to) whose major version
/// is the plugin's (DLPack: a table lives as long as the process).
///
/// # Safety
/// The GIL is held; `capsule` is NULL or a live object.
unsafe fn table(py: &Api, capsule: Object) -> Result<&'static DLPackExchangeAPI> {
    if capsule.is_null() {
        return Err(null("exchange_api"));
    }
    let mut head = (py.capsule_get_pointer)(capsule, EXCHANGE_API.as_ptr())
        .cast_const()
        .cast::<DLPackExchangeAPIHeader>();
    if head.is_null() {
        (py.err_clear)();
        return Err(Error::invalid(
            "`exchange_api` is not a capsule named \"dlpack_exchange_api\"",
        ));
    }
    while let Some(h) = head.as_ref() {
        if h.version.major == DLPACK_MAJOR_VERSION {
            // The header is the table's first field.
            return Ok(&*head.cast::<DLPackExchangeAPI>());
        }
        head = h.prev_api;
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!("the framework's DLPack exchange API has no table of major version {DLPACK_MAJOR_VERSION}"),
    ))
}

/// Calls the deleter of each tensor of `tensors` (NULL entries skipped).
///
/// # Safety
/// The caller owns every tensor.
unsafe fn release_all(tensors: &[*mut DLManagedTensorVersioned]) {
    for &t in tensors {
        if let Some(deleter) = t.as_ref().and_then(|m| m.deleter) {
            deleter(t);
        }
    }
}

/// Releases the first `made` tensors of `out` and sets their entries to NULL
/// (an export that failed part way).
///
/// # Safety
/// `out` has `made` entries, each NULL or a tensor this call's export made.
unsafe fn unmake(out: *mut *mut DLManagedTensorVersioned, made: usize) {
    if made == 0 {
        return;
    }
    let made = std::slice::from_raw_parts_mut(out, made);
    release_all(made);
    made.fill(std::ptr::null_mut());
}

/// Exports each tensor of the Python list `tensors` (`len` of them, each an
/// instance of `tensor_type`, the type whose `__dlpack_c_exchange_api__` is
/// the capsule `exchange_api`) as an owning `DLManagedTensorVersioned`,
/// written to `out[0..len]`; when `out_views` is not NULL, each one's
/// `dl_tensor` is written to `out_views[0..len]` too (the targets of
/// `rdt_context_fetch_into`). The caller owns the tensors: hand them to
/// `rdt_context_put_versioned` or release them with `rdt_tensors_release`.
/// On an error none is exported (those made before it are released and their
/// entries of `out` set to NULL).
///
/// # Safety
/// The GIL is held; `exchange_api`, `tensor_type` and `tensors` are live
/// Python objects; `out` (and `out_views` when not NULL) has room for `len`
/// pointers.
#[no_mangle]
pub unsafe extern "C" fn rdt_tensors_export(
    exchange_api: *mut c_void,
    tensor_type: *mut c_void,
    tensors: *mut c_void,
    out: *mut *mut DLManagedTensorVersioned,
    out_views: *mut *const DLTensor,
    len: usize,
) -> rdt_status {
    guard(|| {
        let (py, n, export) = prepare(
            [exchange_api, tensor_type, tensors],
            len,
            &[(out.cast(), "out")],
            |t| t.managed_tensor_from_py_object_no_sync,
            "cannot export",
        )?;
        for i in 0..n {
            let item = match tensor_item(py, tensors, tensor_type, i) {
                Ok(item) => item,
                Err(e) => {
                    unmake(out, i);
                    return Err(e);
                }
            };
            let mut tensor = std::ptr::null_mut();
            if export(item, &mut tensor) != 0 || tensor.is_null() {
                let why = py.take_error_text();
                unmake(out, i);
                release_all(&[tensor]);
                return Err(Error::invalid(format!(
                    "item {i} cannot be exported as DLPack: {why}"
                )));
            }
            *out.add(i) = tensor;
            if !out_views.is_null() {
                *out_views.add(i) = &(*tensor).dl_tensor;
            }
        }
        Ok(())
    })
}

/// Describes each tensor of the Python list `tensors` (`len` of them, each an
/// instance of `tensor_type`, the type whose `__dlpack_c_exchange_api__` is
/// the capsule `exchange_api`) as a non-owning `DLTensor` written to
/// `out[0..len]`, and points `out_views[i]` at `out[i]` (the targets of
/// `rdt_context_fetch_into`). Nothing is allocated and nothing is to be
/// released: each `DLTensor` (its data, shape and strides) is valid while its
/// tensor lives unchanged, so the caller keeps the list for as long as it
/// uses them. `RDT_ERR_UNSUPPORTED` when the table has no
/// `dltensor_from_py_object_no_sync` (export with `rdt_tensors_export`
/// instead).
///
/// # Safety
/// The GIL is held; `exchange_api`, `tensor_type` and `tensors` are live
/// Python objects; `out` has room for `len` `DLTensor`s and `out_views` for
/// `len` pointers.
#[no_mangle]
pub unsafe extern "C" fn rdt_tensors_view(
    exchange_api: *mut c_void,
    tensor_type: *mut c_void,
    tensors: *mut c_void,
    out: *mut DLTensor,
    out_views: *mut *const DLTensor,
    len: usize,
) -> rdt_status {
    guard(|| {
        let (py, n, view) = prepare(
            [exchange_api, tensor_type, tensors],
            len,
            &[(out.cast(), "out"), (out_views.cast(), "out_views")],
            |t| t.dltensor_from_py_object_no_sync,
            "cannot describe a tensor without exporting it",
        )?;
        for i in 0..n {
            let item = tensor_item(py, tensors, tensor_type, i)?;
            let slot = out.add(i);
            if view(item, slot) != 0 {
                let why = py.take_error_text();
                return Err(Error::invalid(format!(
                    "item {i} cannot be described as DLPack: {why}"
                )));
            }
            *out_views.add(i) = slot;
        }
        Ok(())
    })
}

/// What both bulk functions start with, from their Python arguments
/// `[exchange_api, tensor_type, tensors]` and `len`: the CPython API, the
/// list's length, and the table's function that `pick` takes
/// (`RDT_ERR_UNSUPPORTED`, the framework's table "`missing`", without it),
/// after refusing a NULL `tensor_type` and NULL `outputs` for a non-empty
/// list.
///
/// # Safety
/// The GIL is held; the Python arguments are NULL or live objects.
unsafe fn prepare<F>(
    [exchange_api, tensor_type, tensors]: [Object; 3],
    len: usize,
    outputs: &[(*mut c_void, &str)],
    pick: impl FnOnce(&DLPackExchangeAPI) -> Option<F>,
    missing: &str,
) -> Result<(&'static Api, usize, F)> {
    let py = api()?;
    let n = py.list_len(tensors, len)?;
    let f = pick(table(py, exchange_api)?).ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!("the framework's DLPack exchange API {missing}"),
        )
    })?;
    check_arguments(tensor_type, n, outputs)?;
    Ok((py, n, f))
}

/// Refuses a NULL `tensor_type`, and a NULL output array (each named) for a
/// non-empty list.
fn check_arguments(
    tensor_type: *mut c_void,
    n: usize,
    outputs: &[(*mut c_void, &str)],
) -> Result<()> {
    if tensor_type.is_null() {
        return Err(null("tensor_type"));
    }
    match outputs.iter().find(|(p, _)| n > 0 && p.is_null()) {
        Some((_, name)) => Err(null(name)),
        None => Ok(()),
    }
}

/// Item `i` of the list `tensors`, refused unless it is an instance of
/// `tensor_type` (a Python error that check raised is cleared).
///
/// # Safety
/// The GIL is held; `tensors` is a list of more than `i` items; `tensor_type`
/// is a live type.
unsafe fn tensor_item(py: &Api, tensors: Object, tensor_type: Object, i: usize) -> Result<Object> {
    let item = (py.list_get_item)(tensors, i as isize);
    let is_tensor = (py.is_instance)(item, tensor_type);
    if is_tensor != 1 {
        if is_tensor < 0 {
            (py.err_clear)();
        }
        return Err(Error::invalid(format!(
            "item {i} is not a tensor of the type the DLPack exchange API belongs to"
        )));
    }
    Ok(item)
}

/// Calls the deleter of each of `tensors[0..len]` (tensors that
/// `rdt_tensors_export` made and the plugin did not take; NULL entries are
/// skipped).
///
/// # Safety
/// `tensors` has `len` pointers, each NULL or a tensor the caller owns, whose
/// ownership moves to this call.
#[no_mangle]
pub unsafe extern "C" fn rdt_tensors_release(
    tensors: *const *mut DLManagedTensorVersioned,
    len: usize,
) -> rdt_status {
    guard(|| {
        release_all(slice(tensors, len, "tensors")?);
        Ok(())
    })
}
