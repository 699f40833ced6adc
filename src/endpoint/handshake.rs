//! The first frames of every connection, before any request: the server says
//! whether it serves this peer (and on TCP with a cluster token, proves it and
//! asks for the peer's proof, see [`super::auth`]), is busy, or refuses.
//!
//! ```text
//! server hello:   "RDT1" | WELCOME [| server proof]     serving starts
//!                 "RDT1" | CHALLENGE | nonce_s          TCP with a token
//!                 "RDT1" | BUSY | reason                connection bound reached: retry
//!                 "RDT1" | REFUSED | reason             not served (uid, proof)
//! client answer:  "RDTP" | nonce_c | proof              to a challenge
//!                 "RDTN"                                 "I have no token" (so the server can say why)
//! ```

use super::auth::{random_bytes, ClusterToken, NONCE_LEN, PROOF_LEN};
use super::channel::{Channel, Deadline};
use crate::error::{Error, ErrorKind, Result};
use std::time::Duration;

const MAGIC: &[u8; 4] = b"RDT1";
const PROOF: &[u8; 4] = b"RDTP";
const NO_TOKEN: &[u8; 4] = b"RDTN";

const WELCOME: u8 = 0;
const CHALLENGE: u8 = 1;
const BUSY: u8 = 2;
const REFUSED: u8 = 3;

/// How long a refusal or busy notice may take to write (best effort).
const NOTICE_TIMEOUT: Duration = Duration::from_millis(200);

fn hello(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(kind);
    out.extend_from_slice(rest);
    out
}

/// Server: tells the peer it is not served, and why (best effort).
pub(crate) fn refuse(channel: &mut Channel, why: &str) {
    let _ = channel.send(&hello(REFUSED, why.as_bytes()), NOTICE_TIMEOUT);
}

/// Server: tells the peer the endpoint is at its connection bound (best effort).
pub(crate) fn busy(channel: &mut Channel, why: &str) {
    let _ = channel.send(&hello(BUSY, why.as_bytes()), NOTICE_TIMEOUT);
}

/// Server: admits a same-host peer whose credentials were checked.
pub(crate) fn welcome(channel: &mut Channel, timeout: Duration) -> Result<()> {
    channel.send(&hello(WELCOME, &[]), timeout)
}

/// Server, TCP: admits the peer once it proved `token` within `timeout`; with no
/// token (Ray's authentication off) admits it at once. A wrong or missing proof
/// is refused (the peer is told why) and returned as [`ErrorKind::AuthRefused`].
pub(crate) fn admit(channel: &mut Channel, token: &ClusterToken, timeout: Duration) -> Result<()> {
    if !token.is_set() {
        return welcome(channel, timeout);
    }
    let deadline = Deadline::after(timeout);
    let server_nonce = random_bytes::<NONCE_LEN>()?;
    channel.send(&hello(CHALLENGE, &server_nonce), deadline.left())?;
    let answer = channel.recv(deadline.left())?.payload;
    let refusal = |channel: &mut Channel, why: String| {
        refuse(channel, &why);
        Err(Error::new(ErrorKind::AuthRefused, why))
    };
    if answer.as_slice() == NO_TOKEN {
        return refusal(
            channel,
            "authentication refused: Ray's token authentication is on for this cluster and the peer has no token".into(),
        );
    }
    if answer.len() != 4 + NONCE_LEN + PROOF_LEN || &answer[..4] != PROOF {
        return refusal(channel, "authentication refused: malformed proof".into());
    }
    let (client_nonce, proof) = answer[4..].split_at(NONCE_LEN);
    if !token.check_client(&server_nonce, client_nonce, proof) {
        return refusal(
            channel,
            "authentication refused: the proof of Ray's cluster token is wrong (another cluster's token?)".into(),
        );
    }
    let mine = token.server_proof(&server_nonce, client_nonce)?;
    channel.send(&hello(WELCOME, &mine), deadline.left())
}

/// What a client learns from the server's hello.
pub(crate) enum Greeting {
    /// The server serves this connection.
    Served,
    /// The server is at its connection bound; try again shortly.
    Busy(String),
}

/// Client: reads the server's hello and, on TCP, proves `token` and checks the
/// server's proof. A refusal is [`ErrorKind::AuthRefused`] with the server's reason.
pub(crate) fn greet(
    channel: &mut Channel,
    token: &ClusterToken,
    timeout: Duration,
) -> Result<Greeting> {
    let deadline = Deadline::after(timeout);
    let left = || deadline.left();
    let frame = channel.recv(left())?.payload;
    let (kind, rest) = parse_hello(channel.peer(), &frame)?;
    match kind {
        BUSY => Ok(Greeting::Busy(String::from_utf8_lossy(rest).into_owned())),
        REFUSED => Err(Error::new(
            ErrorKind::AuthRefused,
            format!(
                "the peer plugin at {} refused this connection: {}",
                channel.peer(),
                String::from_utf8_lossy(rest)
            ),
        )),
        WELCOME if rest.is_empty() && (channel.passes_descriptors() || !token.is_set()) => {
            Ok(Greeting::Served)
        }
        WELCOME => Err(Error::new(
            ErrorKind::AuthRefused,
            format!(
                "the peer plugin at {} did not prove Ray's cluster token, which this process holds: refusing to trust it (is it in another cluster, or an impostor?)",
                channel.peer()
            ),
        )),
        CHALLENGE if rest.len() == NONCE_LEN => {
            if !token.is_set() {
                let _ = channel.send(NO_TOKEN, left());
                return Err(Error::new(
                    ErrorKind::AuthRefused,
                    format!(
                        "the peer plugin at {} requires Ray's cluster token (token authentication is on in its cluster) and this process has none (set RAY_AUTH_MODE=token and the token, as for `ray start`)",
                        channel.peer()
                    ),
                ));
            }
            let client_nonce = random_bytes::<NONCE_LEN>()?;
            let mut answer = PROOF.to_vec();
            answer.extend_from_slice(&client_nonce);
            answer.extend_from_slice(&token.client_proof(rest, &client_nonce)?);
            channel.send(&answer, left())?;
            let reply = channel.recv(left())?.payload;
            let (kind, proof) = parse_hello(channel.peer(), &reply)?;
            match kind {
                WELCOME if token.check_server(rest, &client_nonce, proof) => Ok(Greeting::Served),
                REFUSED => Err(Error::new(
                    ErrorKind::AuthRefused,
                    format!(
                        "the peer plugin at {} refused this process: {}",
                        channel.peer(),
                        String::from_utf8_lossy(proof)
                    ),
                )),
                _ => Err(Error::new(
                    ErrorKind::AuthRefused,
                    format!(
                        "the peer plugin at {} answered with a wrong proof of Ray's cluster token (another cluster's token?)",
                        channel.peer()
                    ),
                )),
            }
        }
        _ => Err(Error::transport(format!(
            "the peer at {} sent a malformed hello: not a ray-rdt plugin of this version?",
            channel.peer()
        ))),
    }
}

fn parse_hello<'a>(peer: &str, frame: &'a [u8]) -> Result<(u8, &'a [u8])> {
    match frame {
        [m0, m1, m2, m3, kind, rest @ ..] if [*m0, *m1, *m2, *m3] == *MAGIC => Ok((*kind, rest)),
        _ => Err(Error::transport(format!(
            "the peer at {peer} is not a ray-rdt plugin of this version (bad hello)"
        ))),
    }
}
