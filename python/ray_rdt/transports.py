"""Plugin transports as Ray 2.60 ``TensorTransportManager``s.

Registering them under Ray's transport names (GLOO, NIXL, and the new SHM) reuses
2.60's machinery: ``@ray.method(tensor_transport=...)`` validation, the owner's
``RDTMeta`` bookkeeping, ``ray.get``/``ray.put`` for one-sided transports, and
``__ray_free__`` when a ref goes out of scope. What differs from stock is where
the bytes move: no ``__ray_send__``/``__ray_recv__`` tasks; a consumer calls the
plugin (``rdt_context_fetch``) with the metadata record, and the plugin moves the
bytes straight from the producer's plugin.
"""

from typing import Any, List, Optional

from ray.experimental.rdt.tensor_transport_manager import (
    CommunicatorMetadata,
    TensorTransportManager,
    TensorTransportMetadata,
)

from ray_rdt import consumer, stock_path, transport_facts
from ray_rdt.plugin_metadata import PluginTransportMetadata


class PluginTensorTransport(TensorTransportManager):
    """Base of the transports whose bytes move inside libray_rdt; each
    subclass is one transport's :class:`~ray_rdt.transport_facts.Facts`."""

    FACTS: transport_facts.Facts

    def tensor_transport_backend(self) -> str:
        return self.FACTS.name

    @classmethod
    def is_one_sided(cls) -> bool:
        return cls.FACTS.one_sided

    @staticmethod
    def can_abort_transport() -> bool:
        # Transfers are bounded by timeouts inside the plugin; Ray never has to
        # kill actors to unblock them.
        return True

    def actor_has_tensor_transport(self, actor) -> bool:
        return True

    def extract_tensor_transport_metadata(self, obj_id: str, rdt_object: List[Any]) -> PluginTransportMetadata:
        # Only reached for objects stored in Ray's Python RDTStore directly.
        device = None
        tensor_meta = []
        for t in rdt_object:
            if device is None:
                device = t.device
            elif t.device.type != device.type:
                raise ValueError("All tensors in an RDT object must have the same device type.")
            tensor_meta.append((t.shape, t.dtype))
        return PluginTransportMetadata(tensor_meta=tensor_meta, tensor_device=device.type if device else None)

    def get_communicator_metadata(self, src_actor, dst_actor, backend: Optional[str] = None) -> CommunicatorMetadata:
        return CommunicatorMetadata()

    def recv_multiple_tensors(
        self,
        obj_id: str,
        tensor_transport_metadata: TensorTransportMetadata,
        communicator_metadata: CommunicatorMetadata,
        target_buffers: Optional[List[Any]] = None,
    ) -> List[Any]:
        # Targets of plugin objects never reach here: the plugin holds them
        # (ray_rdt.targets) and the fetch lands in them.
        meta = tensor_transport_metadata
        if not isinstance(meta, PluginTransportMetadata) or not meta.record:
            raise ValueError(f"RDT object {obj_id} has no plugin metadata record; it cannot be fetched over {self.FACTS.name}")
        return consumer.fetch(meta.key, meta.record, self.FACTS.name, object_ref=obj_id, ref_hex=obj_id)

    def send_multiple_tensors(self, tensors, tensor_transport_metadata, communicator_metadata):
        raise NotImplementedError(f"{self.FACTS.name} moves bytes inside libray_rdt; Ray never sends them")

    def garbage_collect(self, obj_id: str, tensor_transport_meta: TensorTransportMetadata, tensors: List[Any]):
        # RDTStore.pop_object (called right after) frees the plugin's copy;
        # an object left to stock Ray's transport gets stock Ray's cleanup.
        record = getattr(tensor_transport_meta, "record", b"")
        if stock_path.is_record(record):
            stock_path.garbage_collect(obj_id, record, tensors)

    def abort_transport(self, obj_id: str, communicator_metadata: CommunicatorMetadata):
        pass


