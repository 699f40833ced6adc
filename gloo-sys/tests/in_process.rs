//! Single-process tests: argument checks, rendezvous failures, store errors
//! and panics, and op lifetime rules. (Transfers between ranks as separate
//! processes are in multiprocess.rs; the two-rank cases here use threads.)

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gloo_sys::{Context, ContextOptions, ErrorKind, GlooError, Store, TcpStoreServer};

fn opts(timeout: Duration) -> ContextOptions {
    ContextOptions {
        hostname: Some("127.0.0.1".into()),
        iface: None,
        timeout,
    }
}

const T: Duration = Duration::from_secs(10);

/// Runs ranks 0 and 1 of a group on two threads of this process.
fn pair<F>(prefix: &str, f: F)
where
    F: Fn(&Context) + Send + Sync + 'static,
{
    let server = Arc::new(TcpStoreServer::bind("127.0.0.1:0").unwrap());
    let f = Arc::new(f);
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (server, f, prefix) = (Arc::clone(&server), Arc::clone(&f), prefix.to_string());
            thread::spawn(move || {
                let ctx = Context::connect(rank, 2, &*server, &prefix, &opts(T)).unwrap();
                f(&ctx);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn single_rank_group_rejects_bad_peers_without_breaking() {
    let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
    let ctx = Context::connect(0, 1, &server, "solo", &opts(T)).unwrap();
    assert_eq!((ctx.rank(), ctx.size()), (0, 1));
    for peer in [0, 1, 3, usize::MAX] {
        let err = ctx.send(peer, 0, b"x", T).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
    let err = ctx.recv(0, 0, &mut [0u8; 4], T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(!ctx.is_broken());
    assert_eq!(ctx.broken_reason(), None);
}

#[test]
fn invalid_connect_arguments_are_rejected() {
    let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
    for (rank, size, prefix) in [(2, 2, "p"), (0, 0, "p"), (0, 2, "bad\0prefix")] {
        let err = Context::connect(rank, size, &server, prefix, &opts(T)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
}

#[test]
fn rendezvous_times_out_when_a_rank_is_missing() {
    let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let err =
        Context::connect(0, 2, &server, "lonely", &opts(Duration::from_millis(500))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("lonely/"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn unknown_bind_address_is_a_clear_error() {
    let server = TcpStoreServer::bind("127.0.0.1:0").unwrap();
    let opts = ContextOptions {
        iface: Some("no-such-if0".into()),
        ..opts(T)
    };
    let err = Context::connect(0, 1, &server, "iface", &opts).unwrap_err();
    assert!(err.message().contains("no-such-if0"), "{err}");
}

/// A store whose operations fail or panic.
struct BadStore {
    panic: bool,
}

impl Store for BadStore {
    fn set(&self, _key: &str, _value: &[u8]) -> Result<(), GlooError> {
        if self.panic {
            panic!("store bug");
        }
        Err(GlooError::new(ErrorKind::Store, "kv service unavailable"))
    }

    fn get(&self, _key: &str, _timeout: Duration) -> Result<Vec<u8>, GlooError> {
        unreachable!("set fails first")
    }
}

#[test]
fn store_errors_and_panics_surface_as_store_errors() {
    let err = Context::connect(0, 2, &BadStore { panic: false }, "bad", &opts(T)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(err.message().contains("kv service unavailable"), "{err}");

    let err = Context::connect(0, 2, &BadStore { panic: true }, "bad", &opts(T)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(err.message().contains("panicked"), "{err}");
}

#[test]
fn messages_on_one_slot_arrive_in_order() {
    pair("order", |ctx| {
        if ctx.rank() == 0 {
            for i in 0..3u8 {
                ctx.send(1, 5, &[i; 16], T).unwrap();
            }
        } else {
            let mut bufs = [[0u8; 16]; 3];
            {
                let [a, b, c] = &mut bufs;
                // SAFETY: the buffers are untouched until the waits return.
                let ops = unsafe {
                    [
                        ctx.post_recv(0, 5, a.as_mut_ptr(), 16).unwrap(),
                        ctx.post_recv(0, 5, b.as_mut_ptr(), 16).unwrap(),
                        ctx.post_recv(0, 5, c.as_mut_ptr(), 16).unwrap(),
                    ]
                };
                for op in ops {
                    op.wait(T).unwrap();
                }
            }
            assert_eq!(bufs, [[0u8; 16], [1u8; 16], [2u8; 16]]);
        }
    });
}

#[test]
fn abandoning_a_pending_op_breaks_the_group() {
    pair("abandon", |ctx| {
        // Rank 1 has returned from `connect` before rank 0 breaks the group:
        // Debian's Gloo (2022-05-18) aborts the process when a connection its
        // device thread is still accepting was reset by then (`getpeername`
        // in `Pair::handleConnected` throws on that thread), and a peer that
        // breaks right after connecting resets it.
        if ctx.rank() == 0 {
            let mut ready = [0u8; 1];
            ctx.recv(1, 0, &mut ready, T).unwrap();
            let mut buf = [0u8; 8];
            // SAFETY: the op is dropped before `buf`.
            let op = unsafe { ctx.post_recv(1, 1, buf.as_mut_ptr(), buf.len()) }.unwrap();
            drop(op);
            let reason = ctx.broken_reason().expect("broken after abandoning an op");
            assert!(reason.contains("abandoned"), "{reason}");
            let err = ctx.send(1, 2, b"x", T).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Broken, "{err}");
        } else {
            ctx.send(0, 0, b"r", T).unwrap();
            // Rank 0 closes its connections: this recv fails promptly.
            let start = Instant::now();
            let err = ctx.recv(0, 3, &mut [0u8; 4], T).unwrap_err();
            assert!(start.elapsed() < Duration::from_secs(5), "{err}");
            assert!(ctx.is_broken());
        }
    });
}
