"""The Ray 2.60.0 patch set: applies, checks and reverts it on an installed Ray.

The patches (``ray_rdt/patches/*.patch``, unified diffs against Ray's
``site-packages``) are applied exactly, without fuzz, and only to pristine files:
a file's state is decided by hashes, against the ``sha256`` that Ray's own wheel
recorded for it in ``ray-2.60.0.dist-info/RECORD``:

- *pristine*: the file hashes to its RECORD entry;
- *patched*: reverse-applying its patch gives bytes that hash to the RECORD entry;
- *outdated*: an older patch set is applied; the wheel's bytes come from the
  copy kept when it was applied (``<site-packages>/.ray_rdt_pristine/``, used
  only when it hashes to the RECORD entry), so upgrading ray-rdt re-patches;
- *modified*: anything else; it is never touched (reinstall Ray).

So applying is idempotent, and reverting provably restores the wheel's bytes.
The environment may be another interpreter's (``--python``): it is inspected in a
subprocess (without importing Ray) and its files are edited from this process.
"""

import base64
import enum
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

RAY_VERSION = "2.60.0"

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def _lines(text: str) -> List[str]:
    """``text`` split after each newline (only ``\\n``: Python's splitlines also splits on form feeds)."""
    return _LINE.findall(text)


class PatchError(Exception):
    """The patch set cannot be applied, checked or reverted here (message says why)."""


@dataclass
class Hunk:
    """One ``@@`` block: ``old`` lines at ``old_start`` (1-based) become ``new``."""

    old_start: int
    old: List[str]
    new: List[str]
    new_start: int


@dataclass
class FilePatch:
    """The hunks of one patch file, all for one file of Ray (``path`` relative to site-packages)."""

    name: str
    path: str
    hunks: List[Hunk] = field(default_factory=list)

    def apply(self, text: str, reverse: bool = False) -> str:
        """``text`` with the hunks applied (reversed: undone); exact match or :class:`PatchError`."""
        lines = _lines(text)
        out: List[str] = []
        pos = 0
        for hunk in self.hunks:
            old, new, start = (hunk.new, hunk.old, hunk.new_start) if reverse else (hunk.old, hunk.new, hunk.old_start)
            at = start - 1 if old else start
            if at < pos or lines[at : at + len(old)] != old:
                raise PatchError(f"{self.name}: hunk at line {start} does not match {self.path}")
            out.extend(lines[pos:at])
            out.extend(new)
            pos = at + len(old)
        out.extend(lines[pos:])
        return "".join(out)


def patch_dir() -> Path:
    """Where the patch files are: package data in a wheel, a link to ``ray-patches/`` in a checkout."""
    return Path(__file__).resolve().parent / "patches"


def parse(name: str, text: str) -> FilePatch:
    """Parses one single-file unified diff (``--- a/P`` / ``+++ b/P`` / hunks)."""
    lines = _lines(text)
    paths = [ln[4:].strip() for ln in lines if ln.startswith("+++ ")]
    if len(paths) != 1 or not paths[0].startswith("b/"):
        raise PatchError(f"{name}: expected one file per patch ('+++ b/<path>')")
    patch = FilePatch(name=name, path=paths[0][2:])
    hunk: Optional[Hunk] = None
    for line in lines:
        m = _HUNK_HEADER.match(line)
        if m:
            hunk = Hunk(old_start=int(m.group(1)), old=[], new=[], new_start=int(m.group(3)))
            patch.hunks.append(hunk)
        elif hunk is None or line.startswith("\\"):
            continue
        elif line.startswith(" "):
            hunk.old.append(line[1:])
            hunk.new.append(line[1:])
        elif line.startswith("-"):
            hunk.old.append(line[1:])
        elif line.startswith("+"):
            hunk.new.append(line[1:])
    if not patch.hunks:
        raise PatchError(f"{name}: no hunks")
    return patch


def load_patches(directory: Optional[Path] = None) -> List[FilePatch]:
    """The patch set, in file-name order."""
    directory = directory or patch_dir()
    files = sorted(directory.glob("*.patch"))
    if not files:
        raise PatchError(f"no patch files in {directory}")
    return [parse(f.name, f.read_text(encoding="utf-8")) for f in files]


