"""The native window's growth for the window file (``Window._file_delta``): each byte of a
generation handed over once, and a generation's deltas joined giving its stored form."""

from __future__ import annotations

import pytest

from flightdeck.core.events import MARK, TASK_CREATE
from flightdeck.snapshot import recovery
from flightdeck.snapshot.records import read_varints

# A pure install has no extension to test; FLIGHTDECK_EXPECT_NATIVE=1 fails this skip.
native = pytest.importorskip("flightdeck.core._native", reason="native core not built")

S = 1_000_000_000
T0 = 1_000_000 * S


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def _joined(deltas: list[bytes]) -> dict[int, bytes]:
    """Each generation's stored form (``Segment.dump()``) from its deltas, by serial."""
    gens: dict[int, recovery._Gen] = {}
    for body in deltas:
        fields, pos = read_varints(body, 0, 11)
        gens.setdefault(fields[0], recovery._Gen()).add(
            fields, body[pos : pos + fields[8]], body[pos + fields[8] :]
        )
    assert all(gen.whole for gen in gens.values())
    return {serial: gen.dump() for serial, gen in gens.items()}


def test_deltas_joined_are_each_generations_stored_form() -> None:
    clock = FakeClock()
    w = native.Window(60 * S, 128 << 10, clock=clock, generations=4)
    progress = (0, 0, 0)
    deltas: list[bytes] = []
    for i in range(3000):
        clock.now += 1000
        if i % 50 == 0:
            w.append((TASK_CREATE, clock.now, i, None, f"name{i % 7}", "coro", None, None))
        w.append((MARK, clock.now, "mark", f"label-{i % 13}" if i % 3 else "x" * (i % 40)))
        if i % 97 == 0:
            got = w._file_delta(*progress)
            assert got is not None
            _oldest, more, progress = got
            deltas += more
    got = w._file_delta(*progress)
    assert got is not None
    oldest, more, progress = got
    deltas += more
    assert w._file_delta(*progress) == (oldest, [], progress)  # nothing new: nothing
    segments = w._freeze_parts()[0]
    assert oldest == segments[0].serial
    joined = _joined(deltas)
    held = {seg.serial: seg.dump() for seg in segments}
    assert len(held) >= 2 and progress[0] == max(held)  # sealed ones and the open one
    assert all(joined[serial] == dump for serial, dump in held.items())


def test_a_file_behind_by_whole_generations_gets_them_whole() -> None:
    clock = FakeClock()
    w = native.Window(60 * S, 64 << 10, clock=clock, generations=4)
    for i in range(4000):
        clock.now += 1000
        w.append((MARK, clock.now, "mark", f"m{i}"))
    got = w._file_delta(0, 0, 0)
    assert got is not None
    oldest, deltas, progress = got
    joined = _joined(deltas)
    assert min(joined) == oldest and max(joined) == progress[0] and len(joined) == len(deltas)
    # A progress past what the generation holds (never given by the window) is taken as
    # nothing held: the generation whole again.
    got = w._file_delta(progress[0], progress[1] + 10, progress[2])
    assert got is not None and len(got[1]) == 1
    assert _joined(got[1])[progress[0]] == joined[progress[0]]
