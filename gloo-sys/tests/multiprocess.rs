//! Multi-process tests: every rank is a separate process (this test binary
//! re-executed with ROLE_ENV set), connected over loopback through a TCP
//! store served by the parent test process.

mod support;

use std::env;
use std::time::{Duration, Instant};

use gloo_sys::{
    CallbackStore, Context, ContextOptions, ErrorKind, GlooError, Store, TcpStoreClient,
    TcpStoreServer,
};
use support::{
    env_usize, env_var, pattern, temp_dir, DirStore, Ranks, PREFIX_ENV, RANK_ENV, ROLE_ENV,
    SIZE_ENV, STORE_ENV,
};

/// Name of the test function that runs the child roles.
const CHILD: &str = "child";
/// Timeout of each transfer in the children.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// A failure must be noticed this fast (well under OP_TIMEOUT).
const PROMPT: Duration = Duration::from_secs(5);
/// Bound on a whole child group.
const GROUP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- children

/// Entry point of the child processes; a no-op in the normal test run.
#[test]
fn child() {
    let Ok(role) = env::var(ROLE_ENV) else { return };
    let rank = env_usize(RANK_ENV);
    let code = match std::panic::catch_unwind(|| run_role(&role, rank)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("rank {rank} ({role}) failed: {e}");
            1
        }
        Err(_) => 2,
    };
    std::process::exit(code);
}

fn run_role(role: &str, rank: usize) -> Result<(), String> {
    match role {
        "exchange" => role_exchange(rank),
        "kill" => role_kill(rank),
        "exit" => role_exit(rank),
        "abort" => role_abort(rank),
        "mismatch" => role_mismatch(rank),
        "callback_store" => role_callback_store(rank),
        _ => Err(format!("unknown role {role}")),
    }
}

fn opts() -> ContextOptions {
    ContextOptions {
        hostname: Some("127.0.0.1".into()),
        iface: None,
        timeout: Duration::from_secs(20),
    }
}

fn err_str(e: GlooError) -> String {
    e.to_string()
}

/// Connects through the parent's TCP store under PREFIX_ENV + `suffix`.
fn connect(rank: usize, suffix: &str) -> Result<Context, String> {
    let store =
        TcpStoreClient::connect(env_var(STORE_ENV), Duration::from_secs(20)).map_err(err_str)?;
    let prefix = format!("{}{suffix}", env_var(PREFIX_ENV));
    Context::connect(rank, env_usize(SIZE_ENV), &store, &prefix, &opts()).map_err(err_str)
}

/// Waits, through the rendezvous store, until every rank has reached this
/// point of `generation`.
fn barrier(rank: usize, generation: u64) -> Result<(), String> {
    let store =
        TcpStoreClient::connect(env_var(STORE_ENV), Duration::from_secs(20)).map_err(err_str)?;
    let prefix = format!("{}/done{generation}", env_var(PREFIX_ENV));
    store
        .set(&format!("{prefix}/{rank}"), b"1")
        .map_err(err_str)?;
    for r in 0..env_usize(SIZE_ENV) {
        store
            .get(&format!("{prefix}/{r}"), GROUP_TIMEOUT)
            .map_err(err_str)?;
    }
    Ok(())
}

fn sizes() -> Vec<usize> {
    env_var("SIZES")
        .split(',')
        .map(|s| s.parse().expect("SIZES"))
        .collect()
}

fn check(got: &[u8], src: usize, dst: usize, tag: u64) -> Result<(), String> {
    if got == pattern(src, dst, got.len(), tag).as_slice() {
        Ok(())
    } else {
        Err(format!(
            "wrong bytes from rank {src} ({} bytes, tag {tag})",
            got.len()
        ))
    }
}

/// Two ranks, blocking calls: rank 0 sends then receives, rank 1 the reverse.
fn exchange_blocking(ctx: &Context, sizes: &[usize], generation: u64) -> Result<(), String> {
    let peer = 1 - ctx.rank();
    for (i, &n) in sizes.iter().enumerate() {
        let tag = generation * 100 + i as u64;
        let out = pattern(ctx.rank(), peer, n, tag);
        let mut got = vec![0u8; n];
        let start = Instant::now();
        if ctx.rank() == 0 {
            ctx.send(peer, tag, &out, OP_TIMEOUT).map_err(err_str)?;
            ctx.recv(peer, tag, &mut got, OP_TIMEOUT).map_err(err_str)?;
        } else {
            ctx.recv(peer, tag, &mut got, OP_TIMEOUT).map_err(err_str)?;
            ctx.send(peer, tag, &out, OP_TIMEOUT).map_err(err_str)?;
        }
        println!("blocking {n} bytes both ways in {:?}", start.elapsed());
        check(&got, peer, ctx.rank(), tag)?;
    }
    Ok(())
}

