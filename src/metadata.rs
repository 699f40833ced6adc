//! The metadata record: what a receiver needs to fetch an RDT object, stored in
//! Ray's object store in place of the tensor bytes.
//!
//! Wire format, version 2, all integers little-endian:
//!
//! ```text
//! magic "RDTM" | version u16 | transport u8 | device_type i32 | device_id i32
//! node_id (u16 len + bytes) | pid u32 | actor_id (u16 len + bytes)
//! host_id (u16 len + bytes) | endpoint (u16 len + UTF-8) | tcp_endpoint (u16 len + UTF-8)
//! tensor count u32, then per tensor:
//!     dtype code u8 | bits u8 | lanes u16 | ndim u8 | shape i64 x ndim | strides i64 x ndim | nbytes u64
//! transport data (u32 len + bytes)
//! flags u8 (bit 0: inline) [| inline tensor bytes (u32 len + bytes), packed as `transport::packed_layout` places them]
//! ```
//!
//! Decoding never panics: every length is bounds-checked against the input and
//! against the limits below, every tensor descriptor is validated, and trailing
//! bytes are rejected.

use crate::dlpack::{DLDataType, DLDevice};
use crate::error::{Error, Result};
use crate::tensor::{TensorMeta, MAX_NDIM};
use crate::transport_kind::TransportKind;

/// Leading magic bytes of every record.
pub const MAGIC: &[u8; 4] = b"RDTM";
/// The format version this build writes and reads (2: the producer's host
/// identity and TCP endpoint).
pub const VERSION: u16 = 2;
/// Most tensors in one record.
pub const MAX_TENSORS: usize = 4096;
/// Longest node or actor ID.
pub const MAX_ID_LEN: usize = 64;
/// Longest host identity.
pub const MAX_HOST_ID_LEN: usize = 64;
/// Longest endpoint address.
pub const MAX_ENDPOINT_LEN: usize = 1024;
/// Largest transport-specific payload.
pub const MAX_TRANSPORT_DATA: usize = 16 << 20;
/// Largest inline payload.
pub const MAX_INLINE: usize = 16 << 20;
/// Flag bit: the record carries the tensors' bytes.
const FLAG_INLINE: u8 = 1;

/// Who holds the primary copy and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producer {
    /// Ray node ID (binary) of the producing process's node.
    pub node_id: Vec<u8>,
    /// Process ID of the producer.
    pub pid: u32,
    /// Ray actor ID (binary) of the producer; empty for the driver.
    pub actor_id: Vec<u8>,
    /// The producer's host identity (`crate::endpoint::host`): a consumer with
    /// the same identity uses the same-host endpoint.
    pub host_id: Vec<u8>,
    /// The producer plugin's same-host endpoint (`unix:@…`).
    pub endpoint: String,
    /// The producer plugin's endpoint for other hosts (`tcp:…`); empty when it
    /// does not listen on TCP.
    pub tcp_endpoint: String,
}

impl Producer {
    /// How to reach the producer's endpoint.
    pub fn contact(&self) -> crate::endpoint::Contact {
        crate::endpoint::Contact {
            host_id: self.host_id.clone(),
            unix: self.endpoint.clone(),
            tcp: self.tcp_endpoint.clone(),
        }
    }
}

/// A decoded metadata record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The transport that moves this object.
    pub transport: TransportKind,
    /// The device holding the tensors.
    pub device: DLDevice,
    /// One descriptor per tensor, in order.
    pub tensors: Vec<TensorMeta>,
    /// The producer's identity and endpoint.
    pub producer: Producer,
    /// Transport-specific bytes (registration descriptors, segment names, ...).
    pub transport_data: Vec<u8>,
    /// The tensors' bytes, packed, for small objects carried inside the record
    /// (the consumer needs no transfer); `None` for objects fetched from the producer.
    pub inline: Option<Vec<u8>>,
}

