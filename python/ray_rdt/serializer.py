"""The custom serializer of RDT data types (``torch.Tensor``) and the plugin's
placeholders.

Stock 2.60 registers two closures; Ray pickles the deserializer *by value* with
every tensor it serializes (hundreds of microseconds each). These module-level
functions speak the same thread-local protocol, are pickled by reference, and
understand the plugin's placeholders ``(index, key, record[, "put"])``, which
carry the metadata record inside the value Ray stores.
"""

import pickle

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
    index, key, record = placeholder[:3]
    tl = serialization_context._thread_local
    provided = getattr(tl, "rdt_tensors", None)
    if provided:
        # ray.get: the tensors were fetched before deserialization.
        return provided[index]
    cached = getattr(tl, "rdt_plugin_fetched", None)
    if cached is None or cached[0] != key:
        tensors = consumer.resolve(key, record, put=len(placeholder) > 3)
        cached = (key, tensors)
        tl.rdt_plugin_fetched = cached
    return cached[1][index]
