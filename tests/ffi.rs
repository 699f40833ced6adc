//! The C ABI called from Rust the way a C caller would: status codes, last-error
//! text, NULL checks on every pointer, ownership of DLPack tensors on success and
//! failure, and no panic on bad input.

mod common;

use common::*;
use ray_rdt::dlpack::*;
use ray_rdt::ffi::context::*;
use ray_rdt::ffi::metadata::*;
use ray_rdt::ffi::stats::*;
use ray_rdt::ffi::status::rdt_status::{self, *};
use ray_rdt::ffi::{rdt_abi_version, rdt_last_error, RDT_ABI_VERSION_MAJOR};
use std::ffi::CStr;
use std::ptr::{null, null_mut};

/// A context handle (the one handle family), destroyed on drop.
struct Store(*mut rdt_context);

impl Store {
    fn new() -> Self {
        let mut p = null_mut();
        // SAFETY: `p` is valid for writes; no IDs.
        assert_eq!(
            unsafe { rdt_context_new(null(), 0, null(), 0, &mut p) },
            RDT_OK
        );
        Store(p)
    }

    /// rdt_context_put over shm (a one-sided transport: no group); the record
    /// is freed at once.
    fn put(&self, id: u64, tensors: &[*mut DLManagedTensor]) -> rdt_status {
        self.put_over(id, tensors, RDT_TRANSPORT_SHM)
    }

    fn put_over(
        &self,
        id: u64,
        tensors: &[*mut DLManagedTensor],
        transport: rdt_transport,
    ) -> rdt_status {
        let mut record = rdt_buffer {
            data: null_mut(),
            len: 0,
        };
        // SAFETY: a live context, a 28-byte ID and valid tensors.
        unsafe {
            let status = rdt_context_put(
                self.0,
                oid(id).as_bytes().as_ptr(),
                transport,
                null(),
                tensors.as_ptr(),
                tensors.len(),
                &mut record,
            );
            rdt_buffer_free(&mut record);
            status
        }
    }

    /// Get into an array of `capacity`, then (`pop`) free the object when that
    /// succeeded; returns the status, the count the plugin reported and the
    /// views it wrote.
    fn get(
        &self,
        id: u64,
        capacity: usize,
        pop: bool,
    ) -> (rdt_status, usize, Vec<*mut DLManagedTensor>) {
        let mut views = vec![null_mut(); capacity];
        let mut count = usize::MAX;
        // SAFETY: `views` has room for `capacity` pointers; `count` is writable.
        let status = unsafe {
            rdt_context_get(
                self.0,
                oid(id).as_bytes().as_ptr(),
                views.as_mut_ptr(),
                capacity,
                &mut count,
            )
        };
        views.truncate(if status == RDT_OK { count } else { 0 });
        if pop && status == RDT_OK {
            let mut found = false;
            // SAFETY: a live context and a writable output.
            assert_eq!(
                unsafe { rdt_context_free(self.0, oid(id).as_bytes().as_ptr(), &mut found) },
                RDT_OK
            );
            assert!(found);
        }
        (status, count, views)
    }

    fn contains(&self, id: u64) -> bool {
        let mut present = false;
        // SAFETY: a live context and a writable output.
        assert_eq!(
            unsafe { rdt_context_contains(self.0, oid(id).as_bytes().as_ptr(), &mut present) },
            RDT_OK
        );
        present
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by rdt_context_new and not used afterwards.
        unsafe { rdt_context_destroy(self.0) }
    }
}

