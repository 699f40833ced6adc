"""What the owner of a plugin object keeps in Ray's RDT metadata: the plugin's
metadata record, and 2.60's ``tensor_meta`` read from it when asked for."""

from collections.abc import Sequence
from dataclasses import dataclass

from ray.experimental.rdt.tensor_transport_manager import TensorTransportMetadata


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
        record: The plugin's metadata record (from ``rdt_context_put``; a stock
            record for objects left to stock Ray's transport, see
            :mod:`ray_rdt.stock_path`); empty for objects that live in Ray's
            Python RDT store (direct ``RDTStore.add_object_primary`` calls).
        key: Hex ID under which the producer's plugin holds the tensors: the
            ObjectRef's own ID for task returns, a fresh ID for ``ray.put``.
    """

    record: bytes = b""
    key: str = ""
