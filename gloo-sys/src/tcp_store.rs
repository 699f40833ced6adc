//! A tiny TCP key-value store for rendezvous: [`TcpStoreServer`] runs in one
//! process (typically rank 0's), [`TcpStoreClient`] in the others.
//!
//! Only `std::net` and threads: one accept thread plus one thread per client
//! connection. Every blocking step has a bound: lookups wait at most their
//! timeout, a request that started arriving must arrive within
//! [`IO_TIMEOUT`], replies must be written within it, and dropping the server
//! closes all connections and joins its threads.
//!
//! Wire format (little-endian). A connection starts with the 4-byte magic
//! `GLS1`, then carries requests and replies in turn:
//! - request: `op: u8`, `key_len: u32`, `key`, then for `SET` (1) `value_len:
//!   u32`, `value`; for `GET` (2) `timeout_ms: u64`;
//! - reply: `status: u8` (0 ok, 1 timeout, 2 error), `len: u32`, then the
//!   value (GET ok) or a message (timeout, error).
//!
//! Keys are never deleted: use a fresh prefix per rendezvous. The store is
//! not authenticated; bind it to an address only the group can reach.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{ErrorKind, GlooError};
use crate::store::Store;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 16 << 20;
/// Bound on each network step other than waiting for a key: connecting,
/// sending a request or reply, reading the rest of a request once it began.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most client connections a server serves at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;

/// Sent first on every connection.
const MAGIC: &[u8; 4] = b"GLS1";
const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const STATUS_OK: u8 = 0;
const STATUS_TIMEOUT: u8 = 1;
const STATUS_ERROR: u8 = 2;

/// Locks a mutex, ignoring poisoning: the guarded data stays consistent
/// because no code below panics while holding a lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the server handle, its threads and its in-process `Store`.
struct Shared {
    map: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Clones of the open client connections, to shut them down on drop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn set(&self, key: &str, value: &[u8]) {
        lock(&self.map).insert(key.to_owned(), value.to_vec());
        self.changed.notify_all();
    }

