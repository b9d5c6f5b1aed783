"""Export a snapshot as one self-contained, interactive HTML page.

The page makes no network requests: CSS and JS are inline and the document is embedded
as JSON in a ``<script type="application/json">`` element (every ``<`` escaped so the data
cannot close the element). The header and findings are rendered here; the timeline is
drawn by the inline script on a ``<canvas>``.
"""

from __future__ import annotations

import functools
import html
from importlib.resources import files
from typing import Any

import orjson

from .breakdown import SLOW_STEP, breakdown, sentence, table
from .common import dicts, fmt_duration, num, section, split_processes, text, utc_text
from .diagnose import USER
from .findings import Reading, findings, request_duration, why

#: Requests whose time breakdown the page carries (the trigger's and the slowest).
BREAKDOWNS = 50

__all__ = ["to_html"]


def _fold_config(r: Reading) -> dict[str, Any]:
    """What the page needs to fold library frames as the summary does."""
    f = r.folder
    return {"known": f.known, "stdlib": f.stdlib, "site": f.site_dirs, "app": f.app}


def _step_names(r: Reading) -> dict[str, str]:
    """``{"t9@3": "render_report (reports.py:88)"}``: what each long task step ran (its
    task's id and step number), so the timeline labels the step by it."""
    out: dict[str, str] = {}
    for tid, task in r.index.tasks.items():
        steps = task.get("steps")
        for j, step in enumerate(steps if isinstance(steps, list) else ()):
            if not isinstance(step, (list, tuple)) or len(step) < 2:
                continue
            s, d = num(step[0]), num(step[1])
            if s is None or d is None or d < SLOW_STEP:
                continue
            name = r.index.step_label(s, s + d, None)
            if name != "?":
                out[f"{text(tid)}@{j}"] = name
    return out


def _esc(value: object) -> str:
    return html.escape(text(value), quote=True)


def _fleet(trig: dict[str, Any]) -> str:
    # The incident (fleet) and the trace of the trigger request, for the tracing backend.
    bits = []
    if trig.get("incident"):
        bits.append(f"incident <code>{_esc(trig.get('incident'))}</code>")
    origin = trig.get("origin")
    if isinstance(origin, dict):
        bits.append(f"opened by <b>{_esc(origin.get('service'))}</b>")
    request = trig.get("request")
    if isinstance(request, dict) and request.get("trace_id"):
        bits.append(f"trace <code>{_esc(request.get('trace_id'))}</code>")
    return "".join(f" · {bit}" for bit in bits)


def _breakdowns(doc: dict[str, Any], r: Reading) -> dict[str, Any]:
    """``{request id: {sentence, lines}}`` for the trigger request and the slowest ones."""
    end = r.window_end
    reqs = sorted(
        dicts(doc.get("requests")),
        key=lambda q: -(request_duration(q, end)[0] or 0.0),
    )[:BREAKDOWNS]
    if r.trigger_request is not None:
        reqs.insert(0, r.trigger_request)
    out: dict[str, Any] = {}
    for req in reqs:
        key = text(req.get("id"))
        if key in out:
            continue
        b = breakdown(doc, req, r.index)
        if b is not None:
            out[key] = {"sentence": sentence(b), "lines": table(b)}
    return out


