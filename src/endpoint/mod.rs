//! Each process's plugin endpoint: the servers that peers' plugins talk to
//! directly to fetch objects (no Ray task per transfer), and a pool of client
//! connections to other processes' endpoints.
//!
//! A process listens on two channels ([`channel::Channel`] is what transports
//! see of either):
//! - same host ([`unix`]): an abstract Unix socket, peers admitted by uid, able
//!   to pass file descriptors;
//! - other hosts ([`tcp`]): TCP on the node's IP, peers admitted only after
//!   proving Ray's cluster token ([`auth`], [`handshake`]).
//!
//! A consumer picks the channel by host identity ([`host`]): the same-host one
//! when the producer's record names this host, TCP otherwise. Connections,
//! handshakes and frames are bounded ([`Limits`], [`server`]).

pub mod auth;
pub mod channel;
mod client;
pub mod contact;
mod handshake;
pub mod host;
mod server;
pub mod tcp;
pub mod unix;
pub mod wire;

pub use auth::ClusterToken;
pub use channel::Channel;
pub use client::ClientPool;
pub use contact::Contact;

use crate::error::Result;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves requests arriving on the endpoint. `handle` writes its own replies on
/// `channel` (some requests get several, or a file descriptor); an error it
/// returns is sent to the peer as an error reply.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request (a descriptor sent with it waits in the channel:
    /// [`Channel::take_received_descriptor`]).
    fn handle(&self, request: &[u8], channel: &mut Channel) -> Result<()>;
}

/// Bounds on what peers may hold of an endpoint (environment variables in
/// parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, both channels together
    /// (`RAY_RDT_MAX_CONNECTIONS`, default 256).
    pub max_connections: usize,
    /// Time a new peer has to pass the handshake (`RAY_RDT_AUTH_TIMEOUT_MS`, 5 s).
    pub auth_timeout: Duration,
    /// Time a peer has to deliver a frame once it started
    /// (`RAY_RDT_FRAME_TIMEOUT_MS`, 10 s).
    pub frame_timeout: Duration,
    /// A connection idle this long is closed (`RAY_RDT_IDLE_TIMEOUT_MS`, 5 min).
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits set in the environment, else the defaults.
    pub fn from_env() -> Limits {
        use crate::settings::{millis_or, u64_or};
        Limits {
            max_connections: u64_or("RAY_RDT_MAX_CONNECTIONS", 256).max(1) as usize,
            auth_timeout: millis_or("RAY_RDT_AUTH_TIMEOUT_MS", Duration::from_secs(5)),
            frame_timeout: millis_or("RAY_RDT_FRAME_TIMEOUT_MS", Duration::from_secs(10)),
            idle_timeout: millis_or("RAY_RDT_IDLE_TIMEOUT_MS", Duration::from_secs(300)),
        }
    }
}

/// The addresses an endpoint listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Same-host address (`unix:@…`).
    pub unix: String,
    /// Address for other hosts (`tcp:IP:PORT`); empty when not listening on TCP.
    pub tcp: String,
}

/// A running endpoint. Dropping it stops accepting and closes every connection
/// it serves, so its connection threads end and release the handler.
pub struct Endpoint {
    addresses: Addresses,
    stopping: Arc<AtomicBool>,
    listeners: Vec<Arc<server::Listener>>,
    table: Arc<server::Table>,
}

impl Endpoint {
    /// Listens on a fresh abstract Unix socket and, when `tcp_ip` is given, on
    /// TCP at that address; serves both with `handler`. TCP peers must prove
    /// `token` (if set).
    pub fn start(
        handler: Arc<dyn Handler>,
        tcp_ip: Option<IpAddr>,
        token: ClusterToken,
        limits: Limits,
    ) -> Result<Endpoint> {
        let (unix_listener, unix_address) = unix::bind()?;
        let tcp = tcp_ip.map(tcp::bind).transpose()?;
        if tcp.is_some() && !token.is_set() {
            log::warn!("ray-rdt: the data plane is unauthenticated: Ray's token authentication is off, so this process's TCP endpoint serves any peer that can reach it (as Ray itself does then)");
        }
        let addresses = Addresses {
            unix: unix_address,
            tcp: tcp.as_ref().map(|(_, a)| a.clone()).unwrap_or_default(),
        };
        let mut listeners = vec![server::Listener::Unix(unix_listener)];
        listeners.extend(tcp.map(|(l, _)| server::Listener::Tcp(l)));
        Self::serve(handler, token, limits, addresses, listeners)
    }

    /// Serves `listener`, a same-host socket bound at `address` (see
    /// [`unix::claim`]), with `handler`: an endpoint of its own, with the same
    /// admission rule and bounds as the process's endpoint.
    pub(crate) fn on_unix(
        listener: std::os::unix::net::UnixListener,
        address: String,
        handler: Arc<dyn Handler>,
        limits: Limits,
    ) -> Result<Endpoint> {
        let addresses = Addresses {
            unix: address,
            tcp: String::new(),
        };
        let listeners = vec![server::Listener::Unix(listener)];
        Self::serve(
            handler,
            ClusterToken::default(),
            limits,
            addresses,
            listeners,
        )
    }

    /// Starts an accept thread per listener, serving with `handler`.
    fn serve(
        handler: Arc<dyn Handler>,
        token: ClusterToken,
        limits: Limits,
        addresses: Addresses,
        listeners: Vec<server::Listener>,
    ) -> Result<Endpoint> {
        let stopping = Arc::new(AtomicBool::new(false));
        let table = Arc::new(server::Table::new(limits));
        let service = Arc::new(server::Service {
            handler,
            table: table.clone(),
            token,
            stopping: stopping.clone(),
        });
        let mut endpoint = Endpoint {
            addresses,
            stopping,
            listeners: Vec::new(),
            table,
        };
        // From here on, dropping `endpoint` stops what was started.
        for listener in listeners.into_iter().map(Arc::new) {
            endpoint.listeners.push(listener.clone());
            server::spawn_acceptor(listener, service.clone())?;
        }
        Ok(endpoint)
    }

    /// The addresses peers connect to.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// Connections served now (both channels).
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Stops accepting and closes every connection it serves: a connection
    /// thread still handling a request finds its socket shut down (its writes
    /// fail at once) and ends. Dropping the endpoint does this too; closing it
    /// twice does nothing more.
    pub fn close(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.listeners.iter().for_each(|l| l.wake());
        self.table.close_all();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.close();
    }
}
