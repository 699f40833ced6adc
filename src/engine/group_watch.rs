//! The member side's watch over its collective groups: a group whose
//! transport noticed a peer die outside any transfer (gloo's contexts notice a
//! closed connection at once) is broken and reported to its owner, as a failed
//! transfer is, so that the owner destroys it everywhere before anyone tries
//! to use it (stock Ray learns of it only when a transfer hangs).
//!
//! One thread per context, started with the first group, checks every
//! [`PERIOD`] and stops with the context. The check is a flag read per group;
//! each group is reported at most once (see
//! [`crate::transport::group::OwnerReport`]).

use super::Shared;
use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

/// How often the groups are checked.
pub(crate) const PERIOD: Duration = Duration::from_millis(100);

/// The watching thread, once started.
#[derive(Default)]
pub(crate) struct GroupWatch {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupWatch {
    /// Starts the thread over `shared`'s transports (once; later calls do nothing).
    pub(crate) fn ensure_started(&self, shared: &Arc<Shared>) -> Result<()> {
        let mut thread = self.thread.lock();
        if thread.is_some() {
            return Ok(());
        }
        let (shared, stop) = (shared.clone(), self.stop.clone());
        *thread = Some(
            std::thread::Builder::new()
                .name("rdt-group-watch".into())
                .spawn(move || watch(&shared, &stop))
                .map_err(|e| Error::io("starting the group watch thread", e))?,
        );
        Ok(())
    }
}

impl Drop for GroupWatch {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock() = true;
        cv.notify_all();
        if let Some(thread) = self.thread.get_mut().take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cv) = stop;
    let mut stopping = lock.lock();
    while !*stopping {
        if cv.wait_for(&mut stopping, PERIOD).timed_out() {
            let local = shared.local();
            for groups in shared.transports.iter().filter_map(|t| t.groups()) {
                groups.report_broken(&local);
            }
        }
    }
}
