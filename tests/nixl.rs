//! The nixl transport between real processes (CPU memory, UCX underneath): a
//! producer context stores tensors, child processes read them one-sided.
//!
//! Needs NIXL's wheels (`pip install nixl==1.5.1`, found in the repo's `.venv` or
//! through RAY_RDT_NIXL_LIB; ci/setup installs them). Where they are missing the
//! transfer tests fail, unless `RAY_RDT_ALLOW_MISSING_NIXL=1` says that skipping
//! is acceptable: then each prints its skip on the real stderr (libtest does not
//! capture it). The "NIXL missing" test runs everywhere.

mod multiprocess;

use multiprocess::*;
use ray_rdt::dlpack::{kDLUInt, DLDataType, DLDevice};
use ray_rdt::testing::nixl;
use ray_rdt::testing::{
    stats, ErrorKind, Metadata, ObjectId, Place, Producer, Tensor, TensorMeta, TransportKind,
};
use ray_rdt::testing::{Context, Fetched};
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const U16: DLDataType = DLDataType {
    code: kDLUInt,
    bits: 16,
    lanes: 1,
};

/// Held by the tests that put NIXL objects in this process: the registration
/// cache they change is process-wide, and one of them counts it exactly.
fn registry_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Slack on top of a fetch's timeout before a test calls the fetch hung:
/// generous, for a loaded machine; a hang never returns at all.
const HANG_SLACK: Duration = Duration::from_secs(20);

/// The tensors of a test object: several dtypes, a 0-d, an empty, a 2 MiB and a
/// strided tensor.
fn sample_tensors(seed: u8) -> Vec<Tensor> {
    vec![
        tensor_from_bytes(F32, vec![3, 5], pattern(60, seed)),
        tensor_from_bytes(I64, vec![], pattern(8, seed + 1)),
        tensor_from_bytes(U8, vec![0, 4], Vec::new()),
        tensor_from_bytes(U16, vec![1 << 20], pattern(2 << 20, seed + 2)),
        // The transpose of a 2x3 u8 matrix [[0,1,2],[3,4,5]]: packs as 0,3,1,4,2,5.
        strided_tensor(U8, vec![3, 2], vec![1, 3], vec![0, 1, 2, 3, 4, 5]),
    ]
}

fn expected_bytes(seed: u8) -> Vec<Vec<u8>> {
    vec![
        pattern(60, seed),
        pattern(8, seed + 1),
        Vec::new(),
        pattern(2 << 20, seed + 2),
        vec![0, 3, 1, 4, 2, 5],
    ]
}

fn expected_total(seed: u8) -> u64 {
    expected_bytes(seed).iter().map(|b| b.len() as u64).sum()
}

fn check(tensors: &[Tensor], seed: u8) -> Result<(), String> {
    let got: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.host_bytes().map(<[u8]>::to_vec).unwrap_or_default())
        .collect();
    if got != expected_bytes(seed) {
        return Err(format!("bytes differ for seed {seed}"));
    }
    let shapes: Vec<Vec<i64>> = tensors.iter().map(|t| t.meta().shape.to_vec()).collect();
    if shapes != vec![vec![3, 5], vec![], vec![0, 4], vec![1 << 20], vec![3, 2]] {
        return Err(format!("shapes differ: {shapes:?}"));
    }
    Ok(())
}

/// Runs a child role and returns its `RESULT ...` line (asserting it exited 0).
fn run_child(test: &str, role: &str, env: &[(&str, String)]) -> String {
    let out = spawn_child(test, role, env).wait_with_output().unwrap();
    let line = BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.find("RESULT").map(|i| l[i..].to_string()))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "child {role} exited with {:?}: {line}",
        out.status
    );
    line
}

