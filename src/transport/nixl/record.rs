//! The nixl transport's part of the metadata record (`Metadata::transport_data`).
//!
//! Format version 2 (one descriptor per extent, not per tensor), integers
//! little-endian:
//!
//! ```text
//! version u8 (= 2)
//! agent name     u16 len + UTF-8        the producer's NIXL agent (empty: all tensors are empty)
//! conn md        u32 len + bytes        its connection info (for load_remote_md, once per peer)
//! sections md    u32 len + bytes        the registrations of this object's extents (rkeys)
//! extent count   u32                    equals the record's extent count
//! per extent:    addr u64 | len u64 | dev u64 | registration id u64
//! ```
//!
//! Decoding never panics: every length is checked against the input and the
//! limits below (the descriptor count against the bytes left), and trailing
//! bytes are rejected.

use crate::error::{Error, Result};

/// The format version this build writes and reads.
pub const VERSION: u8 = 2;
/// Longest agent name.
pub const MAX_NAME: usize = 256;
/// Largest connection-info blob.
pub const MAX_CONN_MD: usize = 1 << 20;
/// Largest sections blob.
pub const MAX_SECTIONS_MD: usize = 8 << 20;

/// Where one extent's bytes are in the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Address in the producer.
    pub addr: u64,
    /// Length in bytes (the extent's).
    pub len: u64,
    /// NIXL device ID of the registration (host memory: the registration ID; CUDA:
    /// the device ordinal).
    pub dev: u64,
    /// The producer's ID of the registration covering it.
    pub reg_id: u64,
}

/// Decoded transport data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The producer's agent name.
    pub agent: String,
    /// The producer's connection info.
    pub conn_md: Vec<u8>,
    /// Metadata of the registrations this object's tensors live in.
    pub sections_md: Vec<u8>,
    /// One per extent, in order.
    pub descs: Vec<Desc>,
}

impl Record {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        check("agent name", self.agent.len(), MAX_NAME)?;
        check("connection info", self.conn_md.len(), MAX_CONN_MD)?;
        check("sections metadata", self.sections_md.len(), MAX_SECTIONS_MD)?;
        let mut out = Vec::with_capacity(
            16 + self.agent.len()
                + self.conn_md.len()
                + self.sections_md.len()
                + 32 * self.descs.len(),
        );
        out.push(VERSION);
        out.extend_from_slice(&(self.agent.len() as u16).to_le_bytes());
        out.extend_from_slice(self.agent.as_bytes());
        for blob in [&self.conn_md, &self.sections_md] {
            out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
            out.extend_from_slice(blob);
        }
        out.extend_from_slice(&(self.descs.len() as u32).to_le_bytes());
        for d in &self.descs {
            out.extend_from_slice(&d.addr.to_le_bytes());
            out.extend_from_slice(&d.len.to_le_bytes());
            out.extend_from_slice(&d.dev.to_le_bytes());
            out.extend_from_slice(&d.reg_id.to_le_bytes());
        }
        Ok(out)
    }

    /// Decodes and validates transport data.
    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let mut r = Reader(bytes);
        let version = r.array::<1>()?[0];
        if version != VERSION {
            return Err(Error::malformed(format!("nixl transport data version {version} is not supported (this plugin reads {VERSION})")));
        }
        let name_len = u16::from_le_bytes(r.array()?) as usize;
        if name_len > MAX_NAME {
            return Err(Error::malformed(format!(
                "nixl agent name is {name_len} bytes, the limit is {MAX_NAME}"
            )));
        }
        let agent = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| Error::malformed("nixl agent name is not UTF-8"))?
            .to_owned();
        let conn_md = r.blob("connection info", MAX_CONN_MD)?.to_vec();
        let sections_md = r.blob("sections metadata", MAX_SECTIONS_MD)?.to_vec();
        let count = u32::from_le_bytes(r.array()?) as usize;
        if count.saturating_mul(32) != r.0.len() {
            return Err(Error::malformed(format!(
                "nixl descriptor count {count} does not match the {} bytes left",
                r.0.len()
            )));
        }
        let descs = (0..count)
            .map(|_| {
                Ok(Desc {
                    addr: u64::from_le_bytes(r.array()?),
                    len: u64::from_le_bytes(r.array()?),
                    dev: u64::from_le_bytes(r.array()?),
                    reg_id: u64::from_le_bytes(r.array()?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Record {
            agent,
            conn_md,
            sections_md,
            descs,
        })
    }
}

fn check(what: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::invalid(format!(
            "nixl {what} is {len} long, the limit is {max}"
        )));
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(Error::malformed(format!(
                "nixl transport data truncated: needed {n} more bytes, {} left",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn blob(&mut self, what: &str, max: usize) -> Result<&'a [u8]> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > max {
            return Err(Error::malformed(format!(
                "nixl {what} is {len} bytes, the limit is {max}"
            )));
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            agent: "ray-rdt-1-00".into(),
            conn_md: vec![1, 2, 3],
            sections_md: vec![4; 40],
            descs: vec![
                Desc {
                    addr: 0x1000,
                    len: 64,
                    dev: 0,
                    reg_id: 7,
                },
                Desc {
                    addr: 0,
                    len: 0,
                    dev: 0,
                    reg_id: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode().unwrap()).unwrap(), r);
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = sample().encode().unwrap();
        for n in 0..bytes.len() {
            assert!(
                Record::decode(&bytes[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Record::decode(&longer).is_err());
        let mut bad = bytes;
        bad[0] = 9;
        assert!(Record::decode(&bad).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Record::decode(&bytes);
        }
    }
}
