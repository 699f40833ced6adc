//! The CPython C API of the running process, for the Python binding's bulk
//! helpers ([`super::capsule`], [`super::exchange`], [`super::list`]).
//!
//! The library links no Python: the functions (stable-ABI ones only) are found
//! in the process at the first call (`dlsym`), and in a process without Python
//! the helpers fail with `RDT_ERR_UNAVAILABLE`. Every method needs the GIL
//! (the binding calls the helpers through `ctypes.PyDLL`).

use crate::error::{Error, ErrorKind, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// A `PyObject*`.
pub(super) type Object = *mut c_void;
/// A `PyCapsule_Destructor`.
pub(super) type Destructor = unsafe extern "C" fn(Object);

/// The CPython functions the helpers call.
pub(super) struct Api {
    pub list_size: unsafe extern "C" fn(Object) -> isize,
    pub list_get_item: unsafe extern "C" fn(Object, isize) -> Object,
    pub list_set_item: unsafe extern "C" fn(Object, isize, Object) -> c_int,
    pub capsule_new: unsafe extern "C" fn(*mut c_void, *const c_char, Option<Destructor>) -> Object,
    pub capsule_get_pointer: unsafe extern "C" fn(Object, *const c_char) -> *mut c_void,
    pub capsule_set_name: unsafe extern "C" fn(Object, *const c_char) -> c_int,
    pub capsule_is_valid: unsafe extern "C" fn(Object, *const c_char) -> c_int,
    pub is_instance: unsafe extern "C" fn(Object, Object) -> c_int,
    pub err_clear: unsafe extern "C" fn(),
    err_fetch: unsafe extern "C" fn(*mut Object, *mut Object, *mut Object),
    object_str: unsafe extern "C" fn(Object) -> Object,
    unicode_as_utf8: unsafe extern "C" fn(Object, *mut isize) -> *const c_char,
    dec_ref: unsafe extern "C" fn(Object),
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
pub(super) fn api() -> Result<&'static Api> {
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
                is_instance: find(c"PyObject_IsInstance")?,
                err_clear: find(c"PyErr_Clear")?,
                err_fetch: find(c"PyErr_Fetch")?,
                object_str: find(c"PyObject_Str")?,
                unicode_as_utf8: find(c"PyUnicode_AsUTF8AndSize")?,
                dec_ref: find(c"Py_DecRef")?,
            })
        }
    })
    .as_ref()
    .ok_or_else(|| {
        Error::new(
            ErrorKind::Unavailable,
            "the CPython C API is not in this process (the bulk DLPack helpers serve the Python binding)",
        )
    })
}

impl Api {
    /// The length of the list `list`, checked to be `expected`.
    ///
    /// # Safety
    /// The GIL is held; `list` is NULL or a live object.
    pub unsafe fn list_len(&self, list: Object, expected: usize) -> Result<usize> {
        if list.is_null() {
            return Err(Error::new(ErrorKind::NullArgument, "the list is NULL"));
        }
        let len = (self.list_size)(list);
        if len < 0 {
            (self.err_clear)();
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the argument is not a list",
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

    /// The text of the pending Python error (its `str()`), which is cleared.
    ///
    /// # Safety
    /// The GIL is held.
    pub unsafe fn take_error_text(&self) -> String {
        let (mut kind, mut value, mut traceback) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        (self.err_fetch)(&mut kind, &mut value, &mut traceback);
        let text = if value.is_null() {
            None
        } else {
            let s = (self.object_str)(value);
            let mut len = 0;
            let utf8 = if s.is_null() {
                std::ptr::null()
            } else {
                (self.unicode_as_utf8)(s, &mut len)
            };
            let text = (!utf8.is_null()).then(|| {
                let bytes = std::slice::from_raw_parts(utf8.cast::<u8>(), len as usize);
                String::from_utf8_lossy(bytes).into_owned()
            });
            if !s.is_null() {
                (self.dec_ref)(s);
            }
            text
        };
        for o in [kind, value, traceback] {
            if !o.is_null() {
                (self.dec_ref)(o);
            }
        }
        (self.err_clear)();
        text.unwrap_or_else(|| "an error without a message".to_owned())
    }
}
