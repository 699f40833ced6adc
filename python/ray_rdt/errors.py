"""The errors and warnings the plugin raises through Ray, with the texts users
see (the guide's where it gives them).

One family: every error of the plugin is a :class:`~ray_rdt._ffi.RdtError`
(with the ``rdt_status`` it stands for), raised by the C ABI binding or, for
what Ray users see, by the classes below; a dead producer is Ray's own
``ActorDiedError``."""

from typing import Optional

from ray.exceptions import ActorDiedError, RayError

from ray_rdt import _ffi

MUTABLE_WARNING = (
    "GPU ObjectRef({obj_id}) is being passed back to the actor that created it {actor}. "
    "Note that GPU objects are mutable. If the tensor is modified, Ray's internal copy will "
    "also be updated, and subsequent passes to other actors will receive the updated version "
    "instead of the original."
)

RAY_GET_ERROR = (
    "Currently ray.get() only supports OBJECT_STORE and NIXL tensor transport, got "
    "TensorTransportEnum.{transport}, please specify the correct tensor transport in ray.get()"
)


class RDTTransferError(_ffi.RdtError):
    """A plugin transfer of an RDT object failed (a system error): the failed
    call's status, and a message naming the object, both ends and the cause."""


class RDTValueError(RayError, ValueError, _ffi.RdtError):
    """A ``ValueError`` the plugin raises while Ray reads a value (the guide's
    for reading an object of a collective transport outside its group; 2.60's
    for targets that do not match the object), as a ``RayError`` so that every
    way of reading a ref (``ray.get``, ``await``, ``ref.future()``) raises it
    rather than wrapping it."""

    _ray_rdt = True

    def __init__(self, message: str):
        _ffi.RdtError.__init__(self, _ffi.ERR_INVALID_ARGUMENT, message)

    def __str__(self):
        return self.message

    def __reduce__(self):
        return (self.__class__, (self.message,))


def mutable_warning(obj_id: str, src_actor) -> str:
    """The guide's warning for an object passed back to its producer and to others."""
    return MUTABLE_WARNING.format(obj_id=obj_id, actor=src_actor)


def ray_get_error(transport: str) -> ValueError:
    """The guide's ``ray.get`` error for a collective transport."""
    return ValueError(RAY_GET_ERROR.format(transport=transport))


def read_outside_group(transport: str) -> RDTValueError:
    """:func:`ray_get_error`'s text, raised where Ray reads a value (await, futures)."""
    return RDTValueError(RAY_GET_ERROR.format(transport=transport))


def targets_refused(targets: list, record: bytes, refusal: Exception) -> RDTValueError:
    """Targets the plugin refused (before any byte moved): Ray 2.60's own
    message where 2.60 checks the same thing (count, shape, dtype, contiguity),
    else the plugin's (device, overlap)."""
    from ray.experimental.rdt.rdt_store import validate_tensor_buffers

    from ray_rdt import dlpack

    try:
        validate_tensor_buffers(targets, dlpack.record_tensor_meta(record))
    except ValueError as e:
        return RDTValueError(str(e))
    return RDTValueError(getattr(refusal, "message", str(refusal)))


def describe(what: str, src_actor: Optional[str], src_pid: int, dst_actor: Optional[str]) -> str:
    """``RDT transfer of <what> from actor <src> (pid N) to actor <dst>``."""
    src = f"actor {src_actor}" if src_actor else "the driver"
    dst = f"actor {dst_actor}" if dst_actor else "the driver"
    return f"RDT transfer of {what} from {src} (pid {src_pid}) to {dst}"


def nixl_source_may_have_died(obj_id: str) -> str:
    """Stock 2.60's text for a failed NIXL transfer."""
    return (
        f"The NIXL transfer failed for object id: {obj_id}. The source actor may have died during the transfer."
    )


def actor_died(transfer: str, cause: str) -> ActorDiedError:
    """``ActorDiedError`` for a transfer whose producer died, naming the object,
    both ends and the cause; Ray passes it through as the argument's value."""
    err = ActorDiedError()
    err.error_msg = f"{ActorDiedError.BASE_ERROR_MSG} {transfer} failed: the producer died: {cause}"
    err._ray_rdt = True
    return err


def is_passthrough(error: BaseException) -> bool:
    """Whether a deserialization error is the plugin's own ``RayError`` that Ray
    should keep as the value (rather than wrap in a ``RaySystemError``)."""
    return isinstance(error, RayError) and getattr(error, "_ray_rdt", False)
