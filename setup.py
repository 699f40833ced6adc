"""Two adjustments setuptools-rust needs for a plain C-ABI library (the rest of
the configuration is in pyproject.toml):

- the library keeps its own name, ``ray_rdt/libray_rdt.so``, instead of a Python
  extension-module name (``libray_rdt.cpython-311-x86_64-linux-gnu.so``): it is
  loaded with ctypes, and C/C++ users find it under the name they link against;
- the wheel is tagged ``py3-none-<platform>``: the library does not use Python's
  C API, so one wheel serves every Python 3 on that platform.
"""

import os

from setuptools import setup
from setuptools_rust.build import build_rust

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 keeps it in the wheel package
    from wheel.bdist_wheel import bdist_wheel

LIBRARY = "libray_rdt.so"


class BuildRustLibrary(build_rust):
    """Installs the cdylib as ``<package>/libray_rdt.so``."""

    def get_dylib_ext_path(self, ext, target_fname):
        default = super().get_dylib_ext_path(ext, target_fname)
        return os.path.join(os.path.dirname(default), LIBRARY)


class PlatformWheel(bdist_wheel):
    """A platform wheel independent of the Python version and ABI."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(cmdclass={"build_rust": BuildRustLibrary, "bdist_wheel": PlatformWheel})
