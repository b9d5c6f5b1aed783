"""Cost of query redaction per request: ``redact_query`` on typical query strings.

The middleware calls it only when a query string is present, on the event loop, so this is
added latency per request with a query. Prints the median of several timeit repeats in
nanoseconds per call. Run it against another checkout with ``PYTHONPATH=<checkout>``.
"""

from __future__ import annotations

import statistics
import sys
import timeit

from flightdeck.asgi.redact import redact_query

CASES: list[tuple[str, bytes]] = [
    ("plain, 2 keys", b"page=2&sort=desc"),
    ("plain, encoded", b"q=hello%20world&page=2"),
    ("plain, 12 keys", b"&".join(b"field%d=value%d" % (i, i) for i in range(12))),
    ("sensitive", b"user=42&access_token=abcdef0123456789"),
    ("nested URL", b"next=https%3A%2F%2Fa.example%2Fcb%3Faccess_token%3Dabc&x=1"),
]


def main() -> None:
    number, repeat = 20_000, 9
    print(f"python {sys.version.split()[0]}; median of {repeat} x {number} calls")
    for name, query in CASES:
        times = timeit.repeat(lambda q=query: redact_query(q), number=number, repeat=repeat)
        per_call = statistics.median(times) / number * 1e9
        print(f"{name:16} {per_call:8.0f} ns/call  {redact_query(query)[:60]}")


if __name__ == "__main__":
    main()
