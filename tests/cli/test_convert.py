"""One loader for every stored form, the ``convert`` and ``list`` commands, and the format
table that the endpoint, the CLI and ``Snapshot.dumps`` read."""

from __future__ import annotations

import gzip
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import orjson
import pytest
from endpoint_samples import make_snapshot
from support import ROOT

from flightdeck import cli, convert
from flightdeck.snapshot.codec import encode
from flightdeck.snapshot.document import FORMATS, ExportFormat, Snapshot, SnapshotError

BASE = 1_764_121_800.0
MAGIC = b"FDTEST\0"


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "flightdeck", *args], input=stdin, capture_output=True, timeout=120
    )


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for ``flightdeck.snapshot.container`` (the binary stored form), with the
    three functions the loader calls: what the loader does once that module exists."""
    module = types.ModuleType("flightdeck.snapshot.container")

    def is_container(data: bytes) -> bool:
        return data.startswith(MAGIC)

    def read_document(data: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(data[len(MAGIC) :])
        return doc

    def read_header(data: bytes) -> dict[str, Any]:
        doc = read_document(data)
        return {k: doc[k] for k in ("id", "created_at", "trigger", "process")}

    module.is_container = is_container  # type: ignore[attr-defined]
    module.read_document = read_document  # type: ignore[attr-defined]
    module.read_header = read_header  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flightdeck.snapshot.container", module)
    return module


def test_every_stored_form_reads_as_the_same_document(container: types.ModuleType) -> None:
    snap = make_snapshot(created=BASE)
    doc = snap.to_dict()
    plain = snap.dumps("json")
    forms = {
        "json": plain,
        "gzip": gzip.compress(plain),  # without a summary in its header
        "gzip-with-summary": encode(snap)[0],  # as the store writes it
        "container": MAGIC + plain,
    }
    for name, data in forms.items():
        assert convert.read_document(data, name) == doc, name
        header = convert.read_header(data, name)
        assert header["id"] == snap.id and header["trigger"]["kind"] == "slow_request", name
    assert convert.form_of(forms["container"]) == convert.CONTAINER


def test_without_the_container_module_its_bytes_are_not_a_snapshot() -> None:
    # This build may have no container yet: its bytes are refused with one clear line.
    with pytest.raises(SnapshotError, match="not a flightdeck snapshot"):
        convert.read_document(MAGIC + b"\0\1\2", "x.fdsnap")


def test_bad_input_is_one_clear_error(container: types.ModuleType) -> None:
    with pytest.raises(SnapshotError, match="corrupt snapshot container"):
        convert.read_document(MAGIC + b"{not json", "c")
    with pytest.raises(SnapshotError, match="truncated"):
        convert.read_document(gzip.compress(b'{"format": "flightdeck/1"}')[:-9], "g")
    with pytest.raises(SnapshotError, match="newer"):
        convert.read_document(b'{"format": "flightdeck/9"}', "j")


def test_convert_command_streams_each_format_to_stdout(tmp_path: Path) -> None:
    snap = make_snapshot(created=BASE)
    path = tmp_path / "s.json.gz"
    path.write_bytes(encode(snap)[0])
    for name in ("html", "summary", "pftrace"):
        done = _run("convert", "--format", name, str(path))
        assert done.returncode == 0, done.stderr
        assert done.stdout == snap.dumps(name)
    done = _run("convert", "--format", "json", "--gzip", "-", stdin=snap.dumps("json"))
    assert done.returncode == 0 and gzip.decompress(done.stdout) == snap.dumps("json")
    done = _run("convert", "--format", "html", "-", stdin=b"nonsense")
    assert done.returncode == 2 and done.stdout == b""
    assert (
        done.stderr.decode().count("\n") == 1
        and "not a flightdeck snapshot" in done.stderr.decode()
    )


def test_list_reads_headers_of_every_form(tmp_path: Path) -> None:
    older = make_snapshot(created=BASE)
    newer = make_snapshot(created=BASE + 60, kind="manual", reason="by hand")
    (tmp_path / f"{older.id}.json.gz").write_bytes(encode(older)[0])
    (tmp_path / f"{newer.id}.json").write_bytes(newer.dumps("json"))
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / f"{older.id}.html.view").write_bytes(b"<html>")
    done = _run("list", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    listed = orjson.loads(done.stdout)
    assert [item["id"] for item in listed] == [newer.id, older.id]  # newest first
    assert listed[0]["trigger"] == {"kind": "manual", "reason": "by hand"}
    text = _run("list", str(tmp_path)).stdout.decode()
    assert older.id in text and "manual: by hand" in text


def test_one_registration_makes_a_format_known_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        FORMATS,
        "ids",
        ExportFormat(
            "ids", lambda doc: str(doc["id"]).encode(), "text/plain", "inline", ".id", "t"
        ),
    )
    snap = make_snapshot(created=BASE)
    assert snap.dumps("ids") == snap.id.encode()
    parser = cli.build_parser()
    args = parser.parse_args(["export", "x.json", "--format", "ids"])
    assert args.format == "ids"
    assert cli._default_out("dir/x.json.gz", FORMATS["ids"].suffix) == str(Path("dir/x.id"))
    with pytest.raises(ValueError, match="stored bytes"):
        snap.dumps("raw")
    with pytest.raises(ValueError, match="one of json, raw"):
        snap.dumps("xml")


def test_readme_documents_every_format() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in FORMATS:
        assert f"format={name}" in readme or f"`{name}`" in readme, name


def test_snapshot_load_is_unchanged_for_json() -> None:
    snap = make_snapshot(created=BASE)
    assert Snapshot.load(gzip.compress(snap.dumps("json"))).to_dict() == snap.to_dict()
