//! CUDA tensors through the plugin: the `nccl` and `cuda_ipc` transports, the
//! CUDA layer's library search and its errors.
//!
//! Tests named `gpu_*` need an NVIDIA GPU with its driver. They are
//! `#[ignore = "needs a CUDA GPU"]`: `cargo test` lists them as ignored, and
//! `cargo test --test cuda -- --include-ignored` (or `--ignored`), which is what
//! `ci/gpu-nightly` runs on a GPU machine, runs them; without a GPU they fail,
//! saying why, rather than pass having tested nothing. Every other test runs
//! everywhere, GPU or not.

mod multiprocess;

use multiprocess::*;
use ray_rdt::dlpack::{kDLCUDA, DLDevice};
use ray_rdt::testing::cuda::{self, driver, library, pool};
use ray_rdt::testing::cuda_ipc;
use ray_rdt::testing::{stats, ErrorKind, Metadata, ObjectId, Tensor, TensorMeta, TransportKind};
use ray_rdt::testing::{Context, ContextConfig, Fetched};
use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn oid(n: u8) -> ObjectId {
    ObjectId([n; 28])
}

fn context(name: &[u8]) -> Context {
    Context::new(ContextConfig::same_host(b"node-a", name)).expect("context")
}

/// The number of CUDA devices; panics, saying why, where there is none: a
/// `gpu_*` test must fail without a GPU, never pass having tested nothing.
fn require_gpu(test: &str) -> i32 {
    match driver::init().and_then(|_| driver::device_count()) {
        Ok(n) if n > 0 => n,
        Ok(_) => panic!(
            "{test} needs a CUDA GPU: the CUDA driver loaded but sees no device \
             (run the gpu_* tests on a GPU machine: ci/gpu-nightly)"
        ),
        Err(e) => panic!(
            "{test} needs a CUDA GPU: no usable GPU on this machine: {e} \
             (run the gpu_* tests on a GPU machine: ci/gpu-nightly)"
        ),
    }
}

/// [`spawn_child`] for the ignored `gpu_*` tests: the child runs its test with
/// `--include-ignored`, without which libtest would skip it and print no RESULT.
fn spawn_gpu_child(test_name: &str, role: &str, env: &[(&str, String)]) -> Child {
    spawn_child_with(test_name, role, env, &["--include-ignored"])
}

/// Counts drops of what a fake tensor owns.
#[derive(Clone, Default)]
struct Drops(Arc<AtomicUsize>);

struct Counted(Drops);

