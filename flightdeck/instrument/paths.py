"""Where library code lives, recorded in each snapshot (``process.paths``).

A reader folds library frames by these prefixes, so a summary read on another machine folds
the same frames as on the one that recorded them. ``app`` names the application's top-level
module so that its frames are never folded, even when it is installed into site-packages.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
import types
from typing import Any

#: Modules that sit between the app and flightdeck when it is constructed: never "the app".
_NOT_APP = frozenset(
    {
        "flightdeck",
        "starlette",
        "fastapi",
        "uvicorn",
        "gunicorn",
        "hypercorn",
        "anyio",
        "asyncio",
        "click",
        "uvloop",
        "httpx",
        "pytest",
        "_pytest",
        "pluggy",
        "importlib",
        "runpy",
        "contextlib",
        "functools",
        "threading",
        "concurrent",
    }
)


def _site_packages() -> list[str]:
    dirs: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path and path not in dirs:
            dirs.append(path)
    try:
        extra = [*site.getsitepackages(), site.getusersitepackages()]
    except Exception:  # some embedded interpreters lack them
        extra = []
    for path in extra:
        if path and path not in dirs:
            dirs.append(path)
    # Anything on sys.path named site-packages or dist-packages (venvs, Debian).
    for path in sys.path:
        base = os.path.basename(path.rstrip(os.sep))
        if base in ("site-packages", "dist-packages") and path not in dirs:
            dirs.append(path)
    return dirs


def app_module(frame: types.FrameType | None) -> str | None:
    """The top-level module of the first caller outside flightdeck and the frameworks."""
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if isinstance(name, str):
            top = name.partition(".")[0]
            if top == "__main__":
                spec = frame.f_globals.get("__spec__")
                spec_name = getattr(spec, "name", None)
                if isinstance(spec_name, str):
                    top = spec_name.partition(".")[0]
                else:
                    file = frame.f_code.co_filename
                    top = os.path.splitext(os.path.basename(file))[0]
            if top and top not in _NOT_APP and top not in sys.stdlib_module_names:
                return top
        frame = frame.f_back
    return None


@functools.cache
def library_paths() -> tuple[str | None, tuple[str, ...]]:
    """The standard library's directory and the site-packages ones: fixed for the life of
    the interpreter, so found once. Finding them stats directories, and each system call
    lets go of the GIL: on a thread racing a busy event loop for it, a few hundred of those
    took seconds (a capture calls :func:`process_paths`; the recorder finds these at start)."""
    return sysconfig.get_paths().get("stdlib"), tuple(_site_packages())


def process_paths(app: str | None = None) -> dict[str, Any]:
    """``{stdlib, site_packages, cwd, app}`` for this process."""
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the working directory was removed
        cwd = None
    stdlib, site_packages = library_paths()
    return {
        "stdlib": stdlib,
        "site_packages": list(site_packages),
        "cwd": cwd,
        "app": app,
    }
