"""The HTML export, checked statically and in real headless Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from browser import ARGS, CHROMIUM, browser_only
from samples import make_big_doc, make_doc, make_empty_doc

from flightdeck.export.html import to_html

EVIL = "/x</script><script>window.pwned=1</script><!--"


def test_static_shape() -> None:
    page = to_html(make_doc()).decode()
    assert page.startswith("<!DOCTYPE html>")
    # No external resources of any kind.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    for hook in ('id="timeline"', 'id="details"', 'id="header"', 'id="findings"'):
        assert hook in page
    assert "loop blocked 1.20 s in block at app.py:30 (handler /block)" in page
    data = re.search(r'<script type="application/json" id="flightdeck-data">(.*?)</script>', page)
    assert data is not None
    assert orjson.loads(data.group(1)) == make_doc()


def test_embedded_data_cannot_escape() -> None:
    doc = make_doc()
    doc["requests"][0]["path"] = EVIL
    doc["trigger"]["reason"] = "<b>bold</b>"
    page = to_html(doc).decode()
    assert EVIL not in page and "<b>bold</b>" not in page
    assert page.count("</script>") == 3  # the data, the diagnosis and the code elements
    data = re.search(r'id="flightdeck-data">(.*?)</script>', page, re.S)
    assert data is not None and orjson.loads(data.group(1))["requests"][0]["path"] == EVIL


# -- in the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A loaded export, with everything it logged or requested."""

    def __init__(self, browser: Any, path: Path, doc: dict[str, Any]) -> None:
        path.write_bytes(to_html(doc))
        self.url = path.resolve().as_uri()
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(self.url)
        self.page.wait_for_function("window.flightdeck && window.flightdeck.ready", timeout=30_000)

    def js(self, expr: str) -> Any:
        return self.page.evaluate(expr)

    def click_canvas(self, x: float, y: float) -> None:
        box = self.page.locator("#timeline").bounding_box()
        assert box is not None
        self.page.mouse.click(box["x"] + x, box["y"] + y)

    def ink(self) -> tuple[int, int]:
        """(non-white pixels, distinct colours) of the canvas."""
        result: list[int] = self.js(
            """(() => { const c = document.getElementById('timeline');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let ink = 0; const colours = new Set();
            for (let i = 0; i < d.length; i += 4) {
              if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) ink++;
              if (i % 64 === 0) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            }
            return [ink, colours.size]; })()"""
        )
        return result[0], result[1]

    def wait_view_change(self, before: dict[str, float], timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now: dict[str, Any] = self.js("window.flightdeck.view()")
            if now != before:
                return now
            self.page.wait_for_timeout(20)
        pytest.fail("the view did not change")

    def close(self) -> None:
        assert self.errors == [], self.errors
        assert set(self.requests) == {self.url}, self.requests
        self.page.close()


@pytest.fixture
def open_page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    pages: list[Page] = []

    def opener(doc: dict[str, Any], name: str = "snap.html") -> Page:
        p = Page(browser, tmp_path / name, doc)
        pages.append(p)
        return p

    yield opener
    for p in pages:
        p.close()


@browser_only
@pytest.mark.browser
def test_timeline_renders_and_click_shows_stack(open_page: Any) -> None:
    p = open_page(make_doc())
    rows: list[str] = p.js("window.flightdeck.rows")
    assert rows[0] == "requests" and "event loop" in rows
    assert "thread ThreadPoolExecutor-0_0" in rows and "regions" in rows and "logs" in rows
    assert any(r.startswith("t4 slow.<locals>.fetch_user") for r in rows)
    # Header: trigger, process, findings.
    header = p.page.locator("#header").inner_text()
    assert "slow_request" in header and "GET /slow took 1.20 s" in header
    assert "pid 1234" in header and "asyncio" in header and "3 dropped" in header
    findings = p.page.locator("#findings li").all_inner_texts()
    assert findings[0].startswith("GET /slow 200 took 1.20 s: 1.14 s suspended")
    assert "earlier: loop blocked 1.20 s in block at app.py:30 (handler /block)" in findings
    # Opened around the trigger.
    view = p.js("window.flightdeck.view()")
    trig = p.js("window.flightdeck.trigger")
    assert trig == pytest.approx(7.2, abs=1e-6)
    assert view["start"] < trig < view["end"] and view["end"] - view["start"] < 5
    ink, colours = p.ink()
    assert ink > 10_000 and colours > 5
    shot = p.page.screenshot()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(set(shot)) > 200
    # A real mouse click on the loop block shows its stack.
    pos = p.js("window.flightdeck.locate('block', 0)")
    p.click_canvas(pos["x"], pos["y"])
    details = p.page.locator("#details")
    assert "loop blocked 1.20 s" in details.inner_text()
    assert "app.py:30 in block" in details.locator("pre").inner_text()
    assert "httptools_impl.py:401 in run_asgi" in details.inner_text()
    assert p.js("window.flightdeck.selected().kind") == "block"
    # Clicking a request shows route, status, exception.
    pos = p.js("window.flightdeck.locate('request', 2)")  # GET /error 500
    p.click_canvas(pos["x"], pos["y"])
    text = details.inner_text()
    assert "GET /error 500" in text and "/error" in text and "ValueError" in text
    # A suspension shows its await site.
    text = p.js("window.flightdeck.select('ready', 0)")
    assert "ready" in text
    pos = p.js(
        "(() => { const fd = window.flightdeck; const n = fd.kinds().suspended;"
        " for (let i = 0; i < n; i++) { fd.select('suspended', i);"
        " if (document.getElementById('details').textContent.includes('acquire'))"
        " return fd.locate('suspended', i); } return null; })()"
    )
    assert pos is not None
    p.click_canvas(pos["x"], pos["y"])
    assert "app.py:52 in fetch_user" in details.inner_text()


@browser_only
@pytest.mark.browser
def test_zoom_pan_keys(open_page: Any) -> None:
    p = open_page(make_doc())
    p.page.locator("#timeline").focus()
    p.page.keyboard.press("0")
    view = p.wait_view_change({})
    assert view["start"] <= 0 and view["end"] >= view["span"]
    p.page.keyboard.press("+")
    zoomed = p.wait_view_change(view)
    assert zoomed["end"] - zoomed["start"] < view["end"] - view["start"]
    p.page.keyboard.press("ArrowRight")
    panned = p.wait_view_change(zoomed)
    assert panned["start"] > zoomed["start"]
    box = p.page.locator("#timeline").bounding_box()
    p.page.mouse.move(box["x"] + 700, box["y"] + 100)
    p.page.mouse.wheel(0, -400)
    wheeled = p.wait_view_change(panned)
    assert wheeled["end"] - wheeled["start"] < panned["end"] - panned["start"]
    p.page.mouse.move(box["x"] + 700, box["y"] + 100)
    p.page.mouse.down()
    p.page.mouse.move(box["x"] + 500, box["y"] + 100, steps=5)
    p.page.mouse.up()
    dragged = p.wait_view_change(wheeled)
    assert dragged["start"] > wheeled["start"]
    p.page.locator("#btn-fit").click()
    assert p.wait_view_change(dragged)["start"] <= 0
    assert "fit" in p.page.locator("#shortcuts").inner_text()


@browser_only
@pytest.mark.browser
def test_hostile_and_empty_documents(open_page: Any) -> None:
    doc = make_doc()
    doc["requests"][0]["path"] = EVIL
    p = open_page(doc, "evil.html")
    assert p.js("typeof window.pwned") == "undefined"
    assert EVIL in p.js("window.flightdeck.select('request', 0)")
    p = open_page(make_empty_doc(), "empty.html")
    assert "event loop" in p.js("window.flightdeck.rows")
    assert p.page.locator("#findings").inner_text().strip() == "nothing"


@browser_only
@pytest.mark.browser
def test_big_document_renders_quickly(open_page: Any) -> None:
    doc = make_big_doc(100_000)
    p = open_page(doc, "big.html")
    assert p.js("window.flightdeck.itemCount") > 100_000
    first = p.js("window.flightdeck.firstDrawMs")
    assert first < 5_000, f"first draw took {first:.0f} ms"
    p.js("window.flightdeck.fit()")  # everything on screen: culling and pixel merging
    assert p.js("window.flightdeck.lastDrawMs") < 1_000
    ink, _ = p.ink()
    assert ink > 10_000
    pos = p.js("window.flightdeck.locate('block', 3)")
    p.click_canvas(pos["x"], pos["y"])
    assert "app.py:99 in compute" in p.page.locator("#details").inner_text()


@browser_only
@pytest.mark.browser
def test_trace_id_and_incident_shown(open_page: Any) -> None:
    doc = make_doc()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    doc["requests"][2]["trace_id"] = trace
    doc["process"]["service"] = "checkout"
    doc["trigger"]["incident"] = "20261130T120000Z-42-0123abcd"
    p = open_page(doc)
    header = p.page.locator("#header").inner_text()
    assert "service checkout" in header and "incident 20261130T120000Z-42-0123abcd" in header
    pos = p.js("window.flightdeck.locate('request', 2)")
    p.click_canvas(pos["x"], pos["y"])
    assert f"trace id{trace}" in p.page.locator("#details").inner_text().replace("\t", "")


SITE = "/srv/venv/lib/python3.11/site-packages"


def _diagnosis_doc() -> dict[str, Any]:
    doc = make_doc()
    t0 = doc["window"]["start"]
    block = next(e for e in doc["loop"] if e["kind"] == "block")
    block["stack"] = [
        {"function": "main", "file": f"{SITE}/click/core.py", "line": 1078},
        {"function": "run_asgi", "file": f"{SITE}/uvicorn/protocols/http/h11_impl.py", "line": 404},
        {"function": "handler", "file": "/srv/app/views.py", "line": 12},
    ]
    doc["process"]["paths"] = {
        "stdlib": "/usr/lib/python3.11",
        "site_packages": [SITE],
        "cwd": "/srv/app",
        "app": None,
    }
    doc["loop"].append(
        {
            "kind": "gc",
            "start": t0 + 7.125,  # inside a step of the trigger request's own task
            "duration": 0.03,
            "callback": None,
            "stack": None,
            "generation": 2,
            "collected": 12345,
        }
    )
    doc["events"].append(
        {
            "kind": "cancel",
            "start": t0 + 6.6,
            "task": "t4",
            "cause": "timeout",
            "stack": [{"function": "fetch_user", "file": "/srv/app/views.py", "line": 52}],
        }
    )
    return doc


@browser_only
@pytest.mark.browser
def test_breakdown_gc_cancellations_and_folded_stacks_in_the_page(open_page: Any) -> None:
    p = open_page(_diagnosis_doc())
    why = p.page.locator("#why").inner_text()
    assert why.startswith("GET /slow 200 took 1.20 s: 1.14 s suspended"), why
    findings = p.page.locator("#findings li").all_inner_texts()
    assert any(f.startswith("garbage collection paused the loop 1 time") for f in findings)
    # The trigger request's details carry its breakdown.
    details = p.page.locator("#details")
    pos = p.js("window.flightdeck.locate('request', 1)")  # GET /slow
    p.click_canvas(pos["x"], pos["y"])
    text = details.inner_text()
    assert "where its time went" in text and "own task t3" in text
    assert "suspended" in text and "awaiting gather at slow (app.py:41)" in text
    assert "of which GC pauses" in text
    # GC pauses on the loop lane, cancellations on their task's row.
    assert p.js("window.flightdeck.kinds().gc") == 1
    pos = p.js("window.flightdeck.locate('gc', 0)")
    p.click_canvas(pos["x"], pos["y"])
    assert "garbage collection 30.0 ms" in details.inner_text()
    assert "12345" in details.inner_text()
    assert "cause" in p.js("window.flightdeck.select('cancel', 0)")
    assert "timeout" in details.inner_text() and "views.py:52" in details.inner_text()
    # Library frames fold; one click shows them.
    pos = p.js("window.flightdeck.locate('block', 0)")
    p.click_canvas(pos["x"], pos["y"])
    stack = details.locator("pre").inner_text()
    assert stack.splitlines() == ["... 2 library frames", "/srv/app/views.py:12 in handler"]
    details.locator("button.full").click()
    assert f"{SITE}/click/core.py:1078 in main" in details.locator("pre").inner_text()


@browser_only
@pytest.mark.browser
def test_trigger_label_never_overlaps_the_time_axis(open_page: Any) -> None:
    p = open_page(make_doc())
    trig = p.js("window.flightdeck.trigger")
    span = p.js("window.flightdeck.view().span")
    checked = 0
    for width in (1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.2, 1.0, 3.0, span, span * 1.4):
        for where in (0.02, 0.3, 0.5, 0.9, 0.99):
            start = trig - where * width
            p.js(f"window.flightdeck.setView({start}, {start + width})")
            boxes = p.js("window.flightdeck.axisBoxes()")
            label = boxes["trigger"]
            if label is None:
                continue
            checked += 1
            assert label[0] >= 260, (width, where, label)  # right of the row labels
            assert boxes["ticks"], (width, where)
            for tick in boxes["ticks"]:
                assert tick[1] <= label[0] or tick[0] >= label[1], (width, where, label, tick)
    assert checked >= 40
