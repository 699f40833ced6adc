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
        Ok(text) if text.trim().is_empty() => default,
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            log::warn!("ray-rdt: ignoring {name}={text:?} (not a number); using {default}");
            default
        }),
    }
}

/// A size in bytes (plain digits), or `default`: memory limits and thresholds.
pub(crate) fn bytes_or(name: &str, default: usize) -> usize {
    usize::try_from(u64_or(name, default as u64)).unwrap_or(usize::MAX)
}

/// An on/off setting (`1`/`true`/`on`, `0`/`false`/`off`, or any number:
/// non-zero is on), or `default`.
pub(crate) fn flag_or(name: &str, default: bool) -> bool {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "on" => true,
        "false" | "off" => false,
        _ => u64_or(name, u64::from(default)) != 0,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_flags_parse_or_fall_back() {
        std::env::set_var("RAY_RDT_TEST_SETTINGS_BYTES", " 4096 ");
        assert_eq!(bytes_or("RAY_RDT_TEST_SETTINGS_BYTES", 7), 4096);
        std::env::set_var("RAY_RDT_TEST_SETTINGS_BYTES", "64M");
        assert_eq!(bytes_or("RAY_RDT_TEST_SETTINGS_BYTES", 7), 7);
        std::env::set_var("RAY_RDT_TEST_SETTINGS_BYTES", "");
        assert_eq!(bytes_or("RAY_RDT_TEST_SETTINGS_BYTES", 7), 7);
        assert_eq!(bytes_or("RAY_RDT_TEST_SETTINGS_UNSET", 9), 9);
        for (text, want) in [("1", true), ("on", true), ("TRUE", true), ("2", true)] {
            std::env::set_var("RAY_RDT_TEST_SETTINGS_FLAG", text);
            assert_eq!(flag_or("RAY_RDT_TEST_SETTINGS_FLAG", false), want, "{text}");
        }
        for (text, want) in [("0", false), ("off", false), ("false", false), ("x", true)] {
            std::env::set_var("RAY_RDT_TEST_SETTINGS_FLAG", text);
            assert_eq!(flag_or("RAY_RDT_TEST_SETTINGS_FLAG", true), want, "{text}");
        }
        assert!(!flag_or("RAY_RDT_TEST_SETTINGS_UNSET", false));
    }
}
