//! A check on a Python list in one call, for the Python binding.
//!
//! A value of 10,000 tensors is stored in one pass (no pickling) only when
//! no tensor appears twice in it; asked in Python (`set(map(id, ...))`, an
//! int object per item, hashed) the producer's checks of such a value took
//! 1.02 ms in a trainer actor, and 0.35 ms with this sort of the items'
//! addresses. The caller holds the GIL (the binding binds it through
//! `ctypes.PyDLL`).

use super::boundary::{self, guard};
use super::python::api;
use super::status::rdt_status;
use std::ffi::c_void;

/// Sets `*out` to whether the `len` items of the Python list `list` are
/// distinct objects (no object appears twice).
///
/// # Safety
/// The GIL is held; `list` is NULL or a live Python object; `out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn rdt_list_distinct(
    list: *mut c_void,
    len: usize,
    out: *mut bool,
) -> rdt_status {
    guard(|| {
        let py = api()?;
        let distinct = boundary::out(out, "out")?;
        let n = py.list_len(list, len)?;
        let mut items: Vec<usize> = (0..n)
            .map(|i| (py.list_get_item)(list, i as isize) as usize)
            .collect();
        items.sort_unstable();
        *distinct = items.windows(2).all(|pair| pair[0] != pair[1]);
        Ok(())
    })
}
