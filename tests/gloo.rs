//! The gloo transport between real processes: rank 0 (this test process) and
//! child processes driven line by line over their stdin/stdout.

mod multiprocess;

use multiprocess::*;
use ray_rdt::dlpack::{kDLBfloat, kDLBool, kDLComplex, kDLFloat, kDLInt, DLDataType};
use ray_rdt::testing::{stats, ObjectId, Tensor, TransportKind};
use ray_rdt::testing::{Context, Fetched};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// An object of several dtypes and shapes (0-d, empty, strided, 1 MiB), all
/// derived from `seed`; returns the tensors and their expected packed bytes.
fn sample(seed: u8) -> (Vec<Tensor>, Vec<Vec<u8>>) {
    let specs: Vec<(DLDataType, Vec<i64>)> = vec![
        (dtype(kDLFloat, 32), vec![7, 9]),
        (dtype(kDLInt, 64), vec![]),
        (dtype(kDLBfloat, 16), vec![0, 3]),
        (dtype(kDLBool, 8), vec![5]),
        (dtype(kDLComplex, 64), vec![2, 2, 2]),
        (dtype(kDLFloat, 16), vec![512, 1024]),
    ];
    let mut tensors = Vec::new();
    let mut expected = Vec::new();
    for (i, (dtype, shape)) in specs.into_iter().enumerate() {
        let n = shape.iter().product::<i64>() as usize * (dtype.bits as usize / 8);
        let bytes = pattern(n, seed.wrapping_add(i as u8));
        expected.push(bytes.clone());
        tensors.push(tensor_from_bytes(dtype, shape, bytes));
    }
    tensors.push(strided_tensor(
        dtype(kDLInt, 8),
        vec![3, 2],
        vec![1, 3],
        vec![0, 1, 2, 3, 4, 5],
    ));
    expected.push(vec![0, 3, 1, 4, 2, 5]);
    // The transpose of a 1200x1024 float32 matrix (4.7 MiB): sent in two chunks.
    let (rows, cols) = (1200usize, 1024usize);
    let data = pattern(rows * cols * 4, seed);
    let packed: Vec<u8> = (0..cols)
        .flat_map(|i| (0..rows).flat_map(move |j| (0..4).map(move |b| (j * cols + i) * 4 + b)))
        .map(|k| data[k])
        .collect();
    tensors.push(strided_tensor(
        dtype(kDLFloat, 32),
        vec![cols as i64, rows as i64],
        vec![1, cols as i64],
        data,
    ));
    expected.push(packed);
    (tensors, expected)
}

fn object_id(rank: usize, seed: u8) -> ObjectId {
    let mut id = [0u8; 28];
    id[0] = rank as u8;
    id[1] = seed;
    ObjectId(id)
}

/// One process's side of the test protocol (children run it on their stdin).
struct Node {
    ctx: Context,
    rank: usize,
}

impl Node {
    fn new(rank: usize) -> Node {
        Node {
            ctx: Context::new(transport_only(b"node", format!("rank{rank}").as_bytes())).unwrap(),
            rank,
        }
    }

    fn join(&self, name: &str, world: usize, addr: &str) -> String {
        match self.ctx.create_group(
            TransportKind::Gloo,
            name,
            self.rank,
            world,
            addr,
            TIMEOUT,
            None,
        ) {
            Ok(()) => "JOINED".into(),
            Err(e) => format!("ERR {:?} {e}", e.kind()),
        }
    }

    fn put(&self, seed: u8, group: &str) -> String {
        let id = object_id(self.rank, seed);
        let record = self
            .ctx
            .put(id, TransportKind::Gloo, Some(group), sample(seed).0)
            .map_err(|r| r.error)
            .unwrap();
        format!("RECORD {} {}", hex(id.as_bytes()), hex(&record))
    }

    fn fetch(&self, id: &str, record: &str, seed: u8) -> String {
        let id = ObjectId::from_slice(&unhex(id)).unwrap();
        match self.ctx.fetch(&id, &unhex(record), TIMEOUT) {
            Ok(Fetched::Received(tensors)) => {
                let got: Vec<Vec<u8>> = tensors
                    .iter()
                    .map(|t| t.host_bytes().unwrap().to_vec())
                    .collect();
                if got == sample(seed).1 {
                    "OK".into()
                } else {
                    "ERR mismatch".into()
                }
            }
            Ok(Fetched::Local(_)) => "ERR local".into(),
            Err(e) => format!("ERR {:?} {e}", e.kind()),
        }
    }

