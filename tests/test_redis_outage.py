"""Redis outages: 503 JSON with Retry-After while Redis is down, service back when it is."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Iterator

import pytest

from app.jobs.sweeper import Sweeper

from .conftest import new_id, provider_body, wait_until


@pytest.fixture
def redis_down(redis_server, redis_db) -> Iterator[None]:
    """Kill the session's Redis for the test; start it again afterwards, whatever happens."""
    redis_server.stop()
    try:
        yield
    finally:
        if redis_server.process is None:
            redis_server.start()


def assert_unavailable(response, code: str = "store_unavailable") -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert body["code"] == code
    assert set(body) == {"error", "code", "details"}


def every_route(client, provider_id: str, prefix: str = ""):
    base = f"{prefix}/providers"
    return [
        client.post(base, json=provider_body()),
        client.get(base),
        client.get(f"{base}?gpu_model=A100&status=idle"),
        client.get(f"{base}/{provider_id}"),
        client.put(f"{base}/{provider_id}", json=provider_body()),
        client.put(f"{base}/{provider_id}/status", json={"status": "busy"}),
        client.patch(f"{base}/{provider_id}/status"),
        client.post(f"{base}/{provider_id}/heartbeat"),
        client.delete(f"{base}/{provider_id}"),
    ]


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_every_api_route_answers_503_json_with_retry_after_while_redis_is_down(
    client, providers, redis_server, prefix
):
    provider_id = providers.register()["id"]
    redis_server.stop()
    try:
        for response in every_route(client, provider_id, prefix):
            assert_unavailable(response)
    finally:
        redis_server.start()


def test_health_answers_503_with_retry_after_while_redis_is_down(client, redis_down):
    response = client.get("/health")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["status"] == "unavailable"
    assert response.get_json()["redis"] == "unreachable"


def test_bad_input_is_still_400_while_redis_is_down(client, redis_down):
    response = client.post("/providers", json=provider_body(gpus=[]))
    assert response.status_code == 400


def test_same_app_serves_again_when_redis_comes_back(client, providers, redis_server):
    provider_id = providers.register()["id"]
    # Pooled connections are open before the outage; they must not poison the app after it.
    assert client.get("/providers").status_code == 200
    redis_server.stop()
    try:
        assert client.get("/health").status_code == 503
        assert_unavailable(client.get("/providers"))
    finally:
        redis_server.start()

    assert client.get("/health").status_code == 200
    # The restarted Redis is empty (no persistence): the daemon is told to register again.
    response = client.put(f"/providers/{provider_id}/status", json={})
    assert response.status_code == 404
    assert response.get_json()["code"] == "provider_not_found"
    again = client.post("/providers", json=provider_body(id=provider_id))
    assert again.status_code == 201
    assert providers.heartbeat(provider_id, status="busy")["status"] == "busy"
    assert providers.ids("status=busy") == [provider_id]


def test_every_route_recovers_after_a_restart(client, providers, redis_server):
    provider_id = providers.register()["id"]
    redis_server.stop()
    redis_server.start()
    # Each route's first call after the restart meets a dead pooled connection or a flushed
    # script cache; both must be handled without an error reaching the client.
    assert client.post("/providers", json=provider_body(id=provider_id)).status_code == 201
    assert client.get(f"/providers/{provider_id}").status_code == 200
    assert client.get("/providers?status=idle").status_code == 200
    assert client.put(f"/providers/{provider_id}/status", json={}).status_code == 200
    assert client.put(f"/providers/{provider_id}", json=provider_body()).status_code == 200
    assert client.delete(f"/providers/{provider_id}").status_code == 204


def test_a_hung_redis_answers_503_within_the_timeout(make_app, redis_db, redis_server):
    client = make_app(redis_timeout_s=0.2).test_client()
    assert client.get("/health").status_code == 200
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        # The command was sent: from the client's side, its outcome is unknown.
        assert_unavailable(client.get(f"/providers/{new_id()}"), code="store_timeout")
        assert client.get("/health").status_code == 503
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert client.get("/health").status_code == 200


def test_sweeper_logs_an_outage_once_and_resumes(registry, redis_server, caplog):
    sweeper = Sweeper(registry.store, interval_s=0.05)
    thread = threading.Thread(target=sweeper.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="app.jobs.sweeper"):
        thread.start()
        try:
            redis_server.stop()
            try:
                assert wait_until(lambda: "sweeper: store unavailable, retrying" in caplog.messages)
                # Several sweeps fail meanwhile; the outage is logged once.
                wait_until(lambda: False, timeout=0.3)
            finally:
                redis_server.start()
            assert wait_until(lambda: "sweeper: store reachable again" in caplog.messages)
        finally:
            sweeper.stop()
            thread.join(timeout=5)
    assert caplog.messages.count("sweeper: store unavailable, retrying") == 1
    assert not thread.is_alive()


def test_a_heartbeat_that_timed_out_leaves_no_late_reply_for_the_next_one(make_app, redis_db, redis_server):
    """The FUNCTION's connections are its own: one whose reply never came is not used again."""
    from .conftest import register_daemon

    app = make_app(redis_timeout_s=0.2)
    first, second = register_daemon(app), register_daemon(app)
    assert first.client.post(f"/providers/{first.id}/heartbeat").status_code == 200
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        assert_unavailable(first.client.post(f"/providers/{first.id}/heartbeat"), code="store_timeout")
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    # Redis now runs the late heartbeat and answers it; that answer must reach no one.
    answer = second.client.post(f"/providers/{second.id}/heartbeat")
    assert answer.status_code == 200 and answer.get_json()["id"] == second.id
