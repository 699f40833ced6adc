//! The producer side of the endpoint: requests from peers' plugins, dispatched
//! by operation. A fetch is served by the transport it names and counted under
//! the transport the object was declared with; a free frees a batch of objects.
//!
//! A fetch holds a reference to the stored object while it is served, lent
//! through [`Serves`], so that dropping the context can wait until no serve
//! holds one (see [`super::Context`]).

use super::remote_free::parse_free_request;
use super::Shared;
use crate::endpoint::{wire, Channel, Handler};
use crate::error::{Error, Result};
use crate::object_id::ObjectId;
use crate::stats::{self, Path};
use crate::store::StoredObject;
use crate::transport::group::GroupFailure;
use crate::transport::{parse_fetch_request, FetchRequest, Served, Transport};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Handler for Shared {
    fn handle(&self, request: &[u8], channel: &mut Channel) -> Result<()> {
        match wire::split_op(request)? {
            (wire::OP_FETCH, body) => {
                let req = parse_fetch_request(body)?;
                stats::record_fetch_served();
                let _serving = stats::SERVING.enter();
                let transport = self.transports.get(req.serving)?;
                // The same-host path's transport serves the same-host path;
                // every other one moves the bytes over its network path
                // (loopback on one host).
                let path = if transport.is_same_host_path() {
                    Path::SameHost
                } else {
                    Path::Network
                };
                let object = self.lend(&req.id)?;
                self.serve_object(&req, transport, path, &object, channel)
            }
            (wire::OP_FREE, body) => {
                let ids = parse_free_request(body)?;
                let freed = ids.iter().filter(|id| self.free(id)).count();
                stats::record_free_request(freed as u64);
                channel.send(&[wire::REPLY_OK], self.reply_timeout)
            }
            (wire::OP_GROUP_FAILURE, body) => {
                self.failures.push(GroupFailure::decode(body)?);
                channel.send(&[wire::REPLY_OK], self.reply_timeout)
            }
            (op, _) => Err(Error::transport(format!(
                "unknown request operation {op} (a plugin of another version?)"
            ))),
        }
    }
}

/// The fetches being served now from the store: each holds a reference to a
/// stored object, counted from before it looks the object up until after it
/// dropped the reference.
#[derive(Default)]
pub(super) struct Serves {
    count: Mutex<usize>,
    ended: Condvar,
}

impl Serves {
    /// Waits up to `timeout` until no serve holds a stored object; returns
    /// whether none does. Serves that start once the store is empty find
    /// nothing to hold.
    pub(super) fn wait_idle(&self, timeout: Duration) -> bool {
        // A timeout too large for an instant waits as long as a serve lasts.
        let deadline = Instant::now().checked_add(timeout);
        let mut count = self.count.lock();
        while *count > 0 {
            match deadline {
                Some(d) => {
                    if self.ended.wait_until(&mut count, d).timed_out() {
                        return *count == 0;
                    }
                }
                None => self.ended.wait(&mut count),
            }
        }
        true
    }
}

/// One serve, counted in [`Serves`] while it lasts.
struct Serve<'a>(&'a Serves);

impl<'a> Serve<'a> {
    fn start(serves: &'a Serves) -> Serve<'a> {
        *serves.count.lock() += 1;
        Serve(serves)
    }
}

impl Drop for Serve<'_> {
    fn drop(&mut self) {
        let mut count = self.0.count.lock();
        *count -= 1;
        if *count == 0 {
            self.0.ended.notify_all();
        }
    }
}

/// A stored object lent to a serve. Fields drop in declaration order: the
/// reference goes (running the tensors' deleters if it was the last one)
/// before the serve stops being counted.
pub(super) struct Lent<'a> {
    object: Arc<StoredObject>,
    _serve: Serve<'a>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = StoredObject;
    fn deref(&self) -> &StoredObject {
        &self.object
    }
}

impl Shared {
    /// The object `id`, lent to a serve (see [`Shared::held`]). The serve is
    /// counted before the lookup, so a context being dropped, which empties
    /// the store and then waits for the count to reach zero, cannot miss it.
    fn lend(&self, id: &ObjectId) -> Result<Lent<'_>> {
        let serve = Serve::start(&self.serves);
        Ok(Lent {
            object: self.held(id)?,
            _serve: serve,
        })
    }

    /// Serves fetch request `req` for `object` with `transport`, and counts
    /// what it sent over `path` under the transport the object was declared
    /// with.
    pub(super) fn serve_object(
        &self,
        req: &FetchRequest<'_>,
        transport: &dyn Transport,
        path: Path,
        object: &StoredObject,
        channel: &mut Channel,
    ) -> Result<()> {
        match transport.serve(&self.local(), &req.id, object, req.body, channel) {
            Ok(Served::Sent) => {
                stats::record_sent(req.declared, path, object.nbytes());
                Ok(())
            }
            Ok(Served::Declined) => Ok(()),
            Err(e) => {
                stats::record_error(req.declared, path);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlpack::{kDLUInt, DLDataType, DLDevice};
    use crate::store::{CopyKind, ObjectStore};
    use crate::tensor::{Tensor, TensorMeta};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped (with the tensor it owns), slowly: a
    /// deleter that takes a while.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(100));
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_lent_object_is_dropped_before_its_serve_ends() {
        let freed = Arc::new(AtomicBool::new(false));
        let mut data = vec![7u8; 64].into_boxed_slice();
        let u8_type = DLDataType {
            code: kDLUInt,
            bits: 8,
            lanes: 1,
        };
        let meta = TensorMeta::compact(u8_type, vec![64]).unwrap();
        let ptr = data.as_mut_ptr() as *mut std::ffi::c_void;
        let owner = Box::new((data, DropFlag(freed.clone())));
        let tensor = Tensor::from_owner(meta, DLDevice::cpu(), ptr, owner);
        let store = ObjectStore::new();
        let id = ObjectId([1; 28]);
        store.put(id, vec![tensor], CopyKind::Primary).unwrap();
        let serves = Serves::default();
        assert!(serves.wait_idle(Duration::ZERO));
        let lent = Lent {
            object: store.get(&id, Duration::ZERO).unwrap(),
            _serve: Serve::start(&serves),
        };
        store.clear();
        assert!(!serves.wait_idle(Duration::from_millis(20)));
        assert!(!freed.load(Ordering::SeqCst));
        std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop(lent);
            });
            assert!(serves.wait_idle(Duration::from_secs(10)));
            // The serve's reference, the last one, went before it ended.
            assert!(freed.load(Ordering::SeqCst));
        });
    }
}