def _header(doc: dict[str, Any], r: Reading) -> str:
    trig = section(doc, "trigger")
    proc = section(doc, "process")
    win = section(doc, "window")
    start, end = num(win.get("start")), num(win.get("end"))
    span = end - start if start is not None and end is not None else None
    dropped = int(num(win.get("dropped")) or 0)
    events = num(win.get("events"))
    found = findings(doc, r)
    items = "".join(
        f'<li class="earlier">{_esc(f)}</li>'
        if f.startswith("earlier: ")
        else f"<li>{_esc(f)}</li>"
        for f in found
    )
    items = items or '<li class="none">nothing</li>'
    proc_bits = [f"service <b>{_esc(proc.get('service'))}</b>"] if proc.get("service") else []
    proc_bits += [
        f"pid <b>{_esc(proc.get('pid'))}</b>",
        f"host <b>{_esc(proc.get('hostname'))}</b>",
        f"Python <b>{_esc(proc.get('python'))}</b>",
        f"loop <b>{_esc(proc.get('loop'))}</b>",
        f"flightdeck <b>{_esc(proc.get('flightdeck'))}</b>",
    ]
    host = dicts(doc.get("processes"))
    if host:
        listed = ", ".join(
            f"<b>{_esc(p.get('pid'))}</b>"
            + (f" (not read: {_esc(p.get('error'))})" if p.get("error") else "")
            for p in host
        )
        proc_bits.append(f'<span id="processes">processes {listed}</span>')
    win_bits = [
        f"window <b>{_esc(fmt_duration(span))}</b>"
        f" ({_esc(utc_text(start))} → {_esc(utc_text(end))} UTC)",
    ]
    if events is not None:
        win_bits.append(f"<b>{int(events)}</b> events")
    win_bits.append(f'<span class="{"warn" if dropped else ""}"><b>{dropped}</b> dropped</span>')
    why_line = why(r)
    why_div = f'\n<div class="why" id="why">{_esc(why_line)}</div>' if why_line is not None else ""
    return f"""<header id="header">
<div class="title"><span class="brand">flightdeck</span> snapshot <code>{_esc(doc.get("id"))}</code>
 <span class="muted">created {_esc(doc.get("created_at"))}</span></div>
<div class="trigger" id="trigger">trigger <span class="kind">{_esc(trig.get("kind") or "?")}</span>
 {_esc(trig.get("reason"))}{_fleet(trig)}</div>{why_div}
<div class="meta" id="process">{" · ".join(proc_bits)}</div>
<div class="meta" id="window">{" · ".join(win_bits)}</div>
<details open><summary>what stands out</summary><ul id="findings">{items}</ul></details>
</header>"""


_CSS = """
*{box-sizing:border-box}
html,body{margin:0;height:100%;background:#f6f7f9;color:#1d2330;
 font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
body{display:flex;flex-direction:column}
#header{padding:8px 12px;background:#fff;border-bottom:1px solid #d8dce3}
#header .title{font-size:14px}
#header .brand{font-weight:700;color:#2f5fb3}
#header code{background:#eef1f6;padding:0 4px;border-radius:3px}
.muted{color:#6b7280}
.trigger{margin-top:2px}
.why{margin-top:2px;font-weight:600;color:#1d2330}
#details .breakdown{background:#fff8e6;border:1px solid #f0d9a0}
#details button.full{font:inherit;font-size:11px;padding:0 6px;margin:2px 0;cursor:pointer}
.trigger .kind{background:#d62828;color:#fff;padding:0 6px;border-radius:3px;font-weight:700}
.meta{color:#374151}.meta b{color:#111}.warn b{color:#d62828}
details summary{cursor:pointer;color:#374151;margin-top:4px}
#findings{margin:2px 0 0;padding-left:22px;max-height:7.5em;overflow:auto}
#findings li.none{color:#6b7280;list-style:none}
#findings li.earlier{color:#6b7280}
#toolbar{display:flex;gap:6px;align-items:center;padding:4px 12px;background:#eef1f6;
 border-bottom:1px solid #d8dce3;flex-wrap:wrap}
#toolbar button{font:inherit;padding:1px 8px;border:1px solid #b8bfcc;background:#fff;
 border-radius:3px;cursor:pointer}
#toolbar button:hover{background:#e3e8f1}
#shortcuts{color:#4b5563}
#shortcuts kbd{border:1px solid #b8bfcc;border-radius:3px;padding:0 3px;background:#fff}
#legend .entry{white-space:nowrap;margin-left:8px}
#legend .swatch{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:-1px}
#main{flex:1;display:flex;min-height:0}
#wrap{flex:1;position:relative;min-width:0}
#timeline{position:absolute;inset:0;width:100%;height:100%;cursor:grab;outline:none}
#timeline.dragging{cursor:grabbing}
#details{width:360px;overflow:auto;background:#fff;border-left:1px solid #d8dce3;padding:8px 10px}
#details h3{margin:0 0 6px;font-size:13px;overflow-wrap:anywhere}
#details table{border-collapse:collapse;width:100%;table-layout:fixed}
#details td{vertical-align:top;padding:1px 4px 1px 0;overflow-wrap:anywhere}
#details td.k{color:#6b7280;width:8em}
#details pre{background:#f3f4f6;padding:6px;margin:4px 0;white-space:pre-wrap;
 overflow-wrap:anywhere;font-size:12px}
#status{padding:2px 12px;background:#fff;border-top:1px solid #d8dce3;color:#4b5563;
 white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-height:1.5em}
"""

