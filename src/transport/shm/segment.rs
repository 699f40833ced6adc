//! `shm`: same-host, one-sided transport for CPU tensors; no collective group.
//!
//! On a fetch the producer copies the object's tensors into a fresh anonymous
//! shared-memory file (memfd) and passes its descriptor over the endpoint's Unix
//! socket; the consumer maps it and its tensors are views of that mapping, released
//! by their DLPack deleters. One memory copy in total, nothing on disk to leak.

use super::{fetch_request, Local, Peer, Transport};
use crate::dlpack::{kDLCPU, DLDevice};
use crate::endpoint::wire;
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::Metadata;
use crate::object_id::ObjectId;
use crate::store::StoredObject;
use crate::tensor::{is_host, Tensor, TensorMeta};
use crate::transport_kind::TransportKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// Tensors start at multiples of this inside a segment.
const ALIGN: u64 = 64;

/// The shm transport (stateless).
#[derive(Debug, Default)]
pub struct Shm;

/// Offset of each tensor inside the segment, and the segment's size.
fn layout(metas: impl Iterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut end = 0u64;
    for nbytes in metas {
        offsets.push(end);
        end = (end + nbytes).div_ceil(ALIGN) * ALIGN;
    }
    (offsets, end)
}

/// A shared mapping, unmapped when the last tensor viewing it is released.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value.
unsafe impl Send for Mapping {}
// SAFETY: shared access only hands out the base pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` read-write and shared, pre-faulting the pages.
    fn map(fd: BorrowedFd<'_>, len: usize) -> Result<Mapping> {
        // SAFETY: mapping a file we hold open; the result is checked.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd(), 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(&format!("mapping a {len}-byte shm segment"), std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr: ptr as *mut u8, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr as *mut _, self.len) };
    }
}

/// Creates an anonymous memory file of `len` bytes.
fn memfd(len: u64) -> Result<OwnedFd> {
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

impl Transport for Shm {
    fn kind(&self) -> TransportKind {
        TransportKind::Shm
    }

    fn serves(&self, device: DLDevice) -> bool {
        is_host(device)
    }

    fn export(&self, _id: &ObjectId, _object: &StoredObject, _group: Option<&str>) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn serve(&self, _local: &Local<'_>, _id: &ObjectId, object: &StoredObject, _request: &[u8], stream: &mut UnixStream) -> Result<()> {
        let (offsets, total) = layout(object.tensors.iter().map(|t| t.meta().nbytes));
        if total == 0 {
            return wire::send(stream, &[wire::REPLY_OK]);
        }
        let fd = memfd(total)?;
        let file = std::fs::File::from(fd);
        // Contiguous tensors are written with pwrite (faster than faulting in a
        // mapping page by page); strided ones are packed through a mapping.
        let mut mapping: Option<Mapping> = None;
        for (t, &off) in object.tensors.iter().zip(&offsets) {
            if let Some(bytes) = t.host_bytes() {
                file.write_all_at(bytes, off).map_err(|e| Error::io("writing the shm segment", e))?;
                continue;
            }
            if mapping.is_none() {
                mapping = Some(Mapping::map(file.as_fd(), total as usize)?);
            }
            let m = mapping.as_ref().expect("mapped above");
            // SAFETY: [off, off + nbytes) lies inside the mapping by construction of `layout`.
            let dst = unsafe { std::slice::from_raw_parts_mut(m.ptr.add(off as usize), t.meta().nbytes as usize) };
            t.pack_into(dst)?;
        }
        drop(mapping);
        let fd = OwnedFd::from(file);
        wire::send_with_fd(stream, &[wire::REPLY_OK], Some(&fd))?;
        crate::stats::record_sent(TransportKind::Shm, object.nbytes());
        Ok(())
    }

    fn fetch(&self, local: &Local<'_>, peer: &Peer<'_>, id: &ObjectId, meta: &Metadata, timeout: Duration) -> Result<Vec<Tensor>> {
        let producer_node = &meta.producer.node_id;
        if !local.node_id.is_empty() && !producer_node.is_empty() && producer_node.as_slice() != local.node_id {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the shm transport only works between processes on the same host: the producer is on another node; use gloo or nixl",
            ));
        }
        let metas: Vec<TensorMeta> = meta.tensors.iter().map(TensorMeta::to_compact).collect();
        let (offsets, total) = layout(metas.iter().map(|m| m.nbytes));
        let fd = peer.pool.with_connection(peer.address, timeout, |stream| {
            wire::send(stream, &fetch_request(TransportKind::Shm, id, &[]))?;
            let (reply, fd) = wire::recv(stream)?;
            wire::parse_reply(&reply)?;
            Ok(fd)
        })?;
        let cpu = DLDevice { device_type: kDLCPU, device_id: 0 };
        if total == 0 {
            return metas.into_iter().map(|m| Tensor::alloc_host(&m)).collect();
        }
        let fd = fd.ok_or_else(|| Error::transport("the producer sent no shared-memory segment"))?;
        // SAFETY: fstat on a descriptor we own.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstat(fd.as_raw_fd(), &mut st) == 0).then_some(st.st_size as u64)
        };
        if size != Some(total) {
            return Err(Error::transport(format!("shm segment is {size:?} bytes, the metadata record describes {total}")));
        }
        let mapping = Arc::new(Mapping::map(fd.as_fd(), total as usize)?);
        let tensors = metas
            .into_iter()
            .zip(offsets)
            .map(|(m, off)| {
                // SAFETY: the offset lies inside the mapping (checked size above).
                let data = unsafe { mapping.ptr.add(off as usize) } as *mut _;
                Tensor::from_owner(m, cpu, data, Box::new(mapping.clone()))
            })
            .collect();
        crate::stats::record_received(TransportKind::Shm, meta.total_bytes());
        Ok(tensors)
    }
}
