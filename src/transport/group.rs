//! Collective groups of two-sided transports (gloo now, nccl next): what the
//! engine and the C ABI's group functions call, whatever the backend.
//!
//! A process joins a group by name, as one rank of a fixed size, through a
//! rendezvous store served by rank 0's process ([`crate::rendezvous`]). A
//! member's group is *joined* until a system error *breaks* it (every later
//! transfer on it fails and says so) or it is *destroyed* (left); a destroyed
//! group can be created again under the same name.

// Most of what follows serves the two-sided transports (gloo, and nccl with
// it): unused in a build without them.
#![cfg_attr(not(feature = "gloo"), allow(dead_code))]

use crate::endpoint::Contact;
use crate::error::{Error, ErrorKind, Result};
use crate::object_id::{ObjectId, OBJECT_ID_LEN};
use crate::transport_kind::TransportKind;
use std::time::Duration;

/// The error of joining group `name` a second time in one process.
pub fn already_in_group(name: &str) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        format!("this process is already in collective group {name:?}"),
    )
}

/// A rendezvous store through which the ranks of a group meet (rank 0
/// publishes what the others wait for): the plugin's own interface, whatever
/// serves it ([`crate::rendezvous`]).
pub trait RendezvousStore: Send + Sync {
    /// Stores `value` under `key`, replacing any previous value.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;

    /// The value of `key`, waiting up to `timeout` for it to be set (a key
    /// still missing then is an [`ErrorKind::Timeout`] error).
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>>;
}

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
    pub store: &'a dyn RendezvousStore,
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

/// Whether `e` is a system error of a transfer (which breaks the group): not a
/// refusal (unknown object or group, bad request: the group stays usable).
pub fn is_system_error(e: &Error) -> bool {
    use crate::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::Io | ErrorKind::PeerGone
    )
}

/// Passes `result` on; a system error first breaks group `name` of `groups`
/// (after a transfer of `object` from rank `src` to rank `dst`) and reports it.
pub fn break_on_system_error<T, G: CollectiveGroups + ?Sized>(
    groups: &G,
    local: &super::Local<'_>,
    name: &str,
    object: &ObjectId,
    (src, dst): (usize, usize),
    result: Result<T>,
) -> Result<T> {
    if let Err(e) = &result {
        if is_system_error(e) {
            groups.break_group(local, name, object, Some((src, dst)), e);
        }
    }
    result
}

/// The refusal of a transfer on group `name`, which a system error broke
/// (`reason`, as the transport gave it).
pub fn broken_group(name: &str, reason: &str) -> Error {
    Error::transport(format!(
        "collective group {name:?} was destroyed by a system error ({reason}); destroy it and create it again"
    ))
}

/// A member's reports to its group's owner: at most one per group (the first
/// failure breaks the group; later ones are consequences).
pub struct OwnerReport {
    owner: Option<Contact>,
    reported: std::sync::atomic::AtomicBool,
}

impl OwnerReport {
    /// Reports to `owner` (none: to nobody).
    pub fn new(owner: Option<&Contact>) -> OwnerReport {
        OwnerReport {
            owner: owner.cloned(),
            reported: Default::default(),
        }
    }

    /// Whether there is nothing (more) to report: a failure was reported, or
    /// the group has no owner to report to.
    pub fn done(&self) -> bool {
        self.owner.is_none() || self.reported.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends `failure` to the owner through `local`, if this is the first.
    pub fn report(&self, local: &super::Local<'_>, failure: GroupFailure) {
        use std::sync::atomic::Ordering;
        if let Some(owner) = &self.owner {
            if !self.reported.swap(true, Ordering::AcqRel) {
                local.failures.report(owner, &failure);
            }
        }
    }
}

/// The collective groups of one two-sided transport in this process.
pub trait CollectiveGroups: Send + Sync {
    /// Breaks group `name` in this process after system error `cause` while
    /// moving `object` from rank `src` to rank `dst` (`None`: this rank, e.g.
    /// a tensor on a device the transport does not move), and reports it to
    /// the group's owner. Unknown groups are ignored.
    fn break_group(
        &self,
        local: &super::Local<'_>,
        name: &str,
        object: &ObjectId,
        ranks: Option<(usize, usize)>,
        cause: &Error,
    );

