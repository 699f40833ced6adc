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
//! They call the CPython C API (stable-ABI functions only), found in the
//! running process at the first call (`dlsym`): the library links no Python,
//! and in a process without Python they fail with `RDT_ERR_UNAVAILABLE`. The
//! caller must hold the GIL (the Python binding binds them through
//! `ctypes.PyDLL`). A Python error raised inside (a list item that is not a
//! capsule) is cleared and reported as the function's status.

use super::boundary::{guard, guard_void, slice};
use super::status::rdt_status;
use crate::dlpack::DLManagedTensor;
use crate::error::{Error, ErrorKind, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The name of a capsule that still owns its tensor.
const DLTENSOR: &CStr = c"dltensor";
/// The name of a capsule whose tensor someone took (the DLPack convention).
const USED_DLTENSOR: &CStr = c"used_dltensor";

/// A `PyObject*`.
type Object = *mut c_void;
/// A `PyCapsule_Destructor`.
type Destructor = unsafe extern "C" fn(Object);

/// The CPython functions these helpers call.
struct Api {
    list_size: unsafe extern "C" fn(Object) -> isize,
    list_get_item: unsafe extern "C" fn(Object, isize) -> Object,
    list_set_item: unsafe extern "C" fn(Object, isize, Object) -> c_int,
    capsule_new: unsafe extern "C" fn(*mut c_void, *const c_char, Option<Destructor>) -> Object,
    capsule_get_pointer: unsafe extern "C" fn(Object, *const c_char) -> *mut c_void,
    capsule_set_name: unsafe extern "C" fn(Object, *const c_char) -> c_int,
    capsule_is_valid: unsafe extern "C" fn(Object, *const c_char) -> c_int,
    err_clear: unsafe extern "C" fn(),
}

/// The function `name` of the running process (or None), as type `F`.
///
/// # Safety
/// `F` is a function pointer type matching the symbol's signature.
unsafe fn find<F: Copy>(name: &CStr) -> Option<F> {
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
    (!p.is_null()).then(|| std::mem::transmute_copy::<*mut c_void, F>(&p))
}

/// The CPython API of this process, looked up once.
fn api() -> Result<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: each symbol is the CPython function of that name, whose
        // signature (stable ABI) is the field's type.
        unsafe {
            Some(Api {
                list_size: find(c"PyList_Size")?,
                list_get_item: find(c"PyList_GetItem")?,
                list_set_item: find(c"PyList_SetItem")?,
                capsule_new: find(c"PyCapsule_New")?,
                capsule_get_pointer: find(c"PyCapsule_GetPointer")?,
                capsule_set_name: find(c"PyCapsule_SetName")?,
                capsule_is_valid: find(c"PyCapsule_IsValid")?,
                err_clear: find(c"PyErr_Clear")?,
            })
        }
    })
    .as_ref()
    .ok_or_else(|| {
        Error::new(
            ErrorKind::Unavailable,
            "the CPython C API is not in this process (the capsule helpers serve the Python binding)",
        )
    })
}

impl Api {
    /// The length of `list`, checked to be `expected`.
    ///
    /// # Safety
    /// The GIL is held; `list` is a live object.
    unsafe fn list_len(&self, list: Object, expected: usize) -> Result<usize> {
        if list.is_null() {
            return Err(Error::new(ErrorKind::NullArgument, "capsules is NULL"));
        }
        let len = (self.list_size)(list);
        if len < 0 {
            (self.err_clear)();
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "capsules is not a list",
            ));
        }
        if len as usize != expected {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("the list has {len} items, the call says {expected}"),
            ));
        }
        Ok(len as usize)
    }

    /// The error for item `i`, after clearing the Python error it raised.
    ///
    /// # Safety
    /// The GIL is held.
    unsafe fn not_a_capsule(&self, i: usize) -> Error {
        (self.err_clear)();
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "item {i} is not a DLPack capsule that still owns its tensor (named \"dltensor\")"
            ),
        )
    }
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
                return Err(api.not_a_capsule(i));
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
                return Err(api.not_a_capsule(i));
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
