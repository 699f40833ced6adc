//! Node-local sharing between real processes (src/engine/node_share.rs).
//!
//! The producer is this test process with host identity `host-a` and a TCP
//! endpoint on loopback; the consumers are child processes with host identity
//! `host-b`: to the plugin the producer is on another host (they reach it over
//! TCP, the object takes the network path), while the consumers share one
//! network namespace, i.e. one node (they meet at abstract sockets). Children
//! are driven line by line ([`Driven`]); the test that must see one consumer
//! read while another waits holds the first at hold points (src/hold.rs):
//! `fetch` (in its network read) and `share_wait` (a follower's request
//! arrived at its node copy).
//!
//! The producer's counters are process-wide, so the tests of this binary run
//! one at a time ([`serial`]).

mod multiprocess;

use multiprocess::*;
use ray_rdt::dlpack::DLDevice;
use ray_rdt::testing::nixl::record::Record;
use ray_rdt::testing::stats::{self, Path};
use ray_rdt::testing::{Context, ContextConfig, Fetched, Metadata, NodeShareSettings};
use ray_rdt::testing::{ObjectId, Target, Tensor, TransportKind};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Host identities: the producer's and the consumers' node.
const HOST_A: &[u8] = b"node-share-test-host-a";
const HOST_B: &[u8] = b"node-share-test-host-b";
/// Child environment: `0` turns the consumer's sharing off.
const SHARING: &str = "NODE_SHARE_TEST_SHARING";
/// Child environment: the consumer's linger in milliseconds.
const LINGER_MS: &str = "NODE_SHARE_TEST_LINGER_MS";
/// Child environment: the most bytes the consumer holds in node copies.
const MAX_BYTES: &str = "NODE_SHARE_TEST_MAX_BYTES";

/// One test at a time: the producer's counters are this process's.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test object of `seed`: a 4 MiB tensor, a small matrix, an empty
/// tensor, a transposed (strided) one and a 1 MiB tensor of its own
/// allocation: several extents. Returns the tensors and their packed bytes.
fn sample(seed: u8) -> (Vec<Tensor>, Vec<Vec<u8>>) {
    let big = pattern(4 << 20, seed);
    let small = pattern(60, seed.wrapping_add(1));
    let other = pattern(1 << 20, seed.wrapping_add(2));
    let tensors = vec![
        tensor_from_bytes(U8, vec![4 << 20], big.clone()),
        tensor_from_bytes(F32, vec![3, 5], small.clone()),
        tensor_from_bytes(U8, vec![0, 4], Vec::new()),
        strided_tensor(U8, vec![3, 2], vec![1, 3], vec![0, 1, 2, 3, 4, 5]),
        tensor_from_bytes(F32, vec![1 << 18], other.clone()),
    ];
    let expected = vec![big, small, Vec::new(), vec![0, 3, 1, 4, 2, 5], other];
    (tensors, expected)
}

fn total(seed: u8) -> u64 {
    sample(seed).1.iter().map(|b| b.len() as u64).sum()
}

fn object_id(seed: u8) -> ObjectId {
    let mut id = [0x5e; 28];
    id[0] = seed;
    id[1] = std::process::id() as u8;
    ObjectId(id)
}

/// The socket where the consumers of one node meet for object `id`, if one
/// is bound in this network namespace (`/proc/net/unix`).
fn share_socket_bound(id: &ObjectId) -> bool {
    let needle = format!("@ray-rdt-share-{id}-");
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .any(|l| l.contains(&needle))
}

/// Waits (at most 20 s) until no socket is bound for `id`; whether it went.
fn share_socket_gone(id: &ObjectId) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while share_socket_bound(id) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// One consumer process's side of the protocol.
struct Consumer {
    ctx: Context,
    rank: usize,
}

