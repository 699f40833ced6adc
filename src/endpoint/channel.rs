//! One connection between two plugins, whatever carries it: length-prefixed
//! frames with deadlines and a size bound, over a same-host Unix socket (which can
//! also pass a file descriptor) or a TCP connection to another host.
//!
//! Transports see only [`Channel`]: they send and receive frames and ask whether
//! the channel can pass descriptors ([`Channel::passes_descriptors`]); they never
//! see a socket type.

use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Largest frame accepted (requests and replies are small control messages).
pub(crate) const MAX_FRAME: usize = 1 << 20;

/// The socket under a channel.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Same host: an abstract Unix socket.
    Unix(UnixStream),
    /// Another host: TCP.
    Tcp(TcpStream),
}

impl Stream {
    fn raw(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    /// A second handle on the same socket (to shut it down from another thread).
    pub(crate) fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// Shuts the socket down in both directions: a thread blocked on it wakes.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(bytes),
            Stream::Tcp(s) => s.write_all(bytes),
        }
    }

    /// Reads some bytes; on a Unix socket also collects a descriptor sent with them.
    fn read_some(&mut self, buf: &mut [u8], fd: &mut Option<OwnedFd>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => recv_with_fd(s, buf, fd),
        }
    }
}

/// One received frame and the descriptor that came with it, if any.
#[derive(Debug)]
pub struct Frame {
    /// The frame's bytes.
    pub payload: Vec<u8>,
    /// A file descriptor passed with the frame (same-host channels only).
    pub fd: Option<OwnedFd>,
}

/// A connection to a peer plugin.
#[derive(Debug)]
pub struct Channel {
    stream: Stream,
    peer: String,
    /// A descriptor that came with the request being served (same host only).
    received: Option<OwnedFd>,
}

/// A point in time after which a read or write fails with a timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now; `Duration::MAX` never expires.
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// The time left (zero once expired; `Duration::MAX` without limit).
    pub(crate) fn left(&self) -> Duration {
        self.0.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// The time left, at least 1 ms while not expired (a zero socket timeout
    /// means "block forever"); `None` without limit.
    fn remaining(&self) -> std::result::Result<Option<Duration>, ()> {
        match self.0 {
            None => Ok(None),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(())
                } else {
                    Ok(Some(left.max(Duration::from_millis(1))))
                }
            }
        }
    }
}

impl Channel {
    pub(crate) fn new(stream: Stream, peer: String) -> Channel {
        Channel {
            stream,
            peer,
            received: None,
        }
    }

    /// Keeps the descriptor that came with the request about to be served.
    pub(crate) fn set_received_descriptor(&mut self, fd: Option<OwnedFd>) {
        self.received = fd;
    }

    /// Takes the descriptor the peer sent with the request being served, if
    /// any: a capability of same-host channels (a transport that needs one
    /// asks [`Channel::passes_descriptors`] first).
    pub fn take_received_descriptor(&mut self) -> Option<OwnedFd> {
        self.received.take()
    }

    /// The peer's address, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether this channel can pass file descriptors (same host only).
    pub fn passes_descriptors(&self) -> bool {
        matches!(self.stream, Stream::Unix(_))
    }

    /// The peer's process ID as this process sees it (same-host channels
    /// only: the kernel's record of who connected), for reading its memory.
    pub fn peer_pid(&self) -> Option<u32> {
        match &self.stream {
            Stream::Unix(s) => super::unix::peer_credentials(s)
                .ok()
                .and_then(|c| u32::try_from(c.pid).ok()),
            Stream::Tcp(_) => None,
        }
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Sends one frame, waiting at most `timeout` for the peer to take it.
    pub fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<()> {
        self.send_frame(payload, None, Deadline::after(timeout))
    }

    /// Sends one frame with `fd` (if given) alongside it. Only same-host
    /// channels pass descriptors: elsewhere a descriptor is an
    /// [`ErrorKind::Unsupported`] error.
    pub fn send_with_fd(
        &mut self,
        payload: &[u8],
        fd: Option<&OwnedFd>,
        timeout: Duration,
    ) -> Result<()> {
        self.send_frame(payload, fd, Deadline::after(timeout))
    }

    fn send_frame(
        &mut self,
        payload: &[u8],
        fd: Option<&OwnedFd>,
        deadline: Deadline,
    ) -> Result<()> {
        if payload.len() > MAX_FRAME {
            return Err(Error::invalid(format!(
                "a control frame of {} bytes exceeds the {MAX_FRAME}-byte limit",
                payload.len()
            )));
        }
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        let left = deadline
            .remaining()
            .map_err(|_| self.timed_out("sending to"))?;
        self.stream
            .set_write_timeout(left)
            .map_err(|e| Error::io("setting a socket timeout", e))?;
        let peer = self.peer.clone();
        match (fd, &self.stream) {
            (None, _) => self
                .stream
                .write_all(&frame)
                .map_err(|e| io_error("sending to", &peer, e)),
            (Some(fd), Stream::Unix(s)) => {
                send_fd_frame(s, &frame, fd).map_err(|e| io_error("sending to", &peer, e))
            }
            (Some(_), Stream::Tcp(_)) => Err(Error::new(
                ErrorKind::Unsupported,
                format!("the channel to {peer} crosses hosts: it cannot pass a file descriptor"),
            )),
        }
    }

    /// Receives one whole frame within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Frame> {
        let deadline = Deadline::after(timeout);
        self.recv_frame(deadline, None, || true)
    }