/// Every rank sends to and receives from every other rank at once (posted
/// operations), one slot per size.
fn exchange_posted(ctx: &Context, sizes: &[usize], generation: u64) -> Result<(), String> {
    let me = ctx.rank();
    let peers: Vec<usize> = (0..ctx.size()).filter(|&p| p != me).collect();
    for (i, &n) in sizes.iter().enumerate() {
        let tag = generation * 100 + i as u64;
        let outs: Vec<Vec<u8>> = peers.iter().map(|&p| pattern(me, p, n, tag)).collect();
        let mut ins: Vec<Vec<u8>> = peers.iter().map(|_| vec![0u8; n]).collect();
        let start = Instant::now();
        {
            let mut ops = Vec::new();
            for (k, &p) in peers.iter().enumerate() {
                // SAFETY: `ins`/`outs` are neither touched nor freed until the
                // ops are waited on below (or dropped on error).
                ops.push(
                    unsafe { ctx.post_recv(p, tag, ins[k].as_mut_ptr(), n) }.map_err(err_str)?,
                );
                ops.push(unsafe { ctx.post_send(p, tag, outs[k].as_ptr(), n) }.map_err(err_str)?);
            }
            for op in ops {
                op.wait(OP_TIMEOUT).map_err(err_str)?;
            }
        }
        println!("posted all-to-all of {n} bytes in {:?}", start.elapsed());
        for (k, &p) in peers.iter().enumerate() {
            check(&ins[k], p, me, tag)?;
        }
    }
    Ok(())
}

/// Exchanges all sizes, destroys the context, connects again under a new
/// prefix with the same processes and exchanges again.
fn role_exchange(rank: usize) -> Result<(), String> {
    let sizes = sizes();
    let posted = env_var("MODE") == "posted";
    for generation in 0..2u64 {
        let ctx = connect(rank, &format!("/gen{generation}"))?;
        if posted {
            exchange_posted(&ctx, &sizes, generation)?;
        } else {
            exchange_blocking(&ctx, &sizes, generation)?;
        }
        // Dropping `ctx` closes this rank's connections. A peer still reading
        // would see them close (or reset, losing data it had not read yet)
        // and break: first wait until every rank has all its data.
        barrier(rank, generation)?;
    }
    println!("DONE");
    Ok(())
}

/// Sets the SIGPIPE disposition, returning the previous one.
fn set_sigpipe(handler: usize) -> usize {
    extern "C" {
        fn signal(signum: std::os::raw::c_int, handler: usize) -> usize;
    }
    const SIGPIPE: std::os::raw::c_int = 13;
    // SAFETY: signal(2) with SIG_DFL (0) or SIG_IGN (1).
    unsafe { signal(SIGPIPE, handler) }
}
const SIG_DFL: usize = 0;
const SIG_IGN: usize = 1;

/// Rank 0 streams 64 MiB messages to rank 1 until the parent kills one of
/// them; the survivor reports how fast it noticed. With SIGPIPE_DEFAULT set,
/// the child first restores SIGPIPE's default action (Rust programs start
/// with it ignored), as in a C++ host process, and checks that creating the
/// context made the process ignore it.
fn role_kill(rank: usize) -> Result<(), String> {
    let sigpipe_default = env::var("SIGPIPE_DEFAULT").is_ok();
    if sigpipe_default {
        set_sigpipe(SIG_DFL);
    }
    let ctx = connect(rank, "")?;
    if sigpipe_default && set_sigpipe(SIG_IGN) != SIG_IGN {
        return Err("creating a context did not set SIGPIPE to SIG_IGN".into());
    }
    let mut buf = vec![7u8; 64 << 20];
    for iteration in 0..10_000 {
        let start = Instant::now();
        let result = if rank == 0 {
            ctx.send(1, 0, &buf, OP_TIMEOUT)
        } else {
            ctx.recv(0, 0, &mut buf, OP_TIMEOUT)
        };
        match result {
            Ok(()) if iteration == 0 => println!("STREAMING"),
            Ok(()) => {}
            Err(e) => {
                println!(
                    "DETECTED kind={:?} elapsed_ms={} broken={}",
                    e.kind(),
                    start.elapsed().as_millis(),
                    ctx.is_broken()
                );
                println!("message: {e}");
                return Ok(());
            }
        }
    }
    Err("the peer never failed".into())
}

