//! The panic boundary and the per-thread last error, plus the pointer checks every
//! exported function uses on its arguments.

use super::status::rdt_status;
use crate::error::{Error, ErrorKind, Result};
use crate::object_id::{ObjectId, OBJECT_ID_LEN};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Runs `f`, turning its error or panic into a status and the thread's last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> rdt_status {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::new(
            ErrorKind::Internal,
            format!("internal error (panic caught at the C ABI): {what}"),
        ))
    });
    match outcome {
        Ok(()) => rdt_status::RDT_OK,
        Err(e) => {
            set_last_error(&e);
            e.kind().into()
        }
    }
}

fn set_last_error(e: &Error) {
    let text = CString::new(e.message().replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = text);
}

/// The message of the last failed call on this thread, as a NUL-terminated string
/// ("" if none). Valid until the next failing call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

/// A NULL-checked shared reference.
///
/// # Safety
/// A non-NULL `p` must point to a valid `T` for the returned lifetime.
pub(crate) unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T> {
    p.as_ref().ok_or_else(|| null(name))
}

/// A NULL-checked output location.
///
/// # Safety
/// A non-NULL `p` must be valid for writes.
pub(crate) unsafe fn out<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T> {
    p.as_mut().ok_or_else(|| null(name))
}

/// A NULL-checked slice of `len` items (NULL is allowed when `len` is 0).
///
/// # Safety
/// A non-NULL `p` must point to `len` valid items.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null(name));
    }
    Ok(std::slice::from_raw_parts(p, len))
}

/// Reads a 28-byte ObjectID.
///
/// # Safety
/// A non-NULL `p` must point to 28 readable bytes.
pub(crate) unsafe fn object_id(p: *const u8) -> Result<ObjectId> {
    ObjectId::from_slice(slice(p, OBJECT_ID_LEN, "object_id")?)
}

/// Converts a millisecond timeout; `u64::MAX` waits without limit.
pub(crate) fn timeout(ms: u64) -> Duration {
    if ms == u64::MAX {
        Duration::MAX
    } else {
        Duration::from_millis(ms)
    }
}

fn null(name: &str) -> Error {
    Error::new(
        ErrorKind::NullArgument,
        format!("argument `{name}` is NULL"),
    )
}
