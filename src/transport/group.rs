//! Collective groups of two-sided transports (gloo now, nccl next): what the
//! engine and the C ABI's group functions call, whatever the backend.
//!
//! A process joins a group by name, as one rank of a fixed size, through a
//! rendezvous store served by rank 0's process ([`crate::rendezvous`]). A
//! member's group is *joined* until a system error *breaks* it (every later
//! transfer on it fails and says so) or it is *destroyed* (left); a destroyed
//! group can be created again under the same name.

use crate::error::{Error, Result};
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
