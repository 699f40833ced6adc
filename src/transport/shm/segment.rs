//! A shared-memory segment: an anonymous memory file (memfd) and, on the
//! consumer, its mapping. Nothing on disk, so nothing can leak when a process dies.

use crate::error::{Error, Result};
use crate::store::StoredObject;
use crate::transport::packed_layout;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
        return Err(Error::io(
            &format!("sizing a {len}-byte shm segment"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

/// Producer: writes `object`'s tensors into `mapping` at their layout offsets.
pub fn fill(mapping: &Mapping, object: &StoredObject) -> Result<()> {
    let (offsets, total) = packed_layout(object.tensors.iter().map(|t| t.meta().nbytes));
    if (mapping.len() as u64) < total {
        return Err(Error::transport(format!(
            "shm segment of {} bytes cannot hold {total}",
            mapping.len()
        )));
    }
    for (t, &off) in object.tensors.iter().zip(&offsets) {
        // SAFETY: [off, off + nbytes) lies inside the mapping (checked above).
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                mapping.as_ptr().add(off as usize),
                t.meta().nbytes as usize,
            )
        };
        match t.host_bytes() {
            Some(src) => copy(dst, src),
            None => t.pack_into(dst)?,
        }
    }
    Ok(())
}

/// Copies `src` into `dst` (equal lengths), splitting large copies over two
/// threads: one core rarely saturates memory bandwidth.
fn copy(dst: &mut [u8], src: &[u8]) {
    const PARALLEL_FROM: usize = 8 << 20;
    if src.len() < PARALLEL_FROM {
        dst.copy_from_slice(src);
        return;
    }
    let half = src.len() / 2;
    let (d0, d1) = dst.split_at_mut(half);
    let (s0, s1) = src.split_at(half);
    std::thread::scope(|scope| {
        scope.spawn(|| d1.copy_from_slice(s1));
        d0.copy_from_slice(s0);
    });
}

/// Identity of the memory file behind `fd` (device and inode) and its size.
pub fn identity(fd: &OwnedFd) -> Result<((u64, u64), u64)> {
    // SAFETY: fstat on a descriptor we own, into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::io(
            "fstat of an shm segment",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(((st.st_dev, st.st_ino), st.st_size as u64))
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
    /// Maps the first `len` bytes of `fd`; `populate` maps every page now
    /// (cheaper in one call than a fault per page), else pages fault in on touch.
    pub fn new(fd: &impl AsRawFd, len: usize, populate: bool) -> Result<Mapping> {
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: mapping a file we hold open; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                &format!("mapping a {len}-byte shm segment"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
        })
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
