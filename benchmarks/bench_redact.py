"""Cost of query redaction per request: ``redact_query`` on typical query strings.

The middleware calls it only when a query string is present, on the event loop, so this is
added latency per request with a query. Prints nanoseconds per call, the minimum over
rounds of timeit repeats (the least disturbed run: on a shared box the median swings with
other load). ``--against FILE`` loads another version of ``flightdeck/asgi/redact.py``
(e.g. ``git show REV:flightdeck/asgi/redact.py > /tmp/old_redact.py``) and measures both,
interleaved round by round, in this one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
from collections.abc import Callable

from flightdeck.asgi.redact import redact_query

CASES: list[tuple[str, bytes]] = [
    ("plain, 2 keys", b"page=2&sort=desc"),
    ("plain, encoded", b"q=hello%20world&page=2"),
    ("plain, 12 keys", b"&".join(b"field%d=value%d" % (i, i) for i in range(12))),
    ("sensitive", b"user=42&access_token=abcdef0123456789"),
    ("nested URL", b"next=https%3A%2F%2Fa.example%2Fcb%3Faccess_token%3Dabc&x=1"),
]


def _load(path: str) -> Callable[[bytes], str]:
    # Named inside the package so that its relative imports resolve to this flightdeck.
    spec = importlib.util.spec_from_file_location("flightdeck.asgi._bench_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    func: Callable[[bytes], str] = module.redact_query
    return func


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="FILE", help="another redact.py to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    versions = {"this": redact_query}
    if args.against:
        versions["other"] = _load(args.against)
    number = 20_000
    best = {(v, name): float("inf") for v in versions for name, _ in CASES}
    for _ in range(args.rounds):
        for name, query in CASES:
            for version, func in versions.items():
                t = min(timeit.repeat(lambda f=func, q=query: f(q), number=number, repeat=3))
                best[version, name] = min(best[version, name], t / number * 1e9)
    print(f"python {sys.version.split()[0]}; ns per call, min over {args.rounds} rounds x 3")
    header = "case".ljust(16) + "".join(v.rjust(10) for v in versions)
    print(header + ("     ratio" if len(versions) == 2 else ""))
    for name, query in CASES:
        row = name.ljust(16) + "".join(f"{best[v, name]:10.0f}" for v in versions)
        if len(versions) == 2:
            row += f"{best['this', name] / best['other', name]:10.2f}"
        print(row + "   " + redact_query(query)[:48])


if __name__ == "__main__":
    main()
