"""Idempotency-Key: a retried write answers as the first attempt did and applies nothing twice."""
from __future__ import annotations

import json
import signal
import threading
from typing import Any, Callable

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.errors import IdempotencyInProgress
from app.keyring import hash_secret
from app.registry import EXTENSION
from app.store.idempotency import Attempt, bind, unbind

from .conftest import (
    REGISTER_KEY,
    SCHEDULE_KEY,
    TEST_API_KEYS,
    bearer_client,
    new_id,
    provider_body,
    redis_state,
    register_daemon,
    wait_until,
)
from .gunicorn_server import GunicornServer


def send(client: FlaskClient, method: str, url: str, key: str | None, json: Any = None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.open(url, method=method, headers=headers, json=json)


def data_state(client: redis.Redis) -> dict[str, Any]:
    """The registry's data without the idempotency records themselves."""
    return {k: v for k, v in redis_state(client).items() if not k.startswith("registry:idem:")}


def same_answer(first: Any, second: Any) -> None:
    assert second.status_code == first.status_code
    assert second.get_json() == first.get_json()
    for name in ("ETag", "Location"):
        assert second.headers.get(name) == first.headers.get(name)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Cache-Control"] == "no-store"


def claimed(app: Flask) -> tuple[str, str]:
    """Register a daemon, claim it with the schedule key; return its ID and the claim ID."""
    daemon = register_daemon(app)
    granted = bearer_client(app, SCHEDULE_KEY).post("/providers/claim", json={"count": 1})
    assert granted.status_code == 200, granted.get_json()
    return daemon.id, granted.get_json()["claim_id"]


# Each write: (credential to use, method, URL, body), built on a fresh registry state.
def _writes(app: Flask) -> dict[str, Callable[[], tuple[str, str, str, Any]]]:
    def register() -> tuple[str, str, str, Any]:
        return REGISTER_KEY, "POST", "/providers", provider_body(id=new_id())

    def status(method: str) -> Callable[[], tuple[str, str, str, Any]]:
        def build() -> tuple[str, str, str, Any]:
            daemon = register_daemon(app)
            return daemon.token, method, f"/providers/{daemon.id}/status", {"status": "maintenance"}
        return build

    def heartbeat() -> tuple[str, str, str, Any]:
        daemon = register_daemon(app)
        return daemon.token, "POST", f"/api/v1/providers/{daemon.id}/heartbeat", {"status": "busy"}

    def update() -> tuple[str, str, str, Any]:
        daemon = register_daemon(app)
        return daemon.token, "PUT", f"/providers/{daemon.id}", provider_body(name="rig-2")

    def delete() -> tuple[str, str, str, Any]:
        daemon = register_daemon(app)
        return daemon.token, "DELETE", f"/providers/{daemon.id}", None

    def claim() -> tuple[str, str, str, Any]:
        register_daemon(app)
        register_daemon(app)
        return SCHEDULE_KEY, "POST", "/providers/claim", {"count": 1, "claimant": "s1"}

    def claim_op(op: str) -> Callable[[], tuple[str, str, str, Any]]:
        def build() -> tuple[str, str, str, Any]:
            provider_id, claim_id = claimed(app)
            return SCHEDULE_KEY, "POST", f"/providers/{provider_id}/{op}", {"claim_id": claim_id}
        return build

    return {
        "register": register, "status_put": status("PUT"), "status_patch": status("PATCH"),
        "heartbeat": heartbeat, "update": update, "delete": delete, "claim": claim,
        "release": claim_op("release"), "renew": claim_op("claim/renew"),
        "confirm": claim_op("claim/confirm"),
    }


WRITES = ["register", "status_put", "status_patch", "heartbeat", "update", "delete", "claim",
          "release", "renew", "confirm"]


@pytest.mark.parametrize("write", WRITES)
def test_a_retry_with_the_same_key_returns_the_first_answer_and_applies_nothing_twice(
    app: Flask, redis_db: redis.Redis, write: str
) -> None:
    secret, method, url, body = _writes(app)[write]()
    client = bearer_client(app, secret)
    first = send(client, method, url, "key-1", body)
    assert first.status_code < 300, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    after_first = data_state(redis_db)

    second = send(client, method, url, "key-1", body)

    same_answer(first, second)
    assert data_state(redis_db) == after_first


def test_a_registration_whose_answer_was_lost_gets_the_same_token_on_retry(
    app: Flask, redis_db: redis.Redis
) -> None:
    register = bearer_client(app, REGISTER_KEY)
    body = provider_body(id=new_id())
    register.post("/providers", json=body, headers={"Idempotency-Key": "boot-1"})  # answer "lost"

    retry = register.post("/providers", json=body, headers={"Idempotency-Key": "boot-1"})

    assert retry.status_code == 201
    token = retry.get_json()["provider_token"]
    assert redis_db.hget(f"registry:provider:{body['id']}", "token_hash") == hash_secret(token)
    assert retry.headers["Cache-Control"] == "no-store"
    assert bearer_client(app, token).post(f"/providers/{body['id']}/heartbeat").status_code == 200
    # Without the key, the same retry is what the issue measured: a 403 forever.
    assert register.post("/providers", json=body).status_code == 403


def test_no_token_is_kept_in_redis_for_a_replay(app: Flask, redis_db: redis.Redis) -> None:
    response = bearer_client(app, REGISTER_KEY).post(
        "/providers", json=provider_body(), headers={"Idempotency-Key": "k"}
    )
    token = response.get_json()["provider_token"]
    values = [str(v) for v in redis_state(redis_db).values()]
    assert values and not any(token in value for value in values)


def test_the_same_key_with_another_body_is_422_and_changes_nothing(
    app: Flask, redis_db: redis.Redis
) -> None:
    register = bearer_client(app, REGISTER_KEY)
    assert register.post("/providers", json=provider_body(), headers={"Idempotency-Key": "k"}).status_code == 201
    before = data_state(redis_db)
    other = register.post("/providers", json=provider_body(name="other"), headers={"Idempotency-Key": "k"})
    assert other.status_code == 422
    assert other.get_json()["code"] == "idempotency_key_reused"
    assert data_state(redis_db) == before


def test_the_key_is_scoped_by_credential_and_route(app: Flask) -> None:
    first, second = register_daemon(app), register_daemon(app)
    one = send(first.client, "PUT", f"/providers/{first.id}/status", "same", {"status": "busy"})
    two = send(second.client, "PUT", f"/providers/{second.id}/status", "same", {"status": "busy"})
    assert one.status_code == two.status_code == 200
    assert "Idempotent-Replayed" not in two.headers
    assert two.get_json()["id"] == second.id


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_an_invalid_key_is_400(app: Flask, key: str) -> None:
    response = bearer_client(app, REGISTER_KEY).post(
        "/providers", json=provider_body(), headers={"Idempotency-Key": key}
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.get_json()["details"]


def test_an_error_answer_is_replayed_too(app: Flask) -> None:
    register = bearer_client(app, REGISTER_KEY)
    daemon = register_daemon(app)
    body = provider_body(id=daemon.id)
    first = register.post("/providers", json=body, headers={"Idempotency-Key": "k"})
    assert first.status_code == 403
    same_answer(first, register.post("/providers", json=body, headers={"Idempotency-Key": "k"}))


def test_a_concurrent_retry_while_the_first_is_in_flight_is_409(app: Flask) -> None:
    registry = app.extensions[EXTENSION]
    entered, release = threading.Event(), threading.Event()
    original = registry.store.register

    def slow_register(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(5)
        return original(*args, **kwargs)

    registry.store.register = slow_register
    body, answers = provider_body(id=new_id()), []
    thread = threading.Thread(
        target=lambda: answers.append(
            bearer_client(app, REGISTER_KEY).post("/providers", json=body, headers={"Idempotency-Key": "k"})
        )
    )
    thread.start()
    try:
        assert entered.wait(5)
        retry = bearer_client(app, REGISTER_KEY).post("/providers", json=body, headers={"Idempotency-Key": "k"})
        assert retry.status_code == 409
        assert retry.get_json()["code"] == "idempotency_in_progress"
        assert int(retry.headers["Retry-After"]) >= 1
    finally:
        release.set()
        thread.join(5)
    assert answers[0].status_code == 201


# Faults: a paused Redis (SIGSTOP) and a stopped one.

@pytest.fixture
def fast_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(redis_timeout_s=0.2)


def pause_during_write(app: Flask, redis_server: Any, pause_s: float = 0.8) -> None:
    """Make the next store script reach a paused Redis: it runs when Redis resumes."""
    store = app.extensions[EXTENSION].store
    original = store.run_script

    def paused(*args: Any, **kwargs: Any) -> Any:
        store.run_script = original
        redis_server.process.send_signal(signal.SIGSTOP)
        threading.Timer(pause_s, redis_server.process.send_signal, (signal.SIGCONT,)).start()
        return original(*args, **kwargs)

    store.run_script = paused


def wait_for_redis(redis_db: redis.Redis) -> None:
    def answers() -> bool:
        try:
            return bool(redis_db.ping())
        except redis.RedisError:
            return False

    assert wait_until(answers)


def test_a_paused_redis_answers_store_timeout(fast_app: Flask, redis_server: Any, redis_db: redis.Redis) -> None:
    register = bearer_client(fast_app, REGISTER_KEY)
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        response = register.post("/providers", json=provider_body())
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert response.status_code == 503
    assert response.get_json()["code"] == "store_timeout"
    assert response.headers["Retry-After"] == "1"


def test_a_stopped_redis_answers_store_unavailable(app: Flask, redis_server: Any) -> None:
    register = bearer_client(app, REGISTER_KEY)
    assert register.post("/providers", json=provider_body()).status_code == 201  # pooled connection
    redis_server.stop()
    try:
        response = register.post("/providers", json=provider_body())
    finally:
        redis_server.start()
    assert response.status_code == 503
    assert response.get_json()["code"] == "store_unavailable"


def test_after_a_pause_a_registration_retry_learns_the_outcome_and_its_token(
    fast_app: Flask, redis_server: Any, redis_db: redis.Redis
) -> None:
    register = bearer_client(fast_app, REGISTER_KEY)
    body = provider_body(id=new_id())
    # Loads the fenced script, so that the paused write is one EVALSHA that Redis runs later.
    register.post("/providers", json=provider_body(), headers={"Idempotency-Key": "warm-up"})
    pause_during_write(fast_app, redis_server)
    first = register.post("/providers", json=body, headers={"Idempotency-Key": "boot-1"})
    assert first.get_json()["code"] == "store_timeout"
    wait_for_redis(redis_db)
    # The paused write ran when Redis resumed; the answer was never recorded.
    assert wait_until(lambda: redis_db.exists(f"registry:provider:{body['id']}"))
    before = data_state(redis_db)

    retry = register.post("/providers", json=body, headers={"Idempotency-Key": "boot-1"})

    assert retry.status_code == 201, retry.get_json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    token = retry.get_json()["provider_token"]
    assert redis_db.hget(f"registry:provider:{body['id']}", "token_hash") == hash_secret(token)
    assert data_state(redis_db) == before
    assert bearer_client(fast_app, token).put(f"/providers/{body['id']}/status", json={}).status_code == 200


def test_after_a_pause_a_claim_retry_gets_the_same_claim_and_claims_nothing_more(
    fast_app: Flask, redis_server: Any, redis_db: redis.Redis
) -> None:
    for _ in range(4):
        register_daemon(fast_app)
    scheduler = bearer_client(fast_app, SCHEDULE_KEY)
    scheduler.post("/providers/claim", json={"count": 1}, headers={"Idempotency-Key": "warm-up"})
    pause_during_write(fast_app, redis_server)
    first = scheduler.post("/providers/claim", json={"count": 1}, headers={"Idempotency-Key": "job-7"})
    assert first.get_json()["code"] == "store_timeout"
    wait_for_redis(redis_db)

    retry = scheduler.post("/providers/claim", json={"count": 1}, headers={"Idempotency-Key": "job-7"})
    again = scheduler.post("/providers/claim", json={"count": 1}, headers={"Idempotency-Key": "job-7"})

    assert retry.status_code == 200, retry.get_json()
    assert again.get_json()["claim_id"] == retry.get_json()["claim_id"]
    busy = [p for p in scheduler.get("/providers").get_json() if p["status"] == "busy"]
    assert len(busy) == 2  # the warm-up's and this one's


def test_a_write_that_never_reached_redis_runs_on_retry(
    app: Flask, redis_server: Any, redis_db: redis.Redis
) -> None:
    register = bearer_client(app, REGISTER_KEY)
    body = provider_body(id=new_id())
    redis_server.stop()
    try:
        first = register.post("/providers", json=body, headers={"Idempotency-Key": "k"})
    finally:
        redis_server.start()
    assert first.get_json()["code"] == "store_unavailable"
    retry = register.post("/providers", json=body, headers={"Idempotency-Key": "k"})
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers


def test_a_reservation_whose_write_never_arrived_is_taken_over_after_the_in_flight_bound(
    fast_app: Flask, redis_server: Any, redis_db: redis.Redis
) -> None:
    register = bearer_client(fast_app, REGISTER_KEY)
    body = provider_body(id=new_id())
    # The fenced script is not loaded, so the paused EVALSHA fails (NOSCRIPT) when Redis
    # resumes and the write never runs; the reservation stays pending.
    redis_db.script_flush()
    pause_during_write(fast_app, redis_server, pause_s=0.3)
    assert register.post("/providers", json=body, headers={"Idempotency-Key": "k"}).status_code == 503
    wait_for_redis(redis_db)

    busy = register.post("/providers", json=body, headers={"Idempotency-Key": "k"})
    assert busy.status_code == 409
    assert busy.get_json()["code"] == "idempotency_in_progress"
    assert wait_until(
        lambda: register.post("/providers", json=body, headers={"Idempotency-Key": "k"}).status_code == 201,
        timeout=3, interval=0.25,
    )
    assert redis_db.zcard("registry:providers") == 1


def test_a_stale_attempts_write_is_fenced_once_another_took_the_key_over(
    registry: Any, redis_db: redis.Redis
) -> None:
    store = registry.idempotency
    store.in_flight_ms = 0  # every reservation is stale at once
    stale_owner, _ = store.begin("scope", "fingerprint")
    _, begun = store.begin("scope", "fingerprint")
    assert begun.outcome == "takeover"
    token = bind(Attempt(store, registry.store.keys.idempotency("scope"), stale_owner, b"seed"))
    try:
        with pytest.raises(IdempotencyInProgress):
            registry.store.register(new_id(), provider_body(), "idle")
    finally:
        unbind(token)
    assert redis_db.zcard("registry:providers") == 0


def test_through_gunicorn_writes_answered_503_during_a_pause_are_each_applied_once_on_retry(
    redis_server: Any, redis_db: redis.Redis
) -> None:
    """The issue's measurement, under real gunicorn (gevent) with auth on: 10 registrations."""
    server = GunicornServer(
        redis_server.url, auth_enabled="true", api_keys=json.dumps(TEST_API_KEYS), redis_timeout_s=0.2
    )
    server.start()
    try:
        auth = {"Authorization": f"Bearer {REGISTER_KEY}"}
        warm = requests.post(f"{server.url}/providers", json=provider_body(), timeout=10,
                             headers={**auth, "Idempotency-Key": "warm-up"})
        assert warm.status_code == 201
        bodies = {f"boot-{i}": provider_body(id=new_id()) for i in range(10)}
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            during = [
                requests.post(f"{server.url}/providers", json=body, timeout=10,
                              headers={**auth, "Idempotency-Key": key}).json()["code"]
                for key, body in bodies.items()
            ]
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert set(during) <= {"store_timeout", "store_unavailable"} and "store_timeout" in during

        tokens = {}
        for key, body in bodies.items():
            def settled() -> bool:
                response = requests.post(f"{server.url}/providers", json=body, timeout=10,
                                         headers={**auth, "Idempotency-Key": key})
                if response.status_code == 201:
                    tokens[key] = response.json()["provider_token"]
                return response.status_code == 201

            assert wait_until(settled, timeout=10, interval=0.25)
        assert redis_db.zcard("registry:providers") == 11  # the warm-up and the 10, once each
        for key, body in bodies.items():
            stored = redis_db.hget(f"registry:provider:{body['id']}", "token_hash")
            assert stored == hash_secret(tokens[key])
    finally:
        server.stop()
