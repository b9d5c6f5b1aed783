"""Shared by the export tests: real snapshots of the example's routes (see ``incidents``)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ROOT, free_port, wait_until

#: A new connection per request: uvicorn closes idle keep-alive connections after 5 s.
FRESH = httpx.Limits(max_keepalive_connections=0)


@pytest.fixture(scope="session")
def incidents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """``{route: snapshot document}`` for each of the example's incident routes (and
    ``/block``, ``/error``), from one real uvicorn serving ``incident_app.py`` while a
    client keeps browsing ``/debug/flight``, as a user opening the list page would."""
    tmp = tmp_path_factory.mktemp("incidents")
    port = free_port()
    env = dict(os.environ, FLIGHTDECK_DIR=str(tmp), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("FLIGHTDECK_TOKEN", None)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent)]
    cmd += ["incident_app:app", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()

    def up() -> bool:
        try:
            return httpx.get(base + "/fast", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def browse() -> None:
        # The list page, the status and the newest snapshot's page, over and over.
        with httpx.Client(base_url=base, timeout=10, limits=FRESH) as c:
            while not stop.is_set():
                try:
                    c.get("/debug/flight")
                    c.get("/debug/flight/status")
                    items = c.get("/debug/flight/snapshots").json()
                    if items:
                        c.get(f"/debug/flight/snapshots/{items[0]['id']}?format=html")
                except httpx.HTTPError:
                    pass
                stop.wait(0.15)

    docs: dict[str, dict[str, Any]] = {}
    browser: threading.Thread | None = None
    try:
        wait_until(up, timeout=30, interval=0.1)
        browser = threading.Thread(target=browse, daemon=True)
        browser.start()
        with httpx.Client(base_url=base, timeout=30, limits=FRESH) as c:

            def snapshot_for(path: str, kind: str | None = None) -> None:
                def find() -> str | None:
                    for item in c.get("/debug/flight/snapshots").json():
                        req = item.get("request") or {}
                        if req.get("path") == path and kind in (None, item["trigger"]["kind"]):
                            return str(item["id"])
                    return None

                ident = wait_until(find, timeout=20, interval=0.1)
                docs[path] = c.get(f"/debug/flight/snapshots/{ident}?format=json").json()

            def visit(path: str, **params: Any) -> None:
                time.sleep(0.5)  # a user's tour: each incident apart from the one before
                c.get(path, params=params)
                snapshot_for(path)

            visit("/block", ms=300)
            visit("/error")
            time.sleep(1.0)  # the incidents below come seconds after these
            visit("/incident/hog")
            visit("/incident/timeouts")
            visit("/incident/gc")
            time.sleep(0.5)
            # The holder's request is sent (and so reaches the lock) before the waiter's.
            holder = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            # Held 3 s: the waiter still waits when the holder's slow_request fires (1 s).
            holder.request("GET", "/incident/lock?ms=3000")
            time.sleep(0.3)
            c.get("/incident/lock-waiter")
            holder.getresponse().read()
            holder.close()
            snapshot_for("/incident/lock")
            visit("/incident/pool")
    finally:
        # The documents are plain data: the server and the browsing stop before any test
        # runs (a session's later tests must not share the machine with them).
        stop.set()
        if browser is not None:
            browser.join(timeout=15)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    yield docs
