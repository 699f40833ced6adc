//! Host memory that other processes of this host read in place: the plugin
//! allocates it as a memory file (`ray_rdt.share_memory_` moves a trainer's
//! weights there), and a consumer that lands an object of such memory in its
//! targets maps the file and copies from it, so the producer copies nothing
//! (no staging copy, no segment). Several consumers read at once, each with
//! one memcpy: fan-out on one host at the machine's parallel-copy limit.
//!
//! A region lives as long as the tensors made of it (their DLPack owner holds
//! it) and any serve that is sending it; the registry only finds regions by
//! address and never keeps one alive.

use super::mappings::Identity;
use super::segment::{self, Mapping};
use crate::dlpack::{kDLUInt, DLDataType, DLDevice};
use crate::error::{Error, Result};
use crate::layout::SourceExtent;
use crate::tensor::{Tensor, TensorMeta};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

/// The regions of this process by start address.
static REGIONS: Mutex<BTreeMap<usize, Weak<Region>>> = Mutex::new(BTreeMap::new());

/// One region: its memory file and this process's mapping of it.
#[derive(Debug)]
pub struct Region {
    fd: OwnedFd,
    mapping: Mapping,
}

impl Region {
    /// The memory file (sent to consumers with each serve).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Bytes in the region.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    fn start(&self) -> usize {
        self.mapping.as_ptr() as usize
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // The mapping is unmapped only after this (a field, dropped later),
        // so no other region can have taken this start address yet.
        REGIONS.lock().remove(&self.start());
    }
}

/// A new region of `len` bytes (zeroed), as a 1-D uint8 CPU tensor that owns
/// it.
pub fn allocate(len: usize) -> Result<Tensor> {
    if len == 0 {
        return Err(Error::invalid("shared memory of 0 bytes"));
    }
    let fd = segment::create(c"ray-rdt-shared", len as u64)?;
    let mapping = Mapping::new(&fd, len, false)?;
    let region = Arc::new(Region { fd, mapping });
    REGIONS
        .lock()
        .insert(region.start(), Arc::downgrade(&region));
    let meta = TensorMeta::compact(
        DLDataType {
            code: kDLUInt,
            bits: 8,
            lanes: 1,
        },
        vec![len as i64],
    )?;
    let data = region.start() as *mut std::ffi::c_void;
    Ok(Tensor::from_owner(
        meta,
        DLDevice::cpu(),
        data,
        Box::new(region),
    ))
}

/// The region that holds every one of `extents`, with each extent's offset
/// in it; None when any lies outside it (or there is no region at all).
pub fn holding(extents: &[SourceExtent]) -> Option<(Arc<Region>, Vec<u64>)> {
    let first = extents.first()?;
    let region = {
        let regions = REGIONS.lock();
        if regions.is_empty() {
            return None;
        }
        let (_, weak) = regions.range(..=first.addr).next_back()?;
        weak.upgrade()?
    };
    let (start, end) = (region.start(), region.start() + region.len());
    let offsets = extents
        .iter()
        .map(|e| {
            let inside = e.addr >= start && e.addr.checked_add(e.len as usize)? <= end;
            inside.then(|| (e.addr - start) as u64)
        })
        .collect::<Option<Vec<u64>>>()?;
    Some((region, offsets))
}

/// Checks a region a producer sent: `size` bytes (its file `fd` at least as
/// large) holding every extent of the record (`lengths`) at `offsets`.
pub fn check_sent(fd: &OwnedFd, size: u64, offsets: &[u64], lengths: &[u64]) -> Result<Identity> {
    let (identity, file_size) = segment::identity(fd)?;
    if file_size < size {
        return Err(Error::transport(format!(
            "the shared region is {file_size} bytes, the producer says {size}"
        )));
    }
    let outside = offsets
        .iter()
        .zip(lengths)
        .position(|(&o, &len)| o.checked_add(len).is_none_or(|end| end > size));
    if let Some(i) = outside {
        return Err(Error::transport(format!(
            "extent {i} lies outside the producer's {size}-byte shared region"
        )));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(addr: usize, len: u64) -> SourceExtent {
        SourceExtent { addr, len }
    }

    #[test]
    fn extents_inside_one_region_are_found_with_their_offsets() {
        let a = allocate(1 << 20).unwrap();
        let b = allocate(4096).unwrap();
        let (pa, pb) = (a.data_ptr(), b.data_ptr());
        let (region, offsets) = holding(&[
            extent(pa, 100),
            extent(pa + 4096, 8),
            extent(pa + (1 << 20) - 1, 1),
        ])
        .unwrap();
        assert_eq!(offsets, vec![0, 4096, (1 << 20) - 1]);
        assert_eq!(region.len(), 1 << 20);
        assert_eq!(holding(&[extent(pb, 4096)]).unwrap().1, vec![0]);
        // Past the end, spread over two regions, or in no region: not found.
        assert!(holding(&[extent(pa, (1 << 20) + 1)]).is_none());
        assert!(holding(&[extent(pa, 8), extent(pb, 8)]).is_none());
        let elsewhere = [0u8; 64];
        assert!(holding(&[extent(elsewhere.as_ptr() as usize, 64)]).is_none());
    }

    #[test]
    fn a_region_goes_with_its_last_tensor_and_waits_for_a_serve() {
        let t = allocate(8192).unwrap();
        let p = t.data_ptr();
        let (serving, _) = holding(&[extent(p, 8)]).unwrap();
        drop(t);
        // The serve still holds it: still mapped, still found.
        assert!(holding(&[extent(p, 8)]).is_some());
        drop(serving);
        assert!(holding(&[extent(p, 8)]).is_none());
        assert!(!REGIONS.lock().contains_key(&p));
    }

    #[test]
    fn a_region_starts_zeroed_and_is_writable() {
        let mut t = allocate(10_000).unwrap();
        let bytes = t.host_bytes_mut().unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        bytes.fill(7);
        assert!(t.host_bytes().unwrap().iter().all(|&b| b == 7));
    }

    #[test]
    fn a_sent_region_is_checked_against_the_record() {
        let fd = segment::create(c"test", 100).unwrap();
        assert!(check_sent(&fd, 100, &[0, 50], &[50, 50]).is_ok());
        let e = check_sent(&fd, 100, &[0, 60], &[50, 50]).unwrap_err();
        assert!(e.message().contains("extent 1 lies outside"), "{e}");
        assert!(check_sent(&fd, 200, &[0], &[10]).is_err());
        assert!(check_sent(&fd, 100, &[u64::MAX], &[10]).is_err());
    }
}
