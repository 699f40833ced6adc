//! The crate's error type. Every fallible operation returns [`Result`]; the C ABI
//! maps [`ErrorKind`] onto `rdt_status` codes and keeps the message for
//! `rdt_last_error()`.

use crate::ffi::rdt_status as S;
use std::fmt;

/// What class of failure happened. The discriminant is the kind's code: the
/// `rdt_status` of the C ABI (`RDT_ERR_*`, the one numbering) and the byte an
/// error reply carries on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorKind {
    /// A required pointer argument was NULL.
    NullArgument = S::RDT_ERR_NULL_ARGUMENT as u8,
    /// An argument was out of range or inconsistent.
    InvalidArgument = S::RDT_ERR_INVALID_ARGUMENT as u8,
    /// The object (or group, or peer) is not known.
    NotFound = S::RDT_ERR_NOT_FOUND as u8,
    /// An object with this ID is already stored.
    AlreadyExists = S::RDT_ERR_ALREADY_EXISTS as u8,
    /// A blocking call ran past its timeout.
    Timeout = S::RDT_ERR_TIMEOUT as u8,
    /// A metadata record could not be decoded.
    MalformedMetadata = S::RDT_ERR_MALFORMED_METADATA as u8,
    /// The operation is not supported for this transport, device or dtype.
    Unsupported = S::RDT_ERR_UNSUPPORTED as u8,
    /// The transport failed (peer died, connection broke, library error).
    Transport = S::RDT_ERR_TRANSPORT as u8,
    /// The object holds an error instead of tensors (for example a failed receive).
    ObjectFailed = S::RDT_ERR_OBJECT_FAILED as u8,
    /// A library the transport needs is not installed or could not be loaded.
    Unavailable = S::RDT_ERR_UNAVAILABLE as u8,
    /// The caller's output buffer is too small; the needed size was reported.
    BufferTooSmall = S::RDT_ERR_BUFFER_TOO_SMALL as u8,
    /// An operating-system call failed.
    Io = S::RDT_ERR_IO as u8,
    /// A bug inside the plugin was caught at the C ABI boundary.
    Internal = S::RDT_ERR_INTERNAL as u8,
    /// A peer was refused, or refused us: wrong or missing proof of Ray's
    /// cluster token, or (same host) another user's process.
    AuthRefused = S::RDT_ERR_AUTH_REFUSED as u8,
    /// The peer process is gone: nothing listens at its endpoint any more.
    PeerGone = S::RDT_ERR_PEER_GONE as u8,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::NullArgument,
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::Timeout,
        ErrorKind::MalformedMetadata,
        ErrorKind::Unsupported,
        ErrorKind::Transport,
        ErrorKind::ObjectFailed,
        ErrorKind::Unavailable,
        ErrorKind::BufferTooSmall,
        ErrorKind::Io,
        ErrorKind::Internal,
        ErrorKind::AuthRefused,
        ErrorKind::PeerGone,
    ];

    /// The kind's code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind of `code`, if it names one.
    pub fn from_code(code: u8) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }
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
