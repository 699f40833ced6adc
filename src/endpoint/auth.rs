//! Proof of Ray's cluster token between two plugins (TCP channels only).
//!
//! Challenge-response, mutual, with HMAC-SHA256; the token itself never goes on
//! the wire:
//!
//! ```text
//! server -> client   challenge: nonce_s (32 random bytes)
//! client -> server   nonce_c | HMAC(token, "ray-rdt/1 client" | nonce_s | nonce_c)
//! server -> client   HMAC(token, "ray-rdt/1 server" | nonce_c | nonce_s)
//! ```
//!
//! The server serves nothing before the client's proof checks out; the client
//! trusts the server only once the server's proof does (so a consumer never
//! reads tensors from an impostor). Both nonces are fresh per connection, so a
//! recorded exchange cannot be replayed.

use crate::error::{Error, ErrorKind, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes in a nonce and in a proof.
pub(crate) const NONCE_LEN: usize = 32;
/// Bytes in a proof (HMAC-SHA256).
pub(crate) const PROOF_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"ray-rdt/1 client";
const SERVER_LABEL: &[u8] = b"ray-rdt/1 server";

/// The cluster token this process proves and checks, or none when Ray's token
/// authentication is off (then TCP peers are accepted as Ray accepts them).
#[derive(Clone, Default)]
pub struct ClusterToken(Option<Vec<u8>>);

impl std::fmt::Debug for ClusterToken {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ClusterToken(set)"
        } else {
            "ClusterToken(none)"
        })
    }
}

impl ClusterToken {
    /// A token (`None` or empty: authentication off).
    pub fn new(token: Option<&[u8]>) -> ClusterToken {
        ClusterToken(token.filter(|t| !t.is_empty()).map(<[u8]>::to_vec))
    }

    /// Whether peers must prove the token.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn mac(&self, label: &[u8], first: &[u8], second: &[u8]) -> Result<[u8; PROOF_LEN]> {
        let token = self
            .0
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "no cluster token to prove"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(token)
            .map_err(|_| Error::new(ErrorKind::Internal, "HMAC refused the key"))?;
        mac.update(label);
        mac.update(first);
        mac.update(second);
        Ok(mac.finalize().into_bytes().into())
    }

    fn verify(&self, label: &[u8], first: &[u8], second: &[u8], proof: &[u8]) -> bool {
        self.0.as_deref().is_some_and(|token| {
            Hmac::<Sha256>::new_from_slice(token).is_ok_and(|mut mac| {
                mac.update(label);
                mac.update(first);
                mac.update(second);
                // Constant-time comparison.
                mac.verify_slice(proof).is_ok()
            })
        })
    }

    /// Client: the proof answering the server's challenge with our nonce.
    pub(crate) fn client_proof(
        &self,
        server_nonce: &[u8],
        client_nonce: &[u8],
    ) -> Result<[u8; PROOF_LEN]> {
        self.mac(CLIENT_LABEL, server_nonce, client_nonce)
    }

    /// Server: whether the client's proof is right.
    pub(crate) fn check_client(
        &self,
        server_nonce: &[u8],
        client_nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        self.verify(CLIENT_LABEL, server_nonce, client_nonce, proof)
    }

    /// Server: the proof that it holds the token too.
    pub(crate) fn server_proof(
        &self,
        server_nonce: &[u8],
        client_nonce: &[u8],
    ) -> Result<[u8; PROOF_LEN]> {
        self.mac(SERVER_LABEL, client_nonce, server_nonce)
    }

    /// Client: whether the server's proof is right.
    pub(crate) fn check_server(
        &self,
        server_nonce: &[u8],
        client_nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        self.verify(SERVER_LABEL, client_nonce, server_nonce, proof)
    }
}

/// `N` random bytes from the kernel.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        // SAFETY: getrandom writes at most N - got bytes into the rest of b.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr() as *mut _, N - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("reading random bytes", e));
            }
        } else {
            got += n as usize;
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_only_with_the_same_token() {
        let a = ClusterToken::new(Some(b"secret"));
        let b = ClusterToken::new(Some(b"other"));
        let (ns, nc) = (random_bytes::<32>().unwrap(), random_bytes::<32>().unwrap());
        let proof = a.client_proof(&ns, &nc).unwrap();
        assert!(a.check_client(&ns, &nc, &proof));
        assert!(!b.check_client(&ns, &nc, &proof));
        // A proof for one challenge does not answer another, nor the other direction.
        assert!(!a.check_client(&nc, &ns, &proof));
        assert!(!a.check_server(&ns, &nc, &proof));
        let server = a.server_proof(&ns, &nc).unwrap();
        assert!(a.check_server(&ns, &nc, &server));
        assert!(!ClusterToken::default().check_client(&ns, &nc, &proof));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = ClusterToken::new(Some(b"hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(!ClusterToken::new(Some(b"")).is_set());
    }
}
