"""Read a stored snapshot in any of its forms, and convert it to one export format.

The one loader of the CLI (``summary``, ``export``, ``list``, ``pull``) and the converter
the debug endpoint runs in a child process (``python -m flightdeck convert``), so that no
view of a snapshot is ever built in the app's process. A stored snapshot comes in three
forms, told apart by their first bytes:

- the binary container of ``flightdeck.snapshot.container`` (the stored form, when that
  module is present);
- gzip'd ``flightdeck/1`` JSON (what earlier versions stored, with or without the summary
  in the gzip header);
- plain ``flightdeck/1`` JSON (``Snapshot.write``, ``flightdeck pull``).

Untrusted bytes are safe here: decompression is bounded, JSON is parsed by orjson, the
container by its own checked reader, and the document's envelope is validated.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any, BinaryIO

import orjson

from . import export  # noqa: F401  (registers the export formats)
from .fetch import DEFAULT_MAX_SIZE, FetchError, decompress, read_bytes
from .snapshot.codec import clean, parse_header
from .snapshot.document import (
    FORMATS,
    Snapshot,
    SnapshotError,
    export_format,
    sanitize,
    validate_document,
)

CONTAINER = "container"
GZIP_JSON = "gzip"
JSON = "json"

#: Bytes the child writes at a time (the endpoint streams them as they come).
CHUNK = 1 << 16
#: The compression level of ``convert --gzip`` (the endpoint's cached JSON view): the
#: fastest, since the stored snapshot is the small form and this is a cache of a view.
GZIP_LEVEL = 1
#: ``convert --gzip`` deflates this many blocks of ``GZIP_BLOCK`` bytes at once.
GZIP_THREADS = 2
GZIP_BLOCK = 1 << 20
_WINDOW = 1 << 15
#: Tests only: makes the converter child misbehave (``fail``: exit with status 3 before
#: writing; ``die``: the same after its first chunk; ``stall``: hang after its first chunk),
#: so the endpoint's handling of a child that fails or overruns can be exercised on a real
#: server.
FAULT_ENV = "FLIGHTDECK_CONVERT_FAULT"
_CONTAINER_SUFFIX = ".fdsnap"


def _container() -> ModuleType | None:
    """The binary container's module, or None in a build that has no container yet."""
    try:
        return importlib.import_module("flightdeck.snapshot.container")
    except ImportError:
        return None


def form_of(data: bytes) -> str | None:
    """``"container"``, ``"gzip"`` or ``"json"`` by the first bytes; None for anything else."""
    module = _container()
    if module is not None and module.is_container(data):
        return CONTAINER
    if data[:2] == b"\x1f\x8b":
        return GZIP_JSON
    if data.lstrip()[:1] == b"{":
        return JSON
    return None


def raw_suffix(data: bytes) -> str:
    """The file name suffix of stored bytes in their own form (``flightdeck pull --format raw``)."""
    form = form_of(data)
    if form == GZIP_JSON:
        return ".json.gz"
    if form == JSON:
        return ".json"
    module = _container()
    suffix = getattr(module, "SUFFIX", None) if module is not None else None
    return suffix if isinstance(suffix, str) else _CONTAINER_SUFFIX


def read_document(data: bytes, where: str, max_size: int = DEFAULT_MAX_SIZE) -> dict[str, Any]:
    """The validated ``flightdeck/1`` document of a stored snapshot in any form.

    Raises :class:`SnapshotError` naming ``where`` and the reason.
    """
    form = form_of(data)
    doc: object
    if form == CONTAINER:
        module = _container()
        assert module is not None
        try:
            doc = module.read_document(data)
        except SnapshotError as exc:
            raise SnapshotError(str(exc).replace("data: ", f"{where}: ", 1)) from None
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise SnapshotError(f"{where}: corrupt snapshot container ({exc})") from None
    elif form in (GZIP_JSON, JSON):
        try:
            text = decompress(data, max_size, where)
        except FetchError as exc:
            raise SnapshotError(str(exc)) from None
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SnapshotError(f"{where}: not JSON, or truncated ({exc})") from None
    else:
        raise SnapshotError(
            f"{where}: not a flightdeck snapshot (neither a snapshot container nor JSON)"
        )
    validate_document(doc, where)
    assert isinstance(doc, dict)
    return doc


def load(data: bytes, where: str, max_size: int = DEFAULT_MAX_SIZE) -> Snapshot:
    """:func:`read_document` as a :class:`Snapshot`."""
    return Snapshot(read_document(data, where, max_size))


