//! Failed transfers of collective groups, reported by the members to the
//! group's owner (the process that created the group in Ray) over the owner's
//! endpoint, so that the owner learns of them without polling Ray: it logs
//! them and destroys the group everywhere.
//!
//! A member reports synchronously, before its failing call returns, so the
//! report is in the owner's queue before the failed task's error reaches the
//! owner through Ray. The owner's queue is bounded (the oldest report goes first).

use super::Shared;
use crate::endpoint::{wire, Contact};
use crate::transport::group::{FailureSink, GroupFailure};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Reports kept by an owner that nobody has taken yet.
const MAX_QUEUED: usize = 1024;
/// Bound on sending one report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// The owner's queue of reports.
#[derive(Default)]
pub(crate) struct FailureQueue {
    queue: Mutex<VecDeque<GroupFailure>>,
    arrived: Condvar,
}

impl FailureQueue {
    /// Queues a report that arrived on the endpoint.
    pub(crate) fn push(&self, failure: GroupFailure) {
        let mut q = self.queue.lock();
        if q.len() == MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(failure);
        self.arrived.notify_all();
    }

    /// The next report, waiting up to `timeout` for one.
    pub(crate) fn next(&self, timeout: Duration) -> Option<GroupFailure> {
        let deadline = Instant::now().checked_add(timeout);
        let mut q = self.queue.lock();
        loop {
            if let Some(f) = q.pop_front() {
                return Some(f);
            }
            match deadline {
                Some(at) if self.arrived.wait_until(&mut q, at).timed_out() => {
                    return q.pop_front()
                }
                Some(_) => {}
                None => self.arrived.wait(&mut q),
            }
        }
    }
}

impl FailureSink for Shared {
    fn report(&self, owner: &Contact, failure: &GroupFailure) {
        let (Some(address), _) = owner.route(&self.host_id) else {
            log::warn!("ray-rdt: cannot report a failed transfer in group {:?}: its owner has no address reachable from this host", failure.group);
            return;
        };
        let mut request = vec![wire::OP_GROUP_FAILURE];
        request.extend_from_slice(&failure.encode());
        let sent = self
            .pool
            .with_connection(address, REPORT_TIMEOUT, |channel| {
                channel.send(&request, REPORT_TIMEOUT)?;
                wire::parse_reply(&channel.recv(REPORT_TIMEOUT)?.payload).map(|_| ())
            });
        if let Err(e) = sent {
            log::warn!(
                "ray-rdt: cannot report a failed transfer in group {:?} to its owner at {address}: {e}",
                failure.group
            );
        }
    }
}
