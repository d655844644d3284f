"""Builds the optional C++ CPU kernels (csrc/) into ``fitnets_fast._C`` with pybind11 alone.

The extension does not link libtorch: the Python side passes raw data pointers, shapes and strides.
If the compiler or OpenMP is missing, the build degrades (no OpenMP) or the package installs without
``_C``; the ops then fall back to the reference implementations.
"""
import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return []
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension

    # One compiler process per core (FITNETS_FAST_BUILD_JOBS=N to choose): the kernels' files build in parallel.
    ParallelCompile("FITNETS_FAST_BUILD_JOBS").install()

    # -fno-math-errno: sqrt need not set errno, so it vectorises (the kernels never read errno).
    compile_args = ["-O3", "-fno-math-errno"]
    link_args = []
    if sys.platform.startswith("linux"):
        # Built where it runs (pip install -e .): tune for this CPU unless a portable build is asked for.
        arch = ["-mavx2", "-mfma"] if os.environ.get("FITNETS_PORTABLE") else ["-march=native"]
        compile_args += ["-fopenmp", *arch]
        link_args += ["-fopenmp"]
    return [
        Pybind11Extension(
            "fitnets_fast._C",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]


class OptionalBuildExt(build_ext):
    """Build the C++ kernels if possible; never fail the install because of them."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # pragma: no cover - depends on the toolchain
            print(f"warning: fitnets_fast._C was not built ({exc}); ops fall back to the reference")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # pragma: no cover
            print(f"warning: {ext.name} was not built ({exc}); ops fall back to the reference")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
