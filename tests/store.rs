//! The object store from several threads: views without copies, DLPack deleters
//! called exactly once, blocking waits with timeouts, `wait_tensor_freed` and
//! stored errors.

mod common;

use common::*;
use ray_rdt::testing::{CopyKind, ErrorKind, ObjectStore};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

#[test]
fn get_returns_the_stored_memory_without_copying() {
    let store = ObjectStore::new();
    let deletions = Deletions::new();
    let put = tensors(&deletions, 2, &[4, 8]);
    let ptrs: Vec<usize> = put.iter().map(|t| t.data_ptr()).collect();
    store.put(oid(1), put, CopyKind::Primary).unwrap();

    let first = store.get(&oid(1), SHORT).unwrap();
    let second = store.get(&oid(1), SHORT).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(
        first
            .tensors
            .iter()
            .map(|t| t.data_ptr())
            .collect::<Vec<_>>(),
        ptrs
    );
    assert_eq!(first.kind, CopyKind::Primary);

    // A write through the producer's memory is seen by a later reader.
    // SAFETY: the tensor is a live float32 CPU tensor owned by the store.
    unsafe { *(ptrs[1] as *mut f32).add(3) = -1.5 };
    let bytes = store.get(&oid(1), SHORT).unwrap().tensors[1]
        .host_bytes()
        .unwrap()
        .to_vec();
    assert_eq!(f32::from_ne_bytes(bytes[12..16].try_into().unwrap()), -1.5);
    assert_eq!(f32::from_ne_bytes(bytes[16..20].try_into().unwrap()), 4.0);
}

#[test]
fn deleters_run_once_after_free_and_the_last_reader() {
    let store = ObjectStore::new();
    let deletions = Deletions::new();
    store
        .put(oid(1), tensors(&deletions, 3, &[16]), CopyKind::Primary)
        .unwrap();
    let reader = store.get(&oid(1), SHORT).unwrap();

    assert!(store.free(&oid(1)));
    assert!(!store.free(&oid(1)), "a second free finds nothing");
    assert_eq!(deletions.count(), 0, "a reader still holds the tensors");
    drop(reader);
    assert_eq!(deletions.count(), 3);
}

#[test]
fn dropping_the_store_deletes_what_it_holds() {
    let deletions = Deletions::new();
    let store = ObjectStore::new();
    for i in 0..10 {
        store
            .put(oid(i), tensors(&deletions, 2, &[3, 3]), CopyKind::Secondary)
            .unwrap();
    }
    assert_eq!(store.num_objects(), 10);
    assert_eq!(store.num_bytes(), 10 * 2 * 36);
    drop(store);
    assert_eq!(deletions.count(), 20);
}

#[test]
fn a_second_put_hands_the_tensors_back() {
    let store = ObjectStore::new();
    let (kept, refused) = (Deletions::new(), Deletions::new());
    store
        .put(oid(1), tensors(&kept, 1, &[2]), CopyKind::Primary)
        .unwrap();
    let rejected = store
        .put(oid(1), tensors(&refused, 2, &[2]), CopyKind::Primary)
        .unwrap_err();
    assert_eq!(rejected.error.kind(), ErrorKind::AlreadyExists);
    assert_eq!(rejected.tensors.len(), 2);
    assert_eq!(
        refused.count(),
        0,
        "the refused tensors still belong to the caller"
    );
    drop(rejected);
    assert_eq!((kept.count(), refused.count()), (0, 2));
}

#[test]
fn pop_removes_the_object_and_keeps_the_memory_for_its_reader() {
    let store = ObjectStore::new();
    let deletions = Deletions::new();
    store
        .put(oid(1), tensors(&deletions, 2, &[8]), CopyKind::Secondary)
        .unwrap();
    let popped = store.pop(&oid(1), SHORT).unwrap();
    assert!(!store.contains(&oid(1)));
    assert_eq!((store.num_objects(), store.num_bytes()), (0, 0));
    assert_eq!(popped.tensors[1].host_bytes().unwrap().len(), 32);
    assert_eq!(deletions.count(), 0);
    drop(popped);
    assert_eq!(deletions.count(), 2);
}

#[test]
fn waits_time_out_when_nothing_arrives() {
    let store = ObjectStore::new();
    for result in [
        timed(|| store.wait(&oid(1), SHORT)),
        timed(|| store.get(&oid(1), SHORT).map(drop)),
        timed(|| store.pop(&oid(1), SHORT).map(drop)),
    ] {
        let (outcome, took) = result;
        assert_eq!(outcome.unwrap_err().kind(), ErrorKind::Timeout);
        assert!(
            took >= SHORT && took < SHORT + SLACK,
            "timed out after {took:?}"
        );
    }
}

