"""Cost of query redaction per request: ``redact_query`` on typical query strings.

The middleware calls it only when a query string is present, on the event loop, so this is
added latency per request with a query. Prints nanoseconds per call, the minimum over
rounds of timeit repeats (the least disturbed run: on a shared box the median swings with
other load). ``--against FILE`` loads another version of ``flightdeck/asgi/redact.py``
(e.g. ``git show REV:flightdeck/asgi/redact.py > /tmp/old_redact.py``) and measures both,
interleaved round by round, in this one process. ``--callgrind`` counts instructions per
call under valgrind instead (deterministic, whatever else the machine runs; ~3 min).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
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


def _instructions(against: str | None, case: int, calls: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += [__file__, "--calls", str(calls), "--case", str(case)]
    cmd += ["--against", against] if against else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", out)
    assert found is not None, out
    return int(found.group(1))


def callgrind(against: str | None) -> None:
    """Instructions per call: (a run of 2000 calls - a run of none) / 2000, per version."""
    calls = 2000
    versions: dict[str, str | None] = {"this": None}
    if against:
        versions["other"] = against
    per_call: dict[tuple[str, str], float] = {}
    for version, path in versions.items():
        base = _instructions(path, 0, 0)
        for i, (name, _) in enumerate(CASES):
            per_call[version, name] = (_instructions(path, i, calls) - base) / calls
    print(f"python {sys.version.split()[0]}; instructions per call (callgrind)")
    print("case".ljust(16) + "".join(v.rjust(10) for v in versions))
    for name, _ in CASES:
        row = name.ljust(16) + "".join(f"{per_call[v, name]:10.0f}" for v in versions)
        if against:
            row += f"{per_call['this', name] / per_call['other', name]:10.2f}"
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="FILE", help="another redact.py to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)  # one run under valgrind
    parser.add_argument("--case", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.calls is not None:
        func = _load(args.against) if args.against else redact_query
        query = CASES[args.case][1]
        func(query)
        for _ in range(args.calls):
            func(query)
        return
    if args.callgrind:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        callgrind(args.against)
        return
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
