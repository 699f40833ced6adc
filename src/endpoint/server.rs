//! The endpoint's server side: one accept thread per listener (same-host Unix
//! socket, TCP), one thread per admitted connection, within a bound.
//!
//! Nothing grows with idle or slow peers:
//! - at most [`Limits::max_connections`] connections are served at once; when a
//!   new one arrives at the bound, the connection idle the longest (between
//!   frames) is closed to make room, and if none is idle the newcomer is told
//!   "busy" and closed (clients retry until their own timeout);
//! - a peer has [`Limits::auth_timeout`] to pass the handshake, and once a frame
//!   has started, [`Limits::frame_timeout`] to deliver all of it; a connection
//!   idle for [`Limits::idle_timeout`] is closed.

use super::auth::ClusterToken;
use super::channel::{Channel, Stream};
use super::{handshake, unix, Handler, Limits};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A listening socket of either channel kind.
pub(crate) enum Listener {
    /// The same-host endpoint.
    Unix(UnixListener),
    /// The endpoint for other hosts.
    Tcp(TcpListener),
}

impl Listener {
    /// Wakes the thread blocked in `accept` on this listener (Linux returns
    /// EINVAL from accept once the listening socket is shut down).
    pub(crate) fn wake(&self) {
        let fd = match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        // SAFETY: shutting down a socket this value owns (and keeps open).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Unix(l) => l
                .accept()
                .map(|(s, _)| (Stream::Unix(s), "a same-host peer".to_string())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), format!("tcp:{a}"))
            }),
        }
    }
}

/// A connection's phase, as the accept thread sees it.
const HANDSHAKE: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;
const CLOSING: u8 = 3;

/// One served connection.
struct Conn {
    /// A handle on the socket, to close it from the accept thread.
    stream: Stream,
    phase: AtomicU8,
    /// When the current phase began (micros since the table's epoch).
    since: AtomicU64,
}

/// The connections being served, shared by both listeners.
pub(crate) struct Table {
    live: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    epoch: Instant,
    limits: Limits,
}

impl Table {
    pub(crate) fn new(limits: Limits) -> Table {
        Table {
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
            limits,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Number of connections served now.
    pub(crate) fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// Makes room for one more connection: true if there is room (closing the
    /// longest-idle connection if the table is full), false if every slot is busy.
    fn make_room(&self, live: &mut HashMap<u64, Arc<Conn>>) -> bool {
        while live.len() >= self.limits.max_connections {
            let victim = live
                .iter()
                .filter(|(_, c)| c.phase.load(Ordering::Acquire) == IDLE)
                .min_by_key(|(_, c)| c.since.load(Ordering::Relaxed))
                .map(|(&id, c)| (id, c.clone()));
            let Some((id, conn)) = victim else {
                return false;
            };
            // The connection may start a frame at this very moment: only an
            // idle-to-closing transition closes it.
            if conn
                .phase
                .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                conn.stream.shutdown();
                live.remove(&id);
            }
        }
        true
    }

    /// Closes every connection (the endpoint is going away).
    pub(crate) fn close_all(&self) {
        for (_, conn) in self.live.lock().drain() {
            conn.phase.store(CLOSING, Ordering::Release);
            conn.stream.shutdown();
        }
    }
}

/// What a connection thread needs.
pub(crate) struct Service {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) table: Arc<Table>,
    pub(crate) token: ClusterToken,
    pub(crate) stopping: Arc<AtomicBool>,
}

/// Starts the accept thread of `listener`.
pub(crate) fn spawn_acceptor(listener: Arc<Listener>, service: Arc<Service>) -> crate::Result<()> {
    std::thread::Builder::new()
        .name("rdt-endpoint".into())
        .spawn(move || accept_loop(&listener, service))
        .map(|_| ())
        .map_err(|e| crate::Error::io("starting the endpoint thread", e))
}

fn accept_loop(listener: &Listener, service: Arc<Service>) {
    loop {
        let accepted = listener.accept();
        if service.stopping.load(Ordering::SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                log::warn!("ray-rdt: the plugin endpoint cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        admit(stream, peer, &service);
    }
}

fn admit(stream: Stream, peer: String, service: &Arc<Service>) {
    let table = &service.table;
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let mut channel = Channel::new(stream, peer);
    let mut live = table.live.lock();
    if !table.make_room(&mut live) {
        drop(live);
        handshake::busy(
            &mut channel,
            &format!(
                "the endpoint serves its maximum of {} connections",
                table.limits.max_connections
            ),
        );
        return;
    }
    let id = table.next.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        stream: handle,
        phase: AtomicU8::new(HANDSHAKE),
        since: AtomicU64::new(table.now()),
    });
    live.insert(id, conn.clone());
    drop(live);
    let svc = service.clone();
    let spawned = std::thread::Builder::new()
        .name("rdt-endpoint-conn".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            serve(&mut channel, &conn, &svc);
            conn.stream.shutdown();
            svc.table.live.lock().remove(&id);
        });
    if let Err(e) = spawned {
        table.live.lock().remove(&id);
        log::error!("ray-rdt: cannot start a connection thread: {e}");
    }
}

/// Stack of a connection thread: handlers only copy and call transports.
const CONNECTION_STACK: usize = 512 << 10;

fn serve(channel: &mut Channel, conn: &Conn, svc: &Service) {
    let limits = &svc.table.limits;
    let admitted = match channel.stream() {
        Stream::Unix(s) => match unix::check_peer(s) {
            Ok(()) => handshake::welcome(channel, limits.auth_timeout),
            Err(why) => {
                handshake::refuse(channel, &why);
                Err(crate::Error::new(crate::ErrorKind::AuthRefused, why))
            }
        },
        Stream::Tcp(_) => handshake::admit(channel, &svc.token, limits.auth_timeout),
    };
    if let Err(e) = admitted {
        if e.kind() == crate::ErrorKind::AuthRefused {
            REFUSALS.note(channel.peer(), e.message());
        }
        return;
    }
    loop {
        conn.since.store(svc.table.now(), Ordering::Relaxed);
        if conn
            .phase
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .or_else(|_| {
                conn.phase
                    .compare_exchange(HANDSHAKE, IDLE, Ordering::AcqRel, Ordering::Acquire)
            })
            .is_err()
        {
            return; // closing
        }
        let frame =
            channel.recv_frame_after_idle(limits.idle_timeout, limits.frame_timeout, || {
                conn.phase
                    .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
        let Ok(frame) = frame else { return };
        channel.set_received_descriptor(frame.fd);
        let handled = svc.handler.handle(&frame.payload, channel);
        channel.set_received_descriptor(None);
        if let Err(e) = handled {
            if channel
                .send(&super::wire::error_reply(&e), limits.frame_timeout)
                .is_err()
            {
                return;
            }
        }
    }
}

/// Refused peers are logged at WARNING, at most once a second (with a count of
/// those not logged), so a flood of bad peers cannot flood the log.
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

static REFUSALS: RateLimitedLog = RateLimitedLog {
    last: Mutex::new(None),
    suppressed: AtomicU64::new(0),
};

impl RateLimitedLog {
    fn note(&self, peer: &str, why: &str) {
        let mut last = self.last.lock();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let skipped = self.suppressed.swap(0, Ordering::Relaxed);
        log::warn!(
            "ray-rdt: refused a connection from {peer}: {why}{}",
            if skipped > 0 {
                format!(" ({skipped} more refused since the last message)")
            } else {
                String::new()
            }
        );
    }
}
