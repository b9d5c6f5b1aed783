"""Readable stacks: the user's frames shown, library frames folded into one line.

Library code is told by path, from the prefixes the snapshot itself records
(``process.paths``), so a summary read on another machine folds the same frames as on the
one that recorded it. The app's own top-level module is never folded, even when it is
installed into site-packages. Snapshots without ``process.paths`` fall back to the usual
layout (``site-packages``, ``dist-packages``, ``lib/pythonX.Y``).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from .common import dicts, frame_text, section, text

_STDLIB_GUESS = re.compile(r"[/\\]lib[/\\]python3\.[0-9]+[/\\]")


def _norm(path: str) -> str:
    return path.replace("\\", "/").rstrip("/") + "/"


class StackFolder:
    """Decides which frames are library frames and renders stacks with them folded."""

    def __init__(self, doc: dict[str, Any]) -> None:
        paths = section(section(doc, "process"), "paths")
        self.known = bool(paths)
        stdlib = paths.get("stdlib")
        self.stdlib = _norm(stdlib) if isinstance(stdlib, str) and stdlib else None
        site = paths.get("site_packages")
        self.site_dirs = (
            [_norm(p) for p in site if isinstance(p, str) and p] if isinstance(site, list) else []
        )
        app = paths.get("app")
        self.app = app if isinstance(app, str) and app else None

    def is_library(self, frame: object) -> bool:
        """True for stdlib, site-packages and interpreter (``<frozen ...>``) frames."""
        if not isinstance(frame, dict):
            return False
        file = text(frame.get("file")).replace("\\", "/")
        if not file or file.startswith("<"):
            return bool(file)
        for prefix in self.site_dirs if self.known else ():
            if file.startswith(prefix):
                return not self._is_app(file[len(prefix) :])
        if "/" in file and not file.startswith("/") and ":" not in file[:3]:
            # A relative path (frozen or zipped code): the stdlib's by its package name.
            return file.split("/", 1)[0] in sys.stdlib_module_names
        if not self.known:
            for marker in ("/site-packages/", "/dist-packages/"):
                if marker in file:
                    return not self._is_app(file.split(marker, 1)[1])
            return _STDLIB_GUESS.search(file) is not None
        return self.stdlib is not None and file.startswith(self.stdlib)

    def _is_app(self, relative: str) -> bool:
        if self.app is None:
            return False
        head = relative.split("/", 1)[0]
        return head == self.app or head == f"{self.app}.py"

    def user_frame(self, stack: object) -> dict[str, Any] | None:
        """The innermost frame that is not library code (None when there is none)."""
        frames: list[dict[str, Any]] = dicts(stack)
        for i in range(len(frames) - 1, -1, -1):
            if not self.is_library(frames[i]):
                return frames[i]
        return None

    def lines(self, stack: object, *, full: bool = False) -> list[str]:
        """One line per frame, innermost last; runs of library frames folded unless ``full``."""
        out: list[str] = []
        run = 0
        for frame in dicts(stack):
            if not full and self.is_library(frame):
                run += 1
                continue
            if run:
                out.append(_folded(run))
                run = 0
            out.append(frame_text(frame))
        if run:
            out.append(_folded(run))
        return out

    def site(self, stack: object) -> str:
        """``function (file.py:12)`` of the innermost user frame, else of the innermost frame."""
        frames = dicts(stack)
        frame = self.user_frame(frames) or (frames[-1] if frames else None)
        if frame is None:
            return "?"
        return short_site(frame)


def short_site(frame: dict[str, Any]) -> str:
    """``function (file.py:12)``."""
    file = text(frame.get("file")).replace("\\", "/").rsplit("/", 1)[-1] or "?"
    line = frame.get("line")
    where = f"{file}:{line}" if isinstance(line, int) and not isinstance(line, bool) else file
    fn = text(frame.get("function"))
    return f"{fn} ({where})" if fn else where


def _folded(n: int) -> str:
    return f"... {n} library frame{'s' if n != 1 else ''} (--full shows them)"
