//! The error type of this crate.

use std::fmt;

use crate::ffi;

/// What kind of failure a [`GlooError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad argument: peer out of range, rank equal to self, NUL in a string...
    InvalidArgument,
    /// An operation, a store lookup or the rendezvous did not finish in time.
    /// A timed-out transfer breaks its context.
    Timeout,
    /// [`Context::abort`](crate::Context::abort) was called.
    Aborted,
    /// The context broke earlier (or while the operation waited); the message
    /// says why. Recovery means a new context under a new prefix.
    Broken,
    /// A connection failed: the peer died, reset or closed the connection.
    Io,
    /// The rendezvous store failed (not a timeout).
    Store,
    /// Anything else Gloo or the C++ runtime reported.
    Internal,
}

impl ErrorKind {
    /// Maps a shim status code to a kind (`None` for `GLOO_SHIM_OK`).
    pub(crate) fn from_status(status: ffi::gloo_shim_status) -> Option<ErrorKind> {
        Some(match status {
            ffi::GLOO_SHIM_OK => return None,
            ffi::GLOO_SHIM_INVALID_ARGUMENT => ErrorKind::InvalidArgument,
            ffi::GLOO_SHIM_TIMEOUT => ErrorKind::Timeout,
            ffi::GLOO_SHIM_ABORTED => ErrorKind::Aborted,
            ffi::GLOO_SHIM_BROKEN => ErrorKind::Broken,
            ffi::GLOO_SHIM_IO => ErrorKind::Io,
            ffi::GLOO_SHIM_STORE => ErrorKind::Store,
            _ => ErrorKind::Internal,
        })
    }

    /// A short lowercase name, used as the prefix of messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Broken => "broken",
            ErrorKind::Io => "I/O error",
            ErrorKind::Store => "store error",
            ErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from Gloo, the shim, or a rendezvous store.
///
/// The message says what failed, with the peer rank, slot, size and timeout
/// where they apply, followed by Gloo's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlooError {
    kind: ErrorKind,
    message: String,
}

impl GlooError {
    /// Creates an error; [`Store`](crate::Store) implementations use this to
    /// report failures (a missing key after the timeout is [`ErrorKind::Timeout`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> GlooError {
        GlooError {
            kind,
            message: message.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix that `Display` adds.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for GlooError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gloo {}: {}", self.kind, self.message)
    }
}

impl std::error::Error for GlooError {}

/// A message buffer for the shim's `err`/`err_cap` arguments.
pub(crate) struct ErrBuf([u8; ErrBuf::CAP]);

impl ErrBuf {
    /// Room for the longest message the shim writes (longer ones are cut).
    const CAP: usize = 2048;

    /// An empty buffer.
    pub(crate) fn new() -> ErrBuf {
        ErrBuf([0; ErrBuf::CAP])
    }

    /// Pointer for the shim's `err` argument.
    pub(crate) fn ptr(&mut self) -> *mut std::os::raw::c_char {
        self.0.as_mut_ptr().cast()
    }

    /// Value for the shim's `err_cap` argument.
    pub(crate) fn cap(&self) -> usize {
        ErrBuf::CAP
    }

    /// The NUL-terminated text the shim wrote (lossy UTF-8).
    pub(crate) fn text(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(ErrBuf::CAP);
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }

    /// `Ok(())` for `GLOO_SHIM_OK`, else the error the shim described.
    pub(crate) fn check(&self, status: ffi::gloo_shim_status) -> Result<(), GlooError> {
        match ErrorKind::from_status(status) {
            None => Ok(()),
            Some(kind) => {
                let mut message = self.text();
                if message.is_empty() {
                    message = format!("the shim returned status {status} without a message");
                }
                Err(GlooError::new(kind, message))
            }
        }
    }
}
