"""The heartbeat's hot path in production settings: auth on, a token per provider, limits on.

One Redis round trip per heartbeat (the token check and the per-provider limit inside the
heartbeat FUNCTION), the same answers as through Flask, and the limit's rules: refused
heartbeats do not count, and a flood of bad credentials never refuses a valid token.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
from typing import Any, Iterator

import pytest
import redis
from flask import Flask

from app import create_app
from app.config import Settings
from app.logs import configure_logging
from app.registry import EXTENSION

from .conftest import ADMIN_KEY, bearer_client, gpu, register_daemon


def production_app(settings: Settings, **overrides: Any) -> Iterator[Flask]:
    app = create_app(dataclasses.replace(settings, **overrides))
    app.config["TESTING"] = True
    yield app
    app.extensions[EXTENSION].close()


@pytest.fixture
def limited(settings: Settings, redis_db: redis.Redis) -> Iterator[Flask]:
    """Auth and limits on, the limits high: as the registry ships, with room for a test."""
    yield from production_app(
        settings, rate_limit_heartbeat="1000/minute", rate_limit_per_client="1000/minute",
        rate_limit_unauthenticated="1000/minute",
    )


@pytest.fixture
def tight(settings: Settings, redis_db: redis.Redis) -> Iterator[Flask]:
    yield from production_app(settings, rate_limit_heartbeat="3/minute", rate_limit_unauthenticated="5/minute")


def command_calls(redis_db: redis.Redis) -> dict[str, int]:
    stats = redis_db.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    return {name: n for name, n in calls.items() if not name.startswith(("config", "info"))}


# What the heartbeat FUNCTION runs for a plain renewal: the clock, one read of the provider,
# the lease key, the leases index and one write of the hash (not the pulse: heartbeat.lua's
# `renew` says why). INFO commandstats counts them as well as the FCALL that ran them.
PLAIN_RENEWAL = {"fcall": 1, "time": 1, "hmget": 1, "set": 1, "zadd": 1, "hset": 1}


@pytest.mark.parametrize("route", ["POST heartbeat", "PUT status", "POST /api/v1 heartbeat"])
def test_a_token_heartbeat_with_limits_on_is_one_function_call_and_nothing_else(
    limited: Flask, redis_db: redis.Redis, route: str
) -> None:
    daemon = register_daemon(limited)
    url = {
        "POST heartbeat": f"/providers/{daemon.id}/heartbeat",
        "PUT status": f"/providers/{daemon.id}/status",
        "POST /api/v1 heartbeat": f"/api/v1/providers/{daemon.id}/heartbeat",
    }[route]
    send = daemon.client.put if route == "PUT status" else daemon.client.post
    assert send(url, json={}).status_code == 200  # loads the FUNCTION library once
    redis_db.config_resetstat()
    assert send(url, json={}).status_code == 200
    assert command_calls(redis_db) == PLAIN_RENEWAL


def test_the_go_daemons_body_is_one_function_call_too(limited: Flask, redis_db: redis.Redis) -> None:
    daemon = register_daemon(limited)
    url = f"/api/v1/providers/{daemon.id}/heartbeat"
    body = {"provider_id": daemon.id, "timestamp": "2026-11-28T10:00:00Z", "status": "online"}
    assert daemon.client.post(url, json=body).status_code == 200
    redis_db.config_resetstat()
    assert daemon.client.post(url, json=body).status_code == 200
    assert command_calls(redis_db) == PLAIN_RENEWAL


def test_a_status_change_is_still_one_round_trip(limited: Flask, redis_db: redis.Redis) -> None:
    daemon = register_daemon(limited)
    daemon.client.post(f"/providers/{daemon.id}/heartbeat")
    redis_db.config_resetstat()
    response = daemon.client.put(f"/providers/{daemon.id}/status", json={"status": "busy"})
    assert response.status_code == 200 and response.get_json()["status"] == "busy"
    calls = command_calls(redis_db)
    assert calls.pop("fcall") == 1
    # Everything else ran inside the function: no limiter script, no second read.
    assert "evalsha" not in calls and calls["get"] == 1 and calls["hmget"] == 2


def test_a_token_heartbeat_answers_as_the_flask_route_does(limited: Flask) -> None:
    daemon = register_daemon(limited)
    admin = bearer_client(limited, ADMIN_KEY)  # a service key goes through Flask
    fast = daemon.client.put(f"/providers/{daemon.id}/status", json={"status": "busy"},
                             headers={"X-Request-ID": "hb-1"})
    slow = admin.put(f"/providers/{daemon.id}/status", json={"status": "busy"}, headers={"X-Request-ID": "hb-2"})
    assert fast.status_code == slow.status_code == 200
    assert set(fast.get_json()) == set(slow.get_json())
    assert fast.get_json()["version"] == slow.get_json()["version"]
    assert fast.headers["Content-Type"] == slow.headers["Content-Type"] == "application/json"
    assert fast.headers["ETag"] == slow.headers["ETag"]
    assert (fast.headers["X-Request-ID"], slow.headers["X-Request-ID"]) == ("hb-1", "hb-2")
    assert sorted(fast.headers.keys()) == sorted(slow.headers.keys())


def test_a_token_heartbeat_writes_the_same_access_line(limited: Flask, monkeypatch) -> None:
    daemon = register_daemon(limited)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    configure_logging("info")
    try:
        daemon.client.post(
            f"/providers/{daemon.id}/heartbeat", json={"timestamp": "2026-11-28T10:00:00Z"},
            headers={"X-Request-ID": "beat-7"},
        )
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    [line] = [json.loads(text) for text in buffer.getvalue().splitlines()]
    assert line["logger"] == "app.access" and line["message"] == "request"
    assert (line["method"], line["path"], line["status"]) == ("POST", f"/providers/{daemon.id}/heartbeat", 200)
    assert line["request_id"] == "beat-7"
    assert line["client_timestamp"] == "2026-11-28T10:00:00Z"
    assert line["duration_ms"] >= 0


def test_the_per_provider_limit_is_enforced_by_the_script_and_refusals_do_not_count(
    tight: Flask, redis_db: redis.Redis
) -> None:
    daemon = register_daemon(tight)
    url = f"/providers/{daemon.id}/heartbeat"
    assert [daemon.client.post(url).status_code for _ in range(3)] == [200] * 3
    redis_db.config_resetstat()
    refused = [daemon.client.post(url) for _ in range(4)]
    assert {r.status_code for r in refused} == {429}
    assert refused[0].get_json()["code"] == "too_many_requests"
    assert 1 <= int(refused[0].headers["Retry-After"]) <= 60
    # The refusals wrote nothing: not the lease, not the counter.
    calls = command_calls(redis_db)
    assert not {"set", "zadd", "hset", "evalsha", "incrby"} & set(calls)
    end, count = redis_db.hget(f"registry:provider:{daemon.id}", "heartbeat_windows").split()
    assert count == "3"


def test_the_limit_window_runs_from_the_first_heartbeat_it_counts(
    settings: Settings, redis_db: redis.Redis
) -> None:
    for app in production_app(settings, rate_limit_heartbeat="2/second"):
        daemon = register_daemon(app)
        url = f"/providers/{daemon.id}/heartbeat"
        assert [daemon.client.post(url).status_code for _ in range(3)] == [200, 200, 429]
        redis_db.hset(f"registry:provider:{daemon.id}", "heartbeat_windows", "1 2")  # a window long past
        assert daemon.client.post(url).status_code == 200


def test_heartbeats_with_a_forged_token_neither_count_nor_learn_the_limit(tight: Flask) -> None:
    daemon = register_daemon(tight)
    forger = bearer_client(tight, "forged-token")
    for _ in range(3):
        daemon.client.post(f"/providers/{daemon.id}/heartbeat")
    # Past the limit, a forged token is still told it is not valid (and counted per address).
    assert forger.post(f"/providers/{daemon.id}/heartbeat").status_code == 401


def test_a_bad_credential_flood_never_refuses_a_valid_token_heartbeat(tight: Flask, redis_db: redis.Redis) -> None:
    daemons = [register_daemon(tight) for _ in range(3)]
    flooder = bearer_client(tight, "wrong-token")
    flood = [flooder.post(f"/providers/{daemons[0].id}/heartbeat").status_code for _ in range(8)]
    assert flood == [401] * 5 + [429] * 3
    for daemon in daemons:
        redis_db.config_resetstat()
        assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200
        # The address bucket, over its limit, cost the valid token nothing.
        assert command_calls(redis_db) == PLAIN_RENEWAL


def test_an_address_over_its_bad_credential_limit_gets_429_with_retry_after(tight: Flask) -> None:
    daemon = register_daemon(tight)
    flooder = bearer_client(tight, "wrong-token")
    for _ in range(5):
        flooder.put(f"/providers/{daemon.id}/status", json={})
    refused = flooder.put(f"/providers/{daemon.id}/status", json={})
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "body, status",
    [
        ({"status": "dancing"}, 400),
        ({"gpu_metrics": [{"temperature_c": "hot"}]}, 400),
        ({"provider_id": "6f1c2e8a-3b7d-4c1e-9a2f-0d5e8b7c4a21"}, 400),
    ],
)
def test_token_heartbeats_the_fast_path_cannot_accept_get_flasks_answer(
    limited: Flask, body: dict[str, Any], status: int
) -> None:
    daemon = register_daemon(limited)
    response = daemon.client.post(f"/providers/{daemon.id}/heartbeat", json=body)
    assert response.status_code == status
    assert response.get_json()["code"] == "validation_error"
    assert response.headers["X-Request-ID"]


def test_a_token_heartbeat_for_another_provider_is_401_and_changes_nothing(limited: Flask) -> None:
    mine, theirs = register_daemon(limited), register_daemon(limited)
    before = bearer_client(limited, ADMIN_KEY).get(f"/providers/{theirs.id}").get_json()
    response = mine.client.post(f"/providers/{theirs.id}/heartbeat", json={"status": "busy"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert bearer_client(limited, ADMIN_KEY).get(f"/providers/{theirs.id}").get_json() == before


def test_metrics_and_if_match_go_through_the_token_path(limited: Flask) -> None:
    daemon = register_daemon(limited, gpus=[gpu(architecture="ampere")])
    url = f"/providers/{daemon.id}/status"
    first = daemon.client.put(url, json={"gpu_metrics": [{"temperature_c": 61}]})
    assert first.status_code == 200
    stale = daemon.client.put(url, json={"status": "busy"}, headers={"If-Match": '"999"'})
    assert stale.status_code == 412
    assert stale.get_json()["code"] == "version_mismatch"
    fresh = daemon.client.put(url, json={"status": "busy"}, headers={"If-Match": first.headers["ETag"]})
    assert fresh.status_code == 200 and fresh.get_json()["status"] == "busy"
    shown = daemon.client.get(f"/providers/{daemon.id}").get_json()
    assert shown["gpus"][0]["temperature_c"] == 61


def test_an_unregistered_provider_is_404_through_the_token_path(limited: Flask) -> None:
    daemon = register_daemon(limited)
    bearer_client(limited, ADMIN_KEY).delete(f"/providers/{daemon.id}")
    response = daemon.client.post(f"/providers/{daemon.id}/heartbeat")
    assert response.status_code in (401, 404)  # the token died with its provider


def test_a_token_heartbeat_answers_503_json_while_redis_is_down(limited: Flask, redis_server) -> None:
    daemon = register_daemon(limited)
    redis_server.stop()
    try:
        response = daemon.client.post(f"/providers/{daemon.id}/heartbeat")
    finally:
        redis_server.start()
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["code"] in ("store_unavailable", "store_timeout")
    assert set(response.get_json()) == {"error", "code", "details"}
    assert response.headers["X-Request-ID"]


def test_the_function_library_is_loaded_again_when_redis_lost_it(
    limited: Flask, redis_db: redis.Redis, redis_server
) -> None:
    daemon = register_daemon(limited)
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200
    redis_db.function_flush()
    assert daemon.client.post(f"/providers/{daemon.id}/heartbeat").status_code == 200
    # A restarted Redis has neither the library nor the pooled connections.
    redis_server.stop()
    redis_server.start()
    again = register_daemon(limited)
    assert again.client.post(f"/providers/{again.id}/heartbeat").status_code == 200


def test_a_hash_without_its_lease_deadline_is_renewed_by_the_full_heartbeat(
    limited: Flask, redis_db: redis.Redis
) -> None:
    # Written by hand or half-restored: no plain renewal, and no script error either.
    daemon = register_daemon(limited)
    redis_db.hdel(f"registry:provider:{daemon.id}", "lease_expires_at")
    response = daemon.client.post(f"/providers/{daemon.id}/heartbeat")
    assert response.status_code == 200, response.get_json()
    assert redis_db.pttl(f"registry:lease:{daemon.id}") > 0
