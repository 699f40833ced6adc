//! The metadata record: what a receiver needs to fetch an RDT object, stored in
//! Ray's object store in place of the tensor bytes.
//!
//! Wire format, version 3. Fixed-width integers are little-endian; `v` is an
//! unsigned LEB128 varint in its shortest form:
//!
//! ```text
//! magic "RDTM" | version u16 | transport u8 | device_type i32 | device_id i32
//! object ID (28 bytes: the key the producer holds the object under)
//! node_id (u16 len + bytes) | pid u32 | actor_id (u16 len + bytes)
//! host_id (u16 len + bytes) | endpoint (u16 len + UTF-8) | tcp_endpoint (u16 len + UTF-8)
//! extent count v, then per extent: length v
//! tensor count v, then per tensor:
//!     flags u8 (bit 0: same dtype and shape as the previous tensor)
//!     [dtype code u8 | bits u8 | lanes v | ndim u8 | shape v x ndim]   (unless bit 0)
//!     [extent index v | byte offset v]                                   (tensors of one byte or more)
//! transport data (v len + bytes)
//! flags u8 (bit 0: inline) [| inline bytes (v len + bytes): the extents laid out as `layout::packed_extents` places them]
//! ```
//!
//! Every tensor is row-major contiguous at its place (see [`crate::layout`]).
//! A record is bounded by its own length, never by a tensor count: each count
//! is checked against the bytes left before anything is allocated for it.
//! Decoding never panics: every place is checked against its extent, every
//! descriptor is validated, non-canonical forms (a longer varint than needed,
//! a shape spelled out that repeats the previous one) and trailing bytes are
//! rejected, so a record re-encodes to exactly its own bytes.

use crate::dlpack::{DLDataType, DLDevice};
use crate::error::{Error, Result};
use crate::layout::Place;
use crate::object_id::{ObjectId, OBJECT_ID_LEN};
use crate::tensor::{TensorMeta, MAX_NDIM, MAX_TENSOR_BYTES};
use crate::transport_kind::TransportKind;

/// Leading magic bytes of every record.
pub const MAGIC: &[u8; 4] = b"RDTM";
/// The format version this build writes and reads (3: extents and a tensor
/// table, no fixed tensor count, the object's key).
pub const VERSION: u16 = 3;
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
/// Tensor flag bit: same dtype and shape as the previous tensor.
const FLAG_REPEAT: u8 = 1;

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
    /// The key the producer holds the object under.
    pub object: ObjectId,
    /// One descriptor per tensor, in order (compact row-major strides).
    pub tensors: Vec<TensorMeta>,
    /// The length of each extent of the object.
    pub extents: Vec<u64>,
    /// Where each tensor is; `None` exactly for tensors of no bytes.
    pub places: Vec<Option<Place>>,
    /// The producer's identity and endpoint.
    pub producer: Producer,
    /// Transport-specific bytes (registration descriptors, segment names, ...).
    pub transport_data: Vec<u8>,
    /// The extents' bytes, laid out by `layout::packed_extents`, for
    /// small objects carried inside the record (the consumer needs no
    /// transfer); `None` for objects fetched from the producer.
    pub inline: Option<Vec<u8>>,
}

