//! Rendezvous stores for collective groups: rank 0's process serves one per
//! group it creates; every rank (rank 0 included) joins through it. The store
//! is gloo-sys's TCP store (the gloo feature); a build without it has no
//! collective groups and says so.

use crate::error::{Error, Result};
use std::net::{SocketAddr, ToSocketAddrs};

#[cfg(feature = "gloo")]
pub use tcp::Rendezvous;

#[cfg(not(feature = "gloo"))]
pub use none::Rendezvous;

/// Parses a rendezvous `host:port`.
pub fn parse_address(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::invalid(format!("bad rendezvous address {address:?}")))
}

#[cfg(feature = "gloo")]
mod tcp {
    use super::parse_address;
    use crate::error::{Error, ErrorKind, Result};
    use crate::transport::group::RendezvousStore;
    use gloo_sys::{Store, TcpStoreClient, TcpStoreServer};
    use parking_lot::Mutex;
    use std::sync::Arc;
    use std::time::Duration;

    /// The rendezvous stores this process serves.
    #[derive(Default)]
    pub struct Rendezvous {
        servers: Mutex<Vec<Arc<TcpStoreServer>>>,
    }

    /// The one mapping of a store failure to the plugin's errors.
    fn store_error(e: gloo_sys::GlooError) -> Error {
        let kind = match e.kind() {
            gloo_sys::ErrorKind::Timeout => ErrorKind::Timeout,
            _ => ErrorKind::Transport,
        };
        Error::new(kind, format!("rendezvous store: {e}"))
    }

    /// A TCP store (a server of this process, or a client of another's) as the
    /// groups see it.
    struct TcpStore<'a>(&'a dyn Store);

    impl RendezvousStore for TcpStore<'_> {
        fn set(&self, key: &str, value: &[u8]) -> Result<()> {
            self.0.set(key, value).map_err(store_error)
        }

        fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
            self.0.get(key, timeout).map_err(store_error)
        }
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
            f: impl FnOnce(&dyn RendezvousStore) -> Result<T>,
        ) -> Result<T> {
            let addr = parse_address(address)?;
            let own = self
                .servers
                .lock()
                .iter()
                .find(|s| s.local_addr() == addr)
                .cloned();
            if let Some(server) = own {
                return f(&TcpStore(server.as_ref()));
            }
            let client = TcpStoreClient::connect(addr, timeout).map_err(store_error)?;
            f(&TcpStore(&client))
        }

        /// Stops the store at `address`, if this process serves it.
        pub fn stop(&self, address: &str) {
            if let Ok(addr) = parse_address(address) {
                self.servers.lock().retain(|s| s.local_addr() != addr);
            }
        }
    }
}

#[cfg(not(feature = "gloo"))]
mod none {
    use crate::error::{Error, ErrorKind, Result};
    use crate::transport::group::RendezvousStore;
    use std::time::Duration;

    /// No rendezvous store in a build without the gloo feature (a field, so
    /// that both builds construct it the same way: `Rendezvous::default()`).
    #[derive(Default)]
    pub struct Rendezvous {
        _none: (),
    }

    fn unavailable() -> Error {
        Error::new(
            ErrorKind::Unavailable,
            "this build of the plugin has no collective groups (built without the gloo feature)",
        )
    }

    impl Rendezvous {
        /// Refuses: no store to serve.
        pub fn serve(&self, _bind_host: &str) -> Result<String> {
            Err(unavailable())
        }

        /// Refuses: no store to join.
        pub fn with_store<T>(
            &self,
            _address: &str,
            _timeout: Duration,
            _f: impl FnOnce(&dyn RendezvousStore) -> Result<T>,
        ) -> Result<T> {
            Err(unavailable())
        }

        /// Nothing to stop.
        pub fn stop(&self, _address: &str) {}
    }
}
