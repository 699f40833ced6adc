//! The messages on a channel between two plugins: requests name an operation;
//! replies start with a status byte (OK, or ERR + error kind + message), so an
//! application error on the producer (object freed, unknown group) reaches the
//! consumer as the same [`ErrorKind`] with the producer's message.

use crate::error::{Error, ErrorKind, Result};

/// A request's first byte: fetch an object (transport code, object ID and the
/// transport's part follow).
pub const OP_FETCH: u8 = 1;
/// A request's first byte: free objects (a count and the object IDs follow).
pub const OP_FREE: u8 = 2;
/// A request's first byte: a collective group's member reports a failed
/// transfer to the group's owner (a `GroupFailure` follows).
pub const OP_GROUP_FAILURE: u8 = 3;

/// Splits a request into its operation byte and the rest.
pub fn split_op(request: &[u8]) -> Result<(u8, &[u8])> {
    request
        .split_first()
        .map(|(&op, rest)| (op, rest))
        .ok_or_else(|| Error::transport("empty request"))
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

fn error_kind_code(kind: ErrorKind) -> u8 {
    kind.code()
}

/// A kind from a peer of another version falls back to a transport error.
fn error_kind_from_code(code: u8) -> ErrorKind {
    ErrorKind::from_code(code).unwrap_or(ErrorKind::Transport)
}
