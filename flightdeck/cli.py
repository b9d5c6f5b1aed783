"""The ``flightdeck`` command: read, convert and download snapshots.

Only the standard library is used here (plus the exporters), so the CLI works on a
laptop that has flightdeck installed but not the service's dependencies.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import NoReturn

from . import convert
from .core.config import parse_bytes, parse_seconds
from .fetch import (
    DEFAULT_MAX_SIZE,
    FetchError,
    HTTPStatusError,
    fetch,
    read_bytes,
)
from .snapshot.document import FORMATS, Snapshot, SnapshotError, export_format, is_valid_id

__all__ = ["main"]

PROG = "flightdeck"

DESCRIPTION = """\
Read, convert and download flightdeck snapshots (flight-recorder windows of an asyncio
web service). A SNAPSHOT is a file as the store keeps it (a snapshot directory's files,
`flightdeck pull --format raw`) or native flightdeck/1 JSON, optionally gzipped (the
recorder's `Snapshot.write`, `flightdeck pull`, earlier versions' snapshot directories)."""

EPILOG = """\
examples:
  flightdeck pull http://127.0.0.1:8000/debug/flight --token "$FLIGHTDECK_TOKEN"
  flightdeck summary 20261126T015000Z-1234-a1b2c3d4.json
  flightdeck export snap.json --format html          # writes snap.html; open it in a browser
  flightdeck export snap.json --format perfetto      # open in https://ui.perfetto.dev
