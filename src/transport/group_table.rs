//! The bookkeeping every two-sided transport keeps of the collective groups
//! its process joined, in one place: joining (a name once, a rank in range),
//! finding a group (joined, or usable: not broken), checking a peer's rank,
//! breaking a group after a system error and reporting it to the group's
//! owner, leaving. A transport keeps what is its own in its [`Member`] (the
//! Gloo context, the NCCL communicator and stream).

use super::group::{already_in_group, broken_group, GroupFailure, GroupSpec, OwnerReport};
use super::Local;
use crate::error::{Error, ErrorKind, Result};
use crate::object_id::ObjectId;
use crate::transport_kind::TransportKind;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// One joined group of a transport, as the shared bookkeeping sees it.
pub trait Member: Send + Sync {
    /// This process's rank in the group.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Why a system error broke the group, if one did.
    fn broken_reason(&self) -> Option<String>;
    /// Breaks the group after `cause`: every later transfer on it fails, and
    /// its pending ones end.
    fn break_with(&self, cause: &Error);
    /// Leaves the group: its pending transfers end, its resources go.
    fn leave(&self);
    /// Where this member reports failed transfers.
    fn owner_report(&self) -> &OwnerReport;
}

/// The groups one transport's process joined, by name.
pub struct GroupTable<G> {
    kind: TransportKind,
    groups: RwLock<HashMap<String, Arc<G>>>,
}

impl<G: Member> GroupTable<G> {
    /// An empty table of `kind`'s groups.
    pub fn new(kind: TransportKind) -> Self {
        GroupTable {
            kind,
            groups: RwLock::new(HashMap::new()),
        }
    }

    /// Refuses to join `spec`'s group a second time, or with a rank out of range.
    pub fn check_join(&self, spec: &GroupSpec<'_>) -> Result<()> {
        if self.groups.read().contains_key(spec.name) {
            return Err(already_in_group(spec.name));
        }
        if spec.rank >= spec.world_size {
            return Err(Error::invalid(format!(
                "rank {} is out of range for a group of {}",
                spec.rank, spec.world_size
            )));
        }
        Ok(())
    }

    /// Adds a group just joined, unless the name was joined meanwhile (then
    /// the new one is left again).
    pub fn insert(&self, name: &str, group: G) -> Result<()> {
        let mut groups = self.groups.write();
        if groups.contains_key(name) {
            drop(groups);
            group.leave();
            return Err(already_in_group(name));
        }
        groups.insert(name.to_owned(), Arc::new(group));
        Ok(())
    }

    /// Leaves group `name`.
    pub fn destroy(&self, name: &str) -> Result<()> {
        let group = self
            .groups
            .write()
            .remove(name)
            .ok_or_else(|| self.not_in_group(name))?;
        group.leave();
        Ok(())
    }

    /// The names of the groups joined.
    pub fn names(&self) -> Vec<String> {
        self.groups.read().keys().cloned().collect()
    }

    /// Every group joined, with its name.
    pub fn all(&self) -> Vec<(String, Arc<G>)> {
        self.groups
            .read()
            .iter()
            .map(|(n, g)| (n.clone(), g.clone()))
            .collect()
    }

    /// Group `name`, broken or not.
    pub fn joined(&self, name: &str) -> Result<Arc<G>> {
        self.groups.read().get(name).cloned().ok_or_else(|| {
            let e = self.not_in_group(name);
            Error::new(
                e.kind(),
                format!(
                    "{e}: create the group on both actors before passing {} objects",
                    self.kind.name()
                ),
            )
        })
    }

    /// Group `name`, usable for transfers (not broken).
    pub fn usable(&self, name: &str) -> Result<Arc<G>> {
        let group = self.joined(name)?;
        usable(&*group, name)?;
        Ok(group)
    }

    /// Breaks group `name` after system error `cause` while moving `object`
    /// from rank `src` to rank `dst` (`None`: this rank) and reports it to the
    /// group's owner (see [`super::CollectiveGroups::break_group`]).
    pub fn break_group(
        &self,
        local: &Local<'_>,
        name: &str,
        object: &ObjectId,
        ranks: Option<(usize, usize)>,
        cause: &Error,
    ) {
        let Ok(group) = self.joined(name) else { return };
        group.break_with(cause);
        let rank = group.rank();
        let (src, dst) = ranks.unwrap_or((rank, rank));
        group.owner_report().report(
            local,
            GroupFailure {
                transport: self.kind,
                group: name.to_owned(),
                object: *object,
                src_rank: src as u32,
                dst_rank: dst as u32,
                reporter_rank: rank as u32,
                cause: cause.message().to_owned(),
            },
        );
    }

    fn not_in_group(&self, name: &str) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "this process is not in collective group {name:?} ({})",
                self.kind.name()
            ),
        )
    }
}

/// Refuses transfers on a group a system error broke.
pub fn usable(group: &dyn Member, name: &str) -> Result<()> {
    match group.broken_reason() {
        None => Ok(()),
        Some(reason) => Err(broken_group(name, &reason)),
    }
}

/// Refuses a consumer rank that cannot receive from `group`'s rank.
pub fn check_peer_rank(group: &dyn Member, consumer_rank: usize, name: &str) -> Result<()> {
    if consumer_rank >= group.size() || consumer_rank == group.rank() {
        return Err(Error::invalid(format!(
            "rank {consumer_rank} cannot receive from rank {} in group {name:?}",
            group.rank()
        )));
    }
    Ok(())
}
