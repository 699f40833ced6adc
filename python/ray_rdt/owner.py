"""The owner side: ``ray.get`` options and frees of the objects a process owns."""

from typing import Optional

import ray

from ray_rdt import process
from ray_rdt import errors, stock_path, targets
from ray_rdt.threads import keep_thread_state
from ray_rdt.plugin_metadata import PluginTransportMetadata
from ray_rdt.transport_facts import is_plugin_transport


def get_use_object_store(tensor_transport: Optional[str], use_object_store: bool) -> bool:
    """``ray.get(ref, _tensor_transport=...)`` (the guide's spelling) to 2.60's
    ``_use_object_store``."""
    if tensor_transport is None:
        return use_object_store
    name = str(tensor_transport).upper()
    if name == "OBJECT_STORE":
        return True
    from ray.experimental.rdt import util

    util._ensure_default_transports_registered()
    if name not in util.transport_manager_info or not util.is_one_sided_transport(name):
        raise errors.ray_get_error(name)
    return use_object_store


def free_primary_copy(obj_id: str, src_actor, transport: str, meta) -> bool:
    """When an RDT object goes out of scope: frees the producer's primary copy
    over the producer's plugin endpoint (batched, no Ray task), or in place
    when this process produced it (a ``ray.put`` in an actor or the driver).
    Returns False to leave the free to stock 2.60 (objects of other
    transports and of stock Ray's path).

    In place, not through 2.60's ``__ray_free__`` task on this very actor:
    that task calls ``get_object`` and then ``pop_object``, each of which
    builds every tensor of the object only to drop it; for a weight-sync
    model of 100,000 views that was two rounds of 100,000 torch tensors on
    another thread while the trainer's next ``ray.put`` ran (the put of the
    next step measured 220-475 ms instead of about 100).

    Ray calls this on its core-worker thread, which also delivers the owner's
    transport metadata: that thread keeps its Python state from here on
    (:func:`ray_rdt.threads.keep_thread_state`)."""
    keep_thread_state()
    if not isinstance(meta, PluginTransportMetadata) or not meta.record or not is_plugin_transport(transport):
        return False
    targets.drop(obj_id)
    if stock_path.is_record(meta.record):
        return False  # stock Ray's __ray_free__ task frees it (stock_path)
    worker = ray._private.worker.global_worker
    actor_id = getattr(src_actor, "_actor_id", None)  # RDTSource.DRIVER has none
    if actor_id is None or actor_id == worker.actor_id:
        worker.rdt_manager.rdt_store.free_plugin_object(obj_id)
        return True
    process.get_context().free_remote(meta.key, meta.record)
    return True
