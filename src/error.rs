//! The crate's error type. Every fallible operation returns [`Result`]; the C ABI
//! maps [`ErrorKind`] onto `rdt_status` codes and keeps the message for
//! `rdt_last_error()`.

use std::fmt;

/// What class of failure happened. The C ABI turns each kind into one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A required pointer argument was NULL.
    NullArgument,
    /// An argument was out of range or inconsistent.
    InvalidArgument,
    /// The object (or group, or peer) is not known.
    NotFound,
    /// An object with this ID is already stored.
    AlreadyExists,
    /// A blocking call ran past its timeout.
    Timeout,
    /// A metadata record could not be decoded.
    MalformedMetadata,
    /// The operation is not supported for this transport, device or dtype.
    Unsupported,
    /// The transport failed (peer died, connection broke, library error).
    Transport,
    /// The object holds an error instead of tensors (for example a failed receive).
    ObjectFailed,
    /// A library the transport needs is not installed or could not be loaded.
    Unavailable,
    /// The caller's output buffer is too small; the needed size was reported.
    BufferTooSmall,
    /// An operating-system call failed.
    Io,
    /// A bug inside the plugin was caught at the C ABI boundary.
    Internal,
    /// A peer was refused, or refused us: wrong or missing proof of Ray's
    /// cluster token, or (same host) another user's process.
    AuthRefused,
    /// The peer process is gone: nothing listens at its endpoint any more.
    PeerGone,
}

/// An error with its kind and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// Shorthand for an [`ErrorKind::MalformedMetadata`] error.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::MalformedMetadata, message)
    }

    /// Shorthand for an [`ErrorKind::Transport`] error.
    pub fn transport(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transport, message)
    }

    /// Shorthand for an [`ErrorKind::Io`] error carrying the OS error text.
    pub fn io(context: &str, err: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{context}: {err}"))
    }

    /// Shorthand for an [`ErrorKind::Timeout`] error.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
