"""The findings list and the text summary."""

from __future__ import annotations

from typing import Any

from samples import T0, make_big_doc, make_doc, make_empty_doc

from flightdeck.export.summary import findings, fmt_duration, summarize


def test_fmt_duration() -> None:
    assert fmt_duration(0.00085) == "850 µs"
    assert fmt_duration(0.04) == "40.0 ms"
    assert fmt_duration(0.4) == "400 ms"
    assert fmt_duration(1.2) == "1.20 s"
    assert fmt_duration(None) == "?"


def test_findings_of_sample() -> None:
    found = findings(make_doc())
    # The trigger request first, its time broken down; then the window's worst, by impact.
    assert found[0].startswith(
        "GET /slow 200 took 1.20 s: 1.14 s suspended (awaiting gather at slow (app.py:41))"
    )
    assert found[1].startswith("POST /upload still in flight after 1.20 s")
    # The block was over before GET /slow began: an earlier incident, ranked after.
    assert "earlier: loop blocked 1.20 s in block at app.py:30 (handler /block)" in found
    assert found.index("earlier: loop blocked 1.20 s in block at app.py:30 (handler /block)") > (
        found.index("GET /error 500 failed: ValueError")
    )
    assert any(f.startswith("earlier: GET /block 200 took 1.25 s") for f in found)
    assert any(f.startswith("POST /upload still in flight after 1.20 s") for f in found)
    assert "GET /error 500 failed: ValueError" in found
    assert any(
        f.startswith("worst scheduling delay 40.0 ms for task t4 slow.<locals>.fetch_user")
        for f in found
    )
    # The trigger's own wait is in its breakdown; the longest of the others, still going on.
    assert any(
        f.startswith("longest wait 1.20 s (still waiting at capture): task t8") for f in found
    )
    assert any(f.startswith("3 events dropped") for f in found)
    assert all(isinstance(f, str) and "\n" not in f for f in found)


def test_findings_of_quiet_window() -> None:
    assert findings(make_empty_doc()) == []


def test_coverage_gaps_are_reported() -> None:
    doc = make_doc()
    doc["process"]["loop"] = "uvloop"
    doc["process"]["coverage"]["scheduling_delay"] = False
    assert "not measured on uvloop: scheduling delay" in findings(doc)


def test_summary_sections() -> None:
    text = summarize(make_doc())
    assert text.startswith("snapshot 20261126T015000Z-1234-a1b2c3d4")
    assert "trigger:  slow_request — GET /slow took 1.20 s (threshold 1.00 s)" in text
    assert "pid 1234 on web-1, Python 3.11.7, loop asyncio" in text
    assert "window:   10.20 s" in text and "3 dropped" in text
    slowest = text.split("slowest requests")[1].split("worst loop blocks")[0]
    lines = [ln for ln in slowest.splitlines()[1:] if ln.strip()]
    assert lines[0].split()[:4] == ["1.25", "s", "GET", "/block"]  # slowest first
    assert "route /slow" in slowest and "ttfb 1.19 s" in slowest and "[3 tasks]" in slowest
    assert "(in flight)" in slowest and "error ValueError" in slowest
    blocks = text.split("worst loop blocks")[1].split("worst scheduling delays")[0]
    assert "handler /block" in blocks
    assert blocks.index("httptools_impl.py:401 in run_asgi") < blocks.index("app.py:30 in block")
    delays = text.split("worst scheduling delays")[1].split("long waits")[0]
    delay_lines = [ln for ln in delays.splitlines()[1:] if ln.strip()]
    assert "40.0 ms" in delay_lines[0] and "t4" in delay_lines[0]
    assert len(delay_lines) == 5
    waits = text.split("long waits")[1]
    assert "app.py:52 in fetch_user (awaiting acquire)" in waits
    assert "awaiting at starlette/requests.py:230 in receive" in text
    assert text.rstrip().endswith("dropped: 3 events")


def test_top_n_limits() -> None:
    doc = make_big_doc(5_000)
    text = summarize(doc)
    slowest = text.split("slowest requests")[1].split("worst loop blocks")[0]
    assert len([ln for ln in slowest.splitlines()[1:] if ln.strip()]) == 5
    blocks = text.split("worst loop blocks")[1].split("worst scheduling delays")[0]
    assert blocks.count("stack (innermost last)") == 3


def test_defensive_against_missing_and_junk() -> None:
    assert "trigger:  ?" in summarize({})
    assert findings({}) == []
    doc = make_doc(
        requests=[{"id": 1, "start": "soon", "status": "200"}, "junk", None],
        tasks=[{"id": "t1", "steps": [[T0, 0.1, None, None], None, ["x"]], "waits": "no"}],
        loop=[{"kind": "block", "duration": None, "stack": [None, {"file": None}]}],
        events=None,
        window={"start": None, "end": T0, "dropped": "many"},
        process=None,
        trigger=None,
    )
    assert summarize(doc)
    assert findings(doc)[0].startswith("loop blocked ?")


