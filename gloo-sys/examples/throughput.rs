//! Measures send/recv throughput between two processes over loopback.
//!
//! `cargo run --release --example throughput -- [SIZES] [ITERS] [CHUNK]`
//! SIZES: comma-separated sizes with an optional K/M/G suffix (default
//! `64M,256M`); ITERS: runs per size (default 7); CHUNK: if given, each
//! message is split into posted sends/receives of at most CHUNK bytes.
//!
//! The process re-executes itself as rank 1; rank 0 serves the store, sends
//! the message and waits for a 1-byte acknowledgement, so each sample is the
//! time until the receiver holds every byte.

use std::env;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use gloo_sys::{Context, ContextOptions, GlooError, TcpStoreClient, TcpStoreServer};

const CHILD_ENV: &str = "GLOO_SYS_THROUGHPUT_STORE";
const TIMEOUT: Duration = Duration::from_secs(60);

fn parse_size(s: &str) -> usize {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<usize>().expect("size") * mult
}

struct Args {
    sizes: Vec<usize>,
    iters: usize,
    chunk: Option<usize>,
}

fn args() -> Args {
    let a: Vec<String> = env::args().skip(1).collect();
    Args {
        sizes: a
            .first()
            .map_or("64M,256M", String::as_str)
            .split(',')
            .map(parse_size)
            .collect(),
        iters: a.get(1).map_or(7, |s| s.parse().expect("iters")),
        chunk: a.get(2).map(|s| parse_size(s)),
    }
}

/// Sends or receives `buf` on slot 0, in chunks if asked to.
fn transfer(
    ctx: &Context,
    peer: usize,
    buf: &mut [u8],
    chunk: Option<usize>,
    send: bool,
) -> Result<(), GlooError> {
    let Some(chunk) = chunk.filter(|&c| c > 0 && c < buf.len()) else {
        return if send {
            ctx.send(peer, 0, buf, TIMEOUT)
        } else {
            ctx.recv(peer, 0, buf, TIMEOUT)
        };
    };
    let mut ops = Vec::new();
    for piece in buf.chunks_mut(chunk) {
        // SAFETY: `buf` is not touched until every op has been waited on.
        ops.push(unsafe {
            if send {
                ctx.post_send(peer, 0, piece.as_ptr(), piece.len())?
            } else {
                ctx.post_recv(peer, 0, piece.as_mut_ptr(), piece.len())?
            }
        });
    }
    ops.into_iter().try_for_each(|op| op.wait(TIMEOUT))
}

fn run(rank: usize, store: &dyn gloo_sys::Store, args: &Args) -> Result<(), GlooError> {
    let opts = ContextOptions {
        hostname: Some("127.0.0.1".into()),
        ..Default::default()
    };
    let ctx = Context::connect(rank, 2, store, "throughput", &opts)?;
    let peer = 1 - rank;
    let mut ack = [0u8; 1];
    for &size in &args.sizes {
        let mut buf = vec![1u8; size];
        let mut samples = Vec::new();
        for _ in 0..=args.iters {
            let start = Instant::now();
            if rank == 0 {
                transfer(&ctx, peer, &mut buf, args.chunk, true)?;
                ctx.recv(peer, 1, &mut ack, TIMEOUT)?;
            } else {
                transfer(&ctx, peer, &mut buf, args.chunk, false)?;
                ctx.send(peer, 1, &ack, TIMEOUT)?;
            }
            samples.push(start.elapsed().as_secs_f64());
        }
        if rank == 0 {
            samples.remove(0); // warm-up
            let mut sorted: Vec<f64> = samples.iter().map(|t| size as f64 / t / 1e9).collect();
            sorted.sort_by(f64::total_cmp);
            println!(
                "{:>5} MiB chunk={:<9} median {:.2} GB/s  (min {:.2}, max {:.2}, {} runs)",
                size >> 20,
                args.chunk
                    .map_or("none".to_string(), |c| format!("{}K", c >> 10)),
                sorted[sorted.len() / 2],
                sorted[0],
                sorted[sorted.len() - 1],
                sorted.len()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = args();
    let result = match env::var(CHILD_ENV) {
        Ok(addr) => TcpStoreClient::connect(addr, TIMEOUT).and_then(|s| run(1, &s, &args)),
        Err(_) => (|| {
            let server = TcpStoreServer::bind("127.0.0.1:0")?;
            let mut child = Command::new(env::current_exe().expect("current_exe"))
                .args(env::args().skip(1))
                .env(CHILD_ENV, server.local_addr().to_string())
                .spawn()
                .expect("spawn rank 1");
            let result = run(0, &server, &args);
            let status = child.wait().expect("wait for rank 1");
            assert!(status.success(), "rank 1 failed: {status}");
            result
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
