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

/// The name of `status` (`"RDT_OK"`, `"RDT_ERR_TIMEOUT"`, ...), a static
/// NUL-terminated string; NULL for a value no status has.
#[no_mangle]
pub extern "C" fn rdt_status_name(status: u32) -> *const std::ffi::c_char {
    super::boundary::guard_plain("rdt_status_name", std::ptr::null(), || {
        let kind = u8::try_from(status).ok().and_then(ErrorKind::from_code);
        match (status, kind) {
            (0, _) => c"RDT_OK".as_ptr(),
            (_, Some(kind)) => match kind {
                ErrorKind::NullArgument => c"RDT_ERR_NULL_ARGUMENT",
                ErrorKind::InvalidArgument => c"RDT_ERR_INVALID_ARGUMENT",
                ErrorKind::NotFound => c"RDT_ERR_NOT_FOUND",
                ErrorKind::AlreadyExists => c"RDT_ERR_ALREADY_EXISTS",
                ErrorKind::Timeout => c"RDT_ERR_TIMEOUT",
                ErrorKind::MalformedMetadata => c"RDT_ERR_MALFORMED_METADATA",
                ErrorKind::Unsupported => c"RDT_ERR_UNSUPPORTED",
                ErrorKind::Transport => c"RDT_ERR_TRANSPORT",
                ErrorKind::ObjectFailed => c"RDT_ERR_OBJECT_FAILED",
                ErrorKind::Unavailable => c"RDT_ERR_UNAVAILABLE",
                ErrorKind::BufferTooSmall => c"RDT_ERR_BUFFER_TOO_SMALL",
                ErrorKind::Io => c"RDT_ERR_IO",
                ErrorKind::Internal => c"RDT_ERR_INTERNAL",
                ErrorKind::AuthRefused => c"RDT_ERR_AUTH_REFUSED",
                ErrorKind::PeerGone => c"RDT_ERR_PEER_GONE",
            }
            .as_ptr(),
            (_, None) => std::ptr::null(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_status_has_its_name_and_nothing_else_has_one() {
        let name = |s: u32| {
            let p = rdt_status_name(s);
            // SAFETY: a static C string or NULL.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned())
        };
        assert_eq!(name(0).as_deref(), Some("RDT_OK"));
        for kind in ErrorKind::ALL {
            let status = rdt_status::from(kind);
            // The variant's own name, as cbindgen writes it into the header.
            assert_eq!(name(status as u32), Some(format!("{status:?}")), "{kind:?}");
        }
        assert_eq!(name(ErrorKind::ALL.len() as u32 + 1), None);
        assert_eq!(name(u32::MAX), None);
    }
}
