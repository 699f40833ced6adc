//! This process's NIXL agents, each created once, lazily, on first use (agent
//! plus UCX backend creation costs about 0.5 s) and shared by every context in
//! the process:
//!
//! - the **serving** agent ([`serving`]) registers the memory of exported
//!   objects and is what consumers read from. It runs NIXL's progress thread:
//!   UCX needs the target to answer a consumer's connection handshake (wireup),
//!   and without a thread driving it a first read hangs (measured: with the
//!   thread off in both processes, a fetch never completes). The thread sleeps
//!   in `poll` on the worker's event fd, so an idle producer costs nothing.
//! - the **fetching** agent ([`fetching`]) reads into this process. It runs no
//!   progress thread: the fetching thread drives it while it waits, which
//!   measured up to 2x faster for large CMA reads on 2 cores than sharing the
//!   worker with a progress thread (docs/nixl.md). [`PROGRESS_THREAD_ENV`]`=1`
//!   turns its thread on.
//!
//! A process that only produces or only consumes creates only one of them.
//! Both use `ThreadSync::Strict` (NIXL serialises calls into each agent), and
//! `nixl-sys` takes its own lock around most calls as well. Their UCX backends
//! start with [`UCX_DEFAULTS`] where the environment sets none of them.

use super::library;
use crate::error::{Error, ErrorKind, Result};
use nixl_sys::{
    Agent, AgentConfig, MemType, MemoryRegion, NixlDescriptor, NixlError, RegDescList,
    RegistrationHandle, ThreadSync, XferDescList, XferOp, XferStatus,
};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// UCX settings this process's NIXL agents start with unless the environment
/// already sets any of them (the two go together: UCX refuses a send segment
/// larger than the receive segment, so a user's one value is never paired
/// with our other). Over TCP, which is UCX's transport between hosts without
/// RDMA, UCX's 8 KiB send and 64 KiB receive segments cut a large read into
/// many small messages: across two nodes (network namespaces,
/// `UCX_TLS=tcp,self`), one 256 MiB model into a generator's weights took
/// 186 ms per step with them, 131 ms with 256 KiB, 89 ms with 1 MiB (faster
/// than one plain TCP stream) and 98 ms with 4 MiB
/// (docs/cross-node-bench.md, 2026-12-06).
///
/// They reach UCX through the backend's `engine_config` parameter
/// ([`ucx_engine_config`]), so they apply to the plugin's agents only (not
/// to stock Ray's NIXL in the same process), and the process environment is
/// never written (a `setenv` while Ray's threads run could race their
/// `getenv`).
pub const UCX_DEFAULTS: [(&str, &str); 2] =
    [("UCX_TCP_TX_SEG_SIZE", "1M"), ("UCX_TCP_RX_SEG_SIZE", "1M")];

/// NIXL's UCX backend parameter that carries UCX settings: `KEY=VALUE` pairs
/// joined by commas, names without the `UCX_` prefix; a setting the
/// environment also makes keeps the environment's value.
const ENGINE_CONFIG: &str = "engine_config";

/// The `engine_config` for the plugin's UCX backends: `existing` (the
/// plugin's default, usually empty) followed by [`UCX_DEFAULTS`], unless
/// `is_set` says the environment sets any of them (then `existing` alone).
fn ucx_engine_config(existing: &str, is_set: impl Fn(&str) -> bool) -> String {
    let mut pairs: Vec<String> = existing
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if !UCX_DEFAULTS.iter().any(|(key, _)| is_set(key)) {
        pairs.extend(
            UCX_DEFAULTS
                .iter()
                .map(|(key, value)| format!("{}={value}", key.strip_prefix("UCX_").unwrap_or(key))),
        );
    }
    pairs.join(",")
}

/// Environment variable: `1` runs NIXL's progress thread in the fetching agent
/// too (the serving agent always runs one).
pub const PROGRESS_THREAD_ENV: &str = "RAY_RDT_NIXL_PROGRESS_THREAD";

/// Default for [`PROGRESS_THREAD_ENV`]: see docs/nixl.md ("Progress").
const PROGRESS_THREAD_DEFAULT: bool = false;

/// Whether this process's fetching agent runs NIXL's progress thread.
pub fn progress_thread_enabled() -> bool {
    crate::settings::flag_or(PROGRESS_THREAD_ENV, PROGRESS_THREAD_DEFAULT)
}

/// Wraps a NIXL failure with what was being done.
pub(crate) fn nixl_error(what: &str, e: NixlError) -> Error {
    Error::transport(format!("NIXL {what} failed: {e}"))
}

