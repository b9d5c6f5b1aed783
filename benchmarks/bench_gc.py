"""The cyclic GC's young collections per 1,000 requests under uvicorn and wrk, per variant.

CPython starts a young collection when the count of new GC objects (less those freed) passes
a threshold (700); each request a server holds in flight keeps some, so what a middleware
makes per request can raise how often every request pays for a collection, which callgrind
of an in-process driver does not show. The servers are those of ``bench_http.py`` (uvicorn
pinned to CPU 0, wrk to CPU 1, 32 connections), with ``apps.GcCount`` outside the variant:
``GET /__gc`` before and after each wrk run gives the requests and the collections of each
generation between them. Variants are hit in shuffled order, round after round; the figures
are medians of the rounds.

Run: ``.venv/bin/python benchmarks/bench_gc.py [--loops asyncio uvloop] [--apps steps]
[--variants bare fd_mw fd_full] [--rounds 5] [--duration 6]`` (~4 min as given).
Writes ``results/bench_gc.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import apps as bench_apps
from _common import header, machine, median, write_json
from bench_http import LABELS, LOOPS, Server, run_wrk


def counts(server: Server) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/__gc"
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--apps", nargs="+", choices=bench_apps.APPS, default=["steps"])
    parser.add_argument(
        "--variants", nargs="+", choices=bench_apps.VARIANTS, default=["bare", "fd_mw", "fd_full"]
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk per server")
    args = parser.parse_args()
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    header("bench_gc: young collections per 1,000 requests under uvicorn and wrk")
    rng = random.Random(7)
    results: dict[str, Any] = {"machine": machine(), "rounds": args.rounds, "runs": {}}
    rows = []
    for lp in args.loops:
        for app in args.apps:
            servers = {v: Server(app, v, lp) for v in args.variants}
            for s in servers.values():
                s.env["BENCH_GC"] = "1"
            per: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
            try:
                for s in servers.values():
                    s.start()
                    run_wrk(s.url, args.warmup)
                for _ in range(args.rounds):
                    order = list(args.variants)
                    rng.shuffle(order)
                    for v in order:
                        s = servers[v]
                        before = counts(s)
                        t0 = time.monotonic()
                        load = run_wrk(s.url, args.duration)
                        elapsed = time.monotonic() - t0
                        after = counts(s)
                        n = after["requests"] - before["requests"]
                        if n <= 0:
                            raise SystemExit(f"bench_gc: no request reached {s.command()}")
                        per[v].append(
                            {
                                "requests": n,
                                "rps": load["rps"],
                                "seconds": elapsed,
                                **{
                                    f"gen{g}_per_1k": (after["collections"][g] - c) * 1000 / n
                                    for g, c in enumerate(before["collections"])
                                },
                            }
                        )
            finally:
                for s in servers.values():
                    s.stop()
            for v in args.variants:
                runs = per[v]
                row = {
                    "loop": lp,
                    "app": app,
                    "variant": v,
                    "rps": median([r["rps"] for r in runs]),
                    **{
                        f"gen{g}_per_1k": median([r[f"gen{g}_per_1k"] for r in runs])
                        for g in range(3)
                    },
                }
                rows.append(row)
                results["runs"][f"{lp}/{app}/{v}"] = runs
    results["rows"] = rows
    print("\n| loop | app | variant | req/s | young (gen 0) | gen 1 | gen 2 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['loop']} | {r['app']} | {LABELS[r['variant']]} | {r['rps']:,.0f} "
            f"| {r['gen0_per_1k']:.1f} | {r['gen1_per_1k']:.2f} | {r['gen2_per_1k']:.2f} |"
        )
    print(f"\n   results: {write_json('bench_gc.json', results)}")


if __name__ == "__main__":
    main()
