//! `cargo bench --bench nixl_transport`: the plugin's nixl transport against
//! NIXL's own Python API (benches/nixl_py_baseline.py, run with the project's
//! `.venv/bin/python` in the same run), two processes on this host, one object of
//! one u8 tensor per size, CPU memory, UCX underneath. Medians per size; the last
//! line is the plugin/Python throughput ratio. A benchmark, not a test: it
//! measures and prints, it asserts nothing about time.
//!
//! Plugin: a producer process puts the objects; a consumer process times
//! `Context::fetch` + dropping the received tensors (allocate, register, READ,
//! wait, deregister, free). Python ("fresh"): the same work with NIXL's Python
//! API (`torch.empty`, `register_memory`, `initialize_xfer`, `transfer`, poll,
//! release, `deregister_memory`, free); Python "prereg" is the transfer alone
//! into a destination registered once (an upper bound, shown for reference).
//!
//! Threading: the producing process runs NIXL's progress thread (the plugin's
//! serving agent always does; so does the Python target); the reading process
//! runs one only with `--progress 1`. The ratio line compares against Python
//! with the same threading; Python's default (progress thread in both) is shown
//! too.
//!
//! Options (after `--`): `--sizes 4096,4194304`, `--iters 200,50`,
//! `--progress 0|1|both` (the reading process's progress thread; default: the
//! plugin's default, off), `--rounds N` (alternate plugin and Python N times,
//! report the median of the per-round medians). Skips (exit 0) without NIXL's
//! wheels or the project's `.venv`.

#[path = "../tests/multiprocess/mod.rs"]
mod multiprocess;

use multiprocess::*;
use ray_rdt::testing::nixl;
use ray_rdt::testing::{Context, Fetched};
use ray_rdt::testing::{ObjectId, TransportKind};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);
const PROGRESS_ENV: &str = nixl::agent::PROGRESS_THREAD_ENV;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn list(s: &str) -> Vec<usize> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

