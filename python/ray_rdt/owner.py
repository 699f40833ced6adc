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
    over the producer's plugin endpoint (batched, no Ray task). Returns False to
    leave the free to stock 2.60 (objects of other transports, and objects this
    process produced itself, which 2.60 frees in place).

    Ray calls this on its core-worker thread, which also delivers the owner's
    transport metadata: that thread keeps its Python state from here on
    (:func:`ray_rdt.threads.keep_thread_state`)."""
    keep_thread_state()
    if not isinstance(meta, PluginTransportMetadata) or not meta.record or not is_plugin_transport(transport):
        return False
    targets.drop(obj_id)
    if stock_path.is_record(meta.record):
        return False  # stock Ray's __ray_free__ task frees it (stock_path)
    actor_id = getattr(src_actor, "_actor_id", None)  # RDTSource.DRIVER has none
    if actor_id is None or actor_id == ray._private.worker.global_worker.actor_id:
        return False
    process.get_context().free_remote(meta.key, meta.record)
    return True