/// Connects, then waits until every rank has returned from connecting:
/// Debian's Gloo (2022-05-18) aborts a process whose device thread is still
/// accepting a connection that the peer has already reset (`getpeername` in
/// `Pair::handleConnected` throws on that thread), and a rank that exits or
/// aborts right after connecting resets it.
fn connect_all(rank: usize) -> Result<Context, String> {
    let ctx = connect(rank, "")?;
    barrier(rank, 0)?;
    Ok(ctx)
}

/// Rank 1 exits without closing its context; rank 0's receive fails promptly.
fn role_exit(rank: usize) -> Result<(), String> {
    let ctx = connect_all(rank)?;
    if rank == 1 {
        std::process::exit(0);
    }
    let start = Instant::now();
    let mut buf = [0u8; 16];
    match ctx.recv(1, 3, &mut buf, OP_TIMEOUT) {
        Ok(()) => Err("recv from an exited peer succeeded".into()),
        Err(e) => {
            println!(
                "DETECTED kind={:?} elapsed_ms={}",
                e.kind(),
                start.elapsed().as_millis()
            );
            println!("message: {e}");
            Ok(())
        }
    }
}

/// Rank 0 aborts its context from another thread while blocked in a recv;
/// both its recv and rank 1's recv fail promptly, later ops fail too.
fn role_abort(rank: usize) -> Result<(), String> {
    let ctx = connect_all(rank)?;
    let peer = 1 - rank;
    let mut buf = [0u8; 8];
    let start = Instant::now();
    let result = std::thread::scope(|s| {
        if rank == 0 {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                ctx.abort();
            });
        }
        ctx.recv(peer, 1, &mut buf, OP_TIMEOUT)
    });
    let elapsed = start.elapsed();
    let err = result.err().ok_or("recv succeeded although nobody sent")?;
    println!(
        "DETECTED kind={:?} elapsed_ms={} message: {err}",
        err.kind(),
        elapsed.as_millis()
    );
    if elapsed > PROMPT {
        return Err(format!("noticed only after {elapsed:?}"));
    }
    if rank == 0 && err.kind() != ErrorKind::Aborted {
        return Err(format!("expected Aborted, got {err}"));
    }
    if !ctx.is_broken() {
        return Err("context not marked broken".into());
    }
    let later = ctx
        .send(peer, 2, b"x", OP_TIMEOUT)
        .err()
        .ok_or("send after abort succeeded")?;
    let expected = if rank == 0 {
        ErrorKind::Aborted
    } else {
        ErrorKind::Broken
    };
    if later.kind() != expected {
        return Err(format!("later op: expected {expected:?}, got {later}"));
    }
    println!("LATER {later}");
    Ok(())
}

/// Sender and receiver disagree on the size: both fail, neither crashes.
fn role_mismatch(rank: usize) -> Result<(), String> {
    let ctx = connect(rank, "")?;
    let timeout = Duration::from_secs(2);
    let result = if rank == 0 {
        ctx.send(1, 9, &[1u8; 100], timeout)
    } else {
        ctx.recv(0, 9, &mut [0u8; 50], timeout)
    };
    let err = result.err().ok_or("a mismatched transfer succeeded")?;
    println!("MISMATCH kind={:?} message: {err}", err.kind());
    if ctx.is_broken() {
        Ok(())
    } else {
        Err("context not marked broken".into())
    }
}

/// Rendezvous through a caller-provided (C callback) store.
fn role_callback_store(rank: usize) -> Result<(), String> {
    let dir = DirStore::new(env_var("STORE_DIR").as_ref());
    // SAFETY: DirStore's callbacks follow the shim's contract and `dir`
    // outlives the CallbackStore.
    let store = unsafe { CallbackStore::new(dir.callbacks()) }.map_err(err_str)?;
    let ctx =
        Context::connect(rank, env_usize(SIZE_ENV), &store, "cb/0", &opts()).map_err(err_str)?;
    exchange_posted(&ctx, &[0, 4096, 1 << 20], 0)?;
    println!("DONE");
    Ok(())
}