/// Producer role: one object per size in SIZES; prints records; lives until stdin closes.
fn producer() {
    let ctx = Context::new(transport_only(b"bench-node", b"producer")).unwrap();
    for (i, size) in list(&std::env::var("SIZES").unwrap())
        .into_iter()
        .enumerate()
    {
        let id = ObjectId([i as u8 + 1; 28]);
        let tensor = tensor_from_bytes(U8, vec![size as i64], pattern(size, i as u8));
        let record = ctx
            .put(id, TransportKind::Nixl, None, vec![tensor])
            .map_err(|r| r.error)
            .unwrap();
        println!("REC {size} {} {}", hex(id.as_bytes()), hex(&record));
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

/// Consumer role: times ITERS fetches of each record in RECORDS; prints medians.
fn consumer() {
    let ctx = Context::new(transport_only(b"bench-node", b"consumer")).unwrap();
    let iters = list(&std::env::var("ITERS").unwrap());
    for (n, rec) in iters
        .iter()
        .zip(std::env::var("RECORDS").unwrap().split(','))
    {
        let mut w = rec.split(':');
        let size: usize = w.next().unwrap().parse().unwrap();
        let id = ObjectId::from_slice(&unhex(w.next().unwrap())).unwrap();
        let record = unhex(w.next().unwrap());
        let warmup = (n / 10).max(2);
        let mut times = Vec::new();
        for it in 0..n + warmup {
            let start = Instant::now();
            let fetched = ctx.fetch(&id, &record, TIMEOUT).unwrap();
            if it == 0 {
                let Fetched::Received(t) = &fetched else {
                    panic!("expected a copy")
                };
                assert_eq!(
                    t[0].host_bytes().unwrap()[size - 1],
                    pattern(size, id.0[0] - 1)[size - 1]
                );
            }
            drop(fetched);
            times.push(start.elapsed().as_secs_f64());
        }
        println!("MEDIAN {size} {}", median(times.split_off(warmup)));
    }
}

/// One plugin round: producer and consumer processes with `progress`.
fn plugin_round(sizes: &[usize], iters: &[usize], progress: bool) -> HashMap<usize, f64> {
    let exe = std::env::current_exe().unwrap();
    let sizes_arg = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let p = if progress { "1" } else { "0" };
    let mut producer = Command::new(&exe)
        .env(ROLE, "producer")
        .env("SIZES", &sizes_arg)
        .env(PROGRESS_ENV, p)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut records = Vec::new();
    for line in BufReader::new(producer.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "READY" {
            break;
        }
        if let Some(rest) = line.strip_prefix("REC ") {
            records.push(rest.replace(' ', ":"));
        }
    }
    let iters_arg = iters
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(&exe)
        .env(ROLE, "consumer")
        .env("RECORDS", records.join(","))
        .env("ITERS", iters_arg)
        .env(PROGRESS_ENV, p)
        .output()
        .unwrap();
    drop(producer.stdin.take());
    let _ = producer.wait();
    assert!(
        out.status.success(),
        "consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("MEDIAN "))
        .filter_map(|l| {
            let (s, t) = l.split_once(' ')?;
            Some((s.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

fn python() -> String {
    std::env::var("RAY_RDT_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

/// One Python round: ("fresh", "prereg") medians by size. The target process
/// always runs NIXL's progress thread (as the plugin's serving agent does); the
/// reading process runs one when `progress`.
fn python_round(
    sizes: &[usize],
    iters: &[usize],
    progress: bool,
) -> Option<(HashMap<usize, f64>, HashMap<usize, f64>)> {
    let join = |v: &[usize]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let script = format!("{}/benches/nixl_py_baseline.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .args([
            script.as_str(),
            "--sizes",
            &join(sizes),
            "--iters",
            &join(iters),
            "--progress-thread",
            if progress { "1" } else { "0" },
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rfind(|l| l.starts_with('{'))?;
    // {"fresh": {"4096": t, ...}, "prereg": {...}}: parse without a JSON dependency.
    let section = |name: &str| -> Option<HashMap<usize, f64>> {
        let start = line.find(&format!("\"{name}\": {{"))? + name.len() + 5;
        let body = &line[start..start + line[start..].find('}')?];
        body.split(',')
            .map(|kv| {
                let (k, v) = kv.split_once(':')?;
                Some((
                    k.trim().trim_matches('"').parse().ok()?,
                    v.trim().parse().ok()?,
                ))
            })
            .collect()
    };
    Some((section("fresh")?, section("prereg")?))
}

/// The pattern Ray produces step after step: the producer puts an object, a
/// consumer fetches it, the object is freed, and the next step returns the same
/// buffer again (same address, a new registration). Two contexts of this process
/// (the fetch still goes producer agent -> consumer agent). Returns the median
/// fetch time per size.
fn loop_medians(sizes: &[usize], iters: &[usize]) -> Vec<(usize, f64)> {
    let producer = Context::new(transport_only(b"bench-node", b"loop-producer")).unwrap();
    let consumer = Context::new(transport_only(b"bench-node", b"loop-consumer")).unwrap();
    sizes
        .iter()
        .zip(iters)
        .map(|(&size, &n)| {
            let buffer = std::sync::Arc::new(pattern(size, 5));
            let mut times = Vec::new();
            for i in 0..n + 2 {
                let id = ObjectId([
                    0xa0,
                    (i % 256) as u8,
                    (i / 256) as u8,
                    1,
                    2,
                    3,
                    4,
                    5,
                    6,
                    7,
                    8,
                    9,
                    10,
                    11,
                    12,
                    13,
                    14,
                    15,
                    16,
                    17,
                    18,
                    19,
                    20,
                    21,
                    22,
                    23,
                    24,
                    25,
                ]);
                let meta = ray_rdt::testing::TensorMeta::compact(U8, vec![size as i64]).unwrap();
                let cpu = ray_rdt::dlpack::DLDevice::cpu();
                let t = ray_rdt::testing::Tensor::from_owner(
                    meta,
                    cpu,
                    buffer.as_ptr() as *mut _,
                    Box::new(buffer.clone()),
                );
                let record = producer
                    .put(id, TransportKind::Nixl, None, vec![t])
                    .map_err(|r| r.error)
                    .unwrap();
                let start = Instant::now();
                drop(consumer.fetch(&id, &record, TIMEOUT).unwrap());
                times.push(start.elapsed().as_secs_f64());
                producer.free(&id);
            }
            (size, median(times.split_off(2)))
        })
        .collect()
}

fn gbps(size: usize, secs: f64) -> f64 {
    size as f64 / secs / 1e9
}

fn main() {
    match role().as_deref() {
        Some("producer") => return producer(),
        Some("consumer") => return consumer(),
        _ => {}
    }
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes = opt("--sizes")
        .map(|s| list(&s))
        .unwrap_or_else(|| vec![4 << 10, 4 << 20, 64 << 20, 256 << 20]);
    let iters = opt("--iters").map(|s| list(&s)).unwrap_or_else(|| {
        sizes
            .iter()
            .map(|&s| {
                if s <= 64 << 10 {
                    300
                } else if s <= 8 << 20 {
                    60
                } else if s <= 64 << 20 {
                    20
                } else {
                    10
                }
            })
            .collect()
    });
    let rounds: usize = opt("--rounds").and_then(|r| r.parse().ok()).unwrap_or(1);
    let progress: Vec<bool> = match opt("--progress").as_deref() {
        Some("both") => vec![false, true],
        Some("0") => vec![false],
        Some("1") => vec![true],
        _ => vec![nixl::agent::progress_thread_enabled()],
    };
    if args.iter().any(|a| a == "--loop") {
        for (size, t) in loop_medians(&sizes, &iters) {
            println!("put-fetch-free loop, same buffer each step: {size:>10} bytes: fetch {:9.3} ms {:6.2} GB/s", t * 1e3, gbps(size, t));
        }
        return;
    }
    if nixl::library::candidates().is_empty() || !std::path::Path::new(&python()).exists() {
        println!("skipped: NIXL's wheels or the project's .venv are missing (pip install nixl==1.5.1 into .venv)");
        return;
    }
    for p in progress {
        let mut plugin: HashMap<usize, Vec<f64>> = HashMap::new();
        let mut fresh: HashMap<usize, Vec<f64>> = HashMap::new();
        let mut prereg: HashMap<usize, Vec<f64>> = HashMap::new();
        let mut default: HashMap<usize, Vec<f64>> = HashMap::new();
        for _ in 0..rounds {
            for (s, t) in plugin_round(&sizes, &iters, p) {
                plugin.entry(s).or_default().push(t);
            }
            if let Some((f, r)) = python_round(&sizes, &iters, p) {
                f.into_iter()
                    .for_each(|(s, t)| fresh.entry(s).or_default().push(t));
                r.into_iter()
                    .for_each(|(s, t)| prereg.entry(s).or_default().push(t));
            }
            if !p {
                if let Some((f, _)) = python_round(&sizes, &iters, true) {
                    f.into_iter()
                        .for_each(|(s, t)| default.entry(s).or_default().push(t));
                }
            }
        }
        let med = |m: &HashMap<usize, Vec<f64>>, s: usize| m.get(&s).map(|v| median(v.clone()));
        println!(
            "\nReading process's NIXL progress thread {} (the producer's always on), {rounds} round(s), medians:",
            if p { "on" } else { "off" }
        );
        println!(
            "{:>10} | {:>22} | {:>22} | {:>22} | {:>22} | {:>5}",
            "bytes",
            "plugin nixl",
            "python, same threads",
            "python, default",
            "python prereg",
            "ratio"
        );
        let cell = |size: usize, t: Option<f64>| {
            t.map(|t| format!("{:9.3} ms {:6.2} GB/s", t * 1e3, gbps(size, t)))
                .unwrap_or_else(|| format!("{:>22}", "n/a"))
        };
        let mut ratios = Vec::new();
        let mut ratios_default = Vec::new();
        for &size in &sizes {
            let a = med(&plugin, size);
            let ratio = a.zip(med(&fresh, size)).map(|(a, b)| b / a);
            ratio.inspect(|&r| ratios.push((size, r)));
            if let Some(r) = a.zip(med(&default, size)).map(|(a, b)| b / a) {
                ratios_default.push((size, r));
            }
            println!(
                "{size:>10} | {} | {} | {} | {} | {:>5}",
                cell(size, a),
                cell(size, med(&fresh, size)),
                cell(size, med(&default, size)),
                cell(size, med(&prereg, size)),
                ratio
                    .map(|r| format!("{:.2}", r))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        let summary = |ratios: &[(usize, f64)]| {
            let geo = (ratios.iter().map(|(_, r)| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
            let min = ratios.iter().map(|(_, r)| *r).fold(f64::INFINITY, f64::min);
            let per: Vec<String> = ratios.iter().map(|(s, r)| format!("{s}: {r:.2}")).collect();
            format!("min {min:.2}, geomean {geo:.2} ({})", per.join(", "))
        };
        if !ratios_default.is_empty() {
            println!(
                "ratio plugin/python throughput vs Python's default threading: {}",
                summary(&ratios_default)
            );
        }
        if ratios.is_empty() {
            println!("ratio plugin/python throughput: n/a (the Python baseline did not run)");
        } else {
            println!("ratio plugin/python throughput (same threading, fresh buffers; target >= 0.90): {}", summary(&ratios));
        }
    }
}
