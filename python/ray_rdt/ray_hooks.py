"""What the patched Ray 2.60.0 calls (see ray-patches/ and docs/ray-integration.md).

Ray reaches this module through ``ray.experimental.rdt.util.rdt_plugin()``,
which returns it only when the plugin is on (``RAY_RDT_PLUGIN``, default on), so
every patched site reads ``plugin = rdt_plugin(); if plugin is not None: ...``
and otherwise runs stock 2.60 code unchanged. This module only names what the
patches use; each concern lives in its own module:

- :mod:`ray_rdt.transports`: the plugin transports as Ray ``TensorTransportManager``s;
- :mod:`ray_rdt.serializer`: the tensor serializer and the plugin's placeholders;
- :mod:`ray_rdt.producer`: task return and ``ray.put``;
- :mod:`ray_rdt.consumer`: argument resolution, ``ray.get``, failed transfers;
- :mod:`ray_rdt.targets`: ``set_target_for_ref`` and ``set_target_device_for_ref``;
- :mod:`ray_rdt.borrowed`: the metadata and targets of borrowed refs, dropped once they are gone;
- :mod:`ray_rdt.owner`: ``ray.get`` options, frees over the producer's endpoint;
- :mod:`ray_rdt.groups`: collective groups and their failures;
- :mod:`ray_rdt.process`: this process's context, and Ray's shutdown;
- :mod:`ray_rdt.errors`: the errors and warnings users see.
"""

import ray_rdt
from ray_rdt.borrowed import ref_deserialized, set_target_device, set_targets  # noqa: F401
from ray_rdt.consumer import end_prefetch, fetch, prefetch  # noqa: F401
from ray_rdt.errors import RDTTransferError, is_passthrough, mutable_warning, ray_get_error  # noqa: F401
from ray_rdt.groups import (  # noqa: F401
    destroy_local_group,
    handle_reported_failures,
    join_group,
    owner_contact,
    release_torch_world,
    serve_rendezvous,
)
from ray_rdt.owner import free_primary_copy, get_use_object_store  # noqa: F401
from ray_rdt.process import on_ray_shutdown  # noqa: F401
from ray_rdt.producer import (  # noqa: F401
    claim_pending_put,
    serialize_in_one_pass,
    serialize_with_record,
    store_rdt_objects,
)
from ray_rdt.serializer import tensor_deserializer, tensor_serializer  # noqa: F401
from ray_rdt.transport_facts import is_one_sided_plugin_transport, is_plugin_transport  # noqa: F401
from ray_rdt.transports import register_transports  # noqa: F401


def enabled() -> bool:
    """Whether the plugin is on in this process (read by Ray's ``rdt_plugin()``)."""
    return ray_rdt.enabled()
