"""The custom serializer of RDT data types (``torch.Tensor``), the plugin's
placeholders, and the stand-in for whole values.

Stock 2.60 registers two closures; Ray pickles the deserializer *by value* with
every tensor it serializes (hundreds of microseconds each). These module-level
functions speak the same thread-local protocol, are pickled by reference, and
understand the plugin's placeholders ``(index, key, record[, "put"])``, which
carry the metadata record inside the value Ray stores.

A value that is a tensor, or a list, tuple or dict of tensors (a model's
weights: up to 100,000 of them, ``nn.Parameter``s among them) is stored as one
:class:`PluginValue` instead: no per-tensor pickling on either side;
unpickling rebuilds the value from the object's tensors.
"""

import pickle
from typing import Optional

import ray

from ray_rdt import consumer


def tensor_serializer(tensor):
    """Ray's serializer hook: out of band (RDT) a tensor becomes its index and,
    for plugin transports, the plugin's key and record; else a pickle."""
    tl = ray._private.worker.global_worker.get_serialization_context()._thread_local
    if getattr(tl, "use_external_transport", False):
        tl.rdt_tensors.append(tensor)
        index = len(tl.rdt_tensors) - 1
        record = getattr(tl, "rdt_plugin_record", None)
        return index if record is None else (index,) + record
    return pickle.dumps(tensor)


def tensor_deserializer(val):
    """Inverse of :func:`tensor_serializer`."""
    ctx = ray._private.worker.global_worker.get_serialization_context()
    if isinstance(val, int):
        assert val < len(ctx._thread_local.rdt_tensors)
        return ctx._thread_local.rdt_tensors[val]
    if isinstance(val, tuple):
        return resolve_placeholder(ctx, val)
    assert isinstance(val, bytes)
    return pickle.loads(val)


def resolve_placeholder(serialization_context, placeholder: tuple):
    """A plugin placeholder ``(index, key, record[, "put"])``: the tensor, from
    the tensors fetched (once per object) through the plugin."""
    return object_tensors(serialization_context, placeholder[1:])[placeholder[0]]


def object_tensors(serialization_context, where: tuple) -> list:
    """The tensors of the plugin object ``where`` = ``(key, record[, "put"])``
    names: those Ray fetched before deserialization (an owner's ``ray.get``),
    else fetched through the plugin, once per object being deserialized."""
    key, record = where[:2]
    tl = serialization_context._thread_local
    provided = getattr(tl, "rdt_tensors", None)
    if provided:
        return provided
    cached = getattr(tl, "rdt_plugin_fetched", None)
    if cached is None or cached[0] != key:
        stack = getattr(tl, "object_ref_stack", None)
        ref = stack[-1] if stack else None
        tensors = consumer.resolve(key, record, put=len(where) > 2, ref=ref)
        cached = (key, tensors)
        tl.rdt_plugin_fetched = cached
    return cached[1]


# PluginValue kinds.
TENSOR, LIST, TUPLE, DICT = range(4)


class PluginValue:
    """Stands for a value made of one plugin object's tensors (a tensor, or a
    list, tuple or dict of them) in what Ray stores; unpickled, it is that
    value again (:func:`rebuild_value`). ``parameters``: None, or one byte per
    tensor saying which were ``nn.Parameter``s (1; 2: requiring grad)."""

    __slots__ = ("kind", "keys", "where", "parameters")

    def __init__(self, kind: int, keys, where: tuple, parameters: Optional[bytes] = None):
        self.kind = kind
        self.keys = keys
        self.where = where
        self.parameters = parameters

    def __reduce__(self):
        return rebuild_value, (self.kind, self.keys, self.where, self.parameters)


def rebuild_value(kind: int, keys, where: tuple, parameters: Optional[bytes] = None):
    """The value a :class:`PluginValue` stands for."""
    ctx = ray._private.worker.global_worker.get_serialization_context()
    tensors = object_tensors(ctx, where)
    if parameters is not None:
        tensors = _with_parameters(tensors, parameters)
    if kind == TENSOR:
        return tensors[0]
    if kind == TUPLE:
        return tuple(tensors)
    if kind == DICT:
        return dict(zip(keys, tensors))
    return list(tensors)


def _with_parameters(tensors: list, parameters: bytes) -> list:
    """``tensors`` with the items ``parameters`` flags made ``nn.Parameter``s
    again, sharing their memory, as unpickling a Parameter does (a target that
    is a Parameter already is kept as it is)."""
    from torch.nn import Parameter

    return [
        t if not flag or type(t) is Parameter else Parameter(t, requires_grad=flag == 2)
        for t, flag in zip(tensors, parameters)
    ]
