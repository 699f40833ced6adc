//! A shared-memory segment: an anonymous memory file (memfd) and, on the
//! consumer, its mapping. Nothing on disk, so nothing can leak when a process dies.

use crate::copy::copy_pieces;
use crate::error::{Error, Result};
use crate::layout::packed_extents;
use crate::store::StoredObject;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Creates an anonymous memory file of `len` bytes, named `name` (as
/// `/proc/<pid>/maps` shows its mappings: `memfd:<name>`).
pub fn create(name: &std::ffi::CStr, len: u64) -> Result<OwnedFd> {
    // SAFETY: the name is a valid C string; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
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

/// Producer: writes `object`'s extents into `mapping`, laid out as
/// [`packed_extents`] places them.
pub fn fill(mapping: &Mapping, object: &StoredObject) -> Result<()> {
    let layout = &object.layout;
    let (_, total) = packed_extents(&layout.lengths());
    if (mapping.len() as u64) < total {
        return Err(Error::transport(format!(
            "shm segment of {} bytes cannot hold {total}",
            mapping.len()
        )));
    }
    let pieces = object.packed_pieces(mapping.as_ptr() as usize);
    // SAFETY: every destination lies inside the mapping (checked above); the
    // sources are host extents of a stored object, which `object` keeps alive.
    unsafe { copy_pieces(&pieces) };
    Ok(())
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