impl Consumer {
    fn new(rank: usize) -> Consumer {
        let setting = |name: &str| std::env::var(name).ok();
        let config = ContextConfig {
            inline_bytes: 0,
            host_id: HOST_B.to_vec(),
            node_share: NodeShareSettings {
                enabled: setting(SHARING).as_deref() != Some("0"),
                linger: Duration::from_millis(
                    setting(LINGER_MS).map_or(60_000, |v| v.parse().unwrap()),
                ),
                max_bytes: setting(MAX_BYTES).map_or(1 << 30, |v| v.parse().unwrap()),
            },
            ..ContextConfig::same_host(b"node-b", format!("consumer{rank}").as_bytes())
        };
        Consumer {
            ctx: Context::new(config).unwrap(),
            rank,
        }
    }

    fn outcome(result: ray_rdt::testing::Error) -> String {
        format!("ERR {:?} {}", result.kind(), result.message())
    }

    /// Into new tensors, every byte checked; then the consumer changes its
    /// tensors (which must not change what other consumers get).
    fn fetch(&self, id: &ObjectId, record: &[u8], seed: u8) -> String {
        match self.ctx.fetch(id, record, TIMEOUT) {
            Ok(Fetched::Received(tensors)) => {
                let got: Vec<Vec<u8>> = tensors
                    .iter()
                    .map(|t| t.host_bytes().unwrap().to_vec())
                    .collect();
                for t in &tensors {
                    // SAFETY: the fetch's own tensors, host memory of their size.
                    unsafe {
                        std::ptr::write_bytes(
                            t.data_ptr() as *mut u8,
                            0xee,
                            t.meta().nbytes as usize,
                        )
                    };
                }
                if got == sample(seed).1 {
                    "OK".into()
                } else {
                    "ERR mismatch".into()
                }
            }
            Ok(Fetched::Local(_)) => "ERR local".into(),
            Err(e) => Self::outcome(e),
        }
    }

    /// Into targets (one buffer each, filled with a sentinel first), every
    /// byte checked; then the consumer changes its targets (which must not
    /// change what other consumers get).
    fn fetch_into(&self, id: &ObjectId, record: &[u8], seed: u8) -> String {
        let meta = Metadata::decode(record).unwrap();
        let mut buffers: Vec<Vec<u8>> = meta
            .tensors
            .iter()
            .map(|m| vec![0xa5; m.nbytes as usize])
            .collect();
        let targets: Vec<Target> = meta
            .tensors
            .iter()
            .zip(&mut buffers)
            .map(|(m, b)| Target {
                meta: m.to_compact(),
                device: DLDevice::cpu(),
                addr: b.as_mut_ptr() as usize,
            })
            .collect();
        let outcome = match self.ctx.fetch_into(id, &meta, &targets, TIMEOUT) {
            Ok(()) if buffers == sample(seed).1 => "OK".into(),
            Ok(()) => "ERR mismatch".into(),
            Err(e) => Self::outcome(e),
        };
        buffers.iter_mut().for_each(|b| b.fill(0xee));
        outcome
    }

    /// This process's counters of `kind`: network bytes received and errors,
    /// node-copy bytes received, sent and errors.
    fn stats(kind: TransportKind) -> String {
        let net = stats::snapshot_path(kind, Path::Network);
        let node = stats::snapshot_path(kind, Path::NodeCopy);
        format!(
            "{} {} {} {} {}",
            net.bytes_received, net.errors, node.bytes_received, node.bytes_sent, node.errors
        )
    }

