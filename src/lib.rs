//! ray-rdt: the data plane of Ray Direct Transport as a Rust library.
//!
//! The crate keeps RDT objects (tensors that stay in the producing process), moves
//! them between processes over real transports, and gives Ray a compact metadata
//! record to store instead of the tensor bytes. Everything a C or C++ caller uses is
//! in [`ffi`] and in the generated `include/ray_rdt.h`.
//!
//! Layers: [`ffi`] (C ABI) over the core ([`store`], [`tensor`], [`metadata`],
//! [`stats`]) over the transports.

#![warn(missing_docs)]

pub mod cuda;
pub mod dlpack;
pub mod dylib;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod hold;
pub mod host_buffer;
mod logging;
pub mod metadata;
pub mod object_id;
pub mod rendezvous;
mod settings;
pub mod stats;
pub mod store;
pub mod tensor;
pub mod transport;
pub mod transport_kind;

pub use error::{Error, ErrorKind, Result};
pub use metadata::{Metadata, Producer};
pub use object_id::ObjectId;
pub use store::{CopyKind, ObjectStore};
pub use tensor::{Tensor, TensorMeta};
pub use transport_kind::TransportKind;