impl Metadata {
    /// Sum of all tensors' byte sizes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes).sum()
    }

    /// Sum of all extents' lengths (what a transfer moves).
    pub fn extent_bytes(&self) -> u64 {
        self.extents.iter().sum()
    }

    /// Encodes the record. Fails when a field exceeds the format's limits or
    /// the places do not fit their extents.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(
            128 + self.tensors.len() * 8 + self.extents.len() * 4 + self.transport_data.len(),
        );
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
        check_len(
            "transport data",
            self.transport_data.len(),
            MAX_TRANSPORT_DATA,
        )?;
        if let Some(i) = self.extents.iter().position(|&len| len > MAX_TENSOR_BYTES) {
            return Err(Error::invalid(format!(
                "extent {i} is {} bytes, the limit is {MAX_TENSOR_BYTES}",
                self.extents[i]
            )));
        }
        if self.places.len() != self.tensors.len() {
            return Err(Error::invalid(format!(
                "{} places for {} tensors",
                self.places.len(),
                self.tensors.len()
            )));
        }
        check_places(&self.tensors, &self.places, &self.extents)
            .map_err(|e| Error::invalid(e.message().to_owned()))?;
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.transport.code());
        out.extend_from_slice(&self.device.device_type.to_le_bytes());
        out.extend_from_slice(&self.device.device_id.to_le_bytes());
        out.extend_from_slice(self.object.as_bytes());
        put_short_bytes(out, &self.producer.node_id);
        out.extend_from_slice(&self.producer.pid.to_le_bytes());
        put_short_bytes(out, &self.producer.actor_id);
        put_short_bytes(out, &self.producer.host_id);
        put_short_bytes(out, self.producer.endpoint.as_bytes());
        put_short_bytes(out, self.producer.tcp_endpoint.as_bytes());
        put_varint(out, self.extents.len() as u64);
        self.extents.iter().for_each(|&len| put_varint(out, len));
        put_varint(out, self.tensors.len() as u64);
        let mut previous: Option<&TensorMeta> = None;
        for (t, place) in self.tensors.iter().zip(&self.places) {
            check_len("tensor dimensions", t.shape.len(), MAX_NDIM)?;
            let repeat = previous.is_some_and(|p| p.dtype == t.dtype && p.shape == t.shape);
            if repeat {
                out.push(FLAG_REPEAT);
            } else {
                out.push(0);
                out.extend_from_slice(&[t.dtype.code, t.dtype.bits]);
                put_varint(out, t.dtype.lanes.into());
                out.push(t.shape.len() as u8);
                t.shape.iter().for_each(|&d| put_varint(out, d as u64));
            }
            if let Some(p) = place {
                put_varint(out, p.extent.into());
                put_varint(out, p.offset);
            }
            previous = Some(t);
        }
        put_varint(out, self.transport_data.len() as u64);
        out.extend_from_slice(&self.transport_data);
        match &self.inline {
            None => out.push(0),
            Some(bytes) => {
                check_len("inline data", bytes.len(), MAX_INLINE)?;
                out.push(FLAG_INLINE);
                put_varint(out, bytes.len() as u64);
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
        let object = ObjectId::from_slice(r.take(OBJECT_ID_LEN)?)?;
        let producer = r.producer()?;
        let extents = r.extents()?;
        let (tensors, places) = r.tensor_table()?;
        check_places(&tensors, &places, &extents)?;
        let data_len = r.varint()? as usize;
        check_len("transport data", data_len, MAX_TRANSPORT_DATA)
            .map_err(|e| Error::malformed(e.message()))?;
        let transport_data = r.take(data_len)?.to_vec();
        let inline = match r.u8()? {
            0 => None,
            FLAG_INLINE => {
                let len = r.varint()? as usize;
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
            object,
            tensors,
            extents,
            places,
            producer,
            transport_data,
            inline,
        })
    }
}

impl Reader<'_> {
    /// The producer's identity and addresses.
    fn producer(&mut self) -> Result<Producer> {
        Ok(Producer {
            node_id: self.short_bytes("node_id", MAX_ID_LEN)?.to_vec(),
            pid: self.u32()?,
            actor_id: self.short_bytes("actor_id", MAX_ID_LEN)?.to_vec(),
            host_id: self.short_bytes("host_id", MAX_HOST_ID_LEN)?.to_vec(),
            endpoint: self.short_str("endpoint", MAX_ENDPOINT_LEN)?,
            tcp_endpoint: self.short_str("tcp_endpoint", MAX_ENDPOINT_LEN)?,
        })
    }

    /// The extents' lengths (every extent takes at least one byte: a count
    /// the input cannot hold is refused before anything is allocated for it).
    fn extents(&mut self) -> Result<Vec<u64>> {
        let count = self.count("extent")?;
        let extents = (0..count)
            .map(|_| self.varint())
            .collect::<Result<Vec<_>>>()?;
        if let Some(i) = extents.iter().position(|&len| len > MAX_TENSOR_BYTES) {
            return Err(Error::malformed(format!(
                "extent {i} is {} bytes, the limit is {MAX_TENSOR_BYTES}",
                extents[i]
            )));
        }
        Ok(extents)
    }

    /// The tensor table: each tensor's descriptor and place.
    fn tensor_table(&mut self) -> Result<(Vec<TensorMeta>, Vec<Option<Place>>)> {
        let count = self.count("tensor")?;
        let mut tensors: Vec<TensorMeta> = Vec::with_capacity(count);
        let mut places = Vec::with_capacity(count);
        for i in 0..count {
            let (meta, place) = self
                .tensor(tensors.last())
                .map_err(|e| Error::malformed(format!("tensor {i}: {}", e.message())))?;
            tensors.push(meta);
            places.push(place);
        }
        Ok((tensors, places))
    }
}

