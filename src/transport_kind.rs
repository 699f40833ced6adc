//! The transports the plugin knows, by name and wire code.

use crate::error::{Error, Result};

/// A tensor transport. The discriminant is the wire code used in metadata records
/// and the C ABI (`RDT_TRANSPORT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransportKind {
    /// Gloo collective group, CPU tensors.
    Gloo = 0,
    /// NCCL collective group, CUDA tensors.
    Nccl = 1,
    /// NIXL one-sided reads, CPU or CUDA tensors.
    Nixl = 2,
    /// CUDA IPC handles, same node.
    CudaIpc = 3,
    /// Shared memory, same host, CPU tensors.
    Shm = 4,
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