    fn handle(&self, line: &str) -> String {
        let w: Vec<&str> = line.split_whitespace().collect();
        let object =
            |id: &str, record: &str| (ObjectId::from_slice(&unhex(id)).unwrap(), unhex(record));
        match w.as_slice() {
            ["JOIN", name, world, addr] => match self.ctx.create_group(
                TransportKind::Gloo,
                name,
                self.rank,
                world.parse().unwrap(),
                addr,
                TIMEOUT,
                None,
            ) {
                Ok(()) => "JOINED".into(),
                Err(e) => Self::outcome(e),
            },
            ["FETCH", id, record, seed] => {
                let (id, record) = object(id, record);
                self.fetch(&id, &record, seed.parse().unwrap())
            }
            ["INTO", id, record, seed] => {
                let (id, record) = object(id, record);
                self.fetch_into(&id, &record, seed.parse().unwrap())
            }
            ["STATS", kind] => {
                Self::stats(TransportKind::from_code(kind.parse().unwrap()).unwrap())
            }
            ["FDS"] => std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .count()
                .to_string(),
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// A consumer's counters of one transport (see [`Consumer::stats`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Counted {
    network: u64,
    network_errors: u64,
    node_copy: u64,
    node_copy_sent: u64,
    node_copy_errors: u64,
}

/// The test's side: the producer context, the consumers and their hold
/// directory.
struct Cluster {
    producer: Context,
    consumers: Vec<Driven>,
    holds: PathBuf,
    kind: TransportKind,
}

impl Cluster {
    /// The producer and one consumer per entry of `envs` (extra environment
    /// of each), joined in a gloo group `g` for gloo.
    fn start(test: &str, kind: TransportKind, envs: &[&[(&str, String)]]) -> Cluster {
        let holds = holds_dir(test);
        std::fs::create_dir_all(&holds).unwrap();
        let producer = Context::new(ContextConfig {
            node_ip: Some("127.0.0.1".parse().unwrap()),
            inline_bytes: 0,
            host_id: HOST_A.to_vec(),
            ..ContextConfig::same_host(b"node-a", b"producer")
        })
        .unwrap();
        let consumers = envs
            .iter()
            .enumerate()
            .map(|(i, env)| Driven::spawn(test, &(i + 1).to_string(), env))
            .collect();
        let mut cluster = Cluster {
            producer,
            consumers,
            holds,
            kind,
        };
        if kind == TransportKind::Gloo {
            cluster.join_gloo();
        }
        cluster
    }

    fn join_gloo(&mut self) {
        let addr = self.producer.serve_rendezvous("127.0.0.1").unwrap();
        let world = self.consumers.len() + 1;
        for c in &mut self.consumers {
            c.send(&format!("JOIN g {world} {addr}"));
        }
        self.producer
            .create_group(TransportKind::Gloo, "g", 0, world, &addr, TIMEOUT, None)
            .unwrap();
        for c in &mut self.consumers {
            assert_eq!(c.reply(), "JOINED");
        }
    }

    /// Puts the object of `seed`; its ID and record.
    fn put(&self, seed: u8) -> (ObjectId, Vec<u8>) {
        let id = object_id(seed);
        let group = (self.kind == TransportKind::Gloo).then_some("g");
        let record = self
            .producer
            .put(id, self.kind, group, sample(seed).0)
            .map_err(|r| r.error)
            .unwrap();
        (id, record)
    }

    fn pid(&self, consumer: usize) -> u32 {
        self.consumers[consumer].child.id()
    }

    fn wait_reached(&self, point: &str, consumer: usize) {
        wait_reached(&self.holds, point, self.pid(consumer));
    }

    /// Consumer 0 (holding at `fetch,share_wait`) runs `leader`, and is held
    /// in its network read; then consumer 1 runs `follower`, whose request is
    /// held waiting at consumer 0's node copy. Returns with both held.
    fn follower_waits_on_leader(&mut self, leader: &str, follower: &str) {
        self.consumers[0].send(leader);
        self.wait_reached("fetch", 0);
        self.consumers[1].send(follower);
        self.wait_reached("share_wait", 0);
    }

    /// Lets consumer 0 go on from both of its hold points.
    fn release_leader(&self) {
        self.release("fetch", 0);
        self.release("share_wait", 0);
    }

    fn release(&self, point: &str, consumer: usize) {
        let file = format!("{point}-{}.release", self.pid(consumer));
        std::fs::write(self.holds.join(file), b"").unwrap();
    }

    fn counted(&mut self, consumer: usize) -> Counted {
        let line = self.consumers[consumer].call(&format!("STATS {}", self.kind.code()));
        let n: Vec<u64> = line.split(' ').map(|v| v.parse().unwrap()).collect();
        Counted {
            network: n[0],
            network_errors: n[1],
            node_copy: n[2],
            node_copy_sent: n[3],
            node_copy_errors: n[4],
        }
    }

    fn fds(&mut self, consumer: usize) -> usize {
        self.consumers[consumer].call("FDS").parse().unwrap()
    }

    /// The producer's network bytes sent and fetches served, so far.
    fn producer_served(&self) -> (u64, u64) {
        (
            stats::snapshot_path(self.kind, Path::Network).bytes_sent,
            stats::endpoint_snapshot().fetches_served,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.consumers {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.holds);
    }
}

/// The hold directory of `test`'s consumers.
fn holds_dir(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ray-rdt-node-share-{}-{test}", std::process::id()))
}

/// Environment that makes a consumer of `test` hold at `points` (the leader:
/// `fetch,share_wait`).
fn hold_env(test: &str, points: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            ray_rdt::testing::hold::DIR_ENV,
            holds_dir(test).display().to_string(),
        ),
        (ray_rdt::testing::hold::POINTS_ENV, points.to_string()),
    ]
}

fn command(verb: &str, id: &ObjectId, record: &[u8], seed: u8) -> String {
    format!("{verb} {} {} {seed}", hex(id.as_bytes()), hex(record))
}

/// Runs test `test` over `kind` with one consumer per entry of `envs`: in a
/// child, its consumer role; else `body` with the cluster (one test at a
/// time; a nixl test is skipped where NIXL cannot run, see tests/nixl.rs).
fn with_cluster(
    test: &str,
    kind: TransportKind,
    envs: &[&[(&str, String)]],
    body: impl FnOnce(Cluster),
) {
    if let Some(rank) = role() {
        let consumer = Consumer::new(rank.parse().unwrap());
        serve_lines(|line| consumer.handle(line))
    }
    if kind == TransportKind::Nixl && !nixl_or_skip(test) {
        return;
    }
    let _serial = serial();
    body(Cluster::start(test, kind, envs))
}

/// Three consumers of one node, one object over gloo: the first reads it from
/// the producer (held in its read until the second's request waits at its node
/// copy), the second lands it in targets from the node copy meanwhile, the
/// third takes new tensors from the node copy later (after the first changed
/// its own tensors). The producer served one fetch; every consumer has every
/// byte; the counters say who read what.
#[test]
fn consumers_of_one_node_share_one_read() {
    one_read_shared("consumers_of_one_node_share_one_read", 11, "FETCH");
}

/// As [`consumers_of_one_node_share_one_read`], the first consumer reading
/// into its targets: it reads straight into them, and the node copy the
/// others get is made out of them before it has them back (it then changes
/// them).
#[test]
fn a_leader_reading_into_its_targets_shares_a_copy_of_them() {
    one_read_shared(
        "a_leader_reading_into_its_targets_shares_a_copy_of_them",
        13,
        "INTO",
    );
}

fn one_read_shared(test: &str, seed: u8, leader_verb: &str) {
    let leader = hold_env(test, "fetch,share_wait");
    with_cluster(test, TransportKind::Gloo, &[&leader, &[], &[]], |mut c| {
        let (id, record) = c.put(seed);
        let before = c.producer_served();

        c.follower_waits_on_leader(
            &command(leader_verb, &id, &record, seed),
            &command("INTO", &id, &record, seed),
        );
        c.release_leader();
        assert_eq!(c.consumers[0].reply(), "OK");
        assert_eq!(c.consumers[1].reply(), "OK");
        assert_eq!(
            c.consumers[2].call(&command("FETCH", &id, &record, seed)),
            "OK"
        );

        let after = c.producer_served();
        let n = total(seed);
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (n, 1),
            "the producer sent the object once"
        );
        let leader = Counted {
            network: n,
            node_copy_sent: 2 * n,
            ..Counted::default()
        };
        assert_eq!(c.counted(0), leader);
        for follower in [1, 2] {
            let follower_counted = Counted {
                node_copy: n,
                ..Counted::default()
            };
            assert_eq!(c.counted(follower), follower_counted, "consumer {follower}");
        }
        assert!(share_socket_bound(&id), "the node copy lingers");
    });
}

