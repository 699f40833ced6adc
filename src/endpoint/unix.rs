//! The same-host channel: a Unix socket in Linux's abstract namespace
//! (`unix:@ray-rdt-<pid>-<nonce>`), which can pass file descriptors (the shm
//! transport's segments). It vanishes with its process, so connecting to a dead
//! producer fails at once; it belongs to the network namespace, so only
//! processes of this host (and namespace) reach it. Peers are admitted by their
//! kernel-checked credentials (`SO_PEERCRED`): same uid, or root.

use super::auth::random_bytes;
use super::channel::{Channel, Stream};
use crate::error::{Error, ErrorKind, Result};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// Address prefix of same-host endpoints.
pub(crate) const PREFIX: &str = "unix:@";

fn socket_addr(address: &str) -> Result<SocketAddr> {
    let name = address
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::invalid(format!("not a same-host endpoint address: {address:?}")))?;
    SocketAddr::from_abstract_name(name).map_err(|e| Error::io("endpoint address", e))
}

/// Binds a fresh abstract socket; returns it and its address.
pub(crate) fn bind() -> Result<(UnixListener, String)> {
    let nonce = u64::from_le_bytes(random_bytes::<8>()?);
    let address = format!("{PREFIX}ray-rdt-{}-{nonce:016x}", std::process::id());
    let listener = UnixListener::bind_addr(&socket_addr(&address)?)
        .map_err(|e| Error::io("binding the plugin's same-host endpoint", e))?;
    Ok((listener, address))
}

/// Binds the abstract socket `name` (address `unix:@name`) unless a process
/// of this network namespace holds it already: then `None`. The name is this
/// process's until the listener is closed (or the process ends).
pub(crate) fn claim(name: &str) -> Result<Option<(UnixListener, String)>> {
    let address = format!("{PREFIX}{name}");
    match UnixListener::bind_addr(&socket_addr(&address)?) {
        Ok(listener) => Ok(Some((listener, address))),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(None),
        Err(e) => Err(Error::io(&format!("binding {address}"), e)),
    }
}

/// Connects to the same-host endpoint at `address` (connecting to an abstract
/// socket never waits). A socket that does not exist means its process is gone.
pub(crate) fn connect(address: &str) -> Result<Channel> {
    let stream =
        UnixStream::connect_addr(&socket_addr(address)?).map_err(|e| match e.raw_os_error() {
            Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => Error::new(
                ErrorKind::PeerGone,
                format!("nothing listens at its plugin endpoint {address} any more ({e})"),
            ),
            _ => Error::new(
                ErrorKind::Transport,
                format!("cannot reach the producer's plugin at {address}: {e}"),
            ),
        })?;
    Ok(Channel::new(Stream::Unix(stream), address.to_owned()))
}

/// The kernel-checked credentials (`SO_PEERCRED`) of the process at the other
/// end of `stream`, its process ID as this process's PID namespace sees it.
pub(crate) fn peer_credentials(stream: &UnixStream) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the kernel to write one ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut _,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

/// Admits a connected peer by its credentials: the same uid as this process, or
/// root. Returns the reason for a refusal.
pub(crate) fn check_peer(stream: &UnixStream) -> std::result::Result<(), String> {
    let cred =
        peer_credentials(stream).map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    // SAFETY: getuid cannot fail.
    let mine = unsafe { libc::getuid() };
    if cred.uid == mine || cred.uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "peer process {} runs as uid {}, this endpoint serves only uid {mine} (and root)",
            cred.pid, cred.uid
        ))
    }
}