/// The calling thread's last error text.
fn last_error() -> String {
    // SAFETY: rdt_last_error returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(rdt_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts `status` is `expected` and the last error mentions `needle`.
fn assert_fails(status: rdt_status, expected: rdt_status, needle: &str) {
    assert_eq!(status, expected, "last error: {}", last_error());
    assert!(
        last_error().contains(needle),
        "{:?} does not mention {needle:?}",
        last_error()
    );
}

#[test]
fn abi_version_has_major_2() {
    assert_eq!(rdt_abi_version() >> 16, RDT_ABI_VERSION_MAJOR);
    assert_eq!(RDT_ABI_VERSION_MAJOR, 2);
}

/// A decoded handle of `sample_metadata(seed)`; free it with `rdt_metadata_destroy`.
fn decoded_sample(seed: usize) -> *mut rdt_metadata {
    let record = sample_metadata(seed).encode().unwrap();
    let mut md = null_mut();
    // SAFETY: valid input and output.
    assert_eq!(
        unsafe { rdt_metadata_decode(record.as_ptr(), record.len(), &mut md) },
        RDT_OK
    );
    md
}

#[test]
fn every_pointer_argument_is_null_checked() {
    let store = Store::new();
    let s = store.0 as *const rdt_context;
    let id = oid(1);
    let id = id.as_bytes().as_ptr();
    let record = sample_metadata(1).encode().unwrap();
    let mut md = decoded_sample(1);
    let (mut tr, mut dev, mut n, mut bytes) = (
        0,
        DLDevice {
            device_type: 0,
            device_id: 0,
        },
        0usize,
        0u64,
    );
    let mut desc = std::mem::MaybeUninit::<rdt_tensor_desc>::uninit();
    let mut views = [null_mut(); 1];
    let (mut count, mut flag) = (0usize, false);
    let null_tensor: [*mut DLManagedTensor; 1] = [null_mut()];
    let null_versioned: [*mut DLManagedTensorVersioned; 1] = [null_mut()];
    let v = views.as_mut_ptr();

    // Each call has exactly one NULL pointer; the status and text must name it.
    macro_rules! null_case {
        ($needle:expr, $call:expr) => {
            // SAFETY: every other argument is valid.
            assert_fails(unsafe { $call }, RDT_ERR_NULL_ARGUMENT, $needle)
        };
    }
    null_case!(
        "out_metadata",
        rdt_metadata_decode(record.as_ptr(), record.len(), null_mut())
    );
    null_case!("data", rdt_metadata_decode(null(), 8, &mut md));
    null_case!(
        "metadata",
        rdt_metadata_summary(null(), &mut tr, &mut dev, &mut n, &mut bytes)
    );
    null_case!(
        "out_transport",
        rdt_metadata_summary(md, null_mut(), &mut dev, &mut n, &mut bytes)
    );
    null_case!(
        "out_device",
        rdt_metadata_summary(md, &mut tr, null_mut(), &mut n, &mut bytes)
    );
    null_case!(
        "out_num_tensors",
        rdt_metadata_summary(md, &mut tr, &mut dev, null_mut(), &mut bytes)
    );
    null_case!(
        "out_total_bytes",
        rdt_metadata_summary(md, &mut tr, &mut dev, &mut n, null_mut())
    );
    null_case!(
        "metadata",
        rdt_metadata_tensor(null(), 0, desc.as_mut_ptr())
    );
    null_case!("out_desc", rdt_metadata_tensor(md, 0, null_mut()));
    null_case!("out_stats", rdt_stats_get(RDT_TRANSPORT_SHM, null_mut()));
    let mut rec = rdt_buffer {
        data: null_mut(),
        len: 0,
    };
    let shm = RDT_TRANSPORT_SHM;
    null_case!("out_ctx", rdt_context_new(null(), 0, null(), 0, null_mut()));
    null_case!(
        "ctx",
        rdt_context_put(null(), id, shm, null(), null(), 0, &mut rec)
    );
    null_case!(
        "object_id",
        rdt_context_put(s, null(), shm, null(), null(), 0, &mut rec)
    );
    null_case!(
        "tensors",
        rdt_context_put(s, id, shm, null(), null(), 1, &mut rec)
    );
    null_case!(
        "out_metadata",
        rdt_context_put(s, id, shm, null(), null(), 0, null_mut())
    );
    null_case!(
        "tensor 0",
        rdt_context_put(s, id, shm, null(), null_tensor.as_ptr(), 1, &mut rec)
    );
    null_case!(
        "ctx",
        rdt_context_put_versioned(null(), id, shm, null(), null(), 0, &mut rec)
    );
    null_case!(
        "object_id",
        rdt_context_put_versioned(s, null(), shm, null(), null(), 0, &mut rec)
    );
    null_case!(
        "tensors",
        rdt_context_put_versioned(s, id, shm, null(), null(), 1, &mut rec)
    );
    null_case!(
        "tensor 0",
        rdt_context_put_versioned(s, id, shm, null(), null_versioned.as_ptr(), 1, &mut rec)
    );
    null_case!("ctx", rdt_context_get(null(), id, v, 1, &mut count));
    null_case!("object_id", rdt_context_get(s, null(), v, 1, &mut count));
    null_case!("out_count", rdt_context_get(s, id, v, 1, null_mut()));
    null_case!("ctx", rdt_context_record_get(null(), id, &mut rec));
    null_case!("object_id", rdt_context_record_get(s, null(), &mut rec));
    null_case!("out_record", rdt_context_record_get(s, id, null_mut()));
    null_case!("ctx", rdt_context_free(null(), id, &mut flag));
    null_case!("object_id", rdt_context_free(s, null(), &mut flag));
    null_case!("out_found", rdt_context_free(s, id, null_mut()));
    null_case!("ctx", rdt_context_wait_tensor_freed(null(), null(), 0));
    null_case!("ctx", rdt_context_contains(null(), id, &mut flag));
    null_case!("object_id", rdt_context_contains(s, null(), &mut flag));
    null_case!("out_held", rdt_context_contains(s, id, null_mut()));
    null_case!("ctx", rdt_context_counts(null(), &mut n, &mut bytes));
    null_case!("out_objects", rdt_context_counts(s, null_mut(), &mut bytes));
    null_case!("out_bytes", rdt_context_counts(s, &mut n, null_mut()));

    // SAFETY: md came from rdt_metadata_decode; NULL handles are ignored.
    unsafe {
        rdt_metadata_destroy(md);
        rdt_metadata_destroy(null_mut());
        rdt_context_destroy(null_mut());
    }
    assert!(!store.contains(1), "no failed call stored anything");
}

#[test]
fn a_pointer_check_failure_with_a_valid_object_id_leaves_the_object_alone() {
    let store = Store::new();
    let deletions = Deletions::new();
    assert_eq!(store.put(1, &[counting_tensor(&deletions, &[2])]), RDT_OK);
    let mut views = [null_mut(); 1];
    // SAFETY: NULL out_count with otherwise valid arguments.
    let status = unsafe {
        rdt_context_get(
            store.0,
            oid(1).as_bytes().as_ptr(),
            views.as_mut_ptr(),
            1,
            null_mut(),
        )
    };
    assert_eq!(status, RDT_ERR_NULL_ARGUMENT);
    assert!(store.contains(1));
    assert!(views[0].is_null());
    drop(store);
    assert_eq!(deletions.count(), 1);
}

#[test]
fn refused_tensors_stay_with_the_caller() {
    let store = Store::new();
    let deletions = Deletions::new();
    let good = counting_tensor(&deletions, &[3, 2]);
    let negative = counting_tensor(&deletions, &[3, 2]);
    let bad_dtype = counting_tensor(&deletions, &[3, 2]);
    let too_many_dims = counting_tensor(&deletions, &[3, 2]);
    // SAFETY: editing tensors we own before handing them over.
    unsafe {
        *(*negative).dl_tensor.shape = -3;
        (*bad_dtype).dl_tensor.dtype.bits = 0;
        (*too_many_dims).dl_tensor.ndim = 65;
    }
    for (bad, needle) in [
        (negative, "negative dimension"),
        (bad_dtype, "dtype"),
        (too_many_dims, "ndim"),
    ] {
        assert_fails(store.put(1, &[good, bad]), RDT_ERR_INVALID_ARGUMENT, needle);
        assert!(last_error().starts_with("tensor 1:"), "{}", last_error());
    }
    assert_fails(
        store.put_over(1, &[good], 7),
        RDT_ERR_INVALID_ARGUMENT,
        "transport code 7",
    );

    let wrong_major = counting_tensor_versioned(&deletions, &[2], 2);
    // SAFETY: a valid versioned tensor, refused for its version.
    let mut record = rdt_buffer {
        data: null_mut(),
        len: 0,
    };
    let status = unsafe {
        rdt_context_put_versioned(
            store.0,
            oid(1).as_bytes().as_ptr(),
            RDT_TRANSPORT_SHM,
            null(),
            &wrong_major,
            1,
            &mut record,
        )
    };
    assert_fails(status, RDT_ERR_INVALID_ARGUMENT, "major version 2");

    assert_eq!(deletions.count(), 0, "no refused tensor was deleted");
    assert!(!store.contains(1));
    // SAFETY: the caller still owns every refused tensor.
    unsafe {
        [good, negative, bad_dtype, too_many_dims]
            .into_iter()
            .for_each(|t| delete(t));
        ((*wrong_major).deleter.unwrap())(wrong_major);
    }
    assert_eq!(deletions.count(), 5);
}

#[test]
fn an_existing_object_refuses_a_second_put() {
    let store = Store::new();
    let (kept, refused) = (Deletions::new(), Deletions::new());
    assert_eq!(store.put(1, &[counting_tensor(&kept, &[1])]), RDT_OK);
    let again = counting_tensor(&refused, &[1]);
    assert_fails(
        store.put(1, &[again]),
        RDT_ERR_ALREADY_EXISTS,
        "already stored",
    );
    assert_eq!(refused.count(), 0);
    // SAFETY: the refused tensor is still ours.
    unsafe { delete(again) };
    drop(store);
    assert_eq!((kept.count(), refused.count()), (1, 1));
}

#[test]
fn views_share_memory_and_outlive_the_object_and_the_store() {
    let store = Store::new();
    let deletions = Deletions::new();
    let put: Vec<_> = (0..3)
        .map(|_| counting_tensor(&deletions, &[4, 4]))
        .collect();
    // SAFETY: the tensors are valid until we hand them over.
    let data: Vec<_> = put
        .iter()
        .map(|&t| unsafe { (*t).dl_tensor.data })
        .collect();
    assert_eq!(store.put(1, &put), RDT_OK);

    let (status, count, small) = store.get(1, 2, false);
    assert_eq!(
        (status, count, small.len()),
        (RDT_ERR_BUFFER_TOO_SMALL, 3, 0)
    );
    assert!(last_error().contains("holds 2"), "{}", last_error());
    let (status, count, _) = store.get(1, 1, true);
    assert_eq!((status, count), (RDT_ERR_BUFFER_TOO_SMALL, 3));
    assert!(store.contains(1), "a refused pop keeps the object");

    let (status, _, got) = store.get(1, 4, false);
    assert_eq!(status, RDT_OK);
    let (status, _, popped) = store.get(1, 3, true);
    assert_eq!(status, RDT_OK);
    assert!(!store.contains(1));
    for views in [&got, &popped] {
        // SAFETY: views handed out by the plugin, not yet deleted.
        let seen: Vec<_> = views
            .iter()
            .map(|&v| unsafe { (*v).dl_tensor.data })
            .collect();
        assert_eq!(seen, data);
        // SAFETY: as above; ndim 2 with a shape array of 2 entries.
        let shape = unsafe { std::slice::from_raw_parts((*views[0]).dl_tensor.shape, 2) };
        assert_eq!(shape, [4, 4]);
    }
    drop(store);
    assert_eq!(deletions.count(), 0, "views keep the memory alive");
    // SAFETY: each view is deleted exactly once.
    got.into_iter()
        .chain(popped)
        .for_each(|v| unsafe { delete(v) });
    assert_eq!(deletions.count(), 3);
}

#[test]
fn records_are_looked_up_by_object_id_and_absent_objects_are_not_found() {
    let store = Store::new();
    let deletions = Deletions::new();
    let mut put_record = rdt_buffer {
        data: null_mut(),
        len: 0,
    };
    let tensors = [counting_tensor(&deletions, &[4])];
    // SAFETY: valid arguments.
    let status = unsafe {
        rdt_context_put(
            store.0,
            oid(1).as_bytes().as_ptr(),
            RDT_TRANSPORT_SHM,
            null(),
            tensors.as_ptr(),
            1,
            &mut put_record,
        )
    };
    assert_eq!(status, RDT_OK);
    let mut looked_up = rdt_buffer {
        data: null_mut(),
        len: 0,
    };
    // SAFETY: valid arguments; both buffers were written by the plugin.
    unsafe {
        assert_eq!(
            rdt_context_record_get(store.0, oid(1).as_bytes().as_ptr(), &mut looked_up),
            RDT_OK
        );
        assert_eq!(
            std::slice::from_raw_parts(looked_up.data, looked_up.len),
            std::slice::from_raw_parts(put_record.data, put_record.len)
        );
        rdt_buffer_free(&mut looked_up);
        rdt_buffer_free(&mut put_record);
        assert_fails(
            rdt_context_record_get(store.0, oid(2).as_bytes().as_ptr(), &mut looked_up),
            RDT_ERR_NOT_FOUND,
            "not held",
        );
        assert!(looked_up.data.is_null());
    }
    let (status, _, views) = store.get(1, 1, true);
    assert_eq!(status, RDT_OK);
    // SAFETY: each view is deleted exactly once.
    views.into_iter().for_each(|v| unsafe { delete(v) });
    assert_eq!(deletions.count(), 1);
    // SAFETY: valid arguments; a freed object has no record.
    let status =
        unsafe { rdt_context_record_get(store.0, oid(1).as_bytes().as_ptr(), &mut looked_up) };
    assert_fails(status, RDT_ERR_NOT_FOUND, "not held");
    let (status, _, _) = store.get(2, 1, false);
    assert_fails(status, RDT_ERR_NOT_FOUND, "not held");
    // SAFETY: valid arguments; the address was never stored.
    let status = unsafe { rdt_context_wait_tensor_freed(store.0, 0x1000 as *const _, 0) };
    assert_eq!(status, RDT_OK);
}

#[test]
fn last_error_belongs_to_the_calling_thread() {
    let store = Store::new();
    let (status, _, _) = store.get(1, 1, false);
    assert_eq!(status, RDT_ERR_NOT_FOUND);
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(last_error().contains("not held"));
}

#[test]
fn stats_accept_every_transport_and_refuse_unknown_codes() {
    let mut stats = rdt_transport_stats::default();
    for t in [
        RDT_TRANSPORT_GLOO,
        RDT_TRANSPORT_NCCL,
        RDT_TRANSPORT_NIXL,
        RDT_TRANSPORT_CUDA_IPC,
        RDT_TRANSPORT_SHM,
    ] {
        // SAFETY: `stats` is writable.
        assert_eq!(unsafe { rdt_stats_get(t, &mut stats) }, RDT_OK);
    }
    for code in [5, 99, u32::MAX] {
        // SAFETY: as above.
        assert_fails(
            unsafe { rdt_stats_get(code, &mut stats) },
            RDT_ERR_INVALID_ARGUMENT,
            "unknown transport",
        );
    }
}

#[test]
fn metadata_records_decode_and_describe_their_tensors() {
    let md = decoded_sample(3);
    let (mut tr, mut dev, mut n, mut bytes) = (
        0,
        DLDevice {
            device_type: 0,
            device_id: 0,
        },
        0usize,
        0u64,
    );
    // SAFETY: a decoded handle and writable outputs.
    assert_eq!(
        unsafe { rdt_metadata_summary(md, &mut tr, &mut dev, &mut n, &mut bytes) },
        RDT_OK
    );
    assert_eq!(
        (tr, dev.device_type, n, bytes),
        (RDT_TRANSPORT_SHM, kDLCPU, 3, 3 * 1024 * 256 * 4)
    );

    let mut desc = std::mem::MaybeUninit::<rdt_tensor_desc>::uninit();
    // SAFETY: as above.
    assert_eq!(
        unsafe { rdt_metadata_tensor(md, 2, desc.as_mut_ptr()) },
        RDT_OK
    );
    // SAFETY: written by the successful call; shape points to ndim entries.
    let desc = unsafe { desc.assume_init() };
    assert_eq!(
        unsafe { std::slice::from_raw_parts(desc.shape, desc.ndim as usize) },
        [1024, 256]
    );
    assert_eq!(desc.nbytes, 1024 * 256 * 4);
    let mut unused = std::mem::MaybeUninit::<rdt_tensor_desc>::uninit();
    // SAFETY: as above.
    assert_fails(
        unsafe { rdt_metadata_tensor(md, usize::MAX, unused.as_mut_ptr()) },
        RDT_ERR_INVALID_ARGUMENT,
        "out of range",
    );
    // SAFETY: from rdt_metadata_decode.
    unsafe { rdt_metadata_destroy(md) };
}

#[test]
fn malformed_records_are_refused_without_a_handle() {
    let record = sample_metadata(2).encode().unwrap();
    let inputs: [&[u8]; 5] = [
        b"",
        b"garbage!",
        &record[..record.len() - 1],
        &[0xff; 64],
        &[record.as_slice(), b"x"].concat(),
    ];
    for input in inputs {
        let mut md = null_mut();
        // SAFETY: valid input and output; NULL data is allowed for length 0.
        let status = unsafe {
            rdt_metadata_decode(
                if input.is_empty() {
                    null()
                } else {
                    input.as_ptr()
                },
                input.len(),
                &mut md,
            )
        };
        assert_eq!(status, RDT_ERR_MALFORMED_METADATA, "input {input:?}");
        assert!(md.is_null());
        assert!(!last_error().is_empty());
    }
}

#[test]
fn a_context_config_is_checked_and_its_endpoints_are_reported() {
    use ray_rdt::ffi::context::*;
    let mut ctx = null_mut();
    let mut config = rdt_context_config {
        node_id: null(),
        node_id_len: 0,
        actor_id: null(),
        actor_id_len: 0,
        node_ip: c"127.0.0.1".as_ptr(),
        auth_token: b"token".as_ptr(),
        auth_token_len: 5,
    };
    // SAFETY: each call has one invalid argument and otherwise valid ones.
    unsafe {
        assert_fails(
            rdt_context_create(null(), &mut ctx),
            RDT_ERR_NULL_ARGUMENT,
            "config",
        );
        assert_fails(
            rdt_context_create(&config, null_mut()),
            RDT_ERR_NULL_ARGUMENT,
            "out_ctx",
        );
        config.node_ip = c"not-an-ip".as_ptr();
        assert_fails(
            rdt_context_create(&config, &mut ctx),
            RDT_ERR_INVALID_ARGUMENT,
            "not-an-ip",
        );
        config.node_ip = c"127.0.0.1".as_ptr();
        assert_eq!(rdt_context_create(&config, &mut ctx), RDT_OK);
        let mut buf = rdt_buffer {
            data: null_mut(),
            len: 0,
        };
        assert_eq!(rdt_context_tcp_endpoint(ctx, &mut buf), RDT_OK);
        let tcp = std::slice::from_raw_parts(buf.data, buf.len).to_vec();
        rdt_buffer_free(&mut buf);
        assert!(
            tcp.starts_with(b"tcp:127.0.0.1:"),
            "{:?}",
            String::from_utf8_lossy(&tcp)
        );
        let mut authenticated = false;
        assert_eq!(rdt_context_authenticated(ctx, &mut authenticated), RDT_OK);
        assert!(authenticated);
        assert_fails(
            rdt_context_tcp_endpoint(ctx, null_mut()),
            RDT_ERR_NULL_ARGUMENT,
            "out_address",
        );
        assert_fails(
            rdt_context_authenticated(null(), &mut authenticated),
            RDT_ERR_NULL_ARGUMENT,
            "ctx",
        );
        rdt_context_destroy(ctx);
        // The 1.0 constructor: same host only, unauthenticated.
        assert_eq!(rdt_context_new(null(), 0, null(), 0, &mut ctx), RDT_OK);
        assert_eq!(rdt_context_tcp_endpoint(ctx, &mut buf), RDT_OK);
        assert_eq!(buf.len, 0);
        rdt_buffer_free(&mut buf);
        assert_eq!(rdt_context_authenticated(ctx, &mut authenticated), RDT_OK);
        assert!(!authenticated);
        rdt_context_destroy(ctx);
    }
}

#[test]
fn capsule_helpers_need_python_and_still_release_the_tensors_they_were_given() {
    // This test process has no Python: the CPython API is not found.
    let deletions = Deletions::new();
    let t = counting_tensor(&deletions, &[2]);
    // SAFETY: ownership of `t` moves to the call, which releases it when it fails.
    let status = unsafe { ray_rdt::ffi::capsule::rdt_capsules_new(&t, 1, null_mut()) };
    assert_fails(
        status,
        RDT_ERR_UNAVAILABLE,
        "CPython C API is not in this process",
    );
    assert_eq!(deletions.count(), 1);
    let mut out = null_mut();
    // SAFETY: nothing is read through the NULL list when the API is missing.
    let status = unsafe { ray_rdt::ffi::capsule::rdt_capsules_pointers(null_mut(), &mut out, 0) };
    assert_fails(status, RDT_ERR_UNAVAILABLE, "CPython");
    // SAFETY: as above.
    let status = unsafe { ray_rdt::ffi::capsule::rdt_capsules_consume(null_mut(), 0) };
    assert_fails(status, RDT_ERR_UNAVAILABLE, "CPython");
}