/// With sharing off every consumer reads from the producer.
#[test]
fn sharing_off_reads_once_per_consumer() {
    let off = [(SHARING, "0".to_string())];
    let test = "sharing_off_reads_once_per_consumer";
    with_cluster(test, TransportKind::Gloo, &[&off, &off], |mut c| {
        let seed = 12;
        let (id, record) = c.put(seed);
        let before = c.producer_served();
        for consumer in &mut c.consumers {
            consumer.send(&command("FETCH", &id, &record, seed));
        }
        for consumer in &mut c.consumers {
            assert_eq!(consumer.reply(), "OK");
        }
        let after = c.producer_served();
        let n = total(seed);
        assert_eq!((after.0 - before.0, after.1 - before.1), (2 * n, 2));
        for consumer in 0..2 {
            let got = c.counted(consumer);
            assert_eq!((got.network, got.node_copy), (n, 0), "consumer {consumer}");
        }
        assert!(!share_socket_bound(&id));
    });
}

/// A consumer whose node copies would pass its byte bound reads unshared (no
/// node copy), but takes the object from another consumer's node copy when
/// there is one.
#[test]
fn over_the_byte_bound_a_consumer_reads_unshared_or_follows() {
    let small = [(MAX_BYTES, "1000".to_string())];
    let test = "over_the_byte_bound_a_consumer_reads_unshared_or_follows";
    let leader = hold_env(test, "fetch,share_wait");
    with_cluster(test, TransportKind::Gloo, &[&small, &leader], |mut c| {
        let seed = 15;
        let (id, record) = c.put(seed);
        let n = total(seed);
        let fetch = command("FETCH", &id, &record, seed);
        assert_eq!(c.consumers[0].call(&fetch), "OK");
        assert!(!share_socket_bound(&id), "a node copy over the bound");
        // Consumer 1 reads (held in its read) and consumer 0 asks for its copy.
        c.consumers[1].send(&fetch);
        c.wait_reached("fetch", 1);
        c.consumers[0].send(&fetch);
        c.wait_reached("share_wait", 1);
        c.release("fetch", 1);
        c.release("share_wait", 1);
        assert_eq!(c.consumers[1].reply(), "OK");
        assert_eq!(c.consumers[0].reply(), "OK");
        let got = c.counted(0);
        assert_eq!((got.network, got.node_copy), (n, n));
    });
}

