//! The plugin endpoint against real peers: fetches over the TCP channel with
//! Ray's cluster token, refusals (no proof, wrong token, another uid), and
//! hostile peers (far more idle and slow connections than the bound, random and
//! mutated frames) against a producer in a child process whose threads and
//! descriptors are read from /proc.

// The tests that need collective groups (gloo) and their helpers only run
// in a build with the gloo feature.
#![cfg_attr(not(feature = "gloo"), allow(dead_code))]

mod multiprocess;

use multiprocess::*;
use ray_rdt::testing::{ClientPool, ClusterToken, Limits};
use ray_rdt::testing::{Context, ContextConfig, Fetched};
use ray_rdt::testing::{ErrorKind, Metadata, ObjectId, Tensor, TransportKind};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::{Child, ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TOKEN: &[u8] = b"the-cluster-token";

/// Limits of the hostile-peer producer: small, so that the test exceeds them.
const MAX_CONNECTIONS: usize = 16;
const DEADLINE_MS: u64 = 500;

fn config(actor: &[u8], token: Option<&[u8]>) -> ContextConfig {
    ContextConfig {
        node_ip: Some(LOOPBACK),
        token: ClusterToken::new(token),
        ..ContextConfig::same_host(b"node", actor)
    }
}

/// A record as a producer on another host would have written it: the consumer
/// must then use the producer's TCP endpoint.
fn as_if_remote(record: &[u8]) -> Vec<u8> {
    let mut meta = Metadata::decode(record).unwrap();
    meta.producer.host_id = b"another-boot-id/net:1".to_vec();
    meta.encode().unwrap()
}

fn sample(seed: u8) -> (Vec<Tensor>, Vec<u8>) {
    let bytes = pattern(3 << 20, seed);
    (
        vec![tensor_from_bytes(U8, vec![3 << 20], bytes.clone())],
        bytes,
    )
}

fn received_bytes(fetched: Fetched) -> Vec<u8> {
    match fetched {
        Fetched::Received(t) => t[0].host_bytes().unwrap().to_vec(),
        Fetched::Local(_) => panic!("expected a copy from the producer"),
    }
}

#[cfg(feature = "gloo")]
/// Joins `a` (rank 0) and `b` (rank 1) into gloo group `name`.
fn join_pair(a: &Context, b: &Context, name: &str) {
    let addr = a.serve_rendezvous("127.0.0.1").unwrap();
    std::thread::scope(|s| {
        let other =
            s.spawn(|| b.create_group(TransportKind::Gloo, name, 1, 2, &addr, TIMEOUT, None));
        a.create_group(TransportKind::Gloo, name, 0, 2, &addr, TIMEOUT, None)
            .unwrap();
        other.join().unwrap().unwrap();
    });
}

#[cfg(feature = "gloo")]
#[test]
fn gloo_fetch_over_tcp_proves_the_token_and_refuses_peers_without_it() {
    let producer = Context::new(config(b"p", Some(TOKEN))).unwrap();
    let consumer = Context::new(config(b"c", Some(TOKEN))).unwrap();
    assert!(producer.addresses().tcp.starts_with("tcp:127.0.0.1:"));
    assert!(producer.authenticated());
    join_pair(&producer, &consumer, "tcp");
    let (tensors, bytes) = sample(3);
    let id = ObjectId([3; 28]);
    let record = as_if_remote(
        &producer
            .put(id, TransportKind::Gloo, Some("tcp"), tensors)
            .unwrap(),
    );
    assert_eq!(
        received_bytes(consumer.fetch(&id, &record, TIMEOUT).unwrap()),
        bytes
    );

    // Peers without the token, or with another one, are refused before any
    // request is served; the producer keeps serving.
    let tcp = producer.addresses().tcp.clone();
    let none = ClientPool::new(ClusterToken::default(), Limits::from_env());
    let err = none.connect(&tcp, TIMEOUT).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::AuthRefused, "{err}");
    assert!(
        err.message().contains("requires Ray's cluster token"),
        "{err}"
    );
    let wrong = ClientPool::new(ClusterToken::new(Some(b"another")), Limits::from_env());
    let err = wrong.connect(&tcp, TIMEOUT).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::AuthRefused, "{err}");
    assert!(
        err.message()
            .contains("proof of Ray's cluster token is wrong"),
        "{err}"
    );

    // A legitimate fetch right after the refusals.
    let (tensors, bytes) = sample(4);
    let id = ObjectId([4; 28]);
    let record = as_if_remote(
        &producer
            .put(id, TransportKind::Gloo, Some("tcp"), tensors)
            .unwrap(),
    );
    assert_eq!(
        received_bytes(consumer.fetch(&id, &record, TIMEOUT).unwrap()),
        bytes
    );
}

