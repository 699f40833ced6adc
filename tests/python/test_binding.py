"""The ctypes binding over the C ABI, without Ray: DLPack in and out, errors,
counters, library discovery."""

import ctypes
import gc
import os
import subprocess
import sys
import threading
import weakref

import pytest
import torch

import ray_rdt
from ray_rdt import _ffi, dlpack
from ray_rdt.context import Context

from conftest import REPO, wait_for


@pytest.fixture(scope="module")
def producer():
    ctx = Context(b"\x01" * 28, b"\x02" * 16)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def consumer():
    ctx = Context()
    yield ctx
    ctx.close()


def oid():
    return os.urandom(28)


@pytest.fixture(params=["exchange", "capsules"])
def export_path(request, monkeypatch):
    """Each way the binding exports tensors to the plugin: torch's DLPack C
    exchange API in one plugin call (where torch has it), and capsules."""
    if request.param == "exchange" and dlpack._exchange_api() is None:
        pytest.skip("this torch has no DLPack C exchange API (__dlpack_c_exchange_api__)")
    if request.param == "capsules":
        monkeypatch.setattr(dlpack, "_EXCHANGE_API", None)
    return request.param


def numpy_backed(n=4):
    """A tensor over a numpy array, and a weak reference to that array: it dies
    once nothing holds the tensor's memory (a DLPack export does)."""
    import numpy

    array = numpy.zeros(n, dtype=numpy.float32)
    return torch.from_numpy(array), weakref.ref(array)


def test_library_and_version():
    path = ray_rdt.library_path()
    assert path.endswith("libray_rdt.so") and os.path.exists(path)
    assert _ffi.lib().rdt_abi_version() >> 16 == _ffi.ABI_MAJOR


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 4),
        torch.arange(10, dtype=torch.int64),
        torch.ones(5, dtype=torch.bool),
        torch.randn(6).to(torch.float16),
        torch.randn(6).to(torch.bfloat16),
        torch.tensor(3.5),
        torch.empty(0, 4),
        torch.randn(2, 3, dtype=torch.complex64),
    ],
    ids=["f32", "i64", "bool", "f16", "bf16", "scalar", "empty", "c64"],
)
def test_put_fetch_roundtrip(producer, consumer, tensor, export_path):
    key = oid()
    record = producer.put(key, _ffi.TRANSPORT_SHM, [tensor])
    local = producer.fetch(key, record)
    assert local[0].data_ptr() == tensor.data_ptr() or tensor.numel() == 0
    remote = consumer.fetch(key, record)
    assert remote[0].dtype == tensor.dtype and remote[0].shape == tensor.shape
    assert torch.equal(remote[0], tensor)
    if tensor.numel():
        assert remote[0].data_ptr() != tensor.data_ptr()
    assert producer.free(key)
    assert not producer.free(key)


def test_strided_and_grad_tensors(producer, consumer, export_path):
    base = torch.arange(24.0).reshape(4, 6)
    view = base[:, 1::2]  # not contiguous
    grad = torch.randn(5, requires_grad=True)
    key = oid()
    record = producer.put(key, _ffi.TRANSPORT_SHM, [view, grad])
    got = consumer.fetch(key, record)
    assert torch.equal(got[0], view) and torch.equal(got[1], grad.detach())
    producer.free(key)


def test_many_tensors_grow_output_array(producer, consumer):
    tensors = [torch.full((3,), float(i)) for i in range(20)]
    key = oid()
    record = producer.put(key, _ffi.TRANSPORT_SHM, tensors)
    assert _ffi.record_summary(record) == (_ffi.TRANSPORT_SHM, 20, 20 * 12)
    got = consumer.fetch(key, record)
    assert all(torch.equal(a, b) for a, b in zip(got, tensors))
    producer.free(key)


def test_received_tensors_outlive_the_producer_copy(producer, consumer):
    key = oid()
    t = torch.randn(1000)
    record = producer.put(key, _ffi.TRANSPORT_SHM, [t])
    got = consumer.fetch(key, record)
    producer.free(key)
    gc.collect()
    assert torch.equal(got[0], t)
    got[0] += 1  # writable
    assert torch.equal(got[0], t + 1)


