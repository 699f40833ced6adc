//! Test-only hold points, so that fault tests kill a process in the middle of a
//! transfer by design, not by sleeps and luck.
//!
//! With `RAY_RDT_TEST_HOLD_DIR` set (read once per process) and naming a
//! directory, a process reaching hold point `P` that is listed in
//! `RAY_RDT_TEST_HOLD_POINTS` (comma-separated; all points when unset) creates
//! `DIR/P-<pid>.reached` and waits until `DIR/P-<pid>.release` exists, at most
//! [`MAX_HOLD`]. Several threads may wait at one point at once (several
//! fetches of one `ray.get`): the release lets them all go, and the last one
//! to leave removes both files. Unset (production), a hold point costs one
//! load of an initialized `OnceLock`.
//!
//! Points: `serve` (producer: the request was accepted, no tensor byte sent
//! yet), `fetch` (consumer: the transfer is under way, the bytes have not
//! all arrived) and `share_wait` (a node copy's leader: a follower's request
//! arrived while the leader still reads the object; see
//! `crate::engine::node_share`).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Environment variable naming the directory of hold files.
pub const DIR_ENV: &str = "RAY_RDT_TEST_HOLD_DIR";
/// Environment variable listing the points that hold (default: all).
pub const POINTS_ENV: &str = "RAY_RDT_TEST_HOLD_POINTS";
/// Longest a hold point waits for its release file.
pub const MAX_HOLD: Duration = Duration::from_secs(120);

struct Holds {
    dir: PathBuf,
    points: Option<Vec<String>>,
}

fn holds() -> Option<&'static Holds> {
    static HOLDS: OnceLock<Option<Holds>> = OnceLock::new();
    HOLDS
        .get_or_init(|| {
            let dir = crate::settings::string(DIR_ENV)?;
            let points = crate::settings::string(POINTS_ENV)
                .map(|p| p.split(',').map(|s| s.trim().to_owned()).collect());
            Some(Holds {
                dir: PathBuf::from(dir),
                points,
            })
        })
        .as_ref()
}

/// Waits at hold point `point` when tests enabled it (see the module docs).
pub fn point(point: &str) {
    let Some(h) = holds() else { return };
    if h.points
        .as_ref()
        .is_some_and(|p| !p.iter().any(|x| x == point))
    {
        return;
    }
    let pid = std::process::id();
    let reached = h.dir.join(format!("{point}-{pid}.reached"));
    let release = h.dir.join(format!("{point}-{pid}.release"));
    let waiters = {
        // The file is written under the lock that the last thread to leave
        // removes it under: a thread arriving as another leaves never has
        // its file removed from under it (and so waits for a release that
        // nobody would give).
        let mut all = WAITERS.lock();
        if let Err(e) = std::fs::write(&reached, b"") {
            log::warn!(
                "ray-rdt: hold point {point}: cannot write {}: {e}",
                reached.display()
            );
            return;
        }
        let n = all.entry(point.to_owned()).or_insert(0);
        *n += 1;
        *n
    };
    log::debug!("ray-rdt: hold point {point}: {waiters} waiting");
    let start = Instant::now();
    while !release.exists() && start.elapsed() < MAX_HOLD {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut all = WAITERS.lock();
    let n = all.get_mut(point).expect("counted above");
    *n -= 1;
    if *n == 0 {
        let _ = std::fs::remove_file(&release);
        let _ = std::fs::remove_file(&reached);
    }
}

/// Threads waiting at each hold point now.
static WAITERS: parking_lot::Mutex<std::collections::BTreeMap<String, usize>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());
