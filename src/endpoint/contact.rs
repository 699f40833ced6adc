//! How to reach a process's endpoint from anywhere: its host identity and both
//! addresses. A metadata record carries its producer's contact; a collective
//! group's members carry the contact of the group's owner (to report a failed
//! transfer). [`Contact::route`] picks the channel a peer should use.

use crate::error::{Error, Result};

/// Longest field of an encoded contact.
const MAX_FIELD: usize = 1024;

/// A process's host identity and endpoint addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// The host identity ([`super::host`]).
    pub host_id: Vec<u8>,
    /// Same-host address (`unix:@…`).
    pub unix: String,
    /// Address for other hosts (`tcp:…`), empty when none.
    pub tcp: String,
}

impl Contact {
    /// The address a process on host `from_host` uses to reach this one, and
    /// whether that is the same-host channel: the same-host address when the
    /// host identities match, else the TCP one (`None` when there is none).
    pub fn route(&self, from_host: &[u8]) -> (Option<&str>, bool) {
        let same_host = !self.host_id.is_empty() && self.host_id == from_host;
        if same_host {
            (Some(self.unix.as_str()), true)
        } else {
            (Some(self.tcp.as_str()).filter(|a| !a.is_empty()), false)
        }
    }

    /// `host_id`, `unix`, `tcp`, each as u16 length + bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [&self.host_id[..], self.unix.as_bytes(), self.tcp.as_bytes()] {
            let field = &field[..field.len().min(MAX_FIELD)];
            out.extend_from_slice(&(field.len() as u16).to_le_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// Inverse of [`Contact::encode`].
    pub fn decode(mut bytes: &[u8]) -> Result<Contact> {
        let mut field = || -> Result<Vec<u8>> {
            let (len, rest) = bytes
                .split_first_chunk::<2>()
                .ok_or_else(|| Error::invalid("contact is truncated"))?;
            let len = u16::from_le_bytes(*len) as usize;
            if len > MAX_FIELD || rest.len() < len {
                return Err(Error::invalid("contact is truncated"));
            }
            let (value, rest) = rest.split_at(len);
            bytes = rest;
            Ok(value.to_vec())
        };
        let host_id = field()?;
        let text = |v: Vec<u8>| {
            String::from_utf8(v).map_err(|_| Error::invalid("contact address is not UTF-8"))
        };
        let unix = text(field()?)?;
        let tcp = text(field()?)?;
        if !bytes.is_empty() {
            return Err(Error::invalid("trailing bytes after a contact"));
        }
        Ok(Contact { host_id, unix, tcp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_route() {
        let c = Contact {
            host_id: b"boot/net:1".to_vec(),
            unix: "unix:@a".into(),
            tcp: "tcp:10.0.0.1:5".into(),
        };
        assert_eq!(Contact::decode(&c.encode()).unwrap(), c);
        assert_eq!(c.route(b"boot/net:1"), (Some("unix:@a"), true));
        assert_eq!(c.route(b"other"), (Some("tcp:10.0.0.1:5"), false));
        let no_tcp = Contact {
            tcp: String::new(),
            ..c
        };
        assert_eq!(no_tcp.route(b"other"), (None, false));
        assert!(Contact::decode(&[5, 0, 1]).is_err());
    }
}