impl Drop for Counted {
    fn drop(&mut self) {
        (self.0).0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A tensor that claims to be on `cuda:0` at an address nobody dereferences
/// unless a GPU is there (for refusals and errors without one).
fn fake_cuda_tensor(shape: Vec<i64>, drops: &Drops) -> Tensor {
    let meta = TensorMeta::compact(F32, shape).unwrap();
    let data = if meta.nbytes == 0 {
        std::ptr::null_mut()
    } else {
        0x1000 as *mut _
    };
    Tensor::from_owner(
        meta,
        DLDevice {
            device_type: kDLCUDA,
            device_id: 0,
        },
        data,
        Box::new(Counted(drops.clone())),
    )
}

#[test]
fn cpu_tensors_are_refused_by_nccl_and_cuda_ipc() {
    let ctx = context(b"p");
    for (n, kind) in [(1, TransportKind::Nccl), (2, TransportKind::CudaIpc)] {
        let tensors = vec![tensor_from_bytes(U8, vec![4], vec![1, 2, 3, 4])];
        let rejected = ctx.put(oid(n), kind, Some("g"), tensors).unwrap_err();
        assert_eq!(rejected.error.kind(), ErrorKind::Unsupported);
        let msg = rejected.error.message();
        assert!(
            msg.contains("is a cpu tensor")
                && msg.contains("CUDA tensors")
                && msg.contains(kind.name()),
            "{msg}"
        );
        assert_eq!(rejected.tensors.len(), 1, "the tensor is handed back");
    }
    assert_eq!(ctx.store().num_objects(), 0);
}

#[test]
fn cuda_tensors_are_refused_by_shm_and_gloo() {
    let ctx = context(b"p");
    let drops = Drops::default();
    for (n, kind) in [(1, TransportKind::Shm), (2, TransportKind::Gloo)] {
        let rejected = ctx
            .put(
                oid(n),
                kind,
                Some("g"),
                vec![fake_cuda_tensor(vec![8], &drops)],
            )
            .unwrap_err();
        assert_eq!(rejected.error.kind(), ErrorKind::Unsupported);
        let msg = rejected.error.message();
        assert!(
            msg.contains("cuda:0 tensor") && msg.contains("\"nccl\""),
            "{msg}"
        );
        assert_eq!(rejected.tensors.len(), 1, "the tensor is handed back");
    }
    assert_eq!(
        drops.0.load(Ordering::SeqCst),
        2,
        "each dropped once, by us"
    );
}

#[test]
fn without_a_driver_cuda_transports_are_unavailable_and_the_process_lives() {
    if driver::init().is_ok() {
        println!("skipped: this machine has a CUDA driver (the gpu_* tests cover it)");
        return;
    }
    let ctx = context(b"p");
    let drops = Drops::default();
    for (n, kind) in [(1, TransportKind::CudaIpc), (2, TransportKind::Nixl)] {
        let rejected = ctx
            .put(oid(n), kind, None, vec![fake_cuda_tensor(vec![8], &drops)])
            .unwrap_err();
        assert_eq!(
            rejected.error.kind(),
            ErrorKind::Unavailable,
            "{kind:?}: {}",
            rejected.error
        );
        assert!(
            rejected.error.message().contains("libcuda.so.1"),
            "{}",
            rejected.error
        );
        assert_eq!(rejected.tensors.len(), 1, "handed back");
        drop(rejected.tensors);
    }
    assert_eq!(drops.0.load(Ordering::SeqCst), 2);
    // An NCCL group cannot form: Unavailable, on every rank alike.
    let address = ctx.serve_rendezvous("127.0.0.1").unwrap();
    let e = ctx
        .create_group(
            TransportKind::Nccl,
            "g",
            0,
            1,
            &address,
            Duration::from_secs(5),
            None,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(ctx
        .groups(TransportKind::Nccl)
        .unwrap()
        .group_names()
        .is_empty());
    // The report says the same, and the process is fine.
    let report = cuda::report();
    assert!(report.contains("\"driver\": {\"error\""), "{report}");
}

#[test]
fn missing_libraries_are_clear_errors() {
    if role().as_deref() == Some("no-cuda-libs") {
        let driver = library::driver().unwrap_err();
        let nccl = cuda::nccl::version().unwrap_err();
        let runtime = library::runtime().unwrap_err();
        let ok = [&driver, &nccl, &runtime]
            .iter()
            .all(|e| e.kind() == ErrorKind::Unavailable)
            && driver.message().contains("RAY_RDT_CUDA_DRIVER_LIB")
            && driver.message().contains("/nonexistent/libcuda.so.1")
            && nccl.message().contains("RAY_RDT_NCCL_LIB")
            && nccl.message().contains("nvidia-nccl-cu13")
            && runtime.message().contains("RAY_RDT_CUDA_LIB");
        let report = cuda::report();
        return println!(
            "RESULT {} | {} | {} | {report}",
            if ok { "ok" } else { "bad" },
            driver,
            nccl
        );
    }
    let out = spawn_child(
        "missing_libraries_are_clear_errors",
        "no-cuda-libs",
        &[
            (
                "RAY_RDT_CUDA_DRIVER_LIB",
                "/nonexistent/libcuda.so.1".into(),
            ),
            ("RAY_RDT_CUDA_LIB", "/nonexistent/libcudart.so.13".into()),
            ("RAY_RDT_NCCL_LIB", "/nonexistent/libnccl.so.2".into()),
            ("RAY_RDT_CUDA_NO_SEARCH", "1".into()),
        ],
    )
    .wait_with_output()
    .unwrap();
    assert!(out.status.success(), "the child died: {:?}", out.status);
    let line = result_line(&out.stdout);
    assert!(line.starts_with("RESULT ok"), "{line}");
    println!("{line}");
}

#[test]
fn the_finder_looks_in_the_wheels_of_the_python_prefix() {
    let prefix = std::env::temp_dir().join(format!("rdt-cuda-finder-{}", std::process::id()));
    let site = prefix.join("lib/python3.12/site-packages");
    for rel in [
        "nvidia/nccl/lib/libnccl.so.2",
        "nvidia/cu13/lib/libcudart.so.13",
    ] {
        let path = site.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
    }
    ray_rdt::testing::dylib::add_python_prefix(&prefix);
    let nccl = library::nccl_candidates();
    let ours = nccl
        .iter()
        .position(|p| p == &site.join("nvidia/nccl/lib/libnccl.so.2"));
    let bare = nccl.iter().position(|p| p.as_os_str() == "libnccl.so.2");
    assert!(ours.is_some() && ours < bare, "{nccl:?}");
    let rt = library::runtime_candidates();
    assert!(
        rt.contains(&site.join("nvidia/cu13/lib/libcudart.so.13")),
        "{rt:?}"
    );
    std::fs::remove_dir_all(&prefix).unwrap();
    // With the wheels of this repository's .venv (ci/setup), NCCL itself loads
    // without a GPU.
    match cuda::nccl::version() {
        Ok(v) => println!("NCCL {v} from {}", library::nccl().unwrap().path.display()),
        Err(e) => println!("NCCL not found here (no .venv with torch's wheels?): {e}"),
    }
}

/// Puts an object of empty CUDA tensors in `producer`; another context fetches it.
fn empty_object_round_trip(kind: TransportKind, n: u8) {
    let (producer, consumer) = (context(b"p"), context(b"c"));
    let drops = Drops::default();
    let record = producer
        .put(
            oid(n),
            kind,
            None,
            vec![
                fake_cuda_tensor(vec![0, 4], &drops),
                fake_cuda_tensor(vec![3, 0], &drops),
            ],
        )
        .map_err(|r| r.error)
        .unwrap();
    let meta = Metadata::decode(&record).unwrap();
    assert_eq!(meta.device.device_type, kDLCUDA);
    assert_eq!(meta.transport, kind);
    let Fetched::Received(tensors) = consumer.fetch(&oid(n), &record, TIMEOUT).unwrap() else {
        panic!("expected a copy");
    };
    let shapes: Vec<Vec<i64>> = tensors.iter().map(|t| t.meta().shape.to_vec()).collect();
    assert_eq!(shapes, vec![vec![0, 4], vec![3, 0]]);
    assert!(tensors.iter().all(|t| t.device().device_type == kDLCUDA));
    assert!(producer.free(&oid(n)));
    assert_eq!(drops.0.load(Ordering::SeqCst), 2);
}

#[test]
fn empty_cuda_objects_travel_without_touching_cuda() {
    empty_object_round_trip(TransportKind::CudaIpc, 1);
    empty_object_round_trip(TransportKind::Nixl, 2);
}

#[test]
fn cuda_ipc_refuses_a_producer_on_another_host() {
    let (producer, consumer) = (context(b"p"), context(b"c"));
    let drops = Drops::default();
    let record = producer
        .put(
            oid(9),
            TransportKind::CudaIpc,
            None,
            vec![fake_cuda_tensor(vec![0], &drops)],
        )
        .map_err(|r| r.error)
        .unwrap();
    let mut meta = Metadata::decode(&record).unwrap();
    meta.producer.host_id = b"another host".to_vec();
    let elsewhere = meta.encode().unwrap();
    let e = consumer
        .fetch(&oid(9), &elsewhere, TIMEOUT)
        .err()
        .expect("refused");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.message().contains("another host") && e.message().contains("\"nccl\""),
        "{e}"
    );
}

// ---- with a GPU ---------------------------------------------------------------

/// Device memory owned by a test tensor.
struct DeviceAlloc {
    ptr: u64,
    device: i32,
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        let _ = driver::free(self.device, self.ptr);
    }
}

/// A u8 CUDA tensor on `device` holding `data`, in its own allocation.
fn cuda_tensor(device: i32, data: &[u8]) -> Tensor {
    let ptr = driver::malloc(device, data.len()).unwrap();
    driver::upload(ptr, device, data).unwrap();
    let meta = TensorMeta::compact(U8, vec![data.len() as i64]).unwrap();
    Tensor::from_owner(
        meta,
        DLDevice {
            device_type: kDLCUDA,
            device_id: device,
        },
        ptr as usize as *mut _,
        Box::new(DeviceAlloc { ptr, device }),
    )
}

/// The bytes of a contiguous CUDA tensor.
fn bytes_of(t: &Tensor) -> Vec<u8> {
    let mut out = vec![0u8; t.meta().nbytes as usize];
    driver::download(&mut out, t.data_ptr() as u64, t.device().device_id).unwrap();
    out
}

fn result_line(stdout: &[u8]) -> String {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.find("RESULT").map(|i| l[i..].to_string()))
        .unwrap_or_default()
}

