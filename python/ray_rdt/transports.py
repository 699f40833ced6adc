"""Plugin transports as Ray 2.60 ``TensorTransportManager``s.

Registering them under Ray's transport names (GLOO, NIXL, and the new SHM) reuses
2.60's machinery: ``@ray.method(tensor_transport=...)`` validation, the owner's
``RDTMeta`` bookkeeping, ``ray.get``/``ray.put`` for one-sided transports, and
``__ray_free__`` when a ref goes out of scope. What differs from stock is where
the bytes move: no ``__ray_send__``/``__ray_recv__`` tasks; a consumer calls the
plugin (``rdt_context_fetch``) with the metadata record, and the plugin moves the
bytes straight from the producer's plugin.
"""

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, List, Optional

from ray.experimental.rdt.tensor_transport_manager import (
    CommunicatorMetadata,
    TensorTransportManager,
    TensorTransportMetadata,
)

from ray_rdt import _ffi


class RecordTensorMeta(Sequence):
    """2.60's ``tensor_meta`` (``[(torch.Size, torch.dtype)]``) of a plugin
    object, read from its metadata record when first used: listing a model's
    100,000 shapes at every put, and pickling them to the owner, would cost
    more than the transfer. Pickles as the record (which the metadata carries
    anyway, so the pickle shares it)."""

    def __init__(self, record: bytes):
        self._record = record
        self._meta = None

    def _decoded(self) -> list:
        if self._meta is None:
            from ray_rdt import dlpack

            self._meta = dlpack.record_tensor_meta(self._record)
        return self._meta

    def __getitem__(self, index):
        return self._decoded()[index]

    def __len__(self) -> int:
        return len(self._decoded())

    def __reduce__(self):
        return RecordTensorMeta, (self._record,)


@dataclass
class PluginTransportMetadata(TensorTransportMetadata):
    """What the owner learns about a plugin-held RDT object.

    Args:
        record: The plugin's metadata record (from ``rdt_context_put``); empty for
            objects that live in Ray's Python RDT store (direct
            ``RDTStore.add_object_primary`` calls).
        key: Hex ID under which the producer's plugin holds the tensors: the
            ObjectRef's own ID for task returns, a fresh ID for ``ray.put``.
    """

    record: bytes = b""
    key: str = ""


class PluginTensorTransport(TensorTransportManager):
    """Base of the transports whose bytes move inside libray_rdt."""

    NAME = ""
    CODE = -1
    ONE_SIDED = True
    DEVICES = ["cpu"]

    def tensor_transport_backend(self) -> str:
        return self.NAME

    @classmethod
    def is_one_sided(cls) -> bool:
        return cls.ONE_SIDED

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
        from ray_rdt import consumer

        # Targets of plugin objects never reach here: the plugin holds them
        # (ray_rdt.targets) and the fetch lands in them.
        meta = tensor_transport_metadata
        if not isinstance(meta, PluginTransportMetadata) or not meta.record:
            raise ValueError(f"RDT object {obj_id} has no plugin metadata record; it cannot be fetched over {self.NAME}")
        return consumer.fetch(meta.key, meta.record, self.NAME, object_ref=obj_id, ref_hex=obj_id)

    def send_multiple_tensors(self, tensors, tensor_transport_metadata, communicator_metadata):
        raise NotImplementedError(f"{self.NAME} moves bytes inside libray_rdt; Ray never sends them")

    def garbage_collect(self, obj_id: str, tensor_transport_meta: TensorTransportMetadata, tensors: List[Any]):
        # RDTStore.pop_object (called right after) frees the plugin's copy.
        pass

    def abort_transport(self, obj_id: str, communicator_metadata: CommunicatorMetadata):
        pass


class PluginCollectiveTransport(PluginTensorTransport):
    """Base of the plugin's two-sided transports, which need a collective group."""

    ONE_SIDED = False

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
        return any(c.backend == self.NAME for c in RemoteCommunicatorManager.get().get_collective_groups())

    def actor_has_tensor_transport(self, actor) -> bool:
        from ray.experimental.collective import get_collective_groups

        return not self._knows_groups() or len(get_collective_groups([actor], backend=self.NAME)) > 0

    def get_communicator_metadata(self, src_actor, dst_actor, backend: Optional[str] = None):
        if not self._knows_groups():
            return CommunicatorMetadata()
        # 2.60's check that both actors share one group (raises ValueError).
        from ray.experimental.rdt.collective_tensor_transport import CollectiveTensorTransport

        return CollectiveTensorTransport.get_communicator_metadata(self, src_actor, dst_actor, backend)


class PluginGlooTransport(PluginCollectiveTransport):
    """``gloo`` through the plugin: two-sided, CPU tensors, needs a collective group."""

    NAME = "GLOO"
    CODE = _ffi.TRANSPORT_GLOO


