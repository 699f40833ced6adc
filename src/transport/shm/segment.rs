//! A shared-memory segment: an anonymous memory file (memfd) and, on the
//! consumer, its mapping. Nothing on disk, so nothing can leak when a process dies.

use crate::error::{Error, Result};
use crate::store::StoredObject;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Tensors start at multiples of this inside a segment.
const ALIGN: u64 = 64;

/// Offset of each tensor inside a segment, and the bytes the tensors span.
pub fn layout(sizes: impl Iterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut end = 0u64;
    for nbytes in sizes {
        offsets.push(end);
        end = (end + nbytes).div_ceil(ALIGN) * ALIGN;
    }
    (offsets, end)
}

/// Creates an anonymous memory file of `len` bytes.
pub fn create(len: u64) -> Result<OwnedFd> {
    // SAFETY: the name is a valid C string; the result is checked.
    let raw = unsafe { libc::memfd_create(c"ray-rdt-shm".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: resizing our own descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(Error::io(&format!("sizing a {len}-byte shm segment"), std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Size in bytes of the file behind `fd`.
pub fn size_of(fd: &OwnedFd) -> Result<u64> {
    // SAFETY: fstat on a descriptor we own, into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::io("fstat of an shm segment", std::io::Error::last_os_error()));
    }
    Ok(st.st_size as u64)
}

/// Producer: writes `object`'s tensors into the file behind `fd` at their
/// layout offsets. Contiguous tensors go in with pwrite (no page faults in this
/// process); strided ones are packed through a temporary mapping.
pub fn fill(fd: OwnedFd, object: &StoredObject) -> Result<OwnedFd> {
    let (offsets, total) = layout(object.tensors.iter().map(|t| t.meta().nbytes));
    let size = size_of(&fd)?;
    if size < total {
        return Err(Error::transport(format!("shm segment of {size} bytes cannot hold {total}")));
    }
    let file = File::from(fd);
    let mut mapping: Option<Mapping> = None;
    for (t, &off) in object.tensors.iter().zip(&offsets) {
        if let Some(bytes) = t.host_bytes() {
            file.write_all_at(bytes, off).map_err(|e| Error::io("writing the shm segment", e))?;
            continue;
        }
        if mapping.is_none() {
            mapping = Some(Mapping::new(&file, total as usize)?);
        }
        let m = mapping.as_ref().expect("mapped above");
        // SAFETY: [off, off + nbytes) lies inside the mapping by construction of `layout`.
        let dst = unsafe { std::slice::from_raw_parts_mut(m.ptr.add(off as usize), t.meta().nbytes as usize) };
        t.pack_into(dst)?;
    }
    Ok(OwnedFd::from(file))
}

/// A shared read-write mapping of a whole segment; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value.
unsafe impl Send for Mapping {}
// SAFETY: shared access only hands out the base pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (pages fault in on first touch).
    pub fn new(fd: &impl AsRawFd, len: usize) -> Result<Mapping> {
        // SAFETY: mapping a file we hold open; the result is checked.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(&format!("mapping a {len}-byte shm segment"), std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr: ptr as *mut u8, len })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut _, self.len) };
    }
}
