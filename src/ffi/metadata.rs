//! Metadata records through the C ABI: decode and inspect a record (for example in
//! a core worker deciding how to resolve an argument).

use super::boundary::{arg, guard, guard_void, out, slice};
use super::context::rdt_buffer;
use super::stats::rdt_transport;
use super::status::rdt_status;
use crate::dlpack::{DLDataType, DLDevice};
use crate::error::{Error, ErrorKind};
use crate::metadata::Metadata;

/// A decoded metadata record (opaque).
pub struct rdt_metadata {
    inner: Metadata,
}

/// One tensor's description inside a metadata record. The pointers stay valid
/// while the record handle lives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rdt_tensor_desc {
    /// Element type.
    pub dtype: DLDataType,
    /// Number of dimensions.
    pub ndim: i32,
    /// Shape, `ndim` entries.
    pub shape: *const i64,
    /// Strides in elements, `ndim` entries.
    pub strides: *const i64,
    /// Packed size in bytes.
    pub nbytes: u64,
}

/// Decodes and validates `len` bytes at `data`; on success writes a new handle to
/// `*out_metadata` (free it with `rdt_metadata_destroy`). Malformed, truncated or
/// oversized input gives `RDT_ERR_MALFORMED_METADATA`.
///
/// # Safety
/// `data` points to `len` readable bytes; `out_metadata` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_decode(
    data: *const u8,
    len: usize,
    out_metadata: *mut *mut rdt_metadata,
) -> rdt_status {
    guard(|| {
        let out = out(out_metadata, "out_metadata")?;
        let inner = Metadata::decode(slice(data, len, "data")?)?;
        *out = Box::into_raw(Box::new(rdt_metadata { inner }));
        Ok(())
    })
}

/// Frees a decoded record. NULL is ignored.
///
/// # Safety
/// `metadata` must come from `rdt_metadata_decode` and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_destroy(metadata: *mut rdt_metadata) {
    guard_void("rdt_metadata_destroy", || {
        if !metadata.is_null() {
            drop(Box::from_raw(metadata));
        }
    })
}

/// Writes the record's transport, device, tensor count and total tensor bytes.
///
/// # Safety
/// `metadata` valid; all outputs valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_summary(
    metadata: *const rdt_metadata,
    out_transport: *mut rdt_transport,
    out_device: *mut DLDevice,
    out_num_tensors: *mut usize,
    out_total_bytes: *mut u64,
) -> rdt_status {
    guard(|| {
        let m = &arg(metadata, "metadata")?.inner;
        *out(out_transport, "out_transport")? = m.transport.code().into();
        *out(out_device, "out_device")? = m.device;
        *out(out_num_tensors, "out_num_tensors")? = m.tensors.len();
        *out(out_total_bytes, "out_total_bytes")? = m.total_bytes();
        Ok(())
    })
}

/// Writes who produced the object: its process ID, and its Ray actor ID
/// (binary; empty for a driver) to `*out_actor_id`.
///
/// # Safety
/// `metadata` valid; outputs valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_producer(
    metadata: *const rdt_metadata,
    out_pid: *mut u32,
    out_actor_id: *mut rdt_buffer,
) -> rdt_status {
    guard(|| {
        let m = &arg(metadata, "metadata")?.inner;
        let pid = out(out_pid, "out_pid")?;
        let actor = out(out_actor_id, "out_actor_id")?;
        *pid = m.producer.pid;
        *actor = rdt_buffer::from_vec(m.producer.actor_id.clone());
        Ok(())
    })
}

/// Writes the description of tensor `index`.
///
/// # Safety
/// `metadata` valid; `out_desc` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_tensor(
    metadata: *const rdt_metadata,
    index: usize,
    out_desc: *mut rdt_tensor_desc,
) -> rdt_status {
    guard(|| {
        let m = &arg(metadata, "metadata")?.inner;
        let desc = out(out_desc, "out_desc")?;
        let t = m.tensors.get(index).ok_or_else(|| out_of_range(index, m))?;
        *desc = rdt_tensor_desc {
            dtype: t.dtype,
            ndim: t.shape.len() as i32,
            shape: t.shape.as_ptr(),
            strides: t.strides.as_ptr(),
            nbytes: t.nbytes,
        };
        Ok(())
    })
}

/// Writes the record's number of extents (the byte ranges its transfers move)
/// and their total length in bytes.
///
/// # Safety
/// `metadata` valid; outputs valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_extents(
    metadata: *const rdt_metadata,
    out_num_extents: *mut usize,
    out_extent_bytes: *mut u64,
) -> rdt_status {
    guard(|| {
        let m = &arg(metadata, "metadata")?.inner;
        *out(out_num_extents, "out_num_extents")? = m.extents.len();
        *out(out_extent_bytes, "out_extent_bytes")? = m.extent_bytes();
        Ok(())
    })
}

/// Writes where tensor `index` is: the extent holding it and the byte offset
/// of its first element there. A tensor of no bytes has no place:
/// `*out_extent` is `UINT32_MAX` and `*out_offset` 0.
///
/// # Safety
/// `metadata` valid; outputs valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_metadata_place(
    metadata: *const rdt_metadata,
    index: usize,
    out_extent: *mut u32,
    out_offset: *mut u64,
) -> rdt_status {
    guard(|| {
        let m = &arg(metadata, "metadata")?.inner;
        let place = m.places.get(index).ok_or_else(|| out_of_range(index, m))?;
        let (extent, offset) = place.map_or((u32::MAX, 0), |p| (p.extent, p.offset));
        *out(out_extent, "out_extent")? = extent;
        *out(out_offset, "out_offset")? = offset;
        Ok(())
    })
}

/// The error for a tensor index past the record's tensors.
fn out_of_range(index: usize, m: &Metadata) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!(
            "tensor index {index} out of range ({} tensors)",
            m.tensors.len()
        ),
    )
}