    /// Handles one protocol line.
    fn handle(&self, line: &str) -> String {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["JOIN", name, world, addr] => self.join(name, world.parse().unwrap(), addr),
            ["PUT", seed, group] => self.put(seed.parse().unwrap(), group),
            ["FETCH", id, record, seed] => self.fetch(id, record, seed.parse().unwrap()),
            ["FREE", id] => format!(
                "FREED {}",
                self.ctx.free(&ObjectId::from_slice(&unhex(id)).unwrap())
            ),
            ["DESTROY", name] => self
                .ctx
                .destroy_group(TransportKind::Gloo, name)
                .map(|_| "DESTROYED".to_string())
                .unwrap_or_else(|e| format!("ERR {e}")),
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Child entry: serve protocol lines from stdin until it closes.
fn child_main(rank: usize) {
    let node = Node::new(rank);
    serve_lines(|line| node.handle(line))
}

/// A child rank driven over pipes, with extra environment variables.
fn spawn_rank(test: &str, rank: usize, env: &[(&str, String)]) -> Driven {
    Driven::spawn(test, &rank.to_string(), env)
}

/// Joins `world` ranks into group `name`: rank 0 here, the rest in `children`.
fn join_all(node: &Node, children: &mut [Driven], name: &str) {
    let addr = node.ctx.serve_rendezvous("127.0.0.1").unwrap();
    let world = children.len() + 1;
    children
        .iter_mut()
        .for_each(|c| c.send(&format!("JOIN {name} {world} {addr}")));
    assert_eq!(node.join(name, world, &addr), "JOINED");
    children
        .iter_mut()
        .for_each(|c| assert_eq!(c.reply(), "JOINED"));
}

fn exchange(world: usize, test: &str) {
    if let Some(rank) = role() {
        return child_main(rank.parse().unwrap());
    }
    let node = Node::new(0);
    let mut children: Vec<Driven> = (1..world).map(|r| spawn_rank(test, r, &[])).collect();
    join_all(&node, &mut children, "g");

    // Every child fetches two objects from rank 0 at once (concurrent transfers).
    let records: Vec<String> = (0..2).map(|s| node.put(s, "g")).collect();
    for c in children.iter_mut() {
        for (s, r) in records.iter().enumerate() {
            let parts: Vec<&str> = r.split_whitespace().collect();
            c.send(&format!("FETCH {} {} {s}", parts[1], parts[2]));
        }
    }
    for c in children.iter_mut() {
        assert_eq!([c.reply(), c.reply()], ["OK", "OK"]);
    }
    // Rank 0 fetches from every child, and the last child from the first.
    for (i, c) in children.iter_mut().enumerate() {
        let seed = 10 + i as u8;
        let rec = c.call(&format!("PUT {seed} g"));
        let parts: Vec<&str> = rec.split_whitespace().collect();
        assert_eq!(node.fetch(parts[1], parts[2], seed), "OK");
    }
    if world > 2 {
        let rec = children[0].call("PUT 30 g");
        let parts: Vec<&str> = rec.split_whitespace().collect();
        assert_eq!(
            children[world - 2].call(&format!("FETCH {} {} 30", parts[1], parts[2])),
            "OK"
        );
    }
    assert!(stats::snapshot(TransportKind::Gloo).bytes_received > 0);
    assert!(stats::snapshot(TransportKind::Gloo).bytes_sent > 0);
}

#[test]
fn gloo_two_ranks() {
    exchange(2, "gloo_two_ranks");
}

#[test]
fn gloo_four_ranks() {
    exchange(4, "gloo_four_ranks");
}

#[test]
fn gloo_faults_and_recreate() {
    if let Some(rank) = role() {
        return child_main(rank.parse().unwrap());
    }
    let node = Node::new(0);
    let mut children = vec![spawn_rank("gloo_faults_and_recreate", 1, &[])];
    join_all(&node, &mut children, "f");
    let c = &mut children[0];

    // An application error (object already freed) leaves the group usable.
    let rec = c.call("PUT 1 f");
    let parts: Vec<&str> = rec.split_whitespace().collect();
    assert_eq!(c.call(&format!("FREE {}", parts[1])), "FREED true");
    let err = node.fetch(parts[1], parts[2], 1);
    assert!(
        err.starts_with("ERR NotFound") && err.contains("not held by the producer"),
        "{err}"
    );
    let rec = c.call("PUT 2 f");
    let parts: Vec<&str> = rec.split_whitespace().collect();
    assert_eq!(node.fetch(parts[1], parts[2], 2), "OK");

    // Destroy, then create again on the same processes.
    assert_eq!(c.call("DESTROY f"), "DESTROYED");
    node.ctx.destroy_group(TransportKind::Gloo, "f").unwrap();
    assert!(node
        .fetch(parts[1], parts[2], 2)
        .contains("not in collective group"));
    join_all(&node, &mut children, "f");
    let c = &mut children[0];
    let rec = c.call("PUT 3 f");
    let parts: Vec<&str> = rec.split_whitespace().collect();
    assert_eq!(node.fetch(parts[1], parts[2], 3), "OK");

    // Leave group "f"'s producer: the kill below needs one that holds.
    c.child.kill().unwrap();
    let _ = c.child.wait();
    producer_killed_mid_transfer(&node);
}

/// A producer that stops at hold point `serve` (request accepted, its reply
/// sent, no tensor byte sent yet) is killed there: the transfer is under way
/// by construction. The same object, released instead, arrives complete, so
/// the error is the kill's and not a mismatch.
fn producer_killed_mid_transfer(node: &Node) {
    let dir = std::env::temp_dir().join(format!("ray-rdt-gloo-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [
        (ray_rdt::testing::hold::DIR_ENV, dir.display().to_string()),
        (ray_rdt::testing::hold::POINTS_ENV, "serve".to_string()),
    ];
    let mut children = vec![spawn_rank("gloo_faults_and_recreate", 1, &env)];
    join_all(node, &mut children, "k");
    let c = &mut children[0];
    let pid = c.child.id();
    let release = dir.join(format!("serve-{pid}.release"));

    // Held, then released: the object arrives whole.
    let rec = c.call("PUT 4 k");
    let parts: Vec<String> = rec.split_whitespace().map(String::from).collect();
    let result = std::thread::scope(|s| {
        let fetch = s.spawn(|| node.fetch(&parts[1], &parts[2], 4));
        wait_reached(&dir, "serve", pid);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !fetch.is_finished(),
            "the fetch ended while its producer held"
        );
        std::fs::write(&release, b"").unwrap();
        fetch.join().unwrap()
    });
    assert_eq!(result, "OK");

    // Held again, and killed there: the consumer errors within its timeout.
    let rec = c.call("PUT 5 k");
    let parts: Vec<String> = rec.split_whitespace().map(String::from).collect();
    let start = Instant::now();
    let result = std::thread::scope(|s| {
        let fetch = s.spawn(|| node.fetch(&parts[1], &parts[2], 5));
        wait_reached(&dir, "serve", pid);
        assert!(
            !fetch.is_finished(),
            "the fetch ended while its producer held"
        );
        c.child.kill().unwrap();
        fetch.join().unwrap()
    });
    let _ = c.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("producer killed mid-transfer: {result}");
    // PeerGone when the endpoint is found closed too (usually), else Transport.
    assert!(
        result.starts_with("ERR PeerGone ") || result.starts_with("ERR Transport "),
        "{result}"
    );
    // The peer's connection died under a receive (Gloo's I/O error, or the
    // context broken by it first), not a timeout or a mismatch.
    assert!(
        ["Connection closed by peer", "Connection reset by peer"]
            .iter()
            .any(|m| result.contains(m)),
        "{result}"
    );
    assert!(start.elapsed() < TIMEOUT + Duration::from_secs(5));
    // The group is now broken, with a clear error.
    let again = node.fetch(&parts[1], &parts[2], 5);
    assert!(
        again.contains("destroyed by a system error") || again.contains("is gone"),
        "{again}"
    );
}

/// A group's lanes are rank 0's: children started with other settings
/// (one lane, five) join its group, which they could not if each opened its
/// own number of connections, and objects of several messages cross it both
/// ways.
#[test]
fn gloo_lanes_are_rank_zeros() {
    let test = "gloo_lanes_are_rank_zeros";
    if let Some(rank) = role() {
        return child_main(rank.parse().unwrap());
    }
    let node = Node::new(0);
    let lanes = |n: &str| [(ray_rdt::testing::GLOO_LANES_ENV, n.to_string())];
    let mut children = vec![
        spawn_rank(test, 1, &lanes("1")),
        spawn_rank(test, 2, &lanes("5")),
    ];
    join_all(&node, &mut children, "l");
    let record = node.put(40, "l");
    let parts: Vec<&str> = record.split_whitespace().collect();
    for c in children.iter_mut() {
        assert_eq!(c.call(&format!("FETCH {} {} 40", parts[1], parts[2])), "OK");
    }
    for (i, c) in children.iter_mut().enumerate() {
        let seed = 41 + i as u8;
        let rec = c.call(&format!("PUT {seed} l"));
        let parts: Vec<&str> = rec.split_whitespace().collect();
        assert_eq!(node.fetch(parts[1], parts[2], seed), "OK");
    }
}
