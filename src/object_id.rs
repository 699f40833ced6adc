//! Ray's binary ObjectID: the key of every RDT object.

use crate::error::{Error, Result};
use std::fmt;

/// Length of Ray's binary ObjectID in bytes.
pub const OBJECT_ID_LEN: usize = 28;

/// A Ray ObjectID in its 28-byte binary form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// Parses the binary form; the slice must be exactly 28 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; OBJECT_ID_LEN] = bytes.try_into().map_err(|_| {
            Error::invalid(format!(
                "an ObjectID is {OBJECT_ID_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(ObjectId(arr))
    }

    /// The binary form.
    pub fn as_bytes(&self) -> &[u8; OBJECT_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}
