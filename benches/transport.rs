//! `ci/bench transport`: two processes on this host, one object of one float32
//! tensor per size; medians of plugin gloo, torch.distributed gloo (same library,
//! measured in the same run), plugin shm and single-thread memcpy, and the peak
//! RSS growth of the receiving process for 256 MiB transfers. A benchmark, not a
//! test: it measures and prints, it asserts nothing about time.

#[path = "../tests/multiprocess/mod.rs"]
mod multiprocess;

use multiprocess::*;
use ray_rdt::testing::{Context, Fetched};
use ray_rdt::testing::{ObjectId, TransportKind};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const SIZES: [usize; 4] = [4 << 10, 4 << 20, 64 << 20, 256 << 20];

const TIMEOUT: Duration = Duration::from_secs(60);

fn iterations(size: usize) -> usize {
    match size {
        s if s <= 64 << 10 => 200,
        s if s <= 8 << 20 => 30,
        s if s <= 64 << 20 => 10,
        _ => 5,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn transports() -> [TransportKind; 2] {
    [TransportKind::Gloo, TransportKind::Shm]
}

/// Producer process: joins the group, stores one object per (transport, size),
/// prints the records, and serves fetches until its stdin closes.
fn producer() {
    let ctx = Context::new(transport_only(b"bench-node", b"producer")).unwrap();
    let addr = std::env::var("RDV").unwrap();
    ctx.create_group(TransportKind::Gloo, "bench", 1, 2, &addr, TIMEOUT, None)
        .unwrap();
    for (t, kind) in transports().into_iter().enumerate() {
        for (s, size) in SIZES.into_iter().enumerate() {
            let id = ObjectId([(t * 16 + s) as u8 + 1; 28]);
            let tensor = tensor_from_bytes(F32, vec![(size / 4) as i64], pattern(size, s as u8));
            let record = ctx
                .put(id, kind, Some("bench"), vec![tensor])
                .map_err(|r| r.error)
                .unwrap();
            println!(
                "REC {} {size} {} {}",
                kind.name(),
                hex(id.as_bytes()),
                hex(&record)
            );
        }
    }
    println!("READY");
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
    std::process::exit(0);
}

/// Peak-RSS bookkeeping of this process (Linux: reset with clear_refs 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Seconds per fetch of `record`, and the peak RSS growth (bytes) during them.
fn time_fetches(ctx: &Context, id: &ObjectId, record: &[u8], iters: usize) -> (Vec<f64>, u64) {
    let base = status_kib("VmRSS:");
    reset_peak_rss();
    let times = (0..iters + 1)
        .map(|_| {
            let start = Instant::now();
            let fetched = ctx.fetch(id, record, TIMEOUT).unwrap();
            let t = start.elapsed().as_secs_f64();
            // Touch every page (untimed) so the peak RSS counts the received data.
            if let Fetched::Received(tensors) = &fetched {
                tensors.iter().filter_map(|t| t.host_bytes()).for_each(|b| {
                    std::hint::black_box(b.iter().step_by(4096).fold(0u8, |a, &x| a ^ x));
                });
            }
            drop(fetched);
            t
        })
        .skip(1)
        .collect();
    (times, status_kib("VmHWM:").saturating_sub(base) * 1024)
}

/// Single-thread memcpy of `size` bytes into an already-faulted destination: the
/// physical limit of any copy on this host.
fn memcpy_times(size: usize, iters: usize) -> Vec<f64> {
    let src = pattern(size, 7);
    let mut dst = vec![0u8; size];
    (0..iters + 1)
        .map(|_| {
            let start = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            let t = start.elapsed().as_secs_f64();
            std::hint::black_box(&dst);
            t
        })
        .skip(1)
        .collect()
}

/// torch.distributed gloo send/recv medians from benches/torch_gloo.py, if the
/// project's virtualenv is there.
fn torch_gloo() -> Option<HashMap<usize, f64>> {
    let python = std::env::var("RAY_RDT_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let sizes: Vec<String> = SIZES.iter().map(|s| s.to_string()).collect();
    let out = std::process::Command::new(python)
        .args(["benches/torch_gloo.py", &sizes.join(","), "10"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last()?;
    // {"4096": [t, ...], ...}: parse without a JSON dependency.
    let mut result = HashMap::new();
    for part in line.trim_matches(|c| c == '{' || c == '}').split("], ") {
        let (key, values) = part.split_once(": [")?;
        let size: usize = key.trim().trim_matches('"').parse().ok()?;
        let times: Vec<f64> = values
            .trim_end_matches(']')
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        result.insert(size, median(times));
    }
    Some(result)
}

fn gbps(size: usize, secs: f64) -> f64 {
    size as f64 / secs / 1e9
}

fn main() {
    if role().as_deref() == Some("producer") {
        return producer();
    }
    let ctx = Context::new(transport_only(b"bench-node", b"consumer")).unwrap();
    let addr = ctx.serve_rendezvous("127.0.0.1").unwrap();
    let mut child = {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, "producer")
            .env("RDV", &addr)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    ctx.create_group(TransportKind::Gloo, "bench", 0, 2, &addr, TIMEOUT, None)
        .unwrap();
    let mut records: HashMap<(String, usize), (ObjectId, Vec<u8>)> = HashMap::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "READY" {
            break;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        records.insert(
            (w[1].into(), w[2].parse().unwrap()),
            (ObjectId::from_slice(&unhex(w[3])).unwrap(), unhex(w[4])),
        );
    }
    let torch = torch_gloo();
    println!(
        "{:>10} | {:>22} | {:>22} | {:>22} | {:>22}",
        "bytes", "plugin gloo", "torch gloo", "plugin shm", "memcpy"
    );
    let mut ratios = Vec::new();
    let mut rss = Vec::new();
    for size in SIZES {
        let iters = iterations(size);
        let mut med = HashMap::new();
        for kind in transports() {
            let (id, record) = &records[&(kind.name().to_string(), size)];
            let (times, peak) = time_fetches(&ctx, id, record, iters);
            med.insert(kind, median(times));
            if size == 256 << 20 {
                rss.push(format!(
                    "{} peak RSS growth {:.0} MiB",
                    kind.name(),
                    peak as f64 / (1 << 20) as f64
                ));
            }
        }
        let memcpy = median(memcpy_times(size, iters));
        let tg = torch.as_ref().and_then(|t| t.get(&size).copied());
        let cell = |t: f64| format!("{:9.3} ms {:6.2} GB/s", t * 1e3, gbps(size, t));
        println!(
            "{size:>10} | {} | {} | {} | {}",
            cell(med[&TransportKind::Gloo]),
            tg.map(cell)
                .unwrap_or_else(|| format!("{:>22}", "n/a (no .venv)")),
            cell(med[&TransportKind::Shm]),
            cell(memcpy)
        );
        ratios.push(format!(
            "{}: gloo/torch {} shm/memcpy-bw {:.2} shm {:.1}us",
            size,
            tg.map(|t| format!("{:.2}x", t / med[&TransportKind::Gloo]))
                .unwrap_or_else(|| "n/a".into()),
            memcpy / med[&TransportKind::Shm],
            med[&TransportKind::Shm] * 1e6
        ));
    }
    println!("receiver, 256 MiB: {}", rss.join(", "));
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "ratios (speed vs reference, >1 is faster): {}",
        ratios.join(" | ")
    );
}
