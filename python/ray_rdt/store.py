"""``PluginRDTStore``: Ray 2.60's ``RDTStore`` API over two stores.

Objects of stock transports (NCCL, CUDA_IPC, custom ones) and direct calls of
``add_object_primary`` keep living in the inherited Python store, exactly as in
stock 2.60. Objects of plugin transports (GLOO, SHM, NIXL) live in the plugin; the
public methods (``has_object``, ``get_object``, ``wait_and_get_object``,
``pop_object``, ``wait_tensor_freed``, ``get_num_objects``, ...) see both, so
programs and Ray internals written against 2.60 (``__ray_free__``,
``__ray_fetch_rdt_object__``) keep working.
"""

import threading
import time
from typing import Any, Dict, List, Optional

from ray.experimental.rdt.rdt_store import RDTStore

from ray_rdt import _ffi
from ray_rdt import process
from ray_rdt.context import OBJECT_ID_SIZE
from ray_rdt._ffi import RdtNotFoundError, RdtTimeoutError


def _is_object_id_hex(obj_id: str) -> bool:
    if not isinstance(obj_id, str) or len(obj_id) != 2 * OBJECT_ID_SIZE:
        return False
    try:
        bytes.fromhex(obj_id)
        return True
    except ValueError:
        return False


class PluginRDTStore(RDTStore):
    def __init__(self):
        super().__init__()
        # Ray ObjectRef hex -> plugin key hex, for objects whose plugin key is not
        # their ObjectID (ray.put: the ID is only known after the value is stored).
        self._aliases: Dict[str, str] = {}
        self._plugin_lock = threading.Lock()

    # -- plugin side ----------------------------------------------------------

    def _key(self, obj_id: str) -> Optional[str]:
        with self._plugin_lock:
            key = self._aliases.get(obj_id, obj_id)
        return key if _is_object_id_hex(key) else None

    def add_alias(self, obj_id: str, key: str):
        if obj_id != key:
            with self._plugin_lock:
                self._aliases[obj_id] = key

    def _plugin_has(self, obj_id: str) -> bool:
        ctx = process.peek_context()
        key = self._key(obj_id)
        return ctx is not None and key is not None and ctx.contains(key)

    def _plugin_get(self, obj_id: str) -> List[Any]:
        ctx = process.peek_context()
        key = self._key(obj_id)
        if ctx is None or key is None:
            raise RdtNotFoundError(_ffi.ERR_NOT_FOUND, f"object {obj_id} is not held by this process's plugin")
        return ctx.get(key)

    def _plugin_free(self, obj_id: str) -> bool:
        ctx = process.peek_context()
        key = self._key(obj_id)
        with self._plugin_lock:
            self._aliases.pop(obj_id, None)
        if ctx is None or key is None:
            return False
        return ctx.free(key)

    def _plugin_count(self) -> int:
        ctx = process.peek_context()
        return 0 if ctx is None else ctx.counts()[0]

    # -- RDTStore API -----------------------------------------------------------

    def has_object(self, obj_id: str) -> bool:
        return super().has_object(obj_id) or self._plugin_has(obj_id)

    def get_object(self, obj_id: str) -> Optional[List[Any]]:
        if super().has_object(obj_id) or not self._plugin_has(obj_id):
            return super().get_object(obj_id)
        return self._plugin_get(obj_id)

    def add_object_primary(self, obj_id: str, tensors: List[Any], tensor_transport: str):
        from ray_rdt import producer

        meta = producer.claim_pending_put(obj_id, tensors, tensor_transport, self)
        if meta is not None:
            return meta
        return super().add_object_primary(obj_id, tensors, tensor_transport)

    def is_primary_copy(self, obj_id: str) -> bool:
        # The plugin holds primary copies only: received copies go to the task.
        return super().is_primary_copy(obj_id) or self._plugin_has(obj_id)

    def wait_and_get_object(self, obj_id: str, timeout: Optional[float] = None) -> List[Any]:
        if not super().has_object(obj_id) and self._plugin_has(obj_id):
            return self._plugin_get(obj_id)
        return super().wait_and_get_object(obj_id, timeout)

    def wait_and_pop_object(self, obj_id: str, timeout: Optional[float] = None) -> List[Any]:
        if not super().has_object(obj_id) and self._plugin_has(obj_id):
            return self.pop_object(obj_id)
        return super().wait_and_pop_object(obj_id, timeout)

    def pop_object(self, obj_id: str) -> List[Any]:
        if super().has_object(obj_id) or not self._plugin_has(obj_id):
            return super().pop_object(obj_id)
        try:
            tensors = self._plugin_get(obj_id)
        except RdtNotFoundError:
            tensors = []
        self.free_plugin_object(obj_id)
        return tensors

    def free_plugin_object(self, obj_id: str) -> None:
        """Frees the plugin's copy of ``obj_id`` without handing its tensors
        out (``pop_object`` builds them, which for a model of 100,000 tensors
        is 100,000 torch tensors made to be dropped); wakes
        ``wait_tensor_freed``."""
        self._plugin_free(obj_id)
        with self._object_freed_cv:
            self._object_freed_cv.notify_all()

    def wait_tensor_freed(self, tensor: Any, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        super().wait_tensor_freed(tensor, timeout)
        ctx = process.peek_context()
        if ctx is None or not hasattr(tensor, "data_ptr"):
            return
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ctx.wait_tensor_freed(tensor, remaining)
        except RdtTimeoutError:
            raise TimeoutError(
                f"Tensor {tensor} not freed from RDT object store after {timeout}s. The tensor will not be "
                "freed until all ObjectRefs containing the tensor have gone out of scope."
            ) from None

    def get_num_objects(self) -> int:
        return super().get_num_objects() + self._plugin_count()