    /// Waits for `key` until `timeout` passed or the server stops.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, GlooError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut map = lock(&self.map);
        loop {
            if let Some(v) = map.get(key) {
                return Ok(v.clone());
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Err(GlooError::new(
                    ErrorKind::Store,
                    "the store server is shutting down",
                ));
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(GlooError::new(
                    ErrorKind::Timeout,
                    format!(
                        "store key '{key}' was not set within {} ms",
                        timeout.as_millis()
                    ),
                ));
            }
            map = self
                .changed
                .wait_timeout(map, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The rank-0 side of the TCP rendezvous store.
///
/// Serves [`TcpStoreClient`]s over TCP and is itself a [`Store`] for the
/// process that runs it. Keep it alive until every rank has connected.
/// Dropping it closes all client connections and joins its threads.
pub struct TcpStoreServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl TcpStoreServer {
    /// Binds `addr` (e.g. `"0.0.0.0:0"` or `"127.0.0.1:29500"`; port 0 picks a
    /// free port, see [`local_addr`](Self::local_addr)) and starts serving.
    pub fn bind(addr: impl ToSocketAddrs) -> Result<TcpStoreServer, GlooError> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| GlooError::new(ErrorKind::Store, format!("store server: bind: {e}")))?;
        let addr = listener.local_addr().map_err(|e| {
            GlooError::new(
                ErrorKind::Store,
                format!("store server: local address: {e}"),
            )
        })?;
        let shared = Arc::new(Shared {
            map: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("gloo-store-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .map_err(|e| {
                GlooError::new(ErrorKind::Store, format!("store server: spawn thread: {e}"))
            })?;
        Ok(TcpStoreServer {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// The address the server listens on (with the actual port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Store for TcpStoreServer {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), GlooError> {
        check_sizes(key, Some(value))?;
        self.shared.set(key, value);
        Ok(())
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, GlooError> {
        check_sizes(key, None)?;
        self.shared.get(key, timeout)
    }
}

impl Drop for TcpStoreServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake waiting lookups, then unblock connection threads.
        {
            let _map = lock(&self.shared.map);
            self.shared.changed.notify_all();
        }
        for conn in lock(&self.shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        // Unblock accept() with a connection of our own. If that fails the
        // accept thread is left to exit on its next connection.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(handle) = self.accept.take() {
                let _ = handle.join();
            }
        }
    }
}

/// Accepts connections until the server stops, then joins the connection
/// threads.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // Transient accept errors (EMFILE, ECONNABORTED): back off a bit.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        workers.retain(|w| !w.is_finished());
        if workers.len() >= MAX_CONNECTIONS {
            continue; // dropping `stream` refuses the connection
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => {
                lock(&shared.conns).insert(id, clone);
            }
            Err(_) => continue,
        }
        // A connection accepted after drop() shut the others down is shut
        // down here, so it cannot block the join below.
        if shared.stopping.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("gloo-store-conn".into())
            .spawn(move || {
                serve_connection(stream, &conn_shared);
                lock(&conn_shared.conns).remove(&id);
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(_) => {
                lock(&shared.conns).remove(&id);
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Serves one client until it disconnects, misbehaves or the server stops.
fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let mut magic = [0u8; 4];
    if stream.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return;
    }
    while !shared.stopping.load(Ordering::SeqCst) {
        // Idle between requests: no timeout (drop() shuts the socket down).
        if stream.set_read_timeout(None).is_err() {
            return;
        }
        let mut op = [0u8; 1];
        if stream.read_exact(&mut op).is_err() || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        {
            return;
        }
        let reply = match handle_request(op[0], &mut stream, shared) {
            Ok(reply) => reply,
            Err(_) => return, // malformed or truncated request: drop the client
        };
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Reads the rest of a request and computes the reply frame.
fn handle_request(op: u8, stream: &mut TcpStream, shared: &Shared) -> io::Result<Vec<u8>> {
    let key = read_blob(stream, MAX_KEY_LEN)?;
    let key = String::from_utf8(key)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "key is not UTF-8"))?;
    match op {
        OP_SET => {
            let value = read_blob(stream, MAX_VALUE_LEN)?;
            shared.set(&key, &value);
            Ok(frame(STATUS_OK, &[]))
        }
        OP_GET => {
            let mut ms = [0u8; 8];
            stream.read_exact(&mut ms)?;
            let timeout = Duration::from_millis(u64::from_le_bytes(ms));
            Ok(match shared.get(&key, timeout) {
                Ok(value) => frame(STATUS_OK, &value),
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    frame(STATUS_TIMEOUT, e.message().as_bytes())
                }
                Err(e) => frame(STATUS_ERROR, e.message().as_bytes()),
            })
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unknown store op",
        )),
    }
}

/// Reads a `u32` length and that many bytes (at most `max`).
fn read_blob(stream: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "store frame too large",
        ));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// Appends a `u32` length and the bytes.
fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are checked against MAX_KEY_LEN / MAX_VALUE_LEN beforehand.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A reply frame.
fn frame(status: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(status);
    put_blob(&mut out, payload);
    out
}

/// Rejects keys and values over the limits.
fn check_sizes(key: &str, value: Option<&[u8]>) -> Result<(), GlooError> {
    if key.len() > MAX_KEY_LEN {
        return Err(GlooError::new(
            ErrorKind::InvalidArgument,
            format!("store key of {} bytes exceeds {MAX_KEY_LEN}", key.len()),
        ));
    }
    match value {
        Some(v) if v.len() > MAX_VALUE_LEN => Err(GlooError::new(
            ErrorKind::InvalidArgument,
            format!("store value of {} bytes exceeds {MAX_VALUE_LEN}", v.len()),
        )),
        _ => Ok(()),
    }
}

/// The client side of the TCP rendezvous store.
///
/// Thread-safe: it keeps a small pool of connections, so concurrent lookups
/// (even ones waiting for keys) never wait for each other.
pub struct TcpStoreClient {
    addr: SocketAddr,
    pool: Mutex<Vec<TcpStream>>,
}