"""


class CLIError(Exception):
    """A failure to report as one line and exit status 2."""


def _fail(message: str) -> NoReturn:
    raise CLIError(message)


def _load(path: str, max_size: int = DEFAULT_MAX_SIZE) -> Snapshot:
    try:
        return convert.load_path(path, max_size)
    except SnapshotError as exc:
        _fail(str(exc))


def _converted() -> list[str]:
    """The formats made from a document (``raw`` is a download, not a conversion)."""
    return [name for name, fmt in FORMATS.items() if fmt.convert is not None]


def _write(out: str, data: bytes) -> None:
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(out).write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)


def _default_out(snapshot_path: str, suffix: str) -> str:
    p = Path(snapshot_path)
    name = p.name
    for ext in (".gz", ".json", convert.raw_suffix(b"")):
        name = name.removesuffix(ext)
    return str(p.with_name(name + suffix))


def cmd_summary(args: argparse.Namespace) -> int:
    from .export.summary import UnknownRequest, summarize

    # A whole window's document is millions of objects that live until the summary is
    # written: the cyclic GC's passes over them would find nothing to free.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        snap = _load(args.snapshot, args.max_size)
        keep = getattr(args, "keep", None)
        if keep is not None:
            keep.append(snap)
        try:
            text = summarize(snap.to_dict(), request=args.request, full=args.full)
        except UnknownRequest as exc:
            _fail(f"{args.snapshot}: {exc}")
        sys.stdout.write(text)
    finally:
        if gc_was_enabled:
            gc.enable()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    snap = _load(args.snapshot, args.max_size)
    data = snap.dumps(args.format)
    out = args.output or _default_out(args.snapshot, export_format(args.format).suffix)
    _write(out, data)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """One line per snapshot in the given directories and files, newest first; or, given
    one endpoint URL, a running service's snapshots and what it did not capture."""
    if len(args.paths) == 1 and args.paths[0].startswith(("http://", "https://")):
        args.url = args.paths[0]
        return _list_url(args)
    found: list[dict[str, object]] = []
    for given in args.paths:
        where = Path(given)
        files = sorted(p for p in where.iterdir() if p.is_file()) if where.is_dir() else [where]
        for path in files:
            if where.is_dir() and path.name.startswith("."):
                continue  # the store's temporary, quarantined and cached files
            try:
                data = read_bytes(str(path), args.max_size)
                header = convert.read_header(data, str(path), args.max_size)
            except (FetchError, SnapshotError) as exc:
                if not where.is_dir():
                    _fail(str(exc))
                continue  # not a snapshot: a directory may hold other files
            header["path"] = str(path)
            found.append(header)
    found.sort(key=lambda h: (str(h.get("created_at")), str(h.get("id"))), reverse=True)
    if args.json:
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return 0
    for header in found:
        trigger = header.get("trigger") or {}
        assert isinstance(trigger, dict)
        request = header.get("request")
        what = ""
        if isinstance(request, dict):
            what = f" {request.get('method')} {request.get('path')} -> {request.get('status')}"
        extra = "".join(
            f" {key}={header[key]}" for key in ("service", "incident") if header.get(key)
        )
        processes = header.get("processes")
        if isinstance(processes, list) and len(processes) > 1:  # a host capture's pids
            extra += " processes=" + ",".join(str(pid) for pid in processes)
        print(
            f"{header['id']}  {header.get('created_at')}  pid={header.get('pid')}"
            f"  {trigger.get('kind')}: {trigger.get('reason')}{what}{extra}  {header['path']}"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    return convert.run(args)


def _snapshot_url(base: str, snap_id: str) -> str:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        _fail(f"URL must be an http(s) URL of the debug endpoint, not {base!r}")
    return base.rstrip("/") + "/snapshots/" + urllib.parse.quote(snap_id, safe="")


def _pull_incident(args: argparse.Namespace) -> int:
    """Every snapshot of a fleet incident into a directory (default ``incident-ID``)."""
    incident = args.incident
    if not is_valid_id(incident):
        _fail(f"malformed incident id {incident!r}")
    if args.id:
        _fail("--id and --incident cannot be combined")
    url = _snapshot_url(args.url, "x").rsplit("/snapshots/", 1)[0] + "/incidents"
    try:
        _, body = fetch(url, _token(args), args.timeout, min(args.max_size, 16 << 20))
        listing = json.loads(body)
    except FetchError as exc:
        _fail(str(exc))
    except ValueError:
        _fail(f"{url} did not return an incident list")
    if not isinstance(listing, list):
        _fail(f"{url} did not return an incident list")
    found = [i for i in listing if isinstance(i, dict) and i.get("id") == incident]
    if not found:
        _fail(f"no incident {incident} at {url}")
    snapshots = [s for s in found[0].get("snapshots") or [] if is_valid_id(s.get("id"))]
    directory = Path(args.output or f"incident-{incident}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create {directory}: {exc.strerror or exc}")
    for snap in snapshots:
        one = argparse.Namespace(**vars(args))
        one.incident, one.id = None, snap["id"]
        one.output, one.into = None, str(directory)
        cmd_pull(one)
    print(f"pulled {len(snapshots)} snapshot(s) of incident {incident} into {directory}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    if getattr(args, "incident", None):
        return _pull_incident(args)
    snap_id = args.id or "latest"
    if snap_id != "latest" and not is_valid_id(snap_id):
        _fail(f"malformed snapshot id {snap_id!r}")
    url = _snapshot_url(args.url, snap_id)
    token = _token(args)
    try:
        # The stored bytes (the smallest form), converted here; an endpoint older than
        # ``format=raw`` refuses it with 400 and serves its JSON instead.
        try:
            answered, body = fetch(
                url + "?format=raw", token, args.timeout, args.max_size, decode=False
            )
        except HTTPStatusError as exc:
            if exc.status != 400:
                raise
            answered, body = fetch(url, token, args.timeout, args.max_size, decode=False)
    except HTTPStatusError as exc:
        if exc.status == 401:
            hint = "a valid --token is required" if not token else "the token was refused"
            _fail(f"401 Unauthorized from {exc.url}: {hint}")
        if exc.status == 404:
            _fail(
                f"404 Not Found: {exc.url} (no snapshot {snap_id!r}, wrong endpoint URL, or a "
                "token-less endpoint refusing a non-loopback client)"
            )
        if exc.status == 403:
            _fail(
                f"403 Forbidden from {exc.url}: a token-less endpoint answers only loopback"
                " Host names (see allowed_hosts)"
            )
        _fail(str(exc))
    except FetchError as exc:
        _fail(str(exc))
    try:
        snap = convert.load(body, answered, args.max_size)
    except SnapshotError as exc:
        _fail(f"{answered} did not return a snapshot: {exc}".replace(f": {answered}: ", ": "))
    fmt = export_format(args.format)
    if fmt.convert is None:
        data, suffix = body, convert.raw_suffix(body)
    else:
        data, suffix = snap.dumps(fmt.name), fmt.suffix
    out = args.output or os.path.join(getattr(args, "into", ""), f"{snap.id}{suffix}")
    _write(out, data)
    return 0


def _list_url(args: argparse.Namespace) -> int:
    """The snapshots a running service holds, newest first, then the triggers it refused."""
    base = _snapshot_url(args.url, "x").rsplit("/snapshots/", 1)[0]
    token = _token(args)
    answers = []
    for url in (base + "/snapshots", base + "/status"):
        try:
            _, body = fetch(url, token, args.timeout, 16 << 20)
            answers.append(json.loads(body))
        except FetchError as exc:
            _fail(str(exc))
        except ValueError:
            _fail(f"{url} did not return JSON")
    listing, status = answers
    if not isinstance(listing, list) or not isinstance(status, dict):
        _fail(f"{base} is not a flightdeck endpoint")
    for item in listing:
        if not isinstance(item, dict) or not isinstance(item.get("trigger"), dict):
            continue
        trigger = item["trigger"]
        print(
            f"{item.get('id')}  {item.get('created_at')}  {trigger.get('kind')}: "
            f"{trigger.get('reason')}"
        )
    if not listing:
        print("no snapshots")
    for note in status.get("not_captured") or []:
        print(f"not captured: {note}")
    for error in status.get("config_errors") or []:
        print(f"configuration: {error}")
    return 0


def _token(args: argparse.Namespace) -> str | None:
    # The argument wins over the environment, as everywhere in flightdeck.
    token: str | None = args.token or os.environ.get("FLIGHTDECK_TOKEN") or None
    return token


def _seconds(text: str) -> float:
    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _max_size_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-size",
        type=_size,
        default=DEFAULT_MAX_SIZE,
        metavar="BYTES",
        help="refuse a snapshot larger than this once decompressed, e.g. 512M (default 1G)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flightdeck`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "summary",
        help="print what a snapshot shows: why the trigger request was slow, what stands out",
        description="Print a text summary of a snapshot: the trigger and where its request's "
        "time went (running, waiting for the loop and who held it, suspended and where, the "
        "thread pool), what stands out, what held the loop, the slowest requests, loop blocks "
        "with their stacks (library frames folded), cancellations, GC pauses, scheduling "
        "delays and the longest waits.",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="path of a snapshot (any form)")
    p.add_argument(
        "--request",
        metavar="ID",
        help="explain this request (its id from the 'slowest requests' list) instead of the "
        "trigger's",
    )
    p.add_argument("--full", action="store_true", help="show library frames instead of folding")
    _max_size_option(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "export",
        help="convert a snapshot to Perfetto/Chrome trace JSON or a self-contained HTML page",
        description="Convert a snapshot. 'perfetto' writes Chrome Trace Event JSON for "
        "https://ui.perfetto.dev or chrome://tracing; 'html' writes one self-contained page "
        "with an interactive timeline (no network access needed).",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="path of a snapshot (any form)")
    p.add_argument(
        "--format",
        "-f",
        required=True,
        choices=_converted(),
        help="output format: "
        + "; ".join(f"{n} ({FORMATS[n].title}, {FORMATS[n].suffix})" for n in _converted()),
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output path ('-' for stdout; default: SNAPSHOT's stem + the format's suffix)",
    )
    _max_size_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "pull",
        help="download a snapshot from a running service's debug endpoint",
        description="Download a snapshot from a running service: GET URL/snapshots/ID "
        "(ID defaults to 'latest') and check it is a readable snapshot before saving it.",
    )
    p.add_argument(
        "url", metavar="URL", help="the endpoint, e.g. http://127.0.0.1:8000/debug/flight"
    )
    p.add_argument(
        "--token",
        "-t",
        help="bearer token of the endpoint (default: $FLIGHTDECK_TOKEN; sent to the URL's"
        " origin only, never across a redirect to another one)",
    )
    p.add_argument("--id", help="snapshot id to fetch (default: latest)")
    p.add_argument(
        "--incident",
        metavar="ID",
        help="fetch every snapshot of this fleet incident into -o DIR (default incident-ID)",
    )
    p.add_argument(
        "--format",
        "-f",
        default="json",
        choices=list(FORMATS),
        help="what to save: the stored bytes converted here to this format (default json;"
        " 'raw' keeps them as stored)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output path ('-' for stdout; default: <id> + the format's suffix)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        help="seconds the whole download may take, redirects included (default 30)",
    )
    _max_size_option(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "list",
        help="list the snapshots in directories or files, or of a running service",
        description="List snapshots (any form) from what their headers say: id, time, pid,"
        " trigger, request, service and incident. A directory's other files are skipped."
        " Given one endpoint URL (http://.../debug/flight): its snapshots, newest first, then"
        " what its status says was not captured (rate limit, cooldown) and any configuration"
        " error.",
    )
    p.add_argument(
        "paths", metavar="PATH", nargs="+", help="a snapshot directory or file, or one URL"
    )
    p.add_argument(
        "--token", "-t", help="bearer token of the endpoint (default: $FLIGHTDECK_TOKEN)"
    )
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds for each request")
    p.add_argument("--json", action="store_true", help="print a JSON list instead")
    _max_size_option(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "convert",
        help="write one view of a stored snapshot to stdout (what the endpoint runs)",
        description="Read a stored snapshot (any form) and write the chosen view to OUT"
        " (default stdout). The debug endpoint runs this in a child process.",
    )
    convert.add_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "recover",
        help="make crash snapshots of the processes that died recording into a directory",
        description="Each process recording with a snapshot directory keeps its window in"
        " DIRECTORY/windows/. A file whose process died without stopping its recorder"
        " (SIGKILL, OOM killer, segfault, os._exit, gunicorn's timeout) becomes a snapshot of"
        " trigger kind 'crash' in DIRECTORY, then is removed; files of live processes are left"
        " alone. Live processes sharing the directory do this themselves within a second or"
        " two; this is for when none is left running.",
    )
    p.add_argument("directory", metavar="DIRECTORY", help="the snapshot directory")
    p.add_argument(
        "--max-snapshots",
        type=int,
        default=20,
        help="the directory's bound on snapshots (as the service's max_snapshots; default 20)",
    )
    p.set_defaults(func=cmd_recover)
    return parser


