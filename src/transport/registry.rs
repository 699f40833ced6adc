//! The transports of one context, found by kind.
//!
//! The one list of built-in backends lives in [`Registry::builtin`]; the
//! engine and the C ABI look transports up by [`TransportKind`] and never name
//! a backend.

#[cfg(feature = "nixl")]
pub use super::nixl::stats as nixl_stats;
use super::{shm::Shm, CollectiveGroups, Transport};
use crate::error::{Error, ErrorKind, Result};
use crate::transport_kind::TransportKind;

/// What this process holds in NIXL: nothing in a build without nixl.
#[cfg(not(feature = "nixl"))]
pub fn nixl_stats() -> crate::stats::NixlStats {
    crate::stats::NixlStats::default()
}

/// A context's transports.
pub struct Registry {
    transports: Vec<Box<dyn Transport>>,
}

impl Registry {
    /// Every transport built into this plugin (shm always; the others with
    /// their Cargo features).
    pub fn builtin() -> Registry {
        #[allow(unused_mut)] // shm alone in a build without the other features
        let mut transports: Vec<Box<dyn Transport>> = vec![Box::new(Shm::default())];
        #[cfg(feature = "gloo")]
        transports.push(Box::new(super::gloo::Gloo::default()));
        #[cfg(feature = "nixl")]
        transports.push(Box::new(super::nixl::Nixl::default()));
        #[cfg(feature = "cuda")]
        transports.push(Box::new(super::nccl::Nccl::default()));
        #[cfg(feature = "cuda")]
        transports.push(Box::new(super::cuda_ipc::CudaIpc::default()));
        Registry { transports }
    }

    /// The transport of `kind`, or [`ErrorKind::Unavailable`] when this build
    /// has none.
    pub fn get(&self, kind: TransportKind) -> Result<&dyn Transport> {
        self.transports
            .iter()
            .find(|t| t.kind() == kind)
            .map(|t| t.as_ref())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the {} transport is not available in this build of the plugin",
                        kind.name()
                    ),
                )
            })
    }

    /// The collective groups of `kind`, or [`ErrorKind::Unsupported`] for a
    /// transport without groups.
    pub fn groups(&self, kind: TransportKind) -> Result<&dyn CollectiveGroups> {
        self.get(kind)?.groups().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {} transport has no collective groups in this plugin",
                    kind.name()
                ),
            )
        })
    }

    /// The transport that is the same-host path (see
    /// [`Transport::is_same_host_path`]), if this build has one.
    pub fn same_host_path(&self) -> Option<&dyn Transport> {
        self.iter().find(|t| t.is_same_host_path())
    }

    /// Every transport.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Transport> {
        self.transports.iter().map(|t| t.as_ref())
    }
}
