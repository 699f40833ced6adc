//! Helpers for tests that run real processes: the test binary re-executes itself
//! with a role in the environment, and tensors are built from plain byte vectors.
//! Each test crate uses a part of it.
#![allow(dead_code)]

use ray_rdt::dlpack::{kDLFloat, kDLInt, kDLUInt, DLDataType, DLDevice};
use ray_rdt::testing::ContextConfig;
use ray_rdt::testing::{Tensor, TensorMeta};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A one-lane element type of `code` and `bits`.
pub const fn dtype(code: u8, bits: u8) -> DLDataType {
    DLDataType {
        code,
        bits,
        lanes: 1,
    }
}

/// float32.
pub const F32: DLDataType = dtype(kDLFloat, 32);
/// int64.
pub const I64: DLDataType = dtype(kDLInt, 64);
/// uint8.
pub const U8: DLDataType = dtype(kDLUInt, 8);

/// Environment variable that selects a child role.
pub const ROLE: &str = "RAY_RDT_TEST_ROLE";

/// The role this process was started with, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Starts this test binary again as a child running `test_name` with `role` and
/// extra environment variables; its stdin and stdout are piped.
pub fn spawn_child(test_name: &str, role: &str, env: &[(&str, String)]) -> Child {
    spawn_child_with(test_name, role, env, &[])
}

/// [`spawn_child`] with more libtest arguments (`--include-ignored` for an
/// ignored test, which libtest would otherwise skip in the child).
pub fn spawn_child_with(
    test_name: &str,
    role: &str,
    env: &[(&str, String)],
    libtest_args: &[&str],
) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    child_command(&exe, test_name, role, env, libtest_args)
        .spawn()
        .expect("spawn child test process")
}

/// The command [`spawn_child_with`] runs, with the test binary `exe` (this
/// one, or a copy), for a caller that changes more (the user it runs as).
pub fn child_command(
    exe: &Path,
    test_name: &str,
    role: &str,
    env: &[(&str, String)],
    libtest_args: &[&str],
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .args(libtest_args)
        .env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Environment variable that lets the NIXL transfer tests skip where NIXL is
/// missing.
#[cfg(feature = "nixl")]
pub const ALLOW_MISSING_NIXL: &str = "RAY_RDT_ALLOW_MISSING_NIXL";

/// Whether NIXL can be used here. Where it cannot, fails the test, unless
/// [`ALLOW_MISSING_NIXL`] is `1`: then says so on the process's real stderr
/// (not through `eprintln!`, which libtest captures) and returns false.
#[cfg(feature = "nixl")]
pub fn nixl_or_skip(test: &str) -> bool {
    use std::io::Write;
    let Err(e) = ray_rdt::testing::nixl::available() else {
        return true;
    };
    let why = format!("NIXL is not available on this machine: {e}");
    assert!(
        std::env::var(ALLOW_MISSING_NIXL).as_deref() == Ok("1"),
        "{test}: {why} (set {ALLOW_MISSING_NIXL}=1 to skip the NIXL transfer tests)"
    );
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {test}: {why} ({ALLOW_MISSING_NIXL}=1)");
    let _ = err.flush();
    false
}

/// A CPU tensor holding `data` with `dtype` and `shape` (data length must match).
pub fn tensor_from_bytes(dtype: DLDataType, shape: Vec<i64>, data: Vec<u8>) -> Tensor {
    let meta = TensorMeta::compact(dtype, shape).expect("valid shape");
    assert_eq!(meta.nbytes as usize, data.len());
    let mut data = data.into_boxed_slice();
    let ptr = data.as_mut_ptr() as *mut std::ffi::c_void;
    Tensor::from_owner(meta, DLDevice::cpu(), ptr, Box::new(data))
}

/// A CPU view of `data` with explicit element `strides` (e.g. a transpose).
pub fn strided_tensor(
    dtype: DLDataType,
    shape: Vec<i64>,
    strides: Vec<i64>,
    data: Vec<u8>,
) -> Tensor {
    let meta = TensorMeta::new(dtype, shape, strides).expect("valid layout");
    let mut data = data.into_boxed_slice();
    let ptr = data.as_mut_ptr() as *mut std::ffi::c_void;
    Tensor::from_owner(meta, DLDevice::cpu(), ptr, Box::new(data))
}

/// Deterministic test bytes: `len` bytes derived from `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Hex encoding, to pass binary records to a child through its environment.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`hex`].
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A same-host context whose transports move their own bytes (no same-host
/// path through shared memory, no small objects inside their records): what
/// the transport tests and benchmarks measure.
pub fn transport_only(node_id: &[u8], actor_id: &[u8]) -> ContextConfig {
    ContextConfig {
        same_host_path: false,
        inline_bytes: 0,
        ..ContextConfig::same_host(node_id, actor_id)
    }
}

/// A child test process driven line by line: commands on its stdin, replies
/// on its stdout tagged `>> ` (libtest's own output is skipped). The child
/// side is [`serve_lines`].
pub struct Driven {
    /// The process.
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driven {
    /// Starts this test binary as a child running `test_name` with `role`
    /// and extra environment variables.
    pub fn spawn(test_name: &str, role: &str, env: &[(&str, String)]) -> Driven {
        let mut child = spawn_child(test_name, role, env);
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Driven {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// The next reply (panics when the child exited first).
    pub fn reply(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "child exited"
            );
            if let Some(i) = line.find(">> ") {
                return line[i + 3..].trim().to_string();
            }
        }
    }

    /// Sends one command line and returns its reply.
    pub fn call(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }
}

/// Child side of [`Driven`]: answers each line of stdin with `handle`'s
/// reply until stdin closes, then exits (without libtest writing to a closed
/// pipe).
pub fn serve_lines(mut handle: impl FnMut(&str) -> String) -> ! {
    for line in std::io::stdin().lock().lines() {
        println!(">> {}", handle(&line.unwrap()));
    }
    std::process::exit(0);
}

/// Waits (at most 30 s) for test hold point `point` of process `pid` in
/// `dir` (src/hold.rs).
pub fn wait_reached(dir: &Path, point: &str, pid: u32) {
    let reached = dir.join(format!("{point}-{pid}.reached"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reached.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            reached.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
