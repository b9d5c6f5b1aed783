"""Fork after start, and real multi-worker servers sharing a directory.

The fork tests run in a fresh interpreter (a script in a subprocess), so that fork() never
copies pytest's own threads.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from support import ROOT, ServerProcess, get_json

PREFIX = "/debug/flight"

_FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, multiprocessing, os, sys, threading, time
    import flightdeck
    from flightdeck import FlightRecorder

    def logs(rec):
        doc = rec.snapshot("check").to_dict()
        return doc, [e.get("message") for e in doc["events"] if e["kind"] == "log"]

    def wait_for(predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    async def fresh_loop_in_child():
        # The child's own event loop, with its own recorder: a block is seen with its stack.
        rec = FlightRecorder(loop_blocked=0.05)
        rec.start()
        await asyncio.sleep(0.1)
        time.sleep(0.3)
        await asyncio.sleep(0.2)
        doc = rec.snapshot("child loop").to_dict()
        rec.stop()
        return [b["duration"] for b in doc["loop"] if b["kind"] == "block"]

    def child_checks(rec, parent_thread):
        out = {}
        thread = rec._thread
        out["thread_alive"] = thread is not None and thread.is_alive()
        out["new_thread"] = thread is not parent_thread
        before = rec.stats["recorded"]
        flightdeck.log("test", "child-only")
        # The child's recorder thread compacts on its own: no snapshot needed to drain (the
        # native core counts an event as recorded when emitted, the pure one when drained).
        out["drained"] = wait_for(lambda: rec.stats["recorded"] > before)
        doc, messages = logs(rec)
        out["messages"] = messages
        out["pid_ok"] = doc["process"]["pid"] == os.getpid()
        box = {}
        t = threading.Thread(target=lambda: box.update(blocks=asyncio.run(fresh_loop_in_child())))
        t.start()
        t.join(20)
        out["child_loop_blocks"] = box.get("blocks")
        return out

    def mp_target(conn, parent_thread_ident):
        rec = flightdeck.snapshot.recorder.active_recorders()[0]
        try:
            out = child_checks(rec, None)
            out["new_thread"] = rec._thread.ident != parent_thread_ident or out["new_thread"]
        except BaseException as exc:
            out = {"error": repr(exc)}
        conn.send(out)

    async def main():
        rec = FlightRecorder(loop_blocked=0.05)
        rec.start()
        flightdeck.log("test", "parent-before")
        await asyncio.sleep(0.1)
        parent_thread = rec._thread
        results = {}
        r, w = os.pipe()
        pid = os.fork()  # from the loop thread, while the recorder runs
        if pid == 0:
            try:
                out = child_checks(rec, parent_thread)
            except BaseException as exc:
                out = {"error": repr(exc)}
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        results["fork"] = json.loads(b"".join(chunks) or b"{}")
        results["fork_exit"] = status

        ctx = multiprocessing.get_context("fork")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=mp_target, args=(there, parent_thread.ident))
        proc.start()
        results["mp"] = here.recv() if here.poll(30) else {"error": "no answer"}
        proc.join(10)
        results["mp_exit"] = proc.exitcode

        # The parent is unaffected: same thread, still recording, still watching the loop.
        flightdeck.log("test", "parent-after")
        blocks_before = rec.stats["watchdog"]["blocks"]
        time.sleep(0.3)
        await asyncio.sleep(0.2)
        doc, messages = logs(rec)
        results["parent"] = {
            "same_thread": rec._thread is parent_thread and parent_thread.is_alive(),
            "messages": messages,
            "new_blocks": rec.stats["watchdog"]["blocks"] - blocks_before,
            "pid_ok": doc["process"]["pid"] == os.getpid(),
        }
        rec.stop()
        print(json.dumps(results))

    asyncio.run(main())
    """
)


def test_fork_after_start_child_records_on_its_own(tmp_path: Path) -> None:
    script = tmp_path / "fork_check.py"
    script.write_text(_FORK_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("fork", "mp"):
        child = results[name]
        assert "error" not in child, child
        assert child["thread_alive"] and child["new_thread"], (name, child)
        assert child["drained"], (name, child)
        # Records on its own: what the child logged, none of what the parent had recorded.
        assert child["messages"] == ["child-only"], (name, child)
        assert child["pid_ok"]
        # A fresh loop in the child gets a working recorder and watchdog (locks re-made).
        assert child["child_loop_blocks"] and max(child["child_loop_blocks"]) >= 0.25, child
    assert results["fork_exit"] == 0 and results["mp_exit"] == 0
    parent = results["parent"]
    assert parent["same_thread"] and parent["pid_ok"]
    assert parent["messages"] == ["parent-before", "parent-after"]
    assert parent["new_blocks"] == 1


# -- several workers, one directory ----------------------------------------------------------


def _request(port: int, conn: http.client.HTTPConnection | None, method: str, path: str) -> Any:
    assert conn is not None
    conn.request(method, path)
    answer = conn.getresponse()
    return answer.status, answer.read()


def _check_shared_directory(srv: ServerProcess, deadline_s: float = 45.0) -> None:
    """Captures from both workers are listed by, and downloadable from, either worker."""
    deadline = time.monotonic() + deadline_s
    pids: set[int] = set()
    while True:
        # A new connection each time: the kernel spreads them over the workers.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        status, _ = _request(srv.port, conn, "POST", PREFIX + "/snapshots")
        conn.close()
        # 429: that worker's manual captures are used up; 409: a capture (an automatic one
        # a loaded machine's loop lag can fire) is being taken there: ask again
        assert status in (201, 409, 429)
        listing = get_json(srv.url + PREFIX + "/snapshots")
        pids = {item["pid"] for item in listing}
        if len(pids) >= 2:
            break
        assert time.monotonic() < deadline, f"snapshots from one worker only: {pids}"
    ids = [item["id"] for item in get_json(srv.url + PREFIX + "/snapshots")]
    served_by: set[int] = set()
    while served_by != pids:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        status, body = _request(srv.port, conn, "GET", "/pid")
        worker = json.loads(body)["pid"]
        for ident in ids:  # the same connection, so the same worker serves every one
            status, body = _request(srv.port, conn, "GET", f"{PREFIX}/snapshots/{ident}")
            assert status == 200 and json.loads(body)["id"] == ident, (worker, ident)
        status, body = _request(srv.port, conn, "GET", PREFIX + "/snapshots")
        assert {item["id"] for item in json.loads(body)} >= set(ids)
        conn.close()
        served_by.add(worker)
        assert time.monotonic() < deadline, f"could not reach every worker: {served_by}/{pids}"


def test_uvicorn_two_workers_share_a_directory(server: Any, tmp_path: Path) -> None:
    srv = server(workers=2, env={"FLIGHTDECK_DIR": str(tmp_path)})
    _check_shared_directory(srv)


def test_gunicorn_preload_two_uvicorn_workers_share_a_directory(
    server: Any, tmp_path: Path
) -> None:
    # --preload: the app (and FlightDeck) is built in the master, then fork()ed into workers.
    srv = server(
        kind="gunicorn", workers=2, env={"FLIGHTDECK_DIR": str(tmp_path)}, args=["--preload"]
    )
    _check_shared_directory(srv)