def _record_hash(data: bytes) -> str:
    """The ``sha256=...`` form that wheel RECORD files use."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"sha256={digest}"


def _describe_ray() -> dict:
    """Version, site-packages directory and RECORD of the Ray installed here.

    Its source also runs in other interpreters (``--python``), so it imports
    only the standard library."""
    from importlib import metadata

    try:
        d = metadata.distribution("ray")
    except metadata.PackageNotFoundError:
        return {"version": None}
    return {"version": d.version, "site": str(d.locate_file("")), "record": d.read_text("RECORD") or ""}


_INSPECT = inspect.getsource(_describe_ray) + "\nimport json\nprint(json.dumps(_describe_ray()))\n"


@dataclass
class Environment:
    """The Ray installed in one Python environment."""

    python: str
    ray_version: Optional[str]
    site: Optional[Path]
    record: Dict[str, str]

    @classmethod
    def of(cls, python: Optional[str] = None) -> "Environment":
        """Inspects the environment of ``python`` (default: this interpreter)."""
        python = python or sys.executable
        if python == sys.executable:
            info = _describe_ray()
        else:
            try:
                proc = subprocess.run([python, "-c", _INSPECT], capture_output=True, text=True, timeout=120)
            except OSError as e:
                raise PatchError(f"cannot run {python}: {e}") from e
            if proc.returncode != 0:
                raise PatchError(f"{python} failed to report its Ray installation: {proc.stderr.strip()}")
            info = json.loads(proc.stdout.strip().splitlines()[-1])
        record = {}
        for row in (info.get("record") or "").splitlines():
            parts = row.rsplit(",", 2)
            if len(parts) == 3 and parts[1]:
                record[parts[0]] = parts[1]
        site = Path(info["site"]) if info.get("site") else None
        return cls(python=python, ray_version=info["version"], site=site, record=record)

    def require_supported(self):
        """Raises :class:`PatchError` unless this is Ray 2.60.0."""
        if self.ray_version != RAY_VERSION:
            have = self.ray_version or "not installed"
            raise PatchError(
                f"this patch set is for ray=={RAY_VERSION} only; {self.python} has ray {have}. "
                f"Install the supported version first: {self.python} -m pip install ray=={RAY_VERSION}"
            )


class State(enum.Enum):
    """Where one of Ray's files stands relative to its patch."""

    PRISTINE = "not applied"
    PATCHED = "applied"
    OUTDATED = "outdated (an older patch set; `ray-rdt patch` updates it)"
    MODIFIED = "modified"


PRISTINE_DIR = ".ray_rdt_pristine"


def _backup_path(env: Environment, patch: FilePatch) -> Path:
    """Where the wheel's copy of ``patch``'s file is kept while it is patched:
    ``<site-packages>/.ray_rdt_pristine/ray-2.60.0/<path>``, outside both
    packages, so upgrading ray-rdt keeps it and a reinstalled Ray ignores it
    (it is used only when it hashes to Ray's RECORD entry)."""
    return env.site / PRISTINE_DIR / f"ray-{RAY_VERSION}" / patch.path


def _recorded_hash(env: Environment, patch: FilePatch) -> str:
    pristine = env.record.get(patch.path)
    if pristine is None:
        raise PatchError(f"{patch.path} has no entry in Ray's RECORD in {env.site}; reinstall Ray")
    return pristine


def _reverse(patch: FilePatch, data: bytes) -> Optional[bytes]:
    try:
        return patch.apply(data.decode("utf-8"), reverse=True).encode("utf-8")
    except (PatchError, UnicodeDecodeError):
        return None


def _inspect(env: Environment, patch: FilePatch):
    """(state, the wheel's bytes of the file or None when they cannot be had)."""
    recorded = _recorded_hash(env, patch)
    data = (env.site / patch.path).read_bytes()
    if _record_hash(data) == recorded:
        return State.PRISTINE, data
    original = _reverse(patch, data)
    if original is not None and _record_hash(original) == recorded:
        return State.PATCHED, original
    backup = _backup_path(env, patch)
    if backup.is_file() and _record_hash(backup.read_bytes()) == recorded:
        return State.OUTDATED, backup.read_bytes()
    return State.MODIFIED, None