#[test]
fn waiters_wake_when_another_thread_puts() {
    let store = Arc::new(ObjectStore::new());
    let deletions = Deletions::new();
    let barrier = Arc::new(Barrier::new(4));
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                timed(|| match i {
                    0 => store.wait(&oid(1), LONG),
                    1 => store
                        .get(&oid(1), LONG)
                        .map(|o| assert_eq!(o.tensors.len(), 2)),
                    _ => store.get(&oid(1), LONG).map(drop),
                })
            })
        })
        .collect();
    barrier.wait();
    // Every waiter is blocked in the store before the object arrives.
    wait_until(|| store.waiters() == 3);
    store
        .put(oid(1), tensors(&deletions, 2, &[1]), CopyKind::Primary)
        .unwrap();
    for w in waiters {
        let (outcome, took) = w.join().unwrap();
        outcome.unwrap();
        assert!(took < SLACK, "woke after {took:?}");
    }
}

#[test]
fn wait_tensor_freed_blocks_until_another_thread_frees() {
    let store = Arc::new(ObjectStore::new());
    let deletions = Deletions::new();
    let put = tensors(&deletions, 2, &[64]);
    let ptr = put[1].data_ptr();
    store.put(oid(1), put, CopyKind::Primary).unwrap();

    let (held, took) = timed(|| store.wait_tensor_freed(ptr, SHORT));
    assert_eq!(held.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(took >= SHORT && took < SHORT + SLACK);

    let freer = {
        let store = store.clone();
        thread::spawn(move || {
            // Frees once the main thread waits for the memory.
            wait_until(|| store.waiters() == 1);
            store.free(&oid(1))
        })
    };
    store.wait_tensor_freed(ptr, LONG).unwrap();
    assert!(freer.join().unwrap());
    assert_eq!(deletions.count(), 2);
    store
        .wait_tensor_freed(ptr, SHORT)
        .expect("an unknown address is already free");
}

#[test]
fn wait_tensor_freed_waits_for_every_object_sharing_the_memory() {
    let store = ObjectStore::new();
    let deletions = Deletions::new();
    let first = tensors(&deletions, 1, &[4]);
    let ptr = first[0].data_ptr();
    store.put(oid(1), first, CopyKind::Primary).unwrap();
    // A second object over the same memory, as when one tensor is returned twice.
    let alias = counting_tensor(&deletions, &[4]);
    // SAFETY: alias is valid; pointing its view at the first tensor's memory is fine
    // because neither deleter frees through `data`.
    let alias = unsafe {
        (*alias).dl_tensor.data = ptr as *mut _;
        ray_rdt::testing::Tensor::from_managed(alias).unwrap()
    };
    store.put(oid(2), vec![alias], CopyKind::Primary).unwrap();

    store.free(&oid(1));
    assert_eq!(
        store.wait_tensor_freed(ptr, SHORT).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    store.free(&oid(2));
    store.wait_tensor_freed(ptr, SHORT).unwrap();
    assert_eq!(deletions.count(), 2);
}

#[test]
fn put_error_reaches_every_waiter_and_replaces_tensors() {
    let store = Arc::new(ObjectStore::new());
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || store.get(&oid(1), LONG).map(drop).unwrap_err())
        })
        .collect();
    wait_until(|| store.waiters() == 3);
    store.put_error(oid(1), "receive from actor 3 failed");
    for w in waiters {
        let e = w.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::ObjectFailed);
        assert_eq!(e.message(), "receive from actor 3 failed");
    }
    store
        .wait(&oid(1), SHORT)
        .expect("a failed object counts as present");

    let deletions = Deletions::new();
    store
        .put(oid(2), tensors(&deletions, 2, &[5]), CopyKind::Secondary)
        .unwrap();
    store.put_error(oid(2), "peer died");
    assert_eq!(deletions.count(), 2, "the error replaced the tensors");
    assert_eq!(store.num_bytes(), 0);
    assert_eq!(
        store.get(&oid(2), SHORT).unwrap_err().kind(),
        ErrorKind::ObjectFailed
    );
}

#[test]
fn concurrent_put_get_free_deletes_everything_once() {
    const THREADS: u64 = 4;
    const OBJECTS: u64 = 250;
    let store = Arc::new(ObjectStore::new());
    let deletions = Deletions::new();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, deletions) = (store.clone(), deletions.clone());
            thread::spawn(move || {
                for i in 0..OBJECTS {
                    // Each thread reads the objects of the next thread, which may not
                    // have arrived yet, and frees its own.
                    let mine = oid(t * OBJECTS + i);
                    store
                        .put(mine, tensors(&deletions, 2, &[4]), CopyKind::Primary)
                        .unwrap();
                    let theirs = oid((t + 1) % THREADS * OBJECTS + i);
                    let _ = store.get(&theirs, Duration::ZERO);
                    assert!(store.get(&mine, SHORT).is_ok());
                    store.pop(&mine, SHORT).unwrap();
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert_eq!(store.num_objects(), 0);
    assert_eq!(deletions.count() as u64, THREADS * OBJECTS * 2);
}