def load_path(path: str, max_size: int = DEFAULT_MAX_SIZE) -> Snapshot:
    """The snapshot stored in file ``path``; :class:`SnapshotError` naming it otherwise."""
    try:
        data = read_bytes(path, max_size)
    except FetchError as exc:
        raise SnapshotError(str(exc)) from None
    return load(data, path, max_size)


def read_header(data: bytes, where: str, max_size: int = DEFAULT_MAX_SIZE) -> dict[str, Any]:
    """What a listing shows of a stored snapshot: ``{id, created_at, trigger: {kind,
    reason}, request, pid, size, service, incident}``.

    From the header alone where the form has one (the container, the gzip'd JSON that the
    store wrote); an older file without one is read whole.
    """
    form = form_of(data)
    if form == CONTAINER:
        module = _container()
        assert module is not None
        try:
            header = module.read_header(data)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise SnapshotError(f"{where}: corrupt snapshot container ({exc})") from None
        summary = clean(header, len(data))
        if summary is None:
            raise SnapshotError(f"{where}: corrupt snapshot container (no id in its header)")
    elif form == GZIP_JSON and (parsed := parse_header(data[:65600])) is not None:
        summary = parsed[0]
    else:
        doc = read_document(data, where, max_size)
        summary = clean(doc, len(Snapshot(doc).dumps("json")))
        assert summary is not None  # the document was validated
    summary.pop("trace_ids", None)
    return summary


