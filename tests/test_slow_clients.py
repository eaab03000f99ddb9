"""Slow clients against a real gunicorn (gevent): bodies that trickle in are cut off with a 408,
and heartbeats keep being served while 2,000 of them are open."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest
import requests

from .conftest import provider_body
from .gunicorn_server import GunicornServer
from .redis_server import RedisServer
from .slow_clients import raise_open_files_limit

BODY_TIMEOUT_S = 2.0
SLOW_CONNECTIONS = 2000
DURATION_S = 10.0


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[GunicornServer]:
    raise_open_files_limit(SLOW_CONNECTIONS + 500)  # the server inherits the test's limit
    server = GunicornServer(redis_server.url, worker_class="gevent", body_timeout_s=BODY_TIMEOUT_S)
    server.start()
    yield server
    server.stop()


def register(server: GunicornServer) -> str:
    response = requests.post(f"{server.url}/providers", json=provider_body(), timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_slow_clients(server: GunicornServer, path: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.slow_clients", str(server.port), path, *args],
        stdout=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return json.loads(out)


def test_a_body_that_trickles_in_is_answered_408_json_after_the_bound(server: GunicornServer) -> None:
    provider_id = register(server)
    slow = start_slow_clients(
        server, f"/providers/{provider_id}/status",
        "--connections", "20", "--ramp-s", "0.2", "--duration-s", "1", "--once",
    )
    result = finish(slow)
    assert len(result["answers"]) == 20
    for answer in result["answers"]:
        assert answer["status"] == 408 and answer["json"], answer
        assert json.loads(answer["body"])["code"] == "request_timeout"
        assert BODY_TIMEOUT_S - 0.1 <= answer["elapsed_s"] <= BODY_TIMEOUT_S + 1.5, answer


def test_heartbeats_stay_fast_while_2000_slow_bodies_hold_connections(server: GunicornServer) -> None:
    provider_id = register(server)
    path = f"/providers/{provider_id}/status"
    # A fresh connection each time, as daemons heartbeating every few seconds open one: it has to
    # be accepted past the slow connections, not ride on one accepted before them.
    session = requests.Session()
    session.headers["Connection"] = "close"
    slow = start_slow_clients(
        server, path, "--connections", str(SLOW_CONNECTIONS), "--ramp-s", "2",
        "--duration-s", str(DURATION_S),
    )
    latencies_ms: list[float] = []
    failures = 0
    try:
        time.sleep(1.0)  # half the slow connections are open; measure from here to the end
        stop_at = time.monotonic() + DURATION_S - 1.0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                status = session.put(f"{server.url}{path}", json={}, timeout=5).status_code
            except requests.RequestException:
                status = 0
            latencies_ms.append((time.perf_counter() - started) * 1000)
            failures += status != 200
            time.sleep(0.005)
    finally:
        result = finish(slow)
    latencies_ms.sort()
    p50 = statistics.median(latencies_ms)
    p99 = latencies_ms[int(len(latencies_ms) * 0.99) - 1]
    answers = result["answers"]
    statuses = {a["status"] for a in answers}
    print(
        f"\nheartbeats: n={len(latencies_ms)} p50={p50:.1f} ms p99={p99:.1f} ms "
        f"max={latencies_ms[-1]:.1f} ms failures={failures}; slow connections: "
        f"peak open={result['peak_open']} answered={len(answers)} statuses={sorted(statuses)} "
        f"errors={result['errors']}"
    )
    assert failures == 0
    # What the slow bodies must never do is make a heartbeat wait for them: before the fix,
    # heartbeats waited 5 s behind them. How fast heartbeats are on a shared 2-core machine is
    # the benchmarks' business (docs/PERFORMANCE.md); here, none waits as long as a slow body
    # may take to arrive.
    assert len(latencies_ms) >= 100
    assert latencies_ms[-1] < BODY_TIMEOUT_S * 1000, f"a heartbeat took {latencies_ms[-1]:.0f} ms (p99 {p99:.1f} ms)"
    assert result["peak_open"] >= SLOW_CONNECTIONS * 0.95
    assert len(answers) >= SLOW_CONNECTIONS
    assert statuses == {408}
    assert all(a["json"] for a in answers)
    assert max(a["elapsed_s"] for a in answers) <= BODY_TIMEOUT_S + 1.5
