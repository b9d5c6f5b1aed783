"""Exporters: the text summary, Perfetto's trace format, the offline HTML timeline.

Importing this package registers the formats with ``Snapshot.dumps`` (the snapshot layer
sits below the exporters and knows them only by name).
"""

from ..snapshot.document import register_exporter
from .html import to_html
from .perfetto import to_perfetto
from .pftrace import to_pftrace
from .summary import summarize


def to_summary(doc: dict[str, object]) -> bytes:
    """The ``flightdeck summary`` text, UTF-8."""
    return summarize(doc).encode()


register_exporter("perfetto", to_perfetto)
register_exporter("pftrace", to_pftrace)
register_exporter("html", to_html)
register_exporter("summary", to_summary)