SITE = "/srv/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"


def _frames_doc(app: str | None) -> dict[str, Any]:
    stack = [
        {"function": "run", "file": f"{STDLIB}/asyncio/runners.py", "line": 118},
        {"function": "main", "file": f"{SITE}/click/core.py", "line": 1078},
        {"function": "run_asgi", "file": f"{SITE}/uvicorn/protocols/http/h11_impl.py", "line": 404},
        {"function": "__call__", "file": f"{SITE}/starlette/routing.py", "line": 74},
        {"function": "render", "file": f"{SITE}/reports/pdf.py", "line": 88},
        {"function": "handler", "file": "/srv/app/views.py", "line": 12},
        {"function": "dumps", "file": f"{STDLIB}/json/__init__.py", "line": 231},
        {"function": "encode", "file": f"{STDLIB}/json/encoder.py", "line": 200},
    ]
    doc = make_doc()
    doc["loop"] = [
        {"kind": "block", "start": T0 + 1, "duration": 0.3, "callback": None, "stack": stack}
    ]
    doc["process"]["paths"] = {
        "stdlib": STDLIB,
        "site_packages": [SITE],
        "cwd": "/srv/app",
        "app": app,
    }
    return doc


def test_library_frames_fold_by_the_recorded_paths() -> None:
    text = summarize(_frames_doc(None)).split("worst loop blocks")[1].split("\n\n")[0]
    lines = [ln.strip() for ln in text.splitlines()[3:]]
    assert lines == [
        "... 5 library frames (--full shows them)",
        "/srv/app/views.py:12 in handler",
        "... 2 library frames (--full shows them)",
    ]
    # The app's own package is never folded, even installed into site-packages.
    text = summarize(_frames_doc("reports")).split("worst loop blocks")[1].split("\n\n")[0]
    lines = [ln.strip() for ln in text.splitlines()[3:]]
    assert lines[:2] == [
        "... 4 library frames (--full shows them)",
        f"{SITE}/reports/pdf.py:88 in render",
    ]
    full = summarize(_frames_doc(None), full=True).split("worst loop blocks")[1]
    assert "library frames" not in full.split("\n\n")[0]
    assert f"{SITE}/click/core.py:1078 in main" in full
    # The finding names the user's frame, not the innermost library one.
    assert (
        "earlier: loop blocked 300 ms in handler at app/views.py:12 (task t1 Server.serve)"
        in findings(_frames_doc(None))
    )


def test_summary_shows_trace_ids_service_and_incident() -> None:
    doc = make_doc()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    doc["process"]["service"] = "checkout"
    for req in doc["requests"]:
        req["trace_id"] = trace
    doc["trigger"]["incident"] = "20261130T120000Z-42-0123abcd"
    doc["trigger"]["origin"] = {
        "service": "payments",
        "hostname": "h2",
        "pid": 42,
        "kind": "slow_request",
        "reason": "slow",
    }
    text = summarize(doc)
    assert "process:  checkout, pid" in text
    assert "fleet:    incident 20261130T120000Z-42-0123abcd, opened by payments (pid 42" in text
    slowest = text.split("slowest requests")[1].split("\n\n")[0]
    assert f"trace {trace}" in slowest
    assert "fleet:" not in summarize(make_doc())  # nothing said without a fleet


def test_an_exception_trigger_names_the_frame_that_raised() -> None:
    doc = make_doc()
    err = next(r for r in doc["requests"] if r["path"] == "/error")
    doc["trigger"] = {"kind": "exception", "reason": "GET /error raised ValueError"}
    doc["trigger"]["request"] = dict(err)
    found = findings(doc)
    assert (
        found[0] == "GET /error 500 raised ValueError (the raising frame is not in this snapshot)"
    )
    # When the recorder keeps the traceback (``error_stack``, innermost last), its innermost
    # frame of the app's is named, not the library's below it.
    err["error_stack"] = [
        {"function": "run_asgi", "file": f"{SITE}/uvicorn/protocols/http/h11_impl.py", "line": 404},
        {"function": "error", "file": "/srv/app/app.py", "line": 62},
        {"function": "loads", "file": f"{STDLIB}/json/__init__.py", "line": 346},
    ]
    doc["process"]["paths"] = {"stdlib": STDLIB, "site_packages": [SITE], "app": None}
    assert findings(doc)[0] == "GET /error 500 raised ValueError at error (app.py:62)"
    # The summary says it on its "why" line, and names it for a failed request that is not
    # the trigger's too.
    assert "why:      GET /error 500 raised ValueError at error (app.py:62)" in summarize(doc)
    doc["trigger"] = {"kind": "manual", "reason": "", "request": None}
    assert "GET /error 500 failed: ValueError at error (app.py:62)" in findings(doc)
    slowest = summarize(doc).split("slowest requests")[1].split("\n\n")[0]
    assert "error ValueError raised at error (app.py:62)" in slowest
