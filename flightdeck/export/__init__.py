"""Exporters: the text summary, Perfetto's trace formats, the offline HTML timeline.

Importing this package registers each format, once, with its converter and how it is
served and saved (``ExportFormat``): ``Snapshot.dumps``, the endpoint and the CLI read
that table. The snapshot layer sits below the exporters and knows them only through it.

Each converter imports its exporter when first called: registering costs no import, so a
process that converts to JSON only (``python -m flightdeck convert --format json``, the
endpoint's child) does not load the HTML, Perfetto and summary code.
"""

from __future__ import annotations

from typing import Any

from ..snapshot.document import ExportFormat, register_format


def to_perfetto(doc: dict[str, Any]) -> bytes:
    """Chrome Trace Event JSON (``perfetto.py``)."""
    from .perfetto import to_perfetto as convert

    return convert(doc)


def to_pftrace(doc: dict[str, Any]) -> bytes:
    """Perfetto's protobuf trace (``pftrace.py``)."""
    from .pftrace import to_pftrace as convert

    return convert(doc)


def to_html(doc: dict[str, Any]) -> bytes:
    """The self-contained HTML timeline (``html.py``)."""
    from .html import to_html as convert

    return convert(doc)


def to_summary(doc: dict[str, Any]) -> bytes:
    """The ``flightdeck summary`` text, UTF-8."""
    from .summary import summarize

    return summarize(doc).encode()


register_format(
    ExportFormat(
        "perfetto",
        to_perfetto,
        "application/json",
        "attachment",
        ".perfetto.json",
        "Chrome Trace Event JSON for ui.perfetto.dev and chrome://tracing",
    )
)
register_format(
    ExportFormat(
        "pftrace",
        to_pftrace,
        "application/octet-stream",
        "attachment",
        ".pftrace",
        "Perfetto's protobuf trace (smaller and faster to write than the JSON)",
    )
)
register_format(
    ExportFormat(
        "html",
        to_html,
        "text/html; charset=utf-8",
        "inline",
        ".html",
        "one self-contained page with an interactive timeline",
    )
)
register_format(
    ExportFormat(
        "summary",
        to_summary,
        "text/plain; charset=utf-8",
        "inline",
        ".txt",
        "the text of `flightdeck summary`",
    )
)