#[test]
fn without_a_token_tcp_peers_are_served_and_a_token_holder_refuses_to_trust_them() {
    let producer = Context::new(config(b"p", None)).unwrap();
    assert!(!producer.authenticated());
    let tcp = producer.addresses().tcp.clone();
    let open = ClientPool::new(ClusterToken::default(), Limits::from_env());
    open.connect(&tcp, TIMEOUT).unwrap();
    // A process that holds a token expects its peers to prove it too.
    let holder = ClientPool::new(ClusterToken::new(Some(TOKEN)), Limits::from_env());
    let err = holder.connect(&tcp, TIMEOUT).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::AuthRefused, "{err}");
    assert!(err.message().contains("did not prove"), "{err}");
}

#[test]
fn unreachable_and_dead_producers_are_told_apart() {
    let producer = Context::new(config(b"p", Some(TOKEN))).unwrap();
    let tcp = producer.addresses().tcp.clone();
    drop(producer);
    let pool = ClientPool::new(ClusterToken::new(Some(TOKEN)), Limits::from_env());
    let err = pool.connect(&tcp, Duration::from_secs(2)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
    assert!(err.message().contains("nothing listens there"), "{err}");
    // A host that takes the connection and never answers: a timeout naming it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp:{}", silent.local_addr().unwrap());
    let start = Instant::now();
    let err = pool
        .connect(&address, Duration::from_millis(300))
        .err()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.message().contains(&address) && err.message().contains("timed out"),
        "{err}"
    );
}

/// Writes why a test did nothing, past libtest's output capture.
fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

/// Child role: connect to UNIX (an endpoint of another uid's process) and
/// print what happened.
fn connect_as_other_user() {
    let address = std::env::var("UNIX").unwrap();
    let pool = ClientPool::new(ClusterToken::default(), Limits::from_env());
    match pool.connect(&address, Duration::from_secs(5)) {
        Ok(_) => println!("RESULT served"),
        Err(e) => println!("RESULT {:?} {}", e.kind(), e.message()),
    }
}

#[test]
fn same_host_peers_of_another_uid_are_refused() {
    if role().as_deref() == Some("other-uid") {
        return connect_as_other_user();
    }
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return skip("same_host_peers_of_another_uid_are_refused needs root to start a process of another uid");
    }
    let producer = Context::new(ContextConfig::same_host(b"node", b"p")).unwrap();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    use std::os::unix::process::CommandExt;
    cmd.args([
        "--exact",
        "same_host_peers_of_another_uid_are_refused",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, "other-uid")
    .env("UNIX", producer.endpoint())
    .uid(65534)
    .gid(65534);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find("RESULT").map(|at| &l[at..]))
        .unwrap_or_default();
    assert!(line.starts_with("RESULT AuthRefused"), "{stdout}");
    assert!(line.contains("runs as uid 65534"), "{line}");
    // The producer still serves its own user.
    let pool = ClientPool::new(ClusterToken::default(), Limits::from_env());
    pool.connect(producer.endpoint(), TIMEOUT).unwrap();
}

/// The producer under attack, in a child process: its threads and descriptors
/// are read from /proc, apart from the attacker's own sockets.
struct Producer {
    child: Child,
    stdin: ChildStdin,
    unix: String,
    tcp: String,
    shm: (ObjectId, Vec<u8>),
    gloo: (ObjectId, Vec<u8>),
}

