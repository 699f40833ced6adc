//! Helpers shared by the integration tests: running ranks as real processes
//! (the test binary re-executes itself), byte patterns, and a directory-backed
//! key-value store exposed through C callbacks.

use std::collections::HashMap;
use std::env;
use std::ffi::c_void;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gloo_sys::ffi;

/// Environment variable that turns the test binary into a child rank.
pub const ROLE_ENV: &str = "GLOO_SYS_TEST_ROLE";
/// Rank of the child.
pub const RANK_ENV: &str = "GLOO_SYS_TEST_RANK";
/// Group size.
pub const SIZE_ENV: &str = "GLOO_SYS_TEST_SIZE";
/// Address of the parent's TCP store server.
pub const STORE_ENV: &str = "GLOO_SYS_TEST_STORE";
/// Rendezvous prefix.
pub const PREFIX_ENV: &str = "GLOO_SYS_TEST_PREFIX";

/// Reads a required environment variable of a child.
pub fn env_var(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| panic!("child: {name} is not set"))
}

/// Reads a required numeric environment variable of a child.
pub fn env_usize(name: &str) -> usize {
    env_var(name)
        .parse()
        .unwrap_or_else(|_| panic!("child: {name} is not a number"))
}

/// A line a child printed, with its rank.
pub struct Line {
    pub rank: usize,
    pub text: String,
}

/// Child processes, one per rank, running `child_test` of this test binary.
pub struct Ranks {
    children: Vec<Option<Child>>,
    lines: Receiver<Line>,
    readers: Vec<JoinHandle<()>>,
    /// Everything the children printed so far, per rank.
    pub output: HashMap<usize, Vec<String>>,
}

