//! Settings read from the environment, each once per use site, with a default.
//!
//! Every knob of the plugin is an environment variable `RAY_RDT_*` (Ray's own
//! style for its `RAY_*` settings); a malformed value falls back to the default
//! with a warning rather than failing a transfer.

use std::time::Duration;

/// An unsigned integer setting (plain digits), or `default`.
pub(crate) fn u64_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            log::warn!("ray-rdt: ignoring {name}={text:?} (not a number); using {default}");
            default
        }),
    }
}

/// A duration setting given in milliseconds, or `default`.
pub(crate) fn millis_or(name: &str, default: Duration) -> Duration {
    Duration::from_millis(u64_or(name, default.as_millis() as u64))
}

/// A string setting, if set and not empty.
pub(crate) fn string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
