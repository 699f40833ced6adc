//! The shm transport between real processes: a producer context stores tensors,
//! child processes fetch them through the producer's endpoint.

mod multiprocess;

use multiprocess::*;
use ray_rdt::testing::{stats, ErrorKind, Metadata, ObjectId, TransportKind};
use ray_rdt::testing::{Context, Fetched};
use std::io::{BufRead, BufReader};
use std::time::Duration;

/// The tensors of a test object: several dtypes, a 0-d and an empty tensor, and
/// for odd seeds a strided view (which takes the segment path).
fn sample_tensors(seed: u8) -> Vec<ray_rdt::testing::Tensor> {
    let mut tensors = vec![
        tensor_from_bytes(F32, vec![3, 5], pattern(60, seed)),
        tensor_from_bytes(I64, vec![], pattern(8, seed + 1)),
        tensor_from_bytes(U8, vec![0, 4], Vec::new()),
        tensor_from_bytes(U8, vec![1 << 20], pattern(1 << 20, seed + 2)),
    ];
    if seed % 2 == 1 {
        // The transpose of a 2x3 u8 matrix [[0,1,2],[3,4,5]]: packs as 0,3,1,4,2,5.
        tensors.push(strided_tensor(
            U8,
            vec![3, 2],
            vec![1, 3],
            vec![0, 1, 2, 3, 4, 5],
        ));
    }
    tensors
}

fn expected_bytes(seed: u8) -> Vec<Vec<u8>> {
    let mut bytes = vec![
        pattern(60, seed),
        pattern(8, seed + 1),
        Vec::new(),
        pattern(1 << 20, seed + 2),
    ];
    if seed % 2 == 1 {
        bytes.push(vec![0, 3, 1, 4, 2, 5]);
    }
    bytes
}

