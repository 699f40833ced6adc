//! Client connections to peers' endpoints, pooled per address.
//!
//! A connection is made over the channel the address names (`unix:@…` on this
//! host, `tcp:…` to another), passes the handshake (a busy peer is retried
//! until the caller's timeout), and returns to the pool after an exchange that
//! succeeded. A pooled connection is reused only while the peer keeps it open
//! and it has been idle for less than the peers' idle timeout.

use super::auth::ClusterToken;
use super::channel::{Channel, Deadline};
use super::handshake::{self, Greeting};
use super::{tcp, unix, Limits};
use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Idle connections kept per peer address.
const MAX_IDLE_PER_PEER: usize = 8;

/// Reusable client connections to peers' endpoints.
pub struct ClientPool {
    idle: Mutex<HashMap<String, Vec<(Channel, Instant)>>>,
    token: ClusterToken,
    limits: Limits,
}

impl ClientPool {
    /// A pool that proves `token` to TCP peers.
    pub fn new(token: ClusterToken, limits: Limits) -> ClientPool {
        ClientPool {
            idle: Mutex::new(HashMap::new()),
            token,
            limits,
        }
    }

    /// Runs `exchange` on a connection to `address`, made within `timeout` if
    /// none is pooled. The connection is reused only if the exchange succeeded.
    pub fn with_connection<T>(
        &self,
        address: &str,
        timeout: Duration,
        exchange: impl FnOnce(&mut Channel) -> Result<T>,
    ) -> Result<T> {
        let mut channel = match self.pooled(address) {
            Some(c) => c,
            None => self.connect(address, timeout)?,
        };
        let result = exchange(&mut channel)?;
        self.keep(address, channel);
        Ok(result)
    }

    /// Pools `channel`, a connection to `address` between exchanges, for the
    /// next exchange with that peer (closed if the pool holds enough).
    pub fn keep(&self, address: &str, channel: Channel) {
        let mut idle = self.idle.lock();
        let list = idle.entry(address.to_owned()).or_default();
        if list.len() < MAX_IDLE_PER_PEER {
            list.push((channel, Instant::now()));
        }
    }

    fn pooled(&self, address: &str) -> Option<Channel> {
        // Peers close connections idle for their idle timeout: stay well inside it.
        let max_age = self.limits.idle_timeout / 2;
        let mut idle = self.idle.lock();
        let list = idle.get_mut(address)?;
        while let Some((channel, since)) = list.pop() {
            if since.elapsed() < max_age && channel.is_open() {
                return Some(channel);
            }
        }
        None
    }

    /// Opens and admits a new connection to `address` within `timeout`.
    pub fn connect(&self, address: &str, timeout: Duration) -> Result<Channel> {
        let deadline = Deadline::after(timeout);
        let mut backoff = Duration::from_millis(2);
        loop {
            let left = deadline.left();
            let mut channel = if address.starts_with(unix::PREFIX) {
                unix::connect(address)?
            } else if address.starts_with(tcp::PREFIX) {
                tcp::connect(address, left)?
            } else {
                return Err(Error::invalid(format!(
                    "unsupported endpoint address {address:?}"
                )));
            };
            match handshake::greet(&mut channel, &self.token, left)? {
                Greeting::Served => return Ok(channel),
                Greeting::Busy(why) => {
                    if deadline.left() <= backoff {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "the peer plugin at {address} stayed busy for {timeout:?}: {why}"
                            ),
                        ));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
}
