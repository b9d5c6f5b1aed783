"""Exporters: the text summary, Perfetto's trace formats, the offline HTML timeline.

Importing this package registers each format, once, with its converter and how it is
served and saved (``ExportFormat``): ``Snapshot.dumps``, the endpoint and the CLI read
that table. The snapshot layer sits below the exporters and knows them only through it.
"""

from ..snapshot.document import ExportFormat, register_format
from .html import to_html
from .perfetto import to_perfetto
from .pftrace import to_pftrace
from .summary import summarize


def to_summary(doc: dict[str, object]) -> bytes:
    """The ``flightdeck summary`` text, UTF-8."""
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