/// Child role: fetch every object in OBJECTS (id:record:seed, comma separated)
/// from several threads at once, check every byte and the counters.
fn consumer() {
    let ctx = Context::new(transport_only(b"node-a", b"consumer")).unwrap();
    let objects: Vec<(ObjectId, Vec<u8>, u8)> = std::env::var("OBJECTS")
        .unwrap()
        .split(',')
        .map(|o| {
            let mut parts = o.split(':');
            let id = ObjectId::from_slice(&unhex(parts.next().unwrap())).unwrap();
            let record = unhex(parts.next().unwrap());
            (id, record, parts.next().unwrap().parse().unwrap())
        })
        .collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = objects
            .iter()
            .map(|(id, record, seed)| {
                let ctx = &ctx;
                s.spawn(
                    move || match ctx.fetch(id, record, Duration::from_secs(20)) {
                        Ok(Fetched::Received(tensors)) => check(&tensors, *seed),
                        Ok(Fetched::Local(_)) => Err("got the producer's own object".into()),
                        Err(e) => Err(format!("err {:?} {}", e.kind(), e.message())),
                    },
                )
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        println!("RESULT {e}");
        return;
    }
    // Fetch the first object again: the producer is loaded already.
    let (id, record, seed) = &objects[0];
    match ctx.fetch(id, record, Duration::from_secs(20)) {
        Ok(Fetched::Received(t)) if check(&t, *seed).is_ok() => {}
        _ => return println!("RESULT second fetch failed"),
    }
    let expected: u64 = objects
        .iter()
        .map(|(_, _, s)| expected_total(*s))
        .sum::<u64>()
        + expected_total(*seed);
    let snap = ctx.fetch_stats(TransportKind::Nixl);
    if snap.bytes_received != expected
        || snap.transfers != objects.len() as u64 + 1
        || snap.errors != 0
    {
        return println!("RESULT counters {snap:?}, expected {expected} bytes");
    }
    println!("RESULT ok");
}

fn object_arg(objects: &[(ObjectId, Vec<u8>, u8)]) -> String {
    objects
        .iter()
        .map(|(id, rec, seed)| format!("{}:{}:{seed}", hex(id.as_bytes()), hex(rec)))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn nixl_between_processes() {
    if role().as_deref() == Some("consumer") {
        return consumer();
    }
    if !nixl_or_skip("nixl_between_processes") {
        return;
    }
    let _registry = registry_lock();
    let ctx = Context::new(transport_only(b"node-a", b"producer")).unwrap();
    let objects: Vec<(ObjectId, Vec<u8>, u8)> = (0..4u8)
        .map(|i| {
            let id = ObjectId([i + 1; 28]);
            let record = ctx
                .put(id, TransportKind::Nixl, None, sample_tensors(i * 10))
                .map_err(|r| r.error)
                .unwrap();
            (id, record, i * 10)
        })
        .collect();
    // Two consumer processes at once, each fetching the objects from four threads.
    let arg = object_arg(&objects);
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    run_child(
                        "nixl_between_processes",
                        "consumer",
                        &[("OBJECTS", arg.clone())],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r == "RESULT ok"), "{results:?}");
    // One-sided: the producer moved nothing itself.
    assert_eq!(stats::snapshot(TransportKind::Nixl).bytes_sent, 0);

    // The same process gets its own tensors back, not a copy.
    let (id, record, _) = &objects[1];
    match ctx.fetch(id, record, Duration::from_secs(1)).unwrap() {
        Fetched::Local(obj) => assert_eq!(
            obj.tensors[0].data_ptr(),
            ctx.store().get(id, Duration::ZERO).unwrap().tensors[0].data_ptr()
        ),
        Fetched::Received(_) => panic!("expected the producer's own tensors"),
    }
    // Another context of this process reads through the process's own agent.
    let other = Context::new(transport_only(b"node-a", b"other")).unwrap();
    match other.fetch(id, record, Duration::from_secs(5)).unwrap() {
        Fetched::Received(t) => check(&t, 10).unwrap(),
        Fetched::Local(_) => panic!("a different context must receive a copy"),
    }
    for (id, _, _) in &objects {
        assert!(ctx.free(id));
    }
}

#[test]
fn nixl_registration_cache_is_refcounted_per_object() {
    if !nixl_or_skip("nixl_registration_cache_is_refcounted_per_object") {
        return;
    }
    let _registry = registry_lock();
    let ctx = Context::new(transport_only(b"node-a", b"producer")).unwrap();
    let (ranges0, refs0) = nixl::registration_stats();
    // Two objects returning views of the same memory, plus an object of their own.
    let shared: Arc<Vec<u8>> = Arc::new(pattern(4096, 3));
    let view = |data: &Arc<Vec<u8>>| {
        let meta = TensorMeta::compact(U8, vec![4096]).unwrap();
        Tensor::from_owner(
            meta,
            DLDevice::cpu(),
            data.as_ptr() as *mut _,
            Box::new(data.clone()),
        )
    };
    let a = ObjectId([101; 28]);
    let b = ObjectId([102; 28]);
    let c = ObjectId([103; 28]);
    let rec_a = ctx
        .put(
            a,
            TransportKind::Nixl,
            None,
            vec![view(&shared), view(&shared)],
        )
        .map_err(|r| r.error)
        .unwrap();
    assert_eq!(
        nixl::registration_stats(),
        (ranges0 + 1, refs0 + 1),
        "one range, one reference for object a"
    );
    ctx.put(b, TransportKind::Nixl, None, vec![view(&shared)])
        .map_err(|r| r.error)
        .unwrap();
    assert_eq!(
        nixl::registration_stats(),
        (ranges0 + 1, refs0 + 2),
        "returning the same tensor again does not register again"
    );
    ctx.put(
        c,
        TransportKind::Nixl,
        None,
        vec![tensor_from_bytes(U8, vec![16], pattern(16, 1))],
    )
    .map_err(|r| r.error)
    .unwrap();
    assert_eq!(nixl::registration_stats(), (ranges0 + 2, refs0 + 3));
    assert!(ctx.free(&a));
    assert_eq!(nixl::registration_stats(), (ranges0 + 2, refs0 + 2));
    assert!(ctx.free(&b));
    assert!(ctx.free(&c));
    assert_eq!(
        nixl::registration_stats(),
        (ranges0, refs0),
        "freed objects leave no registration behind"
    );
    // A record's transport data is compact: agent, connection info, 1 registration, 2 descriptors.
    let meta = Metadata::decode(&rec_a).unwrap();
    println!(
        "nixl transport data of a 2-tensor object: {} bytes",
        meta.transport_data.len()
    );
    assert!(
        meta.transport_data.len() < 4096,
        "{} bytes",
        meta.transport_data.len()
    );
}

/// Child role: a producer that prints its records and lives until stdin closes.
fn short_lived_producer() {
    let ctx = Context::new(transport_only(b"node-a", b"doomed")).unwrap();
    for i in 0..2u8 {
        let id = ObjectId([200 + i; 28]);
        let record = ctx
            .put(id, TransportKind::Nixl, None, sample_tensors(i))
            .map_err(|r| r.error)
            .unwrap();
        println!("OBJECT {}:{}:{i}", hex(id.as_bytes()), hex(&record));
    }
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn nixl_dead_producer_is_a_clear_error_not_a_hang() {
    if role().as_deref() == Some("producer") {
        return short_lived_producer();
    }
    if !nixl_or_skip("nixl_dead_producer_is_a_clear_error_not_a_hang") {
        return;
    }
    let mut producer = spawn_child(
        "nixl_dead_producer_is_a_clear_error_not_a_hang",
        "producer",
        &[],
    );
    let objects: Vec<(ObjectId, Vec<u8>, u8)> = BufReader::new(producer.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.find("OBJECT ").map(|i| l[i + 7..].to_string()))
        .take(2)
        .map(|o| {
            let mut parts = o.split(':');
            (
                ObjectId::from_slice(&unhex(parts.next().unwrap())).unwrap(),
                unhex(parts.next().unwrap()),
                parts.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(objects.len(), 2, "the producer did not print its records");
    let ctx = Context::new(transport_only(b"node-a", b"consumer")).unwrap();
    // Connected and working while the producer lives.
    match ctx
        .fetch(&objects[0].0, &objects[0].1, Duration::from_secs(20))
        .unwrap()
    {
        Fetched::Received(t) => check(&t, objects[0].2).unwrap(),
        Fetched::Local(_) => panic!("expected a copy"),
    }
    producer.kill().unwrap();
    producer.wait().unwrap();
    let before = ctx.fetch_stats(TransportKind::Nixl);
    assert_eq!((before.transfers, before.errors), (1, 0));
    // The loaded producer died: the read fails within the timeout.
    let timeout = Duration::from_secs(5);
    for (id, record, _) in &objects {
        let start = Instant::now();
        let err = ctx
            .fetch(id, record, timeout)
            .err()
            .expect("reading from a dead producer must fail");
        let took = start.elapsed();
        println!(
            "dead producer: {:?} after {took:?}: {}",
            err.kind(),
            err.message()
        );
        assert!(took < timeout + HANG_SLACK, "took {took:?}");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::PeerGone
            ),
            "{err:?}"
        );
        assert!(err.message().contains("producer"), "{}", err.message());
    }
    // This context's own counters: no other test's fetch can change them.
    let after = ctx.fetch_stats(TransportKind::Nixl);
    assert_eq!((after.transfers, after.errors), (1, 2), "{after:?}");
    // A consumer process that never met the producer gets a clear error too.
    let line = run_child(
        "nixl_between_processes",
        "consumer",
        &[("OBJECTS", object_arg(&objects[1..]))],
    );
    assert!(
        line.starts_with("RESULT err") && line.contains("producer"),
        "{line}"
    );
}

#[test]
fn nixl_unresponsive_producer_times_out_not_hangs() {
    if role().as_deref() == Some("producer") {
        return short_lived_producer();
    }
    if !nixl_or_skip("nixl_unresponsive_producer_times_out_not_hangs") {
        return;
    }
    let mut producer = spawn_child(
        "nixl_unresponsive_producer_times_out_not_hangs",
        "producer",
        &[],
    );
    // Keep reading its stdout open until the end: the producer must stay alive.
    let mut out = BufReader::new(producer.stdout.take().unwrap()).lines();
    let lines: Vec<String> = out
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| l.find("OBJECT ").map(|i| l[i + 7..].to_string()))
        .take(2)
        .collect();
    let line = lines
        .first()
        .expect("the producer did not print its records");
    let mut parts = line.split(':');
    let id = ObjectId::from_slice(&unhex(parts.next().unwrap())).unwrap();
    let record = unhex(parts.next().unwrap());
    // Stopped, not dead: its endpoint still exists, its NIXL agent answers nothing.
    let pid = producer.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let ctx = Context::new(transport_only(b"node-a", b"consumer")).unwrap();
    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let result = ctx.fetch(&id, &record, timeout);
    let took = start.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        producer.try_wait().unwrap().is_none(),
        "the producer must have been alive (stopped) during the fetch"
    );
    producer.kill().unwrap();
    producer.wait().unwrap();
    drop(out);
    match result {
        Err(e) => {
            println!(
                "stopped producer: {:?} after {took:?}: {}",
                e.kind(),
                e.message()
            );
            assert!(took < timeout + HANG_SLACK, "took {took:?}");
            assert!(
                matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Transport),
                "{e:?}"
            );
        }
        // UCX may read a stopped process's memory without its help (CMA): fine too.
        Ok(Fetched::Received(t)) => check(&t, 0).unwrap(),
        Ok(Fetched::Local(_)) => panic!("expected a copy"),
    }
}