def test_errors(producer, consumer, export_path):
    key = oid()
    # Large enough to be fetched from the producer (small objects travel in their record).
    record = producer.put(key, _ffi.TRANSPORT_SHM, [torch.ones(1 << 20)])
    producer.free(key)
    with pytest.raises(ray_rdt.RdtNotFoundError, match="not held by the producer"):
        consumer.fetch(key, record)
    with pytest.raises(ray_rdt.RdtError, match="RDT_ERR_MALFORMED_METADATA"):
        consumer.fetch(key, b"garbage")
    with pytest.raises(ValueError, match="28 bytes"):
        consumer.fetch(b"short", record)
    # A refused put leaves the tensors with the caller, and keeps nothing.
    t = torch.ones(3)
    with pytest.raises(ray_rdt.RdtError):
        producer.put(oid(), _ffi.TRANSPORT_GLOO, [t], group="no-such-group")
    assert torch.equal(t, torch.ones(3))
    kept, alive = numpy_backed()
    with pytest.raises(ray_rdt.RdtError):
        producer.put(oid(), _ffi.TRANSPORT_GLOO, [kept], group="no-such-group")
    del kept
    gc.collect()
    assert alive() is None


def test_fetch_into_targets(producer, consumer, export_path):
    """``fetch_into`` lands the bytes in the caller's tensors, refuses a target
    of another shape before any byte moves, and keeps no target afterwards."""
    a, b = torch.arange(1 << 16, dtype=torch.float32), torch.arange(12, dtype=torch.int32).reshape(3, 4)
    key = oid()
    record = producer.put(key, _ffi.TRANSPORT_SHM, [a, b])
    target_a, alive = numpy_backed(1 << 16)
    target_b = torch.zeros(3, 4, dtype=torch.int32)
    consumer.fetch_into(key, record, [target_a, target_b])
    assert torch.equal(target_a, a) and torch.equal(target_b, b)
    wrong = torch.zeros(4, 3, dtype=torch.int32)
    with pytest.raises(ray_rdt.RdtError, match="RDT_ERR_INVALID_ARGUMENT"):
        consumer.fetch_into(key, record, [torch.zeros(1 << 16), wrong])
    assert torch.equal(wrong, torch.zeros(4, 3, dtype=torch.int32))
    producer.free(key)
    del target_a
    gc.collect()
    assert alive() is None


def test_exchange_export_refuses_what_it_cannot_export_and_keeps_nothing():
    """``rdt_tensors_export``: a list item that is no tensor, a tensor torch
    cannot export and a capsule that is no exchange API are clear errors; the
    tensors exported before the bad item are released, and the Python errors
    met are cleared."""
    exchange = dlpack._exchange_api()
    if exchange is None:
        pytest.skip("this torch has no DLPack C exchange API (__dlpack_c_exchange_api__)")
    lib = _ffi.lib()
    out = (ctypes.c_void_p * 2)()
    t, alive = numpy_backed()
    assert lib.rdt_tensors_export(exchange, torch.Tensor, [t, "x"], out, None, 2) == _ffi.ERR_INVALID_ARGUMENT
    assert "item 1 is not a tensor" in _ffi.last_error()
    assert not out[0] and not out[1]
    sparse = torch.ones(2, 2).to_sparse()
    assert lib.rdt_tensors_export(exchange, torch.Tensor, [t, sparse], out, None, 2) == _ffi.ERR_INVALID_ARGUMENT
    assert "item 1 cannot be exported as DLPack: " in _ffi.last_error() and "storage" in _ffi.last_error()
    assert not out[0]
    capsule = torch.utils.dlpack.to_dlpack(torch.ones(1))
    assert lib.rdt_tensors_export(capsule, torch.Tensor, [t], out, None, 1) == _ffi.ERR_INVALID_ARGUMENT
    assert 'not a capsule named "dlpack_exchange_api"' in _ffi.last_error()
    assert lib.rdt_tensors_export(exchange, torch.Tensor, [t], out, None, 2) == _ffi.ERR_INVALID_ARGUMENT
    assert "the list has 1 items, the call says 2" in _ffi.last_error()
    del t
    gc.collect()
    assert alive() is None
    # An export holds its tensor until released.
    t, alive = numpy_backed()
    views = (ctypes.c_void_p * 1)()
    assert lib.rdt_tensors_export(exchange, torch.Tensor, [t], out, views, 1) == _ffi.OK
    assert views[0] and views[0] != out[0]
    del t
    gc.collect()
    assert alive() is not None
    assert lib.rdt_tensors_release(out, 1) == _ffi.OK
    gc.collect()
    assert alive() is None