// ---------------------------------------------------------------- parent

/// Starts a store server and `size` children of `role`.
fn start(role: &str, size: usize, extra: &[(&str, String)]) -> (TcpStoreServer, Ranks) {
    let server = TcpStoreServer::bind("127.0.0.1:0").expect("store server");
    let mut env = vec![
        (STORE_ENV, server.local_addr().to_string()),
        (PREFIX_ENV, format!("test-{role}")),
    ];
    env.extend(extra.iter().cloned());
    let ranks = Ranks::spawn(CHILD, role, size, &env);
    (server, ranks)
}

/// Parses `elapsed_ms=N` out of a DETECTED line.
fn elapsed_ms(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed_ms in {line:?}"))
}

#[test]
fn two_ranks_exchange_all_sizes_blocking_then_reconnect() {
    let sizes = "0,1,4096,4194304,67108864".to_string();
    let (_server, mut ranks) = start(
        "exchange",
        2,
        &[("SIZES", sizes), ("MODE", "blocking".into())],
    );
    ranks.expect_success(GROUP_TIMEOUT);
    assert_eq!(ranks.lines_of(0, "DONE").len(), 1, "{}", ranks.dump());
}

#[test]
fn four_ranks_all_to_all_posted_then_reconnect() {
    let sizes = "0,1,4096,4194304".to_string();
    let (_server, mut ranks) = start(
        "exchange",
        4,
        &[("SIZES", sizes), ("MODE", "posted".into())],
    );
    ranks.expect_success(GROUP_TIMEOUT);
    for rank in 0..4 {
        assert_eq!(ranks.lines_of(rank, "DONE").len(), 1, "{}", ranks.dump());
    }
}

/// Kills `victim` with SIGKILL while 64 MiB messages stream; the other rank
/// must fail promptly (long before its 20 s timeout).
fn kill_mid_transfer(victim: usize) {
    let survivor = 1 - victim;
    let (_server, mut ranks) = start("kill", 2, &[("SIGPIPE_DEFAULT", "1".into())]);
    ranks.wait_line(victim, "STREAMING", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(20));
    ranks.kill(victim);
    let line = ranks.wait_line(survivor, "DETECTED", OP_TIMEOUT + Duration::from_secs(10));
    let statuses = ranks.wait(GROUP_TIMEOUT);
    assert!(
        statuses[survivor].success(),
        "survivor failed\n{}",
        ranks.dump()
    );
    let ms = elapsed_ms(&line);
    println!("rank {survivor} noticed the death of rank {victim}: {line}");
    println!("{:?}", ranks.lines_of(survivor, "message"));
    assert!(
        ms < PROMPT.as_millis() as u64,
        "noticed after {ms} ms\n{}",
        ranks.dump()
    );
}

#[test]
fn killed_receiver_fails_the_sender_promptly() {
    kill_mid_transfer(1);
}

#[test]
fn killed_sender_fails_the_receiver_promptly() {
    kill_mid_transfer(0);
}

#[test]
fn exited_peer_fails_a_pending_recv_promptly() {
    let (_server, mut ranks) = start("exit", 2, &[]);
    let line = ranks.wait_line(0, "DETECTED", OP_TIMEOUT + Duration::from_secs(10));
    ranks.expect_success(GROUP_TIMEOUT);
    assert!(
        elapsed_ms(&line) < PROMPT.as_millis() as u64,
        "{line}\n{}",
        ranks.dump()
    );
}

#[test]
fn abort_fails_local_and_remote_operations_promptly() {
    let (_server, mut ranks) = start("abort", 2, &[]);
    ranks.expect_success(GROUP_TIMEOUT);
    println!("{}", ranks.dump());
}

#[test]
fn size_mismatch_fails_both_sides_without_crashing() {
    let (_server, mut ranks) = start("mismatch", 2, &[]);
    ranks.expect_success(GROUP_TIMEOUT);
    println!("{}", ranks.dump());
}

#[test]
fn rendezvous_through_a_callback_store() {
    let dir = temp_dir("callback-store");
    let mut ranks = Ranks::spawn(
        CHILD,
        "callback_store",
        2,
        &[("STORE_DIR", dir.display().to_string())],
    );
    ranks.expect_success(GROUP_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ranks.lines_of(1, "DONE").len(), 1, "{}", ranks.dump());
}