def cmd_recover(args: argparse.Namespace) -> int:
    from .snapshot.recovery import recover
    from .snapshot.store import SnapshotStore

    if not os.path.isdir(args.directory):
        raise CLIError(f"{args.directory}: not a directory")
    try:
        store = SnapshotStore(max_snapshots=args.max_snapshots, directory=args.directory)
        made = recover(store)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    for ident in made:
        listed = next((s for s in store.list() if s["id"] == ident), None)
        reason = listed["trigger"]["reason"] if listed else ""
        print(f"{ident}  crash  {reason}")
    if not made:
        print(f"no window file of a dead process in {args.directory}", file=sys.stderr)
    return 0


#: The commands whose only work is their output: once it is written, the process may end
#: without freeing what it read (see ``main``).
_EXIT_WHEN_DONE = ("convert", "summary")


def _exit_now(status: int) -> None:
    """End the process with ``status`` at once, its output flushed first; returns (and lets
    the caller end it the ordinary way) when the output cannot be flushed."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(status)


def main(argv: list[str] | None = None, *, exit_when_done: bool = False) -> int:
    """Run the ``flightdeck`` command; returns the exit status (2 on any error).

    ``exit_when_done`` (``python -m flightdeck``, the ``flightdeck`` script): ``convert``
    and ``summary`` end the process as soon as their output is written, rather than free
    the whole window's document first (millions of objects: a tenth of a second or more
    of a conversion the endpoint waits for).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if exit_when_done and args.command in _EXIT_WHEN_DONE:
        args.keep = []
    try:
        status: int = args.func(args)
        if exit_when_done and args.command in _EXIT_WHEN_DONE:
            _exit_now(status)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `flightdeck summary x | head`: the reader went away, nothing left to say.
        return 0
    return status