def test_tensors_view_describes_targets_in_place_and_refuses_what_it_cannot():
    """``rdt_tensors_view``: targets are described in place (a strided view,
    a Parameter that requires grad, an empty and a 0-d tensor), holding
    nothing; an item that is no tensor, a tensor without storage and bad
    arguments are clear errors, and the Python errors met are cleared."""
    exchange = dlpack._exchange_api()
    if exchange is None:
        pytest.skip("this torch has no DLPack C exchange API (__dlpack_c_exchange_api__)")
    lib = _ffi.lib()

    def view(items, n=None):
        n = len(items) if n is None else n
        out, views = (_ffi.DLTensor * max(n, 1))(), (ctypes.c_void_p * max(n, 1))()
        status = lib.rdt_tensors_view(exchange, torch.Tensor, items, out, views, n)
        return status, out, views

    t, alive = numpy_backed(12)
    strided = t.view(3, 4)[:, 1:]
    grad = torch.nn.Parameter(torch.ones(3))
    items = [strided, grad, torch.ones(0), torch.ones(())]
    status, out, views = view(items)
    assert status == _ffi.OK
    d = out[0]
    assert d.data + d.byte_offset == strided.data_ptr()
    assert [d.shape[i] for i in range(d.ndim)] == [3, 3] and [d.strides[i] for i in range(d.ndim)] == [4, 1]
    assert out[1].data + out[1].byte_offset == grad.data_ptr() and out[3].ndim == 0
    assert [views[i] for i in range(4)] == [ctypes.addressof(out[i]) for i in range(4)]
    # Nothing was exported: the view holds no reference to the memory.
    del t, strided, items
    gc.collect()
    assert alive() is None
    status, _, _ = view([torch.ones(2), "x"])
    assert status == _ffi.ERR_INVALID_ARGUMENT and "item 1 is not a tensor" in _ffi.last_error()
    status, _, _ = view([torch.ones(2, 2).to_sparse()])
    assert status == _ffi.ERR_INVALID_ARGUMENT and "item 0 cannot be described as DLPack: " in _ffi.last_error()
    status, _, _ = view([torch.ones(2)], n=2)
    assert status == _ffi.ERR_INVALID_ARGUMENT and "the list has 1 items, the call says 2" in _ffi.last_error()
    capsule = torch.utils.dlpack.to_dlpack(torch.ones(1))
    assert lib.rdt_tensors_view(capsule, torch.Tensor, [grad], None, None, 1) == _ffi.ERR_INVALID_ARGUMENT
    assert 'not a capsule named "dlpack_exchange_api"' in _ffi.last_error()
    assert _ffi.status_name(lib.rdt_tensors_view(exchange, torch.Tensor, [grad], None, None, 1)) == "RDT_ERR_NULL_ARGUMENT"
    assert torch.ones(2).sum().item() == 2.0  # no Python error left pending


