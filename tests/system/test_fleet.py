"""The fleet against real parts: a real redis-server and real uvicorn processes.

Services A, B and C are separate uvicorn processes with their own ``service`` name. A's
``/chain`` route calls B with the caller's ``traceparent`` and then is slow, so A opens an
incident for that trace; B handled the trace, C did not.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import RedisServer, ServerProcess, http_get, wait_until

from flightdeck.asgi.fleet.signing import Signer
from flightdeck.snapshot.document import Snapshot, new_id

TOKEN = "fleet-test-token"
SECRET = "fleet-test-secret-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE = 30.0


def _options(redis: RedisServer, service: str, **extra: Any) -> dict[str, Any]:
    options = {
        "service": service,
        "fleet": redis.url,
        "fleet_namespace": "t" + secrets.token_hex(4),
        "slow_request": 0.4,
        "loop_blocked": None,
        "capture_delay": 0.05,
        "token": TOKEN,
        "fleet_secret": SECRET,
    }
    options.update(extra)
    return options


def _get(srv: ServerProcess, path: str, **headers: str) -> Any:
    status, _, body = http_get(srv.url + "/debug/flight" + path, **AUTH, **headers)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def _fleet(srv: ServerProcess) -> dict[str, Any]:
    fleet: dict[str, Any] = _get(srv, "/status")["fleet"]
    return fleet


def _start_fleet(
    server: Callable[..., ServerProcess], redis: RedisServer, specs: dict[str, dict[str, Any]]
) -> dict[str, ServerProcess]:
    namespace = "t" + secrets.token_hex(4)
    started = {}
    for name, extra in specs.items():
        options = _options(redis, name, **{"fleet_namespace": namespace, **extra})
        started[name] = server(options=options)
    for srv in started.values():
        wait_until(lambda srv=srv: _fleet(srv)["connected"], timeout=DEADLINE, interval=0.1)
    return started


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _incident(
    srv: ServerProcess, services: set[str], fleet: dict[str, ServerProcess] | None = None
) -> dict[str, Any]:
    """Poll ``srv``'s incident list until one holds snapshots of exactly ``services``.

    At the deadline the failure says what every process of ``fleet`` counted and logged, so a
    miss on a loaded machine tells which step (open, follow, share) did not happen.
    """

    def ready() -> dict[str, Any] | None:
        for incident in _get(srv, "/incidents"):
            if {s["service"] for s in incident["snapshots"]} >= services:
                return dict(incident)
        return None

    try:
        found: dict[str, Any] = wait_until(ready, timeout=DEADLINE, interval=0.1)
    except AssertionError as exc:
        seen = {"incidents": _get(srv, "/incidents")}
        for name, other in (fleet or {}).items():
            status = _get(other, "/status")
            seen[name] = {"fleet": status.get("fleet"), "errors": status.get("errors")}
            seen[name + " log"] = other.log()[-2000:]
        raise AssertionError(f"{exc}: {json.dumps(seen, indent=1, default=str)}") from None
    return found


def _slow_chain(a: ServerProcess, b: ServerProcess, traceparent: str) -> None:
    target = urllib.parse.quote(b.url + "/fast", safe="")
    status, _, _ = http_get(f"{a.url}/chain?next={target}&ms=600", traceparent=traceparent)
    assert status == 200


def test_incident_captures_the_services_of_the_trace(
    server: Callable[..., ServerProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    fleet = _start_fleet(server, redis_server, {"svc-a": {}, "svc-b": {}, "svc-c": {}})
    a, b, c = fleet["svc-a"], fleet["svc-b"], fleet["svc-c"]
    # C serves traffic of another trace meanwhile.
    _, other = _traceparent()
    assert http_get(c.url + "/fast", traceparent=other)[0] == 200
    trace_id, traceparent = _traceparent()
    _slow_chain(a, b, traceparent)

    incident = _incident(c, {"svc-a", "svc-b"}, fleet)
    assert incident["trace_id"] == trace_id
    assert incident["origin"]["service"] == "svc-a"
    assert incident["origin"]["kind"] == "slow_request"
    wait_until(lambda: _fleet(c).get("not_involved", 0) >= 1, timeout=DEADLINE)
    incident = _incident(a, {"svc-a", "svc-b"})  # listed the same from any process
    services = sorted(s["service"] for s in incident["snapshots"])
    assert services == ["svc-a", "svc-b"], services  # none from C

    # The originator's own snapshot and B's follower snapshot say what they are.
    by_service = {s["service"]: s for s in incident["snapshots"]}
    status, headers, body = http_get(
        f"{c.url}/debug/flight/snapshots/{by_service['svc-b']['id']}", **AUTH
    )
    assert status == 200
    doc = Snapshot.load(body).to_dict()
    assert doc["trigger"]["kind"] == "fleet"
    assert doc["trigger"]["incident"] == incident["id"]
    assert doc["trigger"]["origin"]["service"] == "svc-a"
    assert doc["process"]["service"] == "svc-b"
    assert trace_id in {r["trace_id"] for r in doc["requests"]}
    origin = Snapshot.load(
        http_get(f"{b.url}/debug/flight/snapshots/{by_service['svc-a']['id']}", **AUTH)[2]
    ).to_dict()
    assert origin["trigger"]["kind"] == "slow_request"
    assert origin["trigger"]["incident"] == incident["id"]
    assert origin["trigger"]["request"]["trace_id"] == trace_id

    # ?trace_id= finds A's own snapshot locally and B's through the fleet.
    listed = _get(a, f"/snapshots?trace_id={trace_id}")
    assert {item["id"] for item in listed} == {s["id"] for s in incident["snapshots"]}
    assert _get(c, f"/snapshots?trace_id={trace_id}") != []  # only the fleet's, from C
    assert _get(a, f"/snapshots?trace_id={other[3:35]}") == []

    # A fleet snapshot downloads from C like C's own: same headers, same access rules.
    local = _get(c, "/snapshots")
    assert local == []  # C took none: everything it serves below comes from Redis
    fleet_id = by_service["svc-b"]["id"]
    url = f"{c.url}/debug/flight/snapshots/{fleet_id}"
    status, headers, body = http_get(url, **AUTH, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert Snapshot.load(gzip.decompress(body)).id == fleet_id
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-disposition"] == f'attachment; filename="{fleet_id}.json"'
    assert http_get(url)[0] == 401  # no token
    assert http_get(url, Authorization="Bearer wrong")[0] == 401
    status, headers, _ = http_get(url + "?format=html", **AUTH)
    assert status == 200 and "sandbox" in headers["content-security-policy"]
    # A local snapshot on B answers with the very same header names.
    own = f"{b.url}/debug/flight/snapshots/{fleet_id}"
    assert set(http_get(own, **AUTH)[1]) - {"date"} == set(http_get(url, **AUTH)[1]) - {"date"}

    # Pulled from C with the CLI: every snapshot of the incident, checked.
    out = tmp_path / "pulled"
    cmd = [sys.executable, "-m", "flightdeck", "pull", c.url + "/debug/flight"]
    cmd += ["--token", TOKEN, "--incident", incident["id"], "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pulled = sorted(Snapshot.load(p).to_dict()["process"]["service"] for p in out.iterdir())
    assert pulled == ["svc-a", "svc-b"]

    # The HTML list groups B's snapshot under its incident, with A's from the fleet.
    status, _, page = http_get(b.url + "/debug/flight", **AUTH)
    header = f'<tr class="incident"><td colspan="7">incident {incident["id"]}'.encode()
    assert status == 200 and page.count(header) == 1
    group = page.split(header)[1]
    assert by_service["svc-a"]["id"].encode() in group
    assert by_service["svc-b"]["id"].encode() in group


def test_fleet_capture_all_captures_every_service(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    fleet = _start_fleet(
        server, redis_server, {"svc-a": {}, "svc-b": {}, "svc-c": {"fleet_capture": "all"}}
    )
    _, traceparent = _traceparent()
    _slow_chain(fleet["svc-a"], fleet["svc-b"], traceparent)
    incident = _incident(fleet["svc-b"], {"svc-a", "svc-b", "svc-c"}, fleet)
    assert len(incident["snapshots"]) == 3


def test_fleet_cooldown_holds_under_a_storm(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    fleet = _start_fleet(server, redis_server, {"svc-a": {}, "svc-b": {}, "svc-c": {}})
    failures: list[Any] = []

    def storm(srv: ServerProcess) -> None:
        for _ in range(40):
            status = http_get(srv.url + "/fail")[0]
            if status != 500:
                failures.append(status)

    threads = [threading.Thread(target=storm, args=(s,)) for s in fleet.values() for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []

    def decided() -> list[dict[str, Any]] | None:
        stats = [_fleet(s) for s in fleet.values()]
        keys = ("opened", "suppressed_cooldown", "suppressed_rate")
        return stats if sum(s.get(k, 0) for s in stats for k in keys) >= 3 else None

    stats = wait_until(decided, timeout=DEADLINE, interval=0.1)
    assert sum(s.get("opened", 0) for s in stats) == 1, stats
    assert sum(s.get("suppressed_cooldown", 0) for s in stats) == 2, stats
    incidents = _get(fleet["svc-a"], "/incidents")
    assert len(incidents) == 1
    assert incidents[0]["origin"]["kind"] == "server_error"


def test_redis_killed_mid_traffic(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    fleet = _start_fleet(server, redis_server, {"svc-a": {}, "svc-b": {}})
    a, b = fleet["svc-a"], fleet["svc-b"]
    redis_server.kill()
    answers = [http_get(a.url + path)[0] for path in ["/fast", "/fail"] * 10]
    answers += [http_get(b.url + "/fast")[0] for _ in range(10)]
    assert answers == [200, 500] * 10 + [200] * 10  # what the app answers, nothing else

    # The local snapshot is taken as without a fleet, outside any incident.
    listed = wait_until(lambda: _get(a, "/snapshots"), timeout=DEADLINE)
    assert listed[0]["trigger"]["kind"] == "server_error"
    assert listed[0]["incident"] is None

    def down() -> dict[str, Any] | None:
        stats = _fleet(a)
        return stats if not stats["connected"] and stats.get("connection_errors") else None

    stats = wait_until(down, timeout=DEADLINE)
    assert stats["last_error"]
    assert stats.get("open_skipped", 0) + stats.get("open_failed", 0) >= 1
    assert _get(a, "/incidents") == []  # nothing to list from Redis: the local view

    # Redis back on the same port: both reconnect and the next incident spans the fleet.
    redis_server.start()
    for srv in (a, b):
        wait_until(lambda srv=srv: _fleet(srv)["connected"], timeout=DEADLINE, interval=0.1)
    assert http_get(a.url + "/error")[0] == 500
    incident = _incident(b, {"svc-a", "svc-b"})
    assert incident["origin"]["kind"] == "exception"


def test_malformed_messages_are_counted_and_ignored(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    (srv,) = _start_fleet(server, redis_server, {"svc-a": {}}).values()
    namespace = _fleet(srv)["namespace"]
    client = redis_server.client()
    signer = Signer((SECRET,), namespace)
    junk = [b"not json", b"{}", b'{"v": 2, "id": "../../etc"}', b"\xff" * 100, b"[]"]
    for message in junk:
        client.publish(f"{namespace}:events", message)  # unsigned
        client.publish(f"{namespace}:events", signer.sign("incident", message))
    wait_until(lambda: _fleet(srv).get("malformed", 0) == 5, timeout=DEADLINE)
    assert _fleet(srv)["unsigned"] == 5
    assert http_get(srv.url + "/fast")[0] == 200
    assert _get(srv, "/snapshots") == []
    assert _fleet(srv)["connected"]


def _forged_incident() -> bytes:
    # In the unsigned format processes followed before messages were signed.
    message = {
        "v": 1,
        "id": new_id(),
        "created_at": "2026-12-01T00:00:00.000Z",
        "ts": int(time.time() * 1000),
        "origin": {"service": "x", "hostname": "h", "pid": 1, "kind": "k", "reason": "r"},
        "trace_id": None,
        "sender": "forger:1:0",
    }
    return json.dumps(message).encode()


def test_forged_and_replayed_incidents_capture_nothing(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """Whoever can write to Redis but lacks the secret cannot make the fleet capture: no
    follower snapshot replaces this process's automatic ones (max_snapshots=3)."""
    namespace = "t" + secrets.token_hex(4)
    listener = redis_server.client().pubsub()
    listener.subscribe(f"{namespace}:events")
    (srv,) = _start_fleet(
        server, redis_server, {"svc-a": {"max_snapshots": 3, "fleet_namespace": namespace}}
    ).values()
    assert _fleet(srv)["namespace"] == namespace
    assert http_get(srv.url + "/fail")[0] == 500
    assert http_get(srv.url + "/slow?ms=600")[0] == 200
    own = wait_until(lambda: _get(srv, "/snapshots") if len(_get(srv, "/snapshots")) == 2 else None)
    real: list[bytes] = []  # the incidents this process published, signed

    def heard() -> bool:
        message = listener.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            real.append(message["data"])
        return len(real) == 2

    wait_until(heard, timeout=DEADLINE, interval=0)
    client = redis_server.client()
    other = Signer(("another-secret-0123456",), namespace)
    for _ in range(3):
        client.publish(f"{namespace}:events", _forged_incident())
        client.publish(f"{namespace}:events", other.sign("incident", _forged_incident()))
    for message in real:
        client.publish(f"{namespace}:events", message)  # replayed as they were
    wait_until(
        lambda: (
            (_fleet(srv).get("unsigned"), _fleet(srv).get("bad_signature")) == (3, 3)
            and _fleet(srv).get("replayed") == 2
        ),
        timeout=DEADLINE,
    )
    assert _get(srv, "/snapshots") == own  # nothing captured, nothing evicted
    assert _fleet(srv).get("followed", 0) == 0
    listener.close()


