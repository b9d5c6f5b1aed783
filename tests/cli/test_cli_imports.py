"""``python -m flightdeck convert`` and ``summary`` import only what they use, and end as
soon as their output is written: the same bytes and exit status as in-process calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from endpoint_samples import make_snapshot

from flightdeck import convert

#: Modules the JSON conversion and the summary never need: the middleware and the endpoint,
#: the fleet client, and the exporters of other formats.
NOT_NEEDED = (
    "flightdeck.asgi",
    "flightdeck.export.html",
    "flightdeck.export.perfetto",
    "flightdeck.export.pftrace",
    "flightdeck.snapshot.recorder",
)


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=120, check=True
    )
    return done.stdout.decode()


def _imported_after(code: str) -> set[str]:
    out = _python(
        "import sys\n"
        + code
        + "\nprint(' '.join(m for m in sys.modules if m.startswith('flightdeck')))"
    )
    return set(out.split())


def _needless(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(NOT_NEEDED))


def test_importing_the_package_imports_no_public_module_until_a_name_is_used() -> None:
    modules = _imported_after("import flightdeck")
    assert _needless(modules) == []
    modules = _imported_after("import flightdeck\nflightdeck.FlightDeck")
    assert "flightdeck.asgi.middleware" in modules


def test_public_names_are_the_modules_own_objects() -> None:
    import flightdeck
    from flightdeck.asgi.middleware import FlightDeck
    from flightdeck.snapshot.document import Snapshot
    from flightdeck.snapshot.recorder import FlightRecorder

    assert flightdeck.FlightDeck is FlightDeck
    assert flightdeck.Snapshot is Snapshot
    assert flightdeck.FlightRecorder is FlightRecorder
    assert set(flightdeck.__all__) <= set(dir(flightdeck))


def test_an_unknown_name_is_an_attribute_error() -> None:
    import flightdeck

    try:
        flightdeck.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name was found")


def test_every_format_converts_without_its_exporter_imported_first(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_bytes(make_snapshot().dumps("json"))
    # A process that imported only the snapshot layer and the package still has every
    # format registered, each exporter loaded when its format is first asked for.
    out = _python(
        "from flightdeck.snapshot.document import FORMATS, Snapshot\n"
        f"snap = Snapshot.load({str(path)!r})\n"
        "print(sorted(FORMATS), all(snap.dumps(n) for n in FORMATS if FORMATS[n].convert))"
    )
    assert out.split("] ")[1].strip() == "True"
    for name in ("html", "perfetto", "pftrace", "summary", "json", "raw"):
        assert repr(name) in out


def test_convert_and_summary_import_neither_the_middleware_nor_other_exporters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snap.json"
    path.write_bytes(make_snapshot().dumps("json"))
    out = tmp_path / "out.json.gz"
    modules = _imported_after(
        "from flightdeck import cli\n"
        f"assert cli.main(['convert', {str(path)!r}, '--format', 'json', '--gzip',"
        f" '-o', {str(out)!r}]) == 0"
    )
    assert _needless(modules) == []
    modules = _imported_after(
        "import contextlib, io\nfrom flightdeck import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cli.main(['summary', {str(path)!r}]) == 0"
    )
    assert _needless(modules) == []
    assert "flightdeck.export.summary" in modules


def test_python_m_flightdeck_writes_what_the_in_process_calls_write(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    data = make_snapshot().dumps("json")
    path.write_bytes(data)
    run = [sys.executable, "-m", "flightdeck"]
    done = subprocess.run(
        [*run, "convert", str(path), "--format", "json", "--gzip"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    expected = tmp_path / "expected.gz"
    with expected.open("wb") as f:
        convert.convert(data, "json", f, gzip=True)
    assert done.stdout == expected.read_bytes()

    done = subprocess.run([*run, "summary", str(path)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == _python(
        f"from flightdeck import cli\ncli.main(['summary', {str(path)!r}])"
    )


def test_python_m_flightdeck_keeps_the_exit_status_of_a_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"not a snapshot")
    run = [sys.executable, "-m", "flightdeck"]
    done = subprocess.run([*run, "convert", str(bad), "--format", "json"], capture_output=True)
    assert done.returncode == 2
    assert b"not a flightdeck snapshot" in done.stderr
    done = subprocess.run([*run, "summary", str(bad)], capture_output=True)
    assert done.returncode == 2
    assert b"not a flightdeck snapshot" in done.stderr


def test_keep_holds_the_document_past_the_call(tmp_path: Path) -> None:
    data = make_snapshot().dumps("json")
    keep: list[object] = []
    out = tmp_path / "out.json"
    with out.open("wb") as f:
        convert.convert(data, "json", f, keep=keep)
    assert len(keep) == 1 and isinstance(keep[0], dict)
    assert out.read_bytes() == data
