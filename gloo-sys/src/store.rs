//! Rendezvous key-value stores: the [`Store`] trait, the adapter that hands a
//! `Store` to the C shim, and [`CallbackStore`] for stores given as C callbacks.

use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::slice;
use std::time::Duration;

use crate::error::{ErrBuf, ErrorKind, GlooError};
use crate::ffi;
use crate::timeout::timeout_ms;

/// A key-value store that the ranks of a group share to find each other.
///
/// Each rank writes its addresses under its own keys and reads the others'.
/// Keys are short UTF-8 strings (Gloo's keys, prefixed with the rendezvous
/// prefix); values are small byte strings (a few hundred bytes per rank).
/// Implementations must be safe to call from any thread.
pub trait Store: Send + Sync {
    /// Stores `value` under `key`, replacing any previous value.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), GlooError>;

    /// Returns the value of `key`, waiting up to `timeout` for it to be set.
    /// A key still missing after `timeout` is an [`ErrorKind::Timeout`] error.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, GlooError>;
}

/// Builds the shim's view of `store`. The returned struct points at `store`
/// (through `holder`), so it is only valid while `holder` is.
pub(crate) fn shim_store(holder: &&dyn Store) -> ffi::gloo_shim_store {
    ffi::gloo_shim_store {
        user: (holder as *const &dyn Store).cast_mut().cast(),
        set: Some(store_set_trampoline),
        get: Some(store_get_trampoline),
    }
}

/// Copies `msg` into a callback's `err` buffer (truncated, NUL-terminated).
///
/// # Safety
/// `err` must be valid for `err_cap` bytes of writes, or `err_cap` must be 0.
unsafe fn write_err(err: *mut c_char, err_cap: usize, msg: &str) {
    if err.is_null() || err_cap == 0 {
        return;
    }
    let n = msg.len().min(err_cap - 1);
    ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
    *err.add(n) = 0;
}

/// Borrows `len` bytes at `data` (which may be NULL when `len` is 0).
///
/// # Safety
/// When `len > 0`, `data` must be valid for `len` bytes of reads for `'a`.
unsafe fn bytes<'a>(data: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        slice::from_raw_parts(data, len)
    }
}

/// Reports a store result to the shim: a status code, and the message in `err`.
///
/// # Safety
/// As for [`write_err`].
unsafe fn report(
    result: std::thread::Result<Result<(), GlooError>>,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    match result {
        Ok(Ok(())) => ffi::GLOO_SHIM_STORE_OK,
        Ok(Err(e)) => {
            write_err(err, err_cap, e.message());
            if e.kind() == ErrorKind::Timeout {
                ffi::GLOO_SHIM_STORE_TIMEOUT
            } else {
                ffi::GLOO_SHIM_STORE_ERROR
            }
        }
        Err(_) => {
            write_err(err, err_cap, "the store panicked");
            ffi::GLOO_SHIM_STORE_ERROR
        }
    }
}

/// Key bytes from the shim as UTF-8.
fn key_str(key: &[u8]) -> Result<&str, GlooError> {
    std::str::from_utf8(key)
        .map_err(|_| GlooError::new(ErrorKind::Store, "store key is not valid UTF-8"))
}

/// `set` callback handed to the shim; `user` points at a `&dyn Store`.
unsafe extern "C" fn store_set_trampoline(
    user: *mut c_void,
    key: *const c_char,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `user` is the `&&dyn Store` given to `shim_store`, alive for
        // the whole gloo_shim_context_create call; key and value are valid
        // for their lengths during this callback.
        let store: &dyn Store = unsafe { *user.cast::<&dyn Store>() };
        let key = key_str(unsafe { bytes(key.cast(), key_len) })?;
        store.set(key, unsafe { bytes(value, value_len) })
    }));
    report(result, err, err_cap)
}

/// `get` callback handed to the shim; `user` points at a `&dyn Store`.
unsafe extern "C" fn store_get_trampoline(
    user: *mut c_void,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    sink: *mut c_void,
    sink_fn: ffi::gloo_shim_sink_fn,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in `store_set_trampoline`.
        let store: &dyn Store = unsafe { *user.cast::<&dyn Store>() };
        let key = key_str(unsafe { bytes(key.cast(), key_len) })?;
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0).max(1));
        let value = store.get(key, timeout)?;
        // SAFETY: the shim's sink copies the bytes before returning and
        // never unwinds.
        unsafe { sink_fn(sink, value.as_ptr(), value.len()) };
        Ok(())
    }));
    report(result, err, err_cap)
}

