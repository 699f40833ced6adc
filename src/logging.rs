//! The plugin's logger: `log` records go to this process's stderr, one line each,
//! in the format of Ray's own C++ logs, so they land where Ray users look: Ray
//! captures a worker's stderr into `logs/worker-*.err` of its session and, with
//! `log_to_driver`, prints it on the driver.
//!
//! ```text
//! [2026-12-01 20:11:08,381 W 13826 13864] transport/nixl/mod.rs:393: ray-rdt: ...
//! ```
//!
//! (local time with milliseconds, level letter, process id, thread id, source
//! file relative to the crate's `src/`, line). The level comes from
//! [`LEVEL_ENV`] (`debug`, `info`, `warning`, `error`, `off`; default
//! `warning`), read when the logger is installed. [`install`] runs at context
//! creation and is idempotent; when the host process already installed a `log`
//! logger (a Rust program embedding the plugin), that one stays.

use std::io::Write;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The environment variable that sets the plugin's log level.
pub const LEVEL_ENV: &str = "RAY_RDT_LOG_LEVEL";

/// Writes records at or above `level` to stderr in Ray's line format.
struct RayLineLogger {
    level: LevelFilter,
}

impl Log for RayLineLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(
            &timestamp(),
            record.level(),
            std::process::id(),
            thread_id(),
            record.file().unwrap_or("?"),
            record.line().unwrap_or(0),
            &record.args().to_string(),
        );
        // One write per line, so lines of concurrent threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

static LOGGER: OnceLock<RayLineLogger> = OnceLock::new();

/// Installs the plugin's logger once per process (later calls do nothing).
pub fn install() {
    let mut fresh = false;
    let logger = LOGGER.get_or_init(|| {
        fresh = true;
        let raw = std::env::var(LEVEL_ENV).unwrap_or_default();
        RayLineLogger {
            level: parse_level(&raw).unwrap_or(LevelFilter::Warn),
        }
    });
    if !fresh || log::set_logger(logger).is_err() {
        return;
    }
    log::set_max_level(logger.level);
    let raw = std::env::var(LEVEL_ENV).unwrap_or_default();
    if parse_level(&raw).is_none() {
        log::warn!(
            "ray-rdt: {LEVEL_ENV}={raw:?} is not a log level (debug, info, warning, error, off); using warning"
        );
    }
}

/// The filter a [`LEVEL_ENV`] value names (case-insensitive; empty: the default,
/// warning); None for anything else.
fn parse_level(raw: &str) -> Option<LevelFilter> {
    Some(match raw.trim().to_ascii_lowercase().as_str() {
        "" | "warning" | "warn" => LevelFilter::Warn,
        "trace" => LevelFilter::Trace,
        "debug" => LevelFilter::Debug,
        "info" => LevelFilter::Info,
        "error" | "critical" | "fatal" => LevelFilter::Error,
        "off" | "none" => LevelFilter::Off,
        _ => return None,
    })
}

/// Ray's one-letter level (`RAY_LOG`'s `%L`).
fn level_letter(level: Level) -> char {
    match level {
        Level::Error => 'E',
        Level::Warn => 'W',
        Level::Info => 'I',
        Level::Debug => 'D',
        Level::Trace => 'T',
    }
}

/// A source path as Ray prints it: relative to the crate's `src/`.
fn short_file(file: &str) -> &str {
    file.rsplit_once("src/").map_or(file, |(_, rest)| rest)
}

fn format_line(
    time: &str,
    level: Level,
    pid: u32,
    tid: i64,
    file: &str,
    line: u32,
    message: &str,
) -> String {
    format!(
        "[{time} {} {pid} {tid}] {}:{line}: {message}\n",
        level_letter(level),
        short_file(file)
    )
}

/// Local wall-clock time as `YYYY-MM-DD HH:MM:SS,mmm`.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r only writes the tm it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_millis()
    )
}

/// The kernel's id of the calling thread (what Ray prints).
fn thread_id() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_rays_format() {
        let line = format_line(
            "2026-12-01 20:11:08,381",
            Level::Warn,
            13826,
            13864,
            "src/transport/nixl/mod.rs",
            393,
            "ray-rdt: hello",
        );
        assert_eq!(
            line,
            "[2026-12-01 20:11:08,381 W 13826 13864] transport/nixl/mod.rs:393: ray-rdt: hello\n"
        );
    }

    #[test]
    fn levels_parse_like_rays_names() {
        assert_eq!(parse_level(""), Some(LevelFilter::Warn));
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("info"), Some(LevelFilter::Info));
        assert_eq!(parse_level(" Debug "), Some(LevelFilter::Debug));
        assert_eq!(parse_level("critical"), Some(LevelFilter::Error));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let t = timestamp();
        assert_eq!(t.len(), "2026-12-01 20:11:08,381".len(), "{t}");
        assert_eq!(&t[19..20], ",");
    }
}