class PluginShmTransport(PluginTensorTransport):
    """``shm``: same-host CPU tensors through shared memory, no collective group."""

    NAME = "SHM"
    CODE = _ffi.TRANSPORT_SHM
    ONE_SIDED = True


class PluginNixlTransport(PluginTensorTransport):
    """``nixl`` through the plugin: one-sided reads, CPU and CUDA, no collective
    group (on by default; ``RAY_RDT_PLUGIN_TRANSPORTS=gloo,shm`` leaves NIXL to
    stock 2.60)."""

    NAME = "NIXL"
    CODE = _ffi.TRANSPORT_NIXL
    ONE_SIDED = True
    DEVICES = ["cuda", "cpu"]

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

        context.set_put_stream(self.CODE, stream)


class PluginNcclTransport(PluginCollectiveTransport):
    """``nccl`` through the plugin: two-sided, CUDA tensors, needs a collective
    group (``create_collective_group(..., backend="nccl")`` creates the plugin's
    NCCL group too). Not routed by default yet: it has never run on a GPU
    (``RAY_RDT_PLUGIN_TRANSPORTS=gloo,shm,nixl,nccl,cuda_ipc`` turns it on)."""

    NAME = "NCCL"
    CODE = _ffi.TRANSPORT_NCCL
    DEVICES = ["cuda"]


class PluginCudaIpcTransport(PluginTensorTransport):
    """``cuda_ipc`` through the plugin: one-sided copies of CUDA tensors between
    processes of one host, no collective group. Not routed by default yet (never
    run on a GPU; see :class:`PluginNcclTransport`)."""

    NAME = "CUDA_IPC"
    CODE = _ffi.TRANSPORT_CUDA_IPC
    ONE_SIDED = True
    DEVICES = ["cuda"]


PLUGIN_TRANSPORTS = {
    cls.NAME: cls
    for cls in (
        PluginGlooTransport,
        PluginShmTransport,
        PluginNixlTransport,
        PluginNcclTransport,
        PluginCudaIpcTransport,
    )
}

# Routed through the plugin unless RAY_RDT_PLUGIN_TRANSPORTS says otherwise.
# NCCL and CUDA_IPC join once ci/gpu-nightly has run them on a GPU.
DEFAULT_PLUGIN_TRANSPORTS = ("GLOO", "SHM", "NIXL")


def enabled_transports():
    """The transports this process routes through the plugin
    (``RAY_RDT_PLUGIN_TRANSPORTS``, comma-separated, default "gloo,shm,nixl";
    "nccl" and "cuda_ipc" may be added; a transport left out of the list is
    stock 2.60's, SHM then does not exist)."""
    import os

    names = os.environ.get("RAY_RDT_PLUGIN_TRANSPORTS")
    if names is None:
        return {n: PLUGIN_TRANSPORTS[n] for n in DEFAULT_PLUGIN_TRANSPORTS}
    wanted = [n.strip().upper() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in PLUGIN_TRANSPORTS]
    if unknown:
        raise ValueError(
            f"RAY_RDT_PLUGIN_TRANSPORTS names {unknown}; the plugin serves {sorted(PLUGIN_TRANSPORTS)}"
        )
    return {n: PLUGIN_TRANSPORTS[n] for n in wanted}


def register_transports(transport_manager_info: dict, info_cls) -> None:
    """Routes GLOO and NIXL through the plugin and adds SHM (as listed by
    ``RAY_RDT_PLUGIN_TRANSPORTS``; called by Ray's registry)."""
    import torch

    for name, cls in enabled_transports().items():
        transport_manager_info[name] = info_cls(cls, list(cls.DEVICES), torch.Tensor)


# transport_class's answers. A name's answer never changes once Ray's default
# transports are registered: plugin transports are registered only then, and
# Ray refuses to register a name twice.
_classes: dict = {}


def transport_class(name: Optional[str]):
    """The plugin transport class registered under ``name``, or None."""
    try:
        return _classes[name]
    except KeyError:
        pass
    if not name:
        return None
    from ray.experimental.rdt import util

    util._ensure_default_transports_registered()
    info = util.transport_manager_info.get(name)
    cls = None
    if info is not None and issubclass(info.transport_manager_class, PluginTensorTransport):
        cls = info.transport_manager_class
    if info is not None:
        _classes[name] = cls
    return cls


def is_plugin_transport(name: Optional[str]) -> bool:
    """Whether ``name`` is a transport whose bytes the plugin moves."""
    return transport_class(name) is not None


def is_one_sided_plugin_transport(name: Optional[str]) -> bool:
    """Whether ``name`` is a one-sided transport whose bytes the plugin moves
    (nothing to check or start when its object is passed to a task)."""
    cls = transport_class(name)
    return cls is not None and cls.ONE_SIDED