/// Fetches object `seed` into consumer `consumer` and waits until its node
/// copy is dropped: from then on the consumer holds its connections (and,
/// for nixl, its agent and the producer), so its descriptors can be
/// counted.
fn warm_up(c: &mut Cluster, consumer: usize, seed: u8) {
    let (id, record) = c.put(seed);
    assert_eq!(
        c.consumers[consumer].call(&command("FETCH", &id, &record, seed)),
        "OK"
    );
    assert!(share_socket_gone(&id));
}

/// A read no follower asked for is not kept: the reader's caller takes it
/// (no second copy), its socket closes at once, no descriptor stays behind,
/// and a consumer that comes later reads from the producer again.
#[test]
fn a_read_no_follower_asked_for_is_not_kept() {
    let test = "a_read_no_follower_asked_for_is_not_kept";
    with_cluster(test, TransportKind::Gloo, &[&[], &[]], |mut c| {
        warm_up(&mut c, 0, 20);
        let fds = c.fds(0);

        let seed = 21;
        let (id, record) = c.put(seed);
        for verb in ["INTO", "FETCH"] {
            assert_eq!(
                c.consumers[0].call(&command(verb, &id, &record, seed)),
                "OK"
            );
            // Its socket closes as the copy is dropped, on the endpoint's own
            // thread (a moment after the reply under load); a kept copy would
            // stay bound for the consumers' 60 s linger.
            assert!(
                share_socket_gone(&id),
                "{verb}: a node copy no one asked for was kept"
            );
        }
        assert_eq!(c.fds(0), fds, "descriptors left behind by the reads");

        let before = c.producer_served();
        assert_eq!(
            c.consumers[1].call(&command("FETCH", &id, &record, seed)),
            "OK"
        );
        let after = c.producer_served();
        assert_eq!(after.0 - before.0, total(seed), "a new leader reads again");
        let got = c.counted(1);
        assert_eq!((got.network, got.node_copy), (total(seed), 0));
    });
}

