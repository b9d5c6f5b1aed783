"""The converter's JSON in pieces and its threaded gzip give the bytes of the whole.

``convert`` writes a document's JSON as it is made (``json_pieces``), so that its
compression, a few blocks at a time in threads (``gzipped``), overlaps it: the pieces must
join to exactly ``Snapshot.dumps("json")``, lone surrogates included, and the gzip member
must decompress to exactly its input, whatever the block boundaries and with or without
threads.
"""

from __future__ import annotations

import gzip
import io
import random
import zlib
from typing import Any

import pytest

from flightdeck import convert
from flightdeck.snapshot.document import Snapshot, new_id


def _doc(tasks: int) -> dict[str, Any]:
    rng = random.Random(tasks)
    return {
        "format": "flightdeck/1",
        "id": new_id(),
        "created_at": "2026-12-04T18:00:00.000Z",
        "trigger": {"kind": "manual", "reason": "r\udc80", "request": None},
        "process": {"pid": 1},
        "window": {"start": 1.5, "end": 2.5, "dropped": 0, "events": tasks},
        "requests": [{"id": i, "path": f"/p{i}"} for i in range(3)],
        "tasks": [
            {
                "id": f"t{i}",
                "name": "bad \udcff" if i == 4097 else f"Task-{i}",
                "steps": [(rng.random() * 1e9, rng.random() / 1e3, None, 1e-7)],
                "waits": [],
            }
            for i in range(tasks)
        ],
        "loop": [],
        "events": [{"kind": "log", "start": 1.0, "message": "é"}] * (convert.JSON_SLICE + 1),
    }


@pytest.mark.parametrize("tasks", [0, 1, convert.JSON_SLICE, 2 * convert.JSON_SLICE + 3])
def test_json_pieces_join_to_the_whole_documents_json(tasks: int) -> None:
    doc = _doc(tasks)
    pieces = list(convert.json_pieces(doc))
    assert b"".join(pieces) == Snapshot(doc).dumps("json")
    if tasks > convert.JSON_SLICE:
        assert max(len(p) for p in pieces) < len(b"".join(pieces)) // 2


def _gunzip_stream(data: bytes) -> bytes:
    """Decompress as a browser does: one member, incrementally, checking its trailer."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = b"".join(d.decompress(data[i : i + 4096]) for i in range(0, len(data), 4096))
    out += d.flush()
    assert d.eof and not d.unused_data  # exactly one gzip member
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [0, 1, 1000, (1 << 15) + 7, 3 * (1 << 16) + 11])
def test_gzipped_is_one_member_of_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, threads: int, size: int
) -> None:
    monkeypatch.setattr(convert, "GZIP_THREADS", threads)
    monkeypatch.setattr(convert, "GZIP_BLOCK", 1 << 16)  # many blocks, small test
    rng = random.Random(size)
    data = bytes(rng.randrange(256) for _ in range(size // 3)) + b"flightdeck " * (size // 15)
    pieces = [data[i : i + 777] for i in range(0, len(data), 777)]
    out = b"".join(convert.gzipped(iter(pieces)))
    assert gzip.decompress(out) == data
    assert _gunzip_stream(out) == data
    if len(data) > 4 * (1 << 16):
        # Each block primed with the one before: about as small as one stream.
        assert len(out) <= len(zlib.compress(data, convert.GZIP_LEVEL)) * 1.05 + 64


def test_convert_streams_json_identical_to_the_documents(tmp_path: Any) -> None:
    doc = _doc(2 * convert.JSON_SLICE + 5)
    data = Snapshot(doc).dumps("json")
    out = io.BytesIO()
    written = convert.convert(data, "json", out, gzip=True, where="x")
    assert written == len(out.getvalue())
    assert gzip.decompress(out.getvalue()) == data
    plain = io.BytesIO()
    convert.convert(data, "json", plain, where="x")
    assert plain.getvalue() == data