    /// Server side: waits up to `idle` for a frame to start, then gives the peer
    /// `whole` to deliver all of it. `on_first_byte` runs once the first byte is
    /// in; returning false abandons the frame (the connection is being closed).
    pub(crate) fn recv_frame_after_idle(
        &mut self,
        idle: Duration,
        whole: Duration,
        on_first_byte: impl FnOnce() -> bool,
    ) -> Result<Frame> {
        self.recv_frame(Deadline::after(idle), Some(whole), on_first_byte)
    }

    /// Reads a frame whose first byte must arrive by `first`, the rest within
    /// `whole` of it (`None`: by `first` too).
    fn recv_frame(
        &mut self,
        first: Deadline,
        whole: Option<Duration>,
        on_first_byte: impl FnOnce() -> bool,
    ) -> Result<Frame> {
        let mut header = [0u8; 4];
        let mut fd = None;
        self.read_exact_by(&mut header[..1], &mut fd, first)?;
        if !on_first_byte() {
            return Err(Error::transport("the connection is being closed"));
        }
        self.recv_rest(header, fd, whole.map_or(first, Deadline::after))
    }

    fn recv_rest(
        &mut self,
        mut header: [u8; 4],
        mut fd: Option<OwnedFd>,
        deadline: Deadline,
    ) -> Result<Frame> {
        self.read_exact_by(&mut header[1..], &mut fd, deadline)?;
        let len = u32::from_le_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(Error::transport(format!(
                "a control frame of {len} bytes from {} exceeds the {MAX_FRAME}-byte limit",
                self.peer
            )));
        }
        // Grow with what arrives: a peer announcing a large frame and sending
        // nothing costs no memory.
        let mut payload = Vec::with_capacity(len.min(64 << 10));
        let mut chunk = [0u8; 16 << 10];
        while payload.len() < len {
            let want = (len - payload.len()).min(chunk.len());
            self.read_exact_by(&mut chunk[..want], &mut fd, deadline)?;
            payload.extend_from_slice(&chunk[..want]);
        }
        Ok(Frame { payload, fd })
    }

    fn read_exact_by(
        &mut self,
        mut buf: &mut [u8],
        fd: &mut Option<OwnedFd>,
        deadline: Deadline,
    ) -> Result<()> {
        while !buf.is_empty() {
            let left = deadline
                .remaining()
                .map_err(|_| self.timed_out("reading from"))?;
            self.stream
                .set_read_timeout(left)
                .map_err(|e| Error::io("setting a socket timeout", e))?;
            match self.stream.read_some(buf, fd) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::Transport,
                        format!("the peer plugin at {} closed the connection", self.peer),
                    ))
                }
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("reading from", &self.peer, e)),
            }
        }
        Ok(())
    }

    fn timed_out(&self, what: &str) -> Error {
        Error::timeout(format!("{what} the peer plugin at {} timed out", self.peer))
    }

    /// Whether the peer has closed this (idle) connection: a pooled connection
    /// is only reused while it is still open.
    pub(crate) fn is_open(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: one byte of valid memory; MSG_PEEK leaves the data queued.
        let n = unsafe {
            libc::recv(
                self.stream.raw(),
                &mut byte as *mut u8 as *mut _,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // Nothing queued (EAGAIN) is the only state of a healthy idle connection.
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

fn io_error(what: &str, peer: &str, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Transport,
    };
    let detail = match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".to_string(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            format!("the peer closed the connection ({e})")
        }
        _ => e.to_string(),
    };
    Error::new(
        kind,
        format!("{what} the peer plugin at {peer} failed: {detail}"),
    )
}

fn send_fd_frame(stream: &UnixStream, frame: &[u8], fd: &OwnedFd) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: msghdr and the control buffer are fully initialised for one fd, and
    // live across the sendmsg call.
    let sent = unsafe {
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut _,
            iov_len: frame.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut _;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, raw);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The fd travels with the first byte; the rest of the frame follows normally.
    (&*stream).write_all(&frame[sent as usize..])
}

/// recvmsg into `buf`, keeping a descriptor passed with the bytes (the first
/// one seen; a second would be closed by dropping it).
fn recv_with_fd(
    stream: &UnixStream,
    buf: &mut [u8],
    fd: &mut Option<OwnedFd>,
) -> std::io::Result<usize> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: iov points into `buf`, control into `control`; both outlive the call.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut _,
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut _;
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32);
            let received = OwnedFd::from_raw_fd(raw);
            if fd.is_none() {
                *fd = Some(received);
            }
        }
        Ok(n as usize)
    }
}
