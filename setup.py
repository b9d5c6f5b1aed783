"""Build flightdeck, with its optional native parts.

The extensions are optional: without a C compiler, or with ``FLIGHTDECK_NO_EXTENSIONS`` set
to a non-empty value other than ``0``, flightdeck installs pure Python and runs its pure
paths. A failed compile says so in one line and carries on, except under cibuildwheel,
where a wheel without its extension would be a broken wheel.
"""

from __future__ import annotations

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _no_extensions() -> bool:
    # The rule of flightdeck.core.cores.extensions_disabled, copied: the build must not
    # import the package. tests/core/test_cores.py checks that the two agree.
    value = os.environ.get("FLIGHTDECK_NO_EXTENSIONS", "")
    return value != "" and value != "0"


class optional_build_ext(build_ext):
    """Build the extensions if possible; otherwise leave the pure-Python paths."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (distutils errors)
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # the compiler failed
            self._drop_stale(ext)
            self._skip(exc)

    @staticmethod
    def _drop_stale(ext: Extension) -> None:
        # An editable install imports the extension from the source tree: one left there by an
        # earlier build would be imported as if this build had made it.
        here = os.path.dirname(os.path.abspath(__file__))
        name = ext.name.split(".")[-1] + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        stale = os.path.join(here, os.path.dirname(ext.sources[0]), name)
        if os.path.exists(stale):
            os.remove(stale)
            print(f"flightdeck: removed the stale {os.path.relpath(stale, here)}", file=sys.stderr)

    def _skip(self, exc: Exception) -> None:
        if os.environ.get("CIBUILDWHEEL"):
            raise exc
        print(
            f"flightdeck: native extension not built ({type(exc).__name__}: {exc}); "
            "using pure Python",
            file=sys.stderr,
        )


# Generated from flightdeck/core/events.py (tools/gen_kinds.py) and checked in: the build
# never imports the package.
KINDS_H = "flightdeck/core/_kinds.h"
# The native core's parts (one translation unit: _native.c includes them) and the clock
# header both C modules share.
NATIVE_PARTS = sorted(
    os.path.join("flightdeck/core/native", name)
    for name in os.listdir(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "flightdeck/core/native")
    )
    if name.endswith(".h")
)
CLOCK_H = "flightdeck/core/native/clock.h"
CAPI_H = "flightdeck/core/native/capi.h"
# Benchmark hooks (`_native.bench_step`) are compiled only on request, never in a shipped build:
# FLIGHTDECK_BENCH_HOOKS=1 python setup.py build_ext --inplace (benchmarks/bench_native.py).
BENCH_MACROS = (
    [("FLIGHTDECK_BENCH_HOOKS", "1")] if os.environ.get("FLIGHTDECK_BENCH_HOOKS") == "1" else []
)
FLAGS = ["-O2", "-std=c11", "-Wall", "-Wno-missing-field-initializers"]
ext_modules = []
if not _no_extensions() and sys.platform != "win32" and sys.implementation.name == "cpython":
    ext_modules.append(
        Extension(
            "flightdeck.core._native",
            ["flightdeck/core/_native.c"],
            depends=[KINDS_H, *NATIVE_PARTS],
            define_macros=BENCH_MACROS,
            extra_compile_args=FLAGS,
        )
    )
    ext_modules.append(
        Extension(
            "flightdeck.asgi._casgi",
            ["flightdeck/asgi/_casgi.c"],
            depends=[KINDS_H, CLOCK_H, CAPI_H],
            extra_compile_args=FLAGS,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": optional_build_ext})
