//! The channel to other hosts: TCP on the node's IP (the address Ray uses for
//! this node), on a port the OS picks or one from `RAY_RDT_TCP_PORTS`
//! (`"LOW-HIGH"`). Every connection proves Ray's cluster token before anything
//! is served (see [`super::handshake`]).

use super::channel::{Channel, Stream};
use crate::error::{Error, ErrorKind, Result};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Address prefix of TCP endpoints (`tcp:10.0.0.1:40123`, `tcp:[::1]:40123`).
pub(crate) const PREFIX: &str = "tcp:";

/// Environment variable naming the ports the TCP endpoint may bind, `LOW-HIGH`.
pub const PORTS_ENV: &str = "RAY_RDT_TCP_PORTS";

/// The port range from `RAY_RDT_TCP_PORTS`, if set (0-0: any port).
fn port_range() -> Result<(u16, u16)> {
    let Some(text) = crate::settings::string(PORTS_ENV) else {
        return Ok((0, 0));
    };
    let parsed = text
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)))
        .or_else(|| text.trim().parse().ok().map(|p| (p, p)));
    match parsed {
        Some((lo, hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(Error::invalid(format!(
            "{PORTS_ENV}={text:?} is not a port range like 40000-40100"
        ))),
    }
}

/// Binds a listener on `ip`; returns it and its address.
pub(crate) fn bind(ip: IpAddr) -> Result<(TcpListener, String)> {
    let (lo, hi) = port_range()?;
    let mut last = None;
    for port in lo..=hi {
        match TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(listener) => {
                let addr = listener
                    .local_addr()
                    .map_err(|e| Error::io("reading the TCP endpoint's address", e))?;
                return Ok((listener, format!("{PREFIX}{addr}")));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        &format!("binding the plugin's TCP endpoint on {ip} (ports {lo}-{hi})"),
        last.unwrap_or_else(|| std::io::Error::other("empty port range")),
    ))
}

/// Parses `tcp:HOST:PORT`.
pub(crate) fn socket_addr(address: &str) -> Result<SocketAddr> {
    address
        .strip_prefix(PREFIX)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::invalid(format!("not a TCP endpoint address: {address:?}")))
}

/// Connects to the endpoint at `address` within `timeout`, telling apart a host
/// that refuses (nothing listens: the producer process is gone), one that does
/// not answer in time, and one that cannot be reached at all.
pub(crate) fn connect(address: &str, timeout: Duration) -> Result<Channel> {
    let addr = socket_addr(address)?;
    let t = timeout.clamp(Duration::from_millis(1), Duration::from_secs(3600));
    let stream = TcpStream::connect_timeout(&addr, t).map_err(|e| {
        let (kind, what) = match (e.kind(), e.raw_os_error()) {
            (_, Some(libc::ECONNREFUSED)) => (
                ErrorKind::PeerGone,
                "refused the connection: nothing listens there (the process is gone, or a firewall rejects the port)".to_string(),
            ),
            (std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock, _) => (
                ErrorKind::Timeout,
                format!("did not answer within {t:?}: the producer's host is down or unreachable"),
            ),
            (_, Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)) => (
                ErrorKind::Transport,
                format!("cannot be reached: the producer's host is unreachable ({e})"),
            ),
            _ => (ErrorKind::Transport, format!("cannot be reached: {e}")),
        };
        Error::new(kind, format!("the producer's plugin at {address} {what}"))
    })?;
    let _ = stream.set_nodelay(true);
    Ok(Channel::new(Stream::Tcp(stream), address.to_owned()))
}
