//! DLPack tensor ABI, defined here per the DLPack specification (dlpack.h, v1.1,
//! and v1.2's C exchange API table).
//!
//! These are the exact C layouts; they appear unchanged in `include/ray_rdt.h` so
//! that C++ callers, torch, numpy, cupy and jax can all hand tensors to the plugin.
//! Enumerations that arrive from C are plain integers (with named constants) so that
//! an unknown value is an error we report, not undefined behaviour.
#![allow(non_upper_case_globals)]

use std::os::raw::c_void;

/// DLPack major version implemented here.
pub const DLPACK_MAJOR_VERSION: u32 = 1;
/// DLPack minor version implemented here.
pub const DLPACK_MINOR_VERSION: u32 = 1;

/// The device type of a tensor (`DLDeviceType` in dlpack.h).
pub type DLDeviceType = i32;
/// CPU memory.
pub const kDLCPU: DLDeviceType = 1;
/// CUDA device memory.
pub const kDLCUDA: DLDeviceType = 2;
/// Pinned host memory allocated with cudaMallocHost.
pub const kDLCUDAHost: DLDeviceType = 3;
/// CUDA managed (unified) memory.
pub const kDLCUDAManaged: DLDeviceType = 13;

/// The type code of a tensor element (`DLDataTypeCode` in dlpack.h).
pub type DLDataTypeCode = u8;
/// Signed integer.
pub const kDLInt: DLDataTypeCode = 0;
/// Unsigned integer.
pub const kDLUInt: DLDataTypeCode = 1;
/// IEEE floating point.
pub const kDLFloat: DLDataTypeCode = 2;
/// Opaque handle (not transferable).
pub const kDLOpaqueHandle: DLDataTypeCode = 3;
/// bfloat16.
pub const kDLBfloat: DLDataTypeCode = 4;
/// Complex number (two floats).
pub const kDLComplex: DLDataTypeCode = 5;
/// Boolean.
pub const kDLBool: DLDataTypeCode = 6;
/// Highest 8-bit float code DLPack 1.1 defines (`kDLFloat8_e3m4` .. `kDLFloat4_e2m1fn`).
pub const kDLFloat4_e2m1fn: DLDataTypeCode = 17;

/// A device: type and ordinal (`DLDevice`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DLDevice {
    /// The device type (`kDLCPU`, `kDLCUDA`, ...).
    pub device_type: DLDeviceType,
    /// The device ordinal; 0 for CPU.
    pub device_id: i32,
}

impl DLDevice {
    /// Host memory: `{ kDLCPU, 0 }`.
    pub const fn cpu() -> DLDevice {
        DLDevice {
            device_type: kDLCPU,
            device_id: 0,
        }
    }
}

/// An element type (`DLDataType`): code, bits per lane and lanes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DLDataType {
    /// The type code (`kDLFloat`, `kDLInt`, ...).
    pub code: u8,
    /// Bits per lane (8, 16, 32, 64, ...).
    pub bits: u8,
    /// Number of lanes; 1 for scalars.
    pub lanes: u16,
}

/// A view of a tensor in memory (`DLTensor`). Not owning.
#[repr(C)]
#[derive(Debug)]
pub struct DLTensor {
    /// Opaque data pointer; the tensor's first element is at `data + byte_offset`.
    pub data: *mut c_void,
    /// The device holding the data.
    pub device: DLDevice,
    /// Number of dimensions.
    pub ndim: i32,
    /// The element type.
    pub dtype: DLDataType,
    /// Shape, `ndim` entries.
    pub shape: *mut i64,
    /// Strides in elements, `ndim` entries, or NULL for a compact row-major tensor.
    pub strides: *mut i64,
    /// Offset in bytes from `data` to the first element.
    pub byte_offset: u64,
}

/// A tensor with its owner's deleter (`DLManagedTensor`, the unversioned form).
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensor {
    /// The tensor view.
    pub dl_tensor: DLTensor,
    /// The producer's context, for its deleter.
    pub manager_ctx: *mut c_void,
    /// Releases the tensor; called exactly once by the consumer, or NULL.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// A DLPack ABI version (`DLPackVersion`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLPackVersion {
    /// Major version; a consumer refuses a different major.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// Flag bit: the tensor is read only (`DLPACK_FLAG_BITMASK_READ_ONLY`).
pub const DLPACK_FLAG_BITMASK_READ_ONLY: u64 = 1;
/// Flag bit: the tensor was copied (`DLPACK_FLAG_BITMASK_IS_COPIED`).
pub const DLPACK_FLAG_BITMASK_IS_COPIED: u64 = 2;

/// A tensor with its owner's deleter, versioned form (`DLManagedTensorVersioned`).
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensorVersioned {
    /// The DLPack version the producer implements.
    pub version: DLPackVersion,
    /// The producer's context, for its deleter.
    pub manager_ctx: *mut c_void,
    /// Releases the tensor; called exactly once by the consumer, or NULL.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    /// `DLPACK_FLAG_BITMASK_*` bits.
    pub flags: u64,
    /// The tensor view.
    pub dl_tensor: DLTensor,
}

/// The fixed head of a framework's exchange API table (`DLPackExchangeAPIHeader`,
/// DLPack 1.2): its version, and an older table or NULL.
#[repr(C)]
#[derive(Debug)]
pub struct DLPackExchangeAPIHeader {
    /// The DLPack version of the table; a consumer checks the major.
    pub version: DLPackVersion,
    /// A table of an older version, or NULL.
    pub prev_api: *const DLPackExchangeAPIHeader,
}

/// A framework's C functions for DLPack exchange without Python calls
/// (`DLPackExchangeAPI`, DLPack 1.2), published as a PyCapsule named
/// `"dlpack_exchange_api"` in the tensor type's `__dlpack_c_exchange_api__`.
/// Each function returns 0, or non-zero with a Python error set; the GIL must
/// be held.
#[repr(C)]
#[derive(Debug)]
pub struct DLPackExchangeAPI {
    /// Version and chain.
    pub header: DLPackExchangeAPIHeader,
    /// Allocates a tensor in the framework (not used by the plugin).
    pub managed_tensor_allocator: *const c_void,
    /// Exports a framework tensor (`PyObject*`) as an owning
    /// `DLManagedTensorVersioned` (no stream synchronization).
    pub managed_tensor_from_py_object_no_sync:
        Option<unsafe extern "C" fn(*mut c_void, *mut *mut DLManagedTensorVersioned) -> i32>,
    /// Imports an owning `DLManagedTensorVersioned` as a framework tensor
    /// (`PyObject*`, a new reference); takes the tensor.
    pub managed_tensor_to_py_object_no_sync:
        Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned, *mut *mut c_void) -> i32>,
    /// Fills a non-owning `DLTensor` describing a framework tensor
    /// (`PyObject*`), valid while the tensor lives unchanged (no allocation,
    /// nothing to release).
    pub dltensor_from_py_object_no_sync:
        Option<unsafe extern "C" fn(*mut c_void, *mut DLTensor) -> i32>,
    /// The framework's current stream of a device (not used by the plugin).
    pub current_work_stream: *const c_void,
}