def state_of(env: Environment, patch: FilePatch) -> State:
    """The state of ``patch``'s file in ``env`` (see the module docstring)."""
    return _inspect(env, patch)[0]


def _write(path: Path, data: bytes):
    """Replaces ``path`` atomically, keeping its permissions (new files: 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _modified_message(env: Environment, patch: FilePatch) -> str:
    return (
        f"{patch.name}: {env.site / patch.path} is neither Ray {RAY_VERSION}'s file nor the patched one "
        f"(modified installation?). Reinstall it: {env.python} -m pip install --force-reinstall --no-deps "
        f"ray=={RAY_VERSION}"
    )


@dataclass
class Outcome:
    """What one run did: a line per patch, and whether it succeeded."""

    lines: List[str]
    ok: bool


def _inspect_all(env: Environment, patches: List[FilePatch]) -> Dict[str, tuple]:
    """Every file's state and pristine bytes; refuses (before any write) when one is modified."""
    env.require_supported()
    found = {p.name: _inspect(env, p) for p in patches}
    for p in patches:
        if found[p.name][0] is State.MODIFIED:
            raise PatchError(_modified_message(env, p))
    return found


def check(env: Environment, patches: List[FilePatch]) -> Outcome:
    """Reports each patch's state; ok when all are applied."""
    env.require_supported()
    states = [(p, state_of(env, p)) for p in patches]
    return Outcome([f"{p.name} {state.value}" for p, state in states], all(st is State.PATCHED for _, st in states))


def apply(env: Environment, patches: List[FilePatch]) -> Outcome:
    """Applies every patch not yet applied (over the wheel's bytes, also where an
    older patch set is applied); touches nothing if any file is modified."""
    found = _inspect_all(env, patches)
    lines = []
    for p in patches:
        state, pristine = found[p.name]
        if state is State.PATCHED:
            lines.append(f"{p.name} already applied")
            continue
        _write(_backup_path(env, p), pristine)
        _write(env.site / p.path, p.apply(pristine.decode("utf-8")).encode("utf-8"))
        lines.append(f"{p.name} {'updated' if state is State.OUTDATED else 'applied'}")
    return Outcome(lines, True)


def revert(env: Environment, patches: List[FilePatch]) -> Outcome:
    """Restores the wheel's bytes of every patched file (verified against RECORD)
    and removes the pristine copies."""
    found = _inspect_all(env, patches)
    lines = []
    for p in reversed(patches):
        state, pristine = found[p.name]
        if state is State.PRISTINE:
            lines.append(f"{p.name} not applied")
        else:
            path = env.site / p.path
            _write(path, pristine)
            if _record_hash(path.read_bytes()) != _recorded_hash(env, p):
                raise PatchError(f"{p.name}: reverting did not restore Ray's file {path}")
            lines.append(f"{p.name} reverted")
        backup = _backup_path(env, p)
        if backup.exists():
            backup.unlink()
    root = env.site / PRISTINE_DIR
    for d in sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True) + [root]:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return Outcome(lines, True)


_VERIFY_PATCHED = (
    "import importlib.util, ray.experimental.rdt.util as u, ray._private.worker; "
    "print('binding' if importlib.util.find_spec('ray_rdt') else 'no-binding'); u.rdt_plugin()"
)
_VERIFY_STOCK = "import ray.experimental.rdt.util, ray._private.worker"


def verify_import(env: Environment, patched: bool = True) -> Optional[str]:
    """Imports the (patched or, after a revert, stock) modules in ``env``; returns a
    warning (or None), raises :class:`PatchError` when they do not import."""
    code = _VERIFY_PATCHED if patched else _VERIFY_STOCK
    proc = subprocess.run([env.python, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise PatchError(f"Ray does not import in {env.python} after patching:\n{proc.stderr.strip()}")
    if patched and "no-binding" in proc.stdout:
        return (
            f"ray_rdt is not installed in {env.python}'s environment: the patched Ray runs stock 2.60 "
            "code there until the ray-rdt package is installed into it"
        )
    return None
