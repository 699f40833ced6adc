//! The producer side of the endpoint: requests from peers' plugins, dispatched
//! by operation. A fetch is served by the transport it names and counted under
//! the transport the object was declared with; a free frees a batch of objects.

use super::remote_free::parse_free_request;
use super::Shared;
use crate::endpoint::{wire, Channel, Handler};
use crate::error::{Error, Result};
use crate::stats::{self, Path};
use crate::store::StoredObject;
use crate::transport::group::GroupFailure;
use crate::transport::{parse_fetch_request, FetchRequest, Served, Transport};

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
                let object = self.held(&req.id)?;
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

impl Shared {
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
