"""The debug endpoint's HTML pages: the snapshot list and the login form."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from ..snapshot.document import FORMATS

_STYLE = """body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
input, button { font: inherit; padding: .3em .6em; }
p.error { color: #a00; }"""


def login_page(base: str, error: str = "") -> str:
    """The form that exchanges the endpoint's token for a session cookie."""
    e = html.escape
    message = f'<p class="error">{e(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flightdeck: log in</title>
<style>{_STYLE}</style></head>
<body>
<h1>flightdeck</h1>
<p>This endpoint needs its token (<code>FLIGHTDECK_TOKEN</code>). Logging in sets a
cookie for this endpoint only, valid for a few hours.</p>
{message}
<form method="post" action="{e(base)}/login">
<label>Token <input type="password" name="token" autocomplete="current-password"
 required autofocus></label>
<button type="submit">Log in</button>
</form>
</body></html>
"""


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1 << 20):.1f} MiB"


def _render_row(item: dict[str, Any], base: str) -> str:
    e = html.escape
    url = f"{base}/snapshots/{item['id']}"
    request = item.get("request")
    described = ""
    if request:
        described = f"{request['method']} {request['path']}"
        if request.get("status") is not None:
            described += f" → {request['status']}"
        if request.get("duration") is not None:
            described += f" in {request['duration']:.3f} s"
    return (
        "<tr>"
        f"<td>{e(str(item['created_at']))}</td>"
        f"<td>{e(str(item['trigger']['kind']))}"
        f"{e(' · ' + str(item['service'])) if item.get('service') else ''}</td>"
        f"<td>{e(str(item['trigger']['reason']))}</td>"
        f"<td>{e(described)}</td>"
        f"<td>{e(str(item.get('pid') or ''))}{e(_others(item))}</td>"
        f"<td>{e(_size(int(item.get('size') or 0)))}</td>"
        f"<td>{_links(e(url))}</td>"
        "</tr>"
    )


def _others(item: dict[str, Any]) -> str:
    """`` (+3 processes)`` for a host capture holding the windows of three others."""
    processes = item.get("processes")
    if not isinstance(processes, list) or len(processes) < 2:
        return ""
    n = len(processes) - 1
    return f" (+{n} process{'es' if n != 1 else ''})"


def _links(url: str) -> str:
    """A link per export format (the table in ``snapshot.document``): shown ones open in a
    tab, the others download."""
    links = []
    for name, fmt in FORMATS.items():
        href = url if name == "json" else f"{url}?format={name}"
        if fmt.disposition == "inline":
            label = "view" if name == "html" else name
            links.append(f'<a href="{href}" target="_blank" rel="noopener noreferrer">{label}</a>')
        else:
            links.append(f'<a href="{href}" download>{name}</a>')
    return " · ".join(links)


def _render_rows(listing: list[dict[str, Any]], base: str) -> str:
    # Snapshots of one fleet incident are listed together, under a row naming it, where
    # the newest of them would be; the others keep their place (newest first).
    e = html.escape
    groups: dict[str | None, list[dict[str, Any]]] = {}
    order: list[tuple[str | None, dict[str, Any]]] = []
    for item in listing:
        incident = item.get("incident")
        if incident is None or incident not in groups:
            order.append((incident, item))
        if incident is not None:
            groups.setdefault(incident, []).append(item)
    rows = []
    for incident, item in order:
        if incident is None:
            rows.append(_render_row(item, base))
            continue
        rows.append(
            f'<tr class="incident"><td colspan="7">incident {e(incident)}'
            f" · {len(groups[incident])} snapshot(s)</td></tr>"
        )
        rows.extend(_render_row(member, base) for member in groups[incident])
    return "\n".join(rows)


def render_index(
    listing: list[dict[str, Any]],
    base: str,
    nonce: str,
    logout: bool = False,
    not_captured: Iterable[str] = (),
    host: bool = False,
) -> str:
    """The snapshot list with its "capture now" button (the script carries ``nonce``);
    with ``logout``, a button that clears the session cookie. ``not_captured`` leads it:
    ignored environment values and what the gate refused lately. ``host`` (a snapshot
    directory is shared): a button capturing every worker sharing it too."""
    e = html.escape
    every = (
        f' <button class="capture" id="capture-host" data-url="{e(base)}/snapshots?scope=host"'
        ' title="one snapshot of every live process sharing the snapshot directory">'
        "Capture all workers</button>"
        if host
        else ""
    )
    out = (
        f' · <form method="post" action="{e(base)}/logout" style="display:inline">'
        '<button id="logout" type="submit">Log out</button></form>'
        if logout
        else ""
    )
    rows = _render_rows(listing, base) or ('<tr><td colspan="7">No snapshots yet.</td></tr>')
    notes = "".join(f"<li>{e(note)}</li>" for note in not_captured)
    banner = f'<ul id="not-captured" role="status">{notes}</ul>' if notes else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flightdeck</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; }}
td:nth-child(3), td:nth-child(4) {{ overflow-wrap: anywhere; }}
button {{ font: inherit; padding: .3em 1em; }}
tr.incident td {{ background: #f3f0e6; font-weight: 600; }}
#message {{ margin-left: 1em; color: #a00; }}
#not-captured {{ background: #fff4d6; border: 1px solid #e0c36a; padding: .5em 1em .5em 2em; }}
</style></head>
<body>
<h1>flightdeck</h1>
<p><button class="capture" id="capture" data-url="{e(base)}/snapshots">Capture now</button>{every}
<span id="message"></span> · <a href="{e(base)}/status">status</a>{out}</p>
{banner}
<table>
<thead><tr><th>created</th><th>trigger</th><th>reason</th><th>request</th><th>pid</th>
<th>size</th><th>download</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script nonce="{e(nonce)}">
const message = document.getElementById("message");
for (const button of document.querySelectorAll("button.capture")) {{
  button.addEventListener("click", async () => {{
    button.disabled = true;
    message.textContent = "";
    try {{
      const answer = await fetch(button.dataset.url, {{
        method: "POST", headers: {{"Accept": "application/json"}}, credentials: "same-origin"
      }});
      if (answer.ok) {{ location.reload(); return; }}
      const body = await answer.json().catch(() => ({{}}));
      message.textContent = "Capture failed: " + (body.error || answer.status);
    }} catch (error) {{
      message.textContent = "Capture failed: " + error;
    }}
    button.disabled = false;
  }});
}}
</script>
</body></html>
"""