/// Every tensor of one byte or more has a place inside its extent; empty ones
/// have none.
fn check_places(tensors: &[TensorMeta], places: &[Option<Place>], extents: &[u64]) -> Result<()> {
    for (i, (t, place)) in tensors.iter().zip(places).enumerate() {
        match place {
            None if t.nbytes == 0 => {}
            None => {
                return Err(Error::malformed(format!(
                    "tensor {i} has {} bytes but no place",
                    t.nbytes
                )))
            }
            Some(_) if t.nbytes == 0 => {
                return Err(Error::malformed(format!(
                    "tensor {i} has no bytes but a place"
                )))
            }
            Some(p) => {
                let len = extents.get(p.extent as usize).ok_or_else(|| {
                    Error::malformed(format!(
                        "tensor {i} is in extent {}, the object has {}",
                        p.extent,
                        extents.len()
                    ))
                })?;
                if p.offset.checked_add(t.nbytes).is_none_or(|end| end > *len) {
                    return Err(Error::malformed(format!(
                        "tensor {i} ({} bytes at offset {}) does not fit extent {} ({len} bytes)",
                        t.nbytes, p.offset, p.extent
                    )));
                }
            }
        }
    }
    Ok(())
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

/// Appends `v` as an unsigned LEB128 varint (shortest form).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
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

    /// An unsigned LEB128 varint in its shortest form.
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(Error::malformed("varint overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Error::malformed("varint is not in its shortest form"));
                }
                return Ok(value);
            }
        }
        Err(Error::malformed("varint is longer than 10 bytes"))
    }

    /// A count of items that take at least one byte each.
    fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.varint()?;
        if n > self.buf.len() as u64 {
            return Err(Error::malformed(format!(
                "record claims {n} {what}s but has only {} bytes left",
                self.buf.len()
            )));
        }
        Ok(n as usize)
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

    /// One tensor's entry; `previous` is the tensor before it, if any.
    fn tensor(&mut self, previous: Option<&TensorMeta>) -> Result<(TensorMeta, Option<Place>)> {
        let meta = match self.u8()? {
            FLAG_REPEAT => previous
                .cloned()
                .ok_or_else(|| Error::malformed("the first tensor repeats a previous one"))?,
            0 => {
                let [code, bits] = self.array::<2>()?;
                let lanes = u16::try_from(self.varint()?)
                    .map_err(|_| Error::malformed("lanes does not fit 16 bits"))?;
                let dtype = DLDataType { code, bits, lanes };
                let ndim = self.u8()? as usize;
                if ndim > MAX_NDIM {
                    return Err(Error::malformed(format!(
                        "{ndim} dimensions, the limit is {MAX_NDIM}"
                    )));
                }
                let shape = (0..ndim)
                    .map(|_| {
                        i64::try_from(self.varint()?)
                            .map_err(|_| Error::malformed("a dimension does not fit 63 bits"))
                    })
                    .collect::<Result<crate::tensor::Dims>>()?;
                if previous.is_some_and(|p| p.dtype == dtype && p.shape == shape) {
                    return Err(Error::malformed(
                        "dtype and shape repeat the previous tensor's without saying so",
                    ));
                }
                TensorMeta::compact(dtype, shape)?
            }
            flags => return Err(Error::malformed(format!("unknown tensor flags {flags:#x}"))),
        };
        let place = if meta.nbytes == 0 {
            None
        } else {
            let extent = u32::try_from(self.varint()?)
                .map_err(|_| Error::malformed("extent index does not fit 32 bits"))?;
            Some(Place {
                extent,
                offset: self.varint()?,
            })
        };
        Ok((meta, place))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_longer_forms() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX.into(), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader { buf: &out };
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.buf.is_empty());
        }
        // 0 spelled in two bytes.
        assert!(Reader { buf: &[0x80, 0x00] }.varint().is_err());
        // More than 64 bits.
        let mut long = vec![0xffu8; 9];
        long.push(0x02);
        assert!(Reader { buf: &long }.varint().is_err());
    }
}
