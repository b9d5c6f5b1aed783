"""Compact steps (``snapshot/steps.py``) give the very floats computed from the events."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from flightdeck.core import events as ev
from flightdeck.snapshot import steps as steps_mod
from flightdeck.snapshot.build import _Builder, plain_steps

OFFSET = 1_764_500_000_123_456_789 - 9_000_000_000_000


def expected(events: list[tuple[Any, ...]], created: int | None) -> list[tuple[Any, ...]]:
    """The builder's former arithmetic, per step, straight from the events."""
    out = []
    prev = created
    for _, t0, t1, _, tq in events:
        if tq:
            ready = (t0 - tq) / 1e9 if t0 > tq else 0.0
            waited = ((tq - prev) / 1e9 if tq > prev else 0.0) if prev is not None else None
        else:
            waited = ready = None
        out.append(((t0 + OFFSET) / 1e9, (t1 - t0) / 1e9, waited, ready))
        prev = t1
    return out


def _steps(rng: random.Random, raw: int, n: int, t: int) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(n):
        roll = rng.random()
        # Gaps and durations past 32 bits (a long sleep, a blocked loop) widen the run.
        gap = rng.randrange(3_000_000_000, 9_000_000_000) if roll < 0.01 else rng.randrange(10**6)
        dur = rng.randrange(3_000_000_000, 5_000_000_000) if roll > 0.995 else rng.randrange(10**5)
        t0 = t + gap
        t1 = t0 + dur
        queued = rng.random()
        if queued < 0.03:
            tq = 0  # recorded without a queue time
        elif queued < 0.05:
            tq = t0 + rng.randrange(1, 1000)  # queued "after" it started: clamped to 0
        else:
            tq = t0 - rng.randrange(0, 2 * gap + 2)  # before or after the previous end
        out.append((ev.TASK_STEP, t0, t1, raw, tq))
        t = t1
    return out


def _typecodes(steps: steps_mod.Steps) -> set[str]:
    """The typecodes of a task's packed runs and open run."""
    found = {steps.data.typecode}
    packed = steps.packed or bytearray()
    at = 0
    while at < len(packed):
        code, n, n_high = steps_mod._RUN.unpack_from(packed, at)
        found.add(code.decode())
        at += steps_mod._RUN.size + n * (4 if code == b"i" else 8) // 2 + n_high
    return found


@pytest.mark.parametrize("seed", range(6))
def test_rows_equal_the_arithmetic_on_the_events(seed: int) -> None:
    rng = random.Random(seed)
    base = 9_000_000_000_000
    b = _Builder(OFFSET)
    expect: dict[int, list[tuple[Any, ...]]] = {}
    stream: list[tuple[Any, ...]] = []
    for k in range(8):
        raw = 0x7F0000001000 + 16 * k
        created = k % 2 == 0  # half of them created in the window, half already running
        if created:
            stream.append((ev.TASK_CREATE, base, raw, f"t{k}", "coro", None, None, None))
        steps = _steps(rng, raw, rng.choice([0, 1, 5, 300, 2000]), base + 1000)
        expect[raw] = expected(steps, base if created else None)
        stream += steps
    # Interleave the tasks' steps by time, as a window holds them, and feed in segments
    # of many sizes so that runs are packed at many points.
    creates = [e for e in stream if e[0] == ev.TASK_CREATE]
    rest = sorted((e for e in stream if e[0] == ev.TASK_STEP), key=lambda e: e[1])
    stream = creates + rest
    i = 0
    while i < len(stream):
        n = rng.choice([1, 7, 300, 900, 4000])
        b.feed(stream[i : i + n])
        b.pack()
        i += n
    packed = 0
    wide = 0
    for raw, want in expect.items():
        if raw not in b.uid:
            assert not want  # never created nor stepped: not in the document
            continue
        task = b.tasks[b.uid[raw]]
        steps = task["steps"]
        packed += bool(steps.packed)
        wide += "q" in _typecodes(steps)
        got = plain_steps(steps)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g == w or all(
                x == y or (x is None and y is None) or (math.isnan(x) and math.isnan(y))
                for x, y in zip(g, w, strict=True)
            ), (g, w)
    assert packed, "no run was packed: the test would not cover unpacking"
    assert wide, "no run was widened to 64 bits"


def test_packed_runs_are_smaller_than_32_bit_ints() -> None:
    rng = random.Random(1)
    s = steps_mod.Steps(0, 0)
    for _ in range(20_000):
        s.add((rng.randrange(900_000, 1_200_000), rng.randrange(50_000), rng.randrange(9000)))
        if len(s.data) >= 3 * steps_mod.PACK_STEPS:
            s.pack(steps_mod.packer())
    held = len(s.packed or b"") + len(s.data) * 4
    assert len(s) == 20_000
    assert held < 8 * len(s)  # 12 bytes a step unpacked, 32 as four doubles