#[cfg(feature = "gloo")]
/// Child role: a producer with small limits in group "g" (rank 0) holding one
/// shm and one gloo object; prints its addresses and records, then serves
/// until its stdin closes.
fn producer_main() {
    let ctx = Context::new(config(b"producer", Some(TOKEN))).unwrap();
    let rendezvous = std::env::var("RENDEZVOUS").unwrap();
    ctx.create_group(TransportKind::Gloo, "g", 0, 2, &rendezvous, TIMEOUT, None)
        .unwrap();
    let shm = ctx
        .put(ObjectId([1; 28]), TransportKind::Shm, None, sample(1).0)
        .unwrap();
    let gloo = ctx
        .put(
            ObjectId([2; 28]),
            TransportKind::Gloo,
            Some("g"),
            sample(2).0,
        )
        .unwrap();
    println!(
        "READY {} {} {} {}",
        ctx.endpoint(),
        ctx.addresses().tcp,
        hex(&shm),
        hex(&gloo)
    );
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

impl Producer {
    /// Starts the producer for `test` and joins its group from `consumer`.
    fn start(test: &str, consumer: &Context) -> Producer {
        let rendezvous = consumer.serve_rendezvous("127.0.0.1").unwrap();
        let limits = [
            ("RAY_RDT_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string()),
            ("RAY_RDT_AUTH_TIMEOUT_MS", DEADLINE_MS.to_string()),
            ("RAY_RDT_FRAME_TIMEOUT_MS", DEADLINE_MS.to_string()),
            ("RENDEZVOUS", rendezvous.clone()),
        ];
        let mut child = spawn_child(test, "producer", &limits);
        consumer
            .create_group(TransportKind::Gloo, "g", 1, 2, &rendezvous, TIMEOUT, None)
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let line = read_ready(&mut stdout);
        let parts: Vec<&str> = line.split_whitespace().collect();
        let stdin = child.stdin.take().unwrap();
        Producer {
            unix: parts[1].to_owned(),
            tcp: parts[2].to_owned(),
            shm: (ObjectId([1; 28]), unhex(parts[3])),
            gloo: (ObjectId([2; 28]), as_if_remote(&unhex(parts[4]))),
            child,
            stdin,
        }
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .count()
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Legitimate fetches: shm over the same-host channel, gloo over TCP.
    fn fetch_both(&self, consumer: &Context) {
        let got = consumer.fetch(&self.shm.0, &self.shm.1, TIMEOUT).unwrap();
        assert_eq!(received_bytes(got), sample(1).1);
        let got = consumer.fetch(&self.gloo.0, &self.gloo.1, TIMEOUT).unwrap();
        assert_eq!(received_bytes(got), sample(2).1);
    }

    fn stop(mut self) {
        let _ = self.stdin.write_all(b"EXIT\n");
        let _ = self.child.wait();
    }
}

fn read_ready(stdout: &mut BufReader<ChildStdout>) -> String {
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the producer exited"
        );
        if let Some(at) = line.find("READY") {
            return line[at..].trim().to_owned();
        }
    }
}

fn unix_connect(address: &str) -> UnixStream {
    let name = address.strip_prefix("unix:@").unwrap();
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(name).unwrap()).unwrap()
}

fn tcp_connect(address: &str) -> TcpStream {
    TcpStream::connect(address.strip_prefix("tcp:").unwrap()).unwrap()
}

/// Whether the peer closed `stream` within `within` (EOF or reset).
fn closed_by_peer(
    stream: &mut impl Read,
    within: Duration,
    set: impl Fn(Option<Duration>),
) -> bool {
    set(Some(within));
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // the hello, or a notice
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timed out: still open
        }
    }
}

