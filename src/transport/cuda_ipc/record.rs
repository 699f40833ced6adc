//! The transport data of a `cuda_ipc` record (version 1, little-endian):
//!
//! ```text
//! version        u8        (= 1)
//! device uuid    [u8; 16]  the producer's GPU (ordinals differ between processes)
//! device ordinal i32       the producer's ordinal of it (same-process copies)
//! event          [u8; 64]  IPC handle of the event marking the producer's work
//!                          (all zero when every tensor is empty)
//! tensor count   u32       equals the record's tensor count
//! per tensor:    handle [u8; 64] | base u64 | size u64 | offset u64
//!                (the allocation holding it, and where in it the tensor starts;
//!                 all zero for an empty tensor)
//! ```

use crate::cuda::driver::IpcHandle;
use crate::cuda::ipc::Exported;
use crate::error::{Error, Result};

const VERSION: u8 = 1;
const PER_TENSOR: usize = 64 + 8 * 3;
const HEADER: usize = 1 + 16 + 4 + 64 + 4;

/// What a consumer needs to copy an object's tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The producer's GPU.
    pub uuid: [u8; 16],
    /// The producer's ordinal of that GPU.
    pub ordinal: i32,
    /// The producer's work event (`None` when every tensor is empty).
    pub event: Option<IpcHandle>,
    /// One per tensor; `None` for an empty tensor.
    pub tensors: Vec<Option<Exported>>,
}

impl Record {
    /// The bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + PER_TENSOR * self.tensors.len());
        out.push(VERSION);
        out.extend_from_slice(&self.uuid);
        out.extend_from_slice(&self.ordinal.to_le_bytes());
        out.extend_from_slice(&self.event.unwrap_or([0; 64]));
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            let e = t.unwrap_or(Exported {
                handle: [0; 64],
                base: 0,
                size: 0,
                offset: 0,
            });
            out.extend_from_slice(&e.handle);
            for v in [e.base, e.size, e.offset] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Parses and checks [`Record::encode`]'s bytes.
    pub fn decode(data: &[u8]) -> Result<Record> {
        let bad = |what: &str| Error::malformed(format!("cuda_ipc transport data: {what}"));
        if data.len() < HEADER {
            return Err(bad("truncated header"));
        }
        if data[0] != VERSION {
            return Err(bad(&format!(
                "version {} (this plugin reads {VERSION})",
                data[0]
            )));
        }
        let uuid: [u8; 16] = data[1..17].try_into().expect("16 bytes");
        let ordinal = i32::from_le_bytes(data[17..21].try_into().expect("4 bytes"));
        let event: IpcHandle = data[21..85].try_into().expect("64 bytes");
        let count = u32::from_le_bytes(data[85..89].try_into().expect("4 bytes")) as usize;
        // Bounded by the record's own length, not by a tensor count.
        let rest = &data[HEADER..];
        if count.checked_mul(PER_TENSOR) != Some(rest.len()) {
            return Err(bad(&format!(
                "{} bytes of tensor descriptors for {count} tensors",
                rest.len()
            )));
        }
        let tensors = rest
            .chunks_exact(PER_TENSOR)
            .map(|c| {
                let word = |i: usize| {
                    u64::from_le_bytes(c[64 + 8 * i..72 + 8 * i].try_into().expect("8 bytes"))
                };
                let e = Exported {
                    handle: c[..64].try_into().expect("64 bytes"),
                    base: word(0),
                    size: word(1),
                    offset: word(2),
                };
                if e.size == 0 {
                    Ok(None)
                } else if e.offset >= e.size {
                    Err(bad("a tensor starts outside its allocation"))
                } else {
                    Ok(Some(e))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Record {
            uuid,
            ordinal,
            event: (event != [0; 64]).then_some(event),
            tensors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            uuid: [7; 16],
            ordinal: 1,
            event: Some([3; 64]),
            tensors: vec![
                Some(Exported {
                    handle: [9; 64],
                    base: 0x7000_0000,
                    size: 2 << 20,
                    offset: 512,
                }),
                None,
            ],
        }
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        let bytes = sample().encode();
        assert_eq!(Record::decode(&bytes).unwrap(), sample());
        for n in 0..bytes.len() {
            assert!(Record::decode(&bytes[..n]).is_err(), "{n} bytes decoded");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Record::decode(&extra).is_err());
    }

    #[test]
    fn bad_offsets_and_versions_are_refused() {
        let mut r = sample();
        r.tensors[0].as_mut().unwrap().offset = 2 << 20;
        assert!(Record::decode(&r.encode()).is_err());
        let mut bytes = sample().encode();
        bytes[0] = 2;
        assert!(Record::decode(&bytes).is_err());
        let empty = Record {
            uuid: [0; 16],
            ordinal: 0,
            event: None,
            tensors: vec![None; 3],
        };
        assert_eq!(Record::decode(&empty.encode()).unwrap(), empty);
    }
}
