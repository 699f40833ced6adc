//! Small objects carried inside their metadata record: the producer packs the
//! extents' bytes into the record at put; a consumer builds its tensors from
//! them with no transfer (`RAY_RDT_INLINE_BYTES`, see [`threshold`]).
//!
//! The producer still keeps the primary copy, so passing the ref back to it
//! gives the very same tensor. Other consumers get the bytes as they were when
//! the method returned: in the guide's words, none of the later in-place changes
//! are seen (it promises only that "some or all of the changes may be seen").

use crate::copy::copy_pieces;
use crate::dlpack::DLDevice;
use crate::error::{Error, Result};
use crate::layout::{packed_extents, Runs};
use crate::metadata::Metadata;
use crate::store::StoredObject;
use crate::tensor::{is_host, Tensor};

/// Environment variable: objects whose extents total at most this many bytes
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

/// The object's extents laid out one after another (as
/// [`packed_extents`] places them), when the object is small enough and in
/// host memory (a threshold of 0 turns inlining off, for empty objects too).
pub fn pack(object: &StoredObject, threshold: u64) -> Option<Vec<u8>> {
    let layout = &object.layout;
    let host = object.tensors.iter().all(|t| is_host(t.device()));
    if threshold == 0 || layout.total() > threshold || !host {
        return None;
    }
    let (_, size) = packed_extents(&layout.lengths());
    let mut bytes = vec![0u8; size as usize];
    // SAFETY: the pieces' destinations lie in `bytes` (laid out as the
    // extents' lengths say); their sources are host extents of a stored
    // object, which `object` keeps alive. Only the tensors' own bytes are
    // read: a gap merged between two allocations stays zero.
    unsafe { copy_pieces(&object.packed_pieces(bytes.as_mut_ptr() as usize)) };
    Some(bytes)
}

/// Checks that the inline bytes are the record's extents laid out.
fn check(meta: &Metadata, bytes: &[u8]) -> Result<Vec<u64>> {
    let (offsets, size) = packed_extents(&meta.extents);
    if size != bytes.len() as u64 {
        return Err(Error::malformed(format!(
            "the record's inline data is {} bytes, its extents need {size}",
            bytes.len()
        )));
    }
    Ok(offsets)
}

/// The record's tensors, built from its inline bytes (views of one buffer).
pub fn unpack(meta: &Metadata, bytes: &[u8]) -> Result<Vec<Tensor>> {
    let offsets = check(meta, bytes)?;
    let mut owned = bytes.to_vec().into_boxed_slice();
    let base = owned.as_mut_ptr() as usize;
    Ok(crate::layout::views(
        meta,
        base,
        &offsets,
        DLDevice::cpu(),
        std::sync::Arc::new(owned),
    ))
}

/// Copies the record's inline bytes into the caller's tensors (`runs`).
pub fn unpack_into(meta: &Metadata, bytes: &[u8], runs: &Runs) -> Result<()> {
    let offsets = check(meta, bytes)?;
    for r in &runs.runs {
        let from = (offsets[r.extent as usize] + r.offset) as usize;
        // SAFETY: the runs were checked against the targets (host memory of
        // at least `len` bytes each) and the record's extents.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes[from..].as_ptr(), r.dst as *mut u8, r.len as usize)
        };
    }
    Ok(())
}