/// Child role: fetch RECORD (object ID 7) twice over cuda_ipc, check the bytes.
fn ipc_consumer() {
    let ctx = context(b"c");
    let record = unhex(&std::env::var("RECORD").unwrap());
    let expected = pattern(3 << 20, 5);
    for round in 0..2 {
        match ctx.fetch(&oid(7), &record, TIMEOUT) {
            Ok(Fetched::Received(t))
                if t.len() == 2 && t[0].meta().nbytes == 0 && bytes_of(&t[1]) == expected => {}
            Ok(_) => return println!("RESULT wrong bytes in round {round}"),
            Err(e) => return println!("RESULT err {:?} {e}", e.kind()),
        }
    }
    let s = stats::snapshot(TransportKind::CudaIpc);
    println!(
        "RESULT ok mappings={} bytes={} transfers={} errors={}",
        cuda_ipc::open_mappings(),
        s.bytes_received,
        s.transfers,
        s.errors
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cuda_ipc_between_processes() {
    if role().as_deref() == Some("ipc-consumer") {
        return ipc_consumer();
    }
    require_gpu("gpu_cuda_ipc_between_processes");
    let producer = context(b"p");
    let data = pattern(3 << 20, 5);
    let tensors = vec![tensor_from_bytes_cuda_empty(), cuda_tensor(0, &data)];
    let sent_before = stats::snapshot(TransportKind::CudaIpc).bytes_sent;
    let record = producer
        .put(oid(7), TransportKind::CudaIpc, None, tensors)
        .map_err(|r| r.error)
        .unwrap();
    let out = spawn_gpu_child(
        "gpu_cuda_ipc_between_processes",
        "ipc-consumer",
        &[("RECORD", hex(&record))],
    )
    .wait_with_output()
    .unwrap();
    let line = result_line(&out.stdout);
    // Two fetches of one object: one mapping of the producer's allocation,
    // every byte twice, nothing failed.
    assert_eq!(
        line,
        format!(
            "RESULT ok mappings=1 bytes={} transfers=2 errors=0",
            2 * data.len()
        ),
        "child: {:?}",
        out.status
    );
    // One-sided: the producer's process sent nothing itself.
    assert_eq!(
        stats::snapshot(TransportKind::CudaIpc).bytes_sent,
        sent_before
    );
    // Another context of this process copies without IPC.
    let c2 = context(b"c2");
    let Fetched::Received(t) = c2.fetch(&oid(7), &record, TIMEOUT).unwrap() else {
        panic!("expected a copy");
    };
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].meta().nbytes, 0);
    assert_eq!(t[1].device().device_type, kDLCUDA);
    assert_eq!(bytes_of(&t[1]), data);
    let s = c2.fetch_stats(TransportKind::CudaIpc);
    assert_eq!(
        (s.bytes_received, s.transfers, s.errors),
        (data.len() as u64, 1, 0)
    );
    drop(t);
    assert!(producer.free(&oid(7)));
}

