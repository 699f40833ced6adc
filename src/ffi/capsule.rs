//! DLPack capsules in bulk, for the Python binding.
//!
//! Python hands tensors to the plugin as PyCapsules named `"dltensor"` (torch's
//! `to_dlpack`) and takes tensors back the same way (torch's `from_dlpack`).
//! Every capsule needs CPython calls: read its pointer, rename it to
//! `"used_dltensor"` once the plugin owns its tensor, or make one for a tensor
//! the plugin hands out. Made one by one through `ctypes`, each costs about
//! 160 ns of call overhead (more than torch's own export of the tensor), which
//! is most of a put's cost for a model of 100,000 tensors. These functions make
//! those calls for a whole Python list at once.
//!
//! They call the CPython C API (`src/ffi/python.rs`); the caller must hold the
//! GIL (the Python binding binds them through `ctypes.PyDLL`). A Python error
//! raised inside (a list item that is not a capsule) is cleared and reported
//! as the function's status.
//!
//! With a torch that offers DLPack's C exchange API the binding uses
//! [`super::exchange`] instead, which needs no capsules.

use super::boundary::{guard, guard_void, slice};
use super::python::{api, Api, Object};
use super::status::rdt_status;
use crate::dlpack::DLManagedTensor;
use crate::error::{Error, ErrorKind};
use std::ffi::{c_void, CStr};

/// The name of a capsule that still owns its tensor.
const DLTENSOR: &CStr = c"dltensor";
/// The name of a capsule whose tensor someone took (the DLPack convention).
const USED_DLTENSOR: &CStr = c"used_dltensor";

/// The error for item `i`, after clearing the Python error it raised.
///
/// # Safety
/// The GIL is held.
unsafe fn not_a_capsule(api: &Api, i: usize) -> Error {
    (api.err_clear)();
    Error::new(
        ErrorKind::InvalidArgument,
        format!("item {i} is not a DLPack capsule that still owns its tensor (named \"dltensor\")"),
    )
}

/// Writes the `DLManagedTensor*` of each capsule of the Python list `capsules`
/// (`len` of them, each named `"dltensor"`) to `out[0..len]`. The capsules keep
/// their tensors: hand the pointers to the plugin, then call
/// `rdt_capsules_consume` once it owns them.
///
/// # Safety
/// The GIL is held; `capsules` is a live Python list; `out` has room for
/// `len` pointers.
#[no_mangle]
pub unsafe extern "C" fn rdt_capsules_pointers(
    capsules: *mut c_void,
    out: *mut *mut DLManagedTensor,
    len: usize,
) -> rdt_status {
    guard(|| {
        let api = api()?;
        let n = api.list_len(capsules, len)?;
        if out.is_null() && n > 0 {
            return Err(Error::new(ErrorKind::NullArgument, "out is NULL"));
        }
        for i in 0..n {
            let p = (api.capsule_get_pointer)(
                (api.list_get_item)(capsules, i as isize),
                DLTENSOR.as_ptr(),
            );
            if p.is_null() {
                return Err(not_a_capsule(api, i));
            }
            *out.add(i) = p.cast();
        }
        Ok(())
    })
}

/// Renames every capsule of the Python list `capsules` (`len` of them) to
/// `"used_dltensor"`: the plugin owns their tensors now, so the capsules no
/// longer call the deleters when they die. On an error no capsule after the
/// one named was renamed.
///
/// # Safety
/// The GIL is held; `capsules` is a live Python list.
#[no_mangle]
pub unsafe extern "C" fn rdt_capsules_consume(capsules: *mut c_void, len: usize) -> rdt_status {
    guard(|| {
        let api = api()?;
        let n = api.list_len(capsules, len)?;
        for i in 0..n {
            let item = (api.list_get_item)(capsules, i as isize);
            if (api.capsule_is_valid)(item, DLTENSOR.as_ptr()) != 1
                || (api.capsule_set_name)(item, USED_DLTENSOR.as_ptr()) != 0
            {
                return Err(not_a_capsule(api, i));
            }
        }
        Ok(())
    })
}

/// Makes a capsule named `"dltensor"` for each of `tensors[0..len]` (tensors the
/// plugin handed out) and stores it at the same index of the Python list
/// `list` (`len` items, replaced). A capsule that dies still named so (nobody
/// took its tensor: torch's `from_dlpack` renames what it adopts) calls its
/// tensor's deleter. On an error every tensor is released all the same: those
/// with a capsule when the list drops it, the rest here.
///
/// # Safety
/// The GIL is held; `list` is a live Python list; every pointer in `tensors`
/// is a `DLManagedTensor` the caller owns, whose ownership moves to this call.
#[no_mangle]
pub unsafe extern "C" fn rdt_capsules_new(
    tensors: *const *mut DLManagedTensor,
    len: usize,
    list: *mut c_void,
) -> rdt_status {
    guard(|| {
        let tensors = slice(tensors, len, "tensors")?;
        let api = match api().and_then(|api| api.list_len(list, len).map(|_| api)) {
            Ok(api) => api,
            Err(e) => {
                release_all(tensors);
                return Err(e);
            }
        };
        for (i, &t) in tensors.iter().enumerate() {
            let capsule = (api.capsule_new)(t.cast(), DLTENSOR.as_ptr(), Some(release_unclaimed));
            if capsule.is_null() {
                (api.err_clear)();
                release_all(&tensors[i..]);
                return Err(Error::new(ErrorKind::Internal, "PyCapsule_New failed"));
            }
            // Steals the capsule, even when it fails (then the capsule's
            // destructor releases the tensor).
            if (api.list_set_item)(list, i as isize, capsule) != 0 {
                (api.err_clear)();
                release_all(&tensors[i + 1..]);
                return Err(Error::new(ErrorKind::Internal, "PyList_SetItem failed"));
            }
        }
        Ok(())
    })
}

/// Calls the deleters of `tensors`.
///
/// # Safety
/// The caller owns every tensor.
unsafe fn release_all(tensors: &[*mut DLManagedTensor]) {
    for &t in tensors {
        if let Some(deleter) = t.as_ref().and_then(|m| m.deleter) {
            deleter(t);
        }
    }
}

/// The destructor of the capsules `rdt_capsules_new` makes: releases the
/// tensor of a capsule nobody took.
unsafe extern "C" fn release_unclaimed(capsule: Object) {
    guard_void("the destructor of a DLPack capsule", || {
        let Ok(api) = api() else { return };
        if (api.capsule_is_valid)(capsule, DLTENSOR.as_ptr()) == 1 {
            let p = (api.capsule_get_pointer)(capsule, DLTENSOR.as_ptr());
            release_all(&[p.cast()]);
        }
    })
}
