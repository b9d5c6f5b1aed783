"""The snapshot directory: checked when configured, verified when listed, corrupt files
quarantined, manual captures evicted before automatic ones."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from endpoint_samples import make_document, make_snapshot

from flightdeck import FlightDeck
from flightdeck.snapshot.document import Snapshot, rfc3339
from flightdeck.snapshot.store import SUFFIX, SnapshotStore, encode

BASE = 1_764_121_800.0


def listed(store: SnapshotStore) -> list[str]:
    return [item["id"] for item in store.list()]


# -- item 6: the directory's own mode ------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o707, 0o1777, 0o720])
def test_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    for make in (
        lambda: SnapshotStore(directory=shared),
        lambda: FlightDeck(lambda *a: None, directory=str(shared), endpoint=None),
    ):
        with pytest.raises(ValueError, match="writable by group or others") as error:
            make()
        assert str(shared) in str(error.value)
        # A sticky directory (like /tmp) is shared on purpose: a private one inside it is
        # the advice, never a chmod that would break the machine.
        advice = "private subdirectory such as" if mode & 0o1000 else "chmod 700"
        assert advice in str(error.value)


def test_directory_from_environment_is_checked_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("FLIGHTDECK_DIR", str(shared))
    deck = FlightDeck(lambda *a: None, endpoint=None)  # refused and reported, never raised
    assert deck.store.directory is None
    assert "writable by group or others" in deck.status()["config_errors"][0]


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ValueError, match="symlink") as error:
        SnapshotStore(directory=link)
    assert str(real) in str(error.value)


def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another user")  # CI runs as root
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ValueError, match="owned by uid 65534"):
        SnapshotStore(directory=theirs)


def test_created_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SnapshotStore(directory=tmp_path / "new" / "snaps")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "snaps").stat().st_mode & 0o777 == 0o700  # at construction
    store.put(make_snapshot())
    assert not [p for p in (tmp_path / "new" / "snaps").iterdir() if p.stat().st_mode & 0o077]


def test_not_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        SnapshotStore(directory=tmp_path / "file")


# -- item 7: verify what is listed, quarantine what fails -------------------------------------


def _corrupt_body(snapshot: Snapshot) -> bytes:
    """A file with a valid header (summary included) whose compressed body is damaged."""
    data = bytearray(encode(snapshot)[0])
    middle = len(data) // 2
    data[middle : middle + 8] = b"\x00" * 8
    return bytes(data)


def test_corrupt_file_is_quarantined_not_latest_and_not_counted(tmp_path: Path) -> None:
    real = make_snapshot(created=BASE)
    store = SnapshotStore(max_snapshots=2, directory=tmp_path)
    store.put(real)
    # Created "in 2099" by its header: without verification it would be `latest` for good.
    doc = make_document(created=4_070_908_800.0)
    bad = Snapshot(doc)
    planted = tmp_path / f"{bad.id}{SUFFIX}"
    planted.write_bytes(_corrupt_body(bad))
    other = SnapshotStore(max_snapshots=2, directory=tmp_path)  # another worker
    assert listed(other) == [real.id]
    assert other.latest_id() == real.id
    assert other.get(bad.id) is None and other.get_bytes(bad.id, gzip=True) is None
    assert not planted.exists() and (tmp_path / f".corrupt-{bad.id}{SUFFIX}").is_file()
    assert other.stats()["quarantined"] == 1
    # The quota no longer counts it: a second real snapshot does not push out the first.
    second = make_snapshot(created=BASE + 1)
    other.put(second)
    assert listed(store) == [second.id, real.id]


def test_truncated_and_forged_date_files_are_quarantined(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path)
    truncated = make_snapshot(created=BASE)
    data = encode(truncated)[0]
    (tmp_path / f"{truncated.id}{SUFFIX}").write_bytes(data[: len(data) // 2] + data[-8:])
    # A valid file whose date disagrees with its id: it would sort first forever.
    forged = make_document(created=BASE)
    forged["created_at"] = rfc3339(4_070_908_800.0)
    forged_snapshot = Snapshot(forged)
    (tmp_path / f"{forged_snapshot.id}{SUFFIX}").write_bytes(encode(forged_snapshot)[0])
    # A file whose header names another id than its body.
    swapped = make_snapshot(created=BASE)
    body_of_other = encode(make_snapshot(created=BASE))[0]
    head = encode(swapped)[0]
    (tmp_path / f"{swapped.id}{SUFFIX}").write_bytes(_splice(head, body_of_other))
    good = make_snapshot(created=BASE + 2)
    store.put(good)
    assert listed(store) == [good.id]
    quarantined = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".corrupt-"))
    assert len(quarantined) == 3


def _splice(header_source: bytes, body_source: bytes) -> bytes:
    """The gzip header (with its summary) of one member on the body of another."""
    xlen_a = struct.unpack_from("<H", header_source, 10)[0]
    xlen_b = struct.unpack_from("<H", body_source, 10)[0]
    return header_source[: 12 + xlen_a] + body_source[12 + xlen_b :]


def test_valid_files_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(directory=tmp_path)
    for i in range(3):
        store.put(make_snapshot(created=BASE + i))
    calls = []
    real = zlib.decompressobj

    def counting(*args: int) -> object:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(zlib, "decompressobj", counting)
    fresh = SnapshotStore(directory=tmp_path)
    assert len(fresh.list()) == 3 and len(calls) == 3
    assert len(fresh.list()) == 3 and len(calls) == 3  # verified once per file


# -- item 4: manual captures go first ----------------------------------------------------------


@pytest.mark.parametrize("on_disk", [False, True])
def test_manual_captures_never_evict_automatic_ones(tmp_path: Path, on_disk: bool) -> None:
    store = SnapshotStore(max_snapshots=3, directory=tmp_path if on_disk else None)
    automatic = [make_snapshot(created=BASE + i, kind="loop_blocked") for i in range(2)]
    for snap in automatic:
        store.put(snap)
    manual = [make_snapshot(created=BASE + 10 + i, kind="manual") for i in range(30)]
    for snap in manual:
        store.put(snap)
    # The newest manual capture is kept; the others gave way to each other, not to the
    # automatic ones.
    assert listed(store) == [manual[-1].id, automatic[1].id, automatic[0].id]
    # A new automatic snapshot evicts the manual one first, then the oldest automatic.
    late = [make_snapshot(created=BASE + 50 + i, kind="exception") for i in range(2)]
    store.put(late[0])
    assert listed(store) == [late[0].id, automatic[1].id, automatic[0].id]
    store.put(late[1])
    assert listed(store) == [late[1].id, late[0].id, automatic[1].id]
