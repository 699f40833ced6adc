//! Collective groups of two-sided transports (gloo now, nccl next): what the
//! engine and the C ABI's group functions call, whatever the backend.
//!
//! A process joins a group by name, as one rank of a fixed size, through a
//! rendezvous store served by rank 0's process ([`crate::rendezvous`]). A
//! member's group is *joined* until a system error *breaks* it (every later
//! transfer on it fails and says so) or it is *destroyed* (left); a destroyed
//! group can be created again under the same name.

use crate::endpoint::Contact;
use crate::error::{Error, Result};
use crate::object_id::{ObjectId, OBJECT_ID_LEN};
use crate::transport_kind::TransportKind;
use std::time::Duration;

/// What it takes to join a group.
#[derive(Clone, Copy)]
pub struct GroupSpec<'a> {
    /// The group's name, the same on every rank.
    pub name: &'a str,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// The rendezvous store every rank joins through.
    pub store: &'a dyn gloo_sys::Store,
    /// The store's address (a local address that routes there is what this
    /// host advertises when the node's IP is not known).
    pub store_addr: std::net::SocketAddr,
    /// The address this host binds and advertises for the group's
    /// connections (the node's IP), if known.
    pub local_ip: Option<&'a str>,
    /// Bound on joining.
    pub timeout: Duration,
    /// The group's owner (the process that created it in Ray), to which this
    /// member reports failed transfers; `None`: nobody is told.
    pub owner: Option<&'a Contact>,
}

/// A transfer in a collective group that failed with a system error (which
/// breaks the group), as a member reports it to the group's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFailure {
    /// The group's transport.
    pub transport: TransportKind,
    /// The group's name.
    pub group: String,
    /// The object being moved.
    pub object: ObjectId,
    /// The producer's rank.
    pub src_rank: u32,
    /// The consumer's rank.
    pub dst_rank: u32,
    /// The reporting member's rank.
    pub reporter_rank: u32,
    /// What failed.
    pub cause: String,
}

impl GroupFailure {
    /// Wire form: transport u8 | object 28 bytes | src, dst, reporter ranks u32
    /// | group (u16 length + UTF-8) | cause (UTF-8, the rest).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.transport.code()];
        out.extend_from_slice(self.object.as_bytes());
        for r in [self.src_rank, self.dst_rank, self.reporter_rank] {
            out.extend_from_slice(&r.to_le_bytes());
        }
        let name = &self.group.as_bytes()[..self.group.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(self.cause.as_bytes());
        out
    }

    /// Inverse of [`GroupFailure::encode`].
    pub fn decode(bytes: &[u8]) -> Result<GroupFailure> {
        let bad = || Error::transport("malformed group failure report");
        let (&transport, rest) = bytes.split_first().ok_or_else(bad)?;
        if rest.len() < OBJECT_ID_LEN + 14 {
            return Err(bad());
        }
        let (object, rest) = rest.split_at(OBJECT_ID_LEN);
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let name_len = u16::from_le_bytes([rest[12], rest[13]]) as usize;
        let rest_of = &rest[14..];
        if rest_of.len() < name_len {
            return Err(bad());
        }
        let (name, cause) = rest_of.split_at(name_len);
        Ok(GroupFailure {
            transport: TransportKind::from_code(transport.into())?,
            object: ObjectId::from_slice(object)?,
            src_rank: u32_at(0),
            dst_rank: u32_at(4),
            reporter_rank: u32_at(8),
            group: String::from_utf8(name.to_vec()).map_err(|_| bad())?,
            cause: String::from_utf8_lossy(cause).into_owned(),
        })
    }
}

/// Where a transport reports a failed transfer (the engine sends it to the
/// group's owner before the failing call returns).
pub trait FailureSink: Send + Sync {
    /// Reports `failure` to `owner` (best effort, bounded in time).
    fn report(&self, owner: &Contact, failure: &GroupFailure);
}

/// The collective groups of one two-sided transport in this process.
pub trait CollectiveGroups: Send + Sync {
    /// Joins group `spec.name`; blocks until every rank joined or the timeout passed.
    fn create_group(&self, spec: &GroupSpec<'_>) -> Result<()>;

    /// Leaves group `name`: aborts its pending transfers and closes its connections.
    fn destroy_group(&self, name: &str) -> Result<()>;

    /// Names of the groups this process is in.
    fn group_names(&self) -> Vec<String>;
}
