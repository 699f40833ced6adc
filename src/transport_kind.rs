//! The transports the plugin knows, by name and wire code.

use crate::error::{Error, Result};
use crate::ffi::stats as codes;

/// A tensor transport. The discriminant is the wire code used in metadata records
/// and the C ABI: its `RDT_TRANSPORT_*` (the one numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransportKind {
    /// Gloo collective group, CPU tensors.
    Gloo = codes::RDT_TRANSPORT_GLOO as u8,
    /// NCCL collective group, CUDA tensors.
    Nccl = codes::RDT_TRANSPORT_NCCL as u8,
    /// NIXL one-sided reads, CPU or CUDA tensors.
    Nixl = codes::RDT_TRANSPORT_NIXL as u8,
    /// CUDA IPC handles, same node.
    CudaIpc = codes::RDT_TRANSPORT_CUDA_IPC as u8,
    /// Shared memory, same host, CPU tensors.
    Shm = codes::RDT_TRANSPORT_SHM as u8,
}

impl TransportKind {
    /// Every transport, in wire-code order.
    pub const ALL: [TransportKind; 5] = [
        TransportKind::Gloo,
        TransportKind::Nccl,
        TransportKind::Nixl,
        TransportKind::CudaIpc,
        TransportKind::Shm,
    ];

    /// Parses a wire code.
    pub fn from_code(code: u32) -> Result<Self> {
        Self::ALL
            .get(code as usize)
            .copied()
            .ok_or_else(|| Error::invalid(format!("unknown transport code {code}")))
    }

    /// Parses a lower-case name (`"gloo"`, `"shm"`, ...).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| Error::invalid(format!("unknown transport {name:?}")))
    }

    /// The lower-case name, as `ray_rdt.stats()` keys it.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Gloo => "gloo",
            TransportKind::Nccl => "nccl",
            TransportKind::Nixl => "nixl",
            TransportKind::CudaIpc => "cuda_ipc",
            TransportKind::Shm => "shm",
        }
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
}