fn tensor_from_bytes_cuda_empty() -> Tensor {
    fake_cuda_tensor(vec![0], &Drops::default())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_pool_reuses_blocks() {
    require_gpu("gpu_pool_reuses_blocks");
    // 5 MiB (a 6 MiB block): no other test here receives a size served by it,
    // so the counts below are relative to what the process cached before.
    let (blocks, _) = pool::cached(0);
    let data = pattern(5 << 20, 3);
    let first = pool::Lease::take(0, data.len()).unwrap();
    let ptr = first.ptr();
    driver::upload(ptr, 0, &data).unwrap();
    drop(first);
    assert_eq!(pool::cached(0).0, blocks + 1, "a returned block is cached");
    let again = pool::Lease::take(0, data.len()).unwrap();
    assert_eq!(again.ptr(), ptr, "the cached block is reused");
    assert_eq!(pool::cached(0).0, blocks);
    let mut back = vec![0u8; data.len()];
    driver::download(&mut back, again.ptr(), 0).unwrap();
    assert!(
        back == data,
        "the block's memory is the same, untouched while cached"
    );
    let bigger = pool::Lease::take(0, 64 << 20).unwrap();
    assert_ne!(bigger.ptr(), ptr);
    drop((again, bigger));
    assert_eq!(pool::cached(0).0, blocks + 2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_nccl_single_rank_group() {
    require_gpu("gpu_nccl_single_rank_group");
    cuda::current::set(0, 0);
    let ctx = context(b"p");
    let address = ctx.serve_rendezvous("127.0.0.1").unwrap();
    ctx.create_group(TransportKind::Nccl, "solo", 0, 1, &address, TIMEOUT, None)
        .unwrap();
    let tensor = cuda_tensor(0, &[1, 2, 3]);
    let ptr = tensor.data_ptr();
    let record = ctx
        .put(oid(3), TransportKind::Nccl, Some("solo"), vec![tensor])
        .map_err(|r| r.error)
        .unwrap();
    let meta = Metadata::decode(&record).unwrap();
    assert_eq!(meta.transport, TransportKind::Nccl);
    assert_eq!(meta.device.device_type, kDLCUDA);
    // Passing it back to its producer is the same memory, no transfer.
    match ctx.fetch(&oid(3), &record, TIMEOUT).unwrap() {
        Fetched::Local(obj) => {
            assert_eq!(obj.tensors.len(), 1);
            assert_eq!(obj.tensors[0].data_ptr(), ptr, "the producer's own tensor");
            assert_eq!(bytes_of(&obj.tensors[0]), [1, 2, 3]);
        }
        Fetched::Received(_) => panic!("passed back to its producer, it was copied"),
    }
    let s = ctx.fetch_stats(TransportKind::Nccl);
    assert_eq!((s.bytes_received, s.transfers, s.errors), (0, 0, 0));
    // A CPU tensor is refused with the guide's meaning, and handed back.
    let rejected = ctx
        .put(
            oid(4),
            TransportKind::Nccl,
            Some("solo"),
            vec![tensor_from_bytes(U8, vec![1], vec![0])],
        )
        .unwrap_err();
    let e = &rejected.error;
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.message()
            .contains("is a cpu tensor, which the nccl transport does not move"),
        "{e}"
    );
    assert_eq!(rejected.tensors.len(), 1, "the tensor is handed back");
    assert!(ctx.free(&oid(3)));
    ctx.destroy_group(TransportKind::Nccl, "solo").unwrap();
    assert!(ctx
        .groups(TransportKind::Nccl)
        .unwrap()
        .group_names()
        .is_empty());
    ctx.create_group(TransportKind::Nccl, "solo", 0, 1, &address, TIMEOUT, None)
        .expect("a destroyed group can be created again");
    // ... and used again.
    let record = ctx
        .put(
            oid(5),
            TransportKind::Nccl,
            Some("solo"),
            vec![cuda_tensor(0, &[4, 5])],
        )
        .map_err(|r| r.error)
        .unwrap();
    assert!(matches!(
        ctx.fetch(&oid(5), &record, TIMEOUT).unwrap(),
        Fetched::Local(_)
    ));
    ctx.destroy_group(TransportKind::Nccl, "solo").unwrap();
}

/// What the plugin says when a rank cannot join an NCCL group because another
/// rank of it is on the same device (`src/transport/nccl/mod.rs`).
const ONE_GPU_REFUSAL: &str = "(NCCL cannot form a communicator with two ranks on one GPU)";

/// The bytes of rank 0's object (ID 5) and of rank 1's (ID 6).
const RANK0_BYTES: usize = 8 << 20;
const RANK1_BYTES: usize = 4 << 20;

/// Child role: rank 1 of group "pair" on DEVICE. On one GPU it only tries to
/// join (and prints why it could not). Otherwise it puts its own object (ID
/// 6), prints its record, reads rank 0's record (ID 5) from stdin and fetches
/// it while rank 0 fetches this rank's object (crossing transfers), checks the
/// bytes, serves until rank 0 writes "done", and prints its counters.
fn nccl_rank1() {
    let device: i32 = std::env::var("DEVICE").unwrap().parse().unwrap();
    cuda::current::set(device, 0);
    let ctx = context(b"c");
    let address = std::env::var("RENDEZVOUS").unwrap();
    if let Err(e) = ctx.create_group(
        TransportKind::Nccl,
        "pair",
        1,
        2,
        &address,
        Duration::from_secs(20),
        None,
    ) {
        // On one line (NCCL's own detail, inside the message, may hold newlines).
        return println!(
            "RESULT join {:?} {}",
            e.kind(),
            e.message().replace('\n', " ")
        );
    }
    let record = match ctx.put(
        oid(6),
        TransportKind::Nccl,
        Some("pair"),
        vec![cuda_tensor(device, &pattern(RANK1_BYTES, 11))],
    ) {
        Ok(record) => record,
        Err(r) => return println!("RESULT put {:?} {}", r.error.kind(), r.error),
    };
    println!("RECORD {}", hex(&record));
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let theirs = unhex(line.trim());
    let outcome = match ctx.fetch(&oid(5), &theirs, TIMEOUT) {
        Ok(Fetched::Received(t))
            if t.len() == 1
                && t[0].device().device_id == device
                && bytes_of(&t[0]) == pattern(RANK0_BYTES, 9) =>
        {
            "ok".to_string()
        }
        Ok(_) => "wrong bytes".to_string(),
        Err(e) => format!("err {:?} {e}", e.kind()),
    };
    // Rank 0 may still be fetching this rank's object: serve until it is done.
    line.clear();
    let _ = std::io::stdin().read_line(&mut line);
    let s = stats::snapshot(TransportKind::Nccl);
    println!(
        "RESULT {outcome} received={} sent={} transfers={} errors={}",
        s.bytes_received, s.bytes_sent, s.transfers, s.errors
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_nccl_two_ranks() {
    if role().as_deref() == Some("nccl-rank1") {
        return nccl_rank1();
    }
    let devices = require_gpu("gpu_nccl_two_ranks");
    cuda::current::set(0, 0);
    let ctx = context(b"p");
    let address = ctx.serve_rendezvous("127.0.0.1").unwrap();
    let other = if devices >= 2 { 1 } else { 0 };
    let mut child = spawn_gpu_child(
        "gpu_nccl_two_ranks",
        "nccl-rank1",
        &[
            ("DEVICE", other.to_string()),
            ("RENDEZVOUS", address.clone()),
        ],
    );
    let joined = ctx.create_group(
        TransportKind::Nccl,
        "pair",
        0,
        2,
        &address,
        Duration::from_secs(20),
        None,
    );
    if devices < 2 {
        // NCCL cannot put two ranks of one communicator on one device: the
        // group fails to form, clearly and within the timeout, on both sides.
        println!(
            "one GPU here: NCCL cannot form a two-rank communicator on one device; checking that it fails clearly"
        );
        let e = joined.expect_err("two ranks on one GPU");
        assert!(
            matches!(e.kind(), ErrorKind::Transport | ErrorKind::Timeout),
            "{e}"
        );
        assert!(
            e.message()
                .starts_with("joining NCCL group \"pair\" as rank 0 of 2 on cuda:0: ")
                && e.message().ends_with(ONE_GPU_REFUSAL),
            "{e}"
        );
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let line = result_line(&out.stdout);
        assert!(
            (line.starts_with("RESULT join Transport ")
                || line.starts_with("RESULT join Timeout "))
                && line.contains("joining NCCL group \"pair\" as rank 1 of 2 on cuda:0: ")
                && line.ends_with(ONE_GPU_REFUSAL),
            "rank 1: {line:?} ({:?})",
            out.status
        );
        assert!(ctx
            .groups(TransportKind::Nccl)
            .unwrap()
            .group_names()
            .is_empty());
        return;
    }
    if let Err(e) = joined {
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        panic!(
            "rank 0 could not join: {e}; rank 1: {:?}",
            result_line(&out.stdout)
        );
    }
    let before = stats::snapshot(TransportKind::Nccl);
    let record = ctx
        .put(
            oid(5),
            TransportKind::Nccl,
            Some("pair"),
            vec![cuda_tensor(0, &pattern(RANK0_BYTES, 9))],
        )
        .map_err(|r| r.error)
        .unwrap();
    // Rank 1's record, from its stdout.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let theirs = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            drop(child.stdin.take());
            panic!(
                "rank 1 ended without a record ({:?}): {seen:?}",
                child.wait()
            );
        }
        if let Some(i) = line.find("RECORD ") {
            break unhex(line[i + "RECORD ".len()..].trim());
        }
        assert!(!line.contains("RESULT"), "rank 1: {line}");
        seen.push(line);
    };
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", hex(&record)).unwrap();
    // Crossing transfers: rank 1 fetches ours while we fetch theirs; each
    // rank takes one NCCL transfer at a time (a producer busy with its own
    // fetch answers "busy", and the consumer retries).
    let fetched = ctx.fetch(&oid(6), &theirs, TIMEOUT);
    let _ = writeln!(stdin, "done");
    drop(stdin);
    let rest: Vec<String> = stdout.lines().map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let line = rest
        .iter()
        .find_map(|l| l.find("RESULT").map(|i| l[i..].to_string()))
        .unwrap_or_default();
    let Fetched::Received(t) = fetched.unwrap() else {
        panic!("expected a copy from rank 1");
    };
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].device().device_type, kDLCUDA);
    assert_eq!(t[0].device().device_id, 0);
    assert!(
        bytes_of(&t[0]) == pattern(RANK1_BYTES, 11),
        "rank 1's bytes"
    );
    // Rank 1: received our object whole, sent its own once, nothing failed.
    assert_eq!(
        line,
        format!("RESULT ok received={RANK0_BYTES} sent={RANK1_BYTES} transfers=2 errors=0"),
        "rank 1 ({status:?}): {rest:?}"
    );
    // Rank 0 (this process): the same, the other way round.
    let s = ctx.fetch_stats(TransportKind::Nccl);
    assert_eq!(
        (s.bytes_received, s.transfers, s.errors),
        (RANK1_BYTES as u64, 1, 0)
    );
    let after = stats::snapshot(TransportKind::Nccl);
    assert_eq!(
        (
            after.bytes_sent - before.bytes_sent,
            after.bytes_received - before.bytes_received,
            after.transfers - before.transfers,
            after.errors - before.errors
        ),
        (RANK0_BYTES as u64, RANK1_BYTES as u64, 2, 0),
        "rank 0's counters: one object sent, one received"
    );
    drop(t);
    assert!(ctx.free(&oid(5)));
    ctx.destroy_group(TransportKind::Nccl, "pair").unwrap();
}
