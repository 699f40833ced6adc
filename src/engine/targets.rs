//! The caller's tensors a fetch lands in (`ray.experimental.set_target_for_ref`):
//! checked against the record as Ray 2.60 checks them (count, shape, dtype,
//! contiguity), plus the device and that no two overlap, before any byte moves.

use crate::dlpack::{DLDevice, DLTensor};
use crate::error::{Error, Result};
use crate::layout::Runs;
use crate::metadata::Metadata;
use crate::tensor::{device_name, is_host, TensorMeta};

/// One target tensor, borrowed from the caller for the length of the fetch.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its descriptor.
    pub meta: TensorMeta,
    /// Its device.
    pub device: DLDevice,
    /// Address of its first element.
    pub addr: usize,
}

impl Target {
    /// Reads a DLPack tensor's description (the caller keeps the memory).
    ///
    /// # Safety
    /// As [`TensorMeta::from_dl`].
    pub unsafe fn from_dl(t: &DLTensor) -> Result<Target> {
        Ok(Target {
            meta: TensorMeta::from_dl(t)?,
            device: t.device,
            addr: (t.data as usize).wrapping_add(t.byte_offset as usize),
        })
    }
}

/// Where the bytes of `meta`'s object land in `targets`, after checking them.
pub fn runs(meta: &Metadata, targets: &[Target]) -> Result<Runs> {
    if targets.len() != meta.tensors.len() {
        return Err(Error::invalid(format!(
            "Length of tensor_buffers ({}) does not match length from object metadata ({}).",
            targets.len(),
            meta.tensors.len()
        )));
    }
    for (i, (t, m)) in targets.iter().zip(&meta.tensors).enumerate() {
        if t.meta.shape != m.shape {
            return Err(Error::invalid(format!(
                "Shape of tensor_buffer at index {i} ({:?}) does not match shape from object metadata ({:?}).",
                t.meta.shape, m.shape
            )));
        }
        if t.meta.dtype != m.dtype {
            return Err(Error::invalid(format!(
                "Dtype of tensor_buffer at index {i} ({:?}) does not match dtype from object metadata ({:?}).",
                t.meta.dtype, m.dtype
            )));
        }
        if !t.meta.is_contiguous() {
            return Err(Error::invalid(format!(
                "Tensor buffer at index {i} is not contiguous."
            )));
        }
        if m.nbytes > 0 && !(is_host(t.device) && is_host(meta.device)) {
            return Err(Error::invalid(format!(
                "Tensor buffer at index {i} is on {}: the plugin receives {} objects into CPU tensors only",
                device_name(t.device),
                device_name(meta.device)
            )));
        }
    }
    check_disjoint(targets)?;
    let sizes: Vec<u64> = meta.tensors.iter().map(|m| m.nbytes).collect();
    let dsts: Vec<usize> = targets.iter().map(|t| t.addr).collect();
    Ok(Runs::new(&meta.places, &sizes, &dsts))
}

/// Refuses targets whose bytes overlap (the same tensor twice, or views of
/// one another): they would receive two tensors' bytes at once.
fn check_disjoint(targets: &[Target]) -> Result<()> {
    let mut spans: Vec<(usize, usize, usize)> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.meta.nbytes > 0)
        .map(|(i, t)| (t.addr, t.addr + t.meta.nbytes as usize, i))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((_, end, i), (start, _, j)) = (w[0], w[1]);
        if start < end {
            return Err(Error::invalid(format!(
                "Tensor buffers at index {} and {} overlap: each target must be memory of its own",
                i.min(j),
                i.max(j)
            )));
        }
    }
    Ok(())
}
