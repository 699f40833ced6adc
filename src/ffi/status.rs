//! `rdt_status`: the return code of every C ABI function.

use crate::error::ErrorKind;

/// Result of a C ABI call. `RDT_OK` is success; for any other value
/// `rdt_last_error()` describes the failure on the calling thread.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rdt_status {
    /// Success.
    RDT_OK = 0,
    /// A required pointer argument was NULL.
    RDT_ERR_NULL_ARGUMENT = 1,
    /// An argument was out of range or inconsistent.
    RDT_ERR_INVALID_ARGUMENT = 2,
    /// The object, group or peer is not known.
    RDT_ERR_NOT_FOUND = 3,
    /// An object with this ID is already stored.
    RDT_ERR_ALREADY_EXISTS = 4,
    /// A blocking call ran past its timeout.
    RDT_ERR_TIMEOUT = 5,
    /// A metadata record could not be decoded.
    RDT_ERR_MALFORMED_METADATA = 6,
    /// Not supported for this transport, device or dtype.
    RDT_ERR_UNSUPPORTED = 7,
    /// The transport failed (peer died, connection broke, library error).
    RDT_ERR_TRANSPORT = 8,
    /// The object holds an error instead of tensors.
    RDT_ERR_OBJECT_FAILED = 9,
    /// A library the transport needs is missing.
    RDT_ERR_UNAVAILABLE = 10,
    /// An output array is too small; the needed count was written.
    RDT_ERR_BUFFER_TOO_SMALL = 11,
    /// An operating-system call failed.
    RDT_ERR_IO = 12,
    /// A bug inside the plugin was caught at the boundary (including panics).
    RDT_ERR_INTERNAL = 13,
    /// Authentication refused: a wrong or missing proof of Ray's cluster token,
    /// or a same-host peer of another user.
    RDT_ERR_AUTH_REFUSED = 14,
    /// The peer process is gone (nothing listens at its endpoint).
    RDT_ERR_PEER_GONE = 15,
}

impl From<ErrorKind> for rdt_status {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NullArgument => rdt_status::RDT_ERR_NULL_ARGUMENT,
            ErrorKind::InvalidArgument => rdt_status::RDT_ERR_INVALID_ARGUMENT,
            ErrorKind::NotFound => rdt_status::RDT_ERR_NOT_FOUND,
            ErrorKind::AlreadyExists => rdt_status::RDT_ERR_ALREADY_EXISTS,
            ErrorKind::Timeout => rdt_status::RDT_ERR_TIMEOUT,
            ErrorKind::MalformedMetadata => rdt_status::RDT_ERR_MALFORMED_METADATA,
            ErrorKind::Unsupported => rdt_status::RDT_ERR_UNSUPPORTED,
            ErrorKind::Transport => rdt_status::RDT_ERR_TRANSPORT,
            ErrorKind::ObjectFailed => rdt_status::RDT_ERR_OBJECT_FAILED,
            ErrorKind::Unavailable => rdt_status::RDT_ERR_UNAVAILABLE,
            ErrorKind::BufferTooSmall => rdt_status::RDT_ERR_BUFFER_TOO_SMALL,
            ErrorKind::Io => rdt_status::RDT_ERR_IO,
            ErrorKind::Internal => rdt_status::RDT_ERR_INTERNAL,
            ErrorKind::AuthRefused => rdt_status::RDT_ERR_AUTH_REFUSED,
            ErrorKind::PeerGone => rdt_status::RDT_ERR_PEER_GONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error kind's code is its status code: one numbering, checked.
    #[test]
    fn status_codes_are_the_error_kinds_codes() {
        for kind in ErrorKind::ALL {
            assert_eq!(
                rdt_status::from(kind) as u32,
                u32::from(kind.code()),
                "{kind:?}"
            );
        }
        assert_eq!(rdt_status::RDT_OK as u32, 0);
    }
}