_BODY = """
<div id="toolbar">
 <button id="btn-fit" title="fit the whole window (0 or f)">fit</button>
 <button id="btn-trigger" title="zoom to the trigger (t)">trigger</button>
 <button id="btn-in" title="zoom in (+)">+</button>
 <button id="btn-out" title="zoom out (-)">−</button>
 <span id="shortcuts">wheel/<kbd>+</kbd><kbd>-</kbd> zoom · drag/<kbd>←</kbd><kbd>→</kbd> pan ·
 <kbd>↑</kbd><kbd>↓</kbd>/shift+wheel scroll rows · <kbd>0</kbd>/<kbd>f</kbd> fit ·
 <kbd>t</kbd> trigger · click for details · <kbd>Esc</kbd> clear</span>
 <span id="legend" title="every colour the timeline draws"></span>
</div>
<div id="main"><div id="wrap"><canvas id="timeline" tabindex="0"></canvas></div>
<aside id="details"><p class="muted">Click a slice for details.</p></aside></div>
<div id="status"></div>
"""


@functools.cache
def _script() -> bytes:
    """The timeline script (``timeline.js``, package data), read once."""
    return files("flightdeck.export").joinpath("timeline.js").read_bytes()


def to_html(doc: dict[str, Any]) -> bytes:
    """A single self-contained HTML page with an interactive timeline of the snapshot."""
    # "<" only occurs inside JSON strings, where "\\u003c" means the same; with none left the
    # data can never end its <script> element or start a comment.
    data = orjson.dumps(doc, default=repr, option=orjson.OPT_NON_STR_KEYS).replace(b"<", b"\\u003c")
    # A host capture is read process by process (the capturing one first): task and request
    # ids are unique across them, so the diagnosis of each merges into one.
    split = split_processes(doc)
    readings = [Reading(part) for part in split]
    reading = readings[0]
    diagnosis: dict[str, Any] = {"breakdowns": {}, "step_names": {}, "owners": {}}
    for part, r in zip(split, readings, strict=True):
        diagnosis["breakdowns"].update(_breakdowns(part, r))
        diagnosis["step_names"].update(_step_names(r))
        diagnosis["owners"].update({text(k): v for k, v in r.owners.items() if v != USER})
    diagnosis["fold"] = _fold_config(reading)
    extra = orjson.dumps(diagnosis).replace(b"<", b"\\u003c")
    trig = section(doc, "trigger")
    title = f"flightdeck {text(trig.get('kind')) or 'snapshot'} · {text(doc.get('id'))}"
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # Defence in depth: the page may be opened from an untrusted download.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
    )
    parts = [
        head.encode(),
        _header(doc, reading).encode(),
        _BODY.encode(),
        b'<script type="application/json" id="flightdeck-data">',
        data,
        b'</script>\n<script type="application/json" id="flightdeck-diagnosis">',
        extra,
        b"</script>\n<script>",
        _script(),
        b"</script>\n</body></html>\n",
    ]
    return b"".join(parts)
