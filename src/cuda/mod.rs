//! The CUDA layer of the plugin: what the `nccl`, `cuda_ipc` and `nixl`
//! transports use to move CUDA tensors.
//!
//! Nothing here is linked: the CUDA driver (through cudarc, `dynamic-loading`),
//! the CUDA runtime and NCCL are found and loaded on first use ([`library`]), so
//! the plugin builds on machines without CUDA and loads on machines without a
//! driver; there, using a CUDA transport is an [`crate::ErrorKind::Unavailable`]
//! error naming what is missing, and the process lives on.
//!
//! | module | owns |
//! |---|---|
//! | [`library`] | finding and loading libcuda, libcudart, libnccl |
//! | [`driver`] | guarded driver calls: contexts, streams, events, memory, IPC |
//! | [`current`] | the calling thread's device and stream (torch's, from the binding) |
//! | [`pool`] | cached device memory for received tensors |
//! | [`ipc`] | IPC export of allocations and the consumer's mappings |
//! | [`nccl`] | NCCL communicators (non-blocking, abortable) |
//!
//! NOTHING IN THIS MODULE HAS RUN ON A GPU YET (no GPU was lent to this work):
//! the paths that need no device (library search, refusals, errors without a
//! driver) are tested; `ci/gpu-nightly` holds the tests that need one.

pub mod current;
pub mod driver;
pub mod ipc;
pub mod library;
pub mod nccl;
pub mod pool;

use crate::error::Result;
use driver::Event;

/// An event marking the work queued so far, on device `device`, on the
/// caller's current stream ([`current::stream`]): what produces the tensors
/// being stored. `interprocess` for events other processes wait on.
pub fn mark_current_work(device: i32, interprocess: bool) -> Result<Event> {
    let event = Event::new(device, interprocess)?;
    event.record(current::stream(device))?;
    Ok(event)
}

/// What the CUDA layer finds on this machine, as JSON: for `driver`,
/// `runtime` and `nccl`, the path loaded and version, or the error. Probes all
/// three (the driver's probe includes `cuInit`).
pub fn report() -> String {
    let entry = |path: Result<String>, extra: Option<(&str, Result<i32>)>| match path {
        Err(e) => format!("{{\"error\": {}}}", json_string(e.message())),
        Ok(p) => {
            let mut s = format!("{{\"path\": {}", json_string(&p));
            if let Some((key, value)) = extra {
                match value {
                    Ok(v) => s.push_str(&format!(", \"{key}\": {v}")),
                    Err(e) => s.push_str(&format!(", \"error\": {}", json_string(e.message()))),
                }
            }
            s.push('}');
            s
        }
    };
    let path_of = |r: Result<&library::Loaded>| r.map(|l| l.path.display().to_string());
    let driver_path = path_of(library::driver());
    let driver = entry(
        driver_path,
        Some((
            "devices",
            driver::init().and_then(|_| driver::device_count()),
        )),
    );
    let runtime = entry(path_of(library::runtime()), None);
    let nccl = entry(path_of(library::nccl()), Some(("version", nccl::version())));
    format!("{{\"driver\": {driver}, \"runtime\": {runtime}, \"nccl\": {nccl}}}")
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_all_three_and_escapes() {
        let r = report();
        for key in ["\"driver\"", "\"runtime\"", "\"nccl\""] {
            assert!(r.contains(key), "{r}");
        }
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
