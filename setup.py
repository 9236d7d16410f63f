"""Build script: the package is pure Python plus two optional compiled modules, ``engine._verify`` (the batch
verifier) and ``engine._intake`` (the per-item check of device requests).

Build switches (environment variables), in the manner of asyncpg/clickhouse-connect:

* ``ENGINE_NO_EXTENSIONS=1``: skip the Cython extensions; the engine runs on the pure-Python reference path.
* ``ENGINE_CYTHON_ANNOTATE=1``: also write the Cython HTML annotation next to the source.

A failed compile does not fail the install: the reference path is complete, and ``python -m engine info``
(and one test) say which path is active, so a silent fallback is visible.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """Build the extension if we can; fall back to the reference path with a loud warning if not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any compiler failure means "install pure"
            print(f"WARNING: engine._verify not built ({exc}); using the pure-Python path", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
            return
        except Exception as exc:
            first = exc
        # A compiler without OpenMP (Apple clang) still builds a correct extension: prange runs serially.
        if "-fopenmp" in ext.extra_compile_args:
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"]
            ext.extra_link_args = [a for a in ext.extra_link_args if a != "-fopenmp"]
            try:
                super().build_extension(ext)
                print(f"WARNING: {ext.name} built without OpenMP ({first}): one signature thread", file=sys.stderr)
                return
            except Exception as exc:
                first = exc
        print(f"WARNING: {ext.name} not built ({first}); using the pure-Python path", file=sys.stderr)


def extensions() -> list:
    if NO_EXTENSIONS:
        return []
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        print(f"WARNING: cannot cythonize ({exc}); using the pure-Python path", file=sys.stderr)
        return []
    ext = Extension(
        "engine._verify",
        ["ext/_verify.pyx"],
        depends=["ext/_parse.pxi", "ext/_cache.pxi"],  # included by _verify.pyx: rebuild on change, ship in the sdist
        include_dirs=[numpy.get_include(), "ext"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    intake = Extension(
        "engine._intake",
        ["ext/_intake.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    return cythonize(
        [ext, intake],
        language_level=3,
        annotate=os.environ.get("ENGINE_CYTHON_ANNOTATE", "") not in ("", "0"),
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
