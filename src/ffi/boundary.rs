//! The panic boundary and the per-thread last error, plus the pointer checks every
//! exported function uses on its arguments.
//!
//! Every function the library exports, and every callback it hands out (DLPack
//! deleters), runs its body under one of two guards: [`guard`] for functions that
//! return an [`rdt_status`], [`guard_plain`] (and its void form [`guard_void`])
//! for functions that return a plain value or nothing. A caught panic never
//! unwinds into C: it is logged at error level, counted (`PANICS_CAUGHT`) and
//! left as the thread's last error.

use super::status::rdt_status;
use crate::error::{Error, ErrorKind, Result};
use crate::object_id::{ObjectId, OBJECT_ID_LEN};
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Panics caught at the C ABI in this process, by every guard.
static PANICS_CAUGHT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Runs `f`, turning its error or panic into a status and the thread's last error
/// (a panic is also logged and counted, named by the caller's source location).
#[track_caller]
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> rdt_status {
    let at = std::panic::Location::caller();
    let outcome = catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(caught(&format!("the function at {at}"), panic)));
    match outcome {
        Ok(()) => rdt_status::RDT_OK,
        Err(e) => {
            set_last_error(&e);
            e.kind().into()
        }
    }
}

/// Runs the body of an exported function that returns a plain value (or of a
/// callback handed out, such as a DLPack deleter), named `name` in the report:
/// a panic gives `fallback`, is logged at error level, counted and left as the
/// thread's last error.
pub(crate) fn guard_plain<T>(name: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        set_last_error(&caught(name, panic));
        fallback
    })
}

/// [`guard_plain`] for a function or callback that returns nothing (destroy
/// and free functions, deleters).
pub(crate) fn guard_void(name: &str, f: impl FnOnce()) {
    guard_plain(name, (), f)
}

/// How many panics the guards caught in this process (for tests; outside them
/// each caught panic is reported by its error log line and last error).
#[cfg(test)]
pub(crate) fn panics_caught() -> u64 {
    PANICS_CAUGHT.load(Ordering::Relaxed)
}

/// Records a caught panic (counted, logged) and returns it as an internal error.
fn caught(name: &str, panic: Box<dyn Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    PANICS_CAUGHT.fetch_add(1, Ordering::Relaxed);
    log::error!("ray-rdt: panic caught at the C ABI in {name}: {what}");
    Error::new(
        ErrorKind::Internal,
        format!("internal error (panic caught at the C ABI in {name}): {what}"),
    )
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

/// The error for a NULL argument named `name`.
pub(crate) fn null(name: &str) -> Error {
    Error::new(
        ErrorKind::NullArgument,
        format!("argument `{name}` is NULL"),
    )
}
