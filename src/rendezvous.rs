//! Rendezvous stores for collective groups: rank 0's process serves one per
//! group it creates; every rank (rank 0 included) joins through it.

use crate::error::{Error, ErrorKind, Result};
use gloo_sys::{Store, TcpStoreClient, TcpStoreServer};
use parking_lot::Mutex;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// The rendezvous stores this process serves.
#[derive(Default)]
pub struct Rendezvous {
    servers: Mutex<Vec<Arc<TcpStoreServer>>>,
}

fn store_error(e: gloo_sys::GlooError) -> Error {
    let kind = match e.kind() {
        gloo_sys::ErrorKind::Timeout => ErrorKind::Timeout,
        _ => ErrorKind::Transport,
    };
    Error::new(kind, format!("rendezvous store: {e}"))
}

/// Parses a rendezvous `host:port`.
pub fn parse_address(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::invalid(format!("bad rendezvous address {address:?}")))
}

impl Rendezvous {
    /// Starts a store on `bind_host` (port chosen by the OS); returns its `host:port`.
    pub fn serve(&self, bind_host: &str) -> Result<String> {
        let server = TcpStoreServer::bind((bind_host, 0)).map_err(store_error)?;
        let addr = server.local_addr().to_string();
        self.servers.lock().push(Arc::new(server));
        Ok(addr)
    }

    /// Runs `f` with the store at `address`: this process's own server if it
    /// serves that address, else a client connected within `timeout`.
    pub fn with_store<T>(
        &self,
        address: &str,
        timeout: Duration,
        f: impl FnOnce(&dyn Store) -> Result<T>,
    ) -> Result<T> {
        let addr = parse_address(address)?;
        let own = self
            .servers
            .lock()
            .iter()
            .find(|s| s.local_addr() == addr)
            .cloned();
        if let Some(server) = own {
            return f(server.as_ref());
        }
        let client = TcpStoreClient::connect(addr, timeout).map_err(store_error)?;
        f(&client)
    }

    /// Stops the store at `address`, if this process serves it.
    pub fn stop(&self, address: &str) {
        if let Ok(addr) = parse_address(address) {
            self.servers.lock().retain(|s| s.local_addr() != addr);
        }
    }
}
