//! This process's host identity: what decides whether a peer is on the same
//! host (and can be reached over the same-host channel) — not Ray's node ID,
//! since several Ray nodes can share one host.
//!
//! The identity is the kernel's boot ID plus the network namespace: two
//! processes with the same boot ID run on one kernel, and only processes in one
//! network namespace can reach each other's abstract Unix sockets.

use std::os::unix::fs::MetadataExt;

/// `"<boot id>/net:<namespace inode>"`; empty if the kernel does not say.
pub fn identity() -> Vec<u8> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let net = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let boot = boot.trim();
    if boot.is_empty() || net == 0 {
        return Vec::new();
    }
    let mut id = format!("{boot}/net:{net}").into_bytes();
    id.truncate(crate::metadata::MAX_HOST_ID_LEN);
    id
}