    /// Breaks and reports to their owners the groups whose transport noticed,
    /// outside any transfer, that a peer is gone (each group once; see
    /// `engine::group_watch`). The report names no object and this rank as
    /// both ends: the owner finds the dead member itself. Transports that
    /// cannot notice do nothing.
    fn report_broken(&self, _local: &super::Local<'_>) {}

    /// Joins group `spec.name`; blocks until every rank joined or the timeout passed.
    fn create_group(&self, spec: &GroupSpec<'_>) -> Result<()>;

    /// Leaves group `name`: aborts its pending transfers and closes its connections.
    fn destroy_group(&self, name: &str) -> Result<()>;

    /// Names of the groups this process is in.
    fn group_names(&self) -> Vec<String>;
}

/// Encodes the transport data of a record of a two-sided transport: the
/// producer's rank and the group's name.
pub fn encode_location(rank: usize, group: &str) -> Vec<u8> {
    let mut out = (rank as u32).to_le_bytes().to_vec();
    out.extend_from_slice(group.as_bytes());
    out
}

/// Decodes [`encode_location`]'s bytes (`transport` names it in errors).
pub fn decode_location<'a>(data: &'a [u8], transport: &str) -> Result<(usize, &'a str)> {
    if data.len() < 4 {
        return Err(Error::malformed(format!(
            "{transport} transport data is truncated"
        )));
    }
    let (rank, name) = data.split_at(4);
    let name = std::str::from_utf8(name)
        .map_err(|_| Error::malformed(format!("{transport} group name is not UTF-8")))?;
    Ok((
        u32::from_le_bytes(rank.try_into().expect("4 bytes")) as usize,
        name,
    ))
}

/// The transport-specific part of a fetch request of a two-sided transport:
/// the consumer asks the producer to send an object to its rank.
pub struct PullRequest<'a> {
    /// Message tag the transfer uses (gloo's slot; unused by nccl).
    pub slot: u64,
    /// The consumer's rank in the group.
    pub consumer_rank: usize,
    /// How long the producer may take.
    pub timeout: Duration,
    /// The group's name.
    pub group: &'a str,
}

impl<'a> PullRequest<'a> {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.group.len());
        out.extend_from_slice(&self.slot.to_le_bytes());
        out.extend_from_slice(&(self.consumer_rank as u32).to_le_bytes());
        out.extend_from_slice(
            &(self.timeout.as_millis().min(u64::MAX as u128) as u64).to_le_bytes(),
        );
        out.extend_from_slice(self.group.as_bytes());
        out
    }

    /// Parses [`PullRequest::encode`]'s bytes.
    pub fn decode(body: &'a [u8]) -> Result<Self> {
        if body.len() < 20 {
            return Err(Error::transport("send request is truncated"));
        }
        let slot = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let consumer_rank = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
        let timeout = Duration::from_millis(u64::from_le_bytes(
            body[12..20].try_into().expect("8 bytes"),
        ));
        let group = std::str::from_utf8(&body[20..])
            .map_err(|_| Error::transport("group name is not UTF-8"))?;
        Ok(PullRequest {
            slot,
            consumer_rank,
            timeout,
            group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_and_request_round_trip() {
        let data = encode_location(3, "g");
        assert_eq!(decode_location(&data, "nccl").unwrap(), (3, "g"));
        assert!(decode_location(&data[..3], "nccl").is_err());
        let req = PullRequest {
            slot: 9,
            consumer_rank: 1,
            timeout: Duration::from_millis(1500),
            group: "grp",
        };
        let bytes = req.encode();
        let back = PullRequest::decode(&bytes).unwrap();
        assert_eq!(
            (back.slot, back.consumer_rank, back.timeout, back.group),
            (9, 1, Duration::from_millis(1500), "grp")
        );
        assert!(PullRequest::decode(&bytes[..19]).is_err());
    }
}
