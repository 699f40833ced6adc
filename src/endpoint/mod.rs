//! Each process's plugin endpoint: a Unix-socket server that peers' plugins talk
//! to directly to fetch objects (no Ray task per transfer), and a pool of client
//! connections to other processes' endpoints.
//!
//! The socket lives in Linux's abstract namespace (`unix:@ray-rdt-<pid>-<nonce>`):
//! nothing to clean up on disk, and it vanishes when the process dies, so a fetch
//! from a dead producer fails at once with a clear error.

pub mod wire;

use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves requests arriving on the endpoint. `handle` writes its own replies on
/// `stream` (some requests get several, or a file descriptor); an error it returns
/// is sent to the peer as an error reply.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request and the file descriptor sent with it, if any.
    fn handle(&self, request: &[u8], fd: Option<OwnedFd>, stream: &mut UnixStream) -> Result<()>;
}

/// A running endpoint server. Dropping it stops accepting and closes every
/// connection it serves, so its connection threads end and release the handler.
pub struct Endpoint {
    address: String,
    stopping: Arc<AtomicBool>,
    connections: Arc<Connections>,
}

/// The connections being served, by number, so that they can be closed.
#[derive(Default)]
struct Connections {
    live: Mutex<HashMap<u64, UnixStream>>,
    next: std::sync::atomic::AtomicU64,
}

const PREFIX: &str = "unix:@";

fn socket_addr(address: &str) -> Result<SocketAddr> {
    let name = address
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::invalid(format!("unsupported endpoint address {address:?}")))?;
    SocketAddr::from_abstract_name(name).map_err(|e| Error::io("endpoint address", e))
}

impl Endpoint {
    /// Binds a fresh abstract socket and serves it with `handler` on a background
    /// thread (one more thread per connected peer).
    pub fn start(handler: Arc<dyn Handler>) -> Result<Endpoint> {
        let nonce: u64 = {
            let mut b = [0u8; 8];
            // SAFETY: getrandom writes at most b.len() bytes into b.
            unsafe { libc::getrandom(b.as_mut_ptr() as *mut _, b.len(), 0) };
            u64::from_le_bytes(b)
        };
        let address = format!("{PREFIX}ray-rdt-{}-{nonce:016x}", std::process::id());
        let listener = UnixListener::bind_addr(&socket_addr(&address)?)
            .map_err(|e| Error::io("binding the plugin endpoint", e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Connections::default());
        let (stop, conns) = (stopping.clone(), connections.clone());
        std::thread::Builder::new()
            .name("rdt-endpoint".into())
            .spawn(move || accept_loop(listener, handler, stop, conns))
            .map_err(|e| Error::io("starting the endpoint thread", e))?;
        Ok(Endpoint {
            address,
            stopping,
            connections,
        })
    }

    /// The address peers connect to.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        if let Ok(addr) = socket_addr(&self.address) {
            let _ = UnixStream::connect_addr(&addr);
        }
        for (_, conn) in self.connections.live.lock().drain() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    stopping: Arc<AtomicBool>,
    connections: Arc<Connections>,
) {
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let id = connections.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            connections.live.lock().insert(id, clone);
        }
        let (handler, conns) = (handler.clone(), connections.clone());
        let spawned = std::thread::Builder::new()
            .name("rdt-endpoint-conn".into())
            .spawn(move || {
                serve(stream, handler);
                conns.live.lock().remove(&id);
            });
        if let Err(e) = spawned {
            connections.live.lock().remove(&id);
            log::error!("ray-rdt: cannot start a connection thread: {e}");
        }
    }
}

fn serve(mut stream: UnixStream, handler: Arc<dyn Handler>) {
    // Requests arrive until the peer closes the connection.
    while let Ok((request, fd)) = wire::recv(&mut stream) {
        if let Err(e) = handler.handle(&request, fd, &mut stream) {
            if wire::send(&mut stream, &wire::error_reply(&e)).is_err() {
                return;
            }
        }
    }
}

/// Reusable client connections to peers' endpoints.
#[derive(Default)]
pub struct ClientPool {
    idle: Mutex<HashMap<String, Vec<UnixStream>>>,
}

impl ClientPool {
    /// Runs `exchange` on a connection to `address` whose reads and writes time out
    /// after `timeout`. The connection is reused only if the exchange succeeded.
    pub fn with_connection<T>(
        &self,
        address: &str,
        timeout: Duration,
        exchange: impl FnOnce(&mut UnixStream) -> Result<T>,
    ) -> Result<T> {
        let pooled = self.idle.lock().get_mut(address).and_then(Vec::pop);
        let mut stream = match pooled {
            Some(s) => s,
            None => UnixStream::connect_addr(&socket_addr(address)?).map_err(|e| {
                Error::new(ErrorKind::Transport, format!("cannot reach the producer's plugin at {address} (is the producer alive?): {e}"))
            })?,
        };
        let t = (timeout != Duration::MAX).then(|| timeout.max(Duration::from_millis(1)));
        stream
            .set_read_timeout(t)
            .and_then(|_| stream.set_write_timeout(t))
            .map_err(|e| Error::io("setting socket timeouts", e))?;
        let result = exchange(&mut stream)?;
        self.idle
            .lock()
            .entry(address.to_owned())
            .or_default()
            .push(stream);
        Ok(result)
    }
}
