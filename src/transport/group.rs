//! Collective groups of two-sided transports (gloo now, nccl next): what the
//! engine and the C ABI's group functions call, whatever the backend.
//!
//! A process joins a group by name, as one rank of a fixed size, through a
//! rendezvous store served by rank 0's process ([`crate::rendezvous`]). A
//! member's group is *joined* until a system error *breaks* it (every later
//! transfer on it fails and says so) or it is *destroyed* (left); a destroyed
//! group can be created again under the same name.

use crate::error::Result;
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