impl Ranks {
    /// Starts `size` children of role `role`; `env` is added to each child's
    /// environment (the rank is in RANK_ENV).
    pub fn spawn(child_test: &str, role: &str, size: usize, env: &[(&str, String)]) -> Ranks {
        let exe = env::current_exe().expect("current_exe");
        let (tx, lines) = mpsc::channel();
        let mut children = Vec::new();
        let mut readers = Vec::new();
        for rank in 0..size {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--exact",
                child_test,
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE_ENV, role)
            .env(RANK_ENV, rank.to_string())
            .env(SIZE_ENV, size.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn child rank");
            for pipe in [
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Box::new(child.stderr.take().unwrap()),
            ] {
                let tx = tx.clone();
                readers.push(thread::spawn(move || {
                    for text in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let _ = tx.send(Line { rank, text });
                    }
                }));
            }
            children.push(Some(child));
        }
        Ranks {
            children,
            lines,
            readers,
            output: HashMap::new(),
        }
    }

    fn record(&mut self, line: Line) {
        self.output.entry(line.rank).or_default().push(line.text);
    }

    /// Waits up to `timeout` for `rank` to print a line starting with
    /// `prefix`, and returns it.
    pub fn wait_line(&mut self, rank: usize, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.rank == rank && line.text.starts_with(prefix);
                    let text = line.text.clone();
                    self.record(line);
                    if hit {
                        return text;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    self.kill_all();
                    panic!(
                        "rank {rank} did not print '{prefix}' in time\n{}",
                        self.dump()
                    );
                }
            }
        }
    }

    /// Sends SIGKILL to `rank`.
    pub fn kill(&mut self, rank: usize) {
        if let Some(child) = self.children[rank].as_mut() {
            let _ = child.kill();
        }
    }

    fn kill_all(&mut self) {
        for rank in 0..self.children.len() {
            self.kill(rank);
        }
    }

    /// Waits for every child to exit (killing all of them after `timeout`,
    /// which fails the test) and returns the exit statuses by rank.
    pub fn wait(&mut self, timeout: Duration) -> Vec<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        while statuses.iter().any(Option::is_none) {
            for (rank, slot) in statuses.iter_mut().enumerate() {
                if slot.is_none() {
                    if let Some(child) = self.children[rank].as_mut() {
                        *slot = child.try_wait().expect("try_wait");
                    }
                }
            }
            if Instant::now() > deadline {
                self.kill_all();
                self.drain();
                panic!(
                    "children still running after {timeout:?} (hang)\n{}",
                    self.dump()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.drain();
        statuses.into_iter().map(Option::unwrap).collect()
    }

    /// Collects the remaining output once all children exited.
    fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        while let Ok(line) = self.lines.try_recv() {
            self.record(line);
        }
    }

    /// Waits for every child and asserts that each exited with status 0.
    pub fn expect_success(&mut self, timeout: Duration) {
        let statuses = self.wait(timeout);
        for (rank, status) in statuses.iter().enumerate() {
            assert!(
                status.success(),
                "rank {rank} failed: {status}\n{}",
                self.dump()
            );
        }
    }

    /// The output of all children, for failure messages.
    pub fn dump(&self) -> String {
        let mut ranks: Vec<_> = self.output.keys().copied().collect();
        ranks.sort_unstable();
        let mut out = String::new();
        for rank in ranks {
            for line in &self.output[&rank] {
                out.push_str(&format!("[rank {rank}] {line}\n"));
            }
        }
        out
    }

    /// Lines of `rank` starting with `prefix`.
    pub fn lines_of(&self, rank: usize, prefix: &str) -> Vec<String> {
        self.output
            .get(&rank)
            .map(|v| {
                v.iter()
                    .filter(|l| l.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deterministic bytes that differ per (src, dst, len, tag): a receiver can
/// check exactly what the sender meant to send.
pub fn pattern(src: usize, dst: usize, len: usize, tag: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = (src as u64) << 48 ^ (dst as u64) << 32 ^ (len as u64) ^ tag.rotate_left(17);
    let mut chunks = out.chunks_exact_mut(8);
    for chunk in &mut chunks {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b = (x as u8).wrapping_add(i as u8 + 1);
    }
    out
}

/// A key-value store kept as files in a directory, offered through the shim's
/// C callback contract: a stand-in for an external KV such as Ray's.
pub struct DirStore {
    dir: Box<PathBuf>,
}

impl DirStore {
    /// A store in `dir` (created if needed).
    pub fn new(dir: &Path) -> DirStore {
        fs::create_dir_all(dir).expect("create store dir");
        DirStore {
            dir: Box::new(dir.to_path_buf()),
        }
    }

    /// The C callbacks; valid while `self` lives.
    pub fn callbacks(&self) -> ffi::gloo_shim_store {
        ffi::gloo_shim_store {
            user: (&*self.dir as *const PathBuf).cast_mut().cast(),
            set: Some(dir_set),
            get: Some(dir_get),
        }
    }
}

/// File name for a key: hex, so any key is a valid name.
fn key_file(dir: &Path, key: &[u8]) -> PathBuf {
    dir.join(key.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

unsafe fn write_c(err: *mut c_char, cap: usize, msg: &str) {
    if cap == 0 || err.is_null() {
        return;
    }
    let n = msg.len().min(cap - 1);
    std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
    *err.add(n) = 0;
}

unsafe extern "C" fn dir_set(
    user: *mut c_void,
    key: *const c_char,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    let dir = &*user.cast::<PathBuf>();
    let key = std::slice::from_raw_parts(key.cast::<u8>(), key_len);
    let value = if value_len == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(value, value_len)
    };
    let path = key_file(dir, key);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    match fs::write(&tmp, value).and_then(|()| fs::rename(&tmp, &path)) {
        Ok(()) => ffi::GLOO_SHIM_STORE_OK,
        Err(e) => {
            write_c(err, err_cap, &format!("dir store: {e}"));
            ffi::GLOO_SHIM_STORE_ERROR
        }
    }
}

unsafe extern "C" fn dir_get(
    user: *mut c_void,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    sink: *mut c_void,
    sink_fn: ffi::gloo_shim_sink_fn,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    let dir = &*user.cast::<PathBuf>();
    let key = std::slice::from_raw_parts(key.cast::<u8>(), key_len);
    let path = key_file(dir, key);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    loop {
        match fs::read(&path) {
            Ok(value) => {
                sink_fn(sink, value.as_ptr(), value.len());
                return ffi::GLOO_SHIM_STORE_OK;
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                write_c(err, err_cap, &format!("dir store: {e}"));
                return ffi::GLOO_SHIM_STORE_ERROR;
            }
            Err(_) if Instant::now() >= deadline => {
                write_c(err, err_cap, "dir store: key not found");
                return ffi::GLOO_SHIM_STORE_TIMEOUT;
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = env::temp_dir().join(format!(
        "gloo-sys-test-{name}-{}-{nanos}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}