impl Metadata {
    /// Sum of all tensors' byte sizes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes).sum()
    }

    /// Encodes the record. Fails when a field exceeds the format's limits.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + self.tensors.len() * 48 + self.transport_data.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        check_len("node_id", self.producer.node_id.len(), MAX_ID_LEN)?;
        check_len("actor_id", self.producer.actor_id.len(), MAX_ID_LEN)?;
        check_len("host_id", self.producer.host_id.len(), MAX_HOST_ID_LEN)?;
        check_len("endpoint", self.producer.endpoint.len(), MAX_ENDPOINT_LEN)?;
        check_len(
            "tcp_endpoint",
            self.producer.tcp_endpoint.len(),
            MAX_ENDPOINT_LEN,
        )?;
        check_len("tensor list", self.tensors.len(), MAX_TENSORS)?;
        check_len(
            "transport data",
            self.transport_data.len(),
            MAX_TRANSPORT_DATA,
        )?;
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.transport.code());
        out.extend_from_slice(&self.device.device_type.to_le_bytes());
        out.extend_from_slice(&self.device.device_id.to_le_bytes());
        put_short_bytes(out, &self.producer.node_id);
        out.extend_from_slice(&self.producer.pid.to_le_bytes());
        put_short_bytes(out, &self.producer.actor_id);
        put_short_bytes(out, &self.producer.host_id);
        put_short_bytes(out, self.producer.endpoint.as_bytes());
        put_short_bytes(out, self.producer.tcp_endpoint.as_bytes());
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            check_len("tensor dimensions", t.shape.len(), MAX_NDIM)?;
            out.extend_from_slice(&[t.dtype.code, t.dtype.bits]);
            out.extend_from_slice(&t.dtype.lanes.to_le_bytes());
            out.push(t.shape.len() as u8);
            t.shape
                .iter()
                .chain(&t.strides)
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            out.extend_from_slice(&t.nbytes.to_le_bytes());
        }
        out.extend_from_slice(&(self.transport_data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.transport_data);
        match &self.inline {
            None => out.push(0),
            Some(bytes) => {
                check_len("inline data", bytes.len(), MAX_INLINE)?;
                out.push(FLAG_INLINE);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// Decodes and validates a record.
    pub fn decode(bytes: &[u8]) -> Result<Metadata> {
        let mut r = Reader { buf: bytes };
        if r.take(4)? != MAGIC {
            return Err(Error::malformed("not an RDT metadata record (bad magic)"));
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(Error::malformed(format!(
                "metadata version {version} is not supported (this plugin reads {VERSION})"
            )));
        }
        let transport =
            TransportKind::from_code(r.u8()?.into()).map_err(|e| Error::malformed(e.message()))?;
        let device = DLDevice {
            device_type: r.i32()?,
            device_id: r.i32()?,
        };
        let node_id = r.short_bytes("node_id", MAX_ID_LEN)?.to_vec();
        let pid = r.u32()?;
        let actor_id = r.short_bytes("actor_id", MAX_ID_LEN)?.to_vec();
        let host_id = r.short_bytes("host_id", MAX_HOST_ID_LEN)?.to_vec();
        let endpoint = r.short_str("endpoint", MAX_ENDPOINT_LEN)?;
        let tcp_endpoint = r.short_str("tcp_endpoint", MAX_ENDPOINT_LEN)?;
        let count = r.u32()? as usize;
        check_len("tensor list", count, MAX_TENSORS).map_err(|e| Error::malformed(e.message()))?;
        // Each tensor takes at least 13 bytes: refuse counts the input cannot hold
        // before allocating for them.
        if count.saturating_mul(13) > r.buf.len() {
            return Err(Error::malformed(format!(
                "record claims {count} tensors but is only {} bytes long",
                bytes.len()
            )));
        }
        let mut tensors = Vec::with_capacity(count);
        for i in 0..count {
            tensors.push(
                r.tensor()
                    .map_err(|e| Error::malformed(format!("tensor {i}: {}", e.message())))?,
            );
        }
        let data_len = r.u32()? as usize;
        check_len("transport data", data_len, MAX_TRANSPORT_DATA)
            .map_err(|e| Error::malformed(e.message()))?;
        let transport_data = r.take(data_len)?.to_vec();
        let inline = match r.u8()? {
            0 => None,
            FLAG_INLINE => {
                let len = r.u32()? as usize;
                check_len("inline data", len, MAX_INLINE)
                    .map_err(|e| Error::malformed(e.message()))?;
                Some(r.take(len)?.to_vec())
            }
            flags => return Err(Error::malformed(format!("unknown record flags {flags:#x}"))),
        };
        if !r.buf.is_empty() {
            return Err(Error::malformed(format!(
                "{} trailing bytes after the record",
                r.buf.len()
            )));
        }
        Ok(Metadata {
            transport,
            device,
            tensors,
            producer: Producer {
                node_id,
                pid,
                actor_id,
                host_id,
                endpoint,
                tcp_endpoint,
            },
            transport_data,
            inline,
        })
    }
}

fn check_len(what: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::invalid(format!(
            "{what} has {len} entries, the limit is {max}"
        )));
    }
    Ok(())
}

fn put_short_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A bounds-checked cursor over the input.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::malformed(format!(
                "record truncated: needed {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn short_bytes(&mut self, what: &str, max: usize) -> Result<&'a [u8]> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(Error::malformed(format!(
                "{what} is {len} bytes, the limit is {max}"
            )));
        }
        self.take(len)
    }

    fn short_str(&mut self, what: &str, max: usize) -> Result<String> {
        std::str::from_utf8(self.short_bytes(what, max)?)
            .map(str::to_owned)
            .map_err(|_| Error::malformed(format!("{what} is not UTF-8")))
    }

    fn tensor(&mut self) -> Result<TensorMeta> {
        let [code, bits] = self.array::<2>()?;
        let dtype = DLDataType {
            code,
            bits,
            lanes: self.u16()?,
        };
        let ndim = self.u8()? as usize;
        if ndim > MAX_NDIM {
            return Err(Error::malformed(format!(
                "{ndim} dimensions, the limit is {MAX_NDIM}"
            )));
        }
        let shape = (0..ndim).map(|_| self.i64()).collect::<Result<Vec<_>>>()?;
        let strides = (0..ndim).map(|_| self.i64()).collect::<Result<Vec<_>>>()?;
        let nbytes = self.u64()?;
        let meta = TensorMeta::new(dtype, shape, strides)?;
        if meta.nbytes != nbytes {
            return Err(Error::malformed(format!(
                "byte size {nbytes} does not match dtype and shape ({} bytes)",
                meta.nbytes
            )));
        }
        Ok(meta)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}
