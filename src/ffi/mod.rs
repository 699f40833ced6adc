//! The C ABI: the only `extern "C"` code in the crate.
//!
//! Rules (as in rustls-ffi): every function returns an [`rdt_status`] (or a plain
//! value that cannot fail); failures leave a message for [`rdt_last_error`]; no
//! panic crosses the boundary; handles are opaque with create/destroy pairs; every
//! pointer argument is NULL-checked; tensors cross as DLPack.
//!
//! One handle family: a process's [`context::rdt_context`] and the object
//! store it holds (ABI 2.0 removed the separate `rdt_store_*` handles).
#![allow(non_camel_case_types)]

pub(crate) mod boundary;
pub mod capsule;
pub mod context;
pub mod cuda;
pub mod exchange;
pub mod group;
pub mod list;
pub mod metadata;
mod python;
pub mod shared_memory;
pub mod stats;
pub mod status;

pub use status::rdt_status;
use std::ffi::c_char;

/// Major version of the C ABI; a loader refuses a library with another major.
pub const RDT_ABI_VERSION_MAJOR: u32 = 2;
/// Minor version of the C ABI; grows when functions or codes are added (2.2:
/// `RDT_PATH_NODE_COPY`; 2.3: the `rdt_capsules_*` helpers of the Python binding;
/// 2.4: `rdt_shared_memory_new`; 2.5: `rdt_tensors_export` and
/// `rdt_tensors_release`, DLPack's C exchange API in bulk; 2.6:
/// `rdt_tensors_view` and `rdt_list_distinct`).
pub const RDT_ABI_VERSION_MINOR: u32 = 6;

/// The C ABI version of this library: `(major << 16) | minor`.
#[no_mangle]
pub extern "C" fn rdt_abi_version() -> u32 {
    boundary::guard_plain("rdt_abi_version", 0, || {
        (RDT_ABI_VERSION_MAJOR << 16) | RDT_ABI_VERSION_MINOR
    })
}

/// The message of the last failed call on the calling thread, NUL-terminated
/// (empty if none). The pointer stays valid until the next failing call on this
/// thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn rdt_last_error() -> *const c_char {
    boundary::guard_plain("rdt_last_error", c"".as_ptr(), boundary::last_error_ptr)
}