class PluginCollectiveTransport(PluginTensorTransport):
    """Base of the plugin's two-sided transports, which need a collective group."""

    
    @staticmethod
    def can_abort_transport() -> bool:
        return False

    # Stock 2.60 checks group membership at submission, against the registry
    # of the process that created the group: other processes (e.g. an actor
    # that holds the handles) could not submit RDT tasks at all. The plugin
    # checks membership where it is known (the producer at return, the consumer
    # at fetch), so an actor or task that created no group of this backend
    # skips the submission-time checks; drivers and group creators keep 2.60's
    # checks and errors.

    def _knows_groups(self) -> bool:
        import ray
        from ray.experimental.collective.collective import RemoteCommunicatorManager

        if ray._private.worker.global_worker.mode == ray.SCRIPT_MODE:
            return True
        return any(c.backend == self.FACTS.name for c in RemoteCommunicatorManager.get().get_collective_groups())

    def actor_has_tensor_transport(self, actor) -> bool:
        from ray.experimental.collective import get_collective_groups

        return not self._knows_groups() or len(get_collective_groups([actor], backend=self.FACTS.name)) > 0

    def get_communicator_metadata(self, src_actor, dst_actor, backend: Optional[str] = None):
        if not self._knows_groups():
            return CommunicatorMetadata()
        # 2.60's check that both actors share one group (raises ValueError).
        from ray.experimental.rdt.collective_tensor_transport import CollectiveTensorTransport

        return CollectiveTensorTransport.get_communicator_metadata(self, src_actor, dst_actor, backend)


class PluginGlooTransport(PluginCollectiveTransport):
    """``gloo`` through the plugin: two-sided, CPU tensors, needs a collective group."""

    FACTS = transport_facts.FACTS["GLOO"]


class PluginShmTransport(PluginTensorTransport):
    """``shm``: same-host CPU tensors through shared memory, no collective group."""

    FACTS = transport_facts.FACTS["SHM"]


class PluginNixlTransport(PluginTensorTransport):
    """``nixl`` through the plugin: one-sided reads, CPU and CUDA, no collective
    group (on by default; ``RAY_RDT_PLUGIN_TRANSPORTS=gloo,shm`` leaves NIXL to
    stock 2.60)."""

    FACTS = transport_facts.FACTS["NIXL"]

    # 2.60's NIXL helpers (ray.experimental.register_nixl_memory, ...): see
    # ray_rdt.nixl_pool for what each means on the plugin.
    def register_nixl_memory(self, tensor):
        from ray_rdt import nixl_pool

        nixl_pool.register(tensor)

    def deregister_nixl_memory(self, tensor):
        from ray_rdt import nixl_pool

        nixl_pool.deregister(tensor)

    def register_nixl_memory_pool(self, size, device):
        from ray_rdt import nixl_pool

        nixl_pool.register_pool(size, device)

    def set_cuda_stream(self, stream):
        # ray.experimental.set_nixl_cuda_stream: puts of CUDA tensors wait for
        # this stream's work (instead of torch's current stream) before the
        # plugin registers them.
        from ray_rdt import context

        context.set_put_stream(self.FACTS.code, stream)


class PluginNcclTransport(PluginCollectiveTransport):
    """``nccl`` through the plugin: two-sided, CUDA tensors, needs a collective
    group (``create_collective_group(..., backend="nccl")`` creates the plugin's
    NCCL group too). Not routed by default yet: it has never run on a GPU
    (``RAY_RDT_PLUGIN_TRANSPORTS=gloo,shm,nixl,nccl,cuda_ipc`` turns it on)."""

    FACTS = transport_facts.FACTS["NCCL"]


class PluginCudaIpcTransport(PluginTensorTransport):
    """``cuda_ipc`` through the plugin: one-sided copies of CUDA tensors between
    processes of one host, no collective group. Not routed by default yet (never
    run on a GPU; see :class:`PluginNcclTransport`)."""

    FACTS = transport_facts.FACTS["CUDA_IPC"]


PLUGIN_TRANSPORTS = {
    cls.FACTS.name: cls
    for cls in (
        PluginGlooTransport,
        PluginShmTransport,
        PluginNixlTransport,
        PluginNcclTransport,
        PluginCudaIpcTransport,
    )
}


def register_transports(transport_manager_info: dict, info_cls) -> None:
    """Routes GLOO and NIXL through the plugin and adds SHM (as listed by
    ``RAY_RDT_PLUGIN_TRANSPORTS``; called by Ray's registry)."""
    import torch

    for name, facts in transport_facts.routed().items():
        transport_manager_info[name] = info_cls(PLUGIN_TRANSPORTS[name], list(facts.devices), torch.Tensor)
