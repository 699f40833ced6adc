"""ray-patches/apply: applies cleanly to a pristine Ray 2.60.0, is idempotent,
refuses other Ray versions. Runs against copies, never the real environment
(except for ``--check``)."""

import hashlib
import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import REPO

APPLY = os.path.join(REPO, "ray-patches", "apply")
PATCH_DIR = os.path.join(REPO, "ray-patches", "ray-2.60.0")
SITE = os.path.dirname(os.path.dirname(__import__("ray").__file__))
FILES = [
    "ray/experimental/rdt/util.py",
    "ray/experimental/rdt/rdt_manager.py",
    "ray/_private/serialization.py",
    "ray/_private/worker.py",
    "ray/experimental/collective/collective.py",
]


def fake_python(tmp_path, version, site):
    """An 'interpreter' answering the three questions apply asks."""
    path = tmp_path / "python"
    path.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ $1 == - ]]; then cat >/dev/null; echo {version}; '
        f'elif [[ $1 == -c && $2 == *find_spec* ]]; then echo {site}; '
        "else exit 0; fi\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def digest(root):
    h = hashlib.sha256()
    for f in FILES:
        with open(os.path.join(root, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


@pytest.fixture
def pristine_site(tmp_path):
    """A copy of the installed (patched) files, reverse-patched to stock 2.60.0."""
    site = tmp_path / "site"
    for f in FILES:
        os.makedirs(site / os.path.dirname(f), exist_ok=True)
        shutil.copy(os.path.join(SITE, f), site / f)
    for p in sorted(os.listdir(PATCH_DIR), reverse=True):
        with open(os.path.join(PATCH_DIR, p)) as fh:
            subprocess.run(["patch", "-d", str(site), "-p1", "-R", "-s"], stdin=fh, check=True)
    return site


def run_apply(*args):
    return subprocess.run(["bash", APPLY, *args], capture_output=True, text=True, timeout=120)


def test_installed_environment_is_patched():
    proc = run_apply("--check", sys.executable)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_applies_to_pristine_and_is_idempotent(tmp_path, pristine_site):
    py = fake_python(tmp_path, "2.60.0", pristine_site)
    stock = digest(pristine_site)
    first = run_apply(py)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied") == len(FILES) and "already" not in first.stdout
    patched = digest(pristine_site)
    assert patched != stock and patched == digest(SITE)
    assert (pristine_site / "ray_rdt.pth").read_text().strip() == os.path.join(REPO, "python")
    second = run_apply(py)
    assert second.returncode == 0 and second.stdout.count("already applied") == len(FILES)
    assert digest(pristine_site) == patched
    assert not list(pristine_site.rglob("*.orig")) and not list(pristine_site.rglob("*.rej"))


@pytest.mark.parametrize("version", ["2.59.0", "2.60.1", "none"])
def test_refuses_other_ray_versions(tmp_path, pristine_site, version):
    py = fake_python(tmp_path, version, pristine_site)
    before = digest(pristine_site)
    proc = run_apply(py)
    assert proc.returncode == 1
    assert "this patch set is for ray==2.60.0 only" in proc.stderr and version in proc.stderr
    assert digest(pristine_site) == before


def test_modified_installation_is_refused(tmp_path, pristine_site):
    target = pristine_site / "ray/_private/worker.py"
    target.write_text(target.read_text().replace("_use_object_store: bool = False,", "_use_object_store=False,"))
    proc = run_apply(fake_python(tmp_path, "2.60.0", pristine_site))
    assert proc.returncode == 1 and "does not apply" in proc.stderr


def test_patches_are_small():
    added = 0
    for p in os.listdir(PATCH_DIR):
        with open(os.path.join(PATCH_DIR, p)) as fh:
            added += sum(1 for line in fh if line.startswith("+") and not line.startswith("+++"))
    assert added < 200, added
