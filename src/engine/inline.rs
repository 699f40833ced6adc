//! Small objects carried inside their metadata record: the producer packs the
//! tensors' bytes into the record at put; a consumer builds its tensors from
//! them with no transfer (`RAY_RDT_INLINE_BYTES`, see [`threshold`]).
//!
//! The producer still keeps the primary copy, so passing the ref back to it
//! gives the very same tensor. Other consumers get the bytes as they were when
//! the method returned: in the guide's words, none of the later in-place changes
//! are seen (it promises only that "some or all of the changes may be seen").

use crate::dlpack::DLDevice;
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::tensor::{is_host, Tensor, TensorMeta};
use crate::transport::packed_layout;

/// Environment variable: objects whose tensors total at most this many bytes
/// travel inside their record (0 turns inlining off).
pub const THRESHOLD_ENV: &str = "RAY_RDT_INLINE_BYTES";

/// Default inline threshold: the largest size at which an inline object is
/// still as fast as a fetched one through Ray (docs/performance.md: even at
/// 4-32 KiB, 1.08x slower at 64 KiB, 1.4x at 256 KiB).
pub const DEFAULT_THRESHOLD: u64 = 16 << 10;

/// The inline threshold in bytes.
pub fn threshold() -> u64 {
    crate::settings::u64_or(THRESHOLD_ENV, DEFAULT_THRESHOLD)
}

/// The tensors' bytes packed one after another (as [`packed_layout`] places
/// them), when the object is small enough and in host memory (a threshold of
/// 0 turns inlining off, for empty objects too).
pub fn pack(tensors: &[Tensor], threshold: u64) -> Result<Option<Vec<u8>>> {
    let total: u64 = tensors.iter().map(|t| t.meta().nbytes).sum();
    if threshold == 0 || total > threshold || !tensors.iter().all(|t| is_host(t.device())) {
        return Ok(None);
    }
    let (offsets, size) = packed_layout(tensors.iter().map(|t| t.meta().nbytes));
    let mut bytes = vec![0u8; size as usize];
    for (t, off) in tensors.iter().zip(offsets) {
        let n = t.meta().nbytes as usize;
        t.pack_into(&mut bytes[off as usize..off as usize + n])?;
    }
    Ok(Some(bytes))
}

/// The record's tensors, built from its inline bytes (views of one buffer).
pub fn unpack(meta: &Metadata, bytes: &[u8]) -> Result<Vec<Tensor>> {
    let metas: Vec<TensorMeta> = meta.tensors.iter().map(TensorMeta::to_compact).collect();
    let (offsets, size) = packed_layout(metas.iter().map(|m| m.nbytes));
    if size != bytes.len() as u64 {
        return Err(Error::malformed(format!(
            "the record's inline data is {} bytes, its tensors need {size}",
            bytes.len()
        )));
    }
    let mut owned = bytes.to_vec().into_boxed_slice();
    let base = owned.as_mut_ptr();
    let owner = std::sync::Arc::new(owned);
    let cpu = DLDevice::cpu();
    Ok(metas
        .into_iter()
        .zip(offsets)
        .map(|(m, off)| {
            // SAFETY: the offset lies inside the buffer (its size was checked),
            // which the tensors keep alive.
            let data = unsafe { base.add(off as usize) } as *mut _;
            Tensor::from_owner(m, cpu, data, Box::new(owner.clone()))
        })
        .collect())
}