/// A memory range in NIXL's terms: what gets registered or transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// Start address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// NIXL device ID: the CUDA ordinal for device memory; for host memory 0, or
    /// the registration's unique tag on a producer ([`super::registry`]).
    pub dev: u64,
    /// Host (DRAM_SEG) or CUDA (VRAM_SEG) memory.
    pub cuda: bool,
}

impl Region {
    /// NIXL's memory segment type for this region.
    pub fn mem_type(&self) -> MemType {
        if self.cuda {
            MemType::Vram
        } else {
            MemType::Dram
        }
    }
}

impl MemoryRegion for Region {
    unsafe fn as_ptr(&self) -> *const u8 {
        self.addr as *const u8
    }

    fn size(&self) -> usize {
        self.len
    }
}

impl NixlDescriptor for Region {
    fn mem_type(&self) -> MemType {
        Region::mem_type(self)
    }

    fn device_id(&self) -> u64 {
        self.dev
    }
}

/// One NIXL agent of this process and what is known about it.
pub struct Runtime {
    agent: Agent,
    name: String,
    /// This agent's connection info: partial metadata without memory sections.
    conn_md: Vec<u8>,
}

static SERVING: OnceLock<Result<Runtime, Error>> = OnceLock::new();
static FETCHING: OnceLock<Result<Runtime, Error>> = OnceLock::new();
static NONCE: OnceLock<u64> = OnceLock::new();

/// The agent exported objects are registered with and read from, created on
/// first call (loading the library first). Fails with [`ErrorKind::Unavailable`]
/// when NIXL is not installed.
pub fn serving() -> Result<&'static Runtime> {
    SERVING
        .get_or_init(|| library::load().and_then(|_| Runtime::create("serve", true)))
        .as_ref()
        .map_err(Clone::clone)
}