/// A [`Store`] implemented by C callbacks, with the shim's callback contract
/// (see `gloo_shim_store` in `shim/gloo_shim.h`).
///
/// This is how a C or Python caller plugs in its own key-value store (for
/// example Ray's internal KV): it passes `set`/`get` function pointers and a
/// user pointer, and the plugin wraps them in a `CallbackStore`.
#[derive(Debug)]
pub struct CallbackStore {
    user: *mut c_void,
    set: ffi::gloo_shim_store_set_fn,
    get: ffi::gloo_shim_store_get_fn,
}

// SAFETY: `CallbackStore::new`'s contract requires the callbacks and the user
// pointer to be usable from any thread, concurrently.
unsafe impl Send for CallbackStore {}
// SAFETY: as above.
unsafe impl Sync for CallbackStore {}

impl CallbackStore {
    /// Wraps C callbacks. Fails with [`ErrorKind::InvalidArgument`] if `set`
    /// or `get` is missing.
    ///
    /// # Safety
    /// The callbacks must follow the contract of `gloo_shim_store`, must be
    /// callable from any thread (also concurrently), must not unwind, and
    /// `raw.user` must stay valid for them as long as the `CallbackStore`
    /// lives.
    pub unsafe fn new(raw: ffi::gloo_shim_store) -> Result<CallbackStore, GlooError> {
        match (raw.set, raw.get) {
            (Some(set), Some(get)) => Ok(CallbackStore {
                user: raw.user,
                set,
                get,
            }),
            _ => Err(GlooError::new(
                ErrorKind::InvalidArgument,
                "callback store: set and get callbacks are required",
            )),
        }
    }
}

/// Turns a callback status into a result.
fn callback_result(what: &str, key: &str, rc: c_int, err: &ErrBuf) -> Result<(), GlooError> {
    let detail = || {
        let text = err.text();
        if text.is_empty() {
            "no details given".to_string()
        } else {
            text
        }
    };
    match rc {
        ffi::GLOO_SHIM_STORE_OK => Ok(()),
        ffi::GLOO_SHIM_STORE_TIMEOUT => Err(GlooError::new(
            ErrorKind::Timeout,
            format!(
                "callback store: {what} of key '{key}' timed out: {}",
                detail()
            ),
        )),
        _ => Err(GlooError::new(
            ErrorKind::Store,
            format!("callback store: {what} of key '{key}' failed: {}", detail()),
        )),
    }
}

/// Sink that copies a value into the `Option<Vec<u8>>` at `sink`.
unsafe extern "C" fn vec_sink(sink: *mut c_void, data: *const u8, len: usize) {
    // Copying cannot panic except on allocation failure, which aborts.
    // SAFETY: `sink` is the `Option<Vec<u8>>` of `CallbackStore::get`; data is
    // valid for `len` bytes per the sink contract.
    unsafe { *sink.cast::<Option<Vec<u8>>>() = Some(bytes(data, len).to_vec()) };
}

impl Store for CallbackStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), GlooError> {
        let mut err = ErrBuf::new();
        // SAFETY: pointers valid for their lengths during the call; the
        // callback contract is the caller's promise in `new`.
        let rc = unsafe {
            (self.set)(
                self.user,
                key.as_ptr().cast(),
                key.len(),
                value.as_ptr(),
                value.len(),
                err.ptr(),
                err.cap(),
            )
        };
        callback_result("set", key, rc, &err)
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, GlooError> {
        let mut err = ErrBuf::new();
        let mut value: Option<Vec<u8>> = None;
        // SAFETY: as in `set`; `value` outlives the call and `vec_sink`
        // matches its type.
        let rc = unsafe {
            (self.get)(
                self.user,
                key.as_ptr().cast(),
                key.len(),
                timeout_ms(timeout),
                (&mut value as *mut Option<Vec<u8>>).cast(),
                vec_sink,
                err.ptr(),
                err.cap(),
            )
        };
        callback_result("get", key, rc, &err)?;
        value.ok_or_else(|| {
            GlooError::new(
                ErrorKind::Store,
                format!("callback store: get of key '{key}' returned success without a value"),
            )
        })
    }
}