/// Child role: fetch the object in RECORD and check every byte.
fn consumer() {
    let ctx = Context::new(transport_only(b"node-a", b"consumer")).unwrap();
    let id = ObjectId::from_slice(&unhex(&std::env::var("OBJECT").unwrap())).unwrap();
    let record = unhex(&std::env::var("RECORD").unwrap());
    let seed: u8 = std::env::var("SEED").unwrap().parse().unwrap();
    let fetch = || match ctx.fetch(&id, &record, Duration::from_secs(10)) {
        Ok(Fetched::Received(tensors)) => Ok(tensors),
        Ok(Fetched::Local(_)) => Err("local".to_string()),
        Err(e) => Err(format!("err {:?} {}", e.kind(), e.message())),
    };
    let bytes = |tensors: &[ray_rdt::testing::Tensor]| {
        tensors
            .iter()
            .map(|t| t.host_bytes().unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    // Fetch twice while the first result is alive (two segments), then again
    // after both are released (a pooled segment comes back): all stay intact.
    let result = fetch().and_then(|first| {
        let second = fetch()?;
        assert_eq!(bytes(&first), expected_bytes(seed));
        assert_eq!(bytes(&second), expected_bytes(seed));
        drop((first, second));
        let third = fetch()?;
        assert_eq!(bytes(&third), expected_bytes(seed));
        Ok(())
    });
    match result {
        Ok(()) => {
            let total: usize = expected_bytes(seed).iter().map(Vec::len).sum();
            assert_eq!(
                stats::snapshot(TransportKind::Shm).bytes_received,
                3 * total as u64
            );
            println!("RESULT ok");
        }
        Err(e) => println!("RESULT {e}"),
    }
}

fn run_consumer(id: &ObjectId, record: &[u8], seed: u8) -> String {
    let env = [
        ("OBJECT", hex(id.as_bytes())),
        ("RECORD", hex(record)),
        ("SEED", seed.to_string()),
    ];
    let child = spawn_child("shm_between_processes", "consumer", &env);
    let out = child.wait_with_output().unwrap();
    let line = BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.find("RESULT").map(|i| l[i..].to_string()))
        .unwrap_or_default();
    assert!(out.status.success(), "consumer failed: {line}");
    line
}

#[test]
fn shm_between_processes() {
    if role().as_deref() == Some("consumer") {
        return consumer();
    }
    let ctx = Context::new(transport_only(b"node-a", b"producer")).unwrap();
    // Several objects, fetched by concurrent consumer processes.
    let objects: Vec<(ObjectId, Vec<u8>, u8)> = [10u8, 20, 31, 41]
        .into_iter()
        .map(|seed| {
            let id = ObjectId([seed; 28]);
            let record = ctx
                .put(id, TransportKind::Shm, None, sample_tensors(seed))
                .unwrap();
            (id, record, seed)
        })
        .collect();
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = objects
            .iter()
            .map(|(id, rec, seed)| s.spawn(move || run_consumer(id, rec, *seed)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r == "RESULT ok"), "{results:?}");
    assert!(stats::snapshot(TransportKind::Shm).bytes_sent >= 4 * (1 << 20));

    // A record for an object the producer no longer holds gives a clear error.
    for (id, record, seed) in objects.iter().take(2) {
        assert!(ctx.free(id));
        let line = run_consumer(id, record, *seed);
        assert!(
            line.starts_with("RESULT err NotFound") && line.contains("not held by the producer"),
            "{line}"
        );
    }

    // The same process gets its own tensors back, not a copy.
    let (id, record, _) = &objects[2];
    match ctx.fetch(id, record, Duration::from_secs(1)).unwrap() {
        Fetched::Local(obj) => assert_eq!(
            obj.tensors[0].data_ptr(),
            ctx.store().get(id, Duration::ZERO).unwrap().tensors[0].data_ptr()
        ),
        Fetched::Received(_) => panic!("expected the producer's own tensors"),
    }
}

#[test]
fn shm_serves_other_nodes_of_this_host_and_refuses_other_hosts_and_dead_producers() {
    let producer = Context::new(transport_only(b"node-a", b"p")).unwrap();
    let id = ObjectId([9; 28]);
    let record = producer
        .put(id, TransportKind::Shm, None, sample_tensors(1))
        .unwrap();
    // Another Ray node on this host: same host identity, so shm works.
    let other_node = Context::new(transport_only(b"node-b", b"c")).unwrap();
    assert!(matches!(
        other_node
            .fetch(&id, &record, Duration::from_secs(5))
            .unwrap(),
        Fetched::Received(_)
    ));
    // The record as a producer on another host would write it.
    let mut meta = Metadata::decode(&record).unwrap();
    meta.producer.host_id = b"another-boot-id/net:1".to_vec();
    let remote = meta.encode().unwrap();
    let err = other_node
        .fetch(&id, &remote, Duration::from_secs(1))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.message().contains("same host"), "{err}");
    drop(producer);
    let consumer = Context::new(transport_only(b"node-a", b"c")).unwrap();
    let err = consumer
        .fetch(&id, &record, Duration::from_secs(1))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
    assert!(err.message().contains("gone"), "{err}");
}

/// Sets a flag when dropped: shows when the plugin released a tensor's memory.
struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn destroying_a_context_frees_its_objects_while_peers_stay_connected() {
    use ray_rdt::dlpack::DLDevice;
    let producer = Context::new(transport_only(b"node-a", b"p")).unwrap();
    let consumer = Context::new(transport_only(b"node-a", b"c")).unwrap();
    let freed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut data = vec![7u8; 64].into_boxed_slice();
    let meta = ray_rdt::testing::TensorMeta::compact(U8, vec![64]).unwrap();
    let ptr = data.as_mut_ptr() as *mut std::ffi::c_void;
    let tensor = ray_rdt::testing::Tensor::from_owner(
        meta,
        DLDevice::cpu(),
        ptr,
        Box::new((data, DropFlag(freed.clone()))),
    );
    let id = ObjectId([42; 28]);
    let record = producer
        .put(id, TransportKind::Shm, None, vec![tensor])
        .unwrap();
    // The consumer's pooled connection keeps a producer connection thread alive.
    assert!(matches!(
        consumer
            .fetch(&id, &record, Duration::from_secs(5))
            .unwrap(),
        Fetched::Received(_)
    ));
    assert!(!freed.load(std::sync::atomic::Ordering::SeqCst));
    drop(producer);
    assert!(
        freed.load(std::sync::atomic::Ordering::SeqCst),
        "the object outlived its context"
    );
    let err = consumer
        .fetch(&id, &record, Duration::from_secs(1))
        .err()
        .unwrap();
    // The pooled connection was closed with the context; a new one finds nothing.
    assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
}