/// The agent this process reads with, created on first call.
pub fn fetching() -> Result<&'static Runtime> {
    FETCHING
        .get_or_init(|| {
            library::load().and_then(|_| Runtime::create("fetch", progress_thread_enabled()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr() as *mut _, b.len(), 0) };
    u64::from_le_bytes(b)
}

impl Runtime {
    fn create(role: &str, progress_thread: bool) -> Result<Runtime> {
        let nonce = *NONCE.get_or_init(random_u64);
        let name = format!("ray-rdt-{}-{nonce:016x}-{role}", std::process::id());
        let config = AgentConfig {
            enable_prog_thread: progress_thread,
            enable_listen_thread: false,
            listen_port: 0,
            thread_sync: ThreadSync::Strict,
            num_workers: 1,
            // The progress thread polls with this timeout; 0 would spin a core forever.
            pthr_delay_us: 1000,
            lthr_delay_us: 100_000,
            capture_telemetry: false,
        };
        let agent =
            Agent::new_configured(&name, &config).map_err(|e| nixl_error("agent creation", e))?;
        let (_mems, mut params) = agent.get_plugin_params("UCX").map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("NIXL's UCX plugin is not available ({e}): the nixl wheels' plugins/libplugin_UCX.so is missing or cannot load"),
            )
        })?;
        let existing = (&params)
            .into_iter()
            .find(|(key, _)| *key == ENGINE_CONFIG)
            .map_or(String::new(), |(_, value)| value.to_owned());
        let engine_config = ucx_engine_config(&existing, |key| std::env::var_os(key).is_some());
        params
            .set(ENGINE_CONFIG, &engine_config)
            .map_err(|e| nixl_error("setting the UCX backend's engine_config", e))?;
        agent
            .create_backend("UCX", &params)
            .map_err(|e| nixl_error("UCX backend creation", e))?;
        let empty = RegDescList::new(MemType::Dram)
            .map_err(|e| nixl_error("descriptor list creation", e))?;
        let conn_md = agent
            .get_local_partial_md(&empty, None)
            .map_err(|e| nixl_error("reading the agent's connection info", e))?;
        log::info!(
            "ray-rdt: NIXL agent {name} ready (UCX backend, progress thread {})",
            config.enable_prog_thread
        );
        Ok(Runtime {
            agent,
            name,
            conn_md,
        })
    }

    /// The agent's name: `ray-rdt-<pid>-<random>-serve` or `-fetch`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's connection info, for peers' `load_remote_md`.
    pub fn conn_md(&self) -> &[u8] {
        &self.conn_md
    }

    /// Registers `region` with the UCX backend; deregistered when the handle drops.
    pub fn register(&self, region: Region) -> Result<RegistrationHandle> {
        self.agent.register_memory(&region, None).map_err(|e| {
            nixl_error(
                &format!(
                    "registration of {} bytes at {:#x} (device {})",
                    region.len, region.addr, region.dev
                ),
                e,
            )
        })
    }

    /// Partial metadata (memory sections only, no connection info) for registered `regions`.
    pub fn sections_md(&self, regions: &[Region]) -> Result<Vec<u8>> {
        let Some(first) = regions.first() else {
            return Ok(Vec::new());
        };
        let mut list = RegDescList::new(first.mem_type())
            .map_err(|e| nixl_error("descriptor list creation", e))?;
        for r in regions {
            list.add_desc(r.addr, r.len, r.dev);
        }
        self.agent
            .get_local_partial_md(&list, None)
            .map_err(|e| nixl_error("reading registration metadata", e))
    }

    /// Loads a peer's metadata blob; returns the peer agent's name.
    pub fn load_remote_md(&self, md: &[u8]) -> Result<String, NixlError> {
        self.agent.load_remote_md(md)
    }

    /// Forgets what is loaded about `remote` and disconnects from it.
    pub fn invalidate_remote(&self, remote: &str) {
        if let Err(e) = self.agent.invalidate_remote_md(remote) {
            log::debug!("ray-rdt: invalidating NIXL peer {remote}: {e}");
        }
    }

    /// Reads `remote_regions` of agent `remote` into `local_regions` (same count
    /// and lengths), waiting until `deadline`. Returns `Ok(())` when the transfer
    /// completed. On timeout the request is released; a request that could still
    /// be in flight is reported by `Err` with `in_flight = true` so the caller
    /// keeps the destination memory alive.
    pub fn read(
        &self,
        local_regions: &[Region],
        remote_regions: &[Region],
        remote: &str,
        deadline: Instant,
    ) -> Result<(), ReadError> {
        let mk = |regions: &[Region]| -> Result<XferDescList<'static>, ReadError> {
            let mut list = XferDescList::new(regions[0].mem_type())
                .map_err(|e| ReadError::failed(nixl_error("descriptor list creation", e)))?;
            for r in regions {
                list.add_desc(r.addr, r.len, r.dev);
            }
            Ok(list)
        };
        let local = mk(local_regions)?;
        let remote_list = mk(remote_regions)?;
        let req = self
            .agent
            .create_xfer_req(XferOp::Read, &local, &remote_list, remote, None)
            .map_err(|e| {
                ReadError::failed(nixl_error(&format!("creating a READ from {remote}"), e))
            })?;
        let in_progress = self.agent.post_xfer_req(&req, None).map_err(|e| {
            ReadError::failed(nixl_error(&format!("posting a READ from {remote}"), e))
        })?;
        if !in_progress {
            return Ok(());
        }
        let start = Instant::now();
        let mut pause = Duration::from_micros(1);
        loop {
            match self.agent.get_xfer_status(&req) {
                Ok(XferStatus::Success) => return Ok(()),
                Ok(XferStatus::InProgress) => {}
                Err(e) => {
                    return Err(ReadError::failed(nixl_error(
                        &format!("a READ from {remote}"),
                        e,
                    )))
                }
            }
            let now = Instant::now();
            if now >= deadline {
                // Dropping `req` releases it; the transfer may still touch our memory.
                return Err(ReadError {
                    error: Error::timeout(format!(
                        "NIXL READ from {remote} did not complete within {:.3} s",
                        now.duration_since(start).as_secs_f64()
                    )),
                    in_flight: true,
                });
            }
            // The polls drive the transfer (no progress thread in the fetching
            // agent): yield between them for the first millisecond, then back
            // off to at most 100 us. CMA reads complete inside the post and never
            // get here; a first read to a new producer (connection handshake)
            // and network transports do.
            if now.duration_since(start) > Duration::from_millis(1) {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(now)));
                pause = (pause * 2).min(Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// A failed read: the error, and whether the transfer might still be writing.
#[derive(Debug)]
pub struct ReadError {
    /// What went wrong.
    pub error: Error,
    /// The request may still be in flight: keep the destination alive.
    pub in_flight: bool,
}

impl ReadError {
    fn failed(error: Error) -> Self {
        ReadError {
            error,
            in_flight: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_defaults_go_to_engine_config_unless_the_environment_sets_one() {
        assert_eq!(
            ucx_engine_config("", |_| false),
            "TCP_TX_SEG_SIZE=1M,TCP_RX_SEG_SIZE=1M"
        );
        assert_eq!(
            ucx_engine_config("RNDV_THRESH=8K", |_| false),
            "RNDV_THRESH=8K,TCP_TX_SEG_SIZE=1M,TCP_RX_SEG_SIZE=1M"
        );
        // Either one set by the user: neither default (never a pair UCX refuses).
        assert_eq!(ucx_engine_config("", |k| k == "UCX_TCP_RX_SEG_SIZE"), "");
        assert_eq!(
            ucx_engine_config("RNDV_THRESH=8K", |k| k == "UCX_TCP_TX_SEG_SIZE"),
            "RNDV_THRESH=8K"
        );
    }
}