#[cfg(feature = "gloo")]
#[test]
fn idle_and_slow_peers_cannot_exhaust_the_endpoint() {
    if role().as_deref() == Some("producer") {
        return producer_main();
    }
    let consumer = Context::new(config(b"consumer", Some(TOKEN))).unwrap();
    let mut producer =
        Producer::start("idle_and_slow_peers_cannot_exhaust_the_endpoint", &consumer);
    producer.fetch_both(&consumer);
    let (threads, fds) = (producer.threads(), producer.fds());

    // Far more peers than the bound: idle ones (never a byte), and slow ones
    // that start a frame (same host) or the handshake (TCP) and stop.
    let idle_unix: Vec<UnixStream> = (0..120).map(|_| unix_connect(&producer.unix)).collect();
    let idle_tcp: Vec<TcpStream> = (0..120).map(|_| tcp_connect(&producer.tcp)).collect();
    let mut slow_unix: Vec<UnixStream> = (0..40)
        .map(|_| {
            let mut s = unix_connect(&producer.unix);
            // A peer told "busy" is closed already: writing may fail.
            let _ = s.write_all(&[200, 0]);
            s
        })
        .collect();
    let mut slow_tcp: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = tcp_connect(&producer.tcp);
            let _ = s.write_all(&[70, 0]);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Each served connection costs one thread and two descriptors (the socket
    // and the handle that closes it); a few more may be winding down.
    let slack = 4;
    assert!(
        producer.threads() <= threads + MAX_CONNECTIONS + slack,
        "threads {} -> {}",
        threads,
        producer.threads()
    );
    assert!(
        producer.fds() <= fds + 2 * MAX_CONNECTIONS + slack,
        "fds {} -> {}",
        fds,
        producer.fds()
    );
    // Legitimate consumers still get through (idle peers make room, busy
    // answers are retried until the slow ones hit their deadlines).
    producer.fetch_both(&consumer);
    // Slow peers were dropped at their deadline.
    let within = Duration::from_millis(DEADLINE_MS * 6);
    for s in slow_unix.iter_mut() {
        let clone = s.try_clone().unwrap();
        assert!(closed_by_peer(s, within, |t| clone
            .set_read_timeout(t)
            .unwrap()));
    }
    for s in slow_tcp.iter_mut() {
        let clone = s.try_clone().unwrap();
        assert!(closed_by_peer(s, within, |t| clone
            .set_read_timeout(t)
            .unwrap()));
    }
    assert!(producer.threads() <= threads + MAX_CONNECTIONS + slack);
    drop((idle_unix, idle_tcp, slow_unix, slow_tcp));
    // Once the peers are gone, so are their threads.
    let deadline = Instant::now() + Duration::from_secs(10);
    while producer.threads() > threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        producer.threads() <= threads,
        "{} > {threads}",
        producer.threads()
    );
    assert!(producer.alive());
    producer.stop();
}

/// A deterministic generator for the fuzz frames.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A random or mutated request: random bytes, or a real fetch request (with
/// the producer's object IDs) with a random transport part or random flips.
fn fuzz_frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let n = rng.below(64);
            rng.bytes(n)
        }
        kind => {
            let transport = rng.below(6) as u8;
            let mut frame = vec![1, transport];
            frame.extend_from_slice(&[(1 + rng.below(2)) as u8; 28]);
            let n = rng.below(48);
            frame.extend(rng.bytes(n));
            if kind == 3 {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(frame.len());
                    frame[at] ^= 1 << rng.below(8);
                }
            }
            frame
        }
    }
}

#[cfg(feature = "gloo")]
#[test]
fn random_and_mutated_frames_leave_the_producer_serving() {
    if role().as_deref() == Some("producer") {
        return producer_main();
    }
    let consumer = Context::new(config(b"consumer", Some(TOKEN))).unwrap();
    let mut producer = Producer::start(
        "random_and_mutated_frames_leave_the_producer_serving",
        &consumer,
    );
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let pool = ClientPool::new(ClusterToken::new(Some(TOKEN)), Limits::from_env());
    let short = Duration::from_millis(300);
    let started = Instant::now();
    let mut sent = 0;
    while sent < 3000 && started.elapsed() < Duration::from_secs(30) {
        // Admitted peers (both channels) sending garbage requests: each gets an
        // error reply, or the producer closes the connection.
        for address in [&producer.unix, &producer.tcp] {
            let mut channel = pool.connect(address, TIMEOUT).unwrap();
            for _ in 0..20 {
                if channel.send(&fuzz_frame(&mut rng), short).is_err()
                    || channel.recv(short).is_err()
                {
                    break;
                }
                sent += 1;
            }
        }
        // Unadmitted TCP peers: garbage handshakes, oversized and truncated frames.
        let mut raw = tcp_connect(&producer.tcp);
        let frame = match rng.below(3) {
            0 => {
                let n = rng.below(100);
                rng.bytes(n)
            }
            1 => u32::MAX.to_le_bytes().to_vec(),
            _ => [
                68u32.to_le_bytes().to_vec(),
                b"RDTP".to_vec(),
                rng.bytes(20),
            ]
            .concat(),
        };
        let _ = raw.write_all(&frame);
        sent += 1;
    }
    assert!(sent >= 500, "only {sent} frames in 30 s");
    assert!(producer.alive(), "the producer died");
    producer.fetch_both(&consumer);
    producer.stop();
}
