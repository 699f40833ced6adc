//! ray-rdt: the data plane of Ray Direct Transport as a Rust library.
//!
//! The crate keeps RDT objects (tensors that stay in the producing process), moves
//! them between processes over real transports, and gives Ray a compact metadata
//! record to store instead of the tensor bytes. Everything a C or C++ caller uses is
//! in [`ffi`] and in the generated `include/ray_rdt.h`; [`dlpack`] holds the DLPack
//! types the C ABI names.
//!
//! Layers: [`ffi`] (C ABI) over a private core (object store, tensors, metadata
//! codec, stats) over the transports. Nothing of the core is a public Rust API; the
//! hidden `testing` module is the surface the crate's own integration tests and
//! benchmarks use.

#![warn(missing_docs)]

mod block_cache;
mod copy;
#[cfg(feature = "cuda")]
mod cuda;
pub mod dlpack;
mod dylib;
mod endpoint;
mod engine;
mod error;
pub mod ffi;
mod hold;
mod host_buffer;
mod layout;
mod logging;
mod metadata;
mod object_id;
mod rendezvous;
mod settings;
mod stats;
mod store;
mod stream_copy;
mod tensor;
#[doc(hidden)]
pub mod testing;
mod transport;
mod transport_kind;

pub(crate) use error::{Error, ErrorKind, Result};

/// Every allocation of the plugin: the system allocator, with large blocks
/// kept for reuse (see `block_cache`).
#[global_allocator]
static ALLOCATOR: block_cache::BlockCache = block_cache::BlockCache::new();
