"""Every task step and loop entry of a document, indexed for "who held the loop then"."""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import Any

from .common import dicts, num, request_label, text
from .stacks import StackFolder


class LoopIndex:
    """All task steps and loop entries of a document, for "who held the loop then"."""

    def __init__(self, doc: dict[str, Any], folder: StackFolder) -> None:
        self.folder = folder
        self.tasks = {t.get("id"): t for t in dicts(doc.get("tasks"))}
        self.requests = {r.get("id"): r for r in dicts(doc.get("requests"))}
        self._steps: list[tuple[float, float, Any]] | None = None
        self._starts: list[float] = []
        self.entries = [
            e
            for e in dicts(doc.get("loop"))
            if e.get("kind") in ("block", "callback", "gc", "step")
        ]
        timed: dict[str, list[tuple[float, float, dict[str, Any]]]] = {}
        for e in self.entries:
            s, d = num(e.get("start")), num(e.get("duration"))
            if s is not None and d is not None:
                timed.setdefault(str(e.get("kind")), []).append((s, s + max(d, 0.0), e))
        self._by_kind: dict[str, Any] = {}
        for kind, items in timed.items():
            items.sort(key=lambda x: x[0])
            longest = max(x[1] - x[0] for x in items)
            self._by_kind[kind] = (
                [x[0] for x in items],
                [x[1] for x in items],
                [x[2] for x in items],
                longest,
            )

    @property
    def steps(self) -> list[tuple[float, float, Any]]:
        """Every task step as ``(start, end, task id)``, by start; made when first asked
        for (a window's steps are most of it, and many readings never ask)."""
        if self._steps is None:
            steps: list[tuple[float, float, Any]] = []
            append = steps.append
            for task in self.tasks.values():
                raw = task.get("steps")
                if not raw or not isinstance(raw, list):
                    continue
                tid = task.get("id")
                for step in raw:
                    if isinstance(step, (list, tuple)) and len(step) >= 2:
                        s, d = step[0], step[1]
                        # ``num`` of each, the finite floats the builder writes first
                        if not (type(s) is float and s - s == 0.0):
                            s = num(s)
                        if not (type(d) is float and d - d == 0.0):
                            d = num(d)
                        if s is not None and d is not None:
                            append((s, s + d, tid))
            steps.sort(key=itemgetter(0))
            self._starts = [s[0] for s in steps]
            self._steps = steps
        return self._steps

    @property
    def starts(self) -> list[float]:
        """The start of each of :attr:`steps`."""
        _ = self.steps
        return self._starts

    def steps_between(self, a: float, b: float) -> list[tuple[float, float, Any]]:
        """Steps overlapping ``[a, b]`` (steps never overlap: one loop thread)."""
        steps, starts = self.steps, self.starts
        i = max(0, bisect.bisect_left(starts, a) - 1)
        out = []
        while i < len(steps) and steps[i][0] < b:
            if steps[i][1] > a:
                out.append(steps[i])
            i += 1
        return out

    def entries_between(self, a: float, b: float, kind: str) -> list[dict[str, Any]]:
        """Loop entries of ``kind`` overlapping ``[a, b]``, by start."""
        by_kind = self._by_kind.get(kind)
        if by_kind is None:
            return []
        starts, ends, entries, longest = by_kind
        out = []
        # Entries starting before b; those starting before a - longest cannot reach a.
        i = bisect.bisect_left(starts, b) - 1
        while i >= 0 and starts[i] > a - longest:
            if ends[i] > a:
                out.append(entries[i])
            i -= 1
        out.reverse()
        return out

    def step_label(self, s: float, e: float, tid: Any) -> str:
        """``t9 render_pdf (reports.py:88) in GET /pdf``: the task and what it ran."""
        task = self.tasks.get(tid, {})
        what = text(task.get("coro")) or text(task.get("name")) or "task"
        site = None
        for block in self.entries_between(s, e, "block"):
            if not dicts(block.get("stack")):
                continue
            site = self.folder.site(block.get("stack"))
            break
        if site is None:
            # The watchdog's sample, taken while it ran, names the function best.
            for entry in self.entries_between(s, e, "callback"):
                name = text(entry.get("callback"))
                site = name.split(": ", 1)[-1] if ": " in name else None
                break
        if site is None:
            # Else where the task stood when the step ended.
            for entry in self.entries_between(s, e, "step"):
                if (tid is None or entry.get("task") == tid) and dicts(entry.get("stack")):
                    site = self.folder.site(entry.get("stack"))
                    break
        if tid is None:
            return site or "?"
        label = f"{text(tid)} {what}" + (f" at {site}" if site and site != what else "")
        req = self.requests.get(task.get("request"))
        return label + (f" in {request_label(req)}" if req else "")