def test_secret_rotation_new_signs_old_still_verifies(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """Mid-rotation: A has "new,old" (signs with new), B still only "old". A follows B's
    incidents; B ignores A's, counted, until it gets the new secret too."""
    new = "fleet-test-secret-new-456"
    fleet = _start_fleet(
        server,
        redis_server,
        {
            "svc-a": {"fleet_secret": f"{new},{SECRET}", "fleet_capture": "all"},
            "svc-b": {"fleet_capture": "all"},
        },
    )
    a, b = fleet["svc-a"], fleet["svc-b"]
    assert http_get(b.url + "/fail")[0] == 500
    wait_until(lambda: _fleet(a).get("followed", 0) == 1, timeout=DEADLINE)
    assert http_get(a.url + "/error")[0] == 500
    wait_until(lambda: _fleet(b).get("bad_signature", 0) >= 1, timeout=DEADLINE)
    assert _fleet(b).get("followed", 0) == 0
    assert [s["trigger"]["kind"] for s in _get(b, "/snapshots")] == ["server_error"]
    # A lists both incidents; B only its own (A's record is signed with a secret B lacks).
    wait_until(lambda: len(_get(a, "/incidents")) == 2, timeout=DEADLINE)
    assert [i["origin"]["service"] for i in _get(b, "/incidents")] == ["svc-b"]


def _high_water_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_poisoned_fleet_snapshot_is_refused_without_inflating_it(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """A gzip bomb under self-consistent (unsigned) metadata: refused, and the process's
    peak memory does not move by anything near what the bomb inflates to."""
    (srv,) = _start_fleet(server, redis_server, {"svc-a": {}}).values()
    namespace = _fleet(srv)["namespace"]
    inflated = 256 << 20
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(out.compress(zeros) for _ in range(inflated >> 20)) + out.flush()
    ident, incident = new_id(), new_id()
    meta = {  # the unsigned metadata format read before metadata was signed
        "v": 1,
        "id": ident,
        "incident": incident,
        "created_at": "2026-12-01T00:00:00.000Z",
        "service": "svc-x",
        "hostname": "h",
        "pid": 1,
        "trigger": {"kind": "fleet", "reason": "r"},
        "trace_ids": [],
        "size": inflated,
        "stored": len(bomb),
        "sha256": hashlib.sha256(bomb).hexdigest(),
    }
    client = redis_server.client()
    client.hset(f"{namespace}:snap:{ident}", mapping={"meta": json.dumps(meta), "data": bomb})
    before = _high_water_kib(srv.pid)
    for suffix in ("", "?format=summary"):
        status, _, _ = http_get(f"{srv.url}/debug/flight/snapshots/{ident}{suffix}", **AUTH)
        assert status == 404
    assert _high_water_kib(srv.pid) - before < 64 << 10  # KiB: far below the 256 MiB
    assert _fleet(srv)["unsigned"] >= 2


def test_gunicorn_preload_workers_each_join_the_fleet(
    server: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    # --preload: FlightDeck (and its fleet) is built in the master, then fork()ed; each
    # worker runs its own Redis client, so one worker's incident is followed by the other.
    options = _options(redis_server, "svc-w")
    srv = server(kind="gunicorn", workers=2, options=options, args=["--preload"])
    connected: set[str] = set()  # the senders (host:pid:nonce) seen connected

    def both_connected() -> bool:
        stats = _fleet(srv)
        if stats["connected"]:
            connected.add(stats["sender"])
        return len(connected) == 2

    wait_until(both_connected, timeout=DEADLINE, interval=0.05)
    assert http_get(srv.url + "/fail")[0] == 500

    def both_workers() -> dict[str, Any] | None:
        for incident in _get(srv, "/incidents"):
            if len({s["pid"] for s in incident["snapshots"]}) == 2:
                return dict(incident)
        return None

    incident = wait_until(both_workers, timeout=DEADLINE, interval=0.2)
    assert {s["service"] for s in incident["snapshots"]} == {"svc-w"}
    assert srv.pid not in {s["pid"] for s in incident["snapshots"]}  # workers, not the master
