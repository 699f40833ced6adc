//! Creating and destroying contexts, ops and store servers leaks no file
//! descriptors and no threads. Alone in its binary so that no other test
//! changes the counts while it runs.

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gloo_sys::{Context, ContextOptions, TcpStoreServer};

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").unwrap().count()
}

/// One generation: a store server, two ranks on two threads that exchange a
/// message, abandon a posted op on rank 0 (breaking the group), and drop.
fn generation(generation: usize) {
    let server = Arc::new(TcpStoreServer::bind("127.0.0.1:0").unwrap());
    let opts = ContextOptions {
        hostname: Some("127.0.0.1".into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (server, opts) = (Arc::clone(&server), opts.clone());
            thread::spawn(move || {
                let prefix = format!("leak/{generation}");
                let ctx = Context::connect(rank, 2, &*server, &prefix, &opts).unwrap();
                let t = Duration::from_secs(10);
                let mut buf = vec![0u8; 5 << 20];
                if rank == 0 {
                    ctx.send(1, 0, &buf, t).unwrap();
                    // SAFETY: the op is dropped before `buf`.
                    let op = unsafe { ctx.post_recv(1, 1, buf.as_mut_ptr(), 8) }.unwrap();
                    drop(op);
                    assert!(ctx.is_broken());
                } else {
                    ctx.recv(0, 0, &mut buf, t).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn contexts_and_stores_release_fds_and_threads() {
    generation(0); // warm-up: one-time allocations of the runtime
    let (fds, tasks) = (open_fds(), threads());
    for g in 1..=10 {
        generation(g);
    }
    // Gloo's I/O thread and the store's threads are joined on drop; exiting
    // threads leave /proc a moment later (longer on a loaded machine): poll
    // until the counts are back, with a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut now_fds, mut now_tasks) = (open_fds(), threads());
    while (now_fds > fds || now_tasks > tasks) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        (now_fds, now_tasks) = (open_fds(), threads());
    }
    assert!(
        now_fds <= fds && now_tasks <= tasks,
        "leaked after 30 s: {now_fds} file descriptors (before: {fds}), \
         {now_tasks} threads (before: {tasks})"
    );
}