def chunks(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def _deflate(block: bytes, zdict: bytes, last: bool, level: int) -> bytes:
    """One block of a gzip member's deflate stream: primed with the 32 KiB before it (so
    it compresses as well as one stream would) and ended on a byte boundary (a sync flush),
    or as the stream's final block."""
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(block) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _blocks(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """``pieces`` regrouped into blocks of at least ``size`` bytes (the last may be less)."""
    held: list[bytes] = []
    n = 0
    for piece in pieces:
        held.append(piece)
        n += len(piece)
        if n >= size:
            yield b"".join(held)
            held, n = [], 0
    if held:
        yield b"".join(held)


def gzipped(pieces: Iterator[bytes], level: int = GZIP_LEVEL) -> Iterator[bytes]:
    """``pieces`` as one gzip member, compressed as they come, ``GZIP_THREADS`` blocks at a
    time (zlib lets go of the GIL while it deflates: the way pigz splits one stream)."""
    # The gzip header: deflate, no name, no time, "unknown" system (RFC 1952).
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    crc = 0
    size = 0
    pool = None
    if GZIP_THREADS > 1:
        try:
            pool = ThreadPoolExecutor(GZIP_THREADS, thread_name_prefix="flightdeck-gzip")
        except RuntimeError:  # no thread to be had: one block at a time
            pool = None
    try:
        running: deque[Future[bytes]] = deque()
        tail = b""
        prev: bytes | None = None

        def submit(block: bytes, last: bool) -> Iterator[bytes]:
            nonlocal tail
            zdict = tail
            tail = (tail + block)[-_WINDOW:] if len(block) < _WINDOW else block[-_WINDOW:]
            if pool is None:
                yield _deflate(block, zdict, last, level)
                return
            running.append(pool.submit(_deflate, block, zdict, last, level))
            while running and (last or len(running) > GZIP_THREADS):
                yield running.popleft().result()

        for block in _blocks(pieces, GZIP_BLOCK):
            crc = zlib.crc32(block, crc)
            size += len(block)
            if prev is not None:
                yield from submit(prev, False)
            prev = block
        yield from submit(prev if prev is not None else b"", True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    yield struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def convert(
    data: bytes,
    format: str,
    out: BinaryIO,
    *,
    gzip: bool = False,
    where: str = "input",
    keep: list[object] | None = None,
) -> int:
    """Write stored snapshot ``data`` as ``format`` to ``out``; returns the bytes written.

    ``raw`` copies ``data`` unchanged; ``gzip`` compresses the output as one gzip member.
    ``keep``: the document is appended to it, so that it outlives the call (a process
    about to exit need not spend a tenth of a second freeing millions of objects).
    Raises :class:`SnapshotError` when ``data`` is not a readable snapshot.
    """
    fmt = export_format(format)
    fault = os.environ.get(FAULT_ENV, "")
    if fault == "fail":
        raise SnapshotError(f"{where}: failing as {FAULT_ENV} asks")
    # The document is millions of objects that all live until it is written: the cyclic
    # GC's passes over them would only cost (read_document says the same).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        pieces: Iterator[bytes]
        if fmt.convert is None:
            pieces = chunks(data)
        elif fmt.name == "json":
            # Written as it is made, so that its compression (in threads) overlaps it.
            doc = read_document(data, where)
            if keep is not None:
                keep.append(doc)
            pieces = json_pieces(doc)
            del doc
        else:
            snap = load(data, where)
            if keep is not None:
                keep.append(snap)
            pieces = chunks(snap.dumps(fmt.name))
            del snap
        if gzip:
            pieces = gzipped(pieces)
        written = 0
        for piece in pieces:
            if not piece:
                continue
            out.write(piece)
            out.flush()
            written += len(piece)
            if fault == "die":
                os._exit(3)
            if fault == "stall":
                while True:
                    time.sleep(3600)
        return written
    finally:
        if gc_was_enabled:
            gc.enable()


#: Items of a long list of the document (tasks, requests, loop entries, events) written
#: per piece of ``json_pieces``.
JSON_SLICE = 2048


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # Lone surrogates (undecodable bytes) somewhere: made valid text, as
        # ``Snapshot.dumps`` does for the whole document (item by item, the same bytes).
        return orjson.dumps(sanitize(value), option=orjson.OPT_NON_STR_KEYS)


def json_pieces(doc: dict[str, Any]) -> Iterator[bytes]:
    """``Snapshot(doc).dumps("json")`` in pieces: the same bytes, never all at once.

    orjson's compact list is its items' JSON joined by commas, so slices of a long list
    give the same bytes as the list.
    """
    yield b"{"
    first = True
    for key, value in doc.items():
        yield (b"" if first else b",") + _json(key) + b":"
        first = False
        if isinstance(value, list) and len(value) > JSON_SLICE:
            yield b"["
            for i in range(0, len(value), JSON_SLICE):
                yield (b"," if i else b"") + _json(value[i : i + JSON_SLICE])[1:-1]
            yield b"]"
        else:
            yield _json(value)
    yield b"}"


def limit_memory(limit: int) -> None:
    """Cap this process's address space at ``limit`` bytes (where the platform can)."""
    try:
        import resource
    except ImportError:  # not on this platform: the deadline still bounds the child
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def lower_priority() -> None:
    """Run at the lowest CPU priority (nice 19): a converter the endpoint starts shares the
    app's cores, and takes only what the app leaves (where the platform has priorities)."""
    nice = getattr(os, "nice", None)
    if nice is None:
        return
    try:
        nice(19)  # relative, capped at the maximum: 19 lands there from any start
    except OSError:
        pass  # not permitted here: converting at the app's priority still works


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``flightdeck convert``."""
    p.add_argument("input", metavar="INPUT", help="a stored snapshot in any form, or '-' for stdin")
    p.add_argument("--format", "-f", required=True, choices=list(FORMATS), help="the view to write")
    p.add_argument("-o", "--output", metavar="OUT", default="-", help="output path ('-': stdout)")
    p.add_argument("--gzip", action="store_true", help="compress the output (one gzip member)")
    p.add_argument(
        "--memory",
        type=int,
        metavar="BYTES",
        help="cap this process's address space (RLIMIT_AS) before reading",
    )
    p.add_argument(
        "--background",
        action="store_true",
        help="run at the lowest CPU priority (what the endpoint's converter does)",
    )


def run(args: argparse.Namespace) -> int:
    """``flightdeck convert``: one line on stderr and status 2 on failure."""
    if args.memory:
        limit_memory(args.memory)
    if args.background:
        lower_priority()
    where = "stdin" if args.input == "-" else args.input
    keep = getattr(args, "keep", None)
    try:
        if args.input == "-":
            data = sys.stdin.buffer.read()
        else:
            data = read_bytes(args.input, DEFAULT_MAX_SIZE)
        if args.output == "-":
            convert(data, args.format, sys.stdout.buffer, gzip=args.gzip, where=where, keep=keep)
        else:
            with open(args.output, "wb") as handle:
                convert(data, args.format, handle, gzip=args.gzip, where=where, keep=keep)
    except (SnapshotError, FetchError) as exc:
        print(f"flightdeck: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"flightdeck: error: {where}: out of memory converting", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"flightdeck: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    return 0
