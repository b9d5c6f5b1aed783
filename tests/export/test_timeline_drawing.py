"""The timeline as drawn in real headless Chromium, on real snapshots of the example's
routes: no label covered, no empty lane, a legend entry for every colour, the trigger's
cause readable without a click, text wrapped at word boundaries."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import browser_only
from test_html import Page
from test_html import browser as browser  # the fixture

pytestmark = [browser_only, pytest.mark.browser]

ROUTES = ["/incident/hog", "/incident/timeouts", "/incident/gc", "/incident/lock", "/block"]


@pytest.fixture
def page_of(browser: Any, tmp_path: Path) -> Iterator[Any]:
    pages: list[Page] = []

    def opener(doc: dict[str, Any]) -> Page:
        p = Page(browser, tmp_path / f"snap{len(pages)}.html", doc)
        pages.append(p)
        return p

    yield opener
    for p in pages:
        p.close()


def _views(p: Page) -> Iterator[str]:
    """The page as opened (the trigger), then the whole window."""
    yield "trigger"
    p.js("window.flightdeck.fit()")
    yield "fit"


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return min(a1, b1) - max(a0, b0)


@pytest.mark.parametrize("route", ROUTES)
def test_no_label_is_covered_and_no_lane_is_empty(
    incidents: dict[str, dict[str, Any]], page_of: Any, route: str
) -> None:
    p = page_of(incidents[route])
    for view in _views(p):
        drawn: list[dict[str, Any]] = p.js("window.flightdeck.drawn()")
        assert drawn, view
        by_row: dict[str, list[dict[str, Any]]] = {}
        for d in drawn:
            by_row.setdefault(d["row"], []).append(d)
        for row, items in by_row.items():
            labelled = [d for d in items if d["label"]]
            for d in labelled:
                lab = d["label"]
                # Covered: something drawn after the label, over it.
                for o in items[items.index(d) + 1 :]:
                    if o["tick"]:
                        continue  # ticks (lag, cancellations) are 2 px marks, not slices
                    covers = _overlap(lab["x0"], lab["x1"], o["x0"], o["x1"]) > 1 and (
                        _overlap(d["y0"], d["y1"], o["y0"], o["y1"]) > 0
                    )
                    assert not covers, (route, view, row, lab["text"], o)
            boxes = sorted((d["label"]["x0"], d["label"]["x1"]) for d in labelled)
            for (_, a1), (b0, _) in itertools.pairwise(boxes):
                assert a1 <= b0 + 0.5, (route, view, row, boxes)
        # Every row shown has something drawn in the view: empty lanes fold.
        shown: list[str] = p.js("window.flightdeck.visibleRows()")
        height = p.js("document.getElementById('timeline').getBoundingClientRect().height")
        on_screen = shown[: int((height - 22) // 20)]
        empty = [r for r in on_screen if r not in by_row and r != "event loop"]
        assert empty == [], (route, view, empty)


def test_hundreds_of_idle_tasks_do_not_take_the_screen(
    incidents: dict[str, dict[str, Any]], page_of: Any
) -> None:
    p = page_of(incidents["/incident/timeouts"])
    for view in _views(p):
        shown: list[str] = p.js("window.flightdeck.visibleRows()")
        assert len(shown) <= 40, (view, shown)  # one row a task: over 400
        assert any(r.startswith("200 × _fetch_with_timeout") for r in shown), shown
        assert any(r.startswith("flightdeck's own work") for r in shown), shown


@pytest.mark.parametrize("route", ROUTES)
def test_legend_has_every_colour_drawn(
    incidents: dict[str, dict[str, Any]], page_of: Any, route: str
) -> None:
    p = page_of(incidents[route])
    entries: list[list[str]] = p.js(
        """[...document.querySelectorAll('#legend .entry')].map(e => [e.dataset.class,
        getComputedStyle(e.querySelector('.swatch')).backgroundColor, e.textContent])"""
    )
    legend_colours = {c for _, c, _ in entries}
    assert len(legend_colours) == len(entries), entries  # one colour, one meaning
    for _ in _views(p):
        drawn: list[dict[str, Any]] = p.js("window.flightdeck.drawn()")
        colours = {d["color"] for d in drawn}
        for colour in colours:
            rgb = "rgb({}, {}, {})".format(*(int(colour[i : i + 2], 16) for i in (1, 3, 5)))
            assert rgb in legend_colours, (route, colour, entries)
    words = [w for _, _, w in entries]
    if any(not r.get("end") for r in incidents[route]["requests"]):
        assert "request in flight" in words, words


def test_the_cause_is_readable_without_a_click(
    incidents: dict[str, dict[str, Any]], page_of: Any
) -> None:
    """As the page opens, the loop's rows name what held it (as far as a slice's width
    allows), and nothing is drawn over those names."""
    for route, cause in (
        ("/incident/hog", ("render_report (app.py:", "hog (app.py:")),
        ("/incident/gc", ("gc_pause",)),
        ("/block", ("block (app.py:",)),
    ):
        p = page_of(incidents[route])
        labels = [
            d["label"]["text"]
            for d in p.js("window.flightdeck.drawn()")
            if d["label"] and d["row"].startswith("event loop") and d["kind"] in ("step", "block")
        ]
        assert labels, route
        assert any(any(c in lab for c in cause) for lab in labels), (route, labels)


def test_details_say_kind_once_and_wrap_at_words(
    incidents: dict[str, dict[str, Any]], page_of: Any
) -> None:
    p = page_of(incidents["/incident/lock"])
    for kind in ("request", "suspended", "step", "gc"):
        if not p.js(f"window.flightdeck.select('{kind}', 0)"):
            continue
        keys: list[str] = p.js(
            "[...document.querySelectorAll('#details td.k')].map(td => td.textContent)"
        )
        assert keys.count("kind") == 1, (kind, keys)
        # No word of the pane is split across lines (a word longer than the pane may be).
        split: list[str] = p.js(
            """(() => { const out = []; const pane = document.getElementById('details');
            const walker = document.createTreeWalker(pane, NodeFilter.SHOW_TEXT);
            for (let n = walker.nextNode(); n; n = walker.nextNode()) {
              const re = /\\S+/g; let m;
              while ((m = re.exec(n.data))) {
                if (m[0].length > 24) continue;
                const r = document.createRange(); r.setStart(n, m.index);
                r.setEnd(n, m.index + m[0].length);
                const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
                if (tops.size > 1) out.push(m[0]);
              } }
            return out; })()"""
        )
        assert split == [], (kind, split)
