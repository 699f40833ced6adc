//! Host memory that consumers on this host read in place (see
//! `transport::shm::shared`): a trainer that keeps its weights there is read
//! by every generator on its host with no copy of its own.

use super::boundary::{guard, out};
use super::status::rdt_status;
use crate::dlpack::DLManagedTensor;
use crate::transport::shm::shared;

/// Allocates `len` bytes (zeroed) of host memory that consumers on this host
/// read in place: an object whose tensors all lie in it is copied by each
/// consumer straight from it into its targets (shm, and nixl on one host),
/// with no staging copy by this process. Writes a 1-D uint8 CPU tensor of
/// `len` elements that owns the memory to `*out_tensor`; the memory is freed
/// once its deleter has been called and no transfer reads it any more.
/// `len` 0 is `RDT_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `out_tensor` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn rdt_shared_memory_new(
    len: usize,
    out_tensor: *mut *mut DLManagedTensor,
) -> rdt_status {
    guard(|| {
        let out_tensor = out(out_tensor, "out_tensor")?;
        *out_tensor = shared::allocate(len)?.into_managed();
        Ok(())
    })
}
