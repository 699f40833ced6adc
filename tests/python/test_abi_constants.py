"""The C ABI's codes as the binding uses them (``ray_rdt._ffi``) agree with the
header cbindgen generates from the Rust definitions (``include/ray_rdt.h``), and
the names the binding shows come from the library (``rdt_status_name``,
``rdt_transport_name``, ``rdt_path_name``), so a new or renumbered status,
transport or path cannot drift silently."""

import os
import re

from ray_rdt import _ffi

from conftest import REPO

HEADER = open(os.path.join(REPO, "include", "ray_rdt.h")).read()


def defines(prefix: str) -> dict:
    return {m.group(1): int(m.group(2)) for m in re.finditer(rf"#define ({prefix}\w*) (\d+)\b", HEADER)}


def test_status_codes_and_names():
    body = re.search(r"enum rdt_status\s*(?:#if[^\n]*\n[^\n]*\n#endif[^\n]*\n)?\s*\{(.*?)\};", HEADER, re.S).group(1)
    statuses = {int(code): name for name, code in re.findall(r"(RDT_(?:OK|ERR_\w+)) = (\d+)", body)}
    assert {code: _ffi.status_name(code) for code in statuses} == statuses
    assert _ffi.status_name(max(statuses) + 1) == f"status {max(statuses) + 1}"
    for name, code in vars(_ffi).items():
        if name.startswith("ERR_") and isinstance(code, int):
            assert statuses[code] == "RDT_" + name, name


def test_transport_and_path_codes():
    transports = {name[len("RDT_TRANSPORT_"):].lower(): code for name, code in defines("RDT_TRANSPORT_").items()}
    assert {name: code for code, name in _ffi.transport_names().items()} == transports
    for name, code in transports.items():
        assert getattr(_ffi, "TRANSPORT_" + name.upper()) == code
    paths = {name[len("RDT_PATH_"):].lower(): code for name, code in defines("RDT_PATH_").items()}
    assert {name: code for code, name in _ffi.path_names().items()} == paths


def test_versions_and_sizes():
    assert defines("RDT_ABI_VERSION_") == {"RDT_ABI_VERSION_MAJOR": _ffi.ABI_MAJOR, "RDT_ABI_VERSION_MINOR": _ffi.ABI_MINOR}
    assert defines("RDT_LATENCY_BUCKETS") == {"RDT_LATENCY_BUCKETS": _ffi.LATENCY_BUCKETS}