def test_record_lookup_by_object_id(producer, consumer):
    key = oid()
    record = producer.put(key, _ffi.TRANSPORT_SHM, [torch.randn(1 << 16)])
    assert producer.record(key) == record
    assert torch.equal(consumer.fetch(key, producer.record(key))[0], producer.get(key)[0])
    with pytest.raises(ray_rdt.RdtNotFoundError, match="not held by this process"):
        consumer.record(key)
    assert producer.free(key)
    with pytest.raises(ray_rdt.RdtNotFoundError):
        producer.record(key)


def test_wait_tensor_freed(producer):
    t = torch.randn(8)
    key = oid()
    producer.put(key, _ffi.TRANSPORT_SHM, [t])
    with pytest.raises(ray_rdt.RdtTimeoutError):
        producer.wait_tensor_freed(t, 0.05)
    timer = threading.Timer(0.1, producer.free, args=(key,))
    timer.start()
    producer.wait_tensor_freed(t, 10)
    timer.join()


def test_counts_and_stats(producer, consumer):
    before = ray_rdt.stats()
    assert set(before) == {"gloo", "nccl", "nixl", "cuda_ipc", "shm"}
    assert set(before["shm"]) == {"bytes_sent", "bytes_received", "transfers", "errors", "paths"}
    assert set(before["shm"]["paths"]) == {"same_host", "network", "inline", "node_copy"}
    objects0, bytes0 = producer.counts()
    key = oid()
    n = 1 << 20  # above the inline threshold: fetched over shm
    t = torch.randn(n // 4)
    record = producer.put(key, _ffi.TRANSPORT_SHM, [t])
    assert producer.counts() == (objects0 + 1, bytes0 + n)
    consumer.fetch(key, record)
    # Both sides live in this process: each counts its half of the transfer (the
    # producer's endpoint thread may finish counting just after the fetch returns).
    assert wait_for(lambda: ray_rdt.stats()["shm"]["transfers"] - before["shm"]["transfers"] == 2, timeout=5)
    after = ray_rdt.stats()
    same_host = after["shm"]["paths"]["same_host"]
    assert after["shm"]["bytes_received"] - before["shm"]["bytes_received"] == n
    assert after["shm"]["bytes_sent"] - before["shm"]["bytes_sent"] == n
    assert same_host["bytes_received"] - before["shm"]["paths"]["same_host"]["bytes_received"] == n
    latency = same_host["latency_us"]
    assert len(latency["counts"]) == len(latency["bounds"]) + 1
    assert sum(latency["counts"]) - sum(before["shm"]["paths"]["same_host"]["latency_us"]["counts"]) == 1
    producer.free(key)
    # A small object travels inside its record: no transfer from the producer.
    served = ray_rdt.endpoint_stats()["fetches_served"]
    small = oid()
    record = producer.put(small, _ffi.TRANSPORT_SHM, [torch.arange(100, dtype=torch.float32)])
    assert torch.equal(consumer.fetch(small, record)[0], torch.arange(100, dtype=torch.float32))
    assert ray_rdt.endpoint_stats()["fetches_served"] == served
    inline = ray_rdt.stats()["shm"]["paths"]["inline"]
    assert inline["bytes_received"] - after["shm"]["paths"]["inline"]["bytes_received"] == 400
    producer.free(small)


def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"), **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60)


def test_library_discovery_env_and_clear_error():
    lib = os.path.join(REPO, "target", "release", "libray_rdt.so")
    ok = _run("import ray_rdt; print(ray_rdt.library_path())", RAY_RDT_LIB=lib)
    assert ok.returncode == 0 and ok.stdout.strip() == lib
    bad = _run("import ray_rdt; ray_rdt.library_path()", RAY_RDT_LIB="/nonexistent/libray_rdt.so")
    assert bad.returncode != 0
    assert "libray_rdt.so not found" in bad.stderr and "RAY_RDT_PLUGIN=0" in bad.stderr
    # With the plugin off and no library, stats() reads zeros.
    off = _run("import ray_rdt; print(sum(c[k] for c in ray_rdt.stats().values() for k in ('bytes_sent', "
               "'bytes_received', 'transfers', 'errors')) + sum(ray_rdt.endpoint_stats().values()))",
               RAY_RDT_LIB="/nonexistent/libray_rdt.so", RAY_RDT_PLUGIN="0")
    assert off.returncode == 0 and off.stdout.strip() == "0"


def test_enabled_switch():
    assert _run("import ray_rdt; assert ray_rdt.enabled()").returncode == 0
    for value in ("0", "false", "off"):
        assert _run("import ray_rdt; assert not ray_rdt.enabled()", RAY_RDT_PLUGIN=value).returncode == 0


def test_ray_shutdown_waits_for_a_report_under_way_and_pauses_the_reporter(monkeypatch):
    """``process.on_ray_shutdown`` (Ray's shutdown calls it first) returns only
    after a report under way ends (a report calls into Ray's core worker, which
    the shutdown destroys); later reports do nothing until the process
    connects again (``reporter.resume``)."""
    from ray_rdt import process, reporter

    r = reporter.Reporter(lambda: (None, None))
    reports, entered, release = [], threading.Event(), threading.Event()

    def blocking_report():
        reports.append(1)
        entered.set()
        release.wait(10)

    monkeypatch.setattr(r, "_report", blocking_report)
    monkeypatch.setattr(reporter, "_current", r)
    monkeypatch.setattr(process, "_context", None)  # no context: the reporter alone
    under_way = threading.Thread(target=r.report)
    under_way.start()
    assert entered.wait(10)
    shutdown = threading.Thread(target=process.on_ray_shutdown)
    shutdown.start()
    try:
        shutdown.join(0.3)
        assert shutdown.is_alive(), "on_ray_shutdown returned while a report was under way"
    finally:
        release.set()
        under_way.join(10)
        shutdown.join(10)
    assert not shutdown.is_alive()
    try:
        r.report()
        assert len(reports) == 1, "a paused reporter reported"
    finally:
        reporter.resume()
    r.report()
    assert len(reports) == 2


def test_capsule_helpers_refuse_what_is_not_an_unused_dlpack_capsule():
    from torch.utils.dlpack import to_dlpack

    lib = _ffi.lib()
    good = to_dlpack(torch.ones(2))
    array = (ctypes.c_void_p * 2)()
    assert lib.rdt_capsules_pointers([good], array, 1) == _ffi.OK and array[0]
    assert lib.rdt_capsules_pointers([good, "x"], array, 2) == _ffi.ERR_INVALID_ARGUMENT
    assert "item 1 is not a DLPack capsule" in _ffi.last_error()
    assert lib.rdt_capsules_pointers([good], array, 2) == _ffi.ERR_INVALID_ARGUMENT
    assert "the list has 1 items, the call says 2" in _ffi.last_error()
    assert lib.rdt_capsules_pointers((good,), array, 1) == _ffi.ERR_INVALID_ARGUMENT
    assert "not a list" in _ffi.last_error()
    # A consumed capsule no longer owns its tensor: refused by both helpers.
    used = to_dlpack(torch.ones(2))
    assert lib.rdt_capsules_pointers([used], array, 1) == _ffi.OK
    taken = ctypes.cast(array[0], ctypes.POINTER(_ffi.DLManagedTensor))
    assert lib.rdt_capsules_consume([used], 1) == _ffi.OK
    assert lib.rdt_capsules_pointers([used], array, 1) == _ffi.ERR_INVALID_ARGUMENT
    assert lib.rdt_capsules_consume([used], 1) == _ffi.ERR_INVALID_ARGUMENT
    # The Python errors the helpers met were cleared: this runs on.
    assert torch.from_dlpack(good).tolist() == [1.0, 1.0]
    taken.contents.deleter(taken)  # the consumed capsule's tensor is ours to release


def test_tensors_torch_did_not_take_are_released(producer, monkeypatch):
    """Received tensors are wrapped in capsules in one plugin call; when torch
    refuses one, the error reaches the caller and every capsule torch did not
    take releases its tensor. Here the tensors are views of an object the
    producer holds, which keep the put tensor alive until they are released:
    it dies (its weak reference clears) only if all of them were."""
    t = torch.arange(64, dtype=torch.float32)
    alive = weakref.ref(t)
    key = oid()
    producer.put(key, _ffi.TRANSPORT_SHM, [t, t[:8], t[8:]])
    del t
    importer = dlpack._from_capsule()
    calls = []

    def refuse_the_second(capsule):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("torch refused it")
        return importer(capsule)

    monkeypatch.setattr(dlpack, "_from_capsule", lambda: refuse_the_second)
    with pytest.raises(RuntimeError, match="torch refused it"):
        producer.get(key)
    monkeypatch.undo()
    assert producer.free(key)
    gc.collect()
    assert alive() is None


def test_list_distinct_tells_a_list_that_holds_an_object_twice():
    """The producer stores a value in one pass only when no tensor appears
    twice in it (``rdt_list_distinct``, one sort in the plugin)."""
    a, b = torch.ones(2), torch.ones(2)
    many = [torch.ones(1) for _ in range(1000)]
    assert _ffi.list_distinct([]) and _ffi.list_distinct([a]) and _ffi.list_distinct([a, b])
    assert _ffi.list_distinct(many)
    assert not _ffi.list_distinct([a, b, a])
    assert not _ffi.list_distinct(many + [many[500]])
    # Equal but distinct objects (views of one tensor) are distinct.
    assert _ffi.list_distinct([a.view(-1), a.view(-1)])
    lib = _ffi.lib()
    out = ctypes.c_bool(True)
    assert lib.rdt_list_distinct((a, a), 2, ctypes.byref(out)) == _ffi.ERR_INVALID_ARGUMENT
    assert "not a list" in _ffi.last_error()
    assert lib.rdt_list_distinct([a], 2, ctypes.byref(out)) == _ffi.ERR_INVALID_ARGUMENT
    assert "the list has 1 items, the call says 2" in _ffi.last_error()
    assert _ffi.status_name(lib.rdt_list_distinct([a], 1, None)) == "RDT_ERR_NULL_ARGUMENT"
    assert out.value  # untouched by the refused calls


def test_targets_are_exported_where_the_exchange_api_cannot_describe_them(producer, consumer, monkeypatch):
    """A framework's exchange API table without ``dltensor_from_py_object_no_sync``
    (DLPack 1.2 has it; a table may leave it NULL): ``rdt_tensors_view``
    says ``RDT_ERR_UNSUPPORTED`` and the binding exports the targets instead,
    landing the bytes all the same."""
    exchange = dlpack._exchange_api()
    if exchange is None:
        pytest.skip("this torch has no DLPack C exchange API (__dlpack_c_exchange_api__)")

    class Table(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("prev_api", ctypes.c_void_p)] + [
            (name, ctypes.c_void_p) for name in ("allocator", "export", "to_py", "describe", "stream")
        ]

    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    table = Table.from_buffer_copy(Table.from_address(get_pointer(exchange, b"dlpack_exchange_api")))
    table.describe = None
    name = ctypes.create_string_buffer(b"dlpack_exchange_api")
    capsule = new_capsule(ctypes.addressof(table), name, None)

    out, views = (_ffi.DLTensor * 1)(), (ctypes.c_void_p * 1)()
    assert _ffi.lib().rdt_tensors_view(capsule, torch.Tensor, [torch.ones(1)], out, views, 1) == _ffi.ERR_UNSUPPORTED
    assert "cannot describe a tensor without exporting it" in _ffi.last_error()
    monkeypatch.setattr(dlpack, "_EXCHANGE_API", capsule)
    monkeypatch.setattr(dlpack, "_DESCRIBES", None)
    a = torch.arange(1000, dtype=torch.float32)
    key = oid()
    record = producer.put(key, _ffi.TRANSPORT_SHM, [a])
    target = torch.zeros(1000)
    consumer.fetch_into(key, record, [target])
    assert torch.equal(target, a) and dlpack._DESCRIBES is False
    producer.free(key)