/// A node copy a follower asked for is dropped (its socket closed, its
/// descriptors with it) once its linger has passed.
#[test]
fn node_copy_is_dropped_after_its_linger() {
    let test = "node_copy_is_dropped_after_its_linger";
    let linger = [(LINGER_MS, "2000".to_string())];
    let leader: Vec<_> = hold_env(test, "fetch,share_wait")
        .into_iter()
        .chain(linger.clone())
        .collect();
    with_cluster(test, TransportKind::Gloo, &[&leader, &linger], |mut c| {
        let shared_read = |c: &mut Cluster, seed: u8| {
            let (id, record) = c.put(seed);
            let fetch = command("FETCH", &id, &record, seed);
            c.follower_waits_on_leader(&fetch, &fetch);
            c.release_leader();
            assert_eq!(c.consumers[0].reply(), "OK");
            assert_eq!(c.consumers[1].reply(), "OK");
            assert!(
                share_socket_bound(&id),
                "the node copy was not kept for its linger"
            );
            assert!(
                share_socket_gone(&id),
                "the node copy's socket outlived its linger"
            );
        };
        shared_read(&mut c, 22);
        let fds = c.fds(0);
        shared_read(&mut c, 23);
        assert_eq!(c.fds(0), fds, "descriptors left behind by the node copy");
    });
}

/// The leader is killed in its network read while a follower waits at its
/// node copy: the follower reads the object from the producer itself, within
/// its timeout, and nothing is left behind (no socket, no descriptor).
#[test]
fn follower_reads_from_the_producer_when_the_leader_dies() {
    let test = "follower_reads_from_the_producer_when_the_leader_dies";
    let leader = hold_env(test, "fetch,share_wait");
    let linger = [(LINGER_MS, "300".to_string())];
    with_cluster(test, TransportKind::Nixl, &[&leader, &linger], |mut c| {
        warm_up(&mut c, 1, 30);
        let fds = c.fds(1);

        let seed = 31;
        let (id, record) = c.put(seed);
        let fetch = command("FETCH", &id, &record, seed);
        c.follower_waits_on_leader(&fetch, &fetch);
        let killed = Instant::now();
        c.consumers[0].child.kill().unwrap();
        c.consumers[0].child.wait().unwrap();
        assert_eq!(c.consumers[1].reply(), "OK");
        assert!(killed.elapsed() < TIMEOUT, "took {:?}", killed.elapsed());

        let got = c.counted(1);
        let read = (got.network, got.node_copy, got.node_copy_errors);
        assert_eq!(read, (total(30) + total(seed), 0, 1), "{got:?}");
        assert!(!share_socket_bound(&id), "a socket was left behind");
        assert_eq!(c.fds(1), fds, "descriptors left behind in the follower");
    });
}

/// The leader's read fails (its record names memory the producer never
/// registered): the waiting follower gets the error, reads from the producer
/// itself, and the leader drops its node copy at once.
#[test]
fn follower_reads_from_the_producer_when_the_leaders_read_fails() {
    let test = "follower_reads_from_the_producer_when_the_leaders_read_fails";
    let leader = hold_env(test, "fetch,share_wait");
    with_cluster(test, TransportKind::Nixl, &[&leader, &[]], |mut c| {
        let seed = 41;
        let (id, record) = c.put(seed);
        let mut bad = Metadata::decode(&record).unwrap();
        let mut nixl = Record::decode(&bad.transport_data).unwrap();
        nixl.descs.iter_mut().for_each(|d| d.addr += 1 << 44);
        bad.transport_data = nixl.encode().unwrap();
        let bad = bad.encode().unwrap();

        c.follower_waits_on_leader(
            &command("FETCH", &id, &bad, seed),
            &command("INTO", &id, &record, seed),
        );
        c.release_leader();
        let leader = c.consumers[0].reply();
        assert!(leader.starts_with("ERR "), "{leader}");
        assert_eq!(c.consumers[1].reply(), "OK");
        assert!(share_socket_gone(&id), "the failed node copy was kept");

        let n = total(seed);
        let got = c.counted(1);
        assert_eq!(
            (got.network, got.node_copy, got.node_copy_errors),
            (n, 0, 1)
        );
        let leader = c.counted(0);
        assert_eq!((leader.network, leader.network_errors), (0, 1));
    });
}
