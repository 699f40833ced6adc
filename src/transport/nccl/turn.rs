//! One NCCL transfer at a time per rank, so that no two ranks can wait on each
//! other's queued NCCL kernels.
//!
//! NCCL runs one communicator's operations in the order each rank issued them.
//! Transfers here are pulled by consumers at any time, so two ranks could issue
//! a send to each other and then the matching receives: each send waits for a
//! receive queued behind the other rank's send, and both hang. The rule that
//! prevents it: a rank takes part in one transfer at a time. A fetch waits for
//! its rank to be idle; a serve waits only for other serves (which always
//! finish, since their consumer is already waiting for them) and answers
//! *busy* while its rank is fetching, which sends the consumer back to try
//! again after a randomised pause (letting this rank's own fetch finish).

use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Busy {
    Idle,
    Serving,
    Fetching,
}

/// The transfer state of one rank.
pub struct Turns {
    state: Mutex<Busy>,
    changed: Condvar,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            state: Mutex::new(Busy::Idle),
            changed: Condvar::new(),
        }
    }
}

/// This rank's turn; the rank is idle again when it is dropped.
pub struct Turn<'a>(&'a Turns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.state.lock() = Busy::Idle;
        self.0.changed.notify_all();
    }
}

impl Turns {
    /// Waits until the rank is idle, then takes it for a fetch.
    pub fn fetch(&self, deadline: Instant) -> Result<Turn<'_>> {
        self.take(Busy::Fetching, deadline, |_| false)
            .map(|t| t.expect("fetches never give up early"))
    }

    /// Takes the rank for a serve, waiting for other serves; `None` while the
    /// rank is fetching (the consumer should try again).
    pub fn serve(&self, deadline: Instant) -> Result<Option<Turn<'_>>> {
        self.take(Busy::Serving, deadline, |s| s == Busy::Fetching)
    }

    fn take(
        &self,
        role: Busy,
        deadline: Instant,
        give_up: impl Fn(Busy) -> bool,
    ) -> Result<Option<Turn<'_>>> {
        let mut state = self.state.lock();
        loop {
            if *state == Busy::Idle {
                *state = role;
                return Ok(Some(Turn(self)));
            }
            if give_up(*state) {
                return Ok(None);
            }
            if self.changed.wait_until(&mut state, deadline).timed_out() && *state != Busy::Idle {
                return Err(Error::timeout(
                    "this rank's previous NCCL transfer did not finish in time",
                ));
            }
        }
    }
}

/// The pause before trying again after the `attempt`-th *busy* answer: grows
/// from about 1 ms to 50 ms, randomised so that two ranks fetching from each
/// other do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(1u64 << attempt.min(6)).min(Duration::from_millis(50));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 1000;
    base + base * jitter / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_refused_while_fetching_and_waits_for_serves() {
        let turns = Turns::default();
        let soon = Instant::now() + Duration::from_millis(50);
        let fetching = turns.fetch(soon).unwrap();
        assert!(turns.serve(soon).unwrap().is_none(), "busy while fetching");
        drop(fetching);
        let serving = turns.serve(soon).unwrap().expect("idle");
        // Another serve waits for it; a fetch too; both time out here.
        assert!(turns
            .serve(Instant::now() + Duration::from_millis(20))
            .is_err());
        assert!(turns
            .fetch(Instant::now() + Duration::from_millis(20))
            .is_err());
        drop(serving);
        std::thread::scope(|s| {
            let t = turns
                .fetch(Instant::now() + Duration::from_secs(1))
                .unwrap();
            let waiter = s.spawn(|| turns.serve(Instant::now() + Duration::from_secs(5)));
            std::thread::sleep(Duration::from_millis(10));
            drop(t);
            // The waiting serve either saw the fetch (busy) or got the turn after it.
            let _ = waiter.join().unwrap().unwrap();
        });
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(0) >= Duration::from_millis(1) && backoff(0) < Duration::from_millis(2));
        assert!(backoff(20) <= Duration::from_millis(100));
    }
}