/// Child role: NIXL cannot be found; the transport must say so and the process live on.
fn without_nixl() {
    let ctx = Context::new(transport_only(b"node-a", b"nixl-less")).unwrap();
    let err = ctx
        .put(
            ObjectId([7; 28]),
            TransportKind::Nixl,
            None,
            sample_tensors(1),
        )
        .expect_err("put must fail without NIXL");
    assert_eq!(err.tensors.len(), 5, "the tensors are handed back");
    let unavailable = |e: &ray_rdt::testing::Error| {
        e.kind() == ErrorKind::Unavailable
            && e.message().contains("pip install nixl==1.5.1")
            && e.message().contains("RAY_RDT_NIXL_LIB")
    };
    assert!(unavailable(&err.error), "{:?}", err.error);
    // Fetching a (hand-made) nixl record fails the same way.
    let transport_data = nixl::record::Record {
        agent: "ray-rdt-elsewhere".into(),
        conn_md: vec![1],
        sections_md: vec![2],
        descs: vec![nixl::record::Desc {
            addr: 4096,
            len: 16,
            dev: 0,
            reg_id: 1,
        }],
    }
    .encode()
    .unwrap();
    let record = Metadata {
        transport: TransportKind::Nixl,
        device: DLDevice::cpu(),
        object: ObjectId([8; 28]),
        tensors: vec![TensorMeta::compact(U8, vec![16]).unwrap()],
        extents: vec![16],
        places: vec![Some(Place {
            extent: 0,
            offset: 0,
        })],
        producer: Producer {
            node_id: b"node-a".to_vec(),
            pid: 1,
            actor_id: Vec::new(),
            endpoint: "unix:@ray-rdt-nowhere".into(),
            ..Producer::default()
        },
        transport_data,
        inline: None,
    }
    .encode()
    .unwrap();
    let err = ctx
        .fetch(&ObjectId([8; 28]), &record, Duration::from_secs(1))
        .err()
        .expect("fetch must fail without NIXL");
    assert!(unavailable(&err), "{err:?}");
    // Objects of empty tensors need no NIXL at all.
    let empty = vec![tensor_from_bytes(U8, vec![0], Vec::new())];
    let record = ctx
        .put(ObjectId([9; 28]), TransportKind::Nixl, None, empty)
        .map_err(|r| r.error)
        .unwrap();
    let other = Context::new(transport_only(b"node-a", b"other")).unwrap();
    match other
        .fetch(&ObjectId([9; 28]), &record, Duration::from_secs(1))
        .unwrap()
    {
        Fetched::Received(t) => assert_eq!(t[0].meta().shape.as_slice(), [0]),
        Fetched::Local(_) => panic!("expected a copy"),
    }
    println!("RESULT ok {}", err.message());
}

#[test]
fn nixl_missing_is_a_clear_error_and_the_process_lives() {
    if role().as_deref() == Some("without-nixl") {
        return without_nixl();
    }
    let line = run_child(
        "nixl_missing_is_a_clear_error_and_the_process_lives",
        "without-nixl",
        &[
            ("RAY_RDT_NIXL_LIB", "/nonexistent/libnixl_capi.so".into()),
            ("RAY_RDT_NIXL_NO_SEARCH", "1".into()),
        ],
    );
    assert!(line.starts_with("RESULT ok"), "{line}");
    println!("{line}");
}
