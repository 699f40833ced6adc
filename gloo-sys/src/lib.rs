//! Bindings to the system Gloo library (Debian `libgloo-dev`) for ray-rdt's
//! `gloo` transport.
//!
//! Two layers:
//! - [`ffi`]: the raw C API of the crate's C++ shim (`shim/gloo_shim.h`),
//!   which wraps Gloo so that no C++ exception crosses into Rust;
//! - a safe layer: [`Context`] (a connected full-mesh group with tagged
//!   [`send`](Context::send)/[`recv`](Context::recv), posted operations,
//!   [`abort`](Context::abort) and a broken state), the rendezvous [`Store`]
//!   trait with [`TcpStoreServer`]/[`TcpStoreClient`] and [`CallbackStore`],
//!   and [`GlooError`].
//!
//! ```no_run
//! use std::time::Duration;
//! use gloo_sys::{Context, ContextOptions, TcpStoreClient, TcpStoreServer};
//!
//! # fn main() -> Result<(), gloo_sys::GlooError> {
//! let opts = ContextOptions { hostname: Some("127.0.0.1".into()), ..Default::default() };
//! // Rank 0 serves the store (its address goes to the other ranks out of band):
//! let server = TcpStoreServer::bind("127.0.0.1:29500")?;
//! let ctx = Context::connect(0, 2, &server, "group-a/0", &opts)?;
//! ctx.send(1, 7, b"hello", Duration::from_secs(10))?;
//! # Ok(()) }
//! # fn rank1() -> Result<(), gloo_sys::GlooError> {
//! # let opts = ContextOptions::default();
//! // Rank 1:
//! let store = TcpStoreClient::connect("127.0.0.1:29500", Duration::from_secs(30))?;
//! let ctx = Context::connect(1, 2, &store, "group-a/0", &opts)?;
//! let mut buf = [0u8; 5];
//! ctx.recv(0, 7, &mut buf, Duration::from_secs(10))?;
//! # Ok(()) }
//! ```
//!
//! Creating the first context sets the process's SIGPIPE disposition to
//! "ignore" if it is still the default (Gloo writes to sockets without
//! `MSG_NOSIGNAL`, so a dead peer would otherwise kill the process). Gloo
//! starts a network thread per context: do not `fork` (without `exec`) while
//! a context exists.

#![warn(missing_docs)]

mod context;
mod error;
pub mod ffi;
mod store;
mod tcp_store;
mod timeout;

pub use context::{Context, ContextOptions, PendingOp};
pub use error::{ErrorKind, GlooError};
pub use store::{CallbackStore, Store};
pub use tcp_store::{
    TcpStoreClient, TcpStoreServer, IO_TIMEOUT, MAX_CONNECTIONS, MAX_KEY_LEN, MAX_VALUE_LEN,
};