impl TcpStoreClient {
    /// Connects to the server at `addr`, retrying for up to `timeout` while
    /// the server is not up yet (connection refused or unreachable).
    pub fn connect(
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> Result<TcpStoreClient, GlooError> {
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| store_err(format!("store client: resolve address: {e}")))?
            .next()
            .ok_or_else(|| store_err("store client: the address resolved to nothing".into()))?;
        // A timeout too large for Instant means "a year", i.e. practically forever.
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        loop {
            match open(addr, deadline.saturating_duration_since(Instant::now())) {
                Ok(stream) => {
                    return Ok(TcpStoreClient {
                        addr,
                        pool: Mutex::new(vec![stream]),
                    });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(GlooError::new(
                        ErrorKind::Timeout,
                        format!(
                            "cannot reach the rendezvous store at {addr} within {} ms: {e}",
                            timeout.as_millis()
                        ),
                    ));
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a request on a pooled (or new) connection and reads the reply;
    /// `wait` is how long the server may legitimately take. A connection that
    /// failed is dropped, not returned to the pool.
    fn request(&self, req: &[u8], wait: Duration) -> Result<(u8, Vec<u8>), GlooError> {
        let pooled = lock(&self.pool).pop();
        let mut stream = match pooled {
            Some(s) => s,
            None => open(self.addr, IO_TIMEOUT).map_err(|e| self.io_err(e))?,
        };
        let reply = exchange(&mut stream, req, wait).map_err(|e| self.io_err(e))?;
        lock(&self.pool).push(stream);
        Ok(reply)
    }

    fn io_err(&self, e: io::Error) -> GlooError {
        io_error(self.addr, e)
    }
}

/// A failed round trip with the store at `addr`: a read or write that ran out
/// of time is a [`ErrorKind::Timeout`] (the server may still be alive, only
/// slow or stuck), told apart from the server closing the connection (end of
/// stream, reset) and other I/O failures ([`ErrorKind::Store`]).
fn io_error(addr: SocketAddr, e: io::Error) -> GlooError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => GlooError::new(
            ErrorKind::Timeout,
            format!("rendezvous store at {addr}: no reply in time ({e})"),
        ),
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => store_err(format!(
            "rendezvous store at {addr} closed the connection ({e})"
        )),
        _ => store_err(format!("rendezvous store at {addr}: {e}")),
    }
}

fn store_err(message: String) -> GlooError {
    GlooError::new(ErrorKind::Store, message)
}

/// Opens a connection and sends the magic.
fn open(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(MAGIC)?;
    Ok(stream)
}

/// One request/reply round trip; the server may take `wait` (plus
/// [`IO_TIMEOUT`]) to reply.
fn exchange(stream: &mut TcpStream, req: &[u8], wait: Duration) -> io::Result<(u8, Vec<u8>)> {
    round_trip(stream, req, wait.saturating_add(IO_TIMEOUT))
}

/// Sends `req` and reads the reply, each read within `read_timeout`.
fn round_trip(
    stream: &mut TcpStream,
    req: &[u8],
    read_timeout: Duration,
) -> io::Result<(u8, Vec<u8>)> {
    stream.set_read_timeout(Some(read_timeout.max(Duration::from_millis(1))))?;
    stream.write_all(req)?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status)?;
    let payload = read_blob(stream, MAX_VALUE_LEN)?;
    Ok((status[0], payload))
}

impl Store for TcpStoreClient {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), GlooError> {
        check_sizes(key, Some(value))?;
        let mut req = vec![OP_SET];
        put_blob(&mut req, key.as_bytes());
        put_blob(&mut req, value);
        match self.request(&req, Duration::ZERO)? {
            (STATUS_OK, _) => Ok(()),
            (_, msg) => Err(store_err(String::from_utf8_lossy(&msg).into_owned())),
        }
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, GlooError> {
        check_sizes(key, None)?;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut req = vec![OP_GET];
        put_blob(&mut req, key.as_bytes());
        req.extend_from_slice(&ms.to_le_bytes());
        match self.request(&req, timeout)? {
            (STATUS_OK, value) => Ok(value),
            (STATUS_TIMEOUT, msg) => Err(GlooError::new(
                ErrorKind::Timeout,
                String::from_utf8_lossy(&msg).into_owned(),
            )),
            (_, msg) => Err(store_err(String::from_utf8_lossy(&msg).into_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> TcpStoreServer {
        TcpStoreServer::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn set_then_get_across_client_and_server() {
        let server = server();
        let client = TcpStoreClient::connect(server.local_addr(), Duration::from_secs(5)).unwrap();
        client.set("a", b"1").unwrap();
        assert_eq!(server.get("a", Duration::from_secs(1)).unwrap(), b"1");
        server.set("b", b"").unwrap();
        assert_eq!(client.get("b", Duration::from_secs(1)).unwrap(), b"");
        client.set("a", b"2").unwrap();
        assert_eq!(client.get("a", Duration::from_secs(1)).unwrap(), b"2");
    }

    #[test]
    fn get_waits_for_a_later_set() {
        let server = server();
        let addr = server.local_addr();
        let waiter = thread::spawn(move || {
            let client = TcpStoreClient::connect(addr, Duration::from_secs(5)).unwrap();
            client.get("late", Duration::from_secs(10))
        });
        thread::sleep(Duration::from_millis(100));
        let client = TcpStoreClient::connect(addr, Duration::from_secs(5)).unwrap();
        client.set("late", b"here").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), b"here");
    }

    #[test]
    fn concurrent_waits_on_one_client_do_not_block_each_other() {
        let server = server();
        let client =
            Arc::new(TcpStoreClient::connect(server.local_addr(), Duration::from_secs(5)).unwrap());
        let c = Arc::clone(&client);
        let waiter = thread::spawn(move || c.get("x", Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(50));
        client.set("x", b"y").unwrap(); // must not queue behind the waiting get
        assert_eq!(waiter.join().unwrap().unwrap(), b"y");
    }

    #[test]
    fn missing_key_times_out() {
        let server = server();
        let client = TcpStoreClient::connect(server.local_addr(), Duration::from_secs(5)).unwrap();
        let start = Instant::now();
        let err = client.get("nope", Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let err = server.get("nope", Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }

    #[test]
    fn oversized_keys_are_rejected() {
        let server = server();
        let key = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            server.set(&key, b"").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn client_waits_for_a_late_server_then_gives_up() {
        // Reserve a port, free it, and start the server there a bit later.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let starter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            TcpStoreServer::bind(addr).unwrap()
        });
        let client = TcpStoreClient::connect(addr, Duration::from_secs(10)).unwrap();
        let server = starter.join().unwrap();
        client.set("k", b"v").unwrap();
        drop(server);

        let start = Instant::now();
        let err = TcpStoreClient::connect(addr, Duration::from_millis(300))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn dropping_the_server_fails_waiting_clients_promptly() {
        let server = server();
        let client = TcpStoreClient::connect(server.local_addr(), Duration::from_secs(5)).unwrap();
        let waiter = thread::spawn(move || client.get("never", Duration::from_secs(60)));
        thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        drop(server);
        let err = waiter.join().unwrap().unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5), "{err}");
        // The server went away, not a timeout: the waiting get's reply says
        // it is shutting down, or the connection closes first (a race the
        // server's drop does not order).
        assert_eq!(err.kind(), ErrorKind::Store, "{err}");
        let said = err.to_string();
        assert!(
            said.contains("closed the connection") || said.contains("shutting down"),
            "{err}"
        );
    }

    /// A server that accepts one connection, reads what comes, and then
    /// either stays silent (`close: false`) or closes it.
    fn fake_server(close: bool) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            if close {
                let _ = s.read(&mut buf);
            } else {
                // Silent until the client gives up and closes its side: read
                // to the end, as the request may arrive in several pieces.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        (addr, handle)
    }

    #[test]
    fn a_silent_server_is_a_timeout_and_a_closed_one_is_not() {
        let mut req = vec![OP_GET];
        put_blob(&mut req, b"k");
        req.extend_from_slice(&0u64.to_le_bytes());
        let wait = Duration::from_millis(200);

        let (addr, server) = fake_server(false);
        let mut s = open(addr, Duration::from_secs(5)).unwrap();
        let err = io_error(addr, round_trip(&mut s, &req, wait).unwrap_err());
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.to_string().contains("no reply in time"), "{err}");
        drop(s);
        server.join().unwrap();

        let (addr, server) = fake_server(true);
        let mut s = open(addr, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        let err = io_error(
            addr,
            round_trip(&mut s, &req, Duration::from_secs(30)).unwrap_err(),
        );
        assert_eq!(err.kind(), ErrorKind::Store, "{err}");
        assert!(err.to_string().contains("closed the connection"), "{err}");
    }

    #[test]
    fn garbage_clients_are_dropped() {
        let server = server();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.write_all(b"HTTP/1.1 GET /\r\n\r\n").unwrap();
        let mut buf = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Closed (EOF, or a reset because our extra bytes were never read);
        // a read that timed out means the server kept the connection open.
        let read = s.read(&mut buf);
        assert!(
            match &read {
                Ok(n) => *n == 0,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            },
            "server should close the connection, got {read:?}"
        );
        // The server still works for real clients.
        let client = TcpStoreClient::connect(server.local_addr(), Duration::from_secs(5)).unwrap();
        client.set("ok", b"1").unwrap();
    }
}
