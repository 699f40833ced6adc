//! The transports of one context, found by kind.
//!
//! The one list of built-in backends lives in [`Registry::builtin`]; the
//! engine and the C ABI look transports up by [`TransportKind`] and never name
//! a backend.

use super::{gloo::Gloo, nixl::Nixl, shm::Shm, CollectiveGroups, Transport};
use crate::error::{Error, ErrorKind, Result};
use crate::transport_kind::TransportKind;

/// A context's transports.
pub struct Registry {
    transports: Vec<Box<dyn Transport>>,
}

impl Registry {
    /// Every transport built into this plugin.
    pub fn builtin() -> Registry {
        Registry {
            transports: vec![
                Box::new(Shm::default()),
                Box::new(Gloo::default()),
                Box::new(Nixl::default()),
            ],
        }
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

    /// Every transport.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Transport> {
        self.transports.iter().map(|t| t.as_ref())
    }
}
