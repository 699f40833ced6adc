//! Framing on the control channel between two plugins: length-prefixed messages,
//! optionally carrying one file descriptor (SCM_RIGHTS) for the shm transport.

use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Largest control message accepted (requests and replies are small).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Writes one message.
pub fn send(stream: &mut UnixStream, payload: &[u8]) -> Result<()> {
    send_with_fd(stream, payload, None)
}

/// Writes one message, passing `fd` alongside it when given.
pub fn send_with_fd(stream: &mut UnixStream, payload: &[u8], fd: Option<&OwnedFd>) -> Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    match fd {
        None => stream
            .write_all(&frame)
            .map_err(|e| peer_error("sending to", e)),
        Some(fd) => send_fd_frame(stream, &frame, fd),
    }
}

fn send_fd_frame(stream: &mut UnixStream, frame: &[u8], fd: &OwnedFd) -> Result<()> {
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
        return Err(peer_error("sending to", std::io::Error::last_os_error()));
    }
    // The fd travels with the first byte; the rest of the frame follows normally.
    stream
        .write_all(&frame[sent as usize..])
        .map_err(|e| peer_error("sending to", e))
}

/// Reads one message, and the file descriptor passed with it, if any.
pub fn recv(stream: &mut UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut header = [0u8; 4];
    let fd = recv_header_with_fd(stream, &mut header)?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(Error::transport(format!(
            "control message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"
        )));
    }
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .map_err(|e| peer_error("reading from", e))?;
    Ok((payload, fd))
}

/// Reads the 4-byte header with recvmsg so that an fd sent with it is collected.
fn recv_header_with_fd(stream: &mut UnixStream, header: &mut [u8; 4]) -> Result<Option<OwnedFd>> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut fd = None;
    let mut got = 0usize;
    while got < header.len() {
        // SAFETY: iov points into `header`, control into `control`; both outlive the call.
        let n = unsafe {
            let mut iov = libc::iovec {
                iov_base: header[got..].as_mut_ptr() as *mut _,
                iov_len: header.len() - got,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut _;
            msg.msg_controllen = space as _;
            let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n > 0 {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                if !cmsg.is_null()
                    && (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                {
                    let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32);
                    fd = Some(OwnedFd::from_raw_fd(raw));
                }
            }
            n
        };
        match n {
            0 => return Err(Error::transport("the peer closed the control connection")),
            n if n < 0 => {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(peer_error("reading from", err));
            }
            n => got += n as usize,
        }
    }
    Ok(fd)
}

fn peer_error(what: &str, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Transport,
    };
    Error::new(kind, format!("{what} the peer plugin failed: {e}"))
}

/// A reply's status byte: success.
pub const REPLY_OK: u8 = 0;
/// A reply's status byte: failure, followed by the error kind code and message.
pub const REPLY_ERR: u8 = 1;

/// Encodes an error reply.
pub fn error_reply(e: &Error) -> Vec<u8> {
    let mut out = vec![REPLY_ERR, error_kind_code(e.kind())];
    out.extend_from_slice(e.message().as_bytes());
    out
}

/// Splits a reply into its body, or returns the error it carries.
pub fn parse_reply(reply: &[u8]) -> Result<&[u8]> {
    match reply.split_first() {
        Some((&REPLY_OK, body)) => Ok(body),
        Some((&REPLY_ERR, rest)) if !rest.is_empty() => {
            let kind = error_kind_from_code(rest[0]);
            Err(Error::new(
                kind,
                format!("producer: {}", String::from_utf8_lossy(&rest[1..])),
            ))
        }
        _ => Err(Error::transport("malformed reply from the peer plugin")),
    }
}

const KINDS: [ErrorKind; 13] = [
    ErrorKind::NullArgument,
    ErrorKind::InvalidArgument,
    ErrorKind::NotFound,
    ErrorKind::AlreadyExists,
    ErrorKind::Timeout,
    ErrorKind::MalformedMetadata,
    ErrorKind::Unsupported,
    ErrorKind::Transport,
    ErrorKind::ObjectFailed,
    ErrorKind::Unavailable,
    ErrorKind::BufferTooSmall,
    ErrorKind::Io,
    ErrorKind::Internal,
];

fn error_kind_code(kind: ErrorKind) -> u8 {
    KINDS.iter().position(|&k| k == kind).unwrap_or(7) as u8
}

fn error_kind_from_code(code: u8) -> ErrorKind {
    KINDS
        .get(code as usize)
        .copied()
        .unwrap_or(ErrorKind::Transport)
}
